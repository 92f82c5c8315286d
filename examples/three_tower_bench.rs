//! Times three-tower queries on the benchmark store and exports the same
//! inputs for the onnxruntime / numpy comparison
//! (`benches/peers/run_three_tower.sh`).
//!
//! `cargo run --release --example three_tower_bench -- --out DIR
//! [--bundle v1|mmoe] [--rows 1000000] [--ns 1000,5000,10000] [--k 500]
//! [--iters 64]`
//! (`--iters`: timed queries per variant, rounded up to passes of 16;
//! `--bundle`: the contract v1 example bundle `support::tt_bundle`, the
//! default, or the contract v2 MMoE bundle `support::mmoe_bundle`, each in
//! its own benchmark store with the same items and inputs)
//!
//! Writes into DIR/three_tower (DIR/mmoe for `--bundle mmoe`):
//! bundle/{model.json,weights.safetensors},
//! tt_meta.json, tt_x_{n}.npy (per candidate: user vector, item vector,
//! cross-tower input features, already gathered and transformed),
//! tt_expected_{n}.npy (vstore's fused score per candidate, same order) and
//! tt_vstore.json (vstore's median latency per n, candidate ids in, top k out).

use std::path::PathBuf;
use std::time::Instant;

use vstore::Query;

#[path = "../benches/support/mod.rs"]
mod support;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let bundle = get("--bundle").unwrap_or_else(|| "v1".into());
    let (m, sub) = match bundle.as_str() {
        "v1" => (support::TT_V1, "three_tower"),
        "mmoe" => (support::TT_MMOE, "mmoe"),
        other => panic!("--bundle {other}: want v1 or mmoe"),
    };
    let out = PathBuf::from(get("--out").unwrap_or_else(|| "target/peers".into())).join(sub);
    let rows: usize = get("--rows").map_or(1_000_000, |s| s.parse().unwrap());
    let k: usize = get("--k").map_or(500, |s| s.parse().unwrap());
    let iters: usize = get("--iters").map_or(64, |s| s.parse().unwrap());
    let ns: Vec<usize> = get("--ns")
        .unwrap_or_else(|| "1000,5000,10000".into())
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    std::fs::create_dir_all(out.join("bundle")).unwrap();
    let store = support::tt_model_store(m, rows, None);
    let variants = [
        (
            "precomputed_f32",
            support::tt_model_store(m, rows, Some(vstore::Dtype::F32)),
        ),
        (
            "precomputed_f16",
            support::tt_model_store(m, rows, Some(vstore::Dtype::F16)),
        ),
        // The bundle added at bf16 (`Transaction::add_model_at`): AMX
        // where the CPU has it.
        (
            "bf16",
            support::tt_model_store_at(m, rows, None, vstore::Precision::Bf16),
        ),
        (
            "int8",
            support::tt_model_store_at(m, rows, None, vstore::Precision::Int8),
        ),
        (
            "precomputed_f16_bf16",
            support::tt_model_store_at(m, rows, Some(vstore::Dtype::F16), vstore::Precision::Bf16),
        ),
    ];
    let snap = store.snapshot();
    let key = support::TT_KEY;
    let model = snap.model_named(key, m.name).unwrap();
    let (json, weights) = (m.files)();
    std::fs::write(out.join("bundle/model.json"), &json).unwrap();
    std::fs::write(out.join("bundle/weights.safetensors"), &weights).unwrap();
    let st = safetensors::SafeTensors::deserialize(&weights).unwrap();
    let table = |name: &str| -> Vec<f32> {
        st.tensor(name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (imp_tab, cat_tab) = (table("emb.imp_bucket"), table("emb.category"));
    let users = support::users(16, 64, 0x5EED);
    let macs = model.macs_per_item();
    let macs_split = model.macs_per_item_split();
    let cross_in = 22;
    println!(
        "bundle {:?} ({}): {macs} multiply-adds per item as written, {macs_split} as vstore runs it",
        m.name,
        model.describe()
    );
    let mut report = Vec::new();
    for &n in &ns {
        let sets = support::candidate_sets(rows, n, 16, 0xC0FFEE + n as u64);
        let inputs: Vec<_> = (0..16u64).map(support::tt_inputs).collect();
        // Export query 0: the concatenated inputs and vstore's scores.
        let (ids, rws) = &sets[0];
        let r = snap
            .query(
                &Query::ids(key, &users[0], ids, n)
                    .three_tower(&inputs[0])
                    .model(m.name),
            )
            .unwrap();
        let score_of: std::collections::HashMap<u64, f32> =
            r.hits.iter().map(|h| (h.id, h.score)).collect();
        let (user_stats, by_cat) = support::tt_user_values(0);
        let mut x = Vec::with_capacity(n * (128 + cross_in));
        let mut expected = Vec::with_capacity(n);
        for (&id, &row) in ids.iter().zip(rws) {
            x.extend_from_slice(&users[0]);
            x.extend(snap.get_embedding(id, key).unwrap());
            let (cat, ctr, imp) = support::tt_item(row);
            x.push(ctr.ln_1p());
            let b = support::TT_BUCKETS.partition_point(|&t| t <= imp);
            x.extend_from_slice(&imp_tab[b * 4..b * 4 + 4]);
            x.extend_from_slice(&cat_tab[cat as usize * 8..cat as usize * 8 + 8]);
            x.extend_from_slice(&user_stats);
            x.push(by_cat.get(cat as usize).copied().unwrap_or(0.0));
            expected.push(score_of[&id]);
        }
        let bytes = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
        support::write_npy(
            &out.join(format!("tt_x_{n}.npy")),
            "<f4",
            &[n, 128 + cross_in],
            &bytes(&x),
        );
        support::write_npy(
            &out.join(format!("tt_expected_{n}.npy")),
            "<f4",
            &[n],
            &bytes(&expected),
        );
        // The bf16 and int8 variants' scores of the same query, in the same order
        // (tt_expected_{variant}_{n}.npy), for their overlap with float64.
        for (name, store) in
            (variants.iter()).filter(|(name, _)| name.contains("bf16") || name.contains("int8"))
        {
            let r = store
                .snapshot()
                .query(
                    &Query::ids(key, &users[0], ids, n)
                        .three_tower(&inputs[0])
                        .model(m.name),
                )
                .unwrap();
            let of: std::collections::HashMap<u64, f32> =
                r.hits.iter().map(|h| (h.id, h.score)).collect();
            let v: Vec<f32> = ids.iter().map(|id| of[id]).collect();
            support::write_npy(
                &out.join(format!("tt_expected_{name}_{n}.npy")),
                "<f4",
                &[n],
                &bytes(&v),
            );
        }
        // Time: rounds of one pass over the 16 candidate sets and users
        // per variant (plain, precomputed f32 and f16, bf16), so that
        // every variant sees the same machine state over time. Within a
        // pass one model runs query after query, as in a service, so its
        // weights stay in cache; the rows do not (a set comes back only
        // after the other two variants' passes, ~40 MB of rows later).
        // Alternating variant by variant instead measured 4% slower
        // (weights evicted by the other models). One round of warm-up.
        let snaps: Vec<_> = std::iter::once(snap.clone())
            .chain(variants.iter().map(|(_, s)| s.snapshot()))
            .collect();
        let rounds = iters.div_ceil(16);
        let mut times = vec![Vec::with_capacity(rounds * 16); snaps.len()];
        for round in 0..=rounds {
            for (vi, sn) in snaps.iter().enumerate() {
                for q in 0..16 {
                    let t = Instant::now();
                    let r = sn
                        .query(
                            &Query::ids(key, &users[q], &sets[q].0, k)
                                .three_tower(&inputs[q])
                                .model(m.name),
                        )
                        .unwrap();
                    let dt = t.elapsed().as_secs_f64();
                    assert_eq!(r.hits.len(), k.min(n));
                    if round > 0 {
                        times[vi].push(dt);
                    }
                }
            }
        }
        let meds: Vec<f64> = times.iter_mut().map(|t| support::median(t)).collect();
        let med = meds[0];
        for ((name, _), m) in variants.iter().zip(&meds[1..]) {
            println!(
                "n={n:>6} k={k}: {name}: median {:.3} ms ({:.2}x plain)",
                m * 1e3,
                med / m
            );
        }
        let gflops = 2.0 * (macs * n) as f64 / med / 1e9;
        let gflops_run = 2.0 * (macs_split * n) as f64 / med / 1e9;
        println!(
            "n={n:>6} k={k}: median {:.3} ms  model {gflops:.1} GFLOP/s  (executed {gflops_run:.1} GFLOP/s)",
            med * 1e3
        );
        report.push(format!(
            "\"{n}\": {{\"median_ms\": {:.4}, \"gflops\": {gflops:.2}, \"variants\": {{{}}}}}",
            med * 1e3,
            variants
                .iter()
                .zip(&meds[1..])
                .map(|((name, _), m)| format!("\"{name}\": {:.4}", m * 1e3))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    std::fs::write(
        out.join("tt_meta.json"),
        format!(
            "{{\"ns\": [{}], \"k\": {k}, \"user_dim\": 64, \"item_dim\": 64, \"cross_in_dim\": {cross_in}, \"bundle\": \"{}\", \"macs_per_item\": {macs}, \"macs_per_item_split\": {macs_split}}}",
            ns.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", "),
            m.name
        ),
    )
    .unwrap();
    std::fs::write(
        out.join("tt_vstore.json"),
        format!("{{{}}}", report.join(", ")),
    )
    .unwrap();
    eprintln!("wrote {}", out.display());
}
