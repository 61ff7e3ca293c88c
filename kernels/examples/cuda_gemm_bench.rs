//! Times cuBLAS on the GEMMs of one training step of issue 6's anchor (d_model 768,
//! 24 layers, batch 8 × 2048): f32, TF32, and bf16 operands with f32 sums and output
//! (operands already bf16: what the GEMMs would cost once their producers write bf16).
//! With `--algos`, also every cuBLASLt algorithm its heuristic offers for each bf16 GEMM
//! (up to `OFFERED`), timed against `cublasGemmEx`'s default choice: whether another
//! algorithm would pay.
//!
//! `cargo run --release -p seqmamba-kernels --example cuda_gemm_bench [-- --algos]`
//!
//! Times are CUDA-event medians of 20 runs after warm-up; TFLOP/s counts 2·m·n·k.

use std::ffi::c_void;

use cudarc::cublas::result::{gemm_ex, sgemm};
use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasMath_t, cublasOperation_t, cublasSetMathMode,
    cudaDataType,
};
use cudarc::cublas::CudaBlas;
use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys as lt_sys;
use cudarc::driver::{CudaSlice, DevicePtr};
use seqmamba_kernels::cuda::Cuda;
use seqmamba_kernels::KernelError;

const TOKENS: usize = 8 * 2048;
const D_MODEL: usize = 768;
const D_INNER: usize = 1536;
const DT_RANK: usize = 48;
const X_PROJ: usize = DT_RANK + 2 * 16;
const VOCAB: usize = 256;
const LAYERS: usize = 24;
/// Algorithms asked of cuBLASLt's heuristic per GEMM, and the workspace they may use
/// (what cudarc gives cuBLASLt on Hopper).
const OFFERED: usize = 16;
const LT_WORKSPACE: usize = 32 << 20;

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

fn op(transpose: bool) -> cublasOperation_t {
    if transpose {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    }
}

fn address<T>(cuda: &Cuda, buffer: &CudaSlice<T>) -> u64 {
    buffer.device_ptr(cuda.stream()).0
}

/// Operands of one bf16 GEMM on the device.
struct Bf16Operands {
    a: u64,
    b: u64,
    c: u64,
    workspace: u64,
}

/// What cuBLASLt's algorithms give one bf16 GEMM (f32 sums and output).
struct Offered {
    first_ms: f64,
    best_ms: f64,
    best: usize,
    count: usize,
}

fn lt_error(doing: &str) -> impl Fn(lt::CublasError) -> KernelError + '_ {
    move |e| device_error(doing, format!("{e:?}"))
}

