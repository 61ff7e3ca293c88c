//! Throughput benchmarks of the backbone on any backend: a training step and decoding;
//! and of the CPU scan.

use std::time::Instant;

use seqmamba_kernels::cuda::{Cuda, OpSeconds};
use seqmamba_kernels::rng::Rng;
use seqmamba_kernels::scan::{self, ScanDims};
use seqmamba_kernels::{Backend, Cpu, KernelError};

use crate::ModelError;
use crate::infer::DecodeSteps;
use crate::model::{Batch, Head, MambaConfig, Model, Shape};
use crate::train::{OptimizerConfig, Trainer};

/// One measured figure.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub name: String,
    /// Units per second.
    pub rate: f64,
    pub unit: &'static str,
    /// Median seconds of one repetition.
    pub seconds: f64,
    /// What the device reports about the run, where it can.
    pub device: DeviceFigures,
    /// Model FLOPs of one repetition by the usual 6 · parameters · tokens rule of a training
    /// step (the scan's own FLOPs not counted), where that applies.
    pub model_flops: Option<f64>,
}

/// Figures only some backends can give.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DeviceFigures {
    /// Device seconds of one repetition in each kind of op (GEMMs, scan, ...).
    pub ops: Option<OpSeconds>,
    /// The most device memory held at once, in bytes.
    pub peak_memory: Option<u64>,
}

/// What a backend can report beyond the ops: time per kind of op, peak memory.
///
/// ```
/// use seqmamba::bench::Profile;
/// use seqmamba_kernels::Cpu;
/// Cpu.reset_peak_memory().unwrap();
/// assert_eq!(Cpu.peak_memory().unwrap(), None);
/// ```
pub trait Profile {
    /// Starts the peak-memory count from the memory in use now.
    fn reset_peak_memory(&self) -> Result<(), KernelError>;
    /// The most memory held at once since [`Profile::reset_peak_memory`], in bytes.
    fn peak_memory(&self) -> Result<Option<u64>, KernelError>;
    /// Starts timing every op.
    fn start_op_timing(&self) -> Result<(), KernelError>;
    /// Seconds each kind of op took since [`Profile::start_op_timing`] (waits for the
    /// device); stops timing.
    fn finish_op_timing(&self) -> Result<Option<OpSeconds>, KernelError>;
}

impl Profile for Cpu {
    fn reset_peak_memory(&self) -> Result<(), KernelError> {
        Ok(())
    }
    fn peak_memory(&self) -> Result<Option<u64>, KernelError> {
        Ok(None)
    }
    fn start_op_timing(&self) -> Result<(), KernelError> {
        Ok(())
    }
    fn finish_op_timing(&self) -> Result<Option<OpSeconds>, KernelError> {
        Ok(None)
    }
}

impl Profile for Cuda {
    fn reset_peak_memory(&self) -> Result<(), KernelError> {
        Cuda::reset_peak_memory(self)
    }
    fn peak_memory(&self) -> Result<Option<u64>, KernelError> {
        Cuda::peak_memory(self).map(Some)
    }
    fn start_op_timing(&self) -> Result<(), KernelError> {
        self.time_ops(true)
    }
    fn finish_op_timing(&self) -> Result<Option<OpSeconds>, KernelError> {
        let seconds = self.op_seconds()?;
        self.time_ops(false)?;
        Ok(Some(seconds))
    }
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
    let (b, l, d, n) = (dims.batch, dims.len, dims.channels, dims.state);
    let buffers = scan::cpu::InputBuffers::random(dims, true, &mut Rng::new(1));
    let inputs = buffers.views();
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
    let mut grads = scan::cpu::GradBuffers::zeros(dims, true);
    let backward = median_seconds(repeats, || {
        if let Err(e) = scan::cpu::backward(dims, &inputs, None, &checkpoints, &out, grads.views())
        {
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
            device: DeviceFigures::default(),
            model_flops: None,
        },
        Measurement {
            name: format!("scan backward ({shape})"),
            rate: elements / backward,
            unit: "elements/s",
            seconds: backward,
            device: DeviceFigures::default(),
            model_flops: None,
        },
    ])
}

/// Waits for every queued op of `model`'s backend (a one-element download), so a
/// repetition's time includes its last asynchronous op.
fn wait<B: Backend>(model: &Model<B>) -> Result<(), KernelError> {
    let be = &model.backend;
    be.download(be.view(&model.params, 0..1)).map(|_| ())
}

