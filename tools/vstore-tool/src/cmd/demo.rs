//! `demo`: the main job on built-in data. Generates a synthetic catalogue,
//! builds a store, adds a three-tower bundle, adds an item tower and fresh
//! items without vectors, refreshes statistics, runs
//! two-tower and three-tower queries, verifies, and prints a short report.
//! `--export DIR` writes the catalogue as input files instead.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::Arc;
use vstore::{
    Dtype, Filter, ItemBatch, Query, Schema, Scratch, Snapshot, Store, UserInputs, Writer,
};

use crate::cli::DemoArgs;
use crate::error::{Result, ToolError};
use crate::progress::Progress;
use crate::report::{bytes, dur, file_len, TextTable};
use crate::say;
use crate::synth::{self, Catalogue, Rng, CATEGORIES, DIM, SPACE, VERSION};

/// Candidates per query.
const CANDIDATES: usize = 2000;
/// Results per query.
const K: usize = 100;

/// Runs `demo`.
pub fn run(a: &DemoArgs, p: &Progress, out: &mut dyn Write) -> Result<()> {
    if a.json {
        let summary = steps(a, p, &mut std::io::stderr())?;
        return crate::report::json(out, &summary);
    }
    steps(a, p, out).map(|_| ())
}

/// The demo's steps, reported to `out`; returns the JSON summary.
fn steps(a: &DemoArgs, p: &Progress, out: &mut dyn Write) -> Result<serde_json::Value> {
    let (rows, queries) = (a.rows as usize, a.queries as usize);
    let t = Instant::now();
    let sp = p.spinner(&format!("generating {} items", rows));
    let cat = Catalogue::generate(rows, 42);
    sp.finish_and_clear();
    if let Some(dir) = &a.export {
        export(dir, &cat, out)?;
        return Ok(serde_json::json!({ "exported": dir }));
    }
    say!(
        out,
        "generated {} items in {}: {CATEGORIES} Zipf-skewed categories, log-normal prices, {:.0}% without statistics yet",
        cat.len(),
        dur(t.elapsed()),
        100.0 * cat.ctr_1d.iter().filter(|x| x.is_none()).count() as f64 / cat.len() as f64
    );
    let tmp;
    let dir: PathBuf = match &a.dir {
        Some(d) => {
            super::build::refuse_existing_store(d, "demo --dir")?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir().map_err(|e| {
                ToolError::io("create temporary directory", &std::env::temp_dir(), e)
            })?;
            tmp.path().join("demo.vstore")
        }
    };
    let key = format!("{SPACE}@{VERSION}");
    let mut w = build(&dir, &cat, &key, p, out)?;
    add_bundle(&mut w, &key, out)?;
    let s2 = fresh_items(&mut w, &key, out)?;
    update_stats(&mut w, &cat, &s2, &dir, out)?;
    drop(w);
    let store = Store::open(&dir)?;
    let latency = run_queries(&store, &cat, &key, queries, p, out)?;
    refuse_skew(&store.snapshot(), &cat, out)?;
    verify(&store, out)?;
    if a.dir.is_some() {
        say!(
            out,
            "the store is kept in {}; try `vstore-tool inspect {}`",
            dir.display(),
            dir.display()
        );
    }
    let snap = store.snapshot();
    Ok(serde_json::json!({
        "store": a.dir,
        "snapshot": snap.number(),
        "items": snap.len(),
        "queries_per_kind": queries,
        "candidates": CANDIDATES,
        "k": K,
        "latency_us": latency,
        "kernel_level": vstore::kernel_level(),
        "verified": true,
    }))
}

