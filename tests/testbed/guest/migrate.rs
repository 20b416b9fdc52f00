//! QEMU 11's live migration of reservations, end to end (issue 20): an
//! inner guest under QEMU 11 (Debian unstable's, in the unstable root /sid)
//! with `scsi-block,migrate-pr=on` takes a Write Exclusive - Registrants
//! Only reservation with sg_persist, and is live-migrated to a second QEMU
//! 11 whose disk is the same LUN reached through other initiator ports. Each
//! QEMU has its own pr-helper. After the migration the destination QEMU
//! sends REGISTER (SARK = the guest's key) and PREEMPT (RK = SARK = the
//! key, the type) through its helper before the guest runs again; the
//! guest then reads the keys and the reservation and writes a block.
//!
//! Two set-ups, each checked from the device itself (READ FULL STATUS on a
//! path, a WRITE(10) through every path):
//! - `single-path`: the source's disk is path A of a LUN, the destination's
//!   path B; the plain pr-helper (the static build) on each side;
//! - `map`: the source's disk is a multipath map over paths A and B, the
//!   destination's another map over paths C and D of the same LUN (two
//!   more tcm_loop initiators: another host's ports), pr-helper-mpath on
//!   the current libmpathpersist (the unstable root's) on each side,
//!   bookworm's multipathd serving both maps (the mix a current container
//!   meets on a Debian 12 node; the flows suite covers both daemons).
//!
//! Afterwards, on each: the key registered through every destination path
//! and through no source path, the reservation held with the guest's key
//! and type 5, writes good through every destination path and refused
//! (RESERVATION CONFLICT) through every source path, and the guest's own
//! commands (READ KEYS, READ RESERVATION, WRITE(10)) good.
//!
//! The same REGISTER + PREEMPT sequence without QEMU, compared library by
//! library with mpathpersist, is the flows suite's `migrate` flow.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use crate::mpath::{self, run, wait_for};
use crate::mpath_flows::{self, full_status, sas, write_block, SID};
use crate::{lio, result, Children};

/// The inner guest's key (tests/testbed/inner-init).
const KEY: u64 = 0x1234_abcd;
/// Write Exclusive - Registrants Only.
const TYPE: u8 = 5;
/// The destination host's two initiator ports in the `map` set-up.
const DESTINATION_INITIATORS: [&str; 2] = ["naa.5001405bbbbbbbc3", "naa.5001405bbbbbbbc4"];
const DESTINATION_SAS: [u64; 2] = [0x5001405bbbbbbbc3, 0x5001405bbbbbbbc4];
/// QEMU 11 in the unstable root.
const QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// The migration stream and the source's QMP socket (in /run, which the
/// unstable root bind-mounts).
const MIGRATION_SOCKET: &str = "/run/prh-migrate-stream.sock";
const QMP_SOCKET: &str = "/run/prh-migrate-qmp.sock";
/// How long the inner guest may take to boot and reserve, and to finish
/// after the migration, under nested TCG.
const INNER_LIMIT: Duration = Duration::from_secs(600);

fn check(name: &str, r: Result<(), String>) {
    result(&format!("migrate/{name}"), r);
}

/// One side of the migration: the disk QEMU gets and the helper it talks to.
struct Side {
    disk: PathBuf,
    socket: &'static str,
}

/// What the two QEMUs printed, and how long the migration took.
struct Migrated {
    /// The inner guest's console lines from the destination (after the
    /// migration).
    destination: Vec<String>,
    seconds: f64,
}

/// Runs the suite.
pub fn run_suite(next_lun: &mut usize) {
    let version = std::fs::read_to_string(format!("{SID}/qemu-version")).unwrap_or_default();
    println!("FIGURE migrate-qemu-version {}", version.trim());
    if let Err(e) = prepare() {
        return check("setup", Err(e));
    }
    if let Err(e) = single_path(next_lun) {
        check("single-path/setup", Err(e));
    }
    if let Err(e) = map(next_lun) {
        check("map/setup", Err(e));
    }
}

/// The unstable root's bind mounts (the flows suite's, and /boot for the
/// inner guest's kernel and initramfs).
fn prepare() -> Result<(), String> {
    // multipath's configuration first: the unstable root bind-mounts it.
    std::fs::create_dir_all("/etc/multipath").map_err(|e| e.to_string())?;
    std::fs::write("/etc/multipath.conf", mpath::MULTIPATH_CONF).map_err(|e| e.to_string())?;
    std::fs::write("/etc/multipath/prkeys", "").map_err(|e| e.to_string())?;
    mpath_flows::sid_mounts()?;
    let (ok, out) = run("mount", &["--bind", "/boot", &format!("{SID}/boot")]);
    if ok {
        Ok(())
    } else {
        Err(format!("bind /boot: {out}"))
    }
}

