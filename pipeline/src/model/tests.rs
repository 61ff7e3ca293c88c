//! Whole-model checks: gradients against finite differences, decoding and chunking against
//! the parallel forward, padding invariance of the classifier.

use seqmamba_kernels::Cpu;
use seqmamba_kernels::rng::Rng;
use seqmamba_kernels::testing::{bits, max_scaled_error, on_threads, to_f64};

use super::*;

fn tiny_config(vocab: usize) -> MambaConfig {
    let mut c = MambaConfig::new(16, 2, vocab);
    c.d_state = 4;
    c
}

fn random_ids(rng: &mut Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(vocab as u64) as u32).collect()
}

/// Mean loss of `model` with `params` on one batch.
fn mean_loss(
    model: &mut Model<Cpu>,
    params: &[f32],
    batch: &Batch<Cpu>,
    targets: &Vec<u32>,
    count: usize,
) -> f64 {
    model.params.copy_from_slice(params);
    let mut acts = model.activations(batch.shape, false).unwrap();
    model.forward(batch, &mut acts, None).unwrap();
    let losses = model.loss(&mut acts, targets, None).unwrap();
    losses.iter().map(|&l| l as f64).sum::<f64>() / count as f64
}

/// Checks the backward against central differences on the tensors' largest-gradient entries
/// and on random ones.
fn check_gradients(model: &mut Model<Cpu>, batch: &Batch<Cpu>, targets: &Vec<u32>, count: usize) {
    let params = model.params.clone();
    let mut acts = model.activations(batch.shape, true).unwrap();
    let mut scratch = model.scratch(batch.shape).unwrap();
    let mut grads = vec![0.0f32; params.len()];
    model.forward(batch, &mut acts, None).unwrap();
    model
        .loss(&mut acts, targets, Some(1.0 / count as f32))
        .unwrap();
    model
        .backward(batch, &mut acts, &mut scratch, &mut grads)
        .unwrap();

    let mut rng = Rng::new(99);
    let step = 2e-3f32;
    for entry in model.table.entries.clone() {
        let g = &grads[entry.range.clone()];
        let scale = g.iter().fold(0.0f32, |m, x| m.max(x.abs())) as f64;
        let largest = (0..g.len())
            .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
            .unwrap();
        let picks = [
            largest,
            rng.below(g.len() as u64) as usize,
            rng.below(g.len() as u64) as usize,
        ];
        for i in picks {
            let at = entry.range.start + i;
            let mut probe = params.clone();
            probe[at] = params[at] + step;
            let up = mean_loss(model, &probe, batch, targets, count);
            probe[at] = params[at] - step;
            let down = mean_loss(model, &probe, batch, targets, count);
            let numeric = (up - down) / (2.0 * step as f64);
            let analytic = grads[at] as f64;
            let tolerance = 2e-2 * scale.max(1e-3) + 2e-4;
            assert!(
                (numeric - analytic).abs() <= tolerance,
                "{}[{i}]: analytic {analytic:e}, numeric {numeric:e} (tensor scale {scale:e})",
                entry.name
            );
        }
    }
    model.params.copy_from_slice(&params);
}

#[test]
fn language_model_gradient_matches_finite_differences() {
    let config = tiny_config(6);
    let mut model = Model::initialised(Cpu, config, Head::LanguageModel, 1).unwrap();
    let mut rng = Rng::new(2);
    let shape = Shape { batch: 2, len: 9 };
    let ids = random_ids(&mut rng, shape.tokens(), 6);
    let mut targets = random_ids(&mut rng, shape.tokens(), 6);
    targets[4] = IGNORE_INDEX;
    let batch = Batch::new(&Cpu, shape, &ids, None, None).unwrap();
    check_gradients(&mut model, &batch, &targets, shape.tokens() - 1);
}

#[test]
fn packed_rows_gradient_matches_finite_differences() {
    let config = tiny_config(5);
    let mut model = Model::initialised(Cpu, config, Head::LanguageModel, 3).unwrap();
    let mut rng = Rng::new(4);
    let shape = Shape { batch: 1, len: 12 };
    let ids = random_ids(&mut rng, shape.tokens(), 5);
    let targets = random_ids(&mut rng, shape.tokens(), 5);
    let mut resets = vec![0u32; 12];
    resets[5] = 1;
    let batch = Batch::new(&Cpu, shape, &ids, None, Some(&resets)).unwrap();
    check_gradients(&mut model, &batch, &targets, shape.tokens());
}

