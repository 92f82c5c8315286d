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
    /// Renames `from` to `to` atomically (same file system), never
    /// replacing an existing `to`: if `to` exists the call fails with
    /// [`io::ErrorKind::AlreadyExists`] and changes nothing. A published
    /// manifest is never replaced this way, so two writers that reach the
    /// same snapshot number (two processes on a file system whose locks do
    /// not reach each other) cannot overwrite each other's snapshot.
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
        rename_noreplace(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// Renames `from` to `to` unless `to` exists (then `AlreadyExists`). On
/// Linux, `renameat2(RENAME_NOREPLACE)`; where the file system does not
/// support that flag (or off Linux), a hard link to the new name (which
/// fails if the name exists) and the removal of the old one, so a crash in
/// between leaves both names on the same file, never a replaced one.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let cstr = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
        };
        let (f, t) = (cstr(from)?, cstr(to)?);
        // SAFETY: both pointers are NUL-terminated strings that live until
        // the call returns; renameat2 only reads them.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                f.as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // The file system (or kernel) does not support the flag.
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::ENOTSUP) => {}
            _ => return Err(e),
        }
    }
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_never_replaces_an_existing_name() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        std::fs::write(&a, b"first").unwrap();
        std::fs::write(&b, b"second").unwrap();
        let e = StdFs.rename(&a, &b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        // Nothing changed: both names keep their own contents.
        assert_eq!(std::fs::read(&a).unwrap(), b"first");
        assert_eq!(std::fs::read(&b).unwrap(), b"second");
        // To a free name it is a plain rename.
        StdFs.rename(&a, &c).unwrap();
        assert!(!a.exists());
        assert_eq!(std::fs::read(&c).unwrap(), b"first");
    }
}
