//! Model bundles: one test per validation error (each asserting the error
//! variant and that the field it names is the culprit), query-input errors
//! of three-tower queries, and how bundles live in a store (added with
//! their embedding version, dropped with it, replaced, kept across updates
//! and compaction, refused without a trace, damaged on disk).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::bundle::Bundle;
use serde_json::{json, Value};
use vstore::{
    Dtype, EmbeddingDef, Error, Filter, Model, Query, Schema, Snapshot, Store, UserInputs, Writer,
};

const DIM: u32 = 16;
const KEY: &str = "prerank@v42";

fn schema() -> Schema {
    common::schema(DIM, Dtype::F16)
}

/// A valid bundle for `prerank@v42` of [`schema`].
fn tiny() -> Bundle {
    Bundle::tiny("v42", DIM as usize)
}

/// Replaces tensor `name` by one of `shape` (all values 0.25).
fn set_tensor(b: &mut Bundle, name: &str, shape: &[usize]) {
    let n = shape.iter().product();
    b.tensors
        .insert(name.to_string(), (shape.to_vec(), vec![0.25; n]));
}

/// The object at `v` (panics if it is not one: a mistake in the test).
fn obj(v: &mut Value) -> &mut serde_json::Map<String, Value> {
    v.as_object_mut().expect("an object")
}

/// Loads `json` + `weights` against [`schema`], expects `Error::Bundle`
/// naming exactly `field`, and returns its `what`.
#[track_caller]
fn refused_bytes(json: &[u8], weights: &[u8], field: &str) -> String {
    match Model::load(json, weights, &schema()) {
        Err(e @ Error::Bundle { .. }) => {
            let msg = e.to_string();
            let Error::Bundle { field: f, what } = e else {
                unreachable!()
            };
            assert_eq!(f, field, "the error names the wrong field: {msg}");
            assert!(msg.contains(field), "message does not name {field}: {msg}");
            what
        }
        Err(e) => panic!("expected Error::Bundle at {field}, got {e:?}"),
        Ok(m) => panic!("bundle {} accepted; expected a refusal at {field}", m.key()),
    }
}

#[track_caller]
fn refused(b: &Bundle, field: &str) -> String {
    let (j, w) = b.bytes();
    refused_bytes(&j, &w, field)
}

#[track_caller]
fn assert_contains(what: &str, part: &str) {
    assert!(what.contains(part), "{what:?} does not mention {part:?}");
}

/// `weights.safetensors` of `b`, with tensor `name` stored as `dtype`
/// (its values converted) instead of F32.
fn weights_with_dtype(b: &Bundle, name: &str, dtype: safetensors::Dtype) -> Vec<u8> {
    let raw: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = b
        .tensors
        .iter()
        .map(|(n, (s, v))| {
            let (dt, bytes): (_, Vec<u8>) = if n == name {
                match dtype {
                    safetensors::Dtype::F16 => (
                        dtype,
                        v.iter()
                            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                            .collect(),
                    ),
                    safetensors::Dtype::F64 => (
                        dtype,
                        v.iter().flat_map(|&x| (x as f64).to_le_bytes()).collect(),
                    ),
                    other => panic!("test helper does not write {other:?}"),
                }
            } else {
                (
                    safetensors::Dtype::F32,
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            };
            (n.clone(), s.clone(), dt, bytes)
        })
        .collect();
    let views = raw.iter().map(|(n, s, dt, bytes)| {
        (
            n.clone(),
            safetensors::tensor::TensorView::new(*dt, s.clone(), bytes).unwrap(),
        )
    });
    safetensors::serialize(views, None).unwrap()
}

// ---------------------------------------------------------------------------
// The baseline: the tiny bundle is valid.

#[test]
fn the_tiny_bundle_is_valid() {
    let (j, w) = tiny().bytes();
    let m = Model::load(&j, &w, &schema()).unwrap();
    assert_eq!(m.key(), KEY);
    assert_eq!(m.user_dim(), 4);
    assert_eq!(m.item_dim(), DIM as usize);
    assert_eq!(m.head_names(), vec!["click", "value"]);
    let names: Vec<String> = m.user_inputs().into_iter().map(|u| u.name).collect();
    assert_eq!(names, vec!["user_stats", "user_category_ctr"]);
}

// ---------------------------------------------------------------------------
// model.json: syntax, format tag, keys, types.

#[test]
fn model_json_that_is_not_json() {
    let (_, w) = tiny().bytes();
    let what = refused_bytes(b"{\"format\": \"vstore.three_tower.v1\",", &w, "model.json");
    assert_contains(&what, "not valid JSON");
    // Valid JSON that is not an object is refused too, naming the file.
    let what = refused_bytes(b"[1, 2, 3]", &w, "model.json");
    assert_contains(&what, "must be an object");
}

#[test]
fn wrong_format_tag() {
    let mut b = tiny();
    b.json["format"] = json!("vstore.three_tower.v3");
    let what = refused(&b, "format");
    assert_contains(&what, "vstore.three_tower.v3");
    assert_contains(&what, vstore::BUNDLE_FORMAT);
    assert_contains(&what, vstore::BUNDLE_FORMAT_V2);
    // A bundle of another format with a key this build does not know is
    // still reported as a format mismatch, not as an unknown key.
    obj(&mut b.json).insert("tower_count".into(), json!(4));
    refused(&b, "format");
}

#[test]
fn missing_format_tag() {
    let mut b = tiny();
    obj(&mut b.json).remove("format");
    let what = refused(&b, "format");
    assert_contains(&what, "required");
}

#[test]
fn unknown_key_is_refused() {
    // A misspelt key must not be silently ignored.
    let mut b = tiny();
    let l = obj(&mut b.json["cross"]["layers"][0]);
    let act = l.remove("activation").unwrap();
    l.insert("activaton".into(), act);
    let what = refused(&b, "cross.layers[0].activaton");
    assert_contains(&what, "unknown key");
    assert_contains(&what, "activation");

    let mut b = tiny();
    obj(&mut b.json["heads"][1]).insert("neg_sampling".into(), json!(0.5));
    refused(&b, "heads[1].neg_sampling");

    let mut b = tiny();
    obj(&mut b.json).insert("user_dims".into(), json!(4));
    refused(&b, "user_dims");
}

#[test]
fn missing_required_field() {
    let mut b = tiny();
    obj(&mut b.json["heads"][0]).remove("weight");
    let what = refused(&b, "heads[0].weight");
    assert_contains(&what, "required");
}

#[test]
fn field_of_the_wrong_type() {
    let mut b = tiny();
    b.json["user_dim"] = json!("4");
    let what = refused(&b, "user_dim");
    assert_contains(&what, "\"4\"");

    let mut b = tiny();
    b.json["cross"]["inputs"] = json!({"kind": "user_dense"});
    let what = refused(&b, "cross.inputs");
    assert_contains(&what, "array");
}

#[test]
fn dimension_zero() {
    let mut b = tiny();
    b.json["user_dim"] = json!(0);
    refused(&b, "user_dim");

    let mut b = tiny();
    b.json["item_dim"] = json!(0);
    refused(&b, "item_dim");

    let mut b = tiny();
    b.json["cross"]["inputs"][3]["dim"] = json!(0);
    let what = refused(&b, "cross.inputs[3].dim");
    assert_contains(&what, "found 0");
}

// ---------------------------------------------------------------------------
// Cross inputs.

#[test]
fn bad_input_kind() {
    let mut b = tiny();
    b.json["cross"]["inputs"][2]["kind"] = json!("item_text");
    let what = refused(&b, "cross.inputs[2].kind");
    assert_contains(&what, "item_text");
}

#[test]
fn bucketize_without_embedding() {
    let mut b = tiny();
    obj(&mut b.json["cross"]["inputs"][1]).remove("embedding");
    let what = refused(&b, "cross.inputs[1].embedding");
    assert_contains(&what, "bucketize");
}

#[test]
fn embedding_given_for_identity_or_log1p() {
    let mut b = tiny();
    b.json["cross"]["inputs"][0]["embedding"] = json!("emb.price");
    refused(&b, "cross.inputs[0].embedding");

    let mut b = tiny();
    b.json["cross"]["inputs"][0]["transform"] = json!("identity");
    b.json["cross"]["inputs"][0]["embedding"] = json!("emb.price");
    refused(&b, "cross.inputs[0].embedding");
}

#[test]
fn bucketize_boundaries_not_increasing() {
    let mut b = tiny();
    b.json["cross"]["inputs"][1]["transform"] = json!({"bucketize": [10.0, 0.0]});
    let what = refused(&b, "cross.inputs[1].transform.bucketize[1]");
    assert_contains(&what, "strictly increasing");

    // Equal boundaries are not increasing either.
    let mut b = tiny();
    b.json["cross"]["inputs"][1]["transform"] = json!({"bucketize": [5.0, 5.0]});
    refused(&b, "cross.inputs[1].transform.bucketize[1]");

    // No boundary at all.
    let mut b = tiny();
    b.json["cross"]["inputs"][1]["transform"] = json!({"bucketize": []});
    refused(&b, "cross.inputs[1].transform.bucketize");
}

#[test]
fn user_by_item_default_of_wrong_length() {
    let mut b = tiny();
    b.json["cross"]["inputs"][4]["default"] = json!([0.0, 1.0]);
    let what = refused(&b, "cross.inputs[4].default");
    assert_contains(&what, "2 values");
}

#[test]
fn duplicate_user_input_name() {
    let mut b = tiny();
    b.json["cross"]["inputs"][4]["name"] = json!("user_stats");
    let what = refused(&b, "cross.inputs[4].name");
    assert_contains(&what, "user_stats");
}

#[test]
fn duplicate_head_name() {
    let mut b = tiny();
    b.json["heads"][1]["name"] = json!("click");
    let what = refused(&b, "heads[1].name");
    assert_contains(&what, "click");
}

// ---------------------------------------------------------------------------
// Tensors.

#[test]
fn tensor_missing_from_weights() {
    let mut b = tiny();
    b.tensors.remove("cross.2.weight");
    let what = refused(&b, "cross.layers[1].weight");
    assert_contains(&what, "cross.2.weight");

    let mut b = tiny();
    b.tensors.remove("emb.category");
    let what = refused(&b, "cross.inputs[2].embedding");
    assert_contains(&what, "emb.category");
}

#[test]
fn tensor_not_f32() {
    let b = tiny();
    let (j, _) = b.bytes();
    let w = weights_with_dtype(&b, "emb.category", safetensors::Dtype::F16);
    let what = refused_bytes(&j, &w, "cross.inputs[2].embedding");
    assert_contains(&what, "F16");
    assert_contains(&what, "emb.category");

    let w = weights_with_dtype(&b, "upper.0.weight", safetensors::Dtype::F64);
    let what = refused_bytes(&j, &w, "upper.layers[0].weight");
    assert_contains(&what, "F64");
}

#[test]
fn tensor_with_nan_or_infinity() {
    let mut b = tiny();
    b.tensors.get_mut("cross.0.bias").unwrap().1[3] = f32::NAN;
    let what = refused(&b, "cross.layers[0].bias");
    assert_contains(&what, "element 3 is NaN");

    let mut b = tiny();
    b.tensors.get_mut("heads.value.weight").unwrap().1[0] = f32::INFINITY;
    let what = refused(&b, "heads[1].weight");
    assert_contains(&what, "inf");

    let mut b = tiny();
    b.tensors.get_mut("emb.price").unwrap().1[5] = f32::NEG_INFINITY;
    refused(&b, "cross.inputs[1].embedding");
}

#[test]
fn weights_file_not_safetensors() {
    let (j, _) = tiny().bytes();
    let garbage: Vec<u8> = (0..300u32).map(|i| (i * 37 % 251) as u8).collect();
    let what = refused_bytes(&j, &garbage, "weights.safetensors");
    assert_contains(&what, "safetensors");
    refused_bytes(&j, b"", "weights.safetensors");
}

/// `weights` with its header passed through `edit` (the data unchanged).
fn edit_header(weights: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let n = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&weights[8..8 + n]).unwrap();
    edit(&mut header);
    let text = serde_json::to_vec(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&weights[8 + n..]);
    out
}

