//! Inner-product kernels: an f32 user vector against stored rows of every
//! dtype, one whole loop per call so that cache misses of upcoming rows
//! overlap (software prefetch) and no per-row call is out of line; and
//! ([`gemm`]) the matrix products of the model layers.
//!
//! The CPU is detected once ([`Level::detect`]), and what runs at each level:
//!
//! | level | two-tower loops | model layers (`gemm`) |
//! |---|---|---|
//! | `Portable` (any CPU) | the portable loops here (vectorized by the compiler for the baseline instruction set) | `matrixmultiply` |
//! | `Avx2` (AVX2, FMA, F16C) | `x86` | `gemm_x86` (6x16 tiles; layers of at most 8 outputs as dot products); int8 bundles' layers on `vpmaddwd` (`gemm_i8_avx2`, 6x16 tiles) |
//! | `AvxVnni` (AVX2 as above plus AVX-VNNI, no AVX-512) | as at `Avx2` | as at `Avx2`; int8 bundles' layers on the 256-bit `vpdpbusd` (`gemm_avx_vnni`, 6x16 tiles) |
//! | `Avx512` (also AVX-512 F, BW, VL) | `x86_512` (16 lanes, masked tails) | `gemm_avx512` (12x32 tiles); int8 bundles' layers on `vpdpbusd` (`gemm_vnni`, 12x32 tiles) when the CPU has AVX512-VNNI, else as at `Avx2`; narrow layers as at `Avx2` |
//! | `Avx512Bf16` (also AVX512-BF16) | as at `Avx512` | as at `Avx512`; bf16 bundles' layers on `vdpbf16ps` (`gemm_bf16`, 12x32 tiles) |
//! | `Amx` (also AMX-TILE, -BF16, -INT8, tile state granted) | as at `Avx512` | as at `Avx512`; bf16 bundles' layers on AMX tiles (`amx`) |
//!
//! A bundle's [`Precision`] says which products its layers use: at `Bf16`
//! the weights are rounded to bf16 when the bundle is added; on AMX and
//! AVX512-BF16 the activations are rounded too and the products run in
//! bf16 with f32 sums, elsewhere the f32 kernels above run on the rounded
//! weights. At `Int8` the weights are quantized per output channel; from
//! `Avx2` up the activations are quantized per row too and the products
//! run in int8 with int32 sums, the same sums on AMX, AVX512-VNNI, AVX-VNNI
//! and AVX2;
//! the portable path runs f32 products on the dequantized weights.
//!
//! `VSTORE_KERNEL_LEVEL=portable|avx2|avxvnni|avx512|avx512bf16|amx` forces a lower level
//! than the CPU's (a higher one, or `avxvnni` on a CPU without AVX-VNNI, is
//! refused with a message, never run);
//! `VSTORE_FORCE_PORTABLE` (any value) is the same as `portable`.

use half::slice::HalfFloatSliceExt;

use crate::schema::Dtype;

#[cfg(target_arch = "x86_64")]
pub(crate) mod amx;
pub(crate) mod bucket;
pub(crate) mod gemm;
#[cfg(target_arch = "x86_64")]
pub(crate) mod gemm_avx512;
#[cfg(target_arch = "x86_64")]
pub(crate) mod gemm_avx_vnni;
#[cfg(target_arch = "x86_64")]
pub(crate) mod gemm_bf16;
#[cfg(target_arch = "x86_64")]
pub(crate) mod gemm_i8_avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod gemm_vnni;
#[cfg(target_arch = "x86_64")]
pub(crate) mod gemm_x86;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_512;

