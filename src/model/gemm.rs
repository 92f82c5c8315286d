//! Matrix products of the model layers: `C (+)= A @ W.T`, `W` a weight
//! matrix in PyTorch `nn.Linear` layout.
//!
//! On x86-64 with AVX2+FMA the weights are packed once, at model load, and
//! a register-tiled kernel (`kernels::gemm_x86`) runs; elsewhere the
//! `matrixmultiply` crate does (it packs both operands on every call, which
//! cost about 14% of a query in the benchmark, and its kernel reached
//! ~57 GFLOP/s here against the packed kernel's figure in the note).

use crate::kernels::Level;

/// A weight matrix `[n, k]` ready for [`matmul`]: a contiguous copy for the
/// portable path and, where the AVX2 kernel runs, 16-column panels
/// `[ceil(n/16)][k][16]` of its transpose, zero-padded.
#[derive(Debug, Clone, Default)]
pub(crate) struct Weights {
    pub n: usize,
    pub k: usize,
    w: Vec<f32>,
    packed: Vec<f32>,
}

impl Weights {
    /// Columns `..k` of the rows of `w` (`n` rows, `ldw` apart).
    pub(crate) fn new(w: &[f32], ldw: usize, k: usize, n: usize) -> Weights {
        let dense: Vec<f32> = (0..n)
            .flat_map(|j| w[j * ldw..j * ldw + k].iter().copied())
            .collect();
        let mut packed = Vec::new();
        if Level::detect() == Level::Avx2 {
            #[cfg(target_arch = "x86_64")]
            {
                use crate::kernels::gemm_x86::NR;
                let panels = n.div_ceil(NR);
                packed = vec![0f32; panels * k * NR];
                for j in 0..n {
                    let (panel, col) = (j / NR, j % NR);
                    for p in 0..k {
                        packed[(panel * k + p) * NR + col] = dense[j * k + p];
                    }
                }
            }
        }
        Weights {
            n,
            k,
            // Only the portable path reads the plain copy.
            w: if packed.is_empty() { dense } else { Vec::new() },
            packed,
        }
    }
}

/// `c[i*ldc + j] = (accumulate ? c[i*ldc + j] : 0) + sum_p a[i*lda + p] * W[j][p]`
/// for `i < m`, `j < w.n`, `p < w.k`.
///
/// Panics if a slice is too short for its shape (a bug in the caller: the
/// shapes come from a validated model, never from outside input).
pub(crate) fn matmul(
    m: usize,
    a: &[f32],
    lda: usize,
    w: &Weights,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
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
    #[cfg(target_arch = "x86_64")]
    if !w.packed.is_empty() {
        // SAFETY: `packed` is only filled when Level::detect() found AVX2
        // and FMA; the asserts above and the packing (ceil(n/16) * k * 16
        // values) are the kernel's bounds contract.
        unsafe {
            crate::kernels::gemm_x86::gemm_packed(m, n, k, a, lda, &w.packed, c, ldc, accumulate)
        };
        return;
    }
    gemm_nt(
        m,
        n,
        k,
        a,
        lda,
        &w.w,
        k,
        if accumulate { 1.0 } else { 0.0 },
        c,
        ldc,
    );
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
    fn packed_kernel_matches_a_naive_product_for_every_edge_shape() {
        for (m, n, k) in [
            (1, 1, 1),
            (6, 16, 5),
            (7, 17, 3),
            (13, 3, 33),
            (128, 64, 22),
            (5, 40, 9),
        ] {
            let (lda, ldc, ldw) = (k + 3, n + 2, k + 1);
            let a: Vec<f32> = (0..m * lda).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
            let wraw: Vec<f32> = (0..n * ldw)
                .map(|i| ((i * 5) % 11) as f32 * 0.25 - 1.0)
                .collect();
            let w = Weights::new(&wraw, ldw, k, n);
            for accumulate in [false, true] {
                let mut c: Vec<f32> = (0..m * ldc).map(|i| (i % 9) as f32).collect();
                let before = c.clone();
                matmul(m, &a, lda, &w, &mut c, ldc, accumulate);
                for i in 0..m {
                    for j in 0..ldc {
                        let want = if j < n {
                            let dot: f32 = (0..k).map(|p| a[i * lda + p] * wraw[j * ldw + p]).sum();
                            dot + if accumulate { before[i * ldc + j] } else { 0.0 }
                        } else {
                            before[i * ldc + j]
                        };
                        let got = c[i * ldc + j];
                        assert!(
                            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                            "m{m} n{n} k{k} ({i},{j}): {got} vs {want}"
                        );
                    }
                }
            }
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
