//! bf16 copies of f32 values, the operands of tensor-core GEMMs in mixed precision: 8
//! significant bits, f32's exponent range. Products of two bf16 values are exact in f32,
//! so a GEMM on bf16 operands with f32 sums differs from the f32 GEMM of the rounded
//! values only in the order of its sums.

use std::ops::Range;

use crate::gemm::{self, GemmDims};
use crate::{check_len, element_count, Backend, KernelError};

/// The bf16 nearest to `x` (ties to even), as raw bits; a NaN stays a (quiet) NaN.
///
/// ```
/// use seqmamba_kernels::bf16;
/// assert_eq!(bf16::from_f32(1.0), 0x3f80);
/// // 1 + 2⁻⁸ lies halfway between 1 and 1 + 2⁻⁷: ties go to the even neighbour, 1.
/// assert_eq!(bf16::from_f32(1.0 + 1.0 / 256.0), 0x3f80);
/// assert_eq!(bf16::to_f32(bf16::from_f32(0.15625)), 0.15625);
/// ```
pub fn from_f32(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// The f32 value of bf16 bits (exact).
///
/// ```
/// assert_eq!(seqmamba_kernels::bf16::to_f32(0xc000), -2.0);
/// ```
pub fn to_f32(bits: u16) -> f32 {
    half::bf16::from_bits(bits).to_f32()
}

/// `dst = bf16(src)`, element by element.
///
/// ```
/// use seqmamba_kernels::bf16;
/// let mut bits = [0u16; 2];
/// bf16::round(&[1.0, -0.5], &mut bits).unwrap();
/// assert_eq!(bits, [0x3f80, 0xbf00]);
/// ```
pub fn round(src: &[f32], dst: &mut [u16]) -> Result<(), KernelError> {
    check_len("bf16 round", "dst", src.len(), dst)?;
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = from_f32(s);
    }
    Ok(())
}

/// `dst = src` as f32 values (exact), element by element.
///
/// ```
/// use seqmamba_kernels::bf16;
/// let mut values = [0.0; 2];
/// bf16::widen(&[0x3f80, 0xbf00], &mut values).unwrap();
/// assert_eq!(values, [1.0, -0.5]);
/// ```
pub fn widen(src: &[u16], dst: &mut [f32]) -> Result<(), KernelError> {
    check_len("bf16 widen", "dst", src.len(), dst)?;
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = to_f32(s);
    }
    Ok(())
}

/// [`widen`] into a new vector.
///
/// ```
/// assert_eq!(seqmamba_kernels::bf16::widened(&[0x4000]), [2.0]);
/// ```
pub fn widened(src: &[u16]) -> Vec<f32> {
    src.iter().map(|&s| to_f32(s)).collect()
}

/// [`gemm::gemm`] on bf16 operands (raw bits) with f32 sums and output: the reference of
/// [`Backend::gemm_bf16`]. Widens the operands and runs the f32 GEMM.
///
/// ```
/// use seqmamba_kernels::bf16;
/// use seqmamba_kernels::gemm::GemmDims;
/// let dims = GemmDims { m: 1, n: 1, k: 2, transpose_a: false, transpose_b: false };
/// let (a, b) = ([0x3f80, 0x4000], [0x4040, 0x3f80]); // [1, 2] · [3, 1]
/// let mut c = [0.0];
/// bf16::gemm(dims, &a, &b, &mut c, false).unwrap();
/// assert_eq!(c, [5.0]);
/// ```
pub fn gemm(
    dims: GemmDims,
    a: &[u16],
    b: &[u16],
    c: &mut [f32],
    accumulate: bool,
) -> Result<(), KernelError> {
    check_len(
        "gemm_bf16",
        "a",
        element_count("gemm_bf16", &[dims.m, dims.k])?,
        a,
    )?;
    check_len(
        "gemm_bf16",
        "b",
        element_count("gemm_bf16", &[dims.k, dims.n])?,
        b,
    )?;
    gemm::gemm(dims, &widened(a), &widened(b), c, accumulate)
}

