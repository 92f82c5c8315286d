//! Reading numpy `.npy` files: item ids (integer, 1-D) and embeddings or
//! user vectors (float, 2-D or 1-D).
//!
//! `npyz` parses the header (every header version, any dtype string); the
//! payload is decoded here, after checking that the file holds exactly the
//! bytes the header's shape needs (so a truncated file is named as such).
//!
//! # Mapped, and decoded a slice at a time
//!
//! A regular file is mapped read-only, not read into memory: the header is
//! parsed from the mapping and the payload is decoded from it
//! 8 MiB at a time straight into the one buffer the library is
//! handed (`vstore::ItemBatch` owns a `Vec<f32>`, so that copy is the only
//! one). Each slice's pages are given back to the kernel once it is
//! decoded, so building from a 2.56 GB float32 file holds about one copy
//! of the vectors, not the file's bytes plus their decoded copy.
//! Float16, float64, big-endian and Fortran-order files take the same path
//! (converted, or placed in C order, slice by slice). Anything that is not
//! a regular file (a pipe, `/dev/stdin`) is read into memory instead, no
//! further than its header says (a stream that does not start with a
//! `.npy` header is refused from its first bytes).
//!
//! The input file must not shrink while it is read: a program that
//! truncates or rewrites it during those seconds makes the read fault
//! (SIGBUS on Linux) instead of failing with a message. It is the user's
//! own file, read once; copy it first if another program may rewrite it
//! meanwhile. [`matrix_from_bytes`], [`ids_from_bytes`] and
//! [`vector_from_bytes`] decode bytes already in memory (the fuzz targets
//! use them).

use std::ops::Range;
use std::path::Path;

use indicatif::ProgressBar;
use memmap2::Mmap;
use npyz::{DType, Endianness, NpyFile, Order, TypeChar};

use crate::error::{Result, ToolError};
use crate::progress::Progress;

/// A decoded numeric array: its shape (C order) and values.
#[derive(Debug, Clone, PartialEq)]
pub struct Array<T> {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Values in C (row-major) order.
    pub values: Vec<T>,
}

/// The element type of a numeric `.npy` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem {
    Float(usize),
    Int(usize),
    Uint(usize),
}

struct Raw<'a> {
    elem: Elem,
    big_endian: bool,
    shape: Vec<usize>,
    fortran: bool,
    /// The payload: the file's last bytes, exactly as many as the shape needs.
    data: &'a [u8],
    /// Where `data` starts in the file.
    offset: usize,
    descr: String,
}

/// Payload bytes decoded per step (a multiple of every element size):
/// 8 MiB, or 64 bytes in unit tests so that small arrays cross slices.
const SLICE: usize = if cfg!(test) { 64 } else { 8 << 20 };

/// A `.npy` file's bytes: mapped (a regular file) or read (anything else).
enum FileBytes {
    Mapped(Mmap),
    Read(Vec<u8>),
}

impl FileBytes {
    fn open(path: &Path) -> Result<FileBytes> {
        let mut f = std::fs::File::open(path).map_err(|e| ToolError::io("open", path, e))?;
        let meta = f.metadata().map_err(|e| ToolError::io("stat", path, e))?;
        if !meta.is_file() || meta.len() == 0 {
            // A pipe cannot be mapped, and an empty file need not be.
            return read_stream(path, &mut f).map(FileBytes::Read);
        }
        // SAFETY: the mapping is read-only and private to this function's
        // caller, which reads it once and drops it. Its length is the
        // file's length as just read from fstat, and every offset used is
        // checked against the mapping's length. The file is the user's
        // input: if another program truncates it while it is mapped, a
        // read past the new end faults (SIGBUS); the module docs say so,
        // and copying the file first is the remedy. No Rust reference
        // outlives a change of its contents, since nothing here writes.
        let map = unsafe { memmap2::MmapOptions::new().map(&f) }
            .map_err(|e| ToolError::io("map", path, e))?;
        #[cfg(unix)]
        {
            // Advice only: read ahead, since the payload is read in order.
            let _ = map.advise(memmap2::Advice::Sequential);
        }
        Ok(FileBytes::Mapped(map))
    }

