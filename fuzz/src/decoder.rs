//! The `decoder` fuzz target: [`RequestDecoder`] driven exactly as the
//! connection code drives it, checked against a plain reference model.
//!
//! # Input format
//!
//! The input is a sequence of *chunks*, each what one client `sendmsg`
//! would put on the socket:
//!
//! ```text
//! chunk  := header length data
//! header := u8   bits 0-2: fds attached (0..=7)
//!                bit 3:    14 more fds (so 14..=21: past the 16 a recvmsg takes)
//!                bit 4:    length is a big-endian u16 (else a u8)
//!                bit 5:    the client disconnects before this chunk (EOF: a
//!                          new connection, a new decoder, begins)
//!                bits 6-7: ignored
//! data   := `length` bytes (fewer if the input ends first)
//! ```
//!
//! The helper side reads each chunk as `connection::Session::pull` does:
//! while the decoder wants CDB bytes, one read of at most `Need::Cdb(n)`
//! bytes with a control buffer; while it wants parameters, reads of at most
//! `min(n, 8192)` bytes without one. The chunk's fds arrive with the first
//! read of the chunk (as SCM_RIGHTS rides on the first byte of a message);
//! if that read has no control buffer, or the chunk is empty, the kernel
//! closes them, and past 16 in one message the kernel closes the excess
//! (MSG_CTRUNC). After a protocol violation the connection is closed: the
//! decoder is dropped and the rest of the chunk discarded.
//!
//! # Checks
//!
//! * no panic (including the decoder's `debug_assert!`s: build with `-a`);
//! * `need()` always asks for 1..=16 CDB bytes or 1..=8192 parameter bytes,
//!   and `is_idle()` is true exactly at request boundaries;
//! * every request and every violation is the one the model predicts, and
//!   every completed request has exactly one fd (the one fed with its CDB),
//!   a second fd ends the request on the chunk that brings it (so the
//!   decoder never holds more than one fd),
//!   opcode 0x5e/0x5f, transfer length (CDB bytes 7-8) <= 8192, and
//!   parameters of exactly the transfer length for PR OUT, none for PR IN;
//! * every fd token is dropped exactly once: never twice, never while the
//!   decoder still owns it, and all of them by the time the decoder and the
//!   requests are gone (no leak).

use std::cell::RefCell;

use pr_helper::protocol::{
    Direction, Need, Progress, Request, RequestDecoder, Violation, CDB_SIZE, MAX_TRANSFER,
    PERSISTENT_RESERVE_IN, PERSISTENT_RESERVE_OUT,
};

/// Most fds one `recvmsg` of the helper takes (`fdpass::MAX_FDS_PER_MESSAGE`).
const MAX_FDS_PER_MESSAGE: usize = pr_helper::protocol::fdpass::MAX_FDS_PER_MESSAGE;

thread_local! {
    /// Drop count of every token created for the current input.
    static DROPS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// Sum of `DROPS`.
    static DROPPED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A stand-in for a received file descriptor that records its drop.
#[derive(Debug)]
pub struct Token(usize);

impl Token {
    fn new() -> Token {
        DROPS.with(|d| {
            let mut d = d.borrow_mut();
            d.push(0);
            Token(d.len() - 1)
        })
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        DROPS.with(|d| {
            let mut d = d.borrow_mut();
            d[self.0] += 1;
            assert_eq!(d[self.0], 1, "fd token {} dropped twice", self.0);
        });
        DROPPED.with(|n| n.set(n.get() + 1));
    }
}

fn drop_count(id: usize) -> u32 {
    DROPS.with(|d| d.borrow()[id])
}

fn token_count() -> usize {
    DROPS.with(|d| d.borrow().len())
}

/// One chunk of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Fds sent with the chunk.
    pub fds: usize,
    /// The client disconnects (and reconnects) before this chunk.
    pub reconnect: bool,
    /// The bytes.
    pub data: Vec<u8>,
}

impl Chunk {
    /// A chunk of `data` with `fds` fds.
    pub fn new(data: &[u8], fds: usize) -> Chunk {
        Chunk {
            fds,
            reconnect: false,
            data: data.to_vec(),
        }
    }

    /// The same chunk, sent on a new connection.
    pub fn after_reconnect(mut self) -> Chunk {
        self.reconnect = true;
        self
    }
}

