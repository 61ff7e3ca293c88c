//! Inference with a language model: per-token log-likelihoods of long sequences, processed
//! in chunks with the recurrent state carried between them.

use seqmamba_kernels::Backend;
use seqmamba_kernels::rng::Rng;
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::model::{Activations, Batch, DecodeState, Head, IGNORE_INDEX, Model, Shape};

/// Natural-log probability of each token given all before it: entry `i` is for position
/// `i + 1` (position 0 has no context). Memory stays bounded by `chunk_len` positions
/// whatever the sequence length.
pub fn score_tokens<B: Backend>(
    model: &Model<B>,
    tokens: &[u32],
    chunk_len: usize,
) -> Result<Vec<f32>, ModelError> {
    if model.head != Head::LanguageModel {
        return Err(ModelError::Input(
            "scoring needs a language model; this checkpoint holds a classifier".into(),
        ));
    }
    let vocab = model.config.vocab_size;
    if let Some((pos, id)) = tokens
        .iter()
        .enumerate()
        .find(|&(_, &id)| id as usize >= vocab)
    {
        return Err(ModelError::Input(format!(
            "token id {id} at position {pos} is outside the model's vocabulary of {vocab}"
        )));
    }
    let be = &model.backend;
    let chunk_len = chunk_len.max(1);
    let mut state = model.decode_state(1)?;
    let mut logprobs = Vec::with_capacity(tokens.len().saturating_sub(1));
    let mut acts = None;
    for (chunk_index, chunk) in tokens.chunks(chunk_len).enumerate() {
        let start = chunk_index * chunk_len;
        let shape = Shape {
            batch: 1,
            len: chunk.len(),
        };
        if acts.as_ref().is_none_or(|(s, _)| *s != shape) {
            acts = Some((shape, model.activations(shape, false)?));
        }
        let acts = &mut acts.as_mut().expect("just set").1;
        let batch = Batch::new(be, shape, chunk, None, None)?;
        model.forward(&batch, acts, Some(&mut state))?;
        let targets: Vec<u32> = (start + 1..start + 1 + chunk.len())
            .map(|i| tokens.get(i).copied().unwrap_or(IGNORE_INDEX))
            .collect();
        let losses = model.loss(acts, &be.upload_ids(&targets)?, None)?;
        logprobs.extend(
            losses
                .iter()
                .zip(&targets)
                .filter(|&(_, &t)| t != IGNORE_INDEX)
                .map(|(&l, _)| -l),
        );
    }
    Ok(logprobs)
}

/// How the next token is drawn from the logits.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sampling {
    /// Softmax temperature; 0 picks the most likely token.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 keeps all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`.
    pub top_p: f32,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        }
    }
}

