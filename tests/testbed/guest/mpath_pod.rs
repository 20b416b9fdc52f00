//! The multipath image as KubeVirt runs it (issue 21), against unstable's
//! multipathd (multipath-tools 0.15, which listens on the pathname socket
//! /run/multipathd.socket as every version from 0.12 does).
//!
//! KubeVirt's setup, imitated: virt-handler bind-mounts the host's
//! /run/multipathd.socket onto multipathd.socket in the shared directory
//! /var/run/kubevirt/daemons/pr, which belongs to QEMU's uid 107; the
//! pr-helper container (`RenderPrHelperContainer`) has its own network
//! namespace, the image's root file system and its own /run, and gets
//! exactly three host paths: /dev (HostToContainer), the shared directory
//! (same path, Bidirectional) and /etc/multipath (Bidirectional); it runs
//! `/entrypoint.sh -k /var/run/kubevirt/daemons/pr/pr-helper.sock`,
//! privileged, as root, with the image's environment.
//!
//! The root file system is the image's: its base tarball and its own files
//! (tests/testbed/build-pod-root.sh: what packaging/build-image.sh --mpath
//! builds the image from, with the test bed's multipath build as
//! /usr/bin/pr-helper), read-only on /dev/vda, mounted at /pod. The
//! container is a namespace rather than a runtime's (the test bed has none):
//! `unshare -m -n`, then what a runtime mounts for a privileged container
//! (a tmpfs on /run and /tmp, /proc, /sys) and the three host paths, then
//! `chroot /pod /entrypoint.sh -k ...`. Not mounted, as in KubeVirt: the
//! host's /run/udev, /etc/multipath.conf (the image's default is used).
//!
//! The pod is a subject of the flows suite (`pod`), and [`checks`] adds what
//! only the pod has: QEMU's uid in the pod cannot make multipathd do
//! anything, and a socket that uid plants in the shared directory while the
//! host's is not mounted gets nothing from pr-helper.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pr_helper::scsi::pr::sa_out;

use crate::mpath::{run, run_in, wait_for};
use crate::mpath_flows::{observe_keys, reset, send, Bed, Daemon, Subject};

/// Where the multipath image's root file system is mounted (read-only).
pub(crate) const POD_ROOT: &str = "/pod";
/// Its disk (tests/testbed.rs attaches it).
const POD_DISK: &str = "/dev/vda";
/// KubeVirt's shared directory (a real directory on the test-bed host:
/// its /var/run is not a link to /run; in the image it is, to /run).
pub(crate) const SHARED_DIR: &str = "/var/run/kubevirt/daemons/pr";
/// The pod helper's socket, in the shared directory.
pub(crate) const POD_SOCKET: &str = "/var/run/kubevirt/daemons/pr/pr-helper.sock";
/// Where virt-handler mounts the host's multipathd socket.
const SOCKET_IN_DIR: &str = "/var/run/kubevirt/daemons/pr/multipathd.socket";
/// unstable's multipathd's socket on the host (its /run is the host's).
const HOST_MULTIPATHD: &str = "/run/multipathd.socket";
/// The pod helper's standard error.
const STDERR: &str = "/tmp/pod-pr-helper.stderr";
/// QEMU's uid and gid in KubeVirt.
const QEMU: u32 = 107;
/// The key of the pod checks.
const KEY: u64 = 0x00c0_ffee_0000_0107;

/// The runner's hidden modes, run as uid 107 (main.rs): `--planted-socket
/// PATH` listens on PATH and prints `READ n` for every n bytes received;
/// `--mpathcmd PATH COMMAND` sends COMMAND to multipathd at PATH in
/// libmpathcmd's framing and prints the answer.
pub fn hidden_mode(args: &[String]) -> Option<i32> {
    match args {
        [mode, path] if mode == "--planted-socket" => Some(planted_socket(path)),
        [mode, path, command] if mode == "--mpathcmd" => Some(mpathcmd(path, command)),
        _ => None,
    }
}

