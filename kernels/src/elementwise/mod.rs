//! Small element-wise ops and reductions: residual add, scaling, sum of squares.

pub(crate) mod cuda;

use crate::parallel::{run_jobs, JOB_ELEMENTS};
use crate::{check_len, KernelError};

/// A block of `width` columns of every row, read from one row-major matrix and written into
/// another: how a projection's stacked output is split into its parts and its parts'
/// gradients stacked again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColumnBlock {
    pub rows: usize,
    pub width: usize,
    /// Columns of the source matrix and the block's first column there.
    pub src_cols: usize,
    pub src_first: usize,
    /// Columns of the destination matrix and the block's first column there.
    pub dst_cols: usize,
    pub dst_first: usize,
}

impl ColumnBlock {
    /// Checks that the block fits and that the matrices hold `src` and `dst` elements.
    pub(crate) fn check(
        &self,
        op: &'static str,
        src: usize,
        dst: usize,
    ) -> Result<(), KernelError> {
        let fits = |first: usize, cols: usize| first + self.width <= cols;
        if !fits(self.src_first, self.src_cols) || !fits(self.dst_first, self.dst_cols) {
            return Err(KernelError::Invalid {
                op,
                message: format!("{self:?}: the block does not fit in the rows"),
            });
        }
        let sizes = [
            ("src", self.rows * self.src_cols, src),
            ("dst", self.rows * self.dst_cols, dst),
        ];
        for (tensor, expected, actual) in sizes {
            if expected != actual {
                return Err(KernelError::Shape {
                    op,
                    tensor,
                    expected,
                    actual,
                });
            }
        }
        Ok(())
    }
}

/// Copies `block` from `src` to `dst`; the rest of `dst` is left as it is.
///
/// ```
/// use seqmamba_kernels::elementwise::{copy_columns, ColumnBlock};
/// // The middle column of a 2×3 matrix into the last column of a 2×2 one.
/// let block = ColumnBlock { rows: 2, width: 1, src_cols: 3, src_first: 1, dst_cols: 2, dst_first: 1 };
/// let mut dst = [0.0; 4];
/// copy_columns(block, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &mut dst).unwrap();
/// assert_eq!(dst, [0.0, 2.0, 0.0, 5.0]);
/// ```
pub fn copy_columns(block: ColumnBlock, src: &[f32], dst: &mut [f32]) -> Result<(), KernelError> {
    block.check("copy_columns", src.len(), dst.len())?;
    if block.rows == 0 || block.width == 0 {
        return Ok(());
    }
    for (from, to) in src
        .chunks_exact(block.src_cols)
        .zip(dst.chunks_exact_mut(block.dst_cols))
    {
        to[block.dst_first..][..block.width]
            .copy_from_slice(&from[block.src_first..][..block.width]);
    }
    Ok(())
}

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
    fn copy_columns_checks_the_block_and_splits_a_stacked_matrix() {
        let stacked: Vec<f32> = (0..12).map(|v| v as f32).collect(); // 3 rows × 4
        let block = |width, src_first, dst_cols| ColumnBlock {
            rows: 3,
            width,
            src_cols: 4,
            src_first,
            dst_cols,
            dst_first: 0,
        };
        let mut tail = vec![0.0; 6];
        copy_columns(block(2, 2, 2), &stacked, &mut tail).unwrap();
        assert_eq!(tail, [2.0, 3.0, 6.0, 7.0, 10.0, 11.0]);
        assert!(copy_columns(block(2, 3, 2), &stacked, &mut tail).is_err());
        assert!(copy_columns(block(2, 2, 3), &stacked, &mut tail).is_err());
        let mut nothing: [f32; 0] = [];
        copy_columns(block(0, 0, 0), &stacked, &mut nothing).unwrap();
    }

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
