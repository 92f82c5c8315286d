//! The pre-rank query: a user vector against candidate items (or every
//! item), scored inside the store by inner product or by a three-tower
//! model bundle, top k returned.
//!
//! Path for candidate ids (all passes over the candidates, none over the
//! store): (1) dedupe, probe the id index (with several segments: the
//! snapshot's id directory and the largest segment's index, see
//! `read/directory.rs`) with the home slots of upcoming ids prefetched; (2) drop
//! deleted rows, apply the filter; (3) score the rows with a prefetching
//! kernel; (4) streaming top-k; (5) confirm `ids[row] == id` for the hits.

#[doc(hidden)]
pub mod bench_support;
pub(crate) mod candidates;
pub(crate) mod filter;
mod result;
mod scan;
pub(crate) mod topk;

use std::cell::RefCell;
use std::time::Instant;

pub use result::{FeatureLog, Hit, QueryResult, Timings};

use crate::error::{Error, Result};
use crate::format::idindex::{self, Hashed};
use crate::kernels::{self, Block, Level, Loc};
use crate::model::{Fusion, Model, ModelScratch, Parallel, Prepared, SegmentInputs, UserInputs};
use crate::query::filter::{Compiled, Filter};
use crate::query::topk::TopK;
use crate::read::snapshot::Snapshot;
use crate::schema::{Dtype, EmbeddingDef};

/// Most candidate ids one query takes (use a full scan beyond).
pub const MAX_CANDIDATES: usize = 100_000;

/// Which items a query scores.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Candidates<'a> {
    /// These ids (duplicates are scored once; unknown ids are reported).
    Ids(&'a [u64]),
    /// Every live item of the snapshot.
    All,
}

/// A cap on the work one query may spend ([`Query::budget`]).
///
/// Over the cap, the first candidates in the caller's order (of those
/// found and passing the filter; a full scan: in storage order) are
/// scored and the rest are counted in [`QueryResult::over_budget`] (and,
/// for candidate ids, listed in [`QueryResult::over_budget_ids`]): never
/// left out silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// At most this many items scored.
    Items(usize),
    /// At most this many multiply-adds: as many items as this pays for at
    /// the scorer's cost per item (the embedding's dimension for an inner
    /// product; for a three-tower bundle its layers' per candidate, less
    /// the parts computed once per query or precomputed). Exact mode's
    /// rescoring is not charged to the budget.
    MultiplyAdds(u64),
}

/// A two-tower (inner product) pre-rank query.
///
/// ```
/// # fn main() -> vstore::Result<()> {
/// use vstore::{Dtype, Filter, ItemBatch, Query, Schema, Store, Writer};
/// let dir = tempfile::tempdir().unwrap();
/// let schema = Schema::new().categorical("category", 0).embedding("prerank", "v42", 2, Dtype::F32);
/// let mut w = Writer::create(dir.path(), schema)?;
/// let mut tx = w.begin();
/// tx.add_items(ItemBatch::new(vec![1, 2, 3])
///     .categorical("category", vec![7, 8, 7])
///     .embedding("prerank@v42", vec![1.0, 0.0, 0.0, 1.0, 0.5, 0.5]))?;
/// tx.commit()?;
///
/// let snap = Store::open(dir.path())?.snapshot();
/// let user = [1.0f32, 0.2];
/// let not_8 = Filter::not_in("category", [8]);
/// let r = snap.query(&Query::ids("prerank@v42", &user, &[3, 1, 2, 99], 2).filter(&not_8))?;
/// assert_eq!(r.hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![1, 3]);
/// assert_eq!(r.not_found, vec![99]);
/// assert_eq!(r.filtered_out, 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    key: &'a str,
    user: &'a [f32],
    candidates: Candidates<'a>,
    filter: Option<&'a Filter>,
    k: usize,
    model: Option<&'a UserInputs>,
    bundle: Option<&'a str>,
    fusion: Option<&'a Fusion>,
    heads: bool,
    exact: bool,
    /// [`Query::threads`], if set.
    threads: Option<usize>,
    pool: Option<&'a rayon::ThreadPool>,
    budget: Option<Budget>,
    log: bool,
}

