//! CUDA launchers of RMSNorm (kernels in `rmsnorm.cu`).

use cudarc::driver::{DeviceRepr, LaunchConfig};

use super::NormDims;
use crate::cuda::{
    access_width, check_view, element_bytes, Cuda, DeviceBuffer, DeviceTensor, DeviceView,
    DeviceViewMut, Partials,
};
use crate::KernelError;

const MODULE: &str = "rmsnorm";
const SOURCE: &str = concat!(
    include_str!("../cuda/common.cuh"),
    include_str!("../cuda/bf16.cuh"),
    include_str!("rmsnorm.cu")
);
/// Warps (rows) per block of the row kernels (`ROWS_PER_BLOCK`).
const ROWS_PER_BLOCK: usize = 8;
/// Rows per block of the backward, whose weight gradient it sums into one partial row
/// (`GROUP_ROWS`): few enough that the blocks fill the device.
const GROUP_ROWS: usize = 32;
/// Shared memory a block may have: the backward's holds a row of sums per warp.
const MAX_SHARED_BYTES: usize = 227 * 1024;

#[repr(C)]
#[derive(Default)]
struct NormArgs {
    x: u64,
    branch: u64,
    sum: u64,
    weight: u64,
    out: u64,
    rstd: u64,
    d_out: u64,
    dx: u64,
    dx_copy: u64,
    partials: u64,
    rows: i64,
    cols: i32,
    eps: f32,
    out_bf16: i32,
}

// SAFETY: plain old data laid out as the kernel's struct.
unsafe impl DeviceRepr for NormArgs {}

