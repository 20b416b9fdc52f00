//! Creating the listening socket at a path (spec §8.3, decisions D11, D30,
//! D31).
//!
//! Differences from the reference, all deliberate:
//!
//! * an existing path is replaced only if it is a socket nobody listens on
//!   (a stale socket from a helper that died); a regular file, a directory
//!   or a live socket is an error (D11). The liveness probe is a
//!   non-blocking connect, so a socket whose owner never accepts (stopped,
//!   or with a full queue) is reported as live at once instead of hanging
//!   start-up;
//! * the socket is bound in a private directory (mode 0700) created next to
//!   the path, given its mode and group there, and renamed into place
//!   (D31): it never appears at the path with another mode or group, and no
//!   symbolic link or other writer of the directory can redirect the chmod
//!   or chown. A stale socket is replaced by that rename, atomically;
//! * the device and inode of the socket are recorded, so that at exit the
//!   path is removed only while it is still this socket (D30).

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::sys::stat::{FchmodatFlags, Mode};
use nix::unistd::{Gid, UnlinkatFlags};
use thiserror::Error;

use crate::protocol::MAX_SOCKET_PATH;

/// Listen backlog. The reference uses 1, which makes simultaneous connects
/// (many QEMUs starting at once) wait in connect(); a larger queue only
/// lets them complete sooner.
pub const BACKLOG: i32 = 128;

/// The socket's name inside the private directory.
const PRIVATE_NAME: &str = "s";

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
    /// A live process is listening on the path (it accepted the probe, or
    /// its queue is full).
    #[error("Failed to bind socket to {0}: another process is listening on it")]
    InUse(String),
    /// Inspecting or removing a stale socket failed.
    #[error("Failed to unlink socket {0}: {1}")]
    Unlink(String, io::Error),
    /// socket() failed.
    #[error("Failed to create Unix socket: {0}")]
    Create(io::Error),
    /// bind() failed, or the private directory could not be made.
    #[error("Failed to bind socket to {0}: {1}")]
    Bind(String, io::Error),
    /// listen() failed.
    #[error("Failed to listen on socket: {0}")]
    Listen(io::Error),
    /// The configured mode could not be applied.
    #[error("cannot set mode {mode:04o} on the socket: {err}")]
    Mode {
        /// The configured mode.
        mode: u32,
        /// What failed.
        err: nix::Error,
    },
    /// The configured group could not be applied.
    #[error("cannot give the socket to group {name}: {err}")]
    Group {
        /// The group as configured.
        name: String,
        /// What failed.
        err: nix::Error,
    },
}

/// A file's identity: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// A listening socket bound to a path this process created.
#[derive(Debug)]
pub struct BoundSocket {
    /// The listening socket (non-blocking, close-on-exec).
    pub listener: UnixListener,
    /// The path it is bound to.
    pub path: PathBuf,
    /// The socket file's identity, to recognise it at exit (D30).
    pub id: FileId,
}

/// Mode and group for the socket pr-helper creates (the reference leaves
/// both to the umask and the start-up user).
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// Permission bits.
    pub mode: Option<u32>,
    /// Group, with the name it was given as.
    pub group: Option<(String, Gid)>,
}

/// Binds and listens on `path` with the default mode and group, replacing
/// a stale socket (D11).
#[cfg(test)]
pub fn bind(path: &Path) -> Result<BoundSocket, ListenerError> {
    bind_with(path, &Setup::default())
}

