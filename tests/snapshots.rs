//! Snapshots: publish, isolation, retention and garbage collection, stats
//! refresh sharing files, version tags, deletes, the writer lock.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{batch, schema, stat_value, vector};
use vstore::{Dtype, EmbeddingDef, Error, ItemBatch, Retention, Store, Writer};

const DIM: u32 = 8;

fn no_grace(keep_last: usize) -> Retention {
    Retention {
        keep_last,
        grace: Duration::ZERO,
    }
}

#[test]
fn publish_then_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema(DIM, Dtype::F32)).unwrap();
    let ids: Vec<u64> = (0..1000).map(|i| i * 3 + 1).collect();
    let mut tx = w.begin();
    assert_eq!(tx.number(), 1);
    tx.add_items(batch(&ids, DIM, 0)).unwrap();
    tx.set_metadata("source", "unit-test").unwrap();
    let snap = tx.commit().unwrap();
    assert_eq!(snap.number(), 1);
    assert_eq!(snap.parent(), None);

    let store = Store::open(dir.path()).unwrap();
    let s = store.snapshot();
    assert_eq!(s.number(), 1);
    assert_eq!(s.len(), 1000);
    assert_eq!(s.metadata("source"), Some("unit-test"));
    assert_eq!(s.ids().collect::<Vec<_>>(), ids);
    for &id in &ids {
        assert_eq!(
            s.get_embedding(id, "prerank@v42").unwrap(),
            vector(id, DIM, 0)
        );
        assert_eq!(
            s.get_categorical(id, "category").unwrap(),
            Some((id % 7) as u32)
        );
        let price = s.get_numeric(id, "price").unwrap();
        assert_eq!(price, (id % 5 != 0).then_some(id as f32 * 0.5));
        assert_eq!(s.get_stat(id, "ctr_1d").unwrap(), Some(stat_value(id, 0)));
    }
    // A missing numeric reads as the declared default in the column view.
    let at = s.lookup(10).unwrap();
    let col = s.segments()[at.segment].numeric("price").unwrap();
    assert!(col.is_missing(at.row));
    assert_eq!(col.get(at.row), -1.0);
    assert!(s.lookup(2).is_none());
    assert!(matches!(
        s.get_embedding(2, "prerank@v42"),
        Err(Error::UnknownId { id: 2, .. })
    ));
    s.verify().unwrap();
    let report = store.verify().unwrap();
    assert_eq!(report.manifests, 1);
    assert_eq!(report.files, 5);
}

#[test]
fn unknown_version_is_version_skew_naming_what_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema(DIM, Dtype::F16)).unwrap();
    let mut tx = w.begin();
    tx.add_items(batch(&[1, 2, 3], DIM, 0)).unwrap();
    let s = tx.commit().unwrap();
    let err = s.get_embedding(1, "prerank@v43").unwrap_err();
    match &err {
        Error::VersionSkew {
            requested,
            available,
            snapshot,
        } => {
            assert_eq!(requested, "prerank@v43");
            assert_eq!(available, &vec!["prerank@v42".to_string()]);
            assert_eq!(*snapshot, 1);
        }
        e => panic!("expected VersionSkew, got {e:?}"),
    }
    assert!(err.to_string().contains("prerank@v42"));
    assert!(matches!(
        s.embedding(0, "other@v42"),
        Err(Error::VersionSkew { .. })
    ));
    assert!(matches!(
        s.embedding_def("prerank@v41"),
        Err(Error::VersionSkew { .. })
    ));
}

#[test]
fn several_versions_side_by_side_and_drop() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema(DIM, Dtype::F32)).unwrap();
    let ids: Vec<u64> = (100..300).collect();
    let mut tx = w.begin();
    tx.add_items(batch(&ids[..120], DIM, 0)).unwrap();
    tx.add_items(batch(&ids[120..], DIM, 0)).unwrap();
    tx.commit().unwrap();

    // v43 rolls out at dimension 16 in i8 beside v42.
    let v43 = EmbeddingDef::new("prerank", "v43", 16, Dtype::I8);
    let vecs: Vec<f32> = ids.iter().flat_map(|&id| vector(id, 16, 43)).collect();
    let mut tx = w.begin();
    tx.add_embedding(v43.clone(), &ids, &vecs).unwrap();
    let s = tx.commit().unwrap();
    assert_eq!(s.embedding_keys(), vec!["prerank@v42", "prerank@v43"]);
    for &id in &ids {
        assert_eq!(
            s.get_embedding(id, "prerank@v42").unwrap(),
            vector(id, DIM, 0)
        );
        let got = s.get_embedding(id, "prerank@v43").unwrap();
        let want = vector(id, 16, 43);
        let max = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        for (g, x) in got.iter().zip(&want) {
            assert!((g - x).abs() <= max / 254.0 + 1e-6, "{g} vs {x}");
        }
    }
    // New items must now carry both versions.
    let mut tx = w.begin();
    let err = tx.add_items(batch(&[1000], DIM, 0)).unwrap_err();
    assert!(err.to_string().contains("prerank@v43"), "{err}");
    tx.drop_embedding("prerank@v42").unwrap();
    let s2 = tx.commit().unwrap();
    assert_eq!(s2.embedding_keys(), vec!["prerank@v43"]);
    assert!(matches!(
        s2.get_embedding(100, "prerank@v42"),
        Err(Error::VersionSkew { .. })
    ));
    // The older pinned snapshot still has both.
    assert!(s.get_embedding(100, "prerank@v42").is_ok());
    // Missing vectors for some live item are refused at commit (the
    // version has no item tower to compute them), naming the id.
    let mut tx = w.begin();
    let v44 = EmbeddingDef::new("prerank", "v44", 4, Dtype::F32);
    tx.add_embedding(v44, &ids[1..], &vec![0.5; 4 * (ids.len() - 1)])
        .unwrap();
    let err = tx.commit().unwrap_err();
    assert!(
        err.to_string().contains("no vector for item id 100")
            && err.to_string().contains("no item tower"),
        "{err}"
    );
    assert_eq!(
        w.snapshot().unwrap().number(),
        s2.number(),
        "nothing published"
    );
    // The writer goes on: a refused input is not a failed write.
    let mut tx = w.begin();
    tx.set_metadata("after", "refusal").unwrap();
    tx.commit().unwrap();
}

/// The refusal of a dropped name, checked by its message.
fn assert_refused_as_dropped(e: Error, key: &str, snapshot: u64) {
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("{key} was dropped in snapshot {snapshot}"))
            && msg.contains("forget_dropped_version"),
        "{msg}"
    );
}