    fn bytes(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Read(v) => v,
        }
    }

    /// Gives back the pages of `range` (decoded already), so that they
    /// stop counting in the process's resident memory.
    fn done(&self, range: Range<usize>) {
        #[cfg(unix)]
        if let FileBytes::Mapped(m) = self {
            if range.start < range.end && range.end <= m.len() {
                // SAFETY: the mapping is a shared, read-only mapping of a
                // file (`Mmap::map`), so MADV_DONTNEED only drops its page
                // table entries: a later read of the range faults the same
                // file pages back in and sees the same bytes (there are no
                // private copy-on-write pages whose contents it could
                // discard). The range lies within the mapping (checked
                // above; the start is rounded down to a page by memmap2).
                let _ = unsafe {
                    m.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        range.start,
                        range.end - range.start,
                    )
                };
            }
        }
        #[cfg(not(unix))]
        let _ = range;
    }
}

/// Reads a `.npy` stream (a pipe, a device) no further than its header
/// says: the magic and header first (refused at once if they are not a
/// `.npy` header, so `/dev/zero` or `/dev/urandom` are not read into
/// memory without end), then the payload its shape and dtype need, and
/// up to 64 KiB more (so trailing bytes are still named by [`parse`]).
fn read_stream(path: &Path, f: &mut impl std::io::Read) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    let mut take = |v: &mut Vec<u8>, n: u64| {
        std::io::Read::read_to_end(&mut std::io::Read::take(&mut *f, n), v)
            .map_err(|e| ToolError::io("read", path, e))
    };
    take(&mut v, 12)?;
    if v.len() < 12 || &v[..6] != b"\x93NUMPY" {
        // Short or not a .npy file: `parse` names what is wrong.
        take(&mut v, 64)?;
        return Ok(v);
    }
    let header_end = match v[6] {
        1 => 10 + usize::from(u16::from_le_bytes([v[8], v[9]])),
        _ => 12 + u32::from_le_bytes([v[8], v[9], v[10], v[11]]) as usize,
    };
    if header_end > 12 + MAX_HEADER {
        return Ok(v); // `precheck` refuses the header's size.
    }
    let need = header_end.saturating_sub(v.len()) as u64;
    take(&mut v, need)?;
    let payload = v
        .get(..header_end)
        .and_then(|h| payload_bytes(&String::from_utf8_lossy(h)));
    // Without it the header is one `parse` refuses, and the bytes read
    // are enough to say why.
    if let Some(n) = payload {
        take(&mut v, n.saturating_add(64 << 10))?;
    }
    Ok(v)
}

/// The payload bytes a `.npy` header's shape and dtype (`'descr'`, whose
/// trailing digits are the item size, e.g. `'<f4'`) need; `None` if the
/// header does not say (then the parser refuses it).
fn payload_bytes(header: &str) -> Option<u64> {
    let at = header.find("'descr'")?;
    let rest = &header[at + 7..];
    let open = rest.find('\'')?;
    let close = open + 1 + rest[open + 1..].find('\'')?;
    let descr = &rest[open + 1..close];
    let digits = descr.trim_start_matches(|c: char| !c.is_ascii_digit());
    let item: u64 = digits.parse().ok()?;
    let dims = shape_of(header)?.1.ok()?;
    dims.iter().try_fold(item, |n, &d| n.checked_mul(d))
}

/// numpy's own limit on header size (`max_header_size`, numpy >= 1.24).
const MAX_HEADER: usize = 10_000;

