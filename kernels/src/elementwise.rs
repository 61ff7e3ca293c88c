//! Small element-wise ops and reductions: residual add, scaling, sum of squares.

use crate::KernelError;

/// `out = a + b`.
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
    todo!()
}

/// `x *= factor`.
pub fn scale(x: &mut [f32], factor: f32) {
    todo!()
}

/// `Σ x²` in f64, reduced in a fixed order whatever the thread count.
pub fn sum_squares(x: &[f32]) -> f64 {
    todo!()
}
