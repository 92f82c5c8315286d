//! A pinned, immutable view of the store: one manifest and every file it
//! references, mapped when the snapshot was pinned.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::format::container::Container;
use crate::format::meta::ManifestMeta;
use crate::model::{LoadedModel, Model};
use crate::read::columns::EmbeddingColumn;
use crate::read::pins::Pin;
use crate::read::segment::Segment;
use crate::schema::{EmbeddingDef, Schema};

/// Where an item lives in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ItemRef {
    /// Index into [`Snapshot::segments`].
    pub segment: usize,
    /// Row within that segment.
    pub row: usize,
}

/// What a successful verification covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// The snapshot whose files were checked.
    pub snapshot: u64,
    /// Number of files of the snapshot checked (manifest included).
    pub files: usize,
    /// Bytes checksummed (by [`crate::Store::verify_all`], files shared
    /// with a snapshot verified before are not read again or counted).
    pub bytes: u64,
    /// Manifests checked (header, footer, metadata checksum and validation).
    pub manifests: usize,
}

/// An immutable, numbered snapshot of a store. Obtained from
/// [`crate::Store::snapshot`] as an `Arc`; holding it keeps every file it
/// needs mapped, whatever the writer publishes or collects meanwhile.
#[derive(Debug)]
pub struct Snapshot {
    pub(crate) dir: PathBuf,
    pub(crate) manifest: ManifestMeta,
    pub(crate) manifest_file: Arc<Container>,
    pub(crate) segments: Vec<Segment>,
    /// Model bundles, sorted by key, with the file each came from.
    pub(crate) models: Vec<LoadedModel>,
    /// Item-tower-only bundles, sorted by key.
    pub(crate) towers: Vec<crate::model::LoadedTower>,
    pub(crate) _pin: Pin,
    /// The id directory, built on first use (see `directory.rs`); `None`
    /// inside when this snapshot does not use one.
    pub(crate) directory: std::sync::OnceLock<Option<crate::read::directory::Directory>>,
    /// Set while a background prefault is to build the id directory:
    /// queries meanwhile look ids up segment by segment instead of
    /// building it themselves (see `prefault.rs`).
    pub(crate) directory_pending: std::sync::atomic::AtomicBool,
    /// The background prefault of this snapshot, if one was started.
    pub(crate) prefault: std::sync::OnceLock<Arc<crate::read::prefault::PrefaultTask>>,
    /// The first damaged file the background prefault's checksums found
    /// (its path and what is wrong): from then on every query and read of
    /// this snapshot is [`Error::Corrupt`] naming it (see `prefault.rs`).
    pub(crate) damage: std::sync::OnceLock<(PathBuf, String)>,
}

impl Snapshot {
    /// `Err(Error::Corrupt)` naming the damaged file if the background
    /// prefault found one in this snapshot; reads and queries check this
    /// first, so that a damaged byte it has found is never served.
    #[inline]
    pub(crate) fn check_damage(&self) -> Result<()> {
        match self.damage.get() {
            None => Ok(()),
            Some((path, what)) => Err(Error::corrupt(path, what.clone())),
        }
    }

    /// The snapshot number (strictly increasing with each publish).
    pub fn number(&self) -> u64 {
        self.manifest.snapshot
    }

    /// The snapshot this one was built from, if any.
    pub fn parent(&self) -> Option<u64> {
        self.manifest.parent
    }

    /// When the snapshot was published.
    pub fn created(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_millis(self.manifest.created_unix_ms))
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// Builds this snapshot's in-memory id directory now, so that no query
    /// pays for it. Returns its size in bytes (0 for a single segment).
    ///
    /// A snapshot of several segments maps the live ids of every segment
    /// but the largest to their segment and row, in one in-memory table of
    /// `16 B × those rows / 0.7` (about 23 MB per million such items), so
    /// that a candidate lookup costs at most two probes (that table, then
    /// the largest segment's own index) whatever the number of segments.
    /// For a store shaped by live updates (a large base plus small recent
    /// segments) the table is small. Without this call the table is built
    /// by the first candidate query; [`crate::Store::open`] and
    /// [`crate::Store::refresh`] call it for the snapshot they pin (unless
    /// [`crate::OpenOptions::prepare_id_directory`] says not to; the
    /// [`crate::Writer`]'s own snapshots leave it to the first query).
    ///
    /// The id index and deletion bitmap of every segment the table reads
    /// are checksummed first; damage there is [`Error::Corrupt`] naming the
    /// file.
    pub fn prepare_id_directory(&self) -> Result<usize> {
        Ok(self.directory()?.map_or(0, |d| d.bytes()))
    }

