//! One client connection: handshake, then request → execute → response, one
//! request at a time, until the client leaves, breaks the protocol, or the
//! helper shuts down.
//!
//! Reads are sized exactly as the reference sizes them (4 handshake bytes,
//! then the rest of a 16-byte CDB with a control buffer, then exactly the PR
//! OUT parameter bytes without one), so the same byte-and-fd stream is
//! framed identically, including which fds the kernel discards.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use crate::protocol::fdpass::{self, Received};
use crate::protocol::{self, Request, FEATURES_SIZE};
use crate::server::command::{Attempt, Executor, Routed};
use crate::server::end::End;
use crate::server::peer::Peer;
use crate::server::pool::{Parked, Pool, Release};
use crate::server::reply::{respond, InFlight, Responder};
use crate::server::session::{Pulled, Session};

/// Per-connection settings shared by all connections.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// How long a started request (or the handshake reply, or a response
    /// write) may take before the connection is closed (D9).
    pub request_timeout: Duration,
    /// How commands are executed (SG_IO settings, multipath).
    pub executor: Executor,
    /// Log an audit record for every PR OUT.
    pub audit: bool,
}

/// Serves one accepted connection until it ends, then says why: the
/// connection's task. The path of its requests (pull, route, execute,
/// answer: [`Session::pull`], [`Executor::route`], [`Executor::run_here`] or
/// [`Executor::run_when_free`], [`respond`]), and which parts the parked
/// worker ([`ParkedConnection::readable`]) or this task drive, is described
/// once, in ARCHITECTURE.md ("The path of a request"). Here: the
/// handshake, then park; each [`HandBack`] says what this task does when the
/// connection comes back.
pub async fn serve(
    stream: UnixStream,
    peer: Peer,
    config: Arc<ConnectionConfig>,
    pool: Pool,
    shutdown: CancellationToken,
) -> End {
    let mut conn = Connection {
        stream: Arc::new(stream),
        peer,
        config,
        pool,
    };
    let end = tokio::select! {
        end = conn.handshake() => end,
        _ = shutdown.cancelled() => Err(End::Shutdown),
    };
    if let Err(end) = end {
        return end;
    }
    let mut parking = true;
    let mut session = Session::new();
    loop {
        if parking && session.is_idle() {
            let hand_back;
            (conn, session, hand_back) = match conn.park(session, &shutdown).await {
                Ok(parked) => parked,
                Err(end) => return end,
            };
            let done = match hand_back {
                HandBack::Partial => Ok(()),
                HandBack::Pending(rest) => conn.write_rest(&rest).await,
                HandBack::Deferred(routed) => conn.answer(PoolRequest::Routed(*routed)).await,
                HandBack::End(end) => Err(end),
                HandBack::Refused => {
                    parking = false;
                    Ok(())
                }
                HandBack::Shutdown => return conn.answer_arrived(&mut session).await,
            };
            if let Err(end) = done {
                return end;
            }
            if session.is_idle() {
                continue;
            }
        }
        // Waiting for (and reading) a request is the only part shutdown
        // interrupts; `biased` makes shutdown win over a pipelined request.
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => Err(End::Shutdown),
            r = conn.read_request(&mut session) => r,
        };
        match next {
            // The response is written in full before the next request is
            // read, parked or not: a client that reads only once it has
            // sent everything still gets the whole of the last response.
            Ok(request) => {
                if let Err(end) = conn.answer(PoolRequest::Arrived(request)).await {
                    return end;
                }
            }
            // Requests that have fully arrived are answered, as when parked.
            Err(End::Shutdown) => return conn.answer_arrived(&mut session).await,
            Err(end) => return end,
        }
    }
}

/// What a parked connection brings back to its task.
struct HandedBack {
    stream: std::os::unix::net::UnixStream,
    session: Session,
    why: HandBack,
}

