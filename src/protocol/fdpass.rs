//! Sending and receiving bytes with file descriptors (SCM_RIGHTS) on Unix
//! stream sockets.
//!
//! Both calls are non-blocking-agnostic: they perform one `recvmsg`/`sendmsg`
//! on whatever socket they are given; the async connection code retries on
//! `WouldBlock`, the blocking client simply blocks.

// Unsafe code: recvmsg(2) and its SCM_RIGHTS control messages.
#![allow(unsafe_code)]

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// Room for this many fds per `recvmsg`, as the reference (SOCKET_MAX_FDS).
/// A client sending more in one message loses the excess (the kernel closes
/// them and sets MSG_CTRUNC) and is disconnected anyway, since any request
/// with more than one fd is a protocol violation.
pub const MAX_FDS_PER_MESSAGE: usize = 16;

/// What one `recvmsg` delivered.
#[derive(Debug)]
pub struct Received {
    /// Bytes read into the buffer; 0 means end of stream.
    pub len: usize,
    /// Descriptors that arrived with those bytes, now owned by the caller.
    pub fds: Vec<OwnedFd>,
}

/// Reads up to `buf.len()` bytes from `sock`. With `want_fds`, descriptors
/// passed with those bytes are returned (close-on-exec); without, no control
/// buffer is offered and the kernel discards (closes) any that were sent.
///
/// Every descriptor the kernel installed is returned, also when the control
/// buffer was too small (MSG_CTRUNC): the kernel then installs as many as fit
/// and closes the rest itself, and the ones installed must not leak.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8], want_fds: bool) -> io::Result<Received> {
    // u64 elements give the alignment cmsghdr needs.
    let mut control = [0u64; CONTROL_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid value
    // (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if want_fds {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
    }
    // SAFETY: `msg` points to one iovec covering `buf` (writable, of the
    // stated length) and, if set, to `control` (writable, of the stated
    // length); both outlive the call. The kernel writes only within them.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    if want_fds {
        // SAFETY: the kernel filled `control` with well-formed cmsghdrs and
        // set msg_controllen to the bytes used (also on MSG_CTRUNC, where the
        // last SCM_RIGHTS header covers only the fds actually installed), so
        // CMSG_FIRSTHDR/CMSG_NXTHDR stay within `control`, and each
        // SCM_RIGHTS payload holds (cmsg_len - header) / 4 ints, which are
        // descriptors newly installed in our table that nothing else owns.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                let header = &*cmsg;
                if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg);
                    let payload = header.cmsg_len as usize - (data as usize - cmsg as usize);
                    for i in 0..payload / std::mem::size_of::<libc::c_int>() {
                        let fd = std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i));
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
    }
    Ok(Received {
        len: n as usize,
        fds,
    })
}

/// Size of the control buffer in u64 words: CMSG_SPACE for
/// [`MAX_FDS_PER_MESSAGE`] ints (16-byte header + 64 bytes of fds).
const CONTROL_WORDS: usize = (std::mem::size_of::<libc::cmsghdr>()
    + MAX_FDS_PER_MESSAGE * std::mem::size_of::<libc::c_int>())
.div_ceil(8);

/// Writes `bufs` to `sock` in one `sendmsg`, attaching `fds` (if any) as one
/// SCM_RIGHTS message. Returns the bytes written (possibly fewer than asked:
/// the caller writes the rest without fds).
pub fn send(
    sock: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let cmsgs = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsgs };
    Ok(sendmsg::<()>(
        sock.as_raw_fd(),
        bufs,
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn fds_travel_with_bytes_or_are_discarded() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let n = send(
            a.as_fd(),
            &[IoSlice::new(b"abcd")],
            &[file.as_fd(), file.as_fd()],
        )
        .unwrap();
        assert_eq!(n, 4);
        let mut buf = [0u8; 2];
        let r = recv(b.as_fd(), &mut buf, true).unwrap();
        assert_eq!((r.len, r.fds.len()), (2, 2));
        // The remaining bytes carry no further fds.
        let r = recv(b.as_fd(), &mut buf, true).unwrap();
        assert_eq!((r.len, r.fds.len()), (2, 0));

        // Without a control buffer the fd is dropped by the kernel.
        send(a.as_fd(), &[IoSlice::new(b"xy")], &[file.as_fd()]).unwrap();
        let r = recv(b.as_fd(), &mut buf, false).unwrap();
        assert_eq!((r.len, r.fds.len()), (2, 0));

        // More fds than the control buffer holds: the installed ones are
        // returned (and closed by the caller), the rest closed by the kernel.
        let many: Vec<BorrowedFd<'_>> = (0..20).map(|_| file.as_fd()).collect();
        send(a.as_fd(), &[IoSlice::new(b"z")], &many).unwrap();
        let mut one = [0u8; 1];
        let r = recv(b.as_fd(), &mut one, true).unwrap();
        assert_eq!((r.len, r.fds.len()), (1, MAX_FDS_PER_MESSAGE));

        drop(a);
        let r = recv(b.as_fd(), &mut buf, true).unwrap();
        assert_eq!(r.len, 0);
    }
}
