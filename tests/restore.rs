//! `Writer::restore`: an old snapshot's content published as the newest,
//! sharing its files; refused, naming them, when gc collected its files.

mod common;

use std::time::Duration;

use common::{batch, schema, vector};
use vstore::{Dtype, Error, Retention, Store, Writer};

const DIM: u32 = 8;
const KEY: &str = "prerank@v42";

#[test]
fn an_old_snapshot_comes_back_as_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema(DIM, Dtype::F32)).unwrap();
    let mut tx = w.begin();
    tx.add_items(batch(&[1, 2, 3], DIM, 0)).unwrap();
    tx.set_metadata("release", "good").unwrap();
    let good = tx.commit().unwrap();
    let good_files = {
        let mut f = common::files(dir.path());
        f.retain(|n| n.starts_with('s'));
        f
    };
    // Later snapshots: a delete, an upsert, new items, a metadata change.
    let mut tx = w.begin();
    tx.delete_items(&[1]).unwrap();
    tx.upsert_items(batch(&[2], DIM, 9)).unwrap();
    tx.add_items(batch(&[10, 11], DIM, 0)).unwrap();
    tx.set_metadata("release", "bad").unwrap();
    let bad = tx.commit().unwrap();
    assert_eq!(bad.len(), 4);

    let back = w.restore(good.number()).unwrap();
    assert!(back.number() > bad.number());
    assert_eq!(back.parent(), Some(bad.number()));
    assert_eq!(back.metadata("release"), Some("good"));
    assert_eq!(
        back.metadata("vstore.restored_from"),
        Some(good.number().to_string().as_str())
    );
    let store = Store::open(dir.path()).unwrap();
    let s = store.snapshot();
    assert_eq!(s.number(), back.number());
    assert_eq!(s.ids().collect::<Vec<_>>(), vec![1, 2, 3]);
    for id in [1, 2, 3] {
        assert_eq!(s.get_embedding(id, KEY).unwrap(), vector(id, DIM, 0));
    }
    assert!(s.lookup(10).is_none());
    // Its files are the old ones, shared (no new data file).
    let mut now: Vec<String> = common::files(dir.path());
    now.retain(|n| n.starts_with('s'));
    assert!(good_files.iter().all(|f| now.contains(f)));
    assert!(s.verify().is_ok());
    // Writing goes on from the restored content; the restore key does not
    // carry over, and segment ids stay unique.
    let mut tx = w.begin();
    tx.add_items(batch(&[20], DIM, 0)).unwrap();
    let next = tx.commit().unwrap();
    assert_eq!(next.metadata("vstore.restored_from"), None);
    assert_eq!(next.len(), 4);
    let mut ids: Vec<u64> = next.segments().iter().map(|g| g.id()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), next.segments().len());
    // The new segment's id was never used by the snapshots restored past.
    let newest_seg = next.segments().iter().map(|g| g.id()).max().unwrap();
    assert!(bad.segments().iter().all(|b| b.id() < newest_seg));
}

#[test]
fn restore_is_refused_naming_collected_files_and_bad_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = common::store_of(dir.path(), DIM, &[1, 2, 3]);
    let first = w.snapshot().unwrap().number();
    assert!(
        matches!(w.restore(first), Err(Error::InvalidInput(m)) if m.contains("newest already"))
    );
    assert!(matches!(w.restore(99), Err(Error::InvalidInput(m)) if m.contains("does not exist")));
    // A compaction, then gc keeping only the newest snapshot: the first
    // snapshot's manifest and files go. An operator's copy of its manifest
    // put back is refused, naming the files gc collected.
    let mut tx = w.begin();
    tx.delete_items(&[1]).unwrap();
    tx.compact().unwrap();
    tx.commit().unwrap();
    let manifest = dir.path().join(format!("MANIFEST-{first:020}"));
    let saved = std::fs::read(&manifest).unwrap();
    w.set_retention(Retention {
        keep_last: 1,
        grace: Duration::ZERO,
    });
    let report = w.gc().unwrap();
    assert!(report.removed_snapshots.contains(&first));
    assert!(!report.removed_files.is_empty());
    // The old manifest put back (an operator's copy): its files are gone.
    std::fs::write(&manifest, saved).unwrap();
    match w.restore(first) {
        Err(Error::InvalidInput(m)) => {
            assert!(m.contains("gc collected"), "{m}");
            assert!(m.contains(report.removed_files[0].as_str()), "{m}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}
