//! The candidate-id path: dedupe and resolve the ids (id directory, id
//! indexes, home slots prefetched), drop tombstones, filter, score, confirm.

use super::filter::Compiled;
use super::{score_locs, QueryResult, Scorer, Scratch};
use crate::error::Result;
use crate::format::idindex;
use crate::format::idindex::Hashed;
use crate::kernels;
use crate::kernels::Loc;
use crate::read::directory::Directory;
use crate::read::snapshot::Snapshot;

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
    /// kernel, or the model a block at a time) into the top-k. The
    /// `ids[row] == id` confirmation (which costs one more random cache
    /// line, and on a large store one more page walk, per candidate) is done
    /// for the returned hits only: if any fails (a damaged id index), the
    /// query is redone confirming every candidate, so a wrong row is never
    /// returned.
    pub(super) fn score_candidates(
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
            self.directory_for_query()?
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
            result.filtered.clear();
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
                        result.filtered.push(id);
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
        result.filtered.sort_unstable();
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
