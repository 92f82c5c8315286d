//! AVX2 + FMA + F16C kernels. Every function here is compiled for those
//! features and must only be called after `Level::detect()` returned
//! `Level::Avx2` (the callers in `kernels/mod.rs` guarantee it).
//!
//! Loads are unaligned (`loadu`), so only slice lengths matter; each `dot4_*`
//! reads exactly `dtype.row_bytes(user.len())` bytes of each of its four
//! rows, which the callers obtain through bounds-checked slicing. Rows are
//! scored four at a time; a row left over is scored as four copies of
//! itself, so every row's score is the same in any group and either loop.

use std::arch::x86_64::*;

use super::{row, Block, Loc};
use crate::schema::Dtype;

/// Loads 8 user components starting at `j` (`j + 8 <= u.len()`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_user(u: &[f32], j: usize) -> __m256 {
    debug_assert!(j + 8 <= u.len());
    // SAFETY: the caller guarantees j + 8 <= u.len().
    unsafe { _mm256_loadu_ps(u.as_ptr().add(j)) }
}

/// 8 row components starting at element `j`, widened to f32.
/// SAFETY (all four): the row slice holds at least `j + 8` elements of the type.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_f32(r: &[u8], j: usize) -> __m256 {
    unsafe { _mm256_loadu_ps(r.as_ptr().add(4 * j) as *const f32) }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_f16(r: &[u8], j: usize) -> __m256 {
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(r.as_ptr().add(2 * j) as *const __m128i)) }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_bf16(r: &[u8], j: usize) -> __m256 {
    let h = unsafe { _mm_loadu_si128(r.as_ptr().add(2 * j) as *const __m128i) };
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_i8(r: &[u8], j: usize) -> __m256 {
    let q = unsafe { _mm_loadl_epi64(r.as_ptr().add(j) as *const __m128i) };
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))
}

/// The lane sums of four accumulators, `[sum(s[0]), .., sum(s[3])]`, by a
/// tree of horizontal adds.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn hsum4(s: [__m256; 4]) -> __m128 {
    let s01 = _mm256_hadd_ps(s[0], s[1]);
    let s23 = _mm256_hadd_ps(s[2], s[3]);
    let t = _mm256_hadd_ps(s01, s23);
    _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps::<1>(t))
}

macro_rules! dot4_fn {
    ($name:ident, $load:ident, $width:expr) => {
        /// Dot products of `u` with four rows of `u.len()` elements of
        /// `$width` bytes each (every `r[k].len() >= u.len() * $width`):
        /// each user load serves four rows, two accumulator chains per row,
        /// and one tree of horizontal adds sums all four.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        fn $name(u: &[f32], r: [&[u8]; 4]) -> __m128 {
            let d = u.len();
            for x in r {
                assert!(x.len() >= d * $width);
            }
            let z = _mm256_setzero_ps();
            let (mut a, mut b) = ([z; 4], [z; 4]);
            let mut j = 0;
            // SAFETY (loads below): j + 16 <= d (or j + 8 <= d) elements
            // are in `u`, and in every row by the assertion above.
            while j + 16 <= d {
                unsafe {
                    let u0 = load_user(u, j);
                    let u1 = load_user(u, j + 8);
                    for k in 0..4 {
                        a[k] = _mm256_fmadd_ps(u0, $load(r[k], j), a[k]);
                    }
                    for k in 0..4 {
                        b[k] = _mm256_fmadd_ps(u1, $load(r[k], j + 8), b[k]);
                    }
                }
                j += 16;
            }
            if j + 8 <= d {
                unsafe {
                    let u0 = load_user(u, j);
                    for k in 0..4 {
                        a[k] = _mm256_fmadd_ps(u0, $load(r[k], j), a[k]);
                    }
                }
                j += 8;
            }
            if j < d {
                // Tail: the last d - j elements in zero-padded buffers.
                let n = d - j;
                let mut ub = [0f32; 8];
                ub[..n].copy_from_slice(&u[j..]);
                for k in 0..4 {
                    let mut rb = [0u8; 8 * $width];
                    rb[..n * $width].copy_from_slice(&r[k][j * $width..d * $width]);
                    // SAFETY: both buffers hold 8 elements.
                    unsafe {
                        b[k] = _mm256_fmadd_ps(load_user(&ub, 0), $load(&rb, 0), b[k]);
                    }
                }
            }
            hsum4([
                _mm256_add_ps(a[0], b[0]),
                _mm256_add_ps(a[1], b[1]),
                _mm256_add_ps(a[2], b[2]),
                _mm256_add_ps(a[3], b[3]),
            ])
        }
    };
}

