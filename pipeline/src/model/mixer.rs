//! One Mamba mixer (`mamba_simple.Mamba`), forward and backward written out op by op.
//!
//! ```text
//! x, z   = in_proj(input)                      (rows [x | z] of in_proj.weight)
//! u      = silu(conv1d(x))                     (causal, depthwise, with bias)
//! dt, B, C = x_proj(u)                         (rows [dt | B | C] of x_proj.weight)
//! delta  = dt_proj.weight · dt                 (bias applied inside the scan)
//! y      = scan(u, delta, A_log, B, C, D, dt_proj.bias, z)
//! out    = out_proj(y)
//! ```
//! in_proj is one GEMM per output (x, z: each as wide as the GEMM can use). x_proj's three
//! outputs are narrow (dt_rank, N, N), so it is one GEMM into a stacked `(tokens, dt_rank +
//! 2N)` tensor whose column blocks are then copied out (and its gradient stacked again
//! before one backward GEMM each): the wide input `u` and its gradient are read once, not
//! three times. Every activation the next op reads is a contiguous `(tokens, channels)`
//! tensor.

use seqmamba_kernels::conv1d::ConvDims;
use seqmamba_kernels::elementwise::ColumnBlock;
use seqmamba_kernels::gemm::GemmDims;
use seqmamba_kernels::scan::{ScanDims, ScanGrads, ScanInputs};
use seqmamba_kernels::{Backend, KernelError};

use super::config::MambaConfig;
use super::params::MixerParams;

/// `y (t×out) = x (t×in) · Wᵀ` with `W: (out, in)`.
pub(crate) fn linear(t: usize, out: usize, input: usize) -> GemmDims {
    GemmDims {
        m: t,
        n: out,
        k: input,
        transpose_a: false,
        transpose_b: true,
    }
}

/// `dx (t×in) = dy (t×out) · W`.
pub(crate) fn linear_input_grad(t: usize, out: usize, input: usize) -> GemmDims {
    GemmDims {
        m: t,
        n: input,
        k: out,
        transpose_a: false,
        transpose_b: false,
    }
}

/// `dW (out×in) += dyᵀ · x`.
pub(crate) fn linear_weight_grad(t: usize, out: usize, input: usize) -> GemmDims {
    GemmDims {
        m: out,
        n: input,
        k: t,
        transpose_a: true,
        transpose_b: false,
    }
}

/// Batch shape of one forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub batch: usize,
    pub len: usize,
}

impl Shape {
    /// Tokens in the batch.
    pub fn tokens(&self) -> usize {
        self.batch * self.len
    }
}

/// What the mixer's forward keeps for its backward.
pub struct MixerActivations<B: Backend> {
    x: B::Buffer,
    z: B::Buffer,
    u: B::Buffer,
    /// x_proj's output, `[dt_low | B | C]` per token.
    xproj: B::Buffer,
    dt_low: B::Buffer,
    b: B::Buffer,
    c: B::Buffer,
    delta: B::Buffer,
    checkpoints: B::Buffer,
    y: B::Buffer,
}

/// The recurrent state of one mixer: the last `d_conv − 1` conv inputs and the SSM state.
pub struct MixerState<B: Backend> {
    pub conv: B::Buffer,
    pub ssm: B::Buffer,
}

/// Activation gradients of the mixer's backward, reused by every layer.
pub struct MixerScratch<B: Backend> {
    dy: B::Buffer,
    du: B::Buffer,
    ddelta: B::Buffer,
    db: B::Buffer,
    dc: B::Buffer,
    dz: B::Buffer,
    ddt_low: B::Buffer,
    /// `[d dt_low | dB | dC]` per token: x_proj's output gradient.
    dxproj: B::Buffer,
    dx: B::Buffer,
}

fn scan_dims(c: &MambaConfig, shape: Shape) -> ScanDims {
    ScanDims::new(shape.batch, shape.len, c.d_inner(), c.d_state)
}

