//! The worker threads that execute requests (SG_IO, which may block on a
//! device for as long as its timeout), so that the event loop never does.
//!
//! Workers wait in one epoll set for two kinds of work:
//!
//! * **parked connections**: a connection between requests is handed to the
//!   pool ([`Pool::park`]); when its socket becomes readable, the worker that
//!   sees it serves the request ([`Parked::readable`]), then parks the
//!   connection again, or lets it go back to its task. One thread does the
//!   whole request, so a request costs one wake-up in the helper instead of
//!   two (event loop, then a pool thread); on 2 CPUs that doubled the
//!   requests per second. What a request goes through, and when it goes
//!   back to its task, is described once, in ARCHITECTURE.md ("The path of
//!   a request");
//! * **jobs** ([`Pool::spawn`]): closures queued by the event loop, counted by
//!   an eventfd in semaphore mode, one count per job.
//!
//! Every command takes a place on its device first ([`Pool::run_on_device`],
//! [`Pool::enter_or_wait`]; see [`crate::server::isolation`], D29): a device executes
//! at most two at once unless it is answering, so one that never answers
//! holds at most two threads.
//! A parked connection whose request finds its device full is handed back to
//! its task, which queues the request here to wait without a thread.
//!
//! The number of threads adapts, as QEMU's own thread pool does not:
//!
//! * one thread is started with the pool's workers ([`Pool::start_workers`],
//!   at start-up, before the event loop narrows its seccomp filter and may
//!   no longer start threads) and kept: under load it takes request
//!   after request, and a second kept thread would only be woken (a futex or
//!   epoll wake, a context switch, in a VM an inter-processor interrupt) for
//!   requests of a few microseconds;
//! * a watchdog looks every [`STALL`] while work is going on: when a thread
//!   has been on the same request for a whole tick and no thread is waiting
//!   for work, it starts another, up to `max`. So a device that hangs for
//!   20 s holds one thread, and other clients are served by a new thread
//!   within milliseconds, exactly as when the event loop queued jobs. It
//!   also starts one when every thread was busy at this tick and the last
//!   and each started fewer than [`SLOW_PIECES`](watchdog::SLOW_PIECES) pieces of work in between:
//!   commands that take a millisecond or so (a healthy but distant LUN)
//!   never stall a thread for a whole tick, yet one thread taking them one
//!   after another would serve a thousand a second for the whole host;
//! * threads beyond the first exit after [`IDLE_EXIT`] without work; the
//!   watchdog sleeps when no thread has been busy for a while.
//!
//! Why the pool has its own threads instead of tokio's `spawn_blocking`
//! (which the first version used):
//!
//! * **a wake-up per request.** `spawn_blocking` hands every closure to a
//!   blocking thread: an idle one is woken for it (a futex wake and a
//!   context switch), or a new one is started when none is idle. A PR
//!   command on a healthy device takes microseconds, so under load that
//!   hand-over cost more than the command, and it dominated the helper's
//!   CPU time. Here the thread that finishes a request takes the next one
//!   without sleeping, and only one thread is kept;
//! * **growth on stall, not on demand.** `spawn_blocking` starts a thread
//!   whenever none is idle, so a burst of short requests starts a burst of
//!   threads. This pool adds one only when a thread has been on the same
//!   request for [`STALL`] (a slow or hung device), which is when another
//!   thread is actually needed, and the per-device bound (D29) keeps a hung
//!   device from taking them all;
//! * **waiting on the sockets themselves.** A blocking-pool closure cannot
//!   wait for a socket, so every request would first wake the event loop,
//!   which would then wake a blocking thread: two wake-ups per request. The
//!   workers here wait in one epoll set that holds the parked connections'
//!   sockets as well as the job queue, so the thread that sees a request
//!   arrive is the one that executes and answers it (one wake-up); the event
//!   loop (a current-thread runtime) only handles new connections and the
//!   unusual cases.
//!
//! # Rooms
//!
//! This file is the pool itself: the handle, the workers' loop, their start
//! and retirement, and the places handed to commands ([`DevicePlace`]). It
//! puts together four rooms, none of which knows the others or the pool:
//!
//! * `jobs`: the queue of [`Pool::spawn`]'s closures and its eventfd;
//! * `parked`: the connections parked between requests, by key;
//! * `places`: the counting of each device's places (D29);
//! * `watchdog`: when to add a worker, and its sleep;
//!
//! and `survive`, how work's panics and poisoned locks are lived through.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollTimeout};

