//! Shared test support: start a helper (ours or the reference), talk to it,
//! watch its file descriptors, stop it.
#![allow(dead_code)]

pub mod fakedev;
pub mod fds;
pub mod procfs;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use pr_helper::client::{self, Client, Reply};
use pr_helper::protocol::RESPONSE_HEADER_SIZE;

/// Removes from `cmd`'s environment what would configure the helper
/// behind the test's back: PR_HELPER_* settings, systemd's LISTEN_* and
/// NOTIFY_SOCKET.
pub fn without_helper_environment(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("PR_HELPER_") || k.starts_with("LISTEN_") || k == "NOTIFY_SOCKET" {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A temporary directory every user may write to (for a helper or client
/// that runs as another user).
pub fn shared_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    dir
}

/// Path of the reference helper (Debian bookworm-backports 10.0.2).
pub const REFERENCE_HELPER: &str = "/usr/bin/qemu-pr-helper";

/// Our binary, built by cargo for the integration tests (see [`runnable`]).
pub fn our_binary() -> PathBuf {
    runnable(PathBuf::from(env!("CARGO_BIN_EXE_pr-helper")))
}

/// Our binary as a helper serving `socket` (`-k SOCKET`), for the tests
/// that add their own options or environment.
pub fn our_helper_command(socket: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(our_binary());
    cmd.arg("-k").arg(socket);
    cmd
}

/// `bin` itself, or, when the tests run under user-mode emulation
/// (`PRH_TEST_RUNNER`, e.g. `qemu-aarch64-static`: tests/run's aarch64
/// step), a script that runs `bin` through the emulator with seccomp and
/// Landlock off. The test binary
/// is started by cargo's runner, but the programs it starts itself (the
/// helper, a re-run of the test binary) are foreign ELF files the host
/// kernel cannot execute without binfmt_misc.
pub fn runnable(bin: PathBuf) -> PathBuf {
    static SCRIPTS: std::sync::Mutex<Vec<(PathBuf, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let runner = match std::env::var("PRH_TEST_RUNNER") {
        Ok(r) if !r.is_empty() => r,
        _ => return bin,
    };
    let mut scripts = SCRIPTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, script)) = scripts.iter().find(|(b, _)| *b == bin) {
        return script.clone();
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("runner");
    std::fs::create_dir_all(&dir).expect("runner script directory");
    let name = bin.file_name().expect("binary name").to_owned();
    let script = dir.join(&name);
    // qemu-user implements neither seccomp(2) nor Landlock: the helper
    // runs without both there (set here, not in the caller's environment,
    // because systemd-socket-activate starts it with a clean one).
    let content = format!(
        "#!/bin/sh\nexport PR_HELPER_SECCOMP=\"${{PR_HELPER_SECCOMP:-false}}\" \
         PR_HELPER_LANDLOCK=\"${{PR_HELPER_LANDLOCK:-false}}\"\nexec '{runner}' '{}' \"$@\"\n",
        bin.display()
    );
    // Written once per process, and only when missing or different: a
    // file open for writing cannot be executed (ETXTBSY), and a child
    // forked by another test thread meanwhile would hold it open. Written
    // under a unique name, then renamed: nobody sees a partial script.
    if std::fs::read_to_string(&script).ok().as_deref() != Some(content.as_str()) {
        let tmp = dir.join(format!("{}.{}", name.to_string_lossy(), std::process::id()));
        std::fs::write(&tmp, &content).expect("runner script");
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("runner script mode");
        std::fs::rename(&tmp, &script).expect("runner script rename");
    }
    scripts.push((bin, script.clone()));
    script
}

/// The reference binary; fails the test with a clear message when missing.
pub fn reference_binary() -> PathBuf {
    let path = PathBuf::from(REFERENCE_HELPER);
    assert!(
        path.exists(),
        "{REFERENCE_HELPER} is missing: install qemu-system-common from bookworm-backports \
         (the README's test command does this)"
    );
    path
}

/// Which helper to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// pr-helper, from this tree.
    Ours,
    /// Debian's qemu-pr-helper.
    Reference,
}

/// A running helper in its own scratch directory.
pub struct Helper {
    pub which: Which,
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    stderr_path: PathBuf,
}

impl Helper {
    /// Starts pr-helper with `-k <dir>/helper.sock` plus `args`.
    pub fn ours(args: &[&str]) -> Helper {
        Self::start(Which::Ours, args)
    }

    /// Starts the reference helper with `-k <dir>/helper.sock` plus `args`.
    pub fn reference(args: &[&str]) -> Helper {
        Self::start(Which::Reference, args)
    }

    pub fn start(which: Which, args: &[&str]) -> Helper {
        let dir = tempfile::Builder::new()
            .prefix("prh-test")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("helper.sock");
        let mut cmd = Command::new(match which {
            Which::Ours => our_binary(),
            Which::Reference => reference_binary(),
        });
        cmd.arg("-k").arg(&socket).args(args);
        Self::spawn(which, cmd, dir, socket)
    }

    /// Runs `cmd` (which must make the helper listen on `socket`).
    pub fn spawn(
        which: Which,
        mut cmd: Command,
        dir: tempfile::TempDir,
        socket: PathBuf,
    ) -> Helper {
        let stderr_path = dir.path().join("stderr.log");
        let stderr = File::create(&stderr_path).expect("stderr file");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd.spawn().expect("spawn helper");
        let helper = Helper {
            which,
            child: Some(child),
            dir,
            socket,
            stderr_path,
        };
        helper.wait_ready();
        helper
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.socket.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!(
            "{:?} helper did not create {} within 10 s; stderr:\n{}",
            self.which,
            self.socket.display(),
            self.stderr()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// A raw connection (no handshake), retried while the helper is between
    /// bind() and listen().
    pub fn raw(&self) -> UnixStream {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match UnixStream::connect(&self.socket) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    return s;
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("connect {}: {e}", self.socket.display()),
            }
        }
    }

    /// A handshaken client (with a 10 s I/O timeout so a hang fails the test).
    pub fn client(&self) -> Client {
        let c = Client::handshake(self.raw()).expect("handshake");
        c.set_timeout(Some(Duration::from_secs(10))).unwrap();
        c
    }

    /// Number of open fds of the helper process.
    pub fn fd_count(&self) -> usize {
        fds::count(self.pid())
    }

    /// The fd count once it has been stable for 200 ms (connections that
    /// were just dropped take a moment to be closed by the helper).
    pub fn idle_fd_count(&self) -> usize {
        let mut last = self.fd_count();
        let mut stable_since = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(5);
        while stable_since.elapsed() < Duration::from_millis(200) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.fd_count();
            if now != last {
                last = now;
                stable_since = Instant::now();
            }
        }
        last
    }

    /// Waits until the helper's fd count equals `baseline`; panics with the
    /// fd listing otherwise.
    pub fn assert_fds_return_to(&self, baseline: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = self.fd_count();
            if now == baseline {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{:?} helper holds {now} fds, baseline {baseline}:\n{}",
                    self.which,
                    fds::listing(self.pid())
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asserts the helper process is alive and still accepts and answers.
    pub fn assert_serving(&self) {
        if let Some(child) = self.child.as_ref() {
            assert!(
                Path::new(&format!("/proc/{}", child.id())).exists(),
                "helper died; stderr:\n{}",
                self.stderr()
            );
        }
        let mut c = self.client();
        let f = fds::rw_file(self.dir.path());
        let r = c
            .execute(&pr_helper::scsi::pr::pr_in_cdb(0, 8), f.as_fd(), &[])
            .expect("helper still answers");
        assert_eq!(r.header.status, 2);
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits (at most 5 s) until the helper has logged `count` lines
    /// containing `needle`; returns those lines.
    pub fn wait_for_log(&self, needle: &str, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines: Vec<String> = self
                .stderr()
                .lines()
                .filter(|l| l.contains(needle))
                .map(str::to_string)
                .collect();
            if lines.len() >= count || Instant::now() > deadline {
                assert!(
                    lines.len() >= count,
                    "expected {count} log lines with {needle:?}, stderr:\n{}",
                    self.stderr()
                );
                return lines;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asserts the helper logged no error (warnings are expected after
    /// misbehaving clients).
    pub fn assert_no_errors(&self) {
        let stderr = self.stderr();
        assert!(
            !stderr.contains(": error: "),
            "the helper logged an error:\n{stderr}"
        );
    }

    /// Sends a signal to the helper.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).expect("kill");
    }

    /// Waits for the helper to exit (at most `timeout`).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!(
                    "helper did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM and wait.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait(Duration::from_secs(10))
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            // Bounded: a helper thread stuck in a fake device's ioctl keeps
            // the process from being reaped until that device answers.
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Reads until EOF or `timeout`; returns the bytes and whether EOF was seen.
pub fn read_until_close(stream: &mut UnixStream, timeout: Duration) -> (Vec<u8>, bool) {
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("read: {e}"),
        }
        if Instant::now() > deadline {
            return (out, false);
        }
    }
}

/// Asserts that the helper closes `stream` without sending anything.
pub fn assert_closed_silently(stream: &mut UnixStream) {
    let (bytes, closed) = read_until_close(stream, Duration::from_secs(5));
    assert!(
        bytes.is_empty(),
        "expected no reply, got {} bytes",
        bytes.len()
    );
    assert!(closed, "expected the helper to close the connection");
}

/// Asserts that `stream` stays open (no bytes, no EOF) for `for_`.
pub fn assert_still_open(stream: &UnixStream, for_: Duration) {
    assert!(
        !client::closed_within(stream, for_).expect("peek"),
        "connection was closed"
    );
}

/// Sends raw bytes with optional fds attached in one sendmsg.
pub fn send_with_fds(stream: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    let n = pr_helper::protocol::fdpass::send(stream.as_fd(), &[std::io::IoSlice::new(bytes)], fds)
        .expect("sendmsg");
    assert_eq!(n, bytes.len(), "short sendmsg");
}

/// Reads exactly one reply from a raw stream.
pub fn read_reply(stream: &mut UnixStream) -> Reply {
    let mut hdr = [0u8; RESPONSE_HEADER_SIZE];
    stream.read_exact(&mut hdr).expect("response header");
    let header = pr_helper::protocol::decode_response_header(&hdr);
    let mut data = vec![0u8; header.data_len as usize];
    stream.read_exact(&mut data).expect("response payload");
    Reply { header, data }
}

/// Handshake on a raw stream.
pub fn handshake(stream: &mut UnixStream) {
    let mut word = [0u8; 4];
    stream.read_exact(&mut word).expect("feature word");
    assert_eq!(word, [0; 4]);
    stream.write_all(&[0; 4]).unwrap();
}

/// The exact reply bytes: status, `data_len` zero payload bytes, sense.
pub fn reply(status: u8, sense: [u8; 96], data_len: usize) -> Vec<u8> {
    let mut v = vec![0, 0, 0, status];
    v.extend_from_slice(&(data_len as u32).to_be_bytes());
    v.extend_from_slice(&sense);
    v.extend(std::iter::repeat_n(0u8, data_len));
    v
}

/// The reply to any request on a regular file, pipe, socket, ...: SG_IO
/// fails (ENOTTY and the like), CHECK CONDITION 0B/00/06.
pub fn io_error() -> Vec<u8> {
    reply(2, sense(0x0b, 0, 6), 0)
}

/// The reply to PR OUT on a read-only fd: CHECK CONDITION 05/20/00.
pub fn read_only_refused() -> Vec<u8> {
    reply(2, sense(0x05, 0x20, 0), 0)
}

/// The expected sense buffer for a synthesised code.
pub fn sense(key: u8, asc: u8, ascq: u8) -> [u8; 96] {
    let mut s = [0u8; 96];
    s[0] = 0x70;
    s[2] = key;
    s[7] = 0x0a;
    s[12] = asc;
    s[13] = ascq;
    s
}
