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
    check_language_model(model, tokens, "scoring")?;
    let be = &model.backend;
    let mut state = model.decode_state(1)?;
    let mut logprobs = Vec::with_capacity(tokens.len().saturating_sub(1));
    forward_chunks(
        model,
        tokens,
        chunk_len,
        &mut state,
        |start, chunk, acts| {
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
            Ok(())
        },
    )?;
    Ok(logprobs)
}

/// Rows of a batch of records are padded to a multiple of this many positions, so that
/// batches of similar records share a shape (and its activations).
const ROW_LEN_STEP: usize = 32;

/// Scores several records in one forward pass, each a row of a batch padded to the
/// longest: a language model is causal, so what follows a record's end changes nothing
/// before it. Many short records (reads) go through far fewer, larger products than one
/// by one. Keeps the activations of the last shape.
pub struct RowScorer<B: Backend> {
    acts: Option<(Shape, Activations<B>)>,
}

impl<B: Backend> Default for RowScorer<B> {
    fn default() -> Self {
        Self { acts: None }
    }
}

impl<B: Backend> RowScorer<B> {
    /// Entry `i` holds record `i`'s log-probabilities, as [`score_tokens`] gives them (to
    /// rounding: the products run at another size).
    ///
    /// ```
    /// use seqmamba::infer::{RowScorer, score_tokens};
    /// use seqmamba::model::{Head, MambaConfig, Model};
    /// use seqmamba_kernels::Cpu;
    /// let model = Model::initialised(Cpu, MambaConfig::new(32, 2, 5), Head::LanguageModel, 1)?;
    /// let rows = RowScorer::default().score(&model, &[&[1, 2, 3], &[4]])?;
    /// assert_eq!((rows[0].len(), rows[1].len()), (2, 0));
    /// assert!((rows[0][1] - score_tokens(&model, &[1, 2, 3], 64)?[1]).abs() < 1e-5);
    /// # Ok::<(), seqmamba::ModelError>(())
    /// ```
    pub fn score(
        &mut self,
        model: &Model<B>,
        records: &[&[u32]],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        for record in records {
            check_language_model(model, record, "scoring")?;
        }
        let longest = records.iter().map(|r| r.len()).max().unwrap_or(0);
        if longest < 2 {
            return Ok(vec![Vec::new(); records.len()]);
        }
        let shape = Shape {
            batch: records.len(),
            len: longest.next_multiple_of(ROW_LEN_STEP),
        };
        let mut ids = vec![0; shape.tokens()];
        let mut targets = vec![IGNORE_INDEX; shape.tokens()];
        for (row, record) in records.iter().enumerate() {
            let at = row * shape.len;
            ids[at..at + record.len()].copy_from_slice(record);
            if let Some(next) = record.get(1..) {
                targets[at..at + next.len()].copy_from_slice(next);
            }
        }
        if self.acts.as_ref().is_none_or(|(s, _)| *s != shape) {
            self.acts = Some((shape, model.activations(shape, false)?));
        }
        let acts = &mut self.acts.as_mut().expect("just set").1;
        let be = &model.backend;
        model.forward(&Batch::new(be, shape, &ids, None, None)?, acts, None)?;
        let losses = model.loss(acts, &be.upload_ids(&targets)?, None)?;
        Ok(records
            .iter()
            .enumerate()
            .map(|(row, record)| {
                let at = row * shape.len;
                losses[at..at + record.len().saturating_sub(1)]
                    .iter()
                    .map(|&l| -l)
                    .collect()
            })
            .collect())
    }
}

/// Refuses a classifier, and token ids outside the model's vocabulary.
fn check_language_model<B: Backend>(
    model: &Model<B>,
    tokens: &[u32],
    what: &str,
) -> Result<(), ModelError> {
    if model.head != Head::LanguageModel {
        return Err(ModelError::Input(format!(
            "{what} needs a language model; this checkpoint holds a classifier"
        )));
    }
    let vocab = model.config.vocab_size;
    match tokens.iter().position(|&id| id as usize >= vocab) {
        Some(pos) => Err(ModelError::Input(format!(
            "token id {} at position {pos} is outside the model's vocabulary of {vocab}",
            tokens[pos]
        ))),
        None => Ok(()),
    }
}

