//! Persistent-reservation command building (SPC-4 §6.15–§6.16): CDBs and PR
//! OUT parameter lists, as a guest's sg_persist would send them, and the
//! service-action constants. Used by the server too (command execution
//! tells READ FULL STATUS by its service action, multipath translation uses
//! the service actions), and by the client tools, the benchmark and the
//! tests; pure, no I/O.

use crate::protocol::{CDB_SIZE, PERSISTENT_RESERVE_IN, PERSISTENT_RESERVE_OUT};

/// PERSISTENT RESERVE IN service actions.
pub mod sa_in {
    /// READ KEYS
    pub const READ_KEYS: u8 = 0x00;
    /// READ RESERVATION
    pub const READ_RESERVATION: u8 = 0x01;
    /// REPORT CAPABILITIES
    pub const REPORT_CAPABILITIES: u8 = 0x02;
    /// READ FULL STATUS
    pub const READ_FULL_STATUS: u8 = 0x03;
}

/// PERSISTENT RESERVE OUT service actions.
pub mod sa_out {
    /// REGISTER
    pub const REGISTER: u8 = 0x00;
    /// RESERVE
    pub const RESERVE: u8 = 0x01;
    /// RELEASE
    pub const RELEASE: u8 = 0x02;
    /// CLEAR
    pub const CLEAR: u8 = 0x03;
    /// PREEMPT
    pub const PREEMPT: u8 = 0x04;
    /// PREEMPT AND ABORT
    pub const PREEMPT_AND_ABORT: u8 = 0x05;
    /// REGISTER AND IGNORE EXISTING KEY
    pub const REGISTER_AND_IGNORE: u8 = 0x06;
    /// REGISTER AND MOVE
    pub const REGISTER_AND_MOVE: u8 = 0x07;
    /// REPLACE LOST RESERVATION
    pub const REPLACE_LOST_RESERVATION: u8 = 0x08;
}

/// Reservation types (the TYPE field).
pub mod pr_type {
    /// Write Exclusive
    pub const WRITE_EXCLUSIVE: u8 = 1;
    /// Exclusive Access
    pub const EXCLUSIVE_ACCESS: u8 = 3;
    /// Write Exclusive – Registrants Only
    pub const WRITE_EXCLUSIVE_REGISTRANTS_ONLY: u8 = 5;
    /// Exclusive Access – Registrants Only
    pub const EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: u8 = 6;
    /// Write Exclusive – All Registrants
    pub const WRITE_EXCLUSIVE_ALL_REGISTRANTS: u8 = 7;
    /// Exclusive Access – All Registrants
    pub const EXCLUSIVE_ACCESS_ALL_REGISTRANTS: u8 = 8;

    /// Short name of a reservation type, as sg_persist prints it.
    pub fn name(t: u8) -> &'static str {
        match t {
            1 => "Write Exclusive",
            3 => "Exclusive Access",
            5 => "Write Exclusive, registrants only",
            6 => "Exclusive Access, registrants only",
            7 => "Write Exclusive, all registrants",
            8 => "Exclusive Access, all registrants",
            _ => "obsolete or reserved",
        }
    }
}

/// PR OUT parameter list flag bits (byte 20 of the basic list).
pub mod flags {
    /// Activate Persist Through Power Loss.
    pub const APTPL: u8 = 0x01;
    /// All Target Ports.
    pub const ALL_TG_PT: u8 = 0x04;
    /// Specify Initiator Ports.
    pub const SPEC_I_PT: u8 = 0x08;
}

/// A PERSISTENT RESERVE IN CDB, zero-padded to 16 bytes as QEMU sends it.
pub fn pr_in_cdb(service_action: u8, allocation_length: u16) -> [u8; CDB_SIZE] {
    let mut cdb = [0u8; CDB_SIZE];
    cdb[0] = PERSISTENT_RESERVE_IN;
    cdb[1] = service_action & 0x1f;
    cdb[7..9].copy_from_slice(&allocation_length.to_be_bytes());
    cdb
}

