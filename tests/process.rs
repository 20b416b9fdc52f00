//! The process around the server, as each user runs it: command line and
//! exit codes, configuration layers, socket activation and sd_notify, `-d`
//! and the pidfile, privilege drop, journald, libvirt's managed mode.

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use pr_helper::scsi::pr::pr_in_cdb;

/// Runs pr-helper to completion with a clean PR_HELPER_* environment.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    run_within(args, env, Duration::from_secs(20))
}

/// As [`run`], failing the test if pr-helper has not exited within `limit`.
fn run_within(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let mut cmd = Command::new(our_binary());
    cmd.args(args).stdin(Stdio::null());
    without_helper_environment(&mut cmd);
    cmd.envs(env.iter().copied());
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pr-helper {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_fails(args: &[&str], env: &[(&str, &str)], message: &str) {
    let out = run(args, env);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?}: {}",
        text(&out.stderr)
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(message),
        "{args:?}: expected {message:?} in:\n{stderr}"
    );
}

#[test]
fn help_and_version_exit_zero() {
    for flag in ["-h", "--help"] {
        let out = run(&[flag], &[]);
        assert_eq!(out.status.code(), Some(0));
        let help = text(&out.stdout);
        for opt in [
            "--daemon",
            "--pidfile",
            "--socket",
            "--trace",
            "--user",
            "--group",
            "--verbose",
            "--quiet",
            "--config",
            "--print-config",
        ] {
            assert!(help.contains(opt), "help lists {opt}:\n{help}");
        }
    }
    for flag in ["-V", "--version"] {
        let out = run(&[flag], &[]);
        assert_eq!(out.status.code(), Some(0));
        assert!(
            text(&out.stdout).starts_with("pr-helper "),
            "{}",
            text(&out.stdout)
        );
    }
}

#[test]
fn usage_and_validation_errors_exit_one() {
    assert_fails(&["--no-such-option"], &[], "--no-such-option");
    assert_fails(&["-k"], &[], "a value is required for '--socket <PATH>'");
    assert_fails(
        &["-k", "relative.sock"],
        &[],
        "socket path must be absolute",
    );
    let long = format!("/tmp/{}", "x".repeat(110));
    assert_fails(&["-k", &long], &[], "too long");
    assert_fails(
        &["-u", "no-such-user-pr-helper"],
        &[],
        "invalid user 'no-such-user-pr-helper'",
    );
    assert_fails(
        &["-g", "no-such-group-pr-helper"],
        &[],
        "invalid group 'no-such-group-pr-helper'",
    );
    assert_fails(&["-u", "-5"], &[], "invalid user");
    // (uid_t)-1 and (gid_t)-1 mean "leave unchanged" to setresuid and
    // setresgid: accepted, they kept root without a word (D32).
    assert_fails(
        &["-u", "4294967295"],
        &[],
        "invalid user '4294967295': id 4294967295 is (uid_t)-1",
    );
    assert_fails(
        &["-g", "4294967295"],
        &[],
        "invalid group '4294967295': id 4294967295 is (uid_t)-1",
    );
    // Issue 22, item 6: require_landlock makes "no Landlock" a start-up
    // error (here: turned off).
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rl.sock");
    assert_fails(
        &[
            "-k",
            sock.to_str().unwrap(),
            "--landlock",
            "false",
            "--require-landlock",
            "true",
        ],
        &[],
        "require_landlock is set, but Landlock restricts nothing (turned off (landlock = false))",
    );
    assert!(
        !sock.exists(),
        "the socket is removed on that start-up error"
    );
    assert_fails(&["--sgio-timeout", "x"], &[], "--sgio-timeout");
    assert_fails(&["-T", "colour=blue"], &[], "unknown trace option");
    assert_fails(
        &["--config", "/nonexistent/pr-helper.toml"],
        &[],
        "/nonexistent/pr-helper.toml",
    );
    assert_fails(&["--socket-mode", "999"], &[], "octal");
    if !cfg!(feature = "mpath") {
        assert_fails(
            &["--multipath", "true"],
            &[],
            "built without multipath support",
        );
    }
    // Socket directory missing: bind fails.
    assert_fails(
        &["-k", "/nonexistent-dir-prh/s.sock"],
        &[],
        "Failed to bind socket to /nonexistent-dir-prh/s.sock",
    );
}