fn rows_grid(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(ROWS_PER_BLOCK) as u32, 1, 1),
        block_dim: (32 * ROWS_PER_BLOCK as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Columns a lane takes at once (`GROUP` in `rmsnorm.cu`): 4 where the tensors allow it.
fn group_define(group: usize) -> String {
    format!("-DGROUP={group}")
}

fn checked(op: &'static str, dims: NormDims) -> Result<usize, KernelError> {
    let elements = dims.check(op)?;
    if dims.cols > i32::MAX as usize {
        return Err(KernelError::Invalid {
            op,
            message: format!("{} columns exceed the CUDA kernels' limit", dims.cols),
        });
    }
    Ok(elements)
}

/// See [`super::forward`].
pub(crate) fn forward(
    cuda: &Cuda,
    dims: NormDims,
    x: DeviceView<'_>,
    weight: DeviceView<'_>,
    out: DeviceTensor,
    rstd: DeviceViewMut<'_>,
) -> Result<(), KernelError> {
    launch_forward(cuda, "rmsnorm_forward", dims, x, None, weight, out, rstd)
}

/// See [`super::add_forward`]: one pass over the residual stream.
#[allow(clippy::too_many_arguments)]
pub(crate) fn add_forward(
    cuda: &Cuda,
    dims: NormDims,
    residual: DeviceView<'_>,
    branch: DeviceView<'_>,
    weight: DeviceView<'_>,
    sum: DeviceViewMut<'_>,
    out: DeviceTensor,
    rstd: DeviceViewMut<'_>,
) -> Result<(), KernelError> {
    const OP: &str = "add_rmsnorm_forward";
    check_view(OP, "branch", residual.len(), branch.len())?;
    check_view(OP, "sum", residual.len(), sum.len())?;
    launch_forward(
        cuda,
        OP,
        dims,
        residual,
        Some((branch, sum)),
        weight,
        out,
        rstd,
    )
}

/// The forward kernel; with `add`, the residual add `sum = x + branch` first.
#[allow(clippy::too_many_arguments)]
fn launch_forward(
    cuda: &Cuda,
    op: &'static str,
    dims: NormDims,
    x: DeviceView<'_>,
    add: Option<(DeviceView<'_>, DeviceViewMut<'_>)>,
    weight: DeviceView<'_>,
    out: DeviceTensor,
    rstd: DeviceViewMut<'_>,
) -> Result<(), KernelError> {
    let elements = checked(op, dims)?;
    check_view(op, "x", elements, x.len())?;
    check_view(op, "weight", dims.cols, weight.len())?;
    check_view(op, "out", elements, out.len)?;
    check_view(op, "rstd", dims.rows, rstd.len())?;
    if dims.rows == 0 {
        return Ok(());
    }
    let (branch, sum) = add.map_or((0, 0), |(branch, sum)| (branch.address(), sum.address()));
    let args = NormArgs {
        x: x.address(),
        branch,
        sum,
        weight: weight.address(),
        out: out.address,
        out_bf16: out.bf16.into(),
        rstd: rstd.address(),
        rows: dims.rows as i64,
        cols: dims.cols as i32,
        eps: dims.eps,
        ..Default::default()
    };
    let group = access_width(
        dims.cols,
        4,
        &[
            (args.x, 4),
            (args.branch, 4),
            (args.sum, 4),
            (args.weight, 4),
            (args.out, element_bytes(out.bf16)),
        ],
    );
    let function = cuda.function(MODULE, SOURCE, &[group_define(group)], "rmsnorm_forward")?;
    cuda.launch(&function, rows_grid(dims.rows), &args)
}

/// See [`super::backward`]: `dx` and `dweight` accumulated in one pass over the rows; the
/// weight gradient is summed per block of rows, then over the blocks in a fixed order.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    cuda: &Cuda,
    dims: NormDims,
    x: DeviceView<'_>,
    weight: DeviceView<'_>,
    rstd: DeviceView<'_>,
    d_out: DeviceView<'_>,
    dx: DeviceViewMut<'_>,
    dx_copy: Option<&mut DeviceBuffer<u16>>,
    dweight: DeviceViewMut<'_>,
) -> Result<(), KernelError> {
    const OP: &str = "rmsnorm_backward";
    let elements = checked(OP, dims)?;
    check_view(OP, "x", elements, x.len())?;
    check_view(OP, "weight", dims.cols, weight.len())?;
    check_view(OP, "rstd", dims.rows, rstd.len())?;
    check_view(OP, "d_out", elements, d_out.len())?;
    check_view(OP, "dx", elements, dx.len())?;
    if let Some(copy) = &dx_copy {
        check_view(OP, "dx_copy", elements, copy.len())?;
    }
    check_view(OP, "dweight", dims.cols, dweight.len())?;
    if dims.rows == 0 {
        return Ok(());
    }
    let shared = ROWS_PER_BLOCK * dims.cols * std::mem::size_of::<f32>();
    if shared > MAX_SHARED_BYTES {
        return Err(KernelError::Invalid {
            op: OP,
            message: format!(
                "rows of {} exceed the {} a block's shared memory holds",
                dims.cols,
                MAX_SHARED_BYTES / (ROWS_PER_BLOCK * 4)
            ),
        });
    }
    let groups = dims.rows.div_ceil(GROUP_ROWS);
    let partials = cuda.scratch::<f32>(groups * dims.cols)?;
    let args = NormArgs {
        x: x.address(),
        weight: weight.address(),
        rstd: rstd.address(),
        d_out: d_out.address(),
        dx: dx.address(),
        dx_copy: dx_copy.map_or(0, |copy| copy.address()),
        partials: cuda.address(&partials),
        rows: dims.rows as i64,
        cols: dims.cols as i32,
        eps: dims.eps,
        ..Default::default()
    };
    let group = access_width(
        dims.cols,
        4,
        &[
            (args.x, 4),
            (args.weight, 4),
            (args.d_out, 4),
            (args.dx, 4),
            (args.dx_copy, 2),
        ],
    );
    let function = cuda.function(MODULE, SOURCE, &[group_define(group)], "rmsnorm_backward")?;
    let grid = LaunchConfig {
        grid_dim: (groups as u32, 1, 1),
        block_dim: (32 * ROWS_PER_BLOCK as u32, 1, 1),
        shared_mem_bytes: shared as u32,
    };
    cuda.launch(&function, grid, &args)?;
    let shape = Partials {
        groups,
        stride: dims.cols,
        first: 0,
        columns: dims.cols,
    };
    cuda.sum_columns(MODULE, SOURCE, &partials, shape, dweight.address())
}