#[test]
fn a_tensor_whose_bytes_disagree_with_its_header_is_named() {
    let (j, w) = tiny().bytes();
    // A shape that needs more bytes than the tensor's data_offsets hold.
    let bad = edit_header(&w, |h| h["upper.0.weight"]["shape"][0] = json!(1000));
    let what = refused_bytes(&j, &bad, "weights.safetensors");
    assert_contains(&what, "tensor \"upper.0.weight\": shape [1000, ");
    assert_contains(&what, "its data_offsets [");
    // The last tensor's bytes running past the end of the file.
    let bad = edit_header(&w, |h| {
        let last = (h.as_object().unwrap().iter())
            .filter(|(k, _)| *k != "__metadata__")
            .max_by_key(|(_, t)| t["data_offsets"][1].as_u64().unwrap())
            .map(|(k, _)| k.clone())
            .unwrap();
        let o = &mut h[&last]["data_offsets"];
        let (a, b) = (o[0].as_u64().unwrap() + 64, o[1].as_u64().unwrap() + 64);
        *o = json!([a, b]);
    });
    let what = refused_bytes(&j, &bad, "weights.safetensors");
    assert_contains(&what, "tensor \"");
}

// ---------------------------------------------------------------------------
// The chain of shapes.

#[test]
fn cross_layer_0_input_width_wrong() {
    // The cross input is 1 + 2 + 3 + 2 + 1 = 9 wide.
    let mut b = tiny();
    set_tensor(&mut b, "cross.0.weight", &[6, 8]);
    let what = refused(&b, "cross.layers[0].weight");
    assert_contains(&what, "[6, 8]");
    assert_contains(&what, "[out, 9]");
}

#[test]
fn upper_layer_0_input_width_wrong() {
    // user_dim + item_dim + cross out = 4 + 16 + 3.
    let mut b = tiny();
    set_tensor(&mut b, "upper.0.weight", &[8, 4 + DIM as usize + 2]);
    let what = refused(&b, "upper.layers[0].weight");
    assert_contains(&what, "[out, 23]");

    // A cross tower whose last layer outputs 4 instead of 3 breaks the
    // chain at the upper layer that reads it.
    let mut b = tiny();
    set_tensor(&mut b, "cross.2.weight", &[4, 6]);
    set_tensor(&mut b, "cross.2.bias", &[4]);
    let what = refused(&b, "upper.layers[0].weight");
    assert_contains(&what, "[out, 24]");
}

#[test]
fn upper_layer_1_input_width_wrong() {
    let mut b = tiny();
    set_tensor(&mut b, "upper.2.weight", &[5, 7]);
    let what = refused(&b, "upper.layers[1].weight");
    assert_contains(&what, "[out, 8]");
}

#[test]
fn head_weight_shape_wrong() {
    let mut b = tiny();
    set_tensor(&mut b, "heads.click.weight", &[1, 4]);
    let what = refused(&b, "heads[0].weight");
    assert_contains(&what, "[1, 5]");

    // Two outputs for one head.
    let mut b = tiny();
    set_tensor(&mut b, "heads.value.weight", &[2, 5]);
    refused(&b, "heads[1].weight");
}

#[test]
fn bias_shape_wrong() {
    let mut b = tiny();
    set_tensor(&mut b, "upper.0.bias", &[7]);
    let what = refused(&b, "upper.layers[0].bias");
    assert_contains(&what, "[8]");

    let mut b = tiny();
    set_tensor(&mut b, "cross.0.bias", &[1, 6]);
    refused(&b, "cross.layers[0].bias");

    let mut b = tiny();
    set_tensor(&mut b, "heads.value.bias", &[2]);
    refused(&b, "heads[1].bias");
}

#[test]
fn bucket_table_with_wrong_row_count() {
    // Two boundaries: three buckets.
    let mut b = tiny();
    set_tensor(&mut b, "emb.price", &[4, 2]);
    let what = refused(&b, "cross.inputs[1].embedding");
    assert_contains(&what, "[3, e]");

    let mut b = tiny();
    set_tensor(&mut b, "emb.price", &[2, 2]);
    refused(&b, "cross.inputs[1].embedding");
}

#[test]
fn categorical_table_empty_or_one_dimensional() {
    let mut b = tiny();
    set_tensor(&mut b, "emb.category", &[0, 3]);
    let what = refused(&b, "cross.inputs[2].embedding");
    assert_contains(&what, "[0, 3]");

    let mut b = tiny();
    set_tensor(&mut b, "emb.category", &[15]);
    refused(&b, "cross.inputs[2].embedding");

    let mut b = tiny();
    set_tensor(&mut b, "emb.category", &[5, 0]);
    refused(&b, "cross.inputs[2].embedding");
}

// ---------------------------------------------------------------------------
// Columns.

#[test]
fn item_numeric_on_a_missing_column() {
    let mut b = tiny();
    b.json["cross"]["inputs"][0]["column"] = json!("ctr_7d");
    let what = refused(&b, "cross.inputs[0].column");
    assert_contains(&what, "ctr_7d");
}

#[test]
fn item_numeric_on_a_categorical_column() {
    let mut b = tiny();
    b.json["cross"]["inputs"][0]["column"] = json!("category");
    let what = refused(&b, "cross.inputs[0].column");
    assert_contains(&what, "categorical");
}

#[test]
fn item_categorical_on_a_numeric_column() {
    let mut b = tiny();
    b.json["cross"]["inputs"][2]["column"] = json!("price");
    let what = refused(&b, "cross.inputs[2].column");
    assert_contains(&what, "numeric");

    // A statistics column is numeric too.
    let mut b = tiny();
    b.json["cross"]["inputs"][2]["column"] = json!("ctr_1d");
    refused(&b, "cross.inputs[2].column");
}

#[test]
fn user_by_item_on_a_missing_column() {
    let mut b = tiny();
    b.json["cross"]["inputs"][4]["column"] = json!("brand");
    let what = refused(&b, "cross.inputs[4].column");
    assert_contains(&what, "brand");
}

// ---------------------------------------------------------------------------
// Version and item dimension.