use crate::server::isolation::{Admission, DevKey, Entering, Waiting};

mod jobs;
mod parked;
mod places;
mod survive;
#[cfg(test)]
mod tests;
mod watchdog;

use jobs::{Jobs, JOBS};
use parked::Parking;
pub use parked::{ParkKey, Parked, Release};
use places::Places;
use survive::{caught, lock};
use watchdog::{Slot, Watchdog, Workers, STALL};

/// How long a thread beyond the first waits for work before exiting.
pub const IDLE_EXIT: Duration = Duration::from_secs(10);
/// [`IDLE_EXIT`] as epoll's timeout, in milliseconds; a value that does not
/// fit fails the build instead of wrapping.
const IDLE_EXIT_MS: u16 = {
    let ms = IDLE_EXIT.as_millis();
    assert!(
        ms <= u16::MAX as u128,
        "IDLE_EXIT does not fit epoll's u16 ms"
    );
    ms as u16
};

/// A handle to the pool; cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    /// What the workers wait on: the job eventfd and the parked sockets.
    epoll: Epoll,
    jobs: Jobs,
    parked: Parking,
    places: Places<DevicePlace>,
    threads: Mutex<Threads>,
    /// Threads waiting in epoll_wait.
    idle: AtomicUsize,
    /// `threads.slots.len()`, readable without the lock (on every park and
    /// every wait).
    thread_count: AtomicUsize,
    watchdog: Watchdog,
    max_threads: usize,
    name: String,
    /// Called first on every worker thread ([`Pool::start_workers`]).
    on_start: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

#[derive(Default)]
struct Threads {
    slots: Vec<Arc<Slot>>,
    peak: usize,
    watchdog_started: bool,
}

