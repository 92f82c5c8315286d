//! The item tower's rules in the store: one tower per version (bundles
//! that disagree are refused naming `item_tower`), what a tower may read,
//! upserts, statistics refreshes, versions added for some items only, a
//! changed tower with precomputed bundles, and dropping. The float64
//! parity of computed vectors is `tests/item_tower.rs`; the model-based
//! property test is `tests/item_tower_model.rs`.

mod common;

use common::bundle::Bundle;
use common::{batch, schema, vector};
use vstore::{Dtype, EmbeddingDef, Error, ItemBatch, Model, Query, Snapshot, UserInputs, Writer};

const KEY: &str = "prerank@v42";
const DIM: u32 = 8;

/// Items of `common::batch`'s profile and statistics, without vectors.
fn fresh(ids: &[u64]) -> ItemBatch {
    common::items_without_vectors(ids, 0)
}

/// The f64 tower output for live item `id` of `snap`, from its stored
/// profile (missing values read the column defaults).
fn reference(b: &Bundle, snap: &Snapshot, id: u64) -> Vec<f64> {
    let cat = snap.get_categorical(id, "category").unwrap().unwrap_or(0);
    let price = snap.get_numeric(id, "price").unwrap().unwrap_or(-1.0);
    b.tower_reference(cat, price)
}

fn assert_computed_by(b: &Bundle, snap: &Snapshot, id: u64) {
    assert!(snap.is_computed(id, KEY).unwrap(), "item {id}");
    let got = snap.get_embedding(id, KEY).unwrap();
    let want = reference(b, snap, id);
    let scale = want.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (*g as f64 - w).abs() <= 1e-5 * scale,
            "item {id}: {got:?} vs {want:?}"
        );
    }
}

fn bundle_err(r: vstore::Result<String>) -> (String, String) {
    match r {
        Err(Error::Bundle { field, what }) => (field, what),
        other => panic!("expected a bundle error, got {other:?}"),
    }
}

#[test]
fn one_item_tower_per_version_and_what_it_may_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema(DIM, Dtype::F32)).unwrap();
    let mut tx = w.begin();
    tx.add_items(batch(&[1, 2, 3], DIM, 0)).unwrap();
    let tower = Bundle::tower_only("prerank", "v42", DIM as usize);
    let (j, wt) = tower.bytes();
    assert_eq!(tx.add_model(&j, &wt).unwrap(), KEY);
    // A three-tower bundle carrying the same tower is taken; another tower
    // is refused, naming the field and the bundle that has the other one.
    let (j2, w2) = Bundle::tiny("v42", DIM as usize).with_tower(0).bytes();
    tx.add_model(&j2, &w2).unwrap();
    let mut other = Bundle::tiny("v42", DIM as usize).with_tower(5);
    other.json["name"] = serde_json::json!("b");
    let (j3, w3) = other.bytes();
    let (field, what) = bundle_err(tx.add_model(&j3, &w3));
    assert_eq!(field, "item_tower");
    assert!(what.contains("prerank@v42"), "{what}");
    // Nor may the item-tower bundle change while a three-tower bundle
    // carries the old one.
    let (j4, w4) = Bundle::tower_only("prerank", "v42", DIM as usize)
        .with_salt(9)
        .bytes();
    let (field, _) = bundle_err(tx.add_model(&j4, &w4));
    assert_eq!(field, "item_tower");
    let snap = tx.commit().unwrap();
    assert!(snap.has_item_tower(KEY) && snap.has_item_tower_bundle(KEY));
    assert_eq!(
        snap.model_names(KEY),
        vec!["default"],
        "a tower is not a model"
    );
    assert!(snap.model(KEY).unwrap().has_item_tower());

    // What a tower may read: profile columns only, ending item_dim wide,
    // for a version the snapshot holds.
    let mut tx = w.begin();
    let mut stat = Bundle::tower_only("prerank", "v42", DIM as usize);
    stat.json["item_tower"]["inputs"][1]["column"] = serde_json::json!("ctr_1d");
    let (j, wt) = stat.bytes();
    let (field, what) = bundle_err(tx.add_model(&j, &wt));
    assert_eq!(field, "item_tower.inputs[1].column");
    assert!(what.contains("statistics column"), "{what}");
    let mut user = Bundle::tower_only("prerank", "v42", DIM as usize);
    user.json["item_tower"]["inputs"][1] =
        serde_json::json!({"kind": "user_dense", "name": "u", "dim": 1});
    let (j, wt) = user.bytes();
    assert_eq!(
        bundle_err(tx.add_model(&j, &wt)).0,
        "item_tower.inputs[1].kind"
    );
    let (j, wt) = Bundle::tower_only("prerank", "v42", 4).bytes();
    assert_eq!(bundle_err(tx.add_model(&j, &wt)).0, "item_dim");
    let (j, wt) = Bundle::tower_only("prerank", "v9", DIM as usize).bytes();
    assert_eq!(bundle_err(tx.add_model(&j, &wt)).0, "version");
    let mut extra = Bundle::tower_only("prerank", "v42", DIM as usize);
    extra.json["heads"] = serde_json::json!([]);
    let (j, wt) = extra.bytes();
    assert_eq!(bundle_err(tx.add_model(&j, &wt)).0, "heads");
    // A three-tower loader names the format of a tower-only bundle.
    let (j, wt) = tower.bytes();
    match Model::load(&j, &wt, snap.schema()) {
        Err(Error::Bundle { field, what }) => {
            assert_eq!(field, "format");
            assert!(what.contains("item-tower-only"), "{what}");
        }
        other => panic!("{other:?}"),
    }
    // Dropping the version drops its tower.
    tx.drop_embedding(KEY).unwrap();
    tx.forget_dropped_version(KEY).unwrap();
    tx.add_embedding(
        EmbeddingDef::new("prerank", "v42", DIM, Dtype::F32),
        &[1, 2, 3],
        &[0.5; 24],
    )
    .unwrap();
    let snap = tx.commit().unwrap();
    assert!(!snap.has_item_tower(KEY));
}