/// 1. Build: profile, statistics and f16 embeddings, one publish.
fn build(
    dir: &Path,
    cat: &Catalogue,
    key: &str,
    p: &Progress,
    out: &mut dyn Write,
) -> Result<Writer> {
    let schema = Schema::new()
        .categorical("category", 0)
        .categorical("brand", 0)
        .numeric("price", 0.0)
        .stat("ctr_1d", 0.0)
        .stat("impressions_7d", 0.0)
        .embedding(SPACE, VERSION, DIM as u32, Dtype::F16);
    let t = Instant::now();
    let sp = p.spinner("writing the store");
    let mut w = Writer::create(dir, schema)?;
    let taken = w.remove_leftovers()?;
    super::build::report_taken_back(out, dir, &taken)?;
    let mut tx = w.begin();
    tx.add_items(
        ItemBatch::new(cat.ids.clone())
            .categorical("category", cat.category.clone())
            .categorical_opt("brand", cat.brand.clone())
            .numeric_opt("price", cat.price.clone())
            .stat_opt("ctr_1d", cat.ctr_1d.clone())
            .stat_opt("impressions_7d", cat.impressions_7d.clone())
            .embedding(key, cat.vectors.clone()),
    )?;
    tx.set_metadata("source", "vstore-tool demo")?;
    let s1 = tx.commit()?;
    sp.finish_and_clear();
    let size1: u64 = s1.files().iter().map(|f| file_len(dir, f)).sum();
    say!(
        out,
        "snapshot {}: built {} in {} ({} items, {key} as f16 x {DIM}, {})",
        s1.number(),
        dir.display(),
        dur(t.elapsed()),
        s1.len(),
        bytes(size1)
    );
    Ok(w)
}

/// 2. The three-tower bundle, validated against the snapshot.
fn add_bundle(w: &mut Writer, key: &str, out: &mut dyn Write) -> Result<Arc<Snapshot>> {
    let (json, weights) = synth::bundle(SPACE, VERSION);
    let t = Instant::now();
    let mut tx = w.begin();
    tx.add_model(&json, &weights)?;
    let s2 = tx.commit()?;
    let m = s2.model(key)?;
    say!(
        out,
        "snapshot {}: added a three-tower bundle for {key} in {} (heads [{}], {} MACs per item)",
        s2.number(),
        dur(t.elapsed()),
        m.head_names().join(", "),
        m.macs_per_item()
    );
    Ok(s2)
}

/// Fresh items the demo adds without vectors.
const FRESH: usize = 2000;

/// 2b. The item tower, and fresh items without vectors: the store computes
/// their vectors from their profile in the same publish.
fn fresh_items(w: &mut Writer, key: &str, out: &mut dyn Write) -> Result<Arc<Snapshot>> {
    let (json, weights) = synth::item_tower_bundle(SPACE, VERSION);
    let fresh = Catalogue::fresh(FRESH, 4242);
    let t = Instant::now();
    let mut tx = w.begin();
    tx.add_model(&json, &weights)?;
    tx.add_items(
        ItemBatch::new(fresh.ids.clone())
            .categorical("category", fresh.category.clone())
            .categorical_opt("brand", fresh.brand.clone())
            .numeric_opt("price", fresh.price.clone()),
    )?;
    let s = tx.commit()?;
    say!(
        out,
        "snapshot {}: added an item tower for {key} and {} fresh items without vectors in {}: \
         {} vectors computed from their profiles ({})",
        s.number(),
        fresh.len(),
        dur(t.elapsed()),
        s.computed_count(key)?,
        s.item_tower_summary(key).unwrap_or_default()
    );
    Ok(s)
}

/// 3. A statistics refresh of 10% of the items: only statistics files change.
fn update_stats(
    w: &mut Writer,
    cat: &Catalogue,
    s2: &Snapshot,
    dir: &Path,
    out: &mut dyn Write,
) -> Result<()> {
    let mut r = Rng(7);
    let hot: Vec<u64> = cat
        .ids
        .iter()
        .copied()
        .filter(|_| r.uniform() < 0.1)
        .collect();
    let ctr: Vec<f32> = hot.iter().map(|_| (r.uniform() * 0.1) as f32).collect();
    let t = Instant::now();
    let mut tx = w.begin();
    tx.update_stats(ItemBatch::new(hot.clone()).stat("ctr_1d", ctr))?;
    let s3 = tx.commit()?;
    let old: HashSet<String> = s2.files().into_iter().collect();
    let new: Vec<String> = s3
        .files()
        .into_iter()
        .filter(|f| !old.contains(f))
        .collect();
    say!(
        out,
        "snapshot {}: refreshed ctr_1d of {} items in {}: wrote {} file(s), {}; the rest shared",
        s3.number(),
        hot.len(),
        dur(t.elapsed()),
        new.len(),
        bytes(new.iter().map(|f| file_len(dir, f)).sum())
    );
    Ok(())
}