impl Sampling {
    /// Draws a token id from `logits` (the real vocabulary, without padding).
    ///
    /// ```
    /// use seqmamba::infer::Sampling;
    /// use seqmamba_kernels::rng::Rng;
    /// let greedy = Sampling { temperature: 0.0, ..Default::default() };
    /// assert_eq!(greedy.sample(&[0.1, 2.0, -1.0], &mut Rng::new(0)), 1);
    /// let top1 = Sampling { top_k: 1, ..Default::default() };
    /// assert_eq!(top1.sample(&[0.1, 2.0, -1.0], &mut Rng::new(0)), 1);
    /// ```
    pub fn sample(&self, logits: &[f32], rng: &mut Rng) -> u32 {
        let argmax = || {
            (0..logits.len())
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                .unwrap_or(0) as u32
        };
        if self.temperature <= 0.0 || self.top_k == 1 {
            return argmax();
        }
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if self.top_k > 0 {
            order.truncate(self.top_k);
        }
        let top = logits[order[0]] as f64;
        let weights: Vec<f64> = order
            .iter()
            .map(|&i| ((logits[i] as f64 - top) / self.temperature as f64).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        // Nucleus: the shortest prefix of the sorted tokens holding `top_p` of the mass.
        let mut kept = weights.len();
        if self.top_p < 1.0 {
            let mut mass = 0.0;
            for (n, w) in weights.iter().enumerate() {
                mass += w / total;
                if mass >= self.top_p as f64 {
                    kept = n + 1;
                    break;
                }
            }
        }
        let kept_total: f64 = weights[..kept].iter().sum();
        let mut draw = rng.uniform() * kept_total;
        for (n, w) in weights[..kept].iter().enumerate() {
            if draw < *w {
                return order[n] as u32;
            }
            draw -= w;
        }
        order[kept - 1] as u32
    }
}

/// Continues `prompt` (at least one token) by `count` sampled tokens, decoding one token a
/// step with the recurrent state; returns the new tokens.
pub fn generate<B: Backend>(
    model: &Model<B>,
    prompt: &[u32],
    count: usize,
    sampling: &Sampling,
    seed: u64,
) -> Result<Vec<u32>, ModelError> {
    if model.head != Head::LanguageModel {
        return Err(ModelError::Input(
            "generation needs a language model; this checkpoint holds a classifier".into(),
        ));
    }
    if prompt.is_empty() {
        return Err(ModelError::Input(
            "generation needs a prompt of at least one token".into(),
        ));
    }
    let be = &model.backend;
    let vocab = model.config.vocab_size;
    let width = model.logit_width();
    let mut state = model.decode_state(1)?;
    let shape = Shape {
        batch: 1,
        len: prompt.len(),
    };
    let mut acts = model.activations(shape, false)?;
    model.forward(
        &Batch::new(be, shape, prompt, None, None)?,
        &mut acts,
        Some(&mut state),
    )?;
    let logits = be.download(be.view(
        &acts.logits,
        (prompt.len() - 1) * width..prompt.len() * width,
    ))?;
    let mut rng = Rng::new(seed);
    let mut next = sampling.sample(&logits[..vocab], &mut rng);
    let mut steps = DecodeSteps::new(model, state)?;
    let mut tokens = Vec::with_capacity(count);
    while tokens.len() < count {
        tokens.push(next);
        if tokens.len() == count {
            break;
        }
        steps.step(model, next)?;
        let logits = be.download(be.all(steps.logits()))?;
        next = sampling.sample(&logits[..vocab], &mut rng);
    }
    Ok(tokens)
}

/// One-token decoding steps at batch 1 from a recurrent state. The first step runs its ops
/// directly (loading every kernel); where the backend records, the second is recorded (a
/// CUDA graph: one launch instead of ~300) and every later step writes its token into the
/// same id buffer and replays it.
pub struct DecodeSteps<B: Backend> {
    state: DecodeState<B>,
    batch: Batch<B>,
    acts: Activations<B>,
    recording: Option<B::Recording>,
    steps: u64,
}

impl<B: Backend> DecodeSteps<B> {
    /// Steps continuing from `state` (e.g. after a prompt).
    ///
    /// ```
    /// use seqmamba::infer::DecodeSteps;
    /// use seqmamba::model::{Head, MambaConfig, Model};
    /// use seqmamba_kernels::{Backend, Cpu};
    /// let model = Model::initialised(Cpu, MambaConfig::new(32, 2, 5), Head::LanguageModel, 1)?;
    /// let mut steps = DecodeSteps::new(&model, model.decode_state(1)?)?;
    /// steps.step(&model, 3)?;
    /// assert_eq!(Cpu.all(steps.logits()).len(), model.logit_width());
    /// assert!(!steps.replaying()); // the CPU never records
    /// # Ok::<(), seqmamba::ModelError>(())
    /// ```
    pub fn new(model: &Model<B>, state: DecodeState<B>) -> Result<Self, ModelError> {
        let shape = Shape { batch: 1, len: 1 };
        Ok(Self {
            state,
            batch: Batch::new(&model.backend, shape, &[0], None, None)?,
            acts: model.activations(shape, false)?,
            recording: None,
            steps: 0,
        })
    }

