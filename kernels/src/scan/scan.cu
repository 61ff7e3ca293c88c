// Selective scan of Mamba-1 on the GPU, forward and backward (semantics in scan/mod.rs).
//
// Layout: u, delta, z, out and their gradients are (batch, len, channels), channels
// contiguous, so consecutive threads taking consecutive channels load coalesced rows;
// B and C are (batch, len, STATE), one row per position shared by every channel, so a
// block copies each row once into shared memory. Inputs are staged a tile of positions
// ahead with asynchronous copies (cp.async, double-buffered). A thread keeps its states
// in registers and walks the sequence; exp(delta * A) is one ex2 with A pre-scaled by
// log2(e).
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
// With one segment, steps 1 and 2 are skipped. Where batch x channels alone fill the
// device, the forward is instead one kernel with four threads a channel
// (scan_fwd_one_pass), which takes every exp once.
//
// Built by NVRTC with -DSTATE=<n>; bf16.cuh is prepended (the output and the activation
// gradients can be written as bf16 for the ops that read them so). Built with
// -DSTREAMS_BF16=1 (or 2), the kernels read the (batch, len, channels) streams u, delta, z
// and d_out as bf16 bits (as bf16 training keeps them), staged in the first half of their
// f32 tiles: 1 copies 8 channels at a time (every row 16-byte aligned), 2 one element at a
// time. Defines, not arguments: both paths in one kernel cost registers, and the kernel
// holding both is half as large again.

#ifndef STATE
#error "compile with -DSTATE=<states per channel>"
#endif
#if STATE != 16
#error "the CUDA scan is written for 16 states per channel"
#endif

#ifndef STREAMS_BF16
#define STREAMS_BF16 0
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

// u, delta, z and d_out: f32, or bf16 bits when built with STREAMS_BF16.
struct ScanArgs {
    const void* u;
    const void* delta;
    const float* a_log;
    const float* b;
    const float* c;
    const float* d_skip;
    const float* delta_bias;
    const void* z;            // may be null
    const u32* resets;        // may be null
    float* state;             // may be null: initial state in, final state out
    float* checkpoints;       // may be null in the forward
    float* out;               // forward output; the backward may write it again
    float* seg_state;         // (batch, segments, channels, STATE) scratch
    float* seg_sum;           // (batch, segments, channels) scratch; -1 marks a reset
    const void* d_out;
    float* du;                // f32, or bf16 bits when du_bf16
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
    int out_bf16;             // out written as bf16 bits
    int grads_bf16;           // ddelta and dz written as bf16 bits
    int du_bf16;
};

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

// exp2 as the one special-function instruction it is (inputs here are never huge).
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// log(1 + exp(x)) = max(x, 0) + log1p(e), e = exp(-|x|) in (0, 1], with log1p(e) = e q(e)
// and q a degree-7 polynomial, minimax in relative error over [0, 1] (2e-7; fitted by
// scripts/fit_softplus.py): over [-20, 20] within 1e-6 of the f64 value, as log1pf's form
// (both limited by the exp2), with one special-function instruction where the atanh series
// this replaced took two (its e / (2 + e)), and without log1pf's branches for special
// inputs, which cut every row of a tile into basic blocks of its own. Past x = 15 the
// log1p term is below half an ulp of x, so the sum is x exactly: no select for large x
// either. Roundings pinned (see step_state). The slope, sigmoid(x), reuses e: 1 / (1 + e)
// for x >= 0, e / (1 + e) below.
struct Softplus {
    float value;
    float slope;
};

__device__ __forceinline__ Softplus softplus_with_slope(float x) {
    const float e = fast_exp2(-fabsf(x) * LOG2E);
    const float q_coefficients[] = {9.999998212e-01f, -4.999740720e-01f, 3.327548802e-01f,
                                    -2.449549437e-01f, 1.774531305e-01f, -1.076825857e-01f,
                                    4.409017786e-02f, -8.539345115e-03f};
    float q = q_coefficients[7];
#pragma unroll
    for (int k = 6; k >= 0; --k) q = __fmaf_rn(q, e, q_coefficients[k]);
    return {__fmaf_rn(q, e, fmaxf(x, 0.0f)), __fdividef(x >= 0.0f ? 1.0f : e, 1.0f + e)};
}

// The forward's arithmetic with every rounding pinned (explicit products and fmas, which
// the compiler neither contracts nor splits), so that every kernel that steps a state or
// makes an output, in every stream build, gives the same bits: the backward remakes the
// forward's output bit for bit, and bf16 streams give the f32 scan's results exactly.
//
// One step of a state: h <- decay h + x b.
__device__ __forceinline__ float step_state(float decay, float h, float x, float b) {
    return __fmaf_rn(decay, h, __fmul_rn(x, b));
}

// A partial output sum: y + c h.
__device__ __forceinline__ float add_output(float y, float c, float h) { return __fmaf_rn(c, h, y); }

// The output before the gate: the state sum y plus the skip term D u.
__device__ __forceinline__ float with_skip(float y, float skip, float u) { return __fmaf_rn(skip, u, y); }

__device__ __forceinline__ float softplus(float x) { return softplus_with_slope(x).value; }

__device__ __forceinline__ float sigmoid(float x) {
    return __fdividef(1.0f, 1.0f + fast_exp2(-x * LOG2E));
}

// The output's gate, silu(z) = z sigmoid(z): one expression for every kernel that gates an
// output, so the backward's remade output has the forward's bits.
__device__ __forceinline__ float gate_of(float z) { return z * sigmoid(z); }

// ---------------------------------------------------------------------------------------
// Per-channel kernels (forward segment/output, backward segment): a thread per channel
// with all STATE states in registers. Inputs are staged TILE positions at a time in
// shared memory by asynchronous copies, double-buffered: the next tile is in flight while
// the current one is computed, so memory latency hides behind the exps. Each thread reads
// its own channel's column; the B/C rows are shared by the block.

#define TILE 16
#define CH_THREADS 128

enum TileKind { FWD_LOCAL = 0, FWD_OUTPUT = 1, BWD_LOCAL = 2 };

struct ChannelTile {
    float delta[TILE][CH_THREADS];
    float x[TILE][CH_THREADS];      // forward: u; backward: d_out
    float z[TILE][CH_THREADS];      // bf16 streams: [TILE][CH_THREADS] bits in the first half
    float4 rows[TILE][2 * STATE / 4];  // B then C
    u32 reset[TILE];
};

// Copies `bytes` (4 or 16) from global to shared memory asynchronously; zero-fills
// instead when `valid` is false (nothing is read then).
template <int BYTES>
__device__ __forceinline__ void copy_async(void* dst, const void* src, bool valid) {
    const u32 to = static_cast<u32>(__cvta_generic_to_shared(dst));
    const int size = valid ? BYTES : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(to), "l"(src), "n"(BYTES), "r"(size));
}

__device__ __forceinline__ void copy_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most PENDING committed groups (tiles in flight) are still pending.
template <int PENDING>
__device__ __forceinline__ void copy_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING)); }

// a[j] by selects rather than an indexed load: a runtime index would put the array in
// local memory.
template <typename T, int N>
__device__ __forceinline__ T pick(const T (&a)[N], int j) {
    T v = a[0];
#pragma unroll
    for (int k = 1; k < N; ++k) v = j == k ? a[k] : v;
    return v;
}

// Column of element (r, ch) in a quad kernel's [ROWS][channels] shared array: 8-channel
// blocks xor-ed by the row's quarter of the sub-chunk. A quad's four threads read rows
// from four different quarters at once (quad_rows_from) with the same channel; unswizzled,
// rows a multiple of 32 words apart would put all four in one bank.
template <int ROWS>
__device__ __forceinline__ int swizzled(int r, int ch) {
    return ch ^ (8 * ((r / (ROWS / 4)) & 3));
}

// Stages rows [ts, ts + ROWS) (clipped at t1) of COLS bf16 streams for WIDTH channels from
// channel c0: stream j's bits into dsts[j][r * WIDTH + ch] (column swizzled<ROWS>(r, ch) if
// SWIZZLED), where wanted[j]. The block shares the copies out over all the streams, each
// copy taking 8 channels of a row (16 bytes; STREAMS_BF16 == 1) or one element. The shapes
// are constants: the index arithmetic is shifts, and where a pass of the block covers whole
// streams, which stream a copy is of is a constant too (a pointer picked at run time is one
// more live register pair).
template <int COLS, int WIDTH, int ROWS, int THREADS, bool SWIZZLED>
__device__ __forceinline__ void issue_bf16_streams(const ScanArgs& p, const void* const (&srcs)[COLS],
                                                   const bool (&wanted)[COLS], float* const (&dsts)[COLS], int b,
                                                   int c0, int ts, int t1) {
    constexpr int VEC = 8;
    const size_t row0 = (size_t)b * p.len + ts;
    if constexpr (STREAMS_BF16 == 1) {
        // A thread's pieces are of one channel, whole rows apart, and a pass of the block
        // is of one stream: the thread's first element is worked out once and every piece
        // is a constant number of rows further (per piece an add and a select, not a
        // 64-bit index).
        constexpr int PIECES = WIDTH / VEC;  // of a row
        constexpr int PER_COL = ROWS * PIECES;
        static_assert(THREADS % PIECES == 0 && PER_COL % THREADS == 0, "pieces of one channel, passes of one stream");
        const int r0 = threadIdx.x / PIECES;
        const int ch = VEC * (threadIdx.x % PIECES);
        const bool in_range = c0 + ch < p.channels;
        const size_t first = (row0 + r0) * p.channels + c0 + ch;
#pragma unroll
        for (int k = 0; k < COLS * PER_COL / THREADS; ++k) {
            const int j = k * THREADS / PER_COL;
            if (!wanted[j]) continue;
            const int r = r0 + k * THREADS % PER_COL / PIECES;
            const bool valid = in_range && ts + r < t1;
            // Nothing is read where not valid; the address stays the stream's own.
            const size_t i = valid ? first + (size_t)(r - r0) * p.channels : 0;
            const int col = SWIZZLED ? swizzled<ROWS>(r, ch) : ch;
            unsigned short* dst = reinterpret_cast<unsigned short*>(dsts[j]) + r * WIDTH + col;
            copy_async<2 * VEC>(dst, static_cast<const unsigned short*>(srcs[j]) + i, valid);
        }
    } else {
        constexpr int PER_COL = ROWS * WIDTH;
        for (int w = threadIdx.x; w < COLS * PER_COL; w += THREADS) {
            const int j = w / PER_COL;
            if (!pick(wanted, j)) continue;
            const int r = (w % PER_COL) / WIDTH;
            const int ch = w % WIDTH;
            const bool valid = c0 + ch < p.channels && ts + r < t1;
            const size_t i = (row0 + r) * p.channels + c0 + ch;
            const int col = SWIZZLED ? swizzled<ROWS>(r, ch) : ch;
            reinterpret_cast<unsigned short*>(pick(dsts, j))[r * WIDTH + col] =
                valid ? static_cast<const unsigned short*>(pick(srcs, j))[i] : 0;
        }
    }
}

