//! `pr-helper persist --json`: the JSON written for each kind of reply,
//! byte for byte (field order, number and string forms, null).

use pr_helper::client::tools::reply_json;
use pr_helper::client::Reply;
use pr_helper::protocol::{ResponseHeader, SENSE_SIZE};
use pr_helper::scsi::pr::{pr_in_cdb, pr_out_cdb, sa_in};

fn reply(status: u32, sense: &[u8], data: Vec<u8>) -> Reply {
    let mut s = [0u8; SENSE_SIZE];
    s[..sense.len()].copy_from_slice(sense);
    Reply {
        header: ResponseHeader {
            status,
            data_len: data.len() as u32,
            sense: s,
        },
        data,
    }
}

#[test]
fn read_keys() {
    let mut data = vec![0, 0, 0, 7, 0, 0, 0, 16];
    data.extend(0xaa01u64.to_be_bytes());
    data.extend(0xbb01u64.to_be_bytes());
    assert_eq!(
        reply_json(&pr_in_cdb(sa_in::READ_KEYS, 8192), &reply(0, &[], data)),
        "{\"status\":0,\"status_name\":\"GOOD\",\"sense\":null,\
         \"data\":\"0000000700000010000000000000aa01000000000000bb01\",\
         \"generation\":7,\"keys\":[\"0xaa01\",\"0xbb01\"]}"
    );
}

#[test]
fn read_reservation() {
    let none = reply(0, &[], vec![0, 0, 0, 3, 0, 0, 0, 0]);
    assert_eq!(
        reply_json(&pr_in_cdb(sa_in::READ_RESERVATION, 8192), &none),
        "{\"status\":0,\"status_name\":\"GOOD\",\"sense\":null,\"data\":\"0000000300000000\",\
         \"generation\":3,\"reservation\":null}"
    );
    let mut data = vec![0, 0, 0, 4, 0, 0, 0, 16];
    data.extend(0xabcdu64.to_be_bytes());
    data.extend([0, 0, 0, 0, 0, 0x05, 0, 0]);
    assert_eq!(
        reply_json(
            &pr_in_cdb(sa_in::READ_RESERVATION, 8192),
            &reply(0, &[], data)
        ),
        "{\"status\":0,\"status_name\":\"GOOD\",\"sense\":null,\
         \"data\":\"0000000400000010000000000000abcd0000000000050000\",\
         \"generation\":4,\"reservation\":{\"key\":\"0xabcd\",\"scope\":0,\"type\":5}}"
    );
}

#[test]
fn report_capabilities() {
    let data = vec![0, 8, 0x0d, 0x80, 0xea, 0x01, 0, 0];
    let json = reply_json(
        &pr_in_cdb(sa_in::REPORT_CAPABILITIES, 8),
        &reply(0, &[], data),
    );
    assert!(
        json.starts_with(
            "{\"status\":0,\"status_name\":\"GOOD\",\"sense\":null,\"data\":\"00080d80ea010000\",\
             \"type_mask_valid\":true,\"types\":["
        ),
        "{json}"
    );
    assert!(
        json.ends_with("],\"sip_c\":true,\"atp_c\":true,\"ptpl_c\":true}"),
        "{json}"
    );
    let types: Vec<u8> = json
        .split("\"types\":[")
        .nth(1)
        .and_then(|t| t.split(']').next())
        .unwrap()
        .split(',')
        .map(|t| t.trim().parse().unwrap())
        .collect();
    assert_eq!(types, [1, 3, 5, 6, 7, 8]);
}

#[test]
fn read_full_status() {
    let mut data = vec![0, 0, 0, 9, 0, 0, 0, 28];
    data.extend(0x11u64.to_be_bytes());
    data.extend([0, 0, 0, 0]);
    data.extend([0x03, 0x01, 0, 0, 0, 0, 0, 2]);
    data.extend([0, 0, 0, 4]);
    data.extend([0xde, 0xad, 0xbe, 0xef]);
    let json = reply_json(
        &pr_in_cdb(sa_in::READ_FULL_STATUS, 8192),
        &reply(0, &[], data.clone()),
    );
    let expected = format!(
        "{{\"status\":0,\"status_name\":\"GOOD\",\"sense\":null,\"data\":\"{}\",\
         \"generation\":9,\"registrations\":[{{\"key\":\"0x11\",\"holder\":true,\
         \"all_tg_pt\":true,\"scope\":0,\"type\":1,\"relative_target_port\":2,\
         \"transport_id\":\"deadbeef\"}}]}}",
        data.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    assert_eq!(json, expected);
}

#[test]
fn check_condition_and_pr_out() {
    // Fixed-format sense: ILLEGAL REQUEST, INVALID FIELD IN CDB.
    let sense = [0x70, 0, 0x05, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0x24, 0x00];
    assert_eq!(
        reply_json(
            &pr_in_cdb(sa_in::READ_KEYS, 8192),
            &reply(2, &sense, Vec::new())
        ),
        "{\"status\":2,\"status_name\":\"CHECK CONDITION\",\
         \"sense\":{\"key\":5,\"asc\":36,\"ascq\":0},\"data\":\"\"}"
    );
    assert_eq!(
        reply_json(&pr_out_cdb(0, 0, 0, 24), &reply(0x18, &[], Vec::new())),
        "{\"status\":24,\"status_name\":\"RESERVATION CONFLICT\",\"sense\":null,\"data\":\"\"}"
    );
}
