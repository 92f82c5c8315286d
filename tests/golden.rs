//! Golden stores: `format/golden/v{N}/` is a small store written by format
//! version N. The newest (v6: v5's store plus a bundle on `prerank@v42h`
//! added at bf16 and a second, named `q8`, at int8, with their converted
//! weights; v5 is v4's store plus an item-tower-only bundle on
//! `recall@v7` and three items whose `recall@v7` vectors it computed; v4 is
//! v3's store plus a second, named contract v2
//! bundle on the same version; v3 is v2's store with id indexes in
//! four-slot buckets; v2 is v1's store plus a model bundle) is (1) opened
//! and every value checked, and (2) built afresh and compared file by file,
//! byte for byte, so that any change to the bytes written is a deliberate
//! one. Older goldens are frozen: they must keep reading with the same values.
//!
//! After an intended format change (which also bumps the format version and
//! updates `format/FORMAT.md`), add a new golden directory and regenerate it
//! with `VSTORE_BLESS=1 cargo test --test golden`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use vstore::{Dtype, EmbeddingDef, ItemBatch, Schema, Store, Writer};

fn golden_dir(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("format/golden/v{version}"))
}

const T0: u64 = 1_790_000_000_000; // fixed publish time (ms since epoch)

fn vec_of(id: u64, dim: usize, salt: u64) -> Vec<f32> {
    (0..dim as u64)
        .map(|j| ((id % 1_000_003 * 13 + j * 5 + salt) % 17) as f32 / 4.0 - 2.0)
        .collect()
}

fn ids_a() -> Vec<u64> {
    (1..=12).map(|i| i * 1000 + 7).collect()
}

fn ids_b() -> Vec<u64> {
    vec![u64::MAX, 0, 42, 99_999]
}

fn items(ids: &[u64]) -> ItemBatch {
    ItemBatch::new(ids.to_vec())
        .categorical_opt(
            "category",
            ids.iter()
                .map(|&i| (i % 3 != 0).then_some((i % 11) as u32))
                .collect(),
        )
        .numeric(
            "price",
            ids.iter().map(|&i| (i % 100) as f32 * 0.25).collect(),
        )
        .stat(
            "ctr_1d",
            ids.iter().map(|&i| (i % 10) as f32 / 10.0).collect(),
        )
        .embedding(
            "prerank@v42",
            ids.iter().flat_map(|&i| vec_of(i, 8, 0)).collect(),
        )
        .embedding(
            "prerank@v42h",
            ids.iter().flat_map(|&i| vec_of(i, 8, 1)).collect(),
        )
        .embedding(
            "recall@v7",
            ids.iter().flat_map(|&i| vec_of(i, 5, 2)).collect(),
        )
}

/// The second bundle of the v4 golden store: the tiny bundle as contract
/// v2, named `ab`, with click-weighted fusion.
fn named_bundle() -> (Vec<u8>, Vec<u8>) {
    let mut b = common::bundle::Bundle::tiny("v42", 8);
    b.json["format"] = serde_json::json!("vstore.three_tower.v2");
    b.json["name"] = serde_json::json!("ab");
    b.json["fusion"] =
        serde_json::json!({"kind": "click_weighted", "base": "click", "weights": {"value": 0.5}});
    b.bytes()
}

/// Items added in the v5 golden store without `recall@v7` vectors: the
/// version's item tower computes them.
fn ids_fresh() -> Vec<u64> {
    vec![77, 88, 5003]
}

/// What the golden stores of a format version hold beyond v1's.
#[derive(Clone, Copy)]
struct Parts {
    /// A model bundle (from v2).
    bundle: bool,
    /// A second, named bundle (from v4).
    named: bool,
    /// An item-tower-only bundle on `recall@v7` and items whose
    /// `recall@v7` vectors it computed (from v5).
    tower: bool,
    /// A bundle on `prerank@v42h` added at bf16, with its converted
    /// weights (from v6).
    bf16: bool,
}

fn parts(version: u32) -> Parts {
    Parts {
        bundle: version >= 2,
        named: version >= 4,
        tower: version >= 5,
        bf16: version >= 6,
    }
}