template <int KIND>
__device__ __forceinline__ void issue_channel_tile(const ScanArgs& p, ChannelTile& tile, int b, int d,
                                                   int ts, int t1) {
    const int tid = threadIdx.x;
    const bool active = d < p.channels;
    const void* x_src = KIND == BWD_LOCAL ? p.d_out : p.u;
    const bool gated = KIND != FWD_LOCAL && p.z != nullptr;
    if (STREAMS_BF16) {
        const void* const srcs[3] = {p.delta, x_src, p.z};
        const bool wanted[3] = {true, true, gated};
        float* const dsts[3] = {&tile.delta[0][0], &tile.x[0][0], &tile.z[0][0]};
        issue_bf16_streams<3, CH_THREADS, TILE, CH_THREADS, false>(p, srcs, wanted, dsts, b,
                                                                   blockIdx.x * CH_THREADS, ts, t1);
    } else {
#pragma unroll
        for (int r = 0; r < TILE; ++r) {
            const bool valid = active && ts + r < t1;
            const size_t i = valid ? ((size_t)b * p.len + ts + r) * p.channels + d : 0;
            copy_async<4>(&tile.delta[r][tid], static_cast<const float*>(p.delta) + i, valid);
            copy_async<4>(&tile.x[r][tid], static_cast<const float*>(x_src) + i, valid);
            if (gated) copy_async<4>(&tile.z[r][tid], static_cast<const float*>(p.z) + i, valid);
        }
    }
    {
        const int r = tid / 8, q = tid % 8;  // 128 threads = TILE rows x 8 float4
        const bool wanted = KIND == FWD_OUTPUT || (KIND == FWD_LOCAL ? q < 4 : q >= 4);
        const bool valid = wanted && ts + r < t1;
        const size_t row = valid ? (size_t)b * p.len + ts + r : 0;
        const float* src = q < 4 ? p.b + row * STATE + 4 * q : p.c + row * STATE + 4 * (q - 4);
        copy_async<16>(&tile.rows[r][q], src, valid);
    }
    if (tid < TILE) {
        const bool valid = p.resets != nullptr && ts + tid < t1;
        copy_async<4>(&tile.reset[tid], p.resets + (valid ? (size_t)b * p.len + ts + tid : 0), valid);
    }
    copy_commit();
}

// The thread's element at row r of a staged stream (delta, x or z).
__device__ __forceinline__ float tile_col(const float (&col)[TILE][CH_THREADS], int r) {
    return load_as(col, (size_t)r * CH_THREADS + threadIdx.x, STREAMS_BF16);
}

__device__ __forceinline__ void tile_row(const ChannelTile& tile, int r, int half, float (&v)[STATE]) {
#pragma unroll
    for (int q = 0; q < STATE / 4; ++q) {
        const float4 x = tile.rows[r][half * (STATE / 4) + q];
        v[4 * q] = x.x;
        v[4 * q + 1] = x.y;
        v[4 * q + 2] = x.z;
        v[4 * q + 3] = x.w;
    }
}

// The dt a step's decay takes: +inf at a reset, so that exp2(A * inf) = 0 (A < 0) drops
// the carried state (or its gradient) without a branch or a select per state.
__device__ __forceinline__ float reset_dt(float dt, u32 reset) { return reset ? __int_as_float(0x7f800000) : dt; }

// A (natural) scaled by log2(e) for exp2, kept below zero so that a reset's infinite dt
// gives exp2(-inf) = 0 even where exp(a_log) underflows; exp2 of -FLT_MIN * dt is 1, as
// exp2(0) would be.
__device__ __forceinline__ float scaled_a(float a_nat) { return fminf(a_nat * LOG2E, -1.17549435e-38f); }

// A = -exp(a_log) of channel d, state n.
__device__ __forceinline__ float natural_a(const ScanArgs& p, int d, int n) {
    return -__expf(__ldg(p.a_log + (size_t)d * STATE + n));
}

__device__ __forceinline__ void load_a2(const ScanArgs& p, int d, float (&a2)[STATE]) {
#pragma unroll
    for (int n = 0; n < STATE; ++n) a2[n] = scaled_a(natural_a(p, d, n));
}

// Walks the tiles of [t0, t1) forward (or backward), calling `body(tile, start, steps)`
// with each tile resident. Every thread of the block must call it.
template <int KIND, bool REVERSE, typename Body>
__device__ __forceinline__ void for_each_tile(const ScanArgs& p, ChannelTile* tiles, int b, int d, int t0,
                                              int t1, Body body) {
    const int count = (t1 - t0 + TILE - 1) / TILE;
    auto start = [&](int k) { return REVERSE ? t0 + (count - 1 - k) * TILE : t0 + k * TILE; };
    issue_channel_tile<KIND>(p, tiles[0], b, d, start(0), t1);
    for (int k = 0; k < count; ++k) {
        if (k + 1 < count) {
            issue_channel_tile<KIND>(p, tiles[(k + 1) & 1], b, d, start(k + 1), t1);
        } else {
            copy_commit();  // an empty group keeps the wait count uniform
        }
        copy_wait<1>();
        __syncthreads();
        const int ts = start(k);
        // The backward segment pass takes a whole tile's body inlined with a constant
        // length, with no test per row (measured 1-1.5 % faster; the forward kernels
        // measured ~1 % slower so).
        if (KIND == BWD_LOCAL && t1 - ts >= TILE) {
            body(tiles[k & 1], ts, TILE);
        } else {
            body(tiles[k & 1], ts, min(TILE, t1 - ts));
        }
        __syncthreads();  // the buffer is refilled two tiles on
    }
}

// ---------------------------------------------------------------------------------------
// Forward

// Segments 0 .. segments-2: the last segment's end state is the final state, which the
// output pass makes.
extern "C" __global__ void __launch_bounds__(CH_THREADS) scan_fwd_segment(ScanArgs p) {
    extern __shared__ ChannelTile tiles[];
    const int d = blockIdx.x * CH_THREADS + threadIdx.x;
    const int s = blockIdx.y;
    const int b = blockIdx.z;
    const bool active = d < p.channels;
    const int dd = active ? d : p.channels - 1;
    float a2[STATE];
    load_a2(p, dd, a2);
    const float bias = __ldg(p.delta_bias + dd);
    float h[STATE];
#pragma unroll
    for (int n = 0; n < STATE; ++n) h[n] = 0.0f;
    float sum = 0.0f;
    bool cut = false;
    const int t0 = s * p.seg_len;
    const int t1 = min(t0 + p.seg_len, p.len);
    for_each_tile<FWD_LOCAL, false>(p, tiles, b, d, t0, t1, [&](const ChannelTile& tile, int, int steps) {
        // The softplus chains of the whole tile first, independent of the states.
        float dts[TILE];
#pragma unroll
        for (int r = 0; r < TILE; ++r) dts[r] = softplus(tile_col(tile.delta, r) + bias);
#pragma unroll
        for (int r = 0; r < TILE; ++r) {
            if (r >= steps) break;
            cut |= tile.reset[r] != 0;
            const float dt_decay = reset_dt(dts[r], tile.reset[r]);
            const float x = dts[r] * tile_col(tile.x, r);
            float bt[STATE];
            tile_row(tile, r, 0, bt);
#pragma unroll
            for (int n = 0; n < STATE; ++n) h[n] = step_state(fast_exp2(a2[n] * dt_decay), h[n], x, bt[n]);
            sum += dts[r];
        }
    });
    if (!active) return;
    const size_t slot = ((size_t)b * p.segments + s) * p.channels + d;
    store_row(p.seg_state + slot * STATE, h);
    p.seg_sum[slot] = cut ? -1.0f : sum;
}

// The combine kernels load segment summaries this many at a time ahead of the chain:
// the chain itself is a few flops, the loads are what take time.
#define COMBINE_AHEAD 8

