//! Three-tower contract v2 scoring matches an independent reference.
//!
//! `tests/three_tower/gen_v2.py` (numpy, float64, written from the contract
//! text) builds five `vstore.three_tower.v2` bundles that share one
//! embedding version (`prerank@v1`) under different names and together use
//! every v2 part (`name` and its default, `cross.se`, `upper.inputs` with
//! `dot` and `hadamard`, no `upper.layers`, a shared bottom then
//! `upper.mmoe`, head towers, `normalize`, float16 and bfloat16 tensors,
//! `item_tower`, all six fusion kinds), 300 items and 8 queries per bundle,
//! 3 of which carry a per-query fusion override, and computes the expected
//! top k, scores, per-head values (after calibration and normalize) and
//! unknown ids. This test builds a store from the same items, publishes all
//! five bundles together, runs each query against its bundle by name and
//! compares: ids exactly, scores and head values to 1e-5 relative. Then
//! each bundle is added again with its first-layer item part precomputed
//! (f32): where the store accepts that, the same results; where it refuses,
//! the error must name a part of the bundle that rules it out (the case
//! lists which names would: `precompute_refusal_may_name`).

mod common;

use std::path::{Path, PathBuf};

use common::reference::{build, check_result, f32s, inputs, u64s};

use serde_json::{json, Value};
use vstore::{Dtype, Fusion, Query, QueryResult, Snapshot, Store, UserInputs, Writer};

const KEY: &str = "prerank@v1";

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/three_tower_v2")
}

fn load_case() -> Value {
    serde_json::from_slice(&std::fs::read(data_dir().join("case.json")).unwrap()).unwrap()
}

