//! `Y = X·Wᵀ` for a few input rows: a linear layer in a decode step (one sequence, or a
//! batch of sequences generated together). The weight is read from memory once, four rows
//! at a time, each group against every input row while it sits in cache, so the product
//! runs at the speed memory delivers the weight (or, at many input rows, at the speed of
//! the multiply-adds); the general GEMM would first pack (transpose) the whole weight,
//! which at a few input rows costs more than the product.
//!
//! Each output is one dot product in sixteen lanes of fused multiply-adds, summed by
//! [`Lanes::sum`]'s fixed tree, then the last `k mod 16` columns in order: its bits depend
//! neither on the other input rows, nor on how rows are grouped or split across threads,
//! nor on the instruction set. A sequence decoded in a batch gets the bits it gets alone.

use crate::lanes::{prefetch_address, run_vectorised, Lanes, Vectorised, LANES};
use crate::parallel::for_each_block_mut;

/// Input rows up to which [`super::gemm`] takes this path for `x·Wᵀ`.
pub(super) const MAX_INPUT_ROWS: usize = 64;

/// Multiply-adds below which a product runs on the calling thread: 64 Ki, about 20 µs of
/// streaming a 256 KiB weight for one input row, several times what handing a share of
/// it to another thread costs (x_proj and dt_proj of a 130M-size layer are above it at
/// one row; every product of the small model below).
const PARALLEL_MIN_WORK: usize = 1 << 16;

/// Weights in the block of rows a thread claims at a time: 64 KiB, a few microseconds of
/// streaming, many times what claiming it costs, and small enough that the threads of a
/// product finish within a few microseconds of each other.
const BLOCK_WEIGHTS: usize = 1 << 14;

/// Weight rows that share one pass over an input row.
const ROWS_AT_ONCE: usize = 4;

/// Input rows that share one pass over a group of weight rows.
const INPUTS_AT_ONCE: usize = 4;

/// `y = x·Wᵀ` (`y += x·Wᵀ` when `accumulate`) with `x` `(m, k)`, `W` `(n, k)` and `y`
/// `(m, n)`, all row-major. Small products run on the calling thread; large ones go to the
/// threads in blocks of weight rows (each output is the same whoever computes it).
pub(super) fn thin_gemm(weight: &[f32], x: &[f32], m: usize, y: &mut [f32], accumulate: bool) {
    assert!(
        m > 0 && x.len().is_multiple_of(m) && y.len().is_multiple_of(m),
        "thin_gemm: {m} input rows"
    );
    let (k, n) = (x.len() / m, y.len() / m);
    assert_eq!(
        weight.len(),
        n * k,
        "thin_gemm: weight is not (y columns, x columns)"
    );
    if k == 0 {
        if !accumulate {
            y.fill(0.0);
        }
        return;
    }
    if m == 1 {
        // One input row: `y` is laid out as the blocks write it.
        return by_weight_rows(weight, x, m, y, accumulate);
    }
    // Blocks of weight rows own columns of `y`; they write them as rows of its transpose.
    let mut transposed = vec![0.0; n * m];
    by_weight_rows(weight, x, m, &mut transposed, false);
    for (i, y_row) in y.chunks_exact_mut(n).enumerate() {
        for (j, out) in y_row.iter_mut().enumerate() {
            store(out, transposed[j * m + i], accumulate);
        }
    }
}

/// `out[j·m + i] = W_j · x_i`, blocks of weight rows on the threads.
fn by_weight_rows(weight: &[f32], x: &[f32], m: usize, out: &mut [f32], accumulate: bool) {
    let k = x.len() / m;
    if weight.len().saturating_mul(m) < PARALLEL_MIN_WORK {
        run_vectorised(Rows {
            weight,
            x,
            m,
            out,
            accumulate,
        });
        return;
    }
    let block = (BLOCK_WEIGHTS / k)
        .next_multiple_of(ROWS_AT_ONCE)
        .max(ROWS_AT_ONCE);
    for_each_block_mut(out, block * m, |first, out| {
        let first = first / m;
        run_vectorised(Rows {
            weight: &weight[first * k..(first + out.len() / m) * k],
            x,
            m,
            out,
            accumulate,
        })
    });
}

/// A block of weight rows against every input row, compiled for the widest instruction
/// set; `out` holds the block's outputs weight row by weight row.
struct Rows<'a> {
    weight: &'a [f32],
    x: &'a [f32],
    m: usize,
    out: &'a mut [f32],
    accumulate: bool,
}

