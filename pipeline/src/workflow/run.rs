//! The run folder: resolved workflow, manifest, training log, checkpoints (each written
//! atomically), the training loop shared by the tasks, and resume from the last checkpoint.
//!
//! Resume is exact because nothing random is carried between steps: a step's batch is a
//! function of `(seed, fold, step)` and the checkpoint holds the parameters, both AdamW
//! moments and the step count, so a resumed run computes bit for bit what an uninterrupted
//! one would have.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use indicatif::{ProgressBar, ProgressStyle};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use seqmamba_kernels::cuda::{Cuda, GemmPrecision};
use seqmamba_kernels::{Backend, Cpu};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::data::{self, HostBatch, Loaded};
use super::schema::{Task, Workflow};
use super::{WorkflowError, classify, generate, io_error, pretrain};
use crate::ModelError;
use crate::checkpoint::{Checkpoint, Metadata};
use crate::fsutil::write_atomic;
use crate::model::{Activations, Head, Model, ParamTable, Shape};
use crate::parallel::{DataParallel, HostBatch as GlobalBatch, ParallelConfig};
use crate::train::{OptimizerState, StepStats, Trainer};

/// Renders the report of a finished run folder (the binary passes the report module's
/// `render`); errors are shown as text.
pub type Renderer = fn(&Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// How a run talks to the person at the terminal, and what it does after the raw records.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// No progress bars or notices.
    pub quiet: bool,
    /// A line per checkpoint and per stage.
    pub verbose: bool,
    /// Replace an existing run folder instead of refusing.
    pub overwrite: bool,
    /// Called on the run folder at the end when `outputs.report` is set (timed as the
    /// stage `report`).
    pub render: Option<Renderer>,
}

/// What a finished run reports (`--json` prints it).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunSummary {
    pub name: String,
    pub task: String,
    pub run_dir: PathBuf,
    /// Optimiser steps of the run (all folds).
    pub steps: u64,
    /// Key results: `accuracy`, `bits_per_token`, `markov-k`, ...
    pub metrics: BTreeMap<String, f64>,
    pub seconds: f64,
    /// The step this process resumed from (`None` for a fresh run).
    pub resumed_from: Option<u64>,
    pub notes: Vec<String>,
}

/// One timed stage of the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub name: String,
    pub seconds: f64,
}

/// One input file of the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub seed: u64,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// What the backend says it is, e.g. `cuda (NVIDIA H200, sm_90)`.
    #[serde(default)]
    pub device_name: String,
    pub threads: usize,
    pub program_version: String,
    pub git_commit: Option<String>,
    pub started: String,
    pub finished: Option<String>,
    pub stages: Vec<Stage>,
    pub inputs: Vec<InputFile>,
    pub world_size: usize,
    pub task: String,
    /// Steps a resumed run started from, in order.
    #[serde(default)]
    pub resumed_from: Vec<u64>,
    /// Facts a reader must know next to the numbers (e.g. k-fold within a test split).
    #[serde(default)]
    pub notes: Vec<String>,
}

const TRAIN_LOG_HEADER: &str = "step,fold,loss,grad_norm,lr,tokens,seconds,val_loss";
const TRAINER_FILE: &str = "trainer.safetensors";

/// Where a resumed run picks up: fold, step and the checkpoint folder.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ResumePoint {
    pub fold: usize,
    pub step: u64,
    pub dir: PathBuf,
    /// `seconds` of the last kept training-log row.
    pub seconds: f64,
}

/// The state of a run in progress on backend `B`.
pub(crate) struct RunContext<'a, B: Backend> {
    /// Every model of the run lives here (clones share one device).
    pub backend: B,
    /// Data-parallel training opens its own ranks; evaluation uses `backend`.
    pub device: Device,
    pub dir: PathBuf,
    pub workflow: &'a Workflow,
    pub options: &'a RunOptions,
    pub manifest: Manifest,
    /// Training-log rows (without header).
    pub train_log: Vec<String>,
    pub resume: Option<ResumePoint>,
    pub steps: u64,
    pub metrics: BTreeMap<String, f64>,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Where a run computes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// One CUDA device by ordinal.
    Cuda(usize),
    /// Data-parallel training over these CUDA devices through NCCL (a world of one GPU
    /// included); evaluation runs on the first. Empty until `cuda:all` is resolved.
    DataParallel(Vec<usize>),
}

