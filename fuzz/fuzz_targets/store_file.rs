//! One file of the golden store replaced by fuzzed bytes (the first input
//! byte picks which file), then the store opened, verified and queried:
//! every outcome must be a result or a typed error, never a panic. This
//! reaches the semantic checks (manifest references, segment and column
//! layout) that the container target stops short of. Checksums in the
//! replaced file are fixed up, so fuzzed metadata gets past them.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn golden() -> &'static [(String, Vec<u8>)] {
    static G: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    G.get_or_init(|| {
        // The golden store of the format this build writes.
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../format/golden/v{}", vstore::FORMAT_VERSION));
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
            })
            .collect();
        v.sort();
        v
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    let files = golden();
    let victim = sel as usize % files.len();
    let base = std::env::var_os("VSTORE_FUZZ_TMP").map(PathBuf::from).unwrap_or_else(|| "/dev/shm".into());
    let Ok(dir) = tempfile::tempdir_in(&base).or_else(|_| tempfile::tempdir()) else { return };
    for (i, (name, content)) in files.iter().enumerate() {
        let body: Vec<u8> = if i == victim {
            vstore::fuzzing::fix_checksums_pub(bytes).unwrap_or_else(|| bytes.to_vec())
        } else {
            content.clone()
        };
        std::fs::write(dir.path().join(name), body).unwrap();
    }
    if let Ok(store) = vstore::Store::open(dir.path()) {
        let _ = store.verify();
        let snap = store.snapshot();
        for key in snap.embedding_keys() {
            if let Ok(def) = snap.embedding_def(&key) {
                let user = vec![0.5f32; def.dim as usize];
                let _ = snap.query(&vstore::Query::ids(&key, &user, &[42, 1007, 0, u64::MAX], 3));
                let _ = snap.query(&vstore::Query::full_scan(&key, &user, 3));
            }
        }
        for key in snap.model_keys() {
            if let Ok(m) = snap.model(&key) {
                let user = vec![0.5f32; m.user_dim()];
                let mut inputs = vstore::UserInputs::new();
                for u in m.user_inputs() {
                    inputs = match u.by_item_column {
                        None => inputs.dense(&u.name, vec![0.25; u.dim]),
                        Some(_) => inputs.by_item(&u.name, [(4, vec![0.5; u.dim])]),
                    };
                }
                let q = vstore::Query::ids(&key, &user, &[42, 1007, 0, u64::MAX], 3).three_tower(&inputs);
                let _ = snap.query(&q.with_heads());
            }
        }
        for id in [42u64, 1007, 99_999] {
            let _ = snap.get_stat(id, "likes_7d");
            let _ = snap.get_categorical(id, "category");
        }
    }
});