// One thread per (batch, channel, state): replaces each segment's local end state by the
// true state entering that segment.
extern "C" __global__ void __launch_bounds__(256) scan_fwd_combine(ScanArgs p) {
    const size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= (size_t)p.batch * p.channels * STATE) return;
    const int n = k % STATE;
    const int d = (k / STATE) % p.channels;
    const int b = k / ((size_t)STATE * p.channels);
    const float a2 = scaled_a(natural_a(p, d, n));
    float h = p.state != nullptr ? p.state[k] : 0.0f;
    for (int s0 = 0; s0 < p.segments; s0 += COMBINE_AHEAD) {
        float sums[COMBINE_AHEAD], locals[COMBINE_AHEAD];
#pragma unroll
        for (int j = 0; j < COMBINE_AHEAD; ++j) {
            // The last segment has no summary (nothing after it needs its carry).
            const size_t slot = ((size_t)b * p.segments + min(s0 + j, p.segments - 2)) * p.channels + d;
            sums[j] = p.seg_sum[slot];
            locals[j] = p.seg_state[slot * STATE + n];
        }
#pragma unroll
        for (int j = 0; j < COMBINE_AHEAD; ++j) {
            if (s0 + j >= p.segments) break;
            const size_t slot = ((size_t)b * p.segments + s0 + j) * p.channels + d;
            p.seg_state[slot * STATE + n] = h;
            if (s0 + j == p.segments - 1) break;
            const float decay = sums[j] < 0.0f ? 0.0f : fast_exp2(a2 * sums[j]);
            h = decay * h + locals[j];
        }
    }
}

// bf16 builds unroll a tile's rows (below): registers capped for four blocks an SM.
#if STREAMS_BF16
#define FWD_OUTPUT_BOUNDS __launch_bounds__(CH_THREADS, 4)
#else
#define FWD_OUTPUT_BOUNDS __launch_bounds__(CH_THREADS)
#endif
extern "C" __global__ void FWD_OUTPUT_BOUNDS scan_fwd_output(ScanArgs p) {
    extern __shared__ ChannelTile tiles[];
    const int d = blockIdx.x * CH_THREADS + threadIdx.x;
    const int s = blockIdx.y;
    const int b = blockIdx.z;
    const bool active = d < p.channels;
    const int dd = active ? d : p.channels - 1;
    float a2[STATE];
    load_a2(p, dd, a2);
    const float bias = __ldg(p.delta_bias + dd);
    const float skip = __ldg(p.d_skip + dd);
    const bool gated = p.z != nullptr;
    float h[STATE];
    const size_t own = (size_t)b * p.channels + dd;
    if (p.segments > 1) {
        load_row(p.seg_state + (((size_t)b * p.segments + s) * p.channels + dd) * STATE, h);
    } else if (p.state != nullptr) {
        load_row(p.state + own * STATE, h);
    } else {
#pragma unroll
        for (int n = 0; n < STATE; ++n) h[n] = 0.0f;
    }
    const int t0 = s * p.seg_len;
    const int t1 = min(t0 + p.seg_len, p.len);
    // Segments are whole chunks: the next checkpoint is counted, not divided out per row.
    int next_checkpoint = t0, checkpoint = t0 / p.chunk;
    // Row r of a tile: the checkpoint it starts, its state steps and its output. Its dt and
    // gate come from `dt_of()` and `gate_of_row()`, called where the loop over rows made
    // them, so that the f32 builds' code stays the measured one (passed as values, its
    // schedule changed).
    auto step_row = [&](const ChannelTile& tile, int ts, int r, auto dt_of, auto gate_of_row) {
        const int t = ts + r;
        const size_t row = (size_t)b * p.len + t;
        if (t == next_checkpoint) {
            if (active && p.checkpoints != nullptr) {
                const size_t at = ((size_t)b * p.chunks + checkpoint) * p.channels + d;
                store_row(p.checkpoints + at * STATE, h);
            }
            next_checkpoint += p.chunk;
            ++checkpoint;
        }
        const float uu = tile_col(tile.x, r);
        const float dt = dt_of();
        const float dt_decay = reset_dt(dt, tile.reset[r]);
        const float x = dt * uu;
        float bt[STATE], ct[STATE];
        tile_row(tile, r, 0, bt);
        tile_row(tile, r, 1, ct);
        // Summed in the backward main kernel's order (four states per partial, as its
        // threads hold them), so that the output it makes again has these bits.
        float y[GROUPS] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int n = 0; n < STATE; ++n) {
            h[n] = step_state(fast_exp2(a2[n] * dt_decay), h[n], x, bt[n]);
            y[n / GROUP_STATES] = add_output(y[n / GROUP_STATES], ct[n], h[n]);
        }
        float out = with_skip((y[0] + y[1]) + (y[2] + y[3]), skip, uu);
        const float gate = gate_of_row();  // taken ungated too (then unused): no branch
        if (gated) out *= gate;
        if (active) store_as(p.out, row * p.channels + d, out, p.out_bf16);
    };
    for_each_tile<FWD_OUTPUT, false>(p, tiles, b, d, t0, t1, [&](const ChannelTile& tile, int ts, int steps) {
        if constexpr (STREAMS_BF16 != 0) {
            // As in the segment pass, the tile's softplus and gate chains first, independent
            // of the states, then its rows unrolled: 1-6 % faster at batch 1 with bf16
            // streams, but 4 % slower at (1,1024,32768) with f32 ones (measured), which keep
            // a loop over rows.
            float dts[TILE], gates[TILE];
#pragma unroll
            for (int r = 0; r < TILE; ++r) {
                dts[r] = softplus(tile_col(tile.delta, r) + bias);
                gates[r] = gate_of(tile_col(tile.z, r));
            }
#pragma unroll
            for (int r = 0; r < TILE; ++r) {
                if (r >= steps) break;
                step_row(tile, ts, r, [&] { return dts[r]; }, [&] { return gates[r]; });
            }
        } else {
            for (int r = 0; r < steps; ++r) {
                step_row(
                    tile, ts, r, [&] { return softplus(tile_col(tile.delta, r) + bias); },
                    [&] { return gate_of(tile_col(tile.z, r)); });
            }
        }
    });
    if (active && s == p.segments - 1 && p.state != nullptr) {
        store_row(p.state + own * STATE, h);
    }
}

// ---------------------------------------------------------------------------------------
// Backward

// Gradient w.r.t. the state entering each segment, from that segment's positions alone:
// segments 1 .. segments-1 (nothing enters segment 0 from before the row). Two staged
// tiles fit four blocks an SM in shared memory; registers are capped to match.
extern "C" __global__ void __launch_bounds__(CH_THREADS, 4) scan_bwd_segment(ScanArgs p) {
    extern __shared__ ChannelTile tiles[];
    const int d = blockIdx.x * CH_THREADS + threadIdx.x;
    const int s = blockIdx.y + 1;
    const int b = blockIdx.z;
    const bool active = d < p.channels;
    const int dd = active ? d : p.channels - 1;
    float a2[STATE];
    load_a2(p, dd, a2);
    const float bias = __ldg(p.delta_bias + dd);
    const bool gated = p.z != nullptr;
    float dh[STATE];
#pragma unroll
    for (int n = 0; n < STATE; ++n) dh[n] = 0.0f;
    float sum = 0.0f;
    bool cut = false;
    const int t0 = s * p.seg_len;
    const int t1 = min(t0 + p.seg_len, p.len);
    for_each_tile<BWD_LOCAL, true>(p, tiles, b, d, t0, t1, [&](const ChannelTile& tile, int, int steps) {
        // The softplus and gate chains of the whole tile first, independent of the states.
        float dts[TILE], gs[TILE];
#pragma unroll
        for (int r = 0; r < TILE; ++r) {
            dts[r] = softplus(tile_col(tile.delta, r) + bias);
            const float zz = tile_col(tile.z, r);
            const float gate = gate_of(zz);  // taken ungated too: no branch per row
            gs[r] = tile_col(tile.x, r) * (gated ? gate : 1.0f);
        }
#pragma unroll
        for (int r = TILE - 1; r >= 0; --r) {
            if (r >= steps) continue;
            float ct[STATE];
            tile_row(tile, r, 1, ct);
            sum += dts[r];
            cut |= tile.reset[r] != 0;
            const float dt_decay = reset_dt(dts[r], tile.reset[r]);
#pragma unroll
            for (int n = 0; n < STATE; ++n) dh[n] = (dh[n] + gs[r] * ct[n]) * fast_exp2(a2[n] * dt_decay);
        }
    });
    if (!active) return;
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
    const float a2 = scaled_a(natural_a(p, d, n));
    float e = 0.0f;
    for (int s0 = p.segments - 1; s0 >= 0; s0 -= COMBINE_AHEAD) {
        float sums[COMBINE_AHEAD], locals[COMBINE_AHEAD];
#pragma unroll
        for (int j = 0; j < COMBINE_AHEAD; ++j) {
            // Segment 0 has no summary (nothing before it takes its gradient).
            const size_t slot = ((size_t)b * p.segments + max(s0 - j, 1)) * p.channels + d;
            sums[j] = p.seg_sum[slot];
            locals[j] = p.seg_state[slot * STATE + n];
        }
#pragma unroll
        for (int j = 0; j < COMBINE_AHEAD; ++j) {
            if (s0 - j < 0) break;
            const size_t slot = ((size_t)b * p.segments + s0 - j) * p.channels + d;
            p.seg_state[slot * STATE + n] = e;
            if (s0 - j == 0) break;
            const float decay = sums[j] < 0.0f ? 0.0f : fast_exp2(a2 * sums[j]);
            e = locals[j] + decay * e;
        }
    }
}

// Lanes of the quad kernels: a warp holds WARP_CHANNELS channels of GROUPS threads each.
// Shared memory returns two lanes' registers a cycle where lanes n and n ^ 1 (or n ^ 2)
// read one address, so the lane bits are dealt out for the two per-row loads of the walk:
// lanes n and n ^ 1 are two channels of one group (one piece of a B/C row: its LDS.128
// takes 2 wavefronts, not 4), lanes n and n ^ 2 two groups of one channel (one tile
// element: an LDS.64 of x and dt_decay takes 1). Channel = lane bits 0, 2, 3; group =
// lane bits 1, 4.
#define WARP_CHANNELS (32 / GROUPS)

struct QuadLane {
    int ch;     // channel within the block
    int group;  // states group * GROUP_STATES ..
};