#[test]
fn upserts_recompute_stats_refreshes_do_not_and_offline_vectors_win() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema(DIM, Dtype::F32)).unwrap();
    let tower = Bundle::tower_only("prerank", "v42", DIM as usize);
    let mut tx = w.begin();
    let (j, wt) = tower.bytes();
    tx.add_model(&j, &wt).unwrap();
    tx.add_items(batch(&[1, 2, 3, 4], DIM, 0)).unwrap();
    tx.add_items(fresh(&[10, 11, 12, 15])).unwrap();
    let snap = tx.commit().unwrap();
    assert_eq!(snap.computed_count(KEY).unwrap(), 4);
    for id in [10, 11, 12, 15] {
        assert_computed_by(&tower, &snap, id);
    }
    assert_eq!(snap.get_embedding(2, KEY).unwrap(), vector(2, DIM, 0));

    // A statistics refresh writes statistics files only.
    let emb_files = |s: &Snapshot| -> Vec<String> {
        let mut v: Vec<String> = (s.files().into_iter())
            .filter(|f| f.contains("-emb-"))
            .collect();
        v.sort();
        v
    };
    let before = emb_files(&snap);
    let mut tx = w.begin();
    tx.update_stats(common::stats_update(&[1, 10, 11], 3))
        .unwrap();
    let snap = tx.commit().unwrap();
    assert_eq!(emb_files(&snap), before);
    assert_computed_by(&tower, &snap, 10);

    // An upsert replaces the item: without a vector, it is computed from
    // the new profile (an offline vector is not kept); with one, it wins.
    let mut tx = w.begin();
    let new_profile = ItemBatch::new(vec![2, 10])
        .categorical("category", vec![4, 2])
        .numeric("price", vec![33.0, 0.25]);
    tx.upsert_items(new_profile).unwrap();
    tx.upsert_items(batch(&[11], DIM, 7)).unwrap();
    let snap = tx.commit().unwrap();
    assert_computed_by(&tower, &snap, 2);
    assert_computed_by(&tower, &snap, 10);
    assert_eq!(snap.get_categorical(10, "category").unwrap(), Some(2));
    assert!(!snap.is_computed(11, KEY).unwrap());
    assert_eq!(snap.get_embedding(11, KEY).unwrap(), vector(11, DIM, 7));
    assert_eq!(snap.computed_count(KEY).unwrap(), 4); // 2, 10, 12, 15
                                                      // Deletes and compaction keep which rows were computed.
    let mut tx = w.begin();
    tx.delete_items(&[12]).unwrap();
    tx.commit().unwrap();
    let job = w.start_compaction().unwrap().expect("segments to merge");
    let done = job.run().unwrap();
    let mut tx = w.begin();
    assert!(tx.apply_compaction(done).unwrap());
    let snap = tx.commit().unwrap();
    assert_eq!(snap.segments().len(), 1);
    assert_eq!(snap.computed_count(KEY).unwrap(), 3);
    for id in [2, 10, 15] {
        assert_computed_by(&tower, &snap, id);
    }
    for id in [1, 3, 4, 11] {
        assert!(!snap.is_computed(id, KEY).unwrap(), "{id}");
    }
    assert!(matches!(
        snap.is_computed(12, KEY),
        Err(Error::UnknownId { .. })
    ));
    assert!(matches!(
        snap.computed_count("prerank@v9"),
        Err(Error::VersionSkew { .. })
    ));
    snap.verify().unwrap();
}

