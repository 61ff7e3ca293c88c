//! RMSNorm over the last dimension (Mamba's `norm` and `norm_f`).
//!
//! Rows are split into jobs of a fixed number of rows (set by the shape alone); the weight
//! gradient is summed per job and the job sums added in job order, so results do not
//! depend on the number of threads.

pub(crate) mod cuda;

use crate::math::dot;
use crate::parallel::{rows_per_job, run_jobs};
use crate::{check_len, element_count, KernelError};

/// Shape of an RMSNorm over `rows` vectors of `cols` values.
///
/// ```
/// use seqmamba_kernels::rmsnorm::NormDims;
/// let dims = NormDims { rows: 8 * 1024, cols: 768, eps: 1e-5 };
/// # let _ = dims;
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormDims {
    pub rows: usize,
    pub cols: usize,
    /// Added to the mean square (1e-5 in Mamba).
    pub eps: f32,
}

impl NormDims {
    pub(crate) fn check(&self, op: &'static str) -> Result<usize, KernelError> {
        if self.cols == 0 {
            return Err(KernelError::Invalid {
                op,
                message: "rows must have at least one column".into(),
            });
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(KernelError::Invalid {
                op,
                message: format!("eps {} is not a finite non-negative number", self.eps),
            });
        }
        element_count(op, &[self.rows, self.cols])
    }
}

/// `out[r] = x[r] · rstd[r] · weight` with `rstd[r] = 1/sqrt(mean(x[r]²) + eps)`;
/// `rstd` `(rows)` is saved for the backward. The mean square is summed in f32 by
/// [`crate::math::dot`].
///
/// ```
/// use seqmamba_kernels::rmsnorm::{forward, NormDims};
/// let dims = NormDims { rows: 1, cols: 2, eps: 0.0 };
/// let (mut out, mut rstd) = ([0.0; 2], [0.0]);
/// forward(dims, &[3.0, 4.0], &[1.0, 2.0], &mut out, &mut rstd).unwrap();
/// let r = 1.0 / 12.5f32.sqrt();
/// assert_eq!(rstd, [r]);
/// assert_eq!(out, [3.0 * r, 4.0 * r * 2.0]);
/// ```
pub fn forward(
    dims: NormDims,
    x: &[f32],
    weight: &[f32],
    out: &mut [f32],
    rstd: &mut [f32],
) -> Result<(), KernelError> {
    const OP: &str = "rmsnorm_forward";
    let elements = dims.check(OP)?;
    check_len(OP, "x", elements, x)?;
    check_len(OP, "weight", dims.cols, weight)?;
    check_len(OP, "out", elements, out)?;
    check_len(OP, "rstd", dims.rows, rstd)?;
    let cols = dims.cols;
    let rows = rows_per_job(cols);
    let jobs: Vec<_> = out
        .chunks_mut(rows * cols)
        .zip(rstd.chunks_mut(rows))
        .collect();
    run_jobs(jobs, |job, (out, rstd)| {
        let x = &x[job * rows * cols..][..out.len()];
        for ((x, out), rstd) in x
            .chunks_exact(cols)
            .zip(out.chunks_exact_mut(cols))
            .zip(rstd.iter_mut())
        {
            let sum_squares = dot(x, x);
            *rstd = 1.0 / (sum_squares / cols as f32 + dims.eps).sqrt();
            for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
                *o = v * *rstd * w;
            }
        }
    });
    Ok(())
}

/// The residual add and the norm of a pre-norm block in one op: `sum = residual + branch`,
/// then [`forward`] of `sum`. On the CPU the two run in turn (the same bits as
/// [`crate::elementwise::add`] then [`forward`]); the GPU reads the residual stream once.
/// Its backward is [`backward`] of `sum`: `dx` accumulates, which is the add's backward.
///
/// ```
/// use seqmamba_kernels::rmsnorm::{add_forward, NormDims};
/// let dims = NormDims { rows: 1, cols: 2, eps: 0.0 };
/// let (mut sum, mut out, mut rstd) = ([0.0; 2], [0.0; 2], [0.0]);
/// add_forward(dims, &[1.0, 1.0], &[2.0, 3.0], &[1.0, 1.0], &mut sum, &mut out, &mut rstd).unwrap();
/// assert_eq!(sum, [3.0, 4.0]);
/// assert_eq!(out, [3.0 / 12.5f32.sqrt(), 4.0 / 12.5f32.sqrt()]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn add_forward(
    dims: NormDims,
    residual: &[f32],
    branch: &[f32],
    weight: &[f32],
    sum: &mut [f32],
    out: &mut [f32],
    rstd: &mut [f32],
) -> Result<(), KernelError> {
    crate::elementwise::add(residual, branch, sum)?;
    forward(dims, sum, weight, out, rstd)
}