// (tid: the thread's index among the block's quad threads.)
__device__ __forceinline__ QuadLane quad_lane(unsigned tid = threadIdx.x) {
    const int lane = tid % 32;
    const int ch = (lane & 1) | (lane >> 1 & 6);
    const int group = (lane >> 1 & 1) | (lane >> 3 & 2);
    return {(int)tid / 32 * WARP_CHANNELS + ch, group};
}

// Lane masks of quad_lane's channel bits, highest first, and its group bits. (quad_lane
// built from these masks gave another schedule: f32 busy forward 3 % slower, measured.)
#define CHANNEL_BIT2 8
#define CHANNEL_BIT1 4
#define CHANNEL_BIT0 1
#define GROUP_BIT0 2
#define GROUP_BIT1 16

// The lane holding the same channel's group `group ^ mask`.
__device__ __forceinline__ float from_group(float v, int mask) {
    return __shfl_xor_sync(0xffffffffu, v, (mask & 1 ? GROUP_BIT0 : 0) | (mask & 2 ? GROUP_BIT1 : 0));
}

__device__ __forceinline__ float quad_sum(float v) {
    v += from_group(v, 1);
    v += from_group(v, 2);
    return v;
}

// Sums v[r] over a channel's four threads for every row r, transposed: lane `group` ends
// with the sums of ROWS / 4 rows from quad_rows_from(group), added in quad_sum's order
// (so with its bits), in 3 * ROWS / 4 exchanges instead of 2 * ROWS.
__device__ __forceinline__ int quad_rows_from(int group, int rows) {
    return (group & 1 ? rows / 2 : 0) + (group & 2 ? rows / 4 : 0);
}

template <int ROWS>
__device__ __forceinline__ void quad_sums_transposed(const float (&v)[ROWS], int group, float (&sums)[ROWS / 4]) {
    const bool odd1 = group & 1, odd2 = group & 2;
    float half[ROWS / 2];
#pragma unroll
    for (int i = 0; i < ROWS / 2; ++i) {
        const float send = odd1 ? v[i] : v[ROWS / 2 + i];
        const float keep = odd1 ? v[ROWS / 2 + i] : v[i];
        half[i] = keep + from_group(send, 1);
    }
#pragma unroll
    for (int i = 0; i < ROWS / 4; ++i) {
        const float send = odd2 ? half[i] : half[ROWS / 4 + i];
        const float keep = odd2 ? half[ROWS / 4 + i] : half[i];
        sums[i] = keep + from_group(send, 2);
    }
}

enum QuadColumn { COL_DELTA = 0, COL_U = 1, COL_Z = 2, COL_D_OUT = 3, QUAD_COLUMNS = 4 };

// What a quad kernel stages and transforms for a sub-chunk: rebuilding states needs delta,
// u and B; making the output also z and C; the backward also d_out.
enum QuadNeeds { QUAD_REBUILD = 0, QUAD_OUTPUT = 1, QUAD_BACKWARD = 2 };

// Raw inputs of one sub-chunk (ROWS positions) for a block's CHANNELS channels, filled by
// asynchronous copies ahead of use: the first COLUMNS of delta, u, z, d_out (the forward
// stages no d_out).
template <int CHANNELS_, int ROWS_, int COLUMNS_>
struct QuadRaw {
    static constexpr int CHANNELS = CHANNELS_, ROWS = ROWS_, COLUMNS = COLUMNS_;
    float cols[COLUMNS][ROWS][CHANNELS];  // bf16: bits in each column's first half
    float4 rows[ROWS][2 * STATE / 4];  // B then C
    u32 reset[ROWS];

    // Column c's first element; null for a column not staged here.
    __device__ __forceinline__ float* column(int c) { return c < COLUMNS ? &cols[c][0][0] : nullptr; }
};

// Row r, column `at` (a channel's swizzled column) of staged column c: f32, or bf16 bits
// in the column's first half.
template <typename Raw>
__device__ __forceinline__ float raw_at(const Raw& raw, int c, int r, int at) {
    return load_as(raw.cols[c], (size_t)r * Raw::CHANNELS + at, STREAMS_BF16);
}

// Per-(position, channel) scalars of one sub-chunk of the backward main kernel, computed
// once per block rather than once per thread of a channel's quad: what rebuilding states
// needs (xd), then what the walk and the outputs need besides.
template <int CHANNELS, int ROWS>
struct QuadTile {
    float2 xd[ROWS][CHANNELS];  // dt * u, reset_dt: one load a row in the walk
    float gate[ROWS][CHANNELS];  // z * sigmoid(z): the output is y * gate
    float dt[ROWS][CHANNELS];
    float g[ROWS][CHANNELS];     // d_out * silu(z): gradient w.r.t. y
    float zf[ROWS][CHANNELS];    // dz = y * zf
    float dsp[ROWS][CHANNELS];   // softplus'(delta + bias)
};

// du, ddelta, dz and the forward's output of one sub-chunk, gathered so that the block
// writes them in whole rows: [position][output][channel].
typedef float QuadOut[SUB][GROUPS][BWD_CHANNELS];

// A block of CHANNELS channels has GROUPS threads a channel; each thread copies,
// transforms and writes ROWS / GROUPS elements of a sub-chunk, QUAD_ROW_STEP rows apart.
#define QUAD_ROW_STEP GROUPS

// The (position, channel) elements a thread copies, transforms and writes out: channel
// `ch` of the block at rows row, row + QUAD_ROW_STEP, ... of each sub-chunk. Fixed for
// the whole kernel, so the channel's bias and the address arithmetic are done once.
struct QuadElements {
    int ch;
    int row;
    int d;
    bool active;
    float bias;
    size_t row_stride;  // elements from one of the thread's rows to its next
};

template <int CHANNELS>
__device__ __forceinline__ QuadElements quad_elements(const ScanArgs& p) {
    QuadElements io;
    io.ch = threadIdx.x % CHANNELS;
    io.row = threadIdx.x / CHANNELS;
    io.d = blockIdx.x * CHANNELS + io.ch;
    io.active = io.d < p.channels;
    io.bias = __ldg(p.delta_bias + min(io.d, p.channels - 1));
    io.row_stride = (size_t)QUAD_ROW_STEP * p.channels;
    return io;
}

// Index of the thread's first element of the sub-chunk starting at ts (batch b).
__device__ __forceinline__ size_t quad_first(const ScanArgs& p, const QuadElements& io, int b, int ts) {
    return ((size_t)b * p.len + ts + io.row) * p.channels + io.d;
}

// The copies a thread starts for each sub-chunk of a quad kernel, planned once: a
// sub-chunk only moves them down to its positions. (Worked out again each sub-chunk with
// the piece's column and row taken at run time, the 64-bit offsets, the stream of each
// piece and the swizzle were a sixth of the quad kernels' executed instructions under
// ncu, for three copies a thread.)
//
// Where every row of the streams is 16-byte aligned (bf16 built with STREAMS_BF16=1, f32
// with channels a multiple of 4) they come in 16-byte pieces dealt out over the block:
// the thread copies piece tid % PER_COLUMN of columns tid / PER_COLUMN + k * COLUMN_STEP.
// Otherwise element by element, as QuadElements says. LEAN keeps nothing and makes the
// plan again each sub-chunk from constants: the backward main kernel, at its register
// cap, spilled with the plan kept (backward 1-5 % slower, measured); the forward keeps it.
template <typename Raw, bool LEAN>
struct QuadCopies {
    static constexpr int CHANNELS = Raw::CHANNELS, ROWS = Raw::ROWS;
    static constexpr int THREADS = GROUPS * CHANNELS;
    static constexpr int ELEMENT = STREAMS_BF16 ? 2 : 4;  // bytes
    static constexpr int PIECE = 16 / ELEMENT;             // channels
    static constexpr int PER_COLUMN = ROWS * CHANNELS / PIECE;
    static_assert(THREADS % PER_COLUMN == 0 && PER_COLUMN % 32 == 0,
                  "a thread copies the same piece of each of its columns, a warp's columns are one");
    static constexpr int COLUMN_STEP = THREADS / PER_COLUMN;
    static constexpr int SLOTS = (Raw::COLUMNS + COLUMN_STEP - 1) / COLUMN_STEP;
    static constexpr int COLUMN_BYTES = ROWS * CHANNELS * sizeof(float);
    static constexpr int NEVER = QUAD_BACKWARD + 1;

    // The thread's pieces: their row of the sub-chunk (past any row where their channels do
    // not exist: zero-filled), first channel (0 there) and byte offset in a raw buffer.
    struct Piece {
        int row;
        int c;
        u32 to;
    };

    // The plan, kept unless LEAN.
    Piece mine;
    const char* from[SLOTS];  // slot k's piece at position 0 of the block's batch row
    int need[SLOTS];          // the least QuadNeeds that stages slot k's column; NEVER: none
    const float* bc_from;     // threads < ROWS * 8: a B or C piece at position 0
    bool pieces;

    __device__ __forceinline__ QuadCopies(const ScanArgs& p, int b) {
        const size_t addresses = (size_t)p.delta | (size_t)p.u | (size_t)p.d_out | (size_t)p.z;
        pieces = STREAMS_BF16 == 1 || (STREAMS_BF16 == 0 && p.channels % 4 == 0 && addresses % 16 == 0);
        if (LEAN) return;
        mine = piece(p);
#pragma unroll
        for (int k = 0; k < SLOTS; ++k) {
            need[k] = least_needs(p, k);
            from[k] = address(p, k, b, mine.c, 0);
        }
        bc_from = bc_address(p, b, 0);
    }

