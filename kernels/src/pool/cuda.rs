//! CUDA launchers of pooling and reversal (kernels in `pool.cu`).

use cudarc::driver::DeviceRepr;

use super::{PoolDims, Pooling};
use crate::cuda::{check_view, flat_grid, Cuda, DeviceIds, DeviceView, DeviceViewMut};
use crate::KernelError;

const SOURCE: &str = concat!(include_str!("../cuda/common.cuh"), include_str!("pool.cu"));

#[repr(C)]
struct PoolArgs {
    lengths: u64,
    x: u64,
    out: u64,
    batch: i64,
    len: i64,
    dim: i32,
    last: i32,
}

// SAFETY: plain old data laid out as the kernel's struct.
unsafe impl DeviceRepr for PoolArgs {}

/// Checks the shapes and launches `kernel` over `threads` elements.
#[allow(clippy::too_many_arguments)]
fn run(
    cuda: &Cuda,
    op: &'static str,
    kernel: &str,
    dims: PoolDims,
    pooling: Pooling,
    lengths: &DeviceIds,
    input: (&'static str, usize, DeviceView<'_>),
    output: (&'static str, usize, DeviceViewMut<'_>),
) -> Result<(), KernelError> {
    dims.check(op, lengths.host())?;
    if dims.dim > i32::MAX as usize {
        return Err(KernelError::Invalid {
            op,
            message: format!("dim {} exceeds the CUDA kernels' limit", dims.dim),
        });
    }
    let (in_name, in_len, x) = input;
    let (out_name, out_len, out) = output;
    check_view(op, in_name, in_len, x.len())?;
    check_view(op, out_name, out_len, out.len())?;
    if out_len == 0 {
        return Ok(());
    }
    let args = PoolArgs {
        lengths: lengths.device_address(),
        x: x.address(),
        out: out.address(),
        batch: dims.batch as i64,
        len: dims.len as i64,
        dim: dims.dim as i32,
        last: i32::from(pooling == Pooling::Last),
    };
    let function = cuda.function("pool", SOURCE, &[], kernel)?;
    cuda.launch(&function, flat_grid(out_len), &args)
}

/// See [`super::forward`].
pub(crate) fn forward(
    cuda: &Cuda,
    dims: PoolDims,
    pooling: Pooling,
    lengths: &DeviceIds,
    x: DeviceView<'_>,
    out: DeviceViewMut<'_>,
) -> Result<(), KernelError> {
    let all = dims.batch * dims.len * dims.dim;
    let pooled = dims.batch * dims.dim;
    let (input, output) = (("x", all, x), ("out", pooled, out));
    run(
        cuda,
        "pool_forward",
        "pool_forward",
        dims,
        pooling,
        lengths,
        input,
        output,
    )
}

/// See [`super::backward`].
pub(crate) fn backward(
    cuda: &Cuda,
    dims: PoolDims,
    pooling: Pooling,
    lengths: &DeviceIds,
    d_out: DeviceView<'_>,
    dx: DeviceViewMut<'_>,
) -> Result<(), KernelError> {
    let all = dims.batch * dims.len * dims.dim;
    let pooled = dims.batch * dims.dim;
    let (input, output) = (("d_out", pooled, d_out), ("dx", all, dx));
    run(
        cuda,
        "pool_backward",
        "pool_backward",
        dims,
        pooling,
        lengths,
        input,
        output,
    )
}

/// See [`super::reverse`].
pub(crate) fn reverse(
    cuda: &Cuda,
    dims: PoolDims,
    lengths: &DeviceIds,
    x: DeviceView<'_>,
    out: DeviceViewMut<'_>,
) -> Result<(), KernelError> {
    let all = dims.batch * dims.len * dims.dim;
    let (input, output) = (("x", all, x), ("out", all, out));
    run(
        cuda,
        "reverse",
        "reverse_valid",
        dims,
        Pooling::Mean,
        lengths,
        input,
        output,
    )
}

#[cfg(test)]
mod tests {
    use crate::cuda::testing::{device, random};
    use crate::pool::{self, PoolDims, Pooling};
    use crate::testing::{assert_close, to_f64};
    use crate::{Backend, KernelError};

    #[test]
    fn cuda_pool_and_reverse_match_the_cpu() {
        let Some(cuda) = device() else { return };
        let dims = PoolDims {
            batch: 3,
            len: 17,
            dim: 40,
        };
        let lengths = [17u32, 5, 1];
        let all = dims.batch * dims.len * dims.dim;
        let x = random(all, 1);
        let d_out = random(dims.batch * dims.dim, 2);
        let gl = cuda.upload_ids(&lengths).unwrap();
        let (gx, gd) = (cuda.upload(&x).unwrap(), cuda.upload(&d_out).unwrap());
        for pooling in [Pooling::Mean, Pooling::Last] {
            let mut out = vec![0.0; dims.batch * dims.dim];
            pool::forward(dims, pooling, &lengths, &x, &mut out).unwrap();
            let mut gout = cuda.upload(&vec![f32::NAN; out.len()]).unwrap();
            cuda.pool_forward(dims, pooling, &gl, cuda.all(&gx), cuda.all_mut(&mut gout))
                .unwrap();
            assert_close(
                "pooled",
                &cuda.download(cuda.all(&gout)).unwrap(),
                &to_f64(&out),
                1e-5,
                1e-7,
            );

            let mut dx = vec![0.0; all];
            pool::backward(dims, pooling, &lengths, &d_out, &mut dx).unwrap();
            let mut gdx = cuda.upload(&vec![f32::NAN; all]).unwrap();
            cuda.pool_backward(dims, pooling, &gl, cuda.all(&gd), cuda.all_mut(&mut gdx))
                .unwrap();
            assert_close(
                "dx",
                &cuda.download(cuda.all(&gdx)).unwrap(),
                &to_f64(&dx),
                1e-6,
                0.0,
            );
        }
        let mut out = vec![0.0; all];
        pool::reverse(dims, &lengths, &x, &mut out).unwrap();
        let mut gout = cuda.upload(&vec![f32::NAN; all]).unwrap();
        cuda.reverse(dims, &gl, cuda.all(&gx), cuda.all_mut(&mut gout))
            .unwrap();
        assert_close(
            "reverse",
            &cuda.download(cuda.all(&gout)).unwrap(),
            &to_f64(&out),
            0.0,
            0.0,
        );

        let bad = cuda.upload_ids(&[17, 0, 1]).unwrap();
        let error = cuda
            .reverse(dims, &bad, cuda.all(&gx), cuda.all_mut(&mut gout))
            .unwrap_err();
        assert!(matches!(error, KernelError::Invalid { .. }), "{error}");
    }
}
