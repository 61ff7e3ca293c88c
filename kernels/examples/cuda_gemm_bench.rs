//! Times cuBLAS on the GEMMs of one training step of issue 6's anchor (d_model 768,
//! 24 layers, batch 8 × 2048): f32, TF32, and bf16 operands with f32 sums and output
//! (operands already bf16: what the GEMMs would cost once their producers write bf16),
//! the bf16 ones both by `cublasGemmEx`'s default algorithm and as seqmamba runs them
//! (`Backend::gemm_bf16`: cuBLASLt with the algorithm timed per shape; the first call of
//! each shape, which times the offers, is in the warm-up).
//!
//! `cargo run --release -p seqmamba-kernels --example cuda_gemm_bench`
//!
//! Times are CUDA-event medians of 20 runs after warm-up; TFLOP/s counts 2·m·n·k.

use std::ffi::c_void;

use cudarc::cublas::result::{gemm_ex, sgemm};
use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasMath_t, cublasOperation_t, cublasSetMathMode,
    cudaDataType,
};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaSlice, DevicePtr};
use seqmamba_kernels::bf16::{Bf16View, Output};
use seqmamba_kernels::cuda::Cuda;
use seqmamba_kernels::gemm::GemmDims;
use seqmamba_kernels::{Backend, KernelError};

const TOKENS: usize = 8 * 2048;
const D_MODEL: usize = 768;
const D_INNER: usize = 1536;
const DT_RANK: usize = 48;
const X_PROJ: usize = DT_RANK + 2 * 16;
const VOCAB: usize = 256;
const LAYERS: usize = 24;

/// One row-major GEMM `C (m×n) = op(A) · op(B)` of the step and how often it runs.
struct Shape {
    name: &'static str,
    m: usize,
    n: usize,
    k: usize,
    transpose_a: bool,
    transpose_b: bool,
    per_step: usize,
}

const fn linear(name: &'static str, out: usize, input: usize, per_step: usize) -> [Shape; 3] {
    [
        Shape {
            name,
            m: TOKENS,
            n: out,
            k: input,
            transpose_a: false,
            transpose_b: true,
            per_step,
        },
        Shape {
            name,
            m: TOKENS,
            n: input,
            k: out,
            transpose_a: false,
            transpose_b: false,
            per_step,
        },
        Shape {
            name,
            m: out,
            n: input,
            k: TOKENS,
            transpose_a: true,
            transpose_b: false,
            per_step,
        },
    ]
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    F32,
    Tf32,
    Bf16,
}

fn device_error(doing: &str, e: impl std::fmt::Display) -> KernelError {
    KernelError::Device(format!("{doing}: {e}"))
}

fn address<T>(cuda: &Cuda, buffer: &CudaSlice<T>) -> u64 {
    buffer.device_ptr(cuda.stream()).0
}

