//! CUDA launcher of the fused cross-entropy (kernel in `cross_entropy.cu`).

use cudarc::driver::{DeviceRepr, LaunchConfig};

use super::{check_targets, CrossEntropyDims};
use crate::cuda::{check_view, Cuda, DeviceIds, DeviceView, DeviceViewMut};
use crate::{element_count, KernelError};

const SOURCE: &str = concat!(
    include_str!("../cuda/common.cuh"),
    include_str!("cross_entropy.cu")
);
const THREADS: u32 = 256;

#[repr(C)]
struct CrossEntropyArgs {
    logits: u64,
    targets: u64,
    losses: u64,
    dlogits: u64,
    rows: i64,
    vocab: i32,
    ignore_index: u32,
    grad_scale: f32,
}

// SAFETY: plain old data laid out as the kernel's struct.
unsafe impl DeviceRepr for CrossEntropyArgs {}

/// See [`super::forward_backward`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_backward(
    cuda: &Cuda,
    dims: CrossEntropyDims,
    logits: DeviceView<'_>,
    targets: &DeviceIds,
    ignore_index: u32,
    losses: DeviceViewMut<'_>,
    dlogits: Option<DeviceViewMut<'_>>,
    grad_scale: f32,
) -> Result<(), KernelError> {
    const OP: &str = "cross_entropy";
    let CrossEntropyDims { rows, vocab } = dims;
    if vocab == 0 || vocab > i32::MAX as usize || rows > u32::MAX as usize {
        return Err(KernelError::Invalid {
            op: OP,
            message: format!("{dims:?}: the vocabulary must have 1 to 2³¹ classes and rows < 2³²"),
        });
    }
    let elements = element_count(OP, &[rows, vocab])?;
    check_view(OP, "logits", elements, logits.len())?;
    check_view(OP, "targets", rows, targets.host().len())?;
    check_view(OP, "losses", rows, losses.len())?;
    if let Some(dlogits) = &dlogits {
        check_view(OP, "dlogits", elements, dlogits.len())?;
    }
    check_targets(OP, vocab, targets.host(), ignore_index)?;
    if rows == 0 {
        return Ok(());
    }
    let args = CrossEntropyArgs {
        logits: logits.address(),
        targets: targets.device_address(),
        losses: losses.address(),
        dlogits: dlogits.as_ref().map_or(0, |d| d.address()),
        rows: rows as i64,
        vocab: vocab as i32,
        ignore_index,
        grad_scale,
    };
    let grid = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let function = cuda.function("cross_entropy", SOURCE, &[], "cross_entropy")?;
    cuda.launch(&function, grid, &args)
}

#[cfg(test)]
mod tests {
    use crate::cross_entropy::{self, CrossEntropyDims};
    use crate::cuda::testing::{device, random};
    use crate::rng::Rng;
    use crate::testing::{assert_close, to_f64};
    use crate::{Backend, KernelError};

    #[test]
    fn cuda_cross_entropy_matches_the_cpu() {
        let Some(cuda) = device() else { return };
        for (rows, vocab) in [(1, 1), (50, 16), (300, 1000)] {
            let dims = CrossEntropyDims { rows, vocab };
            let mut rng = Rng::new(7);
            let logits: Vec<f32> = random(rows * vocab, 1).iter().map(|x| 8.0 * x).collect();
            let mut targets: Vec<u32> = (0..rows).map(|_| rng.below(vocab as u64) as u32).collect();
            targets[rows / 2] = u32::MAX;
            let (mut losses, mut dlogits) = (vec![0.0; rows], vec![0.0; rows * vocab]);
            cross_entropy::forward_backward(
                dims,
                &logits,
                &targets,
                u32::MAX,
                &mut losses,
                Some(&mut dlogits),
                0.37,
            )
            .unwrap();

            let gl = cuda.upload(&logits).unwrap();
            let gt = cuda.upload_ids(&targets).unwrap();
            let mut glosses = cuda.upload(&vec![f32::NAN; rows]).unwrap();
            let mut gd = cuda.upload(&vec![f32::NAN; rows * vocab]).unwrap();
            cuda.cross_entropy(
                dims,
                cuda.all(&gl),
                &gt,
                u32::MAX,
                cuda.all_mut(&mut glosses),
                Some(cuda.all_mut(&mut gd)),
                0.37,
            )
            .unwrap();
            assert_close(
                "losses",
                &cuda.download(cuda.all(&glosses)).unwrap(),
                &to_f64(&losses),
                1e-5,
                1e-7,
            );
            assert_close(
                "dlogits",
                &cuda.download(cuda.all(&gd)).unwrap(),
                &to_f64(&dlogits),
                1e-5,
                1e-9,
            );

            let mut only = cuda.zeros(rows).unwrap();
            cuda.cross_entropy(
                dims,
                cuda.all(&gl),
                &gt,
                u32::MAX,
                cuda.all_mut(&mut only),
                None,
                0.0,
            )
            .unwrap();
            assert_close(
                "losses alone",
                &cuda.download(cuda.all(&only)).unwrap(),
                &to_f64(&losses),
                1e-5,
                1e-7,
            );
        }
        let dims = CrossEntropyDims { rows: 2, vocab: 3 };
        let logits = cuda.zeros(6).unwrap();
        let mut losses = cuda.zeros(2).unwrap();
        let bad = cuda.upload_ids(&[1, 3]).unwrap();
        let error = cuda
            .cross_entropy(
                dims,
                cuda.all(&logits),
                &bad,
                u32::MAX,
                cuda.all_mut(&mut losses),
                None,
                1.0,
            )
            .unwrap_err();
        assert!(matches!(error, KernelError::Invalid { .. }), "{error}");
    }
}
