//! Reading item tables (profile or statistics columns keyed by item id)
//! from Parquet or CSV, chosen by the file's extension.
//!
//! A table has one id column (unsigned or non-negative integers, no
//! missing values) and value columns. Each value column is read as
//! integers or as floats: Parquet by its physical type, CSV by inference
//! (every non-empty field an integer, else every one a number). Missing
//! values (Parquet nulls, empty CSV fields) stay missing: the store keeps
//! them as missing and reads them as the column's default.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use parquet::basic::{ConvertedType, Type as PhysicalType};
use parquet::column::reader::{ColumnReader, ColumnReaderImpl};
use parquet::data_type::DataType;
use parquet::file::reader::{FileReader, SerializedFileReader};

use crate::error::{Result, ToolError};

/// The values of one table column.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// Integers (Parquet INT32/INT64/BOOLEAN; CSV all-integer columns).
    Int(Vec<Option<i64>>),
    /// Floats (Parquet FLOAT/DOUBLE; CSV numeric columns).
    Float(Vec<Option<f64>>),
}

impl Values {
    /// Number of rows.
    pub fn len(&self) -> usize {
        match self {
            Values::Int(v) => v.len(),
            Values::Float(v) => v.len(),
        }
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The column's type as a word for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Values::Int(_) => "integer",
            Values::Float(_) => "float",
        }
    }
}

/// A value column of a table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableColumn {
    /// Column name (header or Parquet field name).
    pub name: String,
    /// One value per table row.
    pub values: Values,
}

/// A table read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The file it came from.
    pub path: PathBuf,
    /// How rows are named in messages ("row" for Parquet, "line" for CSV,
    /// with the CSV header as line 1).
    pub row_word: &'static str,
    /// Item id of each row.
    pub ids: Vec<u64>,
    /// Value columns, in file order.
    pub columns: Vec<TableColumn>,
}

impl Table {
    /// How row `i` (0-based) is named in messages.
    pub fn row_name(&self, i: usize) -> String {
        match self.row_word {
            "line" => format!("line {}", i + 2),
            w => format!("{w} {i}"),
        }
    }

