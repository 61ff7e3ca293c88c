// Embedding lookup and its gradient (common.cuh prepended).

struct EmbeddingArgs {
    u64 ids;       // u32 (tokens)
    u64 table;
    u64 out;
    u64 d_out;
    u64 dtable;
    u64 starts;    // u32 (vocab + 1): positions of id v are by_id[starts[v]..starts[v+1]]
    u64 by_id;     // u32 (tokens), token order within each id
    i64 tokens;
    int dim;
};

// out[t, c] = table[ids[t], c], one thread per element.
extern "C" __global__ void embedding_forward(EmbeddingArgs a) {
    const i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= a.tokens * a.dim) return;
    const i64 t = i / a.dim;
    const int c = (int)(i - t * a.dim);
    const u64 id = ((const unsigned*)a.ids)[t];
    ((float*)a.out)[i] = ((const float*)a.table)[id * a.dim + c];
}

// dtable[v, c] += d_out[t, c] for the tokens t of id v in token order: a thread owns one
// element of the table, so nothing is shared and the order is the CPU's.
// Grid (ceil(dim / blockDim.x), vocab).
extern "C" __global__ void embedding_backward(EmbeddingArgs a) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const i64 v = blockIdx.y;
    if (c >= a.dim) return;
    const unsigned* starts = (const unsigned*)a.starts;
    const unsigned* by_id = (const unsigned*)a.by_id;
    const unsigned begin = starts[v], end = starts[v + 1];
    if (begin == end) return;
    float* g = (float*)a.dtable + v * a.dim + c;
    float sum = *g;
    for (unsigned k = begin; k < end; ++k) sum += ((const float*)a.d_out)[(i64)by_id[k] * a.dim + c];
    *g = sum;
}
