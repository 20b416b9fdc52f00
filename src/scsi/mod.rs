//! SCSI vocabulary: status bytes, sense codes, CDB lengths, and the rules that
//! turn the outcome of an SG_IO ioctl into the status and sense the helper
//! reports (spec §4.3, §6.4–§6.6, decisions D1, D3 and D5).
//!
//! Everything in this module is pure; the one ioctl lives in [`sgio`].

/// Persistent-reservation constants, CDBs and TransportIDs (SPC-4).
pub mod pr;

pub mod sgio;

/// INQUIRY's Device Identification VPD page (the path's target port).
pub mod vpd;

use crate::protocol::SENSE_SIZE;

/// SCSI status byte values (SAM).
pub mod status {
    /// GOOD
    pub const GOOD: u8 = 0x00;
    /// CHECK CONDITION
    pub const CHECK_CONDITION: u8 = 0x02;
    /// BUSY
    pub const BUSY: u8 = 0x08;
    /// RESERVATION CONFLICT
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    /// TASK SET FULL
    pub const TASK_SET_FULL: u8 = 0x28;

    /// Human-readable name of a status byte.
    pub fn name(status: u8) -> &'static str {
        match status {
            0x00 => "GOOD",
            0x02 => "CHECK CONDITION",
            0x04 => "CONDITION MET",
            0x08 => "BUSY",
            0x10 => "INTERMEDIATE",
            0x14 => "INTERMEDIATE-CONDITION MET",
            0x18 => "RESERVATION CONFLICT",
            0x22 => "COMMAND TERMINATED",
            0x28 => "TASK SET FULL",
            0x30 => "ACA ACTIVE",
            0x40 => "TASK ABORTED",
            _ => "unknown status",
        }
    }
}

/// SCSI opcode TEST UNIT READY (used by the multipath sense recovery).
pub const TEST_UNIT_READY: u8 = 0x00;

/// A sense key with its additional sense code and qualifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SenseCode {
    /// Sense key (4 bits).
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
}

impl SenseCode {
    const fn new(key: u8, asc: u8, ascq: u8) -> Self {
        SenseCode { key, asc, ascq }
    }

    /// No additional sense information.
    pub const NO_SENSE: Self = Self::new(0x00, 0x00, 0x00);
    /// LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE.
    pub const NOT_READY: Self = Self::new(0x02, 0x04, 0x00);
    /// MEDIUM NOT PRESENT.
    pub const NO_MEDIUM: Self = Self::new(0x02, 0x3a, 0x00);
    /// UNRECOVERED READ ERROR.
    pub const READ_ERROR: Self = Self::new(0x03, 0x11, 0x00);
    /// INTERNAL TARGET FAILURE.
    pub const TARGET_FAILURE: Self = Self::new(0x04, 0x44, 0x00);
    /// PARAMETER LIST LENGTH ERROR.
    pub const INVALID_PARAM_LEN: Self = Self::new(0x05, 0x1a, 0x00);
    /// INVALID COMMAND OPERATION CODE.
    pub const INVALID_OPCODE: Self = Self::new(0x05, 0x20, 0x00);
    /// INVALID FIELD IN CDB.
    pub const INVALID_FIELD: Self = Self::new(0x05, 0x24, 0x00);
    /// INVALID FIELD IN PARAMETER LIST.
    pub const INVALID_PARAM: Self = Self::new(0x05, 0x26, 0x00);
    /// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    pub const RESET: Self = Self::new(0x06, 0x29, 0x00);
    /// SCSI BUS RESET OCCURRED.
    pub const SCSI_BUS_RESET: Self = Self::new(0x06, 0x29, 0x02);
    /// SPACE ALLOCATION FAILED WRITE PROTECT.
    pub const SPACE_ALLOC_FAILED: Self = Self::new(0x07, 0x27, 0x07);
    /// I/O PROCESS TERMINATED.
    pub const IO_ERROR: Self = Self::new(0x0b, 0x00, 0x06);
    /// LOGICAL UNIT DOES NOT RESPOND TO SELECTION.
    pub const LUN_NOT_RESPONDING: Self = Self::new(0x0b, 0x05, 0x00);
    /// LOGICAL UNIT COMMUNICATION FAILURE.
    pub const LUN_COMM_FAILURE: Self = Self::new(0x0b, 0x08, 0x00);
    /// I_T NEXUS LOSS OCCURRED.
    pub const I_T_NEXUS_LOSS: Self = Self::new(0x0b, 0x29, 0x07);
    /// COMMAND TIMEOUT DURING PROCESSING.
    pub const COMMAND_TIMEOUT: Self = Self::new(0x0b, 0x2e, 0x02);
    /// COMMANDS CLEARED BY DEVICE SERVER.
    pub const COMMAND_ABORTED: Self = Self::new(0x0b, 0x2f, 0x02);

