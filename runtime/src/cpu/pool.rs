//! The worker pool every kernel runs on. Decoding one token launches a few hundred small parallel loops
//! back to back; a pool whose workers sleep between them pays a wake-up (tens of microseconds) per loop, which
//! on small models is a large share of the token. These workers spin on an epoch counter for a while after each
//! loop, so the next launch starts at once, and only then park. The calling thread takes part in every loop.
//! Tasks are handed out by an atomic counter, so uneven tasks balance themselves.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(500);

type Task<'a> = dyn Fn(usize) + Sync + 'a;

struct Shared {
    /// Bumped for every loop; workers watch it.
    epoch: AtomicUsize,
    /// The loop's body, valid while `active > 0` (the launcher waits for that before returning).
    job: Mutex<Option<&'static Task<'static>>>,
    tasks: AtomicUsize,
    next: AtomicUsize,
    /// Workers still inside the current loop.
    active: AtomicUsize,
    panicked: AtomicBool,
    /// Parked workers wait here for the epoch to move.
    parked: Mutex<usize>,
    wake: Condvar,
}

pub struct Pool {
    shared: Arc<Shared>,
    threads: usize,
    /// One loop at a time: a second thread launching waits here.
    launch: Mutex<()>,
}

thread_local! {
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

static POOL: OnceLock<Pool> = OnceLock::new();
static REQUESTED: AtomicUsize = AtomicUsize::new(0);

/// Use `n` threads (the caller included). Takes effect if called before the first parallel loop.
pub fn set_threads(n: usize) {
    REQUESTED.store(n.max(1), Ordering::Relaxed);
}

fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let n = match REQUESTED.load(Ordering::Relaxed) {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Pool::new(n)
    })
}

/// Threads that run a parallel loop (the caller included).
pub fn threads() -> usize {
    pool().threads
}

/// Run `f(0) .. f(tasks - 1)` on the pool; returns when all have run.
pub fn parallel_for(tasks: usize, f: impl Fn(usize) + Sync) {
    pool().run(tasks, &f);
}

/// Run `f(i, chunk)` for the consecutive `chunk`-element pieces of `data` on the pool.
pub fn parallel_chunks_mut<T: Send>(data: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let len = data.len();
    let base = SendPtr(data.as_mut_ptr());
    parallel_for(len.div_ceil(chunk), |i| {
        let start = i * chunk;
        let end = (start + chunk).min(len);
        // SAFETY: each task gets a disjoint piece of `data`, which outlives the loop.
        let piece = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
        f(i, piece);
    });
}

/// A pointer that tasks may share, for handing out disjoint pieces of one buffer.
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: used only to hand disjoint pieces of one slice to the pool's tasks.
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

impl Pool {
    fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: Mutex::new(None),
            tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            parked: Mutex::new(0),
            wake: Condvar::new(),
        });
        for i in 1..threads {
            let s = shared.clone();
            std::thread::Builder::new()
                .name(format!("unicorn-worker-{i}"))
                .spawn(move || worker(&s))
                .expect("spawn a worker thread");
        }
        Self { shared, threads, launch: Mutex::new(()) }
    }

    fn run(&self, tasks: usize, f: &Task<'_>) {
        if tasks == 0 {
            return;
        }
        if self.threads == 1 || tasks == 1 || IN_POOL.get() {
            (0..tasks).for_each(f);
            return;
        }
        let _one_at_a_time = self.launch.lock().unwrap_or_else(|e| e.into_inner());
        let s = &self.shared;
        // SAFETY: the reference is only used by workers until `active` drops to 0, which this function waits
        // for before returning, while `f` is still borrowed.
        let job: &'static Task<'static> = unsafe { std::mem::transmute::<&Task<'_>, &'static Task<'static>>(f) };
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
        s.tasks.store(tasks, Ordering::Relaxed);
        s.next.store(0, Ordering::Relaxed);
        s.active.store(self.threads - 1, Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::Release);
        if *s.parked.lock().unwrap_or_else(|e| e.into_inner()) > 0 {
            s.wake.notify_all();
        }
        IN_POOL.set(true);
        let mine = catch_unwind(AssertUnwindSafe(|| take_tasks(s, f)));
        IN_POOL.set(false);
        // A worker may have been preempted in the middle of a task (other processes on the machine): after a
        // short spin, give the core away while waiting for it.
        let mut spins = 0u32;
        while s.active.load(Ordering::Acquire) > 0 {
            spins += 1;
            if spins < 256 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a parallel task panicked");
        }
    }
}

fn take_tasks(s: &Shared, f: &Task<'_>) {
    let n = s.tasks.load(Ordering::Relaxed);
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        f(i);
    }
}

fn worker(s: &Shared) {
    IN_POOL.set(true);
    let mut seen = 0;
    loop {
        // Spin for the next loop, then park.
        let t0 = Instant::now();
        let mut spins = 0u32;
        while s.epoch.load(Ordering::Acquire) == seen {
            std::hint::spin_loop();
            spins += 1;
            // Let a runnable thread of another process have the core now and then.
            if spins.is_multiple_of(256) {
                std::thread::yield_now();
            }
            if spins.is_multiple_of(1024) && t0.elapsed() > SPIN {
                let mut parked = s.parked.lock().unwrap_or_else(|e| e.into_inner());
                *parked += 1;
                while s.epoch.load(Ordering::Acquire) == seen {
                    parked = s.wake.wait(parked).unwrap_or_else(|e| e.into_inner());
                }
                *parked -= 1;
            }
        }
        seen = s.epoch.load(Ordering::Acquire);
        let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = job {
            if catch_unwind(AssertUnwindSafe(|| take_tasks(s, f))).is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
        }
        s.active.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        for tasks in [0, 1, 2, 7, 1000] {
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            parallel_for(tasks, |i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn chunks_cover_the_slice() {
        let mut v = vec![0usize; 1003];
        parallel_chunks_mut(&mut v, 100, |i, c| c.iter_mut().for_each(|x| *x = i));
        assert!(v.iter().enumerate().all(|(j, &x)| x == j / 100));
    }

    #[test]
    fn nested_loops_run_inline_and_back_to_back_loops_work() {
        let total = AtomicUsize::new(0);
        for _ in 0..200 {
            parallel_for(4, |_| {
                parallel_for(3, |_| {
                    total.fetch_add(1, Ordering::Relaxed);
                });
            });
        }
        assert_eq!(total.load(Ordering::Relaxed), 200 * 12);
    }
}
