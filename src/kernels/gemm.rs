//! Matrix products of the model layers: `C = act(start + A @ W.T)`, `W` a
//! weight matrix in PyTorch `nn.Linear` layout, `start` zero, `C`, a bias
//! row or a precomputed row per output row ([`Start`]), `act` ReLU or the
//! identity.
//!
//! On x86-64 with AVX2, FMA and F16C the weights are packed once, at model
//! load, and a register-tiled kernel runs: `kernels::gemm_x86` (6x16 tiles
//! over 16-column panels) at `Level::Avx2`, `kernels::gemm_avx512` (12x32
//! tiles over 32-column panels) at `Level::Avx512`. Layers of at most 8
//! outputs, such as the heads, run as AVX2 dot products instead at both
//! levels. Elsewhere the `matrixmultiply` crate runs (it packs both
//! operands on every call; the cost of that is in docs/PERF.md,
//! "Three-tower scoring").

use crate::kernels::{Level, Precision};

/// Outputs up to which a layer runs as dot products (`kernels::gemm_x86::
/// dots`) rather than through 16-column panels, most of which would be
/// padding (a model's heads layer has a handful of outputs).
pub(crate) const NARROW: usize = 8;

/// A weight matrix `[n, k]` ready for [`matmul`] at a [`Precision`]: a
/// contiguous copy for the portable path and narrow layers and, where a
/// panel kernel runs, panels `[ceil(n/NR)][k][NR]` of its transpose,
/// zero-padded (NR = 16 for the AVX2 kernel, 32 for the AVX-512 one), or
/// the AMX tile layout (`kernels::amx::pack`) for bf16 on AMX.
#[derive(Debug, Clone, Default)]
pub(crate) struct Weights {
    pub n: usize,
    pub k: usize,
    /// The weights as given, `[n, k]` (kept to pack again at another
    /// precision, [`Weights::at`]).
    given: Vec<f32>,
    /// The values the portable and dot-product kernels read (`given`
    /// rounded to the precision; empty where a panel kernel runs).
    w: Vec<f32>,
    packed: Vec<f32>,
    /// The AMX layout: bf16 (`Kernel::AmxBf16`) or int8 (`AmxInt8`).
    packed_amx: Vec<crate::kernels::amx::Line>,
    /// The bf16 pair layout (only for `Kernel::DpBf16`).
    packed_dp: Vec<u16>,
    /// The per-output-channel scales of the int8 weights (`Int8`).
    w_scale: Vec<f32>,
    /// The int8 weights for `vpdpbusd` (only for `Kernel::VnniInt8`).
    #[cfg(target_arch = "x86_64")]
    packed_vnni: crate::kernels::gemm_vnni::PackedI8,
    /// The int8 weights widened for `vpmaddwd` (only for
    /// `Kernel::Avx2Int8`).
    #[cfg(target_arch = "x86_64")]
    packed_i16: crate::kernels::gemm_i8_avx2::PackedI16,
    /// The int8 weights for the 256-bit `vpdpbusd` (only for
    /// `Kernel::AvxVnniInt8`).
    #[cfg(target_arch = "x86_64")]
    packed_avx_vnni: crate::kernels::gemm_avx_vnni::PackedI8,
    /// Which panel kernel `packed` is for (`Avx2` or `Avx512`; unused when
    /// `packed` is empty).
    kernel: Kernel,
    /// Whether the AVX2 dot-product kernel runs (on `w`).
    narrow: bool,
    precision: Precision,
    level: Option<Level>,
}

/// The panel kernel a [`Weights`] was packed for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Kernel {
    /// No panels (portable, or narrow).
    #[default]
    None,
    /// `gemm_x86`, 16-column panels.
    Avx2,
    /// `gemm_avx512`, 32-column panels.
    Avx512,
    /// `amx`, bf16 tiles.
    AmxBf16,
    /// `gemm_bf16`, bf16 pairs on `vdpbf16ps`.
    DpBf16,
    /// `amx`, int8 tiles.
    AmxInt8,
    /// `gemm_vnni`, int8 on `vpdpbusd`.
    VnniInt8,
    /// `gemm_i8_avx2`, int8 (widened to int16) on `vpmaddwd`.
    Avx2Int8,
    /// `gemm_avx_vnni`, int8 on the 256-bit `vpdpbusd`.
    AvxVnniInt8,
}

impl Weights {
    /// Columns `..k` of the rows of `w` (`n` rows, `ldw` apart), in f32.
    pub(crate) fn new(w: &[f32], ldw: usize, k: usize, n: usize) -> Weights {
        Weights::for_level(w, ldw, k, n, Level::detect(), Precision::F32)
    }

    /// The same weights packed for `precision` (this process's level).
    pub(crate) fn at(&self, precision: Precision) -> Weights {
        if precision == self.precision {
            return self.clone();
        }
        let level = self.level.unwrap_or_else(Level::detect);
        Weights::for_level(&self.given, self.k, self.k, self.n, level, precision)
    }

    /// The precision the weights run at.
    #[cfg(test)]
    pub(crate) fn precision(&self) -> Precision {
        self.precision
    }