#[test]
fn config_file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let bad = write("bad.toml", "socket = [\n");
    assert_fails(&["--config", &bad], &[], &bad);
    let unknown = write("unknown.toml", "colour = \"blue\"\n");
    let out = run(&["--config", &unknown], &[]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("unknown setting `colour`") && e.contains(&unknown),
        "{e}"
    );
    let wrong = write("wrong.toml", "max_connections = \"many\"\n");
    let out = run(&["--config", &wrong], &[]);
    let e = text(&out.stderr);
    assert!(
        e.contains("max_connections") && e.contains("many") && e.contains(&wrong),
        "{e}"
    );
    assert_fails(
        &[],
        &[("PR_HELPER_SGIO_THREADS", "lots")],
        "PR_HELPER_SGIO_THREADS",
    );
    assert_fails(
        &[],
        &[("PR_HELPER_NO_SUCH_KEY", "1")],
        "PR_HELPER_NO_SUCH_KEY",
    );
}

/// The value and origin --print-config reports for `key`.
fn effective(args: &[&str], env: &[(&str, &str)], key: &str) -> String {
    let mut full = vec!["--print-config"];
    full.extend_from_slice(args);
    let out = run(&full, env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("{key} missing from:\n{}", text(&out.stdout)))
        .to_string()
}

#[test]
fn each_layer_wins_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(
        &file,
        "request_timeout = 11\nsocket = \"/tmp/from-file.sock\"\n",
    )
    .unwrap();
    let f = file.display().to_string();
    let env = [
        ("PR_HELPER_REQUEST_TIMEOUT", "22"),
        ("PR_HELPER_SOCKET", "/tmp/from-env.sock"),
    ];
    // Default only.
    assert_eq!(
        effective(&[], &[], "request_timeout"),
        "request_timeout = 30  # built-in default"
    );
    // File over default.
    assert_eq!(
        effective(&["--config", &f], &[], "request_timeout"),
        format!("request_timeout = 11  # file {f}")
    );
    // Environment over file.
    assert_eq!(
        effective(&["--config", &f], &env, "request_timeout"),
        "request_timeout = 22  # environment variable PR_HELPER_REQUEST_TIMEOUT"
    );
    // Command line over environment.
    assert_eq!(
        effective(
            &["--config", &f, "--request-timeout", "33"],
            &env,
            "request_timeout"
        ),
        "request_timeout = 33  # command line (--request-timeout)"
    );
    // The same for a qemu-pr-helper option (-k).
    assert_eq!(
        effective(
            &["--config", &f, "-k", "/tmp/from-cli.sock"],
            &env,
            "socket"
        ),
        "socket = \"/tmp/from-cli.sock\"  # command line (--socket)"
    );
    assert_eq!(
        effective(&["--config", &f], &env, "socket"),
        "socket = \"/tmp/from-env.sock\"  # environment variable PR_HELPER_SOCKET"
    );
    // -q wins over -v; -v counts.
    assert_eq!(
        effective(&["-v", "-v"], &[], "verbosity"),
        "verbosity = 3  # command line (--verbosity)"
    );
    assert_eq!(
        effective(&["-vv", "-q"], &[], "verbosity"),
        "verbosity = 0  # command line (--verbosity)"
    );
}

