//! Isolation: a device whose commands hang keeps several clients of a
//! helper busy; requests from another client to the LIO disk must not slow
//! down. Measured for pr-helper and for qemu-pr-helper, each with and
//! without the hung device busy.
//!
//! The hung device is real-world: a dm-multipath map with
//! `queue_if_no_path` whose only path has failed. The kernel retries an
//! ioctl on it until a path comes back, so SG_IO blocks; reinstating the
//! path releases it.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pr_helper::scsi::pr::{pr_in_cdb, sa_in};

use crate::exec::{self, Via};
use crate::{lio, result};

/// Clients kept blocked on the hung device (more than the pool keeps).
const HUNG_CLIENTS: usize = 4;
/// Requests measured per run.
const SAMPLES: usize = 200;
/// How long one measured request may take before the helper counts as
/// blocked.
const BLOCKED: Duration = Duration::from_secs(10);

pub fn dmsetup(args: &[&str]) -> Result<String, String> {
    let out = Command::new("dmsetup")
        .arg("--noudevsync")
        .args(args)
        .output()
        .map_err(|e| format!("dmsetup: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "dmsetup {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A multipath map over `path` (a /dev/sdX), with the path failed: its
/// /dev/dm-N node and the path's major:minor.
pub fn hung_map(name: &str, path: &Path) -> Result<(PathBuf, String), String> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(path).map_err(|e| e.to_string())?.rdev();
    let majmin = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
    // The whole path, as multipath maps are: a map over part of a disk is
    // refused before SG_IO (D27), as the kernel refuses it without
    // CAP_SYS_RAWIO.
    let sectors = std::fs::read_to_string(format!("/sys/dev/block/{majmin}/size"))
        .map_err(|e| format!("size of {majmin}: {e}"))?;
    let table = format!(
        "0 {} multipath 1 queue_if_no_path 0 1 1 round-robin 0 1 1 {majmin} 1",
        sectors.trim()
    );
    dmsetup(&["create", name, "--table", &table])?;
    dmsetup(&["message", name, "0", &format!("fail_path {majmin}")])?;
    let minor = dmsetup(&["info", "-c", "--noheadings", "-o", "minor", name])?;
    Ok((PathBuf::from(format!("/dev/dm-{}", minor.trim())), majmin))
}

/// Latencies of READ KEYS on `disk` through `via`: p50, p99, and whether
/// the helper stopped answering. A request unanswered after [`BLOCKED`]
/// ends the measurement: qemu-pr-helper (built with multipath support, as
/// Debian's is) calls libmpathpersist for a dm-multipath device on its
/// main thread, so a hung multipath map can block every client (D8).
fn measure(via: Via, disk: &Path) -> Result<(Duration, Duration, bool), String> {
    let socket = via
        .socket()
        .ok_or("isolation is measured through a helper")?;
    let dev = exec::open(disk, false)?;
    let mut lat = Vec::with_capacity(SAMPLES);
    let mut blocked = false;
    for _ in 0..SAMPLES {
        let t = Instant::now();
        let cdb = pr_in_cdb(sa_in::READ_KEYS, 8192);
        match exec::with_fd_timeout(socket, dev.as_fd(), &cdb, &[], BLOCKED) {
            Ok(o) if o.status == 0 => lat.push(t.elapsed()),
            Ok(o) => return Err(format!("READ KEYS failed: {}", o.show())),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                lat.push(t.elapsed());
                blocked = true;
                break;
            }
            Err(e) => return Err(format!("{socket}: {e}")),
        }
    }
    lat.sort_unstable();
    let n = lat.len();
    Ok((lat[n / 2], lat[(n * 99 / 100).min(n - 1)], blocked))
}

/// Runs the suite.
pub fn run(next_lun: &mut usize) {
    let (fast, slow) = match (lio::create(*next_lun), lio::create(*next_lun + 1)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return result("isolation/luns", Err(e)),
    };
    *next_lun += 2;
    let disk = fast.paths[0].block.clone();
    for via in [Via::Ours, Via::Reference] {
        let name = via.name();
        let idle = match measure(via, &disk) {
            Ok(m) => m,
            Err(e) => return result(&format!("isolation/{name}/idle"), Err(e)),
        };
        let map = format!("prh-hang-{name}");
        let (hung, majmin) = match hung_map(&map, &slow.paths[0].block) {
            Ok(h) => h,
            Err(e) => return result(&format!("isolation/{name}/hung-map"), Err(e)),
        };
        let finished = Arc::new(AtomicUsize::new(0));
        let hung_threads: Vec<_> = (0..HUNG_CLIENTS)
            .map(|_| {
                let hung = hung.clone();
                let finished = finished.clone();
                std::thread::spawn(move || {
                    let r = exec::run(via, &hung, &pr_in_cdb(sa_in::READ_KEYS, 8192), &[], false);
                    finished.fetch_add(1, Ordering::SeqCst);
                    r
                })
            })
            .collect();
        // Let every hung client's command reach the device.
        std::thread::sleep(Duration::from_millis(1000));
        let still_hung_before = HUNG_CLIENTS - finished.load(Ordering::SeqCst);
        let busy = measure(via, &disk);
        let still_hung_after = HUNG_CLIENTS - finished.load(Ordering::SeqCst);
        let released = dmsetup(&["message", &map, "0", &format!("reinstate_path {majmin}")]);
        let replies: Vec<_> = hung_threads.into_iter().map(|t| t.join()).collect();
        let _ = dmsetup(&["remove", "--force", &map]);
        let busy = match busy {
            Ok(m) => m,
            Err(e) => return result(&format!("isolation/{name}/busy"), Err(e)),
        };
        println!("FIGURE isolation-{name}-idle-p50-us {}", idle.0.as_micros());
        println!("FIGURE isolation-{name}-idle-p99-us {}", idle.1.as_micros());
        println!("FIGURE isolation-{name}-busy-p50-us {}", busy.0.as_micros());
        println!("FIGURE isolation-{name}-busy-p99-us {}", busy.1.as_micros());
        println!("FIGURE isolation-{name}-busy-blocked {}", u8::from(busy.2));
        result(
            &format!("isolation/{name}/device-really-hung"),
            if still_hung_before == HUNG_CLIENTS
                && still_hung_after == HUNG_CLIENTS
                && released.is_ok()
            {
                Ok(())
            } else {
                Err(format!(
                    "{still_hung_before}/{still_hung_after} of {HUNG_CLIENTS} still blocked; reinstate: {released:?}"
                ))
            },
        );
        let answered = replies.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        result(
            &format!("isolation/{name}/hung-requests-answered-after-release"),
            if answered == HUNG_CLIENTS {
                Ok(())
            } else {
                Err(format!(
                    "{answered} of {HUNG_CLIENTS} answered: {replies:?}"
                ))
            },
        );
        if via == Via::Ours {
            result(
                "isolation/pr-helper/sigterm-with-a-hung-map",
                sigterm_with_a_hung_map(&slow.paths[0].block),
            );
            result(
                "isolation/pr-helper/sgio-pool-bounded",
                sgio_pool_bounded(&slow.paths[0].block, &disk),
            );
            // The p99 of other clients' requests while four commands hang:
            // no worse than a few times the idle p99 (TCG timing noise),
            // and nowhere near "waiting for the device".
            let bound = (idle.1 * 5).max(Duration::from_millis(100));
            result(
                "isolation/pr-helper/not-slowed-by-a-hung-device",
                if busy.1 <= bound && !busy.2 {
                    Ok(())
                } else {
                    Err(format!(
                        "busy p99 {:?} > {bound:?} (idle p99 {:?}), blocked: {}",
                        busy.1, idle.1, busy.2
                    ))
                },
            );
        }
    }
}

/// SIGTERM while two commands hang on a multipath map with no usable path
/// (issue 22, item 9): how long until the process is gone (not only until
/// it logs "exiting"). D29 bounds shutdown at `--sgio-timeout` + 1 s; the
/// kernel's retry loop on a map without paths stops on a fatal signal, so
/// the threads leave the kernel at once. (A command stuck in the block
/// layer's uninterruptible wait on a path whose target stopped answering is
/// different: it keeps the pid until SCSI error handling ends; README,
/// D29.)
fn sigterm_with_a_hung_map(path: &Path) -> Result<(), String> {
    const SOCKET: &str = "/run/prh-sigterm.sock";
    const SGIO_TIMEOUT: u64 = 3;
    let (hung, majmin) = hung_map("prh-hang-sigterm", path)?;
    let mut helper = Command::new("/bin/pr-helper")
        .args(["-k", SOCKET, "--sgio-timeout", &SGIO_TIMEOUT.to_string()])
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| format!("start pr-helper: {e}"))?;
    if let Err(e) = crate::mpath::wait_for(SOCKET, Duration::from_secs(20), || {
        Path::new(SOCKET).exists()
    }) {
        let _ = helper.kill();
        return Err(e);
    }
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let hung = hung.clone();
            std::thread::spawn(move || {
                exec::run_socket(
                    SOCKET,
                    &hung,
                    &pr_in_cdb(sa_in::READ_KEYS, 8192),
                    &[],
                    false,
                )
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let start = Instant::now();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(helper.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = helper.wait().map_err(|e| format!("wait: {e}"));
    let gone = start.elapsed();
    let replies: Vec<_> = clients.into_iter().map(|t| t.join()).collect();
    let _ = dmsetup(&[
        "message",
        "prh-hang-sigterm",
        "0",
        &format!("reinstate_path {majmin}"),
    ]);
    let _ = dmsetup(&["remove", "--force", "prh-hang-sigterm"]);
    println!(
        "FIGURE isolation-sigterm-hung-map-gone-ms {}",
        gone.as_millis()
    );
    let bound = Duration::from_secs(SGIO_TIMEOUT + 1) + Duration::from_secs(2);
    if gone > bound {
        return Err(format!(
            "gone {gone:?} after SIGTERM, bound {bound:?} (--sgio-timeout {SGIO_TIMEOUT} + 1 s, + 2 s for TCG); {status:?}; {replies:?}"
        ));
    }
    Ok(())
}

/// `--sgio-threads 2` with two hung multipath maps: each map executes one
/// command (the bound per device is one with two threads, D29), which
/// takes both threads, so a request on a healthy disk waits for a thread
/// instead of starting a third; it is answered once one map gets its path
/// back. Real hung devices are needed here: on the host every fd that is
/// not a device counts as one device (a FUSE file can hold its ioctl for
/// ever), so stand-in files can no longer fill the pool.
fn sgio_pool_bounded(path: &Path, healthy: &Path) -> Result<(), String> {
    const SOCKET: &str = "/run/prh-pool.sock";
    let maps = ["prh-pool-a", "prh-pool-b"];
    let mut hung = Vec::new();
    for m in maps {
        hung.push(hung_map(m, path)?);
    }
    let reinstate =
        |m: &str, majmin: &str| dmsetup(&["message", m, "0", &format!("reinstate_path {majmin}")]);
    let mut helper = Command::new("/bin/pr-helper")
        .args(["-k", SOCKET, "--sgio-threads", "2"])
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| format!("start pr-helper: {e}"))?;
    let outcome = (|| {
        crate::mpath::wait_for(SOCKET, Duration::from_secs(20), || {
            Path::new(SOCKET).exists()
        })?;
        let clients: Vec<_> = hung
            .iter()
            .map(|(dev, _)| {
                let dev = dev.clone();
                std::thread::spawn(move || {
                    exec::run_socket(SOCKET, &dev, &pr_in_cdb(sa_in::READ_KEYS, 8), &[], false)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1000));
        let fd = exec::open(healthy, false)?;
        let cdb = pr_in_cdb(sa_in::READ_KEYS, 8);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let r = exec::with_fd_timeout(SOCKET, fd.as_fd(), &cdb, &[], Duration::from_secs(30));
            let _ = tx.send(r.map(|o| o.status).map_err(|e| e.to_string()));
        });
        let early = rx.recv_timeout(Duration::from_secs(2));
        let released = Instant::now();
        reinstate(maps[0], &hung[0].1)?;
        let late = rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| "the healthy disk's request was not answered after a thread came free")?;
        println!(
            "FIGURE isolation-pool-bounded-answered-after-release-ms {}",
            released.elapsed().as_millis()
        );
        reinstate(maps[1], &hung[1].1)?;
        let _ = waiter.join();
        let replies: Vec<_> = clients.into_iter().map(|t| t.join()).collect();
        if early.is_ok() {
            return Err(format!(
                "a third command ran while two threads were held: {early:?}"
            ));
        }
        if late != Ok(0) {
            return Err(format!("healthy disk: {late:?}"));
        }
        if !replies.iter().all(|r| matches!(r, Ok(Ok(_)))) {
            return Err(format!("hung maps' replies: {replies:?}"));
        }
        Ok(())
    })();
    for (m, (_, majmin)) in maps.iter().zip(&hung) {
        let _ = reinstate(m, majmin);
    }
    let _ = helper.kill();
    let _ = helper.wait();
    for m in maps {
        let _ = dmsetup(&["remove", "--force", m]);
    }
    outcome
}
