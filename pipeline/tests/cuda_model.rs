//! The whole model on the GPU against the CPU backend: one training step's loss and every
//! parameter gradient, decoding against the parallel forward, and bit-identical training
//! runs. Each test skips, saying so, where there is no CUDA device.

use seqmamba::infer::{DecodeSteps, RowScorer, score_tokens};
use seqmamba::model::{
    Batch, Bidirectional, DecodeState, Head, IGNORE_INDEX, MambaConfig, Model, PoolingKind, Shape,
};
use seqmamba::train::{OptimizerConfig, Trainer};
use seqmamba_kernels::cuda::{Cuda, GemmPrecision};
use seqmamba_kernels::rng::Rng;
use seqmamba_kernels::testing::{max_scaled_error, to_f64};
use seqmamba_kernels::{Backend, Cpu};

fn device() -> Option<Cuda> {
    match Cuda::new(0) {
        Ok(cuda) => Some(cuda),
        Err(reason) => {
            println!("skipping: no CUDA device ({reason})");
            None
        }
    }
}

fn random_ids(rng: &mut Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(vocab as u64) as u32).collect()
}

/// Loss, logits and gradients of one forward + backward on a backend.
struct Step {
    loss: f64,
    logits: Vec<f32>,
    grads: Vec<f32>,
}

/// Inputs of one step, uploaded to each backend, and whether the mixers' GEMMs read bf16
/// copies of their operands.
struct Problem<'a> {
    shape: Shape,
    bf16: bool,
    ids: &'a [u32],
    lengths: Option<&'a [u32]>,
    resets: Option<&'a [u32]>,
    targets: &'a [u32],
    count: usize,
}

fn step<B: Backend>(model: &Model<B>, p: &Problem<'_>) -> Step {
    let be = &model.backend;
    let batch = Batch::new(be, p.shape, p.ids, p.lengths, p.resets).unwrap();
    let targets = be.upload_ids(p.targets).unwrap();
    let mut acts = model.activations_with_bf16(p.shape, true, p.bf16).unwrap();
    let mut scratch = model.scratch_with_bf16(p.shape, p.bf16).unwrap();
    let mut grads = be.zeros(model.table.total).unwrap();
    model.forward(&batch, &mut acts, None).unwrap();
    let losses = model
        .loss(&mut acts, &targets, Some(1.0 / p.count as f32))
        .unwrap();
    model
        .backward(&batch, &mut acts, &mut scratch, &mut grads)
        .unwrap();
    Step {
        loss: losses.iter().map(|&l| l as f64).sum::<f64>() / p.count as f64,
        logits: be.download(be.all(&acts.logits)).unwrap(),
        grads: be.download(be.all(&grads)).unwrap(),
    }
}

/// How close a GPU step must come to the CPU's: the loss relative, the logits relative to
/// their scale, every parameter tensor's gradient relative to that tensor's scale.
struct Tolerance {
    loss: f64,
    logits: f64,
    grads: f64,
}

/// f32 GEMMs: as the CPU up to summation order.
const F32: Tolerance = Tolerance {
    loss: 1e-5,
    logits: 1e-5,
    grads: 1e-4,
};

/// The GPU step against the CPU step within `tolerance`; both steps, CPU first.
fn compare_step(
    cuda: Cuda,
    config: MambaConfig,
    head: Head,
    p: &Problem<'_>,
    tolerance: Tolerance,
) -> (Step, Step) {
    let cpu_model = Model::initialised(Cpu, config.clone(), head.clone(), 21).unwrap();
    let params = cpu_model.params.clone();
    let gpu_model = Model::new(cuda, config, head, &params).unwrap();
    let want = step(&cpu_model, p);
    let got = step(&gpu_model, p);
    let loss_error = (got.loss - want.loss).abs() / want.loss.abs();
    println!(
        "loss: cpu {} cuda {} (relative error {loss_error:e})",
        want.loss, got.loss
    );
    assert!(
        loss_error <= tolerance.loss,
        "loss {} vs {}",
        got.loss,
        want.loss
    );
    let logits_error = max_scaled_error(&got.logits, &to_f64(&want.logits), tolerance.logits, 0.0);
    println!("logits: {logits_error:.3} of the tolerance");
    assert!(
        logits_error <= 1.0,
        "logits off by {logits_error}× the tolerance"
    );
    let mut worst = (0.0f64, String::new());
    for entry in &cpu_model.table.entries {
        let range = entry.range.clone();
        let error = max_scaled_error(
            &got.grads[range.clone()],
            &to_f64(&want.grads[range]),
            tolerance.grads,
            1e-12,
        );
        if error > worst.0 {
            worst = (error, entry.name.clone());
        }
        assert!(
            error <= 1.0,
            "gradient of {} off by {error}× the tolerance",
            entry.name
        );
    }
    println!(
        "worst gradient: {} at {:.3} of the tolerance",
        worst.1, worst.0
    );
    (want, got)
}

