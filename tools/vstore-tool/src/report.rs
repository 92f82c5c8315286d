//! Output helpers: aligned text tables, sizes, UTC times, and the report
//! every publishing subcommand prints.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use vstore::{Snapshot, Store};

use crate::error::{Result, ToolError};
use crate::say;

/// A text table with a header row; columns are padded to their widest cell
/// (numbers right-aligned).
#[derive(Debug, Default)]
pub struct TextTable {
    rows: Vec<Vec<String>>,
}

impl TextTable {
    /// A table with these column headers.
    pub fn new<S: ToString>(headers: &[S]) -> Self {
        TextTable {
            rows: vec![headers.iter().map(ToString::to_string).collect()],
        }
    }

    /// Appends a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Writes the table, each line indented by `indent` spaces.
    pub fn print(&self, out: &mut dyn Write, indent: usize) -> Result<()> {
        let ncol = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut width = vec![0; ncol];
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                width[i] = width[i].max(c.chars().count());
            }
        }
        for (n, r) in self.rows.iter().enumerate() {
            let mut line = " ".repeat(indent);
            for (i, c) in r.iter().enumerate() {
                let numeric = n > 0 && looks_numeric(c);
                let pad = width[i] - c.chars().count();
                if numeric {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(c);
                } else {
                    line.push_str(c);
                    if i + 1 < r.len() {
                        line.push_str(&" ".repeat(pad));
                    }
                }
                if i + 1 < r.len() {
                    line.push_str("  ");
                }
            }
            say!(out, "{}", line.trim_end());
        }
        Ok(())
    }
}

fn looks_numeric(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | ','))
        && s.chars().any(|c| c.is_ascii_digit())
}

/// `1.5 MiB` style sizes.
pub fn bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < U.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{x:.1} {}", U[u])
    }
}

