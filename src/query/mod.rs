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

pub(crate) mod filter;
pub(crate) mod topk;

use std::cell::RefCell;

use crate::error::{Error, Result};
use crate::format::idindex::{self, Hashed};
use crate::kernels::{self, Block, Level, Loc};
use crate::model::{Model, ModelScratch, Prepared, SegmentInputs, UserInputs};
use crate::query::filter::{Compiled, Filter};
use crate::query::topk::TopK;
use crate::read::directory::Directory;
use crate::read::snapshot::Snapshot;
use crate::schema::Dtype;

/// How many candidates ahead the query prefetches id-index home slots
/// (the distance examples/ab_query.rs found best; docs/PERF.md).
pub(crate) const PROBE_AHEAD: usize = 16;

/// [`PROBE_AHEAD`], or its experiment knob with the `experiments` feature.
#[inline]
fn probe_ahead() -> usize {
    #[cfg(feature = "experiments")]
    return crate::experiments::PROBE_AHEAD.load(std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(feature = "experiments"))]
    PROBE_AHEAD
}

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
    heads: bool,
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
            heads: false,
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
            heads: false,
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

    /// Also return each hit's head values (three-tower queries), after
    /// calibration, in [`QueryResult::heads`].
    pub fn with_heads(mut self) -> Self {
        self.heads = true;
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
        prep: Prepared<'q>,
        segs: Vec<SegmentInputs<'s>>,
    },
}

/// One scored item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Item id.
    pub id: u64,
    /// The item's score: the inner product of the user vector and the
    /// item's vector, or, for a three-tower query, the bundle's fused score.
    pub score: f32,
}

/// What a query returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryResult {
    /// The snapshot that served the query.
    pub snapshot: u64,
    /// The top k, score descending, ties by ascending id.
    pub hits: Vec<Hit>,
    /// Candidate ids the snapshot does not hold (each once, in input order).
    pub not_found: Vec<u64>,
    /// Number of distinct found candidates the filter removed.
    pub filtered_out: usize,
    /// Number of distinct items scored (those in `non_finite` excluded).
    pub scored: usize,
    /// Items whose score, or a head value of a three-tower query, came out
    /// infinite or NaN although every input was finite (an overflowing
    /// product or `exp` head, weights of extreme size): they are left out of
    /// `hits` (and of the ranks of `rank` fusion) rather than ordered
    /// silently, and listed here, ascending, each once.
    pub non_finite: Vec<u64>,
    /// Head names of a three-tower query run [`Query::with_heads`] (else empty).
    pub head_names: Vec<String>,
    /// Per hit, its head values in `head_names` order, row-major
    /// (`hits.len() * head_names.len()` values; see [`QueryResult::heads_of`]).
    pub heads: Vec<f32>,
}