#[test]
fn version_the_snapshot_does_not_hold() {
    let b = Bundle::tiny("v99", DIM as usize);
    let what = refused(&b, "version");
    assert_contains(&what, "prerank@v99");
    assert_contains(&what, "[prerank@v42]");

    // A space the snapshot holds no version of: the space is at fault.
    let mut b = tiny();
    b.json["space"] = json!("retrieval");
    let what = refused(&b, "space");
    assert_contains(&what, "retrieval@v42");
    assert_contains(&what, "[prerank@v42]");
}

#[test]
fn item_dim_differs_from_the_embedding() {
    let b = Bundle::tiny("v42", 8);
    let what = refused(&b, "item_dim");
    assert_contains(&what, "is 8");
    assert_contains(&what, "16");
}

// ---------------------------------------------------------------------------
// Activations, heads, fusion.

#[test]
fn exp_activation_in_a_hidden_layer() {
    let mut b = tiny();
    b.json["upper"]["layers"][1]["activation"] = json!("exp");
    let what = refused(&b, "upper.layers[1].activation");
    assert_contains(&what, "\"exp\"");

    let mut b = tiny();
    b.json["cross"]["layers"][0]["activation"] = json!("exp");
    refused(&b, "cross.layers[0].activation");
}

#[test]
fn unknown_activation() {
    let mut b = tiny();
    b.json["heads"][0]["activation"] = json!("gelu");
    let what = refused(&b, "heads[0].activation");
    assert_contains(&what, "gelu");

    let mut b = tiny();
    b.json["cross"]["layers"][1]["activation"] = json!(1);
    refused(&b, "cross.layers[1].activation");
}

#[test]
fn neg_sampling_rate_on_a_non_sigmoid_head() {
    let mut b = tiny();
    b.json["heads"][1]["neg_sampling_rate"] = json!(0.5);
    let what = refused(&b, "heads[1].neg_sampling_rate");
    assert_contains(&what, "sigmoid");
}

#[test]
fn neg_sampling_rate_out_of_range() {
    for bad in [json!(0.0), json!(1.5), json!(-0.1), json!("0.1")] {
        let mut b = tiny();
        b.json["heads"][0]["neg_sampling_rate"] = bad;
        refused(&b, "heads[0].neg_sampling_rate");
    }
    // Below the smallest normal f32 every calibrated value would read 0.
    let mut b = tiny();
    b.json["heads"][0]["neg_sampling_rate"] = json!(1e-50);
    let what = refused(&b, "heads[0].neg_sampling_rate");
    assert_contains(&what, "smallest normal f32");
    b.json["heads"][0]["neg_sampling_rate"] = json!(2e-38);
    let (j, w) = b.bytes();
    Model::load(&j, &w, &schema()).unwrap();
    // 1 is the upper end of (0, 1]: no calibration, but valid.
    let mut b = tiny();
    b.json["heads"][0]["neg_sampling_rate"] = json!(1.0);
    let (j, w) = b.bytes();
    Model::load(&j, &w, &schema()).unwrap();
}

#[test]
fn a_key_given_twice_is_refused_naming_it() {
    // serde_json keeps the last of two equal keys; the bundle refuses them.
    let (j, w) = tiny().bytes();
    let text = String::from_utf8(j).unwrap();
    let twice = text.replacen('{', r#"{"space": "other","#, 1);
    let what = refused_bytes(twice.as_bytes(), &w, "space");
    assert_contains(&what, "given twice");
    let mut b = tiny();
    b.json["fusion"]["weights"] = json!({"click": 1.0, "value": 0.5});
    let (j, w) = b.bytes();
    let text = String::from_utf8(j).unwrap();
    let at = text.find(r#""click""#).unwrap();
    let twice = format!("{}\"click\": 0.0, {}", &text[..at], &text[at..]);
    refused_bytes(twice.as_bytes(), &w, "fusion.weights.click");
}

#[test]
fn cross_layers_absent_or_empty_pass_the_cross_input_on() {
    // BUNDLE.md: "zero or more dense layers (absent or empty: the cross
    // input goes on unchanged)"; the upper network's first layer then
    // reads the cross input's width.
    for absent in [true, false] {
        let mut b = tiny();
        if absent {
            obj(&mut b.json["cross"]).remove("layers");
        } else {
            b.json["cross"]["layers"] = json!([]);
        }
        // user (4) + item + the cross input itself (9 wide).
        let wide = 4 + DIM as usize + 9;
        let (j, w) = b.bytes();
        let what = refused_bytes(&j, &w, "upper.layers[0].weight");
        assert_contains(&what, &format!("its input is {wide} wide"));
        set_tensor(&mut b, "upper.0.weight", &[8, wide]);
        let (j, w) = b.bytes();
        Model::load(&j, &w, &schema()).unwrap();
    }
}

#[test]
fn a_fusion_that_reads_no_head_is_refused() {
    for weights in [json!({}), json!({"click": 0.0, "value": 0.0})] {
        let mut b = tiny();
        b.json["fusion"]["weights"] = weights;
        let what = refused(&b, "fusion.weights");
        assert_contains(&what, "every item would score the same");
    }
    // One non-zero weight is enough.
    let mut b = tiny();
    b.json["fusion"]["weights"] = json!({"click": 0.0, "value": 2.0});
    let (j, w) = b.bytes();
    Model::load(&j, &w, &schema()).unwrap();
}

#[test]
fn fusion_weight_naming_an_unknown_head() {
    let mut b = tiny();
    b.json["fusion"]["weights"]["like"] = json!(0.5);
    let what = refused(&b, "fusion.weights.like");
    assert_contains(&what, "[click, value]");
}

#[test]
fn unknown_fusion_kind() {
    let mut b = tiny();
    b.json["fusion"]["kind"] = json!("max");
    let what = refused(&b, "fusion.kind");
    assert_contains(&what, "\"max\"");
}

#[test]
fn rank_fusion_with_negative_alpha() {
    let mut b = tiny();
    b.json["fusion"] =
        json!({"kind": "rank", "weights": {"click": 1.0}, "alpha": -1.0, "beta": 1.0});
    let what = refused(&b, "fusion.alpha");
    assert_contains(&what, "-1");

    // alpha = 0 is fine (ranks start at 1); a missing alpha is not.
    b.json["fusion"]["alpha"] = json!(0.0);
    let (j, w) = b.bytes();
    Model::load(&j, &w, &schema()).unwrap();
    obj(&mut b.json["fusion"]).remove("alpha");
    refused(&b, "fusion.alpha");
}

#[test]
fn heads_empty() {
    let mut b = tiny();
    b.json["heads"] = json!([]);
    b.json["fusion"]["weights"] = json!({});
    let what = refused(&b, "heads");
    assert_contains(&what, "at least one");
}

#[test]
fn upper_layers_empty() {
    let mut b = tiny();
    b.json["upper"]["layers"] = json!([]);
    let what = refused(&b, "upper.layers");
    assert_contains(&what, "at least one");
}

#[test]
fn cross_inputs_empty() {
    let mut b = tiny();
    b.json["cross"]["inputs"] = json!([]);
    let what = refused(&b, "cross.inputs");
    assert_contains(&what, "at least one");
}

// ---------------------------------------------------------------------------
// Store level.

const N: u64 = 200;

fn ids(range: std::ops::Range<u64>) -> Vec<u64> {
    range.collect()
}

/// A store holding items `0..N` (snapshot 1) and the tiny bundle
/// (snapshot 2).
fn store_with_bundle(dir: &Path) -> Writer {
    let mut w = Writer::create(dir, schema()).unwrap();
    let mut tx = w.begin();
    tx.add_items(common::batch(&ids(0..N), DIM, 0)).unwrap();
    tx.commit().unwrap();
    let mut tx = w.begin();
    let (j, wt) = tiny().bytes();
    assert_eq!(tx.add_model(&j, &wt).unwrap(), KEY);
    tx.commit().unwrap();
    w
}

/// A [`store_with_bundle`] in a fresh directory: the directory (which
/// must outlive the store), the writer and its newest snapshot.
fn bundle_store() -> (tempfile::TempDir, Writer, Arc<Snapshot>) {
    let dir = tempfile::tempdir().unwrap();
    let w = store_with_bundle(dir.path());
    let snap = w.snapshot().unwrap();
    (dir, w, snap)
}

fn user() -> Vec<f32> {
    vec![0.5, -0.25, 1.0, 0.125]
}

fn inputs() -> UserInputs {
    UserInputs::new()
        .dense("user_stats", vec![0.3, -0.2])
        .by_item("user_category_ctr", [(1, vec![0.5]), (3, vec![-0.5])])
}

/// Three-tower scores of `ids` under `key`, by id.
fn scores(snap: &Snapshot, key: &str, ids: &[u64]) -> BTreeMap<u64, f32> {
    let (u, inp) = (user(), inputs());
    let r = snap
        .query(&Query::ids(key, &u, ids, ids.len()).three_tower(&inp))
        .unwrap();
    r.hits.iter().map(|h| (h.id, h.score)).collect()
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()) || a == b
}

#[track_caller]
fn assert_same_scores(a: &BTreeMap<u64, f32>, b: &BTreeMap<u64, f32>) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (id, x) in a {
        assert!(close(*x, b[id]), "item {id}: {x} vs {}", b[id]);
    }
}

