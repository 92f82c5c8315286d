//! The latency guard: after [`crate::Store::open`] (and after a
//! [`crate::Store::refresh`] that pins a new snapshot), a background thread
//! faults in the pages queries read, so that the first queries after an
//! open with a cold page cache do not each wait on the disk, while `open`
//! itself stays O(1) in the store's size.
//!
//! The thread reads in this order, 2 MiB at a time:
//!
//! 1. each segment's id index and deletion bitmap, then checksums them
//!    (every query checksums them before it relies on them, once per
//!    mapped file; a query that arrives meanwhile waits for that check
//!    instead of repeating it);
//! 2. for a snapshot of several segments, builds its id directory (queries
//!    that come before it is ready look ids up segment by segment, with the
//!    same results);
//! 3. the embedding rows, the precomputed first-layer rows of model
//!    bundles, the profile and statistics columns, the bundle files;
//! 4. then checksums those files (crc32fast, from memory: a fraction of
//!    the time the faulting took). A damaged file marks the snapshot:
//!    from then on its queries and reads are [`crate::Error::Corrupt`]
//!    naming the file (as verification would say), and
//!    [`PrefaultProgress::damage`] says so; so a damaged byte in the data
//!    is served at most until the thread reaches it, not until someone
//!    runs `verify`.
//!
//! Files a snapshot shares with one prefaulted before are skipped. Files
//! beyond what the machine has available (`MemAvailable` in
//! `/proc/meminfo` when the thread starts, or, in a memory-limited cgroup
//! (v1 or v2), the limit less the cgroup's usage if that is less) are left
//! to be read on demand,
//! so that prefaulting a store larger than memory does not evict what the
//! queries have just read; the id indexes and deletion bitmaps are always
//! read. The thread holds the snapshot only weakly: once nothing else holds
//! it (the store has moved on to a newer snapshot, and no query pins it),
//! the thread stops at the next chunk. Dropping the `Store` stops its
//! threads and waits for them to let go (at most a chunk), so that the
//! files only it held are unmapped when the drop returns, as without a
//! prefault.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::format::container::Container;
use crate::read::snapshot::Snapshot;

/// Whether a store faults in the pages queries read after it pins a
/// snapshot (see [`crate::OpenOptions::prefault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Prefault {
    /// Pages are read from the file when a query first touches them.
    Off,
    /// A background thread started by [`crate::Store::open`] and
    /// [`crate::Store::refresh`] faults them in, most needed first, builds
    /// the id directory, then checksums what it faulted in (a damaged file
    /// makes the snapshot's queries [`crate::Error::Corrupt`]); the
    /// default.
    #[default]
    Background,
}

/// How far a background prefault has got ([`crate::Store::prefault_progress`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PrefaultProgress {
    /// The snapshot being prefaulted.
    pub snapshot: u64,
    /// Bytes of the files the thread set out to fault in.
    pub bytes_total: u64,
    /// Bytes faulted in so far.
    pub bytes_done: u64,
    /// Bytes left to be read on demand because they did not fit in the
    /// memory available when the thread started.
    pub bytes_skipped: u64,
    /// The thread has ended (all faulted in, or stopped).
    pub finished: bool,
    /// The thread ended early because nothing held the snapshot any more.
    pub stopped: bool,
    /// Bytes whose checksums the thread recomputed and found intact (every
    /// file it faulted in, after all are faulted in).
    pub bytes_verified: u64,
    /// The first damaged file the checksums found (the error's message,
    /// naming the file): queries and reads of the snapshot are then that
    /// error ([`crate::Error::Corrupt`]).
    pub damage: Option<String>,
    /// Time from the thread's start to its end (or to now).
    pub elapsed: Duration,
}

/// One snapshot's background prefault: its progress, and a condition
/// variable signalled when it ends.
#[derive(Debug)]
pub(crate) struct PrefaultTask {
    progress: Mutex<PrefaultProgress>,
    ended: Condvar,
    started: Instant,
    /// Set by the `Store` when it is dropped: the thread lets go at once.
    stop: std::sync::atomic::AtomicBool,
}

impl PrefaultTask {
    /// The progress now.
    pub(crate) fn progress(&self) -> PrefaultProgress {
        let mut p = self.progress.lock().clone();
        if !p.finished {
            p.elapsed = self.started.elapsed();
        }
        p
    }

