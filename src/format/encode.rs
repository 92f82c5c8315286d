//! Writing the data files of a segment: id index, column groups, deletion
//! bitmaps. Every function creates a new file (never overwrites), streams its
//! blocks, then writes metadata and footer and fsyncs (see `container`).

use std::path::Path;

use half::slice::HalfFloatSliceExt;

use crate::error::{Error, Result};
use crate::format::container::{ContainerWriter, Kind};
use crate::format::idindex;
use crate::format::meta::{
    Body, ColumnBlock, ColumnsMeta, DeletesMeta, FileRef, Group, IdIndexMeta, VectorBlock,
};
use crate::schema::{Dtype, EmbeddingDef};

fn file_ref(path: &Path, w: crate::format::container::Written) -> FileRef {
    FileRef {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        len: w.len,
        meta_crc: w.meta_crc,
    }
}

/// Writes `words` as one block of little-endian bytes, a bounded piece at
/// a time (the same bytes as writing them whole): a large segment's id
/// index, id table and scalar columns are never copied whole into a byte
/// buffer beside the words themselves.
fn block_le<T: Copy, const N: usize>(
    w: &mut ContainerWriter,
    words: &[T],
    le: impl Fn(T) -> [u8; N],
) -> Result<crate::format::meta::Extent> {
    const PIECE: usize = 64 << 10;
    let offset = w.begin_block()?;
    let mut buf = Vec::with_capacity(PIECE.min(words.len() * N));
    for piece in words.chunks(PIECE / N) {
        buf.clear();
        buf.extend(piece.iter().flat_map(|&x| le(x)));
        w.data(&buf)?;
    }
    Ok(crate::format::meta::Extent {
        offset,
        len: (words.len() * N) as u64,
    })
}

fn block_u64(w: &mut ContainerWriter, words: &[u64]) -> Result<crate::format::meta::Extent> {
    block_le(w, words, u64::to_le_bytes)
}

/// Writes the id index of a segment; `ids` must be unique.
pub(crate) fn write_id_index(
    fs: &dyn crate::io::fs::Fs,
    path: &Path,
    segment: u64,
    ids: &[u64],
) -> Result<FileRef> {
    let (table, max_probe) = idindex::build(ids);
    let mut w = ContainerWriter::create(fs, path, Kind::IdIndex)?;
    let ids_ext = block_u64(&mut w, ids)?;
    let table_ext = block_u64(&mut w, table.as_flattened())?;
    let bloom = idindex::build_bloom(ids);
    let bloom_ext = block_u64(&mut w, bloom.as_flattened())?;
    let written = w.finish(Body::IdIndex(IdIndexMeta {
        segment,
        rows: ids.len() as u64,
        ids: ids_ext,
        table: table_ext,
        slots: table.len() as u64,
        max_probe,
        bloom: bloom_ext,
        bloom_blocks: bloom.len() as u64,
    }))?;
    Ok(file_ref(path, written))
}

/// One scalar column to write: raw 32-bit values (u32, or f32 bits) with the
/// default already substituted for missing rows, and the missing bitmap.
pub(crate) struct ScalarColumn {
    pub name: String,
    pub values: Vec<u32>,
    /// Bit set = row missing; `None` when no row is missing.
    pub missing: Option<Vec<u64>>,
    /// Raw bits of the declared default.
    pub default: u32,
}

impl ScalarColumn {
    fn missing_count(&self) -> u64 {
        self.missing
            .as_ref()
            .map(|m| m.iter().map(|w| w.count_ones() as u64).sum())
            .unwrap_or(0)
    }
}

/// Writes a profile or statistics column-group file.
pub(crate) fn write_scalar_group(
    fs: &dyn crate::io::fs::Fs,
    path: &Path,
    segment: u64,
    rows: u64,
    group: Group,
    columns: &[ScalarColumn],
) -> Result<FileRef> {
    let mut w = ContainerWriter::create(fs, path, Kind::Columns)?;
    let mut blocks = Vec::with_capacity(columns.len());
    for c in columns {
        debug_assert_eq!(c.values.len() as u64, rows);
        let values = block_le(&mut w, &c.values, u32::to_le_bytes)?;
        let missing = match &c.missing {
            Some(m) if m.iter().any(|&w| w != 0) => Some(block_u64(&mut w, m)?),
            _ => None,
        };
        blocks.push(ColumnBlock {
            name: c.name.clone(),
            values,
            missing,
            missing_count: c.missing_count(),
        });
    }
    let written = w.finish(Body::Columns(ColumnsMeta {
        segment,
        rows,
        group,
        columns: blocks,
        vectors: None,
    }))?;
    Ok(file_ref(path, written))
}

