//! CUDA selective scan: the launcher of the kernels in `scan.cu` (design notes there).

use cudarc::driver::{DeviceRepr, LaunchConfig};

use super::{ScanDims, ScanGrads, ScanInputs};
use crate::bf16::Input;
use crate::cuda::{check_view, Cuda, DeviceIds, DeviceTensor, DeviceView, DeviceViewMut};
use crate::KernelError;

const SOURCE: &str = concat!(include_str!("../cuda/bf16.cuh"), include_str!("scan.cu"));
/// The only state size the kernels are written for (Mamba-1's default).
pub const STATE: usize = 16;
/// Threads (channels) per block of the per-channel kernels (`CH_THREADS` in `scan.cu`).
const CHANNEL_THREADS: u32 = 128;
/// Positions per staged tile of the per-channel kernels (`TILE` in `scan.cu`).
const TILE: usize = 16;
/// Two `ChannelTile`s (double buffering): delta, x and z columns, B/C rows, reset flags.
const CHANNEL_TILES_BYTES: usize =
    2 * (3 * TILE * CHANNEL_THREADS as usize * 4 + TILE * 2 * STATE * 4 + TILE * 4);
/// Threads sharing a channel's states in the quad kernels (`GROUPS` in `scan.cu`).
const THREADS_PER_CHANNEL: usize = 4;
/// Channels per block of the backward's main kernel.
const BACKWARD_CHANNELS: usize = 64;
const BACKWARD_THREADS: u32 = (BACKWARD_CHANNELS * THREADS_PER_CHANNEL) as u32;
/// Channels per block of the one-pass forward kernel.
const ONE_PASS_CHANNELS: usize = 32;
/// Its walkers (four threads a channel) and as many producers (`FWD_THREADS`).
const ONE_PASS_THREADS: u32 = (2 * ONE_PASS_CHANNELS * THREADS_PER_CHANNEL) as u32;
/// Positions a sub-chunk of the one-pass forward (`FWD_ROWS`).
const ONE_PASS_ROWS: usize = 16;
/// Its raw sub-chunks in shared memory (`FWD_RAWS`).
const ONE_PASS_RAWS: usize = 4;
/// Its `ForwardShared`: the raw sub-chunks (three f32-sized columns, the B/C rows, the
/// resets), two tiles (xd: 8 bytes an element) and two sets of output partials (four
/// floats an element).
const ONE_PASS_SHARED_BYTES: usize = {
    let elements = ONE_PASS_ROWS * ONE_PASS_CHANNELS;
    let raw = 3 * elements * 4 + ONE_PASS_ROWS * 2 * STATE * 4 + ONE_PASS_ROWS * 4;
    ONE_PASS_RAWS * raw + 2 * elements * 8 + 2 * elements * 16
};
/// Threads per multiprocessor from which the forward runs in one pass
/// rather than cutting rows into segments, whose exps it takes twice.
const ONE_PASS_THREADS_PER_SM: usize = 256;
/// Positions whose states the backward holds in registers at a time (`SUB`).
const BACKWARD_SUB: usize = 8;
const REDUCE_THREADS: u32 = 256;
/// Columns (channel, state) of a `scan_bwd_reduce_params` block (`REDUCE_COLUMNS`): its
/// REDUCE_THREADS threads are that many columns times 8 runs of rows.
const REDUCE_COLUMNS: usize = 32;
/// The backward main kernel's warp sums of dB and dC (`WarpSums` for each of its 8 warps),
/// in dynamic shared memory before the sub-chunk start states.
const WARP_SUMS_BYTES: usize = 8 * BACKWARD_SUB * 2 * STATE * 4;
/// The longest checkpoint chunk: the backward main kernel keeps each sub-chunk's start
/// states in shared memory (4 KB per `BACKWARD_SUB` positions beside ~48 KB of tiles and
/// sums), within the 227 KB a block may have.
pub(crate) const MAX_CHUNK: usize = 352;
/// Threads wanted on the device before a row is cut into more segments: enough to cover
/// every multiprocessor several warps deep. Measured on an H200 against 512 and 2048:
/// best or within noise on every anchor shape (docs/cuda-scan.md).
const THREADS_PER_SM: usize = 1024;

/// Device inputs of the scan (the streams u, delta, z all f32 or all bf16).
pub type DeviceInputs<'a> = ScanInputs<DeviceView<'a>, Input<'a, Cuda>>;

