//! In-cache kernel speed, ns per row: vstore's runtime-dispatched AVX2
//! loops (f32 user vector against f32 / f16 / bf16 / i8 rows) against
//! simsimd's dot products (which take both operands in the same type, so its
//! f16 case also converts the user vector to f16). 1,000 rows, L2-resident.
//!
//! Run: `cargo bench --bench kernels`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use simsimd::SpatialSimilarity;
use vstore::{bench_support, Dtype, ItemBatch, Schema, Store, Writer};

const ROWS: usize = 1000;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    for dim in [32usize, 64, 128, 256] {
        let vals: Vec<f32> = (0..ROWS * dim)
            .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let user: Vec<f32> = (0..dim)
            .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
            .collect();
        // Encode the rows exactly as the store does, by building a store.
        let sub = dir.path().join(format!("d{dim}"));
        let mut schema = Schema::new();
        for d in [Dtype::F32, Dtype::F16, Dtype::Bf16, Dtype::I8] {
            schema = schema.embedding("k", d.name(), dim as u32, d);
        }
        let mut w = Writer::create(&sub, schema).unwrap();
        let mut b = ItemBatch::new((0..ROWS as u64).collect());
        for d in [Dtype::F32, Dtype::F16, Dtype::Bf16, Dtype::I8] {
            b = b.embedding(&format!("k@{}", d.name()), vals.clone());
        }
        let mut tx = w.begin();
        tx.add_items(b).unwrap();
        let snap = tx.commit().unwrap();
        let store = Store::open(&sub).unwrap();
        let _ = store;

        let mut g = c.benchmark_group(format!("kernel/d{dim}"));
        g.throughput(Throughput::Elements(ROWS as u64));
        g.sample_size(30);
        let mut out = vec![0f32; ROWS];
        for d in [Dtype::F32, Dtype::F16, Dtype::Bf16, Dtype::I8] {
            let col = snap.embedding(0, &format!("k@{}", d.name())).unwrap();
            let (bytes, stride) = (col.as_bytes(), col.stride());
            g.bench_function(BenchmarkId::new("vstore", d.name()), |b| {
                b.iter(|| {
                    bench_support::score_block(d, &user, bytes, stride, &mut out);
                    black_box(&out);
                })
            });
        }
        g.bench_function(BenchmarkId::new("simsimd", "f32"), |b| {
            b.iter(|| {
                for (o, row) in out.iter_mut().zip(vals.chunks_exact(dim)) {
                    *o = <f32 as SpatialSimilarity>::dot(&user, row).unwrap_or(0.0) as f32;
                }
                black_box(&out);
            })
        });
        let uh: Vec<simsimd::f16> = user.iter().map(|&x| simsimd::f16::from_f32(x)).collect();
        let rh: Vec<simsimd::f16> = vals.iter().map(|&x| simsimd::f16::from_f32(x)).collect();
        g.bench_function(BenchmarkId::new("simsimd", "f16"), |b| {
            b.iter(|| {
                for (o, row) in out.iter_mut().zip(rh.chunks_exact(dim)) {
                    *o = <simsimd::f16 as SpatialSimilarity>::dot(&uh, row).unwrap_or(0.0) as f32;
                }
                black_box(&out);
            })
        });
        let ui: Vec<i8> = user.iter().map(|&x| (x * 64.0) as i8).collect();
        let ri: Vec<i8> = vals.iter().map(|&x| (x * 127.0) as i8).collect();
        g.bench_function(BenchmarkId::new("simsimd", "i8"), |b| {
            b.iter(|| {
                for (o, row) in out.iter_mut().zip(ri.chunks_exact(dim)) {
                    *o = <i8 as SpatialSimilarity>::dot(&ui, row).unwrap_or(0.0) as f32;
                }
                black_box(&out);
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