impl Pool {
    /// A pool of at most `max_threads` (at least 1) threads named `name`.
    /// Fails only if the epoll set or the eventfd cannot be created.
    pub fn new(name: &str, max_threads: usize) -> std::io::Result<Pool> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let jobs = Jobs::new(&epoll)?;
        Ok(Pool {
            inner: Arc::new(Inner {
                epoll,
                jobs,
                parked: Parking::default(),
                places: Places::new(max_threads),
                threads: Mutex::new(Threads::default()),
                idle: AtomicUsize::new(0),
                thread_count: AtomicUsize::new(0),
                watchdog: Watchdog::default(),
                max_threads: max_threads.max(1),
                name: name.to_string(),
                on_start: OnceLock::new(),
            }),
        })
    }

    /// Starts the first worker (and the watchdog) now, instead of with the
    /// first piece of work; every worker calls `on_start` first, on its own
    /// thread (start-up narrows the worker's seccomp filter with it).
    /// Later workers are started by the watchdog, so once this has
    /// succeeded the caller never starts a thread: the event loop may then
    /// be forbidden to. Fails if the thread cannot be started.
    pub fn start_workers(
        &self,
        on_start: impl Fn() + Send + Sync + 'static,
    ) -> std::io::Result<()> {
        if self.inner.on_start.set(Box::new(on_start)).is_err() {
            return Err(std::io::Error::other("the workers were already started"));
        }
        self.inner.start_thread()
    }

    /// Runs `f` on a pool thread. A panic in `f` is caught and logged; the
    /// thread survives, and whatever `f` owned (for a request: its reply
    /// channel) is dropped, which the waiting side sees.
    pub fn spawn<F>(&self, f: F)
    where
        F: FnOnce() + Send + 'static,
    {
        self.inner.jobs.push(Box::new(f));
        self.inner.ensure_thread();
    }

    /// Parks a connection: a worker calls [`Parked::readable`] whenever its
    /// socket is readable, until that returns false or [`Pool::unpark`] is
    /// called; then [`Parked::release`]. If the pool cannot watch the socket
    /// or start a thread, `conn` is released at once with
    /// [`Release::Refused`] and None returned.
    pub fn park(&self, conn: Box<dyn Parked>) -> Option<ParkKey> {
        let inner = &self.inner;
        if !inner.ensure_thread() {
            conn.release(Release::Refused);
            return None;
        }
        inner.parked.park(&inner.epoll, conn)
    }

    /// Takes a parked connection out of the pool: released at once if it is
    /// waiting, or as soon as the worker serving it has finished.
    pub fn unpark(&self, key: ParkKey) {
        self.inner.parked.unpark(&self.inner.epoll, key);
    }

    /// Most threads that ever existed at once.
    #[cfg(test)]
    pub fn peak_threads(&self) -> usize {
        lock(&self.inner.threads).peak
    }

    /// Runs `f` on the calling thread if `key` has a place free (see
    /// [`crate::server::isolation`]), holding the place while `f` runs;
    /// None if the device already executes its bound of commands.
    pub fn run_on_device<R>(&self, key: DevKey, f: impl FnOnce() -> R) -> Option<R> {
        if let Some(_alone) = self.inner.places.try_alone() {
            // Alone: no need to know the device.
            return Some(f());
        }
        let now = Instant::now();
        if !self.inner.places.try_enter(key, now) {
            return None;
        }
        // The place is given up (or passed on) when it drops.
        let _place = DevicePlace::new(self, key, now);
        Some(f())
    }

    /// Calls `waiting` with a place for `key`: at once, on the calling
    /// thread, if the device has a place free; else, on a pool thread, as
    /// soon as one of its commands ends. At shutdown ([`Pool::close_devices`])
    /// it is called with [`Admission::Cancelled`] instead.
    pub fn enter_or_wait(&self, key: DevKey, waiting: Waiting<DevicePlace>) {
        let now = Instant::now();
        match self.inner.places.enter_or_wait(key, waiting, now) {
            Entering::Run(waiting) => waiting(Admission::Run(DevicePlace::new(self, key, now))),
            Entering::Cancel(waiting) => waiting(Admission::Cancelled),
            Entering::Queued => {}
        }
    }

    /// Shutdown has waited long enough: cancels every request waiting for
    /// a device (and any that comes later for a busy one), on the calling
    /// thread. Returns how many were cancelled and how many commands are
    /// still executing.
    pub fn close_devices(&self) -> (usize, usize) {
        let (cancelled, executing) = self.inner.places.close();
        let n = cancelled.len();
        for waiting in cancelled {
            caught("cancelling a request panicked", || {
                waiting(Admission::Cancelled)
            });
        }
        (n, executing)
    }

    /// A command on `key` that started at `started` has ended: its place
    /// goes to the first request waiting for the device, and more places to
    /// the next ones if the device has room now (D29); each starts on a
    /// pool thread. Else the place is freed.
    fn command_ended(&self, key: DevKey, started: Instant) {
        let now = Instant::now();
        for next in self.inner.places.ended(key, started, now) {
            let place = DevicePlace::new(self, key, now);
            self.spawn(move || next(Admission::Run(place)));
        }
    }
}

/// A place to execute one command on one device (D29). Dropping it gives
/// the place to the first request waiting for the device, which then runs on
/// a pool thread.
pub struct DevicePlace {
    pool: Pool,
    key: DevKey,
    started: Instant,
}

impl DevicePlace {
    fn new(pool: &Pool, key: DevKey, started: Instant) -> DevicePlace {
        DevicePlace {
            pool: pool.clone(),
            key,
            started,
        }
    }

    /// The pool the place belongs to, to run follow-up work for the same
    /// command (the place stays taken while the place lives).
    #[cfg(feature = "mpath")]
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

impl Drop for DevicePlace {
    fn drop(&mut self) {
        self.pool.command_ended(self.key, self.started);
    }
}

impl Inner {
    /// Starts the first thread if there is none. False if none can run.
    fn ensure_thread(self: &Arc<Self>) -> bool {
        if self.thread_count.load(Ordering::Acquire) > 0 {
            return true;
        }
        let _ = self.start_thread();
        self.thread_count.load(Ordering::Acquire) > 0
    }

