//! Restoring an old snapshot: its content published again as the newest
//! snapshot (a rollback that keeps history), sharing its files.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use super::gc::manifest_files;
use super::job::{JOBS_KEY, JOB_KEY};
use super::transaction::{pick_up_published, publish_or_remove};
use super::writer::{now_ms, writer_open_options, Writer};
use crate::error::{Error, Result};
use crate::format::dropped::{self, DROPPED_VERSIONS_KEY};
use crate::format::meta::KeyValue;
use crate::read::snapshot::Snapshot;
use crate::read::store::{list_manifests, read_manifest, Store};

/// The user metadata key a restored snapshot records its source in (the
/// number of the snapshot whose content it republished).
pub const RESTORED_FROM_KEY: &str = "vstore.restored_from";

/// Whether user metadata `key` describes only the snapshot that recorded
/// it (a build commit's job id, a restore's source), so the snapshots
/// built on it do not carry it over.
pub(crate) fn is_snapshot_only_key(key: &str) -> bool {
    key == JOB_KEY || key == RESTORED_FROM_KEY
}

impl Writer {
    /// Publishes snapshot `n`'s content (schema, items, embedding
    /// versions, bundles, user metadata) as a new newest snapshot, so
    /// readers see the store as it was at `n` while the snapshots after it
    /// stay in the history (until `gc`). Its files are shared, not copied.
    /// Refused, naming them, if `gc` collected any of `n`'s files; refused
    /// if `n` does not exist, is damaged, or is the newest already. The new
    /// snapshot records `vstore.restored_from = n` in its metadata, and its
    /// record of dropped versions ([`crate::DROPPED_VERSIONS_KEY`]) keeps
    /// the newest's: the versions dropped in either history and those the
    /// restore drops stay retired, less the ones `n` brings back.
    ///
    /// ```
    /// # fn main() -> vstore::Result<()> {
    /// use vstore::{Dtype, ItemBatch, Schema, Writer};
    /// let dir = tempfile::tempdir().unwrap();
    /// let schema = Schema::new().embedding("prerank", "v1", 2, Dtype::F32);
    /// let mut w = Writer::create(dir.path(), schema)?;
    /// let mut tx = w.begin();
    /// tx.add_items(ItemBatch::new(vec![1]).embedding("prerank@v1", vec![1.0, 0.0]))?;
    /// let good = tx.commit()?.number();
    /// let mut tx = w.begin();
    /// tx.delete_items(&[1])?;
    /// tx.commit()?;
    /// let back = w.restore(good)?;
    /// assert_eq!(back.len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn restore(&mut self, n: u64) -> Result<Arc<Snapshot>> {
        self.check_poisoned()?;
        let newest = self.snapshot().ok_or_else(|| {
            Error::InvalidInput(format!("{} has no snapshot to restore", self.dir.display()))
        })?;
        if n == newest.number() {
            return Err(Error::InvalidInput(format!(
                "snapshot {n} is the newest already; nothing to restore"
            )));
        }
        let (_, old) = read_manifest(&self.dir, n).map_err(|e| {
            if e.is_not_found() {
                let have = list_manifests(&self.dir).unwrap_or_default();
                Error::InvalidInput(format!(
                    "snapshot {n} does not exist in {} (it has {have:?})",
                    self.dir.display()
                ))
            } else {
                e
            }
        })?;
        let missing: BTreeSet<String> = manifest_files(&old)
            .into_iter()
            .filter(|f| std::fs::symlink_metadata(self.dir.join(f)).is_err())
            .collect();
        if !missing.is_empty() {
            let shown: Vec<&str> = missing.iter().take(10).map(String::as_str).collect();
            return Err(Error::InvalidInput(format!(
                "snapshot {n} cannot be restored: gc collected {} of its files ({}{})",
                missing.len(),
                shown.join(", "),
                if missing.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            )));
        }
        // Every file maps and matches its entry (a damaged one is an error
        // naming it) before anything is published.
        Store::open_at(&self.dir, n, writer_open_options())?;
        let number = self.next_snapshot;
        self.next_snapshot = number.saturating_add(1);
        let mut m = old;
        m.snapshot = number;
        m.parent = Some(newest.number());
        m.created_unix_ms = now_ms();
        // Segment ids stay unique over the store's life.
        m.next_segment_id = m
            .next_segment_id
            .max(newest.manifest.next_segment_id)
            .max(self.segment_floor);
        m.user_meta.retain(|kv| !is_snapshot_only_key(&kv.key));
        // The versions dropped in the newest snapshot's history stay
        // retired (their names belong to the dropped models), and so do the
        // ones the newest holds that the restored snapshot does not (the
        // restore drops them); the versions the restored snapshot holds
        // come back with their own vectors.
        let live = |m: &crate::format::meta::ManifestMeta| -> Vec<String> {
            m.schema.embeddings.iter().map(|d| d.key()).collect()
        };
        let gone = merge_for_restore(
            (
                &dropped::of_manifest(&newest.manifest)?,
                &live(&newest.manifest),
            ),
            (&dropped::of_manifest(&m)?, &live(&m)),
            number,
        );
        m.user_meta.retain(|kv| kv.key != DROPPED_VERSIONS_KEY);
        if let Some(value) = dropped::encode(&gone) {
            m.user_meta.push(KeyValue {
                key: DROPPED_VERSIONS_KEY.into(),
                value,
            });
        }
        // The jobs published in either history stay published (a re-run
        // of one must not publish its parts again).
        let mut jobs = dropped::record_of(&newest.manifest, JOBS_KEY)?;
        for (job, at) in dropped::record_of(&m, JOBS_KEY)? {
            let e = jobs.entry(job).or_insert(at);
            *e = (*e).max(at);
        }
        m.user_meta.retain(|kv| kv.key != JOBS_KEY);
        if let Some(value) = dropped::encode(&jobs) {
            m.user_meta.push(KeyValue {
                key: JOBS_KEY.into(),
                value,
            });
        }
        m.user_meta.push(KeyValue {
            key: RESTORED_FROM_KEY.into(),
            value: n.to_string(),
        });
        m.user_meta.sort_by(|a, b| a.key.cmp(&b.key));
        publish_or_remove(self, number, m, &HashSet::new())?;
        pick_up_published(self, Vec::new())
    }
}