    /// Refuses a repeated id, naming both rows.
    pub fn check_unique(&self) -> Result<()> {
        let mut seen = HashMap::with_capacity(self.ids.len());
        for (i, &id) in self.ids.iter().enumerate() {
            if let Some(j) = seen.insert(id, i) {
                return Err(ToolError::input(
                    &self.path,
                    format!(
                        "duplicate id {id} at {} and {}",
                        self.row_name(j),
                        self.row_name(i)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Reads `path` (`.parquet`/`.pq` or `.csv`) with `id_column` as the key.
pub fn read_table(path: &Path, id_column: &str) -> Result<Table> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let ((names, mut cols), row_word) = match ext.as_str() {
        "parquet" | "pq" => (read_parquet(path)?, "row"),
        "csv" => (read_csv(path)?, "line"),
        _ => {
            return Err(ToolError::input(
                path,
                "unknown table format: use a .parquet, .pq or .csv file",
            ))
        }
    };
    let Some(at) = names.iter().position(|n| n == id_column) else {
        return Err(ToolError::input(
            path,
            format!(
                "no id column {id_column:?} (columns: {}); name it with --id-column",
                names.join(", ")
            ),
        ));
    };
    let id_vals = cols.remove(at);
    let mut names = names;
    names.remove(at);
    let mut table = Table {
        path: path.to_path_buf(),
        row_word,
        ids: Vec::new(),
        columns: Vec::new(),
    };
    let ids = match id_vals {
        Values::Int(v) => v,
        Values::Float(_) => {
            return Err(ToolError::input(
                path,
                format!("id column {id_column:?} holds floats; ids are integers"),
            ))
        }
    };
    let mut out = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        match id {
            Some(x) if *x >= 0 => out.push(*x as u64),
            Some(x) => {
                return Err(ToolError::input(
                    path,
                    format!(
                        "{} column {id_column:?}: id {x} is negative",
                        table.row_name(i)
                    ),
                ))
            }
            None => {
                return Err(ToolError::input(
                    path,
                    format!("{} column {id_column:?}: missing id", table.row_name(i)),
                ))
            }
        }
    }
    table.ids = out;
    table.columns = names
        .into_iter()
        .zip(cols)
        .map(|(name, values)| TableColumn { name, values })
        .collect();
    Ok(table)
}

type Columns = (Vec<String>, Vec<Values>);

fn read_csv(path: &Path) -> Result<Columns> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| csv_err(path, e))?;
    let names: Vec<String> = r
        .headers()
        .map_err(|e| csv_err(path, e))?
        .iter()
        .map(str::to_string)
        .collect();
    if names.is_empty() || names.iter().all(String::is_empty) {
        return Err(ToolError::input(path, "no header line"));
    }
    let mut raw: Vec<Vec<String>> = vec![Vec::new(); names.len()];
    for rec in r.records() {
        let rec = rec.map_err(|e| csv_err(path, e))?;
        for (c, f) in rec.iter().enumerate() {
            raw[c].push(f.to_string());
        }
    }
    let mut cols = Vec::with_capacity(names.len());
    for (name, fields) in names.iter().zip(raw) {
        cols.push(infer_csv_column(path, name, fields)?);
    }
    Ok((names, cols))
}

fn csv_err(path: &Path, e: csv::Error) -> ToolError {
    let at = e
        .position()
        .map(|p| format!("line {}: ", p.line()))
        .unwrap_or_default();
    let what = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("{at}{len} fields where the header has {expected_len}"),
        csv::ErrorKind::Io(io) => format!("{at}{io}"),
        _ => format!("{at}{e}"),
    };
    ToolError::input(path, what)
}

fn is_missing(s: &str) -> bool {
    s.is_empty()
}

fn infer_csv_column(path: &Path, name: &str, fields: Vec<String>) -> Result<Values> {
    let all_int = fields
        .iter()
        .all(|f| is_missing(f) || f.parse::<i64>().is_ok());
    if all_int {
        return Ok(Values::Int(
            fields.iter().map(|f| f.parse::<i64>().ok()).collect(),
        ));
    }
    let mut out = Vec::with_capacity(fields.len());
    for (i, f) in fields.iter().enumerate() {
        if is_missing(f) {
            out.push(None);
            continue;
        }
        match f.parse::<f64>() {
            Ok(x) if x.is_finite() => out.push(Some(x)),
            Ok(x) => {
                return Err(ToolError::input(
                    path,
                    format!(
                        "line {} column {name:?}: {x} is not finite (leave the field empty for a missing value)",
                        i + 2
                    ),
                ))
            }
            Err(_) => {
                return Err(ToolError::input(
                    path,
                    format!(
                        "line {} column {name:?}: {f:?} is not a number (columns hold numbers; categorical values are integer codes)",
                        i + 2
                    ),
                ))
            }
        }
    }
    Ok(Values::Float(out))
}

fn pq_err(path: &Path, e: parquet::errors::ParquetError) -> ToolError {
    ToolError::input(path, format!("not a readable Parquet file ({e})"))
}

fn read_parquet(path: &Path) -> Result<Columns> {
    let f = std::fs::File::open(path).map_err(|e| ToolError::io("open", path, e))?;
    let reader = SerializedFileReader::new(f).map_err(|e| pq_err(path, e))?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let ncols = schema.num_columns();
    let mut names = Vec::with_capacity(ncols);
    let mut cols: Vec<Values> = Vec::with_capacity(ncols);
    for c in 0..ncols {
        let d = schema.column(c);
        let name = d.path().string();
        if d.max_rep_level() > 0 || d.path().parts().len() != 1 {
            return Err(ToolError::input(
                path,
                format!("column {name:?} is nested or repeated; tables must be flat"),
            ));
        }
        let values = match d.physical_type() {
            PhysicalType::BOOLEAN | PhysicalType::INT32 | PhysicalType::INT64 => {
                Values::Int(Vec::new())
            }
            PhysicalType::FLOAT | PhysicalType::DOUBLE => Values::Float(Vec::new()),
            t => {
                let what = match d.converted_type() {
                    ConvertedType::UTF8 => "strings".to_string(),
                    _ => format!("{t} values"),
                };
                return Err(ToolError::input(
                    path,
                    format!(
                        "column {name:?} holds {what}; columns hold numbers (categorical values are integer codes)"
                    ),
                ));
            }
        };
        names.push(name);
        cols.push(values);
    }
    for g in 0..reader.num_row_groups() {
        let rg = reader.get_row_group(g).map_err(|e| pq_err(path, e))?;
        let rows = usize::try_from(rg.metadata().num_rows()).unwrap_or(0);
        for (c, out) in cols.iter_mut().enumerate() {
            let d = schema.column(c);
            let unsigned = matches!(
                d.converted_type(),
                ConvertedType::UINT_8
                    | ConvertedType::UINT_16
                    | ConvertedType::UINT_32
                    | ConvertedType::UINT_64
            );
            let max_def = d.max_def_level();
            let r = rg.get_column_reader(c).map_err(|e| pq_err(path, e))?;
            let name = &names[c];
            match (r, out) {
                (ColumnReader::BoolColumnReader(r), Values::Int(o)) => {
                    read_chunk(path, name, r, rows, max_def, o, i64::from)?
                }
                (ColumnReader::Int32ColumnReader(r), Values::Int(o)) => {
                    if unsigned {
                        read_chunk(path, name, r, rows, max_def, o, |x| i64::from(x as u32))?
                    } else {
                        read_chunk(path, name, r, rows, max_def, o, i64::from)?
                    }
                }
                (ColumnReader::Int64ColumnReader(r), Values::Int(o)) => {
                    let from = o.len();
                    read_chunk(path, name, r, rows, max_def, o, |x| x)?;
                    // UINT_64 values are stored as their bits: above
                    // i64::MAX they read as negative here.
                    if let Some(i) = o[from..]
                        .iter()
                        .position(|x| matches!(x, Some(x) if *x < 0 && unsigned))
                    {
                        return Err(ToolError::input(
                            path,
                            format!("row {} column {name:?}: value {} is above 2^63-1, which vstore-tool does not read", from + i, o[from + i].unwrap_or(0) as u64),
                        ));
                    }
                }
                (ColumnReader::FloatColumnReader(r), Values::Float(o)) => {
                    read_chunk(path, name, r, rows, max_def, o, f64::from)?
                }
                (ColumnReader::DoubleColumnReader(r), Values::Float(o)) => {
                    read_chunk(path, name, r, rows, max_def, o, |x| x)?
                }
                _ => {
                    return Err(ToolError::input(
                        path,
                        format!("column {name:?}: unexpected physical type in row group {g}"),
                    ))
                }
            }
        }
    }
    // Non-finite floats: named by row.
    for (name, col) in names.iter().zip(&cols) {
        if let Values::Float(v) = col {
            if let Some(r) = v
                .iter()
                .position(|x| matches!(x, Some(x) if !x.is_finite()))
            {
                return Err(ToolError::input(
                    path,
                    format!(
                        "row {r} column {name:?}: {} is not finite (write missing values as nulls)",
                        v[r].unwrap_or(0.0)
                    ),
                ));
            }
        }
    }
    Ok((names, cols))
}

/// Reads one column chunk of `rows` rows, appending to `out` (nulls as `None`).
fn read_chunk<T: DataType, V>(
    path: &Path,
    name: &str,
    mut r: ColumnReaderImpl<T>,
    rows: usize,
    max_def: i16,
    out: &mut Vec<Option<V>>,
    conv: impl Fn(T::T) -> V,
) -> Result<()>
where
    T::T: Clone,
{
    let mut done = 0;
    while done < rows {
        let mut defs: Vec<i16> = Vec::new();
        let mut vals: Vec<T::T> = Vec::new();
        let (records, nvals, _levels) = r
            .read_records(
                (rows - done).min(64 * 1024),
                (max_def > 0).then_some(&mut defs),
                None,
                &mut vals,
            )
            .map_err(|e| pq_err(path, e))?;
        if records == 0 {
            return Err(ToolError::input(
                path,
                format!(
                    "column {name:?}: chunk ends after {done} of {rows} rows (truncated file?)"
                ),
            ));
        }
        let mut it = vals.into_iter().take(nvals);
        if max_def > 0 {
            for &l in defs.iter().take(records) {
                if l == max_def {
                    let v = it.next().ok_or_else(|| {
                        ToolError::input(path, format!("column {name:?}: fewer values than levels"))
                    })?;
                    out.push(Some(conv(v)));
                } else {
                    out.push(None);
                }
            }
        } else {
            out.extend(it.take(records).map(|v| Some(conv(v))));
        }
        done += records;
    }
    Ok(())
}
