//! `seqmamba doctor`: what the CUDA device is and whether a kernel runs on it.

use std::fmt;

use cudarc::driver::{sys, DeviceRepr, LaunchConfig};

use super::{device_error, Cuda};
use crate::Backend;
use crate::KernelError;

/// What [`doctor`] found on device 0.
///
/// ```no_run
/// let report = seqmamba_kernels::cuda::doctor()?;
/// println!("{report}");
/// assert!(report.smoke_test.is_ok());
/// # Ok::<(), seqmamba_kernels::KernelError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Doctor {
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// The CUDA version the driver supports, e.g. (13, 0).
    pub driver_version: (i32, i32),
    /// NVRTC's version, e.g. (13, 0).
    pub nvrtc_version: (i32, i32),
    pub multiprocessors: i32,
    pub total_memory: usize,
    pub free_memory: usize,
    /// `Ok` when a tiny kernel compiled, ran and gave the right answer; else why not.
    pub smoke_test: Result<(), String>,
}

/// Inspects device 0 and runs a tiny kernel on it. Fails only when no device can be
/// opened; a kernel that misbehaves is reported in [`Doctor::smoke_test`].
pub fn doctor() -> Result<Doctor, KernelError> {
    let cuda = Cuda::new(0)?;
    let context = cuda.context();
    let name = context
        .name()
        .map_err(|e| device_error("reading the device name", e))?;
    let compute_capability = context
        .compute_capability()
        .map_err(|e| device_error("reading the compute capability", e))?;
    let mut driver = 0;
    // SAFETY: writes one int.
    unsafe { sys::cuDriverGetVersion(&mut driver) }
        .result()
        .map_err(|e| device_error("reading the driver version", e))?;
    let multiprocessors = context
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(|e| device_error("reading the multiprocessor count", e))?;
    let (free_memory, total_memory) = context
        .mem_get_info()
        .map_err(|e| device_error("reading the memory size", e))?;
    Ok(Doctor {
        name,
        compute_capability,
        driver_version: (driver / 1000, driver % 1000 / 10),
        nvrtc_version: cuda.shared.nvrtc_version,
        multiprocessors,
        total_memory,
        free_memory,
        smoke_test: smoke_test(&cuda).map_err(|e| e.to_string()),
    })
}

#[repr(C)]
struct SmokeArgs {
    x: u64,
    out: u64,
    len: u32,
}

// SAFETY: plain old data laid out as the kernel's `SmokeArgs`.
unsafe impl DeviceRepr for SmokeArgs {}

fn smoke_test(cuda: &Cuda) -> Result<(), KernelError> {
    let len = 1000u32;
    let x: Vec<f32> = (0..len).map(|i| i as f32 * 0.25 - 7.0).collect();
    let x_device = cuda.upload(&x)?;
    let out = cuda.upload(&vec![f32::NAN; len as usize])?;
    let function = cuda.function("smoke", include_str!("smoke.cu"), &[], "smoke_affine")?;
    let args = SmokeArgs {
        x: x_device.address(),
        out: out.address(),
        len,
    };
    cuda.launch(&function, LaunchConfig::for_num_elems(len), &args)?;
    let got = cuda.download(cuda.all(&out))?;
    match x.iter().zip(&got).position(|(&x, &y)| y != 2.0 * x + 1.0) {
        None => Ok(()),
        Some(i) => Err(KernelError::Device(format!(
            "smoke kernel wrote {} at {i}, expected {}",
            got[i],
            2.0 * x[i] + 1.0
        ))),
    }
}

impl fmt::Display for Doctor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const GIB: f64 = (1u64 << 30) as f64;
        writeln!(f, "device:             {}", self.name)?;
        let (major, minor) = self.compute_capability;
        writeln!(
            f,
            "compute capability: {major}.{minor} (kernels built for sm_{major}{minor})"
        )?;
        writeln!(f, "multiprocessors:    {}", self.multiprocessors)?;
        let (major, minor) = self.driver_version;
        writeln!(f, "driver supports:    CUDA {major}.{minor}")?;
        let (major, minor) = self.nvrtc_version;
        writeln!(f, "NVRTC:              {major}.{minor}")?;
        writeln!(
            f,
            "memory:             {:.1} GiB free of {:.1} GiB",
            self.free_memory as f64 / GIB,
            self.total_memory as f64 / GIB
        )?;
        match &self.smoke_test {
            Ok(()) => write!(f, "smoke kernel:       ran, correct"),
            Err(why) => write!(f, "smoke kernel:       FAILED: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doctor_reports_or_explains() {
        match doctor() {
            Ok(report) => {
                println!("{report}");
                assert_eq!(report.smoke_test, Ok(()));
                assert!(report.total_memory > 0 && report.multiprocessors > 0);
            }
            Err(KernelError::Device(reason)) => {
                println!("skipping: no CUDA device ({reason})");
                assert!(!reason.is_empty());
            }
            Err(other) => panic!("unexpected error kind: {other}"),
        }
    }
}
