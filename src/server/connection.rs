//! One client connection: handshake, then request → execute → response, one
//! request at a time, until the client leaves, breaks the protocol, or the
//! helper shuts down.
//!
//! Reads are sized exactly as the reference sizes them (4 handshake bytes,
//! then the rest of a 16-byte CDB with a control buffer, then exactly the PR
//! OUT parameter bytes without one), so the same byte-and-fd stream is
//! framed identically, including which fds the kernel discards.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::MsgFlags;
use thiserror::Error;
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::protocol::fdpass::{self, Received};
use crate::protocol::{
    self, Need, Progress, Request, RequestDecoder, Response, Violation, CDB_SIZE, FEATURES_SIZE,
    MAX_TRANSFER,
};
use crate::scsi::{self, SenseCode};
use crate::server::command::{Executor, Ran, Routed};
use crate::server::pool::{Parked, Pool, Release};

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

/// Who is on the other end, from SO_PEERCRED at accept time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Connection number, unique for the life of the process.
    pub id: u64,
    /// Peer process id, if the kernel knows it.
    pub pid: Option<i32>,
    /// Peer user id.
    pub uid: u32,
    /// Peer group id.
    pub gid: u32,
    /// The peer's command name (/proc/PID/comm, at most 16 bytes read),
    /// escaped once for logs when the peer is made (see [`Peer::comm`]).
    comm: [u8; COMM_ESCAPED],
    comm_len: u8,
}

/// Room for an escaped command name: 16 bytes, each at most 4 once escaped
/// (`\xNN`).
const COMM_ESCAPED: usize = 16 * 4;

impl Peer {
    /// Credentials of the process at the other end of `stream`.
    pub fn of(id: u64, stream: &UnixStream) -> Self {
        let (pid, uid, gid) = match stream.peer_cred() {
            Ok(cred) => (cred.pid(), cred.uid(), cred.gid()),
            // Only possible if the socket is already dead; log what we know.
            Err(_) => (None, u32::MAX, u32::MAX),
        };
        let mut comm = [0u8; COMM_ESCAPED];
        let mut comm_len = 0;
        if let Some(name) = pid.and_then(|p| std::fs::read(format!("/proc/{p}/comm")).ok()) {
            let name = name.strip_suffix(b"\n").unwrap_or(&name);
            let escaped = crate::process::logging::escape(&name[..name.len().min(16)]);
            let n = escaped.len().min(COMM_ESCAPED);
            comm[..n].copy_from_slice(&escaped.as_bytes()[..n]);
            comm_len = n as u8;
        }
        Peer {
            id,
            pid,
            uid,
            gid,
            comm,
            comm_len,
        }
    }

