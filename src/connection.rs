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

use crate::command::{Executor, Ran};
use crate::fdpass::{self, Received};
use crate::pool::{Parked, Pool, Release};
use crate::protocol::{
    self, Need, Progress, Request, RequestDecoder, Response, Violation, CDB_SIZE, FEATURES_SIZE,
    MAX_TRANSFER,
};
use crate::scsi::{self, SenseCode};

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
    /// The peer's command name (/proc/PID/comm, at most 15 bytes).
    comm: [u8; 16],
    comm_len: u8,
}

impl Peer {
    /// Credentials of the process at the other end of `stream`.
    pub fn of(id: u64, stream: &UnixStream) -> Self {
        let (pid, uid, gid) = match stream.peer_cred() {
            Ok(cred) => (cred.pid(), cred.uid(), cred.gid()),
            // Only possible if the socket is already dead; log what we know.
            Err(_) => (None, u32::MAX, u32::MAX),
        };
        let mut comm = [0u8; 16];
        let mut comm_len = 0;
        if let Some(name) = pid.and_then(|p| std::fs::read(format!("/proc/{p}/comm")).ok()) {
            let name = name.strip_suffix(b"\n").unwrap_or(&name);
            let n = name.len().min(comm.len());
            comm[..n].copy_from_slice(&name[..n]);
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
    /// ([`crate::logging::escape`]): the client chooses it (prctl, a write
    /// to /proc/self/comm, the name of the file it executed), so it may
    /// hold newlines, terminal escapes or any other byte.
    pub fn comm(&self) -> String {
        crate::logging::escape(&self.comm[..usize::from(self.comm_len)])
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
/// Between requests the connection is normally parked in the worker pool
/// (see [`crate::pool`]): the worker that sees a request arrive reads it,
/// executes it and writes the response, so a request costs the event loop
/// nothing. This task then only waits, and takes over whenever the pool
/// hands the connection back: half a request (its rest is read here, under
/// the request timeout), a response the socket did not take at once, the
/// end of the connection, or shutdown.
///
/// A request that the worker cannot execute at once comes back with the
/// connection, unexecuted: one for a device already executing its bound of
/// commands (D29), or for a dm-multipath device. This task queues it with
/// the pool, where it waits for its device without holding a thread (and a
/// multipath request goes on to the multipath worker).
///
/// When the pool cannot take the connection (it cannot watch the socket or
/// start a thread), requests are read here and executed on the pool, whose
/// thread writes as much of the response as the socket takes; this task
/// writes the rest before it reads the next request. Either way the
/// protocol stays strictly one-at-a-time: a request is read and executed
/// only after the previous response has been written in full.
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
    let mut decoder = RequestDecoder::new();
    loop {
        if parking && decoder.is_idle() {
            let returned;
            (conn, decoder, returned) = match conn.park(decoder, &shutdown).await {
                Ok(parked) => parked,
                Err(end) => return end,
            };
            let done = match returned {
                Returned::Partial => Ok(()),
                Returned::Pending(rest) => conn.write_rest(&rest).await,
                Returned::Queue(request) => conn.answer(request).await,
                Returned::End(end) => Err(end),
                Returned::Refused => {
                    parking = false;
                    Ok(())
                }
                Returned::Shutdown => return conn.answer_arrived(&mut decoder).await,
            };
            if let Err(end) = done {
                return end;
            }
            if decoder.is_idle() {
                continue;
            }
        }
        // Waiting for (and reading) a request is the only part shutdown
        // interrupts; `biased` makes shutdown win over a pipelined request.
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => Err(End::Shutdown),
            r = conn.read_request(&mut decoder) => r,
        };
        match next {
            // The response is written in full before the next request is
            // read, parked or not: a client that reads only once it has
            // sent everything still gets the whole of the last response.
            Ok(request) => {
                if let Err(end) = conn.answer(request).await {
                    return end;
                }
            }
            // Requests that have fully arrived are answered, as when parked.
            Err(End::Shutdown) => return conn.answer_arrived(&mut decoder).await,
            Err(end) => return end,
        }
    }
}

/// A request executing on the SG_IO pool (or the multipath worker);
/// resolves to the part of the response that could not be written without
/// blocking.
type InFlight = oneshot::Receiver<io::Result<Vec<u8>>>;

/// Sends the response for one request, from whichever thread executed it:
/// logs it, writes as much as the socket takes without blocking, and hands
/// the rest (and any write error) back to the connection task. Dropping it
/// unsent (a panic) tells the connection task something went wrong.
pub struct Responder {
    stream: Arc<UnixStream>,
    peer: Peer,
    started: std::time::Instant,
    audit: bool,
    reply: oneshot::Sender<io::Result<Vec<u8>>>,
}

impl Responder {
    /// Sends `response` for `request`, then closes the request's fd.
    pub fn send(self, request: Request<OwnedFd>, response: Response) {
        let out = reply(&self.peer, self.started, self.audit, request, response);
        let (written, result) = write_now(self.stream.as_fd(), &out);
        // The stream goes before the reply, so that the connection task,
        // once it has the reply, holds the only reference to it.
        drop(self.stream);
        // The receiver is gone only if the connection task ended.
        let _ = self.reply.send(result.map(|()| out[written..].to_vec()));
    }
}

/// Logs and audits one executed request, closes its fd, and encodes the
/// response.
fn reply(
    peer: &Peer,
    started: std::time::Instant,
    audit: bool,
    request: Request<OwnedFd>,
    response: Response,
) -> Vec<u8> {
    log_request(peer, &request, &response, started.elapsed());
    if audit && request.direction == protocol::Direction::Out {
        crate::audit::record(peer, &request, &response);
    }
    drop(request);
    let mut out = Vec::with_capacity(protocol::RESPONSE_HEADER_SIZE + response.data.len());
    response.encode(&mut out);
    out
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

/// Reads the next part of a request, sized as `decoder` needs it (spec
/// §3): the rest of the CDB with room for fds, or parameter bytes without.
/// A reset connection reads as end of file.
fn recv_part(
    sock: BorrowedFd<'_>,
    decoder: &RequestDecoder<OwnedFd>,
    buf: &mut Vec<u8>,
) -> io::Result<Received> {
    recv_part_at_most(sock, decoder, buf, usize::MAX)
}

/// [`recv_part`], reading at most `limit` bytes.
fn recv_part_at_most(
    sock: BorrowedFd<'_>,
    decoder: &RequestDecoder<OwnedFd>,
    buf: &mut Vec<u8>,
    limit: usize,
) -> io::Result<Received> {
    let (n, want_fds) = match decoder.need() {
        Need::Cdb(n) => (n, true),
        Need::Params(n) => (n.min(MAX_TRANSFER), false),
    };
    buf.resize(n.min(limit), 0);
    match fdpass::recv(sock, buf, want_fds) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(Received {
            len: 0,
            fds: Vec::new(),
        }),
        r => r,
    }
}

/// Feeds what [`recv_part`] read to `decoder`: the request once complete,
/// None while more is needed, or why the connection ends.
fn feed_part(
    decoder: &mut RequestDecoder<OwnedFd>,
    buf: &[u8],
    received: Received,
) -> Result<Option<Request<OwnedFd>>, End> {
    let cdb = matches!(decoder.need(), Need::Cdb(_));
    if received.len == 0 {
        return Err(match (cdb, decoder.is_idle()) {
            (true, true) => End::Closed,
            (true, false) => End::Truncated("a CDB"),
            (false, _) => End::Truncated("the parameter list"),
        });
    }
    let progress = if cdb {
        decoder
            .feed_cdb(&buf[..received.len], received.fds)
            .map_err(End::Violation)?
    } else {
        decoder.feed_params(&buf[..received.len])
    };
    Ok(match progress {
        Progress::Complete(request) => Some(request),
        _ => None,
    })
}

/// What a parked connection brings back to its task.
struct Back {
    stream: std::os::unix::net::UnixStream,
    decoder: RequestDecoder<OwnedFd>,
    returned: Returned,
}

/// Why a parked connection came back to its task, and what the task does.
enum Returned {
    /// Half a request has arrived (or the pool stopped watching the
    /// connection): the task reads on, under the request timeout.
    Partial,
    /// The socket did not take the whole response: the task writes the rest.
    Pending(Vec<u8>),
    /// A request read but not executed (its device is busy, or it is for a
    /// dm-multipath device): the task queues it with the pool.
    Queue(Request<OwnedFd>),
    /// The connection ends.
    End(End),
    /// The pool could not take the connection: the task stops parking it.
    Refused,
    /// Unparked for shutdown.
    Shutdown,
}

/// A connection between requests, parked in the pool: the worker that sees
/// it readable reads, executes and answers whole requests on its own.
struct ParkedConnection {
    stream: std::os::unix::net::UnixStream,
    decoder: RequestDecoder<OwnedFd>,
    buf: Vec<u8>,
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

    fn readable(&mut self) -> bool {
        loop {
            let received = match recv_part(self.stream.as_fd(), &self.decoder, &mut self.buf) {
                Ok(r) => r,
                // Half a request: its task reads the rest, under the timeout.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return self.decoder.is_idle(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.returned = Returned::End(End::Read(e));
                    return false;
                }
            };
            let request = match feed_part(&mut self.decoder, &self.buf, received) {
                Ok(Some(request)) => request,
                Ok(None) => continue,
                Err(end) => {
                    self.returned = Returned::End(end);
                    return false;
                }
            };
            let started = std::time::Instant::now();
            let (request, response) = match self.config.executor.run_here(request, &self.pool) {
                Ran::Answered(request, response) => (request, response),
                // Its task queues it, where it waits without a thread.
                Ran::Queue(request) => {
                    self.returned = Returned::Queue(request);
                    return false;
                }
            };
            let out = reply(&self.peer, started, self.config.audit, request, response);
            let (written, result) = write_now(self.stream.as_fd(), &out);
            if let Err(e) = result {
                self.returned = Returned::End(End::Write(e));
                return false;
            }
            if written < out.len() {
                self.returned = Returned::Pending(out[written..].to_vec());
                return false;
            }
            return true;
        }
    }

    fn release(self: Box<Self>, why: Release) {
        let ParkedConnection {
            stream,
            decoder,
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
            decoder,
            returned,
        });
    }
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
                .recv_with(Some(deadline), "handshake", |sock| {
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

    /// Reads one whole request. Idle time before its first byte is unbounded;
    /// once it has started, the rest must arrive within the request timeout
    /// (counted from now if `decoder` already holds part of it).
    async fn read_request(
        &self,
        decoder: &mut RequestDecoder<OwnedFd>,
    ) -> Result<Request<OwnedFd>, End> {
        let mut buf = Vec::with_capacity(CDB_SIZE);
        let mut deadline =
            (!decoder.is_idle()).then(|| Instant::now() + self.config.request_timeout);
        loop {
            let what = match decoder.need() {
                Need::Cdb(_) => "CDB",
                Need::Params(_) => "parameter list",
            };
            let received = self
                .recv_with(deadline, what, |sock| recv_part(sock, decoder, &mut buf))
                .await?;
            if let Some(request) = feed_part(decoder, &buf, received)? {
                return Ok(request);
            }
            deadline.get_or_insert_with(|| Instant::now() + self.config.request_timeout);
        }
    }

    /// Hands the connection to the pool until a worker gives it back (see
    /// [`serve`]), or shutdown takes it back.
    async fn park(
        self,
        decoder: RequestDecoder<OwnedFd>,
        shutdown: &CancellationToken,
    ) -> Result<(Connection, RequestDecoder<OwnedFd>, Returned), End> {
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
            decoder,
            buf: Vec::with_capacity(CDB_SIZE),
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
        Ok((conn, back.decoder, back.returned))
    }

    /// At shutdown, answers the requests that have fully arrived (a client
    /// that sent one before shutdown began gets its response, as when the
    /// event loop read every request at once), then ends the connection.
    ///
    /// Only the bytes queued on the socket now are read: a client that keeps
    /// sending requests back to back cannot keep the helper alive.
    async fn answer_arrived(&self, decoder: &mut RequestDecoder<OwnedFd>) -> End {
        let mut budget = match queued_bytes(self.stream.as_fd()) {
            Ok(n) => n,
            Err(_) => return End::Shutdown,
        };
        let mut buf = Vec::with_capacity(CDB_SIZE);
        loop {
            if budget == 0 {
                // Whatever comes later, or the rest of a request, is not
                // answered; an idle connection just closes.
                return End::Shutdown;
            }
            let received = recv_part_at_most(self.stream.as_fd(), decoder, &mut buf, budget);
            let received = match received {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Nothing more has arrived, or the connection is broken.
                Err(_) => return End::Shutdown,
            };
            budget = budget.saturating_sub(received.len);
            match feed_part(decoder, &buf, received) {
                Ok(Some(request)) => {
                    if let Err(end) = self.answer(request).await {
                        return end;
                    }
                }
                Ok(None) => continue,
                Err(End::Closed) => return End::Closed,
                // Half a request, or a broken one: closed without a reply.
                Err(_) => return End::Shutdown,
            }
        }
    }

    /// Starts executing a request on the SG_IO pool; the executing thread
    /// closes the device fd as soon as the command is done and writes as much
    /// of the response as the socket takes without blocking.
    fn dispatch(&self, request: Request<OwnedFd>) -> InFlight {
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
        self.pool
            .run(move || config.executor.run(request, responder, &pool));
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

    /// Executes `request` on the pool and waits until its response is out.
    async fn answer(&self, request: Request<OwnedFd>) -> Result<(), End> {
        let in_flight = self.dispatch(request);
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
    /// readable, bounded by `deadline` when there is one.
    async fn recv_with(
        &self,
        deadline: Option<Instant>,
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
        match deadline {
            None => read.await,
            Some(deadline) => timeout_at(deadline, read)
                .await
                .map_err(|_| End::Timeout(what, self.config.request_timeout))?,
        }
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