/// Why the pool hands a parked connection back to its task, and what the
/// task does then.
enum HandBack {
    /// Half a request has arrived (or the pool stopped watching the
    /// connection): the task reads on, under the request timeout.
    Partial,
    /// The socket did not take the whole response: the task writes the rest.
    Pending(Vec<u8>),
    /// A request routed but not executed (its device is busy, or it is for
    /// a dm-multipath device): the task queues it with the pool. Boxed:
    /// the rare case should not make every `HandedBack` as large as a request.
    Deferred(Box<Routed>),
    /// The connection ends.
    End(End),
    /// The pool could not take the connection: the task stops parking it.
    Refused,
    /// Unparked for shutdown.
    Shutdown,
}

/// A connection between requests, parked in the pool. It belongs to the
/// pool while parked and to the worker serving it while served; it goes
/// back to its task (with the stream and the session) when released.
struct ParkedConnection {
    stream: std::os::unix::net::UnixStream,
    session: Session,
    peer: Peer,
    config: Arc<ConnectionConfig>,
    pool: Pool,
    /// Set by `readable` when it returns false.
    hand_back: HandBack,
    back: oneshot::Sender<HandedBack>,
}

impl Parked for ParkedConnection {
    fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// One request, the whole way through on this worker thread (see
    /// [`serve`]); anything unusual goes back to the task.
    fn readable(&mut self) -> bool {
        let mut unbounded = usize::MAX;
        let request = match self.session.pull(self.stream.as_fd(), &mut unbounded) {
            Pulled::Request(request) => request,
            // Half a request: its task reads the rest, under the timeout.
            Pulled::Blocked => return self.session.is_idle(),
            Pulled::End(end) => {
                self.hand_back = HandBack::End(end);
                return false;
            }
        };
        let started = std::time::Instant::now();
        let executor = &self.config.executor;
        let (request, response) = match executor.run_here(executor.route(request), &self.pool) {
            Attempt::Executed(request, response) => (request, response),
            // Its task queues it, where it waits without a thread.
            Attempt::Deferred(routed) => {
                self.hand_back = HandBack::Deferred(Box::new(routed));
                return false;
            }
        };
        let sock = self.stream.as_fd();
        match respond(
            sock,
            &self.peer,
            started,
            self.config.audit,
            request,
            response,
        ) {
            Ok(rest) if rest.is_empty() => true,
            Ok(rest) => {
                self.hand_back = HandBack::Pending(rest);
                false
            }
            Err(e) => {
                self.hand_back = HandBack::End(End::Write(e));
                false
            }
        }
    }

    fn release(self: Box<Self>, why: Release) {
        let ParkedConnection {
            stream,
            session,
            hand_back,
            back,
            ..
        } = *self;
        let hand_back = match why {
            Release::Done => hand_back,
            Release::Unparked => HandBack::Shutdown,
            Release::Refused => HandBack::Refused,
            Release::Panicked => HandBack::End(End::Internal(
                "a request panicked (see the error above)".to_string(),
            )),
        };
        // The receiver is gone only if the connection task ended.
        let _ = back.send(HandedBack {
            stream,
            session,
            why: hand_back,
        });
    }
}

/// A request the task has the pool execute.
enum PoolRequest {
    /// Read by the task: routed on the pool thread.
    Arrived(Request<OwnedFd>),
    /// Routed by a parked worker, which found no place for it.
    Routed(Routed),
}

struct Connection {
    stream: Arc<UnixStream>,
    peer: Peer,
    config: Arc<ConnectionConfig>,
    pool: Pool,
}

