//! Model-based test of live updates: random sequences of add / upsert /
//! delete / stats refresh / compact / add-embedding / drop-embedding / gc and
//! background compactions (started on one snapshot, applied several
//! publishes later), each published, checked after every publish against
//! an in-memory model with full-scan and candidate queries and per-item
//! reads.
//!
//! Cases default to 24; `VSTORE_PROPTEST_CASES` for a longer run.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;
use vstore::{
    CompactedSegment, Compaction, Dtype, EmbeddingDef, Error, ItemBatch, Query, Retention, Schema,
    Store, Writer,
};

#[derive(Debug, Clone)]
enum Op {
    Add(Vec<u64>),
    Upsert(Vec<u64>),
    Delete(Vec<u64>),
    Refresh(Vec<u64>),
    Compact,
    CompactIf,
    AddEmbedding(Dtype),
    DropOldest,
    /// Add a version dropped earlier under its old name, with other
    /// vectors: refused, naming the snapshot that dropped it (a no-op
    /// when none was dropped).
    ReAddDropped,
    /// Drop the newest version and add it again, same key, new vectors
    /// (in one publish; the dropped name is refused until forgotten).
    ReplaceNewest(Dtype),
    /// Start a background compaction of the newest snapshot (its merge runs
    /// at once: it reads only that snapshot, so later publishes cannot
    /// change what it writes).
    StartBackground,
    /// Publish the pending background compaction.
    FinishBackground,
    /// Collect everything but the newest snapshot.
    Gc,
}

fn op() -> impl Strategy<Value = Op> {
    let ids = || prop::collection::vec(0u64..120, 1..25);
    prop_oneof![
        4 => ids().prop_map(Op::Add),
        3 => ids().prop_map(Op::Upsert),
        3 => ids().prop_map(Op::Delete),
        2 => ids().prop_map(Op::Refresh),
        1 => Just(Op::Compact),
        1 => Just(Op::CompactIf),
        1 => prop_oneof![Just(Dtype::F32), Just(Dtype::F16), Just(Dtype::Bf16)].prop_map(Op::AddEmbedding),
        1 => Just(Op::DropOldest),
        1 => Just(Op::ReAddDropped),
        1 => prop_oneof![Just(Dtype::F32), Just(Dtype::F16)].prop_map(Op::ReplaceNewest),
        2 => Just(Op::StartBackground),
        2 => Just(Op::FinishBackground),
        1 => Just(Op::Gc),
    ]
}

const DIM: usize = 4;

