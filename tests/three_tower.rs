//! Three-tower scoring matches an independent reference.
//!
//! `tests/three_tower/gen.py` (numpy, float64) builds three bundles (one per
//! fusion kind; every input kind, activation and calibration), 300 items and
//! 8 queries per bundle, and computes the expected top k, scores, per-head
//! values and unknown ids. This test builds a store from the same items, adds
//! each bundle, runs the queries through the store and compares: ids
//! exactly, scores and head values to 1e-5 relative.

mod common;

use std::path::{Path, PathBuf};

use common::bundle::Bundle;
use common::reference::{build, check_features, check_result, close, f32s, inputs, u64s};
use serde_json::{json, Value};
use vstore::{Dtype, ItemBatch, Query, QueryResult, Schema, Store, UserInputs, Writer};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/three_tower")
}

#[test]
fn scores_match_the_numpy_reference_for_every_fusion_kind() {
    println!("kernel level: {}", vstore::bench_support::kernel_level());
    let case: Value =
        serde_json::from_slice(&std::fs::read(data_dir().join("case.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut w = build(tmp.path(), &case);
    let mut checked = 0;
    // Each bundle as given, then with its first-layer item part
    // precomputed in f32 (which must give the same results).
    for (c, precompute) in case["cases"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| [(c, false), (c, true)])
    {
        let bundle = c["bundle"].as_str().unwrap();
        let mut tx = w.begin();
        let key = if precompute {
            let dir = data_dir().join(bundle);
            let json = std::fs::read(dir.join("model.json")).unwrap();
            let weights = std::fs::read(dir.join("weights.safetensors")).unwrap();
            tx.add_model_precomputed(&json, &weights, Dtype::F32)
                .unwrap()
        } else {
            tx.add_model_dir(data_dir().join(bundle)).unwrap()
        };
        tx.commit().unwrap();
        let snap = Store::open(tmp.path()).unwrap().snapshot();
        assert_eq!(snap.model_is_precomputed(&key), precompute);
        let model = snap.model(&key).unwrap();
        assert_eq!(model.head_names().len(), 5);
        for (qi, q) in c["queries"].as_array().unwrap().iter().enumerate() {
            let user = f32s(&q["user"]);
            let ui = inputs(q);
            let k = q["k"].as_u64().unwrap() as usize;
            let cands = (!q["candidates"].is_null()).then(|| u64s(&q["candidates"]));
            let query = match &cands {
                Some(ids) => Query::ids(&key, &user, ids, k),
                None => Query::full_scan(&key, &user, k),
            }
            .three_tower(&ui)
            .with_heads();
            let r = snap.query(&query).unwrap();
            let exp = &q["expected"];
            let ctx = format!("{bundle} (precomputed: {precompute}) query {qi}");
            check_result(&ctx, &r, exp);
            assert!(r.features.is_none(), "{ctx}: a log nobody asked for");
            // The same query with its feature log: the same answer, and
            // the log holds the reference's intermediate values.
            let logged = snap.query(&query.log_features()).unwrap();
            check_features(&ctx, &logged, exp);
            assert_eq!(
                QueryResult {
                    features: None,
                    ..logged
                },
                r,
                "{ctx}: logging changed the answer"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 48);
}

/// A calibrated sigmoid head keeps items with large logits apart: with
/// a = 1e-4, logits 18 and 24 calibrate to 0.99985 and 0.9999996, which an
/// f32 sigmoid first (1.0 for both) would turn into a tie broken by id.
#[test]
fn calibration_ranks_large_logits_apart() {
    let schema = Schema::new()
        .stat("s", 0.0)
        .embedding("prerank", "v1", 1, Dtype::F32);
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::create(tmp.path(), schema).unwrap();
    let mut tx = w.begin();
    let logits = [18.0f32, 24.0, -30.0, 0.5];
    tx.add_items(
        ItemBatch::new(vec![1, 2, 3, 4])
            .stat("s", logits.to_vec())
            .embedding("prerank@v1", vec![0.0; 4]),
    )
    .unwrap();
    // The upper layer passes the statistic through: its input is
    // [user (1), item (1), s (1)]; the head's logit is s.
    let json = json!({
        "format": "vstore.three_tower.v1", "space": "prerank", "version": "v1",
        "user_dim": 1, "item_dim": 1,
        "cross": {"inputs": [{"kind": "item_numeric", "column": "s"}], "layers": []},
        "upper": {"layers": [{"weight": "u0.w", "activation": "identity"}]},
        "heads": [{"name": "click", "weight": "h.w", "activation": "sigmoid",
                   "neg_sampling_rate": 1e-4}],
        "fusion": {"kind": "weighted_sum", "weights": {"click": 1.0}},
    });
    let tensors = [
        ("u0.w".to_string(), (vec![1, 3], vec![0.0, 0.0, 1.0])),
        ("h.w".to_string(), (vec![1, 1], vec![1.0])),
    ];
    let (j, wt) = Bundle {
        json,
        tensors: tensors.into_iter().collect(),
    }
    .bytes();
    tx.add_model(&j, &wt).unwrap();
    tx.commit().unwrap();
    let snap = Store::open(tmp.path()).unwrap().snapshot();
    let ui = UserInputs::new();
    let r = snap
        .query(&Query::ids("prerank@v1", &[0.0], &[1, 2, 3, 4], 4).three_tower(&ui))
        .unwrap();
    let ids: Vec<u64> = r.hits.iter().map(|h| h.id).collect();
    assert_eq!(ids, [2, 1, 4, 3], "{:?}", r.hits);
    for h in &r.hits {
        let (a, x) = (1e-4f64, logits[h.id as usize - 1] as f64);
        // The contract's formula, in f64 from an f64 sigmoid.
        let q = 1.0 / (1.0 + (-x).exp());
        let want = a * q / ((1.0 - q) + a * q);
        assert!(close(h.score, want), "item {}: {} vs {want}", h.id, h.score);
    }
}
