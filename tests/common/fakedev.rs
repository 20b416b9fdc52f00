//! A fake "device" whose SG_IO ioctl answers what the test chooses, when the
//! test chooses: a tiny FUSE filesystem in the test process.
//!
//! The kernel forwards ioctl() on a FUSE file to the filesystem server
//! (FUSE_IOCTL), so a file here behaves like a device whose SG_IO returns a
//! chosen errno (or success) after a chosen delay, or blocks until the test
//! releases it. The helper cannot tell it from any other fd, which makes it
//! the host-side stand-in for a slow or failing disk: errno mapping end to
//! end, requests in flight during shutdown, and isolation between clients.
//!
//! File names say what a file does: dash-separated parts `e<errno>` (ioctl
//! result, `e0` = success), `d<ms>` (delay before answering), `hold` (block
//! until [`FakeDev::release`]). Example: `e19-d500`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Longest a `hold` ioctl waits for [`FakeDev::release`].
const HOLD_LIMIT: Duration = Duration::from_secs(60);

const FUSE_LOOKUP: u32 = 1;
const FUSE_FORGET: u32 = 2;
const FUSE_GETATTR: u32 = 3;
const FUSE_OPEN: u32 = 14;
const FUSE_RELEASE: u32 = 18;
const FUSE_FLUSH: u32 = 25;
const FUSE_INIT: u32 = 26;
const FUSE_OPENDIR: u32 = 27;
const FUSE_RELEASEDIR: u32 = 29;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_DESTROY: u32 = 38;
const FUSE_IOCTL: u32 = 39;
const FUSE_BATCH_FORGET: u32 = 42;

/// What the SG_IO ioctl on one file does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behaviour {
    /// errno to fail with; 0 = the ioctl succeeds (leaving sg_io_hdr as the
    /// caller filled it: status GOOD, resid 0).
    pub errno: i32,
    /// Delay before answering.
    pub delay: Duration,
    /// Block until released.
    pub hold: bool,
}

impl Behaviour {
    fn parse(name: &str) -> Option<Behaviour> {
        let mut b = Behaviour {
            errno: 0,
            delay: Duration::ZERO,
            hold: false,
        };
        for part in name.split('-') {
            if let Some(n) = part.strip_prefix('e') {
                b.errno = n.parse().ok()?;
            } else if let Some(ms) = part.strip_prefix('d') {
                b.delay = Duration::from_millis(ms.parse().ok()?);
            } else if part == "hold" {
                b.hold = true;
            } else {
                return None;
            }
        }
        Some(b)
    }
}

#[derive(Default)]
struct Shared {
    released: Mutex<bool>,
    /// Held ioctls (by FUSE unique) whose thread is being killed: they end
    /// with EINTR, as the kernel's retry loop on a multipath map ends when
    /// its caller gets a fatal signal.
    killed: Mutex<std::collections::HashSet<u64>>,
    /// Held ioctls: FUSE unique -> the calling thread's id.
    callers: Mutex<HashMap<u64, u32>>,
    cond: Condvar,
    held: AtomicUsize,
    ioctls: AtomicUsize,
    /// Delayed ioctls being answered now, and the most there ever were.
    delayed: AtomicUsize,
    peak_delayed: AtomicUsize,
}

/// A mounted fake-device filesystem; unmounted on drop.
pub struct FakeDev {
    dir: tempfile::TempDir,
    mountpoint: PathBuf,
    shared: Arc<Shared>,
}

