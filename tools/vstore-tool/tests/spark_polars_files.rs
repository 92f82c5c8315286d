//! Parquet files written by Spark (parquet-mr: Snappy, dictionary pages,
//! a `spark_schema` root, INT96 timestamps, a decimal as INT32, a tinyint)
//! and by polars (its own writer: zstd, dictionary pages, uint64 ids above
//! 2^63 marked unsigned by logical type only, large_string and large_list
//! columns, two row groups), beside numpy ids and embeddings. Checked in;
//! regenerate with `tests/data/{spark,polars}/gen.py`. The store must
//! hold exactly what each `expected.json` says, and the columns the store
//! cannot hold (strings, timestamps, lists) are refused by name until
//! skipped.

mod common;

use std::path::PathBuf;

use common::{fails, ok};
use serde_json::Value;
use vstore::Store;

fn data(dir: &str, name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(dir)
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

/// The build command line for the fixtures in `dir`, with `extra` flags.
fn build_args(dir: &str, store: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "build",
        store,
        "--ids",
        &data(dir, "ids.npy"),
        "--embedding",
        &format!("item@v1={}", data(dir, "emb.npy")),
        "--profile",
        &data(dir, "items.parquet"),
        "--stats",
        &data(dir, "stats.parquet"),
        "--id-column",
        "item_id",
        // Signed small integers: numeric, not category codes.
        "--column",
        "small:numeric",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Builds from `dir`'s fixtures skipping `skip`, and checks every value
/// against `expected.json`: `cats` categorical, `nums` numeric profile
/// columns, `stats` statistics.
fn build_and_check(dir: &str, skip: &[&str], cats: &[&str], nums: &[&str], stats: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("s");
    let mut extra = Vec::new();
    for s in skip {
        extra.extend(["--skip-column", s]);
    }
    ok(&strs(&build_args(dir, store.to_str().unwrap(), &extra)));
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(data(dir, "expected.json")).unwrap())
            .unwrap();
    let snap = Store::open(&store).unwrap().snapshot();
    let ids: Vec<u64> = want["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(snap.len(), ids.len());
    let schema = snap.schema();
    let names = |g: &[vstore::ColumnDef]| g.iter().map(|d| d.name.clone()).collect::<Vec<_>>();
    let mut profile: Vec<&str> = cats.iter().chain(nums).copied().collect();
    profile.sort();
    let mut have = names(&schema.profile);
    have.sort();
    assert_eq!(have, profile, "{dir}: profile columns");
    assert_eq!(names(&schema.stats), stats, "{dir}: statistics columns");
    let f = |v: &Value| v.as_f64().map(|x| x as f32);
    for (i, &id) in ids.iter().enumerate() {
        let emb: Vec<f32> = want["embedding"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(
            snap.get_embedding(id, "item@v1").unwrap(),
            emb,
            "{dir} row {i}"
        );
        for c in cats {
            let w = want[c][i].as_u64().map(|x| x as u32);
            assert_eq!(snap.get_categorical(id, c).unwrap(), w, "{dir} row {i} {c}");
        }
        for c in nums {
            assert_eq!(
                snap.get_numeric(id, c).unwrap(),
                f(&want[c][i]),
                "{dir} row {i} {c}"
            );
        }
        for c in stats {
            assert_eq!(
                snap.get_stat(id, c).unwrap(),
                f(&want[c][i]),
                "{dir} row {i} {c}"
            );
        }
    }
    // Some of each column's values are missing (Spark's decimal column
    // has none).
    for c in cats
        .iter()
        .chain(nums)
        .chain(stats)
        .filter(|c| **c != "rating")
    {
        let nulls = want[c].as_array().unwrap().iter().any(Value::is_null);
        assert!(nulls, "{dir}: {c} has no missing value");
    }
}

/// Without `--skip-column`, each column the store cannot hold is refused
/// in turn, named with what it holds.
fn refused_in_turn(dir: &str, refusals: &[(&str, &str)]) {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("s");
    let mut extra: Vec<&str> = Vec::new();
    for (col, what) in refusals {
        let e = fails(&strs(&build_args(dir, store.to_str().unwrap(), &extra)));
        assert!(
            e.contains("items.parquet") && e.contains(&format!("{col:?}")) && e.contains(what),
            "{dir} {col}: {e}"
        );
        extra.extend(["--skip-column", col]);
        assert!(!store.join("LOCK").exists(), "nothing is written");
    }
}

#[test]
fn spark_files_build_a_store() {
    refused_in_turn(
        "spark",
        &[("name", "strings"), ("updated", "INT96 timestamps")],
    );
    build_and_check(
        "spark",
        &["name", "updated"],
        &["category", "flag"],
        &["price", "weight", "small"],
        &["ctr_1d", "impressions_7d", "rating"],
    );
}

#[test]
fn polars_files_build_a_store() {
    refused_in_turn(
        "polars",
        &[
            ("brand", "strings"),
            ("vec", "is a list (repeated); tables must be flat"),
            ("seen", "timestamps"),
        ],
    );
    build_and_check(
        "polars",
        &["brand", "vec", "seen"],
        &["category", "flag"],
        &["price", "small"],
        &["ctr_1d", "impressions_7d"],
    );
}
