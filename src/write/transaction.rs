//! A transaction: the snapshot under construction, the helpers its
//! operations share, its metadata setters, its commit, and what dropping it
//! uncommitted removes. The operations are further `impl Transaction`
//! blocks: `items.rs` (items, statistics, deletes), `embeddings.rs`
//! (embedding versions), `models.rs` (model bundles), `rebase.rs`
//! (compaction).

use super::publish::publish;
use super::writer::now_ms;
use super::writer::{writer_open_options, Writer};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::format::container::Kind;
use crate::format::meta::{BundleRef, FileRef, KeyValue, ManifestMeta, SegmentMeta};
use crate::format::names;
use crate::model::Model;
use crate::read::segment::Segment;
use crate::read::snapshot::Snapshot;
use crate::read::store::Store;
use crate::schema::Schema;
use crate::write::compaction::Sink;

/// Where a segment of a transaction is read from: segment `.0` of the base
/// snapshot, or a segment the transaction opened from its manifest entry.
#[derive(Debug)]
pub(super) enum View {
    Base(usize),
    Own(Box<Segment>),
}

/// A segment of the snapshot under construction: its manifest entry and
/// where it is read from.
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

/// An item-tower-only bundle of a snapshot under construction.
#[derive(Debug)]
pub(super) struct TxTower {
    pub(super) file: FileRef,
    pub(super) tower: Arc<crate::model::ItemTowerBundle>,
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
    /// Item-tower-only bundles by `space@version`.
    pub(super) towers: BTreeMap<String, TxTower>,
    /// Embedding versions whose computed rows must be computed again at
    /// commit (the version's item tower changed, or rows were added
    /// without a vector before the tower arrived).
    pub(super) stale: BTreeSet<String>,
    /// Of `stale`, the versions with rows that have no vector yet (added by
    /// `add_embedding` without one), with the first such item's id: the
    /// commit fails if such a version has no item tower by then.
    pub(super) unfilled: BTreeMap<String, u64>,
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

    /// Segment `i` of the snapshot under construction.
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

    /// The segment (by position) and row that hold `id` live, if any.
    pub(super) fn lookup(&self, id: u64) -> Option<(usize, usize)> {
        crate::read::segment::find_live(self.segments.len(), |i| self.segment(i), id)
    }

    /// A fresh file name for `group` of `segment`, recorded as written.
    pub(super) fn fresh_name(&mut self, segment: u64, group: &str, ext: &str) -> String {
        self.sink().name(segment, group, ext)
    }

    /// `name` in the store's directory.
    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.w.dir.join(name)
    }

    /// Opens segment `i` anew from its manifest entry (after its files
    /// changed) and reads it from there on.
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

    /// Refuses ids given twice in one input ([`Error::DuplicateId`] naming
    /// both rows).
    pub(super) fn check_ids_unique(&self, ids: &[u64]) -> Result<()> {
        ids_unique(ids)
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

    /// Sets a user metadata entry published with the snapshot. Keys
    /// starting `vstore.` are the library's (a build job's id, a restore's
    /// source, the record of dropped versions): refused.
    pub fn set_metadata(&mut self, key: &str, value: &str) -> Result<()> {
        check_metadata_key(key)?;
        self.user_meta.insert(key.to_string(), value.to_string());
        Ok(())
    }

    /// Removes a user metadata entry (a key starting `vstore.` is the
    /// library's: refused).
    pub fn remove_metadata(&mut self, key: &str) -> Result<()> {
        check_metadata_key(key)?;
        self.user_meta.remove(key);
        Ok(())
    }

    /// Publishes the snapshot: syncs the directory (data files are already
    /// synced), writes the manifest to a temporary name, syncs it, renames it
    /// into place and syncs the directory. Returns the new snapshot, pinned.
    ///
    /// A transaction that changed nothing still publishes (a snapshot equal
    /// to its base, with a new number and time), and counts towards
    /// [`Retention::keep_last`](crate::Retention): a pipeline that may have
    /// nothing to write should not begin or commit a transaction then.
    pub fn commit(mut self) -> Result<Arc<Snapshot>> {
        self.w.check_poisoned()?;
        self.refuse_precomputed_without_items()?;
        self.refuse_unfilled()?;
        let plan = self.recompute_stale()?;
        let r = self.write_recomputed(plan);
        self.w.poison(r)?;
        match self.write_precomputed() {
            // A precomputed item part the column cannot hold: a refusal of
            // the bundle, found while writing; the writer is unharmed (the
            // transaction's files, the partial one too, go when it drops).
            Err(e @ Error::InvalidInput(_)) => return Err(e),
            r => self.w.poison(r)?,
        }
        let manifest = self.manifest();
        let number = self.number;
        let compacted_away = std::mem::take(&mut self.compacted_away);
        self.base = None;
        self.segments = Vec::new();
        // From here on the files belong to the snapshot being published:
        // dropping the transaction must not remove them once the manifest
        // may be durable (its rename happened).
        let written = std::mem::take(&mut self.written);
        let w = &mut *self.w;
        publish_or_remove(w, number, manifest, &written)?;
        pick_up_published(w, compacted_away)
    }

    /// Refuses to commit a snapshot with no segments that holds a bundle
    /// added precomputed in this transaction.
    fn refuse_precomputed_without_items(&self) -> Result<()> {
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
        Ok(())
    }

    /// The manifest of the snapshot as built: schema, segments, bundles
    /// (each with its precomputed files, one per segment, if it has them),
    /// user metadata, and the publish time (the clock's unless set).
    fn manifest(&self) -> ManifestMeta {
        ManifestMeta {
            snapshot: self.number,
            parent: self.base.as_ref().map(|b| b.number()),
            created_unix_ms: self.created_unix_ms.unwrap_or_else(now_ms),
            schema: self.schema.clone(),
            segments: self.segments.iter().map(|s| s.meta.clone()).collect(),
            bundles: self.bundle_refs(),
            user_meta: self
                .user_meta
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            next_segment_id: self.next_segment_id,
        }
    }
}

