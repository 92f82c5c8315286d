//! Distributed builds: plan / stage / commit. Parts staged by threads
//! (as workers would) give the store one writer builds from the same rows;
//! a retried commit is idempotent; two commits on one base: one wins, the
//! other gets a conflict and rebases; overlapping ids are refused naming
//! them; a worker killed mid-part changes nothing published; abort and gc
//! clean up. The Python suite runs the same on a Dask cluster.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::bundle::Bundle;
use common::{batch, items_without_vectors, schema, vector};
use vstore::{
    commit_build, stage, BuildPlan, BuildReceipt, CommitOptions, Dtype, Error, Query, Store, Writer,
};

const DIM: u32 = 8;
const KEY: &str = "prerank@v42";

/// Every file of the store outside its staging area, with its bytes.
fn published_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file() && e.file_name() != "LOCK")
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

/// The ids of part `p` of `parts` over `ids`.
fn part_ids(ids: &[u64], p: usize, parts: usize) -> Vec<u64> {
    ids.iter().copied().skip(p).step_by(parts).collect()
}

/// Stages every part of `plan` over `ids` on threads, one per part.
fn stage_all(plan: &BuildPlan, ids: &[u64]) -> Vec<BuildReceipt> {
    let parts = plan.parts() as usize;
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..parts)
            .map(|p| {
                let mine = part_ids(ids, p, parts);
                // Workers get the plan as JSON, as a cluster ships it.
                let plan = BuildPlan::from_json(&plan.to_json()).unwrap();
                s.spawn(move || stage(&plan, p as u32, batch(&mine, DIM, 0)).unwrap())
            })
            .collect();
        hs.into_iter()
            .map(|h| BuildReceipt::from_json(&h.join().unwrap().to_json()).unwrap())
            .collect()
    })
}

fn no_conflict() -> CommitOptions {
    CommitOptions::default()
}

fn top(store_dir: &Path, cands: &[u64]) -> Vec<(u64, f32)> {
    let s = Store::open(store_dir).unwrap().snapshot();
    let user = vector(5, DIM, 3);
    let r = s.query(&Query::ids(KEY, &user, cands, 50)).unwrap();
    r.hits.iter().map(|h| (h.id, h.score)).collect()
}

#[test]
fn parts_staged_by_workers_answer_as_one_writer() {
    let ids: Vec<u64> = (0..4000).map(|i| i * 7 + 3).collect();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // One writer.
    let mut w = Writer::create(a.path(), schema(DIM, Dtype::F32)).unwrap();
    let mut tx = w.begin();
    tx.add_items(batch(&ids, DIM, 0)).unwrap();
    tx.commit().unwrap();
    // Eight parts staged on eight threads, one commit.
    let plan = Writer::create(b.path(), schema(DIM, Dtype::F32))
        .unwrap()
        .plan_build("job-1", 8)
        .unwrap();
    assert_eq!(plan.base(), None);
    let receipts = stage_all(&plan, &ids);
    assert_eq!(
        receipts.iter().map(|r| r.rows()).sum::<u64>(),
        ids.len() as u64
    );
    let snap = commit_build(b.path(), &plan, &receipts, &no_conflict()).unwrap();
    assert_eq!(snap.len(), ids.len());
    assert_eq!(snap.segments().len(), 8);
    assert_eq!(snap.metadata("vstore.job"), Some("job-1"));
    assert!(!b.path().join("_staging/job-1").exists(), "staging removed");
    let mut got: Vec<u64> = snap.ids().collect();
    got.sort();
    assert_eq!(got, ids);
    for &id in &ids[..50] {
        assert_eq!(snap.get_embedding(id, KEY).unwrap(), vector(id, DIM, 0));
        assert_eq!(
            snap.get_stat(id, "ctr_1d").unwrap(),
            Some(common::stat_value(id, 0))
        );
    }
    let cands: Vec<u64> = ids.iter().copied().step_by(3).chain([1, 2]).collect();
    assert_eq!(top(a.path(), &cands), top(b.path(), &cands));
    assert!(Store::open(b.path()).unwrap().verify().is_ok());

    // A retried commit returns the snapshot published, and publishes nothing.
    let again = commit_build(b.path(), &plan, &receipts, &no_conflict()).unwrap();
    assert_eq!(again.number(), snap.number());
    assert_eq!(
        Store::open(b.path()).unwrap().snapshots().unwrap(),
        vec![snap.number()]
    );
    // The job id names only its own snapshot.
    let mut w = Writer::open(b.path()).unwrap();
    let tx = w.begin();
    let next = tx.commit().unwrap();
    assert_eq!(next.metadata("vstore.job"), None);
    // And a second job on top, with compaction asked for.
    let more: Vec<u64> = (100_000..100_300).collect();
    let plan2 = w.plan_build("job-2", 3).unwrap();
    drop(w);
    let r2 = stage_all(&plan2, &more);
    let opts = CommitOptions {
        compact: true,
        ..Default::default()
    };
    let s2 = commit_build(b.path(), &plan2, &r2, &opts).unwrap();
    assert_eq!(s2.segments().len(), 1);
    assert_eq!(s2.len(), ids.len() + more.len());
}

