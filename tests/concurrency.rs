//! 8 reader threads query snapshots (pinned, and refreshed as they go) and
//! check every result against the snapshot's known contents, while the
//! writer publishes and GC keeps 3 snapshots. Afterwards the process's file
//! descriptors and memory mappings are back to their baseline.
//!
//! `VSTORE_CONCURRENCY_PUBLISHES` sets the number of publishes (default 300;
//! the long setting is 1000 or more).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vstore::{Dtype, ItemBatch, Query, Retention, Schema, Store, Writer};

const DIM: usize = 8;
const ITEMS: u64 = 2000;

fn vec_of(id: u64) -> Vec<f32> {
    (0..DIM as u64)
        .map(|j| (((id * 5 + j * 3) % 16) as f32 - 8.0) / 4.0)
        .collect()
}

/// Statistic of item `id` in snapshot `n`.
fn ctr(id: u64, n: u64) -> f32 {
    ((id + n) % 1000) as f32
}

fn count(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

/// Mappings of files under `dir` (thread stacks and malloc arenas, which
/// glibc keeps after threads exit, are not the store's).
fn maps(dir: &std::path::Path) -> usize {
    let dir = dir.canonicalize().unwrap();
    let dir = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/maps")
        .map(|s| s.lines().filter(|l| l.contains(&*dir)).count())
        .unwrap_or(0)
}

#[test]
fn eight_readers_while_the_writer_publishes_and_collects() {
    let publishes: u64 = common::env_or("VSTORE_CONCURRENCY_PUBLISHES", 300);
    let dir = tempfile::tempdir().unwrap();
    let schema = Schema::new()
        .stat("ctr", 0.0)
        .embedding("s", "v1", DIM as u32, Dtype::F16);
    let mut w = Writer::create(dir.path(), schema).unwrap();
    w.set_retention(Retention {
        keep_last: 3,
        grace: Duration::ZERO,
    });
    let ids: Vec<u64> = (0..ITEMS).collect();
    let mut tx = w.begin();
    let first = tx.number();
    tx.add_items(
        ItemBatch::new(ids.clone())
            .stat("ctr", ids.iter().map(|&i| ctr(i, first)).collect())
            .embedding("s@v1", ids.iter().flat_map(|&i| vec_of(i)).collect()),
    )
    .unwrap();
    tx.commit().unwrap();

    let store = Arc::new(Store::open(dir.path()).unwrap());
    let (fds0, maps0) = (count("/proc/self/fd"), maps(dir.path()));
    let stop = Arc::new(AtomicBool::new(false));
    let checked = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for t in 0..8u64 {
        let (store, stop, checked) = (store.clone(), stop.clone(), checked.clone());
        readers.push(std::thread::spawn(move || {
            let user: Vec<f32> = (0..DIM)
                .map(|j| ((j as u64 + t) % 5) as f32 - 2.0)
                .collect();
            let cands: Vec<u64> = (0..ITEMS).filter(|i| (i + t) % 3 == 0).collect();
            let mut want: Vec<(f32, u64)> = cands
                .iter()
                .map(|&id| {
                    (
                        vec_of(id)
                            .iter()
                            .zip(&user)
                            .map(|(a, b)| a * b)
                            .sum::<f32>(),
                        id,
                    )
                })
                .collect();
            want.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
            want.truncate(20);
            while !stop.load(Ordering::Relaxed) {
                if t % 2 == 0 {
                    store.refresh().unwrap();
                }
                let s = store.snapshot();
                let n = s.number();
                // Statistics all from this snapshot: no torn read.
                for id in (t..ITEMS).step_by(97) {
                    assert_eq!(
                        s.get_stat(id, "ctr").unwrap(),
                        Some(ctr(id, n)),
                        "snapshot {n} id {id}"
                    );
                }
                let r = s.query(&Query::ids("s@v1", &user, &cands, 20)).unwrap();
                let got: Vec<(f32, u64)> = r.hits.iter().map(|h| (h.score, h.id)).collect();
                assert_eq!(got, want, "snapshot {n}");
                let r = s.query(&Query::full_scan("s@v1", &user, 5)).unwrap();
                assert_eq!(r.scored, ITEMS as usize);
                checked.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for p in 1..=publishes {
        let mut tx = w.begin();
        let n = tx.number();
        tx.update_stats(
            ItemBatch::new(ids.clone()).stat("ctr", ids.iter().map(|&i| ctr(i, n)).collect()),
        )
        .unwrap();
        tx.commit().unwrap();
        w.gc().unwrap();
        if p % 50 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("a reader failed");
    }
    assert!(
        checked.load(Ordering::Relaxed) > 8,
        "readers ran {} checks",
        checked.load(Ordering::Relaxed)
    );
    // Back to baseline: the store now pins only its newest snapshot.
    store.refresh().unwrap();
    w.gc().unwrap();
    let kept = store.snapshots().unwrap();
    assert!(kept.len() <= 3, "{kept:?}");
    let (fds1, maps1) = (count("/proc/self/fd"), maps(dir.path()));
    assert!(fds1 <= fds0 + 2, "file descriptors {fds0} -> {fds1}");
    assert!(maps0 > 0);
    assert_eq!(maps1, maps0, "mappings of store files {maps0} -> {maps1}");
    eprintln!(
        "{publishes} publishes, {} reader checks; fds {fds0} -> {fds1}, mappings {maps0} -> {maps1}",
        checked.load(Ordering::Relaxed)
    );
}
