//! The CUDA device: context, stream and the run-time compiled kernel modules.
//!
//! Nothing CUDA is needed to build this crate: the driver (`libcuda`) and NVRTC
//! (`libnvrtc`) are loaded when [`Cuda::new`] runs, and a machine without them gets a
//! [`KernelError::Device`] that says what is missing. Kernels live as `.cu` files beside
//! their Rust launcher, are embedded with `include_str!`, compiled by NVRTC to CUBIN for the
//! device's own architecture on first use and cached on disk (see [`cache`]).
//!
//! [`Cuda`] implements [`crate::Backend`] (`backend.rs`): buffers are `CudaSlice<f32>`,
//! views are [`DeviceView`]/[`DeviceViewMut`], ids are [`DeviceIds`]. Each op's launcher
//! is `cuda.rs` in the op's own module folder, beside its kernels in `<op>.cu` (e.g.
//! `conv1d/cuda.rs` and `conv1d/conv1d.cu`); `common.cuh` holds the reductions they share
//! and is prepended to each source. GEMMs go to cuBLAS.

mod backend;
pub(crate) mod cache;
mod doctor;
mod nccl;
mod view;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{sys, CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice};
use cudarc::driver::{CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;

pub use doctor::{doctor, Doctor};
pub use nccl::{device_count, Communicator, CommunicatorId};
pub(crate) use view::check_view;
pub(crate) use view::DeviceTensor;
pub use view::{DeviceBuffer, DeviceIds, DeviceView, DeviceViewMut};
#[cfg(test)]
pub(crate) mod testing;

use crate::KernelError;

/// One CUDA device with one stream; every op is queued on that stream in call order.
///
/// ```no_run
/// use seqmamba_kernels::cuda::Cuda;
/// use seqmamba_kernels::Backend;
/// let cuda = Cuda::new(0)?;
/// let x = cuda.upload(&[1.0, 2.0])?;
/// assert_eq!(cuda.download(cuda.all(&x))?, vec![1.0, 2.0]);
/// # Ok::<(), seqmamba_kernels::KernelError>(())
/// ```
#[derive(Clone)]
pub struct Cuda {
    /// Shared by clones: every model, trainer and evaluator of a run uses one context,
    /// stream, cuBLAS handle and kernel cache.
    shared: Arc<Shared>,
}

/// The state of one opened device.
struct Shared {
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    /// bf16 GEMMs with per-shape algorithms; `None` without the cuBLASLt library.
    lt: Option<crate::gemm::cuda::LtGemms>,
    arch: String,
    multiprocessors: usize,
    nvrtc_version: (i32, i32),
    modules: Mutex<HashMap<(&'static str, String), Arc<CudaModule>>>,
    /// Functions already looked up, so a launch costs no driver lookup (decode steps
    /// launch hundreds of small kernels).
    functions: Mutex<HashMap<FunctionKey, CudaFunction>>,
    /// Events around every timed op while [`Cuda::time_ops`] is on.
    op_events: Mutex<Option<Vec<(TimedOp, CudaEvent, CudaEvent)>>>,
    gemm_precision: Mutex<GemmPrecision>,
}

/// How the GEMMs of a [`Cuda`] device multiply. Inputs and outputs stay f32 buffers in
/// every mode; only the products inside cuBLAS change.
///
/// ```
/// use seqmamba_kernels::cuda::GemmPrecision;
/// assert_eq!("bf16".parse::<GemmPrecision>(), Ok(GemmPrecision::Bf16));
/// assert_eq!(GemmPrecision::default().to_string(), "f32");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GemmPrecision {
    /// f32 products on the CUDA cores: as exact as the CPU op (~1e-6 relative).
    #[default]
    F32,
    /// Inputs rounded to TF32 (10-bit mantissa) on the tensor cores, sums in f32, as
    /// PyTorch's `allow_tf32`: ~1e-3 relative.
    Tf32,
    /// Training's large GEMMs on bf16 copies of their operands (8 significant bits) on
    /// the tensor cores, sums and outputs in f32, as PyTorch's bf16 autocast: ~1e-2
    /// relative. The model makes the copies ([`crate::Backend::bf16_gemms`]); GEMMs on
    /// f32 operands run in TF32.
    Bf16,
}

impl std::fmt::Display for GemmPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Tf32 => "tf32",
            Self::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for GemmPrecision {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "f32" => Ok(Self::F32),
            "tf32" => Ok(Self::Tf32),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!(
                "unknown GEMM precision {other:?} (f32, tf32 or bf16)"
            )),
        }
    }
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda")
            .field("ordinal", &self.shared.context.ordinal())
            .field("arch", &self.shared.arch)
            .finish()
    }
}