/// Checks the framing before the header is handed to `npyz`: the header
/// fits in the file and in numpy's size limit, brackets nest shallowly
/// (the header parser recurses), and the shape's element count neither
/// overflows nor exceeds the file's bytes (so no product of a crafted
/// shape can overflow later).
fn precheck(bytes: &[u8]) -> std::result::Result<(), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a valid .npy file (no \\x93NUMPY magic)".into());
    }
    let (len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("not a valid .npy file (format version {v})")),
    };
    if len > MAX_HEADER {
        return Err(format!(
            "header of {len} bytes is larger than numpy's limit of {MAX_HEADER}"
        ));
    }
    let Some(header) = bytes.get(start..start + len) else {
        return Err(format!(
            "truncated: the header needs {len} bytes, the file holds {}",
            bytes.len() - start
        ));
    };
    let mut depth = 0usize;
    for &b in header {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > 16 {
                    return Err("not a valid .npy file (header nests too deeply)".into());
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let text = String::from_utf8_lossy(header);
    if let Some((shape, dims)) = shape_of(&text) {
        let count = dims?.iter().fold(1u64, |c, &d| c.saturating_mul(d));
        if count > (bytes.len() - start - len) as u64 {
            return Err(format!(
                "truncated: the header's shape {shape} claims {count} values, more than the {} data bytes the file holds",
                bytes.len() - start - len
            ));
        }
    }
    Ok(())
}

/// A `.npy` header's `'shape'` tuple as written (`(3, 4)`) and its
/// dimensions (an error names an entry that is not a number); `None` if
/// the header has no shape tuple (the parser then refuses it).
fn shape_of(header: &str) -> Option<(&str, std::result::Result<Vec<u64>, String>)> {
    let rest = &header[header.find("'shape'")?..];
    // The first ')' after the first '(' (a ')' before it, as in a damaged
    // header `'shape': )(`, is not the tuple's).
    let open = rest.find('(')?;
    let close = open + rest[open..].find(')')?;
    let shape = rest.get(open..=close)?;
    let dims = shape[1..shape.len() - 1]
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            (t.trim_end_matches('L').parse())
                .map_err(|_| format!("not a valid .npy file (shape entry {t:?})"))
        })
        .collect();
    Some((shape, dims))
}

fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<Raw<'a>> {
    let bad = |what: String| ToolError::input(path, what);
    precheck(bytes).map_err(bad)?;
    let mut rest: &[u8] = bytes;
    let npy = NpyFile::new(&mut rest).map_err(|e| bad(format!("not a valid .npy file ({e})")))?;
    let DType::Plain(ts) = npy.dtype() else {
        return Err(bad(format!(
            "dtype {} is a structured array; expected a plain numeric array",
            npy.dtype().descr()
        )));
    };
    let descr = ts.to_string();
    let size = ts.size_field() as usize;
    let elem = match ts.type_char() {
        TypeChar::Float => Elem::Float(size),
        TypeChar::Int => Elem::Int(size),
        TypeChar::Uint => Elem::Uint(size),
        _ => {
            return Err(bad(format!(
                "dtype {descr} is not numeric; expected float32/float16 vectors or integer ids"
            )))
        }
    };
    let shape: Vec<usize> = npy
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("dimension {d} is too large"))))
        .collect::<Result<_>>()?;
    let fortran = npy.order() == Order::Fortran;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
    let need = count
        .checked_mul(size)
        .ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
    let data = npy.into_inner();
    let data: &[u8] = data;
    if data.len() < need {
        return Err(bad(format!(
            "truncated: shape {shape:?} of {descr} needs {need} data bytes, the file holds {}",
            data.len()
        )));
    }
    if data.len() > need {
        return Err(bad(format!(
            "{} bytes after the data of shape {shape:?} ({descr}); not a single .npy array",
            data.len() - need
        )));
    }
    Ok(Raw {
        elem,
        big_endian: ts.endianness() == Endianness::Big,
        shape,
        fortran,
        offset: bytes.len() - data.len(),
        data,
        descr,
    })
}

macro_rules! decode {
    ($data:expr, $t:ty, $be:expr) => {{
        const N: usize = std::mem::size_of::<$t>();
        $data.chunks_exact(N).map(|c| {
            let a: [u8; N] = c.try_into().expect("chunk of N bytes");
            if $be {
                <$t>::from_be_bytes(a)
            } else {
                <$t>::from_le_bytes(a)
            }
        })
    }};
}

/// Where decoding reports progress: the file's pages of each decoded byte
/// range are given back, and the bar moves.
struct Sink<'a> {
    file: Option<&'a FileBytes>,
    bar: ProgressBar,
}

impl Sink<'_> {
    fn none() -> Sink<'static> {
        Sink {
            file: None,
            bar: ProgressBar::hidden(),
        }
    }

    fn done(&self, range: Range<usize>) {
        self.bar.inc((range.end - range.start) as u64);
        if let Some(f) = self.file {
            f.done(range);
        }
    }
}

fn dtype_not_float(raw: &Raw<'_>, path: &Path) -> ToolError {
    ToolError::input(
        path,
        format!(
            "dtype {} where float32 or float16 vectors are expected (e.g. arr.astype(np.float32))",
            raw.descr
        ),
    )
}

