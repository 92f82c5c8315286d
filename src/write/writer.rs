//! The single writer of a store: opens or creates it under its lock,
//! numbers snapshots, starts transactions and compaction jobs, and offers
//! the explicit recoveries (leftovers of a build that never published, a
//! damaged newest manifest).

use super::gc::Retention;
use super::publish::sync_dir;
use super::rebase::Compaction;
use super::transaction::{SegState, Transaction, TxBundle, TxTower, View};
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::format::names;
use crate::io::fs::{Fs, StdFs};
use crate::read::snapshot::Snapshot;
use crate::read::store::{list_manifests, Store};
use crate::schema::Schema;
use crate::write::compaction::{CompactionJob, Inflight, Owned};

/// The one writer of a store (a lock file keeps others out, across processes).
///
/// See [`crate::Store`] for an example.
#[derive(Debug)]
pub struct Writer {
    pub(super) dir: PathBuf,
    pub(super) key: PathBuf,
    /// Held by the writer and by its compaction jobs and results, so that no
    /// other writer opens the store while a job owns unpublished files.
    pub(super) lock: Arc<StoreLock>,
    pub(super) schema: Schema,
    pub(super) store: Option<Store>,
    pub(super) next_snapshot: u64,
    pub(super) poisoned: Option<String>,
    pub(super) retention: Retention,
    pub(super) fs: Arc<dyn Fs>,
    /// Snapshot numbers reserved by compaction jobs still running.
    pub(super) inflight: Inflight,
    /// Segment ids below this are taken (by a compaction job's output).
    pub(super) segment_floor: u64,
    /// Segments merged away by compactions this writer published.
    pub(super) retired: HashSet<u64>,
    /// How old a distributed build's staging area must be before
    /// [`Writer::gc`] removes it.
    pub(super) staging_grace: std::time::Duration,
}

/// The default of [`Writer::set_staging_grace`]: a day.
pub const DEFAULT_STAGING_GRACE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The writer lock of a store, held while this lives (an `flock` on its
/// `LOCK` file, released when the file closes). The locks this process
/// holds are also listed by file identity, so that a second writer opened
/// by the same process is told the holder is its own.
#[derive(Debug)]
pub(crate) struct StoreLock {
    /// The locked file (`None` only while dropping: closed first, so the
    /// lock is free before the entry leaves [`HELD`]).
    file: Option<File>,
    /// The lock file's device and inode (listed in [`HELD`]).
    key: Option<(u64, u64)>,
}

/// The lock files (device, inode) whose locks this process holds.
static HELD: std::sync::Mutex<Vec<(u64, u64)>> = std::sync::Mutex::new(Vec::new());

/// The list of held locks (a panic while it was held poisons nothing it
/// guards: each change is one push or remove).
fn held() -> std::sync::MutexGuard<'static, Vec<(u64, u64)>> {
    HELD.lock().unwrap_or_else(|p| p.into_inner())
}

/// A file's device and inode.
fn file_key(f: &File) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    f.metadata().ok().map(|m| (m.dev(), m.ino()))
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        // Close (unlock) first: between the two, another thread's open
        // would otherwise see the lock held and not listed, and be told
        // "another writer" instead of "of this process".
        drop(self.file.take());
        let mut h = held();
        if let Some(i) = h.iter().position(|k| Some(*k) == self.key) {
            h.swap_remove(i);
        }
    }
}

pub(super) fn lock(dir: &Path) -> Result<StoreLock> {
    let path = dir.join(names::LOCK);
    let mut opts = File::options();
    opts.create(true).truncate(false).write(true);
    let (f, _) = crate::io::fs::open_regular(&path, opts, "open lock file").map_err(|e| match e {
        Error::Corrupt { path, what } => Error::Corrupt {
            what: format!(
                "{what}: the writer's lock file must be a regular file, so the store cannot be written until it is removed"
            ),
            path,
        },
        e => e,
    })?;
    // (No key if the file cannot be stat'ed: then no message says "this
    // process", rather than one that may be wrong.)
    let key = file_key(&f);
    match f.try_lock() {
        Ok(()) => {
            if let Some(k) = key {
                held().push(k);
            }
            Ok(StoreLock { file: Some(f), key })
        }
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked {
            path: dir.to_path_buf(),
            lock: path,
            held_here: key.is_some_and(|k| held().contains(&k)),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io("lock", &path, e)),
    }
}