/// Times every algorithm cuBLASLt's heuristic offers for `s` (up to `OFFERED`), laid out
/// as `run` lays out cublasGemmEx: the column-major `Cᵀ = op(B)ᵀ·op(A)ᵀ`.
fn offered(
    cuda: &Cuda,
    handle: lt_sys::cublasLtHandle_t,
    s: &Shape,
    x: &Bf16Operands,
) -> Result<Offered, KernelError> {
    let (rows, cols, depth) = (s.n as u64, s.m as u64, s.k as u64);
    let lda = if s.transpose_a { s.m } else { s.k } as i64;
    let ldb = if s.transpose_b { s.k } else { s.n } as i64;
    let bf16 = lt_sys::cudaDataType::CUDA_R_16BF;
    let f32_type = lt_sys::cudaDataType::CUDA_R_32F;
    // Lt's A is our B (rows × depth, or transposed), its B our A.
    let (a_rows, a_cols) = if s.transpose_b {
        (depth, rows)
    } else {
        (rows, depth)
    };
    let (b_rows, b_cols) = if s.transpose_a {
        (cols, depth)
    } else {
        (depth, cols)
    };
    let a_layout =
        lt::create_matrix_layout(bf16, a_rows, a_cols, ldb).map_err(lt_error("layout"))?;
    let b_layout =
        lt::create_matrix_layout(bf16, b_rows, b_cols, lda).map_err(lt_error("layout"))?;
    let c_layout =
        lt::create_matrix_layout(f32_type, rows, cols, rows as i64).map_err(lt_error("layout"))?;
    let desc = lt::create_matmul_desc(lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, f32_type)
        .map_err(lt_error("matmul descriptor"))?;
    let pref = lt::create_matmul_pref().map_err(lt_error("preference"))?;
    let (trans_a, trans_b) = (op(s.transpose_b), op(s.transpose_a));
    let workspace = LT_WORKSPACE as u64;
    // SAFETY: each attribute is written from a value of the type cuBLASLt documents for it.
    unsafe {
        let set = |attr, value: *const cublasOperation_t| {
            lt::set_matmul_desc_attribute(
                desc,
                attr,
                value.cast(),
                std::mem::size_of::<cublasOperation_t>(),
            )
        };
        set(lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, &trans_a)
            .and_then(|()| set(lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB, &trans_b))
            .and_then(|()| {
                lt::set_matmul_pref_attribute(
                    pref,
                    lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    (&workspace as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            })
            .map_err(lt_error("attributes"))?;
    }
    // SAFETY: the heuristic writes at most OFFERED results into a buffer that long.
    let mut results: Vec<lt_sys::cublasLtMatmulHeuristicResult_t> =
        vec![unsafe { std::mem::zeroed() }; OFFERED];
    let mut count = 0;
    unsafe {
        lt_sys::cublasLtMatmulAlgoGetHeuristic(
            handle,
            desc,
            a_layout,
            b_layout,
            c_layout,
            c_layout,
            pref,
            OFFERED as i32,
            results.as_mut_ptr(),
            &mut count,
        )
    }
    .result()
    .map_err(lt_error("heuristic"))?;
    let (alpha, beta) = (1.0f32, 0.0f32);
    let stream = cuda.stream().cu_stream() as lt_sys::cudaStream_t;
    let mut times = Vec::new();
    for result in results.iter().take(count.max(0) as usize) {
        let time = cuda.median_ms(3, 10, || {
            // SAFETY: the operands hold what every anchor shape needs (see main), the
            // workspace LT_WORKSPACE bytes, and the descriptors live until the end.
            unsafe {
                lt::matmul(
                    handle,
                    desc,
                    (&alpha as *const f32).cast(),
                    (&beta as *const f32).cast(),
                    x.b as *const c_void,
                    a_layout,
                    x.a as *const c_void,
                    b_layout,
                    x.c as *const c_void,
                    c_layout,
                    x.c as *mut c_void,
                    c_layout,
                    &result.algo,
                    x.workspace as *mut c_void,
                    LT_WORKSPACE,
                    stream,
                )
            }
            .map_err(lt_error("cublasLtMatmul"))
        });
        times.push(time.unwrap_or(f64::INFINITY));
    }
    // SAFETY: nothing uses the descriptors after this.
    unsafe {
        let _ = lt::destroy_matmul_pref(pref);
        let _ = lt::destroy_matmul_desc(desc);
        for layout in [a_layout, b_layout, c_layout] {
            let _ = lt::destroy_matrix_layout(layout);
        }
    }
    let (best, best_ms) = times
        .iter()
        .copied()
        .enumerate()
        .min_by(|x, y| x.1.total_cmp(&y.1))
        .unwrap_or((0, f64::INFINITY));
    Ok(Offered {
        first_ms: times.first().copied().unwrap_or(f64::INFINITY),
        best_ms,
        best,
        count: times.len(),
    })
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
    println!("| GEMM | m | n | k | ta | tb | per step | f32 ms | TF32 ms | bf16 ms | TF32 TFLOP/s | bf16 TFLOP/s |");
    println!("|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|");
    let mut totals = [0.0f64; 3];
    let mut bf16_times = Vec::with_capacity(shapes.len());
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
        let times = [run(Mode::F32)?, run(Mode::Tf32)?, run(Mode::Bf16)?];
        bf16_times.push(times[2]);
        for (total, t) in totals.iter_mut().zip(times) {
            *total += t * s.per_step as f64;
        }
        let tflops = |ms: f64| 2.0 * (s.m * s.n * s.k) as f64 / (ms * 1e-3) / 1e12;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.4} | {:.4} | {:.4} | {:.0} | {:.0} |",
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
            tflops(times[1]),
            tflops(times[2]),
        );
    }
    println!(
        "step total: f32 {:.1} ms, TF32 {:.1} ms, bf16 {:.1} ms (the in_proj input gradient's second GEMM accumulates; counted as plain)",
        totals[0], totals[1], totals[2]
    );
    if std::env::args().any(|a| a == "--algos") {
        let handle = lt::create_handle().map_err(lt_error("cuBLASLt"))?;
        let workspace = stream
            .alloc_zeros::<u8>(LT_WORKSPACE)
            .map_err(alloc_error)?;
        let operands = Bf16Operands {
            a: address(&cuda, &a16),
            b: address(&cuda, &b16),
            c: c_address,
            workspace: address(&cuda, &workspace),
        };
        println!();
        println!("| GEMM | m | n | k | ta | tb | GemmEx ms | Lt first ms | Lt best ms | best of | offered | best TFLOP/s |");
        println!("|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|");
        let (mut default_total, mut best_total) = (0.0, 0.0);
        for (s, default_ms) in shapes.iter().zip(&bf16_times) {
            let o = offered(&cuda, handle, s, &operands)?;
            default_total += default_ms * s.per_step as f64;
            best_total += o.best_ms.min(*default_ms) * s.per_step as f64;
            println!(
                "| {} | {} | {} | {} | {} | {} | {:.4} | {:.4} | {:.4} | {} | {} | {:.0} |",
                s.name,
                s.m,
                s.n,
                s.k,
                s.transpose_a,
                s.transpose_b,
                default_ms,
                o.first_ms,
                o.best_ms,
                o.best,
                o.count,
                2.0 * (s.m * s.n * s.k) as f64 / (o.best_ms * 1e-3) / 1e12
            );
        }
        println!("bf16 step total: GemmEx {default_total:.1} ms, the faster of it and Lt's best {best_total:.1} ms");
        // SAFETY: no matmul uses the handle after this.
        unsafe { lt::destroy_handle(handle) }.map_err(lt_error("cuBLASLt"))?;
    }
    Ok(())
}
