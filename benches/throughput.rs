//! Throughput benchmark: pr-helper, qemu-pr-helper and a floor side by side.
//!
//! Drives 1, 8 and 64 connections, each sending PERSISTENT RESERVE IN
//! (READ KEYS) as fast as answers come back, as QEMU does (one request at
//! a time per connection, the device's fd attached), and prints
//! requests/s, p50/p99 latency, the server's peak RSS (VmHWM) and its CPU
//! time per request. Three kinds of fd, block devices first because every
//! fd a user's QEMU sends is one:
//!
//! - `loop`: one loop device (one LUN shared by every connection);
//! - `loops`: eight loop devices, connection i on device i mod 8 (the
//!   many-LUN host);
//! - `file`: a regular file (no device check, D27);
//! - `slow` (not run by default): a stand-in for a healthy LUN that takes a
//!   millisecond per command, shared by every connection: a FUSE file
//!   (the tests' fake device) whose ioctl answers ENOTTY after 1 ms. It
//!   shows what the per-device bound (D29) costs a device that answers.
//!
//! SG_IO fails at once on all three (ENOTTY), so the figures are the
//! servers' own cost: framing, fd passing, the device check, dispatch,
//! replies. The loop rows need root (losetup); without it they are left
//! out with a note.
//!
//! The *floor* is the least any helper can do: a thread per connection that
//! does recvmsg, one SG_IO and send, nothing else (no checks, no limits, no
//! logging). It is this binary run again with `-k SOCKET --floor-server`.
//! Each figure is the median of `--rounds` rounds (3) that alternate the
//! servers, so background load favours none of them.
//!
//! Run: `cargo bench --bench throughput` (as root for the loop rows). Add
//! `-- --seconds N` (per measurement, 2), `-- --levels 8,64`,
//! `-- --kinds loop,loops,file`, `-- --rounds N`, `-- --only ours` (no
//! reference), `-- --device PATH` (one given device instead of the kinds),
//! `-- --baseline BINARY` (another pr-helper build beside, e.g. an older
//! commit's, for before/after figures from one run).
//!
//! `-- --sandbox-cost N` instead measures what the sandbox costs: for each
//! level, N rounds alternating pr-helper as configured by default (Landlock
//! and seccomp on) and with `--seccomp false --landlock false`, then the
//! median requests/s and CPU time per request of each and the difference.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pr_helper::scsi::pr::{pr_in_cdb, sa_in};

#[path = "../tests/common/fakedev.rs"]
mod fakedev;
#[path = "../tests/common/procfs.rs"]
mod procfs;
use procfs::cpu_time;

struct Args {
    seconds: f64,
    levels: Vec<usize>,
    only: Option<String>,
    extra: Vec<String>,
    sandbox_rounds: usize,
    device: Option<PathBuf>,
    kinds: Vec<String>,
    rounds: usize,
    baseline: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut args = Args {
        seconds: 2.0,
        levels: vec![1, 8, 64],
        only: None,
        extra: Vec::new(),
        sandbox_rounds: 0,
        device: None,
        kinds: vec!["loop".into(), "loops".into(), "file".into()],
        rounds: 3,
        baseline: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                args.seconds = it.next().and_then(|v| v.parse().ok()).expect("--seconds N")
            }
            "--levels" => {
                args.levels = it
                    .next()
                    .expect("--levels 1,8,64")
                    .split(',')
                    .map(|v| v.parse().expect("number"))
                    .collect()
            }
            "--only" => args.only = it.next(),
            "--device" => args.device = it.next().map(PathBuf::from),
            "--kinds" => {
                args.kinds = it
                    .next()
                    .map(|v| v.split(',').map(str::to_string).collect())
                    .expect("--kinds loop,loops,file,slow")
            }
            // Another pr-helper binary to measure beside (an older build).
            "--baseline" => args.baseline = it.next().map(PathBuf::from),
            "--rounds" => {
                args.rounds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .expect("--rounds N")
            }
            "--sandbox-cost" => {
                args.sandbox_rounds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--sandbox-cost ROUNDS")
            }
            // Extra arguments for our helper (e.g. --helper-arg=--no-sandbox).
            s if s.starts_with("--helper-arg=") => {
                args.extra.push(s["--helper-arg=".len()..].to_string())
            }
            // cargo bench passes --bench; ignore anything else.
            _ => {}
        }
    }
    args
}

