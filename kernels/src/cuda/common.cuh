// Shared by the kernels of every op (prepended to each op's source). Every reduction here
// adds in an order fixed by the launch shape, never by timing: results are bit-identical
// from run to run, and no kernel of this crate uses floating-point atomics.

typedef unsigned long long u64;
typedef long long i64;

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ double warp_sum_f64(double v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// The sum of `v` over the block (blockDim.x a multiple of 32), returned to every thread.
// `scratch` holds 32 floats of shared memory.
__device__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // `scratch` may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

// The maximum of `v` over the block, as `block_sum`.
__device__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? scratch[lane] : __int_as_float(0xff800000);
    return warp_max(v);
}

// out[c] += Σ_g partials[g·stride + first + c] for c < columns, in an order fixed by the
// shape (see sum_columns): the second stage of every parameter-gradient reduction (the
// first writes one row per group).
struct SumColumnsArgs {
    u64 partials;
    u64 out;
    i64 groups;
    i64 stride;
    i64 first;
    i64 columns;
};

// Block (32, SUM_SLICES): 32 columns; slice y adds groups y, y + SUM_SLICES, ... in order,
// SUM_AHEAD loads in flight, then slice sums are added in slice order (few columns:
// without the slices too few threads would wait on too many loads each).
#define SUM_SLICES 8
#define SUM_AHEAD 8
extern "C" __global__ void sum_columns(SumColumnsArgs a) {
    __shared__ float slices[SUM_SLICES][32];
    const i64 c = blockIdx.x * (i64)32 + threadIdx.x;
    float sum = 0.0f;
    if (c < a.columns) {
        const float* p = (const float*)a.partials + a.first + c;
        i64 g = threadIdx.y;
        for (; g + (SUM_AHEAD - 1) * SUM_SLICES < a.groups; g += SUM_AHEAD * SUM_SLICES) {
            float v[SUM_AHEAD];
#pragma unroll
            for (int j = 0; j < SUM_AHEAD; ++j) v[j] = p[(g + j * SUM_SLICES) * a.stride];
#pragma unroll
            for (int j = 0; j < SUM_AHEAD; ++j) sum += v[j];
        }
        for (; g < a.groups; g += SUM_SLICES) sum += p[g * a.stride];
    }
    slices[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && c < a.columns) {
        float total = 0.0f;
#pragma unroll
        for (int y = 0; y < SUM_SLICES; ++y) total += slices[y][threadIdx.x];
        ((float*)a.out)[c] += total;
    }
}
