//! kill -9 during publishes: a child process publishes in a loop and prints
//! an acknowledgement after each commit returns; this process kills it at a
//! random moment, reopens the store and checks that it opens, that no
//! acknowledged snapshot is lost, that every visible snapshot reads back
//! exactly, and that GC leaves no temporary file.
//!
//! `VSTORE_KILL_CYCLES` sets the number of cycles (default 200; long: 10000).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{schema, vector};
use vstore::{Dtype, ItemBatch, Retention, Store, Writer};

const DIM: u32 = 4;

/// Items snapshot `n` adds: ids n*10 .. n*10+10.
fn ids_of(n: u64) -> Vec<u64> {
    (n * 10..n * 10 + 10).collect()
}

#[test]
fn child_entry() {
    if std::env::var("VSTORE_KILL_CHILD").is_err() {
        return;
    }
    let dir = std::path::PathBuf::from(std::env::var("VSTORE_KILL_DIR").unwrap());
    let mut w = match Writer::open(&dir) {
        Ok(w) => w,
        Err(_) => Writer::create(&dir, schema(DIM, Dtype::F32)).unwrap(),
    };
    w.set_retention(Retention {
        keep_last: 2,
        grace: Duration::ZERO,
    });
    loop {
        let mut tx = w.begin();
        let n = tx.number();
        let ids = ids_of(n);
        let v: Vec<f32> = ids.iter().flat_map(|&i| vector(i, DIM, 0)).collect();
        tx.add_items(ItemBatch::new(ids).embedding("prerank@v42", v))
            .unwrap();
        tx.set_metadata("n", &n.to_string()).unwrap();
        let s = tx.commit().unwrap();
        println!("ACK {}", s.number());
        std::io::stdout().flush().unwrap();
        if n % 3 == 0 {
            w.gc().unwrap();
        }
    }
}

#[test]
fn kill_dash_nine_never_loses_an_acknowledged_snapshot() {
    let cycles: usize = common::env_or("VSTORE_KILL_CYCLES", 200);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next_rand = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut last_ack = 0u64;
    let mut acked_total = 0;
    for cycle in 0..cycles {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
            .env("VSTORE_KILL_CHILD", "1")
            .env("VSTORE_KILL_DIR", dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let want = next_rand() % 4;
        let mut got = 0;
        while got < want {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap() == 0 {
                panic!("cycle {cycle}: child exited");
            }
            if let Some((_, n)) = line.trim_end().split_once("ACK ") {
                last_ack = n.parse().unwrap();
                got += 1;
                acked_total += 1;
            }
        }
        std::thread::sleep(Duration::from_micros(next_rand() % 3000));
        child.kill().unwrap();
        child.wait().unwrap();
        // Acknowledgements printed before the kill still count.
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut rest);
        for line in rest.lines() {
            if let Some((_, n)) = line.split_once("ACK ") {
                last_ack = n.parse().unwrap();
                acked_total += 1;
            }
        }
        if last_ack == 0 {
            continue; // killed before the first publish
        }
        let store = Store::open(dir.path()).unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        let s = store.snapshot();
        assert!(
            s.number() >= last_ack,
            "cycle {cycle}: acknowledged {last_ack}, visible {}",
            s.number()
        );
        assert_eq!(s.metadata("n"), Some(s.number().to_string().as_str()));
        s.verify().unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        // Every item of every snapshot up to the visible one is there, exact
        // (numbers of abandoned transactions are skipped: none of their ids).
        for id in s.ids() {
            assert_eq!(
                s.get_embedding(id, "prerank@v42").unwrap(),
                vector(id, DIM, 0)
            );
        }
        for n in [last_ack, s.number()] {
            for id in ids_of(n) {
                assert!(
                    s.lookup(id).is_some(),
                    "cycle {cycle}: id {id} of snapshot {n} lost"
                );
            }
        }
    }
    // A final writer's GC leaves no temporary file behind.
    let mut w = Writer::open(dir.path()).unwrap();
    w.set_retention(Retention {
        keep_last: 1,
        grace: Duration::ZERO,
    });
    w.gc().unwrap();
    let tmp: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");
    eprintln!("{cycles} kill cycles, {acked_total} acknowledged publishes, last {last_ack}");
    assert!(acked_total > cycles / 2);
}
