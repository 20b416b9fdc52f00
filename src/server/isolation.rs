//! Per-device isolation (D29): at most two commands (the bound given to
//! [`Devices::new`]) execute at once on one device; further requests for it wait here, in memory,
//! without holding a thread, and start as soon as one of the device's
//! commands ends.
//!
//! Why: a command on a device that never answers cannot be interrupted (on
//! a dm-multipath map with `queue_if_no_path` and no usable path the kernel
//! retries the ioctl every 10 ms until a path returns, whatever the SG_IO
//! timeout), so it holds its thread until the device answers. Without a
//! bound per device, enough requests to one such device would hold every
//! SG_IO thread and stall every other device on the host.
//!
//! A device is the fd's `st_rdev` for block and character devices (not the
//! logical unit: the sd and sg nodes of one SCSI device, a multipath map and
//! its paths are separate devices, so a hung LUN reached through k nodes can
//! hold 2k threads; the LU's identification would cost a sysfs file read,
//! hence an fd, per request; README, D29). Every other fd (a regular file,
//! a pipe, a socket) counts as *one* device together: SG_IO on such an fd
//! has no disk behind it, but a FUSE file's ioctl reaches its file system
//! server, which can hold it for ever. Were each file its own device, a
//! client with a FUSE mount could hold every SG_IO thread with as many
//! files; together they hold at most the bound. (The ioctl is still sent,
//! as the reference does: its answer, ENOTTY for any real file, is what
//! the reply is made of, and the host tests use FUSE files as stand-ins
//! for disks that fail or hang.)
//!
//! The waiting queue needs no bound of its own: a connection has at most one
//! request outstanding (the protocol is strictly one at a time), so at most
//! `--max-connections` requests wait, each with its parameter list (at most
//! 8 KiB) and its fd.
//!
//! The bookkeeping is one map under one lock, held for a few hash-map
//! operations per request; a device has an entry only while it has commands
//! executing. The device's key comes from the fstat the request's fd had
//! anyway ([`crate::server::device::Inspected`]); still, the pool skips the map for
//! a command that starts while no other executes (the usual case: one kept
//! thread takes request after request): such an *unkeyed* command counts as
//! executing on every device until it ends, which keeps the bound exact.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use crate::server::device::Inspected;

/// Identifies the device a command goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DevKey {
    /// A block or character device: its device number.
    Rdev(u64),
    /// Any other fd, and one fstat failed on (not expected for an fd the
    /// helper holds): all share this key, so that together they hold at
    /// most the bound (a FUSE file's ioctl can block for ever).
    NotADevice,
}

impl DevKey {
    /// The device `fd` refers to (one fstat).
    #[cfg(test)]
    pub fn of(fd: std::os::fd::BorrowedFd<'_>) -> DevKey {
        DevKey::inspected(&Inspected::of(fd))
    }

    /// The device of an fd already inspected (no system call).
    pub fn inspected(fd: &Inspected) -> DevKey {
        match fd.stat() {
            Ok(st) => {
                if st.kind == libc::S_IFBLK || st.kind == libc::S_IFCHR {
                    DevKey::Rdev(st.rdev)
                } else {
                    DevKey::NotADevice
                }
            }
            Err(_) => DevKey::NotADevice,
        }
    }
}

/// What a waiting request is told when its turn comes.
pub enum Admission<T> {
    /// It may execute now; the ticket holds its place until dropped.
    Run(T),
    /// The helper is shutting down and the device has not answered in time:
    /// answer without executing.
    Cancelled,
}

/// A request waiting for its device, called once with its admission.
pub type Waiting<T> = Box<dyn FnOnce(Admission<T>) + Send + 'static>;

/// A cheap hasher for device keys (a few integers chosen by the kernel, not
/// by clients): this map is touched twice per request.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_isize(&mut self, n: isize) {
        self.write_u64(n as u64);
    }
}

/// Commands executing and requests waiting, per device.
pub struct Devices<T> {
    map: HashMap<DevKey, Device<T>, BuildHasherDefault<KeyHasher>>,
    bound: usize,
    closing: bool,
}

struct Device<T> {
    executing: usize,
    waiting: VecDeque<Waiting<T>>,
}

/// Commands that may execute at once on one device: two, so that one slow
/// command does not make every other client of a working device wait for
/// it, but one when there are at most two SG_IO threads, so that a hung
/// device always leaves a thread for the others.
pub fn bound_for(max_threads: usize) -> usize {
    if max_threads <= 2 {
        1
    } else {
        2
    }
}

impl<T> Devices<T> {
    /// At most `bound` (at least 1) commands at once per device.
    pub fn new(bound: usize) -> Self {
        Devices {
            map: HashMap::default(),
            bound: bound.max(1),
            closing: false,
        }
    }

    /// Takes a place on `key` if one is free. Nobody waits while a place is
    /// free, so this is fair to waiting requests.
    #[cfg(test)]
    pub fn try_enter(&mut self, key: DevKey) -> bool {
        self.try_enter_beside(key, 0)
    }

    /// As [`Devices::try_enter`], counting `unkeyed` more commands (whose
    /// device is not known: they may be on this one) as executing on `key`.
    pub fn try_enter_beside(&mut self, key: DevKey, unkeyed: usize) -> bool {
        let device = self.map.entry(key).or_insert_with(|| Device {
            executing: 0,
            waiting: VecDeque::new(),
        });
        if device.executing + unkeyed < self.bound {
            device.executing += 1;
            true
        } else {
            false
        }
    }

