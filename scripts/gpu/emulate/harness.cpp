// Differential test of the scan kernels on the CPU (emu.h): the kernels of the base source
// (namespace base, checked on a GPU) and of the changed one (namespace changed) on one
// random problem. The changed segmented and one-pass forwards and the backward must give the
// base's bits; the one-pass and span forwards (the latter where the changed source has it)
// the segmented one's values to 1e-5 of each tensor's largest (the segmented forward chains
// its segments' carries through exp(A · Σ dt), not step by step: the same to rounding).
// Use: harness BATCH LEN CHANNELS CHUNK CHUNKS_A_SEGMENT; built by scripts/gpu/emulate.sh.
// The launches repeat kernels/src/scan/cuda.rs's grids: keep them in step.
#include <cstdio>
#include <random>

#include "base.cpp"
#include "changed.cpp"

struct Dims {
    int batch, len, channels, chunk;
    int chunks() const { return (len + chunk - 1) / chunk; }
    size_t activations() const { return (size_t)batch * len * channels; }
    size_t rows() const { return (size_t)batch * len * 16; }
};

struct Problem {
    Dims dims;
    std::vector<float> u, delta, z, d_out, a_log, b, c, skip, bias, initial;
    std::vector<unsigned short> u16, delta16, z16, d_out16;  // the streams' bf16 bits
    std::vector<unsigned> resets;
};

// Streams rounded to bf16 (so that both stream builds see the same values), resets at 3 %
// of positions, an initial state.
Problem random_problem(Dims d, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    std::uniform_real_distribution<float> uniform(0, 1);
    Problem p{d};
    auto draw = [&](size_t n, float scale) {
        std::vector<float> v(n);
        for (float& x : v) x = scale * normal(rng);
        return v;
    };
    auto stream = [&](std::vector<float>& v, std::vector<unsigned short>& bits) {
        v = draw(d.activations(), 1);
        bits.resize(v.size());
        for (size_t i = 0; i < v.size(); ++i) {
            bits[i] = emu_bf16(v[i]);
            v[i] = __uint_as_float((unsigned)bits[i] << 16);
        }
    };
    stream(p.u, p.u16);
    stream(p.delta, p.delta16);
    stream(p.z, p.z16);
    stream(p.d_out, p.d_out16);
    p.a_log.resize(d.channels * 16);
    for (size_t i = 0; i < p.a_log.size(); ++i) p.a_log[i] = std::log(1.0f + i % 16) + 0.3f * normal(rng);
    p.b = draw(d.rows(), 1);
    p.c = draw(d.rows(), 1);
    p.skip = draw(d.channels, 1);
    p.bias = draw(d.channels, 0.5f);
    p.initial = draw((size_t)d.batch * d.channels * 16, 1);
    p.resets.resize((size_t)d.batch * d.len);
    for (unsigned& r : p.resets) r = uniform(rng) < 0.03f;
    return p;
}

struct Result {
    std::vector<float> out, checkpoints, state, du, ddelta, dz, remade, da_log, dd_skip, ddelta_bias, db, dc;
};
const char* const NAMES[] = {"out", "checkpoints", "final state", "du", "ddelta", "dz",
                             "out made again", "da_log", "dd_skip", "ddelta_bias", "db", "dc"};
std::vector<float> Result::* const FIELDS[] = {
    &Result::out, &Result::checkpoints, &Result::state, &Result::du, &Result::ddelta, &Result::dz,
    &Result::remade, &Result::da_log, &Result::dd_skip, &Result::ddelta_bias, &Result::db, &Result::dc};
constexpr int FORWARD_FIELDS = 3;

enum class Path { Segmented, OnePass, Spans };

dim3 flat(size_t n) { return {(unsigned)((n + 255) / 256), 1, 1}; }

