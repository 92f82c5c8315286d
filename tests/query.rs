//! The two-tower query against a brute-force reference computed in f64 from
//! the values the store returns, over random stores (every dtype, several
//! segments, deletes), candidate sets (duplicates, unknown and deleted ids),
//! filters and k; plus one test per bad input.
//!
//! Cases default to 48; set `VSTORE_PROPTEST_CASES` for a longer run.

mod common;

use proptest::prelude::*;
use vstore::{Dtype, Error, Filter, ItemBatch, Query, Schema, Snapshot, Store, Writer};

const KEY: &str = "prerank@v1";

#[derive(Debug, Clone)]
struct Case {
    dtype: Dtype,
    dim: u32,
    grid: bool,
    segments: Vec<Vec<u64>>,
    deletes: Vec<u64>,
    seed: u64,
    cands: Vec<u64>,
    full_scan: bool,
    filter: Option<Filter>,
    k: usize,
    user: Vec<f32>,
}

fn value(seed: u64, id: u64, j: u64, grid: bool) -> f32 {
    let mut z =
        seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ j.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^= z >> 29;
    z = z.wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 32;
    if grid {
        // Multiples of 1/8 in [-2, 2): exact in f16 and bf16, and products
        // and sums stay exact in f32, so scores tie exactly where they should.
        ((z % 32) as f32 - 16.0) / 8.0
    } else {
        (z % 20001) as f32 / 10000.0 - 1.0
    }
}

fn filter_strategy() -> impl Strategy<Value = Option<Filter>> {
    let leaf = prop_oneof![
        prop::collection::vec(0u32..6, 0..4).prop_map(|v| Filter::is_in("cat", v)),
        prop::collection::vec(0u32..6, 0..4).prop_map(|v| Filter::not_in("cat", v)),
        (-2.0f32..2.0, 0.0f32..3.0).prop_map(|(a, w)| Filter::range("price", a, a + w)),
        (0.0f32..1.0).prop_map(|a| Filter::range("ctr", a, f32::INFINITY)),
    ];
    let tree = leaf.prop_recursive(2, 6, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Filter::And),
            prop::collection::vec(inner.clone(), 0..3).prop_map(Filter::Or),
            inner.prop_map(|f| Filter::Not(Box::new(f))),
        ]
    });
    prop::option::weighted(0.5, tree)
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![
            Just(Dtype::F32),
            Just(Dtype::F16),
            Just(Dtype::Bf16),
            Just(Dtype::I8)
        ],
        prop_oneof![1u32..20, Just(64u32), 60u32..70],
        any::<bool>(),
        prop::collection::hash_set(0u64..400, 1..300),
        1usize..4,
        any::<u64>(),
        any::<bool>(),
        filter_strategy(),
        prop_oneof![1usize..5, 1usize..400],
    )
        .prop_flat_map(
            |(dtype, dim, grid, ids, nseg, seed, full_scan, filter, k)| {
                let ids: Vec<u64> = ids.into_iter().collect();
                let n = ids.len();
                (
                    Just((
                        dtype,
                        dim,
                        grid,
                        ids.clone(),
                        nseg,
                        seed,
                        full_scan,
                        filter,
                        k,
                    )),
                    prop::collection::vec(prop::sample::select(ids.clone()), 0..n.min(40)),
                    // Candidates: store ids, unknown ids (>= 400) and repeats.
                    prop::collection::vec(
                        prop_oneof![4 => prop::sample::select(ids), 1 => 400u64..450],
                        1..300,
                    ),
                    prop::collection::vec(-2.0f32..2.0, dim as usize),
                )
            },
        )
        .prop_map(
            |((dtype, dim, grid, ids, nseg, seed, full_scan, filter, k), dels, cands, user)| {
                let per = ids.len().div_ceil(nseg);
                let segments: Vec<Vec<u64>> = ids.chunks(per).map(|c| c.to_vec()).collect();
                let mut deletes = dels;
                deletes.sort_unstable();
                deletes.dedup();
                let user = if grid {
                    user.iter().map(|x| (x * 4.0).round() / 4.0).collect()
                } else {
                    user
                };
                Case {
                    dtype,
                    dim,
                    grid,
                    segments,
                    deletes,
                    seed,
                    cands,
                    full_scan,
                    filter,
                    k,
                    user,
                }
            },
        )
}

