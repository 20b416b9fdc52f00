//! The `scsi` fuzz target: status and sense derivation.
//!
//! # Input format
//!
//! ```text
//! mode(1) errno(4, i32 BE) status(1) host_status(2) driver_status(2)
//! resid(4, i32 BE) dxfer_len(2) sense(96) rest
//! ```
//!
//! (missing bytes are zeros). `mode` bit 0 set: the ioctl failed with
//! `errno`; clear: it returned the reply fields. `rest` is fed to
//! `SenseCode::parse` (whole and by prefix), and its first three bytes make a
//! sense code for the fixed-format round trip. Checks:
//!
//! * `complete` follows spec §4.3: errno, then host status, then driver
//!   status, then the device's status byte, with the tables of
//!   `status_from_errno`/`status_from_host_status`;
//! * never GOOD when the ioctl failed or the host status is not 0;
//! * all 96 sense bytes defined: synthesised into zeros after an ioctl
//!   failure, written over the first 18 device bytes otherwise, and a
//!   synthesised CHECK CONDITION parses back to its code;
//! * transferred <= dxfer_len, and 0 unless GOOD;
//! * `SenseCode::parse` never panics on any bytes, and fixed-format sense
//!   written by `write_fixed` parses back.

use pr_helper::protocol::SENSE_SIZE;
use pr_helper::scsi::{
    cdb_len, complete, status, status_from_errno, status_from_host_status, SenseCode, SgIoReply,
    DRIVER_STATUS_BUSY_MASK, FIXED_SENSE_LEN,
};

const HEADER: usize = 1 + 4 + 1 + 2 + 2 + 4 + 2;

/// The fields of one input (for the seed corpus).
#[derive(Debug, Clone)]
pub struct Input {
    /// `Some(errno)`: the ioctl failed.
    pub errno: Option<i32>,
    /// Device status byte.
    pub status: u8,
    /// `DID_*`.
    pub host_status: u16,
    /// Driver status.
    pub driver_status: u16,
    /// Residual count.
    pub resid: i32,
    /// Buffer size given to the ioctl.
    pub dxfer_len: u16,
    /// Sense buffer as the kernel left it.
    pub sense: [u8; SENSE_SIZE],
    /// Bytes for `SenseCode::parse`.
    pub rest: Vec<u8>,
}

impl Input {
    /// The wire form of this input.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![u8::from(self.errno.is_some())];
        out.extend_from_slice(&self.errno.unwrap_or(0).to_be_bytes());
        out.push(self.status);
        out.extend_from_slice(&self.host_status.to_be_bytes());
        out.extend_from_slice(&self.driver_status.to_be_bytes());
        out.extend_from_slice(&self.resid.to_be_bytes());
        out.extend_from_slice(&self.dxfer_len.to_be_bytes());
        out.extend_from_slice(&self.sense);
        out.extend_from_slice(&self.rest);
        out
    }

    /// Parses an input (short inputs are zero-padded).
    pub fn parse(input: &[u8]) -> Input {
        let mut buf = input.to_vec();
        if buf.len() < HEADER + SENSE_SIZE {
            buf.resize(HEADER + SENSE_SIZE, 0);
        }
        let be32 = |at: usize| i32::from_be_bytes(buf[at..at + 4].try_into().unwrap());
        let be16 = |at: usize| u16::from_be_bytes([buf[at], buf[at + 1]]);
        Input {
            errno: (buf[0] & 1 != 0).then(|| be32(1)),
            status: buf[5],
            host_status: be16(6),
            driver_status: be16(8),
            resid: be32(10),
            dxfer_len: be16(14),
            sense: buf[HEADER..HEADER + SENSE_SIZE].try_into().unwrap(),
            rest: input.get(HEADER + SENSE_SIZE..).unwrap_or(&[]).to_vec(),
        }
    }
}

fn check_table_entry(st: u8, code: Option<SenseCode>) {
    // A status from the tables is never GOOD; CHECK CONDITION always comes
    // with a sense code, every other status without one.
    assert_ne!(st, status::GOOD);
    assert_eq!(
        st == status::CHECK_CONDITION,
        code.is_some(),
        "{st:#x} {code:?}"
    );
    if let Some(code) = code {
        assert!(code.key <= 0x0f);
    }
}

