//! The `handshake_and_response` fuzz target.
//!
//! # Input format
//!
//! ```text
//! word(4) prefix_len(1) status(1) sense(96) payload(rest, at most 8192)
//! ```
//!
//! (missing bytes are zeros). Checks:
//!
//! * the client's feature word is accepted exactly when it is 0, and refused
//!   naming the word otherwise; the helper's word round-trips;
//! * `Response::encode` appends (leaves what `out` held), writes exactly
//!   104 + payload bytes, and `decode_response_header` gives back the same
//!   status, length and all 96 sense bytes; the client's `Reply::to_bytes`
//!   reproduces the wire bytes;
//! * any 104 bytes decode as a header and re-encode to themselves.

use pr_helper::client::Reply;
use pr_helper::protocol::{
    check_requested_features, decode_response_header, encode_features, Response, Violation,
    FEATURES_SIZE, MAX_TRANSFER, RESPONSE_HEADER_SIZE, SENSE_SIZE, SUPPORTED_FEATURES,
};

/// Input layout offsets.
const WORD: usize = 0;
const PREFIX: usize = WORD + FEATURES_SIZE;
const STATUS: usize = PREFIX + 1;
const SENSE: usize = STATUS + 1;
const PAYLOAD: usize = SENSE + SENSE_SIZE;

/// Builds an input (for the seed corpus).
pub fn encode(word: u32, prefix: u8, status: u8, sense: &[u8; SENSE_SIZE], data: &[u8]) -> Vec<u8> {
    let mut out = word.to_be_bytes().to_vec();
    out.push(prefix);
    out.push(status);
    out.extend_from_slice(sense);
    out.extend_from_slice(data);
    out
}

/// Runs one input; panics on any violated invariant.
pub fn run(input: &[u8]) {
    let mut buf = input.to_vec();
    if buf.len() < PAYLOAD {
        buf.resize(PAYLOAD, 0);
    }

    // Handshake: the helper's word, and the check of the client's.
    let word: [u8; FEATURES_SIZE] = buf[WORD..PREFIX].try_into().unwrap();
    let value = u32::from_be_bytes(word);
    assert_eq!(encode_features(value), word);
    assert_eq!(encode_features(SUPPORTED_FEATURES), [0; FEATURES_SIZE]);
    match check_requested_features(word) {
        Ok(()) => assert_eq!(value, 0, "feature word {value:#x} accepted"),
        Err(v) => {
            assert_ne!(value, 0, "feature word 0 refused");
            assert_eq!(v, Violation::UnsupportedFeatures(value));
            assert!(!v.to_string().is_empty());
        }
    }

    // Response encoding and the client's decoding.
    let prefix = usize::from(buf[PREFIX] % 8);
    let status = buf[STATUS];
    let sense: [u8; SENSE_SIZE] = buf[SENSE..PAYLOAD].try_into().unwrap();
    let data = buf[PAYLOAD..]
        .iter()
        .copied()
        .take(MAX_TRANSFER)
        .collect::<Vec<u8>>();
    let response = Response {
        status,
        sense,
        data: data.clone(),
    };
    let mut out = vec![0xa5; prefix];
    response.encode(&mut out);
    assert_eq!(out.len(), prefix + RESPONSE_HEADER_SIZE + data.len());
    assert!(out[..prefix].iter().all(|&b| b == 0xa5), "encode overwrote");
    let wire = &out[prefix..];
    let header: [u8; RESPONSE_HEADER_SIZE] = wire[..RESPONSE_HEADER_SIZE].try_into().unwrap();
    let decoded = decode_response_header(&header);
    assert_eq!(decoded.status, u32::from(status));
    assert_eq!(decoded.data_len as usize, data.len());
    assert_eq!(decoded.sense, sense);
    assert_eq!(&wire[RESPONSE_HEADER_SIZE..], &data[..]);
    let reply = Reply {
        header: decoded,
        data,
    };
    assert_eq!(reply.to_bytes(), wire);

    // status_only: no sense, no payload.
    let mut only = Vec::new();
    Response::status_only(status).encode(&mut only);
    let mut expected = vec![0u8; RESPONSE_HEADER_SIZE];
    expected[3] = status;
    assert_eq!(only, expected);

    // Any 104 bytes are a header the client decodes and re-encodes as is.
    let mut raw = [0u8; RESPONSE_HEADER_SIZE];
    let n = input.len().min(RESPONSE_HEADER_SIZE);
    raw[..n].copy_from_slice(&input[..n]);
    let h = decode_response_header(&raw);
    let reply = Reply {
        header: h,
        data: Vec::new(),
    };
    assert_eq!(reply.to_bytes(), raw);
}
