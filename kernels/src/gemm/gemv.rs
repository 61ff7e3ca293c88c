//! `y = W·x` for a single input row: a linear layer at batch 1 (a decode step). The
//! weight is read exactly once, row after row, four rows at a time against the same
//! slice of `x`, so the product runs at the speed memory delivers the weight; the general
//! GEMM would pack it first.
//!
//! Each output is one row's dot product in sixteen lanes of fused multiply-adds, summed by
//! [`Lanes::sum`]'s fixed tree, then the last `k mod 16` columns in order: its bits depend
//! neither on how rows are grouped or split across threads nor on the instruction set.

use crate::lanes::{prefetch_address, run_vectorised, Lanes, Vectorised, LANES};
use crate::parallel::for_each_block_mut;

/// Weights below which a product runs on the calling thread: 256 KiB, about 20 µs of
/// streaming, several times what handing a share of it to another thread costs (x_proj and
/// dt_proj of a 130M-size layer are above it; every product of the small model below).
const PARALLEL_MIN_WEIGHTS: usize = 1 << 16;

/// Weights in the block of rows a thread claims at a time: 64 KiB, a few microseconds of
/// streaming, many times what claiming it costs, and small enough that the threads of a
/// product finish within a few microseconds of each other.
const BLOCK_WEIGHTS: usize = 1 << 14;

/// Rows that share one pass over `x`.
const ROWS_AT_ONCE: usize = 4;

/// `y = W·x` (`y += W·x` when `accumulate`) with `W` `(y.len(), x.len())` row-major.
/// Small products run on the calling thread; large ones go to the threads in blocks of rows
/// (each row's dot product is the same whoever computes it).
pub(super) fn gemv(weight: &[f32], x: &[f32], y: &mut [f32], accumulate: bool) {
    let k = x.len();
    assert_eq!(weight.len(), y.len() * k, "gemv: weight is not (y, x)");
    if k == 0 {
        if !accumulate {
            y.fill(0.0);
        }
        return;
    }
    if weight.len() < PARALLEL_MIN_WEIGHTS {
        run_vectorised(Rows {
            weight,
            x,
            y,
            accumulate,
        });
        return;
    }
    let block = (BLOCK_WEIGHTS / k)
        .next_multiple_of(ROWS_AT_ONCE)
        .max(ROWS_AT_ONCE);
    for_each_block_mut(y, block, |first, y| {
        run_vectorised(Rows {
            weight: &weight[first * k..(first + y.len()) * k],
            x,
            y,
            accumulate,
        })
    });
}

/// A block of rows of the product, compiled for the widest instruction set.
struct Rows<'a> {
    weight: &'a [f32],
    x: &'a [f32],
    y: &'a mut [f32],
    accumulate: bool,
}

impl Vectorised for Rows<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self {
            weight,
            x,
            y,
            accumulate,
        } = self;
        // Plain loops only: a closure would be compiled apart, without the wide instruction
        // set, and its `mul_add` would call the software fused multiply-add.
        let k = x.len();
        let full = k / LANES * LANES;
        // The hardware prefetchers stop at page boundaries; ask for the next group's rows
        // (one group ahead: far enough to cover memory latency, near enough to stay cached).
        let ahead = ROWS_AT_ONCE * k;
        let groups = weight.chunks_exact(ROWS_AT_ONCE * k);
        let rest_weight = groups.remainder();
        let (grouped_y, rest_y) = y.split_at_mut(y.len() / ROWS_AT_ONCE * ROWS_AT_ONCE);
        for (rows, out) in groups.zip(grouped_y.chunks_exact_mut(ROWS_AT_ONCE)) {
            let (r0, rest) = rows.split_at(k);
            let (r1, rest) = rest.split_at(k);
            let (r2, r3) = rest.split_at(k);
            let rows = [r0, r1, r2, r3];
            let mut sums = [Lanes::ZERO; ROWS_AT_ONCE];
            for at in (0..full).step_by(LANES) {
                let x = Lanes::load(&x[at..at + LANES]);
                for (sum, row) in sums.iter_mut().zip(rows) {
                    prefetch_address(row.as_ptr().wrapping_add(at + ahead));
                    *sum = Lanes::load(&row[at..at + LANES]).mul_add(x, *sum);
                }
            }
            for ((out, sum), row) in out.iter_mut().zip(sums).zip(rows) {
                store(out, finish(sum, row, x, full), accumulate);
            }
        }
        for (row, out) in rest_weight.chunks_exact(k).zip(rest_y) {
            let mut sum = Lanes::ZERO;
            for at in (0..full).step_by(LANES) {
                let x = Lanes::load(&x[at..at + LANES]);
                sum = Lanes::load(&row[at..at + LANES]).mul_add(x, sum);
            }
            store(out, finish(sum, row, x, full), accumulate);
        }
    }
}

