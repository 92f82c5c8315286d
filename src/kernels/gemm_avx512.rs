//! AVX-512 matrix product for the model layers: `C = start + A @ B`
//! (optionally through ReLU) where `B` is a weight matrix packed once, at
//! model load, into panels of 32 columns (`[panel][k][32]`, zero-padded).
//! The same scheme as the AVX2 kernel (`gemm_x86`), twice as wide: a 12x32
//! register tile (24 zmm accumulators, two per row) walks the whole `k` for
//! 12 rows of `A` at a time, reading `A` in place with broadcasts (folded
//! into the FMAs). Partial panels and the start rows are read and written
//! with masked loads and stores (which never touch the masked-off
//! elements); the accumulators start at zero, at `C`, at a bias row or at
//! a per-row vector (f32 or f16, decoded in the tile), and ReLU is applied
//! before the store.
//!
//! Every function here needs AVX-512 F, BW and VL (and F16C, FMA), which
//! `Level::Avx512` guarantees.

use std::arch::x86_64::*;

use crate::kernels::gemm::Start;

/// Columns per packed panel (two zmm registers).
pub(crate) const NR: usize = 32;
/// Rows per register tile (24 accumulators; a query block of 48 rows is
/// four tiles). Chosen by measurement: docs/PERF.md.
const MR: usize = 12;

/// The load/store masks of the two 16-column halves of a panel of
/// `nn <= 32` columns.
#[inline(always)]
pub(crate) fn masks(nn: usize) -> [__mmask16; 2] {
    let bits = if nn >= 32 { u32::MAX } else { (1u32 << nn) - 1 };
    [bits as __mmask16, (bits >> 16) as __mmask16]
}

/// Loads `nn <= 32` f32 values at `p` into two registers (zero beyond
/// `nn`).
///
/// # Safety
/// AVX-512 F must be present; `p` must point to `nn` readable f32 values
/// (any alignment: a masked load touches only the unmasked elements, and
/// faults on none of the others).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
pub(crate) unsafe fn load32(p: *const f32, nn: usize) -> [__m512; 2] {
    // SAFETY: the caller's contract; the masks cover `nn` values.
    unsafe {
        if nn == NR {
            [_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))]
        } else {
            let [m0, m1] = masks(nn);
            [
                _mm512_maskz_loadu_ps(m0, p),
                _mm512_maskz_loadu_ps(m1, p.add(16)),
            ]
        }
    }
}

/// Loads `nn <= 32` f16 values (little-endian bits) at `p` as f32.
///
/// # Safety
/// AVX-512 F, BW and VL and F16C must be present; `p` must point to
/// `2 * nn` readable bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
pub(crate) unsafe fn load32_f16(p: *const u8, nn: usize) -> [__m512; 2] {
    // SAFETY: the caller's contract; a masked 16-bit load touches only the
    // `nn` unmasked values.
    unsafe {
        let [m0, m1] = masks(nn);
        let (h0, h1) = if nn == NR {
            (
                _mm256_loadu_si256(p as *const __m256i),
                _mm256_loadu_si256(p.add(32) as *const __m256i),
            )
        } else {
            (
                _mm256_maskz_loadu_epi16(m0, p as *const i16),
                _mm256_maskz_loadu_epi16(m1, p.add(32) as *const i16),
            )
        };
        [_mm512_cvtph_ps(h0), _mm512_cvtph_ps(h1)]
    }
}

/// The accumulators of an `R`-row, 32-column tile (columns `j0 .. j0 +
/// nn` of rows `i0 ..`) at their start values: zero, `C`'s, the bias, or
/// a start row (f32 or f16) plus the added row. Shared by the f32 and the
/// AVX512-BF16 kernels.
///
/// # Safety
/// AVX-512 F, BW and VL (and F16C) must be present; `c` holds `R` rows of
/// `nn` values at stride `ldc`; `start`'s slices hold columns `j0 .. j0 +
/// nn` (and rows `i0 .. i0 + R`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
pub(crate) unsafe fn start_tile<const R: usize>(
    c: *const f32,
    ldc: usize,
    (i0, j0, nn): (usize, usize, usize),
    start: Start<'_>,
) -> [[__m512; 2]; R] {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    // SAFETY (all the loads below): the function's contract.
    match start {
        Start::Zero => {}
        Start::Accumulate => {
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = unsafe { load32(c.add(r * ldc), nn) };
            }
        }
        Start::Bias(b) => acc = [unsafe { load32(b.as_ptr().add(j0), nn) }; R],
        Start::Rows { rows, half, add } => {
            let u = unsafe { load32(add.as_ptr().add(j0), nn) };
            for (r, acc) in acc.iter_mut().enumerate() {
                let row = rows[i0 + r].as_ptr();
                let v = unsafe {
                    if half {
                        load32_f16(row.add(2 * j0), nn)
                    } else {
                        load32(row.add(4 * j0) as *const f32, nn)
                    }
                };
                *acc = [_mm512_add_ps(v[0], u[0]), _mm512_add_ps(v[1], u[1])];
            }
        }
    }
    acc
}

