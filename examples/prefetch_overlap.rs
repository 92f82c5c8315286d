//! How much of a prefetched random cache miss the core hides behind
//! independent work, on this machine: the question behind the two-tower
//! query's distance from its gather floor (issue 3).
//!
//! A loop reads one random 64-byte line per step, prefetching the line
//! `DIST` steps ahead (as the query does), and then runs `work` rounds of
//! the id hash on it (about 2 ns a round). The same loop runs over a buffer
//! that fits in L2 (the work alone) and over one far larger than the caches
//! (the work plus the misses), both on huge pages. With full overlap the
//! large buffer would cost max(work, memory); the printed "extra" is what
//! it costs beyond the work, against the misses alone (work 0).
//!
//! `FILE=1` reads the large buffer from a memory-mapped file in the page
//! cache (as a store's columns are read; written under `target/`,
//! removed at the end) instead of anonymous memory.
//!
//! `LINES=3` makes each step read three random lines (all prefetched
//! `DIST` steps ahead), as a two-tower query's candidate does (its
//! id-index bucket and a two-line row).
//!
//! `cargo run --release --example prefetch_overlap` (a few seconds).
use std::time::Instant;

use vstore::bench_support::{id_hash as mix, prefetch};

const STEPS: usize = 5000;
const DIST: usize = 32;

/// Median ns per step of the loop over `buf` with `work` hash rounds,
/// `per` random lines a step.
fn run(buf: &[u64], work: u32, per: usize) -> f64 {
    let lines = (buf.len() / 8) as u64;
    let sets: Vec<Vec<usize>> = (0..64u64)
        .map(|s| {
            (0..(STEPS * per) as u64)
                .map(|i| (mix(s * (STEPS * per) as u64 + i) % lines) as usize * 8)
                .collect()
        })
        .collect();
    let mut times = Vec::new();
    let mut acc = 0u64;
    for it in 0..1500 {
        let idx = &sets[it % sets.len()];
        let t = Instant::now();
        for i in 0..STEPS {
            for l in 0..per {
                if let Some(&j) = idx.get((i + DIST) * per + l) {
                    prefetch(&buf[j] as *const u64 as *const u8);
                }
            }
            let mut h = (0..per).fold(0, |h, l| h ^ buf[idx[i * per + l]]);
            for _ in 0..work {
                h = mix(h);
            }
            acc = acc.wrapping_add(h);
        }
        times.push(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(acc);
    times.sort_by(f64::total_cmp);
    times[times.len() / 2] * 1e9 / STEPS as f64
}

/// A buffer of `mb` MiB on huge pages where the kernel allows, every page
/// written (so no step takes a page fault).
fn buffer(mb: usize) -> memmap2::MmapMut {
    let mut map = memmap2::MmapMut::map_anon(mb << 20).expect("anonymous map");
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    for (i, w) in map.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&(i as u64).to_le_bytes());
    }
    map
}

/// A read-only map of a `mb` MiB file under `target/` (its pages read once,
/// so no step takes a page fault), and the file's path.
fn file_buffer(mb: usize) -> (memmap2::Mmap, std::path::PathBuf) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/prefetch_overlap.bin");
    let data: Vec<u8> = (0..(mb << 20) / 8)
        .flat_map(|i: usize| (i as u64).to_le_bytes())
        .collect();
    std::fs::write(&path, &data).expect("write the buffer file");
    let f = std::fs::File::open(&path).expect("open the buffer file");
    // SAFETY: the file is this example's own and nothing writes it while
    // it is mapped.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&f) }.expect("map");
    (map, path)
}

fn main() {
    let small = buffer(1);
    let (anon, file);
    let large: &[u8] = if std::env::var_os("FILE").is_some() {
        file = file_buffer(512);
        &file.0
    } else {
        anon = buffer(512);
        &anon
    };
    // Page-aligned maps: the casts cannot fail.
    let (small, large): (&[u64], &[u64]) =
        (bytemuck::cast_slice(&small), bytemuck::cast_slice(large));
    let per: usize = std::env::var("LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let memory = run(large, 0, per);
    let kind = if std::env::var_os("FILE").is_some() {
        "file"
    } else {
        "anonymous"
    };
    println!("misses alone (512 MiB {kind}, {per} line(s) a step, no work): {memory:.1} ns/step");
    println!("work | in cache ns | 512 MiB ns | extra ns | extra / misses alone");
    for work in [2, 4, 8] {
        let (c, m) = (run(small, work, per), run(large, work, per));
        println!(
            "{work:>4} | {c:>11.1} | {m:>10.1} | {:>8.1} | {:>5.0}%",
            m - c,
            (m - c) / memory * 100.0
        );
    }
    if std::env::var_os("FILE").is_some() {
        let _ = std::fs::remove_file(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/prefetch_overlap.bin"),
        );
    }
}