impl<B: Backend> MixerActivations<B> {
    /// Buffers for `shape`; the scan checkpoints only when `train`.
    pub fn new(be: &B, c: &MambaConfig, shape: Shape, train: bool) -> Result<Self, KernelError> {
        let t = shape.tokens();
        let di = c.d_inner();
        Ok(Self {
            x: be.zeros(t * di)?,
            z: be.zeros(t * di)?,
            u: be.zeros(t * di)?,
            xproj: be.zeros(t * c.x_proj_width())?,
            dt_low: be.zeros(t * c.dt_rank)?,
            b: be.zeros(t * c.d_state)?,
            c: be.zeros(t * c.d_state)?,
            delta: be.zeros(t * di)?,
            checkpoints: be.zeros(if train {
                scan_dims(c, shape).checkpoint_len()
            } else {
                0
            })?,
            y: be.zeros(t * di)?,
        })
    }
}

impl<B: Backend> MixerState<B> {
    /// A zero state for `batch` rows.
    pub fn new(be: &B, c: &MambaConfig, batch: usize) -> Result<Self, KernelError> {
        Ok(Self {
            conv: be.zeros(batch * (c.d_conv - 1) * c.d_inner())?,
            ssm: be.zeros(batch * c.d_inner() * c.d_state)?,
        })
    }
}

impl<B: Backend> MixerScratch<B> {
    /// Buffers for `shape`.
    pub fn new(be: &B, c: &MambaConfig, shape: Shape) -> Result<Self, KernelError> {
        let t = shape.tokens();
        let di = c.d_inner();
        Ok(Self {
            dy: be.zeros(t * di)?,
            du: be.zeros(t * di)?,
            ddelta: be.zeros(t * di)?,
            db: be.zeros(t * c.d_state)?,
            dc: be.zeros(t * c.d_state)?,
            dz: be.zeros(t * di)?,
            ddt_low: be.zeros(t * c.dt_rank)?,
            dxproj: be.zeros(t * c.x_proj_width())?,
            dx: be.zeros(t * di)?,
        })
    }
}

/// Sub-ranges of the stacked projection weights.
struct Split {
    in_x: std::ops::Range<usize>,
    in_z: std::ops::Range<usize>,
    /// All of x_proj.weight: rows `[dt | B | C]`.
    xp: std::ops::Range<usize>,
}

impl Split {
    fn new(c: &MambaConfig, p: &MixerParams) -> Self {
        let (d, di) = (c.d_model, c.d_inner());
        let i0 = p.in_proj.start;
        let x0 = p.x_proj.start;
        Self {
            in_x: i0..i0 + di * d,
            in_z: i0 + di * d..i0 + 2 * di * d,
            xp: x0..x0 + c.x_proj_width() * di,
        }
    }
}

/// The copies between the stacked `(t, xp)` x_proj output and one part `(t, width)` starting
/// at column `first`: out of the stack (forward), and back into it (backward).
fn x_proj_part(t: usize, xp: usize, first: usize, width: usize) -> (ColumnBlock, ColumnBlock) {
    let out = ColumnBlock {
        rows: t,
        width,
        src_cols: xp,
        src_first: first,
        dst_cols: width,
        dst_first: 0,
    };
    let back = ColumnBlock {
        src_cols: width,
        src_first: 0,
        dst_cols: xp,
        dst_first: first,
        ..out
    };
    (out, back)
}