/// The bf16 bundle of the v6 golden store: the tiny bundle on
/// `prerank@v42h` with its first upper layer 16 wide (a layer the
/// precision converts; narrower ones stay f32).
fn bf16_bundle() -> (Vec<u8>, Vec<u8>) {
    let mut b = common::bundle::Bundle::tiny("v42h", 8);
    let wide = |n: usize, salt: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 5 + salt) % 19) as f32 - 9.0) / 37.0)
            .collect()
    };
    b.tensors
        .insert("upper.0.weight".into(), (vec![16, 15], wide(16 * 15, 1)));
    b.tensors
        .insert("upper.0.bias".into(), (vec![16], wide(16, 2)));
    b.tensors
        .insert("upper.2.weight".into(), (vec![5, 16], wide(5 * 16, 3)));
    b.bytes()
}

/// The int8 bundle of the v6 golden store: [`bf16_bundle`] as contract v2,
/// named `q8`.
fn int8_bundle() -> (Vec<u8>, Vec<u8>) {
    let (j, w) = bf16_bundle();
    let mut json: serde_json::Value = serde_json::from_slice(&j).unwrap();
    json["format"] = serde_json::json!("vstore.three_tower.v2");
    json["name"] = serde_json::json!("q8");
    (serde_json::to_vec_pretty(&json).unwrap(), w)
}

fn tower_bundle() -> common::bundle::Bundle {
    common::bundle::Bundle::tower_only("recall", "v7", 5)
}

/// Writes the golden store into `dir`: snapshot 1 (two segments, every
/// dtype but i8, missing values), snapshot 2 (stats refresh, an i8 version
/// added, a delete, metadata; with `p.bundle`, a model bundle too, with
/// `p.named` a second one, named, and with `p.tower` an item tower on
/// `recall@v7` and three items added without `recall@v7` vectors).
fn build(dir: &Path, p: Parts) {
    let schema = Schema::new()
        .categorical("category", 4)
        .numeric("price", 0.0)
        .stat("ctr_1d", 0.0)
        .stat("likes_7d", -1.0)
        .embedding("prerank", "v42", 8, Dtype::F32)
        .embedding("prerank", "v42h", 8, Dtype::F16)
        .embedding("recall", "v7", 5, Dtype::Bf16);
    let mut w = Writer::create(dir, schema).unwrap();
    let mut tx = w.begin();
    tx.set_created_time(SystemTime::UNIX_EPOCH + Duration::from_millis(T0));
    tx.add_items(items(&ids_a())).unwrap();
    tx.add_items(items(&ids_b())).unwrap();
    tx.set_metadata("producer", "golden").unwrap();
    tx.commit().unwrap();

    let all: Vec<u64> = ids_a().into_iter().chain(ids_b()).collect();
    let mut tx = w.begin();
    tx.set_created_time(SystemTime::UNIX_EPOCH + Duration::from_millis(T0 + 60_000));
    tx.update_stats(ItemBatch::new(vec![42, 99_999]).stat("likes_7d", vec![5.0, 6.0]))
        .unwrap();
    let v: Vec<f32> = all.iter().flat_map(|&i| vec_of(i, 16, 3)).collect();
    tx.add_embedding(EmbeddingDef::new("prerank", "v43", 16, Dtype::I8), &all, &v)
        .unwrap();
    tx.delete_items(&[2007]).unwrap();
    tx.set_metadata("model_rollout", "v43").unwrap();
    if p.bundle {
        let (j, w) = common::bundle::Bundle::tiny("v42", 8).bytes();
        tx.add_model(&j, &w).unwrap();
    }
    if p.named {
        let (j, w) = named_bundle();
        tx.add_model(&j, &w).unwrap();
    }
    if p.bf16 {
        let (j, w) = bf16_bundle();
        tx.add_model_at(&j, &w, vstore::Precision::Bf16).unwrap();
        let (j, w) = int8_bundle();
        tx.add_model_at(&j, &w, vstore::Precision::Int8).unwrap();
    }
    if p.tower {
        let (j, w) = tower_bundle().bytes();
        assert_eq!(tx.add_model(&j, &w).unwrap(), "recall@v7");
        let ids = ids_fresh();
        let mut batch = ItemBatch::new(ids.clone())
            .categorical_opt("category", vec![Some(1), None, Some(9)])
            .numeric_opt("price", vec![Some(12.5), Some(0.5), None]);
        for (key, dim, salt) in [
            ("prerank@v42", 8, 0),
            ("prerank@v42h", 8, 1),
            ("prerank@v43", 16, 3),
        ] {
            batch = batch.embedding(
                key,
                ids.iter().flat_map(|&i| vec_of(i, dim, salt)).collect(),
            );
        }
        tx.add_items(batch).unwrap();
    }
    tx.commit().unwrap();
}

