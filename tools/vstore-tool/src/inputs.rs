//! Turning the files a user hands us into library inputs: embedding
//! arguments, column declarations, id lists, and item batches joined from
//! ids, embeddings and tables. Everything is checked here, before a writer
//! is opened, so that a bad input names its file, row and column and the
//! store is never touched.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use vstore::{ColumnKind, Dtype, ItemBatch, Schema};

use crate::error::{Result, ToolError};
use crate::npy;
use crate::progress::Progress;
use crate::table::{read_table, Table, Values};

/// An `--embedding KEY[:DTYPE]=FILE` argument.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingArg {
    /// `space@version`.
    pub key: String,
    /// The storage dtype, if given.
    pub dtype: Option<Dtype>,
    /// The .npy file.
    pub path: PathBuf,
}

/// Parses `space@version[:dtype]=FILE`.
pub fn parse_embedding_arg(s: &str) -> Result<EmbeddingArg> {
    let usage = || {
        ToolError::Usage(format!(
            "--embedding {s:?}: expected space@version[:dtype]=FILE.npy, e.g. prerank@v42:f16=emb.npy"
        ))
    };
    let (lhs, path) = s.split_once('=').ok_or_else(usage)?;
    if path.is_empty() {
        return Err(usage());
    }
    let (key, dtype) = match lhs.split_once(':') {
        Some((k, d)) => (k, Some(parse_dtype(d)?)),
        None => (lhs, None),
    };
    vstore::check_key(key).map_err(|e| ToolError::Usage(format!("--embedding {s:?}: {e}")))?;
    Ok(EmbeddingArg {
        key: key.to_string(),
        dtype,
        path: PathBuf::from(path),
    })
}

/// Parses a storage dtype name.
pub fn parse_dtype(s: &str) -> Result<Dtype> {
    Dtype::parse(s)
        .map_err(|_| ToolError::Usage(format!("unknown dtype {s:?}: use f32, f16, bf16 or i8")))
}

/// A declared column kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A profile column of integer codes.
    Categorical,
    /// A profile column of floats.
    Numeric,
    /// A statistics column.
    Stat,
}

/// A `--column NAME[:KIND][=DEFAULT]` declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSpec {
    /// Column name.
    pub name: String,
    /// Declared kind, if any.
    pub kind: Option<Kind>,
    /// Default for missing values, if given.
    pub default: Option<f64>,
}

/// Parses `NAME[:KIND][=DEFAULT]`.
pub fn parse_column_spec(s: &str) -> Result<ColumnSpec> {
    let usage = |why: &str| {
        ToolError::Usage(format!(
            "--column {s:?}: {why}; expected NAME[:KIND][=DEFAULT], KIND categorical, numeric or stat"
        ))
    };
    let (lhs, default) = match s.split_once('=') {
        Some((l, d)) => (
            l,
            Some(
                d.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| (*x as f32).is_finite())
                    .ok_or_else(|| usage("the default is not a number that fits in float32"))?,
            ),
        ),
        None => (s, None),
    };
    let (name, kind) = match lhs.split_once(':') {
        Some((n, k)) => (
            n,
            Some(match k {
                "categorical" | "cat" => Kind::Categorical,
                "numeric" | "num" => Kind::Numeric,
                "stat" | "stats" | "statistic" => Kind::Stat,
                _ => return Err(usage(&format!("unknown kind {k:?}"))),
            }),
        ),
        None => (lhs, None),
    };
    if name.is_empty() {
        return Err(usage("no column name"));
    }
    Ok(ColumnSpec {
        name: name.to_string(),
        kind,
        default,
    })
}

/// Reads a text input file (a CSV table, an id list), refusing at once
/// one whose first 64 KiB hold a NUL byte: binary data, or a device such
/// as `/dev/zero` that would otherwise be read into memory without end.
pub fn read_text_file(path: &Path) -> Result<Vec<u8>> {
    read_checked(path, |head| {
        (head.iter().position(|&b| b == 0))
            .map(|at| format!("not a text file (a NUL byte at byte {at})"))
    })
}

