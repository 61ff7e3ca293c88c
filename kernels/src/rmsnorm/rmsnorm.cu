// RMSNorm forward and backward, one warp per row (common.cuh prepended).

#define ROWS_PER_BLOCK 8     // warps per block of the row kernels
#define GROUP_ROWS 256       // rows summed by one group of the weight gradient

struct NormArgs {
    u64 x;
    u64 branch;    // 0, or added to x first (the residual add), the sum written to `sum`
    u64 sum;
    u64 weight;
    u64 out;
    u64 rstd;
    u64 d_out;
    u64 dx;
    u64 partials;  // (groups, cols)
    i64 rows;
    int cols;
    float eps;
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
    float* out = (float*)a.out + row * a.cols;
    for (int c = lane; c < a.cols; c += 32) out[c] = v[c] * rstd * w[c];
    if (lane == 0) ((float*)a.rstd)[row] = rstd;
}

// dx += rstd · (g − x · rstd² · mean(g·x)), g = d_out · weight
extern "C" __global__ void rmsnorm_backward_dx(NormArgs a) {
    const i64 row = blockIdx.x * (i64)ROWS_PER_BLOCK + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= a.rows) return;
    const float* x = (const float*)a.x + row * a.cols;
    const float* d = (const float*)a.d_out + row * a.cols;
    const float* w = (const float*)a.weight;
    const float rstd = ((const float*)a.rstd)[row];
    float dot = 0.0f;
    for (int c = lane; c < a.cols; c += 32) dot += d[c] * w[c] * x[c];
    dot = warp_sum(dot);
    const float projection = dot * rstd * rstd / (float)a.cols;
    float* dx = (float*)a.dx + row * a.cols;
    for (int c = lane; c < a.cols; c += 32) dx[c] += rstd * (d[c] * w[c] - x[c] * projection);
}

// partials[g][c] = Σ over the group's rows of d_out · x · rstd; block (32, 8).
extern "C" __global__ void rmsnorm_backward_dweight(NormArgs a) {
    __shared__ float sums[8][32];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const i64 first = blockIdx.y * (i64)GROUP_ROWS;
    float sum = 0.0f;
    if (c < a.cols) {
        for (int r = threadIdx.y; r < GROUP_ROWS; r += 8) {
            const i64 row = first + r;
            if (row >= a.rows) break;
            const i64 at = row * a.cols + c;
            sum += ((const float*)a.d_out)[at] * ((const float*)a.x)[at] * ((const float*)a.rstd)[row];
        }
    }
    sums[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && c < a.cols) {
        float total = 0.0f;
        for (int k = 0; k < 8; ++k) total += sums[k][threadIdx.x];
        ((float*)a.partials)[blockIdx.y * (i64)a.cols + c] = total;
    }
}