    __device__ __forceinline__ static Piece piece(const ScanArgs& p) {
        const int tid = threadIdx.x;
        const int at = tid % PER_COLUMN;
        const int row = at / (CHANNELS / PIECE);
        const int ch = PIECE * (at % (CHANNELS / PIECE));
        const int c = blockIdx.x * CHANNELS + ch;
        const bool in_range = c < p.channels;
        const u32 to = tid / PER_COLUMN * COLUMN_BYTES + (row * CHANNELS + swizzled<ROWS>(row, ch)) * ELEMENT;
        return {in_range ? row : 1 << 30, in_range ? c : 0, to};
    }

    __device__ __forceinline__ static int column(int k) { return threadIdx.x / PER_COLUMN + k * COLUMN_STEP; }

    // Slot k's stream; null where the raw buffer has no such column or the stream is absent.
    __device__ __forceinline__ static const void* stream(const ScanArgs& p, int k) {
        const void* const streams[QUAD_COLUMNS] = {p.delta, p.u, p.z, p.d_out};
        return column(k) < Raw::COLUMNS ? pick(streams, column(k)) : nullptr;
    }

    __device__ __forceinline__ static int least_needs(const ScanArgs& p, int k) {
        const int least[QUAD_COLUMNS] = {QUAD_REBUILD, QUAD_REBUILD, QUAD_OUTPUT, QUAD_BACKWARD};
        return stream(p, k) != nullptr ? pick(least, column(k)) : NEVER;
    }

    // Slot k's piece at position t of batch b (inside delta where the slot has no stream).
    __device__ __forceinline__ static const char* address(const ScanArgs& p, int k, int b, int c, int t) {
        const void* base = stream(p, k);
        return static_cast<const char*>(base != nullptr ? base : p.delta) +
               (((size_t)b * p.len + t) * p.channels + c) * ELEMENT;
    }

    __device__ __forceinline__ static const float* bc_address(const ScanArgs& p, int b, int t) {
        const int tid = threadIdx.x;
        return (tid % 8 < 4 ? p.b : p.c) + ((size_t)b * p.len + t) * STATE + 4 * (tid % 4);
    }

    // Starts copying what `needs` asks of positions ts .. ts+ROWS (clipped at t1) of batch
    // b into raw; what lies past t1 or the last channel is zero-filled. Every address is
    // one inside its tensor, even where nothing is read.
    __device__ __forceinline__ void issue(const ScanArgs& p, const QuadElements& io, Raw& raw, int b, int ts,
                                          int t1, int needs) const {
        const int tid = threadIdx.x;
        if constexpr (STREAMS_BF16 == 2) {
            const void* const srcs[QUAD_COLUMNS] = {p.delta, p.u, p.z, p.d_out};
            const bool wanted[QUAD_COLUMNS] = {true, true, needs != QUAD_REBUILD && p.z != nullptr,
                                               needs == QUAD_BACKWARD};
            float* const dsts[QUAD_COLUMNS] = {raw.column(COL_DELTA), raw.column(COL_U), raw.column(COL_Z),
                                               raw.column(COL_D_OUT)};
            issue_bf16_streams<QUAD_COLUMNS, CHANNELS, ROWS, THREADS, true>(p, srcs, wanted, dsts, b,
                                                                            blockIdx.x * CHANNELS, ts, t1);
        } else if (pieces) {
            const Piece at = LEAN ? piece(p) : mine;
            const int t = min(ts + at.row, t1 - 1);
            const size_t shift = (size_t)t * p.channels * ELEMENT;
            char* const base = reinterpret_cast<char*>(&raw.cols[0][0][0]) + at.to;
#pragma unroll
            for (int k = 0; k < SLOTS; ++k) {
                if (needs < (LEAN ? least_needs(p, k) : need[k])) continue;
                const char* src = LEAN ? address(p, k, b, at.c, t) : from[k] + shift;
                copy_async<16>(base + k * COLUMN_STEP * COLUMN_BYTES, src, ts + at.row < t1);
            }
        } else {
            issue_elements(p, io, raw, b, ts, t1, needs);
        }
        if (tid < ROWS * 2 * STATE / 4) {
            const int r = tid / 8;
            const bool valid = (tid % 8 < 4 || needs != QUAD_REBUILD) && ts + r < t1;
            const int t = min(ts + r, t1 - 1);
            const float* src = LEAN ? bc_address(p, b, t) : bc_from + (size_t)t * STATE;
            copy_async<16>(&raw.rows[r][tid % 8], src, valid);
        }
        if (tid < ROWS) {
            const bool valid = p.resets != nullptr && ts + tid < t1;
            copy_async<4>(&raw.reset[tid], p.resets + (valid ? (size_t)b * p.len + ts + tid : 0), valid);
        }
        copy_commit();
    }

    // f32 streams whose rows are not all 16-byte aligned: the thread's elements one by one.
    __device__ __forceinline__ static void issue_elements(const ScanArgs& p, const QuadElements& io, Raw& raw,
                                                          int b, int ts, int t1, int needs) {
        const bool gated = needs != QUAD_REBUILD && p.z != nullptr;
        const size_t first = quad_first(p, io, b, ts);
#pragma unroll
        for (int e = 0; e < ROWS / GROUPS; ++e) {
            const int r = io.row + e * QUAD_ROW_STEP;
            const bool valid = io.active && ts + r < t1;
            const size_t i = valid ? first + e * io.row_stride : 0;
            const int col = swizzled<ROWS>(r, io.ch);
            copy_async<4>(&raw.cols[COL_DELTA][r][col], static_cast<const float*>(p.delta) + i, valid);
            copy_async<4>(&raw.cols[COL_U][r][col], static_cast<const float*>(p.u) + i, valid);
            if (needs == QUAD_BACKWARD) {
                copy_async<4>(raw.column(COL_D_OUT) + r * CHANNELS + col, static_cast<const float*>(p.d_out) + i,
                              valid);
            }
            if (gated) copy_async<4>(&raw.cols[COL_Z][r][col], static_cast<const float*>(p.z) + i, valid);
        }
    }
};

// Turns the raw elements this thread copied into the tile's scalars that `needs` asks
// (QUAD_REBUILD or QUAD_BACKWARD).
template <typename Raw, typename Tile>
__device__ __forceinline__ void transform_quad(const ScanArgs& p, const QuadElements& io, const Raw& raw, Tile& tile,
                                               int needs) {
#pragma unroll
    for (int e = 0; e < Raw::ROWS / GROUPS; ++e) {
        const int r = io.row + e * QUAD_ROW_STEP;
        const int at = swizzled<Raw::ROWS>(r, io.ch);
        const Softplus sp = softplus_with_slope(raw_at(raw, COL_DELTA, r, at) + io.bias);
        const float dt = sp.value;
        tile.xd[r][io.ch] = make_float2(dt * raw_at(raw, COL_U, r, at), reset_dt(dt, raw.reset[r]));
        if (needs == QUAD_REBUILD) continue;
        // The sigmoid without a branch (ungated, of 0 and unused): a branch here would cut
        // the transform into separate basic blocks.
        const float zz = p.z != nullptr ? raw_at(raw, COL_Z, r, at) : 0.0f;
        const float sg = sigmoid(zz);
        if (p.z != nullptr) tile.gate[r][at] = zz * sg;
        const float dout = raw_at(raw, COL_D_OUT, r, at);
        tile.dt[r][at] = dt;
        tile.g[r][at] = p.z != nullptr ? dout * zz * sg : dout;
        if (p.z != nullptr) tile.zf[r][at] = dout * sg * (1.0f + zz * (1.0f - sg));
        tile.dsp[r][at] = sp.slope;
    }
}

// Writes the sub-chunk's du, ddelta (and dz, the output) gathered in `out`: rows
// [ts, ts + steps).
__device__ __forceinline__ void write_quad_out(const ScanArgs& p, const QuadElements& io, const QuadOut& out,
                                               int b, int ts, int steps) {
    const size_t first = quad_first(p, io, b, ts);
#pragma unroll
    for (int e = 0; e < SUB / GROUPS; ++e) {
        const int r = io.row + e * QUAD_ROW_STEP;
        if (!io.active || r >= steps) continue;
        const size_t i = first + e * io.row_stride;
        const int col = swizzled<SUB>(r, io.ch);
        store_as(p.du, i, out[r][0][col], p.du_bf16);
        store_as(p.ddelta, i, out[r][1][col], p.grads_bf16);
        if (p.z != nullptr) store_as(p.dz, i, out[r][2][col], p.grads_bf16);
        if (p.out != nullptr) store_as(p.out, i, out[r][3][col], p.out_bf16);
    }
}

template <typename Raw>
__device__ __forceinline__ void quad_row(const Raw& raw, int r, int half, int group, float (&v)[GROUP_STATES]) {
    const float4 x = raw.rows[r][half * (STATE / 4) + group];
    v[0] = x.x; v[1] = x.y; v[2] = x.z; v[3] = x.w;
}

// A for the thread's states: natural, and scaled for exp2.
__device__ __forceinline__ void quad_a(const ScanArgs& p, int d, int n0, float (&a_nat)[GROUP_STATES],
                                       float (&a2)[GROUP_STATES]) {
#pragma unroll
    for (int j = 0; j < GROUP_STATES; ++j) {
        a_nat[j] = natural_a(p, d, n0 + j);
        a2[j] = scaled_a(a_nat[j]);
    }
}

// Advances the thread's states over row r of a sub-chunk (h <- exp(A dt) h + dt u B),
// giving the decays too; xd is the row's (dt * u, reset_dt) of the thread's channel.
template <typename Raw>
__device__ __forceinline__ void quad_step(const Raw& raw, float2 xd, int r, int group,
                                          const float (&a2)[GROUP_STATES],
                                          float (&h)[GROUP_STATES], float (&decay)[GROUP_STATES]) {
    float bv[GROUP_STATES];
    quad_row(raw, r, 0, group, bv);
#pragma unroll
    for (int j = 0; j < GROUP_STATES; ++j) {
        decay[j] = fast_exp2(a2[j] * xd.y);
        h[j] = step_state(decay[j], h[j], xd.x, bv[j]);
    }
}

