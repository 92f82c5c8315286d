//! A/B harness for the cost of segments (issue 7: at most 1.3x the
//! single-segment latency at 16 segments): the same 1M items in 1 segment,
//! in 16 equal segments (the worst case: every candidate is as likely in
//! any segment), and shaped as live updates leave them (one base segment
//! and 15 adds of 1,000 items). Stores are built once under
//! target/vstore-bench/; queries alternate between the variants on the
//! same candidate sets; medians.
//! `cargo run --release --example ab_segments`; env: BLOOM (Bloom prefetch
//! distance, default 16), ROWS.
use std::time::Instant;

use vstore::{Query, Store};

#[path = "../benches/support/mod.rs"]
mod support;

fn open(n: usize, name: &str, segs: usize, build: impl FnOnce(&std::path::Path)) -> Store {
    let d = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("target/vstore-bench/segments-{n}-{name}"));
    if let Ok(s) = Store::open(&d) {
        if s.snapshot().len() == n && s.snapshot().segments().len() == segs {
            return s;
        }
    }
    build(&d);
    Store::open(&d).unwrap()
}

fn main() {
    let n: usize = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let variants = [
        (
            "1 segment",
            open(n, "1", 1, |d| drop(support::segmented_store(d, n, 1))),
        ),
        (
            "16 equal segments",
            open(n, "16", 16, |d| drop(support::segmented_store(d, n, 16))),
        ),
        (
            "base + 15 adds of 1,000",
            open(n, "lsm16", 16, |d| drop(support::lsm_store(d, n, 15, 1000))),
        ),
    ];
    let snaps: Vec<_> = variants.iter().map(|(_, s)| s.snapshot()).collect();
    // The id directory's build, on fresh pins of the same snapshot.
    for (name, store) in &variants {
        let mut t = Vec::new();
        let mut bytes = 0;
        for _ in 0..5 {
            let snap = store.open_snapshot(store.snapshot().number()).unwrap();
            let s = Instant::now();
            bytes = snap.prepare_id_directory().unwrap();
            t.push(s.elapsed().as_secs_f64());
        }
        println!(
            "  {name:<24} id directory {:.1} MB, built in {:.1} ms (median of 5)",
            bytes as f64 / 1e6,
            support::median(&mut t) * 1e3
        );
    }
    let sets = support::candidate_sets(n, 5000, 256, 5000);
    let users = support::users(256, support::UPDATES_DIM, 7);
    let nv = snaps.len();
    let mut times = vec![Vec::new(); nv];
    for it in 0..1500 {
        for (v, t) in times.iter_mut().enumerate() {
            let i = (it * nv + v) % sets.len();
            let q = Query::ids("prerank@v42", &users[i], &sets[i].0, 500);
            let s = Instant::now();
            std::hint::black_box(snaps[v].query(&q).unwrap());
            if it >= 50 {
                t.push(s.elapsed().as_secs_f64());
            }
        }
    }
    let base = support::median(&mut times[0].clone());
    println!(
        "n=5000 k=500, {n} items f16 d=64, medians of {} queries:",
        times[0].len()
    );
    for ((name, _), t) in variants.iter().zip(&mut times) {
        let m = support::median(t);
        println!("  {name:<24} {:.3} ms ({:.2}x)", m * 1e3, m / base);
    }
}
