//! Review of contract v2 (docs/BUNDLE.md): combinations of parts the
//! parity test does not cover, each checked against an equivalent bundle
//! the scorer already handles (zeroed weight columns, identical experts,
//! an SE block that scales by 1), plus validation gaps.

mod common;

use common::bundle::Bundle;
use serde_json::json;
use vstore::{Dtype, Error, Fusion, Model, Query, Schema, UserInputs, Writer};

const DIM: u32 = 16;
const KEY: &str = "prerank@v42";
const N: u64 = 100;

fn schema() -> Schema {
    common::schema(DIM, Dtype::F16)
}

fn v2() -> Bundle {
    let mut b = Bundle::tiny("v42", DIM as usize);
    b.json["format"] = json!("vstore.three_tower.v2");
    b
}

fn set_tensor(b: &mut Bundle, name: &str, shape: &[usize], salt: usize) {
    let n: usize = shape.iter().product();
    let v = (0..n)
        .map(|i| (((i * 5 + salt * 11) % 13) as f32 - 6.0) / 16.0)
        .collect();
    b.tensors.insert(name.to_string(), (shape.to_vec(), v));
}

/// Columns `cols` of the `[out, in]` tensor `name` set to zero.
fn zero_cols(b: &mut Bundle, name: &str, cols: std::ops::Range<usize>) {
    let (s, v) = b.tensors.get_mut(name).unwrap();
    let inp = s[1];
    for j in 0..s[0] {
        for c in cols.clone() {
            v[j * inp + c] = 0.0;
        }
    }
}

/// The `[out, in]` tensor `name` without columns `cols`.
fn cut_cols(b: &mut Bundle, name: &str, cols: std::ops::Range<usize>) {
    let (s, v) = b.tensors.get_mut(name).unwrap();
    let inp = s[1];
    let mut w = Vec::new();
    for j in 0..s[0] {
        for c in 0..inp {
            if !cols.contains(&c) {
                w.push(v[j * inp + c]);
            }
        }
    }
    s[1] = inp - cols.len();
    *v = w;
}

fn inputs() -> UserInputs {
    UserInputs::new()
        .dense("user_stats", vec![0.5, -0.5])
        .by_item("user_category_ctr", [(1, vec![0.25]), (3, vec![-0.75])])
}

fn user(dim: usize) -> Vec<f32> {
    (0..dim).map(|i| ((i * 3 % 7) as f32 - 3.0) / 4.0).collect()
}

/// Every item's (id, score, head values), by id, as a store scores them
/// with bundle `b` (added with its item part precomputed if `pre`), with
/// the query's `fusion` if given.
fn score_all(b: &Bundle, pre: bool, fusion: Option<&Fusion>) -> Vec<(u64, f32, Vec<f32>)> {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema()).unwrap();
    let mut tx = w.begin();
    let ids: Vec<u64> = (1..=N).collect();
    tx.add_items(common::batch(&ids, DIM, 0)).unwrap();
    let (j, wt) = b.bytes();
    if pre {
        tx.add_model_precomputed(&j, &wt, Dtype::F32).unwrap();
    } else {
        tx.add_model(&j, &wt).unwrap();
    }
    let snap = tx.commit().unwrap();
    let ud = b.json["user_dim"].as_u64().unwrap() as usize;
    let u = user(ud);
    let inp = inputs();
    let mut q = Query::ids(KEY, &u, &ids, N as usize)
        .three_tower(&inp)
        .with_heads();
    if let Some(f) = fusion {
        q = q.fusion(f);
    }
    let r = snap.query(&q).unwrap();
    assert!(r.non_finite.is_empty(), "{:?}", r.non_finite);
    let mut out: Vec<(u64, f32, Vec<f32>)> = (r.hits.iter().enumerate())
        .map(|(i, h)| (h.id, h.score, r.heads_of(i).to_vec()))
        .collect();
    out.sort_by_key(|x| x.0);
    assert_eq!(out.len(), N as usize);
    out
}

