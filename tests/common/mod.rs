//! Helpers shared by the integration tests.
#![allow(dead_code)]

use vstore::{Dtype, ItemBatch, Schema, Writer};

/// The schema most tests use: two profile columns, two statistics, one
/// embedding version.
pub fn schema(dim: u32, dtype: Dtype) -> Schema {
    Schema::new()
        .categorical("category", 0)
        .numeric("price", -1.0)
        .stat("ctr_1d", 0.0)
        .stat("impressions_7d", 0.0)
        .embedding("prerank", "v42", dim, dtype)
}

/// A deterministic vector for item `id` (values exactly representable in f16).
pub fn vector(id: u64, dim: u32, salt: u64) -> Vec<f32> {
    (0..dim as u64)
        .map(|j| (((id * 31 + j * 7 + salt * 13) % 64) as f32 - 32.0) / 16.0)
        .collect()
}

/// A batch of items `ids` for [`schema`].
pub fn batch(ids: &[u64], dim: u32, salt: u64) -> ItemBatch {
    let vecs: Vec<f32> = ids.iter().flat_map(|&id| vector(id, dim, salt)).collect();
    items_without_vectors(ids, salt).embedding("prerank@v42", vecs)
}

/// [`batch`] without its `prerank@v42` vectors (for a version whose item
/// tower computes them).
pub fn items_without_vectors(ids: &[u64], salt: u64) -> ItemBatch {
    ItemBatch::new(ids.to_vec())
        .categorical("category", ids.iter().map(|&i| (i % 7) as u32).collect())
        .numeric_opt(
            "price",
            ids.iter()
                .map(|&i| (i % 5 != 0).then_some(i as f32 * 0.5))
                .collect(),
        )
        .stat("ctr_1d", ids.iter().map(|&i| stat_value(i, salt)).collect())
        .stat("impressions_7d", ids.iter().map(|&i| i as f32).collect())
}

/// A writer of a new store at `dir` with [`schema`]`(dim, Dtype::F32)`,
/// whose first snapshot holds [`batch`]`(ids, dim, 0)`.
pub fn store_of(dir: &std::path::Path, dim: u32, ids: &[u64]) -> Writer {
    let mut w = Writer::create(dir, schema(dim, Dtype::F32)).unwrap();
    let mut tx = w.begin();
    tx.add_items(batch(ids, dim, 0)).unwrap();
    tx.commit().unwrap();
    w
}

/// A statistics update of items `ids` for [`schema`]: `ctr_1d` becomes
/// [`stat_value`]`(id, salt)`.
pub fn stats_update(ids: &[u64], salt: u64) -> ItemBatch {
    ItemBatch::new(ids.to_vec()).stat("ctr_1d", ids.iter().map(|&i| stat_value(i, salt)).collect())
}

/// The `ctr_1d` value item `id` gets in generation `salt`.
pub fn stat_value(id: u64, salt: u64) -> f32 {
    ((id + salt) % 1000) as f32 / 1000.0
}

/// Names of the files in `dir`, sorted.
pub fn files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub mod bundle;
pub mod reference;

/// The value of environment variable `name` (a test's size knob, such as
/// `VSTORE_PROPTEST_CASES`), or `default` if it is unset or does not parse.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Creates a FIFO at `path` with `mkfifo(3)`, in this process. (Spawning
/// the `mkfifo` program would fork, and a child forked while another test
/// thread holds a writer's lock keeps that lock until it execs: a
/// `Writer::open` racing it would see `Error::Locked`.)
pub fn mkfifo(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o644) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