impl FakeDev {
    /// Mounts the filesystem (needs root and /dev/fuse).
    pub fn mount() -> FakeDev {
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .unwrap_or_else(|e| {
                panic!("/dev/fuse: {e}: the fake-device tests need FUSE and root (CI runs them as root)")
            });
        let dir = tempfile::Builder::new()
            .prefix("prh-fakedev")
            .tempdir()
            .unwrap();
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).unwrap();
        let opts = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
            dev.as_raw_fd()
        );
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let target = c(mountpoint.to_str().unwrap());
        // SAFETY: plain mount(2) with valid NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                c("prh-fakedev").as_ptr(),
                target.as_ptr(),
                c("fuse.prh-fakedev").as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c(&opts).as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount fuse: {}", std::io::Error::last_os_error());
        let shared = Arc::new(Shared::default());
        let server_shared = shared.clone();
        std::thread::spawn(move || serve(dev, server_shared));
        FakeDev {
            dir,
            mountpoint,
            shared,
        }
    }

    /// Path of the file with this behaviour name.
    pub fn path(&self, name: &str) -> PathBuf {
        assert!(
            Behaviour::parse(name).is_some(),
            "bad fake device name {name}"
        );
        self.mountpoint.join(name)
    }

    /// Opens a fake device read-write.
    pub fn open(&self, name: &str) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(name))
            .unwrap_or_else(|e| panic!("open fake device {name}: {e}"))
    }

    /// The name of the `i`th of several distinct devices that hold their
    /// ioctls (each a file of its own: a device of its own to the helper).
    pub fn hold_name(i: usize) -> String {
        format!("e0-hold{}", "-d0".repeat(i))
    }

    /// Opens a fake device read-only.
    pub fn open_ro(&self, name: &str) -> File {
        File::open(self.path(name)).unwrap_or_else(|e| panic!("open fake device {name}: {e}"))
    }

    /// Number of ioctls currently blocked in `hold` files.
    pub fn held(&self) -> usize {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// Total ioctls received.
    pub fn ioctls(&self) -> usize {
        self.shared.ioctls.load(Ordering::SeqCst)
    }

    /// The most ioctls that were ever in their delay (`d<ms>`) at once.
    pub fn peak_in_flight(&self) -> usize {
        self.shared.peak_delayed.load(Ordering::SeqCst)
    }

    /// Waits until `n` ioctls are held (panics after 10 s).
    pub fn wait_held(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.held() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {n} ioctls arrived",
                self.held()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Lets every held ioctl answer, and every later one pass without
    /// holding.
    pub fn release(&self) {
        *self.shared.released.lock().unwrap() = true;
        self.shared.cond.notify_all();
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }
}

impl Drop for FakeDev {
    fn drop(&mut self) {
        self.release();
        let target = std::ffi::CString::new(self.mountpoint.to_str().unwrap()).unwrap();
        // SAFETY: umount2 with a valid path; MNT_DETACH never blocks.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let _ = &self.dir;
    }
}

/// True if thread `tid` has SIGKILL pending (it is being killed).
fn being_killed(tid: u32) -> bool {
    ["SigPnd", "ShdPnd"]
        .into_iter()
        .filter_map(|field| super::procfs::status_field(tid, field))
        .filter_map(|mask| u64::from_str_radix(&mask, 16).ok())
        .any(|mask| mask & (1 << (libc::SIGKILL - 1)) != 0)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn reply(dev: &File, unique: u64, error: i32, payload: &[u8]) {
    let mut out = Vec::with_capacity(16 + payload.len());
    out.extend_from_slice(&((16 + payload.len()) as u32).to_le_bytes());
    out.extend_from_slice(&(-error).to_le_bytes());
    out.extend_from_slice(&unique.to_le_bytes());
    out.extend_from_slice(payload);
    // ENOENT here means the request was interrupted meanwhile; fine.
    let _ = (&*dev).write_all(&out);
}

fn attr(ino: u64, dir: bool) -> Vec<u8> {
    let mut a = vec![0u8; 88];
    a[0..8].copy_from_slice(&ino.to_le_bytes());
    let mode: u32 = if dir { 0o040755 } else { 0o100666 };
    a[60..64].copy_from_slice(&mode.to_le_bytes());
    a[64..68].copy_from_slice(&(if dir { 2u32 } else { 1 }).to_le_bytes());
    a[80..84].copy_from_slice(&4096u32.to_le_bytes());
    a
}

fn serve(dev: File, shared: Arc<Shared>) {
    let dev = Arc::new(dev);
    let mut nodes: HashMap<u64, Behaviour> = HashMap::new();
    let mut names: HashMap<String, u64> = HashMap::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match (&*dev).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(_) => return, // ENODEV: unmounted
        };
        let req = &buf[..n];
        let opcode = u32_at(req, 4);
        let unique = u64_at(req, 8);
        let nodeid = u64_at(req, 16);
        let body = &req[40..];
        match opcode {
            FUSE_INIT => {
                let mut out = vec![0u8; 64];
                out[0..4].copy_from_slice(&7u32.to_le_bytes());
                out[4..8].copy_from_slice(&31u32.to_le_bytes());
                out[20..24].copy_from_slice(&(128u32 * 1024).to_le_bytes()); // max_write
                reply(&dev, unique, 0, &out);
            }
            FUSE_LOOKUP => {
                let name = String::from_utf8_lossy(body.split(|&b| b == 0).next().unwrap_or(&[]))
                    .to_string();
                match (nodeid, Behaviour::parse(&name)) {
                    (1, Some(b)) => {
                        let next = names.len() as u64 + 2;
                        let ino = *names.entry(name).or_insert(next);
                        nodes.insert(ino, b);
                        let mut out = vec![0u8; 40];
                        out[0..8].copy_from_slice(&ino.to_le_bytes());
                        out[16..24].copy_from_slice(&3600u64.to_le_bytes());
                        out[24..32].copy_from_slice(&3600u64.to_le_bytes());
                        out.extend_from_slice(&attr(ino, false));
                        reply(&dev, unique, 0, &out);
                    }
                    _ => reply(&dev, unique, libc::ENOENT, &[]),
                }
            }
            FUSE_GETATTR => {
                let mut out = vec![0u8; 16];
                out[0..8].copy_from_slice(&3600u64.to_le_bytes());
                out.extend_from_slice(&attr(nodeid, nodeid == 1));
                reply(&dev, unique, 0, &out);
            }
            FUSE_OPEN | FUSE_OPENDIR => reply(&dev, unique, 0, &[0u8; 16]),
            FUSE_RELEASE | FUSE_RELEASEDIR | FUSE_FLUSH => reply(&dev, unique, 0, &[]),
            FUSE_FORGET | FUSE_BATCH_FORGET => {}
            FUSE_INTERRUPT => {
                // The kernel asks to interrupt a request whose caller got a
                // signal. Only a fatal one (SIGKILL, as at process exit)
                // ends a hold; any other leaves it waiting, as a disk's
                // uninterruptible wait would.
                let target = u64_at(body, 0);
                let tid = shared.callers.lock().unwrap().get(&target).copied();
                if tid.is_some_and(being_killed) {
                    shared.killed.lock().unwrap().insert(target);
                    let _guard = shared.released.lock().unwrap();
                    shared.cond.notify_all();
                }
            }
            FUSE_DESTROY => {
                reply(&dev, unique, 0, &[]);
                return;
            }
            FUSE_IOCTL => {
                shared.ioctls.fetch_add(1, Ordering::SeqCst);
                let b = nodes.get(&nodeid).copied().unwrap_or(Behaviour {
                    errno: libc::ENOTTY,
                    delay: Duration::ZERO,
                    hold: false,
                });
                let dev = dev.clone();
                let shared = shared.clone();
                if b.hold {
                    shared
                        .callers
                        .lock()
                        .unwrap()
                        .insert(unique, u32_at(req, 32));
                }
                let answer = move || {
                    if b.hold {
                        let released = shared.released.lock().unwrap();
                        shared.held.fetch_add(1, Ordering::SeqCst);
                        // Bounded, so that a failing test can never leave a
                        // helper thread stuck in the kernel for good.
                        let _ = shared
                            .cond
                            .wait_timeout_while(released, HOLD_LIMIT, |released| {
                                !*released && !shared.killed.lock().unwrap().contains(&unique)
                            })
                            .unwrap();
                        shared.held.fetch_sub(1, Ordering::SeqCst);
                        shared.callers.lock().unwrap().remove(&unique);
                        if shared.killed.lock().unwrap().remove(&unique) {
                            reply(&dev, unique, libc::EINTR, &[]);
                            return;
                        }
                    }
                    let now = shared.delayed.fetch_add(1, Ordering::SeqCst) + 1;
                    shared.peak_delayed.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(b.delay);
                    shared.delayed.fetch_sub(1, Ordering::SeqCst);
                    // fuse_ioctl_out: result, flags, in_iovs, out_iovs.
                    let mut out = vec![0u8; 16];
                    out[0..4].copy_from_slice(&(-b.errno).to_le_bytes());
                    reply(&dev, unique, 0, &out);
                };
                if b.hold || !b.delay.is_zero() {
                    std::thread::spawn(answer);
                } else {
                    answer();
                }
            }
            _ => reply(&dev, unique, libc::ENOSYS, &[]),
        }
    }
}