/// Runs one input; panics on any violated invariant.
pub fn run(data: &[u8]) {
    let input = Input::parse(data);
    let dxfer_len = usize::from(input.dxfer_len);
    let reply = SgIoReply {
        status: input.status,
        host_status: input.host_status,
        driver_status: input.driver_status,
        resid: input.resid,
        sense: input.sense,
    };
    let outcome = match input.errno {
        Some(errno) => Err(errno),
        None => Ok(reply.clone()),
    };
    let c = complete(outcome, dxfer_len);

    assert_eq!(c.sense.len(), SENSE_SIZE);
    assert!(c.transferred <= dxfer_len);
    if c.status != status::GOOD {
        assert_eq!(c.transferred, 0, "data without GOOD");
    }

    let synthesised = match input.errno {
        Some(errno) => {
            assert_ne!(c.status, status::GOOD, "GOOD after a failed ioctl");
            let (st, code) = status_from_errno(errno);
            check_table_entry(st, code);
            assert_eq!(c.status, st);
            // D1: a failed ioctl leaves no device sense; all 96 bytes are
            // the synthesised code or zeros.
            let expected = code.map(|c| c.fixed_buffer()).unwrap_or([0; SENSE_SIZE]);
            assert_eq!(c.sense, expected);
            code
        }
        None if input.host_status != 0 => {
            assert_ne!(
                c.status,
                status::GOOD,
                "GOOD with host status {:#x}",
                input.host_status
            );
            let (st, code) = status_from_host_status(input.host_status);
            check_table_entry(st, code);
            assert_eq!(c.status, st);
            if code.is_some() {
                // Written over the first 18 bytes only (scsi_build_sense).
                assert_eq!(&c.sense[FIXED_SENSE_LEN..], &input.sense[FIXED_SENSE_LEN..]);
            } else {
                assert_eq!(c.sense, input.sense);
            }
            code
        }
        None if input.driver_status & DRIVER_STATUS_BUSY_MASK != 0 => {
            assert_eq!(c.status, status::BUSY);
            assert_eq!(c.sense, input.sense);
            None
        }
        None => {
            assert_eq!(c.status, input.status);
            assert_eq!(c.sense, input.sense);
            if c.status == status::GOOD {
                let resid = usize::try_from(input.resid).unwrap_or(0);
                assert_eq!(c.transferred, dxfer_len.saturating_sub(resid));
            }
            None
        }
    };
    if let Some(code) = synthesised {
        assert_eq!(c.status, status::CHECK_CONDITION);
        assert_eq!(
            &c.sense[..FIXED_SENSE_LEN],
            &code.fixed_buffer()[..FIXED_SENSE_LEN]
        );
        assert_eq!(SenseCode::parse(&c.sense), Some(code), "synthesised sense");
        assert_eq!(c.sense_code(), Some(code));
    }
    // Whatever the path, the reported sense code is what parse finds.
    if c.status == status::CHECK_CONDITION {
        assert_eq!(c.sense_code(), SenseCode::parse(&c.sense));
    } else {
        assert_eq!(c.sense_code(), None);
    }
    let _ = status::name(c.status);

    // SenseCode::parse on arbitrary bytes: whole, every prefix of the first
    // 20, and the device sense buffer.
    for s in [&input.rest[..], &input.sense[..]] {
        if let Some(code) = SenseCode::parse(s) {
            assert!(code.key <= 0x0f);
            assert_eq!(SenseCode::parse(&code.fixed_buffer()), Some(code));
            let _ = code.to_string();
        }
    }
    for n in 0..input.rest.len().min(20) {
        let _ = SenseCode::parse(&input.rest[..n]);
    }

    // write_fixed over an arbitrary buffer: 18 bytes written, the rest kept,
    // and the code parses back (the key field is 4 bits).
    let mut r = input.rest.iter().copied().chain(std::iter::repeat(0));
    let (key, asc, ascq) = (r.next().unwrap(), r.next().unwrap(), r.next().unwrap());
    let code = SenseCode {
        key: key & 0x0f,
        asc,
        ascq,
    };
    let mut buf = input.sense;
    code.write_fixed(&mut buf);
    assert_eq!(&buf[FIXED_SENSE_LEN..], &input.sense[FIXED_SENSE_LEN..]);
    assert_eq!(SenseCode::parse(&buf), Some(code));
    let fixed = code.fixed_buffer();
    assert!(fixed[FIXED_SENSE_LEN..].iter().all(|&b| b == 0));
    assert_eq!(SenseCode::parse(&fixed), Some(code));

    // CDB length by group code.
    assert!([6, 10, 12, 16].contains(&cdb_len(input.status)));
}