#[test]
fn a_dropped_version_string_is_not_given_to_other_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema(DIM, Dtype::F32)).unwrap();
    let ids: Vec<u64> = (0..50).collect();
    let mut tx = w.begin();
    tx.add_items(batch(&ids, DIM, 0)).unwrap();
    let with_v42 = tx.commit().unwrap().number();
    let v43 = EmbeddingDef::new("prerank", "v43", 4, Dtype::F32);
    let vecs = |salt: u64| -> Vec<f32> { ids.iter().flat_map(|&id| vector(id, 4, salt)).collect() };
    let mut tx = w.begin();
    tx.add_embedding(v43.clone(), &ids, &vecs(1)).unwrap();
    let with_v43 = tx.commit().unwrap().number();

    // Dropped and added again in one transaction: refused, naming the
    // transaction's own snapshot.
    let mut tx = w.begin();
    let n = tx.number();
    tx.drop_embedding("prerank@v43").unwrap();
    let e = tx.add_embedding(v43.clone(), &ids, &vecs(2)).unwrap_err();
    assert_refused_as_dropped(e, "prerank@v43", n);
    let dropped_in = tx.commit().unwrap();
    assert_eq!(dropped_in.number(), n);
    assert_eq!(
        dropped_in.dropped_versions().unwrap(),
        vec![("prerank@v43".to_string(), n)]
    );
    // In a later transaction too; the record survives other publishes.
    let mut tx = w.begin();
    let e = tx.add_embedding(v43.clone(), &ids, &vecs(2)).unwrap_err();
    assert_refused_as_dropped(e, "prerank@v43", n);
    tx.set_metadata("note", "later").unwrap();
    let later = tx.commit().unwrap();
    assert_eq!(later.dropped_versions().unwrap().len(), 1);
    // The record is the library's: the metadata calls refuse its key.
    let mut tx = w.begin();
    for e in [
        tx.set_metadata(vstore::DROPPED_VERSIONS_KEY, "{}")
            .unwrap_err(),
        tx.remove_metadata(vstore::DROPPED_VERSIONS_KEY)
            .unwrap_err(),
        tx.set_metadata("vstore.anything", "x").unwrap_err(),
    ] {
        assert!(e.to_string().contains("is the library's"), "{e}");
    }
    drop(tx);

    // Restoring a snapshot that held v43 brings it back with its own
    // vectors: no longer listed. Dropping it again retires it again.
    let back = w.restore(with_v43).unwrap();
    assert!(back.dropped_versions().unwrap().is_empty());
    assert_eq!(
        back.get_embedding(7, "prerank@v43").unwrap(),
        vector(7, 4, 1)
    );
    let mut tx = w.begin();
    tx.drop_embedding("prerank@v43").unwrap();
    let again = tx.commit().unwrap();
    // Restoring a snapshot from before v43 existed keeps it retired (the
    // restored snapshot's own record is empty; the newest's is kept).
    let old = w.restore(with_v42).unwrap();
    assert_eq!(
        old.dropped_versions().unwrap(),
        vec![("prerank@v43".to_string(), again.number())]
    );
    let mut tx = w.begin();
    let e = tx.add_embedding(v43.clone(), &ids, &vecs(3)).unwrap_err();
    assert_refused_as_dropped(e, "prerank@v43", again.number());
    drop(tx);

    // A restore that leaves out a version the newest holds drops it, and
    // records so.
    let v44 = EmbeddingDef::new("prerank", "v44", 4, Dtype::F32);
    let mut tx = w.begin();
    tx.add_embedding(v44.clone(), &ids, &vecs(4)).unwrap();
    tx.commit().unwrap();
    let restored = w.restore(with_v42).unwrap();
    assert_eq!(
        restored.dropped_versions().unwrap(),
        vec![
            ("prerank@v43".to_string(), again.number()),
            ("prerank@v44".to_string(), restored.number())
        ]
    );
    let mut tx = w.begin();
    let e = tx.add_embedding(v44, &ids, &vecs(5)).unwrap_err();
    assert_refused_as_dropped(e, "prerank@v44", restored.number());
    drop(tx);

    // Vectors of the same model: forget the drop, then add.
    let mut tx = w.begin();
    assert!(tx.forget_dropped_version("prerank@v43").unwrap());
    assert!(!tx.forget_dropped_version("prerank@v99").unwrap());
    tx.add_embedding(v43, &ids, &vecs(1)).unwrap();
    let s = tx.commit().unwrap();
    assert_eq!(
        s.dropped_versions().unwrap(),
        vec![("prerank@v44".to_string(), restored.number())]
    );
    assert_eq!(s.get_embedding(7, "prerank@v43").unwrap(), vector(7, 4, 1));
}

#[test]
fn stats_refresh_shares_profile_and_embedding_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema(DIM, Dtype::F16)).unwrap();
    let ids: Vec<u64> = (0..500).collect();
    let mut tx = w.begin();
    tx.add_items(batch(&ids[..250], DIM, 0)).unwrap();
    tx.add_items(batch(&ids[250..], DIM, 0)).unwrap();
    let before = tx.commit().unwrap();

    // Refresh ctr_1d for items of the second segment only.
    let upd: Vec<u64> = (300..400).collect();
    let mut tx = w.begin();
    tx.update_stats(common::stats_update(&upd, 9)).unwrap();
    let after = tx.commit().unwrap();
    assert_eq!(after.parent(), Some(before.number()));

    let files_before: HashSet<String> = before.files().into_iter().collect();
    let files_after: Vec<String> = after.files();
    let new_files: Vec<&String> = files_after[1..]
        .iter()
        .filter(|f| !files_before.contains(*f))
        .collect();
    // Exactly one new data file: the second segment's statistics.
    assert_eq!(new_files.len(), 1, "{new_files:?}");
    assert!(new_files[0].contains("-g1-stats"), "{new_files:?}");
    // Profile, embedding and id index files of both segments are the very same.
    for f in &files_after[1..] {
        if !f.contains("stats") {
            assert!(files_before.contains(f), "{f} is not shared");
        }
    }
    for &id in &ids {
        let want = if upd.contains(&id) {
            stat_value(id, 9)
        } else {
            stat_value(id, 0)
        };
        assert_eq!(after.get_stat(id, "ctr_1d").unwrap(), Some(want));
        assert_eq!(
            before.get_stat(id, "ctr_1d").unwrap(),
            Some(stat_value(id, 0))
        );
        // Untouched column keeps its values.
        assert_eq!(
            after.get_stat(id, "impressions_7d").unwrap(),
            Some(id as f32)
        );
    }
    // Stats may be cleared to missing, and unknown ids are refused.
    let mut tx = w.begin();
    tx.update_stats(ItemBatch::new(vec![7]).stat_opt("ctr_1d", vec![None]))
        .unwrap();
    let s = tx.commit().unwrap();
    assert_eq!(s.get_stat(7, "ctr_1d").unwrap(), None);
    let mut tx = w.begin();
    let e = tx
        .update_stats(ItemBatch::new(vec![123_456]).stat("ctr_1d", vec![0.5]))
        .unwrap_err();
    assert!(matches!(e, Error::UnknownId { id: 123_456, .. }), "{e}");
    let e = tx
        .update_stats(ItemBatch::new(vec![1]).categorical("category", vec![3]))
        .unwrap_err();
    assert!(e.to_string().contains("category"), "{e}");
}