dot4_fn!(dot4_f32, load_f32, 4);
dot4_fn!(dot4_f16, load_f16, 2);
dot4_fn!(dot4_bf16, load_bf16, 2);
dot4_fn!(dot4_i8_raw, load_i8, 1);

/// The i8 rows' dot products times each row's scale.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot4_i8(u: &[f32], r: [&[u8]; 4]) -> __m128 {
    _mm_mul_ps(dot4_i8_raw(u, r), i8_scales(r, u.len()))
}

/// The scales of four i8 rows of `d` codes (the f32 after the codes).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn i8_scales(r: [&[u8]; 4], d: usize) -> __m128 {
    let scale = |x: &[u8]| {
        let s = &x[d..d + 4];
        f32::from_le_bytes([s[0], s[1], s[2], s[3]])
    };
    _mm_setr_ps(scale(r[0]), scale(r[1]), scale(r[2]), scale(r[3]))
}

/// Prefetches row `i` of `locs` (if any) into L2: only its first line if
/// `first`, else every line. Into L2 rather than L1, whose few misses in
/// flight would cap the rows on their way (on Zen 4 the gather stage took
/// up to 1.7x as long with prefetches into L1: docs/PERF.md). A plain
/// function (no target features), so that it inlines into the loops below.
#[inline(always)]
pub(super) fn prefetch_row(blocks: &[Block<'_>], locs: &[Loc], i: usize, rb: usize, first: bool) {
    let Some(r) = locs.get(i).and_then(|&l| row(blocks, l, rb)) else {
        return;
    };
    if first {
        super::prefetch_line_l2(r.as_ptr());
        return;
    }
    let mut a = r.as_ptr() as usize & !63;
    let end = r.as_ptr() as usize + r.len();
    while a < end {
        super::prefetch_line_l2(a as *const u8);
        a += 64;
    }
}

/// The gather and range loops over a four-row dot product `$dot4` (and a
/// one-row form that calls it with four copies), compiled for the target
/// features `$feat`: shared by the AVX2 kernels here and the AVX-512 ones
/// (`x86_512`).
macro_rules! loops {
    ($feat:literal, $gather:ident, $range:ident, $rows:ident, $one:ident, $dot4:ident, $split:expr) => {
        #[target_feature(enable = $feat)]
        fn $gather(
            user: &[f32],
            blocks: &[$crate::kernels::Block<'_>],
            locs: &[$crate::kernels::Loc],
            out: &mut [f32],
            rb: usize,
            prefetch: bool,
        ) {
            let far = $crate::kernels::row_ahead();
            // f32 rows of three lines or more: the first line `far` rows
            // ahead (perhaps starting the row's page walk early; not
            // verified) and every line `near` rows ahead. Other rows
            // prefetch every line `far` ahead: the split helped only f32
            // rows of 3+ lines (docs/PERF.md, "Two-tower query").
            let near = if $split && rb > 128 {
                $crate::kernels::near_ahead().min(far)
            } else {
                0
            };
            let ahead = |i: usize| {
                if !prefetch {
                    return;
                }
                $crate::kernels::x86::prefetch_row(blocks, locs, i + far, rb, near > 0);
                if near > 0 {
                    $crate::kernels::x86::prefetch_row(blocks, locs, i + near, rb, false);
                }
            };
            let n = out.len().min(locs.len());
            $rows(
                user,
                |i| $crate::kernels::row(blocks, locs[i], rb),
                ahead,
                &mut out[..n],
            );
        }

        #[target_feature(enable = $feat)]
        fn $range(
            user: &[f32],
            block: $crate::kernels::Block<'_>,
            first: usize,
            out: &mut [f32],
            rb: usize,
        ) {
            let at = |i: usize| {
                let at = (first + i) * block.stride;
                block.bytes.get(at..at + rb)
            };
            $rows(user, at, |_| {}, out);
        }

        /// Scores rows `0..out.len()` (`rows(i)`; NaN where it is `None`)
        /// four at a time, calling `ahead(i)` before row `i`'s group.
        #[target_feature(enable = $feat)]
        fn $rows<'a>(
            user: &[f32],
            rows: impl Fn(usize) -> Option<&'a [u8]>,
            ahead: impl Fn(usize),
            out: &mut [f32],
        ) {
            let fours = out.len() / 4 * 4;
            for (i, o4) in out[..fours].chunks_exact_mut(4).enumerate() {
                let i = 4 * i;
                for k in 0..4 {
                    ahead(i + k);
                }
                if let [Some(r0), Some(r1), Some(r2), Some(r3)] =
                    [rows(i), rows(i + 1), rows(i + 2), rows(i + 3)]
                {
                    $crate::kernels::x86::store4(o4, $dot4(user, [r0, r1, r2, r3]));
                } else {
                    for (k, o) in o4.iter_mut().enumerate() {
                        *o = rows(i + k).map_or(f32::NAN, |r| $one(user, r));
                    }
                }
            }
            for (i, o) in out.iter_mut().enumerate().skip(fours) {
                ahead(i);
                *o = rows(i).map_or(f32::NAN, |r| $one(user, r));
            }
        }

        /// One row's score, computed exactly as in a group of four (so a
        /// row scores the same wherever it falls).
        #[target_feature(enable = $feat)]
        #[inline]
        fn $one(user: &[f32], r: &[u8]) -> f32 {
            _mm_cvtss_f32($dot4(user, [r; 4]))
        }
    };
}

pub(super) use loops;

/// Writes the four lanes of `v` to `o` (four long).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn store4(o: &mut [f32], v: __m128) {
    let mut a = [0f32; 4];
    // SAFETY: `a` holds four f32.
    unsafe { _mm_storeu_ps(a.as_mut_ptr(), v) };
    o.copy_from_slice(&a);
}

