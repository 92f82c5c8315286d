//! AVX-512 two-tower kernels: the AVX2 scheme of `x86` (four rows per
//! group, each user load serving all four, two accumulator chains per row,
//! prefetch ahead in the gather loop) at 16 lanes, with the tail of a row
//! read by masked loads instead of copies into padded buffers. Every
//! function here is compiled for AVX-512 F, BW and VL (with AVX2, FMA and
//! F16C) and must only be called after `Level::detect()` returned
//! `Level::Avx512` or higher (the callers in `kernels/mod.rs` guarantee it).
//!
//! Masked loads touch (and can fault on) only the unmasked elements, so
//! each `dot4_*` reads exactly `dtype.row_bytes(user.len())` bytes of each
//! of its four rows, which the callers obtain through bounds-checked
//! slicing. A row scores the same in any group and either loop; it may
//! differ from the AVX2 score in the last bits (another summation order).

use std::arch::x86_64::*;

use super::x86::{hsum4, i8_scales, loops};
use super::{Block, Loc};
use crate::schema::Dtype;

/// The load mask of the 16 elements from `j` of a row of `d` (all ones
/// while `j + 16 <= d`).
#[inline(always)]
fn mask(j: usize, d: usize) -> __mmask16 {
    let n = d.saturating_sub(j);
    if n >= 16 {
        u16::MAX
    } else {
        ((1u32 << n) - 1) as u16
    }
}

/// 16 user components from `j`, zero where `m` is clear.
/// SAFETY (this and the four row loads): the slice holds every element of
/// `j..j + 16` whose bit is set in `m` (elements of the row's type).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn load_user(u: &[f32], j: usize, m: __mmask16) -> __m512 {
    unsafe { _mm512_maskz_loadu_ps(m, u.as_ptr().add(j)) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn load_f32(r: &[u8], j: usize, m: __mmask16) -> __m512 {
    unsafe { _mm512_maskz_loadu_ps(m, r.as_ptr().add(4 * j) as *const f32) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn load_f16(r: &[u8], j: usize, m: __mmask16) -> __m512 {
    let h = unsafe { _mm256_maskz_loadu_epi16(m, r.as_ptr().add(2 * j) as *const i16) };
    _mm512_cvtph_ps(h)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn load_bf16(r: &[u8], j: usize, m: __mmask16) -> __m512 {
    let h = unsafe { _mm256_maskz_loadu_epi16(m, r.as_ptr().add(2 * j) as *const i16) };
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn load_i8(r: &[u8], j: usize, m: __mmask16) -> __m512 {
    let q = unsafe { _mm_maskz_loadu_epi8(m, r.as_ptr().add(j) as *const i8) };
    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q))
}

/// `v`'s two 256-bit halves added.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn fold(v: __m512) -> __m256 {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    _mm256_add_ps(_mm512_castps512_ps256(v), hi)
}

macro_rules! dot4_fn {
    ($name:ident, $load:ident, $width:expr) => {
        /// Dot products of `u` with four rows of `u.len()` elements of
        /// `$width` bytes each (every `r[k].len() >= u.len() * $width`).
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
        #[inline]
        fn $name(u: &[f32], r: [&[u8]; 4]) -> __m128 {
            let d = u.len();
            for x in r {
                assert!(x.len() >= d * $width);
            }
            let z = _mm512_setzero_ps();
            let (mut a, mut b) = ([z; 4], [z; 4]);
            let all = u16::MAX;
            let mut j = 0;
            // SAFETY (loads below): j + 32 <= d (or the masked elements
            // of j..j + 16 are below d) in `u` and, by the assertion
            // above, in every row.
            while j + 32 <= d {
                unsafe {
                    let u0 = load_user(u, j, all);
                    let u1 = load_user(u, j + 16, all);
                    for k in 0..4 {
                        a[k] = _mm512_fmadd_ps(u0, $load(r[k], j, all), a[k]);
                    }
                    for k in 0..4 {
                        b[k] = _mm512_fmadd_ps(u1, $load(r[k], j + 16, all), b[k]);
                    }
                }
                j += 32;
            }
            while j < d {
                let m = mask(j, d);
                unsafe {
                    let u0 = load_user(u, j, m);
                    for k in 0..4 {
                        a[k] = _mm512_fmadd_ps(u0, $load(r[k], j, m), a[k]);
                    }
                }
                j += 16;
            }
            hsum4([
                fold(_mm512_add_ps(a[0], b[0])),
                fold(_mm512_add_ps(a[1], b[1])),
                fold(_mm512_add_ps(a[2], b[2])),
                fold(_mm512_add_ps(a[3], b[3])),
            ])
        }
    };
}

dot4_fn!(dot4_f32, load_f32, 4);
dot4_fn!(dot4_f16, load_f16, 2);
dot4_fn!(dot4_bf16, load_bf16, 2);
dot4_fn!(dot4_i8_raw, load_i8, 1);

/// The i8 rows' dot products times each row's scale (the f32 after its
/// `d` codes).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn dot4_i8(u: &[f32], r: [&[u8]; 4]) -> __m128 {
    _mm_mul_ps(dot4_i8_raw(u, r), i8_scales(r, u.len()))
}

loops!(
    "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
    gather_f32,
    range_f32,
    rows_f32,
    one_f32,
    dot4_f32,
    true
);
loops!(
    "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
    gather_f16,
    range_f16,
    rows_f16,
    one_f16,
    dot4_f16,
    false
);
loops!(
    "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
    gather_bf16,
    range_bf16,
    rows_bf16,
    one_bf16,
    dot4_bf16,
    false
);
loops!(
    "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
    gather_i8,
    range_i8,
    rows_i8,
    one_i8,
    dot4_i8,
    false
);

/// See [`super::score_gather`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
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
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
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
