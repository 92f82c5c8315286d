//! `recover`: explicit steps that give data up, each behind its own flag.

use std::io::Write;

use vstore::Writer;

use crate::cli::RecoverArgs;
use crate::error::Result;
use crate::say;

/// Runs `recover`.
pub fn run(a: &RecoverArgs, out: &mut dyn Write) -> Result<()> {
    debug_assert!(a.set_aside_damaged);
    let moved = Writer::set_aside_damaged_snapshots(&a.store)?;
    if moved.is_empty() {
        say!(
            out,
            "the newest snapshot is intact (every file checksummed); nothing set aside"
        );
        return Ok(());
    }
    for (p, why) in &moved {
        say!(
            out,
            "set aside {} ({why}); its snapshot is given up, and the next gc collects the files \
             only it used",
            p.display()
        );
    }
    let store = vstore::Store::open_with(&a.store, super::one_shot())?;
    say!(
        out,
        "the newest snapshot is now {}",
        store.snapshot().number()
    );
    Ok(())
}
