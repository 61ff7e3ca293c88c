//! CPU selective scan: a thread owns a tile of channels of one batch row and keeps their
//! states in SIMD lanes while it walks the sequence.
//!
//! A tile is [`LANES`] channels of one batch row; lane `i` of every vector is channel
//! `first + i`, and the tile's states are `state` vectors (one per state index). A task
//! owns neighbouring tiles ([`TILES_PER_TASK`], or [`WIDE_TASK_TILES`] in a forward that
//! keeps every thread as busy that way) and walks the sequence in blocks of
//! positions, tile after tile, so that each row it touches yields several cache lines.
//! The task list depends only on the shape, and the parameter gradients are reduced over
//! tasks in a fixed order, so results are bit-identical for any number of threads.

mod step;

use std::marker::PhantomData;
use std::ops::Range;

use rayon::prelude::*;

use super::{ScanDims, ScanGrads, ScanInputs};
use crate::lanes::{prefetch, prefetch_address, run_vectorised, Lanes, Vectorised, LANES};
use crate::parallel::{for_each_block, JOB_ELEMENTS};
use crate::rng::Rng;
use crate::{check_len, KernelError};

const OP: &str = "selective_scan";

/// Tile-positions the forward handles per phase: it first gathers a block's inputs
/// (independent loads that the memory system overlaps, where the recurrence's long
/// dependency chain would stall on each), then runs the recurrence, then scatters the
/// outputs. 128 (eight positions of 16 tiles, four of 32) keep the block's four vectors
/// per tile in 32 KiB, the first-level cache of the machines we measure.
const BLOCK_TILE_POSITIONS: usize = 128;

/// Channels × states below which a forward runs on the calling thread: a decode step of
/// d_inner 1536 (24,576) is split across the threads, one of d_inner 256 (4,096) is not.
const STEP_PARALLEL_MIN: usize = 1 << 14;

/// Tiles per task: 256 channels, 1 KiB of each row of a tensor. A row of a wide layer is a
/// page of its own (1024 channels: 4 KiB), and each row a task reads or writes costs a TLB
/// miss; a wide task spreads it over more work. On a Zen 3 without huge pages, 16 tiles
/// rather than 4 made the forward and the backward 20–30 % faster (docs/benchmarks.md).
const TILES_PER_TASK: usize = 16;

/// Tiles per forward task when the wider tasks still come out even over the threads
/// (see [`Shape::widened_for`]): 2 KiB of a 1024-channel row then costs one TLB miss. At
/// (1, 1024, 8192) on the 2-core Zen 3 this made the forward 5–7 % faster
/// (docs/benchmarks.md). A forward's bits do not depend on the task width.
const WIDE_TASK_TILES: usize = 32;

/// Forward scan writing `out` `(batch, len, channels)`.
///
/// `resets` `(batch, len)`: non-zero at `t` zeroes the state before position `t`.
/// `state` `(batch, channels, state)`: initial state on entry (zero if `None`), final state
/// on return. `checkpoints` `(batch, chunks, channels, state)`: when given, receives the
/// state at the start of every chunk (chunk 0: the initial state), as `backward` needs.
///
/// ```
/// use seqmamba_kernels::scan::{cpu, ScanDims, ScanInputs};
/// let dims = ScanDims::new(1, 2, 1, 1);
/// let inputs: ScanInputs<&[f32]> = ScanInputs {
///     u: &[1.0, 1.0],
///     delta: &[30.0, 30.0],      // Δ = 30 (softplus passes it through)
///     a_log: &[-30.0],           // A ≈ 0: the state decays by exp(ΔA) ≈ 1
///     b: &[1.0, 1.0],
///     c: &[1.0, 1.0],
///     d_skip: &[0.0],
///     delta_bias: &[0.0],
///     z: None,
/// };
/// let mut out = [0.0; 2];
/// cpu::forward(dims, &inputs, None, None, None, &mut out).unwrap();
/// assert!((out[0] - 30.0).abs() < 1e-4 && (out[1] - 60.0).abs() < 1e-4);
/// ```
pub fn forward(
    dims: ScanDims,
    inputs: &ScanInputs<&[f32]>,
    resets: Option<&[u32]>,
    state: Option<&mut [f32]>,
    checkpoints: Option<&mut [f32]>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let shape = Shape::new(dims)?;
    check_inputs(&shape, inputs, resets)?;
    if let Some(state) = state.as_deref() {
        check_len(OP, "state", dims.state_len(), state)?;
    }
    if let Some(checkpoints) = checkpoints.as_deref() {
        check_len(OP, "checkpoints", dims.checkpoint_len(), checkpoints)?;
    }
    check_len(OP, "out", shape.activations(), out)?;
    let (state, checkpoints) = match (state, checkpoints) {
        (Some(state), None) if step::handles(&shape) => {
            step::forward(shape, inputs, resets, state, out);
            return Ok(());
        }
        other => other,
    };

    let shape = shape.widened_for(rayon::current_num_threads());
    let job = ForwardJob {
        shape,
        inputs: *inputs,
        resets,
        state: state.map(Scatter::new),
        checkpoints: checkpoints.map(Scatter::new),
        out: Scatter::new(out),
    };
    for_each_task(&shape, |task| {
        run_vectorised(ForwardTask { job: &job, task })
    });
    Ok(())
}

/// Runs `run(task)` for every task of a forward of `shape`, on the threads its size is
/// worth. A decode step (len 1) of a small model is a few microseconds of work, less than
/// handing it to the threads and waiting for them would cost; one of a wide model goes to
/// the decode team task by task (no task's outputs depend on who runs it).
fn for_each_task(shape: &Shape, run: impl Fn(usize) + Sync) {
    let work = shape.activations() * shape.state;
    if work < STEP_PARALLEL_MIN || rayon::current_num_threads() == 1 {
        (0..shape.tasks()).for_each(run);
    } else if work <= JOB_ELEMENTS {
        for_each_block(shape.tasks(), 1, |tasks| tasks.for_each(&run));
    } else {
        (0..shape.tasks()).into_par_iter().for_each(&run);
    }
}