#[test]
fn a_refused_bundle_leaves_the_store_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema()).unwrap();
    let mut tx = w.begin();
    tx.add_items(common::batch(&ids(0..N), DIM, 0)).unwrap();
    tx.commit().unwrap();
    let before = common::files(dir.path());
    let number = w.snapshot().unwrap().number();

    let mut bad = tiny();
    set_tensor(&mut bad, "upper.2.weight", &[5, 7]);
    let (j, wt) = bad.bytes();
    let mut tx = w.begin();
    match tx.add_model(&j, &wt) {
        Err(Error::Bundle { field, .. }) => assert_eq!(field, "upper.layers[1].weight"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // No file was written for the refused bundle.
    assert_eq!(common::files(dir.path()), before);
    drop(tx);
    assert_eq!(common::files(dir.path()), before);
    assert_eq!(w.snapshot().unwrap().number(), number);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.snapshot().number(), number);
    assert!(store.snapshot().model_keys().is_empty());

    // The refusal did not poison the writer: a valid bundle goes in next.
    let mut tx = w.begin();
    let (j, wt) = tiny().bytes();
    tx.add_model(&j, &wt).unwrap();
    let snap = tx.commit().unwrap();
    assert_eq!(snap.model_keys(), vec![KEY]);
}

#[test]
fn a_bundle_comes_with_its_embedding_version_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema()).unwrap();
    let mut tx = w.begin();
    tx.add_items(common::batch(&ids(0..N), DIM, 0)).unwrap();
    tx.commit().unwrap();

    let all = ids(0..N);
    let vecs: Vec<f32> = all.iter().flat_map(|&i| common::vector(i, 8, 5)).collect();
    let (j, wt) = Bundle::tiny("v43", 8).bytes();
    let mut tx = w.begin();
    // Before the version exists, its bundle is refused...
    match tx.add_model(&j, &wt) {
        Err(Error::Bundle { field, what }) => {
            assert_eq!(field, "version");
            assert!(what.contains("prerank@v43"), "{what}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // ... and after add_embedding in the same transaction it is accepted.
    tx.add_embedding(
        EmbeddingDef::new("prerank", "v43", 8, Dtype::F16),
        &all,
        &vecs,
    )
    .unwrap();
    assert_eq!(tx.add_model(&j, &wt).unwrap(), "prerank@v43");
    let snap = tx.commit().unwrap();
    assert_eq!(snap.model_keys(), vec!["prerank@v43"]);
    assert_eq!(snap.model("prerank@v43").unwrap().item_dim(), 8);

    let got = scores(&snap, "prerank@v43", &all);
    assert_eq!(got.len(), N as usize);
    assert!(got.values().all(|s| s.is_finite()));
    // The same from a fresh reader.
    let store = Store::open(dir.path()).unwrap();
    assert_same_scores(&scores(&store.snapshot(), "prerank@v43", &all), &got);
}

#[test]
fn dropping_an_embedding_version_drops_its_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = store_with_bundle(dir.path());
    let all = ids(0..N);
    let vecs: Vec<f32> = all.iter().flat_map(|&i| common::vector(i, 8, 5)).collect();
    let mut tx = w.begin();
    tx.add_embedding(
        EmbeddingDef::new("prerank", "v43", 8, Dtype::F16),
        &all,
        &vecs,
    )
    .unwrap();
    let (j, wt) = Bundle::tiny("v43", 8).bytes();
    tx.add_model(&j, &wt).unwrap();
    let snap = tx.commit().unwrap();
    assert_eq!(snap.model_keys(), vec![KEY, "prerank@v43"]);

    let mut tx = w.begin();
    tx.drop_embedding("prerank@v43").unwrap();
    // The bundle went with it.
    assert!(matches!(
        tx.drop_model("prerank@v43"),
        Err(Error::NoModel { ref requested, .. }) if requested == "prerank@v43"
    ));
    let snap = tx.commit().unwrap();
    for snap in [snap, Store::open(dir.path()).unwrap().snapshot()] {
        assert_eq!(snap.model_keys(), vec![KEY]);
        match snap.model("prerank@v43") {
            Err(Error::NoModel {
                requested,
                available,
                ..
            }) => {
                assert_eq!(requested, "prerank@v43");
                assert_eq!(available, vec![KEY]);
            }
            other => panic!("expected NoModel, got {other:?}"),
        }
        // The v42 bundle still answers.
        assert_eq!(scores(&snap, KEY, &all).len(), N as usize);
    }
}

#[test]
fn drop_model_of_a_missing_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = store_with_bundle(dir.path());
    let mut tx = w.begin();
    match tx.drop_model("prerank@v43") {
        Err(e @ Error::NoModel { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("prerank@v43") && msg.contains(KEY), "{msg}");
        }
        other => panic!("expected NoModel, got {other:?}"),
    }
    // Dropping the one that exists works, once.
    tx.drop_model(KEY).unwrap();
    assert!(matches!(tx.drop_model(KEY), Err(Error::NoModel { .. })));
    let snap = tx.commit().unwrap();
    assert!(snap.model_keys().is_empty());
    assert!(matches!(snap.model(KEY), Err(Error::NoModel { .. })));
}

#[test]
fn a_replaced_bundle_serves_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = store_with_bundle(dir.path());
    let all = ids(0..N);
    let (u, inp) = (user(), inputs());
    let q = Query::ids(KEY, &u, &all, 10).three_tower(&inp).with_heads();
    let old = w.snapshot().unwrap().query(&q).unwrap();
    // Old fusion: click + 0.1 value.
    for (i, h) in old.hits.iter().enumerate() {
        let hv = old.heads_of(i);
        assert!(close(h.score, (hv[0] as f64 + 0.1 * hv[1] as f64) as f32));
    }

    let mut b = tiny();
    b.json["fusion"]["weights"] = json!({"click": 1.0});
    let (j, wt) = b.bytes();
    let mut tx = w.begin();
    tx.add_model(&j, &wt).unwrap();
    let snap = tx.commit().unwrap();
    assert_eq!(snap.model_keys(), vec![KEY]);
    assert_eq!(
        snap.model(KEY).unwrap().json(),
        String::from_utf8(j).unwrap()
    );
    for snap in [snap, Store::open(dir.path()).unwrap().snapshot()] {
        let new = snap.query(&q).unwrap();
        assert_ne!(new.hits, old.hits);
        for (i, h) in new.hits.iter().enumerate() {
            assert_eq!(h.score, new.heads_of(i)[0], "new fusion: click only");
        }
    }
}

#[test]
fn the_bundle_survives_a_stats_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = store_with_bundle(dir.path());
    let all = ids(0..N);
    let before = scores(&w.snapshot().unwrap(), KEY, &all);
    let changed = ids(0..50);
    let mut tx = w.begin();
    tx.update_stats(vstore::ItemBatch::new(changed.clone()).stat("ctr_1d", vec![40.0; 50]))
        .unwrap();
    let snap = tx.commit().unwrap();
    assert_eq!(snap.model_keys(), vec![KEY]);
    let after = scores(&snap, KEY, &all);
    assert_eq!(after.len(), N as usize);
    // Items not touched score the same; the model reads the fresh statistic
    // for those that were.
    for id in 50..N {
        assert!(close(before[&id], after[&id]), "item {id}");
    }
    assert!(
        changed.iter().any(|id| !close(before[id], after[id])),
        "no score changed after ctr_1d changed"
    );
}

#[test]
fn the_bundle_survives_a_delete() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = store_with_bundle(dir.path());
    let all = ids(0..N);
    let before = scores(&w.snapshot().unwrap(), KEY, &all);
    let mut tx = w.begin();
    tx.delete_items(&[3, 4, 150]).unwrap();
    let snap = tx.commit().unwrap();
    assert_eq!(snap.model_keys(), vec![KEY]);
    let (u, inp) = (user(), inputs());
    let r = snap
        .query(&Query::ids(KEY, &u, &all, all.len()).three_tower(&inp))
        .unwrap();
    assert_eq!(r.not_found, vec![3, 4, 150]);
    assert_eq!(r.scored, N as usize - 3);
    for h in &r.hits {
        assert!(close(h.score, before[&h.id]), "item {}", h.id);
    }
}

#[test]
fn the_bundle_scores_items_added_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = store_with_bundle(dir.path());
    let new = ids(N..N + 60);
    let mut tx = w.begin();
    tx.add_items(common::batch(&new, DIM, 0)).unwrap();
    let snap = tx.commit().unwrap();
    assert_eq!(snap.model_keys(), vec![KEY]);
    let got = scores(&snap, KEY, &new);
    assert_eq!(got.len(), new.len());

    // The same items in a one-segment store score the same.
    let dir2 = tempfile::tempdir().unwrap();
    let mut w2 = Writer::create(dir2.path(), schema()).unwrap();
    let mut tx = w2.begin();
    tx.add_items(common::batch(&ids(0..N + 60), DIM, 0))
        .unwrap();
    let (j, wt) = tiny().bytes();
    tx.add_model(&j, &wt).unwrap();
    let snap2 = tx.commit().unwrap();
    assert_same_scores(&got, &scores(&snap2, KEY, &new));
}

