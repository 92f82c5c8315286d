//! `vstore-tool`: command-line access to vstore stores.
//!
//! Subcommands so far: `demo` (build a store from built-in data and read it
//! back), `inspect` (snapshots, schema, segments, files) and `verify`
//! (recompute every checksum). Building from user files, queries and
//! updates follow (issue 5).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use vstore::{Dtype, ItemBatch, Schema, Store, Writer};

/// Build, inspect and verify vstore stores.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a store from built-in synthetic data, publish a statistics
    /// refresh, read everything back and run filtered pre-rank queries.
    Demo {
        /// Where to build the store (default: a temporary directory, removed after).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Number of items.
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        /// Embedding column as `space@version:dim:dtype`.
        #[arg(long, default_value = "prerank@v42:64:f16")]
        embedding: String,
    },
    /// Print a store's snapshots, schema, segments and files.
    Inspect {
        /// Store directory.
        dir: PathBuf,
    },
    /// Recompute every checksum of the current snapshot and validate every manifest.
    Verify {
        /// Store directory.
        dir: PathBuf,
    },
}

fn parse_embedding(spec: &str) -> vstore::Result<vstore::EmbeddingDef> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [key, dim, dtype] = parts[..] else {
        return Err(vstore::Error::InvalidInput(format!(
            "{spec:?}: expected space@version:dim:dtype, e.g. prerank@v42:64:f16"
        )));
    };
    let (space, version) = vstore::schema::parse_key(key)?;
    let dim = dim
        .parse()
        .map_err(|_| vstore::Error::InvalidInput(format!("bad dimension {dim:?} in {spec:?}")))?;
    Ok(vstore::EmbeddingDef::new(
        space,
        version,
        dim,
        Dtype::parse(dtype)?,
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Demo {
            dir,
            rows,
            embedding,
        } => demo(dir, rows, &embedding),
        Cmd::Inspect { dir } => inspect(&dir),
        Cmd::Verify { dir } => verify(&dir),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Deterministic pseudo-random vectors in [-1, 1).
fn synthetic_vectors(ids: &[u64], dim: usize, seed: u64) -> Vec<f32> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(ids.len() * dim);
    for _ in 0..ids.len() * dim {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push((x >> 40) as f32 / (1u64 << 23) as f32 - 1.0);
    }
    out
}

fn demo(dir: Option<PathBuf>, rows: usize, embedding: &str) -> vstore::Result<()> {
    let def = parse_embedding(embedding)?;
    let key = def.key();
    let tmp;
    let dir = match dir {
        Some(d) => d,
        None => {
            tmp = tempfile::tempdir().map_err(|e| vstore::Error::Io {
                op: "create temporary directory",
                path: std::env::temp_dir(),
                source: e,
            })?;
            tmp.path().to_path_buf()
        }
    };
    let schema = Schema::new()
        .categorical("category", 0)
        .numeric("price", 0.0)
        .stat("ctr_1d", 0.0)
        .stat("impressions_7d", 0.0)
        .embedding(&def.space, &def.version, def.dim, def.dtype);
    println!(
        "building a {rows}-item store in {} ({key}, dim {}, {})",
        dir.display(),
        def.dim,
        def.dtype.name()
    );
    let ids: Vec<u64> = (0..rows as u64).map(|i| 1_000_000 + i * 7).collect();
    let vectors = synthetic_vectors(&ids, def.dim as usize, 42);
    let t = Instant::now();
    let mut w = Writer::create(&dir, schema)?;
    let mut tx = w.begin();
    tx.add_items(
        ItemBatch::new(ids.clone())
            .categorical("category", ids.iter().map(|&i| (i % 50) as u32).collect())
            .numeric_opt(
                "price",
                ids.iter()
                    .map(|&i| (i % 10 != 0).then_some((i % 997) as f32 / 10.0))
                    .collect(),
            )
            .stat(
                "ctr_1d",
                ids.iter().map(|&i| (i % 100) as f32 / 1000.0).collect(),
            )
            .stat(
                "impressions_7d",
                ids.iter().map(|&i| (i % 5000) as f32).collect(),
            )
            .embedding(&key, vectors.clone()),
    )?;
    tx.set_metadata("source", "vstore-tool demo");
    let s1 = tx.commit()?;
    println!("published snapshot {} in {:.1?}", s1.number(), t.elapsed());

    // A statistics refresh: only statistics files are written.
    let hot: Vec<u64> = ids.iter().copied().step_by(10).collect();
    let mut tx = w.begin();
    tx.update_stats(ItemBatch::new(hot.clone()).stat("ctr_1d", hot.iter().map(|_| 0.5).collect()))?;
    let t = Instant::now();
    let s2 = tx.commit()?;
    let old: std::collections::HashSet<String> = s1.files().into_iter().collect();
    let new_files = s2.files()[1..].iter().filter(|f| !old.contains(*f)).count();
    println!(
        "published snapshot {} (statistics refresh of {} items) in {:.1?}: {} new data file(s), the rest shared",
        s2.number(),
        hot.len(),
        t.elapsed(),
        new_files
    );

    let t = Instant::now();
    let store = Store::open(&dir)?;
    let snap = store.snapshot();
    println!(
        "opened snapshot {} in {:.1?}: {} items, embeddings [{}]",
        snap.number(),
        t.elapsed(),
        snap.len(),
        snap.embedding_keys().join(", ")
    );
    // Read back: every vector within the dtype's error, every statistic exact.
    let d = def.dim as usize;
    let mut max_err = 0f32;
    let t = Instant::now();
    for (i, &id) in ids.iter().enumerate() {
        let v = snap.get_embedding(id, &key)?;
        for (a, b) in v.iter().zip(&vectors[i * d..(i + 1) * d]) {
            max_err = max_err.max((a - b).abs());
        }
        let ctr = snap.get_stat(id, "ctr_1d")?.unwrap_or(f32::NAN);
        let want = if i % 10 == 0 {
            0.5
        } else {
            (id % 100) as f32 / 1000.0
        };
        if ctr != want {
            return Err(vstore::Error::InvalidInput(format!(
                "read back ctr_1d {ctr} for id {id}, wrote {want}"
            )));
        }
    }
    println!(
        "read back {} items in {:.1?}: max |vector error| {max_err:.2e} ({}), statistics exact",
        ids.len(),
        t.elapsed(),
        def.dtype.name()
    );
    // Pre-rank queries: 2,000 random candidates (some unknown), top 100,
    // excluding one category; latency percentiles over 200 queries.
    let user = synthetic_vectors(&[0], d, 7);
    let not_cat = vstore::Filter::not_in("category", [3]);
    let mut lat = Vec::new();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut last = None;
    for _ in 0..200 {
        let cands: Vec<u64> = (0..2000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x.is_multiple_of(50) {
                    1
                } else {
                    ids[(x % ids.len() as u64) as usize]
                }
            })
            .collect();
        let t = Instant::now();
        let r = snap.query(&vstore::Query::ids(&key, &user, &cands, 100).filter(&not_cat))?;
        lat.push(t.elapsed());
        last = Some(r);
    }
    lat.sort();
    let r = last.expect("ran queries");
    println!(
        "query: 2,000 candidates, top 100, category != 3: p50 {:.1?}, p99 {:.1?}; last one scored {}, filtered {}, not found {}",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        r.scored,
        r.filtered_out,
        r.not_found.len()
    );
    for h in r.hits.iter().take(3) {
        println!("  id {:>8}  score {:.4}", h.id, h.score);
    }
    let wrong = format!("{}@{}-next", def.space, def.version);
    match snap.get_embedding(ids[0], &wrong) {
        Err(e) => println!("asking for {wrong}: {e}"),
        Ok(_) => println!("unexpected: {wrong} answered"),
    }
    let t = Instant::now();
    let report = store.verify()?;
    println!(
        "verified {} files, {:.1} MiB, {} manifests in {:.1?}",
        report.files,
        report.bytes as f64 / (1 << 20) as f64,
        report.manifests,
        t.elapsed()
    );
    Ok(())
}