/// Which implementation runs. Levels are ordered: a CPU that runs one runs
/// every lower one too, except `AvxVnni`, which a CPU runs only if it has
/// AVX-VNNI (many AVX-512 CPUs do not; [`Level::runs_here`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Portable Rust (any CPU).
    Portable,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// AVX2 as above plus AVX-VNNI (the 256-bit `vpdpbusd`), the best
    /// level of CPUs that have it without AVX-512 (Intel's client cores
    /// from Alder Lake on, its E-core Xeons): int8 bundles' layers run on
    /// it (`kernels::gemm_avx_vnni`), everything else as at `Avx2`.
    AvxVnni,
    /// x86-64 AVX-512 F, BW and VL, with FMA and F16C: the two-tower loops
    /// (`x86_512`) and the model layers' matrix product (`gemm_avx512`)
    /// run on AVX-512; narrow layers run the AVX2 kernels.
    Avx512,
    /// AVX-512 as above plus AVX512-BF16, detected on AMD CPUs (Zen 4 and
    /// 5) only: bf16 bundles' layers run on `vdpbf16ps`
    /// (`kernels::gemm_bf16`). An Intel CPU with AVX512-BF16 and no AMX
    /// runs `Avx512` (the kernel measured slower there than f32 products
    /// on rounded weights: docs/PERF.md); on an AMX CPU,
    /// `VSTORE_KERNEL_LEVEL=avx512bf16` runs it (that is how it is tested).
    Avx512Bf16,
    /// AVX-512 as above plus AVX512-BF16, and AMX (TILE, BF16 and INT8)
    /// with the tile state granted to the process by the OS: bf16
    /// bundles' layers run on AMX tiles (`kernels::amx`).
    Amx,
}

/// The products a bundle's layers run: the weights are stored with the
/// bundle at this precision (chosen when it is added), activations are
/// rounded to it where a kernel needs that, and sums are kept in f32.
/// Heads, calibration and fusion are f32/f64 at every precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// f32 weights and products (exact to f32 rounding).
    #[default]
    F32,
    /// bf16 weights (round to nearest even) and, on AMX and AVX512-BF16,
    /// bf16 activations; f32 sums.
    Bf16,
    /// int8 weights with one scale per output channel (`max |w| / 127`)
    /// and, on AMX, int8 activations with one scale per row, int32 sums;
    /// elsewhere f32 products on the dequantized weights.
    Int8,
}

impl Precision {
    /// The name `add-model --precision` and `model.json` readers use.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }

    /// The precision named `name` (`f32`, `bf16` or `int8`).
    pub fn parse(name: &str) -> Option<Precision> {
        match name.trim().to_ascii_lowercase().as_str() {
            "f32" => Some(Precision::F32),
            "bf16" => Some(Precision::Bf16),
            "int8" => Some(Precision::Int8),
            _ => None,
        }
    }

    /// The code stored in a bundle file (format 6 `BundleMeta.precision`).
    pub(crate) fn code(self) -> u8 {
        match self {
            Precision::F32 => 0,
            Precision::Bf16 => 1,
            Precision::Int8 => 2,
        }
    }

    /// The precision of a stored code.
    pub(crate) fn from_code(code: u8) -> Option<Precision> {
        match code {
            0 => Some(Precision::F32),
            1 => Some(Precision::Bf16),
            2 => Some(Precision::Int8),
            _ => None,
        }
    }
}

/// The kernels this process runs, by name: `portable`, `avx2`, `avxvnni`,
/// `avx512`, `avx512bf16` or `amx` (see the README, "Kernel levels"): the
/// best level the CPU supports, lowered by `VSTORE_KERNEL_LEVEL` or
/// `VSTORE_FORCE_PORTABLE`. Chosen once per process.
///
/// ```
/// let level = vstore::kernel_level();
/// assert!(["portable", "avx2", "avxvnni", "avx512", "avx512bf16", "amx"].contains(&level));
/// ```
pub fn kernel_level() -> &'static str {
    Level::detect().name()
}

/// The environment variable that forces a lower level than the CPU's
/// (`portable`, `avx2`, `avxvnni`, `avx512`, `avx512bf16` or `amx`), so that
/// every path can be tested on a machine that has a higher one.
pub const LEVEL_VAR: &str = "VSTORE_KERNEL_LEVEL";

impl Level {
    /// The level this process runs: the best the CPU supports
    /// ([`Level::hardware`]), lowered by `VSTORE_KERNEL_LEVEL`
    /// (`portable`, `avx2`, `avxvnni`, `avx512`, `avx512bf16`, `amx`) or
    /// `VSTORE_FORCE_PORTABLE` (any value: the same as
    /// `VSTORE_KERNEL_LEVEL=portable`). A level the CPU does not run
    /// ([`Level::runs_here`]), or a name not in that list, is refused with a
    /// message on standard error and the CPU's level runs. Chosen once,
    /// then cached.
    pub fn detect() -> Level {
        static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
        *LEVEL.get_or_init(|| {
            let forced = std::env::var(LEVEL_VAR).ok();
            let portable = std::env::var_os("VSTORE_FORCE_PORTABLE").is_some();
            let cpu = (Level::hardware(), Level::vnni_256());
            let (level, warning) = Level::choose(cpu, forced.as_deref(), portable);
            if let Some(w) = warning {
                eprintln!("vstore: {w}");
            }
            level
        })
    }

