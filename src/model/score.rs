//! Running a model over candidate rows, a block at a time.
//!
//! Per block of rows: build the cross-tower input (item columns read in
//! place, transforms and table look-ups applied, user inputs copied), run
//! the cross layers (the last one writes straight into the upper network's
//! input), decode the item vectors beside it, and run the upper layers and
//! heads as small matrix products with the weights hot in cache. The user
//! part of the first upper layer (`W[:, ..user_dim] @ user + b`) is computed
//! once per query and starts each row's accumulator.

use super::{
    Activation, ByItem, ColumnRef, Dense, FusionPlan, Input, Model, Transform, UpperPart,
    UserInputs,
};
use crate::error::{Error, Result};
use crate::kernels::gemm::{matmul_prefetching, Start};
use crate::kernels::{self, Loc};
use crate::read::columns::EmbeddingColumn;
use crate::read::segment::Segment;
use crate::schema::Dtype;
use std::time::{Duration, Instant};

/// How a query's model is split over threads ([`Model::score_on`]): into
/// at most `runs` runs that share out its blocks, the caller's thread one
/// of them and the others running on `pool` (the caller's) or on the
/// library's pool.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Parallel<'p> {
    pub runs: usize,
    pub pool: Option<&'p rayon::ThreadPool>,
}

impl Parallel<'_> {
    /// Whether a query of up to `rows` rows is split (more than one run
    /// and more than one block).
    pub(crate) fn splits(&self, rows: usize) -> bool {
        self.runs > 1 && rows > BLOCK
    }
}

/// The library's scoring pool, for [`crate::Query::threads`] without
/// [`crate::Query::pool`]: one thread per available core (named
/// `vstore-score-N`), started at the first query that asks for threads and
/// kept for the process, so a query does not start threads (nor, on AMX,
/// pay each new thread's first tile use). `None` if it could not be
/// started (the query then starts scoped threads).
fn library_pool<'a>() -> Option<&'a rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .thread_name(|i| format!("vstore-score-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

thread_local! {
    /// The buffers of the runs a thread scores for another thread's query
    /// (kept between queries, so a pool thread allocates them once).
    static RUN_SCRATCH: std::cell::RefCell<(Vec<f32>, ModelScratch)> =
        std::cell::RefCell::new((Vec::new(), ModelScratch::default()));
}

/// Time a model spent per stage over the blocks it scored (summed over
/// the threads of a split query), for [`crate::Timings`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StageTimes {
    /// Cross inputs built, item vectors (or precomputed rows) read.
    pub gather: Duration,
    /// SE gating and the cross tower.
    pub cross: Duration,
    /// The upper network.
    pub upper: Duration,
    /// Experts, gates, head towers, activation, calibration and
    /// normalization.
    pub heads: Duration,
}

impl StageTimes {
    /// Adds the stages' times to a query's timings.
    pub(crate) fn add_to(&self, t: &mut crate::Timings) {
        t.gather += self.gather;
        t.cross += self.cross;
        t.upper += self.upper;
        t.heads += self.heads;
    }
}

impl std::ops::AddAssign for StageTimes {
    fn add_assign(&mut self, o: StageTimes) {
        self.gather += o.gather;
        self.cross += o.cross;
        self.upper += o.upper;
        self.heads += o.heads;
    }
}

/// Rows scored per block (each layer is one `[BLOCK, in] x [in, out]`
/// product).
pub(super) const BLOCK: usize = 48;
const _: () = assert!(BLOCK <= 64, "ModelScratch::not_finite is one bit per row");

/// Buffers a three-tower query reuses (kept per thread by
/// [`crate::Snapshot::query`]).
#[derive(Debug, Default)]
pub struct ModelScratch {
    xc: Vec<f32>,
    a: Vec<f32>,
    pub(super) h0: Vec<f32>,
    h1: Vec<f32>,
    pub(super) out: Vec<f32>,
    pub(super) acc: Vec<f64>,
    pub(super) order: Vec<u32>,
    /// Head towers' and experts' layer outputs (ping-pong).
    pub(super) t0: Vec<f32>,
    pub(super) t1: Vec<f32>,
    /// Every expert's output, `[experts][BLOCK, dim]`.
    pub(super) experts: Vec<f32>,
    /// Gate values, `[BLOCK, heads x experts]`.
    pub(super) gates: Vec<f32>,
    /// One head's input mixture, `[BLOCK, dim]`.
    pub(super) mix: Vec<f32>,
    /// One head's values, `[BLOCK]`.
    pub(super) value: Vec<f32>,
    /// Cache lines of the next block, prefetched during this one.
    ahead: Vec<usize>,
    /// The block's rows (bit `r`, `r < BLOCK <= 64`) one of whose inputs
    /// is not finite (see [`item_input`]).
    not_finite: u64,
    /// Whether [`Model::score`] keeps each row's head values before
    /// activation or calibration in `logits` (a feature log).
    pub(super) log_logits: bool,
    pub(super) logits: Vec<f32>,
}

/// The per-query part of a model: user inputs checked and resolved, the
/// user part of the first upper layer computed.
#[derive(Debug)]
pub(crate) struct Prepared<'a> {
    /// The user vector.
    user: Vec<f32>,
    /// `W0[:, user columns] @ user + b0`.
    u0: Vec<f32>,
    /// The first upper layer over `A` rows, when it depends on the user
    /// (`dot`, `hadamard`).
    pack_a: Option<crate::kernels::gemm::Weights>,
    /// A fusion the query gives in place of the bundle's.
    pub(super) fusion: Option<FusionPlan>,
    /// If the model splits the first cross layer: its bias plus its
    /// `user_dense` columns times those inputs.
    c0: Vec<f32>,
    /// Per input: the `user_dense` vector, if that is its kind.
    dense: Vec<Option<&'a [f32]>>,
    /// Per input: the `user_by_item` map, if that is its kind.
    by_item: Vec<Option<&'a ByItem>>,
}

