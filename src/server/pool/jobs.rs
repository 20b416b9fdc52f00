//! The job queue: closures queued with [`crate::server::pool::Pool::spawn`],
//! counted by an eventfd in semaphore mode (one count per job) that sits
//! in the workers' epoll set under the key [`JOBS`].

use std::collections::VecDeque;
use std::sync::Mutex;

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::survive::lock;

/// The epoll key of the job eventfd (a parked connection's key never is:
/// its index half is a slab index).
pub(super) const JOBS: u64 = u64::MAX;

pub(super) type Job = Box<dyn FnOnce() + Send + 'static>;

pub(super) struct Jobs {
    /// Readable while jobs are queued: one count per job.
    ready: EventFd,
    queue: Mutex<VecDeque<Job>>,
}

impl Jobs {
    /// An empty queue whose eventfd `epoll` watches.
    pub(super) fn new(epoll: &Epoll) -> std::io::Result<Jobs> {
        let ready = EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_SEMAPHORE,
        )?;
        epoll.add(&ready, EpollEvent::new(EpollFlags::EPOLLIN, JOBS))?;
        Ok(Jobs {
            ready,
            queue: Mutex::new(VecDeque::new()),
        })
    }

    pub(super) fn push(&self, job: Job) {
        lock(&self.queue).push_back(job);
        // The job is queued before it is counted, so whoever takes a count
        // finds a job.
        if let Err(e) = self.ready.write(1) {
            tracing::error!("cannot signal a queued job: {e}");
        }
    }

    /// The next job, for a worker woken by [`JOBS`]. None if another
    /// worker took the last count first (level-triggered events can wake
    /// more than one waiter).
    pub(super) fn take(&self) -> Option<Job> {
        self.ready.read().ok()?;
        lock(&self.queue).pop_front()
    }
}
