//! Cross-process behaviour: a reader in another process pins a snapshot,
//! keeps reading it while this process publishes and collects garbage, and
//! sees the new snapshot after `refresh()`; a writer in another process is
//! refused while this one holds the lock.
//!
//! The other process is this test binary re-invoked with `VSTORE_CHILD` set.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{batch, schema, stat_value};
use vstore::{Dtype, Error, Retention, Store, Writer};

const DIM: u32 = 8;

fn child(role: &str, dir: &std::path::Path) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env("VSTORE_CHILD", role)
        .env("VSTORE_CHILD_DIR", dir);
    c
}

fn say(msg: String) {
    println!("CHILD:{msg}");
    std::io::stdout().flush().unwrap();
}

/// Entry point of the child process; does nothing in a normal test run.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var("VSTORE_CHILD") else {
        return;
    };
    let dir = std::path::PathBuf::from(std::env::var("VSTORE_CHILD_DIR").unwrap());
    match role.as_str() {
        "writer" => match Writer::open(&dir) {
            Err(e @ Error::Locked { .. }) => say(format!("locked {e}")),
            Err(e) => say(format!("error {e}")),
            Ok(_) => say("acquired".into()),
        },
        "reader" => {
            let store = Store::open(&dir).unwrap();
            let pinned = store.snapshot();
            say(format!(
                "opened {} {}",
                pinned.number(),
                pinned.get_stat(42, "ctr_1d").unwrap().unwrap()
            ));
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            // The parent published and collected snapshot 1's files: the
            // pinned snapshot still reads from its mappings.
            pinned.verify().unwrap();
            say(format!(
                "still {} {}",
                pinned.number(),
                pinned.get_stat(42, "ctr_1d").unwrap().unwrap()
            ));
            let changed = store.refresh().unwrap();
            let s = store.snapshot();
            say(format!(
                "refreshed {changed} {} {}",
                s.number(),
                s.get_stat(42, "ctr_1d").unwrap().unwrap()
            ));
        }
        r => panic!("unknown child role {r}"),
    }
}

fn read_child_line(out: &mut impl BufRead) -> String {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = out.read_line(&mut line).unwrap();
        assert!(n > 0, "child exited without answering; it printed: {seen}");
        seen.push_str(&line);
        // libtest may print "test child_entry ... " before the message.
        if let Some((_, msg)) = line.trim_end().split_once("CHILD:") {
            return msg.to_string();
        }
    }
}

#[test]
fn second_writer_in_another_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let w = common::store_of(dir.path(), DIM, &[1, 2, 3]);
    let out = child("writer", dir.path()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("CHILD:locked"), "{text}");
    // Once released, another process may write.
    drop(w);
    let out = child("writer", dir.path()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CHILD:acquired"), "{text}");
}

#[test]
fn reader_in_another_process_refreshes_and_survives_gc() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema(DIM, Dtype::F16)).unwrap();
    w.set_retention(Retention {
        keep_last: 1,
        grace: Duration::ZERO,
    });
    let ids: Vec<u64> = (0..200).collect();
    let mut tx = w.begin();
    tx.add_items(batch(&ids, DIM, 0)).unwrap();
    tx.commit().unwrap();

    let mut proc = child("reader", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(proc.stdout.take().unwrap());
    let line = read_child_line(&mut out);
    assert_eq!(line, format!("opened 1 {}", stat_value(42, 0)));

    // Publish twice (stats refresh) and collect everything but the newest:
    // snapshot 1's manifest and stats file are unlinked under the reader.
    for gen in 1..=2 {
        let mut tx = w.begin();
        tx.update_stats(common::stats_update(&ids, gen)).unwrap();
        tx.commit().unwrap();
    }
    let report = w.gc().unwrap();
    assert_eq!(report.removed_snapshots, vec![1, 2]);
    assert!(report.removed_files.iter().any(|f| f.contains("stats")));

    proc.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let line = read_child_line(&mut out);
    assert_eq!(line, format!("still 1 {}", stat_value(42, 0)));
    let line = read_child_line(&mut out);
    assert_eq!(line, format!("refreshed true 3 {}", stat_value(42, 2)));
    assert!(proc.wait().unwrap().success());
}