fn build(c: &Case, dir: &std::path::Path) -> std::sync::Arc<Snapshot> {
    let schema = Schema::new()
        .categorical("cat", 2)
        .numeric("price", 0.5)
        .stat("ctr", 0.0)
        .embedding("prerank", "v1", c.dim, c.dtype);
    let mut w = Writer::create(dir, schema).unwrap();
    for seg in &c.segments {
        let mut tx = w.begin();
        let d = c.dim as u64;
        let vecs = seg
            .iter()
            .flat_map(|&id| (0..d).map(move |j| (id, j)))
            .map(|(id, j)| value(c.seed, id, j, c.grid))
            .collect();
        tx.add_items(
            ItemBatch::new(seg.clone())
                .categorical_opt(
                    "cat",
                    seg.iter()
                        .map(|&i| (i % 7 != 6).then_some((i % 6) as u32))
                        .collect(),
                )
                .numeric_opt(
                    "price",
                    seg.iter()
                        .map(|&i| (i % 5 != 0).then_some(value(c.seed, i, 999, true)))
                        .collect(),
                )
                .stat("ctr", seg.iter().map(|&i| (i % 10) as f32 / 10.0).collect())
                .embedding(KEY, vecs),
        )
        .unwrap();
        tx.commit().unwrap();
    }
    if !c.deletes.is_empty() {
        let mut tx = w.begin();
        tx.delete_items(&c.deletes).unwrap();
        tx.commit().unwrap();
    }
    Store::open(dir).unwrap().snapshot()
}

/// Evaluates a filter from the values the store returns for `id`.
fn passes(s: &Snapshot, f: &Filter, id: u64) -> bool {
    let at = s.lookup(id).unwrap();
    let seg = &s.segments()[at.segment];
    match f {
        Filter::In { column, values } => {
            values.contains(&seg.categorical(column).unwrap().get(at.row))
        }
        Filter::NotIn { column, values } => {
            !values.contains(&seg.categorical(column).unwrap().get(at.row))
        }
        Filter::Range { column, min, max } => {
            let v = seg
                .numeric(column)
                .or_else(|_| seg.stat(column))
                .unwrap()
                .get(at.row);
            *min <= v && v <= *max
        }
        Filter::And(fs) => fs.iter().all(|f| passes(s, f, id)),
        Filter::Or(fs) => fs.iter().any(|f| passes(s, f, id)),
        Filter::Not(f) => !passes(s, f, id),
        _ => unreachable!(),
    }
}

