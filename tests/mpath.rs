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