impl Device {
    /// Parses a workflow's `device`: `cpu`, `cuda` (device 0), `cuda:N`, `cuda:all` or a
    /// list `cuda:0,1` (data-parallel; `cuda:0,` is a world of one GPU), or `auto` (`None`: the first CUDA device when one can
    /// be opened, else the CPU).
    ///
    /// ```
    /// use seqmamba::workflow::run::Device;
    /// assert_eq!(Device::parse("cuda:1").unwrap(), Some(Device::Cuda(1)));
    /// assert_eq!(Device::parse("cuda:0,2").unwrap(), Some(Device::DataParallel(vec![0, 2])));
    /// assert_eq!(Device::parse("cuda:3,").unwrap(), Some(Device::DataParallel(vec![3])));
    /// assert_eq!(Device::DataParallel(vec![3]).name(), "cuda:3,");
    /// assert_eq!(Device::parse("auto").unwrap(), None);
    /// assert!(Device::parse("tpu").is_err());
    /// ```
    pub fn parse(device: &str) -> Result<Option<Device>, WorkflowError> {
        let bad = || {
            WorkflowError::Device(format!(
                "unknown device {device:?}: use \"auto\", \"cpu\", \"cuda\", \"cuda:N\", \
                 \"cuda:all\" or \"cuda:N,M,..\""
            ))
        };
        match device {
            "auto" => Ok(None),
            "cpu" => Ok(Some(Device::Cpu)),
            "cuda" => Ok(Some(Device::Cuda(0))),
            "cuda:all" => Ok(Some(Device::DataParallel(Vec::new()))),
            d => {
                let list = d.strip_prefix("cuda:").ok_or_else(bad)?;
                // A trailing comma makes a list of one: a data-parallel world of one GPU.
                let ordinals = list
                    .strip_suffix(',')
                    .unwrap_or(list)
                    .split(',')
                    .map(|n| n.trim().parse::<usize>().map_err(|_| bad()))
                    .collect::<Result<Vec<_>, _>>()?;
                let repeated = (1..ordinals.len()).any(|i| ordinals[..i].contains(&ordinals[i]));
                if repeated {
                    Err(bad())
                } else if list.contains(',') {
                    Ok(Some(Device::DataParallel(ordinals)))
                } else {
                    Ok(Some(Device::Cuda(ordinals[0])))
                }
            }
        }
    }

    /// The name the manifest records, which [`Device::parse`] reads back: `cpu`, `cuda:N`,
    /// or the data-parallel list `cuda:N,M` (`cuda:N,` for one GPU).
    pub fn name(&self) -> String {
        match self {
            Device::Cpu => "cpu".into(),
            Device::Cuda(n) => format!("cuda:{n}"),
            Device::DataParallel(ordinals) => {
                let list: Vec<String> = ordinals.iter().map(usize::to_string).collect();
                let comma = if list.len() == 1 { "," } else { "" };
                format!("cuda:{}{comma}", list.join(","))
            }
        }
    }

    /// Ranks that train: the GPUs of a data-parallel run, else 1.
    pub fn world_size(&self) -> usize {
        match self {
            Device::DataParallel(ordinals) => ordinals.len(),
            _ => 1,
        }
    }
}

