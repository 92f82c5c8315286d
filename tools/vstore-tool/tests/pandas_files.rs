//! Files written by numpy and pandas/pyarrow (checked in; regenerate with
//! `tests/data/pandas/gen.py`): uint64 ids and float16 vectors from
//! `numpy.save`, a dictionary-encoded Snappy Parquet table with nullable
//! integers, NaN-as-null floats, shuffled rows and three row groups, and a
//! pandas CSV. The store must hold exactly what `expected.json` says; a
//! float16 Parquet column is refused naming its type.

mod common;

use std::path::PathBuf;

use common::ok;
use vstore::Store;

fn data(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/pandas")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn build_from_numpy_and_pandas_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    ok(&[
        "build",
        store.to_str().unwrap(),
        "--ids",
        &data("ids.npy"),
        "--embedding",
        &format!("user_item@2026-11:f16={}", data("emb.npy")),
        "--profile",
        &data("items.parquet"),
        "--stats",
        &data("stats.csv"),
        "--id-column",
        "item_id",
    ]);
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data("expected.json")).unwrap()).unwrap();
    let snap = Store::open(&store).unwrap().snapshot();
    let ids: Vec<u64> = want["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(snap.len(), ids.len());
    let opt = |v: &serde_json::Value| v.as_f64().map(|x| x as f32);
    for (i, &id) in ids.iter().enumerate() {
        let emb: Vec<f32> = want["embedding"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(
            snap.get_embedding(id, "user_item@2026-11").unwrap(),
            emb,
            "row {i}"
        );
        assert_eq!(
            snap.get_categorical(id, "category").unwrap(),
            want["category"][i].as_u64().map(|x| x as u32),
            "row {i}"
        );
        assert_eq!(
            snap.get_numeric(id, "price").unwrap(),
            opt(&want["price"][i]),
            "row {i}"
        );
        assert_eq!(
            snap.get_stat(id, "ctr_1d").unwrap(),
            opt(&want["ctr_1d"][i]),
            "row {i}"
        );
        assert_eq!(
            snap.get_stat(id, "impressions_7d").unwrap(),
            opt(&want["impressions_7d"][i]),
            "row {i}"
        );
    }
    // Some of each kind of missing value is exercised.
    for col in ["category", "price", "ctr_1d", "impressions_7d"] {
        assert!(
            want[col].as_array().unwrap().iter().any(|v| v.is_null()),
            "{col}"
        );
    }
}

/// A float16 column (pyarrow writes Parquet's FLOAT16 logical type) is
/// refused naming the type and what to write instead, not as a
/// `FIXED_LEN_BYTE_ARRAY` of its physical layout.
#[test]
fn a_float16_column_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    let e = common::fails(&[
        "build",
        store.to_str().unwrap(),
        "--ids",
        &data("ids.npy"),
        "--embedding",
        &format!("user_item@2026-11:f16={}", data("emb.npy")),
        "--stats",
        &data("float16.parquet"),
        "--id-column",
        "item_id",
    ]);
    assert!(
        e.contains("float16.parquet: column \"ctr_1d\" holds float16 values (write it as float32 or float64)"),
        "{e}"
    );
    assert!(!e.contains("FIXED_LEN_BYTE_ARRAY"), "{e}");
}
