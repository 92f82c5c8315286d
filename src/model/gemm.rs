//! The one matrix-product edge: `C = beta * C + A @ W.T` through the
//! `matrixmultiply` crate (runtime-dispatched AVX2/FMA packed kernels).

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
