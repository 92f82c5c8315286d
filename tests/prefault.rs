//! The latency guard (`OpenOptions::prefault`, `OpenOptions::mlock`): the
//! background prefault faults in every page of the store (checked with
//! `mincore` after the store's files were dropped from the page cache),
//! queries answer the same with it on or off (before it has finished,
//! while the id directory is still being built, and after), dropping a
//! store while it runs unmaps the store's files before the drop returns,
//! and `mlock` locks or
//! fails with the error naming `RLIMIT_MEMLOCK`.

mod common;

use std::path::Path;

use vstore::bench_support::{evict_store_files, resident_pages};
use vstore::{Dtype, OpenOptions, Prefault, Query, Store, Writer};

const DIM: u32 = 64;
const KEY: &str = "prerank@v42";

/// A store of three segments (a base, an add, an upsert of some base
/// rows) with deletes, of `rows` base items in f16.
fn build(dir: &Path, rows: u64) {
    let mut w = Writer::create(dir, common::schema(DIM, Dtype::F16)).unwrap();
    let base: Vec<u64> = (0..rows).collect();
    let mut tx = w.begin();
    tx.add_items(common::batch(&base, DIM, 0)).unwrap();
    tx.commit().unwrap();
    let mut tx = w.begin();
    let more: Vec<u64> = (rows..rows + rows / 10).collect();
    tx.add_items(common::batch(&more, DIM, 1)).unwrap();
    tx.commit().unwrap();
    let mut tx = w.begin();
    let up: Vec<u64> = (0..rows).step_by(17).collect();
    tx.upsert_items(common::batch(&up, DIM, 2)).unwrap();
    let del: Vec<u64> = (5..rows).step_by(23).collect();
    tx.delete_items(&del).unwrap();
    tx.commit().unwrap();
}

/// A directory on the target's file system (not a tmpfs, whose pages
/// cannot be dropped from the page cache).
fn target_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn queries(rows: u64) -> Vec<(Vec<f32>, Vec<u64>)> {
    (0..20u64)
        .map(|q| {
            let user = common::vector(q * 7919, DIM, 3);
            let cands: Vec<u64> = (0..2000u64)
                .map(|i| (i * 2654435761 + q * 97) % (rows + rows / 5))
                .collect();
            (user, cands)
        })
        .collect()
}

/// A query's hits (id, score bits) and the candidates not found.
type Answer = (Vec<(u64, u32)>, Vec<u64>);

fn answers(store: &Store, qs: &[(Vec<f32>, Vec<u64>)]) -> Vec<Answer> {
    let snap = store.snapshot();
    qs.iter()
        .map(|(user, cands)| {
            let r = snap.query(&Query::ids(KEY, user, cands, 100)).unwrap();
            let hits = r.hits.iter().map(|h| (h.id, h.score.to_bits())).collect();
            (hits, r.not_found)
        })
        .collect()
}

#[test]
fn background_prefault_faults_in_every_page() {
    let dir = target_dir();
    build(dir.path(), 200_000);

    // Without prefault, after eviction, what open reads is resident (the
    // headers, footers and metadata, each read around in a 2 MiB folio,
    // and the bundles): not all, which makes the check below able to fail.
    evict_store_files(dir.path()).unwrap();
    let off = Store::open_with(dir.path(), OpenOptions::new().prefault(Prefault::Off)).unwrap();
    assert_eq!(off.prefault_progress(), None);
    let (cold, total) = resident_pages(&off.snapshot()).unwrap();
    drop(off);
    eprintln!("cold open (prefault off): {cold} of {total} pages resident");
    assert!(
        cold * 3 < total * 2,
        "eviction did not work here: {cold} of {total} pages resident"
    );

    evict_store_files(dir.path()).unwrap();
    let store = Store::open(dir.path()).unwrap();
    let p = store
        .wait_prefault()
        .expect("a background prefault by default");
    assert!(p.finished && !p.stopped, "{p:?}");
    assert_eq!(p.snapshot, store.snapshot().number());
    assert!(p.bytes_total > 0 && p.bytes_done == p.bytes_total, "{p:?}");
    assert_eq!(p.bytes_skipped, 0, "{p:?}");
    let (resident, total) = resident_pages(&store.snapshot()).unwrap();
    assert_eq!(resident, total, "every page resident after the prefault");
}

