//! The full scan: every live row of every segment that passes the filter.

use super::filter::Compiled;
use super::{lap, score_locs, QueryResult, Scorer, Scratch};
use crate::kernels::{self, Loc};
use crate::read::segment::Segment;
use std::time::Instant;

/// Rows per block of a full scan.
const SCAN_BLOCK: usize = 2048;

/// A full scan with `scorer`: [`scan_dot`] or [`scan_model`].
pub(super) fn scan(
    segs: &[Segment],
    scorer: &Scorer<'_, '_>,
    filters: &[Option<Compiled<'_>>],
    cap: Option<usize>,
    scratch: &mut Scratch,
    result: &mut QueryResult,
) {
    match scorer {
        Scorer::Dot { .. } => scan_dot(segs, scorer, filters, cap, scratch, result),
        Scorer::Model { .. } => scan_model(segs, scorer, filters, cap, scratch, result),
    }
}

/// Scores every row with the inner-product kernel a block at a time,
/// straight into the top-k; with a budget of `cap` items, the first `cap`
/// live rows passing the filter, the rest counted in `over_budget`.
fn scan_dot(
    segs: &[Segment],
    scorer: &Scorer<'_, '_>,
    filters: &[Option<Compiled<'_>>],
    cap: Option<usize>,
    scratch: &mut Scratch,
    result: &mut QueryResult,
) {
    let Scorer::Dot {
        level,
        dtype,
        user,
        blocks,
    } = scorer
    else {
        unreachable!("scan_dot takes an inner-product scorer")
    };
    scratch.scores.resize(SCAN_BLOCK, 0.0);
    let cap = cap.unwrap_or(usize::MAX);
    let mut spent = 0usize;
    let mut clock = Instant::now();
    for (si, seg) in segs.iter().enumerate() {
        let seg_ids = seg.ids();
        let deleted = seg.deleted_words();
        let filter = &filters[si];
        let mut first = 0;
        while first < seg.rows() {
            let n = SCAN_BLOCK.min(seg.rows() - first);
            let out = &mut scratch.scores[..n];
            if spent < cap {
                kernels::score_range(*level, *dtype, user, blocks[si], first, out);
            }
            result.timings.gather += lap(&mut clock);
            for (i, &s) in out.iter().enumerate() {
                let r = first + i;
                if deleted.is_some_and(|w| w[r / 64] >> (r % 64) & 1 == 1) {
                    continue;
                }
                if filter.as_ref().is_some_and(|f| !f.eval(r)) {
                    result.filtered_out += 1;
                    continue;
                }
                if spent == cap {
                    result.over_budget += 1;
                    continue;
                }
                spent += 1;
                if !s.is_finite() {
                    scratch.non_finite.push(seg_ids[r]);
                    continue;
                }
                scratch.topk.push(s, seg_ids[r], 0);
                result.scored += 1;
            }
            first += n;
            result.timings.topk += lap(&mut clock);
        }
    }
    scratch.topk.finish(&mut scratch.best);
    result.timings.topk += lap(&mut clock);
}

/// Gathers every row, then runs the model over them in one pass (rank
/// fusion needs them all at once); with a budget of `cap` items, over the
/// first `cap`, the rest counted in `over_budget`.
fn scan_model(
    segs: &[Segment],
    scorer: &Scorer<'_, '_>,
    filters: &[Option<Compiled<'_>>],
    cap: Option<usize>,
    scratch: &mut Scratch,
    result: &mut QueryResult,
) {
    let mut clock = Instant::now();
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
    if let Some(cap) = cap.filter(|&c| c < scratch.locs.len()) {
        result.over_budget = scratch.locs.len() - cap;
        scratch.locs.truncate(cap);
        scratch.ids.truncate(cap);
    }
    result.timings.resolve += lap(&mut clock);
    score_locs(scorer, false, scratch, result);
    result.scored = scratch.locs.len();
}