fn main() -> Result<(), KernelError> {
    let cuda = Cuda::new(0)?;
    let blas = CudaBlas::new(cuda.stream().clone()).map_err(|e| device_error("cuBLAS", e))?;
    let shapes: Vec<Shape> = [
        linear("in_proj x", D_INNER, D_MODEL, LAYERS),
        linear("in_proj z", D_INNER, D_MODEL, LAYERS),
        linear("x_proj", X_PROJ, D_INNER, LAYERS),
        linear("dt_proj", D_INNER, DT_RANK, LAYERS),
        linear("out_proj", D_MODEL, D_INNER, LAYERS),
        linear("lm_head", VOCAB, D_MODEL, 1),
    ]
    .into_iter()
    .flatten()
    .collect();
    let largest = shapes
        .iter()
        .flat_map(|s| [s.m * s.k, s.k * s.n, s.m * s.n])
        .max()
        .unwrap_or(0);
    let stream = cuda.stream();
    let alloc_error = |e| device_error("allocating", e);
    let a32 = stream.alloc_zeros::<f32>(largest).map_err(alloc_error)?;
    let b32 = stream.alloc_zeros::<f32>(largest).map_err(alloc_error)?;
    let c32 = stream.alloc_zeros::<f32>(largest).map_err(alloc_error)?;
    let a16 = stream.alloc_zeros::<u16>(largest).map_err(alloc_error)?;
    let b16 = stream.alloc_zeros::<u16>(largest).map_err(alloc_error)?;
    let c_address = address(&cuda, &c32);
    let (a_ours, b_ours) = (cuda.zeros_bf16(largest)?, cuda.zeros_bf16(largest)?);
    let mut c_ours = cuda.zeros(largest)?;
    let op = |t: bool| {
        if t {
            cublasOperation_t::CUBLAS_OP_T
        } else {
            cublasOperation_t::CUBLAS_OP_N
        }
    };
    println!("| GEMM | m | n | k | ta | tb | per step | f32 ms | TF32 ms | bf16 GemmEx ms | bf16 ours ms | TF32 TFLOP/s | bf16 ours TFLOP/s |");
    println!("|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut totals = [0.0f64; 4];
    for s in &shapes {
        let lda = if s.transpose_a { s.m } else { s.k };
        let ldb = if s.transpose_b { s.k } else { s.n };
        let (alpha, beta) = (1.0f32, 0.0f32);
        let run = |mode: Mode| -> Result<f64, KernelError> {
            let math = match mode {
                Mode::Tf32 => cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
                _ => cublasMath_t::CUBLAS_DEFAULT_MATH,
            };
            // SAFETY: sets a flag of a live handle.
            unsafe { cublasSetMathMode(*blas.handle(), math) }
                .result()
                .map_err(|e| device_error("math mode", e))?;
            cuda.median_ms(3, 20, || {
                // SAFETY: every buffer holds `largest` elements, at least what each
                // operand of every shape needs; the handle runs on the timed stream.
                unsafe {
                    match mode {
                        Mode::Bf16 => gemm_ex(
                            *blas.handle(),
                            op(s.transpose_b),
                            op(s.transpose_a),
                            s.n as i32,
                            s.m as i32,
                            s.k as i32,
                            (&alpha as *const f32).cast(),
                            address(&cuda, &b16) as *const c_void,
                            cudaDataType::CUDA_R_16BF,
                            ldb as i32,
                            address(&cuda, &a16) as *const c_void,
                            cudaDataType::CUDA_R_16BF,
                            lda as i32,
                            (&beta as *const f32).cast(),
                            c_address as *mut c_void,
                            cudaDataType::CUDA_R_32F,
                            s.n as i32,
                            cublasComputeType_t::CUBLAS_COMPUTE_32F,
                            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                        ),
                        _ => sgemm(
                            *blas.handle(),
                            op(s.transpose_b),
                            op(s.transpose_a),
                            s.n as i32,
                            s.m as i32,
                            s.k as i32,
                            &alpha,
                            address(&cuda, &b32) as *const f32,
                            ldb as i32,
                            address(&cuda, &a32) as *const f32,
                            lda as i32,
                            &beta,
                            c_address as *mut f32,
                            s.n as i32,
                        ),
                    }
                }
                .map_err(|e| device_error("GEMM", e))
            })
        };
        let dims = GemmDims {
            m: s.m,
            n: s.n,
            k: s.k,
            transpose_a: s.transpose_a,
            transpose_b: s.transpose_b,
        };
        let ours = cuda.median_ms(3, 20, || {
            cuda.gemm_bf16(
                dims,
                Bf16View::new(&a_ours, 0..s.m * s.k),
                Bf16View::new(&b_ours, 0..s.k * s.n),
                Output::F32(cuda.view_mut(&mut c_ours, 0..s.m * s.n)),
                false,
            )
        })?;
        let times = [run(Mode::F32)?, run(Mode::Tf32)?, run(Mode::Bf16)?, ours];
        for (total, t) in totals.iter_mut().zip(times) {
            *total += t * s.per_step as f64;
        }
        let tflops = |ms: f64| 2.0 * (s.m * s.n * s.k) as f64 / (ms * 1e-3) / 1e12;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.0} | {:.0} |",
            s.name,
            s.m,
            s.n,
            s.k,
            s.transpose_a,
            s.transpose_b,
            s.per_step,
            times[0],
            times[1],
            times[2],
            times[3],
            tflops(times[1]),
            tflops(times[3]),
        );
    }
    println!(
        "step total: f32 {:.1} ms, TF32 {:.1} ms, bf16 GemmEx {:.1} ms, bf16 ours {:.1} ms (the in_proj input gradient's second GEMM accumulates; counted as plain)",
        totals[0], totals[1], totals[2], totals[3]
    );
    Ok(())
}