#[test]
fn results_are_the_same_with_and_without_prefault() {
    let dir = target_dir();
    let rows = 40_000;
    build(dir.path(), rows);
    let qs = queries(rows);
    let off = Store::open_with(dir.path(), OpenOptions::new().prefault(Prefault::Off)).unwrap();
    let want = answers(&off, &qs);
    drop(off);
    for _ in 0..3 {
        evict_store_files(dir.path()).unwrap();
        // At once: the prefault (and the id directory) still under way.
        let on = Store::open(dir.path()).unwrap();
        assert_eq!(answers(&on, &qs), want);
        on.wait_prefault().unwrap();
        assert_eq!(answers(&on, &qs), want);
    }
    let lazy = Store::open_with(
        dir.path(),
        OpenOptions::new()
            .prefault(Prefault::Off)
            .prepare_id_directory(false),
    )
    .unwrap();
    assert_eq!(answers(&lazy, &qs), want);
}

#[test]
fn refresh_prefaults_the_new_snapshot_only_where_new() {
    let dir = target_dir();
    build(dir.path(), 20_000);
    let store = Store::open(dir.path()).unwrap();
    let first = store.wait_prefault().unwrap();
    let mut w = Writer::open(dir.path()).unwrap();
    let mut tx = w.begin();
    tx.add_items(common::batch(&[1_000_000, 1_000_001], DIM, 4))
        .unwrap();
    tx.commit().unwrap();
    assert!(store.refresh().unwrap());
    let second = store.wait_prefault().unwrap();
    assert_eq!(second.snapshot, first.snapshot + 1);
    assert!(second.finished && !second.stopped, "{second:?}");
    // The shared files are not read again: only the new segment's.
    assert!(
        second.bytes_total * 10 < first.bytes_total,
        "{second:?} after {first:?}"
    );
    let hit = store.snapshot().item(1_000_001).unwrap();
    assert!(hit.is_some());
}

/// The names of the store's files this process maps now.
fn mapped(dir: &Path) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let dir = dir.canonicalize().unwrap();
    let dir = dir.to_string_lossy();
    maps.lines().filter(|l| l.contains(&*dir)).count()
}

#[test]
fn dropping_a_store_while_it_prefaults_unmaps_its_files() {
    if !Path::new("/proc/self/maps").exists() {
        return;
    }
    let dir = target_dir();
    build(dir.path(), 60_000);
    for i in 0..6 {
        evict_store_files(dir.path()).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(mapped(dir.path()) > 0);
        if i % 2 == 1 {
            // A snapshot held past the store keeps its files mapped, and
            // stops the prefault all the same.
            let snap = store.snapshot();
            drop(store);
            assert!(mapped(dir.path()) > 0);
            drop(snap);
        } else {
            drop(store);
        }
        // The drop stopped the thread and waited for it to let go.
        assert_eq!(
            mapped(dir.path()),
            0,
            "the prefault thread keeps a dropped store mapped"
        );
    }
}

#[test]
fn mlock_locks_or_fails_naming_the_limit() {
    let dir = target_dir();
    build(dir.path(), 20_000);
    match Store::open_with(dir.path(), OpenOptions::new().mlock(true)) {
        Ok(store) => {
            let p = store.wait_prefault().unwrap();
            assert!(p.finished && !p.stopped);
            let qs = queries(20_000);
            let off =
                Store::open_with(dir.path(), OpenOptions::new().prefault(Prefault::Off)).unwrap();
            assert_eq!(answers(&store, &qs), answers(&off, &qs));
            if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
                let locked: u64 = status
                    .lines()
                    .find(|l| l.starts_with("VmLck:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                // Every page was faulted in, so every page is locked.
                assert!(locked * 1024 >= p.bytes_done, "VmLck {locked} kB, {p:?}");
            }
        }
        Err(e) => {
            assert!(matches!(e, vstore::Error::Mlock { .. }), "{e}");
            assert!(e.to_string().contains("RLIMIT_MEMLOCK"), "{e}");
        }
    }
}
