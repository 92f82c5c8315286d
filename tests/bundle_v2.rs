//! Contract v2 bundles (`docs/BUNDLE.md`): one test per new way a bundle
//! can be wrong, each asserting `Error::Bundle` and the field it names,
//! plus what v2 allows that v1 refuses, named bundles in a store, and the
//! checks of a fusion given with a query. The scores themselves are
//! checked against the numpy reference in `tests/three_tower_v2.rs`.

mod common;

use common::bundle::Bundle;
use serde_json::{json, Value};
use vstore::{Dtype, Error, Fusion, Model, Query, Schema, UserInputs, Writer};

const DIM: u32 = 16;
const KEY: &str = "prerank@v42";

fn schema() -> Schema {
    common::schema(DIM, Dtype::F16)
}

/// The tests' tiny bundle, tagged v2 (user_dim 4, item_dim 16, cross
/// output 3, upper output 5, heads `click` and `value`).
fn v2() -> Bundle {
    let mut b = Bundle::tiny("v42", DIM as usize);
    b.json["format"] = json!("vstore.three_tower.v2");
    b
}

fn set_tensor(b: &mut Bundle, name: &str, shape: &[usize]) {
    let n = shape.iter().product();
    b.tensors
        .insert(name.to_string(), (shape.to_vec(), vec![0.25; n]));
}

/// [`v2`] with MMoE over the upper output (width 5): three one-layer
/// experts to 4 values, a gate per head, and head weights `[1, 4]`.
fn mmoe() -> Bundle {
    let mut b = v2();
    let experts: Vec<Value> = (0..3)
        .map(|e| json!({"layers": [{"weight": format!("e{e}.weight"), "activation": "relu"}]}))
        .collect();
    b.json["upper"]["mmoe"] = json!({
        "experts": experts,
        "gates": {"click": {"weight": "g.click.weight"}, "value": {"weight": "g.value.weight", "bias": "g.value.bias"}}
    });
    for e in 0..3 {
        set_tensor(&mut b, &format!("e{e}.weight"), &[4, 5]);
    }
    set_tensor(&mut b, "g.click.weight", &[3, 5]);
    set_tensor(&mut b, "g.value.weight", &[3, 5]);
    set_tensor(&mut b, "g.value.bias", &[3]);
    set_tensor(&mut b, "heads.click.weight", &[1, 4]);
    set_tensor(&mut b, "heads.value.weight", &[1, 4]);
    b
}

fn load(b: &Bundle) -> vstore::Result<Model> {
    let (j, w) = b.bytes();
    Model::load(&j, &w, &schema())
}

/// Expects `Error::Bundle` naming exactly `field`; returns its message.
#[track_caller]
fn refused(b: &Bundle, field: &str) -> String {
    match load(b) {
        Err(e @ Error::Bundle { .. }) => {
            let msg = e.to_string();
            let Error::Bundle { field: f, .. } = e else {
                unreachable!()
            };
            assert_eq!(f, field, "the error names the wrong field: {msg}");
            msg
        }
        Err(e) => panic!("expected Error::Bundle at {field}, got {e:?}"),
        Ok(_) => panic!("bundle accepted; expected a refusal at {field}"),
    }
}

#[track_caller]
fn assert_contains(what: &str, part: &str) {
    assert!(what.contains(part), "{what:?} does not mention {part:?}");
}

