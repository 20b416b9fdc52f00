//! systemd integration: socket activation (spec §8.4) and readiness
//! notification (sd_notify).
//!
//! Both are hand-written rather than taken from the `sd-notify` crate
//! (0.5), whose API does not fit either case; see [`listen_fds`] and
//! [`notify`] for why.

// Unsafe code: adopting fd 3 from systemd (fcntl, OwnedFd::from_raw_fd).
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener};

use thiserror::Error;

/// The first fd systemd passes.
pub const SD_LISTEN_FDS_START: i32 = 3;

/// Socket-activation errors (all fatal at start-up).
#[derive(Debug, Error)]
pub enum ActivationError {
    /// `-k` (or a configured socket path) together with activation.
    #[error("Unix socket can't be set when using socket activation")]
    SocketPathGiven,
    /// LISTEN_FDS > 1.
    #[error("pr-helper does not support socket activation with LISTEN_FDS > 1")]
    TooManyFds,
    /// fd 3 is unusable.
    #[error("Socket activation failed: invalid file descriptor fd = {fd}: {err}")]
    BadFd {
        /// The fd number.
        fd: i32,
        /// What failed.
        err: nix::Error,
    },
    /// fd 3 could not be inspected.
    #[error("Failed to use socket activation: {0}")]
    NotUsable(nix::Error),
    /// fd 3 is not a Unix socket.
    #[error("Failed to use socket activation: fd 3 is not a Unix socket")]
    NotUnix,
    /// fd 3 is not a listening stream socket.
    #[error(
        "Failed to use socket activation: fd 3 is not a listening stream socket \
         (use ListenStream= with Accept=no)"
    )]
    NotListening,
    /// fd 3 could not be made non-blocking.
    #[error("Failed to use socket activation: {0}")]
    NonBlocking(std::io::Error),
}

/// How many fds systemd passed us: `Some(n)` if LISTEN_PID is our pid and
/// LISTEN_FDS parses; the variables are then removed from the environment.
///
/// Not `sd_notify::listen_fds`: that function treats an unparsable
/// LISTEN_PID as an error where the reference (and this function) ignores
/// activation, and it sets close-on-exec on every passed fd before the
/// caller can apply the reference's `-k` and `LISTEN_FDS > 1` checks, so an
/// unusable fd would be reported first, as a bare `io::Error` without the
/// fd number the reference's message names (see [`adopt`]).
pub fn listen_fds() -> Option<u32> {
    let pid = std::env::var("LISTEN_PID").ok()?.parse::<u32>().ok()?;
    if pid != std::process::id() {
        return None;
    }
    let n = std::env::var("LISTEN_FDS").ok()?.parse::<u32>().ok()?;
    // Single-threaded at this point, so changing the environment is safe.
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDNAMES");
    Some(n)
}

/// Adopts the activated socket, applying the reference's rules: `-k` and
/// more than one fd are errors. `socket_path_given`: the socket path was set
/// explicitly (in any configuration layer).
pub fn adopt(n: u32, socket_path_given: bool) -> Result<UnixListener, ActivationError> {
    if socket_path_given {
        return Err(ActivationError::SocketPathGiven);
    }
    if n > 1 {
        return Err(ActivationError::TooManyFds);
    }
    let fd = SD_LISTEN_FDS_START;
    // SAFETY: F_GETFD only queries the descriptor table; on a closed fd it
    // fails with EBADF and touches nothing.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(ActivationError::BadFd {
            fd,
            err: nix::Error::last(),
        });
    }
    // SAFETY: fd 3 is open (checked above) and systemd passed it to this
    // process (LISTEN_PID matched) for us to own; nothing else has taken it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|err| ActivationError::BadFd { fd, err })?;
    use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, SockaddrStorage};
    let addr: SockaddrStorage =
        getsockname(std::os::fd::AsRawFd::as_raw_fd(&owned)).map_err(ActivationError::NotUsable)?;
    if addr.as_unix_addr().is_none() {
        return Err(ActivationError::NotUnix);
    }
    let ty = getsockopt(&owned, sockopt::SockType).map_err(ActivationError::NotUsable)?;
    let listening = getsockopt(&owned, sockopt::AcceptConn).map_err(ActivationError::NotUsable)?;
    if ty != SockType::Stream || !listening {
        return Err(ActivationError::NotListening);
    }
    let listener = UnixListener::from(owned);
    listener
        .set_nonblocking(true)
        .map_err(ActivationError::NonBlocking)?;
    Ok(listener)
}

/// Sends a state string to the service manager if NOTIFY_SOCKET is set;
/// silently does nothing otherwise.
///
/// Not `sd_notify::notify`: that function connect()s its datagram socket,
/// and `STOPPING=1` is sent under the seccomp filter, whose plain profile
/// has no `connect` (one sendto() here needs nothing more than serving
/// does); it also does not support an abstract-namespace NOTIFY_SOCKET
/// (`@name`), and it ends every state with a newline.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        tracing::warn!(target: "pr_helper::process::activation", "sd_notify {state:?} failed: {e}");
    }
}
