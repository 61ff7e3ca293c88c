//! Matrix multiplication, row-major, f32: the linear layers' forward and backward.

pub(crate) mod cuda;
mod thin;

use gemm::Parallelism;

use crate::parallel::run_jobs;
use crate::{check_len, element_count, KernelError};

/// Products with fewer multiply-adds than this run on the calling thread: below it the
/// `gemm` crate would not split the work anyway, and handing it to the pool costs more
/// than it saves.
const PARALLEL_MIN_WORK: usize = 48 * 48 * 256;

/// Columns per job of a large single-row product with `b` not transposed (e.g. a linear
/// layer's input gradient at one token).
const ROW_VECTOR_COLUMNS: usize = 256;

/// Shape of `c (m×n) = op(a) · op(b)`.
///
/// `a` is stored `m×k` row-major, or `k×m` when `transpose_a`; `b` is stored `k×n`, or
/// `n×k` when `transpose_b`. A linear layer `y = x·Wᵀ` with `x: (t, in)` and
/// `W: (out, in)` is `GemmDims { m: t, n: out, k: in, transpose_a: false, transpose_b: true }`;
/// its weight gradient `dW += dyᵀ·x` is `GemmDims { m: out, n: in, k: t, transpose_a: true,
/// transpose_b: false }` with `accumulate`.
///
/// ```
/// use seqmamba_kernels::gemm::{gemm, GemmDims};
/// let dims = GemmDims { m: 1, n: 2, k: 2, transpose_a: false, transpose_b: true };
/// let x = [1.0, 2.0];
/// let w = [1.0, 0.0, 0.0, 3.0]; // (out = 2, in = 2)
/// let mut y = [0.0; 2];
/// gemm(dims, &x, &w, &mut y, false).unwrap();
/// assert_eq!(y, [1.0, 6.0]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmDims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub transpose_a: bool,
    pub transpose_b: bool,
}

/// `c = op(a)·op(b)`, or `c += op(a)·op(b)` when `accumulate`.
///
/// Sums over `k` are f32, in an order fixed by the shape: the result has the same bits
/// whatever the size of rayon's thread pool (the `gemm` crate splits only `m` and `n`
/// across threads and walks `k` in sequential blocks; single-row products, which the crate
/// runs on one thread, are split into column blocks here). Up to 64 rows times `bᵀ` (a
/// linear layer in a decode step, of one sequence or a batch) is a product of our own that
/// streams `b` once, each output row with the bits it has alone. Zero-sized products are allowed;
/// `k = 0` gives `c = 0` (or leaves `c` as it is when accumulating).
///
/// ```
/// use seqmamba_kernels::gemm::{gemm, GemmDims};
/// let dims = GemmDims { m: 2, n: 1, k: 2, transpose_a: false, transpose_b: false };
/// let mut c = [1.0, 1.0];
/// gemm(dims, &[1.0, 2.0, 3.0, 4.0], &[1.0, 1.0], &mut c, true).unwrap();
/// assert_eq!(c, [4.0, 8.0]);
/// ```
pub fn gemm(
    dims: GemmDims,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
) -> Result<(), KernelError> {
    let GemmDims { m, n, k, .. } = dims;
    check_len("gemm", "a", element_count("gemm", &[m, k])?, a)?;
    check_len("gemm", "b", element_count("gemm", &[k, n])?, b)?;
    check_len("gemm", "c", element_count("gemm", &[m, n])?, c)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    // Element (i, p) of op(a) lies at i·a_rows + p·a_cols; likewise for b.
    let a_strides = if dims.transpose_a { (1, m) } else { (k, 1) };
    let b_strides = if dims.transpose_b { (1, k) } else { (n, 1) };
    if m <= thin::MAX_INPUT_ROWS && dims.transpose_b && !dims.transpose_a {
        // A few rows times Wᵀ: a linear layer in a decode step, streaming W once.
        thin::thin_gemm(b, a, m, c, accumulate);
        return Ok(());
    }
    let work = m.saturating_mul(n).saturating_mul(k);
    if work < PARALLEL_MIN_WORK {
        product(
            m,
            n,
            k,
            c,
            a,
            a_strides,
            b,
            b_strides,
            accumulate,
            Parallelism::None,
        );
    } else if m == 1 {
        // The crate's matrix-vector path runs on one thread: split the columns by hand, in
        // blocks fixed by the shape so the bits do not depend on the thread count.
        let jobs: Vec<_> = c.chunks_mut(ROW_VECTOR_COLUMNS).collect();
        run_jobs(jobs, |job, c| {
            let b = &b[job * ROW_VECTOR_COLUMNS * b_strides.1..];
            let columns = c.len();
            product(
                1,
                columns,
                k,
                c,
                a,
                a_strides,
                b,
                b_strides,
                accumulate,
                Parallelism::None,
            );
        });
    } else {
        let parallelism = match rayon::current_num_threads() {
            1 => Parallelism::None,
            threads => Parallelism::Rayon(threads),
        };
        product(
            m,
            n,
            k,
            c,
            a,
            a_strides,
            b,
            b_strides,
            accumulate,
            parallelism,
        );
    }
    Ok(())
}