// ---------------------------------------------------------------------------------------
// Forward in one pass, used when batch x channels alone give the device enough threads:
// four threads a channel (GROUP_STATES states each), so every exp is taken once where the
// per-channel kernels take each twice for a row cut into segments.
//
// The block's warps have two roles. FWD_WALKERS threads (four a channel, lanes as
// quad_lane) only walk: states in registers, each row's output partial (a thread's four
// states) into shared memory after the sub-chunk. FWD_PRODUCERS threads do the rest: the
// copies, the per-(position, channel) transform (softplus, dt * u) and the outputs (a
// channel's four partials summed in the per-channel kernel's and the backward's order, so
// with their bits; D skip; the gate from z; store). One barrier a sub-chunk k: walkers
// walk k while producers copy k + 3, finish k - 1 and transform k + 1. The walk's exps and the
// producers' work are then on different warps, which the schedulers interleave, and the
// block has twice the warps (a shape such as (8,1536,2048) gives under three blocks a
// multiprocessor). With every thread doing both (the kernel before this one), a thread's
// stream held both in turns and the output sum took 12 exchanges a sub-chunk: 19 % slower
// there (docs/cuda-scan.md, history 29).

#define FWD_CHANNELS 32
// Positions a sub-chunk: twice the backward's, for more independent work between barriers.
#define FWD_ROWS 16
#define FWD_WALKERS (FWD_CHANNELS * GROUPS)
#define FWD_PRODUCERS 128
#define FWD_THREADS (FWD_PRODUCERS + FWD_WALKERS)
static_assert(FWD_PRODUCERS == FWD_CHANNELS * GROUPS, "QuadCopies plans the copies for GROUPS threads a channel");
// Raw buffers: the sub-chunk walked, the one transformed, two being copied (a copy has two
// sub-chunks' time to arrive).
#define FWD_RAWS 4
// Three blocks a multiprocessor (80 registers): unbidden, every build takes more (the bf16
// builds 95, docs/cuda-scan.md history 31).
#define FWD_LAUNCH_BOUNDS __launch_bounds__(FWD_THREADS, 3)
// Both roles' sub-chunk loops unrolled by two, so that each copy's tile and partials
// buffers are constants: 2-3 % faster at training shapes. The f32 stream build keeps the
// producers' loop rolled: unrolled, it spilled 33 words and ran 7-30 % slower.
#define FWD_WALKER_UNROLL _Pragma("unroll 2")
#if STREAMS_BF16
#define FWD_PRODUCER_UNROLL _Pragma("unroll 2")
#else
#define FWD_PRODUCER_UNROLL
#endif
// A producer transforms and finishes FWD_ELEMENTS adjacent channels of one row a sub-chunk:
// each shared access and the output's store then take the four at once.
#define FWD_ELEMENTS 4
static_assert(FWD_PRODUCERS * FWD_ELEMENTS == FWD_ROWS * FWD_CHANNELS, "a producer's elements are one row's");
#define FWD_PRODUCERS_A_ROW (FWD_CHANNELS / FWD_ELEMENTS)

// What the walk reads of a sub-chunk besides the raw B and C rows: xd[i][xd_slot(ch)][j] =
// (dt * u, reset_dt) of row 2i + j, so that a walker loads two rows at once. (The output's
// u and gate are not kept here: a producer reads u and z again from the raw buffer, fewer
// shared-memory accesses than storing and loading them.)
template <int CHANNELS, int ROWS>
struct ForwardTile {
    float2 xd[ROWS / 2][CHANNELS][2];
};

// Four adjacent elements of a staged column as they lie there (bf16 bits or f32), kept in
// registers across a barrier and widened where used.
#if STREAMS_BF16
typedef uint2 StagedGroup;
#else
typedef float4 StagedGroup;
#endif

__device__ __forceinline__ StagedGroup load_staged(const float* column, size_t at) {
    return reinterpret_cast<const StagedGroup*>(column)[at / FWD_ELEMENTS];
}

__device__ __forceinline__ void widen(const StagedGroup& staged, float (&v)[FWD_ELEMENTS]) {
#if STREAMS_BF16
    widen_bf16_words(staged, v);
#else
    v[0] = staged.x; v[1] = staged.y; v[2] = staged.z; v[3] = staged.w;
#endif
}

// Slot of a channel's row pair in a tile's xd: channels within each 4-channel block xor-ed
// by the 8-channel block, so that the 8-byte stores of a producer warp's four rows (channels
// four apart) take two wavefronts, and a walker warp's eight channels stay one 128-byte line.
__device__ __forceinline__ int xd_slot(int ch) { return ch ^ ((ch >> 3) & 3); }

// Column of a channel's output partial of states group `group`: a walker warp's eight
// channels of four groups store into 32 different banks, and a producer's four adjacent
// channels stay adjacent (whole 8-channel blocks swap).
__device__ __forceinline__ int partial_column(int ch, int group) { return ch ^ (WARP_CHANNELS * group); }

struct ForwardShared {
    QuadRaw<FWD_CHANNELS, FWD_ROWS, COL_Z + 1> raws[FWD_RAWS];
    ForwardTile<FWD_CHANNELS, FWD_ROWS> tiles[2];
    float partials[2][FWD_ROWS][GROUPS][FWD_CHANNELS];  // a channel's four output partials a row
};

