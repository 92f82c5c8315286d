//! A segment of a snapshot, read in place from its mapped files: the id
//! index, the profile and statistics column groups, one file per embedding
//! version, and an optional deletion bitmap.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::format::container::{Container, Kind};
use crate::format::idindex::IdIndexView;
use crate::format::meta::{Body, FileRef, Group, SegmentMeta};
use crate::schema::{ColumnDef, ColumnKind, Dtype, EmbeddingDef, Schema};

/// Opens (or shares) a mapped file by name; supplied by the store.
pub(crate) type Opener<'a> = dyn FnMut(&FileRef, Kind) -> Result<Arc<Container>> + 'a;

/// Checks that a file opened for `r` is the exact file the manifest published.
pub(crate) fn check_ref(c: &Container, r: &FileRef) -> Result<()> {
    if c.len() != r.len || c.meta_crc != r.meta_crc {
        return Err(Error::corrupt(
            &c.path,
            format!(
                "file does not match its manifest entry (length {} vs {}, metadata crc {:#010x} vs {:#010x}): replaced or damaged",
                c.len(), r.len, c.meta_crc, r.meta_crc
            ),
        ));
    }
    Ok(())
}

#[derive(Debug)]
struct ScalarInfo {
    values: usize,
    missing: Option<usize>,
    missing_count: u64,
}

#[derive(Debug)]
struct ScalarGroup {
    file: Arc<Container>,
    cols: Vec<ScalarInfo>,
}

#[derive(Debug)]
struct EmbeddingFile {
    key: String,
    def: EmbeddingDef,
    file: Arc<Container>,
    offset: usize,
    stride: usize,
}

/// One segment of a snapshot: a block of rows with its own files.
#[derive(Debug)]
pub struct Segment {
    id: u64,
    rows: usize,
    index: Arc<Container>,
    ids_off: usize,
    table_off: usize,
    bloom_off: usize,
    bloom_blocks: usize,
    slots: usize,
    max_probe: u32,
    /// Slots per id-index bucket (by the index file's format version).
    width: usize,
    profile: ScalarGroup,
    stats: ScalarGroup,
    embeddings: Vec<EmbeddingFile>,
    deletes: Option<(Arc<Container>, usize, u64)>,
    profile_defs: Vec<ColumnDef>,
    stats_defs: Vec<ColumnDef>,
}

/// Checks that `file` is the column-group file of vectors `def` for
/// segment `segment` of `rows` rows; returns where its rows start in the
/// map and their stride.
pub(crate) fn check_vector_file(
    file: &Container,
    def: &EmbeddingDef,
    segment: u64,
    rows: u64,
) -> Result<(usize, usize)> {
    let key = def.key();
    let Body::Columns(cm) = &file.meta.body else {
        return Err(Error::corrupt(&file.path, "not a column-group file"));
    };
    let want = Group::Embedding(def.clone());
    let stride = def.dtype.row_stride(def.dim);
    let Some(vb) = &cm.vectors else {
        return Err(Error::corrupt(
            &file.path,
            "embedding file without a vector block",
        ));
    };
    if cm.segment != segment || cm.rows != rows || cm.group != want || vb.stride as usize != stride
    {
        return Err(Error::corrupt(
            &file.path,
            format!(
                "holds {:?} (stride {}) of segment {} ({} rows) where the manifest expects {key} (stride {stride}) of segment {segment} ({rows} rows)",
                cm.group, vb.stride, cm.segment, cm.rows
            ),
        ));
    }
    let b = file.extent(
        &vb.rows,
        size(&file.path, rows, stride as u64)?,
        "embedding rows",
    )?;
    Ok((b.as_ptr() as usize - file.map.as_ptr() as usize, stride))
}

