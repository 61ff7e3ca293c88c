// f32 <-> bf16 copies (common.cuh and bf16.cuh are prepended). A thread converts four
// values.

struct CastArgs {
    u64 x;  // source: f32 values or bf16 bits
    u64 y;  // destination: the other type
    i64 n;
    int vector;  // both ends aligned for one 16-byte and one 8-byte access, n a multiple of 4
};

// With aligned ends, one 16-byte load and one 8-byte store a thread.
extern "C" __global__ void f32_to_bf16(CastArgs args) {
    const i64 first = 4 * (blockIdx.x * (i64)blockDim.x + threadIdx.x);
    if (first >= args.n) return;
    const float* x = (const float*)args.x;
    unsigned short* y = (unsigned short*)args.y;
    if (args.vector) {
        const float4 v = *(const float4*)(x + first);
        uint2 packed;
        packed.x = bf16_pair_bits(v.x, v.y);
        packed.y = bf16_pair_bits(v.z, v.w);
        *(uint2*)(y + first) = packed;
    } else {
        for (i64 i = first; i < first + 4 && i < args.n; ++i) y[i] = (unsigned short)bf16_bits(x[i]);
    }
}

// bf16 -> f32 (exact): with aligned ends, one 8-byte load and one 16-byte store a thread.
extern "C" __global__ void bf16_to_f32(CastArgs args) {
    const i64 first = 4 * (blockIdx.x * (i64)blockDim.x + threadIdx.x);
    if (first >= args.n) return;
    const unsigned short* x = (const unsigned short*)args.x;
    float* y = (float*)args.y;
    if (args.vector) {
        const uint2 packed = *(const uint2*)(x + first);
        *(float4*)(y + first) = make_float4(__uint_as_float(packed.x << 16),
                                            __uint_as_float(packed.x & 0xffff0000u),
                                            __uint_as_float(packed.y << 16),
                                            __uint_as_float(packed.y & 0xffff0000u));
    } else {
        for (i64 i = first; i < first + 4 && i < args.n; ++i) y[i] = __uint_as_float((unsigned)x[i] << 16);
    }
}
