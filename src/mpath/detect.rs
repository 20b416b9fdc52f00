//! Is this fd a dm-multipath device? (spec §7.2, with D6 and B15.)
//!
//! Asks device-mapper for the table of the device number the fd refers to
//! (DM_TABLE_STATUS on /dev/mapper/control, which needs CAP_SYS_ADMIN): no
//! such dm device (ENXIO) means "not multipath"; a table whose first target
//! is "multipath" means multipath. Unlike the reference, the reply buffer is
//! sized for the reply, an empty table is handled, and errors fail only the
//! request (D6).

// Unsafe code: the device-mapper ioctls.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;

use thiserror::Error;

use crate::server::device::Inspected;

/// DM_IOCTL type byte.
const DM_IOCTL: u8 = 0xfd;
const DM_VERSION_CMD: u8 = 0;
const DM_TABLE_STATUS_CMD: u8 = 12;
/// The interface version pr-helper speaks (major 4).
const DM_VERSION: [u32; 3] = [4, 0, 0];
const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;
const DM_NOFLUSH_FLAG: u32 = 1 << 11;

/// `struct dm_ioctl` from <linux/dm-ioctl.h>.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; 128],
    uuid: [u8; 129],
    data: [u8; 7],
}

/// `struct dm_target_spec`: 40 bytes, then the target's parameter string.
const TARGET_SPEC_SIZE: usize = 40;
const TARGET_TYPE_OFFSET: usize = 24;
const TARGET_TYPE_LEN: usize = 16;

nix::ioctl_readwrite!(dm_version, DM_IOCTL, DM_VERSION_CMD, DmIoctl);
nix::ioctl_readwrite!(dm_table_status, DM_IOCTL, DM_TABLE_STATUS_CMD, DmIoctl);

/// Detection failures.
#[derive(Debug, Error)]
pub enum DetectError {
    /// /dev/mapper/control could not be opened.
    #[error("Cannot open /dev/mapper/control: {0}")]
    Control(std::io::Error),
    /// The device-mapper interface is not version 4.
    #[error("Unsupported device mapper interface (version {0})")]
    Version(u32),
    /// An ioctl failed.
    #[error("device-mapper ioctl failed: {0}")]
    Ioctl(nix::Error),
    /// fstat on the client's fd failed.
    #[error("fstat: {0}")]
    Fstat(nix::Error),
}

/// An open /dev/mapper/control.
#[derive(Debug)]
pub struct Control {
    file: File,
}

fn header(total: usize) -> DmIoctl {
    DmIoctl {
        version: DM_VERSION,
        data_size: total as u32,
        data_start: std::mem::size_of::<DmIoctl>() as u32,
        target_count: 0,
        open_count: 0,
        flags: 0,
        event_nr: 0,
        padding: 0,
        dev: 0,
        name: [0; 128],
        uuid: [0; 129],
        data: [0; 7],
    }
}

impl Control {
    /// Opens /dev/mapper/control and checks the interface version (spec
    /// §7.1 steps 1–2).
    pub fn open() -> Result<Control, DetectError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/mapper/control")
            .map_err(DetectError::Control)?;
        let mut h = header(std::mem::size_of::<DmIoctl>());
        // SAFETY: `h` is a correctly sized and initialised dm_ioctl whose
        // data_size covers only the struct itself; the kernel writes the
        // version into it and nothing past it.
        unsafe { dm_version(file.as_raw_fd(), &mut h) }.map_err(DetectError::Ioctl)?;
        if h.version[0] != 4 {
            return Err(DetectError::Version(h.version[0]));
        }
        Ok(Control { file })
    }

    /// True if `fd` (inspected: its fstat is read, not repeated) refers to
    /// a dm device whose first target is multipath.
    pub fn is_multipath(&self, fd: &Inspected) -> Result<bool, DetectError> {
        let st = fd.stat().map_err(DetectError::Fstat)?;
        let mut size = 16 * 1024;
        loop {
            // An 8-byte aligned buffer: the dm_ioctl header, then targets.
            let mut buf = vec![0u64; size / 8];
            let hdr = buf.as_mut_ptr().cast::<DmIoctl>();
            let mut h = header(size);
            h.dev = st.rdev;
            h.flags = DM_NOFLUSH_FLAG;
            // SAFETY: `buf` is `size` bytes, 8-byte aligned, larger than a
            // dm_ioctl; the header written into it says so (data_size), so
            // the kernel writes at most `size` bytes into it.
            let result = unsafe {
                hdr.write(h);
                dm_table_status(self.file.as_raw_fd(), hdr)
            };
            match result {
                Ok(_) => {}
                Err(nix::Error::ENXIO) => return Ok(false),
                Err(e) => return Err(DetectError::Ioctl(e)),
            }
            // SAFETY: the kernel filled the header in place.
            let h = unsafe { hdr.read() };
            if h.flags & DM_BUFFER_FULL_FLAG != 0 && size < 1 << 20 {
                size *= 4;
                continue;
            }
            if h.target_count == 0 {
                return Ok(false);
            }
            // SAFETY: viewing the u64 buffer as bytes; length unchanged.
            let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), size) };
            return Ok(first_target_is_multipath(bytes, h.data_start as usize));
        }
    }
}

/// Parses the first `dm_target_spec` at `start` and compares its type.
fn first_target_is_multipath(buf: &[u8], start: usize) -> bool {
    let Some(spec) = buf.get(start..start + TARGET_SPEC_SIZE) else {
        return false;
    };
    let ty = &spec[TARGET_TYPE_OFFSET..TARGET_TYPE_OFFSET + TARGET_TYPE_LEN];
    let len = ty.iter().position(|&b| b == 0).unwrap_or(TARGET_TYPE_LEN);
    &ty[..len] == b"multipath"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dm_ioctl_layout() {
        assert_eq!(std::mem::size_of::<DmIoctl>(), 312);
    }

    #[test]
    fn target_type_parse() {
        let mut buf = vec![0u8; 400];
        buf[312 + 24..312 + 33].copy_from_slice(b"multipath");
        assert!(first_target_is_multipath(&buf, 312));
        buf[312 + 24..312 + 30].copy_from_slice(b"linear");
        buf[312 + 30] = 0;
        assert!(!first_target_is_multipath(&buf, 312));
        assert!(!first_target_is_multipath(&buf, 390));
    }
}
