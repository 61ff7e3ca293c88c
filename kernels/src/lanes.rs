//! Sixteen f32 lanes (one per channel of a scan tile, or sixteen partial sums of a
//! matrix-vector product), with the elementwise maths of the scan written as plain loops
//! that LLVM turns into SIMD, and the run-time choice of the widest instruction set the
//! machine has.
//!
//! Sums are never reordered, and multiply-adds are fused only where written ([`f32::mul_add`],
//! one rounding, in hardware on x86-64 with FMA and on aarch64, in software elsewhere), so
//! every instruction set gives bit-identical results.

use std::ops::{Add, Mul, Sub};

/// Channels per tile: one AVX-512 register, two AVX2 registers.
pub(crate) const LANES: usize = 16;

/// One f32 per channel of a tile.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(transparent)]
pub(crate) struct Lanes(pub(crate) [f32; LANES]);

impl Lanes {
    pub(crate) const ZERO: Self = Self([0.0; LANES]);

    #[inline(always)]
    pub(crate) fn splat(value: f32) -> Self {
        Self([value; LANES])
    }

    /// The first `src.len()` (at most [`LANES`]) lanes from `src`, the rest zero.
    #[inline(always)]
    pub(crate) fn load(src: &[f32]) -> Self {
        match <[f32; LANES]>::try_from(src) {
            Ok(full) => Self(full),
            Err(_) => {
                let mut lanes = [0.0; LANES];
                lanes[..src.len()].copy_from_slice(src);
                Self(lanes)
            }
        }
    }

    /// `if mask[i] { a[i] } else { b[i] }` with the mask `self[i] > threshold`.
    #[inline(always)]
    pub(crate) fn select_above(self, threshold: f32, above: Self, otherwise: Self) -> Self {
        let mut out = otherwise;
        for ((o, &x), &a) in out.0.iter_mut().zip(&self.0).zip(&above.0) {
            if x > threshold {
                *o = a;
            }
        }
        out
    }

    /// Sum of the lanes by a fixed pairwise tree (halves first), the same on every machine.
    #[inline(always)]
    pub(crate) fn sum(self) -> f32 {
        let mut v = self.0;
        let mut width = LANES / 2;
        while width > 0 {
            let (low, high) = v.split_at_mut(width);
            for (l, &h) in low.iter_mut().zip(&high[..width]) {
                *l += h;
            }
            width /= 2;
        }
        v[0]
    }

    /// The transposed 16 × 16 block: lane `j` of vector `i` becomes lane `i` of vector `j`.
    #[inline(always)]
    pub(crate) fn transpose(rows: &[Self; LANES]) -> [Self; LANES] {
        std::array::from_fn(|j| Self(std::array::from_fn(|i| rows[i].0[j])))
    }

    #[inline(always)]
    fn zip_with(self, other: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        let mut out = self;
        for (o, &b) in out.0.iter_mut().zip(&other.0) {
            *o = f(*o, b);
        }
        out
    }

    /// `self · factor + addend` with one rounding.
    #[inline(always)]
    pub(crate) fn mul_add(self, factor: Self, addend: Self) -> Self {
        let mut out = self;
        for ((o, &f), &a) in out.0.iter_mut().zip(&factor.0).zip(&addend.0) {
            *o = o.mul_add(f, a);
        }
        out
    }

    /// `e^x` lane by lane; see [`exp`].
    #[inline(always)]
    pub(crate) fn exp(self) -> Self {
        let mut out = self;
        for o in &mut out.0 {
            *o = exp(*o);
        }
        out
    }

    /// `2^x` lane by lane; see [`exp2`].
    #[inline(always)]
    pub(crate) fn exp2(self) -> Self {
        let mut out = self;
        for o in &mut out.0 {
            *o = exp2(*o);
        }
        out
    }

    /// `ln(1 + e^x)`, and `x` itself above 20 as in the official kernels.
    #[inline(always)]
    pub(crate) fn softplus(self) -> Self {
        let mut out = self;
        for o in &mut out.0 {
            let x = *o;
            let smooth = x.max(0.0) + ln_1p_unit(exp(-x.abs()));
            *o = if x > 20.0 { x } else { smooth };
        }
        out
    }

