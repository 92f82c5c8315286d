//! `inspect`: what a store holds. Snapshots (number, time, versions,
//! bundles, rows, size), the schema, per-column summaries over live items,
//! embeddings, bundles, metadata and files; or one item with `--id`.
//! Tables by default, `--json` for scripts.

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;

use serde_json::{json, Value};
use vstore::{ColumnKind, Snapshot, Store};

use crate::cli::InspectArgs;
use crate::error::Result;
use crate::report::{self, bytes, file_len, utc, TextTable};
use crate::say;

/// Runs `inspect`.
pub fn run(a: &InspectArgs, out: &mut dyn Write) -> Result<()> {
    // With --snapshot, only that snapshot is pinned: a damaged newer one
    // (which Store::open refuses) does not stop an intact one from being
    // inspected.
    let store = match a.snapshot {
        Some(n) => report::open_store_at(&a.store, n)?,
        None => super::open_store(&a.store)?,
    };
    let snap = store.snapshot();
    if let Some(id) = a.id {
        let v = item(&snap, id)?;
        return if a.json {
            report::json(out, &v)
        } else {
            print_item(out, &snap, &v)
        };
    }
    let v = summary(&store, &snap)?;
    if a.json {
        report::json(out, &v)
    } else {
        print_summary(out, &store, &snap, &v)
    }
}

fn snapshot_size(snap: &Snapshot) -> u64 {
    snap.files().iter().map(|f| file_len(snap.dir(), f)).sum()
}

fn snapshot_row(n: u64, s: &Snapshot) -> Value {
    json!({
        "snapshot": n,
        "parent": s.parent(),
        "created_unix_ms": report::unix_ms(s.created()),
        "created_utc": utc(s.created()),
        "items": s.len(),
        "segments": s.segments().len(),
        "embeddings": s.embedding_keys(),
        "bundles": report::bundle_labels(s),
        "files": s.files().len(),
        "bytes": snapshot_size(s),
    })
}

/// Summary statistics of one scalar column over live rows.
#[derive(Default)]
struct ColStats {
    present: u64,
    missing: u64,
    min: f64,
    max: f64,
    sum: f64,
    distinct: HashSet<u32>,
}

