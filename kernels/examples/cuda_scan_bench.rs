//! Times the CUDA selective scan, forward and backward, on the anchor shapes of issue 6.
//!
//! `cargo run --release -p seqmamba-kernels --example cuda_scan_bench [-- [--bf16] [SHAPE_FILTER]]`
//! (`--shape B,D,L` in place of the filter times that shape alone, with no anchor).
//!
//! Each shape: batch, d_inner, L with N = 16, the z gate and delta_softplus; everything
//! f32, or with `--bf16` as bf16 training runs it: u, delta, z and d_out read as bf16, the
//! output, ddelta and dz written as bf16 (du f32; B, C f32 throughout). Times are
//! CUDA-event medians of 30 runs after warm-up. The anchors are the official mamba_ssm
//! kernels with bf16 inputs.

use seqmamba_kernels::bf16::{Input, Output};
use seqmamba_kernels::cuda::{Cuda, DeviceBuffer};
use seqmamba_kernels::rng::Rng;
use seqmamba_kernels::scan::cpu::InputBuffers;
use seqmamba_kernels::scan::{ScanDims, ScanGrads, ScanInputs};
use seqmamba_kernels::{Backend, KernelError};

/// (batch, d_inner, len, official forward ms, official backward ms).
const SHAPES: [(usize, usize, usize, f64, f64); 6] = [
    (1, 1024, 2048, 0.056, 0.269),
    (1, 1024, 32_768, 0.735, 3.00),
    (1, 1024, 524_288, 11.52, 45.2),
    (8, 1536, 2048, 0.455, 1.79),
    (64, 256, 1024, 0.306, 1.30),
    (16, 1536, 4096, 1.73, 6.95),
];
const STATE: usize = 16;
const WARMUP: usize = 5;
const RUNS: usize = 30;
/// H200 ceilings: device copy bandwidth measured here, and exp2 issue rate (132 SMs x 16
/// per clock at 1.98 GHz).
const BANDWIDTH: f64 = 4.3e12;
const EXP_RATE: f64 = 132.0 * 16.0 * 1.98e9;

/// The shape of the random inputs that every shape's inputs repeat: timing needs
/// non-trivial data, not fresh draws for billions of elements.
const PATTERN: ScanDims = ScanDims {
    batch: 1,
    len: 1024,
    channels: 1024,
    state: STATE,
    chunk: ScanDims::DEFAULT_CHUNK,
};

/// A shape to time, with the official kernels' forward and backward ms where measured.
struct Timed {
    batch: usize,
    channels: usize,
    len: usize,
    anchors: Option<(f64, f64)>,
}

fn invalid_shape(shape: &str) -> KernelError {
    KernelError::Invalid {
        op: "cuda_scan_bench",
        message: format!("--shape takes BATCH,D_INNER,LEN, not `{shape}`"),
    }
}

/// `pattern` repeated to `len` values.
fn tiled(pattern: &[f32], len: usize) -> Vec<f32> {
    pattern.iter().copied().cycle().take(len).collect()
}