/// Forward of one mixer: `out = mixer(input)`. With `state`, the conv and SSM start from it
/// and it holds the final state on return (chunked processing and decoding). With `train`,
/// the scan saves its checkpoints for [`backward`].
#[allow(clippy::too_many_arguments)]
pub fn forward<B: Backend>(
    be: &B,
    c: &MambaConfig,
    shape: Shape,
    params: &B::Buffer,
    p: &MixerParams,
    input: B::View<'_>,
    acts: &mut MixerActivations<B>,
    out: B::ViewMut<'_>,
    state: Option<&mut MixerState<B>>,
    resets: Option<&B::Ids>,
    train: bool,
) -> Result<(), KernelError> {
    let t = shape.tokens();
    let (d, di, n, r) = (c.d_model, c.d_inner(), c.d_state, c.dt_rank);
    let w = |range: std::ops::Range<usize>| be.view(params, range);
    let s = Split::new(c, p);
    be.gemm(
        linear(t, di, d),
        input,
        w(s.in_x),
        be.all_mut(&mut acts.x),
        false,
    )?;
    be.gemm(
        linear(t, di, d),
        input,
        w(s.in_z),
        be.all_mut(&mut acts.z),
        false,
    )?;
    let (conv_state, ssm_state) = match state {
        Some(MixerState { conv, ssm }) => (Some(be.all_mut(conv)), Some(be.all_mut(ssm))),
        None => (None, None),
    };
    let conv_dims = ConvDims {
        batch: shape.batch,
        len: shape.len,
        channels: di,
        kernel: c.d_conv,
    };
    be.conv1d_forward(
        conv_dims,
        be.all(&acts.x),
        w(p.conv_weight.clone()),
        w(p.conv_bias.clone()),
        resets,
        conv_state,
        be.all_mut(&mut acts.u),
    )?;
    let u = be.all(&acts.u);
    let xp = c.x_proj_width();
    be.gemm(
        linear(t, xp, di),
        u,
        w(s.xp),
        be.all_mut(&mut acts.xproj),
        false,
    )?;
    for (first, width, part) in [
        (0, r, &mut acts.dt_low),
        (r, n, &mut acts.b),
        (r + n, n, &mut acts.c),
    ] {
        be.copy_columns(
            x_proj_part(t, xp, first, width).0,
            be.all(&acts.xproj),
            be.all_mut(part),
        )?;
    }
    be.gemm(
        linear(t, di, r),
        be.all(&acts.dt_low),
        w(p.dt_proj_weight.clone()),
        be.all_mut(&mut acts.delta),
        false,
    )?;
    let inputs = ScanInputs {
        u,
        delta: be.all(&acts.delta),
        a_log: w(p.a_log.clone()),
        b: be.all(&acts.b),
        c: be.all(&acts.c),
        d_skip: w(p.d_skip.clone()),
        delta_bias: w(p.dt_proj_bias.clone()),
        z: Some(be.all(&acts.z)),
    };
    let checkpoints = train.then(|| be.all_mut(&mut acts.checkpoints));
    be.scan_forward(
        scan_dims(c, shape),
        &inputs,
        resets,
        ssm_state,
        checkpoints,
        be.all_mut(&mut acts.y),
    )?;
    be.gemm(
        linear(t, d, di),
        be.all(&acts.y),
        w(p.out_proj.clone()),
        out,
        false,
    )
}