    /// The best level this CPU supports, whatever the environment says
    /// (detected once, then cached). Every level up to it is safe to run.
    pub fn hardware() -> Level {
        static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
        *LEVEL.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                {
                    if is_x86_feature_detected!("avx512bf16") {
                        if amx::granted() {
                            return Level::Amx;
                        }
                        // `vdpbf16ps` measured slower than the f32 kernel
                        // on an Intel core (docs/PERF.md); AMD's tables give
                        // it twice an FMA's multiply-adds per cycle.
                        if is_amd() {
                            return Level::Avx512Bf16;
                        }
                    }
                    return Level::Avx512;
                }
                if has_avx_vnni() {
                    return Level::AvxVnni;
                }
                return Level::Avx2;
            }
            Level::Portable
        })
    }

    /// Every level this CPU runs, lowest first (for tests that run each).
    #[cfg(test)]
    pub fn available() -> Vec<Level> {
        Level::ALL.into_iter().filter(|&l| l.runs_here()).collect()
    }

    /// Every level, lowest first.
    const ALL: [Level; 6] = [
        Level::Portable,
        Level::Avx2,
        Level::AvxVnni,
        Level::Avx512,
        Level::Avx512Bf16,
        Level::Amx,
    ];

    /// Whether this CPU runs the level ([`Level::fits`] its own).
    pub fn runs_here(self) -> bool {
        self.fits(Level::hardware(), Level::vnni_256())
    }

    /// Whether a CPU whose best level is `hardware`, with AVX-VNNI or not,
    /// runs this level: at most `hardware`, and `AvxVnni` only with
    /// AVX-VNNI.
    fn fits(self, hardware: Level, vnni_256: bool) -> bool {
        self <= hardware && (self != Level::AvxVnni || vnni_256)
    }

    /// Whether the CPU has AVX-VNNI (false off x86-64).
    fn vnni_256() -> bool {
        #[cfg(target_arch = "x86_64")]
        return has_avx_vnni();
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// The level's name, as `VSTORE_KERNEL_LEVEL` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::AvxVnni => "avxvnni",
            Level::Avx512 => "avx512",
            Level::Avx512Bf16 => "avx512bf16",
            Level::Amx => "amx",
        }
    }

    /// The level to run given the CPU's (`hardware`), the value of
    /// `VSTORE_KERNEL_LEVEL` and whether `VSTORE_FORCE_PORTABLE` is set,
    /// with a message when a request is refused. Never above `hardware`.
    /// `cpu`: the CPU's level and whether it has AVX-VNNI.
    fn choose(
        (hardware, vnni_256): (Level, bool),
        forced: Option<&str>,
        portable: bool,
    ) -> (Level, Option<String>) {
        if portable {
            return (Level::Portable, None);
        }
        let Some(name) = forced.map(str::trim).filter(|s| !s.is_empty()) else {
            return (hardware, None);
        };
        let lower = name.to_ascii_lowercase();
        let Some(wanted) = Level::ALL.into_iter().find(|l| l.name() == lower) else {
            let names: Vec<&str> = Level::ALL.iter().map(|l| l.name()).collect();
            return (
                hardware,
                Some(format!(
                    "{LEVEL_VAR}={name:?} is not one of {}; running the CPU's level, {}",
                    names.join(", "),
                    hardware.name()
                )),
            );
        };
        if !wanted.fits(hardware, vnni_256) {
            return (
                hardware,
                Some(format!(
                    "{LEVEL_VAR}={name} asks for more than this CPU has; running {}",
                    hardware.name()
                )),
            );
        }
        (wanted, None)
    }

    /// Whether the AVX2 + FMA + F16C kernels may run at this level.
    #[inline]
    pub(crate) fn has_avx2(self) -> bool {
        self >= Level::Avx2
    }
}

