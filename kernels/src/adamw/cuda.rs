//! CUDA launcher of AdamW (kernel in `adamw.cu`): the whole flat buffer in one launch.

use cudarc::driver::DeviceRepr;

use super::{AdamW, StepConstants};
use crate::cuda::{check_view, flat_grid, Cuda, DeviceView, DeviceViewMut};
use crate::KernelError;

const SOURCE: &str = concat!(include_str!("../cuda/common.cuh"), include_str!("adamw.cu"));

#[repr(C)]
struct AdamWArgs {
    params: u64,
    grads: u64,
    m: u64,
    v: u64,
    n: i64,
    decay_len: i64,
    beta1: f32,
    beta2: f32,
    eps: f32,
    step_size: f32,
    correction2_sqrt: f32,
    decay: f32,
}

// SAFETY: plain old data laid out as the kernel's struct.
unsafe impl DeviceRepr for AdamWArgs {}

/// See [`super::step`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn step(
    cuda: &Cuda,
    config: &AdamW,
    step: u64,
    decay_len: usize,
    params: DeviceViewMut<'_>,
    grads: DeviceView<'_>,
    m: DeviceViewMut<'_>,
    v: DeviceViewMut<'_>,
) -> Result<(), KernelError> {
    const OP: &str = "adamw";
    let n = params.len();
    let constants = StepConstants::new(config, step, decay_len, n)?;
    check_view(OP, "grads", n, grads.len())?;
    check_view(OP, "m", n, m.len())?;
    check_view(OP, "v", n, v.len())?;
    if n == 0 {
        return Ok(());
    }
    let args = AdamWArgs {
        params: params.address(),
        grads: grads.address(),
        m: m.address(),
        v: v.address(),
        n: n as i64,
        decay_len: decay_len as i64,
        beta1: config.beta1,
        beta2: config.beta2,
        eps: config.eps,
        step_size: constants.step_size,
        correction2_sqrt: constants.correction2_sqrt,
        decay: constants.decay,
    };
    let function = cuda.function("adamw", SOURCE, &[], "adamw_step")?;
    cuda.launch(&function, flat_grid(n), &args)
}

#[cfg(test)]
mod tests {
    use crate::adamw::{self, AdamW};
    use crate::cuda::testing::{device, random};
    use crate::testing::{assert_close, to_f64};
    use crate::{Backend, KernelError};

    #[test]
    fn cuda_adamw_matches_the_cpu_over_steps() {
        let Some(cuda) = device() else { return };
        let config = AdamW {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let n = 5000;
        let decay_len = 3001;
        let mut params = random(n, 1);
        let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
        let mut dp = cuda.upload(&params).unwrap();
        let mut dm = cuda.zeros(n).unwrap();
        let mut dv = cuda.zeros(n).unwrap();
        for step in 1..=3u64 {
            let grads = random(n, 10 + step);
            let dg = cuda.upload(&grads).unwrap();
            adamw::step(
                &config,
                step,
                decay_len,
                &mut params,
                &grads,
                &mut m,
                &mut v,
            )
            .unwrap();
            cuda.adamw(
                &config,
                step,
                decay_len,
                cuda.all_mut(&mut dp),
                cuda.all(&dg),
                cuda.all_mut(&mut dm),
                cuda.all_mut(&mut dv),
            )
            .unwrap();
        }
        for (name, got, want) in [("params", &dp, &params), ("m", &dm, &m), ("v", &dv, &v)] {
            assert_close(
                name,
                &cuda.download(cuda.all(got)).unwrap(),
                &to_f64(want),
                1e-5,
                1e-7,
            );
        }
        let error = cuda
            .adamw(
                &config,
                0,
                0,
                cuda.all_mut(&mut dp),
                cuda.all(&dm),
                cuda.all_mut(&mut dv),
                cuda.all_mut(&mut cuda.zeros(n).unwrap()),
            )
            .unwrap_err();
        assert!(matches!(error, KernelError::Invalid { .. }), "{error}");
    }
}