#[test]
fn two_commits_on_one_base_one_wins_the_other_rebases() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = common::store_of(dir.path(), DIM, &[1, 2, 3]);
    let pa = w.plan_build("a", 2).unwrap();
    let pb = w.plan_build("b", 2).unwrap();
    assert_eq!(pa.base(), pb.base());
    // A writer opened later sees both reservations.
    drop(w);
    let ra = stage_all(&pa, &(100..200).collect::<Vec<_>>());
    let rb = stage_all(&pb, &(200..300).collect::<Vec<_>>());
    let results: Vec<_> = std::thread::scope(|s| {
        let ha = s.spawn(|| commit_build(dir.path(), &pa, &ra, &no_conflict()));
        let hb = s.spawn(|| commit_build(dir.path(), &pb, &rb, &no_conflict()));
        vec![ha.join().unwrap(), hb.join().unwrap()]
    });
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{results:?}");
    let (loser, lplan, lreceipts) = if results[0].is_ok() {
        (&results[1], &pb, &rb)
    } else {
        (&results[0], &pa, &ra)
    };
    match loser {
        Err(Error::Conflict { what, .. }) => assert!(what.contains("rebase"), "{what}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let rebase = CommitOptions {
        rebase: true,
        ..Default::default()
    };
    let s = commit_build(dir.path(), lplan, lreceipts, &rebase).unwrap();
    assert_eq!(s.len(), 3 + 100 + 100);
    let mut seg_ids: Vec<u64> = s.segments().iter().map(|g| g.id()).collect();
    seg_ids.dedup();
    assert_eq!(seg_ids.len(), 5, "segment ids unique");
}

#[test]
fn overlapping_ids_are_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = common::store_of(dir.path(), DIM, &[1, 2, 3]);
    let plan = w.plan_build("overlap", 3).unwrap();
    drop(w);
    let before = published_bytes(dir.path());
    let r = vec![
        stage(&plan, 0, batch(&[10, 11, 12, 13], DIM, 0)).unwrap(),
        stage(&plan, 1, batch(&[20, 12, 21], DIM, 0)).unwrap(),
        stage(&plan, 2, batch(&[30, 13, 31], DIM, 0)).unwrap(),
    ];
    match commit_build(dir.path(), &plan, &r, &no_conflict()) {
        Err(Error::DuplicateId { id, context }) => {
            assert_eq!(id, 12);
            assert!(context.contains("12 (parts 0 and 1)"), "{context}");
            assert!(context.contains("13 (parts 0 and 2)"), "{context}");
        }
        other => panic!("expected DuplicateId, got {other:?}"),
    }
    // Against the base snapshot.
    let r = vec![
        stage(&plan, 0, batch(&[40], DIM, 0)).unwrap(),
        stage(&plan, 1, batch(&[2], DIM, 0)).unwrap(),
        stage(&plan, 2, batch(&[], DIM, 0)).unwrap(),
    ];
    match commit_build(dir.path(), &plan, &r, &no_conflict()) {
        Err(Error::DuplicateId { id: 2, context }) => {
            assert!(context.contains("part 1"), "{context}")
        }
        other => panic!("expected DuplicateId 2, got {other:?}"),
    }
    // Inside one part, at stage time.
    match stage(&plan, 0, batch(&[5, 6, 5], DIM, 0)) {
        Err(Error::DuplicateId { id: 5, context }) => {
            assert!(context.contains("part 0"), "{context}")
        }
        other => panic!("expected DuplicateId 5, got {other:?}"),
    }
    assert_eq!(
        published_bytes(dir.path()),
        before,
        "nothing published or moved"
    );
}