/// A PERSISTENT RESERVE OUT CDB with SPC's 32-bit parameter list length in
/// bytes 5–8, zero-padded to 16 bytes.
pub fn pr_out_cdb(service_action: u8, scope: u8, pr_type: u8, param_len: u32) -> [u8; CDB_SIZE] {
    let mut cdb = [0u8; CDB_SIZE];
    cdb[0] = PERSISTENT_RESERVE_OUT;
    cdb[1] = service_action & 0x1f;
    cdb[2] = (scope << 4) | (pr_type & 0x0f);
    cdb[5..9].copy_from_slice(&param_len.to_be_bytes());
    cdb
}

/// The basic PR OUT parameter list (every service action but REGISTER AND MOVE).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamList {
    /// RESERVATION KEY
    pub key: u64,
    /// SERVICE ACTION RESERVATION KEY
    pub sa_key: u64,
    /// SPEC_I_PT / ALL_TG_PT / APTPL bits.
    pub flags: u8,
    /// Transport IDs (sent only with SPEC_I_PT, after a 4-byte length).
    pub transport_ids: Vec<Vec<u8>>,
}

impl ParamList {
    /// The list's wire form: 24 bytes, plus the TransportID section when
    /// SPEC_I_PT is set.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; 24];
        out[0..8].copy_from_slice(&self.key.to_be_bytes());
        out[8..16].copy_from_slice(&self.sa_key.to_be_bytes());
        out[20] = self.flags;
        if self.flags & flags::SPEC_I_PT != 0 {
            let tids: Vec<u8> = self.transport_ids.concat();
            out.extend_from_slice(&(tids.len() as u32).to_be_bytes());
            out.extend_from_slice(&tids);
        }
        out
    }
}

/// The REGISTER AND MOVE parameter list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoveParamList {
    /// RESERVATION KEY (the current holder's).
    pub key: u64,
    /// SERVICE ACTION RESERVATION KEY (the destination's).
    pub sa_key: u64,
    /// UNREG: unregister the source I_T nexus.
    pub unreg: bool,
    /// APTPL
    pub aptpl: bool,
    /// RELATIVE TARGET PORT IDENTIFIER of the destination.
    pub relative_target_port: u16,
    /// The destination's TransportID.
    pub transport_id: Vec<u8>,
}

impl MoveParamList {
    /// The list's wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; 24];
        out[0..8].copy_from_slice(&self.key.to_be_bytes());
        out[8..16].copy_from_slice(&self.sa_key.to_be_bytes());
        out[17] = u8::from(self.unreg) << 1 | u8::from(self.aptpl);
        out[18..20].copy_from_slice(&self.relative_target_port.to_be_bytes());
        out[20..24].copy_from_slice(&(self.transport_id.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.transport_id);
        out
    }
}

/// A SAS TransportID (protocol 6, format 0) for a 64-bit SAS address, the
/// form LIO's tcm_loop (naa.) initiators use.
pub fn sas_transport_id(sas_address: u64) -> Vec<u8> {
    let mut tid = vec![0u8; 24];
    tid[0] = 0x06;
    tid[4..12].copy_from_slice(&sas_address.to_be_bytes());
    tid
}

/// An iSCSI TransportID (protocol 5, format 0) for an initiator name,
/// NUL-terminated and padded to a multiple of 4.
pub fn iscsi_transport_id(name: &str) -> Vec<u8> {
    let mut body = name.as_bytes().to_vec();
    body.push(0);
    while body.len() % 4 != 0 {
        body.push(0);
    }
    let mut tid = vec![0x05, 0];
    tid.extend_from_slice(&(body.len() as u16).to_be_bytes());
    tid.extend_from_slice(&body);
    tid
}

/// A Fibre Channel TransportID (protocol 0, format 0) for an N_Port name.
pub fn fc_transport_id(port_name: u64) -> Vec<u8> {
    let mut tid = vec![0u8; 24];
    tid[8..16].copy_from_slice(&port_name.to_be_bytes());
    tid
}

