//! Which descriptors may carry a persistent-reservation command at all
//! (D27, D28). Checked once per request, before SG_IO and before multipath
//! detection, by [`crate::server::command::Executor::route`].
//!
//! The fd itself is inspected once per request ([`Inspected`]: one F_GETFL,
//! one fstat, and for a block device one BLKGETDISKSEQ); the check, the
//! read-only rule of PR OUT, the device key of the per-device bound (D29)
//! and multipath detection all read that. (The
//! log line of a failed request and the audit record of a PR OUT still
//! make their own fstat, in `reply` and `audit`.)
//!
//! * **O_PATH descriptors (D28).** An O_PATH fd gives no access to the
//!   device: SG_IO on it fails with EBADF. libmpathpersist, however, only
//!   checks that the fd is a block device and opens the path devices itself,
//!   so on a multipath map an O_PATH fd would read keys and reservations.
//!   Every O_PATH fd is refused as the kernel refuses SG_IO on one.
//! * **Partitions and partial device-mapper targets (D27).** SG_IO acts on
//!   the whole logical unit. Linux 6.1 therefore refuses it to callers
//!   without CAP_SYS_RAWIO on a partition (`sd_ioctl`:
//!   `bdev_is_partition(bdev) && !capable(CAP_SYS_RAWIO)` gives
//!   -ENOIOCTLCMD, which `vfs_ioctl` turns into ENOTTY) and on a
//!   device-mapper device whose target maps only part of the device below
//!   it (`dm_blk_ioctl`: the target's `prepare_ioctl` returns 1, e.g.
//!   dm-linear when `start != 0 || len != bdev_nr_sectors(dev)`, dm-mpath
//!   when `len != bdev_nr_sectors(path)`); the ioctl then goes on to the
//!   device below, which is checked the same way. pr-helper holds
//!   CAP_SYS_RAWIO, so it applies the same rule itself.
//!
//! The rule is evaluated from sysfs (no privilege, no device-mapper ioctl,
//! the same in plain and multipath builds), relative to `/sys/dev/block`
//! opened once at start-up ([`init`]), so that deciding for a whole disk or
//! a partition opens nothing at request time: a client that fills the
//! helper's fd table cannot make the check fail.
//!
//! * The entry `M:m` is a symbolic link to the device's directory. A
//!   partition's directory is always its disk's child
//!   (`…/block/sda/sda1`), so when exactly one component follows the
//!   first `block` of the link (`…/block/sda`, `…/virtual/block/loop0`),
//!   the device is a whole disk: one `readlinkat`, the common case. Any
//!   other shape is decided by the entries themselves:
//! * `M:m/partition` exists: a partition, refused;
//! * `M:m/dm` exists (the kernel names every dm device `dm-N`): every
//!   device below it (`slaves/*`) must have exactly the dm device's size,
//!   and is checked in turn. For a single-target table this is the kernel's
//!   test: the table is validated to fit inside each device
//!   (`start + len <= size`), so `len == size` implies `start == 0`. A table
//!   the kernel refuses whatever the caller's capabilities (more than one
//!   target, a target without `prepare_ioctl`) gets the same reply either
//!   way: ENOTTY. Reading sizes and listing `slaves/` needs fds; when none
//!   can be had the request is refused.
//!
//! The check fails closed: any error other than "this entry does not
//! exist" refuses the request. A device number with no entry at all is a
//! disk or partition that went away under an open fd; a deleted partition
//! still takes SG_IO (to the whole disk) from a caller with CAP_SYS_RAWIO,
//! so it is refused too, with the reply the kernel gives for a removed
//! device (ENODEV, 04/44/00).
//!
//! **One decision is remembered: "a whole disk, not device-mapper"**
//! ([`WholeDisks`]), keyed by the device number together with the disk
//! sequence number the fd reports (BLKGETDISKSEQ, an ioctl on the client's
//! own fd: no new fd, no sysfs). A sequence number belongs to one disk
//! since boot, and a disk keeps its device number for as long as it lives,
//! so a later fd with the same pair is on the same disk, which is still a
//! whole disk and still not dm. A reused device number comes with another
//! sequence number (a partition reports its disk's, a new disk gets a new
//! one) and is decided anew. Nothing else is remembered: a refusal (cheap
//! to repeat, and a partition's number may become anything), and no dm
//! device, whose table can be reloaded under the same disk and sequence
//! number. Without the number (Linux before 5.15, or the ioctl failed)
//! every request is decided from sysfs. A remembered disk that is later
//! removed under an open fd gets SG_IO, and with it the kernel's own
//! answer for a removed disk, as from the reference.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::num::NonZeroU64;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Mutex, OnceLock};

