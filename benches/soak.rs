//! Soak test: many idle connections, busy connections sending a mix of
//! PR IN and PR OUT, and the helper's memory and fds watched throughout.
//!
//! ```text
//! cargo bench --bench soak                   # long: 1000 idle, 64 busy, 1,000,000 requests
//! cargo bench --bench soak -- --short        # CI: 100,000 requests (well under a minute)
//! cargo bench --bench soak -- [--idle N] [--busy N] [--requests N]
//!                             [--max-seconds S] [--sample-seconds S]
//! ```
//!
//! It starts the release `pr-helper` with `-k DIR/s.sock --max-connections
//! 2000` (RLIMIT_NOFILE raised first, up to the hard limit, for itself and so
//! for the helper), opens the idle connections (handshake done, then
//! silent), warms up the busy ones, and takes the start sample of the
//! helper's VmRSS and open fds. Each busy connection then sends requests one
//! at a time, as QEMU does, with a regular file's fd opened read-write or
//! read-only, until the request count is reached or the time limit passes.
//! A regular file makes SG_IO fail at once (ENOTTY), so every reply is known
//! exactly and checked byte for byte: CHECK CONDITION 0B/00/06, and 05/20/00
//! for PR OUT on a read-only fd.
//!
//! It fails (exit 1) if any reply is wrong or missing (each busy connection
//! must get exactly one reply per request, and nothing more), if an idle
//! connection was closed or received anything, if an idle connection does
//! not answer one request at the end, if the helper's RSS grew by more than
//! max(25 %, 2 MiB) from start to end, if its fd count is not back to the
//! start value at the end (and to the value before any client after all
//! clients have gone), if it held more fds during the run than connections
//! and in-flight requests explain, if it logged a warning or error, or if it
//! does not exit 0 on SIGTERM.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use pr_helper::client::Client;
use pr_helper::protocol::{MAX_TRANSFER, RESPONSE_HEADER_SIZE};
use pr_helper::scsi::pr::{pr_in_cdb, pr_out_cdb};
use pr_helper::scsi::SenseCode;

#[path = "../tests/common/procfs.rs"]
mod procfs;
use procfs::cpu_time;

struct Args {
    idle: usize,
    busy: usize,
    requests: u64,
    max_seconds: f64,
    sample_seconds: f64,
    warmup_per_connection: u64,
}

fn usage() -> ! {
    eprintln!(
        "usage: cargo bench --bench soak -- [--short] [--idle N] [--busy N] [--requests N] \
         [--max-seconds S] [--sample-seconds S] [--warmup N]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        idle: 1000,
        busy: 64,
        requests: 1_000_000,
        max_seconds: 900.0,
        sample_seconds: 5.0,
        warmup_per_connection: 200,
    };
    let mut it = std::env::args().skip(1);
    fn value<T: std::str::FromStr>(it: &mut impl Iterator<Item = String>, name: &str) -> T {
        it.next()
            .and_then(|v| v.replace('_', "").parse().ok())
            .unwrap_or_else(|| {
                eprintln!("soak: {name} needs a number");
                usage()
            })
    }
    while let Some(a) = it.next() {
        match a.as_str() {
            "--short" => {
                args.requests = 100_000;
                args.max_seconds = 60.0;
            }
            "--idle" => args.idle = value(&mut it, "--idle"),
            "--busy" => args.busy = value(&mut it, "--busy"),
            "--requests" => args.requests = value(&mut it, "--requests"),
            "--max-seconds" => args.max_seconds = value(&mut it, "--max-seconds"),
            "--sample-seconds" => args.sample_seconds = value(&mut it, "--sample-seconds"),
            "--warmup" => args.warmup_per_connection = value(&mut it, "--warmup"),
            "--help" | "-h" => usage(),
            // cargo bench passes --bench.
            "--bench" => {}
            other => {
                eprintln!("soak: unknown argument {other}");
                usage()
            }
        }
    }
    if args.busy == 0 {
        eprintln!("soak: --busy must be at least 1");
        usage()
    }
    args
}

/// Every check that failed, with a description.
#[derive(Default, Clone)]
struct Violations(Arc<Mutex<Vec<String>>>);

impl Violations {
    fn add(&self, what: String) {
        let mut v = self.0.lock().unwrap();
        if v.len() < 100 {
            eprintln!("soak: VIOLATION: {what}");
        }
        v.push(what);
    }
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// One sample of the helper's resources.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    fds: usize,
}

