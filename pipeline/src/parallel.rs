//! Data-parallel training over the GPUs of one host through NCCL.
//!
//! One thread per GPU, each owning its own [`Cuda`] device, a replica of the model (every
//! replica starts from the same parameters) and a [`Trainer`]. A step hands each rank a
//! contiguous block of the global batch's rows; each rank accumulates the gradients of its
//! micro-batches (scaled by the global target count), one NCCL all-reduce sums the flat
//! gradient buffer over the ranks, and every rank applies the identical clip + AdamW
//! update, so the replicas stay equal. A world of one GPU runs the same code (a
//! communicator of size 1). Results depend on the number of GPUs only through the order
//! of the gradient sum.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use seqmamba_kernels::Backend;
use seqmamba_kernels::cuda::{Communicator, CommunicatorId, Cuda, GemmPrecision};

use crate::ModelError;
use crate::model::{Batch, Head, IGNORE_INDEX, MambaConfig, Model, Shape};
use crate::train::{OptimizerConfig, OptimizerState, StepStats, Trainer};

/// One global batch on the host: `ids` (and `resets`) hold `shape.tokens()` values,
/// `lengths` one per row, `targets` one per token (language model) or per row (classifier).
#[derive(Clone, Copy, Debug)]
pub struct HostBatch<'a> {
    pub shape: Shape,
    pub ids: &'a [u32],
    pub lengths: Option<&'a [u32]>,
    pub resets: Option<&'a [u32]>,
    pub targets: &'a [u32],
}

/// How a data-parallel run is laid out.
#[derive(Clone, Debug, PartialEq)]
pub struct ParallelConfig {
    /// CUDA device ordinals, one rank each, in rank order.
    pub devices: Vec<usize>,
    /// Shape of one micro-batch on one rank.
    pub micro_batch: Shape,
    /// Micro-batches each rank accumulates per step.
    pub accumulation: usize,
    /// How every rank's GEMMs multiply.
    pub precision: GemmPrecision,
}

impl ParallelConfig {
    /// Ranks in the run.
    pub fn world_size(&self) -> usize {
        self.devices.len()
    }

    /// Shape of the global batch of one step: every rank's micro-batches, stacked by rank.
    ///
    /// ```
    /// use seqmamba::model::Shape;
    /// use seqmamba::parallel::ParallelConfig;
    /// let c = ParallelConfig {
    ///     devices: vec![0, 1],
    ///     micro_batch: Shape { batch: 4, len: 128 },
    ///     accumulation: 2,
    ///     precision: Default::default(),
    /// };
    /// assert_eq!(c.global_batch(), Shape { batch: 16, len: 128 });
    /// ```
    pub fn global_batch(&self) -> Shape {
        Shape {
            batch: self.micro_batch.batch * self.accumulation * self.world_size(),
            len: self.micro_batch.len,
        }
    }
}

/// What one rank is given for a step: its rows of the global batch.
struct Shard {
    ids: Vec<u32>,
    lengths: Option<Vec<u32>>,
    resets: Option<Vec<u32>>,
    targets: Vec<u32>,
    total_count: usize,
}

enum Command {
    /// Join the NCCL communicator (once every rank has opened its device).
    Join,
    Step(Shard),
    Params,
    State,
    Restore(OptimizerState),
}

enum Reply {
    Ready,
    /// This rank's summed loss and the stats of its update.
    Step(f64, StepStats),
    Params(Vec<f32>),
    State(OptimizerState),
}

struct Rank {
    commands: Sender<Command>,
    replies: Receiver<Result<Reply, ModelError>>,
    thread: Option<JoinHandle<()>>,
}

/// Data-parallel trainer: one model replica and trainer per GPU, gradients summed by NCCL.
///
/// ```no_run
/// use seqmamba::model::{Head, MambaConfig, ParamTable, Shape};
/// use seqmamba::parallel::{DataParallel, HostBatch, ParallelConfig};
/// use seqmamba::train::OptimizerConfig;
/// let config = MambaConfig::new(64, 2, 16);
/// let params = ParamTable::new(&config, &Head::LanguageModel).initialise(&config, 1);
/// let layout = ParallelConfig {
///     devices: (0..seqmamba_kernels::cuda::device_count()).collect(),
///     micro_batch: Shape { batch: 2, len: 64 },
///     accumulation: 1,
///     precision: Default::default(),
/// };
/// let global = layout.global_batch();
/// let mut dp = DataParallel::new(layout, config, Head::LanguageModel, &params, OptimizerConfig::default())?;
/// let ids = vec![1u32; global.tokens()];
/// let targets = vec![1u32; global.tokens()];
/// let stats = dp.step(&HostBatch { shape: global, ids: &ids, lengths: None, resets: None, targets: &targets })?;
/// assert!(stats.loss.is_finite());
/// # Ok::<(), seqmamba::ModelError>(())
/// ```
pub struct DataParallel {
    layout: ParallelConfig,
    head: Head,
    ranks: Vec<Rank>,
}