use nix::errno::Errno;
use nix::fcntl::{fcntl, AtFlags, FcntlArg, OFlag};
use nix::sys::stat::Mode;

use crate::scsi::{self, sgio, Completion};

/// Deepest stack of block devices followed (dm on dm on ...); the kernel's
/// own limit on stacking is far lower in practice.
const MAX_DEPTH: usize = 16;

/// Why a request's fd is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The fd was opened with O_PATH (D28).
    OPath,
    /// The fd is, or sits on, a partition (D27).
    Partition(String),
    /// A device-mapper device that maps only part of the device below (D27).
    PartialMapping(String),
    /// The device has no sysfs entry any more: removed under an open fd.
    Gone(String),
    /// What the fd refers to could not be determined (the error says why).
    Unchecked(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::OPath => f.write_str("the fd was opened with O_PATH"),
            Refused::Partition(dev) => write!(
                f,
                "{dev} is a partition: a SCSI command would act on the whole disk"
            ),
            Refused::PartialMapping(dev) => write!(
                f,
                "{dev} maps only part of the device below it: a SCSI command would act on the whole disk"
            ),
            Refused::Gone(dev) => write!(
                f,
                "block device {dev} has no sysfs entry (removed while the fd was open)"
            ),
            Refused::Unchecked(why) => write!(
                f,
                "cannot tell whether the fd is a whole device ({why}); refused rather than risk the whole disk"
            ),
        }
    }
}

impl Refused {
    /// The reply: what QEMU gets from the reference helper when the kernel
    /// refuses the SG_IO ioctl (spec §6.4: EBADF for an O_PATH fd, ENOTTY
    /// for a partition or partial mapping; both CHECK CONDITION, ABORTED
    /// COMMAND, I/O PROCESS TERMINATED, 0B/00/06).
    pub fn completion(&self) -> Completion {
        let errno = match self {
            Refused::OPath => libc::EBADF,
            Refused::Gone(_) => libc::ENODEV,
            Refused::Partition(_) | Refused::PartialMapping(_) | Refused::Unchecked(_) => {
                libc::ENOTTY
            }
        };
        scsi::complete(Err(errno), 0)
    }
}

/// What the helper needs to know about a request's fd, read once per
/// request: its status flags (F_GETFL) and what it refers to (fstat). Each
/// is None (or the errno) when the call failed, which every reader treats
/// as the code before this struct treated its own failing call.
///
/// Reading once is exact, not an approximation: neither the access mode nor
/// O_PATH can be changed on an open file (F_SETFL ignores them), and an fd
/// always refers to the same file.
#[derive(Debug, Clone, Copy)]
pub struct Inspected {
    flags: Option<OFlag>,
    stat: Result<Stat, Errno>,
    /// The disk sequence number, for a block device on Linux 5.15 and
    /// later (None otherwise; the kernel numbers from 1, and a 0 would be
    /// treated as no number).
    disk_seq: Option<NonZeroU64>,
}

/// The part of `struct stat` the helper reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// File type (`st_mode & S_IFMT`).
    pub kind: libc::mode_t,
    /// Device number, for block and character devices.
    pub rdev: u64,
    /// File system and inode, for anything else.
    pub dev: u64,
    /// See `dev`.
    pub ino: u64,
}

