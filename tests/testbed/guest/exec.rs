//! Running one SCSI command three ways: through pr-helper, through Debian's
//! qemu-pr-helper (both over the helper protocol, exactly as QEMU sends it),
//! and directly on the device with sg3-utils (`sg_raw`), the independent
//! truth. Plus `sg_persist` for decoded state checks.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pr_helper::client::Client;

/// Socket of pr-helper in the guest.
pub const OURS_SOCKET: &str = "/run/pr-helper.sock";
/// Socket of qemu-pr-helper in the guest.
pub const REFERENCE_SOCKET: &str = "/run/qemu-pr-helper.sock";

/// Which way a command goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Through pr-helper.
    Ours,
    /// Through Debian's qemu-pr-helper 10.0.2.
    Reference,
    /// Directly with sg_raw.
    Direct,
}

impl Via {
    /// Short name for result lines.
    pub fn name(self) -> &'static str {
        match self {
            Via::Ours => "pr-helper",
            Via::Reference => "qemu-pr-helper",
            Via::Direct => "sg_raw",
        }
    }

    /// The socket of the helper this goes through (none for sg_raw).
    pub fn socket(self) -> Option<&'static str> {
        match self {
            Via::Ours => Some(OURS_SOCKET),
            Via::Reference => Some(REFERENCE_SOCKET),
            Via::Direct => None,
        }
    }
}

/// What a command returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// SCSI status.
    pub status: u8,
    /// Sense bytes (96 from a helper; as many as the device gave from sg_raw).
    pub sense: Vec<u8>,
    /// Data in.
    pub data: Vec<u8>,
}

impl Outcome {
    /// Sense key/ASC/ASCQ when the status is CHECK CONDITION.
    pub fn sense_code(&self) -> Option<(u8, u8, u8)> {
        (self.status == 2)
            .then(|| pr_helper::scsi::SenseCode::parse(&self.sense))
            .flatten()
            .map(|s| (s.key, s.asc, s.ascq))
    }

    /// One line for failure reports.
    pub fn show(&self) -> String {
        let sense_len = self
            .sense
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |i| i + 1);
        format!(
            "status={:#04x} sense[{}]={} data[{}]={}",
            self.status,
            sense_len,
            hex(&self.sense[..sense_len]),
            self.data.len(),
            hex(&self.data[..self.data.len().min(48)])
        )
    }
}

/// Hex without separators.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs a command. `read_only` opens the device O_RDONLY (helpers only).
pub fn run(
    via: Via,
    device: &Path,
    cdb: &[u8; 16],
    params: &[u8],
    read_only: bool,
) -> Result<Outcome, String> {
    match via.socket() {
        Some(socket) => run_socket(socket, device, cdb, params, read_only),
        None => sg_raw(device, cdb, params),
    }
}

/// Opens `device` read-write, or read-only, as QEMU would for the disk.
pub fn open(device: &Path, read_only: bool) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(device)
        .map_err(|e| format!("open {}: {e}", device.display()))
}

/// A command through the helper listening on `socket`.
pub fn run_socket(
    socket: &str,
    device: &Path,
    cdb: &[u8; 16],
    params: &[u8],
    read_only: bool,
) -> Result<Outcome, String> {
    let dev = open(device, read_only)?;
    with_fd(socket, dev.as_fd(), cdb, params)
}

/// A command through the helper listening on `socket`, on a device the
/// caller opened (and may keep open across events such as its removal).
pub fn with_fd(
    socket: &str,
    dev: BorrowedFd<'_>,
    cdb: &[u8; 16],
    params: &[u8],
) -> Result<Outcome, String> {
    with_fd_timeout(socket, dev, cdb, params, Duration::from_secs(60))
        .map_err(|e| format!("{socket}: {e}"))
}

/// [`with_fd`] with a timeout for each read and write of the exchange
/// (expired: an error of kind `WouldBlock`).
pub fn with_fd_timeout(
    socket: &str,
    dev: BorrowedFd<'_>,
    cdb: &[u8; 16],
    params: &[u8],
    timeout: Duration,
) -> std::io::Result<Outcome> {
    let mut client = connect(socket).map_err(std::io::Error::other)?;
    client.set_timeout(Some(timeout))?;
    let reply = client.execute(cdb, dev, params)?;
    Ok(Outcome {
        status: reply.header.status as u8,
        sense: reply.header.sense.to_vec(),
        data: reply.data,
    })
}

