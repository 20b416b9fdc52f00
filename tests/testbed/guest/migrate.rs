//! The reservation hand-over of QEMU 11's `migrate-pr` on a multipath map
//! (issue 20), sent without QEMU: the destination's PR manager sends PR OUT
//! REGISTER (SARK = the key) and then PREEMPT (RK = SARK = the key, the
//! reservation's type), moving the reservation from the source host's I_T
//! nexus to its own. On a multipath map that PREEMPT of the map's own key
//! also removes the registrations of the map's other paths, unless the
//! library registers them again (multipath-tools 0.13.0, "reregister keys
//! when self preempting").
//!
//! One LUN with three nexuses: the source (a third tcm_loop initiator, not
//! in any map) and the destination's two paths (a map). Every subject runs
//! the same sequence from the same state:
//! - mpathpersist 0.9.4 (bookworm) and pr-helper-mpath with libmpathpersist
//!   0.9.4, and qemu-pr-helper 10.0.2 (linked with the same library);
//! - mpathpersist from Debian unstable (0.15.1 when this was written) and
//!   the same pr-helper-mpath binary run with unstable's libraries, both in
//!   the unstable root (/sid, chroot), against bookworm's multipathd (the
//!   mix a container with a current library meets on a Debian 12 or RHEL 9
//!   node).
//!
//! Afterwards the device is asked directly (READ FULL STATUS on a path, a
//! WRITE(10) on each destination path): which nexuses hold the key, who
//! holds the reservation with which type, whether the writes succeed.
//! pr-helper must give what mpathpersist with the same library gives, and
//! with the current library that is the hand-over QEMU needs: both
//! destination paths registered, the source not, type kept, both writes
//! good.

use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use pr_helper::scsi::pr::{self, pr_in_cdb, pr_out_cdb, sa_in, sa_out, ParamList};
use pr_helper::scsi::sgio::{self, DataPhase};

use crate::exec::{self, Via};
use crate::mpath::{self, run, wait_for};
use crate::{lio, result};

/// The source host's initiator port (a third nexus on the LUN).
const SOURCE_INITIATOR: &str = "naa.5001405bbbbbbbb3";
const SOURCE_SAS: u64 = 0x5001405bbbbbbbb3;
/// The guest's reservation key.
const KEY: u64 = 0x00c0_ffee_0000_0a11;
/// Write Exclusive - Registrants Only.
const TYPE: u8 = 5;
/// The unstable root (tests/testbed/build-initramfs.sh).
const SID: &str = "/sid";
const SOCKET_BOOKWORM: &str = "/run/prh-migrate-bookworm.sock";
const SOCKET_SID: &str = "/run/prh-migrate-sid.sock";
/// A qemu-pr-helper started once multipath.conf is written (the one every
/// suite uses starts at boot, before it: the library reads the
/// configuration once, at initialisation).
const SOCKET_REFERENCE: &str = "/run/prh-migrate-qemu-pr-helper.sock";

fn check(name: &str, r: Result<(), String>) {
    result(&format!("migrate/{name}"), r);
}

/// Who sends the destination's REGISTER + PREEMPT.
#[derive(Clone, Copy)]
enum Subject {
    /// mpathpersist, bookworm's or (`sid`) unstable's.
    Mpathpersist { sid: bool },
    /// pr-helper-mpath on `socket`.
    Helper { socket: &'static str },
    /// qemu-pr-helper 10.0.2.
    Reference,
}

/// What the device reports after the hand-over.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    /// Destination path A, destination path B, source: registered with KEY.
    registered: [bool; 3],
    /// The reservation: holder's key and type.
    reservation: Option<(u64, u8)>,
    /// WRITE(10) status through path A and path B (0 good, 0x18
    /// RESERVATION CONFLICT).
    writes: [u8; 2],
}

impl State {
    /// The hand-over QEMU needs.
    fn wanted() -> State {
        State {
            registered: [true, true, false],
            reservation: Some((KEY, TYPE)),
            writes: [0, 0],
        }
    }

    fn show(&self) -> String {
        let mark = |b: bool| if b { "registered" } else { "-" };
        format!(
            "A {} B {} source {}; reservation {}; WRITE A {:#04x} B {:#04x}",
            mark(self.registered[0]),
            mark(self.registered[1]),
            mark(self.registered[2]),
            match self.reservation {
                Some((k, t)) => format!("{k:#x} type {t}"),
                None => "none".into(),
            },
            self.writes[0],
            self.writes[1]
        )
    }
}

