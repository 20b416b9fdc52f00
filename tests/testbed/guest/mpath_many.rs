//! READ FULL STATUS on a multipath map with many registrations (D14) and
//! O_PATH fds on a map (D28), run by the multipath suite on its map.
//!
//! libmpathpersist decodes READ FULL STATUS into 270-byte structures in an
//! 8192-byte buffer with no bound: from the 31st registration it overwrites
//! its own pointer array, from about 41 it writes past the end of the
//! caller's buffer. pr-helper answers READ FULL STATUS on a map with SG_IO
//! on the map instead; the reply must be byte for byte what the device
//! gives on a path (sg_persist and sg_raw), here with 42 registrations:
//! 40 more I_T nexuses (tcm_loop targets with their own initiator names on
//! the same backstore) registered directly, plus the map's two paths
//! registered through the helper.

use std::path::{Path, PathBuf};
use std::process::Command;

use pr_helper::scsi::pr::{self, pr_in_cdb, pr_out_cdb, sa_in, sa_out, ParamList};

use crate::devices::{o_path_read_keys, refused};
use crate::exec::{self, Via};
use crate::lio::{self, Lun};
use crate::result;

/// Extra I_T nexuses beyond the map's two.
const EXTRA: usize = 40;
const MAP_KEY: u64 = 0x0000_4d50_0000_0001;

fn check(name: &str, r: Result<(), String>) {
    result(&format!("mpath/{name}"), r);
}

/// Parses `sg_persist -H` output: lines of an offset and up to 16 hex
/// bytes (any ASCII column after two or more spaces is ignored).
fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim_end();
        let body = line.trim_start();
        let Some((offset, rest)) = body.split_once(char::is_whitespace) else {
            continue;
        };
        let Ok(offset) = usize::from_str_radix(offset, 16) else {
            continue;
        };
        if offset != out.len() {
            continue;
        }
        // The hex column ends where a run of 2+ spaces starts the ASCII one.
        let hex_part = rest.trim_start();
        let hex_part = match hex_part.find("   ") {
            Some(i) => &hex_part[..i],
            None => hex_part,
        };
        for tok in hex_part.split_whitespace().take(16) {
            if tok.len() != 2 {
                break;
            }
            match u8::from_str_radix(tok, 16) {
                Ok(b) => out.push(b),
                Err(_) => break,
            }
        }
    }
    if out.is_empty() {
        Err(format!("no hex bytes in sg_persist output: {text}"))
    } else {
        Ok(out)
    }
}

