//! AdamW over one flat parameter buffer.

pub(crate) mod cuda;

use crate::parallel::{run_jobs, JOB_ELEMENTS};
use crate::{check_len, KernelError};

/// AdamW hyper-parameters of one step.
///
/// ```
/// use seqmamba_kernels::adamw::AdamW;
/// let config = AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
/// # let _ = config;
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl AdamW {
    fn check(&self, op: &'static str) -> Result<(), KernelError> {
        let invalid = |message: String| Err(KernelError::Invalid { op, message });
        for (name, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return invalid(format!("{name} {beta} is not in [0, 1)"));
            }
        }
        for (name, value) in [
            ("lr", self.lr),
            ("eps", self.eps),
            ("weight_decay", self.weight_decay),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return invalid(format!(
                    "{name} {value} is not a finite non-negative number"
                ));
            }
        }
        Ok(())
    }
}

const OP: &str = "adamw";

/// The per-step scalars of [`step`], shared with the other backends' AdamW.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepConstants {
    /// `lr / (1 - beta1^step)`.
    pub step_size: f32,
    /// `sqrt(1 - beta2^step)`.
    pub correction2_sqrt: f32,
    /// `1 - lr · weight_decay`.
    pub decay: f32,
}

impl StepConstants {
    /// Checks the step's arguments and forms its scalars.
    pub(crate) fn new(
        config: &AdamW,
        step: u64,
        decay_len: usize,
        params: usize,
    ) -> Result<Self, KernelError> {
        config.check(OP)?;
        if step == 0 {
            return Err(KernelError::Invalid {
                op: OP,
                message: "step counts from 1".into(),
            });
        }
        if decay_len > params {
            return Err(KernelError::Invalid {
                op: OP,
                message: format!("decay_len {decay_len} exceeds the {params} parameters"),
            });
        }
        // Powers in f64: beta2^step underflows gracefully and stays accurate for long runs.
        let steps = step as f64;
        Ok(Self {
            step_size: (config.lr as f64 / (1.0 - (config.beta1 as f64).powf(steps))) as f32,
            correction2_sqrt: (1.0 - (config.beta2 as f64).powf(steps)).sqrt() as f32,
            decay: 1.0 - config.lr * config.weight_decay,
        })
    }
}

