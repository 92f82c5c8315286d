//! Shared by `benches/query.rs` and `examples/peer_bench.rs`: the benchmark
//! stores (built once under `target/vstore-bench/`), candidate sets, and
//! timing helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use vstore::{Dtype, ItemBatch, Precision, Retention, Schema, Store, Writer};

/// Embedding versions of a benchmark store: one per dtype, same vectors.
pub const DTYPES: [(Dtype, &str); 4] = [
    (Dtype::F32, "prerank@f32"),
    (Dtype::F16, "prerank@f16"),
    (Dtype::Bf16, "prerank@bf16"),
    (Dtype::I8, "prerank@i8"),
];

/// xorshift64*: deterministic pseudo-random numbers.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// The id of row `i` (spread over the u64 range, not sorted).
pub fn id_of(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5bd1_e995
}

/// The vector of row `i`.
pub fn vector(i: u64, dim: usize, out: &mut Vec<f32>) {
    let mut r = Rng(i.wrapping_mul(0xD6E8_FEB8_6659_FD93) | 1);
    out.extend((0..dim).map(|_| r.unit()));
}

pub fn store_dir(rows: usize, dim: usize) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/vstore-bench")
        .join(format!("query-{rows}-d{dim}"))
}

/// Whether every id index file in `dir` was written by this build's format
/// version (a store left by an older build still opens, but would measure
/// the old layout).
fn written_by_this_format(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|d| {
        d.filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".vidx"))
            .all(|e| {
                let mut head = [0u8; 12];
                std::fs::File::open(e.path())
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
                    .is_ok_and(|_| head[8..] == vstore::FORMAT_VERSION.to_le_bytes())
            })
    })
}

/// Opens (building it the first time) a store of `rows` items with one
/// embedding version per dtype at dimension `dim`, and a categorical column.
pub fn store(rows: usize, dim: usize) -> Store {
    let dir = store_dir(rows, dim);
    if let Ok(s) = Store::open(&dir) {
        if s.snapshot().len() == rows && written_by_this_format(&dir) {
            return s;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let t = Instant::now();
    let mut schema = Schema::new().categorical("category", 0);
    for (dtype, key) in DTYPES {
        let (space, version) = key.split_once('@').unwrap();
        schema = schema.embedding(space, version, dim as u32, dtype);
    }
    let mut w = Writer::create(&dir, schema).unwrap();
    let ids: Vec<u64> = (0..rows as u64).map(id_of).collect();
    let mut vecs = Vec::with_capacity(rows * dim);
    for i in 0..rows as u64 {
        vector(i, dim, &mut vecs);
    }
    let mut batch = ItemBatch::new(ids.clone())
        .categorical("category", (0..rows as u32).map(|i| i % 100).collect());
    for (_, key) in DTYPES {
        batch = batch.embedding(key, vecs.clone());
    }
    let mut tx = w.begin();
    tx.add_items(batch).unwrap();
    tx.commit().unwrap();
    eprintln!("built {rows}x{dim} benchmark store in {:.1?}", t.elapsed());
    Store::open(&dir).unwrap()
}

/// `count` candidate sets of `n` distinct random rows: (ids, row indices).
pub fn candidate_sets(rows: usize, n: usize, count: usize, seed: u64) -> Vec<(Vec<u64>, Vec<u64>)> {
    let mut r = Rng(seed | 1);
    (0..count)
        .map(|_| {
            let mut seen = std::collections::HashSet::with_capacity(n);
            let mut rws = Vec::with_capacity(n);
            while rws.len() < n {
                let row = r.next() % rows as u64;
                if seen.insert(row) {
                    rws.push(row);
                }
            }
            (rws.iter().map(|&i| id_of(i)).collect(), rws)
        })
        .collect()
}

/// User vectors.
pub fn users(count: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut r = Rng(seed | 1);
    (0..count)
        .map(|_| (0..dim).map(|_| r.unit()).collect())
        .collect()
}

/// Median of `xs` (seconds).
pub fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

/// Writes a `.npy` file (format 1.0, data 64-byte aligned).
pub fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) {
    use std::io::Write;
    let shape_s = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(b"\x93NUMPY\x01\x00").unwrap();
    f.write_all(&(header.len() as u16).to_le_bytes()).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    f.write_all(data).unwrap();
}

/// Key of the three-tower benchmark store's embedding and bundle.
pub const TT_KEY: &str = "prerank@v1";
/// Bucket boundaries of `impressions_7d` in the benchmark bundle.
pub const TT_BUCKETS: [f32; 3] = [10.0, 100.0, 1000.0];
/// Vocabulary of `category` (values are skewed: a few are most items).
pub const TT_VOCAB: u32 = 1000;

/// The benchmark bundle: [`vstore::ExampleBundle`] for [`TT_KEY`] with a
/// [`TT_VOCAB`]-row category table and [`TT_BUCKETS`]. Returns
/// (model.json, weights.safetensors).
pub fn tt_bundle() -> (Vec<u8>, Vec<u8>) {
    vstore::ExampleBundle {
        space: "prerank".into(),
        version: "v1".into(),
        categories: TT_VOCAB,
        impression_buckets: TT_BUCKETS,
    }
    .files()
}

/// A fingerprint of a bundle's weights (FNV-1a), kept in the benchmark
/// store's metadata so a store built with other weights is rebuilt rather
/// than compared against this bundle.
fn bundle_fingerprint(weights: &[u8]) -> String {
    let h = weights.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016x}")
}

