//! What a serving process needs around the query (issue 31): per-stage
//! timings in every result, a per-query compute budget that never drops
//! candidates silently, and the feature log of the hits.

use std::sync::Arc;

use vstore::{
    Budget, Dtype, ExampleBundle, Filter, ItemBatch, Precision, Query, QueryResult, Schema,
    Snapshot, Store, UserInputs, Writer,
};

const ROWS: u64 = 3_000;
const KEY: &str = "prerank@v1";

/// A deterministic generator of values in [-1, 1).
fn values(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed;
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }
}

/// A store of `ROWS` items in three segments (the last one deleting a few
/// of the first), with the example bundle added at `precision`.
fn store(dir: &std::path::Path, precision: Precision) -> Arc<Snapshot> {
    let schema = Schema::new()
        .embedding("prerank", "v1", ExampleBundle::DIM as u32, Dtype::F16)
        .categorical("category", 0)
        .stat("ctr_1d", 0.0)
        .stat("impressions_7d", 0.0);
    let mut next = values(7);
    let mut w = Writer::create(dir, schema).unwrap();
    let (json, weights) = ExampleBundle::new("prerank", "v1").files();
    for part in 0..3u64 {
        let ids: Vec<u64> = (part * ROWS / 3..(part + 1) * ROWS / 3)
            .map(|i| i * 7 + 3)
            .collect();
        let n = ids.len();
        let batch = ItemBatch::new(ids.clone())
            .categorical("category", ids.iter().map(|i| (i % 11) as u32).collect())
            .stat("ctr_1d", (0..n).map(|_| next().abs() * 0.1).collect())
            .stat(
                "impressions_7d",
                (0..n).map(|_| next().abs() * 20_000.0).collect(),
            )
            .embedding(
                KEY,
                (0..n * ExampleBundle::DIM).map(|_| next() * 0.5).collect(),
            );
        let mut tx = w.begin();
        tx.add_items(batch).unwrap();
        if part == 0 {
            tx.add_model_at(&json, &weights, precision).unwrap();
        }
        if part == 2 {
            tx.delete_items(&[3, 10, 17]).unwrap();
        }
        tx.commit().unwrap();
    }
    let snap = Store::open(dir).unwrap().snapshot();
    assert_eq!(snap.segments().len(), 3);
    snap
}

fn user_inputs() -> UserInputs {
    UserInputs::new()
        .dense("user_stats", vec![0.3; 8])
        .by_item("user_category_ctr", [(3, vec![0.2]), (5, vec![-0.4])])
}

/// Candidates in a scrambled order with duplicates, unknown and deleted
/// ids among them.
fn candidates(n: usize) -> Vec<u64> {
    let mut c: Vec<u64> = (0..n as u64)
        .map(|i| ((i * 1_237 + 11) % ROWS) * 7 + 3)
        .collect();
    c.insert(5, 999_999_999); // unknown
    c.insert(9, c[2]); // duplicate
    c.insert(12, 10); // deleted
    c
}

/// A query of 40 over `ids`, three-tower if `inputs` are given.
fn query<'a>(
    ids: &'a [u64],
    user: &'a [f32],
    inputs: Option<&'a UserInputs>,
    filter: Option<&'a Filter>,
) -> Query<'a> {
    let mut q = Query::ids(KEY, user, ids, 40);
    if let Some(inputs) = inputs {
        q = q.three_tower(inputs);
    }
    if let Some(f) = filter {
        q = q.filter(f);
    }
    q
}

fn ids(r: &QueryResult) -> Vec<u64> {
    r.hits.iter().map(|h| h.id).collect()
}

