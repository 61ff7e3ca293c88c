//! NCCL collectives between the GPUs of one host, for data-parallel training.
//!
//! Like the rest of the CUDA backend, nothing is needed at build time: `libnccl` is loaded
//! when the first communicator is made, and a machine without it gets a
//! [`KernelError::Device`] that says so. A communicator runs its collectives on its
//! device's one stream, so they are ordered with every other op of that [`Cuda`].

use cudarc::driver::CudaContext;
use cudarc::nccl::{Comm, Id, ReduceOp};

use super::{device_error, Cuda, DeviceBuffer};
use crate::KernelError;

/// Fails with [`KernelError::Device`] unless `libnccl` can be loaded.
fn check_nccl() -> Result<(), KernelError> {
    // cudarc panics when a library is absent at first use; ask first.
    // SAFETY: only tries to open the shared library.
    if unsafe { cudarc::nccl::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(KernelError::Device(
            "NCCL (libnccl.so) was not found: install NCCL or add the folder holding libnccl.so to LD_LIBRARY_PATH"
                .into(),
        ))
    }
}

/// How many CUDA devices this machine has (0 without a driver).
///
/// ```
/// let gpus = seqmamba_kernels::cuda::device_count();
/// assert!(gpus < 1024);
/// ```
pub fn device_count() -> usize {
    // SAFETY: only tries to open the shared library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return 0;
    }
    std::panic::catch_unwind(CudaContext::device_count)
        .ok()
        .and_then(Result::ok)
        .map_or(0, |n| n.max(0) as usize)
}

/// The identity of one group of ranks: made once, then handed to every rank's
/// [`Communicator::join`].
///
/// ```no_run
/// use seqmamba_kernels::cuda::{CommunicatorId, Communicator, Cuda};
/// let id = CommunicatorId::new()?;
/// let cuda = Cuda::new(0)?;
/// let comm = Communicator::join(&cuda, &id, 0, 1)?;
/// assert_eq!(comm.world_size(), 1);
/// # Ok::<(), seqmamba_kernels::KernelError>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct CommunicatorId(Id);

impl CommunicatorId {
    /// A fresh id; fails without NCCL.
    pub fn new() -> Result<Self, KernelError> {
        check_nccl()?;
        Id::new()
            .map(Self)
            .map_err(|e| device_error("making an NCCL id", format!("{e:?}")))
    }
}

/// One rank's NCCL communicator, bound to the stream of its [`Cuda`].
///
/// ```no_run
/// use seqmamba_kernels::cuda::{CommunicatorId, Communicator, Cuda};
/// use seqmamba_kernels::Backend;
/// let cuda = Cuda::new(0)?;
/// let comm = Communicator::join(&cuda, &CommunicatorId::new()?, 0, 1)?;
/// let mut x = cuda.upload(&[1.0, 2.0])?;
/// comm.all_reduce_sum(&mut x)?;
/// assert_eq!(cuda.download(cuda.all(&x))?, vec![1.0, 2.0]);
/// # Ok::<(), seqmamba_kernels::KernelError>(())
/// ```
#[derive(Debug)]
pub struct Communicator {
    comm: Comm,
}

impl Communicator {
    /// Joins group `id` as `rank` of `world_size`. Blocks until every rank has joined, so
    /// each rank calls this from its own thread (or process).
    pub fn join(
        cuda: &Cuda,
        id: &CommunicatorId,
        rank: usize,
        world_size: usize,
    ) -> Result<Self, KernelError> {
        check_nccl()?;
        if rank >= world_size || world_size > i32::MAX as usize {
            return Err(KernelError::Device(format!(
                "NCCL rank {rank} is not within a world of {world_size}"
            )));
        }
        cuda.context()
            .bind_to_thread()
            .map_err(|e| device_error("binding the CUDA context", e))?;
        Comm::from_rank(cuda.stream().clone(), rank, world_size, id.0)
            .map(|comm| Self { comm })
            .map_err(|e| {
                device_error(
                    &format!("joining NCCL as rank {rank} of {world_size}"),
                    format!("{e:?}"),
                )
            })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// Ranks in the group.
    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    /// Replaces `buffer` on every rank by the sum over the ranks (queued on the stream).
    pub fn all_reduce_sum(&self, buffer: &mut DeviceBuffer) -> Result<(), KernelError> {
        match buffer.slice_mut() {
            None => Ok(()),
            Some(slice) => self
                .comm
                .all_reduce_in_place(slice, &ReduceOp::Sum)
                .map(|_| ())
                .map_err(|e| device_error("NCCL all-reduce", format!("{e:?}"))),
        }
    }
}