impl Vectorised for Rows<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self {
            weight,
            x,
            m,
            out,
            accumulate,
        } = self;
        let k = x.len() / m;
        let groups = weight.chunks_exact(ROWS_AT_ONCE * k);
        let rest_weight = groups.remainder();
        let grouped = weight.len() / k / ROWS_AT_ONCE * ROWS_AT_ONCE;
        let (grouped_out, rest_out) = out.split_at_mut(grouped * m);
        for (rows, out) in groups.zip(grouped_out.chunks_exact_mut(ROWS_AT_ONCE * m)) {
            let (r0, rest) = rows.split_at(k);
            let (r1, rest) = rest.split_at(k);
            let (r2, r3) = rest.split_at(k);
            against_inputs([r0, r1, r2, r3], x, m, out, accumulate);
        }
        // The last one to three rows go through the same tile, the last row standing in
        // for the missing ones (whose outputs are dropped).
        let rest: Vec<&[f32]> = rest_weight.chunks_exact(k).collect();
        if let Some(&last) = rest.last() {
            let rows = [0, 1, 2, 3].map(|i| rest.get(i).copied().unwrap_or(last));
            let mut four = vec![0.0; ROWS_AT_ONCE * m];
            four[..rest_out.len()].copy_from_slice(rest_out);
            against_inputs(rows, x, m, &mut four, accumulate);
            rest_out.copy_from_slice(&four[..rest_out.len()]);
        }
    }
}

/// Four weight rows against every input row, `INPUTS_AT_ONCE` input rows a pass; `out`
/// is `(4, m)`.
#[inline(always)]
fn against_inputs(
    rows: [&[f32]; ROWS_AT_ONCE],
    x: &[f32],
    m: usize,
    out: &mut [f32],
    accumulate: bool,
) {
    let k = x.len() / m;
    let inputs = x.chunks_exact(INPUTS_AT_ONCE * k);
    let rest = inputs.remainder();
    // Only the first pass reads the rows from memory; it prefetches the next group's.
    let mut prefetch = true;
    let mut first = 0;
    for group in inputs {
        let (x0, more) = group.split_at(k);
        let (x1, more) = more.split_at(k);
        let (x2, x3) = more.split_at(k);
        let dots = tile(rows, [x0, x1, x2, x3], prefetch);
        for (r, row_dots) in dots.iter().enumerate() {
            for (c, &dot) in row_dots.iter().enumerate() {
                store(&mut out[r * m + first + c], dot, accumulate);
            }
        }
        prefetch = false;
        first += INPUTS_AT_ONCE;
    }
    for input in rest.chunks_exact(k) {
        let dots = tile(rows, [input], prefetch);
        for (r, row_dots) in dots.iter().enumerate() {
            store(&mut out[r * m + first], row_dots[0], accumulate);
        }
        prefetch = false;
        first += 1;
    }
}

/// The `4 × X` dot products of `rows` with `inputs`, each weight slice loaded once for all
/// `X` inputs.
#[inline(always)]
fn tile<const X: usize>(
    rows: [&[f32]; ROWS_AT_ONCE],
    inputs: [&[f32]; X],
    prefetch: bool,
) -> [[f32; X]; ROWS_AT_ONCE] {
    // Plain loops only: a closure would be compiled apart, without the wide instruction
    // set, and its `mul_add` would call the software fused multiply-add. A sum array per
    // weight row, not one array of them all: LLVM keeps small arrays in registers.
    let k = inputs[0].len();
    let full = k / LANES * LANES;
    // The hardware prefetchers stop at page boundaries; ask for the next group's rows
    // (one group ahead: far enough to cover memory latency, near enough to stay cached).
    let ahead = ROWS_AT_ONCE * k;
    let (mut s0, mut s1, mut s2, mut s3) = (
        [Lanes::ZERO; X],
        [Lanes::ZERO; X],
        [Lanes::ZERO; X],
        [Lanes::ZERO; X],
    );
    let mut x = [Lanes::ZERO; X];
    for at in (0..full).step_by(LANES) {
        for c in 0..X {
            x[c] = Lanes::load(&inputs[c][at..at + LANES]);
        }
        if prefetch {
            for row in rows {
                prefetch_address(row.as_ptr().wrapping_add(at + ahead));
            }
        }
        add_products(&mut s0, Lanes::load(&rows[0][at..at + LANES]), &x);
        add_products(&mut s1, Lanes::load(&rows[1][at..at + LANES]), &x);
        add_products(&mut s2, Lanes::load(&rows[2][at..at + LANES]), &x);
        add_products(&mut s3, Lanes::load(&rows[3][at..at + LANES]), &x);
    }
    let mut dots = [[0.0; X]; ROWS_AT_ONCE];
    for (r, sums) in [s0, s1, s2, s3].iter().enumerate() {
        for c in 0..X {
            dots[r][c] = finish(sums[c], rows[r], inputs[c], full);
        }
    }
    dots
}

