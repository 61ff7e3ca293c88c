// Selective scan of Mamba-1 on the GPU, forward and backward (semantics in scan/mod.rs).
//
// Layout: u, delta, z, out and their gradients are (batch, len, channels), channels
// contiguous, so consecutive threads taking consecutive channels load coalesced rows;
// B and C are (batch, len, STATE) and every thread of a block reads the same row, which
// the cache broadcasts. A thread keeps its states in registers and walks the sequence.
//
// Parallelism beyond batch x channels comes from cutting each row into `segments` of
// `seg_len` positions (a multiple of the checkpoint `chunk`):
//   forward  1. segment_local: each segment scanned from a zero state; its end state and
//               its summed delta (the decay over a segment is exp(A * sum delta)) saved;
//            2. combine: per (batch, channel, state) the carries are chained in order;
//            3. output: each segment rescanned from its true carry, writing the output,
//               the checkpoints (state at each chunk start) and the final state.
//   backward 1. segment_local: the gradient w.r.t. the state entering each segment from
//               its own positions, and the same summed delta;
//            2. combine: chained from the last segment back;
//            3. main: per chunk, states recomputed from the checkpoint and the chunk
//               walked backward with dh in registers, writing every gradient; sums over
//               channels (dB, dC) and over positions (dA, dD, dbias) go to per-block
//               partials that
//            4. reduce_bc / reduce_params add up in a fixed order: no atomics, so the
//               result is the same bit for bit on every run.
// With one segment, steps 1 and 2 are skipped.
//
// Built by NVRTC with -DSTATE=<n>; no headers.

#ifndef STATE
#error "compile with -DSTATE=<states per channel>"
#endif
#if STATE != 16
#error "the CUDA scan is written for 16 states per channel"
#endif

#define LOG2E 1.4426950408889634f
// Backward: states per thread (4 threads share a channel), and positions recomputed
// and held in registers at a time.
#define GROUP_STATES 4
#define GROUPS (STATE / GROUP_STATES)
#define SUB 8
#define BWD_CHANNELS 64
#define BWD_THREADS (BWD_CHANNELS * GROUPS)

typedef unsigned int u32;
typedef unsigned long long u64;

struct ScanArgs {
    const float* u;
    const float* delta;
    const float* a_log;
    const float* b;
    const float* c;
    const float* d_skip;
    const float* delta_bias;
    const float* z;           // may be null
    const u32* resets;        // may be null
    float* state;             // may be null: initial state in, final state out
    float* checkpoints;       // may be null in the forward
    float* out;               // forward output
    float* seg_state;         // (batch, segments, channels, STATE) scratch
    float* seg_sum;           // (batch, segments, channels) scratch; -1 marks a reset
    const float* d_out;
    float* du;
    float* ddelta;
    float* dz;                // null without z
    float* part_a;            // (batch * segments, channels, STATE)
    float* part_d;            // (batch * segments, channels)
    float* part_bias;         // (batch * segments, channels)
    float* part_b;            // (channel blocks, batch, len, STATE)
    float* part_c;            // (channel blocks, batch, len, STATE)
    float* da_log;
    float* dd_skip;
    float* ddelta_bias;
    float* db;
    float* dc;
    int batch;
    int len;
    int channels;
    int chunk;
    int seg_len;
    int segments;
    int chunks;
    int channel_blocks;
};

__device__ __forceinline__ float softplus(float x) {
    return x > 20.0f ? x : log1pf(__expf(x));
}

__device__ __forceinline__ float sigmoid(float x) {
    return 1.0f / (1.0f + __expf(-x));
}

__device__ __forceinline__ void load_row(const float* base, float (&v)[STATE]) {
    const float4* row = reinterpret_cast<const float4*>(base);
#pragma unroll
    for (int q = 0; q < STATE / 4; ++q) {
        float4 x = __ldg(row + q);
        v[4 * q] = x.x;
        v[4 * q + 1] = x.y;
        v[4 * q + 2] = x.z;
        v[4 * q + 3] = x.w;
    }
}

