//! The GEMM on cuBLAS: `cublasSgemm` in f32 or TF32, `cublasGemmEx` on bf16 copies of the
//! operands (f32 sums and output) in bf16; see [`GemmPrecision`].
//!
//! cuBLAS is column-major; a row-major `m×n` matrix is the column-major `n×m` matrix of
//! its transpose. So `C = op(A)·op(B)` (row-major) is computed as the column-major
//! `Cᵀ = op(B)ᵀ·op(A)ᵀ`: the operands swap places and keep their transpose flags, and each
//! leading dimension is the row length of the stored row-major matrix. With one stream and
//! the default (non-atomic) mode, cuBLAS gives the same bits on every run.

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{CudaSlice, DeviceRepr};

use super::GemmDims;
use crate::cuda::{
    check_view, device_error, flat_grid, Cuda, DeviceView, DeviceViewMut, GemmPrecision,
};
use crate::{element_count, KernelError};

const MODULE: &str = "gemm_cast";
const SOURCE: &str = concat!(include_str!("../cuda/common.cuh"), include_str!("cast.cu"));

#[repr(C)]
struct CastArgs {
    x: u64,
    y: u64,
    n: i64,
}

// SAFETY: plain old data laid out as the kernel's struct.
unsafe impl DeviceRepr for CastArgs {}

/// A bf16 copy of `x` (raw bits), queued on the stream.
fn to_bf16(cuda: &Cuda, x: DeviceView<'_>) -> Result<CudaSlice<u16>, KernelError> {
    let copy = cuda.scratch::<u16>(x.len())?;
    let args = CastArgs {
        x: x.address(),
        y: cuda.address(&copy),
        n: x.len() as i64,
    };
    let function = cuda.function(MODULE, SOURCE, &[], "f32_to_bf16")?;
    cuda.launch(&function, flat_grid(x.len()), &args)?;
    Ok(copy)
}

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
    let precision = cuda.gemm_precision()?;
    if precision == GemmPrecision::Bf16 {
        let (a16, b16) = (to_bf16(cuda, a)?, to_bf16(cuda, b)?);
        // SAFETY: the copies hold the checked operands element for element, C was
        // checked, and the handle runs on the stream that queued the casts.
        return unsafe {
            cudarc::cublas::result::gemm_ex(
                *cuda.blas().handle(),
                operation(dims.transpose_b),
                operation(dims.transpose_a),
                n as i32,
                m as i32,
                k as i32,
                (&alpha as *const f32).cast(),
                cuda.address(&b16) as *const std::ffi::c_void,
                cudaDataType::CUDA_R_16BF,
                ldb as i32,
                cuda.address(&a16) as *const std::ffi::c_void,
                cudaDataType::CUDA_R_16BF,
                lda as i32,
                (&beta as *const f32).cast(),
                c.address() as *mut std::ffi::c_void,
                cudaDataType::CUDA_R_32F,
                n as i32,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| device_error("cublasGemmEx (bf16)", e));
    }
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
}

#[cfg(test)]
mod tests {
    use crate::cuda::testing::{device, random};
    use crate::cuda::GemmPrecision;
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

    /// TF32 and bf16 stay within their rounding bounds, and are not f32 in disguise.
    #[test]
    fn cuda_gemm_in_tf32_and_bf16_is_close_but_not_f32() {
        let Some(cuda) = device() else { return };
        let (m, n, k) = (256, 256, 512);
        for transpose_b in [false, true] {
            let dims = GemmDims {
                m,
                n,
                k,
                transpose_a: false,
                transpose_b,
            };
            let (a, b) = (random(m * k, 1), random(n * k, 2));
            let mut want = vec![0.0; m * n];
            gemm::gemm(dims, &a, &b, &mut want, false).unwrap();
            // A product of two rounded inputs is off by at most twice their relative rounding
            // error (bf16 keeps 8 significant bits, rounded: 2^-8; TF32 keeps 11, and may
            // truncate: 2^-10) times |a|·|b|: bound each element by that unit × Σ|a|·|b|.
            let mut magnitude = vec![0.0; m * n];
            let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
            gemm::gemm(dims, &abs(&a), &abs(&b), &mut magnitude, false).unwrap();
            let (ga, gb) = (cuda.upload(&a).unwrap(), cuda.upload(&b).unwrap());
            let mut gc = cuda.zeros(m * n).unwrap();
            let mut run = |precision: GemmPrecision| {
                cuda.set_gemm_precision(precision).unwrap();
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
            for (precision, unit) in [
                (GemmPrecision::Tf32, 2f64.powi(-9)),
                (GemmPrecision::Bf16, 2f64.powi(-7)),
            ] {
                let got = run(precision);
                for ((g, w), size) in got.iter().zip(&want).zip(&magnitude) {
                    let error = (*g as f64 - *w as f64).abs();
                    assert!(
                        error <= unit * *size as f64 + 1e-5,
                        "{precision}: {g} against {w}, bound {}",
                        unit * *size as f64
                    );
                }
                let error = crate::testing::max_scaled_error(&got, &to_f64(&want), 1e-5, 1e-6);
                assert!(
                    error > 1.0,
                    "{precision} was not used: error {error} of the f32 tolerance"
                );
                assert_eq!(
                    bits(&run(precision)),
                    bits(&got),
                    "{precision} is not deterministic"
                );
            }
            let f32 = run(GemmPrecision::F32);
            assert_close("f32", &f32, &to_f64(&want), 1e-5, 1e-6);
        }
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