/// Runs the suite.
pub fn run_suite(next_lun: &mut usize) {
    if let Err(e) = suite(next_lun) {
        check("setup", Err(e));
    }
}

/// Kills its children on the way out.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn suite(next_lun: &mut usize) -> Result<(), String> {
    let index = *next_lun;
    *next_lun += 1;
    let lun = lio::create(index)?;
    let source = lio::add_initiator(index, 2, SOURCE_INITIATOR)?;
    let paths = [lun.paths[0].block.clone(), lun.paths[1].block.clone()];
    // Only the destination's paths get udev entries: the source's disk is
    // never part of a map.
    let serial = format!("prhmigrate{index:04}");
    for p in &paths {
        mpath::udev_entry(p, &serial)?;
    }
    std::fs::create_dir_all("/etc/multipath").map_err(|e| e.to_string())?;
    std::fs::write("/etc/multipath.conf", mpath::MULTIPATH_CONF).map_err(|e| e.to_string())?;
    std::fs::write("/etc/multipath/prkeys", "").map_err(|e| e.to_string())?;
    sid_mounts()?;
    let sid_version = std::fs::read_to_string(format!("{SID}/multipath-tools-version"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    println!("FIGURE migrate-sid-multipath-tools {sid_version}");
    let mut children = Children(vec![mpath::start_multipathd("/sbin/multipathd", &[])?]);
    let map = mpath::make_map(&serial)?;
    children.0.push(start_helper(&[], SOCKET_BOOKWORM)?);
    children.0.push(start_helper(&["chroot", SID], SOCKET_SID)?);
    children.0.push(
        Command::new("/usr/bin/qemu-pr-helper")
            .args(["-k", SOCKET_REFERENCE])
            .spawn()
            .map_err(|e| format!("qemu-pr-helper: {e}"))?,
    );
    for socket in [SOCKET_BOOKWORM, SOCKET_SID, SOCKET_REFERENCE] {
        wait_for(socket, Duration::from_secs(30), || {
            Path::new(socket).exists()
        })?;
    }

    let subjects = [
        ("mpathpersist-0.9.4", Subject::Mpathpersist { sid: false }),
        (
            "pr-helper-libmpathpersist-0.9.4",
            Subject::Helper {
                socket: SOCKET_BOOKWORM,
            },
        ),
        ("qemu-pr-helper", Subject::Reference),
        ("mpathpersist-sid", Subject::Mpathpersist { sid: true }),
        (
            "pr-helper-libmpathpersist-sid",
            Subject::Helper { socket: SOCKET_SID },
        ),
    ];
    let mut states = Vec::new();
    for (name, subject) in subjects {
        let state = hand_over(subject, &map, &lun, &source);
        match &state {
            Ok(s) => println!("FIGURE migrate-{name} {}", s.show()),
            Err(e) => println!("FIGURE migrate-{name} error {e}"),
        }
        states.push((name, state));
    }
    let state = |name: &str| {
        states
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| Err("not run".into()))
    };
    // The bar: the current library's mpathpersist, and pr-helper with it,
    // give the hand-over QEMU needs.
    for name in ["mpathpersist-sid", "pr-helper-libmpathpersist-sid"] {
        check(
            &format!("{name}/destination-paths-registered-writes-good"),
            state(name).and_then(|s| {
                if s == State::wanted() {
                    Ok(())
                } else {
                    Err(s.show())
                }
            }),
        );
    }
    // pr-helper gives what mpathpersist gives with the same library.
    for (ours, theirs) in [
        ("pr-helper-libmpathpersist-0.9.4", "mpathpersist-0.9.4"),
        ("pr-helper-libmpathpersist-sid", "mpathpersist-sid"),
    ] {
        check(
            &format!("{ours}/same-as-{theirs}"),
            match (state(ours), state(theirs)) {
                (Ok(a), Ok(b)) if a == b => Ok(()),
                (a, b) => Err(format!("{ours}: {a:?}; {theirs}: {b:?}")),
            },
        );
    }
    // The old library's known failure (the start-up warning names it):
    // the preempting path only, the other path's writes conflict. Checked
    // so that the test bed notices when it changes.
    check(
        "libmpathpersist-0.9.4-loses-the-other-path",
        state("mpathpersist-0.9.4").and_then(|s| {
            if s.registered.iter().filter(|r| **r).count() == 1 && s.writes.contains(&0x18) {
                Ok(())
            } else {
                Err(s.show())
            }
        }),
    );
    // Matching versions: unstable's multipathd in place of bookworm's (it
    // adopts the map at start-up), unstable's library on both sides.
    let _ = children.0[0].kill();
    let _ = children.0[0].wait();
    children.0[0] = mpath::start_multipathd("/usr/sbin/multipathd", &["chroot", SID])?;
    wait_for(
        "unstable's multipathd to adopt the map",
        Duration::from_secs(60),
        || {
            let (ok, maps) = run("chroot", &[SID, "/usr/sbin/multipathd", "show", "maps"]);
            ok && maps
                .lines()
                .any(|l| l.split_whitespace().next() == Some(serial.as_str()))
        },
    )?;
    for (name, subject) in [
        ("mpathpersist-sid", Subject::Mpathpersist { sid: true }),
        (
            "pr-helper-libmpathpersist-sid",
            Subject::Helper { socket: SOCKET_SID },
        ),
    ] {
        let state = hand_over(subject, &map, &lun, &source);
        match &state {
            Ok(s) => println!("FIGURE migrate-{name}-multipathd-sid {}", s.show()),
            Err(e) => println!("FIGURE migrate-{name}-multipathd-sid error {e}"),
        }
        states.push((name, state));
    }
    let matching: Vec<_> = states[states.len() - 2..].to_vec();
    for (name, state) in &matching {
        check(
            &format!("{name}/with-multipathd-sid/destination-paths-registered-writes-good"),
            state.clone().and_then(|s| {
                if s == State::wanted() {
                    Ok(())
                } else {
                    Err(s.show())
                }
            }),
        );
    }
    check(
        "pr-helper-libmpathpersist-sid/with-multipathd-sid/same-as-mpathpersist-sid",
        match (&matching[1].1, &matching[0].1) {
            (Ok(a), Ok(b)) if a == b => Ok(()),
            (a, b) => Err(format!("pr-helper: {a:?}; mpathpersist: {b:?}")),
        },
    );
    let _ = reset(&source);
    Ok(())
}

