//! AdamW over one flat parameter buffer.

use crate::KernelError;

/// AdamW hyper-parameters of one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// One AdamW step (`step` counts from 1, for bias correction) over all parameters.
/// Decoupled weight decay applies to `params[..decay_len]` only: the parameter table puts
/// the matrices first and A_log, D, norms and biases after them.
pub fn step(
    config: &AdamW,
    step: u64,
    decay_len: usize,
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) -> Result<(), KernelError> {
    todo!()
}
