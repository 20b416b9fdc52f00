//! The ioctls pr-helper sends on a client's fd: SG_IO, the only place where
//! it hands memory to the kernel for a SCSI command, and BLKGETDISKSEQ, which
//! keys the device check's decisions ([`disk_sequence`]). All `unsafe` for
//! them is in this file.
//!
//! SG_IO works on any SCSI block device (`/dev/sdX`, dm devices pass it to a
//! path) and on SCSI generic nodes (`/dev/sgN`). With CAP_SYS_RAWIO the
//! kernel's command filter is bypassed, which is why the caller checks the
//! fd's access mode before sending PERSISTENT RESERVE OUT.

// Unsafe code: the SG_IO and BLKGETDISKSEQ ioctls.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use super::{cdb_len, SgIoReply};
use crate::protocol::SENSE_SIZE;

/// `struct sg_io_hdr` from `<scsi/sg.h>` (interface 'S'), field for field.
#[repr(C)]
struct SgIoHdr {
    interface_id: libc::c_int,
    dxfer_direction: libc::c_int,
    cmd_len: libc::c_uchar,
    mx_sb_len: libc::c_uchar,
    iovec_count: libc::c_ushort,
    dxfer_len: libc::c_uint,
    dxferp: *mut libc::c_void,
    cmdp: *const libc::c_uchar,
    sbp: *mut libc::c_uchar,
    timeout: libc::c_uint,
    flags: libc::c_uint,
    pack_id: libc::c_int,
    usr_ptr: *mut libc::c_void,
    status: libc::c_uchar,
    masked_status: libc::c_uchar,
    msg_status: libc::c_uchar,
    sb_len_wr: libc::c_uchar,
    host_status: libc::c_ushort,
    driver_status: libc::c_ushort,
    resid: libc::c_int,
    duration: libc::c_uint,
    info: libc::c_uint,
}

/// SG_IO, from <scsi/sg.h>: the same number on every Linux architecture.
pub(crate) const SG_IO: libc::c_ulong = 0x2285;
/// BLKGETDISKSEQ, from <linux/fs.h>: `_IOR(0x12, 128, __u64)` (Linux 5.15).
/// nix computes it in libc's request type, a signed int on musl: through
/// u32, so that the high bit is not sign-extended into the upper half.
pub(crate) const BLKGETDISKSEQ: libc::c_ulong =
    nix::request_code_read!(0x12, 128, std::mem::size_of::<u64>()) as u32 as libc::c_ulong;
const SG_DXFER_NONE: libc::c_int = -1;
const SG_DXFER_TO_DEV: libc::c_int = -2;
const SG_DXFER_FROM_DEV: libc::c_int = -3;

/// The data phase of a command.
pub enum DataPhase<'a> {
    /// No data (TEST UNIT READY).
    None,
    /// Data from the device into this buffer (PERSISTENT RESERVE IN).
    FromDevice(&'a mut [u8]),
    /// Data from this buffer to the device (PERSISTENT RESERVE OUT).
    ToDevice(&'a [u8]),
}

/// Sends `cdb` to the device behind `fd` and waits for it to complete.
///
/// `cdb` holds at least the command's CDB length (taken from its group code,
/// D5); extra bytes (QEMU pads PR CDBs to 16) are not sent. Blocks for up to
/// `timeout` (rounded to milliseconds, at least 1 ms): call it from a blocking
/// thread, never from the event loop. Returns the kernel's report, or the
/// errno the ioctl failed with.
pub fn execute(
    fd: BorrowedFd<'_>,
    cdb: &[u8],
    data: DataPhase<'_>,
    timeout: Duration,
) -> Result<SgIoReply, i32> {
    let len = cdb_len(cdb.first().copied().unwrap_or(0));
    if cdb.len() < usize::from(len) {
        return Err(libc::EINVAL);
    }
    let (direction, dxferp, dxfer_len) = match data {
        DataPhase::None => (SG_DXFER_NONE, std::ptr::null_mut(), 0),
        DataPhase::FromDevice(buf) => (
            SG_DXFER_FROM_DEV,
            buf.as_mut_ptr().cast::<libc::c_void>(),
            buf.len(),
        ),
        // The kernel only reads from a TO_DEV buffer; the pointer is
        // `*mut` because the C field is shared by both directions.
        DataPhase::ToDevice(buf) => (
            SG_DXFER_TO_DEV,
            buf.as_ptr().cast_mut().cast::<libc::c_void>(),
            buf.len(),
        ),
    };
    let dxfer_len = libc::c_uint::try_from(dxfer_len).map_err(|_| libc::EINVAL)?;
    let timeout_ms = libc::c_uint::try_from(timeout.as_millis())
        .unwrap_or(libc::c_uint::MAX)
        .max(1);
    let mut sense = [0u8; SENSE_SIZE];
    let mut hdr = SgIoHdr {
        interface_id: libc::c_int::from(b'S'),
        dxfer_direction: direction,
        cmd_len: len,
        mx_sb_len: SENSE_SIZE as libc::c_uchar,
        iovec_count: 0,
        dxfer_len,
        dxferp,
        cmdp: cdb.as_ptr(),
        sbp: sense.as_mut_ptr(),
        timeout: timeout_ms,
        flags: 0,
        pack_id: 0,
        usr_ptr: std::ptr::null_mut(),
        status: 0,
        masked_status: 0,
        msg_status: 0,
        sb_len_wr: 0,
        host_status: 0,
        driver_status: 0,
        resid: 0,
        duration: 0,
        info: 0,
    };
    // SAFETY: `hdr` is a correctly laid out sg_io_hdr (interface 'S'). Every
    // pointer in it refers to memory that outlives the call and is at least
    // as large as the length next to it: `cmdp` to `cdb` (checked to hold
    // `cmd_len` bytes above), `sbp` to the 96-byte `sense` (`mx_sb_len` 96),
    // `dxferp` to the caller's buffer of `dxfer_len` bytes (or null with
    // length 0), which the kernel writes only for FROM_DEV, where it is a
    // unique `&mut`. SG_IO is synchronous: the kernel is done with all of
    // them when the ioctl returns. `fd` is a valid open descriptor for the
    // duration of the call (a `BorrowedFd`).
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), SG_IO as _, &mut hdr as *mut SgIoHdr) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    Ok(SgIoReply {
        status: hdr.status,
        host_status: hdr.host_status,
        driver_status: hdr.driver_status,
        resid: hdr.resid,
        sense,
    })
}