#[test]
fn the_v2_example_parts_load_and_describe_themselves() {
    let mut b = mmoe();
    b.json["name"] = json!("mmoe_a");
    b.json["heads"][0]["tower"] = json!({"layers": [{"weight": "t.weight", "activation": "relu"}]});
    set_tensor(&mut b, "t.weight", &[2, 4]);
    set_tensor(&mut b, "heads.click.weight", &[1, 2]);
    b.json["heads"][1]["normalize"] =
        json!({"column": "price", "bucketize": [5.0], "values": [0.5, 2.0]});
    b.json["cross"]["se"] = json!({"layers": [{"weight": "se.weight", "activation": "sigmoid"}]});
    set_tensor(&mut b, "se.weight", &[5, 5]);
    b.json["fusion"] =
        json!({"kind": "click_weighted", "base": "click", "weights": {"value": 0.5}});
    let m = load(&b).unwrap();
    assert_eq!((m.name(), m.contract()), ("mmoe_a", 2));
    let d = m.describe();
    for part in [
        "SE",
        "MMoE 3 experts x 4",
        "1 head towers",
        "1 normalized",
        "click_weighted",
    ] {
        assert_contains(&d, part);
    }
    // SE (25) + cross (54 + 18) + upper (8 x 23 + 40) + experts (3 x 20) +
    // gates (30) + click tower (8) and head (2) + value head (4).
    assert_eq!(
        m.macs_per_item(),
        25 + 54 + 18 + 184 + 40 + 60 + 30 + 8 + 2 + 4
    );
}

#[test]
fn v2_parts_in_a_v1_bundle_are_refused() {
    let mut b = Bundle::tiny("v42", DIM as usize);
    b.json["name"] = json!("x");
    refused(&b, "name");
    let mut b = Bundle::tiny("v42", DIM as usize);
    b.json["fusion"] = json!({"kind": "click_weighted", "base": "click", "weights": {}});
    let msg = refused(&b, "fusion.kind");
    assert_contains(&msg, "vstore.three_tower.v2");
    let mut b = Bundle::tiny("v42", DIM as usize);
    b.json["cross"]["se"] = json!({"layers": []});
    refused(&b, "cross.se");
}

#[test]
fn float16_and_bfloat16_tensors_need_v2() {
    for dtype in [safetensors::Dtype::F16, safetensors::Dtype::BF16] {
        let with = |b: &Bundle| {
            let (j, _) = b.bytes();
            let raw: Vec<(String, Vec<usize>, Vec<u8>)> = (b.tensors.iter())
                .map(|(n, (s, v))| {
                    let bytes = v
                        .iter()
                        .flat_map(|&x| match dtype {
                            safetensors::Dtype::F16 => half::f16::from_f32(x).to_le_bytes(),
                            _ => half::bf16::from_f32(x).to_le_bytes(),
                        })
                        .collect();
                    (n.clone(), s.clone(), bytes)
                })
                .collect();
            let views = raw.iter().map(|(n, s, b)| {
                let v = safetensors::tensor::TensorView::new(dtype, s.clone(), b).unwrap();
                (n.clone(), v)
            });
            (j, safetensors::serialize(views, None).unwrap())
        };
        let (j, w) = with(&Bundle::tiny("v42", DIM as usize));
        let e = Model::load(&j, &w, &schema()).unwrap_err();
        assert_contains(&e.to_string(), "need contract v2");
        let (j, w) = with(&v2());
        Model::load(&j, &w, &schema()).unwrap();
    }
}

#[test]
fn a_head_without_a_gate() {
    let mut b = mmoe();
    b.json["upper"]["mmoe"]["gates"]
        .as_object_mut()
        .unwrap()
        .remove("value");
    let msg = refused(&b, "upper.mmoe.gates.value");
    assert_contains(&msg, "has no gate");
}

#[test]
fn a_gate_naming_no_head() {
    let mut b = mmoe();
    b.json["upper"]["mmoe"]["gates"]["like"] = json!({"weight": "g.click.weight"});
    let msg = refused(&b, "upper.mmoe.gates.like");
    assert_contains(&msg, "names no head");
}

#[test]
fn experts_of_different_output_sizes() {
    let mut b = mmoe();
    set_tensor(&mut b, "e1.weight", &[6, 5]);
    let msg = refused(&b, "upper.mmoe.experts[1].layers[0].weight");
    assert_contains(&msg, "expert 1 gives 6 values; expert 0 gives 4");
}

