//! Sequence pooling and per-row reversal for the classification heads.

use crate::KernelError;

/// Shape of `(batch, len, dim)` right-padded rows of `lengths[b]` valid positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolDims {
    pub batch: usize,
    pub len: usize,
    pub dim: usize,
}

/// How a sequence becomes one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the valid positions (padding never averaged in).
    Mean,
    /// The last valid position.
    Last,
}

/// `out[b]` `(batch, dim)` pools row `b`'s first `lengths[b]` positions; a length of 0 or
/// above `len` is an error.
pub fn forward(
    dims: PoolDims,
    pooling: Pooling,
    lengths: &[u32],
    x: &[f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    todo!()
}

/// Gradient of [`forward`]: `dx` is overwritten (zero at padding).
pub fn backward(
    dims: PoolDims,
    pooling: Pooling,
    lengths: &[u32],
    d_out: &[f32],
    dx: &mut [f32],
) -> Result<(), KernelError> {
    todo!()
}

/// `out[b, t] = x[b, lengths[b]-1-t]` for `t < lengths[b]`, zero at padding: the reversed
/// pass of a bidirectional layer. It is its own gradient.
pub fn reverse(
    dims: PoolDims,
    lengths: &[u32],
    x: &[f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    todo!()
}
