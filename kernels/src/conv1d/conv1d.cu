// Causal depthwise conv1d + SiLU, forward and backward (common.cuh prepended). A thread
// owns one channel of a run of CONV_RUN positions of one row and walks it with the last
// TAPS inputs in registers, so each input is loaded once and nothing is divided per
// element. The weight and bias gradients are summed per run, then over the runs in order
// (`sum_columns`): no atomics, the same bits on every run.
//
// Built with -DTAPS=<kernel size>; the module without it holds only `sum_columns`. With
// -DX_BF16=1, x is bf16 bits (kept so in bf16 training); with -DOUT_BF16=1 the forward
// writes out as bf16 bits (so bf16 training keeps u), with -DD_OUT_BF16=1 the backward reads
// d_out so; with -DRESETS=1 the walks read reset
// flags. Defines, not arguments: the kernels are bound by issuing instructions, so a test
// per element costs time. For the same reason a thread walks its run in blocks of
// CONV_AHEAD positions, and only the blocks at a run's edges check each position against
// them. The backward writes dx as f32 or, for a GEMM that reads only that, as bf16
// (bf16.cuh).

#define CONV_RUN 48        // positions per thread
#define CONV_THREADS 128   // channels per block
#define CONV_AHEAD 8       // positions whose loads a thread issues together

#ifndef X_BF16
#define X_BF16 0
#endif
#ifndef OUT_BF16
#define OUT_BF16 0
#endif
#ifndef D_OUT_BF16
#define D_OUT_BF16 0
#endif
#ifndef RESETS
#define RESETS 0
#endif

struct ConvArgs {
    u64 x;         // f32, or bf16 bits with X_BF16
    u64 weight;    // (channels, kernel)
    u64 bias;      // 0: none
    u64 resets;    // u32 (batch, len); 0: none
    u64 state;     // (batch, kernel-1, channels); 0: zeros
    u64 out;       // f32, or bf16 bits with OUT_BF16
    u64 d_out;     // f32, or bf16 bits with D_OUT_BF16
    u64 dx;        // f32, or bf16 bits when dx_bf16
    u64 partials;  // (batch · runs, channels·kernel + channels)
    i64 batch;
    i64 len;
    int channels;
    int kernel;
    int dx_bf16;
};

// Element i of x.
__device__ __forceinline__ float x_at(const ConvArgs& a, i64 i) { return load_as((const void*)a.x, i, X_BF16); }

__device__ __forceinline__ float sigmoid_of(float v) { return 1.0f / (1.0f + expf(-v)); }

// The forward's sigmoid from the fast exp and division (a few ulp off; 10 % off the bf16
// forward's time at the anchor's shape). The backward keeps the exact one: there the fast
// form measured 12 % slower (docs/benchmarks.md).
__device__ __forceinline__ float fast_sigmoid(float v) { return __fdividef(1.0f, 1.0f + __expf(-v)); }

// Input position s of row b, channel c: from the state before 0 (zero without one).
__device__ __forceinline__ float input_at(const ConvArgs& a, i64 b, i64 s, int c) {
    if (s >= 0) return x_at(a, (b * a.len + s) * a.channels + c);
    if (!a.state) return 0.0f;
    return ((const float*)a.state)[(b * (a.kernel - 1) + (a.kernel - 1 + s)) * a.channels + c];
}

#ifdef TAPS

// One thread's walk: channel c of row b over positions [t0, t1). window[k] holds the input
// at t - (TAPS-1) + k, zero where it lies before the sequence of t (a reset at q starts a
// new sequence at q).
struct Walk {
    float weight[TAPS];
    float bias;
    float window[TAPS];
    const unsigned* resets;  // this row's flags (with RESETS)

    __device__ Walk(const ConvArgs& a, i64 b, int c, int t0) {
        const float* w = (const float*)a.weight + (i64)c * TAPS;
#pragma unroll
        for (int k = 0; k < TAPS; ++k) {
            weight[k] = w[k];
            window[k] = 0.0f;
        }
        bias = a.bias ? ((const float*)a.bias)[c] : 0.0f;
        resets = RESETS ? (const unsigned*)a.resets + b * a.len : nullptr;
        // The history of t0, replayed so that resets inside it clear what precedes them.
        for (int s = t0 - (TAPS - 1); s < t0; ++s) {
            if (s >= 0 && reset(s)) clear();
            shift();
            window[TAPS - 1] = input_at(a, b, s, c);
        }
    }

