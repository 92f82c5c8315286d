//! Damage every file kind of a store (truncate, zero, flip bits) and check
//! that opening and verifying it gives a typed error naming the damaged
//! file: never a panic, never a silent success.
//!
//! Every byte of every file is flipped (one seeded bit per byte) by default;
//! `VSTORE_CORRUPTION_BITS=8` flips every bit of every byte (long run).

mod common;

use std::path::{Path, PathBuf};

use common::batch;
use vstore::{Dtype, Error, Schema, Store, Writer};

fn build(dir: &Path) {
    let schema = Schema::new()
        .categorical("category", 0)
        .numeric("price", -1.0)
        .stat("ctr_1d", 0.0)
        .stat("impressions_7d", 0.0)
        .embedding("prerank", "v42", 8, Dtype::F16);
    let mut w = Writer::create(dir, schema).unwrap();
    let mut tx = w.begin();
    tx.add_items(batch(&(0..70).collect::<Vec<_>>(), 8, 0))
        .unwrap();
    tx.add_items(batch(&(100..130).collect::<Vec<_>>(), 8, 0))
        .unwrap();
    tx.commit().unwrap();
    let mut tx = w.begin();
    let ids: Vec<u64> = (0..70).chain(100..130).collect();
    let v: Vec<f32> = ids.iter().flat_map(|&i| common::vector(i, 12, 1)).collect();
    tx.add_embedding(
        vstore::EmbeddingDef::new("prerank", "v43", 12, Dtype::I8),
        &ids,
        &v,
    )
    .unwrap();
    tx.delete_items(&[3, 64, 101]).unwrap();
    tx.commit().unwrap();
}

/// Opens the store and verifies everything; the outcome of one damage case.
fn open_and_verify(dir: &Path) -> vstore::Result<()> {
    let store = Store::open(dir)?;
    store.verify()?;
    let s = store.snapshot();
    // Reads must not panic either.
    for id in [0u64, 5, 64, 101, 129] {
        let _ = s.get_embedding(id, "prerank@v42");
        let _ = s.get_embedding(id, "prerank@v43");
        let _ = s.get_stat(id, "ctr_1d");
    }
    Ok(())
}

/// The current snapshot's files, one per kind worth damaging.
fn targets(dir: &Path) -> Vec<(String, PathBuf)> {
    let store = Store::open(dir).unwrap();
    let s = store.snapshot();
    let mut out = Vec::new();
    for f in s.files() {
        let kind = if f.starts_with("MANIFEST") {
            "manifest"
        } else if f.ends_with(".vidx") {
            "id index"
        } else if f.ends_with(".vdel") {
            "deletion bitmap"
        } else if f.contains("-stats") {
            "statistics"
        } else if f.contains("-profile") {
            "profile"
        } else if f.contains("-emb-") {
            "embedding"
        } else {
            panic!("unexpected file {f}")
        };
        out.push((kind.to_string(), dir.join(f)));
    }
    let kinds: std::collections::HashSet<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds.len(), 6, "every file kind present: {kinds:?}");
    out
}

fn expect_error_naming(dir: &Path, file: &Path, what: &str) {
    match open_and_verify(dir) {
        Ok(()) => panic!("{what} of {} went undetected", file.display()),
        Err(e) => {
            assert_eq!(
                e.path(),
                Some(file),
                "{what}: error does not name the damaged file: {e}"
            );
            assert!(
                matches!(e, Error::Corrupt { .. } | Error::UnsupportedFormat { .. }),
                "{what}: unexpected error kind {e:?}"
            );
        }
    }
}

#[test]
fn truncation_of_every_file_kind_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    for (kind, path) in targets(dir.path()) {
        let orig = std::fs::read(&path).unwrap();
        for len in [
            0,
            1,
            63,
            64,
            104,
            orig.len() / 2,
            orig.len() - 40,
            orig.len() - 1,
        ] {
            std::fs::write(&path, &orig[..len]).unwrap();
            expect_error_naming(dir.path(), &path, &format!("{kind} truncated to {len}"));
        }
        // Extended files are damaged too: zeros, and garbage.
        for tail in [&[0u8; 8][..], b"garbage!", &[0xFF; 100][..]] {
            let mut longer = orig.clone();
            longer.extend_from_slice(tail);
            std::fs::write(&path, &longer).unwrap();
            expect_error_naming(
                dir.path(),
                &path,
                &format!("{kind} extended by {} bytes", tail.len()),
            );
        }
        std::fs::write(&path, &orig).unwrap();
    }
    open_and_verify(dir.path()).unwrap();
}