fn single_path(next_lun: &mut usize) -> Result<(), String> {
    let index = *next_lun;
    *next_lun += 1;
    let lun = lio::create(index)?;
    let mut children = Children(Vec::new());
    let sockets = ["/run/prh-migrate-src.sock", "/run/prh-migrate-dst.sock"];
    for socket in sockets {
        children.0.push(
            Command::new("/bin/pr-helper")
                .args(["-k", socket])
                .spawn()
                .map_err(|e| format!("pr-helper: {e}"))?,
        );
    }
    for socket in sockets {
        wait_for(socket, Duration::from_secs(30), || {
            Path::new(socket).exists()
        })?;
    }
    let source = Side {
        disk: lun.paths[0].block.clone(),
        socket: sockets[0],
    };
    let destination = Side {
        disk: lun.paths[1].block.clone(),
        socket: sockets[1],
    };
    let nexuses = Nexuses {
        source: vec![lio::INITIATOR_SAS[0]],
        destination: vec![lio::INITIATOR_SAS[1]],
        source_blocks: vec![lun.paths[0].block.clone()],
        destination_blocks: vec![lun.paths[1].block.clone()],
        status_via: lun.paths[0].sg.clone(),
    };
    verify("single-path", &source, &destination, &nexuses);
    Ok(())
}

fn map(next_lun: &mut usize) -> Result<(), String> {
    let index = *next_lun;
    *next_lun += 1;
    let lun = lio::create(index)?;
    let c = lio::add_initiator(index, 2, DESTINATION_INITIATORS[0])?;
    let d = lio::add_initiator(index, 3, DESTINATION_INITIATORS[1])?;
    // Two hosts' views of one LUN: the paths get different serials in the
    // udev database, so multipath makes one map of A and B and another of
    // C and D.
    let source_serial = format!("prhmigsrc{index:04}");
    let destination_serial = format!("prhmigdst{index:04}");
    for p in &lun.paths {
        mpath::udev_entry(&p.block, &source_serial)?;
    }
    for p in [&c, &d] {
        mpath::udev_entry(&p.block, &destination_serial)?;
    }
    let mut children = Children(vec![mpath::start_multipathd("/sbin/multipathd", &[])?]);
    let source_map = mpath::make_map(&source_serial)?;
    let destination_map = mpath::make_map(&destination_serial)?;
    let sockets = [
        "/run/prh-migrate-mpath-src.sock",
        "/run/prh-migrate-mpath-dst.sock",
    ];
    for socket in sockets {
        children
            .0
            .push(mpath_flows::start_helper(&["chroot", SID], socket)?);
    }
    for socket in sockets {
        wait_for(socket, Duration::from_secs(30), || {
            Path::new(socket).exists()
        })?;
    }
    let nexuses = Nexuses {
        source: lio::INITIATOR_SAS.to_vec(),
        destination: DESTINATION_SAS.to_vec(),
        source_blocks: lun.paths.iter().map(|p| p.block.clone()).collect(),
        destination_blocks: vec![c.block.clone(), d.block.clone()],
        status_via: lun.paths[0].sg.clone(),
    };
    verify(
        "map",
        &Side {
            disk: source_map,
            socket: sockets[0],
        },
        &Side {
            disk: destination_map,
            socket: sockets[1],
        },
        &nexuses,
    );
    Ok(())
}

/// Which nexuses belong to which host, their block devices (for the
/// writes), and the sg node READ FULL STATUS is read through.
struct Nexuses {
    source: Vec<u64>,
    destination: Vec<u64>,
    source_blocks: Vec<PathBuf>,
    destination_blocks: Vec<PathBuf>,
    status_via: PathBuf,
}

