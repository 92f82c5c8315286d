//! The writer's file-system operations, recorded and failed on purpose
//! (through the `Fs` trait): the publish order holds over many publishes,
//! and an I/O error at any step of a publish leaves the store serving a
//! complete snapshot and the writer refusing to go on until reopened.
//!
//! `VSTORE_FAULT_PUBLISHES` sets the number of publishes of the order test
//! (default 200; the long setting is 1000 or more).

mod common;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::{batch, schema, stat_value, vector};
use vstore::{Dtype, Error, Fs, FsFile, ItemBatch, Retention, StdFs, Store, Writer};

const DIM: u32 = 4;

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Create(PathBuf),
    Write(PathBuf),
    Sync(PathBuf),
    Rename(PathBuf, PathBuf),
    Remove(PathBuf),
    SyncDir(PathBuf),
}

#[derive(Debug, Default)]
struct State {
    log: Vec<Op>,
    /// Fail the operation with this number (1-based, counting every op).
    fail_at: Option<usize>,
    persistent: bool,
    errno: i32,
    count: usize,
    failed: usize,
}

#[derive(Debug, Clone, Default)]
struct FaultFs(Arc<Mutex<State>>);

impl FaultFs {
    fn op(&self, op: Op) -> io::Result<()> {
        let mut s = self.0.lock().unwrap();
        s.count += 1;
        let n = s.count;
        let fail = match s.fail_at {
            Some(k) => n == k || (s.persistent && n > k),
            None => false,
        };
        // A full disk does not stop a name from being removed.
        let enospc_remove = s.errno == 28 && matches!(op, Op::Remove(_));
        if fail && !enospc_remove {
            s.failed += 1;
            return Err(io::Error::from_raw_os_error(s.errno));
        }
        s.log.push(op);
        Ok(())
    }
}

struct FaultFile {
    fs: FaultFs,
    path: PathBuf,
    inner: Box<dyn FsFile>,
}

impl Write for FaultFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.fs.op(Op::Write(self.path.clone()))?;
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl FsFile for FaultFile {
    fn sync(&mut self) -> io::Result<()> {
        self.fs.op(Op::Sync(self.path.clone()))?;
        self.inner.sync()
    }
}

