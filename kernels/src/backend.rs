//! The op interface every compute backend implements.

use std::ops::Range;

use crate::adamw::AdamW;
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

/// The ops of the Mamba backbone, forward and backward, over a backend's own buffers.
///
/// Model code is written once against this trait. Parameters, gradients and optimizer
/// moments each live in one flat [`Backend::Buffer`]; ops take views of ranges of it.
/// Semantics of every op are documented on the CPU function of its module
/// (e.g. [`crate::scan::cpu::forward`]), which is the reference implementation.
/// A backend is a cheap handle: clones share one device.
pub trait Backend: Clone + Send + Sync {
    /// Owned f32 storage.
    type Buffer: Send + Sync;
    /// Owned u32 storage (token ids, targets, lengths, reset flags).
    type Ids: Send + Sync;
    /// A read-only view of a range of a buffer.
    type View<'a>: Copy
    where
        Self: 'a;
    /// A mutable view of a range of a buffer.
    type ViewMut<'a>
    where
        Self: 'a;

    /// A human-readable name, e.g. `cpu (2 threads)`.
    fn name(&self) -> String;
    /// A zero-filled buffer of `len` elements.
    fn zeros(&self, len: usize) -> Result<Self::Buffer, KernelError>;
    /// A buffer holding `data`.
    fn upload(&self, data: &[f32]) -> Result<Self::Buffer, KernelError>;
    /// The contents of a view, on the host.
    fn download(&self, view: Self::View<'_>) -> Result<Vec<f32>, KernelError>;
    /// An id buffer holding `ids`.
    fn upload_ids(&self, ids: &[u32]) -> Result<Self::Ids, KernelError>;
    /// Overwrites an id buffer with `data` of the same length, in place (a recording that
    /// reads the buffer sees the new ids).
    fn write_ids(&self, ids: &mut Self::Ids, data: &[u32]) -> Result<(), KernelError>;
    /// Ops recorded once and replayed: a CUDA graph. Backends that gain nothing from
    /// recording never make one.
    type Recording;
    /// Records the ops `ops` queues, without running them, for [`Backend::replay`]; `None`
    /// where this backend does not record (then run `ops` itself each time). Only ops on
    /// buffers that outlive the recording, and no reads back to the host, may be recorded.
    fn record<E: From<KernelError>>(
        &self,
        ops: impl FnOnce() -> Result<(), E>,
    ) -> Result<Option<Self::Recording>, E>;
    /// Runs a recording's ops again, on the buffers' current contents.
    fn replay(&self, recording: &Self::Recording) -> Result<(), KernelError>;
    /// Elements in a buffer.
    fn buffer_len(&self, buffer: &Self::Buffer) -> usize;
    /// A view of `range` of `buffer`.
    fn view<'a>(&self, buffer: &'a Self::Buffer, range: Range<usize>) -> Self::View<'a>;
    /// A mutable view of `range` of `buffer`.
    fn view_mut<'a>(&self, buffer: &'a mut Self::Buffer, range: Range<usize>) -> Self::ViewMut<'a>;
    /// A view of the whole of `buffer`.
    fn all<'a>(&self, buffer: &'a Self::Buffer) -> Self::View<'a> {
        self.view(buffer, 0..self.buffer_len(buffer))
    }
    /// A mutable view of the whole of `buffer`.
    fn all_mut<'a>(&self, buffer: &'a mut Self::Buffer) -> Self::ViewMut<'a> {
        let len = self.buffer_len(buffer);
        self.view_mut(buffer, 0..len)
    }
    /// A shorter-lived copy of a mutable view, to pass it to several ops in turn.
    fn reborrow_mut<'a, 'b>(&self, view: &'b mut Self::ViewMut<'a>) -> Self::ViewMut<'b>
    where
        'a: 'b;
    /// Disjoint mutable views of one buffer; `ranges` must be ascending and disjoint.
    fn split_mut<'a, const K: usize>(
        &self,
        buffer: &'a mut Self::Buffer,
        ranges: [Range<usize>; K],
    ) -> [Self::ViewMut<'a>; K];

    /// `dst = 0`.
    fn fill_zero(&self, dst: Self::ViewMut<'_>) -> Result<(), KernelError>;
    /// `dst = src`.
    fn copy(&self, src: Self::View<'_>, dst: Self::ViewMut<'_>) -> Result<(), KernelError>;
    /// See [`crate::elementwise::copy_columns`].
    fn copy_columns(
        &self,
        block: ColumnBlock,
        src: Self::View<'_>,
        dst: Self::ViewMut<'_>,
    ) -> Result<(), KernelError>;
    /// `out = a + b`.
    fn add(
        &self,
        a: Self::View<'_>,
        b: Self::View<'_>,
        out: Self::ViewMut<'_>,
    ) -> Result<(), KernelError>;
    /// `x *= factor`.
    fn scale(&self, x: Self::ViewMut<'_>, factor: f32) -> Result<(), KernelError>;
    /// `Σ x²`, deterministic.
    fn sum_squares(&self, x: Self::View<'_>) -> Result<f64, KernelError>;

    /// See [`crate::gemm::gemm`].
    fn gemm(
        &self,
        dims: GemmDims,
        a: Self::View<'_>,
        b: Self::View<'_>,
        c: Self::ViewMut<'_>,
        accumulate: bool,
    ) -> Result<(), KernelError>;

    /// Owned bf16 storage (raw bits): copies of GEMM operands for [`Backend::gemm_bf16`].
    type Bf16Buffer: Send + Sync;
    /// A zero-filled bf16 buffer of `len` elements.
    fn zeros_bf16(&self, len: usize) -> Result<Self::Bf16Buffer, KernelError>;
    /// Elements in a bf16 buffer.
    fn bf16_len(&self, buffer: &Self::Bf16Buffer) -> usize;
    /// The bits of a bf16 buffer, on the host.
    fn download_bf16(&self, buffer: &Self::Bf16Buffer) -> Result<Vec<u16>, KernelError>;
    /// `dst = bf16(src)`, the whole of `dst` (see [`crate::bf16::round`]).
    fn round_bf16(
        &self,
        src: Self::View<'_>,
        dst: &mut Self::Bf16Buffer,
    ) -> Result<(), KernelError>;
    /// `dst = src` widened to f32 (see [`crate::bf16::widen`]).
    fn widen_bf16(&self, src: &Self::Bf16Buffer, dst: Self::ViewMut<'_>)
        -> Result<(), KernelError>;
    /// See [`crate::bf16::gemm`]. A bf16 `c` (all of its buffer) gets the rounded f32
    /// result (accumulating: of its widened values plus the product).
    fn gemm_bf16(
        &self,
        dims: GemmDims,
        a: Bf16View<'_, Self>,
        b: Bf16View<'_, Self>,
        c: Output<'_, Self>,
        accumulate: bool,
    ) -> Result<(), KernelError>;
    /// Whether training should run its large GEMMs on bf16 copies of their operands
    /// ([`Backend::gemm_bf16`]): true where the device was asked for bf16 GEMMs.
    fn bf16_gemms(&self) -> bool;

    /// See [`crate::conv1d::forward`]. `x` may be bf16, and `out` (bf16 training keeps u
    /// so).
    #[allow(clippy::too_many_arguments)]
    fn conv1d_forward(
        &self,
        dims: ConvDims,
        x: Input<'_, Self>,
        weight: Self::View<'_>,
        bias: Self::View<'_>,
        resets: Option<&Self::Ids>,
        state: Option<Self::ViewMut<'_>>,
        out: Output<'_, Self>,
    ) -> Result<(), KernelError>;
    /// See [`crate::conv1d::backward`]. `x` and `d_out` may be bf16.
    #[allow(clippy::too_many_arguments)]
    fn conv1d_backward(
        &self,
        dims: ConvDims,
        x: Input<'_, Self>,
        weight: Self::View<'_>,
        bias: Self::View<'_>,
        resets: Option<&Self::Ids>,
        initial_state: Option<Self::View<'_>>,
        d_out: Input<'_, Self>,
        dx: Output<'_, Self>,
        dweight: Self::ViewMut<'_>,
        dbias: Self::ViewMut<'_>,
    ) -> Result<(), KernelError>;

    /// See [`crate::scan::cpu::forward`]. The streams u, delta and z come as f32 or all
    /// as bf16; `out` may be bf16.
    fn scan_forward(
        &self,
        dims: ScanDims,
        inputs: &ScanInputs<Self::View<'_>, Input<'_, Self>>,
        resets: Option<&Self::Ids>,
        state: Option<Self::ViewMut<'_>>,
        checkpoints: Option<Self::ViewMut<'_>>,
        out: Output<'_, Self>,
    ) -> Result<(), KernelError>;
    /// See [`crate::scan::cpu::backward`]. The streams u, delta, z and `d_out` come as f32
    /// or all as bf16; `du` may be bf16, and `ddelta`, `dz` and `out` (the same kind).
    fn scan_backward(
        &self,
        dims: ScanDims,
        inputs: &ScanInputs<Self::View<'_>, Input<'_, Self>>,
        resets: Option<&Self::Ids>,
        checkpoints: Self::View<'_>,
        d_out: Input<'_, Self>,
        grads: ScanGrads<Self::ViewMut<'_>, Output<'_, Self>>,
    ) -> Result<(), KernelError>;

    /// See [`crate::rmsnorm::forward`]; `out` may be bf16 (a GEMM's operand).
    fn rmsnorm_forward(
        &self,
        dims: NormDims,
        x: Self::View<'_>,
        weight: Self::View<'_>,
        out: Output<'_, Self>,
        rstd: Self::ViewMut<'_>,
    ) -> Result<(), KernelError>;
    /// See [`crate::rmsnorm::add_forward`]; `out` may be bf16 (a GEMM's operand).
    #[allow(clippy::too_many_arguments)]
    fn add_rmsnorm_forward(
        &self,
        dims: NormDims,
        residual: Self::View<'_>,
        branch: Self::View<'_>,
        weight: Self::View<'_>,
        sum: Self::ViewMut<'_>,
        out: Output<'_, Self>,
        rstd: Self::ViewMut<'_>,
    ) -> Result<(), KernelError>;
    /// See [`crate::rmsnorm::backward`]; with `dx_copy`, the new dx's bf16 rounding is
    /// written there too (the next mixer's GEMMs read it).
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_backward(
        &self,
        dims: NormDims,
        x: Self::View<'_>,
        weight: Self::View<'_>,
        rstd: Self::View<'_>,
        d_out: Self::View<'_>,
        dx: Self::ViewMut<'_>,
        dx_copy: Option<&mut Self::Bf16Buffer>,
        dweight: Self::ViewMut<'_>,
    ) -> Result<(), KernelError>;

    /// See [`crate::embedding::forward`].
    fn embedding_forward(
        &self,
        dims: EmbeddingDims,
        ids: &Self::Ids,
        table: Self::View<'_>,
        out: Self::ViewMut<'_>,
    ) -> Result<(), KernelError>;
    /// See [`crate::embedding::backward`].
    fn embedding_backward(
        &self,
        dims: EmbeddingDims,
        ids: &Self::Ids,
        d_out: Self::View<'_>,
        dtable: Self::ViewMut<'_>,
    ) -> Result<(), KernelError>;

    /// See [`crate::cross_entropy::forward_backward`].
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy(
        &self,
        dims: CrossEntropyDims,
        logits: Self::View<'_>,
        targets: &Self::Ids,
        ignore_index: u32,
        losses: Self::ViewMut<'_>,
        dlogits: Option<Self::ViewMut<'_>>,
        grad_scale: f32,
    ) -> Result<(), KernelError>;

    /// See [`crate::pool::forward`].
    fn pool_forward(
        &self,
        dims: PoolDims,
        pooling: Pooling,
        lengths: &Self::Ids,
        x: Self::View<'_>,
        out: Self::ViewMut<'_>,
    ) -> Result<(), KernelError>;
    /// See [`crate::pool::backward`].
    fn pool_backward(
        &self,
        dims: PoolDims,
        pooling: Pooling,
        lengths: &Self::Ids,
        d_out: Self::View<'_>,
        dx: Self::ViewMut<'_>,
    ) -> Result<(), KernelError>;
    /// See [`crate::pool::reverse`].
    fn reverse(
        &self,
        dims: PoolDims,
        lengths: &Self::Ids,
        x: Self::View<'_>,
        out: Self::ViewMut<'_>,
    ) -> Result<(), KernelError>;

    /// See [`crate::adamw::step`].
    #[allow(clippy::too_many_arguments)]
    fn adamw(
        &self,
        config: &AdamW,
        step: u64,
        decay_len: usize,
        params: Self::ViewMut<'_>,
        grads: Self::View<'_>,
        m: Self::ViewMut<'_>,
        v: Self::ViewMut<'_>,
    ) -> Result<(), KernelError>;
}