    /// As [`Weights::new`], for the kernels of `level`, which must be one
    /// this CPU runs (at most `Level::hardware()`, which `Level::detect()`
    /// and `Level::available()` never exceed: `matmul` relies on that for
    /// its unsafe calls), at `precision`. Layers of at most [`NARROW`]
    /// outputs stay f32 at every precision (they are heads and gates).
    fn for_level(
        w: &[f32],
        ldw: usize,
        k: usize,
        n: usize,
        level: Level,
        precision: Precision,
    ) -> Weights {
        assert!(level.runs_here(), "{level:?}: not on this CPU");
        let given: Vec<f32> = (0..n)
            .flat_map(|j| w[j * ldw..j * ldw + k].iter().copied())
            .collect();
        let narrow = level.has_avx2() && n <= NARROW;
        let precision = if n <= NARROW {
            Precision::F32
        } else {
            precision
        };
        let rounded: Vec<f32> = match precision {
            Precision::F32 => given.clone(),
            Precision::Bf16 => given
                .iter()
                .map(|&x| half::bf16::from_f32(x).to_f32())
                .collect(),
            Precision::Int8 => dequantized(&given, k),
        };
        let (kernel, nr) = match level {
            _ if narrow => (Kernel::None, 0),
            #[cfg(target_arch = "x86_64")]
            Level::Amx if precision == Precision::Bf16 => (Kernel::AmxBf16, 0),
            #[cfg(target_arch = "x86_64")]
            Level::Avx512Bf16 if precision == Precision::Bf16 => (Kernel::DpBf16, 0),
            #[cfg(target_arch = "x86_64")]
            Level::Amx if precision == Precision::Int8 => (Kernel::AmxInt8, 0),
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 | Level::Avx512Bf16
                if precision == Precision::Int8 && crate::kernels::has_vnni() =>
            {
                (Kernel::VnniInt8, 0)
            }
            #[cfg(target_arch = "x86_64")]
            Level::AvxVnni if precision == Precision::Int8 => (Kernel::AvxVnniInt8, 0),
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 | Level::Avx512 | Level::Avx512Bf16 if precision == Precision::Int8 => {
                (Kernel::Avx2Int8, 0)
            }
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 | Level::AvxVnni => (Kernel::Avx2, crate::kernels::gemm_x86::NR),
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 | Level::Avx512Bf16 | Level::Amx => {
                (Kernel::Avx512, crate::kernels::gemm_avx512::NR)
            }
            _ => (Kernel::None, 0),
        };
        let mut packed = Vec::new();
        let mut packed_amx = Vec::new();
        let mut packed_dp = Vec::new();
        let mut w_scale = Vec::new();
        #[cfg(target_arch = "x86_64")]
        let mut packed_vnni = Default::default();
        #[cfg(target_arch = "x86_64")]
        let mut packed_i16 = Default::default();
        #[cfg(target_arch = "x86_64")]
        let mut packed_avx_vnni = Default::default();
        match kernel {
            Kernel::None => {}
            #[cfg(target_arch = "x86_64")]
            Kernel::AmxBf16 => packed_amx = crate::kernels::amx::pack(&given, n, k),
            #[cfg(target_arch = "x86_64")]
            Kernel::DpBf16 => packed_dp = crate::kernels::gemm_bf16::pack(&given, n, k),
            #[cfg(target_arch = "x86_64")]
            Kernel::AmxInt8 => {
                (packed_amx, w_scale) = crate::kernels::amx::pack_i8(&given, n, k);
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::VnniInt8 => packed_vnni = crate::kernels::gemm_vnni::pack(&given, n, k),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Int8 => packed_i16 = crate::kernels::gemm_i8_avx2::pack(&given, n, k),
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnniInt8 => {
                packed_avx_vnni = crate::kernels::gemm_avx_vnni::pack(&given, n, k)
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::AmxBf16
            | Kernel::DpBf16
            | Kernel::AmxInt8
            | Kernel::VnniInt8
            | Kernel::Avx2Int8
            | Kernel::AvxVnniInt8 => {}
            Kernel::Avx2 | Kernel::Avx512 => {
                packed = vec![0f32; n.div_ceil(nr) * k * nr];
                for j in 0..n {
                    let (panel, col) = (j / nr, j % nr);
                    for p in 0..k {
                        packed[(panel * k + p) * nr + col] = rounded[j * k + p];
                    }
                }
            }
        }
        Weights {
            n,
            k,
            given,
            // The panel kernels do not read the plain copy.
            w: if kernel == Kernel::None {
                rounded
            } else {
                Vec::new()
            },
            packed,
            packed_amx,
            packed_dp,
            w_scale,
            #[cfg(target_arch = "x86_64")]
            packed_vnni,
            #[cfg(target_arch = "x86_64")]
            packed_i16,
            #[cfg(target_arch = "x86_64")]
            packed_avx_vnni,
            kernel,
            narrow,
            precision,
            level: Some(level),
        }
    }
}

/// The cache lines a layer product prefetches along the way (the next
/// block's rows), spread over its register tiles so that the misses
/// overlap the arithmetic instead of stalling it in one burst; but in
/// bursts of at least 32 lines, whose address translations overlap each
/// other (smaller bursts were slower: docs/PERF.md, "Three-tower scoring").
/// The lines go to L2 ([`crate::kernels::prefetch_line_l2`]): the layer's
/// operands pass through L1 before the rows are read.
pub(crate) struct Bursts<'a>(std::slice::Chunks<'a, usize>);

impl<'a> Bursts<'a> {
    /// The lines at the addresses `ahead`, over `tiles` tiles.
    pub(crate) fn new(ahead: &'a [usize], tiles: usize) -> Bursts<'a> {
        Bursts(ahead.chunks(ahead.len().div_ceil(tiles.max(1)).max(32)))
    }

    /// Prefetches the next burst (nothing once all are out).
    #[inline]
    pub(crate) fn next(&mut self) {
        for &p in self.0.next().unwrap_or(&[]) {
            crate::kernels::prefetch_line_l2(p as *const u8);
        }
    }

    /// Prefetches every burst left.
    pub(crate) fn rest(self) {
        for burst in self.0 {
            burst
                .iter()
                .for_each(|&p| crate::kernels::prefetch_line_l2(p as *const u8));
        }
    }
}

/// `w` (`[rows, k]` row-major) quantized to int8 per row: the scale
/// `s_j = max |w_j| / 127` (0 for a row of zeros) and `round(w / s_j)`
/// (nearest even) in -127..=127. The one quantization of weights: the
/// store's converted copy, the AMX packing and [`dequantized`] use it.
pub(crate) fn quantized(w: &[f32], k: usize) -> (Vec<i8>, Vec<f32>) {
    let (mut q, mut scales) = (Vec::with_capacity(w.len()), Vec::new());
    for row in w.chunks(k.max(1)) {
        let s = row.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
        let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
        q.extend((row.iter()).map(|&x| (x * inv).round_ties_even().clamp(-127.0, 127.0) as i8));
        scales.push(s);
    }
    (q, scales)
}

/// [`quantized`] and back: the values the int8 kernels multiply by, as
/// f32.
pub(crate) fn dequantized(w: &[f32], k: usize) -> Vec<f32> {
    let (q, scales) = quantized(w, k);
    (q.iter().enumerate())
        .map(|(i, &x)| x as f32 * scales[i / k.max(1)])
        .collect()
}

/// Where the accumulators of a [`matmul`] start, before `A @ W.T` is added.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start<'a> {
    /// At zero.
    Zero,
    /// At the values already in `C`.
    Accumulate,
    /// At `b[j]` in every row (a layer's bias).
    Bias(&'a [f32]),
    /// Row `i` at the `n` little-endian values of `rows[i]` (f16 if `half`,
    /// else f32) plus `add[j]`: a precomputed item part plus the query's
    /// user part.
    Rows {
        /// One byte row per row of the product.
        rows: &'a [&'a [u8]],
        /// Whether the rows hold f16 (else f32) values.
        half: bool,
        /// Added to every row.
        add: &'a [f32],
    },
}

/// `c[i*ldc + j] = act(start(i, j) + sum_p a[i*lda + p] * W[j][p])` for
/// `i < m`, `j < w.n`, `p < w.k`, where `act` is ReLU if `relu`, else the
/// identity.
///
/// Panics if a slice is too short for its shape (a bug in the caller: the
/// shapes come from a validated model, never from outside input).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    m: usize,
    a: &[f32],
    lda: usize,
    w: &Weights,
    c: &mut [f32],
    ldc: usize,
    start: Start<'_>,
    relu: bool,
) {
    matmul_prefetching(m, a, lda, w, c, ldc, start, relu, &[]);
}

