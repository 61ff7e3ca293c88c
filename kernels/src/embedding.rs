//! Token embedding lookup.

use crate::KernelError;

/// Shape of an embedding of `tokens` ids into a `(vocab, dim)` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbeddingDims {
    pub tokens: usize,
    pub vocab: usize,
    pub dim: usize,
}

/// `out[t] = table[ids[t]]`; an id `>= vocab` is an error naming the position.
pub fn forward(
    dims: EmbeddingDims,
    ids: &[u32],
    table: &[f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    todo!()
}

/// `dtable[ids[t]] += d_out[t]`, summed in token order (deterministic).
pub fn backward(
    dims: EmbeddingDims,
    ids: &[u32],
    d_out: &[f32],
    dtable: &mut [f32],
) -> Result<(), KernelError> {
    todo!()
}
