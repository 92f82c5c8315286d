//! int8 matrix products on AVX2 (`vpmaddwd`) for the layers of int8
//! bundles on CPUs without AVX512-VNNI or AMX: the quantization of the AMX
//! and VNNI kernels (weights per output channel, activations per row as
//! uint8 when the call has no negative value, else int8), and so the same
//! int32 sums. The quantized values are widened to int16, where
//! `vpmaddwd` multiplies pairs exactly (at most 2 * 255 * 127 per pair, no
//! saturation), so neither the unsigned activations nor the signed ones
//! need a shift.
//!
//! Layout: `k` is padded with zeros to an even count and `n` to 16-column
//! panels; the weights are packed `[n/16][k/2][16][2]` int16 (a pair of a
//! panel is two ymm registers). A 6 x 16 register tile (12 int32
//! accumulators) walks the whole `k` for 6 rows at a time; the start
//! values, the scales and ReLU are applied when the tile is stored (the
//! f32 kernel's `start_tile` / `store_tile`).
//!
//! Every function here needs AVX2, FMA and F16C (`Level::Avx2`).

use std::arch::x86_64::*;
use std::cell::RefCell;

use crate::kernels::gemm::Start;
use crate::kernels::gemm_x86::{start_tile, store_tile};

/// Columns per packed panel (two ymm registers of 8 int32 sums).
const NR: usize = 16;
/// Rows per register tile (12 accumulators).
const MR: usize = 6;

/// The int8 weights of one layer, widened and packed for
/// [`gemm_packed_i8`].
#[derive(Debug, Clone, Default)]
pub(crate) struct PackedI16 {
    /// `[n/16][k/2][16][2]` int16 values (each an int8 weight), zero padded.
    pub values: Vec<i16>,
    /// Per output column (padded to whole panels with zeros): the scale.
    pub scales: Vec<f32>,
}

/// Quantizes `w` (`[n, k]` row-major) per output channel
/// ([`crate::kernels::gemm::quantized`]) and packs it (see the module
/// comment).
pub(crate) fn pack(w: &[f32], n: usize, k: usize) -> PackedI16 {
    let (pairs, np) = (k.div_ceil(2), n.div_ceil(NR) * NR);
    let (q, s) = crate::kernels::gemm::quantized(&w[..n * k], k);
    let mut values = vec![0i16; np * pairs * 2];
    let mut scales = vec![0f32; np];
    for j in 0..n {
        let (panel, col) = (j / NR, j % NR);
        for (p, &x) in q[j * k..(j + 1) * k].iter().enumerate() {
            values[((panel * pairs + p / 2) * NR + col) * 2 + p % 2] = x as i16;
        }
        scales[j] = s[j];
    }
    PackedI16 { values, scales }
}

/// Quantizes rows `a[i*lda ..][..k]` (`i < m`) into `dst` (`[m][kq]`
/// int16, zero beyond `k`; `kq >= k` a multiple of 8), one scale per row
/// into `scale`, as `amx::quantize_rows` does (the largest magnitude over
/// 127, or over 255 when no value is negative; `vcvtps2dq`'s rounding, to
/// nearest even; saturated to the range); returns whether the rows are
/// unsigned.
///
/// # Safety
/// AVX2 must be present; `a` holds `(m-1)*lda + k` values, `dst` `m * kq`
/// and `scale` `m`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_rows(
    m: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    dst: &mut [i16],
    kq: usize,
    scale: &mut [f32],
) -> bool {
    assert!(dst.len() >= m * kq);
    // SAFETY: AVX2 (the caller's contract); `store` writes values at .. at
    // + 8 of `dst`, inside it since at + 8 <= m * kq (asserted).
    let d = dst.as_mut_ptr();
    unsafe {
        quantize_rows_with(m, k, a, lda, kq, scale, |q, at, _| {
            // Pack to int16 (per 128-bit lane), then gather the two
            // lanes' low halves.
            let q = _mm256_permute4x64_epi64::<0b1000>(_mm256_packs_epi32(q, q));
            _mm_storeu_si128(d.add(at) as *mut __m128i, _mm256_castsi256_si128(q))
        })
    }
}

