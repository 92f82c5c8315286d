//! Opening a store read-only, pinning snapshots and picking up new ones.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::format::container::{Container, Kind};
use crate::format::meta::{Body, FileRef, ManifestMeta};
use crate::format::names;
use crate::model::Model;
use crate::read::pins::Pin;
use crate::read::prefault::{Prefault, PrefaultProgress};
use crate::read::segment::Segment;
use crate::read::snapshot::{Snapshot, VerifyReport};

/// How a store is opened.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    populate: bool,
    prefault: Prefault,
    mlock: bool,
    verify: bool,
    /// Leave id directories to the first query (see `prepare_id_directory`).
    lazy_directory: bool,
}

impl OpenOptions {
    /// Default options: structure validated at pin, data checksums on
    /// demand, and a background thread that faults in the pages queries
    /// read and builds the id directory ([`Prefault::Background`]), so that
    /// [`Store::open`] returns without reading the data.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether pages queries read are faulted in by a background thread
    /// after [`Store::open`] and after each [`Store::refresh`] that pins a
    /// new snapshot ([`Prefault::Background`], the default), or read from
    /// the file when a query first touches them ([`Prefault::Off`]). The
    /// background thread reads the id indexes and deletion bitmaps first
    /// (and checksums them, which every query does before relying on them),
    /// then builds the id directory of a snapshot of several segments,
    /// then reads the embedding rows, precomputed rows and columns; it
    /// leaves out what does not fit in the memory available, and stops once
    /// nothing holds the snapshot or the store is dropped (the drop waits
    /// for it to let go, at most a chunk). A damaged id index of a
    /// snapshot of several segments is then refused by the first query
    /// rather than by `open`. [`Store::prefault_progress`] tells how far
    /// it got. With `Off`, [`OpenOptions::prepare_id_directory`] builds the
    /// id directory before `open` returns, as before this option existed.
    pub fn prefault(mut self, mode: Prefault) -> Self {
        self.prefault = mode;
        self
    }

    /// Lock the pinned snapshots' mapped files in memory (`mlock`), so that
    /// the kernel never evicts a page a query has read: each page is locked
    /// when it is first faulted in (`mlock2(MLOCK_ONFAULT)` on Linux), by
    /// the background prefault or by a query, so `open` stays O(1). The
    /// whole length of every file counts against `RLIMIT_MEMLOCK` (unless
    /// the process has `CAP_IPC_LOCK`) the moment it is locked: a store that
    /// does not fit is refused by [`Store::open`] (and a refresh to a
    /// snapshot that does not fit, by [`Store::refresh`]) with
    /// [`Error::Mlock`], naming the file, the bytes and the limit.
    pub fn mlock(mut self, yes: bool) -> Self {
        self.mlock = yes;
        self
    }

    /// Prefault every mapped page at pin time (on Linux with
    /// `MADV_POPULATE_READ`, after advising huge pages; elsewhere with
    /// `MAP_POPULATE`), so queries never take a page fault. Costs time and
    /// resident memory proportional to the store's size when a snapshot is
    /// pinned.
    pub fn populate(mut self, yes: bool) -> Self {
        self.populate = yes;
        self
    }

    /// Recompute every data checksum when a snapshot is pinned (reads every
    /// byte; by default only headers, footers and metadata are checked at
    /// open and [`Snapshot::verify`] checks the data on demand).
    pub fn verify(mut self, yes: bool) -> Self {
        self.verify = yes;
        self
    }

    /// Build the in-memory id directory of each snapshot of several
    /// segments that [`Store::open`] and [`Store::refresh`] pin, before
    /// handing it out (default: yes; see [`Snapshot::prepare_id_directory`]).
    /// With `false`, the first candidate query on such a snapshot builds it,
    /// which suits a process that opens stores but rarely queries them.
    pub fn prepare_id_directory(mut self, yes: bool) -> Self {
        self.lazy_directory = !yes;
        self
    }
}