/// Backward of one mixer: writes `d_input` (overwritten) and accumulates the mixer's
/// parameter gradients into `grads`.
#[allow(clippy::too_many_arguments)]
pub fn backward<B: Backend>(
    be: &B,
    c: &MambaConfig,
    shape: Shape,
    params: &B::Buffer,
    p: &MixerParams,
    input: B::View<'_>,
    acts: &MixerActivations<B>,
    d_out: B::View<'_>,
    resets: Option<&B::Ids>,
    grads: &mut B::Buffer,
    scratch: &mut MixerScratch<B>,
    d_input: B::ViewMut<'_>,
) -> Result<(), KernelError> {
    let t = shape.tokens();
    let (d, di, n, r) = (c.d_model, c.d_inner(), c.d_state, c.dt_rank);
    let w = |range: std::ops::Range<usize>| be.view(params, range);
    let s = Split::new(c, p);

    be.gemm(
        linear_input_grad(t, d, di),
        d_out,
        w(p.out_proj.clone()),
        be.all_mut(&mut scratch.dy),
        false,
    )?;
    be.gemm(
        linear_weight_grad(t, d, di),
        d_out,
        be.all(&acts.y),
        be.view_mut(grads, p.out_proj.clone()),
        true,
    )?;

    let inputs = ScanInputs {
        u: be.all(&acts.u),
        delta: be.all(&acts.delta),
        a_log: w(p.a_log.clone()),
        b: be.all(&acts.b),
        c: be.all(&acts.c),
        d_skip: w(p.d_skip.clone()),
        delta_bias: w(p.dt_proj_bias.clone()),
        z: Some(be.all(&acts.z)),
    };
    let [da_log, dd_skip, ddelta_bias] = be.split_mut(
        grads,
        [p.a_log.clone(), p.d_skip.clone(), p.dt_proj_bias.clone()],
    );
    be.scan_backward(
        scan_dims(c, shape),
        &inputs,
        resets,
        be.all(&acts.checkpoints),
        be.all(&scratch.dy),
        ScanGrads {
            du: be.all_mut(&mut scratch.du),
            ddelta: be.all_mut(&mut scratch.ddelta),
            da_log,
            db: be.all_mut(&mut scratch.db),
            dc: be.all_mut(&mut scratch.dc),
            dd_skip,
            ddelta_bias,
            dz: Some(be.all_mut(&mut scratch.dz)),
        },
    )?;

    // delta = dt_low · dt_projᵀ
    be.gemm(
        linear_input_grad(t, di, r),
        be.all(&scratch.ddelta),
        w(p.dt_proj_weight.clone()),
        be.all_mut(&mut scratch.ddt_low),
        false,
    )?;
    be.gemm(
        linear_weight_grad(t, di, r),
        be.all(&scratch.ddelta),
        be.all(&acts.dt_low),
        be.view_mut(grads, p.dt_proj_weight.clone()),
        true,
    )?;

    // dt_low, B, C = x_proj(u): their gradients, stacked, flow back into du and
    // x_proj.weight.
    let u = be.all(&acts.u);
    let xp = c.x_proj_width();
    for (first, width, part) in [
        (0, r, &scratch.ddt_low),
        (r, n, &scratch.db),
        (r + n, n, &scratch.dc),
    ] {
        be.copy_columns(
            x_proj_part(t, xp, first, width).1,
            be.all(part),
            be.all_mut(&mut scratch.dxproj),
        )?;
    }
    be.gemm(
        linear_input_grad(t, xp, di),
        be.all(&scratch.dxproj),
        w(s.xp.clone()),
        be.all_mut(&mut scratch.du),
        true,
    )?;
    be.gemm(
        linear_weight_grad(t, xp, di),
        be.all(&scratch.dxproj),
        u,
        be.view_mut(grads, s.xp),
        true,
    )?;

    let conv_dims = ConvDims {
        batch: shape.batch,
        len: shape.len,
        channels: di,
        kernel: c.d_conv,
    };
    let [dconv_weight, dconv_bias] =
        be.split_mut(grads, [p.conv_weight.clone(), p.conv_bias.clone()]);
    be.conv1d_backward(
        conv_dims,
        be.all(&acts.x),
        w(p.conv_weight.clone()),
        w(p.conv_bias.clone()),
        resets,
        None,
        be.all(&scratch.du),
        be.all_mut(&mut scratch.dx),
        dconv_weight,
        dconv_bias,
    )?;

    // x, z = in_proj(input)
    let mut d_input = d_input;
    for (dy, rows, accumulate) in [(&scratch.dx, &s.in_x, false), (&scratch.dz, &s.in_z, true)] {
        be.gemm(
            linear_input_grad(t, di, d),
            be.all(dy),
            w(rows.clone()),
            be.reborrow_mut(&mut d_input),
            accumulate,
        )?;
        be.gemm(
            linear_weight_grad(t, di, d),
            be.all(dy),
            input,
            be.view_mut(grads, rows.clone()),
            true,
        )?;
    }
    Ok(())
}
