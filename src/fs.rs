//! The file-system operations a writer performs, behind a trait so that
//! tests can record their order and inject failures (see `tests/faults.rs`).
//! Readers map files directly and do not go through it.

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