/// Gradients of [`forward`] given `d_out`, from the checkpoints the forward saved.
///
/// `du`, `ddelta` (with respect to `delta` before bias and softplus), `db`, `dc`, `dz` and
/// `out` (the forward's output made again, bit for bit) are overwritten; `da_log`, `dd_skip` and `ddelta_bias` are accumulated. No gradient
/// flows into the initial state, and the final state receives none. `checkpoints` must
/// come from [`forward`] with the same `dims` and inputs. Each task recomputes one chunk
/// of states at a time, so its scratch memory grows with `dims.chunk` (64 by default);
/// the parameter gradients are bit-identical for any number of threads.
///
/// ```
/// use seqmamba_kernels::scan::{cpu, ScanDims, ScanGrads, ScanInputs};
/// let dims = ScanDims::new(1, 1, 1, 1);
/// let inputs: ScanInputs<&[f32]> = ScanInputs {
///     u: &[2.0],
///     delta: &[30.0],
///     a_log: &[0.0],
///     b: &[1.0],
///     c: &[1.0],
///     d_skip: &[0.5],
///     delta_bias: &[0.0],
///     z: None,
/// };
/// let checkpoints = [0.0]; // zero initial state
/// let (mut du, mut ddelta, mut da_log, mut db, mut dc) = ([0.0], [0.0], [0.0], [0.0], [0.0]);
/// let (mut dd_skip, mut ddelta_bias) = ([0.0], [0.0]);
/// let grads = ScanGrads {
///     du: &mut du[..],
///     ddelta: &mut ddelta[..],
///     da_log: &mut da_log[..],
///     db: &mut db[..],
///     dc: &mut dc[..],
///     dd_skip: &mut dd_skip[..],
///     ddelta_bias: &mut ddelta_bias[..],
///     dz: None,
///     out: None,
/// };
/// cpu::backward(dims, &inputs, None, &checkpoints, &[1.0], grads).unwrap();
/// // out = Δ·B·u·C + D·u with Δ = 30: ∂out/∂u = 30 + 0.5, ∂out/∂C = 60.
/// assert!((du[0] - 30.5).abs() < 1e-4 && (dc[0] - 60.0).abs() < 1e-4);
/// ```
pub fn backward(
    dims: ScanDims,
    inputs: &ScanInputs<&[f32]>,
    resets: Option<&[u32]>,
    checkpoints: &[f32],
    d_out: &[f32],
    grads: ScanGrads<&mut [f32]>,
) -> Result<(), KernelError> {
    let shape = Shape::new(dims)?;
    check_inputs(&shape, inputs, resets)?;
    check_len(OP, "checkpoints", dims.checkpoint_len(), checkpoints)?;
    check_len(OP, "d_out", shape.activations(), d_out)?;
    let ScanGrads {
        du,
        ddelta,
        da_log,
        db,
        dc,
        dd_skip,
        ddelta_bias,
        dz,
        out,
    } = grads;
    let (activations, per_position) = (shape.activations(), shape.batch * shape.len * shape.state);
    check_len(OP, "du", activations, du)?;
    check_len(OP, "ddelta", activations, ddelta)?;
    check_len(OP, "da_log", shape.channels * shape.state, da_log)?;
    check_len(OP, "db", per_position, db)?;
    check_len(OP, "dc", per_position, dc)?;
    check_len(OP, "dd_skip", shape.channels, dd_skip)?;
    check_len(OP, "ddelta_bias", shape.channels, ddelta_bias)?;
    match (&inputs.z, &dz) {
        (Some(_), Some(dz)) => check_len(OP, "dz", activations, dz)?,
        (None, None) => {}
        (Some(_), None) => return Err(invalid("the inputs have `z` but no `dz` was given")),
        (None, Some(_)) => return Err(invalid("`dz` was given but the inputs have no `z`")),
    }
    if let Some(out) = &out {
        check_len(OP, "out", activations, out)?;
    }

    let job = BackwardJob {
        shape,
        inputs: *inputs,
        resets,
        checkpoints,
        d_out,
        du: Scatter::new(du),
        ddelta: Scatter::new(ddelta),
        dz: dz.map(Scatter::new),
        out: out.map(Scatter::new),
    };
    let partial_len = shape.task_partial_len();
    let mut partials = vec![0.0f32; shape.tasks() * partial_len];
    let params: Vec<Vec<TileParams>> = partials
        .par_chunks_mut(partial_len)
        .enumerate()
        .map(|(task, partial)| {
            run_vectorised(BackwardTask {
                job: &job,
                task,
                partial,
            })
        })
        .collect();
    sum_task_partials(&shape, &partials, db, dc);
    accumulate_parameter_grads(&shape, inputs.a_log, &params, da_log, dd_skip, ddelta_bias);
    Ok(())
}

fn invalid(message: &str) -> KernelError {
    KernelError::Invalid {
        op: OP,
        message: message.to_string(),
    }
}

/// The sizes of a validated [`ScanDims`] and the tiling of its channels.
#[derive(Clone, Copy, Debug)]
struct Shape {
    batch: usize,
    len: usize,
    channels: usize,
    state: usize,
    chunk: usize,
    chunks: usize,
    tiles: usize,
    /// Tiles per task.
    task_tiles: usize,
}

/// The channels `first..first + width` of batch row `batch`.
#[derive(Clone, Copy, Debug)]
struct Tile {
    batch: usize,
    first: usize,
    width: usize,
}

