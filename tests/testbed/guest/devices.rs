//! Which devices PR commands may reach (D27, D28): a partition and
//! device-mapper linear maps on a LIO disk. The kernel refuses SG_IO on a
//! partition, and on a dm device that maps only part of the disk below it,
//! to callers without CAP_SYS_RAWIO; pr-helper holds that capability and
//! must refuse such fds itself, with the reply QEMU would get if the kernel
//! had refused (CHECK CONDITION 0B/00/06), leaving the disk's registrations
//! and reservation untouched. The whole disk and a full-size linear map
//! (offset 0) keep working. qemu-pr-helper executes the same commands on
//! the whole disk (checked, as the documented deviation).
//!
//! The "logical volume" is what LVM makes, a dm-linear target with an
//! offset, created with dmsetup (the guest has no lvm2 tools).
//!
//! Checked through the plain helper and, in the multipath image, through
//! the `--features mpath` build too (its sandbox profile differs).

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pr_helper::scsi::pr::{self, pr_in_cdb, pr_out_cdb, sa_in, sa_out, ParamList};
use pr_helper::scsi::SenseCode;

use crate::exec::{self, Outcome, Via};
use crate::{lio, result, Children};

/// The mpath build's socket for this suite.
const MPATH_SOCKET: &str = "/run/pr-helper-devices.sock";

const KEY_A: u64 = 0xd27a;
const KEY_B: u64 = 0xd27b;
const KEY_C: u64 = 0xd27c;
const KEY_D: u64 = 0xd27d;

/// Partition 1: sectors 2048..2048+8192 of the 16 MiB (32768-sector) disk.
const PART_START: u64 = 2048;
const PART_SECTORS: u64 = 8192;
const DISK_SECTORS: u64 = 32768;

fn check(name: &str, r: Result<(), String>) {
    result(&format!("devices/{name}"), r);
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let o = Command::new(cmd)
        .args(args)
        .env("DM_DISABLE_UDEV", "1")
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    if o.status.success() {
        Ok(text)
    } else {
        Err(format!("{cmd} {args:?}: {text}"))
    }
}

/// The exact reply of a refusal: CHECK CONDITION, ABORTED COMMAND, I/O
/// PROCESS TERMINATED (what the reference answers when SG_IO fails with
/// ENOTTY or EBADF), no data.
pub fn refused(o: Result<Outcome, String>) -> Result<(), String> {
    let o = o?;
    if o.status == 2 && o.sense == SenseCode::IO_ERROR.fixed_buffer().to_vec() && o.data.is_empty()
    {
        Ok(())
    } else {
        Err(format!("not refused: {}", o.show()))
    }
}

fn good(o: Result<Outcome, String>) -> Result<Outcome, String> {
    match o {
        Ok(o) if o.status == 0 => Ok(o),
        Ok(o) => Err(o.show()),
        Err(e) => Err(e),
    }
}

fn out(socket: &str, dev: &Path, sa: u8, ty: u8, key: u64, sa_key: u64) -> Result<Outcome, String> {
    let p = ParamList {
        key,
        sa_key,
        ..Default::default()
    }
    .encode();
    exec::run_socket(
        socket,
        dev,
        &pr_out_cdb(sa, 0, ty, p.len() as u32),
        &p,
        false,
    )
}

fn read_keys(socket: &str, dev: &Path) -> Result<Outcome, String> {
    exec::run_socket(socket, dev, &pr_in_cdb(sa_in::READ_KEYS, 8192), &[], false)
}

/// Sorted keys, and the reservation holder (key, scope, type).
type State = (Vec<u64>, Option<(u64, u8, u8)>);

/// Keys and reservation holder as the device reports them (sg_raw on `sg`).
fn state(sg: &Path) -> Result<State, String> {
    let k = exec::run(
        Via::Direct,
        sg,
        &pr_in_cdb(sa_in::READ_KEYS, 8192),
        &[],
        false,
    )?;
    let r = exec::run(
        Via::Direct,
        sg,
        &pr_in_cdb(sa_in::READ_RESERVATION, 8192),
        &[],
        false,
    )?;
    let mut keys = pr::decode::keys(&k.data).map_err(|e| e.to_string())?.keys;
    keys.sort_unstable();
    let holder = pr::decode::reservation(&r.data)
        .map_err(|e| e.to_string())?
        .holder;
    Ok((keys, holder))
}

nix::ioctl_none!(blkrrpart, 0x12, 95);