impl Fs for FaultFs {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        self.op(Op::Create(path.to_path_buf()))?;
        let inner = StdFs.create_new(path)?;
        Ok(Box::new(FaultFile {
            fs: self.clone(),
            path: path.to_path_buf(),
            inner,
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.op(Op::Rename(from.to_path_buf(), to.to_path_buf()))?;
        StdFs.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.op(Op::Remove(path.to_path_buf()))?;
        StdFs.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.op(Op::SyncDir(dir.to_path_buf()))?;
        StdFs.sync_dir(dir)
    }
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Checks one recorded history; returns the violations found.
fn violations(log: &[Op]) -> Vec<String> {
    let mut v = Vec::new();
    let mut unsynced: Vec<String> = Vec::new(); // data files created, not yet synced
    let mut synced_since_dir = false; // a data file was synced after the last dir sync
    let mut tmp_synced = false;
    let mut renamed_pending_dir = false;
    for (i, op) in log.iter().enumerate() {
        match op {
            Op::Create(p) => {
                let n = name(p);
                if n.starts_with("MANIFEST") {
                    if !unsynced.is_empty() {
                        v.push(format!(
                            "op {i}: manifest created before data files {unsynced:?} were synced"
                        ));
                    }
                    if synced_since_dir {
                        v.push(format!(
                            "op {i}: manifest created before the directory was synced"
                        ));
                    }
                    tmp_synced = false;
                } else {
                    unsynced.push(n);
                }
            }
            Op::Sync(p) => {
                let n = name(p);
                if n.starts_with("MANIFEST") {
                    tmp_synced = true;
                } else {
                    unsynced.retain(|x| *x != n);
                    synced_since_dir = true;
                }
            }
            Op::SyncDir(_) => {
                synced_since_dir = false;
                renamed_pending_dir = false;
            }
            Op::Rename(from, to) => {
                if !tmp_synced {
                    v.push(format!(
                        "op {i}: {} renamed before it was synced",
                        name(from)
                    ));
                }
                if !name(to).starts_with("MANIFEST") {
                    v.push(format!("op {i}: unexpected rename to {}", name(to)));
                }
                renamed_pending_dir = true;
            }
            Op::Remove(p) => {
                if renamed_pending_dir {
                    v.push(format!(
                        "op {i}: {} removed before the directory sync that publishes",
                        name(p)
                    ));
                }
            }
            Op::Write(_) => {}
        }
    }
    v
}

#[test]
fn publish_order_holds_over_many_publishes() {
    let publishes: usize = common::env_or("VSTORE_FAULT_PUBLISHES", 200);
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::default();
    let mut w =
        Writer::create_with_fs(dir.path(), schema(DIM, Dtype::F16), Arc::new(fs.clone())).unwrap();
    w.set_retention(Retention {
        keep_last: 2,
        grace: std::time::Duration::ZERO,
    });
    let mut next = 0u64;
    for p in 0..publishes {
        let mut tx = w.begin();
        tx.add_items(batch(&[next, next + 1], DIM, 0)).unwrap();
        next += 2;
        if p > 0 {
            tx.update_stats(ItemBatch::new(vec![0]).stat("ctr_1d", vec![p as f32]))
                .unwrap();
        }
        if p % 10 == 9 {
            tx.delete_items(&[next - 1]).unwrap();
        }
        tx.commit().unwrap();
        w.gc().unwrap();
    }
    let s = fs.0.lock().unwrap();
    let v = violations(&s.log);
    assert!(
        v.is_empty(),
        "{} violations, first: {:?}",
        v.len(),
        &v[..v.len().min(5)]
    );
    let renames = s.log.iter().filter(|o| matches!(o, Op::Rename(..))).count();
    let removes = s.log.iter().filter(|o| matches!(o, Op::Remove(..))).count();
    assert_eq!(renames, publishes);
    assert!(removes > publishes, "GC removed {removes} files");
    // The checker itself catches a reordered history.
    let mut bad = s.log.clone();
    let r = bad
        .iter()
        .position(|o| matches!(o, Op::Rename(..)))
        .unwrap();
    let tmp_sync = bad[..r]
        .iter()
        .rposition(|o| matches!(o, Op::Sync(p) if name(p).starts_with("MANIFEST")))
        .unwrap();
    bad.swap(tmp_sync, r);
    assert!(!violations(&bad).is_empty());
}

/// Builds snapshot 1 with the real file system: items 0..20.
fn base(dir: &Path) {
    let mut w = Writer::create(dir, schema(DIM, Dtype::F32)).unwrap();
    let mut tx = w.begin();
    tx.add_items(batch(&(0..20).collect::<Vec<_>>(), DIM, 0))
        .unwrap();
    tx.commit().unwrap();
}

/// Snapshot 1's contents, bit for bit.
fn check_snapshot_1(s: &vstore::Snapshot) {
    assert_eq!(s.len(), 20);
    for id in 0..20u64 {
        assert_eq!(
            s.get_embedding(id, "prerank@v42").unwrap(),
            vector(id, DIM, 0)
        );
        assert_eq!(s.get_stat(id, "ctr_1d").unwrap(), Some(stat_value(id, 0)));
    }
}

/// The transaction every fault case runs: new items, a stats refresh.
fn second_publish(w: &mut Writer) -> vstore::Result<()> {
    let mut tx = w.begin();
    tx.add_items(batch(&[100, 101, 102], DIM, 1))?;
    tx.update_stats(ItemBatch::new(vec![3]).stat("ctr_1d", vec![9.5]))?;
    tx.commit().map(|_| ())
}

#[test]
fn an_io_error_at_any_step_of_a_publish_leaves_a_complete_snapshot() {
    // How many operations a clean publish takes.
    let dir = tempfile::tempdir().unwrap();
    base(dir.path());
    let fs = FaultFs::default();
    let mut w = Writer::open_with_fs(dir.path(), Arc::new(fs.clone())).unwrap();
    second_publish(&mut w).unwrap();
    let ops = fs.0.lock().unwrap().count;
    assert!(ops >= 20, "{ops}");
    let mut cases = 0;
    for k in 1..=ops {
        for persistent in [false, true] {
            for errno in [5, 28] {
                // EIO, ENOSPC
                let dir = tempfile::tempdir().unwrap();
                base(dir.path());
                let before = common::files(dir.path());
                let fs = FaultFs(Arc::new(Mutex::new(State {
                    fail_at: Some(k),
                    persistent,
                    errno,
                    ..Default::default()
                })));
                let mut w = Writer::open_with_fs(dir.path(), Arc::new(fs.clone())).unwrap();
                let e = second_publish(&mut w).expect_err("the injected fault must surface");
                assert!(matches!(e, Error::Io { .. }), "op {k}: {e:?}");
                // The writer refuses to go on.
                let e2 = second_publish(&mut w).unwrap_err();
                assert!(matches!(e2, Error::Poisoned { .. }), "op {k}: {e2:?}");
                assert!(matches!(w.gc(), Err(Error::Poisoned { .. })));
                drop(w);
                // Readers see a complete snapshot: the previous one, or
                // (a failure after the rename) the new one, whole.
                let store = Store::open(dir.path()).unwrap();
                let s = store.snapshot();
                store.verify().unwrap();
                match s.number() {
                    1 => {
                        check_snapshot_1(&s);
                        // A failed publish removes what it wrote (whenever
                        // removing still works: after a one-off fault, or
                        // on a full disk).
                        if !persistent || errno == 28 {
                            assert_eq!(
                                common::files(dir.path()),
                                before,
                                "op {k} (persistent {persistent}, errno {errno}) left files"
                            );
                        }
                    }
                    2 => {
                        assert_eq!(s.len(), 23);
                        assert_eq!(s.get_stat(3, "ctr_1d").unwrap(), Some(9.5));
                        assert_eq!(
                            s.get_embedding(101, "prerank@v42").unwrap(),
                            vector(101, DIM, 1)
                        );
                    }
                    n => panic!("op {k}: snapshot {n}"),
                }
                check_snapshot_1(&store.open_snapshot(1).unwrap());
                // A reopened writer (healthy disk) publishes and collects.
                let mut w = Writer::open(dir.path()).unwrap();
                w.set_retention(Retention {
                    keep_last: 1,
                    grace: std::time::Duration::ZERO,
                });
                let mut tx = w.begin();
                tx.add_items(batch(&[500], DIM, 2)).unwrap();
                let s = tx.commit().unwrap();
                w.gc().unwrap();
                assert!(s.lookup(500).is_some());
                let left: Vec<String> = std::fs::read_dir(dir.path())
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".tmp"))
                    .collect();
                assert!(left.is_empty(), "{left:?}");
                cases += 1;
            }
        }
    }
    assert_eq!(cases, ops * 4);
    eprintln!("{cases} fault cases over the {ops} operations of a publish");
}

/// A store created under missing ancestors: every created level is made
/// durable by an fsync of its parent, outermost first.
#[test]
fn create_syncs_the_parent_of_every_directory_it_creates() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let fs = FaultFs::default();
    let store = root.join("a/b/c");
    let w = Writer::create_with_fs(&store, schema(DIM, Dtype::F16), Arc::new(fs.clone())).unwrap();
    drop(w);
    let synced: Vec<PathBuf> =
        fs.0.lock()
            .unwrap()
            .log
            .iter()
            .filter_map(|o| match o {
                Op::SyncDir(d) => Some(d.clone()),
                _ => None,
            })
            .collect();
    assert_eq!(
        synced,
        vec![root.to_path_buf(), root.join("a"), root.join("a/b")],
        "each created level's parent must be fsynced, outermost first"
    );
    // A store directory that exists already needs no sync at creation.
    let fs = FaultFs::default();
    let w = Writer::create_with_fs(
        root.join("a/b/c2"),
        schema(DIM, Dtype::F16),
        Arc::new(fs.clone()),
    )
    .unwrap();
    drop(w);
    let log = fs.0.lock().unwrap().log.clone();
    assert_eq!(log, vec![Op::SyncDir(root.join("a/b"))]);
    let fs = FaultFs::default();
    Writer::create_with_fs(
        root.join("a/b/c2"),
        schema(DIM, Dtype::F16),
        Arc::new(fs.clone()),
    )
    .unwrap();
    assert!(fs.0.lock().unwrap().log.is_empty());
}

