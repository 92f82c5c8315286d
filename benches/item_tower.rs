//! The item tower in the store (issue 27): what computing vectors at write
//! time costs, with the example tower (`ExampleBundle::item_tower_files`:
//! category, brand, price → 29 → 256 → 128 → 64, 96,768 FLOP per item),
//! d = 64 stored as f16.
//!
//! (a) Adding 100,000 fresh items without vectors (the tower computes them)
//!     against adding the same items with vectors given: publish time per
//!     item, and the difference per item against the tower's FLOPs.
//! (b) A statistics refresh of every item of an N-item store (default 1M)
//!     whose vectors were all computed, against the same refresh of a store
//!     whose vectors were given: the refresh must cost the same (it never
//!     touches vectors).
//!
//! Medians; stores are built under `target/vstore-bench/item_tower/`.
//! `benches/peers/item_tower.py` times the same tower in numpy on the
//! inputs this bench writes there.
//!
//! Run: `cargo bench --bench item_tower` (`VSTORE_BENCH_ROWS` changes N,
//! `VSTORE_BENCH_FRESH` the fresh batch).

use std::path::{Path, PathBuf};
use std::time::Instant;

use vstore::{Dtype, ExampleBundle, ItemBatch, Schema, Writer};

#[path = "support/mod.rs"]
mod support;

const DIM: usize = ExampleBundle::DIM;
const FLOP_PER_ITEM: f64 = 96_768.0;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn schema() -> Schema {
    Schema::new()
        .categorical("category", 0)
        .categorical("brand", 0)
        .numeric("price", 0.0)
        .stat("ctr_1d", 0.0)
        .embedding("prerank", "v1", DIM as u32, Dtype::F16)
}

/// Profiles of items `ids` (deterministic; some brands and prices missing).
fn profile(ids: &[u64]) -> ItemBatch {
    let mut r = support::Rng(ids.first().copied().unwrap_or(0) ^ 0x5EED);
    let category = ids.iter().map(|_| (r.next() % 200) as u32).collect();
    let brand = ids
        .iter()
        .map(|_| {
            let keep = !r.next().is_multiple_of(20);
            keep.then(|| (r.next() % 5000) as u32)
        })
        .collect();
    let price = ids
        .iter()
        .map(|_| {
            let keep = !r.next().is_multiple_of(50);
            keep.then(|| (r.unit() * 8.0).exp())
        })
        .collect();
    ItemBatch::new(ids.to_vec())
        .categorical("category", category)
        .categorical_opt("brand", brand)
        .numeric_opt("price", price)
        .stat(
            "ctr_1d",
            ids.iter().map(|&i| (i % 97) as f32 / 97.0).collect(),
        )
}

fn vectors(ids: &[u64]) -> Vec<f32> {
    let mut v = Vec::with_capacity(ids.len() * DIM);
    for &i in ids {
        support::vector(i, DIM, &mut v);
    }
    v
}

/// A new store at `dir` holding the example item tower.
fn new_store(dir: &Path) -> Writer {
    let _ = std::fs::remove_dir_all(dir);
    let mut w = Writer::create(dir, schema()).unwrap();
    let (json, weights) = ExampleBundle::new("prerank", "v1").item_tower_files();
    let mut tx = w.begin();
    tx.add_model(&json, &weights).unwrap();
    tx.commit().unwrap();
    w
}

