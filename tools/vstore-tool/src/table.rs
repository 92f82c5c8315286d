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

use parquet::basic::{ConvertedType, LogicalType, Type as PhysicalType};
use parquet::column::page::{Page, PageMetadata, PageReader};
use parquet::column::reader::{ColumnReader, ColumnReaderImpl};
use parquet::data_type::DataType;
use parquet::file::reader::{ChunkReader, FileReader, SerializedFileReader};

use crate::error::{Result, ToolError};

/// The values of one table column.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// Integers (Parquet INT32/INT64/BOOLEAN; CSV all-integer columns).
    Int(Vec<Option<i64>>),
    /// Floats (Parquet FLOAT/DOUBLE; CSV numeric columns).
    Float(Vec<Option<f64>>),
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
    /// For CSV, the file line each row starts on (the header is line 1;
    /// blank lines and quoted line breaks counted); empty for Parquet,
    /// whose rows are named by their 0-based index.
    pub lines: Vec<u64>,
    /// Item id of each row.
    pub ids: Vec<u64>,
    /// Value columns, in file order.
    pub columns: Vec<TableColumn>,
}

impl Table {
    /// How row `i` (0-based) is named in messages.
    pub fn row_name(&self, i: usize) -> String {
        match self.lines.get(i) {
            Some(l) => format!("line {l}"),
            None => format!("row {i}"),
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

/// Whether a column is pandas' saved index (`__index_level_0__`), which
/// is never item data.
fn is_pandas_index(name: &str) -> bool {
    name.starts_with("__index_level_") && name.ends_with("__")
}

/// Reads `path` (`.parquet`/`.pq` or `.csv`) with `id_column` as the key,
/// leaving out the columns named in `skip` (and pandas' saved index).
pub fn read_table(path: &Path, id_column: &str, skip: &[String]) -> Result<Table> {
    table(path, None, id_column, skip)
}

/// [`read_table`] of a file's bytes already in memory; `path` names it in
/// messages and its extension picks the format (the fuzz targets use this).
pub fn table_from_bytes(
    path: &Path,
    bytes: &[u8],
    id_column: &str,
    skip: &[String],
) -> Result<Table> {
    table(path, Some(bytes), id_column, skip)
}

/// [`read_table`] of the bytes `given`, else of the file at `path`.
fn table(path: &Path, given: Option<&[u8]>, id_column: &str, skip: &[String]) -> Result<Table> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let keep = |n: &str| n == id_column || !(skip.iter().any(|s| s == n) || is_pandas_index(n));
    let no_id = |names: &[String]| {
        ToolError::input(
            path,
            format!(
                "no id column {id_column:?} (columns: {}); name it with --id-column",
                names.join(", ")
            ),
        )
    };
    let mut table = Table {
        path: path.to_path_buf(),
        lines: Vec::new(),
        ids: Vec::new(),
        columns: Vec::new(),
    };
    match ext.as_str() {
        "parquet" | "pq" => {
            let (names, mut cols, mut unsigned) = match given {
                Some(b) => catching_panics(path, || {
                    read_parquet(path, bytes::Bytes::copy_from_slice(b), &keep)
                })?,
                None => {
                    // Read into memory first (tables are read whole anyway):
                    // parquet's reader of a `File` reads a page header a
                    // few bytes per system call, which a crafted header
                    // turned into minutes.
                    let bytes = crate::inputs::read_file_with_magic(path, b"PAR1", "Parquet file")?;
                    catching_panics(path, || {
                        read_parquet(path, bytes::Bytes::from(bytes), &keep)
                    })?
                }
            };
            refuse_duplicate_columns(path, &names)?;
            let Some(at) = names.iter().position(|n| n == id_column) else {
                return Err(no_id(&names));
            };
            let id_vals = cols.remove(at);
            let id_unsigned = unsigned.remove(at);
            let mut names = names;
            names.remove(at);
            let Values::Int(v) = id_vals else {
                return Err(ToolError::input(
                    path,
                    format!("id column {id_column:?} holds floats; ids are integers"),
                ));
            };
            table.ids = v
                .iter()
                .enumerate()
                .map(|(i, x)| match *x {
                    // UINT_64 values are read as their bits.
                    Some(x) if id_unsigned => Ok(x as u64),
                    Some(x) if x >= 0 => Ok(x as u64),
                    Some(x) => Err(ToolError::input(
                        path,
                        format!("row {i} column {id_column:?}: id {x} is negative"),
                    )),
                    None => Err(ToolError::input(
                        path,
                        format!("row {i} column {id_column:?}: missing id"),
                    )),
                })
                .collect::<Result<_>>()?;
            for ((name, col), uns) in names.iter().zip(&cols).zip(unsigned) {
                if let (Values::Int(v), true) = (col, uns) {
                    if let Some(i) = v.iter().position(|x| matches!(x, Some(x) if *x < 0)) {
                        return Err(ToolError::input(
                            path,
                            format!(
                                "row {i} column {name:?}: value {} is above 2^63-1 (only id columns may hold such values)",
                                v[i].unwrap_or(0) as u64
                            ),
                        ));
                    }
                }
            }
            table.columns = names
                .into_iter()
                .zip(cols)
                .map(|(name, values)| TableColumn { name, values })
                .collect();
        }
        "csv" => {
            let (names, mut raw, lines) = match given {
                Some(b) => read_csv(path, b, &keep)?,
                None => {
                    let b = crate::inputs::read_text_file(path)?;
                    read_csv(path, &b, &keep)?
                }
            };
            refuse_duplicate_columns(path, &names)?;
            let Some(at) = names.iter().position(|n| n == id_column) else {
                return Err(no_id(&names));
            };
            let id_fields = raw.remove(at);
            let mut names = names;
            names.remove(at);
            table.ids = id_fields
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    f.parse::<u64>().map_err(|_| {
                        let why = if f.is_empty() {
                            "missing id".to_string()
                        } else if f.starts_with('-') && f[1..].parse::<u64>().is_ok() {
                            format!("id {f} is negative")
                        } else {
                            format!("{f:?} is not an item id (a non-negative integer)")
                        };
                        ToolError::input(
                            path,
                            format!("line {} column {id_column:?}: {why}", lines[i]),
                        )
                    })
                })
                .collect::<Result<_>>()?;
            for (name, fields) in names.into_iter().zip(raw) {
                let values = infer_csv_column(path, &name, fields, &lines)?;
                table.columns.push(TableColumn { name, values });
            }
            table.lines = lines;
        }
        _ => {
            return Err(ToolError::input(
                path,
                "unknown table format: use a .parquet, .pq or .csv file",
            ))
        }
    }
    Ok(table)
}