/// The initiator port a TransportID names (SPC-4 §7.6.4), decoded from a
/// READ FULL STATUS descriptor: the inverse of [`sas_transport_id`],
/// [`fc_transport_id`] and [`iscsi_transport_id`], for comparing a
/// registration's initiator with a known port. Only these three protocols:
/// the others (SRP, SBP, SOP, ...) decode to `None`, and so does a
/// TransportID too short for its protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TransportId {
    /// Fibre Channel (protocol 0): the N_Port name.
    Fc(u64),
    /// iSCSI (protocol 5): the iSCSI name in lower case (RFC 3722 names
    /// compare case-insensitively), without the `,i,0x<ISID>` of format 1:
    /// the name identifies the initiator, the ISID only its session.
    Iscsi(String),
    /// SAS (protocol 6): the SAS address.
    Sas(u64),
}

impl TransportId {
    /// Decodes a TransportID; `None` for other protocols and short or empty
    /// ones (never panics on any input).
    pub fn parse(tid: &[u8]) -> Option<Self> {
        let be64 = |at: usize| -> Option<u64> {
            Some(u64::from_be_bytes(tid.get(at..at + 8)?.try_into().ok()?))
        };
        match tid.first()? & 0x0f {
            0x00 => be64(8).map(TransportId::Fc),
            0x06 => be64(4).map(TransportId::Sas),
            0x05 => {
                let len = usize::from(u16::from_be_bytes([*tid.get(2)?, *tid.get(3)?]));
                let body = tid.get(4..)?;
                let body = &body[..len.min(body.len())];
                let body = body.split(|b| *b == 0).next().unwrap_or_default();
                let name = String::from_utf8_lossy(body).to_ascii_lowercase();
                // Format 1: NAME,i,0xISID (the separator is lower case in
                // the standard; lowered above anyway).
                let name = match name.find(",i,0x") {
                    Some(at) => name[..at].to_string(),
                    None => name,
                };
                (!name.is_empty()).then_some(TransportId::Iscsi(name))
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for TransportId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportId::Fc(n) => write!(f, "fc 0x{n:016x}"),
            TransportId::Iscsi(name) => write!(f, "iscsi {name}"),
            TransportId::Sas(a) => write!(f, "sas 0x{a:016x}"),
        }
    }
}

/// Decoded PERSISTENT RESERVE IN replies (SPC-4 §6.15).
pub mod decode {
    use std::fmt;

    /// Why a reply could not be decoded.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Truncated(pub &'static str);

