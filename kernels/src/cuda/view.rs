//! Views of ranges of device buffers and the device's id buffers.
//!
//! cudarc's own views are not `Copy`, which [`crate::Backend::View`] must be, so a view
//! here is a device address and a length that borrows its buffer for `'a`: the borrow
//! checker keeps the buffer alive and unaliased by writers exactly as it does for slices.

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};

use super::Cuda;
use crate::bf16::{Input, Output};
use crate::KernelError;

/// A read-only view of `len` f32 values at a device address.
///
/// ```no_run
/// use seqmamba_kernels::{Backend, cuda::Cuda};
/// let cuda = Cuda::new(0)?;
/// let x = cuda.upload(&[1.0, 2.0, 3.0])?;
/// let tail = cuda.view(&x, 1..3);
/// assert_eq!(tail.len(), 2);
/// assert_eq!(cuda.download(tail)?, vec![2.0, 3.0]);
/// # Ok::<(), seqmamba_kernels::KernelError>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct DeviceView<'a> {
    address: u64,
    len: usize,
    _buffer: PhantomData<&'a CudaSlice<f32>>,
}

/// A mutable view of `len` f32 values at a device address; see [`DeviceView`].
#[derive(Debug)]
pub struct DeviceViewMut<'a> {
    address: u64,
    len: usize,
    _buffer: PhantomData<&'a mut CudaSlice<f32>>,
}

/// The address of element `range.start` of a buffer at `base` of `len` elements.
/// Panics on a range outside the buffer, as slicing does.
fn offset(base: u64, len: usize, range: &Range<usize>) -> u64 {
    assert!(
        range.start <= range.end && range.end <= len,
        "device view {range:?} out of bounds of a buffer of {len} elements"
    );
    base + (range.start * std::mem::size_of::<f32>()) as u64
}

impl<'a> DeviceView<'a> {
    /// `range` of the buffer at `base` holding `len` elements.
    pub(crate) fn new(base: u64, len: usize, range: Range<usize>) -> Self {
        Self {
            address: offset(base, len, &range),
            len: range.len(),
            _buffer: PhantomData,
        }
    }

    /// Elements in the view.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address of the first element.
    pub fn address(&self) -> u64 {
        self.address
    }
}

impl<'a> DeviceViewMut<'a> {
    /// `range` of the buffer at `base` holding `len` elements.
    pub(crate) fn new(base: u64, len: usize, range: Range<usize>) -> Self {
        Self {
            address: offset(base, len, &range),
            len: range.len(),
            _buffer: PhantomData,
        }
    }

    /// Elements in the view.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address of the first element.
    pub fn address(&self) -> u64 {
        self.address
    }

    /// A shorter-lived view of the same range.
    pub fn reborrow(&mut self) -> DeviceViewMut<'_> {
        DeviceViewMut {
            address: self.address,
            len: self.len,
            _buffer: PhantomData,
        }
    }
}

/// An owned buffer on the device: f32 values, or bf16 bits (`DeviceBuffer<u16>`, the
/// backend's [`crate::Backend::Bf16Buffer`]). An empty buffer holds no allocation (the
/// driver refuses zero-byte ones) and has address 0.
///
/// ```no_run
/// use seqmamba_kernels::{Backend, cuda::Cuda};
/// let cuda = Cuda::new(0)?;
/// assert_eq!(cuda.zeros(0)?.len(), 0);
/// assert_eq!(cuda.zeros(3)?.len(), 3);
/// assert_eq!(cuda.zeros_bf16(5)?.len(), 5);
/// # Ok::<(), seqmamba_kernels::KernelError>(())
/// ```
#[derive(Debug)]
pub struct DeviceBuffer<T = f32> {
    slice: Option<CudaSlice<T>>,
}

impl<T> DeviceBuffer<T> {
    pub(crate) fn new(slice: Option<CudaSlice<T>>) -> Self {
        Self { slice }
    }

    /// Elements in the buffer.
    pub fn len(&self) -> usize {
        self.slice.as_ref().map_or(0, |s| s.len())
    }