impl Shape {
    fn new(dims: ScanDims) -> Result<Self, KernelError> {
        let ScanDims {
            batch,
            len,
            channels,
            state,
            chunk,
        } = dims;
        if [batch, len, channels, state, chunk].contains(&0) {
            return Err(invalid(&format!(
                "every size must be positive, got {dims:?}"
            )));
        }
        // The largest buffer is the backward's per-task partials, 2·len·state per task.
        let tiles = channels.div_ceil(LANES);
        [batch, len, channels.saturating_add(LANES), state, 2]
            .iter()
            .try_fold(1usize, |total, &size| total.checked_mul(size))
            .ok_or_else(|| invalid(&format!("sizes overflow, got {dims:?}")))?;
        Ok(Self {
            batch,
            len,
            channels,
            state,
            chunk,
            chunks: dims.chunks(),
            tiles,
            task_tiles: TILES_PER_TASK,
        })
    }

    /// The shape with forward tasks of [`WIDE_TASK_TILES`] when that makes fewer tasks and
    /// their count is a multiple of `threads`, so the threads stay evenly loaded; otherwise
    /// unchanged (a decode step of 1536 channels keeps six tasks rather than three over two
    /// threads; rows of at most 16 tiles keep their blocks of eight positions). The
    /// backward keeps [`TILES_PER_TASK`]: its parameter gradients are summed per task.
    fn widened_for(self, threads: usize) -> Self {
        let wide = Self {
            task_tiles: WIDE_TASK_TILES,
            ..self
        };
        let fewer = wide.groups() < self.groups();
        if fewer && (self.batch * wide.groups()).is_multiple_of(threads.max(1)) {
            wide
        } else {
            self
        }
    }

    /// Positions of a forward block (see [`BLOCK_TILE_POSITIONS`]).
    fn block(&self) -> usize {
        BLOCK_TILE_POSITIONS / self.task_tiles
    }

    /// Groups of `task_tiles` tiles (tasks) per batch row.
    fn groups(&self) -> usize {
        self.tiles.div_ceil(self.task_tiles)
    }

    fn tasks(&self) -> usize {
        self.batch * self.groups()
    }

    fn activations(&self) -> usize {
        self.batch * self.len * self.channels
    }

    /// A task's dB rows then its dC rows, `(len, state)` each.
    fn task_partial_len(&self) -> usize {
        2 * self.len * self.state
    }

    /// Tile `index` (of `tiles`) of batch row `batch`.
    fn tile(&self, batch: usize, index: usize) -> Tile {
        let first = index * LANES;
        Tile {
            batch,
            first,
            width: LANES.min(self.channels - first),
        }
    }

    /// The tiles of task `task`, in channel order.
    fn task_tiles(&self, task: usize) -> impl Iterator<Item = Tile> + '_ {
        let (batch, group) = (task / self.groups(), task % self.groups());
        let first = group * self.task_tiles;
        (first..self.tiles.min(first + self.task_tiles)).map(move |index| self.tile(batch, index))
    }

    /// The tile's channels at position `t` of a `(batch, len, channels)` tensor.
    fn columns(&self, tile: Tile, t: usize) -> Range<usize> {
        let start = (tile.batch * self.len + t) * self.channels + tile.first;
        start..start + tile.width
    }

    /// Row `t` of a `(batch, len, state)` tensor (B or C).
    fn state_row(&self, tile: Tile, t: usize) -> Range<usize> {
        let start = (tile.batch * self.len + t) * self.state;
        start..start + self.state
    }

    /// The tile's block of a `(batch, channels, state)` state tensor.
    fn state_block(&self, tile: Tile) -> Range<usize> {
        let start = (tile.batch * self.channels + tile.first) * self.state;
        start..start + tile.width * self.state
    }

    /// The tile's block of checkpoint `chunk` in `(batch, chunks, channels, state)`.
    fn checkpoint_block(&self, tile: Tile, chunk: usize) -> Range<usize> {
        let start = ((tile.batch * self.chunks + chunk) * self.channels + tile.first) * self.state;
        start..start + tile.width * self.state
    }

    /// Positions of chunk `chunk`.
    fn chunk_positions(&self, chunk: usize) -> Range<usize> {
        chunk * self.chunk..self.len.min((chunk + 1) * self.chunk)
    }
}

fn check_inputs(
    shape: &Shape,
    inputs: &ScanInputs<&[f32]>,
    resets: Option<&[u32]>,
) -> Result<(), KernelError> {
    let activations = shape.activations();
    let per_position = shape.batch * shape.len * shape.state;
    check_len(OP, "u", activations, inputs.u)?;
    check_len(OP, "delta", activations, inputs.delta)?;
    check_len(OP, "a_log", shape.channels * shape.state, inputs.a_log)?;
    check_len(OP, "b", per_position, inputs.b)?;
    check_len(OP, "c", per_position, inputs.c)?;
    check_len(OP, "d_skip", shape.channels, inputs.d_skip)?;
    check_len(OP, "delta_bias", shape.channels, inputs.delta_bias)?;
    if let Some(z) = inputs.z {
        check_len(OP, "z", activations, z)?;
    }
    if let Some(resets) = resets {
        check_len(OP, "resets", shape.batch * shape.len, resets)?;
    }
    Ok(())
}

fn is_reset(resets: Option<&[u32]>, shape: &Shape, tile: Tile, t: usize) -> bool {
    resets.is_some_and(|resets| resets[tile.batch * shape.len + t] != 0)
}

/// `A·log2 e` of the tile into `rates`, one vector per state index; padding lanes get
/// `A = -1` so that they stay finite. Vectorised: a decode step (len 1) would otherwise
/// spend most of its time here.
#[inline(always)]
fn decay_rates(a_log: &[f32], shape: &Shape, tile: Tile, rates: &mut [Lanes]) {
    // `a_log` is `(channels, state)`, laid out like a block of states.
    load_states(&a_log[shape.state_block(Tile { batch: 0, ..tile })], rates);
    for rate in rates {
        *rate = decay_rate(*rate);
    }
}

