//! Process-wide registry of pinned snapshots, so that a writer's garbage
//! collection in this process never removes a snapshot that a reader in this
//! process still holds (readers in other processes are covered by the grace
//! period and by mapping every file when they pin).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

static PINS: Mutex<BTreeMap<(PathBuf, u64), usize>> = Mutex::new(BTreeMap::new());

/// Holds one pin on `(store, snapshot)` until dropped.
#[derive(Debug)]
pub(crate) struct Pin {
    store: PathBuf,
    snapshot: u64,
}

impl Pin {
    pub(crate) fn new(store: &Path, snapshot: u64) -> Pin {
        *PINS
            .lock()
            .entry((store.to_path_buf(), snapshot))
            .or_insert(0) += 1;
        Pin {
            store: store.to_path_buf(),
            snapshot,
        }
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = PINS.lock();
        let key = (std::mem::take(&mut self.store), self.snapshot);
        if let Some(n) = pins.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&key);
            }
        }
    }
}

/// Snapshots of `store` pinned in this process.
pub(crate) fn pinned(store: &Path) -> Vec<u64> {
    PINS.lock()
        .keys()
        .filter(|(p, _)| p == store)
        .map(|(_, s)| *s)
        .collect()
}