#[test]
fn reader_pinned_is_isolated_through_50_publishes_and_gc_then_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema(DIM, Dtype::F32)).unwrap();
    w.set_retention(no_grace(1));
    let ids: Vec<u64> = (0..300).collect();
    let mut tx = w.begin();
    tx.add_items(batch(&ids, DIM, 0)).unwrap();
    let first = tx.commit().unwrap().number();

    let store = Store::open(dir.path()).unwrap();
    let pinned = store.snapshot();
    assert_eq!(pinned.number(), first);
    let pinned_files = pinned.files();

    let mut live = ids.clone();
    for gen in 1..=50u64 {
        let mut tx = w.begin();
        // Each publish: a stats refresh, a new item, and every tenth a delete.
        tx.update_stats(common::stats_update(&live, gen)).unwrap();
        let new_id = 10_000 + gen;
        tx.add_items(batch(&[new_id], DIM, gen)).unwrap();
        if gen % 10 == 0 {
            tx.delete_items(&[gen]).unwrap();
            live.retain(|&i| i != gen);
        }
        let s = tx.commit().unwrap();
        assert_eq!(s.number(), first + gen);
        w.gc().unwrap();
        // The pinned snapshot reads its own values throughout.
        for &id in ids.iter().step_by(17) {
            assert_eq!(
                pinned.get_stat(id, "ctr_1d").unwrap(),
                Some(stat_value(id, 0))
            );
            assert_eq!(
                pinned.get_embedding(id, "prerank@v42").unwrap(),
                vector(id, DIM, 0)
            );
        }
        assert!(pinned.lookup(new_id).is_none());
    }
    pinned.verify().unwrap();
    // Every file of the pinned snapshot is still on disk (pinned in-process).
    let on_disk = common::files(dir.path());
    for f in &pinned_files {
        assert!(on_disk.contains(f), "{f} was collected while pinned");
    }
    store.refresh().unwrap();
    let newest = store.snapshot();
    assert_eq!(newest.number(), first + 50);
    assert!(newest.lookup(10).is_none(), "deleted item is gone");
    assert_eq!(newest.len(), 300 + 50 - 5);
    assert_eq!(
        newest.get_stat(11, "ctr_1d").unwrap(),
        Some(stat_value(11, 50))
    );

    // Release the pin: GC reclaims the old snapshot and its unshared files.
    drop(pinned);
    let report = w.gc().unwrap();
    assert!(report.removed_snapshots.contains(&first), "{report:?}");
    let on_disk = common::files(dir.path());
    let manifests: Vec<_> = on_disk
        .iter()
        .filter(|f| f.starts_with("MANIFEST"))
        .collect();
    assert_eq!(manifests.len(), 1, "{on_disk:?}");
    let live: HashSet<String> = newest.files().into_iter().collect();
    for f in &on_disk {
        assert!(
            f == "LOCK" || live.contains(f),
            "unreferenced file {f} left after gc"
        );
    }
    assert!(!on_disk
        .iter()
        .any(|f| f.contains("-g0-stats") && !live.contains(f)));
    newest.verify().unwrap();
}

#[test]
fn retention_keeps_last_n_and_grace() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema(DIM, Dtype::F32)).unwrap();
    for i in 0..6u64 {
        let mut tx = w.begin();
        tx.add_items(batch(&[i], DIM, 0)).unwrap();
        tx.commit().unwrap();
    }
    w.set_retention(Retention {
        keep_last: 3,
        grace: Duration::from_secs(3600),
    });
    let r = w.gc().unwrap();
    assert!(r.removed_snapshots.is_empty(), "grace keeps all: {r:?}");
    w.set_retention(no_grace(3));
    let r = w.gc().unwrap();
    assert_eq!(r.removed_snapshots, vec![1, 2, 3]);
    assert_eq!(r.kept, vec![4, 5, 6]);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.snapshots().unwrap(), vec![4, 5, 6]);
    assert_eq!(store.open_snapshot(4).unwrap().len(), 4);
    assert!(store.open_snapshot(2).unwrap_err().is_not_found());
}

#[test]
fn abandoned_transaction_files_are_collected_and_numbers_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = common::store_of(dir.path(), DIM, &[1, 2]);
    let before = common::files(dir.path());
    {
        let mut tx = w.begin();
        tx.add_items(batch(&[3, 4], DIM, 0)).unwrap();
        let written: Vec<String> = common::files(dir.path())
            .into_iter()
            .filter(|f| f.starts_with("s0000000002"))
            .collect();
        assert_eq!(written.len(), 4, "{written:?}");
        // dropped without commit: its files are removed
    }
    assert_eq!(common::files(dir.path()), before);
    {
        // A transaction that never reaches its drop (the process died) leaves
        // its files behind; gc collects them.
        let mut tx = w.begin();
        tx.add_items(batch(&[3, 4], DIM, 0)).unwrap();
        std::mem::forget(tx);
    }
    let stray: Vec<String> = common::files(dir.path())
        .into_iter()
        .filter(|f| f.starts_with("s0000000003"))
        .collect();
    assert_eq!(stray.len(), 4, "{stray:?}");
    w.set_retention(no_grace(1));
    let r = w.gc().unwrap();
    assert_eq!(r.removed_files.len(), 4, "{r:?}");
    assert_eq!(common::files(dir.path()), before);
    drop(w);
    // A new writer never reuses a number a stray file was written for.
    let mut w = Writer::open(dir.path()).unwrap();
    let mut tx = w.begin();
    tx.add_items(batch(&[3], DIM, 0)).unwrap();
    let s = tx.commit().unwrap();
    assert!(s.number() >= 2);
    assert_eq!(s.len(), 3);
}

#[test]
fn writer_open_on_a_directory_that_is_not_a_store_leaves_it_untouched() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    let e = Writer::open(dir.path()).unwrap_err();
    assert!(matches!(e, Error::NotAStore { .. }), "{e}");
    assert_eq!(common::files(dir.path()), vec!["notes.txt".to_string()]);
    let e = Writer::open(dir.path().join("missing")).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
    assert!(!dir.path().join("missing").exists());
}

