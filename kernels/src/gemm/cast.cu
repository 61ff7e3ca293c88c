// f32 -> bf16 for the operands of the bf16 GEMM (common.cuh is prepended). Rounds to
// nearest, ties to even, as the hardware conversion does; a NaN stays a (quiet) NaN.

struct CastArgs {
    u64 x;  // const float*
    u64 y;  // unsigned short* (bf16 bits)
    i64 n;
};

extern "C" __global__ void f32_to_bf16(CastArgs args) {
    const i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= args.n) return;
    const unsigned int bits = __float_as_uint(((const float*)args.x)[i]);
    const bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
    const unsigned int rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    ((unsigned short*)args.y)[i] = (unsigned short)(nan ? (bits >> 16) | 0x40u : rounded);
}
