//! The `seqmamba` command-line program: a thin layer over the library.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use seqmamba::bench;
use seqmamba::checkpoint::{Checkpoint, Metadata};
use seqmamba::infer::score_tokens;
use seqmamba::model::{Head, MambaConfig, Model, ParamTable, Shape};
use seqmamba_kernels::cuda::Cuda;
use seqmamba_kernels::scan::ScanDims;
use seqmamba_kernels::{Backend, Cpu};
use seqmamba_modalities::OnError;
use seqmamba_modalities::inspect::inspect;

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
    /// Run the f32 GEMMs in TF32 on the tensor cores.
    #[arg(long)]
    tf32: bool,
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
    /// Where the model runs; auto takes the GPU when one opens, else the CPU.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// On the GPU, run the f32 GEMMs in TF32 on the tensor cores (faster, ~1e-3 relative).
    #[arg(long)]
    tf32: bool,
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
        Command::Inspect(args) => {
            println!("{}", inspect(&args.file, args.on_error)?);
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

fn doctor() -> Result<()> {
    let report = seqmamba_kernels::cuda::doctor().context("no usable CUDA device")?;
    println!("{report}");
    if let Err(reason) = &report.smoke_test {
        bail!("the CUDA smoke test failed: {reason}");
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

fn run_bench(args: BenchArgs) -> Result<()> {
    let (repeats, scale) = if args.quick { (1, 8) } else { (5, 1) };
    let mut results = Vec::new();
    match open_device(args.device)? {
        None => {
            if args.tf32 {
                bail!("--tf32 needs the GPU (--device cuda)");
            }
            println!("device: {}", Cpu.name());
            for (batch, len, channels) in [(1, 1024, 8192), (8, 256, 4096)] {
                let dims = ScanDims::new(batch, len, channels / scale, 16);
                results.extend(bench::scan(dims, repeats)?);
            }
            // The anchor's training step takes minutes on a CPU: only its quick version.
            results.extend(model_benches(|| Ok(Cpu), args.quick, args.quick, repeats)?);
        }
        Some(cuda) => {
            let math = if args.tf32 { "TF32" } else { "f32" };
            println!("device: {}, GEMMs in {math}", cuda.name());
            drop(cuda);
            let open = || {
                let cuda = Cuda::new(0)?;
                cuda.allow_tf32(args.tf32)?;
                Ok(cuda)
            };
            results.extend(model_benches(open, true, args.quick, repeats)?);
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
        if let Some(gemm) = m.device.gemm_seconds {
            line += &format!(", GEMM {:.1}%", 100.0 * gemm / m.seconds);
        }
        if let Some(scan) = m.device.scan_seconds {
            line += &format!(", scan {:.1}% of the step", 100.0 * scan / m.seconds);
        }
        if let Some(peak) = m.device.peak_memory {
            line += &format!(", peak memory {:.2} GB", peak as f64 / 1e9);
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
    let math = if args.tf32 { "TF32" } else { "f32" };
    println!(
        "{gpus} GPU(s), GEMMs in {math}, NCCL_NVLS_ENABLE={:?}",
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
            tf32: args.tf32,
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

/// Training and decoding figures on backends made by `backend` (one per model);
/// `anchor_train` adds the training step of the anchor configuration.
fn model_benches<B: Backend + bench::Profile>(
    backend: impl Fn() -> Result<B, seqmamba_kernels::KernelError>,
    anchor_train: bool,
    quick: bool,
    repeats: usize,
) -> Result<Vec<bench::Measurement>> {
    let scale = if quick { 8 } else { 1 };
    let small = MambaConfig::new(128, 4, 16);
    let mut results = vec![
        bench::train(
            backend()?,
            small.clone(),
            Shape {
                batch: 8,
                len: 512 / scale,
            },
            repeats,
        )?,
        bench::decode(backend()?, small, 50 * repeats)?,
    ];
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
    if anchor_train {
        results.push(bench::train(backend()?, anchor.clone(), shape, repeats)?);
    }
    results.push(bench::decode(backend()?, anchor, 5 * repeats)?);
    let big = if quick {
        MambaConfig::new(256, 4, 50277)
    } else {
        MambaConfig::new(768, 24, 50277)
    };
    results.push(bench::decode(backend()?, big, 5 * repeats)?);
    Ok(results)
}
