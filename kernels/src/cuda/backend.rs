//! [`Backend`] for [`Cuda`]: buffer management here, each op in its module's `cuda.rs`.

use std::ops::Range;

use cudarc::driver::{result, sys, CudaGraph, DeviceRepr, ValidAsZeroBits};

use super::{
    device_error, Cuda, DeviceBuffer, DeviceIds, DeviceView, DeviceViewMut, GemmPrecision, TimedOp,
};
use crate::adamw::AdamW;
use crate::backend::Backend;
use crate::bf16::{Bf16View, Input, Output};
use crate::conv1d::ConvDims;
use crate::cross_entropy::CrossEntropyDims;
use crate::elementwise::ColumnBlock;
use crate::embedding::EmbeddingDims;
use crate::gemm::GemmDims;
use crate::pool::{PoolDims, Pooling};
use crate::rmsnorm::NormDims;
use crate::scan::{ScanDims, ScanGrads, ScanInputs};
use crate::KernelError;
use crate::{adamw, conv1d, cross_entropy, elementwise, embedding, gemm, pool, rmsnorm, scan};

impl Cuda {
    /// Queues zeroing `bytes` bytes at `address`.
    pub(crate) fn fill_zero_at(&self, address: u64, bytes: usize) -> Result<(), KernelError> {
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: the caller's view covers `bytes` bytes at `address`.
        unsafe { result::memset_d8_async(address, 0, bytes, self.shared.stream.cu_stream()) }
            .map_err(|e| device_error("zeroing device memory", e))
    }
}

impl Cuda {
    /// A zero-filled buffer of `len` elements (no allocation when empty).
    fn zeroed<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<DeviceBuffer<T>, KernelError> {
        if len == 0 {
            return Ok(DeviceBuffer::new(None));
        }
        self.shared
            .stream
            .alloc_zeros(len)
            .map(|slice| DeviceBuffer::new(Some(slice)))
            .map_err(|e| device_error(&format!("allocating {len} elements"), e))
    }

    /// `len` elements at `address`, on the host.
    fn download_at<T: DeviceRepr + Default + Clone>(
        &self,
        address: u64,
        len: usize,
    ) -> Result<Vec<T>, KernelError> {
        let mut host = vec![T::default(); len];
        if !host.is_empty() {
            // SAFETY: the caller's view or buffer covers `len` elements at `address`; the
            // stream is synchronised before `host` is read or dropped.
            unsafe {
                result::memcpy_dtoh_async(&mut host, address, self.shared.stream.cu_stream())
            }
            .map_err(|e| device_error("copying from the device", e))?;
        }
        self.synchronize()?;
        Ok(host)
    }
}

impl Backend for Cuda {
    type Buffer = DeviceBuffer;
    type Ids = DeviceIds;
    type View<'a> = DeviceView<'a>;
    type ViewMut<'a> = DeviceViewMut<'a>;

    fn name(&self) -> String {
        let name = self
            .shared
            .context
            .name()
            .unwrap_or_else(|_| "unknown GPU".into());
        match self.gemm_precision() {
            Ok(GemmPrecision::F32) | Err(_) => format!("cuda ({name}, {})", self.shared.arch),
            Ok(precision) => format!("cuda ({name}, {}, {precision} GEMMs)", self.shared.arch),
        }
    }

    fn zeros(&self, len: usize) -> Result<DeviceBuffer, KernelError> {
        self.zeroed(len)
    }

    fn upload(&self, data: &[f32]) -> Result<DeviceBuffer, KernelError> {
        self.upload_slice(data).map(DeviceBuffer::new)
    }

    fn download(&self, view: DeviceView<'_>) -> Result<Vec<f32>, KernelError> {
        self.download_at(view.address(), view.len())
    }

    fn upload_ids(&self, ids: &[u32]) -> Result<DeviceIds, KernelError> {
        Ok(DeviceIds::new(self.upload_slice(ids)?, ids.to_vec()))
    }

    fn write_ids(&self, ids: &mut DeviceIds, data: &[u32]) -> Result<(), KernelError> {
        ids.write(&self.shared.stream, data)
    }

    /// A CUDA graph: one launch replays a whole decoding step's ~300 kernels.
    type Recording = CudaGraph;

    fn record<E: From<KernelError>>(
        &self,
        ops: impl FnOnce() -> Result<(), E>,
    ) -> Result<Option<CudaGraph>, E> {
        let stream = &self.shared.stream;
        // Relaxed: the first use of a kernel may load its module during the recording.
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(|e| device_error("starting a CUDA graph capture", e))?;
        let outcome = ops();
        // The capture ends whatever `ops` did, so the stream is usable again.
        let graph = stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(|e| device_error("ending a CUDA graph capture", e));
        outcome?;
        Ok(graph?)
    }

