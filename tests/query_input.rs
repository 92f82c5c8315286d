//! Bad and odd query input, thousands of cases: NaN / infinite components,
//! wrong dimensions, unknown and duplicate ids, empty candidate lists, k = 0,
//! huge k, unknown versions. Every case gives a typed error or a result equal
//! to a brute-force reference, and the store is left unchanged.
//!
//! Cases default to 2000; `VSTORE_PROPTEST_CASES` overrides.

mod common;

use std::sync::{Arc, LazyLock};

use proptest::prelude::*;
use vstore::{Dtype, Error, ItemBatch, Query, Schema, Snapshot, Store, Writer};

struct Fixture {
    _dir: tempfile::TempDir,
    snap: Arc<Snapshot>,
    files: Vec<(String, u64)>,
}

fn grid(id: u64, j: u64) -> f32 {
    (((id * 13 + j * 7) % 32) as f32 - 16.0) / 8.0
}

static FIX: LazyLock<Fixture> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap();
    let schema = Schema::new().embedding("s", "v1", 8, Dtype::F32);
    let mut w = Writer::create(dir.path(), schema).unwrap();
    for seg in 0..2u64 {
        let ids: Vec<u64> = (seg * 100..seg * 100 + 100).collect();
        let v = ids
            .iter()
            .flat_map(|&i| (0..8).map(move |j| grid(i, j)))
            .collect();
        let mut tx = w.begin();
        tx.add_items(ItemBatch::new(ids).embedding("s@v1", v))
            .unwrap();
        tx.commit().unwrap();
    }
    let mut tx = w.begin();
    tx.delete_items(&[5, 150]).unwrap();
    tx.commit().unwrap();
    drop(w);
    let snap = Store::open(dir.path()).unwrap().snapshot();
    let files = listing(dir.path());
    Fixture {
        _dir: dir,
        snap,
        files,
    }
});

fn listing(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    v.sort();
    v
}

fn component() -> impl Strategy<Value = f32> {
    prop_oneof![
        20 => (-8i32..8).prop_map(|x| x as f32 / 4.0),
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: common::env_or("VSTORE_PROPTEST_CASES", 2000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_query_input_gives_a_typed_error_or_the_right_answer(
        user in prop_oneof![8 => Just(8usize), 1 => 0usize..12]
            .prop_flat_map(|n| prop::collection::vec(component(), n)),
        ids in prop::collection::vec(prop_oneof![0u64..220, Just(u64::MAX), any::<u64>()], 0..60),
        k in prop_oneof![Just(0usize), 1usize..10, Just(usize::MAX), 100usize..1000],
        key in prop_oneof![8 => Just("s@v1"), 1 => Just("s@v2"), 1 => Just("t@v1"), 1 => Just("garbage")],
        full in prop::bool::weighted(0.2),
    ) {
        let f = &*FIX;
        let q = if full { Query::full_scan(key, &user, k) } else { Query::ids(key, &user, &ids, k) };
        let r = f.snap.query(&q);
        let bad_key = key != "s@v1";
        let bad_dim = user.len() != 8;
        let bad_val = user.iter().any(|x| !x.is_finite());
        let empty = !full && ids.is_empty();
        match r {
            Err(Error::VersionSkew { .. }) => prop_assert!(bad_key),
            Err(Error::InvalidInput(msg)) => {
                prop_assert!(!bad_key);
                prop_assert!(bad_dim || bad_val || k == 0 || empty, "unexpected error: {}", msg);
            }
            Err(e) => prop_assert!(false, "untyped error {e:?}"),
            Ok(res) => {
                prop_assert!(!bad_key && !bad_dim && !bad_val && k > 0 && !empty);
                // Brute-force reference (exact: grid values).
                let universe: Vec<u64> = if full { f.snap.ids().collect() } else { ids.clone() };
                let mut seen = std::collections::HashSet::new();
                let mut want = Vec::new();
                let mut missing = Vec::new();
                for id in universe {
                    if !seen.insert(id) { continue; }
                    match f.snap.get_embedding(id, "s@v1") {
                        Ok(v) => want.push((v.iter().zip(&user).map(|(a, b)| a * b).sum::<f32>(), id)),
                        Err(_) => missing.push(id),
                    }
                }
                want.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
                want.truncate(k);
                let got: Vec<(f32, u64)> = res.hits.iter().map(|h| (h.score, h.id)).collect();
                prop_assert_eq!(got, want);
                prop_assert_eq!(res.not_found, missing);
            }
        }
    }
}

#[test]
fn the_store_is_unchanged_by_queries() {
    let f = &*FIX;
    for k in [0usize, 1, usize::MAX] {
        let _ = f.snap.query(&Query::full_scan("s@v1", &[f32::NAN; 8], k));
        let _ = f
            .snap
            .query(&Query::ids("s@v1", &[1.0; 8], &[1, 1, u64::MAX], k));
    }
    assert_eq!(listing(f.snap.dir()), f.files);
    f.snap.verify().unwrap();
}