/// `sums[c] += w · x[c]`, fused, lane by lane.
#[inline(always)]
fn add_products<const X: usize>(sums: &mut [Lanes; X], w: Lanes, x: &[Lanes; X]) {
    for c in 0..X {
        sums[c] = w.mul_add(x[c], sums[c]);
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
    fn general(weight: &[f32], x: &[f32], m: usize, y: &mut [f32], accumulate: bool) {
        let (n, k) = (y.len() / m, x.len() / m);
        super::super::product(
            m,
            n,
            k,
            y,
            x,
            (k, 1),
            weight,
            (1, k),
            accumulate,
            ::gemm::Parallelism::None,
        );
    }

    fn dims(m: usize, n: usize, k: usize) -> GemmDims {
        GemmDims {
            m,
            n,
            k,
            transpose_a: false,
            transpose_b: true,
        }
    }

    #[test]
    fn matches_the_general_gemm_on_random_inputs() {
        let mut rng = Rng::new(21);
        // Weight rows around the groups of four, lengths around the lanes, input rows
        // around the groups of four, and decode shapes (x_proj, dt_proj, in_proj, a slice
        // of the LM head) above the parallel size.
        let shapes = [
            (1, 1, 1),
            (1, 3, 7),
            (2, 4, 16),
            (3, 5, 17),
            (5, 9, 33),
            (1, 80, 1536),
            (7, 80, 1536),
            (4, 1536, 48),
            (1, 1536, 768),
            (32, 1536, 768),
            (64, 3001, 768),
        ];
        for (m, rows, k) in shapes {
            let weight = rng.vec_uniform(rows * k, -1.0, 1.0);
            let x = rng.vec_uniform(m * k, -1.0, 1.0);
            let y0 = rng.vec_uniform(m * rows, -1.0, 1.0);
            for accumulate in [false, true] {
                let (mut ours, mut theirs) = (y0.clone(), y0.clone());
                thin_gemm(&weight, &x, m, &mut ours, accumulate);
                general(&weight, &x, m, &mut theirs, accumulate);
                for (at, (&a, &b)) in ours.iter().zip(&theirs).enumerate() {
                    // Both are f32 sums of the same k products: they may differ by rounding,
                    // a few ulp of the sum of the terms' sizes.
                    let (i, j) = (at / rows, at % rows);
                    let row = &weight[j * k..(j + 1) * k];
                    let input = &x[i * k..(i + 1) * k];
                    let size: f32 = row
                        .iter()
                        .zip(input)
                        .map(|(w, x)| (w * x).abs())
                        .sum::<f32>()
                        + if accumulate { y0[at].abs() } else { 0.0 };
                    assert!(
                        (a - b).abs() <= 1e-5 * size,
                        "({m}, {rows}, {k}) output ({i}, {j}) accumulate {accumulate}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_input_row_gets_the_same_bits_alone_in_a_batch_and_on_any_thread_count() {
        let mut rng = Rng::new(22);
        // A 130M-size layer's x_proj and dt_proj (just above the parallel size at one
        // row), a row count that no thread count divides into groups of four, and a large
        // product; batches around the groups of four input rows.
        for (rows, k) in [(80, 1536), (1536, 48), (1001, 768), (2000, 700)] {
            let weight = rng.vec_uniform(rows * k, -1.0, 1.0);
            let x = rng.vec_uniform(9 * k, -1.0, 1.0);
            let mut alone = vec![0.0; 9 * rows];
            for (input, out) in x.chunks_exact(k).zip(alone.chunks_exact_mut(rows)) {
                on_threads(1, || thin_gemm(&weight, input, 1, out, false));
            }
            for m in [1, 4, 5, 9] {
                for threads in [1, 2, 3, 4] {
                    let mut routed = vec![0.0; m * rows];
                    on_threads(threads, || {
                        gemm(dims(m, rows, k), &x[..m * k], &weight, &mut routed, false)
                    })
                    .unwrap();
                    assert!(
                        bits(&routed) == bits(&alone[..m * rows]),
                        "({m}, {rows}, {k}), {threads} threads"
                    );
                }
            }
        }
    }

    #[test]
    fn empty_rows_give_zero_or_keep_y() {
        let mut y = [2.0; 3];
        thin_gemm(&[], &[], 1, &mut y, true);
        assert_eq!(y, [2.0; 3]);
        thin_gemm(&[], &[], 1, &mut y, false);
        assert_eq!(y, [0.0; 3]);
        let mut y = [2.0; 6];
        thin_gemm(&[], &[], 2, &mut y, true);
        assert_eq!(y, [2.0; 6]);
    }
}