impl<'a> Query<'a> {
    /// Scores the items `ids` against `user`, a vector from the model version
    /// `key` (`space@version`), keeping the best `k`.
    pub fn ids(key: &'a str, user: &'a [f32], ids: &'a [u64], k: usize) -> Self {
        Query {
            key,
            user,
            candidates: Candidates::Ids(ids),
            filter: None,
            k,
            model: None,
            bundle: None,
            fusion: None,
            heads: false,
            exact: false,
            threads: None,
            pool: None,
            budget: None,
            log: false,
        }
    }

    /// Scores every live item (a full scan).
    pub fn full_scan(key: &'a str, user: &'a [f32], k: usize) -> Self {
        Query {
            key,
            user,
            candidates: Candidates::All,
            filter: None,
            k,
            model: None,
            bundle: None,
            fusion: None,
            heads: false,
            exact: false,
            threads: None,
            pool: None,
            budget: None,
            log: false,
        }
    }

    /// Only items passing `filter` are scored.
    pub fn filter(mut self, filter: &'a Filter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Scores with the snapshot's three-tower model bundle for the query's
    /// `space@version` instead of the inner product, `inputs` carrying the
    /// user-side cross inputs the model reads (see [`Model::user_inputs`]).
    /// The user vector is then the user tower's output (`user_dim` values).
    pub fn three_tower(mut self, inputs: &'a UserInputs) -> Self {
        self.model = Some(inputs);
        self
    }

    /// Scores with the bundle named `name` of the query's `space@version`
    /// (three-tower queries). Without it the snapshot's only bundle for the
    /// version is used; naming none when there are several is
    /// [`crate::Error::ModelChoice`].
    pub fn model(mut self, name: &'a str) -> Self {
        self.bundle = Some(name);
        self
    }

    /// Fuses the heads with `fusion` instead of the bundle's, for this
    /// query only (three-tower queries). Its head and column names are
    /// checked against the bundle; an error names the field at fault.
    pub fn fusion(mut self, fusion: &'a Fusion) -> Self {
        self.fusion = Some(fusion);
        self
    }

    /// Also return each hit's head values (three-tower queries), after
    /// calibration, in [`QueryResult::heads`].
    pub fn with_heads(mut self) -> Self {
        self.heads = true;
        self
    }

    /// For a bundle added at a precision other than f32: the top k, their
    /// scores and head values exactly as the bundle added at f32 (as given,
    /// not precomputed) returns them. Every candidate is scored at the
    /// bundle's precision, then those whose score is within twice the
    /// largest error seen of the k-th are scored again in f32 (rank fusion,
    /// whose ranks involve every candidate: all of them), and the top k is
    /// taken from the f32 scores. No effect on an f32 bundle. The cost is
    /// in docs/PERF.md ("Exact mode").
    pub fn exact(mut self) -> Self {
        self.exact = true;
        self
    }

    /// Caps the work the query may spend (see [`Budget`]).
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Also return what the model saw and produced for each hit
    /// (three-tower queries), in [`QueryResult::features`]: the cross-tower
    /// inputs after transforms and defaults, each head before and after
    /// calibration, the fused score. Logged at serving time, these are the
    /// training example of the served model exactly. The hits are scored
    /// a second time for the log (k rows, not the candidates).
    ///
    /// ```
    /// # fn main() -> vstore::Result<()> {
    /// use vstore::{Dtype, ExampleBundle, ItemBatch, Query, Schema, Store, UserInputs, Writer};
    /// let dir = tempfile::tempdir().unwrap();
    /// let schema = Schema::new()
    ///     .embedding("prerank", "v1", ExampleBundle::DIM as u32, Dtype::F16)
    ///     .categorical("category", 0)
    ///     .stat("ctr_1d", 0.0)
    ///     .stat("impressions_7d", 0.0);
    /// let mut w = Writer::create(dir.path(), schema)?;
    /// let ids: Vec<u64> = (1..=50).collect();
    /// let vectors: Vec<f32> = (0..50 * 64).map(|i| ((i * 7) % 13) as f32 / 13.0 - 0.5).collect();
    /// let (json, weights) = ExampleBundle::new("prerank", "v1").files();
    /// let mut tx = w.begin();
    /// tx.add_items(ItemBatch::new(ids.clone())
    ///     .categorical("category", (0..50).map(|i| i % 7).collect())
    ///     .stat("ctr_1d", (0..50).map(|i| i as f32 / 500.0).collect())
    ///     .stat("impressions_7d", (0..50).map(|i| (i * 300) as f32).collect())
    ///     .embedding("prerank@v1", vectors))?;
    /// tx.add_model(&json, &weights)?;
    /// tx.commit()?;
    ///
    /// let snap = Store::open(dir.path())?.snapshot();
    /// let user = vec![0.1f32; 64];
    /// let inputs = UserInputs::new()
    ///     .dense("user_stats", vec![0.5; 8])
    ///     .by_item("user_category_ctr", [(3, vec![0.2])]);
    /// let q = Query::ids("prerank@v1", &user, &ids, 5).three_tower(&inputs).log_features();
    /// let r = snap.query(&q)?;
    /// let log = r.features.as_ref().unwrap();
    /// assert_eq!(log.scores, r.hits.iter().map(|h| h.score).collect::<Vec<_>>());
    /// assert_eq!(log.cross_inputs.len(), 5 * log.cross_dim);
    /// # Ok(()) }
    /// ```
    pub fn log_features(mut self) -> Self {
        self.log = true;
        self
    }

    /// Runs a three-tower query's model on up to `threads` threads (0
    /// counts as 1): the others, on the pool given to [`Query::pool`] or
    /// else on the library's pool (one thread per core, started by the
    /// first query that asks for threads and kept for the process), and the
    /// calling thread once it has resolved the candidates, each take the
    /// next scoring block of candidates not yet taken until none is left,
    /// so a thread that starts late or runs slower takes fewer. Without a
    /// filter or a budget cut, the others start on the first blocks while
    /// the calling thread is still resolving the candidates (waiting for
    /// it, if they are ahead). Fusion and the top k then see every
    /// candidate, so the result is the same as on one thread, bit for bit.
    /// Worth it from a few thousand candidates (docs/PERF.md, "Three-tower
    /// scoring"); a two-tower query runs on one thread whatever this says.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads.max(1));
        self
    }