/// Migrates, then checks the device and the guest's own view.
fn verify(name: &str, source: &Side, destination: &Side, nexuses: &Nexuses) {
    let migrated = match migrate(source, destination) {
        Ok(m) => m,
        Err(e) => return check(&format!("{name}/migrated"), Err(e)),
    };
    println!("FIGURE migrate-{name}-seconds {:.1}", migrated.seconds);
    for line in &migrated.destination {
        println!("MIGRATE {name} {line}");
    }
    check(&format!("{name}/migrated"), Ok(()));
    let full = match full_status(&nexuses.status_via) {
        Ok(f) => f,
        Err(e) => return check(&format!("{name}/read-full-status"), Err(e)),
    };
    let key_of = |nexus: u64| {
        full.registrations
            .iter()
            .find(|r| sas(&r.transport_id) == Some(nexus))
            .map(|r| r.key)
    };
    let shown = || {
        full.registrations
            .iter()
            .map(|r| {
                format!(
                    "{:#x} via {}{}",
                    r.key,
                    sas(&r.transport_id).map_or("?".into(), |n| format!("{n:#x}")),
                    if r.holder {
                        format!(" holding type {}", r.pr_type)
                    } else {
                        String::new()
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    check(
        &format!("{name}/every-destination-path-registered"),
        if nexuses.destination.iter().all(|n| key_of(*n) == Some(KEY)) {
            Ok(())
        } else {
            Err(shown())
        },
    );
    check(
        &format!("{name}/no-source-registration"),
        if nexuses.source.iter().all(|n| key_of(*n).is_none()) {
            Ok(())
        } else {
            Err(shown())
        },
    );
    check(
        &format!("{name}/reservation-kept-on-the-destination"),
        match full.registrations.iter().find(|r| r.holder) {
            Some(h)
                if h.key == KEY
                    && h.pr_type == TYPE
                    && sas(&h.transport_id).is_some_and(|n| nexuses.destination.contains(&n)) =>
            {
                Ok(())
            }
            _ => Err(shown()),
        },
    );
    // A WRITE(10) through each of `blocks` must end with `status`.
    let writes_end_with = |blocks: &[PathBuf], status: u8| {
        let w = blocks
            .iter()
            .map(|b| write_block(b).map(|s| (b.display().to_string(), s)))
            .collect::<Result<Vec<_>, String>>()?;
        if w.iter().all(|(_, s)| *s == status) {
            Ok(())
        } else {
            Err(format!("{w:x?}"))
        }
    };
    check(
        &format!("{name}/writes-good-through-every-destination-path"),
        writes_end_with(&nexuses.destination_blocks, 0),
    );
    check(
        &format!("{name}/writes-refused-through-every-source-path"),
        writes_end_with(&nexuses.source_blocks, 0x18),
    );
    // The guest after the migration: its three commands good, its key and
    // reservation seen.
    let console = migrated.destination.join("\n");
    let exits: Vec<&str> = migrated
        .destination
        .iter()
        .filter_map(|l| l.strip_prefix("INNER-EXIT "))
        .collect();
    check(
        &format!("{name}/guest-reads-and-writes-after-migration"),
        if exits.len() == 3
            && exits.iter().all(|e| e.trim() == "0")
            && console.contains("0x1234abcd")
            && console.contains("Key=0x1234abcd")
            && console.contains("Write Exclusive, registrants only")
        {
            Ok(())
        } else {
            Err(format!("guest console: {}", console.replace('\n', " | ")))
        },
    );
}

/// A QEMU 11 for `side`, in the unstable root; `incoming` makes it a
/// migration destination.
fn qemu(side: &Side, incoming: bool) -> Result<Child, String> {
    let mut c = mpath::command(&["chroot", SID], QEMU);
    c.args(["-accel", "tcg", "-m", "256M", "-smp", "1"])
        .args([
            "-nodefaults",
            "-nographic",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .args(["-kernel", "/boot/vmlinuz", "-initrd", "/boot/inner.cpio.gz"])
        .args(["-append", "console=ttyS0 quiet panic=-1 prh=migrate"])
        .args([
            "-object",
            &format!("pr-manager-helper,id=pr0,path={}", side.socket),
        ])
        .args([
            "-blockdev",
            &format!(
                "driver=host_device,node-name=disk0,filename={},pr-manager=pr0",
                side.disk.display()
            ),
        ])
        .args(["-device", "virtio-scsi-pci,id=scsi0"])
        .args([
            "-device",
            "scsi-block,drive=disk0,bus=scsi0.0,migrate-pr=on",
        ]);
    if incoming {
        c.args(["-incoming", &format!("unix:{MIGRATION_SOCKET}")]);
    } else {
        c.args(["-qmp", &format!("unix:{QMP_SOCKET},server=on,wait=off")]);
    }
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("qemu 11: {e}"))
}

/// The lines `child` prints on stdout and stderr, as they come.
fn lines(child: &mut Child) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(format!("stderr: {line}"));
            }
        });
    }
    rx
}

/// Waits for a line starting with `marker`, collecting every line; the
/// lines seen so far in the error.
fn wait_line(rx: &Receiver<String>, marker: &str, seen: &mut Vec<String>) -> Result<(), String> {
    let deadline = Instant::now() + INNER_LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line.starts_with(marker);
                seen.push(line);
                if done {
                    return Ok(());
                }
            }
            Err(e) => {
                let tail: Vec<&str> = seen
                    .iter()
                    .rev()
                    .take(20)
                    .rev()
                    .map(|s| s.as_str())
                    .collect();
                return Err(format!(
                    "no {marker} ({e:?}); last lines: {}",
                    tail.join(" | ")
                ));
            }
        }
    }
}

