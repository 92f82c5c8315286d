//! The candidate-id path: dedupe and resolve the ids (id directory, id
//! indexes, home slots prefetched), drop tombstones, filter, score (a
//! two-tower query without filter or budget: while resolving), confirm.

use super::filter::{Compiled, Filter};
use super::{score_locs, QueryResult, Scorer, Scratch};
use crate::error::Result;
use crate::format::idindex;
use crate::format::idindex::Hashed;
use crate::kernels;
use crate::kernels::Loc;
use crate::kernels::{Block, Level};
use crate::model::Feed;
use crate::read::directory::Directory;
use crate::read::snapshot::Snapshot;
use crate::schema::Dtype;
use std::time::Instant;

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

/// Empty marker of the dedupe set; the id `u64::MAX` itself is tracked apart.
const EMPTY: u64 = u64::MAX;
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
    /// The candidate-id path. Pass 1 dedupes and probes the id index with
    /// the home slots of upcoming ids prefetched (with several segments:
    /// the snapshot's id directory and the largest segment's index, see
    /// `resolve`); pass 2 drops tombstones and applies the
    /// filter; pass 3 scores the rows (the prefetching
    /// kernel, or the model a block at a time) into the top-k. A two-tower
    /// query with neither filter nor budget cut scores its rows during
    /// pass 1 instead (see `Fused`), which has then nothing to drop. The
    /// `ids[row] == id` confirmation (which costs one more random cache
    /// line, and on a large store one more page walk, per candidate) is done
    /// for the returned hits only: if any fails (a damaged id index), the
    /// query is redone confirming every candidate, so a wrong row is never
    /// returned. With a budget of `cap` items, the first `cap` candidates
    /// in the caller's order that survive pass 2 are scored. With `shared`
    /// (a batch), passes 1 and 2 are skipped when it holds the outcome for
    /// the same candidates, filter and budget, and it is left holding this
    /// query's.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn score_candidates(
        &self,
        scorer: &Scorer<'_, '_>,
        (ids, k, budget): (&[u64], usize, Option<usize>),
        (filter, filters): (Option<&Filter>, &[Option<Compiled<'_>>]),
        scratch: &mut Scratch,
        result: &mut QueryResult,
        mut shared: Option<&mut SharedResolve>,
    ) -> Result<()> {
        let mut clock = Instant::now();
        let segs = self.segments();
        let views: Vec<_> = segs.iter().map(|s| s.index_view()).collect();
        let deleted: Vec<_> = segs.iter().map(|s| s.deleted_words()).collect();
        let dir = if views.len() > 1 {
            self.directory_for_query()?
        } else {
            None
        };
        // Whether every live candidate is kept (nothing is dropped after
        // pass 1), so its rows can be scored as pass 1 finds them.
        let keeps_all =
            filters.iter().all(Option::is_none) && budget.is_none_or(|c| c >= ids.len());
        // A two-tower query that keeps every live candidate reads each row
        // while the ids are still being resolved (see `Fused`).
        let fused = match scorer {
            Scorer::Dot {
                level,
                dtype,
                user,
                blocks,
            } if keeps_all && fused_chunk() > 0 => Some(Fused {
                level: *level,
                dtype: *dtype,
                user,
                blocks,
                row_bytes: dtype.row_bytes(user.len() as u32),
            }),
            _ => None,
        };
        // A three-tower query split over threads that keeps every live
        // candidate starts scoring while the ids are still being resolved
        // (see `Feed`): the other threads score the first blocks meanwhile.
        let split = match scorer {
            Scorer::Model {
                model,
                prep,
                segs,
                par,
                ..
            } if keeps_all && par.splits(ids.len()) && overlap_resolve() => {
                Some((model, prep, segs, par))
            }
            _ => None,
        };
        for confirm_all in [false, true] {
            scratch.topk.reset(k);
            let reuse = shared
                .as_deref()
                .filter(|s| !confirm_all && s.holds(ids, filter, budget));
            // Whether pass 1 scored the rows too (a fused two-tower pass,
            // or a split model's), and whether its time counts as the
            // gather (a fused pass: resolution and scoring in one).
            let (mut scored, mut gathered) = (false, false);
            if let Some(s) = reuse {
                s.restore(scratch, result);
            } else {
                let index = (&views[..], &deleted[..], dir);
                match (split.filter(|_| !confirm_all), &fused) {
                    (Some((model, prep, segs, par)), _) => {
                        let mut heads = std::mem::take(&mut scratch.head_values);
                        let mut ms = std::mem::take(&mut scratch.model);
                        let stages = model.score_on(
                            *par,
                            prep,
                            segs,
                            |feed| {
                                self.resolve_candidates(
                                    (ids, budget, confirm_all),
                                    index,
                                    filters,
                                    Along::Publish(feed),
                                    scratch,
                                    result,
                                );
                                result.timings.resolve += super::lap(&mut clock);
                            },
                            &mut heads,
                            &mut ms,
                        );
                        debug_assert_eq!(heads.len(), scratch.locs.len() * model.heads.len());
                        (scratch.head_values, scratch.model) = (heads, ms);
                        stages.add_to(&mut result.timings);
                        clock = Instant::now();
                        scored = true;
                    }
                    (None, fused) => {
                        let fused = fused.as_ref().filter(|_| !confirm_all);
                        self.resolve_candidates(
                            (ids, budget, confirm_all),
                            index,
                            filters,
                            fused.map_or(Along::Nothing, Along::Score),
                            scratch,
                            result,
                        );
                        (scored, gathered) = (fused.is_some(), fused.is_some());
                    }
                }
                if let Some(s) = shared.as_deref_mut() {
                    s.save(ids, filter, budget, scratch, result, !confirm_all);
                }
            }
            let pass = super::lap(&mut clock);
            if gathered {
                result.timings.gather += pass;
            } else {
                result.timings.resolve += pass;
            }
            // Pass 3: score (if not fused).
            scratch.non_finite.clear();
            score_locs(scorer, scored, scratch, result);
            clock = Instant::now();
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
            result.timings.topk += super::lap(&mut clock);
            if ok {
                break;
            }
        }
        result.filtered.sort_unstable();
        scratch.missing.sort_unstable_by_key(|m| m.0);
        result.not_found = scratch.missing.iter().map(|m| m.1).collect();
        result.timings.resolve += super::lap(&mut clock);
        Ok(())
    }

    /// Passes 1 and 2 (and the budget) of [`Snapshot::score_candidates`]:
    /// fills `scratch.locs`, `ids` and `missing`, and the result's
    /// filtered and over-budget fields.
    fn resolve_candidates(
        &self,
        (ids, budget, confirm_all): (&[u64], Option<usize>, bool),
        (views, deleted, dir): Index<'_>,
        filters: &[Option<Compiled<'_>>],
        along: Along<'_, '_, '_>,
        scratch: &mut Scratch,
        result: &mut QueryResult,
    ) {
        let segs = self.segments();
        {
            let cap = (ids.len() * 2).next_power_of_two().max(16);
            scratch.seen.clear();
            scratch.seen.resize(cap, EMPTY);
            let mut max_seen = false;
            scratch.missing.clear();
            scratch.locs.clear();
            scratch.ids.clear();
            result.filtered_out = 0;
            result.filtered.clear();
            result.over_budget = 0;
            result.over_budget_ids.clear();
            // Positions in `ids` are kept beside the rows when the budget
            // may need them (and on the slow path).
            let track = confirm_all || budget.is_some_and(|c| c < ids.len());
            scratch.pos.clear();
            // Pass 1: dedupe and look up.
            resolve(
                segs,
                views,
                deleted,
                dir,
                ids,
                scratch,
                &mut max_seen,
                (confirm_all, track),
                along,
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
                        result.filtered.push(id);
                        continue;
                    }
                    scratch.locs[kept] = loc;
                    scratch.ids[kept] = id;
                    if track {
                        scratch.pos[kept] = scratch.pos[j];
                    }
                    kept += 1;
                }
                scratch.locs.truncate(kept);
                scratch.ids.truncate(kept);
                scratch.pos.truncate(kept.min(scratch.pos.len()));
            }
            if let Some(cap) = budget.filter(|&c| c < scratch.locs.len()) {
                over_budget(scratch, cap, result);
            }
            scratch.pos.clear();
        }
    }
}