struct Running {
    child: Child,
    socket: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(binary: &Path, dir: &Path, name: &str, extra: &[String]) -> Running {
    let socket = dir.join(format!("{name}.sock"));
    // The last measurement's server left its socket behind.
    let _ = std::fs::remove_file(&socket);
    let child = Command::new(binary)
        .arg("-k")
        .arg(&socket)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "{name} did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    Running { child, socket }
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Result {
    requests: usize,
    rps: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `connections` clients on one thread (a current-thread tokio
/// runtime), so that the client side costs as little CPU as possible and
/// the figures describe the helper. Each client behaves like QEMU: one
/// request at a time, fd attached to the CDB, then reads the whole reply.
fn drive(socket: &Path, files: &[PathBuf], connections: usize, seconds: f64) -> Result {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let duration = Duration::from_secs_f64(seconds);
    rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..connections)
            .map(|i| {
                let socket = socket.to_path_buf();
                let file = files[i % files.len()].clone();
                tokio::spawn(async move { client_loop(&socket, &file, start, duration).await })
            })
            .collect();
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await.unwrap());
        }
        let elapsed = start.elapsed();
        latencies.sort_unstable();
        let pct =
            |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
        Result {
            requests: latencies.len(),
            rps: latencies.len() as f64 / elapsed.as_secs_f64(),
            p50: pct(0.50),
            p99: pct(0.99),
        }
    })
}

async fn client_loop(
    socket: &Path,
    file: &Path,
    start: Instant,
    duration: Duration,
) -> Vec<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    // The reference listens with a backlog of 1: a non-blocking connect
    // then fails with EAGAIN until it accepts (QEMU's blocking connect waits).
    let mut stream = loop {
        match tokio::net::UnixStream::connect(socket).await {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tokio::time::sleep(Duration::from_millis(1)).await
            }
            Err(e) => panic!("connect: {e}"),
        }
    };
    let mut word = [0u8; 4];
    stream.read_exact(&mut word).await.unwrap();
    stream.write_all(&[0; 4]).await.unwrap();
    let cdb = pr_in_cdb(sa_in::READ_KEYS, 8);
    let mut reply = [0u8; pr_helper::protocol::RESPONSE_HEADER_SIZE];
    let mut lat = Vec::with_capacity(100_000);
    while start.elapsed() < duration {
        let t = Instant::now();
        loop {
            stream.writable().await.unwrap();
            match stream.try_io(Interest::WRITABLE, || {
                pr_helper::protocol::fdpass::send(
                    stream.as_fd(),
                    &[std::io::IoSlice::new(&cdb)],
                    &[f.as_fd()],
                )
            }) {
                Ok(n) => {
                    assert_eq!(n, cdb.len());
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("send: {e}"),
            }
        }
        stream.read_exact(&mut reply).await.expect("reply");
        assert_eq!(&reply[..8], &[0, 0, 0, 2, 0, 0, 0, 0]);
        lat.push(t.elapsed());
    }
    lat
}

/// One kind of fd the clients send.
struct Kind {
    name: String,
    files: Vec<PathBuf>,
}

/// Loop devices made for the run, detached when dropped.
struct Loops(Vec<PathBuf>);

impl Loops {
    /// `n` loop devices over small files in `dir` (needs root).
    fn new(dir: &Path, n: usize) -> std::result::Result<Loops, String> {
        let mut loops = Loops(Vec::new());
        for i in 0..n {
            let backing = dir.join(format!("loop{i}.img"));
            std::fs::write(&backing, vec![0u8; 1 << 20]).map_err(|e| e.to_string())?;
            let out = Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&backing)
                .output()
                .map_err(|e| format!("losetup: {e}"))?;
            if !out.status.success() {
                return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
            }
            let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
            loops.0.push(PathBuf::from(dev));
        }
        Ok(loops)
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        for dev in &self.0 {
            let _ = Command::new("losetup").arg("-d").arg(dev).status();
        }
    }
}

/// Medians over the rounds of one server at one level.
#[derive(Default)]
struct Figures {
    rps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    rss: u64,
    cpu: Vec<f64>,
}

