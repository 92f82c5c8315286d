//! AVX2+FMA matrix product for the model layers: `C = start + A @ B`
//! (optionally through ReLU) where `B` is a weight matrix packed once, at
//! model load, into panels of 16 columns (`[panel][k][16]`, zero-padded).
//! A 6x16 register tile (12 ymm accumulators) walks the whole `k` for 6
//! rows of `A` at a time, reading `A` in place (row-major, any stride) with
//! broadcasts: no per-call packing, the panel (16 KB at k = 256) stays in
//! L1. The accumulators start at zero, at `C`, at a bias row or at a
//! per-row vector (f32 or f16, decoded in the tile), and ReLU is applied
//! before the store, so bias, activation and the precomputed item part
//! cost no pass of their own over `C`.

use std::arch::x86_64::*;

use crate::kernels::gemm::Start;

/// Columns per packed panel.
pub(crate) const NR: usize = 16;
/// Rows per register tile.
const MR: usize = 6;

/// Loads `nn <= 16` f32 values at `p` into two registers (zero beyond `nn`).
///
/// # Safety
/// AVX2, FMA and F16C must be present; `p` must point to `nn` readable f32
/// values (any alignment).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load16(p: *const f32, nn: usize) -> [__m256; 2] {
    // SAFETY: the caller's contract; a full panel reads 16 values, a
    // partial one goes through a 16-value copy.
    unsafe {
        if nn == NR {
            [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))]
        } else {
            // Copied as bytes: `p` may be an unaligned row of a file.
            let mut tmp = [0f32; NR];
            std::ptr::copy_nonoverlapping(p as *const u8, tmp.as_mut_ptr() as *mut u8, 4 * nn);
            [
                _mm256_loadu_ps(tmp.as_ptr()),
                _mm256_loadu_ps(tmp.as_ptr().add(8)),
            ]
        }
    }
}

/// Loads `nn <= 16` f16 values (little-endian bits) at `p` as f32.
///
/// # Safety
/// AVX2 and F16C must be present; `p` must point to `2 * nn` readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load16_f16(p: *const u8, nn: usize) -> [__m256; 2] {
    // SAFETY: the caller's contract; a partial panel goes through a copy.
    unsafe {
        let mut tmp = [0u16; NR];
        let p = if nn == NR {
            p
        } else {
            std::ptr::copy_nonoverlapping(p, tmp.as_mut_ptr() as *mut u8, 2 * nn);
            tmp.as_ptr() as *const u8
        };
        [
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
            _mm256_cvtph_ps(_mm_loadu_si128(p.add(16) as *const __m128i)),
        ]
    }
}

/// One tile: rows `a[r * lda ..]` for `r < R`, all `k`, one panel (columns
/// `j0 .. j0 + nn` of the product), into `c[r * ldc + j]` for `j < nn`
/// (`nn <= 16`); `i0` is the tile's first row (for [`Start::Rows`]).
///
/// # Safety
/// `a` holds R rows of k values at stride lda, `bp` holds k * 16 values,
/// `c` holds R rows of nn values at stride ldc; `start`'s slices hold
/// columns `j0 .. j0 + nn` (and rows `i0 .. i0 + R`), as `gemm_packed`'s
/// caller checked.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
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
    // SAFETY: the function's contract is `store_tile`'s.
    unsafe { store_tile::<R>(&acc, c, ldc, nn, relu) };
}

/// The accumulators of an `R`-row, 16-column tile (columns `j0 .. j0 +
/// nn` of rows `i0 ..`) at their start values: zero, `C`'s, the bias, or
/// a start row (f32 or f16) plus the added row. Shared by the f32 and the
/// int8 kernels.
///
/// # Safety
/// AVX2, FMA and F16C must be present; `c` holds `R` rows of `nn` values
/// at stride `ldc`; `start`'s slices hold columns `j0 .. j0 + nn` (and
/// rows `i0 .. i0 + R`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn start_tile<const R: usize>(
    c: *const f32,
    ldc: usize,
    (i0, j0, nn): (usize, usize, usize),
    start: Start<'_>,
) -> [[__m256; 2]; R] {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    // SAFETY (all the loads below): the function's contract.
    match start {
        Start::Zero => {}
        Start::Accumulate => {
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = unsafe { load16(c.add(r * ldc), nn) };
            }
        }
        Start::Bias(b) => {
            let v = unsafe { load16(b.as_ptr().add(j0), nn) };
            acc = [v; R];
        }
        Start::Rows { rows, half, add } => {
            let u = unsafe { load16(add.as_ptr().add(j0), nn) };
            for (r, acc) in acc.iter_mut().enumerate() {
                let row = rows[i0 + r].as_ptr();
                let v = unsafe {
                    if half {
                        load16_f16(row.add(2 * j0), nn)
                    } else {
                        load16(row.add(4 * j0) as *const f32, nn)
                    }
                };
                *acc = [_mm256_add_ps(v[0], u[0]), _mm256_add_ps(v[1], u[1])];
            }
        }
    }
    acc
}