/// [`quantize_rows`] into bytes (`dst`: `[m][kq]`, zero beyond `k`), as
/// `vpdpbusd` takes them: the uint8 values of unsigned rows, and the int8
/// values of signed ones shifted by 128 (`q + 128`); returns whether the
/// rows are unsigned (else the caller subtracts `128 * sum_p w[p]`).
///
/// # Safety
/// As [`quantize_rows`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_rows_u8(
    m: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    dst: &mut [u8],
    kq: usize,
    scale: &mut [f32],
) -> bool {
    assert!(dst.len() >= m * kq);
    // SAFETY: AVX2 (the caller's contract); `store` writes bytes at .. at
    // + 8 of `dst`, inside it since at + 8 <= m * kq (asserted).
    let d = dst.as_mut_ptr();
    unsafe {
        quantize_rows_with(m, k, a, lda, kq, scale, |q, at, signed| {
            let q = if signed {
                _mm256_add_epi32(q, _mm256_set1_epi32(128))
            } else {
                q
            };
            // 0 ..= 255 each: to int16, then to uint8 (per 128-bit lane),
            // then the two lanes' first four bytes side by side.
            let q = _mm256_packus_epi16(_mm256_packs_epi32(q, q), _mm256_setzero_si256());
            let q = _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm_storel_epi64(d.add(at) as *mut __m128i, _mm256_castsi256_si128(q))
        })
    }
}

/// The quantization of [`quantize_rows`]: each row's scale into `scale`,
/// then every 8 values of row `i` from `p` (clamped int32, zero beyond
/// `k`) handed to `store(q, i * kq + p, signed)`; returns whether the
/// rows are unsigned.
///
/// # Safety
/// AVX2 must be present; `a` holds `(m-1)*lda + k` values, `scale` `m`;
/// `store` must be safe to call for offsets `i * kq + p` with `i < m` and
/// `p + 8 <= kq`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_rows_with(
    m: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    kq: usize,
    scale: &mut [f32],
    store: impl Fn(__m256i, usize, bool),
) -> bool {
    assert!(kq >= k && kq.is_multiple_of(8) && scale.len() >= m);
    assert!(m == 0 || a.len() >= (m - 1) * lda + k);
    // 8 values of row i from p, zero beyond k (a masked load touches only
    // the unmasked values).
    let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let load = |i: usize, p: usize| {
        let left = k.saturating_sub(p).min(8) as i32;
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(left), idx);
        // SAFETY: the unmasked values p .. min(p + 8, k) of row i are
        // inside `a` (asserted above); `wrapping_add` keeps the address
        // computation defined for a row's end.
        unsafe { _mm256_maskload_ps(a.as_ptr().wrapping_add(i * lda + p), mask) }
    };
    let lanes = |v: __m256| {
        let mut t = [0f32; 8];
        // SAFETY: `t` holds 8 values.
        unsafe { _mm256_storeu_ps(t.as_mut_ptr(), v) };
        t
    };
    let mut neg = false;
    for (i, mx) in scale[..m].iter_mut().enumerate() {
        let (mut hi, mut lo) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for p in (0..k).step_by(8) {
            let x = load(i, p);
            hi = _mm256_max_ps(hi, x);
            lo = _mm256_min_ps(lo, x);
        }
        let h = lanes(hi).into_iter().fold(0f32, f32::max);
        let l = lanes(lo).into_iter().fold(0f32, f32::min);
        neg |= l < 0.0;
        *mx = h.max(-l);
    }
    let (top, lo, hi) = if neg {
        (127.0, -128, 127)
    } else {
        (255.0, 0, 255)
    };
    let (lo, hi) = (_mm256_set1_epi32(lo), _mm256_set1_epi32(hi));
    for (i, sc) in scale[..m].iter_mut().enumerate() {
        let s = *sc / top;
        *sc = s;
        let inv = _mm256_set1_ps(if s > 0.0 { 1.0 / s } else { 0.0 });
        for p in (0..kq).step_by(8) {
            let q = _mm256_cvtps_epi32(_mm256_mul_ps(load(i, p), inv));
            let q = _mm256_min_epi32(_mm256_max_epi32(q, lo), hi);
            store(q, i * kq + p, neg);
        }
    }
    !neg
}

