//! The bounded thread pool that runs SG_IO (and anything else that may block
//! on a device), so that the event loop never does.
//!
//! Why not tokio's `spawn_blocking`: it wakes (or spawns) a thread for every
//! job whenever one is idle. PR commands on a healthy device take
//! microseconds to milliseconds, so under load that means one futex wake and
//! one context switch per request, which dominated the helper's CPU time.
//! This pool instead keeps few threads and lets jobs queue briefly behind
//! threads that are about to finish (they take the next job without
//! sleeping), and grows only when the queue stops moving:
//!
//! * one thread is started on demand and kept: under load it takes job
//!   after job without sleeping, and a second kept thread would only be
//!   woken (a futex wake, a context switch, in a VM an inter-processor
//!   interrupt) for jobs of a few microseconds; measured on 2 CPUs, one
//!   kept thread cut the helper's CPU per request from 15 to 10 us and
//!   raised throughput by a third at 8 connections;
//! * a job that has waited in the queue for [`STALL`] while no thread was
//!   idle makes a watchdog start another thread, up to `max`; so a device
//!   that hangs for 20 s holds one thread, and other clients' requests get
//!   new threads within milliseconds;
//! * threads beyond the kept ones exit after [`IDLE_EXIT`] without work.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long the oldest queued job may wait, with every thread busy, before
/// the watchdog adds a thread.
pub const STALL: Duration = Duration::from_millis(5);
/// How long a thread beyond the kept ones waits for work before exiting.
pub const IDLE_EXIT: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A handle to the pool; cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Signals worker threads that a job is queued.
    work: Condvar,
    /// Signals the watchdog that jobs are queued behind busy threads.
    watch: Condvar,
    max_threads: usize,
    kept_threads: usize,
    name: String,
}

#[derive(Default)]
struct State {
    queue: VecDeque<(Instant, Job)>,
    threads: usize,
    idle: usize,
    watchdog_waiting: bool,
    watchdog_running: bool,
    peak_threads: usize,
}