impl QueryResult {
    /// The head values of hit `i` (empty unless the query asked for them).
    pub fn heads_of(&self, i: usize) -> &[f32] {
        let h = self.head_names.len();
        self.heads.get(i * h..(i + 1) * h).unwrap_or(&[])
    }
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
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Empty marker of the dedupe set; the id `u64::MAX` itself is tracked apart.
const EMPTY: u64 = u64::MAX;
/// Rows per block of a full scan.
const SCAN_BLOCK: usize = 2048;

/// Inserts `id` into the open-addressing set; false if it was there.
#[inline]
fn insert(set: &mut [u64], max_seen: &mut bool, k: Hashed) -> bool {
    let id = k.id;
    if id == EMPTY {
        return !std::mem::replace(max_seen, true);
    }
    let mask = set.len() - 1;
    let mut s = k.h as usize & mask;
    loop {
        if set[s] == EMPTY {
            set[s] = id;
            return true;
        }
        if set[s] == id {
            return false;
        }
        s = (s + 1) & mask;
    }
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

    /// Runs `q` with caller-owned buffers.
    pub fn query_with(&self, q: &Query<'_>, scratch: &mut Scratch) -> Result<QueryResult> {
        let def = self.embedding_def(q.key)?;
        if q.k == 0 {
            return Err(Error::InvalidInput("k must be at least 1".into()));
        }
        let segs = self.segments();
        // Which item each row is: checksummed before any is relied on.
        self.check_identity()?;
        let scorer = match q.model {
            None => {
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
                let lm = self.loaded_model(q.key)?;
                let model = &*lm.model;
                let prep = model.prepare(q.user, inputs)?;
                let mut inputs = Vec::with_capacity(segs.len());
                for (i, s) in segs.iter().enumerate() {
                    let pre = lm.pre.get(i).map(|p| p.column());
                    inputs.push(model.segment_inputs(s, self.embedding(i, q.key)?, pre)?);
                }
                Scorer::Model {
                    model,
                    prep,
                    segs: inputs,
                }
            }
        };
        if q.heads && q.model.is_none() {
            return Err(Error::InvalidInput(
                "per-head values need a three-tower query (Query::three_tower)".into(),
            ));
        }
        if let Some(f) = q.filter {
            f.check(self.schema())?;
        }
        let mut filters: Vec<Option<Compiled<'_>>> = Vec::with_capacity(segs.len());
        for s in segs {
            filters.push(q.filter.map(|f| f.compile(s)).transpose()?);
        }
        let mut result = QueryResult {
            snapshot: self.number(),
            ..Default::default()
        };
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
                self.score_candidates(&scorer, ids, &filters, scratch, &mut result, q.k)?;
            }
            (
                Candidates::All,
                Scorer::Dot {
                    level,
                    dtype,
                    user,
                    blocks,
                },
            ) => {
                scratch.scores.resize(SCAN_BLOCK, 0.0);
                for (si, seg) in segs.iter().enumerate() {
                    let seg_ids = seg.ids();
                    let deleted = seg.deleted_words();
                    let filter = &filters[si];
                    let mut first = 0;
                    while first < seg.rows() {
                        let n = SCAN_BLOCK.min(seg.rows() - first);
                        let out = &mut scratch.scores[..n];
                        kernels::score_range(*level, *dtype, user, blocks[si], first, out);
                        for (i, &s) in out.iter().enumerate() {
                            let r = first + i;
                            if deleted.is_some_and(|w| w[r / 64] >> (r % 64) & 1 == 1) {
                                continue;
                            }
                            if filter.as_ref().is_some_and(|f| !f.eval(r)) {
                                result.filtered_out += 1;
                                continue;
                            }
                            if !s.is_finite() {
                                scratch.non_finite.push(seg_ids[r]);
                                continue;
                            }
                            scratch.topk.push(s, seg_ids[r], 0);
                            result.scored += 1;
                        }
                        first += n;
                    }
                }
                scratch.topk.finish(&mut scratch.best);
            }
            (Candidates::All, Scorer::Model { .. }) => {
                // Every live row that passes the filter, then one pass of
                // the model over them (rank fusion needs them all at once).
                scratch.locs.clear();
                scratch.ids.clear();
                for (si, seg) in segs.iter().enumerate() {
                    let deleted = seg.deleted_words();
                    for (r, &id) in seg.ids().iter().enumerate() {
                        if deleted.is_some_and(|w| w[r / 64] >> (r % 64) & 1 == 1) {
                            continue;
                        }
                        if filters[si].as_ref().is_some_and(|f| !f.eval(r)) {
                            result.filtered_out += 1;
                            continue;
                        }
                        scratch.locs.push(Loc {
                            block: si as u32,
                            row: r as u32,
                        });
                        scratch.ids.push(id);
                    }
                }
                score_locs(&scorer, scratch);
                result.scored = scratch.locs.len();
            }
        }
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
        Ok(result)
    }

    /// The candidate-id path. Pass 1 dedupes and probes the id index with
    /// the home slots of upcoming ids prefetched (with several segments:
    /// the snapshot's id directory and the largest segment's index, see
    /// `resolve`); pass 2 drops tombstones and applies the
    /// filter; pass 3 scores the rows (the prefetching
    /// kernel, or the model a block at a time) into the top-k. The
    /// `ids[row] == id` confirmation (which costs one more random cache
    /// line, and on a large store one more page walk, per candidate) is done
    /// for the returned hits only: if any fails (a damaged id index), the
    /// query is redone confirming every candidate, so a wrong row is never
    /// returned.
    fn score_candidates(
        &self,
        scorer: &Scorer<'_, '_>,
        ids: &[u64],
        filters: &[Option<Compiled<'_>>],
        scratch: &mut Scratch,
        result: &mut QueryResult,
        k: usize,
    ) -> Result<()> {
        let segs = self.segments();
        let views: Vec<_> = segs.iter().map(|s| s.index_view()).collect();
        let deleted: Vec<_> = segs.iter().map(|s| s.deleted_words()).collect();
        let dir = if views.len() > 1 {
            self.directory()?
        } else {
            None
        };
        for confirm_all in [false, true] {
            let cap = (ids.len() * 2).next_power_of_two().max(16);
            scratch.seen.clear();
            scratch.seen.resize(cap, EMPTY);
            let mut max_seen = false;
            scratch.missing.clear();
            scratch.locs.clear();
            scratch.ids.clear();
            scratch.topk.reset(k);
            result.filtered_out = 0;
            // Pass 1: dedupe and look up.
            resolve(
                segs,
                &views,
                &deleted,
                dir,
                ids,
                scratch,
                &mut max_seen,
                confirm_all,
            );
            // Pass 2: tombstones, filter (and, on the slow path, confirmation).
            // Every stage of pass 1 returns live rows only, so without a
            // filter or confirmation there is nothing to drop.
            if confirm_all || filters.iter().any(Option::is_some) {
                let mut kept = 0;
                for j in 0..scratch.locs.len() {
                    let (loc, id) = (scratch.locs[j], scratch.ids[j]);
                    let (si, row) = (loc.block as usize, loc.row as usize);
                    // Pass 1 found live rows only; the slow path checks
                    // again, and that the row holds the id.
                    let gone = confirm_all
                        && (deleted[si].is_some_and(|w| w[row / 64] >> (row % 64) & 1 == 1)
                            || views[si].ids.get(row) != Some(&id));
                    if gone {
                        scratch.missing.push((scratch.pos[j], id));
                        continue;
                    }
                    if filters[si].as_ref().is_some_and(|f| !f.eval(row)) {
                        result.filtered_out += 1;
                        continue;
                    }
                    scratch.locs[kept] = loc;
                    scratch.ids[kept] = id;
                    kept += 1;
                }
                scratch.locs.truncate(kept);
                scratch.ids.truncate(kept);
            }
            scratch.pos.clear();
            // Pass 3: score.
            scratch.non_finite.clear();
            score_locs(scorer, scratch);
            result.scored = scratch.locs.len();
            // Confirm the hits.
            if !confirm_all {
                // The hits' id lines, fetched together rather than one
                // miss after another.
                for &(_, _, j) in &scratch.best {
                    let loc = scratch.locs[j as usize];
                    if let Some(r) = views[loc.block as usize].ids.get(loc.row as usize..) {
                        kernels::prefetch_line(r.as_ptr() as *const u8);
                    }
                }
            }
            let ok = confirm_all
                || scratch.best.iter().all(|&(_, id, j)| {
                    let loc = scratch.locs[j as usize];
                    views[loc.block as usize].ids.get(loc.row as usize) == Some(&id)
                });
            if ok {
                break;
            }
        }
        scratch.missing.sort_unstable_by_key(|m| m.0);
        result.not_found = scratch.missing.iter().map(|m| m.1).collect();
        Ok(())
    }
}

