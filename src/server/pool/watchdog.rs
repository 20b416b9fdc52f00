//! The watchdog: a thread that looks at the workers every [`STALL`] while
//! work is going on and asks for another worker when one has stalled or all
//! are slow (the rules are in the pool's description); it sleeps when no
//! worker has been busy for [`QUIET_TICKS`] ticks, and the next worker to
//! start work wakes it.
//!
//! It sees the workers through [`Workers`], which the pool implements: this
//! room holds the policy, the pool the threads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::survive::lock;

/// How long a thread may stay on one piece of work, with no other thread
/// waiting for work, before the watchdog adds a thread.
pub const STALL: Duration = Duration::from_millis(5);
/// Watchdog ticks with no thread busy before the watchdog goes to sleep.
const QUIET_TICKS: u32 = 20;
/// Fewer pieces of work than this per thread in a tick ([`STALL`]), with
/// every thread busy at both ends of it, means commands of about 300 µs or
/// more: the watchdog adds a thread. Commands on a device that fails at
/// once, or a fast one, take a few microseconds: thousands per tick.
pub const SLOW_PIECES: u64 = 16;

/// One worker's state, as the watchdog sees it.
#[derive(Default)]
pub(super) struct Slot {
    busy: AtomicBool,
    /// Pieces of work started; unchanged across a tick while busy = stalled.
    work: AtomicU64,
    /// `work` at the watchdog's previous tick (written by the watchdog only).
    seen: AtomicU64,
    /// `busy` at the watchdog's previous tick (written by the watchdog only).
    seen_busy: AtomicBool,
}

/// What the watchdog needs of the pool.
pub(super) trait Workers {
    /// Every worker's slot.
    fn slots(&self) -> Vec<Arc<Slot>>;
    /// Whether a worker is waiting for work.
    fn any_idle(&self) -> bool;
    /// Starts another worker (the pool keeps to its bound).
    fn add_worker(&self);
}

#[derive(Default)]
pub(super) struct Watchdog {
    sleeping: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Watchdog {
    /// A worker starts a piece of work in `slot` (woken from epoll).
    pub(super) fn work_started(&self, slot: &Slot) {
        slot.work.fetch_add(1, Ordering::Relaxed);
        slot.busy.store(true, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            let _guard = lock(&self.lock);
            self.sleeping.store(false, Ordering::SeqCst);
            self.wake.notify_one();
        }
    }

    /// The worker in `slot` has finished its piece of work.
    pub(super) fn work_ended(&self, slot: &Slot) {
        slot.busy.store(false, Ordering::Release);
    }

    /// The watchdog thread's loop: adds a worker when one has been on the
    /// same work for a tick, or every one is slow, and none is waiting for
    /// work; sleeps after [`QUIET_TICKS`] ticks without work.
    pub(super) fn watch(&self, workers: &impl Workers) -> ! {
        let mut quiet = 0;
        loop {
            std::thread::sleep(STALL);
            let slots = workers.slots();
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
            if (stalled || slow) && !workers.any_idle() {
                workers.add_worker();
            }
            quiet = if busy { 0 } else { quiet + 1 };
            if quiet < QUIET_TICKS {
                continue;
            }
            // Sleep until a worker starts work. A worker sets `busy` before
            // it reads `sleeping`, and this sets `sleeping` before it reads
            // `busy` (all SeqCst): at least one of the two sees the other.
            let mut guard = lock(&self.lock);
            self.sleeping.store(true, Ordering::SeqCst);
            if slots.iter().any(|s| s.busy.load(Ordering::SeqCst)) {
                self.sleeping.store(false, Ordering::SeqCst);
                continue;
            }
            while self.sleeping.load(Ordering::SeqCst) {
                guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            quiet = 0;
        }
    }
}