fn main() {
    // Started as the other servers are: `-k SOCKET --floor-server`.
    if std::env::args().any(|a| a == "--floor-server") {
        let args: Vec<String> = std::env::args().collect();
        let k = args.iter().position(|a| a == "-k").expect("-k SOCKET");
        floor_server(Path::new(&args[k + 1]));
    }
    let args = parse_args();
    let dir = tempfile::Builder::new()
        .prefix("prh-bench")
        .tempdir()
        .unwrap();
    let file = dir.path().join("device-stand-in");
    std::fs::write(&file, b"").unwrap();
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_pr-helper"));
    if args.sandbox_rounds > 0 {
        let file = args.device.clone().unwrap_or(file);
        sandbox_cost(&args, &ours, dir.path(), &file);
        return;
    }
    let mut kinds = Vec::new();
    let mut _loops = Vec::new();
    let mut _fake = None;
    if let Some(d) = &args.device {
        kinds.push(Kind {
            name: d.display().to_string(),
            files: vec![d.clone()],
        });
    }
    for k in args.kinds.iter().filter(|_| args.device.is_none()) {
        match k.as_str() {
            "file" => kinds.push(Kind {
                name: "regular file".into(),
                files: vec![file.clone()],
            }),
            "loop" | "loops" => {
                let n = if k == "loop" { 1 } else { 8 };
                match Loops::new(dir.path(), n) {
                    Ok(l) => {
                        kinds.push(Kind {
                            name: if n == 1 {
                                "1 loop device".into()
                            } else {
                                format!("{n} loop devices")
                            },
                            files: l.0.clone(),
                        });
                        _loops.push(l);
                    }
                    Err(e) => println!("note: no {k} rows (loop devices need root): {e}"),
                }
            }
            "slow" => {
                let dev = fakedev::FakeDev::mount();
                kinds.push(Kind {
                    name: "1 ms stand-in".into(),
                    files: vec![dev.path("e25-d1")],
                });
                _fake = Some(dev);
            }
            other => panic!("unknown kind {other} (loop, loops, file, slow)"),
        }
    }
    let floor = std::env::current_exe().expect("this binary");
    let reference = PathBuf::from("/usr/bin/qemu-pr-helper");
    let floor_args = vec!["--floor-server".to_string()];
    let mut servers = vec![
        ("floor", floor, floor_args),
        ("pr-helper", ours, args.extra.clone()),
    ];
    if let Some(b) = &args.baseline {
        servers.push(("baseline", b.clone(), args.extra.clone()));
    }
    if args.only.as_deref() != Some("ours") {
        assert!(
            reference.exists(),
            "{} missing (install qemu-system-common from bookworm-backports)",
            reference.display()
        );
        servers.push(("qemu-pr-helper", reference, Vec::new()));
    }
    println!(
        "PR IN (READ KEYS), {} s per measurement, median of {} alternating rounds, {} CPUs",
        args.seconds,
        args.rounds,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<16} {:>5} {:<15} {:>11} {:>9} {:>9} {:>10} {:>8} {:>9} {:>9}",
        "fd",
        "conns",
        "server",
        "requests/s",
        "p50 (us)",
        "p99 (us)",
        "peak RSS",
        "CPU us/r",
        "x ref",
        "x floor"
    );
    for kind in &kinds {
        for &level in &args.levels {
            let mut figures: Vec<Figures> = servers.iter().map(|_| Figures::default()).collect();
            for _ in 0..args.rounds {
                for ((name, binary, extra), f) in servers.iter().zip(&mut figures) {
                    // A fresh server per measurement, so that peak RSS
                    // belongs to this load.
                    let h = start(binary, dir.path(), name, extra);
                    let cpu_before = cpu_time(h.child.id());
                    let r = drive(&h.socket, &kind.files, level, args.seconds);
                    let cpu = cpu_time(h.child.id()) - cpu_before;
                    f.rss = f.rss.max(peak_rss_kib(h.child.id()));
                    f.rps.push(r.rps);
                    f.p50.push(r.p50.as_secs_f64() * 1e6);
                    f.p99.push(r.p99.as_secs_f64() * 1e6);
                    f.cpu.push(cpu.as_secs_f64() * 1e6 / r.requests as f64);
                }
            }
            let rps: Vec<f64> = figures.iter_mut().map(|f| median(&mut f.rps)).collect();
            let reference_rps = servers
                .iter()
                .position(|s| s.0 == "qemu-pr-helper")
                .map(|i| rps[i]);
            for (i, ((name, ..), f)) in servers.iter().zip(&mut figures).enumerate() {
                let ratio = |other: Option<f64>| match other {
                    Some(o) if *name != "floor" && o > 0.0 => format!("{:.2}", rps[i] / o),
                    _ => "-".to_string(),
                };
                println!(
                    "{:<16} {:>5} {:<15} {:>11.0} {:>9.0} {:>9.0} {:>10} {:>8.1} {:>9} {:>9}",
                    kind.name,
                    level,
                    name,
                    rps[i],
                    median(&mut f.p50),
                    median(&mut f.p99),
                    f.rss,
                    median(&mut f.cpu),
                    if *name == "qemu-pr-helper" {
                        "-".to_string()
                    } else {
                        ratio(reference_rps)
                    },
                    ratio(Some(rps[0])),
                );
            }
        }
    }
}