impl Inspected {
    /// Inspects `fd`: one F_GETFL, one fstat, and for a block device one
    /// BLKGETDISKSEQ.
    pub fn of(fd: BorrowedFd<'_>) -> Inspected {
        let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL)
            .ok()
            .map(OFlag::from_bits_truncate);
        let stat = nix::sys::stat::fstat(fd).map(|st| Stat {
            kind: st.st_mode & libc::S_IFMT,
            rdev: st.st_rdev,
            dev: st.st_dev,
            ino: st.st_ino,
        });
        let disk_seq = match stat {
            Ok(st) if st.kind == libc::S_IFBLK => {
                sgio::disk_sequence(fd).ok().and_then(NonZeroU64::new)
            }
            _ => None,
        };
        Inspected {
            flags,
            stat,
            disk_seq,
        }
    }

    /// True when the fd was opened read-only. PR OUT changes device state,
    /// and with CAP_SYS_RAWIO the kernel would not stop it on a read-only
    /// fd, so the helper refuses it itself (spec §4.1). If F_GETFL failed
    /// the reference lets the command through, and so do we.
    pub fn is_read_only(&self) -> bool {
        self.flags
            .is_some_and(|flags| flags & OFlag::O_ACCMODE == OFlag::O_RDONLY)
    }

    /// True when the fd was opened with O_PATH (false if F_GETFL failed).
    #[cfg(test)]
    pub fn is_o_path(&self) -> bool {
        self.flags
            .is_some_and(|flags| flags.contains(OFlag::O_PATH))
    }

    /// What fstat said, or its errno.
    pub fn stat(&self) -> Result<Stat, Errno> {
        self.stat
    }
}

/// `/sys/dev/block`, opened by [`init`] (or, failing that, by the first
/// check that can).
static DEV_BLOCK: OnceLock<OwnedFd> = OnceLock::new();

/// Opens `/sys/dev/block` for every later check; called at start-up,
/// before the sandbox and while fds are plentiful.
pub fn init() -> Result<(), Errno> {
    dev_block().map(|_| ())
}

fn dev_block() -> Result<BorrowedFd<'static>, Errno> {
    if let Some(fd) = DEV_BLOCK.get() {
        return Ok(fd.as_fd());
    }
    let fd = nix::fcntl::open(
        "/sys/dev/block",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Ok(DEV_BLOCK.get_or_init(|| fd).as_fd())
}

/// Checks `fd` (see the module documentation); `Ok(())` lets the command
/// through to SG_IO or the multipath worker.
pub fn check(fd: &Inspected) -> Result<(), Refused> {
    static REMEMBERED: WholeDisks = WholeDisks::new();
    // Anything but a block device needs no sysfs (below).
    if !matches!(fd.stat(), Ok(st) if st.kind == libc::S_IFBLK) {
        return check_in(fd, None, &REMEMBERED);
    }
    match dev_block() {
        Ok(dir) => check_in(fd, Some(dir), &REMEMBERED),
        Err(e) => Err(Refused::Unchecked(format!("/sys/dev/block: {e}"))),
    }
}

/// [`check`] with `dev_block` as `/sys/dev/block` and `remembered` as the
/// whole disks decided before (tests use a fake tree and their own set).
pub fn check_in(
    fd: &Inspected,
    dev_block: Option<BorrowedFd<'_>>,
    remembered: &WholeDisks,
) -> Result<(), Refused> {
    match fd.flags {
        None => return Err(Refused::Unchecked("F_GETFL failed".into())),
        Some(flags) if flags.contains(OFlag::O_PATH) => return Err(Refused::OPath),
        Some(_) => {}
    }
    let st = fd
        .stat()
        .map_err(|e| Refused::Unchecked(format!("fstat: {e}")))?;
    if st.kind != libc::S_IFBLK {
        // sg character devices and anything else: whole devices, or not
        // SCSI at all (the ioctl fails).
        return Ok(());
    }
    let key = fd.disk_seq.map(|seq| (st.rdev, seq.get()));
    if key.is_some_and(|key| remembered.contains(key)) {
        return Ok(());
    }
    let dev_block = dev_block.ok_or_else(|| Refused::Unchecked("no /sys/dev/block".to_string()))?;
    let dev = format!("{}:{}", libc::major(st.rdev), libc::minor(st.rdev));
    if let (Whole::Disk, Some(key)) = (whole_unit(dev_block, &dev, 0)?, key) {
        remembered.insert(key);
    }
    Ok(())
}

