// Pooling over valid positions and the reversal of valid positions (common.cuh prepended).

struct PoolArgs {
    u64 lengths;   // u32 (batch)
    u64 x;
    u64 out;
    i64 batch;
    i64 len;
    int dim;
    int last;      // 1: last valid position; 0: mean
};

// out[b, c]: one thread per element; the mean sums in position order, then divides.
extern "C" __global__ void pool_forward(PoolArgs a) {
    const i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= a.batch * a.dim) return;
    const i64 b = i / a.dim;
    const int c = (int)(i - b * a.dim);
    const unsigned n = ((const unsigned*)a.lengths)[b];
    const float* x = (const float*)a.x + b * a.len * a.dim + c;
    float value;
    if (a.last) {
        value = x[(i64)(n - 1) * a.dim];
    } else {
        float sum = 0.0f;
        for (unsigned t = 0; t < n; ++t) sum += x[(i64)t * a.dim];
        value = sum / (float)n;
    }
    ((float*)a.out)[i] = value;
}

// dx[b, t, c] from d_out = a.x (batch, dim): zero at padding.
extern "C" __global__ void pool_backward(PoolArgs a) {
    const i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= a.batch * a.len * a.dim) return;
    const i64 bt = i / a.dim;
    const int c = (int)(i - bt * a.dim);
    const i64 b = bt / a.len, t = bt - b * a.len;
    const unsigned n = ((const unsigned*)a.lengths)[b];
    const float d = ((const float*)a.x)[b * a.dim + c];
    float g = 0.0f;
    if (a.last) {
        if (t == (i64)n - 1) g = d;
    } else if (t < (i64)n) {
        g = d / (float)n;
    }
    ((float*)a.out)[i] = g;
}

// out[b, t] = x[b, n-1-t] for t < n, zero at padding.
extern "C" __global__ void reverse_valid(PoolArgs a) {
    const i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= a.batch * a.len * a.dim) return;
    const i64 bt = i / a.dim;
    const int c = (int)(i - bt * a.dim);
    const i64 b = bt / a.len, t = bt - b * a.len;
    const i64 n = ((const unsigned*)a.lengths)[b];
    ((float*)a.out)[i] = t < n ? ((const float*)a.x)[(b * a.len + n - 1 - t) * a.dim + c] : 0.0f;
}
