//! The qemu-pr-helper wire protocol: pure encoding and decoding, no I/O.
//!
//! Everything here follows QEMU's `docs/interop/pr-helper.rst` and the
//! behaviour of the reference helper (spec §2–§6). The connection code feeds
//! bytes and received file descriptors into [`RequestDecoder`] and writes what
//! [`Response::encode`] produces; keeping the state machine free of sockets
//! makes every framing rule unit-testable and fuzzable.
//!
//! Wire summary (all integers big-endian):
//!
//! * handshake: the helper sends a 4-byte feature word (0), then reads the
//!   client's 4-byte word; anything but 0 closes the connection;
//! * request: a 16-byte CDB with exactly one fd attached (SCM_RIGHTS) to the
//!   bytes of the CDB, followed for PERSISTENT RESERVE OUT by the parameter
//!   list, whose length is CDB bytes 7–8 (§3.3: bytes 5–6 are ignored for
//!   framing, exactly like QEMU's client);
//! * response: status (4), payload length (4), sense (96), payload.

/// Passing file descriptors over the socket (SCM_RIGHTS).
pub mod fdpass;

/// Bytes of CDB on the wire for every request.
pub const CDB_SIZE: usize = 16;
/// Bytes of sense data in every response.
pub const SENSE_SIZE: usize = 96;
/// Largest PR IN allocation length / PR OUT parameter list length accepted.
pub const MAX_TRANSFER: usize = 8192;
/// Size of the fixed response header: status, length, sense.
pub const RESPONSE_HEADER_SIZE: usize = 4 + 4 + SENSE_SIZE;
/// Size of the feature word exchanged in the handshake.
pub const FEATURES_SIZE: usize = 4;
/// Features this helper supports. No feature bits are defined by any released
/// QEMU, so this is 0 and a client requesting any bit is disconnected.
pub const SUPPORTED_FEATURES: u32 = 0;
/// The socket path helper and clients use unless told otherwise (the one
/// systemd's qemu-pr-helper.socket listens on).
pub const DEFAULT_SOCKET: &str = "/run/qemu-pr-helper.sock";
/// Longest socket path there is (`sizeof(sun_path)`): the helper refuses a
/// longer one rather than listen where no client can connect.
pub const MAX_SOCKET_PATH: usize = 108;

/// SCSI opcode PERSISTENT RESERVE IN.
pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
/// SCSI opcode PERSISTENT RESERVE OUT.
pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;

/// The helper's handshake message.
pub fn encode_features(features: u32) -> [u8; FEATURES_SIZE] {
    features.to_be_bytes()
}

/// Checks the client's requested feature word (spec §2.2): a bit the helper
/// does not support closes the connection.
pub fn check_requested_features(word: [u8; FEATURES_SIZE]) -> Result<(), Violation> {
    let requested = u32::from_be_bytes(word);
    if requested & !SUPPORTED_FEATURES != 0 {
        return Err(Violation::UnsupportedFeatures(requested));
    }
    Ok(())
}

/// Direction of a persistent-reservation command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// PERSISTENT RESERVE IN: data flows from the device to the client.
    In,
    /// PERSISTENT RESERVE OUT: a parameter list flows to the device.
    Out,
}

/// A complete, well-framed request: the CDB, its fd and (PR OUT) the
/// parameter list. `F` is the fd type (an `OwnedFd` in the server; any token
/// in tests and fuzzers).
#[derive(Debug)]
pub struct Request<F> {
    /// The 16 CDB bytes exactly as received; they are sent to the device
    /// unmodified.
    pub cdb: [u8; CDB_SIZE],
    /// The device the command is for.
    pub fd: F,
    /// PR IN or PR OUT.
    pub direction: Direction,
    /// CDB bytes 7–8: allocation length (PR IN) or parameter list length (PR OUT).
    pub transfer_len: usize,
    /// The PR OUT parameter list (`transfer_len` bytes); empty for PR IN.
    pub params: Vec<u8>,
}

