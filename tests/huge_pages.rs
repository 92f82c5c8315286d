//! A store's large files are mapped with huge pages wherever the kernel maps
//! a file written in whole, aligned 2 MiB pieces with huge pages (Linux 6.16+
//! on ext4, XFS, ...): the writer hands the file system whole aligned
//! extents (`src/extents.rs`), and the page cache keeps them as 2 MiB folios.
//!
//! The test first writes a control file in the ideal pattern (one 4 MiB
//! write) and maps it. Where the kernel or file system does not map even
//! that one with huge pages, there is nothing the store could do, and the
//! test says so and checks nothing more; where it does, the store's
//! embedding column must be mapped with huge pages too.
#![cfg(target_os = "linux")]

use std::io::Write;

use vstore::{Dtype, ItemBatch, OpenOptions, Query, Schema, Store, Writer};

/// Kilobytes mapped with huge pages (`FilePmdMapped`) in this process's
/// mappings of files whose name ends with `suffix`.
fn pmd_mapped_kb(suffix: &str) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    let mut kb = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            inside = line.trim_end().ends_with(suffix);
        } else if inside && first == "FilePmdMapped:" {
            kb += line
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap();
        }
    }
    kb
}

#[test]
fn embedding_column_is_mapped_with_huge_pages() {
    let dir = tempfile::tempdir().unwrap();

    // The control: 4 MiB written at once, mapped and read.
    let control = dir.path().join("control.bin");
    let mut f = std::fs::File::create(&control).unwrap();
    f.write_all(&vec![7u8; 4 << 20]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let f = std::fs::File::open(&control).unwrap();
    // SAFETY: the file is private to this test and not modified while mapped.
    let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
    map.advise(memmap2::Advice::HugePage).ok();
    let sum: u64 = map.iter().step_by(4096).map(|&b| b as u64).sum();
    assert_eq!(sum, 7 * 1024);
    if pmd_mapped_kb("control.bin") == 0 {
        eprintln!(
            "this kernel or file system maps no file with huge pages \
             (see /sys/kernel/mm/transparent_hugepage); nothing to check"
        );
        return;
    }

    // A store whose embedding column spans several extents (40,000 rows of
    // 64 f32 = 10 MiB).
    let dim = 64u32;
    let ids: Vec<u64> = (1..=40_000).collect();
    let schema = Schema::new().embedding("prerank", "v1", dim, Dtype::F32);
    let mut w = Writer::create(dir.path(), schema).unwrap();
    let mut tx = w.begin();
    let vecs = ids
        .iter()
        .flat_map(|&id| (0..dim).map(move |j| ((id * 31 + j as u64) % 97) as f32 / 97.0))
        .collect();
    tx.add_items(ItemBatch::new(ids.clone()).embedding("prerank@v1", vecs))
        .unwrap();
    tx.commit().unwrap();
    drop(w);

    // Opened with every page prefaulted: the mapping is complete before
    // any query reads it.
    let store = Store::open_with(dir.path(), OpenOptions::new().populate(true)).unwrap();
    let kb = pmd_mapped_kb("emb-prerank@v1.vcol");
    let snap = store.snapshot();
    let user = vec![0.5f32; dim as usize];
    let res = snap
        .query(&Query::full_scan("prerank@v1", &user, 10))
        .unwrap();
    assert_eq!(res.hits.len(), 10);
    // The column file holds four whole extents; allow one to be mapped
    // with small pages (memory pressure, a folio read back small).
    assert!(
        kb >= 3 * 2048,
        "embedding column mapped with {kb} KiB of huge pages; want at least 6 MiB"
    );
}