impl Pool {
    /// A pool of at most `max_threads` (at least 1) threads named `name`.
    pub fn new(name: &str, max_threads: usize) -> Pool {
        let max_threads = max_threads.max(1);
        Pool {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                work: Condvar::new(),
                watch: Condvar::new(),
                max_threads,
                kept_threads: 1,
                name: name.to_string(),
            }),
        }
    }

    /// Runs `f` on a pool thread. A panic in `f` is caught and logged; the
    /// thread survives, and whatever `f` owned (for a request: its reply
    /// channel) is dropped, which the waiting side sees.
    pub fn run<F>(&self, f: F)
    where
        F: FnOnce() + Send + 'static,
    {
        self.submit(Box::new(move || {
            if let Err(p) = std::panic::catch_unwind(AssertUnwindSafe(f)) {
                let what = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                tracing::error!("a request panicked on the SG_IO pool: {what}");
            }
        }));
    }

    /// Most threads that ever existed at once.
    pub fn peak_threads(&self) -> usize {
        self.inner.lock().peak_threads
    }

    fn submit(&self, job: Job) {
        let mut state = self.inner.lock();
        state.queue.push_back((Instant::now(), job));
        if state.idle > 0 {
            // Wake one sleeper. `idle` counts threads waiting for work; it is
            // decremented by the thread itself when it wakes.
            self.inner.work.notify_one();
        }
        // Sleepers already woken for earlier jobs but not yet running count
        // in `idle` too: only when there are more queued jobs than sleepers
        // is every one of them covered. Otherwise this job needs a thread of
        // its own, or the watchdog, in case the threads it waits for hang.
        if state.queue.len() > state.idle {
            if state.threads < self.inner.kept_threads {
                self.start_thread(&mut state);
            } else if state.threads < self.inner.max_threads {
                // Every thread is busy: the job waits; the watchdog adds a
                // thread if the queue stalls.
                self.start_watchdog(&mut state);
            }
        }
    }

    fn start_thread(&self, state: &mut MutexGuard<'_, State>) {
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name(self.inner.name.clone())
            .spawn(move || inner.worker());
        match spawned {
            Ok(_) => {
                state.threads += 1;
                state.peak_threads = state.peak_threads.max(state.threads);
            }
            // Out of threads (RLIMIT_NPROC, memory): the queue still drains
            // through the threads that exist; say so once per occurrence.
            Err(e) => tracing::warn!("cannot start an SG_IO thread: {e}"),
        }
    }

    fn start_watchdog(&self, state: &mut MutexGuard<'_, State>) {
        if state.watchdog_running {
            if state.watchdog_waiting {
                self.inner.watch.notify_one();
            }
            return;
        }
        let pool = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{}-watch", self.inner.name))
            .spawn(move || pool.watchdog());
        if spawned.is_ok() {
            state.watchdog_running = true;
        }
    }

    /// Adds a thread whenever the oldest queued job has waited [`STALL`]
    /// with no thread idle; sleeps while the queue is empty.
    fn watchdog(&self) {
        let inner = &self.inner;
        let mut state = inner.lock();
        loop {
            let waited = match state.queue.front() {
                Some((queued, _)) if state.idle == 0 => queued.elapsed(),
                // Sleepers are about to take the queued jobs; look again
                // shortly, since nobody signals when they have (and one of
                // them may then hang on its device).
                Some(_) => {
                    let (s, _) = inner
                        .watch
                        .wait_timeout(state, STALL)
                        .unwrap_or_else(|e| e.into_inner());
                    state = s;
                    continue;
                }
                None => {
                    state.watchdog_waiting = true;
                    state = inner.watch.wait(state).unwrap_or_else(|e| e.into_inner());
                    state.watchdog_waiting = false;
                    continue;
                }
            };
            if waited >= STALL {
                if state.threads < inner.max_threads {
                    self.start_thread(&mut state);
                }
                // Give the new thread (or the busy ones) a moment.
                drop(state);
                std::thread::sleep(STALL / 5);
                state = inner.lock();
            } else {
                let (s, _) = inner
                    .watch
                    .wait_timeout(state, STALL - waited)
                    .unwrap_or_else(|e| e.into_inner());
                state = s;
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A job never runs under the lock, so a poisoned lock only means a
        // panic in this module's few lines of bookkeeping; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn worker(&self) {
        let mut state = self.lock();
        loop {
            if let Some((_, job)) = state.queue.pop_front() {
                drop(state);
                job();
                state = self.lock();
                continue;
            }
            state.idle += 1;
            let (s, timeout) = self
                .work
                .wait_timeout(state, IDLE_EXIT)
                .unwrap_or_else(|e| e.into_inner());
            state = s;
            state.idle -= 1;
            if timeout.timed_out() && state.queue.is_empty() && state.threads > self.kept_threads {
                state.threads -= 1;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use std::sync::mpsc;

    fn spawn<R: Send + 'static>(
        pool: &Pool,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> mpsc::Receiver<R> {
        let (tx, rx) = mpsc::channel();
        pool.run(move || {
            let _ = tx.send(f());
        });
        rx
    }

    #[test]
    fn runs_jobs_and_survives_panics() {
        let pool = Pool::new("t", 4);
        assert_eq!(spawn(&pool, || 40 + 2).recv().unwrap(), 42);
        // A panicking job drops its channel; the pool keeps working.
        let rx = spawn(&pool, || -> u32 { panic!("boom") });
        assert!(rx.recv().is_err());
        assert_eq!(spawn(&pool, || 7).recv().unwrap(), 7);
    }

    #[test]
    fn jobs_queued_while_a_sleeper_wakes_still_get_threads() {
        // One kept thread, idle; then three jobs that block, submitted back
        // to back: the first wakes the sleeper, the others must not wait
        // for it (they used to, until its job finished).
        let pool = Pool::new("t", 4);
        spawn(&pool, || ()).recv().unwrap();
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let started = Arc::new(AtomicUsize::new(0));
        let blocked: Vec<_> = (0..3)
            .map(|_| {
                let (gate, started) = (gate.clone(), started.clone());
                spawn(&pool, move || {
                    started.fetch_add(1, Ordering::SeqCst);
                    let (lock, cond) = &*gate;
                    let mut open = lock.lock().unwrap();
                    while !*open {
                        open = cond.wait(open).unwrap();
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while started.load(Ordering::SeqCst) < 3 {
            assert!(
                Instant::now() < deadline,
                "{} of 3 jobs started",
                started.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        for rx in blocked {
            rx.recv().unwrap();
        }
    }

    #[test]
    fn grows_past_blocked_threads_up_to_the_bound() {
        let pool = Pool::new("t", 3);
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let started = Arc::new(AtomicUsize::new(0));
        let mut blocked = Vec::new();
        for _ in 0..5 {
            let gate = gate.clone();
            let started = started.clone();
            blocked.push(spawn(&pool, move || {
                started.fetch_add(1, Ordering::SeqCst);
                let (lock, cond) = &*gate;
                let mut open = lock.lock().unwrap();
                while !*open {
                    open = cond.wait(open).unwrap();
                }
            }));
        }
        // All three threads end up blocked; two jobs wait.
        let deadline = Instant::now() + Duration::from_secs(5);
        while started.load(Ordering::SeqCst) < 3 {
            assert!(Instant::now() < deadline, "pool did not grow");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(STALL * 4);
        assert_eq!(
            started.load(Ordering::SeqCst),
            3,
            "never more than max threads"
        );
        assert_eq!(pool.peak_threads(), 3);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        for rx in blocked {
            rx.recv().unwrap();
        }
        assert_eq!(started.load(Ordering::SeqCst), 5);
    }
}