    /// Feeds `token`: advances the state and leaves the next token's logits in
    /// [`DecodeSteps::logits`].
    pub fn step(&mut self, model: &Model<B>, token: u32) -> Result<(), ModelError> {
        let be = &model.backend;
        be.write_ids(&mut self.batch.ids, &[token])?;
        let Self {
            state,
            batch,
            acts,
            recording,
            steps,
        } = self;
        if recording.is_none() && *steps == 1 {
            *recording = be.record(|| model.forward(batch, acts, Some(state)))?;
        }
        match recording {
            Some(recording) => be.replay(recording)?,
            None => model.forward(batch, acts, Some(state))?,
        }
        *steps += 1;
        Ok(())
    }

    /// `(1, logit width)` logits after the last step.
    pub fn logits(&self) -> &B::Buffer {
        &self.acts.logits
    }

    /// Whether steps replay a recording (after the second step, on a backend that records).
    pub fn replaying(&self) -> bool {
        self.recording.is_some()
    }
}

#[cfg(test)]
mod tests {
    use seqmamba_kernels::Cpu;

    use super::*;
    use crate::model::MambaConfig;

    #[test]
    fn chunked_scores_equal_one_chunk_and_are_log_probabilities() {
        let model =
            Model::initialised(Cpu, MambaConfig::new(32, 2, 5), Head::LanguageModel, 3).unwrap();
        let tokens: Vec<u32> = (0..37).map(|i| (i * 7 % 5) as u32).collect();
        let whole = score_tokens(&model, &tokens, 1000).unwrap();
        let chunked = score_tokens(&model, &tokens, 8).unwrap();
        assert_eq!(whole.len(), 36);
        for (a, b) in whole.iter().zip(&chunked) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
            assert!(*a < 0.0);
        }
        assert!(score_tokens(&model, &[1, 5], 8).is_err());
    }

    #[test]
    fn sampling_follows_the_distribution_and_its_filters() {
        let logits = [0.0f32, (3.0f32).ln(), f32::NEG_INFINITY, 0.0];
        let mut rng = Rng::new(1);
        let plain = Sampling::default();
        let mut counts = [0usize; 4];
        for _ in 0..20_000 {
            counts[plain.sample(&logits, &mut rng) as usize] += 1;
        }
        // Probabilities 1/5, 3/5, 0, 1/5.
        assert_eq!(counts[2], 0);
        assert!(
            (counts[1] as f64 / 20_000.0 - 0.6).abs() < 0.02,
            "{counts:?}"
        );
        let nucleus = Sampling {
            top_p: 0.5,
            ..plain
        };
        assert!((0..200).all(|_| nucleus.sample(&logits, &mut rng) == 1));
        let top2 = Sampling { top_k: 2, ..plain };
        assert!((0..200).all(|_| top2.sample(&logits, &mut rng) != 3));
    }

    #[test]
    fn generation_is_seeded_and_matches_greedy_scoring() {
        let model =
            Model::initialised(Cpu, MambaConfig::new(32, 2, 7), Head::LanguageModel, 9).unwrap();
        let sampling = Sampling::default();
        let a = generate(&model, &[1, 2, 3], 20, &sampling, 5).unwrap();
        assert_eq!(a, generate(&model, &[1, 2, 3], 20, &sampling, 5).unwrap());
        assert_ne!(a, generate(&model, &[1, 2, 3], 20, &sampling, 6).unwrap());
        assert!(a.iter().all(|&t| t < 7));
        // Greedy decoding picks, at every step, the token the parallel forward ranks first.
        let greedy = Sampling {
            temperature: 0.0,
            ..sampling
        };
        let tokens = generate(&model, &[4], 10, &greedy, 0).unwrap();
        let mut sequence = vec![4];
        sequence.extend(&tokens);
        let scores = score_tokens(&model, &sequence, 100).unwrap();
        for (i, &t) in tokens.iter().enumerate() {
            let best = (0..7u32)
                .map(|c| {
                    let mut s = sequence[..=i].to_vec();
                    s.push(c);
                    (c, *score_tokens(&model, &s, 100).unwrap().last().unwrap())
                })
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap();
            assert_eq!(best.0, t, "step {i}");
            assert!((best.1 - scores[i]).abs() < 1e-5);
        }
    }
}
