//! bf16 matrix products for the model layers on AVX512-BF16 (CPUs with it
//! and without AMX: AMD Zen 4 and 5, Intel Cooper Lake): `C = act(start +
//! A @ B)` with `A` rounded to bf16 per call and `B` (the weights) packed
//! once, at model load, as bf16 pairs. `vdpbf16ps` multiplies 16 pairs of
//! bf16 and adds both products to 16 f32 sums, twice the work of an f32
//! FMA per instruction.
//!
//! Layout. `k` is padded with a zero to `kp`, even. `B` is stored as
//! `[ceil(n/32)][kp/2][32][2]` bf16 (a 32-column panel; per pair of `k`
//! values, each column's two weights side by side, zero-padded). `A` is
//! rounded into a thread-local buffer `[m][kp]` bf16 (zero at `k` when `k`
//! is odd). The tile is the AVX-512 kernel's (`gemm_avx512`): 12 rows by
//! 32 columns, 24 zmm accumulators, one broadcast pair of `A` per row and
//! step, started and stored by its `start_tile` and `store_tile`.
//!
//! Every function here needs AVX-512 F, BW, VL and BF16 (and F16C, FMA),
//! which `Level::Avx512Bf16` guarantees.

use std::arch::x86_64::*;
use std::cell::RefCell;

use crate::kernels::gemm::Start;
use crate::kernels::gemm_avx512::{load32, start_tile, store_tile};

/// Columns per packed panel.
const NR: usize = 32;
/// Rows per register tile (as in `gemm_avx512`).
const MR: usize = 12;

/// `k` padded to whole pairs.
pub(crate) fn padded_k(k: usize) -> usize {
    k.div_ceil(2) * 2
}

/// Packs `w` (`[n, k]` row-major) as `[ceil(n/32)][kp/2][32][2]` bf16
/// (round to nearest even), zero padded.
pub(crate) fn pack(w: &[f32], n: usize, k: usize) -> Vec<u16> {
    let kp = padded_k(k);
    let mut out = vec![0u16; n.div_ceil(NR) * kp * NR];
    for j in 0..n {
        let (panel, col) = (j / NR, j % NR);
        for p in 0..k {
            let (q, t) = (p / 2, p % 2);
            out[((panel * (kp / 2) + q) * NR + col) * 2 + t] =
                half::bf16::from_f32(w[j * k + p]).to_bits();
        }
    }
    out
}

thread_local! {
    /// Per thread: `A` rounded to bf16.
    static SCRATCH: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// One tile: `R` rows of bf16 pairs at `a` (`kp / 2` pairs a row, read
/// unaligned: the buffer is only 2-byte aligned), all
/// of `k`, one panel (columns `j0 .. j0 + nn`, `nn <= 32`) into `c`.
///
/// # Safety
/// AVX-512 F, BW, VL and BF16 must be present; `a` holds `R` rows of `kp`
/// bf16, `bp` `kp * 32` bf16, `c` `R` rows of `nn` values at stride `ldc`;
/// `start`'s slices hold columns `j0 .. j0 + nn` (rows `i0 .. i0 + R`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize>(
    kp: usize,
    a: *const u32,
    bp: *const u16,
    c: *mut f32,
    ldc: usize,
    (i0, j0, nn): (usize, usize, usize),
    start: Start<'_>,
    relu: bool,
) {
    // SAFETY: the function's contract is `start_tile`'s.
    let mut acc = unsafe { start_tile::<R>(c, ldc, (i0, j0, nn), start) };
    let pairs = kp / 2;
    for q in 0..pairs {
        // SAFETY: q < kp / 2, so the 64 bf16 of pair row q of the panel and
        // pair q of each of the R rows of `a` are inside the buffers.
        unsafe {
            let b0: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(bp.add(q * 2 * NR) as *const _));
            let b1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(bp.add(q * 2 * NR + NR) as *const _));
            for (r, acc) in acc.iter_mut().enumerate() {
                let pair = a.add(r * pairs + q).read_unaligned();
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], x, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], x, b1);
            }
        }
    }
    // SAFETY: the function's contract is `store_tile`'s.
    unsafe { store_tile::<R>(&acc, c, ldc, nn, relu) };
}

