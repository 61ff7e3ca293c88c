//! The workflow file: a TOML document describing one run (data, model, task, training,
//! evaluation, generation, outputs). Unknown keys are errors; every key has a default except
//! `name`, `task` and the data sources. `--set key=value` overrides edit the parsed TOML
//! before it is checked, so they are validated exactly like the file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use seqmamba_kernels::cuda::GemmPrecision;

use super::WorkflowError;
use crate::checkpoint::InputSpec;
use crate::infer::Sampling;
use crate::model::{Bidirectional, MambaConfig, PoolingKind};
use crate::train::OptimizerConfig;

/// A whole workflow, every default filled in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    /// Names the run (and its default output folder `runs/<name>`).
    pub name: String,
    /// Seeds initialisation, data order, augmentation, splits and sampling.
    #[serde(default)]
    pub seed: u64,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// How the GPU's GEMMs multiply: `f32`, `tf32` or `bf16` (training's mixer GEMMs on
    /// bf16 copies of their operands, the rest in tf32; f32 sums and outputs). The CPU
    /// always runs f32.
    #[serde(default = "default_precision")]
    pub precision: String,
    pub task: Task,
    pub data: Data,
    #[serde(default)]
    pub model: ModelSpec,
    #[serde(default)]
    pub training: Training,
    #[serde(default)]
    pub evaluation: Evaluation,
    #[serde(default)]
    pub generation: Generation,
    #[serde(default)]
    pub outputs: Outputs,
}

fn default_device() -> String {
    "cpu".into()
}

fn default_precision() -> String {
    "f32".into()
}

/// What the run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Train a classifier on labeled examples; predict the test split.
    Classify,
    /// Train a next-token language model; bits per token against baselines; optional samples.
    Pretrain,
    /// Sample from a language model checkpoint (`model.checkpoint`).
    Generate,
    /// Per-token log-likelihoods of the data under a checkpoint (`model.checkpoint`).
    Score,
    /// A trained classifier (`model.checkpoint`) applied to unlabeled files.
    Predict,
}

impl Task {
    /// The name written to the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Task::Classify => "classify",
            Task::Pretrain => "pretrain",
            Task::Generate => "generate",
            Task::Score => "score",
            Task::Predict => "predict",
        }
    }
}

/// DNA (10-token vocabulary) or audio (256 quantised levels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Dna,
    Audio,
}

/// How examples are read from `data.sources`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceFormat {
    /// Sequence files read whole (DNA: FASTA/FASTQ/SAM/BAM records; audio: any audio file);
    /// unlabeled, for language models.
    Sequences,
    /// Genomes cut into windows; the label is the file stem or the record name
    /// (`label_from`).
    Genomes,
    /// Free Spoken Digit Dataset folder (label = digit, group = speaker, index 0–4 = test).
    Fsdd,
    /// Genomic Benchmarks CSV (`seq,label`).
    GenomicBenchmarks,
    /// One folder per class.
    Folders,
    /// A TSV/CSV manifest with `path` or `sequence`, `label`, optional `split` and `group`.
    Manifest,
    /// FASTA records labeled by a key in their header (`header_key`).
    FastaHeaders,
}

/// Where a genome window's label comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelFrom {
    /// The source file's name without extensions.
    File,
    /// The FASTA record (chromosome) name.
    Record,
}

/// The data section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    pub modality: Modality,
    pub format: SourceFormat,
    /// Files or folders, relative to the current directory.
    pub sources: Vec<PathBuf>,
    /// Genomes: label by file or by record.
    #[serde(default = "default_label_from")]
    pub label_from: LabelFrom,
    /// FASTA headers: the key whose value is the label (e.g. `species=`).
    #[serde(default)]
    pub header_key: String,
    /// Genomes: window length and stride in bases (0 = `training.seq_len`).
    #[serde(default)]
    pub window: usize,
    #[serde(default)]
    pub stride: usize,
    /// Genomes: at most this many windows per label and split, drawn evenly (0 = all).
    #[serde(default)]
    pub max_windows_per_label: usize,
    /// At most this many examples (or audio files), taken evenly over the data (0 = all).
    #[serde(default)]
    pub max_examples: usize,
    /// Audio: sampling rate in Hz after resampling.
    #[serde(default = "default_sample_rate")]
    pub sample_rate: u32,
    /// Audio: `mulaw` or `linear` 8-bit quantisation.
    #[serde(default = "default_quantizer")]
    pub quantizer: String,
    /// Audio: `peak` (largest magnitude to 1), `min-max` (smallest sample to -1, largest to 1)
    /// or `none`, applied to each clip before quantisation.
    #[serde(default = "default_normalization")]
    pub normalization: String,
    /// DNA from SAM/BAM: reverse-complement reverse-strand reads back to the orientation the
    /// sequencer read them in (SAM/BAM store them as the reference strand).
    #[serde(default)]
    pub restore_orientation: bool,
    /// `fail` on the first bad record or `skip` bad records and count them.
    #[serde(default = "default_on_error")]
    pub on_error: String,
    #[serde(default)]
    pub split: SplitSpec,
}