extern "C" __global__ void FWD_LAUNCH_BOUNDS scan_fwd_one_pass(ScanArgs p) {
    typedef QuadRaw<FWD_CHANNELS, FWD_ROWS, COL_Z + 1> Raw;
    typedef ForwardTile<FWD_CHANNELS, FWD_ROWS> Tile;
    extern __shared__ float4 dynamic_shared[];
    ForwardShared& sh = *reinterpret_cast<ForwardShared*>(dynamic_shared);
    // Producers first: QuadCopies plans the copies by thread index from 0.
    const bool walker = threadIdx.x >= FWD_PRODUCERS;
    const int b = blockIdx.z;
    const bool gated = p.z != nullptr;
    const int subs = (p.len + FWD_ROWS - 1) / FWD_ROWS;

    // Walker: its channel and states.
    const QuadLane quad = quad_lane(threadIdx.x - FWD_PRODUCERS);
    const int group = quad.group;
    const int ch = quad.ch;
    const int d = blockIdx.x * FWD_CHANNELS + ch;
    const bool active = d < p.channels;
    const int n0 = group * GROUP_STATES;
    const QuadElements io = quad_elements<FWD_CHANNELS>(p);
    const QuadCopies<Raw, false> copies(p, b);

    // Producer: the row and first channel of its elements.
    const int prow = threadIdx.x / FWD_PRODUCERS_A_ROW;
    const int pch = FWD_ELEMENTS * (threadIdx.x % FWD_PRODUCERS_A_ROW);
    const int pd = blockIdx.x * FWD_CHANNELS + pch;

    // Past the last sub-chunk an empty group, so that the groups pending stay one a sub-chunk.
    auto issue = [&](int k) {
        if (k < subs) {
            copies.issue(p, io, sh.raws[k % FWD_RAWS], b, k * FWD_ROWS, p.len, QUAD_OUTPUT);
        } else {
            copy_commit();
        }
    };
    // The producer's elements in a raw buffer's columns.
    const size_t staged_at = (size_t)prow * FWD_CHANNELS + swizzled<FWD_ROWS>(prow, pch);
    // Every shared load of the sub-chunk before the first store: the compiler cannot move
    // a shared load above a shared store (they might alias), so interleaved they would
    // serialise the elements.
    auto transform = [&](int k, const float (&bias)[FWD_ELEMENTS]) {
        const Raw& raw = sh.raws[k % FWD_RAWS];
        Tile& tile = sh.tiles[k & 1];
        float delta[FWD_ELEMENTS], uu[FWD_ELEMENTS];
        load_group(&raw.cols[COL_DELTA][0][0], staged_at, STREAMS_BF16, delta);
        load_group(&raw.cols[COL_U][0][0], staged_at, STREAMS_BF16, uu);
        const u32 reset = raw.reset[prow];
        float2 xd[FWD_ELEMENTS];
#pragma unroll
        for (int e = 0; e < FWD_ELEMENTS; ++e) {
            const float dt = softplus(delta[e] + bias[e]);
            xd[e] = make_float2(dt * uu[e], reset_dt(dt, reset));
        }
#pragma unroll
        for (int e = 0; e < FWD_ELEMENTS; ++e) tile.xd[prow / 2][xd_slot(pch + e)][prow % 2] = xd[e];
    };
    // u and z of sub-chunk k for its finish in the next sub-chunk, when k's raw buffer is
    // already taking k + FWD_RAWS.
    StagedGroup next_u, next_z;
    auto keep_for_finish = [&](int k) {
        const Raw& raw = sh.raws[k % FWD_RAWS];
        next_u = load_staged(&raw.cols[COL_U][0][0], staged_at);
        if (gated) next_z = load_staged(&raw.cols[COL_Z][0][0], staged_at);
    };
    // A producer's four outputs of a row in one access: channels a multiple of four, the
    // output aligned.
    const bool whole_groups = p.channels % FWD_ELEMENTS == 0 &&
                              (size_t)p.out % (FWD_ELEMENTS * (p.out_bf16 ? 2 : 4)) == 0;
    // Sub-chunk k's outputs at the producer's elements.
    auto finish = [&](int k, const float (&skip)[FWD_ELEMENTS], int bf16) {
        const int t = k * FWD_ROWS + prow;
        if (t >= p.len) return;
        float y[GROUPS][FWD_ELEMENTS], uu[FWD_ELEMENTS], zz[FWD_ELEMENTS];
#pragma unroll
        for (int g = 0; g < GROUPS; ++g) load_group(&sh.partials[k & 1][prow][g][partial_column(pch, g)], 0, 0, y[g]);
        widen(next_u, uu);
        if (gated) widen(next_z, zz);
        float out[FWD_ELEMENTS];
#pragma unroll
        for (int e = 0; e < FWD_ELEMENTS; ++e) {
            out[e] = with_skip((y[0][e] + y[1][e]) + (y[2][e] + y[3][e]), skip[e], uu[e]);
            if (gated) out[e] *= gate_of(zz[e]);
        }
        const size_t first = ((size_t)b * p.len + t) * p.channels + pd;
        if (whole_groups && pd < p.channels) {
            store_group(p.out, first, out, bf16);
        } else {
#pragma unroll
            for (int e = 0; e < FWD_ELEMENTS; ++e) {
                if (pd + e < p.channels) store_as(p.out, first + e, out[e], bf16);
            }
        }
    };
    // The output's type tested once, each way inlined with a constant.
    auto finish_as_out = [&](int k, const float (&skip)[FWD_ELEMENTS]) {
        if (p.out_bf16) {
            finish(k, skip, 1);
        } else {
            finish(k, skip, 0);
        }
    };

    if (walker) {
        float a_nat[GROUP_STATES], a2[GROUP_STATES];
        quad_a(p, active ? d : p.channels - 1, n0, a_nat, a2);
        const size_t own = ((size_t)b * p.channels + d) * STATE + n0;
        float h[GROUP_STATES] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (active && p.state != nullptr) {
            const float4 saved = *reinterpret_cast<const float4*>(p.state + own);
            h[0] = saved.x; h[1] = saved.y; h[2] = saved.z; h[3] = saved.w;
        }
        int next_checkpoint = 0, checkpoint = 0;
        auto save_checkpoint = [&]() {
            if (active && p.checkpoints != nullptr) {
                const size_t at = (((size_t)b * p.chunks + checkpoint) * p.channels + d) * STATE + n0;
                *reinterpret_cast<float4*>(p.checkpoints + at) = make_float4(h[0], h[1], h[2], h[3]);
            }
            next_checkpoint += p.chunk;
            ++checkpoint;
        };
        auto walk = [&](int k, int steps, bool checked) {
            const Raw& raw = sh.raws[k % FWD_RAWS];
            const Tile& tile = sh.tiles[k & 1];
            const int ts = k * FWD_ROWS;
            // The partials stored after the walk, not row by row (see transform).
            float y[FWD_ROWS];
            float4 xd_pair;
#pragma unroll
            for (int r = 0; r < FWD_ROWS; ++r) {
                y[r] = 0.0f;
                if (checked) {
                    if (r >= steps) continue;  // uniform across the block
                    if (ts + r == next_checkpoint) save_checkpoint();
                }
                if (r % 2 == 0) xd_pair = *reinterpret_cast<const float4*>(&tile.xd[r / 2][xd_slot(ch)][0]);
                const float2 xd = r % 2 == 0 ? make_float2(xd_pair.x, xd_pair.y) : make_float2(xd_pair.z, xd_pair.w);
                float decay[GROUP_STATES], cv[GROUP_STATES];
                quad_step(raw, xd, r, group, a2, h, decay);
                quad_row(raw, r, 1, group, cv);
#pragma unroll
                for (int j = 0; j < GROUP_STATES; ++j) y[r] = add_output(y[r], cv[j], h[j]);
            }
            const int column = partial_column(ch, group);
#pragma unroll
            for (int r = 0; r < FWD_ROWS; ++r) sh.partials[k & 1][r][group][column] = y[r];
        };
        __syncthreads();  // sub-chunk 0 copied
        __syncthreads();  // sub-chunk 0 transformed
        FWD_WALKER_UNROLL
        for (int k = 0; k < subs; ++k) {
            __syncthreads();  // tile k transformed, partials of k - 2 finished
            const int ts = k * FWD_ROWS;
            const int steps = min(FWD_ROWS, p.len - ts);
            if (ts == next_checkpoint) save_checkpoint();
            if (steps == FWD_ROWS && next_checkpoint >= ts + FWD_ROWS) {
                walk(k, steps, false);
            } else {
                walk(k, steps, true);
            }
        }
        __syncthreads();  // the last partials stored
        if (active && p.state != nullptr) {
            *reinterpret_cast<float4*>(p.state + own) = make_float4(h[0], h[1], h[2], h[3]);
        }
    } else {
        float bias[FWD_ELEMENTS], skip[FWD_ELEMENTS];
#pragma unroll
        for (int e = 0; e < FWD_ELEMENTS; ++e) {
            const int channel = min(pd + e, p.channels - 1);
            bias[e] = __ldg(p.delta_bias + channel);
            skip[e] = __ldg(p.d_skip + channel);
        }
        for (int k = 0; k < FWD_RAWS - 1; ++k) issue(k);
        copy_wait<FWD_RAWS - 2>();
        __syncthreads();
        transform(0, bias);
        __syncthreads();
        FWD_PRODUCER_UNROLL
        for (int k = 0; k < subs; ++k) {
            // Sub-chunk k + 1 copied (and visible), k - 1 walked: its raw buffer takes k + 3.
            copy_wait<FWD_RAWS - 3>();
            __syncthreads();
            issue(k + FWD_RAWS - 1);
            if (k > 0) finish_as_out(k - 1, skip);
            if (k + 1 < subs) transform(k + 1, bias);
            keep_for_finish(k);
        }
        __syncthreads();  // the last sub-chunk walked
        finish_as_out(subs - 1, skip);
    }
}

// ---------------------------------------------------------------------------------------
// Backward main kernel

// Sub-chunks of chunk k, and the chunk's positions [c0, c1).
__device__ __forceinline__ int chunk_subs(const ScanArgs& p, int k, int& c0, int& c1) {
    c0 = k * p.chunk;
    c1 = min(c0 + p.chunk, p.len);
    return (c1 - c0 + SUB - 1) / SUB;
}

// Each chunk is visited as 2 * subs - 1 tiles: sub-chunks 0 .. subs-2 forward (to
// rebuild the sub-chunk start states), then subs-1 .. 0 backward. Tile j of chunk k:
__device__ __forceinline__ void quad_tile_at(const ScanArgs& p, int k, int j, int& ts, int& c1, bool& backward) {
    int c0;
    const int subs = chunk_subs(p, k, c0, c1);
    backward = j >= subs - 1;
    const int q = backward ? 2 * subs - 2 - j : j;
    ts = c0 + q * SUB;
}