/// A store opened read-only. Cheap to share between threads; each query pins
/// a snapshot with [`Store::snapshot`].
///
/// ```
/// # fn main() -> vstore::Result<()> {
/// use vstore::{Dtype, ItemBatch, Schema, Store, Writer};
/// let dir = tempfile::tempdir().unwrap();
/// let schema = Schema::new()
///     .categorical("category", 0)
///     .stat("ctr_1d", 0.0)
///     .embedding("prerank", "v42", 4, Dtype::F16);
/// let mut writer = Writer::create(dir.path(), schema)?;
/// let mut tx = writer.begin();
/// tx.add_items(
///     ItemBatch::new(vec![10, 20])
///         .categorical("category", vec![3, 7])
///         .stat("ctr_1d", vec![0.1, 0.2])
///         .embedding("prerank@v42", vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]),
/// )?;
/// tx.commit()?;
///
/// let store = Store::open(dir.path())?;
/// let snap = store.snapshot();
/// assert_eq!(snap.get_embedding(20, "prerank@v42")?, vec![0.0, 1.0, 0.0, 0.0]);
/// assert!(matches!(
///     snap.get_embedding(20, "prerank@v43"),
///     Err(vstore::Error::VersionSkew { .. })
/// ));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    key: PathBuf,
    opts: OpenOptions,
    current: RwLock<Arc<Snapshot>>,
    files: Mutex<Cache>,
    skipped: Mutex<Vec<(String, String)>>,
    /// The background prefaults this store started that may still run.
    prefaults: Mutex<Vec<Arc<crate::read::prefault::PrefaultTask>>>,
}

impl Drop for Store {
    /// Stops this store's background prefaults and waits until they have
    /// let go of its files.
    fn drop(&mut self) {
        for t in self.prefaults.get_mut().drain(..) {
            t.stop_and_wait();
        }
    }
}

/// What snapshots of one `Store` share: mapped files by name, and the
/// models and item towers built from bundle files (validated against the schema they were
/// built for), so a refresh re-maps and re-validates only what changed.
#[derive(Debug, Default)]
struct Cache {
    files: HashMap<String, Weak<Container>>,
    models: HashMap<String, (Weak<Model>, crate::schema::Schema)>,
    towers: HashMap<String, (Weak<crate::model::ItemTowerBundle>, crate::schema::Schema)>,
}

/// How many times a reader re-lists manifests after losing a race with the
/// writer's garbage collection.
const RETRIES: usize = 8;

pub(crate) fn list_manifests(dir: &Path) -> Result<Vec<u64>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))? {
        let e = e.map_err(|e| Error::io("list", dir, e))?;
        if let Some(n) = e.file_name().to_str().and_then(names::parse_manifest) {
            v.push(n);
        }
    }
    v.sort_unstable();
    Ok(v)
}

/// Opens and validates manifest `n` of `dir`.
pub(crate) fn read_manifest(dir: &Path, n: u64) -> Result<(Arc<Container>, ManifestMeta)> {
    let path = dir.join(names::manifest(n));
    let c = Container::open(&path, Kind::Manifest, false)?;
    let Body::Manifest(m) = &c.meta.body else {
        return Err(Error::corrupt(&path, "not a manifest"));
    };
    if m.snapshot != n {
        return Err(Error::corrupt(
            &path,
            format!(
                "manifest named for snapshot {n} holds snapshot {}",
                m.snapshot
            ),
        ));
    }
    m.schema
        .validate_stored()
        .map_err(|e| Error::corrupt(&path, format!("schema does not validate: {e}")))?;
    check_manifest(&path, m, c.version)?;
    let m = m.clone();
    Ok((Arc::new(c), m))
}

