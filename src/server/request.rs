//! The way of one request through the helper, and the one function that
//! walks it: [`Requests::serve_next`], top to bottom.
//!
//! 1. **pull**: [`Session::pull`] reads what has arrived, without blocking;
//! 2. **route**: [`Executor::route`] inspects the request's fd once and
//!    decides how it is executed (refused now, SG_IO, or multipath);
//! 3. **execute**: [`Executor::run_here`], on the calling thread, if the
//!    device has a place (D29);
//! 4. **respond**: [`respond`] logs, audits, closes the fd and writes as
//!    much of the response as the socket takes.
//!
//! It runs on a pool worker and never blocks except in SG_IO: the worker
//! that sees a parked connection's socket readable calls it. (At shutdown
//! the connection's task takes step 1 itself, on the event loop, and a pool
//! job the rest: [`Requests::pull`], [`Requests::serve_pulled`].) Where a
//! step must wait, it stops and says which ([`Reached`]); those waits need
//! no thread, so the connection's task does them
//! ([`crate::server::connection`]) and then hands the connection back.
//! The only step that resumes elsewhere is execute, for a request whose
//! device is full ([`Requests::execute_when_free`]). ARCHITECTURE.md ("The
//! path of a request") walks the whole path.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Instant;

use crate::protocol::Request;
use crate::server::command::{Attempt, Executor, Routed};
use crate::server::end::End;
use crate::server::peer::Peer;
use crate::server::pool::Pool;
use crate::server::reply::{respond, Responder};
use crate::server::session::{Pulled, Session};

/// One connection's requests, as the driver needs them: the reading side
/// ([`Session`]), who sent them, and what executes them. It moves with the
/// connection: into the pool while parked, back to the task between.
pub(crate) struct Requests {
    session: Session,
    peer: Peer,
    executor: Executor,
    audit: bool,
    pool: Pool,
    /// When the first part of the request now arriving was read: the
    /// request timeout counts from it (D9).
    partial_since: Option<Instant>,
}

/// How far [`Requests::serve_next`] got, and what must happen before it
/// can go on.
pub(crate) enum Reached {
    /// A request was answered in full: the next may follow.
    Answered,
    /// Nothing of a next request has arrived.
    Idle,
    /// Part of a request has arrived, first at `since`: the rest must come
    /// within the request timeout.
    Partial { since: Instant },
    /// A request routed but not executed: its device already executes its
    /// bound of commands, or it is for a dm-multipath device. It waits for
    /// a place without a thread ([`Requests::execute_when_free`]). Boxed:
    /// the rare case should not make every `Reached` as large as a request.
    WaitsForPlace(Box<Routed>, Instant),
    /// The socket did not take the whole response: the rest, to be written
    /// once it is writable.
    Unsent(Vec<u8>),
    /// The connection ends.
    End(End),
}

impl Requests {
    pub(crate) fn new(peer: Peer, executor: Executor, audit: bool, pool: Pool) -> Requests {
        Requests {
            session: Session::new(),
            peer,
            executor,
            audit,
            pool,
            partial_since: None,
        }
    }

    /// Serves the next request that has arrived on `sock`, reading at most
    /// `budget` bytes (counted down): the four steps, or as many as can be
    /// taken now.
    pub(crate) fn serve_next(&mut self, sock: BorrowedFd<'_>, budget: &mut usize) -> Reached {
        match self.pull(sock, budget) {
            Ok(request) => self.serve_pulled(sock, request),
            Err(reached) => reached,
        }
    }

    /// Step 1: reads without blocking until a whole request has arrived;
    /// else where reading stands ([`Reached::Idle`], [`Reached::Partial`],
    /// [`Reached::End`]). It needs no thread: at shutdown the connection's
    /// task takes it on the event loop.
    pub(crate) fn pull(
        &mut self,
        sock: BorrowedFd<'_>,
        budget: &mut usize,
    ) -> Result<Request<OwnedFd>, Reached> {
        match self.session.pull(sock, budget) {
            Pulled::Request(request) => {
                self.partial_since = None;
                Ok(request)
            }
            Pulled::Blocked => Err(self.arrival()),
            Pulled::End(end) => Err(Reached::End(end)),
        }
    }

    /// Steps 2 to 4 for a request [`Requests::pull`] returned, on a pool
    /// thread (SG_IO blocks for as long as the device takes).
    pub(crate) fn serve_pulled(&self, sock: BorrowedFd<'_>, request: Request<OwnedFd>) -> Reached {
        let started = Instant::now();
        // 2. route, 3. execute
        let executor = &self.executor;
        let (request, response) = match executor.run_here(executor.route(request), &self.pool) {
            Attempt::Executed(request, response) => (request, response),
            Attempt::Deferred(routed) => return Reached::WaitsForPlace(Box::new(routed), started),
        };
        // 4. respond
        match respond(sock, &self.peer, started, self.audit, request, response) {
            Ok(rest) if rest.is_empty() => Reached::Answered,
            Ok(rest) => Reached::Unsent(rest),
            Err(e) => Reached::End(End::Write(e)),
        }
    }

    /// Where reading stands between requests: [`Reached::Idle`] or
    /// [`Reached::Partial`] (whose start it notes the first time).
    pub(crate) fn arrival(&mut self) -> Reached {
        if self.session.is_idle() {
            Reached::Idle
        } else {
            Reached::Partial {
                since: *self.partial_since.get_or_insert_with(Instant::now),
            }
        }
    }

    /// Step 3 for a request that stopped at [`Reached::WaitsForPlace`]: it is
    /// queued with the pool, where it waits for a place without a thread,
    /// and is executed and answered (step 4, through `responder`) on a pool
    /// thread once it has one.
    pub(crate) fn execute_when_free(&self, routed: Routed, responder: Responder) {
        let executor = self.executor.clone();
        let pool = self.pool.clone();
        // A job, not here: a free place runs the command on the calling
        // thread, and the caller is the event loop.
        self.pool
            .spawn(move || executor.run_when_free(routed, responder, &pool));
    }

    /// What is being read, for the timeout message.
    pub(crate) fn reading(&self) -> &'static str {
        self.session.reading()
    }

    pub(crate) fn peer(&self) -> Peer {
        self.peer
    }

    pub(crate) fn audit(&self) -> bool {
        self.audit
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }
}