#[test]
fn trace_help_lists_targets() {
    let out = run(&["-T", "help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("connection"));
}

#[test]
fn trace_patterns_turn_on_trace_records() {
    let dir = tempfile::tempdir().unwrap();
    let trace_file = dir.path().join("trace.log");
    let opts = format!("enable=conn*,file={}", trace_file.display());
    let h = Helper::ours(&["-T", &opts]);
    let f = common::fds::rw_file(h.dir.path());
    let mut c = h.client();
    c.execute(&pr_in_cdb(0, 8), f.as_fd(), &[]).unwrap();
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(&trace_file).unwrap_or_default();
        // The per-request debug record of the connection target went to the
        // trace file although verbosity is the default (warnings).
        if log.contains("request") && log.contains("pr_helper::server::reply") {
            break;
        }
        assert!(Instant::now() < deadline, "trace file:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !h.stderr().contains("request"),
        "stderr keeps the default level"
    );
}

/// Issue 12 item 8b: a client's command name (/proc/PID/comm) is its own
/// choice. Here it comes from the name of the file the client executed, a
/// link to pr-helper named with a newline and a terminal escape; the audit
/// record and the connection log lines carry it escaped, one line each.
/// Not under qemu-user: the client runs under the emulator too, so its process name is the emulator's.
#[test]
fn client_command_names_are_escaped_in_logs() {
    let h = Helper::ours(&["-vv"]);
    drop(common::fds::rw_file(h.dir.path()));
    let name = "x\nFAKE:\x1b[31mok";
    let escaped = "x\\x0aFAKE:\\x1b[31mok";
    let link = h.dir.path().join(name);
    std::os::unix::fs::symlink(our_binary(), &link).unwrap();
    let out = Command::new(&link)
        .arg("persist")
        .arg("-k")
        .arg(&h.socket)
        .arg("-d")
        .arg(h.dir.path().join("regular-file"))
        .args(["--register", "--sa-key", "0x1"])
        .output()
        .unwrap();
    // Answered: SG_IO fails on a regular file, 0B/00/06, exit 11 (aborted).
    assert_eq!(out.status.code(), Some(11), "{}", text(&out.stderr));
    let audit = h.wait_for_log("PR OUT REGISTER from pid", 1);
    h.wait_for_log(": client closed the connection", 1);
    let stderr = h.stderr();
    assert!(
        !stderr.contains('\x1b'),
        "a raw escape reached the log:\n{stderr}"
    );
    for line in stderr.lines() {
        assert!(
            line.starts_with("pr-helper: "),
            "a log line not written by the helper: {line:?}"
        );
    }
    assert!(
        audit[0].contains(&format!("({escaped}, uid 0)")),
        "{audit:?}"
    );
    let accepted = h.wait_for_log(": accepted", 1);
    assert!(
        accepted
            .iter()
            .any(|l| l.contains(&format!(", {escaped}): accepted"))),
        "{accepted:?}"
    );
}

#[test]
fn socket_activation_serves_and_leaves_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("activated.sock");
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l").arg(&socket).arg(our_binary()).arg("-v");
    let mut h = Helper::spawn(Which::Ours, cmd, dir, socket.clone());
    h.assert_serving();
    let status = h.terminate();
    assert!(status.success(), "{}", h.stderr());
    // It names the socket it was given, not the configured default.
    let serving = format!("serving on {}", socket.display());
    assert!(h.stderr().contains(&serving), "{}", h.stderr());
    // The socket belongs to systemd: pr-helper does not remove it.
    assert!(socket.exists());
}

#[test]
fn socket_activation_refuses_k_and_two_fds() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("a.sock");
    let out = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg(our_binary())
        .arg("-k")
        .arg(dir.path().join("b.sock"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // systemd-socket-activate execs the helper only when a client connects.
    let _c = connect_retry(&socket);
    let out = out.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("Unix socket can't be set when using socket activation"));

    let socket2 = dir.path().join("c.sock");
    let out = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg("-l")
        .arg(&socket2)
        .arg(our_binary())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _c = connect_retry(&socket);
    let out = out.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("does not support socket activation with LISTEN_FDS > 1"));
}

/// Socket activation with an unusable fd 3: each case is refused at once,
/// exit 1, with its own message on stderr (spec §8.4, and our checks that
/// fd 3 is a listening Unix stream socket).
#[test]
fn activation_with_an_unusable_fd_3() {
    let dir = tempfile::tempdir().unwrap();
    let datagram = UnixDatagram::bind(dir.path().join("dgram")).unwrap();
    let null = std::fs::File::open("/dev/null").unwrap();
    let cases: [(Option<i32>, &str); 3] = [
        (
            Some(datagram.as_raw_fd()),
            "pr-helper: Failed to use socket activation: fd 3 is not a listening stream \
             socket (use ListenStream= with Accept=no)\n",
        ),
        (
            Some(null.as_raw_fd()),
            "pr-helper: Failed to use socket activation: ENOTSOCK: Socket operation on \
             non-socket\n",
        ),
        (
            None,
            "pr-helper: Socket activation failed: invalid file descriptor fd = 3: EBADF: Bad \
             file number\n",
        ),
    ];
    for (fd, expected) in cases {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg("export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\"")
            .arg(our_binary())
            .stdin(Stdio::null());
        without_helper_environment(&mut cmd);
        // SAFETY: dup2, close and fcntl are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let ok = match fd {
                    Some(fd) => libc::dup2(fd, 3) >= 0 && libc::fcntl(3, libc::F_SETFD, 0) >= 0,
                    None => {
                        libc::close(3);
                        true
                    }
                };
                if ok {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert_eq!(text(&out.stderr), expected);
    }
}