/// Bind-mounts what the unstable root needs to serve: devices, proc, sys,
/// /run (udev database, sockets), multipath's configuration and state, and
/// the pr-helper-mpath binary of the test bed.
fn sid_mounts() -> Result<(), String> {
    std::fs::write(format!("{SID}/etc/multipath.conf"), "").map_err(|e| e.to_string())?;
    for (from, to) in [
        ("/dev", "dev"),
        ("/proc", "proc"),
        ("/sys", "sys"),
        ("/run", "run"),
        ("/tmp", "tmp"),
        ("/etc/multipath", "etc/multipath"),
        ("/etc/multipath.conf", "etc/multipath.conf"),
        ("/bin/pr-helper-mpath", "pr-helper-mpath"),
    ] {
        let (ok, out) = run("mount", &["--bind", from, &format!("{SID}/{to}")]);
        if !ok {
            return Err(format!("bind {from}: {out}"));
        }
    }
    Ok(())
}

/// pr-helper-mpath on `socket`, through `prefix` (empty, or chroot).
fn start_helper(prefix: &[&str], socket: &str) -> Result<Child, String> {
    let (program, args): (&str, Vec<&str>) = match prefix.split_first() {
        Some((first, rest)) => (first, [rest, &["/pr-helper-mpath"]].concat()),
        None => ("/bin/pr-helper-mpath", Vec::new()),
    };
    Command::new(program)
        .args(args)
        .args(["-k", socket])
        .env("DM_DISABLE_UDEV", "1")
        .spawn()
        .map_err(|e| format!("pr-helper-mpath {prefix:?}: {e}"))
}

/// sg_persist on the source's own nexus. A UNIT ATTENTION (the previous
/// hand-over preempted the source's registration) is reported once per
/// nexus; the command is sent again, as an initiator does.
fn source_persist(source: &lio::Path2, args: &[&str]) -> Result<(), String> {
    let mut full = vec!["-n", "-o"];
    full.extend_from_slice(args);
    full.push(source.sg.to_str().unwrap_or_default());
    let mut last = String::new();
    for _ in 0..4 {
        match run("sg_persist", &full) {
            (true, _) => return Ok(()),
            (false, out) if out.contains("Unit attention") => last = out,
            (false, out) => return Err(format!("sg_persist {args:?} on the source: {out}")),
        }
    }
    Err(format!("sg_persist {args:?} on the source: {last}"))
}

/// No registration and no reservation left on the LUN: the source registers
/// (ignoring whatever key it had) and clears.
fn reset(source: &lio::Path2) -> Result<(), String> {
    let key = format!("{KEY:x}");
    source_persist(source, &["-I", "-S", &key])?;
    source_persist(source, &["-C", "-K", &key])
}

