//! Causal depthwise 1-D convolution fused with SiLU (Mamba's `conv1d` + activation).

use crate::KernelError;

/// Shape of a causal depthwise convolution over `x: (batch, len, channels)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvDims {
    pub batch: usize,
    pub len: usize,
    pub channels: usize,
    /// Taps per channel (Mamba's `d_conv`, 4 by default).
    pub kernel: usize,
}

/// `out[b,t,c] = silu(bias[c] + Σ_k weight[c,k] · x[b, t-(K-1)+k, c])`.
///
/// `weight` is `(channels, kernel)` (the official `conv1d.weight` of shape `(D, 1, K)`).
/// Inputs before position 0 come from `state` `(batch, kernel-1, channels)` when given,
/// else are zero. `resets` `(batch, len)`: a non-zero flag at `t` starts a new sequence, so
/// inputs before `t` (and the state) are treated as zero from `t` on. On return `state`
/// holds the last `kernel-1` inputs of each row as the next chunk needs them (zero where
/// they lie before the row's last reset), so `len = 1` with a state is the decode step.
pub fn forward(
    dims: ConvDims,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    resets: Option<&[u32]>,
    state: Option<&mut [f32]>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    todo!()
}

/// Gradients of [`forward`]: `dx` is overwritten, `dweight` and `dbias` are accumulated.
/// `initial_state` is the state `forward` was entered with (no gradient flows into it).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dims: ConvDims,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    resets: Option<&[u32]>,
    initial_state: Option<&[f32]>,
    d_out: &[f32],
    dx: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
) -> Result<(), KernelError> {
    todo!()
}
