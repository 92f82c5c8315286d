//! What a query returns: the hits, what was left out and why, how long
//! each stage took, and (on request) what the scorer saw for each hit.

use std::time::Duration;

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
///
/// Equality (`==`) compares what the query answered and leaves what it
/// cost out ([`QueryResult::timings`], [`QueryResult::multiply_adds`]):
/// two runs of one query are equal, and so are an exact-mode query and the
/// f32 bundle's.
#[derive(Debug, Clone, Default)]
pub struct QueryResult {
    /// The snapshot that served the query.
    pub snapshot: u64,
    /// The top k, score descending, ties by ascending id.
    pub hits: Vec<Hit>,
    /// Candidate ids the snapshot does not hold (each once, in input order).
    pub not_found: Vec<u64>,
    /// Number of distinct found candidates the filter removed.
    pub filtered_out: usize,
    /// The candidate ids the filter removed (each once, ascending). Empty
    /// for a full scan, which counts them only (`filtered_out`).
    pub filtered: Vec<u64>,
    /// Number of distinct items scored (those in `non_finite` excluded).
    pub scored: usize,
    /// Items whose score, or a head value of a three-tower query, came out
    /// infinite or NaN although every input was finite (an overflowing
    /// product or `exp` head, weights of extreme size): they are left out of
    /// `hits` (and of the ranks of `rank` fusion) rather than ordered
    /// silently, and listed here, ascending, each once.
    pub non_finite: Vec<u64>,
    /// Number of found, unfiltered items the query's [`crate::Budget`] left
    /// unscored (0 without a budget, or within it).
    pub over_budget: usize,
    /// The candidate ids counted in `over_budget`, in the caller's order.
    /// Empty for a full scan, which counts them only.
    pub over_budget_ids: Vec<u64>,
    /// Multiply-adds the query's scoring spent (inner products or model
    /// layers; exact mode's f32 rescoring included).
    pub multiply_adds: u64,
    /// Head names of a three-tower query run [`crate::Query::with_heads`]
    /// (else empty).
    pub head_names: Vec<String>,
    /// Per hit, its head values in `head_names` order, row-major
    /// (`hits.len() * head_names.len()` values; see [`QueryResult::heads_of`]).
    pub heads: Vec<f32>,
    /// What the scorer saw for each hit, if the query asked for it
    /// ([`crate::Query::log_features`]).
    pub features: Option<FeatureLog>,
    /// How long each stage took.
    pub timings: Timings,
}

impl PartialEq for QueryResult {
    /// Everything but `timings` and `multiply_adds`.
    fn eq(&self, o: &QueryResult) -> bool {
        let QueryResult {
            snapshot,
            hits,
            not_found,
            filtered_out,
            filtered,
            scored,
            non_finite,
            over_budget,
            over_budget_ids,
            multiply_adds: _,
            head_names,
            heads,
            features,
            timings: _,
        } = self;
        *snapshot == o.snapshot
            && *hits == o.hits
            && *not_found == o.not_found
            && *filtered_out == o.filtered_out
            && *filtered == o.filtered
            && *scored == o.scored
            && *non_finite == o.non_finite
            && *over_budget == o.over_budget
            && *over_budget_ids == o.over_budget_ids
            && *head_names == o.head_names
            && *heads == o.heads
            && *features == o.features
    }
}

impl QueryResult {
    /// The head values of hit `i` (empty unless the query asked for them).
    pub fn heads_of(&self, i: usize) -> &[f32] {
        let h = self.head_names.len();
        self.heads.get(i * h..(i + 1) * h).unwrap_or(&[])
    }
}

/// How long each stage of a query took, measured on every query (a few
/// clock reads per block of rows: cheap enough to leave on).
///
/// With [`crate::Query::threads`], `gather`, `cross`, `upper` and `heads`
/// are summed over the threads (CPU time), while `total` is the wall time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Checking the query and building its scorer (a three-tower query:
    /// user inputs checked, the user part of the first upper layer
    /// computed, the query's fusion compiled).
    pub prepare: Duration,
    /// Deduplicating the candidates, finding their rows, dropping deleted
    /// rows, the filter and the budget (a full scan: the filter). A
    /// two-tower query over candidate ids with neither filter nor budget
    /// finds and scores its rows in one pass, counted under `gather`.
    pub resolve: Duration,
    /// Reading the candidates' rows. A two-tower query: the gather and
    /// inner-product kernel (one pass over the rows; without a filter or
    /// budget, the same pass also finds the rows, see `resolve`). A
    /// three-tower query: the cross inputs built (transforms, tables,
    /// defaults) and the item vectors decoded.
    pub gather: Duration,
    /// The cross tower (with SE gating).
    pub cross: Duration,
    /// The upper network.
    pub upper: Duration,
    /// Experts, gates, head towers, calibration and normalization, and the
    /// fusion into one score.
    pub heads: Duration,
    /// [`crate::Query::exact`]'s f32 rescoring.
    pub rescore: Duration,
    /// Selecting the top k (and confirming the hits' ids).
    pub topk: Duration,
    /// The whole query, wall time.
    pub total: Duration,
}

/// What a three-tower model saw and produced for each hit, for training
/// data logged at serving time ([`crate::Query::log_features`]): per hit,
/// in `hits` order, its cross-tower input, its heads before and after
/// calibration, and its fused score.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeatureLog {
    /// The cross-tower inputs in the bundle's order: each input's name
    /// (its column, or for a user input its name) and width.
    pub inputs: Vec<(String, usize)>,
    /// Width of one hit's cross-tower input (the sum of `inputs` widths).
    pub cross_dim: usize,
    /// Per hit, the cross-tower input as the first cross layer reads it:
    /// transforms and embedding tables applied, user inputs copied, a
    /// `user_by_item` default where the map lacks the item's value, a
    /// profile column's default for a missing value (`hits.len() *
    /// cross_dim` values, row-major). SE gating, where the bundle has it,
    /// scales these inside the tower; the values here are before it.
    pub cross_inputs: Vec<f32>,
    /// Head names, in the bundle's order.
    pub head_names: Vec<String>,
    /// Per hit, each head's value before its activation or calibration
    /// (the logit of a sigmoid head), row-major.
    pub head_logits: Vec<f32>,
    /// Per hit, each head's value as fusion reads it: activated,
    /// calibrated and normalized, row-major.
    pub heads: Vec<f32>,
    /// Per hit, the fused score (equal to the hit's score).
    pub scores: Vec<f32>,
}

impl FeatureLog {
    /// Hit `i`'s cross-tower input.
    pub fn cross_input(&self, i: usize) -> &[f32] {
        let d = self.cross_dim;
        self.cross_inputs.get(i * d..(i + 1) * d).unwrap_or(&[])
    }

    /// Hit `i`'s head values before activation or calibration.
    pub fn head_logits_of(&self, i: usize) -> &[f32] {
        let h = self.head_names.len();
        self.head_logits.get(i * h..(i + 1) * h).unwrap_or(&[])
    }

    /// Hit `i`'s head values after calibration.
    pub fn heads_of(&self, i: usize) -> &[f32] {
        let h = self.head_names.len();
        self.heads.get(i * h..(i + 1) * h).unwrap_or(&[])
    }
}