impl Transaction<'_> {
    /// The manifest's bundle list: every three-tower bundle (with its
    /// precomputed files, one per segment, if it has them) and every
    /// item-tower-only bundle, sorted by bundle id.
    fn bundle_refs(&self) -> Vec<BundleRef> {
        let mut refs: Vec<BundleRef> = (self.bundles.iter())
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
            .chain(self.towers.values().map(|t| BundleRef {
                key: t.tower.bundle_id(),
                files: vec![t.file.clone()],
            }))
            .collect();
        refs.sort_by(|a, b| a.key.cmp(&b.key));
        refs
    }
}

/// Refuses ids given twice in one input ([`Error::DuplicateId`] naming
/// both rows).
pub(super) fn ids_unique(ids: &[u64]) -> Result<()> {
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

/// Publishes `manifest` as snapshot `number` of `w`'s store. A publish that
/// fails before its rename removes the transaction's files `written`; any
/// failure poisons the writer.
pub(super) fn publish_or_remove(
    w: &mut Writer,
    number: u64,
    manifest: ManifestMeta,
    written: &HashSet<String>,
) -> Result<()> {
    if let Err((e, renamed)) = publish(&*w.fs, &w.dir, number, manifest) {
        if !renamed {
            // No manifest names the new files: remove them, so that a
            // failed publish (a full disk) leaves the directory as it
            // was. Best effort; what stays is garbage for `gc`.
            for name in written {
                let _ = w.fs.remove(&w.dir.join(name));
            }
        }
        return w.poison(Err(e));
    }
    Ok(())
}

/// After a publish: records the segments merged away (`compacted_away`) as
/// retired if a compaction job is live (and forgets every retired segment
/// if none is), refreshes the writer's store
/// (opening it after a first publish) and returns the new snapshot, pinned.
pub(super) fn pick_up_published(w: &mut Writer, compacted_away: Vec<u64>) -> Result<Arc<Snapshot>> {
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

/// Checks that `key` may be set or removed with
/// [`Transaction::set_metadata`]: keys starting `vstore.` are the
/// library's (it writes them, and reads some back to decide what to
/// refuse), refused with [`Error::InvalidInput`].
///
/// ```
/// assert!(vstore::check_metadata_key("model_run").is_ok());
/// assert!(vstore::check_metadata_key("vstore.dropped_versions").is_err());
/// ```
pub fn check_metadata_key(key: &str) -> Result<()> {
    if key.starts_with("vstore.") {
        return Err(Error::InvalidInput(format!(
            "user metadata key {key:?} is the library's (keys starting \"vstore.\" are kept by \
             vstore itself); pick another key"
        )));
    }
    Ok(())
}