/// SHA-256 (hex) and size of a file, read in blocks.
pub fn sha256_file(path: &Path) -> Result<(String, u64), WorkflowError> {
    let mut file = std::fs::File::open(path).map_err(io_error(path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(io_error(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((hex, bytes))
}

/// Runs `workflow` into its run folder (`outputs.dir`, default `runs/<name>`).
pub fn run(workflow: &Workflow, options: &RunOptions) -> Result<RunSummary, WorkflowError> {
    let dir = workflow.run_dir();
    if dir.join("manifest.json").exists() || dir.join("workflow.toml").exists() {
        if !options.overwrite {
            return Err(WorkflowError::RunFolder {
                path: dir,
                message: "already holds a run: continue it with `seqmamba run --resume DIR`, \
                          remove it, or choose another folder (--set outputs.dir=...)"
                    .into(),
            });
        }
        std::fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
    }
    std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    write_atomic(&dir.join("workflow.toml"), workflow.to_toml().as_bytes())?;
    execute(workflow, options, dir, None)
}

/// Continues the run in `dir` from its last checkpoint (or from the start when it has
/// none); it ends where an uninterrupted run ends.
pub fn resume(dir: &Path, options: &RunOptions) -> Result<RunSummary, WorkflowError> {
    let workflow = Workflow::load(&dir.join("workflow.toml"), &[])?;
    let point = latest_checkpoint(dir)?;
    execute(&workflow, options, dir.to_path_buf(), point)
}

/// Opens the workflow's device and runs on it.
fn execute(
    workflow: &Workflow,
    options: &RunOptions,
    dir: PathBuf,
    resume: Option<ResumePoint>,
) -> Result<RunSummary, WorkflowError> {
    let precision = workflow.gemm_precision()?;
    let open = |ordinal: usize| {
        let cuda = Cuda::new(ordinal).map_err(|e| {
            WorkflowError::Device(format!(
                "cuda:{ordinal}: {e}; run on the CPU with --set device=cpu"
            ))
        })?;
        cuda.set_gemm_precision(precision)?;
        Ok::<_, WorkflowError>(cuda)
    };
    let cpu_precision = || {
        if precision == GemmPrecision::F32 {
            Ok(())
        } else {
            Err(WorkflowError::Invalid(format!(
                "precision = \"{precision}\" needs a GPU; the CPU runs f32 (--set precision=f32)"
            )))
        }
    };
    match Device::parse(&workflow.device)? {
        Some(Device::Cpu) => {
            cpu_precision()?;
            execute_on(Cpu, Device::Cpu, workflow, options, dir, resume)
        }
        Some(Device::Cuda(n)) => {
            execute_on(open(n)?, Device::Cuda(n), workflow, options, dir, resume)
        }
        Some(Device::DataParallel(mut ordinals)) => {
            if ordinals.is_empty() {
                ordinals = (0..seqmamba_kernels::cuda::device_count()).collect();
            }
            let first = *ordinals.first().ok_or_else(|| {
                WorkflowError::Device(
                    "cuda:all: no CUDA device found; run on the CPU with --set device=cpu".into(),
                )
            })?;
            let device = Device::DataParallel(ordinals);
            execute_on(open(first)?, device, workflow, options, dir, resume)
        }
        None => match open(0) {
            Ok(cuda) => execute_on(cuda, Device::Cuda(0), workflow, options, dir, resume),
            Err(e) => {
                cpu_precision()?;
                if !options.quiet {
                    eprintln!("note: device = \"auto\" runs on the CPU ({e})");
                }
                execute_on(Cpu, Device::Cpu, workflow, options, dir, resume)
            }
        },
    }
}

fn execute_on<B: Backend>(
    backend: B,
    device: Device,
    workflow: &Workflow,
    options: &RunOptions,
    dir: PathBuf,
    resume: Option<ResumePoint>,
) -> Result<RunSummary, WorkflowError> {
    let clock = Instant::now();
    let previous: Option<Manifest> = std::fs::read(dir.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let mut manifest = Manifest {
        name: workflow.name.clone(),
        seed: workflow.seed,
        device: device.name(),
        device_name: backend.name(),
        world_size: device.world_size(),
        threads: rayon::current_num_threads(),
        program_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: option_env!("SEQMAMBA_GIT_COMMIT").map(String::from),
        started: now_rfc3339(),
        finished: None,
        stages: Vec::new(),
        inputs: Vec::new(),
        task: workflow.task.name().into(),
        resumed_from: Vec::new(),
        notes: Vec::new(),
    };
    let mut train_log = Vec::new();
    if let (Some(point), Some(previous)) = (&resume, previous) {
        manifest.started = previous.started;
        manifest.resumed_from = previous.resumed_from;
        manifest.resumed_from.push(point.step);
    }
    let mut resume = resume;
    if let Some(point) = &mut resume {
        let text = std::fs::read_to_string(dir.join("train_log.csv")).unwrap_or_default();
        train_log = text
            .lines()
            .skip(1)
            .filter(|row| {
                let mut f = row.split(',');
                let step: u64 = f.next().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
                let fold: usize = f.next().and_then(|s| s.parse().ok()).unwrap_or(usize::MAX);
                fold < point.fold || (fold == point.fold && step <= point.step)
            })
            .map(String::from)
            .collect();
        point.seconds = train_log
            .last()
            .and_then(|r| r.split(',').nth(6))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0);
    }
    let mut ctx = RunContext {
        backend,
        device,
        dir: dir.clone(),
        workflow,
        options,
        manifest,
        train_log,
        resume: resume.clone(),
        steps: 0,
        metrics: BTreeMap::new(),
    };
    ctx.write_manifest()?;
    if let Some(checkpoint) = &workflow.model.checkpoint {
        let files: Vec<PathBuf> = [
            "config.json",
            "model.safetensors",
            "head.safetensors",
            "seqmamba.json",
        ]
        .iter()
        .map(|f| checkpoint.join(f))
        .filter(|p| p.is_file())
        .collect();
        ctx.record_inputs(&files)?;
    }
    match workflow.task {
        Task::Classify => classify::run(&mut ctx)?,
        Task::Pretrain => pretrain::run(&mut ctx)?,
        Task::Generate => generate::run_generate(&mut ctx)?,
        Task::Score => generate::run_score(&mut ctx)?,
        Task::Predict => classify::run_predict(&mut ctx)?,
    }
    ctx.manifest.finished = Some(now_rfc3339());
    ctx.write_manifest()?;
    // The report reads the finished raw records; its own time is added afterwards.
    if let Some(render) = options.render.filter(|_| workflow.outputs.report) {
        ctx.stage("report", |c| {
            render(&c.dir).map_err(|e| WorkflowError::RunFolder {
                path: c.dir.clone(),
                message: format!("rendering the report: {e}"),
            })
        })?;
    }
    Ok(RunSummary {
        name: workflow.name.clone(),
        task: workflow.task.name().into(),
        run_dir: dir,
        steps: ctx.steps,
        metrics: ctx.metrics,
        seconds: clock.elapsed().as_secs_f64(),
        resumed_from: resume.map(|p| p.step),
        notes: ctx.manifest.notes.clone(),
    })
}

/// The resumable checkpoint with the largest `(fold, step)`, if any.
fn latest_checkpoint(dir: &Path) -> Result<Option<ResumePoint>, WorkflowError> {
    let root = dir.join("checkpoints");
    let mut best: Option<ResumePoint> = None;
    let mut candidates = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let path = entry.path();
            candidates.push(path.clone());
            if let Ok(inner) = std::fs::read_dir(&path) {
                candidates.extend(inner.flatten().map(|e| e.path()));
            }
        }
    }
    for path in candidates {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.starts_with("step-") || !path.join(TRAINER_FILE).exists() {
            continue;
        }
        let (fold, step, _, _) = read_trainer_state(&path)?;
        if best
            .as_ref()
            .is_none_or(|b| (fold, step) > (b.fold, b.step))
        {
            best = Some(ResumePoint {
                fold,
                step,
                dir: path,
                seconds: 0.0,
            });
        }
    }
    Ok(best)
}

/// Writes m and v with the step and fold into `trainer.safetensors`.
fn write_trainer_state(
    path: &Path,
    fold: usize,
    step: u64,
    m: &[f32],
    v: &[f32],
) -> Result<(), WorkflowError> {
    let bytes = |x: &[f32]| x.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    let (mb, vb) = (bytes(m), bytes(v));
    fn view(b: &[u8]) -> TensorView<'_> {
        TensorView::new(Dtype::F32, vec![b.len() / 4], b).expect("sizes match")
    }
    let meta = HashMap::from([
        ("fold".to_string(), fold.to_string()),
        ("step".to_string(), step.to_string()),
    ]);
    let data =
        safetensors::serialize([("m", view(&mb)), ("v", view(&vb))], Some(meta)).map_err(|e| {
            WorkflowError::RunFolder {
                path: path.to_path_buf(),
                message: e.to_string(),
            }
        })?;
    write_atomic(&path.join(TRAINER_FILE), &data)?;
    Ok(())
}

/// Reads `(fold, step, m, v)` of a checkpoint folder.
fn read_trainer_state(dir: &Path) -> Result<(usize, u64, Vec<f32>, Vec<f32>), WorkflowError> {
    let path = dir.join(TRAINER_FILE);
    let bad = |message: String| WorkflowError::RunFolder {
        path: path.clone(),
        message,
    };
    let bytes = std::fs::read(&path).map_err(io_error(&path))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let field = |k: &str| {
        meta.get(k)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| bad(format!("metadata has no `{k}`")))
    };
    let (fold, step) = (field("fold")? as usize, field("step")?);
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let read = |name: &str| -> Result<Vec<f32>, WorkflowError> {
        let t = tensors.tensor(name).map_err(|e| bad(e.to_string()))?;
        if t.dtype() != Dtype::F32 {
            return Err(bad(format!("`{name}` is not f32")));
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    Ok((fold, step, read("m")?, read("v")?))
}

impl<B: Backend> RunContext<'_, B> {
    /// Runs `f` as a named stage, timing it into the manifest.
    pub fn stage<T>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Self) -> Result<T, WorkflowError>,
    ) -> Result<T, WorkflowError> {
        let start = Instant::now();
        let out = f(self)?;
        let seconds = start.elapsed().as_secs_f64();
        if self.options.verbose {
            eprintln!("stage {name}: {seconds:.2} s");
        }
        self.manifest.stages.push(Stage {
            name: name.into(),
            seconds,
        });
        self.write_manifest()?;
        Ok(out)
    }

    /// Loads the data section and hashes the files read into the manifest, with a note of
    /// the bad or empty records skipped.
    pub fn load_data(&mut self) -> Result<Loaded, WorkflowError> {
        let w = self.workflow;
        let loaded = self.stage("load data", |_| {
            data::load(&w.data, w.seed, w.training.seq_len)
        })?;
        self.stage("hash inputs", |c| c.record_inputs(&loaded.inputs))?;
        if loaded.skipped > 0 {
            self.note(format!(
                "{} bad or empty records were skipped",
                loaded.skipped
            ));
        }
        Ok(loaded)
    }

    /// Prints a notice unless quiet and records it in the manifest.
    pub fn note(&mut self, text: String) {
        if !self.options.quiet {
            eprintln!("note: {text}");
        }
        if !self.manifest.notes.contains(&text) {
            self.manifest.notes.push(text);
        }
    }

    pub fn write_manifest(&self) -> Result<(), WorkflowError> {
        let text = serde_json::to_string_pretty(&self.manifest).expect("manifest serialises");
        write_atomic(&self.dir.join("manifest.json"), text.as_bytes())?;
        Ok(())
    }

    /// Hashes the input files into the manifest.
    pub fn record_inputs(&mut self, paths: &[PathBuf]) -> Result<(), WorkflowError> {
        for path in paths {
            let (sha256, bytes) = sha256_file(path)?;
            self.manifest.inputs.push(InputFile {
                path: path.display().to_string(),
                bytes,
                sha256,
            });
        }
        self.write_manifest()
    }

    /// Writes a file of the run folder atomically.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), WorkflowError> {
        let path = self.dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_error(parent))?;
        }
        write_atomic(&path, bytes)?;
        Ok(())
    }

    fn write_train_log(&self) -> Result<(), WorkflowError> {
        let mut text = String::from(TRAIN_LOG_HEADER);
        text.push('\n');
        for row in &self.train_log {
            text.push_str(row);
            text.push('\n');
        }
        self.write("train_log.csv", text.as_bytes())
    }

    /// `checkpoints/` for a single model, `checkpoints/fold-<f>/` under k-fold.
    pub fn checkpoint_root(&self, fold: usize, folds: usize) -> PathBuf {
        let root = self.dir.join("checkpoints");
        if folds > 1 {
            root.join(format!("fold-{fold}"))
        } else {
            root
        }
    }

    /// Whether this process skips fold `fold` because a resumed run finished it before.
    pub fn fold_done(&self, fold: usize) -> bool {
        self.resume.as_ref().is_some_and(|p| fold < p.fold)
    }

    /// Trains `model` for `total_steps` on the batches `make(step)` gives, logging every
    /// step, checkpointing every `training.checkpoint_every` steps and at the end (a
    /// resumable `step-<n>` and `final`). Resumes from the run's checkpoint of this fold.
    /// At each checkpoint the mean loss over `batches.validation` goes into the log's
    /// `val_loss`. A data-parallel device trains on its ranks and leaves the result in `model`.
    pub fn fit(
        &mut self,
        model: &mut Model<B>,
        metadata: &Metadata,
        shape: Shape,
        total_steps: u64,
        (fold, folds): (usize, usize),
        batches: Batches<impl Fn(u64) -> HostBatch>,
    ) -> Result<(), WorkflowError> {
        let training = &self.workflow.training;
        let optimizer = training.optimizer(total_steps);
        let mut engine = match &self.device {
            Device::DataParallel(ordinals) => {
                let world = ordinals.len();
                if !shape.batch.is_multiple_of(world) {
                    return Err(WorkflowError::Invalid(format!(
                        "training.batch_size ({}) must be a multiple of the number of GPUs ({world})",
                        shape.batch
                    )));
                }
                let layout = ParallelConfig {
                    devices: ordinals.clone(),
                    micro_batch: Shape {
                        batch: shape.batch / world,
                        len: shape.len,
                    },
                    accumulation: 1,
                    precision: self.workflow.gemm_precision()?,
                };
                let params = model.backend.download(model.backend.all(&model.params))?;
                let head = model.head.clone();
                let config = model.config.clone();
                Engine::Parallel(DataParallel::new(layout, config, head, &params, optimizer)?)
            }
            _ => Engine::Single(Trainer::new(model, shape, optimizer)?),
        };
        let mut seconds_offset = 0.0;
        let mut step = 0;
        let root = self.checkpoint_root(fold, folds);
        if let Some(point) = self.resume.as_ref().filter(|p| p.fold == fold) {
            let checkpoint = Checkpoint::load(&point.dir)?;
            let (_, saved_step, m, v) = read_trainer_state(&point.dir)?;
            let state = OptimizerState {
                params: checkpoint.params,
                m,
                v,
                step: saved_step,
            };
            engine
                .restore(model, &state)
                .map_err(|e| WorkflowError::RunFolder {
                    path: point.dir.clone(),
                    message: format!("checkpoint does not match the workflow's model: {e}"),
                })?;
            step = saved_step;
            seconds_offset = point.seconds;
        }
        let mut validation_acts = if batches.validation.is_empty() {
            None
        } else {
            Some(model.activations(shape, false)?)
        };
        let every = training.checkpoint_every;
        let bar = self.progress(total_steps, &format!("train{}", fold_suffix(fold, folds)));
        bar.set_position(step);
        let start = Instant::now();
        let mut tokens_done = 0usize;
        while step < total_steps {
            let host = (batches.train)(step);
            let stats = engine.step(model, shape, &host)?;
            step += 1;
            tokens_done += host.tokens;
            let seconds = seconds_offset + start.elapsed().as_secs_f64();
            let last = step == total_steps;
            let checkpoint = last || (every > 0 && step % every == 0);
            let state = checkpoint.then(|| engine.state(model)).transpose()?;
            if let Some(state) = state
                .as_ref()
                .filter(|_| matches!(engine, Engine::Parallel(_)))
            {
                // The ranks hold the trained replicas; evaluation uses `model`.
                model.params = model.backend.upload(&state.params)?;
            }
            let mut val_loss = String::new();
            if let (Some(_), Some(acts)) = (&state, &mut validation_acts) {
                val_loss = mean_loss(model, shape, &batches.validation, acts)?.to_string();
            }
            self.train_log.push(format!(
                "{step},{fold},{},{},{},{},{seconds:.3},{val_loss}",
                stats.loss, stats.grad_norm, stats.lr, host.tokens
            ));
            bar.set_position(step);
            bar.set_message(format!(
                "loss {:.4} · {:.0} tok/s",
                stats.loss,
                tokens_done as f64 / start.elapsed().as_secs_f64().max(1e-9)
            ));
            if let Some(state) = state {
                self.save_checkpoint(model, &state, metadata, &root, fold)?;
                if self.options.verbose {
                    bar.suspend(|| eprintln!("checkpoint step {step} loss {:.4}", stats.loss));
                }
            }
        }
        bar.finish_and_clear();
        self.steps += total_steps;
        let params = model.backend.download(model.backend.all(&model.params))?;
        Checkpoint {
            config: model.config.clone(),
            metadata: metadata.clone(),
            params,
        }
        .save(&root.join("final"))?;
        Ok(())
    }

    /// Writes `step-<n>` (model + optimizer state) through a temporary folder and a rename,
    /// then removes older step folders of the fold; writes the training log.
    fn save_checkpoint(
        &self,
        model: &Model<B>,
        state: &OptimizerState,
        metadata: &Metadata,
        root: &Path,
        fold: usize,
    ) -> Result<(), WorkflowError> {
        self.write_train_log()?;
        let name = format!("step-{}", state.step);
        let temp = root.join(format!(".{name}.tmp"));
        let target = root.join(&name);
        if temp.exists() {
            std::fs::remove_dir_all(&temp).map_err(io_error(&temp))?;
        }
        Checkpoint {
            config: model.config.clone(),
            metadata: metadata.clone(),
            params: state.params.clone(),
        }
        .save(&temp)?;
        write_trainer_state(&temp, fold, state.step, &state.m, &state.v)?;
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(io_error(&target))?;
        }
        std::fs::rename(&temp, &target).map_err(io_error(&target))?;
        for entry in std::fs::read_dir(root).map_err(io_error(root))?.flatten() {
            let n = entry.file_name().to_string_lossy().into_owned();
            if n.starts_with("step-") && n != name {
                std::fs::remove_dir_all(entry.path()).map_err(io_error(entry.path()))?;
            }
        }
        Ok(())
    }

    /// A model with `head` over `vocab` tokens: freshly initialised with `init_seed`, or
    /// from `model.checkpoint` (its backbone under a new head when the heads differ).
    pub fn model(
        &self,
        head: Head,
        vocab: usize,
        init_seed: u64,
        labels: &[String],
    ) -> Result<(Model<B>, Metadata), WorkflowError> {
        let spec = &self.workflow.model;
        let metadata = Metadata {
            head: head.clone(),
            labels: labels.to_vec(),
            input: Some(self.workflow.input_spec()),
            extra: serde_json::Map::from_iter([(
                "workflow".to_string(),
                serde_json::Value::String(self.workflow.name.clone()),
            )]),
        };
        let Some(path) = &spec.checkpoint else {
            let config = spec.config(vocab)?;
            let model = Model::initialised(self.backend.clone(), config, head, init_seed)?;
            return Ok((model, metadata));
        };
        let checkpoint = Checkpoint::load(path)?;
        if checkpoint.config.vocab_size != vocab {
            return Err(WorkflowError::Invalid(format!(
                "{}: the checkpoint's vocabulary has {} tokens, the data {vocab}",
                path.display(),
                checkpoint.config.vocab_size
            )));
        }
        let config = checkpoint.config.clone();
        if checkpoint.metadata.head == head {
            return Ok((
                Model::new(self.backend.clone(), config, head, &checkpoint.params)?,
                metadata,
            ));
        }
        // A new head: initialise it, copy every backbone tensor the checkpoint has.
        let table = ParamTable::new(&config, &head);
        let mut params = table.initialise(&config, init_seed);
        let source = ParamTable::new(&config, &checkpoint.metadata.head);
        for entry in &table.entries {
            if let Some(from) = source.entry(&entry.name).filter(|e| e.shape == entry.shape) {
                params[entry.range.clone()].copy_from_slice(&checkpoint.params[from.range.clone()]);
            }
        }
        Ok((
            Model::new(self.backend.clone(), config, head, &params)?,
            metadata,
        ))
    }

    /// A progress bar with ETA, hidden when quiet or when stderr is not a terminal.
    pub fn progress(&self, len: u64, prefix: &str) -> ProgressBar {
        if self.options.quiet || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg} (ETA {eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(prefix.to_string());
        bar
    }
}