/// A column name given twice would make a table ambiguous (which `id`?).
fn refuse_duplicate_columns(path: &Path, names: &[String]) -> Result<()> {
    for (j, name) in names.iter().enumerate() {
        if names[..j].contains(name) {
            return Err(ToolError::input(
                path,
                format!("column {name:?} appears more than once; column names must be unique"),
            ));
        }
    }
    Ok(())
}

/// Column names, each kept column's raw fields, and each row's line.
type CsvColumns = (Vec<String>, Vec<Vec<String>>, Vec<u64>);

fn read_csv(path: &Path, bytes: &[u8], keep: &dyn Fn(&str) -> bool) -> Result<CsvColumns> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let all: Vec<String> = r
        .headers()
        .map_err(|e| csv_err(path, e))?
        .iter()
        .map(str::to_string)
        .collect();
    if all.is_empty() || all.iter().all(String::is_empty) {
        return Err(ToolError::input(path, "no header line"));
    }
    let kept: Vec<usize> = (0..all.len()).filter(|&c| keep(&all[c])).collect();
    let names = kept.iter().map(|&c| all[c].clone()).collect();
    let mut raw: Vec<Vec<String>> = vec![Vec::new(); kept.len()];
    // Lines are counted from byte offsets: the csv crate's own line count
    // leaves out line breaks inside quoted fields.
    let mut lines = Vec::new();
    let (mut at, mut line) = (0usize, 1u64);
    for rec in r.records() {
        let rec = rec.map_err(|e| csv_err(path, e))?;
        let mut start = rec
            .position()
            .map_or(at, |p| p.byte() as usize)
            .min(bytes.len());
        // A record's position may point at blank lines skipped before it.
        while start < bytes.len() && matches!(bytes[start], b'\n' | b'\r') {
            start += 1;
        }
        line += bytes[at.min(start)..start]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        at = start;
        lines.push(line);
        for (k, &c) in kept.iter().enumerate() {
            raw[k].push(rec.get(c).unwrap_or("").to_string());
        }
    }
    Ok((names, raw, lines))
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

fn infer_csv_column(path: &Path, name: &str, fields: Vec<String>, lines: &[u64]) -> Result<Values> {
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
                        lines[i]
                    ),
                ))
            }
            Err(_) => {
                return Err(ToolError::input(
                    path,
                    format!(
                        "line {} column {name:?}: {f:?} is not a number (columns hold numbers; categorical values are integer codes; --skip-column leaves a column out)",
                        lines[i]
                    ),
                ))
            }
        }
    }
    Ok(Values::Float(out))
}

