//! A transaction: the snapshot under construction, its operations (items,
//! statistics, versions, bundles, deletes, metadata) and its commit.

use super::publish::publish;
use super::writer::now_ms;
use super::writer::{writer_open_options, Writer};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::format::container::Kind;
use crate::format::encode::{self, ScalarColumn};
use crate::format::meta::{
    self, BundleRef, EmbeddingRef, FileRef, KeyValue, ManifestMeta, SegmentMeta,
};
use crate::format::names;
use crate::model::Model;
use crate::read::segment::Segment;
use crate::read::snapshot::Snapshot;
use crate::read::store::Store;
use crate::schema::{EmbeddingDef, Schema};
use crate::write::batch::{self, ItemBatch};
use crate::write::compaction::Sink;

#[derive(Debug)]
pub(super) enum View {
    Base(usize),
    Own(Box<Segment>),
}

#[derive(Debug)]
pub(super) struct SegState {
    pub(super) meta: SegmentMeta,
    pub(super) view: View,
}

/// A model bundle of a snapshot under construction.
#[derive(Debug)]
pub(super) struct TxBundle {
    pub(super) file: FileRef,
    pub(super) model: Arc<Model>,
    /// Precomputed first-layer item part: its dtype and a file per segment id.
    pub(super) pre: Option<(crate::schema::Dtype, BTreeMap<u64, FileRef>)>,
}

/// A snapshot under construction. Data files are written as operations are
/// applied; nothing is visible to readers until [`Transaction::commit`]
/// publishes the manifest. Dropping a transaction abandons it and removes
/// the files it wrote (files left by a process that died mid-transaction
/// are collected by the next [`Writer::gc`]).
#[derive(Debug)]
pub struct Transaction<'w> {
    pub(super) w: &'w mut Writer,
    pub(super) number: u64,
    pub(super) schema: Schema,
    pub(super) base: Option<Arc<Snapshot>>,
    pub(super) segments: Vec<SegState>,
    pub(super) user_meta: BTreeMap<String, String>,
    pub(super) bundles: BTreeMap<String, TxBundle>,
    pub(super) next_segment_id: u64,
    pub(super) written: HashSet<String>,
    /// Segments this transaction merged away.
    pub(super) compacted_away: Vec<u64>,
    pub(super) created_unix_ms: Option<u64>,
}