/// The kernels' one argument, laid out as `struct ScanArgs` in `scan.cu`.
#[repr(C)]
#[derive(Default)]
struct ScanArgs {
    u: u64,
    delta: u64,
    a_log: u64,
    b: u64,
    c: u64,
    d_skip: u64,
    delta_bias: u64,
    z: u64,
    resets: u64,
    state: u64,
    checkpoints: u64,
    out: u64,
    seg_state: u64,
    seg_sum: u64,
    d_out: u64,
    du: u64,
    ddelta: u64,
    dz: u64,
    part_a: u64,
    part_d: u64,
    part_bias: u64,
    part_b: u64,
    part_c: u64,
    da_log: u64,
    dd_skip: u64,
    ddelta_bias: u64,
    db: u64,
    dc: u64,
    batch: i32,
    len: i32,
    channels: i32,
    chunk: i32,
    seg_len: i32,
    segments: i32,
    chunks: i32,
    channel_blocks: i32,
    out_bf16: i32,
    grads_bf16: i32,
    du_bf16: i32,
}

// SAFETY: plain old data matching the kernel's struct field for field.
unsafe impl DeviceRepr for ScanArgs {}

/// How the kernels read the streams u, delta, z and d_out (`STREAMS_BF16` in `scan.cu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Streams {
    F32 = 0,
    /// bf16, staged 8 channels (16 bytes) a copy: every row 16-byte aligned.
    Bf16Rows = 1,
    /// bf16, staged an element a copy.
    Bf16 = 2,
}

/// How the forward covers a shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ForwardPath {
    /// A thread per channel, rows cut into segments: a segment pass, the carries chained,
    /// an output pass.
    Segmented,
    /// Four threads per channel walking whole rows, other warps copying, transforming
    /// and finishing the outputs (`scan_fwd_one_pass`).
    OnePass,
}

impl ForwardPath {
    /// One pass where batch · channels alone give `ONE_PASS_THREADS_PER_SM` walking
    /// threads a multiprocessor.
    fn for_shape(dims: ScanDims, multiprocessors: usize) -> Self {
        let threads = dims.batch * dims.channels * THREADS_PER_CHANNEL;
        if threads < multiprocessors * ONE_PASS_THREADS_PER_SM {
            Self::Segmented
        } else {
            Self::OnePass
        }
    }
}

/// How each row is cut for the GPU: `segments` pieces of `seg_len` positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segments {
    seg_len: usize,
    segments: usize,
}

/// Cuts rows into whole chunks so that `batch · channels · threads_per_channel · segments`
/// reaches `target_threads`, but no more than needed.
fn segments_for(dims: ScanDims, threads_per_channel: usize, target_threads: usize) -> Segments {
    let per_segment = dims.batch * dims.channels * threads_per_channel;
    let wanted = target_threads
        .div_ceil(per_segment)
        .clamp(1, dims.chunks().min(65_535));
    let seg_len = dims.chunks().div_ceil(wanted) * dims.chunk;
    Segments {
        seg_len,
        segments: dims.len.div_ceil(seg_len),
    }
}

fn validate(dims: ScanDims, op: &'static str) -> Result<(), KernelError> {
    let invalid = |message: String| Err(KernelError::Invalid { op, message });
    if dims.batch == 0 || dims.len == 0 || dims.channels == 0 || dims.chunk == 0 {
        return invalid(format!("zero-sized dimension in {dims:?}"));
    }
    if dims.state != STATE {
        return invalid(format!(
            "the CUDA scan needs state = {STATE}, got {}",
            dims.state
        ));
    }
    if dims.batch > 65_535 {
        return invalid(format!("batch {} exceeds 65535", dims.batch));
    }
    if dims.chunk > MAX_CHUNK {
        return invalid(format!(
            "chunk {} exceeds {MAX_CHUNK} (the backward's shared memory)",
            dims.chunk
        ));
    }
    let largest = dims.batch * dims.len * dims.channels.max(STATE);
    if dims.len > i32::MAX as usize || largest > i32::MAX as usize * 64 {
        return invalid(format!("{dims:?} is too large"));
    }
    Ok(())
}

fn grid(
    blocks_x: usize,
    dims: ScanDims,
    segments: usize,
    threads: u32,
    shared: usize,
) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks_x as u32, segments as u32, dims.batch as u32),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: shared as u32,
    }
}

