//! Item tower (contract v2): items added without a vector for an embedding
//! version that has an item tower get theirs computed by the store, from
//! their profile, and score as the independent reference says.
//!
//! `tests/three_tower/gen_item_tower.py` (numpy, float64, written from the
//! contract text) builds a `vstore.three_tower.v2` bundle on `prerank@v1`
//! with an `item_tower`, a `vstore.item_tower.v1` bundle (tower only) on
//! `twotower@v1`, 300 items of which 100 are fresh (no offline vector),
//! 12 have only a `prerank@v1` vector and 12 only a `twotower@v1` one, the
//! float64 tower output of every item lacking a version's vector, 6
//! three-tower queries on `prerank@v1` and 6 inner-product queries on
//! `twotower@v1`, scored with offline vectors where given and computed ones
//! otherwise.
//!
//! The store is built in two transactions: the items with any offline
//! vector (one batch per set of versions given) together with both
//! bundles, then the fresh items with no vectors at all. Checked after each
//! commit: every computed vector to 1e-5 relative (max|diff| /
//! max(max|want|, 1e-3)), every offline vector bit for bit,
//! `computed_count` and `is_computed`; after the second, every query: ids
//! and not-found ids exactly, scores (and head values) to 1e-5 relative.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use common::reference::{check_result, columns, f32s, inputs, opt_f32s, opt_u32s, u64s};

use serde_json::Value;
use vstore::{Dtype, ItemBatch, Query, Schema, Snapshot, Store, Writer};

const KEY3: &str = "prerank@v1";
const KEY2: &str = "twotower@v1";
const KEYS: [&str; 2] = [KEY3, KEY2];

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/item_tower")
}

fn load_case() -> Value {
    serde_json::from_slice(&std::fs::read(data_dir().join("case.json")).unwrap()).unwrap()
}

fn schema(case: &Value) -> Schema {
    let s = &case["schema"];
    let mut schema = columns(s);
    for e in s["embeddings"].as_array().unwrap() {
        assert_eq!(e["dtype"], "f32");
        schema = schema.embedding(
            e["space"].as_str().unwrap(),
            e["version"].as_str().unwrap(),
            e["dim"].as_u64().unwrap() as u32,
            Dtype::F32,
        );
    }
    schema
}

/// Whether item row `r` has an offline vector for `key`.
fn has_offline(case: &Value, r: usize, key: &str) -> bool {
    !case["items"]["offline"][key][r].is_null()
}

/// The items at `rows` (profile and statistics columns), with the offline
/// vectors of `keys` (every item at `rows` must have them) and no vector
/// for any other version.
fn batch(case: &Value, rows: &[usize], keys: &[&str]) -> ItemBatch {
    let items = &case["items"];
    let ids = u64s(&items["ids"]);
    let mut b = ItemBatch::new(rows.iter().map(|&r| ids[r]).collect());
    for (name, v) in items["categorical"].as_object().unwrap() {
        let all = opt_u32s(v);
        b = b.categorical_opt(name, rows.iter().map(|&r| all[r]).collect());
    }
    for (name, v) in items["numeric"].as_object().unwrap() {
        let all = opt_f32s(v);
        b = b.numeric_opt(name, rows.iter().map(|&r| all[r]).collect());
    }
    for (name, v) in items["stats"].as_object().unwrap() {
        let all = opt_f32s(v);
        b = b.stat_opt(name, rows.iter().map(|&r| all[r]).collect());
    }
    for key in keys {
        let off = &items["offline"][*key];
        let flat: Vec<f32> = rows.iter().flat_map(|&r| f32s(&off[r])).collect();
        b = b.embedding(key, flat);
    }
    b
}

/// max|got - want| / max(max|want|, 1e-3).
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0f64, |m, w| m.max(w.abs())).max(1e-3);
    got.iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs())
        .fold(0f64, f64::max)
        / scale
}

/// Checks the vectors of the items at `rows` (all that `snap` holds):
/// offline ones bit for bit and not computed, the others computed and
/// within 1e-5 of the reference; `computed_count` of each version.
fn check_vectors(snap: &Snapshot, case: &Value, rows: &[usize], ctx: &str) {
    let items = &case["items"];
    let ids = u64s(&items["ids"]);
    assert_eq!(snap.len(), rows.len(), "{ctx}: items in the snapshot");
    for key in KEYS {
        let exp = &case["expected_vectors"][key];
        let exp_ids = u64s(&exp["ids"]);
        let exp_vecs = exp["vectors"].as_array().unwrap();
        let want_of = |id: u64| -> Vec<f64> {
            let i = exp_ids.iter().position(|&x| x == id).unwrap();
            exp_vecs[i]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        };
        let mut lacking = 0u64;
        let mut worst = 0f64;
        for &r in rows {
            let id = ids[r];
            let got = snap
                .get_embedding(id, key)
                .unwrap_or_else(|e| panic!("{ctx}: {key} of item {id}: {e}"));
            let computed = snap
                .is_computed(id, key)
                .unwrap_or_else(|e| panic!("{ctx}: is_computed({id}, {key}): {e}"));
            if has_offline(case, r, key) {
                let want = f32s(&items["offline"][key][r]);
                let gb: Vec<u32> = got.iter().map(|x| x.to_bits()).collect();
                let wb: Vec<u32> = want.iter().map(|x| x.to_bits()).collect();
                assert_eq!(
                    gb, wb,
                    "{ctx}: {key} of item {id}: the offline vector was not kept: {got:?} vs {want:?}"
                );
                assert!(
                    !computed,
                    "{ctx}: item {id} was given a {key} vector but is_computed says computed"
                );
            } else {
                lacking += 1;
                let want = want_of(id);
                assert_eq!(
                    got.len(),
                    want.len(),
                    "{ctx}: {key} of item {id}: dimension"
                );
                let err = rel_err(&got, &want);
                worst = worst.max(err);
                assert!(
                    err <= 1e-5,
                    "{ctx}: computed {key} of item {id}: {got:?} vs {want:?} (relative error {err:e})"
                );
                assert!(
                    computed,
                    "{ctx}: item {id} was given no {key} vector but is_computed says not computed"
                );
            }
        }
        let count = snap
            .computed_count(key)
            .unwrap_or_else(|e| panic!("{ctx}: computed_count({key}): {e}"));
        assert_eq!(count, lacking, "{ctx}: computed_count({key})");
        eprintln!("{ctx}: {key}: {lacking} computed vectors, worst relative error {worst:e}");
    }
}

