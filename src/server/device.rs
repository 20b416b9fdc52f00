//! Which descriptors may carry a persistent-reservation command at all
//! (D27, D28). Checked once per request, before SG_IO and before multipath
//! detection, by [`crate::server::command::Executor::route`].
//!
//! The fd itself is inspected once per request ([`Inspected`]: one F_GETFL,
//! one fstat); the check, the read-only rule of PR OUT, the device key of
//! the per-device bound (D29) and multipath detection all read that.
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
//! the same in plain and multipath builds):
//!
//! * `/sys/dev/block/M:m/partition` exists: a partition, refused;
//! * `/sys/dev/block/M:m/dm` exists: every device below it
//!   (`slaves/*`) must have exactly the dm device's size, and is checked in
//!   turn. For a single-target table this is the kernel's test: the table
//!   is validated to fit inside each device (`start + len <= size`), so
//!   `len == size` implies `start == 0`. A table the kernel refuses whatever
//!   the caller's capabilities (more than one target, a target without
//!   `prepare_ioctl`) gets the same reply either way: ENOTTY.
//!
//! Nothing is cached: a device number can be reused by a different
//! partition or a reloaded dm table at any time. The cost is a few sysfs
//! reads per request (measured in README, "Benchmark").
//!
//! A block device without a sysfs entry (a disk that went away under an
//! open fd) is left to the kernel, which fails the ioctl as before.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};

use crate::scsi::{self, Completion};

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
            Refused::Partition(_) | Refused::PartialMapping(_) => libc::ENOTTY,
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
    /// Inspects `fd`: one F_GETFL, one fstat.
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
        Inspected { flags, stat }
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
    pub fn is_o_path(&self) -> bool {
        self.flags
            .is_some_and(|flags| flags.contains(OFlag::O_PATH))
    }

    /// What fstat said, or its errno.
    pub fn stat(&self) -> Result<Stat, Errno> {
        self.stat
    }
}

/// Checks `fd` (see the module documentation); `Ok(())` lets the command
/// through to SG_IO or the multipath worker.
pub fn check(fd: &Inspected) -> Result<(), Refused> {
    check_in(fd, Path::new("/sys"))
}

/// [`check`] with sysfs mounted at `sysfs` (tests use a fake tree).
pub fn check_in(fd: &Inspected, sysfs: &Path) -> Result<(), Refused> {
    // F_GETFL reports O_PATH; a failing F_GETFL leaves it to the kernel.
    if fd.is_o_path() {
        return Err(Refused::OPath);
    }
    let Ok(st) = fd.stat() else {
        return Ok(());
    };
    if st.kind != libc::S_IFBLK {
        // sg character devices and anything else: whole devices, or not
        // SCSI at all (the ioctl fails).
        return Ok(());
    }
    let dev = format!("{}:{}", libc::major(st.rdev), libc::minor(st.rdev));
    whole_unit(&sysfs.join("dev/block").join(&dev), &dev, 0)
}

/// The kernel's rule for the block device whose sysfs directory is `dir`.
///
/// The common case (a whole disk) costs one path walk: the directory is
/// opened once (O_PATH) and `partition` and `dm` are looked up relative to
/// it.
fn whole_unit(dir: &Path, dev: &str, depth: usize) -> Result<(), Refused> {
    // No sysfs entry (the disk went away, or no sysfs at all): left to the
    // kernel, as before this check existed.
    let Ok(dir_fd) = nix::fcntl::open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) else {
        return Ok(());
    };
    let has = |name: &str| {
        nix::sys::stat::fstatat(&dir_fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
    };
    let name = || {
        std::fs::read_link(dir)
            .ok()
            .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
            .map_or_else(|| dev.to_string(), |n| format!("{n} ({dev})"))
    };
    if has("partition") {
        return Err(Refused::Partition(name()));
    }
    if !has("dm") {
        return Ok(());
    }
    // Anything unreadable from here on refuses: the device exists and is a
    // dm device, so the rule must be decided, not guessed.
    let partial = || Refused::PartialMapping(name());
    if depth >= MAX_DEPTH {
        return Err(partial());
    }
    let size = read_trimmed(&dir.join("size")).ok_or_else(partial)?;
    let slaves = std::fs::read_dir(dir.join("slaves")).map_err(|_| partial())?;
    for slave in slaves {
        let slave: PathBuf = slave.map_err(|_| partial())?.path();
        let below = read_trimmed(&slave.join("dev")).ok_or_else(partial)?;
        let below_size = read_trimmed(&slave.join("size")).ok_or_else(partial)?;
        if below_size != size {
            return Err(partial());
        }
        let below_dir = dir.parent().map(|p| p.join(&below)).ok_or_else(partial)?;
        whole_unit(&below_dir, &below, depth + 1)?;
    }
    Ok(())
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::fd::AsFd;
    use std::os::unix::fs::symlink;

    /// A fake sysfs: /sys/dev/block/M:m -> ../../devices/NAME, as on Linux.
    struct Sysfs(tempfile::TempDir);

    impl Sysfs {
        fn new() -> Self {
            let t = tempfile::tempdir().unwrap();
            fs::create_dir_all(t.path().join("dev/block")).unwrap();
            fs::create_dir_all(t.path().join("devices")).unwrap();
            Sysfs(t)
        }

        fn root(&self) -> &Path {
            self.0.path()
        }

        fn device(&self, name: &str, dev: &str, size: u64) -> PathBuf {
            let d = self.root().join("devices").join(name);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("dev"), format!("{dev}\n")).unwrap();
            fs::write(d.join("size"), format!("{size}\n")).unwrap();
            symlink(
                format!("../../devices/{name}"),
                self.root().join("dev/block").join(dev),
            )
            .unwrap();
            d
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
            let dir = self.root().join("dev/block").join(dev);
            whole_unit(&dir, dev, 0)
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
        // No sysfs entry (the disk went away): the kernel answers.
        assert_eq!(s.check("8:99"), Ok(()));
        // A dm device whose size cannot be read: refused, not guessed.
        s.dm("dm-7", "254:7", 1, &["sda"]);
        fs::remove_file(s.root().join("devices/dm-7/size")).unwrap();
        assert!(matches!(s.check("254:7"), Err(Refused::PartialMapping(_))));
        // A loop of devices (impossible in the kernel) ends.
        s.dm("dm-8", "254:8", 5, &["dm-9"]);
        s.dm("dm-9", "254:9", 5, &["dm-8"]);
        assert!(matches!(s.check("254:8"), Err(Refused::PartialMapping(_))));
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
        let f = fs::File::open("/dev/null").unwrap();
        assert_eq!(check_in(&Inspected::of(f.as_fd()), s.root()), Ok(()));
        let o_path: std::os::fd::OwnedFd = nix::fcntl::open(
            "/dev/null",
            OFlag::O_PATH | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        assert_eq!(
            check_in(&Inspected::of(o_path.as_fd()), s.root()),
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
}