// The forward by `path` and the backward of namespace NS (with `streams` bf16 or f32),
// rows cut into segments of seg_chunks chunks.
#define DEFINE_RUN(NS)                                                                                        \
    Result run_##NS(const Problem& p, bool bf16, Path path, int seg_chunks) {                                 \
        using namespace NS;                                                                                   \
        const Dims d = p.dims;                                                                                \
        const int seg_len = seg_chunks * d.chunk, segments = (d.len + seg_len - 1) / seg_len;                 \
        Result r;                                                                                             \
        r.out.assign(d.activations(), NAN);                                                                   \
        r.checkpoints.assign((size_t)d.batch * d.chunks() * d.channels * 16, NAN);                            \
        r.state = p.initial;                                                                                  \
        std::vector<float> seg_state((size_t)d.batch * segments * d.channels * 16);                           \
        std::vector<float> seg_sum(seg_state.size() / 16);                                                    \
        ScanArgs a{};                                                                                         \
        a.u = bf16 ? (const void*)p.u16.data() : p.u.data();                                                  \
        a.delta = bf16 ? (const void*)p.delta16.data() : p.delta.data();                                      \
        a.z = bf16 ? (const void*)p.z16.data() : p.z.data();                                                  \
        a.a_log = p.a_log.data();                                                                             \
        a.b = p.b.data();                                                                                     \
        a.c = p.c.data();                                                                                     \
        a.d_skip = p.skip.data();                                                                             \
        a.delta_bias = p.bias.data();                                                                         \
        a.resets = p.resets.data();                                                                           \
        a.state = r.state.data();                                                                             \
        a.checkpoints = r.checkpoints.data();                                                                 \
        a.out = r.out.data();                                                                                 \
        a.seg_state = seg_state.data();                                                                       \
        a.seg_sum = seg_sum.data();                                                                           \
        a.batch = d.batch;                                                                                    \
        a.len = d.len;                                                                                        \
        a.channels = d.channels;                                                                              \
        a.chunk = d.chunk;                                                                                    \
        a.seg_len = seg_len;                                                                                  \
        a.segments = segments;                                                                                \
        a.chunks = d.chunks();                                                                                \
        const unsigned batch = d.batch, channel_blocks = (d.channels + 127) / 128;                            \
        if (path == Path::OnePass) {                                                                          \
            launch(scan_fwd_one_pass, {(unsigned)(d.channels + 31) / 32, 1, batch}, 256, a);                  \
        } else if (path == Path::Spans) {                                                                     \
            SPANS_##NS(a, d);                                                                                 \
        } else {                                                                                              \
            if (segments > 1) {                                                                               \
                launch(scan_fwd_segment, {channel_blocks, (unsigned)segments - 1, batch}, 128, a);            \
                launch(scan_fwd_combine, flat((size_t)d.batch * d.channels * 16), 256, a);                    \
            }                                                                                                 \
            launch(scan_fwd_output, {channel_blocks, (unsigned)segments, batch}, 128, a);                     \
        }                                                                                                     \
        if (path == Path::OnePass) return r; /* the backward from its checkpoints: as the segmented one's */  \
        const int bwd_blocks = (d.channels + 63) / 64;                                                        \
        std::vector<float> part_a(seg_state.size()), part_d(seg_sum.size()), part_bias(seg_sum.size());       \
        std::vector<float> part_b(bwd_blocks * d.rows()), part_c(bwd_blocks * d.rows());                      \
        for (auto* v : {&r.du, &r.ddelta, &r.dz, &r.remade}) v->assign(d.activations(), NAN);                \
        r.db.assign(d.rows(), NAN);                                                                           \
        r.dc.assign(d.rows(), NAN);                                                                           \
        r.da_log.assign(d.channels * 16, 0.25f); /* accumulated into */                                       \
        r.dd_skip.assign(d.channels, 0.25f);                                                                  \
        r.ddelta_bias.assign(d.channels, 0.25f);                                                              \
        a.state = nullptr;                                                                                    \
        a.out = r.remade.data();                                                                              \
        a.d_out = bf16 ? (const void*)p.d_out16.data() : p.d_out.data();                                      \
        a.du = r.du.data();                                                                                   \
        a.ddelta = r.ddelta.data();                                                                           \
        a.dz = r.dz.data();                                                                                   \
        a.part_a = part_a.data();                                                                             \
        a.part_d = part_d.data();                                                                             \
        a.part_bias = part_bias.data();                                                                       \
        a.part_b = part_b.data();                                                                             \
        a.part_c = part_c.data();                                                                             \
        a.da_log = r.da_log.data();                                                                           \
        a.dd_skip = r.dd_skip.data();                                                                         \
        a.ddelta_bias = r.ddelta_bias.data();                                                                 \
        a.db = r.db.data();                                                                                   \
        a.dc = r.dc.data();                                                                                   \
        a.channel_blocks = bwd_blocks;                                                                        \
        if (segments > 1) {                                                                                   \
            launch(scan_bwd_segment, {channel_blocks, (unsigned)segments - 1, batch}, 128, a);                \
            launch(scan_bwd_combine, flat((size_t)d.batch * d.channels * 16), 256, a);                        \
        }                                                                                                     \
        launch(scan_bwd_main, {(unsigned)bwd_blocks, (unsigned)segments, batch}, 256, a);                     \
        launch(scan_bwd_reduce_bc, flat(d.rows()), 256, a);                                                   \
        launch(scan_bwd_reduce_params, {(unsigned)(d.channels * 16 + 31) / 32, 1, 1}, 256, a);                \
        return r;                                                                                             \
    }