/// Grid values (multiples of 1/8 in [-2, 2)): exact in every float dtype.
fn vec_for(id: u64, gen: u64, salt: u64) -> Vec<f32> {
    (0..DIM as u64)
        .map(|j| (((id * 7 + j * 3 + gen * 11 + salt * 5) % 32) as f32 - 16.0) / 8.0)
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
struct Item {
    cat: u32,
    ctr: f32,
    vecs: BTreeMap<String, Vec<f32>>,
}

/// Adds embedding version `s@version` of `dtype` for every item of `model`
/// in `tx` (values from `vec_for(id, gen, salt)`), and records it in `model`.
fn add_version(
    tx: &mut vstore::Transaction<'_>,
    model: &mut BTreeMap<u64, Item>,
    version: &str,
    dtype: Dtype,
    gen: u64,
    salt: u64,
) {
    let ids: Vec<u64> = model.keys().copied().collect();
    let v: Vec<f32> = ids.iter().flat_map(|&i| vec_for(i, gen, salt)).collect();
    tx.add_embedding(EmbeddingDef::new("s", version, DIM as u32, dtype), &ids, &v)
        .unwrap();
    let key = format!("s@{version}");
    for (&i, item) in model.iter_mut() {
        item.vecs.insert(key.clone(), vec_for(i, gen, salt));
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let schema = Schema::new()
        .categorical("cat", 0)
        .stat("ctr", 0.0)
        .embedding("s", "v0", DIM as u32, Dtype::F32);
    let mut w = Writer::create(dir.path(), schema).unwrap();
    w.set_retention(Retention {
        keep_last: 1,
        grace: Duration::ZERO,
    });
    // The pending background compaction and the segments it merges.
    let mut pending: Option<(CompactedSegment, Vec<u64>)> = None;
    // Segments merged by a published compaction.
    let mut merged: HashSet<u64> = HashSet::new();
    let mut model: BTreeMap<u64, Item> = BTreeMap::new();
    let mut versions: Vec<String> = vec!["s@v0".into()];
    // The versions dropped so far, with the snapshot that dropped each.
    let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
    let mut next_version = 1;
    let mut store: Option<Store> = None;
    for (gen, op) in ops.iter().enumerate() {
        let gen = gen as u64 + 1;
        match op {
            Op::StartBackground => {
                let before: Vec<u64> = w
                    .snapshot()
                    .map(|s| s.segments().iter().map(|g| g.id()).collect())
                    .unwrap_or_default();
                if let Some(job) = w.start_compaction().unwrap() {
                    pending = Some((job.run().unwrap(), before));
                }
                continue;
            }
            Op::Gc => {
                w.gc().unwrap();
                continue;
            }
            _ => {}
        }
        let segments_before: Vec<u64> = w
            .snapshot()
            .map(|s| s.segments().iter().map(|g| g.id()).collect())
            .unwrap_or_default();
        let mut tx = w.begin();
        let dedup = |ids: &Vec<u64>| {
            let mut v = ids.clone();
            v.sort_unstable();
            v.dedup();
            v
        };
        let batch_for = |ids: &[u64], versions: &[String]| {
            let mut b = ItemBatch::new(ids.to_vec())
                .categorical("cat", ids.iter().map(|&i| ((i + gen) % 5) as u32).collect())
                .stat(
                    "ctr",
                    ids.iter()
                        .map(|&i| ((i * gen) % 100) as f32 / 100.0)
                        .collect(),
                );
            for (vi, key) in versions.iter().enumerate() {
                b = b.embedding(
                    key,
                    ids.iter()
                        .flat_map(|&i| vec_for(i, gen, vi as u64))
                        .collect(),
                );
            }
            b
        };
        let put = |model: &mut BTreeMap<u64, Item>, ids: &[u64], versions: &[String]| {
            for &i in ids {
                let vecs = versions
                    .iter()
                    .enumerate()
                    .map(|(vi, k)| (k.clone(), vec_for(i, gen, vi as u64)))
                    .collect();
                model.insert(
                    i,
                    Item {
                        cat: ((i + gen) % 5) as u32,
                        ctr: ((i * gen) % 100) as f32 / 100.0,
                        vecs,
                    },
                );
            }
        };
        match op {
            Op::Add(ids) => {
                let ids: Vec<u64> = dedup(ids)
                    .into_iter()
                    .filter(|i| !model.contains_key(i))
                    .collect();
                tx.add_items(batch_for(&ids, &versions)).unwrap();
                put(&mut model, &ids, &versions);
            }
            Op::Upsert(ids) => {
                let ids = dedup(ids);
                tx.upsert_items(batch_for(&ids, &versions)).unwrap();
                put(&mut model, &ids, &versions);
            }
            Op::Delete(ids) => {
                let ids: Vec<u64> = dedup(ids)
                    .into_iter()
                    .filter(|i| model.contains_key(i))
                    .collect();
                tx.delete_items(&ids).unwrap();
                for i in &ids {
                    model.remove(i);
                }
            }
            Op::Refresh(ids) => {
                let ids: Vec<u64> = dedup(ids)
                    .into_iter()
                    .filter(|i| model.contains_key(i))
                    .collect();
                let vals: Vec<f32> = ids.iter().map(|&i| (i % 7) as f32 + gen as f32).collect();
                tx.update_stats(ItemBatch::new(ids.clone()).stat("ctr", vals.clone()))
                    .unwrap();
                for (i, v) in ids.iter().zip(vals) {
                    model.get_mut(i).unwrap().ctr = v;
                }
            }
            Op::Compact => {
                if tx.compact().unwrap() {
                    merged.extend(&segments_before);
                }
            }
            Op::CompactIf => {
                let did = tx
                    .compact_if(&Compaction {
                        max_segments: 3,
                        max_dead_fraction: 0.3,
                    })
                    .unwrap();
                if did {
                    merged.extend(&segments_before);
                }
            }
            Op::FinishBackground => {
                if let Some((done, sources)) = pending.take() {
                    let stale = sources.iter().find(|s| merged.contains(s));
                    match (tx.apply_compaction(done), stale) {
                        (Ok(_), None) => merged.extend(&sources),
                        (Err(Error::CompactionConflict { segment, .. }), Some(&s)) => {
                            prop_assert!(merged.contains(&segment), "{} vs {}", segment, s)
                        }
                        (r, stale) => {
                            return Err(TestCaseError::fail(format!(
                                "apply: {r:?}, stale source {stale:?}"
                            )))
                        }
                    }
                }
            }
            Op::ReplaceNewest(dtype) => {
                let key = versions.last().unwrap().clone();
                let version = key.strip_prefix("s@").unwrap();
                tx.drop_embedding(&key).unwrap();
                let def = EmbeddingDef::new("s", version, DIM as u32, *dtype);
                let refused = tx.add_embedding(def, &[], &[]).unwrap_err();
                prop_assert!(
                    refused.to_string().contains("was dropped in snapshot"),
                    "{}",
                    refused
                );
                prop_assert!(tx.forget_dropped_version(&key).unwrap());
                add_version(&mut tx, &mut model, version, *dtype, gen, 500 + gen);
            }
            Op::StartBackground | Op::Gc => unreachable!("handled above"),
            Op::AddEmbedding(dtype) => {
                let version = format!("v{next_version}");
                add_version(
                    &mut tx,
                    &mut model,
                    &version,
                    *dtype,
                    gen,
                    100 + next_version,
                );
                versions.push(format!("s@{version}"));
                next_version += 1;
            }
            Op::ReAddDropped => {
                if let Some((key, &n)) = dropped.iter().next() {
                    let version = key.strip_prefix("s@").unwrap();
                    let ids: Vec<u64> = model.keys().copied().collect();
                    let v: Vec<f32> = ids.iter().flat_map(|&i| vec_for(i, gen, 900)).collect();
                    let def = EmbeddingDef::new("s", version, DIM as u32, Dtype::F32);
                    let e = tx.add_embedding(def, &ids, &v).unwrap_err().to_string();
                    prop_assert!(
                        e.contains(&format!("{key} was dropped in snapshot {n}")),
                        "{}",
                        e
                    );
                }
            }
            Op::DropOldest => {
                if versions.len() > 1 {
                    let key = versions.remove(0);
                    tx.drop_embedding(&key).unwrap();
                    dropped.insert(key.clone(), tx.number());
                    for it in model.values_mut() {
                        it.vecs.remove(&key);
                    }
                }
            }
        }
        let snap = tx.commit().unwrap();
        match &mut store {
            Some(s) => {
                s.refresh().unwrap();
            }
            None => store = Some(Store::open(dir.path()).unwrap()),
        }
        let s = store.as_ref().unwrap().snapshot();
        prop_assert_eq!(s.number(), snap.number());
        // Exactly the model's items.
        let mut ids: Vec<u64> = s.ids().collect();
        ids.sort_unstable();
        prop_assert_eq!(
            &ids,
            &model.keys().copied().collect::<Vec<_>>(),
            "after {:?}",
            op
        );
        prop_assert_eq!(s.embedding_keys(), versions.clone());
        prop_assert_eq!(
            s.dropped_versions().unwrap(),
            dropped.clone().into_iter().collect::<Vec<_>>()
        );
        for (&id, it) in &model {
            prop_assert_eq!(s.get_categorical(id, "cat").unwrap(), Some(it.cat));
            prop_assert_eq!(s.get_stat(id, "ctr").unwrap(), Some(it.ctr));
            for (k, v) in &it.vecs {
                prop_assert_eq!(
                    &s.get_embedding(id, k).unwrap(),
                    v,
                    "id {} {} after {:?}",
                    id,
                    k,
                    op
                );
            }
        }
        // Queries: full scan and candidates (with deleted and unknown ids).
        let user = [1.0f32, -0.5, 0.25, 2.0];
        for key in &versions {
            let mut want: Vec<(f32, u64)> = model
                .iter()
                .map(|(&id, it)| {
                    (
                        it.vecs[key]
                            .iter()
                            .zip(&user)
                            .map(|(a, b)| a * b)
                            .sum::<f32>(),
                        id,
                    )
                })
                .collect();
            want.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
            want.truncate(10);
            let r = s.query(&Query::full_scan(key, &user, 10)).unwrap();
            let got: Vec<(f32, u64)> = r.hits.iter().map(|h| (h.score, h.id)).collect();
            prop_assert_eq!(&got, &want, "full scan {} after {:?}", key, op);
            let cands: Vec<u64> = (0..130).collect();
            let r = s.query(&Query::ids(key, &user, &cands, 10)).unwrap();
            let got: Vec<(f32, u64)> = r.hits.iter().map(|h| (h.score, h.id)).collect();
            prop_assert_eq!(&got, &want, "candidates {} after {:?}", key, op);
            let missing: Vec<u64> = cands
                .iter()
                .copied()
                .filter(|i| !model.contains_key(i))
                .collect();
            prop_assert_eq!(&r.not_found, &missing);
        }
        s.verify().unwrap();
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: common::env_or("VSTORE_PROPTEST_CASES", 24), ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model_after_every_publish(ops in prop::collection::vec(op(), 1..14)) {
        run(&ops)?;
    }

    /// Every sequence starts a background compaction after some publishes
    /// and applies it after some more, so that each rebase path (deletes,
    /// upserts, refreshes, versions added or dropped, a competing
    /// compaction, gc while the job's files are unreferenced) is met often.
    #[test]
    fn background_compaction_matches_model(
        before in prop::collection::vec(op(), 1..6),
        during in prop::collection::vec(op(), 0..6),
        after in prop::collection::vec(op(), 0..3),
    ) {
        let mut ops = before;
        ops.push(Op::StartBackground);
        ops.extend(during);
        ops.push(Op::FinishBackground);
        ops.extend(after);
        run(&ops)?;
    }
}