/// Parses the input format (never fails: a short tail is a short chunk).
pub fn parse(mut input: &[u8]) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    while let Some((&header, rest)) = input.split_first() {
        input = rest;
        let fds = usize::from(header & 7) + if header & 8 != 0 { 14 } else { 0 };
        let len = if header & 0x10 != 0 {
            let hi = input.first().copied().unwrap_or(0);
            let lo = input.get(1).copied().unwrap_or(0);
            input = input.get(2..).unwrap_or(&[]);
            usize::from(u16::from_be_bytes([hi, lo]))
        } else {
            let len = input.first().copied().unwrap_or(0);
            input = input.get(1..).unwrap_or(&[]);
            usize::from(len)
        };
        let take = len.min(input.len());
        chunks.push(Chunk {
            fds,
            reconnect: header & 0x20 != 0,
            data: input[..take].to_vec(),
        });
        input = &input[take..];
    }
    chunks
}

/// Encodes chunks in the input format (for the seed corpus).
pub fn encode(chunks: &[Chunk]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        assert!(c.fds <= 21, "at most 21 fds per chunk");
        let (low, extra) = if c.fds > 7 {
            assert!(c.fds >= 14, "8..=13 fds cannot be encoded");
            (c.fds - 14, 8)
        } else {
            (c.fds, 0)
        };
        let mut header = low as u8 | extra;
        if c.reconnect {
            header |= 0x20;
        }
        if c.data.len() > 255 {
            header |= 0x10;
            out.push(header);
            out.extend_from_slice(&(c.data.len() as u16).to_be_bytes());
        } else {
            out.push(header);
            out.push(c.data.len() as u8);
        }
        out.extend_from_slice(&c.data);
    }
    out
}

/// What the model says the decoder holds, and expects next.
#[derive(Debug, Default)]
struct Model {
    cdb: Vec<u8>,
    /// Tokens fed with the bytes of the current CDB.
    cdb_fds: Vec<usize>,
    /// After a good CDB of a PR OUT with a non-empty list: the request so far.
    body: Option<ModelBody>,
}

#[derive(Debug)]
struct ModelBody {
    cdb: [u8; CDB_SIZE],
    fd: usize,
    direction: Direction,
    transfer_len: usize,
    params: Vec<u8>,
}

/// What a feed should produce, by the model.
#[derive(Debug)]
enum Expect {
    Incomplete,
    Complete(ModelBody),
    Violation(Violation),
}

impl Model {
    fn held(&self) -> Vec<usize> {
        let mut held = self.cdb_fds.clone();
        if let Some(b) = &self.body {
            held.push(b.fd);
        }
        held
    }

    fn idle(&self) -> bool {
        self.cdb.is_empty() && self.cdb_fds.is_empty() && self.body.is_none()
    }

    fn need(&self) -> Need {
        match &self.body {
            None => Need::Cdb(CDB_SIZE - self.cdb.len()),
            Some(b) => Need::Params(b.transfer_len - b.params.len()),
        }
    }

    /// Spec §3.4 written out plainly: fd count, opcode, length, in that
    /// order; the fd count on every chunk (as the reference's `prh_read`
    /// does), the others once the 16 bytes are in.
    fn feed_cdb(&mut self, bytes: &[u8], fds: &[usize]) -> Expect {
        self.cdb_fds.extend_from_slice(fds);
        if self.cdb_fds.len() > 1 {
            self.cdb.clear();
            let n = std::mem::take(&mut self.cdb_fds).len();
            return Expect::Violation(Violation::MultipleFds(n));
        }
        self.cdb.extend_from_slice(bytes);
        if self.cdb.len() < CDB_SIZE {
            return Expect::Incomplete;
        }
        let cdb: [u8; CDB_SIZE] = self.cdb[..].try_into().unwrap();
        self.cdb.clear();
        let fds = std::mem::take(&mut self.cdb_fds);
        if fds.is_empty() {
            return Expect::Violation(Violation::NoFd);
        }
        let direction = match cdb[0] {
            PERSISTENT_RESERVE_IN => Direction::In,
            PERSISTENT_RESERVE_OUT => Direction::Out,
            op => return Expect::Violation(Violation::InvalidOpcode(op)),
        };
        let transfer_len = usize::from(cdb[7]) << 8 | usize::from(cdb[8]);
        if transfer_len > 8192 {
            return Expect::Violation(Violation::TransferTooLong(transfer_len));
        }
        let body = ModelBody {
            cdb,
            fd: fds[0],
            direction,
            transfer_len,
            params: Vec::new(),
        };
        if direction == Direction::Out && transfer_len > 0 {
            self.body = Some(body);
            Expect::Incomplete
        } else {
            Expect::Complete(body)
        }
    }