#[test]
fn second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let w = common::store_of(dir.path(), DIM, &[1]);
    let e = Writer::open(dir.path()).unwrap_err();
    // The holder is a writer of this process: the error says so (a
    // Python user who kept a transaction alive was told "another writer").
    assert!(
        matches!(
            e,
            Error::Locked {
                held_here: true,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("of this process"), "{e}");
    // A compaction job holds the lock as its writer does.
    let mut w = w;
    let mut tx = w.begin();
    tx.add_items(batch(&[2], DIM, 0)).unwrap();
    tx.commit().unwrap();
    let job = w
        .start_compaction()
        .unwrap()
        .expect("two segments to merge");
    drop(w);
    let e = Writer::open(dir.path()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Locked {
                held_here: true,
                ..
            }
        ),
        "{e}"
    );
    drop(job);
    let w = Writer::open(dir.path()).unwrap();
    drop(w);
    // Held by another process: not "of this process".
    // (`-o`: the lock stays with flock(1), not with the `sleep` it runs.)
    let child = std::process::Command::new("flock")
        .arg("-o")
        .arg(dir.path().join("LOCK"))
        .args(["sleep", "30"])
        // (The `sleep` outlives the test: it must hold no pipe open.)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Ok(mut child) = child {
        let t = std::time::Instant::now();
        let e = loop {
            match Writer::open(dir.path()) {
                Err(e) => break e,
                Ok(w) if t.elapsed().as_secs() < 10 => {
                    drop(w);
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Ok(_) => panic!("flock(1) never took the lock"),
            }
        };
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            matches!(
                e,
                Error::Locked {
                    held_here: false,
                    ..
                }
            ),
            "{e}"
        );
        assert!(!e.to_string().contains("of this process"), "{e}");
    } else {
        eprintln!("second_writer_is_refused: flock(1) not installed; the other-process case is not checked");
    }
    // (flock(1)'s child closes its copy of the descriptor a moment after
    // the fork: the lock may outlive the killed flock(1) by that moment.)
    let t = std::time::Instant::now();
    loop {
        match Writer::open(dir.path()) {
            Ok(_) => break,
            Err(Error::Locked { .. }) if t.elapsed().as_secs() < 10 => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn bad_input_is_refused_with_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema(4, Dtype::F16)).unwrap();
    let mut tx = w.begin();
    tx.add_items(batch(&[1, 2], 4, 0)).unwrap();
    // Duplicate inside the batch.
    let e = tx.add_items(batch(&[5, 5], 4, 0)).unwrap_err();
    assert!(matches!(e, Error::DuplicateId { id: 5, .. }), "{e}");
    // Duplicate against the snapshot being built.
    let e = tx.add_items(batch(&[9, 2], 4, 0)).unwrap_err();
    assert!(matches!(e, Error::DuplicateId { id: 2, .. }), "{e}");
    // Wrong vector length.
    let e = tx
        .add_items(ItemBatch::new(vec![7]).embedding("prerank@v42", vec![1.0; 3]))
        .unwrap_err();
    assert!(e.to_string().contains("3 values"), "{e}");
    // Non-finite and f16-overflowing values name the id and component.
    let e = tx
        .add_items(ItemBatch::new(vec![7]).embedding("prerank@v42", vec![1.0, f32::NAN, 0.0, 0.0]))
        .unwrap_err();
    assert!(
        e.to_string().contains("id 7") && e.to_string().contains("component 1"),
        "{e}"
    );
    let e = tx
        .add_items(ItemBatch::new(vec![7]).embedding("prerank@v42", vec![1e6, 0.0, 0.0, 0.0]))
        .unwrap_err();
    assert!(e.to_string().contains("f16"), "{e}");
    // Unknown column, wrong type, wrong length.
    let e = tx
        .add_items(batch(&[8], 4, 0).numeric("colour", vec![1.0]))
        .unwrap_err();
    assert!(matches!(e, Error::NoSuchColumn { .. }), "{e}");
    let e = tx
        .add_items(batch(&[8], 4, 0).numeric("category", vec![1.0]))
        .unwrap_err();
    assert!(
        e.to_string().contains("given twice") || e.to_string().contains("categorical"),
        "{e}"
    );
    let e = tx
        .add_items(
            ItemBatch::new(vec![8])
                .stat("ctr_1d", vec![f32::INFINITY])
                .embedding("prerank@v42", vec![0.0; 4]),
        )
        .unwrap_err();
    assert!(e.to_string().contains("ctr_1d"), "{e}");
    // None of that poisoned the transaction.
    tx.add_items(batch(&[3], 4, 0)).unwrap();
    let s = tx.commit().unwrap();
    assert_eq!(s.len(), 3);
    // An existing store cannot be created over.
    drop(w);
    let e = Writer::create(dir.path(), schema(4, Dtype::F16)).unwrap_err();
    assert!(e.to_string().contains("already holds a store"), "{e}");
    // An empty directory is not a store.
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        Store::open(empty.path()),
        Err(Error::NotAStore { .. })
    ));
}

#[test]
fn deletes_are_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema(DIM, Dtype::Bf16)).unwrap();
    let mut tx = w.begin();
    tx.add_items(batch(&(0..100).collect::<Vec<_>>(), DIM, 0))
        .unwrap();
    tx.add_items(batch(&[500, 501], DIM, 0)).unwrap();
    let s1 = tx.commit().unwrap();
    let mut tx = w.begin();
    tx.delete_items(&[3, 64, 99]).unwrap();
    tx.delete_items(&[500, 501]).unwrap();
    let e = tx.delete_items(&[3]).unwrap_err();
    assert!(matches!(e, Error::UnknownId { id: 3, .. }), "{e}");
    let s2 = tx.commit().unwrap();
    assert_eq!(s2.len(), 97);
    assert_eq!(s2.segments().len(), 1, "fully deleted segment leaves");
    assert!(s2.lookup(64).is_none());
    assert!(s2.lookup(65).is_some());
    assert_eq!(s1.len(), 102);
    assert!(!s2.ids().any(|i| i == 3 || i == 64 || i == 99));
    // A deleted id may be added again (as a new segment).
    let mut tx = w.begin();
    tx.add_items(batch(&[64], DIM, 7)).unwrap();
    let s3 = tx.commit().unwrap();
    assert_eq!(
        s3.get_embedding(64, "prerank@v42").unwrap(),
        vector(64, DIM, 7)
    );
    s3.verify().unwrap();
}