/// How the first upper layer gets a row's item part
/// (`W0[:, item columns] @ item_vec`).
#[derive(Debug, Clone, Copy)]
enum ItemPart {
    /// Multiplied here, from the item vector.
    Multiplied,
    /// Read by the kernel from the precomputed rows, as stored (f16 if
    /// `half`, else f32).
    Stored { half: bool },
    /// Precomputed rows of a dtype the kernel does not read (or of mixed
    /// dtypes), decoded first.
    Decoded,
}

/// The [`ItemPart`] for scoring `segs`: precomputed rows only if every
/// segment has them, read as stored only if they share a dtype the kernel
/// reads.
fn item_part(segs: &[SegmentInputs<'_>]) -> ItemPart {
    if segs.is_empty() || segs.iter().any(|s| s.pre.is_none()) {
        return ItemPart::Multiplied;
    }
    let dtype = |s: &SegmentInputs<'_>| s.pre.as_ref().map(|p| p.def().dtype);
    match dtype(&segs[0]) {
        d if segs.iter().any(|s| dtype(s) != d) => ItemPart::Decoded,
        Some(Dtype::F16) => ItemPart::Stored { half: true },
        Some(Dtype::F32) => ItemPart::Stored { half: false },
        _ => ItemPart::Decoded,
    }
}

/// Writes the value of item input `inp` (an `item_numeric` or
/// `item_categorical` input) for row `row` of its column `col` into `x`
/// (`inp.dim()` values): the transform or table look-up applied; a
/// category past the table reads row 0. Shared by the cross tower and the
/// item tower. Returns false if the value written is not finite: `log1p`
/// of a stored value of -1 or less (stored values, tables and bounds are
/// finite, so no other input can be), which the layers' ReLU would
/// otherwise turn into a finite, wrong output.
#[inline]
pub(super) fn item_input(inp: &Input, col: Col<'_>, row: usize, x: &mut [f32]) -> bool {
    match (inp, col) {
        (Input::ItemNumeric { transform, .. }, Col::F32(v)) => {
            let v = v[row];
            match transform {
                Transform::Identity => x[0] = v,
                Transform::Log1p => {
                    x[0] = ln_1p(v);
                    return x[0].is_finite();
                }
                Transform::Bucketize { bounds, table } => {
                    let b = bounds.partition_point(|&t| t <= v);
                    put(x, table.row(b));
                }
            }
        }
        (Input::ItemCategorical { table, .. }, Col::U32(v)) => {
            let c = v[row] as usize;
            let r = if c < table.rows { c } else { 0 };
            put(x, table.row(r));
        }
        // Unreachable: callers pair each input with its column kind.
        _ => {}
    }
    true
}

/// An item column as one segment holds it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Col<'a> {
    F32(&'a [f32]),
    U32(&'a [u32]),
    None,
}

/// What the model reads from one segment.
#[derive(Debug)]
pub(crate) struct SegmentInputs<'a> {
    cols: Vec<Col<'a>>,
    /// Per head: the column its normalization reads, if it has one.
    pub(super) norm: Vec<Option<&'a [f32]>>,
    /// The columns the query's fusion reads, in its order.
    pub(super) fusion_cols: Vec<&'a [f32]>,
    emb: EmbeddingColumn<'a>,
    /// The precomputed first-layer item part, if the bundle has it.
    pre: Option<EmbeddingColumn<'a>>,
}

fn check_vec(what: &str, v: &[f32], dim: usize) -> Result<()> {
    if v.len() != dim {
        return Err(Error::InvalidInput(format!(
            "{what} has {} values; the model expects {dim}",
            v.len()
        )));
    }
    if let Some(j) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::InvalidInput(format!(
            "{what} component {j} is {}; components must be finite",
            v[j]
        )));
    }
    Ok(())
}

/// `ln(1 + x)` to within a few ulp, by Goldberg's method (What Every
/// Computer Scientist Should Know About Floating-Point Arithmetic, 1991,
/// theorem 4): the rounding error of `1 + x` is cancelled by dividing by
/// what `1 + x` really was. It goes through `ln`, which is faster than
/// libm's `log1pf` (docs/PERF.md).
#[inline]
fn ln_1p(x: f32) -> f32 {
    let u = 1.0 + x;
    if u == 1.0 {
        x // |x| below half an ulp of 1: ln(1 + x) = x to f32 precision
    } else if u == f32::INFINITY {
        u
    } else {
        u.ln() * (x / (u - 1.0))
    }
}

/// `dst.copy_from_slice(src)` for the few values of one cross input, as
/// fixed-size moves: `copy_from_slice` of a length known only at run time
/// is a call to `memmove`, too slow for copies of 1 to 8 values per row
/// (docs/PERF.md).
#[inline]
fn put(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d, s) in (&mut d).zip(&mut s) {
        d.copy_from_slice(s);
    }
    let (mut d, mut s) = (d.into_remainder(), s.remainder());
    for w in [4, 2, 1] {
        if d.len() >= w {
            d[..w].copy_from_slice(&s[..w]);
            (d, s) = (&mut d[w..], &s[w..]);
        }
    }
}

