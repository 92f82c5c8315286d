//! int8 matrix products on AVX512-VNNI (`vpdpbusd`) for the layers of
//! int8 bundles: `C = act(start + sa[i] * sw[j] * sum_p qa[i][p] *
//! qw[j][p])`, int32 sums, the same quantization as the AMX int8 kernel
//! (`kernels::amx::gemm_packed_i8`): the weights per output channel
//! ([`crate::kernels::gemm::quantized`]), the activations per row, as
//! uint8 when the call has no negative value (a ReLU layer's output),
//! else int8 (`amx::quantize_rows`). So the integer sums equal the AMX
//! ones exactly.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes. int8 activations are
//! therefore stored shifted by 128 (`q + 128`, a byte XOR), and `128 *
//! sum_p qw[j][p]` (computed when the weights are packed) is subtracted
//! from each column's sums.
//!
//! Layout: `k` is padded with zeros to whole groups of 4 and `n` to
//! 32-column panels; the weights are packed `[n/32][k/4][32][4]` (a
//! group of a panel is two zmm registers). A 12 x 32 register tile (24
//! int32 accumulators) walks the whole `k` for 12 rows at a time, each
//! row's 4 bytes of a group broadcast to every lane; the start values,
//! the scales and ReLU are applied when the tile is stored (the f32
//! kernel's `start_tile` / `store_tile`).
//!
//! Every function here needs AVX-512 F, BW, VL and VNNI (and FMA, F16C).

use std::arch::x86_64::*;
use std::cell::RefCell;

use crate::kernels::gemm::Start;
use crate::kernels::gemm_avx512::{load32, start_tile, store_tile};

/// Columns per packed panel (two zmm registers of 16 int32 sums).
const NR: usize = 32;
/// Rows per register tile (24 accumulators).
const MR: usize = 12;

/// The int8 weights of one layer, packed for [`gemm_packed_i8`].
#[derive(Debug, Clone, Default)]
pub(crate) struct PackedI8 {
    /// `[n/nr][k/4][nr][4]` int8 values, zero padded (`nr` = 32 here, 16
    /// for `gemm_avx_vnni`).
    pub values: Vec<i8>,
    /// Per output column (padded to whole panels with zeros): the scale.
    pub scales: Vec<f32>,
    /// Per output column (padded): `128 * sum_p qw[j][p]`, subtracted from
    /// the sums of shifted int8 activations.
    pub shift: Vec<i32>,
}

/// Quantizes `w` (`[n, k]` row-major) per output channel and packs it
/// (see the module comment).
pub(crate) fn pack(w: &[f32], n: usize, k: usize) -> PackedI8 {
    pack_panels(w, n, k, NR)
}

/// [`pack`] into panels of `nr` columns (`[n/nr][k/4][nr][4]`), for this
/// kernel (32) and the 256-bit one (`gemm_avx_vnni`, 16).
pub(crate) fn pack_panels(w: &[f32], n: usize, k: usize, nr: usize) -> PackedI8 {
    let (groups, np) = (k.div_ceil(4), n.div_ceil(nr) * nr);
    let (q, s) = crate::kernels::gemm::quantized(&w[..n * k], k);
    let mut values = vec![0i8; np * groups * 4];
    let (mut scales, mut shift) = (vec![0f32; np], vec![0i32; np]);
    for j in 0..n {
        let (panel, col) = (j / nr, j % nr);
        let row = &q[j * k..(j + 1) * k];
        for (p, &x) in row.iter().enumerate() {
            values[((panel * groups + p / 4) * nr + col) * 4 + p % 4] = x;
        }
        scales[j] = s[j];
        shift[j] = 128 * row.iter().map(|&x| x as i32).sum::<i32>();
    }
    PackedI8 {
        values,
        scales,
        shift,
    }
}

