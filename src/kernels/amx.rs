//! bf16 matrix products for the model layers on AMX tiles: `C = act(start
//! + A @ B)` with `A` rounded to bf16 per call and `B` (the weights) packed
//! once, at model load, as bf16 in the tile layout `tdpbf16ps` reads.
//!
//! Layout. `k` is padded with zeros to `kp`, a multiple of 32 (one tile
//! row: 32 bf16 = 64 bytes); `n` to `np`, a multiple of 16 (one tile's
//! columns). `B` is stored as `[np/16][kp/2][16][2]` bf16: for a 16-column
//! block, row `q` holds the pair `(W[j][2q], W[j][2q+1])` of every column
//! `j` (the "VNNI" pair layout). `A` is converted into a thread-local
//! buffer `[mp][kp]` bf16 (`mp` = `m` rounded up to 16), zero beyond `k`.
//!
//! The kernel runs up to 48 rows (three accumulator tiles, tmm0 to tmm2,
//! over three `A` tiles, tmm3 to tmm5) against one 16-column block of `B`
//! at a time (tmm6 and tmm7 in turn), so each `B` tile is loaded once per
//! 48 rows; it stores each 48 x 16 block of sums to a buffer on the stack
//! (in L1) and adds the start values and ReLU while copying it into `C`
//! (AVX-512).
//!
//! Every function here needs AMX-TILE and AMX-BF16, with the tile state
//! granted to the process ([`granted`]), and AVX-512 F, BW, VL and BF16:
//! `Level::Amx` guarantees all of them.

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;

use crate::kernels::gemm::Start;
use crate::kernels::gemm_avx512::load32;

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

/// `n` padded for the tiles (16-column blocks).
pub(crate) fn padded_n(n: usize) -> usize {
    n.div_ceil(TN) * TN
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
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
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

/// One tile row: 32 bf16 values on a 64-byte boundary, so that no tile
/// row load or store straddles two cache lines (buffers of tile rows are
/// `Vec<Line>`; the kernels see them as `u16`).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
pub(crate) struct Line(pub [u16; 32]);

// SAFETY: `Line` is `repr(C)` over `[u16; 32]` (64 bytes, its alignment):
// no padding, and every bit pattern (all zeros included) is a valid value.
unsafe impl bytemuck::Zeroable for Line {}
// SAFETY: as above; `Line` is `Copy` and `'static`.
unsafe impl bytemuck::Pod for Line {}

/// Packs `w` (`[n, k]` row-major) as `[np/16][kp/2][16][2]` bf16, zero
/// padded (see the module comment), in 64-byte-aligned lines.
pub(crate) fn pack(w: &[f32], n: usize, k: usize) -> Vec<Line> {
    let (kp, np) = (padded_k(k), padded_n(n));
    let mut lines = vec![Line::default(); np * kp / 32];
    let out: &mut [u16] = bytemuck::cast_slice_mut(&mut lines);
    for j in 0..n {
        let (blk, col) = (j / TN, j % TN);
        for p in 0..k {
            let (q, t) = (p / 2, p % 2);
            out[((blk * (kp / 2) + q) * TN + col) * 2 + t] = to_bf16(w[j * k + p]);
        }
    }
    lines
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
    /// Per thread: `A` as bf16.
    static SCRATCH: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
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
                _mm512_storeu_si512(
                    out.add(p) as *mut __m512i,
                    std::mem::transmute::<__m512bh, __m512i>(h),
                );
            }
            p += 32;
        }
    }
}

/// One `A` tile row of the loop in [`tiles`]: loads the `A` tile at `pa`
/// into tmm`at` and adds its product with the `B` tile in tmm`b` to
/// accumulator tmm`r`.
macro_rules! row_step {
    ($r:literal, $at:literal, $b:literal, $pa:expr, $sa:expr) => {
        asm!(
            concat!("tileloadd tmm", $at, ", [{a} + {sa}]"),
            concat!("tdpbf16ps tmm", $r, ", tmm", $at, ", tmm", $b),
            a = in(reg) $pa, sa = in(reg) $sa,
            options(nostack, readonly),
        )
    };
}