/// The dot product from the lane sums of the first `full` columns: their fixed-tree sum,
/// then the remaining columns one by one.
#[inline(always)]
fn finish(sum: Lanes, row: &[f32], x: &[f32], full: usize) -> f32 {
    let mut total = if full == 0 { 0.0 } else { sum.sum() };
    for (&w, &x) in row[full..].iter().zip(&x[full..]) {
        total = w.mul_add(x, total);
    }
    total
}

#[inline(always)]
fn store(out: &mut f32, dot: f32, accumulate: bool) {
    *out = if accumulate { *out + dot } else { dot };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::{gemm, GemmDims};
    use crate::rng::Rng;
    use crate::testing::{bits, on_threads};

    /// The general GEMM on the same product, by the `gemm` crate's own kernels.
    fn general(weight: &[f32], x: &[f32], y: &mut [f32], accumulate: bool) {
        let (n, k) = (y.len(), x.len());
        let strides = ((k, 1), (1, k));
        super::super::product(
            1,
            n,
            k,
            y,
            x,
            strides.0,
            weight,
            strides.1,
            accumulate,
            ::gemm::Parallelism::None,
        );
    }

    #[test]
    fn matches_the_general_gemm_on_random_inputs() {
        let mut rng = Rng::new(21);
        // Row counts around the groups of four, lengths around the lanes, and the decode
        // shapes (x_proj, dt_proj, in_proj, a slice of the LM head) above the parallel size.
        let shapes = [
            (1, 1),
            (3, 7),
            (4, 16),
            (5, 17),
            (9, 33),
            (80, 1536),
            (1536, 48),
            (1536, 768),
            (3001, 768),
        ];
        for (rows, k) in shapes {
            let weight = rng.vec_uniform(rows * k, -1.0, 1.0);
            let x = rng.vec_uniform(k, -1.0, 1.0);
            let y0 = rng.vec_uniform(rows, -1.0, 1.0);
            for accumulate in [false, true] {
                let (mut ours, mut theirs) = (y0.clone(), y0.clone());
                gemv(&weight, &x, &mut ours, accumulate);
                general(&weight, &x, &mut theirs, accumulate);
                for (i, (&a, &b)) in ours.iter().zip(&theirs).enumerate() {
                    // Both are f32 sums of the same k products: they may differ by rounding,
                    // a few ulp of the sum of the terms' sizes.
                    let row = &weight[i * k..(i + 1) * k];
                    let size: f32 = row.iter().zip(&x).map(|(w, x)| (w * x).abs()).sum::<f32>()
                        + if accumulate { y0[i].abs() } else { 0.0 };
                    assert!(
                        (a - b).abs() <= 1e-5 * size,
                        "({rows}, {k}) row {i} accumulate {accumulate}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn routes_batch_one_linear_layers_and_keeps_the_bits_across_threads() {
        let mut rng = Rng::new(22);
        // A 130M-size layer's x_proj and dt_proj (just above the parallel size), a row
        // count that no thread count divides into groups of four, and a large product.
        for (rows, k) in [(80, 1536), (1536, 48), (1001, 768), (2000, 700)] {
            let weight = rng.vec_uniform(rows * k, -1.0, 1.0);
            let x = rng.vec_uniform(k, -1.0, 1.0);
            let mut direct = vec![0.0; rows];
            on_threads(1, || gemv(&weight, &x, &mut direct, false));
            let dims = GemmDims {
                m: 1,
                n: rows,
                k,
                transpose_a: false,
                transpose_b: true,
            };
            for threads in [1, 2, 3, 4] {
                let mut routed = vec![0.0; rows];
                on_threads(threads, || gemm(dims, &x, &weight, &mut routed, false)).unwrap();
                assert!(
                    bits(&routed) == bits(&direct),
                    "({rows}, {k}), {threads} threads"
                );
            }
        }
    }

    #[test]
    fn empty_rows_give_zero_or_keep_y() {
        let mut y = [2.0; 3];
        gemv(&[], &[], &mut y, true);
        assert_eq!(y, [2.0; 3]);
        gemv(&[], &[], &mut y, false);
        assert_eq!(y, [0.0; 3]);
    }
}