    /// Runs the split of [`Query::threads`] on the caller's rayon pool
    /// instead of the library's (a serving process that runs its own pool
    /// keeps the scoring on it; its threads keep their scoring buffers
    /// between queries).
    /// Without [`Query::threads`], as many threads as the pool has take
    /// part. The result does not depend on the pool nor on the number of
    /// threads: it is the one-thread result. A pool thread that joins a
    /// query may wait (blocked, not spinning) until the calling thread has
    /// resolved enough candidates for the next block: at most the time the
    /// resolve takes (~0.2-0.4 ms for 10,000 candidates, docs/PERF.md).
    ///
    /// ```no_run
    /// # fn main() -> vstore::Result<()> {
    /// # let store = vstore::Store::open("store")?;
    /// # let (user, ids, inputs) = (vec![0f32; 64], vec![1u64, 2], vstore::UserInputs::new());
    /// let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    /// let q = vstore::Query::ids("prerank@v42", &user, &ids, 500)
    ///     .three_tower(&inputs)
    ///     .pool(&pool);
    /// let result = store.snapshot().query(&q)?;
    /// # Ok(()) }
    /// ```
    pub fn pool(mut self, pool: &'a rayon::ThreadPool) -> Self {
        self.pool = Some(pool);
        self
    }
}

/// How pass 3 scores the resolved rows.
enum Scorer<'q, 's> {
    Dot {
        level: Level,
        dtype: Dtype,
        user: &'q [f32],
        blocks: Vec<Block<'s>>,
    },
    Model {
        model: &'s Model,
        prep: Box<Prepared<'q>>,
        segs: Vec<SegmentInputs<'s>>,
        /// [`Query::exact`] on a low-precision bundle: its f32 twin.
        exact: Option<Box<Exact<'q, 's>>>,
        /// [`Query::threads`] and [`Query::pool`].
        par: Parallel<'q>,
    },
}

