//! `verify`: every checksum of every retained snapshot, each snapshot
//! pinned and checked on its own (a file shared by several snapshots is
//! read once), so a damaged newest snapshot does not keep the older ones
//! from being checked. Exit code 0 only if all are clean.

use std::io::Write;
use std::time::Instant;

use serde_json::json;

use crate::cli::VerifyArgs;
use crate::error::{Result, ToolError};
use crate::progress::Progress;
use crate::report::{self, bytes, dur};
use crate::say;

/// Runs `verify`.
pub fn run(a: &VerifyArgs, p: &Progress, out: &mut dyn Write) -> Result<()> {
    let t = Instant::now();
    // Not Store::open: it pins the newest snapshot, and a damaged newest
    // snapshot must not keep the older ones from being checked.
    let sp = p.spinner("verifying checksums");
    let results = vstore::Store::verify_dir(&a.store)?;
    sp.finish_and_clear();
    let mut failed = 0;
    let mut rows = Vec::new();
    let (mut files, mut total) = (0usize, 0u64);
    for (n, r) in &results {
        match r {
            Ok(rep) => {
                files += rep.files;
                total += rep.bytes;
                rows.push(
                    json!({"snapshot": n, "ok": true, "files": rep.files, "bytes": rep.bytes}),
                );
            }
            Err(e) => {
                failed += 1;
                rows.push(json!({
                    "snapshot": n,
                    "ok": false,
                    "damaged": e.is_damage(),
                    "error": e.to_string(),
                }));
            }
        }
    }
    // Damaged manifests (those readers skip), as `inspect` lists them; a
    // manifest that cannot be read (a permission) is not skipped by
    // readers, who refuse it.
    let skipped: Vec<(String, String)> = results
        .iter()
        .filter_map(|(n, r)| {
            let e = r.as_ref().err().filter(|e| e.is_damage())?;
            let m = format!("MANIFEST-{n:020}");
            e.path()
                .is_some_and(|p| p.file_name().is_some_and(|f| *f == *m))
                .then(|| (m, e.to_string()))
        })
        .collect();
    // The verdict wins over a failure to write the report (a closed pipe
    // must not turn a damaged store into exit code 0).
    let written = report_results(a, out, &results, &rows, &skipped, failed, files, total, t);
    if failed > 0 {
        return Err(ToolError::VerifyFailed {
            failed,
            checked: results.len(),
        });
    }
    written
}

#[allow(clippy::too_many_arguments)]
fn report_results(
    a: &VerifyArgs,
    out: &mut dyn Write,
    results: &[(u64, vstore::Result<vstore::VerifyReport>)],
    rows: &[serde_json::Value],
    skipped: &[(String, String)],
    failed: usize,
    files: usize,
    total: u64,
    t: Instant,
) -> Result<()> {
    if a.json {
        report::json(
            out,
            &json!({
                "store": a.store.display().to_string(),
                "clean": failed == 0,
                "snapshots": rows,
                "skipped_manifests": skipped.iter().map(|(m, w)| json!({"manifest": m, "why": w})).collect::<Vec<_>>(),
            }),
        )?;
    } else {
        for (n, r) in results {
            match r {
                Ok(rep) => say!(
                    out,
                    "snapshot {n}: ok ({} files, {} checksummed; files shared with an earlier snapshot are read once)",
                    rep.files,
                    bytes(rep.bytes)
                ),
                Err(e) if e.is_damage() => say!(out, "snapshot {n}: DAMAGED: {e}"),
                Err(e) => say!(
                    out,
                    "snapshot {n}: NOT CHECKED: {e} (it cannot be read, which is not damage: \
                     readers refuse it too)"
                ),
            }
        }
        for (m, _) in skipped {
            say!(
                out,
                "manifest {m} is damaged: readers skip its snapshot and fall back to an older one"
            );
        }
        if failed == 0 {
            say!(
                out,
                "clean: {} snapshot(s), {files} file references, {} checksummed in {}",
                results.len(),
                bytes(total),
                dur(t.elapsed())
            );
        }
    }
    Ok(())
}
