//! The GEMM on cuBLAS: `cublasSgemm` on f32 operands (f32 or TF32 math, see
//! [`GemmPrecision`]), cuBLASLt with an algorithm timed per shape on bf16 operands with
//! f32 sums and an f32 or bf16 output (`cublasGemmEx` without cuBLASLt; see [`lt`]), and
//! the kernels that round f32 values to bf16 copies and widen them back.
//!
//! cuBLAS is column-major; a row-major `m×n` matrix is the column-major `n×m` matrix of
//! its transpose. So `C = op(A)·op(B)` (row-major) is computed as the column-major
//! `Cᵀ = op(B)ᵀ·op(A)ᵀ`: the operands swap places and keep their transpose flags, and each
//! leading dimension is the row length of the stored row-major matrix. With one stream and
//! the default (non-atomic) mode, cuBLAS gives the same bits on every run.

mod lt;

use std::ffi::c_void;

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::DeviceRepr;

use super::GemmDims;
use crate::bf16::{Bf16View, Output};
use crate::cuda::{
    check_view, device_error, element_bytes, flat_grid, Cuda, DeviceBuffer, DeviceTensor,
    DeviceView, DeviceViewMut,
};
use crate::{element_count, KernelError};
pub(crate) use lt::LtGemms;
use lt::LtShape;

const MODULE: &str = "gemm_cast";
const SOURCE: &str = concat!(
    include_str!("../cuda/common.cuh"),
    include_str!("../cuda/bf16.cuh"),
    include_str!("cast.cu")
);

#[repr(C)]
struct CastArgs {
    x: u64,
    y: u64,
    n: i64,
    vector: i32,
}

// SAFETY: plain old data laid out as the kernel's struct.
unsafe impl DeviceRepr for CastArgs {}

/// See [`crate::Backend::round_bf16`].
pub(crate) fn round_bf16(
    cuda: &Cuda,
    x: DeviceView<'_>,
    y: &mut DeviceBuffer<u16>,
) -> Result<(), KernelError> {
    check_view("round_bf16", "dst", x.len(), y.len())?;
    cast(cuda, Cast::Round, x.address(), y.address(), x.len())
}

/// See [`crate::Backend::widen_bf16`].
pub(crate) fn widen_bf16(
    cuda: &Cuda,
    x: &DeviceBuffer<u16>,
    y: DeviceViewMut<'_>,
) -> Result<(), KernelError> {
    check_view("widen_bf16", "dst", x.len(), y.len())?;
    cast(cuda, Cast::Widen, y.address(), x.address(), x.len())
}

/// Which way a cast kernel converts.
enum Cast {
    Round,
    Widen,
}

/// Launches a cast between `n` f32 values at `f32s` and their bf16 bits at `bits`, four
/// elements a thread: one 16-byte and one 8-byte access where both sides are aligned.
fn cast(cuda: &Cuda, cast: Cast, f32s: u64, bits: u64, n: usize) -> Result<(), KernelError> {
    if n == 0 {
        return Ok(());
    }
    let (kernel, x, y) = match cast {
        Cast::Round => ("f32_to_bf16", f32s, bits),
        Cast::Widen => ("bf16_to_f32", bits, f32s),
    };
    let vector = f32s.is_multiple_of(16) && bits.is_multiple_of(8) && n.is_multiple_of(4);
    let args = CastArgs {
        x,
        y,
        n: n as i64,
        vector: vector.into(),
    };
    let function = cuda.function(MODULE, SOURCE, &[], kernel)?;
    cuda.launch(&function, flat_grid(n.div_ceil(4)), &args)
}

/// The device address of a bf16 view's first element, checked against its buffer.
fn bf16_address(
    op: &'static str,
    tensor: &'static str,
    view: Bf16View<'_, Cuda>,
) -> Result<u64, KernelError> {
    if view.start + view.len > view.buffer.len() {
        return Err(KernelError::Invalid {
            op,
            message: format!(
                "{tensor}: range {:?} out of a bf16 buffer of {} elements",
                view.range(),
                view.buffer.len()
            ),
        });
    }
    Ok(view.buffer.address() + 2 * view.start as u64)
}

/// Operand addresses and their element type.
enum Operands {
    F32 { a: u64, b: u64 },
    Bf16 { a: u64, b: u64 },
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
    check_operands(OP, dims, a.len(), b.len())?;
    let operands = Operands::F32 {
        a: a.address(),
        b: b.address(),
    };
    run(cuda, OP, dims, operands, Output::F32(c).into(), accumulate)
}

