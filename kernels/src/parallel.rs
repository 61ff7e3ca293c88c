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

/// Items per thread when `count` items are cut into one contiguous share per thread of the
/// pool, every share but the last a multiple of `align` items.
///
/// Only for work whose every item is computed alone (no sum runs across items: the rows of
/// a matrix-vector product, the channels of a scan step): the shares, which depend on the
/// thread count, then decide only which thread computes an item, never its bits. Each
/// thread streams one contiguous range, and an op costs one hand-off, not one per job.
pub(crate) fn share_len(count: usize, align: usize) -> usize {
    let align = align.max(1);
    count
        .div_ceil(rayon::current_num_threads())
        .next_multiple_of(align)
        .max(align)
}

/// Runs `work(index, job)` for every job and returns the results in job order. A single
/// job, or a pool of one thread, runs on the calling thread: handing work to the pool and
/// waiting for it costs microseconds, more than a small op or a decode step's share.
pub(crate) fn run_jobs<J, R>(jobs: Vec<J>, work: impl Fn(usize, J) -> R + Sync + Send) -> Vec<R>
where
    J: Send,
    R: Send,
{
    if jobs.len() <= 1 || rayon::current_num_threads() == 1 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::on_threads;

    #[test]
    fn results_come_back_in_job_order() {
        let jobs: Vec<usize> = (0..100).collect();
        let results = on_threads(2, || run_jobs(jobs, |index, job| (index, job * 2)));
        assert_eq!(results, (0..100).map(|i| (i, i * 2)).collect::<Vec<_>>());
    }

    #[test]
    fn a_single_job_runs_on_the_calling_thread() {
        let caller = std::thread::current().id();
        let ran_on = run_jobs(vec![()], |_, ()| std::thread::current().id());
        assert_eq!(ran_on, [caller]);
    }

    #[test]
    fn shares_cover_the_items_in_aligned_pieces_one_per_thread() {
        assert_eq!(on_threads(1, || share_len(80, 4)), 80);
        assert_eq!(on_threads(2, || share_len(80, 4)), 40);
        assert_eq!(on_threads(2, || share_len(81, 4)), 44);
        assert_eq!(on_threads(3, || share_len(80, 4)), 28);
        assert_eq!(on_threads(4, || share_len(2, 4)), 4);
        assert_eq!(on_threads(2, || share_len(0, 0)), 1);
    }

    #[test]
    fn rows_per_job_is_at_least_one() {
        assert_eq!(rows_per_job(JOB_ELEMENTS * 4), 1);
        assert_eq!(rows_per_job(0), JOB_ELEMENTS);
        assert_eq!(rows_per_job(1024), JOB_ELEMENTS / 1024);
    }
}