/// Stores an `R`-row, 32-column tile of sums into `c` (`nn <= 32` columns
/// of each row, the rest masked off), through ReLU if `relu`.
///
/// # Safety
/// AVX-512 F, BW and VL must be present; `c` holds `R` rows of `nn` values
/// at stride `ldc`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
pub(crate) unsafe fn store_tile<const R: usize>(
    acc: &[[__m512; 2]; R],
    c: *mut f32,
    ldc: usize,
    nn: usize,
    relu: bool,
) {
    let zero = _mm512_setzero_ps();
    let [m0, m1] = masks(nn);
    for (r, acc) in acc.iter().enumerate() {
        let (mut y0, mut y1) = (acc[0], acc[1]);
        if relu {
            y0 = _mm512_max_ps(y0, zero);
            y1 = _mm512_max_ps(y1, zero);
        }
        // SAFETY: row r of c has nn valid values; full panels store 32, a
        // partial one only its nn unmasked values.
        unsafe {
            let dst = c.add(r * ldc);
            if nn == NR {
                _mm512_storeu_ps(dst, y0);
                _mm512_storeu_ps(dst.add(16), y1);
            } else {
                _mm512_mask_storeu_ps(dst, m0, y0);
                _mm512_mask_storeu_ps(dst.add(16), m1, y1);
            }
        }
    }
}

/// One tile: rows `a[r * lda ..]` for `r < R`, all `k`, one panel (columns
/// `j0 .. j0 + nn` of the product), into `c[r * ldc + j]` for `j < nn`
/// (`nn <= 32`); `i0` is the tile's first row (for [`Start::Rows`]).
///
/// # Safety
/// AVX-512 F, BW and VL, FMA and F16C must be present; `a` holds R rows of
/// k values at stride lda, `bp` holds k * 32 values, `c` holds R rows of
/// nn values at stride ldc; `start`'s slices hold columns `j0 .. j0 + nn`
/// (and rows `i0 .. i0 + R`), as `gemm_packed`'s caller checked.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    bp: *const f32,
    c: *mut f32,
    ldc: usize,
    (i0, j0, nn): (usize, usize, usize),
    start: Start<'_>,
    relu: bool,
) {
    // SAFETY: the function's contract is `start_tile`'s.
    let mut acc = unsafe { start_tile::<R>(c, ldc, (i0, j0, nn), start) };
    for p in 0..k {
        // SAFETY: p < k, so bp[p * 32 .. p * 32 + 32] and a[r * lda + p]
        // (r < R) are inside the caller's buffers.
        unsafe {
            let b0 = _mm512_loadu_ps(bp.add(p * NR));
            let b1 = _mm512_loadu_ps(bp.add(p * NR + 16));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.add(r * lda + p));
                acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
            }
        }
    }
    // SAFETY: the function's contract is `store_tile`'s.
    unsafe { store_tile::<R>(&acc, c, ldc, nn, relu) };
}

/// `c[i*ldc + j] = relu?(start(i, j) + sum_p a[i*lda + p] * B[p][j])` for
/// `i < m`, `j < n`, with `B` packed as `[ceil(n/32)][k][32]` in `packed`.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL, FMA and F16C; `a` must hold
/// `(m-1)*lda + k` values, `packed` `ceil(n/32) * k * 32`, `c`
/// `(m-1)*ldc + n`, a bias or `add` slice `n` values and each of `m` start
/// rows `n` values of its type (checked by the safe caller).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
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
    start: Start<'_>,
    relu: bool,
    ahead: &[usize],
) {
    let (a, c) = (a.as_ptr(), c.as_mut_ptr());
    let mut ahead = crate::kernels::gemm::Bursts::new(ahead, n.div_ceil(NR) * m.div_ceil(MR));
    for panel in 0..n.div_ceil(NR) {
        let (j0, nn) = (panel * NR, NR.min(n - panel * NR));
        // SAFETY: panel < ceil(n/32), so its k * 32 values are in `packed`;
        // row offsets below stay under m rows and column offsets under n
        // (the function's contract).
        unsafe {
            let bp = packed.as_ptr().add(panel * k * NR);
            let cp = c.add(j0);
            let mut i = 0;
            while i + MR <= m {
                ahead.next();
                let (ap, cr) = (a.add(i * lda), cp.add(i * ldc));
                tile::<MR>(k, ap, lda, bp, cr, ldc, (i, j0, nn), start, relu);
                i += MR;
            }
            let (ap, cr, at) = (a.add(i * lda), cp.add(i * ldc), (i, j0, nn));
            if i < m {
                ahead.next();
            }
            match m - i {
                0 => {}
                1 => tile::<1>(k, ap, lda, bp, cr, ldc, at, start, relu),
                2 => tile::<2>(k, ap, lda, bp, cr, ldc, at, start, relu),
                3 => tile::<3>(k, ap, lda, bp, cr, ldc, at, start, relu),
                4 => tile::<4>(k, ap, lda, bp, cr, ldc, at, start, relu),
                5 => tile::<5>(k, ap, lda, bp, cr, ldc, at, start, relu),
                6 => tile::<6>(k, ap, lda, bp, cr, ldc, at, start, relu),
                7 => tile::<7>(k, ap, lda, bp, cr, ldc, at, start, relu),
                8 => tile::<8>(k, ap, lda, bp, cr, ldc, at, start, relu),
                9 => tile::<9>(k, ap, lda, bp, cr, ldc, at, start, relu),
                10 => tile::<10>(k, ap, lda, bp, cr, ldc, at, start, relu),
                _ => tile::<11>(k, ap, lda, bp, cr, ldc, at, start, relu),
            }
        }
    }
}