/// Binds and listens on `path`, replacing a stale socket (D11); the socket
/// appears at `path` with `setup` already applied (D31).
pub fn bind_with(path: &Path, setup: &Setup) -> Result<BoundSocket, ListenerError> {
    let shown = path.display().to_string();
    if UnixAddr::new(path).is_err() || path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(ListenerError::PathTooLong(shown));
    }
    let (parent, name) = match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => (
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            },
            n,
        ),
        _ => return Err(ListenerError::Bind(shown, Errno::EINVAL.into())),
    };
    // What is there now decides whether the rename may replace it.
    let mut existing = check_existing(path)?;
    let parent_fd = nix::fcntl::open(
        parent,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ListenerError::Bind(shown.clone(), e.into()))?;
    let private = PrivateDir::create(parent, &parent_fd)
        .map_err(|e| ListenerError::Bind(shown.clone(), e))?;
    let (listener, id) = private.bind(setup)?;
    // Into place: where nothing is, without replacing anything that
    // appeared meanwhile; or exchanged with the stale socket, which is then
    // checked to be the one probed (else exchanged back and checked again).
    // What was displaced ends up in the private directory, removed with it.
    let rename = |flags| {
        crate::sys::fs::renameat2(
            private.fd.as_fd(),
            PRIVATE_NAME.as_ref(),
            parent_fd.as_fd(),
            name,
            flags,
        )
    };
    let mut attempts = 0;
    loop {
        let renamed = match existing {
            None => rename(libc::RENAME_NOREPLACE),
            Some(stale) => match rename(libc::RENAME_EXCHANGE) {
                Ok(()) => {
                    let displaced = nix::sys::stat::fstatat(
                        private.fd.as_fd(),
                        PRIVATE_NAME,
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    );
                    match displaced {
                        Ok(st) if st.st_dev == stale.dev && st.st_ino == stale.ino => Ok(()),
                        _ => match rename(libc::RENAME_EXCHANGE) {
                            Ok(()) => Err(Errno::EEXIST),
                            Err(e) => Err(e),
                        },
                    }
                }
                // A file system without RENAME_EXCHANGE: a plain rename,
                // right after checking again.
                Err(Errno::EINVAL) => {
                    if check_existing(path)? == Some(stale) {
                        rename(0)
                    } else {
                        Err(Errno::EEXIST)
                    }
                }
                Err(e) => Err(e),
            },
        };
        match renamed {
            Ok(()) => break,
            // A file system without RENAME_NOREPLACE: checked just before.
            Err(Errno::EINVAL) if existing.is_none() => {
                if check_existing(path)?.is_some() {
                    return Err(ListenerError::Bind(shown, Errno::EEXIST.into()));
                }
                rename(0).map_err(|e| ListenerError::Bind(shown.clone(), e.into()))?;
                break;
            }
            // The path changed since the check: check again.
            Err(Errno::EEXIST | Errno::ENOENT) if attempts < 3 => {}
            Err(e) => return Err(ListenerError::Bind(shown, e.into())),
        }
        attempts += 1;
        existing = check_existing(path)?;
    }
    drop(private);
    Ok(BoundSocket {
        listener,
        path: path.to_path_buf(),
        id,
    })
}

/// Checks `path` before binding: None if nothing is there, the identity of
/// a stale socket (which may be replaced), or why it must not be replaced.
fn check_existing(path: &Path) -> Result<Option<FileId>, ListenerError> {
    let shown = || path.display().to_string();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
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
    // Non-blocking: a listener whose queue is full (its owner stopped, or
    // never accepting) answers EAGAIN at once instead of blocking.
    let probe = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| ListenerError::Create(e.into()))?;
    let addr = UnixAddr::new(path).map_err(|_| ListenerError::PathTooLong(shown()))?;
    match socket::connect(probe.as_raw_fd(), &addr) {
        Ok(()) | Err(Errno::EAGAIN) | Err(Errno::EINPROGRESS) => Err(ListenerError::InUse(shown())),
        Err(Errno::ECONNREFUSED) => {
            // Stale, unless it changed between the two looks.
            match std::fs::symlink_metadata(path) {
                Ok(again) if FileId::of(&again) == FileId::of(&meta) => Ok(Some(FileId::of(&meta))),
                Ok(_) => Err(ListenerError::InUse(shown())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(ListenerError::Unlink(shown(), e)),
            }
        }
        Err(e) => Err(ListenerError::Unlink(shown(), e.into())),
    }
}

/// A directory of our own (mode 0700) next to the socket path, where the
/// socket is bound and set up before it is renamed into place. Removed,
/// with whatever is left in it, when dropped.
struct PrivateDir {
    fd: OwnedFd,
    /// The directory holding it, and its name there.
    parent: OwnedFd,
    name: OsString,
    /// A path to the socket inside it that fits in `sun_path`.
    socket_path: PathBuf,
}

