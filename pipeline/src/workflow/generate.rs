//! Sampling and scoring with a language model: DNA samples as FASTA, audio samples as WAV,
//! per-token log-likelihoods as `record<TAB>position<TAB>token_id<TAB>logprob` lines, or
//! per record.

use std::io::Write;
use std::path::{Path, PathBuf};

use seqmamba_kernels::Backend;
use seqmamba_modalities::audio::Quantizer;
use seqmamba_modalities::audio::wav::write_tokens_wav;
use seqmamba_modalities::dna::tokenizer;

use super::data::{self, Corpus};
use super::pretrain::{LmEval, model_bits, write_lm_eval};
use super::run::RunContext;
use super::schema::Modality;
use super::{WorkflowError, io_error, output_error};
use crate::checkpoint::{Checkpoint, InputSpec};
use crate::infer::{RowScorer, generate, score_tokens};
use crate::model::{Head, Model};
use crate::predict::tsv_field;
use crate::records::read_records;

/// DNA tokens as FASTA text (70 bases a line; tokens that are not bases become `N`).
///
/// ```
/// use seqmamba::workflow::generate::fasta_record;
/// assert_eq!(fasta_record("s", &[5, 6, 7, 8, 1]), ">s\nACGTN\n");
/// ```
pub fn fasta_record(name: &str, tokens: &[u8]) -> String {
    let bases: Vec<u8> = tokens
        .iter()
        .map(|&t| tokenizer::decode_base(t).unwrap_or(b'N'))
        .collect();
    let mut text = format!(">{name}\n");
    for line in bases.chunks(70) {
        text.push_str(&String::from_utf8_lossy(line));
        text.push('\n');
    }
    text
}

/// Writes `generation.samples` samples into `generated/`: each continues the first
/// `prompt_len` tokens of a prompt sequence (taken in turn); DNA as `sample-<i>.fa` (the
/// generated bases only), audio as `sample-<i>.wav` (prompt and continuation). Up to
/// `generation.batch_size` samples decode together.
pub(crate) fn write_samples<B: Backend>(
    ctx: &mut RunContext<B>,
    model: &Model<B>,
    prompts: &[Vec<u8>],
) -> Result<(), WorkflowError> {
    let w = ctx.workflow;
    let g = &w.generation;
    let prompts: Vec<&Vec<u8>> = prompts.iter().filter(|p| !p.is_empty()).collect();
    if prompts.is_empty() {
        return Err(WorkflowError::Invalid(
            "no sequence to take a prompt from".into(),
        ));
    }
    let dir = ctx.dir.join("generated");
    std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    let samples: Vec<(usize, Vec<u32>, u64)> = (0..g.samples)
        .map(|i| {
            let source = prompts[i % prompts.len()];
            let prompt = source[..g.prompt_len.min(source.len())]
                .iter()
                .map(|&t| u32::from(t))
                .collect();
            (i, prompt, w.seed.wrapping_add(1 + i as u64))
        })
        .collect();
    let bar = ctx.progress((g.samples * g.length) as u64, "generate");
    for group in samples.chunks(g.batch_size) {
        let prompt_slices: Vec<&[u32]> = group.iter().map(|(_, p, _)| p.as_slice()).collect();
        let seeds: Vec<u64> = group.iter().map(|&(_, _, seed)| seed).collect();
        let done = bar.position();
        let generated = generate(
            model,
            &prompt_slices,
            &seeds,
            g.length,
            &g.sampling(),
            |n| bar.set_position(done + (n * group.len()) as u64),
        )?;
        for ((i, prompt, seed), tokens) in group.iter().zip(generated) {
            let tokens: Vec<u8> = tokens.into_iter().map(|t| t as u8).collect();
            match w.data.modality {
                Modality::Dna => {
                    let name = format!(
                        "sample-{i} prompt_len={} temperature={} top_k={} top_p={} seed={seed}",
                        prompt.len(),
                        g.temperature,
                        g.top_k,
                        g.top_p
                    );
                    ctx.write(
                        &format!("generated/sample-{i}.fa"),
                        fasta_record(&name, &tokens).as_bytes(),
                    )?;
                }
                Modality::Audio => {
                    let mut all: Vec<u8> = prompt.iter().map(|&t| t as u8).collect();
                    all.extend(&tokens);
                    write_wav_atomic(
                        &dir.join(format!("sample-{i}.wav")),
                        &all,
                        data::quantizer(&w.data),
                        w.data.sample_rate,
                    )?;
                }
            }
        }
    }
    bar.finish_and_clear();
    ctx.metrics.insert("samples".into(), g.samples as f64);
    Ok(())
}

