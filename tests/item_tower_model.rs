//! Model-based test of item towers (contract v2) under live updates: a
//! store with two embedding versions, `prerank@v42` with an item tower
//! (an item-tower-only bundle published in the first transaction) and
//! `plain@v1` without one, goes through random sequences of add / upsert
//! (each batch giving `prerank@v42` vectors for all its items or for none;
//! `plain@v1` always given; new random profiles with missing values; some
//! batches of more than 64 rows) / statistics update / delete /
//! synchronous compaction / background compaction (started on one
//! snapshot, applied in a later transaction) / tower replacement (the
//! same tower again, or changed weights), one or several per transaction,
//! and reopening the writer. After every commit, and on a store opened
//! afresh at the end (then `verify`), every live item is checked against
//! an in-memory model:
//!
//! * given a `prerank@v42` vector by its last add or upsert: that vector
//!   bit for bit (f32 values with a full significand when the version is
//!   f32, multiples of 1/8 when it is f16) and `is_computed` false;
//! * else the current tower's output for its profile (`category` and
//!   `price`, the column defaults 0 and -1.0 where missing) computed in
//!   f64 by `Bundle::tower_reference`, to 1e-5 relative (max|diff| /
//!   max(max|want|, 1e-3)), plus f16 rounding (2^-11 relative per
//!   component, and half the subnormal step 2^-25) when the version is
//!   stored as f16; `is_computed` true;
//! * `plain@v1`: the given vector exactly, never computed;
//! * profile and `ctr_1d` as last written; `computed_count` of both
//!   versions and `len()` as the model's.
//!
//! Cases default to 32 per test; `VSTORE_PROPTEST_CASES` for a longer run.

mod common;

use std::collections::BTreeMap;

use common::bundle::Bundle;
use proptest::prelude::*;
use vstore::{CompactedSegment, Dtype, Error, ItemBatch, Snapshot, Store, Transaction, Writer};

/// The version with an item tower (the common schema's), and its width.
const TKEY: &str = "prerank@v42";
const TDIM: usize = 5;
/// The version without one, and its width.
const PKEY: &str = "plain@v1";
const PDIM: usize = 3;

#[derive(Debug, Clone)]
struct Entry {
    id: u64,
    cat: Option<u32>,
    price: Option<f32>,
    ctr: Option<f32>,
}

#[derive(Debug, Clone)]
enum Op {
    /// `add_items` of the entries whose ids are not live; `tower` says
    /// whether the batch gives `prerank@v42` vectors.
    Add { items: Vec<Entry>, tower: bool },
    /// `upsert_items` of the entries (live ids and new ones).
    Upsert { items: Vec<Entry>, tower: bool },
    /// `update_stats` (`ctr_1d`) of the live ones of these ids.
    Stats(Vec<u64>),
    /// `delete_items` of the live ones of these ids.
    Delete(Vec<u64>),
    /// `Transaction::compact`.
    Compact,
    /// `apply_compaction` of the pending background compaction, if any.
    FinishBackground,
    /// `add_model` of the item tower with weights shifted by `salt` (0:
    /// the first tower again, which must change nothing).
    ReplaceTower(u8),
}

#[derive(Debug, Clone)]
enum Step {
    /// One transaction applying these operations in order.
    Tx(Vec<Op>),
    /// `start_compaction` on the newest snapshot, run at once.
    StartBackground,
    /// Drop the writer (and any pending background compaction, which
    /// holds its lock) and open it again: later transactions compute with
    /// the tower read back from the store.
    ReopenWriter,
}

/// A few entries on ids 0..40 (so that upserts and deletes often meet
/// live items).
fn entries() -> impl Strategy<Value = Vec<Entry>> {
    entries_of(0..40, 1..12)
}

/// Many entries on ids 0..160: segments (and merged ones) of more than 64
/// rows, so that computed-row bitmaps span several words and the tower
/// computes several blocks.
fn bulk() -> impl Strategy<Value = Vec<Entry>> {
    entries_of(0..160, 40..130)
}

