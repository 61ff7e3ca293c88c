//! Matrix multiplication, row-major, f32: the linear layers' forward and backward.

use crate::KernelError;

/// Shape of `c (m×n) = op(a) · op(b)`.
///
/// `a` is stored `m×k` row-major, or `k×m` when `transpose_a`; `b` is stored `k×n`, or
/// `n×k` when `transpose_b`. A linear layer `y = x·Wᵀ` with `x: (t, in)` and
/// `W: (out, in)` is `GemmDims { m: t, n: out, k: in, transpose_a: false, transpose_b: true }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmDims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub transpose_a: bool,
    pub transpose_b: bool,
}

/// `c = op(a)·op(b)`, or `c += op(a)·op(b)` when `accumulate`.
pub fn gemm(
    dims: GemmDims,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
) -> Result<(), KernelError> {
    todo!()
}
