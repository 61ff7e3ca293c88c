//! The GEMM on cuBLAS (f32, `cublasSgemm`, default math mode: no TF32).
//!
//! cuBLAS is column-major; a row-major `m×n` matrix is the column-major `n×m` matrix of
//! its transpose. So `C = op(A)·op(B)` (row-major) is computed as the column-major
//! `Cᵀ = op(B)ᵀ·op(A)ᵀ`: the operands swap places and keep their transpose flags, and each
//! leading dimension is the row length of the stored row-major matrix. With one stream and
//! the default (non-atomic) mode, cuBLAS gives the same bits on every run.

use cudarc::cublas::sys::cublasOperation_t;

use super::GemmDims;
use crate::cuda::{check_view, device_error, Cuda, DeviceView, DeviceViewMut, TimedOp};
use crate::{element_count, KernelError};

/// See [`super::gemm`].
pub(crate) fn gemm(
    cuda: &Cuda,
    dims: GemmDims,
    a: DeviceView<'_>,
    b: DeviceView<'_>,
    c: DeviceViewMut<'_>,
    accumulate: bool,
) -> Result<(), KernelError> {
    const OP: &str = "gemm";
    let GemmDims { m, n, k, .. } = dims;
    check_view(OP, "a", element_count(OP, &[m, k])?, a.len())?;
    check_view(OP, "b", element_count(OP, &[k, n])?, b.len())?;
    check_view(OP, "c", element_count(OP, &[m, n])?, c.len())?;
    if m.max(n).max(k) > i32::MAX as usize {
        return Err(KernelError::Invalid {
            op: OP,
            message: format!("{dims:?} exceeds cuBLAS's 32-bit dimensions"),
        });
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        // cuBLAS leaves C alone for k = 0 whatever beta is; the CPU op writes zeros.
        return if accumulate {
            Ok(())
        } else {
            cuda.fill_zero_at(c.address(), c.len())
        };
    }
    let operation = |transpose: bool| {
        if transpose {
            cublasOperation_t::CUBLAS_OP_T
        } else {
            cublasOperation_t::CUBLAS_OP_N
        }
    };
    // Row lengths of the stored matrices.
    let lda = if dims.transpose_a { m } else { k };
    let ldb = if dims.transpose_b { k } else { n };
    let alpha = 1.0f32;
    let beta = if accumulate { 1.0f32 } else { 0.0 };
    cuda.timed(TimedOp::Gemm, || {
        // SAFETY: the views were checked to hold the matrices the dimensions describe, and
        // the handle runs on the stream every other op of this device uses.
        unsafe {
            cudarc::cublas::result::sgemm(
                *cuda.blas().handle(),
                operation(dims.transpose_b),
                operation(dims.transpose_a),
                n as i32,
                m as i32,
                k as i32,
                &alpha,
                b.address() as *const f32,
                ldb as i32,
                a.address() as *const f32,
                lda as i32,
                &beta,
                c.address() as *mut f32,
                n as i32,
            )
        }
        .map_err(|e| device_error("cublasSgemm", e))
    })
}

#[cfg(test)]
mod tests {
    use crate::cuda::testing::{device, random};
    use crate::gemm::{self, GemmDims};
    use crate::testing::{assert_close, bits, to_f64};
    use crate::Backend;

