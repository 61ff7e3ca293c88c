//! CUDA launchers of the element-wise ops (kernels in `elementwise.cu`).

use cudarc::driver::{DeviceRepr, LaunchConfig};

use super::ColumnBlock;
use crate::cuda::{check_view, flat_grid, Cuda, DeviceView, DeviceViewMut};
use crate::KernelError;

const MODULE: &str = "elementwise";
const SOURCE: &str = concat!(
    include_str!("../cuda/common.cuh"),
    include_str!("elementwise.cu")
);
/// Blocks of the sum of squares' first stage at most (`SQUARES_THREADS` threads each).
const SQUARES_BLOCKS: usize = 1024;
const SQUARES_THREADS: usize = 256;

#[repr(C)]
struct ElementwiseArgs {
    a: u64,
    b: u64,
    out: u64,
    n: i64,
    factor: f32,
}

// SAFETY: plain old data laid out as the kernel's struct.
unsafe impl DeviceRepr for ElementwiseArgs {}

#[repr(C)]
struct SquaresArgs {
    x: u64,
    partials: u64,
    total: u64,
    n: i64,
    blocks: i32,
}

// SAFETY: as above.
unsafe impl DeviceRepr for SquaresArgs {}

#[repr(C)]
struct ColumnArgs {
    src: u64,
    dst: u64,
    rows: i64,
    width: i32,
    src_cols: i32,
    src_first: i32,
    dst_cols: i32,
    dst_first: i32,
}

// SAFETY: plain old data laid out as the kernel's struct.
unsafe impl DeviceRepr for ColumnArgs {}

/// See [`super::copy_columns`].
pub(crate) fn copy_columns(
    cuda: &Cuda,
    block: ColumnBlock,
    src: DeviceView<'_>,
    dst: DeviceViewMut<'_>,
) -> Result<(), KernelError> {
    block.check("copy_columns", src.len(), dst.len())?;
    let elements = block.rows * block.width;
    if elements == 0 {
        return Ok(());
    }
    let narrow = |v: usize| {
        i32::try_from(v).map_err(|_| KernelError::Invalid {
            op: "copy_columns",
            message: format!("{block:?} exceeds 32-bit columns"),
        })
    };
    let args = ColumnArgs {
        src: src.address(),
        dst: dst.address(),
        rows: block.rows as i64,
        width: narrow(block.width)?,
        src_cols: narrow(block.src_cols)?,
        src_first: narrow(block.src_first)?,
        dst_cols: narrow(block.dst_cols)?,
        dst_first: narrow(block.dst_first)?,
    };
    let function = cuda.function(MODULE, SOURCE, &[], "copy_columns")?;
    cuda.launch(&function, flat_grid(elements), &args)
}

/// See [`super::add`].
pub(crate) fn add(
    cuda: &Cuda,
    a: DeviceView<'_>,
    b: DeviceView<'_>,
    out: DeviceViewMut<'_>,
) -> Result<(), KernelError> {
    check_view("add", "b", a.len(), b.len())?;
    check_view("add", "out", a.len(), out.len())?;
    launch(cuda, "add_f32", a.address(), b.address(), out, 1.0)
}

/// See [`super::scale`].
pub(crate) fn scale(cuda: &Cuda, x: DeviceViewMut<'_>, factor: f32) -> Result<(), KernelError> {
    launch(cuda, "scale_f32", 0, 0, x, factor)
}

fn launch(
    cuda: &Cuda,
    kernel: &str,
    a: u64,
    b: u64,
    out: DeviceViewMut<'_>,
    factor: f32,
) -> Result<(), KernelError> {
    if out.is_empty() {
        return Ok(());
    }
    let args = ElementwiseArgs {
        a,
        b,
        out: out.address(),
        n: out.len() as i64,
        factor,
    };
    let function = cuda.function(MODULE, SOURCE, &[], kernel)?;
    cuda.launch(&function, flat_grid(out.len()), &args)
}

