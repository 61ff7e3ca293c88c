//! The CPU backend: host vectors, rayon and SIMD. The reference for every other backend.

use std::ops::Range;

use crate::adamw::{self, AdamW};
use crate::backend::Backend;
use crate::bf16::{self, Bf16View, Input, Output};
use crate::conv1d::{self, ConvDims};
use crate::cross_entropy::{self, CrossEntropyDims};
use crate::elementwise::{self, ColumnBlock};
use crate::embedding::{self, EmbeddingDims};
use crate::gemm::{self, GemmDims};
use crate::pool::{self, PoolDims, Pooling};
use crate::rmsnorm::{self, NormDims};
use crate::scan::{self, ScanDims, ScanGrads, ScanInputs};
use crate::{check_len, KernelError};

/// The CPU backend. Ops run on rayon's current thread pool.
///
/// ```
/// use seqmamba_kernels::{Backend, Cpu};
/// let cpu = Cpu;
/// let a = cpu.upload(&[1.0, 2.0]).unwrap();
/// let b = cpu.upload(&[3.0, 4.0]).unwrap();
/// let mut c = cpu.zeros(2).unwrap();
/// cpu.add(&a, &b, &mut c).unwrap();
/// assert_eq!(c, [4.0, 6.0]);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

/// A zeroed buffer. Large ones ask Linux for 2 MiB pages before their first write: a
/// decode step streams every weight once, and with 4 KiB pages every 4 KiB costs a TLB
/// miss and restarts the hardware prefetcher. Only advice: without transparent huge pages
/// nothing changes.
fn zeroed(len: usize) -> Vec<f32> {
    // Zeroed allocation maps fresh pages without touching them, so the advice comes first.
    let buffer = vec![0.0f32; len];
    #[cfg(target_os = "linux")]
    advise_huge_pages(&buffer);
    buffer
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(buffer: &[f32]) {
    const HUGE_PAGE: usize = 2 << 20;
    let start = (buffer.as_ptr() as usize).next_multiple_of(HUGE_PAGE);
    let end = (buffer.as_ptr() as usize + std::mem::size_of_val(buffer)) / HUGE_PAGE * HUGE_PAGE;
    if end > start {
        // SAFETY: the range lies inside the buffer's allocation, and MADV_HUGEPAGE changes
        // how pages are backed, never their contents. A refusal leaves 4 KiB pages.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

/// The f32 destination of an op's [`Output`]: the view itself, or a vector rounded into
/// the bf16 buffer by [`Sink::finish`] (the CPU computes in f32 either way).
enum Sink<'a> {
    Direct(&'a mut [f32]),
    Rounded(Vec<f32>, &'a mut Vec<u16>),
}

impl<'a> Sink<'a> {
    fn new(out: Output<'a, Cpu>) -> Self {
        match out {
            Output::F32(values) => Self::Direct(values),
            Output::Bf16(bits) => Self::Rounded(vec![0.0; bits.len()], bits),
        }
    }

    /// As [`Sink::new`], holding the output's current values (an op that adds to them).
    fn holding(out: Output<'a, Cpu>) -> Self {
        match out {
            Output::F32(values) => Self::Direct(values),
            Output::Bf16(bits) => Self::Rounded(bf16::widened(bits), bits),
        }
    }

    fn values(&mut self) -> &mut [f32] {
        match self {
            Self::Direct(values) => values,
            Self::Rounded(values, _) => values,
        }
    }

    fn finish(self) -> Result<(), KernelError> {
        match self {
            Self::Direct(_) => Ok(()),
            Self::Rounded(values, bits) => bf16::round(&values, bits),
        }
    }
}

/// The f32 values of an op's [`Input`]: the view itself, or its bf16 bits widened.
fn values(x: Input<'_, Cpu>) -> std::borrow::Cow<'_, [f32]> {
    match x {
        Input::F32(values) => values.into(),
        Input::Bf16(bits) => bf16::widened(bits).into(),
    }
}

/// The scan's streams (u, delta, z) as f32 [`values`].
struct Streams<'a> {
    u: std::borrow::Cow<'a, [f32]>,
    delta: std::borrow::Cow<'a, [f32]>,
    z: Option<std::borrow::Cow<'a, [f32]>>,
}

impl<'a> Streams<'a> {
    fn new(inputs: &ScanInputs<&[f32], Input<'a, Cpu>>) -> Self {
        Self {
            u: values(inputs.u),
            delta: values(inputs.delta),
            z: inputs.z.map(values),
        }
    }

    /// `inputs` with these streams.
    fn with<'b>(&'b self, inputs: &ScanInputs<&'b [f32], Input<'_, Cpu>>) -> ScanInputs<&'b [f32]> {
        ScanInputs {
            u: &self.u,
            delta: &self.delta,
            a_log: inputs.a_log,
            b: inputs.b,
            c: inputs.c,
            d_skip: inputs.d_skip,
            delta_bias: inputs.delta_bias,
            z: self.z.as_deref(),
        }
    }
}

impl Backend for Cpu {
    type Buffer = Vec<f32>;
    type Ids = Vec<u32>;
    type View<'a> = &'a [f32];
    type ViewMut<'a> = &'a mut [f32];

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn zeros(&self, len: usize) -> Result<Vec<f32>, KernelError> {
        Ok(zeroed(len))
    }

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>, KernelError> {
        let mut buffer = zeroed(data.len());
        buffer.copy_from_slice(data);
        Ok(buffer)
    }

    fn download(&self, view: &[f32]) -> Result<Vec<f32>, KernelError> {
        Ok(view.to_vec())
    }

    fn upload_ids(&self, ids: &[u32]) -> Result<Vec<u32>, KernelError> {
        Ok(ids.to_vec())
    }

    fn write_ids(&self, ids: &mut Vec<u32>, data: &[u32]) -> Result<(), KernelError> {
        check_len("write_ids", "data", ids.len(), data)?;
        ids.copy_from_slice(data);
        Ok(())
    }

    /// The CPU runs ops as they come: nothing to save by recording, so none is ever made.
    type Recording = std::convert::Infallible;

    fn record<E: From<KernelError>>(
        &self,
        _ops: impl FnOnce() -> Result<(), E>,
    ) -> Result<Option<Self::Recording>, E> {
        Ok(None)
    }

    fn replay(&self, recording: &Self::Recording) -> Result<(), KernelError> {
        match *recording {}
    }

    fn buffer_len(&self, buffer: &Vec<f32>) -> usize {
        buffer.len()
    }

    fn view<'a>(&self, buffer: &'a Vec<f32>, range: Range<usize>) -> &'a [f32] {
        &buffer[range]
    }

    fn view_mut<'a>(&self, buffer: &'a mut Vec<f32>, range: Range<usize>) -> &'a mut [f32] {
        &mut buffer[range]
    }

    fn reborrow_mut<'a, 'b>(&self, view: &'b mut &'a mut [f32]) -> &'b mut [f32]
    where
        'a: 'b,
    {
        view
    }

    fn split_mut<'a, const K: usize>(
        &self,
        buffer: &'a mut Vec<f32>,
        ranges: [Range<usize>; K],
    ) -> [&'a mut [f32]; K] {
        let mut rest: &mut [f32] = buffer;
        let mut consumed = 0;
        let mut views = Vec::with_capacity(K);
        for range in ranges {
            assert!(
                range.start >= consumed,
                "split_mut: ranges overlap or are unsorted"
            );
            let tail = std::mem::take(&mut rest)
                .split_at_mut(range.start - consumed)
                .1;
            let (view, tail) = tail.split_at_mut(range.len());
            views.push(view);
            rest = tail;
            consumed = range.end;
        }
        views
            .try_into()
            .unwrap_or_else(|_| unreachable!("one view per range"))
    }

    fn fill_zero(&self, dst: &mut [f32]) -> Result<(), KernelError> {
        dst.fill(0.0);
        Ok(())
    }

    fn copy(&self, src: &[f32], dst: &mut [f32]) -> Result<(), KernelError> {
        check_len("copy", "dst", src.len(), dst)?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn copy_columns(
        &self,
        block: ColumnBlock,
        src: &[f32],
        dst: &mut [f32],
    ) -> Result<(), KernelError> {
        elementwise::copy_columns(block, src, dst)
    }

    fn add(&self, a: &[f32], b: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
        elementwise::add(a, b, out)
    }

    fn scale(&self, x: &mut [f32], factor: f32) -> Result<(), KernelError> {
        elementwise::scale(x, factor);
        Ok(())
    }

    fn sum_squares(&self, x: &[f32]) -> Result<f64, KernelError> {
        Ok(elementwise::sum_squares(x))
    }

    fn gemm(
        &self,
        dims: GemmDims,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        accumulate: bool,
    ) -> Result<(), KernelError> {
        gemm::gemm(dims, a, b, c, accumulate)
    }

    type Bf16Buffer = Vec<u16>;

    fn zeros_bf16(&self, len: usize) -> Result<Vec<u16>, KernelError> {
        Ok(vec![0; len])
    }

    fn bf16_len(&self, buffer: &Vec<u16>) -> usize {
        buffer.len()
    }

    fn download_bf16(&self, buffer: &Vec<u16>) -> Result<Vec<u16>, KernelError> {
        Ok(buffer.clone())
    }

    fn round_bf16(&self, src: &[f32], dst: &mut Vec<u16>) -> Result<(), KernelError> {
        bf16::round(src, dst)
    }

    fn widen_bf16(&self, src: &Vec<u16>, dst: &mut [f32]) -> Result<(), KernelError> {
        bf16::widen(src, dst)
    }

    fn gemm_bf16(
        &self,
        dims: GemmDims,
        a: Bf16View<'_, Self>,
        b: Bf16View<'_, Self>,
        c: Output<'_, Self>,
        accumulate: bool,
    ) -> Result<(), KernelError> {
        let mut c = if accumulate {
            Sink::holding(c)
        } else {
            Sink::new(c)
        };
        bf16::gemm(
            dims,
            &a.buffer[a.range()],
            &b.buffer[b.range()],
            c.values(),
            accumulate,
        )?;
        c.finish()
    }

    /// The CPU has no faster bf16 arithmetic: its GEMMs stay f32.
    fn bf16_gemms(&self) -> bool {
        false
    }

    fn conv1d_forward(
        &self,
        dims: ConvDims,
        x: Input<'_, Self>,
        weight: &[f32],
        bias: &[f32],
        resets: Option<&Vec<u32>>,
        state: Option<&mut [f32]>,
        out: Output<'_, Self>,
    ) -> Result<(), KernelError> {
        let mut out = Sink::new(out);
        let x = values(x);
        conv1d::forward(
            dims,
            &x,
            weight,
            bias,
            resets.map(|r| &r[..]),
            state,
            out.values(),
        )?;
        out.finish()
    }

    fn conv1d_backward(
        &self,
        dims: ConvDims,
        x: Input<'_, Self>,
        weight: &[f32],
        bias: &[f32],
        resets: Option<&Vec<u32>>,
        initial_state: Option<&[f32]>,
        d_out: Input<'_, Self>,
        dx: Output<'_, Self>,
        dweight: &mut [f32],
        dbias: &mut [f32],
    ) -> Result<(), KernelError> {
        let mut dx = Sink::new(dx);
        conv1d::backward(
            dims,
            &values(x),
            weight,
            bias,
            resets.map(|r| &r[..]),
            initial_state,
            &values(d_out),
            dx.values(),
            dweight,
            dbias,
        )?;
        dx.finish()
    }

    fn scan_forward(
        &self,
        dims: ScanDims,
        inputs: &ScanInputs<&[f32], Input<'_, Self>>,
        resets: Option<&Vec<u32>>,
        state: Option<&mut [f32]>,
        checkpoints: Option<&mut [f32]>,
        out: Output<'_, Self>,
    ) -> Result<(), KernelError> {
        let mut out = Sink::new(out);
        let streams = Streams::new(inputs);
        scan::cpu::forward(
            dims,
            &streams.with(inputs),
            resets.map(|r| &r[..]),
            state,
            checkpoints,
            out.values(),
        )?;
        out.finish()
    }

    fn scan_backward(
        &self,
        dims: ScanDims,
        inputs: &ScanInputs<&[f32], Input<'_, Self>>,
        resets: Option<&Vec<u32>>,
        checkpoints: &[f32],
        d_out: Input<'_, Self>,
        grads: ScanGrads<&mut [f32], Output<'_, Self>>,
    ) -> Result<(), KernelError> {
        let mut du = Sink::new(grads.du);
        let mut ddelta = Sink::new(grads.ddelta);
        let mut dz = grads.dz.map(Sink::new);
        let mut out = grads.out.map(Sink::new);
        let streams = Streams::new(inputs);
        scan::cpu::backward(
            dims,
            &streams.with(inputs),
            resets.map(|r| &r[..]),
            checkpoints,
            &values(d_out),
            ScanGrads {
                du: du.values(),
                ddelta: ddelta.values(),
                da_log: grads.da_log,
                db: grads.db,
                dc: grads.dc,
                dd_skip: grads.dd_skip,
                ddelta_bias: grads.ddelta_bias,
                dz: dz.as_mut().map(Sink::values),
                out: out.as_mut().map(Sink::values),
            },
        )?;
        du.finish()?;
        ddelta.finish()?;
        dz.map_or(Ok(()), Sink::finish)?;
        out.map_or(Ok(()), Sink::finish)
    }

    fn rmsnorm_forward(
        &self,
        dims: NormDims,
        x: &[f32],
        weight: &[f32],
        out: Output<'_, Self>,
        rstd: &mut [f32],
    ) -> Result<(), KernelError> {
        let mut out = Sink::new(out);
        rmsnorm::forward(dims, x, weight, out.values(), rstd)?;
        out.finish()
    }

    fn add_rmsnorm_forward(
        &self,
        dims: NormDims,
        residual: &[f32],
        branch: &[f32],
        weight: &[f32],
        sum: &mut [f32],
        out: Output<'_, Self>,
        rstd: &mut [f32],
    ) -> Result<(), KernelError> {
        let mut out = Sink::new(out);
        rmsnorm::add_forward(dims, residual, branch, weight, sum, out.values(), rstd)?;
        out.finish()
    }

    fn rmsnorm_backward(
        &self,
        dims: NormDims,
        x: &[f32],
        weight: &[f32],
        rstd: &[f32],
        d_out: &[f32],
        dx: &mut [f32],
        dx_copy: Option<&mut Vec<u16>>,
        dweight: &mut [f32],
    ) -> Result<(), KernelError> {
        rmsnorm::backward(dims, x, weight, rstd, d_out, dx, dweight)?;
        dx_copy.map_or(Ok(()), |copy| bf16::round(dx, copy))
    }

    fn embedding_forward(
        &self,
        dims: EmbeddingDims,
        ids: &Vec<u32>,
        table: &[f32],
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        embedding::forward(dims, ids, table, out)
    }

    fn embedding_backward(
        &self,
        dims: EmbeddingDims,
        ids: &Vec<u32>,
        d_out: &[f32],
        dtable: &mut [f32],
    ) -> Result<(), KernelError> {
        embedding::backward(dims, ids, d_out, dtable)
    }

    fn cross_entropy(
        &self,
        dims: CrossEntropyDims,
        logits: &[f32],
        targets: &Vec<u32>,
        ignore_index: u32,
        losses: &mut [f32],
        dlogits: Option<&mut [f32]>,
        grad_scale: f32,
    ) -> Result<(), KernelError> {
        cross_entropy::forward_backward(
            dims,
            logits,
            targets,
            ignore_index,
            losses,
            dlogits,
            grad_scale,
        )
    }

    fn pool_forward(
        &self,
        dims: PoolDims,
        pooling: Pooling,
        lengths: &Vec<u32>,
        x: &[f32],
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        pool::forward(dims, pooling, lengths, x, out)
    }

    fn pool_backward(
        &self,
        dims: PoolDims,
        pooling: Pooling,
        lengths: &Vec<u32>,
        d_out: &[f32],
        dx: &mut [f32],
    ) -> Result<(), KernelError> {
        pool::backward(dims, pooling, lengths, d_out, dx)
    }

    fn reverse(
        &self,
        dims: PoolDims,
        lengths: &Vec<u32>,
        x: &[f32],
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        pool::reverse(dims, lengths, x, out)
    }

    fn adamw(
        &self,
        config: &AdamW,
        step: u64,
        decay_len: usize,
        params: &mut [f32],
        grads: &[f32],
        m: &mut [f32],
        v: &mut [f32],
    ) -> Result<(), KernelError> {
        adamw::step(config, step, decay_len, params, grads, m, v)
    }
}
