//! Translating between the SCSI wire format and libmpathpersist's request
//! and reply structures (spec §7.3–§7.5), without touching the library:
//! everything here is pure and unit-tested (and fuzzed), and compiled in
//! every build; only the FFI that feeds it needs the `mpath` feature.
//!
//! The rules are the reference's, byte for byte, with decision D2 (more
//! than 32 TransportIDs is CHECK CONDITION 05/26/00, not an abort). READ
//! FULL STATUS never comes here: it is answered with SG_IO on the map
//! (D14, `command::Executor::route_of`).

use crate::protocol::{CDB_SIZE, MAX_TRANSFER};
use crate::scsi::{status, SenseCode};

/// Most TransportIDs the library's request descriptor holds (MPATH_MX_TIDS).
pub const MAX_TRANSPORT_IDS: usize = 32;
/// Size of the fixed PR OUT parameter list.
pub const PR_OUT_FIXED_PARAM_SIZE: usize = 24;
/// Largest iSCSI name (with its 2-byte length) the library's rebuilding
/// keeps intact: it uses only the low byte of the length.
pub const MAX_ISCSI_TID_LEN: usize = 252;

/// PR IN service actions served through the library.
pub mod sa_in {
    pub use crate::scsi::pr::sa_in::*;
}

/// One TransportID as the library holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportId {
    /// Fibre Channel: N_PORT_NAME.
    Fc {
        /// Format code bits (byte 0 & 0xC0).
        format: u8,
        /// N_PORT_NAME.
        n_port_name: [u8; 8],
    },
    /// iSCSI: the 2-byte ADDITIONAL LENGTH followed by the name.
    Iscsi {
        /// Format code bits (byte 0 & 0xC0).
        format: u8,
        /// Length (2 bytes, big-endian) and name bytes, as on the wire.
        length_and_name: Vec<u8>,
    },
    /// SAS: SAS address.
    Sas {
        /// Format code bits (byte 0 & 0xC0).
        format: u8,
        /// SAS ADDRESS.
        sas_address: [u8; 8],
    },
}

/// A PERSISTENT RESERVE OUT request for the library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProutRequest {
    /// Service action (whole CDB byte 1, as the reference passes it).
    pub service_action: u8,
    /// Scope (CDB byte 2, high nibble).
    pub scope: u8,
    /// Type (CDB byte 2, low nibble).
    pub pr_type: u8,
    /// RESERVATION KEY, raw bytes.
    pub key: [u8; 8],
    /// SERVICE ACTION RESERVATION KEY, raw bytes.
    pub sa_key: [u8; 8],
    /// Byte 20 of the parameter list (APTPL, ALL_TG_PT, SPEC_I_PT, ...).
    pub flags: u8,
    /// Parsed TransportIDs.
    pub transport_ids: Vec<TransportId>,
}

fn be16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
}

fn be32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

