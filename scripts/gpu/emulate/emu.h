// A CPU stand-in for the CUDA features seqmamba's scan kernels use: each thread of a block
// is an OS thread, __syncthreads a block barrier, a shuffle a warp barrier around an
// exchange. Blocks run one after another. For differential tests without a GPU.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

struct dim3 { unsigned x = 0, y = 0, z = 0; };
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

struct alignas(8) float2 { float x, y; };  // aligned as CUDA's vector types
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __builtin_assume(x) ((void)0)

template <class T> inline T __ldg(const T* p) { return *p; }
inline float __fmaf_rn(float a, float b, float c) { return std::fmaf(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return std::exp(x); }
inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline float __uint_as_float(unsigned v) { float f; std::memcpy(&f, &v, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned v; std::memcpy(&v, &f, 4); return v; }
inline int __float_as_int(float f) { int v; std::memcpy(&v, &f, 4); return v; }
inline size_t __cvta_generic_to_shared(const void*) { return 0; }
#include <math.h>
template <class A, class B> inline auto min(A a, B b) { using T = std::common_type_t<A, B>; return std::min<T>(a, b); }
template <class A, class B> inline auto max(A a, B b) { using T = std::common_type_t<A, B>; return std::max<T>(a, b); }

struct Warp {
    std::unique_ptr<std::barrier<>> bar;
    alignas(8) unsigned char slot[32][8];
};
inline std::unique_ptr<std::barrier<>> g_block_barrier;
inline std::vector<Warp> g_warps;
alignas(16) inline unsigned char g_dynamic_shared[232448];

inline void __syncthreads() { g_block_barrier->arrive_and_wait(); }

template <class T> inline T __shfl_xor_sync(unsigned, T v, int mask) {
    static_assert(sizeof(T) <= 8);
    Warp& w = g_warps[threadIdx.x / 32];
    const unsigned lane = threadIdx.x % 32;
    std::memcpy(w.slot[lane], &v, sizeof(T));
    w.bar->arrive_and_wait();
    T r;
    std::memcpy(&r, w.slot[lane ^ mask], sizeof(T));
    w.bar->arrive_and_wait();
    return r;
}

inline void emu_copy(void* dst, const void* src, int bytes, bool valid) {
    if (valid) std::memcpy(dst, src, bytes); else std::memset(dst, 0, bytes);
}

inline unsigned short emu_bf16(float v) {
    unsigned u = __float_as_uint(v);
    if (v != v) return (u >> 16) | 0x40u;
    u += 0x7fffu + ((u >> 16) & 1u);
    return u >> 16;
}

// Runs kernel(args) on every block of grid, `threads` threads a block, with `shared` bytes
// of dynamic shared memory (filled with NaN bits first, as CUDA leaves it undefined).
template <class Args>
void launch(void (*kernel)(Args), dim3 grid, unsigned threads, const Args& args) {
    gridDim = grid;
    blockDim = {threads, 1, 1};
    std::memset(g_dynamic_shared, 0xff, sizeof g_dynamic_shared);
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                g_block_barrier = std::make_unique<std::barrier<>>(threads);
                g_warps = std::vector<Warp>(threads / 32);
                for (auto& w : g_warps) w.bar = std::make_unique<std::barrier<>>(32);
                std::vector<std::thread> pool;
                for (unsigned t = 0; t < threads; ++t) {
                    pool.emplace_back([=] {
                        threadIdx = {t, 0, 0};
                        blockIdx = {x, y, z};
                        kernel(args);
                        g_warps[t / 32].bar->arrive_and_drop();
                        g_block_barrier->arrive_and_drop();
                    });
                }
                for (auto& th : pool) th.join();
            }
}
