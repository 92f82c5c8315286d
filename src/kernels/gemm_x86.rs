//! AVX2+FMA matrix product for the model layers: `C (+)= A @ B` where `B`
//! is a weight matrix packed once, at model load, into panels of 16
//! columns (`[panel][k][16]`, zero-padded). A 6x16 register tile (12 ymm
//! accumulators) walks the whole `k` for 6 rows of `A` at a time, reading
//! `A` in place (row-major, any stride) with broadcasts: no per-call
//! packing, the panel (16 KB at k = 256) stays in L1.

use std::arch::x86_64::*;

/// Columns per packed panel.
pub(crate) const NR: usize = 16;
/// Rows per register tile.
const MR: usize = 6;

/// One tile: rows `a[r * lda ..]` for `r < R`, all `k`, one panel, into
/// `c[r * ldc + j]` for `j < nn` (`nn <= 16`).
#[inline]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
// SAFETY (for callers): `a` holds R rows of k values at stride lda, `bp`
// holds k * 16 values, `c` holds R rows of nn values at stride ldc.
unsafe fn tile<const R: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    bp: *const f32,
    c: *mut f32,
    ldc: usize,
    nn: usize,
    accumulate: bool,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    if accumulate {
        for (r, acc) in acc.iter_mut().enumerate() {
            let mut tmp = [0f32; NR];
            // SAFETY: row r of c has nn <= 16 valid values (caller
            // contract); tmp holds 16.
            unsafe {
                std::ptr::copy_nonoverlapping(c.add(r * ldc), tmp.as_mut_ptr(), nn);
                acc[0] = _mm256_loadu_ps(tmp.as_ptr());
                acc[1] = _mm256_loadu_ps(tmp.as_ptr().add(8));
            }
        }
    }
    for p in 0..k {
        // SAFETY: p < k, so bp[p * 16 .. p * 16 + 16] and a[r * lda + p]
        // (r < R) are inside the caller's buffers.
        unsafe {
            let b0 = _mm256_loadu_ps(bp.add(p * NR));
            let b1 = _mm256_loadu_ps(bp.add(p * NR + 8));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*a.add(r * lda + p));
                acc[0] = _mm256_fmadd_ps(x, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(x, b1, acc[1]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: row r of c has nn valid values; full panels store 16.
        unsafe {
            let dst = c.add(r * ldc);
            if nn == NR {
                _mm256_storeu_ps(dst, acc[0]);
                _mm256_storeu_ps(dst.add(8), acc[1]);
            } else {
                let mut tmp = [0f32; NR];
                _mm256_storeu_ps(tmp.as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(tmp.as_mut_ptr().add(8), acc[1]);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, nn);
            }
        }
    }
}

/// `c[i*ldc + j] (+)= sum_p a[i*lda + p] * B[p][j]` for `i < m`, `j < n`,
/// with `B` packed as `[ceil(n/16)][k][16]` in `packed`.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `a` must hold `(m-1)*lda + k`
/// values, `packed` `ceil(n/16) * k * 16`, and `c` `(m-1)*ldc + n`
/// (checked by the safe caller).
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_packed(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    packed: &[f32],
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let (a, c) = (a.as_ptr(), c.as_mut_ptr());
    for panel in 0..n.div_ceil(NR) {
        let nn = NR.min(n - panel * NR);
        // SAFETY: panel < ceil(n/16), so its k * 16 values are in `packed`;
        // row offsets below stay under m rows and column offsets under n
        // (the function's contract).
        unsafe {
            let bp = packed.as_ptr().add(panel * k * NR);
            let cp = c.add(panel * NR);
            let mut i = 0;
            while i + MR <= m {
                tile::<MR>(
                    k,
                    a.add(i * lda),
                    lda,
                    bp,
                    cp.add(i * ldc),
                    ldc,
                    nn,
                    accumulate,
                );
                i += MR;
            }
            let (ap, cr) = (a.add(i * lda), cp.add(i * ldc));
            match m - i {
                0 => {}
                1 => tile::<1>(k, ap, lda, bp, cr, ldc, nn, accumulate),
                2 => tile::<2>(k, ap, lda, bp, cr, ldc, nn, accumulate),
                3 => tile::<3>(k, ap, lda, bp, cr, ldc, nn, accumulate),
                4 => tile::<4>(k, ap, lda, bp, cr, ldc, nn, accumulate),
                _ => tile::<5>(k, ap, lda, bp, cr, ldc, nn, accumulate),
            }
        }
    }
}