/// Stores an `R`-row, 16-column tile (through ReLU if `relu`) into the
/// first `nn` columns of `R` rows of `c`, `ldc` apart.
///
/// # Safety
/// AVX2 must be present; `c` holds `R` rows of `nn <= 16` values at stride
/// `ldc`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn store_tile<const R: usize>(
    acc: &[[__m256; 2]; R],
    c: *mut f32,
    ldc: usize,
    nn: usize,
    relu: bool,
) {
    let mut acc = *acc;
    if relu {
        let zero = _mm256_setzero_ps();
        for acc in acc.iter_mut() {
            *acc = [_mm256_max_ps(acc[0], zero), _mm256_max_ps(acc[1], zero)];
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

/// `c[i*ldc + j] = relu?(start(i, j) + sum_p a[i*lda + p] * B[p][j])` for
/// `i < m`, `j < n`, with `B` packed as `[ceil(n/16)][k][16]` in `packed`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `a` must hold `(m-1)*lda + k`
/// values, `packed` `ceil(n/16) * k * 16`, `c` `(m-1)*ldc + n`, a bias or
/// `add` slice `n` values and each of `m` start rows `n` values of its
/// type (checked by the safe caller).
#[target_feature(enable = "avx2,fma,f16c")]
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
        // SAFETY: panel < ceil(n/16), so its k * 16 values are in `packed`;
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
                _ => tile::<5>(k, ap, lda, bp, cr, ldc, at, start, relu),
            }
        }
    }
}

/// `c[i*ldc + j] = beta * c[i*ldc + j] + sum_p a[i*lda + p] * w[j*k + p]`
/// for `i < m`, `j < n <= 8`, `beta` 0 or 1: a narrow layer (a model's
/// heads) as dot products, one row of `A` at a time against every weight
/// row, with no padding to a 16-column panel.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `a` must hold `(m-1)*lda + k`
/// values, `w` `n * k`, and `c` `(m-1)*ldc + n` (checked by the safe
/// caller).
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn dots(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    w: &[f32],
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    // SAFETY: the function's contract; `dots_n::<N>` is called with N == n.
    unsafe {
        match n {
            1 => dots_n::<1>(m, k, a, lda, w, beta, c, ldc),
            2 => dots_n::<2>(m, k, a, lda, w, beta, c, ldc),
            3 => dots_n::<3>(m, k, a, lda, w, beta, c, ldc),
            4 => dots_n::<4>(m, k, a, lda, w, beta, c, ldc),
            5 => dots_n::<5>(m, k, a, lda, w, beta, c, ldc),
            6 => dots_n::<6>(m, k, a, lda, w, beta, c, ldc),
            7 => dots_n::<7>(m, k, a, lda, w, beta, c, ldc),
            8 => dots_n::<8>(m, k, a, lda, w, beta, c, ldc),
            _ => unreachable!("dots runs layers of 1 to 8 outputs"),
        }
    }
}

/// [`dots`] for `n == N`.
///
/// # Safety
/// As [`dots`], with `n == N`.
#[inline]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn dots_n<const N: usize>(
    m: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    w: &[f32],
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    // Four rows a pass: 4 x N independent accumulator chains hide the FMA
    // latency (one row's N chains alone could not), and each weight load
    // serves four rows.
    let mut i = 0;
    while i + 2 <= m {
        // SAFETY: rows i..i + 2 < m, as the function's contract requires.
        unsafe { dots_rows::<N, 2>(i, k, a, lda, w, beta, c, ldc) };
        i += 2;
    }
    while i < m {
        // SAFETY: as above, row i < m.
        unsafe { dots_rows::<N, 1>(i, k, a, lda, w, beta, c, ldc) };
        i += 1;
    }
}

/// The lane sums of four vectors, in order.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn reduce4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
    // [a01 a23 b01 b23 | a45 a67 b45 b67] and the same for c, d.
    let ab = _mm256_hadd_ps(a, b);
    let cd = _mm256_hadd_ps(c, d);
    // [a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7]
    let abcd = _mm256_hadd_ps(ab, cd);
    _mm_add_ps(
        _mm256_castps256_ps128(abcd),
        _mm256_extractf128_ps::<1>(abcd),
    )
}

/// [`dots_n`] for rows `i..i + R`.
///
/// # Safety
/// As [`dots`], with `n == N` and `i + R <= m`.
#[inline]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn dots_rows<const N: usize, const R: usize>(
    i: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    w: &[f32],
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    let body = k - k % 8;
    let rows: [&[f32]; R] = std::array::from_fn(|r| &a[(i + r) * lda..(i + r) * lda + k]);
    // acc[j][r]: output j of row r.
    let mut acc = [[_mm256_setzero_ps(); R]; N];
    let mut p = 0;
    while p < body {
        // SAFETY: p + 8 <= body <= k, inside every row and each weight row
        // (w holds N rows of k values).
        unsafe {
            let x: [__m256; R] = std::array::from_fn(|r| _mm256_loadu_ps(rows[r].as_ptr().add(p)));
            for (j, acc) in acc.iter_mut().enumerate() {
                let wj = _mm256_loadu_ps(w.as_ptr().add(j * k + p));
                for (a, x) in acc.iter_mut().zip(&x) {
                    *a = _mm256_fmadd_ps(*x, wj, *a);
                }
            }
        }
        p += 8;
    }
    let zero = _mm256_setzero_ps();
    for (r, row) in rows.iter().enumerate() {
        // Horizontal sums, four accumulators at a time.
        let mut sums = [0f32; 8];
        for (q, chunk) in sums.chunks_exact_mut(4).enumerate().take(N.div_ceil(4)) {
            let get = |j: usize| {
                if 4 * q + j < N {
                    acc[4 * q + j][r]
                } else {
                    zero
                }
            };
            let v = reduce4(get(0), get(1), get(2), get(3));
            // SAFETY: `chunk` holds 4 values.
            unsafe { _mm_storeu_ps(chunk.as_mut_ptr(), v) };
        }
        for (j, sum) in sums.iter().enumerate().take(N) {
            let tail: f32 = (body..k).map(|p| row[p] * w[j * k + p]).sum();
            let dot = sum + tail;
            let out = &mut c[(i + r) * ldc + j];
            *out = if beta == 0.0 { dot } else { *out + dot };
        }
    }
}