/// `c[i*ldc + j] = relu?(start(i, j) + sum_p bf16(a[i*lda + p]) *
/// B[p][j])` for `i < m`, `j < n`, with `B` packed by [`pack`]; products
/// of bf16 values summed in f32; the cache lines at `ahead` are
/// prefetched in bursts along the way.
///
/// # Safety
/// AVX-512 F, BW, VL and BF16 (and FMA, F16C) must be present; `a` must
/// hold `(m-1)*lda + k` values, `packed` `ceil(n/32) * padded_k(k) * 32`,
/// `c` `(m-1)*ldc + n`, a bias or `add` slice `n` values and each of `m`
/// start rows `n` values of its type (checked by the safe caller).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_packed(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    packed: &[u16],
    c: &mut [f32],
    ldc: usize,
    start: Start<'_>,
    relu: bool,
    ahead: &[usize],
) {
    let kp = padded_k(k);
    let mut ahead = crate::kernels::gemm::Bursts::new(ahead, n.div_ceil(NR) * m.div_ceil(MR));
    SCRATCH.with_borrow_mut(|abuf| {
        if abuf.len() < m * kp {
            abuf.resize(m * kp, 0);
        }
        for i in 0..m {
            let row = &mut abuf[i * kp..(i + 1) * kp];
            let mut p = 0;
            while p < k {
                let nn = (k - p).min(32);
                // SAFETY: a masked load reads only the nn values of row i
                // left (p + nn <= k); the masked store writes nn bf16 at p,
                // inside `row` (kp >= k).
                unsafe {
                    let [x0, x1] = load32(a.as_ptr().add(i * lda + p), nn);
                    let h: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(x1, x0));
                    let mask: __mmask32 = if nn == 32 { u32::MAX } else { (1u32 << nn) - 1 };
                    _mm512_mask_storeu_epi16(row.as_mut_ptr().add(p) as *mut i16, mask, h);
                }
                p += 32;
            }
            if kp > k {
                row[k] = 0;
            }
        }
        let ap = abuf.as_ptr() as *const u32;
        let cp = c.as_mut_ptr();
        for panel in 0..n.div_ceil(NR) {
            let (j0, nn) = (panel * NR, NR.min(n - panel * NR));
            // SAFETY: the panel's kp * 32 bf16 are in `packed`; rows stay
            // under m and columns under n (the function's contract).
            unsafe {
                let bp = packed.as_ptr().add(panel * kp * NR);
                let mut i = 0;
                while i + MR <= m {
                    ahead.next();
                    let (ar, cr) = (ap.add(i * kp / 2), cp.add(i * ldc + j0));
                    tile::<MR>(kp, ar, bp, cr, ldc, (i, j0, nn), start, relu);
                    i += MR;
                }
                let (ar, cr, at) = (ap.add(i * kp / 2), cp.add(i * ldc + j0), (i, j0, nn));
                if i < m {
                    ahead.next();
                }
                match m - i {
                    0 => {}
                    1 => tile::<1>(kp, ar, bp, cr, ldc, at, start, relu),
                    2 => tile::<2>(kp, ar, bp, cr, ldc, at, start, relu),
                    3 => tile::<3>(kp, ar, bp, cr, ldc, at, start, relu),
                    4 => tile::<4>(kp, ar, bp, cr, ldc, at, start, relu),
                    5 => tile::<5>(kp, ar, bp, cr, ldc, at, start, relu),
                    6 => tile::<6>(kp, ar, bp, cr, ldc, at, start, relu),
                    7 => tile::<7>(kp, ar, bp, cr, ldc, at, start, relu),
                    8 => tile::<8>(kp, ar, bp, cr, ldc, at, start, relu),
                    9 => tile::<9>(kp, ar, bp, cr, ldc, at, start, relu),
                    10 => tile::<10>(kp, ar, bp, cr, ldc, at, start, relu),
                    _ => tile::<11>(kp, ar, bp, cr, ldc, at, start, relu),
                }
            }
        }
        ahead.rest();
    });
}