    __device__ __forceinline__ bool reset(int t) const { return RESETS && resets[t]; }

    __device__ __forceinline__ void clear() {
#pragma unroll
        for (int k = 0; k < TAPS; ++k) window[k] = 0.0f;
    }

    __device__ __forceinline__ void shift() {
#pragma unroll
        for (int k = 0; k + 1 < TAPS; ++k) window[k] = window[k + 1];
    }

    // Moves to position t with input x_t; returns the pre-activation there.
    __device__ __forceinline__ float step(int t, float x_t) {
        if (reset(t)) clear();
        shift();
        window[TAPS - 1] = x_t;
        float pre = bias;
#pragma unroll
        for (int k = 0; k < TAPS; ++k) pre += weight[k] * window[k];
        return pre;
    }
};

// One block of the forward: positions t .. t+CONV_AHEAD-1, those from t1 on skipped when
// CHECKED (the run's last block).
template <bool CHECKED>
__device__ __forceinline__ void forward_block(const ConvArgs& a, Walk& walk, int t, int t1, const void* x, i64 at,
                                              i64 stride) {
    float xs[CONV_AHEAD];
#pragma unroll
    for (int j = 0; j < CONV_AHEAD; ++j)
        xs[j] = !CHECKED || t + j < t1 ? load_as(x, at + j * stride, X_BF16) : 0.0f;
#pragma unroll
    for (int j = 0; j < CONV_AHEAD; ++j) {
        if (CHECKED && t + j >= t1) break;
        const float pre = walk.step(t + j, xs[j]);
        const float u = pre * fast_sigmoid(pre);
        store_as((void*)a.out, at + j * stride, u, OUT_BF16);
    }
}

extern "C" __global__ void __launch_bounds__(CONV_THREADS) conv1d_forward(ConvArgs a) {
    const int c = blockIdx.x * CONV_THREADS + threadIdx.x;
    const i64 b = blockIdx.z;
    const int t0 = blockIdx.y * CONV_RUN;
    if (c >= a.channels) return;
    const int t1 = min(t0 + CONV_RUN, (int)a.len);
    Walk walk(a, b, c, t0);
    const i64 stride = a.channels;
    i64 at = (b * a.len + t0) * stride + c;  // element (b, t, c)
    int t = t0;
    for (; t + CONV_AHEAD <= t1; t += CONV_AHEAD, at += CONV_AHEAD * stride)
        forward_block<false>(a, walk, t, t1, (const void*)a.x, at, stride);
    if (t < t1) forward_block<true>(a, walk, t, t1, (const void*)a.x, at, stride);
}

// What a backward thread carries along its run: pending[k] is dx of position
// t - (TAPS-1) + k so far (positions before `first` are in an earlier sequence than t and
// get nothing from it); the run's sums of d_pre · input per tap and of d_pre.
struct BackwardSums {
    float pending[TAPS];
    float dweight[TAPS];
    float dbias;
    int first;
};