thread_local! {
    /// Per thread: the quantized activations and their rows' scales.
    static SCRATCH: RefCell<(Vec<i16>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// The int8 product (see the module comment): `c[i*ldc + j] =
/// relu?(start(i, j) + sa[i] * sw[j] * sum_p qa[i][p] * qw[j][p])` for
/// `i < m`, `j < n`; the cache lines at `ahead` are prefetched in bursts
/// along the way.
///
/// # Safety
/// AVX2, FMA and F16C must be present; `a` must hold `(m-1)*lda + k`
/// values, `w` must be [`pack`]ed for `n` and `k`, `c` hold `(m-1)*ldc +
/// n`, a bias or `add` slice `n` values and each of `m` start rows `n`
/// values of its type (checked by the safe caller).
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_packed_i8(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    w: &PackedI16,
    c: &mut [f32],
    ldc: usize,
    start: Start<'_>,
    relu: bool,
    ahead: &[usize],
) {
    let pairs = k.div_ceil(2);
    let kq = k.div_ceil(8) * 8;
    // A tile may read up to MR - 1 rows beyond `m`.
    let rows = m.div_ceil(MR) * MR;
    let mut ahead = crate::kernels::gemm::Bursts::new(ahead, n.div_ceil(NR) * m.div_ceil(MR));
    SCRATCH.with_borrow_mut(|(qa, sa)| {
        if qa.len() < rows * kq {
            qa.resize(rows * kq, 0);
        }
        sa.resize(m, 0.0);
        // SAFETY: AVX2 (the caller's contract); the caller's contract
        // bounds `a`; `qa` holds rows * kq >= m * kq values, `sa` m.
        unsafe { quantize_rows(m, k, a, lda, qa, kq, sa) };
        let cp = c.as_mut_ptr();
        for panel in 0..n.div_ceil(NR) {
            let (j0, nn) = (panel * NR, NR.min(n - panel * NR));
            let bp = w.values[panel * pairs * NR * 2..].as_ptr();
            let sw = &w.scales[j0..j0 + NR];
            let mut i = 0;
            while i < m {
                ahead.next();
                let r = (m - i).min(MR);
                // SAFETY: rows i .. i + MR of `qa` exist (`rows` of kq
                // values); the panel's pairs * 32 values are in `values`;
                // rows i .. i + r, columns j0 .. j0 + nn of `c` and the
                // start slices are inside the caller's buffers.
                unsafe {
                    let (ap, cr) = (qa[i * kq..].as_ptr(), cp.add(i * ldc + j0));
                    let acc = sums(pairs, ap, kq, bp);
                    let t = (i, j0, nn, &sa[i..i + r]);
                    match r {
                        MR => finish::<MR>(&acc, cr, ldc, t, sw, start, relu),
                        1 => finish::<1>(&acc, cr, ldc, t, sw, start, relu),
                        2 => finish::<2>(&acc, cr, ldc, t, sw, start, relu),
                        3 => finish::<3>(&acc, cr, ldc, t, sw, start, relu),
                        4 => finish::<4>(&acc, cr, ldc, t, sw, start, relu),
                        _ => finish::<5>(&acc, cr, ldc, t, sw, start, relu),
                    }
                }
                i += MR;
            }
        }
    });
    ahead.rest();
}

/// The int32 sums of one tile: `MR` rows of int16 activations at `a`
/// (`sa` values apart) against one packed panel at `b`, all `pairs`.
///
/// # Safety
/// AVX2 must be present; `a` holds `MR` rows of `2 * pairs` values at
/// stride `sa`, `b` `pairs * 32` values.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sums(pairs: usize, a: *const i16, sa: usize, b: *const i16) -> [[__m256i; 2]; MR] {
    let mut acc = [[_mm256_setzero_si256(); 2]; MR];
    for g in 0..pairs {
        // SAFETY: g < pairs, so the pair's 32 values of `b` and values 2g,
        // 2g + 1 of each of the MR rows of `a` are inside them.
        unsafe {
            let b0 = _mm256_loadu_si256(b.add(g * 32) as *const __m256i);
            let b1 = _mm256_loadu_si256(b.add(g * 32 + 16) as *const __m256i);
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_set1_epi32((a.add(r * sa + 2 * g) as *const i32).read_unaligned());
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(x, b0));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(x, b1));
            }
        }
    }
    acc
}

/// Stores the first `R` rows of `acc` into `c` (rows `ldc` apart, columns
/// `j0 .. j0 + nn`): `relu?(start + sa[r] * sw[j] * sum)`.
///
/// # Safety
/// AVX2, FMA and F16C must be present; `c` holds `R` rows of `nn` values,
/// `start`'s slices columns `j0 .. j0 + nn` (and rows `i0 .. i0 + R`),
/// `sa` `R` values and `sw` 16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn finish<const R: usize>(
    acc: &[[__m256i; 2]; MR],
    c: *mut f32,
    ldc: usize,
    (i0, j0, nn, sa): (usize, usize, usize, &[f32]),
    sw: &[f32],
    start: Start<'_>,
    relu: bool,
) {
    assert!(sw.len() >= NR && sa.len() >= R);
    // SAFETY: the function's contract is `start_tile`'s and `store_tile`'s;
    // `sw` holds 16 values (asserted).
    unsafe {
        let mut out = start_tile::<R>(c, ldc, (i0, j0, nn), start);
        let sw = [
            _mm256_loadu_ps(sw.as_ptr()),
            _mm256_loadu_ps(sw.as_ptr().add(8)),
        ];
        for r in 0..R {
            let s = _mm256_set1_ps(sa[r]);
            for h in 0..2 {
                let v = _mm256_cvtepi32_ps(acc[r][h]);
                out[r][h] = _mm256_fmadd_ps(v, _mm256_mul_ps(sw[h], s), out[r][h]);
            }
        }
        store_tile::<R>(&out, c, ldc, nn, relu);
    }
}
