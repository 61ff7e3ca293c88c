// f32 -> bf16 copies of GEMM operands (common.cuh and bf16.cuh are prepended). A thread
// converts four values: with 16-byte aligned ends, one 16-byte load and one 8-byte store.

struct CastArgs {
    u64 x;  // const float*
    u64 y;  // unsigned short* (bf16 bits)
    i64 n;
    int vector;  // x, y 16- and 8-byte aligned, n a multiple of 4
};

extern "C" __global__ void f32_to_bf16(CastArgs args) {
    const i64 first = 4 * (blockIdx.x * (i64)blockDim.x + threadIdx.x);
    if (first >= args.n) return;
    const float* x = (const float*)args.x;
    unsigned short* y = (unsigned short*)args.y;
    if (args.vector) {
        const float4 v = *(const float4*)(x + first);
        uint2 packed;
        packed.x = bf16_bits(v.x) | (bf16_bits(v.y) << 16);
        packed.y = bf16_bits(v.z) | (bf16_bits(v.w) << 16);
        *(uint2*)(y + first) = packed;
    } else {
        for (i64 i = first; i < first + 4 && i < args.n; ++i) y[i] = (unsigned short)bf16_bits(x[i]);
    }
}
