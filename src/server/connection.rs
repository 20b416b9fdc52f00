//! One client connection's task, on the event loop: the handshake, then
//! the waits of its requests that need no thread, until the client leaves,
//! breaks the protocol, or the helper shuts down.
//!
//! Requests themselves are served by one driver, [`Requests::serve_next`]
//! (`server/request.rs`), on a pool worker: the task parks the connection
//! in the pool, and the worker that sees its socket readable serves it. The
//! worker hands the connection back where a step must wait; this task does
//! that wait ([`Reached`] says which) and parks the connection again.
//! ARCHITECTURE.md ("The path of a request") walks the whole path.
//!
//! The handshake's reads are sized exactly as the reference sizes them (4
//! bytes, without a control buffer), so the same byte-and-fd stream is
//! framed identically, including which fds the kernel discards.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::time::{sleep, sleep_until, timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use crate::protocol::fdpass::{self, Received};
use crate::protocol::{self, Request, FEATURES_SIZE};
use crate::server::command::{Executor, Routed};
use crate::server::end::End;
use crate::server::peer::Peer;
use crate::server::pool::{Parked, Pool, Release};
use crate::server::reply::{InFlight, Responder};
use crate::server::request::{Reached, Requests};

/// How long a connection the pool could not take waits before it is
/// offered again (the workers' epoll set could not watch the socket; the
/// pool has warned).
const REFUSED_RETRY: Duration = Duration::from_millis(100);

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
/// connection's task.
pub async fn serve(
    stream: UnixStream,
    peer: Peer,
    config: Arc<ConnectionConfig>,
    pool: Pool,
    shutdown: CancellationToken,
) -> End {
    let conn = Connection {
        stream: Arc::new(stream),
        requests: Requests::new(peer, config.executor.clone(), config.audit, pool),
        request_timeout: config.request_timeout,
    };
    let end = tokio::select! {
        end = conn.handshake() => end,
        _ = shutdown.cancelled() => Err(End::Shutdown),
    };
    match end {
        Ok(()) => conn.carry(&shutdown).await,
        Err(end) => end,
    }
}

/// What a parked connection brings back to its task.
struct HandedBack {
    stream: std::os::unix::net::UnixStream,
    requests: Requests,
    why: HandBack,
}

/// Why the pool hands a parked connection back.
enum HandBack {
    /// The driver stopped at a step that must wait (never
    /// [`Reached::Answered`]), or the task took the connection back.
    Stopped(Reached),
    /// The pool could not take the connection (its epoll set could not
    /// watch the socket): offered again after [`REFUSED_RETRY`].
    Refused,
}

/// A connection between requests, parked in the pool. It belongs to the
/// pool while parked and to the worker serving it while served; it goes
/// back to its task when released.
struct ParkedConnection {
    stream: std::os::unix::net::UnixStream,
    requests: Requests,
    /// Where the driver stopped, when `readable` returned false.
    stopped: Option<Reached>,
    back: oneshot::Sender<HandedBack>,
}

impl Parked for ParkedConnection {
    fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// The next request, served on this worker thread; parked again unless
    /// the driver stopped at a step that must wait.
    fn readable(&mut self) -> bool {
        let mut unbounded = usize::MAX;
        match self
            .requests
            .serve_next(self.stream.as_fd(), &mut unbounded)
        {
            Reached::Answered | Reached::Idle => true,
            stopped => {
                self.stopped = Some(stopped);
                false
            }
        }
    }

    fn release(self: Box<Self>, why: Release) {
        let ParkedConnection {
            stream,
            mut requests,
            stopped,
            back,
        } = *self;
        let why = match (why, stopped) {
            (Release::Refused, _) => HandBack::Refused,
            (Release::Panicked, _) => HandBack::Stopped(Reached::End(End::Internal(
                "a request panicked (see the error above)".to_string(),
            ))),
            (Release::Done, Some(stopped)) => HandBack::Stopped(stopped),
            // Taken back by its task, or no longer watched.
            (Release::Done | Release::Unparked, _) => HandBack::Stopped(requests.arrival()),
        };
        // The receiver is gone only if the connection task ended.
        let _ = back.send(HandedBack {
            stream,
            requests,
            why,
        });
    }
}

struct Connection {
    stream: Arc<UnixStream>,
    requests: Requests,
    request_timeout: Duration,
}

impl Connection {
    /// Spec §2.2: the helper speaks first, then checks the client's word.
    async fn handshake(&self) -> Result<(), End> {
        let deadline = Instant::now() + self.request_timeout;
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

    /// The task's loop: has the driver serve the connection's requests
    /// (parked in the pool; at shutdown, in a pool job), and does what each
    /// stop asks for.
    ///
    /// A response is written in full before the next request is read: a
    /// client that reads only once it has sent everything still gets the
    /// whole of the last response. Waiting for a request is the only wait
    /// shutdown interrupts.
    async fn carry(mut self, shutdown: &CancellationToken) -> End {
        // The request timeout of the request now arriving (D9); idle time
        // between requests is unbounded.
        let mut deadline: Option<std::time::Instant> = None;
        // At shutdown: the bytes queued on the socket when it began.
        let mut budget: Option<usize> = None;
        loop {
            let reached;
            if shutdown.is_cancelled() {
                let budget = budget.get_or_insert_with(|| {
                    crate::sys::socket::queued_bytes(self.stream.as_fd()).unwrap_or(0)
                });
                let request = match self.requests.pull(self.stream.as_fd(), budget) {
                    Ok(request) => request,
                    // Whatever comes later, or the rest of a request, is not
                    // answered; an idle connection just closes. So does a
                    // broken one, without a reply.
                    Err(Reached::End(End::Closed)) => return End::Closed,
                    Err(_) => return End::Shutdown,
                };
                (self, reached) = match self.serve_on_pool(request).await {
                    Ok(served) => served,
                    Err(end) => return end,
                };
            } else {
                if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                    return End::Timeout(self.requests.reading(), self.request_timeout);
                }
                (self, reached) = match self.park(deadline, shutdown).await {
                    Ok(parked) => parked,
                    Err(end) => return end,
                };
            }
            deadline = None;
            let done = match reached {
                Reached::Answered | Reached::Idle => Ok(()),
                Reached::Partial { since } => {
                    deadline = Some(since + self.request_timeout);
                    Ok(())
                }
                Reached::WaitsForPlace(routed, started) => {
                    self.answer_when_free(*routed, started).await
                }
                Reached::Unsent(rest) => self.write_rest(&rest).await,
                Reached::End(end) => Err(end),
            };
            if let Err(end) = done {
                return end;
            }
        }
    }