/// A failed driver call as a [`KernelError::Device`] naming what was being done.
pub(crate) fn device_error(doing: &str, error: impl std::fmt::Display) -> KernelError {
    KernelError::Device(format!("{doing}: {error}"))
}

impl Cuda {
    /// Opens device `ordinal`. Fails with [`KernelError::Device`] (never panics) when the
    /// driver library, NVRTC or a GPU is missing.
    pub fn new(ordinal: usize) -> Result<Self, KernelError> {
        // cudarc panics when a library is absent at first use; ask first.
        // SAFETY: only tries to open the shared library.
        if !unsafe { sys::is_culib_present() } {
            return Err(KernelError::Device(
                "the CUDA driver library (libcuda.so) was not found: no NVIDIA driver on this machine"
                    .into(),
            ));
        }
        // SAFETY: as above.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(KernelError::Device(
                "NVRTC (libnvrtc.so) was not found: install the CUDA toolkit or add its lib64 to LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let opened = std::panic::catch_unwind(|| CudaContext::new(ordinal)).map_err(|_| {
            KernelError::Device(
                "the CUDA driver library lacks a needed symbol (driver too old?)".into(),
            )
        })?;
        let context =
            opened.map_err(|e| device_error(&format!("opening CUDA device {ordinal}"), e))?;
        // One stream and no cross-stream events: cheaper launches, and graph capture works.
        // SAFETY: every buffer of this backend is used on `stream` only.
        unsafe { context.disable_event_tracking() };
        let (major, minor) = context
            .compute_capability()
            .map_err(|e| device_error("reading the compute capability", e))?;
        let nvrtc_version = nvrtc_version()?;
        // A stream of our own: the legacy default stream cannot be captured into a graph.
        let stream = context
            .new_stream()
            .map_err(|e| device_error("creating a stream", e))?;
        // SAFETY: as above.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(KernelError::Device(
                "cuBLAS (libcublas.so) was not found: install the CUDA toolkit or add its lib64 to LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let multiprocessors = context
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| device_error("reading the multiprocessor count", e))?
            .max(1) as usize;
        let blas = CudaBlas::new(stream.clone())
            .map_err(|e| device_error("creating the cuBLAS handle", e))?;
        let lt = crate::gemm::cuda::LtGemms::new(&stream)?;
        let cuda = Self {
            shared: Arc::new(Shared {
                context,
                stream,
                blas,
                lt,
                arch: format!("sm_{major}{minor}"),
                multiprocessors,
                nvrtc_version,
                modules: Mutex::new(HashMap::new()),
                functions: Mutex::new(HashMap::new()),
                op_events: Mutex::new(None),
                gemm_precision: Mutex::new(GemmPrecision::F32),
            }),
        };
        cuda.keep_freed_memory()?;
        Ok(cuda)
    }

    /// Keeps memory freed into the stream-ordered pool there, instead of the default of
    /// returning it to the driver at every synchronisation: the ops' scratch (partial sums,
    /// segment states) freed during a step is then reused by the next step without a new
    /// mapping, so a step allocates nothing from the driver once the first one has run.
    fn keep_freed_memory(&self) -> Result<(), KernelError> {
        self.set_pool_attribute(
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            u64::MAX,
            "setting the memory pool's release threshold",
        )
    }

    /// The stream every op of this device runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.shared.stream
    }

    /// The driver context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.shared.context
    }

    /// The architecture kernels are compiled for, e.g. `sm_90`.
    pub fn arch(&self) -> &str {
        &self.shared.arch
    }

    /// Streaming multiprocessors on the device.
    pub fn multiprocessors(&self) -> usize {
        self.shared.multiprocessors
    }

    /// A buffer holding `data`, `None` when empty (the driver refuses zero-byte
    /// allocations; f32 buffers go through [`crate::Backend::upload`]).
    pub(crate) fn upload_slice<T: DeviceRepr>(
        &self,
        data: &[T],
    ) -> Result<Option<CudaSlice<T>>, KernelError> {
        if data.is_empty() {
            return Ok(None);
        }
        self.shared
            .stream
            .clone_htod(data)
            .map(Some)
            .map_err(|e| device_error("copying to the device", e))
    }

    /// A buffer of `len` elements with undefined contents, for scratch that a kernel
    /// fully writes before anything reads it.
    pub(crate) fn scratch<T: DeviceRepr>(&self, len: usize) -> Result<CudaSlice<T>, KernelError> {
        // SAFETY: device memory is never read on the host uninitialised; the callers'
        // kernels write every element before reading it.
        unsafe { self.shared.stream.alloc(len) }
            .map_err(|e| device_error(&format!("allocating {len} elements"), e))
    }

    /// The median device time in ms of `runs` calls of `op` (each between two events on
    /// the stream) after `warmup` untimed calls: what the benchmarks report.
    pub fn median_ms(
        &self,
        warmup: usize,
        runs: usize,
        mut op: impl FnMut() -> Result<(), KernelError>,
    ) -> Result<f64, KernelError> {
        use cudarc::driver::sys::CUevent_flags;
        let event = || {
            self.context()
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| device_error("creating an event", e))
        };
        for _ in 0..warmup {
            op()?;
        }
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs.max(1) {
            let (start, stop) = (event()?, event()?);
            start
                .record(self.stream())
                .map_err(|e| device_error("recording an event", e))?;
            op()?;
            stop.record(self.stream())
                .map_err(|e| device_error("recording an event", e))?;
            stop.synchronize()
                .map_err(|e| device_error("waiting for an event", e))?;
            let ms = start
                .elapsed_ms(&stop)
                .map_err(|e| device_error("reading an event", e))?;
            times.push(f64::from(ms));
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }

    /// Waits until every queued op has finished.
    pub fn synchronize(&self) -> Result<(), KernelError> {
        self.shared
            .stream
            .synchronize()
            .map_err(|e| device_error("synchronizing the stream", e))
    }

    /// The device address of `buffer`, for a kernel's argument struct.
    pub(crate) fn address<T>(&self, buffer: &CudaSlice<T>) -> u64 {
        view::slice_address(buffer)
    }

    /// The cuBLAS handle, bound to [`Cuda::stream`].
    pub(crate) fn blas(&self) -> &CudaBlas {
        &self.shared.blas
    }

    /// cuBLASLt for the bf16 GEMMs, where its library is present.
    pub(crate) fn lt(&self) -> Option<&crate::gemm::cuda::LtGemms> {
        self.shared.lt.as_ref()
    }

    /// Sets how the GEMMs multiply (see [`GemmPrecision`]); f32 until set. Results stay
    /// deterministic in every precision.
    pub fn set_gemm_precision(&self, precision: GemmPrecision) -> Result<(), KernelError> {
        use cudarc::cublas::sys::{cublasMath_t, cublasSetMathMode};
        let mode = if precision == GemmPrecision::F32 {
            cublasMath_t::CUBLAS_DEFAULT_MATH
        } else {
            cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH
        };
        // SAFETY: sets a flag of a live handle.
        unsafe { cublasSetMathMode(*self.shared.blas.handle(), mode) }
            .result()
            .map_err(|e| device_error("setting cuBLAS's math mode", e))?;
        *self.shared.gemm_precision.lock().map_err(|_| poisoned())? = precision;
        Ok(())
    }

    /// How the GEMMs multiply now.
    pub fn gemm_precision(&self) -> Result<GemmPrecision, KernelError> {
        Ok(*self.shared.gemm_precision.lock().map_err(|_| poisoned())?)
    }

    /// Starts (`true`) or stops timing every op with events on the stream; see
    /// [`Cuda::op_seconds`]. Costs two event records per op while on.
    pub fn time_ops(&self, on: bool) -> Result<(), KernelError> {
        let mut events = self.shared.op_events.lock().map_err(|_| poisoned())?;
        *events = on.then(Vec::new);
        Ok(())
    }

    /// Device seconds of the timed ops since timing started (waits for the stream), and
    /// restarts the count.
    pub fn op_seconds(&self) -> Result<OpSeconds, KernelError> {
        self.synchronize()?;
        let mut events = self.shared.op_events.lock().map_err(|_| poisoned())?;
        let mut total = OpSeconds::default();
        for (op, start, stop) in events.iter_mut().flat_map(|pairs| pairs.drain(..)) {
            let seconds = start
                .elapsed_ms(&stop)
                .map_err(|e| device_error("reading an op timing event", e))?
                as f64
                * 1e-3;
            *match op {
                TimedOp::Gemm => &mut total.gemm,
                TimedOp::Scan => &mut total.scan,
                TimedOp::Conv => &mut total.conv,
                TimedOp::Norm => &mut total.norm,
                TimedOp::Loss => &mut total.loss,
                TimedOp::Optimizer => &mut total.optimizer,
                TimedOp::Cast => &mut total.cast,
                TimedOp::Other => &mut total.other,
            } += seconds;
        }
        Ok(total)
    }

    /// Runs `launch`, bracketed by timing events when [`Cuda::time_ops`] is on. Only the
    /// `Backend` methods (`backend.rs`) call it, once per op: op modules never call it, so
    /// the lock held across `launch` is never taken twice.
    pub(crate) fn timed<R>(
        &self,
        op: TimedOp,
        launch: impl FnOnce() -> Result<R, KernelError>,
    ) -> Result<R, KernelError> {
        let mut events = self.shared.op_events.lock().map_err(|_| poisoned())?;
        let Some(pairs) = events.as_mut() else {
            drop(events);
            return launch();
        };
        let record = || {
            self.shared
                .stream
                .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| device_error("recording an op timing event", e))
        };
        let start = record()?;
        let result = launch()?;
        pairs.push((op, start, record()?));
        Ok(result)
    }

    /// The most device memory this process's buffers held at once since the last
    /// [`Cuda::reset_peak_memory`], in bytes (the stream-ordered pool's high-water mark;
    /// cuBLAS's own workspace is not counted).
    pub fn peak_memory(&self) -> Result<u64, KernelError> {
        let pool = self.memory_pool()?;
        let mut bytes = 0u64;
        // SAFETY: the attribute is a u64 written into `bytes`.
        unsafe {
            sys::cuMemPoolGetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                &mut bytes as *mut u64 as *mut std::ffi::c_void,
            )
        }
        .result()
        .map_err(|e| device_error("reading the memory pool's high-water mark", e))?;
        Ok(bytes)
    }

    /// Restarts [`Cuda::peak_memory`] from the memory in use now.
    pub fn reset_peak_memory(&self) -> Result<(), KernelError> {
        self.synchronize()?;
        self.set_pool_attribute(
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            0,
            "resetting the memory pool's high-water mark",
        )
    }

    /// Sets a u64 `attribute` of the device's stream-ordered pool; `doing` names it in errors.
    fn set_pool_attribute(
        &self,
        attribute: sys::CUmemPool_attribute,
        mut value: u64,
        doing: &str,
    ) -> Result<(), KernelError> {
        let pool = self.memory_pool()?;
        // SAFETY: both attributes set here (release threshold, high-water mark) are u64s
        // read from `value`.
        unsafe {
            sys::cuMemPoolSetAttribute(
                pool,
                attribute,
                &mut value as *mut u64 as *mut std::ffi::c_void,
            )
        }
        .result()
        .map_err(|e| device_error(doing, e))
    }

    fn memory_pool(&self) -> Result<sys::CUmemoryPool, KernelError> {
        let mut pool = std::ptr::null_mut();
        // SAFETY: writes one pool handle for this context's device.
        unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, self.shared.context.cu_device()) }
            .result()
            .map_err(|e| device_error("finding the device's memory pool", e))?;
        Ok(pool)
    }

    /// Function `name` of the module compiled from `source` with `defines`
    /// (`-D` options), compiling or loading it from the disk cache on first use.
    pub(crate) fn function(
        &self,
        module: &'static str,
        source: &'static str,
        defines: &[String],
        name: &str,
    ) -> Result<CudaFunction, KernelError> {
        let joined = defines.join(" ");
        let function_key = (module, joined.clone(), name.to_string());
        let mut functions = self.shared.functions.lock().map_err(|_| poisoned())?;
        if let Some(function) = functions.get(&function_key) {
            return Ok(function.clone());
        }
        let key = (module, joined);
        let mut modules = self.shared.modules.lock().map_err(|_| poisoned())?;
        let loaded = match modules.get(&key) {
            Some(loaded) => loaded.clone(),
            None => {
                let mut options = vec![
                    format!("--gpu-architecture={}", self.shared.arch),
                    "--std=c++17".to_string(),
                    "--extra-device-vectorization".to_string(),
                ];
                options.extend(defines.iter().cloned());
                let cubin = cache::compiled(module, source, &options, self.shared.nvrtc_version)?;
                let loaded = self
                    .shared
                    .context
                    .load_module(Ptx::from_binary(cubin))
                    .map_err(|e| device_error(&format!("loading kernel module {module}"), e))?;
                modules.insert(key, loaded.clone());
                loaded
            }
        };
        let function = loaded
            .load_function(name)
            .map_err(|e| device_error(&format!("finding kernel {name} in {module}"), e))?;
        functions.insert(function_key, function.clone());
        Ok(function)
    }

    /// Launches `function` with one argument struct.
    pub(crate) fn launch<A: DeviceRepr>(
        &self,
        function: &CudaFunction,
        config: LaunchConfig,
        args: &A,
    ) -> Result<(), KernelError> {
        if config.shared_mem_bytes > 0 {
            // Dynamic plus static shared memory may pass the default 48 KiB limit.
            // SAFETY: a plain attribute write on a loaded function.
            unsafe {
                sys::cuFuncSetAttribute(
                    function.cu_function(),
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    config.shared_mem_bytes as i32,
                )
            }
            .result()
            .map_err(|e| device_error("raising a kernel's shared-memory limit", e))?;
        }
        let mut builder = self.shared.stream.launch_builder(function);
        builder.arg(args);
        // SAFETY: every kernel of this crate takes exactly one argument struct, laid out
        // as `A` (`#[repr(C)]`), whose addresses point into live buffers of this stream.
        unsafe { builder.launch(config) }
            .map(|_| ())
            .map_err(|e| device_error("launching a kernel", e))
    }
}