__device__ __forceinline__ void store_row(float* base, const float (&v)[STATE]) {
    float4* row = reinterpret_cast<float4*>(base);
#pragma unroll
    for (int q = 0; q < STATE / 4; ++q) {
        row[q] = make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
    }
}

// A pre-scaled by log2(e) so that exp(delta * A) is one exp2.
__device__ __forceinline__ void load_a2(const ScanArgs& p, int d, float (&a2)[STATE]) {
#pragma unroll
    for (int n = 0; n < STATE; ++n) {
        a2[n] = -__expf(__ldg(p.a_log + (size_t)d * STATE + n)) * LOG2E;
    }
}

__device__ __forceinline__ bool is_reset(const ScanArgs& p, size_t row) {
    return p.resets != nullptr && __ldg(p.resets + row) != 0u;
}

// ---------------------------------------------------------------------------------------
// Forward

extern "C" __global__ void __launch_bounds__(128) scan_fwd_segment(ScanArgs p) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x;
    const int s = blockIdx.y;
    const int b = blockIdx.z;
    if (d >= p.channels) return;
    float a2[STATE];
    load_a2(p, d, a2);
    const float bias = __ldg(p.delta_bias + d);
    float h[STATE];
#pragma unroll
    for (int n = 0; n < STATE; ++n) h[n] = 0.0f;
    float sum = 0.0f;
    bool cut = false;
    const int t0 = s * p.seg_len;
    const int t1 = min(t0 + p.seg_len, p.len);
    for (int t = t0; t < t1; ++t) {
        const size_t row = (size_t)b * p.len + t;
        const size_t i = row * p.channels + d;
        if (is_reset(p, row)) {
#pragma unroll
            for (int n = 0; n < STATE; ++n) h[n] = 0.0f;
            cut = true;
        }
        const float dt = softplus(__ldg(p.delta + i) + bias);
        const float x = dt * __ldg(p.u + i);
        float bt[STATE];
        load_row(p.b + row * STATE, bt);
#pragma unroll
        for (int n = 0; n < STATE; ++n) h[n] = exp2f(a2[n] * dt) * h[n] + x * bt[n];
        sum += dt;
    }
    const size_t slot = ((size_t)b * p.segments + s) * p.channels + d;
    store_row(p.seg_state + slot * STATE, h);
    p.seg_sum[slot] = cut ? -1.0f : sum;
}

// One thread per (batch, channel, state): replaces each segment's local end state by the
// true state entering that segment.
extern "C" __global__ void __launch_bounds__(256) scan_fwd_combine(ScanArgs p) {
    const size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= (size_t)p.batch * p.channels * STATE) return;
    const int n = k % STATE;
    const int d = (k / STATE) % p.channels;
    const int b = k / ((size_t)STATE * p.channels);
    const float a2 = -__expf(p.a_log[(size_t)d * STATE + n]) * LOG2E;
    float h = p.state != nullptr ? p.state[k] : 0.0f;
    for (int s = 0; s < p.segments; ++s) {
        const size_t slot = ((size_t)b * p.segments + s) * p.channels + d;
        const float sum = p.seg_sum[slot];
        const float local = p.seg_state[slot * STATE + n];
        p.seg_state[slot * STATE + n] = h;
        const float decay = sum < 0.0f ? 0.0f : exp2f(a2 * sum);
        h = decay * h + local;
    }
}