/// Rules a manifest's fields must follow beyond rkyv's validation.
fn check_manifest(path: &Path, m: &ManifestMeta, version: u32) -> Result<()> {
    let mut ids = std::collections::HashSet::new();
    for s in &m.segments {
        if !ids.insert(s.id) || s.id >= m.next_segment_id {
            return Err(Error::corrupt(
                path,
                format!(
                    "segment id {} is repeated or not below next_segment_id {}",
                    s.id, m.next_segment_id
                ),
            ));
        }
    }
    if m.user_meta.windows(2).any(|w| w[0].key >= w[1].key) {
        return Err(Error::corrupt(
            path,
            "user metadata keys are not sorted and unique",
        ));
    }
    if version < 2 && !m.bundles.is_empty() {
        return Err(Error::corrupt(
            path,
            "format version 1 manifests hold no model bundles",
        ));
    }
    for b in &m.bundles {
        let (key, name) = crate::model::split_bundle_id(&b.key);
        let tower = name == crate::model::TOWER_BUNDLE_NAME;
        if tower && (version < 5 || b.files.len() != 1) {
            return Err(Error::corrupt(
                path,
                format!(
                    "item-tower bundle {}: needs format version 5 and exactly one file",
                    b.key
                ),
            ));
        }
        if b.key.contains('#') && !tower {
            if version < 4 {
                return Err(Error::corrupt(
                    path,
                    format!("model bundle {}: bundle names need format version 4", b.key),
                ));
            }
            if name == crate::model::DEFAULT_BUNDLE_NAME
                || crate::schema::check_bundle_name(name).is_err()
            {
                return Err(Error::corrupt(
                    path,
                    format!("model bundle {} has an invalid name", b.key),
                ));
            }
        }
        if m.schema.embedding_def(key).is_none() {
            return Err(Error::corrupt(
                path,
                format!(
                    "model bundle {} names an embedding the schema does not hold",
                    b.key
                ),
            ));
        }
        if b.files.len() != 1 && b.files.len() != m.segments.len() + 1 {
            return Err(Error::corrupt(
                path,
                format!(
                    "model bundle {} references {} files; it must reference its bundle file and either no precomputed files or one per segment ({})",
                    b.key,
                    b.files.len(),
                    m.segments.len()
                ),
            ));
        }
    }
    if m.bundles.windows(2).any(|w| w[0].key >= w[1].key) {
        return Err(Error::corrupt(
            path,
            "model bundle keys are not sorted and unique",
        ));
    }
    Ok(())
}

