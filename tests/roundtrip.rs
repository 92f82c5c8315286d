//! Property test: random schemas (every column type and dtype), random rows
//! -> build -> publish -> open -> every value reads back as written (f16,
//! bf16 and i8 within their documented quantization error).
//!
//! Cases default to 40; set `VSTORE_PROPTEST_CASES` for a longer run.

mod common;

use proptest::prelude::*;
use vstore::{Dtype, ItemBatch, Schema, Store, Writer};

#[derive(Debug, Clone)]
struct Case {
    cats: Vec<u32>,  // defaults of categorical profile columns
    nums: Vec<f32>,  // defaults of numeric profile columns
    stats: Vec<f32>, // defaults of statistics columns
    embs: Vec<(u32, Dtype)>,
    ids: Vec<u64>,
    split: Vec<usize>, // segment boundaries
    cat_vals: Vec<Vec<Option<u32>>>,
    num_vals: Vec<Vec<Option<f32>>>,
    stat_vals: Vec<Vec<Option<f32>>>,
    vecs: Vec<Vec<f32>>,
}

fn dtype() -> impl Strategy<Value = Dtype> {
    prop_oneof![
        Just(Dtype::F32),
        Just(Dtype::F16),
        Just(Dtype::Bf16),
        Just(Dtype::I8)
    ]
}

fn float() -> impl Strategy<Value = f32> {
    prop_oneof![
        -1000.0f32..1000.0,
        -1.0f32..1.0,
        Just(0.0f32),
        -1e-3f32..1e-3,
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(any::<u32>(), 0..3),
        prop::collection::vec(float(), 0..3),
        prop::collection::vec(float(), 0..3),
        prop::collection::vec((1u32..70, dtype()), 1..4),
        prop::collection::hash_set(
            prop_oneof![any::<u64>(), 0u64..1000, Just(u64::MAX), Just(0u64)],
            1..160,
        ),
        prop::collection::vec(0usize..160, 0..3),
    )
        .prop_flat_map(|(cats, nums, stats, embs, ids, split)| {
            let ids: Vec<u64> = ids.into_iter().collect();
            let n = ids.len();
            let opt_u32 = prop::collection::vec(prop::option::weighted(0.8, any::<u32>()), n);
            let opt_f32 = || prop::collection::vec(prop::option::weighted(0.8, float()), n);
            let cat_vals = prop::collection::vec(opt_u32, cats.len());
            let num_vals = prop::collection::vec(opt_f32(), nums.len());
            let stat_vals = prop::collection::vec(opt_f32(), stats.len());
            let vecs: Vec<_> = embs
                .iter()
                .map(|&(d, _)| prop::collection::vec(float(), n * d as usize))
                .collect();
            (
                Just((cats, nums, stats, embs, ids, split)),
                cat_vals,
                num_vals,
                stat_vals,
                vecs,
            )
        })
        .prop_map(
            |((cats, nums, stats, embs, ids, split), cat_vals, num_vals, stat_vals, vecs)| {
                let n = ids.len();
                let mut split: Vec<usize> = split
                    .into_iter()
                    .map(|s| s % n)
                    .filter(|&s| s > 0)
                    .collect();
                split.sort_unstable();
                split.dedup();
                Case {
                    cats,
                    nums,
                    stats,
                    embs,
                    ids,
                    split,
                    cat_vals,
                    num_vals,
                    stat_vals,
                    vecs,
                }
            },
        )
}

fn tolerance(dtype: Dtype, x: f32, row_max: f32) -> f32 {
    match dtype {
        Dtype::F32 => 0.0,
        // Round to nearest: half an ulp, relative 2^-11 (f16) or 2^-8 (bf16);
        // plus half the smallest f16 subnormal for tiny values.
        Dtype::F16 => x.abs() * (2f32).powi(-11) + (2f32).powi(-25),
        Dtype::Bf16 => x.abs() * (2f32).powi(-8),
        // Half a quantization step, scale = max|x| / 127, plus f32 rounding.
        Dtype::I8 => row_max / 254.0 * 1.0001 + 1e-30,
    }
}