#[track_caller]
fn close(a: &[(u64, f32, Vec<f32>)], b: &[(u64, f32, Vec<f32>)]) {
    let near = |x: f32, y: f32| (x - y).abs() <= 1e-4 * (1.0 + x.abs().max(y.abs()));
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.0, y.0);
        assert!(near(x.1, y.1), "item {}: score {} vs {}", x.0, x.1, y.1);
        for (h, (p, q)) in x.2.iter().zip(&y.2).enumerate() {
            assert!(near(*p, *q), "item {} head {h}: {p} vs {q}", x.0);
        }
    }
}

// The tiny bundle's first upper layer reads [user 0..4 | item 4..20 | cross 20..23].

/// `upper.inputs` without "cross" (the cross tower feeds nothing): the
/// same as the default parts with the cross columns zero.
#[test]
fn upper_inputs_without_cross() {
    let mut a = v2();
    a.json["upper"]["inputs"] = json!(["user", "item"]);
    cut_cols(&mut a, "upper.0.weight", 20..23);
    let (j, w) = a.bytes();
    Model::load(&j, &w, &schema()).expect("a valid bundle loads");
    let mut b = v2();
    zero_cols(&mut b, "upper.0.weight", 20..23);
    let want = score_all(&b, false, None);
    close(&score_all(&a, false, None), &want);
    close(&score_all(&a, true, None), &want);
}

/// `upper.inputs` without "user": the same as the user columns zero, with
/// or without precomputing.
#[test]
fn upper_inputs_without_user() {
    let mut a = v2();
    a.json["upper"]["inputs"] = json!(["item", "cross"]);
    cut_cols(&mut a, "upper.0.weight", 0..4);
    let mut b = v2();
    zero_cols(&mut b, "upper.0.weight", 0..4);
    let want = score_all(&b, false, None);
    close(&score_all(&a, false, None), &want);
    close(&score_all(&a, true, None), &want);
}

/// `dot` without `item`: the same as with `item` columns zero.
#[test]
fn dot_without_item() {
    let mut b = v2();
    b.json["user_dim"] = json!(16);
    b.json["upper"]["inputs"] = json!(["user", "item", "cross", "dot"]);
    set_tensor(&mut b, "upper.0.weight", &[8, 16 + 16 + 3 + 1], 3);
    zero_cols(&mut b, "upper.0.weight", 16..32);
    let mut a = b.clone();
    a.json["upper"]["inputs"] = json!(["user", "cross", "dot"]);
    cut_cols(&mut a, "upper.0.weight", 16..32);
    close(&score_all(&a, false, None), &score_all(&b, false, None));
}

/// An SE block that scales every input by 1 (sigmoid of a large bias)
/// changes nothing; with it the first cross layer is not split.
#[test]
fn se_scaling_by_one_is_the_identity() {
    let mut a = v2();
    a.json["cross"]["se"] =
        json!({"layers": [{"weight": "se.weight", "bias": "se.bias", "activation": "sigmoid"}]});
    a.tensors
        .insert("se.weight".into(), (vec![5, 5], vec![0.0; 25]));
    a.tensors.insert("se.bias".into(), (vec![5], vec![40.0; 5]));
    let b = v2();
    close(&score_all(&a, false, None), &score_all(&b, false, None));
}