    impl fmt::Display for Truncated {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "reply too short for {}", self.0)
        }
    }

    fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    fn be64(b: &[u8], at: usize) -> u64 {
        let mut k = [0u8; 8];
        k.copy_from_slice(&b[at..at + 8]);
        u64::from_be_bytes(k)
    }

    /// READ KEYS.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Keys {
        /// PRGENERATION.
        pub generation: u32,
        /// Registered keys (only those fully inside the reply).
        pub keys: Vec<u64>,
        /// ADDITIONAL LENGTH: more keys exist if this exceeds what was returned.
        pub additional_length: u32,
    }

    /// Decodes READ KEYS data.
    pub fn keys(data: &[u8]) -> Result<Keys, Truncated> {
        if data.len() < 8 {
            return Err(Truncated("READ KEYS header"));
        }
        let additional_length = be32(data, 4);
        let end = data.len().min(8 + additional_length as usize);
        let keys = data[8..end].chunks_exact(8).map(|k| be64(k, 0)).collect();
        Ok(Keys {
            generation: be32(data, 0),
            keys,
            additional_length,
        })
    }

    /// READ RESERVATION.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Reservation {
        /// PRGENERATION.
        pub generation: u32,
        /// The reservation, if any: key, scope, type.
        pub holder: Option<(u64, u8, u8)>,
    }

    /// Decodes READ RESERVATION data.
    pub fn reservation(data: &[u8]) -> Result<Reservation, Truncated> {
        if data.len() < 8 {
            return Err(Truncated("READ RESERVATION header"));
        }
        let holder = if be32(data, 4) >= 16 {
            if data.len() < 24 {
                return Err(Truncated("the reservation descriptor"));
            }
            Some((be64(data, 8), data[21] >> 4, data[21] & 0x0f))
        } else {
            None
        };
        Ok(Reservation {
            generation: be32(data, 0),
            holder,
        })
    }

    /// REPORT CAPABILITIES.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Capabilities {
        /// Byte 2: RLR_C, CRH, SIP_C, ATP_C, PTPL_C.
        pub flags: u8,
        /// Byte 3: TMV, ALLOW COMMANDS, PTPL_A.
        pub flags2: u8,
        /// PERSISTENT RESERVATION TYPE MASK (bytes 4–5).
        pub type_mask: u16,
    }

    impl Capabilities {
        /// Reservation types the type mask declares supported (when TMV is set).
        pub fn types(&self) -> Vec<u8> {
            let bits = [
                (0x8000u16, 7u8),
                (0x4000, 6),
                (0x2000, 5),
                (0x0800, 3),
                (0x0200, 1),
                (0x0001, 8),
            ];
            let mut t: Vec<u8> = bits
                .iter()
                .filter(|(bit, _)| self.type_mask & bit != 0)
                .map(|(_, t)| *t)
                .collect();
            t.sort_unstable();
            t
        }

        /// Type Mask Valid.
        pub fn type_mask_valid(&self) -> bool {
            self.flags2 & 0x80 != 0
        }

        /// Compatible Reservation Handling.
        pub fn crh(&self) -> bool {
            self.flags & 0x10 != 0
        }

        /// Specify Initiator Ports Capable.
        pub fn sip_c(&self) -> bool {
            self.flags & 0x08 != 0
        }

        /// All Target Ports Capable.
        pub fn atp_c(&self) -> bool {
            self.flags & 0x04 != 0
        }

        /// Persist Through Power Loss Capable.
        pub fn ptpl_c(&self) -> bool {
            self.flags & 0x01 != 0
        }

        /// Persist Through Power Loss Active.
        pub fn ptpl_a(&self) -> bool {
            self.flags2 & 0x01 != 0
        }
    }

    /// Decodes REPORT CAPABILITIES data.
    pub fn capabilities(data: &[u8]) -> Result<Capabilities, Truncated> {
        if data.len() < 6 {
            return Err(Truncated("REPORT CAPABILITIES"));
        }
        Ok(Capabilities {
            flags: data[2],
            flags2: data[3],
            type_mask: u16::from_be_bytes([data[4], data[5]]),
        })
    }

    /// One READ FULL STATUS descriptor.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Registration {
        /// RESERVATION KEY.
        pub key: u64,
        /// ALL_TG_PT.
        pub all_tg_pt: bool,
        /// R_HOLDER.
        pub holder: bool,
        /// SCOPE and TYPE (meaningful when `holder`).
        pub scope: u8,
        /// Reservation type.
        pub pr_type: u8,
        /// RELATIVE TARGET PORT IDENTIFIER.
        pub relative_target_port: u16,
        /// The initiator's TransportID.
        pub transport_id: Vec<u8>,
    }

    /// READ FULL STATUS.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct FullStatus {
        /// PRGENERATION.
        pub generation: u32,
        /// Registrations.
        pub registrations: Vec<Registration>,
    }

    /// Decodes READ FULL STATUS data (descriptors fully inside the reply).
    pub fn full_status(data: &[u8]) -> Result<FullStatus, Truncated> {
        if data.len() < 8 {
            return Err(Truncated("READ FULL STATUS header"));
        }
        let end = data.len().min(8 + be32(data, 4) as usize);
        let mut at = 8;
        let mut registrations = Vec::new();
        while at + 24 <= end {
            let tid_len = be32(data, at + 20) as usize;
            if at + 24 + tid_len > end {
                break;
            }
            let d = &data[at..];
            registrations.push(Registration {
                key: be64(d, 0),
                all_tg_pt: d[12] & 0x02 != 0,
                holder: d[12] & 0x01 != 0,
                scope: d[13] >> 4,
                pr_type: d[13] & 0x0f,
                relative_target_port: u16::from_be_bytes([d[18], d[19]]),
                transport_id: d[24..24 + tid_len].to_vec(),
            });
            at += 24 + tid_len;
        }
        Ok(FullStatus {
            generation: be32(data, 0),
            registrations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdbs() {
        assert_eq!(
            pr_in_cdb(sa_in::READ_KEYS, 0x200),
            [0x5e, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            pr_out_cdb(sa_out::RESERVE, 0, 5, 24),
            [0x5f, 1, 5, 0, 0, 0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(pr_out_cdb(0, 0, 0, 0x0001_0002)[5..9], [0, 1, 0, 2]);
    }

    #[test]
    fn parameter_lists() {
        let p = ParamList {
            key: 0x1122334455667788,
            sa_key: 0xaabb,
            flags: flags::APTPL,
            transport_ids: vec![sas_transport_id(1)],
        };
        let b = p.encode();
        assert_eq!(b.len(), 24, "TransportIDs only with SPEC_I_PT");
        assert_eq!(&b[0..8], &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
        assert_eq!(&b[8..16], &[0, 0, 0, 0, 0, 0, 0xaa, 0xbb]);
        assert_eq!(b[20], 1);
        let p = ParamList {
            flags: flags::SPEC_I_PT,
            transport_ids: vec![sas_transport_id(1), iscsi_transport_id("iqn.x")],
            ..Default::default()
        };
        let b = p.encode();
        assert_eq!(&b[24..28], &[0, 0, 0, 24 + 12]);
        assert_eq!(b.len(), 28 + 36);
        assert_eq!(&b[52..56], &[0x05, 0, 0, 8]);
        let m = MoveParamList {
            key: 1,
            sa_key: 2,
            unreg: true,
            aptpl: false,
            relative_target_port: 1,
            transport_id: sas_transport_id(7),
        };
        let b = m.encode();
        assert_eq!(b.len(), 48);
        assert_eq!(b[17], 2);
        assert_eq!(&b[18..24], &[0, 1, 0, 0, 0, 24]);
    }

    #[test]
    fn transport_ids_decode_to_the_port_they_were_built_from() {
        let sas = sas_transport_id(0x5001405bbbbbbbb1);
        assert_eq!(
            TransportId::parse(&sas),
            Some(TransportId::Sas(0x5001405bbbbbbbb1))
        );
        assert_eq!(
            TransportId::parse(&fc_transport_id(0x2100_0024_ff4b_2c2e)),
            Some(TransportId::Fc(0x2100_0024_ff4b_2c2e))
        );
        let iscsi = iscsi_transport_id("iqn.1994-05.com.Example:Host1");
        assert_eq!(
            TransportId::parse(&iscsi),
            Some(TransportId::Iscsi("iqn.1994-05.com.example:host1".into()))
        );
        // Format 1 (name, ",i,0x", ISID): the same initiator.
        let name = b"iqn.1994-05.com.example:host1,i,0x23d000000001\0\0\0";
        let mut f1 = vec![0x45, 0, 0, name.len() as u8];
        f1.extend_from_slice(name);
        assert_eq!(TransportId::parse(&f1), TransportId::parse(&iscsi));
        assert_eq!(
            TransportId::parse(&sas).map(|t| t.to_string()),
            Some("sas 0x5001405bbbbbbbb1".into())
        );
        // Different ports differ, across protocols too.
        assert_ne!(
            TransportId::parse(&sas),
            TransportId::parse(&sas_transport_id(0x5001405bbbbbbbb2))
        );
        assert_ne!(
            TransportId::parse(&fc_transport_id(1)),
            TransportId::parse(&sas_transport_id(1))
        );
    }

    #[test]
    fn bad_transport_ids_decode_to_none() {
        assert_eq!(TransportId::parse(&[]), None);
        assert_eq!(TransportId::parse(&sas_transport_id(1)[..11]), None);
        assert_eq!(TransportId::parse(&fc_transport_id(1)[..15]), None);
        assert_eq!(TransportId::parse(&[0x05, 0, 0]), None);
        // Length past the end: what is there; empty name: none.
        assert_eq!(
            TransportId::parse(&[0x05, 0, 0xff, 0xff, b'i', b'q']),
            Some(TransportId::Iscsi("iq".into()))
        );
        assert_eq!(TransportId::parse(&[0x05, 0, 0, 4, 0, 0, 0, 0]), None);
        // SRP (4) and reserved protocols are not decoded.
        assert_eq!(TransportId::parse(&[0x04; 24]), None);
        assert_eq!(TransportId::parse(&[0x0f; 24]), None);
    }

    #[test]
    fn decoders() {
        let mut k = vec![0, 0, 0, 5, 0, 0, 0, 16];
        k.extend_from_slice(&1u64.to_be_bytes());
        k.extend_from_slice(&2u64.to_be_bytes());
        let d = decode::keys(&k).unwrap();
        assert_eq!(
            (d.generation, d.keys.clone(), d.additional_length),
            (5, vec![1, 2], 16)
        );
        // Truncated to the allocation length: only whole keys.
        assert_eq!(decode::keys(&k[..20]).unwrap().keys, vec![1]);
        assert!(decode::keys(&k[..7]).is_err());

        let mut r = vec![0, 0, 0, 9, 0, 0, 0, 16];
        r.extend_from_slice(&0xabu64.to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0, 0, 0x05, 0, 0]);
        assert_eq!(decode::reservation(&r).unwrap().holder, Some((0xab, 0, 5)));
        assert_eq!(
            decode::reservation(&[0, 0, 0, 1, 0, 0, 0, 0])
                .unwrap()
                .holder,
            None
        );

        let c = decode::capabilities(&[0, 8, 0x11, 0x81, 0xea, 0x01, 0, 0]).unwrap();
        assert!(c.type_mask_valid());
        assert_eq!(c.types(), vec![1, 3, 5, 6, 7, 8]);
        // Byte 2 0x11: CRH and PTPL_C; byte 3 0x81: TMV and PTPL_A.
        assert!(c.crh() && c.ptpl_c() && c.ptpl_a());
        assert!(!c.sip_c() && !c.atp_c());
        let c = decode::capabilities(&[0, 8, 0x0c, 0x00, 0, 0, 0, 0]).unwrap();
        assert!(c.sip_c() && c.atp_c());
        assert!(!c.crh() && !c.ptpl_c() && !c.ptpl_a() && !c.type_mask_valid());

        let mut f = vec![0, 0, 0, 2, 0, 0, 0, 48];
        let mut desc = vec![0u8; 24];
        desc[0..8].copy_from_slice(&7u64.to_be_bytes());
        desc[12] = 0x01;
        desc[13] = 0x05;
        desc[18..20].copy_from_slice(&2u16.to_be_bytes());
        desc[20..24].copy_from_slice(&24u32.to_be_bytes());
        f.extend_from_slice(&desc);
        f.extend_from_slice(&sas_transport_id(0x5001405bbbbbbbb1));
        let s = decode::full_status(&f).unwrap();
        assert_eq!(s.registrations.len(), 1);
        let reg = &s.registrations[0];
        assert!(reg.holder && !reg.all_tg_pt);
        assert_eq!((reg.key, reg.pr_type, reg.relative_target_port), (7, 5, 2));
        assert_eq!(reg.transport_id, sas_transport_id(0x5001405bbbbbbbb1));
    }
}
