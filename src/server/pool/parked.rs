//! Parked connections: a connection between requests waits in the
//! workers' epoll set (one-shot), and the worker that sees its socket
//! readable serves the request on the spot ([`Parked::readable`]), then
//! parks it again; or the connection leaves ([`Parked::release`]).
//!
//! [`Parking`] keeps them by key and watches their sockets in the epoll set
//! the pool gives it; the pool's workers call [`Parking::on_readable`] for the
//! keys epoll reports.

use std::os::fd::BorrowedFd;
use std::sync::Mutex;

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};

use super::survive::{caught, lock};
use crate::server::ratelimit::RateLimited;

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
    /// [`Parking::unpark`] asked for it.
    Unparked,
    /// [`Parked::readable`] panicked (logged as an error).
    Panicked,
    /// The pool could not watch its socket or start a thread.
    Refused,
}

/// Names a parked connection, for [`Parking::unpark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParkKey(u64);

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

/// The parked connections.
#[derive(Default)]
pub(super) struct Parking {
    slab: Mutex<Slab>,
}

fn watch_flags() -> EpollFlags {
    EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT
}

impl Parking {
    /// Watches `conn`'s socket in `epoll` until [`Parked::readable`] returns
    /// false or [`Parking::unpark`] is called; then [`Parked::release`]. If
    /// the socket cannot be watched, `conn` is released at once with
    /// [`Release::Refused`] and None returned.
    pub(super) fn park(&self, epoll: &Epoll, conn: Box<dyn Parked>) -> Option<ParkKey> {
        let mut slab = lock(&self.slab);
        let key = slab.reserve();
        match epoll.add(conn.fd(), EpollEvent::new(watch_flags(), key)) {
            Ok(()) => {
                if let Some(entry) = slab.entry(key) {
                    entry.state = State::Parked(conn);
                }
                Some(ParkKey(key))
            }
            Err(e) => {
                slab.vacate(key);
                drop(slab);
                // Its task offers it again shortly: rate-limited (as D10's).
                static LOG: Mutex<RateLimited> =
                    Mutex::new(RateLimited::new(std::time::Duration::from_secs(10)));
                if let Some(suppressed) = lock(&LOG).allow() {
                    tracing::warn!(
                        suppressed,
                        "cannot watch a connection on the worker threads: {e}"
                    );
                }
                conn.release(Release::Refused);
                None
            }
        }
    }

    /// Takes a parked connection out: released at once if it is waiting,
    /// or as soon as the worker serving it has finished.
    pub(super) fn unpark(&self, epoll: &Epoll, key: ParkKey) {
        let mut slab = lock(&self.slab);
        let Some(entry) = slab.entry(key.0) else {
            return;
        };
        if let State::Serving { release } = &mut entry.state {
            *release = true;
        } else if let Some(conn) = entry.take_parked(State::Vacant) {
            slab.vacate(key.0);
            drop(slab);
            stop_watching(epoll, conn, Release::Unparked);
        }
    }

    /// `epoll` reported the socket of `key` readable: serves it on the
    /// calling worker, then parks it again or releases it.
    pub(super) fn on_readable(&self, epoll: &Epoll, key: u64) {
        let mut conn = {
            let mut slab = lock(&self.slab);
            // None: it left the pool since the event was harvested.
            let taken = slab
                .entry(key)
                .and_then(|entry| entry.take_parked(State::Serving { release: false }));
            match taken {
                Some(conn) => conn,
                None => return,
            }
        };
        let again = caught("a request panicked on the SG_IO pool", || conn.readable());
        let Some(again) = again else {
            return self.vacate_and_release(epoll, key, conn, Release::Panicked);
        };
        if !again {
            return self.vacate_and_release(epoll, key, conn, Release::Done);
        }
        let mut slab = lock(&self.slab);
        let Some(entry) = slab.entry(key) else {
            drop(slab);
            return stop_watching(epoll, conn, Release::Unparked);
        };
        if matches!(entry.state, State::Serving { release: true }) {
            slab.vacate(key);
            drop(slab);
            return stop_watching(epoll, conn, Release::Unparked);
        }
        // Re-armed under the lock: a worker that sees the next event waits
        // for the lock, then finds the connection parked.
        let mut event = EpollEvent::new(watch_flags(), key);
        match epoll.modify(conn.fd(), &mut event) {
            Ok(()) => entry.state = State::Parked(conn),
            Err(e) => {
                slab.vacate(key);
                drop(slab);
                tracing::warn!("cannot watch a connection again: {e}");
                stop_watching(epoll, conn, Release::Done);
            }
        }
    }

    fn vacate_and_release(&self, epoll: &Epoll, key: u64, conn: Box<dyn Parked>, why: Release) {
        lock(&self.slab).vacate(key);
        stop_watching(epoll, conn, why);
    }
}

/// Stops watching `conn`'s socket and releases it.
fn stop_watching(epoll: &Epoll, conn: Box<dyn Parked>, why: Release) {
    // ENOENT/EBADF only if the socket is no longer registered.
    let _ = epoll.delete(conn.fd());
    conn.release(why);
}
