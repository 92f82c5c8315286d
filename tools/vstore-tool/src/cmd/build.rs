//! `build`: a new store from `.npy` ids and embeddings, Parquet/CSV tables
//! and an optional model bundle, published as snapshot 1.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use vstore::{ItemBatch, Schema, Store, Writer};

use crate::cli::BuildArgs;
use crate::cmd::model::{parse_precompute, read_bundle};
use crate::error::{Context, Result, ToolError};
use crate::inputs::{
    add_table_columns, load_table, parse_column_spec, parse_dtype, parse_embedding_arg, read_items,
    resolve_new, Group, Kind,
};
use crate::progress::Progress;
use crate::report;
use crate::say;

/// Runs `build`.
pub fn run(a: &BuildArgs, p: &Progress, out: &mut dyn Write) -> Result<()> {
    let default_dtype = parse_dtype(&a.dtype)?;
    let embs = a
        .embeddings
        .iter()
        .map(|s| parse_embedding_arg(s))
        .collect::<Result<Vec<_>>>()?;
    let specs = a
        .columns
        .iter()
        .map(|s| parse_column_spec(s))
        .collect::<Result<Vec<_>>>()?;
    // One setting per column and key: a second would silently override
    // (or be overridden by) the first.
    for (i, c) in specs.iter().enumerate() {
        if specs[..i].iter().any(|o| o.name == c.name) {
            return Err(ToolError::Usage(format!(
                "--column {:?} is given twice (one --column per column)",
                c.name
            )));
        }
    }
    let metadata = a
        .metadata
        .iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                ToolError::Usage(format!("--metadata {kv:?}: expected KEY=VALUE"))
            })?;
            vstore::check_metadata_key(k)
                .map_err(|e| ToolError::Usage(format!("--metadata {kv:?}: {e}")))?;
            Ok((k, v))
        })
        .collect::<Result<Vec<_>>>()?;
    for (i, (k, _)) in metadata.iter().enumerate() {
        if metadata[..i].iter().any(|(o, _)| o == k) {
            return Err(ToolError::Usage(format!(
                "--metadata {k:?} is given twice (one value per key)"
            )));
        }
    }
    let precompute = a.precompute.as_deref().map(parse_precompute).transpose()?;
    refuse_existing_store(&a.store, "build")?;

    let mut items = read_items(&a.ids, &embs, p)?;
    let profile = match &a.tables.profile {
        Some(t) => Some(load_table(
            t,
            &a.tables.id_column,
            &a.tables.skip_columns,
            p,
        )?),
        None => None,
    };
    let stats = match &a.tables.stats {
        Some(t) => Some(load_table(
            t,
            &a.tables.id_column,
            &a.tables.skip_columns,
            p,
        )?),
        None => None,
    };
    for s in &specs {
        let found = [&profile, &stats].iter().any(|t| {
            t.as_ref()
                .is_some_and(|t| t.columns.iter().any(|c| c.name == s.name))
        });
        if !found {
            return Err(ToolError::Refused(format!(
                "--column {}: no such column in the --profile or --stats table",
                s.name
            )));
        }
    }

    // The schema: profile and statistics columns, then embeddings.
    let mut schema = Schema::new();
    // The ids move into the batch (not copied: 80 MB at 10M items).
    let mut batch = ItemBatch::new(std::mem::take(&mut items.ids));
    for (table, group) in [(&profile, Group::Profile), (&stats, Group::Stats)] {
        let Some(table) = table else { continue };
        let cols = resolve_new(table, group, &specs)?;
        for c in &cols {
            schema = match c.kind {
                Kind::Categorical => schema.categorical(&c.name, c.default as u32),
                Kind::Numeric => schema.numeric(&c.name, c.default as f32),
                Kind::Stat => schema.stat(&c.name, c.default as f32),
            };
        }
        batch = add_table_columns(batch, &items.ids_path, table, &cols)?;
    }
    for (e, dim, _) in &items.vectors {
        let (space, version) = vstore::parse_key(&e.key)?;
        let dim = u32::try_from(*dim)
            .map_err(|_| ToolError::input(&e.path, format!("dimension {dim} is too large")))?;
        schema = schema.embedding(space, version, dim, e.dtype.unwrap_or(default_dtype));
    }
    let bundles = read_bundles(a)?;
    schema = computed_versions(schema, &bundles, &items.vectors, default_dtype)?;
    if schema.embeddings.is_empty() {
        return Err(ToolError::Usage(
            "no embedding version: give --embedding KEY=FILE.npy, or an item tower \
             (--item-tower DIR, or a --model that carries one) to compute a version's vectors"
                .into(),
        ));
    }
    schema.validate().map_err(|e| {
        ToolError::Refused(format!(
            "the tables and embeddings give an invalid schema: {e}"
        ))
    })?;
    for (e, _, v) in items.vectors {
        batch = batch.embedding(&e.key, v);
    }
    // Bundles are validated against the schema before anything is written.
    for b in &bundles {
        vstore::Bundle::load(&b.json, &b.weights, &schema)
            .context(|| format!("bundle {}", b.dir.display()))?;
    }

    let created = Created::before(&a.store);
    let t = Instant::now();
    let r = (|| -> Result<std::sync::Arc<vstore::Snapshot>> {
        let mut w = Writer::create(&a.store, schema)?;
        // Under the lock: what an interrupted build left is taken back.
        let taken = w.remove_leftovers()?;
        report_taken_back(out, &a.store, &taken)?;
        let mut tx = w.begin();
        // Bundles first: an item tower computes vectors as items are added.
        for b in &bundles {
            let r = match precompute {
                Some(d) if b.is_model => tx.add_model_precomputed(&b.json, &b.weights, d),
                _ => tx.add_model(&b.json, &b.weights),
            };
            r.context(|| format!("bundle {}", b.dir.display()))?;
        }
        let sp = p.spinner(&format!("writing {} items", batch.len()));
        tx.add_items(batch)
            .context(|| format!("items from {}", items.ids_path.display()))?;
        tx.set_metadata("created_by", "vstore-tool build")?;
        for (k, v) in &metadata {
            tx.set_metadata(k, v)?;
        }
        let snap = super::commit(tx)?;
        sp.finish_and_clear();
        Ok(snap)
    })();
    let snap = match r {
        Ok(s) => s,
        Err(e) => {
            // Another build holds the lock: nothing here is ours to remove.
            if !matches!(e, ToolError::Store(vstore::Error::Locked { .. })) {
                created.undo(&a.store);
            }
            return Err(e);
        }
    };
    say!(out, "built store {}", a.store.display());
    report::published(out, None, &snap, t.elapsed(), a.json)?;
    Ok(())
}