fn inspect(dir: &Path) -> vstore::Result<()> {
    let store = Store::open(dir)?;
    let snap = store.snapshot();
    println!("store {}", dir.display());
    println!("snapshots present: {:?}", store.snapshots()?);
    for (m, why) in store.skipped_manifests() {
        println!("skipped manifest {m}: {why}");
    }
    let age = snap.created().elapsed().map(|d| d.as_secs()).unwrap_or(0);
    println!(
        "current snapshot {} (parent {:?}, published {age} s ago), {} live items",
        snap.number(),
        snap.parent(),
        snap.len()
    );
    let schema = snap.schema();
    for c in &schema.profile {
        println!("  profile    {:<24} {:?}", c.name, c.kind);
    }
    for c in &schema.stats {
        println!("  statistics {:<24} {:?}", c.name, c.kind);
    }
    for e in &schema.embeddings {
        println!(
            "  embedding  {:<24} dim {} {} (row stride {} B)",
            e.key(),
            e.dim,
            e.dtype.name(),
            e.dtype.row_stride(e.dim)
        );
    }
    for (k, v) in snap.metadata_entries() {
        println!("  metadata   {k} = {v}");
    }
    for s in snap.segments() {
        println!(
            "  segment {}: {} rows, {} live",
            s.id(),
            s.rows(),
            s.live_rows()
        );
    }
    for f in snap.files() {
        let len = std::fs::metadata(dir.join(&f))
            .map(|m| m.len())
            .unwrap_or(0);
        println!("  file {f} ({len} B)");
    }
    Ok(())
}

fn verify(dir: &Path) -> vstore::Result<()> {
    let t = Instant::now();
    let store = Store::open(dir)?;
    let r = store.verify()?;
    println!(
        "ok: snapshot {}: {} files, {} bytes checksummed, {} manifests valid ({:.1?})",
        r.snapshot,
        r.files,
        r.bytes,
        r.manifests,
        t.elapsed()
    );
    Ok(())
}