#[test]
fn a_single_expert() {
    let mut b = mmoe();
    let e = b.json["upper"]["mmoe"]["experts"][0].clone();
    b.json["upper"]["mmoe"]["experts"] = json!([e]);
    refused(&b, "upper.mmoe.experts");
}

#[test]
fn a_gate_of_the_wrong_shape() {
    let mut b = mmoe();
    set_tensor(&mut b, "g.click.weight", &[2, 5]);
    let msg = refused(&b, "upper.mmoe.gates.click.weight");
    assert_contains(&msg, "one row per expert (3)");
    let mut b = mmoe();
    set_tensor(&mut b, "g.value.weight", &[3, 4]);
    refused(&b, "upper.mmoe.gates.value.weight");
}

#[test]
fn dot_and_hadamard_need_equal_user_and_item_dims() {
    for part in ["dot", "hadamard"] {
        let mut b = v2();
        b.json["upper"]["inputs"] = json!(["user", "item", "cross", part]);
        let msg = refused(&b, "upper.inputs[3]");
        assert_contains(&msg, "user_dim == item_dim; they are 4 and 16");
    }
}

#[test]
fn upper_inputs_listed_twice_or_unknown() {
    let mut b = v2();
    b.json["upper"]["inputs"] = json!(["user", "user"]);
    refused(&b, "upper.inputs[1]");
    b.json["upper"]["inputs"] = json!(["user", "items"]);
    refused(&b, "upper.inputs[1]");
}

#[test]
fn an_se_chain_not_ending_one_scale_per_input() {
    let mut b = v2();
    b.json["cross"]["se"] = json!({"layers": [
        {"weight": "se.0.weight", "activation": "relu"},
        {"weight": "se.1.weight", "activation": "sigmoid"}
    ]});
    set_tensor(&mut b, "se.0.weight", &[3, 5]);
    set_tensor(&mut b, "se.1.weight", &[4, 3]);
    let msg = refused(&b, "cross.se.layers[1].weight");
    assert_contains(&msg, "one scale per cross input (5)");
    // Its first layer must read one value per cross input.
    set_tensor(&mut b, "se.0.weight", &[3, 9]);
    refused(&b, "cross.se.layers[0].weight");
}

#[test]
fn normalize_values_not_positive_or_of_the_wrong_count() {
    let mut b = v2();
    b.json["heads"][0]["normalize"] =
        json!({"column": "price", "bucketize": [5.0, 10.0], "values": [1.0, 0.0, 2.0]});
    refused(&b, "heads[0].normalize.values[1]");
    b.json["heads"][0]["normalize"]["values"] = json!([1.0, 2.0]);
    let msg = refused(&b, "heads[0].normalize.values");
    assert_contains(&msg, "3 buckets");
    b.json["heads"][0]["normalize"]["values"] = json!([1.0, 2.0, 3.0]);
    b.json["heads"][0]["normalize"]["column"] = json!("category");
    let msg = refused(&b, "heads[0].normalize.column");
    assert_contains(&msg, "categorical");
}

#[test]
fn a_fusion_naming_an_unknown_head_or_a_non_numeric_column() {
    for (fusion, field) in [
        (
            json!({"kind": "weighted_sum", "weights": {"like": 1.0}}),
            "fusion.weights.like",
        ),
        (
            json!({"kind": "click_weighted", "base": "like", "weights": {}}),
            "fusion.base",
        ),
        (
            json!({"kind": "offset_product", "terms": {"like": {"weight": 1.0, "exponent": 1.0}}}),
            "fusion.terms.like",
        ),
        (
            json!({"kind": "rank_per_head", "terms": {"like": {"weight": 1.0, "alpha": 1.0, "beta": 0.0}}}),
            "fusion.terms.like",
        ),
        (
            json!({"kind": "product", "weights": {"click": 1.0}, "columns": {"category": 1.0}}),
            "fusion.columns.category",
        ),
        (
            json!({"kind": "product", "weights": {"click": 1.0}, "columns": {"nope": 1.0}}),
            "fusion.columns.nope",
        ),
    ] {
        let mut b = v2();
        b.json["fusion"] = fusion;
        refused(&b, field);
    }
}