fn default_label_from() -> LabelFrom {
    LabelFrom::File
}
pub(crate) fn default_sample_rate() -> u32 {
    8000
}
pub(crate) fn default_quantizer() -> String {
    "mulaw".into()
}
pub(crate) fn default_normalization() -> String {
    "peak".into()
}
fn default_on_error() -> String {
    "fail".into()
}

/// How examples are split into train, validation and test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitMethod {
    /// The split the source gives (FSDD convention, manifest column).
    Given,
    /// Seeded random fractions.
    Random,
    /// Whole groups (speakers, genomes) held out: `test_groups`.
    Group,
    /// k-fold cross-validation: every example is tested once.
    Kfold,
    /// Genome blocks of `block` bases assigned at random, so no test window overlaps a
    /// training one.
    Position,
    /// Language models: the last `test` (and before it `validation`) fraction of every
    /// sequence is held out.
    Tail,
}

/// The split section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitSpec {
    pub method: SplitMethod,
    pub validation: f64,
    pub test: f64,
    pub test_groups: Vec<String>,
    pub folds: usize,
    /// Run only the first `run_folds` folds (0 = all).
    pub run_folds: usize,
    pub block: u64,
}

impl Default for SplitSpec {
    fn default() -> Self {
        Self {
            method: SplitMethod::Given,
            validation: 0.0,
            test: 0.1,
            test_groups: Vec::new(),
            folds: 5,
            run_folds: 0,
            block: 100_000,
        }
    }
}

/// The model: a preset, explicit sizes (which override the preset's), or a checkpoint to
/// fine-tune (classification starts from its backbone with a fresh head).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSpec {
    pub preset: String,
    pub d_model: usize,
    pub n_layer: usize,
    pub d_state: usize,
    pub d_conv: usize,
    pub expand: usize,
    pub checkpoint: Option<PathBuf>,
    /// Classifier pooling over the valid positions.
    pub pooling: PoolingKind,
    /// Classifier: `off`, `shared` or `separate` reverse mixers.
    pub bidirectional: Bidirectional,
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self {
            preset: "tiny".into(),
            d_model: 0,
            n_layer: 0,
            d_state: 0,
            d_conv: 0,
            expand: 0,
            checkpoint: None,
            pooling: PoolingKind::Mean,
            bidirectional: Bidirectional::Off,
        }
    }
}

impl ModelSpec {
    /// The configuration for a vocabulary of `vocab` tokens (0 sizes keep the preset's).
    pub fn config(&self, vocab: usize) -> Result<MambaConfig, WorkflowError> {
        let mut c = MambaConfig::preset(&self.preset, vocab)?;
        if self.d_model > 0 {
            c.d_model = self.d_model;
            c.dt_rank = self.d_model.div_ceil(16);
        }
        for (value, field) in [
            (self.n_layer, &mut c.n_layer),
            (self.d_state, &mut c.d_state),
            (self.d_conv, &mut c.d_conv),
            (self.expand, &mut c.expand),
        ] {
            if value > 0 {
                *field = value;
            }
        }
        c.validate()?;
        Ok(c)
    }
}

/// The training section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Training {
    /// Optimiser steps (ignored when `epochs` > 0).
    pub steps: u64,
    /// Passes over the training examples (classification); 0 uses `steps`.
    pub epochs: f64,
    pub batch_size: usize,
    /// Positions per row (longer examples are cropped: at random in training, centred in
    /// evaluation).
    pub seq_len: usize,
    pub lr: f32,
    pub min_lr_ratio: f32,
    pub warmup_steps: u64,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub clip_norm: f32,
    /// DNA: reverse-complement each training row with probability ½.
    pub reverse_complement: bool,
    /// Write a resumable checkpoint every this many steps (0 = only the final one).
    pub checkpoint_every: u64,
}