#ifdef changed_HAS_scan_fwd_spans
#define SPANS_changed(a, d) launch(scan_fwd_spans, {(unsigned)(d.channels + 7) / 8, 1, batch}, 512, a)
#else
#define SPANS_changed(a, d) std::abort()
#endif
#define SPANS_base(a, d) std::abort()
DEFINE_RUN(base)
DEFINE_RUN(changed)

int failures = 0;

void same_bits(const char* what, const std::vector<float>& got, const std::vector<float>& want) {
    size_t differ = 0, first = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        if (__float_as_uint(got[i]) != __float_as_uint(want[i]) && !differ++) first = i;
    }
    if (differ) {
        ++failures;
        std::printf("  %s: %zu of %zu differ, first at %zu: %.9g, want %.9g\n", what, differ, got.size(), first,
                    got[first], want[first]);
    }
}

// As kernels/src/testing.rs's assert_close: |got - want| <= rtol * the largest |want|.
void close_to(const char* what, const std::vector<float>& got, const std::vector<float>& want, double rtol) {
    double scale = 0, worst = 0;
    for (float w : want) scale = std::max(scale, std::fabs((double)w));
    size_t at = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        const double error = std::fabs((double)got[i] - want[i]) / scale;
        if (!(error <= worst)) worst = error, at = i;
    }
    const bool fail = !(worst <= rtol);
    failures += fail;
    std::printf("  %s: %.3g of the largest (at %zu: %.9g, want %.9g)%s\n", what, worst, at, got[at], want[at],
                fail ? "  FAIL" : "");
}

int main(int argc, char** argv) {
    if (argc != 6) {
        std::fprintf(stderr, "usage: %s BATCH LEN CHANNELS CHUNK CHUNKS_A_SEGMENT\n", argv[0]);
        return 2;
    }
    const Dims d{atoi(argv[1]), atoi(argv[2]), atoi(argv[3]), atoi(argv[4])};
    const int seg_chunks = atoi(argv[5]);
    const bool bf16 = STREAMS_BF16 != 0;
    const Problem p = random_problem(d, 7);
    std::printf("(%d,%d,%d) chunk %d, %d chunks a segment, STREAMS_BF16=%d\n", d.batch, d.len, d.channels, d.chunk,
                seg_chunks, STREAMS_BF16);
    const Result base = run_base(p, bf16, Path::Segmented, seg_chunks);
    std::printf(" segmented forward and backward against the base's: same bits\n");
    const Result changed = run_changed(p, bf16, Path::Segmented, seg_chunks);
    for (int i = 0; i < 12; ++i) same_bits(NAMES[i], changed.*FIELDS[i], base.*FIELDS[i]);
    std::printf(" one-pass forward against the base's (same bits) and the segmented one:\n");
    const Result base_one_pass = run_base(p, bf16, Path::OnePass, seg_chunks);
    const Result one_pass = run_changed(p, bf16, Path::OnePass, seg_chunks);
    for (int i = 0; i < FORWARD_FIELDS; ++i) {
        same_bits(NAMES[i], one_pass.*FIELDS[i], base_one_pass.*FIELDS[i]);
        close_to(NAMES[i], one_pass.*FIELDS[i], base.*FIELDS[i], 1e-5);
    }
#ifdef changed_HAS_scan_fwd_spans
    if (d.chunk % 16 == 0) {
        std::printf(" span forward and the backward from its checkpoints against the segmented ones:\n");
        const Result spans = run_changed(p, bf16, Path::Spans, seg_chunks);
        for (int i = 0; i < 12; ++i) close_to(NAMES[i], spans.*FIELDS[i], base.*FIELDS[i], i < FORWARD_FIELDS ? 1e-5 : 1e-4);
    }
#endif
    std::printf(failures ? " FAILED: %d\n" : " ok\n", failures);
    return failures != 0;
}