fn sample(pid: u32) -> io::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS"))?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok(Sample { rss_kib, fds })
}

/// Waits until the helper's fd count is `expected` (it closes a departed
/// client's socket asynchronously); returns the last count seen.
fn wait_for_fds(pid: u32, expected: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let n = sample(pid).map(|s| s.fds).unwrap_or(usize::MAX);
        if n == expected || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The helper's fd count once it has not changed for 300 ms.
fn settled_fds(pid: u32) -> usize {
    let mut last = usize::MAX;
    let mut since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = sample(pid).map(|s| s.fds).unwrap_or(usize::MAX);
        if n != last {
            last = n;
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_millis(300) || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Raises our RLIMIT_NOFILE soft limit to at least `needed` (the helper,
/// spawned after this, inherits it). Root here lacks CAP_SYS_RESOURCE, so
/// the hard limit is the ceiling.
fn raise_nofile(needed: u64) -> Result<(u64, u64), String> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    if soft >= needed {
        return Ok((soft, hard));
    }
    if hard < needed {
        return Err(format!(
            "RLIMIT_NOFILE hard limit {hard} is below the {needed} fds needed \
             (raise it, e.g. `prlimit --nofile={needed}:{needed} --pid $$` as root, \
             or use fewer --idle connections)"
        ));
    }
    setrlimit(Resource::RLIMIT_NOFILE, needed, hard).map_err(|e| e.to_string())?;
    Ok((needed, hard))
}

struct Helper {
    child: Child,
    socket: PathBuf,
    stderr: PathBuf,
}

impl Helper {
    fn start(dir: &Path, max_connections: usize) -> Helper {
        let socket = dir.join("s.sock");
        let stderr = dir.join("helper.stderr");
        let child = Command::new(env!("CARGO_BIN_EXE_pr-helper"))
            .arg("-k")
            .arg(&socket)
            .arg("--max-connections")
            .arg(max_connections.to_string())
            // Every connection comes from this one process.
            .args(["--max-connections-per-client", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("helper stderr file"))
            .spawn()
            .expect("start pr-helper");
        let h = Helper {
            child,
            socket,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if h.socket.exists() && Client::connect(&h.socket).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pr-helper did not start: {}",
                h.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        h
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The exact reply to a request on a regular file: SG_IO fails with ENOTTY
/// (0B/00/06), and PR OUT on a read-only fd is refused first (05/20/00).
fn expected_reply(pr_out: bool, read_only: bool) -> Vec<u8> {
    let code = if pr_out && read_only {
        SenseCode::INVALID_OPCODE
    } else {
        SenseCode::IO_ERROR
    };
    let mut out = vec![0, 0, 0, 2, 0, 0, 0, 0];
    out.extend_from_slice(&code.fixed_buffer());
    out
}

/// A small deterministic generator (xorshift64*), one per connection.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// One request of the mix: PR IN or PR OUT, service actions and lengths
/// varied (PR OUT lists from empty to the 8192-byte maximum), rw or ro fd.
struct Planned {
    cdb: [u8; 16],
    params_len: usize,
    pr_out: bool,
    read_only: bool,
}

fn plan(rng: &mut Rng) -> Planned {
    let r = rng.next();
    let read_only = r & 1 != 0;
    let pr_out = r & 2 != 0;
    let pick = (r >> 8) % 16;
    if pr_out {
        let len: u32 = match pick {
            0 => 0,
            1 => 8192,
            2 => 100,
            3 => 1,
            _ => 24,
        };
        let sa = ((r >> 16) % 8) as u8;
        Planned {
            cdb: pr_out_cdb(sa, 0, ((r >> 20) % 9) as u8, len),
            params_len: len as usize,
            pr_out,
            read_only,
        }
    } else {
        let alloc: u16 = match pick {
            0 => 0,
            1 => 8192,
            2 => 252,
            3 => 16,
            _ => 8,
        };
        let sa = ((r >> 16) % 4) as u8;
        Planned {
            cdb: pr_in_cdb(sa, alloc),
            params_len: 0,
            pr_out,
            read_only,
        }
    }
}

/// What one busy connection did.
#[derive(Default)]
struct BusyStats {
    sent: u64,
    replied: u64,
}

/// The shared state of the busy connections.
struct Load {
    /// Requests handed out so far in the measured phase.
    issued: AtomicU64,
    /// Requests answered (correctly or not) in the measured phase.
    answered: AtomicU64,
    total: u64,
    deadline: Mutex<Option<Instant>>,
    stop: AtomicBool,
    violations: Violations,
}

/// Sends one planned request and checks its reply byte for byte.
fn one_request(
    client: &mut Client,
    (rw, ro): (BorrowedFd<'_>, BorrowedFd<'_>),
    params: &[u8],
    p: &Planned,
    stats: &mut BusyStats,
    violations: &Violations,
    conn: usize,
) -> bool {
    let fd = if p.read_only { ro } else { rw };
    if let Err(e) = client.send(&p.cdb, fd, &params[..p.params_len]) {
        violations.add(format!("busy connection {conn}: send failed: {e}"));
        return false;
    }
    stats.sent += 1;
    match client.receive() {
        Ok(reply) => {
            stats.replied += 1;
            let got = reply.to_bytes();
            let want = expected_reply(p.pr_out, p.read_only);
            if got != want {
                violations.add(format!(
                    "busy connection {conn}: reply to {} {} on a {} fd: got {:02x?}, expected {:02x?}",
                    if p.pr_out { "PR OUT" } else { "PR IN" },
                    p.cdb[1] & 0x1f,
                    if p.read_only { "read-only" } else { "read-write" },
                    &got[..got.len().min(RESPONSE_HEADER_SIZE)],
                    &want[..]
                ));
            }
            true
        }
        Err(e) => {
            violations.add(format!(
                "busy connection {conn}: no reply to request {} ({e})",
                stats.sent
            ));
            false
        }
    }
}

fn busy_connection(
    conn: usize,
    socket: &Path,
    files: &(std::fs::File, std::fs::File),
    warmup: u64,
    ready: &Barrier,
    go: &Barrier,
    load: &Load,
) -> (BusyStats, Option<Client>) {
    let mut stats = BusyStats::default();
    let mut rng =
        Rng(0x9e37_79b9_7f4a_7c15 ^ (conn as u64 + 1).wrapping_mul(0x1234_5678_9abc_def1));
    let params: Vec<u8> = (0..MAX_TRANSFER).map(|i| (i * 7 + conn) as u8).collect();
    let (rw, ro) = (files.0.as_fd(), files.1.as_fd());
    let mut client = match Client::connect(socket) {
        Ok(c) => Some(c),
        Err(e) => {
            load.violations
                .add(format!("busy connection {conn}: connect: {e}"));
            None
        }
    };
    if let Some(c) = client.as_mut() {
        // A lost reply must fail the run, not hang it.
        c.set_timeout(Some(Duration::from_secs(30))).unwrap();
        for _ in 0..warmup {
            let p = plan(&mut rng);
            if !one_request(c, (rw, ro), &params, &p, &mut stats, &load.violations, conn) {
                client = None;
                break;
            }
        }
    }
    ready.wait();
    go.wait();
    let warm = (stats.sent, stats.replied);
    if let Some(c) = client.as_mut() {
        loop {
            if load.stop.load(Ordering::Relaxed) {
                break;
            }
            if let Some(deadline) = *load.deadline.lock().unwrap() {
                if Instant::now() >= deadline {
                    load.stop.store(true, Ordering::Relaxed);
                    break;
                }
            }
            if load.issued.fetch_add(1, Ordering::Relaxed) >= load.total {
                break;
            }
            let p = plan(&mut rng);
            let ok = one_request(c, (rw, ro), &params, &p, &mut stats, &load.violations, conn);
            load.answered.fetch_add(1, Ordering::Relaxed);
            if !ok {
                break;
            }
        }
        // Exactly one reply per request: nothing more may be waiting.
        if stats.sent == stats.replied {
            match peek(c.stream()) {
                Peek::Nothing => {}
                Peek::Data => load.violations.add(format!(
                    "busy connection {conn}: unexpected bytes after the last reply"
                )),
                Peek::Eof => load
                    .violations
                    .add(format!("busy connection {conn}: closed by the helper")),
                Peek::Error(e) => load
                    .violations
                    .add(format!("busy connection {conn}: peek: {e}")),
            }
        }
    }
    if stats.sent != stats.replied {
        load.violations.add(format!(
            "busy connection {conn}: {} requests, {} replies",
            stats.sent, stats.replied
        ));
    }
    // Report only the measured phase; the connection stays open until the
    // end sample is taken (the start sample was taken with it open).
    let measured = BusyStats {
        sent: stats.sent - warm.0,
        replied: stats.replied - warm.1,
    };
    (measured, client)
}

enum Peek {
    Nothing,
    Data,
    Eof,
    Error(io::Error),
}

/// Non-blocking look at a socket: EOF, pending data, or nothing.
fn peek(stream: &std::os::unix::net::UnixStream) -> Peek {
    let mut byte = [0u8; 1];
    // SAFETY: `byte` is a valid 1-byte buffer for the duration of the call.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            byte.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => Peek::Eof,
        n if n > 0 => Peek::Data,
        _ => {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => Peek::Nothing,
                io::ErrorKind::ConnectionReset => Peek::Eof,
                _ => Peek::Error(e),
            }
        }
    }
}

fn kib(v: u64) -> String {
    format!("{v} KiB ({:.1} MiB)", v as f64 / 1024.0)
}

fn main() -> ExitCode {
    let args = parse_args();
    let violations = Violations::default();
    let dir = tempfile::Builder::new()
        .prefix("prh-soak")
        .tempdir()
        .expect("temporary directory");

    // Our fds: idle + busy sockets, two files, slack. The helper's: the same
    // sockets, one device fd per in-flight request, its own few; it inherits
    // our limit.
    let needed = (2 * (args.idle + args.busy) + 256) as u64;
    let (soft, hard) = match raise_nofile(needed) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::FAILURE;
        }
    };
    let max_connections = 2000.max(args.idle + args.busy + 16);

    let rw_path = dir.path().join("device-stand-in");
    std::fs::write(&rw_path, b"").unwrap();
    let files = Arc::new((
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&rw_path)
            .unwrap(),
        std::fs::File::open(&rw_path).unwrap(),
    ));

    let helper = Helper::start(dir.path(), max_connections);
    let pid = helper.pid();
    println!(
        "soak: pr-helper pid {pid}, {} idle + {} busy connections, {} requests, at most {} s; \
         RLIMIT_NOFILE {soft}/{hard}, --max-connections {max_connections}",
        args.idle, args.busy, args.requests, args.max_seconds
    );
    // The start-up probe's connection is closed asynchronously: settle first.
    let base = settled_fds(pid);

    // Idle connections: handshake, then silence.
    let t = Instant::now();
    let mut idle = Vec::with_capacity(args.idle);
    for i in 0..args.idle {
        match Client::connect(&helper.socket) {
            Ok(c) => idle.push(c),
            Err(e) => {
                violations.add(format!("idle connection {i}: connect: {e}"));
                break;
            }
        }
    }
    let with_idle = wait_for_fds(pid, base + idle.len(), Duration::from_secs(10));
    if with_idle != base + idle.len() {
        violations.add(format!(
            "helper holds {with_idle} fds with {} idle connections (expected {})",
            idle.len(),
            base + idle.len()
        ));
    }
    println!(
        "soak: {} idle connections open in {:.2} s; helper fds {base} -> {with_idle}",
        idle.len(),
        t.elapsed().as_secs_f64()
    );

    // Busy connections: connect and warm up, then wait for the start sample.
    let load = Arc::new(Load {
        issued: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        total: args.requests,
        deadline: Mutex::new(None),
        stop: AtomicBool::new(false),
        violations: violations.clone(),
    });
    let ready = Arc::new(Barrier::new(args.busy + 1));
    let go = Arc::new(Barrier::new(args.busy + 1));
    let t = Instant::now();
    let threads: Vec<_> = (0..args.busy)
        .map(|conn| {
            let socket = helper.socket.clone();
            let files = files.clone();
            let (ready, go, load) = (ready.clone(), go.clone(), load.clone());
            let warmup = args.warmup_per_connection;
            std::thread::Builder::new()
                .name(format!("busy-{conn}"))
                .stack_size(256 * 1024)
                .spawn(move || busy_connection(conn, &socket, &files, warmup, &ready, &go, &load))
                .expect("spawn busy connection")
        })
        .collect();
    ready.wait();
    let warmup_requests = args.warmup_per_connection * args.busy as u64;
    println!(
        "soak: warm-up: {warmup_requests} requests on {} busy connections in {:.2} s",
        args.busy,
        t.elapsed().as_secs_f64()
    );
    // Quiescent: every busy connection open, no request in flight.
    let expected_start_fds = with_idle + args.busy;
    let start_fds = wait_for_fds(pid, expected_start_fds, Duration::from_secs(5));
    if start_fds != expected_start_fds {
        violations.add(format!(
            "helper holds {start_fds} fds after warm-up (expected {expected_start_fds})"
        ));
    }
    let start = sample(pid).expect("sample helper");
    let cpu_start = cpu_time(pid);
    println!("soak: start: RSS {}, {} fds", kib(start.rss_kib), start.fds);

    let started = Instant::now();
    *load.deadline.lock().unwrap() = Some(started + Duration::from_secs_f64(args.max_seconds));
    go.wait();

    // Periodic samples while the load runs.
    let mut max = start;
    let mut max_fds_seen = start.fds;
    let mut last_print = Instant::now();
    let mut last_answered = 0;
    let sample_every = Duration::from_secs_f64(args.sample_seconds.max(0.1));
    let fd_ceiling = start.fds + args.busy; // one device fd per busy connection
    let mut samples = 0u64;
    while threads.iter().any(|t| !t.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        if helper_exited(pid) {
            violations.add(format!(
                "pr-helper exited during the run; stderr:\n{}",
                helper.stderr_text()
            ));
            load.stop.store(true, Ordering::Relaxed);
            break;
        }
        if let Ok(s) = sample(pid) {
            samples += 1;
            max.rss_kib = max.rss_kib.max(s.rss_kib);
            max_fds_seen = max_fds_seen.max(s.fds);
            if s.fds > fd_ceiling {
                violations.add(format!(
                    "helper holds {} fds during the run (at most {fd_ceiling} expected: \
                     {} at start + one device fd per busy connection)",
                    s.fds, start.fds
                ));
            }
            if last_print.elapsed() >= sample_every {
                let answered = load.answered.load(Ordering::Relaxed);
                let rate = (answered - last_answered) as f64 / last_print.elapsed().as_secs_f64();
                println!(
                    "soak: {:>6.1} s  {:>9} requests  {:>8.0} req/s  RSS {:>6} KiB  fds {}",
                    started.elapsed().as_secs_f64(),
                    answered,
                    rate,
                    s.rss_kib,
                    s.fds
                );
                last_print = Instant::now();
                last_answered = answered;
            }
        }
    }
    let mut requests = 0;
    let mut replies = 0;
    let mut busy_clients = Vec::new();
    for t in threads {
        match t.join() {
            Ok((s, client)) => {
                requests += s.sent;
                replies += s.replied;
                busy_clients.push(client);
            }
            Err(_) => violations.add("a busy connection thread panicked".into()),
        }
    }
    let duration = started.elapsed();
    let cpu = cpu_time(pid).saturating_sub(cpu_start);
    let time_limited = load.stop.load(Ordering::Relaxed) && requests < args.requests;

    // End sample: busy connections still open, nothing in flight.
    let end_fds = wait_for_fds(pid, start.fds, Duration::from_secs(5));
    let end = sample(pid).unwrap_or(Sample {
        rss_kib: 0,
        fds: end_fds,
    });
    max.rss_kib = max.rss_kib.max(end.rss_kib);
    if end_fds != start.fds {
        violations.add(format!(
            "helper holds {end_fds} fds at the end, {} at the start",
            start.fds
        ));
    }
    let growth = end.rss_kib as i64 - start.rss_kib as i64;
    let allowed = (start.rss_kib / 4).max(2048) as i64;
    if growth > allowed {
        violations.add(format!(
            "helper RSS grew by {growth} KiB (from {} to {} KiB; at most {allowed} KiB allowed)",
            start.rss_kib, end.rss_kib
        ));
    }
    if replies != requests {
        violations.add(format!("{requests} requests but {replies} replies"));
    }

    // The busy connections leave; the helper closes their sockets.
    drop(busy_clients);
    let after_busy = wait_for_fds(pid, with_idle, Duration::from_secs(10));
    if after_busy != with_idle {
        violations.add(format!(
            "helper holds {after_busy} fds after the busy connections closed (expected {with_idle})"
        ));
    }

    // Idle connections: still open, nothing received, and still served.
    let mut idle_closed = 0;
    let mut idle_failed = 0;
    for (i, c) in idle.iter_mut().enumerate() {
        match peek(c.stream()) {
            Peek::Nothing => {}
            Peek::Eof => {
                idle_closed += 1;
                violations.add(format!("idle connection {i} was closed by the helper"));
                continue;
            }
            Peek::Data => violations.add(format!("idle connection {i} received unasked-for bytes")),
            Peek::Error(e) => violations.add(format!("idle connection {i}: peek: {e}")),
        }
        c.set_timeout(Some(Duration::from_secs(30))).unwrap();
        let read_only = i % 2 == 1;
        let fd = if read_only {
            files.1.as_fd()
        } else {
            files.0.as_fd()
        };
        let pr_out = i % 4 >= 2;
        let (cdb, params) = if pr_out {
            (pr_out_cdb(0, 0, 0, 24), &[0u8; 24][..])
        } else {
            (pr_in_cdb(0, 8), &[][..])
        };
        match c.execute(&cdb, fd, params) {
            Ok(r) if r.to_bytes() == expected_reply(pr_out, read_only) => {}
            Ok(r) => {
                idle_failed += 1;
                violations.add(format!(
                    "idle connection {i}: wrong reply {:02x?}",
                    r.to_bytes()
                ));
            }
            Err(e) => {
                idle_failed += 1;
                violations.add(format!("idle connection {i}: request failed: {e}"));
            }
        }
    }
    let idle_count = idle.len();
    drop(idle);
    let final_fds = wait_for_fds(pid, base, Duration::from_secs(10));
    if final_fds != base {
        violations.add(format!(
            "helper holds {final_fds} fds after every client left (expected {base}, as before any client)"
        ));
    }

    // The helper must have had nothing to complain about.
    let log = helper.stderr_text();
    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(": warning: ") || l.contains(": error: "))
        .collect();
    if !complaints.is_empty() {
        violations.add(format!(
            "pr-helper logged {} warnings/errors, first: {}",
            complaints.len(),
            complaints[0]
        ));
    }

    // Clean exit on SIGTERM.
    let mut helper = helper;
    // SAFETY: kill has no memory-safety preconditions; the pid is our child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        match helper.child.try_wait() {
            Ok(Some(status)) => break Some(status),
            _ if Instant::now() >= deadline => break None,
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    match exit {
        Some(s) if s.success() => {}
        Some(s) => violations.add(format!("pr-helper exited with {s} on SIGTERM")),
        None => violations.add("pr-helper did not exit within 10 s of SIGTERM".into()),
    }

    let secs = duration.as_secs_f64();
    println!();
    println!("== soak summary");
    println!("connections      {idle_count} idle + {} busy", args.busy);
    println!(
        "requests         {requests} (+ {warmup_requests} warm-up), {replies} replies{}",
        if time_limited {
            format!(
                " (time limit of {} s reached before {})",
                args.max_seconds, args.requests
            )
        } else {
            String::new()
        }
    );
    println!("duration         {secs:.2} s");
    println!("requests/s       {:.0}", requests as f64 / secs);
    println!(
        "helper CPU       {:.2} s ({:.1} us/request)",
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / requests.max(1) as f64
    );
    println!("RSS start        {}", kib(start.rss_kib));
    println!(
        "RSS end          {}  (growth {growth:+} KiB, limit {allowed} KiB)",
        kib(end.rss_kib)
    );
    println!("RSS max          {}  ({samples} samples)", kib(max.rss_kib));
    println!(
        "fds              before clients {base}, with idle {with_idle}, start {}, end {end_fds}, \
         max during run {max_fds_seen} (limit {fd_ceiling}), after busy left {after_busy}, \
         after all left {final_fds}",
        start.fds
    );
    println!(
        "idle at end      {} open, {} answered one request",
        idle_count - idle_closed,
        idle_count - idle_closed - idle_failed
    );
    let n = violations.count();
    if n == 0 {
        println!("result           PASS");
        ExitCode::SUCCESS
    } else {
        println!("result           FAIL: {n} violations (see above)");
        ExitCode::FAILURE
    }
}

/// True once the helper has exited (a zombie: we reap it only at the end).
fn helper_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}