/// `out[i] = f32(src[i])` (`out.len() == src.len()`), with F16C where the
/// level has it.
pub(crate) fn f16_to_f32(src: &[half::f16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if Level::detect().has_avx2() {
        // SAFETY: levels from Avx2 up are only chosen when the CPU has
        // AVX2, FMA and F16C.
        unsafe { x86::f16_to_f32(bytemuck::cast_slice(src), out) };
        return;
    }
    src.convert_to_f32_slice(out);
}

/// Whether the CPU has AVX512-VNNI (`vpdpbusd`), which int8 bundles' layers
/// use at `Level::Avx512` and `Level::Avx512Bf16` (detected once).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_vnni() -> bool {
    static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VNNI.get_or_init(|| is_x86_feature_detected!("avx512vnni"))
}

/// Whether the CPU has AVX-VNNI (the VEX-encoded, 256-bit `vpdpbusd`),
/// which `Level::AvxVnni` needs (detected once).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx_vnni() -> bool {
    static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VNNI.get_or_init(|| is_x86_feature_detected!("avxvnni"))
}

/// Whether the CPU's vendor string is AMD's (CPUID leaf 0).
#[cfg(target_arch = "x86_64")]
fn is_amd() -> bool {
    let id = std::arch::x86_64::__cpuid(0);
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&id.ebx.to_le_bytes());
    v[4..8].copy_from_slice(&id.edx.to_le_bytes());
    v[8..].copy_from_slice(&id.ecx.to_le_bytes());
    &v == b"AuthenticAMD"
}

/// Hints the CPU to fetch the cache line holding `p` (no-op off x86-64).
#[inline(always)]
pub(crate) fn prefetch_line(p: *const u8) {
    prefetch::<{ PREFETCH_L1 }>(p)
}

/// Hints the CPU to fetch the cache line holding `p` into L2 but not L1
/// (no-op off x86-64): for lines read after other work or after many other
/// lines. On Zen 4 it beat [`prefetch_line`] wherever the line was read
/// more than a few lines later: a prefetch into L1 holds one of the L1's
/// few misses in flight until its line arrives, and lines fetched into L1
/// during a layer product had left it before they were read (docs/PERF.md,
/// "Two-tower query" and "Three-tower scoring").
#[inline(always)]
pub(crate) fn prefetch_line_l2(p: *const u8) {
    prefetch::<{ PREFETCH_L2 }>(p)
}

/// `_MM_HINT_T0` (into L1) and `_MM_HINT_T1` (into L2), as [`prefetch`]'s
/// hint (any value off x86-64, where it is unused).
#[cfg(target_arch = "x86_64")]
const PREFETCH_L1: i32 = std::arch::x86_64::_MM_HINT_T0;
#[cfg(target_arch = "x86_64")]
const PREFETCH_L2: i32 = std::arch::x86_64::_MM_HINT_T1;
#[cfg(not(target_arch = "x86_64"))]
const PREFETCH_L1: i32 = 0;
#[cfg(not(target_arch = "x86_64"))]
const PREFETCH_L2: i32 = 1;

/// The prefetch instruction with hint `H` (no-op off x86-64).
#[inline(always)]
fn prefetch<const H: i32>(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, whatever the address
    // (SSE, which provides it, is part of the x86-64 baseline).
    unsafe {
        std::arch::x86_64::_mm_prefetch::<H>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Rows ahead whose cache lines the gather loop prefetches (for f32 rows
/// of three lines or more, only the first line): the best distance
/// `examples/ab_query.rs` measured with the prefetches into L2 (32; 16 was
/// the best into L1; docs/PERF.md).
pub(crate) const ROW_AHEAD: usize = 32;

/// Rows ahead whose every line the gather loop prefetches, for f32 rows of
/// three lines or more (0 would mean: all lines at [`ROW_AHEAD`], as for
/// other rows).
pub(crate) const NEAR_AHEAD: usize = 16;

/// [`ROW_AHEAD`], or its experiment knob with the `experiments` feature.
#[inline]
pub(crate) fn row_ahead() -> usize {
    #[cfg(feature = "experiments")]
    return crate::experiments::ROW_AHEAD.load(std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(feature = "experiments"))]
    ROW_AHEAD
}

/// [`NEAR_AHEAD`], or its experiment knob with the `experiments` feature.
#[inline]
pub(crate) fn near_ahead() -> usize {
    #[cfg(feature = "experiments")]
    return crate::experiments::NEAR_AHEAD.load(std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(feature = "experiments"))]
    NEAR_AHEAD
}

/// One block of embedding rows: `bytes` holds `rows * stride` bytes.
#[derive(Clone, Copy)]
pub(crate) struct Block<'a> {
    pub bytes: &'a [u8],
    pub stride: usize,
}

