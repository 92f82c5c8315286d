//! Inner-product kernels: an f32 user vector against stored rows of every
//! dtype, one whole loop per call so that cache misses of upcoming rows
//! overlap (software prefetch) and no per-row call is out of line.
//!
//! The CPU is detected once ([`Level::detect`]); on x86-64 with AVX2, FMA
//! and F16C the loops in `x86` run, elsewhere the portable loops here (which
//! the compiler vectorizes with the baseline instruction set).

use half::slice::HalfFloatSliceExt;

use crate::schema::Dtype;

#[cfg(target_arch = "x86_64")]
pub(crate) mod gemm;
pub(crate) mod gemm_x86;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Which implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Portable Rust (any CPU).
    Portable,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
}

impl Level {
    /// The best level this CPU supports (detected once, then cached).
    pub fn detect() -> Level {
        static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
        *LEVEL.get_or_init(|| {
            if std::env::var_os("VSTORE_FORCE_PORTABLE").is_some() {
                return Level::Portable;
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return Level::Avx2;
            }
            Level::Portable
        })
    }
}

/// Hints the CPU to fetch the cache line holding `p` (no-op off x86-64).
#[inline(always)]
pub(crate) fn prefetch_line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, whatever the address
    // (SSE, which provides it, is part of the x86-64 baseline).
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Rows ahead whose cache lines the gather loop prefetches (for f32 rows
/// of three lines or more, only the first line): the best distance
/// `examples/ab_query.rs` measured (docs/PERF.md).
pub(crate) const ROW_AHEAD: usize = 16;

/// Rows ahead whose every line the gather loop prefetches, for f32 rows of
/// three lines or more (0 would mean: all lines at [`ROW_AHEAD`], as for
/// other rows).
pub(crate) const NEAR_AHEAD: usize = 8;

/// [`ROW_AHEAD`], or its experiment knob with the `experiments` feature.
#[inline]
pub(crate) fn row_ahead() -> usize {
    #[cfg(feature = "experiments")]
    return crate::experiments::ROW_AHEAD.load(std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(feature = "experiments"))]
    ROW_AHEAD
}

/// [`NEAR_AHEAD`], or its experiment knob with the `experiments` feature.
#[inline]
pub(crate) fn near_ahead() -> usize {
    #[cfg(feature = "experiments")]
    return crate::experiments::NEAR_AHEAD.load(std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(feature = "experiments"))]
    NEAR_AHEAD
}

/// One block of embedding rows: `bytes` holds `rows * stride` bytes.
#[derive(Clone, Copy)]
pub(crate) struct Block<'a> {
    pub bytes: &'a [u8],
    pub stride: usize,
}

/// A resolved candidate: which block, which row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Loc {
    pub block: u32,
    pub row: u32,
}

/// Scores `locs` (rows of `blocks`) against `user` into `out`, prefetching
/// upcoming rows. `out.len() == locs.len()`. Every `loc` must be in range
/// (checked; an out-of-range loc scores NaN rather than panicking).
pub(crate) fn score_gather(
    level: Level,
    dtype: Dtype,
    user: &[f32],
    blocks: &[Block<'_>],
    locs: &[Loc],
    out: &mut [f32],
) {
    debug_assert_eq!(locs.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx2 {
        // SAFETY: Level::Avx2 is only returned when the CPU has AVX2, FMA and F16C.
        unsafe { x86::score_gather(dtype, user, blocks, locs, out) };
        return;
    }
    let _ = level;
    let d = user.len();
    let rb = dtype.row_bytes(d as u32);
    let mut tmp = vec![0f32; d];
    for (o, l) in out.iter_mut().zip(locs) {
        *o = match row(blocks, *l, rb) {
            Some(r) => dot_portable(dtype, user, r, &mut tmp),
            None => f32::NAN,
        };
    }
}

/// Scores rows `first..first + out.len()` of one block (a sequential scan).
pub(crate) fn score_range(
    level: Level,
    dtype: Dtype,
    user: &[f32],
    block: Block<'_>,
    first: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx2 {
        // SAFETY: Level::Avx2 is only returned when the CPU has AVX2, FMA and F16C.
        unsafe { x86::score_range(dtype, user, block, first, out) };
        return;
    }
    let _ = level;
    let d = user.len();
    let rb = dtype.row_bytes(d as u32);
    let mut tmp = vec![0f32; d];
    for (i, o) in out.iter_mut().enumerate() {
        let at = (first + i) * block.stride;
        *o = match block.bytes.get(at..at + rb) {
            Some(r) => dot_portable(dtype, user, r, &mut tmp),
            None => f32::NAN,
        };
    }
}

/// The `row_bytes` bytes of `l`, if in range.
#[inline(always)]
pub(crate) fn row<'a>(blocks: &[Block<'a>], l: Loc, row_bytes: usize) -> Option<&'a [u8]> {
    let b = blocks.get(l.block as usize)?;
    let at = (l.row as usize).checked_mul(b.stride)?;
    b.bytes.get(at..at.checked_add(row_bytes)?)
}

/// Sum of `a[i] * b[i]` with 8 independent accumulators (vectorizable).
#[inline]
fn dot_f32s(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, at) = a.split_at(a.len() / 8 * 8);
    let (bc, bt) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in at.iter().zip(bt) {
        s += x * y;
    }
    s
}