    /// `1 / (1 + e^-x)`.
    #[inline(always)]
    pub(crate) fn sigmoid(self) -> Self {
        let mut out = self;
        for o in &mut out.0 {
            // Past 88, e^-x would overflow [`exp`]'s range; σ is 1e-38 there anyway.
            let minus_x = -*o;
            let minus_x = if minus_x > 88.0 { 88.0 } else { minus_x };
            *o = 1.0 / (1.0 + exp(minus_x));
        }
        out
    }
}

impl Add for Lanes {
    type Output = Self;
    #[inline(always)]
    fn add(self, other: Self) -> Self {
        self.zip_with(other, |a, b| a + b)
    }
}

impl Sub for Lanes {
    type Output = Self;
    #[inline(always)]
    fn sub(self, other: Self) -> Self {
        self.zip_with(other, |a, b| a - b)
    }
}

impl Mul for Lanes {
    type Output = Self;
    #[inline(always)]
    fn mul(self, other: Self) -> Self {
        self.zip_with(other, |a, b| a * b)
    }
}

impl Mul<f32> for Lanes {
    type Output = Self;
    #[inline(always)]
    fn mul(self, scalar: f32) -> Self {
        self * Self::splat(scalar)
    }
}

/// Asks the caches to fetch the line holding `data[index]`; nothing when `index` is out of
/// range. Rows of the tile lie a whole `channels` apart, so the hardware prefetchers,
/// which stay inside a page, miss them.
#[inline(always)]
pub(crate) fn prefetch(data: &[f32], index: usize) {
    if index < data.len() {
        prefetch_address(data.as_ptr().wrapping_add(index));
    }
}

/// Asks the caches to fetch the line holding `address`; nothing on targets without a
/// prefetch instruction. A prefetch reads no memory, so any address is allowed.
#[inline(always)]
pub(crate) fn prefetch_address(address: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and has no effect visible to the program.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// 1.5·2^23: adding it rounds to an integer held in the low mantissa bits.
const SHIFTER: f32 = 12_582_912.0;

/// `e^x` in f32 for `x ≤ 88`, with a relative error below 2e-7 wherever the result is a
/// normal float, and 0 for `x < -87.7` (where e^x is subnormal). Callers keep `x ≤ 88`
/// (the scan's arguments are `≤ 0`): the hot loop saves the upper clamp.
///
/// Branch-free so that a loop of it vectorises: `x = k·ln2 + r` with `|r| ≤ ln2/2`,
/// `e^r` by a degree-6 polynomial, then [`times_power_of_two`].
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // ln 2 split so that k·LN2_HIGH is exact for |k| < 2^8.
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    // Chebyshev fit of e^r on [-0.36, 0.36] (error 3e-9 there); c0 and c1 round to 1.
    const C2: f32 = 0.5;
    const C3: f32 = 0.166_663_74;
    const C4: f32 = 0.041_666_303;
    const C5: f32 = 0.008_378_435;
    const C6: f32 = 0.001_394_524;

    // Clamping keeps k + 127 in [0, 254]: k = -127 gives the zero exponent field, so the
    // result flushes to 0 below about -87.7 rather than wrapping.
    let x = if x < -88.0 { -88.0 } else { x };
    let shifted = x.mul_add(std::f32::consts::LOG2_E, SHIFTER);
    let k = shifted - SHIFTER;
    let r = k.mul_add(-LN2_LOW, k.mul_add(-LN2_HIGH, x));
    let p = r.mul_add(r.mul_add(r.mul_add(r.mul_add(C6, C5), C4), C3), C2);
    times_power_of_two(r.mul_add(r.mul_add(p, 1.0), 1.0), shifted)
}

