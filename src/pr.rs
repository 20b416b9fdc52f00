//! Persistent-reservation command building (SPC-4 §6.15–§6.16): CDBs and PR
//! OUT parameter lists, as a guest's sg_persist would send them. Used by the
//! client tools, the benchmark and the tests; pure, no I/O.

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
}
