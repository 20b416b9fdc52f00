//! Executing one persistent-reservation command: the read-only check, the
//! SG_IO call and the reply the client gets (spec §4).
//!
//! [`execute`] blocks for as long as the device takes (up to the SG_IO
//! timeout); the connection code runs it on the bounded blocking pool.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use crate::connection::Responder;
use crate::device;
use crate::protocol::{Direction, Request, Response, MAX_TRANSFER};
use crate::scsi::sgio::{self, DataPhase};
use crate::scsi::{self, Completion, SenseCode};
use crate::server::RateLimited;

/// Settings that shape command execution.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// SG_IO timeout (D4).
    pub sgio_timeout: Duration,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            sgio_timeout: Duration::from_secs(30),
        }
    }
}

/// Executes requests: SG_IO on the calling (pool) thread, or, for
/// dm-multipath devices in an `mpath` build, on the multipath worker.
#[derive(Debug, Clone, Default)]
pub struct Executor {
    /// SG_IO settings.
    pub config: ExecConfig,
    /// Multipath support, when compiled in and enabled.
    #[cfg(feature = "mpath")]
    pub multipath: Option<crate::mpath::Multipath>,
}

impl Executor {
    /// An executor for SG_IO only (multipath is added by start-up when
    /// compiled in and enabled).
    pub fn new(config: ExecConfig) -> Self {
        Executor {
            config,
            #[cfg(feature = "mpath")]
            multipath: None,
        }
    }

    /// Runs `request` and sends its response through `responder`. Blocks
    /// (call it on the SG_IO pool), except for multipath devices, whose
    /// requests are queued to the multipath worker.
    pub fn run(&self, request: Request<OwnedFd>, responder: Responder) {
        match self.run_here(request) {
            Ran::Answered(request, response) => responder.send(request, response),
            #[cfg(feature = "mpath")]
            Ran::Multipath(request, multipath) => multipath.submit(request, responder),
        }
    }

    /// Runs `request` on the calling thread (it blocks for as long as the
    /// device takes), unless it is for a dm-multipath device: that request
    /// is returned untouched, to be queued to the multipath worker.
    ///
    /// Order: a PR OUT on a read-only fd is refused first (spec §4.1, as
    /// the reference); then the fd itself is checked ([`device::check`]:
    /// O_PATH, partitions, partial dm targets; D27, D28), for SG_IO and
    /// multipath alike; then multipath detection. READ FULL STATUS on a
    /// multipath map is answered here with SG_IO on the map, which dm
    /// forwards to a path (D14), not through libmpathpersist.
    pub fn run_here(&self, request: Request<OwnedFd>) -> Ran {
        if !(request.direction == Direction::Out && is_read_only(&request.fd)) {
            if let Err(refused) = device::check(request.fd.as_fd()) {
                log_refusal(&refused);
                let response = response(refused.completion(), Vec::new());
                return Ran::Answered(request, response);
            }
            #[cfg(feature = "mpath")]
            if let Some(multipath) = &self.multipath {
                match multipath.detect(&request.fd) {
                    Ok(false) => {}
                    Ok(true) if is_read_full_status(&request) => {}
                    Ok(true) => return Ran::Multipath(request, multipath.clone()),
                    Err(e) => {
                        // D6: the reference exits; only this request fails.
                        tracing::warn!("multipath detection failed: {e}");
                        let response = response(
                            Completion::check_condition(SenseCode::LUN_COMM_FAILURE),
                            Vec::new(),
                        );
                        return Ran::Answered(request, response);
                    }
                }
            }
        }
        let response = execute(&request, &self.config);
        Ran::Answered(request, response)
    }
}

/// READ FULL STATUS exactly (the whole CDB byte 1, as the multipath
/// worker compares it: reserved bits set go to the worker, which refuses).
#[cfg(feature = "mpath")]
fn is_read_full_status(request: &Request<OwnedFd>) -> bool {
    request.direction == Direction::In && request.cdb[1] == crate::pr::sa_in::READ_FULL_STATUS
}

/// Refusals are logged at warning level, at most one line every 10 s (a
/// client could send thousands a second).
fn log_refusal(refused: &device::Refused) {
    static LIMIT: std::sync::Mutex<Option<RateLimited>> = std::sync::Mutex::new(None);
    let mut limit = LIMIT.lock().unwrap_or_else(|e| e.into_inner());
    let limit = limit.get_or_insert_with(|| RateLimited::new(Duration::from_secs(10)));
    if let Some(suppressed) = limit.allow() {
        if suppressed > 0 {
            tracing::warn!(
                "refused a persistent-reservation command: {refused} ({suppressed} more refusals not logged)"
            );
        } else {
            tracing::warn!("refused a persistent-reservation command: {refused}");
        }
    }
}

/// What [`Executor::run_here`] did with a request.
pub enum Ran {
    /// Executed: the request (its fd still open) and its response.
    Answered(Request<OwnedFd>, Response),
    /// For a dm-multipath device: not executed; the multipath worker's.
    #[cfg(feature = "mpath")]
    Multipath(Request<OwnedFd>, crate::mpath::Multipath),
}

/// Runs `request` with SG_IO and builds the response (which the caller sends).
pub fn execute(request: &Request<OwnedFd>, config: &ExecConfig) -> Response {
    match request.direction {
        Direction::In => persistent_reserve_in(request, config),
        Direction::Out => persistent_reserve_out(request, config),
    }
}

/// True when the fd was opened read-only. PR OUT changes device state, and
/// with CAP_SYS_RAWIO the kernel would not stop it on a read-only fd, so the
/// helper refuses it itself (spec §4.1). If F_GETFL fails the reference lets
/// the command through, and so do we.
pub fn is_read_only(fd: &OwnedFd) -> bool {
    fcntl(fd, FcntlArg::F_GETFL)
        .map(|flags| OFlag::from_bits_truncate(flags) & OFlag::O_ACCMODE == OFlag::O_RDONLY)
        .unwrap_or(false)
}

fn persistent_reserve_in(request: &Request<OwnedFd>, config: &ExecConfig) -> Response {
    // Like the reference, ask the kernel for up to the full 8192 bytes; the
    // device itself honours the allocation length in the CDB, and what the
    // client receives is truncated to it below.
    let mut buf = vec![0u8; MAX_TRANSFER];
    let outcome = sgio::execute(
        request.fd.as_fd(),
        &request.cdb,
        DataPhase::FromDevice(&mut buf),
        config.sgio_timeout,
    );
    let completion = scsi::complete(outcome, buf.len());
    buf.truncate(completion.transferred.min(request.transfer_len));
    response(completion, buf)
}

fn persistent_reserve_out(request: &Request<OwnedFd>, config: &ExecConfig) -> Response {
    if is_read_only(&request.fd) {
        return response(
            Completion::check_condition(SenseCode::INVALID_OPCODE),
            Vec::new(),
        );
    }
    let outcome = sgio::execute(
        request.fd.as_fd(),
        &request.cdb,
        DataPhase::ToDevice(&request.params),
        config.sgio_timeout,
    );
    response(scsi::complete(outcome, request.params.len()), Vec::new())
}

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