impl<F> Request<F> {
    /// The service action field (CDB byte 1, low 5 bits).
    pub fn service_action(&self) -> u8 {
        self.cdb[1] & 0x1f
    }
}

/// Why a connection is closed without a reply (spec §6.1). None of these is
/// answered: an unmodified QEMU expects the connection to drop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The client asked for feature bits the helper does not support.
    #[error("client requested unsupported features {0:#010x}")]
    UnsupportedFeatures(u32),
    /// More than one fd arrived with the CDB bytes of one request.
    #[error("{0} file descriptors in one request")]
    MultipleFds(usize),
    /// The CDB arrived without an fd.
    #[error("No file descriptor in request.")]
    NoFd,
    /// The opcode is neither PERSISTENT RESERVE IN nor OUT.
    #[error("Invalid CDB (opcode {0:#04x}), closing socket.")]
    InvalidOpcode(u8),
    /// The transfer length in CDB bytes 7–8 exceeds [`MAX_TRANSFER`].
    #[error("transfer length {0} exceeds {MAX_TRANSFER}")]
    TransferTooLong(usize),
}

/// What the decoder wants to read next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Up to this many CDB bytes; fds passed with them are collected.
    Cdb(usize),
    /// Up to this many parameter-list bytes; fds must not be collected (the
    /// reference reads these without a control buffer, so the kernel discards
    /// any fd sent with them).
    Params(usize),
}

/// Progress after feeding bytes.
#[derive(Debug)]
pub enum Progress<F> {
    /// More bytes are needed; see [`RequestDecoder::need`].
    Incomplete,
    /// A whole request has arrived.
    Complete(Request<F>),
}

/// Incremental request decoder: the order of checks is the reference's
/// (spec §3.4), so the same byte stream is accepted or refused identically.
/// Like the reference, it refuses a second fd on the chunk that brings it,
/// not once the CDB is complete: it never holds more than one fd.
#[derive(Debug)]
pub struct RequestDecoder<F> {
    cdb: [u8; CDB_SIZE],
    cdb_len: usize,
    fds: Vec<F>,
    body: Option<Body<F>>,
}

#[derive(Debug)]
struct Body<F> {
    fd: F,
    direction: Direction,
    transfer_len: usize,
    params: Vec<u8>,
}

impl<F> Default for RequestDecoder<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F> RequestDecoder<F> {
    /// A decoder waiting for the first byte of a CDB.
    pub fn new() -> Self {
        RequestDecoder {
            cdb: [0; CDB_SIZE],
            cdb_len: 0,
            fds: Vec::new(),
            body: None,
        }
    }

    /// True when nothing of the next request has arrived yet (a request
    /// boundary: EOF here is a normal close, and idle time here is unbounded).
    pub fn is_idle(&self) -> bool {
        self.cdb_len == 0 && self.fds.is_empty() && self.body.is_none()
    }

    /// What to read next.
    pub fn need(&self) -> Need {
        match &self.body {
            None => Need::Cdb(CDB_SIZE - self.cdb_len),
            Some(body) => Need::Params(body.params_len() - body.params.len()),
        }
    }

    /// Feeds CDB bytes (at most what [`Need::Cdb`] asked for) and the fds that
    /// arrived with them.
    pub fn feed_cdb(&mut self, bytes: &[u8], fds: Vec<F>) -> Result<Progress<F>, Violation> {
        debug_assert!(
            self.body.is_none(),
            "CDB bytes fed while reading parameters"
        );
        self.fds.extend(fds);
        // Spec §3.4 step 1, applied as each chunk arrives, as the reference
        // does: a second fd ends the request at once, so that a client
        // cannot make the helper hold 16 fds per chunk until the last CDB
        // byte (or the request timeout). Dropping the vector closes them all.
        if self.fds.len() > 1 {
            let fds = std::mem::take(&mut self.fds);
            self.cdb_len = 0;
            return Err(Violation::MultipleFds(fds.len()));
        }
        let take = bytes.len().min(CDB_SIZE - self.cdb_len);
        self.cdb[self.cdb_len..self.cdb_len + take].copy_from_slice(&bytes[..take]);
        self.cdb_len += take;
        if self.cdb_len < CDB_SIZE {
            return Ok(Progress::Incomplete);
        }
        let body = self.cdb_complete()?;
        let complete = body.params_len() == 0;
        self.body = Some(body);
        Ok(if complete {
            self.hand_out()
        } else {
            Progress::Incomplete
        })
    }