fn main() -> Result<(), KernelError> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let bf16 = args.first().is_some_and(|a| a == "--bf16");
    if bf16 {
        args.remove(0);
    }
    // The anchor shapes whose name contains the filter, or the one `--shape` names.
    let shapes: Vec<Timed> = match args.as_slice() {
        [flag, shape] if flag == "--shape" => {
            let sizes: Vec<usize> = shape
                .split(',')
                .map(|size| size.trim().parse())
                .collect::<Result<_, _>>()
                .map_err(|_| invalid_shape(shape))?;
            let [batch, channels, len] = sizes[..] else {
                return Err(invalid_shape(shape));
            };
            vec![Timed {
                batch,
                channels,
                len,
                anchors: None,
            }]
        }
        _ => SHAPES
            .iter()
            .filter(|(batch, channels, len, ..)| {
                let name = format!("({batch},{channels},{len})");
                args.first()
                    .is_none_or(|filter| name.contains(filter.as_str()))
            })
            .map(|&(batch, channels, len, fwd, bwd)| Timed {
                batch,
                channels,
                len,
                anchors: Some((fwd, bwd)),
            })
            .collect(),
    };
    let cuda = Cuda::new(0)?;
    println!("{}", seqmamba_kernels::cuda::doctor()?);
    let mut rng = Rng::new(2024);
    let pattern = InputBuffers::random(PATTERN, true, &mut rng);
    let d_out_pattern = rng.vec_uniform(pattern.u.len(), -1.0, 1.0);
    let mut table = Vec::new();
    for Timed {
        batch,
        channels,
        len,
        anchors,
    } in shapes
    {
        let name = format!("({batch},{channels},{len})");
        let dims = ScanDims::new(batch, len, channels, STATE);
        let act = batch * len * channels;
        let rows = batch * len * STATE;
        let up = |values: &[f32], len: usize| cuda.upload(&tiled(values, len));
        let u = up(&pattern.u, act)?;
        let delta = up(&pattern.delta, act)?;
        let z = up(pattern.z.as_deref().expect("the pattern is gated"), act)?;
        let d_out = up(&d_out_pattern, act)?;
        // The streams' bf16 roundings (u, delta, z, d_out) and the bf16 outputs (out,
        // ddelta, dz) when timing bf16.
        let narrow = |x: &DeviceBuffer| -> Result<DeviceBuffer<u16>, KernelError> {
            let mut bits = cuda.zeros_bf16(act)?;
            cuda.round_bf16(cuda.all(x), &mut bits)?;
            Ok(bits)
        };
        let streams = if bf16 {
            Some([narrow(&u)?, narrow(&delta)?, narrow(&z)?, narrow(&d_out)?])
        } else {
            None
        };
        let mut outputs16 = [
            cuda.zeros_bf16(act)?,
            cuda.zeros_bf16(act)?,
            cuda.zeros_bf16(act)?,
        ];
        let b = up(&pattern.b, rows)?;
        let c = up(&pattern.c, rows)?;
        let a_log = up(&pattern.a_log, channels * STATE)?;
        let d_skip = up(&pattern.d_skip, channels)?;
        let delta_bias = up(&pattern.delta_bias, channels)?;
        let mut out = cuda.zeros(act)?;
        let mut checkpoints = cuda.zeros(dims.checkpoint_len())?;
        let (mut du, mut ddelta, mut dz) = (cuda.zeros(act)?, cuda.zeros(act)?, cuda.zeros(act)?);
        let (mut db, mut dc) = (cuda.zeros(rows)?, cuda.zeros(rows)?);
        let mut da_log = cuda.zeros(channels * STATE)?;
        let (mut dd_skip, mut ddelta_bias) = (cuda.zeros(channels)?, cuda.zeros(channels)?);
        let wide = [&u, &delta, &z, &d_out];
        let [u_in, delta_in, z_in, d_out_in]: [Input<'_, Cuda>; 4] =
            std::array::from_fn(|i| match &streams {
                Some(bits) => Input::Bf16(&bits[i]),
                None => Input::F32(cuda.all(wide[i])),
            });
        let inputs = ScanInputs {
            u: u_in,
            delta: delta_in,
            a_log: cuda.all(&a_log),
            b: cuda.all(&b),
            c: cuda.all(&c),
            d_skip: cuda.all(&d_skip),
            delta_bias: cuda.all(&delta_bias),
            z: Some(z_in),
        };
        let fwd = cuda.median_ms(WARMUP, RUNS, || {
            let out = match bf16 {
                true => Output::Bf16(&mut outputs16[0]),
                false => Output::F32(cuda.all_mut(&mut out)),
            };
            cuda.scan_forward(
                dims,
                &inputs,
                None,
                None,
                Some(cuda.all_mut(&mut checkpoints)),
                out,
            )
        })?;
        let bwd = cuda.median_ms(WARMUP, RUNS, || {
            let [_, ddelta16, dz16] = &mut outputs16;
            let (ddelta, dz) = match bf16 {
                true => (Output::Bf16(ddelta16), Output::Bf16(dz16)),
                false => (
                    Output::F32(cuda.all_mut(&mut ddelta)),
                    Output::F32(cuda.all_mut(&mut dz)),
                ),
            };
            let grads = ScanGrads {
                du: Output::F32(cuda.all_mut(&mut du)),
                ddelta,
                da_log: cuda.all_mut(&mut da_log),
                db: cuda.all_mut(&mut db),
                dc: cuda.all_mut(&mut dc),
                dd_skip: cuda.all_mut(&mut dd_skip),
                ddelta_bias: cuda.all_mut(&mut ddelta_bias),
                dz: Some(dz),
                out: None,
            };
            cuda.scan_backward(dims, &inputs, None, cuda.all(&checkpoints), d_out_in, grads)
        })?;
        let exps = (act * STATE) as f64 / EXP_RATE * 1e3;
        // Bytes an element of a stream; B and C f32, du f32. Forward: u, delta, z, out;
        // backward: u, delta, z, d_out, ddelta, dz and du.
        let e = if bf16 { 2 } else { 4 };
        let fwd_bytes = (4 * act * e + 2 * rows * 4) as f64;
        let bwd_bytes = (act * (6 * e + 4) + 4 * rows * 4) as f64;
        let fwd_floor = (fwd_bytes / BANDWIDTH * 1e3).max(exps);
        let bwd_floor = (bwd_bytes / BANDWIDTH * 1e3).max(exps);
        println!(
            "{name}: fwd {fwd:.4} ms, bwd {bwd:.4} ms (floors {fwd_floor:.4} / {bwd_floor:.4} ms)"
        );
        // An anchor and our speedup over it, or dashes for a shape without one.
        let against = |anchor: Option<f64>, ours: f64| match anchor {
            Some(anchor) => (anchor.to_string(), format!("{:.2}x", anchor / ours)),
            None => ("-".into(), "-".into()),
        };
        let (anchor_fwd, speedup_fwd) = against(anchors.map(|a| a.0), fwd);
        let (anchor_bwd, speedup_bwd) = against(anchors.map(|a| a.1), bwd);
        table.push(format!(
            "| {name} | {fwd:.4} | {anchor_fwd} | {speedup_fwd} | {:.0}% | {bwd:.4} | {anchor_bwd} | {speedup_bwd} | {:.2} | {:.0}% |",
            100.0 * fwd_floor / fwd,
            bwd / fwd,
            100.0 * bwd_floor / bwd,
        ));
    }
    println!();
    let ours = if bf16 { "bf16 streams" } else { "f32" };
    println!("ours ({ours}) vs official mamba_ssm with bf16 inputs; N=16, z gate, softplus");
    println!("| shape (B,D,L) | fwd ms | official fwd | speedup | fwd % of floor | bwd ms | official bwd | speedup | bwd/fwd | bwd % of floor |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in table {
        println!("{row}");
    }
    Ok(())
}