/// A kernel by module, `-D` options and name.
type FunctionKey = (&'static str, String, String);

/// The kinds of op [`Cuda::time_ops`] times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimedOp {
    Gemm,
    Scan,
    Conv,
    Norm,
    Loss,
    Optimizer,
    /// Converting between f32 values and bf16 copies (rounding for GEMMs, widening for readers).
    Cast,
    /// Embedding, pooling, element-wise ops, copies and fills.
    Other,
}

/// Device seconds spent in each kind of op, forward and backward together.
///
/// ```no_run
/// use seqmamba_kernels::cuda::Cuda;
/// let cuda = Cuda::new(0)?;
/// cuda.time_ops(true)?;
/// // ... ops ...
/// let spent = cuda.op_seconds()?;
/// assert!(spent.gemm >= 0.0 && spent.scan >= 0.0);
/// # Ok::<(), seqmamba_kernels::KernelError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OpSeconds {
    pub gemm: f64,
    pub scan: f64,
    /// The causal depthwise conv1d (with its SiLU).
    pub conv: f64,
    /// RMSNorm (with its residual add).
    pub norm: f64,
    /// The fused softmax cross-entropy.
    pub loss: f64,
    /// AdamW.
    pub optimizer: f64,
    /// Converting between f32 values and bf16 copies (rounding for GEMMs, widening for readers).
    pub cast: f64,
    /// Embedding, pooling, element-wise ops (the gradient norm among them), copies, fills.
    pub other: f64,
}

