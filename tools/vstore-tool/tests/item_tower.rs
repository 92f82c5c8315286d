//! Item towers from the command line: a store built with no embedding
//! file, items added without vectors, a version added for some items only,
//! the tower replaced and dropped; `inspect` says which vectors the store
//! computed. Every computed vector is compared with the library's.

mod common;

use common::{fails, npy_u64, ok, parquet_file, Data, PqCol, DIM, ROWS};
use serde_json::Value;
use vstore::Store;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// An item-tower-only bundle for `prerank@{version}` over the test
/// catalogue's profile columns (`category`, `price`), written to `d/dir`.
fn tower(d: &Data, dir: &str, version: &str, seed: u64) {
    let json = format!(
        r#"{{"format": "vstore.item_tower.v1", "space": "prerank", "version": "{version}",
  "item_dim": {DIM}, "item_tower": {{
    "inputs": [
      {{"kind": "item_categorical", "column": "category", "embedding": "t.category"}},
      {{"kind": "item_numeric", "column": "price", "transform": "log1p"}}
    ],
    "layers": [
      {{"weight": "t.0.weight", "bias": "t.0.bias", "activation": "relu"}},
      {{"weight": "t.1.weight", "bias": "t.1.bias", "activation": "identity"}}
    ]}}}}"#
    );
    let shapes: Vec<(String, Vec<usize>)> = [
        ("t.category", vec![8, 4]),
        ("t.0.weight", vec![16, 5]),
        ("t.0.bias", vec![16]),
        ("t.1.weight", vec![DIM, 16]),
        ("t.1.bias", vec![DIM]),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s))
    .collect();
    let weights = vstore::ExampleBundle::random_weights(&shapes, seed);
    std::fs::create_dir_all(d.path(dir)).unwrap();
    std::fs::write(d.path(dir).join("model.json"), json).unwrap();
    std::fs::write(d.path(dir).join("weights.safetensors"), weights).unwrap();
}

