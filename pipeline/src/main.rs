//! The `seqmamba` command-line program: a thin layer over the library.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use seqmamba::bench;
use seqmamba::checkpoint::{Checkpoint, InputSpec, Metadata};
use seqmamba::continuation::{GenerateOptions, PromptSource, SampleSink, generate_samples};
use seqmamba::fsutil::AtomicFile;
use seqmamba::infer::{Sampling, score_tokens};
use seqmamba::model::{Head, MambaConfig, Model, ParamTable, Shape};
use seqmamba::predict::{PredictOptions, classify_files, ensure_classifier};
use seqmamba::workflow::generate::{ScoreSummary, score_files};
use seqmamba::workflow::schema::Modality;
use seqmamba::workflow::{self, RunOptions, RunSummary, Workflow};
use seqmamba_kernels::cuda::{Cuda, GemmPrecision};
use seqmamba_kernels::scan::ScanDims;
use seqmamba_kernels::{Backend, Cpu};
use seqmamba_modalities::OnError;
use seqmamba_modalities::dna::alignment::AlignmentOptions;
use seqmamba_modalities::inspect::inspect;

#[derive(Parser)]
#[command(
    name = "seqmamba",
    version,
    about = "Long-context DNA and audio modelling with a Mamba backbone",
    after_help = "Examples:\n  \
        seqmamba demo\n  \
        seqmamba run workflows/promoters.toml --set training.steps=500\n  \
        seqmamba run --resume runs/promoters\n  \
        seqmamba init --preset small --vocab-size 16 --out runs/lm\n  \
        seqmamba score --model runs/demo/demo-dna data-samples/dna/phix174.fasta\n  \
        seqmamba generate --model runs/demo/demo-dna --prompt ACGTTGCA --length 500\n  \
        seqmamba bench --quick"
)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// No progress bars or notices.
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// A line per stage and checkpoint.
    #[arg(long, short, global = true)]
    verbose: bool,
    /// Print a machine-readable summary (JSON) on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a freshly initialised language model (official initialisation) to a folder.
    Init(InitArgs),
    /// Print the log-probability of every token given the tokens before it.
    Score(ScoreArgs),
    /// Continue DNA or audio prompts with a language model trained by `seqmamba run`.
    Generate(GenerateArgs),
    /// Classify every DNA record or audio file with a classifier trained by `seqmamba run`.
    Classify(ClassifyArgs),
    /// Run a workflow file (TOML) into a run folder, or resume an interrupted run.
    #[command(after_help = "Examples:\n  \
        seqmamba run workflows/demo.toml\n  \
        seqmamba run workflows/fsdd-digits.toml --set training.steps=50 --set data.max_examples=200\n  \
        seqmamba run --resume runs/fsdd-digits\n\n\
        The run folder (default runs/<name>) holds workflow.toml, manifest.json, train_log.csv,\n\
        checkpoints/, and predictions.csv or lm_eval.csv; see docs/workflows.md.")]
    Run(RunArgs),
    /// Train and evaluate the shipped demo workflows (DNA and audio) on data-samples/.
    Demo(DemoArgs),
    /// Measure scan, training and decoding throughput on this machine.
    Bench(BenchArgs),
    /// Re-render the report of each run folder; with several, also compare them.
    Report(ReportArgs),
    /// Show what a DNA or audio file decodes to: records, lengths, tokens, rate, duration.
    Inspect(InspectArgs),
    /// Describe the CUDA device and check that a kernel compiles and runs on it.
    Doctor,
    /// Data-parallel training throughput on 1, 2, 4, … GPUs and the scaling efficiency.
    BenchParallel(BenchParallelArgs),
}

#[derive(Args)]
struct BenchParallelArgs {
    /// Small model and batch (a smoke run, not a measurement).
    #[arg(long)]
    quick: bool,
    /// How the GEMMs multiply: f32, tf32, or bf16 (training's mixer GEMMs on bf16 copies,
    /// the rest in tf32; f32 sums and outputs).
    #[arg(long, default_value = "f32")]
    precision: GemmPrecision,
    /// Rows per GPU per step.
    #[arg(long, default_value_t = 8)]
    batch_per_gpu: usize,
}

#[derive(Args)]
struct InspectArgs {
    /// FASTA/FASTQ/SAM/BAM (plain, gzip or BGZF) or WAV/FLAC/OGG/MP3 file.
    file: PathBuf,
    /// What to do with a bad record: fail (default) or skip and count it.
    #[arg(long, default_value = "fail")]
    on_error: OnError,
    /// SAM/BAM: reverse-complement reverse-strand reads back to the orientation the sequencer
    /// read them in (as in the original FASTQ).
    #[arg(long)]
    restore_orientation: bool,
}

