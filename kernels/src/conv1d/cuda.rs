//! CUDA launchers of the causal conv1d + SiLU (kernels in `conv1d.cu`).

use cudarc::driver::{DeviceRepr, LaunchConfig};

use super::ConvDims;
use crate::cuda::{
    check_view, flat_grid, Cuda, DeviceIds, DeviceTensor, DeviceView, DeviceViewMut, Partials,
};
use crate::{element_count, KernelError};

const MODULE: &str = "conv1d";
const SOURCE: &str = concat!(
    include_str!("../cuda/common.cuh"),
    include_str!("../cuda/bf16.cuh"),
    include_str!("conv1d.cu")
);
/// Kernel sizes the launcher accepts (each compiles its own module, `-DTAPS=k`).
const MAX_TAPS: usize = 8;
/// Positions per thread (`CONV_RUN`) and channels per block (`CONV_THREADS`). Runs of 48
/// fill the last wave of forward blocks at the anchor's shape better than 64: forward
/// 0.071 → 0.065 ms, backward level (32: forward 0.065, backward +10 %; 128: both slower;
/// `cuda_ops_bench`, H200, docs/benchmarks.md).
const RUN: usize = 48;
const THREADS: u32 = 128;

#[repr(C)]
#[derive(Default)]
struct ConvArgs {
    x: u64,
    weight: u64,
    bias: u64,
    resets: u64,
    state: u64,
    out: u64,
    d_out: u64,
    dx: u64,
    partials: u64,
    batch: i64,
    len: i64,
    channels: i32,
    kernel: i32,
    dx_bf16: i32,
}

// SAFETY: plain old data laid out as the kernel's struct.
unsafe impl DeviceRepr for ConvArgs {}

/// Checks the inputs both directions share and fills their part of the arguments.
fn input_args(
    op: &'static str,
    dims: ConvDims,
    x: DeviceTensor,
    weight: DeviceView<'_>,
    bias: DeviceView<'_>,
    resets: Option<&DeviceIds>,
    state_len: Option<usize>,
) -> Result<(ConvArgs, usize), KernelError> {
    let ConvDims {
        batch,
        len,
        channels,
        kernel,
    } = dims;
    if kernel == 0 || kernel > MAX_TAPS || channels > i32::MAX as usize {
        return Err(KernelError::Invalid {
            op,
            message: format!("{dims:?}: the CUDA conv1d takes 1 to {MAX_TAPS} taps"),
        });
    }
    if len.div_ceil(RUN) > 65_535 || batch > 65_535 {
        return Err(KernelError::Invalid {
            op,
            message: format!("{dims:?}: at most 65535 rows of 65535 · {RUN} positions"),
        });
    }
    let elements = element_count(op, &[batch, len, channels])?;
    check_view(op, "x", elements, x.len)?;
    check_view(op, "weight", channels * kernel, weight.len())?;
    if !bias.is_empty() {
        check_view(op, "bias", channels, bias.len())?;
    }
    if let Some(resets) = resets {
        check_view(op, "resets", batch * len, resets.host().len())?;
    }
    if let Some(state_len) = state_len {
        check_view(op, "state", dims.state_len(), state_len)?;
    }
    let args = ConvArgs {
        x: x.address,
        weight: weight.address(),
        bias: if bias.is_empty() { 0 } else { bias.address() },
        resets: resets.map_or(0, |r| r.device_address()),
        batch: batch as i64,
        len: len as i64,
        channels: channels as i32,
        kernel: kernel as i32,
        ..Default::default()
    };
    Ok((args, elements))
}

/// See [`super::forward`].
/// The defines that compile the walking kernels for this kernel size, input type, whether
/// rows have reset flags, and whether out (written by the forward) or d_out (read by the
/// backward) is bf16.
fn defines(dims: ConvDims, x: DeviceTensor, resets: bool, out: bool, d_out: bool) -> [String; 5] {
    [
        format!("-DTAPS={}", dims.kernel),
        format!("-DX_BF16={}", u8::from(x.bf16)),
        format!("-DRESETS={}", u8::from(resets)),
        format!("-DOUT_BF16={}", u8::from(out)),
        format!("-DD_OUT_BF16={}", u8::from(d_out)),
    ]
}

