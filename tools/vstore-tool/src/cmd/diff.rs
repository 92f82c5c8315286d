//! `diff`: what changed between two snapshots: embedding versions,
//! bundles, schema columns, rows, segments and files.

use std::collections::{BTreeSet, HashSet};
use std::io::Write;

use serde_json::json;

use crate::cli::DiffArgs;
use crate::error::Result;
use crate::report::{self, bytes, file_len};
use crate::say;

fn set(v: Vec<String>) -> BTreeSet<String> {
    v.into_iter().collect()
}

/// Runs `diff`.
pub fn run(a: &DiffArgs, out: &mut dyn Write) -> Result<()> {
    let store = super::open_store(&a.store)?;
    let open = |n: u64| report::open_retained(&store, n);
    let x = open(a.from)?;
    let y = match a.to {
        Some(n) => open(n)?,
        None => store.snapshot(),
    };
    // Which ids each holds: a damaged id index or deletion bitmap is an
    // error naming it, not a wrong count.
    x.check_identity()?;
    y.check_identity()?;
    let diff = |p: &BTreeSet<String>, q: &BTreeSet<String>| -> (Vec<String>, Vec<String>) {
        (
            q.difference(p).cloned().collect(),
            p.difference(q).cloned().collect(),
        )
    };
    let (emb_add, emb_rm) = diff(&set(x.embedding_keys()), &set(y.embedding_keys()));
    let (bnd_add, bnd_rm) = diff(
        &set(crate::report::bundle_labels(&x)),
        &set(crate::report::bundle_labels(&y)),
    );
    let cols = |s: &vstore::Snapshot| {
        let sc = s.schema();
        set(sc
            .profile
            .iter()
            .map(|c| format!("profile {}", c.name))
            .chain(sc.stats.iter().map(|c| format!("statistics {}", c.name)))
            .collect())
    };
    let (col_add, col_rm) = diff(&cols(&x), &cols(&y));
    // Rows: ids only in one, and ids whose row (segment, row) moved.
    let xi: HashSet<u64> = x.ids().collect();
    let yi: HashSet<u64> = y.ids().collect();
    let added = yi.difference(&xi).count();
    let removed = xi.difference(&yi).count();
    // Ids in both whose row moved to another segment (updated, or compacted).
    let seg_of =
        |s: &vstore::Snapshot, id: u64| s.lookup(id).map(|r| (s.segments()[r.segment].id(), r.row));
    let rewritten = xi
        .intersection(&yi)
        .filter(|&&id| seg_of(&x, id) != seg_of(&y, id))
        .count();
    let fx: BTreeSet<String> = x.files().into_iter().collect();
    let fy: BTreeSet<String> = y.files().into_iter().collect();
    let new_files: Vec<&String> = fy.difference(&fx).collect();
    let gone_files: Vec<&String> = fx.difference(&fy).collect();
    let shared = fx.intersection(&fy).count();
    let new_bytes: u64 = new_files.iter().map(|f| file_len(y.dir(), f)).sum();
    let v = json!({
        "from": x.number(),
        "to": y.number(),
        "embeddings_added": emb_add,
        "embeddings_removed": emb_rm,
        "bundles_added": bnd_add,
        "bundles_removed": bnd_rm,
        "columns_added": col_add,
        "columns_removed": col_rm,
        "items_from": x.len(),
        "items_to": y.len(),
        "ids_added": added,
        "ids_removed": removed,
        "ids_rewritten": rewritten,
        "segments_from": x.segments().len(),
        "segments_to": y.segments().len(),
        "files_added": new_files,
        "files_removed": gone_files,
        "files_shared": shared,
        "bytes_added": new_bytes,
    });
    if a.json {
        return report::json(out, &v);
    }
    say!(out, "snapshot {} -> {}", x.number(), y.number());
    let change = |add: &[String], rm: &[String]| match (add.is_empty(), rm.is_empty()) {
        (true, true) => "unchanged".to_string(),
        (false, true) => format!("added [{}]", add.join(", ")),
        (true, false) => format!("removed [{}]", rm.join(", ")),
        (false, false) => format!("added [{}], removed [{}]", add.join(", "), rm.join(", ")),
    };
    say!(out, "  embeddings: {}", change(&emb_add, &emb_rm));
    say!(out, "  bundles:    {}", change(&bnd_add, &bnd_rm));
    say!(out, "  columns:    {}", change(&col_add, &col_rm));
    say!(
        out,
        "  items:      {} -> {} ({added} ids added, {removed} removed, {rewritten} rewritten)",
        x.len(),
        y.len()
    );
    say!(
        out,
        "  segments:   {} -> {}",
        x.segments().len(),
        y.segments().len()
    );
    say!(
        out,
        "  files:      {} added ({}), {} removed, {shared} shared",
        new_files.len(),
        bytes(new_bytes),
        gone_files.len()
    );
    for f in &new_files {
        say!(out, "    + {f} ({})", bytes(file_len(y.dir(), f)));
    }
    for f in &gone_files {
        say!(out, "    - {f}");
    }
    Ok(())
}