impl Default for Training {
    fn default() -> Self {
        let o = OptimizerConfig::default();
        Self {
            steps: 200,
            epochs: 0.0,
            batch_size: 8,
            seq_len: 512,
            lr: o.lr,
            min_lr_ratio: o.min_lr_ratio,
            warmup_steps: o.warmup_steps,
            weight_decay: o.weight_decay,
            beta1: o.beta1,
            beta2: o.beta2,
            clip_norm: o.clip_norm,
            reverse_complement: false,
            checkpoint_every: 100,
        }
    }
}

impl Training {
    /// Optimiser settings for a run of `total_steps`.
    pub fn optimizer(&self, total_steps: u64) -> OptimizerConfig {
        OptimizerConfig {
            lr: self.lr,
            min_lr_ratio: self.min_lr_ratio,
            warmup_steps: self.warmup_steps,
            total_steps,
            weight_decay: self.weight_decay,
            beta1: self.beta1,
            beta2: self.beta2,
            clip_norm: self.clip_norm,
            ..OptimizerConfig::default()
        }
    }

    /// Steps of a run over `train_examples` examples.
    pub fn total_steps(&self, train_examples: usize) -> u64 {
        if self.epochs > 0.0 {
            ((self.epochs * train_examples as f64) / self.batch_size as f64).ceil() as u64
        } else {
            self.steps
        }
        .max(1)
    }
}

/// The evaluation section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Evaluation {
    pub batch_size: usize,
    /// DNA classification: average the probabilities of each sequence and its reverse
    /// complement.
    pub reverse_complement: bool,
    /// Language models: Markov baselines of these orders.
    pub markov_orders: Vec<usize>,
    /// Language models: the DEFLATE baseline.
    pub deflate: bool,
    /// Positions per forward pass when scoring long sequences (state carried across).
    pub chunk_len: usize,
    /// Language models: score at most this many test tokens (0 = all).
    pub max_tokens: usize,
    /// Predict: records longer than `seq_len` classified over all their windows (the
    /// probabilities averaged), not only their centre.
    pub windows: bool,
}

impl Default for Evaluation {
    fn default() -> Self {
        Self {
            batch_size: 16,
            reverse_complement: false,
            markov_orders: vec![0, 1, 2, 3, 4, 5],
            deflate: true,
            chunk_len: 4096,
            max_tokens: 0,
            windows: false,
        }
    }
}

/// The generation section (pretrain and generate tasks).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Generation {
    /// Samples to write to `generated/` (0 = none).
    pub samples: usize,
    /// Tokens per sample.
    pub length: usize,
    /// Prompt: the first `prompt_len` tokens of a test sequence.
    pub prompt_len: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    /// Samples decoded together (each step reads the weights once for all of them).
    pub batch_size: usize,
}

impl Default for Generation {
    fn default() -> Self {
        let s = Sampling::default();
        Self {
            samples: 0,
            length: 1000,
            prompt_len: 16,
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            batch_size: 32,
        }
    }
}

impl Generation {
    /// The sampling settings.
    pub fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
        }
    }
}

/// The outputs section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Outputs {
    /// The run folder; empty = `runs/<name>`.
    pub dir: PathBuf,
    /// Render the report into the run folder at the end.
    pub report: bool,
}

impl Default for Outputs {
    fn default() -> Self {
        Self {
            dir: PathBuf::new(),
            report: true,
        }
    }
}