    /// The peer's command name ("" when unknown), escaped for logs
    /// ([`crate::process::logging::escape`]): the client chooses it (prctl, a write
    /// to /proc/self/comm, the name of the file it executed), so it may
    /// hold newlines, terminal escapes or any other byte. Escaped once, when
    /// the peer is made, not on every log line.
    pub fn comm(&self) -> &str {
        // Escaped text is ASCII.
        std::str::from_utf8(&self.comm[..usize::from(self.comm_len)]).unwrap_or("")
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connection {} (pid ", self.id)?;
        match self.pid {
            Some(pid) => write!(f, "{pid}")?,
            None => f.write_str("?")?,
        }
        write!(f, ", uid {}, gid {}", self.uid, self.gid)?;
        if self.comm_len > 0 {
            write!(f, ", {}", self.comm())?;
        }
        f.write_str(")")
    }
}

/// Why a connection ended. Every variant but [`End::Closed`] and
/// [`End::Shutdown`] is logged as a warning naming the peer.
#[derive(Debug, Error)]
pub enum End {
    /// The client closed the connection at a request boundary.
    #[error("client closed the connection")]
    Closed,
    /// The helper is shutting down.
    #[error("helper shutting down")]
    Shutdown,
    /// The client broke the protocol (spec §6.1).
    #[error("{0}")]
    Violation(Violation),
    /// The client closed the connection in the middle of a request.
    #[error("unexpected end-of-file in the middle of {0}")]
    Truncated(&'static str),
    /// A started request did not finish arriving in time (D9).
    #[error("{0} not complete after {1:?}, closing")]
    Timeout(&'static str, Duration),
    /// Reading from the socket failed.
    #[error("unable to read from socket: {0}")]
    Read(io::Error),
    /// Writing to the socket failed.
    #[error("unable to write to socket: {0}")]
    Write(io::Error),
    /// Executing a command failed inside the helper (a bug: it is logged as
    /// an error, the connection is closed, and the helper keeps serving).
    #[error("internal error executing a command: {0}")]
    Internal(String),
}

/// Serves one accepted connection until it ends, then says why.
///
/// # One way through for a request
///
/// Every request takes the same steps, each written once, whoever drives
/// it:
///
/// 1. **read and decode**: [`Session::pull`] reads what has arrived
///    without blocking, sized as the reference sizes its reads, and feeds
///    it to the connection's decoder until a whole request has arrived;
/// 2. **route**: [`Executor::route`] inspects the request's fd once and
///    decides how it is executed (refused at once, SG_IO, multipath);
/// 3. **execute**: on a pool thread, at once if its device has a place
///    ([`Executor::run_here`]), else queued until it has one
///    ([`Executor::run`], D29), or on the multipath worker;
/// 4. **answer**: [`respond`] logs and audits it, closes its fd, and writes
///    as much of the response as the socket takes without blocking.
///
/// Two drivers take a request through those steps. Between requests the
/// connection is normally parked in the worker pool (see [`crate::server::pool`]):
/// the worker that sees a request arrive pulls it, executes it and writes
/// the response, so a request costs the event loop nothing. This task then
/// only waits, and takes over whenever the pool hands the connection back:
/// half a request (this task pulls the rest, under the request timeout), a
/// response the socket did not take at once (this task writes the rest), a
/// request whose device has no place free or that is for a dm-multipath
/// device (this task queues it with the pool, where it waits without
/// holding a thread), the end of the connection, or shutdown.
///
/// When the pool cannot take the connection (it cannot watch the socket or
/// start a thread), this task pulls every request and has it routed and
/// executed on the pool, whose thread writes as much of the response as the
/// socket takes; this task writes the rest before it reads the next
/// request. Either way the protocol stays strictly one-at-a-time: a request
/// is read and executed only after the previous response has been written
/// in full.
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
            let returned;
            (conn, session, returned) = match conn.park(session, &shutdown).await {
                Ok(parked) => parked,
                Err(end) => return end,
            };
            let done = match returned {
                Returned::Partial => Ok(()),
                Returned::Pending(rest) => conn.write_rest(&rest).await,
                Returned::Queue(routed) => conn.answer(Work::Routed(routed)).await,
                Returned::End(end) => Err(end),
                Returned::Refused => {
                    parking = false;
                    Ok(())
                }
                Returned::Shutdown => return conn.answer_arrived(&mut session).await,
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
                if let Err(end) = conn.answer(Work::Arrived(request)).await {
                    return end;
                }
            }
            // Requests that have fully arrived are answered, as when parked.
            Err(End::Shutdown) => return conn.answer_arrived(&mut session).await,
            Err(end) => return end,
        }
    }
}

/// The reading side of one connection's protocol after the handshake: the
/// request decoder and its read buffer. It moves with the connection (into
/// the pool when parked, back to the task when returned), so half a request
/// read by one driver is finished by the other.
struct Session {
    decoder: RequestDecoder<OwnedFd>,
    buf: Vec<u8>,
}

/// What [`Session::pull`] got.
enum Pulled {
    /// A whole request.
    Request(Request<OwnedFd>),
    /// Nothing more can be read now (or the byte budget is spent); part of
    /// a request may have arrived ([`Session::is_idle`] says).
    Blocked,
    /// The connection ends.
    End(End),
}

impl Session {
    fn new() -> Session {
        Session {
            decoder: RequestDecoder::new(),
            buf: Vec::with_capacity(CDB_SIZE),
        }
    }

    /// At a request boundary (nothing of the next request has arrived).
    fn is_idle(&self) -> bool {
        self.decoder.is_idle()
    }