#[test]
fn zeroing_of_every_file_kind_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    for (kind, path) in targets(dir.path()) {
        let orig = std::fs::read(&path).unwrap();
        let n = orig.len();
        let ranges = [
            (0, n),
            (0, 8),
            (8, 64),
            (64, 192.min(n)),
            (n / 2 - 32, n / 2 + 32),
            (n - 40, n),
            (n - 200, n - 40),
        ];
        let mut tried = 0;
        for (a, b) in ranges {
            let mut damaged = orig.clone();
            damaged[a..b].fill(0);
            if damaged == orig {
                continue; // already zero: nothing was damaged
            }
            tried += 1;
            std::fs::write(&path, &damaged).unwrap();
            expect_error_naming(dir.path(), &path, &format!("{kind} zeroed {a}..{b}"));
        }
        assert!(
            tried >= 5,
            "{kind}: only {tried} zeroing cases damaged anything"
        );
        std::fs::write(&path, &orig).unwrap();
    }
    open_and_verify(dir.path()).unwrap();
}

#[test]
fn every_byte_bit_flip_of_every_file_kind_is_detected() {
    let bits: usize = common::env_or("VSTORE_CORRUPTION_BITS", 1usize).clamp(1, 8);
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let mut cases = 0;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for (kind, path) in targets(dir.path()) {
        let orig = std::fs::read(&path).unwrap();
        let mut damaged = orig.clone();
        for i in 0..orig.len() {
            for b in 0..bits {
                let bit = if bits == 8 {
                    b
                } else {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed % 8) as usize
                };
                damaged[i] ^= 1 << bit;
                std::fs::write(&path, &damaged).unwrap();
                expect_error_naming(
                    dir.path(),
                    &path,
                    &format!("{kind}: bit {bit} of byte {i} flipped"),
                );
                damaged[i] = orig[i];
                cases += 1;
            }
        }
        std::fs::write(&path, &orig).unwrap();
    }
    assert!(cases > 1000, "{cases}");
    open_and_verify(dir.path()).unwrap();
}

/// Every file of `dir`, by name, to put back after a case.
fn save(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    v
}

fn restore(saved: &[(PathBuf, Vec<u8>)]) {
    for (p, b) in saved {
        std::fs::write(p, b).unwrap();
    }
}

/// A block moved within its file's data region, with the metadata
/// re-encoded and every checksum (the file's metadata and footer, and the
/// manifest's reference to it) recomputed: the data chunk checksums still
/// match, so only the layout rule (FORMAT.md, "Data region") tells. Every
/// block of every data file kind, moved 64 bytes back (or forward for the
/// first), is refused at open naming the file and the field.
#[test]
fn a_block_moved_with_checksums_recomputed_is_refused_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let saved = save(dir.path());
    let mut cases = 0;
    for (kind, path) in targets(dir.path()) {
        if kind == "manifest" {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        for index in 0.. {
            let Some(what) = vstore::fuzzing::move_block(dir.path(), &name, index, -64)
                .or_else(|| vstore::fuzzing::move_block(dir.path(), &name, index, 64))
            else {
                break;
            };
            cases += 1;
            let case = format!("{kind} {name}: {what} moved");
            // Every checksum matches: only the layout can tell.
            let e = match Store::open(dir.path()) {
                Ok(_) => panic!("{case}: accepted"),
                Err(e) => e,
            };
            assert_eq!(e.path(), Some(path.as_path()), "{case}: {e}");
            assert!(matches!(e, Error::Corrupt { .. }), "{case}: {e:?}");
            let msg = e.to_string();
            assert!(
                msg.contains(&what) && msg.contains("not where the writer lays it out"),
                "{case}: {msg}"
            );
            restore(&saved);
        }
    }
    // ids, table, bloom; values (+ missing) per column; vectors; bitmap.
    assert!(cases >= 10, "{cases}");
    open_and_verify(dir.path()).unwrap();
}