/// Where an op writes a tensor: f32 values, or — for a tensor that only bf16 GEMMs read —
/// its bf16 rounding alone (no f32 copy written, none kept).
///
/// ```
/// use seqmamba_kernels::{bf16::Output, Backend, Cpu};
/// let mut bits = Cpu.zeros_bf16(3).unwrap();
/// let out: Output<'_, Cpu> = Output::Bf16(&mut bits);
/// assert!(matches!(out, Output::Bf16(_)));
/// ```
pub enum Output<'a, B: Backend + 'a> {
    F32(B::ViewMut<'a>),
    Bf16(&'a mut B::Bf16Buffer),
}

/// What an op reads a tensor from: f32 values, or — for a tensor kept only in bf16 — all of
/// a bf16 buffer, widened as it is read.
///
/// ```
/// use seqmamba_kernels::{bf16::Input, Backend, Cpu};
/// let bits = Cpu.zeros_bf16(3).unwrap();
/// let x: Input<'_, Cpu> = Input::Bf16(&bits);
/// assert!(matches!(x, Input::Bf16(_)));
/// ```
pub enum Input<'a, B: Backend + 'a> {
    F32(B::View<'a>),
    Bf16(&'a B::Bf16Buffer),
}

impl<'a, B: Backend + 'a> Clone for Input<'a, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<'a, B: Backend + 'a> Copy for Input<'a, B> {}

/// A range of a backend's bf16 buffer: an operand of [`Backend::gemm_bf16`].
pub struct Bf16View<'a, B: Backend + 'a> {
    pub buffer: &'a B::Bf16Buffer,
    pub start: usize,
    pub len: usize,
}

impl<'a, B: Backend + 'a> Bf16View<'a, B> {
    /// `range` of `buffer`.
    ///
    /// ```
    /// use seqmamba_kernels::{bf16::Bf16View, Backend, Cpu};
    /// let bits = Cpu.zeros_bf16(4).unwrap();
    /// assert_eq!(Bf16View::<Cpu>::new(&bits, 1..3).range(), 1..3);
    /// ```
    pub fn new(buffer: &'a B::Bf16Buffer, range: Range<usize>) -> Self {
        Self {
            buffer,
            start: range.start,
            len: range.len(),
        }
    }

    /// The range of the buffer it covers.
    pub fn range(&self) -> Range<usize> {
        self.start..self.start + self.len
    }
}

impl<'a, B: Backend + 'a> Clone for Bf16View<'a, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<'a, B: Backend + 'a> Copy for Bf16View<'a, B> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even_and_keeps_specials() {
        let cases: [(u32, u16); 8] = [
            (0x3f80_0000, 0x3f80), // 1
            (0x3f80_8000, 0x3f80), // halfway, even below
            (0x3f81_8000, 0x3f82), // halfway, even above
            (0x3f80_8001, 0x3f81), // just above halfway
            (0x7f7f_ffff, 0x7f80), // the largest f32 rounds to infinity
            (0xff80_0000, 0xff80), // -infinity
            (0x8000_0000, 0x8000), // -0
            (0x7f80_0001, 0x7fc0), // a signalling NaN becomes quiet
        ];
        for (input, expected) in cases {
            assert_eq!(from_f32(f32::from_bits(input)), expected, "{input:#x}");
        }
    }

    #[test]
    fn bf16_gemm_is_the_f32_gemm_of_the_rounded_operands() {
        let dims = GemmDims {
            m: 3,
            n: 2,
            k: 5,
            transpose_a: true,
            transpose_b: false,
        };
        let a: Vec<f32> = (0..15).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..10).map(|i| (i as f32 * 0.91).cos()).collect();
        let (mut a16, mut b16) = (vec![0; 15], vec![0; 10]);
        round(&a, &mut a16).unwrap();
        round(&b, &mut b16).unwrap();
        let mut got = vec![1.0; 6];
        gemm(dims, &a16, &b16, &mut got, true).unwrap();
        let rounded = |x: &[f32]| x.iter().map(|&v| to_f32(from_f32(v))).collect::<Vec<_>>();
        let mut expected = vec![1.0; 6];
        gemm::gemm(dims, &rounded(&a), &rounded(&b), &mut expected, true).unwrap();
        assert_eq!(got, expected);
        let mut exact = vec![1.0; 6];
        gemm::gemm(dims, &a, &b, &mut exact, true).unwrap();
        assert_ne!(got, exact, "the operands were not rounded");

        // Into bf16 on the CPU backend: the f32 result rounded; accumulated, the f32 sum of
        // the widened bits and the product, rounded.
        let cpu = crate::Cpu;
        let mut got16 = cpu.zeros_bf16(6).unwrap();
        let mut f32_result = vec![0.0; 6];
        gemm(dims, &a16, &b16, &mut f32_result, false).unwrap();
        let view = |bits| Bf16View::<crate::Cpu>::new(bits, 0..bits.len());
        cpu.gemm_bf16(
            dims,
            view(&a16),
            view(&b16),
            Output::Bf16(&mut got16),
            false,
        )
        .unwrap();
        let mut want16 = vec![0; 6];
        round(&f32_result, &mut want16).unwrap();
        assert_eq!(got16, want16);
        let mut twice = widened(&got16);
        gemm(dims, &a16, &b16, &mut twice, true).unwrap();
        round(&twice.clone(), &mut want16).unwrap();
        cpu.gemm_bf16(dims, view(&a16), view(&b16), Output::Bf16(&mut got16), true)
            .unwrap();
        assert_eq!(got16, want16);
        assert_ne!(
            twice,
            widened(&got16),
            "the accumulated sum was not rounded"
        );
    }

    #[test]
    fn widening_is_exact_and_checks_lengths() {
        let values = [1.5, -0.0, f32::INFINITY, 3.0e-39];
        let mut bits = [0; 4];
        round(&values, &mut bits).unwrap();
        let mut back = [0.0; 4];
        widen(&bits, &mut back).unwrap();
        assert_eq!(
            back.map(f32::to_bits),
            values.map(|v| to_f32(from_f32(v)).to_bits())
        );
        assert_eq!(back[..3], values[..3]);
        assert!(widen(&bits, &mut [0.0; 3]).is_err());
    }
}