/// One hand-over by `subject`, from the same starting state: the source
/// registered with KEY and holding a type-5 reservation, nothing else.
fn hand_over(
    subject: Subject,
    map: &Path,
    lun: &lio::Lun,
    source: &lio::Path2,
) -> Result<State, String> {
    reset(source)?;
    let key = format!("{KEY:x}");
    source_persist(source, &["-G", "-S", &key])?;
    source_persist(source, &["-R", "-T", &TYPE.to_string(), "-K", &key])?;
    // The destination: REGISTER (SARK = key), then PREEMPT (RK = SARK =
    // key, the reservation's type), as QEMU 11's migrate-pr sends them.
    match subject {
        Subject::Mpathpersist { sid } => {
            let dev = map.to_str().unwrap_or_default();
            let ty = TYPE.to_string();
            let sequence: [&[&str]; 2] = [
                &["--out", "--register", "--param-sark", &key, dev],
                &[
                    "--out",
                    "--preempt",
                    "--param-rk",
                    &key,
                    "--param-sark",
                    &key,
                    "--prout-type",
                    &ty,
                    dev,
                ],
            ];
            for args in sequence {
                let (ok, out) = if sid {
                    run("chroot", &[&[SID, "/usr/sbin/mpathpersist"], args].concat())
                } else {
                    run("/sbin/mpathpersist", args)
                };
                if !ok {
                    return Err(format!("mpathpersist {args:?}: {out}"));
                }
            }
        }
        Subject::Helper { .. } | Subject::Reference => {
            let socket = match subject {
                Subject::Helper { socket } => socket,
                _ => SOCKET_REFERENCE,
            };
            for (sa, ty, rk) in [(sa_out::REGISTER, 0, 0), (sa_out::PREEMPT, TYPE, KEY)] {
                let p = ParamList {
                    key: rk,
                    sa_key: KEY,
                    ..Default::default()
                }
                .encode();
                let o = exec::run_socket(
                    socket,
                    map,
                    &pr_out_cdb(sa, 0, ty, p.len() as u32),
                    &p,
                    false,
                )?;
                if o.status != 0 {
                    return Err(format!("PR OUT {sa:#x} through {socket}: {}", o.show()));
                }
            }
        }
    }
    observe(lun)
}

/// The device's view: READ FULL STATUS on path A's sg node, a WRITE(10) of
/// block 0 through each destination path.
fn observe(lun: &lio::Lun) -> Result<State, String> {
    let o = exec::run(
        Via::Direct,
        &lun.paths[0].sg,
        &pr_in_cdb(sa_in::READ_FULL_STATUS, 8192),
        &[],
        false,
    )?;
    let full = pr::decode::full_status(&o.data).map_err(|e| e.to_string())?;
    let sas = |tid: &[u8]| {
        tid.get(4..12)
            .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
    };
    let nexuses = [lio::INITIATOR_SAS[0], lio::INITIATOR_SAS[1], SOURCE_SAS];
    let registered = nexuses.map(|n| {
        full.registrations
            .iter()
            .any(|r| r.key == KEY && sas(&r.transport_id) == Some(n))
    });
    let reservation = full
        .registrations
        .iter()
        .find(|r| r.holder)
        .map(|r| (r.key, r.pr_type));
    let mut writes = [0u8; 2];
    for (i, p) in lun.paths.iter().enumerate() {
        writes[i] = write_block(&p.block)?;
    }
    Ok(State {
        registered,
        reservation,
        writes,
    })
}

/// WRITE(10) of one zeroed block at LBA 0 through `dev`: the SCSI status.
fn write_block(dev: &Path) -> Result<u8, String> {
    let f = exec::open(dev, false)?;
    let cdb = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    let block = [0u8; 512];
    // A UNIT ATTENTION (registrations preempted, reservation changed) is
    // reported once per nexus and retried, as the kernel retries a
    // file system's write.
    let mut status = 0;
    for _ in 0..4 {
        let r = sgio::execute(
            f.as_fd(),
            &cdb,
            DataPhase::ToDevice(&block),
            Duration::from_secs(30),
        )
        .map_err(|e| format!("WRITE(10) on {}: errno {e}", dev.display()))?;
        status = r.status;
        let unit_attention = r.sense[0] & 0x7f == 0x70 && r.sense[2] & 0x0f == 6;
        if !(status == 2 && unit_attention) {
            break;
        }
    }
    Ok(status)
}
