//! Per-device isolation (D29): at most two commands (the bound given to
//! [`Devices::new`]) execute at once on a device that is not known to be
//! answering; further requests for it wait here, in memory, without
//! holding a thread, and start as soon as one of the device's commands
//! ends. A device that *is* answering (it ended a command in the last
//! [`ANSWERING_WITHIN`], and none of its commands has been executing for
//! longer) may execute more, up to the cap (half the SG_IO threads), so
//! that many guests sharing one healthy LUN are served side by side.
//!
//! Why the bound only while a device is not seen answering: a LUN that
//! takes a millisecond per command and is shared by 64 connections would
//! otherwise serve at most two commands per millisecond, a fraction of what
//! the reference does (figures in README, Benchmark). A device that hangs
//! from its first command never counts as answering, so it holds the bound;
//! one that stops answering while busy holds at most the commands started
//! in the [`ANSWERING_WITHIN`] before, and never more than the cap, so at
//! least half the threads are left for the other devices.
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
use std::time::{Duration, Instant};

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
    /// It may execute now; it holds its place until the `DevicePlace` drops.
    Run(T),
    /// The helper is shutting down and the device has not answered in time:
    /// answer without executing.
    Cancelled,
}

/// A request waiting for its device, called once with its admission.
pub type Waiting<T> = Box<dyn FnOnce(Admission<T>) + Send + 'static>;

/// What [`Devices::enter_or_wait`] did with a request; the caller acts on
/// the first two at once.
pub enum Entering<T> {
    /// A place was taken: run the request.
    Run(Waiting<T>),
    /// Shutting down: cancel the request.
    Cancel(Waiting<T>),
    /// Queued: it runs when a place frees, or is cancelled at shutdown.
    Queued,
}

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

/// How recently a device must have ended a command, and how long its
/// oldest executing command may have run at most, for it to count as
/// answering (and execute more than the bound). A healthy disk answers a
/// PR command in well under a millisecond to a few; a hung one never.
pub const ANSWERING_WITHIN: Duration = Duration::from_millis(100);

/// Commands executing and requests waiting, per device.
pub struct Devices<T> {
    map: HashMap<DevKey, Device<T>, BuildHasherDefault<KeyHasher>>,
    bound: usize,
    cap: usize,
    closing: bool,
}

struct Device<T> {
    executing: usize,
    /// When each executing (keyed) command started, oldest first.
    started: VecDeque<Instant>,
    /// When a command on the device last ended.
    answered: Option<Instant>,
    waiting: VecDeque<Waiting<T>>,
}

impl<T> Device<T> {
    /// Whether one more command may start beside `unkeyed` others.
    fn has_place(&self, unkeyed: usize, bound: usize, cap: usize, now: Instant) -> bool {
        let n = self.executing + unkeyed;
        n < bound || (n < cap && self.answering(now))
    }

    /// Ended a command lately, and none of its commands is slow.
    fn answering(&self, now: Instant) -> bool {
        self.answered
            .is_some_and(|t| now.saturating_duration_since(t) < ANSWERING_WITHIN)
            && self
                .started
                .front()
                .is_none_or(|&s| now.saturating_duration_since(s) < ANSWERING_WITHIN)
    }
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

/// Commands that may execute at once on one device that is answering:
/// half the SG_IO threads (at least the bound).
pub fn cap_for(max_threads: usize) -> usize {
    (max_threads / 2).max(bound_for(max_threads))
}

impl<T> Devices<T> {
    /// At most `bound` (at least 1) commands at once per device, and up to
    /// `cap` on one that is answering.
    pub fn new(bound: usize, cap: usize) -> Self {
        let bound = bound.max(1);
        Devices {
            map: HashMap::default(),
            bound,
            cap: cap.max(bound),
            closing: false,
        }
    }

    /// Takes a place on `key` if one is free, for a command starting `now`.
    /// Nobody waits while a place is free, so this is fair to waiting
    /// requests.
    #[cfg(test)]
    pub fn try_enter(&mut self, key: DevKey, now: Instant) -> bool {
        self.try_enter_beside(key, 0, now)
    }

    /// As [`Devices::try_enter`], counting `unkeyed` more commands (whose
    /// device is not known: they may be on this one) as executing on `key`.
    pub fn try_enter_beside(&mut self, key: DevKey, unkeyed: usize, now: Instant) -> bool {
        let (bound, cap) = (self.bound, self.cap);
        let device = self.map.entry(key).or_insert_with(|| Device {
            executing: 0,
            started: VecDeque::new(),
            answered: None,
            waiting: VecDeque::new(),
        });
        // Waiting requests go first: a place that frees passes to them.
        if device.waiting.is_empty() && device.has_place(unkeyed, bound, cap, now) {
            device.executing += 1;
            device.started.push_back(now);
            true
        } else {
            false
        }
    }

    /// Takes a place on `key`, or queues `waiting` for one ([`Entering`]).
    pub fn enter_or_wait(
        &mut self,
        key: DevKey,
        unkeyed: usize,
        waiting: Waiting<T>,
        now: Instant,
    ) -> Entering<T> {
        if self.try_enter_beside(key, unkeyed, now) {
            return Entering::Run(waiting);
        }
        if self.closing {
            return Entering::Cancel(waiting);
        }
        if let Some(device) = self.map.get_mut(&key) {
            device.waiting.push_back(waiting);
        }
        Entering::Queued
    }

