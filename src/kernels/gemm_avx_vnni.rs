//! int8 matrix products on AVX-VNNI (the VEX-encoded, 256-bit `vpdpbusd`
//! of CPUs with AVX2 and AVX-VNNI but no AVX-512: Intel's client cores
//! from Alder Lake on and its E-core Xeons) for the layers of int8
//! bundles at `Level::AvxVnni`: `C = act(start + sa[i] * sw[j] * sum_p
//! qa[i][p] * qw[j][p])`, int32 sums, the quantization of the other int8
//! kernels (weights per output channel, activations per row as uint8 when
//! the call has no negative value, else int8: `gemm_i8_avx2`'s
//! quantization, which is `amx::quantize_rows`'), so the integer sums
//! equal theirs exactly.
//!
//! As in `gemm_vnni`, `vpdpbusd` multiplies unsigned by signed bytes:
//! int8 activations are stored shifted by 128 and `128 * sum_p qw[j][p]`
//! is subtracted from each column's sums.
//!
//! Layout: `k` is padded with zeros to whole groups of 4 and `n` to
//! 16-column panels; the weights are packed `[n/16][k/4][16][4]` (a group
//! of a panel is two ymm registers). A 6 x 16 register tile (12 int32
//! accumulators, as `gemm_i8_avx2`'s) walks the whole `k` for 6 rows at a
//! time, each row's 4 bytes of a group broadcast to every lane; the start
//! values, the scales and ReLU are applied when the tile is stored (the
//! f32 kernel's `start_tile` / `store_tile`).
//!
//! Every function here needs AVX2, FMA, F16C and AVX-VNNI.

use std::arch::x86_64::*;

use crate::kernels::gemm::Start;
use crate::kernels::gemm_vnni::{Cols, SCRATCH};
use crate::kernels::gemm_x86::{start_tile, store_tile};

/// Columns per packed panel (two ymm registers of 8 int32 sums).
const NR: usize = 16;
/// Rows per register tile (12 accumulators).
const MR: usize = 6;

/// The int8 weights of one layer, packed for [`gemm_packed_i8`]
/// (`gemm_vnni`'s layout with 16-column panels).
pub(crate) use crate::kernels::gemm_vnni::PackedI8;

/// Quantizes `w` (`[n, k]` row-major) per output channel and packs it
/// (see the module comment).
pub(crate) fn pack(w: &[f32], n: usize, k: usize) -> PackedI8 {
    crate::kernels::gemm_vnni::pack_panels(w, n, k, NR)
}

/// The int8 product (see the module comment): `c[i*ldc + j] =
/// relu?(start(i, j) + sa[i] * sw[j] * sum_p qa[i][p] * qw[j][p])` for
/// `i < m`, `j < n`; the cache lines at `ahead` are prefetched in bursts
/// along the way.
///
/// # Safety
/// AVX2, FMA, F16C and AVX-VNNI must be present; `a` must hold
/// `(m-1)*lda + k` values, `w` must be [`pack`]ed for `n` and `k`, `c`
/// hold `(m-1)*ldc + n`, a bias or `add` slice `n` values and each of `m`
/// start rows `n` values of its type (checked by the safe caller).
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_packed_i8(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    w: &PackedI8,
    c: &mut [f32],
    ldc: usize,
    start: Start<'_>,
    relu: bool,
    ahead: &[usize],
) {
    let groups = k.div_ceil(4);
    // Row stride of the quantized activations (the quantization works 8
    // at a time; kq >= 4 * groups); a tile may read up to MR - 1 rows
    // beyond `m`.
    let kq = k.div_ceil(8) * 8;
    let rows = m.div_ceil(MR) * MR;
    let mut ahead = crate::kernels::gemm::Bursts::new(ahead, n.div_ceil(NR) * m.div_ceil(MR));
    SCRATCH.with_borrow_mut(|(qa, sa)| {
        if qa.len() < rows * kq {
            qa.resize(rows * kq, 0);
        }
        sa.resize(m, 0.0);
        // SAFETY: AVX2 (the caller's contract); the caller's contract
        // bounds `a`; `qa` holds rows * kq >= m * kq bytes, `sa` m values.
        let unsigned =
            unsafe { crate::kernels::gemm_i8_avx2::quantize_rows_u8(m, k, a, lda, qa, kq, sa) };
        let cp = c.as_mut_ptr();
        for panel in 0..n.div_ceil(NR) {
            let (j0, nn) = (panel * NR, NR.min(n - panel * NR));
            let bp = w.values[panel * groups * NR * 4..].as_ptr();
            let cols = Cols {
                j0,
                nn,
                scales: &w.scales[j0..j0 + NR],
                shift: (!unsigned).then(|| &w.shift[j0..j0 + NR]),
            };
            let mut i = 0;
            while i < m {
                ahead.next();
                let r = (m - i).min(MR);
                // SAFETY: rows i .. i + MR of `qa` exist (`rows` of kq
                // bytes); the panel's groups * 64 bytes are in `values`;
                // rows i .. i + r, columns j0 .. j0 + nn of `c` and the
                // start slices are inside the caller's buffers.
                unsafe {
                    let (ap, cr) = (qa[i * kq..].as_ptr(), cp.add(i * ldc + j0));
                    let acc = sums(groups, ap, kq, bp);
                    let t = (i, &sa[i..i + r]);
                    match r {
                        MR => finish::<MR>(&acc, cr, ldc, t, &cols, start, relu),
                        1 => finish::<1>(&acc, cr, ldc, t, &cols, start, relu),
                        2 => finish::<2>(&acc, cr, ldc, t, &cols, start, relu),
                        3 => finish::<3>(&acc, cr, ldc, t, &cols, start, relu),
                        4 => finish::<4>(&acc, cr, ldc, t, &cols, start, relu),
                        _ => finish::<5>(&acc, cr, ldc, t, &cols, start, relu),
                    }
                }
                i += MR;
            }
        }
    });
    ahead.rest();
}

