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
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, watch};
use tokio::time::{timeout_at, Instant};
use tracing::{debug, warn};

use crate::command::Executor;
use crate::fdpass::{self, Received};
use crate::pool::Pool;
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

    /// The peer's command name ("" when unknown).
    pub fn comm(&self) -> &str {
        std::str::from_utf8(&self.comm[..usize::from(self.comm_len)]).unwrap_or("?")
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
/// Requests are executed on the blocking pool, and the pool thread writes
/// the response itself as soon as the command completes; meanwhile this task
/// already waits for the next request. That keeps the event loop out of the
/// response path (one thread hand-off per request instead of two), while the
/// protocol stays strictly one-at-a-time: a request is dispatched only after
/// the previous response has been written in full.
pub async fn serve(
    stream: UnixStream,
    peer: Peer,
    config: Arc<ConnectionConfig>,
    pool: Pool,
    mut shutdown: watch::Receiver<()>,
) -> End {
    let conn = Connection {
        stream: Arc::new(stream),
        peer,
        config,
        pool,
    };
    let end = tokio::select! {
        end = conn.handshake() => end,
        _ = shutdown.changed() => Err(End::Shutdown),
    };
    if let Err(end) = end {
        return end;
    }
    let mut decoder = RequestDecoder::new();
    let mut in_flight: Option<InFlight> = None;
    loop {
        // Waiting for (and reading) a request is the only part shutdown
        // interrupts; `biased` makes shutdown win over a pipelined request.
        let next = tokio::select! {
            biased;
            _ = shutdown.changed() => Err(End::Shutdown),
            r = conn.read_request(&mut decoder) => r,
        };
        // Whatever arrived (or did not), the request in flight is answered
        // first: a request that has been read always gets its response.
        if let Some(previous) = in_flight.take() {
            if let Err(end) = conn.finish(previous).await {
                return end;
            }
        }
        match next {
            Ok(request) => in_flight = Some(conn.dispatch(request)),
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
        log_request(&self.peer, &request, &response, self.started.elapsed());
        if self.audit && request.direction == protocol::Direction::Out {
            crate::audit::record(&self.peer, &request, &response);
        }
        drop(request);
        let mut out = Vec::with_capacity(protocol::RESPONSE_HEADER_SIZE + response.data.len());
        response.encode(&mut out);
        let mut written = 0;
        let result = loop {
            if written == out.len() {
                break Ok(());
            }
            match self.stream.try_write(&out[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        out.drain(..written);
        // The receiver is gone only if the connection task ended.
        let _ = self.reply.send(result.map(|()| out));
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
                .recv(&mut word[got..], false, Some(deadline), "handshake")
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
    /// once it has started, the rest must arrive within the request timeout.
    async fn read_request(
        &self,
        decoder: &mut RequestDecoder<OwnedFd>,
    ) -> Result<Request<OwnedFd>, End> {
        let mut buf = [0u8; CDB_SIZE];
        let mut params = Vec::new();
        let mut deadline = None;
        loop {
            let progress = match decoder.need() {
                Need::Cdb(n) => {
                    let r = self.recv(&mut buf[..n], true, deadline, "CDB").await?;
                    if r.len == 0 {
                        return Err(if decoder.is_idle() {
                            End::Closed
                        } else {
                            End::Truncated("a CDB")
                        });
                    }
                    decoder
                        .feed_cdb(&buf[..r.len], r.fds)
                        .map_err(End::Violation)?
                }
                Need::Params(n) => {
                    params.resize(n.min(MAX_TRANSFER), 0);
                    let r = self
                        .recv(&mut params, false, deadline, "parameter list")
                        .await?;
                    if r.len == 0 {
                        return Err(End::Truncated("the parameter list"));
                    }
                    decoder.feed_params(&params[..r.len])
                }
            };
            if let Progress::Complete(request) = progress {
                return Ok(request);
            }
            deadline.get_or_insert_with(|| Instant::now() + self.config.request_timeout);
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
        self.pool
            .run(move || config.executor.run(request, responder));
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
        if rest.is_empty() {
            return Ok(());
        }
        self.write_all(&rest, Instant::now() + self.config.request_timeout)
            .await
    }

    /// One read of up to `buf.len()` bytes (with fds if `want_fds`), bounded
    /// by `deadline` when there is one.
    async fn recv(
        &self,
        buf: &mut [u8],
        want_fds: bool,
        deadline: Option<Instant>,
        what: &'static str,
    ) -> Result<Received, End> {
        let read = async {
            loop {
                self.stream.readable().await.map_err(End::Read)?;
                match self.stream.try_io(Interest::READABLE, || {
                    fdpass::recv(self.stream.as_fd(), buf, want_fds)
                }) {
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
