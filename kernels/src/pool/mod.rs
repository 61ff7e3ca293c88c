//! Sequence pooling and per-row reversal for the classification heads.
//!
//! Each batch row is one job; rows never share outputs, so results do not depend on the
//! number of threads.

pub(crate) mod cuda;

use crate::parallel::run_jobs;
use crate::{check_len, element_count, KernelError};

/// Shape of `(batch, len, dim)` right-padded rows of `lengths[b]` valid positions.
///
/// ```
/// use seqmamba_kernels::pool::PoolDims;
/// let dims = PoolDims { batch: 16, len: 1024, dim: 256 };
/// # let _ = dims;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolDims {
    pub batch: usize,
    pub len: usize,
    pub dim: usize,
}

impl PoolDims {
    /// Checks `lengths` and returns the elements of `(batch, len, dim)`.
    pub(crate) fn check(&self, op: &'static str, lengths: &[u32]) -> Result<usize, KernelError> {
        check_len(op, "lengths", self.batch, lengths)?;
        if let Some(row) = lengths
            .iter()
            .position(|&n| n == 0 || n as usize > self.len)
        {
            return Err(KernelError::Invalid {
                op,
                message: format!(
                    "length {} of row {row} is not in 1..={}",
                    lengths[row], self.len
                ),
            });
        }
        element_count(op, &[self.batch, self.len, self.dim])
    }
}

/// How a sequence becomes one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the valid positions (padding never averaged in).
    Mean,
    /// The last valid position.
    Last,
}