#[test]
fn the_bundle_survives_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = store_with_bundle(dir.path());
    let mut tx = w.begin();
    tx.add_items(common::batch(&ids(N..N + 100), DIM, 0))
        .unwrap();
    tx.delete_items(&[7, 8, 9, N + 1]).unwrap();
    let snap = tx.commit().unwrap();
    assert!(snap.segments().len() > 1);
    let all = ids(0..N + 100);
    let before = scores(&snap, KEY, &all);
    let mut tx = w.begin();
    assert!(tx.compact().unwrap());
    let snap = tx.commit().unwrap();
    assert_eq!(snap.segments().len(), 1);
    assert_eq!(snap.model_keys(), vec![KEY]);
    assert_same_scores(&before, &scores(&snap, KEY, &all));
    let store = Store::open(dir.path()).unwrap();
    assert_same_scores(&before, &scores(&store.snapshot(), KEY, &all));
}

#[test]
fn add_model_dir_reads_a_bundle_directory() {
    let dir = tempfile::tempdir().unwrap();
    let bdir = tempfile::tempdir().unwrap();
    let mut w = store_with_bundle(dir.path());
    let mut b = tiny();
    b.json["fusion"]["weights"] = json!({"value": 1.0});
    b.write(bdir.path());
    let mut tx = w.begin();
    assert_eq!(tx.add_model_dir(bdir.path()).unwrap(), KEY);
    drop(tx);
    // A directory without weights names the missing file.
    std::fs::remove_file(bdir.path().join("weights.safetensors")).unwrap();
    let mut tx = w.begin();
    match tx.add_model_dir(bdir.path()) {
        Err(e @ Error::Io { .. }) => {
            assert_eq!(e.path(), Some(&*bdir.path().join("weights.safetensors")));
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    drop(tx);
    // A device in a file's place (read, it would never end) is refused
    // before any read, naming the file.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("/dev/zero", bdir.path().join("weights.safetensors")).unwrap();
        let mut tx = w.begin();
        match tx.add_model_dir(bdir.path()) {
            Err(Error::Bundle { field, what }) => {
                assert_eq!(field, "weights.safetensors");
                assert!(what.contains("is not a regular file"), "{what}");
            }
            other => panic!("expected a bundle error, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Query level.

#[track_caller]
fn invalid_input(r: vstore::Result<vstore::QueryResult>, parts: &[&str]) {
    match r {
        Err(Error::InvalidInput(msg)) => {
            for p in parts {
                assert!(msg.contains(p), "{msg:?} does not mention {p:?}");
            }
        }
        other => panic!("expected InvalidInput mentioning {parts:?}, got {other:?}"),
    }
}

#[test]
fn query_missing_user_dense_input() {
    let (_dir, _w, snap) = bundle_store();
    let (u, all) = (user(), ids(0..N));
    let inp = UserInputs::new().by_item("user_category_ctr", [(1, vec![0.5])]);
    invalid_input(
        snap.query(&Query::ids(KEY, &u, &all, 5).three_tower(&inp)),
        &["user_stats", "user_dense"],
    );
    let inp = UserInputs::new().dense("user_stats", vec![0.0, 0.0]);
    invalid_input(
        snap.query(&Query::ids(KEY, &u, &all, 5).three_tower(&inp)),
        &["user_category_ctr", "user_by_item"],
    );
}

#[test]
fn query_user_dense_of_wrong_length() {
    let (_dir, _w, snap) = bundle_store();
    let (u, all) = (user(), ids(0..N));
    let inp = inputs().dense("user_stats", vec![0.1, 0.2, 0.3]);
    invalid_input(
        snap.query(&Query::ids(KEY, &u, &all, 5).three_tower(&inp)),
        &["user_stats", "3 values", "expects 2"],
    );
}

#[test]
fn query_nan_in_user_dense() {
    let (_dir, _w, snap) = bundle_store();
    let (u, all) = (user(), ids(0..N));
    let inp = inputs().dense("user_stats", vec![0.1, f32::NAN]);
    invalid_input(
        snap.query(&Query::ids(KEY, &u, &all, 5).three_tower(&inp)),
        &["user_stats", "component 1", "NaN"],
    );
}

#[test]
fn query_nan_in_a_user_by_item_vector() {
    let (_dir, _w, snap) = bundle_store();
    let (u, all) = (user(), ids(0..N));
    let inp = inputs().by_item("user_category_ctr", [(2, vec![0.1]), (6, vec![f32::NAN])]);
    invalid_input(
        snap.query(&Query::ids(KEY, &u, &all, 5).three_tower(&inp)),
        &["user_category_ctr", "key 6", "NaN"],
    );
    // A vector of the wrong length in the map too.
    let inp = inputs().by_item("user_category_ctr", [(2, vec![0.1, 0.2])]);
    invalid_input(
        snap.query(&Query::ids(KEY, &u, &all, 5).three_tower(&inp)),
        &["user_category_ctr", "key 2", "2 values"],
    );
}

#[test]
fn query_unknown_user_input_name() {
    let (_dir, _w, snap) = bundle_store();
    let (u, all) = (user(), ids(0..N));
    let inp = inputs().dense("user_age", vec![30.0]);
    invalid_input(
        snap.query(&Query::ids(KEY, &u, &all, 5).three_tower(&inp)),
        &["user_age", KEY],
    );
    let inp = inputs().by_item("user_brand_ctr", [(1, vec![0.5])]);
    invalid_input(
        snap.query(&Query::ids(KEY, &u, &all, 5).three_tower(&inp)),
        &["user_brand_ctr"],
    );
}

#[test]
fn query_user_input_of_the_wrong_kind() {
    // A name the model reads as user_by_item, passed (also) as user_dense,
    // must not be silently ignored.
    let (_dir, _w, snap) = bundle_store();
    let (u, all) = (user(), ids(0..N));
    let inp = inputs().dense("user_category_ctr", vec![0.5]);
    invalid_input(
        snap.query(&Query::ids(KEY, &u, &all, 5).three_tower(&inp)),
        &["user_category_ctr", "user_dense"],
    );
    let inp = inputs().by_item("user_stats", [(1, vec![0.5, 0.5])]);
    invalid_input(
        snap.query(&Query::ids(KEY, &u, &all, 5).three_tower(&inp)),
        &["user_stats", "user_by_item"],
    );
}

#[test]
fn query_user_vector_of_wrong_length() {
    let (_dir, _w, snap) = bundle_store();
    let (inp, all) = (inputs(), ids(0..N));
    // The item dimension (16) is not the user dimension (4).
    let u = vec![0.1; DIM as usize];
    invalid_input(
        snap.query(&Query::ids(KEY, &u, &all, 5).three_tower(&inp)),
        &["user vector", "16 values", "expects 4"],
    );
    let u = vec![0.1, f32::INFINITY, 0.0, 0.0];
    invalid_input(
        snap.query(&Query::full_scan(KEY, &u, 5).three_tower(&inp)),
        &["user vector", "component 1", "inf"],
    );
}

#[test]
fn query_key_without_a_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = store_with_bundle(dir.path());
    let all = ids(0..N);
    let vecs: Vec<f32> = all.iter().flat_map(|&i| common::vector(i, 8, 5)).collect();
    let mut tx = w.begin();
    tx.add_embedding(
        EmbeddingDef::new("prerank", "v43", 8, Dtype::F16),
        &all,
        &vecs,
    )
    .unwrap();
    let snap = tx.commit().unwrap();
    let (u, inp) = (user(), inputs());
    match snap.query(&Query::ids("prerank@v43", &u, &all, 5).three_tower(&inp)) {
        Err(e @ Error::NoModel { .. }) => {
            let msg = e.to_string();
            let Error::NoModel {
                requested,
                available,
                ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!(requested, "prerank@v43");
            assert_eq!(available, vec![KEY]);
            assert!(msg.contains(KEY), "{msg}");
        }
        other => panic!("expected NoModel, got {other:?}"),
    }
    // The two-tower query on v43 still works.
    let u8d = vec![0.5; 8];
    snap.query(&Query::ids("prerank@v43", &u8d, &all, 5))
        .unwrap();
}

#[test]
fn query_unknown_version() {
    let (_dir, _w, snap) = bundle_store();
    let (u, inp, all) = (user(), inputs(), ids(0..N));
    match snap.query(&Query::ids("prerank@v99", &u, &all, 5).three_tower(&inp)) {
        Err(Error::VersionSkew {
            requested,
            available,
            ..
        }) => {
            assert_eq!(requested, "prerank@v99");
            assert_eq!(available, vec![KEY]);
        }
        other => panic!("expected VersionSkew, got {other:?}"),
    }
}

#[test]
fn with_heads_on_a_two_tower_query() {
    let (_dir, _w, snap) = bundle_store();
    let (u, all) = (vec![0.5; DIM as usize], ids(0..N));
    invalid_input(
        snap.query(&Query::ids(KEY, &u, &all, 5).with_heads()),
        &["three-tower"],
    );
    invalid_input(
        snap.query(&Query::full_scan(KEY, &u, 5).with_heads()),
        &["three-tower"],
    );
}

#[test]
fn three_tower_query_with_k_zero() {
    let (_dir, _w, snap) = bundle_store();
    let (u, inp, all) = (user(), inputs(), ids(0..N));
    invalid_input(
        snap.query(&Query::ids(KEY, &u, &all, 0).three_tower(&inp)),
        &["k must be"],
    );
    invalid_input(
        snap.query(&Query::full_scan(KEY, &u, 0).three_tower(&inp)),
        &["k must be"],
    );
}

#[test]
fn heads_are_returned_calibrated_and_fused() {
    let (_dir, _w, snap) = bundle_store();
    let (u, inp, all) = (user(), inputs(), ids(0..N));
    let r = snap
        .query(&Query::ids(KEY, &u, &all, 20).three_tower(&inp).with_heads())
        .unwrap();
    assert_eq!(r.head_names, vec!["click", "value"]);
    assert_eq!(r.hits.len(), 20);
    assert_eq!(r.heads.len(), 40);
    for (i, h) in r.hits.iter().enumerate() {
        let hv = r.heads_of(i);
        assert!(hv[0] > 0.0 && hv[0] < 1.0, "click {}", hv[0]);
        assert!(hv[1] > 0.0, "value {}", hv[1]);
        assert!(close(h.score, (hv[0] as f64 + 0.1 * hv[1] as f64) as f32));
    }
    // Without with_heads: same hits, no heads.
    let r2 = snap
        .query(&Query::ids(KEY, &u, &all, 20).three_tower(&inp))
        .unwrap();
    assert_eq!(r2.hits, r.hits);
    assert!(r2.head_names.is_empty() && r2.heads.is_empty());
}

#[test]
fn filtered_three_tower_query_equals_scoring_everything_then_filtering() {
    let (_dir, _w, snap) = bundle_store();
    let (u, inp) = (user(), inputs());
    // Some unknown ids and duplicates among the candidates.
    let mut cand = ids(0..N);
    cand.extend([5, 17, 10_000, 10_001]);
    let not_12 = Filter::not_in("category", [1, 2]);
    let k = 15;
    let everything = snap
        .query(&Query::ids(KEY, &u, &cand, 100_000).three_tower(&inp))
        .unwrap();
    assert_eq!(everything.hits.len(), N as usize);
    let want: Vec<_> = everything
        .hits
        .iter()
        .filter(|h| !matches!(h.id % 7, 1 | 2))
        .take(k)
        .copied()
        .collect();
    let dropped = (0..N).filter(|i| matches!(i % 7, 1 | 2)).count();

    let r = snap
        .query(
            &Query::ids(KEY, &u, &cand, k)
                .three_tower(&inp)
                .filter(&not_12),
        )
        .unwrap();
    assert_eq!(r.not_found, vec![10_000, 10_001]);
    assert_eq!(r.filtered_out, dropped);
    assert_eq!(r.scored, N as usize - dropped);
    assert_eq!(
        r.hits.iter().map(|h| h.id).collect::<Vec<_>>(),
        want.iter().map(|h| h.id).collect::<Vec<_>>()
    );
    for (a, b) in r.hits.iter().zip(&want) {
        assert!(
            close(a.score, b.score),
            "item {}: {} vs {}",
            a.id,
            a.score,
            b.score
        );
    }

    // The full scan agrees.
    let r = snap
        .query(
            &Query::full_scan(KEY, &u, k)
                .three_tower(&inp)
                .filter(&not_12),
        )
        .unwrap();
    assert_eq!(r.filtered_out, dropped);
    assert_eq!(
        r.hits.iter().map(|h| h.id).collect::<Vec<_>>(),
        want.iter().map(|h| h.id).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------
// A damaged stored bundle.

#[test]
fn a_corrupt_stored_bundle_is_an_error_naming_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let w = store_with_bundle(dir.path());
    drop(w);
    let vbnd: Vec<String> = common::files(dir.path())
        .into_iter()
        .filter(|f| f.ends_with(".vbnd"))
        .collect();
    assert_eq!(vbnd.len(), 1, "{vbnd:?}");
    let path = dir.path().join(&vbnd[0]);
    let mut bytes = std::fs::read(&path).unwrap();
    // In the data region (after the 64-byte header): model.json's bytes.
    bytes[64 + 10] ^= 0x5a;
    std::fs::write(&path, &bytes).unwrap();

    // The newest snapshot references the damaged file: opening fails with
    // an error naming it (no fall-back to snapshot 1: only a damaged
    // *manifest* is skipped).
    let check = |r: vstore::Result<()>| match r {
        Err(Error::Corrupt { path: p, what }) => {
            assert_eq!(p, path, "{what}");
        }
        other => panic!("expected Error::Corrupt naming {path:?}, got {other:?}"),
    };
    match Store::open(dir.path()) {
        Ok(s) => panic!(
            "opened snapshot {} (skipped {:?}); expected an error naming {path:?}",
            s.snapshot().number(),
            s.skipped_manifests()
        ),
        Err(e) => check(Err(e)),
    }
    check(Writer::open(dir.path()).map(|_| ()));
    check(Store::open_with(dir.path(), vstore::OpenOptions::new().verify(true)).map(|_| ()));
}

// ---------------------------------------------------------------------------
// The optional parts: no cross layers, no biases.

#[test]
fn a_bundle_without_cross_layers_or_biases_scores_like_a_reference() {
    let mut b = tiny();
    b.json["cross"]["layers"] = json!([]);
    for l in 0..2 {
        obj(&mut b.json["upper"]["layers"][l]).remove("bias");
        obj(&mut b.json["heads"][l]).remove("bias");
    }
    // The upper network now reads the 9-wide cross input directly.
    let width = 4 + DIM as usize + 9;
    let w0: Vec<f32> = (0..8 * width)
        .map(|k| (((k * 5 + 3) % 13) as f32 - 6.0) / 16.0)
        .collect();
    b.tensors
        .insert("upper.0.weight".into(), (vec![8, width], w0));
    for t in [
        "cross.0.weight",
        "cross.0.bias",
        "cross.2.weight",
        "cross.2.bias",
    ] {
        b.tensors.remove(t);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema()).unwrap();
    let mut tx = w.begin();
    let all = ids(0..N);
    tx.add_items(common::batch(&all, DIM, 0)).unwrap();
    let (j, wt) = b.bytes();
    tx.add_model(&j, &wt).unwrap();
    let snap = tx.commit().unwrap();
    let got = scores(&snap, KEY, &all);

    // An independent f64 evaluation of the same model.
    let t = |n: &str| b.tensors[n].1.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let (emb_price, emb_cat) = (t("emb.price"), t("emb.category"));
    let (w0, w2) = (t("upper.0.weight"), t("upper.2.weight"));
    let (wc, wv) = (t("heads.click.weight"), t("heads.value.weight"));
    let u = user();
    for &id in &all {
        let mut x: Vec<f64> = u.iter().map(|&v| v as f64).collect();
        x.extend(common::vector(id, DIM, 0).iter().map(|&v| v as f64));
        x.push((common::stat_value(id, 0) as f64).ln_1p());
        let price = if id % 5 != 0 { id as f64 * 0.5 } else { -1.0 };
        let bucket = [0.0, 10.0].iter().filter(|&&t| t <= price).count();
        x.extend(&emb_price[bucket * 2..bucket * 2 + 2]);
        let c = (id % 7) as usize;
        let row = if c < 5 { c } else { 0 };
        x.extend(&emb_cat[row * 3..row * 3 + 3]);
        x.extend([0.3f32 as f64, -0.2f32 as f64]);
        x.push(match c {
            1 => 0.5,
            3 => -0.5,
            _ => 0.0,
        });
        assert_eq!(x.len(), width);
        let h: Vec<f64> = (0..8)
            .map(|o| {
                (0..width)
                    .map(|i| w0[o * width + i] * x[i])
                    .sum::<f64>()
                    .max(0.0)
            })
            .collect();
        let h2: Vec<f64> = (0..5)
            .map(|o| (0..8).map(|i| w2[o * 8 + i] * h[i]).sum())
            .collect();
        let dot = |w: &[f64]| (0..5).map(|i| w[i] * h2[i]).sum::<f64>();
        let q = 1.0 / (1.0 + (-dot(&wc)).exp());
        let click = 0.2 * q / ((1.0 - q) + 0.2 * q);
        let value = dot(&wv).exp();
        let want = click + 0.1 * value;
        let g = got[&id] as f64;
        assert!(
            (g - want).abs() <= 1e-5 * want.abs(),
            "item {id}: store {g}, reference {want}"
        );
    }
}

#[test]
fn product_fusion_of_a_head_that_can_be_negative_is_refused() {
    let schema = common::schema(8, Dtype::F32);
    let mut b = Bundle::tiny("v42", 8);
    b.json["heads"][1]["activation"] = serde_json::json!("identity");
    b.json["fusion"] =
        serde_json::json!({"kind": "product", "weights": {"click": 1.0, "value": 0.5}});
    let (j, w) = b.bytes();
    match vstore::Model::load(&j, &w, &schema) {
        Err(vstore::Error::Bundle { field, what }) => {
            assert_eq!(field, "fusion.weights.value");
            assert!(what.contains("identity"), "{what}");
        }
        other => panic!("expected a bundle error, got {other:?}"),
    }
    // Weight 0 on that head is fine.
    b.json["fusion"] =
        serde_json::json!({"kind": "product", "weights": {"click": 1.0, "value": 0.0}});
    let (j, w) = b.bytes();
    vstore::Model::load(&j, &w, &schema).unwrap();
}

#[test]
fn rank_fusion_with_negative_beta_is_refused() {
    let schema = common::schema(8, Dtype::F32);
    let mut b = Bundle::tiny("v42", 8);
    b.json["fusion"] =
        serde_json::json!({"kind": "rank", "weights": {"click": 1.0}, "alpha": 1.0, "beta": -0.5});
    let (j, w) = b.bytes();
    match vstore::Model::load(&j, &w, &schema) {
        Err(vstore::Error::Bundle { field, .. }) => assert_eq!(field, "fusion.beta"),
        other => panic!("expected a bundle error, got {other:?}"),
    }
}

/// Scores of `all` with the bundle as given, then with its first-layer item
/// part precomputed as `dtype`, through add_items (a new segment), a delete,
/// an upsert and compaction: the precomputed files follow every segment.
fn precomputed_follows_every_publish(dtype: Dtype, tol: f32) {
    let dir = tempfile::tempdir().unwrap();
    let mut w = store_with_bundle(dir.path());
    let all = ids(0..N + 100);
    let mut tx = w.begin();
    tx.add_items(common::batch(&ids(N..N + 100), DIM, 0))
        .unwrap();
    tx.delete_items(&[7, 8, 9]).unwrap();
    tx.upsert_items(common::batch(&[3, 4], DIM, 5)).unwrap();
    let plain = tx.commit().unwrap();
    let want = scores(&plain, KEY, &all);
    let mut tx = w.begin();
    let (j, wt) = tiny().bytes();
    tx.add_model_precomputed(&j, &wt, dtype).unwrap();
    let snap = tx.commit().unwrap();
    assert!(snap.model_is_precomputed(KEY));
    let check = |snap: &Snapshot| {
        let got = scores(snap, KEY, &all);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (id, x) in &got {
            let y = want[id];
            assert!(
                (x - y).abs() <= tol * y.abs().max(1e-3),
                "item {id}: {x} vs {y}"
            );
        }
    };
    check(&snap);
    // Items added after the bundle get precomputed rows too.
    let mut tx = w.begin();
    tx.add_items(common::batch(&ids(N + 100..N + 150), DIM, 0))
        .unwrap();
    let snap = tx.commit().unwrap();
    assert!(snap.model_is_precomputed(KEY));
    let more = scores(&snap, KEY, &ids(N + 100..N + 150));
    assert_eq!(more.len(), 50);
    let mut tx = w.begin();
    tx.delete_items(&ids(N + 100..N + 150)).unwrap();
    assert!(tx.compact().unwrap());
    let snap = tx.commit().unwrap();
    assert_eq!(snap.segments().len(), 1);
    check(&snap);
    check(&Store::open(dir.path()).unwrap().snapshot());
    snap.verify().unwrap();
    // Dropping the model drops its precomputed files from the snapshot.
    let mut tx = w.begin();
    tx.drop_model(KEY).unwrap();
    let snap = tx.commit().unwrap();
    assert!(!snap.model_is_precomputed(KEY));
    assert!(!snap.files().iter().any(|f| f.contains("-pre-")));
}

#[test]
fn precomputed_f32_item_part_gives_the_same_scores_through_every_publish() {
    precomputed_follows_every_publish(Dtype::F32, 1e-5);
}

#[test]
fn precomputed_f16_item_part_stays_close() {
    precomputed_follows_every_publish(Dtype::F16, 1e-2);
}

/// bf16 rows take the path that decodes them before the product (the
/// kernel reads f32 and f16 rows itself).
#[test]
fn precomputed_bf16_item_part_stays_close() {
    precomputed_follows_every_publish(Dtype::Bf16, 3e-2);
}

/// The name of the precomputed file of the snapshot's first segment.
fn pre_file_of_first_segment(snap: &Snapshot) -> String {
    let seg = snap.segments()[0].id();
    let files = snap.files();
    let hits: Vec<&String> = files
        .iter()
        .filter(|f| f.contains(&format!("-g{seg}-pre-")))
        .collect();
    assert_eq!(hits.len(), 1, "{files:?}");
    hits[0].clone()
}

#[test]
fn a_background_compaction_carries_precomputed_rows_unless_the_bundle_changed() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = store_with_bundle(dir.path());
    let mut tx = w.begin();
    tx.add_items(common::batch(&ids(N..N + 100), DIM, 0))
        .unwrap();
    let (j, wt) = tiny().bytes();
    tx.add_model_precomputed(&j, &wt, Dtype::F32).unwrap();
    let snap = tx.commit().unwrap();
    let all = ids(0..N + 100);
    let want = scores(&snap, KEY, &all);
    // The job copies the precomputed rows; a delete lands meanwhile.
    let job = w.start_compaction().unwrap().unwrap();
    let done = std::thread::spawn(move || job.run())
        .join()
        .unwrap()
        .unwrap();
    let mut tx = w.begin();
    tx.delete_items(&[5]).unwrap();
    tx.commit().unwrap();
    let mut tx = w.begin();
    tx.apply_compaction(done).unwrap();
    let snap = tx.commit().unwrap();
    assert_eq!(snap.segments().len(), 1);
    let pre = pre_file_of_first_segment(&snap);
    assert!(
        !pre.starts_with(&format!("s{:010}-", snap.number())),
        "{pre} was recomputed by the final publish, not copied by the job"
    );
    let mut want_now = want.clone();
    want_now.remove(&5);
    assert_same_scores(&scores(&snap, KEY, &all), &want_now);
    snap.verify().unwrap();
    // The bundle replaced while a job runs: its rows are recomputed at the
    // final publish, for the new bundle.
    let mut tx = w.begin();
    tx.add_items(common::batch(&ids(N + 100..N + 110), DIM, 0))
        .unwrap();
    tx.commit().unwrap();
    let done = w.start_compaction().unwrap().unwrap().run().unwrap();
    let mut b = tiny();
    set_tensor(&mut b, "upper.0.bias", &[8]);
    let (j, wt) = b.bytes();
    let mut tx = w.begin();
    tx.add_model_precomputed(&j, &wt, Dtype::F32).unwrap();
    let replaced = tx.commit().unwrap();
    let all = ids(0..N + 110);
    let want = scores(&replaced, KEY, &all);
    let mut tx = w.begin();
    tx.apply_compaction(done).unwrap();
    let snap = tx.commit().unwrap();
    assert_eq!(snap.segments().len(), 1);
    let pre = pre_file_of_first_segment(&snap);
    assert!(
        pre.starts_with(&format!("s{:010}-", snap.number())),
        "{pre}"
    );
    assert_same_scores(&scores(&snap, KEY, &all), &want);
    snap.verify().unwrap();
}

#[test]
fn precomputing_needs_items_when_it_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema()).unwrap();
    let (j, wt) = tiny().bytes();
    // Into a snapshot without items: refused at commit, naming the bundle,
    // and nothing is published.
    let mut tx = w.begin();
    tx.add_model_precomputed(&j, &wt, Dtype::F16).unwrap();
    let e = tx.commit().unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
    assert!(e.to_string().contains(KEY), "{e}");
    assert!(w.snapshot().is_none_or(|s| s.model(KEY).is_err()));
    // With items in the same transaction: published precomputed.
    let mut tx = w.begin();
    tx.add_model_precomputed(&j, &wt, Dtype::F16).unwrap();
    tx.add_items(common::batch(&ids(0..N), DIM, 0)).unwrap();
    let snap = tx.commit().unwrap();
    assert!(snap.model_is_precomputed(KEY));
    // Still precomputed for items added later.
    let mut tx = w.begin();
    tx.add_items(common::batch(&ids(N..N + 5), DIM, 0)).unwrap();
    let snap = tx.commit().unwrap();
    assert!(snap.model_is_precomputed(KEY));
    snap.verify().unwrap();
    // Every item deleted: the bundle stays, its precomputing goes (the
    // store has no segment to keep it with), as documented.
    let mut tx = w.begin();
    tx.delete_items(&ids(0..N + 5)).unwrap();
    let snap = tx.commit().unwrap();
    assert!(snap.model(KEY).is_ok());
    assert!(!snap.model_is_precomputed(KEY));
    snap.verify().unwrap();
}

#[test]
fn a_precomputed_item_part_the_type_cannot_hold_is_refused() {
    // The first upper layer's weights are large enough that the item part
    // (those weights times the item vector) exceeds f16's range: f16
    // precomputing is refused naming the bundle and an item, f32 (or none)
    // is accepted, and nothing is published by the refused commit.
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema()).unwrap();
    let mut tx = w.begin();
    tx.add_items(common::batch(&ids(0..N), DIM, 0)).unwrap();
    let before = tx.commit().unwrap().number();
    let mut b = tiny();
    b.tensors
        .get_mut("upper.0.weight")
        .unwrap()
        .1
        .iter_mut()
        .for_each(|x| *x = 1e5);
    let (j, wt) = b.bytes();
    let mut tx = w.begin();
    tx.add_model_precomputed(&j, &wt, Dtype::F16).unwrap();
    let e = tx.commit().unwrap_err().to_string();
    assert!(
        e.contains(KEY) && e.contains("item ") && e.contains("f16 cannot hold"),
        "{e}"
    );
    assert_eq!(w.snapshot().unwrap().number(), before);
    let mut tx = w.begin();
    tx.add_model_precomputed(&j, &wt, Dtype::F32).unwrap();
    let snap = tx.commit().unwrap();
    assert!(snap.model_is_precomputed(KEY));
    snap.verify().unwrap();
}

#[test]
fn a_refresh_reuses_an_unchanged_bundle_and_rebuilds_a_replaced_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = store_with_bundle(dir.path());
    let store = Store::open(dir.path()).unwrap();
    let s1 = store.snapshot();
    // A stats-only publish shares the bundle file: the model is not rebuilt.
    let mut tx = w.begin();
    tx.update_stats(vstore::ItemBatch::new(vec![1]).stat("ctr_1d", vec![0.5]))
        .unwrap();
    tx.commit().unwrap();
    assert!(store.refresh().unwrap());
    let s2 = store.snapshot();
    assert_ne!(s1.number(), s2.number());
    assert!(std::ptr::eq(s1.model(KEY).unwrap(), s2.model(KEY).unwrap()));
    // A replaced bundle is a new file: a new model.
    let mut tx = w.begin();
    let mut b = tiny();
    b.json["fusion"]["weights"] = json!({"value": 1.0});
    let (j, wt) = b.bytes();
    tx.add_model(&j, &wt).unwrap();
    tx.commit().unwrap();
    assert!(store.refresh().unwrap());
    let s3 = store.snapshot();
    assert!(!std::ptr::eq(
        s2.model(KEY).unwrap(),
        s3.model(KEY).unwrap()
    ));
    assert!(s3.model(KEY).unwrap().json().contains("\"value\": 1.0"));
}

#[test]
fn a_swapped_bundle_or_precomputed_file_is_refused_naming_it() {
    // Snapshot 2 holds a bundle, precomputed; snapshot 3 replaces it with
    // other weights. Copying snapshot 2's bundle file, or its precomputed
    // file, over snapshot 3's must not pass open or verify.
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema()).unwrap();
    let mut tx = w.begin();
    tx.add_items(common::batch(&ids(0..N), DIM, 0)).unwrap();
    tx.commit().unwrap();
    let mut tx = w.begin();
    let (j, wt) = tiny().bytes();
    tx.add_model_precomputed(&j, &wt, Dtype::F32).unwrap();
    tx.commit().unwrap();
    let mut other = tiny();
    // Other first-layer weights: other precomputed rows too.
    for x in &mut other.tensors.get_mut("upper.0.weight").unwrap().1 {
        *x *= 2.0;
    }
    let mut tx = w.begin();
    let (j, wt) = other.bytes();
    tx.add_model_precomputed(&j, &wt, Dtype::F32).unwrap();
    tx.commit().unwrap();
    drop(w);
    let before = scores(
        &Store::open(dir.path()).unwrap().snapshot(),
        KEY,
        &ids(0..N),
    );
    for marker in [".vbnd", "-pre-"] {
        let files: Vec<String> = common::files(dir.path())
            .into_iter()
            .filter(|f| f.contains(marker))
            .collect();
        assert_eq!(files.len(), 2, "{files:?}");
        let (old, new) = (dir.path().join(&files[0]), dir.path().join(&files[1]));
        let keep = std::fs::read(&new).unwrap();
        std::fs::copy(&old, &new).unwrap();
        let check = |r: vstore::Result<()>| match r {
            Err(Error::Corrupt { path, what }) => assert_eq!(path, new, "{what}"),
            other => panic!("{marker}: expected Corrupt naming {new:?}, got {other:?}"),
        };
        check(Store::open(dir.path()).map(|_| ()));
        check(Store::open_with(dir.path(), vstore::OpenOptions::new().verify(true)).map(|_| ()));
        check(Writer::open(dir.path()).map(|_| ()));
        std::fs::write(&new, keep).unwrap();
    }
    let after = scores(
        &Store::open(dir.path()).unwrap().snapshot(),
        KEY,
        &ids(0..N),
    );
    assert_eq!(before, after);
}

