//! Live-update costs at N = 1,000,000 items, d = 64, f16 (issue 7):
//! publish latency and bytes written for (a) adding 1,000 items,
//! (b) refreshing one statistics column for every item, (c) compacting 10
//! segments, in a transaction and (c') as a background job with the
//! writer publishing meanwhile; and (d) query latency at n = 5,000 with 1, 4 and 16 segments.
//! Medians; stores are built under target/vstore-bench/.
//!
//! Run: `cargo bench --bench updates` (`VSTORE_BENCH_ROWS` changes N).

use std::path::{Path, PathBuf};
use std::time::Instant;

use vstore::{ItemBatch, Query, Store, Writer};

#[path = "support/mod.rs"]
mod support;

const DIM: usize = support::UPDATES_DIM;

fn rows() -> usize {
    std::env::var("VSTORE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn names(dir: &Path) -> std::collections::HashSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Runs `op` (one publish) `times` times; returns median seconds and the
/// median bytes of the files each publish created.
fn measure(
    dir: &Path,
    w: &mut Writer,
    times: usize,
    mut op: impl FnMut(&mut Writer, usize),
) -> (f64, u64) {
    let mut t = Vec::new();
    let mut bytes = Vec::new();
    for i in 0..times {
        let before = names(dir);
        let s = Instant::now();
        op(w, i);
        t.push(s.elapsed().as_secs_f64());
        let new: u64 = names(dir)
            .difference(&before)
            .map(|n| std::fs::metadata(dir.join(n)).map(|m| m.len()).unwrap_or(0))
            .sum();
        bytes.push(new as f64);
        w.gc().unwrap();
    }
    (support::median(&mut t), support::median(&mut bytes) as u64)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks benches to list their tests
    }
    let n = rows();
    let base: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/vstore-bench/updates");
    std::fs::create_dir_all(&base).unwrap();
    let dir = base.join("one");
    let t = Instant::now();
    let mut w = support::segmented_store(&dir, n, 1);
    println!(
        "built {n} items (d={DIM}, f16) in {:.1?}; store {:.1} MiB",
        t.elapsed(),
        dir_bytes(&dir) as f64 / 1048576.0
    );

    let mut next = n as u64;
    let (t, b) = measure(&dir, &mut w, 9, |w, _| {
        let mut tx = w.begin();
        tx.add_items(support::updates_batch(next..next + 1000))
            .unwrap();
        tx.commit().unwrap();
        next += 1000;
    });
    println!(
        "(a) add 1,000 items:            publish {:>8.1} ms, {:>10} bytes written",
        t * 1e3,
        b
    );

    let all: Vec<u64> = w.snapshot().unwrap().ids().collect();
    let (t, b) = measure(&dir, &mut w, 5, |w, i| {
        let mut tx = w.begin();
        tx.update_stats(
            ItemBatch::new(all.clone()).stat(
                "ctr_1d",
                all.iter()
                    .map(|&id| ((id + i as u64) % 997) as f32)
                    .collect(),
            ),
        )
        .unwrap();
        tx.commit().unwrap();
    });
    let stats_bytes = all.len() * 4;
    println!(
        "(b) refresh ctr_1d of {} items: publish {:>8.1} ms, {:>10} bytes written (one column is {} bytes; the stats file holds both stats columns)",
        all.len(),
        t * 1e3,
        b,
        stats_bytes
    );

    let cdir = base.join("ten");
    let mut cw = support::segmented_store(&cdir, n, 10);
    let (t, b) = measure(&cdir, &mut cw, 1, |w, _| {
        let mut tx = w.begin();
        assert!(tx.compact().unwrap());
        tx.commit().unwrap();
    });
    println!(
        "(c) compact 10 segments:        publish {:>8.1} ms, {:>10} bytes written",
        t * 1e3,
        b
    );

    // (c') The same compaction off the writer's path: the merge runs on a
    // thread while the writer publishes small updates touching the merged
    // rows; only the final publish (rebase + commit) holds the writer.
    drop(cw);
    std::fs::remove_dir_all(&cdir).unwrap();
    let mut cw = support::segmented_store(&cdir, n, 10);
    let job = cw.start_compaction().unwrap().expect("ten segments");
    let started = Instant::now();
    let merging = std::thread::spawn(move || {
        let r = job.run().unwrap();
        (r, started.elapsed())
    });
    let mut during = Vec::new();
    let mut next_id = 2 * n as u64;
    let mut round = 0u64;
    while !merging.is_finished() {
        let s = Instant::now();
        let mut tx = cw.begin();
        tx.add_items(support::updates_batch(next_id..next_id + 100))
            .unwrap();
        // Delete ten merged items and refresh the statistics of ten others.
        let del: Vec<u64> = (0..10).map(|k| support::id_of(round * 20 + k)).collect();
        tx.delete_items(&del).unwrap();
        let upd: Vec<u64> = (10..20).map(|k| support::id_of(round * 20 + k)).collect();
        tx.update_stats(ItemBatch::new(upd).stat("ctr_1d", vec![0.5; 10]))
            .unwrap();
        tx.commit().unwrap();
        during.push(s.elapsed().as_secs_f64());
        next_id += 100;
        round += 1;
    }
    let (done, job_time) = merging.join().unwrap();
    let before = names(&cdir);
    let s = Instant::now();
    let mut tx = cw.begin();
    assert!(tx.apply_compaction(done).unwrap());
    let snap = tx.commit().unwrap();
    let final_publish = s.elapsed().as_secs_f64();
    let final_bytes: u64 = names(&cdir)
        .difference(&before)
        .map(|f| {
            std::fs::metadata(cdir.join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    println!(
        "(c') background compaction of 10 segments: merge {:>8.1} ms on a thread; {} publishes meanwhile (median {:.1} ms, max {:.1} ms); final publish {:>6.1} ms, {} bytes ({} segments after)",
        job_time.as_secs_f64() * 1e3,
        during.len(),
        support::median(&mut during.clone()) * 1e3,
        during.iter().cloned().fold(0.0, f64::max) * 1e3,
        final_publish * 1e3,
        final_bytes,
        snap.segments().len()
    );
    drop(snap);
    drop(cw);

    // (d) Query latency by segment count, same items.
    let sets = support::candidate_sets(n, 5000, 128, 5000);
    let users = support::users(128, DIM, 7);
    let mut first = None;
    // Equal segments (every candidate as likely in any of them: the worst
    // case), and the shape live updates leave: a base and 15 adds of 1,000.
    for (segs, lsm) in [(1usize, false), (4, false), (16, false), (16, true)] {
        let d = base.join(format!("q{segs}{}", if lsm { "-lsm" } else { "" }));
        if lsm {
            drop(support::lsm_store(&d, n, segs - 1, 1000));
        } else {
            drop(support::segmented_store(&d, n, segs));
        }
        let store = Store::open(&d).unwrap();
        let snap = store.snapshot();
        let mut t = Vec::new();
        for it in 0..1500 {
            let i = it % sets.len();
            let q = Query::ids("prerank@v42", &users[i], &sets[i].0, 500);
            let s = Instant::now();
            std::hint::black_box(snap.query(&q).unwrap());
            if it >= 100 {
                t.push(s.elapsed().as_secs_f64());
            }
        }
        let m = support::median(&mut t);
        let base_m = *first.get_or_insert(m);
        println!(
            "(d) query n=5000 k=500, {segs:>2} segments{}: {:>6.3} ms ({:.2}x the 1-segment latency)",
            if lsm { " (base + 15 adds of 1,000)" } else { "" },
            m * 1e3,
            m / base_m
        );
    }
}