    /// Waits until the thread ends, then returns its progress.
    pub(crate) fn wait(&self) -> PrefaultProgress {
        let mut p = self.progress.lock();
        while !p.finished {
            self.ended.wait(&mut p);
        }
        p.clone()
    }

    /// Stops the thread and waits until it has let go of every file (at
    /// most one 2 MiB chunk, one 1 MiB checksum chunk or 64Ki directory
    /// rows later), so that dropping a `Store` unmaps what only it held
    /// before the drop returns, as it does without a prefault.
    pub(crate) fn stop_and_wait(&self) {
        self.stop.store(true, Ordering::Release);
        self.wait();
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn add(&self, bytes: u64) {
        self.progress.lock().bytes_done += bytes;
    }

    /// Records damage a checksum found: in the progress, and on the
    /// snapshot (the first damage found stays).
    fn damaged(&self, snap: &Weak<Snapshot>, e: &crate::error::Error) {
        let mut p = self.progress.lock();
        if p.damage.is_none() {
            p.damage = Some(e.to_string());
        }
        drop(p);
        if let (crate::error::Error::Corrupt { path, what }, Some(s)) = (e, snap.upgrade()) {
            let _ = s.damage.set((path.clone(), what.clone()));
        }
    }

    fn end(&self, stopped: bool) {
        let mut p = self.progress.lock();
        p.finished = true;
        p.stopped = stopped;
        p.elapsed = self.started.elapsed();
        self.ended.notify_all();
    }
}

/// Bytes faulted in between two checks that the snapshot is still held
/// (one extent; see `io/extents.rs`).
const CHUNK: usize = crate::io::extents::EXTENT;

/// A file to fault in and checksum.
struct Item {
    file: Weak<Container>,
}

/// Starts the background prefault of `snap` and returns its task. With
/// `directory`, the thread also builds the snapshot's id directory (the
/// caller has set `directory_pending`, which the thread clears however it
/// ends).
pub(crate) fn start(snap: &Arc<Snapshot>, directory: bool) -> Arc<PrefaultTask> {
    let mut seen = std::collections::HashSet::new();
    let mut first = Vec::new();
    let mut rest: Vec<&Arc<Container>> = Vec::new();
    let mut columns = Vec::new();
    for s in snap.segments() {
        let [identity, embeddings, scalars] = s.prefault_groups();
        first.extend(identity);
        rest.extend(embeddings);
        columns.extend(scalars);
    }
    rest.extend(
        snap.models
            .iter()
            .flat_map(|m| m.pre.iter().map(|p| &p.file)),
    );
    rest.extend(columns);
    rest.extend(snap.models.iter().map(|m| &m.file));
    rest.extend(snap.towers.iter().map(|t| &t.file));
    let mut budget = mem_available()
        .unwrap_or(u64::MAX)
        .min(cgroup_headroom().unwrap_or(u64::MAX));
    let (mut total, mut skipped) = (0u64, 0u64);
    // A file is planned unless faulted in and checksummed before (for an
    // earlier snapshot); every planned file is checksummed.
    let mut plan = |files: Vec<&Arc<Container>>, always: bool| -> Vec<Item> {
        let mut out = Vec::new();
        for f in files {
            if !seen.insert(Arc::as_ptr(f))
                || (f.prefaulted.load(Ordering::Acquire) && f.is_verified())
            {
                continue;
            }
            if !always && f.len() > budget {
                skipped += f.len();
                continue;
            }
            budget = budget.saturating_sub(f.len());
            total += f.len();
            out.push(Item {
                file: Arc::downgrade(f),
            });
        }
        out
    };
    let first = plan(first, true);
    let rest = plan(rest, false);
    let task = Arc::new(PrefaultTask {
        progress: Mutex::new(PrefaultProgress {
            snapshot: snap.number(),
            bytes_total: total,
            bytes_skipped: skipped,
            ..Default::default()
        }),
        ended: Condvar::new(),
        started: Instant::now(),
        stop: std::sync::atomic::AtomicBool::new(false),
    });
    let weak = Arc::downgrade(snap);
    let guard = Pending {
        snap: weak.clone(),
        directory,
    };
    let t = task.clone();
    let spawned = std::thread::Builder::new()
        .name("vstore-prefault".into())
        .spawn(move || {
            let guard = guard;
            let stopped = !run(&weak, &first, &rest, guard.directory, &t);
            drop(guard);
            t.end(stopped);
        });
    if spawned.is_err() {
        // No thread (the guard was dropped with the closure, clearing the
        // pending directory): pages are read on demand, as with `Off`.
        task.end(true);
    }
    task
}

/// The thread's work; false if it stopped because the snapshot was dropped.
fn run(
    snap: &Weak<Snapshot>,
    first: &[Item],
    rest: &[Item],
    directory: bool,
    task: &PrefaultTask,
) -> bool {
    for item in first {
        if !(fault_in(snap, item, task) && checksum(snap, item, task)) {
            return false;
        }
    }
    if directory {
        let Some(s) = snap.upgrade() else {
            return false;
        };
        // Held here too: go on while someone else holds the snapshot.
        let go_on = || !task.stopped() && Arc::strong_count(&s) > 1;
        // An error (a damaged id index) is the first query's to report.
        if let Ok(false) = s.build_directory_until(&go_on) {
            return false;
        }
        s.directory_pending.store(false, Ordering::Release);
    }
    // Every page first (the latency guard), then the checksums.
    rest.iter().all(|item| fault_in(snap, item, task))
        && rest.iter().all(|item| checksum(snap, item, task))
}

/// Checksums `item`'s file (unless done before) while `snap`
/// is held: a file that fails marks the snapshot damaged, so that its
/// queries and reads from then on are that error
/// ([`Snapshot::check_damage`]). False if the snapshot (or the file) was
/// dropped.
fn checksum(snap: &Weak<Snapshot>, item: &Item, task: &PrefaultTask) -> bool {
    let Some(f) = item.file.upgrade() else {
        return false;
    };
    let go_on = || !task.stopped() && snap.strong_count() > 0;
    match f.ensure_verified_until(&go_on) {
        Ok(true) => {
            task.progress.lock().bytes_verified += f.len();
            true
        }
        Ok(false) => false,
        Err(e) => {
            task.damaged(snap, &e);
            true
        }
    }
}

/// Faults `item`'s file in a chunk at a time while `snap` is held. The
/// first group's files (id indexes, deletion bitmaps) are checksummed
/// right after (see [`checksum`]). False if the snapshot (or the file) was
/// dropped.
fn fault_in(snap: &Weak<Snapshot>, item: &Item, task: &PrefaultTask) -> bool {
    let go_on = || !task.stopped() && snap.strong_count() > 0;
    let mut off = 0;
    loop {
        if !go_on() {
            return false;
        }
        let Some(f) = item.file.upgrade() else {
            return false;
        };
        let len = f.map.len();
        if off >= len {
            f.prefaulted.store(true, Ordering::Release);
            return true;
        }
        let n = CHUNK.min(len - off);
        crate::io::mmap::populate_range(&f.map, off, n);
        off += n;
        task.add(n as u64);
    }
}

/// Clears the snapshot's pending id directory when the thread ends, however
/// it ends, so that queries then build the directory themselves.
struct Pending {
    snap: Weak<Snapshot>,
    directory: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(s) = self.snap.upgrade() {
            s.directory_pending.store(false, Ordering::Release);
        }
    }
}