/// The manifests of `dir` newer than its newest valid one (each damaged),
/// newest first, with what is wrong with each. A manifest that validates
/// but whose data files are damaged is not one of them: readers do not
/// fall back past it. Neither is an entry that is not a regular file (a
/// FIFO or directory under a manifest's name was never written by vstore,
/// so no snapshot is lost by publishing past it; `gc` skips it too).
pub(super) fn damaged_newest(dir: &Path) -> Result<Vec<(u64, String)>> {
    let mut out = Vec::new();
    for n in list_manifests(dir)?.into_iter().rev() {
        let path = dir.join(names::manifest(n));
        if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.file_type().is_file()) {
            continue;
        }
        match crate::read::store::read_manifest(dir, n) {
            Ok(_) => break,
            Err(e @ Error::Corrupt { .. }) => out.push((n, e.to_string())),
            // Collected since listing: not damage.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// [`Error::NotAStore`] if `dir` holds no manifest.
fn require_manifest(dir: &Path) -> Result<()> {
    if list_manifests(dir)?.is_empty() {
        return Err(Error::NotAStore {
            path: dir.to_path_buf(),
            why: "no manifest (MANIFEST-*) in the directory".into(),
        });
    }
    Ok(())
}

/// The snapshots of `dir` newer than its newest intact one (every file
/// verified), newest first, each with what is damaged; refused if none is
/// intact or one cannot be read for another reason than damage (see
/// [`Writer::set_aside_damaged_snapshots`]).
fn snapshots_to_give_up(dir: &Path) -> Result<Vec<(u64, String)>> {
    let mut give_up = Vec::new();
    for (n, verdict) in crate::read::store::Store::verify_dir(dir)?
        .into_iter()
        .rev()
    {
        let path = dir.join(names::manifest(n));
        // Not a manifest vstore wrote (a FIFO or directory under the
        // name): as `damaged_newest`, passed over, never renamed.
        if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.file_type().is_file()) {
            continue;
        }
        match verdict {
            Ok(_) => return Ok(give_up),
            Err(e) if e.is_damage() => give_up.push((n, e.to_string())),
            Err(e) => {
                return Err(Error::InvalidInput(format!(
                    "snapshot {n} of {} cannot be checked ({e}); that is not damage, so \
                     nothing was set aside",
                    dir.display()
                )))
            }
        }
    }
    Err(Error::InvalidInput(format!(
        "no snapshot of {} is intact ({}); nothing set aside: restore the store from a backup",
        dir.display(),
        give_up
            .last()
            .map_or("no snapshot to check".to_string(), |(n, why)| format!(
                "the oldest, {n}: {why}"
            ))
    )))
}

/// Renames each `MANIFEST-{n}` of `numbers` to `MANIFEST-{n}.damaged` (in
/// that order) and syncs the directory; returns the new paths. Refused,
/// renaming none, if one's `.damaged` name is taken.
fn set_aside(dir: &Path, numbers: &[u64]) -> Result<Vec<PathBuf>> {
    let fs = StdFs;
    let renames: Vec<(PathBuf, PathBuf)> = (numbers.iter())
        .map(|&n| {
            let from = dir.join(names::manifest(n));
            let to = dir.join(format!("{}{}", names::manifest(n), names::DAMAGED_SUFFIX));
            (from, to)
        })
        .collect();
    // Every name checked before any rename: all set aside, or none.
    if let Some((from, to)) = renames
        .iter()
        .find(|(_, to)| std::fs::symlink_metadata(to).is_ok())
    {
        return Err(Error::InvalidInput(format!(
            "cannot set {} aside: {} already exists",
            from.display(),
            to.display()
        )));
    }
    let mut out = Vec::new();
    for (from, to) in renames {
        fs.rename(&from, &to)
            .map_err(|e| Error::io("rename", &from, e))?;
        out.push(to);
    }
    if !out.is_empty() {
        sync_dir(&fs, dir)?;
    }
    Ok(out)
}

/// The directory a path's name is an entry of (`.` for a bare name).
pub(super) fn parent_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(q) if !q.as_os_str().is_empty() => q.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Creates `dir` and every missing ancestor one level at a time, outermost
/// first, fsyncing the parent of each directory it creates, so that a power
/// loss cannot take away a name on the store's path.
pub(crate) fn create_dirs(fs: &dyn Fs, dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.as_os_str().is_empty() && std::fs::symlink_metadata(d).is_err() {
        missing.push(d);
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    for d in missing.into_iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => {}
            // Created meanwhile by someone else: its parent is synced anyway.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(Error::io("create directory", d, e)),
        }
        sync_dir(fs, &parent_of(d))?;
    }
    if !dir.is_dir() {
        return Err(Error::io(
            "create directory",
            dir,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a directory",
            ),
        ));
    }
    Ok(())
}