/// The f32 model an exact query rescores with, prepared for the query.
struct Exact<'q, 's> {
    model: &'s Model,
    prep: Prepared<'q>,
    segs: Vec<SegmentInputs<'s>>,
}

/// Buffers a query reuses; [`Snapshot::query`] keeps one per thread, or
/// pass your own to [`Snapshot::query_with`].
#[derive(Debug, Default)]
pub struct Scratch {
    seen: Vec<u64>,
    /// Distinct candidates the first stage did not find: `(position, id
    /// with its hash)`.
    pend: Vec<(u32, Hashed)>,
    pos: Vec<u32>,
    missing: Vec<(u32, u64)>,
    locs: Vec<Loc>,
    ids: Vec<u64>,
    scores: Vec<f32>,
    topk: TopK,
    /// Scores sampled for the top-k threshold.
    sample: Vec<f32>,
    /// Ids whose score or head values came out non-finite.
    non_finite: Vec<u64>,
    best: Vec<(f32, u64, u32)>,
    head_values: Vec<f32>,
    model: ModelScratch,
    /// A batch's resolved candidates ([`Snapshot::query_batch`]).
    shared: candidates::SharedResolve,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl Snapshot {
    /// Runs `q` with this thread's scratch buffers. See [`Query`].
    pub fn query(&self, q: &Query<'_>) -> Result<QueryResult> {
        SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut s) => self.query_with(q, &mut s),
            // Re-entered from inside a query on this thread: fresh buffers.
            Err(_) => self.query_with(q, &mut Scratch::default()),
        })
    }

    /// Runs `q` with caller-owned buffers: checks the query, builds its
    /// scorer, scores the candidates (or every item) and collects the result.
    pub fn query_with(&self, q: &Query<'_>, scratch: &mut Scratch) -> Result<QueryResult> {
        self.run(q, scratch, None)
    }

    /// Runs several queries (several users, typically) in one call, with
    /// this thread's scratch buffers; one result per query, in order (a
    /// query's error does not stop the others). Work the queries share is
    /// done once: queries in a row over the same candidate ids, filter and
    /// budget (whatever their user, kind, bundle or k) resolve the
    /// candidates once (dedupe, id lookups, tombstones, filter), which is
    /// about half of a two-tower query's time at 5,000 candidates
    /// (docs/PERF.md, "Several users in one call"). Each result equals the
    /// query run alone.
    ///
    /// ```
    /// # fn main() -> vstore::Result<()> {
    /// use vstore::{Dtype, ItemBatch, Query, Schema, Store, Writer};
    /// let dir = tempfile::tempdir().unwrap();
    /// let schema = Schema::new().embedding("prerank", "v42", 2, Dtype::F32);
    /// let mut w = Writer::create(dir.path(), schema)?;
    /// let mut tx = w.begin();
    /// tx.add_items(ItemBatch::new(vec![1, 2, 3])
    ///     .embedding("prerank@v42", vec![1.0, 0.0, 0.0, 1.0, 0.5, 0.5]))?;
    /// tx.commit()?;
    ///
    /// let snap = Store::open(dir.path())?.snapshot();
    /// let candidates = [3, 1, 2];
    /// let users = [[1.0f32, 0.0], [0.0, 1.0]];
    /// let queries: Vec<Query> = users
    ///     .iter()
    ///     .map(|u| Query::ids("prerank@v42", u, &candidates, 1))
    ///     .collect();
    /// let results = snap.query_batch(&queries);
    /// assert_eq!(results[0].as_ref().unwrap().hits[0].id, 1);
    /// assert_eq!(results[1].as_ref().unwrap().hits[0].id, 2);
    /// # Ok(()) }
    /// ```
    pub fn query_batch(&self, queries: &[Query<'_>]) -> Vec<Result<QueryResult>> {
        SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut s) => self.query_batch_with(queries, &mut s),
            Err(_) => self.query_batch_with(queries, &mut Scratch::default()),
        })
    }

    /// [`Snapshot::query_batch`] with caller-owned buffers.
    pub fn query_batch_with(
        &self,
        queries: &[Query<'_>],
        scratch: &mut Scratch,
    ) -> Vec<Result<QueryResult>> {
        let mut shared = std::mem::take(&mut scratch.shared);
        // Kept buffers only: what it held was another batch's (perhaps of
        // another snapshot).
        shared.forget();
        let results = (queries.iter())
            .map(|q| self.run(q, scratch, Some(&mut shared)))
            .collect();
        scratch.shared = shared;
        results
    }

    /// Runs `q`; `shared` (a batch) carries resolved candidates from one
    /// query to the next.
    fn run(
        &self,
        q: &Query<'_>,
        scratch: &mut Scratch,
        shared: Option<&mut candidates::SharedResolve>,
    ) -> Result<QueryResult> {
        let start = Instant::now();
        let def = self.embedding_def(q.key)?;
        if q.k == 0 {
            return Err(Error::InvalidInput("k must be at least 1".into()));
        }
        // Which item each row is: checksummed before any is relied on.
        self.check_identity()?;
        let scorer = self.scorer(q, def)?;
        if q.heads && q.model.is_none() {
            return Err(Error::InvalidInput(
                "per-head values need a three-tower query (Query::three_tower)".into(),
            ));
        }
        if q.log && q.model.is_none() {
            return Err(Error::InvalidInput(
                "a feature log needs a three-tower query (Query::three_tower)".into(),
            ));
        }
        let per_row = scorer.macs_per_row();
        let cap = q.budget.map(|b| match b {
            Budget::Items(n) => n,
            Budget::MultiplyAdds(m) => usize::try_from(m / per_row.max(1)).unwrap_or(usize::MAX),
        });
        if let Some(f) = q.filter {
            f.check(self.schema())?;
        }
        let mut filters: Vec<Option<Compiled<'_>>> = Vec::with_capacity(self.segments().len());
        for s in self.segments() {
            filters.push(q.filter.map(|f| f.compile(s)).transpose()?);
        }
        let mut result = QueryResult {
            snapshot: self.number(),
            ..Default::default()
        };
        result.timings.prepare = start.elapsed();
        scratch.topk.reset(q.k);
        match (q.candidates, &scorer) {
            (Candidates::Ids(ids), _) => {
                if ids.is_empty() {
                    return Err(Error::InvalidInput(
                        "no candidate ids; use Query::full_scan to score every item".into(),
                    ));
                }
                if ids.len() > MAX_CANDIDATES {
                    return Err(Error::InvalidInput(format!(
                        "{} candidate ids exceed the limit of {MAX_CANDIDATES} per query; use a full scan with a filter, or split the query",
                        ids.len()
                    )));
                }
                let cands = (ids, q.k, cap);
                let filters = (q.filter, &filters[..]);
                self.score_candidates(&scorer, cands, filters, scratch, &mut result, shared)?;
            }
            (Candidates::All, _) => scan::scan(
                self.segments(),
                &scorer,
                &filters,
                cap,
                scratch,
                &mut result,
            ),
        }
        result.multiply_adds += (result.scored + scratch.non_finite.len()) as u64 * per_row;
        scratch.non_finite.sort_unstable();
        result.non_finite = std::mem::take(&mut scratch.non_finite);
        result.hits = scratch
            .best
            .iter()
            .map(|&(score, id, _)| Hit { id, score })
            .collect();
        if let (true, Scorer::Model { model, .. }) = (q.heads, &scorer) {
            let nh = model.heads.len();
            result.head_names = model.head_names().into_iter().map(String::from).collect();
            result.heads = scratch
                .best
                .iter()
                .flat_map(|&(_, _, j)| {
                    scratch.head_values[j as usize * nh..(j as usize + 1) * nh]
                        .iter()
                        .copied()
                })
                .collect();
        }
        if let (true, Scorer::Model { .. }) = (q.log, &scorer) {
            result.features = Some(feature_log(&scorer, scratch));
        }
        result.timings.total = start.elapsed();
        Ok(result)
    }

    /// The scorer of `q`: inner product on embedding `def` (the user vector
    /// checked against it), or the bundle's model with the query's inputs
    /// prepared.
    fn scorer<'q, 's>(&'s self, q: &Query<'q>, def: &EmbeddingDef) -> Result<Scorer<'q, 's>> {
        let segs = self.segments();
        Ok(match q.model {
            None => {
                if q.bundle.is_some() || q.fusion.is_some() {
                    return Err(Error::InvalidInput(
                        "the query names a bundle or a fusion but is not a three-tower query; add .three_tower(inputs)".into(),
                    ));
                }
                let d = def.dim as usize;
                if q.user.len() != d {
                    return Err(Error::InvalidInput(format!(
                        "user vector has {} components; embedding {} has dimension {d}",
                        q.user.len(),
                        q.key
                    )));
                }
                if let Some(j) = q.user.iter().position(|x| !x.is_finite()) {
                    return Err(Error::InvalidInput(format!(
                        "user vector component {j} is {}; components must be finite",
                        q.user[j]
                    )));
                }
                let mut blocks = Vec::with_capacity(segs.len());
                for i in 0..segs.len() {
                    let col = self.embedding(i, q.key)?;
                    blocks.push(Block {
                        bytes: col.as_bytes(),
                        stride: col.stride(),
                    });
                }
                Scorer::Dot {
                    level: Level::detect(),
                    dtype: def.dtype,
                    user: q.user,
                    blocks,
                }
            }
            Some(inputs) => {
                let lm = self.loaded_model(q.key, q.bundle)?;
                let model = &*lm.model;
                let fusion = q.fusion.map(|f| &f.spec);
                let prep = model.prepare(q.user, inputs, fusion, self.schema())?;
                let mut inputs = Vec::with_capacity(segs.len());
                for (i, s) in segs.iter().enumerate() {
                    let pre = lm.pre.get(i).map(|p| p.column());
                    let emb = self.embedding(i, q.key)?;
                    inputs.push(model.segment_inputs(s, emb, pre, &prep)?);
                }
                let exact = match model.f32_twin() {
                    Some(twin) if q.exact => {
                        let prep = twin.prepare(
                            q.user,
                            q.model.expect("three-tower"),
                            fusion,
                            self.schema(),
                        )?;
                        let mut segs_f32 = Vec::with_capacity(segs.len());
                        for (i, s) in segs.iter().enumerate() {
                            // The item part computed, never precomputed:
                            // the stored one was computed at the bundle's
                            // precision.
                            let emb = self.embedding(i, q.key)?;
                            segs_f32.push(twin.segment_inputs(s, emb, None, &prep)?);
                        }
                        Some(Box::new(Exact {
                            model: twin,
                            prep,
                            segs: segs_f32,
                        }))
                    }
                    _ => None,
                };
                Scorer::Model {
                    model,
                    prep: Box::new(prep),
                    segs: inputs,
                    exact,
                    par: Parallel {
                        runs: q
                            .threads
                            .unwrap_or_else(|| q.pool.map_or(1, |p| p.current_num_threads())),
                        pool: q.pool,
                    },
                }
            }
        })
    }
}
/// Scores `scratch.locs` (items `scratch.ids`) and selects the top k into
/// `scratch.best`, each tagged with its index into `locs`; adds the time
/// each stage took to `result.timings`, and exact mode's rescoring to
/// `result.multiply_adds`. `scored`: the rows were scored while the
/// candidates were resolved: `scratch.scores` holds the scores of `locs`
/// (a two-tower query), or `scratch.head_values` the model's head values
/// (a split three-tower query), and their times are in `result.timings`.
fn score_locs(
    scorer: &Scorer<'_, '_>,
    scored: bool,
    scratch: &mut Scratch,
    result: &mut QueryResult,
) {
    let n = scratch.locs.len();
    let mut clock = Instant::now();
    match scorer {
        Scorer::Dot {
            level,
            dtype,
            user,
            blocks,
        } if !scored => {
            scratch.scores.clear();
            scratch.scores.resize(n, 0.0);
            kernels::score_gather(
                *level,
                *dtype,
                user,
                blocks,
                &scratch.locs,
                &mut scratch.scores,
                true,
            );
            result.timings.gather += lap(&mut clock);
        }
        Scorer::Dot { .. } => {}
        Scorer::Model {
            model,
            prep,
            segs,
            exact,
            par,
        } => {
            if !scored {
                let (locs, heads, ms) =
                    (&scratch.locs, &mut scratch.head_values, &mut scratch.model);
                let stages = if par.splits(locs.len()) {
                    model.score_on(*par, prep, segs, |feed| feed.publish(locs), heads, ms)
                } else {
                    model.score(prep, segs, locs, heads, ms)
                };
                stages.add_to(&mut result.timings);
            }
            lap(&mut clock);
            // A head fusion reads that is not finite would be ordered
            // silently (by its rank, or as 0 through a negative power).
            let nh = model.heads.len();
            let fused: Vec<usize> = (0..nh).filter(|&h| model.fuses_head(prep, h)).collect();
            drop_non_finite(scratch, nh, |s, j| {
                fused.iter().all(|&h| s.head_values[j * nh + h].is_finite())
            });
            model.fuse(
                prep,
                segs,
                &scratch.locs,
                &scratch.head_values,
                &scratch.ids,
                &mut scratch.scores,
                &mut scratch.model,
            );
            result.timings.heads += lap(&mut clock);
            if let Some(e) = exact {
                let rescored = rescore_exactly(e, scratch, nh);
                result.multiply_adds += rescored as u64 * e.model.macs_per_row(&e.segs);
                result.timings.rescore += lap(&mut clock);
            }
        }
    }
    let nh = match scorer {
        Scorer::Model { model, .. } => model.heads.len(),
        Scorer::Dot { .. } => 0,
    };
    drop_non_finite(scratch, nh, |s, j| s.scores[j].is_finite());
    scratch
        .topk
        .push_all(&scratch.scores, &scratch.ids, &mut scratch.sample);
    scratch.topk.finish(&mut scratch.best);
    result.timings.topk += lap(&mut clock);
}

