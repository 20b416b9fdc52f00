//! The worker threads that execute requests (SG_IO, which may block on a
//! device for as long as its timeout), so that the event loop never does.
//!
//! Workers wait in one epoll set for two kinds of work:
//!
//! * **parked connections**: a connection between requests is handed to the
//!   pool ([`Pool::park`]); when its socket becomes readable, the worker that
//!   sees it reads the request, executes it and writes the response itself,
//!   then parks the connection again. One thread does the whole request, so
//!   a request costs one wake-up in the helper instead of two (event loop,
//!   then a pool thread); on 2 CPUs that doubled the requests per second. A
//!   connection that does anything unusual (half a request, end of file, a
//!   protocol violation, a response the socket does not take at once) is
//!   handed back to its task on the event loop, which carries on with the
//!   same steps (`connection::serve` lists them: each is written once and
//!   used by both);
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
//! * one thread is started on demand and kept: under load it takes request
//!   after request, and a second kept thread would only be woken (a futex or
//!   epoll wake, a context switch, in a VM an inter-processor interrupt) for
//!   requests of a few microseconds;
//! * a watchdog looks every [`STALL`] while work is going on: when a thread
//!   has been on the same request for a whole tick and no thread is waiting
//!   for work, it starts another, up to `max`. So a device that hangs for
//!   20 s holds one thread, and other clients are served by a new thread
//!   within milliseconds, exactly as when the event loop queued jobs. It
//!   also starts one when every thread was busy at this tick and the last
//!   and each started fewer than [`SLOW_PIECES`] pieces of work in between:
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

use std::collections::VecDeque;
use std::os::fd::BorrowedFd;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::server::isolation::{Admission, DevKey, Devices, Entering, Waiting};

/// How long a thread may stay on one piece of work, with no other thread
/// waiting for work, before the watchdog adds a thread.
pub const STALL: Duration = Duration::from_millis(5);
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
/// Watchdog ticks with no thread busy before the watchdog goes to sleep.
const QUIET_TICKS: u32 = 20;

/// Fewer pieces of work than this per thread in a tick ([`STALL`]), with
/// every thread busy at both ends of it, means commands of about 300 µs or
/// more: the watchdog adds a thread. Commands on a device that fails at
/// once, or a fast one, take a few microseconds: thousands per tick.
pub const SLOW_PIECES: u64 = 16;
/// The epoll key of the job eventfd (connection keys never reach it: their
/// index half is a slab index).
const JOBS: u64 = u64::MAX;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A connection parked in the pool between requests.
pub trait Parked: Send + 'static {
    /// The socket whose readability means work.
    fn fd(&self) -> BorrowedFd<'_>;
    /// The socket is readable (or closed): serve what arrived, on the
    /// calling worker thread. True to be parked again.
    fn readable(&mut self) -> bool;
    /// Leaves the pool, once the socket is no longer watched. Called exactly
    /// once.
    fn release(self: Box<Self>, why: Release);
}

/// Why a parked connection leaves the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// [`Parked::readable`] returned false.
    Done,
    /// [`Pool::unpark`] asked for it.
    Unparked,
    /// [`Parked::readable`] panicked (logged as an error).
    Panicked,
    /// The pool could not watch its socket or start a thread.
    Refused,
}

/// Names a parked connection, for [`Pool::unpark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParkKey(u64);

/// A handle to the pool; cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    epoll: Epoll,
    /// Readable while jobs are queued: one count per job.
    jobs_ready: EventFd,
    jobs: Mutex<VecDeque<Job>>,
    parked: Mutex<Slab>,
    threads: Mutex<Threads>,
    /// Threads waiting in epoll_wait.
    idle: AtomicUsize,
    /// `threads.slots.len()`, readable without the lock (on every park and
    /// every wait).
    thread_count: AtomicUsize,
    watchdog: Watchdog,
    max_threads: usize,
    name: String,
    /// Commands executing and requests waiting, per device (D29).
    devices: Mutex<Devices<DevicePlace>>,
    /// Commands executing, plus [`UNKEYED`] while one executes whose
    /// device was not looked up (it started while no other executed).
    executing: AtomicUsize,
    /// Whether unkeyed commands are allowed: only with a bound of two or
    /// more, so that a device refused a place always has a keyed command
    /// executing, whose end starts the next.
    unkeyed_ok: bool,
}

