//! The sandbox: a running helper is under seccomp (mode 2) with
//! NO_NEW_PRIVS; in a child process, the same filter kills a forbidden
//! system call with a clear message, and the same Landlock ruleset denies
//! an open(); the access policy refuses peers by uid and gid.
//!
//! The child cases re-run this test binary with an environment variable
//! (the sandbox is applied to that child only, never to the test runner).

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use pr_helper::process::sandbox::{self, Profile};

const CHILD: &str = "PRH_SANDBOX_CHILD";

/// Runs the test `name` of this binary in a child process with CHILD=mode.
fn child(name: &str, mode: &str) -> std::process::Output {
    Command::new(runnable(std::env::current_exe().unwrap()))
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, mode)
        .output()
        .unwrap()
}

/// Runs the child test `name` in `mode`, which must succeed; its stdout.
fn child_stdout(name: &str, mode: &str) -> String {
    let out = child(name, mode);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// In the child: install the filter, do allowed work, then a forbidden call.
#[test]
fn seccomp_child() {
    if std::env::var(CHILD).as_deref() != Ok("seccomp") {
        return;
    }
    assert_eq!(
        sandbox::seccomp::install(Profile::Plain, false).unwrap(),
        sandbox::seccomp::Outcome::Installed
    );
    // Allowed: reading from a pipe, allocating.
    let (r, w) = nix::unistd::pipe().unwrap();
    nix::unistd::write(&w, b"ok").unwrap();
    let mut buf = [0u8; 2];
    nix::unistd::read(&r, &mut buf).unwrap();
    eprintln!(
        "before the forbidden call: {}",
        String::from_utf8_lossy(&buf)
    );
    // Forbidden: mkdirat, which every architecture has (std's create_dir
    // is mkdir on x86_64, mkdirat elsewhere).
    // SAFETY: a NUL-terminated path and plain integers.
    unsafe {
        libc::syscall(
            libc::SYS_mkdirat,
            libc::AT_FDCWD,
            c"/tmp/pr-helper-seccomp-must-not-exist".as_ptr(),
            0o755,
        );
    }
    eprintln!("STILL ALIVE");
}

/// In the child: the plain filter, a read-only open, then an open for
/// writing.
#[test]
fn seccomp_write_open_child() {
    if std::env::var(CHILD).as_deref() != Ok("seccomp-write-open") {
        return;
    }
    assert_eq!(
        sandbox::seccomp::install(Profile::Plain, false).unwrap(),
        sandbox::seccomp::Outcome::Installed
    );
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    eprintln!("read-only open: ok ({})", comm.trim());
    let opened = std::fs::OpenOptions::new().write(true).open("/dev/null");
    eprintln!("STILL ALIVE {opened:?}");
}

/// In the child: the plain filter in log mode, then mkdirat of the
/// directory the parent names.
#[test]
fn seccomp_log_child() {
    let Ok(dir) = std::env::var("PRH_SECCOMP_LOG_DIR") else {
        return;
    };
    if std::env::var(CHILD).as_deref() != Ok("seccomp-log") {
        return;
    }
    assert_eq!(
        sandbox::seccomp::install(Profile::Plain, true).unwrap(),
        sandbox::seccomp::Outcome::Installed
    );
    let path = std::ffi::CString::new(dir).unwrap();
    // SAFETY: a NUL-terminated path and plain integers.
    let r = unsafe { libc::syscall(libc::SYS_mkdirat, libc::AT_FDCWD, path.as_ptr(), 0o755) };
    eprintln!(
        "mkdirat returned {r}; STILL ALIVE pid {}",
        std::process::id()
    );
}

/// Issue 23: `seccomp = log` (virtiofsd's `--seccomp log`). A call outside
/// the allow-list runs, the process lives on, and the kernel logs the call
/// (audit record type 1326, SECCOMP, with the process's pid and the call's
/// number): how an operator finds what another distribution's
/// libmpathpersist needs. In kill mode the same call ends the process
/// (seccomp_blocks_a_forbidden_syscall_with_a_clear_message).
/// Not under qemu-user: qemu-user implements neither seccomp(2) nor Landlock.
#[test]
fn seccomp_log_mode_lets_the_call_run_and_the_kernel_logs_it() {
    let dir = std::env::temp_dir().join(format!(
        "prh-seccomp-log-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let out = Command::new(runnable(std::env::current_exe().unwrap()))
        .args([
            "--exact",
            "seccomp_log_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "seccomp-log")
        .env("PRH_SECCOMP_LOG_DIR", &dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "stderr:\n{stderr}");
    let made = dir.is_dir();
    let _ = std::fs::remove_dir(&dir);
    assert!(made, "mkdirat did not run: {stderr}");
    let pid = stderr
        .split("STILL ALIVE pid ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap_or_else(|| panic!("no pid in: {stderr}"));
    assert!(stderr.contains("mkdirat returned 0"), "{stderr}");
    // The kernel's record of it.
    let wanted = [
        "type=1326".to_string(),
        format!(" pid={pid} "),
        format!(" syscall={} ", libc::SYS_mkdirat),
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = Command::new("dmesg").output().unwrap();
        let log = String::from_utf8_lossy(&log.stdout).into_owned();
        if log
            .lines()
            .any(|l| wanted.iter().all(|w| l.contains(w.as_str())))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no kernel record {wanted:?} in dmesg; its end: {}",
            log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issue 22, item 6: in the plain profile an open that could write (any
/// access mode but O_RDONLY, O_CREAT, O_TRUNC, O_APPEND, O_TMPFILE) ends the
/// process, so a compromised helper without Landlock cannot open a disk
/// for writing; reading /proc and /sys still works.
/// Not under qemu-user: qemu-user implements neither seccomp(2) nor Landlock.
#[test]
fn seccomp_plain_profile_refuses_opens_that_could_write() {
    let stderr = killed_by_seccomp(
        "seccomp_write_open_child",
        "seccomp-write-open",
        libc::SYS_openat,
    );
    assert!(stderr.contains("read-only open: ok"), "{stderr}");
}

/// Runs the child test `name` in `mode`; it must end with status 159 and
/// the filter's message naming system call `nr`, before printing STILL
/// ALIVE. Returns its stderr.
fn killed_by_seccomp(name: &str, mode: &str, nr: i64) -> String {
    let out = child(name, mode);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(159), "stderr:\n{stderr}");
    let expected = format!(
        "the seccomp filter blocked system call {nr} ({})",
        std::env::consts::ARCH
    );
    assert!(
        stderr.contains(&expected),
        "want {expected:?} in:\n{stderr}"
    );
    assert!(!stderr.contains("STILL ALIVE"), "{stderr}");
    stderr
}

/// In the child: the plain filter, then a thread kind's narrowing
/// (`Role`), then a call that kind may make and one it may not. Modes:
/// `worker` (an SG_IO ioctl is allowed, accept4 is not), `event-loop` (accept4
/// is allowed, an SG_IO ioctl is not), `event-loop-thread` (starting a
/// thread is not).
#[test]
fn seccomp_role_child() {
    use sandbox::seccomp::{Narrowing, Role};
    let mode = std::env::var(CHILD).unwrap_or_default();
    let role = match mode.as_str() {
        "worker" => Role::Worker,
        "event-loop" | "event-loop-thread" => Role::EventLoop,
        _ => return,
    };
    sandbox::seccomp::install(Profile::Plain, false).unwrap();
    let narrowing = Narrowing::new(role, false).unwrap();
    narrowing.apply().unwrap();
    let null = std::fs::File::open("/dev/null").unwrap();
    let sgio = || {
        // SAFETY: SG_IO on /dev/null fails with ENOTTY before reading
        // its argument (a zeroed header of the right size).
        let mut hdr = [0u8; 88];
        unsafe {
            libc::ioctl(
                null.as_raw_fd(),
                0x2285 as _, // SG_IO (<scsi/sg.h>)
                hdr.as_mut_ptr(),
            )
        }
    };
    let accept = || {
        // SAFETY: accept4 on a bad fd, with no address buffer.
        unsafe { libc::accept4(-1, std::ptr::null_mut(), std::ptr::null_mut(), 0) }
    };
    match mode.as_str() {
        "worker" => {
            assert_eq!(sgio(), -1);
            eprintln!("SG_IO allowed: {}", std::io::Error::last_os_error());
            accept();
        }
        "event-loop" => {
            assert_eq!(accept(), -1);
            eprintln!("accept4 allowed: {}", std::io::Error::last_os_error());
            sgio();
        }
        _ => {
            eprintln!("starting a thread");
            let _ = std::thread::spawn(|| ()).join();
        }
    }
    eprintln!("STILL ALIVE");
}

/// A thread kind's narrowing takes away what that kind never does, and
/// leaves it the rest: an SG_IO worker cannot accept a connection, the
/// event loop cannot issue SG_IO or start a thread.
/// Not under qemu-user: qemu-user implements neither seccomp(2) nor Landlock.
#[test]
fn each_thread_kind_is_refused_what_the_other_does() {
    let stderr = killed_by_seccomp("seccomp_role_child", "worker", libc::SYS_accept4);
    assert!(
        stderr.contains("SG_IO allowed: Inappropriate ioctl"),
        "{stderr}"
    );
    let stderr = killed_by_seccomp("seccomp_role_child", "event-loop", libc::SYS_ioctl);
    assert!(
        stderr.contains("accept4 allowed: Bad file descriptor"),
        "{stderr}"
    );
    // Starting a thread ends the process. glibc blocks every signal around
    // clone3, so the kernel kills it with SIGSYS itself (the handler's line
    // is not written); musl's clone reaches the handler.
    let out = child("seccomp_role_child", "event-loop-thread");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let by_handler = out.status.code() == Some(159)
        && [libc::SYS_clone3, libc::SYS_clone]
            .iter()
            .any(|nr| stderr.contains(&format!("the seccomp filter blocked system call {nr} (")));
    let by_kernel = out.status.signal() == Some(libc::SIGSYS);
    assert!(
        by_handler || by_kernel,
        "{:?}, stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("starting a thread") && !stderr.contains("STILL ALIVE"),
        "{stderr}"
    );
}

/// Not under qemu-user: qemu-user implements neither seccomp(2) nor Landlock.
#[test]
fn seccomp_blocks_a_forbidden_syscall_with_a_clear_message() {
    let stderr = killed_by_seccomp("seccomp_child", "seccomp", libc::SYS_mkdirat);
    assert!(stderr.contains("before the forbidden call: ok"), "{stderr}");
    assert!(!std::path::Path::new("/tmp/pr-helper-seccomp-must-not-exist").exists());
    eprintln!(
        "seccomp allow-list: {} system calls (plain), {} (multipath)",
        sandbox::seccomp::allowed_count(Profile::Plain),
        sandbox::seccomp::allowed_count(Profile::Multipath)
    );
}

#[test]
fn landlock_child() {
    if std::env::var(CHILD).as_deref() != Ok("landlock") {
        return;
    }
    let outcome = sandbox::landlock::restrict(Profile::Plain).unwrap();
    println!("OUTCOME {outcome:?}");
    match std::fs::File::open("/etc/hostname") {
        Ok(_) => println!("OPEN allowed"),
        Err(e) => println!("OPEN denied {}", e.raw_os_error().unwrap_or(0)),
    }
    match std::fs::read_to_string("/proc/self/comm") {
        Ok(_) => println!("PROC allowed"),
        Err(e) => println!("PROC denied {e}"),
    }
}

/// Not under qemu-user: qemu-user implements neither seccomp(2) nor Landlock.
#[test]
fn landlock_denies_open_but_allows_proc() {
    let stdout = child_stdout("landlock_child", "landlock");
    if stdout.contains("OUTCOME Unsupported") {
        panic!("this kernel has no Landlock; the test bed kernels and CI hosts do:\n{stdout}");
    }
    assert!(
        stdout.contains("OPEN denied 13"),
        "open() must fail with EACCES:\n{stdout}"
    );
    assert!(stdout.contains("PROC allowed"), "{stdout}");
}

/// In the child: the multipath profile, then an ioctl on a device opened
/// after it (as libmpathpersist opens the path devices).
#[test]
fn landlock_multipath_child() {
    if std::env::var(CHILD).as_deref() != Ok("landlock-multipath") {
        return;
    }
    let outcome = sandbox::landlock::restrict(Profile::Multipath).unwrap();
    println!("OUTCOME {outcome:?}");
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .unwrap();
    let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
    // SAFETY: TCGETS writes a termios into the buffer given.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&null),
            libc::TCGETS,
            termios.as_mut_ptr(),
        )
    };
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    println!("IOCTL rc {rc} errno {errno}");
}

/// Issue 20, item 3: on Linux >= 6.10 (Landlock ABI 5) the ruleset handles
/// IoctlDev; the multipath profile's /dev rule did not grant it, so every
/// SG_IO libmpathpersist sent on a path device it opened after the sandbox
/// failed with EACCES. Now an ioctl on a device opened after the sandbox
/// reaches the driver (/dev/null answers TCGETS with ENOTTY, not Landlock's
/// EACCES). The host kernels of CI have ABI >= 5 (this one: 6.18).
/// Not under qemu-user: qemu-user implements neither seccomp(2) nor Landlock.
#[test]
fn landlock_multipath_profile_allows_ioctls_on_devices_opened_after_it() {
    let stdout = child_stdout("landlock_multipath_child", "landlock-multipath");
    assert!(!stdout.contains("OUTCOME Unsupported"), "{stdout}");
    assert!(
        stdout.contains(&format!("IOCTL rc -1 errno {}", libc::ENOTTY)),
        "the ioctl must reach /dev/null's driver:\n{stdout}"
    );
}

/// In the child: the helper's ruleset, or the janitor's, then removals.
#[test]
fn landlock_removal_child() {
    let Ok(mode) = std::env::var(CHILD) else {
        return;
    };
    let Some(dirs) = mode.strip_prefix("removal:") else {
        return;
    };
    let (kind, dirs) = dirs.split_once(':').unwrap();
    let (mine, other) = dirs.split_once(':').unwrap();
    let outcome = match kind {
        "helper" => sandbox::landlock::restrict(Profile::Plain).unwrap(),
        _ => sandbox::landlock::restrict_to_removal(&[mine.into()]).unwrap(),
    };
    println!("OUTCOME {outcome:?}");
    for dir in [mine, other] {
        match std::fs::remove_file(format!("{dir}/victim")) {
            Ok(()) => println!("REMOVE {dir} allowed"),
            Err(e) => println!("REMOVE {dir} denied {}", e.raw_os_error().unwrap_or(0)),
        }
    }
    match std::fs::read_to_string(format!("{mine}/readable")) {
        Ok(_) => println!("READ allowed"),
        Err(e) => println!("READ denied {}", e.raw_os_error().unwrap_or(0)),
    }
}

/// Issue 22, item 5: Landlock grants removal per directory tree, and the
/// helper used to hold it for its socket's directory (with the default
/// path, all of /run: other services' sockets and pidfiles too). Now the
/// helper's ruleset removes nothing anywhere; the janitor's removes in the
/// directories it was given only, and reads nothing.
/// Not under qemu-user: qemu-user implements neither seccomp(2) nor Landlock.
#[test]
fn only_the_janitor_may_remove_files_and_only_in_its_directories() {
    for (kind, mine_removed) in [("helper", false), ("janitor", true)] {
        let mine = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        for d in [mine.path(), other.path()] {
            std::fs::write(d.join("victim"), b"x").unwrap();
        }
        std::fs::write(mine.path().join("readable"), b"x").unwrap();
        let mode = format!(
            "removal:{kind}:{}:{}",
            mine.path().display(),
            other.path().display()
        );
        let stdout = child_stdout("landlock_removal_child", &mode);
        assert!(stdout.contains("OUTCOME Enforced"), "{stdout}");
        assert_eq!(
            mine.path().join("victim").exists(),
            !mine_removed,
            "{kind}:\n{stdout}"
        );
        assert!(other.path().join("victim").exists(), "{kind}:\n{stdout}");
        assert!(stdout.contains("READ denied 13"), "{kind}:\n{stdout}");
    }
}

fn status_of(pid: u32) -> String {
    procfs::status(pid)
}

/// Not under qemu-user: qemu-user implements neither seccomp(2) nor Landlock.
#[test]
fn running_helper_is_under_seccomp_and_no_new_privs() {
    let h = Helper::ours(&[]);
    h.assert_serving();
    let s = status_of(h.pid());
    assert!(s.contains("Seccomp:\t2"), "{s}");
    assert!(s.contains("NoNewPrivs:\t1"), "{s}");
    // Every thread, including pool threads started later.
    for task in std::fs::read_dir(format!("/proc/{}/task", h.pid())).unwrap() {
        let t = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        assert!(t.contains("Seccomp:\t2"), "{t}");
    }
    // Each kind of thread narrows the process's filter for itself: the
    // event loop (the main thread) and the SG_IO workers stack a second
    // one; the watchdog, which starts workers, keeps the process's.
    let threads: std::collections::BTreeSet<_> = procfs::seccomp_filters_by_thread(h.pid())
        .into_iter()
        .collect();
    assert_eq!(
        threads,
        [
            ("pr-helper".to_string(), 2),
            ("prh-sgio".to_string(), 2),
            ("prh-sgio-watch".to_string(), 1)
        ]
        .into_iter()
        .collect(),
        "thread names and their filters"
    );
    let h = Helper::ours(&["--seccomp", "false"]);
    h.assert_serving();
    assert!(status_of(h.pid()).contains("Seccomp:\t0"));
    assert!(procfs::seccomp_filters_by_thread(h.pid())
        .iter()
        .all(|(_, n)| *n == 0));
    // Log mode: a filter is installed (the kernel logs what it does not
    // list) and start-up says that it does not sandbox.
    let h = Helper::ours(&["--seccomp", "log"]);
    h.assert_serving();
    assert!(status_of(h.pid()).contains("Seccomp:\t2"));
    wait_log(&h, "seccomp: log mode");
}

/// A client process running as `uid`/`gid` does the handshake; true if the
/// helper served it.
fn handshake_as(socket: &std::path::Path, uid: u32, gid: u32) -> bool {
    let out = Command::new(our_binary())
        .args(["ping", "-k"])
        .arg(socket)
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap();
    out.status.success()
}

fn wait_log(h: &Helper, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = h.stderr();
        if let Some(line) = s.lines().find(|l| l.contains(text)) {
            return line.to_string();
        }
        assert!(Instant::now() < deadline, "no {text:?} in:\n{s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn access_policy_by_uid_and_gid() {
    let h = Helper::ours(&["--socket-mode", "0666", "--allowed-uids", "0,107"]);
    // The socket directory must let nobody reach the socket.
    std::fs::set_permissions(
        h.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    assert!(handshake_as(&h.socket, 0, 0), "root is allowed");
    assert!(!handshake_as(&h.socket, 65534, 65534), "nobody is refused");
    let line = wait_log(&h, "refused by the access policy");
    assert!(
        line.contains("uid 65534") && line.contains("gid 65534") && line.contains("warning"),
        "{line}"
    );
    // Refused before the handshake: the peer reads EOF, no feature word.
    h.assert_serving();

    let h = Helper::ours(&["--socket-mode", "0666", "--allowed-gids", "65534"]);
    std::fs::set_permissions(
        h.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    assert!(handshake_as(&h.socket, 65534, 65534), "gid 65534 allowed");
    assert!(!handshake_as(&h.socket, 0, 0), "gid 0 refused");
    wait_log(&h, "uid 0, gid 0");

    // Default: no policy, socket permissions decide.
    let h = Helper::ours(&["--socket-mode", "0666"]);
    std::fs::set_permissions(
        h.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    assert!(handshake_as(&h.socket, 65534, 65534));
    let f = common::fds::rw_file(h.dir.path());
    let mut c = h.client();
    assert_eq!(
        c.execute(&pr_helper::scsi::pr::pr_in_cdb(0, 8), f.as_fd(), &[])
            .unwrap()
            .header
            .status,
        2
    );
}