/// `R` (1 to 3) row tiles of `A` (rows `i0 ..`) against each 16-column
/// block of `B` in turn: per 32 values of `k`, one `B` tile (from L2 for
/// the wide layers, so loaded once per call: tmm6 and tmm7 in turn) and
/// `R` `A` tiles (from L1, tmm3 to tmm5) into `R` accumulators (tmm0 to
/// tmm2). Each block of sums is stored to `acc` (`[48][16]` f32, in L1)
/// and finished into `C` at once ([`finish`]).
///
/// # Safety
/// AMX-TILE and AMX-BF16 must be usable and configured with
/// [`TileConfig::full`], AVX-512 F, BW and VL present; `a` holds `R*16`
/// rows of `kp` bf16, `b` the packed `np * kp` bf16; `out` is what
/// [`gemm_packed`]'s contract says of `c` and `start` for rows `i0 ..
/// i0 + rows`, `rows <= R*16`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
unsafe fn tiles<const R: usize>(
    a: *const u16,
    kp: usize,
    b: *const u16,
    (np, n): (usize, usize),
    acc: &mut Acc,
    out: &mut Out<'_, '_>,
    (i0, rows): (usize, usize),
) {
    let sa = kp * 2;
    let sc: usize = TN * 4;
    let sb: usize = 64;
    let b_block = (kp / 2) * TN * 2; // u16 per 16-column block
    let steps = kp / TK;
    for jb in 0..np / TN {
        let accp = acc.0.as_mut_ptr();
        // SAFETY: the tile instructions read and write only the rows and
        // columns the configuration gives (16 rows x 64 bytes per tile) at
        // the addresses and strides below, all inside the caller's
        // buffers: A tile (r, kc) at row r*16, bf16 column kc*32; B tile
        // (jb, kc) at block jb, pair row kc*16; accumulator r at row r*16
        // of `acc` (48 x 16).
        unsafe {
            let bj = b.add(jb * b_block);
            asm!("tilezero tmm0", options(nostack, nomem));
            if R >= 2 {
                asm!("tilezero tmm1", options(nostack, nomem));
            }
            if R >= 3 {
                asm!("tilezero tmm2", options(nostack, nomem));
            }
            let mut kc = 0;
            while kc < steps {
                // Two steps per pass, B in tmm6 then tmm7, so that the
                // next B load does not wait for the products reading the
                // last one.
                let pb = bj.add(kc * TK * TN);
                let pa = a.add(kc * TK);
                asm!("tileloadd tmm6, [{b} + {sb}]", b = in(reg) pb, sb = in(reg) sb, options(nostack, readonly));
                row_step!(0, 3, 6, pa, sa);
                if R >= 2 {
                    row_step!(1, 4, 6, pa.add(TM * kp), sa);
                }
                if R >= 3 {
                    row_step!(2, 5, 6, pa.add(2 * TM * kp), sa);
                }
                if kc + 1 < steps {
                    let (pb, pa) = (pb.add(TK * TN), pa.add(TK));
                    asm!("tileloadd tmm7, [{b} + {sb}]", b = in(reg) pb, sb = in(reg) sb, options(nostack, readonly));
                    row_step!(0, 3, 7, pa, sa);
                    if R >= 2 {
                        row_step!(1, 4, 7, pa.add(TM * kp), sa);
                    }
                    if R >= 3 {
                        row_step!(2, 5, 7, pa.add(2 * TM * kp), sa);
                    }
                }
                kc += 2;
            }
            asm!("tilestored [{c} + {sc}], tmm0", c = in(reg) accp, sc = in(reg) sc, options(nostack));
            if R >= 2 {
                asm!("tilestored [{c} + {sc}], tmm1", c = in(reg) accp.add(TM * TN), sc = in(reg) sc, options(nostack));
            }
            if R >= 3 {
                asm!("tilestored [{c} + {sc}], tmm2", c = in(reg) accp.add(2 * TM * TN), sc = in(reg) sc, options(nostack));
            }
        }
        let j0 = jb * TN;
        if j0 < n {
            out.prefetch();
            // SAFETY: rows i0 .. i0 + rows and columns j0 .. j0 + 16 (at
            // most n) are inside `out` (the function's contract).
            unsafe { finish(out, acc, (i0, rows), (j0, (n - j0).min(TN))) };
        }
    }
}

/// A 48 x 16 block of sums, on a 64-byte boundary (one tile row per line).
#[repr(C, align(64))]
struct Acc([f32; 48 * TN]);

/// Where [`gemm_packed`] writes, with what it starts from, and the lines
/// it prefetches on the way.
pub(crate) struct Out<'c, 's> {
    c: &'c mut [f32],
    ldc: usize,
    start: Start<'s>,
    relu: bool,
    ahead: std::slice::Chunks<'s, usize>,
}

impl Out<'_, '_> {
    /// Prefetches the next burst of `ahead`.
    #[inline]
    fn prefetch(&mut self) {
        for &p in self.ahead.next().unwrap_or(&[]) {
            crate::kernels::prefetch_line(p as *const u8);
        }
    }
}