/// A bundle directory given to `build`, read.
struct BundleFiles {
    dir: PathBuf,
    json: Vec<u8>,
    weights: Vec<u8>,
    header: vstore::BundleHeader,
    /// Given as `--model` (else `--item-tower`).
    is_model: bool,
}

/// Reads the `--item-tower` bundles, then the `--model` bundle.
fn read_bundles(a: &BuildArgs) -> Result<Vec<BundleFiles>> {
    let dirs = (a.item_towers.iter().map(|d| (d, false))).chain(a.model.iter().map(|d| (d, true)));
    dirs.map(|(dir, is_model)| {
        let (json, weights) = read_bundle(dir)?;
        let header =
            vstore::BundleHeader::read(&json).context(|| format!("bundle {}", dir.display()))?;
        if header.is_item_tower_only() == is_model {
            return Err(ToolError::input(
                dir,
                if is_model {
                    "is an item-tower-only bundle: give it as --item-tower"
                } else {
                    "is a three-tower bundle: give it as --model"
                },
            ));
        }
        Ok(BundleFiles {
            dir: dir.clone(),
            json,
            weights,
            header,
            is_model,
        })
    })
    .collect()
}

/// Adds to `schema` every version a bundle's item tower computes that no
/// `--embedding` gives (dimension `item_dim`, stored as `dtype`); refuses a
/// three-tower bundle for a version that has neither.
fn computed_versions(
    mut schema: Schema,
    bundles: &[BundleFiles],
    given: &[(crate::inputs::EmbeddingArg, usize, Vec<f32>)],
    dtype: vstore::Dtype,
) -> Result<Schema> {
    for b in bundles {
        let h = &b.header;
        if given.iter().any(|(e, _, _)| e.key == h.key) || schema.embedding_def(&h.key).is_some() {
            continue;
        }
        if !h.has_item_tower {
            return Err(ToolError::input(
                &b.dir,
                format!(
                    "the bundle is for {}, which no --embedding gives, and it has no item \
                     tower to compute its vectors",
                    h.key
                ),
            ));
        }
        let (space, version) = vstore::parse_key(&h.key)?;
        let dim = u32::try_from(h.item_dim)
            .map_err(|_| ToolError::input(&b.dir, "item_dim is too large"))?;
        schema = schema.embedding(space, version, dim, dtype);
    }
    Ok(schema)
}