/// The id indexes of a snapshot's segments, their tombstones, and the id
/// directory of a snapshot of several segments.
type Index<'a> = (
    &'a [idindex::IdIndexView<'a>],
    &'a [Option<&'a [u64]>],
    Option<&'a Directory>,
);

/// What passes 1 and 2 made of a batch's last candidate list, reused by
/// the next query over the same candidates, filter and budget
/// ([`Snapshot::query_batch`]).
#[derive(Debug, Default)]
pub(super) struct SharedResolve {
    /// Whether the rest holds an outcome (not after a confirmation pass).
    valid: bool,
    candidates: Vec<u64>,
    filter: Option<Filter>,
    budget: Option<usize>,
    locs: Vec<Loc>,
    ids: Vec<u64>,
    missing: Vec<(u32, u64)>,
    filtered_out: usize,
    filtered: Vec<u64>,
    over_budget: usize,
    over_budget_ids: Vec<u64>,
}

impl SharedResolve {
    /// Drops the outcome (its buffers are kept).
    pub(super) fn forget(&mut self) {
        self.valid = false;
    }

    /// Whether this holds the outcome for these candidates, filter and budget.
    fn holds(&self, ids: &[u64], filter: Option<&Filter>, budget: Option<usize>) -> bool {
        self.valid
            && self.budget == budget
            && self.filter.as_ref() == filter
            && self.candidates == ids
    }