/// A language-model step with packed rows (a reset in each of the first two rows) and an
/// ignored target, on the CPU and on the GPU.
fn check_language_model(cuda: Cuda, config: MambaConfig, shape: Shape, seed: u64) {
    let mut rng = Rng::new(seed);
    let ids = random_ids(&mut rng, shape.tokens(), config.vocab_size);
    let mut targets = random_ids(&mut rng, shape.tokens(), config.vocab_size);
    targets[7] = IGNORE_INDEX;
    let mut resets = vec![0u32; shape.tokens()];
    resets[shape.len / 2] = 1;
    resets[shape.len + 3] = 1;
    let problem = Problem {
        shape,
        bf16: false,
        ids: &ids,
        lengths: None,
        resets: Some(&resets),
        targets: &targets,
        count: shape.tokens() - 1,
    };
    compare_step(cuda, config, Head::LanguageModel, &problem, F32);
}

#[test]
fn cuda_language_model_step_equals_the_cpu() {
    let Some(cuda) = device() else { return };
    check_language_model(
        cuda,
        MambaConfig::new(64, 2, 11),
        Shape { batch: 2, len: 150 },
        1,
    );
}

/// Wide enough that the scan forward runs in one pass, as the anchor's training does:
/// batch · d_inner · 4 = 36,864 threads, at least 256 a multiprocessor on devices of up to
/// 144 (the small models here take the segmented forward).
#[test]
fn cuda_wide_language_model_step_equals_the_cpu() {
    let Some(cuda) = device() else { return };
    let config = MambaConfig::new(512, 1, 11);
    assert_eq!(config.d_inner(), 1024);
    check_language_model(cuda, config, Shape { batch: 9, len: 70 }, 3);
}

/// The mixers' GEMMs on bf16 copies (f32 sums, weights and everything else; x and z kept
/// in bf16), on both backends: the GPU's bf16 step is the CPU's up to f32 summation order
/// and the rare value whose rounding to bf16 flips between the two; and asking the device
/// for bf16 GEMMs makes training take that path.
#[test]
fn cuda_language_model_step_in_bf16_equals_the_cpu_in_bf16() {
    let Some(cuda) = device() else { return };
    let config = MambaConfig::new(64, 2, 11);
    let shape = Shape { batch: 2, len: 150 };
    let mut rng = Rng::new(2);
    let ids = random_ids(&mut rng, shape.tokens(), 11);
    let targets = random_ids(&mut rng, shape.tokens(), 11);
    let problem = Problem {
        shape,
        bf16: true,
        ids: &ids,
        lengths: None,
        resets: None,
        targets: &targets,
        count: shape.tokens(),
    };
    // A flip costs its element 2^-8 of its value: at this small width (64) one flip
    // moves a logit by ~1e-4 of the logits' scale. Measured: 4.5e-4 in all while only
    // GEMM inputs were rounded, 1.0e-3 since in_proj writes x and z in bf16 (each of
    // those roundings can flip too); gradients 8e-4. The tolerance must still tell the
    // bf16 step from the f32 one (checked below).
    let bf16 = Tolerance {
        loss: 1e-5,
        logits: 2e-3,
        grads: 5e-3,
    };
    let logits_tolerance = bf16.logits;
    let (_, got) = compare_step(
        cuda.clone(),
        config.clone(),
        Head::LanguageModel,
        &problem,
        bf16,
    );
    let cpu = Model::initialised(Cpu, config, Head::LanguageModel, 21).unwrap();
    let f32_step = step(
        &cpu,
        &Problem {
            bf16: false,
            ..problem
        },
    );
    let gap = max_scaled_error(
        &got.logits,
        &to_f64(&f32_step.logits),
        logits_tolerance,
        0.0,
    );
    println!("bf16 against f32 logits: {gap:.1} × the tolerance");
    assert!(gap > 1.0, "the tolerance cannot tell bf16 from f32");
    assert!(!cuda.bf16_gemms());
    cuda.set_gemm_precision(GemmPrecision::Bf16).unwrap();
    assert!(cuda.bf16_gemms());
}

