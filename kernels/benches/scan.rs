//! Throughput of the CPU selective scan, in (batch · channel · position) per second.
//!
//! `cargo bench -p seqmamba-kernels --bench scan`
//!
//! Prints the wall-clock throughput of the fastest of a few runs, and the throughput per
//! second of CPU time of the whole process (all threads): on a shared machine the latter
//! times the number of cores is what the wall clock would give on an idle one.

use std::time::{Duration, Instant};

use seqmamba_kernels::rng::Rng;
use seqmamba_kernels::scan::{cpu, ScanDims};

const REPEATS: usize = 8;

fn main() {
    println!(
        "selective scan on {} rayon threads",
        rayon::current_num_threads()
    );
    // `cargo bench --bench scan -- decode` runs only the decode steps (likewise `train`).
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let selected =
        |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    if selected("train") {
        for (batch, channels, len) in [(1, 1024, 8192), (8, 256, 4096)] {
            bench(ScanDims::new(batch, len, channels, 16));
        }
    }
    if selected("decode") {
        for (batch, channels) in [(1, 1024), (1, 4096), (16, 1024)] {
            bench_decode(batch, channels);
        }
    }
}

/// One generation step (`len` 1, carrying the state), as the decoder runs it per layer.
fn bench_decode(batch: usize, channels: usize) {
    const STEPS: usize = 2000;
    let dims = ScanDims::new(batch, 1, channels, 16);
    let buffers = cpu::InputBuffers::random(dims, true, &mut Rng::new(1));
    let inputs = buffers.views();
    let activations = batch * channels;
    let mut state = vec![0.0; dims.state_len()];
    let mut out = vec![0.0; activations];
    let timing = time(|| {
        for _ in 0..STEPS {
            cpu::forward(dims, &inputs, None, Some(&mut state), None, &mut out).unwrap();
        }
    });
    println!(
        "decode step, batch {batch} channels {channels} state 16: {:.2} µs wall",
        timing.wall.as_secs_f64() * 1e6 / STEPS as f64
    );
}

fn bench(dims: ScanDims) {
    let mut rng = Rng::new(0);
    let activations = dims.batch * dims.len * dims.channels;
    let buffers = cpu::InputBuffers::random(dims, true, &mut rng);
    let inputs = buffers.views();
    let mut out = vec![0.0; activations];
    let mut checkpoints = vec![0.0; dims.checkpoint_len()];
    let forward =
        time(|| cpu::forward(dims, &inputs, None, None, Some(&mut checkpoints), &mut out).unwrap());

    let d_out = rng.vec_uniform(activations, -1.0, 1.0);
    let mut grads = cpu::GradBuffers::zeros(dims, true);
    let backward =
        time(|| cpu::backward(dims, &inputs, None, &checkpoints, &d_out, grads.views()).unwrap());

    let elements = activations as f64;
    println!(
        "batch {} channels {} len {} state {}:",
        dims.batch, dims.channels, dims.len, dims.state
    );
    for (pass, timing) in [("forward", forward), ("backward", backward)] {
        println!(
            "  {pass:<8} {:>8.2} ms wall {:.3e}/s; {:.3e}/s per CPU-second",
            timing.wall.as_secs_f64() * 1e3,
            elements / timing.wall.as_secs_f64(),
            elements / timing.cpu_seconds,
        );
    }
}

struct Timing {
    /// The fastest run.
    wall: Duration,
    /// CPU time of the process per run, averaged over the runs.
    cpu_seconds: f64,
}

/// [`REPEATS`] runs after one warm-up.
fn time(mut run: impl FnMut()) -> Timing {
    run();
    let cpu_before = process_cpu_seconds();
    let wall = (0..REPEATS)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed()
        })
        .min()
        .unwrap();
    let cpu_seconds = (process_cpu_seconds() - cpu_before) / REPEATS as f64;
    Timing { wall, cpu_seconds }
}

/// User plus system time of all the process's threads, from `/proc/self/stat` (Linux;
/// NaN elsewhere). The kernel counts it in ticks of 1/100 s.
fn process_cpu_seconds() -> f64 {
    const TICKS_PER_SECOND: f64 = 100.0;
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / TICKS_PER_SECOND,
        _ => f64::NAN,
    }
}
