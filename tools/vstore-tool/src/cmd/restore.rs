//! `restore`: publish an old snapshot's content as the newest.

use std::io::Write;

use vstore::Writer;

use crate::cli::RestoreArgs;
use crate::error::Result;
use crate::say;

/// Runs `restore`.
pub fn run(a: &RestoreArgs, out: &mut dyn Write) -> Result<()> {
    let mut w = Writer::open(&a.store)?;
    let snap = w.restore(a.snapshot)?;
    crate::report::note_landed(&snap);
    if a.json {
        let v = serde_json::json!({
            "snapshot": snap.number(),
            "restored_from": a.snapshot,
            "items": snap.len(),
        });
        say!(out, "{v}");
    } else {
        say!(
            out,
            "published snapshot {} with the content of snapshot {} ({} items)",
            snap.number(),
            a.snapshot,
            snap.len()
        );
    }
    Ok(())
}