/// Runs `tokens` (one row) through `model` `chunk_len` positions a pass, carrying `state`
/// from pass to pass; `each(start, chunk, activations)` sees every pass.
fn forward_chunks<B: Backend>(
    model: &Model<B>,
    tokens: &[u32],
    chunk_len: usize,
    state: &mut DecodeState<B>,
    mut each: impl FnMut(usize, &[u32], &mut Activations<B>) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    let chunk_len = chunk_len.max(1);
    let mut acts = None;
    for (chunk_index, chunk) in tokens.chunks(chunk_len).enumerate() {
        let shape = Shape {
            batch: 1,
            len: chunk.len(),
        };
        if acts.as_ref().is_none_or(|(s, _)| *s != shape) {
            acts = Some((shape, model.activations(shape, false)?));
        }
        let acts = &mut acts.as_mut().expect("just set").1;
        let batch = Batch::new(&model.backend, shape, chunk, None, None)?;
        model.forward(&batch, acts, Some(state))?;
        each(chunk_index * chunk_len, chunk, acts)?;
    }
    Ok(())
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
    /// Refuses settings that draw nothing sensible: a temperature that is negative or not
    /// a number, a `top_p` outside (0, 1].
    ///
    /// ```
    /// use seqmamba::infer::Sampling;
    /// assert!(Sampling::default().check().is_ok());
    /// assert!(Sampling { temperature: f32::NAN, ..Default::default() }.check().is_err());
    /// assert!(Sampling { top_p: 0.0, ..Default::default() }.check().is_err());
    /// ```
    pub fn check(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!(
                "the temperature must be a number ≥ 0, not {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must lie in (0, 1], not {}", self.top_p));
        }
        Ok(())
    }

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

/// Positions a forward pass reads of a prompt: a long prompt (a genome, an hour of audio)
/// needs no more memory than this.
const PROMPT_CHUNK: usize = 8192;

