//! `-d` and the pidfile (spec §8.6, §8.7, decision D12).
//!
//! Daemonizing forks while the process is still single-threaded. The parent
//! waits on a pipe: the child reports success only once the socket and the
//! pidfile exist and privileges are dropped, and reports any error message
//! instead; the parent prints it and exits 1, or exits 0. So `pr-helper -d`
//! returning 0 means the helper is ready, and a failure is never silent.

// Unsafe code: fork(2) while single-threaded.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::ForkResult;
use thiserror::Error;

/// Daemon and pidfile errors.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// fork/pipe/setsid failed.
    #[error("Failed to daemonize: {0}")]
    Daemonize(nix::Error),
    /// The pidfile could not be created or written.
    #[error("Could not create pid file {0}: {1}")]
    Create(String, std::io::Error),
    /// Another process holds the pidfile's lock.
    #[error("Cannot lock pid file {path}: {err}{}", held_by(*.holder))]
    Locked {
        /// The pidfile.
        path: String,
        /// The lock error.
        err: nix::Error,
        /// The pid the pidfile names, when it holds one.
        holder: Option<u32>,
    },
}

/// " (held by pid N)" when the holder is known.
fn held_by(holder: Option<u32>) -> String {
    holder
        .map(|pid| format!(" (held by pid {pid})"))
        .unwrap_or_default()
}

/// The child's end of the readiness pipe.
#[derive(Debug)]
pub struct Daemon {
    report: File,
}

/// Forks into the background. Returns in the child only; the parent waits
/// for the child's report and exits. Must be called single-threaded.
pub fn daemonize() -> Result<Daemon, DaemonError> {
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(DaemonError::Daemonize)?;
    // SAFETY: pr-helper calls this before starting any thread (the runtime
    // and the SG_IO pool come later), so the child is a complete copy of a
    // single-threaded process and may do anything.
    match unsafe { nix::unistd::fork() }.map_err(DaemonError::Daemonize)? {
        ForkResult::Parent { .. } => {
            drop(write_end);
            std::process::exit(wait_for_child(read_end));
        }
        ForkResult::Child => {
            drop(read_end);
            nix::unistd::setsid().map_err(DaemonError::Daemonize)?;
            nix::unistd::chdir("/").map_err(DaemonError::Daemonize)?;
            Ok(Daemon {
                report: File::from(write_end),
            })
        }
    }
}

/// The parent: 0 if the child reported readiness, 1 (after printing the
/// child's message) otherwise.
fn wait_for_child(read_end: OwnedFd) -> i32 {
    let mut report = Vec::new();
    let _ = File::from(read_end).read_to_end(&mut report);
    match report.split_first() {
        Some((0, _)) => 0,
        Some(_) => {
            eprint!("{}", String::from_utf8_lossy(&report));
            1
        }
        None => {
            eprintln!("pr-helper: the background process exited during start-up");
            1
        }
    }
}

impl Daemon {
    /// Start-up succeeded: detach from the terminal and release the parent
    /// with exit status 0.
    pub fn ready(mut self) {
        if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
            let _ = nix::unistd::dup2_stdin(&null);
            let _ = nix::unistd::dup2_stdout(&null);
            let _ = nix::unistd::dup2_stderr(&null);
        }
        let _ = self.report.write_all(&[0]);
    }

    /// Start-up failed: the parent prints `message` and exits 1.
    pub fn fail(mut self, message: &str) {
        let _ = self
            .report
            .write_all(format!("pr-helper: {message}\n").as_bytes());
    }
}

/// A pidfile holding our pid, locked for the life of the process.
#[derive(Debug)]
pub struct Pidfile {
    path: PathBuf,
    file: File,
    /// Whether the janitor removes it at exit ([`Pidfile::hand_over`]);
    /// until then, dropping it removes it (a start-up error must not leave
    /// a pidfile behind).
    handed_over: bool,
}

impl Pidfile {
    /// Creates (or takes over) `path`: takes a write lock on it, which fails
    /// if another live process holds it, and writes our pid.
    pub fn create(path: &Path) -> Result<Pidfile, DaemonError> {
        let shown = path.display().to_string();
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
                .map_err(|e| DaemonError::Create(shown.clone(), e))?;
            let lock = libc::flock {
                l_type: libc::F_WRLCK as libc::c_short,
                l_whence: libc::SEEK_SET as libc::c_short,
                l_start: 0,
                l_len: 0,
                l_pid: 0,
            };
            if let Err(err) = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETLK(&lock)) {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(DaemonError::Locked {
                    path: shown,
                    err,
                    holder: text.trim().parse().ok(),
                });
            }
            // The file may have been unlinked or replaced between open and
            // lock (by an exiting instance): lock the file that is there.
            let ours = file
                .metadata()
                .map_err(|e| DaemonError::Create(shown.clone(), e))?;
            match std::fs::metadata(path) {
                Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => {}
                _ => continue,
            }
            file.set_len(0)
                .map_err(|e| DaemonError::Create(shown.clone(), e))?;
            if let Err(e) = file.write_all(format!("{}\n", std::process::id()).as_bytes()) {
                let _ = std::fs::remove_file(path);
                return Err(DaemonError::Create(shown, e));
            }
            return Ok(Pidfile {
                path: path.to_path_buf(),
                file,
                handed_over: false,
            });
        }
    }

    /// The pidfile's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The janitor removes the pidfile from now on (the sandbox that
    /// follows gives the helper no right to): dropping it only releases
    /// the lock.
    pub fn hand_over(&mut self) {
        self.handed_over = true;
    }

    /// Removes the pidfile if the path is still this file (the janitor
    /// calls it on its copy, [`crate::process::janitor`]). If the directory
    /// is no longer writable (privileges were dropped), empties it instead,
    /// so no stale pid is left behind.
    pub fn remove_if_ours(&self) {
        let ours = self.file.metadata().ok();
        let still_ours = match (ours, std::fs::metadata(&self.path)) {
            (Some(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        if !still_ours {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::info!(
                target: "pr_helper::process::daemon",
                "cannot remove pid file {}: {e}; emptying it instead",
                self.path.display()
            );
            let _ = self.file.set_len(0);
        }
    }
}

impl Drop for Pidfile {
    /// A start-up error before the janitor took over: remove the pidfile
    /// (still single-threaded and before the sandbox, so removal is
    /// allowed).
    fn drop(&mut self) {
        if !self.handed_over {
            self.remove_if_ours();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfile_written_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.pid");
        let p = Pidfile::create(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        p.remove_if_ours();
        drop(p);
        assert!(!path.exists());
        // A stale pidfile (no lock held) is taken over.
        std::fs::write(&path, "999999\n").unwrap();
        let p = Pidfile::create(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(p);
    }
}
