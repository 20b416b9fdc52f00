//! Why a connection ended, and how that is logged.

use std::io;
use std::time::Duration;

use thiserror::Error;
use tracing::{debug, warn};

use crate::protocol::Violation;
use crate::server::peer::Peer;

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

/// Logs how a connection ended, at the level its cause deserves.
pub fn log_end(peer: &Peer, end: &End) {
    match end {
        End::Closed | End::Shutdown => debug!("{peer}: {end}"),
        End::Internal(_) => tracing::error!("{peer}: {end}"),
        _ => warn!("{peer}: {end}"),
    }
}
