//! Compaction off the writer's path: a job merges one snapshot's segments on
//! another thread while the writer publishes and readers query, then the
//! final publish rebases it. Also: a stale job is refused without a trace,
//! dropped results leave no files, gc spares a live job's files, a version
//! replaced under the same key meanwhile is rewritten, no other writer
//! opens the store while a job lives, and a result cannot be applied
//! through another writer.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use vstore::{Dtype, Error, ItemBatch, Query, Retention, Store, Writer};

const DIM: u32 = 8;

fn ids(r: std::ops::Range<u64>) -> Vec<u64> {
    r.collect()
}

/// A store with `segments` segments of 100 items each (ids 0..100·segments).
fn store(dir: &std::path::Path, segments: u64) -> Writer {
    let mut w = Writer::create(dir, common::schema(DIM, Dtype::F16)).unwrap();
    for s in 0..segments {
        let mut tx = w.begin();
        tx.add_items(common::batch(&ids(s * 100..(s + 1) * 100), DIM, 0))
            .unwrap();
        tx.commit().unwrap();
    }
    w
}

/// Every live item's (ctr_1d, vector) by id.
fn contents(snap: &vstore::Snapshot) -> BTreeMap<u64, (Option<f32>, Vec<f32>)> {
    snap.ids()
        .map(|id| {
            (
                id,
                (
                    snap.get_stat(id, "ctr_1d").unwrap(),
                    snap.get_embedding(id, "prerank@v42").unwrap(),
                ),
            )
        })
        .collect()
}

#[test]
fn the_writer_publishes_and_readers_query_while_a_job_merges() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = store(dir.path(), 10);
    // Some dead rows for the job to drop.
    let mut tx = w.begin();
    tx.delete_items(&ids(0..50)).unwrap();
    tx.commit().unwrap();
    let reader = Store::open(dir.path()).unwrap();
    let job = w.start_compaction().unwrap().expect("ten segments");
    let base = job.base_snapshot();
    let user = vec![0.25f32; DIM as usize];
    let (done, published) = std::thread::scope(|s| {
        let merging = s.spawn(move || job.run());
        // Meanwhile: publishes touching the job's sources and adding new
        // segments, each visible to a reader at once.
        let mut published = Vec::new();
        for round in 0..5u64 {
            let mut tx = w.begin();
            tx.delete_items(&[100 + round, 200 + round]).unwrap();
            tx.upsert_items(common::batch(&[300 + round], DIM, 7))
                .unwrap();
            tx.add_items(common::batch(&[5000 + round], DIM, 0))
                .unwrap();
            tx.update_stats(ItemBatch::new(vec![400 + round]).stat("ctr_1d", vec![0.875]))
                .unwrap();
            published.push(tx.commit().unwrap().number());
            reader.refresh().unwrap();
            let snap = reader.snapshot();
            assert_eq!(snap.number(), *published.last().unwrap());
            let r = snap
                .query(&Query::ids(
                    "prerank@v42",
                    &user,
                    &[5000 + round, 100 + round],
                    10,
                ))
                .unwrap();
            assert_eq!(r.not_found, vec![100 + round]);
        }
        (merging.join().unwrap().unwrap(), published)
    });
    assert_eq!(done.base_snapshot(), base);
    assert_eq!(done.source_segments(), 10);
    assert_eq!(done.rows(), 950);
    let before = w.snapshot().unwrap();
    let want = contents(&before);
    let mut tx = w.begin();
    assert!(tx.apply_compaction(done).unwrap());
    let snap = tx.commit().unwrap();
    assert!(snap.number() > *published.last().unwrap());
    // The merged segment first, then the ten segments added meanwhile
    // (each round's upsert and add made one each).
    assert_eq!(snap.segments().len(), 1 + 10);
    assert_eq!(snap.segments()[0].rows(), 950);
    assert_eq!(contents(&snap), want);
    assert_eq!(snap.get_stat(402, "ctr_1d").unwrap(), Some(0.875));
    assert_eq!(
        snap.get_embedding(301, "prerank@v42").unwrap(),
        common::vector(301, DIM, 7)
    );
    snap.verify().unwrap();
    // A reader opening afresh sees the same, and gc then keeps only what
    // the newest snapshots reference.
    assert_eq!(contents(&Store::open(dir.path()).unwrap().snapshot()), want);
    w.set_retention(Retention {
        keep_last: 1,
        grace: Duration::ZERO,
    });
    drop(before);
    drop(reader);
    w.gc().unwrap();
    let snap = Store::open(dir.path()).unwrap().snapshot();
    assert_eq!(contents(&snap), want);
    snap.verify().unwrap();
}

