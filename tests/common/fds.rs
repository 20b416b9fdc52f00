//! File descriptors of every kind a client might pass, and /proc fd counting.

use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Number of open fds of `pid`.
pub fn count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
}

/// `fd -> target` lines for diagnostics.
pub fn listing(pid: u32) -> String {
    let mut lines: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| {
                    let target = std::fs::read_link(e.path())
                        .map(|t| t.display().to_string())
                        .unwrap_or_default();
                    format!("{} -> {}", e.file_name().to_string_lossy(), target)
                })
                .collect()
        })
        .unwrap_or_default();
    lines.sort();
    lines.join("\n")
}

/// A regular file opened read-write (created in `dir`).
pub fn rw_file(dir: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("regular-file"))
        .expect("regular file")
}

/// The same regular file opened read-only.
pub fn ro_file(dir: &Path) -> File {
    drop(rw_file(dir));
    File::open(dir.join("regular-file")).expect("regular file")
}

/// /dev/null, read-write or read-only.
pub fn dev_null(writable: bool) -> File {
    OpenOptions::new()
        .read(true)
        .write(writable)
        .open("/dev/null")
        .expect("/dev/null")
}

/// Both ends of a pipe (read end is O_RDONLY, write end O_WRONLY).
pub fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe().expect("pipe")
}

/// One end of a connected Unix socket pair (and the other, to keep it alive).
pub fn socket() -> (UnixStream, UnixStream) {
    UnixStream::pair().expect("socketpair")
}

/// A directory opened read-only.
pub fn directory(dir: &Path) -> File {
    File::open(dir).expect("directory")
}

/// An O_PATH descriptor of a regular file.
pub fn o_path(dir: &Path) -> File {
    drop(rw_file(dir));
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(dir.join("regular-file"))
        .expect("O_PATH file")
}

/// An eventfd (read-write, no SG_IO).
pub fn eventfd() -> OwnedFd {
    // SAFETY: eventfd takes no pointers; the result is checked below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a new descriptor nothing else owns.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
}
