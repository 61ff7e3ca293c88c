//! The CUDA device: context, stream and the run-time compiled kernel modules.
//!
//! Nothing CUDA is needed to build this crate: the driver (`libcuda`) and NVRTC
//! (`libnvrtc`) are loaded when [`Cuda::new`] runs, and a machine without them gets a
//! [`KernelError::Device`] that says what is missing. Kernels live as `.cu` files beside
//! their Rust launcher, are embedded with `include_str!`, compiled by NVRTC to CUBIN for the
//! device's own architecture on first use and cached on disk (see [`cache`]).

mod cache;
mod doctor;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream};
use cudarc::driver::{DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits};
use cudarc::nvrtc::Ptx;

pub use doctor::{doctor, Doctor};

use crate::KernelError;

/// One CUDA device with one stream; every op is queued on that stream in call order.
///
/// ```no_run
/// use seqmamba_kernels::cuda::Cuda;
/// let cuda = Cuda::new(0)?;
/// let x = cuda.upload(&[1.0, 2.0])?;
/// assert_eq!(cuda.download(&x)?, vec![1.0, 2.0]);
/// # Ok::<(), seqmamba_kernels::KernelError>(())
/// ```
pub struct Cuda {
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: String,
    nvrtc_version: (i32, i32),
    modules: Mutex<HashMap<(&'static str, String), Arc<CudaModule>>>,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda")
            .field("ordinal", &self.context.ordinal())
            .field("arch", &self.arch)
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
        let stream = context.default_stream();
        Ok(Self {
            context,
            stream,
            arch: format!("sm_{major}{minor}"),
            nvrtc_version,
            modules: Mutex::new(HashMap::new()),
        })
    }

    /// The stream every op of this device runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The driver context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.context
    }

    /// The architecture kernels are compiled for, e.g. `sm_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// A buffer holding `data`.
    pub fn upload<T: DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>, KernelError> {
        self.stream
            .clone_htod(data)
            .map_err(|e| device_error("copying to the device", e))
    }

    /// A zero-filled buffer of `len` elements.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<T>, KernelError> {
        self.stream
            .alloc_zeros(len)
            .map_err(|e| device_error(&format!("allocating {len} elements"), e))
    }

    /// A buffer of `len` elements with undefined contents, for scratch that a kernel
    /// fully writes before anything reads it.
    pub(crate) fn scratch<T: DeviceRepr>(&self, len: usize) -> Result<CudaSlice<T>, KernelError> {
        // SAFETY: device memory is never read on the host uninitialised; the callers'
        // kernels write every element before reading it.
        unsafe { self.stream.alloc(len) }
            .map_err(|e| device_error(&format!("allocating {len} elements"), e))
    }

    /// The contents of a buffer, on the host (waits for the stream).
    pub fn download<T: DeviceRepr>(&self, buffer: &CudaSlice<T>) -> Result<Vec<T>, KernelError> {
        self.stream
            .clone_dtoh(buffer)
            .map_err(|e| device_error("copying from the device", e))
    }

    /// Waits until every queued op has finished.
    pub fn synchronize(&self) -> Result<(), KernelError> {
        self.stream
            .synchronize()
            .map_err(|e| device_error("synchronizing the stream", e))
    }

    /// The device address of `buffer`, for a kernel's argument struct.
    pub(crate) fn address<T>(&self, buffer: &CudaSlice<T>) -> u64 {
        // Event tracking is off, so the guard has nothing to record.
        let (address, _guard) = buffer.device_ptr(&self.stream);
        address
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
        let key = (module, defines.join(" "));
        let mut modules = self
            .modules
            .lock()
            .map_err(|_| KernelError::Device("the module cache lock was poisoned".into()))?;
        let loaded = match modules.get(&key) {
            Some(loaded) => loaded.clone(),
            None => {
                let mut options = vec![
                    format!("--gpu-architecture={}", self.arch),
                    "--std=c++17".to_string(),
                    "--extra-device-vectorization".to_string(),
                ];
                options.extend(defines.iter().cloned());
                let cubin = cache::compiled(module, source, &options, self.nvrtc_version)?;
                let loaded = self
                    .context
                    .load_module(Ptx::from_binary(cubin))
                    .map_err(|e| device_error(&format!("loading kernel module {module}"), e))?;
                modules.insert(key, loaded.clone());
                loaded
            }
        };
        loaded
            .load_function(name)
            .map_err(|e| device_error(&format!("finding kernel {name} in {module}"), e))
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
        let mut builder = self.stream.launch_builder(function);
        builder.arg(args);
        // SAFETY: every kernel of this crate takes exactly one argument struct, laid out
        // as `A` (`#[repr(C)]`), whose addresses point into live buffers of this stream.
        unsafe { builder.launch(config) }
            .map(|_| ())
            .map_err(|e| device_error("launching a kernel", e))
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

/// Checks that a device buffer holds exactly `expected` elements.
pub(crate) fn check_device_len<T>(
    op: &'static str,
    tensor: &'static str,
    expected: usize,
    buffer: &CudaSlice<T>,
) -> Result<(), KernelError> {
    if buffer.len() == expected {
        Ok(())
    } else {
        Err(KernelError::Shape {
            op,
            tensor,
            expected,
            actual: buffer.len(),
        })
    }
}