impl OpSeconds {
    /// Every kind with its seconds, in a fixed order.
    ///
    /// ```
    /// use seqmamba_kernels::cuda::OpSeconds;
    /// let spent = OpSeconds { gemm: 2.0, loss: 1.0, ..OpSeconds::default() };
    /// assert_eq!(spent.kinds()[0], ("GEMM", 2.0));
    /// assert_eq!(spent.kinds().iter().map(|k| k.1).sum::<f64>(), 3.0);
    /// ```
    pub fn kinds(&self) -> [(&'static str, f64); 8] {
        [
            ("GEMM", self.gemm),
            ("scan", self.scan),
            ("conv", self.conv),
            ("norm", self.norm),
            ("loss", self.loss),
            ("optimizer", self.optimizer),
            ("cast", self.cast),
            ("other", self.other),
        ]
    }
}

/// Threads per block of the one-thread-per-element kernels.
pub(crate) const FLAT_THREADS: u32 = 256;

/// One thread per element of `elements`, in blocks of [`FLAT_THREADS`].
pub(crate) fn flat_grid(elements: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (elements.div_ceil(FLAT_THREADS as usize).max(1) as u32, 1, 1),
        block_dim: (FLAT_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Neighbouring elements a kernel thread may access at once (`load_group` in `bf16.cuh`):
/// `width` when a row of `columns` splits into whole groups and every tensor, given as
/// (address, bytes per element), starts on a group; else 1.
pub(crate) fn access_width(columns: usize, width: usize, tensors: &[(u64, u64)]) -> usize {
    let group = width as u64;
    let aligned = tensors
        .iter()
        .all(|&(address, element)| address % (group * element) == 0);
    if columns.is_multiple_of(width) && aligned {
        width
    } else {
        1
    }
}

/// Bytes per element of a tensor of f32 values or, with `bf16`, of bf16 bits.
pub(crate) fn element_bytes(bf16: bool) -> u64 {
    if bf16 {
        2
    } else {
        4
    }
}

/// The argument of `sum_columns` in `common.cuh`.
#[repr(C)]
struct SumColumnsArgs {
    partials: u64,
    out: u64,
    groups: i64,
    stride: i64,
    first: i64,
    columns: i64,
}

// SAFETY: plain old data laid out as the kernel's struct.
unsafe impl DeviceRepr for SumColumnsArgs {}

/// Where [`Cuda::sum_columns`] reads: `groups` rows of `stride` partial sums, columns
/// `first..first + columns` of them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Partials {
    pub groups: usize,
    pub stride: usize,
    pub first: usize,
    pub columns: usize,
}

impl Cuda {
    /// `out[c] += Σ_g partials[g][first + c]` with the groups added in a fixed order, using the
    /// `sum_columns` kernel of `module` (every op's source starts with `common.cuh`).
    pub(crate) fn sum_columns(
        &self,
        module: &'static str,
        source: &'static str,
        partials: &CudaSlice<f32>,
        shape: Partials,
        out: u64,
    ) -> Result<(), KernelError> {
        if shape.columns == 0 {
            return Ok(());
        }
        let args = SumColumnsArgs {
            partials: self.address(partials),
            out,
            groups: shape.groups as i64,
            stride: shape.stride as i64,
            first: shape.first as i64,
            columns: shape.columns as i64,
        };
        let function = self.function(module, source, &[], "sum_columns")?;
        // 32 columns a block, their groups in 8 slices (`SUM_SLICES`).
        let grid = LaunchConfig {
            grid_dim: (shape.columns.div_ceil(32) as u32, 1, 1),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        self.launch(&function, grid, &args)
    }
}

/// NVRTC's version as (major, minor).
fn nvrtc_version() -> Result<(i32, i32), KernelError> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: writes two ints.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| device_error("asking NVRTC its version", e))?;
    Ok((major, minor))
}

pub(crate) fn poisoned() -> KernelError {
    KernelError::Device("a lock of the CUDA device was poisoned by a panic".into())
}

#[cfg(test)]
mod tests {
    use super::access_width;

    #[test]
    fn groups_need_whole_rows_and_aligned_tensors() {
        assert_eq!(access_width(70, 2, &[(256, 2), (512, 4), (0, 2)]), 2);
        assert_eq!(access_width(33, 2, &[(256, 2), (512, 4)]), 1);
        // An f32 view starting at an odd element, a bf16 one at an odd element.
        assert_eq!(access_width(70, 2, &[(256, 2), (516, 4)]), 1);
        assert_eq!(access_width(70, 2, &[(258, 2), (512, 4)]), 1);
        assert_eq!(access_width(70, 2, &[(260, 2), (520, 4)]), 2);
        assert_eq!(access_width(768, 4, &[(256, 4), (1032, 2)]), 4);
        assert_eq!(access_width(768, 4, &[(264, 4)]), 1);
        assert_eq!(access_width(766, 4, &[(256, 4)]), 1);
    }
}