/// The floor server (see the module comment): never returns.
fn floor_server(socket: &Path) -> ! {
    let listener = std::os::unix::net::UnixListener::bind(socket).expect("bind");
    for stream in listener.incoming() {
        let stream = stream.expect("accept");
        std::thread::spawn(move || floor_connection(stream));
    }
    unreachable!("incoming() never ends")
}

/// recvmsg, SG_IO, send, until the client goes.
fn floor_connection(mut stream: std::os::unix::net::UnixStream) {
    use pr_helper::protocol::{fdpass, Response};
    use pr_helper::scsi::sgio::{self, DataPhase};
    use std::io::{Read, Write};
    stream.write_all(&[0; 4]).unwrap();
    let mut word = [0u8; 4];
    if stream.read_exact(&mut word).is_err() {
        return;
    }
    let mut cdb = [0u8; 16];
    let mut data = [0u8; 8192];
    let mut out = Vec::with_capacity(8192 + 104);
    loop {
        let got = match fdpass::recv(stream.as_fd(), &mut cdb, true) {
            Ok(r) if r.len == cdb.len() && r.fds.len() == 1 => r,
            _ => return,
        };
        let alloc = usize::from(u16::from_be_bytes([cdb[7], cdb[8]])).min(data.len());
        let result = sgio::execute(
            got.fds[0].as_fd(),
            &cdb,
            DataPhase::FromDevice(&mut data[..alloc]),
            Duration::from_secs(30),
        );
        let mut response = Response::status_only(2);
        match result {
            Ok(r) => {
                response.status = r.status;
                response.sense = r.sense;
                if r.status == 0 {
                    let n = alloc.saturating_sub(usize::try_from(r.resid).unwrap_or(0));
                    response.data = data[..n].to_vec();
                }
            }
            // ABORTED COMMAND, I/O PROCESS TERMINATED, as a helper answers
            // an ioctl that failed.
            Err(_) => response.sense = pr_helper::scsi::SenseCode::IO_ERROR.fixed_buffer(),
        }
        out.clear();
        response.encode(&mut out);
        if stream.write_all(&out).is_err() {
            return;
        }
    }
}

/// Median of `values` (sorted in place).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The `--sandbox-cost` mode (see the module comment).
fn sandbox_cost(args: &Args, ours: &Path, dir: &Path, file: &Path) {
    let off = [
        "--seccomp=false".to_string(),
        "--landlock=false".to_string(),
    ];
    println!(
        "sandbox cost: {} alternating rounds of {} s per level, medians",
        args.sandbox_rounds, args.seconds
    );
    println!(
        "{:>5} {:>16} {:>16} {:>9} {:>18} {:>18}",
        "conns",
        "req/s sandboxed",
        "req/s without",
        "cost %",
        "CPU us/req sandbox",
        "CPU us/req without"
    );
    for &level in &args.levels {
        let (mut rps, mut cpu) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
        for _ in 0..args.sandbox_rounds {
            for (i, extra) in [&args.extra[..], &off[..]].into_iter().enumerate() {
                let h = start(ours, dir, "pr-helper", extra);
                let before = cpu_time(h.child.id());
                let r = drive(
                    &h.socket,
                    std::slice::from_ref(&file.to_path_buf()),
                    level,
                    args.seconds,
                );
                let used = cpu_time(h.child.id()) - before;
                rps[i].push(r.rps);
                cpu[i].push(used.as_secs_f64() * 1e6 / r.requests as f64);
            }
        }
        let (on, without) = (median(&mut rps[0]), median(&mut rps[1]));
        println!(
            "{:>5} {:>16.0} {:>16.0} {:>9.1} {:>18.1} {:>18.1}",
            level,
            on,
            without,
            (without - on) / without * 100.0,
            median(&mut cpu[0]),
            median(&mut cpu[1])
        );
    }
}