#[cfg(test)]
mod tests {
    use crate::bf16::Output;
    use crate::cuda::testing::{device, random};
    use crate::cuda::{Cuda, DeviceBuffer};
    use crate::rmsnorm::{self, NormDims};
    use crate::testing::{assert_close, bits, to_f64};
    use crate::Backend;

    #[test]
    fn cuda_rmsnorm_matches_the_cpu() {
        let Some(cuda) = device() else { return };
        // Rows within one backward block, across several with a short last one, a row
        // wider than a warp's 32 columns many times over, and rows that are not whole
        // groups of 4 columns (one column a lane at a time).
        for (rows, cols) in [(1, 1), (37, 100), (600, 768), (70, 3000), (9, 102)] {
            let dims = NormDims {
                rows,
                cols,
                eps: 1e-5,
            };
            let (x, weight, d_out) = (
                random(rows * cols, 1),
                random(cols, 2),
                random(rows * cols, 3),
            );
            let (dx0, dw0) = (random(rows * cols, 4), random(cols, 5));
            let (mut out, mut rstd) = (vec![0.0; rows * cols], vec![0.0; rows]);
            rmsnorm::forward(dims, &x, &weight, &mut out, &mut rstd).unwrap();
            let (mut dx, mut dw) = (dx0.clone(), dw0.clone());
            rmsnorm::backward(dims, &x, &weight, &rstd, &d_out, &mut dx, &mut dw).unwrap();

            let up = |v: &[f32]| cuda.upload(v).unwrap();
            let (gx, gw, gd) = (up(&x), up(&weight), up(&d_out));
            let (mut gout, mut grstd) =
                (cuda.zeros(rows * cols).unwrap(), cuda.zeros(rows).unwrap());
            cuda.rmsnorm_forward(
                dims,
                cuda.all(&gx),
                cuda.all(&gw),
                Output::F32(cuda.all_mut(&mut gout)),
                cuda.all_mut(&mut grstd),
            )
            .unwrap();
            // Twice: without and with dx's bf16 copy, which must hold the rounded dx and
            // leave everything else as it was.
            let down = |b: &DeviceBuffer| cuda.download(cuda.all(b)).unwrap();
            let mut results = Vec::new();
            for copy in [false, true] {
                let (mut gdx, mut gdw) = (up(&dx0), up(&dw0));
                let mut dx16 = cuda.zeros_bf16(rows * cols).unwrap();
                cuda.rmsnorm_backward(
                    dims,
                    cuda.all(&gx),
                    cuda.all(&gw),
                    cuda.all(&grstd),
                    cuda.all(&gd),
                    cuda.all_mut(&mut gdx),
                    copy.then_some(&mut dx16),
                    cuda.all_mut(&mut gdw),
                )
                .unwrap();
                let (gdx, gdw) = (down(&gdx), down(&gdw));
                if copy {
                    let mut rounded = vec![0u16; rows * cols];
                    crate::bf16::round(&gdx, &mut rounded).unwrap();
                    assert_eq!(cuda.download_bf16(&dx16).unwrap(), rounded, "dx copy");
                }
                results.push((bits(&gdx), bits(&gdw)));
            }
            assert_eq!(results[0], results[1], "dx and dweight beside the copy");
            assert_close("out", &down(&gout), &to_f64(&out), 1e-5, 1e-7);
            assert_close("rstd", &down(&grstd), &to_f64(&rstd), 1e-5, 1e-7);
            let (gdx, gdw) = &results[0];
            let widen = |b: &Vec<u32>| b.iter().map(|&v| f32::from_bits(v)).collect::<Vec<_>>();
            assert_close("dx", &widen(gdx), &to_f64(&dx), 1e-4, 1e-7);
            assert_close("dweight", &widen(gdw), &to_f64(&dw), 1e-4, 1e-7);
        }
    }