/// Portable dot product of `user` with one stored row (`row_bytes` bytes).
pub(crate) fn dot_portable(dtype: Dtype, user: &[f32], row: &[u8], tmp: &mut [f32]) -> f32 {
    let d = user.len();
    match dtype {
        Dtype::F32 => match bytemuck::try_cast_slice::<u8, f32>(&row[..4 * d]) {
            Ok(r) => dot_f32s(user, r),
            Err(_) => {
                for (t, c) in tmp.iter_mut().zip(row.chunks_exact(4)) {
                    *t = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
                dot_f32s(user, tmp)
            }
        },
        Dtype::F16 | Dtype::Bf16 => {
            let bits: Vec<u16>;
            let halves: &[u16] = match bytemuck::try_cast_slice(&row[..2 * d]) {
                Ok(h) => h,
                Err(_) => {
                    bits = row[..2 * d]
                        .chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]))
                        .collect();
                    &bits
                }
            };
            if dtype == Dtype::F16 {
                let h: &[half::f16] = bytemuck::cast_slice(halves);
                h.convert_to_f32_slice(tmp);
            } else {
                let h: &[half::bf16] = bytemuck::cast_slice(halves);
                h.convert_to_f32_slice(tmp);
            }
            dot_f32s(user, tmp)
        }
        Dtype::I8 => {
            for (t, &q) in tmp.iter_mut().zip(&row[..d]) {
                *t = q as i8 as f32;
            }
            let scale = f32::from_le_bytes([row[d], row[d + 1], row[d + 2], row[d + 3]]);
            dot_f32s(user, tmp) * scale
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::encode::encode_row;

    fn rows(dtype: Dtype, d: usize, n: usize) -> (Vec<u8>, usize, Vec<Vec<f32>>) {
        let stride = dtype.row_stride(d as u32);
        let mut bytes = vec![0u8; stride * n + 64];
        let mut vals = Vec::new();
        let mut tmp = Vec::new();
        for r in 0..n {
            let v: Vec<f32> = (0..d)
                .map(|j| (((r * 7 + j * 13) % 29) as f32 - 14.0) / 8.0)
                .collect();
            encode_row(
                dtype,
                &v,
                &mut bytes[r * stride..(r + 1) * stride],
                &mut tmp,
            );
            vals.push(v);
        }
        // Offset by 16 so that rows are 16-aligned but not 32-aligned.
        (bytes, stride, vals)
    }

    #[test]
    fn every_level_and_dtype_matches_the_reference() {
        let levels = if Level::detect() == Level::Avx2 {
            vec![Level::Portable, Level::Avx2]
        } else {
            vec![Level::Portable]
        };
        for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16, Dtype::I8] {
            for d in [1usize, 3, 7, 8, 9, 16, 31, 64, 100, 128, 257] {
                let n = 40;
                let (bytes, stride, vals) = rows(dtype, d, n);
                let user: Vec<f32> = (0..d).map(|j| ((j % 11) as f32 - 5.0) / 4.0).collect();
                let block = Block {
                    bytes: &bytes,
                    stride,
                };
                let locs: Vec<Loc> = (0..n as u32)
                    .rev()
                    .map(|r| Loc { block: 0, row: r })
                    .collect();
                for &level in &levels {
                    let mut out = vec![0f32; n];
                    score_gather(level, dtype, &user, &[block], &locs, &mut out);
                    let mut seq = vec![0f32; n];
                    score_range(level, dtype, &user, block, 0, &mut seq);
                    for (i, l) in locs.iter().enumerate() {
                        let r = l.row as usize;
                        // Reference over the decoded stored values, in f64.
                        let mut dec = vec![0f32; d];
                        let col_row = &bytes[r * stride..r * stride + dtype.row_bytes(d as u32)];
                        let mut tmp = vec![0f32; d];
                        let _ = dot_portable(dtype, &user, col_row, &mut tmp);
                        decode(dtype, col_row, &mut dec);
                        let want: f64 = user
                            .iter()
                            .zip(&dec)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum();
                        let mag: f64 = user
                            .iter()
                            .zip(&dec)
                            .map(|(a, b)| (*a as f64 * *b as f64).abs())
                            .sum();
                        let tol = mag * 1e-6 + 1e-6;
                        assert!(
                            (out[i] as f64 - want).abs() <= tol,
                            "{level:?} {dtype:?} d={d} row {r}: {} vs {want}",
                            out[i]
                        );
                        assert!(
                            (seq[r] as f64 - want).abs() <= tol,
                            "{level:?} {dtype:?} d={d} seq row {r}"
                        );
                        let _ = &vals;
                    }
                }
            }
        }
    }

    fn decode(dtype: Dtype, row: &[u8], out: &mut [f32]) {
        let d = out.len();
        match dtype {
            Dtype::F32 => {
                for (o, c) in out.iter_mut().zip(row.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Dtype::F16 => {
                for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            Dtype::Bf16 => {
                for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                    *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            Dtype::I8 => {
                let s = f32::from_le_bytes([row[d], row[d + 1], row[d + 2], row[d + 3]]);
                for (o, &q) in out.iter_mut().zip(&row[..d]) {
                    *o = q as i8 as f32 * s;
                }
            }
        }
    }

    #[test]
    fn out_of_range_locations_score_nan_not_panic() {
        let (bytes, stride, _) = rows(Dtype::F32, 8, 4);
        let block = Block {
            bytes: &bytes[..stride * 4],
            stride,
        };
        let user = vec![1f32; 8];
        let locs = [
            Loc { block: 0, row: 3 },
            Loc { block: 0, row: 4 },
            Loc { block: 1, row: 0 },
        ];
        for level in [Level::Portable, Level::detect()] {
            let mut out = vec![0f32; 3];
            score_gather(level, Dtype::F32, &user, &[block], &locs, &mut out);
            assert!(
                out[0].is_finite() && out[1].is_nan() && out[2].is_nan(),
                "{out:?}"
            );
        }
    }
}
