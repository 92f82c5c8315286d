//! Crash images: a publish sequence is recorded operation by operation
//! (through the `Fs` trait, with every byte written); then, for every prefix
//! of it and several seeds, the disk a power loss could leave is built:
//! synced bytes and directory entries survive, unsynced writes are dropped
//! or torn at a random byte, unsynced directory changes each survive or not.
//! Every image must open, show the last acknowledged snapshot or the one in
//! flight, and read it back exactly.
//!
//! `VSTORE_CRASH_SEEDS` sets the seeds per crash point (default 20: about
//! 1,000 images; long: 100).

mod common;

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{schema, vector};
use vstore::{Dtype, Fs, FsFile, ItemBatch, Retention, StdFs, Store, Writer};

const DIM: u32 = 4;

#[derive(Debug, Clone)]
enum Op {
    Create(String),
    Write(String, Vec<u8>),
    Sync(String),
    Rename(String, String),
    Remove(String),
    SyncDir,
    /// Not a file operation: `commit` returned this snapshot number.
    Ack(u64),
}

#[derive(Debug, Clone, Default)]
struct Rec(Arc<Mutex<Vec<Op>>>);

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

struct RecFile {
    rec: Rec,
    name: String,
    inner: Box<dyn FsFile>,
}

impl Write for RecFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.rec
            .0
            .lock()
            .unwrap()
            .push(Op::Write(self.name.clone(), buf[..n].to_vec()));
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl FsFile for RecFile {
    fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()?;
        self.rec.0.lock().unwrap().push(Op::Sync(self.name.clone()));
        Ok(())
    }
}