fn sg_persist_full_status(dev: &Path) -> Result<Vec<u8>, String> {
    let o = Command::new("sg_persist")
        .args(["-n", "-i", "-s", "-H", "--maxlen=8192"])
        .arg(dev)
        .output()
        .map_err(|e| format!("sg_persist: {e}"))?;
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        return Err(format!(
            "sg_persist failed: {text}{}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let hex = parse_hex(&text)?;
    // sg_persist prints the header as text ("PR generation=0x..") and the
    // descriptors in hex; rebuild the reply it received.
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    if hex.len() >= 8 && be32(&hex[4..8]) == hex.len() - 8 {
        return Ok(hex);
    }
    let generation = text
        .split("generation=0x")
        .nth(1)
        .map(|r| {
            r.chars()
                .take_while(char::is_ascii_hexdigit)
                .collect::<String>()
        })
        .and_then(|g| u32::from_str_radix(&g, 16).ok())
        .ok_or_else(|| format!("no PR generation in sg_persist output: {text}"))?;
    let mut reply = generation.to_be_bytes().to_vec();
    reply.extend_from_slice(&(hex.len() as u32).to_be_bytes());
    reply.extend_from_slice(&hex);
    Ok(reply)
}

/// Runs the scenario on `map` (over `lun`, LIO LUN number `index`), served
/// by the mpath build at `socket`. Leaves no registration behind.
pub fn run(index: usize, map: &Path, lun: &Lun, socket: &str) {
    if let Err(e) = scenario(index, map, lun, socket) {
        check("many-registrations-setup", Err(e));
    }
}

fn scenario(index: usize, map: &Path, lun: &Lun, socket: &str) -> Result<(), String> {
    // D28: an O_PATH fd on the map is refused like on any device (the
    // library would open the paths itself and answer).
    check(
        "o-path-on-map-refused",
        o_path_read_keys(socket, map).and_then(|o| refused(Ok(o))),
    );

    let mut extra: Vec<PathBuf> = Vec::new();
    for i in 0..EXTRA {
        let initiator = format!("naa.5001405c{:08x}", i + 1);
        let p = lio::add_initiator(index, 2 + i, &initiator)?;
        extra.push(p.sg);
    }
    for (i, sg) in extra.iter().enumerate() {
        let key = 0x0000_4d50_0001_0000u64 + i as u64;
        let o = exec::run(
            Via::Direct,
            sg,
            &pr_out_cdb(sa_out::REGISTER, 0, 0, 24),
            &ParamList {
                sa_key: key,
                ..Default::default()
            }
            .encode(),
            false,
        )?;
        if o.status != 0 {
            return Err(format!("REGISTER on {}: {}", sg.display(), o.show()));
        }
    }
    let p = ParamList {
        sa_key: MAP_KEY,
        ..Default::default()
    }
    .encode();
    let o = exec::run_socket(
        socket,
        map,
        &pr_out_cdb(sa_out::REGISTER, 0, 0, 24),
        &p,
        false,
    )?;
    if o.status != 0 {
        return Err(format!("REGISTER on the map: {}", o.show()));
    }
    let path_sg = &lun.paths[1].sg;
    // The device's own answer, through a path: sg_persist and sg_raw.
    let reference = sg_persist_full_status(path_sg)?;
    let raw = exec::run(
        Via::Direct,
        path_sg,
        &pr_in_cdb(sa_in::READ_FULL_STATUS, 8192),
        &[],
        false,
    )?;
    let decoded = pr::decode::full_status(&raw.data).map_err(|e| e.to_string())?;
    println!(
        "FIGURE mpath-full-status-registrations {}",
        decoded.registrations.len()
    );
    check(
        "full-status-42-registrations-present",
        if decoded.registrations.len() == EXTRA + 2 && reference == raw.data {
            Ok(())
        } else {
            Err(format!(
                "{} registrations; sg_persist {} bytes, sg_raw {} bytes",
                decoded.registrations.len(),
                reference.len(),
                raw.data.len()
            ))
        },
    );
    // Through the helper on the map, at several allocation lengths: the
    // device's bytes exactly, as a path gives them at the same allocation
    // length (LIO reports the ADDITIONAL LENGTH of what fits, so a short
    // reply is not a prefix of the long one); at 8192, sg_persist's too.
    for alloc in [8192u16, 2024, 100, 8] {
        let ours = exec::run_socket(
            socket,
            map,
            &pr_in_cdb(sa_in::READ_FULL_STATUS, alloc),
            &[],
            false,
        );
        let direct = exec::run(
            Via::Direct,
            path_sg,
            &pr_in_cdb(sa_in::READ_FULL_STATUS, alloc),
            &[],
            false,
        )?;
        if alloc == 8192 && direct.data != reference {
            return Err("sg_raw and sg_persist disagree".into());
        }
        let want = &direct.data[..];
        check(
            &format!("full-status-42-byte-exact-alloc-{alloc}"),
            match ours {
                Ok(o) if o.status == 0 && o.data == want => Ok(()),
                Ok(o) => Err(format!(
                    "helper {} vs device {} bytes {}; helper: {}",
                    o.data.len(),
                    want.len(),
                    exec::hex(&want[..want.len().min(64)]),
                    o.show()
                )),
                Err(e) => Err(e),
            },
        );
    }
    // The helper is still alive and well.
    check(
        "alive-after-full-status",
        exec::run_socket(socket, map, &pr_in_cdb(sa_in::READ_KEYS, 64), &[], false).and_then(|o| {
            if o.status == 0 {
                Ok(())
            } else {
                Err(o.show())
            }
        }),
    );
    // Clean up: CLEAR through the map removes every registration.
    let clear = ParamList {
        key: MAP_KEY,
        ..Default::default()
    }
    .encode();
    let o = exec::run_socket(
        socket,
        map,
        &pr_out_cdb(sa_out::CLEAR, 0, 0, 24),
        &clear,
        false,
    )?;
    check(
        "many-registrations-cleared",
        if o.status == 0 { Ok(()) } else { Err(o.show()) },
    );
    Ok(())
}