/// The dot product of `a` and `b`, in eight independent partial sums (a
/// single running sum is one dependent add per element, and the user part
/// of the first layer, `out x user_dim` of them per query; docs/PERF.md).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The calibrated probability `p = a*q / ((1 - q) + a*q)` of a sigmoid
/// head with logit `x` (`q = sigmoid(x)`) and negative sampling rate `a`,
/// computed as the equal `a / (a + exp(-x))` in f64: through an f32 `q`,
/// every logit above ~17 gives `q = 1` and so `p = 1`, and items that the
/// model ranks apart would tie.
#[inline]
pub(super) fn calibrated(x: f32, a: f64) -> f32 {
    (a / (a + (-(x as f64)).exp())) as f32
}

#[inline]
pub(super) fn activate(act: Activation, x: f32) -> f32 {
    match act {
        Activation::Relu => x.max(0.0),
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::Identity => x,
        Activation::Exp => x.exp(),
    }
}

/// Runs layer `d` on `m` rows of `src`: the accumulators start at
/// `start` (the bias, for every layer but the first upper one), ReLU runs
/// in the kernel, any other activation in a pass after it.
#[allow(clippy::too_many_arguments)]
pub(super) fn layer(
    d: &Dense,
    m: usize,
    src: &[f32],
    ld_src: usize,
    pack: &crate::kernels::gemm::Weights,
    dst: &mut [f32],
    ld_dst: usize,
    start: Start<'_>,
    ahead: &[usize],
) {
    let relu = d.act == Activation::Relu;
    matmul_prefetching(m, src, ld_src, pack, dst, ld_dst, start, relu, ahead);
    if !matches!(d.act, Activation::Relu | Activation::Identity) {
        for r in 0..m {
            let row = &mut dst[r * ld_dst..r * ld_dst + d.out];
            row.iter_mut().for_each(|x| *x = activate(d.act, *x));
        }
    }
}