    /// What is being read, for the timeout message.
    fn reading(&self) -> &'static str {
        match self.decoder.need() {
            Need::Cdb(_) => "CDB",
            Need::Params(_) => "parameter list",
        }
    }

    /// Reads from `sock` without blocking until a whole request has
    /// arrived, nothing more has, or the connection ends; at most `budget`
    /// bytes, which it counts down.
    ///
    /// Each read is sized as the decoder needs it (spec §3): the rest of
    /// the CDB with room for fds, or parameter bytes without. A reset
    /// connection reads as end of file.
    fn pull(&mut self, sock: BorrowedFd<'_>, budget: &mut usize) -> Pulled {
        loop {
            if *budget == 0 {
                return Pulled::Blocked;
            }
            let cdb = matches!(self.decoder.need(), Need::Cdb(_));
            let n = match self.decoder.need() {
                Need::Cdb(n) => n,
                Need::Params(n) => n.min(MAX_TRANSFER),
            };
            self.buf.resize(n.min(*budget), 0);
            let received = match fdpass::recv(sock, &mut self.buf, cdb) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Pulled::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Received {
                    len: 0,
                    fds: Vec::new(),
                },
                Err(e) => return Pulled::End(End::Read(e)),
            };
            *budget -= received.len;
            if received.len == 0 {
                return Pulled::End(match (cdb, self.decoder.is_idle()) {
                    (true, true) => End::Closed,
                    (true, false) => End::Truncated("a CDB"),
                    (false, _) => End::Truncated("the parameter list"),
                });
            }
            let progress = if cdb {
                match self
                    .decoder
                    .feed_cdb(&self.buf[..received.len], received.fds)
                {
                    Ok(progress) => progress,
                    Err(violation) => return Pulled::End(End::Violation(violation)),
                }
            } else {
                self.decoder.feed_params(&self.buf[..received.len])
            };
            if let Progress::Complete(request) = progress {
                return Pulled::Request(request);
            }
        }
    }
}

/// A request executing on the SG_IO pool (or the multipath worker);
/// resolves to the part of the response that could not be written without
/// blocking.
type InFlight = oneshot::Receiver<io::Result<Vec<u8>>>;

/// Sends the response for one request, from whichever thread executed it
/// when the connection's task dispatched it: [`respond`], then hands the
/// rest (and any write error) back to the connection task. Dropping it
/// unsent (a panic) tells the connection task something went wrong.
pub struct Responder {
    stream: Arc<UnixStream>,
    peer: Peer,
    started: std::time::Instant,
    audit: bool,
    reply: oneshot::Sender<io::Result<Vec<u8>>>,
}

impl Responder {
    /// Sends `response` for `request`, closing the request's fd.
    pub fn send(self, request: Request<OwnedFd>, response: Response) {
        let rest = respond(
            self.stream.as_fd(),
            &self.peer,
            self.started,
            self.audit,
            request,
            response,
        );
        // The stream goes before the reply, so that the connection task,
        // once it has the reply, holds the only reference to it.
        drop(self.stream);
        // The receiver is gone only if the connection task ended.
        let _ = self.reply.send(rest);
    }
}

/// Answers one executed request, on the thread that executed it: logs and
/// audits it, closes its fd, encodes the response and writes as much of it
/// as the socket takes without blocking. Returns what is left to write
/// (empty when all of it went), or the write error.
fn respond(
    sock: BorrowedFd<'_>,
    peer: &Peer,
    started: std::time::Instant,
    audit: bool,
    request: Request<OwnedFd>,
    response: Response,
) -> io::Result<Vec<u8>> {
    log_request(peer, &request, &response, started.elapsed());
    if audit && request.direction == protocol::Direction::Out {
        crate::server::audit::record(peer, &request, &response);
    }
    drop(request);
    let mut out = Vec::with_capacity(protocol::RESPONSE_HEADER_SIZE + response.data.len());
    response.encode(&mut out);
    let (written, result) = write_now(sock, &out);
    result.map(|()| out[written..].to_vec())
}

/// Writes as much of `bytes` as the socket takes without blocking; returns
/// how much that was, and the error if writing failed.
fn write_now(sock: BorrowedFd<'_>, bytes: &[u8]) -> (usize, io::Result<()>) {
    let mut written = 0;
    while written < bytes.len() {
        match nix::sys::socket::send(
            sock.as_raw_fd(),
            &bytes[written..],
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(n) => written += n,
            Err(Errno::EAGAIN) => break,
            Err(Errno::EINTR) => {}
            Err(e) => return (written, Err(e.into())),
        }
    }
    (written, Ok(()))
}