    /// The id directory, built on first call (`None` for one segment).
    pub(crate) fn directory(&self) -> Result<Option<&crate::read::directory::Directory>> {
        if let Some(d) = self.directory.get() {
            return Ok(d.as_ref());
        }
        let built = crate::read::directory::Directory::build(&self.segments)?;
        Ok(self.directory.get_or_init(|| built).as_ref())
    }

    /// Builds the id directory unless `go_on` says to stop first (then
    /// `Ok(false)`, and nothing is cached: a query builds it).
    pub(crate) fn build_directory_until(&self, go_on: &dyn Fn() -> bool) -> Result<bool> {
        if self.directory.get().is_some() {
            return Ok(true);
        }
        match crate::read::directory::Directory::build_until(&self.segments, go_on)? {
            Some(d) => {
                let _ = self.directory.set(d);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The id directory for a query: the built one; `None` while a
    /// background prefault is building it (the query then looks ids up
    /// segment by segment, with the same result); otherwise built now.
    pub(crate) fn directory_for_query(&self) -> Result<Option<&crate::read::directory::Directory>> {
        if let Some(d) = self.directory.get() {
            return Ok(d.as_ref());
        }
        if self
            .directory_pending
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Ok(None);
        }
        self.directory()
    }

    /// Checksums (once per mapped file) every segment's id index and
    /// deletion bitmap, which say which item each row is, and refuses a
    /// snapshot in which the background prefault found a damaged file.
    /// Queries and [`Snapshot::item`] (and so the `get_*` reads) call it
    /// before relying on them; call it before the unchecked
    /// [`Snapshot::lookup`] and [`Snapshot::ids`] where a damaged file must
    /// be an error rather than an item read as absent or an id listed
    /// twice. The first call costs a CRC pass over those files; later ones
    /// an atomic load each.
    ///
    /// ```no_run
    /// # fn main() -> vstore::Result<()> {
    /// let snap = vstore::Store::open("items.vstore")?.snapshot();
    /// snap.check_identity()?;
    /// let live: Vec<u64> = snap.ids().collect();
    /// # Ok(()) }
    /// ```
    pub fn check_identity(&self) -> Result<()> {
        self.check_damage()?;
        self.segments
            .iter()
            .try_for_each(Segment::ensure_identity_verified)
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The schema of this snapshot.
    pub fn schema(&self) -> &Schema {
        &self.manifest.schema
    }

    /// Segments, oldest first.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Number of live (not deleted) items.
    pub fn len(&self) -> usize {
        self.segments.iter().map(|s| s.live_rows()).sum()
    }

    /// Whether the snapshot holds no live item.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A user metadata value set at publish time.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.manifest
            .user_meta
            .iter()
            .find(|kv| kv.key == key)
            .map(|kv| kv.value.as_str())
    }

    /// The embedding versions dropped earlier in the store's history, each
    /// with the snapshot that dropped it (a version the snapshot holds
    /// again, restored or forgotten, is not listed); their names are not
    /// given to other vectors ([`crate::DROPPED_VERSIONS_KEY`]).
    pub fn dropped_versions(&self) -> Result<Vec<(String, u64)>> {
        let record = crate::format::dropped::of_manifest(&self.manifest)?;
        Ok(record.into_iter().collect())
    }

    /// All user metadata, sorted by key.
    pub fn metadata_entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.manifest
            .user_meta
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_str()))
    }

    /// The `space@version` keys of the embedding columns this snapshot holds.
    pub fn embedding_keys(&self) -> Vec<String> {
        self.manifest.schema.embedding_keys()
    }

    /// The definition of embedding `key` (`space@version`); a key the
    /// snapshot does not hold is [`Error::VersionSkew`], naming those it holds.
    pub fn embedding_def(&self, key: &str) -> Result<&EmbeddingDef> {
        self.manifest
            .schema
            .embedding_def(key)
            .ok_or_else(|| self.skew(key))
    }

    pub(crate) fn skew(&self, key: &str) -> Error {
        Error::VersionSkew {
            snapshot: self.number(),
            requested: key.to_string(),
            available: self.embedding_keys(),
        }
    }

    /// The embedding column `key` of segment `segment` (index into
    /// [`Snapshot::segments`]). Unknown keys are [`Error::VersionSkew`].
    pub fn embedding(&self, segment: usize, key: &str) -> Result<EmbeddingColumn<'_>> {
        self.check_damage()?;
        let seg = self.segments.get(segment).ok_or_else(|| {
            Error::InvalidInput(format!(
                "segment index {segment} out of range (snapshot {} has {})",
                self.number(),
                self.segments.len()
            ))
        })?;
        seg.embedding_opt(key).ok_or_else(|| self.skew(key))
    }

    /// The `space@version` keys that have model bundles in this snapshot,
    /// each once, sorted.
    pub fn model_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = (self.models.iter())
            .map(|m| m.model.key().to_string())
            .collect();
        keys.dedup();
        keys
    }

    /// The names of the bundles this snapshot holds for `key`
    /// (`space@version`), sorted.
    pub fn model_names(&self, key: &str) -> Vec<String> {
        let mut names: Vec<String> = (self.models.iter())
            .filter(|m| m.model.key() == key)
            .map(|m| m.model.name().to_string())
            .collect();
        names.sort();
        names
    }

    /// The model bundle for `key` (`space@version`) when the snapshot holds
    /// exactly one for it. A key without a bundle is [`Error::NoModel`],
    /// naming the keys that have bundles; a key with several is
    /// [`Error::ModelChoice`], naming them (use [`Snapshot::model_named`]).
    pub fn model(&self, key: &str) -> Result<&Model> {
        self.loaded_model(key, None).map(|m| &*m.model)
    }

    /// The model bundle named `name` for `key` (`space@version`).
    pub fn model_named(&self, key: &str, name: &str) -> Result<&Model> {
        self.loaded_model(key, Some(name)).map(|m| &*m.model)
    }

    /// The bundle for `key` named `name`, or the only one if `name` is
    /// `None`.
    pub(crate) fn loaded_model(&self, key: &str, name: Option<&str>) -> Result<&LoadedModel> {
        let mut of_key = self
            .models
            .iter()
            .filter(|m| m.model.key() == key)
            .peekable();
        if of_key.peek().is_none() {
            return Err(Error::NoModel {
                snapshot: self.number(),
                requested: key.to_string(),
                available: self.model_keys(),
            });
        }
        let found: Vec<&LoadedModel> = match name {
            Some(n) => of_key.filter(|m| m.model.name() == n).collect(),
            None => of_key.collect(),
        };
        match found[..] {
            [m] => Ok(m),
            _ => Err(Error::ModelChoice {
                snapshot: self.number(),
                key: key.to_string(),
                requested: name.map(str::to_string),
                names: self.model_names(key),
            }),
        }
    }

    /// Whether the bundle for `key` (the only one; see
    /// [`Snapshot::model`]) was added with its item part precomputed (see
    /// [`crate::Transaction::add_model_precomputed`]).
    pub fn model_is_precomputed(&self, key: &str) -> bool {
        self.loaded_model(key, None)
            .is_ok_and(|m| !m.pre.is_empty())
    }

    /// [`Snapshot::model_is_precomputed`] for the bundle named `name`.
    pub fn model_named_is_precomputed(&self, key: &str, name: &str) -> bool {
        self.loaded_model(key, Some(name))
            .is_ok_and(|m| !m.pre.is_empty())
    }

    /// The file of the bundle whose item tower [`Snapshot::item_tower`]
    /// returns for `key` (its name identifies the tower: bundle files are
    /// written once and never replaced).
    pub(crate) fn item_tower_file(&self, key: &str) -> Option<&std::path::Path> {
        (self.towers.iter())
            .find(|t| t.tower.key == key)
            .map(|t| t.file.path.as_path())
            .or_else(|| {
                (self.models.iter())
                    .filter(|m| m.model.key() == key)
                    .find(|m| m.model.item_tower.is_some())
                    .map(|m| m.file.path.as_path())
            })
    }

    /// The item tower of embedding `key` (`space@version`), if the
    /// snapshot holds one: from its item-tower-only bundle, else from a
    /// three-tower bundle of `key` that carries one (they all carry the
    /// same).
    pub(crate) fn item_tower(&self, key: &str) -> Option<&std::sync::Arc<crate::model::ItemTower>> {
        (self.towers.iter())
            .find(|t| t.tower.key == key)
            .map(|t| &t.tower.tower)
            .or_else(|| {
                (self.models.iter())
                    .filter(|m| m.model.key() == key)
                    .find_map(|m| m.model.item_tower.as_ref())
            })
    }

    /// Whether embedding `key` (`space@version`) has an item tower in this
    /// snapshot, so that items added without a vector for it get one
    /// computed from their profile.
    pub fn has_item_tower(&self, key: &str) -> bool {
        self.item_tower(key).is_some()
    }

    /// A one-line description of `key`'s item tower (inputs, layer widths,
    /// FLOPs per item), if it has one.
    pub fn item_tower_summary(&self, key: &str) -> Option<String> {
        self.item_tower(key).map(|t| t.describe())
    }

    /// Whether the snapshot holds an item-tower-only bundle for `key`
    /// (`space@version`).
    pub fn has_item_tower_bundle(&self, key: &str) -> bool {
        self.towers.iter().any(|t| t.tower.key == key)
    }

    /// How many live items have a vector for embedding `key` that the store
    /// computed with the version's item tower (rather than one given by
    /// the caller). [`Error::VersionSkew`] if the snapshot does not hold
    /// `key`.
    ///
    /// ```
    /// # use vstore::*;
    /// # fn main() -> vstore::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let schema = Schema::new().embedding("item", "v1", 4, Dtype::F32);
    /// let mut w = Writer::create(dir.path(), schema)?;
    /// let mut tx = w.begin();
    /// tx.add_items(ItemBatch::new(vec![1, 2]).embedding("item@v1", vec![0.5; 8]))?;
    /// let snap = tx.commit()?;
    /// assert_eq!(snap.computed_count("item@v1")?, 0);
    /// assert!(!snap.is_computed(1, "item@v1")?);
    /// # Ok(()) }
    /// ```
    pub fn computed_count(&self, key: &str) -> Result<u64> {
        if self.schema().embedding_def(key).is_none() {
            return Err(self.skew(key));
        }
        Ok(self.segments.iter().map(|s| s.computed_live(key)).sum())
    }

    /// Whether live item `id`'s vector for embedding `key` was computed by
    /// the store with the version's item tower. [`Error::UnknownId`] if the
    /// snapshot does not hold `id`, [`Error::VersionSkew`] if it does not
    /// hold `key`.
    pub fn is_computed(&self, id: u64, key: &str) -> Result<bool> {
        if self.schema().embedding_def(key).is_none() {
            return Err(self.skew(key));
        }
        let r = self.locate(id, "is_computed")?;
        Ok(self.segments[r.segment].is_computed(key, r.row))
    }

    /// Where live item `id` is, if the snapshot holds it: the fast,
    /// unchecked lookup. It never returns another item's row (the row's own
    /// id is compared), but a damaged id index or deletion bitmap that has
    /// not been checksummed in this process can make an item read as absent
    /// (or a deleted one as live). [`Snapshot::item`] checks first.
    #[inline]
    pub fn lookup(&self, id: u64) -> Option<ItemRef> {
        crate::read::segment::find_live(self.segments.len(), |i| &self.segments[i], id)
            .map(|(segment, row)| ItemRef { segment, row })
    }

    /// Where live item `id` is, if the snapshot holds it, with the id
    /// indexes and deletion bitmaps checksummed first (once per mapped
    /// file): right, or [`Error::Corrupt`] naming the damaged file.
    pub fn item(&self, id: u64) -> Result<Option<ItemRef>> {
        self.check_identity()?;
        Ok(self.lookup(id))
    }

    fn locate(&self, id: u64, what: &str) -> Result<ItemRef> {
        self.item(id)?.ok_or_else(|| Error::UnknownId {
            id,
            snapshot: self.number(),
            context: what.to_string(),
        })
    }

    /// Item `id`'s vector of embedding `key`, decoded to f32.
    pub fn get_embedding(&self, id: u64, key: &str) -> Result<Vec<f32>> {
        self.embedding_def(key)?;
        let at = self.locate(id, "embedding lookup")?;
        Ok(self.embedding(at.segment, key)?.to_vec(at.row))
    }

    /// Item `id`'s categorical profile value (`None` if it was missing; the
    /// column's default is then what scoring uses).
    pub fn get_categorical(&self, id: u64, column: &str) -> Result<Option<u32>> {
        let at = self.locate(id, "profile lookup")?;
        let c = self.segments[at.segment].categorical(column)?;
        Ok((!c.is_missing(at.row)).then(|| c.get(at.row)))
    }

    /// Item `id`'s numeric profile value (`None` if missing).
    pub fn get_numeric(&self, id: u64, column: &str) -> Result<Option<f32>> {
        let at = self.locate(id, "profile lookup")?;
        let c = self.segments[at.segment].numeric(column)?;
        Ok((!c.is_missing(at.row)).then(|| c.get(at.row)))
    }

    /// Item `id`'s statistic (`None` if missing).
    pub fn get_stat(&self, id: u64, column: &str) -> Result<Option<f32>> {
        let at = self.locate(id, "statistics lookup")?;
        let c = self.segments[at.segment].stat(column)?;
        Ok((!c.is_missing(at.row)).then(|| c.get(at.row)))
    }

    /// Iterates over the live ids, segment by segment, in row order
    /// (unchecked: see [`Snapshot::check_identity`]).
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.segments.iter().flat_map(|s| {
            s.ids()
                .iter()
                .enumerate()
                .filter(move |(r, _)| !s.is_deleted(*r))
                .map(|(_, &id)| id)
        })
    }

    /// Names of the files this snapshot references (manifest first).
    pub fn files(&self) -> Vec<String> {
        self.containers()
            .into_iter()
            .map(|c| file_name(&c.path))
            .collect()
    }

    /// Every file of this snapshot, in the order of [`Snapshot::files`],
    /// with the format version it was written in. A store updated by a
    /// newer build holds files of several versions (each is read by its
    /// own version's rules; see `format/FORMAT.md`).
    pub fn file_versions(&self) -> Vec<(String, u32)> {
        self.containers()
            .into_iter()
            .map(|c| (file_name(&c.path), c.version))
            .collect()
    }

    pub(crate) fn containers(&self) -> Vec<&Container> {
        let mut v: Vec<&Container> = vec![&self.manifest_file];
        for s in &self.segments {
            v.extend(s.files().into_iter().map(|f| &**f));
        }
        for m in &self.models {
            v.push(&m.file);
            v.extend(m.pre.iter().map(|p| &*p.file));
        }
        v.extend(self.towers.iter().map(|t| &*t.file));
        v
    }

    /// Recomputes the checksum of every data block of every file of this
    /// snapshot and checks the id indexes and bitmaps. Reads every byte.
    pub fn verify(&self) -> Result<VerifyReport> {
        self.verify_sharing(&mut HashSet::new())
    }

    /// [`Snapshot::verify`], skipping the checksums of files in `seen`
    /// (verified already) and adding the files it verifies.
    pub(crate) fn verify_sharing(&self, seen: &mut HashSet<PathBuf>) -> Result<VerifyReport> {
        let mut report = VerifyReport {
            snapshot: self.number(),
            manifests: 1,
            files: 1,
            bytes: self.manifest_file.len(),
        };
        for s in &self.segments {
            report.bytes += s.verify(seen)?;
            report.files += s.files().len();
        }
        let tower_files = self.towers.iter().map(|t| &t.file);
        let model_files = (self.models.iter())
            .flat_map(|m| std::iter::once(&m.file).chain(m.pre.iter().map(|p| &p.file)));
        for c in model_files.chain(tower_files) {
            if !seen.contains(&c.path) {
                c.verify_data()?;
                seen.insert(c.path.clone());
                report.bytes += c.len();
            }
            report.files += 1;
        }
        Ok(report)
    }
}

pub(crate) fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