extern "C" __global__ void __launch_bounds__(128) scan_fwd_output(ScanArgs p) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x;
    const int s = blockIdx.y;
    const int b = blockIdx.z;
    if (d >= p.channels) return;
    float a2[STATE];
    load_a2(p, d, a2);
    const float bias = __ldg(p.delta_bias + d);
    const float skip = __ldg(p.d_skip + d);
    float h[STATE];
    const size_t own = (size_t)b * p.channels + d;
    if (p.segments > 1) {
        load_row(p.seg_state + (((size_t)b * p.segments + s) * p.channels + d) * STATE, h);
    } else if (p.state != nullptr) {
        load_row(p.state + own * STATE, h);
    } else {
#pragma unroll
        for (int n = 0; n < STATE; ++n) h[n] = 0.0f;
    }
    const int t0 = s * p.seg_len;
    const int t1 = min(t0 + p.seg_len, p.len);
    for (int t = t0; t < t1; ++t) {
        const size_t row = (size_t)b * p.len + t;
        const size_t i = row * p.channels + d;
        if (p.checkpoints != nullptr && t % p.chunk == 0) {
            const size_t at = ((size_t)b * p.chunks + t / p.chunk) * p.channels + d;
            store_row(p.checkpoints + at * STATE, h);
        }
        if (is_reset(p, row)) {
#pragma unroll
            for (int n = 0; n < STATE; ++n) h[n] = 0.0f;
        }
        const float uu = __ldg(p.u + i);
        const float dt = softplus(__ldg(p.delta + i) + bias);
        const float x = dt * uu;
        float bt[STATE], ct[STATE];
        load_row(p.b + row * STATE, bt);
        load_row(p.c + row * STATE, ct);
        float y = 0.0f;
#pragma unroll
        for (int n = 0; n < STATE; ++n) {
            h[n] = exp2f(a2[n] * dt) * h[n] + x * bt[n];
            y += h[n] * ct[n];
        }
        y += skip * uu;
        if (p.z != nullptr) {
            const float zz = __ldg(p.z + i);
            y *= zz * sigmoid(zz);
        }
        p.out[i] = y;
    }
    if (s == p.segments - 1 && p.state != nullptr) {
        store_row(p.state + own * STATE, h);
    }
}

// ---------------------------------------------------------------------------------------
// Backward

__device__ __forceinline__ float gate(const ScanArgs& p, size_t i, float dout) {
    if (p.z == nullptr) return dout;
    const float zz = __ldg(p.z + i);
    return dout * zz * sigmoid(zz);
}

// Gradient w.r.t. the state entering each segment, from that segment's positions alone.
extern "C" __global__ void __launch_bounds__(128) scan_bwd_segment(ScanArgs p) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x;
    const int s = blockIdx.y;
    const int b = blockIdx.z;
    if (d >= p.channels) return;
    float a2[STATE];
    load_a2(p, d, a2);
    const float bias = __ldg(p.delta_bias + d);
    float dh[STATE];
#pragma unroll
    for (int n = 0; n < STATE; ++n) dh[n] = 0.0f;
    float sum = 0.0f;
    bool cut = false;
    const int t0 = s * p.seg_len;
    const int t1 = min(t0 + p.seg_len, p.len);
    for (int t = t1 - 1; t >= t0; --t) {
        const size_t row = (size_t)b * p.len + t;
        const size_t i = row * p.channels + d;
        const float g = gate(p, i, __ldg(p.d_out + i));
        const float dt = softplus(__ldg(p.delta + i) + bias);
        float ct[STATE];
        load_row(p.c + row * STATE, ct);
        sum += dt;
        if (is_reset(p, row)) {
            cut = true;
#pragma unroll
            for (int n = 0; n < STATE; ++n) dh[n] = 0.0f;
        } else {
#pragma unroll
            for (int n = 0; n < STATE; ++n) dh[n] = (dh[n] + g * ct[n]) * exp2f(a2[n] * dt);
        }
    }
    const size_t slot = ((size_t)b * p.segments + s) * p.channels + d;
    store_row(p.seg_state + slot * STATE, dh);
    p.seg_sum[slot] = cut ? -1.0f : sum;
}