/// `MemAvailable` from `/proc/meminfo`, in bytes (Linux); `None` elsewhere.
fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// How much more memory this process's cgroup may use (its memory limit
/// less its usage, page cache included), if it has a limit: cgroup v2
/// (`memory.max`, `memory.current`) or v1 (`memory.limit_in_bytes`,
/// `memory.usage_in_bytes`). `None` without a limit or outside Linux.
fn cgroup_headroom() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    headroom_in(&cgroups, |p| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
}

/// [`cgroup_headroom`] from the text of `/proc/self/cgroup`, reading each
/// control file's number with `read` (`None`: absent, or `max`).
fn headroom_in(cgroups: &str, read: impl Fn(&str) -> Option<u64>) -> Option<u64> {
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = path.trim_end_matches('/');
        let (limit, usage) = if id == "0" && controllers.is_empty() {
            let d = format!("/sys/fs/cgroup{path}");
            (
                read(&format!("{d}/memory.max")),
                read(&format!("{d}/memory.current")),
            )
        } else if controllers.split(',').any(|c| c == "memory") {
            let d = format!("/sys/fs/cgroup/memory{path}");
            (
                read(&format!("{d}/memory.limit_in_bytes")),
                read(&format!("{d}/memory.usage_in_bytes")),
            )
        } else {
            continue;
        };
        if let (Some(limit), Some(usage)) = (limit, usage) {
            return Some(limit.saturating_sub(usage));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    /// The cgroup memory headroom: v2 and v1 paths, no limit (`max`, or no
    /// memory controller), and a hybrid host whose v2 hierarchy has no
    /// memory files.
    #[test]
    fn cgroup_headroom_reads_v1_and_v2_limits() {
        use super::headroom_in;
        let files = |pairs: &'static [(&'static str, u64)]| {
            move |p: &str| pairs.iter().find(|(q, _)| *q == p).map(|(_, v)| *v)
        };
        let v2 = files(&[
            ("/sys/fs/cgroup/svc/a/memory.max", 4 << 30),
            ("/sys/fs/cgroup/svc/a/memory.current", 1 << 30),
        ]);
        assert_eq!(headroom_in("0::/svc/a\n", v2), Some(3 << 30));
        let v1 = files(&[
            ("/sys/fs/cgroup/memory/job/memory.limit_in_bytes", 2 << 30),
            ("/sys/fs/cgroup/memory/job/memory.usage_in_bytes", 3 << 30),
        ]);
        let hybrid = "9:systemd:/\n4:memory:/job\n1:cpu:/\n0::/\n";
        assert_eq!(headroom_in(hybrid, v1), Some(0), "usage past the limit");
        // `max` (unparsed) or no memory files: no limit.
        assert_eq!(headroom_in("0::/\n", files(&[])), None);
        assert_eq!(headroom_in("1:cpu:/\n", v1), None);
        assert_eq!(headroom_in("garbage\n", files(&[])), None);
        // The real file parses (whatever the limit is here).
        let _ = super::cgroup_headroom();
    }

    use crate::{Dtype, ItemBatch, OpenOptions, Prefault, Query, Schema, Store, Writer};
    use std::sync::atomic::Ordering;

    /// While the background thread has yet to build the id directory,
    /// queries look ids up segment by segment, with the same answers.
    #[test]
    fn queries_before_the_directory_is_built_answer_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Schema::new().embedding("e", "v1", 4, Dtype::F32);
        let mut w = Writer::create(dir.path(), schema).unwrap();
        for part in 0..3u64 {
            let ids: Vec<u64> = (part * 1000..part * 1000 + 1500).collect();
            let v: Vec<f32> = ids
                .iter()
                .flat_map(|&i| [i as f32, 1.0, (i % 7) as f32, part as f32])
                .collect();
            let mut tx = w.begin();
            tx.upsert_items(ItemBatch::new(ids).embedding("e@v1", v))
                .unwrap();
            tx.commit().unwrap();
        }
        let store = Store::open_with(
            dir.path(),
            OpenOptions::new()
                .prefault(Prefault::Off)
                .prepare_id_directory(false),
        )
        .unwrap();
        let snap = store.snapshot();
        let cands: Vec<u64> = (0..4000).map(|i| (i * 7) % 3700).collect();
        let user = [0.001, 1.0, 0.5, 2.0];
        let q = Query::ids("e@v1", &user, &cands, 50);
        snap.directory_pending.store(true, Ordering::Release);
        let before = snap.query(&q).unwrap();
        assert!(snap.directory.get().is_none(), "the query built it");
        snap.directory_pending.store(false, Ordering::Release);
        let after = snap.query(&q).unwrap();
        assert!(snap.directory.get().is_some_and(|d| d.is_some()));
        let key = |r: &crate::QueryResult| {
            let hits: Vec<_> = r.hits.iter().map(|h| (h.id, h.score.to_bits())).collect();
            (hits, r.not_found.clone())
        };
        assert_eq!(key(&before), key(&after));
        assert_eq!(before.hits.len(), 50);
    }

    #[test]
    fn the_mlock_error_names_the_limit() {
        let e = crate::Error::Mlock {
            path: "x/f.vec".into(),
            bytes: 1 << 20,
            limit: Some(65536),
            source: std::io::Error::from_raw_os_error(libc::ENOMEM),
        };
        let s = e.to_string();
        assert!(
            s.contains("RLIMIT_MEMLOCK") && s.contains("65536") && s.contains("x/f.vec"),
            "{s}"
        );
    }
}