/// Reads a binary input file that starts with `magic` (a Parquet table's
/// `PAR1`), refusing at once one that does not (`what` names the kind):
/// a device such as `/dev/zero` is not read into memory without end.
pub fn read_file_with_magic(path: &Path, magic: &[u8], what: &str) -> Result<Vec<u8>> {
    read_checked(path, |head| {
        (!head.starts_with(magic)).then(|| {
            format!(
                "not a {what} (it does not start with {:?})",
                String::from_utf8_lossy(magic)
            )
        })
    })
}

/// Reads `path` whole once `refuse` has passed its first 64 KiB (`Some`:
/// what is wrong, an error naming the file).
fn read_checked(path: &Path, refuse: impl Fn(&[u8]) -> Option<String>) -> Result<Vec<u8>> {
    let mut f = std::fs::File::open(path).map_err(|e| ToolError::io("open", path, e))?;
    let mut v = Vec::new();
    (&mut f)
        .take(64 << 10)
        .read_to_end(&mut v)
        .map_err(|e| ToolError::io("read", path, e))?;
    if let Some(what) = refuse(&v) {
        return Err(ToolError::input(path, what));
    }
    f.read_to_end(&mut v)
        .map_err(|e| ToolError::io("read", path, e))?;
    Ok(v)
}

/// Reads an id list: `.npy`, `-` (standard input) or text (ids separated
/// by whitespace or commas; `#` starts a comment).
pub fn read_id_list(path: &Path, progress: &Progress) -> Result<Vec<u64>> {
    if path.extension().and_then(|e| e.to_str()) == Some("npy") {
        return npy::read_ids(path, progress);
    }
    let text = if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| ToolError::io("read", Path::new("<stdin>"), e))?;
        String::from_utf8(bytes).map_err(|e| {
            ToolError::input(
                Path::new("<stdin>"),
                format!(
                    "not UTF-8 text (byte {}): standard input takes ids as text (separated by \
                     whitespace or commas); give a .npy file by its path",
                    e.utf8_error().valid_up_to()
                ),
            )
        })?
    } else {
        let bytes = read_text_file(path)?;
        String::from_utf8(bytes).map_err(|e| {
            ToolError::input(
                path,
                format!(
                    "not UTF-8 text (byte {}); give ids as text or .npy",
                    e.utf8_error().valid_up_to()
                ),
            )
        })?
    };
    let shown = if path == Path::new("-") {
        PathBuf::from("<stdin>")
    } else {
        path.to_path_buf()
    };
    let mut ids = Vec::new();
    for (ln, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        for tok in line
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|t| !t.is_empty())
        {
            let id = tok.parse::<u64>().map_err(|_| {
                ToolError::input(
                    &shown,
                    format!(
                        "line {}: {tok:?} is not an item id (a non-negative integer)",
                        ln + 1
                    ),
                )
            })?;
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Ids and the vectors of each embedding version, checked against each
/// other: same number of rows, distinct ids, finite values.
#[derive(Debug)]
pub struct Items {
    /// The ids file.
    pub ids_path: PathBuf,
    /// Item ids.
    pub ids: Vec<u64>,
    /// `(embedding argument, dim, row-major f32 values)` per version.
    pub vectors: Vec<(EmbeddingArg, usize, Vec<f32>)>,
}

/// Reads `ids` and every embedding file, refusing mismatches with names.
pub fn read_items(ids_path: &Path, embeddings: &[EmbeddingArg], p: &Progress) -> Result<Items> {
    let ids = npy::read_ids(ids_path, p)?;
    npy::check_unique(ids_path, &ids)?;
    let mut vectors = Vec::new();
    for e in embeddings {
        if vectors
            .iter()
            .any(|(a, _, _): &(EmbeddingArg, usize, Vec<f32>)| a.key == e.key)
        {
            return Err(ToolError::Usage(format!(
                "embedding {} is given twice",
                e.key
            )));
        }
        let a = npy::read_matrix(&e.path, p)?;
        if a.shape[0] != ids.len() {
            return Err(ToolError::input(
                &e.path,
                format!(
                    "{} rows, but {} holds {} ids: embeddings and ids must have one row per item, in the same order",
                    a.shape[0],
                    ids_path.display(),
                    ids.len()
                ),
            ));
        }
        vectors.push((e.clone(), a.shape[1], a.values));
    }
    Ok(Items {
        ids_path: ids_path.to_path_buf(),
        ids,
        vectors,
    })
}

/// Which group a table feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// `--profile`: categorical and numeric columns.
    Profile,
    /// `--stats`: statistics columns.
    Stats,
}

