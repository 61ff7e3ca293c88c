//! CPU selective scan: a thread owns a tile of channels of one batch row and keeps their
//! states in SIMD lanes while it walks the sequence.

use super::{ScanDims, ScanGrads, ScanInputs};
use crate::KernelError;

/// Forward scan writing `out` `(batch, len, channels)`.
///
/// `resets` `(batch, len)`: non-zero at `t` zeroes the state before position `t`.
/// `state` `(batch, channels, state)`: initial state on entry (zero if `None`), final state
/// on return. `checkpoints` `(batch, chunks, channels, state)`: when given, receives the
/// state at the start of every chunk (chunk 0: the initial state), as `backward` needs.
pub fn forward(
    dims: ScanDims,
    inputs: &ScanInputs<&[f32]>,
    resets: Option<&[u32]>,
    state: Option<&mut [f32]>,
    checkpoints: Option<&mut [f32]>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    todo!()
}

/// Gradients of [`forward`] given `d_out`, from the checkpoints the forward saved.
pub fn backward(
    dims: ScanDims,
    inputs: &ScanInputs<&[f32]>,
    resets: Option<&[u32]>,
    checkpoints: &[f32],
    d_out: &[f32],
    grads: ScanGrads<&mut [f32]>,
) -> Result<(), KernelError> {
    todo!()
}