    /// Hands the connection to the pool until a worker gives it back, or
    /// this task takes it back: at shutdown, or at `deadline` (the request
    /// timeout of a request that has partly arrived). Where the driver
    /// stopped, or where reading stands when it was taken back.
    async fn park(
        self,
        deadline: Option<std::time::Instant>,
        shutdown: &CancellationToken,
    ) -> Result<(Connection, Reached), End> {
        let Connection {
            stream,
            requests,
            request_timeout,
        } = self;
        // Responders drop their reference before replying, so this is the
        // only one; the stream leaves tokio's reactor while parked, so that
        // its requests wake only the pool.
        let stream = Arc::try_unwrap(stream)
            .map_err(|_| End::Internal("a response still holds the connection".to_string()))?
            .into_std()
            .map_err(End::Read)?;
        let pool = requests.pool().clone();
        let (tx, mut rx) = oneshot::channel();
        let key = pool.park(Box::new(ParkedConnection {
            stream,
            requests,
            stopped: None,
            back: tx,
        }));
        // This task takes the connection back at shutdown or at the deadline.
        let take_back = async {
            let timeout = async {
                match deadline {
                    Some(deadline) => sleep_until(Instant::from_std(deadline)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = timeout => {}
            }
        };
        let back = tokio::select! {
            back = &mut rx => back,
            _ = take_back => {
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
        let mut conn = Connection {
            stream: Arc::new(stream),
            requests: back.requests,
            request_timeout,
        };
        match back.why {
            HandBack::Stopped(reached) => Ok((conn, reached)),
            HandBack::Refused => {
                tokio::select! {
                    _ = sleep(REFUSED_RETRY) => {}
                    _ = shutdown.cancelled() => {}
                }
                let reached = conn.requests.arrival();
                Ok((conn, reached))
            }
        }
    }

    /// At shutdown, steps 2 to 4 of a request the task has pulled, in a
    /// pool job ([`Requests::serve_pulled`]): a client that sent a request
    /// before shutdown began gets its response. Only the bytes queued on the
    /// socket when shutdown began are read, so a client that keeps sending
    /// requests back to back cannot keep the helper alive.
    async fn serve_on_pool(self, request: Request<OwnedFd>) -> Result<(Connection, Reached), End> {
        let Connection {
            stream,
            requests,
            request_timeout,
        } = self;
        let pool = requests.pool().clone();
        let (tx, rx) = oneshot::channel();
        let sock = stream.clone();
        pool.spawn(move || {
            let reached = requests.serve_pulled(sock.as_fd(), request);
            // The stream goes first, so that the task, once it has the
            // reply, holds the only reference to it.
            drop(sock);
            // The receiver is gone only if the connection task ended.
            let _ = tx.send((requests, reached));
        });
        let (requests, reached) = rx.await.map_err(|_| {
            End::Internal("a request was dropped unanswered (see the error above)".to_string())
        })?;
        let conn = Connection {
            stream,
            requests,
            request_timeout,
        };
        Ok((conn, reached))
    }

    /// Has a request whose device was full executed once it has a place
    /// ([`Requests::execute_when_free`]), and sends what is left of its
    /// response. `started` is when it had arrived.
    async fn answer_when_free(
        &self,
        routed: Routed,
        started: std::time::Instant,
    ) -> Result<(), End> {
        let (reply, in_flight) = oneshot::channel();
        let responder = Responder {
            stream: self.stream.clone(),
            peer: self.requests.peer(),
            started,
            audit: self.requests.audit(),
            reply,
        };
        self.requests.execute_when_free(routed, responder);
        self.await_reply(in_flight).await
    }

    /// Waits for a request executing elsewhere and sends what is left of
    /// its response.
    async fn await_reply(&self, in_flight: InFlight) -> Result<(), End> {
        let rest = in_flight
            .await
            .map_err(|_| {
                End::Internal("a request was dropped unanswered (see the error above)".to_string())
            })?
            .map_err(End::Write)?;
        self.write_rest(&rest).await
    }

    /// Writes the part of a response that the executing thread could not
    /// write without blocking, within the request timeout.
    async fn write_rest(&self, rest: &[u8]) -> Result<(), End> {
        if rest.is_empty() {
            return Ok(());
        }
        self.write_all(rest, Instant::now() + self.request_timeout)
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
            .map_err(|_| End::Timeout(what, self.request_timeout))?
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
            Err(_) => Err(End::Timeout("response write", self.request_timeout)),
        }
    }
}
