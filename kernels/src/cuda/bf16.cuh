// bf16 outputs (prepended to the sources of ops that can write them). Rounds to nearest,
// ties to even, a NaN stays a (quiet) NaN: as `crate::bf16::from_f32`.

__device__ __forceinline__ unsigned int bf16_bits(float value) {
    const unsigned int bits = __float_as_uint(value);
    const bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
    const unsigned int rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    return nan ? (bits >> 16) | 0x40u : rounded;
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
