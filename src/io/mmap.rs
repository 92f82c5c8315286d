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
        // now instead.
        if populate {
            populate_range(&map, 0, len);
        }
    }
    Ok(map)
}

/// Zeroed anonymous memory of `len` (> 0) bytes for an in-memory table read
/// at random (the id directory). On Linux, a table of at least one huge
/// page is advised `MADV_HUGEPAGE` before anything touches it, so that it
/// is backed by huge pages where the system allows (transparent huge pages
/// in `madvise` mode, the common default, give a plain allocation small
/// pages): each random read then spares a page walk.
pub(crate) fn anon_table(len: usize) -> Result<memmap2::MmapMut> {
    let map = memmap2::MmapMut::map_anon(len)
        .map_err(|e| Error::io("map anonymous memory for", "the id directory", e))?;
    #[cfg(target_os = "linux")]
    if len >= crate::io::extents::EXTENT {
        // Advice only, as in `map_readonly`.
        let _ = map.advise(memmap2::Advice::HugePage);
    }
    Ok(map)
}

/// Faults pages `off..off + len` of `map` into this process's page table,
/// reading them from the file first if they are not cached: with
/// `MADV_POPULATE_READ` on Linux 5.14+, else by reading one byte per page.
/// Used by the background prefault (`read/prefault.rs`) a chunk at a time.
pub(crate) fn populate_range(map: &Mmap, off: usize, len: usize) {
    let end = off.saturating_add(len).min(map.len());
    if off >= end {
        return;
    }
    #[cfg(target_os = "linux")]
    if map
        .advise_range(memmap2::Advice::PopulateRead, off, end - off)
        .is_ok()
    {
        return;
    }
    let mut sum = 0u8;
    for at in (off..end).step_by(PAGE) {
        sum = sum.wrapping_add(map[at]);
    }
    std::hint::black_box(sum);
}

/// The page size assumed when touching pages one by one (the smallest on
/// the supported targets; touching more often than needed is harmless).
const PAGE: usize = 4096;

/// Locks `map` in memory page by page as its pages are faulted in
/// (`mlock2(MLOCK_ONFAULT)` on Linux: O(1) now, each page locked when a
/// query or the background prefault first touches it; elsewhere `mlock`,
/// which faults every page in now). The kernel checks the whole length
/// against `RLIMIT_MEMLOCK` up front (unless the process has
/// `CAP_IPC_LOCK`), so a store that does not fit fails here, not later.
pub(crate) fn lock(map: &Mmap) -> std::io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mlock2` only changes the locking attribute of the pages
        // of this mapping, which lives as long as `map` (the range is
        // exactly the mapping: its start and length). It reads or writes
        // no memory of ours; unmapping the mapping later unlocks it.
        let r = unsafe {
            libc::mlock2(
                map.as_ptr() as *const libc::c_void,
                map.len(),
                libc::MLOCK_ONFAULT,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        map.lock()
    }
}

/// The soft `RLIMIT_MEMLOCK` of this process in bytes (`None`: unlimited
/// or unknown), to name in the error when [`lock`] fails.
pub(crate) fn memlock_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` into the struct it is given,
    // which is a live local of that type.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } == 0;
    #[allow(clippy::unnecessary_cast)] // `rlim_t` is not `u64` on every unix
    (ok && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur as u64)
}

/// How many pages of `map` are resident in the page cache, and how many it
/// has (`mincore`). For tests and measurements.
pub(crate) fn resident_pages(map: &Mmap) -> std::io::Result<(usize, usize)> {
    // SAFETY: `sysconf` reads a constant of the system.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(PAGE);
    let pages = map.len().div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: the range is exactly the live mapping `map` (page-aligned
    // start, as every mapping's), and `vec` has one byte per page of it,
    // which is what `mincore` writes.
    let r = unsafe {
        libc::mincore(
            map.as_ptr() as *mut libc::c_void,
            map.len(),
            vec.as_mut_ptr() as *mut _,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((vec.iter().filter(|&&b| b & 1 == 1).count(), pages))
}

/// Asks the kernel to drop `file`'s cached pages
/// (`posix_fadvise(POSIX_FADV_DONTNEED)`): the portable way for a
/// benchmark to start from a cold page cache without root. Pages that some
/// process still maps stay cached.
#[cfg(target_os = "linux")]
pub(crate) fn evict_cached(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `posix_fadvise` takes a file descriptor, which `file` keeps
    // open for the duration of the call, and touches no memory of ours.
    let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(r))
    }
}

/// Elsewhere there is no `posix_fadvise`: unsupported.
#[cfg(not(target_os = "linux"))]
pub(crate) fn evict_cached(_file: &File) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}
