//! Run-time knobs for A/B experiments (`examples/ab_query.rs`,
//! `examples/stage_split.rs`), built only
//! with the `experiments` feature: default builds read the constants these
//! start from, so no query reads an atomic for them. Not a supported API.

use std::sync::atomic::AtomicUsize;

/// Rows ahead the gather loop prefetches (see `kernels::ROW_AHEAD`).
pub static ROW_AHEAD: AtomicUsize = AtomicUsize::new(crate::kernels::ROW_AHEAD);

/// Rows ahead whose every line the gather loop prefetches, for f32 rows of
/// three lines or more (see `kernels::NEAR_AHEAD`).
pub static NEAR_AHEAD: AtomicUsize = AtomicUsize::new(crate::kernels::NEAR_AHEAD);

/// Candidates ahead whose id-index home slots a query prefetches (see
/// `query::candidates::PROBE_AHEAD`).
pub static PROBE_AHEAD: AtomicUsize = AtomicUsize::new(crate::query::candidates::PROBE_AHEAD);

/// Candidates between two scoring steps of a fused two-tower query (see
/// `query::candidates::FUSED_CHUNK`).
pub static FUSED_CHUNK: AtomicUsize = AtomicUsize::new(crate::query::candidates::FUSED_CHUNK);

/// Nonzero (the default): a split three-tower query starts scoring while
/// its candidates are still being resolved (see `query::candidates::Along`);
/// zero: it resolves them all first.
pub static OVERLAP_RESOLVE: AtomicUsize = AtomicUsize::new(1);
