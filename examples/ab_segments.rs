//! A/B harness for the cost of segments (issue 7: at most 1.3x the
//! single-segment latency at 16 segments): the same 1M items in 1 and in
//! 16 equal segments (built once under target/vstore-bench/), queries
//! alternating between the variants on the same candidate sets, medians.
//! `cargo run --release --example ab_segments`; env: BLOOM (prefetch
//! distances to try on the 16-segment store, e.g. `0,8,16`), ROWS.
use std::sync::atomic::Ordering;
use std::time::Instant;

use vstore::{bench_support, Query, Store};

#[path = "../benches/support/mod.rs"]
mod support;

fn open(n: usize, segs: usize) -> Store {
    let d = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("target/vstore-bench/segments-{n}-{segs}"));
    if let Ok(s) = Store::open(&d) {
        if s.snapshot().len() == n && s.snapshot().segments().len() == segs {
            return s;
        }
    }
    drop(support::segmented_store(&d, n, segs));
    Store::open(&d).unwrap()
}

fn main() {
    let n: usize = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let blooms: Vec<usize> = std::env::var("BLOOM")
        .unwrap_or("0,8,16".into())
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    let one = open(n, 1).snapshot();
    let many = open(n, 16).snapshot();
    let sets = support::candidate_sets(n, 5000, 256, 5000);
    let users = support::users(256, support::UPDATES_DIM, 7);
    // Variant 0: one segment; then the 16-segment store per distance.
    let nv = 1 + blooms.len();
    let mut times = vec![Vec::new(); nv];
    for it in 0..1500 {
        for (v, t) in times.iter_mut().enumerate() {
            let i = (it * nv + v) % sets.len();
            let q = Query::ids("prerank@v42", &users[i], &sets[i].0, 500);
            let snap = if v == 0 {
                &one
            } else {
                bench_support::BLOOM_KNOB.store(blooms[v - 1], Ordering::Relaxed);
                &many
            };
            let s = Instant::now();
            std::hint::black_box(snap.query(&q).unwrap());
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
    println!("   1 segment:                 {:.3} ms", base * 1e3);
    for (v, b) in blooms.iter().enumerate() {
        let m = support::median(&mut times[v + 1]);
        println!(
            "  16 segments, bloom ahead {b:>2}: {:.3} ms ({:.2}x)",
            m * 1e3,
            m / base
        );
    }
}