/// The block devices decided to be whole disks and not device-mapper
/// devices, as (device number, disk sequence number) pairs (see the module
/// documentation for why the pair cannot be faked by a reused number).
///
/// Bounded: when [`WholeDisks::LIMIT`] pairs are held (disks that came and
/// went, or loop devices attached again and again) it starts over, which
/// costs one sysfs lookup per disk and nothing else.
pub struct WholeDisks(Mutex<Option<HashSet<(u64, u64)>>>);

impl WholeDisks {
    /// At most this many pairs are held.
    pub const LIMIT: usize = 4096;

    /// An empty set (const: it lives in a static).
    pub const fn new() -> WholeDisks {
        WholeDisks(Mutex::new(None))
    }

    fn contains(&self, key: (u64, u64)) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|set| set.contains(&key))
    }

    fn insert(&self, key: (u64, u64)) {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let set = guard.get_or_insert_with(HashSet::new);
        if set.len() >= WholeDisks::LIMIT {
            set.clear();
        }
        set.insert(key);
    }

    /// How many pairs are held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap().as_ref().map_or(0, |set| set.len())
    }
}

/// What [`whole_unit`] found a device that may take the command to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Whole {
    /// A whole disk that is not device-mapper: decided for as long as the
    /// disk lives ([`WholeDisks`]).
    Disk,
    /// A device-mapper device whose table maps whole devices: decided for
    /// this request only (a table can be reloaded).
    Mapped,
}

/// The kernel's rule for block device `dev` ("M:m"), with `dir` the
/// `/sys/dev/block` directory.
fn whole_unit(dir: BorrowedFd<'_>, dev: &str, depth: usize) -> Result<Whole, Refused> {
    let link = match nix::fcntl::readlinkat(dir, dev) {
        Ok(link) => link,
        Err(Errno::ENOENT) => return Err(Refused::Gone(dev.to_string())),
        Err(e) => return Err(Refused::Unchecked(format!("readlink {dev}: {e}"))),
    };
    let link = link.as_bytes();
    let name = link.rsplit(|&b| b == b'/').next().unwrap_or(link);
    let named = || format!("{} ({dev})", String::from_utf8_lossy(name));
    let exists = |entry: &str| -> Result<bool, Refused> {
        match nix::sys::stat::fstatat(
            dir,
            format!("{dev}/{entry}").as_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(_) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(Refused::Unchecked(format!("{dev}/{entry}: {e}"))),
        }
    };
    let is_dm = if after_first_block(link) == Some(1) {
        // A whole disk (a partition has at least two components there); the
        // kernel names device-mapper devices dm-N and nothing else so.
        name.starts_with(b"dm-") && exists("dm")?
    } else {
        if exists("partition")? {
            return Err(Refused::Partition(named()));
        }
        exists("dm")?
    };
    if !is_dm {
        return Ok(Whole::Disk);
    }
    // Anything unreadable from here on refuses: the device exists and is a
    // dm device, so the rule must be decided, not guessed.
    let partial = || Refused::PartialMapping(named());
    if depth >= MAX_DEPTH {
        return Err(partial());
    }
    let size = read_trimmed(dir, &format!("{dev}/size")).ok_or_else(partial)?;
    let slaves_path = format!("{dev}/slaves");
    let mut slaves = nix::dir::Dir::openat(
        dir,
        slaves_path.as_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|_| partial())?;
    let mut below_devs = Vec::new();
    for entry in slaves.iter() {
        let entry = entry.map_err(|_| partial())?;
        let slave = OsStr::from_bytes(entry.file_name().to_bytes());
        if slave == "." || slave == ".." {
            continue;
        }
        let slave = slave.to_str().ok_or_else(partial)?;
        let at = |file: &str| format!("{slaves_path}/{slave}/{file}");
        let below = read_trimmed(dir, &at("dev")).ok_or_else(partial)?;
        let below_size = read_trimmed(dir, &at("size")).ok_or_else(partial)?;
        if below_size != size {
            return Err(partial());
        }
        below_devs.push(below);
    }
    drop(slaves);
    for below in below_devs {
        whole_unit(dir, &below, depth + 1)?;
    }
    Ok(Whole::Mapped)
}

