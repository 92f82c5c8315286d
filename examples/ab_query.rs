//! A/B harness for query tuning knobs: alternates variants query by query on
//! the same candidate sets (so machine noise hits every variant alike) and
//! prints each variant's median, beside the floor.
//! `cargo run --release --example ab_query`; env: DIM, N, KEY
//! (`prerank@f16` ...), ROWS (store size; default 1,000,000; 5,000 with
//! SETS=1 keeps everything in cache and so measures the CPU work alone),
//! SETS (candidate sets; 1 = fully warm caches),
//! VARIANTS (`probe:rows[:near],...`; see `vstore::experiments`; needs `--features experiments`).
use std::sync::atomic::Ordering;
use std::time::Instant;

use vstore::{bench_support, experiments, Query};

#[path = "../benches/support/mod.rs"]
mod support;

fn main() {
    let dim: usize = std::env::var("DIM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let key = std::env::var("KEY").unwrap_or("prerank@f32".into());
    let rows: usize = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let store = support::store(rows, dim);
    let snap = store.snapshot();
    let nsets: usize = std::env::var("SETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let sets = support::candidate_sets(rows, n, nsets, n as u64);
    let users = support::users(512, dim, 7);
    // probe:rows[:near[:chunk]] = ids ahead whose home slots are prefetched, rows
    // prefetched ahead by the gather loop and, for rows of three lines or
    // more, rows whose every line it prefetches (default 8; 0: all lines
    // at `rows`) and candidates per step of a fused two-tower query
    // (default 64).
    let variants: Vec<(usize, usize, usize, usize)> = std::env::var("VARIANTS")
        .unwrap_or("16:16:0,16:16:4,16:16:8,16:20:8,16:8:0".into())
        .split(',')
        .map(|v| {
            let f: Vec<usize> = v.split(':').map(|x| x.parse().unwrap()).collect();
            (
                f[0],
                f[1],
                f.get(2).copied().unwrap_or(8),
                f.get(3).copied().unwrap_or(64),
            )
        })
        .collect();
    let mut times = vec![Vec::new(); variants.len()];
    // Per variant: resolve, gather (+ dot), top k, as the result times them.
    let mut stages = vec![[Vec::new(), Vec::new(), Vec::new()]; variants.len()];
    for it in 0..3000 {
        for (vi, &(p, r, near, chunk)) in variants.iter().enumerate() {
            // A different candidate set for every query, so no variant runs
            // on lines another variant just brought into cache.
            let i = (it * variants.len() + vi) % sets.len();
            experiments::PROBE_AHEAD.store(p, Ordering::Relaxed);
            experiments::ROW_AHEAD.store(r, Ordering::Relaxed);
            experiments::NEAR_AHEAD.store(near, Ordering::Relaxed);
            experiments::FUSED_CHUNK.store(chunk, Ordering::Relaxed);
            let q = Query::ids(&key, &users[i], &sets[i].0, 500);
            let s = Instant::now();
            let r = std::hint::black_box(snap.query(&q).unwrap());
            if it >= 20 {
                times[vi].push(s.elapsed().as_secs_f64());
                let t = &r.timings;
                for (v, d) in stages[vi].iter_mut().zip([t.resolve, t.gather, t.topk]) {
                    v.push(d.as_secs_f64());
                }
            }
        }
    }
    let lines: Vec<Vec<&u8>> = sets
        .iter()
        .take(64)
        .map(|(ids, _)| bench_support::floor_lines(&snap, &key, ids).unwrap())
        .collect();
    for (name, touch) in bench_support::TOUCHES {
        let mut ft = Vec::new();
        for it in 0..2000 {
            let l = &lines[it % lines.len()];
            let s = Instant::now();
            std::hint::black_box(touch(l));
            ft.push(s.elapsed().as_secs_f64());
        }
        println!(
            "floor ({name} prefetch): median {:.3} ms",
            support::median(&mut ft) * 1e3
        );
    }
    for (vi, &(p, r, near, chunk)) in variants.iter().enumerate() {
        let [rs, ga, tk] = &mut stages[vi];
        println!(
            "probe {p:>2} rows {r:>2} near {near:>2} chunk {chunk:>3}: median {:.3} ms \
             (resolve {:.3}, gather {:.3}, top k {:.3})",
            support::median(&mut times[vi]) * 1e3,
            support::median(rs) * 1e3,
            support::median(ga) * 1e3,
            support::median(tk) * 1e3
        );
    }
}