/// [`matmul`], prefetching the cache lines at the addresses `ahead` (the next block's
/// rows, say) a few at a time along the way, where the misses overlap the
/// arithmetic.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_prefetching(
    m: usize,
    a: &[f32],
    lda: usize,
    w: &Weights,
    c: &mut [f32],
    ldc: usize,
    start: Start<'_>,
    relu: bool,
    ahead: &[usize],
) {
    let (n, k) = (w.n, w.k);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        k <= lda && n <= ldc,
        "matmul: strides smaller than the shape"
    );
    assert!(a.len() >= (m - 1) * lda + k, "matmul: A too short");
    assert!(c.len() >= (m - 1) * ldc + n, "matmul: C too short");
    match start {
        Start::Zero | Start::Accumulate => {}
        Start::Bias(b) => assert!(b.len() >= n, "matmul: bias too short"),
        Start::Rows { rows, half, add } => {
            let width = if half { 2 } else { 4 };
            assert!(add.len() >= n, "matmul: added row too short");
            assert!(rows.len() >= m, "matmul: too few start rows");
            assert!(
                rows[..m].iter().all(|r| r.len() >= n * width),
                "matmul: start row too short"
            );
        }
    }
    #[cfg(target_arch = "x86_64")]
    match w.kernel {
        Kernel::None => {}
        Kernel::AmxInt8 => {
            // SAFETY: `Kernel::AmxInt8` is only set for Level::Amx, which
            // `Weights::for_level` asserts the CPU has (AMX granted to the
            // process, AVX-512 F, BW and VL present); the asserts above,
            // the packing (`amx::pack_i8`) and its `n` scales are the
            // kernel's bounds contract.
            unsafe {
                crate::kernels::amx::gemm_packed_i8(
                    m,
                    n,
                    k,
                    a,
                    lda,
                    bytemuck::cast_slice(&w.packed_amx),
                    &w.w_scale,
                    c,
                    ldc,
                    start,
                    relu,
                    ahead,
                )
            };
            return;
        }
        Kernel::VnniInt8 => {
            // SAFETY: `Kernel::VnniInt8` is only set for Level::Avx512 and
            // Level::Avx512Bf16 when the CPU has AVX512-VNNI, and
            // `Weights::for_level` asserts the CPU has the level (AVX-512 F,
            // BW and VL, FMA and F16C present); the asserts above and the
            // packing (`gemm_vnni::pack` for n and k) are the kernel's
            // bounds contract.
            unsafe {
                crate::kernels::gemm_vnni::gemm_packed_i8(
                    m,
                    n,
                    k,
                    a,
                    lda,
                    &w.packed_vnni,
                    c,
                    ldc,
                    start,
                    relu,
                    ahead,
                )
            };
            return;
        }
        Kernel::Avx2Int8 => {
            // SAFETY: `Kernel::Avx2Int8` is only set for Level::Avx2 and up,
            // which `Weights::for_level` asserts the CPU has (AVX2, FMA and
            // F16C present); the asserts above and the packing
            // (`gemm_i8_avx2::pack` for n and k) are the kernel's bounds
            // contract.
            unsafe {
                crate::kernels::gemm_i8_avx2::gemm_packed_i8(
                    m,
                    n,
                    k,
                    a,
                    lda,
                    &w.packed_i16,
                    c,
                    ldc,
                    start,
                    relu,
                    ahead,
                )
            };
            return;
        }
        Kernel::AvxVnniInt8 => {
            // SAFETY: `Kernel::AvxVnniInt8` is only set for Level::AvxVnni,
            // which `Weights::for_level` asserts the CPU runs (AVX2, FMA,
            // F16C and AVX-VNNI present: `Level::runs_here`); the asserts
            // above and the packing (`gemm_avx_vnni::pack` for n and k) are
            // the kernel's bounds contract.
            unsafe {
                crate::kernels::gemm_avx_vnni::gemm_packed_i8(
                    m,
                    n,
                    k,
                    a,
                    lda,
                    &w.packed_avx_vnni,
                    c,
                    ldc,
                    start,
                    relu,
                    ahead,
                )
            };
            return;
        }
        Kernel::DpBf16 => {
            // SAFETY: `Kernel::DpBf16` is only set for Level::Avx512Bf16,
            // which `Weights::for_level` asserts the CPU has (AVX-512 F, BW,
            // VL and BF16, FMA and F16C present); the asserts above and the
            // packing (`gemm_bf16::pack`) are the kernel's bounds contract.
            unsafe {
                crate::kernels::gemm_bf16::gemm_packed(
                    m,
                    n,
                    k,
                    a,
                    lda,
                    &w.packed_dp,
                    c,
                    ldc,
                    start,
                    relu,
                    ahead,
                )
            };
            return;
        }
        Kernel::AmxBf16 => {
            // SAFETY: `Kernel::AmxBf16` is only set for Level::Amx, which
            // `Weights::for_level` asserts the CPU has (AMX granted to the
            // process, AVX-512 F, BW, VL and BF16 present); the asserts
            // above and the packing (`amx::pack`) are the kernel's bounds
            // contract.
            unsafe {
                crate::kernels::amx::gemm_packed(
                    m,
                    n,
                    k,
                    a,
                    lda,
                    bytemuck::cast_slice(&w.packed_amx),
                    c,
                    ldc,
                    start,
                    relu,
                    ahead,
                )
            };
            return;
        }
        Kernel::Avx2 => {
            // SAFETY: `Kernel::Avx2` is only set for Level::Avx2 and
            // Level::AvxVnni, which `Weights::for_level` asserts the CPU
            // runs (AVX2, FMA and F16C present); the asserts above and the
            // packing (ceil(n/16) * k * 16 values) are the kernel's bounds
            // contract.
            unsafe {
                crate::kernels::gemm_x86::gemm_packed(
                    m, n, k, a, lda, &w.packed, c, ldc, start, relu, ahead,
                )
            };
            return;
        }
        Kernel::Avx512 => {
            // SAFETY: `Kernel::Avx512` is only set for Level::Avx512, which
            // `Weights::for_level` asserts the CPU has (AVX-512 F, BW, VL,
            // FMA and F16C present); the asserts above and the packing
            // (ceil(n/32) * k * 32 values) are the kernel's bounds contract.
            unsafe {
                crate::kernels::gemm_avx512::gemm_packed(
                    m, n, k, a, lda, &w.packed, c, ldc, start, relu, ahead,
                )
            };
            return;
        }
    }
    let beta = fill_start(m, n, c, ldc, start);
    ahead
        .iter()
        .for_each(|&p| crate::kernels::prefetch_line_l2(p as *const u8));
    #[cfg(target_arch = "x86_64")]
    if w.narrow {
        // SAFETY: `narrow` is only set for Level::Avx2 and up, which
        // `Weights::for_level` asserts the CPU has (AVX2 and FMA present); `w.w` holds n * k values, and the asserts above bound `a`
        // and `c`.
        unsafe { crate::kernels::gemm_x86::dots(m, n, k, a, lda, &w.w, beta, c, ldc) };
    } else {
        gemm_nt(m, n, k, a, lda, &w.w, k, beta, c, ldc);
    }
    #[cfg(not(target_arch = "x86_64"))]
    gemm_nt(m, n, k, a, lda, &w.w, k, beta, c, ldc);
    if relu {
        for i in 0..m {
            c[i * ldc..i * ldc + n]
                .iter_mut()
                .for_each(|x| *x = x.max(0.0));
        }
    }
}