    /// Rows wider than the backward's shared memory holds are refused, not launched.
    #[test]
    fn cuda_rmsnorm_backward_refuses_rows_too_wide() {
        let Some(cuda) = device() else { return };
        let dims = NormDims {
            rows: 1,
            cols: 8000,
            eps: 1e-5,
        };
        let (x, w) = (cuda.zeros(8000).unwrap(), cuda.zeros(8000).unwrap());
        let (mut dx, mut dw) = (cuda.zeros(8000).unwrap(), cuda.zeros(8000).unwrap());
        let rstd = cuda.zeros(1).unwrap();
        let error = cuda
            .rmsnorm_backward(
                dims,
                cuda.all(&x),
                cuda.all(&w),
                cuda.all(&rstd),
                cuda.all(&x),
                cuda.all_mut(&mut dx),
                None,
                cuda.all_mut(&mut dw),
            )
            .unwrap_err();
        assert!(
            matches!(error, crate::KernelError::Invalid { .. }),
            "{error}"
        );
    }

    /// The fused residual add + norm: the sum exactly as the add, the norm as the CPU's, and
    /// the same norm as the unfused kernel on the sum, bit for bit.
    #[test]
    fn cuda_add_rmsnorm_matches_the_cpu_and_the_unfused_ops() {
        let Some(cuda) = device() else { return };
        let (rows, cols) = (300, 768);
        let dims = NormDims {
            rows,
            cols,
            eps: 1e-5,
        };
        let (residual, branch, weight) = (
            random(rows * cols, 6),
            random(rows * cols, 7),
            random(cols, 8),
        );
        let (mut sum, mut out, mut rstd) = (
            vec![0.0; rows * cols],
            vec![0.0; rows * cols],
            vec![0.0; rows],
        );
        rmsnorm::add_forward(
            dims, &residual, &branch, &weight, &mut sum, &mut out, &mut rstd,
        )
        .unwrap();
        let up = |v: &[f32]| cuda.upload(v).unwrap();
        let (gr, gb, gw) = (up(&residual), up(&branch), up(&weight));
        let zeros = |n| cuda.zeros(n).unwrap();
        let down = |b: &DeviceBuffer| cuda.download(cuda.all(b)).unwrap();
        // Each kernel writes its norm to `out`; the sum and rstd come back.
        let fused = |out: Output<'_, Cuda>| {
            let (mut gsum, mut grstd) = (zeros(rows * cols), zeros(rows));
            cuda.add_rmsnorm_forward(
                dims,
                cuda.all(&gr),
                cuda.all(&gb),
                cuda.all(&gw),
                cuda.all_mut(&mut gsum),
                out,
                cuda.all_mut(&mut grstd),
            )
            .unwrap();
            (down(&gsum), down(&grstd))
        };
        let unfused = |sum: &DeviceBuffer, out: Output<'_, Cuda>| {
            let mut grstd = zeros(rows);
            cuda.rmsnorm_forward(
                dims,
                cuda.all(sum),
                cuda.all(&gw),
                out,
                cuda.all_mut(&mut grstd),
            )
            .unwrap();
            down(&grstd)
        };
        let mut gout = zeros(rows * cols);
        let (got_sum, got_rstd) = fused(Output::F32(cuda.all_mut(&mut gout)));
        assert_eq!(got_sum, sum, "the sum is an f32 add, exact");
        assert_close("out", &down(&gout), &to_f64(&out), 1e-5, 1e-7);
        assert_close("rstd", &got_rstd, &to_f64(&rstd), 1e-5, 1e-7);
        let gsum = up(&got_sum);
        let mut unfused_out = zeros(rows * cols);
        let unfused_rstd = unfused(&gsum, Output::F32(cuda.all_mut(&mut unfused_out)));
        assert_eq!(down(&gout), down(&unfused_out));
        assert_eq!(got_rstd, unfused_rstd);

        // Written as bf16, by either kernel: the f32 values rounded, bit for bit.
        let mut rounded = vec![0u16; rows * cols];
        crate::bf16::round(&down(&gout), &mut rounded).unwrap();
        let mut out16 = cuda.zeros_bf16(rows * cols).unwrap();
        fused(Output::Bf16(&mut out16));
        assert_eq!(cuda.download_bf16(&out16).unwrap(), rounded, "fused, bf16");
        let mut unfused16 = cuda.zeros_bf16(rows * cols).unwrap();
        unfused(&gsum, Output::Bf16(&mut unfused16));
        assert_eq!(
            cuda.download_bf16(&unfused16).unwrap(),
            rounded,
            "unfused, bf16"
        );
    }
}