/// A writer that stopped before its first publish (killed, or out of
/// disk) leaves data files, a `.tmp` manifest and the lock: a new writer
/// takes them back under the lock and publishes snapshot 1; anything else
/// in the directory stays.
#[test]
fn leftovers_of_a_store_never_published_are_taken_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("LOCK"), b"").unwrap();
    std::fs::write(d.join("s0000000001-g0-ids.vidx"), b"partial").unwrap();
    std::fs::write(d.join("s0000000001-g0-profile.vcol"), b"partial").unwrap();
    std::fs::write(d.join("MANIFEST-00000000000000000001.tmp"), b"partial").unwrap();
    std::fs::write(d.join("notes.txt"), b"mine").unwrap();
    assert!(vstore::is_leftover_name("s0000000001-g0-ids.vidx"));
    assert!(vstore::is_leftover_name(
        "MANIFEST-00000000000000000001.tmp"
    ));
    assert!(vstore::is_leftover_name("LOCK"));
    assert!(!vstore::is_leftover_name("MANIFEST-00000000000000000001"));
    assert!(!vstore::is_leftover_name("notes.txt"));
    let fs = FaultFs::default();
    let mut w = Writer::create_with_fs(d, schema(DIM, Dtype::F16), Arc::new(fs.clone())).unwrap();
    // A second writer is refused while this one holds the lock.
    assert!(matches!(
        Writer::create(d, schema(DIM, Dtype::F16)),
        Err(Error::Locked { .. })
    ));
    let removed = w.remove_leftovers().unwrap();
    assert_eq!(
        removed,
        vec![
            "MANIFEST-00000000000000000001.tmp".to_string(),
            "s0000000001-g0-ids.vidx".into(),
            "s0000000001-g0-profile.vcol".into(),
        ]
    );
    let log = fs.0.lock().unwrap().log.clone();
    assert_eq!(log.last(), Some(&Op::SyncDir(d.to_path_buf())));
    let mut tx = w.begin();
    tx.add_items(batch(&[1, 2, 3], DIM, 0)).unwrap();
    let snap = tx.commit().unwrap();
    assert_eq!(snap.number(), 1);
    assert_eq!(std::fs::read(d.join("notes.txt")).unwrap(), b"mine");
    let s = Store::open(d).unwrap();
    assert_eq!(s.snapshot().len(), 3);
    // Once a snapshot is published, leftovers are gc's business.
    assert!(matches!(w.remove_leftovers(), Err(Error::InvalidInput(_))));
}