/// `c[i*ldc + j] = relu?(start(i, j) + sum_p bf16(a[i*lda + p]) *
/// B[p][j])` for `i < m`, `j < n`, with `B` packed by [`pack`], products
/// of bf16 values accumulated in f32; the cache lines at `ahead` are
/// prefetched in bursts along the way.
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
    ahead: &[usize],
) {
    let (kp, np) = (padded_k(k), padded_n(n));
    let mp = m.div_ceil(TM) * TM;
    // `ahead` spread over the 16-column blocks in bursts of at least 32
    // lines, as in the AVX-512 kernel.
    let blocks = (np / TN) * mp.div_ceil(3 * TM);
    let per_block = ahead.len().div_ceil(blocks.max(1)).max(32);
    let mut out = Out {
        c,
        ldc,
        start,
        relu,
        ahead: ahead.chunks(per_block),
    };
    SCRATCH.with_borrow_mut(|lines| {
        if lines.len() < mp * kp / 32 {
            lines.resize(mp * kp / 32, Line::default());
        }
        let abuf: &mut [u16] = bytemuck::cast_slice_mut(lines);
        // SAFETY: the caller's contract bounds `a`; `abuf` holds mp * kp.
        unsafe { round_rows(m, k, a, lda, abuf, kp) };
        // Rows m..mp of `abuf` hold older values: their products land in
        // accumulator rows that are never read.
        let mut acc = Acc([0f32; 48 * TN]);
        let cfg = TileConfig::full();
        // SAFETY: the CPU has AMX and the process the tile state (the
        // caller's contract); `cfg` is a valid palette-1 configuration.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly)) };
        let (ap, bp) = (abuf.as_ptr(), packed.as_ptr());
        let mut i = 0;
        while i < mp {
            let tiles_left = (mp - i) / TM;
            let rows = (m - i).min(3 * TM);
            let (ap, dims) = (ap.wrapping_add(i * kp), (np, n));
            // SAFETY: rows i .. i + 16 * (tiles run) are inside `abuf` (mp
            // rows); `packed` holds np * kp bf16; `out` holds rows i ..
            // i + rows (the caller's contract).
            unsafe {
                match tiles_left {
                    1 => tiles::<1>(ap, kp, bp, dims, &mut acc, &mut out, (i, rows)),
                    2 => tiles::<2>(ap, kp, bp, dims, &mut acc, &mut out, (i, rows)),
                    _ => tiles::<3>(ap, kp, bp, dims, &mut acc, &mut out, (i, rows)),
                }
            }
            i += tiles_left.min(3) * TM;
        }
        // SAFETY: releases the tile state this call configured.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    });
    for _ in 0..out.ahead.len() {
        out.prefetch();
    }
}

/// `c[(i0+i)*ldc + j0+j] = relu?(start(i0+i, j0+j) + acc[i*16 + j])` for
/// `i < rows`, `j < nn <= 16` (one zmm per row, masked to `nn`).
///
/// # Safety
/// AVX-512 F, BW and VL must be present; `out` holds those rows and
/// columns (and `start` their values), as [`gemm_packed`]'s contract says.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
unsafe fn finish(
    out: &mut Out<'_, '_>,
    acc: &Acc,
    (i0, rows): (usize, usize),
    (j0, nn): (usize, usize),
) {
    let zero = _mm512_setzero_ps();
    let mask: __mmask16 = if nn >= TN { 0xffff } else { (1u16 << nn) - 1 };
    let relu = out.relu;
    let ldc = out.ldc;
    let c = out.c.as_mut_ptr();
    // SAFETY (every load and store below): row i0 + i (i < rows), columns
    // j0 .. j0 + nn are inside `c` and the start slices (the contract);
    // masked loads and stores touch only those; `acc` holds 48 rows of 16.
    let put = |i: usize, s: __m512| unsafe {
        let x = _mm512_load_ps(acc.0.as_ptr().add(i * TN));
        let mut y = _mm512_add_ps(s, x);
        if relu {
            y = _mm512_max_ps(y, zero);
        }
        _mm512_mask_storeu_ps(c.add((i0 + i) * ldc + j0), mask, y);
    };
    match out.start {
        Start::Zero => (0..rows).for_each(|i| put(i, zero)),
        Start::Accumulate => (0..rows).for_each(|i| {
            put(i, unsafe {
                _mm512_maskz_loadu_ps(mask, c.add((i0 + i) * ldc + j0))
            })
        }),
        Start::Bias(b) => {
            let bias = unsafe { _mm512_maskz_loadu_ps(mask, b.as_ptr().add(j0)) };
            (0..rows).for_each(|i| put(i, bias))
        }
        Start::Rows { rows: r, half, add } => {
            let u = unsafe { _mm512_maskz_loadu_ps(mask, add.as_ptr().add(j0)) };
            (0..rows).for_each(|i| {
                let row = r[i0 + i].as_ptr();
                let v = unsafe {
                    if half {
                        _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                            mask,
                            row.add(2 * j0) as *const i16,
                        ))
                    } else {
                        _mm512_maskz_loadu_ps(mask, row.add(4 * j0) as *const f32)
                    }
                };
                put(i, _mm512_add_ps(v, u))
            })
        }
    }
}

/// The AMX bf16 peak probe of the benchmarks: `iters` rounds of four
/// independent `tdpbf16ps` on tiles that stay in registers (no loads);
/// returns the FLOPs done (`iters * 4 * 16 * 16 * 32 * 2`), or `None`
/// where AMX is not usable.
pub(crate) fn peak_probe(iters: usize) -> Option<u64> {
    if !granted() {
        return None;
    }
    let cfg = TileConfig::full();
    // SAFETY: AMX is usable (`granted`); the configuration is valid; the
    // tile instructions touch no memory but `cfg`.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly));
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "tilezero tmm4",
            "tilezero tmm5",
            "tilezero tmm6",
            "tilezero tmm7",
            options(nostack, nomem)
        );
        for _ in 0..iters {
            asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                options(nostack, nomem)
            );
        }
        asm!("tilerelease", options(nostack, nomem));
    }
    Some(iters as u64 * 4 * 16 * 16 * 32 * 2)
}
