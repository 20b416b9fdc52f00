//! The answering side of a request: the response a completion gives, the
//! log line and audit record, closing the request's fd, and writing the
//! response without blocking, whoever executed the request (a parked
//! worker, a pool job, the multipath worker).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::MsgFlags;
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tracing::debug;

use crate::protocol::{self, Request, Response};
use crate::scsi::{self, Completion, SenseCode};
use crate::server::peer::Peer;

/// The reply for a completion: PR IN data travels only with GOOD.
pub fn response(completion: Completion, mut data: Vec<u8>) -> Response {
    if completion.status != scsi::status::GOOD {
        data.clear();
    }
    Response {
        status: completion.status,
        sense: completion.sense,
        data,
    }
}

/// A request executing on the SG_IO pool (or the multipath worker);
/// resolves to the part of the response that could not be written without
/// blocking.
pub(crate) type InFlight = oneshot::Receiver<io::Result<Vec<u8>>>;

/// Sends the response for one request that waited for its device, from
/// whichever thread executed it (a pool thread, the multipath worker):
/// [`respond`], then hands the rest (and any write error) back to the
/// connection task. Dropping it unsent (a panic) tells the connection task
/// something went wrong.
pub struct Responder {
    pub(crate) stream: Arc<UnixStream>,
    pub(crate) peer: Peer,
    pub(crate) started: std::time::Instant,
    pub(crate) audit: bool,
    pub(crate) reply: oneshot::Sender<io::Result<Vec<u8>>>,
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
pub(crate) fn respond(
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
