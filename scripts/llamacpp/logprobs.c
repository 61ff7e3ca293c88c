// Prints, for a GGUF language model run by llama.cpp, the natural-log probability of each
// token given the tokens before it, in the format of `seqmamba score`
// ("position<TAB>token<TAB>logprob", positions from 1), or times decoding.
//
//   logprobs MODEL.gguf THREADS batch|step IDS   score IDS (comma-separated), either in one
//                                                 llama_decode call or one token per call
//   logprobs MODEL.gguf THREADS time N            decode N tokens one at a time (batch 1,
//                                                 logits of every step) and print tokens/s
//                                                 (mean over the run and median step)
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llama.h"

static double now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int compare_doubles(const void * a, const void * b) {
    const double x = *(const double *) a, y = *(const double *) b;
    return (x > y) - (x < y);
}

static void quiet_log(enum ggml_log_level level, const char * text, void * data) {
    (void) data;
    if (level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

// log p(target) under softmax(logits), accumulated in double.
static double log_softmax_at(const float * logits, int n_vocab, int target) {
    double max = logits[0];
    for (int i = 1; i < n_vocab; i++) {
        if (logits[i] > max) max = logits[i];
    }
    double sum = 0.0;
    for (int i = 0; i < n_vocab; i++) sum += exp(logits[i] - max);
    return logits[target] - max - log(sum);
}

static int decode_one(struct llama_context * ctx, llama_token token, int pos) {
    struct llama_batch batch = llama_batch_init(1, 0, 1);
    batch.n_tokens = 1;
    batch.token[0] = token;
    batch.pos[0] = pos;
    batch.n_seq_id[0] = 1;
    batch.seq_id[0][0] = 0;
    batch.logits[0] = 1;
    int rc = llama_decode(ctx, batch);
    llama_batch_free(batch);
    return rc;
}

int main(int argc, char ** argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL.gguf THREADS batch|step IDS | time N\n", argv[0]);
        return 2;
    }
    const int threads = atoi(argv[2]);
    const char * mode = argv[3];
    llama_log_set(quiet_log, NULL);
    llama_backend_init();

    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

    int n_tokens = 0;
    llama_token * tokens = NULL;
    if (strcmp(mode, "time") == 0) {
        n_tokens = atoi(argv[4]);
    } else {
        tokens = malloc(sizeof(llama_token) * (strlen(argv[4]) + 1));
        for (char * s = strtok(argv[4], ","); s; s = strtok(NULL, ",")) {
            tokens[n_tokens++] = atoi(s);
        }
    }

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_tokens + 8;
    cp.n_batch = n_tokens + 8;
    cp.n_ubatch = n_tokens + 8;
    cp.n_seq_max = 1;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    struct llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "cannot create a context\n");
        return 1;
    }

    if (strcmp(mode, "time") == 0) {
        // Warm up, then time n_tokens single-token steps from a fresh state.
        for (int i = 0; i < 4; i++) decode_one(ctx, i % n_vocab, i);
        llama_memory_clear(llama_get_memory(ctx), true);
        double * step_seconds = malloc(sizeof(double) * n_tokens);
        const double start = now_seconds();
        for (int i = 0; i < n_tokens; i++) {
            const double step_start = now_seconds();
            if (decode_one(ctx, (7 * i + 1) % n_vocab, i) != 0) {
                fprintf(stderr, "llama_decode failed at step %d\n", i);
                return 1;
            }
            (void) llama_get_logits_ith(ctx, -1);
            step_seconds[i] = now_seconds() - step_start;
        }
        const double seconds = now_seconds() - start;
        qsort(step_seconds, n_tokens, sizeof(double), compare_doubles);
        const double median = step_seconds[n_tokens / 2];
        printf("%d tokens: mean %.2f tokens/s (%.3f ms/token), median %.2f tokens/s (%.3f ms/token)\n",
               n_tokens, n_tokens / seconds, 1e3 * seconds / n_tokens, 1.0 / median, 1e3 * median);
        free(step_seconds);
    } else if (strcmp(mode, "batch") == 0) {
        struct llama_batch batch = llama_batch_init(n_tokens, 0, 1);
        batch.n_tokens = n_tokens;
        for (int i = 0; i < n_tokens; i++) {
            batch.token[i] = tokens[i];
            batch.pos[i] = i;
            batch.n_seq_id[i] = 1;
            batch.seq_id[i][0] = 0;
            batch.logits[i] = 1;
        }
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "llama_decode failed\n");
            return 1;
        }
        for (int i = 0; i + 1 < n_tokens; i++) {
            const float * logits = llama_get_logits_ith(ctx, i);
            printf("%d\t%d\t%.7f\n", i + 1, tokens[i + 1],
                   log_softmax_at(logits, n_vocab, tokens[i + 1]));
        }
        llama_batch_free(batch);
    } else if (strcmp(mode, "step") == 0) {
        for (int i = 0; i + 1 < n_tokens; i++) {
            if (decode_one(ctx, tokens[i], i) != 0) {
                fprintf(stderr, "llama_decode failed at step %d\n", i);
                return 1;
            }
            const float * logits = llama_get_logits_ith(ctx, -1);
            printf("%d\t%d\t%.7f\n", i + 1, tokens[i + 1],
                   log_softmax_at(logits, n_vocab, tokens[i + 1]));
        }
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }

    free(tokens);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