/// `A·log2 e` with `A = -exp(a_log)`: the decay `e^(Δ·A)` is then `2^(Δ·rate)`, which
/// costs the recurrence less than `exp`. Every pass (forward, the backward's recomputation,
/// the decode step) makes the decay this way, so that they agree bit for bit.
#[inline(always)]
fn decay_rate(a_log: Lanes) -> Lanes {
    Lanes::ZERO - a_log.exp() * std::f32::consts::LOG2_E
}

/// What a tile reads of the per-channel parameters besides `A`.
#[derive(Clone, Copy)]
struct TileConstants {
    tile: Tile,
    d_skip: Lanes,
    bias: Lanes,
}

impl TileConstants {
    /// The constants of a task's tiles (at most [`WIDE_TASK_TILES`], the rest unused) and
    /// their `A` into `rates` (`state` vectors per tile), without allocating.
    #[inline(always)]
    fn of_task(
        inputs: &ScanInputs<&[f32]>,
        shape: &Shape,
        task: usize,
        rates: &mut [Lanes],
    ) -> ([Self; WIDE_TASK_TILES], usize) {
        let mut tiles = [Self {
            tile: Tile {
                batch: 0,
                first: 0,
                width: 0,
            },
            d_skip: Lanes::ZERO,
            bias: Lanes::ZERO,
        }; WIDE_TASK_TILES];
        let mut count = 0;
        // A plain loop, not a closure: the closure would be compiled apart, without the
        // wide instruction set, and its `exp` would call the software fused multiply-add.
        for (tile, rates) in shape
            .task_tiles(task)
            .zip(rates.chunks_exact_mut(shape.state))
        {
            let channels = tile.first..tile.first + tile.width;
            decay_rates(inputs.a_log, shape, tile, rates);
            tiles[count] = Self {
                tile,
                d_skip: Lanes::load(&inputs.d_skip[channels.clone()]),
                bias: Lanes::load(&inputs.delta_bias[channels]),
            };
            count += 1;
        }
        (tiles, count)
    }
}

/// Loads a `(width, state)` block of states into one vector per state index.
#[inline(always)]
fn load_states(block: &[f32], states: &mut [Lanes]) {
    states.fill(Lanes::ZERO);
    for (lane, row) in block.chunks_exact(states.len()).enumerate() {
        for (state, &value) in states.iter_mut().zip(row) {
            state.0[lane] = value;
        }
    }
}

/// The `(width, state)` block of the first `width` lanes of `states`, into `block`.
#[inline(always)]
fn store_states(states: &[Lanes], width: usize, block: &mut Vec<f32>) {
    block.resize(width * states.len(), 0.0);
    for (lane, row) in block.chunks_exact_mut(states.len()).enumerate() {
        for (value, state) in row.iter_mut().zip(states) {
            *value = state.0[lane];
        }
    }
}

/// A tensor that the tasks of one op write (and read back) concurrently, each in index
/// ranges that no other task touches (a tile's channels, or its block of a state tensor).
struct Scatter<'a> {
    ptr: *mut f32,
    len: usize,
    _borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: a `Scatter` is a `&mut [f32]` shared by writers of disjoint ranges (see `write`).
unsafe impl Send for Scatter<'_> {}
// SAFETY: as above.
unsafe impl Sync for Scatter<'_> {}

impl<'a> Scatter<'a> {
    fn new(data: &'a mut [f32]) -> Self {
        Self {
            ptr: data.as_mut_ptr(),
            len: data.len(),
            _borrow: PhantomData,
        }
    }

    /// Copies `start..start + values.len()` into `values`.
    ///
    /// # Safety
    /// No other thread may access that range while the `Scatter` lives.
    unsafe fn read(&self, start: usize, values: &mut [f32]) {
        assert!(
            start <= self.len && values.len() <= self.len - start,
            "{OP}: read of {} values at {start} outside a tensor of {}",
            values.len(),
            self.len
        );
        // SAFETY: in bounds (checked above) and not aliased (the caller's promise).
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.add(start), values.as_mut_ptr(), values.len())
        }
    }

    /// Copies `values` to `start..start + values.len()`.
    ///
    /// # Safety
    /// No other thread may access that range while the `Scatter` lives.
    unsafe fn write(&self, start: usize, values: &[f32]) {
        assert!(
            start <= self.len && values.len() <= self.len - start,
            "{OP}: write of {} values at {start} outside a tensor of {}",
            values.len(),
            self.len
        );
        // SAFETY: in bounds (checked above) and not aliased (the caller's promise).
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.ptr.add(start), values.len()) }
    }

    /// Asks the caches for the line holding element `index`, soon to be written.
    #[inline(always)]
    fn prefetch(&self, index: usize) {
        if index < self.len {
            prefetch_address(self.ptr.wrapping_add(index));
        }
    }

    /// Writes the first `width` lanes of `values` to `start..start + width`: a tile's
    /// channels at one position, one vector store when the tile is full.
    ///
    /// # Safety
    /// As for [`Scatter::write`].
    #[inline(always)]
    unsafe fn write_lanes(&self, start: usize, values: Lanes, width: usize) {
        assert!(
            width <= LANES && start <= self.len && width <= self.len - start,
            "{OP}: write of {width} lanes at {start} outside a tensor of {}",
            self.len
        );
        // SAFETY: in bounds (checked above) and not aliased (the caller's promise).
        unsafe {
            let destination = self.ptr.add(start);
            if width == LANES {
                destination.cast::<[f32; LANES]>().write_unaligned(values.0);
            } else {
                std::ptr::copy_nonoverlapping(values.0.as_ptr(), destination, width);
            }
        }
    }
}

/// What every forward task reads and where it writes.
struct ForwardJob<'a> {
    shape: Shape,
    inputs: ScanInputs<&'a [f32]>,
    resets: Option<&'a [u32]>,
    /// Read at the start and written at the end, each task its own tiles' blocks.
    state: Option<Scatter<'a>>,
    checkpoints: Option<Scatter<'a>>,
    out: Scatter<'a>,
}

