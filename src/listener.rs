//! Creating the listening socket at a path (spec §8.3, decision D11).
//!
//! Differences from the reference, all deliberate: an existing path is
//! removed only if it is a socket nobody listens on (a stale socket from a
//! helper that died); a regular file, a directory or a live socket is an error.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use thiserror::Error;

pub use crate::config::MAX_SOCKET_PATH;

/// Listen backlog. The reference uses 1, which makes simultaneous connects
/// (many QEMUs starting at once) wait in connect(); a larger queue only
/// lets them complete sooner.
pub const BACKLOG: i32 = 128;

/// Why the socket could not be created.
#[derive(Debug, Error)]
pub enum ListenerError {
    /// The path does not fit in `sun_path`.
    #[error("UNIX socket path '{0}' is too long\nPath must be less than 108 bytes")]
    PathTooLong(String),
    /// Something that is not a socket is in the way (D11).
    #[error("Failed to bind socket to {path}: it already exists and is {kind}, not a socket; refusing to remove it")]
    NotASocket {
        /// The socket path.
        path: String,
        /// What is there instead.
        kind: &'static str,
    },
    /// A live process is listening on the path.
    #[error("Failed to bind socket to {0}: another process is listening on it")]
    InUse(String),
    /// Inspecting or removing a stale socket failed.
    #[error("Failed to unlink socket {0}: {1}")]
    Unlink(String, io::Error),
    /// socket() failed.
    #[error("Failed to create Unix socket: {0}")]
    Create(io::Error),
    /// bind() failed.
    #[error("Failed to bind socket to {0}: {1}")]
    Bind(String, io::Error),
    /// listen() failed.
    #[error("Failed to listen on socket: {0}")]
    Listen(io::Error),
}

/// A listening socket bound to a path this process created.
#[derive(Debug)]
pub struct BoundSocket {
    /// The listening socket (non-blocking, close-on-exec).
    pub listener: UnixListener,
    /// The path to unlink at shutdown.
    pub path: PathBuf,
}

/// Binds and listens on `path`, replacing a stale socket (D11).
pub fn bind(path: &Path) -> Result<BoundSocket, ListenerError> {
    let shown = path.display().to_string();
    let addr = UnixAddr::new(path).map_err(|_| ListenerError::PathTooLong(shown.clone()))?;
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(ListenerError::PathTooLong(shown));
    }
    remove_stale(path)?;
    let fd: OwnedFd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| ListenerError::Create(e.into()))?;
    socket::bind(fd.as_raw_fd(), &addr)
        .map_err(|e| ListenerError::Bind(shown.clone(), e.into()))?;
    let backlog = socket::Backlog::new(BACKLOG).unwrap_or(socket::Backlog::MAXCONN);
    if let Err(e) = socket::listen(&fd, backlog) {
        let _ = std::fs::remove_file(path);
        return Err(ListenerError::Listen(e.into()));
    }
    Ok(BoundSocket {
        listener: UnixListener::from(fd),
        path: path.to_path_buf(),
    })
}

/// Applies the configured socket mode and group to a socket this process
/// created (the reference leaves both to the umask and the start-up user).
pub fn set_owner_and_mode(path: &Path, config: &crate::config::Config) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(mode) = config.socket_mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode.0))
            .map_err(|e| format!("cannot set mode {mode} on socket {}: {e}", path.display()))?;
    }
    if let Some(group) = &config.socket_group {
        let gid = crate::privileges::resolve_group(group)?;
        nix::unistd::chown(path, None, Some(gid)).map_err(|e| {
            format!(
                "cannot give socket {} to group {group}: {e}",
                path.display()
            )
        })?;
    }
    Ok(())
}

/// Removes `path` if it is a socket no process listens on; succeeds if
/// nothing is there.
fn remove_stale(path: &Path) -> Result<(), ListenerError> {
    let shown = || path.display().to_string();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ListenerError::Unlink(shown(), e)),
    };
    let ft = meta.file_type();
    if !ft.is_socket() {
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_symlink() {
            "a symbolic link"
        } else if ft.is_file() {
            "a regular file"
        } else if ft.is_fifo() {
            "a FIFO"
        } else {
            "a device node"
        };
        return Err(ListenerError::NotASocket {
            path: shown(),
            kind,
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ListenerError::InUse(shown())),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            std::fs::remove_file(path).map_err(|e| ListenerError::Unlink(shown(), e))
        }
        Err(e) => Err(ListenerError::Unlink(shown(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pr-helper-listener-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn stale_socket_replaced_live_socket_and_files_refused() {
        let dir = tmpdir("stale");
        let path = dir.join("s.sock");
        let first = bind(&path).unwrap();
        // Live: refused.
        assert!(matches!(bind(&path), Err(ListenerError::InUse(_))));
        // Stale (listener closed, path left behind): replaced.
        drop(first);
        assert!(path.exists());
        let second = bind(&path).unwrap();
        drop(second);

        let file = dir.join("file");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(matches!(
            bind(&file),
            Err(ListenerError::NotASocket {
                kind: "a regular file",
                ..
            })
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        assert!(matches!(
            bind(&dir),
            Err(ListenerError::NotASocket {
                kind: "a directory",
                ..
            })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn path_length_limit() {
        let long = format!("/tmp/{}", "x".repeat(MAX_SOCKET_PATH));
        assert!(matches!(
            bind(Path::new(&long)),
            Err(ListenerError::PathTooLong(_))
        ));
        let missing_dir = Path::new("/nonexistent-pr-helper-dir/s.sock");
        assert!(matches!(bind(missing_dir), Err(ListenerError::Bind(..))));
    }
}