/// Writes an MBR with one partition and has the kernel read it.
fn partition(disk: &Path) -> Result<PathBuf, String> {
    let mut mbr = [0u8; 512];
    let entry = &mut mbr[446..462];
    entry[4] = 0x83;
    entry[8..12].copy_from_slice(&(PART_START as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&(PART_SECTORS as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(|e| format!("open {}: {e}", disk.display()))?;
    f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    f.write_all(&mbr).map_err(|e| e.to_string())?;
    f.sync_all().map_err(|e| e.to_string())?;
    // SAFETY: BLKRRPART takes no argument; the fd is an open block device.
    unsafe { blkrrpart(f.as_raw_fd()) }.map_err(|e| format!("BLKRRPART: {e}"))?;
    let part = PathBuf::from(format!("{}1", disk.display()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::File::open(&part).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{} did not appear", part.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(part)
}

/// Creates a dm device with a one-line table; returns its /dev/dm-N.
fn dm(name: &str, table: &str) -> Result<PathBuf, String> {
    run("dmsetup", &["create", name, "--table", table])?;
    let minor = run(
        "dmsetup",
        &["info", "-c", "--noheadings", "-o", "minor", name],
    )?;
    let dev = PathBuf::from(format!("/dev/dm-{}", minor.trim()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::File::open(&dev).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{} did not appear", dev.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(dev)
}

fn dev_name(p: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let r = std::fs::metadata(p).map(|m| m.rdev()).unwrap_or(0);
    format!("{}:{}", libc::major(r), libc::minor(r))
}

/// Runs the suite.
pub fn run_suite(next_lun: &mut usize) {
    if let Err(e) = suite(next_lun) {
        check("setup", Err(e));
    }
}

fn suite(next_lun: &mut usize) -> Result<(), String> {
    let index = *next_lun;
    *next_lun += 1;
    let lun = lio::create(index)?;
    // Path A carries the partition; path B (the same logical unit through
    // the other initiator; its kernel view has no partitions) carries the
    // linear maps, which could not claim a disk whose partition is in use.
    let (disk_a, sg_a) = (lun.paths[0].block.clone(), lun.paths[0].sg.clone());
    let disk_b = lun.paths[1].block.clone();
    let part = partition(&disk_a)?;
    let (a, b) = (dev_name(&disk_a), dev_name(&disk_b));
    let part_dev = dev_name(&part);
    let lv = dm(
        "prh-lv",
        &format!("0 {PART_SECTORS} linear {b} {PART_START}"),
    )?;
    let full = dm("prh-full", &format!("0 {DISK_SECTORS} linear {b} 0"))?;
    let on_part = dm(
        "prh-on-part",
        &format!("0 {PART_SECTORS} linear {part_dev} 0"),
    )?;
    let _ = a;

    // The disk's state to protect: key A registered through path A, which
    // holds a Write Exclusive - Registrants Only reservation.
    run(
        "sg_persist",
        &[
            "-n",
            "-o",
            "-G",
            "-S",
            &format!("{KEY_A:x}"),
            sg_a.to_str().unwrap_or_default(),
        ],
    )?;
    run(
        "sg_persist",
        &[
            "-n",
            "-o",
            "-R",
            "-T",
            "5",
            "-K",
            &format!("{KEY_A:x}"),
            sg_a.to_str().unwrap_or_default(),
        ],
    )?;
    let before = state(&sg_a)?;
    if before != (vec![KEY_A], Some((KEY_A, 0, 5))) {
        return Err(format!("unexpected starting state {before:x?}"));
    }

    let mpath_helper = if Path::new("/bin/pr-helper-mpath").exists() {
        let child = Command::new("/bin/pr-helper-mpath")
            .args(["-k", MPATH_SOCKET])
            .env("DM_DISABLE_UDEV", "1")
            .spawn()
            .map_err(|e| format!("pr-helper-mpath: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !Path::new(MPATH_SOCKET).exists() {
            if Instant::now() > deadline {
                return Err(format!("{MPATH_SOCKET} did not appear"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(child)
    } else {
        None
    };
    let mut helpers = vec![("pr-helper", exec::OURS_SOCKET)];
    if mpath_helper.is_some() {
        helpers.push(("pr-helper-mpath", MPATH_SOCKET));
    }
    let _mpath_helper = Children(mpath_helper.into_iter().collect());

    for (h, socket) in &helpers {
        for (what, dev) in [
            ("partition", &part),
            ("lv", &lv),
            ("linear-on-partition", &on_part),
        ] {
            // What an attacker holding a writable fd on a partition or a
            // volume would do to take the disk: register, then clear or
            // preempt the holder; and reading the keys.
            check(
                &format!("{h}/{what}-register-ignore-refused"),
                refused(out(socket, dev, sa_out::REGISTER_AND_IGNORE, 0, 0, KEY_B)),
            );
            check(
                &format!("{h}/{what}-preempt-abort-refused"),
                refused(out(socket, dev, sa_out::PREEMPT_AND_ABORT, 5, KEY_B, KEY_A)),
            );
            check(
                &format!("{h}/{what}-clear-refused"),
                refused(out(socket, dev, sa_out::CLEAR, 0, KEY_B, 0)),
            );
            check(
                &format!("{h}/{what}-read-keys-refused"),
                refused(read_keys(socket, dev)),
            );
        }
        check(
            &format!("{h}/disk-untouched"),
            state(&sg_a).and_then(|s| {
                if s == before {
                    Ok(())
                } else {
                    Err(format!("state now {s:x?}, was {before:x?}"))
                }
            }),
        );
        // The whole disk works.
        check(
            &format!("{h}/whole-disk-works"),
            good(exec::run_socket(
                socket,
                &disk_a,
                &pr_in_cdb(sa_in::READ_RESERVATION, 8192),
                &[],
                false,
            ))
            .and_then(|o| {
                match pr::decode::reservation(&o.data)
                    .map_err(|e| e.to_string())?
                    .holder
                {
                    Some((KEY_A, 0, 5)) => Ok(()),
                    other => Err(format!("holder {other:x?}")),
                }
            }),
        );
        // A full-size linear map with offset 0 works: register through it
        // (path B's nexus), see the key on the disk, unregister.
        check(
            &format!("{h}/full-linear-works"),
            good(out(socket, &full, sa_out::REGISTER_AND_IGNORE, 0, 0, KEY_C))
                .and_then(|_| state(&sg_a))
                .and_then(|(keys, _)| {
                    if keys == vec![KEY_A, KEY_C] {
                        Ok(())
                    } else {
                        Err(format!("keys {keys:x?}"))
                    }
                })
                .and_then(|_| good(out(socket, &full, sa_out::REGISTER, 0, KEY_C, 0)))
                .and_then(|_| state(&sg_a))
                .and_then(|s| {
                    if s == before {
                        Ok(())
                    } else {
                        Err(format!("after unregistering: {s:x?}"))
                    }
                }),
        );
        // D28 on a plain disk: an O_PATH fd is refused (the reference gets
        // the same reply from the kernel's EBADF).
        check(
            &format!("{h}/o-path-refused"),
            o_path_read_keys(socket, &disk_a).and_then(|o| refused(Ok(o))),
        );
    }
    check(
        "pr-helper/reloaded-table-decided-anew",
        reloaded_table_is_decided_anew(exec::OURS_SOCKET, &dev_name(&disk_b)),
    );
    let sockets: Vec<&str> = helpers.iter().map(|(_, s)| *s).collect();
    check(
        "reused-device-number-decided-anew",
        reused_number_is_decided_anew(&sockets, &disk_a),
    );
    check(
        "qemu-pr-helper/o-path-same-reply",
        o_path_read_keys(exec::REFERENCE_SOCKET, &disk_a).and_then(|o| refused(Ok(o))),
    );

    // D27: the reference executes a command sent on a partition on the
    // whole disk: REGISTER AND IGNORE through path A's partition replaces
    // path A's key on the disk.
    check(
        "qemu-pr-helper/partition-acts-on-whole-disk-d27",
        good(out(
            exec::REFERENCE_SOCKET,
            &part,
            sa_out::REGISTER_AND_IGNORE,
            0,
            0,
            KEY_D,
        ))
        .and_then(|_| state(&sg_a))
        .and_then(|s| {
            if s == (vec![KEY_D], Some((KEY_D, 0, 5))) {
                Ok(())
            } else {
                Err(format!(
                    "expected key D to have replaced A on the disk: {s:x?}"
                ))
            }
        }),
    );
    // Clean up: CLEAR with whatever key path A holds now.
    let (keys, _) = state(&sg_a)?;
    if let Some(k) = keys.first() {
        run(
            "sg_persist",
            &[
                "-n",
                "-o",
                "-C",
                "-K",
                &format!("{k:x}"),
                sg_a.to_str().unwrap_or_default(),
            ],
        )?;
    }
    for name in ["prh-on-part", "prh-full", "prh-lv"] {
        let _ = run("dmsetup", &["remove", name]);
    }
    Ok(())
}

/// The device check (D27) decides on the device as it is at each request,
/// not as it was: a dm map whose table is reloaded keeps its device number,
/// and the client its fd, so a decision remembered by device number would
/// go stale (dm devices are never remembered, D27). The same fd, on a map of the
/// whole disk, then of part of it, then of the whole disk again: served,
/// refused, served. `b` is the disk's major:minor.
fn reloaded_table_is_decided_anew(socket: &str, b: &str) -> Result<(), String> {
    const NAME: &str = "prh-reload";
    let whole = format!("0 {DISK_SECTORS} linear {b} 0");
    let part = format!("0 {PART_SECTORS} linear {b} {PART_START}");
    let dev = dm(NAME, &whole)?;
    let fd = exec::open(&dev, false)?;
    let read_keys = || exec::with_fd(socket, fd.as_fd(), &pr_in_cdb(sa_in::READ_KEYS, 8192), &[]);
    let reload = |table: &str| {
        run("dmsetup", &["reload", NAME, "--table", table])?;
        run("dmsetup", &["resume", NAME])
    };
    let result = (|| {
        good(read_keys()).map_err(|e| format!("map of the whole disk: {e}"))?;
        reload(&part)?;
        refused(read_keys()).map_err(|e| format!("reloaded with part of the disk: {e}"))?;
        reload(&whole)?;
        good(read_keys()).map_err(|e| format!("reloaded with the whole disk: {e}"))?;
        Ok(())
    })();
    drop(fd);
    let _ = run("dmsetup", &["remove", NAME]);
    result
}

nix::ioctl_write_ptr_bad!(blkpg, nix::request_code_none!(0x12, 105), BlkpgIoctlArg);

/// `struct blkpg_ioctl_arg` from <linux/blkpg.h>.
#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

/// `struct blkpg_partition` from <linux/blkpg.h>.
#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// Adds (op 1) or deletes (op 2) partition `pno` of `disk` with BLKPG:
/// no partition table, so the partition number (and with it a device
/// number from the extended range, above the disk's 15) is chosen here.
fn blkpg_partition(disk: &Path, op: i32, pno: i32, start: u64, sectors: u64) -> Result<(), String> {
    let f = exec::open(disk, false)?;
    let mut part = BlkpgPartition {
        start: (start * 512) as i64,
        length: (sectors * 512) as i64,
        pno,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as i32,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: BLKPG reads `arg` and the `datalen` bytes of `part` it points
    // to, both alive for the call; the fd is an open block device.
    unsafe { blkpg(f.as_raw_fd(), &arg) }
        .map(|_| ())
        .map_err(|e| format!("BLKPG op {op} partition {pno} on {}: {e}", disk.display()))
}

/// The disk sequence number of `dev` (BLKGETDISKSEQ).
fn disk_seq(dev: &Path) -> Result<u64, String> {
    let f = exec::open(dev, true)?;
    pr_helper::scsi::sgio::disk_sequence(f.as_fd())
        .map_err(|e| format!("BLKGETDISKSEQ {}: errno {e}", dev.display()))
}

/// D27 with a device number that changes hands: the helpers decide an NVMe
/// namespace (the test bed's only disk numbered in the extended range,
/// 259:N) to be a whole disk and remember it; the namespace is removed and
/// its number given to partition 16 of `disk` (sd disks number partitions
/// above 15 in the extended range). An fd on that partition must be refused
/// like any partition, although a decision for its device number was
/// remembered: the disk sequence number in the key differs. Sent directly
/// (root holds CAP_SYS_RAWIO), the same READ KEYS reads the whole disk's
/// keys, which is what a decision remembered by device number alone would
/// hand the client.
fn reused_number_is_decided_anew(sockets: &[&str], disk: &Path) -> Result<(), String> {
    const START: u64 = 16384;
    const SECTORS: u64 = 256;
    let nvme = Path::new("/dev/nvme0n1");
    let sysfs_dev = |name: &str| {
        std::fs::read_to_string(format!("/sys/class/block/{name}/dev"))
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("/sys/class/block/{name}/dev: {e}"))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nvme.exists() {
        if Instant::now() > deadline {
            return Err("/dev/nvme0n1 did not appear (the boot adds an NVMe namespace)".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let number = sysfs_dev("nvme0n1")?;
    if !number.starts_with("259:") {
        return Err(format!("nvme0n1 is {number}, not in the extended range"));
    }
    let nvme_seq = disk_seq(nvme)?;
    {
        let fd = exec::open(nvme, false)?;
        for socket in sockets {
            // NVMe takes no SG_IO: the kernel answers ENOTTY, the same
            // reply as a refusal; what matters is that the helper decided
            // (and remembered) a whole disk.
            let o = exec::with_fd(socket, fd.as_fd(), &pr_in_cdb(sa_in::READ_KEYS, 8192), &[])?;
            refused(Ok(o)).map_err(|e| format!("{socket} on nvme0n1: {e}"))?;
        }
    }
    // Remove the controller; its number is free once every fd is closed
    // (the helpers closed theirs with the replies).
    let pci = std::fs::canonicalize("/sys/class/nvme/nvme0/device")
        .map_err(|e| format!("nvme0's PCI device: {e}"))?;
    std::fs::write(pci.join("remove"), "1").map_err(|e| format!("remove nvme0: {e}"))?;
    // Partitions 16, 17, ... take the lowest free numbers of the extended
    // range; those below the namespace's are kept until the end (an NVMe
    // namespace also numbers its hidden path disk, nvme0c0n1, there), and
    // one above it means the namespace's number is not free yet: it is
    // given back, and tried again.
    let disk_name = disk
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let mut kept = Vec::new();
    let mut pno = 16;
    let deadline = Instant::now() + Duration::from_secs(20);
    let found = loop {
        let start = START + (pno - 16) as u64 * SECTORS;
        if let Err(e) = blkpg_partition(disk, 1, pno, start, SECTORS) {
            break Err(e);
        }
        let name = format!("{disk_name}{pno}");
        let got = match sysfs_dev(&name) {
            Ok(got) => got,
            Err(e) => break Err(e),
        };
        if got == number {
            break Ok(name);
        }
        let below = |n: &str| {
            let minor = |d: &str| d.split(':').nth(1).and_then(|m| m.parse::<u32>().ok());
            got.starts_with("259:") && minor(n) > minor(&got)
        };
        if below(&number) {
            kept.push(pno);
            pno += 1;
        } else {
            let _ = blkpg_partition(disk, 2, pno, 0, 0);
            if Instant::now() > deadline {
                break Err(format!("{name} got {got}, never {number}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if pno > 40 {
            break Err(format!("no partition got {number}"));
        }
    };
    let name = match found {
        Ok(name) => name,
        Err(e) => {
            for p in kept {
                let _ = blkpg_partition(disk, 2, p, 0, 0);
            }
            return Err(e);
        }
    };
    kept.push(pno);
    let part = PathBuf::from(format!("/dev/{name}"));
    let result = (|| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while dev_name(&part) != number {
            if Instant::now() > deadline {
                return Err(format!("{} is not {number}", part.display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let part_seq = disk_seq(&part)?;
        println!(
            "FIGURE devices-reused-number {number} nvme-seq {nvme_seq} partition-seq {part_seq}"
        );
        let fd = exec::open(&part, false)?;
        let read_keys = pr_in_cdb(sa_in::READ_KEYS, 8192);
        // SG_IO from here rather than sg_raw, which takes any 259:N node
        // for NVMe.
        let mut keys = vec![0u8; 8192];
        let direct = pr_helper::scsi::sgio::execute(
            fd.as_fd(),
            &read_keys,
            pr_helper::scsi::sgio::DataPhase::FromDevice(&mut keys),
            Duration::from_secs(30),
        )
        .map_err(|e| format!("direct READ KEYS on the partition: errno {e}"))?;
        let listed = u32::from_be_bytes([keys[4], keys[5], keys[6], keys[7]]);
        if direct.status != 0 || listed == 0 {
            return Err(format!(
                "direct READ KEYS on the partition: status {:#x}, {listed} key bytes (expected the whole disk's keys)",
                direct.status
            ));
        }
        for socket in sockets {
            refused(exec::with_fd(socket, fd.as_fd(), &read_keys, &[]))
                .map_err(|e| format!("{socket} on {name} ({number}): {e}"))?;
        }
        Ok(())
    })();
    for p in kept {
        let _ = blkpg_partition(disk, 2, p, 0, 0);
    }
    result
}

/// READ KEYS through the helper at `socket` on an O_PATH fd of `dev`.
pub fn o_path_read_keys(socket: &str, dev: &Path) -> Result<Outcome, String> {
    let fd: OwnedFd = nix::fcntl::open(
        dev,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("open O_PATH {}: {e}", dev.display()))?;
    exec::with_fd(socket, fd.as_fd(), &pr_in_cdb(sa_in::READ_KEYS, 8192), &[])
}