/// A forward task's working memory, kept per thread between calls.
#[derive(Default)]
struct ForwardScratch {
    /// `A` and the states of the task's tiles, then the per-position vectors of a block.
    lanes: Vec<Lanes>,
    /// One tile's `(width, state)` block of a state tensor.
    block: Vec<f32>,
}

thread_local! {
    static FORWARD_SCRATCH: std::cell::Cell<ForwardScratch> = const {
        std::cell::Cell::new(ForwardScratch {
            lanes: Vec::new(),
            block: Vec::new(),
        })
    };
}

struct ForwardTask<'a> {
    job: &'a ForwardJob<'a>,
    task: usize,
}

impl Vectorised for ForwardTask<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self { job, task } = self;
        let shape = &job.shape;
        let inputs = &job.inputs;
        let n_state = shape.state;
        // The task's vectors come from a per-thread scratch kept between calls, so a decode
        // step allocates nothing.
        let mut scratch = FORWARD_SCRATCH.take();
        let block_len = shape.block();
        let span = block_len.min(shape.len) * shape.task_tiles;
        let lanes = &mut scratch.lanes;
        lanes.clear();
        lanes.resize(2 * shape.task_tiles * n_state + 4 * span, Lanes::ZERO);
        let (rates, rest) = lanes.split_at_mut(shape.task_tiles * n_state);
        let (states, rest) = rest.split_at_mut(shape.task_tiles * n_state);
        // Per position of the block and tile, at `i * count + k`.
        let (dts, rest) = rest.split_at_mut(span);
        let (us, rest) = rest.split_at_mut(span);
        let (gates, ys) = rest.split_at_mut(span);
        gates.fill(Lanes::splat(1.0));
        let (tiles, count) = TileConstants::of_task(inputs, shape, task, rates);
        let tiles = &tiles[..count];
        let block = &mut scratch.block;
        if let Some(initial) = &job.state {
            for (constants, states) in tiles.iter().zip(states.chunks_exact_mut(n_state)) {
                block.resize(constants.tile.width * n_state, 0.0);
                // SAFETY: the tile's own block of the state tensor.
                unsafe { initial.read(shape.state_block(constants.tile).start, block) };
                load_states(block, states);
            }
        }
        for start in (0..shape.len).step_by(block_len) {
            let positions = start..shape.len.min(start + block_len);
            for (i, t) in positions.clone().enumerate() {
                for (k, constants) in tiles.iter().enumerate() {
                    let at = i * count + k;
                    let columns = shape.columns(constants.tile, t);
                    let ahead = columns.start + block_len * shape.channels;
                    prefetch(inputs.delta, ahead);
                    prefetch(inputs.u, ahead);
                    job.out.prefetch(ahead);
                    dts[at] =
                        (Lanes::load(&inputs.delta[columns.clone()]) + constants.bias).softplus();
                    us[at] = Lanes::load(&inputs.u[columns.clone()]);
                    if let Some(z) = inputs.z {
                        prefetch(z, ahead);
                        let z = Lanes::load(&z[columns]);
                        gates[at] = z * z.sigmoid();
                    }
                }
            }
            for (k, ((constants, states), rates)) in tiles
                .iter()
                .zip(states.chunks_exact_mut(n_state))
                .zip(rates.chunks_exact(n_state))
                .enumerate()
            {
                let tile = constants.tile;
                for (i, t) in positions.clone().enumerate() {
                    if let Some(checkpoints) =
                        job.checkpoints.as_ref().filter(|_| t % shape.chunk == 0)
                    {
                        store_states(states, tile.width, block);
                        let start = shape.checkpoint_block(tile, t / shape.chunk).start;
                        // SAFETY: the tile's own block of this checkpoint.
                        unsafe { checkpoints.write(start, block) };
                    }
                    if is_reset(job.resets, shape, tile, t) {
                        states.fill(Lanes::ZERO);
                    }
                    let at = i * count + k;
                    let row = shape.state_row(tile, t);
                    let (dt, u) = (dts[at], us[at]);
                    let dt_u = dt * u;
                    let mut y = constants.d_skip * u;
                    for ((h, &rate), (&b, &c)) in states
                        .iter_mut()
                        .zip(rates)
                        .zip(inputs.b[row.clone()].iter().zip(&inputs.c[row]))
                    {
                        *h = (dt * rate).exp2().mul_add(*h, dt_u * b);
                        y = h.mul_add(Lanes::splat(c), y);
                    }
                    ys[at] = y * gates[at];
                }
            }
            for (i, t) in positions.enumerate() {
                for (k, constants) in tiles.iter().enumerate() {
                    let (tile, y) = (constants.tile, ys[i * count + k]);
                    // SAFETY: the tile's own channels at position t.
                    unsafe {
                        job.out
                            .write_lanes(shape.columns(tile, t).start, y, tile.width)
                    };
                }
            }
        }
        if let Some(final_state) = &job.state {
            for (constants, states) in tiles.iter().zip(states.chunks_exact(n_state)) {
                store_states(states, constants.tile.width, block);
                let start = shape.state_block(constants.tile).start;
                // SAFETY: the tile's own block of the state tensor.
                unsafe { final_state.write(start, block) };
            }
        }
        FORWARD_SCRATCH.set(scratch);
    }
}

/// What every backward task reads and where it writes its activation gradients.
struct BackwardJob<'a> {
    shape: Shape,
    inputs: ScanInputs<&'a [f32]>,
    resets: Option<&'a [u32]>,
    checkpoints: &'a [f32],
    d_out: &'a [f32],
    du: Scatter<'a>,
    ddelta: Scatter<'a>,
    dz: Option<Scatter<'a>>,
    /// The forward's output, made again.
    out: Option<Scatter<'a>>,
}

