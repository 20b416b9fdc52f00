//! `pr-helper paths` on the flows suite's real map (issue 20): after the
//! `migrate` hand-over, the tool must say which path of the map lost its
//! registration. Run on the real two-path map right after a flow, before
//! the paths are put back:
//! - mpathpersist 0.9.4 against multipathd 0.9.4 leaves one path
//!   registered (the flows suite checks that on the device): `paths` must
//!   exit 3 (disagree) and name the unregistered path;
//! - pr-helper on unstable's library (against either multipathd) leaves
//!   both registered: `paths` must exit 0 and show the key on both.
//!
//! The expectation comes from the device itself (READ FULL STATUS through
//! the source's nexus, the one the flows read), not from the flow's name:
//! the check is of the tool, not of the library.

use std::path::Path;
use std::process::Command;

use crate::mpath_flows::{observe_keys, Bed, Daemon, KEY};
use crate::result;

/// Exit code of `pr-helper paths` for disagreeing paths.
const DISAGREE: i32 = 3;

/// What the tool is expected to say.
enum Expect {
    /// Both paths registered with the flows' key.
    Consistent,
    /// One path registered, the other not.
    Disagree,
}

/// Called after every flow (before the paths are put back); checks the
/// `migrate` flow of the subjects above.
pub(crate) fn after_flow(flow: &str, daemon: Daemon, subject: &str, bed: &Bed) {
    let expect = match (flow, daemon, subject) {
        ("migrate", Daemon::Bookworm, "mpathpersist-0.9.4") => Expect::Disagree,
        ("migrate", _, "pr-helper-sid") => Expect::Consistent,
        _ => return,
    };
    result(
        &format!("flows/paths/migrate/{}/{subject}", daemon.name()),
        check(&expect, bed),
    );
}

/// `pr-helper paths ARGS`: exit code and standard output; every line of
/// both is also printed (PATHS-OUTPUT), for the console.
fn paths(map: &Path, json: bool) -> Result<(i32, String), String> {
    let mut cmd = Command::new("/bin/pr-helper");
    cmd.arg("paths").arg(map);
    if json {
        cmd.arg("--json");
    }
    let o = cmd
        .output()
        .map_err(|e| format!("/bin/pr-helper paths: {e}"))?;
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    for line in stdout
        .lines()
        .chain(String::from_utf8_lossy(&o.stderr).lines())
    {
        println!("PATHS-OUTPUT {line}");
    }
    Ok((o.status.code().unwrap_or(-1), stdout))
}

fn name(dev: &Path) -> String {
    dev.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

fn check(expect: &Expect, bed: &Bed) -> Result<(), String> {
    let names = [name(&bed.lun.paths[0].block), name(&bed.lun.paths[1].block)];
    let keys = observe_keys(&bed.source.sg)?;
    let key = format!("0x{KEY:x}");
    let (code, text) = paths(&bed.map, false)?;
    let (json_code, json) = paths(&bed.map, true)?;
    let json: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| format!("--json output: {e}"))?;
    if json_code != code {
        return Err(format!("exit {code} for the text, {json_code} with --json"));
    }
    let path_line = |n: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(n))
            .unwrap_or_default()
            .to_string()
    };
    let json_path = |n: &str| {
        json["paths"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == n))
            .cloned()
            .unwrap_or_default()
    };
    match expect {
        Expect::Consistent => {
            if keys[..2] != [Some(KEY), Some(KEY)] {
                return Err(format!(
                    "the device shows {keys:x?}: not both paths registered"
                ));
            }
            if code != 0 {
                return Err(format!("exit {code}, want 0: {text}"));
            }
            for n in &names {
                if !path_line(n).contains(&format!("key {key}")) {
                    return Err(format!("{n}: no key {key} in {:?}", path_line(n)));
                }
                if json_path(n)["key"] != key.as_str() {
                    return Err(format!("--json: {n}: {}", json_path(n)));
                }
            }
            let verdict = format!("verdict: consistent (every active path holds {key})");
            if !text.contains(&verdict) || json["verdict"] != "consistent" {
                return Err(format!("no {verdict:?} in {text}"));
            }
        }
        Expect::Disagree => {
            let (lost, kept) = match keys[..2] {
                [None, Some(KEY)] => (&names[0], &names[1]),
                [Some(KEY), None] => (&names[1], &names[0]),
                _ => {
                    return Err(format!(
                        "the device shows {keys:x?}: not one path registered"
                    ))
                }
            };
            if code != DISAGREE {
                return Err(format!("exit {code}, want {DISAGREE}: {text}"));
            }
            if !path_line(lost).contains("not registered")
                || !path_line(kept).contains(&format!("key {key}"))
            {
                return Err(format!("path lines: {text}"));
            }
            let reason = format!("{lost} not registered while {kept} holds {key}");
            if !text.contains(&format!("verdict: DISAGREE: {reason}")) {
                return Err(format!("no {reason:?} in {text}"));
            }
            if json["verdict"] != "disagree"
                || json_path(lost)["registered"] != false
                || json["reasons"][0] != reason.as_str()
            {
                return Err(format!("--json: {json}"));
            }
        }
    }
    Ok(())
}