/// MMoE whose experts are identical, with head towers of different widths,
/// is the expert as one more shared layer under the same towers.
#[test]
fn mmoe_of_identical_experts_with_towers_of_different_widths() {
    let mut a = v2();
    let e = json!({"layers": [{"weight": "e.weight", "bias": "e.bias", "activation": "relu"}]});
    a.json["upper"]["mmoe"] = json!({
        "experts": [e.clone(), e.clone(), e],
        "gates": {"click": {"weight": "g.click.weight", "bias": "g.click.bias"},
                  "value": {"weight": "g.value.weight"}}
    });
    a.json["heads"][0]["tower"] =
        json!({"layers": [{"weight": "t.click.weight", "activation": "relu"}]});
    a.json["heads"][1]["tower"] = json!({"layers": [
        {"weight": "t.value.0.weight", "activation": "relu"},
        {"weight": "t.value.1.weight", "bias": "t.value.1.bias", "activation": "sigmoid"}]});
    set_tensor(&mut a, "e.weight", &[4, 5], 1);
    set_tensor(&mut a, "e.bias", &[4], 2);
    set_tensor(&mut a, "g.click.weight", &[3, 5], 3);
    set_tensor(&mut a, "g.click.bias", &[3], 4);
    set_tensor(&mut a, "g.value.weight", &[3, 5], 5);
    set_tensor(&mut a, "t.click.weight", &[3, 4], 6);
    set_tensor(&mut a, "t.value.0.weight", &[6, 4], 7);
    set_tensor(&mut a, "t.value.1.weight", &[2, 6], 8);
    set_tensor(&mut a, "t.value.1.bias", &[2], 9);
    set_tensor(&mut a, "heads.click.weight", &[1, 3], 10);
    set_tensor(&mut a, "heads.value.weight", &[1, 2], 11);
    let mut b = a.clone();
    b.json["upper"].as_object_mut().unwrap().remove("mmoe");
    b.json["upper"]["layers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"weight": "e.weight", "bias": "e.bias", "activation": "relu"}));
    let want = score_all(&b, false, None);
    close(&score_all(&a, false, None), &want);
    close(&score_all(&a, true, None), &want);
}

/// `normalize` divides by the bucket's value, precomputed or not.
#[test]
fn normalize_with_and_without_precomputing() {
    let plain = score_all(&v2(), false, None);
    let mut a = v2();
    a.json["heads"][1]["normalize"] =
        json!({"column": "price", "bucketize": [5.0], "values": [0.5, 2.0]});
    a.json["fusion"] = json!({"kind": "weighted_sum", "weights": {"value": 1.0}});
    for pre in [false, true] {
        let got = score_all(&a, pre, None);
        for (p, g) in plain.iter().zip(&got) {
            let id = p.0;
            // price: id * 0.5, missing (default -1) when id % 5 == 0.
            let price = if id % 5 == 0 { -1.0 } else { id as f32 * 0.5 };
            let v = if price >= 5.0 { 2.0 } else { 0.5 };
            let want = p.2[1] / v;
            assert!(
                (g.2[1] - want).abs() <= 1e-5 * want.abs().max(1.0),
                "item {id}"
            );
            assert_eq!(g.1, g.2[1]);
        }
    }
}

/// A per-query product fusion with a column, over a bundle whose fusion
/// has none.
#[test]
fn per_query_fusion_with_a_column() {
    let f = Fusion::from_json(
        br#"{"kind": "product", "weights": {"click": 1.0}, "columns": {"impressions_7d": 0.5}}"#,
    )
    .unwrap();
    for pre in [false, true] {
        let got = score_all(&v2(), pre, Some(&f));
        for g in &got {
            let want = g.2[0] as f64 * (g.0 as f64).sqrt();
            assert!(((g.1 as f64) - want).abs() <= 1e-5 * want, "item {}", g.0);
        }
    }
}

/// `normalize.values` must be > 0; a value that is positive in f64 but 0
/// (or infinite) in f32, as the scorer divides, is not a valid divisor.
#[test]
fn normalize_values_that_vanish_or_overflow_in_f32_are_refused() {
    for bad in [1e-50, 1e50] {
        let mut b = v2();
        b.json["heads"][1]["normalize"] =
            json!({"column": "price", "bucketize": [5.0], "values": [bad, 2.0]});
        let (j, w) = b.bytes();
        match Model::load(&j, &w, &schema()) {
            Err(Error::Bundle { field, .. }) => {
                assert_eq!(field, "heads[1].normalize.values[0]")
            }
            other => panic!(
                "values [{bad}, 2] accepted: {:?}",
                other.map(|m| m.describe())
            ),
        }
    }
}