loops!(
    "avx2,fma,f16c",
    gather_f32,
    range_f32,
    rows_f32,
    one_f32,
    dot4_f32,
    true
);
loops!(
    "avx2,fma,f16c",
    gather_f16,
    range_f16,
    rows_f16,
    one_f16,
    dot4_f16,
    false
);
loops!(
    "avx2,fma,f16c",
    gather_bf16,
    range_bf16,
    rows_bf16,
    one_bf16,
    dot4_bf16,
    false
);
loops!(
    "avx2,fma,f16c",
    gather_i8,
    range_i8,
    rows_i8,
    one_i8,
    dot4_i8,
    false
);

/// See [`super::score_gather`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn score_gather(
    dtype: Dtype,
    user: &[f32],
    blocks: &[Block<'_>],
    locs: &[Loc],
    out: &mut [f32],
    prefetch: bool,
) {
    let rb = dtype.row_bytes(user.len() as u32);
    match dtype {
        Dtype::F32 => gather_f32(user, blocks, locs, out, rb, prefetch),
        Dtype::F16 => gather_f16(user, blocks, locs, out, rb, prefetch),
        Dtype::Bf16 => gather_bf16(user, blocks, locs, out, rb, prefetch),
        Dtype::I8 => gather_i8(user, blocks, locs, out, rb, prefetch),
    }
}

/// See [`super::score_range`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn score_range(
    dtype: Dtype,
    user: &[f32],
    block: Block<'_>,
    first: usize,
    out: &mut [f32],
) {
    let rb = dtype.row_bytes(user.len() as u32);
    match dtype {
        Dtype::F32 => range_f32(user, block, first, out, rb),
        Dtype::F16 => range_f16(user, block, first, out, rb),
        Dtype::Bf16 => range_bf16(user, block, first, out, rb),
        Dtype::I8 => range_i8(user, block, first, out, rb),
    }
}

/// `out[i] = f32(src[i])` for f16 bits `src` (`out.len() == src.len()`),
/// 8 at a time with F16C (`half`'s slice conversion calls out of line per
/// 8 values, which showed in the three-tower profile: docs/PERF.md).
///
/// # Safety
/// AVX2 and F16C must be present.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16_to_f32(src: &[u16], out: &mut [f32]) {
    assert_eq!(src.len(), out.len());
    let mut i = 0;
    while i + 8 <= src.len() {
        // SAFETY: i + 8 <= len for both slices.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
        i += 8;
    }
    for (o, &h) in out[i..].iter_mut().zip(&src[i..]) {
        *o = half::f16::from_bits(h).to_f32();
    }
}
