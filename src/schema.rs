//! Schema: the columns a store holds.
//!
//! Types: [`Schema`] (the whole column list), [`ColumnDef`] and [`ColumnKind`]
//! (profile and statistics columns), [`EmbeddingDef`] and [`Dtype`] (embedding
//! columns, each tagged `space@version`).
//!
//! These types are archived in every manifest (see `format/FORMAT.md`,
//! "Manifest"), so their fields are part of the on-disk format: changing
//! one is a format change.

// rkyv's derive generates archived twins of these types whose fields carry
// no doc comments; every item written here is documented.
#![allow(missing_docs)]

use crate::error::{Error, Result};

/// Storage type of an embedding column's components.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[rkyv(derive(Debug))]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// IEEE binary32, stored as written.
    F32,
    /// IEEE binary16 (round to nearest even from f32).
    F16,
    /// bfloat16 (round to nearest even from f32).
    Bf16,
    /// Signed 8-bit with one f32 scale per row: `x ≈ q * scale`,
    /// `scale = max|x| / 127`, `q = round(x / scale)`.
    I8,
}

impl Dtype {
    /// Name used in messages and by `vstore-tool` (`f32`, `f16`, `bf16`, `i8`).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
            Dtype::I8 => "i8",
        }
    }

    /// Parses a name as printed by [`Dtype::name`].
    pub fn parse(s: &str) -> Result<Dtype> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Dtype::F32),
            "f16" | "float16" => Ok(Dtype::F16),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            "i8" | "int8" => Ok(Dtype::I8),
            _ => Err(Error::InvalidInput(format!(
                "unknown dtype {s:?}; expected one of f32, f16, bf16, i8"
            ))),
        }
    }

    /// Bytes of one row's payload before padding (the i8 scale included).
    pub fn row_bytes(self, dim: u32) -> usize {
        let d = dim as usize;
        match self {
            Dtype::F32 => 4 * d,
            Dtype::F16 | Dtype::Bf16 => 2 * d,
            Dtype::I8 => d + 4,
        }
    }

    /// Distance in bytes between consecutive rows in a column file: the row
    /// payload rounded up to 16 bytes, so every row starts 16-byte aligned.
    pub fn row_stride(self, dim: u32) -> usize {
        self.row_bytes(dim).div_ceil(ROW_ALIGN) * ROW_ALIGN
    }
}

/// Alignment of every embedding row (bytes). Blocks start 64-byte aligned.
pub const ROW_ALIGN: usize = 16;

/// Largest embedding dimension accepted.
pub const MAX_DIM: u32 = 65_536;

/// What a profile or statistics column holds.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[rkyv(derive(Debug))]
#[serde(rename_all = "lowercase")]
pub enum ColumnKind {
    /// A `u32` category id; rows without a value read as `default`.
    Categorical {
        /// Value of a missing row.
        default: u32,
    },
    /// A finite `f32`; rows without a value read as `default`.
    Numeric {
        /// Value of a missing row.
        default: f32,
    },
}

/// A named profile or statistics column.
#[derive(
    Debug,
    Clone,
    PartialEq,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct ColumnDef {
    /// Column name, unique within its group.
    pub name: String,
    /// Type and default.
    pub kind: ColumnKind,
}

/// An embedding column: item-tower outputs of one model version.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct EmbeddingDef {
    /// Embedding space (e.g. `prerank`).
    pub space: String,
    /// Model version that produced the vectors (e.g. `v42`).
    pub version: String,
    /// Number of components.
    pub dim: u32,
    /// Storage type.
    pub dtype: Dtype,
}

impl EmbeddingDef {
    /// Creates a definition; see [`Schema::validate`] for the rules on names.
    pub fn new(space: &str, version: &str, dim: u32, dtype: Dtype) -> Self {
        EmbeddingDef {
            space: space.to_string(),
            version: version.to_string(),
            dim,
            dtype,
        }
    }

    /// The `space@version` key that queries name.
    pub fn key(&self) -> String {
        format!("{}@{}", self.space, self.version)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        check_tag("embedding space", &self.space)?;
        check_tag("embedding version", &self.version)?;
        if self.dim == 0 || self.dim > MAX_DIM {
            return Err(Error::Schema(format!(
                "embedding {}: dimension {} is outside 1..={MAX_DIM}",
                self.key(),
                self.dim
            )));
        }
        Ok(())
    }
}

