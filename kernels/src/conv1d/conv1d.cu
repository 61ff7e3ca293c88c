// Causal depthwise conv1d + SiLU, forward and backward (common.cuh prepended). Threads own
// single elements; the weight and bias gradients are summed per group of positions, then
// over the groups in order.

#define MAX_TAPS 8
#define GROUP_ROWS 256   // positions per group of the parameter gradients

struct ConvArgs {
    u64 x;
    u64 weight;    // (channels, kernel)
    u64 bias;      // 0: none
    u64 resets;    // u32 (batch, len); 0: none
    u64 state;     // (batch, kernel-1, channels); 0: zeros
    u64 out;
    u64 d_out;
    u64 d_pre;     // the pre-activation's gradient (backward scratch)
    u64 dx;
    u64 partials;  // (groups, channels·kernel + channels)
    i64 batch;
    i64 len;
    int channels;
    int kernel;
};

__device__ __forceinline__ float sigmoid_of(float v) { return 1.0f / (1.0f + expf(-v)); }

// The first tap of output t whose input lies in t's sequence (after the last reset in
// (t-(K-1), t]).
__device__ int first_tap(const ConvArgs& a, i64 b, i64 t) {
    if (!a.resets) return 0;
    const unsigned* r = (const unsigned*)a.resets + b * a.len;
    i64 start = t + 2 - a.kernel;
    if (start < 0) start = 0;
    for (i64 s = t; s >= start; --s)
        if (r[s]) return (int)(s + a.kernel - 1 - t);
    return 0;
}

// Input position s of row b, channel c: from the state before 0 (zero without one).
__device__ __forceinline__ float input_at(const ConvArgs& a, i64 b, i64 s, int c) {
    if (s >= 0) return ((const float*)a.x)[(b * a.len + s) * a.channels + c];
    if (!a.state) return 0.0f;
    return ((const float*)a.state)[(b * (a.kernel - 1) + (a.kernel - 1 + s)) * a.channels + c];
}

__device__ float preactivation(const ConvArgs& a, i64 b, i64 t, int c) {
    const float* w = (const float*)a.weight + (i64)c * a.kernel;
    float acc = a.bias ? ((const float*)a.bias)[c] : 0.0f;
    for (int tap = first_tap(a, b, t); tap < a.kernel; ++tap)
        acc += w[tap] * input_at(a, b, t + tap + 1 - a.kernel, c);
    return acc;
}

extern "C" __global__ void conv1d_forward(ConvArgs a) {
    const i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= a.batch * a.len * a.channels) return;
    const i64 bt = i / a.channels;
    const int c = (int)(i - bt * a.channels);
    const i64 b = bt / a.len, t = bt - b * a.len;
    const float p = preactivation(a, b, t, c);
    ((float*)a.out)[i] = p * sigmoid_of(p);
}

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
        else if (position >= 0) value = ((const float*)a.x)[(b * a.len + position) * a.channels + c];
        else value = state[(a.len + slot) * a.channels];
        state[(i64)slot * a.channels] = value;
    }
}

// d_pre = d_out · silu'(pre)
extern "C" __global__ void conv1d_backward_pre(ConvArgs a) {
    const i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= a.batch * a.len * a.channels) return;
    const i64 bt = i / a.channels;
    const int c = (int)(i - bt * a.channels);
    const i64 b = bt / a.len, t = bt - b * a.len;
    const float p = preactivation(a, b, t, c);
    const float s = sigmoid_of(p);
    ((float*)a.d_pre)[i] = ((const float*)a.d_out)[i] * s * (1.0f + p * (1.0f - s));
}

// dx[s] = Σ_d w[K-1-d] · d_pre[s+d] over the outputs s+d of s's sequence.
extern "C" __global__ void conv1d_backward_dx(ConvArgs a) {
    const i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= a.batch * a.len * a.channels) return;
    const i64 bt = i / a.channels;
    const int c = (int)(i - bt * a.channels);
    const i64 b = bt / a.len, s = bt - b * a.len;
    const float* w = (const float*)a.weight + (i64)c * a.kernel;
    const float* d_pre = (const float*)a.d_pre;
    const unsigned* r = a.resets ? (const unsigned*)a.resets + b * a.len : nullptr;
    float g = w[a.kernel - 1] * d_pre[i];
    for (int d = 1; d < a.kernel; ++d) {
        const i64 t = s + d;
        if (t >= a.len || (r && r[t])) break;
        g += w[a.kernel - 1 - d] * d_pre[i + (i64)d * a.channels];
    }
    ((float*)a.dx)[i] = g;
}

// partials[g] = per channel and tap Σ d_pre · input over the group's positions, then the
// bias column Σ d_pre. Block (32, 8): 32 channels, 8 interleaved position lanes.
extern "C" __global__ void conv1d_backward_params(ConvArgs a) {
    __shared__ float sums[8][MAX_TAPS + 1][32];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const i64 first = blockIdx.y * (i64)GROUP_ROWS;
    const i64 positions = a.batch * a.len;
    float acc[MAX_TAPS + 1];
    for (int k = 0; k <= MAX_TAPS; ++k) acc[k] = 0.0f;
    if (c < a.channels) {
        for (int r = threadIdx.y; r < GROUP_ROWS; r += 8) {
            const i64 p = first + r;
            if (p >= positions) break;
            const i64 b = p / a.len, t = p - b * a.len;
            const float g = ((const float*)a.d_pre)[p * a.channels + c];
            acc[MAX_TAPS] += g;
            for (int tap = first_tap(a, b, t); tap < a.kernel; ++tap)
                acc[tap] += g * input_at(a, b, t + tap + 1 - a.kernel, c);
        }
    }
    for (int k = 0; k <= MAX_TAPS; ++k) sums[threadIdx.y][k][threadIdx.x] = acc[k];
    __syncthreads();
    if (threadIdx.y != 0 || c >= a.channels) return;
    const i64 stride = (i64)a.channels * (a.kernel + 1);
    float* out = (float*)a.partials + blockIdx.y * stride;
    for (int k = 0; k <= a.kernel; ++k) {
        const int slot = k == a.kernel ? MAX_TAPS : k;
        float total = 0.0f;
        for (int y = 0; y < 8; ++y) total += sums[y][slot][threadIdx.x];
        if (k == a.kernel) out[(i64)a.channels * a.kernel + c] = total;
        else out[(i64)c * a.kernel + k] = total;
    }
}