/// A resolved candidate: which block, which row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Loc {
    pub block: u32,
    pub row: u32,
}

/// Scores `locs` (rows of `blocks`) against `user` into `out`, prefetching
/// upcoming rows if `prefetch` (false: the caller has). `out.len() ==
/// locs.len()`. Every `loc` must be in range (checked; an out-of-range loc
/// scores NaN rather than panicking).
pub(crate) fn score_gather(
    level: Level,
    dtype: Dtype,
    user: &[f32],
    blocks: &[Block<'_>],
    locs: &[Loc],
    out: &mut [f32],
    prefetch: bool,
) {
    debug_assert_eq!(locs.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if level.has_avx2() {
        if level >= Level::Avx512 {
            // SAFETY: levels from Level::Avx512 up are only returned (by
            // detect, hardware and available) when the CPU has AVX-512 F,
            // BW and VL besides AVX2, FMA and F16C.
            unsafe { x86_512::score_gather(dtype, user, blocks, locs, out, prefetch) };
        } else {
            // SAFETY: levels from Level::Avx2 up are only returned when the
            // CPU has AVX2, FMA and F16C.
            unsafe { x86::score_gather(dtype, user, blocks, locs, out, prefetch) };
        }
        return;
    }
    let _ = (level, prefetch);
    let d = user.len();
    let rb = dtype.row_bytes(d as u32);
    let mut tmp = vec![0f32; d];
    for (o, l) in out.iter_mut().zip(locs) {
        *o = match row(blocks, *l, rb) {
            Some(r) => dot_portable(dtype, user, r, &mut tmp),
            None => f32::NAN,
        };
    }
}

/// Scores rows `first..first + out.len()` of one block (a sequential scan).
pub(crate) fn score_range(
    level: Level,
    dtype: Dtype,
    user: &[f32],
    block: Block<'_>,
    first: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if level.has_avx2() {
        if level >= Level::Avx512 {
            // SAFETY: levels from Level::Avx512 up are only returned (by
            // detect, hardware and available) when the CPU has AVX-512 F,
            // BW and VL besides AVX2, FMA and F16C.
            unsafe { x86_512::score_range(dtype, user, block, first, out) };
        } else {
            // SAFETY: levels from Level::Avx2 up are only returned when the
            // CPU has AVX2, FMA and F16C.
            unsafe { x86::score_range(dtype, user, block, first, out) };
        }
        return;
    }
    let _ = level;
    let d = user.len();
    let rb = dtype.row_bytes(d as u32);
    let mut tmp = vec![0f32; d];
    for (i, o) in out.iter_mut().enumerate() {
        let at = (first + i) * block.stride;
        *o = match block.bytes.get(at..at + rb) {
            Some(r) => dot_portable(dtype, user, r, &mut tmp),
            None => f32::NAN,
        };
    }
}

/// The `row_bytes` bytes of `l`, if in range.
#[inline(always)]
pub(crate) fn row<'a>(blocks: &[Block<'a>], l: Loc, row_bytes: usize) -> Option<&'a [u8]> {
    let b = blocks.get(l.block as usize)?;
    let at = (l.row as usize).checked_mul(b.stride)?;
    b.bytes.get(at..at.checked_add(row_bytes)?)
}

/// Sum of `a[i] * b[i]` with 8 independent accumulators (vectorizable).
#[inline]
fn dot_f32s(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, at) = a.split_at(a.len() / 8 * 8);
    let (bc, bt) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in at.iter().zip(bt) {
        s += x * y;
    }
    s
}