/// One AdamW step (`step` counts from 1, for bias correction) over all parameters.
/// Decoupled weight decay applies to `params[..decay_len]` only: the parameter table puts
/// the matrices first and A_log, D, norms and biases after them.
///
/// PyTorch's `torch.optim.AdamW` semantics, in f32, for each parameter `p` with gradient
/// `g`:
/// ```text
/// p -= lr · weight_decay · p                      (only below decay_len)
/// m  = beta1 · m + (1 - beta1) · g
/// v  = beta2 · v + (1 - beta2) · g²
/// p -= lr / (1 - beta1^step) · m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
/// ```
/// `step = 0`, `decay_len > params.len()` and hyper-parameters outside their ranges
/// (betas in `[0, 1)`, the rest finite and non-negative) are errors. Each parameter is
/// updated on its own, so results do not depend on the number of threads.
///
/// ```
/// use seqmamba_kernels::adamw::{step, AdamW};
/// let config = AdamW { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 0.0, weight_decay: 0.0 };
/// let (mut params, mut m, mut v) = ([1.0, 1.0], [0.0; 2], [0.0; 2]);
/// step(&config, 1, 0, &mut params, &[0.5, -2.0], &mut m, &mut v).unwrap();
/// // The first bias-corrected step moves every parameter by lr against its gradient's sign.
/// assert!((params[0] - 0.9).abs() < 1e-6 && (params[1] - 1.1).abs() < 1e-6);
/// ```
pub fn step(
    config: &AdamW,
    step: u64,
    decay_len: usize,
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) -> Result<(), KernelError> {
    let StepConstants {
        step_size,
        correction2_sqrt,
        decay,
    } = StepConstants::new(config, step, decay_len, params.len())?;
    check_len(OP, "grads", params.len(), grads)?;
    check_len(OP, "m", params.len(), m)?;
    check_len(OP, "v", params.len(), v)?;
    let AdamW {
        beta1, beta2, eps, ..
    } = *config;
    let jobs: Vec<_> = params
        .chunks_mut(JOB_ELEMENTS)
        .zip(m.chunks_mut(JOB_ELEMENTS))
        .zip(v.chunks_mut(JOB_ELEMENTS))
        .collect();
    run_jobs(jobs, |job, ((params, m), v)| {
        let start = job * JOB_ELEMENTS;
        let grads = &grads[start..][..params.len()];
        let decayed = decay_len.saturating_sub(start).min(params.len());
        for p in &mut params[..decayed] {
            *p *= decay;
        }
        for (((p, m), v), &g) in params.iter_mut().zip(m).zip(v).zip(grads) {
            *m = beta1 * *m + (1.0 - beta1) * g;
            *v = beta2 * *v + (1.0 - beta2) * g * g;
            *p -= step_size * *m / (v.sqrt() / correction2_sqrt + eps);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::testing::{assert_close, bits, on_threads, to_f64};

    const CONFIG: AdamW = AdamW {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };

    #[test]
    fn steps_match_hand_computed_reference() {
        let mut rng = Rng::new(1);
        let len = 11;
        let decay_len = 6;
        let mut params = rng.vec_uniform(len, -1.0, 1.0);
        let (mut m, mut v) = (vec![0.0; len], vec![0.0; len]);
        let (mut p64, mut m64, mut v64) = (to_f64(&params), vec![0.0; len], vec![0.0; len]);
        let (lr, b1, b2, eps, wd) = (0.01, 0.9, 0.95, 1e-8, 0.1);
        for t in 1..=4u64 {
            let grads = rng.vec_uniform(len, -1.0, 1.0);
            step(&CONFIG, t, decay_len, &mut params, &grads, &mut m, &mut v).unwrap();
            for i in 0..len {
                let g = grads[i] as f64;
                if i < decay_len {
                    p64[i] -= lr * wd * p64[i];
                }
                m64[i] = b1 * m64[i] + (1.0 - b1) * g;
                v64[i] = b2 * v64[i] + (1.0 - b2) * g * g;
                let m_hat = m64[i] / (1.0 - b1.powi(t as i32));
                let v_hat = v64[i] / (1.0 - b2.powi(t as i32));
                p64[i] -= lr * m_hat / (v_hat.sqrt() + eps);
            }
            assert_close(&format!("m after step {t}"), &m, &m64, 1e-6, 1e-9);
            assert_close(&format!("v after step {t}"), &v, &v64, 1e-6, 1e-9);
            assert_close(&format!("params after step {t}"), &params, &p64, 1e-6, 1e-9);
        }
    }

    #[test]
    fn decay_stops_at_decay_len_across_jobs() {
        // Zero gradients leave only the decay: a factor 1 - lr·wd below decay_len.
        let len = 3 * JOB_ELEMENTS + 5;
        let decay_len = JOB_ELEMENTS + 7;
        let mut params = vec![1.0; len];
        let (mut m, mut v) = (vec![0.0; len], vec![0.0; len]);
        step(
            &CONFIG,
            1,
            decay_len,
            &mut params,
            &vec![0.0; len],
            &mut m,
            &mut v,
        )
        .unwrap();
        let decayed = 1.0 - CONFIG.lr * CONFIG.weight_decay;
        assert!(params[..decay_len].iter().all(|&p| p == decayed));
        assert!(params[decay_len..].iter().all(|&p| p == 1.0));
    }

    #[test]
    fn same_bits_on_one_and_two_threads() {
        let mut rng = Rng::new(2);
        let len = 5 * JOB_ELEMENTS + 3;
        let params0 = rng.vec_uniform(len, -1.0, 1.0);
        let grads = rng.vec_uniform(len, -1.0, 1.0);
        let run = |threads: usize| {
            let mut params = params0.clone();
            let (mut m, mut v) = (vec![0.0; len], vec![0.0; len]);
            on_threads(threads, || {
                step(&CONFIG, 3, len / 2, &mut params, &grads, &mut m, &mut v)
            })
            .unwrap();
            [params, m, v].map(|x| bits(&x))
        };
        assert_eq!(run(1), run(2));
    }

    #[test]
    fn bad_arguments_are_errors() {
        let (mut params, mut m, mut v) = (vec![0.0; 4], vec![0.0; 4], vec![0.0; 4]);
        let grads = [0.0; 4];
        let err = step(&CONFIG, 0, 0, &mut params, &grads, &mut m, &mut v).unwrap_err();
        assert!(matches!(err, KernelError::Invalid { op: "adamw", .. }));
        let err = step(&CONFIG, 1, 5, &mut params, &grads, &mut m, &mut v).unwrap_err();
        assert!(matches!(err, KernelError::Invalid { op: "adamw", .. }));
        let bad_beta = AdamW {
            beta2: 1.0,
            ..CONFIG
        };
        let err = step(&bad_beta, 1, 0, &mut params, &grads, &mut m, &mut v).unwrap_err();
        assert!(matches!(err, KernelError::Invalid { op: "adamw", .. }));
        let bad_lr = AdamW {
            lr: f32::NAN,
            ..CONFIG
        };
        assert!(step(&bad_lr, 1, 0, &mut params, &grads, &mut m, &mut v).is_err());
        let err = step(&CONFIG, 1, 0, &mut params, &grads[..3], &mut m, &mut v).unwrap_err();
        assert!(matches!(
            err,
            KernelError::Shape {
                tensor: "grads",
                ..
            }
        ));
        let err = step(&CONFIG, 1, 0, &mut params, &grads, &mut m, &mut v[..3]).unwrap_err();
        assert!(matches!(err, KernelError::Shape { tensor: "v", .. }));
    }
}
