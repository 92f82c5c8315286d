//! [`ItemBatch`]: rows handed to a writer, column by column.

use crate::error::{Error, Result};
use crate::format::encode::ScalarColumn;
use crate::schema::{ColumnDef, ColumnKind, Schema};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Group {
    Profile,
    Stats,
}

impl Group {
    fn name(self) -> &'static str {
        match self {
            Group::Profile => "profile",
            Group::Stats => "statistics",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Values {
    U32(Vec<Option<u32>>),
    F32(Vec<Option<f32>>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::U32(v) => v.len(),
            Values::F32(v) => v.len(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct BatchColumn {
    pub group: Group,
    pub name: String,
    pub values: Values,
}

/// A batch of items for [`crate::Transaction::add_items`] (or of statistics
/// for [`crate::Transaction::update_stats`]): ids plus columns matched by
/// name. Profile and statistics columns left out are missing (they read as
/// the declared default); every embedding version of the schema must be given.
///
/// ```
/// let batch = vstore::ItemBatch::new(vec![1, 2, 3])
///     .categorical("category", vec![5, 5, 9])
///     .numeric_opt("price", vec![Some(9.5), None, Some(1.0)])
///     .stat("ctr_1d", vec![0.01, 0.2, 0.03])
///     .embedding("prerank@v42", vec![0.0; 3 * 8]);
/// assert_eq!(batch.len(), 3);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ItemBatch {
    pub(crate) ids: Vec<u64>,
    pub(crate) columns: Vec<BatchColumn>,
    pub(crate) embeddings: Vec<(String, Vec<f32>)>,
}

impl ItemBatch {
    /// A batch of the items `ids`, in the order the column values follow.
    pub fn new(ids: Vec<u64>) -> Self {
        ItemBatch {
            ids,
            ..Default::default()
        }
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the batch has no items.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The ids.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    /// The profile and statistics columns of `schema` this batch does not
    /// give, in schema order: its items read them as the column's default
    /// (so an upsert that leaves one out resets it for the items it
    /// replaces).
    ///
    /// ```
    /// use vstore::{Dtype, ItemBatch, Schema};
    /// let schema = Schema::new()
    ///     .categorical("category", 0)
    ///     .stat("ctr_1d", 0.0)
    ///     .embedding("prerank", "v42", 2, Dtype::F32);
    /// let batch = ItemBatch::new(vec![7]).stat("ctr_1d", vec![0.5]);
    /// assert_eq!(batch.columns_left_out(&schema), ["category"]);
    /// ```
    pub fn columns_left_out<'s>(&self, schema: &'s Schema) -> Vec<&'s str> {
        (schema.profile.iter().chain(&schema.stats))
            .map(|c| c.name.as_str())
            .filter(|&n| !self.columns.iter().any(|c| c.name == n))
            .collect()
    }

    fn push(mut self, group: Group, name: &str, values: Values) -> Self {
        self.columns.push(BatchColumn {
            group,
            name: name.to_string(),
            values,
        });
        self
    }

    /// A categorical profile column, every value present.
    pub fn categorical(self, name: &str, values: Vec<u32>) -> Self {
        self.categorical_opt(name, values.into_iter().map(Some).collect())
    }

    /// A categorical profile column with missing values.
    pub fn categorical_opt(self, name: &str, values: Vec<Option<u32>>) -> Self {
        self.push(Group::Profile, name, Values::U32(values))
    }

    /// A numeric profile column, every value present.
    pub fn numeric(self, name: &str, values: Vec<f32>) -> Self {
        self.numeric_opt(name, values.into_iter().map(Some).collect())
    }

    /// A numeric profile column with missing values.
    pub fn numeric_opt(self, name: &str, values: Vec<Option<f32>>) -> Self {
        self.push(Group::Profile, name, Values::F32(values))
    }

    /// A statistics column, every value present.
    pub fn stat(self, name: &str, values: Vec<f32>) -> Self {
        self.stat_opt(name, values.into_iter().map(Some).collect())
    }

    /// A statistics column with missing values.
    pub fn stat_opt(self, name: &str, values: Vec<Option<f32>>) -> Self {
        self.push(Group::Stats, name, Values::F32(values))
    }

    /// The vectors of embedding `key` (`space@version`), row-major f32,
    /// `len() * dim` values.
    pub fn embedding(mut self, key: &str, values: Vec<f32>) -> Self {
        self.embeddings.push((key.to_string(), values));
        self
    }

    /// Checks every column against `schema`: names exist in their group,
    /// types match, lengths equal the number of ids, values are finite.
    pub(crate) fn check_columns(&self, schema: &Schema, allow: &[Group]) -> Result<()> {
        let n = self.ids.len();
        let mut seen = std::collections::HashSet::new();
        for c in &self.columns {
            if !allow.contains(&c.group) {
                return Err(Error::InvalidInput(format!(
                    "{} column {:?} cannot be given here (only {} columns)",
                    c.group.name(),
                    c.name,
                    allow
                        .iter()
                        .map(|g| g.name())
                        .collect::<Vec<_>>()
                        .join(" and ")
                )));
            }
            if !seen.insert((c.group, c.name.as_str())) {
                return Err(Error::InvalidInput(format!(
                    "{} column {:?} is given twice",
                    c.group.name(),
                    c.name
                )));
            }
            let defs = group_defs(schema, c.group);
            let Some(def) = defs.iter().find(|d| d.name == c.name) else {
                return Err(Error::NoSuchColumn {
                    kind: c.group.name(),
                    name: c.name.clone(),
                    available: defs.iter().map(|d| d.name.clone()).collect(),
                });
            };
            if c.values.len() != n {
                return Err(Error::InvalidInput(format!(
                    "{} column {:?} has {} values for {n} ids",
                    c.group.name(),
                    c.name,
                    c.values.len()
                )));
            }
            match (&c.values, def.kind) {
                (Values::U32(_), ColumnKind::Categorical { .. }) => {}
                (Values::F32(v), ColumnKind::Numeric { .. }) => {
                    if let Some(i) = v.iter().position(|x| x.is_some_and(|x| !x.is_finite())) {
                        return Err(Error::InvalidInput(format!(
                            "{} column {:?}: id {} (input row {i}) is {}; values must be finite",
                            c.group.name(),
                            c.name,
                            self.ids[i],
                            v[i].unwrap_or_default()
                        )));
                    }
                }
                (Values::U32(_), _) => {
                    return Err(Error::InvalidInput(format!(
                        "{} column {:?} is numeric; give f32 values",
                        c.group.name(),
                        c.name
                    )))
                }
                (Values::F32(_), _) => {
                    return Err(Error::InvalidInput(format!(
                        "{} column {:?} is categorical; give u32 values",
                        c.group.name(),
                        c.name
                    )))
                }
            }
        }
        Ok(())
    }

    pub(crate) fn column(&self, group: Group, name: &str) -> Option<&Values> {
        self.columns
            .iter()
            .find(|c| c.group == group && c.name == name)
            .map(|c| &c.values)
    }

    /// Builds the scalar columns of `group` for a new segment whose rows are
    /// this batch's rows in order.
    pub(crate) fn scalar_columns(&self, schema: &Schema, group: Group) -> Vec<ScalarColumn> {
        let n = self.ids.len();
        group_defs(schema, group)
            .iter()
            .map(|d| {
                let mut col = ScalarColumn::all_missing(d, n);
                if let Some(v) = self.column(group, &d.name) {
                    for r in 0..n {
                        col.set(r, v.get_bits(r));
                    }
                }
                col
            })
            .collect()
    }
}

impl Values {
    /// Row `r` as raw bits (u32, or f32 bits), `None` if missing.
    pub(crate) fn get_bits(&self, r: usize) -> Option<u32> {
        match self {
            Values::U32(v) => v[r],
            Values::F32(v) => v[r].map(f32::to_bits),
        }
    }
}

pub(crate) fn group_defs(schema: &Schema, g: Group) -> &[ColumnDef] {
    match g {
        Group::Profile => &schema.profile,
        Group::Stats => &schema.stats,
    }
}

/// Raw bits of a column's default.
pub(crate) fn default_bits(d: &ColumnDef) -> u32 {
    match d.kind {
        ColumnKind::Categorical { default } => default,
        ColumnKind::Numeric { default } => default.to_bits(),
    }
}

impl ScalarColumn {
    /// A column of `n` rows, all missing.
    pub(crate) fn all_missing(d: &ColumnDef, n: usize) -> ScalarColumn {
        let mut missing = vec![0u64; n.div_ceil(64)];
        for r in 0..n {
            missing[r / 64] |= 1 << (r % 64);
        }
        ScalarColumn {
            name: d.name.clone(),
            values: vec![default_bits(d); n],
            missing: Some(missing),
            default: default_bits(d),
        }
    }

    /// Sets row `r` to `v` (or to missing).
    pub(crate) fn set(&mut self, r: usize, v: Option<u32>) {
        let m = self
            .missing
            .get_or_insert_with(|| vec![0u64; self.values.len().div_ceil(64)]);
        match v {
            Some(x) => {
                self.values[r] = x;
                m[r / 64] &= !(1u64 << (r % 64));
            }
            None => {
                self.values[r] = self.default;
                m[r / 64] |= 1u64 << (r % 64);
            }
        }
    }

    /// Drops the bitmap if no row is missing.
    pub(crate) fn normalize(&mut self) {
        if self
            .missing
            .as_ref()
            .is_some_and(|m| m.iter().all(|&w| w == 0))
        {
            self.missing = None;
        }
    }
}