#[test]
fn every_result_says_how_long_each_stage_took() {
    let dir = tempfile::tempdir().unwrap();
    let snap = store(dir.path(), Precision::F32);
    let user: Vec<f32> = {
        let mut next = values(3);
        (0..ExampleBundle::DIM).map(|_| next()).collect()
    };
    let inputs = user_inputs();
    let cands = candidates(2_000);
    let q = Query::ids(KEY, &user, &cands, 50);
    for (what, r) in [
        ("two-tower", snap.query(&q).unwrap()),
        ("three-tower", snap.query(&q.three_tower(&inputs)).unwrap()),
    ] {
        let t = r.timings;
        println!("{what}: {t:?}");
        assert!(!t.resolve.is_zero() && !t.gather.is_zero(), "{what}: {t:?}");
        assert!(!t.topk.is_zero(), "{what}: {t:?}");
        let stages =
            t.prepare + t.resolve + t.gather + t.cross + t.upper + t.heads + t.rescore + t.topk;
        // One thread: the stages are disjoint spans of the query.
        assert!(stages <= t.total, "{what}: stages {stages:?} > total {t:?}");
        assert!(t.rescore.is_zero(), "{what}: no exact mode");
        if what == "two-tower" {
            assert!(t.cross.is_zero() && t.upper.is_zero() && t.heads.is_zero());
        } else {
            assert!(!t.cross.is_zero() && !t.upper.is_zero() && !t.heads.is_zero());
        }
        // Multiply-adds: an inner product of 64 per scored item; the
        // model's per-candidate cost otherwise.
        let per = if what == "two-tower" {
            64
        } else {
            snap.model(KEY).unwrap().macs_per_item_split() as u64
        };
        assert_eq!(r.multiply_adds, r.scored as u64 * per, "{what}");
    }
    // The example bundle's per-candidate cost leaves out what a query
    // computes once: the user part of the first upper layer (64 user
    // values x 256) and the `user_dense` part of the first cross layer
    // (8 values x 64), which was once charged per candidate.
    let m = snap.model(KEY).unwrap();
    assert_eq!(
        m.macs_per_item() - m.macs_per_item_split(),
        64 * 256 + 8 * 64
    );
    // A full scan times its stages too.
    let r = snap.query(&Query::full_scan(KEY, &user, 10)).unwrap();
    assert!(!r.timings.gather.is_zero() && r.timings.total >= r.timings.gather);
    // Timings do not make two runs of a query unequal.
    assert_eq!(snap.query(&q).unwrap(), snap.query(&q).unwrap());
}

/// Over a budget, exactly the first candidates in the caller's order (of
/// those found and passing the filter) are scored: the result is the
/// unbudgeted query's over those candidates, and the rest are named.
#[test]
fn a_budget_scores_the_first_candidates_and_names_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let snap = store(dir.path(), Precision::F32);
    let mut next = values(5);
    let user: Vec<f32> = (0..ExampleBundle::DIM).map(|_| next()).collect();
    let inputs = user_inputs();
    let cands = candidates(1_500);
    let not_3 = Filter::not_in("category", [3]);
    for three in [false, true] {
        for filtered in [false, true] {
            let base = |ids| {
                query(
                    ids,
                    &user,
                    three.then_some(&inputs),
                    filtered.then_some(&not_3),
                )
            };
            let full = snap.query(&base(&cands)).unwrap();
            // The candidates that would be scored, in the caller's order.
            let mut seen = std::collections::HashSet::new();
            let eligible: Vec<u64> = (cands.iter().copied())
                .filter(|id| seen.insert(*id))
                .filter(|id| !full.not_found.contains(id) && !full.filtered.contains(id))
                .collect();
            assert_eq!(eligible.len(), full.scored);
            for cap in [
                0,
                1,
                39,
                40,
                700,
                full.scored - 1,
                full.scored,
                full.scored + 5,
            ] {
                let ctx = format!("three-tower {three}, filtered {filtered}, cap {cap}");
                let r = snap
                    .query(&base(&cands).budget(Budget::Items(cap)))
                    .unwrap();
                let kept = cap.min(eligible.len());
                assert_eq!(r.scored, kept, "{ctx}");
                assert_eq!(r.over_budget, eligible.len() - kept, "{ctx}");
                assert_eq!(r.over_budget_ids, eligible[kept..], "{ctx}");
                assert_eq!(r.not_found, full.not_found, "{ctx}");
                assert_eq!(r.filtered, full.filtered, "{ctx}");
                // The same as asking for those candidates only (three-tower
                // weighted-sum fusion is per item, so scores agree too).
                let only = snap.query(&base(&eligible[..kept.max(1)])).unwrap();
                if kept > 0 {
                    assert_eq!(r.hits, only.hits, "{ctx}");
                } else {
                    assert!(r.hits.is_empty(), "{ctx}");
                }
                if cap >= full.scored {
                    assert_eq!(r, full, "{ctx}: within the budget nothing changes");
                }
            }
            // A budget in multiply-adds buys as many items as it pays for.
            let per = full.multiply_adds / full.scored as u64;
            let r = snap
                .query(&base(&cands).budget(Budget::MultiplyAdds(per * 100 + per - 1)))
                .unwrap();
            assert_eq!(r.scored, 100);
            assert_eq!(r.multiply_adds, per * 100);
            assert_eq!(r.over_budget_ids, eligible[100..]);
        }
    }
    // A full scan over budget scores the first items in storage order and
    // counts the rest.
    for three in [false, true] {
        let mut q = Query::full_scan(KEY, &user, 5).budget(Budget::Items(1_000));
        if three {
            q = q.three_tower(&inputs);
        }
        let r = snap.query(&q).unwrap();
        assert_eq!(r.scored, 1_000, "three-tower {three}");
        assert_eq!(
            r.over_budget,
            ROWS as usize - 3 - 1_000,
            "three-tower {three}"
        );
        assert!(r.over_budget_ids.is_empty());
        // Storage order: the first segment's first thousand live rows.
        let first: Vec<u64> = (0..1_003u64)
            .map(|i| i * 7 + 3)
            .filter(|id| ![3, 10, 17].contains(id))
            .collect();
        let only = snap
            .query(&{
                let q = Query::ids(KEY, &user, &first, 5);
                if three {
                    q.three_tower(&inputs)
                } else {
                    q
                }
            })
            .unwrap();
        assert_eq!(ids(&r), ids(&only), "three-tower {three}");
    }
}