/// Applies one `key=value` override (dotted key, TOML-typed value; a value that is not
/// valid TOML is taken as a string) to a parsed document.
///
/// ```
/// use seqmamba::workflow::schema::apply_override;
/// let mut doc: toml::Table = "name = 'x'\n[training]\nsteps = 5\n".parse().unwrap();
/// apply_override(&mut doc, "training.steps=7").unwrap();
/// apply_override(&mut doc, "data.modality=dna").unwrap();
/// assert_eq!(doc["training"]["steps"].as_integer(), Some(7));
/// assert_eq!(doc["data"]["modality"].as_str(), Some("dna"));
/// assert!(apply_override(&mut doc, "name.inner=1").is_err());
/// ```
pub fn apply_override(doc: &mut toml::Table, assignment: &str) -> Result<(), WorkflowError> {
    let bad = |message: &str| WorkflowError::Override {
        assignment: assignment.to_string(),
        message: message.to_string(),
    };
    let (key, text) = assignment
        .split_once('=')
        .ok_or_else(|| bad("expected KEY=VALUE, e.g. training.steps=100"))?;
    let key = key.trim();
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad("the key has an empty part"));
    }
    let value = parse_value(text.trim());
    let (last, parents) = parts.split_last().expect("split gives one part at least");
    let mut table = doc;
    for part in parents {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| bad(&format!("`{part}` is a value, not a section")))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

fn parse_value(text: &str) -> toml::Value {
    let wrapped = format!("v = {text}");
    match wrapped.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").expect("parsed key"),
        Err(_) => toml::Value::String(text.to_string()),
    }
}

