// RMSNorm forward and backward, one warp per row (common.cuh and bf16.cuh prepended). The
// forward writes out as f32 or, for a GEMM that reads only that, as bf16. A lane takes
// GROUP neighbouring columns at a time: built with -DGROUP=4 when rows are a multiple of 4
// columns and every tensor is aligned to 4 elements (one 16-byte access each; a warp then
// keeps four times the bytes in flight), else -DGROUP=1.

#define ROWS_PER_BLOCK 8     // warps per block of the row kernels
#define GROUP_ROWS 32        // rows of a backward block (one weight-gradient partial)
#ifndef GROUP
#define GROUP 1
#endif

struct NormArgs {
    u64 x;
    u64 branch;    // 0, or added to x first (the residual add), the sum written to `sum`
    u64 sum;
    u64 weight;
    u64 out;       // f32, or bf16 bits when out_bf16
    u64 rstd;
    u64 d_out;
    u64 dx;
    u64 dx_copy;   // 0, or bf16 bits of the new dx as well
    u64 partials;  // (groups, cols)
    i64 rows;
    int cols;
    float eps;
    int out_bf16;
};

// out = v · rstd · weight, rstd = 1/sqrt(mean(v²) + eps), v = x (+ branch, written to sum)
extern "C" __global__ void rmsnorm_forward(NormArgs a) {
    const i64 row = blockIdx.x * (i64)ROWS_PER_BLOCK + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= a.rows) return;
    const i64 first = row * a.cols;
    float squares = 0.0f;
    for (int c = lane * GROUP; c < a.cols; c += 32 * GROUP) {
        float v[GROUP];
        load_group<GROUP>((const void*)a.x, first + c, 0, v);
        if (a.branch) {
            float b[GROUP];
            load_group<GROUP>((const void*)a.branch, first + c, 0, b);
#pragma unroll
            for (int g = 0; g < GROUP; ++g) v[g] += b[g];
            store_group<GROUP>((void*)a.sum, first + c, v, 0);
        }
#pragma unroll
        for (int g = 0; g < GROUP; ++g) squares += v[g] * v[g];
    }
    squares = warp_sum(squares);
    const float rstd = 1.0f / sqrtf(squares / (float)a.cols + a.eps);
    // Each lane reads back only the elements it wrote itself.
    const void* summed = a.branch ? (const void*)a.sum : (const void*)a.x;
    for (int c = lane * GROUP; c < a.cols; c += 32 * GROUP) {
        float v[GROUP], w[GROUP];
        load_group<GROUP>(summed, first + c, 0, v);
        load_group<GROUP>((const void*)a.weight, c, 0, w);
#pragma unroll
        for (int g = 0; g < GROUP; ++g) v[g] = v[g] * rstd * w[g];
        store_group<GROUP>((void*)a.out, first + c, v, a.out_bf16);
    }
    if (lane == 0) ((float*)a.rstd)[row] = rstd;
}

// dx += rstd · (g − x · rstd² · mean(g·x)), g = d_out · weight, one warp per row (and the
// new dx's bf16 rounding into dx_copy, for the GEMMs of the mixer below); and the
// weight gradient's partial for the block's GROUP_ROWS rows: each warp adds d_out · x ·
// rstd of its rows into its own shared row (a lane owns its groups of columns: no two
// lanes touch one address), then the block adds its warps' rows in order. The second
// pass over a row reads it back from L1, not from memory.
extern "C" __global__ void rmsnorm_backward(NormArgs a) {
    extern __shared__ float warp_sums[];  // [ROWS_PER_BLOCK][cols]
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const i64 first_row = blockIdx.x * (i64)GROUP_ROWS;
    float* mine = warp_sums + (i64)warp * a.cols;
    // Zeroed by the lane that adds into each column, as it will: no lane reads another's.
    for (int c = lane * GROUP; c < a.cols; c += 32 * GROUP) {
        const float zeros[GROUP] = {};
        store_group<GROUP>((void*)mine, c, zeros, 0);
    }
    for (int r = warp; r < GROUP_ROWS; r += ROWS_PER_BLOCK) {
        const i64 row = first_row + r;
        if (row >= a.rows) break;
        const i64 first = row * a.cols;
        const float rstd = ((const float*)a.rstd)[row];
        float dot = 0.0f;
        for (int c = lane * GROUP; c < a.cols; c += 32 * GROUP) {
            float x[GROUP], d[GROUP], w[GROUP];
            load_group<GROUP>((const void*)a.x, first + c, 0, x);
            load_group<GROUP>((const void*)a.d_out, first + c, 0, d);
            load_group<GROUP>((const void*)a.weight, c, 0, w);
#pragma unroll
            for (int g = 0; g < GROUP; ++g) dot += d[g] * w[g] * x[g];
        }
        dot = warp_sum(dot);
        const float projection = dot * rstd * rstd / (float)a.cols;
        for (int c = lane * GROUP; c < a.cols; c += 32 * GROUP) {
            float x[GROUP], d[GROUP], w[GROUP], dx[GROUP], sums[GROUP];
            load_group<GROUP>((const void*)a.x, first + c, 0, x);
            load_group<GROUP>((const void*)a.d_out, first + c, 0, d);
            load_group<GROUP>((const void*)a.weight, c, 0, w);
            load_group<GROUP>((const void*)a.dx, first + c, 0, dx);
            load_group<GROUP>((const void*)mine, c, 0, sums);
#pragma unroll
            for (int g = 0; g < GROUP; ++g) {
                dx[g] += rstd * (d[g] * w[g] - x[g] * projection);
                sums[g] += d[g] * x[g] * rstd;
            }
            store_group<GROUP>((void*)a.dx, first + c, dx, 0);
            if (a.dx_copy) store_group<GROUP>((void*)a.dx_copy, first + c, dx, 1);
            store_group<GROUP>((void*)mine, c, sums, 0);
        }
    }
    __syncthreads();
    for (int c = threadIdx.x; c < a.cols; c += blockDim.x) {
        float total = 0.0f;
#pragma unroll
        for (int k = 0; k < ROWS_PER_BLOCK; ++k) total += warp_sums[(i64)k * a.cols + c];
        ((float*)a.partials)[blockIdx.x * (i64)a.cols + c] = total;
    }
}