/// What a Parquet column's logical type says its integers mean: `None`
/// for plain integers, `Some(10^scale)` for decimals (the integer is the
/// value times that); dates, times, timestamps and intervals are refused
/// (their raw integers in a numeric column would be silently wrong units).
fn meaning(
    path: &Path,
    name: &str,
    d: &parquet::schema::types::ColumnDescriptor,
) -> Result<Option<f64>> {
    let what = match (d.logical_type_ref(), d.converted_type()) {
        (Some(LogicalType::Decimal { .. }), _) | (_, ConvertedType::DECIMAL) => {
            return Ok(Some(10f64.powi(d.type_scale())));
        }
        (Some(LogicalType::Date), _) | (_, ConvertedType::DATE) => "dates",
        (Some(LogicalType::Time { .. }), _)
        | (_, ConvertedType::TIME_MILLIS | ConvertedType::TIME_MICROS) => "times of day",
        (Some(LogicalType::Timestamp { .. }), _)
        | (_, ConvertedType::TIMESTAMP_MILLIS | ConvertedType::TIMESTAMP_MICROS) => "timestamps",
        (_, ConvertedType::INTERVAL) => "intervals",
        _ => return Ok(None),
    };
    Err(ToolError::input(
        path,
        format!(
            "column {name:?} holds {what}; columns hold numbers: convert it to one (e.g. \
             days or seconds since the epoch) or leave it out with --skip-column"
        ),
    ))
}

thread_local! {
    /// Set while [`catching_panics`] runs: the panic hook keeps quiet.
    static IN_PARQUET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `read` (which decodes with the `parquet` crate) and turns a panic
/// inside it into an error naming the file. parquet-rs still panics on
/// some malformed files (e.g. an overlong varint in a run of levels:
/// `tests/data/fuzz/parquet-vlq-overflow.parquet`, found by
/// `fuzz/fuzz_targets/parquet.rs`), and a bad input must be refused, not
/// crash the tool. The panic's own message is kept off standard error by
/// a hook, installed once, that defers to the previous hook on every
/// other thread and at every other time. (A build with `panic = "abort"`
/// would still abort: none of this workspace's profiles sets it.)
fn catching_panics<T>(path: &Path, read: impl FnOnce() -> Result<T>) -> Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_PARQUET.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    IN_PARQUET.with(|q| q.set(true));
    // Unwind safety: whatever `read` built is dropped with the panic.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read));
    IN_PARQUET.with(|q| q.set(false));
    r.unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(ToolError::input(
            path,
            format!("not a readable Parquet file (the Parquet decoder failed: {why})"),
        ))
    })
}

/// Bytes of one PLAIN-encoded value of a column of this physical type (a
/// byte array: at least its 4-byte length).
fn plain_width(t: PhysicalType, type_length: i32) -> usize {
    match t {
        PhysicalType::BOOLEAN => 0,
        PhysicalType::INT32 | PhysicalType::FLOAT | PhysicalType::BYTE_ARRAY => 4,
        PhysicalType::INT64 | PhysicalType::DOUBLE => 8,
        PhysicalType::INT96 => 12,
        PhysicalType::FIXED_LEN_BYTE_ARRAY => usize::try_from(type_length).unwrap_or(0),
    }
}

/// A column chunk's pages, each dictionary page checked before the
/// decoder sees it: its values are PLAIN-encoded, `width` bytes or more
/// each, so a page claiming more than its bytes can hold is damaged. (The
/// decoder would allocate room for every claimed value first: a four-byte
/// count made it ask for 16 GB, found by the `parquet` fuzz target.)
struct CheckedPages {
    inner: Box<dyn PageReader>,
    width: usize,
}

impl CheckedPages {
    fn check(&self, page: Option<Page>) -> parquet::errors::Result<Option<Page>> {
        if let Some(Page::DictionaryPage {
            buf, num_values, ..
        }) = &page
        {
            if (*num_values as usize).saturating_mul(self.width) > buf.len() {
                return Err(parquet::errors::ParquetError::General(format!(
                    "a dictionary page claims {num_values} values in {} bytes",
                    buf.len()
                )));
            }
        }
        Ok(page)
    }
}

impl Iterator for CheckedPages {
    type Item = parquet::errors::Result<Page>;

    fn next(&mut self) -> Option<Self::Item> {
        self.get_next_page().transpose()
    }
}

impl PageReader for CheckedPages {
    fn get_next_page(&mut self) -> parquet::errors::Result<Option<Page>> {
        let page = self.inner.get_next_page()?;
        self.check(page)
    }