/// Whether `name` is one a writer leaves in a store directory when it stops
/// before its first publish: a data file (`s…-g…`), a file being written
/// (`….tmp`), or the lock file. Manifests are not leftovers.
pub fn is_leftover_name(name: &str) -> bool {
    name == names::LOCK
        || names::parse_data_file(name).is_some()
        || names::parse_tmp(name).is_some()
}

/// Largest snapshot number any file in `dir` was written for.
pub(super) fn highest_tag(dir: &Path) -> Result<u64> {
    let mut max = 0;
    for e in std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))? {
        let e = e.map_err(|e| Error::io("list", dir, e))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let tag = names::parse_manifest(name)
            .or_else(|| names::parse_data_file(name))
            .or_else(|| names::parse_tmp(name))
            .or_else(|| names::parse_damaged(name));
        if let Some(t) = tag {
            max = max.max(t);
        }
    }
    Ok(max)
}

/// The number after `highest`, or an error if a file name already carries
/// the largest possible number.
pub(super) fn next_number(dir: &Path, highest: u64) -> Result<u64> {
    highest.checked_add(1).ok_or_else(|| {
        // Which name (only on this path: the listing is read again).
        let culprit = std::fs::read_dir(dir).ok().and_then(|l| {
            l.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .find(|name| {
                    let tag = names::parse_manifest(name)
                        .or_else(|| names::parse_data_file(name))
                        .or_else(|| names::parse_tmp(name))
                        .or_else(|| names::parse_damaged(name));
                    tag == Some(highest)
                })
        });
        let why = match culprit {
            Some(name) => format!(
                "{name} carries snapshot number {highest}, and no number is left after it; no \
                 store gets near it, so if that file is not one this store wrote, remove it"
            ),
            None => format!(
                "a staged build plan (in _staging) reserves snapshot number {highest}, and no \
                 number is left after it"
            ),
        };
        Error::NotAStore {
            path: dir.to_path_buf(),
            why,
        }
    })
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Writer {
    /// Creates a new store in `dir` (created if absent) with `schema`. Nothing
    /// is published until the first [`Transaction::commit`].
    pub fn create(dir: impl AsRef<Path>, schema: Schema) -> Result<Writer> {
        Self::create_with_fs(dir, schema, Arc::new(StdFs))
    }

    /// [`Writer::create`] with every write, sync, rename and unlink going
    /// through `fs` (tests inject failures this way).
    pub fn create_with_fs(
        dir: impl AsRef<Path>,
        schema: Schema,
        fs: Arc<dyn Fs>,
    ) -> Result<Writer> {
        let dir = dir.as_ref().to_path_buf();
        schema.validate()?;
        create_dirs(&*fs, &dir)?;
        let lock = lock(&dir)?;
        if !list_manifests(&dir)?.is_empty() {
            return Err(Error::InvalidInput(format!(
                "{} already holds a store; open it with Writer::open",
                dir.display()
            )));
        }
        let key = dir
            .canonicalize()
            .map_err(|e| Error::io("canonicalize", &dir, e))?;
        let (planned, segment_floor) = super::job::reservations(&dir);
        let next_snapshot = next_number(&dir, highest_tag(&dir)?.max(planned))?;
        Ok(Writer {
            dir,
            key,
            lock: Arc::new(lock),
            schema,
            store: None,
            next_snapshot,
            poisoned: None,
            retention: Retention::default(),
            fs,
            inflight: Inflight::default(),
            segment_floor,
            staging_grace: DEFAULT_STAGING_GRACE,
            retired: HashSet::new(),
        })
    }

    /// Removes what an earlier writer left in a store that never published
    /// (a build killed, or stopped by a full disk, before its first
    /// commit): data files and `.tmp` files. Call it on a writer from
    /// [`Writer::create`] before its first transaction; this writer holds
    /// the lock, so no live writer owns them. Refused if the store has a
    /// manifest (then [`Writer::gc`] collects strays). Returns the names
    /// removed, sorted; anything else in the directory is left alone, and so
    /// are the files of a distributed build job whose plan is staged.
    pub fn remove_leftovers(&mut self) -> Result<Vec<String>> {
        self.check_poisoned()?;
        if self.store.is_some() || !list_manifests(&self.dir)?.is_empty() {
            return Err(Error::InvalidInput(format!(
                "{} holds a published snapshot; its stray files are collected by gc",
                self.dir.display()
            )));
        }
        let mut removed = Vec::new();
        // Files a build commit moved in before it stopped belong to the
        // job while its plan is staged (abort_build removes them).
        let planned: Vec<u64> = (super::job::live_plans(&self.dir).iter())
            .map(|p| p.number)
            .collect();
        let list = std::fs::read_dir(&self.dir).map_err(|e| Error::io("list", &self.dir, e))?;
        for e in list {
            let e = e.map_err(|e| Error::io("list", &self.dir, e))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let of_job = planned.iter().any(|&n| super::job::carries_number(name, n));
            if name != names::LOCK && is_leftover_name(name) && !of_job {
                removed.push(name.to_string());
            }
        }
        removed.sort();
        for name in &removed {
            let path = self.dir.join(name);
            let r = self
                .fs
                .remove(&path)
                .map_err(|e| Error::io("remove", &path, e));
            self.poison(r)?;
        }
        if !removed.is_empty() {
            let r = sync_dir(&*self.fs, &self.dir);
            self.poison(r)?;
            // No manifest carried these numbers and their files are gone, so
            // numbering may start over.
            let planned = super::job::reservations(&self.dir).0;
            self.next_snapshot = next_number(&self.dir, highest_tag(&self.dir)?.max(planned))?;
        }
        Ok(removed)
    }

    /// Opens the existing store in `dir` for writing.
    pub fn open(dir: impl AsRef<Path>) -> Result<Writer> {
        Self::open_with_fs(dir, Arc::new(StdFs))
    }

    /// [`Writer::open`] through `fs` (see [`Writer::create_with_fs`]).
    pub fn open_with_fs(dir: impl AsRef<Path>, fs: Arc<dyn Fs>) -> Result<Writer> {
        let dir = dir.as_ref().to_path_buf();
        // A directory that is not a store is refused before the lock file is
        // created, so that a mistaken path is left exactly as it was.
        let store = Store::open_with(&dir, writer_open_options())?;
        let lock = lock(&dir)?;
        // Another writer may have published between the open and the lock.
        store.refresh()?;
        if let Some((n, why)) = damaged_newest(&dir)?.into_iter().next() {
            return Err(Error::DamagedManifest {
                path: dir.clone(),
                manifest: dir.join(names::manifest(n)),
                why,
                fallback: Some(store.snapshot().number()),
            });
        }
        let schema = store.snapshot().schema().clone();
        let key = dir
            .canonicalize()
            .map_err(|e| Error::io("canonicalize", &dir, e))?;
        // Distributed build jobs staged but not committed reserve a
        // snapshot number and segment ids.
        let (planned, segment_floor) = super::job::reservations(&dir);
        let next_snapshot = next_number(
            &dir,
            highest_tag(&dir)?
                .max(store.snapshot().number())
                .max(planned),
        )?;
        Ok(Writer {
            dir,
            key,
            lock: Arc::new(lock),
            schema,
            store: Some(store),
            next_snapshot,
            poisoned: None,
            retention: Retention::default(),
            fs,
            inflight: Inflight::default(),
            segment_floor,
            staging_grace: DEFAULT_STAGING_GRACE,
            retired: HashSet::new(),
        })
    }

    /// Sets aside the damaged manifests newer than the store's newest valid
    /// one, giving their snapshots up: each `MANIFEST-{n}` is renamed to
    /// `MANIFEST-{n}.damaged` (a name readers and garbage collection
    /// ignore; delete it or keep it for forensics) and the directory is
    /// synced. Returns the new paths, newest first (empty if there was
    /// nothing to set aside). This is the explicit recovery from
    /// [`Error::DamagedManifest`]: a writer opened afterwards publishes on
    /// top of the newest valid snapshot, and its `gc` collects the data
    /// files only the set-aside snapshots used. Takes the writer lock for
    /// the duration ([`Error::Locked`] if a writer holds it).
    ///
    /// ```no_run
    /// # fn main() -> vstore::Result<()> {
    /// match vstore::Writer::open("items.vstore") {
    ///     Err(vstore::Error::DamagedManifest { manifest, .. }) => {
    ///         eprintln!("giving up {}", manifest.display());
    ///         vstore::Writer::set_aside_damaged_manifests("items.vstore")?;
    ///     }
    ///     other => drop(other?),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn set_aside_damaged_manifests(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
        let dir = dir.as_ref();
        require_manifest(dir)?;
        let _lock = lock(dir)?;
        let numbers: Vec<u64> = damaged_newest(dir)?.into_iter().map(|(n, _)| n).collect();
        set_aside(dir, &numbers)
    }

    /// Gives up every snapshot newer than the store's newest *intact* one,
    /// so that it becomes the newest again: what
    /// [`Writer::set_aside_damaged_manifests`] does for damaged manifests,
    /// and also for snapshots whose manifest is sound but a file is missing,
    /// truncated or fails its checksum (which readers refuse rather than
    /// fall back past, and which [`Writer::open`], and so
    /// [`Writer::restore`], cannot open either). Every snapshot is verified
    /// (every byte of its files, as [`crate::Store::verify_dir`]); from the
    /// newest down, each damaged one's `MANIFEST-{n}` is renamed to
    /// `MANIFEST-{n}.damaged` until an intact one is met. Returns each
    /// manifest set aside (its new path) with what was damaged, newest
    /// first; empty if the newest snapshot is intact. Refused, setting
    /// nothing aside, if no snapshot is intact, or if a snapshot cannot be
    /// read for another reason than damage (a file it may not read, say:
    /// that is not damage, and giving the snapshot up would lose it for
    /// nothing). Takes the writer lock to set snapshots aside (a refusal,
    /// or nothing to do, creates no file, not even `LOCK`).
    ///
    /// ```no_run
    /// # fn main() -> vstore::Result<()> {
    /// for (manifest, why) in vstore::Writer::set_aside_damaged_snapshots("items.vstore")? {
    ///     eprintln!("gave up {} ({why})", manifest.display());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn set_aside_damaged_snapshots(dir: impl AsRef<Path>) -> Result<Vec<(PathBuf, String)>> {
        let dir = dir.as_ref();
        require_manifest(dir)?;
        // Decided first without the lock, so that a refusal (or nothing
        // to do) leaves the directory as it was, LOCK included; then again
        // under the lock, since a writer may have published meanwhile.
        if snapshots_to_give_up(dir)?.is_empty() {
            return Ok(Vec::new());
        }
        let _lock = lock(dir)?;
        let give_up = snapshots_to_give_up(dir)?;
        let numbers: Vec<u64> = give_up.iter().map(|(n, _)| *n).collect();
        let moved = set_aside(dir, &numbers)?;
        Ok(moved
            .into_iter()
            .zip(give_up.into_iter().map(|(_, why)| why))
            .collect())
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The newest published snapshot, if any.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.store.as_ref().map(Store::snapshot)
    }

    /// The schema the next transaction starts from.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Sets the retention used by [`Writer::gc`].
    pub fn set_retention(&mut self, r: Retention) {
        self.retention = r;
    }

    /// Sets how old a distributed build's staging area (`_staging/<job>`,
    /// by its plan's modification time) must be before [`Writer::gc`]
    /// removes it, job and all ([`DEFAULT_STAGING_GRACE`]: a day). A job
    /// whose staging area is gone can no longer be committed.
    pub fn set_staging_grace(&mut self, grace: std::time::Duration) {
        self.staging_grace = grace;
    }

    pub(super) fn check_poisoned(&self) -> Result<()> {
        match &self.poisoned {
            Some(cause) => Err(Error::Poisoned {
                path: self.dir.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    pub(super) fn poison<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            self.poisoned = Some(e.to_string());
        }
        r
    }

    /// Starts building the next snapshot from the newest one.
    pub fn begin(&mut self) -> Transaction<'_> {
        // The number is reserved now, so that files of an abandoned
        // transaction never collide with those of the next one.
        let number = self.next_snapshot;
        self.next_snapshot = number.saturating_add(1);
        let base = self.snapshot();
        let mut bundles = BTreeMap::new();
        let mut towers = BTreeMap::new();
        if let Some(b) = &base {
            for t in &b.towers {
                let id = t.tower.bundle_id();
                let r = (b.manifest.bundles.iter())
                    .find(|r| r.key == id)
                    .expect("a loaded bundle is in its manifest");
                towers.insert(
                    t.tower.key.clone(),
                    TxTower {
                        file: r.files[0].clone(),
                        tower: t.tower.clone(),
                    },
                );
            }
            for lm in &b.models {
                let id = lm.model.bundle_id();
                let r = (b.manifest.bundles.iter())
                    .find(|r| r.key == id)
                    .expect("a loaded bundle is in its manifest");
                let pre = lm.pre.first().map(|p| {
                    let files = lm
                        .pre
                        .iter()
                        .zip(&r.files[1..])
                        .map(|(p, f)| (p.segment, f.clone()))
                        .collect();
                    (p.def.dtype, files)
                });
                bundles.insert(
                    r.key.clone(),
                    TxBundle {
                        file: r.files[0].clone(),
                        model: lm.model.clone(),
                        pre,
                    },
                );
            }
        }
        let (segments, user_meta, next_segment_id) = match &base {
            Some(b) => (
                b.manifest
                    .segments
                    .iter()
                    .enumerate()
                    .map(|(i, m)| SegState {
                        meta: m.clone(),
                        view: View::Base(i),
                    })
                    .collect(),
                b.manifest
                    .user_meta
                    .iter()
                    // A build job's id and a restore's source name the
                    // snapshot that recorded them, not the ones after it.
                    .filter(|kv| !super::restore::is_snapshot_only_key(&kv.key))
                    .map(|kv| (kv.key.clone(), kv.value.clone()))
                    .collect(),
                b.manifest.next_segment_id,
            ),
            None => (Vec::new(), BTreeMap::new(), 0),
        };
        let next_segment_id = next_segment_id.max(self.segment_floor);
        Transaction {
            number,
            schema: self.schema.clone(),
            base,
            segments,
            user_meta,
            bundles,
            towers,
            stale: Default::default(),
            unfilled: Default::default(),
            next_segment_id,
            written: HashSet::new(),
            compacted_away: Vec::new(),
            created_unix_ms: None,
            w: self,
        }
    }

    /// Starts compacting the newest snapshot off the writer's path: returns
    /// a [`CompactionJob`] to [`run`](CompactionJob::run) on any thread
    /// while this writer goes on publishing, or `None` if there is nothing
    /// to merge (at most one segment and no deleted row). Only
    /// [`Transaction::apply_compaction`], the final publish, holds the
    /// writer. The job reserves a snapshot number for its file names and a
    /// segment id; [`Writer::gc`] leaves its files alone while it lives.
    pub fn start_compaction(&mut self) -> Result<Option<CompactionJob>> {
        self.start_compaction_with(None)
    }

    /// [`Writer::start_compaction`] if `policy` says the newest snapshot is
    /// due (see [`Compaction`]).
    pub fn start_compaction_if(&mut self, policy: &Compaction) -> Result<Option<CompactionJob>> {
        self.start_compaction_with(Some(policy))
    }

    pub(super) fn start_compaction_with(
        &mut self,
        policy: Option<&Compaction>,
    ) -> Result<Option<CompactionJob>> {
        self.check_poisoned()?;
        let Some(base) = self.snapshot() else {
            return Ok(None);
        };
        let segs = base.segments();
        let rows: usize = segs.iter().map(|s| s.rows()).sum();
        let dead = rows - segs.iter().map(|s| s.live_rows()).sum::<usize>();
        let due = match policy {
            Some(p) => p.due(segs.len(), rows, dead),
            None => segs.len() > 1 || dead > 0,
        };
        if !due {
            return Ok(None);
        }
        let segment = base.manifest.next_segment_id.max(self.segment_floor);
        if segment == u64::MAX {
            return Err(Error::InvalidInput("segment ids are exhausted".into()));
        }
        self.segment_floor = segment + 1;
        let number = self.next_snapshot;
        self.next_snapshot = number.saturating_add(1);
        self.inflight.lock().insert(number);
        Ok(Some(CompactionJob {
            base,
            segment,
            owned: Owned {
                dir: self.dir.clone(),
                fs: self.fs.clone(),
                inflight: self.inflight.clone(),
                _lock: self.lock.clone(),
                number,
                files: HashSet::new(),
            },
        }))
    }
}

/// How the writer pins its own snapshots: it rarely queries them, so it
/// leaves their id directories to the first query and reads pages only
/// when it needs them (no background prefault).
pub(super) fn writer_open_options() -> crate::read::store::OpenOptions {
    crate::read::store::OpenOptions::new()
        .prepare_id_directory(false)
        .prefault(crate::Prefault::Off)
}
