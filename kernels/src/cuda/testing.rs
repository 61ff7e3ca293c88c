//! What the CUDA tests share: the device (or a skip notice) and seeded inputs.

use super::Cuda;
use crate::rng::Rng;

/// Device 0, or `None` after printing why the calling test skips.
pub(crate) fn device() -> Option<Cuda> {
    match Cuda::new(0) {
        Ok(cuda) => Some(cuda),
        Err(reason) => {
            println!("skipping: no CUDA device ({reason})");
            None
        }
    }
}

/// `n` values uniform in [-1, 1) from `seed`.
pub(crate) fn random(n: usize, seed: u64) -> Vec<f32> {
    Rng::new(seed).vec_uniform(n, -1.0, 1.0)
}