impl Fs for Rec {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let inner = StdFs.create_new(path)?;
        self.0.lock().unwrap().push(Op::Create(name(path)));
        Ok(Box::new(RecFile {
            rec: self.clone(),
            name: name(path),
            inner,
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdFs.rename(from, to)?;
        self.0
            .lock()
            .unwrap()
            .push(Op::Rename(name(from), name(to)));
        Ok(())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        StdFs.remove(path)?;
        self.0.lock().unwrap().push(Op::Remove(name(path)));
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        StdFs.sync_dir(dir)?;
        self.0.lock().unwrap().push(Op::SyncDir);
        Ok(())
    }
}

/// Items of snapshot `n`: ids n*10 .. n*10+5, and ctr_1d of id 0 set to n.
fn publish(w: &mut Writer) -> u64 {
    let mut tx = w.begin();
    let n = tx.number();
    let ids: Vec<u64> = (n * 10..n * 10 + 5).collect();
    let v: Vec<f32> = ids.iter().flat_map(|&i| vector(i, DIM, 0)).collect();
    tx.add_items(ItemBatch::new(ids).embedding("prerank@v42", v))
        .unwrap();
    tx.update_stats(ItemBatch::new(vec![10]).stat("ctr_1d", vec![n as f32]))
        .unwrap();
    tx.commit().unwrap().number()
}

/// What snapshot `n` must hold, checked exactly.
fn check(s: &vstore::Snapshot, n: u64) {
    assert_eq!(s.number(), n);
    s.verify().unwrap();
    assert_eq!(s.get_stat(10, "ctr_1d").unwrap(), Some(n as f32));
    for m in 1..=n {
        for id in m * 10..m * 10 + 5 {
            assert_eq!(
                s.get_embedding(id, "prerank@v42").unwrap(),
                vector(id, DIM, 0),
                "snapshot {n} id {id}"
            );
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The disk after a power loss following `ops` (starting from `base`, all
/// durable), for one seed.
fn image(base: &BTreeMap<String, Vec<u8>>, ops: &[Op], rng: &mut Rng) -> BTreeMap<String, Vec<u8>> {
    // Files by identity: content, and how many bytes of it are durable.
    let mut files: Vec<(Vec<u8>, usize)> = Vec::new();
    let mut live: BTreeMap<String, usize> = BTreeMap::new();
    for (n, c) in base {
        files.push((c.clone(), c.len()));
        live.insert(n.clone(), files.len() - 1);
    }
    let mut durable = live.clone();
    let mut pending: Vec<Op> = Vec::new();
    for op in ops {
        match op {
            Op::Create(n) => {
                files.push((Vec::new(), 0));
                live.insert(n.clone(), files.len() - 1);
                pending.push(op.clone());
            }
            Op::Write(n, b) => files[live[n]].0.extend_from_slice(b),
            Op::Sync(n) => {
                let f = &mut files[live[n]];
                f.1 = f.0.len();
            }
            Op::Rename(a, b) => {
                let id = live.remove(a).unwrap();
                live.insert(b.clone(), id);
                pending.push(op.clone());
            }
            Op::Remove(n) => {
                live.remove(n);
                pending.push(op.clone());
            }
            Op::SyncDir => {
                durable = live.clone();
                pending.clear();
            }
            Op::Ack(_) => {}
        }
    }
    // Unsynced directory changes: each survives or not, in order. A
    // created file's identity is recovered by replaying the creates.
    let mut names = durable;
    let all_creates: Vec<usize> = {
        // identities of files created in `pending`, in order
        let mut ids = Vec::new();
        let mut sim = live.clone();
        for op in pending.iter().rev() {
            if let Op::Create(n) = op {
                if let Some(&id) = sim.get(n) {
                    ids.push(id);
                    sim.remove(n);
                }
            }
        }
        ids.reverse();
        ids
    };
    let mut create_i = 0;
    for op in &pending {
        let keep = rng.next().is_multiple_of(2);
        match op {
            Op::Create(n) => {
                let id = all_creates.get(create_i).copied();
                create_i += 1;
                if let (true, Some(id)) = (keep, id) {
                    names.insert(n.clone(), id);
                }
            }
            Op::Rename(a, b) if keep => {
                if let Some(id) = names.remove(a) {
                    names.insert(b.clone(), id);
                }
            }
            Op::Remove(n) if keep => {
                names.remove(n);
            }
            _ => {}
        }
    }
    // Contents: durable bytes, plus a random prefix of the rest (torn).
    names
        .into_iter()
        .map(|(n, id)| {
            let (c, d) = &files[id];
            let extra = c.len() - d;
            let keep = if extra == 0 {
                0
            } else {
                (rng.next() % (extra as u64 + 1)) as usize
            };
            (n, c[..d + keep].to_vec())
        })
        .collect()
}

#[test]
fn every_crash_image_opens_to_an_acknowledged_or_in_flight_snapshot() {
    let seeds: u64 = common::env_or("VSTORE_CRASH_SEEDS", 20);
    let dir = tempfile::tempdir().unwrap();
    {
        let mut w = Writer::create(dir.path(), schema(DIM, Dtype::F32)).unwrap();
        let mut tx = w.begin();
        let ids: Vec<u64> = (10..15).collect();
        let v: Vec<f32> = ids.iter().flat_map(|&i| vector(i, DIM, 0)).collect();
        tx.add_items(
            ItemBatch::new(ids)
                .stat("ctr_1d", vec![1.0, 0.0, 0.0, 0.0, 0.0])
                .embedding("prerank@v42", v),
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let base: BTreeMap<String, Vec<u8>> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "LOCK")
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    // Record two publishes with GC between and after.
    let rec = Rec::default();
    let mut w = Writer::open_with_fs(dir.path(), Arc::new(rec.clone())).unwrap();
    w.set_retention(Retention {
        keep_last: 1,
        grace: std::time::Duration::ZERO,
    });
    for _ in 0..2 {
        let n = publish(&mut w);
        rec.0.lock().unwrap().push(Op::Ack(n));
        w.gc().unwrap();
    }
    drop(w);
    let ops = rec.0.lock().unwrap().clone();
    let mut images = 0;
    for k in 0..=ops.len() {
        let prefix = &ops[..k];
        let acked = prefix
            .iter()
            .filter_map(|o| if let Op::Ack(n) = o { Some(*n) } else { None })
            .max()
            .unwrap_or(1);
        for seed in 0..seeds {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (k as u64 * 1000 + seed + 1));
            let img = image(&base, prefix, &mut rng);
            let d = tempfile::tempdir().unwrap();
            for (n, c) in &img {
                std::fs::write(d.path().join(n), c).unwrap();
            }
            let store = Store::open(d.path()).unwrap_or_else(|e| {
                panic!(
                    "op {k} seed {seed}: {e}; files {:?}",
                    img.keys().collect::<Vec<_>>()
                )
            });
            let s = store.snapshot();
            assert!(
                s.number() == acked || s.number() == acked + 1,
                "op {k} seed {seed}: acked {acked}, visible {}",
                s.number()
            );
            check(&s, s.number());
            if s.number() != acked {
                // The acknowledged snapshot is still there too, exact.
                check(&store.open_snapshot(acked).unwrap(), acked);
            }
            images += 1;
        }
    }
    eprintln!(
        "{images} crash images over {} recorded operations",
        ops.len()
    );
    assert!(images >= 500);
}
