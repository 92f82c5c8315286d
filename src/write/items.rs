//! Item operations of a transaction: adding and upserting items (a new
//! segment per batch), updating statistics (rewriting the statistics files
//! of the segments touched) and deleting items (new deletion bitmaps).

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::transaction::{SegState, Transaction, View};
use crate::error::{Error, Result};
use crate::format::encode::{self, ScalarColumn};
use crate::format::meta;
use crate::model::ItemTower;
use crate::schema::{EmbeddingDef, Schema};
use crate::write::batch::{self, ItemBatch};
use crate::write::towers::{check_computed, compute_for_batch};
use std::sync::Arc;

impl Transaction<'_> {
    /// Adds `batch` as a new segment. Ids must be new to the snapshot and
    /// unique in the batch; every embedding version of the schema must be
    /// given (f32, converted to each column's dtype); profile and statistics
    /// columns not given are missing.
    pub fn add_items(&mut self, batch: ItemBatch) -> Result<()> {
        self.put_items(batch, false)
    }

    /// Adds or replaces items: ids the snapshot already holds are deleted
    /// (tombstoned) and the whole batch is added as a new segment, so queries
    /// on the new snapshot see only the new rows. Same rules as
    /// [`Transaction::add_items`] otherwise.
    pub fn upsert_items(&mut self, batch: ItemBatch) -> Result<()> {
        self.put_items(batch, true)
    }

    /// [`Transaction::add_items`] (`replace` false) or
    /// [`Transaction::upsert_items`] (`replace` true): checks the batch,
    /// tombstones the rows it replaces and writes it as a new segment.
    pub(super) fn put_items(&mut self, batch: ItemBatch, replace: bool) -> Result<()> {
        self.w.check_poisoned()?;
        if batch.is_empty() {
            return Ok(());
        }
        batch.check_columns(&self.schema, &[batch::Group::Profile, batch::Group::Stats])?;
        // The profile as stored; the item tower reads it too.
        let profile = batch.scalar_columns(&self.schema, batch::Group::Profile);
        let vectors = batch_vectors(&self.schema, &batch, &profile, |k| self.tower_of(k))?;
        self.check_ids_unique(&batch.ids)?;
        self.check_indexes()?;
        if self.next_segment_id == u64::MAX {
            return Err(Error::InvalidInput("segment ids are exhausted".into()));
        }
        let mut replaced: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, &id) in batch.ids.iter().enumerate() {
            if let Some((s, row)) = self.lookup(id) {
                if !replace {
                    return Err(Error::DuplicateId {
                        id,
                        context: format!(
                            "input row {i} and segment {} row {row} of the snapshot being built (use upsert_items to replace)",
                            self.segments[s].meta.id
                        ),
                    });
                }
                replaced.entry(s).or_default().push(row);
            }
        }
        for &s in replaced.keys() {
            self.segment(s).ensure_mutable_verified()?;
        }
        let r = self
            .write_deletes(replaced)
            .and_then(|()| self.write_segment(&batch, &profile, &vectors));
        self.w.poison(r)
    }

    /// Writes `batch` (its `profile` columns as stored, and its checked
    /// `vectors`, one per schema version, each marked whether the
    /// version's item tower computed it) as a new segment and opens it.
    pub(super) fn write_segment(
        &mut self,
        batch: &ItemBatch,
        profile_cols: &[ScalarColumn],
        vectors: &BatchVectors<'_>,
    ) -> Result<()> {
        let seg = self.next_segment_id;
        // The sink's fields borrowed one by one, so the schema need not be
        // cloned to be read beside it.
        let mut sink = crate::write::compaction::Sink {
            dir: &self.w.dir,
            fs: &*self.w.fs,
            number: self.number,
            written: &mut self.written,
        };
        let meta = sink.segment(seg, &self.schema, batch, profile_cols, vectors)?;
        self.next_segment_id += 1;
        self.segments.push(SegState {
            meta,
            view: View::Base(usize::MAX),
        });
        let i = self.segments.len() - 1;
        self.reopen(i)
    }

    /// Overwrites statistics of existing items: `batch` holds ids and
    /// statistics columns only. Columns not given keep their values; a
    /// `None` value makes the item's statistic missing. Only the statistics
    /// files of the segments touched are rewritten: profile and embedding
    /// files stay shared with the previous snapshot.
    pub fn update_stats(&mut self, batch: ItemBatch) -> Result<()> {
        self.w.check_poisoned()?;
        batch.check_columns(&self.schema, &[batch::Group::Stats])?;
        if !batch.embeddings.is_empty() {
            return Err(Error::InvalidInput(
                "update_stats takes statistics columns only; embeddings change through add_embedding".into(),
            ));
        }
        self.check_ids_unique(&batch.ids)?;
        self.check_indexes()?;
        let mut by_seg: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
        for (i, &id) in batch.ids.iter().enumerate() {
            let (s, row) = self.lookup(id).ok_or_else(|| Error::UnknownId {
                id,
                snapshot: self.number,
                context: format!("statistics update, input row {i}"),
            })?;
            by_seg.entry(s).or_default().push((i, row));
        }
        for &s in by_seg.keys() {
            self.segment(s).ensure_mutable_verified()?;
        }
        let r = self.rewrite_stats(&batch, by_seg);
        self.w.poison(r)
    }

    /// Rewrites the statistics file of each segment in `by_seg` with the
    /// batch's values at the rows listed (pairs of input row and segment
    /// row); other rows and columns keep theirs.
    pub(super) fn rewrite_stats(
        &mut self,
        batch: &ItemBatch,
        by_seg: BTreeMap<usize, Vec<(usize, usize)>>,
    ) -> Result<()> {
        for (s, rows) in by_seg {
            let seg = self.segment(s);
            let n = seg.rows();
            let mut cols = Vec::new();
            for d in &self.schema.stats {
                let c = seg.stat(&d.name)?;
                let mut col = ScalarColumn {
                    name: d.name.clone(),
                    values: c.values().iter().map(|x| x.to_bits()).collect(),
                    missing: None,
                    default: batch::default_bits(d),
                };
                if c.missing_count() > 0 {
                    let mut m = vec![0u64; n.div_ceil(64)];
                    for r in 0..n {
                        if c.is_missing(r) {
                            m[r / 64] |= 1 << (r % 64);
                        }
                    }
                    col.missing = Some(m);
                }
                if let Some(v) = batch.column(batch::Group::Stats, &d.name) {
                    for &(i, row) in &rows {
                        col.set(row, v.get_bits(i));
                    }
                }
                col.normalize();
                cols.push(col);
            }
            let seg_id = self.segments[s].meta.id;
            let name = self.fresh_name(seg_id, "stats", "vcol");
            let rows_n = n as u64;
            let f = encode::write_scalar_group(
                &*self.w.fs,
                &self.path(&name),
                seg_id,
                rows_n,
                meta::Group::Stats,
                &cols,
            )?;
            self.segments[s].meta.stats = f;
            self.reopen(s)?;
        }
        Ok(())
    }

    /// Deletes live items (tombstones; a segment whose every row is deleted
    /// leaves the snapshot).
    pub fn delete_items(&mut self, ids: &[u64]) -> Result<()> {
        self.w.check_poisoned()?;
        self.check_ids_unique(ids)?;
        self.check_indexes()?;
        let mut by_seg: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, &id) in ids.iter().enumerate() {
            let (s, row) = self.lookup(id).ok_or_else(|| Error::UnknownId {
                id,
                snapshot: self.number,
                context: format!("delete, input row {i}"),
            })?;
            by_seg.entry(s).or_default().push(row);
        }
        for &s in by_seg.keys() {
            self.segment(s).ensure_mutable_verified()?;
        }
        let r = self.write_deletes(by_seg);
        self.w.poison(r)
    }

    /// Writes a new deletion bitmap for each segment in `by_seg`, adding the
    /// rows listed to those already deleted; a segment left with no live
    /// row leaves the snapshot instead.
    pub(super) fn write_deletes(&mut self, by_seg: BTreeMap<usize, Vec<usize>>) -> Result<()> {
        let mut emptied = Vec::new();
        for (s, rows) in by_seg {
            let seg = self.segment(s);
            let n = seg.rows();
            let mut bm = vec![0u64; n.div_ceil(64)];
            for r in 0..n {
                if seg.is_deleted(r) {
                    bm[r / 64] |= 1 << (r % 64);
                }
            }
            for r in rows {
                bm[r / 64] |= 1 << (r % 64);
            }
            let deleted: usize = bm.iter().map(|w| w.count_ones() as usize).sum();
            if deleted == n {
                emptied.push(s);
                continue;
            }
            let seg_id = self.segments[s].meta.id;
            let name = self.fresh_name(seg_id, "del", "vdel");
            let f = encode::write_deletes(&*self.w.fs, &self.path(&name), seg_id, n as u64, &bm)?;
            self.segments[s].meta.deletes = Some(f);
            self.reopen(s)?;
        }
        for s in emptied.into_iter().rev() {
            self.segments.remove(s);
        }
        Ok(())
    }
}

