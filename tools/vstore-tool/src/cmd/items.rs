//! `add-items`, `upsert-items`, `delete-items` and `compact`: live changes
//! to the item set.

use std::io::Write;
use std::time::Instant;

use vstore::{Compaction, ItemBatch, Writer};

use crate::cli::{CompactArgs, DeleteArgs, ItemsArgs};
use crate::error::{Context, Result, ToolError};
use crate::inputs::{
    add_table_columns, load_table, parse_embedding_arg, read_id_list, read_items, resolve_existing,
    Group,
};
use crate::progress::Progress;
use crate::report;
use crate::say;

/// Runs `add-items` (`replace` false) or `upsert-items` (`replace` true).
pub fn add(a: &ItemsArgs, replace: bool, p: &Progress, out: &mut dyn Write) -> Result<()> {
    let embs = a
        .embeddings
        .iter()
        .map(|s| parse_embedding_arg(s))
        .collect::<Result<Vec<_>>>()?;
    // Inputs are checked against the newest snapshot before the writer's
    // lock is taken (the library checks again under the lock).
    let store = super::open_store(&a.store)?;
    let snap = store.snapshot();
    // A damaged id index is an error naming it, not "not an item".
    snap.check_identity()?;
    let schema = snap.schema().clone();
    for e in &embs {
        let Some(def) = schema.embedding_def(&e.key) else {
            return Err(ToolError::Refused(format!(
                "embedding {} is not in the store (it holds [{}]); add a version with add-embedding",
                e.key,
                schema.embedding_keys().join(", ")
            )));
        };
        if e.dtype.is_some_and(|d| d != def.dtype) {
            return Err(ToolError::Refused(format!(
                "embedding {} is stored as {}; drop the :dtype (vectors are converted to it)",
                e.key,
                def.dtype.name()
            )));
        }
    }
    // A version with an item tower gets its vectors computed.
    let missing: Vec<String> = schema
        .embedding_keys()
        .into_iter()
        .filter(|k| !embs.iter().any(|e| &e.key == k) && !snap.has_item_tower(k))
        .collect();
    if !missing.is_empty() {
        return Err(ToolError::Refused(format!(
            "new items need vectors for every version the store holds that has no item tower; \
             missing --embedding for [{}]",
            missing.join(", ")
        )));
    }
    let computed: Vec<String> = schema
        .embedding_keys()
        .into_iter()
        .filter(|k| !embs.iter().any(|e| &e.key == k))
        .collect();
    let mut items = read_items(&a.ids, &embs, p)?;
    if items.ids.is_empty() {
        return Err(ToolError::input(&a.ids, "no ids: nothing to add"));
    }
    for (e, dim, _) in &items.vectors {
        let want = schema
            .embedding_def(&e.key)
            .map(|d| d.dim as usize)
            .unwrap_or(0);
        if *dim != want {
            return Err(ToolError::input(
                &e.path,
                format!(
                    "vectors of dimension {dim}, but {} has dimension {want}",
                    e.key
                ),
            ));
        }
    }
    if !replace {
        if let Some(i) = items.ids.iter().position(|&id| snap.lookup(id).is_some()) {
            return Err(ToolError::input(
                &a.ids,
                format!(
                    "row {i}: id {} is already an item of snapshot {} (use upsert-items to replace it)",
                    items.ids[i],
                    snap.number()
                ),
            ));
        }
    }
    let replaced = if replace {
        items_in(&snap, &items.ids)
    } else {
        0
    };
    // The ids move into the batch (a 10M-item input is 80 MB of them).
    let n = items.ids.len();
    let mut batch = ItemBatch::new(std::mem::take(&mut items.ids));
    for (path, group) in [
        (&a.tables.profile, Group::Profile),
        (&a.tables.stats, Group::Stats),
    ] {
        let Some(path) = path else { continue };
        let table = load_table(path, &a.tables.id_column, &a.tables.skip_columns, p)?;
        let cols = resolve_existing(&table, group, &schema)?;
        batch = add_table_columns(batch, &items.ids_path, &table, &cols)?;
    }
    for (e, _, v) in items.vectors {
        batch = batch.embedding(&e.key, v);
    }
    drop((snap, store));
    let mut w = Writer::open(&a.store)?;
    let base = w.snapshot();
    let t = Instant::now();
    let mut tx = w.begin();
    let what = || format!("items from {}", a.ids.display());
    let reset = batch.columns_left_out(&schema);
    if replace {
        tx.upsert_items(batch).context(what)?;
    } else {
        tx.add_items(batch).context(what)?;
    }
    let snap = super::commit(tx)?;
    // A replaced item is replaced whole: say which columns it lost.
    if replaced > 0 && !reset.is_empty() {
        say!(
            out,
            "note: replaced items are replaced whole; {} not in the inputs, so now missing \
             for them (update-stats changes statistics without replacing items)",
            reset.join(", ")
        );
    }
    say!(
        out,
        "{} {n} items as a new segment{}",
        if replace { "wrote" } else { "added" },
        if replace {
            format!(" ({replaced} replaced older rows, {} new)", n - replaced)
        } else {
            String::new()
        }
    );
    for k in &computed {
        say!(
            out,
            "  {k}: {n} vectors computed by its item tower from the profile{}",
            if a.tables.profile.is_none() {
                " (no --profile: every input read the column defaults)"
            } else {
                ""
            }
        );
    }
    report::published(out, base.as_ref(), &snap, t.elapsed(), a.json)
}

