//! Who is on the other end of a connection: its credentials from
//! SO_PEERCRED and its command name, read and escaped once at accept time.

use std::fmt;

use tokio::net::UnixStream;

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
    /// The peer's command name (/proc/PID/comm, at most 16 bytes read),
    /// escaped once for logs when the peer is made (see [`Peer::comm`]).
    comm: [u8; COMM_ESCAPED],
    comm_len: u8,
}

/// Room for an escaped command name: 16 bytes, each at most 4 once escaped
/// (`\xNN`).
const COMM_ESCAPED: usize = 16 * 4;

impl Peer {
    /// Credentials of the process at the other end of `stream`.
    pub fn of(id: u64, stream: &UnixStream) -> Self {
        let (pid, uid, gid) = match stream.peer_cred() {
            Ok(cred) => (cred.pid(), cred.uid(), cred.gid()),
            // Only possible if the socket is already dead; log what we know.
            Err(_) => (None, u32::MAX, u32::MAX),
        };
        let mut comm = [0u8; COMM_ESCAPED];
        let mut comm_len = 0;
        if let Some(name) = pid.and_then(|p| std::fs::read(format!("/proc/{p}/comm")).ok()) {
            let name = name.strip_suffix(b"\n").unwrap_or(&name);
            let escaped = escape(&name[..name.len().min(16)]);
            let n = escaped.len().min(COMM_ESCAPED);
            comm[..n].copy_from_slice(&escaped.as_bytes()[..n]);
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
    /// ([`escape`]): the client chooses it (prctl, a write
    /// to /proc/self/comm, the name of the file it executed), so it may
    /// hold newlines, terminal escapes or any other byte. Escaped once, when
    /// the peer is made, not on every log line.
    pub fn comm(&self) -> &str {
        // Escaped text is ASCII.
        std::str::from_utf8(&self.comm[..usize::from(self.comm_len)]).unwrap_or("")
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

/// `bytes` as log text: printable ASCII as is, the backslash as `\\`, every
/// other byte as `\xNN`. For text a client chooses (its command name), so
/// that it cannot end the log line and forge the next one, send terminal
/// escape sequences to whoever reads the log, or hide behind Unicode
/// direction overrides; whatever it is, the result is one line of ASCII that
/// says exactly which bytes were there.
pub fn escape(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_keeps_printable_ascii_only() {
        assert_eq!(escape(b"qemu-system-x86"), "qemu-system-x86");
        assert_eq!(escape(b"x\nFAKE: y"), "x\\x0aFAKE: y");
        assert_eq!(escape(b"\x1b[31mred\r"), "\\x1b[31mred\\x0d");
        assert_eq!(escape(b"a\\x0ab"), "a\\\\x0ab");
        // U+202E RIGHT-TO-LEFT OVERRIDE, invalid UTF-8, NUL, DEL.
        assert_eq!(escape("\u{202e}".as_bytes()), "\\xe2\\x80\\xae");
        assert_eq!(escape(&[0xff, 0, 0x7f]), "\\xff\\x00\\x7f");
        assert_eq!(escape(b""), "");
    }
}
