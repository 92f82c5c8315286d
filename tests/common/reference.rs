//! The numpy reference cases (`tests/three_tower/gen.py`, `gen_v2.py`,
//! `gen_item_tower.py`): reading `case.json`, building the store it
//! describes and checking results. Shared by the parity tests.

use std::path::Path;

use serde_json::Value;
use vstore::{Dtype, ItemBatch, QueryResult, Schema, UserInputs, Writer};

pub fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn opt_u32s(v: &Value) -> Vec<Option<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().map(|u| u as u32))
        .collect()
}

pub fn opt_f32s(v: &Value) -> Vec<Option<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().map(|f| f as f32))
        .collect()
}

pub fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

pub fn close(got: f32, want: f64) -> bool {
    let (g, w) = (got as f64, want);
    (g - w).abs() <= 1e-5 * w.abs().max(1e-30) || (g - w).abs() <= 1e-12
}

/// The profile and statistics columns a reference's `schema` object
/// declares (`categorical`, `numeric`, `stats`, each with defaults).
pub fn columns(s: &Value) -> Schema {
    let mut schema = Schema::new();
    for c in s["categorical"].as_array().unwrap() {
        schema = schema.categorical(
            c["name"].as_str().unwrap(),
            c["default"].as_u64().unwrap() as u32,
        );
    }
    for c in s["numeric"].as_array().unwrap() {
        schema = schema.numeric(
            c["name"].as_str().unwrap(),
            c["default"].as_f64().unwrap() as f32,
        );
    }
    for c in s["stats"].as_array().unwrap() {
        schema = schema.stat(
            c["name"].as_str().unwrap(),
            c["default"].as_f64().unwrap() as f32,
        );
    }
    schema
}

/// Checks query result `r` against a reference's `expected` object: ids
/// and not-found ids exactly, no non-finite score, scores (and, when
/// `expected` has them, per-head values) to 1e-5 relative. `ctx` names the
/// query in failures.
pub fn check_result(ctx: &str, r: &QueryResult, exp: &Value) {
    let got_ids: Vec<u64> = r.hits.iter().map(|h| h.id).collect();
    assert_eq!(got_ids, u64s(&exp["ids"]), "{ctx}: ids");
    assert_eq!(r.not_found, u64s(&exp["not_found"]), "{ctx}: not found");
    assert!(
        r.non_finite.is_empty(),
        "{ctx}: non-finite {:?}",
        r.non_finite
    );
    let want_scores = exp["scores"].as_array().unwrap();
    for (i, h) in r.hits.iter().enumerate() {
        let want = want_scores[i].as_f64().unwrap();
        assert!(
            close(h.score, want),
            "{ctx}: hit {i} (id {}) score {} vs {want}",
            h.id,
            h.score
        );
        let Some(wh) = exp.get("heads").and_then(|h| h[i].as_array()) else {
            continue;
        };
        let gh = r.heads_of(i);
        assert_eq!(gh.len(), wh.len(), "{ctx}: head count");
        for (j, (g, w)) in gh.iter().zip(wh).enumerate() {
            let w = w.as_f64().unwrap();
            assert!(close(*g, w), "{ctx}: hit {i} head {j}: {g} vs {w}");
        }
    }
}

/// Checks the feature log of `r` (a query run with `log_features` and
/// `with_heads`) against the reference's `expected.features`: each hit's
/// cross-tower input and head logits to 1e-5 (relative, or absolute below
/// 1), and that the log's head values and scores are the result's own, bit
/// for bit.
#[allow(dead_code)]
pub fn check_features(ctx: &str, r: &QueryResult, exp: &Value) {
    let log = r
        .features
        .as_ref()
        .expect("the query asked for a feature log");
    let want = &exp["features"];
    assert_eq!(log.scores.len(), r.hits.len(), "{ctx}: logged rows");
    assert_eq!(log.head_names, r.head_names, "{ctx}: head names");
    let scores: Vec<f32> = r.hits.iter().map(|h| h.score).collect();
    assert_eq!(log.scores, scores, "{ctx}: logged scores");
    assert_eq!(log.heads, r.heads, "{ctx}: logged head values");
    let near = |g: f32, w: f64| (g as f64 - w).abs() <= 1e-5 * w.abs().max(1.0);
    for (what, rows, got) in [
        ("cross input", &want["cross_inputs"], &log.cross_inputs),
        ("head logit", &want["logits"], &log.head_logits),
    ] {
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), r.hits.len(), "{ctx}: reference {what} rows");
        let width = rows.first().map_or(0, |x| x.as_array().unwrap().len());
        assert_eq!(got.len(), rows.len() * width, "{ctx}: {what} values");
        for (i, row) in rows.iter().enumerate() {
            for (j, w) in row.as_array().unwrap().iter().enumerate() {
                let (g, w) = (got[i * width + j], w.as_f64().unwrap());
                assert!(near(g, w), "{ctx}: hit {i} {what} {j}: {g} vs {w}");
            }
        }
    }
    assert_eq!(
        log.inputs.iter().map(|i| i.1).sum::<usize>(),
        log.cross_dim,
        "{ctx}: input widths"
    );
}

/// Builds the store the reference describes; returns the writer.
pub fn build(dir: &Path, case: &Value) -> Writer {
    let s = &case["schema"];
    let mut schema = columns(s);
    let e = &s["embedding"];
    let key = format!(
        "{}@{}",
        e["space"].as_str().unwrap(),
        e["version"].as_str().unwrap()
    );
    schema = schema.embedding(
        e["space"].as_str().unwrap(),
        e["version"].as_str().unwrap(),
        e["dim"].as_u64().unwrap() as u32,
        Dtype::F32,
    );
    let items = &case["items"];
    let mut batch = ItemBatch::new(u64s(&items["ids"]));
    for (name, v) in items["categorical"].as_object().unwrap() {
        batch = batch.categorical_opt(name, opt_u32s(v));
    }
    for (name, v) in items["numeric"].as_object().unwrap() {
        batch = batch.numeric_opt(name, opt_f32s(v));
    }
    for (name, v) in items["stats"].as_object().unwrap() {
        batch = batch.stat_opt(name, opt_f32s(v));
    }
    let vecs: Vec<f32> = items["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(f32s)
        .collect();
    batch = batch.embedding(&key, vecs);
    let mut w = Writer::create(dir, schema).unwrap();
    let mut tx = w.begin();
    tx.add_items(batch).unwrap();
    tx.commit().unwrap();
    w
}

pub fn inputs(q: &Value) -> UserInputs {
    let mut u = UserInputs::new();
    for (name, v) in q["user_dense"].as_object().unwrap() {
        u = u.dense(name, f32s(v));
    }
    for (name, m) in q["user_by_item"].as_object().unwrap() {
        let entries: Vec<(u32, Vec<f32>)> = m
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), f32s(v)))
            .collect();
        u = u.by_item(name, entries);
    }
    u
}
