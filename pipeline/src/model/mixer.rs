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
//!
//! Training in bf16 ([`Backend::bf16_gemms`]): each GEMM input is rounded once, after the
//! op that makes it, into a bf16 copy (the weights once per forward, by the model), and
//! every GEMM of the mixer reads the copies. The `(tokens, d_inner)` streams are kept in
//! bf16 alone, as the official model's autocast keeps them: x and z (in_proj), u (the
//! conv), delta (dt_proj), y (the scan), the scan's output gradient dy (out_proj) and its
//! du (to which x_proj's input gradient adds), ddelta and dz, the conv's dx; the ops that
//! read them widen as they read.
//!
//! Training memory: a layer keeps x, z, dt_low, B, C and the scan's checkpoints (in bf16,
//! dt_low's copy for the weight gradient). The wide u, delta and y are not kept: the
//! backward makes them again (conv forward, dt_proj GEMM, and the scan's backward, which
//! rebuilds every state anyway, writes y for out_proj's weight gradient) in
//! [`MixerWork`], which every layer shares (the model likewise makes the mixer's input
//! again). Measured on the anchor step: 18.4 → 8.44 GB for 4 % of its time; y made again
//! and z read as bf16: → 7.18 GB (docs/cuda-backend.md).

use seqmamba_kernels::bf16::{Bf16View, Input, Output};
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
    x: Stored<B>,
    z: Stored<B>,
    dt_low: B::Buffer,
    b: B::Buffer,
    c: B::Buffer,
    checkpoints: B::Buffer,
    /// dt_low's bf16 copy for dt_proj's weight gradient, when training in bf16.
    dt_low_copy: Option<B::Bf16Buffer>,
}

/// A tensor held as f32 values or, in bf16 training, as their rounding alone (where GEMMs
/// read it, or ops that widen it as they read).
pub enum Stored<B: Backend> {
    F32(B::Buffer),
    Bf16(B::Bf16Buffer),
}

impl<B: Backend> Stored<B> {
    /// `len` zeros, as bf16 when `bf16`.
    pub fn new(be: &B, len: usize, bf16: bool) -> Result<Self, KernelError> {
        Ok(if bf16 {
            Self::Bf16(be.zeros_bf16(len)?)
        } else {
            Self::F32(be.zeros(len)?)
        })
    }

    /// Where the op that makes it writes.
    pub fn output(&mut self, be: &B) -> Output<'_, B> {
        match self {
            Self::F32(values) => Output::F32(be.all_mut(values)),
            Self::Bf16(bits) => Output::Bf16(bits),
        }
    }

    /// What an op that reads it takes.
    pub fn input(&self, be: &B) -> Input<'_, B> {
        match self {
            Self::F32(values) => Input::F32(be.all(values)),
            Self::Bf16(bits) => Input::Bf16(bits),
        }
    }

    /// Its f32 values: its own, or its bf16 bits widened into `wide`.
    pub fn values<'a>(
        &'a self,
        be: &B,
        wide: &'a mut B::Buffer,
    ) -> Result<B::View<'a>, KernelError> {
        match self {
            Self::F32(values) => Ok(be.all(values)),
            Self::Bf16(bits) => {
                be.widen_bf16(bits, be.all_mut(wide))?;
                Ok(be.all(wide))
            }
        }
    }
}

/// The wide values a mixer's forward makes and its backward makes again (see the module
/// comment), shared by every layer.
pub struct MixerWork<B: Backend> {
    /// u and delta, bf16 in bf16 training (as the official model's autocast keeps them).
    u: Stored<B>,
    delta: Stored<B>,
    /// The input's bf16 copy (when it comes in f32), when training in bf16.
    input_copy: Option<B::Bf16Buffer>,
    /// x_proj's output, `[dt_low | B | C]` per token.
    xproj: B::Buffer,
    /// The scan's output (bf16 in bf16 training: only out_proj's GEMMs read it).
    y: Stored<B>,
}

/// bf16 copies of the backward's f32 GEMM inputs.
struct GradientCopies<B: Backend> {
    d_out: B::Bf16Buffer,
    dxproj: B::Bf16Buffer,
}

/// The mixer's weights: the flat parameters, and their bf16 copy when training in bf16.
pub struct Weights<'a, B: Backend> {
    pub f32: &'a B::Buffer,
    pub bf16: Option<&'a B::Bf16Buffer>,
}

impl<B: Backend> Clone for Weights<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for Weights<'_, B> {}