#[test]
fn bidirectional_classifier_gradient_matches_finite_differences() {
    for bidirectional in [Bidirectional::Separate, Bidirectional::Shared] {
        let head = Head::Classifier {
            classes: 3,
            pooling: PoolingKind::Mean,
            bidirectional,
        };
        let mut model = Model::initialised(Cpu, tiny_config(7), head, 5).unwrap();
        let mut rng = Rng::new(6);
        let shape = Shape { batch: 3, len: 7 };
        let ids = random_ids(&mut rng, shape.tokens(), 7);
        let batch = Batch::new(&Cpu, shape, &ids, Some(&[7, 4, 1]), None).unwrap();
        check_gradients(&mut model, &batch, &vec![0, 2, 1], 3);
    }
}

/// Loss, logits and gradient of one training step, the mixers' GEMMs on bf16 copies or not.
fn training_step(
    model: &Model<Cpu>,
    batch: &Batch<Cpu>,
    targets: &Vec<u32>,
    bf16: bool,
) -> (f64, Vec<f32>, Vec<f32>) {
    let mut acts = model
        .activations_with_bf16(batch.shape, true, bf16)
        .unwrap();
    let mut scratch = model.scratch_with_bf16(batch.shape, bf16).unwrap();
    let mut grads = vec![0.0f32; model.params.len()];
    model.forward(batch, &mut acts, None).unwrap();
    let losses = model.loss(&mut acts, targets, Some(1.0)).unwrap();
    model
        .backward(batch, &mut acts, &mut scratch, &mut grads)
        .unwrap();
    let loss = losses.iter().map(|&l| l as f64).sum();
    (loss, acts.logits.clone(), grads)
}

/// Training with the mixers' GEMMs on bf16 copies stays within bf16's rounding of the f32
/// step (loss, logits, every tensor's gradient), and is not the f32 step. Both directions
/// of a bidirectional model round their own copies.
#[test]
fn bf16_training_step_is_close_to_f32() {
    let heads = [
        Head::LanguageModel,
        Head::Classifier {
            classes: 3,
            pooling: PoolingKind::Mean,
            bidirectional: Bidirectional::Separate,
        },
    ];
    for head in heads {
        let classifier = head != Head::LanguageModel;
        let mut config = MambaConfig::new(64, 2, 9);
        config.d_state = 8;
        let model = Model::initialised(Cpu, config, head.clone(), 11).unwrap();
        let mut rng = Rng::new(12);
        let shape = Shape { batch: 2, len: 40 };
        let ids = random_ids(&mut rng, shape.tokens(), 9);
        let (lengths, targets) = if classifier {
            (Some(&[40, 23][..]), vec![2, 0])
        } else {
            (None, random_ids(&mut rng, shape.tokens(), 9))
        };
        let batch = Batch::new(&Cpu, shape, &ids, lengths, None).unwrap();
        let (loss, logits, grads) = training_step(&model, &batch, &targets, false);
        let (loss16, logits16, grads16) = training_step(&model, &batch, &targets, true);
        assert!(
            (loss16 - loss).abs() <= 2e-3 * loss.abs(),
            "{head:?}: loss {loss16} vs {loss}"
        );
        let logits_error = max_scaled_error(&logits16, &to_f64(&logits), 2e-2, 0.0);
        assert!(logits_error <= 1.0, "{head:?}: logits at {logits_error}");
        assert!(
            max_scaled_error(&logits16, &to_f64(&logits), 1e-5, 0.0) > 1.0,
            "{head:?}: bf16 copies were not used"
        );
        for entry in &model.table.entries {
            let range = entry.range.clone();
            let error =
                max_scaled_error(&grads16[range.clone()], &to_f64(&grads[range]), 5e-2, 1e-12);
            assert!(error <= 1.0, "{head:?}: {} gradient at {error}", entry.name);
        }
    }
}