impl DataParallel {
    /// Starts one thread per device of `layout`, each with a replica of the model holding
    /// `params`, and joins them into one NCCL communicator. Fails (never panics) without
    /// GPUs or NCCL.
    pub fn new(
        layout: ParallelConfig,
        config: MambaConfig,
        head: Head,
        params: &[f32],
        optimizer: OptimizerConfig,
    ) -> Result<Self, ModelError> {
        if layout.devices.is_empty() || layout.accumulation == 0 || layout.micro_batch.batch == 0 {
            return Err(ModelError::Config(format!(
                "a data-parallel run needs at least one device, one micro-batch and one row (got {layout:?})"
            )));
        }
        // A rank that cannot open its device would leave the others waiting in NCCL's
        // join, so check the ordinals first.
        let available = seqmamba_kernels::cuda::device_count();
        if let Some(missing) = layout.devices.iter().find(|&&d| d >= available) {
            return Err(ModelError::Config(format!(
                "CUDA device {missing} does not exist ({available} found)"
            )));
        }
        let id = CommunicatorId::new()?;
        let world_size = layout.world_size();
        let mut ranks = Vec::with_capacity(world_size);
        for (rank, &ordinal) in layout.devices.iter().enumerate() {
            let (commands, command_rx) = channel();
            let (reply_tx, replies) = channel();
            let setup = Setup {
                ordinal,
                rank,
                world_size,
                id,
                precision: layout.precision,
                config: config.clone(),
                head: head.clone(),
                params: params.to_vec(),
                shape: layout.micro_batch,
                optimizer: optimizer.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("seqmamba-rank-{rank}"))
                .spawn(move || run_rank(setup, command_rx, reply_tx))
                .map_err(|e| ModelError::Input(format!("starting rank {rank}'s thread: {e}")))?;
            ranks.push(Rank {
                commands,
                replies,
                thread: Some(thread),
            });
        }
        let dp = Self {
            layout,
            head,
            ranks,
        };
        // Two phases: every rank opens its device and allocates its replica, and only when
        // all have succeeded do they join the communicator (a join waits for every rank, so
        // one that failed to open would leave the others waiting). On an error, dropping
        // `dp` closes the channels and the ranks end.
        let mut failure = None;
        for rank in 0..dp.ranks.len() {
            if let Err(e) = dp.reply(rank) {
                failure.get_or_insert(e);
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        for rank in 0..dp.ranks.len() {
            dp.send(rank, Command::Join)?;
        }
        for rank in 0..dp.ranks.len() {
            dp.reply(rank)?;
        }
        Ok(dp)
    }

    /// The run's layout.
    pub fn layout(&self) -> &ParallelConfig {
        &self.layout
    }

    /// Ranks (GPUs) in the run.
    pub fn world_size(&self) -> usize {
        self.ranks.len()
    }

    /// One optimisation step on the global `batch` (of [`ParallelConfig::global_batch`]'s
    /// shape). The loss is the mean over every counted target of the global batch.
    pub fn step(&mut self, batch: &HostBatch<'_>) -> Result<StepStats, ModelError> {
        let shards = self.split(batch)?;
        let total_count = shards[0].total_count;
        for (rank, shard) in shards.into_iter().enumerate() {
            self.send(rank, Command::Step(shard))?;
        }
        let mut loss_sum = 0.0;
        let mut first = None;
        let mut failure = None;
        // Wait for every rank, even after one fails, so none is left mid-step.
        for rank in 0..self.ranks.len() {
            match self.reply(rank) {
                Ok(Reply::Step(loss, stats)) => {
                    loss_sum += loss;
                    first.get_or_insert(stats);
                }
                Ok(_) => {
                    failure.get_or_insert(out_of_turn(rank));
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let stats = first.ok_or_else(|| stopped(0))?;
        Ok(StepStats {
            loss: loss_sum / total_count as f64,
            ..stats
        })
    }

    /// The parameters held by `rank` (every rank holds the same).
    pub fn params(&self, rank: usize) -> Result<Vec<f32>, ModelError> {
        self.send(rank, Command::Params)?;
        match self.reply(rank)? {
            Reply::Params(params) => Ok(params),
            _ => Err(out_of_turn(rank)),
        }
    }

    /// Rank 0's parameters, moments and step (every rank holds the same).
    pub fn state(&self) -> Result<OptimizerState, ModelError> {
        self.send(0, Command::State)?;
        match self.reply(0)? {
            Reply::State(state) => Ok(state),
            _ => Err(out_of_turn(0)),
        }
    }

    /// Puts `state` on every rank: a resumed run continues from its checkpoint.
    pub fn restore(&self, state: &OptimizerState) -> Result<(), ModelError> {
        for rank in 0..self.ranks.len() {
            self.send(rank, Command::Restore(state.clone()))?;
        }
        for rank in 0..self.ranks.len() {
            match self.reply(rank)? {
                Reply::Ready => {}
                _ => return Err(out_of_turn(rank)),
            }
        }
        Ok(())
    }

    /// Each rank's rows of `batch`, checked against the layout.
    fn split(&self, batch: &HostBatch<'_>) -> Result<Vec<Shard>, ModelError> {
        let global = self.layout.global_batch();
        if batch.shape != global {
            return Err(ModelError::Input(format!(
                "a data-parallel step takes batches of {global:?}, got {:?}",
                batch.shape
            )));
        }
        let tokens = global.tokens();
        let targets_per_row = match self.head {
            Head::LanguageModel => global.len,
            _ => 1,
        };
        let lengths_ok = batch.lengths.is_none_or(|l| l.len() == global.batch);
        let resets_ok = batch.resets.is_none_or(|r| r.len() == tokens);
        if batch.ids.len() != tokens
            || batch.targets.len() != global.batch * targets_per_row
            || !lengths_ok
            || !resets_ok
        {
            return Err(ModelError::Input(format!(
                "a data-parallel batch of {global:?} needs {tokens} ids (got {}), {} targets (got {}), one length per row and one reset per token",
                batch.ids.len(),
                global.batch * targets_per_row,
                batch.targets.len()
            )));
        }
        let total_count = batch.targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
        if total_count == 0 {
            return Err(ModelError::Input("a training batch has no targets".into()));
        }
        let rows = global.batch / self.world_size();
        Ok((0..self.world_size())
            .map(|rank| {
                let r = rank * rows..(rank + 1) * rows;
                let per_token = r.start * global.len..r.end * global.len;
                Shard {
                    ids: batch.ids[per_token.clone()].to_vec(),
                    lengths: batch.lengths.map(|l| l[r.clone()].to_vec()),
                    resets: batch.resets.map(|x| x[per_token].to_vec()),
                    targets: batch.targets[r.start * targets_per_row..r.end * targets_per_row]
                        .to_vec(),
                    total_count,
                }
            })
            .collect())
    }

    fn send(&self, rank: usize, command: Command) -> Result<(), ModelError> {
        self.ranks[rank]
            .commands
            .send(command)
            .map_err(|_| stopped(rank))
    }

    fn reply(&self, rank: usize) -> Result<Reply, ModelError> {
        self.ranks[rank].replies.recv().map_err(|_| stopped(rank))?
    }
}

impl Drop for DataParallel {
    fn drop(&mut self) {
        // Closing the command channels ends each rank's loop.
        let threads: Vec<_> = self
            .ranks
            .drain(..)
            .filter_map(|mut rank| rank.thread.take())
            .collect();
        for thread in threads {
            // A rank that panicked has already reported through its closed channel.
            let _ = thread.join();
        }
    }
}

fn stopped(rank: usize) -> ModelError {
    ModelError::Input(format!("data-parallel rank {rank} stopped"))
}

fn out_of_turn(rank: usize) -> ModelError {
    ModelError::Input(format!("data-parallel rank {rank} answered out of turn"))
}

/// What a rank's thread builds before its first step.
struct Setup {
    ordinal: usize,
    rank: usize,
    world_size: usize,
    id: CommunicatorId,
    precision: GemmPrecision,
    config: MambaConfig,
    head: Head,
    params: Vec<f32>,
    shape: Shape,
    optimizer: OptimizerConfig,
}

/// The device state one rank's thread owns.
struct Replica {
    model: Model<Cuda>,
    trainer: Trainer<Cuda>,
    comm: Communicator,
}

fn run_rank(setup: Setup, commands: Receiver<Command>, replies: Sender<Result<Reply, ModelError>>) {
    let (shape, id, rank, world_size) = (setup.shape, setup.id, setup.rank, setup.world_size);
    let (model, trainer) = match open_replica(setup) {
        Ok(parts) => parts,
        Err(e) => {
            let _ = replies.send(Err(e));
            return;
        }
    };
    if replies.send(Ok(Reply::Ready)).is_err() {
        return;
    }
    if !matches!(commands.recv(), Ok(Command::Join)) {
        return;
    }
    let comm = match Communicator::join(&model.backend, &id, rank, world_size) {
        Ok(comm) => comm,
        Err(e) => {
            let _ = replies.send(Err(e.into()));
            return;
        }
    };
    if replies.send(Ok(Reply::Ready)).is_err() {
        return;
    }
    let mut replica = Replica {
        model,
        trainer,
        comm,
    };
    for command in commands {
        let reply = match command {
            Command::Step(shard) => replica.step(shape, &shard),
            Command::Params => {
                let be = &replica.model.backend;
                be.download(be.all(&replica.model.params))
                    .map(Reply::Params)
                    .map_err(ModelError::from)
            }
            Command::State => replica.trainer.state(&replica.model).map(Reply::State),
            Command::Restore(state) => replica
                .trainer
                .restore(&mut replica.model, &state)
                .map(|_| Reply::Ready),
            Command::Join => Err(ModelError::Input(format!(
                "rank {rank} was asked to join its communicator twice"
            ))),
        };
        if replies.send(reply).is_err() {
            return;
        }
    }
}

/// A rank's device, model replica and trainer, before it joins the communicator.
fn open_replica(setup: Setup) -> Result<(Model<Cuda>, Trainer<Cuda>), ModelError> {
    let cuda = Cuda::new(setup.ordinal)?;
    cuda.set_gemm_precision(setup.precision)?;
    let model = Model::new(cuda, setup.config, setup.head, &setup.params)?;
    let trainer = Trainer::new(&model, setup.shape, setup.optimizer)?;
    Ok((model, trainer))
}

impl Replica {
    fn step(&mut self, shape: Shape, shard: &Shard) -> Result<Reply, ModelError> {
        self.trainer.zero_grads(&self.model)?;
        let gradients = self.accumulate(shape, shard);
        // Join the all-reduce even after a failure, so no other rank waits for this one.
        self.comm.all_reduce_sum(&mut self.trainer.grads)?;
        let loss_sum = gradients?;
        let stats = self
            .trainer
            .update(&mut self.model, loss_sum / shard.total_count as f64)?;
        self.model.backend.synchronize()?;
        Ok(Reply::Step(loss_sum, stats))
    }

    /// This rank's micro-batches' gradients, summed; returns their summed loss.
    fn accumulate(&mut self, shape: Shape, shard: &Shard) -> Result<f64, ModelError> {
        let be = &self.model.backend;
        let micro_batches = shard.ids.len() / shape.tokens();
        let targets_per_batch = shard.targets.len() / micro_batches;
        let mut loss_sum = 0.0;
        for m in 0..micro_batches {
            let tokens = m * shape.tokens()..(m + 1) * shape.tokens();
            let rows = m * shape.batch..(m + 1) * shape.batch;
            let batch = Batch::new(
                be,
                shape,
                &shard.ids[tokens.clone()],
                shard.lengths.as_deref().map(|l| &l[rows]),
                shard.resets.as_deref().map(|r| &r[tokens]),
            )?;
            let targets =
                be.upload_ids(&shard.targets[m * targets_per_batch..(m + 1) * targets_per_batch])?;
            loss_sum +=
                self.trainer
                    .accumulate(&self.model, &batch, &targets, shard.total_count)?;
        }
        Ok(loss_sum)
    }
}
