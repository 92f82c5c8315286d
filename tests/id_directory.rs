//! Candidate lookup over several segments through the snapshot's id
//! directory: both shapes (a large base plus small recent segments, where
//! the directory leaves the base out and the base is probed first; equal
//! segments, where the directory holds every segment), with updates that
//! shadow older rows, deletes in every segment, unknown and duplicate ids. Every answer is checked against the
//! scores computed here from the vectors the store holds for each live id.

mod common;

use std::collections::BTreeMap;

use vstore::{Dtype, Query, Store, Writer};

const DIM: u32 = 8;
const KEY: &str = "prerank@v42";

fn ids(r: std::ops::Range<u64>) -> Vec<u64> {
    r.collect()
}

/// Adds `parts` as segments, then upserts `updated` (a new segment
/// shadowing their older rows) and deletes `deleted`.
fn build(dir: &std::path::Path, parts: &[std::ops::Range<u64>], updated: &[u64], deleted: &[u64]) {
    let mut w = Writer::create(dir, common::schema(DIM, Dtype::F32)).unwrap();
    for p in parts {
        let mut tx = w.begin();
        tx.add_items(common::batch(&ids(p.clone()), DIM, 0))
            .unwrap();
        tx.commit().unwrap();
    }
    let mut tx = w.begin();
    if !updated.is_empty() {
        tx.upsert_items(common::batch(updated, DIM, 5)).unwrap();
    }
    if !deleted.is_empty() {
        tx.delete_items(deleted).unwrap();
    }
    tx.commit().unwrap();
}

/// The live items' vectors, as the model of the store: `salt` 5 for the
/// updated ids, 0 for the rest, none for the deleted ones.
fn model(all: std::ops::Range<u64>, updated: &[u64], deleted: &[u64]) -> BTreeMap<u64, Vec<f32>> {
    all.filter(|id| !deleted.contains(id))
        .map(|id| {
            let salt = if updated.contains(&id) { 5 } else { 0 };
            (id, common::vector(id, DIM, salt))
        })
        .collect()
}