/// See `Inner::executing`.
const UNKEYED: usize = 1 << (usize::BITS - 1);

#[derive(Default)]
struct Threads {
    slots: Vec<Arc<Slot>>,
    peak: usize,
    watchdog_started: bool,
}

/// One thread's state, as the watchdog sees it.
#[derive(Default)]
struct Slot {
    busy: AtomicBool,
    /// Pieces of work started; unchanged across a tick while busy = stalled.
    work: AtomicU64,
    /// `work` at the watchdog's previous tick (written by the watchdog only).
    seen: AtomicU64,
    /// `busy` at the watchdog's previous tick (written by the watchdog only).
    seen_busy: AtomicBool,
}

#[derive(Default)]
struct Watchdog {
    sleeping: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

/// Parked connections by key: the low 32 bits index `entries`, the high 32
/// bits are the entry's generation, so that an event harvested for a
/// connection that has since left (and whose entry was reused) is ignored.
///
/// This is what the `slotmap` crate does (its keys round-trip through
/// epoll's u64 with `KeyData::as_ffi`/`from_ffi`). It is kept by hand
/// because it is these forty lines and nothing else of that crate would be
/// used, while every crate linked into a privileged helper is one more to
/// audit and one more licence (slotmap's is Zlib, which none of ours is
/// today) in every artifact's notices and licence expression.
#[derive(Default)]
struct Slab {
    entries: Vec<Entry>,
    free: Vec<usize>,
}

struct Entry {
    generation: u32,
    state: State,
}

enum State {
    Vacant,
    Parked(Box<dyn Parked>),
    /// A worker is serving it; `release` records an unpark meanwhile.
    Serving {
        release: bool,
    },
}

impl Entry {
    /// Takes the connection out if it is parked, leaving `then`.
    fn take_parked(&mut self, then: State) -> Option<Box<dyn Parked>> {
        match std::mem::replace(&mut self.state, then) {
            State::Parked(conn) => Some(conn),
            other => {
                self.state = other;
                None
            }
        }
    }
}

impl Slab {
    fn reserve(&mut self) -> u64 {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.entries.push(Entry {
                    generation: 0,
                    state: State::Vacant,
                });
                self.entries.len() - 1
            }
        };
        let entry = &mut self.entries[index];
        entry.state = State::Serving { release: false };
        (u64::from(entry.generation) << 32) | index as u64
    }

    fn entry(&mut self, key: u64) -> Option<&mut Entry> {
        let index = (key & 0xffff_ffff) as usize;
        self.entries
            .get_mut(index)
            .filter(|e| u64::from(e.generation) == key >> 32)
    }

    fn vacate(&mut self, key: u64) {
        let index = (key & 0xffff_ffff) as usize;
        if let Some(entry) = self.entries.get_mut(index) {
            entry.generation = entry.generation.wrapping_add(1);
            entry.state = State::Vacant;
            self.free.push(index);
        }
    }
}

fn watch_flags() -> EpollFlags {
    EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT
}