thread_local! {
    /// Per thread: the quantized activations and their rows' scales (of
    /// this kernel and `gemm_avx_vnni`'s).
    pub(crate) static SCRATCH: RefCell<(Vec<u8>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// The int8 product (see the module comment): `c[i*ldc + j] =
/// relu?(start(i, j) + sa[i] * sw[j] * sum_p qa[i][p] * qw[j][p])` for
/// `i < m`, `j < n`; the cache lines at `ahead` are prefetched in bursts
/// along the way.
///
/// # Safety
/// AVX-512 F, BW, VL and VNNI, FMA and F16C must be present; `a` must hold
/// `(m-1)*lda + k` values, `w` must be [`pack`]ed for `n` and `k`, `c` hold
/// `(m-1)*ldc + n`, a bias or `add` slice `n` values and each of `m` start
/// rows `n` values of its type (checked by the safe caller).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
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
    // Row stride of the quantized activations (`quantize_rows` works 16
    // at a time); a tile may read up to MR - 1 rows beyond `m`.
    let kq = k.div_ceil(16) * 16;
    let rows = m.div_ceil(MR) * MR;
    let mut ahead = crate::kernels::gemm::Bursts::new(ahead, n.div_ceil(NR) * m.div_ceil(MR));
    SCRATCH.with_borrow_mut(|(qa, sa)| {
        if qa.len() < rows * kq {
            qa.resize(rows * kq, 0);
        }
        sa.resize(m, 0.0);
        // SAFETY: AVX-512 F and BW (the caller's contract); `qa` holds
        // m * kq bytes, kq >= k a multiple of 16; `sa` m values.
        let unsigned =
            unsafe { crate::kernels::amx::quantize_rows(m, k, a, lda, &mut qa[..m * kq], kq, sa) };
        if !unsigned {
            // int8 to the uint8 `vpdpbusd` takes: q + 128.
            qa[..m * kq].iter_mut().for_each(|x| *x ^= 0x80);
        }
        let cp = c.as_mut_ptr();
        for panel in 0..n.div_ceil(NR) {
            let (j0, nn) = (panel * NR, NR.min(n - panel * NR));
            let bp = w.values[panel * groups * NR * 4..].as_ptr();
            let mut i = 0;
            while i < m {
                ahead.next();
                let r = (m - i).min(MR);
                let cols = Cols {
                    j0,
                    nn,
                    scales: &w.scales[j0..j0 + NR],
                    shift: (!unsigned).then(|| &w.shift[j0..j0 + NR]),
                };
                // SAFETY: rows i .. i + MR of `qa` exist (`rows` of kq
                // bytes); the panel's groups * 128 bytes are in `values`;
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
                        5 => finish::<5>(&acc, cr, ldc, t, &cols, start, relu),
                        6 => finish::<6>(&acc, cr, ldc, t, &cols, start, relu),
                        7 => finish::<7>(&acc, cr, ldc, t, &cols, start, relu),
                        8 => finish::<8>(&acc, cr, ldc, t, &cols, start, relu),
                        9 => finish::<9>(&acc, cr, ldc, t, &cols, start, relu),
                        10 => finish::<10>(&acc, cr, ldc, t, &cols, start, relu),
                        _ => finish::<11>(&acc, cr, ldc, t, &cols, start, relu),
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
/// AVX-512 F and VNNI must be present; `a` holds `MR` rows of `4 *
/// groups` bytes at stride `sa`, `b` `groups * 128` bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
unsafe fn sums(groups: usize, a: *const u8, sa: usize, b: *const i8) -> [[__m512i; 2]; MR] {
    let mut acc = [[_mm512_setzero_si512(); 2]; MR];
    for g in 0..groups {
        // SAFETY: g < groups, so the group's 128 bytes of `b` and bytes
        // 4g .. 4g + 4 of each of the MR rows of `a` are inside them.
        unsafe {
            let b0 = _mm512_loadu_si512(b.add(g * 128) as *const _);
            let b1 = _mm512_loadu_si512(b.add(g * 128 + 64) as *const _);
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_epi32((a.add(r * sa + 4 * g) as *const i32).read_unaligned());
                acc[0] = _mm512_dpbusd_epi32(acc[0], x, b0);
                acc[1] = _mm512_dpbusd_epi32(acc[1], x, b1);
            }
        }
    }
    acc
}

/// A panel's columns for [`finish`] (and `gemm_avx_vnni`'s): the first,
/// how many (at most the panel's width: 32 here, 16 there), their scales
/// and (shifted int8 activations) what to subtract, a panel's width each.
pub(crate) struct Cols<'a> {
    pub j0: usize,
    pub nn: usize,
    pub scales: &'a [f32],
    pub shift: Option<&'a [i32]>,
}

/// Stores the first `R` rows of `acc` into `c` (rows `ldc` apart,
/// columns `cols.j0 ..`): `relu?(start + sa[r] * sw[j] * (sum - shift))`.
///
/// # Safety
/// AVX-512 F, BW and VL must be present; `c` holds `R` rows of `cols.nn`
/// values, `start`'s slices columns `j0 .. j0 + nn` (and rows `i0 .. i0 +
/// R`), `sa` `R` values and `cols`' slices 32 each.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
unsafe fn finish<const R: usize>(
    acc: &[[__m512i; 2]; MR],
    c: *mut f32,
    ldc: usize,
    (i0, sa): (usize, &[f32]),
    cols: &Cols<'_>,
    start: Start<'_>,
    relu: bool,
) {
    let (j0, nn) = (cols.j0, cols.nn);
    // SAFETY: the function's contract is `start_tile`'s and `store_tile`'s;
    // `cols`' slices hold 32 values.
    unsafe {
        let mut out = start_tile::<R>(c, ldc, (i0, j0, nn), start);
        let sw = load32(cols.scales.as_ptr(), NR);
        let shift = match cols.shift {
            Some(s) => [
                _mm512_loadu_si512(s.as_ptr() as *const _),
                _mm512_loadu_si512(s.as_ptr().add(16) as *const _),
            ],
            None => [_mm512_setzero_si512(); 2],
        };
        for r in 0..R {
            let s = _mm512_set1_ps(sa[r]);
            for h in 0..2 {
                let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][h], shift[h]));
                out[r][h] = _mm512_fmadd_ps(v, _mm512_mul_ps(sw[h], s), out[r][h]);
            }
        }
        store_tile::<R>(&out, c, ldc, nn, relu);
    }
}