// One block of the backward: positions s .. s+CONV_AHEAD-1 of the walk [t0, end), end =
// t1 + TAPS - 1. Unless CHECKED, every position lies in [t0 + TAPS - 1, t1): inside the
// sequence, in this run, and past the positions whose dx another run writes.
template <bool CHECKED>
__device__ __forceinline__ void backward_block(const ConvArgs& a, Walk& walk, BackwardSums& sums, int s, int t0,
                                               int t1, int end, i64 at, i64 stride) {
    const int len = (int)a.len;
    float xs[CONV_AHEAD], ds[CONV_AHEAD];
#pragma unroll
    for (int j = 0; j < CONV_AHEAD; ++j) {
        const bool inside = !CHECKED || (s + j < end && s + j < len);
        xs[j] = inside ? load_as((const void*)a.x, at + j * stride, X_BF16) : 0.0f;
        ds[j] = inside ? load_as((const void*)a.d_out, at + j * stride, D_OUT_BF16) : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < CONV_AHEAD; ++j) {
        const int t = s + j;
        if (CHECKED && t >= end) break;
        float g = 0.0f;
        if (!CHECKED || t < len) {
            if (RESETS) sums.first = walk.reset(t) ? TAPS - 1 : max(sums.first - 1, 0);
            const float pre = walk.step(t, xs[j]);
            const float sg = sigmoid_of(pre);
            g = ds[j] * sg * (1.0f + pre * (1.0f - sg));
            if (!CHECKED || t < t1) {
                sums.dbias += g;
#pragma unroll
                for (int k = 0; k < TAPS; ++k) sums.dweight[k] += g * walk.window[k];
            }
        }
#pragma unroll
        for (int k = 0; k < TAPS; ++k)
            if (!RESETS || k >= sums.first) sums.pending[k] += walk.weight[k] * g;
        // The oldest pending position gets nothing more: write it if it is this run's.
        const int done = t - (TAPS - 1);
        if (!CHECKED || (done >= t0 && done < t1))
            store_as((void*)a.dx, at + (j - (TAPS - 1)) * stride, sums.pending[0], a.dx_bf16);
#pragma unroll
        for (int k = 0; k + 1 < TAPS; ++k) sums.pending[k] = sums.pending[k + 1];
        sums.pending[TAPS - 1] = 0.0f;
    }
}

// The whole backward of one run: the pre-activation recomputed, d_pre = d_out · silu'(pre),
// dx by scattering each d_pre to the TAPS inputs it came from (the run walks TAPS-1
// positions past its end so that its last inputs get every contribution), and the
// run's sums of d_pre · input per tap and of d_pre.
extern "C" __global__ void __launch_bounds__(CONV_THREADS, 8) conv1d_backward(ConvArgs a) {
    const int c = blockIdx.x * CONV_THREADS + threadIdx.x;
    const i64 b = blockIdx.z;
    const int run = blockIdx.y;
    const int t0 = run * CONV_RUN;
    if (c >= a.channels) return;
    const int t1 = min(t0 + CONV_RUN, (int)a.len);
    const int end = t1 + TAPS - 1;  // walked positions [t0, end)
    Walk walk(a, b, c, t0);
    BackwardSums sums;
#pragma unroll
    for (int k = 0; k < TAPS; ++k) sums.pending[k] = sums.dweight[k] = 0.0f;
    sums.dbias = 0.0f;
    sums.first = 0;
    const i64 stride = a.channels;
    i64 at = (b * a.len + t0) * stride + c;  // element (b, s, c)
    for (int s = t0; s < end; s += CONV_AHEAD, at += CONV_AHEAD * stride) {
        if (s >= t0 + TAPS - 1 && s + CONV_AHEAD <= t1) {
            backward_block<false>(a, walk, sums, s, t0, t1, end, at, stride);
        } else {
            backward_block<true>(a, walk, sums, s, t0, t1, end, at, stride);
        }
    }
    const i64 partial_stride = (i64)a.channels * (TAPS + 1);
    float* out = (float*)a.partials + (b * gridDim.y + run) * partial_stride;
#pragma unroll
    for (int k = 0; k < TAPS; ++k) out[(i64)c * TAPS + k] = sums.dweight[k];
    out[(i64)a.channels * TAPS + c] = sums.dbias;
}

#endif  // TAPS

// The state after this chunk: the last K-1 inputs of each row, zero before the row's last
// reset. One thread per (row, channel) walks the slots upwards, so a slot still inside the
// old state is read before it is overwritten.
extern "C" __global__ void conv1d_carry_state(ConvArgs a) {
    const i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= a.batch * a.channels) return;
    const i64 b = i / a.channels;
    const int c = (int)(i - b * a.channels);
    const int slots = a.kernel - 1;
    float* state = (float*)a.state + b * slots * a.channels + c;
    const unsigned* r = a.resets ? (const unsigned*)a.resets + b * a.len : nullptr;
    for (int slot = 0; slot < slots; ++slot) {
        const i64 position = a.len - slots + slot;
        bool cut = false;
        if (r)
            for (i64 s = position + 1 < 0 ? 0 : position + 1; s < a.len; ++s) cut |= r[s] != 0;
        float value;
        if (cut) value = 0.0f;
        else if (position >= 0) value = input_at(a, b, position, c);
        else value = state[(a.len + slot) * a.channels];
        state[(i64)slot * a.channels] = value;
    }
}
