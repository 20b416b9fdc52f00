//! multipathd's socket, authenticated: pr-helper's own `mpath_connect()`.
//!
//! libmpathpersist tells multipathd which maps hold registrations
//! (`setprstatus`, `setprkey`, `setprhold` and their `get`/`unset` forms;
//! multipathd then registers the key on paths that come back). It connects
//! through libmpathcmd's `mpath_connect()`. From multipath-tools 0.12 that
//! tries the pathname socket `/run/multipathd.socket` first, then the
//! abstract `@/org/kernel/linux/storage/multipathd` (0.9 knows only the
//! abstract one); from 0.15, `MULTIPATH_SOCKET_NAME` names the one socket
//! to use instead.
//!
//! Nothing in libmpathcmd checks who listens there. In KubeVirt's pod the
//! pathname socket is a link into the shared directory, where virt-handler
//! bind-mounts the host's socket; that directory belongs to QEMU's uid 107.
//! While the host's socket is not mounted (multipathd stopped or
//! restarting), a compromised QEMU can put its own socket there and would
//! receive every map's key and answer in multipathd's place.
//!
//! So pr-helper defines `mpath_connect` itself and build.rs exports it from
//! the binary's dynamic symbol table. The dynamic linker looks a symbol up
//! in the executable before the libraries, so libmpathpersist's call (it
//! asks for `mpath_connect@LIBMPATHCMD_1.0.0`; an unversioned definition in
//! the executable satisfies it, as an LD_PRELOAD shim's does) comes here.
//! This connects to the same sockets in the same order, and keeps a
//! connection only when its peer runs as uid 0 (SO_PEERCRED, read after
//! `connect`, so swapping the file between a check and the call does not
//! help): multipathd runs as root everywhere. A socket whose listener is
//! not root is closed, logged and skipped, as if nothing listened there.
//!
//! D34 in README's deviations. `tests/mpath.rs` checks the binding (the
//! helper's `mpath_connect` is the one libmpathpersist 0.9.4 and 0.15.1
//! get) and the refusal; the VM test bed's multipath boot runs every flow
//! through it, and its pod test plants a uid-107 socket.

// Unsafe code: the exported C entry point and its socket calls.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use libc::c_int;

/// multipath-tools' pathname socket (0.12 on).
const PATHNAME: &str = "/run/multipathd.socket";
/// multipathd's abstract socket (every version), without its leading NUL.
const ABSTRACT: &str = "@/org/kernel/linux/storage/multipathd";
/// The variable libmpathcmd 0.15 reads for the one socket to use.
const ENV: &str = "MULTIPATH_SOCKET_NAME";

/// Why a socket was not used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing listens there (or the name is not usable).
    #[error("cannot connect to {name}: {source}")]
    Connect {
        /// The socket's name (`@` for an abstract one).
        name: String,
        /// What connect(2) or getsockopt(2) said.
        source: io::Error,
    },
    /// Something listens there, but not as root: not multipathd.
    #[error(
        "{name} is served by uid {uid}, not root: not multipathd, so pr-helper does not use it"
    )]
    NotRoot {
        /// The socket's name.
        name: String,
        /// The listener's uid (SO_PEERCRED).
        uid: u32,
    },
}

