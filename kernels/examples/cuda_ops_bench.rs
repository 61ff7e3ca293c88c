//! Times the CUDA ops of one mixer layer other than the GEMMs and the scan, at issue 6's
//! anchor (batch 8 × 2048 tokens, d_model 768, d_inner 1536), against the time their bytes
//! take at the copy bandwidth.
//!
//! `cargo run --release -p seqmamba-kernels --example cuda_ops_bench`
//!
//! Times are CUDA-event medians of 30 runs after warm-up.

use seqmamba_kernels::bf16::{Input, Output};
use seqmamba_kernels::conv1d::ConvDims;
use seqmamba_kernels::cuda::Cuda;
use seqmamba_kernels::rmsnorm::NormDims;
use seqmamba_kernels::rng::Rng;
use seqmamba_kernels::{Backend, KernelError};

const BATCH: usize = 8;
const LEN: usize = 2048;
const TOKENS: usize = BATCH * LEN;
const D_MODEL: usize = 768;
const D_INNER: usize = 1536;
const TAPS: usize = 4;
/// H200 copy bandwidth measured on this workplace's machines.
const BANDWIDTH: f64 = 4.3e12;

fn main() -> Result<(), KernelError> {
    let cuda = Cuda::new(0)?;
    let mut rng = Rng::new(7);
    let mut random = |len: usize| cuda.upload(&rng.vec_uniform(len, -1.0, 1.0));
    let inner = TOKENS * D_INNER;
    let model = TOKENS * D_MODEL;
    let (x, d_out) = (random(inner)?, random(inner)?);
    let (weight, bias) = (random(D_INNER * TAPS)?, random(D_INNER)?);
    let (residual, branch, norm_weight, d_normed) = (
        random(model)?,
        random(model)?,
        random(D_MODEL)?,
        random(model)?,
    );
    let (mut u, mut dx) = (cuda.zeros(inner)?, cuda.zeros(inner)?);
    let (mut dweight, mut dbias) = (cuda.zeros(D_INNER * TAPS)?, cuda.zeros(D_INNER)?);
    let (mut sum, mut normed, mut rstd) =
        (cuda.zeros(model)?, cuda.zeros(model)?, cuda.zeros(TOKENS)?);
    let (mut d_residual, mut d_norm_weight) = (cuda.zeros(model)?, cuda.zeros(D_MODEL)?);
    let mut u_bits = cuda.zeros_bf16(inner)?;
    let conv = ConvDims {
        batch: BATCH,
        len: LEN,
        channels: D_INNER,
        kernel: TAPS,
    };
    let norm = NormDims {
        rows: TOKENS,
        cols: D_MODEL,
        eps: 1e-5,
    };
    let (f32_bytes, bf16_bytes) = (4.0, 2.0);
    let mut rows = Vec::new();
    let mut time = |name: &str, bytes: f64, op: &mut dyn FnMut() -> Result<(), KernelError>| {
        let ms = cuda.median_ms(5, 30, op)?;
        let floor = bytes / BANDWIDTH * 1e3;
        rows.push(format!(
            "| {name} | {ms:.4} | {floor:.4} | {:.0}% |",
            100.0 * floor / ms
        ));
        Ok::<(), KernelError>(())
    };
    // In f32, then as bf16 training runs them: x, u, du and dx in bf16.
    let mut x_bits = cuda.zeros_bf16(inner)?;
    cuda.round_bf16(cuda.all(&x), &mut x_bits)?;
    let mut dx_bits = cuda.zeros_bf16(inner)?;
    let mut d_out_bits = cuda.zeros_bf16(inner)?;
    cuda.round_bf16(cuda.all(&d_out), &mut d_out_bits)?;
    let conv_runs = [
        (false, "", 2.0 * f32_bytes, 3.0 * f32_bytes),
        (
            true,
            ", bf16 training (x bf16 → u bf16; du bf16 → dx bf16)",
            2.0 * bf16_bytes,
            3.0 * bf16_bytes,
        ),
    ];
    for (bf16, label, forward_bytes, backward_bytes) in conv_runs {
        let x_input = || {
            if bf16 {
                Input::Bf16(&x_bits)
            } else {
                Input::F32(cuda.all(&x))
            }
        };
        time(
            &format!("conv1d forward{label}"),
            inner as f64 * forward_bytes,
            &mut || {
                cuda.conv1d_forward(
                    conv,
                    x_input(),
                    cuda.all(&weight),
                    cuda.all(&bias),
                    None,
                    None,
                    if bf16 {
                        Output::Bf16(&mut u_bits)
                    } else {
                        Output::F32(cuda.all_mut(&mut u))
                    },
                )
            },
        )?;
        time(
            &format!("conv1d backward{label}"),
            inner as f64 * backward_bytes,
            &mut || {
                let dx_output = if bf16 {
                    Output::Bf16(&mut dx_bits)
                } else {
                    Output::F32(cuda.all_mut(&mut dx))
                };
                cuda.conv1d_backward(
                    conv,
                    x_input(),
                    cuda.all(&weight),
                    cuda.all(&bias),
                    None,
                    None,
                    if bf16 {
                        Input::Bf16(&d_out_bits)
                    } else {
                        Input::F32(cuda.all(&d_out))
                    },
                    dx_output,
                    cuda.all_mut(&mut dweight),
                    cuda.all_mut(&mut dbias),
                )
            },
        )?;
    }
    time(
        "residual add + RMSNorm forward",
        4.0 * model as f64 * f32_bytes,
        &mut || {
            cuda.add_rmsnorm_forward(
                norm,
                cuda.all(&residual),
                cuda.all(&branch),
                cuda.all(&norm_weight),
                cuda.all_mut(&mut sum),
                Output::F32(cuda.all_mut(&mut normed)),
                cuda.all_mut(&mut rstd),
            )
        },
    )?;
    // Then as bf16 training runs it: d_residual's bf16 copy written beside it.
    let mut d_residual_bits = cuda.zeros_bf16(model)?;
    for bf16 in [false, true] {
        let (label, copy_bytes) = match bf16 {
            false => ("", 0.0),
            true => (", bf16 training (+ d_residual's bf16 copy)", bf16_bytes),
        };
        time(
            &format!("RMSNorm backward (x, d_out, d_residual → d_residual){label}"),
            model as f64 * (4.0 * f32_bytes + copy_bytes),
            &mut || {
                cuda.rmsnorm_backward(
                    norm,
                    cuda.all(&residual),
                    cuda.all(&norm_weight),
                    cuda.all(&rstd),
                    cuda.all(&d_normed),
                    cuda.all_mut(&mut d_residual),
                    bf16.then_some(&mut d_residual_bits),
                    cuda.all_mut(&mut d_norm_weight),
                )
            },
        )?;
    }
    time(
        "round to bf16 (tokens × d_inner)",
        inner as f64 * (f32_bytes + bf16_bytes),
        &mut || cuda.round_bf16(cuda.all(&x), &mut u_bits),
    )?;
    println!("anchor layer: batch {BATCH} × {LEN}, d_model {D_MODEL}, d_inner {D_INNER}");
    println!(
        "| op | ms | bytes at {:.1} TB/s | of the floor |",
        BANDWIDTH / 1e12
    );
    println!("|---|---:|---:|---:|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}
