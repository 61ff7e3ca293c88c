//! The `seqmamba` command-line program: a thin layer over the library.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use seqmamba::bench;
use seqmamba::checkpoint::{Checkpoint, Metadata};
use seqmamba::infer::score_tokens;
use seqmamba::model::{Head, MambaConfig, Model, ParamTable, Shape};
use seqmamba_kernels::scan::ScanDims;
use seqmamba_kernels::Cpu;

#[derive(Parser)]
#[command(
    name = "seqmamba",
    version,
    about = "Long-context DNA and audio modelling with a Mamba backbone",
    after_help = "Examples:\n  \
        seqmamba init --preset small --vocab-size 16 --out runs/lm\n  \
        seqmamba score --model runs/lm --token-ids 3,1,4,1,5\n  \
        seqmamba bench --quick"
)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a freshly initialised language model (official initialisation) to a folder.
    Init(InitArgs),
    /// Print the log-probability of every token given the tokens before it.
    Score(ScoreArgs),
    /// Measure scan, training and decoding throughput on this machine.
    Bench(BenchArgs),
    /// Re-render the report of each run folder; with several, also compare them.
    Report(ReportArgs),
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
struct ScoreArgs {
    /// Checkpoint folder (official or Hugging Face layout).
    #[arg(long)]
    model: PathBuf,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',', required = true)]
    token_ids: Vec<u32>,
    /// Positions per forward pass; the state is carried across passes.
    #[arg(long, default_value_t = 8192)]
    chunk_len: usize,
}

#[derive(Args)]
struct BenchArgs {
    /// Smaller shapes and fewer repetitions (a smoke run, not a measurement).
    #[arg(long)]
    quick: bool,
}

fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(cli) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(threads) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("configuring the thread pool")?;
    }
    match cli.command {
        Command::Init(args) => init(args),
        Command::Score(args) => score(args),
        Command::Bench(args) => run_bench(args),
        Command::Report(args) => report(args),
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
        metadata: Metadata {
            head,
            labels: Vec::new(),
            extra: Default::default(),
        },
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

fn score(args: ScoreArgs) -> Result<()> {
    let checkpoint = Checkpoint::load(&args.model)?;
    let model = Model::new(
        Cpu,
        checkpoint.config,
        checkpoint.metadata.head,
        &checkpoint.params,
    )?;
    if args.token_ids.len() < 2 {
        bail!("--token-ids needs at least two tokens (position 0 has no prediction)");
    }
    let logprobs = score_tokens(&model, &args.token_ids, args.chunk_len)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (i, logprob) in logprobs.iter().enumerate() {
        writeln!(out, "{}\t{}\t{logprob}", i + 1, args.token_ids[i + 1])?;
    }
    out.flush()?;
    Ok(())
}

fn run_bench(args: BenchArgs) -> Result<()> {
    let (repeats, scale) = if args.quick { (1, 8) } else { (5, 1) };
    println!("threads: {}", rayon::current_num_threads());
    let mut results = Vec::new();
    for (batch, len, channels) in [(1, 1024, 8192), (8, 256, 4096)] {
        let dims = ScanDims::new(batch, len, channels / scale, 16);
        results.extend(bench::scan(dims, repeats)?);
    }
    let small = MambaConfig::new(128, 4, 16);
    results.push(bench::train(
        small.clone(),
        Shape {
            batch: 8,
            len: 512 / scale,
        },
        repeats,
    )?);
    results.push(bench::decode(small, 50 * repeats)?);
    let big = if args.quick {
        MambaConfig::new(256, 4, 50277)
    } else {
        MambaConfig::new(768, 24, 50277)
    };
    results.push(bench::decode(big, 5 * repeats)?);
    for m in &results {
        println!(
            "{:<70} {:>12.4e} {} ({:.3} ms)",
            m.name,
            m.rate,
            m.unit,
            m.seconds * 1e3
        );
    }
    Ok(())
}
