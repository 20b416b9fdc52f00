//! The `mpath_translate` fuzz target: the pure multipath translation of
//! `src/mpath/translate.rs` (spec §7.3–§7.5), compiled without the `mpath`
//! feature.
//!
//! # Input format
//!
//! ```text
//! mode(1) rest
//! ```
//!
//! `mode % 3` selects:
//!
//! * 0, raw PR OUT: `cdb(16) params(rest, at most 8192)` to `parse_pr_out`;
//! * 1, built PR OUT: `sa(1) scope_type(1) key(8) sa_key(8) flags(1)
//!   count(1) fault(1)` then per TransportID `kind(1) value(8)` and, for
//!   iSCSI, `name_len(1)`; the list is built from these and its expected
//!   outcome is known (see [`BuiltPrOut`]);
//! * 2, PR IN reply: `kind(1) alloc(2) rest` to `build_pr_in` (see
//!   [`reply_from`]).
//!
//! Every input also feeds its first 16 bytes to `parse_pr_in` and its first
//! 4 bytes to `map_result`. Checks:
//!
//! * `parse_pr_out` never panics; with more than 32 TransportIDs it answers
//!   05/26/00 (D2); an accepted list re-reads, TransportID by TransportID,
//!   to exactly the declared bytes (kinds, formats, names, addresses), with
//!   the key, service action key, flags, scope and type taken raw; a refused
//!   one gets the sense the order of checks of spec §7.4 predicts;
//! * a built list with n <= 32 well-formed TransportIDs parses to exactly
//!   them; a fault (declared length too long, an unknown protocol, an
//!   iSCSI name with a bad length or without NUL, too many IDs) gives
//!   05/26/00;
//! * `parse_pr_in` accepts exactly service actions 0–2 in the whole byte 1
//!   (READ FULL STATUS never goes to the library, D14);
//! * `build_pr_in` returns exactly min(alloc, 8192) bytes, a prefix of the
//!   8192-byte reply; that reply is well-formed: header fields, body copied
//!   up to the ADDITIONAL LENGTH, zeros after it;
//! * `map_result` follows the table of spec §7.5 for every value.

use pr_helper::mpath::translate::{
    build_pr_in, map_result, parse_pr_in, parse_pr_out, Mapped, PrinReply, TransportId,
    MAX_ISCSI_TID_LEN, MAX_TRANSPORT_IDS, PR_OUT_FIXED_PARAM_SIZE,
};
use pr_helper::scsi::pr;
use pr_helper::protocol::{CDB_SIZE, MAX_TRANSFER};
use pr_helper::scsi::{status, SenseCode};

/// Input modes.
pub const MODE_RAW_PR_OUT: u8 = 0;
/// See the module documentation.
pub const MODE_BUILT_PR_OUT: u8 = 1;
/// See the module documentation.
pub const MODE_PR_IN_REPLY: u8 = 2;

/// Reads bytes from the input, zeros once it is used up.
struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Vec<u8> {
        let k = n.min(self.data.len());
        let mut out = self.data[..k].to_vec();
        self.data = &self.data[k..];
        out.resize(n, 0);
        out
    }

    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.take(N));
        a
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

fn be16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
}

