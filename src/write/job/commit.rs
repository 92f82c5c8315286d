//! The driver's commit of a distributed build: receipts checked against
//! the staged files, ids checked, files moved into the store, one snapshot
//! published.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::plan::{remove_staging, BuildPlan, BuildReceipt};
use super::{check_job_id, job_dir, published_job, JOBS_KEY, JOB_KEY};
use crate::error::{Error, Result};
use crate::format::container::{Container, Kind};
use crate::format::meta::{FileRef, SegmentMeta};
use crate::format::names;
use crate::read::segment::Segment;
use crate::read::snapshot::Snapshot;
use crate::read::store::Store;
use crate::write::publish::sync_dir;
use crate::write::transaction::{SegState, View};
use crate::write::writer::{writer_open_options, Writer};

/// How [`commit_build`] goes about a commit.
#[derive(Debug, Clone)]
pub struct CommitOptions {
    /// If the store published another snapshot since the job was planned,
    /// add the job's segments on top of the newest one (its ids are then
    /// checked against that snapshot) instead of failing with
    /// [`Error::Conflict`]. The schema must not have changed.
    pub rebase: bool,
    /// Merge the snapshot's segments into one in the same commit (see
    /// [`crate::Transaction::compact`]), for the fewest id probes per
    /// candidate at the cost of rewriting every row once.
    pub compact: bool,
    /// How long [`commit_build`] waits for another writer's lock.
    pub lock_timeout: Duration,
}

impl Default for CommitOptions {
    fn default() -> Self {
        CommitOptions {
            rebase: false,
            compact: false,
            lock_timeout: Duration::from_secs(60),
        }
    }
}

/// Commits a distributed build: opens the store's writer (waiting up to
/// `opts.lock_timeout` for another writer's lock) and runs
/// [`Writer::commit_build`]. Retried with the same plan after it succeeded,
/// it returns the snapshot already published.
pub fn commit_build(
    dir: impl AsRef<Path>,
    plan: &BuildPlan,
    receipts: &[BuildReceipt],
    opts: &CommitOptions,
) -> Result<Arc<Snapshot>> {
    open_for_job(dir.as_ref(), plan, opts.lock_timeout)?.commit_build(plan, receipts, opts)
}

/// Discards a job that was not published ([`Writer::abort_build`]),
/// opening the store's writer (waiting up to `lock_timeout` for it), also
/// in a store that has published nothing yet.
pub fn abort_build(dir: impl AsRef<Path>, plan: &BuildPlan, lock_timeout: Duration) -> Result<()> {
    open_for_job(dir.as_ref(), plan, lock_timeout)?.abort_build(plan)
}

/// Discards job `job` of the store in `dir` by its id: [`abort_build`]
/// with its staged plan, or, for a job whose plan was never written whole
/// (its directory holds no `PLAN.json`: a plan stopped by a full disk or a
/// kill; no worker can hold it), removes its directory under the writer
/// lock (waiting up to `lock_timeout` for it). Refused, naming the job, if
/// it is not staged (saying so if it was published).
pub fn abort_job(dir: impl AsRef<Path>, job: &str, lock_timeout: Duration) -> Result<()> {
    let dir = dir.as_ref();
    check_job_id(job)?;
    let staged = |dir: &Path| std::fs::symlink_metadata(super::plan_path(dir, job)).is_ok();
    if staged(dir) {
        return abort_build(dir, &BuildPlan::load(dir, job)?, lock_timeout);
    }
    let jd = job_dir(dir, job);
    if std::fs::symlink_metadata(&jd).is_err() {
        let done = if crate::read::store::list_manifests(dir).is_ok_and(|m| !m.is_empty()) {
            published_job(dir, job, None)?
        } else {
            None
        };
        return Err(Error::InvalidInput(match done {
            Some(n) => format!("job {job} was published as snapshot {n}; nothing to abort"),
            None => format!(
                "job {job} is not staged in {} (no {}): nothing to abort",
                dir.display(),
                jd.display()
            ),
        }));
    }
    let lock = while_locked(lock_timeout, || crate::write::writer::lock(dir).map(Some))?;
    if staged(dir) {
        // Planned whole meanwhile (by the writer that held the lock).
        drop(lock);
        return abort_build(dir, &BuildPlan::load(dir, job)?, lock_timeout);
    }
    remove_staging(&jd)
}