fn run(c: &Case) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let s = build(c, dir.path());
    // Reference.
    let universe: Vec<u64> = if c.full_scan {
        s.ids().collect()
    } else {
        c.cands.clone()
    };
    let mut seen = std::collections::HashSet::new();
    let (mut not_found, mut filtered, mut scored) = (Vec::new(), 0usize, Vec::new());
    let mut filtered_ids: Vec<u64> = Vec::new();
    for &id in &universe {
        if !seen.insert(id) {
            continue;
        }
        if s.lookup(id).is_none() {
            not_found.push(id);
            continue;
        }
        if let Some(f) = &c.filter {
            if !passes(&s, f, id) {
                filtered += 1;
                filtered_ids.push(id);
                continue;
            }
        }
        let v = s.get_embedding(id, KEY).unwrap();
        let exact: f64 = c
            .user
            .iter()
            .zip(&v)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum();
        let mag: f64 = c
            .user
            .iter()
            .zip(&v)
            .map(|(a, b)| (*a as f64 * *b as f64).abs())
            .sum();
        scored.push((exact, mag, id));
    }
    let q = if c.full_scan {
        Query::full_scan(KEY, &c.user, c.k)
    } else {
        Query::ids(KEY, &c.user, &c.cands, c.k)
    };
    let q = match &c.filter {
        Some(f) => q.filter(f),
        None => q,
    };
    let r = s.query(&q).unwrap();
    if c.filter.is_none() && !c.full_scan {
        // A two-tower query without a filter scores the rows while it
        // resolves the ids (one fused pass); with a filter that keeps
        // everything it resolves first and scores after: the same result,
        // bit for bit.
        let all = Filter::And(Vec::new());
        let apart = s
            .query(&Query::ids(KEY, &c.user, &c.cands, c.k).filter(&all))
            .unwrap();
        prop_assert_eq!(&apart.hits, &r.hits);
        prop_assert_eq!(&apart.not_found, &r.not_found);
        prop_assert_eq!(apart.scored, r.scored);
    }
    prop_assert_eq!(r.snapshot, s.number());
    prop_assert_eq!(&r.not_found, &not_found);
    prop_assert_eq!(r.filtered_out, filtered);
    // The filtered ids, ascending (a full scan counts them only).
    filtered_ids.sort_unstable();
    if c.full_scan {
        filtered_ids.clear();
    }
    prop_assert_eq!(&r.filtered, &filtered_ids);
    prop_assert_eq!(r.scored, scored.len());
    prop_assert_eq!(r.hits.len(), c.k.min(scored.len()));
    // Hits are ordered by (score desc, id asc).
    for w in r.hits.windows(2) {
        prop_assert!(w[0].score > w[1].score || (w[0].score == w[1].score && w[0].id < w[1].id));
    }
    let d = c.dim as f64;
    let bound = |mag: f64| mag * (d + 4.0) * f32::EPSILON as f64 + 1e-30;
    let exact_scores = c.grid && c.dtype != Dtype::I8;
    if exact_scores {
        let mut want = scored.clone();
        want.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.2.cmp(&b.2)));
        want.truncate(c.k);
        let got: Vec<(f64, u64)> = r.hits.iter().map(|h| (h.score as f64, h.id)).collect();
        let want: Vec<(f64, u64)> = want.iter().map(|w| (w.0, w.2)).collect();
        prop_assert_eq!(got, want);
    } else {
        let by_id: std::collections::HashMap<u64, (f64, f64)> =
            scored.iter().map(|&(e, m, id)| (id, (e, m))).collect();
        let returned: std::collections::HashSet<u64> = r.hits.iter().map(|h| h.id).collect();
        for h in &r.hits {
            let (e, m) = by_id[&h.id];
            prop_assert!(
                (h.score as f64 - e).abs() <= bound(m),
                "id {} score {} vs {}",
                h.id,
                h.score,
                e
            );
        }
        // Nothing left out ranks clearly above anything returned.
        if let Some(worst) = r.hits.last() {
            let (we, wm) = by_id[&worst.id];
            for &(e, m, id) in &scored {
                if !returned.contains(&id) {
                    prop_assert!(
                        e <= we + bound(m) + bound(wm),
                        "id {id} ({e}) left out above {}",
                        worst.id
                    );
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: common::env_or("VSTORE_PROPTEST_CASES", 48), ..ProptestConfig::default() })]

    #[test]
    fn query_matches_brute_force_reference(c in case()) {
        run(&c)?;
    }
}

