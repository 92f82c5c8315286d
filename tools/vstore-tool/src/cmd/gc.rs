//! `gc`: remove snapshots the retention policy does not keep, then every
//! file no remaining snapshot references.

use std::io::Write;
use std::time::Duration;

use vstore::{Retention, Writer};

use crate::cli::GcArgs;
use crate::error::{Result, ToolError};
use crate::say;

/// Runs `gc`.
pub fn run(a: &GcArgs, out: &mut dyn Write) -> Result<()> {
    if a.keep_last == 0 {
        return Err(ToolError::Usage("--keep-last must be at least 1".into()));
    }
    let mut w = Writer::open(&a.store)?;
    w.set_retention(Retention {
        keep_last: a.keep_last,
        grace: Duration::from_secs(a.grace_secs),
    });
    let r = w.gc()?;
    if a.json {
        return crate::report::json(
            out,
            &serde_json::json!({
                "kept": r.kept,
                "removed_snapshots": r.removed_snapshots,
                "removed_files": r.removed_files,
                "removed_staging": r.removed_staging,
                "unreadable_manifests": r.unreadable_manifests,
                "skipped": r.skipped.iter().map(|(f, what)| serde_json::json!({"name": f, "what": what})).collect::<Vec<_>>(),
            }),
        );
    }
    say!(
        out,
        "kept snapshots {:?}; removed snapshots {:?} and {} file(s)",
        r.kept,
        r.removed_snapshots,
        r.removed_files.len()
    );
    for f in &r.removed_files {
        say!(out, "  removed {f}");
    }
    for (f, what) in &r.skipped {
        say!(
            out,
            "  skipped {f}: {what}, not a regular file; left in place (remove it by hand)"
        );
    }
    for job in &r.removed_staging {
        say!(
            out,
            "  removed the staging area of build job {job} (older than the staging grace)"
        );
    }
    for m in &r.unreadable_manifests {
        say!(
            out,
            "  unreadable manifest {m}: left in place; no data file is removed while it exists"
        );
    }
    Ok(())
}
