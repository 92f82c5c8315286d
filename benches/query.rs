//! Query latency, one thread: N = 1,000,000 items; d = 64 and 128;
//! n = 1,000 / 5,000 / 10,000 candidates; k = 500; every dtype; plus a full
//! scan. Beside each case, `floor/...` and `floor_l2/...` time the memory
//! floor of the same queries (the lower of the two is the floor; they
//! differ in the prefetch: 32 lines ahead into L1, or 64 ahead into L2):
//! one prefetched touch of every cache line the query must read
//! for each candidate (its id-index home slot and every line of its row;
//! the ids entries the query reads for the k hits only are left out),
//! which is the bytes touched divided by this machine's random-gather
//! bandwidth, measured here.
//!
//! `batch/...`: eight users over one candidate set, one query at a time
//! against one `Snapshot::query_batch` call (which resolves the candidates
//! once), d = 64, n = 5,000.
//!
//! Candidate sets rotate over 64 random draws so caches stay cold-ish.
//! Run: `cargo bench --bench query` (first run builds ~1.8 GB of stores
//! under target/vstore-bench/). `VSTORE_BENCH_ROWS` changes N.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use vstore::{bench_support, Query};

#[path = "support/mod.rs"]
mod support;

fn rows() -> usize {
    std::env::var("VSTORE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn bench(c: &mut Criterion) {
    let n_rows = rows();
    let k = 500;
    for dim in [64usize, 128] {
        let store = support::store(n_rows, dim);
        let snap = store.snapshot();
        let users = support::users(64, dim, 7);
        let mut g = c.benchmark_group(format!("query/N{n_rows}/d{dim}"));
        g.sample_size(20)
            .warm_up_time(std::time::Duration::from_millis(500))
            .measurement_time(std::time::Duration::from_secs(2));
        for n in [1000usize, 5000, 10_000] {
            let sets = support::candidate_sets(n_rows, n, 64, n as u64);
            for (_, key) in support::DTYPES {
                let mut i = 0;
                g.bench_function(BenchmarkId::new(format!("{key}/n{n}"), k), |b| {
                    b.iter(|| {
                        i = (i + 1) % sets.len();
                        let q = Query::ids(key, &users[i], &sets[i].0, k);
                        black_box(snap.query(&q).unwrap())
                    })
                });
                let lines: Vec<Vec<&u8>> = sets
                    .iter()
                    .map(|(ids, _)| bench_support::floor_lines(&snap, key, ids).unwrap())
                    .collect();
                let mut i = 0;
                g.bench_function(BenchmarkId::new(format!("floor/{key}/n{n}"), k), |b| {
                    b.iter(|| {
                        i = (i + 1) % lines.len();
                        black_box(bench_support::touch(&lines[i]))
                    })
                });
                g.bench_function(BenchmarkId::new(format!("floor_l2/{key}/n{n}"), k), |b| {
                    b.iter(|| {
                        i = (i + 1) % lines.len();
                        black_box(bench_support::touch_l2(&lines[i]))
                    })
                });
            }
        }
        g.finish();
        if dim == 64 {
            let mut g = c.benchmark_group(format!("batch/N{n_rows}/d{dim}"));
            g.sample_size(20)
                .warm_up_time(std::time::Duration::from_millis(500))
                .measurement_time(std::time::Duration::from_secs(2));
            let sets = support::candidate_sets(n_rows, 5000, 64, 5000);
            for (_, key) in support::DTYPES {
                for batched in [false, true] {
                    let mut i = 0;
                    let name = if batched { "query_batch" } else { "one_by_one" };
                    g.bench_function(BenchmarkId::new(format!("{key}/n5000/8users"), name), |b| {
                        b.iter(|| {
                            i = (i + 1) % sets.len();
                            let qs: Vec<Query> = (0..8)
                                .map(|u| Query::ids(key, &users[(i + u) % 64], &sets[i].0, k))
                                .collect();
                            if batched {
                                black_box(snap.query_batch(&qs));
                            } else {
                                for q in &qs {
                                    black_box(snap.query(q).unwrap());
                                }
                            }
                        })
                    });
                }
            }
            g.finish();
        }
        let mut g = c.benchmark_group(format!("full_scan/N{n_rows}/d{dim}"));
        g.sample_size(10)
            .warm_up_time(std::time::Duration::from_millis(500))
            .measurement_time(std::time::Duration::from_secs(3));
        for (_, key) in support::DTYPES {
            let mut i = 0;
            g.bench_function(BenchmarkId::new(key, k), |b| {
                b.iter(|| {
                    i = (i + 1) % users.len();
                    black_box(snap.query(&Query::full_scan(key, &users[i], k)).unwrap())
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