impl Pool {
    /// A pool of at most `max_threads` (at least 1) threads named `name`.
    /// Fails only if the epoll set or the eventfd cannot be created.
    pub fn new(name: &str, max_threads: usize) -> std::io::Result<Pool> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let jobs_ready = EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_SEMAPHORE,
        )?;
        epoll.add(&jobs_ready, EpollEvent::new(EpollFlags::EPOLLIN, JOBS))?;
        Ok(Pool {
            inner: Arc::new(Inner {
                epoll,
                jobs_ready,
                jobs: Mutex::new(VecDeque::new()),
                parked: Mutex::new(Slab::default()),
                threads: Mutex::new(Threads::default()),
                idle: AtomicUsize::new(0),
                thread_count: AtomicUsize::new(0),
                watchdog: Watchdog::default(),
                max_threads: max_threads.max(1),
                name: name.to_string(),
                devices: Mutex::new(Devices::new(
                    crate::server::isolation::bound_for(max_threads),
                    crate::server::isolation::cap_for(max_threads),
                )),
                executing: AtomicUsize::new(0),
                unkeyed_ok: crate::server::isolation::bound_for(max_threads) >= 2,
            }),
        })
    }

    /// Runs `f` on a pool thread. A panic in `f` is caught and logged; the
    /// thread survives, and whatever `f` owned (for a request: its reply
    /// channel) is dropped, which the waiting side sees.
    pub fn spawn<F>(&self, f: F)
    where
        F: FnOnce() + Send + 'static,
    {
        let inner = &self.inner;
        lock(&inner.jobs).push_back(Box::new(f));
        // The job is queued before it is counted, so whoever takes a count
        // finds a job.
        if let Err(e) = inner.jobs_ready.write(1) {
            tracing::error!("cannot signal a queued job: {e}");
        }
        inner.ensure_thread();
    }

    /// Parks a connection: a worker calls [`Parked::readable`] whenever its
    /// socket is readable, until that returns false or [`Pool::unpark`] is
    /// called; then [`Parked::release`]. If the pool cannot watch the socket,
    /// `conn` is released at once with [`Release::Refused`] and None returned.
    pub fn park(&self, conn: Box<dyn Parked>) -> Option<ParkKey> {
        let inner = &self.inner;
        if !inner.ensure_thread() {
            conn.release(Release::Refused);
            return None;
        }
        let mut slab = lock(&inner.parked);
        let key = slab.reserve();
        match inner
            .epoll
            .add(conn.fd(), EpollEvent::new(watch_flags(), key))
        {
            Ok(()) => {
                if let Some(entry) = slab.entry(key) {
                    entry.state = State::Parked(conn);
                }
                Some(ParkKey(key))
            }
            Err(e) => {
                slab.vacate(key);
                drop(slab);
                tracing::warn!("cannot watch a connection on the worker threads: {e}");
                conn.release(Release::Refused);
                None
            }
        }
    }

    /// Takes a parked connection out of the pool: released at once if it is
    /// waiting, or as soon as the worker serving it has finished.
    pub fn unpark(&self, key: ParkKey) {
        let inner = &self.inner;
        let mut slab = lock(&inner.parked);
        let Some(entry) = slab.entry(key.0) else {
            return;
        };
        if let State::Serving { release } = &mut entry.state {
            *release = true;
        } else if let Some(conn) = entry.take_parked(State::Vacant) {
            slab.vacate(key.0);
            drop(slab);
            inner.stop_watching(conn, Release::Unparked);
        }
    }

    /// Most threads that ever existed at once.
    #[cfg(test)]
    pub fn peak_threads(&self) -> usize {
        lock(&self.inner.threads).peak
    }

    /// Runs `f` on the calling thread if `key` has a place free (see
    /// [`crate::server::isolation`]), holding the place while `f` runs; None if the
    /// device already executes its bound of commands.
    pub fn run_on_device<R>(&self, key: DevKey, f: impl FnOnce() -> R) -> Option<R> {
        let inner = &self.inner;
        if inner.unkeyed_ok
            && inner
                .executing
                .compare_exchange(0, UNKEYED | 1, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
        {
            // Alone: no need to know the device.
            struct Unkeyed<'a>(&'a AtomicUsize);
            impl Drop for Unkeyed<'_> {
                fn drop(&mut self) {
                    self.0.fetch_sub(UNKEYED | 1, Ordering::SeqCst);
                }
            }
            let _done = Unkeyed(&inner.executing);
            return Some(f());
        }
        // The place is given up (or passed on) when the `DevicePlace` drops.
        let _ticket = self.enter(key)?;
        Some(f())
    }

    /// Counts a command as executing, then takes a place on `key` for it;
    /// uncounts it if there is none.
    fn enter(&self, key: DevKey) -> Option<DevicePlace> {
        let before = self.inner.executing.fetch_add(1, Ordering::SeqCst);
        let unkeyed = usize::from(before & UNKEYED != 0);
        let now = Instant::now();
        if lock(&self.inner.devices).try_enter_beside(key, unkeyed, now) {
            return Some(DevicePlace::new(self, key, now));
        }
        self.inner.executing.fetch_sub(1, Ordering::SeqCst);
        None
    }

    /// A command on `key` that started at `started` has ended: its place
    /// (and its count) goes to the first request waiting for the device,
    /// and more places to the next ones if the device has room now (D29);
    /// each starts on a pool thread. Else the place is freed.
    fn command_ended(&self, key: DevKey, started: Instant) {
        let now = Instant::now();
        let admitted = lock(&self.inner.devices).command_ended(key, started, now);
        let executing = &self.inner.executing;
        // Counted before the leaving command is uncounted, so that the
        // count never reads zero while they execute.
        executing.fetch_add(admitted.len(), Ordering::SeqCst);
        executing.fetch_sub(1, Ordering::SeqCst);
        for next in admitted {
            let place = DevicePlace::new(self, key, now);
            self.spawn(move || next(Admission::Run(place)));
        }
    }

    /// Calls `waiting` with a place for `key`: at once, on the calling
    /// thread, if the device has a place free; else, on a pool thread, as
    /// soon as one of its commands ends. At shutdown ([`Pool::close_devices`])
    /// it is called with [`Admission::Cancelled`] instead.
    pub fn enter_or_wait(&self, key: DevKey, waiting: Waiting<DevicePlace>) {
        let executing = &self.inner.executing;
        let before = executing.fetch_add(1, Ordering::SeqCst);
        let unkeyed = usize::from(before & UNKEYED != 0);
        let now = Instant::now();
        let admitted = lock(&self.inner.devices).enter_or_wait(key, unkeyed, waiting, now);
        match admitted {
            Entering::Run(waiting) => waiting(Admission::Run(DevicePlace::new(self, key, now))),
            Entering::Cancel(waiting) => {
                executing.fetch_sub(1, Ordering::SeqCst);
                waiting(Admission::Cancelled)
            }
            Entering::Queued => {
                executing.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Shutdown has waited long enough: cancels every request waiting for
    /// a device (and any that comes later for a busy one), on the calling
    /// thread. Returns how many were cancelled and how many commands are
    /// still executing.
    pub fn close_devices(&self) -> (usize, usize) {
        let (cancelled, mut executing) = lock(&self.inner.devices).close();
        if self.inner.executing.load(Ordering::SeqCst) & UNKEYED != 0 {
            executing += 1;
        }
        let n = cancelled.len();
        for waiting in cancelled {
            if let Err(p) =
                std::panic::catch_unwind(AssertUnwindSafe(|| waiting(Admission::Cancelled)))
            {
                tracing::error!("cancelling a request panicked: {}", panic_message(&*p));
            }
        }
        (n, executing)
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Work never runs under these locks, so a poisoned lock only means a
    // panic in this module's bookkeeping; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    /// Starts the first thread if there is none. False if none can run.
    fn ensure_thread(self: &Arc<Self>) -> bool {
        if self.thread_count.load(Ordering::Acquire) > 0 {
            return true;
        }
        self.start_thread();
        self.thread_count.load(Ordering::Acquire) > 0
    }

    fn start_thread(self: &Arc<Self>) {
        let mut threads = lock(&self.threads);
        if threads.slots.len() >= self.max_threads {
            return;
        }
        let slot = Arc::new(Slot::default());
        let (inner, mine) = (self.clone(), slot.clone());
        let spawned = std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || inner.worker(mine));
        match spawned {
            Ok(_) => {
                threads.slots.push(slot);
                threads.peak = threads.peak.max(threads.slots.len());
                self.thread_count
                    .store(threads.slots.len(), Ordering::Release);
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
            }
        }
        if !threads.watchdog_started && !threads.slots.is_empty() {
            let inner = self.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{}-watch", self.name))
                .spawn(move || inner.watch());
            threads.watchdog_started = spawned.is_ok();
        }
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

    fn worker(self: Arc<Self>, slot: Arc<Slot>) {
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
            slot.work.fetch_add(1, Ordering::Relaxed);
            slot.busy.store(true, Ordering::SeqCst);
            if self.watchdog.sleeping.load(Ordering::SeqCst) {
                self.wake_watchdog();
            }
            match events[0].data() {
                JOBS => self.run_job(),
                key => self.on_readable(key),
            }
            slot.busy.store(false, Ordering::Release);
        }
    }

    fn run_job(&self) {
        // Another thread may have taken the last count (level-triggered
        // events can wake more than one waiter).
        if self.jobs_ready.read().is_err() {
            return;
        }
        let Some(job) = lock(&self.jobs).pop_front() else {
            return;
        };
        if let Err(p) = std::panic::catch_unwind(AssertUnwindSafe(job)) {
            tracing::error!(
                "a request panicked on the SG_IO pool: {}",
                panic_message(&*p)
            );
        }
    }

    fn on_readable(&self, key: u64) {
        let mut conn = {
            let mut slab = lock(&self.parked);
            // None: it left the pool since the event was harvested.
            let taken = slab
                .entry(key)
                .and_then(|entry| entry.take_parked(State::Serving { release: false }));
            match taken {
                Some(conn) => conn,
                None => return,
            }
        };
        let again = match std::panic::catch_unwind(AssertUnwindSafe(|| conn.readable())) {
            Ok(again) => again,
            Err(p) => {
                tracing::error!(
                    "a request panicked on the SG_IO pool: {}",
                    panic_message(&*p)
                );
                return self.unpark(key, conn, Release::Panicked);
            }
        };
        if !again {
            return self.unpark(key, conn, Release::Done);
        }
        let mut slab = lock(&self.parked);
        let Some(entry) = slab.entry(key) else {
            drop(slab);
            return self.stop_watching(conn, Release::Unparked);
        };
        if matches!(entry.state, State::Serving { release: true }) {
            slab.vacate(key);
            drop(slab);
            return self.stop_watching(conn, Release::Unparked);
        }
        // Re-armed under the lock: a worker that sees the next event waits
        // for the lock, then finds the connection parked.
        let mut event = EpollEvent::new(watch_flags(), key);
        match self.epoll.modify(conn.fd(), &mut event) {
            Ok(()) => entry.state = State::Parked(conn),
            Err(e) => {
                slab.vacate(key);
                drop(slab);
                tracing::warn!("cannot watch a connection again: {e}");
                self.stop_watching(conn, Release::Done);
            }
        }
    }

    fn unpark(&self, key: u64, conn: Box<dyn Parked>, why: Release) {
        lock(&self.parked).vacate(key);
        self.stop_watching(conn, why);
    }

    /// Stops watching `conn`'s socket and releases it.
    fn stop_watching(&self, conn: Box<dyn Parked>, why: Release) {
        // ENOENT/EBADF only if the socket is no longer registered.
        let _ = self.epoll.delete(conn.fd());
        conn.release(why);
    }

    fn wake_watchdog(&self) {
        let _guard = lock(&self.watchdog.lock);
        self.watchdog.sleeping.store(false, Ordering::SeqCst);
        self.watchdog.wake.notify_one();
    }

    /// Adds a thread when one has been on the same work for a tick and none
    /// is waiting for work; sleeps after [`QUIET_TICKS`] ticks without work.
    fn watch(self: Arc<Self>) {
        let mut quiet = 0;
        loop {
            std::thread::sleep(STALL);
            let slots = lock(&self.threads).slots.clone();
            let (mut busy, mut stalled, mut slow) = (false, false, !slots.is_empty());
            for slot in &slots {
                let work = slot.work.load(Ordering::Relaxed);
                let previous = slot.seen.swap(work, Ordering::Relaxed);
                let now_busy = slot.busy.load(Ordering::SeqCst);
                let was_busy = slot.seen_busy.swap(now_busy, Ordering::Relaxed);
                if now_busy {
                    busy = true;
                    stalled |= previous == work;
                }
                slow &= now_busy && was_busy && work.wrapping_sub(previous) < SLOW_PIECES;
            }
            if (stalled || slow) && self.idle.load(Ordering::SeqCst) == 0 {
                self.start_thread();
            }
            quiet = if busy { 0 } else { quiet + 1 };
            if quiet < QUIET_TICKS {
                continue;
            }
            // Sleep until a thread starts work. A thread sets `busy` before
            // it reads `sleeping`, and this sets `sleeping` before it reads
            // `busy` (all SeqCst): at least one of the two sees the other.
            let mut guard = lock(&self.watchdog.lock);
            self.watchdog.sleeping.store(true, Ordering::SeqCst);
            if slots.iter().any(|s| s.busy.load(Ordering::SeqCst)) {
                self.watchdog.sleeping.store(false, Ordering::SeqCst);
                continue;
            }
            while self.watchdog.sleeping.load(Ordering::SeqCst) {
                guard = self
                    .watchdog
                    .wake
                    .wait(guard)
                    .unwrap_or_else(|e| e.into_inner());
            }
            quiet = 0;
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
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
        pool.spawn(move || {
            let _ = tx.send(f());
        });
        rx
    }

    #[test]
    fn runs_jobs_and_survives_panics() {
        let pool = Pool::new("t", 4).unwrap();
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
        let pool = Pool::new("t", 4).unwrap();
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
        let pool = Pool::new("t", 3).unwrap();
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

    #[test]
    fn at_most_two_commands_per_device_unkeyed_or_not_and_waiting_ones_start_later() {
        use std::os::fd::AsFd;
        let pool = Pool::new("t", 4).unwrap();
        // a: a file (every non-device fd is one device); b: a device.
        let (a, b) = (
            tempfile::tempfile().unwrap(),
            std::fs::File::open("/dev/null").unwrap(),
        );
        let gate: Gate = Arc::new((Mutex::new(false), Condvar::new()));
        let wait = |gate: &Gate| {
            let (lock, cond) = &**gate;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cond.wait(open).unwrap();
            }
        };
        let started = Arc::new(AtomicUsize::new(0));
        // Two commands on device a, each on its own thread: the first starts
        // alone (unkeyed), the second beside it (keyed).
        let holders: Vec<_> = (0..2)
            .map(|_| {
                let (pool, a, gate, started) = (
                    pool.clone(),
                    a.try_clone().unwrap(),
                    gate.clone(),
                    started.clone(),
                );
                std::thread::spawn(move || {
                    pool.run_on_device(DevKey::of(a.as_fd()), || {
                        started.fetch_add(1, Ordering::SeqCst);
                        wait(&gate)
                    })
                })
            })
            .collect();
        wait_for("two commands on a", || started.load(Ordering::SeqCst) == 2);
        // A third on a is refused; b still has a place.
        assert!(pool.run_on_device(DevKey::of(a.as_fd()), || ()).is_none());
        assert_eq!(pool.run_on_device(DevKey::of(b.as_fd()), || 7), Some(7));
        // A request queued for a starts, on a pool thread, when one of a's
        // commands ends.
        let (tx, rx) = mpsc::channel();
        pool.enter_or_wait(
            DevKey::of(a.as_fd()),
            Box::new(move |admission| {
                let _ = tx.send(matches!(admission, Admission::Run(_)));
            }),
        );
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(true));
        for h in holders {
            assert_eq!(h.join().unwrap(), Some(()));
        }
        // Everything has left, so the next command starts unkeyed again.
        wait_for("every place freed", || {
            pool.inner.executing.load(Ordering::SeqCst) == 0
        });
    }

    /// A test gate: closed (false) holds whoever waits on it.
    type Gate = Arc<(Mutex<bool>, Condvar)>;

    /// Counts reads on a socket pair; reports how it left the pool.
    struct Echo {
        sock: std::os::unix::net::UnixStream,
        reads: Arc<AtomicUsize>,
        /// readable() blocks while this is closed.
        gate: Gate,
        left: mpsc::Sender<Release>,
    }

    impl Parked for Echo {
        fn fd(&self) -> BorrowedFd<'_> {
            use std::os::fd::AsFd;
            self.sock.as_fd()
        }
        fn readable(&mut self) -> bool {
            use std::io::Read;
            let mut b = [0u8; 1];
            let n = (&self.sock).read(&mut b).unwrap_or(0);
            self.reads.fetch_add(1, Ordering::SeqCst);
            let (lock, cond) = &*self.gate;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cond.wait(open).unwrap();
            }
            n == 1
        }
        fn release(self: Box<Self>, why: Release) {
            let _ = self.left.send(why);
        }
    }

    fn echo(
        gate_open: bool,
    ) -> (
        std::os::unix::net::UnixStream,
        Box<Echo>,
        Arc<AtomicUsize>,
        Gate,
        mpsc::Receiver<Release>,
    ) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let reads = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new((Mutex::new(gate_open), Condvar::new()));
        let (tx, rx) = mpsc::channel();
        let e = Box::new(Echo {
            sock: b,
            reads: reads.clone(),
            gate: gate.clone(),
            left: tx,
        });
        (a, e, reads, gate, rx)
    }

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn parked_connections_are_served_on_every_arrival_until_done_or_unparked() {
        use std::io::Write;
        let pool = Pool::new("t", 2).unwrap();
        let (mut client, conn, reads, _, left) = echo(true);
        let key = pool.park(conn).unwrap();
        // Nothing arrives: nothing is read.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(reads.load(Ordering::SeqCst), 0);
        for i in 1..=3 {
            client.write_all(b"x").unwrap();
            wait_for("a read", || reads.load(Ordering::SeqCst) == i);
        }
        // Unparked while waiting: released at once (and dropped).
        pool.unpark(key);
        assert_eq!(
            left.recv_timeout(Duration::from_secs(5)).unwrap(),
            Release::Unparked
        );
        assert_eq!(reads.load(Ordering::SeqCst), 3);
        // A second unpark of the same key does nothing.
        pool.unpark(key);

        // End of file: readable() says done.
        let (client, conn, _, _, left) = echo(true);
        pool.park(conn).unwrap();
        drop(client);
        assert_eq!(
            left.recv_timeout(Duration::from_secs(5)).unwrap(),
            Release::Done
        );
    }

    #[test]
    fn unpark_while_serving_releases_after_the_work_and_others_are_served_meanwhile() {
        use std::io::Write;
        let pool = Pool::new("t", 2).unwrap();
        let (mut stuck_client, stuck, stuck_reads, gate, stuck_left) = echo(false);
        let key = pool.park(stuck).unwrap();
        stuck_client.write_all(b"x").unwrap();
        wait_for("the stuck read", || stuck_reads.load(Ordering::SeqCst) == 1);
        // The only thread is stuck: the watchdog adds one, which serves
        // another connection.
        let (mut client, conn, reads, _, _left) = echo(true);
        pool.park(conn).unwrap();
        client.write_all(b"y").unwrap();
        wait_for("the other read", || reads.load(Ordering::SeqCst) == 1);
        assert_eq!(pool.peak_threads(), 2);
        pool.unpark(key);
        assert!(stuck_left.recv_timeout(Duration::from_millis(50)).is_err());
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        assert_eq!(
            stuck_left.recv_timeout(Duration::from_secs(5)).unwrap(),
            Release::Unparked
        );
    }
}