#[test]
fn a_version_added_for_some_items_is_completed_by_its_tower() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = common::store_of(dir.path(), DIM, &(0..50).collect::<Vec<_>>());
    let mut tx = w.begin();
    tx.delete_items(&[7]).unwrap();
    tx.commit().unwrap();
    // v43 from the offline job for even ids only; its tower, added in the
    // same transaction (after the vectors), computes the rest at commit.
    let given: Vec<u64> = (0..50).filter(|i| i % 2 == 0).collect();
    let vecs: Vec<f32> = given.iter().flat_map(|&i| vector(i, DIM, 5)).collect();
    let mut tx = w.begin();
    tx.add_embedding(
        EmbeddingDef::new("prerank", "v43", DIM, Dtype::F16),
        &given,
        &vecs,
    )
    .unwrap();
    let tower = Bundle::tower_only("prerank", "v43", DIM as usize);
    let (j, wt) = tower.bytes();
    tx.add_model(&j, &wt).unwrap();
    let snap = tx.commit().unwrap();
    assert_eq!(snap.computed_count("prerank@v43").unwrap(), 24); // odd ids but 7
    for id in (0..50u64).filter(|&i| i != 7) {
        let got = snap.get_embedding(id, "prerank@v43").unwrap();
        if id % 2 == 0 {
            assert!(!snap.is_computed(id, "prerank@v43").unwrap());
            assert_eq!(got, vector(id, DIM, 5)); // exact in f16
        } else {
            assert!(snap.is_computed(id, "prerank@v43").unwrap());
            let want = {
                let cat = snap.get_categorical(id, "category").unwrap().unwrap_or(0);
                let price = snap.get_numeric(id, "price").unwrap().unwrap_or(-1.0);
                tower.tower_reference(cat, price)
            };
            for (g, w) in got.iter().zip(&want) {
                assert!((*g as f64 - w).abs() <= w.abs() / 1024.0 + 1e-4, "{id}");
            }
        }
    }
    snap.verify().unwrap();
}

/// Two bundles with the same weights on one version, one with its first
/// layer's item part precomputed: after the tower changes (which computes
/// the computed vectors again), the precomputed part follows the new
/// vectors, so both bundles still give the same answers.
#[test]
fn a_changed_tower_recomputes_vectors_and_precomputed_parts() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema(DIM, Dtype::F32)).unwrap();
    let mut tx = w.begin();
    let tower = Bundle::tower_only("prerank", "v42", DIM as usize);
    let (j, wt) = tower.bytes();
    tx.add_model(&j, &wt).unwrap();
    tx.add_items(batch(&(0..30).collect::<Vec<_>>(), DIM, 0))
        .unwrap();
    tx.add_items(fresh(&(100..160).collect::<Vec<_>>()))
        .unwrap();
    let tiny = Bundle::tiny("v42", DIM as usize);
    let mut plain = tiny.clone();
    plain.json["format"] = serde_json::json!("vstore.three_tower.v2");
    plain.json["name"] = serde_json::json!("plain");
    let (jp, wp) = plain.bytes();
    tx.add_model(&jp, &wp).unwrap();
    let (jt, wt2) = tiny.bytes();
    tx.add_model_precomputed(&jt, &wt2, Dtype::F32).unwrap();
    let snap = tx.commit().unwrap();
    let inputs = UserInputs::new()
        .dense("user_stats", vec![0.5, -0.5])
        .by_item("user_category_ctr", [(3, vec![0.25])]);
    let user = [1.0, 0.5, -0.25, 0.75];
    let run = |s: &Snapshot, name: &str| {
        s.query(
            &Query::full_scan(KEY, &user, 20)
                .three_tower(&inputs)
                .model(name),
        )
        .unwrap()
    };
    let same = |s: &Snapshot| {
        let (a, b) = (run(s, "default"), run(s, "plain"));
        let ids = |r: &vstore::QueryResult| r.hits.iter().map(|h| h.id).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b));
        for (x, y) in a.hits.iter().zip(&b.hits) {
            assert!((x.score - y.score).abs() <= 1e-5 * x.score.abs().max(1.0));
        }
    };
    same(&snap);
    assert!(snap.model_is_precomputed(KEY) || snap.model_named_is_precomputed(KEY, "default"));
    let before = snap.get_embedding(120, KEY).unwrap();
    let changed = Bundle::tower_only("prerank", "v42", DIM as usize).with_salt(4);
    let mut tx = w.begin();
    let (j, wt) = changed.bytes();
    tx.add_model(&j, &wt).unwrap();
    let snap = tx.commit().unwrap();
    assert_ne!(snap.get_embedding(120, KEY).unwrap(), before);
    for id in [100, 120, 159] {
        assert_computed_by(&changed, &snap, id);
    }
    assert_eq!(snap.get_embedding(5, KEY).unwrap(), vector(5, DIM, 0));
    same(&snap);
    snap.verify().unwrap();

    // Without a tower, items need vectors again, and the refusal names
    // the version.
    let mut tx = w.begin();
    tx.drop_item_tower(KEY).unwrap();
    let err = tx.add_items(fresh(&[500])).unwrap_err();
    assert!(
        err.to_string().contains(KEY) && err.to_string().contains("item tower"),
        "{err}"
    );
    let snap = tx.commit().unwrap();
    assert!(!snap.has_item_tower(KEY));
    assert_eq!(
        snap.computed_count(KEY).unwrap(),
        60,
        "computed vectors stay"
    );
}

