//! The file-system operations a writer performs, behind a trait so that
//! tests can record their order and inject failures (see `tests/faults.rs`).
//! Readers map files directly and do not go through it; every file the
//! library opens by name in a store (readers and writer alike) is opened by
//! `open_regular`, which never blocks and refuses anything but a regular
//! file.

use std::fmt::Debug;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// A file being written: bytes, then one durable sync.
pub trait FsFile: Write + Send {
    /// Makes the written bytes durable (`fsync`).
    fn sync(&mut self) -> io::Result<()>;
}

impl FsFile for File {
    fn sync(&mut self) -> io::Result<()> {
        self.sync_all()
    }
}

/// The writer's file-system operations.
pub trait Fs: Debug + Send + Sync {
    /// Creates `path`, which must not exist.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Renames `from` to `to` atomically (same directory).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes the name `path`.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries durable (`fsync` on the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

impl Fs for StdFs {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let f = File::options().write(true).create_new(true).open(path)?;
        Ok(Box::new(f))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// What a non-regular file is, for error messages.
fn describe(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// Whether the entry `path` names (not following a symlink) is a regular
/// file; `Err` says what it is instead. A name that cannot be stat'ed
/// (gone meanwhile) counts as regular: the caller's own operation reports it.
pub(crate) fn check_regular_entry(path: &Path) -> std::result::Result<(), &'static str> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => Err(describe(m.file_type())),
        _ => Ok(()),
    }
}

/// Opens `path`, which the store expects to be one of its own regular files
/// (lock file, manifest, data file), so that the open can never block and
/// never follows a symlink: `O_NONBLOCK | O_NOFOLLOW` are added to `opts`
/// (a FIFO opened read-only returns at once, one opened for writing fails
/// with `ENXIO`; a symlink fails with `ELOOP`). The opened handle is then
/// fstat'ed, and anything but a regular file is [`Error::Corrupt`] naming
/// `path` and saying what it is. Other failures are [`Error::Io`] (`op`),
/// so a file that vanished still reads as not found.
///
/// Every file the library opens by name in a store directory goes through
/// here. `O_NONBLOCK` has no effect on regular files.
pub(crate) fn open_regular(
    path: &Path,
    mut opts: std::fs::OpenOptions,
    op: &'static str,
) -> crate::Result<(File, std::fs::Metadata)> {
    use crate::Error;
    use std::os::unix::fs::OpenOptionsExt;
    opts.custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW);
    let not_regular = |what: &str| Error::corrupt(path, format!("is {what}, not a regular file"));
    let file = match opts.open(path) {
        Ok(f) => f,
        Err(e) => {
            // ELOOP (symlink), ENXIO (FIFO for writing), EISDIR ...: say
            // what the name is when it is not a regular file.
            if e.kind() != io::ErrorKind::NotFound {
                check_regular_entry(path).map_err(not_regular)?;
            }
            return Err(Error::io(op, path, e));
        }
    };
    let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    if !meta.file_type().is_file() {
        return Err(not_regular(describe(meta.file_type())));
    }
    Ok((file, meta))
}