#[test]
fn gc_spares_a_running_jobs_files_and_a_dropped_job_leaves_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = store(dir.path(), 3);
    w.set_retention(Retention {
        keep_last: 1,
        grace: Duration::ZERO,
    });
    w.gc().unwrap();
    let clean = common::files(dir.path());
    // A result dropped unapplied.
    let done = w.start_compaction().unwrap().unwrap().run().unwrap();
    let with_job = common::files(dir.path());
    assert!(with_job.len() > clean.len(), "the job wrote its segment");
    // gc while the result waits: its (unreferenced) files stay.
    let mut tx = w.begin();
    tx.delete_items(&[1]).unwrap();
    tx.commit().unwrap();
    w.gc().unwrap();
    for f in with_job.iter().filter(|f| !clean.contains(f)) {
        assert!(common::files(dir.path()).contains(f), "gc removed {f}");
    }
    drop(done);
    w.gc().unwrap();
    let after = common::files(dir.path());
    for f in with_job.iter().filter(|f| !clean.contains(f)) {
        assert!(!after.contains(f), "{f} outlived its dropped job");
    }
    // Applied and then abandoned with its transaction: removed as well.
    let done = w.start_compaction().unwrap().unwrap().run().unwrap();
    let mut tx = w.begin();
    tx.apply_compaction(done).unwrap();
    drop(tx);
    assert_eq!(common::files(dir.path()), after);
}

#[test]
fn a_job_made_stale_by_another_compaction_is_refused_without_a_trace() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = store(dir.path(), 4);
    let first = w.start_compaction().unwrap().unwrap();
    let second = w.start_compaction().unwrap().unwrap();
    let (first, second) = (first.run().unwrap(), second.run().unwrap());
    let mut tx = w.begin();
    assert!(tx.apply_compaction(first).unwrap());
    let merged = tx.commit().unwrap();
    assert_eq!(merged.segments().len(), 1);
    let files = common::files(dir.path());
    let want = contents(&merged);
    let mut tx = w.begin();
    tx.add_items(common::batch(&[9000], DIM, 0)).unwrap();
    match tx.apply_compaction(second) {
        Err(e @ Error::CompactionConflict { .. }) => {
            assert!(e.to_string().contains("start a new one"), "{e}");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // The transaction goes on; the stale job's files are gone.
    let snap = tx.commit().unwrap();
    assert_eq!(snap.ids().count(), want.len() + 1);
    let now = common::files(dir.path());
    assert!(
        now.iter().all(|f| files.contains(f)
            || f.contains(&format!("s{:010}", snap.number()))
            || f.starts_with("MANIFEST")),
        "{now:?} vs {files:?}"
    );
    // A compaction inside the transaction also makes a pending job stale.
    let job = w.start_compaction().unwrap().unwrap().run().unwrap();
    let mut tx = w.begin();
    assert!(tx.compact().unwrap());
    assert!(matches!(
        tx.apply_compaction(job),
        Err(Error::CompactionConflict { .. })
    ));
    tx.commit().unwrap();
}

#[test]
fn sources_emptied_by_deletes_and_versions_changed_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = store(dir.path(), 3);
    let done = w.start_compaction().unwrap().unwrap().run().unwrap();
    // Meanwhile: every row of segment 0 deleted (the segment leaves), a
    // new version added for every item, the old one dropped.
    let mut tx = w.begin();
    tx.delete_items(&ids(0..100)).unwrap();
    let live = ids(100..300);
    let v43: Vec<f32> = live
        .iter()
        .flat_map(|&i| common::vector(i, DIM, 43))
        .collect();
    tx.add_embedding(
        vstore::EmbeddingDef::new("prerank", "v43", DIM, Dtype::I8),
        &live,
        &v43,
    )
    .unwrap();
    tx.drop_embedding("prerank@v42").unwrap();
    let before = tx.commit().unwrap();
    assert_eq!(before.segments().len(), 2);
    let mut tx = w.begin();
    assert!(tx.apply_compaction(done).unwrap());
    let snap = tx.commit().unwrap();
    assert_eq!(snap.segments().len(), 1);
    assert_eq!(snap.embedding_keys(), vec!["prerank@v43".to_string()]);
    assert_eq!(snap.ids().collect::<Vec<_>>(), live);
    for &id in &live {
        assert_eq!(
            snap.get_embedding(id, "prerank@v43").unwrap(),
            before.get_embedding(id, "prerank@v43").unwrap()
        );
        assert_eq!(
            snap.get_stat(id, "ctr_1d").unwrap(),
            before.get_stat(id, "ctr_1d").unwrap()
        );
    }
    snap.verify().unwrap();
    // Everything the job merged deleted meanwhile: its segment is left out.
    let mut tx = w.begin();
    tx.delete_items(&[100]).unwrap();
    tx.commit().unwrap();
    let done = w.start_compaction().unwrap().expect("a dead row");
    let done = done.run().unwrap();
    assert_eq!(done.rows(), 199);
    let mut tx = w.begin();
    tx.delete_items(&ids(101..300)).unwrap();
    assert!(!tx.apply_compaction(done).unwrap());
    let snap = tx.commit().unwrap();
    assert_eq!(snap.segments().len(), 0);
    assert_eq!(snap.ids().count(), 0);
}