/// The batches [`RunContext::fit`] trains on: `train(step)` for each step, and fixed
/// `validation` batches (possibly none) for the log's `val_loss`.
pub(crate) struct Batches<F: Fn(u64) -> HostBatch> {
    pub train: F,
    pub validation: Vec<HostBatch>,
}

/// Mean loss of `model` over the counted targets of `batches` (no gradients).
fn mean_loss<B: Backend>(
    model: &Model<B>,
    shape: Shape,
    batches: &[HostBatch],
    acts: &mut Activations<B>,
) -> Result<f64, ModelError> {
    let be = &model.backend;
    let (mut sum, mut count) = (0.0f64, 0usize);
    for host in batches {
        let (batch, targets) = host.upload(be, shape)?;
        model.forward(&batch, acts, None)?;
        sum += model
            .loss(acts, &targets, None)?
            .iter()
            .map(|&l| f64::from(l))
            .sum::<f64>();
        count += host.count;
    }
    Ok(sum / count.max(1) as f64)
}

/// What takes the optimiser steps of [`RunContext::fit`]: a trainer beside the model on its
/// backend, or data-parallel ranks (which hold their own replicas until the end).
enum Engine<B: Backend> {
    Single(Trainer<B>),
    Parallel(DataParallel),
}

impl<B: Backend> Engine<B> {
    fn step(
        &mut self,
        model: &mut Model<B>,
        shape: Shape,
        host: &HostBatch,
    ) -> Result<StepStats, ModelError> {
        match self {
            Engine::Single(trainer) => {
                let (batch, targets) = host.upload(&model.backend, shape)?;
                trainer.step(model, &batch, &targets, host.count)
            }
            Engine::Parallel(dp) => dp.step(&GlobalBatch {
                shape,
                ids: &host.ids,
                lengths: host.lengths.as_deref(),
                resets: None,
                targets: &host.targets,
            }),
        }
    }

