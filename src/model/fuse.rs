//! FusionPlan: every scored candidate's head values (after calibration and
//! normalization) into one score, by the bundle's fusion or the one the
//! query gives (`docs/BUNDLE.md`, "FusionPlan"). Rank fusions need every
//! candidate's values first, so fusion runs after the whole candidate set
//! is scored.

use super::score::{ModelScratch, Prepared, SegmentInputs};
use super::spec::FusionSpec;
use super::{FusionPlan, Model};
use crate::error::Result;
use crate::kernels::Loc;

/// A fusion a query gives in place of its bundle's (contract v2,
/// per-query fusion): any fusion kind, as a `model.json` `fusion` object.
/// Its head and column names are checked against the bundle when the
/// query runs; tuning fusion weights needs no new bundle.
///
/// ```
/// let f = vstore::Fusion::from_json(br#"{"kind": "click_weighted", "base": "click",
///                                      "weights": {"like": 0.5}}"#)?;
/// assert_eq!(f.kind(), "click_weighted");
/// assert!(vstore::Fusion::from_json(br#"{"kind": "sum"}"#).is_err());
/// # Ok::<(), vstore::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Fusion {
    pub(crate) spec: FusionSpec,
}

impl Fusion {
    /// Parses a fusion object (`{"kind": ..., ...}`); an error is
    /// [`crate::Error::InvalidInput`] naming the field at fault
    /// (`fusion.weights.like: ...`), as are the errors a query gives for
    /// a fusion that does not fit its bundle.
    pub fn from_json(json: &[u8]) -> Result<Fusion> {
        let spec = super::spec::query_fusion(json).map_err(|e| match e {
            crate::Error::Bundle { field, what } => {
                crate::Error::InvalidInput(format!("{field}: {what}"))
            }
            other => other,
        })?;
        Ok(Fusion { spec })
    }

    /// The fusion's kind (`weighted_sum`, `product`, `click_weighted`,
    /// `offset_product`, `rank`, `rank_per_head`).
    pub fn kind(&self) -> &'static str {
        self.spec.kind()
    }
}

impl Model {
    /// The fusion a query runs: the one it gives, else the bundle's.
    pub(crate) fn fusion_of<'p>(&'p self, prep: &'p Prepared<'_>) -> &'p FusionPlan {
        prep.fusion.as_ref().unwrap_or(&self.fusion)
    }

    /// Whether the query's fusion scores each item from its own values
    /// alone (not by ranks over every candidate).
    pub(crate) fn fusion_is_per_item(&self, prep: &Prepared<'_>) -> bool {
        !matches!(
            self.fusion_of(prep),
            super::parts::FusionPlan::Rank { .. } | super::parts::FusionPlan::RankPerHead(_)
        )
    }

    /// Whether the query's fusion reads head `h`.
    pub(crate) fn fuses_head(&self, prep: &Prepared<'_>, h: usize) -> bool {
        self.fusion_of(prep).reads_head(h)
    }

    /// Fuses head values (`heads`, `H` per row, rows `locs` of `segs`) into
    /// one score per row. `ids` breaks ties for the rank fusions.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fuse(
        &self,
        prep: &Prepared<'_>,
        segs: &[SegmentInputs<'_>],
        locs: &[Loc],
        heads: &[f32],
        ids: &[u64],
        out: &mut Vec<f32>,
        s: &mut ModelScratch,
    ) {
        let nh = self.heads.len();
        out.clear();
        let rows = heads.chunks_exact(nh);
        // Heads of weight 0 are skipped throughout (an overflowing exp
        // head must not turn into 0 * inf = NaN).
        match self.fusion_of(prep) {
            FusionPlan::WeightedSum(w) => out.extend(rows.map(|h| weighted(h, w) as f32)),
            FusionPlan::Product { w, columns } => out.extend(rows.zip(locs).map(|(h, loc)| {
                let mut p: f64 = (h.iter().zip(w))
                    .filter(|(_, &w)| w != 0.0)
                    .map(|(&p, &w)| (p as f64).powf(w))
                    .product();
                let cols = &segs[loc.block as usize].fusion_cols;
                for (c, (_, a)) in cols.iter().zip(columns) {
                    p *= (c[loc.row as usize] as f64).powf(*a);
                }
                p as f32
            })),
            FusionPlan::ClickWeighted { base, w } => {
                out.extend(rows.map(|h| (h[*base] as f64 * (1.0 + weighted(h, w))) as f32))
            }
            FusionPlan::OffsetProduct(terms) => out.extend(rows.map(|h| {
                (h.iter().zip(terms))
                    .filter(|(_, &(w, a))| w != 0.0 && a != 0.0)
                    .map(|(&p, &(w, a))| (1.0 + w * p as f64).powf(a))
                    .product::<f64>() as f32
            })),
            FusionPlan::Rank { w, alpha, beta } => {
                let term = |h: usize, rank: f64| w[h] / (rank + alpha).powf(*beta);
                by_rank(heads, nh, ids, |h| w[h] != 0.0, term, out, s)
            }
            FusionPlan::RankPerHead(terms) => {
                let term = |h: usize, rank: f64| {
                    let (w, a, b) = terms[h];
                    w / (rank.powf(a) + b)
                };
                by_rank(heads, nh, ids, |h| terms[h].0 != 0.0, term, out, s)
            }
        }
    }
}

/// `sum w_h p_h` over the heads of nonzero weight, in f64.
fn weighted(h: &[f32], w: &[f64]) -> f64 {
    (h.iter().zip(w))
        .filter(|(_, &w)| w != 0.0)
        .map(|(&p, &w)| w * p as f64)
        .sum()
}

/// A rank fusion: for every head `used`, the rows ranked by that head's
/// value (descending, NaN last, ties by ascending id), and each row's
/// `term(head, rank)` (rank from 1) summed.
fn by_rank(
    heads: &[f32],
    nh: usize,
    ids: &[u64],
    used: impl Fn(usize) -> bool,
    term: impl Fn(usize, f64) -> f64,
    out: &mut Vec<f32>,
    s: &mut ModelScratch,
) {
    let n = ids.len();
    s.acc.clear();
    s.acc.resize(n, 0.0);
    for h in (0..nh).filter(|&h| used(h)) {
        s.order.clear();
        s.order.extend(0..n as u32);
        let key = |i: u32| {
            let v = heads[i as usize * nh + h];
            if v.is_nan() {
                f32::NEG_INFINITY
            } else {
                v
            }
        };
        s.order.sort_unstable_by(|&a, &b| {
            key(b)
                .total_cmp(&key(a))
                .then(ids[a as usize].cmp(&ids[b as usize]))
        });
        for (pos, &i) in s.order.iter().enumerate() {
            s.acc[i as usize] += term(h, pos as f64 + 1.0);
        }
    }
    out.extend(s.acc.iter().map(|&x| x as f32));
}