/// Writes audio tokens as a 16-bit WAV file at `path` through a temporary file and a
/// rename: a failed write leaves no torn file.
pub fn write_wav_atomic(
    path: &Path,
    tokens: &[u8],
    quantizer: Quantizer,
    rate: u32,
) -> Result<(), WorkflowError> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    if let Err(e) = write_tokens_wav(&temp, tokens, quantizer, rate) {
        let _ = std::fs::remove_file(&temp);
        return Err(e.into());
    }
    std::fs::rename(&temp, path).map_err(io_error(path))
}

fn load_model<B: Backend>(ctx: &RunContext<B>) -> Result<Model<B>, WorkflowError> {
    let path = ctx
        .workflow
        .model
        .checkpoint
        .as_ref()
        .expect("validated: generate and score need a checkpoint");
    let checkpoint = Checkpoint::load(path)?;
    if checkpoint.metadata.head != Head::LanguageModel {
        return Err(WorkflowError::Invalid(format!(
            "{}: holds a classifier; generation and scoring need a language model",
            path.display()
        )));
    }
    let vocab = data::vocab_size(ctx.workflow.data.modality);
    if checkpoint.config.vocab_size != vocab {
        return Err(WorkflowError::Invalid(format!(
            "{}: the model's vocabulary has {} tokens, {:?} data {vocab}",
            path.display(),
            checkpoint.config.vocab_size,
            ctx.workflow.data.modality
        )));
    }
    Ok(Model::new(
        ctx.backend.clone(),
        checkpoint.config,
        checkpoint.metadata.head,
        &checkpoint.params,
    )?)
}

/// The generate task: samples from `model.checkpoint`, prompts from the data's test split.
pub(crate) fn run_generate<B: Backend>(ctx: &mut RunContext<B>) -> Result<(), WorkflowError> {
    let w = ctx.workflow;
    let model = ctx.stage("load model", |c| load_model(c))?;
    let loaded = ctx.load_data()?;
    let split = &w.data.split;
    let corpus = Corpus::new(&loaded, split.method, split.validation, split.test);
    let prompts = if corpus.test.iter().any(|s| !s.is_empty()) {
        corpus.test
    } else {
        corpus.train
    };
    if w.generation.samples == 0 {
        ctx.note("generation.samples is 0: nothing generated".into());
        return Ok(());
    }
    ctx.stage("generate", |c| write_samples(c, &model, &prompts))
}

/// The score task: `scores.tsv` with every token's log-likelihood (natural log) of every
/// example, and the mean bits per token in `lm_eval.csv` (split `all`).
pub(crate) fn run_score<B: Backend>(ctx: &mut RunContext<B>) -> Result<(), WorkflowError> {
    let w = ctx.workflow;
    let model = ctx.stage("load model", |c| load_model(c))?;
    let loaded = ctx.load_data()?;
    let text = ctx.stage("score", |_| {
        let mut out = Vec::new();
        for e in &loaded.examples {
            let ids: Vec<u32> = e.tokens.iter().map(|&t| u32::from(t)).collect();
            let logprobs = score_tokens(&model, &ids, w.evaluation.chunk_len)?;
            write_scores(&e.id, &ids, &logprobs, &mut out)?;
        }
        Ok(out)
    })?;
    ctx.write("scores.tsv", &text)?;
    let sequences: Vec<Vec<u8>> = loaded.examples.iter().map(|e| e.tokens.clone()).collect();
    let (bits, tokens) = model_bits(&model, &sequences, w.evaluation.chunk_len)?;
    write_lm_eval(
        ctx,
        &[LmEval {
            split: "all".into(),
            model: "mamba".into(),
            bits_per_token: bits,
            tokens,
        }],
    )?;
    ctx.metrics.insert("bits_per_token".into(), bits);
    Ok(())
}

/// Writes `record<TAB>position<TAB>token_id<TAB>logprob` for positions 1.. of `ids`, whose
/// natural-log probabilities [`score_tokens`] gave as `logprobs`.
pub fn write_scores(
    record: &str,
    ids: &[u32],
    logprobs: &[f32],
    out: &mut impl Write,
) -> Result<(), WorkflowError> {
    for (i, logprob) in logprobs.iter().enumerate() {
        writeln!(out, "{record}\t{}\t{}\t{logprob}", i + 1, ids[i + 1]).map_err(output_error)?;
    }
    Ok(())
}