/// `build` (and `demo --dir`, named by `cmd`) makes new stores only: `dir`
/// must be new, empty, or hold only what a build stopped before its first
/// publish left (taken back under the writer's lock).
pub(crate) fn refuse_existing_store(dir: &Path, cmd: &str) -> Result<()> {
    if dir.is_file() {
        return Err(ToolError::Refused(format!(
            "{} is a file; {cmd} needs a new or empty directory",
            dir.display()
        )));
    }
    if Store::open_with(dir, super::one_shot()).is_ok() {
        return Err(ToolError::Refused(format!(
            "{} already holds a store; use add-items, add-embedding or update-stats to change it",
            dir.display()
        )));
    }
    if dir.is_dir() {
        let names: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| ToolError::io("list", dir, e))?
            .map(|e| {
                e.map(|e| e.file_name().to_string_lossy().into_owned())
                    .map_err(|e| ToolError::io("list", dir, e))
            })
            .collect::<Result<_>>()?;
        // Nothing, or only what a build stopped before its first publish
        // leaves (data files, `.tmp` files, LOCK): the build takes those
        // back once it holds the writer's lock (`Writer::remove_leftovers`).
        let mut foreign: Vec<&String> = names
            .iter()
            .filter(|n| !vstore::is_leftover_name(n))
            .collect();
        if foreign.is_empty() {
            return Ok(());
        }
        foreign.sort();
        let shown: Vec<&str> = foreign.iter().take(5).map(|n| n.as_str()).collect();
        let more = match foreign.len() - shown.len() {
            0 => String::new(),
            k => format!(" and {k} more"),
        };
        // A distributed build planned on this new directory and never
        // committed: say which jobs and how to finish or drop them.
        let staged = if foreign.iter().any(|n| n.as_str() == "_staging") {
            let mut jobs: Vec<String> = std::fs::read_dir(dir.join("_staging"))
                .map(|l| {
                    l.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            jobs.sort();
            format!(
                "; _staging holds distributed build job(s) [{}] planned here and not committed: \
                 commit or abort them (Python: vstore.distributed.abort(path, job)), or remove {}",
                jobs.join(", "),
                dir.join("_staging").display()
            )
        } else {
            String::new()
        };
        return Err(ToolError::Refused(format!(
            "{} is not empty and not a store (it holds {}{more}); {cmd} needs a new or empty \
             directory, or one an interrupted build left (only its data files, .tmp files and \
             LOCK){staged}",
            dir.display(),
            shown.join(", ")
        )));
    }
    Ok(())
}

/// Says which files of an interrupted build were removed (nothing if none).
pub(crate) fn report_taken_back(out: &mut dyn Write, dir: &Path, taken: &[String]) -> Result<()> {
    if taken.is_empty() {
        return Ok(());
    }
    say!(
        out,
        "took back {} left by an interrupted build (no snapshot was ever published): removed {} file(s)",
        dir.display(),
        taken.len()
    );
    for f in taken {
        say!(out, "  removed {f}");
    }
    Ok(())
}

/// What existed before `build` ran, so that a failed build can remove
/// exactly what it made: the lock file, the store directory and any parent
/// directories `Writer::create` created.
struct Created {
    /// Directories that did not exist, innermost first.
    dirs: Vec<PathBuf>,
    /// Whether the lock file existed.
    lock: bool,
}

impl Created {
    fn before(dir: &Path) -> Created {
        let mut dirs = Vec::new();
        let mut d = Some(dir);
        while let Some(p) = d.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
            dirs.push(p.to_path_buf());
            d = p.parent();
        }
        Created {
            dirs,
            lock: dir.join("LOCK").exists(),
        }
    }

    fn undo(&self, dir: &Path) {
        if !self.lock {
            let _ = std::fs::remove_file(dir.join("LOCK"));
        }
        for d in &self.dirs {
            // Fails (and stops nothing) if something else appeared inside.
            let _ = std::fs::remove_dir(d);
        }
    }
}