    /// Feeds parameter-list bytes (at most what [`Need::Params`] asked for).
    pub fn feed_params(&mut self, bytes: &[u8]) -> Progress<F> {
        let Some(body) = self.body.as_mut() else {
            debug_assert!(false, "parameter bytes fed while reading a CDB");
            return Progress::Incomplete;
        };
        let take = bytes.len().min(body.params_len() - body.params.len());
        body.params.extend_from_slice(&bytes[..take]);
        if body.params.len() < body.params_len() {
            return Progress::Incomplete;
        }
        self.hand_out()
    }

    /// The 16 CDB bytes are in: apply spec §3.4 steps 1–4.
    fn cdb_complete(&mut self) -> Result<Body<F>, Violation> {
        // Whatever happens next, the following bytes belong to a new CDB.
        self.cdb_len = 0;
        // Step 1 (more than one fd) was checked as each chunk arrived, so
        // at most one is left. Step 2: no fd.
        let Some(fd) = std::mem::take(&mut self.fds).into_iter().next() else {
            return Err(Violation::NoFd);
        };
        // Step 3: only PERSISTENT RESERVE IN/OUT.
        let direction = match self.cdb[0] {
            PERSISTENT_RESERVE_IN => Direction::In,
            PERSISTENT_RESERVE_OUT => Direction::Out,
            op => return Err(Violation::InvalidOpcode(op)),
        };
        // Step 4: both opcodes are group 2 (10-byte CDBs), whose transfer
        // length QEMU takes from bytes 7–8 for PR IN and PR OUT alike.
        let transfer_len = usize::from(u16::from_be_bytes([self.cdb[7], self.cdb[8]]));
        if transfer_len > MAX_TRANSFER {
            return Err(Violation::TransferTooLong(transfer_len));
        }
        let params = match direction {
            Direction::In => Vec::new(),
            Direction::Out => Vec::with_capacity(transfer_len),
        };
        Ok(Body {
            fd,
            direction,
            transfer_len,
            params,
        })
    }

    /// Hands out the complete request and resets for the next one.
    fn hand_out(&mut self) -> Progress<F> {
        match self.body.take() {
            Some(body) => Progress::Complete(Request {
                cdb: self.cdb,
                fd: body.fd,
                direction: body.direction,
                transfer_len: body.transfer_len,
                params: body.params,
            }),
            None => Progress::Incomplete,
        }
    }
}

impl<F> Body<F> {
    /// Parameter bytes that follow the CDB on the wire: the transfer length
    /// for PR OUT, nothing for PR IN (its transfer length is the allocation
    /// length of the reply).
    fn params_len(&self) -> usize {
        match self.direction {
            Direction::In => 0,
            Direction::Out => self.transfer_len,
        }
    }
}

/// One response, ready to encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// SCSI status byte.
    pub status: u8,
    /// The full sense buffer; every byte is sent (and every byte reaches the
    /// guest on CHECK CONDITION), so all 96 are always defined (D1).
    pub sense: [u8; SENSE_SIZE],
    /// PR IN payload; empty unless the status is GOOD.
    pub data: Vec<u8>,
}

impl Response {
    /// A response with this status, no sense and no data.
    pub fn status_only(status: u8) -> Self {
        Response {
            status,
            sense: [0; SENSE_SIZE],
            data: Vec::new(),
        }
    }

