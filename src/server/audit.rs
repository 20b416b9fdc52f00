//! The audit trail: one record per PERSISTENT RESERVE OUT, at info level on
//! the `pr_helper::audit` target, with structured fields, so an operator
//! can answer "who preempted node B's key at 03:12" from the journal:
//!
//! `journalctl SYSLOG_IDENTIFIER=pr-helper PRH_SERVICE_ACTION=PREEMPT`
//!
//! Reservation keys are identifiers chosen by cluster software (often
//! derived from a node name), not secrets; they are logged in full.

use std::os::fd::OwnedFd;

use tracing::info;

use crate::protocol::{Request, Response};
use crate::scsi::{self, SenseCode};
use crate::server::peer::Peer;

/// Name of a PR OUT service action.
pub fn service_action_name(sa: u8) -> &'static str {
    match sa {
        0 => "REGISTER",
        1 => "RESERVE",
        2 => "RELEASE",
        3 => "CLEAR",
        4 => "PREEMPT",
        5 => "PREEMPT AND ABORT",
        6 => "REGISTER AND IGNORE EXISTING KEY",
        7 => "REGISTER AND MOVE",
        8 => "REPLACE LOST RESERVATION",
        _ => "unknown",
    }
}

/// The device's major:minor and, for SCSI devices, its WWID from sysfs.
pub fn device_identity(fd: &OwnedFd) -> (String, String) {
    let Ok(st) = nix::sys::stat::fstat(fd) else {
        return ("?".into(), String::new());
    };
    let (major, minor) = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFBLK => "block",
        libc::S_IFCHR => "char",
        _ => return (format!("{major}:{minor}"), String::new()),
    };
    let wwid = std::fs::read_to_string(format!("/sys/dev/{kind}/{major}:{minor}/device/wwid"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    (format!("{major}:{minor}"), wwid)
}

fn key(params: &[u8], at: usize) -> String {
    params
        .get(at..at + 8)
        .map(|k| {
            format!(
                "0x{:016x}",
                u64::from_be_bytes(k.try_into().unwrap_or([0; 8]))
            )
        })
        .unwrap_or_default()
}

/// Logs the audit record for an executed PR OUT.
pub fn record(peer: &Peer, request: &Request<OwnedFd>, response: &Response) {
    if !tracing::enabled!(target: "pr_helper::audit", tracing::Level::INFO) {
        return;
    }
    let (device, wwid) = device_identity(&request.fd);
    let sa = service_action_name(request.service_action());
    let sense = (response.status == scsi::status::CHECK_CONDITION)
        .then(|| SenseCode::parse(&response.sense))
        .flatten();
    let outcome = match sense {
        Some(code) => format!("{} {code}", scsi::status::name(response.status)),
        None => scsi::status::name(response.status).to_string(),
    };
    let (k, sak) = (key(&request.params, 0), key(&request.params, 8));
    // Escaped: the client chose it.
    let comm = peer.comm();
    info!(
        target: "pr_helper::audit",
        peer_pid = peer.pid.unwrap_or(-1),
        peer_uid = peer.uid,
        peer_gid = peer.gid,
        peer_comm = comm,
        device = %device,
        device_wwid = %wwid,
        service_action = sa,
        scope = request.cdb[2] >> 4,
        pr_type = request.cdb[2] & 0x0f,
        key = %k,
        sa_key = %sak,
        status = format_args!("{:#04x}", response.status),
        sense = %sense.map(|s| s.to_string()).unwrap_or_default(),
        "PR OUT {sa} from pid {} ({}, uid {}) on {device}{}{wwid}: key {k}, service action key {sak}, type {}: {outcome}",
        peer.pid.unwrap_or(-1),
        comm,
        peer.uid,
        if wwid.is_empty() { "" } else { " " },
        request.cdb[2] & 0x0f,
    );
}
