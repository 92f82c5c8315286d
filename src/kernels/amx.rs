//! bf16 matrix products for the model layers on AMX tiles: `C = act(start
//! + A @ B)` with `A` rounded to bf16 per call and `B` (the weights) packed
//! once, at model load, as bf16 in the tile layout `tdpbf16ps` reads.
//!
//! Layout. `k` is padded with zeros to `kp`, a multiple of 32 (one tile
//! row: 32 bf16 = 64 bytes); `n` to `np`, a multiple of 32 (two 16-column
//! tiles). `B` is stored as `[np/16][kp/2][16][2]` bf16: for a 16-column
//! block, row `q` holds the pair `(W[j][2q], W[j][2q+1])` of every column
//! `j` (the "VNNI" pair layout). `A` is converted into a thread-local
//! buffer `[mp][kp]` bf16 (`mp` = `m` rounded up to 16), zero beyond `k`.
//!
//! The kernel runs 2x2 tiles of accumulators (32 rows x 32 columns, tmm0 to
//! tmm3) over two `A` tiles (tmm4, tmm5) and two `B` tiles (tmm6, tmm7),
//! stores the accumulators to a thread-local f32 buffer and adds the start
//! values and ReLU while copying into `C` (AVX-512).
//!
//! Every function here needs AMX-TILE and AMX-BF16, with the tile state
//! granted to the process ([`granted`]), and AVX-512 F, BW, VL and BF16:
//! `Level::Amx` guarantees all of them.

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;

use crate::kernels::gemm::Start;
use crate::kernels::gemm_avx512::{load32, load32_f16, masks};

/// Rows of an `A` tile and of an accumulator tile.
const TM: usize = 16;
/// bf16 values per tile row (64 bytes).
const TK: usize = 32;
/// Columns of a `B` or accumulator tile.
const TN: usize = 16;

/// `k` padded for the tiles.
pub(crate) fn padded_k(k: usize) -> usize {
    k.div_ceil(TK) * TK
}

/// `n` padded for the tiles (two column tiles per step).
pub(crate) fn padded_n(n: usize) -> usize {
    n.div_ceil(2 * TN) * 2 * TN
}

/// Whether this CPU has AMX-TILE, AMX-BF16 and AMX-INT8 (CPUID leaf 7,
/// EDX bits 24, 22 and 25) and the kernel let this process use the tile
/// state (Linux `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`,
/// asked once; without it the first tile instruction kills the process).
pub(crate) fn granted() -> bool {
    static GRANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *GRANTED.get_or_init(|| {
        // CPUID leaf 7 exists on every x86-64 CPU with AVX2, which the
        // callers have checked; reading it has no side effect.
        let leaf7 = __cpuid_count(7, 0);
        let (bf16, tile, int8) = (
            leaf7.edx & (1 << 22) != 0,
            leaf7.edx & (1 << 24) != 0,
            leaf7.edx & (1 << 25) != 0,
        );
        if !(bf16 && tile && int8) {
            return false;
        }
        request_tile_state()
    })
}

/// Asks the Linux kernel for the AMX tile data state (once per process).
#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM) only changes which extended
    // states the process may use; it reads and writes no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) };
    rc == 0
}

/// Other systems: not supported here (the tile state must be granted by
/// the OS, and only Linux's protocol is implemented).
#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// Round-to-nearest-even f32 -> bf16 (NaN kept a NaN), as `vcvtne2ps2bf16`
/// rounds.
#[inline]
pub(crate) fn to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// Packs `w` (`[n, k]` row-major) as `[np/16][kp/2][16][2]` bf16, zero
/// padded (see the module comment).
pub(crate) fn pack(w: &[f32], n: usize, k: usize) -> Vec<u16> {
    let (kp, np) = (padded_k(k), padded_n(n));
    let mut out = vec![0u16; np * kp];
    for j in 0..n {
        let (blk, col) = (j / TN, j % TN);
        for p in 0..k {
            let (q, t) = (p / 2, p % 2);
            out[((blk * (kp / 2) + q) * TN + col) * 2 + t] = to_bf16(w[j * k + p]);
        }
    }
    out
}

/// The tile configuration (palette 1): tmm0..tmm7 all 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn full() -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1; // palette
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
            c[48 + t] = TM as u8;
        }
        TileConfig(c)
    }
}