/// A new segment's vectors: per schema version, its definition, the
/// rows' values and whether its item tower computed them.
pub(crate) type BatchVectors<'b> = Vec<(EmbeddingDef, Cow<'b, [f32]>, bool)>;

/// The vectors of a new segment of `batch` (whose `profile` columns, as
/// stored, the item towers read): one per embedding version of `schema`, in
/// its order, each the batch's own (checked) or, where the batch gives none,
/// computed by the version's item tower (`tower_of`) and marked computed.
/// Everything is checked before anything is written.
pub(crate) fn batch_vectors<'b>(
    schema: &Schema,
    batch: &'b ItemBatch,
    profile: &[ScalarColumn],
    tower_of: impl Fn(&str) -> Option<Arc<ItemTower>>,
) -> Result<BatchVectors<'b>> {
    for (key, _) in &batch.embeddings {
        if schema.embedding_def(key).is_none() {
            return Err(Error::InvalidInput(format!(
                "embedding {key} is not in the schema (it has [{}]); add a version with Transaction::add_embedding",
                schema.embedding_keys().join(", ")
            )));
        }
    }
    let mut vectors = Vec::new();
    for def in &schema.embeddings {
        let key = def.key();
        let given: Vec<_> = batch.embeddings.iter().filter(|(k, _)| *k == key).collect();
        match (given.as_slice(), tower_of(&key)) {
            ([(_, v)], _) => {
                encode::check_vectors(def, &batch.ids, v)?;
                vectors.push((def.clone(), Cow::Borrowed(&v[..]), false));
            }
            ([], Some(tower)) => {
                // Computed (and checked) before anything is written, so
                // that a tower output the column cannot hold is a
                // refusal, not a failed write.
                let v = compute_for_batch(&tower, def, schema, profile, &batch.ids)?;
                check_computed(def, &batch.ids, &v)?;
                vectors.push((def.clone(), Cow::Owned(v), true));
            }
            ([], None) => {
                return Err(Error::InvalidInput(format!(
                    "batch gives no vectors for embedding {key}, which has no item tower to \
                     compute them; every item needs a vector for each version in the schema \
                     (or publish {key}'s item tower: a bundle with an item_tower part)"
                )))
            }
            _ => {
                return Err(Error::InvalidInput(format!(
                    "embedding {key} is given twice"
                )))
            }
        }
    }
    Ok(vectors)
}
