// RMSNorm forward and backward, one warp per row (common.cuh and bf16.cuh prepended). The
// forward writes out as f32 or, for a GEMM that reads only that, as bf16.

#define ROWS_PER_BLOCK 8     // warps per block of the row kernels
#define GROUP_ROWS 32        // rows of a backward block (one weight-gradient partial)

struct NormArgs {
    u64 x;
    u64 branch;    // 0, or added to x first (the residual add), the sum written to `sum`
    u64 sum;
    u64 weight;
    u64 out;       // f32, or bf16 bits when out_bf16
    u64 rstd;
    u64 d_out;
    u64 dx;
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
    const float* x = (const float*)a.x + row * a.cols;
    const float* branch = a.branch ? (const float*)a.branch + row * a.cols : nullptr;
    float* summed = a.branch ? (float*)a.sum + row * a.cols : nullptr;
    const float* w = (const float*)a.weight;
    float squares = 0.0f;
    for (int c = lane; c < a.cols; c += 32) {
        float v = x[c];
        if (branch) {
            v += branch[c];
            summed[c] = v;
        }
        squares += v * v;
    }
    squares = warp_sum(squares);
    const float rstd = 1.0f / sqrtf(squares / (float)a.cols + a.eps);
    // Each lane reads back only the elements it wrote itself.
    const float* v = branch ? summed : x;
    for (int c = lane; c < a.cols; c += 32) store_as((void*)a.out, row * a.cols + c, v[c] * rstd * w[c], a.out_bf16);
    if (lane == 0) ((float*)a.rstd)[row] = rstd;
}

// dx += rstd · (g − x · rstd² · mean(g·x)), g = d_out · weight, one warp per row; and the
// weight gradient's partial for the block's GROUP_ROWS rows: each warp adds d_out · x ·
// rstd of its rows into its own shared row (a lane owns columns lane, lane + 32, ...: no
// two lanes touch one address), then the block adds its warps' rows in order. The second
// pass over a row reads it back from L1, not from memory.
extern "C" __global__ void rmsnorm_backward(NormArgs a) {
    extern __shared__ float warp_sums[];  // [ROWS_PER_BLOCK][cols]
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const i64 first = blockIdx.x * (i64)GROUP_ROWS;
    float* mine = warp_sums + (i64)warp * a.cols;
    for (int c = lane; c < a.cols; c += 32) mine[c] = 0.0f;
    const float* w = (const float*)a.weight;
    for (int r = warp; r < GROUP_ROWS; r += ROWS_PER_BLOCK) {
        const i64 row = first + r;
        if (row >= a.rows) break;
        const float* x = (const float*)a.x + row * a.cols;
        const float* d = (const float*)a.d_out + row * a.cols;
        const float rstd = ((const float*)a.rstd)[row];
        float dot = 0.0f;
        for (int c = lane; c < a.cols; c += 32) dot += d[c] * w[c] * x[c];
        dot = warp_sum(dot);
        const float projection = dot * rstd * rstd / (float)a.cols;
        float* dx = (float*)a.dx + row * a.cols;
        for (int c = lane; c < a.cols; c += 32) {
            dx[c] += rstd * (d[c] * w[c] - x[c] * projection);
            mine[c] += d[c] * x[c] * rstd;
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
