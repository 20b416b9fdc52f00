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
    let status = std::fs::read_to_string(format!("/proc/{}/status", h.pid())).unwrap();
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