fn planted_socket(path: &str) -> i32 {
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) => {
            println!("BIND-FAILED {e}");
            return 1;
        }
    };
    // Open to everyone, as a planted socket would be: pr-helper keeps only
    // CAP_SYS_RAWIO and CAP_SYS_ADMIN, so without this its connect(2)
    // would fail on the file's mode (EACCES) before the uid check.
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)) {
        println!("CHMOD-FAILED {e}");
        return 1;
    }
    println!("LISTENING");
    let _ = std::io::stdout().flush();
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        println!("READ {n} {:?}", String::from_utf8_lossy(&buf[..n]));
                        let _ = std::io::stdout().flush();
                    }
                }
            }
        });
    }
    0
}

fn mpathcmd(path: &str, command: &str) -> i32 {
    let r = (|| -> std::io::Result<String> {
        let mut s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut packet = command.as_bytes().to_vec();
        packet.push(0);
        s.write_all(&packet.len().to_ne_bytes())?;
        s.write_all(&packet)?;
        let mut len = [0u8; std::mem::size_of::<usize>()];
        s.read_exact(&mut len)?;
        let mut reply = vec![0u8; usize::from_ne_bytes(len).min(1 << 20)];
        s.read_exact(&mut reply)?;
        Ok(String::from_utf8_lossy(&reply)
            .trim_end_matches('\0')
            .to_string())
    })();
    match r {
        Ok(answer) => {
            println!("ANSWER {answer:?}");
            0
        }
        Err(e) => {
            println!("ERROR {e}");
            1
        }
    }
}

/// The runner itself as uid and gid 107, no supplementary groups.
fn as_qemu(args: &[&str]) -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| "/bin/testbed-guest".into());
    let mut c = Command::new(exe);
    // std drops the supplementary groups when a root parent sets a uid.
    c.args(args).uid(QEMU).gid(QEMU);
    c
}

/// virt-handler's mount of the host's multipathd socket in the shared
/// directory.
fn mount_host_socket() -> Result<(), String> {
    std::fs::write(SOCKET_IN_DIR, "").map_err(|e| format!("touch {SOCKET_IN_DIR}: {e}"))?;
    match run("mount", &["--bind", HOST_MULTIPATHD, SOCKET_IN_DIR]) {
        (true, _) => Ok(()),
        (false, out) => Err(format!("bind {HOST_MULTIPATHD}: {out}")),
    }
}

/// The shared directory as virt-handler and KubeVirt leave it, and the pod
/// started on it; returns the pod (its pid is pr-helper's: every step
/// execs the next).
pub(crate) fn start() -> Result<Child, String> {
    wait_for(HOST_MULTIPATHD, Duration::from_secs(30), || {
        std::fs::metadata(HOST_MULTIPATHD).is_ok_and(|m| m.file_type().is_socket())
    })?;
    std::fs::create_dir_all(SHARED_DIR).map_err(|e| format!("{SHARED_DIR}: {e}"))?;
    std::os::unix::fs::chown(SHARED_DIR, Some(QEMU), Some(QEMU))
        .map_err(|e| format!("chown {SHARED_DIR}: {e}"))?;
    // A shared mount, so that what virt-handler mounts there later reaches
    // the pod (Kubernetes' HostToContainer propagation).
    for args in [
        &["--bind", SHARED_DIR, SHARED_DIR][..],
        &["--make-shared", SHARED_DIR][..],
    ] {
        if let (false, out) = run("mount", args) {
            return Err(format!("mount {args:?}: {out}"));
        }
    }
    mount_host_socket()?;
    if !std::fs::read_to_string("/proc/mounts").is_ok_and(|m| m.contains(" /pod ")) {
        if let (false, out) = run("mount", &["-t", "ext4", "-o", "ro", POD_DISK, POD_ROOT]) {
            return Err(format!("mount {POD_DISK} on {POD_ROOT}: {out}"));
        }
    }
    // The image's /var/run is a link to /run, the pod's own tmpfs: the
    // shared directory goes there.
    let script = format!(
        "set -e
mount -t tmpfs -o mode=0755 pod-run {POD_ROOT}/run
mount -t tmpfs -o mode=1777 pod-tmp {POD_ROOT}/tmp
mount -t proc proc {POD_ROOT}/proc
mount -t sysfs sysfs {POD_ROOT}/sys
mount --rbind /dev {POD_ROOT}/dev
mkdir -p {POD_ROOT}/run/kubevirt/daemons/pr
mount --rbind {SHARED_DIR} {POD_ROOT}/run/kubevirt/daemons/pr
mount --rbind /etc/multipath {POD_ROOT}/etc/multipath
exec chroot {POD_ROOT} /entrypoint.sh -k {POD_SOCKET}"
    );
    let stderr = std::fs::File::create(STDERR).map_err(|e| format!("{STDERR}: {e}"))?;
    // The image's environment (Containerfile.mpath's ENV), nothing else.
    let mut pod = Command::new("/usr/bin/unshare")
        .args(["-m", "-n", "--propagation", "slave", "--", "/bin/sh", "-c"])
        .arg(&script)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("PR_HELPER_SOCKET", "/run/pr-helper/pr-helper.sock")
        .env("PR_HELPER_LOG_TARGET", "stderr")
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("unshare: {e}"))?;
    let up = wait_for("the pod helper's socket", Duration::from_secs(30), || {
        Path::new(POD_SOCKET).exists()
    });
    let ns = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    let netns = match (ns(pod.id()), ns(std::process::id())) {
        (Some(p), Some(r)) if p != r => Ok(()),
        (p, r) => Err(format!("network namespaces: pod {p:?}, runner {r:?}")),
    };
    if let Err(e) = up.and(netns) {
        let _ = pod.kill();
        let _ = pod.wait();
        return Err(format!("{e}; stderr: {}", stderr_text(0)));
    }
    Ok(pod)
}

