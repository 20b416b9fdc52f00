//! Why a connection ended, and how that is logged.
//!
//! Every abnormal end is a warning naming the peer (D20), but at most
//! [`PER_UID_BURST`] per peer uid and [`ALL_BURST`] in all per
//! [`WINDOW`]: a client looping on connect + a bad opcode produced
//! thousands of lines a second, and journald's per-service limit (10,000
//! lines per 30 s by default) then dropped everything from the unit,
//! other clients' PR OUT audit records included. The bound keeps the
//! helper's whole warning output far below that limit whatever clients do;
//! the first line after a held-back stretch says how many were held back,
//! and the total is logged at exit.

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::{debug, warn};

use crate::protocol::Violation;
use crate::server::peer::Peer;
use crate::server::ratelimit::Burst;

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

/// Connection-end warnings logged per peer uid in one [`WINDOW`].
pub const PER_UID_BURST: u32 = 20;
/// Connection-end warnings logged in all in one [`WINDOW`]: at most 300 per
/// 30 s, 3 % of journald's default per-service limit.
pub const ALL_BURST: u32 = 100;
/// The window of both bounds.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Peer uids tracked at once; a uid beyond them (only after 1,024 distinct
/// uids ended connections abnormally within one window) is held back.
const MAX_UIDS: usize = 1024;

/// Which connection-end warnings may be logged (see the module
/// documentation).
#[derive(Debug)]
pub struct EndLog {
    per_uid: BTreeMap<u32, Burst>,
    all: Burst,
    total_held_back: u64,
}

impl EndLog {
    /// Nothing logged yet.
    pub const fn new() -> Self {
        EndLog {
            per_uid: BTreeMap::new(),
            all: Burst::new(WINDOW, ALL_BURST),
            total_held_back: 0,
        }
    }

    /// At `now`, for a connection of `uid`: `Some(warnings about this uid's
    /// connections held back since its last one)` if this one may be
    /// logged.
    pub fn allow(&mut self, uid: u32, now: Instant) -> Option<u64> {
        if self.per_uid.len() >= MAX_UIDS && !self.per_uid.contains_key(&uid) {
            self.per_uid.retain(|_, b| !b.expired_at(now));
            if self.per_uid.len() >= MAX_UIDS {
                self.total_held_back += 1;
                return None;
            }
        }
        let mine = self
            .per_uid
            .entry(uid)
            .or_insert_with(|| Burst::new(WINDOW, PER_UID_BURST));
        let Some(untold) = mine.allow_at(now) else {
            self.total_held_back += 1;
            return None;
        };
        if self.all.allow_at(now).is_none() {
            // This line and the untold count stay with the uid for its next
            // line.
            mine.held_back(1 + untold);
            self.total_held_back += 1;
            return None;
        }
        Some(untold)
    }

    /// Warnings held back since start-up.
    pub fn total_held_back(&self) -> u64 {
        self.total_held_back
    }
}

impl Default for EndLog {
    fn default() -> Self {
        EndLog::new()
    }
}

/// The helper's one [`EndLog`].
static END_LOG: Mutex<EndLog> = Mutex::new(EndLog::new());

/// Logs how a connection ended, at the level its cause deserves, within
/// the bounds of the module documentation.
pub fn log_end(peer: &Peer, end: &End) {
    if let End::Closed | End::Shutdown = end {
        debug!("{peer}: {end}");
        return;
    }
    let allowed = END_LOG
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .allow(peer.uid, Instant::now());
    let Some(untold) = allowed else {
        return;
    };
    let more = if untold > 0 {
        format!(
            " ({untold} earlier warnings about connections of uid {} not logged: at most \
             {PER_UID_BURST} per uid and {ALL_BURST} in all per {WINDOW:?})",
            peer.uid
        )
    } else {
        String::new()
    };
    match end {
        End::Internal(_) => tracing::error!("{peer}: {end}{more}"),
        _ => warn!("{peer}: {end}{more}"),
    }
}

/// At exit: how many connection-end warnings the bounds held back, if any.
pub fn log_held_back() {
    let n = END_LOG
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .total_held_back();
    if n > 0 {
        warn!(
            "{n} warnings about ended connections were not logged (at most {PER_UID_BURST} \
             per peer uid and {ALL_BURST} in all per {WINDOW:?})"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_warnings_are_bounded_per_uid_and_in_all() {
        let t0 = Instant::now();
        let mut log = EndLog::new();
        let burst = PER_UID_BURST as usize;
        // One uid: its burst, then nothing until the window ends.
        let first: Vec<_> = (0..1000).map(|_| log.allow(107, t0)).collect();
        assert!(first[..burst].iter().all(|a| *a == Some(0)));
        assert!(first[burst..].iter().all(Option::is_none));
        // Another uid is not held back by the first one's flood.
        assert_eq!(log.allow(0, t0), Some(0));
        // Next window: the first line tells what was held back.
        let t1 = t0 + WINDOW;
        assert_eq!(log.allow(107, t1), Some(1000 - burst as u64));
        assert_eq!(log.total_held_back(), 1000 - burst as u64);
        // Many uids: at most ALL_BURST lines per window in all, and what
        // the total bound held back is still told per uid later.
        let t2 = t1 + WINDOW;
        let logged = (0..500u32)
            .filter(|uid| log.allow(1000 + uid, t2).is_some())
            .count();
        assert_eq!(logged, ALL_BURST as usize);
        assert_eq!(log.allow(1000 + 499, t2 + WINDOW), Some(1));
        // Distinct uids beyond MAX_UIDS in one window are held back, not
        // tracked without bound.
        let t3 = t2 + 3 * WINDOW;
        for uid in 0..(MAX_UIDS as u32 + 100) {
            let _ = log.allow(100_000 + uid, t3);
        }
        assert!(log.per_uid.len() <= MAX_UIDS);
    }
}