/// Appends the values of `bytes` (whole elements of `raw`'s float dtype,
/// the first at flat index `first` in file order) to `out` as f32.
fn decode_floats(
    raw: &Raw<'_>,
    path: &Path,
    bytes: &[u8],
    first: usize,
    out: &mut Vec<f32>,
) -> Result<()> {
    let be = raw.big_endian;
    match raw.elem {
        Elem::Float(4) => out.extend(decode!(bytes, f32, be)),
        Elem::Float(2) => {
            out.extend(decode!(bytes, u16, be).map(|b| half::f16::from_bits(b).to_f32()))
        }
        Elem::Float(8) => {
            for (j, x) in decode!(bytes, f64, be).enumerate() {
                if x.is_finite() && !(x as f32).is_finite() {
                    return Err(ToolError::input(
                        path,
                        format!(
                            "value {x} at flat index {} does not fit in float32",
                            first + j
                        ),
                    ));
                }
                out.push(x as f32);
            }
        }
        _ => return Err(dtype_not_float(raw, path)),
    }
    Ok(())
}

/// The float payload of `raw` as f32 in C (row-major) order, decoded
/// [`SLICE`] bytes at a time; a 2-D Fortran-order array is placed in C
/// order as its columns are read.
fn floats(raw: &Raw<'_>, path: &Path, sink: &Sink<'_>) -> Result<Vec<f32>> {
    let size = match raw.elem {
        Elem::Float(s @ (2 | 4 | 8)) => s,
        _ => return Err(dtype_not_float(raw, path)),
    };
    let n = raw.data.len() / size;
    let at = |k: usize, len: usize| raw.offset + k..raw.offset + k + len;
    if !(raw.fortran && raw.shape.len() == 2) {
        let mut out = Vec::with_capacity(n);
        for (k, bytes) in raw.data.chunks(SLICE).enumerate() {
            decode_floats(raw, path, bytes, k * SLICE / size, &mut out)?;
            sink.done(at(k * SLICE, bytes.len()));
        }
        return Ok(out);
    }
    // Fortran order: columns stored one after another.
    let (rows, cols) = (raw.shape[0], raw.shape[1]);
    let mut out = vec![0f32; n];
    let mut tmp = Vec::with_capacity(SLICE / size);
    for c in 0..cols {
        let col_at = c * rows * size;
        let col = &raw.data[col_at..col_at + rows * size];
        for (k, bytes) in col.chunks(SLICE).enumerate() {
            let r0 = k * SLICE / size;
            tmp.clear();
            decode_floats(raw, path, bytes, c * rows + r0, &mut tmp)?;
            for (j, &x) in tmp.iter().enumerate() {
                out[(r0 + j) * cols + c] = x;
            }
            sink.done(at(col_at + k * SLICE, bytes.len()));
        }
    }
    Ok(out)
}

/// Maps `path` and parses its header; the sink gives back decoded pages
/// and shows a bar for a large payload.
fn open<'a>(path: &Path, file: &'a FileBytes, progress: &Progress) -> Result<(Raw<'a>, Sink<'a>)> {
    let raw = parse(path, file.bytes())?;
    let bar = progress.file_bar(path, raw.data.len() as u64);
    Ok((
        raw,
        Sink {
            file: Some(file),
            bar,
        },
    ))
}

/// Reads a 2-D float array of `rows x dim` vectors (float32, float16 or
/// float64, converted to f32). Every value must be finite. The file is
/// mapped and decoded a slice at a time (see the module docs).
pub fn read_matrix(path: &Path, progress: &Progress) -> Result<Array<f32>> {
    let file = FileBytes::open(path)?;
    let (raw, sink) = open(path, &file, progress)?;
    let a = matrix(path, raw, &sink);
    sink.bar.finish_and_clear();
    a
}

/// [`read_matrix`] of a file's bytes already in memory; `path` only names
/// it in messages.
pub fn matrix_from_bytes(path: &Path, bytes: &[u8]) -> Result<Array<f32>> {
    matrix(path, parse(path, bytes)?, &Sink::none())
}

