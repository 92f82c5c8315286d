//! Compaction inside a transaction: merging segments in place
//! ([`Transaction::compact`]) and applying a background job's result
//! ([`Transaction::apply_compaction`]), rebased onto whatever was
//! published while the job ran.

use super::transaction::TxBundle;
use super::transaction::{seg_at, SegState, Transaction, View};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::encode::{self};
use crate::format::meta::{self, FileRef, SegmentMeta};
use crate::write::compaction::{
    merged_scalars, write_merged, write_merged_embedding, CompactedSegment, Part, Sink,
};

/// When [`Transaction::compact_if`] compacts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compaction {
    /// Compact when the snapshot has more segments than this.
    pub max_segments: usize,
    /// Compact when more than this fraction of rows is deleted.
    pub max_dead_fraction: f64,
}

impl Default for Compaction {
    fn default() -> Self {
        Compaction {
            max_segments: 8,
            max_dead_fraction: 0.2,
        }
    }
}

impl Compaction {
    /// Whether a snapshot of `segments` segments holding `rows` rows, `dead`
    /// of them deleted, is due for compaction.
    pub fn due(&self, segments: usize, rows: usize, dead: usize) -> bool {
        segments > self.max_segments
            || (rows > 0 && dead as f64 > self.max_dead_fraction * rows as f64)
    }
}