fn connect_retry(path: &Path) -> std::os::unix::net::UnixStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = std::os::unix::net::UnixStream::connect(path) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "cannot connect to {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sd_notify_ready_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let socket = dir.path().join("s.sock");
    let mut cmd = our_helper_command(&socket);
    cmd.env("NOTIFY_SOCKET", &notify_path);
    let mut h = Helper::spawn(Which::Ours, cmd, dir, socket);
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    h.assert_serving();
    h.signal(nix::sys::signal::Signal::SIGTERM);
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(h.wait(Duration::from_secs(10)).success());
}

fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
        && !procfs::status(pid).contains("State:\tZ")
}

fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} still alive");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn daemon_parent_returns_when_ready() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("d.sock");
    let pidfile = dir.path().join("d.pid");
    let out = run(
        &[
            "-d",
            "-k",
            socket.to_str().unwrap(),
            "-f",
            pidfile.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Ready when the parent returns: socket and pidfile exist, child lives.
    assert!(socket.exists());
    let pid = read_pid(&pidfile);
    assert!(alive(pid));
    let mut c = pr_helper::client::Client::connect(&socket).unwrap();
    let f = common::fds::rw_file(dir.path());
    assert_eq!(
        c.execute(&pr_in_cdb(0, 8), f.as_fd(), &[])
            .unwrap()
            .header
            .status,
        2
    );
    drop(c);

    // A second instance with the same pidfile is refused, naming the holder.
    let other = dir.path().join("other.sock");
    let out = run(
        &[
            "-k",
            other.to_str().unwrap(),
            "-f",
            pidfile.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("Cannot lock pid file") && e.contains(&format!("held by pid {pid}")),
        "{e}"
    );
    assert!(!other.exists(), "the refused instance removed its socket");

    // Clean exit removes socket and pidfile.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_gone(pid);
    assert!(!socket.exists());
    assert!(!pidfile.exists());
}

/// A start-up error after the pidfile was written leaves neither the
/// pidfile nor the socket behind (issue 23: the pidfile used to stay,
/// holding a dead pid). Here the switch to another user fails: root
/// without CAP_SETUID and CAP_SETGID in its bounding set (setpriv), found
/// only after the pidfile is created; with and without -d.
#[test]
fn a_start_up_error_after_the_pidfile_removes_it() {
    for daemon in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let pid = dir.path().join("p.pid");
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--bounding-set",
            "-setuid,-setgid",
            "--inh-caps",
            "-setuid,-setgid",
        ])
        .arg(our_binary())
        .arg("-k")
        .arg(&socket)
        .arg("-f")
        .arg(&pid)
        .args(["-u", "65534", "-g", "65534"])
        .stdin(Stdio::null());
        if daemon {
            cmd.arg("-d");
        }
        without_helper_environment(&mut cmd);
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1), "-d: {daemon}: {out:?}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while socket.exists() || pid.exists() {
            assert!(
                Instant::now() < deadline,
                "-d: {daemon}: left behind: socket {}, pidfile {}; {}",
                socket.exists(),
                pid.exists(),
                text(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn daemon_failure_is_reported_by_the_parent() {
    let dir = tempfile::tempdir().unwrap();
    // Before the fork: the socket directory is missing.
    let out = run(
        &[
            "-d",
            "-k",
            "/nonexistent-prh-dir/s.sock",
            "-f",
            "/tmp/unused.pid",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("Failed to bind socket"),
        "{}",
        text(&out.stderr)
    );
    // After the fork, in the child: the pidfile directory is missing; the
    // parent prints the child's error and exits 1; nothing is left behind.
    let socket = dir.path().join("s.sock");
    let out = run(
        &[
            "-d",
            "-k",
            socket.to_str().unwrap(),
            "-f",
            "/nonexistent-prh-dir/p.pid",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("Could not create pid file /nonexistent-prh-dir/p.pid"),
        "{e}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while socket.exists() {
        assert!(Instant::now() < deadline, "socket left behind");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn status_field(pid: u32, field: &str) -> String {
    procfs::status_field(pid, field).unwrap_or_else(|| panic!("{field} missing"))
}

/// Not under qemu-user: /proc/PID/status is the emulator's, whose own threads started before the privilege drop.
#[test]
fn privileges_drop_to_nobody_and_keep_only_sys_rawio() {
    // The directory must let "nobody" remove the socket at exit.
    let dir = shared_tempdir();
    let socket = dir.path().join("n.sock");
    let mut cmd = our_helper_command(&socket);
    cmd.args(["-u", "nobody"]);
    let mut h = Helper::spawn(Which::Ours, cmd, dir, socket.clone());
    h.assert_serving();
    let pid = h.pid();
    let uid = status_field(pid, "Uid");
    assert!(uid.split_whitespace().all(|u| u == "65534"), "Uid: {uid}");
    let gid = status_field(pid, "Gid");
    assert!(
        gid.split_whitespace().all(|g| g == "65534"),
        "Gid (nobody's primary group): {gid}"
    );
    assert_eq!(status_field(pid, "Groups"), "");
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(status_field(pid, set), "0000000000020000", "{set}");
    }
    assert_eq!(status_field(pid, "CapInh"), "0000000000000000");
    assert_eq!(status_field(pid, "CapAmb"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    // Every thread has the same credentials (they were dropped before any
    // thread started).
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        assert!(t.contains("CapEff:\t0000000000020000"), "{t}");
    }
    assert!(h.terminate().success());
    assert!(!socket.exists());
}

/// Starts the helper as systemd starts a service with `User=`/`DynamicUser=`
/// and `AmbientCapabilities=CAP_SYS_RAWIO`: a non-root uid and gid, the
/// group list from initgroups() (`groups`), CAP_SYS_RAWIO ambient and no
/// CAP_SETGID. Returns its stderr once it serves.
fn start_as_service_user(groups: &str) -> String {
    let dir = shared_tempdir();
    let socket = dir.path().join("svc.sock");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", "61534", "--regid", "61534", "--groups", groups])
        .args([
            "--inh-caps",
            "-all,+sys_rawio",
            "--ambient-caps",
            "-all,+sys_rawio",
        ])
        .arg("--")
        .arg(our_binary())
        .arg("-k")
        .arg(&socket)
        .arg("-v");
    let mut h = Helper::spawn(Which::Ours, cmd, dir, socket);
    h.assert_serving();
    h.wait_for_log("serving on", 1);
    assert_eq!(status_field(h.pid(), "CapEff"), "0000000000020000");
    let stderr = h.stderr();
    assert!(h.terminate().success(), "{stderr}");
    stderr
}

#[test]
fn started_like_a_systemd_service_no_group_warning() {
    // systemd leaves the service's own group in the list (initgroups()):
    // nothing to drop, nothing to warn about.
    let stderr = start_as_service_user("61534");
    assert!(
        !stderr.contains("supplementary groups"),
        "a group list holding only the helper's own group is no reason to warn:\n{stderr}"
    );
    // A group beyond its own is kept (no CAP_SETGID) and named.
    let stderr = start_as_service_user("61534,61535");
    assert!(
        stderr.contains("cannot drop supplementary groups [61535] without CAP_SETGID"),
        "{stderr}"
    );
}

#[test]
fn without_root_the_helper_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let socket = dir.path().join("u.sock");
    let out = our_helper_command(&socket)
        .uid(65534)
        .gid(65534)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(e.contains("missing capability CAP_SYS_RAWIO"), "{e}");
    assert!(!socket.exists(), "socket removed on start-up failure");
}

#[test]
fn shutdown_exits_even_when_the_socket_cannot_be_removed() {
    // As nobody, in a root-owned 0755 directory: unlink fails with EACCES.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("k.sock");
    let mut cmd = our_helper_command(&socket);
    cmd.args(["-u", "nobody"]);
    let mut h = Helper::spawn(Which::Ours, cmd, dir, socket.clone());
    h.assert_serving();
    let status = h.terminate();
    assert!(status.success());
    assert!(
        h.stderr().contains("cannot remove socket"),
        "{}",
        h.stderr()
    );
    assert!(socket.exists());
    // The stale socket does not stop the next start (D11).
    let cmd = our_helper_command(&socket);
    let h2 = Helper::spawn(
        Which::Ours,
        cmd,
        tempfile::tempdir().unwrap(),
        socket.clone(),
    );
    h2.assert_serving();
}

/// Not under qemu-user: it reads the socket's group as soon as the socket appears, before the emulated helper has set it.
#[test]
fn socket_mode_and_group() {
    use std::os::unix::fs::MetadataExt;
    let h = Helper::ours(&["--socket-mode", "0660", "--socket-group", "nogroup"]);
    let meta = std::fs::metadata(&h.socket).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o660);
    let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap();
    assert_eq!(meta.gid(), nogroup.gid.as_raw());
}

#[test]
fn libvirt_managed_mode() {
    // libvirt: `<helper> -k <path>`, stdout/stderr captured, readiness = the
    // socket exists, SIGTERM to stop.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("pr-helper0.sock");
    let child = our_helper_command(&socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut c = pr_helper::client::Client::connect(&socket).unwrap();
    let f = common::fds::rw_file(dir.path());
    assert_eq!(
        c.execute(&pr_in_cdb(0, 8), f.as_fd(), &[])
            .unwrap()
            .header
            .status,
        2
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(!socket.exists());
    assert!(out.stdout.is_empty(), "nothing on stdout");
}

/// systemd-journald, standalone in a private mount namespace with /run and
/// /var/log/journal on scratch directories; pr-helper runs in the same
/// namespace and logs there.
#[test]
fn journald_receives_structured_request_records() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path();
    for d in ["run", "journal"] {
        std::fs::create_dir(scratch.join(d)).unwrap();
    }
    let socket = scratch.join("j.sock");
    let pidfile = scratch.join("j.pid");
    let script = format!(
        r#"set -e
mount --bind {scratch}/run /run
mkdir -p /var/log/journal
mount --bind {scratch}/journal /var/log/journal
mkdir -p /run/systemd/journal
/lib/systemd/systemd-journald &
JPID=$!
for i in $(seq 200); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
{bin} -k {socket} -f {pidfile} -vv --log-target journald
kill $JPID
wait $JPID || true
"#,
        scratch = scratch.display(),
        bin = our_binary().display(),
        socket = socket.display(),
        pidfile = pidfile.display()
    );
    let mut ns = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(socket.exists() && pidfile.exists()) {
        if let Some(status) = ns.try_wait().unwrap() {
            panic!(
                "namespace script ended: {status:?}: {}",
                text(&ns.wait_with_output().unwrap().stderr)
            );
        }
        assert!(
            Instant::now() < deadline,
            "helper did not start under journald"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let f = common::fds::rw_file(scratch);
    let mut c = pr_helper::client::Client::connect(&socket).unwrap();
    let r = c.execute(&pr_in_cdb(1, 64), f.as_fd(), &[]).unwrap();
    assert_eq!(r.header.status, 2);
    // A PR OUT: its audit record is checked below.
    let params = pr_helper::scsi::pr::ParamList {
        key: 0xa1a1,
        sa_key: 0xb2b2,
        ..Default::default()
    }
    .encode();
    let r = c
        .execute(
            &pr_helper::scsi::pr::pr_out_cdb(4, 0, 5, 24),
            f.as_fd(),
            &params,
        )
        .unwrap();
    assert_eq!(r.header.status, 2);
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    let pid = read_pid(&pidfile);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = ns.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Standalone journald keeps the journal in /run/log/journal (volatile
    // storage: nothing asks it to flush to /var).
    let journal_dir = std::fs::read_dir(scratch.join("run/log/journal"))
        .expect("journal directory")
        .next()
        .expect("machine directory")
        .unwrap()
        .path();
    let journal = Command::new("journalctl")
        .arg("-D")
        .arg(&journal_dir)
        .args(["-o", "json", "--no-pager"])
        .output()
        .unwrap();
    let records: Vec<serde_json::Value> = text(&journal.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let request = records
        .iter()
        .find(|r| r["MESSAGE"] == "request")
        .unwrap_or_else(|| {
            panic!(
                "no request record in {} records:\n{}",
                records.len(),
                text(&journal.stdout)
            )
        });
    assert_eq!(request["SYSLOG_IDENTIFIER"], "pr-helper");
    assert_eq!(request["PRH_OPCODE"], "0x5e");
    assert_eq!(request["PRH_SERVICE_ACTION"], "1");
    assert_eq!(request["PRH_STATUS"], "0x02");
    assert_eq!(request["PRH_SENSE_KEY"], "0b");
    assert_eq!(request["PRH_ASC"], "00");
    assert_eq!(request["PRH_ASCQ"], "06");
    assert_eq!(request["PRH_PEER_UID"], "0");
    assert_eq!(request["PRH_PEER_PID"], std::process::id().to_string());
    assert!(request["PRH_DEVICE"].is_string());
    assert!(request["PRH_DURATION_US"].is_string());
    assert!(records.iter().any(|r| r["MESSAGE"]
        .as_str()
        .is_some_and(|m| m.starts_with("serving on"))));
}

/// The soft limit on open files is raised to the hard limit at start-up
/// (systemd's default soft limit, 1024, is below what the default
/// connection limit needs).
#[test]
fn open_file_soft_limit_is_raised_to_the_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("limits.sock");
    let mut cmd = our_helper_command(&socket);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 4096,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut h = Helper::spawn(Which::Ours, cmd, dir, socket);
    h.assert_serving();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", h.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files in /proc/PID/limits");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3..5], ["4096", "4096"], "{line}");
    assert!(h.terminate().success(), "{}", h.stderr());
}

/// The names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn exit_removes_the_socket_path_only_while_it_is_the_socket_bound() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::{UnixListener, UnixStream};
    // Replaced by a regular file after start: the file survives the exit.
    let mut h = Helper::ours(&[]);
    std::fs::remove_file(&h.socket).unwrap();
    std::fs::write(&h.socket, b"not pr-helper's").unwrap();
    assert!(h.terminate().success(), "{}", h.stderr());
    assert_eq!(std::fs::read(&h.socket).unwrap(), b"not pr-helper's");
    assert!(h.stderr().contains("not removing"), "{}", h.stderr());

    // Replaced by another listening socket: it survives and still works.
    let mut h = Helper::ours(&[]);
    std::fs::remove_file(&h.socket).unwrap();
    let other = UnixListener::bind(&h.socket).unwrap();
    let ino = std::fs::symlink_metadata(&h.socket).unwrap().ino();
    assert!(h.terminate().success(), "{}", h.stderr());
    assert_eq!(std::fs::symlink_metadata(&h.socket).unwrap().ino(), ino);
    let _client = UnixStream::connect(&h.socket).expect("the other socket still works");
    other.accept().unwrap();

    // Its own socket is removed, and nothing else is left in the directory
    // (the private directory it was bound in is gone).
    let mut h = Helper::ours(&["--socket-mode", "0600"]);
    // The private directory goes right after the rename that makes the
    // socket appear: wait for it (slow under emulation), then it is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while entries(h.dir.path()).len() > 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(entries(h.dir.path()), ["helper.sock", "stderr.log"]);
    assert!(h.terminate().success(), "{}", h.stderr());
    assert!(!h.socket.exists());
    assert_eq!(entries(h.dir.path()), ["stderr.log"]);
}

/// A non-blocking connection to `path`; None once its queue is full.
fn connect_nonblocking(path: &Path) -> Option<std::os::fd::OwnedFd> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    match connect(fd.as_raw_fd(), &UnixAddr::new(path).unwrap()) {
        Ok(()) => Some(fd),
        Err(nix::errno::Errno::EAGAIN) => None,
        Err(e) => panic!("connect {}: {e}", path.display()),
    }
}

/// Connects until the listener's queue is full; returns the connections.
fn fill_queue(path: &Path) -> Vec<std::os::fd::OwnedFd> {
    let mut held = Vec::new();
    while let Some(fd) = connect_nonblocking(path) {
        held.push(fd);
        assert!(held.len() < 10_000, "queue never fills");
    }
    held
}

/// Starting on a path where a socket nobody accepts on is bound must end at
/// once with the D11 error, leaving that socket alone.
fn assert_refused_quickly(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::symlink_metadata(path).unwrap().ino();
    let dir = path.parent().unwrap();
    let before = entries(dir);
    let start = Instant::now();
    let out = run_within(&["-k", path.to_str().unwrap()], &[], Duration::from_secs(5));
    let took = start.elapsed();
    eprintln!("{}: refused after {took:?}", path.display());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("another process is listening on it"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::symlink_metadata(path).unwrap().ino(), ino);
    assert_eq!(entries(dir), before, "nothing left behind");
}

#[test]
fn a_socket_whose_owner_never_accepts_does_not_hang_start_up() {
    use nix::sys::socket::UnixAddr;
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType};
    let dir = tempfile::tempdir().unwrap();
    // A listener with backlog 0 whose queue is full.
    let full = dir.path().join("full.sock");
    let listener = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(listener.as_raw_fd(), &UnixAddr::new(&full).unwrap()).unwrap();
    listen(&listener, Backlog::new(0).unwrap()).unwrap();
    let held = fill_queue(&full);
    assert!(!held.is_empty());
    assert_refused_quickly(&full);
    drop(held);
    drop(listener);

    // A helper stopped with SIGSTOP: refused with room in its queue, and
    // still refused, at once, when its queue is full.
    let stopped = dir.path().join("stopped.sock");
    let cmd = our_helper_command(&stopped);
    let mut first = Helper::spawn(
        Which::Ours,
        cmd,
        tempfile::tempdir().unwrap(),
        stopped.clone(),
    );
    first.assert_serving();
    first.signal(nix::sys::signal::Signal::SIGSTOP);
    assert_refused_quickly(&stopped);
    let held = fill_queue(&stopped);
    assert_refused_quickly(&stopped);
    drop(held);
    first.signal(nix::sys::signal::Signal::SIGCONT);
    first.assert_serving();
    assert!(first.terminate().success());
    assert!(!stopped.exists());
}

#[test]
fn the_socket_appears_with_its_mode_and_group_already_set() {
    use std::os::unix::fs::MetadataExt;
    // An observer that looks at the path as fast as it can while the helper
    // starts sees the socket only with its final mode and group: it is set
    // up in a private directory and renamed into place.
    let nogroup = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("m.sock");
        let seen = std::thread::scope(|s| {
            let watcher = s.spawn(|| {
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(meta) = std::fs::symlink_metadata(&socket) {
                        return Some((meta.mode() & 0o7777, meta.gid()));
                    }
                }
                None
            });
            let mut cmd = our_helper_command(&socket);
            cmd.args(["--socket-mode", "0600", "--socket-group", "nogroup"]);
            let mut h = Helper::spawn(
                Which::Ours,
                cmd,
                tempfile::tempdir().unwrap(),
                socket.clone(),
            );
            let seen = watcher.join().unwrap();
            assert!(h.terminate().success());
            seen
        });
        assert_eq!(seen, Some((0o600, nogroup)), "round {round}");
    }
}

