//! Softmax cross-entropy fused with its gradient.

use crate::KernelError;

/// Shape of `rows` logit vectors over `vocab` classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrossEntropyDims {
    pub rows: usize,
    pub vocab: usize,
}

/// `losses[r] = -ln softmax(logits[r])[targets[r]]` (0 where `targets[r] == ignore_index`).
/// With `dlogits`, also writes `dlogits[r] = (softmax(logits[r]) - onehot) · grad_scale`
/// (zero rows where ignored). A target `>= vocab` other than `ignore_index` is an error.
#[allow(clippy::too_many_arguments)]
pub fn forward_backward(
    dims: CrossEntropyDims,
    logits: &[f32],
    targets: &[u32],
    ignore_index: u32,
    losses: &mut [f32],
    dlogits: Option<&mut [f32]>,
    grad_scale: f32,
) -> Result<(), KernelError> {
    todo!()
}
