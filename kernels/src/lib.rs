//! Compute kernels of seqmamba.
//!
//! One narrow op interface, [`Backend`], holds exactly the ops the Mamba backbone needs,
//! each with its forward and backward. [`Cpu`] implements it with rayon and SIMD and is the
//! reference every other backend is tested against. [`cuda::Cuda`] implements it on an
//! NVIDIA GPU (cuBLAS and run-time compiled kernels, so building needs no CUDA).
//!
//! Layout: activations are `(batch, len, channels)` with channels contiguous, f32.
//! Every op module holds the shape struct of its op and the CPU implementation on slices.
//! The CPU ops return the same bits whatever the size of rayon's thread pool: work is cut
//! into jobs by the shape alone and partial sums are combined in job order.

pub mod adamw;
pub mod backend;
pub mod bf16;
pub mod conv1d;
pub mod cpu;
pub mod cross_entropy;
pub mod cuda;
pub mod elementwise;
pub mod embedding;
mod error;
pub mod gemm;
mod lanes;
pub mod math;
mod parallel;
pub mod pool;
pub mod rmsnorm;
pub mod rng;
pub mod scan;
pub mod testing;

pub use backend::Backend;
pub use cpu::Cpu;
pub use error::KernelError;

/// Checks that a tensor argument of an op holds exactly `expected` elements.
///
/// ```
/// use seqmamba_kernels::check_len;
/// assert!(check_len("scan", "u", 6, &[0.0f32; 6]).is_ok());
/// assert!(check_len("scan", "u", 5, &[0.0f32; 6]).is_err());
/// ```
pub fn check_len<T>(
    op: &'static str,
    tensor: &'static str,
    expected: usize,
    data: &[T],
) -> Result<(), KernelError> {
    if data.len() == expected {
        Ok(())
    } else {
        Err(KernelError::Shape {
            op,
            tensor,
            expected,
            actual: data.len(),
        })
    }
}

/// The number of elements of a tensor with the given dimensions, or
/// [`KernelError::Invalid`] naming `op` when the product overflows `usize`.
pub(crate) fn element_count(op: &'static str, dims: &[usize]) -> Result<usize, KernelError> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| KernelError::Invalid {
            op,
            message: format!("shape {dims:?} has more elements than fit in memory"),
        })
}