impl Workflow {
    /// Parses a workflow from TOML text with `--set` overrides applied, and validates it.
    /// `origin` names the text in errors.
    pub fn parse(text: &str, origin: &Path, overrides: &[String]) -> Result<Self, WorkflowError> {
        let parse_error = |message: String| WorkflowError::Parse {
            path: origin.to_path_buf(),
            message,
        };
        let mut doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| parse_error(e.to_string()))?;
        for assignment in overrides {
            apply_override(&mut doc, assignment)?;
        }
        let workflow: Workflow = doc
            .try_into()
            .map_err(|e: toml::de::Error| parse_error(e.to_string()))?;
        workflow.validate().map_err(|e| match e {
            WorkflowError::Invalid(message) => parse_error(message),
            other => other,
        })?;
        Ok(workflow)
    }

    /// Reads and parses a workflow file.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, WorkflowError> {
        let text = std::fs::read_to_string(path).map_err(|source| WorkflowError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path, overrides)
    }

    /// The resolved workflow as TOML (every default written out).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the workflow serialises")
    }

    /// The run folder.
    /// How this workflow makes its examples, as a checkpoint records it.
    pub fn input_spec(&self) -> InputSpec {
        let data = &self.data;
        InputSpec {
            modality: data.modality,
            seq_len: self.training.seq_len,
            sample_rate: data.sample_rate,
            quantizer: data.quantizer.clone(),
            normalization: data.normalization.clone(),
            restore_orientation: data.restore_orientation,
            reverse_complement: self.evaluation.reverse_complement,
        }
    }

    pub fn run_dir(&self) -> PathBuf {
        if self.outputs.dir.as_os_str().is_empty() {
            PathBuf::from("runs").join(&self.name)
        } else {
            self.outputs.dir.clone()
        }
    }

    /// The GPU's GEMM precision (`precision`).
    pub fn gemm_precision(&self) -> Result<GemmPrecision, WorkflowError> {
        self.precision
            .parse()
            .map_err(|e| WorkflowError::Invalid(format!("precision: {e}")))
    }

    /// Checks what serde cannot: consistent combinations and sensible sizes.
    pub fn validate(&self) -> Result<(), WorkflowError> {
        let invalid = |m: String| Err(WorkflowError::Invalid(m));
        if self.name.is_empty() || self.name.contains(['/', '\\']) {
            return invalid(format!(
                "name `{}` must be non-empty and contain no path separator",
                self.name
            ));
        }
        let d = &self.data;
        if d.sources.is_empty() {
            return invalid("data.sources is empty: give at least one file or folder".into());
        }
        if d.sources.iter().any(|s| s == Path::new("-")) {
            return invalid(
                "data.sources: a run hashes the files it reads, so standard input (`-`) is not \
                 one (`seqmamba classify` reads it)"
                    .into(),
            );
        }
        let t = &self.training;
        if t.batch_size == 0 || t.seq_len < 2 {
            return invalid("training.batch_size must be ≥ 1 and training.seq_len ≥ 2".into());
        }
        if self.evaluation.batch_size == 0 || self.evaluation.chunk_len == 0 {
            return invalid("evaluation.batch_size and evaluation.chunk_len must be ≥ 1".into());
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return invalid(format!("training.lr must be positive, not {}", t.lr));
        }
        if t.reverse_complement && d.modality != Modality::Dna {
            return invalid("training.reverse_complement needs data.modality = \"dna\"".into());
        }
        if self.evaluation.reverse_complement && d.modality != Modality::Dna {
            return invalid("evaluation.reverse_complement needs data.modality = \"dna\"".into());
        }
        self.gemm_precision()?;
        if d.restore_orientation && d.modality != Modality::Dna {
            return invalid("data.restore_orientation needs data.modality = \"dna\"".into());
        }
        d.on_error
            .parse::<seqmamba_modalities::OnError>()
            .map_err(|e| WorkflowError::Invalid(format!("data.on_error: {e}")))?;
        if !matches!(d.quantizer.as_str(), "mulaw" | "linear") {
            return invalid(format!(
                "data.quantizer must be \"mulaw\" or \"linear\", not {:?}",
                d.quantizer
            ));
        }
        d.normalization
            .parse::<seqmamba_modalities::audio::Normalization>()
            .map_err(|e| WorkflowError::Invalid(format!("data.normalization: {e}")))?;
        let s = &d.split;
        if s.validation < 0.0 || s.test < 0.0 || s.validation + s.test >= 1.0 {
            return invalid(format!(
                "data.split.validation ({}) and data.split.test ({}) must be ≥ 0 and sum below 1",
                s.validation, s.test
            ));
        }
        if s.method == SplitMethod::Kfold && s.folds < 2 {
            return invalid("data.split.folds must be ≥ 2 for k-fold".into());
        }
        let lm = matches!(self.task, Task::Pretrain | Task::Generate | Task::Score);
        match (self.task, d.format) {
            (Task::Classify, SourceFormat::Sequences) => {
                return invalid(
                    "task \"classify\" needs labeled data: data.format = \"genomes\", \"fsdd\", \
                     \"genomic_benchmarks\", \"folders\", \"manifest\" or \"fasta_headers\""
                        .into(),
                );
            }
            (Task::Predict, format) if format != SourceFormat::Sequences => {
                return invalid(
                    "task \"predict\" reads unlabeled files: data.format = \"sequences\"".into(),
                );
            }
            (Task::Classify, _) if s.method == SplitMethod::Tail => {
                return invalid("data.split.method = \"tail\" is for language models".into());
            }
            (_, SourceFormat::Genomes) if s.method != SplitMethod::Position => {
                return invalid(
                    "genome windows need data.split.method = \"position\" (no test window may \
                     overlap a training one)"
                        .into(),
                );
            }
            _ => {}
        }
        if lm && s.method == SplitMethod::Kfold {
            return invalid("k-fold splits are for classification".into());
        }
        if matches!(self.task, Task::Generate | Task::Score) && self.model.checkpoint.is_none() {
            return invalid(format!(
                "task \"{}\" needs model.checkpoint (a language model folder)",
                self.task.name()
            ));
        }
        if self.task == Task::Predict && self.model.checkpoint.is_none() {
            return invalid(
                "task \"predict\" needs model.checkpoint (a classifier's folder, e.g. \
                 runs/promoters/checkpoints/fold-0/final)"
                    .into(),
            );
        }
        let vocab = super::data::vocab_size(d.modality) as u64;
        let markov_orders: &[usize] = if self.task == Task::Pretrain {
            &self.evaluation.markov_orders
        } else {
            &[]
        };
        for &order in markov_orders {
            if vocab
                .checked_pow(order as u32 + 1)
                .is_none_or(|n| n > 1 << 27)
            {
                return invalid(format!(
                    "evaluation.markov_orders: order {order} over {vocab} tokens needs                      {vocab}^{} counts; use lower orders",
                    order + 1
                ));
            }
        }
        if let Err(reason) = self.generation.sampling().check() {
            return invalid(format!("generation: {reason}"));
        }
        if self.generation.samples > 0
            && (self.generation.length == 0
                || self.generation.prompt_len == 0
                || self.generation.batch_size == 0)
        {
            return invalid(
                "generation.length, generation.prompt_len and generation.batch_size must be ≥ 1"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
task = "pretrain"
[data]
modality = "dna"
format = "sequences"
sources = ["a.fa"]
split = { method = "tail" }
"#;

    #[test]
    fn defaults_fill_in_and_round_trip() {
        let w = Workflow::parse(MINIMAL, Path::new("t.toml"), &[]).unwrap();
        assert_eq!(w.training, Training::default());
        assert_eq!(w.run_dir(), PathBuf::from("runs/t"));
        let again = Workflow::parse(&w.to_toml(), Path::new("resolved"), &[]).unwrap();
        assert_eq!(w, again);
    }

    #[test]
    fn predict_needs_a_checkpoint_and_files_it_can_hash() {
        let predict = |extra: &[&str]| {
            let mut sets = vec![
                "task=\"predict\"".to_string(),
                "data.split.method=\"given\"".into(),
            ];
            sets.extend(extra.iter().map(|s| s.to_string()));
            Workflow::parse(MINIMAL, Path::new("t.toml"), &sets).map(|_| ())
        };
        let e = predict(&[]).unwrap_err().to_string();
        assert!(e.contains("needs model.checkpoint"), "{e}");
        let e = predict(&["model.checkpoint=\"m\"", "data.sources=[\"-\"]"]).unwrap_err();
        assert!(e.to_string().contains("standard input"), "{e}");
        assert!(predict(&["model.checkpoint=\"m\""]).is_ok());
        let e = predict(&["model.checkpoint=\"m\"", "data.format=\"fsdd\""]).unwrap_err();
        assert!(e.to_string().contains("reads unlabeled files"), "{e}");
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let text = format!("{MINIMAL}\n[training]\nstep = 3\n");
        let e = Workflow::parse(&text, Path::new("t.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `step`"), "{e}");
        let e = Workflow::parse(MINIMAL, Path::new("t.toml"), &["training.lrate=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("lrate"), "{e}");
    }

    #[test]
    fn overrides_are_typed_and_checked() {
        let w = Workflow::parse(
            MINIMAL,
            Path::new("t.toml"),
            &[
                "training.steps=7".into(),
                "training.lr=0.01".into(),
                "evaluation.markov_orders=[1, 2]".into(),
                "name=other".into(),
            ],
        )
        .unwrap();
        assert_eq!((w.training.steps, w.training.lr), (7, 0.01));
        assert_eq!(w.evaluation.markov_orders, vec![1, 2]);
        assert_eq!(w.name, "other");
        for bad in ["training.steps", "training.steps=many", "training..steps=1"] {
            assert!(
                Workflow::parse(MINIMAL, Path::new("t.toml"), &[bad.into()]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn markov_orders_are_bounded_for_language_models_only() {
        let audio = [
            "data.modality=audio".to_string(),
            "data.format=fsdd".to_string(),
        ];
        let e = Workflow::parse(MINIMAL, Path::new("t.toml"), &audio)
            .unwrap_err()
            .to_string();
        assert!(e.contains("order 3 over 256 tokens"), "{e}");
        let mut classify = audio.to_vec();
        classify.extend(["task=classify".into(), "data.split.method=given".into()]);
        assert!(Workflow::parse(MINIMAL, Path::new("t.toml"), &classify).is_ok());
    }

    #[test]
    fn inconsistent_combinations_are_rejected() {
        for set in [
            "task=classify",
            "training.reverse_complement=true\ndata.modality=audio",
            "data.split.test=1.0",
            "task=generate",
        ] {
            let overrides: Vec<String> = set.lines().map(String::from).collect();
            assert!(
                Workflow::parse(MINIMAL, Path::new("t.toml"), &overrides).is_err(),
                "{set}"
            );
        }
    }

    #[test]
    fn audio_normalization_and_read_orientation_are_checked() {
        let parse = |sets: &[&str]| {
            let overrides: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Workflow::parse(MINIMAL, Path::new("t.toml"), &overrides)
        };
        let w = parse(&[]).unwrap();
        assert_eq!(
            (w.data.normalization.as_str(), w.data.restore_orientation),
            ("peak", false)
        );
        let w = parse(&[
            "data.normalization=min-max",
            "data.restore_orientation=true",
        ])
        .unwrap();
        assert_eq!(
            (w.data.normalization.as_str(), w.data.restore_orientation),
            ("min-max", true)
        );
        let e = parse(&["data.normalization=minmax"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("data.normalization") && e.contains("minmax"),
            "{e}"
        );
        let audio = ["data.modality=audio", "evaluation.markov_orders=[0]"];
        assert!(parse(&audio).is_ok());
        let e = parse(&[&audio[..], &["data.restore_orientation=true"]].concat())
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.restore_orientation"), "{e}");
    }
}