/// A tower whose output the column cannot hold (beyond f16's range) is a
/// refusal naming the item and the tower, on add and on a tower change;
/// nothing is published and the writer goes on.
#[test]
fn items_whose_tower_input_is_not_finite_are_refused() {
    // A tower reading log1p(price): a price of -3 (or -1) would feed it NaN
    // (-inf), which its ReLU would turn into a finite, wrong vector. The
    // add is refused naming the item and the column; good items compute.
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema(DIM, Dtype::F32)).unwrap();
    let mut b = Bundle::tower_only("prerank", "v42", DIM as usize);
    b.json["item_tower"]["inputs"][1]["transform"] = serde_json::json!("log1p");
    let (j, wt) = b.bytes();
    let mut tx = w.begin();
    tx.add_model(&j, &wt).unwrap();
    tx.add_items(fresh(&[1, 2])).unwrap();
    for price in [-3.0f32, -1.0] {
        let bad = ItemBatch::new(vec![11, 12])
            .categorical("category", vec![1, 2])
            .numeric("price", vec![0.5, price]);
        let msg = tx.add_items(bad).unwrap_err().to_string();
        assert!(
            msg.contains("item tower of prerank@v42")
                && msg.contains("item 12")
                && msg.contains("\"price\"")
                && msg.contains("not finite"),
            "{msg}"
        );
    }
    let snap = tx.commit().unwrap();
    assert_eq!(snap.len(), 2);
    for id in [1, 2] {
        let v = snap.get_embedding(id, KEY).unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{v:?}");
    }
}

#[test]
fn tower_outputs_the_column_cannot_hold_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema(DIM, Dtype::F16)).unwrap();
    let mut huge = Bundle::tower_only("prerank", "v42", DIM as usize);
    let bias = huge.tensors.get_mut("tower.1.bias").unwrap();
    bias.1.iter_mut().for_each(|b| *b = 1e6);
    let (hj, hw) = huge.bytes();
    let mut tx = w.begin();
    tx.add_model(&hj, &hw).unwrap();
    let err = tx.add_items(fresh(&[1, 2])).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("item tower of prerank@v42") && msg.contains("id 1") && msg.contains("f16"),
        "{msg}"
    );
    drop(tx);
    // A good tower computes; changing it to the huge one is refused at
    // commit, and the store keeps the good vectors.
    let good = Bundle::tower_only("prerank", "v42", DIM as usize);
    let (j, wt) = good.bytes();
    let mut tx = w.begin();
    tx.add_model(&j, &wt).unwrap();
    tx.add_items(fresh(&[1, 2, 3])).unwrap();
    let snap = tx.commit().unwrap();
    let mut tx = w.begin();
    tx.add_model(&hj, &hw).unwrap();
    let err = tx.commit().unwrap_err();
    assert!(
        err.to_string().contains("item tower of prerank@v42"),
        "{err}"
    );
    assert_eq!(w.snapshot().unwrap().number(), snap.number());
    let mut tx = w.begin();
    tx.update_stats(common::stats_update(&[1], 2)).unwrap();
    let snap = tx.commit().unwrap();
    for id in [1, 2, 3] {
        let got = snap.get_embedding(id, KEY).unwrap();
        let want = reference(&good, &snap, id);
        for (g, w) in got.iter().zip(&want) {
            assert!((*g as f64 - w).abs() <= w.abs() / 1024.0 + 1e-4, "{id}");
        }
    }
}