/// The record of dropped versions after restoring, as snapshot `number`,
/// a snapshot whose record and versions are `restored` over the newest
/// (`newest`): every version dropped in either history (its latest drop),
/// and every version the newest holds that the restored one does not
/// (dropped by this restore), less the versions the restored snapshot
/// holds (they come back with their own vectors).
fn merge_for_restore(
    (newest, newest_live): (&BTreeMap<String, u64>, &[String]),
    (restored, restored_live): (&BTreeMap<String, u64>, &[String]),
    number: u64,
) -> BTreeMap<String, u64> {
    let mut out = restored.clone();
    for (k, &n) in newest {
        let e = out.entry(k.clone()).or_insert(n);
        *e = (*e).max(n);
    }
    for k in newest_live {
        out.insert(k.clone(), number);
    }
    out.retain(|k, _| !restored_live.contains(k));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_keeps_both_histories_and_records_what_it_drops() {
        let newest = BTreeMap::from([("a@1".to_string(), 9), ("b@1".to_string(), 4)]);
        let restored = BTreeMap::from([("b@1".to_string(), 2), ("c@1".to_string(), 1)]);
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let m = merge_for_restore(
            (&newest, &s(&["d@1", "e@1"])),
            (&restored, &s(&["a@1", "e@1"])),
            12,
        );
        assert_eq!(
            m,
            BTreeMap::from([
                ("b@1".to_string(), 4),
                ("c@1".to_string(), 1),
                ("d@1".to_string(), 12)
            ])
        );
    }
}