    fn peek_next_page(&mut self) -> parquet::errors::Result<Option<PageMetadata>> {
        self.inner.peek_next_page()
    }

    fn skip_next_page(&mut self) -> parquet::errors::Result<()> {
        self.inner.skip_next_page()
    }

    fn supports_deferred_dictionary(&self) -> bool {
        self.inner.supports_deferred_dictionary()
    }

    fn take_deferred_dictionary(&mut self) -> parquet::errors::Result<Option<Page>> {
        let page = self.inner.take_deferred_dictionary()?;
        self.check(page)
    }

    fn at_record_boundary(&mut self) -> parquet::errors::Result<bool> {
        self.inner.at_record_boundary()
    }
}

fn pq_err(path: &Path, e: parquet::errors::ParquetError) -> ToolError {
    ToolError::input(path, format!("not a readable Parquet file ({e})"))
}

/// Names, values and unsigned-ness of the kept columns.
type PqColumns = (Vec<String>, Vec<Values>, Vec<bool>);

fn read_parquet<R: ChunkReader + 'static>(
    path: &Path,
    input: R,
    keep: &dyn Fn(&str) -> bool,
) -> Result<PqColumns> {
    let reader = SerializedFileReader::new(input).map_err(|e| pq_err(path, e))?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let ncols = schema.num_columns();
    let mut names = Vec::with_capacity(ncols);
    let mut cols: Vec<Values> = Vec::with_capacity(ncols);
    let mut index = Vec::with_capacity(ncols);
    // Per kept column: the power of ten a decimal's integers are divided by.
    let mut scales: Vec<Option<f64>> = Vec::with_capacity(ncols);
    for c in 0..ncols {
        let d = schema.column(c);
        let name = d.path().string();
        // A nested column (a list, a struct) is named, kept or skipped by
        // its top-level field: `vec`, not `vec.list.element`.
        let top = d.path().parts().first().cloned().unwrap_or_default();
        if !keep(&top) {
            continue;
        }
        if d.max_rep_level() > 0 || d.path().parts().len() != 1 {
            let what = if d.max_rep_level() > 0 {
                "a list (repeated)"
            } else {
                "nested"
            };
            return Err(ToolError::input(
                path,
                format!(
                    "column {top:?} is {what}; tables must be flat (vectors come from \
                     --embedding .npy files): leave it out with --skip-column {top}"
                ),
            ));
        }
        let meaning = meaning(path, &name, &d)?;
        let values = match d.physical_type() {
            PhysicalType::INT32 | PhysicalType::INT64 if meaning.is_some() => {
                Values::Float(Vec::new())
            }
            PhysicalType::BOOLEAN | PhysicalType::INT32 | PhysicalType::INT64 => {
                Values::Int(Vec::new())
            }
            PhysicalType::FLOAT | PhysicalType::DOUBLE => Values::Float(Vec::new()),
            // Spark's default timestamp type (parquet-mr writes it
            // without a logical type).
            PhysicalType::INT96 => {
                return Err(ToolError::input(
                    path,
                    format!(
                        "column {name:?} holds INT96 timestamps (Spark's default timestamp \
                         type); columns hold numbers: convert it to one (e.g. days or seconds \
                         since the epoch) or leave it out with --skip-column"
                    ),
                ))
            }
            t => {
                let float16 = matches!(
                    d.logical_type_ref(),
                    Some(parquet::basic::LogicalType::Float16)
                );
                let what = match d.converted_type() {
                    _ if float16 => "float16 values (write it as float32 or float64)".to_string(),
                    ConvertedType::UTF8 => "strings".to_string(),
                    ConvertedType::DECIMAL => "decimals stored as byte arrays (write them \
                        as float64, or as integers: pyarrow's store_decimal_as_integer)"
                        .to_string(),
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
        index.push(c);
        scales.push(meaning);
    }
    let unsigned: Vec<bool> = index
        .iter()
        .map(|&c| {
            matches!(
                schema.column(c).converted_type(),
                ConvertedType::UINT_8
                    | ConvertedType::UINT_16
                    | ConvertedType::UINT_32
                    | ConvertedType::UINT_64
            )
        })
        .collect();
    for g in 0..reader.num_row_groups() {
        let rg = reader.get_row_group(g).map_err(|e| pq_err(path, e))?;
        let rows = usize::try_from(rg.metadata().num_rows()).map_err(|_| {
            ToolError::input(
                path,
                format!("row group {g} claims {} rows", rg.metadata().num_rows()),
            )
        })?;
        for (k, out) in cols.iter_mut().enumerate() {
            let c = index[k];
            let d = schema.column(c);
            let unsigned = unsigned[k];
            let max_def = d.max_def_level();
            // The chunk's pages through `CheckedPages`, which refuses a
            // dictionary page claiming more values than its bytes hold
            // before the decoder allocates room for them.
            let pages = rg.get_column_page_reader(c).map_err(|e| pq_err(path, e))?;
            let pages = Box::new(CheckedPages {
                inner: pages,
                width: plain_width(d.physical_type(), d.type_length()),
            });
            let r = parquet::column::reader::get_column_reader(d.clone(), pages);
            let name = &names[k];
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
                    // UINT_64 values are kept as their bits (see read_table).
                    read_chunk(path, name, r, rows, max_def, o, |x| x)?
                }
                // Decimals stored as integers: the value is the integer
                // divided by 10^scale.
                (ColumnReader::Int32ColumnReader(r), Values::Float(o)) => {
                    let p = scales[k].unwrap_or(1.0);
                    read_chunk(path, name, r, rows, max_def, o, |x| f64::from(x) / p)?
                }
                (ColumnReader::Int64ColumnReader(r), Values::Float(o)) => {
                    let p = scales[k].unwrap_or(1.0);
                    read_chunk(path, name, r, rows, max_def, o, |x| x as f64 / p)?
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
    Ok((names, cols, unsigned))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name)
    }

    #[test]
    fn a_panic_in_the_parquet_decoder_is_an_error() {
        // Found by the parquet fuzz target: parquet-rs panics on it (an
        // overlong varint in a run of definition levels).
        let p = data("fuzz/parquet-vlq-overflow.parquet");
        for id in ["id", "item_id"] {
            let e = read_table(&p, id, &[]).unwrap_err().to_string();
            assert!(
                e.contains("parquet-vlq-overflow.parquet")
                    && e.contains("not a readable Parquet file"),
                "{e}"
            );
        }
        let bytes = std::fs::read(&p).unwrap();
        assert!(table_from_bytes(&p, &bytes, "id", &[]).is_err());
        // The reader works afterwards, and panics elsewhere still unwind.
        let ok = read_table(&data("spark/stats.parquet"), "item_id", &[]).unwrap();
        assert_eq!(ok.ids.len(), 90);
        assert!(std::panic::catch_unwind(|| panic!("elsewhere")).is_err());
    }

    #[test]
    fn a_dictionary_page_claiming_more_values_than_its_bytes_is_refused() {
        // Found by the parquet fuzz target: a dictionary page whose value
        // count (2,013,265,920) made the decoder allocate 16 GB before reading.
        let p = data("fuzz/parquet-dictionary-count.parquet");
        let e = read_table(&p, "item_id", &[]).unwrap_err().to_string();
        assert!(
            e.contains("parquet-dictionary-count.parquet")
                && e.contains("a dictionary page claims 2013265920 values in 320 bytes"),
            "{e}"
        );
        let bytes = std::fs::read(&p).unwrap();
        let e = table_from_bytes(&p, &bytes, "item_id", &[]).unwrap_err();
        assert!(e.to_string().contains("dictionary page claims"), "{e}");
        // Files with dictionary pages still read (Spark and polars write
        // them).
        let ok = read_table(&data("spark/stats.parquet"), "item_id", &[]).unwrap();
        assert_eq!(ok.ids.len(), 90);
    }

    #[test]
    fn a_page_header_the_thrift_reader_skips_through_is_refused() {
        // Found by the parquet fuzz target (a slow unit): a 5 KB file whose
        // page headers hold lists of booleans claiming up to 2^31 elements,
        // which parquet 60.1's thrift reader skips one (zero-byte) element
        // at a time. Read from a `File` it took 136 s (a system call per
        // few bytes); the tool now reads tables into memory first (about a
        // second). Kept in `fuzz/slow/`, out of the fuzz seeds: under the
        // sanitizer the same loop takes minutes.
        let p = data("fuzz/slow/parquet-page-header-skip.parquet");
        let e = read_table(&p, "id", &[]).unwrap_err().to_string();
        assert!(
            e.contains("parquet-page-header-skip.parquet: not a readable Parquet file"),
            "{e}"
        );
    }

    #[test]
    fn a_table_file_that_is_not_parquet_is_refused_from_its_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.parquet");
        std::fs::write(&p, b"id,x\n1,2\n").unwrap();
        let e = read_table(&p, "id", &[]).unwrap_err().to_string();
        assert!(
            e.contains("not a Parquet file (it does not start with \"PAR1\")"),
            "{e}"
        );
    }
}
