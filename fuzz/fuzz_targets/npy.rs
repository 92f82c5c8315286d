//! Any bytes, read as a `.npy` file by vstore-tool (embeddings, ids and a
//! user vector), must give a value or an error, never a panic, an
//! out-of-bounds read or a huge allocation. A value must be what its
//! header says (row count times dimension, finite), and the mapped file
//! path must agree with the in-memory one.
//!
//! Seed corpus: `fuzz/seeds/npy` (small numpy files of each dtype and
//! order) and the tool's test data (`fuzz/run.sh`).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vstore_tool::npy;
use vstore_tool::progress::Progress;

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("input.npy");
        (d, p)
    })
    .1
}

fuzz_target!(|data: &[u8]| {
    let name = Path::new("input.npy");
    let m = npy::matrix_from_bytes(name, data);
    if let Ok(a) = &m {
        assert_eq!(a.shape.len(), 2);
        assert_eq!(a.values.len(), a.shape[0] * a.shape[1]);
        assert!(a.values.iter().all(|x| x.is_finite()));
    }
    let ids = npy::ids_from_bytes(name, data);
    if let Ok(v) = &ids {
        assert!(v.len() * 4 <= data.len());
    }
    if let Ok(v) = npy::vector_from_bytes(name, data) {
        assert!(v.iter().all(|x| x.is_finite()));
    }
    // The same bytes as a mapped file.
    let p = scratch();
    std::fs::write(p, data).unwrap();
    let mapped = npy::read_matrix(p, &Progress::hidden());
    assert_eq!(m.is_ok(), mapped.is_ok());
    if let (Ok(a), Ok(b)) = (&m, &mapped) {
        assert_eq!(a, b);
    }
    let mapped = npy::read_ids(p, &Progress::hidden());
    assert_eq!(ids.ok(), mapped.ok());
});