fn open_scalar_group(
    open: &mut Opener<'_>,
    r: &FileRef,
    seg: &SegmentMeta,
    want: Group,
    defs: &[ColumnDef],
) -> Result<ScalarGroup> {
    let file = open(r, Kind::Columns)?;
    check_ref(&file, r)?;
    let Body::Columns(m) = &file.meta.body else {
        return Err(Error::corrupt(&file.path, "not a column-group file"));
    };
    if m.segment != seg.id || m.rows != seg.rows || m.group != want || m.vectors.is_some() {
        return Err(Error::corrupt(
            &file.path,
            format!(
                "holds {:?} of segment {} ({} rows) where the manifest expects {:?} of segment {} ({} rows)",
                m.group, m.segment, m.rows, want, seg.id, seg.rows
            ),
        ));
    }
    if m.columns.len() != defs.len() || m.columns.iter().zip(defs).any(|(c, d)| c.name != d.name) {
        return Err(Error::corrupt(
            &file.path,
            format!(
                "columns [{}] do not match the schema's [{}]",
                m.columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                defs.iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let mut cols = Vec::with_capacity(defs.len());
    for c in &m.columns {
        let values = file.extent(
            &c.values,
            size(&file.path, seg.rows, 4)?,
            &format!("column {}", c.name),
        )?;
        let values = values.as_ptr() as usize - file.map.as_ptr() as usize;
        if c.missing.is_some() != (c.missing_count > 0) || c.missing_count > seg.rows {
            return Err(Error::corrupt(
                &file.path,
                format!(
                    "column {}: {} missing rows with{} a bitmap",
                    c.name,
                    c.missing_count,
                    if c.missing.is_some() { "" } else { "out" }
                ),
            ));
        }
        let missing = match &c.missing {
            Some(e) => {
                let b = file.extent(
                    e,
                    seg.rows.div_ceil(64) * 8,
                    &format!("missing bitmap of {}", c.name),
                )?;
                Some(b.as_ptr() as usize - file.map.as_ptr() as usize)
            }
            None if c.missing_count != 0 => {
                return Err(Error::corrupt(
                    &file.path,
                    format!("column {} counts missing rows but has no bitmap", c.name),
                ))
            }
            None => None,
        };
        cols.push(ScalarInfo {
            values,
            missing,
            missing_count: c.missing_count,
        });
    }
    Ok(ScalarGroup { file, cols })
}

impl Segment {
    pub(crate) fn open(
        seg: &SegmentMeta,
        schema: &Schema,
        manifest: &Path,
        open: &mut Opener<'_>,
    ) -> Result<Segment> {
        let rows = usize::try_from(seg.rows)
            .map_err(|_| Error::InvalidInput(format!("segment {} has too many rows", seg.id)))?;
        // Id index.
        let index = open(&seg.id_index, Kind::IdIndex)?;
        check_ref(&index, &seg.id_index)?;
        let Body::IdIndex(m) = &index.meta.body else {
            return Err(Error::corrupt(&index.path, "not an id index"));
        };
        let width = crate::format::idindex::bucket_width(index.version);
        if m.segment != seg.id
            || m.rows != seg.rows
            || m.slots != crate::format::idindex::slots_for(seg.rows, width)
        {
            return Err(Error::corrupt(
                &index.path,
                format!(
                    "id index of segment {} with {} rows and {} slots, where the manifest expects segment {} with {} rows",
                    m.segment, m.rows, m.slots, seg.id, seg.rows
                ),
            ));
        }
        let base = index.map.as_ptr() as usize;
        let ids_off = index
            .extent(&m.ids, size(&index.path, seg.rows, 8)?, "ids")?
            .as_ptr() as usize
            - base;
        let table_off = index
            .extent(&m.table, size(&index.path, m.slots, 16)?, "hash table")?
            .as_ptr() as usize
            - base;
        let (slots, max_probe) = (m.slots as usize, m.max_probe);
        if m.bloom_blocks != crate::format::idindex::bloom_blocks_for(seg.rows) {
            return Err(Error::corrupt(
                &index.path,
                format!(
                    "Bloom filter of {} blocks for {} rows",
                    m.bloom_blocks, seg.rows
                ),
            ));
        }
        let bloom_off = index
            .extent(
                &m.bloom,
                size(&index.path, m.bloom_blocks, 64)?,
                "Bloom filter",
            )?
            .as_ptr() as usize
            - base;
        let bloom_blocks = m.bloom_blocks as usize;
        if max_probe as u64 >= m.slots.max(1) {
            return Err(Error::corrupt(
                &index.path,
                format!("max probe {max_probe} exceeds the table"),
            ));
        }

        let profile = open_scalar_group(open, &seg.profile, seg, Group::Profile, &schema.profile)?;
        let stats = open_scalar_group(open, &seg.stats, seg, Group::Stats, &schema.stats)?;

        // Embeddings: exactly the schema's versions, in schema order.
        let mut embeddings = Vec::with_capacity(schema.embeddings.len());
        for def in &schema.embeddings {
            let key = def.key();
            let Some(er) = seg.embeddings.iter().find(|e| e.key == key) else {
                return Err(Error::corrupt(
                    manifest,
                    format!("segment {} has no file for embedding {key}", seg.id),
                ));
            };
            let file = open(&er.file, Kind::Columns)?;
            check_ref(&file, &er.file)?;
            let (offset, stride) = check_vector_file(&file, def, seg.id, seg.rows)?;
            embeddings.push(EmbeddingFile {
                key,
                def: def.clone(),
                file,
                offset,
                stride,
            });
        }
        if seg.embeddings.len() != schema.embeddings.len() {
            return Err(Error::corrupt(
                manifest,
                format!(
                    "segment {} lists {} embedding files for {} schema versions",
                    seg.id,
                    seg.embeddings.len(),
                    schema.embeddings.len()
                ),
            ));
        }

        let deletes = match &seg.deletes {
            Some(r) => {
                let file = open(r, Kind::Deletes)?;
                check_ref(&file, r)?;
                let Body::Deletes(dm) = &file.meta.body else {
                    return Err(Error::corrupt(&file.path, "not a deletion bitmap"));
                };
                if dm.segment != seg.id || dm.rows != seg.rows || dm.deleted > seg.rows {
                    return Err(Error::corrupt(&file.path, format!("deletion bitmap of segment {} ({} rows) where the manifest expects segment {} ({} rows)", dm.segment, dm.rows, seg.id, seg.rows)));
                }
                let b = file.extent(&dm.bitmap, seg.rows.div_ceil(64) * 8, "deletion bitmap")?;
                let off = b.as_ptr() as usize - file.map.as_ptr() as usize;
                let count = dm.deleted;
                Some((file, off, count))
            }
            None => None,
        };

        Ok(Segment {
            id: seg.id,
            rows,
            index,
            ids_off,
            table_off,
            bloom_off,
            bloom_blocks,
            slots,
            max_probe,
            width,
            profile,
            stats,
            embeddings,
            deletes,
            profile_defs: schema.profile.clone(),
            stats_defs: schema.stats.clone(),
        })
    }

    /// Recomputes the checksums of the id index (once per process): the
    /// writer does this before trusting "absent" for uniqueness.
    pub(crate) fn ensure_index_verified(&self) -> Result<()> {
        self.index.ensure_verified()
    }

    /// Recomputes (once per mapped file) the checksums of what says which
    /// item a row is: the id index and the deletion bitmap. Queries and
    /// checked lookups call it before they rely on either, so that a damaged
    /// byte there is an error naming the file, never another item's row,
    /// an id read twice, or a live item read as absent. The first call costs
    /// a CRC pass over the files (about 41 bytes per row; docs/PERF.md);
    /// later calls one atomic load each.
    pub(crate) fn ensure_identity_verified(&self) -> Result<()> {
        self.index.ensure_verified()?;
        if let Some((f, _, _)) = &self.deletes {
            f.ensure_verified()?;
        }
        Ok(())
    }

    /// Recomputes the checksums of the statistics and deletion files (once
    /// per process): the writer does this before copying their bytes into
    /// new files, whose fresh checksums would otherwise hide damage.
    pub(crate) fn ensure_mutable_verified(&self) -> Result<()> {
        self.stats.file.ensure_verified()?;
        if let Some((f, _, _)) = &self.deletes {
            f.ensure_verified()?;
        }
        Ok(())
    }

    /// Segment id (unique within the store, never reused).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Number of rows, deleted ones included.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of rows not deleted.
    pub fn live_rows(&self) -> usize {
        self.rows - self.deletes.as_ref().map_or(0, |d| d.2 as usize)
    }

    /// Ids in row order (deleted rows included; see [`Segment::is_deleted`]).
    pub fn ids(&self) -> &[u64] {
        cast(&self.index.map[self.ids_off..self.ids_off + self.rows * 8])
    }

    pub(crate) fn index_view(&self) -> IdIndexView<'_> {
        let table: &[u64] = cast(&self.index.map[self.table_off..self.table_off + self.slots * 16]);
        let bloom: &[u64] =
            cast(&self.index.map[self.bloom_off..self.bloom_off + self.bloom_blocks * 64]);
        IdIndexView::new(
            self.ids(),
            bytemuck::cast_slice(table),
            self.max_probe,
            bytemuck::cast_slice(bloom),
            self.width,
        )
    }

    /// Row of `id` in this segment, whether deleted or not.
    #[inline]
    pub fn find(&self, id: u64) -> Option<usize> {
        self.index_view().find(id)
    }

    /// The deletion bitmap's words, if the segment has deletes.
    pub(crate) fn deleted_words(&self) -> Option<&[u64]> {
        self.deletes
            .as_ref()
            .map(|(f, off, _)| cast(&f.map[*off..off + self.rows.div_ceil(64) * 8]))
    }

    /// Whether `row` is deleted (a tombstone).
    #[inline]
    pub fn is_deleted(&self, row: usize) -> bool {
        match &self.deletes {
            Some((f, off, _)) if row < self.rows => {
                let w = off + (row / 64) * 8;
                let mut b = [0u8; 8];
                b.copy_from_slice(&f.map[w..w + 8]);
                u64::from_le_bytes(b) >> (row % 64) & 1 == 1
            }
            _ => false,
        }
    }

    fn scalar<'a, T: bytemuck::Pod>(
        &'a self,
        g: &'a ScalarGroup,
        i: usize,
        default: T,
    ) -> Column<'a, T> {
        let info = &g.cols[i];
        Column {
            values: cast(&g.file.map[info.values..info.values + self.rows * 4]),
            missing: info
                .missing
                .map(|m| cast(&g.file.map[m..m + self.rows.div_ceil(64) * 8])),
            missing_count: info.missing_count,
            default,
        }
    }

    /// A categorical profile column.
    pub fn categorical(&self, name: &str) -> Result<Column<'_, u32>> {
        let i = find_col(&self.profile_defs, "profile", name)?;
        match self.profile_defs[i].kind {
            ColumnKind::Categorical { default } => Ok(self.scalar(&self.profile, i, default)),
            ColumnKind::Numeric { .. } => Err(Error::InvalidInput(format!(
                "profile column {name:?} is numeric, not categorical"
            ))),
        }
    }

    /// A numeric profile column.
    pub fn numeric(&self, name: &str) -> Result<Column<'_, f32>> {
        let i = find_col(&self.profile_defs, "profile", name)?;
        match self.profile_defs[i].kind {
            ColumnKind::Numeric { default } => Ok(self.scalar(&self.profile, i, default)),
            ColumnKind::Categorical { .. } => Err(Error::InvalidInput(format!(
                "profile column {name:?} is categorical, not numeric"
            ))),
        }
    }

    /// A statistics column.
    pub fn stat(&self, name: &str) -> Result<Column<'_, f32>> {
        let i = find_col(&self.stats_defs, "statistics", name)?;
        match self.stats_defs[i].kind {
            ColumnKind::Numeric { default } => Ok(self.scalar(&self.stats, i, default)),
            ColumnKind::Categorical { .. } => Err(Error::Schema(format!(
                "statistics column {name:?} is not numeric"
            ))),
        }
    }

    /// The embedding column `key` (`space@version`), or `None`.
    pub(crate) fn embedding_opt(&self, key: &str) -> Option<EmbeddingColumn<'_>> {
        self.embeddings
            .iter()
            .find(|e| e.key == key)
            .map(|e| EmbeddingColumn {
                def: &e.def,
                bytes: &e.file.map[e.offset..e.offset + self.rows * e.stride],
                stride: e.stride,
            })
    }

    /// Every mapped file of this segment (for verification and listing).
    pub(crate) fn files(&self) -> Vec<&Arc<Container>> {
        let mut v = vec![&self.index, &self.profile.file, &self.stats.file];
        v.extend(self.embeddings.iter().map(|e| &e.file));
        if let Some((f, _, _)) = &self.deletes {
            v.push(f);
        }
        v
    }

    /// Recomputes every checksum of every file of the segment and checks the
    /// id index and bitmaps for consistency.
    ///
    /// Files whose paths are in `seen` were checksummed already (by the
    /// verification of another snapshot that shares them) and are skipped;
    /// files that verify are added to it. Returns the bytes checksummed.
    pub(crate) fn verify(&self, seen: &mut HashSet<PathBuf>) -> Result<u64> {
        let mut bytes = 0;
        for f in self.files() {
            if !seen.contains(&f.path) {
                f.verify_data()?;
                seen.insert(f.path.clone());
                bytes += f.len();
            }
        }
        self.index_view().check(&self.index.path)?;
        for (g, defs) in [
            (&self.profile, &self.profile_defs),
            (&self.stats, &self.stats_defs),
        ] {
            for (i, d) in defs.iter().enumerate() {
                let info = &g.cols[i];
                if let Some(m) = info.missing {
                    let words: &[u64] = cast(&g.file.map[m..m + self.rows.div_ceil(64) * 8]);
                    let n = count_bits(words, self.rows);
                    if n != info.missing_count {
                        return Err(Error::corrupt(
                            &g.file.path,
                            format!(
                                "column {}: bitmap marks {n} rows missing, metadata says {}",
                                d.name, info.missing_count
                            ),
                        ));
                    }
                }
                if let ColumnKind::Numeric { .. } = d.kind {
                    let vals: &[f32] = cast(&g.file.map[info.values..info.values + self.rows * 4]);
                    if let Some(r) = vals.iter().position(|x| !x.is_finite()) {
                        return Err(Error::corrupt(
                            &g.file.path,
                            format!("column {}: row {r} holds {}", d.name, vals[r]),
                        ));
                    }
                }
            }
        }
        if let Some((f, off, count)) = &self.deletes {
            let words: &[u64] = cast(&f.map[*off..off + self.rows.div_ceil(64) * 8]);
            let n = count_bits(words, self.rows);
            if n != *count {
                return Err(Error::corrupt(
                    &f.path,
                    format!("bitmap marks {n} rows deleted, metadata says {count}"),
                ));
            }
        }
        Ok(bytes)
    }
}