// Replaces each segment's local entering gradient by the gradient w.r.t. the state at
// that segment's end coming from all later positions.
extern "C" __global__ void __launch_bounds__(256) scan_bwd_combine(ScanArgs p) {
    const size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= (size_t)p.batch * p.channels * STATE) return;
    const int n = k % STATE;
    const int d = (k / STATE) % p.channels;
    const int b = k / ((size_t)STATE * p.channels);
    const float a2 = -__expf(p.a_log[(size_t)d * STATE + n]) * LOG2E;
    float e = 0.0f;
    for (int s = p.segments - 1; s >= 0; --s) {
        const size_t slot = ((size_t)b * p.segments + s) * p.channels + d;
        const float sum = p.seg_sum[slot];
        const float local = p.seg_state[slot * STATE + n];
        p.seg_state[slot * STATE + n] = e;
        const float decay = sum < 0.0f ? 0.0f : exp2f(a2 * sum);
        e = local + decay * e;
    }
}

__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    return v;
}

// Four threads per channel (lane = 4 * channel + group), each with GROUP_STATES states.
// Block: BWD_CHANNELS channels of one (batch, segment).
extern "C" __global__ void __launch_bounds__(BWD_THREADS) scan_bwd_main(ScanArgs p) {
    extern __shared__ float4 sub_states[];  // [sub-chunk][thread]
    __shared__ float reduce[BWD_THREADS / 32][SUB][2 * STATE];

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int group = tid % GROUPS;
    const int d = blockIdx.x * BWD_CHANNELS + tid / GROUPS;
    const int s = blockIdx.y;
    const int b = blockIdx.z;
    const bool active = d < p.channels;
    const int dd = active ? d : p.channels - 1;  // inactive threads read a real channel
    const int n0 = group * GROUP_STATES;

    float a_nat[GROUP_STATES], a2[GROUP_STATES];
#pragma unroll
    for (int j = 0; j < GROUP_STATES; ++j) {
        a_nat[j] = -__expf(__ldg(p.a_log + (size_t)dd * STATE + n0 + j));
        a2[j] = a_nat[j] * LOG2E;
    }
    const float bias = __ldg(p.delta_bias + dd);
    const float skip = __ldg(p.d_skip + dd);

    float dh[GROUP_STATES];
    const size_t seg_slot = ((size_t)b * p.segments + s) * p.channels + dd;
#pragma unroll
    for (int j = 0; j < GROUP_STATES; ++j) {
        dh[j] = (active && p.segments > 1) ? p.seg_state[seg_slot * STATE + n0 + j] : 0.0f;
    }
    float da[GROUP_STATES] = {0.0f, 0.0f, 0.0f, 0.0f};
    float dskip_sum = 0.0f, dbias_sum = 0.0f;

    const int seg_start = s * p.seg_len;
    const int seg_end = min(seg_start + p.seg_len, p.len);
    const int first_chunk = seg_start / p.chunk;
    const int last_chunk = (seg_end - 1) / p.chunk;
    for (int k = last_chunk; k >= first_chunk; --k) {
        const int c0 = k * p.chunk;
        const int c1 = min(c0 + p.chunk, p.len);
        // Recompute the chunk from its checkpoint, keeping the state every SUB steps.
        float h[GROUP_STATES];
        {
            const float4 saved = *reinterpret_cast<const float4*>(
                p.checkpoints + (((size_t)b * p.chunks + k) * p.channels + dd) * STATE + n0);
            h[0] = saved.x; h[1] = saved.y; h[2] = saved.z; h[3] = saved.w;
        }
        for (int t = c0; t < c1; ++t) {
            if ((t - c0) % SUB == 0) {
                sub_states[((t - c0) / SUB) * BWD_THREADS + tid] = make_float4(h[0], h[1], h[2], h[3]);
            }
            const size_t row = (size_t)b * p.len + t;
            const size_t i = row * p.channels + dd;
            const bool reset = is_reset(p, row);
            const float dt = softplus(__ldg(p.delta + i) + bias);
            const float x = dt * __ldg(p.u + i);
            const float4 bt = __ldg(reinterpret_cast<const float4*>(p.b + row * STATE + n0));
            const float bv[4] = {bt.x, bt.y, bt.z, bt.w};
#pragma unroll
            for (int j = 0; j < GROUP_STATES; ++j) {
                h[j] = exp2f(a2[j] * dt) * (reset ? 0.0f : h[j]) + x * bv[j];
            }
        }
        const int subs = (c1 - c0 + SUB - 1) / SUB;
        for (int q = subs - 1; q >= 0; --q) {
            const int ts = c0 + q * SUB;
            // States before and after each of the SUB steps, and their decays.
            float hs[SUB + 1][GROUP_STATES], decay[SUB][GROUP_STATES];
            float dts[SUB], us[SUB];
            bool resets[SUB];
            {
                const float4 saved = sub_states[q * BWD_THREADS + tid];
                hs[0][0] = saved.x; hs[0][1] = saved.y; hs[0][2] = saved.z; hs[0][3] = saved.w;
            }
#pragma unroll
            for (int r = 0; r < SUB; ++r) {
                const int t = ts + r;
                const bool valid = t < c1;
                const size_t row = (size_t)b * p.len + (valid ? t : c0);
                const size_t i = row * p.channels + dd;
                resets[r] = valid && is_reset(p, row);
                dts[r] = valid ? softplus(__ldg(p.delta + i) + bias) : 0.0f;
                us[r] = (valid && active) ? __ldg(p.u + i) : 0.0f;
                const float x = dts[r] * us[r];
                const float4 bt = __ldg(reinterpret_cast<const float4*>(p.b + row * STATE + n0));
                const float bv[4] = {bt.x, bt.y, bt.z, bt.w};
#pragma unroll
                for (int j = 0; j < GROUP_STATES; ++j) {
                    decay[r][j] = exp2f(a2[j] * dts[r]);
                    hs[r + 1][j] = decay[r][j] * (resets[r] ? 0.0f : hs[r][j]) + x * bv[j];
                }
            }
#pragma unroll
            for (int r = SUB - 1; r >= 0; --r) {
                const int t = ts + r;
                if (t >= c1) continue;  // uniform across the block
                const size_t row = (size_t)b * p.len + t;
                const size_t i = row * p.channels + dd;
                const float4 bt = __ldg(reinterpret_cast<const float4*>(p.b + row * STATE + n0));
                const float4 ct = __ldg(reinterpret_cast<const float4*>(p.c + row * STATE + n0));
                const float bv[4] = {bt.x, bt.y, bt.z, bt.w};
                const float cv[4] = {ct.x, ct.y, ct.z, ct.w};
                const float dout = active ? __ldg(p.d_out + i) : 0.0f;
                float g = dout;
                float y_part = 0.0f;
#pragma unroll
                for (int j = 0; j < GROUP_STATES; ++j) y_part += cv[j] * hs[r + 1][j];
                const float y = quad_sum(y_part) + skip * us[r];
                if (p.z != nullptr) {
                    const float zz = __ldg(p.z + i);
                    const float sg = sigmoid(zz);
                    g = dout * zz * sg;
                    if (active && group == 0) {
                        p.dz[i] = dout * y * sg * (1.0f + zz * (1.0f - sg));
                    }
                }
                dskip_sum += g * us[r];
                float ddt_part = 0.0f, du_part = 0.0f;
                float db_part[GROUP_STATES], dc_part[GROUP_STATES];
                const float x = dts[r] * us[r];
#pragma unroll
                for (int j = 0; j < GROUP_STATES; ++j) {
                    dh[j] += g * cv[j];
                    dc_part[j] = g * hs[r + 1][j];
                    const float decayed = decay[r][j] * (resets[r] ? 0.0f : hs[r][j]);
                    ddt_part += dh[j] * (a_nat[j] * decayed + bv[j] * us[r]);
                    du_part += dh[j] * bv[j];
                    db_part[j] = dh[j] * x;
                    da[j] += dh[j] * dts[r] * decayed;
                    dh[j] = resets[r] ? 0.0f : dh[j] * decay[r][j];
                }
                const float ddt = quad_sum(ddt_part);
                const float du_sum = quad_sum(du_part);
                const float v = __ldg(p.delta + i) + bias;
                const float dv = v > 20.0f ? ddt : ddt * sigmoid(v);
                dbias_sum += dv;
                if (active && group == 0) {
                    p.du[i] = g * skip + du_sum * dts[r];
                    p.ddelta[i] = dv;
                }
                // Sum dB and dC over the warp's 8 channels by recursive halving: after
                // three exchanges each lane holds one of the 32 (quantity, state) sums.
                const bool hi16 = lane & 16, hi8 = lane & 8, hi4 = lane & 4;
                float w4[GROUP_STATES];
#pragma unroll
                for (int j = 0; j < GROUP_STATES; ++j) {
                    const float send = hi16 ? db_part[j] : dc_part[j];
                    const float keep = hi16 ? dc_part[j] : db_part[j];
                    w4[j] = keep + __shfl_xor_sync(0xffffffffu, send, 16);
                }
                float w2[2];
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const float send = hi8 ? w4[j] : w4[2 + j];
                    const float keep = hi8 ? w4[2 + j] : w4[j];
                    w2[j] = keep + __shfl_xor_sync(0xffffffffu, send, 8);
                }
                const float send = hi4 ? w2[0] : w2[1];
                const float keep = hi4 ? w2[1] : w2[0];
                const float w1 = keep + __shfl_xor_sync(0xffffffffu, send, 4);
                const int slot = (hi16 ? STATE : 0) + n0 + (hi8 ? 2 : 0) + (hi4 ? 1 : 0);
                reduce[warp][r][slot] = w1;
            }
            __syncthreads();
            // 256 threads = SUB positions x 32 (quantity, state) sums, over warps in order.
            {
                const int r = tid / (2 * STATE);
                const int slot = tid % (2 * STATE);
                const int t = ts + r;
                if (t < c1) {
                    float total = 0.0f;
#pragma unroll
                    for (int w = 0; w < BWD_THREADS / 32; ++w) total += reduce[w][r][slot];
                    float* part = slot < STATE ? p.part_b : p.part_c;
                    part[(((size_t)blockIdx.x * p.batch + b) * p.len + t) * STATE + slot % STATE] = total;
                }
            }
            __syncthreads();
        }
    }
    if (active) {
        const size_t slot = ((size_t)b * p.segments + s) * p.channels + d;
        float4 out = make_float4(da[0] * a_nat[0], da[1] * a_nat[1], da[2] * a_nat[2], da[3] * a_nat[3]);
        *reinterpret_cast<float4*>(p.part_a + slot * STATE + n0) = out;
        if (group == 0) {
            p.part_d[slot] = dskip_sum;
            p.part_bias[slot] = dbias_sum;
        }
    }
}

