//! The reading side of a connection: reads sized as the reference sizes
//! them (the rest of a 16-byte CDB with room for fds, then exactly the PR
//! OUT parameter bytes without), fed to the request decoder, so the same
//! byte-and-fd stream is framed identically, including which fds the
//! kernel discards. Step 1 of the driver ([`crate::server::request`]).

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use crate::protocol::fdpass::{self, Received};
use crate::protocol::{Need, Progress, Request, RequestDecoder, CDB_SIZE, MAX_TRANSFER};
use crate::server::end::End;

/// The reading side of one connection's protocol after the handshake: the
/// request decoder and its read buffer. It moves with the connection (into
/// the pool when parked, back to the task between), so half a request read
/// on one worker is finished on another.
pub(crate) struct Session {
    decoder: RequestDecoder<OwnedFd>,
    buf: Vec<u8>,
}

/// What [`Session::pull`] got.
pub(crate) enum Pulled {
    /// A whole request.
    Request(Request<OwnedFd>),
    /// Nothing more can be read now (or the byte budget is spent); part of
    /// a request may have arrived ([`Session::is_idle`] says).
    Blocked,
    /// The connection ends.
    End(End),
}

impl Session {
    pub(crate) fn new() -> Session {
        Session {
            decoder: RequestDecoder::new(),
            buf: Vec::with_capacity(CDB_SIZE),
        }
    }

    /// At a request boundary (nothing of the next request has arrived).
    pub(crate) fn is_idle(&self) -> bool {
        self.decoder.is_idle()
    }

    /// What is being read, for the timeout message.
    pub(crate) fn reading(&self) -> &'static str {
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
    pub(crate) fn pull(&mut self, sock: BorrowedFd<'_>, budget: &mut usize) -> Pulled {
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