#[derive(Args)]
struct ReportArgs {
    /// Run folders written by `seqmamba run`.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Folder for the side-by-side comparison (needed with several runs).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct InitArgs {
    /// Model size: tiny (d 64, 2 layers), small (d 128, 4 layers), 130m (d 768, 24 layers).
    #[arg(long, default_value = "small")]
    preset: String,
    /// Vocabulary size before padding.
    #[arg(long)]
    vocab_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Checkpoint folder to write.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
#[command(
    after_help = "Output: position<TAB>token_id<TAB>logprob for --token-ids;\n\
    record<TAB>position<TAB>token_id<TAB>logprob for files (natural-log probabilities;\n\
    position 0 of a record has no context and no line); with --per-record a header and\n\
    file<TAB>record<TAB>tokens<TAB>logprob<TAB>bits_per_token, one line a record.\n\
    Files are made into tokens as the training run made its examples (the checkpoint's\n\
    seqmamba.json): DNA records, or audio clips resampled and quantised as it was.\n\n\
    Examples:\n  \
    seqmamba score --model runs/dna-pretrain --per-record reads.fastq.gz > reads.tsv\n  \
    seqmamba score --model runs/fsdd-waveform --per-record clips/*.wav"
)]
struct ScoreArgs {
    /// Language-model checkpoint folder (official or Hugging Face layout, or a run's
    /// checkpoints/final), or the run folder.
    #[arg(long)]
    model: PathBuf,
    /// Comma-separated token ids.
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present_any = ["files", "fasta"],
        conflicts_with_all = ["files", "fasta"]
    )]
    token_ids: Vec<u32>,
    /// DNA files (FASTA, FASTQ, SAM, BAM; plain, gzip or BGZF; `-` for standard input) or
    /// audio files, as the model's modality.
    files: Vec<PathBuf>,
    /// A DNA file to score (the same as naming it among the files).
    #[arg(long)]
    fasta: Option<PathBuf>,
    /// One line a record: its scored positions, their summed log-probability and the bits
    /// per token.
    #[arg(long)]
    per_record: bool,
    /// Positions per forward pass; the state is carried across passes.
    #[arg(long, default_value_t = 8192)]
    chunk_len: usize,
    /// Write the table to this file (appearing only when complete) instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the model runs; auto takes the GPU when one opens, else the CPU.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
}

#[derive(Args)]
#[command(
    after_help = "Output: a header, then file<TAB>record<TAB>length<TAB>predicted<TAB>\
    predicted_name<TAB>prob_<label>... for every record (audio: every file), in input order.\n\
    Inputs are made into tokens as the training run made its examples (recorded in the\n\
    checkpoint's seqmamba.json): DNA records centre-cropped to its seq_len (or cut into\n\
    windows with --windows), audio resampled, normalised and quantised as it was.\n\n\
    Examples:\n  \
    seqmamba classify --model runs/promoters/checkpoints/fold-0/final reads.fastq.gz\n  \
    seqmamba classify --model runs/species/checkpoints/final --windows --out contigs.tsv contigs.fa\n  \
    samtools fastq reads.bam | seqmamba classify --model runs/species - > reads.tsv"
)]
struct ClassifyArgs {
    /// Classifier checkpoint folder (a run's checkpoints/final), or the run folder itself.
    #[arg(long)]
    model: PathBuf,
    /// DNA files (FASTA, FASTQ, SAM, BAM; plain, gzip or BGZF; `-` for standard input) or
    /// audio files, as the model's modality.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Write the table to this file (appearing only when complete) instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Windows a forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Classify records longer than the model's context over all their windows (the
    /// probabilities averaged) instead of their centre crop alone.
    #[arg(long)]
    windows: bool,
    /// Positions a window (default: the training run's seq_len; needed for checkpoints that
    /// do not record it).
    #[arg(long)]
    seq_len: Option<usize>,
    /// What to do with a bad record or audio file: fail (default) or skip and count it.
    #[arg(long, default_value = "fail")]
    on_error: OnError,
    /// Where the model runs; auto takes the GPU when one opens, else the CPU.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
}

