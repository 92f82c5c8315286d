//! Compaction off the writer's path: a [`CompactionJob`] merges the segments
//! of one snapshot into new files on any thread while the writer keeps
//! publishing, and [`crate::Transaction::apply_compaction`] rebases the
//! result onto the snapshot being built (the only step that holds the
//! writer). The merge helpers here also serve the in-transaction
//! [`crate::Transaction::compact`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::Result;
use crate::format::encode::{self, ScalarColumn};
use crate::format::meta::{self, EmbeddingRef, FileRef, SegmentMeta};
use crate::format::names;
use crate::io::fs::Fs;
use crate::read::segment::Segment;
use crate::read::snapshot::Snapshot;
use crate::schema::{ColumnDef, ColumnKind, Dtype, EmbeddingDef, Schema};

/// Where new data files go: a directory, the snapshot number their names
/// carry, and the set of names written so far (unique within the number).
pub(crate) struct Sink<'a> {
    pub dir: &'a Path,
    pub fs: &'a dyn Fs,
    pub number: u64,
    pub written: &'a mut HashSet<String>,
}

impl Sink<'_> {
    /// A fresh file name for `group` of `segment`, recorded as written.
    pub fn name(&mut self, segment: u64, group: &str, ext: &str) -> String {
        let mut name = names::data_file(self.number, segment, group, ext);
        let mut k = 1;
        while self.written.contains(&name) {
            name = names::data_file(self.number, segment, &format!("{group}.{k}"), ext);
            k += 1;
        }
        self.written.insert(name.clone());
        name
    }

    /// [`Sink::name`] as a path in the directory.
    pub fn path(&mut self, segment: u64, group: &str, ext: &str) -> PathBuf {
        let name = self.name(segment, group, ext);
        self.dir.join(name)
    }

    /// Writes one scalar column group of segment `seg`.
    pub fn scalar_group(
        &mut self,
        seg: u64,
        rows: u64,
        group: meta::Group,
        cols: &[ScalarColumn],
    ) -> Result<FileRef> {
        let label = match group {
            meta::Group::Profile => "profile",
            _ => "stats",
        };
        let path = self.path(seg, label, "vcol");
        encode::write_scalar_group(self.fs, &path, seg, rows, group, cols)
    }

    /// Writes `batch` as the new segment `seg` of `schema`: its id index,
    /// its `profile` columns (as stored) and statistics, and its checked
    /// `vectors` (one per schema version, each marked whether the version's
    /// item tower computed it, see `items::batch_vectors`). Returns the
    /// segment's manifest entry.
    pub fn segment(
        &mut self,
        seg: u64,
        schema: &Schema,
        batch: &crate::write::batch::ItemBatch,
        profile: &[ScalarColumn],
        vectors: &crate::write::items::BatchVectors<'_>,
    ) -> Result<SegmentMeta> {
        let rows = batch.len() as u64;
        let stats = batch.scalar_columns(schema, crate::write::batch::Group::Stats);
        let (id_index, profile, stats) = self.row_files(seg, &batch.ids, profile, &stats)?;
        let mut embeddings = Vec::new();
        for (def, v, computed) in vectors {
            let key = def.key();
            let bitmap = computed.then(|| crate::write::towers::all_rows(batch.len()));
            let path = self.path(seg, &format!("emb-{key}"), "vcol");
            let d = def.dim as usize;
            let file = encode::write_embedding_group(
                self.fs,
                &path,
                seg,
                rows,
                def,
                bitmap.as_deref(),
                v.chunks_exact(d),
            )?;
            embeddings.push(EmbeddingRef { key, file });
        }
        Ok(SegmentMeta {
            id: seg,
            rows,
            id_index,
            profile,
            stats,
            embeddings,
            deletes: None,
        })
    }

    /// Writes a new segment's id index, profile and statistics files.
    pub fn row_files(
        &mut self,
        seg: u64,
        ids: &[u64],
        profile: &[ScalarColumn],
        stats: &[ScalarColumn],
    ) -> Result<(FileRef, FileRef, FileRef)> {
        let rows = ids.len() as u64;
        let path = self.path(seg, "ids", "vidx");
        let id_index = encode::write_id_index(self.fs, &path, seg, ids)?;
        let profile = self.scalar_group(seg, rows, meta::Group::Profile, profile)?;
        let stats = self.scalar_group(seg, rows, meta::Group::Stats, stats)?;
        Ok((id_index, profile, stats))
    }
}

