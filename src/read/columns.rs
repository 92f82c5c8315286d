//! Column views of one segment, read in place from its mapped files: the
//! scalar [`Column`]s (profile and statistics) and the [`EmbeddingColumn`]s
//! with their [`Row`]s; and the checked casts and name lookup they rest on.

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::schema::{ColumnDef, Dtype, EmbeddingDef};

/// Casts a validated, aligned block of the map. Offsets were checked to be
/// 64-aligned in a page-aligned map, and lengths to be whole elements, so
/// this cannot fail; an empty slice is returned rather than panicking if it
/// ever did.
pub(crate) fn cast<T: bytemuck::Pod>(b: &[u8]) -> &[T] {
    bytemuck::try_cast_slice(b).unwrap_or(&[])
}

/// Index of column `name` among `defs`, or [`Error::NoSuchColumn`] naming
/// the `kind` of column (profile, statistics) and the columns there are.
pub(crate) fn find_col(defs: &[ColumnDef], kind: &'static str, name: &str) -> Result<usize> {
    defs.iter()
        .position(|c| c.name == name)
        .ok_or_else(|| Error::NoSuchColumn {
            kind,
            name: name.to_string(),
            available: defs.iter().map(|c| c.name.clone()).collect(),
        })
}

/// A scalar column of one segment, read in place.
#[derive(Debug, Clone, Copy)]
pub struct Column<'a, T> {
    values: &'a [T],
    missing: Option<&'a [u64]>,
    missing_count: u64,
    default: T,
}

impl<'a, T: Copy> Column<'a, T> {
    /// A column over `values`, with its missing-row bitmap (if any rows are
    /// missing), their count, and the declared default.
    pub(crate) fn new(
        values: &'a [T],
        missing: Option<&'a [u64]>,
        missing_count: u64,
        default: T,
    ) -> Self {
        Column {
            values,
            missing,
            missing_count,
            default,
        }
    }

    /// All values in row order (missing rows hold the default).
    pub fn values(&self) -> &'a [T] {
        self.values
    }

    /// Value of `row` (the default if missing). Panics if `row` is out of range,
    /// like slice indexing.
    pub fn get(&self, row: usize) -> T {
        self.values[row]
    }

    /// Whether `row` had no value when written.
    pub fn is_missing(&self, row: usize) -> bool {
        self.missing
            .is_some_and(|m| m.get(row / 64).is_some_and(|w| w >> (row % 64) & 1 == 1))
    }

    /// Number of missing rows.
    pub fn missing_count(&self) -> u64 {
        self.missing_count
    }

    /// The declared default.
    pub fn default_value(&self) -> T {
        self.default
    }
}

/// One row of an embedding column, in its stored type.
#[derive(Debug, Clone, Copy)]
pub enum Row<'a> {
    /// f32 components.
    F32(&'a [f32]),
    /// f16 components.
    F16(&'a [f16]),
    /// bf16 components.
    Bf16(&'a [bf16]),
    /// i8 components and the row's scale: `x ≈ q * scale`.
    I8 {
        /// Quantized components.
        q: &'a [i8],
        /// The row's scale.
        scale: f32,
    },
}

/// An embedding column of one segment: `rows` rows at a fixed, 16-byte
/// aligned stride, read in place from the map.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddingColumn<'a> {
    def: &'a EmbeddingDef,
    bytes: &'a [u8],
    stride: usize,
}

impl<'a> EmbeddingColumn<'a> {
    /// A column of `def` over `bytes` (whole rows of `stride` bytes).
    pub(crate) fn new(def: &'a EmbeddingDef, bytes: &'a [u8], stride: usize) -> Self {
        EmbeddingColumn { def, bytes, stride }
    }

    /// The column's definition (space, version, dim, dtype).
    pub fn def(&self) -> &'a EmbeddingDef {
        self.def
    }

    /// Bytes between consecutive rows (a multiple of 16).
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.bytes.len().checked_div(self.stride).unwrap_or(0)
    }

    /// The whole block of rows (`rows * stride` bytes, 64-byte aligned).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The stored bytes of `row` (`stride` bytes, padding included).
    pub fn row_bytes(&self, row: usize) -> &'a [u8] {
        &self.bytes[row * self.stride..(row + 1) * self.stride]
    }

    /// `row` in its stored type. Panics if `row` is out of range.
    pub fn row(&self, row: usize) -> Row<'a> {
        let b = self.row_bytes(row);
        let d = self.def.dim as usize;
        match self.def.dtype {
            Dtype::F32 => Row::F32(cast(&b[..4 * d])),
            Dtype::F16 => Row::F16(cast(&b[..2 * d])),
            Dtype::Bf16 => Row::Bf16(cast(&b[..2 * d])),
            Dtype::I8 => Row::I8 {
                q: cast(&b[..d]),
                scale: f32::from_le_bytes([b[d], b[d + 1], b[d + 2], b[d + 3]]),
            },
        }
    }

    /// Decodes `row` into `out` (length `dim`) as f32.
    pub fn decode(&self, row: usize, out: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        match self.row(row) {
            Row::F32(v) => out.copy_from_slice(v),
            Row::F16(v) => crate::kernels::f16_to_f32(v, out),
            Row::Bf16(v) => v.convert_to_f32_slice(out),
            Row::I8 { q, scale } => {
                for (o, &x) in out.iter_mut().zip(q) {
                    *o = x as f32 * scale;
                }
            }
        }
    }

    /// `row` decoded to a new f32 vector.
    pub fn to_vec(&self, row: usize) -> Vec<f32> {
        let mut v = vec![0f32; self.def.dim as usize];
        self.decode(row, &mut v);
        v
    }
}
