//! Language-model pretraining: next-token training on the train sequences, then bits per
//! token on the held-out sequences against order-k Markov and DEFLATE baselines
//! (`lm_eval.csv`), then optional samples.

use seqmamba_kernels::Backend;

use super::WorkflowError;
use super::data::{self, Corpus, lm_batch, lm_validation, step_rng};
use super::generate;
use super::run::{Batches, RunContext};
use super::schema::Workflow;
use crate::baselines::{Markov, deflate_bits_per_byte};
use crate::infer::score_tokens;
use crate::model::{Head, Model, Shape};

/// Add-α smoothing of the Markov baselines.
const MARKOV_ALPHA: f64 = 0.5;

/// Training tokens (the last ones) that prime the DEFLATE baseline: twice its window.
const DEFLATE_PRIMING: usize = 64 * 1024;

/// One row of `lm_eval.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct LmEval {
    pub split: String,
    pub model: String,
    pub bits_per_token: f64,
    pub tokens: usize,
}

/// Sequences capped so that together they hold at most `max_tokens` tokens (0 = all).
fn capped(sequences: &[Vec<u8>], max_tokens: usize) -> Vec<Vec<u8>> {
    let mut left = if max_tokens == 0 {
        usize::MAX
    } else {
        max_tokens
    };
    let mut out = Vec::new();
    for s in sequences {
        if left < 2 {
            break;
        }
        let take = s.len().min(left);
        if take >= 2 {
            out.push(s[..take].to_vec());
        }
        left -= take;
    }
    out
}

/// Bits per token of `model` over `sequences` (each scored from its start; position 0 of
/// each has no prediction) and the number of predicted tokens.
pub fn model_bits<B: Backend>(
    model: &Model<B>,
    sequences: &[Vec<u8>],
    chunk_len: usize,
) -> Result<(f64, usize), WorkflowError> {
    let mut nats = 0.0f64;
    let mut count = 0usize;
    for s in sequences {
        let ids: Vec<u32> = s.iter().map(|&t| u32::from(t)).collect();
        let logprobs = score_tokens(model, &ids, chunk_len)?;
        nats -= logprobs.iter().map(|&l| l as f64).sum::<f64>();
        count += logprobs.len();
    }
    Ok((nats / std::f64::consts::LN_2 / count.max(1) as f64, count))
}

/// The baseline rows for `split`: Markov orders fitted on `train`, DEFLATE primed with it.
pub fn baselines(
    workflow: &Workflow,
    split: &str,
    train: &[Vec<u8>],
    held_out: &[Vec<u8>],
) -> Vec<LmEval> {
    let vocab = data::vocab_size(workflow.data.modality);
    let as_ids = |v: &[Vec<u8>]| -> Vec<Vec<u32>> {
        v.iter()
            .map(|s| s.iter().map(|&t| u32::from(t)).collect())
            .collect()
    };
    let (train_ids, test_ids) = (as_ids(train), as_ids(held_out));
    let train_refs: Vec<&[u32]> = train_ids.iter().map(Vec::as_slice).collect();
    let mut rows = Vec::new();
    for &order in &workflow.evaluation.markov_orders {
        let markov = Markov::fit(order, vocab, MARKOV_ALPHA, &train_refs);
        let (mut bits, mut n) = (0.0, 0usize);
        for s in &test_ids {
            let scored = s.len().saturating_sub(order);
            bits += markov.bits_per_token(s) * scored as f64;
            n += scored;
        }
        rows.push(LmEval {
            split: split.into(),
            model: format!("markov-{order}"),
            bits_per_token: bits / n.max(1) as f64,
            tokens: n,
        });
    }
    if workflow.evaluation.deflate {
        // DEFLATE looks back at most 32 KiB, so priming with more of the training tokens
        // changes nothing but the time.
        let train_bytes: Vec<u8> = train.concat();
        let train_bytes = &train_bytes[train_bytes.len().saturating_sub(DEFLATE_PRIMING)..];
        let test_bytes: Vec<u8> = held_out.concat();
        rows.push(LmEval {
            split: split.into(),
            model: "deflate".into(),
            bits_per_token: deflate_bits_per_byte(train_bytes, &test_bytes),
            tokens: test_bytes.len(),
        });
    }
    rows
}

/// Writes `lm_eval.csv`.
pub(crate) fn write_lm_eval<B: Backend>(
    ctx: &RunContext<B>,
    rows: &[LmEval],
) -> Result<(), WorkflowError> {
    let mut text = String::from("split,model,bits_per_token,tokens\n");
    for r in rows {
        text.push_str(&format!(
            "{},{},{},{}\n",
            r.split, r.model, r.bits_per_token, r.tokens
        ));
    }
    ctx.write("lm_eval.csv", text.as_bytes())
}

/// Runs a pretraining workflow.
pub(crate) fn run<B: Backend>(ctx: &mut RunContext<B>) -> Result<(), WorkflowError> {
    let w = ctx.workflow;
    let loaded = ctx.load_data()?;
    let split = &w.data.split;
    let corpus = Corpus::new(&loaded, split.method, split.validation, split.test);
    if corpus.train.is_empty() {
        return Err(WorkflowError::Invalid(
            "no training sequence of at least two tokens (check data.split)".into(),
        ));
    }
    let vocab = data::vocab_size(w.data.modality);
    let (mut model, metadata) = ctx.model(Head::LanguageModel, vocab, w.seed, &[])?;
    let shape = Shape {
        batch: w.training.batch_size,
        len: w.training.seq_len,
    };
    let total = w.training.total_steps(corpus.train.len());
    let rc = w.training.reverse_complement;
    ctx.stage("train", |c| {
        let batches = Batches {
            train: |step| {
                let mut rng = step_rng(w.seed, 0, step);
                lm_batch(&corpus.train, shape.batch, shape.len, &mut rng, rc)
            },
            validation: lm_validation(&corpus.validation, shape.batch, shape.len, w.seed),
        };
        c.fit(&mut model, &metadata, shape, total, (0, 1), batches)
    })?;
    let mut rows = Vec::new();
    for (name, held_out) in [("test", &corpus.test), ("validation", &corpus.validation)] {
        let held_out = capped(held_out, w.evaluation.max_tokens);
        if held_out.is_empty() {
            continue;
        }
        let (bits, tokens) = ctx.stage(&format!("evaluate {name}"), |_| {
            model_bits(&model, &held_out, w.evaluation.chunk_len)
        })?;
        rows.push(LmEval {
            split: name.into(),
            model: "mamba".into(),
            bits_per_token: bits,
            tokens,
        });
        rows.extend(ctx.stage(&format!("baselines {name}"), |_| {
            Ok(baselines(w, name, &corpus.train, &held_out))
        })?);
    }
    write_lm_eval(ctx, &rows)?;
    for r in rows.iter().filter(|r| r.split == "test") {
        let key = if r.model == "mamba" {
            "bits_per_token".to_string()
        } else {
            r.model.clone()
        };
        ctx.metrics.insert(key, r.bits_per_token);
    }
    if w.generation.samples > 0 {
        let prompts = if corpus.test.iter().any(|s| !s.is_empty()) {
            &corpus.test
        } else {
            &corpus.train
        };
        ctx.stage("generate", |c| generate::write_samples(c, &model, prompts))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capping_keeps_whole_prefixes_up_to_the_budget() {
        let seqs = vec![vec![1u8; 5], vec![2u8; 5], vec![3u8; 5]];
        let c = capped(&seqs, 8);
        assert_eq!(c, vec![vec![1u8; 5], vec![2u8; 3]]);
        assert_eq!(capped(&seqs, 0).len(), 3);
    }
}