#[test]
fn items_whose_log1p_input_is_not_finite_are_listed_not_ranked() {
    // ctr_1d feeds the cross tower through log1p: a stored -1 reads as
    // -inf and -3 as NaN, which the ReLUs would turn into a finite, wrong
    // score. Every precision and both query kinds list them instead.
    let all = ids(0..N);
    let (u, inp) = (user(), inputs());
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema()).unwrap();
    let mut tx = w.begin();
    tx.add_items(common::batch(&all, DIM, 0)).unwrap();
    for (name, precision) in [
        ("f32", vstore::Precision::F32),
        ("bf16", vstore::Precision::Bf16),
        ("int8", vstore::Precision::Int8),
    ] {
        let mut b = tiny();
        b.json["format"] = json!("vstore.three_tower.v2");
        b.json["name"] = json!(name);
        let (j, wt) = b.bytes();
        tx.add_model_with(&j, &wt, None, precision).unwrap();
    }
    tx.update_stats(vstore::ItemBatch::new(vec![3, 7]).stat("ctr_1d", vec![-1.0, -3.0]))
        .unwrap();
    let snap = tx.commit().unwrap();
    let bad = vec![3, 7];
    for model in ["f32", "bf16", "int8"] {
        for q in [
            Query::ids(KEY, &u, &all, N as usize).three_tower(&inp),
            Query::full_scan(KEY, &u, N as usize).three_tower(&inp),
        ] {
            let r = snap.query(&q.model(model)).unwrap();
            assert_eq!(r.non_finite, bad, "{model:?}");
            assert_eq!(r.hits.len(), all.len() - 2, "{model:?}");
            assert!(r.hits.iter().all(|h| !bad.contains(&h.id)), "{model:?}");
            assert!(r.hits.iter().all(|h| h.score.is_finite()), "{model:?}");
        }
    }
}

