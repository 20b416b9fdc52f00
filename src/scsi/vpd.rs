//! INQUIRY's Device Identification VPD page (0x83, SPC-4 §7.8.6): the
//! designators of the logical unit and of the target port a path reaches it
//! through. The `paths` tool reads the RELATIVE TARGET PORT IDENTIFIER from
//! it, the number READ FULL STATUS gives with each registration. Pure, no
//! I/O: the page comes from sysfs (`vpd_pg83`, which the kernel reads once
//! per device) or from an INQUIRY the caller sends.

use std::fmt;

/// The INQUIRY opcode.
pub const INQUIRY: u8 = 0x12;
/// The Device Identification VPD page code.
pub const DEVICE_IDENTIFICATION: u8 = 0x83;

/// DESIGNATOR TYPE values used here.
pub mod designator_type {
    /// Relative target port identifier.
    pub const RELATIVE_TARGET_PORT: u8 = 0x4;
}

/// ASSOCIATION values.
pub mod association {
    /// The designator names the logical unit.
    pub const LOGICAL_UNIT: u8 = 0;
    /// The designator names the target port the command came through.
    pub const TARGET_PORT: u8 = 1;
}

/// An INQUIRY CDB asking for VPD page `page` (EVPD set).
pub fn inquiry_vpd_cdb(page: u8, allocation_length: u16) -> [u8; 6] {
    let [hi, lo] = allocation_length.to_be_bytes();
    [INQUIRY, 0x01, page, hi, lo, 0]
}

/// Why a page could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VpdError {
    /// Shorter than the 4-byte page header.
    TooShort(usize),
    /// The header names another page.
    WrongPage(u8),
    /// A designation descriptor at this offset runs past the PAGE LENGTH
    /// the header declares (a malformed page, not a short allocation).
    Overrun(usize),
    /// A relative target port designator whose DESIGNATOR LENGTH is not 4.
    BadRelativeTargetPort(usize),
}

impl fmt::Display for VpdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VpdError::TooShort(n) => write!(f, "VPD page 0x83 too short ({n} bytes)"),
            VpdError::WrongPage(p) => write!(f, "VPD page 0x{p:02x} where 0x83 was expected"),
            VpdError::Overrun(at) => write!(
                f,
                "VPD page 0x83: the designation descriptor at byte {at} runs past the page"
            ),
            VpdError::BadRelativeTargetPort(n) => write!(
                f,
                "VPD page 0x83: relative target port designator of {n} bytes (4 expected)"
            ),
        }
    }
}

impl std::error::Error for VpdError {}

/// One designation descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Designator<'a> {
    /// PROTOCOL IDENTIFIER (meaningful with `piv`).
    pub protocol: u8,
    /// CODE SET (1 binary, 2 ASCII, 3 UTF-8).
    pub code_set: u8,
    /// PIV: the protocol identifier is valid.
    pub piv: bool,
    /// ASSOCIATION ([`association`]).
    pub association: u8,
    /// DESIGNATOR TYPE ([`designator_type`]).
    pub designator_type: u8,
    /// The DESIGNATOR bytes.
    pub value: &'a [u8],
}

/// The designation descriptors of a Device Identification page.
///
/// A page cut short by the allocation length (fewer bytes than its PAGE
/// LENGTH declares) yields the descriptors that are wholly present; a
/// descriptor that runs past the declared length is an error: the page
/// itself is malformed.
pub fn designators(page: &[u8]) -> Result<Vec<Designator<'_>>, VpdError> {
    if page.len() < 4 {
        return Err(VpdError::TooShort(page.len()));
    }
    if page[1] != DEVICE_IDENTIFICATION {
        return Err(VpdError::WrongPage(page[1]));
    }
    let declared = 4 + usize::from(u16::from_be_bytes([page[2], page[3]]));
    let end = declared.min(page.len());
    let mut out = Vec::new();
    let mut at = 4;
    while at + 4 <= end {
        let len = usize::from(page[at + 3]);
        if at + 4 + len > end {
            if end < declared {
                break;
            }
            return Err(VpdError::Overrun(at));
        }
        out.push(Designator {
            protocol: page[at] >> 4,
            code_set: page[at] & 0x0f,
            piv: page[at + 1] & 0x80 != 0,
            association: (page[at + 1] >> 4) & 0x03,
            designator_type: page[at + 1] & 0x0f,
            value: &page[at + 4..at + 4 + len],
        });
        at += 4 + len;
    }
    if at < end && end == declared {
        // 1-3 bytes left over: a descriptor header cut by the page length.
        return Err(VpdError::Overrun(at));
    }
    Ok(out)
}

