//! Garbage collection: which snapshots [`Retention`] keeps, and the
//! removal of manifests and of data files no kept snapshot references.

use super::publish::sync_dir;
use super::writer::now_ms;
use super::writer::Writer;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::format::meta::ManifestMeta;
use crate::format::names;
use crate::read::store::{list_manifests, read_manifest};

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
    /// Distributed build jobs whose staging areas (`_staging/<job>`) were
    /// removed: older than the staging grace
    /// ([`Writer::set_staging_grace`]), or without a plan (one that failed
    /// before it was written whole).
    pub removed_staging: Vec<String>,
}

impl Writer {
    /// Removes snapshots the retention policy does not keep, then every data
    /// or temporary file no remaining snapshot references.
    pub fn gc(&mut self) -> Result<GcReport> {
        // After a failed publish the newest manifest may not be durable:
        // collecting its predecessor could lose both.
        self.check_poisoned()?;
        self.gc_inner()
    }

    pub(super) fn gc_inner(&mut self) -> Result<GcReport> {
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
                    if let Err(what) = crate::io::fs::check_regular_entry(&self.dir.join(&name)) {
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
        let pinned: HashSet<u64> = crate::read::pins::pinned(&self.key).into_iter().collect();
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
        report.removed_staging = self.collect_staging()?;
        let mut inflight = self.inflight.lock().clone();
        // Files a build commit moved in before it stopped: the retried
        // commit (or abort) needs them while the job's plan is staged.
        inflight.extend(
            crate::write::job::live_plans(&self.dir)
                .iter()
                .map(|p| p.number),
        );
        for name in names_in_dir {
            let data = names::parse_data_file(&name);
            let tmp = names::parse_tmp(&name);
            if data.or(tmp).is_some_and(|n| inflight.contains(&n)) {
                // A running compaction job's output.
                continue;
            }
            if data.or(tmp).is_some() {
                if let Err(what) = crate::io::fs::check_regular_entry(&self.dir.join(&name)) {
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

impl Writer {
    /// Removes the staging areas of build jobs older than the staging
    /// grace (by their plan's modification time), and at once those of
    /// jobs without a plan. Returns the job ids removed, sorted.
    fn collect_staging(&mut self) -> Result<Vec<String>> {
        let root = crate::write::job::staging_root(&self.dir);
        let list = match std::fs::read_dir(&root) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list", &root, e)),
        };
        let now = SystemTime::now();
        let mut removed = Vec::new();
        for e in list {
            let e = e.map_err(|e| Error::io("list", &root, e))?;
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let plan = e.path().join(crate::write::job::PLAN_FILE);
            let modified = std::fs::metadata(&plan)
                .or_else(|_| e.metadata())
                .and_then(|m| m.modified())
                .ok();
            // A job without its plan is a plan that failed before the plan
            // was durable (or a commit stopped while removing the area):
            // no worker has it, and this writer holds the lock, so it goes
            // at once.
            let planless = std::fs::symlink_metadata(&plan).is_err();
            let old = planless
                || modified
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|age| age >= self.staging_grace);
            if old {
                crate::write::job::plan::remove_staging(&e.path())?;
                removed.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        removed.sort();
        Ok(removed)
    }
}