fn bundle_bytes(bundle: &str) -> (Vec<u8>, Vec<u8>) {
    let dir = data_dir().join(bundle);
    (
        std::fs::read(dir.join("model.json")).unwrap(),
        std::fs::read(dir.join("weights.safetensors")).unwrap(),
    )
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// The store with the reference's items and all of its bundles, published
/// together (they share `prerank@v1`); returns the writer.
fn build_with_bundles(dir: &Path, case: &Value) -> Writer {
    let mut w = build(dir, case);
    let mut tx = w.begin();
    for c in case["cases"].as_array().unwrap() {
        let bundle = c["bundle"].as_str().unwrap();
        let key = tx.add_model_dir(data_dir().join(bundle)).unwrap();
        assert_eq!(key, KEY, "{bundle}");
    }
    tx.commit().unwrap();
    w
}

fn sorted_names(case: &Value) -> Vec<String> {
    let mut names: Vec<String> = case["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// Runs every query of case `c` on `snap` against the bundle the case
/// names and compares with the reference; returns how many were checked.
fn check_case(snap: &Snapshot, c: &Value, ctx: &str) -> usize {
    let name = c["name"].as_str().unwrap();
    let mut checked = 0;
    for (qi, q) in c["queries"].as_array().unwrap().iter().enumerate() {
        let user = f32s(&q["user"]);
        let ui = inputs(q);
        let k = q["k"].as_u64().unwrap() as usize;
        let cands = (!q["candidates"].is_null()).then(|| u64s(&q["candidates"]));
        let fusion = (!q["fusion"].is_null()).then(|| {
            Fusion::from_json(&serde_json::to_vec(&q["fusion"]).unwrap())
                .unwrap_or_else(|e| panic!("{ctx} query {qi}: fusion {}: {e}", q["fusion"]))
        });
        let mut query = match &cands {
            Some(ids) => Query::ids(KEY, &user, ids, k),
            None => Query::full_scan(KEY, &user, k),
        }
        .three_tower(&ui)
        .model(name)
        .with_heads();
        if let Some(f) = &fusion {
            query = query.fusion(f);
        }
        let r = snap
            .query(&query)
            .unwrap_or_else(|e| panic!("{ctx} query {qi}: {e}"));
        let exp = &q["expected"];
        let ctx = match &fusion {
            Some(_) => format!("{ctx} query {qi} (fusion {})", q["fusion"]["kind"]),
            None => format!("{ctx} query {qi}"),
        };
        check_result(&ctx, &r, exp);
        checked += 1;
    }
    checked
}

#[test]
fn every_v2_part_matches_the_numpy_reference() {
    println!("kernel level: {}", vstore::bench_support::kernel_level());
    let case = load_case();
    let cases = case["cases"].as_array().unwrap();
    let names = sorted_names(&case);
    let tmp = tempfile::tempdir().unwrap();
    let mut w = build_with_bundles(tmp.path(), &case);

    let snap = Store::open(tmp.path()).unwrap().snapshot();
    let mut got = snap.model_names(KEY);
    got.sort();
    assert_eq!(got, names, "bundle names of {KEY}");
    // Several bundles on the version: `model` must not pick one.
    let err = match snap.model(KEY) {
        Ok(_) => panic!("model({KEY}) picked one of several bundles {names:?}"),
        Err(e) => e.to_string(),
    };
    for n in &names {
        assert!(err.contains(n.as_str()), "{err:?} does not name {n}");
    }
    let mut checked = 0;
    for c in cases {
        let (bundle, name) = (c["bundle"].as_str().unwrap(), c["name"].as_str().unwrap());
        let model = snap.model_named(KEY, name).unwrap();
        let heads: Vec<String> = model.head_names().iter().map(|h| h.to_string()).collect();
        assert_eq!(heads, strs(&c["heads"]), "{bundle}: head names");
        checked += check_case(&snap, c, &format!("{bundle} ({name})"));
    }
    assert_eq!(checked, 40);

    // Each bundle again, with the first upper layer's item part
    // precomputed in f32: the same results, or a refusal naming why.
    let mut precomputed = 0;
    for c in cases {
        let (bundle, name) = (c["bundle"].as_str().unwrap(), c["name"].as_str().unwrap());
        let may_name = strs(&c["precompute_refusal_may_name"]);
        let (json, weights) = bundle_bytes(bundle);
        let mut tx = w.begin();
        let added = match tx.add_model_precomputed(&json, &weights, Dtype::F32) {
            Ok(key) => tx.commit().map(|_| key),
            Err(e) => Err(e),
        };
        match added {
            Ok(key) => assert_eq!(key, KEY, "{bundle}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    may_name.iter().any(|m| msg.contains(m.as_str())),
                    "{bundle}: precomputing its item part was refused with {msg:?}, \
                     which names none of {may_name:?} (the parts of this bundle that \
                     could rule it out)"
                );
                eprintln!("{bundle} ({name}): not precomputed: {msg}");
                continue;
            }
        }
        let snap = Store::open(tmp.path()).unwrap().snapshot();
        // Replacing one named bundle leaves the others in place.
        let mut got = snap.model_names(KEY);
        got.sort();
        assert_eq!(got, names, "bundle names after re-adding {bundle}");
        assert!(
            snap.model_named_is_precomputed(KEY, name),
            "{bundle} ({name}) was accepted for precomputing but is not precomputed"
        );
        checked += check_case(&snap, c, &format!("{bundle} ({name}, precomputed)"));
        precomputed += 1;
    }
    // (A bundle whose list is empty, one without v2 upper parts, must be
    // precomputed as in v1: any refusal of it fails the assertion above.)
    assert_eq!(
        precomputed, 2,
        "default and mmoe allow precomputing; the other three rule it out"
    );
    assert_eq!(checked, 40 + 8 * precomputed);
}

/// Runs one full scan against bundle `name` with a per-query fusion given
/// as JSON; a refusal (when parsing or when the query runs) is its message.
fn run_with_fusion(
    snap: &Snapshot,
    name: Option<&str>,
    fusion: &Value,
) -> Result<QueryResult, String> {
    let user = [0.25f32; 8];
    let ui = UserInputs::new()
        .dense("user_stats", vec![0.5, -0.5, 1.0])
        .by_item("user_category_ctr", vec![(1, vec![0.1, 0.2])]);
    let f = Fusion::from_json(&serde_json::to_vec(fusion).unwrap()).map_err(|e| e.to_string())?;
    let mut q = Query::full_scan(KEY, &user, 5).three_tower(&ui).fusion(&f);
    if let Some(n) = name {
        q = q.model(n);
    }
    snap.query(&q).map_err(|e| e.to_string())
}

#[test]
fn bundle_names_and_fusion_overrides_are_checked() {
    let case = load_case();
    let names = sorted_names(&case);
    let tmp = tempfile::tempdir().unwrap();
    let _w = build_with_bundles(tmp.path(), &case);
    let snap = Store::open(tmp.path()).unwrap().snapshot();
    let ws = json!({"kind": "weighted_sum", "weights": {"click": 1.0}});

    // Accepted: a fusion over the bundle's own heads (and columns).
    run_with_fusion(&snap, Some("default"), &ws).unwrap();
    let product = json!({"kind": "product", "weights": {"finish": 1.0},
                         "columns": {"price": 1.0, "duration": -0.5}});
    run_with_fusion(&snap, Some("dot_hadamard"), &product).unwrap();

    // Several bundles on the version and none named: an error naming them.
    let err = run_with_fusion(&snap, None, &ws).unwrap_err();
    for n in &names {
        assert!(err.contains(n.as_str()), "{err:?} does not name {n}");
    }
    // An unknown bundle name.
    let err = run_with_fusion(&snap, Some("no_such_bundle"), &ws).unwrap_err();
    assert!(err.contains("no_such_bundle"), "{err:?}");
    match snap.model_named(KEY, "no_such_bundle") {
        Ok(_) => panic!("model_named found a bundle that was never added"),
        Err(e) => assert!(e.to_string().contains("no_such_bundle"), "{e}"),
    }

    // Overrides are checked against the bundle the query runs: a head of
    // another bundle, an unknown head in each kind's own place, an
    // unknown column.
    let bad: [(&str, Value, &str); 7] = [
        (
            "default",
            json!({"kind": "weighted_sum", "weights": {"finish": 1.0}}),
            "finish",
        ),
        (
            "default",
            json!({"kind": "rank", "weights": {"shares": 1.0}, "alpha": 1.0, "beta": 1.0}),
            "shares",
        ),
        (
            "mmoe",
            json!({"kind": "click_weighted", "base": "like", "weights": {"click": 1.0}}),
            "like",
        ),
        (
            "mmoe_flat",
            json!({"kind": "offset_product",
                             "terms": {"finish": {"weight": 1.0, "exponent": 1.0}}}),
            "finish",
        ),
        (
            "no_upper",
            json!({"kind": "rank_per_head",
                            "terms": {"watch_time": {"weight": 1.0, "alpha": 1.0, "beta": 1.0}}}),
            "watch_time",
        ),
        (
            "dot_hadamard",
            json!({"kind": "product", "weights": {"click": 1.0},
                                "columns": {"no_such_column": 1.0}}),
            "no_such_column",
        ),
        (
            "dot_hadamard",
            json!({"kind": "product", "weights": {"click": 1.0},
                                "columns": {"category": 1.0}}),
            "category",
        ),
    ];
    for (bundle, fusion, word) in bad {
        match run_with_fusion(&snap, Some(bundle), &fusion) {
            Ok(_) => panic!("{bundle}: fusion {fusion} was accepted"),
            Err(e) => assert!(
                e.contains(word),
                "{bundle}: fusion {fusion}: {e:?} does not name {word}"
            ),
        }
    }
    // An unknown fusion kind is refused when parsed.
    match Fusion::from_json(br#"{"kind": "no_such_kind", "weights": {"click": 1.0}}"#) {
        Ok(_) => panic!("an unknown fusion kind was accepted"),
        Err(e) => assert!(e.to_string().contains("no_such_kind"), "{e}"),
    }
}
