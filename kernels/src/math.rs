//! Scalar functions written so that loops calling them auto-vectorise: no libm calls, no
//! branches, only arithmetic and bit casts (the standard `f32::exp` is an opaque call that
//! keeps every loop around it scalar); and reductions over interleaved partial sums, which
//! vectorise where a plain f32 `sum()` (strictly in order) cannot.

/// `e^x` in f32, within 2 ulp of the exact value for normal results; `+inf` above
/// ~88.72, `0` below ~-87.3 (no subnormal results), `NaN` for `NaN`.
///
/// Range reduction `x = n·ln2 + r` with `|r| ≤ ln2/2`, a degree-7 Taylor polynomial for
/// `e^r`, and `2^n` built from its exponent bits. Rounding to `n` uses the
/// `1.5·2^23` trick, which needs no SSE4.1 `round` instruction.
///
/// ```
/// use seqmamba_kernels::math::exp;
/// assert_eq!(exp(0.0), 1.0);
/// assert!((exp(1.0) - std::f32::consts::E).abs() <= f32::EPSILON * 3.0);
/// assert_eq!(exp(-200.0), 0.0);
/// assert_eq!(exp(200.0), f32::INFINITY);
/// ```
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const ROUNDER: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer
    const LN2_HI: f32 = 0.693_359_4; // ln 2 split so that n·LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = x.clamp(-87.3, 88.8);
    let shifted = clamped * std::f32::consts::LOG2_E + ROUNDER;
    let n = shifted - ROUNDER;
    let r = (clamped - n * LN2_HI) - n * LN2_LO;
    // e^r by Horner on 1 + r + r²/2! + … + r⁷/7!.
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // 2^n: n sits in the low mantissa bits of `shifted`. It can reach 128 at the top, past
    // the largest exponent, so 2^n is applied as 2^⌊n/2⌋ · 2^(n-⌊n/2⌋).
    let n = shifted.to_bits().wrapping_sub(ROUNDER.to_bits()) as i32;
    let half = n >> 1;
    let power_of_two = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    let result = p * power_of_two(half) * power_of_two(n - half);
    if x > 88.8 {
        f32::INFINITY
    } else if x < -87.3 {
        0.0
    } else {
        result
    }
}

/// `1 / (1 + e^-x)`.
///
/// ```
/// use seqmamba_kernels::math::sigmoid;
/// assert_eq!(sigmoid(0.0), 0.5);
/// assert_eq!(sigmoid(-200.0), 0.0);
/// ```
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `x · sigmoid(x)`.
///
/// ```
/// use seqmamba_kernels::math::silu;
/// assert_eq!(silu(0.0), 0.0);
/// assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
/// ```
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// `d silu(x) / dx = sigmoid(x) · (1 + x · (1 - sigmoid(x)))`.
///
/// ```
/// use seqmamba_kernels::math::silu_derivative;
/// assert_eq!(silu_derivative(0.0), 0.5);
/// ```
#[inline(always)]
pub fn silu_derivative(x: f32) -> f32 {
    let s = sigmoid(x);
    s * (1.0 + x * (1.0 - s))
}

/// Lanes of the partial sums of [`dot`] and [`sum`]: enough for 8-wide SIMD.
const LANES: usize = 8;

/// `Σ a·b` in f32 over eight interleaved partial sums (so the loop vectorises), added in a
/// fixed order: the same bits on every call. Pairs beyond the shorter slice are ignored.
///
/// ```
/// use seqmamba_kernels::math::dot;
/// assert_eq!(dot(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]), 32.0);
/// ```
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let mut lanes = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for ((lane, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
            *lane += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `Σ a` in f32, summed like [`dot`].
///
/// ```
/// use seqmamba_kernels::math::sum;
/// assert_eq!(sum(&[1.0, 2.0, 3.0]), 6.0);
/// ```
pub fn sum(a: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += x;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between `actual` and the f32 nearest `exact`.
    fn ulps(actual: f32, exact: f64) -> u32 {
        let nearest = exact as f32;
        (actual.to_bits() as i64 - nearest.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_over_its_range() {
        let mut worst = 0;
        let steps = 2_000_000;
        for i in 0..=steps {
            let x = -87.0 + 175.5 * i as f32 / steps as f32;
            worst = worst.max(ulps(exp(x), (x as f64).exp()));
        }
        assert!(worst <= 2, "worst error {worst} ulp");
    }

    #[test]
    fn exp_handles_the_ends_and_nan() {
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-88.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(88.7).is_finite() && exp(88.7) > 3e38);
    }

    #[test]
    fn silu_and_its_derivative_match_f64() {
        for i in -400..=400 {
            let x = i as f32 * 0.05;
            let s = 1.0 / (1.0 + (-(x as f64)).exp());
            let silu64 = x as f64 * s;
            let derivative64 = s * (1.0 + x as f64 * (1.0 - s));
            assert!(
                (silu(x) as f64 - silu64).abs() <= 1e-6 * silu64.abs().max(1.0),
                "silu({x})"
            );
            assert!(
                (silu_derivative(x) as f64 - derivative64).abs() <= 1e-6,
                "silu'({x})"
            );
        }
        assert_eq!(silu(-200.0), 0.0);
        assert_eq!(silu(200.0), 200.0);
    }

    #[test]
    fn dot_and_sum_match_f64_for_every_tail_length() {
        let mut rng = crate::rng::Rng::new(1);
        for len in [0, 1, 7, 8, 9, 16, 100, 1003] {
            let a = rng.vec_uniform(len, -1.0, 1.0);
            let b = rng.vec_uniform(len, -1.0, 1.0);
            let exact_dot: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let exact_sum: f64 = a.iter().map(|&x| x as f64).sum();
            let scale = len.max(1) as f64 * 1e-7;
            assert!(
                (dot(&a, &b) as f64 - exact_dot).abs() <= scale,
                "dot of {len}"
            );
            assert!((sum(&a) as f64 - exact_sum).abs() <= scale, "sum of {len}");
        }
        assert_eq!(dot(&[2.0, 3.0], &[4.0]), 8.0);
    }
}
