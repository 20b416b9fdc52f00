//! File system calls nix does not wrap for every target.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

/// renameat2(2) with `flags` (RENAME_NOREPLACE, RENAME_EXCHANGE or 0).
///
/// nix offers it only for glibc targets and musl's wrapper is recent, so
/// the system call is made directly: the static musl binaries need it too.
pub fn renameat2(
    old_dir: BorrowedFd<'_>,
    old: &std::ffi::OsStr,
    new_dir: BorrowedFd<'_>,
    new: &std::ffi::OsStr,
    flags: libc::c_uint,
) -> nix::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let old = std::ffi::CString::new(old.as_bytes()).map_err(|_| Errno::EINVAL)?;
    let new = std::ffi::CString::new(new.as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: both directory fds are borrowed for the call and both names
    // are NUL-terminated strings that outlive it; renameat2 reads nothing
    // else and writes no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            old_dir.as_raw_fd(),
            old.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
            flags,
        )
    };
    Errno::result(rc).map(drop)
}