#[test]
fn crash_leftovers_are_ignored_then_collected() {
    let dir = tempfile::tempdir().unwrap();
    let w = common::store_of(dir.path(), DIM, &[1, 2, 3]);
    drop(w);
    // What a writer killed during its next publish can leave: a partial data
    // file, a complete one, and a partial manifest under its temporary name.
    let p = dir.path();
    std::fs::write(
        p.join("s0000000002-g1-ids.vidx"),
        b"\x89VSTR\r\n\x1apartial",
    )
    .unwrap();
    std::fs::copy(
        p.join("s0000000001-g0-profile.vcol"),
        p.join("s0000000002-g1-profile.vcol"),
    )
    .unwrap();
    std::fs::write(p.join("MANIFEST-00000000000000000002.tmp"), b"\x89VSTR").unwrap();
    // An unrelated file is never touched.
    std::fs::write(p.join("notes.txt"), b"keep me").unwrap();

    let store = Store::open(p).unwrap();
    assert_eq!(store.snapshot().number(), 1);
    assert!(store.skipped_manifests().is_empty());
    store.verify().unwrap();

    let mut w = Writer::open(p).unwrap();
    let mut tx = w.begin();
    assert_eq!(tx.number(), 3, "number 2 was used by the crashed writer");
    tx.add_items(batch(&[4], DIM, 0)).unwrap();
    tx.commit().unwrap();
    w.set_retention(no_grace(2));
    let r = w.gc().unwrap();
    let mut removed = r.removed_files.clone();
    removed.sort();
    assert_eq!(
        removed,
        vec![
            "MANIFEST-00000000000000000002.tmp",
            "s0000000002-g1-ids.vidx",
            "s0000000002-g1-profile.vcol"
        ]
    );
    assert!(p.join("notes.txt").exists());
    assert!(store.refresh().unwrap());
    assert_eq!(store.snapshot().len(), 4);
}

#[test]
fn damaged_newest_manifest_falls_back_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema(DIM, Dtype::F32)).unwrap();
    for i in 0..2u64 {
        let mut tx = w.begin();
        tx.add_items(batch(&[i], DIM, 0)).unwrap();
        tx.commit().unwrap();
    }
    drop(w);
    let m2 = dir.path().join("MANIFEST-00000000000000000002");
    let mut bytes = std::fs::read(&m2).unwrap();
    let n = bytes.len();
    bytes[n - 60] ^= 0x01; // inside the metadata
    std::fs::write(&m2, &bytes).unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.snapshot().number(), 1);
    let skipped = store.skipped_manifests();
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].1.contains("checksum"), "{skipped:?}");
    assert!(!store.refresh().unwrap());
    assert_eq!(store.skipped_manifests().len(), 1);
    let e = store.verify().unwrap_err();
    assert_eq!(e.path(), Some(m2.as_path()));
    // Writers (gc included) refuse while the newest manifest is damaged.
    assert!(matches!(
        Writer::open(dir.path()),
        Err(Error::DamagedManifest { .. })
    ));
    // GC never deletes data while a manifest cannot be read: here an older
    // one, which does not stop writers.
    bytes[n - 60] ^= 0x01;
    std::fs::write(&m2, &bytes).unwrap();
    let m1 = dir.path().join("MANIFEST-00000000000000000001");
    let mut bytes = std::fs::read(&m1).unwrap();
    let n = bytes.len();
    bytes[n - 60] ^= 0x01;
    std::fs::write(&m1, &bytes).unwrap();
    let mut w = Writer::open(dir.path()).unwrap();
    w.set_retention(no_grace(1));
    let r = w.gc().unwrap();
    assert_eq!(
        r.unreadable_manifests,
        vec!["MANIFEST-00000000000000000001"]
    );
    assert!(r.removed_files.is_empty());
}

#[test]
fn concurrent_readers_see_consistent_snapshots_while_writer_publishes_and_collects() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema(DIM, Dtype::F16)).unwrap();
    w.set_retention(no_grace(1));
    let ids: Vec<u64> = (0..400).collect();
    let mut tx = w.begin();
    tx.add_items(batch(&ids, DIM, 0)).unwrap();
    let first = tx.commit().unwrap().number();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));

    // Reader 1: pinned at the first snapshot for the whole run.
    let pinned = store.snapshot();
    let r1 = {
        let stop = stop.clone();
        let ids = ids.clone();
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for &id in &ids {
                    assert_eq!(
                        pinned.get_stat(id, "ctr_1d").unwrap(),
                        Some(stat_value(id, 0))
                    );
                    reads += 1;
                }
                assert_eq!(
                    pinned.get_embedding(7, "prerank@v42").unwrap(),
                    vector(7, DIM, 0)
                );
            }
            pinned.verify().unwrap();
            reads
        })
    };
    // Reader 2: refreshes constantly; every snapshot it sees must be whole
    // (all statistics from the same generation).
    let r2 = {
        let stop = stop.clone();
        let store = store.clone();
        let ids = ids.clone();
        std::thread::spawn(move || {
            let mut seen = HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                store.refresh().unwrap();
                let s = store.snapshot();
                let gen = s.number() - first;
                for &id in &ids {
                    assert_eq!(s.get_stat(id, "ctr_1d").unwrap(), Some(stat_value(id, gen)));
                }
                seen.insert(s.number());
            }
            seen.len()
        })
    };
    for gen in 1..=50u64 {
        let mut tx = w.begin();
        tx.update_stats(common::stats_update(&ids, gen)).unwrap();
        tx.commit().unwrap();
        w.gc().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let reads = r1.join().unwrap();
    let distinct = r2.join().unwrap();
    assert!(reads > 0);
    assert!(distinct >= 2, "reader 2 saw {distinct} snapshots");
    // All readers released (the store's own current snapshot is the newest):
    // GC reclaims everything older.
    store.refresh().unwrap();
    let r = w.gc().unwrap();
    assert_eq!(r.kept, vec![first + 50]);
    assert_eq!(store.snapshots().unwrap(), vec![first + 50]);
}

#[test]
fn abandoned_transaction_then_a_new_one_in_the_same_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema(DIM, Dtype::F32)).unwrap();
    {
        let mut tx = w.begin();
        assert_eq!(tx.number(), 1);
        tx.add_items(batch(&[1, 2], DIM, 0)).unwrap();
        // A failed operation leaves the transaction usable; then abandon it.
        assert!(tx.add_items(batch(&[2], DIM, 0)).is_err());
    }
    assert!(
        common::files(dir.path())
            .iter()
            .all(|f| !f.starts_with('s')),
        "the abandoned transaction's files are removed: {:?}",
        common::files(dir.path())
    );
    let mut tx = w.begin();
    assert_eq!(tx.number(), 2, "the abandoned number is not reused");
    tx.add_items(batch(&[1, 2], DIM, 0)).unwrap();
    let s = tx.commit().unwrap();
    assert_eq!(s.number(), 2);
    assert_eq!(s.len(), 2);
    w.set_retention(no_grace(1));
    let r = w.gc().unwrap();
    assert!(r.removed_files.is_empty(), "{r:?}");
}