/// The feature log holds what the model computed for the hits: the same
/// head values and scores as the result, bit for bit, whatever the
/// threads, precision, precomputing or exact mode; a two-tower query has
/// none to give.
#[test]
fn the_feature_log_is_the_models_own_view_of_each_hit() {
    let mut next = values(9);
    let user: Vec<f32> = (0..ExampleBundle::DIM).map(|_| next()).collect();
    let inputs = user_inputs();
    let cands = candidates(2_500);
    for precision in [Precision::F32, Precision::Bf16, Precision::Int8] {
        let dir = tempfile::tempdir().unwrap();
        let snap = store(dir.path(), precision);
        let q = Query::ids(KEY, &user, &cands, 30)
            .three_tower(&inputs)
            .with_heads();
        let plain = snap.query(&q).unwrap();
        let mut logs = Vec::new();
        for (what, q) in [
            ("one thread", q.log_features()),
            ("two threads", q.log_features().threads(2)),
            ("exact", q.log_features().exact()),
        ] {
            let ctx = format!("{precision:?}, {what}");
            let r = snap.query(&q).unwrap();
            let log = r.features.clone().expect("a log");
            assert_eq!(
                log.scores,
                r.hits.iter().map(|h| h.score).collect::<Vec<_>>()
            );
            assert_eq!(log.heads, r.heads, "{ctx}");
            assert_eq!(log.head_names, ["click", "like", "watch_time"]);
            let names: Vec<&str> = log.inputs.iter().map(|i| i.0.as_str()).collect();
            assert_eq!(
                names,
                [
                    "ctr_1d",
                    "impressions_7d",
                    "category",
                    "user_stats",
                    "user_category_ctr"
                ]
            );
            assert_eq!(log.cross_dim, 22);
            assert_eq!(log.cross_inputs.len(), 30 * 22, "{ctx}");
            assert_eq!(log.head_logits.len(), 30 * 3, "{ctx}");
            for i in 0..r.hits.len() {
                let x = log.cross_input(i);
                // user_stats, as the query passed them (the store splits
                // them out of the per-row work; the log has them in place).
                assert_eq!(&x[13..21], &[0.3; 8], "{ctx}");
                // user_category_ctr: the map's value, or the default 0.
                let id = r.hits[i].id;
                let want = match (id % 11) as u32 {
                    3 => 0.2,
                    5 => -0.4,
                    _ => 0.0,
                };
                assert_eq!(x[21], want, "{ctx}: hit {i} (id {id})");
                // `like` is a plain sigmoid head: its value is its logit's.
                let (l, h) = (log.head_logits_of(i)[1], log.heads_of(i)[1]);
                assert!((1.0 / (1.0 + (-l).exp()) - h).abs() < 1e-6, "{ctx}");
                // `click` is calibrated (10% negative sampling).
                let (l, h) = (log.head_logits_of(i)[0] as f64, log.heads_of(i)[0] as f64);
                assert!((0.1 / (0.1 + (-l).exp()) - h).abs() < 1e-6, "{ctx}");
            }
            if what != "exact" || precision == Precision::F32 {
                assert_eq!(
                    QueryResult {
                        features: None,
                        ..r.clone()
                    },
                    plain,
                    "{ctx}"
                );
            }
            logs.push(log);
        }
        // Threads change nothing in the log.
        assert_eq!(logs[0], logs[1], "{precision:?}");
        // The cross inputs do not depend on the precision of the products.
        if precision == Precision::F32 {
            assert_eq!(logs[0], logs[2], "exact on f32 is the plain query");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let snap = store(dir.path(), Precision::F32);
    let e = snap
        .query(&Query::ids(KEY, &user, &cands, 5).log_features())
        .unwrap_err();
    assert!(e.to_string().contains("three-tower"), "{e}");
}

/// Several users in one call: each result is the query's own, whatever
/// the batch shares (candidates resolved once) or does not (other
/// candidates, another filter or budget, an error in between).
#[test]
fn a_batch_of_users_returns_what_each_query_returns_alone() {
    let dir = tempfile::tempdir().unwrap();
    let snap = store(dir.path(), Precision::F32);
    let mut next = values(11);
    let users: Vec<Vec<f32>> = (0..6)
        .map(|_| (0..ExampleBundle::DIM).map(|_| next()).collect())
        .collect();
    let inputs = user_inputs();
    let cands = candidates(2_000);
    let same_again = cands.clone(); // equal contents, another buffer
    let other = candidates(700);
    let not_3 = Filter::not_in("category", [3]);
    let not_5 = Filter::not_in("category", [5]);
    let bad_user = vec![f32::NAN; ExampleBundle::DIM];
    let queries = vec![
        Query::ids(KEY, &users[0], &cands, 20),
        Query::ids(KEY, &users[1], &cands, 7).three_tower(&inputs),
        Query::ids(KEY, &users[2], &same_again, 20).budget(Budget::Items(300)),
        Query::ids(KEY, &users[3], &same_again, 20).budget(Budget::Items(300)),
        Query::ids(KEY, &bad_user, &same_again, 20),
        Query::ids(KEY, &users[4], &same_again, 20).filter(&not_3),
        Query::ids(KEY, &users[5], &same_again, 20).filter(&not_5),
        Query::ids(KEY, &users[5], &other, 20).filter(&not_5),
        Query::full_scan(KEY, &users[0], 9),
        Query::ids(KEY, &users[0], &cands, 20).with_heads(),
        Query::ids(KEY, &users[1], &cands, 7)
            .three_tower(&inputs)
            .log_features(),
    ];
    for round in 0..2 {
        let batch = snap.query_batch(&queries);
        assert_eq!(batch.len(), queries.len());
        for (i, (q, got)) in queries.iter().zip(&batch).enumerate() {
            let alone = snap.query(q);
            match (got, alone) {
                (Ok(got), Ok(alone)) => assert_eq!(*got, alone, "round {round}, query {i}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                (a, b) => panic!("round {round}, query {i}: {a:?} vs {b:?}"),
            }
        }
        assert!(
            batch[4].is_err() && batch[9].is_err(),
            "the bad ones fail alone"
        );
    }
    // A batch on another snapshot with the same scratch does not reuse
    // what the last batch resolved.
    let dir2 = tempfile::tempdir().unwrap();
    let snap2 = store(dir2.path(), Precision::F32);
    let mut w = Writer::open(dir2.path()).unwrap();
    let mut tx = w.begin();
    let gone: Vec<u64> = (100..150).map(|i| i * 7 + 3).collect();
    tx.delete_items(&gone).unwrap();
    tx.commit().unwrap();
    let snap3 = Store::open(dir2.path()).unwrap().snapshot();
    let mut scratch = vstore::Scratch::default();
    let q = [Query::ids(KEY, &users[0], &cands, 2_000)];
    let a = snap2.query_batch_with(&q, &mut scratch).remove(0).unwrap();
    let b = snap3.query_batch_with(&q, &mut scratch).remove(0).unwrap();
    let in_cands = gone.iter().filter(|id| cands.contains(id)).count();
    assert!(in_cands > 0);
    assert_eq!(a.scored, b.scored + in_cands);
    assert_eq!(b, snap3.query(&q[0]).unwrap());
}
