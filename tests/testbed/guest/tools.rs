//! The operator tools on a real disk: `pr-helper persist` through the helper
//! agrees with `sg_persist` on the device for every service action, and
//! `pr-helper probe` reports LIO's capabilities (and refuses a non-SCSI
//! device).

use std::process::Command;

use crate::exec::OURS_SOCKET;
use crate::{lio, result};

struct Out {
    code: Option<i32>,
    text: String,
}

fn run(program: &str, args: &[&str]) -> Out {
    match Command::new(program).args(args).output() {
        Ok(o) => Out {
            code: o.status.code(),
            text: String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr),
        },
        Err(e) => Out {
            code: None,
            text: format!("cannot run {program}: {e}"),
        },
    }
}

fn persist(dev: &str, args: &[&str]) -> Out {
    let mut full = vec!["persist", "-k", OURS_SOCKET, "-d", dev];
    full.extend_from_slice(args);
    run("/bin/pr-helper", &full)
}

fn sg_persist(dev: &str, args: &[&str]) -> Out {
    let mut full = vec!["-n"];
    full.extend_from_slice(args);
    full.push(dev);
    run("sg_persist", &full)
}

/// The lines both tools print for the decoded data (trimmed, without the
/// ones only one of them prints).
fn decoded(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("PR generation")
                || l.starts_with("0x")
                || l.starts_with("Key=")
                || l.starts_with("scope:")
                || l.starts_with("Relative port address")
                || l.contains("Reservation holder")
                || l.starts_with("not reservation holder")
                || l.starts_with("All target ports bit")
        })
        .map(String::from)
        .collect()
}

fn compare_in(name: &str, dev: &str, ours_flag: &str, sg_flag: &str) {
    let ours = persist(dev, &[ours_flag]);
    let theirs = sg_persist(dev, &["-i", sg_flag]);
    let (a, b) = (decoded(&ours.text), decoded(&theirs.text));
    result(
        &format!("tools/persist-{name}"),
        if ours.code == Some(0) && theirs.code == Some(0) && a == b && !a.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "pr-helper persist (exit {:?}): {a:?} / sg_persist (exit {:?}): {b:?}",
                ours.code, theirs.code
            ))
        },
    );
}

/// PR OUT through `persist`, then the state read by sg_persist must show
/// `expect_in_keys`/`expect_in_resv` (substrings).
fn out(name: &str, dev: &str, args: &[&str], exit: i32, keys_has: &str, resv_has: &str) {
    let o = persist(dev, args);
    let keys = sg_persist(dev, &["-i", "-k"]).text;
    let resv = sg_persist(dev, &["-i", "-r"]).text;
    let ok = o.code == Some(exit) && keys.contains(keys_has) && resv.contains(resv_has);
    result(
        &format!("tools/persist-{name}"),
        if ok {
            Ok(())
        } else {
            Err(format!(
                "exit {:?} (want {exit}): {} | keys: {} | reservation: {}",
                o.code,
                o.text.trim(),
                keys.trim(),
                resv.trim()
            ))
        },
    );
}