#[test]
fn a_killed_worker_changes_nothing_and_the_retry_commits() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = common::store_of(dir.path(), DIM, &[1, 2, 3]);
    let plan = w.plan_build("killed", 2).unwrap();
    drop(w);
    let before = published_bytes(dir.path());
    // A first attempt of part 1 whose worker died mid-write: its receipt
    // never came back, and one of its files is cut short.
    let dead = stage(&plan, 1, batch(&[60, 61], DIM, 0)).unwrap();
    let attempt = dir.path().join("_staging/killed").join(
        std::fs::read_dir(dir.path().join("_staging/killed"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .find(|n| n != "PLAN.json")
            .unwrap(),
    );
    let victim = std::fs::read_dir(&attempt)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let len = std::fs::metadata(&victim).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert_eq!(published_bytes(dir.path()), before);
    // The dead attempt's receipt (had it arrived) is refused: a file is damaged.
    let r0 = stage(&plan, 0, batch(&[50, 51], DIM, 0)).unwrap();
    let err = commit_build(dir.path(), &plan, &[r0.clone(), dead], &no_conflict()).unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. } | Error::Io { .. }),
        "{err:?}"
    );
    assert_eq!(published_bytes(dir.path()), before);
    // The retried task stages again; the commit takes its receipt.
    let r1 = stage(&plan, 1, batch(&[60, 61], DIM, 0)).unwrap();
    // A receipt missing a part, or lying about its rows, is refused.
    assert!(matches!(
        commit_build(dir.path(), &plan, std::slice::from_ref(&r0), &no_conflict()),
        Err(Error::InvalidInput(m)) if m.contains("no receipt for part 1")
    ));
    let mut liar: serde_json::Value = serde_json::from_str(&r1.to_json()).unwrap();
    liar["max_id"] = 99.into();
    let liar = BuildReceipt::from_json(&liar.to_string()).unwrap();
    assert!(matches!(
        commit_build(dir.path(), &plan, &[r0.clone(), liar], &no_conflict()),
        Err(Error::InvalidInput(m)) if m.contains("part 1")
    ));
    let s = commit_build(dir.path(), &plan, &[r0, r1], &no_conflict()).unwrap();
    assert_eq!(s.len(), 7);
    // gc removes the dead attempt with the staging area... which the
    // commit removed already; nothing of the job is left.
    assert!(!dir.path().join("_staging/killed").exists());
}

