//! The plan of a distributed build and the receipt a worker returns, and
//! the writer's side of planning and aborting.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{carries_number, check_job_id, job_dir, plan_path, published_job};
use crate::error::{Error, Result};
use crate::format::meta::SegmentMeta;
use crate::schema::Schema;
use crate::write::publish::sync_dir;
use crate::write::writer::{create_dirs, now_ms, Writer};

const PLAN_FORMAT: &str = "vstore.build_plan.v1";
const RECEIPT_FORMAT: &str = "vstore.build_receipt.v1";

/// A distributed build job, fixed by the driver ([`Writer::plan_build`]):
/// the snapshot it builds on, the schema, and a segment id per part. Ship
/// it to workers as JSON ([`BuildPlan::to_json`]); each stages its parts
/// with [`super::stage`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildPlan {
    pub(crate) format: String,
    pub(crate) job: String,
    pub(crate) store: PathBuf,
    pub(crate) base: Option<u64>,
    /// The snapshot number reserved for the job's file names.
    pub(crate) number: u64,
    pub(crate) first_segment: u64,
    pub(crate) parts: u32,
    pub(crate) schema: Schema,
    pub(crate) created_unix_ms: u64,
    /// For each embedding version with an item tower in the base snapshot,
    /// the file name of the bundle carrying it (stage computes missing
    /// vectors with that tower; a rebased commit checks it is still the
    /// version's tower). `None` in plans written before it was recorded:
    /// the commit then reads the base snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) towers: Option<std::collections::BTreeMap<String, String>>,
}

impl BuildPlan {
    /// The job id.
    pub fn job(&self) -> &str {
        &self.job
    }

    /// The store directory as the driver named it.
    pub fn store(&self) -> &Path {
        &self.store
    }

    /// The same plan with the store at `path`: for workers that mount the
    /// store's directory under another name.
    pub fn with_store(mut self, path: impl Into<PathBuf>) -> BuildPlan {
        self.store = path.into();
        self
    }

    /// The snapshot the job builds on (`None`: an empty store).
    pub fn base(&self) -> Option<u64> {
        self.base
    }

    /// How many parts the job has (one segment each).
    pub fn parts(&self) -> u32 {
        self.parts
    }

    /// The schema every part is written with.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The segment id of `part`.
    pub fn segment_of(&self, part: u32) -> u64 {
        self.first_segment + u64::from(part)
    }

    /// The plan as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a plan serializes")
    }

    /// A plan from [`BuildPlan::to_json`]'s output.
    pub fn from_json(s: &str) -> Result<BuildPlan> {
        let p: BuildPlan =
            serde_json::from_str(s).map_err(|e| Error::InvalidInput(format!("build plan: {e}")))?;
        if p.format != PLAN_FORMAT {
            return Err(Error::InvalidInput(format!(
                "build plan: format {:?}, this build reads {PLAN_FORMAT:?}",
                p.format
            )));
        }
        check_job_id(&p.job)?;
        if p.parts == 0 || p.first_segment.checked_add(u64::from(p.parts)).is_none() {
            return Err(Error::InvalidInput(format!(
                "build plan of job {}: {} parts from segment {}",
                p.job, p.parts, p.first_segment
            )));
        }
        Ok(p)
    }

    /// The plan of job `job` staged in the store at `dir` (its
    /// `_staging/<job>/PLAN.json`), with the store path `dir`: how a driver
    /// that runs again resumes a job it planned before.
    pub fn load(dir: impl AsRef<Path>, job: &str) -> Result<BuildPlan> {
        check_job_id(job)?;
        let path = plan_path(dir.as_ref(), job);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("read", &path, e))?;
        let plan = BuildPlan::from_json(&text).map_err(|e| Error::Corrupt {
            path: path.clone(),
            what: e.to_string(),
        })?;
        // A stage area can outlive its job's publish (a driver killed
        // before removing it): resuming it would stage parts that the
        // commit, finding the job published, would drop.
        if let Some(n) = published_job(dir.as_ref(), job, plan.base)? {
            return Err(Error::InvalidInput(format!(
                "job {job} was published as snapshot {n}; its stage area ({}) is a leftover \
                 that gc removes: nothing to resume or abort (plan a new job id for new data)",
                path.display()
            )));
        }
        Ok(plan.with_store(dir.as_ref()))
    }

    /// Whether `other` is this plan (the store path aside).
    pub(crate) fn same_job(&self, other: &BuildPlan) -> bool {
        let mut o = other.clone();
        o.store = self.store.clone();
        *self == o
    }

    /// The plan as the store holds it in its staging area.
    pub(crate) fn check_staged(&self) -> Result<()> {
        let path = plan_path(&self.store, &self.job);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::InvalidInput(format!(
                    "job {}: {} does not exist (the job was aborted, committed, or \
                     collected by gc; plan it again)",
                    self.job,
                    path.display()
                ))
            } else {
                Error::io("read", &path, e)
            }
        })?;
        let staged = BuildPlan::from_json(&text).map_err(|e| Error::Corrupt {
            path: path.clone(),
            what: e.to_string(),
        })?;
        if !self.same_job(&staged) {
            return Err(Error::InvalidInput(format!(
                "job {}: the plan given differs from {} (the job was planned again)",
                self.job,
                path.display()
            )));
        }
        Ok(())
    }
}