    #[test]
    fn cuda_gemm_matches_the_cpu_in_every_transpose_and_mode() {
        let Some(cuda) = device() else { return };
        for (m, n, k) in [
            (1, 1, 1),
            (37, 19, 53),
            (300, 200, 96),
            (1, 513, 64),
            (5, 3, 0),
        ] {
            for transpose_a in [false, true] {
                for transpose_b in [false, true] {
                    for accumulate in [false, true] {
                        let dims = GemmDims {
                            m,
                            n,
                            k,
                            transpose_a,
                            transpose_b,
                        };
                        let (a, b, c0) = (random(m * k, 1), random(k * n, 2), random(m * n, 3));
                        let mut c = c0.clone();
                        gemm::gemm(dims, &a, &b, &mut c, accumulate).unwrap();
                        let (ga, gb) = (cuda.upload(&a).unwrap(), cuda.upload(&b).unwrap());
                        let mut gc = cuda.upload(&c0).unwrap();
                        cuda.gemm(
                            dims,
                            cuda.all(&ga),
                            cuda.all(&gb),
                            cuda.all_mut(&mut gc),
                            accumulate,
                        )
                        .unwrap();
                        let got = cuda.download(cuda.all(&gc)).unwrap();
                        assert_close(
                            &format!("{dims:?} accumulate {accumulate}"),
                            &got,
                            &to_f64(&c),
                            1e-5,
                            1e-6,
                        );
                        // Same bits on a second run.
                        let mut again = cuda.upload(&c0).unwrap();
                        cuda.gemm(
                            dims,
                            cuda.all(&ga),
                            cuda.all(&gb),
                            cuda.all_mut(&mut again),
                            accumulate,
                        )
                        .unwrap();
                        assert_eq!(bits(&cuda.download(cuda.all(&again)).unwrap()), bits(&got));
                    }
                }
            }
        }
    }

    #[test]
    fn cuda_gemm_in_tf32_is_close_but_not_f32() {
        let Some(cuda) = device() else { return };
        let (m, n, k) = (256, 256, 512);
        let dims = GemmDims {
            m,
            n,
            k,
            transpose_a: false,
            transpose_b: true,
        };
        let (a, b) = (random(m * k, 1), random(n * k, 2));
        let mut want = vec![0.0; m * n];
        gemm::gemm(dims, &a, &b, &mut want, false).unwrap();
        let (ga, gb) = (cuda.upload(&a).unwrap(), cuda.upload(&b).unwrap());
        let mut gc = cuda.zeros(m * n).unwrap();
        let mut run = |tf32: bool| {
            cuda.allow_tf32(tf32).unwrap();
            cuda.gemm(
                dims,
                cuda.all(&ga),
                cuda.all(&gb),
                cuda.all_mut(&mut gc),
                false,
            )
            .unwrap();
            cuda.download(cuda.all(&gc)).unwrap()
        };
        let tf32 = run(true);
        let f32 = run(false);
        assert_close("f32", &f32, &to_f64(&want), 1e-5, 1e-6);
        assert_close("tf32", &tf32, &to_f64(&want), 3e-3, 1e-6);
        let error = crate::testing::max_scaled_error(&tf32, &to_f64(&want), 1e-5, 1e-6);
        assert!(
            error > 1.0,
            "TF32 was not used: error {error} of the f32 tolerance"
        );
    }

    #[test]
    fn cuda_gemm_on_ranges_of_a_buffer() {
        let Some(cuda) = device() else { return };
        // A weight living in the middle of a flat parameter buffer.
        let flat = random(100, 4);
        let x = random(3 * 4, 5);
        let dims = GemmDims {
            m: 3,
            n: 5,
            k: 4,
            transpose_a: false,
            transpose_b: true,
        };
        let mut want = vec![0.0; 15];
        gemm::gemm(dims, &x, &flat[30..50], &mut want, false).unwrap();
        let (gflat, gx) = (cuda.upload(&flat).unwrap(), cuda.upload(&x).unwrap());
        let mut out = cuda.zeros(40).unwrap();
        cuda.gemm(
            dims,
            cuda.all(&gx),
            cuda.view(&gflat, 30..50),
            cuda.view_mut(&mut out, 10..25),
            false,
        )
        .unwrap();
        let got = cuda.download(cuda.all(&out)).unwrap();
        assert!(got[..10].iter().chain(&got[25..]).all(|&v| v == 0.0));
        assert_close("c", &got[10..25], &to_f64(&want), 1e-5, 1e-7);
    }
}