struct BackwardTask<'a> {
    job: &'a BackwardJob<'a>,
    task: usize,
    /// The task's share of dB then of dC, `(len, state)` each.
    partial: &'a mut [f32],
}

/// One tile's gradients of the per-channel parameters, summed over its positions.
struct TileParams {
    /// With respect to `A` (not `a_log`), one vector per state index.
    da: Vec<Lanes>,
    dd_skip: Lanes,
    ddelta_bias: Lanes,
}

impl Vectorised for BackwardTask<'_> {
    type Output = Vec<TileParams>;

    #[inline(always)]
    fn run(self) -> Vec<TileParams> {
        let Self { job, task, partial } = self;
        let shape = &job.shape;
        let inputs = &job.inputs;
        let n_state = shape.state;
        let mut all_rates = vec![Lanes::ZERO; shape.task_tiles * n_state];
        let (tiles, count) = TileConstants::of_task(inputs, shape, task, &mut all_rates);
        let tiles = &tiles[..count];
        let (db_rows, dc_rows) = partial.split_at_mut(shape.len * n_state);

        let mut params: Vec<TileParams> = (0..count)
            .map(|_| TileParams {
                da: vec![Lanes::ZERO; n_state],
                dd_skip: Lanes::ZERO,
                ddelta_bias: Lanes::ZERO,
            })
            .collect();
        // dL/dh_{t-1} through h_t, carried backwards from position t, per tile.
        let mut carries = vec![Lanes::ZERO; count * n_state];
        // One tile's chunk at a time: states[i] is the state before its i-th position
        // (states[0] the checkpoint), decays[i] = exp(Δ·A) at that position.
        let span = shape.chunk.min(shape.len);
        let mut states = vec![Lanes::ZERO; (span + 1) * n_state];
        let mut decays = vec![Lanes::ZERO; span * n_state];
        // Per position of the chunk and tile, at `i * count + k`.
        let per_position = || vec![Lanes::ZERO; span * count];
        let (mut dts, mut dt_slopes, mut us) = (per_position(), per_position(), per_position());
        let (mut d_outs, mut dys, mut dzs) = (per_position(), per_position(), per_position());
        let mut outs = per_position();
        let (mut dus, mut dxs) = (per_position(), per_position());
        let mut gates = vec![Lanes::splat(1.0); span * count];
        let mut gate_slopes = per_position();
        // dB and dC terms of the chunk, `(position, state)`, summed over the task's tiles
        // lane by lane; their lanes are summed once per chunk, not once per tile.
        let mut db_terms = vec![Lanes::ZERO; span * n_state];
        let mut dc_terms = vec![Lanes::ZERO; span * n_state];

        for chunk in (0..shape.chunks).rev() {
            let positions = shape.chunk_positions(chunk);
            // Gather the chunk's inputs (see [`BLOCK_TILE_POSITIONS`] for why in a pass of their own), and
            // prefetch those of the chunk before, which comes next.
            for (i, t) in positions.clone().enumerate() {
                for (k, constants) in tiles.iter().enumerate() {
                    let at = i * count + k;
                    let columns = shape.columns(constants.tile, t);
                    if let Some(next) = columns.start.checked_sub(shape.chunk * shape.channels) {
                        for tensor in [inputs.delta, inputs.u, job.d_out] {
                            prefetch(tensor, next);
                        }
                        if let Some(z) = inputs.z {
                            prefetch(z, next);
                        }
                        job.du.prefetch(next);
                        job.ddelta.prefetch(next);
                        if let Some(dz) = &job.dz {
                            dz.prefetch(next);
                        }
                    }
                    let x = Lanes::load(&inputs.delta[columns.clone()]) + constants.bias;
                    dts[at] = x.softplus();
                    dt_slopes[at] = x.select_above(20.0, Lanes::splat(1.0), x.sigmoid());
                    us[at] = Lanes::load(&inputs.u[columns.clone()]);
                    d_outs[at] = Lanes::load(&job.d_out[columns.clone()]);
                    if let Some(z) = inputs.z {
                        let z = Lanes::load(&z[columns]);
                        let sigmoid = z.sigmoid();
                        let one = Lanes::splat(1.0);
                        gates[at] = z * sigmoid;
                        gate_slopes[at] = sigmoid * (one + z * (one - sigmoid));
                    }
                }
            }
            for (k, ((constants, carry), rates)) in tiles
                .iter()
                .zip(carries.chunks_exact_mut(n_state))
                .zip(all_rates.chunks_exact(n_state))
                .enumerate()
            {
                let tile = constants.tile;
                let params = &mut params[k];
                // Recompute the chunk's states from its checkpoint, and the gradient of y.
                load_states(
                    &job.checkpoints[shape.checkpoint_block(tile, chunk)],
                    &mut states[..n_state],
                );
                for (i, t) in positions.clone().enumerate() {
                    let at = i * count + k;
                    let row = shape.state_row(tile, t);
                    let (dt, u) = (dts[at], us[at]);
                    let dt_u = dt * u;
                    let mut y = constants.d_skip * u;
                    let reset = is_reset(job.resets, shape, tile, t);
                    let (before, after) =
                        states[i * n_state..(i + 2) * n_state].split_at_mut(n_state);
                    let decays = &mut decays[i * n_state..(i + 1) * n_state];
                    for (n, (&b, &c)) in
                        inputs.b[row.clone()].iter().zip(&inputs.c[row]).enumerate()
                    {
                        let decay = (dt * rates[n]).exp2();
                        decays[n] = decay;
                        let previous = if reset { Lanes::ZERO } else { before[n] };
                        after[n] = decay.mul_add(previous, dt_u * b);
                        y = after[n].mul_add(Lanes::splat(c), y);
                    }
                    dys[at] = d_outs[at] * gates[at];
                    dzs[at] = d_outs[at] * y * gate_slopes[at];
                    outs[at] = y * gates[at];
                }
                // Walk the chunk backwards.
                for (i, t) in positions.clone().enumerate().rev() {
                    let at = i * count + k;
                    let row = shape.state_row(tile, t);
                    let (dt, u, dy) = (dts[at], us[at], dys[at]);
                    let dt_u = dt * u;
                    let reset = is_reset(job.resets, shape, tile, t);
                    let before = &states[i * n_state..(i + 1) * n_state];
                    let after = &states[(i + 1) * n_state..(i + 2) * n_state];
                    let decays = &decays[i * n_state..(i + 1) * n_state];
                    let db_terms = &mut db_terms[i * n_state..(i + 1) * n_state];
                    let dc_terms = &mut dc_terms[i * n_state..(i + 1) * n_state];
                    let first_tile = k == 0;
                    // Σ_n dh·h_{t-1}·decay·A (through the decay, A = rate·ln2 applied after
                    // the sum), Σ_n dh·B (through Δ·B·u).
                    let mut via_decay = Lanes::ZERO;
                    let mut via_input = Lanes::ZERO;
                    for (n, (&b, &c)) in
                        inputs.b[row.clone()].iter().zip(&inputs.c[row]).enumerate()
                    {
                        let dh = dy.mul_add(Lanes::splat(c), carry[n]);
                        let (db_term, dc_term) = (dh * dt_u, dy * after[n]);
                        if first_tile {
                            (db_terms[n], dc_terms[n]) = (db_term, dc_term);
                        } else {
                            db_terms[n] = db_terms[n] + db_term;
                            dc_terms[n] = dc_terms[n] + dc_term;
                        }
                        via_input = dh.mul_add(Lanes::splat(b), via_input);
                        if reset {
                            carry[n] = Lanes::ZERO;
                        } else {
                            let d_exponent = dh * before[n] * decays[n];
                            via_decay = d_exponent.mul_add(rates[n], via_decay);
                            params.da[n] = d_exponent.mul_add(dt, params.da[n]);
                            carry[n] = dh * decays[n];
                        }
                    }
                    let ddt = via_input.mul_add(u, via_decay * std::f32::consts::LN_2);
                    dus[at] = via_input.mul_add(dt, constants.d_skip * dy);
                    dxs[at] = ddt * dt_slopes[at];
                    params.ddelta_bias = params.ddelta_bias + dxs[at];
                    params.dd_skip = dy.mul_add(u, params.dd_skip);
                }
            }
            let rows = positions.start * n_state..positions.end * n_state;
            for (terms, sums) in [
                (&db_terms, &mut db_rows[rows.clone()]),
                (&dc_terms, &mut dc_rows[rows]),
            ] {
                for (sum, term) in sums.iter_mut().zip(terms.iter()) {
                    *sum = term.sum();
                }
            }
            for (i, t) in positions.enumerate() {
                for (k, constants) in tiles.iter().enumerate() {
                    let (at, width) = (i * count + k, constants.tile.width);
                    let start = shape.columns(constants.tile, t).start;
                    // SAFETY: the tile's own channels at position t.
                    unsafe {
                        job.du.write_lanes(start, dus[at], width);
                        job.ddelta.write_lanes(start, dxs[at], width);
                        if let Some(dz) = &job.dz {
                            dz.write_lanes(start, dzs[at], width);
                        }
                        if let Some(out) = &job.out {
                            out.write_lanes(start, outs[at], width);
                        }
                    }
                }
            }
        }
        params
    }
}

