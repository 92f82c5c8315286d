//! `recover`: explicit steps that give data up, each behind its own flag.

use std::io::Write;

use vstore::Writer;

use crate::cli::RecoverArgs;
use crate::error::Result;
use crate::say;

/// Runs `recover`.
pub fn run(a: &RecoverArgs, out: &mut dyn Write) -> Result<()> {
    debug_assert!(a.set_aside_damaged);
    let moved = Writer::set_aside_damaged_manifests(&a.store)?;
    if moved.is_empty() {
        say!(
            out,
            "no damaged manifest is newer than the newest valid one; nothing set aside"
        );
    }
    for p in &moved {
        say!(
            out,
            "set aside {} (its snapshot is given up; the next gc collects the files only it used)",
            p.display()
        );
    }
    Ok(())
}