/// Writes the start values of a product into `c` where they are not
/// already there, and returns the factor on `c` for the product to add
/// to (0: ignore `c`, 1: add to it).
fn fill_start(m: usize, n: usize, c: &mut [f32], ldc: usize, start: Start<'_>) -> f32 {
    match start {
        Start::Zero => 0.0,
        Start::Accumulate => 1.0,
        Start::Bias(b) => {
            for i in 0..m {
                c[i * ldc..i * ldc + n].copy_from_slice(&b[..n]);
            }
            1.0
        }
        Start::Rows { rows, half, add } => {
            for (i, row) in rows[..m].iter().enumerate() {
                let out = &mut c[i * ldc..i * ldc + n];
                for (j, (o, u)) in out.iter_mut().zip(add).enumerate() {
                    let v = if half {
                        half::f16::from_bits(u16::from_le_bytes([row[2 * j], row[2 * j + 1]]))
                            .to_f32()
                    } else {
                        f32::from_le_bytes(row[4 * j..4 * j + 4].try_into().expect("4 bytes"))
                    };
                    *o = v + u;
                }
            }
            1.0
        }
    }
}

/// `c[i*ldc + j] = beta * c[i*ldc + j] + sum_p a[i*lda + p] * w[j*ldw + p]`
/// for `i < m`, `j < n`, `p < k`: a block of rows times the transpose of a
/// weight matrix in PyTorch `nn.Linear` layout (`w` row-major `[n, ldw]`,
/// of which the first `k` columns are used).
///
/// Panics if a slice is too short for its shape (a bug in the caller: the
/// shapes come from a validated model, never from outside input).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_nt(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    w: &[f32],
    ldw: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        k <= lda && k <= ldw && n <= ldc,
        "gemm: strides smaller than the shape"
    );
    assert!(a.len() >= (m - 1) * lda + k, "gemm: A too short");
    assert!(w.len() >= (n - 1) * ldw + k, "gemm: W too short");
    assert!(c.len() >= (m - 1) * ldc + n, "gemm: C too short");
    assert!(lda <= isize::MAX as usize && ldw <= isize::MAX as usize && ldc <= isize::MAX as usize);
    // SAFETY: the asserts above show every element sgemm reads (a[i*lda+p],
    // w[j*ldw+p] for i<m, p<k, j<n) and writes (c[i*ldc+j]) lies inside its
    // slice; `c` is borrowed mutably, so it aliases neither input.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            lda as isize,
            1,
            w.as_ptr(),
            1,
            ldw as isize,
            beta,
            c.as_mut_ptr(),
            ldc as isize,
            1,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kernels_match_a_naive_product_for_every_edge_shape_and_start() {
        // Every level the CPU has, whatever VSTORE_KERNEL_LEVEL says.
        let levels = Level::available();
        println!("gemm levels run: {levels:?}");
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            assert!(
                levels.contains(&Level::Avx512),
                "AVX-512 CPU, level not run"
            );
        }
        let mut ran = Vec::new();
        for (m, n, k) in [
            (1, 1, 1),
            (6, 16, 5),
            (7, 17, 3),
            (13, 3, 33),
            (128, 64, 22),
            (5, 40, 9),
            // AVX-512 edges: whole 12x32 tiles, partial panels of 1, 31
            // and 9 columns, partial tiles of 1 to 11 rows, two panels.
            (12, 32, 4),
            (25, 33, 7),
            (23, 31, 16),
            (35, 9, 5),
            (48, 64, 29),
            (11, 96, 3),
            // Narrow layers (dot products), with and without a k tail.
            (13, 3, 128),
            (7, 8, 37),
            (2, 1, 7),
        ] {
            let (lda, ldc, ldw) = (k + 3, n + 2, k + 1);
            let a: Vec<f32> = (0..m * lda).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
            let wraw: Vec<f32> = (0..n * ldw)
                .map(|i| ((i * 5) % 11) as f32 * 0.25 - 1.0)
                .collect();
            let bias: Vec<f32> = (0..n).map(|j| (j % 5) as f32 * 1.5 - 3.0).collect();
            // Start rows: small integers and halves, exact in f16 and f32.
            let start_val = |i: usize, j: usize| ((i * 3 + j * 7) % 17) as f32 * 0.5 - 4.0;
            // A leading byte, sliced off below: f32 rows read from a file
            // need not be 4-byte aligned.
            let rows32: Vec<Vec<u8>> = (0..m)
                .map(|i| {
                    let vals = (0..n).flat_map(|j| start_val(i, j).to_le_bytes());
                    std::iter::once(0u8).chain(vals).collect()
                })
                .collect();
            let rows16: Vec<Vec<u8>> = (0..m)
                .map(|i| {
                    (0..n)
                        .flat_map(|j| half::f16::from_f32(start_val(i, j)).to_le_bytes())
                        .collect()
                })
                .collect();
            let (r32, r16): (Vec<&[u8]>, Vec<&[u8]>) = (
                rows32.iter().map(|r| &r[1..]).collect(),
                rows16.iter().map(|r| &r[..]).collect(),
            );
            for &level in &levels {
                let w = Weights::for_level(&wraw, ldw, k, n, level, Precision::F32);
                assert_eq!(w.packed.is_empty(), level == Level::Portable || n <= NARROW);
                assert_eq!(w.narrow, level >= Level::Avx2 && n <= NARROW);
                let kernel = match level {
                    _ if n <= NARROW => Kernel::None,
                    Level::Avx2 | Level::AvxVnni => Kernel::Avx2,
                    Level::Avx512 | Level::Avx512Bf16 | Level::Amx => Kernel::Avx512,
                    Level::Portable => Kernel::None,
                };
                assert_eq!(w.kernel, kernel);
                if !ran.contains(&(level, kernel)) {
                    ran.push((level, kernel));
                }
                let starts = [
                    Start::Zero,
                    Start::Accumulate,
                    Start::Bias(&bias),
                    Start::Rows {
                        rows: &r32,
                        half: false,
                        add: &bias,
                    },
                    Start::Rows {
                        rows: &r16,
                        half: true,
                        add: &bias,
                    },
                ];
                for start in starts {
                    for relu in [false, true] {
                        let mut c: Vec<f32> = (0..m * ldc).map(|i| (i % 9) as f32 - 4.0).collect();
                        let before = c.clone();
                        matmul(m, &a, lda, &w, &mut c, ldc, start, relu);
                        for i in 0..m {
                            for j in 0..ldc {
                                let want = if j < n {
                                    let dot: f32 =
                                        (0..k).map(|p| a[i * lda + p] * wraw[j * ldw + p]).sum();
                                    let s = match start {
                                        Start::Zero => 0.0,
                                        Start::Accumulate => before[i * ldc + j],
                                        Start::Bias(b) => b[j],
                                        Start::Rows { add, .. } => start_val(i, j) + add[j],
                                    };
                                    let v = s + dot;
                                    if relu {
                                        v.max(0.0)
                                    } else {
                                        v
                                    }
                                } else {
                                    before[i * ldc + j]
                                };
                                let got = c[i * ldc + j];
                                assert!(
                                    (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                                    "{level:?} {start:?} relu {relu} m{m} n{n} k{k} ({i},{j}): {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
        println!("gemm (level, kernel) pairs checked: {ran:?}");
        if Level::hardware() >= Level::Avx512 {
            assert!(ran.contains(&(Level::Avx512, Kernel::Avx512)));
            assert!(ran.contains(&(Level::Avx2, Kernel::Avx2)));
        }
    }

    /// Checks `matmul` at `precision` on every level this CPU runs against
    /// a float64 product of the given (unrounded) values, within the bound
    /// the precision implies: each bf16 rounding (weights, and on AMX and
    /// AVX512-BF16 the activations) is off by at most 2^-8 relative (8 significant bits,
    /// half an ulp), so a product by at most (1 + 2^-8)^2 - 1 < 2^-7 *
    /// 1.004, plus f32 summation (k * 2^-24 relative) and the f32 start
    /// value; all relative to `|start| + sum_p |a_p w_p|`.
    #[allow(clippy::too_many_arguments)]
    fn check_precision(
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        wraw: &[f32],
        bias: &[f32],
        relu: bool,
        precision: Precision,
    ) -> Vec<(Level, Kernel)> {
        let mut ran = Vec::new();
        // Start values: rows exact in f16 (multiples of 1/8 below 2).
        let r = |i: usize, j: usize| ((i * 3 + j * 5) % 17) as f32 * 0.125 - 1.0;
        let rows32: Vec<Vec<u8>> = (0..m)
            .map(|i| (0..n).flat_map(|j| r(i, j).to_le_bytes()).collect())
            .collect();
        let rows16: Vec<Vec<u8>> = (0..m)
            .map(|i| {
                (0..n)
                    .flat_map(|j| half::f16::from_f32(r(i, j)).to_le_bytes())
                    .collect()
            })
            .collect();
        let r32: Vec<&[u8]> = rows32.iter().map(|v| &v[..]).collect();
        let r16: Vec<&[u8]> = rows16.iter().map(|v| &v[..]).collect();
        for level in Level::available() {
            let w = Weights::for_level(wraw, k, k, n, level, precision);
            ran.push((level, w.kernel));
            for kind in 0..5 {
                let (start, s0): (Start<'_>, Box<dyn Fn(usize, usize) -> f32>) = match kind {
                    0 => (Start::Zero, Box::new(|_, _| 0.0)),
                    1 => (Start::Bias(bias), Box::new(|_, j| bias[j])),
                    2 => (Start::Accumulate, Box::new(|i, j| r(i, j) * 2.0)),
                    3 => (
                        Start::Rows {
                            rows: &r32,
                            half: false,
                            add: bias,
                        },
                        Box::new(|i, j| r(i, j) + bias[j]),
                    ),
                    _ => (
                        Start::Rows {
                            rows: &r16,
                            half: true,
                            add: bias,
                        },
                        Box::new(|i, j| r(i, j) + bias[j]),
                    ),
                };
                let mut c: Vec<f32> = (0..m * n).map(|x| r(x / n, x % n) * 2.0).collect();
                matmul(m, a, k, &w, &mut c, n, start, relu);
                for i in 0..m {
                    for j in 0..n {
                        let terms = (0..k).map(|p| a[i * k + p] as f64 * wraw[j * k + p] as f64);
                        let st = s0(i, j) as f64;
                        let exact = st + terms.clone().sum::<f64>();
                        let mass = st.abs() + terms.map(f64::abs).sum::<f64>();
                        let f32_sum = (k as f64 + 3.0) * 2f64.powi(-24) * mass;
                        let bound = match w.precision() {
                            Precision::F32 => f32_sum,
                            Precision::Bf16 => 2f64.powi(-7) * 1.004 * mass + f32_sum,
                            Precision::Int8 => {
                                // Rounding to the int8 grid moves a weight
                                // by at most max |w_j| / 254 and, on AMX and
                                // VNNI, an
                                // activation by max |a_i| / 254 (/ 510 when
                                // the block has no negative value).
                                fn row(v: &[f32]) -> impl Iterator<Item = f64> + '_ {
                                    v.iter().map(|x| x.abs() as f64)
                                }
                                let mw = row(&wraw[j * k..(j + 1) * k]).fold(0.0, f64::max);
                                let ma = if matches!(
                                    w.kernel,
                                    Kernel::AmxInt8
                                        | Kernel::VnniInt8
                                        | Kernel::Avx2Int8
                                        | Kernel::AvxVnniInt8
                                ) {
                                    row(&a[i * k..(i + 1) * k]).fold(0.0, f64::max)
                                } else {
                                    0.0
                                };
                                let (sa, sw) = (
                                    row(&a[i * k..(i + 1) * k]).sum::<f64>(),
                                    row(&wraw[j * k..(j + 1) * k]).sum::<f64>(),
                                );
                                (sa * mw + ma * sw) / 254.0 * 1.001
                                    + k as f64 * ma * mw / 64516.0
                                    + 2.0 * f32_sum
                                    + 4.0 * 2f64.powi(-24) * k as f64 * ma.max(1.0) * mw
                            }
                        };
                        let want = if relu { exact.max(0.0) } else { exact };
                        let got = c[i * n + j] as f64;
                        assert!(
                            (got - want).abs() <= bound + 1e-30,
                            "{precision:?} {level:?} {:?} {start:?} m{m} n{n} k{k} ({i},{j}): {got} vs {want} (bound {bound})",
                            w.kernel,
                        );
                    }
                }
            }
        }
        ran
    }

    #[test]
    fn bf16_runs_on_amx_where_the_cpu_has_it_and_within_its_bound_everywhere() {
        let (m, n, k) = (37, 70, 45);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37) % 101) as f32 / 17.0 - 2.9)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 53) % 97) as f32 / 41.0 - 1.1)
            .collect();
        let b: Vec<f32> = (0..n).map(|j| j as f32 * 0.01 - 0.3).collect();
        let ran = check_precision(m, n, k, &a, &w, &b, false, Precision::Bf16);
        println!("bf16 (level, kernel) pairs checked: {ran:?}");
        if Level::hardware() >= Level::Avx512Bf16 {
            assert!(ran.contains(&(Level::Avx512Bf16, Kernel::DpBf16)));
        } else {
            println!("no AVX512-BF16 on this CPU: the vdpbf16ps kernel did not run");
        }
        if Level::hardware() == Level::Amx {
            assert!(ran.contains(&(Level::Amx, Kernel::AmxBf16)));
        } else {
            println!("no AMX on this CPU: the AMX bf16 kernel did not run");
        }
        // Narrow layers stay f32 at bf16.
        let w8 = Weights::for_level(&w[..8 * k], k, k, 8, Level::detect(), Precision::Bf16);
        assert_eq!(w8.precision(), Precision::F32);
        // bf16 is not f32: the rounding shows on these values.
        let w32 = Weights::for_level(&w, k, k, n, Level::detect(), Precision::F32);
        let w16 = w32.at(Precision::Bf16);
        let (mut c32, mut c16) = (vec![0f32; m * n], vec![0f32; m * n]);
        matmul(m, &a, k, &w32, &mut c32, n, Start::Zero, false);
        matmul(m, &a, k, &w16, &mut c16, n, Start::Zero, false);
        assert_ne!(c32, c16);
        assert_eq!(w16.at(Precision::F32).precision(), Precision::F32);
    }

    #[test]
    fn int8_runs_on_amx_and_vnni_where_the_cpu_has_them_and_within_its_bound_everywhere() {
        let (m, n, k) = (37, 70, 130);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37) % 101) as f32 / 17.0 - 2.9)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 53) % 97) as f32 / 41.0 - 1.1)
            .collect();
        let b: Vec<f32> = (0..n).map(|j| j as f32 * 0.01 - 0.3).collect();
        for relu in [false, true] {
            let ran = check_precision(m, n, k, &a, &w, &b, relu, Precision::Int8);
            println!("int8 (level, kernel) pairs checked: {ran:?}");
            if Level::hardware() == Level::Amx {
                assert!(ran.contains(&(Level::Amx, Kernel::AmxInt8)), "{ran:?}");
            } else {
                println!("no AMX on this CPU: the AMX int8 kernel did not run");
            }
            #[cfg(target_arch = "x86_64")]
            if Level::hardware() >= Level::Avx512 && crate::kernels::has_vnni() {
                assert!(ran.contains(&(Level::Avx512, Kernel::VnniInt8)), "{ran:?}");
            } else {
                println!("no AVX512-VNNI on this CPU: the vpdpbusd kernel did not run");
            }
            #[cfg(target_arch = "x86_64")]
            if Level::AvxVnni.runs_here() {
                assert!(
                    ran.contains(&(Level::AvxVnni, Kernel::AvxVnniInt8)),
                    "{ran:?}"
                );
            } else {
                println!("no AVX-VNNI on this CPU: the 256-bit vpdpbusd kernel did not run");
            }
            #[cfg(target_arch = "x86_64")]
            if Level::hardware() >= Level::Avx2 {
                assert!(ran.contains(&(Level::Avx2, Kernel::Avx2Int8)), "{ran:?}");
            }
        }
        // A zero weight row and a zero activation row (scale 0) give the bias.
        let mut w0 = w.clone();
        w0[..k].fill(0.0);
        let mut a0 = a.clone();
        a0[..k].fill(0.0);
        check_precision(m, n, k, &a0, &w0, &b, false, Precision::Int8);
        // Stored dequantized weights quantize back to themselves.
        let dq = dequantized(&w, k);
        assert_eq!(dequantized(&dq, k), dq);
    }

    #[test]
    fn the_int8_kernels_compute_the_same_sums() {
        // Same quantization and int32 sums on AMX, VNNI and AVX2: the
        // results differ at most by the rounding of the f32 epilogue.
        let (m, n, k) = (29, 45, 77);
        for signed in [true, false] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37) % 101) as f32 / 17.0 - if signed { 2.9 } else { 0.0 })
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 53) % 97) as f32 / 41.0 - 1.1)
                .collect();
            let mut first: Option<(Kernel, Vec<f32>)> = None;
            for level in Level::available() {
                let wl = Weights::for_level(&w, k, k, n, level, Precision::Int8);
                if matches!(wl.kernel, Kernel::None | Kernel::Avx512) {
                    continue; // f32 products on dequantized weights
                }
                let mut c = vec![0f32; m * n];
                matmul(m, &a, k, &wl, &mut c, n, Start::Zero, false);
                match &first {
                    None => first = Some((wl.kernel, c)),
                    Some((k0, c0)) => {
                        for (x, y) in c.iter().zip(c0) {
                            assert!(
                                (x - y).abs() <= 4.0 * f32::EPSILON * x.abs().max(y.abs()),
                                "{:?} vs {k0:?}: {x} vs {y}",
                                wl.kernel
                            );
                        }
                    }
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn every_precision_stays_within_its_bound_of_float64(
            m in 1usize..70,
            n in 1usize..80,
            k in 1usize..100,
            seed in 0u64..1_000_000,
            relu in proptest::bool::ANY,
            precision in 0usize..3,
        ) {
            let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let mut next = move || {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
            };
            let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| next() * 0.5).collect();
            let b: Vec<f32> = (0..n).map(|_| next()).collect();
            let p = [Precision::F32, Precision::Bf16, Precision::Int8][precision];
            check_precision(m, n, k, &a, &w, &b, relu, p);
        }
    }

    #[test]
    fn matches_a_naive_product_with_strides_and_beta() {
        let (m, n, k, lda, ldw, ldc) = (5, 3, 4, 6, 7, 5);
        let a: Vec<f32> = (0..m * lda).map(|i| (i % 11) as f32 - 5.0).collect();
        let w: Vec<f32> = (0..n * ldw).map(|i| (i % 7) as f32 * 0.5 - 1.0).collect();
        let mut c: Vec<f32> = (0..m * ldc).map(|i| i as f32).collect();
        let before = c.clone();
        gemm_nt(m, n, k, &a, lda, &w, ldw, 1.0, &mut c, ldc);
        for i in 0..m {
            for j in 0..ldc {
                let want = if j < n {
                    before[i * ldc + j]
                        + (0..k).map(|p| a[i * lda + p] * w[j * ldw + p]).sum::<f32>()
                } else {
                    before[i * ldc + j]
                };
                assert_eq!(c[i * ldc + j], want, "({i}, {j})");
            }
        }
    }
}