/// Rows of one source segment that go into a merged segment, in order.
/// `seg` is `None` for a source that has left the snapshot (its rows are
/// all deleted, so their values are written as missing or zero).
#[derive(Clone, Copy)]
pub(crate) struct Part<'a> {
    pub seg: Option<&'a Segment>,
    pub rows: &'a [usize],
}

/// The merged scalar columns `defs` (statistics if `stats`, else profile).
pub(crate) fn merged_scalars(
    parts: &[Part<'_>],
    defs: &[ColumnDef],
    stats: bool,
) -> Result<Vec<ScalarColumn>> {
    let total: usize = parts.iter().map(|p| p.rows.len()).sum();
    let mut cols = Vec::with_capacity(defs.len());
    for d in defs {
        let mut col = ScalarColumn::all_missing(d, total);
        let mut at = 0;
        for p in parts {
            let Some(seg) = p.seg else {
                at += p.rows.len();
                continue;
            };
            let (vals, miss): (Vec<u32>, Vec<bool>) = if stats {
                let c = seg.stat(&d.name)?;
                p.rows
                    .iter()
                    .map(|&r| (c.get(r).to_bits(), c.is_missing(r)))
                    .unzip()
            } else {
                match d.kind {
                    ColumnKind::Categorical { .. } => {
                        let c = seg.categorical(&d.name)?;
                        p.rows.iter().map(|&r| (c.get(r), c.is_missing(r))).unzip()
                    }
                    ColumnKind::Numeric { .. } => {
                        let c = seg.numeric(&d.name)?;
                        p.rows
                            .iter()
                            .map(|&r| (c.get(r).to_bits(), c.is_missing(r)))
                            .unzip()
                    }
                }
            };
            for (v, m) in vals.into_iter().zip(miss) {
                col.set(at, (!m).then_some(v));
                at += 1;
            }
        }
        col.normalize();
        cols.push(col);
    }
    Ok(cols)
}

/// Writes the merged embedding column `def` of segment `seg`: stored rows
/// copied byte for byte (never re-quantized); zero rows for a part whose
/// segment has left the snapshot or lacks the column.
pub(crate) fn write_merged_embedding(
    sink: &mut Sink<'_>,
    seg: u64,
    def: &EmbeddingDef,
    parts: &[Part<'_>],
) -> Result<EmbeddingRef> {
    let key = def.key();
    let cols: Vec<_> = parts
        .iter()
        .map(|p| p.seg.and_then(|s| s.embedding_opt(&key)))
        .collect();
    let rows: usize = parts.iter().map(|p| p.rows.len()).sum();
    let zeros = vec![0u8; def.dtype.row_stride(def.dim)];
    let it = parts.iter().zip(&cols).flat_map(|(p, col)| {
        let zeros = &zeros[..];
        p.rows.iter().map(move |&r| match col {
            Some(c) => c.row_bytes(r),
            None => zeros,
        })
    });
    // Which rows were computed travels with the rows.
    let mut computed = vec![0u64; rows.div_ceil(64)];
    let mut at = 0;
    for p in parts {
        let bits = p.seg.and_then(|s| s.computed_bitmap(&key));
        for &r in p.rows {
            if bits
                .as_ref()
                .is_some_and(|b| b[r / 64] >> (r % 64) & 1 == 1)
            {
                computed[at / 64] |= 1 << (at % 64);
            }
            at += 1;
        }
    }
    let path = sink.path(seg, &format!("emb-{key}"), "vcol");
    let file =
        encode::write_embedding_raw(sink.fs, &path, seg, rows as u64, def, Some(&computed), it)?;
    Ok(EmbeddingRef { key, file })
}

/// Writes segment `seg` holding `parts` merged (every part present):
/// id index, profile, statistics and every embedding of `schema`.
pub(crate) fn write_merged(
    sink: &mut Sink<'_>,
    seg: u64,
    schema: &Schema,
    parts: &[Part<'_>],
) -> Result<SegmentMeta> {
    let mut ids = Vec::new();
    for p in parts {
        if let Some(s) = p.seg {
            ids.extend(p.rows.iter().map(|&r| s.ids()[r]));
        }
    }
    let profile = merged_scalars(parts, &schema.profile, false)?;
    let stats = merged_scalars(parts, &schema.stats, true)?;
    let (id_index, profile, stats) = sink.row_files(seg, &ids, &profile, &stats)?;
    let embeddings = schema
        .embeddings
        .iter()
        .map(|def| write_merged_embedding(sink, seg, def, parts))
        .collect::<Result<Vec<_>>>()?;
    Ok(SegmentMeta {
        id: seg,
        rows: ids.len() as u64,
        id_index,
        profile,
        stats,
        embeddings,
        deletes: None,
    })
}

/// The snapshot numbers whose files a running job owns (the writer's
/// garbage collection leaves them alone), shared by a writer and its jobs.
pub(crate) type Inflight = Arc<Mutex<HashSet<u64>>>;

/// Files a job wrote: removed on drop unless handed to a transaction.
#[derive(Debug)]
pub(crate) struct Owned {
    pub dir: PathBuf,
    pub fs: Arc<dyn Fs>,
    pub inflight: Inflight,
    /// The writer's lock: no other writer can open the store (and reuse
    /// this number, or collect these files) while the job lives.
    pub _lock: Arc<crate::write::writer::StoreLock>,
    pub number: u64,
    pub files: HashSet<String>,
}

impl Drop for Owned {
    fn drop(&mut self) {
        for name in self.files.drain() {
            // Best effort: a file left behind is an orphan for gc.
            let _ = self.fs.remove(&self.dir.join(&name));
        }
        self.inflight.lock().remove(&self.number);
    }
}

/// A compaction of one snapshot's segments, started by
/// [`crate::Writer::start_compaction`]. [`CompactionJob::run`] does the
/// merge (reading, checksumming and writing every row) without the writer,
/// so it can run on another thread while the writer goes on publishing;
/// the result is published by [`crate::Transaction::apply_compaction`].
/// Dropping a job, or its result, removes the files it wrote.
///
/// ```
/// use vstore::{Dtype, ItemBatch, Schema, Writer};
/// # let dir = tempfile::tempdir().unwrap();
/// let schema = Schema::new().stat("ctr", 0.0).embedding("item", "v1", 2, Dtype::F32);
/// let mut w = Writer::create(dir.path(), schema)?;
/// for ids in [vec![1u64, 2], vec![3, 4]] {
///     let mut tx = w.begin();
///     let v = vec![0.5f32; ids.len() * 2];
///     tx.add_items(ItemBatch::new(ids).embedding("item@v1", v))?;
///     tx.commit()?;
/// }
/// let job = w.start_compaction()?.expect("two segments to merge");
/// let merging = std::thread::spawn(move || job.run());
/// // Meanwhile the writer goes on publishing.
/// let mut tx = w.begin();
/// tx.delete_items(&[2])?;
/// tx.commit()?;
/// let done = merging.join().unwrap()?;
/// // The final publish carries the delete over to the merged segment.
/// let mut tx = w.begin();
/// tx.apply_compaction(done)?;
/// let snap = tx.commit()?;
/// assert_eq!(snap.segments().len(), 1);
/// assert_eq!(snap.ids().collect::<Vec<_>>(), vec![1, 3, 4]);
/// # Ok::<(), vstore::Error>(())
/// ```
#[derive(Debug)]
pub struct CompactionJob {
    pub(crate) base: Arc<Snapshot>,
    pub(crate) segment: u64,
    pub(crate) owned: Owned,
}

/// One source segment of a compaction: its state when the job started and
/// the rows (live then) copied into the merged segment, in order.
#[derive(Debug)]
pub(crate) struct Source {
    pub meta: SegmentMeta,
    pub rows: Vec<usize>,
}

/// A precomputed first-layer file the job wrote for the merged segment.
#[derive(Debug)]
pub(crate) struct PreOut {
    pub key: String,
    pub bundle: String,
    pub dtype: Dtype,
    pub file: FileRef,
}

/// The merged segment a [`CompactionJob`] wrote, ready for
/// [`crate::Transaction::apply_compaction`].
#[derive(Debug)]
pub struct CompactedSegment {
    pub(crate) base: u64,
    pub(crate) meta: SegmentMeta,
    pub(crate) sources: Vec<Source>,
    pub(crate) pre: Vec<PreOut>,
    pub(crate) owned: Owned,
}

impl CompactedSegment {
    /// The snapshot the compaction read.
    pub fn base_snapshot(&self) -> u64 {
        self.base
    }

    /// Rows in the merged segment (the live rows of the base snapshot).
    pub fn rows(&self) -> u64 {
        self.meta.rows
    }

    /// Segments merged.
    pub fn source_segments(&self) -> usize {
        self.sources.len()
    }
}

impl CompactionJob {
    /// The snapshot being compacted.
    pub fn base_snapshot(&self) -> u64 {
        self.base.number()
    }

    /// Verifies the checksums of every file of the base snapshot's segments
    /// (and their precomputed files), then writes the merged segment: live
    /// rows only, vectors copied byte for byte. Needs no access to the
    /// writer; files are durable when it returns.
    pub fn run(mut self) -> Result<CompactedSegment> {
        let base = self.base.clone();
        let segs = base.segments();
        for s in segs {
            for f in s.files() {
                f.ensure_verified()?;
            }
        }
        for lm in &base.models {
            for p in &lm.pre {
                p.file.ensure_verified()?;
            }
        }
        let live: Vec<Vec<usize>> = segs
            .iter()
            .map(|s| (0..s.rows()).filter(|&r| !s.is_deleted(r)).collect())
            .collect();
        let parts: Vec<Part<'_>> = segs
            .iter()
            .zip(&live)
            .map(|(s, rows)| Part { seg: Some(s), rows })
            .collect();
        let seg = self.segment;
        let Owned {
            dir,
            fs,
            number,
            files,
            ..
        } = &mut self.owned;
        let mut sink = Sink {
            dir,
            fs: &**fs,
            number: *number,
            written: files,
        };
        let meta = write_merged(&mut sink, seg, base.schema(), &parts)?;
        let mut pre = Vec::new();
        for lm in &base.models {
            let Some(first) = lm.pre.first() else {
                continue;
            };
            let id = lm.model.bundle_id();
            let r = (base.manifest.bundles.iter())
                .find(|r| r.key == id)
                .expect("a loaded bundle is in its manifest");
            let cols: Option<Vec<_>> = segs
                .iter()
                .map(|s| {
                    lm.pre
                        .iter()
                        .find(|p| p.segment == s.id())
                        .map(|p| p.column())
                })
                .collect();
            // A published snapshot has the file for every segment; without
            // one, the final publish computes the merged segment's instead.
            let Some(cols) = cols else { continue };
            let it = live
                .iter()
                .zip(&cols)
                .flat_map(|(rows, col)| rows.iter().map(move |&row| col.row_bytes(row)));
            let path = sink.path(seg, &format!("pre-{}", r.key.replace('#', ".")), "vcol");
            let file =
                encode::write_embedding_raw(sink.fs, &path, seg, meta.rows, &first.def, None, it)?;
            pre.push(PreOut {
                key: r.key.clone(),
                bundle: r.files[0].name.clone(),
                dtype: first.def.dtype,
                file,
            });
        }
        let sources = base
            .manifest
            .segments
            .iter()
            .cloned()
            .zip(live)
            .map(|(meta, rows)| Source { meta, rows })
            .collect();
        Ok(CompactedSegment {
            base: base.number(),
            meta,
            sources,
            pre,
            owned: self.owned,
        })
    }
}