/// A duration for humans (`850 µs`, `12.3 ms`, `4.1 s`).
pub fn dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Milliseconds since the Unix epoch (for JSON).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Size of a file of the store (0 if it cannot be read).
pub fn file_len(dir: &Path, name: &str) -> u64 {
    std::fs::metadata(dir.join(name))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Prints what a publish did: the new snapshot, what it holds, and which
/// files it wrote (the rest are shared with its parent); with `as_json`,
/// records it as one JSON object for `run` to print ([`take_published`]).
/// `--json` of a publishing command that found nothing to do (`compact`
/// on a store that needs none): the object says so, with the snapshot it
/// left newest, instead of standard output staying empty.
pub fn not_published(snap: &Snapshot, reason: &str, as_json: bool) {
    if as_json {
        let v = serde_json::json!({
            "published": false,
            "reason": reason,
            "snapshot": snap.number(),
            "items": snap.len(),
            "segments": snap.segments().len(),
        });
        PUBLISHED.with(|p| *p.borrow_mut() = Some(v));
    }
}

pub fn published(
    out: &mut dyn Write,
    parent: Option<&Arc<Snapshot>>,
    snap: &Snapshot,
    took: Duration,
    as_json: bool,
) -> Result<()> {
    let old: HashSet<String> = parent
        .map(|p| p.files().into_iter().collect())
        .unwrap_or_default();
    let files = snap.files();
    let new: Vec<&String> = files.iter().filter(|f| !old.contains(*f)).collect();
    let written: u64 = new.iter().map(|f| file_len(snap.dir(), f)).sum();
    if as_json {
        // Printed by `run` once the command is done (its other lines go to
        // standard error).
        let v = serde_json::json!({
                "published": true,
                "snapshot": snap.number(),
                "parent": parent.map(|p| p.number()),
                "seconds": took.as_secs_f64(),
                "items": snap.len(),
                "segments": snap.segments().len(),
                "embeddings": snap.embedding_keys(),
                "bundles": bundle_labels(snap),
                "files_written": new,
                "bytes_written": written,
                "files_shared": files.len() - new.len(),
        });
        PUBLISHED.with(|p| *p.borrow_mut() = Some(v));
        return Ok(());
    }
    say!(
        out,
        "published snapshot {} in {}: {} items, {} segment(s), embeddings [{}], bundles [{}]",
        snap.number(),
        dur(took),
        snap.len(),
        snap.segments().len(),
        snap.embedding_keys().join(", "),
        bundle_labels(snap).join(", ")
    );
    say!(
        out,
        "  wrote {} file(s), {} (manifest included); {} file(s) shared with snapshot {}",
        new.len(),
        bytes(written),
        files.len() - new.len(),
        parent
            .map(|p| p.number().to_string())
            .unwrap_or_else(|| "-".into())
    );
    Ok(())
}

thread_local! {
    /// The store directory and number of the snapshot this command
    /// published, once it has.
    static LANDED: std::cell::RefCell<Option<(std::path::PathBuf, u64)>> = const { std::cell::RefCell::new(None) };
}

/// Records that this command published `snap` (see [`landed`]).
pub fn note_landed(snap: &Snapshot) {
    LANDED.with(|l| *l.borrow_mut() = Some((snap.dir().to_path_buf(), snap.number())));
}

/// The store directory and snapshot number this command published, if it
/// did: an error after that (a report that could not be written) must not
/// read as "nothing happened", or a retry would apply the change twice.
pub fn landed() -> Option<(std::path::PathBuf, u64)> {
    LANDED.with(|l| l.borrow().clone())
}

thread_local! {
    /// The JSON report of the last publish made with `--json`.
    static PUBLISHED: std::cell::RefCell<Option<serde_json::Value>> = const { std::cell::RefCell::new(None) };
}

/// Takes the JSON report of the last publish made with `--json`.
pub fn take_published() -> Option<serde_json::Value> {
    PUBLISHED.with(|p| p.borrow_mut().take())
}

/// Serializes `v` as pretty JSON to `out`.
pub fn json(out: &mut dyn Write, v: &serde_json::Value) -> Result<()> {
    let s = serde_json::to_string_pretty(v).expect("JSON values serialize");
    say!(out, "{s}");
    Ok(())
}

/// Opens the store at `store_dir` with snapshot `n` as its current one,
/// reading no newer snapshot (see [`Store::open_at`]); a snapshot whose
/// manifest is not there is refused listing those that are.
pub fn open_store_at(store_dir: &std::path::Path, n: u64) -> Result<Store> {
    open_store_at_with(store_dir, n, crate::cmd::one_shot())
}

/// [`open_store_at`] with explicit options.
pub fn open_store_at_with(
    store_dir: &std::path::Path,
    n: u64,
    opts: vstore::OpenOptions,
) -> Result<Store> {
    Store::open_at(store_dir, n, opts).map_err(|e| {
        let manifest = store_dir.join(format!("MANIFEST-{n:020}"));
        if e.is_not_found() && store_dir.is_dir() && !manifest.exists() {
            let mut held: Vec<u64> = std::fs::read_dir(store_dir)
                .into_iter()
                .flatten()
                .filter_map(|e| {
                    let name = e.ok()?.file_name().into_string().ok()?;
                    let digits = name.strip_prefix("MANIFEST-")?;
                    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
                        .then(|| digits.parse().ok())?
                })
                .collect();
            held.sort_unstable();
            not_retained(store_dir, n, &held)
        } else {
            e.into()
        }
    })
}

/// Pins retained snapshot `n`; one that is gone (collected, or never
/// published) is a refusal listing the snapshots the store holds.
pub fn open_retained(store: &Store, n: u64) -> Result<Arc<Snapshot>> {
    store.open_snapshot(n).map_err(|e| {
        if e.is_not_found() {
            not_retained(store.dir(), n, &store.snapshots().unwrap_or_default())
        } else {
            e.into()
        }
    })
}

/// The refusal for a snapshot number the store does not hold.
fn not_retained(dir: &std::path::Path, n: u64, held: &[u64]) -> ToolError {
    ToolError::Refused(format!(
        "snapshot {n} is not retained in {} (it holds {held:?})",
        dir.display()
    ))
}

/// Each bundle of `snap` as `space@version`, or `space@version name` when
/// it is named other than "default", then each item-tower-only bundle as
/// `space@version item tower`.
pub fn bundle_labels(snap: &vstore::Snapshot) -> Vec<String> {
    let towers = (snap.embedding_keys().into_iter())
        .filter(|k| snap.has_item_tower_bundle(k))
        .map(|k| format!("{k} item tower"));
    (snap.model_keys().iter())
        .flat_map(|k| {
            snap.model_names(k).into_iter().map(move |n| {
                if n == vstore::DEFAULT_BUNDLE_NAME {
                    k.clone()
                } else {
                    format!("{k} {n}")
                }
            })
        })
        .chain(towers)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(utc(t), "2026-11-18 11:06:40");
        assert_eq!(utc(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc(leap), "2000-02-29 00:00:00");
    }

    #[test]
    fn sizes_and_tables() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        let mut t = TextTable::new(&["name", "rows"]);
        t.row(vec!["a".into(), "5".into()]);
        t.row(vec!["long".into(), "1000".into()]);
        let mut v = Vec::new();
        t.print(&mut v, 2).unwrap();
        assert_eq!(
            String::from_utf8(v).unwrap(),
            "  name  rows\n  a        5\n  long  1000\n"
        );
    }
}
