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

/// `k` padded for the int8 tiles (64 values per tile row).
pub(crate) fn padded_k_i8(k: usize) -> usize {
    k.div_ceil(64) * 64
}

/// Quantizes `w` (`[n, k]` row-major) per output channel
/// ([`crate::kernels::gemm::quantized`]); returns the values packed as
/// `[np/16][kp/4][16][4]` int8 in 64-byte lines (the layout `tdpbssd`
/// reads), zero padded, and the scales (`n`).
pub(crate) fn pack_i8(w: &[f32], n: usize, k: usize) -> (Vec<Line>, Vec<f32>) {
    let (kp, np) = (padded_k_i8(k), padded_n(n));
    let mut lines = vec![Line::default(); np * kp / 64];
    let out: &mut [u8] = bytemuck::cast_slice_mut(&mut lines);
    let (q, scales) = crate::kernels::gemm::quantized(&w[..n * k], k);
    for (i, &x) in q.iter().enumerate() {
        let (j, p) = (i / k, i % k);
        let (blk, col) = (j / TN, j % TN);
        out[((blk * (kp / 4) + p / 4) * TN + col) * 4 + p % 4] = x as u8;
    }
    (lines, scales)
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
    /// Per thread: `A` as bf16 or int8, and (int8) its rows' scales.
    static SCRATCH: RefCell<(Vec<Line>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
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
/// into tmm`at` and adds its product (`op`: `tdpbf16ps` or `tdpbssd`) with
/// the `B` tile in tmm`b` to accumulator tmm`r`.
macro_rules! row_step {
    ($op:literal, $r:literal, $at:literal, $b:literal, $pa:expr, $sa:expr) => {
        asm!(
            concat!("tileloadd tmm", $at, ", [{a} + {sa}]"),
            concat!($op, " tmm", $r, ", tmm", $at, ", tmm", $b),
            a = in(reg) $pa, sa = in(reg) $sa,
            options(nostack, readonly),
        )
    };
}

/// The steps of [`tiles`] for one `B` tile in tmm`b` (6 or 7): `R` row
/// tiles of `A` at `pa` (rows `sa` bytes apart), products by `op`.
macro_rules! k_step {
    ($op:literal, $b:literal, $pa:expr, $sa:expr, $rows:expr) => {{
        row_step!($op, 0, 3, $b, $pa, $sa);
        if $rows >= 2 {
            row_step!($op, 1, 4, $b, $pa.add(TM * $sa), $sa);
        }
        if $rows >= 3 {
            row_step!($op, 2, 5, $b, $pa.add(2 * TM * $sa), $sa);
        }
    }};
}

/// `R` (1 to 3) row tiles of `A` (rows `i0 ..`) against each 16-column
/// block of `B` in turn: per 64 bytes of a row of `A` (32 bf16 or 64
/// int8 values of `k`), one `B` tile (from L2 for the wide layers, so
/// loaded once per call: tmm6 and tmm7 in turn) and `R` `A` tiles (from
/// L1, tmm3 to tmm5) into `R` accumulators (tmm0 to tmm2): `tdpbf16ps`
/// (f32 sums, `OP` 0), or `tdpbssd` (int8 by int8, `OP` 1) or `tdpbusd`
/// (uint8 activations by int8, `OP` 2; int32 sums). Each block of sums is
/// stored to `acc` (`[48][16]`, in L1) and finished into `C` at once
/// ([`finish`]).
///
/// # Safety
/// AMX-TILE, -BF16 and -INT8 must be usable and configured with
/// [`TileConfig::full`], AVX-512 F, BW and VL present; `a` holds `R*16`
/// rows of `sa` bytes (`sa` a multiple of 64), `b` the packed `np / 16`
/// blocks of `sa / 64` tiles of 1 KiB; `out` is what [`gemm_packed`]'s
/// contract says of `c` and `start` for rows `i0 .. i0 + rows`, `rows <=
/// R*16`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn tiles<const R: usize, const OP: u8>(
    a: *const u8,
    sa: usize,
    b: *const u8,
    (np, n): (usize, usize),
    acc: &mut Acc,
    out: &mut Out<'_, '_>,
    (i0, rows): (usize, usize),
    scales: (&[f32], &[f32]),
) {
    let sc: usize = TN * 4;
    let sb: usize = 64;
    let steps = sa / 64;
    let b_block = steps * 1024;
    for jb in 0..np / TN {
        let accp = acc.0.as_mut_ptr();
        // SAFETY: the tile instructions read and write only the rows and
        // columns the configuration gives (16 rows x 64 bytes per tile) at
        // the addresses and strides below, all inside the caller's
        // buffers: A tile (r, kc) at row r*16, byte kc*64; B tile (jb, kc)
        // at block jb, tile kc; accumulator r at row r*16 of `acc` (48 x
        // 16 four-byte values).
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
                let (pb, pa) = (bj.add(kc * 1024), a.add(kc * 64));
                asm!("tileloadd tmm6, [{b} + {sb}]", b = in(reg) pb, sb = in(reg) sb, options(nostack, readonly));
                match OP {
                    1 => k_step!("tdpbssd", 6, pa, sa, R),
                    2 => k_step!("tdpbusd", 6, pa, sa, R),
                    _ => k_step!("tdpbf16ps", 6, pa, sa, R),
                }
                if kc + 1 < steps {
                    let (pb, pa) = (pb.add(1024), pa.add(64));
                    asm!("tileloadd tmm7, [{b} + {sb}]", b = in(reg) pb, sb = in(reg) sb, options(nostack, readonly));
                    match OP {
                        1 => k_step!("tdpbssd", 7, pa, sa, R),
                        2 => k_step!("tdpbusd", 7, pa, sa, R),
                        _ => k_step!("tdpbf16ps", 7, pa, sa, R),
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
            unsafe {
                let cols = (j0, (n - j0).min(TN));
                if OP == 0 {
                    finish::<false>(out, acc, (i0, rows), cols, scales)
                } else {
                    finish::<true>(out, acc, (i0, rows), cols, scales)
                }
            };
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

impl<'c, 's> Out<'c, 's> {
    /// Writes to `c` (rows `ldc` apart) from `start`, through ReLU if
    /// `relu`, spreading `ahead` over the 16-column blocks of `mp` rows in
    /// 48-row runs, in bursts of at least 32 lines (as the AVX-512 kernel).
    fn new(
        c: &'c mut [f32],
        ldc: usize,
        start: Start<'s>,
        relu: bool,
        ahead: &'s [usize],
        mp: usize,
        np: usize,
    ) -> Self {
        let blocks = (np / TN) * mp.div_ceil(3 * TM);
        let per_block = ahead.len().div_ceil(blocks.max(1)).max(32);
        Out {
            c,
            ldc,
            start,
            relu,
            ahead: ahead.chunks(per_block),
        }
    }

    /// Prefetches what is left of `ahead`.
    fn prefetch_rest(&mut self) {
        for _ in 0..self.ahead.len() {
            self.prefetch();
        }
    }

    /// Prefetches the next burst of `ahead`, into L1: the other kernels
    /// prefetch these lines into L2 only (`gemm::Bursts`, measured on
    /// Zen 4), which has not been measured on an AMX core.
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
    let kp = padded_k(k);
    let mp = m.div_ceil(TM) * TM;
    let mut out = Out::new(c, ldc, start, relu, ahead, mp, padded_n(n));
    SCRATCH.with_borrow_mut(|(lines, _)| {
        if lines.len() < mp * kp / 32 {
            lines.resize(mp * kp / 32, Line::default());
        }
        let abuf: &mut [u16] = bytemuck::cast_slice_mut(lines);
        // SAFETY: the caller's contract bounds `a`; `abuf` holds mp * kp.
        unsafe { round_rows(m, k, a, lda, abuf, kp) };
        let (a8, b8): (&[u8], &[u8]) = (bytemuck::cast_slice(abuf), bytemuck::cast_slice(packed));
        // SAFETY: the caller's contract (AMX usable, `packed` and `out`
        // bounds); `a8` holds mp rows of kp * 2 bytes.
        unsafe { run::<0>(m, n, a8, kp * 2, b8, &mut out, &[], &[]) };
    });
    out.prefetch_rest();
}

/// The int8 twin of [`gemm_packed`]: `c[i*ldc + j] = relu?(start(i, j) +
/// sa[i] * sw[j] * sum_p qa[i][p] * qw[j][p])`, `qa` row `i` of `a`
/// quantized with the per-row scale `sa[i]` (uint8, `max / 255`, when no
/// value of `a` is negative, else int8, `max |a[i][..]| / 127`), `qw` and
/// `sw` the weights and per-column scales [`pack_i8`] made; int32 sums
/// (`tdpbusd` or `tdpbssd`).
///
/// # Safety
/// AMX-TILE and AMX-INT8 must be usable ([`granted`]) and AVX-512 F, BW
/// and VL present; `a` must hold `(m-1)*lda + k` values, `packed`
/// `padded_n(n) * padded_k_i8(k)` bytes, `w_scale` `n` values, `c`
/// `(m-1)*ldc + n`, a bias or `add` slice `n` values and each of `m` start
/// rows `n` values of its type (checked by the safe caller).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_packed_i8(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    packed: &[u8],
    w_scale: &[f32],
    c: &mut [f32],
    ldc: usize,
    start: Start<'_>,
    relu: bool,
    ahead: &[usize],
) {
    let kp = padded_k_i8(k);
    let mp = m.div_ceil(TM) * TM;
    let mut out = Out::new(c, ldc, start, relu, ahead, mp, padded_n(n));
    SCRATCH.with_borrow_mut(|(lines, a_scale)| {
        if lines.len() < mp * kp / 64 {
            lines.resize(mp * kp / 64, Line::default());
        }
        let abuf: &mut [u8] = bytemuck::cast_slice_mut(lines);
        a_scale.resize(m, 0.0);
        // SAFETY: AVX-512 F and BW (the caller's contract); `abuf` holds
        // mp * kp bytes, kp a multiple of 64.
        let unsigned = unsafe { quantize_rows(m, k, a, lda, &mut abuf[..mp * kp], kp, a_scale) };
        // SAFETY: the caller's contract (AMX usable, `packed`, `w_scale`
        // and `out` bounds); `abuf` holds mp rows of kp bytes.
        unsafe {
            if unsigned {
                run::<2>(m, n, abuf, kp, packed, &mut out, a_scale, w_scale)
            } else {
                run::<1>(m, n, abuf, kp, packed, &mut out, a_scale, w_scale)
            }
        };
    });
    out.prefetch_rest();
}

/// The tile loop of [`gemm_packed`] and [`gemm_packed_i8`]: `a` holds
/// `mp` rows of `sa` bytes, `b` the packed weights.
///
/// # Safety
/// As [`tiles`] says, for every row tile of `m` rows padded to 16; with
/// `OP` 1 or 2 (see [`tiles`]), `a_scale` holds `m` values and `w_scale`
/// `n`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn run<const OP: u8>(
    m: usize,
    n: usize,
    a: &[u8],
    sa: usize,
    b: &[u8],
    out: &mut Out<'_, '_>,
    a_scale: &[f32],
    w_scale: &[f32],
) {
    let (mp, np) = (m.div_ceil(TM) * TM, padded_n(n));
    // Rows m..mp of `a` hold older values: their products land in
    // accumulator rows that are never read.
    let mut acc = Acc([0f32; 48 * TN]);
    let cfg = TileConfig::full();
    // SAFETY: the CPU has AMX and the process the tile state (the
    // caller's contract); `cfg` is a valid palette-1 configuration.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly)) };
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    let mut i = 0;
    while i < mp {
        let tiles_left = (mp - i) / TM;
        let rows = (m - i).min(3 * TM);
        let (ap, dims) = (ap.wrapping_add(i * sa), (np, n));
        let scales = if OP != 0 {
            (&a_scale[i..], w_scale)
        } else {
            (a_scale, w_scale)
        };
        // SAFETY: rows i .. i + 16 * (tiles run) are inside `a` (mp rows);
        // `b` holds the packed weights; `out` holds rows i .. i + rows (the
        // caller's contract).
        unsafe {
            match tiles_left {
                1 => tiles::<1, OP>(ap, sa, bp, dims, &mut acc, out, (i, rows), scales),
                2 => tiles::<2, OP>(ap, sa, bp, dims, &mut acc, out, (i, rows), scales),
                _ => tiles::<3, OP>(ap, sa, bp, dims, &mut acc, out, (i, rows), scales),
            }
        }
        i += tiles_left.min(3) * TM;
    }
    // SAFETY: releases the tile state this call configured.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// Quantizes rows `a[i*lda ..][..k]` (`i < m`) into `dst` (`[..][kp]`,
/// zero beyond `k`) with one scale per row, into `scale` (round to nearest
/// even, as `vcvtps2dq` does by default; a row of zeros gets scale 0).
/// When no value is negative (a ReLU layer's output) the rows are uint8
/// (`max / 255`: twice the resolution) and this returns true; else int8
/// (`max |x| / 127`).
///
/// # Safety
/// AVX-512 F and BW must be present (and the rounding mode the default,
/// nearest even, as Rust leaves it); `a` holds `(m-1)*lda + k` values and
/// `dst` `m * kp` bytes, `kp >= k` a multiple of 16, `scale` `m` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
pub(crate) unsafe fn quantize_rows(
    m: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    dst: &mut [u8],
    kp: usize,
    scale: &mut [f32],
) -> bool {
    let mask = |p: usize| -> __mmask16 {
        let nn = k.saturating_sub(p).min(16);
        if nn >= 16 {
            0xffff
        } else {
            (1u16 << nn) - 1
        }
    };
    // SAFETY (the loads and stores below): row i holds k values at
    // a[i * lda..]; masked loads read only those; `dst` row i holds kp
    // bytes and each store writes 16 at p < kp.
    let load =
        |i: usize, p: usize| unsafe { _mm512_maskz_loadu_ps(mask(p), a.as_ptr().add(i * lda + p)) };
    let mut neg = false;
    // First each row's largest magnitude, into `scale`.
    for (i, mx) in scale[..m].iter_mut().enumerate() {
        let (mut hi, mut lo) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for p in (0..k).step_by(16) {
            let x = load(i, p);
            hi = _mm512_max_ps(hi, x);
            lo = _mm512_min_ps(lo, x);
        }
        let (h, l) = (_mm512_reduce_max_ps(hi), _mm512_reduce_min_ps(lo));
        neg |= l < 0.0;
        *mx = h.max(-l);
    }
    let top = if neg { 127.0 } else { 255.0 };
    for i in 0..m {
        let s = scale[i] / top;
        scale[i] = s;
        let inv = _mm512_set1_ps(if s > 0.0 { 1.0 / s } else { 0.0 });
        let out = dst[i * kp..].as_mut_ptr();
        for p in (0..kp).step_by(16) {
            let x = if p < k {
                load(i, p)
            } else {
                _mm512_setzero_ps()
            };
            let q = _mm512_cvtps_epi32(_mm512_mul_ps(x, inv));
            // SAFETY: 16 bytes at p < kp of row i.
            unsafe {
                let b = if neg {
                    _mm512_cvtsepi32_epi8(q)
                } else {
                    _mm512_cvtusepi32_epi8(_mm512_max_epi32(q, _mm512_setzero_si512()))
                };
                _mm_storeu_si128(out.add(p) as *mut __m128i, b);
            }
        }
    }
    !neg
}

/// `c[(i0+i)*ldc + j0+j] = relu?(start(i0+i, j0+j) + acc[i*16 + j])` for
/// `i < rows`, `j < nn <= 16` (one zmm per row, masked to `nn`); with
/// `I8`, `acc` holds int32 sums, scaled by `scales.0[i] * scales.1[j0+j]`.
///
/// # Safety
/// AVX-512 F, BW and VL must be present; `out` holds those rows and
/// columns (and `start` their values), as [`gemm_packed`]'s contract says;
/// with `I8`, `scales.0` holds `rows` values and `scales.1` `j0 + nn`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
unsafe fn finish<const I8: bool>(
    out: &mut Out<'_, '_>,
    acc: &Acc,
    (i0, rows): (usize, usize),
    (j0, nn): (usize, usize),
    scales: (&[f32], &[f32]),
) {
    let zero = _mm512_setzero_ps();
    let mask: __mmask16 = if nn >= TN { 0xffff } else { (1u16 << nn) - 1 };
    let relu = out.relu;
    let ldc = out.ldc;
    let c = out.c.as_mut_ptr();
    let w_scale = if I8 {
        // SAFETY: `scales.1` holds columns j0 .. j0 + nn.
        unsafe { _mm512_maskz_loadu_ps(mask, scales.1.as_ptr().add(j0)) }
    } else {
        zero
    };
    // SAFETY (every load and store below): row i0 + i (i < rows), columns
    // j0 .. j0 + nn are inside `c` and the start slices (the contract);
    // masked loads and stores touch only those; `acc` holds 48 rows of 16.
    let put = |i: usize, s: __m512| unsafe {
        let x = if I8 {
            let sums =
                _mm512_cvtepi32_ps(_mm512_load_si512(acc.0.as_ptr().add(i * TN) as *const _));
            _mm512_mul_ps(sums, _mm512_mul_ps(w_scale, _mm512_set1_ps(scales.0[i])))
        } else {
            _mm512_load_ps(acc.0.as_ptr().add(i * TN))
        };
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
