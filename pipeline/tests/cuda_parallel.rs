//! Data-parallel training through NCCL: a world of one GPU against the plain trainer, two
//! GPUs against one GPU accumulating two micro-batches, and repeatability. Each test skips,
//! saying so, where there are too few GPUs or no NCCL; without any GPU the constructor must
//! fail with an error.

use seqmamba::model::{Batch, Head, IGNORE_INDEX, MambaConfig, Model, ParamTable, Shape};
use seqmamba::parallel::{DataParallel, HostBatch, ParallelConfig};
use seqmamba::train::{OptimizerConfig, Trainer};
use seqmamba_kernels::Backend;
use seqmamba_kernels::cuda::{CommunicatorId, Cuda, device_count};
use seqmamba_kernels::rng::Rng;
use seqmamba_kernels::testing::{max_scaled_error, to_f64};

const STEPS: usize = 3;

/// Whether `gpus` GPUs and NCCL are there; prints why not.
fn have(gpus: usize) -> bool {
    let found = device_count();
    if found < gpus {
        println!("skipping: needs {gpus} CUDA devices, found {found}");
        return false;
    }
    if let Err(reason) = CommunicatorId::new() {
        println!("skipping: no NCCL ({reason})");
        return false;
    }
    true
}

fn config() -> MambaConfig {
    MambaConfig::new(64, 2, 16)
}

fn optimizer() -> OptimizerConfig {
    OptimizerConfig {
        lr: 1e-2,
        warmup_steps: 1,
        total_steps: 10,
        ..Default::default()
    }
}

fn initial_params() -> Vec<f32> {
    let config = config();
    ParamTable::new(&config, &Head::LanguageModel).initialise(&config, 11)
}

/// `STEPS` global batches of random ids (with packed-row resets) and next-token targets.
fn batches(shape: Shape) -> Vec<(Vec<u32>, Vec<u32>, Vec<u32>)> {
    let mut rng = Rng::new(12);
    (0..STEPS)
        .map(|_| {
            let ids: Vec<u32> = (0..shape.tokens()).map(|_| rng.below(16) as u32).collect();
            let resets: Vec<u32> = (0..shape.tokens())
                .map(|i| u32::from(i % shape.len == 0 || rng.below(40) == 0))
                .collect();
            let targets = (0..ids.len())
                .map(|i| {
                    if (i + 1) % shape.len == 0 || rng.below(20) == 0 {
                        IGNORE_INDEX
                    } else {
                        ids[i + 1]
                    }
                })
                .collect();
            (ids, resets, targets)
        })
        .collect()
}

/// Trains `STEPS` steps data-parallel; returns the losses, grad norms and every rank's
/// parameters.
fn train_parallel(
    devices: Vec<usize>,
    micro_batch: Shape,
    accumulation: usize,
) -> (Vec<f64>, Vec<f64>, Vec<Vec<f32>>) {
    let layout = ParallelConfig {
        devices,
        micro_batch,
        accumulation,
        precision: Default::default(),
    };
    let global = layout.global_batch();
    let mut dp = DataParallel::new(
        layout,
        config(),
        Head::LanguageModel,
        &initial_params(),
        optimizer(),
    )
    .unwrap();
    let mut losses = Vec::new();
    let mut norms = Vec::new();
    for (ids, resets, targets) in batches(global) {
        let stats = dp
            .step(&HostBatch {
                shape: global,
                ids: &ids,
                lengths: None,
                resets: Some(&resets),
                targets: &targets,
            })
            .unwrap();
        losses.push(stats.loss);
        norms.push(stats.grad_norm);
    }
    let params = (0..dp.world_size())
        .map(|rank| dp.params(rank).unwrap())
        .collect();
    (losses, norms, params)
}

fn bits_equal(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn world_of_one_equals_the_plain_trainer() {
    if !have(1) {
        return;
    }
    let shape = Shape { batch: 2, len: 64 };
    let (want_losses, want_params) = {
        let cuda = Cuda::new(0).unwrap();
        let mut model = Model::new(cuda, config(), Head::LanguageModel, &initial_params()).unwrap();
        let mut trainer = Trainer::new(&model, shape, optimizer()).unwrap();
        let mut losses = Vec::new();
        for (ids, resets, targets) in batches(shape) {
            let be = &model.backend;
            let batch = Batch::new(be, shape, &ids, None, Some(&resets)).unwrap();
            let count = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
            let targets = be.upload_ids(&targets).unwrap();
            losses.push(
                trainer
                    .step(&mut model, &batch, &targets, count)
                    .unwrap()
                    .loss,
            );
        }
        let be = &model.backend;
        (losses, be.download(be.all(&model.params)).unwrap())
    };
    let (losses, _, params) = train_parallel(vec![0], shape, 1);
    println!("plain {want_losses:?}, world of one {losses:?}");
    assert_eq!(losses, want_losses);
    assert!(bits_equal(&params[0], &want_params));
    assert!(!bits_equal(&want_params, &initial_params()));
}

#[test]
fn two_gpus_equal_one_gpu_accumulating_two_micro_batches() {
    if !have(2) {
        return;
    }
    let micro = Shape { batch: 2, len: 64 };
    let (one_losses, one_norms, one_params) = train_parallel(vec![0], micro, 2);
    let (two_losses, two_norms, two_params) = train_parallel(vec![0, 1], micro, 1);
    println!("1 GPU × 2 micro-batches {one_losses:?}, 2 GPUs {two_losses:?}");
    for ((a, b), (na, nb)) in one_losses
        .iter()
        .zip(&two_losses)
        .zip(one_norms.iter().zip(&two_norms))
    {
        assert!((a - b).abs() <= 1e-6 * a.abs(), "loss {a} vs {b}");
        assert!((na - nb).abs() <= 1e-5 * na.abs(), "grad norm {na} vs {nb}");
    }
    assert!(
        bits_equal(&two_params[0], &two_params[1]),
        "replicas drifted apart"
    );
    let error = max_scaled_error(&two_params[0], &to_f64(&one_params[0]), 1e-5, 0.0);
    println!("parameters after {STEPS} steps: scaled error {error:e}");
    assert!(error <= 1.0, "parameters differ: {error}");
    let moved = max_scaled_error(&one_params[0], &to_f64(&initial_params()), 1e-3, 0.0);
    assert!(moved > 1.0, "training did not move the parameters");
}

#[test]
fn data_parallel_training_is_repeatable() {
    if !have(1) {
        return;
    }
    let devices: Vec<usize> = (0..device_count().min(2)).collect();
    let micro = Shape { batch: 2, len: 64 };
    let first = train_parallel(devices.clone(), micro, 2);
    let second = train_parallel(devices, micro, 2);
    assert_eq!(first.0, second.0);
    assert_eq!(first.1, second.1);
    for (a, b) in first.2.iter().zip(&second.2) {
        assert!(bits_equal(a, b));
    }
}

#[test]
fn without_gpus_or_nccl_the_constructor_fails_cleanly() {
    if device_count() > 0 && CommunicatorId::new().is_ok() {
        println!("skipping: this machine has a GPU and NCCL");
        return;
    }
    let layout = ParallelConfig {
        devices: vec![0],
        micro_batch: Shape { batch: 1, len: 8 },
        accumulation: 1,
        precision: Default::default(),
    };
    let result = DataParallel::new(
        layout,
        config(),
        Head::LanguageModel,
        &initial_params(),
        optimizer(),
    );
    let error = result
        .err()
        .expect("no GPU or NCCL, yet a data-parallel run started");
    println!("{error}");
}