#[test]
fn fusion_numbers_out_of_range() {
    let mut b = v2();
    b.json["fusion"] =
        json!({"kind": "offset_product", "terms": {"click": {"weight": -1.0, "exponent": 1.0}}});
    refused(&b, "fusion.terms.click.weight");
    b.json["fusion"] = json!({"kind": "rank_per_head", "terms": {"click": {"weight": 1.0, "alpha": -1.0, "beta": 0.0}}});
    refused(&b, "fusion.terms.click.alpha");
    // offset_product raises heads to powers: an identity head is refused.
    b.json["heads"][1]["activation"] = json!("identity");
    b.json["fusion"] =
        json!({"kind": "offset_product", "terms": {"value": {"weight": 1.0, "exponent": 0.5}}});
    let msg = refused(&b, "fusion.terms.value");
    assert_contains(&msg, "positive");
}

#[test]
fn an_item_tower_with_a_user_input_or_of_the_wrong_width() {
    let mut b = v2();
    b.json["item_tower"] = json!({
        "inputs": [{"kind": "item_numeric", "column": "price"},
                   {"kind": "item_categorical", "column": "category", "embedding": "emb.category"}],
        "layers": [{"weight": "it.weight"}]
    });
    set_tensor(&mut b, "it.weight", &[16, 4]);
    assert!(load(&b).unwrap().has_item_tower());
    set_tensor(&mut b, "it.weight", &[15, 4]);
    let msg = refused(&b, "item_tower.layers[0].weight");
    assert_contains(&msg, "item_dim (16)");
    b.json["item_tower"]["inputs"][0] = json!({"kind": "user_dense", "name": "u", "dim": 1});
    refused(&b, "item_tower.inputs[0].kind");
}

#[test]
fn no_upper_layers_is_v2_only() {
    let mut b = v2();
    b.json["upper"]["layers"] = json!([]);
    // Heads read the upper input (4 + 16 + 3 = 23) directly.
    set_tensor(&mut b, "heads.click.weight", &[1, 23]);
    set_tensor(&mut b, "heads.value.weight", &[1, 23]);
    let m = load(&b).unwrap();
    assert!(m
        .precompute_refusal()
        .unwrap()
        .contains("upper.layers is empty"));
    b.json["format"] = json!("vstore.three_tower.v1");
    refused(&b, "upper.layers");
}