/// Continues each of `prompts` (at least one token each) by `count` sampled tokens, the
/// `i`-th drawn with a generator seeded by `seeds[i]`; returns the new tokens per prompt.
/// The prompts decode together, one step a token for all (the weights read once a step,
/// not once per prompt); a prompt repeated is read once. `progress` hears the tokens
/// generated per prompt so far.
///
/// ```
/// use seqmamba::infer::{Sampling, generate};
/// use seqmamba::model::{Head, MambaConfig, Model};
/// use seqmamba_kernels::Cpu;
/// let model = Model::initialised(Cpu, MambaConfig::new(32, 2, 5), Head::LanguageModel, 1)?;
/// let prompt = [1, 2, 3];
/// let samples = generate(&model, &[&prompt, &prompt], &[7, 8], 10, &Sampling::default(), |_| {})?;
/// assert_eq!((samples.len(), samples[1].len()), (2, 10));
/// # Ok::<(), seqmamba::ModelError>(())
/// ```
pub fn generate<B: Backend>(
    model: &Model<B>,
    prompts: &[&[u32]],
    seeds: &[u64],
    count: usize,
    sampling: &Sampling,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Vec<u32>>, ModelError> {
    if prompts.len() != seeds.len() {
        return Err(ModelError::Input(format!(
            "{} prompts and {} seeds: one seed a prompt",
            prompts.len(),
            seeds.len()
        )));
    }
    sampling.check().map_err(ModelError::Input)?;
    if prompts.iter().any(|p| p.is_empty()) {
        return Err(ModelError::Input(
            "generation needs a prompt of at least one token".into(),
        ));
    }
    let rows = prompts.len();
    if rows == 0 || count == 0 {
        return Ok(vec![Vec::new(); rows]);
    }
    let be = &model.backend;
    let vocab = model.config.vocab_size;
    let width = model.logit_width();
    let mut rngs: Vec<Rng> = seeds.iter().map(|&s| Rng::new(s)).collect();
    let mut state = model.decode_state(rows)?;
    let mut next = vec![0u32; rows];
    let mut read = vec![false; rows];
    for row in 0..rows {
        if read[row] {
            continue;
        }
        let prompt = prompts[row];
        check_language_model(model, prompt, "generation")?;
        let mut prompt_state = model.decode_state(1)?;
        let mut last = Vec::new();
        forward_chunks(
            model,
            prompt,
            PROMPT_CHUNK,
            &mut prompt_state,
            |_, chunk, acts| {
                let at = (chunk.len() - 1) * width;
                last = be.download(be.view(&acts.logits, at..at + width))?;
                Ok(())
            },
        )?;
        for same in row..rows {
            if !read[same] && prompts[same] == prompt {
                model.copy_state_row(&prompt_state, 0, &mut state, same)?;
                next[same] = sampling.sample(&last[..vocab], &mut rngs[same]);
                read[same] = true;
            }
        }
    }
    let mut tokens: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
    progress(1);
    let mut steps = DecodeSteps::new(model, state)?;
    for done in 1..count {
        steps.step(model, &next)?;
        let logits = be.download(be.all(steps.logits()))?;
        for (row, sample) in tokens.iter_mut().enumerate() {
            let row_logits = &logits[row * width..row * width + vocab];
            next[row] = sampling.sample(row_logits, &mut rngs[row]);
            sample.push(next[row]);
        }
        progress(done + 1);
    }
    Ok(tokens)
}

/// One-token decoding steps (a token for each row of the state) from a recurrent state.
/// The first step runs its ops
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
    /// Steps continuing from `state` (e.g. after a prompt), one token a row a step.
    ///
    /// ```
    /// use seqmamba::infer::DecodeSteps;
    /// use seqmamba::model::{Head, MambaConfig, Model};
    /// use seqmamba_kernels::{Backend, Cpu};
    /// let model = Model::initialised(Cpu, MambaConfig::new(32, 2, 5), Head::LanguageModel, 1)?;
    /// let mut steps = DecodeSteps::new(&model, model.decode_state(1)?)?;
    /// steps.step(&model, &[3])?;
    /// assert_eq!(Cpu.all(steps.logits()).len(), model.logit_width());
    /// assert!(!steps.replaying()); // the CPU never records
    /// # Ok::<(), seqmamba::ModelError>(())
    /// ```
    pub fn new(model: &Model<B>, state: DecodeState<B>) -> Result<Self, ModelError> {
        let shape = Shape {
            batch: state.batch,
            len: 1,
        };
        Ok(Self {
            batch: Batch::new(&model.backend, shape, &vec![0; state.batch], None, None)?,
            state,
            acts: model.activations(shape, false)?,
            recording: None,
            steps: 0,
        })
    }

    /// Feeds `tokens` (one a row): advances the state and leaves the next tokens' logits in
    /// [`DecodeSteps::logits`].
    pub fn step(&mut self, model: &Model<B>, tokens: &[u32]) -> Result<(), ModelError> {
        let be = &model.backend;
        be.write_ids(&mut self.batch.ids, tokens)?;
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

    /// `(rows, logit width)` logits after the last step.
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

    fn generate_one(
        model: &Model<Cpu>,
        prompt: &[u32],
        count: usize,
        s: &Sampling,
        seed: u64,
    ) -> Vec<u32> {
        generate(model, &[prompt], &[seed], count, s, |_| {})
            .unwrap()
            .remove(0)
    }

    #[test]
    fn generation_is_seeded_and_matches_greedy_scoring() {
        let model =
            Model::initialised(Cpu, MambaConfig::new(32, 2, 7), Head::LanguageModel, 9).unwrap();
        let sampling = Sampling::default();
        let a = generate_one(&model, &[1, 2, 3], 20, &sampling, 5);
        assert_eq!(a, generate_one(&model, &[1, 2, 3], 20, &sampling, 5));
        assert_ne!(a, generate_one(&model, &[1, 2, 3], 20, &sampling, 6));
        assert!(a.iter().all(|&t| t < 7));
        // Greedy decoding picks, at every step, the token the parallel forward ranks first.
        let greedy = Sampling {
            temperature: 0.0,
            ..sampling
        };
        let tokens = generate_one(&model, &[4], 10, &greedy, 0);
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

    #[test]
    fn records_scored_together_score_as_each_alone() {
        let model =
            Model::initialised(Cpu, MambaConfig::new(32, 2, 7), Head::LanguageModel, 8).unwrap();
        let long: Vec<u32> = (0..70).map(|i| i * 3 % 7).collect();
        let records: [&[u32]; 5] = [&[1, 2, 3, 4], &[], &[5], &long, &[6, 6, 0, 2, 1]];
        let mut scorer = RowScorer::default();
        for _ in 0..2 {
            let together = scorer.score(&model, &records).unwrap();
            for (record, got) in records.iter().zip(&together) {
                let alone = score_tokens(&model, record, 1000).unwrap();
                assert_eq!(got.len(), alone.len());
                for (a, b) in got.iter().zip(&alone) {
                    assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
                }
            }
        }
        assert!(scorer.score(&model, &[&[1], &[7]]).is_err());
    }

    /// Sampling from the parallel forward over the whole sequence so far at every step:
    /// no recurrent state, no batch.
    fn generate_by_full_forwards(
        model: &Model<Cpu>,
        prompt: &[u32],
        count: usize,
        sampling: &Sampling,
        seed: u64,
    ) -> Vec<u32> {
        let mut rng = Rng::new(seed);
        let mut sequence = prompt.to_vec();
        let width = model.logit_width();
        while sequence.len() < prompt.len() + count {
            let shape = Shape {
                batch: 1,
                len: sequence.len(),
            };
            let mut acts = model.activations(shape, false).unwrap();
            let batch = Batch::new(&Cpu, shape, &sequence, None, None).unwrap();
            model.forward(&batch, &mut acts, None).unwrap();
            let at = (sequence.len() - 1) * width;
            let last = &Cpu.all(&acts.logits)[at..at + model.config.vocab_size];
            sequence.push(sampling.sample(last, &mut rng));
        }
        sequence.split_off(prompt.len())
    }

    #[test]
    fn prompts_decoded_together_continue_as_each_alone() {
        let model =
            Model::initialised(Cpu, MambaConfig::new(32, 2, 7), Head::LanguageModel, 4).unwrap();
        let sampling = Sampling::default();
        // Different lengths, a prompt repeated (read once, its rows drawn apart by their
        // seeds), and one longer than a prompt pass.
        let long: Vec<u32> = (0..PROMPT_CHUNK as u32 + 37).map(|i| i * 5 % 7).collect();
        let prompts: [&[u32]; 5] = [&[1, 2, 3], &[6], &[1, 2, 3], &long, &[0, 0, 5, 2]];
        let seeds = [11, 12, 13, 14, 15];
        let mut heard = Vec::new();
        let together =
            generate(&model, &prompts, &seeds, 25, &sampling, |n| heard.push(n)).unwrap();
        assert_eq!(heard, (1..=25).collect::<Vec<_>>());
        for (i, (prompt, seed)) in prompts.iter().zip(seeds).enumerate() {
            let alone = generate_by_full_forwards(&model, prompt, 25, &sampling, seed);
            assert_eq!(together[i], alone, "prompt {i}");
        }
        assert_ne!(together[0], together[2]);
        let none = generate(&model, &prompts[..2], &seeds[..2], 0, &sampling, |_| {}).unwrap();
        assert_eq!(none, vec![Vec::<u32>::new(); 2]);
        assert!(generate(&model, &[&[1], &[]], &[1, 2], 5, &sampling, |_| {}).is_err());
        assert!(generate(&model, &[&[1], &[9]], &[1, 2], 5, &sampling, |_| {}).is_err());
        assert!(generate(&model, &[&[1]], &[1, 2], 5, &sampling, |_| {}).is_err());
        let hot = Sampling {
            temperature: f32::NAN,
            ..sampling
        };
        assert!(generate(&model, &[&[1]], &[1], 5, &hot, |_| {}).is_err());
    }
}