#[test]
fn writer_refuses_to_copy_damaged_statistics_into_a_new_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema(DIM, Dtype::F32)).unwrap();
    let mut tx = w.begin();
    tx.add_items(batch(&(0..50).collect::<Vec<_>>(), DIM, 0))
        .unwrap();
    tx.commit().unwrap();
    drop(w);
    // Damage a statistic's bytes (data region: only checksums catch it).
    let stats = dir.path().join("s0000000001-g0-stats.vcol");
    let mut bytes = std::fs::read(&stats).unwrap();
    bytes[64 + 4 * 10] ^= 0x40;
    std::fs::write(&stats, &bytes).unwrap();
    let mut w = Writer::open(dir.path()).unwrap();
    let mut tx = w.begin();
    let e = tx
        .update_stats(ItemBatch::new(vec![1]).stat("ctr_1d", vec![0.5]))
        .unwrap_err();
    assert_eq!(e.path(), Some(stats.as_path()), "{e}");
    assert!(e.to_string().contains("checksum"), "{e}");
    let e = tx.delete_items(&[3]).unwrap_err();
    assert_eq!(e.path(), Some(stats.as_path()), "{e}");
}

#[test]
fn bf16_and_f16_refuse_values_that_would_become_infinite() {
    let dir = tempfile::tempdir().unwrap();
    let schema = vstore::Schema::new()
        .embedding("a", "v1", 2, Dtype::Bf16)
        .embedding("b", "v1", 2, Dtype::F16);
    let mut w = Writer::create(dir.path(), schema).unwrap();
    let mut tx = w.begin();
    let e = tx
        .add_items(
            ItemBatch::new(vec![1])
                .embedding("a@v1", vec![3.4e38, 0.0])
                .embedding("b@v1", vec![0.0, 0.0]),
        )
        .unwrap_err();
    assert!(e.to_string().contains("bf16"), "{e}");
    let e = tx
        .add_items(
            ItemBatch::new(vec![1])
                .embedding("a@v1", vec![1.0, 0.0])
                .embedding("b@v1", vec![65520.0, 0.0]),
        )
        .unwrap_err();
    assert!(e.to_string().contains("f16"), "{e}");
    tx.add_items(
        ItemBatch::new(vec![1])
            .embedding("a@v1", vec![3.38e38, -1.0])
            .embedding("b@v1", vec![65504.0, -65504.0]),
    )
    .unwrap();
    let s = tx.commit().unwrap();
    assert!(s
        .get_embedding(1, "a@v1")
        .unwrap()
        .iter()
        .all(|x| x.is_finite()));
    assert_eq!(s.get_embedding(1, "b@v1").unwrap(), vec![65504.0, -65504.0]);
}

#[test]
fn a_manifest_naming_a_symlink_or_fifo_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let w = common::store_of(dir.path(), DIM, &[1]);
    drop(w);
    let f = dir.path().join("s0000000001-g0-profile.vcol");
    let elsewhere = tempfile::tempdir().unwrap();
    let moved = elsewhere.path().join("profile.vcol");
    std::fs::rename(&f, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &f).unwrap();
    let e = Store::open(dir.path()).unwrap_err();
    assert_eq!(e.path(), Some(f.as_path()), "{e}");
    assert!(e.to_string().contains("not a regular file"), "{e}");
    std::fs::remove_file(&f).unwrap();
    common::mkfifo(&f).unwrap();
    let e = Store::open(dir.path()).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
}

#[test]
fn compaction_merges_segments_drops_tombstones_and_copies_rows_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let schema =
        vstore::Schema::new()
            .stat("ctr_1d", 0.0)
            .embedding("prerank", "v42", 12, Dtype::I8);
    let mut w = Writer::create(dir.path(), schema).unwrap();
    for s in 0..3u64 {
        let ids: Vec<u64> = (s * 100..s * 100 + 50).collect();
        let v: Vec<f32> = ids.iter().flat_map(|&i| vector(i, 12, 3)).collect();
        let mut tx = w.begin();
        tx.add_items(
            ItemBatch::new(ids.clone())
                .stat("ctr_1d", ids.iter().map(|&i| i as f32).collect())
                .embedding("prerank@v42", v),
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let mut tx = w.begin();
    tx.delete_items(&[0, 1, 149, 249]).unwrap();
    // Not due under the default policy (3 segments, 2.7% dead).
    assert!(!tx.compact_if(&vstore::Compaction::default()).unwrap());
    let before = tx.commit().unwrap();
    let mut tx = w.begin();
    assert!(tx
        .compact_if(&vstore::Compaction {
            max_segments: 2,
            max_dead_fraction: 0.5
        })
        .unwrap());
    let after = tx.commit().unwrap();
    assert_eq!(after.segments().len(), 1);
    assert_eq!(after.segments()[0].rows(), 146);
    assert_eq!(after.len(), before.len());
    for id in before.ids() {
        let (a, b) = (before.lookup(id).unwrap(), after.lookup(id).unwrap());
        let ra = before
            .embedding(a.segment, "prerank@v42")
            .unwrap()
            .row_bytes(a.row);
        let rb = after
            .embedding(b.segment, "prerank@v42")
            .unwrap()
            .row_bytes(b.row);
        assert_eq!(ra, rb, "row of id {id} changed");
        assert_eq!(after.get_stat(id, "ctr_1d").unwrap(), Some(id as f32));
    }
    assert!(after.lookup(149).is_none());
    // Compacting a single clean segment is a no-op.
    let mut tx = w.begin();
    assert!(!tx.compact().unwrap());
    // Once the old snapshots go, GC reclaims the merged segments' files.
    drop((before, tx));
    w.set_retention(no_grace(1));
    let r = w.gc().unwrap();
    assert!(r.removed_files.iter().any(|f| f.contains("-g2-")), "{r:?}");
    after.verify().unwrap();
}

#[test]
fn upsert_replaces_live_items_and_adds_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = common::store_of(dir.path(), DIM, &[1, 2, 3]);
    let mut tx = w.begin();
    let e = tx.add_items(batch(&[3, 4], DIM, 1)).unwrap_err();
    assert!(e.to_string().contains("upsert_items"), "{e}");
    tx.upsert_items(batch(&[3, 4], DIM, 1)).unwrap();
    let s = tx.commit().unwrap();
    assert_eq!(s.len(), 4);
    assert_eq!(
        s.get_embedding(3, "prerank@v42").unwrap(),
        vector(3, DIM, 1)
    );
    assert_eq!(
        s.get_embedding(2, "prerank@v42").unwrap(),
        vector(2, DIM, 0)
    );
    assert_eq!(s.segments().len(), 2);
    assert_eq!(s.segments()[0].live_rows(), 2);
}

