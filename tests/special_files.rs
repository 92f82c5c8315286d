//! Names of the store's own files held by something that is not a regular
//! file (a FIFO, a directory): every operation refuses or skips it with an
//! error naming it, and never waits on it.

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use common::{batch, schema};
use vstore::{Dtype, Retention, Store, Writer};

const DIM: u32 = 4;

/// Runs `f` on a thread and returns its result, failing the test if it has
/// not finished within a few seconds (a hang guard, not a speed test: the
/// old code blocked forever opening a FIFO).
fn promptly<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what} did not return within 10 s (blocked on a FIFO?)"))
}

fn mkfifo(path: &Path) {
    common::mkfifo(path).unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
}

fn store_with(snapshots: u64, dir: &Path) {
    let mut w = Writer::create(dir, schema(DIM, Dtype::F32)).unwrap();
    for i in 0..snapshots {
        let mut tx = w.begin();
        tx.add_items(batch(&[i], DIM, 0)).unwrap();
        tx.commit().unwrap();
    }
}

#[test]
fn a_fifo_lock_file_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    store_with(1, dir.path());
    let lock = dir.path().join("LOCK");
    std::fs::remove_file(&lock).unwrap();
    mkfifo(&lock);
    let d = dir.path().to_path_buf();
    let e = promptly("Writer::open", move || Writer::open(&d).map(|_| ())).unwrap_err();
    assert_eq!(e.path(), Some(lock.as_path()), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("FIFO") && msg.contains("not a regular file"),
        "{msg}"
    );
    assert!(msg.contains("cannot be written"), "{msg}");
    // Readers are unaffected.
    assert_eq!(Store::open(dir.path()).unwrap().snapshot().len(), 1);

    // Creating a store in a directory whose LOCK is a FIFO: the same.
    let fresh = tempfile::tempdir().unwrap();
    let lock = fresh.path().join("LOCK");
    mkfifo(&lock);
    let d = fresh.path().to_path_buf();
    let e = promptly("Writer::create", move || {
        Writer::create(&d, schema(DIM, Dtype::F32)).map(|_| ())
    })
    .unwrap_err();
    assert_eq!(e.path(), Some(lock.as_path()), "{e}");
}

#[test]
fn a_directory_lock_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    store_with(1, dir.path());
    let lock = dir.path().join("LOCK");
    std::fs::remove_file(&lock).unwrap();
    std::fs::create_dir(&lock).unwrap();
    let e = Writer::open(dir.path()).unwrap_err();
    assert_eq!(e.path(), Some(lock.as_path()), "{e}");
    assert!(e.to_string().contains("is a directory"), "{e}");
}

#[test]
fn a_fifo_named_like_the_newest_manifest_is_skipped_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    store_with(1, dir.path());
    let m2 = dir.path().join("MANIFEST-00000000000000000002");
    mkfifo(&m2);
    let d = dir.path().to_path_buf();
    let store = promptly("Store::open", move || Store::open(&d)).unwrap();
    assert_eq!(store.snapshot().number(), 1);
    let skipped = store.skipped_manifests();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0].1.contains("FIFO"), "{skipped:?}");
    let d = dir.path().to_path_buf();
    let e = promptly("Store::verify", move || {
        Store::open(&d).unwrap().verify().map(|_| ())
    })
    .unwrap_err();
    assert_eq!(e.path(), Some(m2.as_path()), "{e}");
    // The writer opens (on snapshot 1) and its gc leaves the FIFO alone.
    let d = dir.path().to_path_buf();
    let r = promptly("Writer::open + gc", move || {
        let mut w = Writer::open(&d).unwrap();
        w.gc()
    })
    .unwrap();
    // Not a manifest vstore wrote: skipped and reported, and it does not
    // stop collection the way an unreadable manifest does.
    assert!(r.unreadable_manifests.is_empty(), "{r:?}");
    assert_eq!(
        r.skipped,
        vec![(
            "MANIFEST-00000000000000000002".to_string(),
            "a FIFO".to_string()
        )]
    );
    assert!(m2.exists());

    // A store whose only manifest is a FIFO is an error, promptly.
    let only = tempfile::tempdir().unwrap();
    mkfifo(&only.path().join("MANIFEST-00000000000000000001"));
    let d = only.path().to_path_buf();
    assert!(promptly("Store::open", move || Store::open(&d)).is_err());
}

#[test]
fn a_fifo_in_place_of_a_data_file_is_refused_promptly() {
    let dir = tempfile::tempdir().unwrap();
    store_with(1, dir.path());
    let f = dir.path().join("s0000000001-g0-profile.vcol");
    std::fs::remove_file(&f).unwrap();
    mkfifo(&f);
    let d = dir.path().to_path_buf();
    let e = promptly("Store::open", move || Store::open(&d).map(|_| ())).unwrap_err();
    assert_eq!(e.path(), Some(f.as_path()), "{e}");
    assert!(e.to_string().contains("FIFO"), "{e}");
}

#[test]
fn gc_skips_and_reports_non_regular_entries_named_like_store_files_and_collects_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    store_with(3, dir.path());
    let p = dir.path();
    // Something that is not a file, under data-file and .tmp names.
    std::fs::create_dir(p.join("s0000000003-g9-profile.vcol")).unwrap();
    mkfifo(&p.join("s0000000002-g9-stats.vcol"));
    std::fs::create_dir(p.join("MANIFEST-00000000000000000003.tmp")).unwrap();
    // Real garbage: a stray data file and a .tmp, plus what the two older
    // snapshots leave behind once they go.
    std::fs::write(p.join("s0000000002-g7-ids.vidx"), b"partial").unwrap();
    std::fs::write(p.join("MANIFEST-00000000000000000002.tmp"), b"partial").unwrap();
    let d = p.to_path_buf();
    let r = promptly("gc", move || {
        let mut w = Writer::open(&d).unwrap();
        w.set_retention(Retention {
            keep_last: 1,
            grace: Duration::ZERO,
        });
        w.gc()
    })
    .unwrap();
    assert_eq!(r.kept, vec![3]);
    assert_eq!(r.removed_snapshots, vec![1, 2]);
    assert!(r.unreadable_manifests.is_empty(), "{r:?}");
    let skipped: Vec<(&str, &str)> = r
        .skipped
        .iter()
        .map(|(n, w)| (n.as_str(), w.as_str()))
        .collect();
    assert_eq!(
        skipped,
        vec![
            ("MANIFEST-00000000000000000003.tmp", "a directory"),
            ("s0000000002-g9-stats.vcol", "a FIFO"),
            ("s0000000003-g9-profile.vcol", "a directory"),
        ]
    );
    for (n, _) in &r.skipped {
        assert!(
            std::fs::symlink_metadata(p.join(n)).is_ok(),
            "{n} left in place"
        );
    }
    for g in [
        "s0000000002-g7-ids.vidx",
        "MANIFEST-00000000000000000002.tmp",
    ] {
        assert!(r.removed_files.iter().any(|f| f == g), "{g}: {r:?}");
        assert!(!p.join(g).exists(), "{g} removed");
    }
    let store = Store::open(p).unwrap();
    assert_eq!(store.snapshots().unwrap(), vec![3]);
    store.verify().unwrap();
}
