//! Each device's places (D29, see [`crate::server::isolation`]): every
//! command takes one before it executes and gives it up when it ends; a
//! request that finds its device full waits here without a thread, and a
//! place given up goes to the first request waiting for the device.
//!
//! [`Places`] does the counting; the pool wraps each place it hands out in
//! a [`crate::server::pool::DevicePlace`], whose drop gives it up, and
//! starts the requests admitted then on its workers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::server::isolation::{self, DevKey, Devices, Entering, Waiting};

use super::survive::lock;

/// Set in [`Places::executing`] while a command executes whose device was
/// not looked up ([`Places::try_alone`]).
const UNKEYED: usize = 1 << (usize::BITS - 1);

/// The places of every device; `P` is what a request is admitted with.
pub(super) struct Places<P> {
    /// Commands executing and requests waiting, per device (D29).
    devices: Mutex<Devices<P>>,
    /// Commands executing, plus [`UNKEYED`] while one executes whose
    /// device was not looked up (it started while no other executed).
    executing: AtomicUsize,
    /// Whether unkeyed commands are allowed: only with a bound of two or
    /// more, so that a device refused a place always has a keyed command
    /// executing, whose end starts the next.
    unkeyed_ok: bool,
}

/// A command executing alone, its device not looked up; its count goes
/// when this drops.
pub(super) struct Alone<'a>(&'a AtomicUsize);

impl Drop for Alone<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(UNKEYED | 1, Ordering::SeqCst);
    }
}

impl<P> Places<P> {
    /// The places for a pool of `max_threads` threads.
    pub(super) fn new(max_threads: usize) -> Places<P> {
        Places {
            devices: Mutex::new(Devices::new(
                isolation::bound_for(max_threads),
                isolation::cap_for(max_threads),
            )),
            executing: AtomicUsize::new(0),
            unkeyed_ok: isolation::bound_for(max_threads) >= 2,
        }
    }

    /// Counts a command as executing alone, if no other command executes:
    /// then its device need not be known.
    pub(super) fn try_alone(&self) -> Option<Alone<'_>> {
        // Not `then_some`: an `Alone` made for nothing would uncount on drop.
        let alone = self.unkeyed_ok
            && self
                .executing
                .compare_exchange(0, UNKEYED | 1, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok();
        alone.then(|| Alone(&self.executing))
    }

    /// Counts a command as executing, then takes a place on `key` for it;
    /// uncounts it and returns false if there is none. After true, the
    /// caller holds the place until it calls [`Places::ended`].
    pub(super) fn try_enter(&self, key: DevKey, now: Instant) -> bool {
        let before = self.executing.fetch_add(1, Ordering::SeqCst);
        let unkeyed = usize::from(before & UNKEYED != 0);
        if lock(&self.devices).try_enter_beside(key, unkeyed, now) {
            return true;
        }
        self.executing.fetch_sub(1, Ordering::SeqCst);
        false
    }

    /// A command on `key` that started at `started` has ended: returns the
    /// requests that take its place (the first waiting, and more if the
    /// device has room now), each counted and holding a place.
    pub(super) fn ended(&self, key: DevKey, started: Instant, now: Instant) -> Vec<Waiting<P>> {
        let admitted = lock(&self.devices).command_ended(key, started, now);
        // Counted before the leaving command is uncounted, so that the
        // count never reads zero while they execute.
        self.executing.fetch_add(admitted.len(), Ordering::SeqCst);
        self.executing.fetch_sub(1, Ordering::SeqCst);
        admitted
    }

    /// Takes a place on `key` for `waiting` if the device has one free
    /// (`Run`: counted, holding it), else queues it (`Queued`), or refuses
    /// it after [`Places::close`] (`Cancel`).
    pub(super) fn enter_or_wait(
        &self,
        key: DevKey,
        waiting: Waiting<P>,
        now: Instant,
    ) -> Entering<P> {
        let before = self.executing.fetch_add(1, Ordering::SeqCst);
        let unkeyed = usize::from(before & UNKEYED != 0);
        let entering = lock(&self.devices).enter_or_wait(key, unkeyed, waiting, now);
        if !matches!(entering, Entering::Run(_)) {
            self.executing.fetch_sub(1, Ordering::SeqCst);
        }
        entering
    }

    /// Shutdown: returns every waiting request (to be cancelled; so is any
    /// that comes later for a busy device) and how many commands are still
    /// executing.
    pub(super) fn close(&self) -> (Vec<Waiting<P>>, usize) {
        let (cancelled, mut executing) = lock(&self.devices).close();
        if self.executing.load(Ordering::SeqCst) & UNKEYED != 0 {
            executing += 1;
        }
        (cancelled, executing)
    }

    /// Commands executing (with [`UNKEYED`] if one is alone).
    #[cfg(test)]
    pub(super) fn executing(&self) -> usize {
        self.executing.load(Ordering::SeqCst)
    }
}
