//! How the CPU ops spread work over rayon's threads.
//!
//! Work is cut into jobs whose boundaries depend only on the shape of the op, never on the
//! number of threads; per-job partial sums are combined in job order. So every op returns
//! the same bits on one thread as on many. Decode-size work whose items are computed alone
//! goes to [`for_each_block`] instead: blocks claimed by a team of threads kept awake.

mod team;

use std::ops::Range;

use rayon::prelude::*;

/// Elements one job should touch: large enough that rayon's overhead is noise, small
/// enough that a 2-core machine gets several jobs from one activation tensor.
pub(crate) const JOB_ELEMENTS: usize = 1 << 15;

/// Rows per job for rows of `row_elements` elements: at least one.
pub(crate) fn rows_per_job(row_elements: usize) -> usize {
    (JOB_ELEMENTS / row_elements.max(1)).max(1)
}

/// Runs `work(range)` for every block of `block` items of `0..count` (the last block may
/// be shorter), on the calling thread and the other threads of its [`team`].
///
/// Each thread claims the next block when it finishes one, so a thread the OS delays holds
/// up the others by one block at most. Only for work whose every item is computed alone
/// (no sum runs across items: the rows of a matrix-vector product, the channels of a scan
/// step): who computes a block then never changes its bits. For decode-size work, where
/// a rayon hand-off (~5 µs) is a noticeable part of an op.
pub(crate) fn for_each_block(count: usize, block: usize, work: impl Fn(Range<usize>) + Sync) {
    let block = block.max(1);
    let blocks = count.div_ceil(block);
    let range = |index: usize| index * block..count.min((index + 1) * block);
    // The team has a thread per thread of the pool whatever the block count (a worker
    // that finds no block left just waits again), so it is made once.
    let threads = rayon::current_num_threads();
    if threads == 1 || blocks <= 1 {
        (0..blocks).for_each(|index| work(range(index)));
        return;
    }
    team::run_blocks(threads, blocks, &|index| work(range(index)));
}

/// [`for_each_block`] over the items of `items`: `work(first, block)` gets each block of
/// `block` items, mutable, with the index of its first item.
pub(crate) fn for_each_block_mut<T: Send>(
    items: &mut [T],
    block: usize,
    work: impl Fn(usize, &mut [T]) + Sync,
) {
    let count = items.len();
    let items = SharedSlice(items.as_mut_ptr());
    for_each_block(count, block, |range| {
        // SAFETY: `for_each_block` hands out each range once; the ranges are disjoint and
        // inside `items`, whose borrow outlives the call.
        work(range.start, unsafe { items.range(range) })
    });
}

/// A `&mut [T]` whose disjoint blocks go to different threads.
struct SharedSlice<T>(*mut T);

// SAFETY: only used by `for_each_block_mut`, which hands each item to one thread.
unsafe impl<T: Send> Sync for SharedSlice<T> {}

impl<T> SharedSlice<T> {
    /// # Safety
    /// `range` lies inside the slice and no other thread touches it while the result lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn range(&self, range: Range<usize>) -> &mut [T] {
        // SAFETY: the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(range.start), range.len()) }
    }
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
    use std::sync::atomic::{AtomicUsize, Ordering};

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
    fn every_block_runs_once_on_any_thread_count() {
        for threads in [1, 2, 3, 4] {
            for (count, block) in [(0, 4), (1, 4), (80, 4), (81, 4), (1000, 7), (5, 0)] {
                let mut seen = vec![0u32; count];
                on_threads(threads, || {
                    for_each_block_mut(&mut seen, block, |first, items| {
                        assert!(items.len() <= block.max(1));
                        assert_eq!(first % block.max(1), 0);
                        items.iter_mut().for_each(|item| *item += 1);
                    })
                });
                assert!(
                    seen.iter().all(|&n| n == 1),
                    "{threads} threads, {count} / {block}"
                );
            }
        }
    }

    #[test]
    fn blocks_spread_over_the_team_and_nested_calls_run_alone() {
        let threads_seen = std::sync::Mutex::new(std::collections::HashSet::new());
        let nested = AtomicUsize::new(0);
        on_threads(2, || {
            for_each_block(64, 1, |_| {
                threads_seen
                    .lock()
                    .unwrap()
                    .insert(std::thread::current().id());
                // Long enough that the worker claims some blocks too.
                std::thread::sleep(std::time::Duration::from_micros(200));
                let caller = std::thread::current().id();
                for_each_block(4, 1, |_| {
                    assert_eq!(std::thread::current().id(), caller);
                    nested.fetch_add(1, Ordering::Relaxed);
                });
            })
        });
        assert_eq!(threads_seen.into_inner().unwrap().len(), 2);
        assert_eq!(nested.into_inner(), 64 * 4);
    }

    #[test]
    fn a_panic_on_a_team_thread_reaches_the_caller_and_the_team_goes_on() {
        let outcome = on_threads(2, || {
            let caught = std::panic::catch_unwind(|| {
                for_each_block(64, 1, |range| {
                    std::thread::sleep(std::time::Duration::from_micros(100));
                    assert!(range.start != 40, "block 40");
                })
            });
            let mut after = vec![0u32; 100];
            for_each_block_mut(&mut after, 3, |_, items| items.fill(1));
            (caught.is_err(), after.iter().all(|&n| n == 1))
        });
        assert_eq!(outcome, (true, true));
    }

    #[test]
    fn rows_per_job_is_at_least_one() {
        assert_eq!(rows_per_job(JOB_ELEMENTS * 4), 1);
        assert_eq!(rows_per_job(0), JOB_ELEMENTS);
        assert_eq!(rows_per_job(1024), JOB_ELEMENTS / 1024);
    }
}