/// See [`super::sum_squares`]: f64 sums over a grid whose size depends on the length only,
/// so the result has the same bits on every run (not the CPU's bits: the order differs).
pub(crate) fn sum_squares(cuda: &Cuda, x: DeviceView<'_>) -> Result<f64, KernelError> {
    if x.is_empty() {
        return Ok(0.0);
    }
    let blocks = x.len().div_ceil(SQUARES_THREADS).min(SQUARES_BLOCKS);
    let partials = cuda.scratch::<f64>(blocks)?;
    let total = cuda.scratch::<f64>(1)?;
    let args = SquaresArgs {
        x: x.address(),
        partials: cuda.address(&partials),
        total: cuda.address(&total),
        n: x.len() as i64,
        blocks: blocks as i32,
    };
    let grid = |blocks: usize| LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (SQUARES_THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let partial = cuda.function(MODULE, SOURCE, &[], "sum_squares_partial")?;
    cuda.launch(&partial, grid(blocks), &args)?;
    let finish = cuda.function(MODULE, SOURCE, &[], "sum_squares_total")?;
    cuda.launch(&finish, grid(1), &args)?;
    let host = cuda
        .stream()
        .clone_dtoh(&total)
        .map_err(|e| crate::cuda::device_error("copying the sum of squares", e))?;
    Ok(host[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::testing::{device, random};
    use crate::testing::{assert_close, to_f64};
    use crate::Backend;

    #[test]
    fn cuda_add_scale_and_sum_squares_match_the_cpu() {
        let Some(cuda) = device() else { return };
        for n in [1, 255, 1000, 300_001] {
            let (a, b) = (random(n, 1), random(n, 2));
            let (da, db) = (cuda.upload(&a).unwrap(), cuda.upload(&b).unwrap());
            let mut out = cuda.zeros(n).unwrap();
            cuda.add(cuda.all(&da), cuda.all(&db), cuda.all_mut(&mut out))
                .unwrap();
            let mut want = vec![0.0; n];
            super::super::add(&a, &b, &mut want).unwrap();
            assert_close(
                "add",
                &cuda.download(cuda.all(&out)).unwrap(),
                &to_f64(&want),
                0.0,
                0.0,
            );

            cuda.scale(cuda.all_mut(&mut out), -0.75).unwrap();
            super::super::scale(&mut want, -0.75);
            assert_close(
                "scale",
                &cuda.download(cuda.all(&out)).unwrap(),
                &to_f64(&want),
                0.0,
                0.0,
            );

            let got = cuda.sum_squares(cuda.all(&da)).unwrap();
            let expected = super::super::sum_squares(&a);
            assert!(
                (got - expected).abs() <= 1e-12 * expected,
                "{got} vs {expected}"
            );
            assert_eq!(
                got.to_bits(),
                cuda.sum_squares(cuda.all(&da)).unwrap().to_bits()
            );
        }
    }

    /// Splitting a stacked (rows × 80) matrix into its three parts and stacking them again,
    /// as the x-projection does, gives the CPU op's bits; the rest of `dst` is untouched.
    #[test]
    fn cuda_copy_columns_matches_the_cpu() {
        let Some(cuda) = device() else { return };
        let (rows, cols) = (1000, 80);
        let stacked = random(rows * cols, 11);
        let gstacked = cuda.upload(&stacked).unwrap();
        for (first, width) in [(0, 48), (48, 16), (64, 16)] {
            let block = ColumnBlock {
                rows,
                width,
                src_cols: cols,
                src_first: first,
                dst_cols: width + 3,
                dst_first: 2,
            };
            let before = random(rows * (width + 3), 12);
            let mut want = before.clone();
            super::super::copy_columns(block, &stacked, &mut want).unwrap();
            let mut got = cuda.upload(&before).unwrap();
            cuda.copy_columns(block, cuda.all(&gstacked), cuda.all_mut(&mut got))
                .unwrap();
            let got = cuda.download(cuda.all(&got)).unwrap();
            assert_eq!(got, want, "block {block:?}");
        }
        let mut small = cuda.zeros(10).unwrap();
        let too_wide = ColumnBlock {
            rows: 5,
            width: 3,
            src_cols: 80,
            src_first: 78,
            dst_cols: 2,
            dst_first: 0,
        };
        let outcome = cuda.copy_columns(too_wide, cuda.all(&gstacked), cuda.all_mut(&mut small));
        assert!(outcome.is_err());
    }

    #[test]
    fn cuda_add_rejects_mismatched_lengths() {
        let Some(cuda) = device() else { return };
        let a = cuda.zeros(4).unwrap();
        let mut out = cuda.zeros(3).unwrap();
        let error = cuda
            .add(cuda.all(&a), cuda.all(&a), cuda.all_mut(&mut out))
            .unwrap_err();
        assert!(
            matches!(error, KernelError::Shape { tensor: "out", .. }),
            "{error}"
        );
    }
}