#[test]
fn cuda_bidirectional_classifier_step_equals_the_cpu() {
    let Some(cuda) = device() else { return };
    let head = Head::Classifier {
        classes: 3,
        pooling: PoolingKind::Mean,
        bidirectional: Bidirectional::Separate,
    };
    let shape = Shape { batch: 3, len: 90 };
    let mut rng = Rng::new(2);
    let ids = random_ids(&mut rng, shape.tokens(), 7);
    let problem = Problem {
        shape,
        bf16: false,
        ids: &ids,
        lengths: Some(&[90, 41, 1]),
        resets: None,
        targets: &[2, 0, 1],
        count: 3,
    };
    compare_step(cuda, MambaConfig::new(32, 2, 7), head, &problem, F32);
}

fn lm_logits(model: &Model<Cuda>, ids: &[u32], state: Option<&mut DecodeState<Cuda>>) -> Vec<f32> {
    let be = &model.backend;
    let shape = Shape {
        batch: 1,
        len: ids.len(),
    };
    let batch = Batch::new(be, shape, ids, None, None).unwrap();
    let mut acts = model.activations(shape, false).unwrap();
    model.forward(&batch, &mut acts, state).unwrap();
    be.download(be.all(&acts.logits)).unwrap()
}

#[test]
fn cuda_decode_equals_the_parallel_forward() {
    let Some(cuda) = device() else { return };
    let model =
        Model::initialised(cuda, MambaConfig::new(32, 3, 12), Head::LanguageModel, 11).unwrap();
    let mut rng = Rng::new(12);
    let ids = random_ids(&mut rng, 150, 12);
    let parallel = lm_logits(&model, &ids, None);
    let mut state = model.decode_state(1).unwrap();
    let mut stepped = Vec::new();
    for &id in &ids {
        stepped.extend(lm_logits(&model, &[id], Some(&mut state)));
    }
    let width = model.logit_width();
    let mut worst = 0.0f64;
    for (pos, (a, e)) in stepped
        .chunks(width)
        .zip(parallel.chunks(width))
        .enumerate()
    {
        let error = max_scaled_error(a, &to_f64(e), 1e-5, 1e-30);
        worst = worst.max(error);
        assert!(error <= 1.0, "position {pos} off by {error}× the tolerance");
    }
    println!("decode: worst position at {worst:.3} of the tolerance");
}

/// Rows decoded together (each from a prompt read alone, its state copied in; the steps
/// replayed from a CUDA graph at batch 3) give each row's parallel-forward logits.
#[test]
fn cuda_batched_decode_rows_equal_their_parallel_forwards() {
    let Some(cuda) = device() else { return };
    let model =
        Model::initialised(cuda, MambaConfig::new(32, 3, 12), Head::LanguageModel, 15).unwrap();
    let be = &model.backend;
    let width = model.logit_width();
    let mut rng = Rng::new(16);
    let prompts: Vec<Vec<u32>> = [5, 1, 70]
        .iter()
        .map(|&n| random_ids(&mut rng, n, 12))
        .collect();
    let follow: Vec<Vec<u32>> = (0..3).map(|_| random_ids(&mut rng, 30, 12)).collect();
    let mut state = model.decode_state(3).unwrap();
    for (row, prompt) in prompts.iter().enumerate() {
        let mut alone = model.decode_state(1).unwrap();
        lm_logits(&model, prompt, Some(&mut alone));
        model.copy_state_row(&alone, 0, &mut state, row).unwrap();
    }
    let mut steps = DecodeSteps::new(&model, state).unwrap();
    let mut stepped = vec![Vec::new(); 3];
    for position in 0..30 {
        let tokens: Vec<u32> = follow.iter().map(|f| f[position]).collect();
        steps.step(&model, &tokens).unwrap();
        let logits = be.download(be.all(steps.logits())).unwrap();
        for (row, out) in stepped.iter_mut().enumerate() {
            out.extend_from_slice(&logits[row * width..(row + 1) * width]);
        }
    }
    assert!(steps.replaying(), "no CUDA graph was recorded");
    let mut worst = 0.0f64;
    for row in 0..3 {
        let mut whole = prompts[row].clone();
        whole.extend(&follow[row]);
        let parallel = lm_logits(&model, &whole, None);
        let expected = &parallel[prompts[row].len() * width..];
        for (pos, (a, e)) in stepped[row]
            .chunks(width)
            .zip(expected.chunks(width))
            .enumerate()
        {
            let error = max_scaled_error(a, &to_f64(e), 1e-5, 1e-30);
            worst = worst.max(error);
            assert!(
                error <= 1.0,
                "row {row} step {pos} off by {error}× the tolerance"
            );
        }
    }
    println!("batched decode: worst step at {worst:.3} of the tolerance");
}