/// Logits of one sequence on its own and inside a padded batch agree.
#[test]
fn classifier_ignores_padding() {
    for (pooling, bidirectional) in [
        (PoolingKind::Mean, Bidirectional::Separate),
        (PoolingKind::Last, Bidirectional::Off),
    ] {
        let head = Head::Classifier {
            classes: 4,
            pooling,
            bidirectional,
        };
        let model = Model::initialised(Cpu, tiny_config(8), head, 7).unwrap();
        let seq = [1u32, 5, 2, 7, 3];
        let alone = Batch::new(&Cpu, Shape { batch: 1, len: 5 }, &seq, Some(&[5]), None).unwrap();
        let mut acts = model.activations(alone.shape, false).unwrap();
        model.forward(&alone, &mut acts, None).unwrap();
        let expected = acts.logits.clone();

        let mut padded = vec![0u32; 16];
        padded[..5].copy_from_slice(&seq);
        padded[5..8].copy_from_slice(&[6, 6, 6]); // junk in the padding
        padded[8..16].copy_from_slice(&[4, 4, 1, 2, 3, 5, 6, 7]);
        let batch = Batch::new(
            &Cpu,
            Shape { batch: 2, len: 8 },
            &padded,
            Some(&[5, 8]),
            None,
        )
        .unwrap();
        let mut acts = model.activations(batch.shape, false).unwrap();
        model.forward(&batch, &mut acts, None).unwrap();
        for (a, b) in acts.logits[..4].iter().zip(&expected) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        }
    }
}

fn lm_logits(model: &Model<Cpu>, ids: &[u32], state: Option<&mut DecodeState<Cpu>>) -> Vec<f32> {
    let shape = Shape {
        batch: 1,
        len: ids.len(),
    };
    let batch = Batch::new(&Cpu, shape, ids, None, None).unwrap();
    let mut acts = model.activations(shape, false).unwrap();
    model.forward(&batch, &mut acts, state).unwrap();
    acts.logits
}

fn assert_rows_close(what: &str, actual: &[f32], expected: &[f32], width: usize, rtol: f64) {
    for (pos, (a, e)) in actual.chunks(width).zip(expected.chunks(width)).enumerate() {
        let e: Vec<f64> = e.iter().map(|&x| x as f64).collect();
        let err = seqmamba_kernels::testing::max_scaled_error(a, &e, rtol, 1e-30);
        assert!(
            err <= 1.0,
            "{what}: position {pos} off by {err}× the tolerance"
        );
    }
}

#[test]
fn recurrent_decode_equals_parallel_forward() {
    let model =
        Model::initialised(Cpu, MambaConfig::new(32, 3, 12), Head::LanguageModel, 11).unwrap();
    let mut rng = Rng::new(12);
    let ids = random_ids(&mut rng, 200, 12);
    let parallel = lm_logits(&model, &ids, None);
    let mut state = model.decode_state(1).unwrap();
    let mut stepped = Vec::new();
    for &id in &ids {
        stepped.extend(lm_logits(&model, &[id], Some(&mut state)));
    }
    assert_rows_close("decode", &stepped, &parallel, model.logit_width(), 1e-5);
}

#[test]
fn chunked_processing_equals_one_pass() {
    let model =
        Model::initialised(Cpu, MambaConfig::new(32, 2, 9), Head::LanguageModel, 13).unwrap();
    let mut rng = Rng::new(14);
    let ids = random_ids(&mut rng, 150, 9);
    let whole = lm_logits(&model, &ids, None);
    let mut state = model.decode_state(1).unwrap();
    let mut chunked = Vec::new();
    for chunk in [&ids[..1], &ids[1..70], &ids[70..71], &ids[71..]] {
        chunked.extend(lm_logits(&model, chunk, Some(&mut state)));
    }
    assert_rows_close("chunked", &chunked, &whole, model.logit_width(), 1e-5);
}

#[test]
fn wide_decode_is_bit_identical_across_thread_counts_and_equals_the_parallel_forward() {
    // d_inner 1024: every linear layer but dt_proj, and the scan step, are wide enough to be
    // split across the threads.
    let model =
        Model::initialised(Cpu, MambaConfig::new(512, 1, 300), Head::LanguageModel, 15).unwrap();
    let mut rng = Rng::new(16);
    let ids = random_ids(&mut rng, 12, 300);
    let decode = |threads: usize| {
        on_threads(threads, || {
            let mut state = model.decode_state(1).unwrap();
            let mut stepped = Vec::new();
            for &id in &ids {
                stepped.extend(lm_logits(&model, &[id], Some(&mut state)));
            }
            stepped
        })
    };
    let single = decode(1);
    for threads in [2, 3] {
        assert!(bits(&decode(threads)) == bits(&single), "{threads} threads");
    }
    let parallel = lm_logits(&model, &ids, None);
    assert_rows_close("decode", &single, &parallel, model.logit_width(), 1e-5);
}