impl Store {
    /// Opens the store in `dir` read-only and pins its newest snapshot,
    /// reading headers, footers, metadata and bundles only (its time does
    /// not grow with the rows), then starts the snapshot's background
    /// prefault ([`OpenOptions::prefault`]).
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        Self::open_with(dir, OpenOptions::default())
    }

    /// Opens with explicit [`OpenOptions`].
    pub fn open_with(dir: impl AsRef<Path>, opts: OpenOptions) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        let key = store_key(&dir)?;
        let files = Mutex::new(Cache::default());
        let skipped = Mutex::new(Vec::new());
        let first = load_newest(&dir, &key, &opts, &files, &skipped)?;
        let task = guard(&first, &opts)?;
        Ok(Store {
            dir,
            key,
            opts,
            current: RwLock::new(first),
            files,
            skipped,
            prefaults: Mutex::new(task.into_iter().collect()),
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current snapshot, pinned: cheap (an `Arc` clone).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.read().clone()
    }

    /// Picks up the newest published snapshot, if it is newer than the
    /// current one. Returns whether the current snapshot changed. Snapshots
    /// already handed out are unaffected.
    pub fn refresh(&self) -> Result<bool> {
        let newest = list_manifests(&self.dir)?.last().copied();
        let cur = self.current.read().number();
        if newest.is_none_or(|n| n <= cur) {
            return Ok(false);
        }
        let snap = load_newest(&self.dir, &self.key, &self.opts, &self.files, &self.skipped)?;
        // Off the query path: the caller refreshes from its own thread.
        if let Some(task) = guard(&snap, &self.opts)? {
            let mut tasks = self.prefaults.lock();
            tasks.retain(|t| !t.progress().finished);
            tasks.push(task);
        }
        let mut w = self.current.write();
        if snap.number() > w.number() {
            *w = snap;
            return Ok(true);
        }
        Ok(false)
    }

    /// How far the background prefault of the current snapshot has got
    /// (see [`OpenOptions::prefault`]); `None` if none was started for it.
    pub fn prefault_progress(&self) -> Option<PrefaultProgress> {
        self.snapshot().prefault.get().map(|t| t.progress())
    }

    /// Waits until the background prefault of the current snapshot ends
    /// and returns its progress; `None` at once if none was started for it.
    pub fn wait_prefault(&self) -> Option<PrefaultProgress> {
        let task = self.snapshot().prefault.get().cloned();
        task.map(|t| t.wait())
    }

    /// Pins a specific (still retained) snapshot.
    pub fn open_snapshot(&self, n: u64) -> Result<Arc<Snapshot>> {
        load(&self.dir, &self.key, &self.opts, &self.files, n)
    }

    /// Snapshot numbers whose manifests are present, oldest first.
    pub fn snapshots(&self) -> Result<Vec<u64>> {
        list_manifests(&self.dir)
    }

    /// Manifests newer than the current snapshot that failed to validate and
    /// were skipped, with the reason (empty in a healthy store).
    pub fn skipped_manifests(&self) -> Vec<(String, String)> {
        self.skipped.lock().clone()
    }

    /// Verifies every snapshot in the directory, each on its own (see
    /// [`Store::verify_all`]), and returns the current snapshot's report
    /// (with `manifests` counting every manifest checked) if all are
    /// intact. Otherwise the error is the first damage found, oldest
    /// snapshot first, naming the damaged file; [`Store::verify_all`] lists
    /// every snapshot's verdict.
    pub fn verify(&self) -> Result<VerifyReport> {
        let all = self.verify_all()?;
        let mut manifests = 0;
        let mut current = None;
        for (n, r) in all {
            let r = r?;
            manifests += 1;
            if n == self.snapshot().number() {
                current = Some(r);
            }
        }
        let mut report = match current {
            Some(r) => r,
            None => self.snapshot().verify()?,
        };
        report.manifests = manifests;
        Ok(report)
    }
}

impl Store {
    /// Verifies every retained snapshot, oldest first: each one's manifest
    /// and every byte of its files (a file shared by several snapshots is
    /// checksummed once, unless it failed). Returns one result per snapshot,
    /// so that every damaged snapshot is reported, not only the first; the
    /// store is clean when all are `Ok`. A snapshot collected by the writer
    /// while this runs is left out. Each snapshot is pinned on its own, so
    /// damage in one (even the newest) does not keep the others from being
    /// checked; see [`Store::verify_dir`] for a store whose newest snapshot
    /// cannot be opened at all.
    ///
    /// ```no_run
    /// let store = vstore::Store::open("items.vstore")?;
    /// for (n, r) in store.verify_all()? {
    ///     match r {
    ///         Ok(rep) => println!("snapshot {n}: {} files ok", rep.files),
    ///         Err(e) => println!("snapshot {n}: {e}"),
    ///     }
    /// }
    /// # Ok::<(), vstore::Error>(())
    /// ```
    pub fn verify_all(&self) -> Result<Vec<(u64, Result<VerifyReport>)>> {
        verify_each(&self.dir, &self.key, &self.opts)
    }

    /// [`Store::verify_all`] for the store in `dir`, without opening it
    /// first: nothing but the directory listing has to succeed, so a store
    /// whose newest snapshot is damaged (and which [`Store::open`] therefore
    /// refuses) still has each of its snapshots checked and reported.
    /// A directory with no manifest is [`Error::NotAStore`].
    pub fn verify_dir(dir: impl AsRef<Path>) -> Result<Vec<(u64, Result<VerifyReport>)>> {
        let dir = dir.as_ref();
        let key = store_key(dir)?;
        if list_manifests(dir)?.is_empty() {
            return Err(no_manifest(dir));
        }
        verify_each(dir, &key, &OpenOptions::default())
    }