/// Records scored together on the GPU (rows of one padded batch) score as each record
/// alone on the CPU.
#[test]
fn cuda_records_scored_together_equal_the_cpu_one_by_one() {
    let Some(cuda) = device() else { return };
    let config = MambaConfig::new(32, 3, 12);
    let gpu = Model::initialised(cuda, config.clone(), Head::LanguageModel, 17).unwrap();
    let cpu = Model::initialised(Cpu, config, Head::LanguageModel, 17).unwrap();
    let mut rng = Rng::new(18);
    let records: Vec<Vec<u32>> = [40, 1, 0, 33, 97]
        .iter()
        .map(|&n| random_ids(&mut rng, n, 12))
        .collect();
    let rows: Vec<&[u32]> = records.iter().map(Vec::as_slice).collect();
    let together = RowScorer::default().score(&gpu, &rows).unwrap();
    let mut worst = 0.0f64;
    for (record, got) in rows.iter().zip(&together) {
        let alone = score_tokens(&cpu, record, 1000).unwrap();
        assert_eq!(got.len(), alone.len());
        let error = max_scaled_error(got, &to_f64(&alone), 1e-5, 1e-30);
        worst = worst.max(error);
        assert!(error <= 1.0, "a record off by {error}× the tolerance");
    }
    println!("records scored together: worst at {worst:.3} of the tolerance");
}

/// Trains a small LM for a few steps on the GPU; returns the parameters and losses.
/// Decoding replayed from a CUDA graph gives the bits of decoding op by op.
#[test]
fn cuda_graph_decode_equals_decoding_op_by_op() {
    let Some(cuda) = device() else { return };
    let model =
        Model::initialised(cuda, MambaConfig::new(32, 3, 12), Head::LanguageModel, 13).unwrap();
    let be = &model.backend;
    let mut rng = Rng::new(14);
    let ids = random_ids(&mut rng, 40, 12);
    let mut state = model.decode_state(1).unwrap();
    let mut steps = DecodeSteps::new(&model, model.decode_state(1).unwrap()).unwrap();
    for (position, &id) in ids.iter().enumerate() {
        let want = lm_logits(&model, &[id], Some(&mut state));
        steps.step(&model, &[id]).unwrap();
        let got = be.download(be.all(steps.logits())).unwrap();
        let same = got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "position {position}: replayed logits differ");
    }
    assert!(steps.replaying(), "no CUDA graph was recorded");
}