fn matrix(path: &Path, raw: Raw<'_>, sink: &Sink<'_>) -> Result<Array<f32>> {
    if raw.shape.len() != 2 {
        return Err(ToolError::input(
            path,
            format!(
                "shape {:?}: embeddings must be a 2-D array (rows, dim)",
                raw.shape
            ),
        ));
    }
    let dim = raw.shape[1];
    if dim == 0 {
        return Err(ToolError::input(path, "vectors of dimension 0"));
    }
    let values = floats(&raw, path, sink)?;
    if let Some(i) = values.iter().position(|x| !x.is_finite()) {
        return Err(ToolError::input(
            path,
            format!(
                "row {} column {} holds {} (embeddings must be finite)",
                i / dim,
                i % dim,
                values[i]
            ),
        ));
    }
    Ok(Array {
        shape: raw.shape,
        values,
    })
}

/// Reads one float vector (shape `(d,)` or `(1, d)`), finite values only.
pub fn read_vector(path: &Path) -> Result<Vec<f32>> {
    let file = FileBytes::open(path)?;
    let (raw, sink) = open(path, &file, &Progress::hidden())?;
    vector(path, raw, &sink)
}

/// [`read_vector`] of a file's bytes already in memory; `path` only names
/// it in messages.
pub fn vector_from_bytes(path: &Path, bytes: &[u8]) -> Result<Vec<f32>> {
    vector(path, parse(path, bytes)?, &Sink::none())
}

fn vector(path: &Path, raw: Raw<'_>, sink: &Sink<'_>) -> Result<Vec<f32>> {
    let ok = matches!(raw.shape[..], [_] | [1, _]);
    if !ok {
        return Err(ToolError::input(
            path,
            format!("shape {:?}: a user vector must be 1-D (d,)", raw.shape),
        ));
    }
    let v = floats(&raw, path, sink)?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(ToolError::input(
            path,
            format!("component {i} is {} (must be finite)", v[i]),
        ));
    }
    Ok(v)
}

/// Reads item ids: a 1-D (or `(n, 1)`) integer array; int64 values must
/// not be negative. Mapped and decoded a slice at a time, like
/// [`read_matrix`].
pub fn read_ids(path: &Path, progress: &Progress) -> Result<Vec<u64>> {
    let file = FileBytes::open(path)?;
    let (raw, sink) = open(path, &file, progress)?;
    let ids = ids(path, raw, &sink);
    sink.bar.finish_and_clear();
    ids
}

/// [`read_ids`] of a file's bytes already in memory; `path` only names it
/// in messages.
pub fn ids_from_bytes(path: &Path, bytes: &[u8]) -> Result<Vec<u64>> {
    ids(path, parse(path, bytes)?, &Sink::none())
}

fn ids(path: &Path, raw: Raw<'_>, sink: &Sink<'_>) -> Result<Vec<u64>> {
    let ok = matches!(raw.shape[..], [_] | [_, 1]);
    if !ok {
        return Err(ToolError::input(
            path,
            format!("shape {:?}: ids must be a 1-D integer array", raw.shape),
        ));
    }
    let size = match raw.elem {
        Elem::Uint(s @ (4 | 8)) | Elem::Int(s @ (4 | 8)) => s,
        _ => {
            return Err(ToolError::input(
                path,
                format!(
                    "dtype {} where integer ids are expected (uint64 or int64)",
                    raw.descr
                ),
            ))
        }
    };
    let be = raw.big_endian;
    let mut out = Vec::with_capacity(raw.data.len() / size);
    let negative = |r: usize, x: i64| {
        ToolError::input(
            path,
            format!("row {r}: id {x} is negative (ids are unsigned)"),
        )
    };
    for (k, bytes) in raw.data.chunks(SLICE).enumerate() {
        let first = k * SLICE / size;
        match raw.elem {
            Elem::Uint(8) => out.extend(decode!(bytes, u64, be)),
            Elem::Uint(_) => out.extend(decode!(bytes, u32, be).map(u64::from)),
            Elem::Int(8) => {
                for (j, x) in decode!(bytes, i64, be).enumerate() {
                    out.push(u64::try_from(x).map_err(|_| negative(first + j, x))?);
                }
            }
            _ => {
                for (j, x) in decode!(bytes, i32, be).enumerate() {
                    out.push(u64::try_from(x).map_err(|_| negative(first + j, x.into()))?);
                }
            }
        }
        sink.done(raw.offset + k * SLICE..raw.offset + k * SLICE + bytes.len());
    }
    Ok(out)
}