    /// Opens the store in `dir` read-only with snapshot `n` as its current
    /// snapshot, without pinning (or reading) any newer one: an intact
    /// older snapshot can be read while the newest is damaged, which
    /// [`Store::open`] refuses. [`Store::refresh`] later moves to the
    /// newest as usual. A snapshot that is not retained is an
    /// [`Error::Io`] whose [`Error::is_not_found`] is true.
    pub fn open_at(dir: impl AsRef<Path>, n: u64, opts: OpenOptions) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        let key = store_key(&dir)?;
        let files = Mutex::new(Cache::default());
        let snap = load(&dir, &key, &opts, &files, n)?;
        let task = guard(&snap, &opts)?;
        Ok(Store {
            dir,
            key,
            opts,
            current: RwLock::new(snap),
            files,
            skipped: Mutex::new(Vec::new()),
            prefaults: Mutex::new(task.into_iter().collect()),
        })
    }
}

/// What a store does with a snapshot it has just pinned for its readers,
/// before handing it out: lock its files (`mlock`), and either start its
/// background prefault (which builds the id directory) or build the id
/// directory now.
fn guard(
    snap: &Arc<Snapshot>,
    opts: &OpenOptions,
) -> Result<Option<Arc<crate::read::prefault::PrefaultTask>>> {
    if opts.mlock {
        lock(snap)?;
    }
    let directory = !opts.lazy_directory && snap.segments().len() > 1;
    match opts.prefault {
        Prefault::Background => {
            if directory {
                snap.directory_pending
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            let task = crate::read::prefault::start(snap, directory);
            let _ = snap.prefault.set(task.clone());
            Ok(Some(task))
        }
        Prefault::Off => {
            if !opts.lazy_directory {
                snap.prepare_id_directory()?;
            }
            Ok(None)
        }
    }
}

/// Locks every mapped file of `snap` not locked yet (see
/// [`OpenOptions::mlock`]).
fn lock(snap: &Snapshot) -> Result<()> {
    use std::sync::atomic::Ordering;
    for c in snap.containers() {
        if c.locked.load(Ordering::Acquire) {
            continue;
        }
        crate::io::mmap::lock(&c.map).map_err(|source| Error::Mlock {
            path: c.path.clone(),
            bytes: c.len(),
            limit: crate::io::mmap::memlock_limit(),
            source,
        })?;
        c.locked.store(true, Ordering::Release);
    }
    Ok(())
}

/// The canonical path of store directory `dir` (the key its pins use),
/// after checking that it is a directory.
fn store_key(dir: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(dir).map_err(|e| Error::io("open store", dir, e))?;
    if !meta.is_dir() {
        return Err(Error::NotAStore {
            path: dir.to_path_buf(),
            why: "not a directory".into(),
        });
    }
    dir.canonicalize()
        .map_err(|e| Error::io("canonicalize", dir, e))
}

fn no_manifest(dir: &Path) -> Error {
    Error::NotAStore {
        path: dir.to_path_buf(),
        why: "no manifest (MANIFEST-*) in the directory".into(),
    }
}

/// Pins and verifies each snapshot of `dir` on its own, oldest first.
fn verify_each(
    dir: &Path,
    key: &Path,
    opts: &OpenOptions,
) -> Result<Vec<(u64, Result<VerifyReport>)>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    // Mapped files are shared between the snapshots checked (they are
    // immutable); a file that failed to open is not cached, so each
    // snapshot referencing it reports it.
    let files = Mutex::new(Cache::default());
    let opts = opts.clone().verify(false);
    for n in list_manifests(dir)? {
        let r = load(dir, key, &opts, &files, n).and_then(|s| s.verify_sharing(&mut seen));
        match r {
            Err(e) if e.is_not_found() && !dir.join(names::manifest(n)).exists() => {}
            r => out.push((n, r)),
        }
    }
    Ok(out)
}

