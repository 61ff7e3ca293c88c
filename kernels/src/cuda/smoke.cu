// A tiny kernel `seqmamba doctor` runs to prove that compilation, loading, launch and
// copies work end to end: out[i] = 2 * x[i] + 1.
struct SmokeArgs {
    const float* x;
    float* out;
    unsigned int len;
};

extern "C" __global__ void smoke_affine(SmokeArgs args) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < args.len) {
        args.out[i] = 2.0f * args.x[i] + 1.0f;
    }
}