#[test]
fn a_commit_cut_off_after_moving_files_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = common::store_of(dir.path(), DIM, &[1]);
    let plan = w.plan_build("cut", 2).unwrap();
    let r = stage_all(&plan, &(10..30).collect::<Vec<_>>());
    // As if a commit moved part 0's files in and died: move them by hand.
    let attempt = dir.path().join("_staging/cut").join(
        std::fs::read_dir(dir.path().join("_staging/cut"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with("00000-"))
            .unwrap(),
    );
    for e in std::fs::read_dir(&attempt).unwrap() {
        let e = e.unwrap();
        std::fs::rename(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    // gc keeps them while the job is staged.
    w.set_retention(vstore::Retention {
        keep_last: 1,
        grace: Duration::ZERO,
    });
    let report = w.gc().unwrap();
    assert!(report.removed_files.is_empty(), "{report:?}");
    drop(w);
    let s = commit_build(dir.path(), &plan, &r, &no_conflict()).unwrap();
    assert_eq!(s.len(), 21);
}

#[test]
fn abort_and_gc_discard_jobs_and_plans_reserve_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = common::store_of(dir.path(), DIM, &[1, 2]);
    let plan = w.plan_build("gone", 2).unwrap();
    assert!(
        matches!(w.plan_build("gone", 1), Err(Error::InvalidInput(m)) if m.contains("planned already"))
    );
    assert!(matches!(
        w.plan_build("../x", 1),
        Err(Error::InvalidInput(_))
    ));
    let r = stage_all(&plan, &[7, 8, 9]);
    // A writer opened while the job is staged numbers around it.
    drop(w);
    let mut w = Writer::open(dir.path()).unwrap();
    let mut tx = w.begin();
    tx.add_items(batch(&[100], DIM, 0)).unwrap();
    let s = tx.commit().unwrap();
    assert!(s
        .segments()
        .iter()
        .all(|g| g.id() < plan.segment_of(0) || g.id() >= plan.segment_of(2)));
    w.abort_build(&plan).unwrap();
    assert!(!dir.path().join("_staging/gone").exists());
    drop(w);
    assert!(matches!(
        commit_build(dir.path(), &plan, &r, &CommitOptions { rebase: true, ..Default::default() }),
        Err(Error::InvalidInput(m)) if m.contains("PLAN.json")
    ));
    // gc removes staging areas past the grace, and keeps younger ones.
    let mut w = Writer::open(dir.path()).unwrap();
    let p2 = w.plan_build("old", 1).unwrap();
    stage(&p2, 0, batch(&[500], DIM, 0)).unwrap();
    assert!(w.gc().unwrap().removed_staging.is_empty());
    w.set_staging_grace(Duration::ZERO);
    assert_eq!(w.gc().unwrap().removed_staging, vec!["old".to_string()]);
    assert!(!dir.path().join("_staging/old").exists());
}

#[test]
fn a_plan_that_failed_before_its_plan_was_written_does_not_block_the_job() {
    // What a plan stopped by a full disk (or a kill) leaves: the job's
    // directory with a partial PLAN.json.tmp and no PLAN.json. It once
    // kept the job id "planned already" until gc's one-day grace, while
    // abort (which reads the plan) could not remove it.
    let dir = tempfile::tempdir().unwrap();
    let mut w = common::store_of(dir.path(), DIM, &[1, 2]);
    let leftover = |job: &str| {
        let jd = dir.path().join("_staging").join(job);
        std::fs::create_dir_all(&jd).unwrap();
        std::fs::write(jd.join("PLAN.json.tmp"), b"{\"format\": \"vstore.bu").unwrap();
        jd
    };
    // Planning the job again takes the directory over.
    let jd = leftover("nightly");
    let plan = w.plan_build("nightly", 2).unwrap();
    assert!(jd.join("PLAN.json").exists());
    assert!(!jd.join("PLAN.json.tmp").exists());
    let r = stage_all(&plan, &[7, 8, 9]);
    drop(w);
    let s = commit_build(dir.path(), &plan, &r, &no_conflict()).unwrap();
    assert_eq!(s.len(), 5);
    // Once committed, the staging root is gone too (no job left in it).
    assert!(!dir.path().join("_staging").exists());
    // gc removes a planless job at once, whatever the grace.
    let jd = leftover("killed");
    let mut w = Writer::open(dir.path()).unwrap();
    assert_eq!(w.gc().unwrap().removed_staging, vec!["killed".to_string()]);
    assert!(!jd.exists());
    assert!(!dir.path().join("_staging").exists());
    // Abort of the last job leaves no empty staging root either.
    let plan = w.plan_build("aborted", 1).unwrap();
    w.abort_build(&plan).unwrap();
    assert!(!dir.path().join("_staging").exists());
    // By job id (what Python's `abort(path, job)` runs): a planless job
    // removed under the lock (so it waits for this writer), a staged one
    // aborted with its plan, an unknown or published one refused.
    let jd = leftover("half");
    assert!(matches!(
        vstore::abort_job(dir.path(), "half", Duration::from_millis(100)),
        Err(Error::Locked { .. })
    ));
    assert!(jd.exists());
    w.plan_build("whole", 1).unwrap();
    drop(w);
    vstore::abort_job(dir.path(), "half", Duration::from_secs(5)).unwrap();
    assert!(!jd.exists());
    vstore::abort_job(dir.path(), "whole", Duration::from_secs(5)).unwrap();
    assert!(!dir.path().join("_staging").exists());
    let e = vstore::abort_job(dir.path(), "whole", Duration::ZERO).unwrap_err();
    assert!(e.to_string().contains("not staged"), "{e}");
    let e = vstore::abort_job(dir.path(), "nightly", Duration::ZERO).unwrap_err();
    assert!(e.to_string().contains("published as snapshot"), "{e}");
}

#[test]
fn a_part_without_vectors_gets_them_from_the_base_item_tower() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), schema(DIM, Dtype::F32)).unwrap();
    let mut tx = w.begin();
    tx.add_items(batch(&[1, 2, 3], DIM, 0)).unwrap();
    let tower = Bundle::tower_only("prerank", "v42", DIM as usize);
    let (j, wt) = tower.bytes();
    tx.add_model(&j, &wt).unwrap();
    tx.commit().unwrap();
    let plan = w.plan_build("tower", 1).unwrap();
    drop(w);
    let r = stage(&plan, 0, items_without_vectors(&[40, 41], 0)).unwrap();
    let s = commit_build(dir.path(), &plan, &[r], &no_conflict()).unwrap();
    for id in [40, 41] {
        assert!(s.is_computed(id, KEY).unwrap());
        let cat = s.get_categorical(id, "category").unwrap().unwrap_or(0);
        let price = s.get_numeric(id, "price").unwrap().unwrap_or(-1.0);
        let want = tower.tower_reference(cat, price);
        let got = s.get_embedding(id, KEY).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (*g as f64 - w).abs() <= 1e-4 * w.abs().max(1.0),
                "{got:?} vs {want:?}"
            );
        }
    }
}

