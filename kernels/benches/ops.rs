//! Micro benchmarks of the CPU ops at the sizes of a 130M-parameter Mamba (d_model 768,
//! d_inner 1536) on 4 × 1024 tokens, plus a decode step. Prints the median of a few runs
//! and the rate it implies. `cargo bench -p seqmamba-kernels --bench ops [-- FILTER]`;
//! `RAYON_NUM_THREADS` sets the thread count.

use std::hint::black_box;
use std::time::{Duration, Instant};

use seqmamba_kernels::adamw::{self, AdamW};
use seqmamba_kernels::conv1d::{self, ConvDims};
use seqmamba_kernels::cross_entropy::{self, CrossEntropyDims};
use seqmamba_kernels::elementwise;
use seqmamba_kernels::embedding::{self, EmbeddingDims};
use seqmamba_kernels::gemm::{self, GemmDims};
use seqmamba_kernels::rmsnorm::{self, NormDims};
use seqmamba_kernels::rng::Rng;

const TOKENS: usize = 4 * 1024;
const D_MODEL: usize = 768;
const D_INNER: usize = 1536;

/// Median wall time of `run` over enough repetitions to fill about half a second.
fn median_time(mut run: impl FnMut()) -> Duration {
    run();
    let once = Instant::now();
    run();
    let reps = (0.5 / once.elapsed().as_secs_f64().max(1e-6)).clamp(3.0, 1000.0) as usize;
    let mut times: Vec<Duration> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[reps / 2]
}