#[test]
fn start_up_failures_and_early_signals_leave_nothing_behind() {
    // A failure after the socket exists (the pidfile cannot be created):
    // the socket and the private directory it was made in are gone.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("f.sock");
    let out = run(
        &[
            "-k",
            socket.to_str().unwrap(),
            "-f",
            "/nonexistent-pr-helper-dir/pid",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(entries(dir.path()), Vec::<String>::new());
    // A group that does not exist: refused before anything is created.
    assert_fails(
        &[
            "-k",
            socket.to_str().unwrap(),
            "--socket-group",
            "no-such-group-pr-helper",
        ],
        &[],
        "no-such-group-pr-helper",
    );
    assert_eq!(entries(dir.path()), Vec::<String>::new());
    // SIGTERM at every moment of start-up: nothing is left in the
    // directory.
    for round in 0..30u64 {
        let mut child = our_helper_command(&socket)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(round * 300));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "round {round}: no exit");
            std::thread::sleep(Duration::from_millis(2));
        };
        // Killed outright only before its handlers exist, when it has
        // created nothing yet.
        use std::os::unix::process::ExitStatusExt;
        assert!(
            status.success() || status.signal() == Some(libc::SIGTERM),
            "round {round}: {status:?}"
        );
        assert_eq!(entries(dir.path()), Vec::<String>::new(), "round {round}");
    }
}