fn small_store() -> (tempfile::TempDir, std::sync::Arc<Snapshot>) {
    let dir = tempfile::tempdir().unwrap();
    let schema = Schema::new()
        .categorical("cat", 0)
        .stat("ctr", 0.0)
        .embedding("prerank", "v1", 4, Dtype::F16)
        .embedding("prerank", "v2", 4, Dtype::F32);
    let mut w = Writer::create(dir.path(), schema).unwrap();
    let mut tx = w.begin();
    tx.add_items(
        ItemBatch::new(vec![1, 2, 3])
            .categorical("cat", vec![1, 2, 3])
            .embedding("prerank@v1", vec![1.0; 12])
            .embedding("prerank@v2", vec![2.0; 12]),
    )
    .unwrap();
    tx.commit().unwrap();
    let s = Store::open(dir.path()).unwrap().snapshot();
    (dir, s)
}

#[test]
fn unknown_version_is_refused_naming_the_held_ones() {
    let (_d, s) = small_store();
    let e = s
        .query(&Query::ids("prerank@v3", &[0.0; 4], &[1], 1))
        .unwrap_err();
    match &e {
        Error::VersionSkew {
            requested,
            available,
            ..
        } => {
            assert_eq!(requested, "prerank@v3");
            assert_eq!(
                available,
                &vec!["prerank@v1".to_string(), "prerank@v2".to_string()]
            );
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn wrong_dimension_is_refused() {
    let (_d, s) = small_store();
    let e = s
        .query(&Query::ids("prerank@v1", &[0.0; 5], &[1], 1))
        .unwrap_err();
    assert!(
        e.to_string().contains("5 components") && e.to_string().contains("dimension 4"),
        "{e}"
    );
}

#[test]
fn non_finite_user_components_are_refused() {
    let (_d, s) = small_store();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let e = s
            .query(&Query::ids("prerank@v1", &[0.0, bad, 0.0, 0.0], &[1], 1))
            .unwrap_err();
        assert!(e.to_string().contains("component 1"), "{e}");
    }
}

#[test]
fn k_zero_is_refused() {
    let (_d, s) = small_store();
    let e = s
        .query(&Query::ids("prerank@v1", &[0.0; 4], &[1], 0))
        .unwrap_err();
    assert!(e.to_string().contains("k must be"), "{e}");
    let e = s
        .query(&Query::full_scan("prerank@v1", &[0.0; 4], 0))
        .unwrap_err();
    assert!(e.to_string().contains("k must be"), "{e}");
}

#[test]
fn empty_and_oversized_candidate_lists_are_refused() {
    let (_d, s) = small_store();
    let e = s
        .query(&Query::ids("prerank@v1", &[0.0; 4], &[], 3))
        .unwrap_err();
    assert!(e.to_string().contains("no candidate"), "{e}");
    let many: Vec<u64> = (0..vstore::MAX_CANDIDATES as u64 + 1).collect();
    let e = s
        .query(&Query::ids("prerank@v1", &[0.0; 4], &many, 3))
        .unwrap_err();
    assert!(e.to_string().contains("exceed the limit"), "{e}");
}

#[test]
fn bad_filters_are_refused() {
    let (_d, s) = small_store();
    let user = [1.0f32; 4];
    let f = Filter::is_in("colour", [1]);
    let e = s
        .query(&Query::ids("prerank@v1", &user, &[1], 1).filter(&f))
        .unwrap_err();
    assert!(matches!(e, Error::NoSuchColumn { .. }), "{e}");
    let f = Filter::range("cat", 0.0, 1.0);
    let e = s
        .query(&Query::ids("prerank@v1", &user, &[1], 1).filter(&f))
        .unwrap_err();
    assert!(e.to_string().contains("categorical"), "{e}");
    // A statistics column exists but is numeric: said so, not "no column".
    let f = Filter::is_in("ctr", [1]);
    let e = s
        .query(&Query::ids("prerank@v1", &user, &[1], 1).filter(&f))
        .unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
    assert!(
        e.to_string().contains("\"ctr\" is a statistics column"),
        "{e}"
    );
    let f = Filter::range("ctr", 2.0, 1.0);
    let e = s
        .query(&Query::ids("prerank@v1", &user, &[1], 1).filter(&f))
        .unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let f = Filter::range("ctr", f32::NAN, 1.0);
    assert!(s
        .query(&Query::ids("prerank@v1", &user, &[1], 1).filter(&f))
        .is_err());
}

#[test]
fn k_larger_than_candidates_returns_all_and_filters_may_remove_everything() {
    let (_d, s) = small_store();
    let user = [1.0f32; 4];
    let r = s
        .query(&Query::ids("prerank@v2", &user, &[3, 1, 1, 2, 9], 100))
        .unwrap();
    assert_eq!(
        r.hits.iter().map(|h| h.id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(r.hits.iter().all(|h| h.score == 8.0));
    assert_eq!(r.not_found, vec![9]);
    let none = Filter::is_in("cat", []);
    let r = s
        .query(&Query::ids("prerank@v2", &user, &[1, 2, 3], 2).filter(&none))
        .unwrap();
    assert!(r.hits.is_empty());
    assert_eq!(r.filtered_out, 3);
    assert_eq!(r.filtered, vec![1, 2, 3]);
    let r = s
        .query(&Query::full_scan("prerank@v2", &user, 2).filter(&none))
        .unwrap();
    assert!(r.hits.is_empty());
    assert_eq!(r.filtered_out, 3);
}

#[test]
fn queries_run_concurrently_on_one_snapshot() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Snapshot>();
    assert_send_sync::<Store>();
    let (_d, s) = small_store();
    let want = s
        .query(&Query::ids(
            "prerank@v1",
            &[1.0, 2.0, 3.0, 4.0],
            &[1, 2, 3],
            2,
        ))
        .unwrap();
    std::thread::scope(|sc| {
        for _ in 0..4 {
            sc.spawn(|| {
                for _ in 0..200 {
                    let r = s
                        .query(&Query::ids(
                            "prerank@v1",
                            &[1.0, 2.0, 3.0, 4.0],
                            &[1, 2, 3],
                            2,
                        ))
                        .unwrap();
                    assert_eq!(r, want);
                }
            });
        }
    });
}

/// The format's id hash and home slot (FORMAT.md, "Id index").
fn home(id: u64, slots: u64) -> u64 {
    let mut z = id.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z as u128 * slots as u128) >> 64) as u64
}

#[test]
fn a_damaged_id_index_never_yields_a_wrong_row() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Schema::new().embedding("prerank", "v1", 4, Dtype::F32);
    let mut w = Writer::create(dir.path(), schema).unwrap();
    let ids: Vec<u64> = (0..100).collect();
    let vecs: Vec<f32> = ids
        .iter()
        .flat_map(|&i| [i as f32, 0.0, 0.0, 0.0])
        .collect();
    let mut tx = w.begin();
    tx.add_items(ItemBatch::new(ids.clone()).embedding(KEY, vecs))
        .unwrap();
    tx.commit().unwrap();
    drop(w);
    // Point id 7's slot at row 99 (the best-scoring row). The data region is
    // only checksummed by verify(), so the store still opens.
    let idx = dir.path().join("s0000000001-g0-ids.vidx");
    let mut b = std::fs::read(&idx).unwrap();
    let slots = 100f64 / 0.7;
    let slots = slots.ceil() as u64 + 1;
    let table = 64 + (100 * 8usize).next_multiple_of(64);
    let mut s = home(7, slots) as usize;
    loop {
        let at = table + s * 16;
        let id = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        if id == 7 {
            b[at + 8..at + 16].copy_from_slice(&100u64.to_le_bytes()); // row 99 + 1
            break;
        }
        s = (s + 1) % slots as usize;
    }
    std::fs::write(&idx, &b).unwrap();
    let snap = Store::open(dir.path()).unwrap().snapshot();
    assert!(snap.verify().is_err());
    // The unchecked lookup never maps 7 to row 99: it reads 7 as absent.
    assert_eq!(snap.lookup(7), None);
    // Queries and checked lookups checksum the id index first: the damage
    // is an error naming the file, not a wrong or missing row.
    let user = [1.0f32, 0.0, 0.0, 0.0];
    for q in [
        Query::ids(KEY, &user, &[7, 3, 99, 5], 2),
        Query::full_scan(KEY, &user, 2),
    ] {
        let e = snap.query(&q).unwrap_err();
        assert!(matches!(e, vstore::Error::Corrupt { .. }), "{e}");
        assert_eq!(e.path(), Some(idx.as_path()));
    }
    assert_eq!(snap.item(7).unwrap_err().path(), Some(idx.as_path()));
}

