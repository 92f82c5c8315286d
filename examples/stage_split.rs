//! Where a three-tower query's time goes, per stage, on one and two
//! threads: the medians of `QueryResult::timings` over repeated queries on
//! the benchmark store (N = 1M, the example bundle; built under
//! `target/vstore-bench/` by the benches if missing).
//!
//! `cargo run --release --example stage_split [-- n=10000 reps=200 precision=f32|bf16|int8]`;
//! `MODES=0123` with `--features experiments` adds two threads that start
//! scoring only once every candidate is resolved (`MODES` picks modes).

#[path = "../benches/support/mod.rs"]
mod support;

use std::time::Duration;
use vstore::{Precision, Query, Timings};

fn main() {
    let mut n = 10_000usize;
    let mut reps = 200usize;
    let mut precision = Precision::F32;
    for a in std::env::args().skip(1) {
        match a.split_once('=') {
            Some(("n", v)) => n = v.parse().expect("n"),
            Some(("reps", v)) => reps = v.parse().expect("reps"),
            Some(("precision", v)) => precision = Precision::parse(v).expect("precision"),
            _ => panic!("unknown argument {a}"),
        }
    }
    let rows = 1_000_000;
    let store = support::tt_store_at(rows, None, precision);
    let snap = store.snapshot();
    let users = support::users(16, 64, 0x5EED);
    let inputs: Vec<_> = (0..16u64).map(support::tt_inputs).collect();
    let sets = support::candidate_sets(rows, n, 16, 0xC0FFEE + n as u64);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    println!(
        "kernel level {}, precision {}, n = {n}, {reps} queries per mode",
        vstore::bench_support::kernel_level(),
        precision.name()
    );
    let all_modes = [
        ("1 thread", 1, false, false),
        ("2 threads", 2, false, false),
        ("pool of 2", 2, true, false),
        // Built with `--features experiments`: two threads that start
        // scoring only once every candidate is resolved.
        ("2 after", 2, false, true),
    ];
    // MODES=02 runs modes 0 and 2 only (default: 012; 3 needs
    // `--features experiments`).
    let only = std::env::var("MODES").unwrap_or_else(|_| "012".into());
    let modes: Vec<(&str, usize, bool, bool)> = (only.chars())
        .map(|c| all_modes[c.to_digit(10).expect("MODES: digits 0 to 3") as usize])
        .collect();
    let mut all: Vec<Vec<Timings>> = vec![Vec::new(); modes.len()];
    // Alternate the modes query by query so drift hits them alike.
    for i in 0..reps + 20 {
        for (m, &(_, threads, on_pool, after)) in modes.iter().enumerate() {
            #[cfg(feature = "experiments")]
            vstore::experiments::OVERLAP_RESOLVE
                .store(!after as usize, std::sync::atomic::Ordering::Relaxed);
            #[cfg(not(feature = "experiments"))]
            assert!(!after, "MODES=3 needs --features experiments");
            let q = i % 16;
            let mut query = Query::ids(support::TT_KEY, &users[q], &sets[q].0, 500)
                .three_tower(&inputs[q])
                .threads(threads);
            if on_pool {
                query = query.pool(&pool);
            }
            let r = snap.query(&query).unwrap();
            if i >= 20 {
                all[m].push(r.timings);
            }
        }
    }
    let med = |v: &[Timings], f: fn(&Timings) -> Duration| {
        let mut d: Vec<Duration> = v.iter().map(f).collect();
        d.sort();
        d[d.len() / 2].as_secs_f64() * 1e6
    };
    println!(
        "{:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "mode", "prepare", "resolve", "gather", "cross", "upper", "heads", "topk", "total"
    );
    for (m, &(name, ..)) in modes.iter().enumerate() {
        let v = &all[m];
        println!(
            "{name:>10} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0}",
            med(v, |t| t.prepare),
            med(v, |t| t.resolve),
            med(v, |t| t.gather),
            med(v, |t| t.cross),
            med(v, |t| t.upper),
            med(v, |t| t.heads),
            med(v, |t| t.topk),
            med(v, |t| t.total),
        );
    }
}