fn items_in(snap: &vstore::Snapshot, ids: &[u64]) -> usize {
    ids.iter().filter(|&&id| snap.lookup(id).is_some()).count()
}

/// Runs `delete-items`.
pub fn delete_items(a: &DeleteArgs, out: &mut dyn Write) -> Result<()> {
    let ids = read_id_list(&a.ids, &Progress::hidden())?;
    if ids.is_empty() {
        return Err(ToolError::input(&a.ids, "no ids: nothing to delete"));
    }
    let store = super::open_store(&a.store)?;
    {
        let snap = store.snapshot();
        snap.check_identity()?;
        let mut seen = std::collections::HashMap::new();
        for (i, &id) in ids.iter().enumerate() {
            if let Some(j) = seen.insert(id, i) {
                return Err(ToolError::input(
                    &a.ids,
                    format!("id {id} is listed twice (entries {j} and {i})"),
                ));
            }
            if snap.lookup(id).is_none() {
                return Err(ToolError::input(
                    &a.ids,
                    format!(
                        "entry {i}: id {id} is not an item of snapshot {}",
                        snap.number()
                    ),
                ));
            }
        }
    }
    drop(store);
    let mut w = Writer::open(&a.store)?;
    let base = w.snapshot();
    let t = Instant::now();
    let mut tx = w.begin();
    tx.delete_items(&ids)
        .context(|| format!("ids from {}", a.ids.display()))?;
    let snap = super::commit(tx)?;
    say!(out, "deleted {} items", ids.len());
    report::published(out, base.as_ref(), &snap, t.elapsed(), a.json)
}

/// Runs `compact`.
pub fn compact(a: &CompactArgs, out: &mut dyn Write) -> Result<()> {
    if !(0.0..=1.0).contains(&a.max_dead) {
        return Err(ToolError::Usage(format!(
            "--max-dead {}: a fraction in [0, 1]",
            a.max_dead
        )));
    }
    let policy = Compaction {
        max_segments: a.max_segments,
        max_dead_fraction: a.max_dead,
    };
    // Whether there is anything to do is decided on a pinned snapshot
    // before the writer's lock is taken (the writer decides again).
    {
        let store = super::open_store(&a.store)?;
        let snap = store.snapshot();
        let segs = snap.segments();
        let rows: usize = segs.iter().map(|s| s.rows()).sum();
        let live: usize = segs.iter().map(|s| s.live_rows()).sum();
        // One segment without deleted rows is as compact as it gets,
        // whatever the policy's limits.
        let compactable = !(segs.is_empty() || (segs.len() == 1 && rows == live));
        let due = compactable && (!a.if_needed || policy.due(segs.len(), rows, rows - live));
        if !due {
            say!(
                out,
                "nothing to compact: snapshot {} has {} segment(s), {} of {rows} row(s) deleted",
                snap.number(),
                segs.len(),
                rows - live
            );
            report::not_published(&snap, "nothing to compact", a.json);
            return Ok(());
        }
    }
    let mut w = Writer::open(&a.store)?;
    let base = w.snapshot();
    let t = Instant::now();
    let mut tx = w.begin();
    let did = if a.if_needed {
        tx.compact_if(&policy)?
    } else {
        tx.compact()?
    };
    if !did {
        drop(tx);
        // Checked as due above: the store changed before the lock was
        // taken (another writer compacted, or deleted rows were replaced).
        let snap = w.snapshot();
        say!(
            out,
            "nothing to compact: the store changed since it was checked (another writer published snapshot {})",
            snap.as_ref().map_or(0, |s| s.number())
        );
        if let Some(s) = &snap {
            report::not_published(s, "nothing to compact", a.json);
        }
        return Ok(());
    }
    let snap = super::commit(tx)?;
    let before = base.as_ref().map(|b| b.segments().len()).unwrap_or(0);
    say!(
        out,
        "compacted {before} segment(s) into {}",
        snap.segments().len()
    );
    report::published(out, base.as_ref(), &snap, t.elapsed(), a.json)
}