/// Validates a PR OUT for the library (spec §7.4). `params` is the whole
/// parameter list (CDB bytes 7–8 long). Errors are the CHECK CONDITION
/// sense to answer with; the parameter bytes have been consumed, so the
/// connection stays usable.
pub fn parse_pr_out(cdb: &[u8; CDB_SIZE], params: &[u8]) -> Result<ProutRequest, SenseCode> {
    // 1. Parameter list too short for the fixed part.
    if params.len() < PR_OUT_FIXED_PARAM_SIZE {
        return Err(SenseCode::INVALID_PARAM_LEN);
    }
    // 2. Service actions the library implements (REGISTER AND MOVE is not
    // representable in its descriptor, REPLACE LOST RESERVATION unknown).
    let service_action = cdb[1];
    if service_action > crate::scsi::pr::sa_out::REGISTER_AND_IGNORE {
        return Err(SenseCode::INVALID_FIELD);
    }
    let mut key = [0u8; 8];
    key.copy_from_slice(&params[0..8]);
    let mut sa_key = [0u8; 8];
    sa_key.copy_from_slice(&params[8..16]);
    let mut request = ProutRequest {
        service_action,
        scope: cdb[2] >> 4,
        pr_type: cdb[2] & 0x0f,
        key,
        sa_key,
        flags: params[20],
        transport_ids: Vec::new(),
    };
    // 4. TransportIDs, parsed whether or not SPEC_I_PT is set.
    if params.len() > PR_OUT_FIXED_PARAM_SIZE {
        if params.len() < 28 {
            return Err(SenseCode::INVALID_PARAM_LEN);
        }
        let end = 28 + be32(params, 24);
        if end > params.len() as u64 {
            return Err(SenseCode::INVALID_PARAM);
        }
        let end = end as usize;
        let mut at = 28;
        while at < end {
            if request.transport_ids.len() == MAX_TRANSPORT_IDS {
                // D2: the reference asserts (and aborts) here.
                return Err(SenseCode::INVALID_PARAM);
            }
            let b = params[at];
            let format = b & 0xc0;
            let (tid, advance) = match b & 0xcf {
                0x00 => {
                    if at + 24 > end {
                        return Err(SenseCode::INVALID_PARAM);
                    }
                    let mut n_port_name = [0u8; 8];
                    n_port_name.copy_from_slice(&params[at + 8..at + 16]);
                    (
                        TransportId::Fc {
                            format,
                            n_port_name,
                        },
                        24,
                    )
                }
                0x05 | 0x45 => {
                    if at + 4 > end {
                        return Err(SenseCode::INVALID_PARAM);
                    }
                    let len = be16(params, at + 2);
                    if len > MAX_ISCSI_TID_LEN
                        || len % 4 != 0
                        || at + 4 + len > end
                        || !params[at + 4..at + 4 + len].contains(&0)
                    {
                        return Err(SenseCode::INVALID_PARAM);
                    }
                    (
                        TransportId::Iscsi {
                            format,
                            length_and_name: params[at + 2..at + 4 + len].to_vec(),
                        },
                        4 + len,
                    )
                }
                0x06 => {
                    if at + 24 > end {
                        return Err(SenseCode::INVALID_PARAM);
                    }
                    let mut sas_address = [0u8; 8];
                    sas_address.copy_from_slice(&params[at + 4..at + 12]);
                    (
                        TransportId::Sas {
                            format,
                            sas_address,
                        },
                        24,
                    )
                }
                _ => return Err(SenseCode::INVALID_PARAM),
            };
            request.transport_ids.push(tid);
            at += advance;
        }
    }
    Ok(request)
}

/// Which PR IN service action to ask the library for (spec §7.3): READ
/// KEYS, READ RESERVATION, REPORT CAPABILITIES. The whole CDB byte 1 is
/// compared, so a valid service action with reserved bits set is refused,
/// as in the reference. READ FULL STATUS is refused here too, as by the
/// reference: pr-helper serves it with SG_IO before a request reaches the
/// library (D14), because libmpathpersist's decoding of it overruns its
/// buffer from about 31 descriptors.
pub fn parse_pr_in(cdb: &[u8; CDB_SIZE]) -> Result<u8, SenseCode> {
    match cdb[1] {
        sa @ (sa_in::READ_KEYS | sa_in::READ_RESERVATION | sa_in::REPORT_CAPABILITIES) => Ok(sa),
        _ => Err(SenseCode::INVALID_FIELD),
    }
}

/// What the library returned for a PR IN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrinReply {
    /// READ KEYS or READ RESERVATION: host-order header words, then the
    /// device's bytes as it sent them.
    Keys {
        /// PRGENERATION.
        generation: u32,
        /// ADDITIONAL LENGTH (untruncated).
        additional_length: u32,
        /// The key list (or reservation descriptor) area.
        body: Vec<u8>,
    },
    /// REPORT CAPABILITIES.
    Capabilities {
        /// LENGTH.
        length: u16,
        /// The two flag bytes.
        flags: [u8; 2],
        /// PERSISTENT RESERVATION TYPE MASK.
        type_mask: u16,
    },
}