#[derive(Args)]
#[command(
    after_help = "Output: DNA samples as FASTA records <prompt>_sample<j> (the seed, the prompt's\n\
    length and the sampling settings in the description) on stdout or in --out; audio\n\
    samples as WAV files <prompt>-sample<j>.wav in the folder --out, at the training run's\n\
    sampling rate. Sample i (counted over all prompts) draws with seed --seed + i, so the\n\
    output does not depend on --batch-size.\n\n\
    Examples:\n  \
    seqmamba generate --model runs/dna-pretrain --prompt ACGTTGCA --length 2000 --samples 4\n  \
    seqmamba generate --model runs/dna-pretrain --prompt-file contigs.fa --prompt-len 4096 --out next.fa\n  \
    seqmamba generate --model runs/fsdd-waveform --prompt-file clip.wav --length 8000 --out generated/"
)]
struct GenerateArgs {
    /// Language-model checkpoint folder (a run's checkpoints/final), or the run folder.
    #[arg(long)]
    model: PathBuf,
    /// DNA bases to continue (ACGTN).
    #[arg(long, conflicts_with = "prompt_file")]
    prompt: Option<String>,
    /// DNA: continue every record of this FASTA, FASTQ, SAM or BAM file (`-`: standard
    /// input); audio: continue this clip. Audio without a prompt starts from silence.
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Keep only each prompt's last N tokens.
    #[arg(long, value_name = "N")]
    prompt_len: Option<usize>,
    /// Tokens to generate per sample (DNA: bases; audio: samples at the model's rate).
    #[arg(long, default_value_t = 1000)]
    length: usize,
    /// Samples per prompt.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Softmax temperature; 0 picks the most likely token.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Draw only from the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Draw only from the most likely tokens holding this much probability.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Samples decoded together (every step reads the weights once for all of them).
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Write each prompt before its continuation.
    #[arg(long)]
    with_prompt: bool,
    /// DNA: a FASTA file (appearing only when complete) instead of stdout; audio: the
    /// folder for the WAV files (required).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the model runs; auto takes the GPU when one opens, else the CPU.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
}

#[derive(Args)]
struct RunArgs {
    /// Workflow file (TOML).
    #[arg(required_unless_present = "resume", conflicts_with = "resume")]
    workflow: Option<PathBuf>,
    /// Continue the interrupted run in this folder from its last checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// Override a value: dotted key and TOML value, e.g. training.steps=100 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Run folder (overrides outputs.dir).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace an existing run folder.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct DemoArgs {
    /// Folder for the demo's run folders.
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Override a value in every demo workflow, e.g. training.steps=20 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Args)]
struct BenchArgs {
    /// Smaller shapes and fewer repetitions (a smoke run, not a measurement).
    #[arg(long)]
    quick: bool,
    /// Where the model runs; auto takes the GPU when one opens, else the CPU.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// On the GPU, how the GEMMs multiply: f32, tf32 (~1e-3 relative) or bf16 (~1e-2;
    /// training's mixer GEMMs on bf16 copies, the rest in tf32; f32 sums and outputs).
    #[arg(long, default_value = "f32")]
    precision: GemmPrecision,
    /// Run only these parts (repeatable, or comma-separated); every part when not given.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<BenchPart>,
}

/// The parts of `seqmamba bench`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchPart {
    /// Selective scan forward and backward (CPU only).
    Scan,
    /// Training steps.
    Train,
    /// Recurrent decoding: one sequence, and 32 decoded together.
    Decode,
}

impl BenchArgs {
    fn runs(&self, part: BenchPart) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceChoice {
    Cpu,
    Cuda,
    Auto,
}

fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(cli) {
        // A reader that stopped early (`| head`) is no failure, as for any Unix filter.
        let broken_pipe = error.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if broken_pipe {
            return;
        }
        eprintln!("error: {}", error_chain(&error));
        std::process::exit(1);
    }
}