impl ColStats {
    fn add(&mut self, x: f64) {
        if self.present == 0 {
            self.min = x;
            self.max = x;
        } else {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        self.present += 1;
        self.sum += x;
    }
}

fn column_summaries(snap: &Snapshot) -> Result<Vec<Value>> {
    let schema = snap.schema();
    let mut out = Vec::new();
    for (group, defs) in [("profile", &schema.profile), ("statistics", &schema.stats)] {
        for d in defs.iter() {
            let mut st = ColStats::default();
            let categorical = matches!(d.kind, ColumnKind::Categorical { .. });
            for seg in snap.segments() {
                if categorical {
                    let col = seg.categorical(&d.name)?;
                    for r in 0..seg.rows() {
                        if seg.is_deleted(r) {
                            continue;
                        }
                        if col.is_missing(r) {
                            st.missing += 1;
                        } else {
                            let v = col.get(r);
                            st.add(f64::from(v));
                            st.distinct.insert(v);
                        }
                    }
                } else {
                    let col = if group == "profile" {
                        seg.numeric(&d.name)?
                    } else {
                        seg.stat(&d.name)?
                    };
                    for r in 0..seg.rows() {
                        if seg.is_deleted(r) {
                            continue;
                        }
                        if col.is_missing(r) {
                            st.missing += 1;
                        } else {
                            st.add(f64::from(col.get(r)));
                        }
                    }
                }
            }
            let (kind, default) = match d.kind {
                ColumnKind::Categorical { default } => ("categorical", f64::from(default)),
                ColumnKind::Numeric { default } if group == "profile" => {
                    ("numeric", f64::from(default))
                }
                ColumnKind::Numeric { default } => ("stat", f64::from(default)),
            };
            let has = st.present > 0;
            out.push(json!({
                "group": group,
                "name": d.name,
                "kind": kind,
                "default": default,
                "present": st.present,
                "missing": st.missing,
                "min": has.then_some(st.min),
                "max": has.then_some(st.max),
                "mean": has.then(|| st.sum / st.present as f64),
                "distinct": categorical.then_some(st.distinct.len()),
            }));
        }
    }
    Ok(out)
}

fn embedding_summaries(snap: &Snapshot) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for def in &snap.schema().embeddings {
        let key = def.key();
        let d = def.dim as usize;
        let mut buf = vec![0f32; d];
        let (mut n, mut lo, mut hi, mut sum) = (0u64, f64::INFINITY, 0f64, 0f64);
        for (s, seg) in snap.segments().iter().enumerate() {
            let col = snap.embedding(s, &key)?;
            for r in 0..seg.rows() {
                if seg.is_deleted(r) {
                    continue;
                }
                col.decode(r, &mut buf);
                let norm = buf
                    .iter()
                    .map(|&x| f64::from(x) * f64::from(x))
                    .sum::<f64>()
                    .sqrt();
                n += 1;
                lo = lo.min(norm);
                hi = hi.max(norm);
                sum += norm;
            }
        }
        out.push(json!({
            "key": key,
            "dtype": def.dtype.name(),
            "dim": def.dim,
            "row_bytes": def.dtype.row_stride(def.dim),
            "rows": n,
            "norm_min": (n > 0).then_some(lo),
            "norm_mean": (n > 0).then(|| sum / n as f64),
            "norm_max": (n > 0).then_some(hi),
            "bundle": snap.model_keys().contains(&key),
            "computed": snap.computed_count(&key)?,
            "item_tower": snap.item_tower_summary(&key),
        }));
    }
    Ok(out)
}

fn bundle_summaries(snap: &Snapshot) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (key, name) in (snap.model_keys().into_iter()).flat_map(|k| {
        snap.model_names(&k)
            .into_iter()
            .map(move |n| (k.clone(), n))
    }) {
        let m = snap.model_named(&key, &name)?;
        let inputs: Vec<Value> = m
            .user_inputs()
            .into_iter()
            .map(|u| {
                json!({
                    "name": u.name,
                    "dim": u.dim,
                    "kind": if u.by_item_column.is_some() { "user_by_item" } else { "user_dense" },
                    "column": u.by_item_column,
                })
            })
            .collect();
        out.push(json!({
            "key": key,
            "name": name,
            "contract": m.contract(),
            "parts": m.describe(),
            "heads": m.head_names(),
            "user_dim": m.user_dim(),
            "item_dim": m.item_dim(),
            "user_inputs": inputs,
            "macs_per_item": m.macs_per_item(),
            "macs_per_item_run": m.macs_per_item_split(),
            "precomputed": snap.model_named_is_precomputed(&key, &name),
            "precision": m.precision().name(),
        }));
    }
    Ok(out)
}

