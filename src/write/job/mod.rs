//! Distributed builds: a driver plans a job ([`BuildPlan`]), workers stage
//! one segment per part without the writer lock ([`stage`]), and one
//! commit checks the receipts ([`BuildReceipt`]) against the files, moves
//! them into the store and publishes a single snapshot
//! ([`commit_build`]). The plan and the receipts are JSON, so they ship
//! to workers of Dask, Ray or Spark and back.
//!
//! Layout: `<store>/_staging/<job>/PLAN.json` and, per attempt of a part,
//! `<store>/_staging/<job>/<part:05>-<attempt>/` holding the part's data
//! files, named as in the store (`s{number}-g{segment}-…`) with the
//! snapshot number the plan reserved, so moving them in never clashes
//! with another writer's names.

mod commit;
pub(crate) mod plan;
mod stage;

pub use commit::{abort_build, abort_job, commit_build, CommitOptions};
pub use plan::{BuildPlan, BuildReceipt};
pub use stage::stage;

/// The snapshot that published build job `job` in the store at `dir`, if
/// one did (the newest such; a driver that lost its commit's answer, or
/// runs again, finds it here). `None` also when `dir` does not exist.
pub fn published_build(dir: impl AsRef<Path>, job: &str) -> Result<Option<u64>> {
    check_job_id(job)?;
    let dir = dir.as_ref();
    if !dir.exists() {
        // No store yet: nothing was published.
        return Ok(None);
    }
    published_job(dir, job, None)
}

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::names;
use crate::read::store::{list_manifests, read_manifest};

/// The staging directory of a store (`_staging`): readers and `gc`'s data
/// file sweep ignore it; `gc` removes job directories older than the
/// writer's staging grace.
pub const STAGING_DIR: &str = "_staging";
/// The user metadata key a build commit records its job id under (keys
/// starting `vstore.` are the library's).
pub const JOB_KEY: &str = "vstore.job";
/// The user metadata key holding every build job published in the store's
/// history: a JSON object, job id -> the snapshot that published it,
/// carried from snapshot to snapshot, so that a job id is known as
/// published after `gc` collected the manifest that recorded it (a re-run
/// would otherwise publish its parts again).
pub const JOBS_KEY: &str = "vstore.jobs";
/// A job's plan file in its staging directory.
pub(crate) const PLAN_FILE: &str = "PLAN.json";

pub(crate) fn staging_root(dir: &Path) -> PathBuf {
    dir.join(STAGING_DIR)
}

pub(crate) fn job_dir(dir: &Path, job: &str) -> PathBuf {
    staging_root(dir).join(job)
}

pub(crate) fn plan_path(dir: &Path, job: &str) -> PathBuf {
    job_dir(dir, job).join(PLAN_FILE)
}

/// Checks a job id: 1 to 64 of `[A-Za-z0-9_.-]`, not starting with `.`.
pub(crate) fn check_job_id(job: &str) -> Result<()> {
    let ok = !job.is_empty()
        && job.len() <= 64
        && !job.starts_with('.')
        && job
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "job id {job:?}: 1 to 64 characters of A-Z a-z 0-9 _ . -, not starting with '.'"
        )))
    }
}

/// The snapshot after `after` (all if `None`) that published job `job`:
/// from the newest readable manifest's record of published jobs
/// ([`JOBS_KEY`]), or, in stores written before the record, the newest
/// kept manifest that records `job` as its build commit.
pub(crate) fn published_job(dir: &Path, job: &str, after: Option<u64>) -> Result<Option<u64>> {
    let manifests = list_manifests(dir)?;
    // The newest readable manifest's record of published jobs, which
    // outlives the manifests gc collects.
    for &n in manifests.iter().rev() {
        let Ok((_, m)) = read_manifest(dir, n) else {
            continue;
        };
        let at = crate::format::dropped::record_of(&m, JOBS_KEY)?
            .get(job)
            .copied();
        if let Some(at) = at.filter(|&at| after.is_none_or(|a| at > a)) {
            return Ok(Some(at));
        }
        break;
    }
    // Stores written before the record: the manifests still kept.
    for n in manifests.into_iter().rev() {
        if after.is_some_and(|a| n <= a) {
            break;
        }
        let Ok((_, m)) = read_manifest(dir, n) else {
            continue;
        };
        if m.user_meta
            .iter()
            .any(|kv| kv.key == JOB_KEY && kv.value == job)
        {
            return Ok(Some(n));
        }
    }
    Ok(None)
}

/// What the plans staged in `dir` reserve: the largest snapshot number
/// and the end of the largest segment-id range (0 and 0 if none). A plan
/// that does not parse reserves nothing.
pub(crate) fn reservations(dir: &Path) -> (u64, u64) {
    let mut out = (0, 0);
    for plan in live_plans(dir) {
        out.0 = out.0.max(plan.number);
        out.1 = out
            .1
            .max(plan.first_segment.saturating_add(u64::from(plan.parts)));
    }
    out
}

/// The plans whose `PLAN.json` is in `dir`'s staging area.
pub(crate) fn live_plans(dir: &Path) -> Vec<BuildPlan> {
    let Ok(list) = std::fs::read_dir(staging_root(dir)) else {
        return Vec::new();
    };
    list.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join(PLAN_FILE)).ok())
        .filter_map(|s| BuildPlan::from_json(&s).ok())
        .collect()
}

/// A fresh attempt name: the time, the process and a counter in hex, so
/// two workers (or two tries of one part) never share a directory.
pub(crate) fn attempt_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let c = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:016x}{:08x}{c:04x}", std::process::id())
}

/// Whether `name` is a data file carrying snapshot number `number`.
pub(crate) fn carries_number(name: &str, number: u64) -> bool {
    names::parse_data_file(name).or_else(|| names::parse_tmp(name)) == Some(number)
}