/// See [`crate::bf16::gemm`].
pub(crate) fn gemm_bf16(
    cuda: &Cuda,
    dims: GemmDims,
    a: Bf16View<'_, Cuda>,
    b: Bf16View<'_, Cuda>,
    c: DeviceTensor,
    accumulate: bool,
) -> Result<(), KernelError> {
    const OP: &str = "gemm_bf16";
    check_operands(OP, dims, a.len, b.len)?;
    let operands = Operands::Bf16 {
        a: bf16_address(OP, "a", a)?,
        b: bf16_address(OP, "b", b)?,
    };
    run(cuda, OP, dims, operands, c, accumulate)
}

fn check_operands(op: &'static str, dims: GemmDims, a: usize, b: usize) -> Result<(), KernelError> {
    check_view(op, "a", element_count(op, &[dims.m, dims.k])?, a)?;
    check_view(op, "b", element_count(op, &[dims.k, dims.n])?, b)
}

/// cuBLAS's (and cuBLASLt's) name for an operand taken as stored or transposed.
fn operation(transpose: bool) -> cublasOperation_t {
    if transpose {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    }
}

fn run(
    cuda: &Cuda,
    op: &'static str,
    dims: GemmDims,
    operands: Operands,
    c: DeviceTensor,
    accumulate: bool,
) -> Result<(), KernelError> {
    let GemmDims { m, n, k, .. } = dims;
    check_view(op, "c", element_count(op, &[m, n])?, c.len)?;
    if m.max(n).max(k) > i32::MAX as usize {
        return Err(KernelError::Invalid {
            op,
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
            cuda.fill_zero_at(c.address, c.len * element_bytes(c.bf16) as usize)
        };
    }
    // Row lengths of the stored matrices.
    let lda = if dims.transpose_a { m } else { k };
    let ldb = if dims.transpose_b { k } else { n };
    let alpha = 1.0f32;
    let beta = if accumulate { 1.0f32 } else { 0.0 };
    if let (Operands::Bf16 { a, b }, Some(lt)) = (&operands, cuda.lt()) {
        let shape = LtShape {
            rows: n,
            cols: m,
            depth: k,
            transpose_a: dims.transpose_b,
            transpose_b: dims.transpose_a,
            lda: ldb,
            ldb: lda,
            out_bf16: c.bf16,
        };
        if lt.gemm(cuda, shape, *b, *a, c.address, accumulate)? {
            return Ok(());
        }
    }
    let handle = *cuda.blas().handle();
    let (op_b, op_a) = (operation(dims.transpose_b), operation(dims.transpose_a));
    let (n, m, k) = (n as i32, m as i32, k as i32);
    match operands {
        // SAFETY: the operands were checked to hold the matrices the dimensions describe,
        // C likewise, and the handle runs on the stream every other op of this device uses.
        Operands::Bf16 { a, b } => unsafe {
            cudarc::cublas::result::gemm_ex(
                handle,
                op_b,
                op_a,
                n,
                m,
                k,
                (&alpha as *const f32).cast(),
                b as *const c_void,
                cudaDataType::CUDA_R_16BF,
                ldb as i32,
                a as *const c_void,
                cudaDataType::CUDA_R_16BF,
                lda as i32,
                (&beta as *const f32).cast(),
                c.address as *mut c_void,
                if c.bf16 {
                    cudaDataType::CUDA_R_16BF
                } else {
                    cudaDataType::CUDA_R_32F
                },
                n,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| device_error("cublasGemmEx (bf16)", e)),
        // SAFETY: as above.
        Operands::F32 { a, b } => unsafe {
            cudarc::cublas::result::sgemm(
                handle,
                op_b,
                op_a,
                n,
                m,
                k,
                &alpha,
                b as *const f32,
                ldb as i32,
                a as *const f32,
                lda as i32,
                &beta,
                c.address as *mut f32,
                n,
            )
        }
        .map_err(|e| device_error("cublasSgemm", e)),
    }
}

#[cfg(test)]
mod tests {
    use crate::bf16::{Bf16View, Output};
    use crate::cuda::testing::{device, random, upload_bf16};
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
            for (dims, accumulate) in gemm::every_mode(m, n, k) {
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

    /// TF32 stays within its rounding bound and is not f32 in disguise; asking for bf16
    /// GEMMs runs the f32-operand GEMMs in TF32.
    #[test]
    fn cuda_gemm_in_tf32_is_close_but_not_f32() {
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
            // A product of two rounded inputs is off by at most twice their relative
            // rounding error (TF32 keeps 11 significant bits and may truncate: 2^-10) times
            // |a|·|b|: bound each element by that unit × Σ|a|·|b|.
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
            let unit = 2f64.powi(-9);
            for precision in [GemmPrecision::Tf32, GemmPrecision::Bf16] {
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
                    "TF32 was not used: error {error} of the f32 tolerance"
                );
                assert_eq!(bits(&run(precision)), bits(&got), "not deterministic");
            }
            let f32 = run(GemmPrecision::F32);
            assert_close("f32", &f32, &to_f64(&want), 1e-5, 1e-6);
        }
    }

    /// The rounding kernel gives the CPU's bits, on aligned (vector) and unaligned
    /// (scalar) views, with ties, specials and a ragged end.
    #[test]
    fn cuda_round_bf16_matches_the_cpu_bit_for_bit() {
        let Some(cuda) = device() else { return };
        let mut values = random(1003, 9);
        let specials = [
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f81_8000),
            f32::MAX,
            f32::NEG_INFINITY,
            -0.0,
            f32::from_bits(0x7f80_0001),
            f32::MIN_POSITIVE / 3.0,
        ];
        values[..specials.len()].copy_from_slice(&specials);
        let source = cuda.upload(&values).unwrap();
        for range in [0..1000, 1..1003, 0..1003] {
            let mut copy = cuda.zeros_bf16(range.len()).unwrap();
            cuda.round_bf16(cuda.view(&source, range.clone()), &mut copy)
                .unwrap();
            let mut want = vec![0u16; range.len()];
            crate::bf16::round(&values[range.clone()], &mut want).unwrap();
            assert_eq!(cuda.download_bf16(&copy).unwrap(), want, "{range:?}");
        }
    }

    /// Widening gives the CPU's values bit for bit, into aligned (vector) and unaligned
    /// (scalar) views, with specials and a ragged end.
    #[test]
    fn cuda_widen_bf16_matches_the_cpu_bit_for_bit() {
        let Some(cuda) = device() else { return };
        let mut halves = vec![0u16; 1003];
        crate::bf16::round(&random(1003, 10), &mut halves).unwrap();
        halves[..5].copy_from_slice(&[0x7f80, 0xff80, 0x7fc1, 0x8000, 0x0001]);
        for (len, offset) in [(1000, 0), (1003, 0), (1000, 1)] {
            let copy = upload_bf16(&cuda, &halves[..len]);
            let mut wide = cuda.zeros(len + offset).unwrap();
            cuda.widen_bf16(&copy, cuda.view_mut(&mut wide, offset..offset + len))
                .unwrap();
            let mut want = vec![0.0; len];
            crate::bf16::widen(&halves[..len], &mut want).unwrap();
            let got = cuda
                .download(cuda.view(&wide, offset..offset + len))
                .unwrap();
            assert_eq!(bits(&got), bits(&want), "{len} at {offset}");
        }
    }

    /// The bf16 bits of `values`, rounded as the CPU rounds.
    fn rounded(values: &[f32]) -> Vec<u16> {
        let mut bits = vec![0u16; values.len()];
        crate::bf16::round(values, &mut bits).unwrap();
        bits
    }

    /// bf16 operands: the CPU's GEMM of the same rounded operands up to the order of the
    /// f32 sums (products of bf16 values are exact in f32), in every transpose and mode,
    /// on ranges of the buffers.
    #[test]
    fn cuda_gemm_bf16_matches_the_cpu() {
        let Some(cuda) = device() else { return };
        let (m, n, k) = (96, 80, 200);
        let (a, b, c0) = (
            rounded(&random(m * k + 8, 5)),
            rounded(&random(k * n + 4, 6)),
            random(m * n, 7),
        );
        let (ga, gb) = (upload_bf16(&cuda, &a), upload_bf16(&cuda, &b));
        // Operands both 16-byte aligned (as the model's), 16- and 8-byte, then 2- and
        // 6-byte (cuBLASLt's algorithms need some alignment; where none fits the GEMM goes
        // through cublasGemmEx).
        let offsets = [(0, 0), (8, 4), (1, 3)];
        let modes = offsets
            .iter()
            .flat_map(|&o| gemm::every_mode(m, n, k).map(move |mode| (o, mode)));
        for ((offset_a, offset_b), (dims, accumulate)) in modes {
            let (ra, rb) = (offset_a..offset_a + m * k, offset_b..offset_b + k * n);
            let mut want = c0.clone();
            crate::bf16::gemm(dims, &a[ra.clone()], &b[rb.clone()], &mut want, accumulate).unwrap();
            let mut gc = cuda.upload(&c0).unwrap();
            cuda.gemm_bf16(
                dims,
                Bf16View::new(&ga, ra.clone()),
                Bf16View::new(&gb, rb.clone()),
                Output::F32(cuda.all_mut(&mut gc)),
                accumulate,
            )
            .unwrap();
            let got = cuda.download(cuda.all(&gc)).unwrap();
            let name = format!("{dims:?} accumulate {accumulate} offsets {offset_a}, {offset_b}");
            assert_close(&name, &got, &to_f64(&want), 1e-5, 1e-6);
            // Into bf16: the same values, rounded (half a bf16 unit is 2⁻⁹ of the value).
            // Added to C, cuBLAS rounds the product to bf16 first (found on the device with
            // both operands 16-byte aligned, and through cublasGemmEx too): two roundings,
            // so up to a bf16 unit.
            let c0_bits = rounded(&c0);
            let mut want16 = crate::bf16::widened(&c0_bits);
            crate::bf16::gemm(
                dims,
                &a[ra.clone()],
                &b[rb.clone()],
                &mut want16,
                accumulate,
            )
            .unwrap();
            let mut gc16 = upload_bf16(&cuda, &c0_bits);
            cuda.gemm_bf16(
                dims,
                Bf16View::new(&ga, ra),
                Bf16View::new(&gb, rb),
                Output::Bf16(&mut gc16),
                accumulate,
            )
            .unwrap();
            let got16 = crate::bf16::widened(&cuda.download_bf16(&gc16).unwrap());
            let units = if accumulate { 1.0 } else { 0.5 };
            assert_close(&name, &got16, &to_f64(&want16), units / 128.0, 1e-6);
        }
        let out_of_range = cuda.gemm_bf16(
            GemmDims {
                m: 1,
                n: 1,
                k: 8,
                transpose_a: false,
                transpose_b: false,
            },
            Bf16View::new(&ga, 0..8),
            Bf16View::new(&gb, k * n..k * n + 8),
            Output::F32(cuda.all_mut(&mut cuda.zeros(1).unwrap())),
            false,
        );
        assert!(out_of_range.is_err());
    }

    /// At sizes where cuBLASLt offers several algorithms and the fastest is timed (the
    /// anchor's layer GEMMs at an eighth of its tokens, all three products of a linear
    /// layer), the bf16 GEMM matches the CPU and gives the same bits again, also on a
    /// device opened afterwards (it takes the recorded choice).
    #[test]
    fn cuda_gemm_bf16_picks_one_algorithm_per_shape() {
        let Some(cuda) = device() else { return };
        let (tokens, width, input) = (2048, 1536, 768);
        let x = rounded(&random(tokens * input, 8));
        let w = rounded(&random(width * input, 9));
        let dy = rounded(&random(tokens * width, 10));
        let linear = |m, n, k, transpose_a, transpose_b| GemmDims {
            m,
            n,
            k,
            transpose_a,
            transpose_b,
        };
        let product = |cuda: &crate::cuda::Cuda, dims: GemmDims, a: &[u16], b: &[u16]| {
            let (ga, gb) = (upload_bf16(cuda, a), upload_bf16(cuda, b));
            let mut c = cuda.zeros(dims.m * dims.n).unwrap();
            cuda.gemm_bf16(
                dims,
                Bf16View::new(&ga, 0..a.len()),
                Bf16View::new(&gb, 0..b.len()),
                Output::F32(cuda.all_mut(&mut c)),
                false,
            )
            .unwrap();
            bits(&cuda.download(cuda.all(&c)).unwrap())
        };
        let products = [
            ("forward", linear(tokens, width, input, false, true), &x, &w),
            (
                "input gradient",
                linear(tokens, input, width, false, false),
                &dy,
                &w,
            ),
            (
                "weight gradient",
                linear(width, input, tokens, true, false),
                &dy,
                &x,
            ),
        ];
        let mut firsts = Vec::new();
        for (name, dims, a, b) in products {
            let mut want = vec![0.0; dims.m * dims.n];
            crate::bf16::gemm(dims, a, b, &mut want, false).unwrap();
            let first = product(&cuda, dims, a, b);
            let values: Vec<f32> = first.iter().map(|&v| f32::from_bits(v)).collect();
            // Sums of up to 2048 products of size ~0.3 in another order: ~1e-6 apart where
            // they cancel; a wrong product is off by ~10.
            assert_close(name, &values, &to_f64(&want), 1e-5, 1e-4);
            assert_eq!(
                first,
                product(&cuda, dims, a, b),
                "{name}: a rerun gave other bits"
            );
            firsts.push(first);
        }
        let Some(reopened) = device() else { return };
        for ((name, dims, a, b), first) in products.into_iter().zip(firsts) {
            assert_eq!(
                first,
                product(&reopened, dims, a, b),
                "{name}: another device gave other bits"
            );
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
