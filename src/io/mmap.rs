//! The one place that maps files into memory.
//!
//! Every file vstore maps is immutable once published: the writer creates it
//! under a fresh name, syncs it, and never writes, truncates or renames it
//! afterwards (garbage collection only unlinks names; on POSIX a mapping
//! outlives its name). That contract is what makes the read-only mapping
//! below sound.

use std::fs::File;
use std::path::Path;

use memmap2::{Mmap, MmapOptions};

use crate::error::{Error, Result};

/// Maps the whole of `file` (already opened read-only, of length `len` > 0).
/// With `populate`, every page is faulted in at map time so that later
/// reads never take a page fault (a latency choice; see `OpenOptions`).
///
/// On Linux, a mapping of at least one huge page is advised
/// `MADV_HUGEPAGE` before anything is read through it, so that pages not
/// yet cached are read ahead into 2 MiB folios and mapped as huge pages
/// (see `extents.rs` for the pages written by this library). Queries read
/// rows at random, and a huge-page TLB entry spares each read a page walk.
pub(crate) fn map_readonly(file: &File, path: &Path, len: u64, populate: bool) -> Result<Mmap> {
    let len = usize::try_from(len).map_err(|_| {
        Error::corrupt(path, format!("file length {len} exceeds the address space"))
    })?;
    let huge = cfg!(target_os = "linux") && len >= crate::io::extents::EXTENT;
    let mut opts = MmapOptions::new();
    opts.len(len);
    if populate && !huge {
        opts.populate();
    }
    // SAFETY: the mapping is read-only and the file is one of the store's
    // published files, which no vstore process ever writes, truncates or
    // rewrites after publish (see the module docs and format/FORMAT.md, "Publish
    // protocol"). `len` equals the file length just read from fstat, and every
    // offset used afterwards is checked against it. Another program that
    // truncates a store's files while they are mapped breaks that contract
    // (the process would get SIGBUS); that is documented in format/FORMAT.md and docs/PROMISES.md.
    let map = unsafe { opts.map(file) }.map_err(|e| Error::io("mmap", path, e))?;
    #[cfg(target_os = "linux")]
    if huge {
        use memmap2::Advice;
        // Advice only: a kernel without transparent huge pages refuses it,
        // and the mapping works the same with small pages.
        let _ = map.advise(Advice::HugePage);
        // MAP_POPULATE would have read ahead before the advice; populate
        // now instead (Linux 5.14+), or by touching each page.
        if populate && map.advise(Advice::PopulateRead).is_err() {
            let mut sum = 0u8;
            for off in (0..len).step_by(4096) {
                sum = sum.wrapping_add(map[off]);
            }
            std::hint::black_box(sum);
        }
    }
    Ok(map)
}