/// What a worker returns for one staged part: where its files are, their
/// lengths and checksums (the segment's manifest entry), its rows and id
/// range. Commit checks all of it against the files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildReceipt {
    pub(crate) format: String,
    pub(crate) job: String,
    pub(crate) part: u32,
    pub(crate) segment: u64,
    /// The attempt directory (under the job's staging directory).
    pub(crate) attempt: String,
    pub(crate) rows: u64,
    pub(crate) min_id: Option<u64>,
    pub(crate) max_id: Option<u64>,
    /// `None` for a part with no rows (it writes no files).
    pub(crate) meta: Option<SegmentMeta>,
}

impl BuildReceipt {
    pub(crate) fn new(plan: &BuildPlan, part: u32, attempt: String) -> BuildReceipt {
        BuildReceipt {
            format: RECEIPT_FORMAT.into(),
            job: plan.job.clone(),
            part,
            segment: plan.segment_of(part),
            attempt,
            rows: 0,
            min_id: None,
            max_id: None,
            meta: None,
        }
    }

    /// The part this receipt is for.
    pub fn part(&self) -> u32 {
        self.part
    }

    /// The job id.
    pub fn job(&self) -> &str {
        &self.job
    }

    /// How many rows the part holds.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The smallest and largest id of the part (`None` if it is empty).
    pub fn id_range(&self) -> Option<(u64, u64)> {
        self.min_id.zip(self.max_id)
    }

    /// The receipt as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a receipt serializes")
    }

    /// A receipt from [`BuildReceipt::to_json`]'s output.
    pub fn from_json(s: &str) -> Result<BuildReceipt> {
        let r: BuildReceipt = serde_json::from_str(s)
            .map_err(|e| Error::InvalidInput(format!("build receipt: {e}")))?;
        if r.format != RECEIPT_FORMAT {
            return Err(Error::InvalidInput(format!(
                "build receipt: format {:?}, this build reads {RECEIPT_FORMAT:?}",
                r.format
            )));
        }
        Ok(r)
    }
}

impl Writer {
    /// Plans a distributed build of `parts` parts on the newest snapshot:
    /// reserves a snapshot number for the job's file names and a segment id
    /// per part, and writes the plan durably to the store's staging area
    /// (`_staging/<job>/PLAN.json`), where writers opened later see the
    /// reservation. Refused if `job` is staged already or was published.
    ///
    /// ```
    /// # fn main() -> vstore::Result<()> {
    /// use vstore::{Dtype, ItemBatch, Schema, Writer};
    /// let dir = tempfile::tempdir().unwrap();
    /// let schema = Schema::new()
    ///     .categorical("category", 0)
    ///     .embedding("prerank", "v1", 2, Dtype::F32);
    /// let plan = Writer::create(dir.path(), schema)?.plan_build("nightly-1", 2)?;
    /// // On the workers (any process that sees the directory):
    /// let receipts = (0..2u32)
    ///     .map(|part| {
    ///         let ids = vec![10 * u64::from(part) + 1, 10 * u64::from(part) + 2];
    ///         let batch = ItemBatch::new(ids)
    ///             .categorical("category", vec![1, 2])
    ///             .embedding("prerank@v1", vec![1.0, 0.0, 0.0, 1.0]);
    ///         vstore::stage(&plan, part, batch)
    ///     })
    ///     .collect::<vstore::Result<Vec<_>>>()?;
    /// // Back on the driver: one snapshot with both parts.
    /// let snap = vstore::commit_build(dir.path(), &plan, &receipts, &Default::default())?;
    /// assert_eq!(snap.len(), 4);
    /// # Ok(()) }
    /// ```
    pub fn plan_build(&mut self, job: &str, parts: u32) -> Result<BuildPlan> {
        self.check_poisoned()?;
        check_job_id(job)?;
        if parts == 0 {
            return Err(Error::InvalidInput(format!(
                "job {job}: parts must be at least 1"
            )));
        }
        let jd = job_dir(&self.dir, job);
        if std::fs::symlink_metadata(&jd).is_ok() {
            if std::fs::symlink_metadata(plan_path(&self.dir, job)).is_ok() {
                return Err(Error::InvalidInput(format!(
                    "job {job} is planned already ({} exists): commit or abort it, or pick another id",
                    jd.display()
                )));
            }
            // A directory without its plan is a plan that failed (or was
            // killed) before its PLAN.json was durable: no worker can have
            // had it (a plan is returned only once it is), and no other
            // writer is writing it (this one holds the lock). Planned anew.
            remove_staging(&jd)?;
        }
        if let Some(n) = published_job(&self.dir, job, None)? {
            return Err(Error::InvalidInput(format!(
                "job {job} was published already as snapshot {n}; pick another id"
            )));
        }
        let base = self.snapshot();
        let first_segment = (base.as_ref())
            .map_or(0, |b| b.manifest.next_segment_id)
            .max(self.segment_floor);
        let end = first_segment
            .checked_add(u64::from(parts))
            .filter(|&e| e < u64::MAX)
            .ok_or_else(|| Error::InvalidInput("segment ids are exhausted".into()))?;
        let number = self.next_snapshot;
        let towers = (self.schema.embeddings.iter())
            .filter_map(|d| {
                let key = d.key();
                let file = base.as_ref()?.item_tower_file(&key)?.file_name()?;
                Some((key, file.to_string_lossy().into_owned()))
            })
            .collect();
        let plan = BuildPlan {
            format: PLAN_FORMAT.into(),
            job: job.into(),
            store: self.dir.clone(),
            base: base.as_ref().map(|b| b.number()),
            number,
            first_segment,
            parts,
            schema: self.schema.clone(),
            created_unix_ms: now_ms(),
            towers: Some(towers),
        };
        create_dirs(&*self.fs, &jd)?;
        let written = write_durably(&plan_path(&self.dir, job), plan.to_json().as_bytes())
            .and_then(|()| sync_dir(&*self.fs, &jd));
        if let Err(e) = written {
            // (A full disk, say.) Nothing half-planned stays behind to
            // block the job id; the error is the one that stopped it.
            let _ = remove_staging(&jd);
            return Err(e);
        }
        self.next_snapshot = number.saturating_add(1);
        self.segment_floor = end;
        Ok(plan)
    }