/// The time since `*clock`, which becomes now.
#[inline]
fn lap(clock: &mut Instant) -> std::time::Duration {
    let now = Instant::now();
    let d = now - *clock;
    *clock = now;
    d
}

/// The feature log of the hits in `scratch.best` ([`Query::log_features`]),
/// from the model that scored them (exact mode: the f32 one).
fn feature_log(scorer: &Scorer<'_, '_>, scratch: &Scratch) -> FeatureLog {
    let Scorer::Model {
        model,
        prep,
        segs,
        exact,
        ..
    } = scorer
    else {
        unreachable!("checked: a three-tower query")
    };
    let (model, prep, segs) = match exact {
        Some(e) => (e.model, &e.prep, &e.segs[..]),
        None => (*model, &**prep, &segs[..]),
    };
    let locs: Vec<Loc> = (scratch.best.iter())
        .map(|&(_, _, j)| scratch.locs[j as usize])
        .collect();
    let (cross_inputs, head_logits, heads) = model.log_rows(prep, segs, &locs);
    FeatureLog {
        inputs: model.input_names(),
        cross_dim: model.cross_in,
        cross_inputs,
        head_names: model.head_names().into_iter().map(String::from).collect(),
        head_logits,
        heads,
        scores: scratch.best.iter().map(|b| b.0).collect(),
    }
}

