//! `update-stats`: overwrite statistics columns from a table; only
//! statistics files are rewritten, everything else is shared.

use std::io::Write;
use std::time::Instant;

use vstore::{ItemBatch, Writer};

use crate::cli::UpdateStatsArgs;
use crate::error::{Context, Result, ToolError};
use crate::inputs::{add_table_columns, load_table, resolve_existing, Group};
use crate::progress::Progress;
use crate::report;
use crate::say;

/// Runs `update-stats`.
pub fn run(a: &UpdateStatsArgs, p: &Progress, out: &mut dyn Write) -> Result<()> {
    let table = load_table(&a.stats, &a.id_column, &a.skip_columns, p)?;
    if table.columns.is_empty() {
        return Err(ToolError::input(
            &a.stats,
            format!(
                "no statistics columns besides the id column {:?}",
                a.id_column
            ),
        ));
    }
    if table.ids.is_empty() {
        return Err(ToolError::input(&a.stats, "no rows: nothing to refresh"));
    }
    // Checked against the newest snapshot before the writer's lock is
    // taken (the library checks again under the lock).
    let store = super::open_store(&a.store)?;
    let snap = store.snapshot();
    // A damaged id index is an error naming it, not "not an item".
    snap.check_identity()?;
    let cols = resolve_existing(&table, Group::Stats, snap.schema())?;
    for (r, &id) in table.ids.iter().enumerate() {
        if snap.lookup(id).is_none() {
            return Err(ToolError::input(
                &a.stats,
                format!(
                    "{}: id {id} is not an item of snapshot {}",
                    table.row_name(r),
                    snap.number()
                ),
            ));
        }
    }
    drop((snap, store));
    let batch = add_table_columns(ItemBatch::new(table.ids.clone()), &a.stats, &table, &cols)?;
    let mut w = Writer::open(&a.store)?;
    let base = w.snapshot();
    let t = Instant::now();
    let sp = p.spinner(&format!("refreshing {} items", table.ids.len()));
    let mut tx = w.begin();
    tx.update_stats(batch)
        .context(|| format!("statistics from {}", a.stats.display()))?;
    let snap = super::commit(tx)?;
    sp.finish_and_clear();
    let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
    say!(
        out,
        "refreshed [{}] for {} items",
        names.join(", "),
        table.ids.len()
    );
    report::published(out, base.as_ref(), &snap, t.elapsed(), a.json)
}