fn stderr_text(from: usize) -> String {
    std::fs::read_to_string(STDERR)
        .map(|s| s.get(from..).unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// PR OUT through the pod helper (the flows suite's sender).
fn pod_out(bed: &Bed, sa: u8, key: u64, sa_key: u64) -> Result<(), String> {
    send(
        Subject::Helper { socket: POD_SOCKET },
        &bed.map,
        sa,
        0,
        key,
        sa_key,
    )
}

/// The file at the shared directory's multipathd.socket as the pod sees it
/// (through its root) is the host's `want`.
fn pod_sees(pod: u32, want: &str) -> Result<(), String> {
    // The image's /var/run is a link to /run, which would resolve in the
    // runner's root: the pod's own path after the link.
    let inside = format!("/proc/{pod}/root/run/kubevirt/daemons/pr/multipathd.socket");
    let id = |p: &str| {
        std::fs::metadata(p)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| format!("{p}: {e}"))
    };
    let (a, b) = (id(&inside)?, id(want)?);
    if a == b {
        Ok(())
    } else {
        Err(format!(
            "the pod's {SOCKET_IN_DIR} is {a:?}, not {want} ({b:?})"
        ))
    }
}

/// The pod's own checks, after the flows ran through it.
pub(crate) fn checks(
    pod: &Child,
    bed: &Bed,
    serial: &str,
    check: impl Fn(&str, Result<(), String>),
) {
    let pid = pod.id();
    check(
        "pod-uid-107-cannot-write-multipathd",
        uid_107(pid, bed, serial),
    );
    let planted = planted(pid, bed);
    // Whatever happened, virt-handler's mount is back.
    let _ = run("umount", &[SOCKET_IN_DIR]);
    let _ = std::fs::remove_file(SOCKET_IN_DIR);
    let restored = mount_host_socket();
    check("pod-planted-socket-refused", planted);
    check(
        "pod-registers-again-with-the-host-socket",
        restored.and_then(|_| registers(pid, bed, serial)),
    );
}

/// multipathd's client, and libmpathcmd's protocol, as uid 107 on the
/// socket virt-handler mounted: neither removes the map nor stops
/// multipathd.
fn uid_107(pod: u32, bed: &Bed, serial: &str) -> Result<(), String> {
    let pid = pod.to_string();
    let mut answers = Vec::new();
    let del = format!("del map {serial}");
    for command in [del.as_str(), "shutdown"] {
        // In the pod: its namespaces, its root, uid 107.
        let words: Vec<&str> = command.split(' ').collect();
        let (ok, out) = run_in(
            &[
                "nsenter",
                "-t",
                &pid,
                "-m",
                "-n",
                "--",
                "chroot",
                POD_ROOT,
                "/usr/bin/setpriv",
                "--reuid",
                "107",
                "--regid",
                "107",
                "--clear-groups",
            ],
            "/usr/sbin/multipathd",
            &words,
        );
        answers.push(format!("pod multipathd {command}: {ok} {}", out.trim()));
        // The same request in libmpathcmd's framing (multipathd's client
        // may refuse to run as non-root before it connects), on the
        // socket the pod reaches (a pathname socket: the network
        // namespace does not matter).
        let raw = as_qemu(&["--mpathcmd", SOCKET_IN_DIR, command])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|e| e.to_string());
        answers.push(format!("uid 107 {command}: {raw}"));
    }
    for a in &answers {
        println!("POD-UID-107 {a}");
    }
    std::thread::sleep(Duration::from_secs(1));
    let (ok, maps) = Daemon::Sid.cli(&["show", "maps"]);
    let listed = maps
        .lines()
        .any(|l| l.split_whitespace().next() == Some(serial));
    if ok && listed && bed.map.exists() {
        Ok(())
    } else {
        Err(format!(
            "multipathd answers {ok}, map listed {listed}, {} exists {}; {answers:?}",
            bed.map.display(),
            bed.map.exists()
        ))
    }
}