/// Elements a row-major view of `rows × cols` with strides `(row, col)` spans from its
/// first element.
fn reach(rows: usize, cols: usize, (row_stride, col_stride): (usize, usize)) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * row_stride + (cols - 1) * col_stride + 1
    }
}

/// `c (m×n, rows n apart) = op(a)·op(b)` (`+=` when `accumulate`) by the `gemm` crate,
/// with `op(a)` and `op(b)` given by their (row, column) strides into `a` and `b`.
#[allow(clippy::too_many_arguments)]
fn product(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
    accumulate: bool,
    parallelism: Parallelism,
) {
    // These hold by construction in `gemm`; checked because the call below trusts them.
    assert!(reach(m, n, (n, 1)) <= c.len(), "gemm: c too short");
    assert!(reach(m, k, a_strides) <= a.len(), "gemm: a too short");
    assert!(reach(k, n, b_strides) <= b.len(), "gemm: b too short");
    let stride = |s: usize| s as isize; // slices hold at most isize::MAX bytes
                                        // SAFETY: the assertions keep every index `i·rs + j·cs` the crate forms inside its
                                        // slice, and `c` is a unique borrow, aliasing neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            stride(n),
            accumulate,
            a.as_ptr(),
            stride(a_strides.1),
            stride(a_strides.0),
            b.as_ptr(),
            stride(b_strides.1),
            stride(b_strides.0),
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Every transpose and accumulate mode of an `m×n×k` product, for tests.
#[cfg(test)]
pub(crate) fn every_mode(m: usize, n: usize, k: usize) -> impl Iterator<Item = (GemmDims, bool)> {
    [false, true].into_iter().flat_map(move |transpose_a| {
        [false, true].into_iter().flat_map(move |transpose_b| {
            let dims = GemmDims {
                m,
                n,
                k,
                transpose_a,
                transpose_b,
            };
            [false, true].map(|accumulate| (dims, accumulate))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::testing::{assert_close, bits, on_threads, to_f64};

    /// `op(a)·op(b)` (+ `c` when accumulating) in f64, by the definition.
    fn reference(dims: GemmDims, a: &[f64], b: &[f64], c: &[f64], accumulate: bool) -> Vec<f64> {
        let GemmDims { m, n, k, .. } = dims;
        let a_at = |i: usize, p: usize| {
            if dims.transpose_a {
                a[p * m + i]
            } else {
                a[i * k + p]
            }
        };
        let b_at = |p: usize, j: usize| {
            if dims.transpose_b {
                b[j * k + p]
            } else {
                b[p * n + j]
            }
        };
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k).map(|p| a_at(i, p) * b_at(p, j)).sum();
                out[i * n + j] = if accumulate { c[i * n + j] + dot } else { dot };
            }
        }
        out
    }

    #[test]
    fn matches_reference_for_every_transpose_and_accumulate() {
        let mut rng = Rng::new(11);
        let shapes = [
            (1, 1, 1),
            (3, 5, 7),
            (17, 33, 9),
            (1, 40, 31),
            (40, 1, 31),
            (65, 70, 130),
            (1, 3000, 300),
        ];
        for (m, n, k) in shapes {
            for (dims, accumulate) in every_mode(m, n, k) {
                let a = rng.vec_uniform(m * k, -1.0, 1.0);
                let b = rng.vec_uniform(k * n, -1.0, 1.0);
                let c0 = rng.vec_uniform(m * n, -1.0, 1.0);
                let mut c = c0.clone();
                gemm(dims, &a, &b, &mut c, accumulate).unwrap();
                let expected = reference(dims, &to_f64(&a), &to_f64(&b), &to_f64(&c0), accumulate);
                assert_close(
                    &format!("{dims:?} acc {accumulate}"),
                    &c,
                    &expected,
                    1e-5,
                    1e-7,
                );
            }
        }
    }

    #[test]
    fn empty_inner_dimension_zeroes_or_keeps_c() {
        let dims = GemmDims {
            m: 2,
            n: 2,
            k: 0,
            transpose_a: false,
            transpose_b: false,
        };
        let mut c = [1.0; 4];
        gemm(dims, &[], &[], &mut c, true).unwrap();
        assert_eq!(c, [1.0; 4]);
        gemm(dims, &[], &[], &mut c, false).unwrap();
        assert_eq!(c, [0.0; 4]);
    }

    #[test]
    fn same_bits_on_one_and_two_threads() {
        let mut rng = Rng::new(5);
        let shapes = [(190, 260, 700), (1, 3000, 300)];
        let transposes = [(false, true), (true, false), (false, false)];
        for ((m, n, k), (transpose_a, transpose_b)) in shapes
            .into_iter()
            .flat_map(|shape| transposes.map(|t| (shape, t)))
        {
            let dims = GemmDims {
                m,
                n,
                k,
                transpose_a,
                transpose_b,
            };
            let a = rng.vec_uniform(dims.m * dims.k, -1.0, 1.0);
            let b = rng.vec_uniform(dims.k * dims.n, -1.0, 1.0);
            let c0 = rng.vec_uniform(dims.m * dims.n, -1.0, 1.0);
            let run = |threads: usize| {
                let mut c = c0.clone();
                on_threads(threads, || gemm(dims, &a, &b, &mut c, true)).unwrap();
                bits(&c)
            };
            let one = run(1);
            for threads in [2, 3] {
                assert!(
                    one == run(threads),
                    "{dims:?}: 1 and {threads} threads differ"
                );
            }
        }
    }

    #[test]
    fn wrong_sizes_are_shape_errors() {
        let dims = GemmDims {
            m: 2,
            n: 3,
            k: 4,
            transpose_a: false,
            transpose_b: false,
        };
        let err = gemm(dims, &[0.0; 7], &[0.0; 12], &mut [0.0; 6], false).unwrap_err();
        assert!(matches!(
            err,
            KernelError::Shape {
                tensor: "a",
                expected: 8,
                actual: 7,
                ..
            }
        ));
        let err = gemm(dims, &[0.0; 8], &[0.0; 12], &mut [0.0; 5], false).unwrap_err();
        assert!(matches!(err, KernelError::Shape { tensor: "c", .. }));
        let huge = GemmDims {
            m: usize::MAX,
            n: 2,
            k: 2,
            transpose_a: false,
            transpose_b: false,
        };
        let err = gemm(huge, &[], &[], &mut [], false).unwrap_err();
        assert!(matches!(err, KernelError::Invalid { op: "gemm", .. }));
    }
}
