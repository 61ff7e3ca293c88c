//! Small element-wise ops and reductions: residual add, scaling, sum of squares.

pub(crate) mod cuda;

use crate::parallel::{run_jobs, JOB_ELEMENTS};
use crate::{check_len, KernelError};

/// `out = a + b`.
///
/// ```
/// use seqmamba_kernels::elementwise::add;
/// let mut out = [0.0; 2];
/// add(&[1.0, 2.0], &[3.0, 4.0], &mut out).unwrap();
/// assert_eq!(out, [4.0, 6.0]);
/// assert!(add(&[1.0], &[3.0, 4.0], &mut out).is_err());
/// ```
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
    check_len("add", "b", a.len(), b)?;
    check_len("add", "out", a.len(), out)?;
    let jobs: Vec<_> = out.chunks_mut(JOB_ELEMENTS).collect();
    run_jobs(jobs, |job, out| {
        let start = job * JOB_ELEMENTS;
        let (a, b) = (&a[start..][..out.len()], &b[start..][..out.len()]);
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = x + y;
        }
    });
    Ok(())
}

/// `x *= factor`.
///
/// ```
/// use seqmamba_kernels::elementwise::scale;
/// let mut x = [1.0, -2.0];
/// scale(&mut x, 0.5);
/// assert_eq!(x, [0.5, -1.0]);
/// ```
pub fn scale(x: &mut [f32], factor: f32) {
    let jobs: Vec<_> = x.chunks_mut(JOB_ELEMENTS).collect();
    run_jobs(jobs, |_, x| {
        for v in x {
            *v *= factor;
        }
    });
}

/// `Σ x²` in f64, reduced in a fixed order whatever the thread count.
///
/// `x` is cut into blocks of a fixed size; each block is summed in f64 over eight
/// interleaved lanes (so the loop vectorises), and the block sums are added in order.
///
/// ```
/// use seqmamba_kernels::elementwise::sum_squares;
/// assert_eq!(sum_squares(&[3.0, 4.0]), 25.0);
/// ```
pub fn sum_squares(x: &[f32]) -> f64 {
    const LANES: usize = 8;
    let jobs: Vec<_> = x.chunks(JOB_ELEMENTS).collect();
    let blocks = run_jobs(jobs, |_, block| {
        let mut lanes = [0.0f64; LANES];
        let mut chunks = block.chunks_exact(LANES);
        for chunk in &mut chunks {
            for (lane, &v) in lanes.iter_mut().zip(chunk) {
                *lane += v as f64 * v as f64;
            }
        }
        let tail: f64 = chunks
            .remainder()
            .iter()
            .map(|&v| v as f64 * v as f64)
            .sum();
        lanes.iter().sum::<f64>() + tail
    });
    blocks.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::testing::on_threads;

    #[test]
    fn add_and_scale_are_exact() {
        let mut rng = Rng::new(1);
        let len = 2 * JOB_ELEMENTS + 17;
        let (a, b) = (
            rng.vec_uniform(len, -1.0, 1.0),
            rng.vec_uniform(len, -1.0, 1.0),
        );
        let mut out = vec![0.0; len];
        add(&a, &b, &mut out).unwrap();
        assert!((0..len).all(|i| out[i] == a[i] + b[i]));
        scale(&mut out, -0.3);
        assert!((0..len).all(|i| out[i] == (a[i] + b[i]) * -0.3));
        let err = add(&a, &b, &mut out[1..]).unwrap_err();
        assert!(matches!(
            err,
            KernelError::Shape {
                op: "add",
                tensor: "out",
                ..
            }
        ));
    }

    #[test]
    fn sum_squares_matches_f64_and_has_the_same_bits_on_one_and_two_threads() {
        let mut rng = Rng::new(2);
        let x = rng.vec_uniform(7 * JOB_ELEMENTS + 5, -3.0, 3.0);
        let expected: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
        let run = |threads| on_threads(threads, || sum_squares(&x));
        let one = run(1);
        assert!(
            (one - expected).abs() <= 1e-12 * expected,
            "{one} vs {expected}"
        );
        assert_eq!(one.to_bits(), run(2).to_bits());
        assert_eq!(sum_squares(&[]), 0.0);
    }
}