impl Model {
    /// Checks the user vector and inputs of a query (and the fusion it
    /// gives in place of the bundle's, against the snapshot's `schema`) and
    /// computes the user part of the first upper layer.
    pub(crate) fn prepare<'a>(
        &self,
        user: &[f32],
        inputs: &'a UserInputs,
        fusion: Option<&crate::model::spec::FusionSpec>,
        schema: &crate::schema::Schema,
    ) -> Result<Prepared<'a>> {
        check_vec("user vector", user, self.user_dim)?;
        let mut dense = Vec::with_capacity(self.inputs.len());
        let mut by_item = Vec::with_capacity(self.inputs.len());
        let mut known = Vec::new();
        for inp in &self.inputs {
            let (mut d, mut b) = (None, None);
            match inp {
                Input::UserDense { name, dim } => {
                    let v = inputs.dense.get(name).ok_or_else(|| {
                        Error::InvalidInput(if inputs.by_item.contains_key(name) {
                            format!(
                                "user_dense input {name:?} is passed as a map by category code (a user_by_item input); the model takes one vector of {dim} values for it"
                            )
                        } else {
                            format!(
                                "the model needs user_dense input {name:?} ({dim} values), which the query does not pass"
                            )
                        })
                    })?;
                    check_vec(&format!("user_dense input {name:?}"), v, *dim)?;
                    d = Some(&v[..]);
                    known.push(name.as_str());
                }
                Input::UserByItem {
                    name, dim, column, ..
                } => {
                    let m = inputs.by_item.get(name).ok_or_else(|| {
                        Error::InvalidInput(if inputs.dense.contains_key(name) {
                            format!(
                                "user_by_item input {name:?} is passed as one vector (a user_dense input); the model takes a map from {column} values to {dim} values for it"
                            )
                        } else {
                            format!(
                                "the model needs user_by_item input {name:?} (a map from {column} values to {dim} values), which the query does not pass"
                            )
                        })
                    })?;
                    for (k, v) in m.iter() {
                        check_vec(&format!("user_by_item input {name:?}, key {k},"), v, *dim)?;
                    }
                    b = Some(m);
                    known.push(name.as_str());
                }
                _ => {}
            }
            dense.push(d);
            by_item.push(b);
        }
        // Each name passed must be one the model reads as that kind: a
        // user_dense vector under a user_by_item input's name (or the
        // reverse) would otherwise be silently ignored.
        let reads = |name: &str, dense: bool| {
            self.inputs.iter().any(|i| match i {
                Input::UserDense { name: n, .. } => dense && n == name,
                Input::UserByItem { name: n, .. } => !dense && n == name,
                _ => false,
            })
        };
        let extra = (inputs.dense.keys().map(|n| (n, true)))
            .chain(inputs.by_item.keys().map(|n| (n, false)))
            .find(|(n, dense)| !reads(n, *dense));
        if let Some((extra, dense)) = extra {
            let kind = if dense { "user_dense" } else { "user_by_item" };
            return Err(Error::InvalidInput(format!(
                "{kind} input {extra:?} is not one the model {} reads; it reads [{}]",
                self.key(),
                known.join(", ")
            )));
        }
        let f = &self.first;
        let u0 = match self.upper.first() {
            None => Vec::new(),
            Some(w0) if f.user.is_empty() => w0.b.clone(),
            Some(w0) => (0..w0.out)
                .map(|j| w0.b[j] + dot(&f.user[j * self.user_dim..(j + 1) * self.user_dim], user))
                .collect(),
        };
        let pack_a = (!self.upper.is_empty() && f.per_query()).then(|| {
            f.pack_a(self.a_item, self.item_dim, self.cross_out, Some(user))
                .at(self.precision)
        });
        let fusion = match fusion {
            None => None,
            Some(spec) => Some(
                super::compile::fusion(spec, &self.heads, schema).map_err(|e| {
                    Error::InvalidInput(format!(
                        "the query's fusion for bundle {} of {}: {e}",
                        self.name(),
                        self.key()
                    ))
                })?,
            ),
        };
        let mut c0 = Vec::new();
        if let (true, Some(d)) = (self.split, self.cross.first()) {
            c0 = d.b.clone();
            let mut off = 0;
            for (inp, v) in self.inputs.iter().zip(&dense) {
                if let (Input::UserDense { dim, .. }, Some(v)) = (inp, v) {
                    for (j, c) in c0.iter_mut().enumerate() {
                        *c += dot(&d.w[j * d.inp + off..][..*dim], v);
                    }
                }
                off += inp.dim();
            }
        }
        Ok(Prepared {
            user: user.to_vec(),
            u0,
            pack_a,
            fusion,
            c0,
            dense,
            by_item,
        })
    }

    /// Resolves the columns the model (and the query's fusion, in `prep`)
    /// reads in `seg`.
    pub(crate) fn segment_inputs<'a>(
        &self,
        seg: &'a Segment,
        emb: EmbeddingColumn<'a>,
        pre: Option<EmbeddingColumn<'a>>,
        prep: &Prepared<'_>,
    ) -> Result<SegmentInputs<'a>> {
        let numeric = |c: &ColumnRef| -> Result<&'a [f32]> {
            Ok(match c {
                ColumnRef::Profile(n) => seg.numeric(n)?.values(),
                ColumnRef::Stat(n) => seg.stat(n)?.values(),
            })
        };
        let norm = (self.heads.iter())
            .map(|h| h.normalize.as_ref().map(|n| numeric(&n.column)).transpose())
            .collect::<Result<_>>()?;
        let fusion_cols = (self.fusion_of(prep).columns().iter())
            .map(|(c, _)| numeric(c))
            .collect::<Result<_>>()?;
        let cols = self
            .inputs
            .iter()
            .map(|inp| {
                Ok(match inp {
                    Input::ItemNumeric { column, .. } => Col::F32(match column {
                        ColumnRef::Profile(n) => seg.numeric(n)?.values(),
                        ColumnRef::Stat(n) => seg.stat(n)?.values(),
                    }),
                    Input::ItemCategorical { column, .. } | Input::UserByItem { column, .. } => {
                        Col::U32(seg.categorical(column)?.values())
                    }
                    Input::UserDense { .. } => Col::None,
                })
            })
            .collect::<Result<_>>()?;
        Ok(SegmentInputs {
            cols,
            norm,
            fusion_cols,
            emb,
            pre,
        })
    }

    /// Multiply-adds scoring one row of `segs` spends: the model's per
    /// candidate ([`Model::macs_per_item_split`]), less the item part of
    /// the first upper layer when every segment has it precomputed.
    pub(crate) fn macs_per_row(&self, segs: &[SegmentInputs<'_>]) -> u64 {
        let pre = !matches!(item_part(segs), ItemPart::Multiplied);
        let saved = if pre { self.first.item.len() } else { 0 };
        (self.macs_per_item_split() - saved) as u64
    }

    /// Writes the cross-tower input of item `row` of `seg` into `x`: every
    /// input, or, if `split`, all but the `user_dense` ones (those are in
    /// `prep.c0`).
    #[inline]
    fn cross_input(
        &self,
        prep: &Prepared<'_>,
        seg: &SegmentInputs<'_>,
        row: usize,
        x: &mut [f32],
        split: bool,
    ) -> bool {
        let mut o = 0;
        let mut finite = true;
        for (i, inp) in self.inputs.iter().enumerate() {
            let col = seg.cols[i];
            match (inp, col) {
                (Input::ItemNumeric { .. } | Input::ItemCategorical { .. }, _) => {
                    finite &= item_input(inp, col, row, &mut x[o..o + inp.dim()]);
                }
                (Input::UserDense { .. }, _) if split => continue, // in `c0`
                (Input::UserDense { dim, .. }, _) => {
                    put(&mut x[o..o + dim], prep.dense[i].unwrap_or(&[]));
                }
                (Input::UserByItem { dim, default, .. }, Col::U32(v)) => {
                    let m = prep.by_item[i];
                    let val = m.and_then(|m| m.get(v[row])).unwrap_or(default);
                    put(&mut x[o..o + dim], val);
                }
                // Unreachable: segment_inputs pairs each input with its column kind.
                _ => {}
            }
            o += inp.dim();
        }
        finite
    }

    /// [`Model::score`] split over threads as `par` says, on the rows
    /// `fill` publishes to a [`Feed`] (all at once, or block by block while
    /// the query still resolves its candidates): up to `par.runs` runs, the
    /// others on `par.pool` (the caller's rayon pool) or on the library's
    /// pool (scoped threads started for the call if it could not be
    /// started), each with the buffers its thread keeps between calls, and
    /// the caller's thread (with `s`) once `fill` has returned. The runs
    /// share out the blocks of [`BLOCK`] rows as they go: each claims the
    /// next whole block (waiting for it while `fill` is still publishing)
    /// and claims its next before scoring the current one, so its prefetch
    /// of the next block's lines is kept; a run that starts late or runs
    /// slower (a busy sibling core) does fewer blocks, and the runs end at
    /// most about a block apart. `heads` ends up holding the head values of
    /// every published row, in order. A row's values do not depend on the
    /// rows beside it, so the result is [`Model::score`]'s on the published
    /// rows, bit for bit, wherever each block ran.
    pub(crate) fn score_on(
        &self,
        par: Parallel<'_>,
        prep: &Prepared<'_>,
        segs: &[SegmentInputs<'_>],
        fill: impl FnOnce(&Feed),
        heads: &mut Vec<f32>,
        s: &mut ModelScratch,
    ) -> StageTimes {
        let nh = self.heads.len();
        let feed = Feed::default();
        // One run: claims blocks until none is left; returns the blocks it
        // scored, in order (their head values are in `values`, in that order).
        let run = |values: &mut Vec<f32>, scratch: &mut ModelScratch| {
            let mut done = Vec::new();
            let claims = std::iter::from_fn(|| feed.claim()).inspect(|(b, _)| done.push(*b));
            values.clear();
            let t = self.score_blocks(prep, segs, claims, values, scratch);
            (done, t)
        };
        // The other runs' blocks and values, copied out of their threads'
        // buffers.
        let others = std::sync::Mutex::new(Vec::new());
        let other = || {
            let out = RUN_SCRATCH.with(|cell| match cell.try_borrow_mut() {
                Ok(mut b) => {
                    let (values, scratch) = &mut *b;
                    let (done, t) = run(values, scratch);
                    (done, values.clone(), t)
                }
                // Fresh buffers if the thread's are in use (never on these
                // paths, where a run does not start another).
                Err(_) => {
                    let mut values = Vec::new();
                    let (done, t) = run(&mut values, &mut ModelScratch::default());
                    (done, values, t)
                }
            });
            others.lock().unwrap_or_else(|e| e.into_inner()).push(out);
        };
        let other = &other;
        // The caller publishes, then scores; the feed is closed even if
        // `fill` panics, so no run waits for rows that will not come.
        let mut values = Vec::new();
        let mine = |s: &mut ModelScratch| {
            {
                let _closing = Closing(&feed);
                fill(&feed);
            }
            run(&mut values, s)
        };
        let runs = par.runs.max(1);
        let mine = match par.pool.or_else(library_pool) {
            Some(pool) => pool.in_place_scope(|scope| {
                for _ in 1..runs {
                    scope.spawn(move |_| other());
                }
                mine(s)
            }),
            None => std::thread::scope(|scope| {
                for _ in 1..runs {
                    scope.spawn(other);
                }
                mine(s)
            }),
        };
        heads.clear();
        heads.resize(feed.rows() * nh, 0.0);
        let mut times = StageTimes::default();
        let mut others = others.into_inner().unwrap_or_else(|e| e.into_inner());
        others.push((mine.0, values, mine.1));
        for (done, values, t) in others {
            times += t;
            place_blocks(heads, nh, &done, &values);
        }
        times
    }

    /// Runs the model on the rows `locs` (rows of `segs`) and writes each
    /// row's calibrated head values to `heads[j * H..(j + 1) * H]`; returns
    /// the time each stage took (four clock reads per block of [`BLOCK`]
    /// rows, ~25 ns each where the clock is the TSC: well under 1% of
    /// scoring the block).
    pub(crate) fn score(
        &self,
        prep: &Prepared<'_>,
        segs: &[SegmentInputs<'_>],
        locs: &[Loc],
        heads: &mut Vec<f32>,
        s: &mut ModelScratch,
    ) -> StageTimes {
        heads.clear();
        let blocks = locs.chunks(BLOCK).enumerate();
        self.score_blocks(prep, segs, blocks, heads, s)
    }

    /// Runs the model on the blocks of rows `blocks` yields (each with its
    /// number, unused here), in that order, and appends each block's head
    /// values to `heads` (H per row); the lines of the next block are
    /// prefetched while one is scored, so `blocks` is asked for the next
    /// block before the current one is scored.
    fn score_blocks<L: AsRef<[Loc]>>(
        &self,
        prep: &Prepared<'_>,
        segs: &[SegmentInputs<'_>],
        blocks: impl Iterator<Item = (usize, L)>,
        heads: &mut Vec<f32>,
        s: &mut ModelScratch,
    ) -> StageTimes {
        let nh = self.heads.len();
        let item_part = item_part(segs);
        // With the item part precomputed, the first upper layer only
        // multiplies the cross output; the item vectors are not needed.
        let pre = !matches!(item_part, ItemPart::Multiplied);
        let id = if pre { 0 } else { self.a_item };
        let lda = id + self.cross_out;
        let widest = (self.se.iter().chain(&self.cross).chain(&self.upper))
            .map(|d| d.out)
            .max()
            .unwrap_or(1)
            .max(self.cross_in)
            .max(self.width);
        s.xc.resize(BLOCK * self.row_in, 0.0);
        s.a.resize(BLOCK * lda, 0.0);
        s.h0.resize(BLOCK * widest, 0.0);
        s.h1.resize(BLOCK * widest, 0.0);
        s.out.resize(BLOCK * nh, 0.0);
        self.size_head_scratch(s);
        fn span<L: AsRef<[Loc]>>(b: Option<&(usize, L)>) -> &[Loc] {
            b.map_or(&[], |(_, l)| l.as_ref())
        }
        let mut blocks = blocks.peekable();
        s.ahead.clear();
        self.lines(segs, span(blocks.peek()), pre, &mut s.ahead);
        s.ahead
            .iter()
            .for_each(|&p| kernels::prefetch_line(p as *const u8));
        let mut times = StageTimes::default();
        let mut t = Instant::now();
        let mut lap = |to: &mut Duration| {
            let now = Instant::now();
            *to += now - t;
            t = now;
        };
        while let Some((_, block)) = blocks.next() {
            let block = block.as_ref();
            s.ahead.clear();
            self.lines(segs, span(blocks.peek()), pre, &mut s.ahead);
            self.gather_block(prep, segs, block, id, lda, s);
            lap(&mut times.gather);
            if !self.se.is_empty() {
                self.se_block(block.len(), s);
            }
            self.cross_block(prep, block.len(), id, lda, s);
            lap(&mut times.cross);
            if self.upper.is_empty() {
                self.upper_input_block(prep, block.len(), id, lda, s);
            } else {
                self.upper_block(prep, segs, block, item_part, lda, s);
            }
            lap(&mut times.upper);
            let at = heads.len();
            heads.resize(at + block.len() * nh, 0.0);
            self.heads_block(segs, block, s, &mut heads[at..]);
            // A row whose input is not finite scores NaN: listed as not
            // finite, never ranked on what the ReLUs made of it.
            let mut bad = s.not_finite;
            while bad != 0 {
                let r = bad.trailing_zeros() as usize;
                bad &= bad - 1;
                heads[at + r * nh..at + (r + 1) * nh].fill(f32::NAN);
            }
            lap(&mut times.heads);
        }
        times
    }

    /// What the model sees and produces for the rows `locs`, for a
    /// feature log: per row its whole cross-tower input (`cross_in`
    /// values), its head values before activation or calibration, and
    /// after. The rows are scored again here; a row's values do not depend
    /// on the rows beside it, so they are the query's, bit for bit.
    pub(crate) fn log_rows(
        &self,
        prep: &Prepared<'_>,
        segs: &[SegmentInputs<'_>],
        locs: &[Loc],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let d = self.cross_in;
        let mut cross = vec![0f32; locs.len() * d];
        for (loc, x) in locs.iter().zip(cross.chunks_exact_mut(d.max(1))) {
            self.cross_input(prep, &segs[loc.block as usize], loc.row as usize, x, false);
        }
        let mut s = ModelScratch {
            log_logits: true,
            ..ModelScratch::default()
        };
        let mut heads = Vec::new();
        self.score(prep, segs, locs, &mut heads, &mut s);
        (cross, s.logits, heads)
    }

    /// Names and widths of the cross-tower inputs, in order.
    pub(crate) fn input_names(&self) -> Vec<(String, usize)> {
        (self.inputs.iter())
            .map(|inp| {
                let name = match inp {
                    Input::ItemNumeric { column, .. } => match column {
                        ColumnRef::Profile(n) | ColumnRef::Stat(n) => n.clone(),
                    },
                    Input::ItemCategorical { column, .. } => column.clone(),
                    Input::UserDense { name, .. } | Input::UserByItem { name, .. } => name.clone(),
                };
                (name, inp.dim())
            })
            .collect()
    }

    /// Step 1 of a block: each row's cross input into `s.xc` and (unless
    /// the item part is precomputed, `id` = 0) its item vector into `s.a`.
    #[inline]
    fn gather_block(
        &self,
        prep: &Prepared<'_>,
        segs: &[SegmentInputs<'_>],
        block: &[Loc],
        id: usize,
        lda: usize,
        s: &mut ModelScratch,
    ) {
        let row_in = self.row_in;
        s.not_finite = 0;
        for (r, loc) in block.iter().enumerate() {
            let seg = &segs[loc.block as usize];
            let row = loc.row as usize;
            let x = &mut s.xc[r * row_in..(r + 1) * row_in];
            if !self.cross_input(prep, seg, row, x, self.split) {
                s.not_finite |= 1 << r;
            }
            if id > 0 {
                seg.emb.decode(row, &mut s.a[r * lda..r * lda + id]);
            }
        }
    }

    /// Step 1b (`cross.se`): each cross input of each row scaled by the SE
    /// block's output for that row, computed from the inputs' means.
    fn se_block(&self, m: usize, s: &mut ModelScratch) {
        let f = self.inputs.len();
        let row_in = self.row_in;
        // z = [mean(x_1) .. mean(x_F)] per row, into h0.
        for r in 0..m {
            let mut o = 0;
            for (i, inp) in self.inputs.iter().enumerate() {
                let d = inp.dim();
                let x = &s.xc[r * row_in + o..r * row_in + o + d];
                s.h0[r * f + i] = x.iter().sum::<f32>() / d as f32;
                o += d;
            }
        }
        let mut ld = f;
        for d in &self.se {
            layer(
                d,
                m,
                &s.h0,
                ld,
                &d.pack,
                &mut s.h1,
                d.out,
                Start::Bias(&d.b),
                &[],
            );
            std::mem::swap(&mut s.h0, &mut s.h1);
            ld = d.out;
        }
        for r in 0..m {
            let mut o = 0;
            for (i, inp) in self.inputs.iter().enumerate() {
                let scale = s.h0[r * f + i];
                let d = inp.dim();
                s.xc[r * row_in + o..r * row_in + o + d]
                    .iter_mut()
                    .for_each(|x| *x *= scale);
                o += d;
            }
        }
    }

    /// Step 3 without upper layers: each row's upper input (the parts of
    /// `upper.inputs`, in order) into `s.h0`, `width` per row.
    fn upper_input_block(
        &self,
        prep: &Prepared<'_>,
        m: usize,
        id: usize,
        lda: usize,
        s: &mut ModelScratch,
    ) {
        let (u, w) = (&prep.user[..], self.width);
        for r in 0..m {
            let a = &s.a[r * lda..(r + 1) * lda];
            let (v, cross) = a.split_at(id);
            let x = &mut s.h0[r * w..(r + 1) * w];
            let mut o = 0;
            for p in &self.upper_parts {
                match p {
                    UpperPart::User => {
                        x[o..o + u.len()].copy_from_slice(u);
                        o += u.len();
                    }
                    UpperPart::Item => {
                        x[o..o + id].copy_from_slice(v);
                        o += id;
                    }
                    UpperPart::Cross => {
                        x[o..o + cross.len()].copy_from_slice(cross);
                        o += cross.len();
                    }
                    UpperPart::Dot => {
                        x[o] = dot(u, v);
                        o += 1;
                    }
                    UpperPart::Hadamard => {
                        for (i, y) in x[o..o + id].iter_mut().enumerate() {
                            *y = u[i] * v[i];
                        }
                        o += id;
                    }
                }
            }
        }
    }

    /// Step 2: the cross tower over `s.xc`; its last layer (or, without
    /// layers, the input itself) lands in `s.a` after the item vector.
    #[inline]
    fn cross_block(
        &self,
        prep: &Prepared<'_>,
        m: usize,
        id: usize,
        lda: usize,
        s: &mut ModelScratch,
    ) {
        let row_in = self.row_in;
        if self.cross.is_empty() {
            for r in 0..m {
                s.a[r * lda + id..(r + 1) * lda]
                    .copy_from_slice(&s.xc[r * row_in..(r + 1) * row_in]);
            }
        }
        let mut src_is_xc = true;
        for (li, d) in self.cross.iter().enumerate() {
            let last = li + 1 == self.cross.len();
            let (src, ld_src): (&[f32], usize) = if src_is_xc {
                (&s.xc, row_in)
            } else {
                (&s.h0, d.inp)
            };
            // The first layer's user_dense part is in `c0` if split.
            let (pack, bias) = if li == 0 && self.split {
                (&self.pack_cross0, Start::Bias(&prep.c0))
            } else {
                (&d.pack, Start::Bias(&d.b))
            };
            if last {
                layer(d, m, src, ld_src, pack, &mut s.a[id..], lda, bias, &[]);
            } else {
                layer(d, m, src, ld_src, pack, &mut s.h1, d.out, bias, &[]);
                std::mem::swap(&mut s.h0, &mut s.h1);
                src_is_xc = false;
            }
        }
    }

    /// Step 3: the upper network over `s.a` (item vector + cross output),
    /// its output in `s.h0`. The first layer's accumulators start at the
    /// user part (bias included), plus the precomputed item part if there
    /// is one. The next block's lines (`s.ahead`) are prefetched during the
    /// second layer (usually the largest product), or the first if it is
    /// the only one.
    #[inline]
    fn upper_block(
        &self,
        prep: &Prepared<'_>,
        segs: &[SegmentInputs<'_>],
        block: &[Loc],
        item_part: ItemPart,
        lda: usize,
        s: &mut ModelScratch,
    ) {
        let m = block.len();
        let w0 = &self.upper[0];
        let mut rows: [&[u8]; BLOCK] = [&[]; BLOCK];
        let (pack, start) = match item_part {
            ItemPart::Multiplied => (
                prep.pack_a.as_ref().unwrap_or(&self.pack_a),
                Start::Bias(&prep.u0),
            ),
            ItemPart::Stored { half } => {
                for (slot, loc) in rows.iter_mut().zip(block) {
                    let p = segs[loc.block as usize].pre.as_ref();
                    *slot = p.expect("checked by item_part").row_bytes(loc.row as usize);
                }
                let add = &prep.u0;
                let start = Start::Rows {
                    rows: &rows[..m],
                    half,
                    add,
                };
                (&self.pack_cross, start)
            }
            ItemPart::Decoded => {
                for (r, loc) in block.iter().enumerate() {
                    let p = segs[loc.block as usize].pre.as_ref();
                    let h = &mut s.h0[r * w0.out..(r + 1) * w0.out];
                    p.expect("checked by item_part").decode(loc.row as usize, h);
                    for (x, u) in h.iter_mut().zip(&prep.u0) {
                        *x += u;
                    }
                }
                (&self.pack_cross, Start::Accumulate)
            }
        };
        layer(w0, m, &s.a, lda, pack, &mut s.h0, w0.out, start, &[]);
        if self.upper.len() == 1 {
            s.ahead
                .iter()
                .for_each(|&p| kernels::prefetch_line_l2(p as *const u8));
        }
        for (li, d) in self.upper[1..].iter().enumerate() {
            let ahead: &[usize] = if li == 0 { &s.ahead } else { &[] };
            let bias = Start::Bias(&d.b);
            layer(d, m, &s.h0, d.inp, &d.pack, &mut s.h1, d.out, bias, ahead);
            std::mem::swap(&mut s.h0, &mut s.h1);
        }
    }

    /// Appends the addresses of the cache lines scoring `locs` reads at
    /// random (the precomputed row if `pre`, else the item vector, and each
    /// column value) to `out`.
    fn lines(&self, segs: &[SegmentInputs<'_>], locs: &[Loc], pre: bool, out: &mut Vec<usize>) {
        for loc in locs {
            let seg = &segs[loc.block as usize];
            let row = loc.row as usize;
            let col = match &seg.pre {
                Some(p) if pre => p,
                _ => &seg.emb,
            };
            let bytes = col.row_bytes(row);
            let (first, end) = (
                bytes.as_ptr() as usize,
                bytes.as_ptr() as usize + bytes.len(),
            );
            out.extend((first & !63..end).step_by(64));
            for c in &seg.cols {
                match c {
                    Col::F32(v) => out.push(v[row..].as_ptr() as usize),
                    Col::U32(v) => out.push(v[row..].as_ptr() as usize),
                    Col::None => {}
                }
            }
        }
    }
}

/// Copies the head values of whole blocks of [`BLOCK`] rows (`nh` per
/// row), scored in the order `done` names them and so laid out in
/// `values`, to their rows' places in `heads` (the last block may be short).
fn place_blocks(heads: &mut [f32], nh: usize, done: &[usize], values: &[f32]) {
    let mut at = 0;
    for &b in done {
        let len = (heads.len() - b * BLOCK * nh).min(BLOCK * nh);
        heads[b * BLOCK * nh..][..len].copy_from_slice(&values[at..at + len]);
        at += len;
    }
}

/// The rows a split query scores ([`Model::score_on`]), published in
/// order by the thread resolving the candidates and claimed a whole block
/// of [`BLOCK`] rows at a time by the threads scoring them.
#[derive(Default)]
pub(crate) struct Feed {
    state: std::sync::Mutex<FeedState>,
    /// Signalled when a block becomes whole and when the feed closes.
    grown: std::sync::Condvar,
}

/// What a [`Feed`] holds.
#[derive(Default)]
struct FeedState {
    /// Every row published so far.
    locs: Vec<Loc>,
    /// No more rows will come.
    closed: bool,
    /// The next block to claim.
    next: usize,
    /// Runs waiting for a block (only then is a publish signalled: a
    /// signal is a system call).
    waiting: usize,
}

impl Feed {
    /// Appends `locs` to the rows to score.
    pub(crate) fn publish(&self, locs: &[Loc]) {
        if locs.is_empty() {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let whole = st.locs.len() / BLOCK;
        st.locs.extend_from_slice(locs);
        let grew = st.locs.len() / BLOCK > whole && st.waiting > 0;
        drop(st);
        if grew {
            self.grown.notify_all();
        }
    }

    /// Marks the rows complete (the last block may then be short).
    fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.grown.notify_all();
    }

    /// The next block (its number and rows), once it is whole or the feed
    /// closed; `None` when the feed is closed and every block claimed.
    fn claim(&self) -> Option<(usize, Vec<Loc>)> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let (b, have) = (st.next, st.locs.len());
            if have >= (b + 1) * BLOCK || (st.closed && have > b * BLOCK) {
                st.next += 1;
                return Some((b, st.locs[b * BLOCK..have.min((b + 1) * BLOCK)].to_vec()));
            }
            if st.closed {
                return None;
            }
            st.waiting += 1;
            st = self.grown.wait(st).unwrap_or_else(|e| e.into_inner());
            st.waiting -= 1;
        }
    }

    /// How many rows were published.
    fn rows(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .locs
            .len()
    }
}

/// Closes its [`Feed`] when dropped (also when the publisher panics).
struct Closing<'a>(&'a Feed);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::{calibrated, ln_1p, place_blocks, BLOCK};

    #[test]
    fn blocks_scored_out_of_order_land_at_their_rows() {
        // 5 blocks, the last short; two runs took blocks 3, 0, 4 and 1, 2.
        let (nh, rows) = (3, 4 * BLOCK + 7);
        let want: Vec<f32> = (0..rows * nh).map(|v| v as f32).collect();
        let values = |done: &[usize]| -> Vec<f32> {
            let mut v = Vec::new();
            for &b in done {
                v.extend_from_slice(&want[b * BLOCK * nh..((b + 1) * BLOCK * nh).min(want.len())]);
            }
            v
        };
        let mut heads = vec![f32::NAN; rows * nh];
        for done in [vec![3, 0, 4], vec![1, 2]] {
            place_blocks(&mut heads, nh, &done, &values(&done));
        }
        assert_eq!(heads, want);
    }

    #[test]
    fn calibration_matches_the_contract_formula_and_keeps_order() {
        for a in [1e-4, 0.05, 0.5, 1.0] {
            let mut last = -1.0f32;
            for i in -400..=400 {
                let x = i as f32 / 10.0;
                // The contract's formula, with q from an f64 sigmoid.
                let q = 1.0 / (1.0 + (-(x as f64)).exp());
                let want = a * q / ((1.0 - q) + a * q);
                let got = calibrated(x, a);
                assert!(
                    (got as f64 - want).abs() <= 1e-6 * want.max(1e-30),
                    "a {a}, x {x}: {got} vs {want}"
                );
                assert!(got >= last, "a {a}: not monotone at x {x}");
                last = got;
            }
        }
        // Logits far beyond f32 sigmoid saturation still order apart.
        assert!(calibrated(18.0, 1e-4) < calibrated(24.0, 1e-4));
        assert_eq!(calibrated(f32::INFINITY, 0.1), 1.0);
        assert_eq!(calibrated(f32::NEG_INFINITY, 0.1), 0.0);
        assert_eq!(calibrated(-1e4, 0.1), 0.0);
        assert!(calibrated(f32::NAN, 0.1).is_nan());
    }

    #[test]
    fn ln_1p_matches_f64_to_a_few_ulp() {
        let mut worst = 0f64;
        let mut x = 1e-30f32;
        // Positive and negative values from tiny to huge, and across -1 < x < 0.
        while x < 1e30 {
            for v in [x, -x.min(0.999_999)] {
                let want = (v as f64).ln_1p();
                let got = ln_1p(v) as f64;
                let rel = ((got - want) / want).abs();
                worst = worst.max(rel);
                assert!(rel < 3e-7, "ln_1p({v}) = {got}, want {want}");
            }
            x *= 1.37;
        }
        assert!(worst > 0.0, "the comparison ran");
        assert_eq!(ln_1p(0.0), 0.0);
        assert_eq!(ln_1p(-1.0), f32::NEG_INFINITY);
        assert_eq!(ln_1p(f32::INFINITY), f32::INFINITY);
        assert!(ln_1p(-2.0).is_nan());
        assert!(ln_1p(f32::NEG_INFINITY).is_nan());
        assert!(ln_1p(f32::NAN).is_nan());
    }
}
