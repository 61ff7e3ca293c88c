//! Throughput benchmarks of the CPU backbone: the scan, a training step and decoding.

use std::time::Instant;

use seqmamba_kernels::rng::Rng;
use seqmamba_kernels::scan::{self, ScanDims, ScanGrads, ScanInputs};
use seqmamba_kernels::{Backend, Cpu};

use crate::model::{Batch, Head, MambaConfig, Model, Shape};
use crate::train::{OptimizerConfig, Trainer};
use crate::ModelError;

/// One measured figure.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub name: String,
    /// Units per second.
    pub rate: f64,
    pub unit: &'static str,
    /// Median seconds of one repetition.
    pub seconds: f64,
}

fn median_seconds(repeats: usize, mut run: impl FnMut()) -> f64 {
    run(); // warm-up: page faults, thread-pool start
    let mut times: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Scan forward and backward throughput in (batch·channel·position)/s.
pub fn scan(dims: ScanDims, repeats: usize) -> Result<[Measurement; 2], ModelError> {
    let mut rng = Rng::new(1);
    let (b, l, d, n) = (dims.batch, dims.len, dims.channels, dims.state);
    let act = |rng: &mut Rng| rng.vec_uniform(b * l * d, -1.0, 1.0);
    let u = act(&mut rng);
    let delta = rng.vec_uniform(b * l * d, -4.0, -1.0);
    let z = act(&mut rng);
    let a_log = rng.vec_uniform(d * n, 0.0, 2.5);
    let bm = rng.vec_uniform(b * l * n, -1.0, 1.0);
    let cm = rng.vec_uniform(b * l * n, -1.0, 1.0);
    let d_skip = vec![1.0; d];
    let delta_bias = rng.vec_uniform(d, -4.0, -2.0);
    let inputs = ScanInputs {
        u: &u[..],
        delta: &delta[..],
        a_log: &a_log[..],
        b: &bm[..],
        c: &cm[..],
        d_skip: &d_skip[..],
        delta_bias: &delta_bias[..],
        z: Some(&z[..]),
    };
    let mut out = vec![0.0; b * l * d];
    let mut checkpoints = vec![0.0; dims.checkpoint_len()];
    let mut failure = None;
    let forward = median_seconds(repeats, || {
        if let Err(e) =
            scan::cpu::forward(dims, &inputs, None, None, Some(&mut checkpoints), &mut out)
        {
            failure = Some(e);
        }
    });
    let mut grads: Vec<Vec<f32>> = [
        b * l * d,
        b * l * d,
        d * n,
        b * l * n,
        b * l * n,
        d,
        d,
        b * l * d,
    ]
    .iter()
    .map(|&len| vec![0.0; len])
    .collect();
    let backward = median_seconds(repeats, || {
        let [du, ddelta, da_log, db, dc, dd_skip, ddelta_bias, dz] = &mut grads[..] else {
            unreachable!("eight gradient buffers")
        };
        let grads = ScanGrads {
            du: &mut du[..],
            ddelta: &mut ddelta[..],
            da_log: &mut da_log[..],
            db: &mut db[..],
            dc: &mut dc[..],
            dd_skip: &mut dd_skip[..],
            ddelta_bias: &mut ddelta_bias[..],
            dz: Some(&mut dz[..]),
        };
        if let Err(e) = scan::cpu::backward(dims, &inputs, None, &checkpoints, &out, grads) {
            failure = Some(e);
        }
    });
    if let Some(e) = failure {
        return Err(e.into());
    }
    let elements = (b * l * d) as f64;
    let shape = format!("batch {b}, len {l}, channels {d}, state {n}");
    Ok([
        Measurement {
            name: format!("scan forward ({shape})"),
            rate: elements / forward,
            unit: "elements/s",
            seconds: forward,
        },
        Measurement {
            name: format!("scan backward ({shape})"),
            rate: elements / backward,
            unit: "elements/s",
            seconds: backward,
        },
    ])
}

/// Training throughput (forward, backward, AdamW) of a language model in tokens/s.
pub fn train(config: MambaConfig, shape: Shape, steps: usize) -> Result<Measurement, ModelError> {
    let label = format!(
        "train step (d_model {}, {} layers, batch {} × len {})",
        config.d_model, config.n_layer, shape.batch, shape.len
    );
    let vocab = config.vocab_size as u64;
    let mut model = Model::initialised(Cpu, config, Head::LanguageModel, 1)?;
    let mut rng = Rng::new(2);
    let ids: Vec<u32> = (0..shape.tokens())
        .map(|_| rng.below(vocab) as u32)
        .collect();
    let targets: Vec<u32> = ids[1..].iter().copied().chain([0]).collect();
    let batch = Batch::new(&Cpu, shape, &ids, None, None)?;
    let targets = Cpu.upload_ids(&targets)?;
    let mut trainer = Trainer::new(&model, shape, OptimizerConfig::default())?;
    let mut failure = None;
    let seconds = median_seconds(steps, || {
        if let Err(e) = trainer.step(&mut model, &batch, &targets, shape.tokens()) {
            failure = Some(e);
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(Measurement {
        name: label,
        rate: shape.tokens() as f64 / seconds,
        unit: "tokens/s",
        seconds,
    })
}

/// Recurrent decoding throughput (one token a step, batch 1) in tokens/s, including the
/// LM head.
pub fn decode(config: MambaConfig, steps: usize) -> Result<Measurement, ModelError> {
    let label = format!(
        "decode (d_model {}, {} layers, vocab {})",
        config.d_model,
        config.n_layer,
        config.padded_vocab()
    );
    let model = Model::initialised(Cpu, config, Head::LanguageModel, 1)?;
    let shape = Shape { batch: 1, len: 1 };
    let mut acts = model.activations(shape, false)?;
    let mut state = model.decode_state(1)?;
    let batch = Batch::new(&Cpu, shape, &[1], None, None)?;
    let mut failure = None;
    let seconds = median_seconds(steps, || {
        if let Err(e) = model.forward(&batch, &mut acts, Some(&mut state)) {
            failure = Some(e);
        }
    });
    if let Some(e) = failure {
        return Err(e.into());
    }
    Ok(Measurement {
        name: label,
        rate: 1.0 / seconds,
        unit: "tokens/s",
        seconds,
    })
}