/// Checks f32 input rows for an embedding before anything is written: every
/// value finite, and representable in the column's dtype.
pub(crate) fn check_vectors(def: &EmbeddingDef, ids: &[u64], data: &[f32]) -> Result<()> {
    let d = def.dim as usize;
    if data.len() != ids.len() * d {
        return Err(Error::InvalidInput(format!(
            "embedding {}: {} values given for {} ids of dimension {d} (expected {})",
            def.key(),
            data.len(),
            ids.len(),
            ids.len() * d
        )));
    }
    for (row, v) in data.chunks_exact(d.max(1)).enumerate() {
        if let Some(j) = unholdable(def.dtype, v) {
            return Err(Error::InvalidInput(format!(
                "embedding {}: id {} (input row {row}) component {j} is {}, which {} cannot hold",
                def.key(),
                ids[row],
                v[j],
                if v[j].is_finite() {
                    def.dtype.name()
                } else {
                    "the store"
                }
            )));
        }
    }
    Ok(())
}

/// The first of `v` that a column of `dtype` cannot hold: not finite, or
/// beyond the dtype's range (f16, bf16).
pub(crate) fn unholdable(dtype: Dtype, v: &[f32]) -> Option<usize> {
    let limit = match dtype {
        Dtype::F16 => half::f16::MAX.to_f32(),
        // Larger finite f32 values round up to bf16 infinity.
        Dtype::Bf16 => half::bf16::MAX.to_f32(),
        _ => f32::MAX,
    };
    v.iter().position(|x| !x.is_finite() || x.abs() > limit)
}

/// Encodes one f32 row into `out` (`def.dtype.row_stride(dim)` bytes, zeroed
/// padding). i8: `scale = max|x| / 127`, `q = round(x / scale)`, scale stored
/// as f32 after the `dim` bytes.
pub(crate) fn encode_row(dtype: Dtype, v: &[f32], out: &mut [u8], tmp16: &mut Vec<u16>) {
    out.fill(0);
    match dtype {
        Dtype::F32 => {
            for (o, x) in out.chunks_exact_mut(4).zip(v) {
                o.copy_from_slice(&x.to_le_bytes());
            }
        }
        Dtype::F16 | Dtype::Bf16 => {
            tmp16.clear();
            tmp16.resize(v.len(), 0);
            if dtype == Dtype::F16 {
                let h: &mut [half::f16] = bytemuck::cast_slice_mut(tmp16.as_mut_slice());
                h.convert_from_f32_slice(v);
            } else {
                let h: &mut [half::bf16] = bytemuck::cast_slice_mut(tmp16.as_mut_slice());
                h.convert_from_f32_slice(v);
            }
            for (o, x) in out.chunks_exact_mut(2).zip(tmp16.iter()) {
                o.copy_from_slice(&x.to_le_bytes());
            }
        }
        Dtype::I8 => {
            let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            let scale = max / 127.0;
            for (o, x) in out.iter_mut().zip(v) {
                let q = if scale > 0.0 {
                    (x / scale).round().clamp(-127.0, 127.0)
                } else {
                    0.0
                };
                *o = (q as i8) as u8;
            }
            let d = v.len();
            out[d..d + 4].copy_from_slice(&scale.to_le_bytes());
        }
    }
}

/// Writes an embedding column-group file. `rows_in_order` yields, for each
/// row of the segment in order, its f32 vector (already checked);
/// `computed` is the bitmap of the rows the store computed with the
/// version's item tower (`None`: none). The same holds for the two writers
/// below.
pub(crate) fn write_embedding_group<'a>(
    fs: &dyn crate::io::fs::Fs,
    path: &Path,
    segment: u64,
    rows: u64,
    def: &EmbeddingDef,
    computed: Option<&[u64]>,
    rows_in_order: impl Iterator<Item = &'a [f32]>,
) -> Result<FileRef> {
    let mut buf = vec![0u8; def.dtype.row_stride(def.dim)];
    let mut tmp = Vec::new();
    write_vectors(fs, path, segment, rows, def, computed, |w| {
        for v in rows_in_order {
            encode_row(def.dtype, v, &mut buf, &mut tmp);
            w.data(&buf)?;
        }
        Ok(())
    })
}

/// Writes an embedding column-group file from stored rows (`stride` bytes
/// each, copied byte for byte: compaction never re-quantizes).
pub(crate) fn write_embedding_raw<'a>(
    fs: &dyn crate::io::fs::Fs,
    path: &Path,
    segment: u64,
    rows: u64,
    def: &EmbeddingDef,
    computed: Option<&[u64]>,
    rows_in_order: impl Iterator<Item = &'a [u8]>,
) -> Result<FileRef> {
    let stride = def.dtype.row_stride(def.dim);
    write_vectors(fs, path, segment, rows, def, computed, |w| {
        for r in rows_in_order {
            w.data(&r[..stride])?;
        }
        Ok(())
    })
}