/// `out[b]` `(batch, dim)` pools row `b`'s first `lengths[b]` positions; a length of 0 or
/// above `len` is an error naming the row. The mean is summed in f32, then divided.
///
/// ```
/// use seqmamba_kernels::pool::{forward, PoolDims, Pooling};
/// let dims = PoolDims { batch: 1, len: 3, dim: 1 };
/// let mut out = [0.0];
/// forward(dims, Pooling::Mean, &[2], &[1.0, 3.0, 100.0], &mut out).unwrap();
/// assert_eq!(out, [2.0]);
/// forward(dims, Pooling::Last, &[2], &[1.0, 3.0, 100.0], &mut out).unwrap();
/// assert_eq!(out, [3.0]);
/// ```
pub fn forward(
    dims: PoolDims,
    pooling: Pooling,
    lengths: &[u32],
    x: &[f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    const OP: &str = "pool_forward";
    let elements = dims.check(OP, lengths)?;
    check_len(OP, "x", elements, x)?;
    check_len(OP, "out", dims.batch * dims.dim, out)?;
    if out.is_empty() {
        return Ok(());
    }
    let PoolDims { len, dim, .. } = dims;
    let jobs: Vec<_> = out.chunks_mut(dim).collect();
    run_jobs(jobs, |b, out| {
        let n = lengths[b] as usize;
        let row = &x[b * len * dim..][..n * dim];
        match pooling {
            Pooling::Mean => {
                out.fill(0.0);
                for x_t in row.chunks_exact(dim) {
                    for (o, &v) in out.iter_mut().zip(x_t) {
                        *o += v;
                    }
                }
                for o in out.iter_mut() {
                    *o /= n as f32;
                }
            }
            Pooling::Last => out.copy_from_slice(&row[(n - 1) * dim..]),
        }
    });
    Ok(())
}

/// Gradient of [`forward`]: `dx` is overwritten (zero at padding).
///
/// ```
/// use seqmamba_kernels::pool::{backward, PoolDims, Pooling};
/// let dims = PoolDims { batch: 1, len: 3, dim: 1 };
/// let mut dx = [f32::NAN; 3];
/// backward(dims, Pooling::Mean, &[2], &[4.0], &mut dx).unwrap();
/// assert_eq!(dx, [2.0, 2.0, 0.0]);
/// backward(dims, Pooling::Last, &[2], &[4.0], &mut dx).unwrap();
/// assert_eq!(dx, [0.0, 4.0, 0.0]);
/// ```
pub fn backward(
    dims: PoolDims,
    pooling: Pooling,
    lengths: &[u32],
    d_out: &[f32],
    dx: &mut [f32],
) -> Result<(), KernelError> {
    const OP: &str = "pool_backward";
    let elements = dims.check(OP, lengths)?;
    check_len(OP, "d_out", dims.batch * dims.dim, d_out)?;
    check_len(OP, "dx", elements, dx)?;
    if dx.is_empty() {
        return Ok(());
    }
    let PoolDims { len, dim, .. } = dims;
    let jobs: Vec<_> = dx.chunks_mut(len * dim).collect();
    run_jobs(jobs, |b, dx| {
        let n = lengths[b] as usize;
        let d_out = &d_out[b * dim..][..dim];
        let (valid, padding) = dx.split_at_mut(n * dim);
        padding.fill(0.0);
        match pooling {
            Pooling::Mean => {
                for dx_t in valid.chunks_exact_mut(dim) {
                    for (g, &d) in dx_t.iter_mut().zip(d_out) {
                        *g = d / n as f32;
                    }
                }
            }
            Pooling::Last => {
                let (before, last) = valid.split_at_mut((n - 1) * dim);
                before.fill(0.0);
                last.copy_from_slice(d_out);
            }
        }
    });
    Ok(())
}

/// `out[b, t] = x[b, lengths[b]-1-t]` for `t < lengths[b]`, zero at padding: the reversed
/// pass of a bidirectional layer. It is its own gradient.
///
/// ```
/// use seqmamba_kernels::pool::{reverse, PoolDims};
/// let dims = PoolDims { batch: 1, len: 4, dim: 1 };
/// let mut out = [f32::NAN; 4];
/// reverse(dims, &[3], &[1.0, 2.0, 3.0, 9.0], &mut out).unwrap();
/// assert_eq!(out, [3.0, 2.0, 1.0, 0.0]);
/// ```
pub fn reverse(
    dims: PoolDims,
    lengths: &[u32],
    x: &[f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    const OP: &str = "reverse";
    let elements = dims.check(OP, lengths)?;
    check_len(OP, "x", elements, x)?;
    check_len(OP, "out", elements, out)?;
    if out.is_empty() {
        return Ok(());
    }
    let PoolDims { len, dim, .. } = dims;
    let jobs: Vec<_> = out.chunks_mut(len * dim).collect();
    run_jobs(jobs, |b, out| {
        let n = lengths[b] as usize;
        let row = &x[b * len * dim..][..n * dim];
        let (valid, padding) = out.split_at_mut(n * dim);
        padding.fill(0.0);
        for (out_t, x_t) in valid.chunks_exact_mut(dim).zip(row.chunks_exact(dim).rev()) {
            out_t.copy_from_slice(x_t);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::testing::{assert_close, finite_difference, to_f64};

    /// Pooled rows in f64, by the definition.
    fn reference(dims: PoolDims, pooling: Pooling, lengths: &[u32], x: &[f64]) -> Vec<f64> {
        let PoolDims { batch, len, dim } = dims;
        let mut out = vec![0.0; batch * dim];
        for b in 0..batch {
            let n = lengths[b] as usize;
            for c in 0..dim {
                let at = |t: usize| x[(b * len + t) * dim + c];
                out[b * dim + c] = match pooling {
                    Pooling::Mean => (0..n).map(at).sum::<f64>() / n as f64,
                    Pooling::Last => at(n - 1),
                };
            }
        }
        out
    }

    /// Rows of random lengths, one of them full and one of length 1.
    fn random_case(rng: &mut Rng, dims: PoolDims) -> (Vec<u32>, Vec<f32>) {
        let mut lengths: Vec<u32> = (0..dims.batch)
            .map(|_| 1 + rng.below(dims.len as u64) as u32)
            .collect();
        lengths[0] = dims.len as u32;
        lengths[1] = 1;
        (
            lengths,
            rng.vec_uniform(dims.batch * dims.len * dims.dim, -1.0, 1.0),
        )
    }

    #[test]
    fn forward_matches_reference() {
        let mut rng = Rng::new(1);
        let dims = PoolDims {
            batch: 5,
            len: 9,
            dim: 6,
        };
        let (lengths, x) = random_case(&mut rng, dims);
        for pooling in [Pooling::Mean, Pooling::Last] {
            let mut out = vec![0.0; dims.batch * dims.dim];
            forward(dims, pooling, &lengths, &x, &mut out).unwrap();
            let expected = reference(dims, pooling, &lengths, &to_f64(&x));
            assert_close(&format!("{pooling:?}"), &out, &expected, 1e-6, 1e-7);
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = Rng::new(2);
        let dims = PoolDims {
            batch: 4,
            len: 7,
            dim: 3,
        };
        let (lengths, x) = random_case(&mut rng, dims);
        let projection: Vec<f64> = (0..dims.batch * dims.dim)
            .map(|_| rng.uniform_in(-1.0, 1.0))
            .collect();
        let d_out: Vec<f32> = projection.iter().map(|&p| p as f32).collect();
        for pooling in [Pooling::Mean, Pooling::Last] {
            let mut dx = vec![f32::NAN; x.len()];
            backward(dims, pooling, &lengths, &d_out, &mut dx).unwrap();
            let loss = |x: &[f64]| {
                let out = reference(dims, pooling, &lengths, x);
                out.iter().zip(&projection).map(|(o, p)| o * p).sum::<f64>()
            };
            let expected = finite_difference(loss, &to_f64(&x), 1e-6);
            assert_close(&format!("{pooling:?} dx"), &dx, &expected, 1e-5, 1e-7);
        }
    }

    #[test]
    fn reverse_matches_definition_and_is_its_own_gradient() {
        let mut rng = Rng::new(3);
        let dims = PoolDims {
            batch: 3,
            len: 6,
            dim: 2,
        };
        let (lengths, x) = random_case(&mut rng, dims);
        let reversed = |x: &[f64]| {
            let mut out = vec![0.0; x.len()];
            for b in 0..dims.batch {
                let n = lengths[b] as usize;
                for t in 0..n {
                    for c in 0..dims.dim {
                        out[(b * dims.len + t) * dims.dim + c] =
                            x[(b * dims.len + n - 1 - t) * dims.dim + c];
                    }
                }
            }
            out
        };
        let mut out = vec![f32::NAN; x.len()];
        reverse(dims, &lengths, &x, &mut out).unwrap();
        assert_eq!(to_f64(&out), reversed(&to_f64(&x)));

        let projection: Vec<f64> = (0..x.len()).map(|_| rng.uniform_in(-1.0, 1.0)).collect();
        let loss = |x: &[f64]| {
            reversed(x)
                .iter()
                .zip(&projection)
                .map(|(o, p)| o * p)
                .sum::<f64>()
        };
        let expected = finite_difference(loss, &to_f64(&x), 1e-6);
        let d_out: Vec<f32> = projection.iter().map(|&p| p as f32).collect();
        let mut dx = vec![f32::NAN; x.len()];
        reverse(dims, &lengths, &d_out, &mut dx).unwrap();
        assert_close("reverse gradient", &dx, &expected, 1e-6, 1e-9);
    }

    #[test]
    fn bad_lengths_are_errors() {
        let dims = PoolDims {
            batch: 2,
            len: 3,
            dim: 1,
        };
        let x = [0.0; 6];
        let mut out = [0.0; 2];
        for lengths in [[0, 1], [1, 4]] {
            let err = forward(dims, Pooling::Mean, &lengths, &x, &mut out).unwrap_err();
            match err {
                KernelError::Invalid { op, message } => {
                    assert_eq!(op, "pool_forward");
                    assert!(message.contains("row"), "{message}");
                }
                other => panic!("expected Invalid, got {other:?}"),
            }
        }
        let err = backward(dims, Pooling::Last, &[1, 0], &out, &mut [0.0; 6]).unwrap_err();
        assert!(matches!(
            err,
            KernelError::Invalid {
                op: "pool_backward",
                ..
            }
        ));
        let err = reverse(dims, &[1], &x, &mut [0.0; 6]).unwrap_err();
        assert!(matches!(
            err,
            KernelError::Shape {
                tensor: "lengths",
                ..
            }
        ));
        let err = forward(dims, Pooling::Last, &[1, 1], &x[..5], &mut out).unwrap_err();
        assert!(matches!(err, KernelError::Shape { tensor: "x", .. }));
    }
}