    fn feed_params(&mut self, bytes: &[u8]) -> Expect {
        let body = self.body.as_mut().expect("model reading parameters");
        body.params.extend_from_slice(bytes);
        assert!(body.params.len() <= body.transfer_len);
        if body.params.len() == body.transfer_len {
            Expect::Complete(self.body.take().unwrap())
        } else {
            Expect::Incomplete
        }
    }
}

/// Statistics of one run (for tests of the harness itself).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Requests completed.
    pub requests: usize,
    /// Connections closed for a violation.
    pub violations: usize,
    /// Connections that ended with a request partly received.
    pub truncated: usize,
    /// Fd tokens created.
    pub tokens: usize,
}

/// One connection: a decoder and its model.
struct Conn {
    decoder: RequestDecoder<Token>,
    model: Model,
}

impl Conn {
    fn new() -> Conn {
        Conn {
            decoder: RequestDecoder::new(),
            model: Model::default(),
        }
    }

    /// Every token the model says the decoder holds is alive; every other
    /// token created so far is dropped (exactly once: Drop checks that).
    ///
    /// Since a second drop panics in `Drop`, it is enough that the tokens
    /// that must be alive are, and that all the others were dropped.
    fn check_ownership(&self, completed_alive: Option<usize>) {
        let mut alive = self.model.held();
        // A request's fd, or none: a second one is refused on arrival, so a
        // client cannot make the helper hold fds by sending many.
        assert!(alive.len() <= 1, "the decoder holds fds {alive:?}");
        alive.extend(completed_alive);
        for &id in &alive {
            assert_eq!(drop_count(id), 0, "fd token {id} dropped while still owned");
        }
        let dropped = DROPPED.with(|n| n.get());
        if dropped + alive.len() != token_count() {
            let leaked: Vec<usize> = (0..token_count())
                .filter(|id| drop_count(*id) == 0 && !alive.contains(id))
                .collect();
            panic!("fd tokens leaked: {leaked:?} (owned: {alive:?})");
        }
    }

    fn check_state(&self) {
        let need = self.decoder.need();
        match need {
            Need::Cdb(n) => assert!((1..=CDB_SIZE).contains(&n), "need {need:?}"),
            Need::Params(n) => assert!((1..=MAX_TRANSFER).contains(&n), "need {need:?}"),
        }
        assert_eq!(need, self.model.need());
        assert_eq!(self.decoder.is_idle(), self.model.idle());
    }
}

fn check_request(request: &Request<Token>, expected: &ModelBody) {
    assert_eq!(request.cdb, expected.cdb);
    assert_eq!(request.fd.0, expected.fd, "request carries the wrong fd");
    assert_eq!(request.direction, expected.direction);
    match request.direction {
        Direction::In => assert_eq!(request.cdb[0], PERSISTENT_RESERVE_IN),
        Direction::Out => assert_eq!(request.cdb[0], PERSISTENT_RESERVE_OUT),
    }
    let bytes_7_8 = usize::from(u16::from_be_bytes([request.cdb[7], request.cdb[8]]));
    assert_eq!(request.transfer_len, bytes_7_8);
    assert!(request.transfer_len <= MAX_TRANSFER);
    match request.direction {
        Direction::In => assert!(request.params.is_empty()),
        Direction::Out => {
            assert_eq!(request.params.len(), request.transfer_len);
            assert_eq!(request.params, expected.params);
        }
    }
    assert_eq!(request.service_action(), request.cdb[1] & 0x1f);
}

