//! The pool's tests, through its handle: jobs, growth, places, parking.

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Condvar};

use super::watchdog::STALL;
use super::*;

fn spawn<R: Send + 'static>(
    pool: &Pool,
    f: impl FnOnce() -> R + Send + 'static,
) -> mpsc::Receiver<R> {
    let (tx, rx) = mpsc::channel();
    pool.spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

/// A test gate: closed (false) holds whoever waits on it.
type Gate = Arc<(Mutex<bool>, Condvar)>;

/// A gate, closed unless `open`.
fn gate(open: bool) -> Gate {
    Arc::new((Mutex::new(open), Condvar::new()))
}

/// Waits until `gate` is open.
fn pass(gate: &Gate) {
    let (lock, cond) = &**gate;
    let mut open = lock.lock().unwrap();
    while !*open {
        open = cond.wait(open).unwrap();
    }
}

/// Opens `gate` for every waiter.
fn open(gate: &Gate) {
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
}

#[test]
fn runs_jobs_and_survives_panics() {
    let pool = Pool::new("t", 4).unwrap();
    assert_eq!(spawn(&pool, || 40 + 2).recv().unwrap(), 42);
    // A panicking job drops its channel; the pool keeps working.
    let rx = spawn(&pool, || -> u32 { panic!("boom") });
    assert!(rx.recv().is_err());
    assert_eq!(spawn(&pool, || 7).recv().unwrap(), 7);
}

#[test]
fn jobs_queued_while_a_sleeper_wakes_still_get_threads() {
    // One kept thread, idle; then three jobs that block, submitted back
    // to back: the first wakes the sleeper, the others must not wait
    // for it (they used to, until its job finished).
    let pool = Pool::new("t", 4).unwrap();
    spawn(&pool, || ()).recv().unwrap();
    let gate = gate(false);
    let started = Arc::new(AtomicUsize::new(0));
    let blocked: Vec<_> = (0..3)
        .map(|_| {
            let (gate, started) = (gate.clone(), started.clone());
            spawn(&pool, move || {
                started.fetch_add(1, Ordering::SeqCst);
                pass(&gate);
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while started.load(Ordering::SeqCst) < 3 {
        assert!(
            Instant::now() < deadline,
            "{} of 3 jobs started",
            started.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    open(&gate);
    for rx in blocked {
        rx.recv().unwrap();
    }
}

#[test]
fn grows_past_blocked_threads_up_to_the_bound() {
    let pool = Pool::new("t", 3).unwrap();
    let gate = gate(false);
    let started = Arc::new(AtomicUsize::new(0));
    let mut blocked = Vec::new();
    for _ in 0..5 {
        let gate = gate.clone();
        let started = started.clone();
        blocked.push(spawn(&pool, move || {
            started.fetch_add(1, Ordering::SeqCst);
            pass(&gate);
        }));
    }
    // All three threads end up blocked; two jobs wait.
    let deadline = Instant::now() + Duration::from_secs(5);
    while started.load(Ordering::SeqCst) < 3 {
        assert!(Instant::now() < deadline, "pool did not grow");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(STALL * 4);
    assert_eq!(
        started.load(Ordering::SeqCst),
        3,
        "never more than max threads"
    );
    assert_eq!(pool.peak_threads(), 3);
    open(&gate);
    for rx in blocked {
        rx.recv().unwrap();
    }
    assert_eq!(started.load(Ordering::SeqCst), 5);
}

#[test]
fn at_most_two_commands_per_device_unkeyed_or_not_and_waiting_ones_start_later() {
    use std::os::fd::AsFd;
    let pool = Pool::new("t", 4).unwrap();
    // a: a file (every non-device fd is one device); b: a device.
    let (a, b) = (
        tempfile::tempfile().unwrap(),
        std::fs::File::open("/dev/null").unwrap(),
    );
    let gate = gate(false);
    let started = Arc::new(AtomicUsize::new(0));
    // Two commands on device a, each on its own thread: the first starts
    // alone (unkeyed), the second beside it (keyed).
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let (pool, a, gate, started) = (
                pool.clone(),
                a.try_clone().unwrap(),
                gate.clone(),
                started.clone(),
            );
            std::thread::spawn(move || {
                pool.run_on_device(DevKey::of(a.as_fd()), || {
                    started.fetch_add(1, Ordering::SeqCst);
                    pass(&gate)
                })
            })
        })
        .collect();
    wait_for("two commands on a", || started.load(Ordering::SeqCst) == 2);
    // A third on a is refused; b still has a place.
    assert!(pool.run_on_device(DevKey::of(a.as_fd()), || ()).is_none());
    assert_eq!(pool.run_on_device(DevKey::of(b.as_fd()), || 7), Some(7));
    // A request queued for a starts, on a pool thread, when one of a's
    // commands ends.
    let (tx, rx) = mpsc::channel();
    pool.enter_or_wait(
        DevKey::of(a.as_fd()),
        Box::new(move |admission| {
            let _ = tx.send(matches!(admission, Admission::Run(_)));
        }),
    );
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    open(&gate);
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(true));
    for h in holders {
        assert_eq!(h.join().unwrap(), Some(()));
    }
    // Everything has left, so the next command starts unkeyed again.
    wait_for("every place freed", || pool.inner.places.executing() == 0);
}

/// Counts reads on a socket pair; reports how it left the pool.
struct Echo {
    sock: std::os::unix::net::UnixStream,
    reads: Arc<AtomicUsize>,
    /// readable() blocks while this is closed.
    gate: Gate,
    left: mpsc::Sender<Release>,
}

impl Parked for Echo {
    fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.sock.as_fd()
    }
    fn readable(&mut self) -> bool {
        use std::io::Read;
        let mut b = [0u8; 1];
        let n = (&self.sock).read(&mut b).unwrap_or(0);
        self.reads.fetch_add(1, Ordering::SeqCst);
        pass(&self.gate);
        n == 1
    }
    fn release(self: Box<Self>, why: Release) {
        let _ = self.left.send(why);
    }
}

fn echo(
    gate_open: bool,
) -> (
    std::os::unix::net::UnixStream,
    Box<Echo>,
    Arc<AtomicUsize>,
    Gate,
    mpsc::Receiver<Release>,
) {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    let reads = Arc::new(AtomicUsize::new(0));
    let gate = gate(gate_open);
    let (tx, rx) = mpsc::channel();
    let e = Box::new(Echo {
        sock: b,
        reads: reads.clone(),
        gate: gate.clone(),
        left: tx,
    });
    (a, e, reads, gate, rx)
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn parked_connections_are_served_on_every_arrival_until_done_or_unparked() {
    use std::io::Write;
    let pool = Pool::new("t", 2).unwrap();
    let (mut client, conn, reads, _, left) = echo(true);
    let key = pool.park(conn).unwrap();
    // Nothing arrives: nothing is read.
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(reads.load(Ordering::SeqCst), 0);
    for i in 1..=3 {
        client.write_all(b"x").unwrap();
        wait_for("a read", || reads.load(Ordering::SeqCst) == i);
    }
    // Unparked while waiting: released at once (and dropped).
    pool.unpark(key);
    assert_eq!(
        left.recv_timeout(Duration::from_secs(5)).unwrap(),
        Release::Unparked
    );
    assert_eq!(reads.load(Ordering::SeqCst), 3);
    // A second unpark of the same key does nothing.
    pool.unpark(key);

    // End of file: readable() says done.
    let (client, conn, _, _, left) = echo(true);
    pool.park(conn).unwrap();
    drop(client);
    assert_eq!(
        left.recv_timeout(Duration::from_secs(5)).unwrap(),
        Release::Done
    );
}

#[test]
fn unpark_while_serving_releases_after_the_work_and_others_are_served_meanwhile() {
    use std::io::Write;
    let pool = Pool::new("t", 2).unwrap();
    let (mut stuck_client, stuck, stuck_reads, gate, stuck_left) = echo(false);
    let key = pool.park(stuck).unwrap();
    stuck_client.write_all(b"x").unwrap();
    wait_for("the stuck read", || stuck_reads.load(Ordering::SeqCst) == 1);
    // The only thread is stuck: the watchdog adds one, which serves
    // another connection.
    let (mut client, conn, reads, _, _left) = echo(true);
    pool.park(conn).unwrap();
    client.write_all(b"y").unwrap();
    wait_for("the other read", || reads.load(Ordering::SeqCst) == 1);
    assert_eq!(pool.peak_threads(), 2);
    pool.unpark(key);
    assert!(stuck_left.recv_timeout(Duration::from_millis(50)).is_err());
    open(&gate);
    assert_eq!(
        stuck_left.recv_timeout(Duration::from_secs(5)).unwrap(),
        Release::Unparked
    );
}