/// Pass 1: dedupes the candidates and finds each one's live row, home
/// slots prefetched. One segment: its id index, home buckets first (one
/// line each) and then, with the next bucket prefetched, the few ids whose
/// home bucket is full without them. Several: every candidate is
/// probed in the snapshot's id directory `dir`; or, if the directory leaves
/// the largest segment out (it holds at least half of the live rows), in
/// that segment's id index first and, if not live there, in the directory.
/// Most candidates thus cost one probe: in a store of a large base plus
/// small recent segments, one of the base; in a store of equal segments,
/// one of the directory. Since at most one live row holds an id, the order
/// does not change the result. Fills `locs`, `ids` and `missing` (and,
/// with `confirm_all`, `pos`);
/// every stage returns live rows only (segment probes check tombstones,
/// the directory holds live rows), which pass 2 relies on.
#[allow(clippy::too_many_arguments)]
fn resolve(
    segs: &[crate::read::segment::Segment],
    views: &[idindex::IdIndexView<'_>],
    deleted: &[Option<&[u64]>],
    dir: Option<&Directory>,
    ids: &[u64],
    scratch: &mut Scratch,
    max_seen: &mut bool,
    confirm_all: bool,
) {
    let ahead = probe_ahead();
    let found = |scratch: &mut Scratch, pos: u32, id: u64, (si, row): (usize, usize)| {
        if confirm_all {
            if let Some(r) = views[si].ids.get(row..) {
                kernels::prefetch_line(r.as_ptr() as *const u8);
            }
            // Only the slow path's pass 2 drops rows as not found.
            scratch.pos.push(pos);
        }
        scratch.locs.push(Loc {
            block: si as u32,
            row: row as u32,
        });
        scratch.ids.push(id);
    };
    // A stage that holds nothing (the prefetch address is never read).
    let nothing = (|_: Hashed| None, |_: u64| std::ptr::null());
    // Whether row `row` of segment `si` is not deleted.
    let live =
        |si: usize, row: usize| deleted[si].is_none_or(|w| w[row / 64] >> (row % 64) & 1 == 0);
    // Segment `si`'s id index, tombstones checked.
    let segment = |si: usize| {
        let v = &views[si];
        (
            move |k: Hashed| {
                // With `confirm_all`, pass 2 checks `ids[row] == id`.
                let row = v.probe_hashed(k)?;
                live(si, row).then_some((si, row))
            },
            move |h: u64| v.home_addr(h),
        )
    };
    match (views.len(), dir) {
        (0, _) => two_stage(ids, scratch, max_seen, ahead, (nothing, nothing), found),
        (1, _) => {
            // Home buckets first; the few ids whose bucket is full without
            // them, in a second pass with their next lines prefetched.
            let v = &views[0];
            let home = (
                move |k: Hashed| {
                    let row = v.probe_home(k)??;
                    live(0, row).then_some((0, row))
                },
                move |h: u64| v.home_addr(h),
            );
            let rest = (segment(0).0, move |h: u64| v.next_addr(h));
            two_stage(ids, scratch, max_seen, ahead, (home, rest), found)
        }
        (_, Some(dir)) => {
            let in_dir = (|k: Hashed| dir.get(k), |h: u64| dir.home_addr(h));
            match dir.largest {
                None => two_stage(ids, scratch, max_seen, ahead, (in_dir, nothing), found),
                Some(l) => two_stage(ids, scratch, max_seen, ahead, (segment(l), in_dir), found),
            }
        }
        // No directory (a segment beyond u32 rows): one id at a time.
        (n, None) => {
            let live = (
                |k: Hashed| crate::read::segment::find_live(n, |j| &segs[j], k.id),
                |_: u64| std::ptr::null(),
            );
            two_stage(ids, scratch, max_seen, ahead, (live, nothing), found)
        }
    }
}

/// A home-slot lookup (an id with its hash → segment index and row) and
/// the address of the home slot of the id with a given hash, to prefetch.
type Stage<L, A> = (L, A);

/// Most ids ahead whose home slots [`two_stage`] prefetches (the size of
/// its ring of hashes, less one).
const MAX_AHEAD: usize = 63;

/// [`resolve`]'s two passes: dedupe and look every candidate
/// up in the first stage; look the ones it does not hold up in the second.
fn two_stage<L1, A1, L2, A2>(
    ids: &[u64],
    scratch: &mut Scratch,
    max_seen: &mut bool,
    ahead: usize,
    ((first, first_addr), (second, second_addr)): (Stage<L1, A1>, Stage<L2, A2>),
    found: impl Fn(&mut Scratch, u32, u64, (usize, usize)),
) where
    L1: Fn(Hashed) -> Option<(usize, usize)>,
    A1: Fn(u64) -> *const u8,
    L2: Fn(Hashed) -> Option<(usize, usize)>,
    A2: Fn(u64) -> *const u8,
{
    scratch.pend.clear();
    // Each id is hashed once, `ahead` ids before its lookup (when its home
    // slot is prefetched), and the hash kept in a ring until then.
    let ahead = ahead.clamp(1, MAX_AHEAD);
    let mut ring = [0u64; MAX_AHEAD + 1];
    for (i, &a) in ids.iter().enumerate().take(ahead) {
        ring[i] = idindex::hash(a);
        kernels::prefetch_line(first_addr(ring[i]));
    }
    for (i, &id) in ids.iter().enumerate() {
        if let Some(&a) = ids.get(i + ahead) {
            let h = idindex::hash(a);
            ring[(i + ahead) & MAX_AHEAD] = h;
            kernels::prefetch_line(first_addr(h));
        }
        let k = Hashed {
            id,
            h: ring[i & MAX_AHEAD],
        };
        if !insert(&mut scratch.seen, max_seen, k) {
            continue; // duplicate
        }
        match first(k) {
            Some(at) => found(scratch, i as u32, id, at),
            None => scratch.pend.push((i as u32, k)),
        }
    }
    for j in 0..scratch.pend.len() {
        if let Some(&(_, a)) = scratch.pend.get(j + ahead) {
            kernels::prefetch_line(second_addr(a.h));
        }
        let (pos, k) = scratch.pend[j];
        match second(k) {
            Some(at) => found(scratch, pos, k.id, at),
            None => scratch.missing.push((pos, k.id)),
        }
    }
}

/// Scores `scratch.locs` (items `scratch.ids`) and selects the top k into
/// `scratch.best`, each tagged with its index into `locs`.
fn score_locs(scorer: &Scorer<'_, '_>, scratch: &mut Scratch) {
    let n = scratch.locs.len();
    match scorer {
        Scorer::Dot {
            level,
            dtype,
            user,
            blocks,
        } => {
            scratch.scores.clear();
            scratch.scores.resize(n, 0.0);
            kernels::score_gather(
                *level,
                *dtype,
                user,
                blocks,
                &scratch.locs,
                &mut scratch.scores,
            );
        }
        Scorer::Model { model, prep, segs } => {
            model.score(
                prep,
                segs,
                &scratch.locs,
                &mut scratch.head_values,
                &mut scratch.model,
            );
            // A head fusion reads that is not finite would be ordered
            // silently (by its rank, or as 0 through a negative power).
            let nh = model.heads.len();
            let fused: Vec<usize> = (0..nh).filter(|&h| model.fuses_head(h)).collect();
            drop_non_finite(scratch, nh, |s, j| {
                fused.iter().all(|&h| s.head_values[j * nh + h].is_finite())
            });
            model.fuse(
                &scratch.head_values,
                &scratch.ids,
                &mut scratch.scores,
                &mut scratch.model,
            );
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

/// Support for benchmarks: not part of the supported API.
#[doc(hidden)]
pub mod bench_support {
    use super::*;

    /// One reference into every cache line a query for `ids` must touch in
    /// memory: each id's home slot in the id index and every line of its
    /// embedding row. Ids not in the snapshot
    /// are skipped. Built untimed; [`touch`] then measures the gather floor.
    pub fn floor_lines<'a>(snap: &'a Snapshot, key: &str, ids: &[u64]) -> Result<Vec<&'a u8>> {
        let def = snap.embedding_def(key)?;
        let rb = def.dtype.row_bytes(def.dim);
        let mut out = Vec::with_capacity(ids.len() * (2 + rb.div_ceil(64)));
        for &id in ids {
            let Some(at) = snap.lookup(id) else { continue };
            let seg = &snap.segments()[at.segment];
            let v = seg.index_view();
            let slot = v.home_slot(id);
            out.push(&bytemuck::cast_slice::<[u64; 2], u8>(&v.table[slot..slot + 1])[0]);
            let col = snap.embedding(at.segment, key)?;
            let row = &col.row_bytes(at.row)[..rb];
            let first = row.as_ptr() as usize;
            let mut off = 0;
            while off < rb {
                out.push(&row[off]);
                // Next cache-line boundary.
                off = ((first + off) / 64 + 1) * 64 - first;
            }
        }
        Ok(out)
    }

    /// Scores rows `0..out.len()` of a block of rows (`stride` bytes apart)
    /// with the kernel this CPU runs: the in-cache kernel benchmark.
    pub fn score_block(
        dtype: crate::schema::Dtype,
        user: &[f32],
        bytes: &[u8],
        stride: usize,
        out: &mut [f32],
    ) {
        kernels::score_range(
            Level::detect(),
            dtype,
            user,
            Block { bytes, stride },
            0,
            out,
        );
    }

    /// One model layer on data in cache (`[m, k]` activations times a
    /// packed `[k, n]` weight, plus bias, through ReLU), the kernel
    /// three-tower scoring runs per block: its rate against the core's FMA
    /// peak.
    pub struct LayerProduct {
        m: usize,
        w: crate::kernels::gemm::Weights,
        a: Vec<f32>,
        b: Vec<f32>,
        c: Vec<f32>,
    }

    impl LayerProduct {
        /// Random-ish activations and weights of the given shape.
        pub fn new(m: usize, k: usize, n: usize) -> Self {
            let a = (0..m * k)
                .map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 5) % 11) as f32 * 0.1 - 0.5)
                .collect();
            LayerProduct {
                m,
                w: crate::kernels::gemm::Weights::new(&w, k, k, n),
                a,
                b: (0..n).map(|j| (j % 7) as f32 * 0.1 - 0.3).collect(),
                c: vec![0.0; m * n],
            }
        }

        /// Runs the product once; returns one output value (keep it).
        pub fn run(&mut self) -> f32 {
            let (k, n) = (self.w.k, self.w.n);
            use crate::kernels::gemm::{matmul, Start};
            matmul(
                self.m,
                &self.a,
                k,
                &self.w,
                &mut self.c,
                n,
                Start::Bias(&self.b),
                true,
            );
            self.c[self.c.len() / 2]
        }

        /// FLOPs of one run (2 per multiply-add).
        pub fn flops(&self) -> u64 {
            2 * (self.m * self.w.k * self.w.n) as u64
        }
    }

    /// The format's id hash (`examples/prefetch_overlap.rs` uses it as a
    /// unit of CPU work, the query's per-id hashing).
    #[inline]
    pub fn id_hash(id: u64) -> u64 {
        idindex::hash(id)
    }

    /// Prefetch hint for `p`.
    pub fn prefetch(p: *const u8) {
        kernels::prefetch_line(p)
    }

    /// Reads one byte of every line in `lines`, prefetching 32 lines ahead:
    /// the memory floor of a query (nothing is computed).
    pub fn touch(lines: &[&u8]) -> u64 {
        let mut sum = 0u64;
        for (i, l) in lines.iter().enumerate() {
            if let Some(a) = lines.get(i + 32) {
                kernels::prefetch_line(*a as *const u8);
            }
            sum = sum.wrapping_add(std::hint::black_box(**l) as u64);
        }
        sum
    }
}