/// dB and dC: the sum over tasks of their partials, in channel order.
fn sum_task_partials(shape: &Shape, partials: &[f32], db: &mut [f32], dc: &mut [f32]) {
    const ROWS_PER_TASK: usize = 64;
    let (len, n_state) = (shape.len, shape.state);
    let partial_len = shape.task_partial_len();
    let rows = ROWS_PER_TASK * n_state;
    db.par_chunks_mut(rows)
        .zip(dc.par_chunks_mut(rows))
        .enumerate()
        .for_each(|(block, (db, dc))| {
            db.fill(0.0);
            dc.fill(0.0);
            for (i, (db, dc)) in db
                .chunks_exact_mut(n_state)
                .zip(dc.chunks_exact_mut(n_state))
                .enumerate()
            {
                let position = block * ROWS_PER_TASK + i;
                let (batch, t) = (position / len, position % len);
                for group in 0..shape.groups() {
                    let partial = &partials[(batch * shape.groups() + group) * partial_len..];
                    let (db_rows, dc_rows) = partial[..partial_len].split_at(len * n_state);
                    for (sum, &value) in db.iter_mut().zip(&db_rows[t * n_state..]) {
                        *sum += value;
                    }
                    for (sum, &value) in dc.iter_mut().zip(&dc_rows[t * n_state..]) {
                        *sum += value;
                    }
                }
            }
        });
}

/// Adds the parameter gradients, summed over batch rows in order, to the accumulators.
fn accumulate_parameter_grads(
    shape: &Shape,
    a_log: &[f32],
    params: &[Vec<TileParams>],
    da_log: &mut [f32],
    dd_skip: &mut [f32],
    ddelta_bias: &mut [f32],
) {
    for tile_index in 0..shape.tiles {
        let tile = shape.tile(0, tile_index);
        let (group, k) = (tile_index / shape.task_tiles, tile_index % shape.task_tiles);
        let mut da = vec![Lanes::ZERO; shape.state];
        let (mut d_skip, mut d_bias) = (Lanes::ZERO, Lanes::ZERO);
        for batch in 0..shape.batch {
            let tile_params = &params[batch * shape.groups() + group][k];
            for (sum, &value) in da.iter_mut().zip(&tile_params.da) {
                *sum = *sum + value;
            }
            d_skip = d_skip + tile_params.dd_skip;
            d_bias = d_bias + tile_params.ddelta_bias;
        }
        for lane in 0..tile.width {
            let channel = tile.first + lane;
            dd_skip[channel] += d_skip.0[lane];
            ddelta_bias[channel] += d_bias.0[lane];
            let row = channel * shape.state..(channel + 1) * shape.state;
            // dA/da_log = -exp(a_log) = A.
            for ((grad, da), &a_log) in da_log[row.clone()].iter_mut().zip(&da).zip(&a_log[row]) {
                *grad += da.0[lane] * -a_log.exp();
            }
        }
    }
}