/// Gradients of [`forward`]: both `dx` and `dweight` are accumulated (`dx` is the residual
/// stream's gradient, to which the norm's branch adds).
///
/// With `x̂ = x·rstd` and `g = d_out·weight`:
/// `dx += rstd · (g − x̂ · mean(g·x̂))` and `dweight += Σ_rows d_out·x̂`.
///
/// ```
/// use seqmamba_kernels::rmsnorm::{backward, NormDims};
/// let dims = NormDims { rows: 1, cols: 2, eps: 0.0 };
/// let (mut dx, mut dweight) = ([1.0; 2], [0.0; 2]);
/// // x = (1, 1) has rstd 1; a gradient along x itself does not change the norm's output.
/// backward(dims, &[1.0, 1.0], &[1.0, 1.0], &[1.0], &[1.0, 1.0], &mut dx, &mut dweight).unwrap();
/// assert_eq!(dx, [1.0, 1.0]);
/// assert_eq!(dweight, [1.0, 1.0]);
/// ```
pub fn backward(
    dims: NormDims,
    x: &[f32],
    weight: &[f32],
    rstd: &[f32],
    d_out: &[f32],
    dx: &mut [f32],
    dweight: &mut [f32],
) -> Result<(), KernelError> {
    const OP: &str = "rmsnorm_backward";
    let elements = dims.check(OP)?;
    check_len(OP, "x", elements, x)?;
    check_len(OP, "weight", dims.cols, weight)?;
    check_len(OP, "rstd", dims.rows, rstd)?;
    check_len(OP, "d_out", elements, d_out)?;
    check_len(OP, "dx", elements, dx)?;
    check_len(OP, "dweight", dims.cols, dweight)?;
    let cols = dims.cols;
    let rows = rows_per_job(cols);
    let jobs: Vec<_> = dx.chunks_mut(rows * cols).collect();
    let partials = run_jobs(jobs, |job, dx| {
        let first = job * rows;
        let x = &x[first * cols..][..dx.len()];
        let d_out = &d_out[first * cols..][..dx.len()];
        let mut d_weight = vec![0.0f32; cols];
        let mut g = vec![0.0f32; cols];
        for (((x, d_out), dx), &rstd) in x
            .chunks_exact(cols)
            .zip(d_out.chunks_exact(cols))
            .zip(dx.chunks_exact_mut(cols))
            .zip(&rstd[first..])
        {
            // g = d_out · weight; dx = rstd · (g − x̂ · mean(g · x̂)) with x̂ = x · rstd.
            for ((g, &d), &w) in g.iter_mut().zip(d_out).zip(weight) {
                *g = d * w;
            }
            let projection = dot(&g, x) * rstd * rstd / cols as f32;
            for ((dx, &v), &g) in dx.iter_mut().zip(x).zip(&g) {
                *dx += rstd * (g - v * projection);
            }
            for ((dw, &v), &d) in d_weight.iter_mut().zip(x).zip(d_out) {
                *dw += d * v * rstd;
            }
        }
        d_weight
    });
    for partial in &partials {
        for (dw, &p) in dweight.iter_mut().zip(partial) {
            *dw += p;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::testing::{assert_close, bits, finite_difference_at, on_threads, to_f64};

    /// The definition in f64.
    fn reference(dims: NormDims, x: &[f64], weight: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; x.len()];
        for r in 0..dims.rows {
            let row = &x[r * dims.cols..][..dims.cols];
            let mean_square = row.iter().map(|v| v * v).sum::<f64>() / dims.cols as f64;
            let rstd = 1.0 / (mean_square + dims.eps as f64).sqrt();
            for c in 0..dims.cols {
                out[r * dims.cols + c] = row[c] * rstd * weight[c];
            }
        }
        out
    }

    fn random(rng: &mut Rng, dims: NormDims) -> (Vec<f32>, Vec<f32>) {
        (
            rng.vec_uniform(dims.rows * dims.cols, -2.0, 2.0),
            rng.vec_uniform(dims.cols, 0.5, 1.5),
        )
    }

    #[test]
    fn forward_matches_reference() {
        let mut rng = Rng::new(1);
        for dims in [
            NormDims {
                rows: 5,
                cols: 7,
                eps: 1e-5,
            },
            NormDims {
                rows: 100,
                cols: 700,
                eps: 1e-5,
            },
            NormDims {
                rows: 3,
                cols: 1,
                eps: 0.5,
            },
        ] {
            let (x, weight) = random(&mut rng, dims);
            let mut out = vec![0.0; x.len()];
            let mut rstd = vec![0.0; dims.rows];
            forward(dims, &x, &weight, &mut out, &mut rstd).unwrap();
            assert_close(
                "out",
                &out,
                &reference(dims, &to_f64(&x), &to_f64(&weight)),
                1e-5,
                1e-7,
            );
        }
    }

    /// dx and dweight of `Σ p·out` against central differences at every `stride`-th entry,
    /// accumulated onto random starting values.
    fn check_backward(dims: NormDims, stride: usize, rng: &mut Rng) {
        let (x, weight) = random(rng, dims);
        let projection: Vec<f64> = (0..x.len()).map(|_| rng.uniform_in(-1.0, 1.0)).collect();
        let d_out: Vec<f32> = projection.iter().map(|&p| p as f32).collect();
        let mut out = vec![0.0; x.len()];
        let mut rstd = vec![0.0; dims.rows];
        forward(dims, &x, &weight, &mut out, &mut rstd).unwrap();
        let dx0 = rng.vec_uniform(x.len(), -1.0, 1.0);
        let dweight0 = rng.vec_uniform(dims.cols, -1.0, 1.0);
        let (mut dx, mut dweight) = (dx0.clone(), dweight0.clone());
        backward(dims, &x, &weight, &rstd, &d_out, &mut dx, &mut dweight).unwrap();

        let (x64, w64) = (to_f64(&x), to_f64(&weight));
        let loss = |x: &[f64], w: &[f64]| {
            reference(dims, x, w)
                .iter()
                .zip(&projection)
                .map(|(o, p)| o * p)
                .sum::<f64>()
        };
        // The gradient's change at the probed entries.
        let added = |grad: &[f32], start: &[f32], probe: &[usize]| -> Vec<f32> {
            probe.iter().map(|&i| grad[i] - start[i]).collect()
        };
        let probe: Vec<usize> = (0..x.len()).step_by(stride).collect();
        let expected = finite_difference_at(|x| loss(x, &w64), &x64, &probe, 1e-6);
        assert_close("dx", &added(&dx, &dx0, &probe), &expected, 1e-4, 1e-6);
        let probe: Vec<usize> = (0..dims.cols).step_by(stride).collect();
        let expected = finite_difference_at(|w| loss(&x64, w), &w64, &probe, 1e-6);
        assert_close(
            "dweight",
            &added(&dweight, &dweight0, &probe),
            &expected,
            1e-4,
            1e-6,
        );
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = Rng::new(2);
        check_backward(
            NormDims {
                rows: 6,
                cols: 9,
                eps: 1e-5,
            },
            1,
            &mut rng,
        );
        // 4096 columns make jobs of 8 rows: three jobs, the weight gradient summed over all.
        check_backward(
            NormDims {
                rows: 20,
                cols: 4096,
                eps: 1e-5,
            },
            601,
            &mut rng,
        );
    }

    #[test]
    fn same_bits_on_one_and_two_threads() {
        let dims = NormDims {
            rows: 300,
            cols: 512,
            eps: 1e-5,
        };
        let mut rng = Rng::new(3);
        let (x, weight) = random(&mut rng, dims);
        let d_out = rng.vec_uniform(x.len(), -1.0, 1.0);
        let run = |threads: usize| {
            let mut out = vec![0.0; x.len()];
            let mut rstd = vec![0.0; dims.rows];
            let mut dx = vec![0.0; x.len()];
            let mut dweight = vec![0.0; dims.cols];
            on_threads(threads, || {
                forward(dims, &x, &weight, &mut out, &mut rstd)?;
                backward(dims, &x, &weight, &rstd, &d_out, &mut dx, &mut dweight)
            })
            .unwrap();
            [out, rstd, dx, dweight].map(|v| bits(&v))
        };
        assert_eq!(run(1), run(2));
    }

    #[test]
    fn bad_arguments_are_errors() {
        let dims = NormDims {
            rows: 2,
            cols: 3,
            eps: 1e-5,
        };
        let err = forward(dims, &[0.0; 6], &[1.0; 2], &mut [0.0; 6], &mut [0.0; 2]).unwrap_err();
        assert!(matches!(
            err,
            KernelError::Shape {
                tensor: "weight",
                ..
            }
        ));
        let err = forward(dims, &[0.0; 6], &[1.0; 3], &mut [0.0; 6], &mut [0.0; 3]).unwrap_err();
        assert!(matches!(err, KernelError::Shape { tensor: "rstd", .. }));
        let negative = NormDims { eps: -1.0, ..dims };
        let err =
            forward(negative, &[0.0; 6], &[1.0; 3], &mut [0.0; 6], &mut [0.0; 2]).unwrap_err();
        assert!(matches!(
            err,
            KernelError::Invalid {
                op: "rmsnorm_forward",
                ..
            }
        ));
        let empty = NormDims { cols: 0, ..dims };
        let err = backward(empty, &[], &[], &[0.0; 2], &[], &mut [], &mut []).unwrap_err();
        assert!(matches!(
            err,
            KernelError::Invalid {
                op: "rmsnorm_backward",
                ..
            }
        ));
    }
}