/// A part staged without vectors holds vectors computed with the base
/// snapshot's item tower; a commit rebased over a publish that replaced or
/// dropped that tower would publish the old tower's vectors as computed
/// (found by a review): refused, naming the version. A rebase over any
/// other publish goes through.
#[test]
fn a_rebase_over_a_changed_item_tower_is_refused() {
    let tower = Bundle::tower_only("prerank", "v42", DIM as usize);
    let other = Bundle::tower_only("prerank", "v42", DIM as usize).with_salt(7);
    for change in ["replace", "drop", "items"] {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), schema(DIM, Dtype::F32)).unwrap();
        let mut tx = w.begin();
        tx.add_items(batch(&[1, 2, 3], DIM, 0)).unwrap();
        let (j, wt) = tower.bytes();
        tx.add_model(&j, &wt).unwrap();
        tx.commit().unwrap();
        let plan = w.plan_build(change, 1).unwrap();
        let r = stage(&plan, 0, items_without_vectors(&[40, 41], 0)).unwrap();
        let mut tx = w.begin();
        match change {
            "replace" => {
                let (j, wt) = other.bytes();
                tx.add_model(&j, &wt).unwrap();
            }
            "drop" => tx.drop_item_tower(KEY).unwrap(),
            _ => tx.add_items(batch(&[9], DIM, 0)).unwrap(),
        }
        tx.commit().unwrap();
        if change == "items" {
            // The base snapshot collected meanwhile: the plan records its
            // tower, so the check needs no base (it once refused here).
            w.set_retention(vstore::Retention {
                keep_last: 1,
                grace: Duration::ZERO,
            });
            w.gc().unwrap();
            let base = plan.base().unwrap();
            assert!(!dir.path().join(format!("MANIFEST-{base:020}")).exists());
        }
        drop(w);
        let rebase = CommitOptions {
            rebase: true,
            ..Default::default()
        };
        let got = commit_build(dir.path(), &plan, &[r], &rebase);
        if change == "items" {
            let s = got.unwrap();
            assert!(s.is_computed(40, KEY).unwrap());
            continue;
        }
        match got {
            Err(Error::Conflict { what, .. }) => {
                assert!(
                    what.contains(KEY) && what.contains("abort the job and plan it again"),
                    "{change}: {what}"
                );
                let why = if change == "drop" {
                    "dropped"
                } else {
                    "replaced"
                };
                assert!(what.contains(why), "{change}: {what}");
            }
            other => panic!("{change}: expected a conflict, got {other:?}"),
        }
        let s = Store::open(dir.path()).unwrap().snapshot();
        assert!(s.lookup(40).is_none(), "{change}: nothing published");
    }
}

