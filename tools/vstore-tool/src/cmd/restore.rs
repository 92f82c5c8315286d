//! `restore`: publish an old snapshot's content as the newest.

use std::io::Write;

use vstore::Writer;

use crate::cli::RestoreArgs;
use crate::error::{Result, ToolError};
use crate::say;

/// Runs `restore`.
pub fn run(a: &RestoreArgs, out: &mut dyn Write) -> Result<()> {
    // What can be refused from a reader's view is refused before the
    // writer opens (which creates LOCK if the store has none): a refused
    // command leaves the store as it was, byte for byte.
    let store = super::open_store(&a.store)?;
    let newest = store.snapshot().number();
    // (With a damaged newest manifest the reader fell back: the writer's
    // own refusal, naming the manifest and `recover`, is the one to give.)
    if a.snapshot == newest && store.skipped_manifests().is_empty() {
        return Err(ToolError::Refused(format!(
            "snapshot {newest} is the newest already; nothing to restore"
        )));
    }
    let have = store.snapshots()?;
    if !have.contains(&a.snapshot) {
        return Err(ToolError::Refused(format!(
            "snapshot {} does not exist in {} (it has {have:?})",
            a.snapshot,
            a.store.display()
        )));
    }
    drop(store);
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