/// The per-channel kernels' grid (a thread per channel, two staged tiles) over
/// `segments` segments of each row.
fn channel_grid(dims: ScanDims, segments: usize) -> LaunchConfig {
    let blocks = dims.channels.div_ceil(CHANNEL_THREADS as usize);
    grid(blocks, dims, segments, CHANNEL_THREADS, CHANNEL_TILES_BYTES)
}

fn flat(elements: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (elements.div_ceil(REDUCE_THREADS as usize) as u32, 1, 1),
        block_dim: (REDUCE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl Cuda {
    fn target_threads(&self) -> Result<usize, KernelError> {
        Ok(self.multiprocessors() * THREADS_PER_SM)
    }

    /// Kernel `name`, built to read the streams as `streams` says.
    fn scan_function(
        &self,
        name: &str,
        streams: Streams,
    ) -> Result<cudarc::driver::CudaFunction, KernelError> {
        let options = [
            format!("-DSTATE={STATE}"),
            format!("-DSTREAMS_BF16={}", streams as u8),
        ];
        self.function("scan", SOURCE, &options, name)
    }

    /// The arguments of the inputs both directions read (and `d_out` for the backward);
    /// how the kernels read the streams.
    fn input_args(
        &self,
        dims: ScanDims,
        op: &'static str,
        inputs: &ScanInputs<DeviceView<'_>, Input<'_, Cuda>>,
        d_out: Option<DeviceTensor>,
        resets: Option<&DeviceIds>,
    ) -> Result<(ScanArgs, Streams), KernelError> {
        validate(dims, op)?;
        let activations = dims.batch * dims.len * dims.channels;
        let rows = dims.batch * dims.len * dims.state;
        let (u, delta) = (
            DeviceTensor::from(inputs.u),
            DeviceTensor::from(inputs.delta),
        );
        let z = inputs.z.map(DeviceTensor::from);
        let streams = [
            ("u", Some(u)),
            ("delta", Some(delta)),
            ("z", z),
            ("d_out", d_out),
        ];
        let mut addresses = 0;
        for (name, stream) in streams {
            if let Some(stream) = stream {
                addresses |= stream.address;
                check_view(op, name, activations, stream.len)?;
                if stream.bf16 != u.bf16 {
                    return Err(KernelError::Invalid {
                        op,
                        message: format!("`{name}` and `u` must both be f32 or both bf16"),
                    });
                }
            }
        }
        check_view(op, "a_log", dims.channels * dims.state, inputs.a_log.len())?;
        check_view(op, "b", rows, inputs.b.len())?;
        check_view(op, "c", rows, inputs.c.len())?;
        check_view(op, "d_skip", dims.channels, inputs.d_skip.len())?;
        check_view(op, "delta_bias", dims.channels, inputs.delta_bias.len())?;
        if let Some(resets) = resets {
            check_view(op, "resets", dims.batch * dims.len, resets.host().len())?;
        }
        let args = ScanArgs {
            u: u.address,
            delta: delta.address,
            a_log: inputs.a_log.address(),
            b: inputs.b.address(),
            c: inputs.c.address(),
            d_skip: inputs.d_skip.address(),
            delta_bias: inputs.delta_bias.address(),
            z: z.map_or(0, |z| z.address),
            d_out: d_out.map_or(0, |d| d.address),
            resets: resets.map_or(0, |r| r.device_address()),
            batch: dims.batch as i32,
            len: dims.len as i32,
            channels: dims.channels as i32,
            chunk: dims.chunk as i32,
            chunks: dims.chunks() as i32,
            ..ScanArgs::default()
        };
        let kind = match u.bf16 {
            false => Streams::F32,
            true if dims.channels.is_multiple_of(8) && addresses.is_multiple_of(16) => {
                Streams::Bf16Rows
            }
            true => Streams::Bf16,
        };
        Ok((args, kind))
    }

    /// Forward scan on the device by `path`; arguments and semantics as
    /// [`super::cpu::forward`] (`resets` as u32 flags, `state` and `checkpoints` optional).
    /// Queued on the stream.
    #[allow(clippy::too_many_arguments)]
    fn scan_forward_device(
        &self,
        path: ForwardPath,
        dims: ScanDims,
        inputs: &ScanInputs<DeviceView<'_>, Input<'_, Cuda>>,
        resets: Option<&DeviceIds>,
        state: Option<DeviceViewMut<'_>>,
        checkpoints: Option<DeviceViewMut<'_>>,
        out: DeviceTensor,
    ) -> Result<(), KernelError> {
        const OP: &str = "scan_forward (cuda)";
        let (mut args, streams) = self.input_args(dims, OP, inputs, None, resets)?;
        let kernel = |name| self.scan_function(name, streams);
        check_view(OP, "out", dims.batch * dims.len * dims.channels, out.len)?;
        if let Some(state) = &state {
            check_view(OP, "state", dims.state_len(), state.len())?;
        }
        if let Some(checkpoints) = &checkpoints {
            check_view(OP, "checkpoints", dims.checkpoint_len(), checkpoints.len())?;
        }
        args.state = state.as_ref().map_or(0, |s| s.address());
        args.checkpoints = checkpoints.as_ref().map_or(0, |c| c.address());
        args.out = out.address;
        args.out_bf16 = out.bf16.into();
        if path == ForwardPath::OnePass {
            let blocks = dims.channels.div_ceil(ONE_PASS_CHANNELS);
            let config = grid(blocks, dims, 1, ONE_PASS_THREADS, ONE_PASS_SHARED_BYTES);
            return self.launch(&kernel("scan_fwd_one_pass")?, config, &args);
        }
        let cut = segments_for(dims, 1, self.target_threads()?);
        let slots = dims.batch * cut.segments * dims.channels;
        let seg_state = self.scratch::<f32>(slots * STATE)?;
        let seg_sum = self.scratch::<f32>(slots)?;
        args.seg_state = self.address(&seg_state);
        args.seg_sum = self.address(&seg_sum);
        args.seg_len = cut.seg_len as i32;
        args.segments = cut.segments as i32;

        let per_segment = channel_grid(dims, cut.segments);
        if cut.segments > 1 {
            // Every segment but the last has a summary to make.
            let summarised = channel_grid(dims, cut.segments - 1);
            self.launch(&kernel("scan_fwd_segment")?, summarised, &args)?;
            let combine = flat(dims.batch * dims.channels * STATE);
            self.launch(&kernel("scan_fwd_combine")?, combine, &args)?;
        }
        self.launch(&kernel("scan_fwd_output")?, per_segment, &args)?;
        // The scratch buffers are freed in stream order, after the kernels.
        Ok(())
    }

    /// Gradients of [`Cuda::scan_forward`] from its checkpoints; semantics as
    /// [`super::cpu::backward`]: activation gradients overwritten, `da_log`, `dd_skip` and
    /// `ddelta_bias` accumulated. Deterministic: no floating-point atomics.
    fn scan_backward_device(
        &self,
        dims: ScanDims,
        inputs: &ScanInputs<DeviceView<'_>, Input<'_, Cuda>>,
        resets: Option<&DeviceIds>,
        checkpoints: DeviceView<'_>,
        d_out: DeviceTensor,
        grads: ScanGrads<DeviceViewMut<'_>, DeviceTensor>,
    ) -> Result<(), KernelError> {
        const OP: &str = "scan_backward (cuda)";
        let (mut args, streams) = self.input_args(dims, OP, inputs, Some(d_out), resets)?;
        let kernel = |name| self.scan_function(name, streams);
        let activations = dims.batch * dims.len * dims.channels;
        let rows = dims.batch * dims.len * dims.state;
        check_view(OP, "checkpoints", dims.checkpoint_len(), checkpoints.len())?;
        check_view(OP, "du", activations, grads.du.len)?;
        check_view(OP, "ddelta", activations, grads.ddelta.len)?;
        check_view(OP, "da_log", dims.channels * dims.state, grads.da_log.len())?;
        check_view(OP, "db", rows, grads.db.len())?;
        check_view(OP, "dc", rows, grads.dc.len())?;
        check_view(OP, "dd_skip", dims.channels, grads.dd_skip.len())?;
        check_view(OP, "ddelta_bias", dims.channels, grads.ddelta_bias.len())?;
        match (&inputs.z, &grads.dz) {
            (Some(_), Some(dz)) => {
                check_view(OP, "dz", activations, dz.len)?;
                if dz.bf16 != grads.ddelta.bf16 {
                    return Err(KernelError::Invalid {
                        op: OP,
                        message: "`ddelta` and `dz` must both be f32 or both bf16".into(),
                    });
                }
            }
            (None, None) => {}
            _ => {
                return Err(KernelError::Invalid {
                    op: OP,
                    message: "`dz` must be given exactly when the inputs have `z`".into(),
                })
            }
        }
        if let Some(out) = &grads.out {
            check_view(OP, "out", activations, out.len)?;
        }

        let cut = segments_for(dims, 1, self.target_threads()?);
        let slots = dims.batch * cut.segments * dims.channels;
        let channel_blocks = dims.channels.div_ceil(BACKWARD_CHANNELS);
        let seg_state = self.scratch::<f32>(slots * STATE)?;
        let seg_sum = self.scratch::<f32>(slots)?;
        let part_a = self.scratch::<f32>(slots * STATE)?;
        let part_d = self.scratch::<f32>(slots)?;
        let part_bias = self.scratch::<f32>(slots)?;
        let part_b = self.scratch::<f32>(channel_blocks * rows)?;
        let part_c = self.scratch::<f32>(channel_blocks * rows)?;
        args.checkpoints = checkpoints.address();
        args.seg_state = self.address(&seg_state);
        args.seg_sum = self.address(&seg_sum);
        args.du = grads.du.address;
        args.du_bf16 = grads.du.bf16.into();
        args.ddelta = grads.ddelta.address;
        args.dz = grads.dz.as_ref().map_or(0, |dz| dz.address);
        args.grads_bf16 = grads.ddelta.bf16.into();
        args.out = grads.out.as_ref().map_or(0, |out| out.address);
        args.out_bf16 = grads.out.as_ref().is_some_and(|out| out.bf16).into();
        args.part_a = self.address(&part_a);
        args.part_d = self.address(&part_d);
        args.part_bias = self.address(&part_bias);
        args.part_b = self.address(&part_b);
        args.part_c = self.address(&part_c);
        args.da_log = grads.da_log.address();
        args.dd_skip = grads.dd_skip.address();
        args.ddelta_bias = grads.ddelta_bias.address();
        args.db = grads.db.address();
        args.dc = grads.dc.address();
        args.seg_len = cut.seg_len as i32;
        args.segments = cut.segments as i32;
        args.channel_blocks = channel_blocks as i32;

        if cut.segments > 1 {
            // Every segment but the first has a summary to make.
            let summarised = channel_grid(dims, cut.segments - 1);
            self.launch(&kernel("scan_bwd_segment")?, summarised, &args)?;
            let combine = flat(dims.batch * dims.channels * STATE);
            self.launch(&kernel("scan_bwd_combine")?, combine, &args)?;
        }
        let sub_states = dims.chunk.div_ceil(BACKWARD_SUB) * BACKWARD_THREADS as usize * 16;
        let main = grid(
            channel_blocks,
            dims,
            cut.segments,
            BACKWARD_THREADS,
            WARP_SUMS_BYTES + sub_states,
        );
        self.launch(&kernel("scan_bwd_main")?, main, &args)?;
        self.launch(&kernel("scan_bwd_reduce_bc")?, flat(rows), &args)?;
        let params = LaunchConfig {
            grid_dim: (
                (dims.channels * STATE).div_ceil(REDUCE_COLUMNS) as u32,
                1,
                1,
            ),
            block_dim: (REDUCE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch(&kernel("scan_bwd_reduce_params")?, params, &args)?;
        Ok(())
    }
}

/// See [`super::cpu::forward`]; `Backend::scan_forward` of [`Cuda`].
pub(crate) fn forward(
    cuda: &Cuda,
    dims: ScanDims,
    inputs: &ScanInputs<DeviceView<'_>, Input<'_, Cuda>>,
    resets: Option<&DeviceIds>,
    state: Option<DeviceViewMut<'_>>,
    checkpoints: Option<DeviceViewMut<'_>>,
    out: DeviceTensor,
) -> Result<(), KernelError> {
    let path = ForwardPath::for_shape(dims, cuda.multiprocessors());
    cuda.scan_forward_device(path, dims, inputs, resets, state, checkpoints, out)
}

/// Gradients of [`forward`] from its checkpoints; semantics as [`super::cpu::backward`]:
/// activation gradients overwritten, `da_log`, `dd_skip` and `ddelta_bias` accumulated.
/// Deterministic: no floating-point atomics.
pub(crate) fn backward(
    cuda: &Cuda,
    dims: ScanDims,
    inputs: &ScanInputs<DeviceView<'_>, Input<'_, Cuda>>,
    resets: Option<&DeviceIds>,
    checkpoints: DeviceView<'_>,
    d_out: DeviceTensor,
    grads: ScanGrads<DeviceViewMut<'_>, DeviceTensor>,
) -> Result<(), KernelError> {
    cuda.scan_backward_device(dims, inputs, resets, checkpoints, d_out, grads)
}

#[cfg(test)]
mod tests;