/// Connects, retrying for up to 10 s while the listen queue is full:
/// qemu-pr-helper listens with a backlog of 1, so a burst of clients (the
/// isolation suite starts several at once) can find it full, and the guest
/// kernel has been seen to fail such a connect with EAGAIN.
fn connect(socket: &str) -> Result<Client, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(Path::new(socket)) {
            Ok(c) => return Ok(c),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(format!("connect {socket}: {e}")),
        }
    }
}

fn scratch(name: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/{name}.{}", std::process::id()))
}

/// The command through `sg_raw -v` (CDB length from the opcode, like sg_persist).
fn sg_raw(device: &Path, cdb: &[u8; 16], params: &[u8]) -> Result<Outcome, String> {
    let mut cmd = Command::new("sg_raw");
    cmd.arg("-v");
    let out_file = scratch("sg_raw_out");
    let _ = std::fs::remove_file(&out_file);
    let len = u16::from_be_bytes([cdb[7], cdb[8]]);
    if cdb[0] == 0x5e {
        cmd.arg("-r")
            .arg(len.max(1).to_string())
            .arg("-o")
            .arg(&out_file);
    } else if !params.is_empty() {
        let in_file = scratch("sg_raw_in");
        std::fs::write(&in_file, params).map_err(|e| e.to_string())?;
        cmd.arg("-s")
            .arg(params.len().to_string())
            .arg("-i")
            .arg(&in_file);
    }
    cmd.arg(device);
    for b in &cdb[..usize::from(pr_helper::scsi::cdb_len(cdb[0]))] {
        cmd.arg(format!("{b:02x}"));
    }
    let out = cmd.output().map_err(|e| format!("sg_raw: {e}"))?;
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let status_text = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("SCSI Status: "))
        .ok_or_else(|| format!("sg_raw printed no status:\n{text}"))?
        .trim()
        .to_string();
    let status = match status_text.as_str() {
        "Good" => 0x00,
        "Check Condition" => 0x02,
        "Condition Met" => 0x04,
        "Busy" => 0x08,
        "Reservation Conflict" => 0x18,
        "Task set Full" | "Task Set Full" => 0x28,
        "ACA Active" => 0x30,
        "Task Aborted" => 0x40,
        other => return Err(format!("sg_raw status {other:?}:\n{text}")),
    };
    let mut sense = Vec::new();
    let mut lines = text.lines();
    if lines.any(|l| l.contains("Raw sense data")) {
        for l in lines {
            let l = l.trim();
            if l.is_empty() || !l.chars().all(|c| c.is_ascii_hexdigit() || c == ' ') {
                break;
            }
            sense.extend(
                l.split_whitespace()
                    .filter_map(|b| u8::from_str_radix(b, 16).ok()),
            );
        }
    }
    let data = if status == 0 && cdb[0] == 0x5e {
        std::fs::read(&out_file).unwrap_or_default()
    } else {
        Vec::new()
    };
    Ok(Outcome {
        status,
        sense,
        data,
    })
}

/// PR IN data as sg_persist reports it (`-n -i -k|-r -H`), rebuilt into the
/// wire form (generation, additional length, descriptor bytes).
pub fn sg_persist_in(device: &Path, flag: &str) -> Result<Vec<u8>, String> {
    let out = Command::new("sg_persist")
        .args(["-n", "-i", flag, "-H"])
        .arg(device)
        .output()
        .map_err(|e| format!("sg_persist: {e}"))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "sg_persist {flag} failed ({:?}): {text}",
            out.status.code()
        ));
    }
    let mut generation = None;
    let mut additional = None;
    let mut bytes = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("PR generation=0x") {
            let (gen, tail) = rest.split_once(',').unwrap_or((rest, ""));
            generation = u32::from_str_radix(gen.trim(), 16).ok();
            if let Some(len) = tail.trim().strip_prefix("Additional length=") {
                additional = len.trim().parse::<u32>().ok();
            } else {
                additional = Some(0);
            }
        } else if line.starts_with(' ') && line.len() > 8 {
            // " 00     00 00 ..." (offset, then up to 16 hex bytes, then maybe ASCII)
            let mut words = line.split_whitespace();
            let offset_ok = words
                .next()
                .is_some_and(|w| w.chars().all(|c| c.is_ascii_hexdigit()));
            if offset_ok {
                bytes.extend(
                    words
                        .take(16)
                        .take_while(|w| w.len() == 2)
                        .filter_map(|w| u8::from_str_radix(w, 16).ok()),
                );
            }
        }
    }
    let generation =
        generation.ok_or_else(|| format!("no PR generation in sg_persist output:\n{text}"))?;
    let additional = additional.unwrap_or(0);
    let mut data = generation.to_be_bytes().to_vec();
    data.extend_from_slice(&additional.to_be_bytes());
    data.extend_from_slice(&bytes);
    Ok(data)
}