/// A GEMM operand: f32 values, or a bf16 copy when the mixer trains in bf16. (Two
/// lifetimes: a backend's views need not shorten.)
enum Operand<'a, 'b, B: Backend + 'a + 'b> {
    F32(B::View<'a>),
    Bf16(Bf16View<'b, B>),
}

impl<'a, 'b, B: Backend + 'a + 'b> Clone for Operand<'a, 'b, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<'a, 'b, B: Backend + 'a + 'b> Copy for Operand<'a, 'b, B> {}

impl<'a, 'b, B: Backend + 'a + 'b> Operand<'a, 'b, B> {
    /// `x`, or its bf16 copy when there is one.
    fn new(be: &B, x: B::View<'a>, copy: Option<&'b B::Bf16Buffer>) -> Self {
        match copy {
            Some(copy) => Self::Bf16(Bf16View::new(copy, 0..be.bf16_len(copy))),
            None => Self::F32(x),
        }
    }

    /// An op's input as a GEMM operand: bf16 bits as they are, f32 values rounded into
    /// `copy` when there is one.
    fn input(
        be: &B,
        x: Input<'a, B>,
        copy: Option<&'b mut B::Bf16Buffer>,
    ) -> Result<Self, KernelError>
    where
        'a: 'b,
    {
        match x {
            Input::F32(values) => Self::rounded(be, values, copy),
            Input::Bf16(bits) => Ok(Self::Bf16(Bf16View::new(bits, 0..be.bf16_len(bits)))),
        }
    }

    /// `x`, or its rounding into `copy` when there is one.
    fn rounded(
        be: &B,
        x: B::View<'a>,
        copy: Option<&'b mut B::Bf16Buffer>,
    ) -> Result<Self, KernelError> {
        if let Some(copy) = copy {
            be.round_bf16(x, copy)?;
            return Ok(Self::new(be, x, Some(&*copy)));
        }
        Ok(Self::F32(x))
    }
}

impl<'a, B: Backend + 'a> Operand<'a, 'a, B> {
    /// A tensor held as f32 values or bf16 bits, as it is.
    fn stored(be: &B, x: &'a Stored<B>) -> Self {
        match x {
            Stored::F32(values) => Self::F32(be.all(values)),
            Stored::Bf16(bits) => Self::Bf16(Bf16View::new(bits, 0..be.bf16_len(bits))),
        }
    }

    /// `range` of the weights.
    fn weight(be: &B, weights: Weights<'a, B>, range: std::ops::Range<usize>) -> Self {
        match weights.bf16 {
            Some(copy) => Self::Bf16(Bf16View::new(copy, range)),
            None => Self::F32(be.view(weights.f32, range)),
        }
    }
}

/// `c = op(a)·op(b)`, in bf16 when the operands are bf16 copies (only then may `c` be
/// bf16).
fn gemm<B: Backend>(
    be: &B,
    dims: GemmDims,
    a: Operand<'_, '_, B>,
    b: Operand<'_, '_, B>,
    c: Output<'_, B>,
    accumulate: bool,
) -> Result<(), KernelError> {
    match (a, b, c) {
        (Operand::F32(a), Operand::F32(b), Output::F32(c)) => be.gemm(dims, a, b, c, accumulate),
        (Operand::Bf16(a), Operand::Bf16(b), c) => be.gemm_bf16(dims, a, b, c, accumulate),
        _ => Err(KernelError::Invalid {
            op: "mixer",
            message: "a GEMM mixing f32 and bf16 operands, or f32 operands into bf16".into(),
        }),
    }
}

/// The recurrent state of one mixer: the last `d_conv − 1` conv inputs and the SSM state.
pub struct MixerState<B: Backend> {
    pub conv: B::Buffer,
    pub ssm: B::Buffer,
}

/// Activation gradients of the mixer's backward, reused by every layer.
pub struct MixerScratch<B: Backend> {
    /// The scan's output gradient and u's, bf16 in bf16 training (as the scan reads and
    /// writes its other streams).
    dy: Stored<B>,
    du: Stored<B>,
    /// Read only by GEMMs: bf16 alone in bf16 training, as the scan and the conv write them.
    ddelta: Stored<B>,
    dz: Stored<B>,
    dx: Stored<B>,
    db: B::Buffer,
    dc: B::Buffer,
    ddt_low: B::Buffer,
    /// `[d dt_low | dB | dC]` per token: x_proj's output gradient.
    dxproj: B::Buffer,
    bf16: Option<GradientCopies<B>>,
}

fn scan_dims(c: &MambaConfig, shape: Shape) -> ScanDims {
    ScanDims::new(shape.batch, shape.len, c.d_inner(), c.d_state)
}

impl<B: Backend> MixerActivations<B> {
    /// Buffers for `shape`; the scan checkpoints only when `train`, and bf16 copies of the
    /// GEMM inputs only when `bf16` (training in bf16).
    pub fn new(
        be: &B,
        c: &MambaConfig,
        shape: Shape,
        train: bool,
        bf16: bool,
    ) -> Result<Self, KernelError> {
        let t = shape.tokens();
        let di = c.d_inner();
        Ok(Self {
            x: Stored::new(be, t * di, bf16)?,
            z: Stored::new(be, t * di, bf16)?,
            dt_low: be.zeros(t * c.dt_rank)?,
            b: be.zeros(t * c.d_state)?,
            c: be.zeros(t * c.d_state)?,
            checkpoints: be.zeros(if train {
                scan_dims(c, shape).checkpoint_len()
            } else {
                0
            })?,
            dt_low_copy: bf16.then(|| be.zeros_bf16(t * c.dt_rank)).transpose()?,
        })
    }
}

impl<B: Backend> MixerWork<B> {
    /// Buffers for `shape`, u, delta and y in bf16 when `bf16`.
    pub fn new(be: &B, c: &MambaConfig, shape: Shape, bf16: bool) -> Result<Self, KernelError> {
        let t = shape.tokens();
        let di = c.d_inner();
        Ok(Self {
            u: Stored::new(be, t * di, bf16)?,
            delta: Stored::new(be, t * di, bf16)?,
            input_copy: bf16.then(|| be.zeros_bf16(t * c.d_model)).transpose()?,
            xproj: be.zeros(t * c.x_proj_width())?,
            y: Stored::new(be, t * di, bf16)?,
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
    /// Buffers for `shape`, with bf16 copies of the GEMM inputs when `bf16`.
    pub fn new(be: &B, c: &MambaConfig, shape: Shape, bf16: bool) -> Result<Self, KernelError> {
        let t = shape.tokens();
        let di = c.d_inner();
        let copies = if bf16 {
            Some(GradientCopies {
                d_out: be.zeros_bf16(t * c.d_model)?,
                dxproj: be.zeros_bf16(t * c.x_proj_width())?,
            })
        } else {
            None
        };
        Ok(Self {
            bf16: copies,
            dy: Stored::new(be, t * di, bf16)?,
            du: Stored::new(be, t * di, bf16)?,
            ddelta: Stored::new(be, t * di, bf16)?,
            dz: Stored::new(be, t * di, bf16)?,
            dx: Stored::new(be, t * di, bf16)?,
            db: be.zeros(t * c.d_state)?,
            dc: be.zeros(t * c.d_state)?,
            ddt_low: be.zeros(t * c.dt_rank)?,
            dxproj: be.zeros(t * c.x_proj_width())?,
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

fn conv_dims(c: &MambaConfig, shape: Shape) -> ConvDims {
    ConvDims {
        batch: shape.batch,
        len: shape.len,
        channels: c.d_inner(),
        kernel: c.d_conv,
    }
}

/// `u = silu(conv1d(x))`, from `state` when given.
#[allow(clippy::too_many_arguments)]
fn conv<B: Backend>(
    be: &B,
    c: &MambaConfig,
    shape: Shape,
    weights: Weights<'_, B>,
    p: &MixerParams,
    x: Input<'_, B>,
    resets: Option<&B::Ids>,
    state: Option<B::ViewMut<'_>>,
    u: Output<'_, B>,
) -> Result<(), KernelError> {
    be.conv1d_forward(
        conv_dims(c, shape),
        x,
        be.view(weights.f32, p.conv_weight.clone()),
        be.view(weights.f32, p.conv_bias.clone()),
        resets,
        state,
        u,
    )
}

/// `delta = dt_low · dt_proj.weightᵀ`.
fn dt_proj<B: Backend>(
    be: &B,
    c: &MambaConfig,
    shape: Shape,
    weights: Weights<'_, B>,
    p: &MixerParams,
    dt_low: Operand<'_, '_, B>,
    delta: Output<'_, B>,
) -> Result<(), KernelError> {
    gemm(
        be,
        linear(shape.tokens(), c.d_inner(), c.dt_rank),
        dt_low,
        Operand::weight(be, weights, p.dt_proj_weight.clone()),
        delta,
        false,
    )
}

/// Forward of one mixer: `out = mixer(input)`. With `state`, the conv and SSM start from it
/// and it holds the final state on return (chunked processing and decoding). With `train`,
/// the scan saves its checkpoints for [`backward`]. With bf16 copies in `acts` and `work`
/// and of the weights (the model makes all or none), the GEMMs read those.
#[allow(clippy::too_many_arguments)]
pub fn forward<B: Backend>(
    be: &B,
    c: &MambaConfig,
    shape: Shape,
    weights: Weights<'_, B>,
    p: &MixerParams,
    input: Input<'_, B>,
    acts: &mut MixerActivations<B>,
    work: &mut MixerWork<B>,
    out: B::ViewMut<'_>,
    state: Option<&mut MixerState<B>>,
    resets: Option<&B::Ids>,
    train: bool,
) -> Result<(), KernelError> {
    let t = shape.tokens();
    let (d, di, n, r) = (c.d_model, c.d_inner(), c.d_state, c.dt_rank);
    let w = |range: std::ops::Range<usize>| be.view(weights.f32, range);
    let weight = |range| Operand::weight(be, weights, range);
    let s = Split::new(c, p);
    let input = Operand::input(be, input, work.input_copy.as_mut())?;
    gemm(
        be,
        linear(t, di, d),
        input,
        weight(s.in_x),
        acts.x.output(be),
        false,
    )?;
    gemm(
        be,
        linear(t, di, d),
        input,
        weight(s.in_z),
        acts.z.output(be),
        false,
    )?;
    let (conv_state, ssm_state) = match state {
        Some(MixerState { conv, ssm }) => (Some(be.all_mut(conv)), Some(be.all_mut(ssm))),
        None => (None, None),
    };
    conv(
        be,
        c,
        shape,
        weights,
        p,
        acts.x.input(be),
        resets,
        conv_state,
        work.u.output(be),
    )?;
    let u = Operand::stored(be, &work.u);
    let xp = c.x_proj_width();
    gemm(
        be,
        linear(t, xp, di),
        u,
        weight(s.xp),
        Output::F32(be.all_mut(&mut work.xproj)),
        false,
    )?;
    for (first, width, part) in [
        (0, r, &mut acts.dt_low),
        (r, n, &mut acts.b),
        (r + n, n, &mut acts.c),
    ] {
        be.copy_columns(
            x_proj_part(t, xp, first, width).0,
            be.all(&work.xproj),
            be.all_mut(part),
        )?;
    }
    let dt_low = Operand::rounded(be, be.all(&acts.dt_low), acts.dt_low_copy.as_mut())?;
    dt_proj(be, c, shape, weights, p, dt_low, work.delta.output(be))?;
    let inputs = ScanInputs {
        u: work.u.input(be),
        delta: work.delta.input(be),
        a_log: w(p.a_log.clone()),
        b: be.all(&acts.b),
        c: be.all(&acts.c),
        d_skip: w(p.d_skip.clone()),
        delta_bias: w(p.dt_proj_bias.clone()),
        z: Some(acts.z.input(be)),
    };
    let checkpoints = train.then(|| be.all_mut(&mut acts.checkpoints));
    be.scan_forward(
        scan_dims(c, shape),
        &inputs,
        resets,
        ssm_state,
        checkpoints,
        work.y.output(be),
    )?;
    gemm(
        be,
        linear(t, d, di),
        Operand::stored(be, &work.y),
        weight(p.out_proj.clone()),
        Output::F32(out),
        false,
    )
}

/// Backward of one mixer: writes `d_input` (overwritten) and accumulates the mixer's
/// parameter gradients into `grads`. `input` is the forward's input; `d_out`, the gradient
/// of its output, only GEMMs read (f32, or in bf16 training its rounding, which is made
/// here when it comes as f32).
#[allow(clippy::too_many_arguments)]
pub fn backward<B: Backend>(
    be: &B,
    c: &MambaConfig,
    shape: Shape,
    weights: Weights<'_, B>,
    p: &MixerParams,
    input: Input<'_, B>,
    acts: &MixerActivations<B>,
    work: &mut MixerWork<B>,
    d_out: Input<'_, B>,
    resets: Option<&B::Ids>,
    grads: &mut B::Buffer,
    scratch: &mut MixerScratch<B>,
    d_input: B::ViewMut<'_>,
) -> Result<(), KernelError> {
    let t = shape.tokens();
    let (d, di, n, r) = (c.d_model, c.d_inner(), c.d_state, c.dt_rank);
    if acts.dt_low_copy.is_some() != scratch.bf16.is_some() {
        return Err(KernelError::Invalid {
            op: "mixer backward",
            message: "activations and scratch disagree on bf16 GEMMs".into(),
        });
    }
    let w = |range: std::ops::Range<usize>| be.view(weights.f32, range);
    let weight = |range| Operand::weight(be, weights, range);
    let s = Split::new(c, p);
    let [d_out_copy, dxproj_copy] = scratch.bf16.as_mut().map_or(Default::default(), |k| {
        [Some(&mut k.d_out), Some(&mut k.dxproj)]
    });

    let d_out = Operand::input(be, d_out, d_out_copy)?;
    gemm(
        be,
        linear_input_grad(t, d, di),
        d_out,
        weight(p.out_proj.clone()),
        scratch.dy.output(be),
        false,
    )?;

    let dt_low = Operand::new(be, be.all(&acts.dt_low), acts.dt_low_copy.as_ref());
    let x = acts.x.input(be);
    conv(be, c, shape, weights, p, x, resets, None, work.u.output(be))?;
    let u = Operand::stored(be, &work.u);
    dt_proj(be, c, shape, weights, p, dt_low, work.delta.output(be))?;
    let inputs = ScanInputs {
        u: work.u.input(be),
        delta: work.delta.input(be),
        a_log: w(p.a_log.clone()),
        b: be.all(&acts.b),
        c: be.all(&acts.c),
        d_skip: w(p.d_skip.clone()),
        delta_bias: w(p.dt_proj_bias.clone()),
        z: Some(acts.z.input(be)),
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
        scratch.dy.input(be),
        ScanGrads {
            du: scratch.du.output(be),
            ddelta: scratch.ddelta.output(be),
            da_log,
            db: be.all_mut(&mut scratch.db),
            dc: be.all_mut(&mut scratch.dc),
            dd_skip,
            ddelta_bias,
            dz: Some(scratch.dz.output(be)),
            out: Some(work.y.output(be)),
        },
    )?;
    gemm(
        be,
        linear_weight_grad(t, d, di),
        d_out,
        Operand::stored(be, &work.y),
        Output::F32(be.view_mut(grads, p.out_proj.clone())),
        true,
    )?;

    // delta = dt_low · dt_projᵀ
    let ddelta = Operand::stored(be, &scratch.ddelta);
    gemm(
        be,
        linear_input_grad(t, di, r),
        ddelta,
        weight(p.dt_proj_weight.clone()),
        Output::F32(be.all_mut(&mut scratch.ddt_low)),
        false,
    )?;
    gemm(
        be,
        linear_weight_grad(t, di, r),
        ddelta,
        dt_low,
        Output::F32(be.view_mut(grads, p.dt_proj_weight.clone())),
        true,
    )?;

    // dt_low, B, C = x_proj(u): their gradients, stacked, flow back into du and
    // x_proj.weight.
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
    let dxproj = Operand::rounded(be, be.all(&scratch.dxproj), dxproj_copy)?;
    gemm(
        be,
        linear_input_grad(t, xp, di),
        dxproj,
        weight(s.xp.clone()),
        scratch.du.output(be),
        true,
    )?;
    gemm(
        be,
        linear_weight_grad(t, xp, di),
        dxproj,
        u,
        Output::F32(be.view_mut(grads, s.xp)),
        true,
    )?;

    let [dconv_weight, dconv_bias] =
        be.split_mut(grads, [p.conv_weight.clone(), p.conv_bias.clone()]);
    be.conv1d_backward(
        conv_dims(c, shape),
        x,
        w(p.conv_weight.clone()),
        w(p.conv_bias.clone()),
        resets,
        None,
        scratch.du.input(be),
        scratch.dx.output(be),
        dconv_weight,
        dconv_bias,
    )?;

    // x, z = in_proj(input)
    let input = Operand::input(be, input, work.input_copy.as_mut())?;
    let dx = Operand::stored(be, &scratch.dx);
    let dz = Operand::stored(be, &scratch.dz);
    let mut d_input = d_input;
    for (dy, rows, accumulate) in [(dx, &s.in_x, false), (dz, &s.in_z, true)] {
        gemm(
            be,
            linear_input_grad(t, di, d),
            dy,
            weight(rows.clone()),
            Output::F32(be.reborrow_mut(&mut d_input)),
            accumulate,
        )?;
        gemm(
            be,
            linear_weight_grad(t, di, d),
            dy,
            input,
            Output::F32(be.view_mut(grads, rows.clone())),
            true,
        )?;
    }
    Ok(())
}