    /// Whether the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The device address of the first element (0 when empty).
    pub(crate) fn address(&self) -> u64 {
        self.slice.as_ref().map_or(0, slice_address)
    }

    /// The allocation, for collectives that take cudarc's own types (`None` when empty).
    pub(crate) fn slice_mut(&mut self) -> Option<&mut CudaSlice<T>> {
        self.slice.as_mut()
    }
}

/// A tensor a kernel reads or writes: its address, its elements, and whether they are
/// bf16 bits (from a [`crate::bf16::Input`] or [`crate::bf16::Output`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeviceTensor {
    pub address: u64,
    pub len: usize,
    pub bf16: bool,
}

impl DeviceTensor {
    fn f32(address: u64, len: usize) -> Self {
        Self {
            address,
            len,
            bf16: false,
        }
    }

    fn bf16(buffer: &DeviceBuffer<u16>) -> Self {
        Self {
            address: buffer.address(),
            len: buffer.len(),
            bf16: true,
        }
    }
}

impl From<Output<'_, Cuda>> for DeviceTensor {
    fn from(out: Output<'_, Cuda>) -> Self {
        match out {
            Output::F32(view) => Self::f32(view.address(), view.len()),
            Output::Bf16(buffer) => Self::bf16(buffer),
        }
    }
}

impl From<Input<'_, Cuda>> for DeviceTensor {
    fn from(x: Input<'_, Cuda>) -> Self {
        match x {
            Input::F32(view) => Self::f32(view.address(), view.len()),
            Input::Bf16(buffer) => Self::bf16(buffer),
        }
    }
}

/// The device address of a slice. Event tracking is off (see `Cuda::new`), so the guard
/// cudarc hands back has nothing to record.
pub(crate) fn slice_address<T>(slice: &CudaSlice<T>) -> u64 {
    let (address, _guard) = cudarc::driver::DevicePtr::device_ptr(slice, slice.stream());
    address
}

/// Token ids, targets, lengths or reset flags on the device, with their host copy: ops
/// check them on the host (an id out of range is an error naming its position, as on the
/// CPU) and the embedding's backward groups tokens by id there.
///
/// ```no_run
/// use seqmamba_kernels::{Backend, cuda::Cuda};
/// let cuda = Cuda::new(0)?;
/// let ids = cuda.upload_ids(&[3, 1, 4])?;
/// assert_eq!(ids.host(), &[3, 1, 4]);
/// # Ok::<(), seqmamba_kernels::KernelError>(())
/// ```
#[derive(Debug)]
pub struct DeviceIds {
    /// `None` when empty (no zero-byte allocations).
    device: Option<CudaSlice<u32>>,
    host: Vec<u32>,
}

impl DeviceIds {
    pub(crate) fn new(device: Option<CudaSlice<u32>>, host: Vec<u32>) -> Self {
        Self { device, host }
    }

    /// The ids as uploaded.
    pub fn host(&self) -> &[u32] {
        &self.host
    }

    /// The device address of the first id (0 when empty).
    pub(crate) fn device_address(&self) -> u64 {
        self.device.as_ref().map_or(0, slice_address)
    }

    /// Overwrites the ids (host copy and device buffer, queued on `stream`) with `data`.
    pub(crate) fn write(
        &mut self,
        stream: &Arc<CudaStream>,
        data: &[u32],
    ) -> Result<(), KernelError> {
        crate::check_len("write_ids", "data", self.host.len(), data)?;
        self.host.copy_from_slice(data);
        match &mut self.device {
            Some(device) => stream
                .memcpy_htod(data, device)
                .map_err(|e| super::device_error("copying ids to the device", e)),
            None => Ok(()),
        }
    }
}

/// Checks that a view holds exactly `expected` elements.
pub(crate) fn check_view(
    op: &'static str,
    tensor: &'static str,
    expected: usize,
    len: usize,
) -> Result<(), KernelError> {
    if len == expected {
        Ok(())
    } else {
        Err(KernelError::Shape {
            op,
            tensor,
            expected,
            actual: len,
        })
    }
}