#[test]
fn named_bundles_share_a_version_and_queries_choose_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema()).unwrap();
    let mut tx = w.begin();
    tx.add_items(common::batch(&[1, 2, 3], DIM, 0)).unwrap();
    let (j, wt) = Bundle::tiny("v42", DIM as usize).bytes();
    tx.add_model(&j, &wt).unwrap();
    let mut b = v2();
    b.json["name"] = json!("ab");
    let (j2, w2) = b.bytes();
    tx.add_model(&j2, &w2).unwrap();
    // The same name again replaces that bundle only.
    tx.add_model(&j2, &w2).unwrap();
    let snap = tx.commit().unwrap();
    assert_eq!(snap.model_names(KEY), ["ab", "default"]);
    assert_eq!(snap.model_keys(), [KEY]);
    match snap.model(KEY) {
        Err(e @ Error::ModelChoice { .. }) => {
            assert_contains(&e.to_string(), "[ab, default]");
        }
        other => panic!("expected ModelChoice, got {other:?}"),
    }
    let inputs = UserInputs::new()
        .dense("user_stats", vec![0.5, -0.5])
        .by_item("user_category_ctr", [(1, vec![0.25])]);
    let user = [1.0, 0.5, -0.25, 0.0];
    let q = Query::ids(KEY, &user, &[1, 2, 3], 3).three_tower(&inputs);
    assert!(matches!(snap.query(&q), Err(Error::ModelChoice { .. })));
    let a = snap.query(&q.model("default")).unwrap();
    let b = snap.query(&q.model("ab")).unwrap();
    assert_eq!(a.hits.len(), 3);
    // Same weights, same fusion: the same ranking from either bundle.
    assert_eq!(a.hits, b.hits);
    let e = snap.query(&q.model("zz")).unwrap_err();
    assert_contains(&e.to_string(), "no bundle named \"zz\"");
    // A fusion per query: weights that rank by `value` alone.
    let f = Fusion::from_json(br#"{"kind": "weighted_sum", "weights": {"value": 1.0}}"#).unwrap();
    let r = snap.query(&q.model("ab").fusion(&f).with_heads()).unwrap();
    for (i, h) in r.hits.iter().enumerate() {
        assert_eq!(h.score, r.heads_of(i)[1]);
    }
    let bad = Fusion::from_json(br#"{"kind": "weighted_sum", "weights": {"like": 1.0}}"#).unwrap();
    let e = snap.query(&q.model("ab").fusion(&bad)).unwrap_err();
    assert_contains(&e.to_string(), "fusion.weights.like");
    assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
    // A fusion that does not parse is the same kind of error, naming the
    // field (a key given twice included).
    for (json, field) in [
        (
            &br#"{"kind": "weighted_sum", "wieghts": {}}"#[..],
            "fusion.wieghts",
        ),
        (
            br#"{"kind": "weighted_sum", "weights": {"value": 1, "value": 2}}"#,
            "fusion.weights.value",
        ),
        (br#"{"kind": "#, "fusion"),
    ] {
        match Fusion::from_json(json) {
            Err(Error::InvalidInput(m)) => assert_contains(&m, field),
            other => panic!("{}: {other:?}", String::from_utf8_lossy(json)),
        }
    }
    // A bundle or fusion on a two-tower query is a mistake, not ignored.
    let user16 = vec![0.5; DIM as usize];
    let two = Query::ids(KEY, &user16, &[1], 1).model("ab");
    assert!(matches!(snap.query(&two), Err(Error::InvalidInput(_))));
    // Dropping needs the name when there are several.
    let mut tx = w.begin();
    assert!(matches!(tx.drop_model(KEY), Err(Error::ModelChoice { .. })));
    tx.drop_model_named(KEY, "ab").unwrap();
    let snap = tx.commit().unwrap();
    assert_eq!(snap.model_names(KEY), ["default"]);
    snap.model(KEY).unwrap();
    drop(w);
    // Reopened from disk, the same.
    let store = vstore::Store::open(dir.path()).unwrap();
    assert_eq!(store.snapshot().model_names(KEY), ["default"]);
}

#[test]
fn a_manifest_giving_precomputed_files_to_a_bundle_that_cannot_have_them_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema()).unwrap();
    let mut tx = w.begin();
    tx.add_items(common::batch(&[1, 2, 3], DIM, 0)).unwrap();
    let (j, wt) = Bundle::tiny("v42", DIM as usize).bytes();
    tx.add_model_precomputed(&j, &wt, Dtype::F32).unwrap();
    // A v2 bundle without upper layers: nothing to precompute.
    let mut b = v2();
    b.json["name"] = json!("flat");
    b.json["upper"]["layers"] = json!([]);
    set_tensor(&mut b, "heads.click.weight", &[1, 23]);
    set_tensor(&mut b, "heads.value.weight", &[1, 23]);
    let (j2, w2) = b.bytes();
    let e = tx.add_model_precomputed(&j2, &w2, Dtype::F32).unwrap_err();
    assert_contains(&e.to_string(), "upper.layers is empty");
    tx.add_model(&j2, &w2).unwrap();
    tx.commit().unwrap();
    drop(w);
    // A forged manifest lists the default bundle's precomputed files for it.
    let forged = vstore::fuzzing::forge_precomputed(dir.path(), KEY, &format!("{KEY}#flat"));
    assert!(forged >= 1);
    let e = vstore::Store::open(dir.path()).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    assert_contains(&e.to_string(), "cannot have them");
}