/// The disk sequence number of the block device behind `fd`
/// (BLKGETDISKSEQ): a number the kernel gives each disk when it is created
/// and again when its medium changes (a loop device attached to a new
/// file), never the same for two disks since boot. A partition reports its
/// disk's. Fails with ENOTTY before Linux 5.15, and for anything but a
/// block device.
pub fn disk_sequence(fd: BorrowedFd<'_>) -> Result<u64, i32> {
    let mut seq: u64 = 0;
    // SAFETY: BLKGETDISKSEQ writes one u64 through its argument, which
    // points at `seq`, alive and writable for the call. `fd` is a valid open
    // descriptor for the duration of the call (a `BorrowedFd`).
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), BLKGETDISKSEQ as _, &mut seq as *mut u64) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn header_layout_matches_sg_h() {
        // sizeof(struct sg_io_hdr) on LP64 Linux.
        assert_eq!(std::mem::size_of::<SgIoHdr>(), 88);
        assert_eq!(std::mem::offset_of!(SgIoHdr, dxferp), 16);
        assert_eq!(std::mem::offset_of!(SgIoHdr, timeout), 40);
        assert_eq!(std::mem::offset_of!(SgIoHdr, status), 64);
        assert_eq!(std::mem::offset_of!(SgIoHdr, host_status), 68);
        assert_eq!(std::mem::offset_of!(SgIoHdr, resid), 72);
    }

    #[test]
    fn disk_sequence_number() {
        // The request number <linux/fs.h> gives on x86_64 and aarch64.
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        assert_eq!(BLKGETDISKSEQ, 0x8008_1280);
        let file = std::fs::File::open("/dev/null").expect("open /dev/null");
        assert_eq!(disk_sequence(file.as_fd()), Err(libc::ENOTTY));
    }

    /// Not under qemu-user: SG_IO is not translated (ENOSYS).
    #[test]
    fn non_scsi_fd_fails_with_errno() {
        let file = std::fs::File::open("/dev/null").expect("open /dev/null");
        let mut buf = [0u8; 8];
        let cdb = [0x5e, 0, 0, 0, 0, 0, 0, 0, 8, 0];
        let r = execute(
            file.as_fd(),
            &cdb,
            DataPhase::FromDevice(&mut buf),
            Duration::from_secs(1),
        );
        assert_eq!(r.unwrap_err(), libc::ENOTTY);
    }

    #[test]
    fn short_cdb_is_refused_before_the_kernel() {
        let file = std::fs::File::open("/dev/null").expect("open /dev/null");
        let r = execute(
            file.as_fd(),
            &[0x5e, 0, 0],
            DataPhase::None,
            Duration::from_secs(1),
        );
        assert_eq!(r.unwrap_err(), libc::EINVAL);
    }
}