/// Portable dot product of `user` with one stored row (`row_bytes` bytes).
pub(crate) fn dot_portable(dtype: Dtype, user: &[f32], row: &[u8], tmp: &mut [f32]) -> f32 {
    let d = user.len();
    match dtype {
        Dtype::F32 => match bytemuck::try_cast_slice::<u8, f32>(&row[..4 * d]) {
            Ok(r) => dot_f32s(user, r),
            Err(_) => {
                for (t, c) in tmp.iter_mut().zip(row.chunks_exact(4)) {
                    *t = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
                dot_f32s(user, tmp)
            }
        },
        Dtype::F16 | Dtype::Bf16 => {
            let bits: Vec<u16>;
            let halves: &[u16] = match bytemuck::try_cast_slice(&row[..2 * d]) {
                Ok(h) => h,
                Err(_) => {
                    bits = row[..2 * d]
                        .chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]))
                        .collect();
                    &bits
                }
            };
            if dtype == Dtype::F16 {
                let h: &[half::f16] = bytemuck::cast_slice(halves);
                h.convert_to_f32_slice(tmp);
            } else {
                let h: &[half::bf16] = bytemuck::cast_slice(halves);
                h.convert_to_f32_slice(tmp);
            }
            dot_f32s(user, tmp)
        }
        Dtype::I8 => {
            for (t, &q) in tmp.iter_mut().zip(&row[..d]) {
                *t = q as i8 as f32;
            }
            let scale = f32::from_le_bytes([row[d], row[d + 1], row[d + 2], row[d + 3]]);
            dot_f32s(user, tmp) * scale
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::encode::encode_row;

    fn rows(dtype: Dtype, d: usize, n: usize) -> (Vec<u8>, usize, Vec<Vec<f32>>) {
        let stride = dtype.row_stride(d as u32);
        let mut bytes = vec![0u8; stride * n + 64];
        let mut vals = Vec::new();
        let mut tmp = Vec::new();
        for r in 0..n {
            let v: Vec<f32> = (0..d)
                .map(|j| (((r * 7 + j * 13) % 29) as f32 - 14.0) / 8.0)
                .collect();
            encode_row(
                dtype,
                &v,
                &mut bytes[r * stride..(r + 1) * stride],
                &mut tmp,
            );
            vals.push(v);
        }
        // Offset by 16 so that rows are 16-aligned but not 32-aligned.
        (bytes, stride, vals)
    }

    #[test]
    fn every_level_and_dtype_matches_the_reference() {
        let levels = Level::available();
        println!("levels run: {levels:?}");
        for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16, Dtype::I8] {
            for d in [1usize, 3, 7, 8, 9, 16, 31, 64, 100, 128, 257] {
                let n = 40;
                let (bytes, stride, vals) = rows(dtype, d, n);
                let user: Vec<f32> = (0..d).map(|j| ((j % 11) as f32 - 5.0) / 4.0).collect();
                let block = Block {
                    bytes: &bytes,
                    stride,
                };
                let locs: Vec<Loc> = (0..n as u32)
                    .rev()
                    .map(|r| Loc { block: 0, row: r })
                    .collect();
                for &level in &levels {
                    let mut out = vec![0f32; n];
                    score_gather(level, dtype, &user, &[block], &locs, &mut out, true);
                    // Without the prefetch: the same scores.
                    let mut unfetched = vec![0f32; n];
                    score_gather(level, dtype, &user, &[block], &locs, &mut unfetched, false);
                    assert_eq!(
                        out.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                        unfetched.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                    );
                    let mut seq = vec![0f32; n];
                    score_range(level, dtype, &user, block, 0, &mut seq);
                    for (i, l) in locs.iter().enumerate() {
                        let r = l.row as usize;
                        // Reference over the decoded stored values, in f64.
                        let mut dec = vec![0f32; d];
                        let col_row = &bytes[r * stride..r * stride + dtype.row_bytes(d as u32)];
                        let mut tmp = vec![0f32; d];
                        let _ = dot_portable(dtype, &user, col_row, &mut tmp);
                        decode(dtype, col_row, &mut dec);
                        let want: f64 = user
                            .iter()
                            .zip(&dec)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum();
                        let mag: f64 = user
                            .iter()
                            .zip(&dec)
                            .map(|(a, b)| (*a as f64 * *b as f64).abs())
                            .sum();
                        let tol = mag * 1e-6 + 1e-6;
                        assert!(
                            (out[i] as f64 - want).abs() <= tol,
                            "{level:?} {dtype:?} d={d} row {r}: {} vs {want}",
                            out[i]
                        );
                        assert!(
                            (seq[r] as f64 - want).abs() <= tol,
                            "{level:?} {dtype:?} d={d} seq row {r}"
                        );
                        let _ = &vals;
                    }
                }
            }
        }
    }

    fn decode(dtype: Dtype, row: &[u8], out: &mut [f32]) {
        let d = out.len();
        match dtype {
            Dtype::F32 => {
                for (o, c) in out.iter_mut().zip(row.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Dtype::F16 => {
                for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            Dtype::Bf16 => {
                for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                    *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            Dtype::I8 => {
                let s = f32::from_le_bytes([row[d], row[d + 1], row[d + 2], row[d + 3]]);
                for (o, &q) in out.iter_mut().zip(&row[..d]) {
                    *o = q as i8 as f32 * s;
                }
            }
        }
    }

    #[test]
    fn the_environment_lowers_the_level_and_never_raises_it() {
        use Level::*;
        assert_eq!(Level::choose((Avx512, false), None, false), (Avx512, None));
        assert_eq!(
            Level::choose((Avx512, false), Some("avx2"), false),
            (Avx2, None)
        );
        assert_eq!(
            Level::choose((Avx512, false), Some("AVX512"), false),
            (Avx512, None)
        );
        assert_eq!(
            Level::choose((Avx2, false), Some("portable"), false),
            (Portable, None)
        );
        assert_eq!(
            Level::choose((Avx512, false), Some(""), false),
            (Avx512, None)
        );
        // VSTORE_FORCE_PORTABLE wins.
        assert_eq!(
            Level::choose((Avx512, false), Some("avx2"), true),
            (Portable, None)
        );
        // Above the CPU, or unknown: refused, with a message.
        let (l, w) = Level::choose((Avx2, false), Some("avx512"), false);
        assert_eq!(l, Avx2);
        assert!(w.unwrap().contains("more than this CPU has"));
        let (l, w) = Level::choose((Portable, false), Some("avx2"), false);
        assert_eq!(l, Portable);
        assert!(w.is_some());
        let (l, w) = Level::choose((Avx512, false), Some("sse"), false);
        assert_eq!(l, Avx512);
        assert!(w.unwrap().contains("not one of"));
        // AVX-VNNI: run where the CPU has it, whatever its level; refused
        // on an AVX-512 CPU without it.
        assert_eq!(Level::choose((AvxVnni, true), None, false), (AvxVnni, None));
        assert_eq!(
            Level::choose((Avx512Bf16, true), Some("avxvnni"), false),
            (AvxVnni, None)
        );
        let (l, w) = Level::choose((Avx512, false), Some("avxvnni"), false);
        assert_eq!(l, Avx512);
        assert!(w.unwrap().contains("more than this CPU has"));
        let (l, _) = Level::choose((Avx2, false), Some("avxvnni"), false);
        assert_eq!(l, Avx2);
        // What this process runs.
        println!(
            "hardware {:?}, detect {:?}, available {:?}",
            Level::hardware(),
            Level::detect(),
            Level::available()
        );
        assert!(Level::detect() <= Level::hardware());
        assert_eq!(Level::available().last(), Some(&Level::hardware()));
    }

    #[test]
    fn out_of_range_locations_score_nan_not_panic() {
        let (bytes, stride, _) = rows(Dtype::F32, 8, 4);
        let block = Block {
            bytes: &bytes[..stride * 4],
            stride,
        };
        let user = vec![1f32; 8];
        let locs = [
            Loc { block: 0, row: 3 },
            Loc { block: 0, row: 4 },
            Loc { block: 1, row: 0 },
        ];
        for level in [Level::Portable, Level::detect()] {
            let mut out = vec![0f32; 3];
            score_gather(level, Dtype::F32, &user, &[block], &locs, &mut out, true);
            assert!(
                out[0].is_finite() && out[1].is_nan() && out[2].is_nan(),
                "{out:?}"
            );
        }
    }
}
