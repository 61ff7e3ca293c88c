//! How the CPU ops spread work over rayon's threads.
//!
//! Work is cut into jobs whose boundaries depend only on the shape of the op, never on the
//! number of threads; per-job partial sums are combined in job order. So every op returns
//! the same bits on one thread as on many.

use rayon::prelude::*;

/// Elements one job should touch: large enough that rayon's overhead is noise, small
/// enough that a 2-core machine gets several jobs from one activation tensor.
pub(crate) const JOB_ELEMENTS: usize = 1 << 15;

/// Rows per job for rows of `row_elements` elements: at least one.
pub(crate) fn rows_per_job(row_elements: usize) -> usize {
    (JOB_ELEMENTS / row_elements.max(1)).max(1)
}

/// Runs `work(index, job)` for every job and returns the results in job order. A single
/// job runs on the calling thread, so small inputs never wait for the thread pool.
pub(crate) fn run_jobs<J, R>(jobs: Vec<J>, work: impl Fn(usize, J) -> R + Sync + Send) -> Vec<R>
where
    J: Send,
    R: Send,
{
    if jobs.len() <= 1 {
        jobs.into_iter()
            .enumerate()
            .map(|(index, job)| work(index, job))
            .collect()
    } else {
        jobs.into_par_iter()
            .enumerate()
            .map(|(index, job)| work(index, job))
            .collect()
    }
}