impl PrivateDir {
    fn create(parent: &Path, parent_fd: &OwnedFd) -> io::Result<PrivateDir> {
        let template = parent.join(".pr-helper-XXXXXX");
        let made = nix::unistd::mkdtemp(&template)?;
        let name = made
            .file_name()
            .map(|n| n.to_os_string())
            .ok_or(io::ErrorKind::InvalidInput)?;
        let parent = parent_fd.try_clone()?;
        // Opened through the directory fd, without following a link: if a
        // writer of the directory swapped it, the checks below fail.
        let opened = nix::fcntl::openat(
            parent.as_fd(),
            name.as_os_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        );
        let fd = match opened {
            Ok(fd) => fd,
            Err(e) => {
                let _ = nix::unistd::unlinkat(&parent, name.as_os_str(), UnlinkatFlags::RemoveDir);
                return Err(e.into());
            }
        };
        let mut dir = PrivateDir {
            fd,
            parent,
            name,
            socket_path: PathBuf::new(),
        };
        let st = nix::sys::stat::fstat(&dir.fd)?;
        if st.st_uid != nix::unistd::geteuid().as_raw() || st.st_mode & 0o777 != 0o700 {
            return Err(io::Error::other(
                "the private directory for the socket was replaced",
            ));
        }
        // Bound at its path when that fits in `sun_path` (`ss -x` then
        // shows where it was made); else through /proc/self/fd of the
        // directory opened. Should a writer of the parent swap the
        // directory meanwhile, the socket lands outside the one opened and
        // the chmod/chown/rename through `fd` below fail: start-up stops.
        let plain = made.join(PRIVATE_NAME);
        let socket_path = if plain.as_os_str().len() <= MAX_SOCKET_PATH {
            plain
        } else {
            PathBuf::from(format!("/proc/self/fd/{}", dir.fd.as_raw_fd())).join(PRIVATE_NAME)
        };
        dir.socket_path = socket_path;
        Ok(dir)
    }

    /// A listening socket bound in the directory, with `setup` applied.
    fn bind(&self, setup: &Setup) -> Result<(UnixListener, FileId), ListenerError> {
        let shown = || self.socket_path.display().to_string();
        let addr =
            UnixAddr::new(&self.socket_path).map_err(|_| ListenerError::PathTooLong(shown()))?;
        let fd: OwnedFd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| ListenerError::Create(e.into()))?;
        socket::bind(fd.as_raw_fd(), &addr).map_err(|e| ListenerError::Bind(shown(), e.into()))?;
        let backlog = socket::Backlog::new(BACKLOG).unwrap_or(socket::Backlog::MAXCONN);
        socket::listen(&fd, backlog).map_err(|e| ListenerError::Listen(e.into()))?;
        if let Some(mode) = setup.mode {
            nix::sys::stat::fchmodat(
                self.fd.as_fd(),
                PRIVATE_NAME,
                Mode::from_bits_truncate(mode),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(|err| ListenerError::Mode { mode, err })?;
        }
        if let Some((name, gid)) = &setup.group {
            nix::unistd::fchownat(
                self.fd.as_fd(),
                PRIVATE_NAME,
                None,
                Some(*gid),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|err| ListenerError::Group {
                name: name.clone(),
                err,
            })?;
        }
        let st =
            nix::sys::stat::fstatat(self.fd.as_fd(), PRIVATE_NAME, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| ListenerError::Bind(shown(), e.into()))?;
        let id = FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        };
        Ok((UnixListener::from(fd), id))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        // The socket is still here unless it was renamed into place.
        let _ = nix::unistd::unlinkat(&self.fd, PRIVATE_NAME, UnlinkatFlags::NoRemoveDir);
        if let Err(e) = nix::unistd::unlinkat(
            &self.parent,
            self.name.as_os_str(),
            UnlinkatFlags::RemoveDir,
        ) {
            tracing::warn!(
                "cannot remove the temporary directory {}: {e}",
                Path::new(&self.name).display()
            );
        }
    }
}

/// Removes the socket at `path` at exit, only while it is still the socket
/// this process bound (D30): a path replaced since (another helper's socket,
/// a file put there) is left alone. Never fails the exit.
pub fn remove_if_ours(path: &Path, id: FileId) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() && FileId::of(&meta) == id => {
            // Failing to remove it must not stop the exit (a known KubeVirt
            // problem of the C helper): D11 replaces a stale socket next time.
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!("cannot remove socket {}: {e}", path.display());
            }
        }
        Ok(_) => tracing::warn!(
            "not removing {}: it is no longer the socket pr-helper created",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot remove socket {}: {e}", path.display()),
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
        let stale = std::fs::symlink_metadata(&path).unwrap().ino();
        let second = bind_with(
            &path,
            &Setup {
                mode: Some(0o640),
                group: None,
            },
        )
        .unwrap();
        // Replaced by the new socket, with its mode; the private directory
        // it was bound in is gone.
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_ne!(meta.ino(), stale);
        assert_eq!(FileId::of(&meta), second.id);
        assert_eq!(meta.mode() & 0o7777, 0o640);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["s.sock"]);
        // Removed at exit while it is ours; left alone once replaced.
        remove_if_ours(&path, second.id);
        assert!(!path.exists());
        std::fs::write(&path, b"other").unwrap();
        remove_if_ours(&path, second.id);
        assert_eq!(std::fs::read(&path).unwrap(), b"other");
        std::fs::remove_file(&path).unwrap();
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