thread_local! {
    /// Per thread: `A` as bf16 and the accumulators as f32.
    static SCRATCH: RefCell<(Vec<u16>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Rounds rows `a[i*lda ..][..k]` (`i < m`) to bf16 into `dst` (`[mp][kp]`,
/// zero beyond `k`).
///
/// # Safety
/// AVX-512 F, BW, VL and BF16 must be present; `a` holds `(m-1)*lda + k`
/// values and `dst` `m * kp`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,fma,f16c")]
unsafe fn round_rows(m: usize, k: usize, a: &[f32], lda: usize, dst: &mut [u16], kp: usize) {
    for i in 0..m {
        let (src, out) = (a[i * lda..].as_ptr(), dst[i * kp..].as_mut_ptr());
        let mut p = 0;
        while p < kp {
            let nn = k.saturating_sub(p).min(32);
            // SAFETY: a masked load reads only the `nn` values left in row
            // i (p + nn <= k); the store writes 32 bf16 at p < kp, kp a
            // multiple of 32, inside row i of `dst`.
            unsafe {
                let [x0, x1] = load32(src.add(p.min(k)), nn);
                let h = _mm512_cvtne2ps_pbh(x1, x0);
                _mm512_storeu_si512(out.add(p) as *mut __m512i, std::mem::transmute::<__m512bh, __m512i>(h));
            }
            p += 32;
        }
    }
}

/// `R` (1 or 2) row tiles of `A` against every column pair of `B` into
/// `acc` (`[R*16][np]` f32).
///
/// # Safety
/// AMX-TILE and AMX-BF16 must be usable and configured with
/// [`TileConfig::full`]; `a` holds `R*16` rows of `kp` bf16, `b` the
/// packed `np * kp` bf16, `acc` `R*16*np` f32.
#[inline]
unsafe fn tiles<const R: usize>(a: *const u16, kp: usize, b: *const u16, np: usize, acc: *mut f32) {
    let a_stride = kp * 2;
    let c_stride = np * 4;
    let b_block = (kp / 2) * TN * 2; // u16 per 16-column block
    for jb in (0..np / TN).step_by(2) {
        // SAFETY: the tile instructions read and write only the rows and
        // columns the configuration gives (16 rows x 64 bytes per tile) at
        // the addresses and strides below, all inside the caller's
        // buffers: A tile (r, kc) at row r*16, bf16 column kc*32; B tile
        // (jb, kc) at block jb, pair row kc*16; accumulator (r, jb) at
        // row r*16, column jb*16.
        unsafe {
            let b0 = b.add(jb * b_block);
            let b1 = b.add((jb + 1) * b_block);
            asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
            if R == 2 {
                asm!("tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            }
            for kc in 0..kp / TK {
                let pa0 = a.add(kc * TK);
                let pb0 = b0.add(kc * TK * TN);
                let pb1 = b1.add(kc * TK * TN);
                if R == 2 {
                    let pa1 = a.add(TM * kp + kc * TK);
                    asm!(
                        "tileloadd tmm4, [{a0} + {sa}]",
                        "tileloadd tmm5, [{a1} + {sa}]",
                        "tileloadd tmm6, [{b0} + {sb}]",
                        "tileloadd tmm7, [{b1} + {sb}]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        a0 = in(reg) pa0, a1 = in(reg) pa1, b0 = in(reg) pb0, b1 = in(reg) pb1,
                        sa = in(reg) a_stride, sb = in(reg) 64usize,
                        options(nostack, readonly),
                    );
                } else {
                    asm!(
                        "tileloadd tmm4, [{a0} + {sa}]",
                        "tileloadd tmm6, [{b0} + {sb}]",
                        "tileloadd tmm7, [{b1} + {sb}]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        a0 = in(reg) pa0, b0 = in(reg) pb0, b1 = in(reg) pb1,
                        sa = in(reg) a_stride, sb = in(reg) 64usize,
                        options(nostack, readonly),
                    );
                }
            }
            let c0 = acc.add(jb * TN);
            asm!(
                "tilestored [{c0} + {sc}], tmm0",
                "tilestored [{c1} + {sc}], tmm1",
                c0 = in(reg) c0, c1 = in(reg) c0.add(TN), sc = in(reg) c_stride,
                options(nostack),
            );
            if R == 2 {
                let c2 = c0.add(TM * np);
                asm!(
                    "tilestored [{c2} + {sc}], tmm2",
                    "tilestored [{c3} + {sc}], tmm3",
                    c2 = in(reg) c2, c3 = in(reg) c2.add(TN), sc = in(reg) c_stride,
                    options(nostack),
                );
            }
        }
    }
}

/// `c[i*ldc + j] = relu?(start(i, j) + sum_p bf16(a[i*lda + p]) *
/// B[p][j])` for `i < m`, `j < n`, with `B` packed by [`pack`], products
/// of bf16 values accumulated in f32.
///
/// # Safety
/// AMX-TILE and AMX-BF16 must be usable ([`granted`]) and AVX-512 F, BW,
/// VL and BF16 present; `a` must hold `(m-1)*lda + k` values, `packed`
/// `padded_n(n) * padded_k(k)`, `c` `(m-1)*ldc + n`, a bias or `add` slice
/// `n` values and each of `m` start rows `n` values of its type (checked
/// by the safe caller).
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
) {
    let (kp, np) = (padded_k(k), padded_n(n));
    let mp = m.div_ceil(TM) * TM;
    SCRATCH.with_borrow_mut(|(abuf, acc)| {
        if abuf.len() < mp * kp {
            abuf.resize(mp * kp, 0);
        }
        if acc.len() < mp * np {
            acc.resize(mp * np, 0.0);
        }
        // SAFETY: the caller's contract bounds `a`; `abuf` holds mp * kp.
        unsafe { round_rows(m, k, a, lda, abuf, kp) };
        // Rows m..mp of `abuf` hold older (finite, or whatever) values:
        // their products land in accumulator rows that are never read.
        let cfg = TileConfig::full();
        // SAFETY: the CPU has AMX and the process the tile state (the
        // caller's contract); `cfg` is a valid palette-1 configuration.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly)) };
        let (ap, bp, cp) = (abuf.as_ptr(), packed.as_ptr(), acc.as_mut_ptr());
        let mut i = 0;
        while i < mp {
            // SAFETY: rows i..i+32 (or i..i+16) are inside `abuf` and
            // `acc` (mp rows each); `packed` holds np * kp bf16.
            unsafe {
                if i + 2 * TM <= mp {
                    tiles::<2>(ap.add(i * kp), kp, bp, np, cp.add(i * np));
                    i += 2 * TM;
                } else {
                    tiles::<1>(ap.add(i * kp), kp, bp, np, cp.add(i * np));
                    i += TM;
                }
            }
        }
        // SAFETY: releases the tile state this call configured.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
        // SAFETY: the caller's contract bounds `c` and `start`; `acc`
        // holds m rows of np >= n values.
        unsafe { finish(m, n, acc, np, c, ldc, start, relu) };
    });
}

/// `c[i*ldc + j] = relu?(start(i, j) + acc[i*lda + j])`.
///
/// # Safety
/// AVX-512 F, BW and VL must be present; the slices hold what
/// [`gemm_packed`]'s contract says (and `acc` `m` rows of `lda >= n`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn finish(
    m: usize,
    n: usize,
    acc: &[f32],
    lda: usize,
    c: &mut [f32],
    ldc: usize,
    start: Start<'_>,
    relu: bool,
) {
    let zero = _mm512_setzero_ps();
    for i in 0..m {
        let mut j = 0;
        while j < n {
            let nn = (n - j).min(32);
            // SAFETY: columns j..j+nn of row i are inside every slice (the
            // contract); masked loads and stores touch only those.
            unsafe {
                let [x0, x1] = load32(acc.as_ptr().add(i * lda + j), nn);
                let dst = c.as_mut_ptr().add(i * ldc + j);
                let [s0, s1] = match start {
                    Start::Zero => [zero, zero],
                    Start::Accumulate => load32(dst as *const f32, nn),
                    Start::Bias(b) => load32(b.as_ptr().add(j), nn),
                    Start::Rows { rows, half, add } => {
                        let u = load32(add.as_ptr().add(j), nn);
                        let row = rows[i].as_ptr();
                        let v = if half {
                            load32_f16(row.add(2 * j), nn)
                        } else {
                            load32(row.add(4 * j) as *const f32, nn)
                        };
                        [_mm512_add_ps(v[0], u[0]), _mm512_add_ps(v[1], u[1])]
                    }
                };
                let (mut y0, mut y1) = (_mm512_add_ps(s0, x0), _mm512_add_ps(s1, x1));
                if relu {
                    y0 = _mm512_max_ps(y0, zero);
                    y1 = _mm512_max_ps(y1, zero);
                }
                let [m0, m1] = masks(nn);
                _mm512_mask_storeu_ps(dst, m0, y0);
                _mm512_mask_storeu_ps(dst.add(16), m1, y1);
            }
            j += 32;
        }
    }
}