// Four threads per channel (lanes as quad_lane), each with GROUP_STATES states.
// Block: BWD_CHANNELS channels of one (batch, segment).
extern "C" __global__ void __launch_bounds__(BWD_THREADS, 2) scan_bwd_main(ScanArgs p) {
    // Dynamic (static shared memory stops at 48 KB): the warps' dB/dC sums, then the
    // sub-chunk start states, [sub-chunk][thread].
    extern __shared__ float4 dynamic_shared[];
    typedef float WarpSums[SUB][2 * STATE];
    WarpSums* reduce = reinterpret_cast<WarpSums*>(dynamic_shared);
    float4* sub_states = dynamic_shared + BWD_THREADS / 32 * sizeof(WarpSums) / sizeof(float4);
    typedef QuadRaw<BWD_CHANNELS, SUB, QUAD_COLUMNS> Raw;
    __shared__ Raw raws[2];
    __shared__ QuadTile<BWD_CHANNELS, SUB> tile;
    __shared__ QuadOut quad_out;

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const QuadLane quad = quad_lane();
    const int group = quad.group;
    const int ch = quad.ch;
    const int d = blockIdx.x * BWD_CHANNELS + ch;
    const int s = blockIdx.y;
    const int b = blockIdx.z;
    const bool active = d < p.channels;
    const int dd = active ? d : p.channels - 1;  // inactive threads read a real channel
    const int n0 = group * GROUP_STATES;
    const bool gated = p.z != nullptr;
    const bool remake_out = p.out != nullptr;
    const QuadElements io = quad_elements<BWD_CHANNELS>(p);
    const QuadCopies<Raw, true> copies(p, b);
    // Lets the compiler take an element's row quarter (its swizzle) as a constant: 2 %
    // fewer instructions here, 1-2 % faster. Not in the forward: there the same
    // assumption made 10 % fewer instructions but a schedule 3-7 % slower (measured).
    __builtin_assume(io.row < GROUPS);
    const int mine = quad_rows_from(group, SUB);
    const int col = swizzled<SUB>(mine, ch);  // of the thread's rows in tiles and outputs

    float a_nat[GROUP_STATES], a2[GROUP_STATES];
    quad_a(p, dd, n0, a_nat, a2);
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
    int buffer = 0;
    {
        int ts, c1;
        bool backward;
        quad_tile_at(p, last_chunk, 0, ts, c1, backward);
        copies.issue(p, io, raws[0], b, ts, c1, backward ? QUAD_BACKWARD : QUAD_REBUILD);
    }
    for (int k = last_chunk; k >= first_chunk; --k) {
        int c0, c1;
        const int subs = chunk_subs(p, k, c0, c1);
        const int count = 2 * subs - 1;
        float h[GROUP_STATES];
        {
            const float4 saved = *reinterpret_cast<const float4*>(
                p.checkpoints + (((size_t)b * p.chunks + k) * p.channels + dd) * STATE + n0);
            h[0] = saved.x; h[1] = saved.y; h[2] = saved.z; h[3] = saved.w;
        }
        for (int j = 0; j < count; ++j) {
            // Start the next tile's copies, then wait for this one's.
            const int next_k = j + 1 < count ? k : k - 1;
            if (next_k >= first_chunk) {
                int ts, t1;
                bool backward;
                quad_tile_at(p, next_k, j + 1 < count ? j + 1 : 0, ts, t1, backward);
                copies.issue(p, io, raws[buffer ^ 1], b, ts, t1, backward ? QUAD_BACKWARD : QUAD_REBUILD);
            } else {
                copy_commit();
            }
            copy_wait<1>();
            __syncthreads();
            const Raw& raw = raws[buffer];
            const bool backward = j >= subs - 1;
            const int q = backward ? count - 1 - j : j;
            const int ts = c0 + q * SUB;
            const int steps = min(SUB, c1 - ts);
            if (j <= subs - 1) {
                sub_states[q * BWD_THREADS + tid] = make_float4(h[0], h[1], h[2], h[3]);
            }
            transform_quad(p, io, raw, tile, backward ? QUAD_BACKWARD : QUAD_REBUILD);
            __syncthreads();
            if (!backward) {
                // Rebuild the state at the start of the next sub-chunk.
#pragma unroll
                for (int r = 0; r < SUB; ++r) {
                    float decay[GROUP_STATES];
                    quad_step(raw, tile.xd[r][ch], r, group, a2, h, decay);
                }
            } else {
                // States before and after each of the SUB steps, and their decays.
                float hs[SUB + 1][GROUP_STATES], decay[SUB][GROUP_STATES];
                {
                    const float4 saved = sub_states[q * BWD_THREADS + tid];
                    hs[0][0] = saved.x; hs[0][1] = saved.y; hs[0][2] = saved.z; hs[0][3] = saved.w;
                }
#pragma unroll
                for (int r = 0; r < SUB; ++r) {
#pragma unroll
                    for (int jj = 0; jj < GROUP_STATES; ++jj) hs[r + 1][jj] = hs[r][jj];
                    quad_step(raw, tile.xd[r][ch], r, group, a2, hs[r + 1], decay[r]);
                }
                // Whole sub-chunks (all but a row's last) walk their rows without a test
                // each (the walk inlined with a constant), so rows can overlap.
                // Each row's quad partials of du's B-sum, ddelta's A-sum and y, summed over
                // the quad after the walk (transposed: each thread then finishes two rows).
                float du_parts[SUB], ddt_parts[SUB], y_parts[SUB];
                auto walk = [&](bool checked) {
#pragma unroll
                    for (int r = SUB - 1; r >= 0; --r) {
                        du_parts[r] = ddt_parts[r] = y_parts[r] = 0.0f;
                        if (checked && r >= steps) continue;  // uniform across the block
                        float bv[GROUP_STATES], cv[GROUP_STATES];
                        quad_row(raw, r, 0, group, bv);
                        quad_row(raw, r, 1, group, cv);
                        const int at = swizzled<SUB>(r, ch);
                        const float dt = tile.dt[r][at];
                        const float g = tile.g[r][at];
                        const float x = tile.xd[r][ch].x;
                        // Per state: dh·A·(decayed state) for ddelta, dh·B for du (ddelta's
                        // B·u term is u times the same sum).
                        float y_part = 0.0f, ddt_part = 0.0f, du_part = 0.0f;
                        float db_part[GROUP_STATES], dc_part[GROUP_STATES];
#pragma unroll
                        for (int jj = 0; jj < GROUP_STATES; ++jj) {
                            y_part = add_output(y_part, cv[jj], hs[r + 1][jj]);
                            dh[jj] += g * cv[jj];
                            dc_part[jj] = g * hs[r + 1][jj];
                            du_part += dh[jj] * bv[jj];
                            db_part[jj] = dh[jj] * x;
                            dh[jj] *= decay[r][jj];
                            // dh · (decay · state before the step), with the new dh.
                            const float dh_decayed = dh[jj] * hs[r][jj];
                            ddt_part += dh_decayed * a_nat[jj];
                            da[jj] += dh_decayed * dt;
                        }
                        du_parts[r] = du_part;
                        ddt_parts[r] = ddt_part;
                        y_parts[r] = y_part;
                        // Sum dB and dC over the warp's 8 channels by recursive halving: after
                        // three exchanges each lane holds one of the 32 (quantity, state) sums.
                        const bool hi4 = lane & CHANNEL_BIT2, hi2 = lane & CHANNEL_BIT1, hi1 = lane & CHANNEL_BIT0;
                        float w4[GROUP_STATES];
#pragma unroll
                        for (int jj = 0; jj < GROUP_STATES; ++jj) {
                            const float send = hi4 ? db_part[jj] : dc_part[jj];
                            const float keep = hi4 ? dc_part[jj] : db_part[jj];
                            w4[jj] = keep + __shfl_xor_sync(0xffffffffu, send, CHANNEL_BIT2);
                        }
                        float w2[2];
#pragma unroll
                        for (int jj = 0; jj < 2; ++jj) {
                            const float send = hi2 ? w4[jj] : w4[2 + jj];
                            const float keep = hi2 ? w4[2 + jj] : w4[jj];
                            w2[jj] = keep + __shfl_xor_sync(0xffffffffu, send, CHANNEL_BIT1);
                        }
                        const float send = hi1 ? w2[0] : w2[1];
                        const float keep = hi1 ? w2[1] : w2[0];
                        const float w1 = keep + __shfl_xor_sync(0xffffffffu, send, CHANNEL_BIT0);
                        const int slot = (hi4 ? STATE : 0) + n0 + (hi2 ? 2 : 0) + (hi1 ? 1 : 0);
                        reduce[warp][r][slot] = w1;
                    }
                };
                if (steps == SUB) {
                    walk(false);
                } else {
                    walk(true);
                }
                float du_sums[SUB / 4], ddt_sums[SUB / 4], y_sums[SUB / 4];
                quad_sums_transposed(du_parts, group, du_sums);
                quad_sums_transposed(ddt_parts, group, ddt_sums);
                if (gated || remake_out) quad_sums_transposed(y_parts, group, y_sums);
                // The thread's rows: du, ddelta, dz and the output gathered for row writes.
#pragma unroll
                for (int i = 0; i < SUB / 4; ++i) {
                    const int r = mine + i;
                    if (r >= steps) continue;
                    const float dt = tile.dt[r][col];
                    const float uu = raw_at(raw, COL_U, r, col);
                    const float g = tile.g[r][col];
                    const float dv = (ddt_sums[i] + uu * du_sums[i]) * tile.dsp[r][col];
                    dskip_sum += g * uu;
                    dbias_sum += dv;
                    quad_out[r][0][col] = g * skip + du_sums[i] * dt;
                    quad_out[r][1][col] = dv;
                    if (gated || remake_out) {
                        const float y = with_skip(y_sums[i], skip, uu);
                        if (gated) quad_out[r][2][col] = y * tile.zf[r][col];
                        quad_out[r][3][col] = gated ? y * tile.gate[r][col] : y;
                    }
                }
                __syncthreads();
                write_quad_out(p, io, quad_out, b, ts, steps);
                // 256 threads = SUB positions x 32 (quantity, state) sums, over warps in order.
                {
                    const int r = tid / (2 * STATE);
                    const int slot = tid % (2 * STATE);
                    if (r < steps) {
                        float total = 0.0f;
#pragma unroll
                        for (int w = 0; w < BWD_THREADS / 32; ++w) total += reduce[w][r][slot];
                        float* part = slot < STATE ? p.part_b : p.part_c;
                        part[(((size_t)blockIdx.x * p.batch + b) * p.len + ts + r) * STATE + slot % STATE] = total;
                    }
                }
            }
            __syncthreads();  // tile, outputs, reduce and this raw buffer are rewritten next
            buffer ^= 1;
        }
    }
    // Each thread summed its own rows; the quad's four sums in a fixed order.
    dskip_sum = quad_sum(dskip_sum);
    dbias_sum = quad_sum(dbias_sum);
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

// dA_log, dD, dbias: accumulated into the gradients from the (batch, segment) partials,
// summed in a fixed order: REDUCE_RUNS runs of consecutive rows, each summed in order by
// one thread, then the runs in order. (A thread summing every row alone left the device
// waiting on too few loads in flight: 24,576 threads at (8,1536,2048).)
#define REDUCE_COLUMNS 32
#define REDUCE_RUNS 8
extern "C" __global__ void __launch_bounds__(REDUCE_COLUMNS * REDUCE_RUNS) scan_bwd_reduce_params(ScanArgs p) {
    __shared__ float runs[3][REDUCE_RUNS][REDUCE_COLUMNS];
    const int column = threadIdx.x % REDUCE_COLUMNS;
    const int run = threadIdx.x / REDUCE_COLUMNS;
    const size_t k = (size_t)blockIdx.x * REDUCE_COLUMNS + column;
    const size_t per_row = (size_t)p.channels * STATE;
    const int rows = p.batch * p.segments;
    const int per_run = (rows + REDUCE_RUNS - 1) / REDUCE_RUNS;
    const int r0 = min(run * per_run, rows), r1 = min(r0 + per_run, rows);
    float sa = 0.0f, sd = 0.0f, sbias = 0.0f;
    if (k < per_row) {
        for (int r = r0; r < r1; ++r) sa += p.part_a[r * per_row + k];
    }
    if (k < (size_t)p.channels) {
        for (int r = r0; r < r1; ++r) {
            sd += p.part_d[(size_t)r * p.channels + k];
            sbias += p.part_bias[(size_t)r * p.channels + k];
        }
    }
    runs[0][run][column] = sa;
    runs[1][run][column] = sd;
    runs[2][run][column] = sbias;
    __syncthreads();
    if (run >= 3 || k >= per_row) return;
    // Thread `run` (0..2) finishes quantity `run` of its column.
    float total = 0.0f;
#pragma unroll
    for (int q = 0; q < REDUCE_RUNS; ++q) total += runs[run][q][column];
    if (run == 0) {
        p.da_log[k] += total;
    } else if (k < (size_t)p.channels) {
        (run == 1 ? p.dd_skip : p.ddelta_bias)[k] += total;
    }
}
