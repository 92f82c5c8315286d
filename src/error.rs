//! The library's one error type.
//!
//! Every variant that concerns a file names it; every variant that concerns
//! user input names the column, row or id at fault, so that a message printed
//! by a service or by `vstore-tool` is enough to find the problem.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in vstore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call on a file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`"open"`, `"write"`, `"fsync"`, ...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Locking a store's mapped file in memory failed
    /// ([`crate::OpenOptions::mlock`]); usually because the locked memory
    /// would exceed the process's `RLIMIT_MEMLOCK`.
    #[error(
        "mlock {path} ({bytes} bytes): {source}; the process may lock {} (RLIMIT_MEMLOCK): raise it (`ulimit -l`, systemd's LimitMEMLOCK=), grant CAP_IPC_LOCK, or open without mlock",
        match limit { Some(l) => format!("at most {l} bytes"), None => "without limit".to_string() }
    )]
    Mlock {
        /// The file that could not be locked.
        path: PathBuf,
        /// Its length.
        bytes: u64,
        /// The soft `RLIMIT_MEMLOCK` in bytes (`None`: unlimited).
        limit: Option<u64>,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A file's bytes are not what the format says they must be (bad magic,
    /// checksum mismatch, truncation, invalid metadata ...).
    #[error("corrupt file {path}: {what}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What was found wrong, with expected and found values where known.
        what: String,
    },

    /// A file was written by a format version this build cannot read.
    #[error(
        "{path}: format version {found} is not supported (this build reads {oldest}..={newest})"
    )]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// The version recorded in the file.
        found: u32,
        /// Oldest version this build reads.
        oldest: u32,
        /// Newest version this build reads (and the one it writes).
        newest: u32,
    },

    /// The directory is not a vstore store (no manifest in it).
    #[error("{path} is not a vstore store: {why}")]
    NotAStore {
        /// The directory.
        path: PathBuf,
        /// Why it was not recognised.
        why: String,
    },

    /// The newest manifest of the store is damaged: readers fall back to an
    /// older snapshot, but a writer refuses to publish on top of that older
    /// snapshot, which would drop the damaged snapshot's changes from the
    /// store's lineage for good. Restore the manifest from a backup, or give
    /// its snapshot up by setting it aside
    /// ([`crate::Writer::set_aside_damaged_manifests`], `vstore-tool recover`).
    #[error(
        "{} is damaged ({why}); readers fall back to {}, but a writer refuses to publish over a damaged newest manifest: its snapshot's changes would be lost. \
         Restore it from a backup, or give that snapshot up with `vstore-tool recover {} --set-aside-damaged` (Writer::set_aside_damaged_manifests), \
         which renames it to *.damaged",
        manifest.display(),
        fallback.map_or("no snapshot".to_string(), |n| format!("snapshot {n}")),
        path.display()
    )]
    DamagedManifest {
        /// The store directory.
        path: PathBuf,
        /// The newest damaged manifest.
        manifest: PathBuf,
        /// What is wrong with it.
        why: String,
        /// The snapshot readers fall back to, if any validates.
        fallback: Option<u64>,
    },

    /// Another writer holds the store's lock. The lock is an `flock` on
    /// `LOCK`, held by the open file description: a child process forked
    /// while a writer is open shares it until the child execs or exits, so
    /// a writer opened in that window sees this error too.
    #[error(
        "store {path} is locked by another writer{} (lock file {lock}); only one writer may open a store at a time",
        if *held_here {
            " of this process: drop it and its compaction jobs first (Python: `Writer.close()`)"
        } else {
            ""
        }
    )]
    Locked {
        /// The store directory.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// Whether the holder is a writer (or a compaction job of one) of
        /// this process, still alive: the lock then opens once it is dropped.
        /// (A child forked while its parent held the lock inherits both the
        /// lock and the list, and is told so too, though only the parent
        /// can release it.)
        held_here: bool,
    },

    /// A query or lookup named an embedding `space@version` that the snapshot
    /// does not hold. The snapshot never falls back to another version.
    #[error("version skew: snapshot {snapshot} holds no embedding {requested}; it holds [{}]", available.join(", "))]
    VersionSkew {
        /// The snapshot consulted.
        snapshot: u64,
        /// The `space@version` asked for.
        requested: String,
        /// The `space@version` keys the snapshot holds.
        available: Vec<String>,
    },

    /// A column name that the schema does not have.
    #[error("no {kind} column {name:?}; the schema has [{}]", available.join(", "))]
    NoSuchColumn {
        /// Which group was searched (`"profile"`, `"statistics"`, ...).
        kind: &'static str,
        /// The name asked for.
        name: String,
        /// The names that exist.
        available: Vec<String>,
    },

    /// A schema definition is invalid (bad name, duplicate column, zero dimension ...).
    #[error("invalid schema: {0}")]
    Schema(String),

    /// An id occurs twice where ids must be unique.
    #[error("duplicate item id {id} in {context}")]
    DuplicateId {
        /// The repeated id.
        id: u64,
        /// Where (e.g. `"input rows 3 and 17"`, or `"input row 5 and segment 2
        /// row 40 of the snapshot being built (use upsert_items to replace)"`).
        context: String,
    },

    /// An id that must exist does not.
    #[error("item id {id} is not in snapshot {snapshot} ({context})")]
    UnknownId {
        /// The id.
        id: u64,
        /// The snapshot consulted.
        snapshot: u64,
        /// What the id was needed for.
        context: String,
    },

    /// Input data is malformed: wrong length, non-finite value, bad argument.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A model bundle (`model.json` + `weights.safetensors`) is invalid.
    #[error("invalid model bundle: {field}: {what}")]
    Bundle {
        /// The field at fault, as a path into `model.json`
        /// (`cross.inputs[2].transform`), or the file (`weights.safetensors`).
        field: String,
        /// What is wrong, with expected and found values.
        what: String,
    },

    /// A three-tower query named a `space@version` for which the snapshot
    /// holds no model bundle.
    #[error("snapshot {snapshot} holds no model bundle for {requested}; it holds bundles for [{}]", available.join(", "))]
    NoModel {
        /// The snapshot consulted.
        snapshot: u64,
        /// The `space@version` asked for.
        requested: String,
        /// The `space@version` keys of the bundles it holds.
        available: Vec<String>,
    },

    /// The snapshot holds bundles for the `space@version`, but not the one
    /// asked for: none is named and there are several, or none has the
    /// name given.
    #[error("{}", model_choice(*snapshot, key, requested.as_deref(), names))]
    ModelChoice {
        /// The snapshot consulted.
        snapshot: u64,
        /// The `space@version` asked for.
        key: String,
        /// The bundle name asked for (`None`: the only bundle).
        requested: Option<String>,
        /// The names of the bundles the snapshot holds for `key`.
        names: Vec<String>,
    },

    /// A compaction result cannot be applied: a segment it merged was merged
    /// by another compaction since it started, or holds live rows the
    /// compaction did not copy (a restore published since brought back
    /// rows deleted when it started). Start a new compaction.
    #[error("compaction of snapshot {base} is stale: segment {segment} it merged {why}; start a new one")]
    CompactionConflict {
        /// The snapshot the compaction read.
        base: u64,
        /// A segment it merged that changed under it.
        segment: u64,
        /// How it changed.
        why: String,
    },

    /// A publish or a build commit lost to another one: the snapshot number
    /// it was to publish exists already (another writer published it), or
    /// a distributed build job was planned on a snapshot that is no longer
    /// the newest. The message says how to go on (rebase or plan again).
    #[error("{path}: conflict: {what}")]
    Conflict {
        /// The store directory.
        path: PathBuf,
        /// What conflicted, and what to do.
        what: String,
    },

    /// The writer hit an error during a publish and refuses further publishes
    /// until it is reopened (the store itself still serves its last snapshot).
    #[error("writer for {path} is poisoned by an earlier failed publish ({cause}); reopen it: drop it (Python: `Writer.close()`) and open the store again")]
    Poisoned {
        /// The store directory.
        path: PathBuf,
        /// The error that poisoned it.
        cause: String,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.into(),
            what: what.into(),
        }
    }

    /// Whether this error means a file was not found (a reader racing the
    /// writer's garbage collection sees this and retries).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    /// Whether this error, met reading a store's file, means the store is
    /// damaged: a file missing ([`Error::is_not_found`]) or whose bytes are
    /// not what was written ([`Error::Corrupt`], [`Error::DamagedManifest`]).
    /// Not damage: a file this process may not read, an I/O error of the
    /// device, a format newer than this build reads.
    pub fn is_damage(&self) -> bool {
        self.is_not_found() || matches!(self, Error::Corrupt { .. } | Error::DamagedManifest { .. })
    }

    /// The file this error names, if it names one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Error::Io { path, .. }
            | Error::Mlock { path, .. }
            | Error::Corrupt { path, .. }
            | Error::UnsupportedFormat { path, .. }
            | Error::NotAStore { path, .. }
            | Error::Locked { path, .. }
            | Error::DamagedManifest { manifest: path, .. }
            | Error::Conflict { path, .. }
            | Error::Poisoned { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// The message of [`Error::ModelChoice`].
fn model_choice(snapshot: u64, key: &str, requested: Option<&str>, names: &[String]) -> String {
    match requested {
        None => format!(
            "snapshot {snapshot} holds {} bundles for {key}, [{}]; name the one to use",
            names.len(),
            names.join(", ")
        ),
        Some(n) => format!(
            "snapshot {snapshot} holds no bundle named {n:?} for {key}; it holds [{}]",
            names.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::Error;
    use std::io::ErrorKind;

    #[test]
    fn damage_is_a_missing_or_corrupt_file_not_a_refused_read() {
        let io = |k: ErrorKind| Error::io("open", "/s/MANIFEST-1", std::io::Error::from(k));
        assert!(io(ErrorKind::NotFound).is_damage());
        assert!(Error::Corrupt {
            path: "/s/x.vcol".into(),
            what: "checksum".into()
        }
        .is_damage());
        // A permission (a reader run as another user) or a device error is
        // not damage: `verify` says "not checked", `recover` refuses.
        assert!(!io(ErrorKind::PermissionDenied).is_damage());
        assert!(!io(ErrorKind::Other).is_damage());
    }
}