fn run(c: &Case) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut schema = Schema::new();
    for (i, d) in c.cats.iter().enumerate() {
        schema = schema.categorical(&format!("cat{i}"), *d);
    }
    for (i, d) in c.nums.iter().enumerate() {
        schema = schema.numeric(&format!("num{i}"), *d);
    }
    for (i, d) in c.stats.iter().enumerate() {
        schema = schema.stat(&format!("stat{i}"), *d);
    }
    for (i, &(d, t)) in c.embs.iter().enumerate() {
        schema = schema.embedding("space", &format!("v{i}"), d, t);
    }
    let mut w = Writer::create(dir.path(), schema).unwrap();
    let mut tx = w.begin();
    let mut bounds = vec![0];
    bounds.extend(&c.split);
    bounds.push(c.ids.len());
    for win in bounds.windows(2) {
        let (a, b) = (win[0], win[1]);
        let mut batch = ItemBatch::new(c.ids[a..b].to_vec());
        for (i, v) in c.cat_vals.iter().enumerate() {
            batch = batch.categorical_opt(&format!("cat{i}"), v[a..b].to_vec());
        }
        for (i, v) in c.num_vals.iter().enumerate() {
            batch = batch.numeric_opt(&format!("num{i}"), v[a..b].to_vec());
        }
        for (i, v) in c.stat_vals.iter().enumerate() {
            batch = batch.stat_opt(&format!("stat{i}"), v[a..b].to_vec());
        }
        for (i, &(d, _)) in c.embs.iter().enumerate() {
            let d = d as usize;
            batch = batch.embedding(&format!("space@v{i}"), c.vecs[i][a * d..b * d].to_vec());
        }
        tx.add_items(batch).unwrap();
    }
    tx.commit().unwrap();
    drop(w);

    let store = Store::open(dir.path()).unwrap();
    let s = store.snapshot();
    prop_assert_eq!(s.len(), c.ids.len());
    prop_assert_eq!(s.segments().len(), bounds.len() - 1);
    prop_assert_eq!(s.ids().collect::<Vec<_>>(), c.ids.clone());
    for (r, &id) in c.ids.iter().enumerate() {
        let at = s.lookup(id).expect("id present");
        let seg = &s.segments()[at.segment];
        for (i, v) in c.cat_vals.iter().enumerate() {
            let col = seg.categorical(&format!("cat{i}")).unwrap();
            prop_assert_eq!(col.is_missing(at.row), v[r].is_none());
            prop_assert_eq!(col.get(at.row), v[r].unwrap_or(c.cats[i]));
        }
        for (i, v) in c.num_vals.iter().enumerate() {
            let col = seg.numeric(&format!("num{i}")).unwrap();
            prop_assert_eq!(col.is_missing(at.row), v[r].is_none());
            prop_assert_eq!(
                col.get(at.row).to_bits(),
                v[r].unwrap_or(c.nums[i]).to_bits()
            );
        }
        for (i, v) in c.stat_vals.iter().enumerate() {
            prop_assert_eq!(s.get_stat(id, &format!("stat{i}")).unwrap(), v[r]);
            let col = seg.stat(&format!("stat{i}")).unwrap();
            prop_assert_eq!(
                col.get(at.row).to_bits(),
                v[r].unwrap_or(c.stats[i]).to_bits()
            );
        }
        for (i, &(d, t)) in c.embs.iter().enumerate() {
            let d = d as usize;
            let want = &c.vecs[i][r * d..(r + 1) * d];
            let col = s.embedding(at.segment, &format!("space@v{i}")).unwrap();
            prop_assert_eq!(col.stride() % 16, 0);
            prop_assert_eq!(col.row_bytes(at.row).as_ptr() as usize % 16, 0);
            let got = col.to_vec(at.row);
            let row_max = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            for j in 0..d {
                let tol = tolerance(t, want[j], row_max);
                prop_assert!(
                    (got[j] - want[j]).abs() <= tol,
                    "{:?} id {} component {}: wrote {} read {} (tolerance {})",
                    t,
                    id,
                    j,
                    want[j],
                    got[j],
                    tol
                );
            }
        }
    }
    s.verify().unwrap();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: common::env_or("VSTORE_PROPTEST_CASES", 40), ..ProptestConfig::default() })]

    #[test]
    fn every_value_reads_back(c in case()) {
        run(&c)?;
    }
}