/// Host buffers for every input of the scan: random ones for the tests and benchmarks of
/// both backends (a CUDA caller uploads them).
///
/// ```
/// use seqmamba_kernels::rng::Rng;
/// use seqmamba_kernels::scan::{cpu::InputBuffers, ScanDims};
/// let dims = ScanDims::new(2, 8, 4, 16);
/// let inputs = InputBuffers::random(dims, true, &mut Rng::new(1));
/// assert_eq!(inputs.views().b.len(), 2 * 8 * 16);
/// assert!(inputs.a_log.iter().all(|a| (-0.5..2.8).contains(a)));
/// let mut out = vec![0.0; 2 * 8 * 4];
/// seqmamba_kernels::scan::cpu::forward(dims, &inputs.views(), None, None, None, &mut out)
///     .unwrap();
/// assert!(out.iter().all(|y| y.is_finite()));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct InputBuffers<T = f32> {
    pub u: Vec<T>,
    pub delta: Vec<T>,
    pub a_log: Vec<T>,
    pub b: Vec<T>,
    pub c: Vec<T>,
    pub d_skip: Vec<T>,
    pub delta_bias: Vec<T>,
    pub z: Option<Vec<T>>,
}

impl InputBuffers {
    /// Uniform random inputs for `dims`, `z` only with a gate, in ranges that keep the scan
    /// stable and like a Mamba layer's: `delta + delta_bias` in (-8, 1), so Δ = softplus of
    /// it spans (3e-4, 1.3) around the initial Δ range [1e-3, 0.1]; `a_log` in (-0.5, 2.8),
    /// so A = -exp(a_log) is negative, around the initial -1 … -16; `u`, `b`, `c` and
    /// `d_skip` in (-1, 1); `z` in (-2, 2).
    pub fn random(dims: ScanDims, gate: bool, rng: &mut Rng) -> Self {
        let activations = dims.batch * dims.len * dims.channels;
        let per_position = dims.batch * dims.len * dims.state;
        Self {
            u: rng.vec_uniform(activations, -1.0, 1.0),
            delta: rng.vec_uniform(activations, -4.0, 1.0),
            a_log: rng.vec_uniform(dims.channels * dims.state, -0.5, 2.8),
            b: rng.vec_uniform(per_position, -1.0, 1.0),
            c: rng.vec_uniform(per_position, -1.0, 1.0),
            d_skip: rng.vec_uniform(dims.channels, -1.0, 1.0),
            delta_bias: rng.vec_uniform(dims.channels, -4.0, 0.0),
            z: gate.then(|| rng.vec_uniform(activations, -2.0, 2.0)),
        }
    }
}

impl<T> InputBuffers<T> {
    /// The buffers as the scan (or, in f64, its reference) takes them.
    pub fn views(&self) -> ScanInputs<&[T]> {
        ScanInputs {
            u: &self.u,
            delta: &self.delta,
            a_log: &self.a_log,
            b: &self.b,
            c: &self.c,
            d_skip: &self.d_skip,
            delta_bias: &self.delta_bias,
            z: self.z.as_deref(),
        }
    }
}

/// Host buffers for every gradient of [`backward`], zero-filled: what a caller of the CPU
/// scan owns before it lends [`GradBuffers::views`] to the backward.
///
/// ```
/// use seqmamba_kernels::scan::{cpu::GradBuffers, ScanDims};
/// let mut grads = GradBuffers::zeros(ScanDims::new(2, 8, 4, 16), true);
/// assert_eq!(grads.views().db.len(), 2 * 8 * 16);
/// assert!(grads.dz.is_some());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct GradBuffers {
    pub du: Vec<f32>,
    pub ddelta: Vec<f32>,
    pub da_log: Vec<f32>,
    pub db: Vec<f32>,
    pub dc: Vec<f32>,
    pub dd_skip: Vec<f32>,
    pub ddelta_bias: Vec<f32>,
    pub dz: Option<Vec<f32>>,
    /// The forward's output made again: none unless a caller puts a buffer here.
    pub out: Option<Vec<f32>>,
}

impl GradBuffers {
    /// Zeroed buffers for `dims`; `dz` only with a gate.
    pub fn zeros(dims: ScanDims, gate: bool) -> Self {
        let activations = dims.batch * dims.len * dims.channels;
        let per_position = dims.batch * dims.len * dims.state;
        Self {
            du: vec![0.0; activations],
            ddelta: vec![0.0; activations],
            da_log: vec![0.0; dims.channels * dims.state],
            db: vec![0.0; per_position],
            dc: vec![0.0; per_position],
            dd_skip: vec![0.0; dims.channels],
            ddelta_bias: vec![0.0; dims.channels],
            dz: gate.then(|| vec![0.0; activations]),
            out: None,
        }
    }

    /// The buffers as the backward takes them.
    pub fn views(&mut self) -> ScanGrads<&mut [f32]> {
        ScanGrads {
            du: &mut self.du,
            ddelta: &mut self.ddelta,
            da_log: &mut self.da_log,
            db: &mut self.db,
            dc: &mut self.dc,
            dd_skip: &mut self.dd_skip,
            ddelta_bias: &mut self.ddelta_bias,
            dz: self.dz.as_deref_mut(),
            out: self.out.as_deref_mut(),
        }
    }
}