    /// Keeps the outcome now in `scratch` and `result` (if `valid`).
    fn save(
        &mut self,
        ids: &[u64],
        filter: Option<&Filter>,
        budget: Option<usize>,
        scratch: &Scratch,
        result: &QueryResult,
        valid: bool,
    ) {
        self.valid = valid;
        if !valid {
            return;
        }
        self.candidates.clear();
        self.candidates.extend_from_slice(ids);
        if self.filter.as_ref() != filter {
            self.filter = filter.cloned();
        }
        self.budget = budget;
        self.locs.clone_from(&scratch.locs);
        self.ids.clone_from(&scratch.ids);
        self.missing.clone_from(&scratch.missing);
        self.filtered_out = result.filtered_out;
        self.filtered.clone_from(&result.filtered);
        self.over_budget = result.over_budget;
        self.over_budget_ids.clone_from(&result.over_budget_ids);
    }

    /// Puts the kept outcome into `scratch` and `result`.
    fn restore(&self, scratch: &mut Scratch, result: &mut QueryResult) {
        scratch.locs.clone_from(&self.locs);
        scratch.ids.clone_from(&self.ids);
        scratch.missing.clone_from(&self.missing);
        result.filtered_out = self.filtered_out;
        result.filtered.clone_from(&self.filtered);
        result.over_budget = self.over_budget;
        result.over_budget_ids.clone_from(&self.over_budget_ids);
    }
}

/// [`crate::Budget`]: keeps the `cap` rows (of more) whose candidates come
/// first in the caller's order (`scratch.pos`, distinct positions), and
/// moves the others' ids to `result.over_budget_ids`, in that order.
fn over_budget(scratch: &mut Scratch, cap: usize, result: &mut QueryResult) {
    let mut order = scratch.pos.clone();
    let (_, &mut cut, _) = order.select_nth_unstable(cap);
    let mut over: Vec<(u32, u64)> = Vec::with_capacity(scratch.locs.len() - cap);
    let mut kept = 0;
    for j in 0..scratch.locs.len() {
        if scratch.pos[j] >= cut {
            over.push((scratch.pos[j], scratch.ids[j]));
            continue;
        }
        scratch.locs[kept] = scratch.locs[j];
        scratch.ids[kept] = scratch.ids[j];
        scratch.pos[kept] = scratch.pos[j];
        kept += 1;
    }
    scratch.locs.truncate(kept);
    scratch.ids.truncate(kept);
    scratch.pos.truncate(kept);
    over.sort_unstable_by_key(|o| o.0);
    result.over_budget = over.len();
    result.over_budget_ids = over.into_iter().map(|o| o.1).collect();
}