fn be32(b: &[u8], at: usize) -> usize {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

/// Runs one input; panics on any violated invariant.
pub fn run(data: &[u8]) {
    let mut cdb = [0u8; CDB_SIZE];
    let n = data.len().min(CDB_SIZE);
    cdb[..n].copy_from_slice(&data[..n]);
    check_pr_in(&cdb);
    let mut word = [0u8; 4];
    word[..n.min(4)].copy_from_slice(&data[..n.min(4)]);
    check_map_result(i32::from_be_bytes(word));

    let mut input = Bytes { data };
    match input.u8() % 3 {
        MODE_RAW_PR_OUT => {
            let cdb: [u8; CDB_SIZE] = input.array();
            let params = input.rest();
            check_raw_pr_out(&cdb, &params[..params.len().min(MAX_TRANSFER)]);
        }
        MODE_BUILT_PR_OUT => {
            let built = BuiltPrOut::from(&mut input);
            built.check();
        }
        _ => {
            let alloc = usize::from(u16::from_be_bytes(input.array()));
            let kind = input.u8();
            let reply = reply_from(kind, input.rest());
            check_pr_in_reply(&reply, alloc);
        }
    }
}

/// `parse_pr_out` on arbitrary bytes.
fn check_raw_pr_out(cdb: &[u8; CDB_SIZE], params: &[u8]) {
    match parse_pr_out(cdb, params) {
        Ok(request) => {
            assert!(params.len() >= PR_OUT_FIXED_PARAM_SIZE);
            assert!(cdb[1] <= pr::sa_out::REGISTER_AND_IGNORE, "{:#x}", cdb[1]);
            assert_eq!(request.service_action, cdb[1]);
            assert_eq!(
                (request.scope, request.pr_type),
                (cdb[2] >> 4, cdb[2] & 0x0f)
            );
            assert_eq!(&request.key[..], &params[0..8]);
            assert_eq!(&request.sa_key[..], &params[8..16]);
            assert_eq!(request.flags, params[20]);
            assert!(request.transport_ids.len() <= MAX_TRANSPORT_IDS, "D2");
            let end = if params.len() == PR_OUT_FIXED_PARAM_SIZE {
                assert!(request.transport_ids.is_empty());
                PR_OUT_FIXED_PARAM_SIZE
            } else {
                28 + be32(params, 24)
            };
            let consumed = reread_transport_ids(&request.transport_ids, &params[..end]);
            assert_eq!(
                consumed, end,
                "TransportIDs cover the declared length exactly"
            );
        }
        Err(sense) => {
            let expected = if params.len() < PR_OUT_FIXED_PARAM_SIZE {
                SenseCode::INVALID_PARAM_LEN
            } else if cdb[1] > pr::sa_out::REGISTER_AND_IGNORE {
                SenseCode::INVALID_FIELD
            } else if params.len() < 28 {
                SenseCode::INVALID_PARAM_LEN
            } else {
                SenseCode::INVALID_PARAM
            };
            assert_eq!(sense, expected, "cdb {cdb:02x?}, {} bytes", params.len());
            if expected == SenseCode::INVALID_PARAM {
                let end = 28 + be32(params, 24);
                assert!(
                    end > params.len() || !transport_ids_valid(&params[28..end]),
                    "a valid list refused"
                );
            }
        }
    }
}

/// Checks that `tids` are what `list` (parameter bytes up to the declared
/// end) holds from offset 28 on, and returns where the last one ends.
fn reread_transport_ids(tids: &[TransportId], list: &[u8]) -> usize {
    let mut at = PR_OUT_FIXED_PARAM_SIZE.max(list.len().min(28));
    for tid in tids {
        let b = list[at];
        at += match tid {
            TransportId::Fc {
                format,
                n_port_name,
            } => {
                assert_eq!((b & 0xcf, *format), (0x00, b & 0xc0));
                assert_eq!(&n_port_name[..], &list[at + 8..at + 16]);
                24
            }
            TransportId::Sas {
                format,
                sas_address,
            } => {
                assert_eq!((b & 0xcf, *format), (0x06, b & 0xc0));
                assert_eq!(&sas_address[..], &list[at + 4..at + 12]);
                24
            }
            TransportId::Iscsi {
                format,
                length_and_name,
            } => {
                assert!(b & 0xcf == 0x05 || b & 0xcf == 0x45, "{b:#x}");
                assert_eq!(*format, b & 0xc0);
                let len = be16(list, at + 2);
                assert_eq!(length_and_name.len(), 2 + len);
                assert!(len <= MAX_ISCSI_TID_LEN && len.is_multiple_of(4));
                assert!(length_and_name[2..].contains(&0), "name without NUL");
                assert_eq!(&length_and_name[..], &list[at + 2..at + 4 + len]);
                4 + len
            }
        };
    }
    at
}

/// A plain reading of spec §7.4 step 4: is this TransportID area valid?
fn transport_ids_valid(area: &[u8]) -> bool {
    let mut rest = area;
    let mut count = 0;
    while !rest.is_empty() {
        count += 1;
        let size = match rest[0] & 0xcf {
            0x00 | 0x06 => 24,
            0x05 | 0x45 if rest.len() >= 4 => {
                let len = be16(rest, 2);
                let ok = len <= MAX_ISCSI_TID_LEN
                    && len.is_multiple_of(4)
                    && rest.len() >= 4 + len
                    && rest[4..4 + len].contains(&0);
                if !ok {
                    return false;
                }
                4 + len
            }
            _ => return false,
        };
        if rest.len() < size || count > MAX_TRANSPORT_IDS {
            return false;
        }
        rest = &rest[size..];
    }
    true
}

/// A PR OUT parameter list built from the input, with its expected outcome.
#[derive(Debug)]
pub struct BuiltPrOut {
    cdb: [u8; CDB_SIZE],
    params: Vec<u8>,
    tids: Vec<TransportId>,
    /// Some(sense) if the list must be refused.
    refused: Option<SenseCode>,
}

/// Faults a built list can carry (`fault % 8`; 0, 6 and 7: none).
mod fault {
    /// The declared TransportID length is one more than the bytes present.
    pub const LENGTH_OVER: u8 = 1;
    /// The last TransportID has an unknown protocol identifier.
    pub const UNKNOWN_PROTOCOL: u8 = 2;
    /// The last iSCSI name length is not a multiple of 4.
    pub const ISCSI_ODD_LENGTH: u8 = 3;
    /// The last iSCSI name has no NUL byte.
    pub const ISCSI_NO_NUL: u8 = 4;
    /// The last iSCSI name is longer than 252 bytes.
    pub const ISCSI_TOO_LONG: u8 = 5;
}

impl BuiltPrOut {
    /// Builds the list described by the input (format in the module docs).
    fn from(input: &mut Bytes<'_>) -> BuiltPrOut {
        let sa = input.u8() % 8;
        let scope_type = input.u8();
        let list = pr::ParamList {
            key: u64::from_be_bytes(input.array()),
            sa_key: u64::from_be_bytes(input.array()),
            flags: input.u8() | pr::flags::SPEC_I_PT,
            transport_ids: Vec::new(),
        };
        let count = usize::from(input.u8()) % (MAX_TRANSPORT_IDS + 9);
        let fault = input.u8() % 8;
        let mut wire = Vec::new();
        let mut tids = Vec::new();
        for _ in 0..count {
            let kind = input.u8();
            let value: [u8; 8] = input.array();
            let format = if kind & 0x80 != 0 { 0x40 } else { 0 };
            let (bytes, tid) = match kind % 3 {
                0 => (
                    pr::fc_transport_id(u64::from_be_bytes(value)),
                    TransportId::Fc {
                        format: 0,
                        n_port_name: value,
                    },
                ),
                1 => (
                    pr::sas_transport_id(u64::from_be_bytes(value)),
                    TransportId::Sas {
                        format: 0,
                        sas_address: value,
                    },
                ),
                _ => {
                    // A printable name of 0..=247 bytes (the NUL and the
                    // padding keep it within 252).
                    let len = usize::from(input.u8()) % 248;
                    let name: String = (0..len)
                        .map(|i| char::from(b'a' + value[i % 8] % 26))
                        .collect();
                    let mut bytes = pr::iscsi_transport_id(&name);
                    bytes[0] |= format;
                    let tid = TransportId::Iscsi {
                        format,
                        length_and_name: bytes[2..].to_vec(),
                    };
                    (bytes, tid)
                }
            };
            wire.push(bytes);
            tids.push(tid);
        }
        let mut refused = (count > MAX_TRANSPORT_IDS).then_some(SenseCode::INVALID_PARAM);
        let last_iscsi = matches!(tids.last(), Some(TransportId::Iscsi { .. }));
        if let Some(last) = wire.last_mut() {
            let applied = match fault {
                fault::UNKNOWN_PROTOCOL => {
                    // SRP (0x04) or FC/SAS in format 01: all refused.
                    last[0] = [0x04, 0x40, 0x46][count % 3];
                    true
                }
                fault::ISCSI_ODD_LENGTH if last_iscsi => {
                    last.push(0);
                    let len = (last.len() - 4) as u16;
                    last[2..4].copy_from_slice(&len.to_be_bytes());
                    true
                }
                fault::ISCSI_NO_NUL if last_iscsi => {
                    last[4..].fill(b'x');
                    true
                }
                fault::ISCSI_TOO_LONG if last_iscsi => {
                    last.resize(4 + MAX_ISCSI_TID_LEN + 4, 0);
                    last[2..4].copy_from_slice(&((MAX_ISCSI_TID_LEN + 4) as u16).to_be_bytes());
                    true
                }
                _ => false,
            };
            if applied {
                refused = Some(SenseCode::INVALID_PARAM);
            }
        }
        let mut params = pr::ParamList {
            transport_ids: wire,
            ..list
        }
        .encode();
        if fault == fault::LENGTH_OVER {
            let declared = (be32(&params, 24) + 1) as u32;
            params[24..28].copy_from_slice(&declared.to_be_bytes());
            refused = Some(SenseCode::INVALID_PARAM);
        }
        if sa > pr::sa_out::REGISTER_AND_IGNORE {
            refused = Some(SenseCode::INVALID_FIELD);
        }
        let cdb = pr::pr_out_cdb(sa, scope_type >> 4, scope_type & 0x0f, params.len() as u32);
        BuiltPrOut {
            cdb,
            params,
            tids,
            refused,
        }
    }

    /// Parses the list and compares with the expected outcome.
    fn check(&self) {
        let result = parse_pr_out(&self.cdb, &self.params);
        match (&result, self.refused) {
            (Ok(request), None) => {
                assert_eq!(request.transport_ids, self.tids);
                assert_eq!(request.flags & pr::flags::SPEC_I_PT, pr::flags::SPEC_I_PT);
            }
            (Err(sense), Some(expected)) => assert_eq!(*sense, expected),
            _ => panic!(
                "{} TransportIDs, expected {:?}, got {:?}",
                self.tids.len(),
                self.refused,
                result.as_ref().map(|r| r.transport_ids.len())
            ),
        }
        // The same bytes through the raw checks.
        check_raw_pr_out(&self.cdb, &self.params);
    }

    /// The wire form of a built-list input (for the seed corpus).
    pub fn encode_input(sa: u8, key: u64, tids: &[(u8, u64, u8)], fault: u8) -> Vec<u8> {
        let mut out = vec![MODE_BUILT_PR_OUT, sa, 0x01];
        out.extend_from_slice(&key.to_be_bytes());
        out.extend_from_slice(&0u64.to_be_bytes());
        out.push(0);
        out.push(tids.len() as u8);
        out.push(fault);
        for &(kind, value, name_len) in tids {
            out.push(kind);
            out.extend_from_slice(&value.to_be_bytes());
            if kind % 3 == 2 {
                out.push(name_len);
            }
        }
        out
    }
}

/// Reply kinds of mode 2 (`kind % 2`).
pub mod reply_kind {
    /// READ KEYS / READ RESERVATION: `generation(4) additional_length(4) body`.
    pub const KEYS: u8 = 0;
    /// REPORT CAPABILITIES: `length(2) flags(2) type_mask(2)`.
    pub const CAPABILITIES: u8 = 1;
}

/// The library reply an input describes.
pub fn reply_from(kind: u8, data: &[u8]) -> PrinReply {
    let mut input = Bytes { data };
    if kind % 2 == reply_kind::KEYS {
        PrinReply::Keys {
            generation: u32::from_be_bytes(input.array()),
            additional_length: u32::from_be_bytes(input.array()),
            body: input.rest().to_vec(),
        }
    } else {
        PrinReply::Capabilities {
            length: u16::from_be_bytes(input.array()),
            flags: input.array(),
            type_mask: u16::from_be_bytes(input.array()),
        }
    }
}

/// `build_pr_in` for `reply` at `alloc`.
fn check_pr_in_reply(reply: &PrinReply, alloc: usize) {
    let full = build_pr_in(reply, MAX_TRANSFER);
    assert_eq!(full.len(), MAX_TRANSFER);
    let out = build_pr_in(reply, alloc);
    assert_eq!(
        out.len(),
        alloc.min(MAX_TRANSFER),
        "never longer than alloc"
    );
    assert_eq!(&out[..], &full[..out.len()], "a prefix of the whole reply");
    let zeros_from = |at: usize| assert!(full[at..].iter().all(|&b| b == 0), "zeros from {at}");
    match reply {
        PrinReply::Keys {
            generation,
            additional_length,
            body,
        } => {
            assert_eq!(be32(&full, 0), *generation as usize);
            assert_eq!(be32(&full, 4), *additional_length as usize);
            let n = (*additional_length as usize)
                .min(MAX_TRANSFER - 8)
                .min(body.len());
            assert_eq!(&full[8..8 + n], &body[..n]);
            zeros_from(8 + n);
            let keys = pr::decode::keys(&out);
            assert_eq!(keys.is_ok(), out.len() >= 8);
        }
        PrinReply::Capabilities {
            length,
            flags,
            type_mask,
        } => {
            assert_eq!(be16(&full, 0), usize::from(*length));
            assert_eq!(&full[2..4], &flags[..]);
            assert_eq!(be16(&full, 4), usize::from(*type_mask));
            zeros_from(6);
        }
    }
}

/// `parse_pr_in`: service actions 0–2 in the whole byte 1.
fn check_pr_in(cdb: &[u8; CDB_SIZE]) {
    match parse_pr_in(cdb) {
        Ok(sa) => {
            assert!(cdb[1] <= pr::sa_in::REPORT_CAPABILITIES);
            assert_eq!(sa, cdb[1]);
        }
        Err(sense) => {
            assert!(cdb[1] > pr::sa_in::REPORT_CAPABILITIES);
            assert_eq!(sense, SenseCode::INVALID_FIELD);
        }
    }
}

/// `map_result`: spec §7.5.
fn check_map_result(result: i32) {
    let check = |sense| Mapped::Status(status::CHECK_CONDITION, Some(sense));
    let expected = match result {
        0 => Mapped::Status(status::GOOD, None),
        2 => Mapped::ProbeTur(SenseCode::NOT_READY),
        3 => Mapped::ProbeTur(SenseCode::READ_ERROR),
        4 => Mapped::ProbeTur(SenseCode::TARGET_FAILURE),
        8 => Mapped::ProbeTur(SenseCode::IO_ERROR),
        6 => check(SenseCode::SCSI_BUS_RESET),
        7 => check(SenseCode::INVALID_OPCODE),
        5 => check(SenseCode::INVALID_PARAM),
        9 => check(SenseCode::NO_SENSE),
        11 => Mapped::Status(status::RESERVATION_CONFLICT, None),
        _ => check(SenseCode::LUN_COMM_FAILURE),
    };
    assert_eq!(map_result(result), expected, "library result {result}");
}