/// The writer of `dir` for a job's commit or abort, waiting up to
/// `lock_timeout` for another writer's lock.
fn open_for_job(dir: &Path, plan: &BuildPlan, lock_timeout: Duration) -> Result<Writer> {
    while_locked(lock_timeout, || match Writer::open(dir) {
        // An empty store (the plan was made by a writer from
        // `Writer::create` that published nothing yet).
        Err(Error::NotAStore { .. }) if plan.base.is_none() => {
            match Writer::create(dir, plan.schema.clone()) {
                // Published meanwhile: open it on the next turn.
                Err(Error::InvalidInput(_)) => Ok(None),
                r => r.map(Some),
            }
        }
        r => r.map(Some),
    })
}

/// Runs `attempt` until it gives a value: again after 20 ms when it
/// returns `None` or is refused as [`Error::Locked`] (another writer),
/// until `lock_timeout` has passed (then the `Locked` error is returned).
fn while_locked<T>(
    lock_timeout: Duration,
    mut attempt: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        match attempt() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(Error::Locked { .. }) if start.elapsed() < lock_timeout => {}
            Err(e) => return Err(e),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Writer {
    /// Commits a distributed build (see [`commit_build`], which opens the
    /// writer for you): checks that the plan is the one staged and that
    /// there is exactly one receipt per part, opens each receipt's segment
    /// and verifies every file against it (lengths, checksums, segment id,
    /// rows, id range), checks that no id is in two parts or in the
    /// snapshot it builds on ([`Error::DuplicateId`] naming up to ten),
    /// moves the files into the store (never replacing a file) and
    /// publishes one snapshot recording the job id. If the store published
    /// meanwhile, [`Error::Conflict`] unless `opts.rebase`. Retried after
    /// it succeeded (the caller lost the answer), it returns the snapshot
    /// already published, after checking that the receipts are the ones
    /// it published (a receipt of another attempt of a part is refused,
    /// never reported as published); refused if `gc` has collected that
    /// snapshot since.
    pub fn commit_build(
        &mut self,
        plan: &BuildPlan,
        receipts: &[BuildReceipt],
        opts: &CommitOptions,
    ) -> Result<Arc<Snapshot>> {
        self.check_poisoned()?;
        check_job_id(&plan.job)?;
        let plan = plan.clone().with_store(&self.dir);
        let jd = job_dir(&self.dir, &plan.job);
        if let Some(n) = published_job(&self.dir, &plan.job, plan.base)? {
            let _ = remove_staging(&jd);
            let snap = match self.snapshot().filter(|s| s.number() == n) {
                Some(s) => s,
                None if !self.dir.join(names::manifest(n)).exists() => {
                    return Err(Error::InvalidInput(format!(
                        "job {} was published as snapshot {n}, which gc has collected since: \
                         nothing to commit (the job is done)",
                        plan.job
                    )))
                }
                None => Store::open_at(&self.dir, n, writer_open_options())?.snapshot(),
            };
            same_as_published(&plan.job, &snap, receipts)?;
            return Ok(snap);
        }
        plan.check_staged()?;
        let receipts = in_part_order(&plan, receipts)?;
        let newest = self.snapshot().map(|s| s.number());
        if newest != plan.base {
            let shown =
                |n: Option<u64>| n.map_or("none (an empty store)".into(), |n| n.to_string());
            if !opts.rebase {
                return Err(Error::Conflict {
                    path: self.dir.clone(),
                    what: format!(
                        "job {} was planned on snapshot {} but the newest is now {} (another \
                         writer published meanwhile); commit again with rebase (CommitOptions \
                         {{ rebase: true }}, Python rebase=True) to add its parts on top of the \
                         newest snapshot, or abort the job and plan it again",
                        plan.job,
                        shown(plan.base),
                        shown(newest)
                    ),
                });
            }
            if self.schema != plan.schema {
                return Err(Error::Conflict {
                    path: self.dir.clone(),
                    what: format!(
                        "job {} was planned with another schema than snapshot {}'s; its \
                         parts cannot be rebased: abort the job and plan it again",
                        plan.job,
                        shown(newest)
                    ),
                });
            }
        }
        // Every part's segment, opened where its files are and verified.
        let mut staged = Vec::new();
        for r in &receipts {
            if let Some(meta) = &r.meta {
                let seg = open_staged(&self.dir, &plan, r, meta)?;
                staged.push((r.part, meta.clone(), seg));
            }
        }
        check_disjoint(&plan, &staged)?;
        if newest != plan.base {
            self.check_towers_unchanged(&plan, &staged)?;
        }
        let mut tx = self.begin();
        tx.check_indexes()?;
        for (part, _, seg) in &staged {
            for (row, &id) in seg.ids().iter().enumerate() {
                if let Some((s, at)) = tx.lookup(id) {
                    return Err(Error::DuplicateId {
                        id,
                        context: format!(
                            "job {} part {part} row {row}, and segment {} row {at} of snapshot {} \
                             (a build adds new ids only)",
                            plan.job,
                            tx.segments[s].meta.id,
                            tx.base.as_ref().map_or(0, |b| b.number())
                        ),
                    });
                }
            }
        }
        let metas: Vec<SegmentMeta> = staged.into_iter().map(|(_, m, _)| m).collect();
        let dir = tx.w.dir.clone();
        for r in &receipts {
            if let Some(meta) = &r.meta {
                move_in(&dir, &jd.join(&r.attempt), meta, &*tx.w.fs)?;
            }
        }
        sync_dir(&*tx.w.fs, &dir)?;
        for meta in metas {
            tx.segments.push(SegState {
                meta,
                view: View::Base(usize::MAX),
            });
            let i = tx.segments.len() - 1;
            tx.reopen(i)?;
        }
        tx.next_segment_id = tx
            .next_segment_id
            .max(plan.first_segment + u64::from(plan.parts));
        tx.user_meta.insert(JOB_KEY.into(), plan.job.clone());
        // The store's record of published jobs (carried forward).
        let mut jobs = crate::format::dropped::parse_record(
            JOBS_KEY,
            tx.user_meta.get(JOBS_KEY).map(String::as_str),
            tx.number,
        )?;
        jobs.insert(plan.job.clone(), tx.number);
        if let Some(v) = crate::format::dropped::encode(&jobs) {
            tx.user_meta.insert(JOBS_KEY.into(), v);
        }
        if opts.compact {
            tx.compact()?;
        }
        let snap = tx.commit()?;
        // The job is published: its staging area is garbage now (gc would
        // remove it later anyway).
        let _ = remove_staging(&jd);
        Ok(snap)
    }
}

impl Writer {
    /// For a rebased commit: the vectors its parts computed at stage time
    /// (with the item tower of the plan's base snapshot) must be the ones
    /// the newest snapshot's tower makes; a tower replaced or dropped since
    /// would publish another tower's vectors as computed.
    fn check_towers_unchanged(
        &self,
        plan: &BuildPlan,
        staged: &[(u32, SegmentMeta, crate::read::segment::Segment)],
    ) -> Result<()> {
        let newest = self.snapshot();
        let mut base = None;
        for def in &plan.schema.embeddings {
            let key = def.key();
            if !staged.iter().any(|(_, _, seg)| seg.computed_live(&key) > 0) {
                continue;
            }
            let Some(b) = plan.base else { continue };
            let name = |s: &Snapshot| {
                s.item_tower_file(&key)
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
            };
            // The plan records the base's towers; an older plan does not,
            // and then the base snapshot is read (gone if gc collected it).
            let then = match &plan.towers {
                Some(t) => t.get(&key).cloned(),
                None => {
                    if base.is_none() {
                        base = Some(
                            Store::open_at(&self.dir, b, writer_open_options())
                                .map(|s| s.snapshot()),
                        );
                    }
                    match base.as_ref().expect("set above") {
                        Ok(s) => name(s),
                        Err(_) => None,
                    }
                }
            };
            let now = newest.as_deref().and_then(name);
            if then.is_none() || then != now {
                return Err(Error::Conflict {
                    path: self.dir.clone(),
                    what: format!(
                        "job {}'s parts hold vectors of {key} computed at stage time with the \
                         item tower of snapshot {b}, {}; rebasing would publish them as computed \
                         by the tower the store holds now: abort the job and plan it again (its \
                         parts are then staged with the current tower)",
                        plan.job,
                        match (&then, &now) {
                            (None, _) if plan.towers.is_some() =>
                                "a tower the plan does not record".to_string(),
                            (None, _) =>
                                "which can no longer be read (collected by gc)".to_string(),
                            (Some(_), None) =>
                                "and the version's tower was dropped since".to_string(),
                            (Some(_), Some(_)) =>
                                "and the version's tower was replaced since".to_string(),
                        }
                    ),
                });
            }
        }
        Ok(())
    }
}

/// The receipts in part order, exactly one per part, each of this job.
fn in_part_order(plan: &BuildPlan, receipts: &[BuildReceipt]) -> Result<Vec<BuildReceipt>> {
    let mut by_part: Vec<Option<&BuildReceipt>> = vec![None; plan.parts as usize];
    for r in receipts {
        let bad = |what: String| {
            Error::InvalidInput(format!(
                "job {}: receipt of part {}: {what}",
                plan.job, r.part
            ))
        };
        if r.job != plan.job {
            return Err(bad(format!("it is of job {}", r.job)));
        }
        let slot = by_part
            .get_mut(r.part as usize)
            .ok_or_else(|| bad(format!("the plan has {} parts", plan.parts)))?;
        if slot.is_some() {
            return Err(bad("given twice".into()));
        }
        if r.segment != plan.segment_of(r.part)
            || r.meta.as_ref().is_some_and(|m| m.id != r.segment)
        {
            return Err(bad(format!(
                "segment {} where the plan gives {}",
                r.segment,
                plan.segment_of(r.part)
            )));
        }
        let prefix = format!("{:05}-", r.part);
        let attempt_ok = r.attempt.starts_with(&prefix)
            && r.attempt.len() > prefix.len()
            && r.attempt
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !attempt_ok {
            return Err(bad(format!(
                "attempt {:?} is not one stage writes",
                r.attempt
            )));
        }
        if r.meta.as_ref().map_or(0, |m| m.rows) != r.rows {
            return Err(bad(format!(
                "{} rows but its segment holds a different count",
                r.rows
            )));
        }
        *slot = Some(r);
    }
    if let Some(p) = by_part.iter().position(Option::is_none) {
        return Err(Error::InvalidInput(format!(
            "job {}: no receipt for part {p} (of {}); stage it and commit with every part's receipt",
            plan.job, plan.parts
        )));
    }
    Ok(by_part.into_iter().flatten().cloned().collect())
}

/// The files of a segment entry.
fn files(meta: &SegmentMeta) -> Vec<&FileRef> {
    let mut v = vec![&meta.id_index, &meta.profile, &meta.stats];
    v.extend(meta.embeddings.iter().map(|e| &e.file));
    v.extend(meta.deletes.as_ref());
    v
}

/// Opens a staged part's segment (each file from its attempt directory,
/// or from the store if an earlier commit moved it) and verifies it whole
/// against the receipt.
fn open_staged(
    dir: &Path,
    plan: &BuildPlan,
    r: &BuildReceipt,
    meta: &SegmentMeta,
) -> Result<Segment> {
    let attempt = job_dir(dir, &plan.job).join(&r.attempt);
    let prefix = names::data_file(plan.number, r.segment, "", "");
    for f in files(meta) {
        if !f.name.starts_with(prefix.trim_end_matches('.')) || f.name.contains('/') {
            return Err(Error::InvalidInput(format!(
                "job {}: receipt of part {} names file {} of another job or segment",
                plan.job, r.part, f.name
            )));
        }
    }
    let mut opener = |f: &FileRef, kind: Kind| {
        let staged = attempt.join(&f.name);
        let path = if staged.exists() {
            staged
        } else {
            dir.join(&f.name)
        };
        if !path.exists() {
            // Neither staged nor moved in by an earlier try.
            return Err(Error::InvalidInput(format!(
                "job {}: the receipt of part {} names attempt {}, whose file {} is not in {} \
                 (nor moved into the store): the attempt is gone (the job was aborted and \
                 planned again, or its staging area collected); stage the part again",
                plan.job,
                r.part,
                r.attempt,
                f.name,
                attempt.display()
            )));
        }
        Container::open(&path, kind, false).map(Arc::new)
    };
    let seg = Segment::open(meta, &plan.schema, &attempt, &mut opener)?;
    seg.verify(&mut HashSet::<PathBuf>::new())?;
    let ids = seg.ids();
    let (lo, hi) = (ids.iter().min().copied(), ids.iter().max().copied());
    if seg.rows() as u64 != r.rows || (lo, hi) != (r.min_id, r.max_id) {
        return Err(Error::InvalidInput(format!(
            "job {}: receipt of part {} says {} rows, ids {:?}..={:?}; its files hold {} rows, \
             ids {lo:?}..={hi:?}",
            plan.job,
            r.part,
            r.rows,
            r.min_id,
            r.max_id,
            seg.rows()
        )));
    }
    Ok(seg)
}

/// Refuses ids in more than one part, naming up to ten of them.
fn check_disjoint(plan: &BuildPlan, staged: &[(u32, SegmentMeta, Segment)]) -> Result<()> {
    let total: usize = staged.iter().map(|(_, _, s)| s.rows()).sum();
    let mut all: Vec<(u64, u32)> = Vec::with_capacity(total);
    for (part, _, seg) in staged {
        all.extend(seg.ids().iter().map(|&id| (id, *part)));
    }
    all.sort_unstable();
    let mut found = Vec::new();
    for w in all.windows(2) {
        if w[0].0 == w[1].0 && found.last().is_none_or(|(id, _, _)| *id != w[0].0) {
            found.push((w[0].0, w[0].1, w[1].1));
            if found.len() == 10 {
                break;
            }
        }
    }
    match found.first() {
        None => Ok(()),
        Some(&(id, _, _)) => Err(Error::DuplicateId {
            id,
            context: format!(
                "job {}: ids given by two parts (each id once per build): {}",
                plan.job,
                found
                    .iter()
                    .map(|(id, a, b)| format!("{id} (parts {a} and {b})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// Moves a staged segment's files from `attempt` into the store `dir`,
/// never replacing a file: a name already in the store must be the same
/// file (an earlier commit of this job moved it before it stopped), which
/// its length and header checksum show.
fn move_in(
    dir: &Path,
    attempt: &Path,
    meta: &SegmentMeta,
    fs: &dyn crate::io::fs::Fs,
) -> Result<()> {
    for f in files(meta) {
        let (from, to) = (attempt.join(&f.name), dir.join(&f.name));
        if !from.exists() {
            // Moved by an earlier try; open_staged found and verified it.
            continue;
        }
        match fs.rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let same = std::fs::metadata(&to).is_ok_and(|m| m.len() == f.len)
                    && Container::open(&to, kind_of(&f.name), false)
                        .is_ok_and(|c| crate::read::segment::check_ref(&c, f).is_ok());
                if !same {
                    return Err(Error::Conflict {
                        path: dir.to_path_buf(),
                        what: format!(
                            "{} exists in the store and is not the staged file {}; abort the job",
                            to.display(),
                            from.display()
                        ),
                    });
                }
            }
            Err(e) => return Err(Error::io("rename", &from, e)),
        }
    }
    Ok(())
}

/// The container kind a data file's extension says.
fn kind_of(name: &str) -> Kind {
    if name.ends_with(".vidx") {
        Kind::IdIndex
    } else if name.ends_with(".vdel") {
        Kind::Deletes
    } else {
        Kind::Columns
    }
}

/// Checks that `receipts` are the parts snapshot `snap` published for
/// `job` (a retried commit): each receipt's id index and embedding files
/// are the published segment's, by name, length and metadata checksum. A
/// segment the publish compacted away is not compared.
fn same_as_published(job: &str, snap: &Snapshot, receipts: &[BuildReceipt]) -> Result<()> {
    for r in receipts {
        let Some(meta) = &r.meta else { continue };
        let Some(seg) = snap.manifest.segments.iter().find(|s| s.id == meta.id) else {
            continue;
        };
        let same = seg.id_index == meta.id_index
            && meta.embeddings.iter().all(|e| {
                (seg.embeddings.iter())
                    .find(|p| p.key == e.key)
                    .is_none_or(|p| p.file == e.file)
            });
        if !same {
            return Err(Error::InvalidInput(format!(
                "job {job}: the receipt of part {} (attempt {}) is not what snapshot {} \
                 published for it (another attempt of the part was committed); nothing changed",
                r.part,
                r.attempt,
                snap.number()
            )));
        }
    }
    Ok(())
}