#[test]
fn an_overflowing_exp_head_leaves_its_items_out_and_lists_them() {
    // An exp head whose bias overflows f32 for every item: weighted-sum and
    // rank fusion would order by infinity; they leave the items out and
    // list them. With the head's fusion weight at 0 nothing is left out.
    let all = ids(0..N);
    let (u, inp) = (user(), inputs());
    for (fusion, dropped) in [
        (
            json!({"kind": "weighted_sum", "weights": {"click": 1.0, "value": 0.1}}),
            true,
        ),
        (
            json!({"kind": "rank", "weights": {"click": 1.0, "value": 0.5}, "alpha": 0.0, "beta": 1.0}),
            true,
        ),
        (
            json!({"kind": "product", "weights": {"click": 1.0, "value": -1.0}}),
            true,
        ),
        (
            json!({"kind": "weighted_sum", "weights": {"click": 1.0}}),
            false,
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), schema()).unwrap();
        let mut tx = w.begin();
        tx.add_items(common::batch(&all, DIM, 0)).unwrap();
        let mut b = tiny();
        b.tensors
            .insert("heads.value.bias".into(), (vec![1], vec![200.0]));
        b.json["fusion"] = fusion.clone();
        let (j, wt) = b.bytes();
        tx.add_model(&j, &wt).unwrap();
        let snap = tx.commit().unwrap();
        for q in [
            Query::ids(KEY, &u, &all, 10).three_tower(&inp),
            Query::full_scan(KEY, &u, 10).three_tower(&inp),
        ] {
            let r = snap.query(&q).unwrap();
            if dropped {
                assert!(r.hits.is_empty(), "{fusion}: {:?}", r.hits);
                assert_eq!(r.non_finite, all, "{fusion}");
                assert_eq!(r.scored, 0);
            } else {
                assert_eq!(r.hits.len(), 10, "{fusion}");
                assert!(r.non_finite.is_empty(), "{fusion}");
                assert!(r.hits.iter().all(|h| h.score.is_finite()));
            }
        }
    }
}

#[test]
fn a_bundle_block_moved_with_checksums_recomputed_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    drop(store_with_bundle(dir.path()));
    let vbnd = common::files(dir.path())
        .into_iter()
        .find(|f| f.ends_with(".vbnd"))
        .unwrap();
    let path = dir.path().join(&vbnd);
    let saved: Vec<(std::path::PathBuf, Vec<u8>)> = common::files(dir.path())
        .into_iter()
        .map(|f| dir.path().join(f))
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    // model.json moved forward, weights.safetensors moved back: both stay
    // inside the data region and under matching chunk checksums.
    for (index, shift, field) in [(0, 64, "model.json"), (1, -64, "weights.safetensors")] {
        let what = vstore::fuzzing::move_block(dir.path(), &vbnd, index, shift).unwrap();
        assert_eq!(what, field);
        match Store::open(dir.path()) {
            Err(Error::Corrupt { path: p, what }) => {
                assert_eq!(p, path, "{what}");
                assert!(what.contains(field), "{what}");
            }
            other => panic!("{field} moved: expected Error::Corrupt, got {other:?}"),
        }
        for (p, b) in &saved {
            std::fs::write(p, b).unwrap();
        }
    }
    Store::open(dir.path()).unwrap().verify().unwrap();
}