/// The source guest boots and reserves; it is migrated; the destination
/// is told to go on and its console read to the end.
fn migrate(source: &Side, destination: &Side) -> Result<Migrated, String> {
    let _ = std::fs::remove_file(MIGRATION_SOCKET);
    let _ = std::fs::remove_file(QMP_SOCKET);
    let mut guard = Children(Vec::new());
    let mut dst = qemu(destination, true)?;
    let dst_lines = lines(&mut dst);
    let dst_stdin: ChildStdin = dst.stdin.take().ok_or("destination stdin")?;
    guard.0.push(dst);
    let mut src = qemu(source, false)?;
    let src_lines = lines(&mut src);
    guard.0.push(src);
    let mut src_seen = Vec::new();
    wait_line(&src_lines, "INNER-RESERVED", &mut src_seen)
        .map_err(|e| format!("source guest: {e}"))?;
    for line in &src_seen {
        println!("MIGRATE-SOURCE {line}");
    }
    let started = Instant::now();
    let mut qmp = Qmp::connect()?;
    qmp.execute(&format!(
        r#"{{"execute": "migrate", "arguments": {{"uri": "unix:{MIGRATION_SOCKET}"}}}}"#
    ))?;
    let mut status = String::new();
    wait_for("the migration", Duration::from_secs(300), || {
        status = qmp
            .execute(r#"{"execute": "query-migrate"}"#)
            .unwrap_or_else(|e| e);
        status.contains("\"completed\"") || status.contains("\"failed\"")
    })
    .map_err(|e| format!("{e}: {status}"))?;
    if !status.contains("\"completed\"") {
        return Err(format!("migration: {status}"));
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = qmp.execute(r#"{"execute": "quit"}"#);
    // The destination runs the guest on; it waits for this line.
    let mut stdin = dst_stdin;
    stdin
        .write_all(b"go\n")
        .map_err(|e| format!("destination stdin: {e}"))?;
    let mut destination_seen = Vec::new();
    wait_line(&dst_lines, "INNER-DONE", &mut destination_seen)
        .map_err(|e| format!("destination guest: {e}"))?;
    Ok(Migrated {
        destination: destination_seen,
        seconds,
    })
}

/// A QMP client on the source QEMU's socket.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect() -> Result<Qmp, String> {
        let mut stream = None;
        wait_for("the QMP socket", Duration::from_secs(30), || {
            stream = UnixStream::connect(QMP_SOCKET).ok();
            stream.is_some()
        })?;
        let writer = stream.ok_or("QMP socket")?;
        writer
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let reader = BufReader::new(writer.try_clone().map_err(|e| e.to_string())?);
        let mut qmp = Qmp { reader, writer };
        let mut greeting = String::new();
        qmp.reader
            .read_line(&mut greeting)
            .map_err(|e| format!("QMP greeting: {e}"))?;
        qmp.execute(r#"{"execute": "qmp_capabilities"}"#)?;
        Ok(qmp)
    }

    /// Sends `command`; returns its answer (events before it skipped).
    fn execute(&mut self, command: &str) -> Result<String, String> {
        self.writer
            .write_all(format!("{command}\n").as_bytes())
            .map_err(|e| format!("QMP {command}: {e}"))?;
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return Err(format!("QMP {command}: connection closed")),
                Ok(_) if line.contains("\"event\"") => continue,
                Ok(_) if line.contains("\"error\"") => {
                    return Err(format!("QMP {command}: {line}"))
                }
                Ok(_) => return Ok(line),
                Err(e) => return Err(format!("QMP {command}: {e}")),
            }
        }
    }
}