/// `2^x` in f32 for `x ≤ 127`, like [`exp`] (relative error below 2e-7, 0 below about
/// -126.5) with a cheaper reduction: `x = k + f` exactly, and `2^f` by [`exp`]'s polynomial
/// with its coefficients times powers of ln 2 (no `f·ln2` multiply). The scan's decay
/// `e^(Δ·A)` is `2^(Δ·A·log2 e)` with `A·log2 e` made once per tile, which saves its hot
/// loop the split multiply-adds of `exp`.
#[inline(always)]
pub(crate) fn exp2(x: f32) -> f32 {
    // C_k · ln2^k for exp's C_k (C0 = C1 = 1): error 2e-8 on [-0.5, 0.5] before rounding.
    const D1: f32 = std::f32::consts::LN_2;
    const D2: f32 = 0.240_226_5;
    const D3: f32 = 0.055_503_134;
    const D4: f32 = 0.009_618_045;
    const D5: f32 = 0.001_340_572_3;
    const D6: f32 = 0.000_154_660_27;

    let x = if x < -127.0 { -127.0 } else { x };
    let shifted = x + SHIFTER;
    let f = x - (shifted - SHIFTER);
    let p = f.mul_add(f.mul_add(f.mul_add(f.mul_add(D6, D5), D4), D3), D2);
    times_power_of_two(f.mul_add(f.mul_add(p, D1), 1.0), shifted)
}

/// `value · 2^k` with `k + SHIFTER` in `shifted` (as [`exp`] and [`exp2`] reduce), `2^k`
/// built in the exponent bits.
#[inline(always)]
fn times_power_of_two(value: f32, shifted: f32) -> f32 {
    // Low bits of `shifted` hold k (two's complement, offset by the shifter's mantissa).
    let biased = shifted
        .to_bits()
        .wrapping_sub(SHIFTER.to_bits())
        .wrapping_add(127);
    value * f32::from_bits(biased << 23)
}

/// `ln(1 + t)` for `t` in `[0, 1]`, accurate to a few ulp relative even for tiny `t`:
/// `2·atanh(s)` with `s = t / (2 + t) ≤ 1/3`, by its odd series up to `s^13`.
#[inline(always)]
fn ln_1p_unit(t: f32) -> f32 {
    let s = t / (2.0 + t);
    let w = s * s;
    let series = 1.0
        + w * (1.0 / 3.0
            + w * (1.0 / 5.0
                + w * (1.0 / 7.0 + w * (1.0 / 9.0 + w * (1.0 / 11.0 + w * (1.0 / 13.0))))));
    2.0 * s * series
}

/// The widest instruction set available, detected once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
    Baseline,
}

fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
                return Isa::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Baseline
    })
}

/// A loop nest compiled once per instruction set; `run` must be `#[inline(always)]` so
/// that its body (and the lane maths it calls) is generated inside the wrappers below.
pub(crate) trait Vectorised {
    type Output;
    fn run(self) -> Self::Output;
}

