//! Filters on profile (and statistics) columns, evaluated per candidate.

use crate::error::{Error, Result};
use crate::read::segment::Segment;
use crate::schema::{ColumnKind, Schema};

/// A predicate on an item's profile or statistics columns. Missing values
/// are filtered as the column's declared default.
///
/// ```
/// use vstore::Filter;
/// // Not in categories 3 or 9, and priced between 1 and 50 (inclusive).
/// let f = Filter::not_in("category", [3, 9]).and(Filter::range("price", 1.0, 50.0));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Filter {
    /// The categorical column's value is one of `values`.
    In {
        /// Categorical profile column.
        column: String,
        /// Accepted values.
        values: Vec<u32>,
    },
    /// The categorical column's value is none of `values`.
    NotIn {
        /// Categorical profile column.
        column: String,
        /// Refused values.
        values: Vec<u32>,
    },
    /// `min <= value <= max` for a numeric profile or statistics column (use
    /// infinities for an open end).
    Range {
        /// Numeric profile or statistics column.
        column: String,
        /// Lower bound, inclusive.
        min: f32,
        /// Upper bound, inclusive.
        max: f32,
    },
    /// All of the filters hold (true if empty).
    And(Vec<Filter>),
    /// At least one of the filters holds (false if empty).
    Or(Vec<Filter>),
    /// The filter does not hold.
    Not(Box<Filter>),
}

impl Filter {
    /// `column in values`.
    pub fn is_in(column: &str, values: impl IntoIterator<Item = u32>) -> Filter {
        Filter::In {
            column: column.into(),
            values: values.into_iter().collect(),
        }
    }

    /// `column not in values`.
    pub fn not_in(column: &str, values: impl IntoIterator<Item = u32>) -> Filter {
        Filter::NotIn {
            column: column.into(),
            values: values.into_iter().collect(),
        }
    }

    /// `min <= column <= max`.
    pub fn range(column: &str, min: f32, max: f32) -> Filter {
        Filter::Range {
            column: column.into(),
            min,
            max,
        }
    }

    /// `min <= column <= max` with bounds given as f64 (as Python floats
    /// and parsed text are): the bounds are rounded inward to f32 (`min`
    /// up, `max` down), so that exactly the stored (f32) values within the
    /// f64 range pass; rounding to nearest would let a value just outside
    /// it in (`range(16777217.0, inf)` would pass 16777216).
    ///
    /// ```
    /// use vstore::Filter;
    /// assert_eq!(
    ///     Filter::range_f64("price", 16777217.0, f64::INFINITY),
    ///     Filter::range("price", 16777218.0, f32::INFINITY)
    /// );
    /// ```
    pub fn range_f64(column: &str, min: f64, max: f64) -> Filter {
        let up = |x: f64| {
            let f = x as f32;
            if (f as f64) < x {
                f.next_up()
            } else {
                f
            }
        };
        let down = |x: f64| {
            let f = x as f32;
            if (f as f64) > x {
                f.next_down()
            } else {
                f
            }
        };
        Filter::range(column, up(min), down(max))
    }

    /// Both `self` and `other`.
    pub fn and(self, other: Filter) -> Filter {
        Filter::And(vec![self, other])
    }

    /// Either `self` or `other`.
    pub fn or(self, other: Filter) -> Filter {
        Filter::Or(vec![self, other])
    }

    /// Checks column names, types and bounds against `schema`.
    pub(crate) fn check(&self, schema: &Schema) -> Result<()> {
        match self {
            Filter::In { column, .. } | Filter::NotIn { column, .. } => {
                match schema.profile.iter().find(|c| &c.name == column) {
                    Some(c) if matches!(c.kind, ColumnKind::Categorical { .. }) => Ok(()),
                    Some(_) => Err(Error::InvalidInput(format!(
                        "filter: column {column:?} is numeric; in/not-in needs a categorical column"
                    ))),
                    None if schema.stats.iter().any(|c| &c.name == column) => {
                        Err(Error::InvalidInput(format!(
                            "filter: column {column:?} is a statistics column (numeric); \
                             in/not-in needs a categorical profile column"
                        )))
                    }
                    None => Err(no_column(schema, column)),
                }
            }
            Filter::Range { column, min, max } => {
                if min.is_nan() || max.is_nan() || min > max {
                    return Err(Error::InvalidInput(format!(
                        "filter: range [{min}, {max}] on {column:?} is empty or not a number"
                    )));
                }
                // Resolved as models resolve `item_numeric` columns.
                match schema.numeric_column(column).map(|(_, c)| c) {
                    Some(c) if matches!(c.kind, ColumnKind::Numeric { .. }) => Ok(()),
                    Some(_) => Err(Error::InvalidInput(format!(
                        "filter: column {column:?} is categorical; a range needs a numeric column"
                    ))),
                    None => Err(no_column(schema, column)),
                }
            }
            Filter::And(fs) | Filter::Or(fs) => fs.iter().try_for_each(|f| f.check(schema)),
            Filter::Not(f) => f.check(schema),
        }
    }