/// Splits `space@version` into its parts.
pub fn parse_key(key: &str) -> Result<(&str, &str)> {
    match key.split_once('@') {
        Some((s, v)) if !s.is_empty() && !v.is_empty() && !v.contains('@') => Ok((s, v)),
        _ => Err(Error::InvalidInput(format!(
            "embedding key {key:?} is not of the form space@version"
        ))),
    }
}

/// Checks that `key` is a well-formed embedding key: `space@version`,
/// each 1 to 64 characters of `[A-Za-z0-9_.-]` not starting with a dot
/// (what a schema accepts); returns the two parts.
///
/// ```
/// assert_eq!(vstore::check_key("prerank@v42")?, ("prerank", "v42"));
/// assert!(vstore::check_key("prerank@v 1").is_err());
/// # Ok::<(), vstore::Error>(())
/// ```
pub fn check_key(key: &str) -> Result<(&str, &str)> {
    let (space, version) = parse_key(key)?;
    check_tag("embedding space", space)?;
    check_tag("embedding version", version)?;
    Ok((space, version))
}

/// Space and version become part of file names, so they are restricted to
/// `[A-Za-z0-9_.-]`, 1 to 64 bytes, and may not start with a dot.
fn check_tag(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::Schema(format!(
            "{what} {s:?} must be 1 to 64 characters of [A-Za-z0-9_.-], not starting with '.'"
        )))
    }
}

/// A bundle name (`name` in `model.json`) follows the rule of space and
/// version: it can become part of a file name. The error says what is wrong.
pub(crate) fn check_bundle_name(name: &str) -> std::result::Result<(), String> {
    check_tag("bundle name", name).map_err(|e| match e {
        Error::Schema(what) => what,
        e => e.to_string(),
    })
}

fn check_column_name(group: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(Error::Schema(format!(
            "{group} column name {name:?} must be 1 to 256 bytes without control characters"
        )));
    }
    Ok(())
}

/// The columns of a store: profile columns (categorical or numeric),
/// statistics columns (numeric, refreshed often, stored in their own files)
/// and embedding columns (one per `space@version`).
///
/// Every item also has a `u64` id, which is not listed here.
///
/// ```
/// use vstore::{Dtype, Schema};
/// let schema = Schema::new()
///     .categorical("category", 0)
///     .numeric("price", 0.0)
///     .stat("ctr_1d", 0.0)
///     .embedding("prerank", "v42", 64, Dtype::F16);
/// schema.validate().unwrap();
/// ```
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct Schema {
    /// Profile columns, in file order.
    pub profile: Vec<ColumnDef>,
    /// Statistics columns (numeric), in file order.
    pub stats: Vec<ColumnDef>,
    /// Embedding columns.
    pub embeddings: Vec<EmbeddingDef>,
}

/// Which group of a [`Schema`] a column is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnGroup {
    Profile,
    Stats,
}

impl Schema {
    /// An empty schema (ids only).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a categorical profile column.
    pub fn categorical(mut self, name: &str, default: u32) -> Self {
        self.profile.push(ColumnDef {
            name: name.to_string(),
            kind: ColumnKind::Categorical { default },
        });
        self
    }

    /// Adds a numeric profile column.
    pub fn numeric(mut self, name: &str, default: f32) -> Self {
        self.profile.push(ColumnDef {
            name: name.to_string(),
            kind: ColumnKind::Numeric { default },
        });
        self
    }

    /// Adds a numeric statistics column.
    pub fn stat(mut self, name: &str, default: f32) -> Self {
        self.stats.push(ColumnDef {
            name: name.to_string(),
            kind: ColumnKind::Numeric { default },
        });
        self
    }

    /// Adds an embedding column.
    pub fn embedding(mut self, space: &str, version: &str, dim: u32, dtype: Dtype) -> Self {
        self.embeddings
            .push(EmbeddingDef::new(space, version, dim, dtype));
        self
    }

    /// Checks names (well formed; unique within their group, and no name
    /// both a profile and a statistics column), defaults (finite) and
    /// dimensions. Writers check every new schema with it.
    pub fn validate(&self) -> Result<()> {
        self.validate_stored()?;
        if let Some(c) = self
            .stats
            .iter()
            .find(|s| self.profile.iter().any(|p| p.name == s.name))
        {
            return Err(Error::Schema(format!(
                "{:?} is both a profile and a statistics column; filters and models \
                 name columns without their group, so a name may be used once",
                c.name
            )));
        }
        Ok(())
    }