    /// A command on `key` that started at `started` has ended `now`: its
    /// place goes to the first waiting request, and more places to the
    /// next ones while the device, having just answered, has room. The
    /// caller must start every request returned (each owns a place,
    /// started `now`).
    pub fn command_ended(
        &mut self,
        key: DevKey,
        started: Instant,
        now: Instant,
    ) -> Vec<Waiting<T>> {
        let (bound, cap) = (self.bound, self.cap);
        let Some(device) = self.map.get_mut(&key) else {
            return Vec::new();
        };
        if let Some(i) = device.started.iter().position(|&s| s == started) {
            device.started.remove(i);
        }
        device.executing = device.executing.saturating_sub(1);
        device.answered = Some(now);
        let mut admitted = Vec::new();
        while !device.waiting.is_empty() && device.has_place(0, bound, cap, now) {
            admitted.extend(device.waiting.pop_front());
            device.executing += 1;
            device.started.push_back(now);
        }
        if device.executing == 0 {
            self.map.remove(&key);
        }
        admitted
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
        let mut d = Devices::<()>::new(2, 2);
        let t = Instant::now();
        let (a, b) = (DevKey::Rdev(1), DevKey::Rdev(2));
        assert!(d.try_enter(a, t));
        assert!(d.try_enter(a, t));
        assert!(!d.try_enter(a, t));
        for id in 0..3 {
            assert!(matches!(
                d.enter_or_wait(a, 0, recorder(&log, id), t),
                Entering::Queued
            ));
        }
        // Another device is not affected.
        assert!(d.try_enter(b, t));
        let Entering::Run(run) = d.enter_or_wait(b, 0, recorder(&log, 9), t) else {
            panic!("device b had a place");
        };
        run(Admission::Run(()));
        // Places pass on in arrival order, one per command that ends (the
        // cap is the bound here), then are freed.
        for id in 0..3 {
            let next = d.command_ended(a, t, t);
            assert_eq!(next.len(), 1);
            next.into_iter().next().unwrap()(Admission::Run(()));
            assert_eq!(log.lock().unwrap().last(), Some(&(id, true)));
        }
        assert!(d.command_ended(a, t, t).is_empty());
        assert!(d.command_ended(a, t, t).is_empty());
        assert!(!d.map.contains_key(&a), "no entry once idle");
        assert!(d.try_enter(a, t));
    }

    #[test]
    fn an_answering_device_executes_up_to_the_cap_and_a_slow_one_the_bound() {
        let ms = Duration::from_millis;
        let mut d = Devices::<()>::new(2, 4);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (a, t0) = (DevKey::Rdev(1), Instant::now());
        // Never answered: the bound, however many arrive.
        assert!(d.try_enter(a, t0));
        assert!(d.try_enter(a, t0));
        for id in 0..4 {
            assert!(matches!(
                d.enter_or_wait(a, 0, recorder(&log, id), t0),
                Entering::Queued
            ));
        }
        // One command ends 1 ms later: the device is answering, so its
        // place and two more go to waiting requests (four at once, the cap).
        let t1 = t0 + ms(1);
        assert_eq!(d.command_ended(a, t0, t1).len(), 3);
        assert!(!d.try_enter(a, t1), "the cap");
        // Another ends: the last waiting request starts, and a newcomer
        // finds a place too while the device answers.
        let t2 = t1 + ms(1);
        assert_eq!(d.command_ended(a, t0, t2).len(), 1);
        assert!(!d.try_enter(a, t2), "the cap");
        assert_eq!(d.command_ended(a, t1, t2).len(), 0);
        assert!(d.try_enter(a, t2));
        // No command has ended for longer than ANSWERING_WITHIN, and the
        // oldest has run that long: the device is slow, back to the bound.
        let late = t2 + ANSWERING_WITHIN;
        assert_eq!(d.map[&a].executing, 4);
        assert_eq!(d.command_ended(a, t1, late).len(), 0);
        assert!(
            !d.try_enter(a, late),
            "3 executing, the oldest for 100 ms: slow"
        );
        assert!(matches!(
            d.enter_or_wait(a, 0, recorder(&log, 9), late),
            Entering::Queued
        ));
        // While a command has run that long, places free only below the
        // bound: two still execute, then one.
        assert_eq!(d.command_ended(a, t1, late).len(), 0);
        assert_eq!(d.command_ended(a, t2, late).len(), 1);
    }

    #[test]
    fn close_hands_out_every_waiting_request_and_cancels_later_ones() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut d = Devices::<()>::new(1, 1);
        let t = Instant::now();
        let a = DevKey::NotADevice;
        assert!(d.try_enter(a, t));
        assert!(matches!(
            d.enter_or_wait(a, 0, recorder(&log, 1), t),
            Entering::Queued
        ));
        assert!(matches!(
            d.enter_or_wait(a, 0, recorder(&log, 2), t),
            Entering::Queued
        ));
        let (cancelled, executing) = d.close();
        assert_eq!((cancelled.len(), executing), (2, 1));
        assert!(
            matches!(
                d.enter_or_wait(a, 0, recorder(&log, 3), t),
                Entering::Cancel(_)
            ),
            "busy device while closing: cancelled at once"
        );
        // A free device still runs.
        assert!(matches!(
            d.enter_or_wait(DevKey::Rdev(7), 0, recorder(&log, 4), t),
            Entering::Run(_)
        ));
        assert!(d.command_ended(a, t, t).is_empty());
    }

    #[test]
    fn bound_leaves_a_thread_for_other_devices() {
        assert_eq!(bound_for(1), 1);
        assert_eq!(bound_for(2), 1);
        assert_eq!(bound_for(3), 2);
        assert_eq!(bound_for(64), 2);
        assert_eq!(cap_for(1), 1);
        assert_eq!(cap_for(2), 1);
        assert_eq!(cap_for(3), 2);
        assert_eq!(cap_for(64), 32);
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