/// `n * width` bytes, or a corruption error if that overflows (a damaged
/// row count).
fn size(path: &Path, n: u64, width: u64) -> Result<u64> {
    n.checked_mul(width)
        .ok_or_else(|| Error::corrupt(path, format!("{n} rows of {width} bytes overflow")))
}

/// The newest of segments `0..n` (as `seg` returns them) holding `id` live,
/// and its row. With several segments, Bloom filters skip those that cannot
/// hold it. Ids are unique among live rows, so the first hit decides.
pub(crate) fn find_live<'a>(
    n: usize,
    seg: impl Fn(usize) -> &'a Segment,
    id: u64,
) -> Option<(usize, usize)> {
    for i in (0..n).rev() {
        let s = seg(i);
        let view = s.index_view();
        if n > 1 && !view.may_contain(id) {
            continue;
        }
        if let Some(row) = view.find(id) {
            if !s.is_deleted(row) {
                return Some((i, row));
            }
        }
    }
    None
}

/// Number of set bits among the first `rows` bits of `words`.
pub(crate) fn count_bits(words: &[u64], rows: usize) -> u64 {
    let full = rows / 64;
    let mut n: u64 = words[..full].iter().map(|w| w.count_ones() as u64).sum();
    if !rows.is_multiple_of(64) {
        n += (words[full] & ((1u64 << (rows % 64)) - 1)).count_ones() as u64;
    }
    n
}

fn find_col(defs: &[ColumnDef], kind: &'static str, name: &str) -> Result<usize> {
    defs.iter()
        .position(|c| c.name == name)
        .ok_or_else(|| Error::NoSuchColumn {
            kind,
            name: name.to_string(),
            available: defs.iter().map(|c| c.name.clone()).collect(),
        })
}

/// Casts a validated, aligned block of the map. Offsets were checked to be
/// 64-aligned in a page-aligned map, and lengths to be whole elements, so
/// this cannot fail; an empty slice is returned rather than panicking if it
/// ever did.
fn cast<T: bytemuck::Pod>(b: &[u8]) -> &[T] {
    bytemuck::try_cast_slice(b).unwrap_or(&[])
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
            Row::F16(v) => v.convert_to_f32_slice(out),
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