    fn state(&self, model: &Model<B>) -> Result<OptimizerState, ModelError> {
        match self {
            Engine::Single(trainer) => trainer.state(model),
            Engine::Parallel(dp) => dp.state(),
        }
    }

    fn restore(&mut self, model: &mut Model<B>, state: &OptimizerState) -> Result<(), ModelError> {
        match self {
            Engine::Single(trainer) => trainer.restore(model, state),
            Engine::Parallel(dp) => {
                dp.restore(state)?;
                model.params = model.backend.upload(&state.params)?;
                Ok(())
            }
        }
    }
}

fn fold_suffix(fold: usize, folds: usize) -> String {
    if folds > 1 {
        format!(" fold {fold}")
    } else {
        String::new()
    }
}

/// Quotes a CSV field when it holds a comma, quote or line break.
pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trainer_state_round_trips_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let m = vec![1.5f32, -0.0, f32::MIN_POSITIVE, 3.25e-9];
        let v = vec![0.1f32, 0.2, 0.3, 0.4];
        write_trainer_state(dir.path(), 2, 17, &m, &v).unwrap();
        let (fold, step, m2, v2) = read_trainer_state(dir.path()).unwrap();
        assert_eq!((fold, step), (2, 17));
        assert!(m.iter().zip(&m2).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert_eq!(v, v2);
    }

    #[test]
    fn devices_parse_or_say_what_to_use() {
        assert_eq!(Device::parse("cpu").unwrap(), Some(Device::Cpu));
        assert_eq!(Device::parse("cuda").unwrap(), Some(Device::Cuda(0)));
        assert_eq!(Device::Cuda(3).name(), "cuda:3");
        assert_eq!(
            Device::parse("cuda:all").unwrap(),
            Some(Device::DataParallel(vec![]))
        );
        for list in [vec![1], vec![0, 1], vec![3, 0, 2]] {
            let device = Device::DataParallel(list.clone());
            assert_eq!(Device::parse(&device.name()).unwrap(), Some(device));
            assert_eq!(Device::DataParallel(list.clone()).world_size(), list.len());
        }
        for bad in [
            "tpu",
            "cuda:",
            "cuda:x",
            "cuda:-1",
            "CPU",
            "cuda:1,1",
            "cuda:,",
            "cuda:0,,1",
        ] {
            let e = Device::parse(bad).unwrap_err().to_string();
            assert!(e.contains("use \"auto\", \"cpu\""), "{bad}: {e}");
        }
    }

    #[test]
    fn sha256_of_a_known_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        let (hex, bytes) = sha256_file(&path).unwrap();
        assert_eq!(bytes, 3);
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("a.wav"), "a.wav");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
    }
}