/// Ids that must be distinct: the first repeated one is an error naming
/// both rows.
pub fn check_unique(path: &Path, ids: &[u64]) -> Result<()> {
    let mut seen = std::collections::HashMap::with_capacity(ids.len());
    for (i, &id) in ids.iter().enumerate() {
        if let Some(j) = seen.insert(id, i) {
            return Err(ToolError::input(
                path,
                format!("duplicate id {id} at rows {j} and {i}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        npy_order(descr, false, shape, data)
    }

    fn npy_order(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let order = if fortran { "True" } else { "False" };
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend_from_slice(&(h.len() as u16).to_le_bytes());
        v.extend_from_slice(h.as_bytes());
        v.extend_from_slice(data);
        v
    }

    fn write(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.npy");
        std::fs::write(&p, bytes).unwrap();
        (d, p)
    }

    #[test]
    fn reads_f16_big_endian_and_fortran() {
        let data: Vec<u8> = [1.5f32, -2.0, 0.25, 4.0]
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_bits().to_be_bytes())
            .collect();
        let (_d, p) = write(&npy(">f2", "(2, 2)", &data));
        let a = read_matrix(&p, &Progress::hidden()).unwrap();
        assert_eq!(a.values, vec![1.5, -2.0, 0.25, 4.0]);
        let mut f = npy_order("<f4", true, "(2, 3)", &[]);
        // Fortran order: columns stored one after another.
        for x in [1f32, 4.0, 2.0, 5.0, 3.0, 6.0] {
            f.extend_from_slice(&x.to_le_bytes());
        }
        let (_d, p) = write(&f);
        let a = read_matrix(&p, &Progress::hidden()).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.values, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn ids_of_every_integer_width_and_negative_refused() {
        let (_d, p) = write(&npy("<i4", "(3,)", &[1, 0, 0, 0, 2, 0, 0, 0, 9, 0, 0, 0]));
        assert_eq!(read_ids(&p, &Progress::hidden()).unwrap(), vec![1, 2, 9]);
        let data: Vec<u8> = [5i64, -1].iter().flat_map(|x| x.to_le_bytes()).collect();
        let (_d, p) = write(&npy("<i8", "(2,)", &data));
        let e = read_ids(&p, &Progress::hidden()).unwrap_err().to_string();
        assert!(e.contains("row 1") && e.contains("negative"), "{e}");
    }

    #[test]
    fn a_shape_whose_parenthesis_closes_before_it_opens_is_refused() {
        // Found by the npy fuzz target: `'shape': 9,0,)(` (a ')' just
        // before the '(') made the shape scan slice backwards and panic.
        let (_d, p) = write(&npy("<i8", "9,0,)(", &[0; 16]));
        let e = read_matrix(&p, &Progress::hidden())
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.npy"), "{e}");
        read_ids(&p, &Progress::hidden()).unwrap_err();
    }

    #[test]
    fn crafted_headers_are_refused_before_parsing() {
        let (_d, p) = write(&npy("<f4", "(4294967296, 4294967296)", &[0; 16]));
        let e = read_matrix(&p, &Progress::hidden())
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated") && e.contains("claims"), "{e}");
        let deep = format!("{}1{}", "(".repeat(40), ")".repeat(40));
        let (_d, p) = write(&npy("<f4", &deep, &[0; 4]));
        let e = read_matrix(&p, &Progress::hidden())
            .unwrap_err()
            .to_string();
        assert!(e.contains("nests too deeply"), "{e}");
        let mut v = npy("<f4", "(1, 1)", &[0; 4]);
        v[8] = 0xff;
        v[9] = 0xff;
        let (_d, p) = write(&v);
        let e = read_matrix(&p, &Progress::hidden())
            .unwrap_err()
            .to_string();
        assert!(e.contains("limit"), "{e}");
        let (_d, p) = write(&npy("<f4", "(0, 5)", &[]));
        // An empty matrix reads (and build then refuses it by its ids).
        let e = read_matrix(&p, &Progress::hidden());
        assert!(e.is_ok());
        let big: Vec<u8> = 1e300f64.to_le_bytes().to_vec();
        let (_d, p) = write(&npy("<f8", "(1, 1)", &big));
        let e = read_matrix(&p, &Progress::hidden())
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not fit in float32"), "{e}");
    }

    #[test]
    fn trailing_and_missing_bytes_are_named() {
        let (_d, p) = write(&npy("<f4", "(1, 2)", &[0; 12]));
        let e = read_matrix(&p, &Progress::hidden())
            .unwrap_err()
            .to_string();
        assert!(e.contains("4 bytes after"), "{e}");
        let (_d, p) = write(&npy("<f4", "(1, 2)", &[0; 7]));
        let e = read_matrix(&p, &Progress::hidden())
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn slices_cross_rows_and_columns_in_every_layout() {
        // SLICE is 64 bytes in tests: these arrays span many slices.
        let (rows, cols) = (37, 5);
        let want: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 3.0).collect();
        let c: Vec<u8> = want.iter().flat_map(|x| x.to_le_bytes()).collect();
        let shape = format!("({rows}, {cols})");
        let (_d, p) = write(&npy("<f4", &shape, &c));
        let a = read_matrix(&p, &Progress::hidden()).unwrap();
        assert_eq!((a.shape.clone(), &a.values), (vec![rows, cols], &want));
        assert_eq!(
            matrix_from_bytes(&p, &std::fs::read(&p).unwrap()).unwrap(),
            a
        );
        // Fortran order, big-endian float16 and float64.
        let w = &want;
        let fort = |x: &dyn Fn(f32) -> Vec<u8>| -> Vec<u8> {
            (0..cols)
                .flat_map(|cc| (0..rows).map(move |r| w[r * cols + cc]))
                .flat_map(x)
                .collect()
        };
        let f16 = fort(&|x| half::f16::from_f32(x).to_bits().to_be_bytes().to_vec());
        let (_d, p) = write(&npy_order(">f2", true, &shape, &f16));
        assert_eq!(read_matrix(&p, &Progress::hidden()).unwrap().values, want);
        let f64s = fort(&|x| f64::from(x).to_le_bytes().to_vec());
        let (_d, p) = write(&npy_order("<f8", true, &shape, &f64s));
        assert_eq!(read_matrix(&p, &Progress::hidden()).unwrap().values, want);
        // A value that does not fit is named by its flat index in the
        // file, in a later slice.
        let mut big = f64s.clone();
        big[8 * 100..8 * 101].copy_from_slice(&1e300f64.to_le_bytes());
        let (_d, p) = write(&npy_order("<f8", true, &shape, &big));
        let e = read_matrix(&p, &Progress::hidden())
            .unwrap_err()
            .to_string();
        assert!(e.contains("flat index 100"), "{e}");
        // A non-finite value is named by its row and column (C order).
        let mut nan = f64s;
        nan[8 * 100..8 * 101].copy_from_slice(&f64::NAN.to_le_bytes());
        let (_d, p) = write(&npy_order("<f8", true, &shape, &nan));
        let e = read_matrix(&p, &Progress::hidden())
            .unwrap_err()
            .to_string();
        // Flat index 100 in Fortran order: column 2, row 26.
        assert!(e.contains("row 26 column 2"), "{e}");
    }

    #[test]
    fn ids_across_slices_and_empty_files() {
        let ids: Vec<i64> = (0..50).map(|i| i * 3).collect();
        let data: Vec<u8> = ids.iter().flat_map(|x| x.to_be_bytes()).collect();
        let (_d, p) = write(&npy(">i8", "(50,)", &data));
        let got = read_ids(&p, &Progress::hidden()).unwrap();
        assert_eq!(got, ids.iter().map(|&x| x as u64).collect::<Vec<_>>());
        let mut neg = data.clone();
        neg[8 * 41..8 * 42].copy_from_slice(&(-7i64).to_be_bytes());
        let (_d, p) = write(&npy(">i8", "(50,)", &neg));
        let e = read_ids(&p, &Progress::hidden()).unwrap_err().to_string();
        assert!(e.contains("row 41: id -7 is negative"), "{e}");
        let (_d, p) = write(&[]);
        let e = read_ids(&p, &Progress::hidden()).unwrap_err().to_string();
        assert!(e.contains("not a valid .npy"), "{e}");
        assert!(ids_from_bytes(&p, &[]).is_err());
    }
}