/// A table column with its resolved kind and default.
#[derive(Debug, Clone)]
pub struct ResolvedColumn {
    /// Column name.
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// Default for missing values.
    pub default: f64,
}

/// Reads a table and checks its ids are distinct.
pub fn load_table(path: &Path, id_column: &str, skip: &[String], p: &Progress) -> Result<Table> {
    let _sp = p.spinner(&format!("reading {}", path.display()));
    let t = read_table(path, id_column, skip)?;
    t.check_unique()?;
    Ok(t)
}

/// Decides each column's kind for a new store: declared by `specs`, else
/// inferred (profile: integer → categorical, float → numeric; stats:
/// statistic).
pub fn resolve_new(
    table: &Table,
    group: Group,
    specs: &[ColumnSpec],
) -> Result<Vec<ResolvedColumn>> {
    let mut out = Vec::new();
    for c in &table.columns {
        let spec = specs.iter().find(|s| s.name == c.name);
        let inferred = match (group, &c.values) {
            (Group::Stats, _) => Kind::Stat,
            (Group::Profile, Values::Int(_)) => Kind::Categorical,
            (Group::Profile, Values::Float(_)) => Kind::Numeric,
        };
        let kind = spec.and_then(|s| s.kind).unwrap_or(inferred);
        match (group, kind) {
            (Group::Stats, Kind::Categorical | Kind::Numeric) => {
                return Err(ToolError::input(
                    &table.path,
                    format!(
                        "column {:?} is declared {kind:?} but is in the statistics table (--stats); put profile columns in --profile",
                        c.name
                    ),
                ))
            }
            (Group::Profile, Kind::Stat) => {
                return Err(ToolError::input(
                    &table.path,
                    format!(
                        "column {:?} is declared a statistic but is in the profile table (--profile); put statistics in --stats",
                        c.name
                    ),
                ))
            }
            _ => {}
        }
        let default = spec.and_then(|s| s.default).unwrap_or(0.0);
        if kind == Kind::Categorical
            && (default < 0.0 || default.fract() != 0.0 || default > u32::MAX as f64)
        {
            return Err(ToolError::Refused(format!(
                "--column {}: the default of a categorical column is an integer code in 0..=4294967295, not {default}",
                c.name
            )));
        }
        out.push(ResolvedColumn {
            name: c.name.clone(),
            kind,
            default,
        });
    }
    Ok(out)
}

