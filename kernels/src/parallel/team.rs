//! A team of threads that stay awake between the ops of a decode step.
//!
//! A decode step is ~150 ops of a few to a few hundred microseconds, one after another.
//! Handing each to rayon's pool and waiting for it costs ~5 µs (the caller is not one of
//! the pool's threads: it queues the job, wakes a worker and sleeps on a latch). A team's
//! workers spin on the job's block counter instead, and the caller claims blocks too, so a
//! hand-off is a cache line each way. A worker that the OS has not run when a job is
//! posted costs the caller nothing: the caller waits only for blocks a worker has claimed.
//! Workers that see no work for [`SPIN`] sleep until the next job.

use std::any::Any;
use std::cell::{RefCell, UnsafeCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps: longer than the gaps between the ops of
/// a decode step and between the steps of a tight loop, short enough that a worker waiting
/// on a busy machine does not keep a core from other processes.
const SPIN: Duration = Duration::from_micros(50);

thread_local! {
    /// The calling thread's team. It stays borrowed while a job runs, and for the whole life
    /// of a worker thread, so a nested call finds it borrowed and runs alone.
    static TEAM: RefCell<Option<Team>> = const { RefCell::new(None) };
}

/// Runs `job(index)` for every index in `0..blocks`, each once, on the calling thread and
/// `threads − 1` workers of its team, and returns when all are done. Where the calling
/// thread is already in a job, the blocks run on it in order. A panic in any block reaches
/// the caller (after every claimed block has finished).
pub(super) fn run_blocks(threads: usize, blocks: usize, job: &(dyn Fn(usize) + Sync)) {
    TEAM.with(|team| match team.try_borrow_mut() {
        Ok(mut team) => {
            if team
                .as_ref()
                .is_none_or(|team| team.workers.len() + 1 != threads)
            {
                *team = Some(Team::new(threads - 1));
            }
            team.as_ref().expect("just made").run(blocks, job);
        }
        Err(_) => (0..blocks).for_each(job),
    })
}

struct Team {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

/// What the caller and its workers share.
struct Shared {
    /// The current job's block count (high half) and next unclaimed block (low half). A
    /// block is claimed by raising the low half, only while it is below the high half.
    claim: AtomicU64,
    /// The current job; written only while no block is claimable or running.
    job: UnsafeCell<*const (dyn Fn(usize) + Sync)>,
    /// Blocks of the current job that have finished.
    done: AtomicUsize,
    /// The first panic of the current job.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    stop: AtomicBool,
    /// Workers asleep (or about to be) on `wake`.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written by the caller only while no block is claimable or running, and
// read by a worker only after it claimed a block (which the caller waits for); the pointee
// is `Sync`.
unsafe impl Sync for Shared {}
// SAFETY: as above.
unsafe impl Send for Shared {}

impl Team {
    fn new(workers: usize) -> Self {
        let shared = Arc::new(Shared {
            claim: AtomicU64::new(0),
            job: UnsafeCell::new(&|_| {}),
            done: AtomicUsize::new(0),
            panic: Mutex::new(None),
            stop: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (0..workers)
            .map(|_| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name("seqmamba-team".into())
                    .spawn(move || {
                        TEAM.with(|team| {
                            let _in_job = team.borrow_mut();
                            serve(&shared)
                        })
                    })
                    .expect("cannot start a team thread")
            })
            .collect();
        Self { shared, workers }
    }

    fn run(&self, blocks: usize, job: &(dyn Fn(usize) + Sync)) {
        let shared = &*self.shared;
        let blocks = u32::try_from(blocks).expect("at most 2³² blocks");
        // SAFETY: no block is claimable or running (the last job's are all done), so no
        // worker reads `job` until the claim below publishes it, and this call returns only
        // once every block has finished. The transmute only erases the lifetime.
        unsafe {
            *shared.job.get() = std::mem::transmute::<
                *const (dyn Fn(usize) + Sync + '_),
                *const (dyn Fn(usize) + Sync + 'static),
            >(job);
        }
        shared.done.store(0, Ordering::Relaxed);
        shared
            .claim
            .store(u64::from(blocks) << 32, Ordering::SeqCst);
        shared.wake_sleepers();
        shared.work();
        let mut spins = 0u32;
        while shared.done.load(Ordering::Acquire) != blocks as usize {
            spins = spins.wrapping_add(1);
            // A worker the OS preempted in its block may need this core.
            if spins.is_multiple_of(4096) {
                std::thread::yield_now();
            }
            std::hint::spin_loop();
        }
        let panic = shared
            .panic
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(payload) = panic {
            resume_unwind(payload);
        }
    }
}

impl Shared {
    /// Claims the next block of the current job, if one is left.
    fn claim(&self) -> Option<usize> {
        let mut word = self.claim.load(Ordering::Relaxed);
        loop {
            let (blocks, next) = (word >> 32, word & u64::from(u32::MAX));
            if next >= blocks {
                return None;
            }
            // Acquire: the claim's value comes from the caller's publishing store (or a
            // claim after it), so `job` is visible once it succeeds.
            match self.claim.compare_exchange_weak(
                word,
                word + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(next as usize),
                Err(current) => word = current,
            }
        }
    }

    fn claimable(&self) -> bool {
        let word = self.claim.load(Ordering::SeqCst);
        word & u64::from(u32::MAX) < word >> 32
    }

    /// Runs blocks of the current job until none is left to claim.
    fn work(&self) {
        while let Some(index) = self.claim() {
            // SAFETY: the block just claimed keeps the caller waiting, so `job` lives.
            let job = unsafe { &**self.job.get() };
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| job(index))) {
                let mut panic = self.panic.lock().unwrap_or_else(PoisonError::into_inner);
                panic.get_or_insert(payload);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }

    fn wake_sleepers(&self) {
        if self.sleepers.load(Ordering::SeqCst) != 0 {
            let _lock = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.wake.notify_all();
        }
    }

    /// Returns once a block is claimable or the team stops: spins for [`SPIN`], then sleeps.
    fn wait_for_work(&self) {
        let start = Instant::now();
        let mut spins = 0u32;
        while !(self.claimable() || self.stop.load(Ordering::Relaxed)) {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                let mut lock = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
                // Counted before the check: a caller that publishes a job after this check
                // sees the sleeper and takes the lock to wake it.
                self.sleepers.fetch_add(1, Ordering::SeqCst);
                while !(self.claimable() || self.stop.load(Ordering::SeqCst)) {
                    lock = self.wake.wait(lock).unwrap_or_else(PoisonError::into_inner);
                }
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            std::hint::spin_loop();
        }
    }
}

/// A worker's life: run blocks of each job until the team stops.
fn serve(shared: &Shared) {
    loop {
        shared.wait_for_work();
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        shared.work();
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake_sleepers();
        for worker in self.workers.drain(..) {
            // Workers catch their blocks' panics, so they can only end by returning.
            let _ = worker.join();
        }
    }
}