impl ConnectError {
    fn errno(&self) -> c_int {
        match self {
            ConnectError::Connect { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            ConnectError::NotRoot { .. } => libc::EACCES,
        }
    }
}

/// The socket names to try, in libmpathcmd's order: the one
/// `MULTIPATH_SOCKET_NAME` names, else the pathname socket and then the
/// abstract one. A name starting with `@` is abstract.
pub fn names() -> Vec<String> {
    names_for(std::env::var(ENV).ok())
}

/// [`names`] for a given value of `MULTIPATH_SOCKET_NAME`.
pub fn names_for(variable: Option<String>) -> Vec<String> {
    match variable {
        Some(name) if !name.is_empty() => vec![name],
        _ => vec![PATHNAME.to_string(), ABSTRACT.to_string()],
    }
}

/// Connects to multipathd: the first of [`names`] that accepts a
/// connection from a root listener. On failure, the error of the first
/// name whose listener was not root (that says more than a later name's
/// ENOENT), else the last error.
pub fn connect_multipathd() -> Result<OwnedFd, ConnectError> {
    let mut refused = None;
    let mut last = None;
    for name in names() {
        match connect_name(&name) {
            Ok(fd) => return Ok(fd),
            Err(e @ ConnectError::NotRoot { .. }) => {
                tracing::warn!("{e}");
                refused.get_or_insert(e);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(refused.or(last).unwrap_or_else(|| ConnectError::Connect {
        name: String::new(),
        source: io::Error::from_raw_os_error(libc::ENOENT),
    }))
}

/// One name: connect, then the peer must be root.
pub fn connect_name(name: &str) -> Result<OwnedFd, ConnectError> {
    let failed = |source: io::Error| ConnectError::Connect {
        name: name.to_string(),
        source,
    };
    let (addr, len) = sockaddr(name).map_err(failed)?;
    // SAFETY: a plain socket(2) call; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(failed(io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `addr` is an initialised sockaddr_un and `len` is within it.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc < 0 {
        return Err(failed(io::Error::last_os_error()));
    }
    let uid = peer_uid(&fd).map_err(failed)?;
    if uid != 0 {
        return Err(ConnectError::NotRoot {
            name: name.to_string(),
            uid,
        });
    }
    Ok(fd)
}

/// The uid of a connected Unix socket's peer.
fn peer_uid(fd: &OwnedFd) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a ucred and `len` its size; the kernel writes at
    // most `len` bytes into it.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// The address of `name` (abstract when it starts with `@`, as
/// libmpathcmd's names do) and its length.
fn sockaddr(name: &str) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = std::ffi::OsStr::new(name).as_bytes();
    let (path, offset) = match bytes.strip_prefix(b"@") {
        Some(rest) => (rest, 1),
        None => (bytes, 0),
    };
    // A pathname needs room for its NUL; an abstract name does not.
    let room = addr.sun_path.len() - offset - usize::from(offset == 0);
    if path.is_empty() || path.len() > room || path.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (dst, src) in addr.sun_path[offset..].iter_mut().zip(path) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + offset + path.len();
    Ok((addr, len as libc::socklen_t))
}

/// libmpathcmd's `int mpath_connect(void)`, exported from the binary so
/// that libmpathpersist calls this one (see the module's documentation):
/// a descriptor connected to multipathd, or -1 with `errno` set.
#[no_mangle]
pub extern "C" fn mpath_connect() -> c_int {
    // A panic must not unwind into C: treat it as a failure.
    match std::panic::catch_unwind(connect_multipathd) {
        Ok(Ok(fd)) => fd.into_raw_fd(),
        Ok(Err(e)) => {
            tracing::debug!("mpath_connect: {e}");
            set_errno(e.errno());
            -1
        }
        Err(_) => {
            set_errno(libc::EIO);
            -1
        }
    }
}

fn set_errno(errno: c_int) {
    nix::errno::Errno::set_raw(errno);
}

/// Keeps the exported function in the binary: nothing in Rust calls it,
/// and link-time optimisation drops what nothing uses.
#[used]
static KEEP: extern "C" fn() -> c_int = mpath_connect;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pathname_and_abstract_addresses() {
        let (a, len) = sockaddr("/run/multipathd.socket").unwrap();
        assert_eq!(len as usize, 2 + "/run/multipathd.socket".len());
        assert_eq!(a.sun_path[0] as u8, b'/');
        let (a, len) = sockaddr(ABSTRACT).unwrap();
        assert_eq!(len as usize, 2 + ABSTRACT.len());
        assert_eq!(a.sun_path[0], 0);
        assert_eq!(a.sun_path[1] as u8, b'/');
        assert!(sockaddr("").is_err());
        assert!(sockaddr("@").is_err());
        assert!(sockaddr(&"x".repeat(108)).is_err());
        assert!(sockaddr(&"x".repeat(107)).is_ok());
        assert!(sockaddr(&format!("@{}", "x".repeat(107))).is_ok());
    }

    #[test]
    fn names_in_libmpathcmd_order() {
        assert_eq!(names_for(None), [PATHNAME, ABSTRACT]);
        assert_eq!(names_for(Some(String::new())), [PATHNAME, ABSTRACT]);
        assert_eq!(names_for(Some("/x/m.sock".into())), ["/x/m.sock"]);
    }
}