/// Rebuilds the SPC reply (spec §7.3): always exactly `min(alloc, 8192)`
/// bytes, zero-padded, as the reference does on multipath devices.
pub fn build_pr_in(reply: &PrinReply, alloc: usize) -> Vec<u8> {
    let mut out = vec![0u8; MAX_TRANSFER];
    match reply {
        PrinReply::Keys {
            generation,
            additional_length,
            body,
        } => {
            out[0..4].copy_from_slice(&generation.to_be_bytes());
            out[4..8].copy_from_slice(&additional_length.to_be_bytes());
            let n = (*additional_length as usize + 8).min(MAX_TRANSFER) - 8;
            let n = n.min(body.len());
            out[8..8 + n].copy_from_slice(&body[..n]);
        }
        PrinReply::Capabilities {
            length,
            flags,
            type_mask,
        } => {
            out[0..2].copy_from_slice(&length.to_be_bytes());
            out[2] = flags[0];
            out[3] = flags[1];
            out[4..6].copy_from_slice(&type_mask.to_be_bytes());
        }
    }
    out.truncate(alloc.min(MAX_TRANSFER));
    out
}

/// libmpathpersist result codes (MPATH_PR_*).
pub mod code {
    /// Skip this path.
    pub const SKIP: i32 = -1;
    /// Success.
    pub const SUCCESS: i32 = 0;
    /// Syntax error or invalid parameter.
    pub const SYNTAX_ERROR: i32 = 1;
    /// Sense key NOT READY.
    pub const SENSE_NOT_READY: i32 = 2;
    /// Sense key MEDIUM ERROR.
    pub const SENSE_MEDIUM_ERROR: i32 = 3;
    /// Sense key HARDWARE ERROR.
    pub const SENSE_HARDWARE_ERROR: i32 = 4;
    /// Sense key ILLEGAL REQUEST.
    pub const ILLEGAL_REQ: i32 = 5;
    /// Sense key UNIT ATTENTION.
    pub const SENSE_UNIT_ATTENTION: i32 = 6;
    /// INVALID COMMAND OPERATION CODE.
    pub const SENSE_INVALID_OP: i32 = 7;
    /// Sense key ABORTED COMMAND.
    pub const SENSE_ABORTED_COMMAND: i32 = 8;
    /// Sense key NO SENSE.
    pub const NO_SENSE: i32 = 9;
    /// Malformed response.
    pub const SENSE_MALFORMED: i32 = 10;
    /// RESERVATION CONFLICT.
    pub const RESERV_CONFLICT: i32 = 11;
    /// Device node problems.
    pub const FILE_ERROR: i32 = 12;
    /// Device-mapper problems.
    pub const DMMP_ERROR: i32 = 13;
    /// Thread creation failed.
    pub const THREAD_ERROR: i32 = 14;
    /// Anything else.
    pub const OTHER: i32 = 15;
}

/// How to answer a library result (spec §7.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapped {
    /// This status and sense (sense ignored unless CHECK CONDITION).
    Status(u8, Option<SenseCode>),
    /// The library discarded the device's sense: send TEST UNIT READY to
    /// the device; if that is not GOOD, answer with its status and sense,
    /// else with CHECK CONDITION and this generic sense.
    ProbeTur(SenseCode),
}

