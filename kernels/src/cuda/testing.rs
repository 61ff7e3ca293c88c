//! What the CUDA tests share: the device (or a skip notice) and seeded inputs.

use super::{Cuda, DeviceBuffer};
use crate::rng::Rng;
use crate::Backend;

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

/// bf16 bits on the device (through their exact f32 values and the rounding kernel).
pub(crate) fn upload_bf16(cuda: &Cuda, bits: &[u16]) -> DeviceBuffer<u16> {
    let values = cuda.upload(&crate::bf16::widened(bits)).unwrap();
    let mut copy = cuda.zeros_bf16(bits.len()).unwrap();
    cuda.round_bf16(cuda.all(&values), &mut copy).unwrap();
    copy
}

/// `n` values uniform in [-1, 1) from `seed`.
pub(crate) fn random(n: usize, seed: u64) -> Vec<f32> {
    Rng::new(seed).vec_uniform(n, -1.0, 1.0)
}