    /// Writes this code as 18 bytes of fixed-format sense at the start of
    /// `buf` (spec §6.6); bytes past the 18 are left as they are, exactly as
    /// QEMU's scsi_build_sense does.
    pub fn write_fixed(&self, buf: &mut [u8; SENSE_SIZE]) {
        buf[..FIXED_SENSE_LEN].fill(0);
        buf[0] = 0x70;
        buf[2] = self.key;
        buf[7] = 0x0a;
        buf[12] = self.asc;
        buf[13] = self.ascq;
    }

    /// A 96-byte buffer holding only this code (zeros after byte 17, D1).
    pub fn fixed_buffer(&self) -> [u8; SENSE_SIZE] {
        let mut buf = [0; SENSE_SIZE];
        self.write_fixed(&mut buf);
        buf
    }

    /// Extracts key/ASC/ASCQ from fixed (0x70/0x71) or descriptor (0x72/0x73)
    /// format sense; `None` when the buffer holds no recognisable sense.
    pub fn parse(sense: &[u8]) -> Option<Self> {
        let code = *sense.first()? & 0x7f;
        match code {
            0x70 | 0x71 if sense.len() >= 14 => {
                Some(Self::new(sense[2] & 0x0f, sense[12], sense[13]))
            }
            0x72 | 0x73 if sense.len() >= 4 => Some(Self::new(sense[1] & 0x0f, sense[2], sense[3])),
            _ => None,
        }
    }
}

impl std::fmt::Display for SenseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x}/{:02x}/{:02x}", self.key, self.asc, self.ascq)
    }
}

/// Length of the fixed-format sense the helper synthesises.
pub const FIXED_SENSE_LEN: usize = 18;

/// CDB length for an opcode, from its group code (SPC; D5): the reference
/// always used 16, which makes the kernel send garbage past a 10-byte PR CDB
/// and over-read a 6-byte TEST UNIT READY.
pub fn cdb_len(opcode: u8) -> u8 {
    match opcode >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        // Groups 3 (variable length), 6 and 7 (vendor specific) never reach
        // SG_IO: only PR IN/OUT and TEST UNIT READY are sent.
        _ => 16,
    }
}

/// The status and synthesised sense for an SG_IO ioctl that failed with
/// `errno` (spec §6.4; ENODEV as QEMU ≥ 10.1). `None` sense: only the status.
pub fn status_from_errno(errno: i32) -> (u8, Option<SenseCode>) {
    use status::*;
    match errno {
        libc::EDOM => (TASK_SET_FULL, None),
        libc::ENODEV | libc::EREMOTEIO | libc::ENOMEM => {
            (CHECK_CONDITION, Some(SenseCode::TARGET_FAILURE))
        }
        libc::EBADE => (RESERVATION_CONFLICT, None),
        libc::ENODATA => (CHECK_CONDITION, Some(SenseCode::READ_ERROR)),
        libc::ENOMEDIUM => (CHECK_CONDITION, Some(SenseCode::NO_MEDIUM)),
        libc::EINVAL => (CHECK_CONDITION, Some(SenseCode::INVALID_FIELD)),
        libc::ENOSPC => (CHECK_CONDITION, Some(SenseCode::SPACE_ALLOC_FAILED)),
        _ => (CHECK_CONDITION, Some(SenseCode::IO_ERROR)),
    }
}

