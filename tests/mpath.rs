//! The multipath build on the host: start-up with and without multipath
//! support, the capabilities it keeps, and D7 (a clear start-up error when
//! device-mapper is unusable). The multipath behaviour itself is tested on
//! a real map in the VM test bed (tests/testbed.rs).
#![cfg(feature = "mpath")]

mod common;

use std::process::Command;

use common::*;

/// Runs pr-helper where /dev/mapper/control is unusable: it does not exist
/// on our hosts (no device-mapper in their kernel); where it does, a mount
/// namespace covers it with /dev/null.
fn without_device_mapper(args: &[&str]) -> std::process::Output {
    let bin = our_binary();
    let script = format!(
        "[ -e /dev/mapper/control ] && mount --bind /dev/null /dev/mapper/control; exec {} \"$@\"",
        bin.display()
    );
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
        .args(args)
        .output()
        .expect("unshare")
}

#[test]
fn unusable_device_mapper_is_a_clear_start_up_error_d7() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("m.sock");
    let out = without_device_mapper(&["-k", socket.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("/dev/mapper/control") && e.contains("multipath = false"),
        "{e}"
    );
    assert!(!socket.exists(), "no socket before multipath is ready");
}

#[test]
fn multipath_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("m.sock");
    let mut cmd = Command::new(our_binary());
    cmd.arg("-k").arg(&socket).args(["--multipath", "false"]);
    let mut h = Helper::spawn(Which::Ours, cmd, dir, socket);
    h.assert_serving();
    let status = procfs::status(h.pid());
    assert!(
        status.contains("CapEff:\t0000000000020000"),
        "only CAP_SYS_RAWIO:\n{status}"
    );
    assert!(h.terminate().success());
}

#[test]
fn config_reports_multipath_on_by_default() {
    let out = Command::new(our_binary())
        .arg("--print-config")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("multipath = true  # built-in default"),
        "{text}"
    );
}

/// D33: multipath works only as uid 0 (/dev/mapper/control is root's,
/// multipathd takes its commands only from root). A helper that would run
/// as another user is refused before it listens; it used to start, then
/// fail on its first multipath request. The check comes before
/// device-mapper is opened, so it holds on hosts without it too.
#[test]
fn multipath_as_another_user_is_refused_at_start_up_d33() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("m.sock");
    let k = socket.to_str().unwrap();
    let out = without_device_mapper(&["-k", k, "-u", "65534", "-g", "65534"]);
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("multipath needs uid 0")
            && e.contains("-u/--user 65534 would switch to uid 65534")
            && e.contains("--multipath false"),
        "{e}"
    );
    assert!(!socket.exists());
    // Started as another user (a unit's DynamicUser=).
    let dir = shared_tempdir();
    let socket = dir.path().join("m.sock");
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(our_binary())
        .arg("-k")
        .arg(&socket)
        .output()
        .expect("setpriv");
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("multipath needs uid 0, but it runs as uid 65534"),
        "{e}"
    );
    assert!(!socket.exists());
}

/// libmpathpersist reaches multipathd through pr-helper's own
/// `mpath_connect` (src/mpath/multipathd.rs): the dynamic linker binds the
/// library's call to the binary's export, not to libmpathcmd. Checked with
/// the host's library (Debian 12's multipath-tools 0.9.4) and with
/// unstable's 0.15.1 (the test bed's unstable root, which setup fetches),
/// loaded through that root's own dynamic loader. Before the export, both
/// bound to libmpathcmd.so.0.
#[test]
fn libmpathpersist_connects_through_our_mpath_connect() {
    let sid = std::path::Path::new(
        &std::env::var("PRH_TEST_CACHE").unwrap_or_else(|_| "/var/cache/pr-helper".into()),
    )
    .join("testbed-sid/root");
    assert!(
        sid.join("usr/lib/libmpathpersist.so.0").exists(),
        "{} has no libmpathpersist (run tests/testbed/fetch-sid.sh)",
        sid.display()
    );
    let libs = [
        "usr/lib",
        "usr/lib/x86_64-linux-gnu",
        "lib/x86_64-linux-gnu",
    ]
    .map(|d| sid.join(d).display().to_string())
    .join(":");
    let host = Command::new(our_binary())
        .arg("--version")
        .output_bindings();
    let unstable = Command::new(sid.join("lib64/ld-linux-x86-64.so.2"))
        .args(["--library-path", &libs])
        .arg(our_binary())
        .arg("--version")
        .output_bindings();
    for (library, bindings) in [("0.9.4", host), ("0.15.1", unstable)] {
        let line = bindings
            .lines()
            .find(|l| l.contains("libmpathpersist.so.0") && l.contains("`mpath_connect'"))
            .unwrap_or_else(|| panic!("{library}: no binding of mpath_connect:\n{bindings}"));
        assert!(
            line.contains(&format!("to {}", our_binary().display())),
            "{library}: libmpathpersist's mpath_connect is not ours: {line}"
        );
    }
}

trait Bindings {
    /// The dynamic linker's symbol bindings of a run (all at start-up).
    fn output_bindings(&mut self) -> String;
}

impl Bindings for Command {
    fn output_bindings(&mut self) -> String {
        let out = self
            .env("LD_DEBUG", "bindings")
            .env("LD_BIND_NOW", "1")
            .output()
            .expect("run");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// A listener on `name` (a path, or `@` and an abstract name) owned by
/// `uid`: prints "ready", then for each connection the number of bytes it
/// received before the peer closed.
fn listener_as(uid: u32, name: &str) -> std::process::Child {
    use std::io::BufRead;
    let script = r#"use Socket; my $n = shift; $n =~ s/^@/\0/;
        socket(S, AF_UNIX, SOCK_STREAM, 0) or die; bind(S, pack_sockaddr_un($n)) or die "bind: $!";
        listen(S, 5) or die; $| = 1; print "ready\n";
        while (accept(my $c, S)) { my $all = ''; while (sysread($c, my $b, 4096)) { $all .= $b } print length($all), "\n" }"#;
    let mut child = Command::new("setpriv")
        .args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            &uid.to_string(),
            "--clear-groups",
        ])
        .args(["perl", "-e", script, name])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv perl");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n", "listener as uid {uid} on {name}");
    child
}

/// pr-helper's `mpath_connect` keeps a connection only when multipathd's
/// side is root: a socket of QEMU's uid 107 (KubeVirt's shared directory
/// is theirs) is refused, on a pathname and on the abstract name, and
/// receives nothing; root's is used.
#[test]
fn multipathd_socket_of_another_user_is_refused() {
    use pr_helper::mpath::multipathd::{connect_name, ConnectError};
    use std::io::BufRead;
    let dir = shared_tempdir();
    let planted = dir.path().join("multipathd.socket");
    let abstract_name = format!("@prh-test-multipathd-{}", std::process::id());
    for name in [planted.to_str().unwrap(), &abstract_name] {
        let mut fake = listener_as(107, name);
        match connect_name(name) {
            Err(ConnectError::NotRoot { uid: 107, .. }) => {}
            other => panic!("{name}: {other:?}"),
        }
        let mut received = String::new();
        std::io::BufReader::new(fake.stdout.as_mut().unwrap())
            .read_line(&mut received)
            .unwrap();
        assert_eq!(
            received, "0\n",
            "the uid-107 listener on {name} received data"
        );
        let _ = fake.kill();
        let _ = fake.wait();
    }
    let real = dir.path().join("root.socket");
    let mut root = listener_as(0, real.to_str().unwrap());
    assert!(connect_name(real.to_str().unwrap()).is_ok());
    let _ = root.kill();
    let _ = root.wait();
}