/// The int32 sums of one tile: `MR` rows of quantized activations at `a`
/// (`sa` bytes apart) against one packed panel at `b`, all `groups`.
///
/// # Safety
/// AVX2 and AVX-VNNI must be present; `a` holds `MR` rows of `4 * groups`
/// bytes at stride `sa`, `b` `groups * 64` bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn sums(groups: usize, a: *const u8, sa: usize, b: *const i8) -> [[__m256i; 2]; MR] {
    let mut acc = [[_mm256_setzero_si256(); 2]; MR];
    for g in 0..groups {
        // SAFETY: g < groups, so the group's 64 bytes of `b` and bytes
        // 4g .. 4g + 4 of each of the MR rows of `a` are inside them.
        unsafe {
            let b0 = _mm256_loadu_si256(b.add(g * 64) as *const __m256i);
            let b1 = _mm256_loadu_si256(b.add(g * 64 + 32) as *const __m256i);
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_set1_epi32((a.add(r * sa + 4 * g) as *const i32).read_unaligned());
                acc[0] = _mm256_dpbusd_avx_epi32(acc[0], x, b0);
                acc[1] = _mm256_dpbusd_avx_epi32(acc[1], x, b1);
            }
        }
    }
    acc
}

/// Stores the first `R` rows of `acc` into `c` (rows `ldc` apart,
/// columns `cols.j0 ..`): `relu?(start + sa[r] * sw[j] * (sum - shift))`.
///
/// # Safety
/// AVX2, FMA and F16C must be present; `c` holds `R` rows of `cols.nn`
/// values, `start`'s slices columns `j0 .. j0 + nn` (and rows `i0 .. i0 +
/// R`), `sa` `R` values.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn finish<const R: usize>(
    acc: &[[__m256i; 2]; MR],
    c: *mut f32,
    ldc: usize,
    (i0, sa): (usize, &[f32]),
    cols: &Cols<'_>,
    start: Start<'_>,
    relu: bool,
) {
    assert!(cols.scales.len() >= NR && cols.shift.is_none_or(|s| s.len() >= NR));
    assert!(sa.len() >= R);
    let (j0, nn) = (cols.j0, cols.nn);
    // SAFETY: the function's contract is `start_tile`'s and `store_tile`'s;
    // `cols`' slices hold 16 values (asserted).
    unsafe {
        let mut out = start_tile::<R>(c, ldc, (i0, j0, nn), start);
        let sw = [
            _mm256_loadu_ps(cols.scales.as_ptr()),
            _mm256_loadu_ps(cols.scales.as_ptr().add(8)),
        ];
        let shift = match cols.shift {
            Some(s) => [
                _mm256_loadu_si256(s.as_ptr() as *const __m256i),
                _mm256_loadu_si256(s.as_ptr().add(8) as *const __m256i),
            ],
            None => [_mm256_setzero_si256(); 2],
        };
        for r in 0..R {
            let s = _mm256_set1_ps(sa[r]);
            for h in 0..2 {
                let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc[r][h], shift[h]));
                out[r][h] = _mm256_fmadd_ps(v, _mm256_mul_ps(sw[h], s), out[r][h]);
            }
        }
        store_tile::<R>(&out, c, ldc, nn, relu);
    }
}