fn embedding_summary(v: &Value, key: &str) -> Value {
    v["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == key)
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .clone()
}

fn item(d: &Data, store: &str, id: u64) -> Value {
    json(&ok(&[
        "inspect",
        &d.p(store),
        "--id",
        &id.to_string(),
        "--json",
    ]))
}

/// Writes `ids.npy`-style files for `n` fresh items (ids from 90,000) and
/// their profile table; returns the ids.
fn fresh_items(d: &Data, name: &str, n: usize) -> Vec<u64> {
    let ids: Vec<u64> = (0..n as u64).map(|i| 90_000 + 7 * i).collect();
    npy_u64(&d.path(&format!("{name}.npy")), &ids);
    let col = |f: fn(u64) -> Option<i32>| ids.iter().map(|&i| f(i)).collect();
    parquet_file(
        &d.path(&format!("{name}.parquet")),
        &[
            PqCol::I64("id", ids.iter().map(|&i| Some(i as i64)).collect()),
            PqCol::I32("category", col(|i| (i % 4 != 0).then_some((i % 9) as i32))),
            PqCol::F64(
                "price",
                ids.iter()
                    .map(|&i| (i % 3 != 0).then_some(i as f64 / 50.0))
                    .collect(),
            ),
        ],
        64,
    );
    ids
}

#[test]
fn build_with_only_an_item_tower_computes_every_vector() {
    let d = Data::new();
    tower(&d, "tower", "v1", 1);
    let out = ok(&[
        "build",
        &d.p("s"),
        "--ids",
        &d.p("ids.npy"),
        "--profile",
        &d.p("items.parquet"),
        "--item-tower",
        &d.p("tower"),
        "--dtype",
        "f16",
    ]);
    assert!(out.contains("built store"), "{out}");
    let v = json(&ok(&["inspect", &d.p("s"), "--json"]));
    let e = embedding_summary(&v, "prerank@v1");
    assert_eq!(e["computed"], ROWS as u64);
    assert_eq!(e["dtype"], "f16");
    assert!(e["item_tower"].as_str().unwrap().contains("FLOP per item"));
    assert!(v["snapshots"][0]["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b == "prerank@v1 item tower"));
    let text = ok(&["inspect", &d.p("s")]);
    assert!(text.contains("prerank@v1 has an item tower"), "{text}");
    let it = item(&d, "s", d.ids[5]);
    assert_eq!(it["embeddings"][0]["computed"], true);
    let text = ok(&["inspect", &d.p("s"), "--id", &d.ids[5].to_string()]);
    assert!(
        text.contains("computed in the store by the item tower"),
        "{text}"
    );
    // A two-tower query over the computed vectors runs.
    let store = Store::open(d.path("s")).unwrap();
    let snap = store.snapshot();
    assert_eq!(snap.computed_count("prerank@v1").unwrap(), ROWS as u64);
    let r = snap
        .query(&vstore::Query::full_scan("prerank@v1", &[0.5; DIM], 5))
        .unwrap();
    assert_eq!(r.hits.len(), 5);
    // A three-tower bundle for a version no --embedding gives and no tower
    // computes is refused, naming it.
    let err = fails(&[
        "build",
        &d.p("s2"),
        "--ids",
        &d.p("ids.npy"),
        "--profile",
        &d.p("items.parquet"),
        "--model",
        &d.p("model"),
    ]);
    assert!(
        err.contains("prerank@v1") && err.contains("no item"),
        "{err}"
    );
    // An item-tower bundle given as --model is refused with the right flag.
    let err = fails(&[
        "build",
        &d.p("s3"),
        "--ids",
        &d.p("ids.npy"),
        "--model",
        &d.p("tower"),
    ]);
    assert!(err.contains("--item-tower"), "{err}");
}

#[test]
fn fresh_items_versions_replacement_and_drop() {
    let d = Data::new();
    tower(&d, "tower", "v1", 1);
    tower(&d, "tower_b", "v1", 2);
    tower(&d, "tower2", "v2", 3);
    d.build_f32("s", &["--profile", &d.p("items.parquet")]);
    let fresh = fresh_items(&d, "fresh", 40);
    // Without a tower, vectors are required, naming the version.
    let err = fails(&[
        "add-items",
        &d.p("s"),
        "--ids",
        &d.p("fresh.npy"),
        "--profile",
        &d.p("fresh.parquet"),
    ]);
    assert!(
        err.contains("prerank@v1") && err.contains("item tower"),
        "{err}"
    );
    let out = ok(&["add-model", &d.p("s"), &d.p("tower")]);
    assert!(out.contains("added an item tower for prerank@v1"), "{out}");
    let err = fails(&["add-model", &d.p("s"), &d.p("tower_b")]);
    assert!(err.contains("--replace"), "{err}");
    let out = ok(&[
        "add-items",
        &d.p("s"),
        "--ids",
        &d.p("fresh.npy"),
        "--profile",
        &d.p("fresh.parquet"),
    ]);
    assert!(out.contains("40 vectors computed"), "{out}");
    assert_eq!(item(&d, "s", fresh[3])["embeddings"][0]["computed"], true);
    assert_eq!(item(&d, "s", d.ids[3])["embeddings"][0]["computed"], false);
    let before = Store::open(d.path("s"))
        .unwrap()
        .snapshot()
        .get_embedding(fresh[3], "prerank@v1")
        .unwrap();
    // Replacing the tower computes the computed vectors again; offline ones stay.
    ok(&["add-model", &d.p("s"), &d.p("tower_b"), "--replace"]);
    let snap = Store::open(d.path("s")).unwrap().snapshot();
    assert_ne!(snap.get_embedding(fresh[3], "prerank@v1").unwrap(), before);
    assert_eq!(snap.computed_count("prerank@v1").unwrap(), 40);
    let v = json(&ok(&["inspect", &d.p("s"), "--json"]));
    assert_eq!(embedding_summary(&v, "prerank@v1")["computed"], 40);

    // A new version for the first 100 items only, the rest computed.
    let some: Vec<u64> = d.ids[..100].to_vec();
    npy_u64(&d.path("some.npy"), &some);
    let vecs: Vec<f32> = some.iter().flat_map(|&i| common::vector(i, 9)).collect();
    common::npy_f32(&d.path("some_emb.npy"), &vecs, DIM);
    let err = fails(&[
        "add-embedding",
        &d.p("s"),
        "--ids",
        &d.p("some.npy"),
        "--embedding",
        &format!("prerank@v2={}", d.p("some_emb.npy")),
    ]);
    assert!(err.contains("--item-tower"), "{err}");
    let out = ok(&[
        "add-embedding",
        &d.p("s"),
        "--ids",
        &d.p("some.npy"),
        "--embedding",
        &format!("prerank@v2={}", d.p("some_emb.npy")),
        "--item-tower",
        &d.p("tower2"),
    ]);
    let computed = ROWS + 40 - 100;
    assert!(
        out.contains(&format!("100 vectors given, {computed} computed")),
        "{out}"
    );
    let snap = Store::open(d.path("s")).unwrap().snapshot();
    assert!(!snap.is_computed(some[0], "prerank@v2").unwrap());
    assert!(snap.is_computed(d.ids[150], "prerank@v2").unwrap());
    assert_eq!(
        snap.get_embedding(some[7], "prerank@v2").unwrap(),
        common::vector(some[7], 9)
    );

    // Dropping the tower: computed vectors stay, new items need vectors.
    let out = ok(&["drop-model", &d.p("s"), "prerank@v1", "--item-tower"]);
    assert!(
        out.contains("dropped the item tower of prerank@v1"),
        "{out}"
    );
    let snap = Store::open(d.path("s")).unwrap().snapshot();
    assert_eq!(snap.computed_count("prerank@v1").unwrap(), 40);
    fresh_items(&d, "fresh2", 3);
    let fresh2: Vec<u64> = (0..3u64).map(|i| 190_000 + i).collect();
    npy_u64(&d.path("fresh2.npy"), &fresh2);
    let err = fails(&["add-items", &d.p("s"), "--ids", &d.p("fresh2.npy")]);
    assert!(
        err.contains("missing --embedding for [prerank@v1]"),
        "{err}"
    );
    let err = fails(&["drop-model", &d.p("s"), "prerank@v1", "--item-tower"]);
    assert!(
        err.contains("no item-tower-only bundle for prerank@v1"),
        "{err}"
    );
    // A tower added again computes the dropped tower's 40 vectors again,
    // and says so (it said only "40 computed so far").
    let out = ok(&["add-model", &d.p("s"), &d.p("tower")]);
    assert!(
        out.contains("the 40 vectors an earlier tower had computed were computed again"),
        "{out}"
    );
    ok(&["verify", &d.p("s")]);
}