/// Pass 1: dedupes the candidates and finds each one's live row, home
/// slots prefetched. One segment: its id index, home buckets first (one
/// line each) and then, with the next bucket prefetched, the few ids whose
/// home bucket is full without them. Several: every candidate is
/// probed in the snapshot's id directory `dir` (home buckets first, the
/// rest in a second pass, as for one segment); or, if the directory leaves
/// the largest segment out (it holds at least half of the live rows), in
/// that segment's home buckets first and, if not live there, in the rest
/// of its index and then the directory, in a second pass.
/// Most candidates thus cost one probe: in a store of a large base plus
/// small recent segments, one of the base; in a store of equal segments,
/// one of the directory. Since at most one live row holds an id, the order
/// does not change the result. Fills `locs`, `ids` and `missing` (and,
/// with `confirm_all`, `pos`);
/// every stage returns live rows only (segment probes check tombstones,
/// the directory holds live rows), which pass 2 relies on. `track`: push
/// each found row's position in `ids` to `pos` (the budget needs them).
/// `along` says what else is done with the rows found (with
/// [`Along::Score`], `scores` is filled, one per `locs` entry).
#[allow(clippy::too_many_arguments)]
fn resolve(
    segs: &[crate::read::segment::Segment],
    views: &[idindex::IdIndexView<'_>],
    deleted: &[Option<&[u64]>],
    dir: Option<&Directory>,
    ids: &[u64],
    scratch: &mut Scratch,
    max_seen: &mut bool,
    (confirm_all, track): (bool, bool),
    along: Along<'_, '_, '_>,
) {
    let ahead = probe_ahead();
    if let Along::Score(_) = along {
        scratch.scores.clear();
        scratch.scores.resize(ids.len(), 0.0);
    }
    // Scoring: rows found up to `mark` are scored at the next chunk's end
    // (their lines prefetched a chunk earlier); `done`: rows scored.
    // Publishing: every row found is published at a chunk's end; `done`:
    // rows published.
    let (mut done, mut mark) = (0, 0);
    let mut chunk = |scratch: &mut Scratch, last: bool| match along {
        Along::Nothing => {}
        Along::Score(f) => {
            let upto = if last { scratch.locs.len() } else { mark };
            f.score(scratch, done..upto);
            done = upto;
            mark = scratch.locs.len();
            if last {
                scratch.scores.truncate(done);
            }
        }
        Along::Publish(feed) => {
            feed.publish(&scratch.locs[done..]);
            done = scratch.locs.len();
        }
    };
    let found = Found {
        along,
        views,
        confirm_all,
        track,
    };
    let found = &found;
    // A stage that holds nothing (the prefetch address is never read).
    let nothing = (|_: Hashed| None, |_: u64| std::ptr::null());
    // Whether row `row` of segment `si` is not deleted.
    let live =
        |si: usize, row: usize| deleted[si].is_none_or(|w| w[row / 64] >> (row % 64) & 1 == 0);
    // Segment `si`'s home buckets: the lookup if its home bucket settles
    // it, and the bucket's address. Tables of the current layout are read
    // as buckets (no layout checks per candidate: `IdIndexView::buckets`).
    let home = |si: usize| {
        let v = &views[si];
        let b = v.buckets();
        (
            move |k: Hashed| match b {
                Some(b) => b.probe_home(k),
                None => v.probe_home(k),
            },
            move |h: u64| b.map_or_else(|| v.home_addr(h), |b| b.home_addr(h)),
        )
    };
    // Segment `si`'s whole id index, tombstones checked (for the ids its
    // home buckets did not settle).
    let segment = |si: usize| {
        let v = &views[si];
        move |k: Hashed| {
            // With `confirm_all`, pass 2 checks `ids[row] == id`.
            let row = v.probe_hashed(k)?;
            live(si, row).then_some((si, row))
        }
    };
    match (views.len(), dir) {
        (0, _) => two_stage(
            ids,
            scratch,
            max_seen,
            ahead,
            (nothing, nothing),
            found,
            &mut chunk,
        ),
        (1, _) => {
            // Home buckets first; the few ids whose bucket is full without
            // them, in a second pass with their next lines prefetched.
            let v = &views[0];
            let (in_home, addr) = home(0);
            let first = (
                move |k: Hashed| {
                    let row = in_home(k)??;
                    live(0, row).then_some((0, row))
                },
                addr,
            );
            let rest = (segment(0), move |h: u64| v.next_addr(h));
            two_stage(
                ids,
                scratch,
                max_seen,
                ahead,
                (first, rest),
                found,
                &mut chunk,
            )
        }
        (_, Some(dir)) => {
            let d = dir.view();
            match dir.largest {
                // Home buckets first, as for one segment.
                None => two_stage(
                    ids,
                    scratch,
                    max_seen,
                    ahead,
                    (
                        (
                            move |k: Hashed| d.probe_home(k)?,
                            move |h: u64| d.home_addr(h),
                        ),
                        (move |k: Hashed| d.get(k), move |h: u64| d.next_addr(h)),
                    ),
                    found,
                    &mut chunk,
                ),
                // The largest segment's home buckets first; then the rest
                // of its index, and the directory.
                Some(l) => {
                    let (in_home, addr) = home(l);
                    let in_largest = segment(l);
                    let v = &views[l];
                    two_stage(
                        ids,
                        scratch,
                        max_seen,
                        ahead,
                        (
                            (
                                move |k: Hashed| {
                                    let row = in_home(k)??;
                                    live(l, row).then_some((l, row))
                                },
                                addr,
                            ),
                            (
                                move |k: Hashed| in_largest(k).or_else(|| d.get(k)),
                                move |h: u64| v.next_addr(h),
                            ),
                        ),
                        found,
                        &mut chunk,
                    )
                }
            }
        }
        // No directory (a segment beyond u32 rows): one id at a time.
        (n, None) => {
            let live = (
                |k: Hashed| crate::read::segment::find_live(n, |j| &segs[j], k.id),
                |_: u64| std::ptr::null(),
            );
            two_stage(
                ids,
                scratch,
                max_seen,
                ahead,
                (live, nothing),
                found,
                &mut chunk,
            )
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
/// `chunk(scratch, false)` is called after every [`FUSED_CHUNK`] candidates
/// of the first, and `chunk(scratch, true)` once at the end.
fn two_stage<L1, A1, L2, A2>(
    ids: &[u64],
    scratch: &mut Scratch,
    max_seen: &mut bool,
    ahead: usize,
    ((first, first_addr), (second, second_addr)): (Stage<L1, A1>, Stage<L2, A2>),
    found: &Found<'_, '_, '_, '_>,
    chunk: &mut impl FnMut(&mut Scratch, bool),
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
    // Candidates until the next call of `chunk`.
    let every = fused_chunk().max(1);
    let mut left = every;
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
            Some(at) => found.push(scratch, i as u32, id, at),
            None => scratch.pend.push((i as u32, k)),
        }
        left -= 1;
        if left == 0 {
            chunk(scratch, false);
            left = every;
        }
    }
    for j in 0..scratch.pend.len() {
        if let Some(&(_, a)) = scratch.pend.get(j + ahead) {
            kernels::prefetch_line(second_addr(a.h));
        }
        let (pos, k) = scratch.pend[j];
        match second(k) {
            Some(at) => found.push(scratch, pos, k.id, at),
            None => scratch.missing.push((pos, k.id)),
        }
    }
    chunk(scratch, true);
}

/// What pass 1 does with the rows it finds, besides listing them in
/// `scratch.locs`, at every call of [`two_stage`]'s `chunk` hook.
#[derive(Clone, Copy)]
enum Along<'a, 'q, 's> {
    /// Nothing (they are scored after pass 2).
    Nothing,
    /// Scores them (a two-tower query; see [`Fused`]).
    Score(&'a Fused<'q, 's>),
    /// Publishes them to the threads scoring a split three-tower query
    /// (rows are never dropped after pass 1 on this path).
    Publish(&'a Feed),
}

/// What [`resolve`] does with each row it finds: a method always inlined
/// into [`two_stage`]'s loops (as a closure it was called out of line, the
/// call ~16 of its ~66 instructions per candidate).
struct Found<'a, 'v, 'q, 's> {
    along: Along<'a, 'q, 's>,
    views: &'a [idindex::IdIndexView<'v>],
    confirm_all: bool,
    track: bool,
}

impl Found<'_, '_, '_, '_> {
    /// Lists row `row` of segment `si` for the candidate `id` at `pos`.
    #[inline(always)]
    fn push(&self, scratch: &mut Scratch, pos: u32, id: u64, (si, row): (usize, usize)) {
        if let Along::Score(f) = self.along {
            f.prefetch(si, row);
        }
        if self.confirm_all {
            if let Some(r) = self.views[si].ids.get(row..) {
                kernels::prefetch_line(r.as_ptr() as *const u8);
            }
        }
        if self.track {
            // The slow path's pass 2 drops rows as not found by position;
            // the budget keeps the first in the caller's order.
            scratch.pos.push(pos);
        }
        scratch.locs.push(Loc {
            block: si as u32,
            row: row as u32,
        });
        scratch.ids.push(id);
    }
}

/// Whether a split three-tower query publishes its rows while it resolves
/// its candidates (always; the `experiments` knob `OVERLAP_RESOLVE` can turn
/// it off to measure what it brings).
#[inline]
fn overlap_resolve() -> bool {
    #[cfg(feature = "experiments")]
    return crate::experiments::OVERLAP_RESOLVE.load(std::sync::atomic::Ordering::Relaxed) != 0;
    #[cfg(not(feature = "experiments"))]
    true
}

/// Candidates between two calls of [`two_stage`]'s `chunk` hook: a fused
/// two-tower query scores the rows found in one chunk at the end of the
/// next (16 to 128 measured alike, docs/PERF.md).
pub(crate) const FUSED_CHUNK: usize = 64;

/// [`FUSED_CHUNK`], or its experiment knob with the `experiments` feature
/// (where 0 turns the fused pass off).
#[inline]
fn fused_chunk() -> usize {
    #[cfg(feature = "experiments")]
    return crate::experiments::FUSED_CHUNK.load(std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(feature = "experiments"))]
    FUSED_CHUNK
}

/// A two-tower query's scoring, fused into the id resolution: each row
/// found is prefetched at once (every line) and scored one chunk of
/// candidates later, so the rows' cache misses overlap the resolution's
/// work and misses instead of a second pass waiting on them. Used when
/// every live candidate is scored (no filter, no budget cut).
pub(super) struct Fused<'q, 's> {
    level: Level,
    dtype: Dtype,
    user: &'q [f32],
    blocks: &'q [Block<'s>],
    row_bytes: usize,
}

impl Fused<'_, '_> {
    /// Prefetches the lines of row `row` of segment `si` into L2 (a hint:
    /// the address is not checked, and never read here). Into L2, not L1:
    /// the row is read a chunk of candidates later, and on Zen 4 a query
    /// with its rows prefetched into L1 took up to 2.4x as long (docs/PERF.md,
    /// "Two-tower query").
    #[inline(always)]
    fn prefetch(&self, si: usize, row: usize) {
        if let Some(b) = self.blocks.get(si) {
            let at = (b.bytes.as_ptr() as usize).wrapping_add(row.wrapping_mul(b.stride));
            let mut line = at & !63;
            while line < at.wrapping_add(self.row_bytes) {
                kernels::prefetch_line_l2(line as *const u8);
                line += 64;
            }
        }
    }

    /// Scores `scratch.locs[range]` into `scratch.scores[range]` (the
    /// kernel checks each row's bounds).
    fn score(&self, scratch: &mut Scratch, range: std::ops::Range<usize>) {
        if range.is_empty() {
            return;
        }
        kernels::score_gather(
            self.level,
            self.dtype,
            self.user,
            self.blocks,
            &scratch.locs[range.clone()],
            &mut scratch.scores[range],
            false,
        );
    }
}