/// Queries `cands` for every k and checks hits, scores, not-found ids and
/// counts against `want`.
fn check(store: &Store, want: &BTreeMap<u64, Vec<f32>>, cands: &[u64]) {
    let snap = store.snapshot();
    let user: Vec<f32> = (0..DIM).map(|j| (j as f32 - 3.5) / 4.0).collect();
    let mut distinct: Vec<u64> = Vec::new();
    for &c in cands {
        if !distinct.contains(&c) {
            distinct.push(c);
        }
    }
    let mut scored: Vec<(f32, u64)> = distinct
        .iter()
        .filter_map(|id| {
            let v = want.get(id)?;
            Some((v.iter().zip(&user).map(|(a, b)| a * b).sum::<f32>(), *id))
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let not_found: Vec<u64> = distinct
        .iter()
        .copied()
        .filter(|id| !want.contains_key(id))
        .collect();
    for k in [1, 7, scored.len().max(1), cands.len() + 5] {
        let r = snap.query(&Query::ids(KEY, &user, cands, k)).unwrap();
        assert_eq!(r.not_found, not_found, "k={k}");
        assert_eq!(r.scored, scored.len(), "k={k}");
        let got: Vec<u64> = r.hits.iter().map(|h| h.id).collect();
        let exp: Vec<u64> = scored.iter().take(k).map(|s| s.1).collect();
        assert_eq!(got, exp, "k={k}");
        for (h, s) in r.hits.iter().zip(&scored) {
            assert!(
                (h.score - s.0).abs() <= 1e-5 * (1.0 + s.0.abs()),
                "id {}",
                h.id
            );
        }
    }
}

/// Candidates: every id ever added (live, shadowed, deleted), unknown ids,
/// and duplicates.
fn candidates(all: std::ops::Range<u64>) -> Vec<u64> {
    let mut c: Vec<u64> = all.clone().rev().collect();
    c.extend([u64::MAX, all.end + 17, all.end + 1_000_000, 0]);
    c.extend(all.clone().step_by(9));
    c
}

#[test]
fn a_large_base_plus_small_segments() {
    let dir = tempfile::tempdir().unwrap();
    // Base 0..2000, then three small segments.
    let parts = [0..2000, 2000..2040, 2040..2080, 2080..2120];
    // Updates move ids from the base and from small segments into the
    // newest segment; deletes hit the base, small segments and updated ids.
    let updated: Vec<u64> = (0..2120)
        .filter(|i| i % 97 == 3 || (2000..2010).contains(i))
        .collect();
    let deleted: Vec<u64> = (0..2120)
        .filter(|i| i % 89 == 1 || i % 97 == 3 && i % 2 == 0)
        .collect();
    build(dir.path(), &parts, &updated, &deleted);
    let store = Store::open(dir.path()).unwrap();
    let snap = store.snapshot();
    assert_eq!(snap.segments().len(), 5);
    // The directory holds the rows outside the base: about 140 ids, a few
    // KB (16 bytes per slot at load 0.7).
    let bytes = snap.prepare_id_directory().unwrap();
    assert!((1_000..16_000).contains(&bytes), "{bytes} bytes");
    let want = model(0..2120, &updated, &deleted);
    check(&store, &want, &candidates(0..2120));
    check(&store, &want, &[2005, 2005, 3, 2119, 9_999]);
}

#[test]
fn equal_segments() {
    let dir = tempfile::tempdir().unwrap();
    let parts: Vec<_> = (0..8).map(|s| s * 300..(s + 1) * 300).collect();
    let updated: Vec<u64> = (0..2400).filter(|i| i % 41 == 7).collect();
    let deleted: Vec<u64> = (0..2400)
        .filter(|i| i % 53 == 2 || i % 41 == 7 && i % 3 == 0)
        .collect();
    build(dir.path(), &parts, &updated, &deleted);
    let store = Store::open(dir.path()).unwrap();
    let snap = store.snapshot();
    assert_eq!(snap.segments().len(), 9);
    // Eight segments of 300 (before deletes) and one of about 60: the
    // directory holds every live row (about 2,350; 16 bytes per slot at
    // load 0.7).
    let bytes = snap.prepare_id_directory().unwrap();
    assert!((16 * 3000..16 * 3600).contains(&bytes), "{bytes} bytes");
    let want = model(0..2400, &updated, &deleted);
    check(&store, &want, &candidates(0..2400));
}

#[test]
fn a_single_segment_has_no_directory_and_a_pinned_snapshot_queries_before_preparing() {
    let dir = tempfile::tempdir().unwrap();
    let one_part = [std::ops::Range { start: 0, end: 100 }];
    build(dir.path(), &one_part, &[], &[5]);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.snapshot().segments().len(), 1);
    assert_eq!(store.snapshot().prepare_id_directory().unwrap(), 0);
    check(&store, &model(0..100, &[], &[5]), &candidates(0..100));

    // A snapshot pinned by number builds its directory on the first query.
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), &[0..100, 100..200], &[150], &[5, 120]);
    let store = Store::open(dir.path()).unwrap();
    let n = store.snapshot().number();
    let pinned = store.open_snapshot(n).unwrap();
    let user = vec![0.5f32; DIM as usize];
    let r = pinned
        .query(&Query::ids(KEY, &user, &[120, 150, 5, 7], 4))
        .unwrap();
    assert_eq!(r.not_found, vec![120, 5]);
    assert_eq!(r.hits.len(), 2);
    assert!(pinned.prepare_id_directory().unwrap() > 0);
}

#[test]
fn the_newest_segment_is_the_largest() {
    // Old copies (deleted) in older segments, live ones in the newest and
    // largest, which holds less than half of the live rows (so the
    // directory holds every segment): it must answer with the live copy.
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(dir.path(), common::schema(DIM, Dtype::F32)).unwrap();
    for p in [0..400u64, 400..800, 800..1200] {
        let mut tx = w.begin();
        tx.add_items(common::batch(&ids(p), DIM, 0)).unwrap();
        tx.commit().unwrap();
    }
    let mut tx = w.begin();
    let mut big = ids(0..200);
    big.extend(1200..1700);
    tx.upsert_items(common::batch(&big, DIM, 5)).unwrap();
    tx.commit().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.snapshot().segments().len(), 4);
    let want: BTreeMap<u64, Vec<f32>> = (0..1700)
        .map(|id| {
            let salt = if big.contains(&id) { 5 } else { 0 };
            (id, common::vector(id, DIM, salt))
        })
        .collect();
    check(&store, &want, &candidates(0..1700));
}