    /// Takes a place on `key`, or queues `waiting` for one. Returns
    /// `waiting` with what to do now: run it (a place was taken) or cancel
    /// it (shutting down); None when it was queued.
    pub fn enter_or_wait(
        &mut self,
        key: DevKey,
        unkeyed: usize,
        waiting: Waiting<T>,
    ) -> Option<(Waiting<T>, bool)> {
        if self.try_enter_beside(key, unkeyed) {
            return Some((waiting, true));
        }
        if self.closing {
            return Some((waiting, false));
        }
        if let Some(device) = self.map.get_mut(&key) {
            device.waiting.push_back(waiting);
        }
        None
    }

    /// A command on `key` has ended: its place goes to the first waiting
    /// request, which the caller must start (it owns the place), or is
    /// freed.
    pub fn leave(&mut self, key: DevKey) -> Option<Waiting<T>> {
        let device = self.map.get_mut(&key)?;
        if let Some(next) = device.waiting.pop_front() {
            return Some(next);
        }
        device.executing = device.executing.saturating_sub(1);
        if device.executing == 0 {
            self.map.remove(&key);
        }
        None
    }

    /// Shutdown has waited long enough: every waiting request is taken out
    /// (to be cancelled by the caller), and requests that find their device
    /// busy from now on are cancelled at once. Also returns how many
    /// commands are still executing.
    pub fn close(&mut self) -> (Vec<Waiting<T>>, usize) {
        self.closing = true;
        let mut cancelled = Vec::new();
        let mut executing = 0;
        for device in self.map.values_mut() {
            cancelled.extend(device.waiting.drain(..));
            executing += device.executing;
        }
        (cancelled, executing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn recorder(log: &Arc<Mutex<Vec<(u32, bool)>>>, id: u32) -> Waiting<()> {
        let log = log.clone();
        Box::new(move |a| {
            log.lock()
                .unwrap()
                .push((id, matches!(a, Admission::Run(()))))
        })
    }

    #[test]
    fn at_most_bound_per_device_then_fifo_and_other_devices_unaffected() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut d = Devices::<()>::new(2);
        let (a, b) = (DevKey::Rdev(1), DevKey::Rdev(2));
        assert!(d.try_enter(a));
        assert!(d.try_enter(a));
        assert!(!d.try_enter(a));
        for id in 0..3 {
            assert!(d.enter_or_wait(a, 0, recorder(&log, id)).is_none());
        }
        // Another device is not affected.
        assert!(d.try_enter(b));
        let (run, now) = d.enter_or_wait(b, 0, recorder(&log, 9)).unwrap();
        assert!(now);
        run(Admission::Run(()));
        // Places pass on in arrival order, then are freed.
        for id in 0..3 {
            d.leave(a).unwrap()(Admission::Run(()));
            assert_eq!(log.lock().unwrap().last(), Some(&(id, true)));
        }
        assert!(d.leave(a).is_none());
        assert!(d.leave(a).is_none());
        assert!(!d.map.contains_key(&a), "no entry once idle");
        assert!(d.try_enter(a));
    }

    #[test]
    fn close_hands_out_every_waiting_request_and_cancels_later_ones() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut d = Devices::<()>::new(1);
        let a = DevKey::NotADevice;
        assert!(d.try_enter(a));
        assert!(d.enter_or_wait(a, 0, recorder(&log, 1)).is_none());
        assert!(d.enter_or_wait(a, 0, recorder(&log, 2)).is_none());
        let (cancelled, executing) = d.close();
        assert_eq!((cancelled.len(), executing), (2, 1));
        let (w, now) = d.enter_or_wait(a, 0, recorder(&log, 3)).unwrap();
        assert!(!now, "busy device while closing: cancelled at once");
        drop(w);
        // A free device still runs.
        let (_, now) = d
            .enter_or_wait(DevKey::Rdev(7), 0, recorder(&log, 4))
            .unwrap();
        assert!(now);
        assert!(d.leave(a).is_none());
    }

    #[test]
    fn bound_leaves_a_thread_for_other_devices() {
        assert_eq!(bound_for(1), 1);
        assert_eq!(bound_for(2), 1);
        assert_eq!(bound_for(3), 2);
        assert_eq!(bound_for(64), 2);
    }

    #[test]
    fn keys_devices_by_rdev_and_every_other_fd_alike() {
        use std::os::fd::AsFd;
        let null = std::fs::File::open("/dev/null").unwrap();
        let null2 = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(DevKey::of(null.as_fd()), DevKey::of(null2.as_fd()));
        assert!(matches!(DevKey::of(null.as_fd()), DevKey::Rdev(_)));
        let f1 = tempfile::tempfile().unwrap();
        let f2 = tempfile::tempfile().unwrap();
        assert_eq!(DevKey::of(f1.as_fd()), DevKey::NotADevice);
        assert_eq!(DevKey::of(f2.as_fd()), DevKey::NotADevice);
        let (pipe, _w) = nix::unistd::pipe().unwrap();
        assert_eq!(DevKey::of(pipe.as_fd()), DevKey::NotADevice);
    }
}