#[test]
fn bad_plans_and_receipts_are_refused_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = common::store_of(dir.path(), DIM, &[1]);
    assert!(
        matches!(w.plan_build("zero", 0), Err(Error::InvalidInput(m)) if m.contains("at least 1"))
    );
    let plan = w.plan_build("main", 2).unwrap();
    let other = w.plan_build("other", 2).unwrap();
    drop(w);
    // A plan or receipt that is not one this build writes.
    assert!(
        matches!(BuildPlan::from_json("{}"), Err(Error::InvalidInput(m)) if m.contains("build plan"))
    );
    let mut v: serde_json::Value = serde_json::from_str(&plan.to_json()).unwrap();
    v["format"] = "vstore.build_plan.v9".into();
    assert!(
        matches!(BuildPlan::from_json(&v.to_string()), Err(Error::InvalidInput(m)) if m.contains("v9"))
    );
    // A part out of range.
    assert!(
        matches!(stage(&plan, 2, batch(&[5], DIM, 0)), Err(Error::InvalidInput(m)) if m.contains("part 2"))
    );
    let r0 = stage(&plan, 0, batch(&[5], DIM, 0)).unwrap();
    let r1 = stage(&plan, 1, batch(&[6], DIM, 0)).unwrap();
    let o1 = stage(&other, 1, batch(&[7], DIM, 0)).unwrap();
    let commit = |rs: &[BuildReceipt]| commit_build(dir.path(), &plan, rs, &no_conflict());
    assert!(
        matches!(commit(&[r0.clone(), r0.clone(), r1.clone()]), Err(Error::InvalidInput(m)) if m.contains("given twice"))
    );
    assert!(
        matches!(commit(&[r0.clone(), o1]), Err(Error::InvalidInput(m)) if m.contains("of job other"))
    );
    let before = published_bytes(dir.path());
    assert_eq!(commit(&[r0, r1]).unwrap().len(), 3);
    assert_ne!(published_bytes(dir.path()), before);
}

/// A stale abort never removes a published snapshot's files: the snapshot
/// number of an aborted job is taken again by the next plan (its files get
/// the same names), and a repeated cleanup of the first job must leave the
/// second job's published segment alone; so must an abort of a job whose
/// publishing manifest gc has collected.
#[test]
fn a_stale_abort_leaves_published_files_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = common::store_of(dir.path(), DIM, &[1, 2]);
    let old = w.plan_build("a", 1).unwrap();
    w.abort_build(&old).unwrap();
    // A writer opened anew (as each driver run does) numbers from the
    // store: the aborted job's numbers are free again.
    drop(w);
    let mut w = Writer::open(dir.path()).unwrap();
    let new = w.plan_build("b", 1).unwrap();
    assert_eq!(
        new.segment_of(0),
        old.segment_of(0),
        "the numbers are taken again"
    );
    drop(w);
    let r = stage_all(&new, &[7, 8, 9]);
    commit_build(dir.path(), &new, &r, &no_conflict()).unwrap();
    let before = published_bytes(dir.path());
    let mut w = Writer::open(dir.path()).unwrap();
    w.abort_build(&old).unwrap();
    assert_eq!(published_bytes(dir.path()), before);
    // The job's own plan, once gc collected the manifest recording it.
    for id in [20u64, 21] {
        let mut tx = w.begin();
        tx.add_items(batch(&[id], DIM, 0)).unwrap();
        tx.commit().unwrap();
    }
    w.set_retention(vstore::Retention {
        keep_last: 1,
        grace: Duration::ZERO,
    });
    w.gc().unwrap();
    // The store remembers the job as published (its record outlives the
    // manifest): the abort is refused, and nothing is removed.
    let before = published_bytes(dir.path());
    assert!(matches!(
        w.abort_build(&new),
        Err(Error::InvalidInput(m)) if m.contains("was published")
    ));
    assert_eq!(published_bytes(dir.path()), before);
    drop(w);
    let s = Store::open(dir.path()).unwrap().snapshot();
    for id in [1, 2, 7, 8, 9, 20, 21] {
        assert!(s.item(id).unwrap().is_some(), "item {id}");
    }
    s.verify().unwrap();
}