/// Runs the suite.
pub fn run_suite(next_lun: &mut usize) {
    let lun = match lio::create(*next_lun) {
        Ok(l) => l,
        Err(e) => return result("tools/lun", Err(e)),
    };
    *next_lun += 1;
    let a = lun.paths[0].block.display().to_string();
    let b = lun.paths[1].sg.display().to_string();
    let (a, b) = (a.as_str(), b.as_str());

    out(
        "register",
        a,
        &["--register", "--sa-key", "0xaa01"],
        0,
        "0xaa01",
        "NO reservation",
    );
    out(
        "register-ignore",
        b,
        &["--register-ignore", "--sa-key", "0xbb01"],
        0,
        "0xbb01",
        "NO reservation",
    );
    out(
        "reserve",
        a,
        &["--reserve", "--key", "aa01", "--type", "5"],
        0,
        "0xaa01",
        "Key=0xaa01",
    );
    out(
        "reserve-conflict",
        b,
        &["--reserve", "--key", "bb01", "--type", "5"],
        24,
        "0xbb01",
        "Key=0xaa01",
    );
    compare_in("read-keys", a, "--read-keys", "-k");
    compare_in("read-reservation", a, "--read-reservation", "-r");
    compare_in("read-full-status", b, "--read-full-status", "-s");
    let caps = persist(a, &["--report-capabilities"]);
    let sg_caps = sg_persist(a, &["-i", "-c"]);
    let types = |t: &str| -> Vec<String> {
        t.lines()
            .map(str::trim)
            .filter(|l| {
                l.ends_with(": 1")
                    && (l.starts_with("Write Exclusive") || l.starts_with("Exclusive Access"))
            })
            .map(|l| l.to_lowercase().replace(' ', ""))
            .collect()
    };
    result(
        "tools/persist-report-capabilities",
        if caps.code == Some(0)
            && types(&caps.text).len() == 6
            && types(&caps.text).len() == types(&sg_caps.text).len()
        {
            Ok(())
        } else {
            Err(format!("{} vs {}", caps.text, sg_caps.text))
        },
    );
    let json = persist(a, &["--read-keys", "--json"]);
    result(
        "tools/persist-json",
        if json.code == Some(0) && json.text.contains("\"keys\":[\"0xaa01\",\"0xbb01\"]") {
            Ok(())
        } else {
            Err(json.text)
        },
    );
    let raw = persist(a, &["--read-keys", "--raw"]);
    result(
        "tools/persist-raw",
        if raw.code == Some(0)
            && raw.text.trim().starts_with("00000000000000")
            && raw
                .text
                .trim()
                .ends_with("000000000000aa01000000000000bb01")
        {
            Ok(())
        } else {
            Err(raw.text)
        },
    );
    out(
        "preempt",
        b,
        &[
            "--preempt",
            "--key",
            "bb01",
            "--sa-key",
            "aa01",
            "--type",
            "5",
        ],
        0,
        "0xbb01",
        "Key=0xbb01",
    );
    // A was preempted: its next command reports a unit attention (exit 6).
    out(
        "unit-attention",
        a,
        &["--read-keys"],
        6,
        "0xbb01",
        "Key=0xbb01",
    );
    out(
        "register-again",
        a,
        &["--register-ignore", "--sa-key", "aa02"],
        0,
        "0xaa02",
        "Key=0xbb01",
    );
    out(
        "preempt-abort-conflict",
        a,
        &[
            "--preempt-abort",
            "--key",
            "aa77",
            "--sa-key",
            "bb01",
            "--type",
            "5",
        ],
        24,
        "0xaa02",
        "Key=0xbb01",
    );
    out(
        "unregister",
        a,
        &["--register", "--key", "aa02", "--sa-key", "0"],
        0,
        "0xbb01",
        "Key=0xbb01",
    );
    out(
        "register-move",
        b,
        &[
            "--register-move",
            "--key",
            "bb01",
            "--sa-key",
            "aa03",
            "--type",
            "5",
            "--relative-target-port",
            "1",
            "--transport-id",
            "sas,5001405bbbbbbbb1",
        ],
        0,
        "0xaa03",
        "Key=0xaa03",
    );
    out(
        "release",
        a,
        &["--release", "--key", "aa03", "--type", "5"],
        0,
        "0xbb01",
        "NO reservation",
    );
    // B, a registrant, was told RESERVATIONS RELEASED; clear that first.
    let _ = run("sg_turs", &[b]);
    out(
        "clear",
        a,
        &["--clear", "--key", "aa03"],
        0,
        "NO registered",
        "NO reservation",
    );
    out(
        "read-only-refused",
        a,
        &["--register", "--sa-key", "1", "--read-only"],
        5,
        "NO registered",
        "NO reservation",
    );

    // probe: directly via SG_IO on the LIO disk, and on a non-SCSI device.
    let p = run("/bin/pr-helper", &["probe", a]);
    result(
        "tools/probe-lio",
        if p.code == Some(0)
            && p.text.contains("supported")
            && p.text.contains("1 (Write Exclusive)")
            && p.text.contains("8 (Exclusive Access, all registrants)")
        {
            Ok(())
        } else {
            Err(p.text)
        },
    );
    let p = run("/bin/pr-helper", &["probe", "/dev/zero"]);
    result(
        "tools/probe-non-scsi",
        if p.code == Some(1) && p.text.contains("NOT supported") {
            Ok(())
        } else {
            Err(p.text)
        },
    );
    let p = run("/bin/pr-helper", &["ping", "-k", OURS_SOCKET]);
    result(
        "tools/ping-live",
        if p.code == Some(0) {
            Ok(())
        } else {
            Err(p.text)
        },
    );
    let p = run("/bin/pr-helper", &["ping", "-k", "/run/nobody-here.sock"]);
    result(
        "tools/ping-dead",
        if p.code == Some(1) {
            Ok(())
        } else {
            Err(p.text)
        },
    );
}