fn summary(store: &Store, snap: &Arc<Snapshot>) -> Result<Value> {
    let mut snapshots = Vec::new();
    // What readers get: the newest snapshot that pins (the store's own
    // current one unless it was opened at an older snapshot).
    let mut current = store.snapshot().number();
    for n in store.snapshots()? {
        match store.open_snapshot(n) {
            Ok(s) => {
                current = current.max(n);
                snapshots.push(snapshot_row(n, &s))
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => snapshots.push(json!({"snapshot": n, "error": e.to_string()})),
        }
    }
    let file_versions = snap.file_versions();
    let files: Vec<Value> = file_versions
        .iter()
        .map(|(f, v)| json!({"name": f, "bytes": file_len(snap.dir(), f), "format_version": v}))
        .collect();
    // A store updated by a newer build holds files of several versions.
    let versions: std::collections::BTreeSet<u32> = file_versions.iter().map(|(_, v)| *v).collect();
    let segments: Vec<Value> = snap
        .segments()
        .iter()
        .map(|s| json!({"id": s.id(), "rows": s.rows(), "live": s.live_rows()}))
        .collect();
    let metadata: serde_json::Map<String, Value> = snap
        .metadata_entries()
        .map(|(k, v)| (k.to_string(), Value::from(v)))
        .collect();
    Ok(json!({
        "store": store.dir().display().to_string(),
        "format_versions": versions,
        "build_format_version": vstore::FORMAT_VERSION,
        "current": current,
        "snapshots": snapshots,
        "skipped_manifests": store.skipped_manifests().into_iter()
            .map(|(m, why)| json!({"manifest": m, "why": why})).collect::<Vec<_>>(),
        "snapshot": snap.number(),
        "items": snap.len(),
        "segments": segments,
        "columns": column_summaries(snap)?,
        "embeddings": embedding_summaries(snap)?,
        "bundles": bundle_summaries(snap)?,
        "metadata": metadata,
        "files": files,
        "bytes": snapshot_size(snap),
    }))
}

fn num(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Number(n) => match n.as_f64() {
            Some(x) if n.is_f64() => fmt_f(x),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

fn fmt_f(x: f64) -> String {
    if x == x.trunc() && x.abs() < 1e15 {
        format!("{x:.0}")
    } else if x.abs() >= 1e-3 && x.abs() < 1e6 {
        format!("{x:.4}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        format!("{x:.3e}")
    }
}

/// A JSON string's text ("" for anything else).
fn text(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

fn strs(v: &Value) -> String {
    match v.as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => "-".into(),
    }
}

fn print_summary(out: &mut dyn Write, store: &Store, snap: &Snapshot, v: &Value) -> Result<()> {
    print_snapshots(out, store, v)?;
    print_columns(out, snap, v)?;
    print_embeddings(out, v)?;
    print_bundles(out, v)?;
    print_layout(out, v)
}

/// The store line and the table of retained snapshots (and skipped manifests).
fn print_snapshots(out: &mut dyn Write, store: &Store, v: &Value) -> Result<()> {
    let versions = strs(&v["format_versions"]);
    let plural = if v["format_versions"].as_array().is_some_and(|a| a.len() > 1) {
        "s"
    } else {
        ""
    };
    say!(
        out,
        "store {} (format version{plural} {versions}; this build writes {}), current snapshot {}",
        store.dir().display(),
        vstore::FORMAT_VERSION,
        v["current"]
    );
    say!(out, "\nsnapshots:");
    let mut t = TextTable::new(&[
        "snapshot",
        "",
        "published (UTC)",
        "parent",
        "items",
        "segments",
        "embeddings",
        "bundles",
        "size",
    ]);
    for s in v["snapshots"].as_array().into_iter().flatten() {
        if let Some(e) = s.get("error") {
            t.row(vec![
                s["snapshot"].to_string(),
                String::new(),
                format!("unreadable: {}", e.as_str().unwrap_or("")),
            ]);
            continue;
        }
        let mark = if s["snapshot"] == v["snapshot"] {
            "*"
        } else {
            ""
        };
        t.row(vec![
            s["snapshot"].to_string(),
            mark.to_string(),
            text(&s["created_utc"]),
            num(&s["parent"]),
            num(&s["items"]),
            num(&s["segments"]),
            strs(&s["embeddings"]),
            strs(&s["bundles"]),
            bytes(s["bytes"].as_u64().unwrap_or(0)),
        ]);
    }
    t.print(out, 2)?;
    for m in v["skipped_manifests"].as_array().into_iter().flatten() {
        say!(out, "  skipped {}: {}", m["manifest"], m["why"]);
    }
    Ok(())
}

/// The pinned snapshot's line and its column summaries.
fn print_columns(out: &mut dyn Write, snap: &Snapshot, v: &Value) -> Result<()> {
    say!(
        out,
        "\nsnapshot {} (*): {} live items in {} segment(s), {}",
        snap.number(),
        snap.len(),
        snap.segments().len(),
        bytes(v["bytes"].as_u64().unwrap_or(0))
    );
    let mut t = TextTable::new(&[
        "column", "kind", "default", "min", "max", "mean", "missing", "distinct",
    ]);
    for c in v["columns"].as_array().into_iter().flatten() {
        t.row(vec![
            text(&c["name"]),
            text(&c["kind"]),
            num(&c["default"]),
            num(&c["min"]),
            num(&c["max"]),
            num(&c["mean"]),
            num(&c["missing"]),
            num(&c["distinct"]),
        ]);
    }
    say!(out, "\ncolumns (over live items):");
    t.print(out, 2)?;
    Ok(())
}

/// The embedding versions: dtype, dimension, rows, norms, whether a bundle scores them.
fn print_embeddings(out: &mut dyn Write, v: &Value) -> Result<()> {
    say!(out, "\nembeddings:");
    let mut t = TextTable::new(&[
        "version",
        "dtype",
        "dim",
        "row bytes",
        "rows",
        "norm min",
        "norm mean",
        "norm max",
        "bundle",
        "computed",
    ]);
    for e in v["embeddings"].as_array().into_iter().flatten() {
        t.row(vec![
            text(&e["key"]),
            text(&e["dtype"]),
            num(&e["dim"]),
            num(&e["row_bytes"]),
            num(&e["rows"]),
            num(&e["norm_min"]),
            num(&e["norm_mean"]),
            num(&e["norm_max"]),
            if e["bundle"] == true { "yes" } else { "no" }.to_string(),
            num(&e["computed"]),
        ]);
    }
    t.print(out, 2)?;
    for e in v["embeddings"].as_array().into_iter().flatten() {
        if let Some(t) = e["item_tower"].as_str() {
            say!(
                out,
                "  {} has an item tower ({t}): items added without a vector get one computed; \
                 {} live items have one",
                text(&e["key"]),
                num(&e["computed"])
            );
        }
    }
    Ok(())
}

/// The model bundles: heads, user inputs, cost, precomputing.
fn print_bundles(out: &mut dyn Write, v: &Value) -> Result<()> {
    if let Some(bs) = v["bundles"].as_array().filter(|a| !a.is_empty()) {
        say!(out, "\nmodel bundles:");
        let mut t = TextTable::new(&[
            "version",
            "name",
            "v",
            "heads",
            "user inputs",
            "MACs/item",
            "precomputed",
            "precision",
        ]);
        for b in bs {
            let inputs: Vec<String> = b["user_inputs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|u| {
                    format!(
                        "{} ({}, {})",
                        u["name"].as_str().unwrap_or(""),
                        u["kind"].as_str().unwrap_or(""),
                        u["dim"]
                    )
                })
                .collect();
            t.row(vec![
                text(&b["key"]),
                text(&b["name"]),
                num(&b["contract"]),
                strs(&b["heads"]),
                if inputs.is_empty() {
                    "-".into()
                } else {
                    inputs.join(", ")
                },
                num(&b["macs_per_item"]),
                if b["precomputed"] == true {
                    "yes"
                } else {
                    "no"
                }
                .to_string(),
                text(&b["precision"]),
            ]);
        }
        t.print(out, 2)?;
        for b in bs {
            say!(
                out,
                "  {} {}: {}",
                text(&b["key"]),
                text(&b["name"]),
                text(&b["parts"])
            );
        }
    }
    Ok(())
}

/// Segments, user metadata and files.
fn print_layout(out: &mut dyn Write, v: &Value) -> Result<()> {
    say!(out, "\nsegments:");
    let mut t = TextTable::new(&["segment", "rows", "live"]);
    for s in v["segments"].as_array().into_iter().flatten() {
        t.row(vec![num(&s["id"]), num(&s["rows"]), num(&s["live"])]);
    }
    t.print(out, 2)?;

    if let Some(m) = v["metadata"].as_object().filter(|m| !m.is_empty()) {
        say!(out, "\nmetadata:");
        for (k, val) in m {
            say!(out, "  {k} = {}", val.as_str().unwrap_or(""));
        }
    }

    say!(out, "\nfiles:");
    let mut t = TextTable::new(&["file", "size", "format"]);
    for f in v["files"].as_array().into_iter().flatten() {
        t.row(vec![
            text(&f["name"]),
            bytes(f["bytes"].as_u64().unwrap_or(0)),
            num(&f["format_version"]),
        ]);
    }
    t.print(out, 2)?;
    Ok(())
}

fn item(snap: &Snapshot, id: u64) -> Result<Value> {
    let Some(at) = snap.item(id)? else {
        return Err(vstore::Error::UnknownId {
            id,
            snapshot: snap.number(),
            context: "inspect --id".into(),
        }
        .into());
    };
    let seg = &snap.segments()[at.segment];
    let schema = snap.schema();
    let mut cols = Vec::new();
    for (group, defs) in [("profile", &schema.profile), ("statistics", &schema.stats)] {
        for d in defs.iter() {
            let (value, missing, kind): (Value, bool, &str) = match d.kind {
                ColumnKind::Categorical { .. } => {
                    let c = seg.categorical(&d.name)?;
                    (json!(c.get(at.row)), c.is_missing(at.row), "categorical")
                }
                ColumnKind::Numeric { .. } => {
                    let c = if group == "profile" {
                        seg.numeric(&d.name)?
                    } else {
                        seg.stat(&d.name)?
                    };
                    let kind = if group == "profile" {
                        "numeric"
                    } else {
                        "stat"
                    };
                    (json!(c.get(at.row)), c.is_missing(at.row), kind)
                }
            };
            cols.push(json!({"name": d.name, "kind": kind, "value": value, "missing": missing}));
        }
    }
    let mut embs = Vec::new();
    for key in snap.embedding_keys() {
        let v = snap.get_embedding(id, &key)?;
        let norm = v
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        let def = snap.embedding_def(&key)?;
        let computed = snap.is_computed(id, &key)?;
        embs.push(json!({"key": key, "dtype": def.dtype.name(), "norm": norm,
                         "computed": computed, "values": v}));
    }
    Ok(json!({
        "id": id,
        "snapshot": snap.number(),
        "segment": seg.id(),
        "row": at.row,
        "columns": cols,
        "embeddings": embs,
    }))
}

fn print_item(out: &mut dyn Write, snap: &Snapshot, v: &Value) -> Result<()> {
    say!(
        out,
        "item {} in snapshot {}: segment {}, row {}",
        v["id"],
        snap.number(),
        v["segment"],
        v["row"]
    );
    let mut t = TextTable::new(&["column", "kind", "value"]);
    for c in v["columns"].as_array().into_iter().flatten() {
        let shown = if c["missing"] == true {
            format!("{} (missing: default)", num(&c["value"]))
        } else {
            num(&c["value"])
        };
        t.row(vec![text(&c["name"]), text(&c["kind"]), shown]);
    }
    t.print(out, 2)?;
    for e in v["embeddings"].as_array().into_iter().flatten() {
        let vals: Vec<String> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| format!("{:.4}", x.as_f64().unwrap_or(0.0)))
            .collect();
        let shown = if vals.len() > 8 {
            format!("[{}, ... {} more]", vals[..8].join(", "), vals.len() - 8)
        } else {
            format!("[{}]", vals.join(", "))
        };
        say!(
            out,
            "  {} ({}, norm {}{}): {shown}",
            e["key"].as_str().unwrap_or(""),
            e["dtype"].as_str().unwrap_or(""),
            num(&e["norm"]),
            if e["computed"] == true {
                ", computed in the store by the item tower"
            } else {
                ""
            }
        );
    }
    Ok(())
}