fn check_three_tower(snap: &Snapshot, case: &Value) -> usize {
    let tt = &case["three_tower"];
    let key = tt["key"].as_str().unwrap();
    assert_eq!(key, KEY3);
    let model = snap.model(key).unwrap();
    assert!(
        model.has_item_tower(),
        "the {key} bundle lost its item tower"
    );
    let mut checked = 0;
    for (qi, q) in tt["queries"].as_array().unwrap().iter().enumerate() {
        let ctx = format!("three-tower query {qi}");
        let user = f32s(&q["user"]);
        let ui = inputs(q);
        let k = q["k"].as_u64().unwrap() as usize;
        let cands = (!q["candidates"].is_null()).then(|| u64s(&q["candidates"]));
        let query = match &cands {
            Some(ids) => Query::ids(key, &user, ids, k),
            None => Query::full_scan(key, &user, k),
        }
        .three_tower(&ui)
        .with_heads();
        let r = snap.query(&query).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        check_result(&ctx, &r, &q["expected"]);
        checked += 1;
    }
    checked
}

fn check_two_tower(snap: &Snapshot, case: &Value) -> usize {
    let tt = &case["two_tower"];
    let key = tt["key"].as_str().unwrap();
    assert_eq!(key, KEY2);
    let mut checked = 0;
    for (qi, q) in tt["queries"].as_array().unwrap().iter().enumerate() {
        let ctx = format!("two-tower query {qi}");
        let user = f32s(&q["user"]);
        let k = q["k"].as_u64().unwrap() as usize;
        let cands = (!q["candidates"].is_null()).then(|| u64s(&q["candidates"]));
        let query = match &cands {
            Some(ids) => Query::ids(key, &user, ids, k),
            None => Query::full_scan(key, &user, k),
        };
        let r = snap.query(&query).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        check_result(&ctx, &r, &q["expected"]);
        checked += 1;
    }
    checked
}

#[test]
fn computed_item_vectors_match_the_numpy_reference() {
    println!("kernel level: {}", vstore::bench_support::kernel_level());
    let case = load_case();
    let n = case["items"]["ids"].as_array().unwrap().len();
    // The reference's own bookkeeping: one expected vector per missing one.
    for key in KEYS {
        let lacking = (0..n).filter(|&r| !has_offline(&case, r, key)).count();
        assert_eq!(
            case["computed_count"][key].as_u64().unwrap() as usize,
            lacking
        );
        assert_eq!(
            case["expected_vectors"][key]["ids"]
                .as_array()
                .unwrap()
                .len(),
            lacking
        );
    }

    // Rows by which versions' offline vectors they have.
    let group = |p: bool, t: bool| -> Vec<usize> {
        (0..n)
            .filter(|&r| has_offline(&case, r, KEY3) == p && has_offline(&case, r, KEY2) == t)
            .collect()
    };
    let (both, only3, only2, fresh) = (
        group(true, true),
        group(true, false),
        group(false, true),
        group(false, false),
    );
    assert!(!both.is_empty() && !only3.is_empty() && !only2.is_empty() && !fresh.is_empty());

    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::create(tmp.path(), schema(&case)).unwrap();

    // Transaction 1: both bundles, then the items with any offline vector,
    // one batch per set of versions given (a batch gives a version's
    // vectors for all of its items or for none).
    let mut tx = w.begin();
    for key in KEYS {
        let bundle = case["bundles"][key].as_str().unwrap();
        let got = tx
            .add_model_dir(data_dir().join(bundle))
            .unwrap_or_else(|e| panic!("{bundle}: {e}"));
        assert_eq!(got, key, "{bundle}");
    }
    tx.add_items(batch(&case, &both, &[KEY3, KEY2])).unwrap();
    tx.add_items(batch(&case, &only3, &[KEY3])).unwrap();
    tx.add_items(batch(&case, &only2, &[KEY2])).unwrap();
    tx.commit().unwrap();

    let first: Vec<usize> = both.iter().chain(&only3).chain(&only2).copied().collect();
    let snap = Store::open(tmp.path()).unwrap().snapshot();
    check_vectors(&snap, &case, &first, "after transaction 1");

    // Transaction 2: the fresh items, no vectors at all.
    let mut tx = w.begin();
    tx.add_items(batch(&case, &fresh, &[])).unwrap();
    tx.commit().unwrap();

    let all: Vec<usize> = (0..n).collect();
    let snap = Store::open(tmp.path()).unwrap().snapshot();
    check_vectors(&snap, &case, &all, "after transaction 2");
    // Items of transaction 1 are unchanged by transaction 2 (checked above
    // with the rest); the id sets agree.
    let held: HashSet<u64> = snap.ids().collect();
    let want: HashSet<u64> = u64s(&case["items"]["ids"]).into_iter().collect();
    assert_eq!(held, want);

    let checked = check_three_tower(&snap, &case) + check_two_tower(&snap, &case);
    assert_eq!(checked, 12);
    drop(w);
}
