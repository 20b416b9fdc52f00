//! The real client: an unmodified QEMU (Debian bookworm-backports 10.0.2)
//! with a `pr-manager-helper` object pointing at pr-helper.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const QEMU: &str = "/usr/bin/qemu-system-x86_64";

fn qemu_binary() -> &'static str {
    assert!(
        Path::new(QEMU).exists(),
        "{QEMU} is missing: install qemu-system-x86 from bookworm-backports (the README's test command does this)"
    );
    QEMU
}

struct Qemu {
    child: Child,
    qmp: BufReader<UnixStream>,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Qemu {
    fn start(helper_socket: &Path, dir: &Path) -> Qemu {
        let qmp_path: PathBuf = dir.join("qmp.sock");
        let child = Command::new(qemu_binary())
            .args([
                "-machine",
                "none",
                "-nodefaults",
                "-display",
                "none",
                "-object",
            ])
            .arg(format!(
                "pr-manager-helper,id=pr0,path={}",
                helper_socket.display()
            ))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start qemu");
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            if let Ok(s) = UnixStream::connect(&qmp_path) {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "QEMU's QMP socket did not appear"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut q = Qemu {
            child,
            qmp: BufReader::new(stream),
        };
        let greeting = q.read_json();
        assert!(greeting.get("QMP").is_some(), "QMP greeting: {greeting}");
        q.execute("qmp_capabilities");
        q
    }

    fn read_json(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.qmp.read_line(&mut line).expect("QMP read");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP line {line:?}: {e}"))
    }

    /// Runs a command, skipping events, and returns its "return" value.
    fn execute(&mut self, command: &str) -> serde_json::Value {
        writeln!(self.qmp.get_mut(), "{{\"execute\": \"{command}\"}}").unwrap();
        loop {
            let v = self.read_json();
            if let Some(r) = v.get("return") {
                return r.clone();
            }
            assert!(v.get("error").is_none(), "{command}: {v}");
        }
    }
}

#[test]
fn qemu_connects_and_reports_connected() {
    let h = Helper::ours(&[]);
    h.assert_serving();
    let baseline = h.idle_fd_count();
    let mut qemu = Qemu::start(&h.socket, h.dir.path());
    let managers = qemu.execute("query-pr-managers");
    assert_eq!(
        managers,
        serde_json::json!([{"connected": true, "id": "pr0"}])
    );
    // The helper holds QEMU's connection (one more fd) and still serves.
    h.assert_fds_return_to(baseline + 1);
    h.assert_serving();
    qemu.execute("quit");
    let status = qemu.child.wait().unwrap();
    assert!(status.success());
    // QEMU's exit closes the connection; the helper lets it go.
    h.assert_fds_return_to(baseline);
    assert!(
        !h.stderr().contains("warning"),
        "a clean QEMU exit is not a warning:\n{}",
        h.stderr()
    );
}

#[test]
fn qemu_refuses_to_start_without_a_helper() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(qemu_binary())
        .args([
            "-machine",
            "none",
            "-nodefaults",
            "-display",
            "none",
            "-object",
        ])
        .arg(format!(
            "pr-manager-helper,id=pr0,path={}",
            dir.path().join("absent.sock").display()
        ))
        .stdin(Stdio::null())
        .output()
        .expect("run qemu");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Failed to connect"), "{stderr}");
}

#[test]
fn qemu_and_helper_restart_then_reconnect() {
    // A helper that stops (SIGTERM) and comes back on the same path: QEMU
    // started against the new helper connects to it.
    let mut h = Helper::ours(&[]);
    let socket = h.socket.clone();
    assert!(h.terminate().success());
    assert!(!socket.exists());
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(our_binary());
    cmd.arg("-k").arg(&socket);
    let h2 = Helper::spawn(
        Which::Ours,
        cmd,
        tempfile::tempdir().unwrap(),
        socket.clone(),
    );
    let mut qemu = Qemu::start(&h2.socket, dir.path());
    assert_eq!(
        qemu.execute("query-pr-managers"),
        serde_json::json!([{"connected": true, "id": "pr0"}])
    );
}