#[test]
fn verify_all_reports_every_retained_snapshot_and_only_the_damaged_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema(DIM, Dtype::F32)).unwrap();
    w.set_retention(no_grace(10));
    let ids: Vec<u64> = (0..200).collect();
    let mut tx = w.begin();
    tx.add_items(batch(&ids, DIM, 0)).unwrap();
    let s1 = tx.commit().unwrap();
    let mut tx = w.begin();
    tx.update_stats(common::stats_update(&ids, 1)).unwrap();
    let s2 = tx.commit().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let all = store.verify_all().unwrap();
    assert_eq!(all.len(), 2);
    for (n, r) in &all {
        let r = r.as_ref().unwrap();
        assert_eq!(r.snapshot, *n);
    }
    // Both snapshots count their files; the shared ones are checksummed once.
    let r1 = all[0].1.as_ref().unwrap();
    let r2 = all[1].1.as_ref().unwrap();
    assert_eq!(r1.files, s1.files().len());
    assert_eq!(r2.files, s2.files().len());
    let len = |f: &String| std::fs::metadata(dir.path().join(f)).unwrap().len();
    let old1: HashSet<String> = s1.files().into_iter().collect();
    assert_eq!(r1.bytes, s1.files().iter().map(len).sum::<u64>());
    assert_eq!(
        r2.bytes,
        s2.files()
            .iter()
            .filter(|f| !old1.contains(*f))
            .map(len)
            .sum::<u64>(),
        "files shared with snapshot 1 are checksummed once"
    );

    // Damage the statistics file only snapshot 1 uses: snapshot 1 fails,
    // naming it, snapshot 2 is clean.
    let old: HashSet<String> = s2.files().into_iter().collect();
    let only1: Vec<String> = s1
        .files()
        .into_iter()
        .filter(|f| !old.contains(f))
        .collect();
    let stats = only1.iter().find(|f| f.contains("stats")).unwrap();
    drop((s1, s2, store));
    let path = dir.path().join(stats);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 200;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let store = Store::open(dir.path()).unwrap();
    let all = store.verify_all().unwrap();
    let e = all[0].1.as_ref().unwrap_err();
    assert!(e.to_string().contains(stats.as_str()), "{e}");
    assert!(all[1].1.is_ok(), "{:?}", all[1]);
    // Store::verify checks every snapshot too: the damage is its error.
    let e = store.verify().unwrap_err();
    assert!(e.to_string().contains(stats.as_str()), "{e}");
    store.snapshot().verify().unwrap();

    // Damage a file both share: both fail (snapshot 1 still on its first
    // damaged file), snapshot 2 naming the shared one.
    // The store is open (its background prefault may be reading the
    // file), so the byte is flipped in place: truncating and rewriting a
    // mapped file would fault its readers (SIGBUS).
    let shared = old.iter().find(|f| f.contains("emb-")).unwrap().clone();
    let path = dir.path().join(&shared);
    let len = std::fs::metadata(&path).unwrap().len();
    flip_in_place(&path, len / 2);
    let all = store.verify_all().unwrap();
    assert!(all[0].1.is_err());
    let e = all[1].1.as_ref().unwrap_err();
    assert!(e.to_string().contains(shared.as_str()), "{e}");
}

/// Flips the low bit of byte `at` of `path` without truncating the file.
fn flip_in_place(path: &std::path::Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
}

#[test]
fn a_damaged_newest_manifest_stops_writers_until_set_aside_and_readers_say_they_fell_back() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let mut w = Writer::create(p, schema(DIM, Dtype::F32)).unwrap();
    let mut tx = w.begin();
    tx.add_items(batch(&[1, 2, 3], DIM, 0)).unwrap();
    tx.commit().unwrap();
    // Snapshot 2 refreshes a statistic.
    let mut tx = w.begin();
    tx.update_stats(ItemBatch::new(vec![2]).stat("ctr_1d", vec![0.75]))
        .unwrap();
    tx.commit().unwrap();
    drop(w);
    let newest = p.join("MANIFEST-00000000000000000002");
    let mut b = std::fs::read(&newest).unwrap();
    let at = b.len() - 60; // inside the metadata
    b[at] ^= 0x10;
    std::fs::write(&newest, &b).unwrap();
    let before = common::files(p);

    // Readers fall back, and say so.
    let store = Store::open(p).unwrap();
    assert_eq!(store.snapshot().number(), 1);
    let skipped = store.skipped_manifests();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].0, "MANIFEST-00000000000000000002");

    // A writer refuses to publish over the damaged snapshot, naming it and
    // the recovery, and changes nothing.
    match Writer::open(p) {
        Err(e @ Error::DamagedManifest { .. }) => {
            assert_eq!(e.path(), Some(newest.as_path()));
            let msg = e.to_string();
            assert!(msg.contains("--set-aside-damaged"), "{msg}");
            assert!(msg.contains("snapshot 1"), "{msg}");
        }
        other => panic!("expected DamagedManifest, got {other:?}"),
    }
    assert_eq!(common::files(p), before);

    // The explicit recovery sets it aside; writers then publish on top of
    // snapshot 1 under a number never used before.
    let moved = Writer::set_aside_damaged_manifests(p).unwrap();
    assert_eq!(moved, vec![p.join("MANIFEST-00000000000000000002.damaged")]);
    assert!(Writer::set_aside_damaged_manifests(p).unwrap().is_empty());
    let mut w = Writer::open(p).unwrap();
    let mut tx = w.begin();
    tx.update_stats(ItemBatch::new(vec![3]).stat("ctr_1d", vec![0.5]))
        .unwrap();
    let snap = tx.commit().unwrap();
    assert!(snap.number() > 2, "{}", snap.number());
    assert_eq!(snap.parent(), Some(1));
    assert_eq!(snap.get_stat(3, "ctr_1d").unwrap(), Some(0.5));
    assert!(p.join("MANIFEST-00000000000000000002.damaged").exists());
    assert!(Store::open(p).unwrap().skipped_manifests().is_empty());

    // A sound manifest whose data file is gone: readers and writers refuse
    // it (no silent fallback); set_aside_damaged_snapshots gives it up
    // (set_aside_damaged_manifests leaves it: its manifest is sound).
    drop(w);
    let newest = snap.number();
    let own: Vec<String> = common::files(p)
        .into_iter()
        .filter(|n| n.starts_with(&format!("s{newest:010}-")))
        .collect();
    assert!(!own.is_empty());
    std::fs::remove_file(p.join(&own[0])).unwrap();
    assert!(Store::open(p).unwrap_err().is_not_found());
    assert!(Writer::set_aside_damaged_manifests(p).unwrap().is_empty());
    let moved = Writer::set_aside_damaged_snapshots(p).unwrap();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0].0, p.join(format!("MANIFEST-{newest:020}.damaged")));
    assert!(moved[0].1.contains(&own[0]), "{}", moved[0].1);
    assert_eq!(Store::open(p).unwrap().snapshot().number(), 1);
    assert!(Writer::set_aside_damaged_snapshots(p).unwrap().is_empty());
}