/// A thread per (row, run of positions, channel).
fn runs_grid(dims: ConvDims) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            dims.channels.div_ceil(THREADS as usize) as u32,
            dims.len.div_ceil(RUN) as u32,
            dims.batch as u32,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    cuda: &Cuda,
    dims: ConvDims,
    x: DeviceTensor,
    weight: DeviceView<'_>,
    bias: DeviceView<'_>,
    resets: Option<&DeviceIds>,
    state: Option<DeviceViewMut<'_>>,
    out: DeviceTensor,
) -> Result<(), KernelError> {
    const OP: &str = "conv1d_forward";
    let state_len = state.as_ref().map(|s| s.len());
    let (mut args, elements) = input_args(OP, dims, x, weight, bias, resets, state_len)?;
    check_view(OP, "out", elements, out.len)?;
    if elements == 0 {
        return Ok(());
    }
    args.state = state.as_ref().map_or(0, |s| s.address());
    args.out = out.address;
    let defines = defines(dims, x, resets.is_some(), out.bf16, false);
    let function = cuda.function(MODULE, SOURCE, &defines, "conv1d_forward")?;
    cuda.launch(&function, runs_grid(dims), &args)?;
    if state.is_some() && dims.kernel > 1 {
        let function = cuda.function(MODULE, SOURCE, &defines, "conv1d_carry_state")?;
        cuda.launch(&function, flat_grid(dims.batch * dims.channels), &args)?;
    }
    Ok(())
}