/// Median seconds of `times` runs of `op`.
fn median_of(times: usize, mut op: impl FnMut(usize)) -> f64 {
    let mut t: Vec<f64> = (0..times)
        .map(|i| {
            let s = Instant::now();
            op(i);
            s.elapsed().as_secs_f64()
        })
        .collect();
    support::median(&mut t)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks benches to list their tests
    }
    let base: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/vstore-bench/item_tower");
    std::fs::create_dir_all(&base).unwrap();
    let fresh = env("VSTORE_BENCH_FRESH", 100_000);
    let n = env("VSTORE_BENCH_ROWS", 1_000_000);
    println!("kernel level: {}", vstore::bench_support::kernel_level());

    // (a) Fresh items: computed against given, into one store, new ids each run.
    let dir = base.join("fresh");
    let mut w = new_store(&dir);
    // Batches are made before the clock starts (making vectors is not the
    // store's work).
    let batch = |k: u64, given: bool| {
        let ids: Vec<u64> = (k * fresh as u64..(k + 1) * fresh as u64).collect();
        let b = profile(&ids);
        if given {
            b.embedding("prerank@v1", vectors(&ids))
        } else {
            b
        }
    };
    let mut time_adds = |first: u64, given: bool| {
        let mut batches: Vec<Option<ItemBatch>> =
            (first..first + 5).map(|k| Some(batch(k, given))).collect();
        median_of(5, |i| {
            let b = batches[i].take().unwrap();
            let mut tx = w.begin();
            tx.add_items(b).unwrap();
            tx.commit().unwrap();
        })
    };
    let computed = time_adds(0, false);
    let given = time_adds(5, true);
    let snap = w.snapshot().unwrap();
    assert_eq!(snap.computed_count("prerank@v1").unwrap(), 5 * fresh as u64);
    // The tower's compute alone, over one segment of the fresh items.
    let mut out = Vec::new();
    let mut flops = 0;
    let alone = median_of(7, |_| {
        flops =
            vstore::bench_support::item_tower_compute(&snap, "prerank@v1", 0, &mut out).unwrap();
    });
    assert_eq!(flops as f64, FLOP_PER_ITEM);
    println!(
        "(a) the tower alone on {fresh} items: {:.1} ms ({:.2} µs/item, {:.1} GFLOP/s)",
        alone * 1e3,
        alone / fresh as f64 * 1e6,
        FLOP_PER_ITEM * fresh as f64 / alone / 1e9
    );
    let per = |s: f64| s / fresh as f64 * 1e6;
    let extra = computed - given;
    println!(
        "(a) add {fresh} items: vectors computed by the tower {:.1} ms ({:.2} µs/item), \
         given {:.1} ms ({:.2} µs/item): {:.2} µs/item more ({FLOP_PER_ITEM} FLOP/item; \
         given vectors are checked for finiteness, computed ones are not)",
        computed * 1e3,
        per(computed),
        given * 1e3,
        per(given),
        per(extra),
    );
    // Inputs for the numpy peer (the same profiles and the bundle).
    write_peer_inputs(&base, fresh);
    drop(w);
    let _ = std::fs::remove_dir_all(&dir);

    // (b) Statistics refresh of every item, computed vectors against given.
    let mut results = Vec::new();
    for (name, with_vectors) in [("computed", false), ("given", true)] {
        let dir = base.join(format!("refresh-{name}"));
        let mut w = new_store(&dir);
        let t = Instant::now();
        let mut tx = w.begin();
        for start in (0..n as u64).step_by(250_000) {
            let ids: Vec<u64> = (start..(start + 250_000).min(n as u64)).collect();
            let mut b = profile(&ids);
            if with_vectors {
                b = b.embedding("prerank@v1", vectors(&ids));
            }
            tx.add_items(b).unwrap();
        }
        tx.commit().unwrap();
        let built = t.elapsed();
        let all: Vec<u64> = (0..n as u64).collect();
        let refresh = median_of(5, |i| {
            let mut tx = w.begin();
            let ctr = all.iter().map(|&id| ((id + i as u64) % 991) as f32 / 991.0);
            tx.update_stats(ItemBatch::new(all.clone()).stat("ctr_1d", ctr.collect()))
                .unwrap();
            tx.commit().unwrap();
            w.gc().unwrap();
        });
        let snap = w.snapshot().unwrap();
        let c = snap.computed_count("prerank@v1").unwrap();
        println!(
            "(b) {n} items, vectors {name} ({c} computed; built in {built:.1?}): \
             refresh ctr_1d of every item {:.1} ms",
            refresh * 1e3
        );
        results.push(refresh);
        drop(w);
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!(
        "(b) refresh with computed vectors / with given vectors: {:.3}",
        results[0] / results[1]
    );
}

/// Writes the fresh batch's profile (`category.npy` u32, `brand.npy` u32
/// with missing as the default 0, `price.npy` f32 with missing as 0) and
/// the tower bundle under `base/peer/` for `benches/peers/item_tower.py`.
fn write_peer_inputs(base: &Path, rows: usize) {
    let dir = base.join("peer");
    std::fs::create_dir_all(&dir).unwrap();
    let ids: Vec<u64> = (0..rows as u64).collect();
    let mut r = support::Rng(0x5EED);
    let (mut cat, mut brand, mut price) = (Vec::new(), Vec::new(), Vec::new());
    for _ in &ids {
        cat.push((r.next() % 200) as u32);
    }
    for _ in &ids {
        brand.push(if !r.next().is_multiple_of(20) {
            (r.next() % 5000) as u32
        } else {
            0
        });
    }
    for _ in &ids {
        price.push(if !r.next().is_multiple_of(50) {
            (r.unit() * 8.0).exp()
        } else {
            0.0
        });
    }
    let le32 = |v: &[u32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    support::write_npy(&dir.join("category.npy"), "<u4", &[rows], &le32(&cat));
    support::write_npy(&dir.join("brand.npy"), "<u4", &[rows], &le32(&brand));
    let pb: Vec<u8> = price.iter().flat_map(|x| x.to_le_bytes()).collect();
    support::write_npy(&dir.join("price.npy"), "<f4", &[rows], &pb);
    let (json, weights) = ExampleBundle::new("prerank", "v1").item_tower_files();
    std::fs::write(dir.join("model.json"), json).unwrap();
    std::fs::write(dir.join("weights.safetensors"), weights).unwrap();
}
