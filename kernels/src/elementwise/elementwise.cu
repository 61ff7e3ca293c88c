// Element-wise ops and the sum of squares (common.cuh is prepended).

struct ElementwiseArgs {
    u64 a;
    u64 b;
    u64 out;
    i64 n;
    float factor;
};

// out = a + b
extern "C" __global__ void add_f32(ElementwiseArgs args) {
    const i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i < args.n) ((float*)args.out)[i] = ((const float*)args.a)[i] + ((const float*)args.b)[i];
}

struct ColumnArgs {
    u64 src;
    u64 dst;
    i64 rows;
    int width;
    int src_cols;
    int src_first;
    int dst_cols;
    int dst_first;
};

// dst[r][dst_first + c] = src[r][src_first + c] for c < width
extern "C" __global__ void copy_columns(ColumnArgs a) {
    const i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= a.rows * a.width) return;
    const i64 r = i / a.width;
    const int c = (int)(i - r * a.width);
    ((float*)a.dst)[r * a.dst_cols + a.dst_first + c] = ((const float*)a.src)[r * a.src_cols + a.src_first + c];
}

// out *= factor
extern "C" __global__ void scale_f32(ElementwiseArgs args) {
    const i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i < args.n) ((float*)args.out)[i] *= args.factor;
}

#define SQUARES_THREADS 256

struct SquaresArgs {
    u64 x;
    u64 partials;  // double[blocks]
    u64 total;     // double[1]
    i64 n;
    int blocks;
};

// Stage 1: block `k` sums x² over elements k·256 + j·(blocks·256) + lane in f64, reduced
// by a fixed tree; the grid size depends on n only, so the order is fixed.
extern "C" __global__ void sum_squares_partial(SquaresArgs args) {
    __shared__ double warps[SQUARES_THREADS / 32];
    const float* x = (const float*)args.x;
    double sum = 0.0;
    const i64 stride = (i64)args.blocks * SQUARES_THREADS;
    for (i64 i = blockIdx.x * (i64)SQUARES_THREADS + threadIdx.x; i < args.n; i += stride) {
        const double v = x[i];
        sum += v * v;
    }
    sum = warp_sum_f64(sum);
    if ((threadIdx.x & 31) == 0) warps[threadIdx.x >> 5] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        double block = 0.0;
        for (int w = 0; w < SQUARES_THREADS / 32; ++w) block += warps[w];
        ((double*)args.partials)[blockIdx.x] = block;
    }
}

// Stage 2, one block: the partials in a fixed order.
extern "C" __global__ void sum_squares_total(SquaresArgs args) {
    __shared__ double warps[SQUARES_THREADS / 32];
    const double* partials = (const double*)args.partials;
    double sum = 0.0;
    for (int i = threadIdx.x; i < args.blocks; i += SQUARES_THREADS) sum += partials[i];
    sum = warp_sum_f64(sum);
    if ((threadIdx.x & 31) == 0) warps[threadIdx.x >> 5] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int w = 0; w < SQUARES_THREADS / 32; ++w) total += warps[w];
        *(double*)args.total = total;
    }
}