/// A stage area that outlived its job's publish (a driver killed before
/// removing it) is not resumed: loading its plan says the job was
/// published, so new parts are never staged only to be dropped.
#[test]
fn a_published_jobs_leftover_stage_area_is_not_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = common::store_of(dir.path(), DIM, &[1, 2]);
    let plan = w.plan_build("nightly", 1).unwrap();
    drop(w);
    let r = stage_all(&plan, &[7, 8, 9]);
    let keep = tempfile::tempdir().unwrap();
    let staged = dir.path().join("_staging");
    let copy = |from: &Path, to: &Path| {
        for e in walk(from) {
            let rel = e.strip_prefix(from).unwrap();
            let dst = to.join(rel);
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(&e, &dst).unwrap();
        }
    };
    copy(&staged, keep.path());
    let n = commit_build(dir.path(), &plan, &r, &no_conflict())
        .unwrap()
        .number();
    copy(keep.path(), &staged);
    match BuildPlan::load(dir.path(), "nightly") {
        Err(Error::InvalidInput(m)) => {
            assert!(m.contains(&format!("published as snapshot {n}")), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        vstore::abort_job(dir.path(), "nightly", Duration::from_secs(5)),
        Err(Error::InvalidInput(m)) if m.contains("was published")
    ));
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A job id stays published after gc collected the manifest that recorded
/// it, and after a restore to a snapshot before it: re-running the job
/// returns its snapshot instead of publishing its parts again (which would
/// bring items deleted since back to life).
#[test]
fn a_published_job_is_remembered_past_gc_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = common::store_of(dir.path(), DIM, &[1, 2]);
    let plan = w.plan_build("nightly", 1).unwrap();
    drop(w);
    let r = stage_all(&plan, &[7, 8, 9]);
    let n = commit_build(dir.path(), &plan, &r, &no_conflict())
        .unwrap()
        .number();
    let mut w = Writer::open(dir.path()).unwrap();
    let mut tx = w.begin();
    tx.delete_items(&[7, 8, 9]).unwrap();
    tx.commit().unwrap();
    let mut tx = w.begin();
    tx.set_metadata("note", "x").unwrap();
    tx.commit().unwrap();
    // A restore to the base (before the job) keeps the record; then gc
    // collects every manifest but the newest.
    let s = w.restore(1).unwrap();
    assert!(s.item(7).unwrap().is_none());
    w.set_retention(vstore::Retention {
        keep_last: 1,
        grace: Duration::ZERO,
    });
    w.gc().unwrap();
    assert!(!dir.path().join(format!("MANIFEST-{n:020}")).exists());
    assert_eq!(
        vstore::published_build(dir.path(), "nightly").unwrap(),
        Some(n)
    );
    assert!(matches!(
        w.plan_build("nightly", 1),
        Err(Error::InvalidInput(m)) if m.contains(&format!("published already as snapshot {n}"))
    ));
    drop(w);
    // The retried commit returns the job's snapshot; nothing comes back.
    let again = commit_build(dir.path(), &plan, &r, &no_conflict());
    let s = Store::open(dir.path()).unwrap().snapshot();
    assert!(s.item(7).unwrap().is_none(), "{again:?}");
}

/// A retried commit with a receipt of another attempt of a part than the
/// one published is refused (it was told "published" before).
#[test]
fn a_retry_with_another_attempts_receipt_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = common::store_of(dir.path(), DIM, &[1, 2]);
    let plan = w.plan_build("j", 1).unwrap();
    drop(w);
    let ra = stage(&plan, 0, batch(&[7, 8], DIM, 0)).unwrap();
    let rb = stage(&plan, 0, batch(&[7, 8], DIM, 1)).unwrap();
    let n = commit_build(dir.path(), &plan, std::slice::from_ref(&ra), &no_conflict())
        .unwrap()
        .number();
    // The same receipts: the published snapshot, again.
    let again = commit_build(dir.path(), &plan, &[ra], &no_conflict()).unwrap();
    assert_eq!(again.number(), n);
    match commit_build(dir.path(), &plan, &[rb], &no_conflict()) {
        Err(Error::InvalidInput(m)) => {
            assert!(m.contains("part 0") && m.contains("another attempt"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

/// A receipt whose attempt directory is gone (the job aborted and planned
/// again) is refused naming the job, the part and the attempt, not an I/O
/// error about a file in the store.
#[test]
fn a_receipt_of_a_vanished_attempt_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let w = common::store_of(dir.path(), DIM, &[1, 2]);
    drop(w);
    let plan = |dir: &Path| Writer::open(dir).unwrap().plan_build("j", 2).unwrap();
    let p1 = plan(dir.path());
    let old = stage(&p1, 1, batch(&[10, 11], DIM, 0)).unwrap();
    vstore::abort_job(dir.path(), "j", Duration::from_secs(5)).unwrap();
    let p2 = plan(dir.path());
    let r0 = stage(&p2, 0, batch(&[20], DIM, 0)).unwrap();
    let before = published_bytes(dir.path());
    match commit_build(dir.path(), &p2, &[r0, old], &no_conflict()) {
        Err(Error::InvalidInput(m)) => {
            assert!(
                m.contains("job j") && m.contains("part 1") && m.contains("attempt"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(published_bytes(dir.path()), before);
}