/// The `recall@v7` vectors of the items added without one match the item
/// tower computed in f64 (to bf16 precision), and are marked computed.
fn check_computed(s: &vstore::Snapshot) {
    let b = tower_bundle();
    assert!(s.has_item_tower("recall@v7") && s.has_item_tower_bundle("recall@v7"));
    assert!(!s.has_item_tower("prerank@v42"));
    assert_eq!(s.computed_count("recall@v7").unwrap(), 3);
    assert_eq!(s.computed_count("prerank@v42").unwrap(), 0);
    // Missing: category reads its default 4, price 0; category 9 is past
    // the 5-row table and reads row 0.
    for (id, cat, price) in [(77, 1, 12.5), (88, 4, 0.5), (5003, 9, 0.0)] {
        assert!(s.is_computed(id, "recall@v7").unwrap(), "{id}");
        assert!(!s.is_computed(id, "prerank@v42").unwrap(), "{id}");
        let got = s.get_embedding(id, "recall@v7").unwrap();
        let want = b.tower_reference(cat, price);
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (*g as f64 - w).abs() <= w.abs() / 128.0 + 1e-6,
                "item {id}: {got:?} vs {want:?}"
            );
        }
    }
    assert!(!s.is_computed(1007, "recall@v7").unwrap());
}

/// The bf16 and int8 bundles read back at their precisions and score
/// within their error of the same bundle added at f32 (to a copy of the
/// store).
fn check_bf16(dir: &Path, s: &vstore::Snapshot) {
    assert_eq!(s.model_names("prerank@v42h"), vec!["default", "q8"]);
    let m = s.model_named("prerank@v42h", "default").unwrap();
    assert_eq!(m.precision(), vstore::Precision::Bf16);
    let m = s.model_named("prerank@v42h", "q8").unwrap();
    assert_eq!(m.precision(), vstore::Precision::Int8);
    let inputs = vstore::UserInputs::new()
        .dense("user_stats", vec![0.5, -0.5])
        .by_item("user_category_ctr", [(4, vec![0.25])]);
    let user = [1.0, 0.5, -0.25, 0.0];
    let ids = [1007, 3007, 42, 4007, 99_999];
    let query = vstore::Query::ids("prerank@v42h", &user, &ids, 5)
        .three_tower(&inputs)
        .model("default");
    let got = s.query(&query).unwrap();
    let got8 = s.query(&query.model("q8")).unwrap();
    let copy = tempfile::tempdir().unwrap();
    for f in data_files(dir) {
        std::fs::copy(dir.join(&f), copy.path().join(&f)).unwrap();
    }
    let mut w = Writer::open(copy.path()).unwrap();
    let mut tx = w.begin();
    let (j, wts) = bf16_bundle();
    tx.add_model(&j, &wts).unwrap();
    tx.commit().unwrap();
    let f32s = Store::open(copy.path()).unwrap().snapshot();
    assert_eq!(
        f32s.model_named("prerank@v42h", "default")
            .unwrap()
            .precision(),
        vstore::Precision::F32
    );
    let want = f32s.query(&query).unwrap();
    assert_eq!(got.hits.len(), 5);
    assert_eq!(got8.hits.len(), 5);
    for h in got.hits.iter().chain(&got8.hits) {
        let w = want.hits.iter().find(|x| x.id == h.id).unwrap();
        assert!(
            h.score.is_finite() && (h.score - w.score).abs() <= 0.05 * w.score.abs() + 1e-3,
            "item {}: bf16 or int8 {} vs f32 {}",
            h.id,
            h.score,
            w.score
        );
    }
}