#[test]
fn a_row_scores_the_same_in_any_group_and_in_a_full_scan() {
    // Rows are scored four at a time; a row's score must not depend on which
    // rows share its group, on being left over, or on the query's path.
    for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16, Dtype::I8] {
        let dir = tempfile::tempdir().unwrap();
        let c = Case {
            dtype,
            dim: 37,
            grid: false,
            segments: vec![(1..=14).collect(), (15..=23).collect()],
            deletes: vec![],
            seed: 5,
            cands: vec![],
            full_scan: true,
            filter: None,
            k: 23,
            user: (0..37).map(|j| value(9, 0, j, false)).collect(),
        };
        let s = build(&c, dir.path());
        let all = s.query(&Query::full_scan(KEY, &c.user, 23)).unwrap();
        assert_eq!(all.hits.len(), 23);
        let want: std::collections::HashMap<u64, u32> =
            all.hits.iter().map(|h| (h.id, h.score.to_bits())).collect();
        // Every id alone, in runs of 1 to 7 (full groups and leftovers at
        // every offset), and all of them in reverse.
        let mut lists: Vec<Vec<u64>> = (1..=23).map(|i| vec![i]).collect();
        for len in 1..=7u64 {
            for start in 1..=23u64.saturating_sub(len - 1) {
                lists.push((start..start + len).collect());
            }
        }
        lists.push((1..=23).rev().collect());
        for ids in &lists {
            let r = s.query(&Query::ids(KEY, &c.user, ids, 23)).unwrap();
            assert_eq!(r.hits.len(), ids.len());
            for h in &r.hits {
                assert_eq!(
                    h.score.to_bits(),
                    want[&h.id],
                    "{dtype:?}: id {} scored {} among {ids:?}, {} in the full scan",
                    h.id,
                    h.score,
                    f32::from_bits(want[&h.id])
                );
            }
        }
    }
}