/// See [`super::backward`]: `dx` overwritten, `dweight` and `dbias` accumulated.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    cuda: &Cuda,
    dims: ConvDims,
    x: DeviceTensor,
    weight: DeviceView<'_>,
    bias: DeviceView<'_>,
    resets: Option<&DeviceIds>,
    initial_state: Option<DeviceView<'_>>,
    d_out: DeviceTensor,
    dx: DeviceTensor,
    dweight: DeviceViewMut<'_>,
    dbias: DeviceViewMut<'_>,
) -> Result<(), KernelError> {
    const OP: &str = "conv1d_backward";
    let state_len = initial_state.as_ref().map(|s| s.len());
    let (mut args, elements) = input_args(OP, dims, x, weight, bias, resets, state_len)?;
    check_view(OP, "d_out", elements, d_out.len)?;
    check_view(OP, "dx", elements, dx.len)?;
    check_view(OP, "dweight", weight.len(), dweight.len())?;
    check_view(OP, "dbias", bias.len(), dbias.len())?;
    if elements == 0 {
        return Ok(());
    }
    let ConvDims {
        channels, kernel, ..
    } = dims;
    // One group of partial sums per run of positions, rows in order.
    let groups = dims.batch * dims.len.div_ceil(RUN);
    let stride = channels * (kernel + 1);
    let partials = cuda.scratch::<f32>(groups * stride)?;
    args.state = initial_state.as_ref().map_or(0, |s| s.address());
    args.d_out = d_out.address;
    args.dx = dx.address;
    args.dx_bf16 = dx.bf16.into();
    args.partials = cuda.address(&partials);
    let function = cuda.function(
        MODULE,
        SOURCE,
        &defines(dims, x, resets.is_some(), false, d_out.bf16),
        "conv1d_backward",
    )?;
    cuda.launch(&function, runs_grid(dims), &args)?;
    let weights = Partials {
        groups,
        stride,
        first: 0,
        columns: channels * kernel,
    };
    cuda.sum_columns(MODULE, SOURCE, &partials, weights, dweight.address())?;
    if !dbias.is_empty() {
        let biases = Partials {
            first: channels * kernel,
            columns: channels,
            ..weights
        };
        cuda.sum_columns(MODULE, SOURCE, &partials, biases, dbias.address())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::bf16::{Input, Output};
    use crate::conv1d::{self, ConvDims};
    use crate::cuda::testing::{device, random};
    use crate::cuda::DeviceBuffer;
    use crate::rng::Rng;
    use crate::testing::{assert_close, bits, to_f64};
    use crate::Backend;

    /// Forward (output and carried state) and backward against the CPU op.
    fn check(dims: ConvDims, bias: bool, resets: bool, state: bool, seed: u64) {
        let Some(cuda) = device() else { return };
        let n = dims.batch * dims.len * dims.channels;
        let mut rng = Rng::new(seed);
        let x = random(n, seed + 1);
        let weight = random(dims.channels * dims.kernel, seed + 2);
        let bias = if bias {
            random(dims.channels, seed + 3)
        } else {
            vec![]
        };
        let resets: Option<Vec<u32>> = resets.then(|| {
            (0..dims.batch * dims.len)
                .map(|_| u32::from(rng.below(4) == 0))
                .collect()
        });
        let state0 = state.then(|| random(dims.state_len(), seed + 4));
        let d_out = random(n, seed + 5);
        let (dw0, db0) = (random(weight.len(), seed + 6), random(bias.len(), seed + 7));

        let mut out = vec![0.0; n];
        let mut state = state0.clone();
        conv1d::forward(
            dims,
            &x,
            &weight,
            &bias,
            resets.as_deref(),
            state.as_deref_mut(),
            &mut out,
        )
        .unwrap();
        let (mut dx, mut dw, mut db) = (vec![0.0; n], dw0.clone(), db0.clone());
        conv1d::backward(
            dims,
            &x,
            &weight,
            &bias,
            resets.as_deref(),
            state0.as_deref(),
            &d_out,
            &mut dx,
            &mut dw,
            &mut db,
        )
        .unwrap();

        let up = |v: &[f32]| cuda.upload(v).unwrap();
        let (gx, gw, gb, gd) = (up(&x), up(&weight), up(&bias), up(&d_out));
        let gr = resets.as_ref().map(|r| cuda.upload_ids(r).unwrap());
        let gs0 = state0.as_ref().map(|s| up(s));
        let down = |b: &DeviceBuffer| cuda.download(cuda.all(b)).unwrap();
        // The output (into `out16` as bf16 when given, else f32 and returned) and the
        // carried state, from a fresh copy of state0 each run.
        let forward = |x: Input<'_, crate::cuda::Cuda>, out16: Option<&mut DeviceBuffer<u16>>| {
            let mut state = state0.as_ref().map(|s| up(s));
            let mut out = up(&vec![f32::NAN; n]);
            let into = match out16 {
                Some(bits) => Output::Bf16(bits),
                None => Output::F32(cuda.all_mut(&mut out)),
            };
            cuda.conv1d_forward(
                dims,
                x,
                cuda.all(&gw),
                cuda.all(&gb),
                gr.as_ref(),
                state.as_mut().map(|s| cuda.all_mut(s)),
                into,
            )
            .unwrap();
            (down(&out), state.as_ref().map(&down))
        };
        let (gout, gs) = forward(Input::F32(cuda.all(&gx)), None);
        // The weight and bias gradients accumulate into fresh copies of dw0, db0 each run.
        let backward_of = |x: Input<'_, crate::cuda::Cuda>,
                           d_out: Input<'_, crate::cuda::Cuda>,
                           dx: Output<'_, crate::cuda::Cuda>| {
            let (mut gdw, mut gdb) = (up(&dw0), up(&db0));
            cuda.conv1d_backward(
                dims,
                x,
                cuda.all(&gw),
                cuda.all(&gb),
                gr.as_ref(),
                gs0.as_ref().map(|s| cuda.all(s)),
                d_out,
                dx,
                cuda.all_mut(&mut gdw),
                cuda.all_mut(&mut gdb),
            )
            .unwrap();
            (down(&gdw), down(&gdb))
        };
        let backward = |x: Input<'_, crate::cuda::Cuda>, dx: Output<'_, crate::cuda::Cuda>| {
            backward_of(x, Input::F32(cuda.all(&gd)), dx)
        };
        let mut gdx = up(&vec![f32::NAN; n]);
        let (gdw, gdb) = backward(
            Input::F32(cuda.all(&gx)),
            Output::F32(cuda.all_mut(&mut gdx)),
        );
        assert_close("out", &gout, &to_f64(&out), 1e-5, 1e-7);
        if let (Some(gs), Some(state)) = (&gs, &state) {
            assert_close("state", gs, &to_f64(state), 0.0, 0.0);
        }
        assert_close("dx", &down(&gdx), &to_f64(&dx), 1e-4, 1e-7);
        assert_close("dweight", &gdw, &to_f64(&dw), 1e-4, 1e-7);
        if !bias.is_empty() {
            assert_close("dbias", &gdb, &to_f64(&db), 1e-4, 1e-7);
        }
        // dx written as bf16 is the f32 dx rounded, bit for bit.
        let mut dx16 = cuda.zeros_bf16(n).unwrap();
        backward(Input::F32(cuda.all(&gx)), Output::Bf16(&mut dx16));
        let mut rounded = vec![0u16; n];
        crate::bf16::round(&down(&gdx), &mut rounded).unwrap();
        assert_eq!(cuda.download_bf16(&dx16).unwrap(), rounded, "bf16 dx");

        // x kept in bf16: every output equals the f32 op's on the widened x, bit for bit,
        // and out written as bf16 is out rounded (the state, as ever, f32).
        let mut x16 = cuda.zeros_bf16(n).unwrap();
        cuda.round_bf16(cuda.all(&gx), &mut x16).unwrap();
        let mut wide = cuda.zeros(n).unwrap();
        cuda.widen_bf16(&x16, cuda.all_mut(&mut wide)).unwrap();
        let (got, got_state) = forward(Input::Bf16(&x16), None);
        let (want, want_state) = forward(Input::F32(cuda.all(&wide)), None);
        assert_eq!(bits(&got), bits(&want), "out from bf16 x");
        assert_eq!(
            got_state.as_deref().map(bits),
            want_state.as_deref().map(bits),
            "state from bf16 x"
        );
        let mut out16 = cuda.zeros_bf16(n).unwrap();
        let (_, state16) = forward(Input::Bf16(&x16), Some(&mut out16));
        crate::bf16::round(&want, &mut rounded).unwrap();
        assert_eq!(cuda.download_bf16(&out16).unwrap(), rounded, "bf16 out");
        assert_eq!(
            state16.as_deref().map(bits),
            want_state.as_deref().map(bits),
            "state beside a bf16 out"
        );
        let mut dx_from16 = cuda.zeros(n).unwrap();
        let grads16 = backward(Input::Bf16(&x16), Output::F32(cuda.all_mut(&mut dx_from16)));
        let grads = backward(
            Input::F32(cuda.all(&wide)),
            Output::F32(cuda.all_mut(&mut gdx)),
        );
        assert_eq!(bits(&down(&dx_from16)), bits(&down(&gdx)), "dx from bf16 x");
        assert_eq!(bits(&grads16.0), bits(&grads.0), "dweight from bf16 x");
        assert_eq!(bits(&grads16.1), bits(&grads.1), "dbias from bf16 x");

        // d_out kept in bf16 likewise: the f32 op's results on the widened d_out.
        let mut d_out16 = cuda.zeros_bf16(n).unwrap();
        cuda.round_bf16(cuda.all(&gd), &mut d_out16).unwrap();
        let mut d_out_wide = cuda.zeros(n).unwrap();
        cuda.widen_bf16(&d_out16, cuda.all_mut(&mut d_out_wide))
            .unwrap();
        let got = backward_of(
            Input::F32(cuda.all(&gx)),
            Input::Bf16(&d_out16),
            Output::F32(cuda.all_mut(&mut dx_from16)),
        );
        let want = backward_of(
            Input::F32(cuda.all(&gx)),
            Input::F32(cuda.all(&d_out_wide)),
            Output::F32(cuda.all_mut(&mut gdx)),
        );
        assert_eq!(
            bits(&down(&dx_from16)),
            bits(&down(&gdx)),
            "dx from bf16 d_out"
        );
        assert_eq!(bits(&got.0), bits(&want.0), "dweight from bf16 d_out");
        assert_eq!(bits(&got.1), bits(&want.1), "dbias from bf16 d_out");
    }

    #[test]
    fn cuda_conv1d_matches_the_cpu() {
        let dims = |batch, len, channels, kernel| ConvDims {
            batch,
            len,
            channels,
            kernel,
        };
        check(dims(2, 300, 70, 4), true, false, false, 10);
        check(dims(3, 257, 33, 4), true, true, true, 20);
        check(dims(1, 600, 1536, 4), false, true, false, 30);
        check(dims(2, 1, 40, 4), true, false, true, 40); // a decode step
        check(dims(2, 2, 40, 4), true, true, true, 50); // shorter than the state
        check(dims(1, 50, 8, 1), true, true, true, 60);
        check(dims(2, 130, 20, 3), false, true, true, 70); // runs of 64 and a short one
    }
}