    /// [`Schema::validate`] as readers check a stored schema: the format
    /// allows a name in both groups (earlier writers did not refuse it),
    /// and queries then resolve a numeric name to the statistic
    /// ([`Schema::numeric_column`]).
    pub(crate) fn validate_stored(&self) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for c in &self.profile {
            check_column_name("profile", &c.name)?;
            if !seen.insert(c.name.as_str()) {
                return Err(Error::Schema(format!(
                    "profile column {:?} is declared twice",
                    c.name
                )));
            }
            if let ColumnKind::Numeric { default } = c.kind {
                if !default.is_finite() {
                    return Err(Error::Schema(format!(
                        "profile column {:?}: default {default} is not finite",
                        c.name
                    )));
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.stats {
            check_column_name("statistics", &c.name)?;
            if !seen.insert(c.name.as_str()) {
                return Err(Error::Schema(format!(
                    "statistics column {:?} is declared twice",
                    c.name
                )));
            }
            match c.kind {
                ColumnKind::Numeric { default } if default.is_finite() => {}
                ColumnKind::Numeric { default } => {
                    return Err(Error::Schema(format!(
                        "statistics column {:?}: default {default} is not finite",
                        c.name
                    )))
                }
                ColumnKind::Categorical { .. } => {
                    return Err(Error::Schema(format!(
                        "statistics column {:?} must be numeric",
                        c.name
                    )))
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for e in &self.embeddings {
            e.validate()?;
            if !seen.insert(e.key()) {
                return Err(Error::Schema(format!(
                    "embedding {} is declared twice",
                    e.key()
                )));
            }
        }
        Ok(())
    }

    /// The numeric column that filters and models read for `name`: the
    /// statistic if there is one (a stored schema may also have a profile
    /// column of that name, see [`Schema::validate_stored`]), else the
    /// profile column, whatever its kind. `None` if neither group has it.
    pub(crate) fn numeric_column(&self, name: &str) -> Option<(ColumnGroup, &ColumnDef)> {
        let stat = self.stats.iter().find(|c| c.name == name);
        let profile = || self.profile.iter().find(|c| c.name == name);
        stat.map(|c| (ColumnGroup::Stats, c))
            .or_else(|| profile().map(|c| (ColumnGroup::Profile, c)))
    }

    /// The embedding definition for `space@version`, if held.
    pub fn embedding_def(&self, key: &str) -> Option<&EmbeddingDef> {
        let (space, version) = parse_key(key).ok()?;
        self.embeddings
            .iter()
            .find(|e| e.space == space && e.version == version)
    }

    /// All `space@version` keys, in schema order.
    pub fn embedding_keys(&self) -> Vec<String> {
        self.embeddings.iter().map(EmbeddingDef::key).collect()
    }

    /// Position of a profile column.
    pub fn profile_index(&self, name: &str) -> Result<usize> {
        find(&self.profile, name, "profile")
    }

    /// Position of a statistics column.
    pub fn stats_index(&self, name: &str) -> Result<usize> {
        find(&self.stats, name, "statistics")
    }
}

fn find(cols: &[ColumnDef], name: &str, kind: &'static str) -> Result<usize> {
    cols.iter()
        .position(|c| c.name == name)
        .ok_or_else(|| Error::NoSuchColumn {
            kind,
            name: name.to_string(),
            available: cols.iter().map(|c| c.name.clone()).collect(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_name_in_both_groups_opens_and_resolves_to_the_statistic() {
        let both = Schema::new().categorical("x", 0).stat("x", 0.0);
        assert!(both.validate().is_err(), "writers refuse it");
        both.validate_stored().expect("readers accept it");
        let (g, c) = both.numeric_column("x").unwrap();
        assert_eq!(g, ColumnGroup::Stats);
        assert!(matches!(c.kind, ColumnKind::Numeric { .. }));
        // Filters resolve it the same way: a range on it is a range on the
        // (numeric) statistic, not refused as categorical.
        let f = crate::Filter::range("x", 0.0, 1.0);
        f.check(&both).unwrap();
        let only_profile = Schema::new().numeric("p", 0.0);
        let (g, _) = only_profile.numeric_column("p").unwrap();
        assert_eq!(g, ColumnGroup::Profile);
        assert!(only_profile.numeric_column("q").is_none());
    }
}
