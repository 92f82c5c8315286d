//! The single writer: builds snapshots in transactions, publishes them
//! atomically, and collects garbage.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::batch::{self, ItemBatch};
use crate::compaction::{
    merged_scalars, write_merged, write_merged_embedding, CompactedSegment, CompactionJob,
    Inflight, Owned, Part, Sink,
};
use crate::container::{ContainerWriter, Kind};
use crate::encode::{self, ScalarColumn};
use crate::error::{Error, Result};
use crate::fs::{Fs, StdFs};
use crate::meta::{
    self, Body, BundleRef, EmbeddingRef, FileRef, KeyValue, ManifestMeta, SegmentMeta,
};
use crate::model::Model;
use crate::names;
use crate::schema::{EmbeddingDef, Schema};
use crate::segment::Segment;
use crate::snapshot::Snapshot;
use crate::store::{list_manifests, read_manifest, Store};

/// Which snapshots garbage collection keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Keep the newest `keep_last` snapshots (at least 1).
    pub keep_last: usize,
    /// Also keep a snapshot until `grace` has passed since its successor was
    /// published, so that readers in other processes that listed it just
    /// before can still map it (they retry with the newest otherwise).
    pub grace: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_last: 2,
            grace: Duration::from_secs(30),
        }
    }
}

/// When [`Transaction::compact_if`] compacts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compaction {
    /// Compact when the snapshot has more segments than this.
    pub max_segments: usize,
    /// Compact when more than this fraction of rows is deleted.
    pub max_dead_fraction: f64,
}

impl Default for Compaction {
    fn default() -> Self {
        Compaction {
            max_segments: 8,
            max_dead_fraction: 0.2,
        }
    }
}

impl Compaction {
    /// Whether a snapshot of `segments` segments holding `rows` rows, `dead`
    /// of them deleted, is due for compaction.
    pub fn due(&self, segments: usize, rows: usize, dead: usize) -> bool {
        segments > self.max_segments
            || (rows > 0 && dead as f64 > self.max_dead_fraction * rows as f64)
    }
}

/// What [`Writer::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Snapshots still present after collection.
    pub kept: Vec<u64>,
    /// Snapshots whose manifests were removed.
    pub removed_snapshots: Vec<u64>,
    /// Data and temporary files removed.
    pub removed_files: Vec<String>,
    /// Manifests that failed to validate (left in place, and while any
    /// exists no data file is removed, since its references are unknown).
    pub unreadable_manifests: Vec<String>,
    /// Entries with a store file's name (manifest, data or temporary file)
    /// that are not regular files (a directory, FIFO, symlink, socket or
    /// device), each with what it is. Garbage collection never opens,
    /// removes or waits on them, and they do not stop it from collecting
    /// the rest; they are left for a person to look at.
    pub skipped: Vec<(String, String)>,
}

/// The one writer of a store (a lock file keeps others out, across processes).
///
/// See [`crate::Store`] for an example.
#[derive(Debug)]
pub struct Writer {
    dir: PathBuf,
    key: PathBuf,
    /// Held by the writer and by its compaction jobs and results, so that no
    /// other writer opens the store while a job owns unpublished files.
    lock: Arc<File>,
    schema: Schema,
    store: Option<Store>,
    next_snapshot: u64,
    poisoned: Option<String>,
    retention: Retention,
    fs: Arc<dyn Fs>,
    /// Snapshot numbers reserved by compaction jobs still running.
    inflight: Inflight,
    /// Segment ids below this are taken (by a compaction job's output).
    segment_floor: u64,
    /// Segments merged away by compactions this writer published.
    retired: HashSet<u64>,
}

fn sync_dir(fs: &dyn Fs, dir: &Path) -> Result<()> {
    fs.sync_dir(dir)
        .map_err(|e| Error::io("fsync directory", dir, e))
}

fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(names::LOCK);
    let mut opts = File::options();
    opts.create(true).truncate(false).write(true);
    let (f, _) = crate::fs::open_regular(&path, opts, "open lock file").map_err(|e| match e {
        Error::Corrupt { path, what } => Error::Corrupt {
            what: format!(
                "{what}: the writer's lock file must be a regular file, so the store cannot be written until it is removed"
            ),
            path,
        },
        e => e,
    })?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked {
            path: dir.to_path_buf(),
            lock: path,
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
fn damaged_newest(dir: &Path) -> Result<Vec<(u64, String)>> {
    let mut out = Vec::new();
    for n in list_manifests(dir)?.into_iter().rev() {
        let path = dir.join(names::manifest(n));
        if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.file_type().is_file()) {
            continue;
        }
        match crate::store::read_manifest(dir, n) {
            Ok(_) => break,
            Err(e @ Error::Corrupt { .. }) => out.push((n, e.to_string())),
            // Collected since listing: not damage.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The directory a path's name is an entry of (`.` for a bare name).
fn parent_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(q) if !q.as_os_str().is_empty() => q.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Creates `dir` and every missing ancestor one level at a time, outermost
/// first, fsyncing the parent of each directory it creates, so that a power
/// loss cannot take away a name on the store's path.
fn create_dirs(fs: &dyn Fs, dir: &Path) -> Result<()> {
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
fn highest_tag(dir: &Path) -> Result<u64> {
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
fn next_number(dir: &Path, highest: u64) -> Result<u64> {
    highest.checked_add(1).ok_or_else(|| Error::NotAStore {
        path: dir.to_path_buf(),
        why: format!("a file name carries snapshot number {highest}; no number is left"),
    })
}

fn now_ms() -> u64 {
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
        let next_snapshot = next_number(&dir, highest_tag(&dir)?)?;
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
            segment_floor: 0,
            retired: HashSet::new(),
        })
    }

    /// Removes what an earlier writer left in a store that never published
    /// (a build killed, or stopped by a full disk, before its first
    /// commit): data files and `.tmp` files. Call it on a writer from
    /// [`Writer::create`] before its first transaction; this writer holds
    /// the lock, so no live writer owns them. Refused if the store has a
    /// manifest (then [`Writer::gc`] collects strays). Returns the names
    /// removed, sorted; anything else in the directory is left alone.
    pub fn remove_leftovers(&mut self) -> Result<Vec<String>> {
        self.check_poisoned()?;
        if self.store.is_some() || !list_manifests(&self.dir)?.is_empty() {
            return Err(Error::InvalidInput(format!(
                "{} holds a published snapshot; its stray files are collected by gc",
                self.dir.display()
            )));
        }
        let mut removed = Vec::new();
        let list = std::fs::read_dir(&self.dir).map_err(|e| Error::io("list", &self.dir, e))?;
        for e in list {
            let e = e.map_err(|e| Error::io("list", &self.dir, e))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name != names::LOCK && is_leftover_name(name) {
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
            self.next_snapshot = next_number(&self.dir, highest_tag(&self.dir)?)?;
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
        let next_snapshot = next_number(&dir, highest_tag(&dir)?.max(store.snapshot().number()))?;
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
            segment_floor: 0,
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
        if list_manifests(dir)?.is_empty() {
            return Err(Error::NotAStore {
                path: dir.to_path_buf(),
                why: "no manifest (MANIFEST-*) in the directory".into(),
            });
        }
        let _lock = lock(dir)?;
        let fs = StdFs;
        let mut out = Vec::new();
        for (n, _) in damaged_newest(dir)? {
            let from = dir.join(names::manifest(n));
            let to = dir.join(format!("{}{}", names::manifest(n), names::DAMAGED_SUFFIX));
            if std::fs::symlink_metadata(&to).is_ok() {
                return Err(Error::InvalidInput(format!(
                    "cannot set {} aside: {} already exists",
                    from.display(),
                    to.display()
                )));
            }
            fs.rename(&from, &to)
                .map_err(|e| Error::io("rename", &from, e))?;
            out.push(to);
        }
        if !out.is_empty() {
            sync_dir(&fs, dir)?;
        }
        Ok(out)
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

    fn check_poisoned(&self) -> Result<()> {
        match &self.poisoned {
            Some(cause) => Err(Error::Poisoned {
                path: self.dir.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    fn poison<T>(&mut self, r: Result<T>) -> Result<T> {
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
        if let Some(b) = &base {
            for (r, lm) in b.manifest.bundles.iter().zip(&b.models) {
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

    fn start_compaction_with(
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

    /// Removes snapshots the retention policy does not keep, then every data
    /// or temporary file no remaining snapshot references.
    pub fn gc(&mut self) -> Result<GcReport> {
        // After a failed publish the newest manifest may not be durable:
        // collecting its predecessor could lose both.
        self.check_poisoned()?;
        self.gc_inner()
    }

    fn gc_inner(&mut self) -> Result<GcReport> {
        let mut report = GcReport::default();
        let list = list_manifests(&self.dir)?;
        let mut metas: Vec<(u64, Option<ManifestMeta>)> = Vec::new();
        let mut published: HashMap<u64, u64> = HashMap::new();
        for &n in &list {
            match read_manifest(&self.dir, n) {
                Ok((c, m)) => {
                    // Grace runs from when the manifest file was written (its
                    // mtime), not from the recorded creation time, which a
                    // reproducible build may set to any value.
                    let t = std::fs::metadata(&c.path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(m.created_unix_ms);
                    published.insert(n, t);
                    metas.push((n, Some(m)))
                }
                Err(e) if e.is_not_found() => {}
                Err(_) => {
                    let name = names::manifest(n);
                    if let Err(what) = crate::fs::check_regular_entry(&self.dir.join(&name)) {
                        // Not a manifest vstore wrote: it references nothing.
                        report.skipped.push((name, what.to_string()));
                        continue;
                    }
                    report.unreadable_manifests.push(name);
                    metas.push((n, None));
                }
            }
        }
        let valid: Vec<(u64, &ManifestMeta)> = metas
            .iter()
            .filter_map(|(n, m)| m.as_ref().map(|m| (*n, m)))
            .collect();
        let pinned: HashSet<u64> = crate::pins::pinned(&self.key).into_iter().collect();
        let keep_last = self.retention.keep_last.max(1);
        let now = now_ms();
        let grace = self.retention.grace.as_millis() as u64;
        let mut keep = HashSet::new();
        for (i, (n, _)) in valid.iter().enumerate() {
            let recent = i + keep_last >= valid.len();
            let in_grace = valid
                .get(i + 1)
                .and_then(|(succ, _)| published.get(succ))
                .is_some_and(|&t| now.saturating_sub(t) < grace);
            if recent || in_grace || pinned.contains(n) {
                keep.insert(*n);
            }
        }
        for (n, _) in &valid {
            if !keep.contains(n) {
                let path = self.dir.join(names::manifest(*n));
                match self.fs.remove(&path) {
                    Ok(()) => report.removed_snapshots.push(*n),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("remove", &path, e)),
                }
            }
        }
        sync_dir(&*self.fs, &self.dir)?;
        report.kept = metas
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| {
                keep.contains(n) || report.unreadable_manifests.contains(&names::manifest(*n))
            })
            .collect();
        if !report.unreadable_manifests.is_empty() {
            return Ok(report);
        }
        let mut referenced = HashSet::new();
        for (n, m) in &valid {
            if keep.contains(n) {
                referenced.extend(manifest_files(m));
            }
        }
        let mut names_in_dir = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(|e| Error::io("list", &self.dir, e))? {
            let e = e.map_err(|e| Error::io("list", &self.dir, e))?;
            if let Some(name) = e.file_name().to_str() {
                names_in_dir.push(name.to_string());
            }
        }
        names_in_dir.sort();
        let inflight = self.inflight.lock().clone();
        for name in names_in_dir {
            let data = names::parse_data_file(&name);
            let tmp = names::parse_tmp(&name);
            if data.or(tmp).is_some_and(|n| inflight.contains(&n)) {
                // A running compaction job's output.
                continue;
            }
            if data.or(tmp).is_some() {
                if let Err(what) = crate::fs::check_regular_entry(&self.dir.join(&name)) {
                    report.skipped.push((name, what.to_string()));
                    continue;
                }
            }
            let collect = (data.is_some() && !referenced.contains(&name)) || tmp.is_some();
            if collect {
                let path = self.dir.join(&name);
                match self.fs.remove(&path) {
                    Ok(()) => report.removed_files.push(name),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("remove", &path, e)),
                }
            }
        }
        sync_dir(&*self.fs, &self.dir)?;
        Ok(report)
    }
}

/// Names of every data file a manifest references.
pub(crate) fn manifest_files(m: &ManifestMeta) -> Vec<String> {
    let mut v = Vec::new();
    for s in &m.segments {
        v.push(s.id_index.name.clone());
        v.push(s.profile.name.clone());
        v.push(s.stats.name.clone());
        v.extend(s.embeddings.iter().map(|e| e.file.name.clone()));
        if let Some(d) = &s.deletes {
            v.push(d.name.clone());
        }
    }
    for b in &m.bundles {
        v.extend(b.files.iter().map(|f| f.name.clone()));
    }
    v
}

#[derive(Debug)]
enum View {
    Base(usize),
    Own(Box<Segment>),
}

#[derive(Debug)]
struct SegState {
    meta: SegmentMeta,
    view: View,
}

/// A model bundle of a snapshot under construction.
#[derive(Debug)]
struct TxBundle {
    file: FileRef,
    model: Arc<Model>,
    /// Precomputed first-layer item part: its dtype and a file per segment id.
    pre: Option<(crate::schema::Dtype, BTreeMap<u64, FileRef>)>,
}

/// A snapshot under construction. Data files are written as operations are
/// applied; nothing is visible to readers until [`Transaction::commit`]
/// publishes the manifest. Dropping a transaction abandons it and removes
/// the files it wrote (files left by a process that died mid-transaction
/// are collected by the next [`Writer::gc`]).
#[derive(Debug)]
pub struct Transaction<'w> {
    w: &'w mut Writer,
    number: u64,
    schema: Schema,
    base: Option<Arc<Snapshot>>,
    segments: Vec<SegState>,
    user_meta: BTreeMap<String, String>,
    bundles: BTreeMap<String, TxBundle>,
    next_segment_id: u64,
    written: HashSet<String>,
    /// Segments this transaction merged away.
    compacted_away: Vec<u64>,
    created_unix_ms: Option<u64>,
}

impl<'w> Transaction<'w> {
    /// Number the snapshot will have when committed.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The schema the snapshot will have.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    fn segment(&self, i: usize) -> &Segment {
        seg_at(&self.base, &self.segments, i)
    }

    /// Where new files of this transaction go.
    fn sink(&mut self) -> Sink<'_> {
        Sink {
            dir: &self.w.dir,
            fs: &*self.w.fs,
            number: self.number,
            written: &mut self.written,
        }
    }

    fn lookup(&self, id: u64) -> Option<(usize, usize)> {
        crate::segment::find_live(self.segments.len(), |i| self.segment(i), id)
    }

    fn fresh_name(&mut self, segment: u64, group: &str, ext: &str) -> String {
        self.sink().name(segment, group, ext)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.w.dir.join(name)
    }

    fn reopen(&mut self, i: usize) -> Result<()> {
        let dir = self.w.dir.clone();
        let mut opener = |r: &FileRef, kind: Kind| {
            crate::container::Container::open(&dir.join(&r.name), kind, false).map(Arc::new)
        };
        let manifest = self.w.dir.join(names::manifest(self.number));
        let seg = Segment::open(&self.segments[i].meta, &self.schema, &manifest, &mut opener)?;
        self.segments[i].view = View::Own(Box::new(seg));
        Ok(())
    }

    /// Checksums every segment's id index (once per process per file)
    /// before the writer relies on "absent" or on a row it finds.
    fn check_indexes(&self) -> Result<()> {
        (0..self.segments.len()).try_for_each(|i| self.segment(i).ensure_index_verified())
    }

    fn check_ids_unique(&self, ids: &[u64]) -> Result<()> {
        let mut seen: HashMap<u64, usize> = HashMap::with_capacity(ids.len());
        for (i, &id) in ids.iter().enumerate() {
            if let Some(j) = seen.insert(id, i) {
                return Err(Error::DuplicateId {
                    id,
                    context: format!("input rows {j} and {i}"),
                });
            }
        }
        Ok(())
    }

    /// Adds `batch` as a new segment. Ids must be new to the snapshot and
    /// unique in the batch; every embedding version of the schema must be
    /// given (f32, converted to each column's dtype); profile and statistics
    /// columns not given are missing.
    pub fn add_items(&mut self, batch: ItemBatch) -> Result<()> {
        self.put_items(batch, false)
    }

    /// Adds or replaces items: ids the snapshot already holds are deleted
    /// (tombstoned) and the whole batch is added as a new segment, so queries
    /// on the new snapshot see only the new rows. Same rules as
    /// [`Transaction::add_items`] otherwise.
    pub fn upsert_items(&mut self, batch: ItemBatch) -> Result<()> {
        self.put_items(batch, true)
    }

    fn put_items(&mut self, batch: ItemBatch, replace: bool) -> Result<()> {
        self.w.check_poisoned()?;
        if batch.is_empty() {
            return Ok(());
        }
        batch.check_columns(&self.schema, &[batch::Group::Profile, batch::Group::Stats])?;
        for (key, _) in &batch.embeddings {
            if self.schema.embedding_def(key).is_none() {
                return Err(Error::InvalidInput(format!(
                    "embedding {key} is not in the schema (it has [{}]); add a version with Transaction::add_embedding",
                    self.schema.embedding_keys().join(", ")
                )));
            }
        }
        let mut vectors = Vec::new();
        for def in &self.schema.embeddings {
            let key = def.key();
            let given: Vec<_> = batch.embeddings.iter().filter(|(k, _)| *k == key).collect();
            match given.as_slice() {
                [(_, v)] => {
                    encode::check_vectors(def, &batch.ids, v)?;
                    vectors.push((def.clone(), v));
                }
                [] => {
                    return Err(Error::InvalidInput(format!(
                        "batch gives no vectors for embedding {key}; every item needs one for each version in the schema"
                    )))
                }
                _ => return Err(Error::InvalidInput(format!("embedding {key} is given twice"))),
            }
        }
        self.check_ids_unique(&batch.ids)?;
        self.check_indexes()?;
        if self.next_segment_id == u64::MAX {
            return Err(Error::InvalidInput("segment ids are exhausted".into()));
        }
        let mut replaced: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, &id) in batch.ids.iter().enumerate() {
            if let Some((s, row)) = self.lookup(id) {
                if !replace {
                    return Err(Error::DuplicateId {
                        id,
                        context: format!(
                            "input row {i} and segment {} row {row} of the snapshot being built (use upsert_items to replace)",
                            self.segments[s].meta.id
                        ),
                    });
                }
                replaced.entry(s).or_default().push(row);
            }
        }
        for &s in replaced.keys() {
            self.segment(s).ensure_mutable_verified()?;
        }
        let r = self
            .write_deletes(replaced)
            .and_then(|()| self.write_segment(&batch, &vectors));
        self.w.poison(r)
    }

    /// Merges every segment into one, dropping deleted rows, if the snapshot
    /// has more than one segment or any deleted row; returns whether it did.
    /// Vectors are copied byte for byte (never re-quantized); the checksums
    /// of every source file are verified first.
    pub fn compact(&mut self) -> Result<bool> {
        self.w.check_poisoned()?;
        let n = self.segments.len();
        let dead: usize = (0..n)
            .map(|i| self.segment(i).rows() - self.segment(i).live_rows())
            .sum();
        if n == 0 || (n == 1 && dead == 0) {
            return Ok(false);
        }
        for i in 0..n {
            for f in self.segment(i).files() {
                f.ensure_verified()?;
            }
        }
        let r = self.write_compacted();
        self.w.poison(r).map(|()| true)
    }

    /// Compacts if `policy` says so (see [`Compaction`]); returns whether it did.
    pub fn compact_if(&mut self, policy: &Compaction) -> Result<bool> {
        let n = self.segments.len();
        let (rows, live) = (0..n).fold((0usize, 0usize), |(r, l), i| {
            (r + self.segment(i).rows(), l + self.segment(i).live_rows())
        });
        if policy.due(n, rows, rows - live) {
            self.compact()
        } else {
            Ok(false)
        }
    }

    /// Publishes, as part of this transaction, a compaction that
    /// [`CompactionJob::run`] wrote while the writer went on publishing:
    /// the merged segment replaces its sources, rebased onto the snapshot
    /// being built. Rows deleted or replaced since the job started are
    /// deleted in the merged segment; if statistics were refreshed or an
    /// embedding version added meanwhile, those columns of the merged
    /// segment are rewritten from the current rows (a version dropped
    /// meanwhile is dropped from it too). Segments added since stay as they
    /// are. Refused with [`Error::CompactionConflict`], changing nothing, if
    /// another compaction merged one of its sources since. Returns whether
    /// the merged segment holds any live row (if not, it is left out and its
    /// sources simply leave the snapshot).
    pub fn apply_compaction(&mut self, mut done: CompactedSegment) -> Result<bool> {
        self.w.check_poisoned()?;
        if !Arc::ptr_eq(&done.owned.inflight, &self.w.inflight) {
            return Err(Error::InvalidInput(format!(
                "the compaction of snapshot {} was started by another writer (of {})",
                done.base,
                done.owned.dir.display()
            )));
        }
        let mut pos = Vec::with_capacity(done.sources.len());
        for src in &done.sources {
            let p = self.segments.iter().position(|s| s.meta.id == src.meta.id);
            if p.is_none()
                && (self.w.retired.contains(&src.meta.id)
                    || self.compacted_away.contains(&src.meta.id))
            {
                return Err(Error::CompactionConflict {
                    base: done.base,
                    segment: src.meta.id,
                });
            }
            // Otherwise a source that left the snapshot had all its rows deleted.
            pos.push(p);
        }
        for &p in pos.iter().flatten() {
            self.segment(p).ensure_mutable_verified()?;
        }
        let r = self.rebase_compacted(&mut done, &pos);
        self.w.poison(r)
    }

    fn rebase_compacted(
        &mut self,
        done: &mut CompactedSegment,
        pos: &[Option<usize>],
    ) -> Result<bool> {
        // The job's files now belong to this transaction: removed if it is
        // abandoned, collected by gc if unused once it is published.
        self.written.extend(std::mem::take(&mut done.owned.files));
        let ids: Vec<u64> = done.sources.iter().map(|s| s.meta.id).collect();
        let total = done.meta.rows as usize;
        let mut deleted = vec![0u64; total.div_ceil(64)];
        let mut at = 0;
        for (src, p) in done.sources.iter().zip(pos) {
            for (k, &r) in src.rows.iter().enumerate() {
                if p.is_none_or(|p| self.segment(p).is_deleted(r)) {
                    deleted[(at + k) / 64] |= 1 << ((at + k) % 64);
                }
            }
            at += src.rows.len();
        }
        let dead: usize = deleted.iter().map(|w| w.count_ones() as usize).sum();
        let first = pos.iter().flatten().min().copied();
        let mut remove: Vec<usize> = pos.iter().flatten().copied().collect();
        remove.sort_unstable();
        self.compacted_away.extend(&ids);
        if dead == total {
            for &p in remove.iter().rev() {
                self.segments.remove(p);
            }
            return Ok(false);
        }
        let mut meta = done.meta.clone();
        let seg_id = meta.id;
        {
            let parts: Vec<Part<'_>> = done
                .sources
                .iter()
                .zip(pos)
                .map(|(src, p)| Part {
                    seg: p.map(|p| seg_at(&self.base, &self.segments, p)),
                    rows: &src.rows,
                })
                .collect();
            let changed = |f: fn(&SegmentMeta) -> &FileRef| {
                done.sources.iter().zip(pos).any(|(src, p)| {
                    p.is_some_and(|p| f(&self.segments[p].meta).name != f(&src.meta).name)
                })
            };
            let (stats_changed, profile_changed) = (changed(|m| &m.stats), changed(|m| &m.profile));
            // The file of embedding `key` in `m`, if any.
            fn emb<'m>(m: &'m SegmentMeta, key: &str) -> Option<&'m str> {
                m.embeddings
                    .iter()
                    .find(|e| e.key == key)
                    .map(|e| e.file.name.as_str())
            }
            // Whether the job's copy of `key` still holds the current
            // vectors (a version dropped and added again under the same key
            // meanwhile has new files).
            let same_vectors = |key: &str| {
                done.sources.iter().zip(pos).all(|(src, p)| {
                    p.is_none_or(|p| emb(&self.segments[p].meta, key) == emb(&src.meta, key))
                })
            };
            let mut sink = Sink {
                dir: &self.w.dir,
                fs: &*self.w.fs,
                number: self.number,
                written: &mut self.written,
            };
            if stats_changed {
                let cols = merged_scalars(&parts, &self.schema.stats, true)?;
                meta.stats = sink.scalar_group(seg_id, meta.rows, meta::Group::Stats, &cols)?;
            }
            if profile_changed {
                let cols = merged_scalars(&parts, &self.schema.profile, false)?;
                meta.profile = sink.scalar_group(seg_id, meta.rows, meta::Group::Profile, &cols)?;
            }
            let mut embeddings = Vec::with_capacity(self.schema.embeddings.len());
            for def in &self.schema.embeddings {
                let key = def.key();
                match meta.embeddings.iter().find(|e| e.key == key) {
                    Some(e) if same_vectors(&key) => embeddings.push(e.clone()),
                    _ => embeddings.push(write_merged_embedding(&mut sink, seg_id, def, &parts)?),
                }
            }
            if dead > 0 {
                let path = sink.path(seg_id, "del", "vdel");
                meta.deletes = Some(encode::write_deletes(
                    sink.fs, &path, seg_id, meta.rows, &deleted,
                )?);
            }
            // Keep the job's precomputed rows where the bundle is the one it
            // read and the vectors are the job's.
            for p in &done.pre {
                let kept = embeddings.iter().any(|e| {
                    e.key == p.key
                        && done
                            .meta
                            .embeddings
                            .iter()
                            .any(|j| j.file.name == e.file.name)
                });
                if let Some(TxBundle {
                    file,
                    pre: Some((dtype, have)),
                    ..
                }) = self.bundles.get_mut(&p.key)
                {
                    if kept && file.name == p.bundle && *dtype == p.dtype {
                        have.insert(seg_id, p.file.clone());
                    }
                }
            }
            meta.embeddings = embeddings;
        }
        for &p in remove.iter().rev() {
            self.segments.remove(p);
        }
        let at = first
            .unwrap_or(self.segments.len())
            .min(self.segments.len());
        self.segments.insert(
            at,
            SegState {
                meta,
                view: View::Base(usize::MAX),
            },
        );
        self.next_segment_id = self.next_segment_id.max(seg_id + 1);
        self.reopen(at)?;
        Ok(true)
    }

    fn write_compacted(&mut self) -> Result<()> {
        let n = self.segments.len();
        let live: Vec<Vec<usize>> = (0..n)
            .map(|i| {
                let seg = self.segment(i);
                (0..seg.rows()).filter(|&r| !seg.is_deleted(r)).collect()
            })
            .collect();
        let seg_id = self.next_segment_id;
        let mut sink = Sink {
            dir: &self.w.dir,
            fs: &*self.w.fs,
            number: self.number,
            written: &mut self.written,
        };
        let parts: Vec<Part<'_>> = live
            .iter()
            .enumerate()
            .map(|(i, rows)| Part {
                seg: Some(seg_at(&self.base, &self.segments, i)),
                rows,
            })
            .collect();
        let meta = write_merged(&mut sink, seg_id, &self.schema, &parts)?;
        self.next_segment_id += 1;
        self.compacted_away
            .extend(self.segments.iter().map(|s| s.meta.id));
        let total = meta.rows;
        self.segments = vec![SegState {
            meta,
            view: View::Base(usize::MAX),
        }];
        if total == 0 {
            self.segments.clear();
            return Ok(());
        }
        self.reopen(0)
    }

    /// Writes a new segment's id index, profile and statistics files.
    fn write_row_files(
        &mut self,
        seg: u64,
        ids: &[u64],
        profile_cols: &[ScalarColumn],
        stats_cols: &[ScalarColumn],
    ) -> Result<(FileRef, FileRef, FileRef)> {
        self.sink().row_files(seg, ids, profile_cols, stats_cols)
    }

    fn write_segment(
        &mut self,
        batch: &ItemBatch,
        vectors: &[(EmbeddingDef, &Vec<f32>)],
    ) -> Result<()> {
        let seg = self.next_segment_id;
        let rows = batch.len() as u64;
        let profile_cols = batch.scalar_columns(&self.schema, batch::Group::Profile);
        let stats_cols = batch.scalar_columns(&self.schema, batch::Group::Stats);
        let (id_index, profile, stats) =
            self.write_row_files(seg, &batch.ids, &profile_cols, &stats_cols)?;
        let mut embeddings = Vec::new();
        for (def, v) in vectors {
            let key = def.key();
            let name = self.fresh_name(seg, &format!("emb-{key}"), "vcol");
            let d = def.dim as usize;
            let file = encode::write_embedding_group(
                &*self.w.fs,
                &self.path(&name),
                seg,
                rows,
                def,
                v.chunks_exact(d),
            )?;
            embeddings.push(EmbeddingRef { key, file });
        }
        self.next_segment_id += 1;
        self.segments.push(SegState {
            meta: SegmentMeta {
                id: seg,
                rows,
                id_index,
                profile,
                stats,
                embeddings,
                deletes: None,
            },
            view: View::Base(usize::MAX),
        });
        let i = self.segments.len() - 1;
        self.reopen(i)
    }

    /// Overwrites statistics of existing items: `batch` holds ids and
    /// statistics columns only. Columns not given keep their values; a
    /// `None` value makes the item's statistic missing. Only the statistics
    /// files of the segments touched are rewritten: profile and embedding
    /// files stay shared with the previous snapshot.
    pub fn update_stats(&mut self, batch: ItemBatch) -> Result<()> {
        self.w.check_poisoned()?;
        batch.check_columns(&self.schema, &[batch::Group::Stats])?;
        if !batch.embeddings.is_empty() {
            return Err(Error::InvalidInput(
                "update_stats takes statistics columns only; embeddings change through add_embedding".into(),
            ));
        }
        self.check_ids_unique(&batch.ids)?;
        self.check_indexes()?;
        let mut by_seg: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
        for (i, &id) in batch.ids.iter().enumerate() {
            let (s, row) = self.lookup(id).ok_or_else(|| Error::UnknownId {
                id,
                snapshot: self.number,
                context: format!("statistics update, input row {i}"),
            })?;
            by_seg.entry(s).or_default().push((i, row));
        }
        for &s in by_seg.keys() {
            self.segment(s).ensure_mutable_verified()?;
        }
        let r = self.rewrite_stats(&batch, by_seg);
        self.w.poison(r)
    }

    fn rewrite_stats(
        &mut self,
        batch: &ItemBatch,
        by_seg: BTreeMap<usize, Vec<(usize, usize)>>,
    ) -> Result<()> {
        for (s, rows) in by_seg {
            let seg = self.segment(s);
            let n = seg.rows();
            let mut cols = Vec::new();
            for d in &self.schema.stats {
                let c = seg.stat(&d.name)?;
                let mut col = ScalarColumn {
                    name: d.name.clone(),
                    values: c.values().iter().map(|x| x.to_bits()).collect(),
                    missing: None,
                    default: batch::default_bits(d),
                };
                if c.missing_count() > 0 {
                    let mut m = vec![0u64; n.div_ceil(64)];
                    for r in 0..n {
                        if c.is_missing(r) {
                            m[r / 64] |= 1 << (r % 64);
                        }
                    }
                    col.missing = Some(m);
                }
                if let Some(v) = batch.column(batch::Group::Stats, &d.name) {
                    for &(i, row) in &rows {
                        col.set(row, v.get_bits(i));
                    }
                }
                col.normalize();
                cols.push(col);
            }
            let seg_id = self.segments[s].meta.id;
            let name = self.fresh_name(seg_id, "stats", "vcol");
            let rows_n = n as u64;
            let f = encode::write_scalar_group(
                &*self.w.fs,
                &self.path(&name),
                seg_id,
                rows_n,
                meta::Group::Stats,
                &cols,
            )?;
            self.segments[s].meta.stats = f;
            self.reopen(s)?;
        }
        Ok(())
    }

    /// Adds embedding version `def` with a vector for every live item
    /// (`ids` and row-major f32 `vectors`, `ids.len() * dim` values). The
    /// snapshot then holds it beside the versions it already has.
    pub fn add_embedding(&mut self, def: EmbeddingDef, ids: &[u64], vectors: &[f32]) -> Result<()> {
        self.w.check_poisoned()?;
        let key = def.key();
        if self.schema.embedding_def(&key).is_some() {
            return Err(Error::InvalidInput(format!(
                "the snapshot already holds embedding {key}"
            )));
        }
        let mut schema = self.schema.clone();
        schema.embeddings.push(def.clone());
        // The columns are the stored schema's (see `validate_stored`).
        schema.validate_stored()?;
        encode::check_vectors(&def, ids, vectors)?;
        self.check_ids_unique(ids)?;
        self.check_indexes()?;
        let mut rows_of: Vec<Vec<Option<usize>>> = (0..self.segments.len())
            .map(|s| vec![None; self.segment(s).rows()])
            .collect();
        for (i, &id) in ids.iter().enumerate() {
            let (s, row) = self.lookup(id).ok_or_else(|| Error::UnknownId {
                id,
                snapshot: self.number,
                context: format!("embedding {key}, input row {i}"),
            })?;
            rows_of[s][row] = Some(i);
        }
        for (s, rows) in rows_of.iter().enumerate() {
            let seg = self.segment(s);
            if let Some(r) = rows
                .iter()
                .enumerate()
                .position(|(r, x)| x.is_none() && !seg.is_deleted(r))
            {
                return Err(Error::InvalidInput(format!(
                    "embedding {key} has no vector for item id {}; every live item needs one",
                    seg.ids()[r]
                )));
            }
        }
        let r = self.write_embedding(def, vectors, rows_of, schema);
        self.w.poison(r)
    }

    fn write_embedding(
        &mut self,
        def: EmbeddingDef,
        vectors: &[f32],
        rows_of: Vec<Vec<Option<usize>>>,
        schema: Schema,
    ) -> Result<()> {
        let key = def.key();
        let d = def.dim as usize;
        let zeros = vec![0f32; d];
        for (s, rows) in rows_of.iter().enumerate() {
            let seg_id = self.segments[s].meta.id;
            let name = self.fresh_name(seg_id, &format!("emb-{key}"), "vcol");
            let it = rows.iter().map(|x| match x {
                Some(i) => &vectors[i * d..(i + 1) * d],
                None => &zeros[..],
            });
            let file = encode::write_embedding_group(
                &*self.w.fs,
                &self.path(&name),
                seg_id,
                rows.len() as u64,
                &def,
                it,
            )?;
            self.segments[s].meta.embeddings.push(EmbeddingRef {
                key: key.clone(),
                file,
            });
        }
        self.schema = schema;
        for s in 0..self.segments.len() {
            self.reopen(s)?;
        }
        Ok(())
    }

    /// Removes embedding version `key` from the snapshot (its files stay
    /// with older snapshots until collected).
    pub fn drop_embedding(&mut self, key: &str) -> Result<()> {
        self.w.check_poisoned()?;
        if self.schema.embedding_def(key).is_none() {
            return Err(Error::VersionSkew {
                snapshot: self.number,
                requested: key.to_string(),
                available: self.schema.embedding_keys(),
            });
        }
        self.schema.embeddings.retain(|d| d.key() != key);
        // A bundle belongs to its embedding version and retires with it.
        self.bundles.remove(key);
        for s in &mut self.segments {
            s.meta.embeddings.retain(|e| e.key != key);
        }
        for s in 0..self.segments.len() {
            let r = self.reopen(s);
            self.w.poison(r)?;
        }
        Ok(())
    }

    /// Adds a three-tower model bundle (`model.json` and
    /// `weights.safetensors` bytes), replacing any bundle of the same
    /// `space@version`. The bundle is validated completely against the
    /// snapshot being built (see [`Model::load`]), so an embedding version
    /// added earlier in this transaction may carry its bundle in the same
    /// publish. Returns the bundle's `space@version`.
    pub fn add_model(&mut self, json: &[u8], weights: &[u8]) -> Result<String> {
        self.add_model_with(json, weights, None)
    }

    /// [`Transaction::add_model`], and precompute the item part of the
    /// model's first upper layer (`W0[:, item columns] @ item_vec`, which
    /// does not change within an embedding version) for every item, stored
    /// as `dtype` (one row of the layer's width per item, kept up to date by
    /// every later publish). Queries then skip that part of the product
    /// and gather the stored row instead: fewer FLOPs, more bytes (with
    /// `F16`, rounding the precomputed part to about 3 significant digits).
    ///
    /// The store keeps the precomputed part per segment of items, so the
    /// snapshot must hold items when this transaction commits
    /// ([`Transaction::commit`] refuses it otherwise), and a later publish
    /// that leaves the snapshot with no items at all drops it (the bundle
    /// stays; add it precomputed again once there are items).
    pub fn add_model_precomputed(
        &mut self,
        json: &[u8],
        weights: &[u8],
        dtype: crate::schema::Dtype,
    ) -> Result<String> {
        self.add_model_with(json, weights, Some(dtype))
    }

    fn add_model_with(
        &mut self,
        json: &[u8],
        weights: &[u8],
        pre: Option<crate::schema::Dtype>,
    ) -> Result<String> {
        self.w.check_poisoned()?;
        let model = Model::load(json, weights, &self.schema)?;
        let key = model.key().to_string();
        let name = self.fresh_name(0, &format!("model-{key}"), "vbnd");
        let r = encode::write_bundle(&*self.w.fs, &self.path(&name), &key, json, weights);
        let file = self.w.poison(r)?;
        self.bundles.insert(
            key.clone(),
            TxBundle {
                file,
                model: Arc::new(model),
                pre: pre.map(|d| (d, BTreeMap::new())),
            },
        );
        Ok(key)
    }

    /// Writes the precomputed first-layer files that segments lack.
    fn write_precomputed(&mut self) -> Result<()> {
        let keys: Vec<String> = self.bundles.keys().cloned().collect();
        for key in keys {
            let b = &self.bundles[&key];
            let Some((dtype, have)) = &b.pre else {
                continue;
            };
            let (dtype, model) = (*dtype, b.model.clone());
            let def = model.precompute_def(dtype);
            let missing: Vec<usize> = (0..self.segments.len())
                .filter(|&s| !have.contains_key(&self.segments[s].meta.id))
                .collect();
            for s in missing {
                let seg_id = self.segments[s].meta.id;
                let name = self.fresh_name(seg_id, &format!("pre-{key}"), "vcol");
                let path = self.path(&name);
                let seg = self.segment(s);
                let emb = seg
                    .embedding_opt(&key)
                    .ok_or_else(|| self.skew_error(&key))?;
                let file = encode::write_embedding_computed(
                    &*self.w.fs,
                    &path,
                    seg_id,
                    seg.rows() as u64,
                    &def,
                    256,
                    |first, out| model.precompute_rows(&emb, first, out),
                )?;
                if let Some((_, have)) = &mut self.bundles.get_mut(&key).expect("key listed").pre {
                    have.insert(seg_id, file);
                }
            }
        }
        Ok(())
    }

    fn skew_error(&self, key: &str) -> Error {
        Error::VersionSkew {
            snapshot: self.number,
            requested: key.to_string(),
            available: self.schema.embedding_keys(),
        }
    }

    /// [`Transaction::add_model`] from a bundle directory holding
    /// `model.json` and `weights.safetensors`.
    pub fn add_model_dir(&mut self, dir: impl AsRef<Path>) -> Result<String> {
        let dir = dir.as_ref();
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read(&p).map_err(|e| Error::io("read", p, e))
        };
        let json = read("model.json")?;
        let weights = read("weights.safetensors")?;
        self.add_model(&json, &weights)
    }

    /// Removes the model bundle for `key` (`space@version`).
    pub fn drop_model(&mut self, key: &str) -> Result<()> {
        self.w.check_poisoned()?;
        if self.bundles.remove(key).is_none() {
            return Err(Error::NoModel {
                snapshot: self.number,
                requested: key.to_string(),
                available: self.bundles.keys().cloned().collect(),
            });
        }
        Ok(())
    }

    /// Deletes live items (tombstones; a segment whose every row is deleted
    /// leaves the snapshot).
    pub fn delete(&mut self, ids: &[u64]) -> Result<()> {
        self.w.check_poisoned()?;
        self.check_ids_unique(ids)?;
        self.check_indexes()?;
        let mut by_seg: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, &id) in ids.iter().enumerate() {
            let (s, row) = self.lookup(id).ok_or_else(|| Error::UnknownId {
                id,
                snapshot: self.number,
                context: format!("delete, input row {i}"),
            })?;
            by_seg.entry(s).or_default().push(row);
        }
        for &s in by_seg.keys() {
            self.segment(s).ensure_mutable_verified()?;
        }
        let r = self.write_deletes(by_seg);
        self.w.poison(r)
    }

    fn write_deletes(&mut self, by_seg: BTreeMap<usize, Vec<usize>>) -> Result<()> {
        let mut emptied = Vec::new();
        for (s, rows) in by_seg {
            let seg = self.segment(s);
            let n = seg.rows();
            let mut bm = vec![0u64; n.div_ceil(64)];
            for r in 0..n {
                if seg.is_deleted(r) {
                    bm[r / 64] |= 1 << (r % 64);
                }
            }
            for r in rows {
                bm[r / 64] |= 1 << (r % 64);
            }
            let deleted: usize = bm.iter().map(|w| w.count_ones() as usize).sum();
            if deleted == n {
                emptied.push(s);
                continue;
            }
            let seg_id = self.segments[s].meta.id;
            let name = self.fresh_name(seg_id, "del", "vdel");
            let f = encode::write_deletes(&*self.w.fs, &self.path(&name), seg_id, n as u64, &bm)?;
            self.segments[s].meta.deletes = Some(f);
            self.reopen(s)?;
        }
        for s in emptied.into_iter().rev() {
            self.segments.remove(s);
        }
        Ok(())
    }

    /// Records `t` as the snapshot's publish time instead of the clock, for
    /// reproducible builds (the same inputs then give byte-identical files).
    /// Retention's grace period is measured from this time.
    pub fn set_created_time(&mut self, t: SystemTime) {
        self.created_unix_ms = Some(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        );
    }

    /// Sets a user metadata entry published with the snapshot.
    pub fn set_metadata(&mut self, key: &str, value: &str) {
        self.user_meta.insert(key.to_string(), value.to_string());
    }

    /// Removes a user metadata entry.
    pub fn remove_metadata(&mut self, key: &str) {
        self.user_meta.remove(key);
    }

    /// Publishes the snapshot: syncs the directory (data files are already
    /// synced), writes the manifest to a temporary name, syncs it, renames it
    /// into place and syncs the directory. Returns the new snapshot, pinned.
    pub fn commit(mut self) -> Result<Arc<Snapshot>> {
        self.w.check_poisoned()?;
        if self.segments.is_empty() {
            // The manifest records a precomputed item part as a file per
            // segment: without segments, one added now would be lost. (One
            // carried from the base has a file for each of its segments.)
            let added = self
                .bundles
                .iter()
                .find(|(_, b)| b.pre.as_ref().is_some_and(|(_, files)| files.is_empty()));
            if let Some((key, _)) = added {
                return Err(Error::InvalidInput(format!(
                    "bundle {key} was added precomputed, but the snapshot would hold no \
                     items: the store keeps a precomputed item part per segment of items; \
                     add items in the same transaction, or add the bundle precomputed once \
                     the snapshot holds items"
                )));
            }
        }
        let r = self.write_precomputed();
        self.w.poison(r)?;
        let manifest = ManifestMeta {
            snapshot: self.number,
            parent: self.base.as_ref().map(|b| b.number()),
            created_unix_ms: self.created_unix_ms.unwrap_or_else(now_ms),
            schema: self.schema.clone(),
            segments: self.segments.iter().map(|s| s.meta.clone()).collect(),
            bundles: self
                .bundles
                .iter()
                .map(|(k, b)| {
                    let mut files = vec![b.file.clone()];
                    if let Some((_, pre)) = &b.pre {
                        files.extend(self.segments.iter().map(|s| pre[&s.meta.id].clone()));
                    }
                    BundleRef {
                        key: k.clone(),
                        files,
                    }
                })
                .collect(),
            user_meta: self
                .user_meta
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            next_segment_id: self.next_segment_id,
        };
        let number = self.number;
        let compacted_away = std::mem::take(&mut self.compacted_away);
        self.base = None;
        self.segments = Vec::new();
        // From here on the files belong to the snapshot being published:
        // dropping the transaction must not remove them once the manifest
        // may be durable (its rename happened).
        let written = std::mem::take(&mut self.written);
        let w = &mut *self.w;
        if let Err((e, renamed)) = publish(&*w.fs, &w.dir, number, manifest) {
            if !renamed {
                // No manifest names the new files: remove them, so that a
                // failed publish (a full disk) leaves the directory as it
                // was. Best effort; what stays is garbage for `gc`.
                for name in &written {
                    let _ = w.fs.remove(&w.dir.join(name));
                }
            }
            return w.poison(Err(e));
        }
        // Only a live job can name a retired segment (jobs started later
        // read snapshots without them).
        if w.inflight.lock().is_empty() {
            w.retired.clear();
        } else {
            w.retired.extend(compacted_away);
        }
        let r = match &w.store {
            Some(s) => s.refresh().map(|_| ()),
            None => Store::open_with(&w.dir, writer_open_options()).map(|s| w.store = Some(s)),
        };
        w.poison(r)?;
        let snap = w.snapshot().expect("store opened");
        w.schema = snap.schema().clone();
        Ok(snap)
    }
}

/// Segment `i` of a transaction's list.
/// How the writer pins its own snapshots: it rarely queries them, so it
/// leaves their id directories to the first query.
fn writer_open_options() -> crate::store::OpenOptions {
    crate::store::OpenOptions::new().prepare_id_directory(false)
}

fn seg_at<'a>(base: &'a Option<Arc<Snapshot>>, segments: &'a [SegState], i: usize) -> &'a Segment {
    match &segments[i].view {
        View::Base(b) => &base.as_ref().expect("base snapshot").segments()[*b],
        View::Own(s) => s,
    }
}

impl Drop for Transaction<'_> {
    /// Removes the data files of an abandoned (uncommitted) transaction, so
    /// that a refused operation leaves the directory as it was. Best effort:
    /// a file that cannot be removed is an orphan for [`Writer::gc`].
    fn drop(&mut self) {
        if self.written.is_empty() {
            return;
        }
        // Unmap this transaction's own segments before removing their files.
        self.segments.clear();
        for name in self.written.drain() {
            let _ = self.w.fs.remove(&self.w.dir.join(&name));
        }
        // The removals need not be durable: a file that reappears after a
        // crash is referenced by no manifest and gc collects it.
    }
}

/// Publishes `manifest` as snapshot `number` (steps 2-5 of the protocol in
/// `format/FORMAT.md`). An error before the rename removes the temporary
/// manifest and comes back as `(error, false)`: the manifest never had its
/// name. One after the rename is `(error, true)`: the snapshot may be
/// durable, and its files must stay.
fn publish(
    fs: &dyn Fs,
    dir: &Path,
    number: u64,
    manifest: ManifestMeta,
) -> std::result::Result<(), (Error, bool)> {
    let final_name = names::manifest(number);
    let tmp = dir.join(format!("{final_name}{}", names::TMP_SUFFIX));
    let dst = dir.join(&final_name);
    let mut created = false;
    let before_rename = (|| {
        sync_dir(fs, dir)?;
        let w = ContainerWriter::create(fs, &tmp, Kind::Manifest)?;
        created = true;
        w.finish(Body::Manifest(manifest))?;
        fs.rename(&tmp, &dst)
            .map_err(|e| Error::io("rename", &tmp, e))
    })();
    if let Err(e) = before_rename {
        if created {
            let _ = fs.remove(&tmp);
        }
        return Err((e, false));
    }
    sync_dir(fs, dir).map_err(|e| (e, true))
}
