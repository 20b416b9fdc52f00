//! Throughput benchmark: pr-helper and qemu-pr-helper side by side.
//!
//! Drives 1, 8 and 64 connections, each sending PERSISTENT RESERVE IN
//! (READ KEYS) with a regular-file fd as fast as answers come back, and
//! prints requests/s, p50/p99 latency and the helper's peak RSS (VmHWM).
//! A regular file makes SG_IO fail at once, so this measures the helper's
//! own overhead: framing, fd passing, dispatch to the SG_IO pool, replies.
//!
//! Run: `cargo bench --bench throughput` (add `-- --seconds N` to change the
//! time per measurement, `-- --levels 1,8,64` for other connection counts,
//! `-- --only ours` to skip the reference, `-- --device PATH` to send a
//! block device's fd instead of a regular file's: a whole disk or loop
//! device whose SG_IO also fails at once, so the difference is the cost of
//! the per-request device check, D27).
//!
//! `-- --sandbox-cost N` instead measures what the sandbox costs: for each
//! level, N rounds alternating pr-helper as configured by default (Landlock
//! and seccomp on) and with `--seccomp false --landlock false`, then the
//! median requests/s and CPU time per request of each and the difference.
//! Alternating rounds and medians keep background load from favouring
//! either side.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pr_helper::scsi::pr::{pr_in_cdb, sa_in};

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
}

fn parse_args() -> Args {
    let mut args = Args {
        seconds: 3.0,
        levels: vec![1, 8, 64],
        only: None,
        extra: Vec::new(),
        sandbox_rounds: 0,
        device: None,
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
fn drive(socket: &Path, file: &Path, connections: usize, seconds: f64) -> Result {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let duration = Duration::from_secs_f64(seconds);
    rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..connections)
            .map(|_| {
                let socket = socket.to_path_buf();
                let file = file.to_path_buf();
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

fn main() {
    let args = parse_args();
    let dir = tempfile::Builder::new()
        .prefix("prh-bench")
        .tempdir()
        .unwrap();
    let file = dir.path().join("device-stand-in");
    std::fs::write(&file, b"").unwrap();
    let what = match &args.device {
        Some(d) => format!("on {}", d.display()),
        None => "on a regular-file fd".to_string(),
    };
    let file = args.device.clone().unwrap_or(file);
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_pr-helper"));
    if args.sandbox_rounds > 0 {
        sandbox_cost(&args, &ours, dir.path(), &file);
        return;
    }
    let reference = PathBuf::from("/usr/bin/qemu-pr-helper");
    let mut helpers = vec![("pr-helper", ours, args.extra.clone())];
    if args.only.as_deref() != Some("ours") {
        assert!(
            reference.exists(),
            "{} missing (install qemu-system-common from bookworm-backports)",
            reference.display()
        );
        helpers.push(("qemu-pr-helper", reference, Vec::new()));
    }
    println!(
        "PR IN (READ KEYS) {what}, {} s per measurement, {} CPUs",
        args.seconds,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<15} {:>5} {:>10} {:>12} {:>10} {:>10} {:>14} {:>14}",
        "helper",
        "conns",
        "requests",
        "requests/s",
        "p50 (us)",
        "p99 (us)",
        "peak RSS (KiB)",
        "CPU us/request"
    );
    for &level in &args.levels {
        for (name, binary, extra) in &helpers {
            // A fresh helper per measurement, so peak RSS belongs to this load.
            let h = start(binary, dir.path(), name, extra);
            let cpu_before = cpu_time(h.child.id());
            let r = drive(&h.socket, &file, level, args.seconds);
            let rss = peak_rss_kib(h.child.id());
            let cpu = cpu_time(h.child.id()) - cpu_before;
            println!(
                "{:<15} {:>5} {:>10} {:>12.0} {:>10} {:>10} {:>14} {:>14.1}",
                name,
                level,
                r.requests,
                r.rps,
                r.p50.as_micros(),
                r.p99.as_micros(),
                rss,
                cpu.as_secs_f64() * 1e6 / r.requests as f64
            );
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
                let r = drive(&h.socket, file, level, args.seconds);
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