fn check_values(dir: &Path, p: Parts) {
    let Parts { bundle, named, .. } = p;
    let store = Store::open(dir).unwrap();
    assert_eq!(store.snapshots().unwrap(), vec![1, 2]);
    let s = store.snapshot();
    assert_eq!(s.number(), 2);
    assert_eq!(s.parent(), Some(1));
    assert_eq!(
        s.created(),
        SystemTime::UNIX_EPOCH + Duration::from_millis(T0 + 60_000)
    );
    assert_eq!(s.metadata("producer"), Some("golden"));
    assert_eq!(s.metadata("model_rollout"), Some("v43"));
    assert_eq!(
        s.embedding_keys(),
        vec!["prerank@v42", "prerank@v42h", "recall@v7", "prerank@v43"]
    );
    assert_eq!(s.len(), if p.tower { 18 } else { 15 });
    if p.tower {
        check_computed(&s);
    } else {
        assert!(!s.has_item_tower("recall@v7"));
        assert_eq!(s.computed_count("recall@v7").unwrap(), 0);
    }
    if named {
        assert_eq!(s.model_names("prerank@v42"), vec!["ab", "default"]);
        let m = s.model_named("prerank@v42", "ab").unwrap();
        assert_eq!((m.name(), m.contract()), ("ab", 2));
        assert!(
            s.model("prerank@v42").is_err(),
            "two bundles: one must be named"
        );
    }
    if p.bf16 {
        check_bf16(dir, &s);
    }
    if bundle {
        let keys = if p.bf16 {
            vec!["prerank@v42", "prerank@v42h"]
        } else {
            vec!["prerank@v42"]
        };
        assert_eq!(s.model_keys(), keys);
        assert_eq!(
            s.model("prerank@v42")
                .map_or(vstore::Precision::F32, |m| m.precision()),
            vstore::Precision::F32
        );
        let m = s.model_named("prerank@v42", "default").unwrap();
        assert_eq!(m.head_names(), vec!["click", "value"]);
        let inputs = vstore::UserInputs::new()
            .dense("user_stats", vec![0.5, -0.5])
            .by_item("user_category_ctr", [(4, vec![0.25])]);
        let user = [1.0, 0.5, -0.25, 0.0];
        let ids = [1007, 2007, 3007, 42, 5];
        let r = s
            .query(
                &vstore::Query::ids("prerank@v42", &user, &ids, 10)
                    .three_tower(&inputs)
                    .model("default"),
            )
            .unwrap();
        assert_eq!(r.not_found, vec![2007, 5]);
        assert_eq!(r.hits.len(), 3);
        assert!(r.hits.iter().all(|h| h.score.is_finite() && h.score > 0.0));
    } else {
        assert!(s.model_keys().is_empty());
    }
    assert!(s.lookup(2007).is_none());
    for id in ids_a().into_iter().chain(ids_b()).filter(|&i| i != 2007) {
        assert_eq!(
            s.get_embedding(id, "prerank@v42").unwrap(),
            vec_of(id, 8, 0)
        );
        // The generator's values are exact in f16 and bf16 (multiples of 1/4).
        assert_eq!(
            s.get_embedding(id, "prerank@v42h").unwrap(),
            vec_of(id, 8, 1)
        );
        assert_eq!(s.get_embedding(id, "recall@v7").unwrap(), vec_of(id, 5, 2));
        let q = s.get_embedding(id, "prerank@v43").unwrap();
        for (g, w) in q.iter().zip(vec_of(id, 16, 3)) {
            assert!((g - w).abs() <= 2.0 / 254.0 + 1e-6);
        }
        let cat = s.get_categorical(id, "category").unwrap();
        assert_eq!(cat, (id % 3 != 0).then_some((id % 11) as u32));
        assert_eq!(
            s.get_numeric(id, "price").unwrap(),
            Some((id % 100) as f32 * 0.25)
        );
        assert_eq!(
            s.get_stat(id, "ctr_1d").unwrap(),
            Some((id % 10) as f32 / 10.0)
        );
        let likes = s.get_stat(id, "likes_7d").unwrap();
        let want = match id {
            42 => Some(5.0),
            99_999 => Some(6.0),
            _ => None,
        };
        assert_eq!(likes, want);
    }
    // A missing categorical reads as the declared default in the column.
    let at = s.lookup(3007).unwrap();
    assert_eq!(
        s.segments()[at.segment]
            .categorical("category")
            .unwrap()
            .get(at.row),
        4
    );
    store.verify().unwrap();
    // Snapshot 1 is still there and differs as expected.
    let s1 = store.open_snapshot(1).unwrap();
    assert_eq!(s1.len(), 16);
    assert_eq!(s1.get_stat(42, "likes_7d").unwrap(), None);
    assert!(s1.get_embedding(42, "prerank@v43").is_err());
    s1.verify().unwrap();
}