    /// Discards a job: removes its staging directory and any of its files
    /// a commit that did not finish moved into the store. Refused if the
    /// job was published (then there is nothing to discard).
    pub fn abort_build(&mut self, plan: &BuildPlan) -> Result<()> {
        self.check_poisoned()?;
        check_job_id(&plan.job)?;
        if let Some(n) = published_job(&self.dir, &plan.job, plan.base)? {
            return Err(Error::InvalidInput(format!(
                "job {} was published as snapshot {n}; nothing to abort",
                plan.job
            )));
        }
        let jd = job_dir(&self.dir, &plan.job);
        if jd.exists() {
            plan.clone().with_store(&self.dir).check_staged()?;
        }
        // What a commit stopped half-way moved in carries the plan's
        // number; but so may a published snapshot's files (a number is
        // taken again after an abort, and the manifest that recorded this
        // job may have been collected): only files no manifest references
        // are removed.
        let referenced = referenced_files(&self.dir)?;
        let list = std::fs::read_dir(&self.dir).map_err(|e| Error::io("list", &self.dir, e))?;
        for e in list {
            let e = e.map_err(|e| Error::io("list", &self.dir, e))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if carries_number(name, plan.number)
                && !referenced.contains(name)
                && e.file_type().is_ok_and(|t| t.is_file())
            {
                let path = self.dir.join(name);
                self.fs
                    .remove(&path)
                    .map_err(|e| Error::io("remove", &path, e))?;
            }
        }
        sync_dir(&*self.fs, &self.dir)?;
        remove_staging(&jd)
    }
}

/// Every data file a manifest in `dir` references; an unreadable manifest
/// is an error naming it (which files it holds cannot be told).
fn referenced_files(dir: &Path) -> Result<std::collections::HashSet<String>> {
    let mut out = std::collections::HashSet::new();
    for n in crate::read::store::list_manifests(dir)? {
        let (_, m) = crate::read::store::read_manifest(dir, n).map_err(|e| {
            Error::InvalidInput(format!(
                "cannot tell which files {} references ({e}); nothing removed: recover the \
                 store first",
                crate::format::names::manifest(n)
            ))
        })?;
        out.extend(crate::write::gc::manifest_files(&m));
    }
    Ok(out)
}

/// Removes a job's staging directory (gone already is fine), and the
/// staging root (`_staging`) if no other job is left in it, so that a
/// directory whose only jobs were aborted is empty again (a new store's
/// directory is then one `vstore-tool build` accepts).
pub(crate) fn remove_staging(jd: &Path) -> Result<()> {
    match std::fs::remove_dir_all(jd) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove", jd, e)),
    }
    if let Some(root) = jd.parent() {
        // Fails (and is left) while another job is staged.
        let _ = std::fs::remove_dir(root);
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary name, synced, then renamed
/// into place (no-replace) and the directory synced.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("write", &tmp, e))?;
    crate::io::fs::rename_noreplace(&tmp, path).map_err(|e| Error::io("rename", &tmp, e))?;
    Ok(())
}