/// The RELATIVE TARGET PORT IDENTIFIER the page reports for the port the
/// INQUIRY came through (designator type 4, association 1); `None` when the
/// page has none (the device does not say).
pub fn relative_target_port(page: &[u8]) -> Result<Option<u16>, VpdError> {
    for d in designators(page)? {
        if d.association == association::TARGET_PORT
            && d.designator_type == designator_type::RELATIVE_TARGET_PORT
        {
            // Two reserved bytes, then the identifier.
            return match d.value {
                [_, _, hi, lo] => Ok(Some(u16::from_be_bytes([*hi, *lo]))),
                other => Err(VpdError::BadRelativeTargetPort(other.len())),
            };
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LIO's page 0x83 for a tcm_loop path, as Linux 6.1 reports it
    /// (`/sys/block/sdX/device/vpd_pg83`): NAA (LU), T10 vendor ID (LU),
    /// relative target port 2, target port group 0, SCSI name string of the
    /// target port (`naa.500140500000000102,t,0x0001`).
    fn lio_page(rtpi: u16) -> Vec<u8> {
        let mut d: Vec<u8> = Vec::new();
        // NAA, binary, LU: 16 bytes.
        d.extend_from_slice(&[0x01, 0x03, 0x00, 0x10]);
        d.extend_from_slice(&[
            0x60, 0x01, 0x40, 0x5a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f, 0x60, 0x71, 0x82, 0x93, 0xa4,
            0xb5, 0xc6,
        ]);
        // T10 vendor ID, ASCII, LU.
        let t10 = b"LIO-ORG disk0 prhtestbed0000";
        d.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
        d.extend_from_slice(t10);
        // Relative target port, PIV, SAS protocol, association 1.
        d.extend_from_slice(&[0x61, 0x94, 0x00, 0x04, 0x00, 0x00]);
        d.extend_from_slice(&rtpi.to_be_bytes());
        // Target port group 0, association 1.
        d.extend_from_slice(&[0x61, 0x95, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00]);
        // SCSI name string, UTF-8, association 1 (padded to 4).
        let name = b"naa.500140500000000102,t,0x0001\0";
        d.extend_from_slice(&[0x63, 0xa8, 0x00, name.len() as u8]);
        d.extend_from_slice(name);
        let mut page = vec![0x00, 0x83];
        page.extend_from_slice(&(d.len() as u16).to_be_bytes());
        page.extend_from_slice(&d);
        page
    }

    #[test]
    fn the_relative_target_port_of_a_lio_page() {
        let page = lio_page(2);
        assert_eq!(relative_target_port(&page), Ok(Some(2)));
        let all = designators(&page).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(
            (
                all[0].association,
                all[0].designator_type,
                all[0].value.len()
            ),
            (association::LOGICAL_UNIT, 3, 16)
        );
        assert!(all[2].piv && all[2].protocol == 6);
        assert_eq!(relative_target_port(&lio_page(0x1234)), Ok(Some(0x1234)));
    }

    #[test]
    fn a_page_without_a_target_port_designator() {
        // Only the LU's NAA designator (what a device without target port
        // identification reports), and an LU-associated type 4, which is
        // not the port's.
        let page = [
            0x00, 0x83, 0x00, 0x10, 0x01, 0x03, 0x00, 0x04, 1, 2, 3, 4, 0x01, 0x04, 0x00, 0x04, 0,
            0, 0, 9,
        ];
        assert_eq!(relative_target_port(&page), Ok(None));
        assert_eq!(relative_target_port(&[0x00, 0x83, 0, 0]), Ok(None));
    }

    #[test]
    fn a_page_cut_by_the_allocation_length_gives_what_is_whole() {
        let page = lio_page(2);
        // Cut inside the relative target port descriptor: not there yet.
        let cut = 4 + 20 + 4 + 28 + 5;
        assert_eq!(relative_target_port(&page[..cut]), Ok(None));
        assert_eq!(designators(&page[..cut]).unwrap().len(), 2);
        // Cut after it.
        assert_eq!(relative_target_port(&page[..cut + 3]), Ok(Some(2)));
    }

    #[test]
    fn malformed_pages_are_errors_not_panics() {
        assert_eq!(relative_target_port(&[]), Err(VpdError::TooShort(0)));
        assert_eq!(
            relative_target_port(&[0x00, 0x83, 0]),
            Err(VpdError::TooShort(3))
        );
        assert_eq!(
            relative_target_port(&[0x00, 0x80, 0, 0]),
            Err(VpdError::WrongPage(0x80))
        );
        // A descriptor longer than the declared page.
        let overrun = [0x00, 0x83, 0x00, 0x06, 0x61, 0x94, 0x00, 0x04, 0, 0];
        assert_eq!(relative_target_port(&overrun), Err(VpdError::Overrun(4)));
        // Two stray bytes after the last descriptor.
        let stray = [
            0x00, 0x83, 0x00, 0x0a, 0x61, 0x94, 0x00, 0x04, 0, 0, 0, 1, 7, 7,
        ];
        assert_eq!(relative_target_port(&stray), Err(VpdError::Overrun(12)));
        // A relative target port designator of the wrong size.
        let short = [0x00, 0x83, 0x00, 0x06, 0x61, 0x94, 0x00, 0x02, 0, 1];
        assert_eq!(
            relative_target_port(&short),
            Err(VpdError::BadRelativeTargetPort(2))
        );
        // Every prefix of a good page, and every one-byte corruption of it,
        // decodes or fails without panicking.
        let page = lio_page(2);
        for n in 0..=page.len() {
            let _ = relative_target_port(&page[..n]);
        }
        for i in 0..page.len() {
            for v in [0x00, 0x7f, 0xff] {
                let mut p = page.clone();
                p[i] = v;
                let _ = relative_target_port(&p);
            }
        }
    }

    #[test]
    fn inquiry_cdb() {
        assert_eq!(
            inquiry_vpd_cdb(DEVICE_IDENTIFICATION, 0x1000),
            [0x12, 0x01, 0x83, 0x10, 0x00, 0x00]
        );
    }
}