/// Runs the case `name` unless a filter excludes it; `amount` of `unit` per run.
fn bench(filter: &Option<String>, name: &str, amount: f64, unit: &str, run: impl FnMut()) {
    if filter.as_deref().is_some_and(|f| !name.contains(f)) {
        return;
    }
    let time = median_time(run);
    let rate = amount / time.as_secs_f64() / 1e9;
    println!(
        "{name:<40} {:>10.3} ms {rate:>9.2} G{unit}/s",
        time.as_secs_f64() * 1e3
    );
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let mut rng = Rng::new(0);
    println!("{} rayon threads", rayon::current_num_threads());

    // in_proj: (tokens, d_model) · (2·d_inner, d_model)ᵀ, its input and weight gradients.
    let x = rng.vec_uniform(TOKENS * D_MODEL, -1.0, 1.0);
    let w = rng.vec_uniform(2 * D_INNER * D_MODEL, -1.0, 1.0);
    let mut y = vec![0.0; TOKENS * 2 * D_INNER];
    let flops = 2.0 * (TOKENS * D_MODEL * 2 * D_INNER) as f64;
    let forward = GemmDims {
        m: TOKENS,
        n: 2 * D_INNER,
        k: D_MODEL,
        transpose_a: false,
        transpose_b: true,
    };
    bench(&filter, "gemm in_proj forward", flops, "FLOP", || {
        gemm::gemm(forward, &x, &w, &mut y, false).unwrap()
    });
    let mut dx = vec![0.0; x.len()];
    let d_input = GemmDims {
        m: TOKENS,
        n: D_MODEL,
        k: 2 * D_INNER,
        transpose_a: false,
        transpose_b: false,
    };
    bench(&filter, "gemm in_proj d_input", flops, "FLOP", || {
        gemm::gemm(d_input, &y, &w, &mut dx, false).unwrap()
    });
    let mut dw = vec![0.0; w.len()];
    let d_weight = GemmDims {
        m: 2 * D_INNER,
        n: D_MODEL,
        k: TOKENS,
        transpose_a: true,
        transpose_b: false,
    };
    bench(
        &filter,
        "gemm in_proj d_weight (accumulate)",
        flops,
        "FLOP",
        || gemm::gemm(d_weight, &y, &x, &mut dw, true).unwrap(),
    );
    let decode = GemmDims { m: 1, ..forward };
    bench(
        &filter,
        "gemm in_proj decode step (m = 1)",
        flops / TOKENS as f64,
        "FLOP",
        || gemm::gemm(decode, &x[..D_MODEL], &w, &mut y[..2 * D_INNER], false).unwrap(),
    );
    // Sequences decoded together: the thin product up to 64 rows, the general GEMM at 65.
    for m in [4, 16, 32, 64, 65] {
        let decode = GemmDims { m, ..forward };
        bench(
            &filter,
            &format!("gemm in_proj decode step (m = {m})"),
            flops * m as f64 / TOKENS as f64,
            "FLOP",
            || {
                let (x, y) = (&x[..m * D_MODEL], &mut y[..m * 2 * D_INNER]);
                gemm::gemm(decode, x, &w, y, false).unwrap()
            },
        );
    }

    // conv1d over (4, 1024, d_inner) with resets.
    let dims = ConvDims {
        batch: 4,
        len: 1024,
        channels: D_INNER,
        kernel: 4,
    };
    let u = rng.vec_uniform(TOKENS * D_INNER, -1.0, 1.0);
    let weight = rng.vec_uniform(D_INNER * 4, -1.0, 1.0);
    let bias = rng.vec_uniform(D_INNER, -1.0, 1.0);
    let resets: Vec<u32> = (0..TOKENS).map(|t| (t % 300 == 0) as u32).collect();
    let mut out = vec![0.0; u.len()];
    let bytes = (2 * u.len() * 4) as f64;
    bench(&filter, "conv1d forward", bytes, "B", || {
        conv1d::forward(dims, &u, &weight, &bias, Some(&resets), None, &mut out).unwrap()
    });
    let (mut du, mut dweight, mut dbias) = (
        vec![0.0; u.len()],
        vec![0.0; weight.len()],
        vec![0.0; D_INNER],
    );
    bench(&filter, "conv1d backward", 1.5 * bytes, "B", || {
        conv1d::backward(
            dims,
            &u,
            &weight,
            &bias,
            Some(&resets),
            None,
            &out,
            &mut du,
            &mut dweight,
            &mut dbias,
        )
        .unwrap()
    });
    let step = ConvDims {
        batch: 1,
        len: 1,
        ..dims
    };
    let mut state = vec![0.0; step.state_len()];
    bench(
        &filter,
        "conv1d decode step",
        (2 * D_INNER * 4) as f64,
        "B",
        || {
            conv1d::forward(
                step,
                &u[..D_INNER],
                &weight,
                &bias,
                None,
                Some(&mut state),
                &mut out[..D_INNER],
            )
            .unwrap()
        },
    );

    // rmsnorm over (tokens, d_model).
    let dims = NormDims {
        rows: TOKENS,
        cols: D_MODEL,
        eps: 1e-5,
    };
    let (mut normed, mut rstd) = (vec![0.0; x.len()], vec![0.0; TOKENS]);
    let norm_weight = vec![1.0; D_MODEL];
    bench(
        &filter,
        "rmsnorm forward",
        (2 * x.len() * 4) as f64,
        "B",
        || rmsnorm::forward(dims, &x, &norm_weight, &mut normed, &mut rstd).unwrap(),
    );
    let mut d_norm_weight = vec![0.0; D_MODEL];
    bench(
        &filter,
        "rmsnorm backward",
        (3 * x.len() * 4) as f64,
        "B",
        || {
            rmsnorm::backward(
                dims,
                &x,
                &norm_weight,
                &rstd,
                &normed,
                &mut dx,
                &mut d_norm_weight,
            )
            .unwrap()
        },
    );

    // Embedding and cross-entropy with the audio vocabulary (256 mu-law levels).
    let vocab = 256;
    let ids: Vec<u32> = (0..TOKENS)
        .map(|_| rng.below(vocab as u64) as u32)
        .collect();
    let dims = EmbeddingDims {
        tokens: TOKENS,
        vocab,
        dim: D_MODEL,
    };
    let table = rng.vec_uniform(vocab * D_MODEL, -1.0, 1.0);
    let mut embedded = vec![0.0; x.len()];
    bench(
        &filter,
        "embedding forward",
        (x.len() * 4) as f64,
        "B",
        || embedding::forward(dims, &ids, &table, &mut embedded).unwrap(),
    );
    let mut dtable = vec![0.0; table.len()];
    bench(
        &filter,
        "embedding backward",
        (x.len() * 4) as f64,
        "B",
        || embedding::backward(dims, &ids, &x, &mut dtable).unwrap(),
    );
    let dims = CrossEntropyDims {
        rows: TOKENS,
        vocab,
    };
    let logits = rng.vec_uniform(TOKENS * vocab, -3.0, 3.0);
    let (mut losses, mut dlogits) = (vec![0.0; TOKENS], vec![0.0; logits.len()]);
    bench(
        &filter,
        "cross entropy with gradient",
        (2 * logits.len() * 4) as f64,
        "B",
        || {
            cross_entropy::forward_backward(
                dims,
                &logits,
                &ids,
                u32::MAX,
                &mut losses,
                Some(&mut dlogits),
                1.0,
            )
            .unwrap()
        },
    );

    // Optimizer and gradient norm over 130M parameters.
    let params_len = 130_000_000;
    let mut params = vec![0.5; params_len];
    let grads = vec![0.25; params_len];
    let (mut m, mut v) = (vec![0.0; params_len], vec![0.0; params_len]);
    let config = AdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let mut t = 0;
    bench(
        &filter,
        "adamw 130M",
        (7 * params_len * 4) as f64,
        "B",
        || {
            t += 1;
            adamw::step(
                &config,
                t,
                params_len / 2,
                &mut params,
                &grads,
                &mut m,
                &mut v,
            )
            .unwrap()
        },
    );
    bench(
        &filter,
        "sum_squares 130M",
        (params_len * 4) as f64,
        "B",
        || {
            black_box(elementwise::sum_squares(&grads));
        },
    );
    let mut sum = vec![0.0; x.len()];
    bench(
        &filter,
        "add (tokens, d_model)",
        (3 * x.len() * 4) as f64,
        "B",
        || elementwise::add(&x, &normed, &mut sum).unwrap(),
    );
}