/// Bytes received on `sock` and not read yet (FIONREAD).
#[allow(unsafe_code)] // the FIONREAD ioctl: nix has no wrapper for it.
fn queued_bytes(sock: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD stores one int through the pointer, which is valid.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// What a parked connection brings back to its task.
struct Back {
    stream: std::os::unix::net::UnixStream,
    session: Session,
    returned: Returned,
}

/// Why a parked connection came back to its task, and what the task does.
enum Returned {
    /// Half a request has arrived (or the pool stopped watching the
    /// connection): the task reads on, under the request timeout.
    Partial,
    /// The socket did not take the whole response: the task writes the rest.
    Pending(Vec<u8>),
    /// A request routed but not executed (its device is busy, or it is for
    /// a dm-multipath device): the task queues it with the pool.
    Queue(Routed),
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
    returned: Returned,
    back: oneshot::Sender<Back>,
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
                self.returned = Returned::End(end);
                return false;
            }
        };
        let started = std::time::Instant::now();
        let executor = &self.config.executor;
        let (request, response) = match executor.run_here(executor.route(request), &self.pool) {
            Ran::Answered(request, response) => (request, response),
            // Its task queues it, where it waits without a thread.
            Ran::Queue(routed) => {
                self.returned = Returned::Queue(routed);
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
                self.returned = Returned::Pending(rest);
                false
            }
            Err(e) => {
                self.returned = Returned::End(End::Write(e));
                false
            }
        }
    }

    fn release(self: Box<Self>, why: Release) {
        let ParkedConnection {
            stream,
            session,
            returned,
            back,
            ..
        } = *self;
        let returned = match why {
            Release::Done => returned,
            Release::Unparked => Returned::Shutdown,
            Release::Refused => Returned::Refused,
            Release::Panicked => Returned::End(End::Internal(
                "a request panicked (see the error above)".to_string(),
            )),
        };
        // The receiver is gone only if the connection task ended.
        let _ = back.send(Back {
            stream,
            session,
            returned,
        });
    }
}

/// A request the task has the pool execute.
enum Work {
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
    ) -> Result<(Connection, Session, Returned), End> {
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
            returned: Returned::Partial,
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
        Ok((conn, back.session, back.returned))
    }

    /// At shutdown, answers the requests that have fully arrived (a client
    /// that sent one before shutdown began gets its response, as when the
    /// event loop read every request at once), then ends the connection.
    ///
    /// Only the bytes queued on the socket now are read: a client that keeps
    /// sending requests back to back cannot keep the helper alive.
    async fn answer_arrived(&self, session: &mut Session) -> End {
        let mut budget = match queued_bytes(self.stream.as_fd()) {
            Ok(n) => n,
            Err(_) => return End::Shutdown,
        };
        loop {
            match session.pull(self.stream.as_fd(), &mut budget) {
                Pulled::Request(request) => {
                    if let Err(end) = self.answer(Work::Arrived(request)).await {
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
    fn dispatch(&self, work: Work) -> InFlight {
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
        self.pool.run(move || {
            let executor = &config.executor;
            let routed = match work {
                Work::Arrived(request) => executor.route(request),
                Work::Routed(routed) => routed,
            };
            executor.run(routed, responder, &pool)
        });
        in_flight
    }

    /// Waits for a dispatched request and sends what is left of its response.
    async fn finish(&self, in_flight: InFlight) -> Result<(), End> {
        let rest = in_flight
            .await
            .map_err(|_| {
                End::Internal("a request was dropped unanswered (see the error above)".to_string())
            })?
            .map_err(End::Write)?;
        self.write_rest(&rest).await
    }

    /// Executes a request on the pool and waits until its response is out.
    async fn answer(&self, work: Work) -> Result<(), End> {
        let in_flight = self.dispatch(work);
        self.finish(in_flight).await
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

/// Logs one executed request at debug level with structured fields.
fn log_request(peer: &Peer, request: &Request<OwnedFd>, response: &Response, elapsed: Duration) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let device = nix::sys::stat::fstat(&request.fd)
        .map(|st| {
            let rdev = st.st_rdev;
            format!("{}:{}", libc::major(rdev), libc::minor(rdev))
        })
        .unwrap_or_else(|_| "?".to_string());
    let sense = (response.status == scsi::status::CHECK_CONDITION)
        .then(|| SenseCode::parse(&response.sense))
        .flatten();
    let hex = |v: Option<u8>| v.map(|b| format!("{b:02x}")).unwrap_or_default();
    debug!(
        conn = peer.id,
        peer_pid = peer.pid.unwrap_or(-1),
        peer_uid = peer.uid,
        device = %device,
        opcode = format_args!("{:#04x}", request.cdb[0]),
        service_action = request.service_action(),
        status = format_args!("{:#04x}", response.status),
        sense_key = %hex(sense.map(|s| s.key)),
        asc = %hex(sense.map(|s| s.asc)),
        ascq = %hex(sense.map(|s| s.ascq)),
        data_len = response.data.len(),
        duration_us = elapsed.as_micros() as u64,
        "request"
    );
}

/// Logs how a connection ended, at the level its cause deserves.
pub fn log_end(peer: &Peer, end: &End) {
    match end {
        End::Closed | End::Shutdown => debug!("{peer}: {end}"),
        End::Internal(_) => tracing::error!("{peer}: {end}"),
        _ => warn!("{peer}: {end}"),
    }
}