/// Looks each column of `table` up in an existing `schema` (its kind comes
/// from there); a column the schema lacks, or one of another group, is an
/// error naming the schema's columns.
pub fn resolve_existing(
    table: &Table,
    group: Group,
    schema: &Schema,
) -> Result<Vec<ResolvedColumn>> {
    let mut out = Vec::new();
    for c in &table.columns {
        let def = match group {
            Group::Profile => schema.profile.iter().find(|d| d.name == c.name),
            Group::Stats => schema.stats.iter().find(|d| d.name == c.name),
        };
        let Some(def) = def else {
            let names: Vec<&str> = match group {
                Group::Profile => schema.profile.iter().map(|d| d.name.as_str()).collect(),
                Group::Stats => schema.stats.iter().map(|d| d.name.as_str()).collect(),
            };
            return Err(ToolError::input(
                &table.path,
                format!(
                    "column {:?} is not a {} column of the store (it has [{}])",
                    c.name,
                    match group {
                        Group::Profile => "profile",
                        Group::Stats => "statistics",
                    },
                    names.join(", ")
                ),
            ));
        };
        let (kind, default) = match (group, &def.kind) {
            (_, ColumnKind::Categorical { default }) => (Kind::Categorical, f64::from(*default)),
            (Group::Profile, ColumnKind::Numeric { default }) => {
                (Kind::Numeric, f64::from(*default))
            }
            (Group::Stats, ColumnKind::Numeric { default }) => (Kind::Stat, f64::from(*default)),
        };
        out.push(ResolvedColumn {
            name: c.name.clone(),
            kind,
            default,
        });
    }
    Ok(out)
}

/// Adds the resolved columns of `table` to `batch`, placing each table row
/// at its id's position in the batch's ids (ids absent from the table get
/// missing values). A table row whose id is not among them is an error
/// naming the row: silently dropping input would lose data.
pub fn add_table_columns(
    mut batch: ItemBatch,
    ids_source: &Path,
    table: &Table,
    cols: &[ResolvedColumn],
) -> Result<ItemBatch> {
    let pos: HashMap<u64, usize> = batch
        .ids()
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i))
        .collect();
    let mut at = Vec::with_capacity(table.ids.len());
    for (r, id) in table.ids.iter().enumerate() {
        match pos.get(id) {
            Some(&i) => at.push(i),
            None => {
                return Err(ToolError::input(
                    &table.path,
                    format!(
                        "{}: id {id} is not among the items of {}",
                        table.row_name(r),
                        ids_source.display()
                    ),
                ))
            }
        }
    }
    drop(pos);
    let n = batch.len();
    for (c, rc) in table.columns.iter().zip(cols) {
        match rc.kind {
            Kind::Categorical => {
                let mut v: Vec<Option<u32>> = vec![None; n];
                for (r, &i) in at.iter().enumerate() {
                    v[i] = match &c.values {
                        Values::Int(x) => match x[r] {
                            None => None,
                            Some(x) => Some(u32::try_from(x).map_err(|_| {
                                ToolError::input(
                                    &table.path,
                                    format!(
                                        "{} column {:?}: {x} is not a category code (0..=4294967295)",
                                        table.row_name(r),
                                        c.name
                                    ),
                                )
                            })?),
                        },
                        Values::Float(x) => match x[r] {
                            None => None,
                            Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= u32::MAX as f64 => {
                                Some(f as u32)
                            }
                            Some(f) => {
                                return Err(ToolError::input(
                                    &table.path,
                                    format!(
                                        "{} column {:?}: {f} is not a category code (categorical columns hold integers)",
                                        table.row_name(r),
                                        c.name
                                    ),
                                ))
                            }
                        },
                    };
                }
                batch = batch.categorical_opt(&c.name, v);
            }
            Kind::Numeric | Kind::Stat => {
                let mut v: Vec<Option<f32>> = vec![None; n];
                for (r, &i) in at.iter().enumerate() {
                    v[i] = match &c.values {
                        Values::Int(x) => x[r].map(|x| x as f32),
                        Values::Float(x) => x[r].map(|x| x as f32),
                    };
                    if let Some(f) = v[i] {
                        if !f.is_finite() {
                            return Err(ToolError::input(
                                &table.path,
                                format!(
                                    "{} column {:?}: value does not fit a 32-bit float",
                                    table.row_name(r),
                                    c.name
                                ),
                            ));
                        }
                    }
                }
                batch = if rc.kind == Kind::Numeric {
                    batch.numeric_opt(&c.name, v)
                } else {
                    batch.stat_opt(&c.name, v)
                };
            }
        }
    }
    Ok(batch)
}