#[test]
fn scores_that_overflow_are_left_out_and_listed_never_ordered_silently() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Schema::new().embedding("prerank", "v1", 4, Dtype::F32);
    let mut w = Writer::create(dir.path(), schema).unwrap();
    let ids = vec![1u64, 2, 3, 4, 5];
    let vecs: Vec<f32> = [3e38f32, 1.0, -3e38, 2.0, f32::MAX]
        .iter()
        .flat_map(|&x| [x, 0.0, 0.0, 0.0])
        .collect();
    let mut tx = w.begin();
    tx.add_items(ItemBatch::new(ids.clone()).embedding(KEY, vecs))
        .unwrap();
    tx.commit().unwrap();
    let snap = Store::open(dir.path()).unwrap().snapshot();
    let user = [10.0f32, 0.0, 0.0, 0.0];
    for q in [
        Query::ids(KEY, &user, &[5, 4, 3, 2, 1, 99], 5),
        Query::full_scan(KEY, &user, 5),
    ] {
        let r = snap.query(&q).unwrap();
        assert_eq!(
            r.hits.iter().map(|h| (h.id, h.score)).collect::<Vec<_>>(),
            vec![(4, 20.0), (2, 10.0)]
        );
        assert_eq!(r.non_finite, vec![1, 3, 5]);
        assert_eq!(r.scored, 2);
    }
}