// dB, dC: one thread per (batch, position, state), summing the channel blocks in order.
extern "C" __global__ void __launch_bounds__(256) scan_bwd_reduce_bc(ScanArgs p) {
    const size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t total = (size_t)p.batch * p.len * STATE;
    if (k >= total) return;
    float sb = 0.0f, sc = 0.0f;
    for (int blk = 0; blk < p.channel_blocks; ++blk) {
        sb += p.part_b[blk * total + k];
        sc += p.part_c[blk * total + k];
    }
    p.db[k] = sb;
    p.dc[k] = sc;
}

// dA_log, dD, dbias: one thread per (channel, state), summing (batch, segment) in order;
// accumulated into the gradients.
extern "C" __global__ void __launch_bounds__(256) scan_bwd_reduce_params(ScanArgs p) {
    const size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t per_row = (size_t)p.channels * STATE;
    if (k >= per_row) return;
    const int rows = p.batch * p.segments;
    float sa = 0.0f;
    for (int r = 0; r < rows; ++r) sa += p.part_a[r * per_row + k];
    p.da_log[k] += sa;
    if (k < (size_t)p.channels) {
        float sd = 0.0f, sbias = 0.0f;
        for (int r = 0; r < rows; ++r) {
            sd += p.part_d[(size_t)r * p.channels + k];
            sbias += p.part_bias[(size_t)r * p.channels + k];
        }
        p.dd_skip[k] += sd;
        p.ddelta_bias[k] += sbias;
    }
}
