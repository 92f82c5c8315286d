//! Reading numpy `.npy` files: item ids (integer, 1-D) and embeddings or
//! user vectors (float, 2-D or 1-D).
//!
//! `npyz` parses the header (every header version, any dtype string); the
//! payload is decoded here, after checking that the file holds exactly the
//! bytes the header's shape needs (so a truncated file is named as such).

use std::path::Path;

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
    data: &'a [u8],
    descr: String,
}

fn read_file(path: &Path, progress: &Progress) -> Result<Vec<u8>> {
    progress.read_file(path)
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
    if let Some(at) = text.find("'shape'") {
        let rest = &text[at..];
        if let (Some(open), Some(close)) = (rest.find('('), rest.find(')')) {
            if open < close {
                let mut count: u64 = 1;
                for t in rest[open + 1..close]
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                {
                    let d: u64 = t
                        .trim_end_matches('L')
                        .parse()
                        .map_err(|_| format!("not a valid .npy file (shape entry {t:?})"))?;
                    count = count.saturating_mul(d);
                }
                if count > (bytes.len() - start - len) as u64 {
                    return Err(format!(
                        "truncated: the header's shape {} claims {count} values, more than the {} data bytes the file holds",
                        &rest[open..=close],
                        bytes.len() - start - len
                    ));
                }
            }
        }
    }
    Ok(())
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

fn floats(raw: &Raw<'_>, path: &Path) -> Result<Vec<f32>> {
    let be = raw.big_endian;
    let v: Vec<f32> = match raw.elem {
        Elem::Float(4) => decode!(raw.data, f32, be).collect(),
        Elem::Float(2) => decode!(raw.data, u16, be)
            .map(|b| half::f16::from_bits(b).to_f32())
            .collect(),
        Elem::Float(8) => {
            let v: Vec<f64> = decode!(raw.data, f64, be).collect();
            if let Some(i) = v
                .iter()
                .position(|x| x.is_finite() && !(*x as f32).is_finite())
            {
                return Err(ToolError::input(
                    path,
                    format!("value {} at flat index {i} does not fit in float32", v[i]),
                ));
            }
            v.into_iter().map(|x| x as f32).collect()
        }
        _ => {
            return Err(ToolError::input(
                path,
                format!(
                    "dtype {} where float32 or float16 vectors are expected (e.g. arr.astype(np.float32))",
                    raw.descr
                ),
            ))
        }
    };
    Ok(v)
}

/// C-order values of a 2-D Fortran-order array.
fn to_c_order<T: Copy>(v: Vec<T>, shape: &[usize]) -> Vec<T> {
    let (rows, cols) = (shape[0], shape[1]);
    let mut out = Vec::with_capacity(v.len());
    for r in 0..rows {
        for c in 0..cols {
            out.push(v[c * rows + r]);
        }
    }
    out
}

/// Reads a 2-D float array of `rows x dim` vectors (float32, float16 or
/// float64, converted to f32). Every value must be finite.
pub fn read_matrix(path: &Path, progress: &Progress) -> Result<Array<f32>> {
    let bytes = read_file(path, progress)?;
    let raw = parse(path, &bytes)?;
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
    let mut values = floats(&raw, path)?;
    if raw.fortran {
        values = to_c_order(values, &raw.shape);
    }
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
    let bytes = std::fs::read(path).map_err(|e| ToolError::io("read", path, e))?;
    let raw = parse(path, &bytes)?;
    let ok = matches!(raw.shape[..], [_] | [1, _]);
    if !ok {
        return Err(ToolError::input(
            path,
            format!("shape {:?}: a user vector must be 1-D (d,)", raw.shape),
        ));
    }
    let v = floats(&raw, path)?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(ToolError::input(
            path,
            format!("component {i} is {} (must be finite)", v[i]),
        ));
    }
    Ok(v)
}

/// Reads item ids: a 1-D (or `(n, 1)`) integer array; int64 values must
/// not be negative.
pub fn read_ids(path: &Path, progress: &Progress) -> Result<Vec<u64>> {
    let bytes = read_file(path, progress)?;
    let raw = parse(path, &bytes)?;
    let ok = matches!(raw.shape[..], [_] | [_, 1]);
    if !ok {
        return Err(ToolError::input(
            path,
            format!("shape {:?}: ids must be a 1-D integer array", raw.shape),
        ));
    }
    let be = raw.big_endian;
    let signed = |v: Vec<i64>| -> Result<Vec<u64>> {
        if let Some(r) = v.iter().position(|&x| x < 0) {
            return Err(ToolError::input(
                path,
                format!("row {r}: id {} is negative (ids are unsigned)", v[r]),
            ));
        }
        Ok(v.into_iter().map(|x| x as u64).collect())
    };
    match raw.elem {
        Elem::Uint(8) => Ok(decode!(raw.data, u64, be).collect()),
        Elem::Uint(4) => Ok(decode!(raw.data, u32, be).map(u64::from).collect()),
        Elem::Int(8) => signed(decode!(raw.data, i64, be).collect()),
        Elem::Int(4) => signed(decode!(raw.data, i32, be).map(i64::from).collect()),
        _ => Err(ToolError::input(
            path,
            format!(
                "dtype {} where integer ids are expected (uint64 or int64)",
                raw.descr
            ),
        )),
    }
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
}
