//! A segment of a snapshot, read in place from its mapped files: the id
//! index, the profile and statistics column groups, one file per embedding
//! version, and an optional deletion bitmap. Opening checks each file
//! against the manifest and the schema; lookups find an id's row. The
//! column views it hands out are in [`crate::read::columns`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::container::{Container, Kind};
use crate::format::idindex::IdIndexView;
use crate::format::meta::{Body, FileRef, Group, SegmentMeta};
use crate::read::columns::{cast, find_col, Column, EmbeddingColumn};
use crate::schema::{ColumnDef, ColumnKind, EmbeddingDef, Schema};

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

/// One column of a scalar group: where its values and missing bitmap start
/// in the map, and how many rows are missing.
#[derive(Debug)]
struct ScalarInfo {
    values: usize,
    missing: Option<usize>,
    missing_count: u64,
}

/// A checked profile or statistics file and its columns, in schema order.
#[derive(Debug)]
struct ScalarGroup {
    file: Arc<Container>,
    cols: Vec<ScalarInfo>,
}

/// A checked embedding file: its version and where its rows start.
#[derive(Debug)]
struct EmbeddingFile {
    key: String,
    def: EmbeddingDef,
    file: Arc<Container>,
    offset: usize,
    stride: usize,
    /// Where the computed-rows bitmap starts in the map, and its count.
    computed: Option<(usize, u64)>,
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
/// map and their stride (see [`computed_rows`] for its computed-rows
/// bitmap).
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

/// The computed-rows bitmap of embedding file `file` of `rows` rows (a
/// file [`check_vector_file`] accepted): where it starts in the map and
/// the count the metadata gives, or `None` if no row was computed.
pub(crate) fn computed_rows(file: &Container, rows: u64) -> Result<Option<(usize, u64)>> {
    let Body::Columns(cm) = &file.meta.body else {
        return Err(Error::corrupt(&file.path, "not a column-group file"));
    };
    let Some(vb) = &cm.vectors else {
        return Err(Error::corrupt(
            &file.path,
            "embedding file without a vector block",
        ));
    };
    match vb.computed {
        None if vb.computed_count == 0 => Ok(None),
        Some(e) if vb.computed_count > 0 && vb.computed_count <= rows => {
            let b = file.extent(&e, rows.div_ceil(64) * 8, "computed-rows bitmap")?;
            Ok(Some((
                b.as_ptr() as usize - file.map.as_ptr() as usize,
                vb.computed_count,
            )))
        }
        _ => Err(Error::corrupt(
            &file.path,
            format!(
                "{} computed rows (of {rows}) with{} a bitmap",
                vb.computed_count,
                if vb.computed.is_some() { "" } else { "out" }
            ),
        )),
    }
}

/// Opens the profile or statistics file `r` of `seg` and checks it against
/// the manifest (segment, rows, group `want`) and the schema's columns
/// `defs`, and the extents of each column's values and missing bitmap.
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

/// Where the blocks of a checked id index start in its map, and the
/// table's shape.
struct IndexLayout {
    ids_off: usize,
    table_off: usize,
    bloom_off: usize,
    bloom_blocks: usize,
    slots: usize,
    max_probe: u32,
    width: usize,
}

/// Opens the id index of `seg` and checks it against the manifest entry:
/// segment, row count, table size, Bloom filter size, probe bound, and
/// the extents of its blocks.
fn open_id_index(
    open: &mut Opener<'_>,
    seg: &SegmentMeta,
) -> Result<(Arc<Container>, IndexLayout)> {
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
    let layout = IndexLayout {
        ids_off,
        table_off,
        bloom_off,
        bloom_blocks,
        slots,
        max_probe,
        width,
    };
    Ok((index, layout))
}

/// Opens and checks the embedding files of `seg`: exactly the schema's
/// versions, in schema order.
fn open_embeddings(
    open: &mut Opener<'_>,
    seg: &SegmentMeta,
    schema: &Schema,
    manifest: &Path,
) -> Result<Vec<EmbeddingFile>> {
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
        let computed = computed_rows(&file, seg.rows)?;
        embeddings.push(EmbeddingFile {
            key,
            def: def.clone(),
            file,
            offset,
            stride,
            computed,
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
    Ok(embeddings)
}

/// Opens and checks the deletion bitmap of `seg`, if it has one: the file,
/// where its bitmap starts in the map, and how many rows it deletes.
fn open_deletes(
    open: &mut Opener<'_>,
    seg: &SegmentMeta,
) -> Result<Option<(Arc<Container>, usize, u64)>> {
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
    Ok(deletes)
}

impl Segment {
    /// Opens segment `seg` of a snapshot of `schema` whose manifest is
    /// `manifest`, through `open`, and checks every file against the
    /// manifest and the schema: the id index, the profile and statistics
    /// groups, one file per embedding version, and the deletion bitmap.
    pub(crate) fn open(
        seg: &SegmentMeta,
        schema: &Schema,
        manifest: &Path,
        open: &mut Opener<'_>,
    ) -> Result<Segment> {
        let rows = usize::try_from(seg.rows)
            .map_err(|_| Error::InvalidInput(format!("segment {} has too many rows", seg.id)))?;
        let (index, layout) = open_id_index(open, seg)?;
        let profile = open_scalar_group(open, &seg.profile, seg, Group::Profile, &schema.profile)?;
        let stats = open_scalar_group(open, &seg.stats, seg, Group::Stats, &schema.stats)?;
        let embeddings = open_embeddings(open, seg, schema, manifest)?;
        let deletes = open_deletes(open, seg)?;
        let IndexLayout {
            ids_off,
            table_off,
            bloom_off,
            bloom_blocks,
            slots,
            max_probe,
            width,
        } = layout;
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

    /// [`Segment::ensure_identity_verified`] that gives up (`Ok(false)`)
    /// as soon as `go_on` says so.
    pub(crate) fn ensure_identity_verified_until(&self, go_on: &dyn Fn() -> bool) -> Result<bool> {
        if !self.index.ensure_verified_until(go_on)? {
            return Ok(false);
        }
        match &self.deletes {
            Some((f, _, _)) => f.ensure_verified_until(go_on),
            None => Ok(true),
        }
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
            Some((f, off, _)) if row < self.rows => bit(&f.map[*off..], row),
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
        Column::new(
            cast(&g.file.map[info.values..info.values + self.rows * 4]),
            info.missing
                .map(|m| cast(&g.file.map[m..m + self.rows.div_ceil(64) * 8])),
            info.missing_count,
            default,
        )
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
        self.embeddings.iter().find(|e| e.key == key).map(|e| {
            EmbeddingColumn::new(
                &e.def,
                &e.file.map[e.offset..e.offset + self.rows * e.stride],
                e.stride,
            )
        })
    }

    /// Whether the vector of `row` for embedding `key` was computed by the
    /// store with the version's item tower (false for a vector given by
    /// the caller, and for a key the segment does not hold).
    pub(crate) fn is_computed(&self, key: &str, row: usize) -> bool {
        let Some(e) = self.embeddings.iter().find(|e| e.key == key) else {
            return false;
        };
        match e.computed {
            Some((off, _)) if row < self.rows => bit(&e.file.map[off..], row),
            _ => false,
        }
    }

    /// The rows of `key` whose vector was computed, as a bitmap of
    /// `ceil(rows / 64)` words (`None` when none was).
    pub(crate) fn computed_bitmap(&self, key: &str) -> Option<Vec<u64>> {
        let e = self.embeddings.iter().find(|e| e.key == key)?;
        let (off, _) = e.computed?;
        let words: &[u64] = cast(&e.file.map[off..off + self.rows.div_ceil(64) * 8]);
        Some(words.iter().map(|w| u64::from_le(*w)).collect())
    }

    /// Number of live rows whose vector for `key` was computed.
    pub(crate) fn computed_live(&self, key: &str) -> u64 {
        let Some(bm) = self.computed_bitmap(key) else {
            return 0;
        };
        (0..self.rows)
            .filter(|&r| bm[r / 64] >> (r % 64) & 1 == 1 && !self.is_deleted(r))
            .count() as u64
    }

    /// This segment's files in the order a background prefault reads them:
    /// what says which item each row is (id index, deletion bitmap; every
    /// query checksums them first), then the embedding rows, then the
    /// profile and statistics columns.
    pub(crate) fn prefault_groups(&self) -> [Vec<&Arc<Container>>; 3] {
        let mut identity = vec![&self.index];
        identity.extend(self.deletes.as_ref().map(|(f, _, _)| f));
        [
            identity,
            self.embeddings.iter().map(|e| &e.file).collect(),
            vec![&self.profile.file, &self.stats.file],
        ]
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
        for e in &self.embeddings {
            if let Some((off, count)) = e.computed {
                let words: &[u64] = cast(&e.file.map[off..off + self.rows.div_ceil(64) * 8]);
                let n = count_bits(words, self.rows);
                if n != count {
                    return Err(Error::corrupt(
                        &e.file.path,
                        format!("bitmap marks {n} rows computed, metadata says {count}"),
                    ));
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

/// Bit `r` of a little-endian u64 bitmap starting at `bitmap[0]`.
#[inline]
fn bit(bitmap: &[u8], r: usize) -> bool {
    let w = (r / 64) * 8;
    let mut b = [0u8; 8];
    b.copy_from_slice(&bitmap[w..w + 8]);
    u64::from_le_bytes(b) >> (r % 64) & 1 == 1
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
