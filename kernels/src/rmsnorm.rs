//! RMSNorm over the last dimension (Mamba's `norm` and `norm_f`).

use crate::KernelError;

/// Shape of an RMSNorm over `rows` vectors of `cols` values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormDims {
    pub rows: usize,
    pub cols: usize,
    /// Added to the mean square (1e-5 in Mamba).
    pub eps: f32,
}

/// `out[r] = x[r] · rstd[r] · weight` with `rstd[r] = 1/sqrt(mean(x[r]²) + eps)`;
/// `rstd` `(rows)` is saved for the backward.
pub fn forward(
    dims: NormDims,
    x: &[f32],
    weight: &[f32],
    out: &mut [f32],
    rstd: &mut [f32],
) -> Result<(), KernelError> {
    todo!()
}

/// Gradients of [`forward`]: both `dx` and `dweight` are accumulated (`dx` is the residual
/// stream's gradient, to which the norm's branch adds).
pub fn backward(
    dims: NormDims,
    x: &[f32],
    weight: &[f32],
    rstd: &[f32],
    d_out: &[f32],
    dx: &mut [f32],
    dweight: &mut [f32],
) -> Result<(), KernelError> {
    todo!()
}
