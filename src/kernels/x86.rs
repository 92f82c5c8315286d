//! AVX2 + FMA + F16C kernels. Every function here is compiled for those
//! features and must only be called after `Level::detect()` returned
//! `Level::Avx2` (the callers in `kernels/mod.rs` guarantee it).
//!
//! Loads are unaligned (`loadu`), so only slice lengths matter; each `dot_*`
//! reads exactly `dtype.row_bytes(user.len())` bytes of its row, which the
//! callers obtain through bounds-checked slicing.

use std::arch::x86_64::*;

use super::{row, Block, Loc};
use crate::schema::Dtype;

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let s = _mm_add_ps(lo, hi);
    let sh = _mm_movehdup_ps(s);
    let s2 = _mm_add_ps(s, sh);
    let sh2 = _mm_movehl_ps(sh, s2);
    _mm_cvtss_f32(_mm_add_ss(s2, sh2))
}

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

macro_rules! dot_fn {
    ($name:ident, $load:ident, $width:expr) => {
        /// Dot product of `u` with a row of `u.len()` elements of `$width`
        /// bytes each (`r.len() >= u.len() * $width`).
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        fn $name(u: &[f32], r: &[u8]) -> f32 {
            let d = u.len();
            assert!(r.len() >= d * $width);
            let (mut a0, mut a1, mut a2, mut a3) = (
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
            );
            let mut j = 0;
            // SAFETY (loads below): j + 32 <= d (or j + 8 <= d) elements are
            // in `u`, and in `r` by the assertion above.
            while j + 32 <= d {
                unsafe {
                    a0 = _mm256_fmadd_ps(load_user(u, j), $load(r, j), a0);
                    a1 = _mm256_fmadd_ps(load_user(u, j + 8), $load(r, j + 8), a1);
                    a2 = _mm256_fmadd_ps(load_user(u, j + 16), $load(r, j + 16), a2);
                    a3 = _mm256_fmadd_ps(load_user(u, j + 24), $load(r, j + 24), a3);
                }
                j += 32;
            }
            while j + 8 <= d {
                unsafe {
                    a0 = _mm256_fmadd_ps(load_user(u, j), $load(r, j), a0);
                }
                j += 8;
            }
            if j < d {
                // Tail: copy the last d - j elements into zero-padded buffers.
                let n = d - j;
                let mut ub = [0f32; 8];
                ub[..n].copy_from_slice(&u[j..]);
                let mut rb = [0u8; 8 * $width];
                rb[..n * $width].copy_from_slice(&r[j * $width..d * $width]);
                // SAFETY: both buffers hold 8 elements.
                unsafe {
                    a1 = _mm256_fmadd_ps(load_user(&ub, 0), $load(&rb, 0), a1);
                }
            }
            hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)))
        }
    };
}

dot_fn!(dot_f32, load_f32, 4);
dot_fn!(dot_f16, load_f16, 2);
dot_fn!(dot_bf16, load_bf16, 2);
dot_fn!(dot_i8_raw, load_i8, 1);

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_i8(u: &[f32], r: &[u8]) -> f32 {
    let d = u.len();
    let s = &r[d..d + 4];
    dot_i8_raw(u, r) * f32::from_le_bytes([s[0], s[1], s[2], s[3]])
}

/// Prefetches the first cache line of `r` into all cache levels.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn prefetch_first(r: &[u8]) {
    // A prefetch is a hint: it never faults, whatever the address.
    _mm_prefetch::<_MM_HINT_T0>(r.as_ptr() as *const i8);
}

/// Prefetches every cache line of `r` into all cache levels.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn prefetch(r: &[u8]) {
    let start = r.as_ptr() as usize & !63;
    let end = r.as_ptr() as usize + r.len();
    let mut a = start;
    while a < end {
        // A prefetch is a hint: it never faults, whatever the address.
        _mm_prefetch::<_MM_HINT_T0>(a as *const i8);
        a += 64;
    }
}

macro_rules! loops {
    ($gather:ident, $range:ident, $dot:ident, $split:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        fn $gather(user: &[f32], blocks: &[Block<'_>], locs: &[Loc], out: &mut [f32], rb: usize) {
            use std::sync::atomic::Ordering::Relaxed;
            let far = super::ROW_KNOB.load(Relaxed);
            // f32 rows of three lines or more: the first line `far` rows
            // ahead (which, we think, starts the row's page walk early)
            // and every line `near` rows ahead. Alternated with every line
            // at 16 ahead in one process (examples/ab_query, 1M rows,
            // n = 5,000): f32 7.5% faster at d = 64 and 9% at d = 128; f16
            // at d = 128 no faster, i8 at d = 128 2% slower and two-line
            // rows 3-4% slower, so other dtypes keep the single distance.
            let near = if $split && rb > 128 {
                super::NEAR_KNOB.load(Relaxed).min(far)
            } else {
                0
            };
            for (i, (o, l)) in out.iter_mut().zip(locs).enumerate() {
                if let Some(next) = locs.get(i + far).and_then(|&n| row(blocks, n, rb)) {
                    if near == 0 {
                        prefetch(next);
                    } else {
                        prefetch_first(next);
                    }
                }
                if near > 0 {
                    if let Some(next) = locs.get(i + near).and_then(|&n| row(blocks, n, rb)) {
                        prefetch(next);
                    }
                }
                *o = match row(blocks, *l, rb) {
                    Some(r) => $dot(user, r),
                    None => f32::NAN,
                };
            }
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        fn $range(user: &[f32], block: Block<'_>, first: usize, out: &mut [f32], rb: usize) {
            for (i, o) in out.iter_mut().enumerate() {
                let at = (first + i) * block.stride;
                *o = match block.bytes.get(at..at + rb) {
                    Some(r) => $dot(user, r),
                    None => f32::NAN,
                };
            }
        }
    };
}

loops!(gather_f32, range_f32, dot_f32, true);
loops!(gather_f16, range_f16, dot_f16, false);
loops!(gather_bf16, range_bf16, dot_bf16, false);
loops!(gather_i8, range_i8, dot_i8, false);

/// See [`super::score_gather`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn score_gather(
    dtype: Dtype,
    user: &[f32],
    blocks: &[Block<'_>],
    locs: &[Loc],
    out: &mut [f32],
) {
    let rb = dtype.row_bytes(user.len() as u32);
    match dtype {
        Dtype::F32 => gather_f32(user, blocks, locs, out, rb),
        Dtype::F16 => gather_f16(user, blocks, locs, out, rb),
        Dtype::Bf16 => gather_bf16(user, blocks, locs, out, rb),
        Dtype::I8 => gather_i8(user, blocks, locs, out, rb),
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