/// Runs one input through the decoder and the model; panics on any
/// violated invariant.
pub fn run(input: &[u8]) -> Outcome {
    DROPS.with(|d| d.borrow_mut().clear());
    DROPPED.with(|n| n.set(0));
    let mut out = Outcome::default();
    let mut conn = Conn::new();
    for chunk in parse(input) {
        if chunk.reconnect {
            if !conn.model.idle() {
                out.truncated += 1;
            }
            drop(std::mem::replace(&mut conn, Conn::new()));
            conn.check_ownership(None);
        }
        // The kernel installs at most 16 fds per recvmsg and closes the rest.
        let mut fds: Vec<Token> = (0..chunk.fds).map(|_| Token::new()).collect();
        if fds.len() > MAX_FDS_PER_MESSAGE {
            fds.truncate(MAX_FDS_PER_MESSAGE);
        }
        // An empty sendmsg sends nothing; its fds never arrive.
        let mut fds = if chunk.data.is_empty() {
            drop(fds);
            None
        } else {
            Some(fds)
        };
        let mut rest = &chunk.data[..];
        while !rest.is_empty() {
            conn.check_state();
            let (take, result, expect) = match conn.decoder.need() {
                Need::Cdb(n) => {
                    let take = n.min(rest.len());
                    let tokens = fds.take().unwrap_or_default();
                    let ids: Vec<usize> = tokens.iter().map(|t| t.0).collect();
                    let result = conn.decoder.feed_cdb(&rest[..take], tokens);
                    let expect = conn.model.feed_cdb(&rest[..take], &ids);
                    (take, result, expect)
                }
                Need::Params(n) => {
                    // Read without a control buffer: fds riding on these
                    // bytes are closed by the kernel.
                    drop(fds.take());
                    let take = n.min(MAX_TRANSFER).min(rest.len());
                    let result = Ok(conn.decoder.feed_params(&rest[..take]));
                    let expect = conn.model.feed_params(&rest[..take]);
                    (take, result, expect)
                }
            };
            rest = &rest[take..];
            match (result, expect) {
                (Ok(Progress::Incomplete), Expect::Incomplete) => conn.check_ownership(None),
                (Ok(Progress::Complete(request)), Expect::Complete(expected)) => {
                    check_request(&request, &expected);
                    conn.check_ownership(Some(request.fd.0));
                    // Executed: the pool thread closes the fd.
                    drop(request);
                    conn.check_ownership(None);
                    out.requests += 1;
                }
                (Err(violation), Expect::Violation(expected)) => {
                    assert_eq!(violation, expected);
                    assert!(!violation.to_string().is_empty());
                    out.violations += 1;
                    // The connection is closed: the decoder goes, and so does
                    // whatever was still on the socket.
                    drop(std::mem::replace(&mut conn, Conn::new()));
                    conn.check_ownership(None);
                    break;
                }
                (result, expect) => {
                    panic!("decoder gave {result:?}, model expected {expect:?}")
                }
            }
        }
        // fds not yet delivered (a violation closed the connection first)
        // are closed with the socket.
        drop(fds);
        conn.check_ownership(None);
    }
    if !conn.model.idle() {
        out.truncated += 1;
    }
    drop(conn);
    // The client left: nothing may remain.
    for id in 0..token_count() {
        assert_eq!(drop_count(id), 1, "fd token {id} leaked");
    }
    out.tokens = token_count();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pr_helper::scsi::pr::{pr_in_cdb, pr_out_cdb};

    #[test]
    fn encode_parse_round_trip() {
        let chunks = vec![
            Chunk::new(&pr_in_cdb(0, 8), 1),
            Chunk::new(&[7; 300], 0),
            Chunk::new(&[], 21).after_reconnect(),
            Chunk::new(&[1, 2], 14),
        ];
        assert_eq!(parse(&encode(&chunks)), chunks);
    }

    #[test]
    fn requests_and_violations_counted() {
        let mut chunks = vec![Chunk::new(&pr_in_cdb(0, 8), 1)];
        chunks.push(Chunk::new(&pr_out_cdb(0, 0, 0, 24), 1));
        chunks.push(Chunk::new(&[0; 24], 1)); // fd on params: discarded
        chunks.push(Chunk::new(&pr_in_cdb(0, 8), 2)); // two fds
        chunks.push(Chunk::new(&pr_in_cdb(0, 8)[..5], 1)); // new connection
        let o = run(&encode(&chunks));
        assert_eq!(
            o,
            Outcome {
                requests: 2,
                violations: 1,
                truncated: 1,
                tokens: 6
            }
        );
    }
}