    /// Starts a worker, up to the bound (and the watchdog with the first).
    /// The error is the thread's, already warned about.
    fn start_thread(self: &Arc<Self>) -> std::io::Result<()> {
        let mut threads = lock(&self.threads);
        if threads.slots.len() >= self.max_threads {
            return Ok(());
        }
        let slot = Arc::new(Slot::default());
        let (inner, mine) = (self.clone(), slot.clone());
        let spawned = std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || inner.worker(mine));
        let started = match spawned {
            Ok(_) => {
                threads.slots.push(slot);
                threads.peak = threads.peak.max(threads.slots.len());
                self.thread_count
                    .store(threads.slots.len(), Ordering::Release);
                Ok(())
            }
            // Out of threads (RLIMIT_NPROC, memory): work still goes through
            // the threads that exist. The watchdog retries every STALL while
            // a request is stuck, so the warning is rate-limited (as D10's).
            Err(e) => {
                static LOG: Mutex<crate::server::ratelimit::RateLimited> = Mutex::new(
                    crate::server::ratelimit::RateLimited::new(Duration::from_secs(10)),
                );
                if let Some(suppressed) = lock(&LOG).allow() {
                    tracing::warn!(suppressed, "cannot start an SG_IO thread: {e}");
                }
                Err(e)
            }
        };
        if !threads.watchdog_started && !threads.slots.is_empty() {
            let inner = self.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{}-watch", self.name))
                .spawn(move || inner.watchdog.watch(&inner));
            threads.watchdog_started = spawned.is_ok();
        }
        started
    }

    /// Removes the calling thread unless it is the last one.
    fn retire(&self, slot: &Arc<Slot>) -> bool {
        let mut threads = lock(&self.threads);
        if threads.slots.len() <= 1 {
            return false;
        }
        threads.slots.retain(|s| !Arc::ptr_eq(s, slot));
        self.thread_count
            .store(threads.slots.len(), Ordering::Release);
        true
    }

    /// A worker: waits in the epoll set, then runs what woke it, a queued
    /// job or a parked connection's request; retires after [`IDLE_EXIT`]
    /// without work unless it is the last.
    fn worker(self: Arc<Self>, slot: Arc<Slot>) {
        if let Some(on_start) = self.on_start.get() {
            on_start();
        }
        let mut events = [EpollEvent::empty(); 1];
        loop {
            // The last thread waits for ever; the others retire when idle.
            let timeout = if self.thread_count.load(Ordering::Acquire) > 1 {
                EpollTimeout::from(IDLE_EXIT_MS)
            } else {
                EpollTimeout::NONE
            };
            self.idle.fetch_add(1, Ordering::SeqCst);
            let waited = self.epoll.wait(&mut events, timeout);
            self.idle.fetch_sub(1, Ordering::SeqCst);
            match waited {
                Ok(0) => {
                    if self.retire(&slot) {
                        return;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    // Not expected for a valid epoll fd; do not spin.
                    tracing::error!("epoll_wait failed on an SG_IO thread: {e}");
                    std::thread::sleep(STALL);
                    continue;
                }
            }
            self.watchdog.work_started(&slot);
            match events[0].data() {
                JOBS => {
                    if let Some(job) = self.jobs.take() {
                        caught("a request panicked on the SG_IO pool", job);
                    }
                }
                key => self.parked.on_readable(&self.epoll, key),
            }
            self.watchdog.work_ended(&slot);
        }
    }
}

impl Workers for Arc<Inner> {
    fn slots(&self) -> Vec<Arc<Slot>> {
        lock(&self.threads).slots.clone()
    }

    fn any_idle(&self) -> bool {
        self.idle.load(Ordering::SeqCst) > 0
    }

    fn add_worker(&self) {
        let _ = self.start_thread();
    }
}