fn load_newest(
    dir: &Path,
    key: &Path,
    opts: &OpenOptions,
    files: &Mutex<Cache>,
    skipped: &Mutex<Vec<(String, String)>>,
) -> Result<Arc<Snapshot>> {
    let mut last_err = None;
    for _ in 0..RETRIES {
        let list = list_manifests(dir)?;
        if list.is_empty() {
            return Err(no_manifest(dir));
        }
        let mut first_corrupt: Option<Error> = None;
        let mut raced = false;
        for &n in list.iter().rev() {
            match load(dir, key, opts, files, n) {
                Ok(s) => return Ok(s),
                Err(e) if e.is_not_found() => {
                    raced = true;
                    last_err = Some(e);
                    break;
                }
                Err(e @ Error::Corrupt { .. })
                    if e.path() == Some(&dir.join(names::manifest(n))) =>
                {
                    let mut sk = skipped.lock();
                    let name = names::manifest(n);
                    if !sk.iter().any(|(m, _)| *m == name) {
                        sk.push((name, e.to_string()));
                    }
                    drop(sk);
                    first_corrupt.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        if !raced {
            return Err(first_corrupt.unwrap_or_else(|| Error::NotAStore {
                path: dir.to_path_buf(),
                why: "no manifest validates".into(),
            }));
        }
    }
    Err(last_err.unwrap_or_else(|| Error::NotAStore {
        path: dir.to_path_buf(),
        why: "gave up racing garbage collection".into(),
    }))
}

fn load(
    dir: &Path,
    key: &Path,
    opts: &OpenOptions,
    files: &Mutex<Cache>,
    n: u64,
) -> Result<Arc<Snapshot>> {
    // Pin first, so that a collector in this process keeps what we map.
    let pin = Pin::new(key, n);
    let (manifest_file, manifest) = read_manifest(dir, n)?;
    let mut guard = files.lock();
    let Cache {
        files: cache,
        models: model_cache,
        towers: tower_cache,
    } = &mut *guard;
    cache.retain(|_, w| w.strong_count() > 0);
    model_cache.retain(|_, (w, _)| w.strong_count() > 0);
    tower_cache.retain(|_, (w, _)| w.strong_count() > 0);
    let mut opener = |r: &FileRef, kind: Kind| -> Result<Arc<Container>> {
        if !valid_file_name(&r.name) {
            return Err(Error::corrupt(
                dir.join(names::manifest(n)),
                format!("references an invalid file name {:?}", r.name),
            ));
        }
        if let Some(c) = cache.get(&r.name).and_then(Weak::upgrade) {
            return Ok(c);
        }
        let c = Arc::new(Container::open(&dir.join(&r.name), kind, opts.populate)?);
        if opts.populate {
            c.prefaulted
                .store(true, std::sync::atomic::Ordering::Release);
        }
        cache.insert(r.name.clone(), Arc::downgrade(&c));
        Ok(c)
    };
    let mut segments = Vec::with_capacity(manifest.segments.len());
    for s in &manifest.segments {
        segments.push(Segment::open(
            s,
            &manifest.schema,
            &manifest_file.path,
            &mut opener,
        )?);
    }
    let mut models = Vec::with_capacity(manifest.bundles.len());
    let mut towers = Vec::new();
    for b in &manifest.bundles {
        let c = opener(&b.files[0], Kind::Bundle)?;
        crate::read::segment::check_ref(&c, &b.files[0])?;
        if crate::model::split_bundle_id(&b.key).1 == crate::model::TOWER_BUNDLE_NAME {
            let name = &b.files[0].name;
            let cached = match tower_cache.get(name) {
                Some((w, schema)) if *schema == manifest.schema => w.upgrade(),
                _ => None,
            };
            let tower = match cached {
                Some(t) => t,
                None => match crate::model::Bundle::from_container(&c, &b.key, &manifest.schema)? {
                    crate::model::Bundle::Tower(t) => {
                        let t = Arc::new(t);
                        tower_cache
                            .insert(name.clone(), (Arc::downgrade(&t), manifest.schema.clone()));
                        t
                    }
                    crate::model::Bundle::Model(_) => {
                        return Err(Error::corrupt(
                            &c.path,
                            format!(
                            "holds a three-tower bundle; the manifest names it the item tower {}",
                            b.key
                        ),
                        ))
                    }
                },
            };
            towers.push(crate::model::LoadedTower { tower, file: c });
            continue;
        }
        let name = &b.files[0].name;
        let m = match model_cache.get(name) {
            Some((w, schema)) if *schema == manifest.schema => w.upgrade(),
            _ => None,
        };
        let m = match m {
            Some(m) => m,
            None => {
                let m = match crate::model::Bundle::from_container(&c, &b.key, &manifest.schema)? {
                    crate::model::Bundle::Model(m) => Arc::new(*m),
                    crate::model::Bundle::Tower(_) => {
                        return Err(Error::corrupt(
                            &c.path,
                            format!(
                            "holds an item-tower-only bundle; the manifest names it the model {}",
                            b.key
                        ),
                        ))
                    }
                };
                model_cache.insert(name.clone(), (Arc::downgrade(&m), manifest.schema.clone()));
                m
            }
        };
        if m.bundle_id() != b.key {
            return Err(Error::corrupt(
                &c.path,
                format!(
                    "holds the bundle {}; the manifest names it {}",
                    m.bundle_id(),
                    b.key
                ),
            ));
        }
        if b.files.len() > 1 {
            if let Some(why) = m.precompute_refusal() {
                return Err(Error::corrupt(
                    &manifest_file.path,
                    format!(
                        "lists precomputed files for bundle {}, which cannot have them: {why}",
                        b.key
                    ),
                ));
            }
        }
        let mut pre = Vec::new();
        for (seg, fr) in manifest.segments.iter().zip(&b.files[1..]) {
            let f = opener(fr, Kind::Columns)?;
            crate::read::segment::check_ref(&f, fr)?;
            let def = match &f.meta.body {
                crate::format::meta::Body::Columns(cm) => match &cm.group {
                    crate::format::meta::Group::Embedding(d) => Some(d.clone()),
                    _ => None,
                },
                _ => None,
            };
            let want = def
                .as_ref()
                .map(|d| m.precompute_def(d.dtype))
                .filter(|w| Some(w) == def.as_ref())
                .ok_or_else(|| {
                    Error::corrupt(
                        &f.path,
                        format!(
                            "is not the precomputed first-layer item part of bundle {}",
                            b.key
                        ),
                    )
                })?;
            let (offset, stride) =
                crate::read::segment::check_vector_file(&f, &want, seg.id, seg.rows)?;
            pre.push(crate::model::PreFile {
                def: want,
                file: f,
                segment: seg.id,
                offset,
                stride,
                rows: seg.rows as usize,
            });
        }
        models.push(crate::model::LoadedModel {
            model: m,
            file: c,
            pre,
        });
    }
    drop(guard);
    let snap = Snapshot {
        models,
        towers,
        dir: dir.to_path_buf(),
        manifest,
        manifest_file,
        segments,
        _pin: pin,
        directory: std::sync::OnceLock::new(),
        directory_pending: std::sync::atomic::AtomicBool::new(false),
        damage: std::sync::OnceLock::new(),
        prefault: std::sync::OnceLock::new(),
    };
    if opts.verify {
        snap.verify()?;
    }
    Ok(Arc::new(snap))
}

/// A manifest may only name plain files inside the store directory.
fn valid_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}