impl Scorer<'_, '_> {
    /// Multiply-adds scoring one row spends.
    fn macs_per_row(&self) -> u64 {
        match self {
            Scorer::Dot { user, .. } => user.len() as u64,
            Scorer::Model { model, segs, .. } => model.macs_per_row(segs),
        }
    }
}

/// [`Query::exact`]: rescores in f32 every candidate whose low-precision
/// score is within `2 e` of the k-th, `e` the largest difference between
/// the two scores among those rescored (grown until it holds), so every
/// item of the f32 top k is among them (its low-precision score is at
/// least the f32 k-th less `e`, and the low-precision k-th at most the f32
/// k-th plus `e`). Their scores and head values become the f32 ones; the
/// others' scores become `f32::MIN`, below any rescored one. Rank fusion,
/// and a rescored item whose f32 score is not finite (the next one would
/// be needed), rescore every candidate. Returns how many were rescored.
fn rescore_exactly(e: &Exact<'_, '_>, scratch: &mut Scratch, nh: usize) -> usize {
    let n = scratch.locs.len();
    let k = scratch.topk.k().min(n);
    if n == 0 {
        return 0;
    }
    let lp = std::mem::take(&mut scratch.scores);
    let rank = !e.model.fusion_is_per_item(&e.prep);
    let mut chosen = vec![rank; n];
    let mut margin = 0f32;
    let kth = {
        let mut v: Vec<f32> = lp
            .iter()
            .map(|&x| if x.is_nan() { f32::INFINITY } else { x })
            .collect();
        let (_, kth, _) = v.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        *kth
    };
    let (mut f32_scores, mut f32_heads) = (vec![f32::MIN; n], vec![0f32; n * nh]);
    let mut done = vec![false; n];
    let mut err = 0f32;
    loop {
        let todo: Vec<usize> = (0..n)
            .filter(|&j| !done[j] && (chosen[j] || !lp[j].is_finite() || lp[j] >= kth - margin))
            .collect();
        if todo.is_empty() {
            break;
        }
        let locs: Vec<Loc> = todo.iter().map(|&j| scratch.locs[j]).collect();
        let ids: Vec<u64> = todo.iter().map(|&j| scratch.ids[j]).collect();
        let (mut heads, mut scores) = (Vec::new(), Vec::new());
        e.model
            .score(&e.prep, &e.segs, &locs, &mut heads, &mut scratch.model);
        e.model.fuse(
            &e.prep,
            &e.segs,
            &locs,
            &heads,
            &ids,
            &mut scores,
            &mut scratch.model,
        );
        for (t, &j) in todo.iter().enumerate() {
            done[j] = true;
            chosen[j] = true;
            f32_scores[j] = scores[t];
            f32_heads[j * nh..(j + 1) * nh].copy_from_slice(&heads[t * nh..(t + 1) * nh]);
            let fused_ok = heads[t * nh..(t + 1) * nh].iter().all(|h| h.is_finite());
            if !scores[t].is_finite() || !fused_ok {
                // The f32 path drops it, and would take the next item.
                chosen.iter_mut().for_each(|c| *c = true);
            } else if lp[j].is_finite() {
                err = err.max((lp[j] - scores[t]).abs());
            }
        }
        if 2.0 * err > margin {
            margin = 2.0 * err * 1.25 + f32::EPSILON * kth.abs();
        } else if !(0..n).any(|j| chosen[j] && !done[j]) {
            break;
        }
    }
    scratch.scores = f32_scores;
    scratch.head_values = f32_heads;
    done.iter().filter(|&&d| d).count()
}

/// Moves the items `finite` rejects (by index into `locs`) out of `locs`,
/// `ids`, `scores` (when filled) and the `nh` head values per item, into
/// `non_finite`. One pass over the values; nothing moves when all are
/// finite.
fn drop_non_finite(scratch: &mut Scratch, nh: usize, finite: impl Fn(&Scratch, usize) -> bool) {
    let n = scratch.locs.len();
    let Some(first) = (0..n).find(|&j| !finite(scratch, j)) else {
        return;
    };
    let with_scores = scratch.scores.len() == n;
    let mut kept = first;
    for j in first..n {
        if !finite(scratch, j) {
            scratch.non_finite.push(scratch.ids[j]);
            continue;
        }
        scratch.locs[kept] = scratch.locs[j];
        scratch.ids[kept] = scratch.ids[j];
        if with_scores {
            scratch.scores[kept] = scratch.scores[j];
        }
        scratch
            .head_values
            .copy_within(j * nh..(j + 1) * nh, kept * nh);
        kept += 1;
    }
    scratch.locs.truncate(kept);
    scratch.ids.truncate(kept);
    if with_scores {
        scratch.scores.truncate(kept);
    }
    scratch.head_values.truncate(kept * nh);
}