/// The janitor of a running helper: its one child process.
fn janitor_of(pid: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let kids: Vec<u32> = children
        .split_whitespace()
        .map(|c| c.parse().unwrap())
        .collect();
    assert_eq!(kids.len(), 1, "one child process expected: {kids:?}");
    kids[0]
}

/// Issue 22, item 5: the helper itself may remove no file (Landlock grants
/// removal per directory tree: with the default path, all of /run); its
/// socket and pidfile are removed by the janitor, a child process with no
/// capability and a ruleset that allows removing files in those two
/// directories only (tests/sandbox.rs shows the rulesets). The janitor
/// ignores the SIGTERM a service manager sends the whole group, and cleans
/// up when the helper is killed outright too.
#[test]
fn the_janitor_removes_socket_and_pidfile_and_holds_no_capability() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("j.pid");
    let mut h = Helper::ours(&["-f", pidfile.to_str().unwrap()]);
    let socket = h.socket.clone();
    h.assert_serving();
    let janitor = janitor_of(h.pid());
    let status = procfs::status(janitor);
    assert!(status.starts_with("Name:\tprh-janitor\n"), "{status}");
    for cap in ["CapEff:\t0000000000000000", "CapPrm:\t0000000000000000"] {
        assert!(status.contains(cap), "{status}");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(janitor as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(janitor), "the janitor ignores SIGTERM");
    assert!(h.terminate().success(), "{}", h.stderr());
    assert!(!socket.exists() && !pidfile.exists(), "{}", h.stderr());
    wait_gone(janitor);

    // Killed outright: the janitor sees the helper's end of their socket
    // pair close and removes the socket (still the one bound: D30).
    let mut h = Helper::ours(&[]);
    let socket = h.socket.clone();
    h.assert_serving();
    let janitor = janitor_of(h.pid());
    h.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = h.wait(Duration::from_secs(10));
    wait_gone(janitor);
    assert!(!socket.exists(), "removed by the janitor after SIGKILL");
}