impl<'w> Transaction<'w> {
    /// Number the snapshot will have when committed.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The schema the snapshot will have.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub(super) fn segment(&self, i: usize) -> &Segment {
        seg_at(&self.base, &self.segments, i)
    }

    /// Where new files of this transaction go.
    pub(super) fn sink(&mut self) -> Sink<'_> {
        Sink {
            dir: &self.w.dir,
            fs: &*self.w.fs,
            number: self.number,
            written: &mut self.written,
        }
    }

    pub(super) fn lookup(&self, id: u64) -> Option<(usize, usize)> {
        crate::read::segment::find_live(self.segments.len(), |i| self.segment(i), id)
    }

    pub(super) fn fresh_name(&mut self, segment: u64, group: &str, ext: &str) -> String {
        self.sink().name(segment, group, ext)
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.w.dir.join(name)
    }

    pub(super) fn reopen(&mut self, i: usize) -> Result<()> {
        let dir = self.w.dir.clone();
        let mut opener = |r: &FileRef, kind: Kind| {
            crate::format::container::Container::open(&dir.join(&r.name), kind, false).map(Arc::new)
        };
        let manifest = self.w.dir.join(names::manifest(self.number));
        let seg = Segment::open(&self.segments[i].meta, &self.schema, &manifest, &mut opener)?;
        self.segments[i].view = View::Own(Box::new(seg));
        Ok(())
    }

    /// Checksums every segment's id index (once per process per file)
    /// before the writer relies on "absent" or on a row it finds.
    pub(super) fn check_indexes(&self) -> Result<()> {
        (0..self.segments.len()).try_for_each(|i| self.segment(i).ensure_index_verified())
    }

    pub(super) fn check_ids_unique(&self, ids: &[u64]) -> Result<()> {
        let mut seen: HashMap<u64, usize> = HashMap::with_capacity(ids.len());
        for (i, &id) in ids.iter().enumerate() {
            if let Some(j) = seen.insert(id, i) {
                return Err(Error::DuplicateId {
                    id,
                    context: format!("input rows {j} and {i}"),
                });
            }
        }
        Ok(())
    }

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

    pub(super) fn put_items(&mut self, batch: ItemBatch, replace: bool) -> Result<()> {
        self.w.check_poisoned()?;
        if batch.is_empty() {
            return Ok(());
        }
        batch.check_columns(&self.schema, &[batch::Group::Profile, batch::Group::Stats])?;
        for (key, _) in &batch.embeddings {
            if self.schema.embedding_def(key).is_none() {
                return Err(Error::InvalidInput(format!(
                    "embedding {key} is not in the schema (it has [{}]); add a version with Transaction::add_embedding",
                    self.schema.embedding_keys().join(", ")
                )));
            }
        }
        let mut vectors = Vec::new();
        for def in &self.schema.embeddings {
            let key = def.key();
            let given: Vec<_> = batch.embeddings.iter().filter(|(k, _)| *k == key).collect();
            match given.as_slice() {
                [(_, v)] => {
                    encode::check_vectors(def, &batch.ids, v)?;
                    vectors.push((def.clone(), v));
                }
                [] => {
                    return Err(Error::InvalidInput(format!(
                        "batch gives no vectors for embedding {key}; every item needs one for each version in the schema"
                    )))
                }
                _ => return Err(Error::InvalidInput(format!("embedding {key} is given twice"))),
            }
        }
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
            .and_then(|()| self.write_segment(&batch, &vectors));
        self.w.poison(r)
    }

    /// Writes a new segment's id index, profile and statistics files.
    pub(super) fn write_row_files(
        &mut self,
        seg: u64,
        ids: &[u64],
        profile_cols: &[ScalarColumn],
        stats_cols: &[ScalarColumn],
    ) -> Result<(FileRef, FileRef, FileRef)> {
        self.sink().row_files(seg, ids, profile_cols, stats_cols)
    }

    pub(super) fn write_segment(
        &mut self,
        batch: &ItemBatch,
        vectors: &[(EmbeddingDef, &Vec<f32>)],
    ) -> Result<()> {
        let seg = self.next_segment_id;
        let rows = batch.len() as u64;
        let profile_cols = batch.scalar_columns(&self.schema, batch::Group::Profile);
        let stats_cols = batch.scalar_columns(&self.schema, batch::Group::Stats);
        let (id_index, profile, stats) =
            self.write_row_files(seg, &batch.ids, &profile_cols, &stats_cols)?;
        let mut embeddings = Vec::new();
        for (def, v) in vectors {
            let key = def.key();
            let name = self.fresh_name(seg, &format!("emb-{key}"), "vcol");
            let d = def.dim as usize;
            let file = encode::write_embedding_group(
                &*self.w.fs,
                &self.path(&name),
                seg,
                rows,
                def,
                v.chunks_exact(d),
            )?;
            embeddings.push(EmbeddingRef { key, file });
        }
        self.next_segment_id += 1;
        self.segments.push(SegState {
            meta: SegmentMeta {
                id: seg,
                rows,
                id_index,
                profile,
                stats,
                embeddings,
                deletes: None,
            },
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

    /// Adds embedding version `def` with a vector for every live item
    /// (`ids` and row-major f32 `vectors`, `ids.len() * dim` values). The
    /// snapshot then holds it beside the versions it already has.
    pub fn add_embedding(&mut self, def: EmbeddingDef, ids: &[u64], vectors: &[f32]) -> Result<()> {
        self.w.check_poisoned()?;
        let key = def.key();
        if self.schema.embedding_def(&key).is_some() {
            return Err(Error::InvalidInput(format!(
                "the snapshot already holds embedding {key}"
            )));
        }
        let mut schema = self.schema.clone();
        schema.embeddings.push(def.clone());
        // The columns are the stored schema's (see `validate_stored`).
        schema.validate_stored()?;
        encode::check_vectors(&def, ids, vectors)?;
        self.check_ids_unique(ids)?;
        self.check_indexes()?;
        let mut rows_of: Vec<Vec<Option<usize>>> = (0..self.segments.len())
            .map(|s| vec![None; self.segment(s).rows()])
            .collect();
        for (i, &id) in ids.iter().enumerate() {
            let (s, row) = self.lookup(id).ok_or_else(|| Error::UnknownId {
                id,
                snapshot: self.number,
                context: format!("embedding {key}, input row {i}"),
            })?;
            rows_of[s][row] = Some(i);
        }
        for (s, rows) in rows_of.iter().enumerate() {
            let seg = self.segment(s);
            if let Some(r) = rows
                .iter()
                .enumerate()
                .position(|(r, x)| x.is_none() && !seg.is_deleted(r))
            {
                return Err(Error::InvalidInput(format!(
                    "embedding {key} has no vector for item id {}; every live item needs one",
                    seg.ids()[r]
                )));
            }
        }
        let r = self.write_embedding(def, vectors, rows_of, schema);
        self.w.poison(r)
    }

    pub(super) fn write_embedding(
        &mut self,
        def: EmbeddingDef,
        vectors: &[f32],
        rows_of: Vec<Vec<Option<usize>>>,
        schema: Schema,
    ) -> Result<()> {
        let key = def.key();
        let d = def.dim as usize;
        let zeros = vec![0f32; d];
        for (s, rows) in rows_of.iter().enumerate() {
            let seg_id = self.segments[s].meta.id;
            let name = self.fresh_name(seg_id, &format!("emb-{key}"), "vcol");
            let it = rows.iter().map(|x| match x {
                Some(i) => &vectors[i * d..(i + 1) * d],
                None => &zeros[..],
            });
            let file = encode::write_embedding_group(
                &*self.w.fs,
                &self.path(&name),
                seg_id,
                rows.len() as u64,
                &def,
                it,
            )?;
            self.segments[s].meta.embeddings.push(EmbeddingRef {
                key: key.clone(),
                file,
            });
        }
        self.schema = schema;
        for s in 0..self.segments.len() {
            self.reopen(s)?;
        }
        Ok(())
    }

    /// Removes embedding version `key` from the snapshot (its files stay
    /// with older snapshots until collected).
    pub fn drop_embedding(&mut self, key: &str) -> Result<()> {
        self.w.check_poisoned()?;
        if self.schema.embedding_def(key).is_none() {
            return Err(Error::VersionSkew {
                snapshot: self.number,
                requested: key.to_string(),
                available: self.schema.embedding_keys(),
            });
        }
        self.schema.embeddings.retain(|d| d.key() != key);
        // A bundle belongs to its embedding version and retires with it.
        self.bundles.remove(key);
        for s in &mut self.segments {
            s.meta.embeddings.retain(|e| e.key != key);
        }
        for s in 0..self.segments.len() {
            let r = self.reopen(s);
            self.w.poison(r)?;
        }
        Ok(())
    }

    /// Adds a three-tower model bundle (`model.json` and
    /// `weights.safetensors` bytes), replacing any bundle of the same
    /// `space@version`. The bundle is validated completely against the
    /// snapshot being built (see [`Model::load`]), so an embedding version
    /// added earlier in this transaction may carry its bundle in the same
    /// publish. Returns the bundle's `space@version`.
    pub fn add_model(&mut self, json: &[u8], weights: &[u8]) -> Result<String> {
        self.add_model_with(json, weights, None)
    }

    /// [`Transaction::add_model`], and precompute the item part of the
    /// model's first upper layer (`W0[:, item columns] @ item_vec`, which
    /// does not change within an embedding version) for every item, stored
    /// as `dtype` (one row of the layer's width per item, kept up to date by
    /// every later publish). Queries then skip that part of the product
    /// and gather the stored row instead: fewer FLOPs, more bytes (with
    /// `F16`, rounding the precomputed part to about 3 significant digits).
    ///
    /// The store keeps the precomputed part per segment of items, so the
    /// snapshot must hold items when this transaction commits
    /// ([`Transaction::commit`] refuses it otherwise), and a later publish
    /// that leaves the snapshot with no items at all drops it (the bundle
    /// stays; add it precomputed again once there are items).
    pub fn add_model_precomputed(
        &mut self,
        json: &[u8],
        weights: &[u8],
        dtype: crate::schema::Dtype,
    ) -> Result<String> {
        self.add_model_with(json, weights, Some(dtype))
    }

    pub(super) fn add_model_with(
        &mut self,
        json: &[u8],
        weights: &[u8],
        pre: Option<crate::schema::Dtype>,
    ) -> Result<String> {
        self.w.check_poisoned()?;
        let model = Model::load(json, weights, &self.schema)?;
        let key = model.key().to_string();
        let name = self.fresh_name(0, &format!("model-{key}"), "vbnd");
        let r = encode::write_bundle(&*self.w.fs, &self.path(&name), &key, json, weights);
        let file = self.w.poison(r)?;
        self.bundles.insert(
            key.clone(),
            TxBundle {
                file,
                model: Arc::new(model),
                pre: pre.map(|d| (d, BTreeMap::new())),
            },
        );
        Ok(key)
    }

    /// Writes the precomputed first-layer files that segments lack.
    pub(super) fn write_precomputed(&mut self) -> Result<()> {
        let keys: Vec<String> = self.bundles.keys().cloned().collect();
        for key in keys {
            let b = &self.bundles[&key];
            let Some((dtype, have)) = &b.pre else {
                continue;
            };
            let (dtype, model) = (*dtype, b.model.clone());
            let def = model.precompute_def(dtype);
            let missing: Vec<usize> = (0..self.segments.len())
                .filter(|&s| !have.contains_key(&self.segments[s].meta.id))
                .collect();
            for s in missing {
                let seg_id = self.segments[s].meta.id;
                let name = self.fresh_name(seg_id, &format!("pre-{key}"), "vcol");
                let path = self.path(&name);
                let seg = self.segment(s);
                let emb = seg
                    .embedding_opt(&key)
                    .ok_or_else(|| self.skew_error(&key))?;
                let file = encode::write_embedding_computed(
                    &*self.w.fs,
                    &path,
                    seg_id,
                    seg.rows() as u64,
                    &def,
                    256,
                    |first, out| model.precompute_rows(&emb, first, out),
                )?;
                if let Some((_, have)) = &mut self.bundles.get_mut(&key).expect("key listed").pre {
                    have.insert(seg_id, file);
                }
            }
        }
        Ok(())
    }

    pub(super) fn skew_error(&self, key: &str) -> Error {
        Error::VersionSkew {
            snapshot: self.number,
            requested: key.to_string(),
            available: self.schema.embedding_keys(),
        }
    }

    /// [`Transaction::add_model`] from a bundle directory holding
    /// `model.json` and `weights.safetensors`.
    pub fn add_model_dir(&mut self, dir: impl AsRef<Path>) -> Result<String> {
        let dir = dir.as_ref();
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read(&p).map_err(|e| Error::io("read", p, e))
        };
        let json = read("model.json")?;
        let weights = read("weights.safetensors")?;
        self.add_model(&json, &weights)
    }

    /// Removes the model bundle for `key` (`space@version`).
    pub fn drop_model(&mut self, key: &str) -> Result<()> {
        self.w.check_poisoned()?;
        if self.bundles.remove(key).is_none() {
            return Err(Error::NoModel {
                snapshot: self.number,
                requested: key.to_string(),
                available: self.bundles.keys().cloned().collect(),
            });
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

    /// Records `t` as the snapshot's publish time instead of the clock, for
    /// reproducible builds (the same inputs then give byte-identical files).
    /// Retention's grace period is measured from this time.
    pub fn set_created_time(&mut self, t: SystemTime) {
        self.created_unix_ms = Some(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        );
    }

    /// Sets a user metadata entry published with the snapshot.
    pub fn set_metadata(&mut self, key: &str, value: &str) {
        self.user_meta.insert(key.to_string(), value.to_string());
    }

    /// Removes a user metadata entry.
    pub fn remove_metadata(&mut self, key: &str) {
        self.user_meta.remove(key);
    }

    /// Publishes the snapshot: syncs the directory (data files are already
    /// synced), writes the manifest to a temporary name, syncs it, renames it
    /// into place and syncs the directory. Returns the new snapshot, pinned.
    pub fn commit(mut self) -> Result<Arc<Snapshot>> {
        self.w.check_poisoned()?;
        if self.segments.is_empty() {
            // The manifest records a precomputed item part as a file per
            // segment: without segments, one added now would be lost. (One
            // carried from the base has a file for each of its segments.)
            let added = self
                .bundles
                .iter()
                .find(|(_, b)| b.pre.as_ref().is_some_and(|(_, files)| files.is_empty()));
            if let Some((key, _)) = added {
                return Err(Error::InvalidInput(format!(
                    "bundle {key} was added precomputed, but the snapshot would hold no \
                     items: the store keeps a precomputed item part per segment of items; \
                     add items in the same transaction, or add the bundle precomputed once \
                     the snapshot holds items"
                )));
            }
        }
        let r = self.write_precomputed();
        self.w.poison(r)?;
        let manifest = ManifestMeta {
            snapshot: self.number,
            parent: self.base.as_ref().map(|b| b.number()),
            created_unix_ms: self.created_unix_ms.unwrap_or_else(now_ms),
            schema: self.schema.clone(),
            segments: self.segments.iter().map(|s| s.meta.clone()).collect(),
            bundles: self
                .bundles
                .iter()
                .map(|(k, b)| {
                    let mut files = vec![b.file.clone()];
                    if let Some((_, pre)) = &b.pre {
                        files.extend(self.segments.iter().map(|s| pre[&s.meta.id].clone()));
                    }
                    BundleRef {
                        key: k.clone(),
                        files,
                    }
                })
                .collect(),
            user_meta: self
                .user_meta
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            next_segment_id: self.next_segment_id,
        };
        let number = self.number;
        let compacted_away = std::mem::take(&mut self.compacted_away);
        self.base = None;
        self.segments = Vec::new();
        // From here on the files belong to the snapshot being published:
        // dropping the transaction must not remove them once the manifest
        // may be durable (its rename happened).
        let written = std::mem::take(&mut self.written);
        let w = &mut *self.w;
        if let Err((e, renamed)) = publish(&*w.fs, &w.dir, number, manifest) {
            if !renamed {
                // No manifest names the new files: remove them, so that a
                // failed publish (a full disk) leaves the directory as it
                // was. Best effort; what stays is garbage for `gc`.
                for name in &written {
                    let _ = w.fs.remove(&w.dir.join(name));
                }
            }
            return w.poison(Err(e));
        }
        // Only a live job can name a retired segment (jobs started later
        // read snapshots without them).
        if w.inflight.lock().is_empty() {
            w.retired.clear();
        } else {
            w.retired.extend(compacted_away);
        }
        let r = match &w.store {
            Some(s) => s.refresh().map(|_| ()),
            None => Store::open_with(&w.dir, writer_open_options()).map(|s| w.store = Some(s)),
        };
        w.poison(r)?;
        let snap = w.snapshot().expect("store opened");
        w.schema = snap.schema().clone();
        Ok(snap)
    }
}

/// Segment `i` of a transaction's list.
pub(super) fn seg_at<'a>(
    base: &'a Option<Arc<Snapshot>>,
    segments: &'a [SegState],
    i: usize,
) -> &'a Segment {
    match &segments[i].view {
        View::Base(b) => &base.as_ref().expect("base snapshot").segments()[*b],
        View::Own(s) => s,
    }
}

impl Drop for Transaction<'_> {
    /// Removes the data files of an abandoned (uncommitted) transaction, so
    /// that a refused operation leaves the directory as it was. Best effort:
    /// a file that cannot be removed is an orphan for [`Writer::gc`].
    fn drop(&mut self) {
        if self.written.is_empty() {
            return;
        }
        // Unmap this transaction's own segments before removing their files.
        self.segments.clear();
        for name in self.written.drain() {
            let _ = self.w.fs.remove(&self.w.dir.join(&name));
        }
        // The removals need not be durable: a file that reappears after a
        // crash is referenced by no manifest and gc collects it.
    }
}
