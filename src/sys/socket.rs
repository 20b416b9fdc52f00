//! Socket calls nix does not wrap.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Bytes received on `sock` and not read yet (FIONREAD; nix has no
/// wrapper for it).
pub fn queued_bytes(sock: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD stores one int through the pointer, which is valid.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}
