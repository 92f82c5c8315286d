//! The latency guard measured: the first queries after opening a store
//! whose files are not in the page cache, with the background prefault
//! off and on (`OpenOptions::prefault`).
//!
//! `cargo run --release --example cold_open -- [--rows 1000000] [--n 5000]
//! [--queries 100] [--gaps 0,1] [--delays 0] [--runs 3] [--two-tower]
//! [--pre f16] [--segments S] [--mlock] [--evict drop_caches|fadvise]`
//!
//! Builds (once, under `target/vstore-bench/`) the three-tower benchmark
//! store (`rows` items, `prerank@v1` at d = 64 in f16, the example bundle;
//! `--pre f16` also stores its first-layer item part; with `--segments S`
//! instead the same items in S equal segments, `prerank@v42`, two-tower
//! only, as `examples/ab_segments.rs` builds them), then for each
//! prefault mode, each delay between the open and the first query and
//! each gap between queries (milliseconds), `runs` times: drops the
//! store's files from the page cache, opens the store, waits the delay,
//! and times `queries` queries of `n` random candidates (three-tower, or
//! two-tower with `--two-tower`) sent one after another with that gap.
//! Prints open time, p50 / p99 / max of the queries, and how long the
//! background prefault took; then the same queries on a warm cache.
//!
//! Eviction: `--evict drop_caches` (the default when
//! `/proc/sys/vm/drop_caches` is writable, i.e. as root) runs `sync` and
//! writes 3 to it (every clean page of the machine is dropped, the
//! binary's included); `--evict fadvise` (the fallback) asks the kernel to
//! drop each store file's pages (`posix_fadvise(POSIX_FADV_DONTNEED)`).

use std::time::{Duration, Instant};

use vstore::{OpenOptions, Prefault, Query, Store};

