// bf16 outputs (prepended to the sources of ops that can write them). Rounds to nearest,
// ties to even, a NaN stays a (quiet) NaN: as `crate::bf16::from_f32`.

// The hardware conversion rounds the same way but gives every NaN one canonical value, so a
// NaN is made apart (4 instructions where the rounding by hand took 8).
__device__ __forceinline__ unsigned int bf16_bits(float value) {
    unsigned short rounded;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(rounded) : "f"(value));
    return value != value ? (__float_as_uint(value) >> 16) | 0x40u : rounded;
}

// Two values' bits in one word, `lo` in the low half: one hardware conversion for both,
// each NaN made apart as in bf16_bits.
__device__ __forceinline__ unsigned int bf16_pair_bits(float lo, float hi) {
    unsigned int packed;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(packed) : "f"(hi), "f"(lo));
    // One test of both for the rare NaN, which then takes the slow way.
    if (__builtin_expect(lo != lo || hi != hi, 0)) packed = bf16_bits(lo) | (bf16_bits(hi) << 16);
    return packed;
}

// Element i of a tensor of f32 values, or of bf16 bits when `bf16` (exact).
__device__ __forceinline__ float load_as(const void* base, unsigned long long i, int bf16) {
    if (bf16) return __uint_as_float((unsigned int)((const unsigned short*)base)[i] << 16);
    return ((const float*)base)[i];
}

// Element i of a tensor of f32 values, or of bf16 bits when `bf16`.
__device__ __forceinline__ void store_as(void* base, unsigned long long i, float value, int bf16) {
    if (bf16) {
        ((unsigned short*)base)[i] = (unsigned short)bf16_bits(value);
    } else {
        ((float*)base)[i] = value;
    }
}

// The four bf16 values in two words (the first in the low half of `words.x`), widened
// (exact). W is 4; 1 only where a caller's branch for one element never gets here.
template <int W>
__device__ __forceinline__ void widen_bf16_words(uint2 words, float (&v)[W]) {
    v[0] = __uint_as_float(words.x << 16);
    v[1 % W] = __uint_as_float(words.x & 0xffff0000u);
    v[2 % W] = __uint_as_float(words.y << 16);
    v[3 % W] = __uint_as_float(words.y & 0xffff0000u);
}

// Elements i..i+W-1 (W 1 or 4, i a multiple of W, the tensor aligned to W elements) of a
// tensor of f32 values or of bf16 bits, in one access.
template <int W>
__device__ __forceinline__ void load_group(const void* base, unsigned long long i, int bf16, float (&v)[W]) {
    if (W == 1) {
        v[0] = load_as(base, i, bf16);
    } else if (bf16) {
        widen_bf16_words(((const uint2*)base)[i / 4], v);
    } else {
        const float4 quad = ((const float4*)base)[i / 4];
        v[0] = quad.x;
        v[1 % W] = quad.y;
        v[2 % W] = quad.z;
        v[3 % W] = quad.w;
    }
}

// Stores v to elements i..i+W-1 as load_group reads them.
template <int W>
__device__ __forceinline__ void store_group(void* base, unsigned long long i, const float (&v)[W], int bf16) {
    if (W == 1) {
        store_as(base, i, v[0], bf16);
    } else if (bf16) {
        ((uint2*)base)[i / 4] = make_uint2(bf16_pair_bits(v[0], v[1 % W]), bf16_pair_bits(v[2 % W], v[3 % W]));
    } else {
        ((float4*)base)[i / 4] = make_float4(v[0], v[1 % W], v[2 % W], v[3 % W]);
    }
}