/// Linux `DID_*` host status codes.
pub mod host {
    /// DID_OK
    pub const OK: u16 = 0x00;
    /// DID_NO_CONNECT
    pub const NO_CONNECT: u16 = 0x01;
    /// DID_BUS_BUSY
    pub const BUS_BUSY: u16 = 0x02;
    /// DID_TIME_OUT
    pub const TIME_OUT: u16 = 0x03;
    /// DID_BAD_TARGET
    pub const BAD_TARGET: u16 = 0x04;
    /// DID_ABORT
    pub const ABORT: u16 = 0x05;
    /// DID_RESET
    pub const RESET: u16 = 0x08;
    /// DID_SOFT_ERROR
    pub const SOFT_ERROR: u16 = 0x0b;
    /// DID_IMM_RETRY
    pub const IMM_RETRY: u16 = 0x0c;
    /// DID_REQUEUE
    pub const REQUEUE: u16 = 0x0d;
    /// DID_TRANSPORT_DISRUPTED
    pub const TRANSPORT_DISRUPTED: u16 = 0x0e;
    /// DID_TARGET_FAILURE
    pub const TARGET_FAILURE: u16 = 0x10;
    /// DID_NEXUS_FAILURE
    pub const NEXUS_FAILURE: u16 = 0x11;
    /// DID_ALLOC_FAILURE
    pub const ALLOC_FAILURE: u16 = 0x12;
    /// DID_MEDIUM_ERROR
    pub const MEDIUM_ERROR: u16 = 0x13;
}

/// The status and synthesised sense for a non-zero host status (spec §6.5,
/// with D3: the codes the reference reports as GOOD become BUSY when a retry
/// may succeed and CHECK CONDITION 0B/00/06 otherwise, so that a failed PR
/// OUT never looks successful).
pub fn status_from_host_status(host_status: u16) -> (u8, Option<SenseCode>) {
    use status::*;
    match host_status {
        host::NO_CONNECT => (CHECK_CONDITION, Some(SenseCode::LUN_NOT_RESPONDING)),
        host::BUS_BUSY => (BUSY, None),
        host::TIME_OUT => (CHECK_CONDITION, Some(SenseCode::COMMAND_TIMEOUT)),
        host::BAD_TARGET => (CHECK_CONDITION, Some(SenseCode::LUN_COMM_FAILURE)),
        host::ABORT => (CHECK_CONDITION, Some(SenseCode::COMMAND_ABORTED)),
        host::RESET => (CHECK_CONDITION, Some(SenseCode::RESET)),
        host::TRANSPORT_DISRUPTED => (CHECK_CONDITION, Some(SenseCode::I_T_NEXUS_LOSS)),
        host::TARGET_FAILURE => (CHECK_CONDITION, Some(SenseCode::TARGET_FAILURE)),
        host::NEXUS_FAILURE => (RESERVATION_CONFLICT, None),
        host::ALLOC_FAILURE => (CHECK_CONDITION, Some(SenseCode::SPACE_ALLOC_FAILED)),
        host::MEDIUM_ERROR => (CHECK_CONDITION, Some(SenseCode::READ_ERROR)),
        // D3: retryable transport conditions.
        host::SOFT_ERROR | host::IMM_RETRY | host::REQUEUE => (BUSY, None),
        // D3: every other failure (DID_ERROR, DID_PARITY, DID_TRANSPORT_FAILFAST, ...).
        _ => (CHECK_CONDITION, Some(SenseCode::IO_ERROR)),
    }
}

/// `driver_status` bits that the reference turns into BUSY (it tests the
/// DRIVER_TIMEOUT value 0x06 as a mask).
pub const DRIVER_STATUS_BUSY_MASK: u16 = 0x06;

/// What a successful SG_IO ioctl reported.
#[derive(Debug, Clone)]
pub struct SgIoReply {
    /// SCSI status byte from the device.
    pub status: u8,
    /// Transport (host adapter) status, `DID_*`.
    pub host_status: u16,
    /// Low-level driver status.
    pub driver_status: u16,
    /// `dxfer_len` minus the bytes actually transferred.
    pub resid: i32,
    /// The sense buffer as the kernel left it (zeroed before the call).
    pub sense: [u8; SENSE_SIZE],
}

/// The status, sense and transferred byte count derived from one SG_IO call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// SCSI status to report.
    pub status: u8,
    /// All 96 sense bytes to report.
    pub sense: [u8; SENSE_SIZE],
    /// Bytes the device transferred; 0 unless the status is GOOD.
    pub transferred: usize,
}

impl Completion {
    /// CHECK CONDITION with a synthesised sense code.
    pub fn check_condition(code: SenseCode) -> Self {
        Completion {
            status: status::CHECK_CONDITION,
            sense: code.fixed_buffer(),
            transferred: 0,
        }
    }