impl Connection {
    /// Spec §2.2: the helper speaks first, then checks the client's word.
    async fn handshake(&self) -> Result<(), End> {
        let deadline = Instant::now() + self.config.request_timeout;
        self.write_all(
            &protocol::encode_features(protocol::SUPPORTED_FEATURES),
            deadline,
        )
        .await?;
        let mut word = [0u8; FEATURES_SIZE];
        let mut got = 0;
        while got < FEATURES_SIZE {
            let r = self
                .recv_with(deadline, "handshake", |sock| {
                    fdpass::recv(sock, &mut word[got..], false)
                })
                .await?;
            if r.len == 0 {
                return Err(if got == 0 {
                    End::Closed
                } else {
                    End::Truncated("the handshake")
                });
            }
            got += r.len;
        }
        protocol::check_requested_features(word).map_err(End::Violation)
    }

    /// Reads one whole request ([`Session::pull`] each time the socket is
    /// readable). Idle time before its first byte is unbounded; once it has
    /// started, the rest must arrive within the request timeout (counted
    /// from now if `session` already holds part of it).
    async fn read_request(&self, session: &mut Session) -> Result<Request<OwnedFd>, End> {
        let mut unbounded = usize::MAX;
        let mut deadline = None;
        loop {
            if deadline.is_none() && !session.is_idle() {
                deadline = Some(Instant::now() + self.config.request_timeout);
            }
            let what = session.reading();
            let readable = self.stream.readable();
            match deadline {
                None => readable.await,
                Some(deadline) => timeout_at(deadline, readable)
                    .await
                    .map_err(|_| End::Timeout(what, self.config.request_timeout))?,
            }
            .map_err(End::Read)?;
            // Blocked clears the readiness, as tokio requires.
            let pulled = self.stream.try_io(Interest::READABLE, || {
                match session.pull(self.stream.as_fd(), &mut unbounded) {
                    Pulled::Blocked => Err(io::ErrorKind::WouldBlock.into()),
                    pulled => Ok(pulled),
                }
            });
            match pulled {
                Ok(Pulled::Request(request)) => return Ok(request),
                Ok(Pulled::End(end)) => return Err(end),
                Ok(Pulled::Blocked) | Err(_) => {}
            }
        }
    }

    /// Hands the connection to the pool until a worker gives it back (see
    /// [`serve`]), or shutdown takes it back.
    async fn park(
        self,
        session: Session,
        shutdown: &CancellationToken,
    ) -> Result<(Connection, Session, HandBack), End> {
        let Connection {
            stream,
            peer,
            config,
            pool,
        } = self;
        // Responders drop their reference before replying, so this is the
        // only one; the stream leaves tokio's reactor while parked, so that
        // its requests wake only the pool.
        let stream = Arc::try_unwrap(stream)
            .map_err(|_| End::Internal("a response still holds the connection".to_string()))?
            .into_std()
            .map_err(End::Read)?;
        let (tx, mut rx) = oneshot::channel();
        let key = pool.park(Box::new(ParkedConnection {
            stream,
            session,
            peer,
            config: config.clone(),
            pool: pool.clone(),
            hand_back: HandBack::Partial,
            back: tx,
        }));
        let back = tokio::select! {
            back = &mut rx => back,
            _ = shutdown.cancelled() => {
                if let Some(key) = key {
                    pool.unpark(key);
                }
                rx.await
            }
        };
        let back = back.map_err(|_| {
            End::Internal("a parked connection was dropped (see the error above)".to_string())
        })?;
        let stream = UnixStream::from_std(back.stream).map_err(End::Read)?;
        let conn = Connection {
            stream: Arc::new(stream),
            peer,
            config,
            pool,
        };
        Ok((conn, back.session, back.why))
    }

