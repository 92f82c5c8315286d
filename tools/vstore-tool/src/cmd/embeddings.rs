//! `add-embedding` and `drop-embedding`: embedding versions side by side, for
//! rollouts.

use std::io::Write;
use std::time::Instant;

use vstore::{EmbeddingDef, Writer};

use crate::cli::{AddEmbeddingArgs, DropArgs};
use crate::cmd::model::{parse_precompute, read_bundle};
use crate::error::{Context, Result, ToolError};
use crate::inputs::{parse_dtype, parse_embedding_arg, read_items};
use crate::progress::Progress;
use crate::report;
use crate::say;

/// Runs `add-embedding`.
pub fn add(a: &AddEmbeddingArgs, p: &Progress, out: &mut dyn Write) -> Result<()> {
    let default_dtype = parse_dtype(&a.dtype)?;
    let e = parse_embedding_arg(&a.embedding)?;
    let pre = a.precompute.as_deref().map(parse_precompute).transpose()?;
    let bundle = a.model.as_deref().map(read_bundle).transpose()?;
    let tower = a.item_tower.as_deref().map(read_bundle).transpose()?;
    // Inputs are checked against the newest snapshot before the writer's
    // lock is taken (the library checks again under the lock).
    let store = super::open_store(&a.store)?;
    let snap = store.snapshot();
    // A damaged id index is an error naming it, not "not an item".
    snap.check_identity()?;
    if snap.schema().embedding_def(&e.key).is_some() {
        return Err(ToolError::Refused(format!(
            "the store already holds embedding {}; pick a new version",
            e.key
        )));
    }
    if !a.same_model_as_dropped {
        let dropped = snap.dropped_versions()?;
        if let Some((_, n)) = dropped.iter().find(|(k, _)| *k == e.key) {
            return Err(ToolError::Refused(format!(
                "embedding {} was dropped in snapshot {n}: the name belongs to the dropped \
                 model, and user vectors of it would be scored against these vectors without \
                 an error; name the new model anew (a new version or a training run id), or \
                 pass --same-model-as-dropped if these vectors come from the dropped \
                 version's model",
                e.key
            )));
        }
    }
    let items = read_items(&a.ids, std::slice::from_ref(&e), p)?;
    let (_, dim, vectors) = &items.vectors[0];
    let (space, version) = vstore::parse_key(&e.key)?;
    let dim = u32::try_from(*dim)
        .map_err(|_| ToolError::input(&e.path, format!("dimension {dim} is too large")))?;
    let def = EmbeddingDef::new(space, version, dim, e.dtype.unwrap_or(default_dtype));
    // Every id must be a live item of the store, and every live item given.
    for (i, &id) in items.ids.iter().enumerate() {
        if snap.lookup(id).is_none() {
            return Err(ToolError::input(
                &a.ids,
                format!(
                    "row {i}: id {id} is not an item of snapshot {}",
                    snap.number()
                ),
            ));
        }
    }
    // The bundles are validated against the schema with the new version.
    let mut schema = snap.schema().clone();
    schema.embeddings.push(def.clone());
    let mut has_tower = false;
    for (b, dir, what) in [
        (&bundle, &a.model, "model bundle"),
        (&tower, &a.item_tower, "item-tower bundle"),
    ] {
        let (Some((json, weights)), Some(dir)) = (b, dir) else {
            continue;
        };
        let checked = vstore::Bundle::load(json, weights, &schema)
            .context(|| format!("{what} {}", dir.display()))?;
        if checked.key() != e.key {
            return Err(ToolError::input(
                dir,
                format!(
                    "the bundle is for {}, not the version being added ({})",
                    checked.key(),
                    e.key
                ),
            ));
        }
        has_tower |= checked.has_item_tower();
    }
    let left_out = snap.len().saturating_sub(items.ids.len());
    if left_out > 0 && !has_tower {
        return Err(ToolError::input(
            &a.ids,
            format!(
                "{} ids, but snapshot {} holds {} live items: a new version needs a vector for \
                 every item, unless its item tower is given (--item-tower, or a --model that \
                 carries one) to compute the rest",
                items.ids.len(),
                snap.number(),
                snap.len()
            ),
        ));
    }
    drop((snap, store));
    let what = || {
        a.model
            .as_ref()
            .map(|d| format!("model bundle {}", d.display()))
            .unwrap_or_default()
    };

    let mut w = Writer::open(&a.store)?;
    let base = w.snapshot();
    let t = Instant::now();
    let sp = p.spinner(&format!("writing {} vectors of {}", items.ids.len(), e.key));
    let mut tx = w.begin();
    if a.same_model_as_dropped {
        tx.forget_dropped_version(&e.key)?;
    }
    tx.add_embedding(def, &items.ids, vectors)
        .context(|| format!("embedding {} from {}", e.key, e.path.display()))?;
    if let (Some((json, weights)), Some(dir)) = (&tower, &a.item_tower) {
        tx.add_model(json, weights)
            .context(|| format!("item-tower bundle {}", dir.display()))?;
    }
    if let Some((json, weights)) = &bundle {
        match pre {
            Some(d) => tx.add_model_precomputed(json, weights, d),
            None => tx.add_model(json, weights),
        }
        .context(what)?;
    }
    let snap = super::commit(tx)?;
    sp.finish_and_clear();
    say!(
        out,
        "added embedding {} ({} dims, {})",
        e.key,
        dim,
        snap.embedding_def(&e.key)?.dtype.name()
    );
    if left_out > 0 {
        say!(
            out,
            "  {} vectors given, {} computed by the version's item tower",
            items.ids.len(),
            snap.computed_count(&e.key)?
        );
    }
    report::published(out, base.as_ref(), &snap, t.elapsed(), a.json)
}

/// Runs `drop-embedding`.
pub fn drop_embedding(a: &DropArgs, out: &mut dyn Write) -> Result<()> {
    // Checked against a pinned snapshot before the writer's lock is taken,
    // with the writer's own error (the writer checks again).
    {
        let store = super::open_store(&a.store)?;
        let snap = store.snapshot();
        if snap.schema().embedding_def(&a.key).is_none() {
            return Err(vstore::Error::VersionSkew {
                snapshot: snap.number(),
                requested: a.key.clone(),
                available: snap.schema().embedding_keys(),
            }
            .into());
        }
    }
    let mut w = Writer::open(&a.store)?;
    let base = w.snapshot();
    let t = Instant::now();
    let mut tx = w.begin();
    tx.drop_embedding(&a.key)?;
    let snap = super::commit(tx)?;
    say!(
        out,
        "dropped embedding {} (its files stay until no retained snapshot needs them; see gc); \
         the store keeps the name for it: add-embedding refuses {} for other vectors",
        a.key,
        a.key
    );
    report::published(out, base.as_ref(), &snap, t.elapsed(), a.json)
}
