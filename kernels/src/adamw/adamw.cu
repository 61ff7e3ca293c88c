// AdamW over one flat parameter buffer, one thread per parameter (common.cuh prepended).

struct AdamWArgs {
    u64 params;
    u64 grads;
    u64 m;
    u64 v;
    i64 n;
    i64 decay_len;
    float beta1;
    float beta2;
    float eps;
    float step_size;
    float correction2_sqrt;
    float decay;
};

extern "C" __global__ void adamw_step(AdamWArgs a) {
    const i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= a.n) return;
    float* params = (float*)a.params;
    float* m = (float*)a.m;
    float* v = (float*)a.v;
    const float g = ((const float*)a.grads)[i];
    float p = params[i];
    if (i < a.decay_len) p *= a.decay;
    const float mi = a.beta1 * m[i] + (1.0f - a.beta1) * g;
    const float vi = a.beta2 * v[i] + (1.0f - a.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    params[i] = p - a.step_size * mi / (sqrtf(vi) / a.correction2_sqrt + a.eps);
}