#[test]
fn a_version_replaced_under_the_same_key_meanwhile_is_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = store(dir.path(), 2);
    let done = w.start_compaction().unwrap().unwrap().run().unwrap();
    let all = ids(0..200);
    let mut tx = w.begin();
    tx.drop_embedding("prerank@v42").unwrap();
    // The same key again (a dropped name is refused unless forgotten).
    assert!(tx.forget_dropped_version("prerank@v42").unwrap());
    let v: Vec<f32> = all
        .iter()
        .flat_map(|&i| common::vector(i, DIM, 9))
        .collect();
    tx.add_embedding(
        vstore::EmbeddingDef::new("prerank", "v42", DIM, Dtype::F32),
        &all,
        &v,
    )
    .unwrap();
    tx.commit().unwrap();
    let mut tx = w.begin();
    assert!(tx.apply_compaction(done).unwrap());
    let snap = tx.commit().unwrap();
    assert_eq!(snap.segments().len(), 1);
    for &id in &all {
        assert_eq!(
            snap.get_embedding(id, "prerank@v42").unwrap(),
            common::vector(id, DIM, 9),
            "item {id}"
        );
    }
    snap.verify().unwrap();
}

#[test]
fn no_other_writer_opens_the_store_while_a_job_lives() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = store(dir.path(), 2);
    let job = w.start_compaction().unwrap().unwrap();
    drop(w);
    // The job owns a reserved number and unpublished files: a second
    // writer could reuse the number or collect them.
    assert!(matches!(
        Writer::open(dir.path()),
        Err(Error::Locked { .. })
    ));
    let done = job.run().unwrap();
    assert!(matches!(
        Writer::open(dir.path()),
        Err(Error::Locked { .. })
    ));
    drop(done);
    let mut w = Writer::open(dir.path()).unwrap();
    let mut tx = w.begin();
    tx.delete_items(&[0]).unwrap();
    tx.commit().unwrap().verify().unwrap();
}

#[test]
fn a_result_cannot_be_applied_through_another_writer() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut wa = store(a.path(), 2);
    let mut wb = store(b.path(), 2);
    let done = wa.start_compaction().unwrap().unwrap().run().unwrap();
    let mut tx = wb.begin();
    let e = tx.apply_compaction(done).unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e}");
    assert!(e.to_string().contains("another writer"), "{e}");
    tx.commit().unwrap();
}

/// A restore published while a job ran can bring back rows that were
/// deleted when the job started (and so were not copied): applying the job
/// then would have deleted live items. Refused as stale, changing nothing;
/// a restore that only takes segments away is applied.
#[test]
fn a_restore_that_brings_back_rows_the_job_dropped_makes_it_stale() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = store(dir.path(), 1); // snapshot 1: ids 0..100
    let mut tx = w.begin();
    tx.delete_items(&[1, 2]).unwrap();
    tx.commit().unwrap();
    let mut tx = w.begin();
    tx.add_items(common::batch(&ids(100..110), DIM, 0)).unwrap();
    tx.commit().unwrap();
    let done = w
        .start_compaction()
        .unwrap()
        .expect("two segments")
        .run()
        .unwrap();
    let restored = w.restore(1).unwrap();
    let want = contents(&restored);
    assert!(want.contains_key(&1) && want.contains_key(&2));
    let mut tx = w.begin();
    match tx.apply_compaction(done) {
        Err(e @ Error::CompactionConflict { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("2 live rows the compaction did not copy"),
                "{msg}"
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let snap = tx.commit().unwrap();
    assert_eq!(contents(&snap), want);

    // A restore to a snapshot before a source segment existed takes that
    // segment away: the job's copy of its rows is left out, the rest kept.
    let dir = tempfile::tempdir().unwrap();
    let mut w = store(dir.path(), 1);
    let mut tx = w.begin();
    tx.add_items(common::batch(&ids(100..110), DIM, 0)).unwrap();
    tx.commit().unwrap();
    let done = w
        .start_compaction()
        .unwrap()
        .expect("two segments")
        .run()
        .unwrap();
    let restored = w.restore(1).unwrap();
    let want = contents(&restored);
    let mut tx = w.begin();
    assert!(tx.apply_compaction(done).unwrap());
    let snap = tx.commit().unwrap();
    assert_eq!(snap.segments().len(), 1);
    assert_eq!(contents(&snap), want);
    assert!(snap.lookup(105).is_none());
}