    /// Binds the filter to one segment's columns (after [`Filter::check`]).
    pub(crate) fn compile<'a>(&self, seg: &'a Segment) -> Result<Compiled<'a>> {
        Ok(match self {
            Filter::In { column, values } | Filter::NotIn { column, values } => {
                let mut set = values.clone();
                set.sort_unstable();
                set.dedup();
                Compiled::Set {
                    values: seg.categorical(column)?.values(),
                    set,
                    negate: matches!(self, Filter::NotIn { .. }),
                }
            }
            Filter::Range { column, min, max } => {
                // The statistic first, as `Schema::numeric_column`.
                let values = match seg.stat(column) {
                    Ok(c) => c.values(),
                    Err(_) => seg.numeric(column)?.values(),
                };
                Compiled::Range {
                    values,
                    min: *min,
                    max: *max,
                }
            }
            Filter::And(fs) => {
                Compiled::And(fs.iter().map(|f| f.compile(seg)).collect::<Result<_>>()?)
            }
            Filter::Or(fs) => {
                Compiled::Or(fs.iter().map(|f| f.compile(seg)).collect::<Result<_>>()?)
            }
            Filter::Not(f) => Compiled::Not(Box::new(f.compile(seg)?)),
        })
    }
}

fn no_column(schema: &Schema, column: &str) -> Error {
    Error::NoSuchColumn {
        kind: "profile or statistics",
        name: column.to_string(),
        available: schema
            .profile
            .iter()
            .chain(&schema.stats)
            .map(|c| c.name.clone())
            .collect(),
    }
}

/// A filter bound to one segment's column slices.
#[derive(Debug)]
pub(crate) enum Compiled<'a> {
    Set {
        values: &'a [u32],
        set: Vec<u32>,
        negate: bool,
    },
    Range {
        values: &'a [f32],
        min: f32,
        max: f32,
    },
    And(Vec<Compiled<'a>>),
    Or(Vec<Compiled<'a>>),
    Not(Box<Compiled<'a>>),
}

impl Compiled<'_> {
    /// Whether `row` passes (rows out of range do not).
    pub(crate) fn eval(&self, row: usize) -> bool {
        match self {
            Compiled::Set {
                values,
                set,
                negate,
            } => match values.get(row) {
                Some(v) => {
                    let hit = if set.len() <= 8 {
                        set.contains(v)
                    } else {
                        set.binary_search(v).is_ok()
                    };
                    hit != *negate
                }
                None => false,
            },
            Compiled::Range { values, min, max } => {
                values.get(row).is_some_and(|v| *min <= *v && *v <= *max)
            }
            Compiled::And(fs) => fs.iter().all(|f| f.eval(row)),
            Compiled::Or(fs) => fs.iter().any(|f| f.eval(row)),
            Compiled::Not(f) => !f.eval(row),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Filter;

    #[test]
    fn f64_range_bounds_round_inward() {
        let bounds = |lo: f64, hi: f64| match Filter::range_f64("c", lo, hi) {
            Filter::Range { min, max, .. } => (min, max),
            other => panic!("{other:?}"),
        };
        // 16777217 lies between the f32 values 16777216 and 16777218.
        assert_eq!(bounds(16777217.0, 16777217.0), (16777218.0, 16777216.0));
        assert_eq!(bounds(1e-300, 1.0), (f32::from_bits(1), 1.0));
        assert_eq!(bounds(-1e-300, 0.0).1, 0.0);
        assert_eq!(bounds(0.1, 0.1), (0.1f32, 0.099999994));
        assert_eq!(
            bounds(f64::NEG_INFINITY, 1e300),
            (f32::NEG_INFINITY, f32::MAX)
        );
        assert_eq!(bounds(-1e300, f64::INFINITY), (f32::MIN, f32::INFINITY));
        assert_eq!(bounds(2.5, 3.5), (2.5, 3.5));
    }
}