fn train_on_gpu(cuda: Cuda) -> (Vec<f32>, Vec<f64>) {
    let config = MambaConfig::new(32, 2, 6);
    let mut model = Model::initialised(cuda, config, Head::LanguageModel, 42).unwrap();
    let shape = Shape { batch: 4, len: 64 };
    let optimizer = OptimizerConfig {
        lr: 1e-2,
        warmup_steps: 2,
        total_steps: 20,
        ..Default::default()
    };
    let mut trainer = Trainer::new(&model, shape, optimizer).unwrap();
    let mut rng = Rng::new(43);
    let mut losses = Vec::new();
    for _ in 0..20 {
        let ids: Vec<u32> = (0..shape.batch)
            .flat_map(|_| {
                let phase = rng.below(6) as u32;
                (0..shape.len as u32).map(move |t| (t * 5 + phase) % 6)
            })
            .collect();
        let targets: Vec<u32> = (0..ids.len())
            .map(|i| {
                if (i + 1) % shape.len == 0 {
                    IGNORE_INDEX
                } else {
                    ids[i + 1]
                }
            })
            .collect();
        let be = &model.backend;
        let batch = Batch::new(be, shape, &ids, None, None).unwrap();
        let targets = be.upload_ids(&targets).unwrap();
        let count = shape.tokens() - shape.batch;
        let stats = trainer.step(&mut model, &batch, &targets, count).unwrap();
        losses.push(stats.loss);
    }
    let be = &model.backend;
    (be.download(be.all(&model.params)).unwrap(), losses)
}

#[test]
fn cuda_training_is_bit_identical_across_runs_and_learns() {
    let Some(first) = device() else { return };
    let Some(second) = device() else { return };
    let (params_1, losses_1) = train_on_gpu(first);
    let (params_2, losses_2) = train_on_gpu(second);
    assert_eq!(losses_1, losses_2);
    assert!(
        params_1
            .iter()
            .zip(&params_2)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
    println!("losses: {losses_1:?}");
    assert!(
        *losses_1.last().unwrap() < 0.5 * losses_1[0],
        "{losses_1:?}"
    );
}

#[test]
fn cuda_classify_files_equals_the_cpu() {
    use seqmamba::checkpoint::InputSpec;
    use seqmamba::predict::{PredictOptions, classify_files};
    use seqmamba::workflow::schema::Modality;
    use seqmamba_modalities::OnError;

    let Some(cuda) = device() else { return };
    let head = Head::Classifier {
        classes: 3,
        pooling: PoolingKind::Mean,
        bidirectional: Bidirectional::Shared,
    };
    let config = MambaConfig::new(64, 2, 10);
    let cpu = Model::initialised(Cpu, config.clone(), head.clone(), 11).unwrap();
    let params = cpu.backend.download(cpu.backend.all(&cpu.params)).unwrap();
    let gpu = Model::new(cuda, config, head, &params).unwrap();
    // Reads of many lengths (several crop lengths), some longer than the windows.
    let mut rng = Rng::new(5);
    let dir = tempfile::tempdir().unwrap();
    let reads = dir.path().join("reads.fa");
    let fasta: String = (0..40)
        .map(|i| {
            let len = 1 + rng.below(300) as usize;
            let bases: String = (0..len)
                .map(|_| b"ACGT"[rng.below(4) as usize] as char)
                .collect();
            format!(">read{i}\n{bases}\n")
        })
        .collect();
    std::fs::write(&reads, fasta).unwrap();
    let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let spec = InputSpec {
        reverse_complement: true,
        ..InputSpec::defaults(Modality::Dna, 128)
    };
    for windows in [false, true] {
        let options = PredictOptions {
            batch: 16,
            windows,
            on_error: OnError::Fail,
        };
        let files = [reads.clone()];
        let mut on_cpu = Vec::new();
        classify_files(&cpu, &labels, &spec, &files, options, &mut on_cpu, |_| {}).unwrap();
        let mut on_gpu = Vec::new();
        classify_files(&gpu, &labels, &spec, &files, options, &mut on_gpu, |_| {}).unwrap();
        let (on_cpu, on_gpu) = (
            String::from_utf8(on_cpu).unwrap(),
            String::from_utf8(on_gpu).unwrap(),
        );
        let mut worst = 0.0f64;
        for (c, g) in on_cpu.lines().zip(on_gpu.lines()).skip(1) {
            let (c, g): (Vec<&str>, Vec<&str>) = (c.split('\t').collect(), g.split('\t').collect());
            assert_eq!(c[..3], g[..3]);
            for (x, y) in c[5..].iter().zip(&g[5..]) {
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                worst = worst.max((x - y).abs());
            }
        }
        assert_eq!(on_cpu.lines().count(), 41);
        assert!(
            worst < 1e-4,
            "windows {windows}: probabilities differ by {worst}"
        );
        println!("classify_files, windows {windows}: largest probability difference {worst:.2e}");
    }
}