/// What [`score_files`] went through.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScoreSummary {
    pub records: u64,
    /// Positions scored (every record's but its first).
    pub tokens: u64,
    /// Sum of their natural-log probabilities.
    pub logprob: f64,
}

/// The header of [`score_files`]'s table per record.
pub const RECORD_SCORE_HEADER: &str = "file\trecord\ttokens\tlogprob\tbits_per_token";

/// Scores every record of `files` (DNA records, or audio clips, made into tokens as `spec`
/// says) into `out`, in input order: [`write_scores`] lines per token, or with
/// `per_record` [`RECORD_SCORE_HEADER`] and a line per record (its scored positions, the
/// sum of their log-probabilities, and bits per token: `NA` for a record of one token).
/// Records that fit go through together, as many as `chunk_len` positions hold (rows
/// padded to the longest); a longer one alone, `chunk_len` positions a pass. `progress`
/// hears of each record.
pub fn score_files<B: Backend>(
    model: &Model<B>,
    spec: &InputSpec,
    files: &[PathBuf],
    chunk_len: usize,
    per_record: bool,
    out: impl Write,
    progress: impl FnMut(),
) -> Result<ScoreSummary, WorkflowError> {
    let mut scores = Scores {
        model,
        scorer: RowScorer::default(),
        file_names: files
            .iter()
            .map(|f| tsv_field(&f.display().to_string()))
            .collect(),
        pending: Vec::new(),
        per_record,
        out,
        progress,
        summary: ScoreSummary::default(),
    };
    if per_record {
        writeln!(scores.out, "{RECORD_SCORE_HEADER}").map_err(output_error)?;
    }
    let chunk_len = chunk_len.max(1);
    for (file, path) in files.iter().enumerate() {
        for record in read_records(spec, path)? {
            let (name, tokens) = record?;
            let ids: Vec<u32> = tokens.iter().map(|&t| u32::from(t)).collect();
            let longest = scores.pending.iter().map(|r| r.2.len()).max().unwrap_or(0);
            if (scores.pending.len() + 1) * longest.max(ids.len()) > chunk_len {
                scores.run_pending()?;
            }
            if ids.len() > chunk_len {
                let logprobs = score_tokens(model, &ids, chunk_len)?;
                scores.write(file, &name, &ids, &logprobs)?;
            } else {
                scores.pending.push((file, name, ids));
            }
        }
    }
    scores.run_pending()?;
    scores.out.flush().map_err(output_error)?;
    Ok(scores.summary)
}

/// [`score_files`] on its way: the records waiting to be scored together, and the output.
struct Scores<'a, B: Backend, W, P> {
    model: &'a Model<B>,
    scorer: RowScorer<B>,
    file_names: Vec<String>,
    /// (file index, record name, token ids).
    pending: Vec<(usize, String, Vec<u32>)>,
    per_record: bool,
    out: W,
    progress: P,
    summary: ScoreSummary,
}

impl<B: Backend, W: Write, P: FnMut()> Scores<'_, B, W, P> {
    fn run_pending(&mut self) -> Result<(), WorkflowError> {
        let pending = std::mem::take(&mut self.pending);
        let records: Vec<&[u32]> = pending.iter().map(|r| &r.2[..]).collect();
        let scored = self.scorer.score(self.model, &records)?;
        for ((file, name, ids), logprobs) in pending.iter().zip(scored) {
            self.write(*file, name, ids, &logprobs)?;
        }
        Ok(())
    }

    fn write(
        &mut self,
        file: usize,
        name: &str,
        ids: &[u32],
        logprobs: &[f32],
    ) -> Result<(), WorkflowError> {
        let total: f64 = logprobs.iter().map(|&l| f64::from(l)).sum();
        if self.per_record {
            let bits = if logprobs.is_empty() {
                "NA".to_string()
            } else {
                (-total / std::f64::consts::LN_2 / logprobs.len() as f64).to_string()
            };
            let path = &self.file_names[file];
            let (record, scored) = (tsv_field(name), logprobs.len());
            writeln!(self.out, "{path}\t{record}\t{scored}\t{total}\t{bits}")
                .map_err(output_error)?;
        } else {
            write_scores(name, ids, logprobs, &mut self.out)?;
        }
        self.summary.records += 1;
        self.summary.tokens += logprobs.len() as u64;
        self.summary.logprob += total;
        (self.progress)();
        Ok(())
    }
}
