//! Open time and resident memory right after open, for stores of 100k, 1M
//! and 10M rows (d = 64, f16, one segment). Open must not grow with rows:
//! it maps files and validates headers, footers and metadata only.
//! `open` is timed with the background prefault off and on (the default:
//! it starts a thread; the store is dropped before the thread has read
//! much, which it then stops); the resident memory is measured with it off.
//!
//! Stores are built once under `target/vstore-bench/` and reused.
//! `VSTORE_BENCH_MAX_ROWS=1000000` skips the 10M store (it takes ~1.5 GB of
//! disk and a minute or two to build).
//!
//! Run: `cargo bench --bench open`

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use vstore::{Dtype, ItemBatch, OpenOptions, Prefault, Schema, Store, Writer};

const DIM: u32 = 64;

fn store_dir(rows: usize) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/vstore-bench")
        .join(format!("open-{rows}"))
}

fn ensure_store(rows: usize) -> PathBuf {
    let dir = store_dir(rows);
    if Store::open(&dir).is_ok_and(|s| s.snapshot().len() == rows) {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let t = Instant::now();
    let schema = Schema::new()
        .categorical("category", 0)
        .stat("ctr_1d", 0.0)
        .embedding("prerank", "v42", DIM, Dtype::F16);
    let mut w = Writer::create(&dir, schema).unwrap();
    let ids: Vec<u64> = (0..rows as u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    let mut x = 0x1234_5678u32;
    let vecs: Vec<f32> = (0..rows * DIM as usize)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    let batch = ItemBatch::new(ids.clone())
        .categorical("category", ids.iter().map(|&i| (i % 100) as u32).collect())
        .stat(
            "ctr_1d",
            ids.iter().map(|&i| (i % 1000) as f32 / 1000.0).collect(),
        )
        .embedding("prerank@v42", vecs);
    let mut tx = w.begin();
    tx.add_items(batch).unwrap();
    tx.commit().unwrap();
    eprintln!("built {rows}-row store in {:.1?}", t.elapsed());
    dir
}

fn off() -> OpenOptions {
    OpenOptions::new().prefault(Prefault::Off)
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4
}

fn sizes() -> Vec<usize> {
    let max: usize = std::env::var("VSTORE_BENCH_MAX_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    [100_000, 1_000_000, 10_000_000]
        .into_iter()
        .filter(|&n| n <= max)
        .collect()
}

fn bench_open(c: &mut Criterion) {
    let dirs: Vec<(usize, PathBuf)> = sizes().into_iter().map(|n| (n, ensure_store(n))).collect();
    let mut g = c.benchmark_group("open");
    for (rows, dir) in &dirs {
        // Resident memory added by one open (median of 5 fresh opens).
        let mut deltas: Vec<u64> = (0..5)
            .map(|_| {
                let before = rss_kib();
                let s = Store::open_with(dir, off()).unwrap();
                let after = rss_kib();
                black_box(&s);
                after.saturating_sub(before)
            })
            .collect();
        deltas.sort_unstable();
        let bytes: u64 = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        eprintln!(
            "open/{rows}: store {:.1} MiB on disk, resident after open +{} KiB (median of 5)",
            bytes as f64 / (1 << 20) as f64,
            deltas[2]
        );
        g.bench_with_input(BenchmarkId::new("prefault_off", rows), dir, |b, dir| {
            b.iter(|| black_box(Store::open_with(dir, off()).unwrap()))
        });
        g.bench_with_input(
            BenchmarkId::new("prefault_background", rows),
            dir,
            |b, dir| b.iter(|| black_box(Store::open(dir).unwrap())),
        );
    }
    g.finish();
}

criterion_group!(benches, bench_open);
criterion_main!(benches);