fn entries_of(
    ids: std::ops::Range<u64>,
    n: std::ops::Range<usize>,
) -> impl Strategy<Value = Vec<Entry>> {
    let price = prop_oneof![
        Just(-1.0f32),
        Just(0.0f32),
        Just(1.0f32),
        Just(10.0f32),
        -30.0f32..30.0,
    ];
    let entry = (
        ids,
        // Categories past the tower's table (5 rows) read row 0.
        prop::option::weighted(0.8, 0u32..7),
        prop::option::weighted(0.8, price),
        prop::option::weighted(0.8, 0.0f32..1.0),
    )
        .prop_map(|(id, cat, price, ctr)| Entry {
            id,
            cat,
            price,
            ctr,
        });
    prop::collection::vec(entry, n)
}

fn op() -> impl Strategy<Value = Op> {
    let ids = || prop::collection::vec(0u64..160, 1..40);
    prop_oneof![
        4 => (entries(), any::<bool>()).prop_map(|(items, tower)| Op::Add { items, tower }),
        4 => (entries(), any::<bool>()).prop_map(|(items, tower)| Op::Upsert { items, tower }),
        1 => (bulk(), any::<bool>()).prop_map(|(items, tower)| Op::Add { items, tower }),
        1 => (bulk(), any::<bool>()).prop_map(|(items, tower)| Op::Upsert { items, tower }),
        2 => ids().prop_map(Op::Stats),
        3 => ids().prop_map(Op::Delete),
        2 => Just(Op::Compact),
        2 => Just(Op::FinishBackground),
        1 => prop_oneof![Just(0u8), 1u8..4].prop_map(Op::ReplaceTower),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => op().prop_map(|o| Step::Tx(vec![o])),
        2 => prop::collection::vec(op(), 2..5).prop_map(Step::Tx),
        2 => Just(Step::StartBackground),
        1 => Just(Step::ReopenWriter),
    ]
}