    /// At shutdown, answers the requests that have fully arrived (a client
    /// that sent one before shutdown began gets its response, as when the
    /// event loop read every request at once), then ends the connection.
    ///
    /// Only the bytes queued on the socket now are read: a client that keeps
    /// sending requests back to back cannot keep the helper alive.
    async fn answer_arrived(&self, session: &mut Session) -> End {
        let mut budget = match crate::sys::socket::queued_bytes(self.stream.as_fd()) {
            Ok(n) => n,
            Err(_) => return End::Shutdown,
        };
        loop {
            match session.pull(self.stream.as_fd(), &mut budget) {
                Pulled::Request(request) => {
                    if let Err(end) = self.answer(PoolRequest::Arrived(request)).await {
                        return end;
                    }
                }
                // Whatever comes later, or the rest of a request, is not
                // answered; an idle connection just closes. So is a broken
                // connection.
                Pulled::Blocked => return End::Shutdown,
                Pulled::End(End::Closed) => return End::Closed,
                // Half a request, or a broken one: closed without a reply.
                Pulled::End(_) => return End::Shutdown,
            }
        }
    }

    /// Starts executing a request on the SG_IO pool (routing it there
    /// first if it is not yet); the executing thread closes the device fd as
    /// soon as the command is done and writes as much of the response as
    /// the socket takes without blocking.
    fn dispatch(&self, work: PoolRequest) -> InFlight {
        let (reply, in_flight) = oneshot::channel();
        let responder = Responder {
            stream: self.stream.clone(),
            peer: self.peer,
            started: std::time::Instant::now(),
            audit: self.config.audit,
            reply,
        };
        let config = self.config.clone();
        let pool = self.pool.clone();
        self.pool.spawn(move || {
            let executor = &config.executor;
            let routed = match work {
                PoolRequest::Arrived(request) => executor.route(request),
                PoolRequest::Routed(routed) => routed,
            };
            executor.run_when_free(routed, responder, &pool)
        });
        in_flight
    }

    /// Waits for a dispatched request and sends what is left of its response.
    async fn await_reply(&self, in_flight: InFlight) -> Result<(), End> {
        let rest = in_flight
            .await
            .map_err(|_| {
                End::Internal("a request was dropped unanswered (see the error above)".to_string())
            })?
            .map_err(End::Write)?;
        self.write_rest(&rest).await
    }

    /// Executes a request on the pool and waits until its response is out.
    async fn answer(&self, work: PoolRequest) -> Result<(), End> {
        let in_flight = self.dispatch(work);
        self.await_reply(in_flight).await
    }

    /// Writes the part of a response that the executing thread could not
    /// write without blocking, within the request timeout.
    async fn write_rest(&self, rest: &[u8]) -> Result<(), End> {
        if rest.is_empty() {
            return Ok(());
        }
        self.write_all(rest, Instant::now() + self.config.request_timeout)
            .await
    }

    /// One read with `recv` (a `recvmsg` on the socket) once the socket is
    /// readable, within `deadline` (the handshake's).
    async fn recv_with(
        &self,
        deadline: Instant,
        what: &'static str,
        mut recv: impl FnMut(BorrowedFd<'_>) -> io::Result<Received>,
    ) -> Result<Received, End> {
        let read = async {
            loop {
                self.stream.readable().await.map_err(End::Read)?;
                match self
                    .stream
                    .try_io(Interest::READABLE, || recv(self.stream.as_fd()))
                {
                    Ok(r) => return Ok(r),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // A reset peer is a peer that went away.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                        return Ok(Received {
                            len: 0,
                            fds: Vec::new(),
                        })
                    }
                    Err(e) => return Err(End::Read(e)),
                }
            }
        };
        timeout_at(deadline, read)
            .await
            .map_err(|_| End::Timeout(what, self.config.request_timeout))?
    }

    /// Writes all of `bytes` before `deadline`.
    async fn write_all(&self, mut bytes: &[u8], deadline: Instant) -> Result<(), End> {
        let write = async {
            while !bytes.is_empty() {
                self.stream.writable().await?;
                match self.stream.try_write(bytes) {
                    Ok(n) => bytes = &bytes[n..],
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        };
        match timeout_at(deadline, write).await {
            Ok(result) => result.map_err(End::Write),
            Err(_) => Err(End::Timeout("response write", self.config.request_timeout)),
        }
    }
}
