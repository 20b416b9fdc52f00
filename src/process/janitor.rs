//! The janitor: removes the socket and the pidfile pr-helper created, from
//! a small process of its own, so that the helper itself holds no right to
//! remove any file (issue 22, item 5).
//!
//! Landlock grants removal per directory tree, never per file: the socket's
//! directory with the default path is all of /run, where a helper allowed
//! to remove its socket could remove every other service's sockets and
//! pidfiles too. So the helper forks the janitor before it sandboxes
//! itself; the janitor drops every capability, restricts itself with
//! Landlock to removing files in the directories of the socket and the
//! pidfile (no reading, writing or creating anything), and waits on a
//! socket pair. The helper sends `S` when it stops accepting (the socket
//! goes first, as in the reference) and `E` at exit (what is left goes);
//! the janitor answers each with one byte once done, so the files are gone
//! when the helper's exit status is known. If the helper dies without a
//! word (SIGKILL), the pair's end of file does the same. Every removal
//! checks that the path is still the file pr-helper made (D30).
//!
//! The janitor acts only on what it was given at fork time; a byte from
//! the helper can ask it to remove nothing else. It ignores the
//! terminating signals a service manager or `podman stop` sends to the
//! whole group, so that it is still there when the helper asks.

// Unsafe code: fork(2) while single-threaded, and sigaction.
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use nix::unistd::ForkResult;
use thiserror::Error;

use crate::process::daemon::Pidfile;
use crate::process::sandbox;
use crate::server::listener::{self, FileId};

/// How long the helper waits for the janitor's answer before it goes on
/// without it (the janitor only stats and unlinks).
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// Why the janitor could not be started (a start-up error).
#[derive(Debug, Error)]
pub enum JanitorError {
    /// socketpair or fork failed.
    #[error("cannot start the process that removes the socket and pidfile at exit: {0}")]
    Start(nix::Error),
}

/// The helper's end: tells the janitor when to remove what.
#[derive(Debug)]
pub struct Janitor {
    link: UnixStream,
    socket_removed: bool,
}

impl Janitor {
    /// Forks the janitor, which from now on owns the removal of `socket`
    /// (path and identity, as created) and `pidfile`. `listener` is closed
    /// in the janitor (it must not keep the socket alive). Returns None
    /// when there is nothing to remove. Must be called single-threaded,
    /// before the helper's sandbox.
    pub fn start(
        socket: Option<(PathBuf, FileId)>,
        pidfile: Option<&Pidfile>,
        listener: RawFd,
        landlock: bool,
    ) -> Result<Option<Janitor>, JanitorError> {
        if socket.is_none() && pidfile.is_none() {
            return Ok(None);
        }
        let (ours, theirs) = UnixStream::pair().map_err(|e| {
            JanitorError::Start(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        })?;
        // Set here, before the sandbox: seccomp allows no setsockopt later.
        let _ = ours.set_read_timeout(Some(ANSWER_WITHIN));
        let _ = ours.set_write_timeout(Some(ANSWER_WITHIN));
        // SAFETY: called before any thread exists (start-up runs it before
        // the sandbox, the runtime and the SG_IO pool), so the child is a
        // complete copy of a single-threaded process.
        match unsafe { nix::unistd::fork() }.map_err(JanitorError::Start)? {
            ForkResult::Parent { .. } => {
                drop(theirs);
                Ok(Some(Janitor {
                    link: ours,
                    socket_removed: socket.is_none(),
                }))
            }
            ForkResult::Child => {
                drop(ours);
                // The listening socket must die with the helper's copy.
                let _ = nix::unistd::close(listener);
                janitor(theirs, socket, pidfile, landlock);
            }
        }
    }

    /// The helper stops accepting: remove the socket now.
    pub fn remove_socket(&mut self) {
        if !self.socket_removed {
            self.socket_removed = true;
            self.ask(b'S');
        }
    }

    /// Sends `what` and waits (bounded) for the answer.
    fn ask(&mut self, what: u8) {
        let mut answer = [0u8; 1];
        if self.link.write_all(&[what]).is_err() || self.link.read_exact(&mut answer).is_err() {
            tracing::warn!("the socket and pidfile may be left behind: the janitor did not answer");
        }
    }
}

impl Drop for Janitor {
    /// At exit: whatever is left goes.
    fn drop(&mut self) {
        self.ask(b'E');
    }
}

/// The janitor process: never returns.
fn janitor(
    link: UnixStream,
    socket: Option<(PathBuf, FileId)>,
    pidfile: Option<&Pidfile>,
    landlock: bool,
) -> ! {
    let _ = nix::sys::prctl::set_name(c"prh-janitor");
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGHUP,
        nix::sys::signal::Signal::SIGPIPE,
    ] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigIgn) };
    }
    for set in [
        caps::CapSet::Ambient,
        caps::CapSet::Inheritable,
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
    ] {
        let _ = caps::clear(None, set);
    }
    let dirs: Vec<PathBuf> = socket
        .iter()
        .map(|(p, _)| p.as_path())
        .chain(pidfile.map(Pidfile::path))
        .filter_map(|p| p.parent().map(PathBuf::from))
        .collect();
    // As the helper's own: off only when the operator turned Landlock off.
    if landlock {
        if let Err(e) = sandbox::landlock::restrict_to_removal(&dirs) {
            tracing::warn!("janitor: cannot apply Landlock: {e}");
        }
    }
    let mut socket = socket;
    let mut pidfile = pidfile;
    let mut link = link;
    let mut byte = [0u8; 1];
    loop {
        let what = match link.read(&mut byte) {
            Ok(1) => byte[0],
            // End of file: the helper is gone.
            Ok(_) => b'E',
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => b'E',
        };
        if let Some((path, id)) = socket.take() {
            listener::remove_if_ours(&path, id);
        }
        if what == b'E' {
            if let Some(p) = pidfile.take() {
                p.remove_if_ours();
            }
            let _ = link.write_all(b"k");
            // SAFETY: _exit(2) ends this process without running the
            // helper's exit handlers, which belong to the helper.
            unsafe { libc::_exit(0) }
        }
        let _ = link.write_all(b"k");
    }
}