#[path = "../benches/support/mod.rs"]
mod support;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let flag = |name: &str| args.iter().any(|a| a == name);
    let rows: usize = get("--rows").map_or(1_000_000, |s| s.parse().unwrap());
    let n: usize = get("--n").map_or(5000, |s| s.parse().unwrap());
    let count: usize = get("--queries").map_or(100, |s| s.parse().unwrap());
    let runs: usize = get("--runs").map_or(3, |s| s.parse().unwrap());
    let gaps: Vec<u64> = get("--gaps")
        .unwrap_or_else(|| "0,1".into())
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let delays: Vec<u64> = get("--delays")
        .unwrap_or_else(|| "0".into())
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let segments: usize = get("--segments").map_or(1, |s| s.parse().unwrap());
    let two_tower = flag("--two-tower") || segments > 1;
    let mlock = flag("--mlock");
    let pre = get("--pre").map(|s| vstore::Dtype::parse(&s).unwrap());
    let drop_caches = std::path::Path::new("/proc/sys/vm/drop_caches");
    let evict = get("--evict").unwrap_or_else(|| {
        let writable = std::fs::OpenOptions::new()
            .write(true)
            .open(drop_caches)
            .is_ok();
        if writable { "drop_caches" } else { "fadvise" }.into()
    });
    let (dir, key) = if segments > 1 {
        let d = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("target/vstore-bench/segments-{rows}-{segments}"));
        let off = OpenOptions::new().prefault(Prefault::Off);
        let fine = Store::open_with(&d, off)
            .is_ok_and(|s| s.snapshot().len() == rows && s.snapshot().segments().len() == segments);
        if !fine {
            drop(support::segmented_store(&d, rows, segments));
        }
        (d, "prerank@v42")
    } else {
        drop(support::tt_store(rows, pre));
        (support::tt_store_dir(rows, pre), support::TT_KEY)
    };
    let bytes: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!(
        "store {} ({rows} items in {segments} segment(s), {:.1} MiB), {} queries of n = {n} ({}), k = 500, eviction: {evict}, cpu: {cpu}, kernel level: {}",
        dir.display(),
        bytes as f64 / (1 << 20) as f64,
        count,
        if two_tower { "two-tower" } else { "three-tower" },
        support_level()
    );
    let sets = support::candidate_sets(rows, n, count, 0xC01D);
    let users = support::users(count, 64, 0x5EED);
    let inputs: Vec<_> = (0..count as u64).map(support::tt_inputs).collect();
    let run_queries = |store: &Store, gap: Duration| -> Vec<f64> {
        let snap = store.snapshot();
        let mut lat = Vec::with_capacity(count);
        for q in 0..count {
            let mut query = Query::ids(key, &users[q], &sets[q].0, 500);
            if !two_tower {
                query = query.three_tower(&inputs[q]);
            }
            let t = Instant::now();
            let r = snap.query(&query).unwrap();
            lat.push(t.elapsed().as_secs_f64());
            assert_eq!(r.hits.len(), 500);
            if !gap.is_zero() {
                std::thread::sleep(gap);
            }
        }
        lat
    };
    let evict_now = || match evict.as_str() {
        "drop_caches" => {
            let ok = std::process::Command::new("sync")
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "sync failed");
            std::fs::write(drop_caches, "3").expect("write /proc/sys/vm/drop_caches");
        }
        "fadvise" => {
            vstore::bench_support::evict_store_files(&dir).unwrap();
        }
        other => panic!("--evict {other}: want drop_caches or fadvise"),
    };
    println!(
        "{:<12} {:>6} {:>5} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12} {:>9}",
        "prefault", "delay", "gap", "open", "p50", "p99", "max", "total", "prefault", "resident"
    );
    for (&delay_ms, &gap_ms) in delays.iter().flat_map(|d| gaps.iter().map(move |g| (d, g))) {
        let gap = Duration::from_millis(gap_ms);
        for mode in [Prefault::Off, Prefault::Background] {
            for _ in 0..runs {
                evict_now();
                let t = Instant::now();
                let store =
                    Store::open_with(&dir, OpenOptions::new().prefault(mode).mlock(mlock)).unwrap();
                let open = t.elapsed().as_secs_f64();
                // What the open itself read (mincore, under 1 ms; the
                // background thread may have added a little by now).
                let cold = vstore::bench_support::resident_pages(&store.snapshot()).unwrap();
                std::thread::sleep(Duration::from_millis(delay_ms));
                let t = Instant::now();
                let mut lat = run_queries(&store, gap);
                let all = t.elapsed().as_secs_f64();
                let prefault = store
                    .wait_prefault()
                    .map_or("-".to_string(), |p| ms(p.elapsed.as_secs_f64()));
                lat.sort_by(f64::total_cmp);
                println!(
                    "{:<12} {:>6} {:>5} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12} {:>9}",
                    format!("{mode:?}"),
                    format!("{delay_ms}ms"),
                    format!("{gap_ms}ms"),
                    ms(open),
                    ms(pct(&lat, 0.50)),
                    ms(pct(&lat, 0.99)),
                    ms(lat[lat.len() - 1]),
                    ms(all),
                    prefault,
                    format!("{:.0}%", 100.0 * cold.0 as f64 / cold.1 as f64),
                );
            }
        }
    }
    // Warm: the same queries once everything is resident.
    let store = Store::open(&dir).unwrap();
    store.wait_prefault();
    run_queries(&store, Duration::ZERO);
    let mut lat = run_queries(&store, Duration::ZERO);
    lat.sort_by(f64::total_cmp);
    println!(
        "warm: p50 {}, p99 {}, max {}",
        ms(pct(&lat, 0.50)),
        ms(pct(&lat, 0.99)),
        ms(lat[lat.len() - 1])
    );
    println!("(resident: share of the store's pages in the page cache right after the open)");
}

fn support_level() -> &'static str {
    vstore::bench_support::kernel_level()
}

/// The `p` quantile of sorted `xs` (nearest rank).
fn pct(xs: &[f64], p: f64) -> f64 {
    let i = ((xs.len() as f64 * p).ceil() as usize).clamp(1, xs.len()) - 1;
    xs[i]
}

fn ms(s: f64) -> String {
    format!("{:.2} ms", s * 1e3)
}