    /// Appends the wire form (header, sense, payload) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(RESPONSE_HEADER_SIZE + self.data.len());
        out.extend_from_slice(&u32::from(self.status).to_be_bytes());
        // The payload never exceeds MAX_TRANSFER (8192), so this cannot truncate.
        out.extend_from_slice(&(self.data.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.sense);
        out.extend_from_slice(&self.data);
    }
}

/// A decoded response header (the client side of the protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHeader {
    /// SCSI status (the wire carries 32 bits).
    pub status: u32,
    /// Payload length that follows the header.
    pub data_len: u32,
    /// The 96 sense bytes.
    pub sense: [u8; SENSE_SIZE],
}

/// Decodes the 104-byte response header.
pub fn decode_response_header(bytes: &[u8; RESPONSE_HEADER_SIZE]) -> ResponseHeader {
    let mut sense = [0; SENSE_SIZE];
    sense.copy_from_slice(&bytes[8..]);
    ResponseHeader {
        status: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        data_len: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        sense,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A violation is a `std::error::Error`, with the messages the log
    /// shows (spec §6.1).
    #[test]
    fn violation_is_an_error_with_the_logged_messages() {
        let cases: [(Violation, &str); 5] = [
            (
                Violation::UnsupportedFeatures(1),
                "client requested unsupported features 0x00000001",
            ),
            (
                Violation::MultipleFds(2),
                "2 file descriptors in one request",
            ),
            (Violation::NoFd, "No file descriptor in request."),
            (
                Violation::InvalidOpcode(0x12),
                "Invalid CDB (opcode 0x12), closing socket.",
            ),
            (
                Violation::TransferTooLong(9000),
                "transfer length 9000 exceeds 8192",
            ),
        ];
        for (v, text) in cases {
            let e: Box<dyn std::error::Error> = Box::new(v);
            assert_eq!(e.to_string(), text);
            assert!(e.source().is_none());
        }
    }

    fn pr_in(alloc: u16) -> [u8; 16] {
        let mut cdb = [0u8; 16];
        cdb[0] = PERSISTENT_RESERVE_IN;
        cdb[7..9].copy_from_slice(&alloc.to_be_bytes());
        cdb
    }

    fn pr_out(sa: u8, len: u16) -> [u8; 16] {
        let mut cdb = [0u8; 16];
        cdb[0] = PERSISTENT_RESERVE_OUT;
        cdb[1] = sa;
        cdb[7..9].copy_from_slice(&len.to_be_bytes());
        cdb
    }

    fn complete(p: Progress<u32>) -> Request<u32> {
        match p {
            Progress::Complete(r) => r,
            Progress::Incomplete => panic!("expected a complete request"),
        }
    }

    #[test]
    fn handshake_accepts_only_zero() {
        assert_eq!(encode_features(SUPPORTED_FEATURES), [0, 0, 0, 0]);
        assert_eq!(check_requested_features([0; 4]), Ok(()));
        assert_eq!(
            check_requested_features([0, 0, 0, 1]),
            Err(Violation::UnsupportedFeatures(1))
        );
        assert_eq!(
            check_requested_features([0x80, 0, 0, 0]),
            Err(Violation::UnsupportedFeatures(0x8000_0000))
        );
    }

    #[test]
    fn pr_in_completes_with_cdb() {
        let mut d = RequestDecoder::new();
        assert!(d.is_idle());
        assert_eq!(d.need(), Need::Cdb(16));
        let r = complete(d.feed_cdb(&pr_in(512), vec![7]).unwrap());
        assert_eq!(r.direction, Direction::In);
        assert_eq!(r.transfer_len, 512);
        assert_eq!(r.fd, 7);
        assert!(r.params.is_empty());
        assert!(d.is_idle());
        assert_eq!(d.need(), Need::Cdb(16));
    }

    #[test]
    fn cdb_split_with_fd_on_any_chunk() {
        for fd_chunk in 0..3 {
            let cdb = pr_in(8);
            let chunks: [&[u8]; 3] = [&cdb[..1], &cdb[1..9], &cdb[9..]];
            let mut d = RequestDecoder::new();
            let mut done = None;
            for (i, c) in chunks.iter().enumerate() {
                let fds = if i == fd_chunk { vec![3] } else { vec![] };
                assert_eq!(
                    d.need(),
                    Need::Cdb(16 - chunks[..i].iter().map(|c| c.len()).sum::<usize>())
                );
                if let Progress::Complete(r) = d.feed_cdb(c, fds).unwrap() {
                    done = Some(r);
                }
                if i == 0 {
                    assert!(!d.is_idle());
                }
            }
            let r = done.expect("complete");
            assert_eq!(r.fd, 3);
            assert_eq!(r.cdb, cdb);
        }
    }

    #[test]
    fn pr_out_reads_parameters_by_bytes_7_8() {
        let mut cdb = pr_out(0, 24);
        // Bytes 5-6 are part of SPC's 32-bit length but are ignored for framing.
        cdb[5] = 0xff;
        cdb[6] = 0xff;
        let mut d = RequestDecoder::new();
        assert!(matches!(
            d.feed_cdb(&cdb, vec![1]).unwrap(),
            Progress::Incomplete
        ));
        assert_eq!(d.need(), Need::Params(24));
        assert!(matches!(d.feed_params(&[1; 10]), Progress::Incomplete));
        assert_eq!(d.need(), Need::Params(14));
        let r = complete(d.feed_params(&[2; 14]));
        assert_eq!(r.direction, Direction::Out);
        assert_eq!(r.transfer_len, 24);
        assert_eq!(&r.params[..10], &[1; 10]);
        assert_eq!(&r.params[10..], &[2; 14]);
        assert_eq!(r.cdb, cdb);
        assert_eq!(d.need(), Need::Cdb(16));
    }

    #[test]
    fn pr_out_zero_length_completes_immediately() {
        let mut d = RequestDecoder::new();
        let r = complete(d.feed_cdb(&pr_out(3, 0), vec![1]).unwrap());
        assert_eq!(r.transfer_len, 0);
        assert!(r.params.is_empty());
        assert_eq!(r.service_action(), 3);
    }

    #[test]
    fn violations_in_reference_order() {
        let mut d = RequestDecoder::<u32>::new();
        assert_eq!(d.feed_cdb(&pr_in(8), vec![]).unwrap_err(), Violation::NoFd);
        let mut d = RequestDecoder::new();
        assert_eq!(
            d.feed_cdb(&pr_in(8), vec![1, 2]).unwrap_err(),
            Violation::MultipleFds(2)
        );
        // Two fds on two chunks count too.
        let mut d = RequestDecoder::new();
        let cdb = pr_in(8);
        assert!(matches!(
            d.feed_cdb(&cdb[..4], vec![1]).unwrap(),
            Progress::Incomplete
        ));
        assert_eq!(
            d.feed_cdb(&cdb[4..], vec![2]).unwrap_err(),
            Violation::MultipleFds(2)
        );
        // The fd check comes before the opcode check.
        let mut bad = pr_in(8);
        bad[0] = 0x12;
        let mut d = RequestDecoder::<u32>::new();
        assert_eq!(d.feed_cdb(&bad, vec![]).unwrap_err(), Violation::NoFd);
        let mut d = RequestDecoder::new();
        assert_eq!(
            d.feed_cdb(&bad, vec![1]).unwrap_err(),
            Violation::InvalidOpcode(0x12)
        );
        // Opcode before length.
        let mut bad = pr_in(9000);
        bad[0] = 0;
        let mut d = RequestDecoder::new();
        assert_eq!(
            d.feed_cdb(&bad, vec![1]).unwrap_err(),
            Violation::InvalidOpcode(0)
        );
    }

    /// An fd stand-in that counts how often each one is dropped (closed).
    #[derive(Debug)]
    struct Tok(usize, std::rc::Rc<std::cell::RefCell<Vec<u32>>>);

    impl Drop for Tok {
        fn drop(&mut self) {
            self.1.borrow_mut()[self.0] += 1;
        }
    }

    #[derive(Default)]
    struct Toks(std::rc::Rc<std::cell::RefCell<Vec<u32>>>);

    impl Toks {
        fn make(&self, n: usize) -> Vec<Tok> {
            (0..n)
                .map(|_| {
                    let mut drops = self.0.borrow_mut();
                    drops.push(0);
                    Tok(drops.len() - 1, self.0.clone())
                })
                .collect()
        }

        /// Tokens not yet dropped; panics if one was dropped twice.
        fn alive(&self) -> usize {
            let drops = self.0.borrow();
            assert!(drops.iter().all(|&d| d <= 1), "an fd closed twice");
            drops.iter().filter(|&&d| d == 0).count()
        }
    }

    #[test]
    fn a_second_fd_ends_the_request_on_the_chunk_that_brings_it() {
        let toks = Toks::default();
        let cdb = pr_in(8);
        // 16 fds on the first byte: refused at once, all 16 closed.
        let mut d = RequestDecoder::new();
        assert_eq!(
            d.feed_cdb(&cdb[..1], toks.make(16)).unwrap_err(),
            Violation::MultipleFds(16)
        );
        assert_eq!(toks.alive(), 0);
        assert!(d.is_idle());
        // One fd on byte 0 is held (it is the request's fd) ...
        let mut d = RequestDecoder::new();
        assert!(matches!(
            d.feed_cdb(&cdb[..1], toks.make(1)).unwrap(),
            Progress::Incomplete
        ));
        assert_eq!(toks.alive(), 1);
        // ... fd-less bytes change nothing ...
        assert!(matches!(
            d.feed_cdb(&cdb[1..2], vec![]).unwrap(),
            Progress::Incomplete
        ));
        // ... a second fd on byte 2, 13 bytes before the CDB is complete,
        // ends it, and both are closed.
        assert_eq!(
            d.feed_cdb(&cdb[2..3], toks.make(1)).unwrap_err(),
            Violation::MultipleFds(2)
        );
        assert_eq!(toks.alive(), 0);
        // The check comes before the opcode check, on every chunk.
        let mut d = RequestDecoder::new();
        assert_eq!(
            d.feed_cdb(&[0x12], toks.make(3)).unwrap_err(),
            Violation::MultipleFds(3)
        );
        // A second fd with the next request's bytes counts for that one.
        let mut d = RequestDecoder::new();
        assert!(matches!(
            d.feed_cdb(&cdb, toks.make(1)).unwrap(),
            Progress::Complete(_)
        ));
        assert!(matches!(
            d.feed_cdb(&cdb[..4], toks.make(1)).unwrap(),
            Progress::Incomplete
        ));
        assert_eq!(toks.alive(), 1);
        drop(d);
        assert_eq!(toks.alive(), 0);
    }

    /// Property: for random streams of chunks (random sizes, random fd
    /// counts, good and bad CDBs, PR OUT parameters), fed as the connection
    /// code feeds them, the decoder never holds more than one fd, refuses a
    /// request exactly on the chunk that brings its second fd, hands out
    /// every request with exactly one fd, and closes every fd exactly once.
    #[test]
    fn property_never_more_than_one_fd_held() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move |n: usize| {
            // xorshift64*: deterministic, so a failure reproduces.
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            (seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
        };
        let (mut requests, mut refused) = (0, 0);
        for _ in 0..3000 {
            let toks = Toks::default();
            // A stream of CDBs (some bad), PR OUT parameters, garbage.
            let mut stream = Vec::new();
            for _ in 0..1 + rand(4) {
                match rand(5) {
                    0 => stream.extend_from_slice(&pr_in(rand(9000) as u16)),
                    1 => {
                        let len = [0, 1, 24, 100][rand(4)];
                        stream.extend_from_slice(&pr_out(rand(8) as u8, len as u16));
                        stream.extend((0..len).map(|_| rand(256) as u8));
                    }
                    2 => stream.extend((0..1 + rand(20)).map(|_| rand(256) as u8)),
                    _ => stream.extend_from_slice(&pr_in(8)),
                }
            }
            let mut d = RequestDecoder::new();
            // fds fed since the current CDB began (the model).
            let mut window = 0;
            let mut rest = &stream[..];
            'stream: while !rest.is_empty() {
                // One client sendmsg: a few bytes with 0..=2 fds, or 16.
                let chunk = rest.len().min(1 + rand(18));
                let n_fds = [0, 0, 0, 1, 1, 1, 2, 16][rand(8)];
                let mut fds = Some(toks.make(n_fds));
                let (mut part, tail) = rest.split_at(chunk);
                rest = tail;
                while !part.is_empty() {
                    let (take, result) = match d.need() {
                        Need::Cdb(n) => {
                            let take = n.min(part.len());
                            let fds = fds.take().unwrap_or_default();
                            window += fds.len();
                            (take, d.feed_cdb(&part[..take], fds))
                        }
                        Need::Params(n) => {
                            // Read without a control buffer: the kernel
                            // closes fds riding on parameter bytes.
                            drop(fds.take());
                            let take = n.min(part.len());
                            (take, Ok(d.feed_params(&part[..take])))
                        }
                    };
                    part = &part[take..];
                    match result {
                        Err(Violation::MultipleFds(n)) => {
                            assert!(window > 1 && n == window, "{n} {window}");
                            // All of them closed, the request's first too.
                            assert_eq!(toks.alive(), 0);
                            refused += 1;
                            break 'stream;
                        }
                        Err(_) => {
                            assert!(window <= 1, "more than one fd accepted");
                            break 'stream;
                        }
                        Ok(Progress::Complete(r)) => {
                            assert!(window == 1, "a request completed with {window} fds");
                            drop(r);
                            window = 0;
                            requests += 1;
                        }
                        Ok(Progress::Incomplete) => assert!(window <= 1),
                    }
                    // The decoder holds at most the one fd of the request.
                    let pending = fds.as_ref().map_or(0, Vec::len);
                    assert!(toks.alive() - pending <= 1, "decoder holds several fds");
                }
                drop(fds);
            }
            drop(d);
            assert_eq!(toks.alive(), 0, "an fd was never closed");
        }
        assert!(requests > 500 && refused > 500, "{requests} {refused}");
    }

    #[test]
    fn transfer_length_boundaries() {
        for (len, ok) in [
            (8191u16, true),
            (8192, true),
            (8193, false),
            (0xffff, false),
        ] {
            for cdb in [pr_in(len), pr_out(0, len)] {
                let mut d = RequestDecoder::new();
                let r = d.feed_cdb(&cdb, vec![1]);
                if ok {
                    assert!(r.is_ok(), "{len}");
                } else {
                    assert_eq!(r.unwrap_err(), Violation::TransferTooLong(usize::from(len)));
                }
            }
        }
    }

    #[test]
    fn response_encoding() {
        let mut r = Response::status_only(0x18);
        r.sense[0] = 0x70;
        r.data = vec![1, 2, 3];
        let mut out = Vec::new();
        r.encode(&mut out);
        assert_eq!(out.len(), 107);
        assert_eq!(&out[..8], &[0, 0, 0, 0x18, 0, 0, 0, 3]);
        assert_eq!(out[8], 0x70);
        assert_eq!(&out[104..], &[1, 2, 3]);
        let mut hdr = [0u8; RESPONSE_HEADER_SIZE];
        hdr.copy_from_slice(&out[..RESPONSE_HEADER_SIZE]);
        let h = decode_response_header(&hdr);
        assert_eq!(h.status, 0x18);
        assert_eq!(h.data_len, 3);
        assert_eq!(h.sense, r.sense);
    }
}
