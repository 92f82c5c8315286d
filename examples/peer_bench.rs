//! Exports a benchmark store's data for the peer comparison
//! (`benches/peers/run.sh`) and times vstore on exactly the same queries.
//!
//! `cargo run --release --example peer_bench -- --out DIR [--rows 1000000]
//! [--dim 64] [--queries 128] [--ns 1000,5000,10000] [--k 500] [--iters 400]`
//!
//! Writes into DIR: meta.json, ids.npy (u64, row order), vectors_f32.npy,
//! user.npy, cands_n{n}.npy (u64) and rows_n{n}.npy (i64) per n, and
//! vstore.json with vstore's median latency and gather floor per n and dtype.

use std::path::PathBuf;
use std::time::Instant;

use vstore::{bench_support, Query};

#[path = "../benches/support/mod.rs"]
mod support;

fn bytes_u64(v: impl Iterator<Item = u64>) -> Vec<u8> {
    v.flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_f32(v: impl Iterator<Item = f32>) -> Vec<u8> {
    v.flat_map(|x| x.to_le_bytes()).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let out = PathBuf::from(get("--out").expect("--out DIR is required"));
    let rows: usize = get("--rows").map_or(1_000_000, |v| v.parse().unwrap());
    let dim: usize = get("--dim").map_or(64, |v| v.parse().unwrap());
    let queries: usize = get("--queries").map_or(128, |v| v.parse().unwrap());
    let k: usize = get("--k").map_or(500, |v| v.parse().unwrap());
    let iters: usize = get("--iters").map_or(400, |v| v.parse().unwrap());
    let ns: Vec<usize> = get("--ns").map_or(vec![1000, 5000, 10_000], |v| {
        v.split(',').map(|x| x.parse().unwrap()).collect()
    });
    std::fs::create_dir_all(&out).unwrap();
    let export = !args.iter().any(|a| a == "--no-export");
    let only = get("--dtype");

    let store = support::store(rows, dim);
    let snap = store.snapshot();
    let users = support::users(queries, dim, 7);

    if export {
        // The data the peers use: the same vectors as the f32 column.
        let ids: Vec<u64> = (0..rows as u64).map(support::id_of).collect();
        support::write_npy(
            &out.join("ids.npy"),
            "<u8",
            &[rows],
            &bytes_u64(ids.iter().copied()),
        );
        let mut vecs = Vec::with_capacity(rows * dim);
        for i in 0..rows as u64 {
            support::vector(i, dim, &mut vecs);
        }
        support::write_npy(
            &out.join("vectors_f32.npy"),
            "<f4",
            &[rows, dim],
            &bytes_f32(vecs.into_iter()),
        );
        support::write_npy(
            &out.join("user.npy"),
            "<f4",
            &[queries, dim],
            &bytes_f32(users.iter().flatten().copied()),
        );
    }

    let mut results = Vec::new();
    for &n in &ns {
        let sets = support::candidate_sets(rows, n, queries, n as u64);
        if export {
            support::write_npy(
                &out.join(format!("cands_n{n}.npy")),
                "<u8",
                &[queries, n],
                &bytes_u64(sets.iter().flat_map(|s| s.0.iter().copied())),
            );
            support::write_npy(
                &out.join(format!("rows_n{n}.npy")),
                "<i8",
                &[queries, n],
                &bytes_u64(sets.iter().flat_map(|s| s.1.iter().copied())),
            );
        }
        for (dtype, key) in support::DTYPES {
            if only.as_ref().is_some_and(|o| o != dtype.name()) {
                continue;
            }
            let mut t = Vec::with_capacity(iters);
            for it in 0..iters + 10 {
                let i = it % queries;
                let q = Query::ids(key, &users[i], &sets[i].0, k);
                let start = Instant::now();
                let r = std::hint::black_box(snap.query(&q).unwrap());
                let e = start.elapsed().as_secs_f64();
                assert_eq!(r.hits.len(), k.min(n));
                if it >= 10 {
                    t.push(e);
                }
            }
            let med = support::median(&mut t);
            let lines: Vec<Vec<&u8>> = sets
                .iter()
                .map(|(ids, _)| bench_support::floor_lines(&snap, key, ids).unwrap())
                .collect();
            // The floor: the faster of the two prefetch hints' touches.
            let mut floor = f64::INFINITY;
            for (_, touch) in bench_support::TOUCHES {
                let mut f = Vec::with_capacity(iters);
                for it in 0..iters + 10 {
                    let i = it % queries;
                    let start = Instant::now();
                    std::hint::black_box(touch(&lines[i]));
                    if it >= 10 {
                        f.push(start.elapsed().as_secs_f64());
                    }
                }
                floor = floor.min(support::median(&mut f));
            }
            let bytes = lines[0].len() * 64;
            println!(
                "vstore n={n:<6} {:<5} median {:>7.3} ms   floor {:>7.3} ms ({} KiB of lines)   ratio {:.2}",
                dtype.name(),
                med * 1e3,
                floor * 1e3,
                bytes / 1024,
                med / floor
            );
            results.push(format!(
                "{{\"n\": {n}, \"dtype\": \"{}\", \"median_ms\": {:.6}, \"floor_ms\": {:.6}, \"lines_bytes\": {bytes}}}",
                dtype.name(),
                med * 1e3,
                floor * 1e3
            ));
        }
    }
    std::fs::write(
        out.join("vstore.json"),
        format!("{{\"results\": [\n  {}\n]}}\n", results.join(",\n  ")),
    )
    .unwrap();
    std::fs::write(
        out.join("meta.json"),
        format!(
            "{{\"rows\": {rows}, \"dim\": {dim}, \"k\": {k}, \"queries\": {queries}, \"ns\": [{}]}}\n",
            ns.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
        ),
    )
    .unwrap();
}