/// Writes an embedding column-group file (no row marked computed: this is
/// for precomputed first-layer parts) whose rows are computed a block
/// at a time: `fill(first, out)` writes rows `first..first + out.len() / dim`
/// (f32, row-major) into `out`; blocks are `block` rows.
pub(crate) fn write_embedding_computed(
    fs: &dyn crate::io::fs::Fs,
    path: &Path,
    segment: u64,
    rows: u64,
    def: &EmbeddingDef,
    block: usize,
    mut fill: impl FnMut(usize, &mut [f32]) -> Result<()>,
) -> Result<FileRef> {
    let d = def.dim as usize;
    let mut buf = vec![0u8; def.dtype.row_stride(def.dim)];
    let (mut tmp, mut vals) = (Vec::new(), vec![0f32; block * d]);
    write_vectors(fs, path, segment, rows, def, None, |w| {
        let mut first = 0;
        while first < rows as usize {
            let m = block.min(rows as usize - first);
            fill(first, &mut vals[..m * d])?;
            for v in vals[..m * d].chunks_exact(d) {
                encode_row(def.dtype, v, &mut buf, &mut tmp);
                w.data(&buf)?;
            }
            first += m;
        }
        Ok(())
    })
}

/// The frame of an embedding file: one block of `rows` rows that `emit`
/// writes, then the metadata describing it.
fn write_vectors(
    fs: &dyn crate::io::fs::Fs,
    path: &Path,
    segment: u64,
    rows: u64,
    def: &EmbeddingDef,
    computed: Option<&[u64]>,
    emit: impl FnOnce(&mut ContainerWriter) -> Result<()>,
) -> Result<FileRef> {
    let stride = def.dtype.row_stride(def.dim);
    let mut w = ContainerWriter::create(fs, path, Kind::Columns)?;
    let offset = w.begin_block()?;
    emit(&mut w)?;
    let len = w.pos() - offset;
    debug_assert_eq!(len, rows * stride as u64);
    let computed_count: u64 = computed.map_or(0, |m| m.iter().map(|w| w.count_ones() as u64).sum());
    let computed = match computed {
        Some(m) if computed_count > 0 => {
            debug_assert_eq!(m.len() as u64, rows.div_ceil(64));
            Some(block_u64(&mut w, m)?)
        }
        _ => None,
    };
    let written = w.finish(Body::Columns(ColumnsMeta {
        segment,
        rows,
        group: Group::Embedding(def.clone()),
        columns: Vec::new(),
        vectors: Some(VectorBlock {
            stride: stride as u32,
            rows: crate::format::meta::Extent { offset, len },
            computed,
            computed_count,
        }),
    }))?;
    Ok(file_ref(path, written))
}

/// Writes a deletion bitmap.
pub(crate) fn write_deletes(
    fs: &dyn crate::io::fs::Fs,
    path: &Path,
    segment: u64,
    rows: u64,
    bitmap: &[u64],
) -> Result<FileRef> {
    let deleted = bitmap.iter().map(|w| w.count_ones() as u64).sum();
    let mut w = ContainerWriter::create(fs, path, Kind::Deletes)?;
    let ext = block_u64(&mut w, bitmap)?;
    let written = w.finish(Body::Deletes(DeletesMeta {
        segment,
        rows,
        bitmap: ext,
        deleted,
    }))?;
    Ok(file_ref(path, written))
}

/// Writes a model bundle file: `model.json` and `weights.safetensors`
/// bytes, verbatim, each in its own block, then the weights converted to
/// `precision` (a safetensors file; none at f32).
pub(crate) fn write_bundle(
    fs: &dyn crate::io::fs::Fs,
    path: &Path,
    key: &str,
    (json, weights): (&[u8], &[u8]),
    precision: crate::kernels::Precision,
    converted: Option<&[u8]>,
) -> Result<FileRef> {
    let mut w = ContainerWriter::create(fs, path, Kind::Bundle)?;
    let json = w.block(json)?;
    let weights = w.block(weights)?;
    let converted = converted.map(|c| w.block(c)).transpose()?;
    let written = w.finish(Body::Bundle(crate::format::meta::BundleMeta {
        key: key.to_string(),
        json,
        weights,
        precision: precision.code(),
        converted,
    }))?;
    Ok(file_ref(path, written))
}