    fn replay(&self, recording: &CudaGraph) -> Result<(), KernelError> {
        recording
            .launch()
            .map_err(|e| device_error("replaying a CUDA graph", e))
    }

    fn buffer_len(&self, buffer: &DeviceBuffer) -> usize {
        buffer.len()
    }

    fn view<'a>(&self, buffer: &'a DeviceBuffer, range: Range<usize>) -> DeviceView<'a> {
        DeviceView::new(buffer.address(), buffer.len(), range)
    }

    fn view_mut<'a>(&self, buffer: &'a mut DeviceBuffer, range: Range<usize>) -> DeviceViewMut<'a> {
        DeviceViewMut::new(buffer.address(), buffer.len(), range)
    }

    fn reborrow_mut<'a, 'b>(&self, view: &'b mut DeviceViewMut<'a>) -> DeviceViewMut<'b>
    where
        'a: 'b,
    {
        view.reborrow()
    }

    fn split_mut<'a, const K: usize>(
        &self,
        buffer: &'a mut DeviceBuffer,
        ranges: [Range<usize>; K],
    ) -> [DeviceViewMut<'a>; K] {
        let (base, len) = (buffer.address(), buffer.len());
        let mut consumed = 0;
        ranges.map(|range| {
            assert!(
                range.start >= consumed,
                "split_mut: ranges overlap or are unsorted"
            );
            consumed = range.end;
            DeviceViewMut::new(base, len, range)
        })
    }

    fn fill_zero(&self, dst: DeviceViewMut<'_>) -> Result<(), KernelError> {
        self.timed(TimedOp::Other, || {
            self.fill_zero_at(dst.address(), 4 * dst.len())
        })
    }

    fn copy(&self, src: DeviceView<'_>, dst: DeviceViewMut<'_>) -> Result<(), KernelError> {
        super::check_view("copy", "dst", src.len(), dst.len())?;
        if src.is_empty() {
            return Ok(());
        }
        self.timed(TimedOp::Other, || {
            // SAFETY: both views cover `src.len()` f32s; `dst` is borrowed mutably, so the
            // two do not overlap.
            unsafe {
                result::memcpy_dtod_async(
                    dst.address(),
                    src.address(),
                    src.len() * 4,
                    self.shared.stream.cu_stream(),
                )
            }
            .map_err(|e| device_error("copying on the device", e))
        })
    }

    fn copy_columns(
        &self,
        block: ColumnBlock,
        src: DeviceView<'_>,
        dst: DeviceViewMut<'_>,
    ) -> Result<(), KernelError> {
        self.timed(TimedOp::Other, || {
            elementwise::cuda::copy_columns(self, block, src, dst)
        })
    }

    fn add(
        &self,
        a: DeviceView<'_>,
        b: DeviceView<'_>,
        out: DeviceViewMut<'_>,
    ) -> Result<(), KernelError> {
        self.timed(TimedOp::Other, || elementwise::cuda::add(self, a, b, out))
    }

    fn scale(&self, x: DeviceViewMut<'_>, factor: f32) -> Result<(), KernelError> {
        self.timed(TimedOp::Other, || elementwise::cuda::scale(self, x, factor))
    }

    fn sum_squares(&self, x: DeviceView<'_>) -> Result<f64, KernelError> {
        self.timed(TimedOp::Other, || elementwise::cuda::sum_squares(self, x))
    }

    fn gemm(
        &self,
        dims: GemmDims,
        a: DeviceView<'_>,
        b: DeviceView<'_>,
        c: DeviceViewMut<'_>,
        accumulate: bool,
    ) -> Result<(), KernelError> {
        self.timed(TimedOp::Gemm, || {
            gemm::cuda::gemm(self, dims, a, b, c, accumulate)
        })
    }

    type Bf16Buffer = DeviceBuffer<u16>;

    fn zeros_bf16(&self, len: usize) -> Result<DeviceBuffer<u16>, KernelError> {
        self.zeroed(len)
    }

    fn bf16_len(&self, buffer: &DeviceBuffer<u16>) -> usize {
        buffer.len()
    }

    fn download_bf16(&self, buffer: &DeviceBuffer<u16>) -> Result<Vec<u16>, KernelError> {
        self.download_at(buffer.address(), buffer.len())
    }

    fn round_bf16(
        &self,
        src: DeviceView<'_>,
        dst: &mut DeviceBuffer<u16>,
    ) -> Result<(), KernelError> {
        self.timed(TimedOp::Cast, || gemm::cuda::round_bf16(self, src, dst))
    }

    fn widen_bf16(
        &self,
        src: &DeviceBuffer<u16>,
        dst: DeviceViewMut<'_>,
    ) -> Result<(), KernelError> {
        self.timed(TimedOp::Cast, || gemm::cuda::widen_bf16(self, src, dst))
    }

    fn gemm_bf16(
        &self,
        dims: GemmDims,
        a: Bf16View<'_, Self>,
        b: Bf16View<'_, Self>,
        c: Output<'_, Self>,
        accumulate: bool,
    ) -> Result<(), KernelError> {
        self.timed(TimedOp::Gemm, || {
            gemm::cuda::gemm_bf16(self, dims, a, b, c.into(), accumulate)
        })
    }

    fn bf16_gemms(&self) -> bool {
        matches!(self.gemm_precision(), Ok(GemmPrecision::Bf16))
    }

    fn conv1d_forward(
        &self,
        dims: ConvDims,
        x: Input<'_, Self>,
        weight: DeviceView<'_>,
        bias: DeviceView<'_>,
        resets: Option<&DeviceIds>,
        state: Option<DeviceViewMut<'_>>,
        out: Output<'_, Self>,
    ) -> Result<(), KernelError> {
        self.timed(TimedOp::Conv, || {
            conv1d::cuda::forward(
                self,
                dims,
                x.into(),
                weight,
                bias,
                resets,
                state,
                out.into(),
            )
        })
    }

    fn conv1d_backward(
        &self,
        dims: ConvDims,
        x: Input<'_, Self>,
        weight: DeviceView<'_>,
        bias: DeviceView<'_>,
        resets: Option<&DeviceIds>,
        initial_state: Option<DeviceView<'_>>,
        d_out: Input<'_, Self>,
        dx: Output<'_, Self>,
        dweight: DeviceViewMut<'_>,
        dbias: DeviceViewMut<'_>,
    ) -> Result<(), KernelError> {
        self.timed(TimedOp::Conv, || {
            conv1d::cuda::backward(
                self,
                dims,
                x.into(),
                weight,
                bias,
                resets,
                initial_state,
                d_out.into(),
                dx.into(),
                dweight,
                dbias,
            )
        })
    }

    fn scan_forward(
        &self,
        dims: ScanDims,
        inputs: &ScanInputs<DeviceView<'_>, Input<'_, Self>>,
        resets: Option<&DeviceIds>,
        state: Option<DeviceViewMut<'_>>,
        checkpoints: Option<DeviceViewMut<'_>>,
        out: Output<'_, Self>,
    ) -> Result<(), KernelError> {
        self.timed(TimedOp::Scan, || {
            scan::cuda::forward(self, dims, inputs, resets, state, checkpoints, out.into())
        })
    }

    fn scan_backward(
        &self,
        dims: ScanDims,
        inputs: &ScanInputs<DeviceView<'_>, Input<'_, Self>>,
        resets: Option<&DeviceIds>,
        checkpoints: DeviceView<'_>,
        d_out: Input<'_, Self>,
        grads: ScanGrads<DeviceViewMut<'_>, Output<'_, Self>>,
    ) -> Result<(), KernelError> {
        let grads = ScanGrads {
            du: grads.du.into(),
            ddelta: grads.ddelta.into(),
            da_log: grads.da_log,
            db: grads.db,
            dc: grads.dc,
            dd_skip: grads.dd_skip,
            ddelta_bias: grads.ddelta_bias,
            dz: grads.dz.map(Into::into),
            out: grads.out.map(Into::into),
        };
        self.timed(TimedOp::Scan, || {
            scan::cuda::backward(self, dims, inputs, resets, checkpoints, d_out.into(), grads)
        })
    }

    fn rmsnorm_forward(
        &self,
        dims: NormDims,
        x: DeviceView<'_>,
        weight: DeviceView<'_>,
        out: Output<'_, Self>,
        rstd: DeviceViewMut<'_>,
    ) -> Result<(), KernelError> {
        self.timed(TimedOp::Norm, || {
            rmsnorm::cuda::forward(self, dims, x, weight, out.into(), rstd)
        })
    }

    fn add_rmsnorm_forward(
        &self,
        dims: NormDims,
        residual: DeviceView<'_>,
        branch: DeviceView<'_>,
        weight: DeviceView<'_>,
        sum: DeviceViewMut<'_>,
        out: Output<'_, Self>,
        rstd: DeviceViewMut<'_>,
    ) -> Result<(), KernelError> {
        self.timed(TimedOp::Norm, || {
            rmsnorm::cuda::add_forward(self, dims, residual, branch, weight, sum, out.into(), rstd)
        })
    }

    fn rmsnorm_backward(
        &self,
        dims: NormDims,
        x: DeviceView<'_>,
        weight: DeviceView<'_>,
        rstd: DeviceView<'_>,
        d_out: DeviceView<'_>,
        dx: DeviceViewMut<'_>,
        dx_copy: Option<&mut DeviceBuffer<u16>>,
        dweight: DeviceViewMut<'_>,
    ) -> Result<(), KernelError> {
        self.timed(TimedOp::Norm, || {
            rmsnorm::cuda::backward(self, dims, x, weight, rstd, d_out, dx, dx_copy, dweight)
        })
    }

    fn embedding_forward(
        &self,
        dims: EmbeddingDims,
        ids: &DeviceIds,
        table: DeviceView<'_>,
        out: DeviceViewMut<'_>,
    ) -> Result<(), KernelError> {
        self.timed(TimedOp::Other, || {
            embedding::cuda::forward(self, dims, ids, table, out)
        })
    }

    fn embedding_backward(
        &self,
        dims: EmbeddingDims,
        ids: &DeviceIds,
        d_out: DeviceView<'_>,
        dtable: DeviceViewMut<'_>,
    ) -> Result<(), KernelError> {
        self.timed(TimedOp::Other, || {
            embedding::cuda::backward(self, dims, ids, d_out, dtable)
        })
    }

    fn cross_entropy(
        &self,
        dims: CrossEntropyDims,
        logits: DeviceView<'_>,
        targets: &DeviceIds,
        ignore_index: u32,
        losses: DeviceViewMut<'_>,
        dlogits: Option<DeviceViewMut<'_>>,
        grad_scale: f32,
    ) -> Result<(), KernelError> {
        self.timed(TimedOp::Loss, || {
            cross_entropy::cuda::forward_backward(
                self,
                dims,
                logits,
                targets,
                ignore_index,
                losses,
                dlogits,
                grad_scale,
            )
        })
    }

    fn pool_forward(
        &self,
        dims: PoolDims,
        pooling: Pooling,
        lengths: &DeviceIds,
        x: DeviceView<'_>,
        out: DeviceViewMut<'_>,
    ) -> Result<(), KernelError> {
        self.timed(TimedOp::Other, || {
            pool::cuda::forward(self, dims, pooling, lengths, x, out)
        })
    }

    fn pool_backward(
        &self,
        dims: PoolDims,
        pooling: Pooling,
        lengths: &DeviceIds,
        d_out: DeviceView<'_>,
        dx: DeviceViewMut<'_>,
    ) -> Result<(), KernelError> {
        self.timed(TimedOp::Other, || {
            pool::cuda::backward(self, dims, pooling, lengths, d_out, dx)
        })
    }

    fn reverse(
        &self,
        dims: PoolDims,
        lengths: &DeviceIds,
        x: DeviceView<'_>,
        out: DeviceViewMut<'_>,
    ) -> Result<(), KernelError> {
        self.timed(TimedOp::Other, || {
            pool::cuda::reverse(self, dims, lengths, x, out)
        })
    }

    fn adamw(
        &self,
        config: &AdamW,
        step: u64,
        decay_len: usize,
        params: DeviceViewMut<'_>,
        grads: DeviceView<'_>,
        m: DeviceViewMut<'_>,
        v: DeviceViewMut<'_>,
    ) -> Result<(), KernelError> {
        self.timed(TimedOp::Optimizer, || {
            adamw::cuda::step(self, config, step, decay_len, params, grads, m, v)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{device, random};
    use crate::Backend;

    #[test]
    fn cuda_views_copy_fill_and_split() {
        let Some(cuda) = device() else { return };
        let data = random(10, 1);
        let mut buffer = cuda.upload(&data).unwrap();
        assert_eq!(cuda.download(cuda.view(&buffer, 2..5)).unwrap(), data[2..5]);
        let [mut low, high] = cuda.split_mut(&mut buffer, [0..3, 6..9]);
        cuda.fill_zero(cuda.reborrow_mut(&mut low)).unwrap();
        cuda.fill_zero(high).unwrap();
        let mut want = data.clone();
        want[..3].fill(0.0);
        want[6..9].fill(0.0);
        assert_eq!(cuda.download(cuda.all(&buffer)).unwrap(), want);
        let source = cuda.upload(&[7.0, 8.0]).unwrap();
        cuda.copy(cuda.all(&source), cuda.view_mut(&mut buffer, 4..6))
            .unwrap();
        want[4..6].copy_from_slice(&[7.0, 8.0]);
        assert_eq!(cuda.download(cuda.all(&buffer)).unwrap(), want);
        assert!(cuda
            .copy(cuda.all(&source), cuda.view_mut(&mut buffer, 0..3))
            .is_err());
        assert_eq!(cuda.upload_ids(&[4, 2]).unwrap().host(), &[4, 2]);
        // Empty buffers allocate nothing and still give (empty) views.
        let empty = cuda.zeros(0).unwrap();
        assert!(cuda.download(cuda.all(&empty)).unwrap().is_empty());
        assert_eq!(cuda.upload(&[]).unwrap().len(), 0);
    }
}
