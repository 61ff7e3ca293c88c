// Fused softmax cross-entropy, one block per row (common.cuh prepended).

#define CE_THREADS 256

struct CrossEntropyArgs {
    u64 logits;
    u64 targets;   // u32 (rows)
    u64 losses;
    u64 dlogits;   // 0: losses only
    i64 rows;
    int vocab;
    unsigned ignore_index;
    float grad_scale;
};

// losses[r] = ln Σ e^(z − max) − (z[target] − max); dlogits[r] = (softmax − onehot)·scale.
extern "C" __global__ void cross_entropy(CrossEntropyArgs a) {
    __shared__ float scratch[32];
    const i64 row = blockIdx.x;
    const unsigned target = ((const unsigned*)a.targets)[row];
    float* d = a.dlogits ? (float*)a.dlogits + row * a.vocab : nullptr;
    if (target == a.ignore_index) {
        if (d) for (int c = threadIdx.x; c < a.vocab; c += CE_THREADS) d[c] = 0.0f;
        if (threadIdx.x == 0) ((float*)a.losses)[row] = 0.0f;
        return;
    }
    const float* z = (const float*)a.logits + row * a.vocab;
    float max = __int_as_float(0xff800000);
    for (int c = threadIdx.x; c < a.vocab; c += CE_THREADS) max = fmaxf(max, z[c]);
    max = block_max(max, scratch);
    float sum = 0.0f;
    for (int c = threadIdx.x; c < a.vocab; c += CE_THREADS) sum += expf(z[c] - max);
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) ((float*)a.losses)[row] = logf(sum) - (z[target] - max);
    if (d) {
        const float scale = a.grad_scale / sum;
        for (int c = threadIdx.x; c < a.vocab; c += CE_THREADS) {
            const float g = expf(z[c] - max) * scale;
            d[c] = c == (int)target ? g - a.grad_scale : g;
        }
    }
}
