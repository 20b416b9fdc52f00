//! A blocking client for the helper protocol, behaving exactly like QEMU's
//! `pr-manager-helper` (spec §10): connect, read the helper's feature word,
//! send a zero word, then per command the 16-byte CDB with the device fd
//! attached to its first `sendmsg`, the PR OUT parameter list, and read the
//! 104-byte header plus payload.
//!
//! Used by the `persist`/`ping` subcommands, the benchmark and the tests.

/// The client subcommands: `ping`, `persist`, `probe`.
pub mod tools;

pub mod paths;

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::protocol::fdpass;
use crate::protocol::{self, ResponseHeader, CDB_SIZE, FEATURES_SIZE, RESPONSE_HEADER_SIZE};

/// A response as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The decoded header (status, length, sense).
    pub header: ResponseHeader,
    /// The payload (`header.data_len` bytes).
    pub data: Vec<u8>,
}

impl Reply {
    /// The wire bytes of this reply (for byte-exact comparisons).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RESPONSE_HEADER_SIZE + self.data.len());
        out.extend_from_slice(&self.header.status.to_be_bytes());
        out.extend_from_slice(&self.header.data_len.to_be_bytes());
        out.extend_from_slice(&self.header.sense);
        out.extend_from_slice(&self.data);
        out
    }
}

/// A connected, handshaken client.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    /// The feature word the helper advertised.
    pub helper_features: u32,
}

impl Client {
    /// Connects to the helper at `path` and performs the handshake.
    pub fn connect(path: &Path) -> io::Result<Client> {
        let stream = UnixStream::connect(path)?;
        Self::handshake(stream)
    }

    /// Performs the handshake on an already connected stream.
    pub fn handshake(mut stream: UnixStream) -> io::Result<Client> {
        let mut word = [0u8; FEATURES_SIZE];
        stream.read_exact(&mut word)?;
        stream.write_all(&[0; FEATURES_SIZE])?;
        Ok(Client {
            stream,
            helper_features: u32::from_be_bytes(word),
        })
    }

    /// Sets a timeout for every later read and write (none by default, like QEMU).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)?;
        self.stream.set_write_timeout(timeout)
    }

    /// The underlying socket, for tests that need to misbehave.
    pub fn stream(&mut self) -> &mut UnixStream {
        &mut self.stream
    }

    /// Sends one command and waits for its reply.
    pub fn execute(
        &mut self,
        cdb: &[u8; CDB_SIZE],
        device: BorrowedFd<'_>,
        params: &[u8],
    ) -> io::Result<Reply> {
        self.send(cdb, device, params)?;
        self.receive()
    }

    /// Sends the CDB (with the fd on its first write) and the parameters.
    pub fn send(
        &mut self,
        cdb: &[u8; CDB_SIZE],
        device: BorrowedFd<'_>,
        params: &[u8],
    ) -> io::Result<()> {
        let mut sent = 0;
        while sent < CDB_SIZE {
            let fds: &[BorrowedFd<'_>] = if sent == 0 {
                std::slice::from_ref(&device)
            } else {
                &[]
            };
            let n = fdpass::send(self.stream.as_fd(), &[IoSlice::new(&cdb[sent..])], fds)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            sent += n;
        }
        self.stream.write_all(params)
    }

    /// Reads one reply.
    pub fn receive(&mut self) -> io::Result<Reply> {
        let mut hdr = [0u8; RESPONSE_HEADER_SIZE];
        self.stream.read_exact(&mut hdr)?;
        let header = protocol::decode_response_header(&hdr);
        if header.data_len as usize > protocol::MAX_TRANSFER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("helper announced a {}-byte payload", header.data_len),
            ));
        }
        let mut data = vec![0u8; header.data_len as usize];
        self.stream.read_exact(&mut data)?;
        Ok(Reply { header, data })
    }
}

/// True if the peer has closed `stream` (reads EOF within `timeout`),
/// without consuming data if it has not.
pub fn closed_within(stream: &UnixStream, timeout: Duration) -> io::Result<bool> {
    stream.set_read_timeout(Some(timeout))?;
    let mut byte = [0u8; 1];
    let r = match nix::sys::socket::recv(
        std::os::fd::AsRawFd::as_raw_fd(stream),
        &mut byte,
        nix::sys::socket::MsgFlags::MSG_PEEK,
    ) {
        Ok(0) => Ok(true),
        Ok(_) => Ok(false),
        Err(nix::errno::Errno::EAGAIN) => Ok(false),
        Err(nix::errno::Errno::ECONNRESET) => Ok(true),
        Err(e) => Err(e.into()),
    };
    stream.set_read_timeout(None)?;
    r
}