/// 4. Queries on the newest snapshot, as a ranking service would run them.
fn run_queries(
    store: &Store,
    cat: &Catalogue,
    key: &str,
    queries: usize,
    p: &Progress,
    out: &mut dyn Write,
) -> Result<serde_json::Value> {
    let snap = store.snapshot();
    let mut scratch = Scratch::default();
    let mut lat2 = Vec::with_capacity(queries);
    let mut lat3 = Vec::with_capacity(queries);
    let (mut stages2, mut stages3) = (Vec::with_capacity(queries), Vec::with_capacity(queries));
    let mut fav_share = 0.0;
    let exclude = Filter::not_in("brand", [0]);
    let mut last = None;
    let sp = p.bar(queries as u64, "queries");
    for q in 0..queries as u64 {
        let (fav, user) = synth::user_vector(q);
        let cands = candidates(cat, fav, q);
        let (dense, by_cat) = synth::user_inputs(q);
        let inputs = UserInputs::new().dense("user_stats", dense).by_item(
            "user_category_ctr",
            by_cat.iter().map(|&(c, v)| (c, vec![v])),
        );
        let q2 = Query::ids(key, &user, &cands, K).filter(&exclude);
        let t = Instant::now();
        let r2 = snap.query_with(&q2, &mut scratch)?;
        lat2.push(t.elapsed());
        stages2.push(r2.timings);
        let q3 = Query::ids(key, &user, &cands, K)
            .filter(&exclude)
            .three_tower(&inputs)
            .with_heads();
        let t = Instant::now();
        let r3 = snap.query_with(&q3, &mut scratch)?;
        lat3.push(t.elapsed());
        stages3.push(r3.timings);
        let in_fav = r2
            .hits
            .iter()
            .filter(|h| snap.get_categorical(h.id, "category").ok().flatten() == Some(fav))
            .count();
        fav_share += in_fav as f64 / r2.hits.len().max(1) as f64;
        last = Some((fav, r2, r3));
        sp.inc(1);
    }
    sp.finish_and_clear();
    let (fav, r2, r3) = last.expect("at least one query");
    say!(
        out,
        "\nqueries on snapshot {}: {CANDIDATES} candidates each (1% unknown ids), top {K}, brand != 0, {} queries per kind, one thread:",
        snap.number(),
        queries
    );
    let mut t = TextTable::new(&["query", "p50", "p90", "p99", "max"]);
    let mut latency = serde_json::Map::new();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mut split = Vec::new();
    for (name, l, stages) in [
        ("two-tower", &mut lat2, &stages2),
        ("three-tower", &mut lat3, &stages3),
    ] {
        l.sort();
        let stages = super::query::median_stages(stages);
        let shown: Vec<String> = (stages.iter())
            .filter(|(n, d)| *n != "total" && !d.is_zero())
            .map(|(n, d)| format!("{n} {}", dur(*d)))
            .collect();
        split.push(format!("  {name} stages (medians): {}", shown.join(", ")));
        latency.insert(
            name.replace('-', "_"),
            serde_json::json!({
                "p50": us(pct(l, 50)),
                "p90": us(pct(l, 90)),
                "p99": us(pct(l, 99)),
                "max": us(l[l.len() - 1]),
                "stages": stages
                    .iter()
                    .map(|(n, d)| (n.to_string(), serde_json::json!(us(*d))))
                    .collect::<serde_json::Map<_, _>>(),
            }),
        );
        t.row(vec![
            name.to_string(),
            dur(pct(l, 50)),
            dur(pct(l, 90)),
            dur(pct(l, 99)),
            dur(l[l.len() - 1]),
        ]);
    }
    t.print(out, 2)?;
    for line in split {
        say!(out, "{line}");
    }
    say!(
        out,
        "  kernels: {} (the CPU's best; VSTORE_KERNEL_LEVEL lowers it)",
        vstore::kernel_level()
    );
    say!(
        out,
        "  two-tower: {:.0}% of the top {K} are in the user's favourite category (vectors cluster by category)",
        100.0 * fav_share / queries as f64
    );
    let t = Instant::now();
    let full = snap.query(&Query::full_scan(key, &synth::user_vector(0).1, K))?;
    say!(
        out,
        "  full scan of {} items (two-tower): {}",
        full.scored,
        dur(t.elapsed())
    );

    say!(
        out,
        "\nlast query (favourite category {fav}): scored {}, filtered out {}, not found {}",
        r2.scored,
        r2.filtered_out,
        r2.not_found.len()
    );
    let mut t = TextTable::new(&[
        "rank",
        "two-tower id",
        "score",
        "category",
        "three-tower id",
        "fused",
        "click",
        "like",
        "watch_time",
    ]);
    for i in 0..5.min(r2.hits.len()).min(r3.hits.len()) {
        let h2 = &r2.hits[i];
        let h3 = &r3.hits[i];
        let heads = r3.heads_of(i);
        t.row(vec![
            (i + 1).to_string(),
            h2.id.to_string(),
            format!("{:.4}", h2.score),
            snap.get_categorical(h2.id, "category")?
                .map(|c| c.to_string())
                .unwrap_or_default(),
            h3.id.to_string(),
            format!("{:.4}", h3.score),
            format!("{:.4}", heads[0]),
            format!("{:.4}", heads[1]),
            format!("{:.3}", heads[2]),
        ]);
    }
    t.print(out, 2)?;
    Ok(serde_json::Value::Object(latency))
}

