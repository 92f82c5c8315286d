//! The last step of scoring a block: from the shared upper output to every
//! head's calibrated, normalized value.
//!
//! When every head reads the shared output directly (no MMoE, no head
//! towers, as in every contract v1 bundle) all heads are one stacked
//! layer, one matrix product. Otherwise, per block: each expert's chain as
//! matrix products over the block, every head's gate in one stacked
//! product and a softmax per head, then per head the mixture of experts (or
//! the shared output), its tower, and its own one-output layer.

use super::score::{activate, calibrated, layer, ModelScratch, SegmentInputs, BLOCK};
use super::{Dense, Head, Model};
use crate::kernels::gemm::{matmul, Start};
use crate::kernels::Loc;

/// Runs `layers` over `m` rows of `src` (`ld` apart), ping-ponging between
/// `t0` and `t1`; returns which holds the result (`None`: no layers, the
/// result is `src`) and its width.
fn chain(
    layers: &[Dense],
    m: usize,
    src: &[f32],
    ld: usize,
    t0: &mut [f32],
    t1: &mut [f32],
) -> (Option<bool>, usize) {
    let mut cur: Option<bool> = None;
    let mut width = ld;
    for d in layers {
        let bias = Start::Bias(&d.b);
        match cur {
            None => layer(d, m, src, ld, &d.pack, t0, d.out, bias, &[]),
            Some(false) => layer(d, m, t0, width, &d.pack, t1, d.out, bias, &[]),
            Some(true) => layer(d, m, t1, width, &d.pack, t0, d.out, bias, &[]),
        }
        cur = Some(cur.is_some_and(|c| !c));
        width = d.out;
    }
    (cur, width)
}

impl Model {
    /// Sizes the buffers the head stage uses.
    pub(super) fn size_head_scratch(&self, s: &mut ModelScratch) {
        if self.head_layer.is_some() {
            return;
        }
        let towers = self.heads.iter().flat_map(|h| &h.tower);
        let experts = self.mmoe.iter().flat_map(|m| m.experts.iter().flatten());
        let widest = towers.chain(experts).map(|d| d.out).max().unwrap_or(1);
        s.t0.resize(BLOCK * widest, 0.0);
        s.t1.resize(BLOCK * widest, 0.0);
        if let Some(m) = &self.mmoe {
            s.experts.resize(m.experts.len() * BLOCK * m.dim, 0.0);
            s.gates.resize(BLOCK * m.gates.out, 0.0);
            s.mix.resize(BLOCK * m.dim, 0.0);
        }
        s.value.resize(BLOCK, 0.0);
    }

    /// Step 4: every head's value for the `block` rows, from the shared
    /// upper output in `s.h0` (`width` per row), activated, calibrated and
    /// normalized, into `out` (one value per head per row).
    pub(super) fn heads_block(
        &self,
        segs: &[SegmentInputs<'_>],
        block: &[Loc],
        s: &mut ModelScratch,
        out: &mut [f32],
    ) {
        let m = block.len();
        let nh = self.heads.len();
        match &self.head_layer {
            Some(hl) => {
                let bias = Start::Bias(&hl.b);
                matmul(m, &s.h0, hl.inp, &hl.pack, out, nh, bias, false);
            }
            None => self.heads_one_by_one(m, s, out),
        }
        if s.log_logits {
            s.logits.extend_from_slice(out);
        }
        for (h, head) in self.heads.iter().enumerate() {
            for r in 0..m {
                let col = segs[block[r].block as usize].norm[h];
                let x = col.map(|c| c[block[r].row as usize]);
                out[r * nh + h] = finish(head, out[r * nh + h], x);
            }
        }
    }

    /// The head stage of models with MMoE or head towers: raw head values
    /// (before activation) into `out`.
    fn heads_one_by_one(&self, m: usize, s: &mut ModelScratch, out: &mut [f32]) {
        let nh = self.heads.len();
        let (w, ne) = (
            self.width,
            self.mmoe.as_ref().map_or(0, |m| m.experts.len()),
        );
        if let Some(mm) = &self.mmoe {
            let d = mm.dim;
            for (e, layers) in mm.experts.iter().enumerate() {
                let (cur, _) = chain(layers, m, &s.h0, w, &mut s.t0, &mut s.t1);
                let res = if cur == Some(true) { &s.t1 } else { &s.t0 };
                s.experts[e * BLOCK * d..e * BLOCK * d + m * d].copy_from_slice(&res[..m * d]);
            }
            let g = &mm.gates;
            let bias = Start::Bias(&g.b);
            matmul(m, &s.h0, w, &g.pack, &mut s.gates, g.out, bias, false);
            for r in 0..m {
                for h in 0..nh {
                    softmax(&mut s.gates[r * g.out + h * ne..r * g.out + (h + 1) * ne]);
                }
            }
        }
        for (h, head) in self.heads.iter().enumerate() {
            let (src, ld): (&[f32], usize) = match &self.mmoe {
                Some(mm) => {
                    let d = mm.dim;
                    for r in 0..m {
                        let mix = &mut s.mix[r * d..(r + 1) * d];
                        mix.fill(0.0);
                        for e in 0..ne {
                            let g = s.gates[r * ne * nh + h * ne + e];
                            let x = &s.experts[e * BLOCK * d + r * d..][..d];
                            mix.iter_mut().zip(x).for_each(|(y, x)| *y += g * x);
                        }
                    }
                    (&s.mix, d)
                }
                None => (&s.h0, w),
            };
            let (cur, width) = chain(&head.tower, m, src, ld, &mut s.t0, &mut s.t1);
            let input: &[f32] = match cur {
                None => src,
                Some(false) => &s.t0,
                Some(true) => &s.t1,
            };
            let o = &head.out;
            matmul(
                m,
                input,
                width,
                &o.pack,
                &mut s.value,
                1,
                Start::Bias(&o.b),
                false,
            );
            for r in 0..m {
                out[r * nh + h] = s.value[r];
            }
        }
    }
}

/// A head's raw value `x` made its output: activation (or calibration, for
/// a sigmoid head with a negative sampling rate), then, if the head
/// normalizes, division by the value of the bucket of `col` (the item's
/// value of the head's normalize column).
#[inline]
fn finish(head: &Head, x: f32, col: Option<f32>) -> f32 {
    let p = match head.neg_sampling_rate {
        Some(a) => calibrated(x, a),
        None => activate(head.act, x),
    };
    match (&head.normalize, col) {
        (Some(n), Some(v)) => p / n.values[n.bounds.partition_point(|&t| t <= v)],
        _ => p,
    }
}

/// `x` replaced by its softmax, computed stably (the largest value first
/// subtracted).
fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    x.iter_mut().for_each(|v| *v /= sum);
}
