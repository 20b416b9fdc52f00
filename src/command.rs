//! Executing one persistent-reservation command: the read-only check, the
//! SG_IO call and the reply the client gets (spec §4).
//!
//! [`execute`] blocks for as long as the device takes (up to the SG_IO
//! timeout); the connection code runs it on the bounded blocking pool.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use crate::protocol::{Direction, Request, Response, MAX_TRANSFER};
use crate::scsi::sgio::{self, DataPhase};
use crate::scsi::{self, Completion, SenseCode};

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

/// Runs `request` and builds the response (which the caller sends).
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
fn response(completion: Completion, mut data: Vec<u8>) -> Response {
    if completion.status != scsi::status::GOOD {
        data.clear();
    }
    Response {
        status: completion.status,
        sense: completion.sense,
        data,
    }
}
