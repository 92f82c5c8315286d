//! The tool's error type: every message names the file, and where it
//! applies the row, column or id at fault.

use std::path::{Path, PathBuf};

/// Result of a tool operation.
pub type Result<T, E = ToolError> = std::result::Result<T, E>;

/// What can go wrong in a subcommand.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// An error from the vstore library (names its own file, column or id).
    #[error("{0}")]
    Store(#[from] vstore::Error),

    /// A library error, with what the tool was doing (e.g. which input files).
    #[error("{context}: {source}")]
    StoreIn {
        /// What the tool was doing.
        context: String,
        /// The library's error.
        #[source]
        source: vstore::Error,
    },

    /// A bad input file: the path, and what is wrong (with row/column/id).
    #[error("{}: {what}", path.display())]
    Input {
        /// The input file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },

    /// An I/O failure on a file the tool reads or writes.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What the tool was doing.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// The command line itself is malformed: an option value that does not
    /// parse (`--where`, `--embedding`, `--column`, `--metadata` ...), out of
    /// its range, or a combination of options that cannot go together.
    /// Decided from the command line alone; the tool exits with 2.
    #[error("{0}")]
    Usage(String),

    /// The request is refused by what the store or the input files hold
    /// (a version already present, a column not in the table, a directory
    /// that is not empty ...); the tool exits with 1.
    #[error("{0}")]
    Refused(String),

    /// `verify` found damaged (or unreadable) snapshots (each was reported
    /// as it was found).
    #[error("verification failed: {failed} of {checked} snapshot(s) damaged or unreadable")]
    VerifyFailed {
        /// Damaged snapshots.
        failed: usize,
        /// Snapshots checked.
        checked: usize,
    },
}

/// Exit code of a command that succeeded.
pub const EXIT_OK: u8 = 0;
/// Exit code of a command that was refused or failed (bad data, bad store,
/// I/O): everything but a malformed command line.
pub const EXIT_REFUSED: u8 = 1;
/// Exit code of a malformed command line (clap's usage errors and
/// [`ToolError::Usage`]).
pub const EXIT_USAGE: u8 = 2;
/// Exit code of a command that published its snapshot and then failed
/// (its report could not be written, e.g. to a full disk): the change
/// landed, so running the command again would apply it twice. A reader that
/// closed its end early (a broken pipe) is not a failure: exit 0.
pub const EXIT_PUBLISHED_THEN_FAILED: u8 = 3;

impl ToolError {
    /// The exit code this error ends the tool with ([`EXIT_USAGE`] for a
    /// malformed command line, [`EXIT_REFUSED`] otherwise).
    pub fn exit_code(&self) -> u8 {
        match self {
            ToolError::Usage(_) => EXIT_USAGE,
            _ => EXIT_REFUSED,
        }
    }

    /// What to do when a store's own data file is missing or damaged (a
    /// reader refuses such a snapshot rather than fall back past it): the
    /// commands that find and give up the damage. `None` for other errors.
    pub fn recovery_hint(&self) -> Option<String> {
        let e = match self {
            ToolError::Store(e) | ToolError::StoreIn { source: e, .. } => e,
            _ => return None,
        };
        if !(e.is_not_found() || matches!(e, vstore::Error::Corrupt { .. })) {
            return None;
        }
        let path = e.path()?;
        let name = path.file_name()?.to_str()?;
        if name == "LOCK" || name.ends_with(".tmp") || !vstore::is_leftover_name(name) {
            return None;
        }
        let dir = path.parent()?.display();
        Some(format!(
            "{name} of a snapshot of {dir} is missing or damaged: `vstore-tool verify {dir}` \
             lists every damaged snapshot, `vstore-tool inspect {dir} --snapshot N` reads an \
             intact older one, and `vstore-tool recover {dir} --set-aside-damaged` gives up the \
             snapshots newer than the newest intact one"
        ))
    }

    /// A bad-input error for `path`.
    pub fn input(path: &Path, what: impl Into<String>) -> Self {
        ToolError::Input {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }

    /// An I/O error for `path`.
    pub fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        ToolError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Adds context to a library result.
pub trait Context<T> {
    /// Wraps an error with what the tool was doing.
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, vstore::Error> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| ToolError::StoreIn {
            context: what(),
            source,
        })
    }
}
