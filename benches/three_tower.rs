//! Three-tower query latency (criterion, one thread): docs/DESIGN.md's example
//! model (cross 22 -> 64 -> 32, upper 160 -> 256 -> 128, three heads) on
//! N = 1,000,000 items (d = 64, f16), n = 1,000 / 5,000 / 10,000 candidate
//! ids, k = 500; the model as given and with its first-layer item part
//! precomputed in f16; then the same for the contract v2 MMoE bundle
//! (`support::mmoe_bundle`, group `mmoe`). Throughput is reported in model
//! FLOPs (the whole model as written, 2 per multiply-add), so criterion's
//! "elem/s" reads as FLOP/s.
//!
//! `cargo bench --bench three_tower` (`-- 'three_tower/|mmoe/'` for the
//! two query groups only); `VSTORE_TT_ROWS=200000` for a smaller store.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vstore::{Precision, Query};

#[path = "support/mod.rs"]
mod support;

fn bench(c: &mut Criterion) {
    eprintln!("kernel level: {}", vstore::bench_support::kernel_level());
    let rows: usize = std::env::var("VSTORE_TT_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let users = support::users(16, 64, 0x5EED);
    let inputs: Vec<_> = (0..16u64).map(support::tt_inputs).collect();
    let mut g = c.benchmark_group("three_tower");
    g.sample_size(20);
    // As given, and with the first layer's item part precomputed in f16
    // (`Transaction::add_model_precomputed`).
    // At f32 and with the bundle at bf16 or int8 (`Transaction::add_model_at`).
    let f16 = Some(vstore::Dtype::F16);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for (variant, pre, precision) in [
        ("", None, Precision::F32),
        ("_precomputed_f16", f16, Precision::F32),
        ("_bf16", None, Precision::Bf16),
        ("_precomputed_f16_bf16", f16, Precision::Bf16),
        ("_int8", None, Precision::Int8),
    ] {
        let store = support::tt_store_at(rows, pre, precision);
        let snap = store.snapshot();
        let model = snap.model(support::TT_KEY).unwrap();
        for n in [1_000usize, 5_000, 10_000] {
            let sets = support::candidate_sets(rows, n, 16, 0xC0FFEE + n as u64);
            g.throughput(Throughput::Elements((2 * model.macs_per_item() * n) as u64));
            // Also on two threads (`Query::threads`) and, at bf16, in exact
            // mode (`Query::exact`: the f32 top k).
            // And `_2pool`: two runs on a rayon pool of two threads the
            // caller keeps (`Query::pool`).
            let mut modes = vec![
                ("", false, 1, None),
                ("_2threads", false, 2, None),
                ("_2pool", false, 2, Some(&pool)),
            ];
            if precision != Precision::F32 {
                modes.push(("_exact", true, 1, None));
            }
            for (suffix, exact, threads, on) in modes {
                let mut q = 0;
                g.bench_function(format!("n{n}_k500{variant}{suffix}"), |b| {
                    b.iter(|| {
                        q = (q + 1) % 16;
                        let query = Query::ids(support::TT_KEY, &users[q], &sets[q].0, 500)
                            .three_tower(&inputs[q])
                            .threads(threads);
                        let query = match on {
                            Some(pool) => query.pool(pool),
                            None => query,
                        };
                        let query = if exact { query.exact() } else { query };
                        snap.query(&query).unwrap().hits.len()
                    })
                });
            }
        }
    }
    g.finish();
    // The contract v2 MMoE bundle (`support::mmoe_bundle`: shared bottom
    // 160 -> 256, 4 experts 256 -> 128, a gate and a 128 -> 64 tower per
    // head, 4 heads) on the same items, users, inputs and candidate sets, in
    // its own store; as given and precomputed in f16 as above.
    let mut g = c.benchmark_group("mmoe");
    g.sample_size(20);
    let name = support::MMOE_NAME;
    for (variant, pre) in [("", None), ("_precomputed_f16", Some(vstore::Dtype::F16))] {
        let store = support::mmoe_store(rows, pre);
        let snap = store.snapshot();
        let model = snap.model_named(support::TT_KEY, name).unwrap();
        for n in [1_000usize, 5_000, 10_000] {
            let sets = support::candidate_sets(rows, n, 16, 0xC0FFEE + n as u64);
            g.throughput(Throughput::Elements((2 * model.macs_per_item() * n) as u64));
            let mut q = 0;
            g.bench_function(format!("n{n}_k500{variant}"), |b| {
                b.iter(|| {
                    q = (q + 1) % 16;
                    let query = Query::ids(support::TT_KEY, &users[q], &sets[q].0, 500)
                        .three_tower(&inputs[q])
                        .model(name);
                    snap.query(&query).unwrap().hits.len()
                })
            });
        }
    }
    g.finish();
    // The layer products alone, in cache: a block of 48 rows (the query's
    // block) through each layer shape of the model: the first upper layer
    // after the tower split (item + cross inputs, or the cross inputs alone
    // when the item part is precomputed), the second, the cross tower's
    // two and the heads.
    let mut g = c.benchmark_group("layer_product");
    for (k, n) in [
        (96usize, 256usize),
        (32, 256),
        (256, 128),
        (22, 64),
        (64, 32),
        (128, 3),
    ] {
        for p in [Precision::F32, Precision::Bf16, Precision::Int8] {
            let mut lp = vstore::bench_support::LayerProduct::new(48, k, n).at(p);
            let suffix = match p {
                Precision::F32 => String::new(),
                p => format!("_{}", p.name()),
            };
            g.throughput(Throughput::Elements(lp.flops()));
            g.bench_function(format!("m48_k{k}_n{n}{suffix}"), |b| b.iter(|| lp.run()));
        }
    }
    // The AMX bf16 peak: tile products on registers alone (no loads), so
    // the layer products above read as a share of it (GFLOP/s = elements/s
    // / 1e9). Skipped, with a message, where AMX is not usable.
    match vstore::bench_support::amx_bf16_peak(1) {
        Some(flops) => {
            g.throughput(Throughput::Elements(flops * 1000));
            g.bench_function("amx_bf16_peak", |b| {
                b.iter(|| vstore::bench_support::amx_bf16_peak(1000))
            });
        }
        None => eprintln!("layer_product/amx_bf16_peak skipped: AMX is not usable on this CPU"),
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