/// Runs `kernel` compiled for the widest instruction set the machine has.
pub(crate) fn run_vectorised<K: Vectorised>(kernel: K) -> K::Output {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` checked that the CPU supports AVX-512F and FMA.
        Isa::Avx512 => unsafe { run_avx512(kernel) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` checked that the CPU supports AVX2 and FMA.
        Isa::Avx2 => unsafe { run_avx2(kernel) },
        _ => kernel.run(),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn run_avx512<K: Vectorised>(kernel: K) -> K::Output {
    kernel.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2<K: Vectorised>(kernel: K) -> K::Output {
    kernel.run()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_f64_over_a_dense_sweep() {
        let mut worst = 0.0f64;
        let steps = 2_000_000;
        for i in 0..=steps {
            let x = (-87.3 + 175.3 * i as f64 / steps as f64) as f32;
            let expected = (x as f64).exp();
            let error = ((exp(x) as f64 - expected) / expected).abs();
            worst = worst.max(error);
        }
        assert!(worst < 2e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn exp_flushes_to_zero_below_the_normal_range() {
        for i in 0..=10_000 {
            let x = -87.4 - 100.0 * i as f32 / 10_000.0;
            let e = exp(x);
            assert!((0.0..=f32::MIN_POSITIVE).contains(&e), "exp({x}) = {e:e}");
        }
        assert_eq!(exp(-88.0), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(88.0).is_finite() && exp(88.0) > 1.6e38);
    }

    #[test]
    fn exp2_matches_f64_and_flushes_to_zero_below_the_normal_range() {
        let mut worst = 0.0f64;
        let steps = 2_000_000;
        for i in 0..=steps {
            let x = (-126.0 + 253.0 * i as f64 / steps as f64) as f32;
            let expected = (x as f64).exp2();
            worst = worst.max(((exp2(x) as f64 - expected) / expected).abs());
        }
        assert!(worst < 2e-7, "worst relative error {worst:e}");
        assert_eq!((exp2(0.0), exp2(-1.0), exp2(10.0)), (1.0, 0.5, 1024.0));
        assert!(exp2(-126.6) <= f32::MIN_POSITIVE);
        assert_eq!((exp2(-127.0), exp2(-1000.0)), (0.0, 0.0));
        assert!(exp2(127.0).is_finite() && exp2(127.0) > 1.7e38);
    }

    #[test]
    fn softplus_and_sigmoid_match_f64() {
        let mut xs: Vec<f32> = (0..=4000).map(|i| -40.0 + i as f32 * 0.0175).collect();
        xs.extend([-100.0, -88.5, 88.5, 100.0, f32::MAX]);
        for chunk in xs.chunks(LANES) {
            let lanes = Lanes::load(chunk);
            let (softplus, sigmoid) = (lanes.softplus(), lanes.sigmoid());
            for (i, &x) in chunk.iter().enumerate() {
                let x64 = x as f64;
                let sp = if x64 > 20.0 { x64 } else { x64.exp().ln_1p() };
                let sg = 1.0 / (1.0 + (-x64).exp());
                // Relative, except where the value is below f32's normal range.
                let sp_err = (softplus.0[i] as f64 - sp).abs() / sp.max(1e-30);
                let sg_err = (sigmoid.0[i] as f64 - sg).abs() / sg.max(1e-30);
                assert!(sp_err < 4e-7, "softplus({x}): {} vs {sp}", softplus.0[i]);
                assert!(sg_err < 4e-7, "sigmoid({x}): {} vs {sg}", sigmoid.0[i]);
            }
        }
    }

    #[test]
    fn lane_sum_and_partial_loads() {
        let values: Vec<f32> = (1..=LANES).map(|i| i as f32).collect();
        assert_eq!(Lanes::load(&values).sum(), (LANES * (LANES + 1) / 2) as f32);
        let partial = Lanes::load(&values[..3]);
        assert_eq!(partial.sum(), 6.0);
        assert_eq!((partial * 2.0).0[..4], [2.0, 4.0, 6.0, 0.0]);
    }

    #[test]
    fn transpose_swaps_lanes_and_vectors() {
        let rows: [Lanes; LANES] =
            std::array::from_fn(|i| Lanes(std::array::from_fn(|j| (i * LANES + j) as f32)));
        let columns = Lanes::transpose(&rows);
        for (i, j) in [(0, 0), (0, 1), (1, 0), (3, 14), (15, 2), (15, 15)] {
            assert_eq!(columns[j].0[i], rows[i].0[j]);
        }
        assert_eq!(columns[1].0[0], 1.0);
        assert_eq!(columns[0].0[1], LANES as f32);
        assert_eq!(Lanes::transpose(&columns), rows);
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        struct Exp(Lanes);
        impl Vectorised for Exp {
            type Output = Lanes;
            #[inline(always)]
            fn run(self) -> Lanes {
                self.0.exp() + self.0.exp2() + self.0.softplus() * self.0.sigmoid()
            }
        }
        let x = Lanes(std::array::from_fn(|i| -30.0 + 3.7 * i as f32));
        assert_eq!(run_vectorised(Exp(x)), Exp(x).run());
    }
}