/// The host's socket unmounted, uid 107 listening in its place: a
/// REGISTER through the pod sends nothing there, and pr-helper says why.
fn planted(pod: u32, bed: &Bed) -> Result<(), String> {
    if let (false, out) = run("umount", &[SOCKET_IN_DIR]) {
        return Err(format!("umount {SOCKET_IN_DIR}: {out}"));
    }
    std::fs::remove_file(SOCKET_IN_DIR).map_err(|e| format!("rm {SOCKET_IN_DIR}: {e}"))?;
    let from = stderr_text(0).len();
    let mut fake = as_qemu(&["--planted-socket", SOCKET_IN_DIR])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("planted socket: {e}"))?;
    let r = (|| {
        let owner = wait_for("the planted socket", Duration::from_secs(10), || {
            std::fs::metadata(SOCKET_IN_DIR).is_ok_and(|m| m.file_type().is_socket())
        })
        .and_then(|_| {
            std::fs::metadata(SOCKET_IN_DIR)
                .map(|m| m.uid())
                .map_err(|e| e.to_string())
        })?;
        if owner != QEMU {
            return Err(format!("the planted socket belongs to uid {owner}"));
        }
        pod_sees(pod, SOCKET_IN_DIR)?;
        let answer = pod_out(bed, sa_out::REGISTER, 0, KEY);
        println!("POD-PLANTED REGISTER through the pod: {answer:?}");
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    })();
    let _ = fake.kill();
    let mut out = String::new();
    if let Some(mut stdout) = fake.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    let _ = fake.wait();
    let _ = std::fs::remove_file(SOCKET_IN_DIR);
    r?;
    let received: usize = BufReader::new(out.as_bytes())
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| {
            l.strip_prefix("READ ")?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    let stderr = stderr_text(from);
    for l in stderr.lines() {
        println!("POD-STDERR {l}");
    }
    // Whatever the REGISTER did to the device, undone.
    let _ = reset(&bed.source);
    match (received, stderr.contains("not root")) {
        (0, true) => Ok(()),
        (n, said) => Err(format!(
            "the planted socket received {n} bytes ({}); helper said \"not root\": {said}",
            out.trim()
        )),
    }
}

/// With virt-handler's mount back, REGISTER through the pod registers the
/// key on both paths and tells multipathd (getprkey), CLEAR removes it.
fn registers(pod: u32, bed: &Bed, serial: &str) -> Result<(), String> {
    pod_sees(pod, HOST_MULTIPATHD)?;
    reset(&bed.source)?;
    pod_out(bed, sa_out::REGISTER, 0, KEY)?;
    let keys = observe_keys(&bed.source.sg)?;
    let (_, prkey) = Daemon::Sid.cli(&["getprkey", "map", serial]);
    pod_out(bed, sa_out::CLEAR, KEY, 0)?;
    let after = observe_keys(&bed.source.sg)?;
    let want = format!("{KEY:x}");
    if keys[..2] == [Some(KEY), Some(KEY)]
        && prkey.to_lowercase().contains(&want)
        && after == [None, None, None]
    {
        Ok(())
    } else {
        Err(format!(
            "keys after REGISTER {keys:x?}, multipathd's prkey {:?}, after CLEAR {after:x?}",
            prkey.trim()
        ))
    }
}
