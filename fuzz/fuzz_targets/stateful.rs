//! Stateful target: the input drives a sequence of transactions (add,
//! delete, stats refresh, compact), commits, GCs, reader refreshes and
//! queries, with I/O faults injected at input-chosen operations, checked
//! after every step against an in-memory model. Any panic, a visible
//! snapshot that is neither the last acknowledged one nor the one in
//! flight, or a value that differs from the model is a finding.
#![no_main]

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use vstore::{Dtype, Fs, FsFile, ItemBatch, Query, Retention, Schema, StdFs, Store, Writer};

#[derive(Debug, Default)]
struct Faults {
    count: u64,
    fail_at: Option<u64>,
}

#[derive(Debug, Clone, Default)]
struct FaultFs(Arc<Mutex<Faults>>);

impl FaultFs {
    fn tick(&self) -> io::Result<()> {
        let mut f = self.0.lock().unwrap();
        f.count += 1;
        if f.fail_at == Some(f.count) {
            return Err(io::Error::from_raw_os_error(5));
        }
        Ok(())
    }
}

struct File2(FaultFs, Box<dyn FsFile>);
impl Write for File2 {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.tick()?;
        self.1.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.1.flush()
    }
}
impl FsFile for File2 {
    fn sync(&mut self) -> io::Result<()> {
        self.0.tick()?;
        self.1.sync()
    }
}
impl Fs for FaultFs {
    fn create_new(&self, p: &Path) -> io::Result<Box<dyn FsFile>> {
        self.tick()?;
        Ok(Box::new(File2(self.clone(), StdFs.create_new(p)?)))
    }
    fn rename(&self, a: &Path, b: &Path) -> io::Result<()> {
        self.tick()?;
        StdFs.rename(a, b)
    }
    fn remove(&self, p: &Path) -> io::Result<()> {
        self.tick()?;
        StdFs.remove(p)
    }
    fn sync_dir(&self, d: &Path) -> io::Result<()> {
        self.tick()?;
        StdFs.sync_dir(d)
    }
}

type Model = BTreeMap<u64, (f32, [f32; 4])>;

fn vec_of(id: u64, salt: u8) -> [f32; 4] {
    let mut v = [0f32; 4];
    for (j, x) in v.iter_mut().enumerate() {
        *x = (((id as usize * 7 + j * 3 + salt as usize) % 16) as f32 - 8.0) / 4.0;
    }
    v
}

fn check(store: &Store, model: &Model) {
    let s = store.snapshot();
    let ids: Vec<u64> = s.ids().collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, model.keys().copied().collect::<Vec<_>>());
    for (&id, (ctr, v)) in model {
        assert_eq!(s.get_stat(id, "ctr").unwrap(), Some(*ctr));
        assert_eq!(s.get_embedding(id, "s@v1").unwrap(), v.to_vec());
    }
    let user = [1.0f32, -2.0, 0.5, 0.25];
    let r = s.query(&Query::full_scan("s@v1", &user, 3)).unwrap();
    let mut want: Vec<(f32, u64)> = model
        .iter()
        .map(|(&id, (_, v))| (v.iter().zip(&user).map(|(a, b)| a * b).sum::<f32>(), id))
        .collect();
    want.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
    want.truncate(3);
    assert_eq!(r.hits.iter().map(|h| (h.score, h.id)).collect::<Vec<_>>(), want);
}

fuzz_target!(|data: &[u8]| {
    let base = std::env::var_os("VSTORE_FUZZ_TMP").map(PathBuf::from).unwrap_or_else(|| "/dev/shm".into());
    let Ok(dir) = tempfile::tempdir_in(&base).or_else(|_| tempfile::tempdir()) else { return };
    let schema = Schema::new().stat("ctr", 0.0).embedding("s", "v1", 4, Dtype::F32);
    let faults = FaultFs::default();
    let mut w = Writer::create_with_fs(dir.path(), schema, Arc::new(faults.clone())).unwrap();
    w.set_retention(Retention { keep_last: 1, grace: std::time::Duration::ZERO });
    let mut model: Model = BTreeMap::new();
    let mut acked = 0u64;
    let mut store: Option<Store> = None;
    let mut bytes = data.iter().copied();
    let mut salt = 0u8;
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        match op % 6 {
            // A transaction of up to 3 steps, then commit.
            0 | 1 | 2 => {
                let mut next = model.clone();
                let mut tx = w.begin();
                let number = tx.number();
                let mut ok = true;
                for step in 0..(arg % 3 + 1) {
                    let b = bytes.next().unwrap_or(0);
                    let id = (b % 32) as u64;
                    salt = salt.wrapping_add(1);
                    let r = match (op as usize + step as usize) % 4 {
                        0 if !next.contains_key(&id) => {
                            let v = vec_of(id, salt);
                            next.insert(id, (salt as f32, v));
                            tx.add_items(ItemBatch::new(vec![id]).stat("ctr", vec![salt as f32]).embedding("s@v1", v.to_vec()))
                        }
                        1 if next.contains_key(&id) => {
                            next.remove(&id);
                            tx.delete_items(&[id])
                        }
                        2 if next.contains_key(&id) => {
                            next.get_mut(&id).unwrap().0 = -(salt as f32);
                            tx.update_stats(ItemBatch::new(vec![id]).stat("ctr", vec![-(salt as f32)]))
                        }
                        3 => tx.compact().map(|_| ()),
                        _ => Ok(()),
                    };
                    if r.is_err() {
                        ok = false;
                        break;
                    }
                }
                let committed = if ok {
                    tx.commit().is_ok()
                } else {
                    drop(tx); // abandoned: its files are removed
                    false
                };
                if committed {
                    model = next;
                    acked = number;
                } else {
                    // Poisoned: reopen on a healthy disk. The visible snapshot
                    // is the acknowledged one or (failure after the rename)
                    // the one in flight.
                    drop(w);
                    faults.0.lock().unwrap().fail_at = None;
                    let s = Store::open(dir.path());
                    match s {
                        Ok(s) => {
                            let n = s.snapshot().number();
                            assert!(n == acked || n == number, "visible {n}, acked {acked}, in flight {number}");
                            if n == number && ok {
                                model = next;
                                acked = number;
                            }
                        }
                        Err(e) => assert!(acked == 0, "store with acked {acked} does not open: {e}"),
                    }
                    w = match Writer::open_with_fs(dir.path(), Arc::new(faults.clone())) {
                        Ok(w) => w,
                        Err(_) if acked == 0 => return,
                        Err(e) => panic!("reopen: {e}"),
                    };
                    w.set_retention(Retention { keep_last: 1, grace: std::time::Duration::ZERO });
                }
            }
            3 => {
                if w.gc().is_err() {
                    return; // poisoned by an injected fault; covered above
                }
            }
            4 => {
                if acked == 0 {
                    continue;
                }
                match &store {
                    Some(s) => {
                        s.refresh().unwrap();
                    }
                    None => store = Some(Store::open(dir.path()).unwrap()),
                }
                check(store.as_ref().unwrap(), &model);
            }
            _ => {
                // Fail the arg-th file operation from now.
                let mut f = faults.0.lock().unwrap();
                f.fail_at = Some(f.count + 1 + arg as u64 % 24);
            }
        }
    }
});