/// Three snapshots, each adding a segment: the newest's segment files are
/// referenced by it alone. Returns the path of its embedding file.
fn three_snapshots(dir: &std::path::Path) -> std::path::PathBuf {
    let mut w = Writer::create(dir, schema(DIM, Dtype::F32)).unwrap();
    w.set_retention(no_grace(10));
    for s in 0..3u64 {
        let mut tx = w.begin();
        tx.add_items(batch(&(s * 10..s * 10 + 10).collect::<Vec<_>>(), DIM, 0))
            .unwrap();
        tx.commit().unwrap();
    }
    let older: HashSet<String> = Store::open_at(dir, 2, vstore::OpenOptions::new())
        .unwrap()
        .snapshot()
        .files()
        .into_iter()
        .collect();
    let newest = Store::open(dir).unwrap().snapshot().files();
    let only3 = newest
        .into_iter()
        .find(|f| f.contains("-emb-") && !older.contains(f))
        .unwrap();
    dir.join(only3)
}

#[test]
fn every_snapshot_is_verified_on_its_own_when_the_newest_is_damaged() {
    // Damage the newest snapshot's own embedding file, first in its data
    // region (found only by verification), then in its metadata (found
    // when the snapshot is pinned, so Store::open refuses the store).
    for at_open in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let victim = three_snapshots(dir.path());
        let mut bytes = std::fs::read(&victim).unwrap();
        let at = if at_open { bytes.len() - 60 } else { 64 + 5 };
        bytes[at] ^= 0x10;
        std::fs::write(&victim, &bytes).unwrap();
        let case = if at_open { "metadata" } else { "data" };

        let check = |all: Vec<(u64, vstore::Result<vstore::VerifyReport>)>| {
            let verdicts: Vec<(u64, bool)> = all.iter().map(|(n, r)| (*n, r.is_ok())).collect();
            assert_eq!(verdicts, vec![(1, true), (2, true), (3, false)], "{case}");
            let e = all[2].1.as_ref().unwrap_err();
            assert_eq!(e.path(), Some(victim.as_path()), "{case}: {e}");
        };
        check(Store::verify_dir(dir.path()).unwrap());
        if at_open {
            let e = Store::open(dir.path()).unwrap_err();
            assert_eq!(e.path(), Some(victim.as_path()), "{e}");
        } else {
            let store = Store::open(dir.path()).unwrap();
            check(store.verify_all().unwrap());
            let e = store.verify().unwrap_err();
            assert_eq!(e.path(), Some(victim.as_path()), "{e}");
        }
        // The intact older snapshots open and read on their own.
        for n in [1u64, 2] {
            let store = Store::open_at(dir.path(), n, vstore::OpenOptions::new()).unwrap();
            let s = store.snapshot();
            assert_eq!(s.number(), n);
            assert_eq!(s.len(), 10 * n as usize);
            s.verify().unwrap();
            assert_eq!(
                s.get_embedding(n * 10 - 1, "prerank@v42").unwrap(),
                vector(n * 10 - 1, DIM, 0)
            );
        }
        let e = Store::open_at(dir.path(), 7, vstore::OpenOptions::new()).unwrap_err();
        assert!(e.is_not_found(), "{e}");
    }
}

/// The background prefault checksums what it faulted in: a damaged byte in
/// an embedding row (under only its chunk's checksum, no structural check)
/// is served as a wrong value until then, and from then on every query and
/// read of the snapshot is `Error::Corrupt` naming the file; an intact
/// store verifies every byte it faulted in and reports no damage; without
/// the prefault nothing is checked (the documented gap).
#[test]
fn background_checksums_turn_a_damaged_data_byte_into_an_error_naming_the_file() {
    const DIM: u32 = 8;
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema(DIM, Dtype::F32)).unwrap();
    let ids: Vec<u64> = (0..200).collect();
    let mut tx = w.begin();
    tx.add_items(batch(&ids, DIM, 0)).unwrap();
    tx.commit().unwrap();
    drop(w);

    // Intact: everything faulted in is verified, no damage.
    let store = Store::open(dir.path()).unwrap();
    let p = store.wait_prefault().expect("a background prefault");
    assert!(p.finished && !p.stopped && p.damage.is_none(), "{p:?}");
    assert!(
        p.bytes_verified >= p.bytes_done && p.bytes_done > 0,
        "{p:?}"
    );
    let user = vec![0.25f32; DIM as usize];
    let q = vstore::Query::ids("prerank@v42", &user, &ids, 5);
    let before = store.snapshot().query(&q).unwrap();
    drop(store);

    // One byte of item 7's vector flipped (f32 rows of 32 bytes after the
    // 64-byte header).
    let emb = dir.path().join("s0000000001-g0-emb-prerank@v42.vcol");
    let mut bytes = std::fs::read(&emb).unwrap();
    bytes[64 + 7 * 32 + 3] ^= 0x20;
    std::fs::write(&emb, &bytes).unwrap();

    // Without the prefault, the damaged value is read as it is.
    let off = Store::open_with(
        dir.path(),
        vstore::OpenOptions::new().prefault(vstore::Prefault::Off),
    )
    .unwrap();
    assert_ne!(
        off.snapshot().get_embedding(7, "prerank@v42").unwrap(),
        vector(7, DIM, 0)
    );
    drop(off);

    let store = Store::open(dir.path()).unwrap();
    let p = store.wait_prefault().unwrap();
    let damage = p.damage.clone().expect("damage reported");
    assert!(damage.contains("emb-prerank@v42.vcol"), "{damage}");
    let snap = store.snapshot();
    let is_emb = |e: &Error| e.path() == Some(emb.as_path()) && matches!(e, Error::Corrupt { .. });
    let e = snap.query(&q).unwrap_err();
    assert!(is_emb(&e), "{e:?}");
    for r in snap.query_batch(&[q, q]) {
        assert!(is_emb(r.as_ref().unwrap_err()), "{r:?}");
    }
    let e = snap.get_embedding(3, "prerank@v42").unwrap_err();
    assert!(is_emb(&e), "{e:?}");
    let e = snap.get_stat(3, "ctr_1d").unwrap_err();
    assert!(is_emb(&e), "{e:?}");
    let e = snap.item(3).unwrap_err();
    assert!(is_emb(&e), "{e:?}");
    // `verify` says the same, naming the file.
    assert!(is_emb(&store.verify().unwrap_err()));
    // The intact result came from the undamaged store: the same query
    // answered then (the test's own check that the query was a real one).
    assert_eq!(before.hits.len(), 5);
}

#[test]
fn a_stray_name_with_the_largest_number_is_named_in_the_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let w = common::store_of(dir.path(), DIM, &[1]);
    drop(w);
    let stray = format!("MANIFEST-{}.tmp", u64::MAX);
    std::fs::write(dir.path().join(&stray), b"").unwrap();
    let e = Writer::open(dir.path()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&stray) && msg.contains("remove it"), "{msg}");
    // Readers are not affected; once the stray is gone, writers open.
    assert_eq!(Store::open(dir.path()).unwrap().snapshot().len(), 1);
    std::fs::remove_file(dir.path().join(&stray)).unwrap();
    Writer::open(dir.path()).unwrap();
}