    /// The sense code when the status is CHECK CONDITION and the sense holds one.
    pub fn sense_code(&self) -> Option<SenseCode> {
        (self.status == status::CHECK_CONDITION)
            .then(|| SenseCode::parse(&self.sense))
            .flatten()
    }
}

/// Derives status and sense from an SG_IO outcome in the reference's order
/// (spec §4.3): ioctl errno, then host status, then driver status, then the
/// device's status byte. `dxfer_len` is the buffer size passed to the ioctl.
pub fn complete(outcome: Result<SgIoReply, i32>, dxfer_len: usize) -> Completion {
    let (status, synthesised, mut sense, resid) = match outcome {
        Err(errno) => {
            let (status, code) = status_from_errno(errno);
            (status, code, [0; SENSE_SIZE], 0)
        }
        Ok(reply) if reply.host_status != host::OK => {
            let (status, code) = status_from_host_status(reply.host_status);
            (status, code, reply.sense, reply.resid)
        }
        Ok(reply) if reply.driver_status & DRIVER_STATUS_BUSY_MASK != 0 => {
            (status::BUSY, None, reply.sense, reply.resid)
        }
        Ok(reply) => (reply.status, None, reply.sense, reply.resid),
    };
    if let Some(code) = synthesised {
        code.write_fixed(&mut sense);
    }
    let transferred = if status == status::GOOD {
        // A negative or oversized resid would be a kernel bug; clamp anyway.
        dxfer_len.saturating_sub(usize::try_from(resid).unwrap_or(0))
    } else {
        0
    };
    Completion {
        status,
        sense,
        transferred,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use status::*;

    fn cc(key: u8, asc: u8, ascq: u8) -> (u8, Option<SenseCode>) {
        (CHECK_CONDITION, Some(SenseCode { key, asc, ascq }))
    }

    #[test]
    fn errno_table_spec_6_4() {
        let table = [
            (libc::EDOM, (TASK_SET_FULL, None)),
            (libc::ENODEV, cc(0x04, 0x44, 0x00)),
            (libc::EREMOTEIO, cc(0x04, 0x44, 0x00)),
            (libc::EBADE, (RESERVATION_CONFLICT, None)),
            (libc::ENODATA, cc(0x03, 0x11, 0x00)),
            (libc::ENOMEDIUM, cc(0x02, 0x3a, 0x00)),
            (libc::ENOMEM, cc(0x04, 0x44, 0x00)),
            (libc::EINVAL, cc(0x05, 0x24, 0x00)),
            (libc::ENOSPC, cc(0x07, 0x27, 0x07)),
        ];
        for (errno, expected) in table {
            assert_eq!(status_from_errno(errno), expected, "errno {errno}");
        }
        for errno in [
            libc::EPERM,
            libc::EACCES,
            libc::EIO,
            libc::ENOTTY,
            libc::ENXIO,
            libc::EBUSY,
            libc::EAGAIN,
            libc::EFAULT,
            libc::EMSGSIZE,
            libc::ENOSYS,
            libc::EBADF,
        ] {
            assert_eq!(
                status_from_errno(errno),
                cc(0x0b, 0x00, 0x06),
                "errno {errno}"
            );
        }
    }

    #[test]
    fn host_status_table_spec_6_5_and_d3() {
        let table = [
            (0x01, cc(0x0b, 0x05, 0x00)),
            (0x02, (BUSY, None)),
            (0x03, cc(0x0b, 0x2e, 0x02)),
            (0x04, cc(0x0b, 0x08, 0x00)),
            (0x05, cc(0x0b, 0x2f, 0x02)),
            (0x08, cc(0x06, 0x29, 0x00)),
            (0x0e, cc(0x0b, 0x29, 0x07)),
            (0x10, cc(0x04, 0x44, 0x00)),
            (0x11, (RESERVATION_CONFLICT, None)),
            (0x12, cc(0x07, 0x27, 0x07)),
            (0x13, cc(0x03, 0x11, 0x00)),
            // D3: retryable ones become BUSY ...
            (0x0b, (BUSY, None)),
            (0x0c, (BUSY, None)),
            (0x0d, (BUSY, None)),
        ];
        for (host_status, expected) in table {
            assert_eq!(
                status_from_host_status(host_status),
                expected,
                "host {host_status:#x}"
            );
        }
        // ... and every other unlisted value CHECK CONDITION 0B/00/06.
        for host_status in [0x06, 0x07, 0x09, 0x0a, 0x0f, 0x14, 0x15, 0x20, 0xff, 0xffff] {
            assert_eq!(
                status_from_host_status(host_status),
                cc(0x0b, 0x00, 0x06),
                "host {host_status:#x}"
            );
        }
    }

    #[test]
    fn fixed_sense_layout() {
        let buf = SenseCode::INVALID_OPCODE.fixed_buffer();
        let mut expected = [0u8; 96];
        expected[..18].copy_from_slice(&[
            0x70, 0, 0x05, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0,
        ]);
        assert_eq!(buf, expected);
        assert_eq!(SenseCode::parse(&buf), Some(SenseCode::INVALID_OPCODE));
        let desc = [0x72, 0x06, 0x2a, 0x03, 0, 0, 0, 0];
        assert_eq!(SenseCode::parse(&desc), Some(SenseCode::new(6, 0x2a, 3)));
        assert_eq!(SenseCode::parse(&[0; 18]), None);
    }

    #[test]
    fn cdb_length_by_group() {
        assert_eq!(cdb_len(0x5e), 10);
        assert_eq!(cdb_len(0x5f), 10);
        assert_eq!(cdb_len(TEST_UNIT_READY), 6);
        assert_eq!(cdb_len(0x28), 10);
        assert_eq!(cdb_len(0x88), 16);
        assert_eq!(cdb_len(0xa0), 12);
    }

    fn reply(status: u8, host_status: u16, driver_status: u16, resid: i32) -> SgIoReply {
        let mut sense = [0; 96];
        // Pretend the kernel wrote 24 bytes of device sense.
        sense[..24].fill(0xee);
        SgIoReply {
            status,
            host_status,
            driver_status,
            resid,
            sense,
        }
    }

    #[test]
    fn derivation_order_spec_4_3() {
        // 1. errno wins; the sense is synthesised into a zero buffer.
        let c = complete(Err(libc::ENOTTY), 8192);
        assert_eq!(c.status, CHECK_CONDITION);
        assert_eq!(c.sense, SenseCode::IO_ERROR.fixed_buffer());
        assert_eq!(c.transferred, 0);
        let c = complete(Err(libc::EBADE), 8192);
        assert_eq!((c.status, c.sense), (RESERVATION_CONFLICT, [0; 96]));

        // 2. host status before driver status and device status; synthesised
        // sense overwrites the first 18 bytes only (as scsi_build_sense does).
        let c = complete(Ok(reply(GOOD, host::TIME_OUT, 0x06, 0)), 8192);
        assert_eq!(c.status, CHECK_CONDITION);
        assert_eq!(
            &c.sense[..18],
            &SenseCode::COMMAND_TIMEOUT.fixed_buffer()[..18]
        );
        assert_eq!(&c.sense[18..24], &[0xee; 6]);
        assert_eq!(c.transferred, 0);
        let c = complete(Ok(reply(GOOD, host::BUS_BUSY, 0, 0)), 8192);
        assert_eq!(c.status, BUSY);

        // 3. driver status bit test: 2..=7 give BUSY, sense as the kernel left it.
        for driver in [2u16, 4, 6, 7] {
            let c = complete(Ok(reply(RESERVATION_CONFLICT, 0, driver, 0)), 8192);
            assert_eq!(c.status, BUSY, "driver {driver}");
        }
        let c = complete(Ok(reply(RESERVATION_CONFLICT, 0, 0x08, 0)), 8192);
        assert_eq!(c.status, RESERVATION_CONFLICT);

        // 4. device status and sense as returned; data only on GOOD.
        let c = complete(Ok(reply(CHECK_CONDITION, 0, 0, 8192)), 8192);
        assert_eq!(c.status, CHECK_CONDITION);
        assert_eq!(&c.sense[..24], &[0xee; 24]);
        assert_eq!(&c.sense[24..], &[0; 72]);
        let c = complete(Ok(reply(GOOD, 0, 0, 8192 - 24)), 8192);
        assert_eq!((c.status, c.transferred), (GOOD, 24));
        let c = complete(Ok(reply(GOOD, 0, 0, -5)), 8192);
        assert_eq!(c.transferred, 8192);
    }
}