fn data_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "LOCK")
        .collect();
    v.sort();
    v
}

#[test]
fn golden_v1_store_still_reads() {
    check_values(&golden_dir(1), parts(1));
}

#[test]
fn golden_v2_store_still_reads() {
    check_values(&golden_dir(2), parts(2));
}

#[test]
fn golden_v3_store_still_reads() {
    check_values(&golden_dir(3), parts(3));
}

#[test]
fn golden_v4_store_still_reads() {
    check_values(&golden_dir(4), parts(4));
}

#[test]
fn golden_v5_store_still_reads() {
    check_values(&golden_dir(5), parts(5));
}

/// A format-2 store updated by this build holds files of both versions
/// (its old id indexes keep their one-slot layout, the new segment's use
/// four-slot buckets), says so per file, and finds every id in both.
#[test]
fn golden_v2_store_updated_by_this_build_mixes_versions() {
    let dir = tempfile::tempdir().unwrap();
    for f in data_files(&golden_dir(2)) {
        std::fs::copy(golden_dir(2).join(&f), dir.path().join(&f)).unwrap();
    }
    let new_ids: Vec<u64> = (1..=40).map(|i| i * 1000 + 11).collect();
    let mut w = Writer::open(dir.path()).unwrap();
    let mut tx = w.begin();
    let mut batch = items(&new_ids);
    batch = batch.embedding(
        "prerank@v43",
        new_ids.iter().flat_map(|&i| vec_of(i, 16, 3)).collect(),
    );
    tx.add_items(batch).unwrap();
    tx.commit().unwrap();
    drop(w);

    let store = Store::open(dir.path()).unwrap();
    let s = store.snapshot();
    let versions = s.file_versions();
    assert_eq!(versions.len(), s.files().len());
    let of = |v: u32| versions.iter().filter(|(_, x)| *x == v).count();
    // Two old segments' files, and the old snapshot's bundle, stay at 2.
    assert!(of(2) >= 2, "{versions:?}");
    // The new manifest and the new segment's files are this build's.
    assert!(of(vstore::FORMAT_VERSION) >= 2, "{versions:?}");
    assert_eq!(of(2) + of(vstore::FORMAT_VERSION), versions.len());
    assert_eq!(versions[0].1, vstore::FORMAT_VERSION, "manifest first");
    let old: Vec<u64> = ids_a()
        .into_iter()
        .chain(ids_b())
        .filter(|&i| i != 2007)
        .collect();
    for &id in old.iter().chain(&new_ids) {
        let at = s.lookup(id);
        assert!(at.is_some(), "id {id} not found");
        let user = vec![1.0f32; 16];
        let r = s
            .query(&vstore::Query::ids("prerank@v43", &user, &[id], 1))
            .unwrap();
        assert_eq!(r.hits.len(), 1, "id {id}");
        assert_eq!(r.hits[0].id, id);
    }
    assert!(s.lookup(2007).is_none(), "deleted id stays deleted");
}

#[test]
fn golden_store_reads_and_writer_reproduces_it_byte_for_byte() {
    let golden = golden_dir(vstore::FORMAT_VERSION);
    let fresh = tempfile::tempdir().unwrap();
    build(fresh.path(), parts(vstore::FORMAT_VERSION));
    if std::env::var_os("VSTORE_BLESS").is_some() {
        let _ = std::fs::remove_dir_all(&golden);
        std::fs::create_dir_all(&golden).unwrap();
        for f in data_files(fresh.path()) {
            std::fs::copy(fresh.path().join(&f), golden.join(&f)).unwrap();
        }
    }
    assert!(
        golden.is_dir(),
        "{} is missing; generate it with VSTORE_BLESS=1 cargo test --test golden",
        golden.display()
    );
    check_values(&golden, parts(vstore::FORMAT_VERSION));
    let want = data_files(&golden);
    assert_eq!(data_files(fresh.path()), want, "file names changed");
    for f in &want {
        let a = std::fs::read(golden.join(f)).unwrap();
        let b = std::fs::read(fresh.path().join(f)).unwrap();
        assert!(
            a == b,
            "{f}: the bytes written differ from the golden store (a format change? \
             bump the format version, update format/FORMAT.md, then bless)"
        );
    }
}
