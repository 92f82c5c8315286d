//! Shared by `benches/query.rs` and `examples/peer_bench.rs`: the benchmark
//! stores (built once under `target/vstore-bench/`), candidate sets, and
//! timing helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use vstore::{Dtype, ItemBatch, Schema, Store, Writer};

/// Embedding versions of a benchmark store: one per dtype, same vectors.
pub const DTYPES: [(Dtype, &str); 4] = [
    (Dtype::F32, "prerank@f32"),
    (Dtype::F16, "prerank@f16"),
    (Dtype::Bf16, "prerank@bf16"),
    (Dtype::I8, "prerank@i8"),
];

/// xorshift64*: deterministic pseudo-random numbers.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// The id of row `i` (spread over the u64 range, not sorted).
pub fn id_of(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5bd1_e995
}

/// The vector of row `i`.
pub fn vector(i: u64, dim: usize, out: &mut Vec<f32>) {
    let mut r = Rng(i.wrapping_mul(0xD6E8_FEB8_6659_FD93) | 1);
    out.extend((0..dim).map(|_| r.unit()));
}

pub fn store_dir(rows: usize, dim: usize) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/vstore-bench")
        .join(format!("query-{rows}-d{dim}"))
}

/// Opens (building it the first time) a store of `rows` items with one
/// embedding version per dtype at dimension `dim`, and a categorical column.
pub fn store(rows: usize, dim: usize) -> Store {
    let dir = store_dir(rows, dim);
    if let Ok(s) = Store::open(&dir) {
        if s.snapshot().len() == rows {
            return s;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let t = Instant::now();
    let mut schema = Schema::new().categorical("category", 0);
    for (dtype, key) in DTYPES {
        let (space, version) = key.split_once('@').unwrap();
        schema = schema.embedding(space, version, dim as u32, dtype);
    }
    let mut w = Writer::create(&dir, schema).unwrap();
    let ids: Vec<u64> = (0..rows as u64).map(id_of).collect();
    let mut vecs = Vec::with_capacity(rows * dim);
    for i in 0..rows as u64 {
        vector(i, dim, &mut vecs);
    }
    let mut batch = ItemBatch::new(ids.clone())
        .categorical("category", (0..rows as u32).map(|i| i % 100).collect());
    for (_, key) in DTYPES {
        batch = batch.embedding(key, vecs.clone());
    }
    let mut tx = w.begin();
    tx.add_items(batch).unwrap();
    tx.commit().unwrap();
    eprintln!("built {rows}x{dim} benchmark store in {:.1?}", t.elapsed());
    Store::open(&dir).unwrap()
}

/// `count` candidate sets of `n` distinct random rows: (ids, row indices).
pub fn candidate_sets(rows: usize, n: usize, count: usize, seed: u64) -> Vec<(Vec<u64>, Vec<u64>)> {
    let mut r = Rng(seed | 1);
    (0..count)
        .map(|_| {
            let mut seen = std::collections::HashSet::with_capacity(n);
            let mut rws = Vec::with_capacity(n);
            while rws.len() < n {
                let row = r.next() % rows as u64;
                if seen.insert(row) {
                    rws.push(row);
                }
            }
            (rws.iter().map(|&i| id_of(i)).collect(), rws)
        })
        .collect()
}

/// User vectors.
pub fn users(count: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut r = Rng(seed | 1);
    (0..count)
        .map(|_| (0..dim).map(|_| r.unit()).collect())
        .collect()
}

/// Median of `xs` (seconds).
pub fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}
