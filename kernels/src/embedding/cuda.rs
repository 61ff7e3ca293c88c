//! CUDA launchers of the embedding (kernels in `embedding.cu`).

use cudarc::driver::{DeviceRepr, LaunchConfig};

use super::{group_by_id, EmbeddingDims};
use crate::cuda::{check_view, flat_grid, Cuda, DeviceIds, DeviceView, DeviceViewMut};
use crate::KernelError;

const MODULE: &str = "embedding";
const SOURCE: &str = concat!(
    include_str!("../cuda/common.cuh"),
    include_str!("embedding.cu")
);
const BACKWARD_THREADS: u32 = 128;

#[repr(C)]
#[derive(Default)]
struct EmbeddingArgs {
    ids: u64,
    table: u64,
    out: u64,
    d_out: u64,
    dtable: u64,
    starts: u64,
    by_id: u64,
    tokens: i64,
    dim: i32,
}

// SAFETY: plain old data laid out as the kernel's struct.
unsafe impl DeviceRepr for EmbeddingArgs {}

fn checked(
    op: &'static str,
    dims: EmbeddingDims,
    ids: &DeviceIds,
) -> Result<(usize, usize), KernelError> {
    let sizes = dims.check(op, ids.host())?;
    if dims.dim > i32::MAX as usize || dims.tokens > u32::MAX as usize || dims.vocab > 65_535 {
        return Err(KernelError::Invalid {
            op,
            message: format!("{dims:?} exceeds the CUDA kernels' limits (dim < 2³¹, tokens < 2³², vocab < 65536)"),
        });
    }
    Ok(sizes)
}

/// See [`super::forward`].
pub(crate) fn forward(
    cuda: &Cuda,
    dims: EmbeddingDims,
    ids: &DeviceIds,
    table: DeviceView<'_>,
    out: DeviceViewMut<'_>,
) -> Result<(), KernelError> {
    const OP: &str = "embedding_forward";
    let (out_len, table_len) = checked(OP, dims, ids)?;
    check_view(OP, "table", table_len, table.len())?;
    check_view(OP, "out", out_len, out.len())?;
    if out_len == 0 {
        return Ok(());
    }
    let args = EmbeddingArgs {
        ids: ids.device_address(),
        table: table.address(),
        out: out.address(),
        tokens: dims.tokens as i64,
        dim: dims.dim as i32,
        ..Default::default()
    };
    let function = cuda.function(MODULE, SOURCE, &[], "embedding_forward")?;
    cuda.launch(&function, flat_grid(out_len), &args)
}

/// See [`super::backward`]: the tokens are grouped by id on the host (the ids' host copy),
/// then each thread owns one table element and adds its tokens in order.
pub(crate) fn backward(
    cuda: &Cuda,
    dims: EmbeddingDims,
    ids: &DeviceIds,
    d_out: DeviceView<'_>,
    dtable: DeviceViewMut<'_>,
) -> Result<(), KernelError> {
    const OP: &str = "embedding_backward";
    let (out_len, table_len) = checked(OP, dims, ids)?;
    check_view(OP, "d_out", out_len, d_out.len())?;
    check_view(OP, "dtable", table_len, dtable.len())?;
    if out_len == 0 {
        return Ok(());
    }
    let (starts, by_id) = group_by_id(dims.vocab, ids.host());
    let narrow = |v: Vec<usize>| v.into_iter().map(|x| x as u32).collect::<Vec<u32>>();
    // Both non-empty: vocab + 1 starts, and tokens > 0 here.
    let starts = cuda.upload_slice(&narrow(starts))?;
    let by_id = cuda.upload_slice(&narrow(by_id))?;
    let address =
        |ids: &Option<cudarc::driver::CudaSlice<u32>>| ids.as_ref().map_or(0, |s| cuda.address(s));
    let args = EmbeddingArgs {
        d_out: d_out.address(),
        dtable: dtable.address(),
        starts: address(&starts),
        by_id: address(&by_id),
        tokens: dims.tokens as i64,
        dim: dims.dim as i32,
        ..Default::default()
    };
    let grid = LaunchConfig {
        grid_dim: (
            dims.dim.div_ceil(BACKWARD_THREADS as usize) as u32,
            dims.vocab as u32,
            1,
        ),
        block_dim: (BACKWARD_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let function = cuda.function(MODULE, SOURCE, &[], "embedding_backward")?;
    cuda.launch(&function, grid, &args)
}

#[cfg(test)]
mod tests {
    use crate::cuda::testing::{device, random};
    use crate::embedding::{self, EmbeddingDims};
    use crate::rng::Rng;
    use crate::testing::bits;
    use crate::{Backend, KernelError};

    #[test]
    fn cuda_embedding_matches_the_cpu_bit_for_bit() {
        let Some(cuda) = device() else { return };
        let dims = EmbeddingDims {
            tokens: 1000,
            vocab: 13,
            dim: 200,
        };
        let mut rng = Rng::new(1);
        let ids: Vec<u32> = (0..dims.tokens).map(|_| rng.below(12) as u32).collect();
        let table = random(dims.vocab * dims.dim, 2);
        let d_out = random(dims.tokens * dims.dim, 3);
        let dtable0 = random(dims.vocab * dims.dim, 4);
        let mut out = vec![0.0; dims.tokens * dims.dim];
        embedding::forward(dims, &ids, &table, &mut out).unwrap();
        let mut dtable = dtable0.clone();
        embedding::backward(dims, &ids, &d_out, &mut dtable).unwrap();

        let gids = cuda.upload_ids(&ids).unwrap();
        let (gt, gd) = (cuda.upload(&table).unwrap(), cuda.upload(&d_out).unwrap());
        let mut gout = cuda.zeros(out.len()).unwrap();
        cuda.embedding_forward(dims, &gids, cuda.all(&gt), cuda.all_mut(&mut gout))
            .unwrap();
        let mut gdt = cuda.upload(&dtable0).unwrap();
        cuda.embedding_backward(dims, &gids, cuda.all(&gd), cuda.all_mut(&mut gdt))
            .unwrap();
        assert_eq!(bits(&cuda.download(cuda.all(&gout)).unwrap()), bits(&out));
        // Id 12 never occurs: its row must stay as it was.
        assert_eq!(bits(&cuda.download(cuda.all(&gdt)).unwrap()), bits(&dtable));

        let bad = cuda.upload_ids(&vec![13; dims.tokens]).unwrap();
        let error = cuda
            .embedding_forward(dims, &bad, cuda.all(&gt), cuda.all_mut(&mut gout))
            .unwrap_err();
        assert!(matches!(error, KernelError::Invalid { .. }), "{error}");
    }
}
