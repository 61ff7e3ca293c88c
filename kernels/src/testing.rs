//! Helpers for gradient checks and backend comparisons, shared by the tests of every crate.

/// Central finite-difference gradient of the scalar `f` at `x`, in f64.
///
/// ```
/// use seqmamba_kernels::testing::finite_difference;
/// let g = finite_difference(|x| x[0] * x[0] + 3.0 * x[1], &[2.0, 5.0], 1e-5);
/// assert!((g[0] - 4.0).abs() < 1e-6 && (g[1] - 3.0).abs() < 1e-6);
/// ```
pub fn finite_difference(f: impl Fn(&[f64]) -> f64, x: &[f64], step: f64) -> Vec<f64> {
    let mut probe = x.to_vec();
    (0..x.len())
        .map(|i| {
            probe[i] = x[i] + step;
            let up = f(&probe);
            probe[i] = x[i] - step;
            let down = f(&probe);
            probe[i] = x[i];
            (up - down) / (2.0 * step)
        })
        .collect()
}

/// Central finite-difference derivatives of the scalar `f` at `x` with respect to the
/// entries `probe` of `x` only, in f64: for gradient checks of tensors too large to
/// perturb every entry.
///
/// ```
/// use seqmamba_kernels::testing::finite_difference_at;
/// let g = finite_difference_at(|x| x[0] * x[1] + x[2], &[2.0, 5.0, 1.0], &[2, 0], 1e-5);
/// assert!((g[0] - 1.0).abs() < 1e-6 && (g[1] - 5.0).abs() < 1e-6);
/// ```
pub fn finite_difference_at(
    f: impl Fn(&[f64]) -> f64,
    x: &[f64],
    probe: &[usize],
    step: f64,
) -> Vec<f64> {
    let mut point = x.to_vec();
    probe
        .iter()
        .map(|&i| {
            point[i] = x[i] + step;
            let up = f(&point);
            point[i] = x[i] - step;
            let down = f(&point);
            point[i] = x[i];
            (up - down) / (2.0 * step)
        })
        .collect()
}

/// Largest error of `actual` against `expected`, relative to the larger of `atol` and
/// `rtol · max|expected|`, as a ratio: at most 1 means close. Scaling by the whole
/// tensor's magnitude keeps near-zero entries from failing on rounding noise while a wrong
/// entry of ordinary size still fails.
pub fn max_scaled_error(actual: &[f32], expected: &[f64], rtol: f64, atol: f64) -> f64 {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    let scale = expected.iter().fold(0.0f64, |m, e| m.max(e.abs()));
    let allowed = (rtol * scale).max(atol);
    actual
        .iter()
        .zip(expected)
        .map(|(&a, &e)| (a as f64 - e).abs() / allowed)
        .fold(0.0, f64::max)
}

/// Panics naming `what` and the worst entry unless [`max_scaled_error`] is at most 1.
///
/// ```
/// use seqmamba_kernels::testing::assert_close;
/// assert_close("y", &[1.0, 2.0], &[1.0, 2.000001], 1e-5, 1e-7);
/// ```
pub fn assert_close(what: &str, actual: &[f32], expected: &[f64], rtol: f64, atol: f64) {
    let error = max_scaled_error(actual, expected, rtol, atol);
    if error > 1.0 {
        let (worst, _) = actual
            .iter()
            .zip(expected)
            .enumerate()
            .map(|(i, (&a, &e))| (i, (a as f64 - e).abs()))
            .fold(
                (0, 0.0),
                |best, cur| if cur.1 > best.1 { cur } else { best },
            );
        panic!(
            "{what}: error {error:.3}× the tolerance; worst at index {worst}: got {}, expected {}",
            actual[worst], expected[worst]
        );
    }
}

/// `xs` widened to f64.
pub fn to_f64(xs: &[f32]) -> Vec<f64> {
    xs.iter().map(|&x| x as f64).collect()
}

/// Runs `work` on a fresh rayon pool of `threads` threads, to check that an op returns the
/// same bits on any number of threads.
///
/// ```
/// use seqmamba_kernels::testing::on_threads;
/// assert_eq!(on_threads(2, rayon::current_num_threads), 2);
/// ```
pub fn on_threads<R: Send>(threads: usize, work: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("cannot start a rayon thread pool")
        .install(work)
}

/// The bit patterns of `xs`, to compare results exactly.
///
/// ```
/// use seqmamba_kernels::testing::bits;
/// assert_ne!(bits(&[0.0]), bits(&[-0.0]));
/// ```
pub fn bits(xs: &[f32]) -> Vec<u32> {
    xs.iter().map(|x| x.to_bits()).collect()
}