/// The error and its causes joined by ": ", leaving out a cause whose text the message
/// before it already ends with: our errors, like io's wrappers, put their source in their
/// own text as well as returning it, which `{:#}` would print twice.
fn error_chain(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain().map(ToString::to_string) {
        if text.is_empty() {
            text = cause;
        } else if !text.ends_with(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

/// Runs a command that applies a model, `|backend, quiet| body`, on the GPU or the CPU as
/// `device` chooses, and prints the summary it returns under `--json` (which also keeps
/// its notices quiet).
macro_rules! on_device {
    ($device:expr, $cli:expr, |$backend:ident, $quiet:ident| $body:expr) => {{
        let $quiet = $cli.quiet || $cli.json;
        let summary = match open_device($device)? {
            None => {
                let $backend = Cpu;
                $body?
            }
            Some(cuda) => {
                let $backend = cuda;
                $body?
            }
        };
        if $cli.json {
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Ok(())
    }};
}

fn run(cli: Cli) -> Result<()> {
    let options = RunOptions {
        quiet: cli.quiet || cli.json,
        verbose: cli.verbose,
        overwrite: false,
        render: Some(render_report),
    };
    if let Some(threads) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("configuring the thread pool")?;
    }
    match cli.command {
        Command::Init(args) => init(args),
        Command::Score(args) => on_device!(args.device, cli, |b, quiet| score(b, &args, quiet)),
        Command::Classify(args) => {
            on_device!(args.device, cli, |b, quiet| classify(b, &args, quiet))
        }
        Command::Generate(args) => {
            on_device!(args.device, cli, |b, quiet| generate(b, &args, quiet))
        }
        Command::Run(args) => run_workflow(args, options, cli.json),
        Command::Demo(args) => demo(args, options, cli.json),
        Command::Bench(args) => run_bench(args),
        Command::Inspect(args) => {
            let options = AlignmentOptions {
                restore_orientation: args.restore_orientation,
                ..AlignmentOptions::default()
            };
            println!("{}", inspect(&args.file, options, args.on_error)?);
            Ok(())
        }
        Command::Doctor => doctor(),
        Command::Report(args) => report(args),
        Command::BenchParallel(args) => bench_parallel(args),
    }
}

fn report(args: ReportArgs) -> Result<()> {
    if args.runs.len() > 1 && args.out.is_none() {
        bail!("comparing {} runs needs --out DIR", args.runs.len());
    }
    for run in &args.runs {
        let summary = seqmamba::report::render(run)?;
        println!(
            "wrote {} ({} files)",
            run.join("report.md").display(),
            summary.files.len()
        );
    }
    if let (Some(out), true) = (&args.out, args.runs.len() > 1) {
        seqmamba::report::compare(&args.runs, out)?;
        println!("wrote {}", out.join("report.md").display());
    }
    Ok(())
}

fn init(args: InitArgs) -> Result<()> {
    let config = MambaConfig::preset(&args.preset, args.vocab_size)?;
    let head = Head::LanguageModel;
    let params = ParamTable::new(&config, &head).initialise(&config, args.seed);
    let checkpoint = Checkpoint {
        config,
        metadata: Metadata::new(head),
        params,
    };
    checkpoint.save(&args.out)?;
    println!(
        "wrote {} ({} parameters)",
        args.out.display(),
        checkpoint.params.len()
    );
    Ok(())
}

/// `seqmamba score` on `backend`: the table to stdout or `--out`, a summary back.
fn score<B: Backend>(backend: B, args: &ScoreArgs, quiet: bool) -> Result<serde_json::Value> {
    let folder = model_folder(&args.model)?;
    let checkpoint = Checkpoint::load(&folder)?;
    let model = Model::new(
        backend,
        checkpoint.config.clone(),
        checkpoint.metadata.head.clone(),
        &checkpoint.params,
    )?;
    let mut out = Output::open(args.out.as_deref())?;
    let started = std::time::Instant::now();
    let files: Vec<PathBuf> = args.files.iter().chain(&args.fasta).cloned().collect();
    let summary = if files.is_empty() {
        if args.token_ids.len() < 2 {
            bail!("--token-ids needs at least two tokens (position 0 has no prediction)");
        }
        let logprobs = score_tokens(&model, &args.token_ids, args.chunk_len)?;
        for (i, logprob) in logprobs.iter().enumerate() {
            writeln!(out, "{}\t{}\t{logprob}", i + 1, args.token_ids[i + 1])?;
        }
        ScoreSummary {
            records: 1,
            tokens: logprobs.len() as u64,
            logprob: logprobs.iter().map(|&l| f64::from(l)).sum(),
        }
    } else {
        if checkpoint.metadata.head != Head::LanguageModel {
            bail!(
                "{}: holds a classifier; scoring needs a language model (task = \"pretrain\")",
                folder.display()
            );
        }
        let spec = input_of(&folder, &checkpoint)?;
        let bar = spinner(quiet, "{spinner} {pos} records ({per_sec}) {elapsed}");
        let summary = score_files(
            &model,
            &spec,
            &files,
            args.chunk_len,
            args.per_record,
            &mut out,
            || bar.inc(1),
        )
        .with_context(|| format!("scoring with {}", folder.display()))?;
        bar.finish_and_clear();
        summary
    };
    out.finish()?;
    let seconds = started.elapsed().as_secs_f64();
    let bits = -summary.logprob / std::f64::consts::LN_2 / summary.tokens.max(1) as f64;
    if !quiet {
        eprintln!(
            "scored {} positions of {} records in {seconds:.1} s: {bits:.4} bits per token on {}",
            summary.tokens,
            summary.records,
            model.backend.name()
        );
    }
    Ok(serde_json::json!({
        "records": summary.records,
        "tokens": summary.tokens,
        "bits_per_token": bits,
        "seconds": seconds,
        "device": model.backend.name(),
        "output": args.out.as_ref().map(|p| p.display().to_string()),
    }))
}

/// Where a command's table goes: a file that appears only when [`Output::finish`] commits
/// it, or standard output.
enum Output {
    File(AtomicFile),
    Stdout(std::io::BufWriter<std::io::StdoutLock<'static>>),
}

impl Output {
    fn open(path: Option<&std::path::Path>) -> Result<Self> {
        Ok(match path {
            Some(path) => Self::File(AtomicFile::create(path)?),
            None => Self::Stdout(std::io::BufWriter::new(std::io::stdout().lock())),
        })
    }

    /// Commits the file, or flushes standard output.
    fn finish(self) -> Result<()> {
        match self {
            Self::File(file) => file.commit()?,
            Self::Stdout(mut out) => out.flush()?,
        }
        Ok(())
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::File(file) => file.write(buf),
            Self::Stdout(out) => out.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::File(file) => file.flush(),
            Self::Stdout(out) => out.flush(),
        }
    }
}

/// A spinner counting what `template` says on standard error (hidden when `quiet`).
fn spinner(quiet: bool, template: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template(template).expect("a valid template"));
    bar
}

/// How the checkpoint's training examples were made, or the defaults for its
/// vocabulary's modality where it does not say.
fn input_of(folder: &std::path::Path, checkpoint: &Checkpoint) -> Result<InputSpec> {
    match &checkpoint.metadata.input {
        Some(spec) => Ok(spec.clone()),
        None => default_input(folder, checkpoint, 0),
    }
}

/// The checkpoint folder `path` names: itself, or the final model of a run folder (one
/// trained without k-fold; under k-fold each fold's model is its own, to be named).
fn model_folder(path: &std::path::Path) -> Result<PathBuf> {
    let finals = path.join("checkpoints");
    if path.join("config.json").exists() || !finals.is_dir() {
        return Ok(path.to_path_buf());
    }
    if finals.join("final").is_dir() {
        return Ok(finals.join("final"));
    }
    let mut folds: Vec<String> = std::fs::read_dir(&finals)
        .with_context(|| format!("reading {}", finals.display()))?
        .flatten()
        .filter(|e| e.path().join("final").is_dir())
        .map(|e| e.path().join("final").display().to_string())
        .collect();
    folds.sort();
    if folds.is_empty() {
        bail!(
            "{}: the run has no final model yet (still training?)",
            path.display()
        );
    }
    bail!(
        "{}: a cross-validated run has a model per fold; name one with --model: {}",
        path.display(),
        folds.join(", ")
    )
}

/// `seqmamba classify` on `backend`: the table to stdout or `--out`, a summary back.
fn classify<B: Backend>(backend: B, args: &ClassifyArgs, quiet: bool) -> Result<serde_json::Value> {
    let folder = model_folder(&args.model)?;
    let checkpoint = Checkpoint::load(&folder)?;
    ensure_classifier(&checkpoint.metadata.head)
        .with_context(|| format!("classifying with {}", folder.display()))?;
    let mut spec = match (checkpoint.metadata.input.clone(), args.seq_len) {
        (Some(spec), _) => spec,
        (None, Some(seq_len)) => default_input(&folder, &checkpoint, seq_len)?,
        (None, None) => bail!(
            "{}: seqmamba.json does not record how the training examples were made \
             (a checkpoint from before this was recorded): pass --seq-len",
            folder.display()
        ),
    };
    if let Some(seq_len) = args.seq_len {
        spec.seq_len = seq_len;
    }
    let labels = checkpoint.metadata.labels.clone();
    let model = Model::new(
        backend,
        checkpoint.config,
        checkpoint.metadata.head,
        &checkpoint.params,
    )?;
    let options = PredictOptions {
        batch: args.batch_size,
        windows: args.windows,
        on_error: args.on_error,
    };
    let bar = spinner(quiet, "{spinner} {pos} records ({per_sec}) {elapsed} {msg}");
    let progress = |path: &std::path::Path| {
        bar.inc(1);
        if bar.position() == 1 || bar.position().is_multiple_of(1024) {
            bar.set_message(path.display().to_string());
        }
    };
    let started = std::time::Instant::now();
    let mut out = Output::open(args.out.as_deref())?;
    let summary = classify_files(
        &model,
        &labels,
        &spec,
        &args.files,
        options,
        &mut out,
        progress,
    )
    .with_context(|| format!("classifying with {}", folder.display()))?;
    out.finish()?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    if !quiet {
        eprintln!(
            "classified {} records ({} windows, {} skipped) in {seconds:.1} s: {:.0} records/s on {}",
            summary.records,
            summary.windows,
            summary.skipped,
            summary.records as f64 / seconds.max(1e-9),
            model.backend.name()
        );
    }
    let predicted: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .zip(&summary.predicted)
        .map(|(label, &(records, _))| (label.clone(), records.into()))
        .collect();
    Ok(serde_json::json!({
        "records": summary.records,
        "predicted": predicted,
        "windows": summary.windows,
        "skipped": summary.skipped,
        "seconds": seconds,
        "seq_len": spec.seq_len,
        "device": model.backend.name(),
        "output": args.out.as_ref().map(|p| p.display().to_string()),
    }))
}

/// The schema's input defaults for the modality `checkpoint`'s vocabulary belongs to: for
/// checkpoints that do not record how their training examples were made.
fn default_input(
    folder: &std::path::Path,
    checkpoint: &Checkpoint,
    seq_len: usize,
) -> Result<InputSpec> {
    let vocab = checkpoint.config.vocab_size;
    match [Modality::Dna, Modality::Audio]
        .into_iter()
        .find(|&m| seqmamba::workflow::data::vocab_size(m) == vocab)
    {
        Some(modality) => Ok(InputSpec::defaults(modality, seq_len)),
        None => bail!(
            "{}: a vocabulary of {vocab} tokens is neither DNA's nor audio's",
            folder.display()
        ),
    }
}

/// `seqmamba generate` on `backend`: samples to stdout or `--out`, a summary back.
fn generate<B: Backend>(backend: B, args: &GenerateArgs, quiet: bool) -> Result<serde_json::Value> {
    let folder = model_folder(&args.model)?;
    let checkpoint = Checkpoint::load(&folder)?;
    if checkpoint.metadata.head != Head::LanguageModel {
        bail!(
            "{}: holds a classifier; generation needs a language model (task = \"pretrain\")",
            folder.display()
        );
    }
    let spec = input_of(&folder, &checkpoint)?;
    let source = match (&args.prompt, &args.prompt_file) {
        (Some(bases), _) => PromptSource::Bases(bases.clone()),
        (None, Some(path)) => PromptSource::File(path.clone()),
        (None, None) => PromptSource::Silence,
    };
    let mut fasta = None;
    let sink = match (spec.modality, &args.out) {
        (Modality::Audio, Some(dir)) => SampleSink::WavFolder(dir.clone()),
        (Modality::Audio, None) => {
            bail!("an audio model writes WAV files: name their folder with --out")
        }
        (Modality::Dna, out) => {
            SampleSink::Fasta(Box::new(fasta.insert(Output::open(out.as_deref())?)))
        }
    };
    let options = GenerateOptions {
        length: args.length,
        samples: args.samples,
        sampling: Sampling {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
        },
        seed: args.seed,
        batch: args.batch_size,
        prompt_len: args.prompt_len,
        with_prompt: args.with_prompt,
    };
    let model = Model::new(
        backend,
        checkpoint.config,
        checkpoint.metadata.head,
        &checkpoint.params,
    )?;
    let bar = spinner(quiet, "{spinner} {pos} tokens ({per_sec}) {elapsed}");
    let started = std::time::Instant::now();
    let summary = generate_samples(&model, &spec, &source, options, sink, |tokens| {
        bar.set_position(tokens)
    })
    .with_context(|| format!("generating with {}", folder.display()))?;
    if let Some(fasta) = fasta {
        fasta.finish()?;
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    if !quiet {
        eprintln!(
            "generated {} samples of {} tokens ({} prompts) in {seconds:.1} s: {:.0} tokens/s on {}",
            summary.samples,
            args.length,
            summary.prompts,
            summary.tokens as f64 / seconds.max(1e-9),
            model.backend.name()
        );
    }
    Ok(serde_json::json!({
        "prompts": summary.prompts,
        "samples": summary.samples,
        "tokens": summary.tokens,
        "seconds": seconds,
        "tokens_per_second": summary.tokens as f64 / seconds.max(1e-9),
        "device": model.backend.name(),
        "output": args.out.as_ref().map(|p| p.display().to_string()),
    }))
}

fn doctor() -> Result<()> {
    let report = seqmamba_kernels::cuda::doctor().context("no usable CUDA device")?;
    println!("{report}");
    if let Err(reason) = &report.smoke_test {
        bail!("the CUDA smoke test failed: {reason}");
    }
    Ok(())
}

/// The report of a finished run folder, rendered at the end of `run` and `demo`.
fn render_report(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    seqmamba::report::render(dir)?;
    Ok(())
}

fn print_summary(summary: &RunSummary) {
    println!(
        "{} ({}): {} steps in {:.1} s -> {}",
        summary.name,
        summary.task,
        summary.steps,
        summary.seconds,
        summary.run_dir.display()
    );
    for (key, value) in &summary.metrics {
        println!("  {key:<16} {value:.4}");
    }
}

fn run_workflow(args: RunArgs, mut options: RunOptions, json: bool) -> Result<()> {
    options.overwrite = args.force;
    let summary = if let Some(dir) = &args.resume {
        if !args.set.is_empty() || args.out.is_some() {
            bail!("--resume continues the run as it was written; --set and --out do not apply");
        }
        workflow::resume(dir, &options).with_context(|| format!("resuming {}", dir.display()))?
    } else {
        let path = args
            .workflow
            .as_ref()
            .expect("clap requires a workflow or --resume");
        let mut workflow = Workflow::load(path, &args.set)?;
        if let Some(out) = args.out {
            workflow.outputs.dir = out;
        }
        workflow::run(&workflow, &options).with_context(|| format!("running {}", path.display()))?
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else if !options.quiet {
        print_summary(&summary);
    }
    Ok(())
}

/// The GPU when `choice` allows and one opens (`None`: run on the CPU).
fn open_device(choice: DeviceChoice) -> Result<Option<Cuda>> {
    match choice {
        DeviceChoice::Cpu => Ok(None),
        DeviceChoice::Cuda => Ok(Some(
            Cuda::new(0).context("--device cuda: no usable CUDA device")?,
        )),
        DeviceChoice::Auto => match Cuda::new(0) {
            Ok(cuda) => Ok(Some(cuda)),
            Err(reason) => {
                eprintln!("note: running on the CPU ({reason})");
                Ok(None)
            }
        },
    }
}

fn demo(args: DemoArgs, mut options: RunOptions, json: bool) -> Result<()> {
    options.overwrite = true;
    let mut summaries = Vec::new();
    for (file, text) in workflow::DEMO_WORKFLOWS {
        let mut workflow = Workflow::parse(text, file.as_ref(), &args.set)?;
        workflow.outputs.dir = args.out.join(&workflow.name);
        if !options.quiet {
            eprintln!("== {} ({file})", workflow.name);
        }
        let summary = workflow::run(&workflow, &options)
            .with_context(|| format!("running the demo workflow {file}"))?;
        if !json && !options.quiet {
            print_summary(&summary);
        }
        summaries.push(summary);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&summaries)?);
    }
    Ok(())
}

fn run_bench(args: BenchArgs) -> Result<()> {
    let (repeats, scale) = if args.quick { (1, 8) } else { (5, 1) };
    let mut results = Vec::new();
    match open_device(args.device)? {
        None => {
            if args.precision != GemmPrecision::F32 {
                bail!(
                    "--precision {} needs the GPU (--device cuda)",
                    args.precision
                );
            }
            println!("device: {}", Cpu.name());
            if args.runs(BenchPart::Scan) {
                for (batch, len, channels) in [(1, 1024, 8192), (8, 256, 4096)] {
                    let dims = ScanDims::new(batch, len, channels / scale, 16);
                    results.extend(bench::scan(dims, repeats)?);
                }
            }
            // The anchor's training step takes minutes on a CPU: only its quick version.
            results.extend(model_benches(|| Ok(Cpu), &args, args.quick, repeats)?);
        }
        Some(cuda) => {
            println!("device: {}, GEMMs in {}", cuda.name(), args.precision);
            drop(cuda);
            let open = || {
                let cuda = Cuda::new(0)?;
                cuda.set_gemm_precision(args.precision)?;
                Ok(cuda)
            };
            results.extend(model_benches(open, &args, true, repeats)?);
        }
    }
    for m in &results {
        let mut line = format!(
            "{:<80} {:>12.4e} {} ({:.3} ms)",
            m.name,
            m.rate,
            m.unit,
            m.seconds * 1e3
        );
        if let Some(ops) = m.device.ops {
            // Shares of the median step; what the kinds leave of 100 % is the device idle
            // between ops (launch and host time).
            let kinds = ops.kinds();
            let shares: Vec<String> = kinds
                .iter()
                .map(|(kind, s)| format!("{kind} {:.1}%", 100.0 * s / m.seconds))
                .collect();
            let busy: f64 = kinds.iter().map(|(_, s)| s).sum();
            line += &format!(
                ", of the step: {} (busy {:.1}%)",
                shares.join(", "),
                100.0 * busy / m.seconds
            );
        }
        if let Some(peak) = m.device.peak_memory {
            line += &format!(", peak memory {:.2} GB", peak as f64 / 1e9);
        }
        if let Some(flops) = m.model_flops {
            line += &format!(", {:.1} model TFLOP/s", flops / m.seconds / 1e12);
        }
        println!("{line}");
    }
    Ok(())
}

fn bench_parallel(args: BenchParallelArgs) -> Result<()> {
    use seqmamba::parallel::ParallelConfig;
    let gpus = seqmamba_kernels::cuda::device_count();
    if gpus == 0 {
        bail!("bench-parallel needs at least one CUDA device");
    }
    let (config, len, repeats) = if args.quick {
        (MambaConfig::new(256, 4, 256), 256, 2)
    } else {
        (MambaConfig::new(768, 24, 256), 2048, 5)
    };
    println!(
        "{gpus} GPU(s), GEMMs in {}, NCCL_NVLS_ENABLE={:?}",
        args.precision,
        std::env::var("NCCL_NVLS_ENABLE").ok()
    );
    let worlds: Vec<usize> = std::iter::successors(Some(1), |w| Some(w * 2))
        .take_while(|&w| w <= gpus)
        .collect();
    let mut single = None;
    for world in worlds {
        let layout = ParallelConfig {
            devices: (0..world).collect(),
            micro_batch: Shape {
                batch: args.batch_per_gpu,
                len,
            },
            accumulation: 1,
            precision: args.precision,
        };
        let m = bench::train_parallel(layout, config.clone(), repeats)?;
        let base = *single.get_or_insert(m.rate);
        println!(
            "{:<110} {:>12.4e} {} ({:.3} ms), scaling efficiency {:.1}%",
            m.name,
            m.rate,
            m.unit,
            m.seconds * 1e3,
            100.0 * m.rate / (base * world as f64)
        );
    }
    Ok(())
}

/// The training and decoding figures of `args` on backends made by `backend` (one per
/// model); `anchor_train` adds the training step of the anchor configuration.
fn model_benches<B: Backend + bench::Profile>(
    backend: impl Fn() -> Result<B, seqmamba_kernels::KernelError>,
    args: &BenchArgs,
    anchor_train: bool,
    repeats: usize,
) -> Result<Vec<bench::Measurement>> {
    let (quick, train, decode) = (
        args.quick,
        args.runs(BenchPart::Train),
        args.runs(BenchPart::Decode),
    );
    let scale = if quick { 8 } else { 1 };
    let small = MambaConfig::new(128, 4, 16);
    let mut results = Vec::new();
    if train {
        let shape = Shape {
            batch: 8,
            len: 512 / scale,
        };
        results.push(bench::train(backend()?, small.clone(), shape, repeats)?);
    }
    if decode {
        results.push(bench::decode(backend()?, small.clone(), 1, 50 * repeats)?);
        results.push(bench::decode(backend()?, small, 32, 50 * repeats)?);
    }
    // The anchor of issue 6: official Mamba (d 768, 24 layers) at batch 8 × 2048, vocab 256.
    let (anchor, shape) = if quick {
        (MambaConfig::new(256, 4, 256), Shape { batch: 2, len: 256 })
    } else {
        (
            MambaConfig::new(768, 24, 256),
            Shape {
                batch: 8,
                len: 2048,
            },
        )
    };
    if anchor_train && train {
        results.push(bench::train(backend()?, anchor.clone(), shape, repeats)?);
    }
    // Issue 6's small DNA config: d 256, 8 layers, the DNA vocabulary, long sequences.
    if anchor_train && train && !quick {
        let dna = MambaConfig::new(256, 8, seqmamba_modalities::dna::tokenizer::VOCAB_SIZE);
        let shape = Shape {
            batch: 4,
            len: 16_384,
        };
        results.push(bench::train(backend()?, dna, shape, repeats)?);
    }
    if decode {
        results.push(bench::decode(backend()?, anchor, 1, 5 * repeats)?);
        let big = if quick {
            MambaConfig::new(256, 4, 50277)
        } else {
            MambaConfig::new(768, 24, 50277)
        };
        results.push(bench::decode(backend()?, big.clone(), 1, 5 * repeats)?);
        // Samples generated together: a step reads the weights once for all of them.
        results.push(bench::decode(backend()?, big, 32, 5 * repeats)?);
    }
    Ok(results)
}