/// Training throughput (forward, backward, AdamW) of a language model in tokens/s, with
/// the GEMMs' share and the peak memory where the backend reports them (from one extra,
/// profiled step after the timed ones).
pub fn train<B: Backend + Profile>(
    backend: B,
    config: MambaConfig,
    shape: Shape,
    steps: usize,
) -> Result<Measurement, ModelError> {
    let label = format!(
        "train step (d_model {}, {} layers, vocab {}, batch {} × len {})",
        config.d_model, config.n_layer, config.vocab_size, shape.batch, shape.len
    );
    let vocab = config.vocab_size as u64;
    backend.reset_peak_memory()?; // the peak counts from before the first allocation
    let mut model = Model::initialised(backend, config, Head::LanguageModel, 1)?;
    let mut rng = Rng::new(2);
    let ids: Vec<u32> = (0..shape.tokens())
        .map(|_| rng.below(vocab) as u32)
        .collect();
    let targets: Vec<u32> = ids[1..].iter().copied().chain([0]).collect();
    let batch = Batch::new(&model.backend, shape, &ids, None, None)?;
    let targets = model.backend.upload_ids(&targets)?;
    let mut trainer = Trainer::new(&model, shape, OptimizerConfig::default())?;
    let mut failure = None;
    let seconds = median_seconds(steps, || {
        let outcome = trainer
            .step(&mut model, &batch, &targets, shape.tokens())
            .and_then(|_| Ok(wait(&model)?));
        if let Err(e) = outcome {
            failure = Some(e);
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let peak_memory = model.backend.peak_memory()?;
    model.backend.start_op_timing()?;
    trainer.step(&mut model, &batch, &targets, shape.tokens())?;
    let spent = model.backend.finish_op_timing()?;
    Ok(Measurement {
        name: label,
        rate: shape.tokens() as f64 / seconds,
        unit: "tokens/s",
        seconds,
        device: DeviceFigures {
            ops: spent,
            peak_memory,
        },
        model_flops: Some(6.0 * model.table.total as f64 * shape.tokens() as f64),
    })
}

/// Recurrent decoding throughput (one token a step for each of `batch` sequences) in
/// tokens/s over all of them, including the LM head and copying the logits to the host
/// (what sampling needs).
pub fn decode<B: Backend>(
    backend: B,
    config: MambaConfig,
    batch: usize,
    steps: usize,
) -> Result<Measurement, ModelError> {
    let label = format!(
        "decode (d_model {}, {} layers, vocab {}, batch {batch})",
        config.d_model,
        config.n_layer,
        config.padded_vocab()
    );
    let model = Model::initialised(backend, config, Head::LanguageModel, 1)?;
    let be = &model.backend;
    let mut decoder = DecodeSteps::new(&model, model.decode_state(batch)?)?;
    let tokens = vec![1; batch];
    let mut failure = None;
    let seconds = median_seconds(steps, || {
        let outcome = decoder
            .step(&model, &tokens)
            .and_then(|()| Ok(be.download(be.all(decoder.logits()))?));
        if let Err(e) = outcome {
            failure = Some(e);
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(Measurement {
        name: label,
        rate: batch as f64 / seconds,
        unit: "tokens/s",
        seconds,
        device: DeviceFigures::default(),
        model_flops: None,
    })
}

/// Data-parallel training throughput of a language model in tokens/s over the whole
/// global batch (`micro_batch` on each GPU of `layout`), one step including NCCL's
/// all-reduce of the gradients.
pub fn train_parallel(
    layout: crate::parallel::ParallelConfig,
    config: MambaConfig,
    steps: usize,
) -> Result<Measurement, ModelError> {
    let global = layout.global_batch();
    let label = format!(
        "data-parallel train step on {} GPU(s) (d_model {}, {} layers, vocab {}, batch {} × len {} per GPU)",
        layout.world_size(),
        config.d_model,
        config.n_layer,
        config.vocab_size,
        layout.micro_batch.batch * layout.accumulation,
        global.len
    );
    let vocab = config.vocab_size as u64;
    let params =
        crate::model::ParamTable::new(&config, &Head::LanguageModel).initialise(&config, 1);
    let mut dp = crate::parallel::DataParallel::new(
        layout,
        config,
        Head::LanguageModel,
        &params,
        OptimizerConfig::default(),
    )?;
    let mut rng = Rng::new(2);
    let ids: Vec<u32> = (0..global.tokens())
        .map(|_| rng.below(vocab) as u32)
        .collect();
    let targets: Vec<u32> = ids[1..].iter().copied().chain([0]).collect();
    let batch = crate::parallel::HostBatch {
        shape: global,
        ids: &ids,
        lengths: None,
        resets: None,
        targets: &targets,
    };
    let mut failure = None;
    let seconds = median_seconds(steps, || {
        if let Err(e) = dp.step(&batch) {
            failure = Some(e);
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(Measurement {
        name: label,
        rate: global.tokens() as f64 / seconds,
        unit: "tokens/s",
        seconds,
        device: DeviceFigures::default(),
        model_flops: None,
    })
}