/// 5. Version skew is refused, naming what the snapshot holds.
fn refuse_skew(snap: &Snapshot, cat: &Catalogue, out: &mut dyn Write) -> Result<()> {
    let user = synth::user_vector(0).1;
    match snap.query(&Query::ids(
        &format!("{SPACE}@v2"),
        &user,
        &cat.ids[..cat.ids.len().min(10)],
        5,
    )) {
        Err(e) => say!(out, "\nquerying {SPACE}@v2: refused: {e}"),
        Ok(_) => {
            return Err(ToolError::Refused(
                "version skew was not refused (a bug)".into(),
            ))
        }
    }
    Ok(())
}

/// 6. Every checksum of every retained snapshot.
fn verify(store: &Store, out: &mut dyn Write) -> Result<()> {
    let t = Instant::now();
    let all = store.verify_all()?;
    let mut total = 0;
    for (n, r) in &all {
        match r {
            Ok(rep) => total += rep.bytes,
            Err(e) => {
                return Err(ToolError::Refused(format!(
                    "snapshot {n} failed to verify: {e}"
                )))
            }
        }
    }
    say!(
        out,
        "verified {} snapshots ({} checksummed) in {}",
        all.len(),
        bytes(total),
        dur(t.elapsed())
    );
    Ok(())
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

/// Candidates as retrieval would hand them over: most from the user's
/// favourite category region, the rest spread over the catalogue, 1% ids
/// the store does not hold.
fn candidates(cat: &Catalogue, fav: u32, q: u64) -> Vec<u64> {
    let mut r = Rng(0xCA4D + q);
    let n = cat.len();
    let mut out = Vec::with_capacity(CANDIDATES);
    let mut tries = 0;
    while out.len() < CANDIDATES {
        let i = (r.next_u64() % n as u64) as usize;
        tries += 1;
        if r.uniform() < 0.01 {
            out.push(1 + r.next_u64() % 1000); // unknown to the store
        } else if cat.category[i] == fav || r.uniform() < 0.5 || tries > 50 * CANDIDATES {
            out.push(cat.ids[i]);
        }
    }
    out
}

/// The files `demo --export` writes, relative to its directory.
const EXPORTED: [&str; 13] = [
    "ids.npy",
    "emb_v1.npy",
    "items.parquet",
    "stats.csv",
    "model/model.json",
    "model/weights.safetensors",
    "item_tower/model.json",
    "item_tower/weights.safetensors",
    "fresh_ids.npy",
    "fresh_items.parquet",
    "user.json",
    "user_inputs.json",
    "candidates.txt",
];

/// `demo --export DIR`: the catalogue as input files.
fn export(dir: &Path, cat: &Catalogue, out: &mut dyn Write) -> Result<()> {
    // Never into a store (its directory is the store's alone: gc would
    // see these files as leftovers).
    if vstore::Store::open_with(dir, super::one_shot()).is_ok() {
        return Err(ToolError::Refused(format!(
            "{} holds a store; demo --export writes input files into a new or empty directory",
            dir.display()
        )));
    }
    // Never over a user's files: every name it writes must be new.
    let existing: Vec<&str> = EXPORTED
        .iter()
        .copied()
        .filter(|n| dir.join(n).exists())
        .collect();
    if !existing.is_empty() {
        return Err(ToolError::Refused(format!(
            "{} already has {}; demo --export writes only new files (choose a new or empty directory)",
            dir.display(),
            existing.join(", ")
        )));
    }
    for sub in ["model", "item_tower"] {
        std::fs::create_dir_all(dir.join(sub))
            .map_err(|e| ToolError::io("create directory", dir, e))?;
    }
    let fresh = Catalogue::fresh(FRESH, 4242);
    synth::write_ids_npy(&dir.join("fresh_ids.npy"), &fresh.ids)?;
    synth::write_profile_parquet(&dir.join("fresh_items.parquet"), &fresh)?;
    synth::write_ids_npy(&dir.join("ids.npy"), &cat.ids)?;
    synth::write_matrix_npy(&dir.join("emb_v1.npy"), &cat.vectors, DIM)?;
    synth::write_profile_parquet(&dir.join("items.parquet"), cat)?;
    synth::write_stats_csv(&dir.join("stats.csv"), cat)?;
    let (json, weights) = synth::bundle(SPACE, VERSION);
    let write = |name: &str, data: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, data).map_err(|e| ToolError::io("write", &p, e))
    };
    write("model/model.json", &json)?;
    write("model/weights.safetensors", &weights)?;
    let (json, weights) = synth::item_tower_bundle(SPACE, VERSION);
    write("item_tower/model.json", &json)?;
    write("item_tower/weights.safetensors", &weights)?;
    let (fav, user) = synth::user_vector(0);
    write(
        "user.json",
        serde_json::to_string(&user).expect("floats").as_bytes(),
    )?;
    let (dense, by_cat) = synth::user_inputs(0);
    let by: serde_json::Map<String, serde_json::Value> = by_cat
        .iter()
        .map(|(c, v)| (c.to_string(), serde_json::json!([v])))
        .collect();
    write(
        "user_inputs.json",
        serde_json::to_string_pretty(&serde_json::json!({
            "dense": {"user_stats": dense},
            "by_item": {"user_category_ctr": by},
        }))
        .expect("json")
        .as_bytes(),
    )?;
    let cands: Vec<String> = candidates(cat, fav, 0).iter().map(u64::to_string).collect();
    write("candidates.txt", (cands.join("\n") + "\n").as_bytes())?;
    say!(out, "wrote {} items to {}:", cat.len(), dir.display());
    let mut t = TextTable::new(&["file", "size", "what"]);
    for (f, what) in [
        ("ids.npy", "item ids, uint64"),
        ("emb_v1.npy", "item-tower outputs, float32 rows x 64"),
        (
            "items.parquet",
            "profile: id, category, brand, price (nulls)",
        ),
        (
            "stats.csv",
            "statistics: id, ctr_1d, impressions_7d (empty = missing)",
        ),
        ("model/model.json", "three-tower bundle for prerank@v1"),
        (
            "model/weights.safetensors",
            "its weights (nn.Linear layout)",
        ),
        (
            "item_tower/model.json",
            "item-tower-only bundle for prerank@v1",
        ),
        ("item_tower/weights.safetensors", "its weights"),
        ("fresh_ids.npy", "2,000 fresh item ids (no vectors yet)"),
        (
            "fresh_items.parquet",
            "their profile: id, category, brand, price",
        ),
        ("user.json", "a user vector (prerank@v1)"),
        ("user_inputs.json", "its user-side model inputs"),
        ("candidates.txt", "2,000 candidate ids from retrieval"),
    ] {
        t.row(vec![
            f.to_string(),
            bytes(file_len(dir, f)),
            what.to_string(),
        ]);
    }
    t.print(out, 2)?;
    Ok(())
}