/// A deterministic offline vector of `dim` values for `(id, gen, salt)`:
/// multiples of 1/8 in [-4, 4) if `grid` (exact in f16), else f32 values
/// with a full 24-bit significand.
fn offline(id: u64, gen: u64, salt: u64, dim: usize, grid: bool) -> Vec<f32> {
    (0..dim as u64)
        .map(|j| {
            let mut x = id
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(gen.wrapping_mul(0xbf58_476d_1ce4_e5b9))
                .wrapping_add(salt.wrapping_mul(0x94d0_49bb_1331_11eb))
                .wrapping_add(j);
            x ^= x >> 31;
            x = x.wrapping_mul(0xd6e8_feb8_6659_fd93);
            x ^= x >> 32;
            if grid {
                ((x >> 58) as f32 - 32.0) / 8.0
            } else {
                (x >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0
            }
        })
        .collect()
}

/// The item tower bundle of `prerank@v42`: `Bundle::tower_only`'s weights,
/// shifted by multiples of 1/64 chosen by `salt` (0: unchanged).
fn tower_bundle(salt: u8) -> Bundle {
    let mut b = Bundle::tower_only("prerank", "v42", TDIM);
    if salt != 0 {
        for (_, vals) in b.tensors.values_mut() {
            for (i, v) in vals.iter_mut().enumerate() {
                *v += ((i * 3 + salt as usize * 5) % 7) as f32 / 64.0 - 3.0 / 64.0;
            }
        }
    }
    b
}

#[derive(Debug, Clone)]
struct Item {
    cat: Option<u32>,
    price: Option<f32>,
    ctr: Option<f32>,
    /// The offline `prerank@v42` vector, if the last add or upsert gave one.
    tower: Option<Vec<f32>>,
    plain: Vec<f32>,
}

/// Everything but the writer (which a transaction borrows).
struct State {
    tower_dtype: Dtype,
    model: BTreeMap<u64, Item>,
    bundle: Bundle,
    /// The pending background compaction, and whether a compaction was
    /// published since it started (its apply may then be refused).
    pending: Option<(CompactedSegment, bool)>,
    gen: u64,
}

/// Adds (`replace` false) or upserts `items` in `tx` and the model.
fn put(
    tx: &mut Transaction<'_>,
    st: &mut BTreeMap<u64, Item>,
    grid: bool,
    gen: u64,
    items: &[Entry],
    tower: bool,
    replace: bool,
) -> Result<(), TestCaseError> {
    let mut seen = std::collections::HashSet::new();
    let items: Vec<&Entry> = items
        .iter()
        .filter(|e| seen.insert(e.id) && (replace || !st.contains_key(&e.id)))
        .collect();
    if items.is_empty() {
        return Ok(());
    }
    let ids: Vec<u64> = items.iter().map(|e| e.id).collect();
    let mut b = ItemBatch::new(ids.clone())
        .categorical_opt("category", items.iter().map(|e| e.cat).collect())
        .numeric_opt("price", items.iter().map(|e| e.price).collect())
        .stat_opt("ctr_1d", items.iter().map(|e| e.ctr).collect())
        .embedding(
            PKEY,
            ids.iter()
                .flat_map(|&i| offline(i, gen, 1, PDIM, false))
                .collect(),
        );
    if tower {
        b = b.embedding(
            TKEY,
            ids.iter()
                .flat_map(|&i| offline(i, gen, 2, TDIM, grid))
                .collect(),
        );
    }
    let r = if replace {
        tx.upsert_items(b)
    } else {
        tx.add_items(b)
    };
    r.map_err(|e| TestCaseError::fail(format!("put of {ids:?}: {e}")))?;
    for e in items {
        st.insert(
            e.id,
            Item {
                cat: e.cat,
                price: e.price,
                ctr: e.ctr,
                tower: tower.then(|| offline(e.id, gen, 2, TDIM, grid)),
                plain: offline(e.id, gen, 1, PDIM, false),
            },
        );
    }
    Ok(())
}

fn live(model: &BTreeMap<u64, Item>, ids: &[u64]) -> Vec<u64> {
    let mut v: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|i| model.contains_key(i))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn apply(tx: &mut Transaction<'_>, s: &mut State, op: &Op) -> Result<(), TestCaseError> {
    s.gen += 1;
    let gen = s.gen;
    let grid = s.tower_dtype != Dtype::F32;
    match op {
        Op::Add { items, tower } => put(tx, &mut s.model, grid, gen, items, *tower, false)?,
        Op::Upsert { items, tower } => put(tx, &mut s.model, grid, gen, items, *tower, true)?,
        Op::Stats(ids) => {
            let ids = live(&s.model, ids);
            if !ids.is_empty() {
                let vals: Vec<f32> = ids.iter().map(|&i| (i + gen) as f32 / 64.0).collect();
                tx.update_stats(ItemBatch::new(ids.clone()).stat("ctr_1d", vals.clone()))
                    .map_err(|e| TestCaseError::fail(format!("update_stats: {e}")))?;
                for (i, v) in ids.iter().zip(vals) {
                    s.model.get_mut(i).unwrap().ctr = Some(v);
                }
            }
        }
        Op::Delete(ids) => {
            let ids = live(&s.model, ids);
            tx.delete_items(&ids)
                .map_err(|e| TestCaseError::fail(format!("delete_items: {e}")))?;
            for i in &ids {
                s.model.remove(i);
            }
        }
        Op::Compact => {
            let did = tx
                .compact()
                .map_err(|e| TestCaseError::fail(format!("compact: {e}")))?;
            if did {
                if let Some((_, stale)) = &mut s.pending {
                    *stale = true;
                }
            }
        }
        Op::FinishBackground => {
            if let Some((done, stale)) = s.pending.take() {
                match tx.apply_compaction(done) {
                    Ok(_) => {}
                    Err(Error::CompactionConflict { .. }) if stale => {}
                    Err(e) => {
                        return Err(TestCaseError::fail(format!(
                            "apply_compaction (a compaction since: {stale}): {e}"
                        )))
                    }
                }
            }
        }
        Op::ReplaceTower(salt) => {
            let b = tower_bundle(*salt);
            let (j, wts) = b.bytes();
            let key = tx
                .add_model(&j, &wts)
                .map_err(|e| TestCaseError::fail(format!("add_model: {e}")))?;
            prop_assert_eq!(key, TKEY);
            s.bundle = b;
        }
    }
    Ok(())
}

/// Whether `got` is within tolerance of `want` (see the module text);
/// also the relative error max|diff| / max(max|want|, 1e-3).
fn close(got: &[f32], want: &[f64], f16: bool) -> (bool, f64) {
    let scale = want.iter().fold(0f64, |m, w| m.max(w.abs())).max(1e-3);
    let mut ok = got.len() == want.len();
    let mut worst = 0f64;
    for (g, w) in got.iter().zip(want) {
        let d = (*g as f64 - w).abs();
        worst = worst.max(d);
        let mut allowed = 1e-5 * scale;
        if f16 {
            allowed += w.abs() * 2f64.powi(-11) + 2f64.powi(-25);
        }
        ok &= d <= allowed;
    }
    (ok, worst / scale)
}

/// Checks `snap` against the model.
fn check(
    snap: &Snapshot,
    model: &BTreeMap<u64, Item>,
    bundle: &Bundle,
    tower_dtype: Dtype,
    ctx: &str,
) -> Result<(), TestCaseError> {
    let f16 = tower_dtype == Dtype::F16;
    prop_assert_eq!(snap.len(), model.len(), "{}: len", ctx);
    let mut ids: Vec<u64> = snap.ids().collect();
    ids.sort_unstable();
    prop_assert_eq!(
        ids,
        model.keys().copied().collect::<Vec<_>>(),
        "{}: ids",
        ctx
    );
    let fail = |what: String| TestCaseError::fail(format!("{ctx}: {what}"));
    for (&id, it) in model {
        prop_assert_eq!(
            snap.get_categorical(id, "category")
                .map_err(|e| fail(e.to_string()))?,
            it.cat,
            "{}: category of {}",
            ctx,
            id
        );
        let price = snap
            .get_numeric(id, "price")
            .map_err(|e| fail(e.to_string()))?;
        prop_assert_eq!(
            price.map(f32::to_bits),
            it.price.map(f32::to_bits),
            "{}: price of {}",
            ctx,
            id
        );
        let ctr = snap
            .get_stat(id, "ctr_1d")
            .map_err(|e| fail(e.to_string()))?;
        prop_assert_eq!(
            ctr.map(f32::to_bits),
            it.ctr.map(f32::to_bits),
            "{}: ctr_1d of {}",
            ctx,
            id
        );

        let got = snap
            .get_embedding(id, TKEY)
            .map_err(|e| fail(format!("{TKEY} of {id}: {e}")))?;
        let computed = snap
            .is_computed(id, TKEY)
            .map_err(|e| fail(format!("is_computed({id}, {TKEY}): {e}")))?;
        match &it.tower {
            Some(v) => {
                prop_assert_eq!(
                    got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    "{}: offline {} of {} not kept: {:?} vs {:?}",
                    ctx,
                    TKEY,
                    id,
                    got,
                    v
                );
                prop_assert!(
                    !computed,
                    "{}: {} given a {} vector, but computed",
                    ctx,
                    id,
                    TKEY
                );
            }
            None => {
                let want = bundle.tower_reference(it.cat.unwrap_or(0), it.price.unwrap_or(-1.0));
                let (ok, err) = close(&got, &want, f16);
                prop_assert!(
                    ok,
                    "{}: computed {} of {} (category {:?}, price {:?}): {:?} vs {:?} (relative error {:e})",
                    ctx,
                    TKEY,
                    id,
                    it.cat,
                    it.price,
                    got,
                    want,
                    err
                );
                prop_assert!(
                    computed,
                    "{}: {} given no {} vector, but not computed",
                    ctx,
                    id,
                    TKEY
                );
            }
        }
        let got = snap
            .get_embedding(id, PKEY)
            .map_err(|e| fail(format!("{PKEY} of {id}: {e}")))?;
        prop_assert_eq!(
            got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            it.plain.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "{}: {} of {}",
            ctx,
            PKEY,
            id
        );
        prop_assert!(
            !snap
                .is_computed(id, PKEY)
                .map_err(|e| fail(e.to_string()))?,
            "{}: {} of {} computed",
            ctx,
            PKEY,
            id
        );
    }
    let want = model.values().filter(|it| it.tower.is_none()).count() as u64;
    prop_assert_eq!(
        snap.computed_count(TKEY).map_err(|e| fail(e.to_string()))?,
        want,
        "{}: computed_count({})",
        ctx,
        TKEY
    );
    prop_assert_eq!(
        snap.computed_count(PKEY).map_err(|e| fail(e.to_string()))?,
        0,
        "{}: computed_count({})",
        ctx,
        PKEY
    );
    Ok(())
}

fn run(
    tower_dtype: Dtype,
    first: &[Entry],
    first_tower: bool,
    steps: &[Step],
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let schema =
        common::schema(TDIM as u32, tower_dtype).embedding("plain", "v1", PDIM as u32, Dtype::F32);
    let mut w = Writer::create(dir.path(), schema).unwrap();
    let mut s = State {
        tower_dtype,
        model: BTreeMap::new(),
        bundle: tower_bundle(0),
        pending: None,
        gen: 0,
    };
    // Transaction 1: the tower, then items.
    {
        let mut tx = w.begin();
        let (j, wts) = s.bundle.bytes();
        prop_assert_eq!(tx.add_model(&j, &wts).unwrap(), TKEY);
        let mut st = std::mem::take(&mut s.model);
        let grid = tower_dtype != Dtype::F32;
        put(&mut tx, &mut st, grid, 0, first, first_tower, false)?;
        s.model = st;
        let snap = tx
            .commit()
            .map_err(|e| TestCaseError::fail(format!("commit 1: {e}")))?;
        check(
            &snap,
            &s.model,
            &s.bundle,
            tower_dtype,
            "after transaction 1",
        )?;
    }
    for (n, step) in steps.iter().enumerate() {
        match step {
            Step::StartBackground => {
                if s.pending.is_none() {
                    if let Some(job) = w.start_compaction().unwrap() {
                        s.pending = Some((job.run().unwrap(), false));
                    }
                }
            }
            Step::ReopenWriter => {
                s.pending = None;
                drop(w);
                w = Writer::open(dir.path())
                    .map_err(|e| TestCaseError::fail(format!("Writer::open: {e}")))?;
            }
            Step::Tx(ops) => {
                let mut tx = w.begin();
                for op in ops {
                    apply(&mut tx, &mut s, op)?;
                }
                let snap = tx
                    .commit()
                    .map_err(|e| TestCaseError::fail(format!("commit of step {n} {ops:?}: {e}")))?;
                check(
                    &snap,
                    &s.model,
                    &s.bundle,
                    tower_dtype,
                    &format!("after step {n} {ops:?}"),
                )?;
            }
        }
    }
    drop(s.pending.take());
    let store = Store::open(dir.path()).unwrap();
    let snap = store.snapshot();
    check(&snap, &s.model, &s.bundle, tower_dtype, "reopened")?;
    snap.verify()
        .map_err(|e| TestCaseError::fail(format!("verify: {e}")))?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: common::env_or("VSTORE_PROPTEST_CASES", 32),
        ..ProptestConfig::default()
    })]

    #[test]
    fn item_tower_vectors_match_model_f32(
        first in entries(),
        first_tower in any::<bool>(),
        steps in prop::collection::vec(step(), 1..16),
    ) {
        run(Dtype::F32, &first, first_tower, &steps)?;
    }

    /// The tower version stored as f16: offline vectors are grid values
    /// (exact), computed ones are rounded to f16.
    #[test]
    fn item_tower_vectors_match_model_f16(
        first in entries(),
        first_tower in any::<bool>(),
        steps in prop::collection::vec(step(), 1..16),
    ) {
        run(Dtype::F16, &first, first_tower, &steps)?;
    }

    /// Every sequence starts a background compaction after some steps and
    /// applies it after some more (f32 or f16), so that its rebase meets
    /// upserts, deletes, statistics updates, competing compactions and
    /// tower changes made meanwhile.
    #[test]
    fn item_tower_vectors_survive_background_compaction(
        f16 in any::<bool>(),
        first in entries(),
        first_tower in any::<bool>(),
        before in prop::collection::vec(step(), 0..5),
        during in prop::collection::vec(step(), 0..5),
        after in prop::collection::vec(step(), 0..3),
    ) {
        let mut steps = before;
        steps.push(Step::StartBackground);
        steps.extend(during);
        steps.push(Step::Tx(vec![Op::FinishBackground]));
        steps.extend(after);
        run(if f16 { Dtype::F16 } else { Dtype::F32 }, &first, first_tower, &steps)?;
    }
}