impl Transaction<'_> {
    /// Merges every segment into one, dropping deleted rows, if the snapshot
    /// has more than one segment or any deleted row; returns whether it did.
    /// Vectors are copied byte for byte (never re-quantized); the checksums
    /// of every source file are verified first.
    pub fn compact(&mut self) -> Result<bool> {
        self.w.check_poisoned()?;
        let n = self.segments.len();
        let dead: usize = (0..n)
            .map(|i| self.segment(i).rows() - self.segment(i).live_rows())
            .sum();
        if n == 0 || (n == 1 && dead == 0) {
            return Ok(false);
        }
        for i in 0..n {
            for f in self.segment(i).files() {
                f.ensure_verified()?;
            }
        }
        let r = self.write_compacted();
        self.w.poison(r).map(|()| true)
    }

    /// Compacts if `policy` says so (see [`Compaction`]); returns whether it did.
    pub fn compact_if(&mut self, policy: &Compaction) -> Result<bool> {
        let n = self.segments.len();
        let (rows, live) = (0..n).fold((0usize, 0usize), |(r, l), i| {
            (r + self.segment(i).rows(), l + self.segment(i).live_rows())
        });
        if policy.due(n, rows, rows - live) {
            self.compact()
        } else {
            Ok(false)
        }
    }

    /// Publishes, as part of this transaction, a compaction that
    /// [`crate::CompactionJob::run`] wrote while the writer went on publishing:
    /// the merged segment replaces its sources, rebased onto the snapshot
    /// being built. Rows deleted or replaced since the job started are
    /// deleted in the merged segment; if statistics or profile files changed,
    /// or an embedding version was added (or dropped and added again)
    /// meanwhile, those columns of the merged
    /// segment are rewritten from the current rows (a version dropped
    /// meanwhile is dropped from it too). Segments added since stay as they
    /// are. Refused with [`Error::CompactionConflict`], changing nothing, if
    /// another compaction merged one of its sources since, or a restore
    /// brought back rows of a source that were deleted when it started. Returns whether
    /// the merged segment holds any live row (if not, it is left out and its
    /// sources simply leave the snapshot).
    pub fn apply_compaction(&mut self, mut done: CompactedSegment) -> Result<bool> {
        self.w.check_poisoned()?;
        if !Arc::ptr_eq(&done.owned.inflight, &self.w.inflight) {
            return Err(Error::InvalidInput(format!(
                "the compaction of snapshot {} was started by another writer (of {})",
                done.base,
                done.owned.dir.display()
            )));
        }
        let mut pos = Vec::with_capacity(done.sources.len());
        // The sources' deletion bitmaps are read below: verified first, so
        // that damage is reported as damage, not as a restore.
        for src in &done.sources {
            if let Some(p) = self.segments.iter().position(|s| s.meta.id == src.meta.id) {
                self.segment(p).ensure_mutable_verified()?;
            }
        }
        for src in &done.sources {
            let p = self.segments.iter().position(|s| s.meta.id == src.meta.id);
            if p.is_none()
                && (self.w.retired.contains(&src.meta.id)
                    || self.compacted_away.contains(&src.meta.id))
            {
                return Err(Error::CompactionConflict {
                    base: done.base,
                    segment: src.meta.id,
                    why: "has since been merged by another compaction".into(),
                });
            }
            // Deletes only grow between two snapshots of one lineage, so
            // the rows live now are among those the job copied; but a
            // restore published since may have brought back rows deleted
            // when the job started, which the merged segment lacks.
            if let Some(p) = p {
                let seg = self.segment(p);
                let copied_live = src.rows.iter().filter(|&&r| !seg.is_deleted(r)).count();
                if seg.live_rows() > copied_live {
                    return Err(Error::CompactionConflict {
                        base: done.base,
                        segment: src.meta.id,
                        why: format!(
                            "holds {} live rows the compaction did not copy (deleted when it \
                             started, live again since: a restore)",
                            seg.live_rows() - copied_live
                        ),
                    });
                }
            }
            // Otherwise a source that left the snapshot had all its rows
            // deleted (or a restore took the segment away: its rows are
            // then deleted in the merged segment too).
            pos.push(p);
        }
        let r = self.rebase_compacted(&mut done, &pos);
        self.w.poison(r)
    }

    pub(super) fn rebase_compacted(
        &mut self,
        done: &mut CompactedSegment,
        pos: &[Option<usize>],
    ) -> Result<bool> {
        // The job's files now belong to this transaction: removed if it is
        // abandoned, collected by gc if unused once it is published.
        self.written.extend(std::mem::take(&mut done.owned.files));
        let ids: Vec<u64> = done.sources.iter().map(|s| s.meta.id).collect();
        let total = done.meta.rows as usize;
        let mut deleted = vec![0u64; total.div_ceil(64)];
        let mut at = 0;
        for (src, p) in done.sources.iter().zip(pos) {
            for (k, &r) in src.rows.iter().enumerate() {
                if p.is_none_or(|p| self.segment(p).is_deleted(r)) {
                    deleted[(at + k) / 64] |= 1 << ((at + k) % 64);
                }
            }
            at += src.rows.len();
        }
        let dead: usize = deleted.iter().map(|w| w.count_ones() as usize).sum();
        let first = pos.iter().flatten().min().copied();
        let mut remove: Vec<usize> = pos.iter().flatten().copied().collect();
        remove.sort_unstable();
        self.compacted_away.extend(&ids);
        if dead == total {
            for &p in remove.iter().rev() {
                self.segments.remove(p);
            }
            return Ok(false);
        }
        let mut meta = done.meta.clone();
        let seg_id = meta.id;
        {
            let parts: Vec<Part<'_>> = done
                .sources
                .iter()
                .zip(pos)
                .map(|(src, p)| Part {
                    seg: p.map(|p| seg_at(&self.base, &self.segments, p)),
                    rows: &src.rows,
                })
                .collect();
            let changed = |f: fn(&SegmentMeta) -> &FileRef| {
                done.sources.iter().zip(pos).any(|(src, p)| {
                    p.is_some_and(|p| f(&self.segments[p].meta).name != f(&src.meta).name)
                })
            };
            let (stats_changed, profile_changed) = (changed(|m| &m.stats), changed(|m| &m.profile));
            // The file of embedding `key` in `m`, if any.
            fn emb<'m>(m: &'m SegmentMeta, key: &str) -> Option<&'m str> {
                m.embeddings
                    .iter()
                    .find(|e| e.key == key)
                    .map(|e| e.file.name.as_str())
            }
            // Whether the job's copy of `key` still holds the current
            // vectors (a version dropped and added again under the same key
            // meanwhile has new files).
            let same_vectors = |key: &str| {
                done.sources.iter().zip(pos).all(|(src, p)| {
                    p.is_none_or(|p| emb(&self.segments[p].meta, key) == emb(&src.meta, key))
                })
            };
            let mut sink = Sink {
                dir: &self.w.dir,
                fs: &*self.w.fs,
                number: self.number,
                written: &mut self.written,
            };
            if stats_changed {
                let cols = merged_scalars(&parts, &self.schema.stats, true)?;
                meta.stats = sink.scalar_group(seg_id, meta.rows, meta::Group::Stats, &cols)?;
            }
            if profile_changed {
                let cols = merged_scalars(&parts, &self.schema.profile, false)?;
                meta.profile = sink.scalar_group(seg_id, meta.rows, meta::Group::Profile, &cols)?;
            }
            let mut embeddings = Vec::with_capacity(self.schema.embeddings.len());
            for def in &self.schema.embeddings {
                let key = def.key();
                match meta.embeddings.iter().find(|e| e.key == key) {
                    Some(e) if same_vectors(&key) => embeddings.push(e.clone()),
                    _ => embeddings.push(write_merged_embedding(&mut sink, seg_id, def, &parts)?),
                }
            }
            if dead > 0 {
                let path = sink.path(seg_id, "del", "vdel");
                meta.deletes = Some(encode::write_deletes(
                    sink.fs, &path, seg_id, meta.rows, &deleted,
                )?);
            }
            // Keep the job's precomputed rows where the bundle is the one it
            // read and the vectors are the job's.
            for p in &done.pre {
                let kept = embeddings.iter().any(|e| {
                    e.key == p.key
                        && done
                            .meta
                            .embeddings
                            .iter()
                            .any(|j| j.file.name == e.file.name)
                });
                if let Some(TxBundle {
                    file,
                    pre: Some((dtype, have)),
                    ..
                }) = self.bundles.get_mut(&p.key)
                {
                    if kept && file.name == p.bundle && *dtype == p.dtype {
                        have.insert(seg_id, p.file.clone());
                    }
                }
            }
            meta.embeddings = embeddings;
        }
        for &p in remove.iter().rev() {
            self.segments.remove(p);
        }
        let at = first
            .unwrap_or(self.segments.len())
            .min(self.segments.len());
        self.segments.insert(
            at,
            SegState {
                meta,
                view: View::Base(usize::MAX),
            },
        );
        self.next_segment_id = self.next_segment_id.max(seg_id + 1);
        self.reopen(at)?;
        Ok(true)
    }

    pub(super) fn write_compacted(&mut self) -> Result<()> {
        let n = self.segments.len();
        let live: Vec<Vec<usize>> = (0..n)
            .map(|i| {
                let seg = self.segment(i);
                (0..seg.rows()).filter(|&r| !seg.is_deleted(r)).collect()
            })
            .collect();
        let seg_id = self.next_segment_id;
        let mut sink = Sink {
            dir: &self.w.dir,
            fs: &*self.w.fs,
            number: self.number,
            written: &mut self.written,
        };
        let parts: Vec<Part<'_>> = live
            .iter()
            .enumerate()
            .map(|(i, rows)| Part {
                seg: Some(seg_at(&self.base, &self.segments, i)),
                rows,
            })
            .collect();
        let meta = write_merged(&mut sink, seg_id, &self.schema, &parts)?;
        self.next_segment_id += 1;
        self.compacted_away
            .extend(self.segments.iter().map(|s| s.meta.id));
        let total = meta.rows;
        self.segments = vec![SegState {
            meta,
            view: View::Base(usize::MAX),
        }];
        if total == 0 {
            self.segments.clear();
            return Ok(());
        }
        self.reopen(0)
    }
}