/// Item `i`'s (category, ctr_1d, impressions_7d): categories Zipf-like
/// skewed, rates and counts spread over the bucket boundaries.
pub fn tt_item(i: u64) -> (u32, f32, f32) {
    let mut r = Rng(i.wrapping_mul(0xA24B_AED4_963E_E407) | 1);
    let u = (r.next() >> 11) as f64 / (1u64 << 53) as f64;
    let cat = ((TT_VOCAB as f64).powf(u) - 1.0) as u32; // log-uniform: skewed to small ids
    let ctr = ((r.next() >> 40) as f32 / (1u64 << 24) as f32) * 0.2;
    let imp = 10f32.powf((r.next() >> 40) as f32 / (1u64 << 24) as f32 * 4.0);
    (cat.min(TT_VOCAB - 1), ctr, imp)
}

/// User-side values of query `q` of the three-tower benchmark:
/// `user_stats` (8 values) and `user_category_ctr` for categories 0..50.
pub fn tt_user_values(q: u64) -> (Vec<f32>, Vec<f32>) {
    let mut r = Rng(q.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let dense = (0..8).map(|_| r.unit()).collect();
    let by_cat = (0..50).map(|_| r.unit().abs() * 0.2).collect();
    (dense, by_cat)
}

/// [`tt_user_values`] as query inputs.
pub fn tt_inputs(q: u64) -> vstore::UserInputs {
    let (dense, by_cat) = tt_user_values(q);
    vstore::UserInputs::new()
        .dense("user_stats", dense)
        .by_item(
            "user_category_ctr",
            by_cat
                .into_iter()
                .enumerate()
                .map(|(c, v)| (c as u32, vec![v])),
        )
}

/// A bundle of the three-tower benchmark: its name, the store directory
/// it is benchmarked in (`target/vstore-bench/{dir}-{rows}[-pre-DTYPE]`,
/// the same items in each), and its files.
#[derive(Clone, Copy)]
pub struct TtModel {
    /// The bundle's name (`name` in model.json; `"default"` for v1).
    pub name: &'static str,
    /// Prefix of the store directory.
    pub dir: &'static str,
    /// (model.json, weights.safetensors).
    pub files: fn() -> (Vec<u8>, Vec<u8>),
}

/// [`tt_bundle`], the contract v1 example model.
pub const TT_V1: TtModel = TtModel {
    name: "default",
    dir: "three-tower",
    files: tt_bundle,
};

/// [`mmoe_bundle`], the contract v2 MMoE model.
pub const TT_MMOE: TtModel = TtModel {
    name: MMOE_NAME,
    dir: "mmoe",
    files: mmoe_bundle,
};

/// Name of [`mmoe_bundle`].
pub const MMOE_NAME: &str = "mmoe";

/// Experts of [`mmoe_bundle`].
pub const MMOE_EXPERTS: usize = 4;
/// Heads of [`mmoe_bundle`]: (name, activation, neg_sampling_rate, fusion weight).
pub const MMOE_HEADS: [(&str, &str, Option<f32>, f32); 4] = [
    ("click", "sigmoid", Some(0.1), 1.0),
    ("like", "sigmoid", None, 0.5),
    ("finish", "sigmoid", None, 0.3),
    ("watch_time", "exp", None, 0.01),
];

/// The contract v2 MMoE benchmark bundle, named [`MMOE_NAME`], for
/// [`TT_KEY`], over the same cross inputs as [`tt_bundle`] (22 values):
/// cross 22 -> 64 -> 32 (relu); upper input user 64 + item 64 + cross 32
/// = 160; shared bottom 160 -> 256 (relu); [`MMOE_EXPERTS`] experts
/// 256 -> 128 (relu); per head (see [`MMOE_HEADS`]) a gate `[4, 256]`, a
/// tower 128 -> 64 (relu) and its 64 -> 1 output; weighted-sum fusion.
/// He-initialised f32 weights from a fixed seed (as
/// `vstore::ExampleBundle`). Returns (model.json, weights.safetensors).
pub fn mmoe_bundle() -> (Vec<u8>, Vec<u8>) {
    let dense = |w: &str, act: &str| {
        format!(r#"{{"weight": "{w}.weight", "bias": "{w}.bias", "activation": "{act}"}}"#)
    };
    let buckets = TT_BUCKETS.map(|b| b.to_string()).join(", ");
    let experts = (0..MMOE_EXPERTS)
        .map(|e| {
            format!(
                r#"{{"layers": [{}]}}"#,
                dense(&format!("expert.{e}"), "relu")
            )
        })
        .collect::<Vec<_>>()
        .join(",\n        ");
    let gates = MMOE_HEADS
        .iter()
        .map(|(h, ..)| {
            format!(r#""{h}": {{"weight": "gate.{h}.weight", "bias": "gate.{h}.bias"}}"#)
        })
        .collect::<Vec<_>>()
        .join(",\n        ");
    let heads = MMOE_HEADS
        .iter()
        .map(|(h, act, nsr, _)| {
            let nsr = nsr.map_or(String::new(), |a| format!(r#", "neg_sampling_rate": {a}"#));
            format!(
                r#"{{"name": "{h}", "tower": {{"layers": [{}]}},
     "weight": "head.{h}.weight", "bias": "head.{h}.bias", "activation": "{act}"{nsr}}}"#,
                dense(&format!("tower.{h}"), "relu")
            )
        })
        .collect::<Vec<_>>()
        .join(",\n    ");
    let fusion = MMOE_HEADS
        .iter()
        .map(|(h, .., w)| format!(r#""{h}": {w}"#))
        .collect::<Vec<_>>()
        .join(", ");
    let (space, version) = TT_KEY.split_once('@').unwrap();
    let json = format!(
        r#"{{
  "format": "vstore.three_tower.v2",
  "name": "{MMOE_NAME}",
  "space": "{space}", "version": "{version}",
  "user_dim": 64, "item_dim": 64,
  "cross": {{
    "inputs": [
      {{"kind": "item_numeric", "column": "ctr_1d", "transform": "log1p"}},
      {{"kind": "item_numeric", "column": "impressions_7d",
       "transform": {{"bucketize": [{buckets}]}}, "embedding": "emb.imp_bucket"}},
      {{"kind": "item_categorical", "column": "category", "embedding": "emb.category"}},
      {{"kind": "user_dense", "name": "user_stats", "dim": 8}},
      {{"kind": "user_by_item", "name": "user_category_ctr", "column": "category",
       "dim": 1, "default": [0.0]}}
    ],
    "layers": [{}, {}]
  }},
  "upper": {{
    "layers": [{}],
    "mmoe": {{
      "experts": [
        {experts}
      ],
      "gates": {{
        {gates}
      }}
    }}
  }},
  "heads": [
    {heads}
  ],
  "fusion": {{"kind": "weighted_sum", "weights": {{{fusion}}}}}
}}
"#,
        dense("cross.0", "relu"),
        dense("cross.1", "relu"),
        dense("bottom", "relu"),
    );
    // (name, [out, in]) of every dense layer, in model order; biases follow.
    let mut layers: Vec<(String, [usize; 2])> = vec![
        ("cross.0".into(), [64, 22]),
        ("cross.1".into(), [32, 64]),
        ("bottom".into(), [256, 160]),
    ];
    layers.extend((0..MMOE_EXPERTS).map(|e| (format!("expert.{e}"), [128, 256])));
    for (h, ..) in MMOE_HEADS {
        layers.push((format!("gate.{h}"), [MMOE_EXPERTS, 256]));
        layers.push((format!("tower.{h}"), [64, 128]));
        layers.push((format!("head.{h}"), [1, 64]));
    }
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("emb.imp_bucket".into(), vec![4, 4]),
        ("emb.category".into(), vec![TT_VOCAB as usize, 8]),
    ];
    for (name, [out, inp]) in layers {
        shapes.push((format!("{name}.weight"), vec![out, inp]));
        shapes.push((format!("{name}.bias"), vec![out]));
    }
    let weights = vstore::ExampleBundle::random_weights(&shapes, 0x3E0E_1234_5678_9ABD);
    (json.into_bytes(), weights)
}

pub fn tt_store_dir(rows: usize, pre: Option<Dtype>) -> PathBuf {
    tt_model_store_dir(TT_V1, rows, pre)
}

pub fn tt_model_store_dir(m: TtModel, rows: usize, pre: Option<Dtype>) -> PathBuf {
    tt_model_store_dir_at(m, rows, pre, Precision::F32)
}

fn tt_model_store_dir_at(m: TtModel, rows: usize, pre: Option<Dtype>, p: Precision) -> PathBuf {
    let mut suffix = pre.map_or(String::new(), |d| format!("-pre-{}", d.name()));
    if p != Precision::F32 {
        suffix.push('-');
        suffix.push_str(p.name());
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/vstore-bench")
        .join(format!("{}-{rows}{suffix}", m.dir))
}

/// Opens (building it the first time) the three-tower benchmark store:
/// `rows` items, `prerank@v1` at d = 64 in f16, `category`, `ctr_1d`,
/// `impressions_7d`, and the [`tt_bundle`] (its first-layer item part
/// precomputed as `pre`, if given).
pub fn tt_store(rows: usize, pre: Option<Dtype>) -> Store {
    tt_model_store(TT_V1, rows, pre)
}

/// [`tt_store`] with the bundle added at `precision`.
pub fn tt_store_at(rows: usize, pre: Option<Dtype>, precision: Precision) -> Store {
    tt_model_store_at(TT_V1, rows, pre, precision)
}

/// [`tt_store`]'s items with the [`mmoe_bundle`] (named [`MMOE_NAME`])
/// instead, in a store of its own.
pub fn mmoe_store(rows: usize, pre: Option<Dtype>) -> Store {
    tt_model_store(TT_MMOE, rows, pre)
}

/// [`tt_store`]'s items with bundle `m` (its first-layer item part
/// precomputed as `pre`, if given), in `m`'s store directory. A store
/// whose bundle differs (model.json, or the weights' fingerprint in the
/// metadata) is rebuilt.
pub fn tt_model_store(m: TtModel, rows: usize, pre: Option<Dtype>) -> Store {
    tt_model_store_at(m, rows, pre, Precision::F32)
}

/// [`tt_model_store`] with the bundle added at `precision`
/// (`Transaction::add_model_with`), in a directory of its own.
pub fn tt_model_store_at(
    m: TtModel,
    rows: usize,
    pre: Option<Dtype>,
    precision: Precision,
) -> Store {
    let dir = tt_model_store_dir_at(m, rows, pre, precision);
    let (j, wts) = (m.files)();
    let fingerprint = bundle_fingerprint(&wts);
    if let Ok(s) = Store::open(&dir) {
        let snap = s.snapshot();
        if snap.len() == rows
            && written_by_this_format(&dir)
            && snap
                .model_named(TT_KEY, m.name)
                .is_ok_and(|b| b.json().as_bytes() == j.as_slice() && b.precision() == precision)
            && snap.model_named_is_precomputed(TT_KEY, m.name) == pre.is_some()
            && snap.metadata("bench.bundle") == Some(fingerprint.as_str())
        {
            return s;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let t = Instant::now();
    let schema = Schema::new()
        .categorical("category", 0)
        .stat("ctr_1d", 0.0)
        .stat("impressions_7d", 0.0)
        .embedding("prerank", "v1", 64, Dtype::F16);
    let mut w = Writer::create(&dir, schema).unwrap();
    let ids: Vec<u64> = (0..rows as u64).map(id_of).collect();
    let mut vecs = Vec::with_capacity(rows * 64);
    for i in 0..rows as u64 {
        vector(i, 64, &mut vecs);
    }
    let items: Vec<_> = (0..rows as u64).map(tt_item).collect();
    let batch = ItemBatch::new(ids)
        .categorical("category", items.iter().map(|x| x.0).collect())
        .stat("ctr_1d", items.iter().map(|x| x.1).collect())
        .stat("impressions_7d", items.iter().map(|x| x.2).collect())
        .embedding(TT_KEY, vecs);
    let mut tx = w.begin();
    tx.add_items(batch).unwrap();
    tx.add_model_with(&j, &wts, pre, precision).unwrap();
    tx.set_metadata("bench.bundle", &fingerprint).unwrap();
    tx.commit().unwrap();
    eprintln!(
        "built {rows}-item three-tower benchmark store with bundle {:?} in {:.1?}",
        m.name,
        t.elapsed()
    );
    Store::open(&dir).unwrap()
}

/// Dimension of the live-update stores.
pub const UPDATES_DIM: usize = 64;

/// Schema of the live-update stores (`benches/updates.rs`,
/// `examples/ab_segments.rs`): f16 d = 64, a category, two statistics.
pub fn updates_schema() -> Schema {
    Schema::new()
        .categorical("category", 0)
        .stat("ctr_1d", 0.0)
        .stat("impressions_7d", 0.0)
        .embedding("prerank", "v42", UPDATES_DIM as u32, Dtype::F16)
}

/// Rows `range` of the live-update stores.
pub fn updates_batch(range: std::ops::Range<u64>) -> ItemBatch {
    let ids: Vec<u64> = range.clone().map(id_of).collect();
    let mut vecs = Vec::with_capacity(ids.len() * UPDATES_DIM);
    for i in range {
        vector(i, UPDATES_DIM, &mut vecs);
    }
    ItemBatch::new(ids.clone())
        .categorical("category", ids.iter().map(|&i| (i % 100) as u32).collect())
        .stat(
            "ctr_1d",
            ids.iter().map(|&i| (i % 1000) as f32 / 1000.0).collect(),
        )
        .stat(
            "impressions_7d",
            ids.iter().map(|&i| (i % 5000) as f32).collect(),
        )
        .embedding("prerank@v42", vecs)
}

/// A fresh store of `n` items in `segments` equal segments (one publish
/// each), older snapshots collected.
pub fn segmented_store(dir: &Path, n: usize, segments: usize) -> Writer {
    let per = n.div_ceil(segments);
    let bounds: Vec<usize> = (0..=segments).map(|s| (s * per).min(n)).collect();
    store_with_bounds(dir, &bounds)
}

/// The same `n` items shaped as a store that takes live updates: one
/// compacted base segment, then `deltas` segments of `delta_rows` items
/// each (the newest items), as `deltas` adds since the last compaction
/// leave it.
pub fn lsm_store(dir: &Path, n: usize, deltas: usize, delta_rows: usize) -> Writer {
    let base = n - deltas * delta_rows;
    let bounds: Vec<usize> = std::iter::once(0)
        .chain((0..=deltas).map(|d| base + d * delta_rows))
        .collect();
    store_with_bounds(dir, &bounds)
}

/// Items `bounds[s]..bounds[s + 1]` in segment `s`.
fn store_with_bounds(dir: &Path, bounds: &[usize]) -> Writer {
    let _ = std::fs::remove_dir_all(dir);
    let mut w = Writer::create(dir, updates_schema()).unwrap();
    for r in bounds.windows(2) {
        let mut tx = w.begin();
        tx.add_items(updates_batch(r[0] as u64..r[1] as u64))
            .unwrap();
        tx.commit().unwrap();
    }
    w.set_retention(Retention {
        keep_last: 1,
        grace: std::time::Duration::ZERO,
    });
    w.gc().unwrap();
    w
}