/// Maps a library result to the reply.
pub fn map_result(result: i32) -> Mapped {
    use code::*;
    match result {
        SUCCESS => Mapped::Status(status::GOOD, None),
        SENSE_NOT_READY => Mapped::ProbeTur(SenseCode::NOT_READY),
        SENSE_MEDIUM_ERROR => Mapped::ProbeTur(SenseCode::READ_ERROR),
        SENSE_HARDWARE_ERROR => Mapped::ProbeTur(SenseCode::TARGET_FAILURE),
        SENSE_ABORTED_COMMAND => Mapped::ProbeTur(SenseCode::IO_ERROR),
        SENSE_UNIT_ATTENTION => {
            Mapped::Status(status::CHECK_CONDITION, Some(SenseCode::SCSI_BUS_RESET))
        }
        SENSE_INVALID_OP => {
            Mapped::Status(status::CHECK_CONDITION, Some(SenseCode::INVALID_OPCODE))
        }
        ILLEGAL_REQ => Mapped::Status(status::CHECK_CONDITION, Some(SenseCode::INVALID_PARAM)),
        NO_SENSE => Mapped::Status(status::CHECK_CONDITION, Some(SenseCode::NO_SENSE)),
        RESERV_CONFLICT => Mapped::Status(status::RESERVATION_CONFLICT, None),
        _ => Mapped::Status(status::CHECK_CONDITION, Some(SenseCode::LUN_COMM_FAILURE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::pr;

    fn cdb_out(sa: u8, scope_type: u8, len: u16) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = 0x5f;
        c[1] = sa;
        c[2] = scope_type;
        c[7..9].copy_from_slice(&len.to_be_bytes());
        c
    }

    fn with_tids(tids: &[Vec<u8>], declared: Option<u32>) -> Vec<u8> {
        let body: Vec<u8> = tids.concat();
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&0x1111u64.to_be_bytes());
        p[8..16].copy_from_slice(&0x2222u64.to_be_bytes());
        p[20] = pr::flags::SPEC_I_PT;
        p.extend_from_slice(&declared.unwrap_or(body.len() as u32).to_be_bytes());
        p.extend_from_slice(&body);
        p
    }

    #[test]
    fn pr_out_fixed_list_and_checks_in_order() {
        let p = pr::ParamList {
            key: 0xaa,
            sa_key: 0xbb,
            flags: 0xff,
            transport_ids: vec![],
        }
        .encode();
        let r = parse_pr_out(&cdb_out(1, 0x15, 24), &p).unwrap();
        assert_eq!((r.service_action, r.scope, r.pr_type), (1, 1, 5));
        assert_eq!(r.key, 0xaau64.to_be_bytes());
        assert_eq!(r.sa_key, 0xbbu64.to_be_bytes());
        assert_eq!(r.flags, 0xff, "flags byte passed raw");
        assert!(r.transport_ids.is_empty());
        // Short list before the service action check.
        assert_eq!(
            parse_pr_out(&cdb_out(9, 0, 23), &p[..23]),
            Err(SenseCode::INVALID_PARAM_LEN)
        );
        assert_eq!(
            parse_pr_out(&cdb_out(0, 0, 0), &[]),
            Err(SenseCode::INVALID_PARAM_LEN)
        );
        // Service actions: 0..=6 accepted, 7, 8 and reserved bits refused.
        for sa in 0..=6 {
            assert!(parse_pr_out(&cdb_out(sa, 0, 24), &p).is_ok(), "{sa}");
        }
        for sa in [7u8, 8, 0x1f, 0x20, 0xe0] {
            assert_eq!(
                parse_pr_out(&cdb_out(sa, 0, 24), &p),
                Err(SenseCode::INVALID_FIELD),
                "{sa}"
            );
        }
    }

    #[test]
    fn transport_ids_of_every_kind() {
        let fc = pr::fc_transport_id(0x2100_0024_ff00_0001);
        let sas = pr::sas_transport_id(0x5001_405b_bbbb_bbb1);
        let iscsi = pr::iscsi_transport_id("iqn.2026-11.org.example:a");
        let mut iscsi_port = iscsi.clone();
        iscsi_port[0] |= 0x40;
        let r = parse_pr_out(
            &cdb_out(0, 0, 0),
            &with_tids(&[fc, sas.clone(), iscsi.clone(), iscsi_port], None),
        )
        .unwrap();
        assert_eq!(r.transport_ids.len(), 4);
        assert_eq!(
            r.transport_ids[0],
            TransportId::Fc {
                format: 0,
                n_port_name: 0x2100_0024_ff00_0001u64.to_be_bytes()
            }
        );
        assert_eq!(
            r.transport_ids[1],
            TransportId::Sas {
                format: 0,
                sas_address: 0x5001_405b_bbbb_bbb1u64.to_be_bytes()
            }
        );
        let TransportId::Iscsi {
            format,
            length_and_name,
        } = &r.transport_ids[2]
        else {
            panic!()
        };
        assert_eq!(*format, 0);
        assert_eq!(&length_and_name[..], &iscsi[2..]);
        assert!(matches!(
            r.transport_ids[3],
            TransportId::Iscsi { format: 0x40, .. }
        ));
        // Bits 4-5 of byte 0 are ignored for dispatch.
        let mut odd = sas.clone();
        odd[0] |= 0x30;
        assert!(parse_pr_out(&cdb_out(0, 0, 0), &with_tids(&[odd], None)).is_ok());
    }

    #[test]
    fn transport_id_validation() {
        let sas = pr::sas_transport_id(1);
        let bad = |p: Vec<u8>| parse_pr_out(&cdb_out(0, 0, 0), &p);
        // 25..27 bytes: no room for the length.
        let mut p = with_tids(&[], None);
        p.truncate(26);
        assert_eq!(bad(p), Err(SenseCode::INVALID_PARAM_LEN));
        // Declared length beyond the list.
        assert_eq!(
            bad(with_tids(std::slice::from_ref(&sas), Some(25))),
            Err(SenseCode::INVALID_PARAM)
        );
        // Bytes after the declared end are ignored.
        let mut p = with_tids(std::slice::from_ref(&sas), None);
        p.extend_from_slice(&[0xee; 7]);
        assert_eq!(
            parse_pr_out(&cdb_out(0, 0, 0), &p)
                .unwrap()
                .transport_ids
                .len(),
            1
        );
        // A truncated SAS/FC id.
        assert_eq!(
            bad(with_tids(&[sas[..20].to_vec()], None)),
            Err(SenseCode::INVALID_PARAM)
        );
        let fc = pr::fc_transport_id(1);
        assert_eq!(
            bad(with_tids(&[fc[..23].to_vec()], None)),
            Err(SenseCode::INVALID_PARAM)
        );
        // Unknown protocol / format.
        let mut srp = sas.clone();
        srp[0] = 0x04;
        assert_eq!(bad(with_tids(&[srp], None)), Err(SenseCode::INVALID_PARAM));
        let mut sas1 = sas.clone();
        sas1[0] = 0x46;
        assert_eq!(bad(with_tids(&[sas1], None)), Err(SenseCode::INVALID_PARAM));
        // iSCSI: length not a multiple of 4, over 252, past the end, no NUL.
        let mk = |len: u16, name: &[u8]| {
            let mut t = vec![0x05, 0];
            t.extend_from_slice(&len.to_be_bytes());
            t.extend_from_slice(name);
            t
        };
        assert_eq!(
            bad(with_tids(&[mk(6, &[b'a', 0, 0, 0, 0, 0])], None)),
            Err(SenseCode::INVALID_PARAM)
        );
        assert_eq!(
            bad(with_tids(&[mk(256, &[0; 256])], None)),
            Err(SenseCode::INVALID_PARAM)
        );
        assert!(parse_pr_out(&cdb_out(0, 0, 0), &with_tids(&[mk(252, &[0; 252])], None)).is_ok());
        assert_eq!(
            bad(with_tids(&[mk(8, &[b'a'; 4])], Some(8))),
            Err(SenseCode::INVALID_PARAM)
        );
        assert_eq!(
            bad(with_tids(&[mk(4, b"abcd")], None)),
            Err(SenseCode::INVALID_PARAM)
        );
        assert_eq!(
            bad(with_tids(&[mk(0, &[])], None)),
            Err(SenseCode::INVALID_PARAM)
        );
        // iSCSI header cut short.
        assert_eq!(
            bad(with_tids(&[vec![0x05, 0]], None)),
            Err(SenseCode::INVALID_PARAM)
        );
    }

    #[test]
    fn more_than_32_transport_ids_is_an_error_not_an_abort_d2() {
        let sas = pr::sas_transport_id(7);
        let ok = vec![sas.clone(); 32];
        assert_eq!(
            parse_pr_out(&cdb_out(0, 0, 0), &with_tids(&ok, None))
                .unwrap()
                .transport_ids
                .len(),
            32
        );
        let too_many = vec![sas; 33];
        assert_eq!(
            parse_pr_out(&cdb_out(0, 0, 0), &with_tids(&too_many, None)),
            Err(SenseCode::INVALID_PARAM)
        );
    }

    #[test]
    fn pr_in_service_actions() {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x5e;
        for sa in 0..=2 {
            cdb[1] = sa;
            assert_eq!(parse_pr_in(&cdb), Ok(sa));
        }
        // READ FULL STATUS never reaches the library (D14).
        for sa in [3u8, 4, 0x1f, 0x20, 0x21, 0x23] {
            cdb[1] = sa;
            assert_eq!(parse_pr_in(&cdb), Err(SenseCode::INVALID_FIELD));
        }
    }

    #[test]
    fn pr_in_replies_are_exactly_the_allocation_length() {
        let mut body = vec![0u8; 8192];
        body[..16].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0xa1, 0, 0, 0, 0, 0, 0, 0, 0xb1]);
        let keys = PrinReply::Keys {
            generation: 5,
            additional_length: 16,
            body,
        };
        let r = build_pr_in(&keys, 512);
        assert_eq!(r.len(), 512);
        assert_eq!(&r[..8], &[0, 0, 0, 5, 0, 0, 0, 16]);
        assert_eq!(r[15], 0xa1);
        assert_eq!(r[23], 0xb1);
        assert!(r[24..].iter().all(|&b| b == 0));
        assert_eq!(build_pr_in(&keys, 0).len(), 0);
        assert_eq!(build_pr_in(&keys, 8192).len(), 8192);
        // The additional length is reported untruncated, the copy capped.
        let huge = PrinReply::Keys {
            generation: 1,
            additional_length: 100_000,
            body: vec![0x77; 8192],
        };
        let r = build_pr_in(&huge, 8192);
        assert_eq!(&r[4..8], &100_000u32.to_be_bytes());
        assert_eq!(r[8191], 0x77);

        let caps = PrinReply::Capabilities {
            length: 8,
            flags: [0x1d, 0x90],
            type_mask: 0xea01,
        };
        assert_eq!(
            build_pr_in(&caps, 8),
            vec![0, 8, 0x1d, 0x90, 0xea, 0x01, 0, 0]
        );
        assert_eq!(build_pr_in(&caps, 3), vec![0, 8, 0x1d]);
    }

    #[test]
    fn every_library_result_maps_spec_7_5() {
        use code::*;
        let cc = |s| Mapped::Status(status::CHECK_CONDITION, Some(s));
        let table = [
            (SUCCESS, Mapped::Status(status::GOOD, None)),
            (SENSE_NOT_READY, Mapped::ProbeTur(SenseCode::NOT_READY)),
            (SENSE_MEDIUM_ERROR, Mapped::ProbeTur(SenseCode::READ_ERROR)),
            (
                SENSE_HARDWARE_ERROR,
                Mapped::ProbeTur(SenseCode::TARGET_FAILURE),
            ),
            (SENSE_ABORTED_COMMAND, Mapped::ProbeTur(SenseCode::IO_ERROR)),
            (SENSE_UNIT_ATTENTION, cc(SenseCode::SCSI_BUS_RESET)),
            (SENSE_INVALID_OP, cc(SenseCode::INVALID_OPCODE)),
            (ILLEGAL_REQ, cc(SenseCode::INVALID_PARAM)),
            (NO_SENSE, cc(SenseCode::NO_SENSE)),
            (
                RESERV_CONFLICT,
                Mapped::Status(status::RESERVATION_CONFLICT, None),
            ),
            (OTHER, cc(SenseCode::LUN_COMM_FAILURE)),
            (SYNTAX_ERROR, cc(SenseCode::LUN_COMM_FAILURE)),
            (SENSE_MALFORMED, cc(SenseCode::LUN_COMM_FAILURE)),
            (FILE_ERROR, cc(SenseCode::LUN_COMM_FAILURE)),
            (DMMP_ERROR, cc(SenseCode::LUN_COMM_FAILURE)),
            (THREAD_ERROR, cc(SenseCode::LUN_COMM_FAILURE)),
            (SKIP, cc(SenseCode::LUN_COMM_FAILURE)),
            (99, cc(SenseCode::LUN_COMM_FAILURE)),
        ];
        for (result, expected) in table {
            assert_eq!(map_result(result), expected, "result {result}");
        }
    }
}