/// How many components of a sysfs device link follow its first `block`
/// component (None without one).
fn after_first_block(link: &[u8]) -> Option<usize> {
    let mut parts = link.split(|&b| b == b'/').filter(|p| !p.is_empty());
    parts.by_ref().find(|p| *p == b"block")?;
    Some(parts.count())
}

/// The trimmed text of `path` below `dir`.
fn read_trimmed(dir: BorrowedFd<'_>, path: &str) -> Option<String> {
    let fd =
        nix::fcntl::openat(dir, path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).ok()?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut text).ok()?;
    Some(text.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::fd::AsFd;
    use std::os::unix::fs::symlink;
    use std::path::{Path, PathBuf};

    /// A fake sysfs: /sys/dev/block/M:m -> ../../devices/NAME, as on Linux.
    struct Sysfs(tempfile::TempDir);

    impl Sysfs {
        /// `dev/block` opened as the helper opens /sys/dev/block.
        fn dev_block(&self) -> OwnedFd {
            nix::fcntl::open(
                &self.root().join("dev/block"),
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .unwrap()
        }

        /// A device at `path` below `devices/` (the real layout: disks
        /// under `…/block/NAME`, partitions in their disk's directory).
        fn at(&self, path: &str, dev: &str, size: u64) -> PathBuf {
            let d = self.root().join("devices").join(path);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("dev"), format!("{dev}\n")).unwrap();
            fs::write(d.join("size"), format!("{size}\n")).unwrap();
            symlink(
                format!("../../devices/{path}"),
                self.root().join("dev/block").join(dev),
            )
            .unwrap();
            d
        }

        fn new() -> Self {
            let t = tempfile::tempdir().unwrap();
            fs::create_dir_all(t.path().join("dev/block")).unwrap();
            fs::create_dir_all(t.path().join("devices")).unwrap();
            Sysfs(t)
        }

        fn root(&self) -> &Path {
            self.0.path()
        }

        /// A device directly below `devices/` (no `block` in its link: the
        /// check decides from the entries).
        fn device(&self, name: &str, dev: &str, size: u64) -> PathBuf {
            self.at(name, dev, size)
        }

        fn partition(&self, name: &str, dev: &str, size: u64) {
            let d = self.device(name, dev, size);
            fs::write(d.join("partition"), "1\n").unwrap();
        }

        fn dm(&self, name: &str, dev: &str, size: u64, slaves: &[&str]) {
            let d = self.device(name, dev, size);
            fs::create_dir_all(d.join("dm")).unwrap();
            fs::create_dir_all(d.join("slaves")).unwrap();
            for s in slaves {
                symlink(format!("../../{s}"), d.join("slaves").join(s)).unwrap();
            }
        }

        fn check(&self, dev: &str) -> Result<(), Refused> {
            whole_unit(self.dev_block().as_fd(), dev, 0).map(|_| ())
        }
    }

    #[test]
    fn the_kernels_rule_on_a_fake_sysfs() {
        let s = Sysfs::new();
        s.device("sda", "8:0", 32768);
        s.partition("sda1", "8:1", 8192);
        s.device("sdb", "8:16", 32768);
        // Whole disk.
        assert_eq!(s.check("8:0"), Ok(()));
        // Partition.
        assert!(matches!(s.check("8:1"), Err(Refused::Partition(n)) if n == "sda1 (8:1)"));
        // Linear with offset or shorter than the disk (LVM): refused.
        s.dm("dm-0", "254:0", 8192, &["sda"]);
        assert!(matches!(s.check("254:0"), Err(Refused::PartialMapping(_))));
        // Full-size linear (offset 0 follows from the size): allowed.
        s.dm("dm-1", "254:1", 32768, &["sda"]);
        assert_eq!(s.check("254:1"), Ok(()));
        // Multipath over two whole disks: allowed.
        s.dm("dm-2", "254:2", 32768, &["sda", "sdb"]);
        assert_eq!(s.check("254:2"), Ok(()));
        // Full-size linear over a partition: the kernel passes the ioctl to
        // the partition, which refuses it.
        s.dm("dm-3", "254:3", 8192, &["sda1"]);
        assert!(matches!(s.check("254:3"), Err(Refused::Partition(_))));
        // Full-size linear over a partial one: refused one level down.
        s.dm("dm-4", "254:4", 8192, &["dm-0"]);
        assert!(matches!(s.check("254:4"), Err(Refused::PartialMapping(n)) if n.contains("dm-0")));
        // Full-size linear over a full-size one: allowed.
        s.dm("dm-5", "254:5", 32768, &["dm-1"]);
        assert_eq!(s.check("254:5"), Ok(()));
        // A dm device with no device below (dm-zero, no table): the kernel
        // answers (ENOTTY), nothing to refuse here.
        s.dm("dm-6", "254:6", 0, &[]);
        assert_eq!(s.check("254:6"), Ok(()));
        // No sysfs entry: a disk or partition removed under an open fd.
        // A deleted partition would still take SG_IO to the whole disk, so
        // it is refused, with the reply for a removed device.
        assert_eq!(s.check("8:99"), Err(Refused::Gone("8:99".into())));
        assert_eq!(
            Refused::Gone("8:99".into()).completion(),
            scsi::complete(Err(libc::ENODEV), 0)
        );
        // A dm device whose size cannot be read: refused, not guessed.
        s.dm("dm-7", "254:7", 1, &["sda"]);
        fs::remove_file(s.root().join("devices/dm-7/size")).unwrap();
        assert!(matches!(s.check("254:7"), Err(Refused::PartialMapping(_))));
        // A loop of devices (impossible in the kernel) ends.
        s.dm("dm-8", "254:8", 5, &["dm-9"]);
        s.dm("dm-9", "254:9", 5, &["dm-8"]);
        assert!(matches!(s.check("254:8"), Err(Refused::PartialMapping(_))));
    }

    /// The layout of a real sysfs: whole disks decided from the link alone,
    /// everything else from the entries.
    #[test]
    fn the_link_decides_whole_disks_and_nothing_else() {
        let s = Sysfs::new();
        let scsi = "pci0000:00/0000:00:04.0/host0/target0:0:0/0:0:0:0/block";
        s.at(&format!("{scsi}/sda"), "8:0", 32768);
        let p = s.at(&format!("{scsi}/sda/sda1"), "8:1", 8192);
        fs::write(p.join("partition"), "1\n").unwrap();
        s.at("virtual/block/loop0", "7:0", 32768);
        let lp = s.at("virtual/block/loop0/loop0p1", "259:0", 100);
        fs::write(lp.join("partition"), "1\n").unwrap();
        assert_eq!(s.check("8:0"), Ok(()));
        assert_eq!(s.check("7:0"), Ok(()));
        assert!(matches!(s.check("8:1"), Err(Refused::Partition(n)) if n == "sda1 (8:1)"));
        assert!(matches!(s.check("259:0"), Err(Refused::Partition(n)) if n == "loop0p1 (259:0)"));
        // A disk named "block": its partitions still have two components
        // after the first "block".
        s.at("virtual/block/block", "7:9", 32768);
        let bp = s.at("virtual/block/block/block1", "259:9", 100);
        fs::write(bp.join("partition"), "1\n").unwrap();
        assert_eq!(s.check("7:9"), Ok(()));
        assert!(matches!(s.check("259:9"), Err(Refused::Partition(_))));
        // No "block" in the link (an NVMe multipath head): the entries decide.
        let nv = s.at(
            "virtual/nvme-subsystem/nvme-subsys0/nvme0n1/nvme0n1p1",
            "259:5",
            100,
        );
        fs::write(nv.join("partition"), "1\n").unwrap();
        assert!(matches!(s.check("259:5"), Err(Refused::Partition(_))));
        // dm devices: named dm-N with a dm/ directory; the rule as above.
        let dm = s.at("virtual/block/dm-0", "254:0", 8192);
        fs::create_dir_all(dm.join("dm")).unwrap();
        fs::create_dir_all(dm.join("slaves")).unwrap();
        symlink(format!("../../../../{scsi}/sda"), dm.join("slaves/sda")).unwrap();
        assert!(matches!(s.check("254:0"), Err(Refused::PartialMapping(n)) if n == "dm-0 (254:0)"));
        fs::write(dm.join("size"), "32768\n").unwrap();
        assert_eq!(s.check("254:0"), Ok(()));
        // A slave that is a partition: refused one level down.
        fs::write(dm.join("size"), "8192\n").unwrap();
        fs::remove_file(dm.join("slaves/sda")).unwrap();
        symlink(
            format!("../../../../{scsi}/sda/sda1"),
            dm.join("slaves/sda1"),
        )
        .unwrap();
        assert!(matches!(s.check("254:0"), Err(Refused::Partition(n)) if n.contains("sda1")));
        // Named dm- but no dm/ directory: not device-mapper.
        s.at("virtual/block/dm-odd", "7:5", 1);
        assert_eq!(s.check("7:5"), Ok(()));
    }

    #[test]
    fn one_inspection_answers_every_question_about_the_fd() {
        use crate::server::isolation::DevKey;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"x").unwrap();
        let ro = fs::File::open(&path).unwrap();
        let rw = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let o_path: std::os::fd::OwnedFd = nix::fcntl::open(
            &path,
            OFlag::O_PATH | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        let (ro_i, rw_i) = (Inspected::of(ro.as_fd()), Inspected::of(rw.as_fd()));
        assert!(ro_i.is_read_only() && !ro_i.is_o_path());
        assert!(!rw_i.is_read_only() && !rw_i.is_o_path());
        assert!(Inspected::of(o_path.as_fd()).is_o_path());
        let st = nix::sys::stat::stat(&path).unwrap();
        let got = rw_i.stat().unwrap();
        assert_eq!(
            (got.kind, got.dev, got.ino),
            (libc::S_IFREG, st.st_dev, st.st_ino)
        );
        // The device key read from the inspection is the one fstat gives.
        assert_eq!(DevKey::inspected(&rw_i), DevKey::of(rw.as_fd()));
        let null = fs::File::open("/dev/null").unwrap();
        let null_i = Inspected::of(null.as_fd());
        assert_eq!(null_i.stat().unwrap().kind, libc::S_IFCHR);
        assert_eq!(DevKey::inspected(&null_i), DevKey::of(null.as_fd()));
    }

    #[test]
    fn o_path_is_refused_and_other_fds_pass() {
        let s = Sysfs::new();
        let dir = s.dev_block();
        let f = fs::File::open("/dev/null").unwrap();
        assert_eq!(
            check_in(
                &Inspected::of(f.as_fd()),
                Some(dir.as_fd()),
                &WholeDisks::new()
            ),
            Ok(())
        );
        // Any failure to inspect refuses.
        let failed = Inspected {
            flags: None,
            stat: Err(Errno::EBADF),
            disk_seq: None,
        };
        assert!(matches!(
            check_in(&failed, Some(dir.as_fd()), &WholeDisks::new()),
            Err(Refused::Unchecked(_))
        ));
        let failed = Inspected {
            flags: Some(OFlag::O_RDWR),
            stat: Err(Errno::ENOMEM),
            disk_seq: None,
        };
        assert!(matches!(
            check_in(&failed, Some(dir.as_fd()), &WholeDisks::new()),
            Err(Refused::Unchecked(_))
        ));
        let o_path: std::os::fd::OwnedFd = nix::fcntl::open(
            "/dev/null",
            OFlag::O_PATH | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        assert_eq!(
            check_in(
                &Inspected::of(o_path.as_fd()),
                Some(dir.as_fd()),
                &WholeDisks::new()
            ),
            Err(Refused::OPath)
        );
        let c = Refused::OPath.completion();
        assert_eq!(c.status, scsi::status::CHECK_CONDITION);
        assert_eq!(c.sense, scsi::SenseCode::IO_ERROR.fixed_buffer());
        assert_eq!(
            Refused::Partition("x".into()).completion(),
            scsi::complete(Err(libc::ENOTTY), 0)
        );
    }

    /// A block device fd as [`Inspected::of`] would describe it.
    fn block(rdev: u64, disk_seq: Option<u64>, flags: OFlag) -> Inspected {
        let disk_seq = disk_seq.and_then(NonZeroU64::new);
        Inspected {
            flags: Some(flags),
            stat: Ok(Stat {
                kind: libc::S_IFBLK,
                rdev,
                dev: 5,
                ino: 1,
            }),
            disk_seq,
        }
    }

    /// A remembered decision holds for its (device number, disk sequence
    /// number) pair only: the same number on another disk (a partition
    /// created where a whole disk was, as an NVMe namespace's 259:N can
    /// become a partition's) is decided anew, and dm devices and fds
    /// without a sequence number are never remembered.
    #[test]
    fn a_reused_device_number_is_decided_anew() {
        let s = Sysfs::new();
        let dir = s.dev_block();
        let remembered = WholeDisks::new();
        let ext0 = libc::makedev(259, 0);
        let check = |fd: &Inspected| check_in(fd, Some(dir.as_fd()), &remembered);
        s.at("virtual/nvme/nvme0/nvme0n1", "259:0", 32768);
        // The disk itself, with its sequence number 7: decided, remembered.
        let disk = block(ext0, Some(7), OFlag::O_RDWR);
        assert_eq!(check(&disk), Ok(()));
        assert_eq!(remembered.len(), 1);
        // The disk goes, and 259:0 becomes a partition of a disk whose
        // sequence number is 9.
        fs::remove_file(s.root().join("dev/block/259:0")).unwrap();
        let p = s.at("virtual/block/loop0/loop0p1", "259:0", 100);
        fs::write(
            p.join("partition"),
            "1
",
        )
        .unwrap();
        let partition = block(ext0, Some(9), OFlag::O_RDWR);
        assert!(matches!(check(&partition), Err(Refused::Partition(n)) if n == "loop0p1 (259:0)"));
        // Refusals are not remembered, and the pair of the first disk is
        // still what it was (the kernel gives 7 to no other disk).
        assert_eq!(remembered.len(), 1);
        assert_eq!(check(&disk), Ok(()));
        // Without a sequence number (Linux < 5.15) nothing is remembered:
        // each request reads sysfs.
        assert!(matches!(
            check(&block(ext0, None, OFlag::O_RDWR)),
            Err(Refused::Partition(_))
        ));
        // The flags are checked on every fd, remembered or not.
        assert_eq!(
            check(&block(ext0, Some(7), OFlag::O_RDWR | OFlag::O_PATH)),
            Err(Refused::OPath)
        );
        // A dm device is decided on every request: its table can be
        // reloaded under the same number and sequence number.
        s.at("virtual/block/sda", "8:0", 32768);
        let dm = s.at("virtual/block/dm-0", "254:0", 32768);
        fs::create_dir_all(dm.join("dm")).unwrap();
        fs::create_dir_all(dm.join("slaves")).unwrap();
        symlink("../../sda", dm.join("slaves/sda")).unwrap();
        let map = block(libc::makedev(254, 0), Some(11), OFlag::O_RDWR);
        assert_eq!(check(&map), Ok(()));
        assert_eq!(remembered.len(), 1, "a dm device is not remembered");
        fs::write(dm.join("size"), "8192\n").unwrap();
        assert!(matches!(check(&map), Err(Refused::PartialMapping(_))));
        // A whole disk seen again is answered without sysfs: with its
        // entry gone, the remembered pair still lets it through.
        let sda = block(libc::makedev(8, 0), Some(3), OFlag::O_RDWR);
        assert_eq!(check(&sda), Ok(()));
        assert_eq!(remembered.len(), 2);
        fs::remove_file(s.root().join("dev/block/8:0")).unwrap();
        assert_eq!(check(&sda), Ok(()));
        assert!(matches!(
            check(&block(libc::makedev(8, 0), Some(4), OFlag::O_RDWR)),
            Err(Refused::Gone(_))
        ));
    }

    #[test]
    fn the_remembered_set_is_bounded() {
        let remembered = WholeDisks::new();
        for seq in 0..(WholeDisks::LIMIT as u64 + 10) {
            remembered.insert((1, seq));
        }
        assert!(remembered.len() <= WholeDisks::LIMIT);
        assert!(remembered.contains((1, WholeDisks::LIMIT as u64 + 9)));
    }
}
