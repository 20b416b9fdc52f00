//! The multipath image's multipathd relay (packaging/mpath-image/
//! multipathd-relay.pl), run on the host as the image runs it: listening on
//! an abstract name, forwarding to a pathname socket. A stand-in for
//! multipathd at that path records what reaches it and answers "ok".
//!
//! multipathd runs every command of a root peer (including "shutdown" and
//! "del map"); the relay runs as root, so whatever it forwards is root's.
//! Each test here failed with the relay before these checks: it forwarded
//! any peer's bytes, to whatever socket was at the path, without limit.
//! Needs root (peer credentials of other uids, setpriv), as CI runs it.

mod common;

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::shared_tempdir;

const RELAY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/packaging/mpath-image/multipathd-relay.pl"
);
/// QEMU's uid in KubeVirt, which owns the shared directory.
const QEMU_UID: &str = "107";

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn unique_name() -> String {
    format!(
        "prh-relay-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// A multipathd stand-in: records each framed command, answers "ok".
struct Upstream {
    path: PathBuf,
    commands: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Upstream {
    fn start() -> Upstream {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("multipathd.socket");
        let listener = UnixListener::bind(&path).unwrap();
        let commands = Arc::new(Mutex::new(Vec::new()));
        let seen = commands.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    while let Some(cmd) = read_frame(&mut conn) {
                        seen.lock().unwrap().push(
                            String::from_utf8_lossy(&cmd)
                                .trim_end_matches('\0')
                                .to_string(),
                        );
                        if conn.write_all(&frame(b"ok\n\0")).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Upstream {
            path,
            commands,
            _dir: dir,
        }
    }

    fn commands(&self) -> Vec<String> {
        self.commands.lock().unwrap().clone()
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u64).to_ne_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn read_frame(s: &mut UnixStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u64::from_ne_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

/// The relay, listening on a fresh abstract name.
struct Relay {
    child: Child,
    name: String,
}

impl Relay {
    fn start(target: &Path) -> Relay {
        let name = unique_name();
        let child = Command::new("perl")
            .arg(RELAY)
            .arg(target)
            .arg(format!("@{name}"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("perl");
        let relay = Relay { child, name };
        let deadline = Instant::now() + Duration::from_secs(10);
        while relay.connect().is_err() {
            assert!(Instant::now() < deadline, "the relay did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        relay
    }

    fn connect(&self) -> std::io::Result<UnixStream> {
        let addr = SocketAddr::from_abstract_name(self.name.as_bytes())?;
        let s = UnixStream::connect_addr(&addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(s)
    }

    /// One command as root: the reply, or None if the connection ended.
    fn command(&self, cmd: &str) -> Option<Vec<u8>> {
        let mut s = self.connect().ok()?;
        s.write_all(&frame(format!("{cmd}\0").as_bytes())).ok()?;
        read_frame(&mut s)
    }

    fn stderr(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut e = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut e);
        }
        e
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs perl as uid 107 with `script` (Socket imported), returning stdout.
fn as_qemu(script: &str, args: &[&str]) -> Child {
    Command::new("setpriv")
        .args(["--reuid", QEMU_UID, "--regid", QEMU_UID, "--clear-groups"])
        .args(["perl", "-MSocket", "-e", script])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv")
}

#[test]
fn commands_libmpathpersist_sends_are_relayed_with_their_replies() {
    let up = Upstream::start();
    let relay = Relay::start(&up.path);
    for cmd in [
        "getprstatus map mpatha",
        "setprstatus map mpatha",
        "setprstatus map mpatha pathlist \"8:16 8:32\"",
        "unsetprstatus map mpatha",
        "setprkey map mpatha key 0x123abc",
        "unsetprkey map mpatha",
        "getprhold map mpatha",
        "setprhold map mpatha",
        "unsetprhold map mpatha",
    ] {
        assert_eq!(relay.command(cmd), Some(b"ok\n\0".to_vec()), "{cmd}");
    }
    // Several commands on one connection, each checked.
    let mut s = relay.connect().unwrap();
    for _ in 0..3 {
        s.write_all(&frame(b"getprkey map mpathb\0")).unwrap();
        assert_eq!(read_frame(&mut s), Some(b"ok\n\0".to_vec()));
    }
    assert_eq!(up.commands().len(), 12);
}

#[test]
fn other_commands_never_reach_multipathd() {
    let up = Upstream::start();
    let relay = Relay::start(&up.path);
    for cmd in [
        "shutdown",
        "del map mpatha",
        "show maps",
        "getprstatus map mpatha\nshutdown",
        "setprkey map mpatha key 1 ; shutdown extra\0shutdown",
    ] {
        assert_eq!(relay.command(cmd), None, "{cmd:?} was answered");
    }
    // An allowed command after a refused one on the same connection: the
    // connection is gone.
    let mut s = relay.connect().unwrap();
    s.write_all(&frame(b"shutdown\0")).unwrap();
    let _ = s.write_all(&frame(b"getprstatus map mpatha\0"));
    assert_eq!(read_frame(&mut s), None);
    assert_eq!(up.commands(), Vec::<String>::new());
    let log = relay.stderr();
    assert!(log.contains("refused the command \"shutdown\""), "{log}");
}

#[test]
fn peers_other_than_root_are_refused() {
    let up = Upstream::start();
    let relay = Relay::start(&up.path);
    let script = r#"
        $SIG{PIPE} = 'IGNORE';
        socket(S, AF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
        connect(S, pack_sockaddr_un("\0" . $ARGV[0])) or die "connect: $!";
        syswrite(S, pack("Q", 24) . "getprstatus map mpatha\0\0");
        # End of file, or a reset (the relay closed with our bytes unread).
        my $n = sysread(S, my $buf, 100);
        print $n ? "reply" : "none";
    "#;
    let out = as_qemu(script, &[&relay.name]).wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "none",
        "uid 107 got a reply"
    );
    assert_eq!(up.commands(), Vec::<String>::new());
    // Root still is served.
    assert_eq!(
        relay.command("getprstatus map mpatha"),
        Some(b"ok\n\0".to_vec())
    );
    let log = relay.stderr();
    assert!(log.contains("refused a peer with uid 107"), "{log}");
}

#[test]
fn only_a_multipathd_running_as_root_is_reached() {
    // The socket file is root's, but the process behind it is uid 107's (a
    // compromised QEMU that replaced the socket in the shared directory
    // and had the file's owner look right, or won a race with the check).
    let dir = shared_tempdir();
    let path = dir.path().join("multipathd.socket");
    let script = r#"
        socket(L, AF_UNIX, SOCK_STREAM, 0) or die;
        bind(L, pack_sockaddr_un($ARGV[0])) or die "bind: $!";
        listen(L, 5) or die;
        $| = 1; print "listening\n";
        while (accept(my $c, L)) { my $n = sysread($c, my $b, 100); print "GOT $b\n" if $n; }
    "#;
    let mut fake = as_qemu(script, &[path.to_str().unwrap()]);
    let mut line = [0u8; 10];
    fake.stdout.as_mut().unwrap().read_exact(&mut line).unwrap();
    std::os::unix::fs::lchown(&path, Some(0), Some(0)).unwrap();
    let relay = Relay::start(&path);
    assert_eq!(relay.command("getprstatus map mpatha"), None);
    let log = relay.stderr();
    let _ = fake.kill();
    let mut got = String::new();
    let _ = fake.stdout.take().unwrap().read_to_string(&mut got);
    let _ = fake.wait();
    assert!(!got.contains("GOT"), "the fake multipathd received: {got}");
    assert!(log.contains("is served by uid 107, not root"), "{log}");

    // A socket file owned by uid 107: the relay does not start.
    let up = Upstream::start();
    std::os::unix::fs::lchown(&up.path, Some(107), Some(107)).unwrap();
    let out = Command::new("perl")
        .arg(RELAY)
        .arg(&up.path)
        .arg(format!("@{}", unique_name()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("is owned by uid 107, not root; not starting"),
        "{e}"
    );
    // Nor does it when the target is still missing after the wait.
    let out = Command::new("perl")
        .arg(RELAY)
        .arg(dir.path().join("absent.socket"))
        .arg(format!("@{}", unique_name()))
        .env("MULTIPATHD_RELAY_WAIT", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("No such file or directory; not starting"), "{e}");
}

#[test]
fn a_target_that_appears_after_the_start_is_waited_for() {
    // KubeVirt bind-mounts the host's socket into the shared directory; the
    // pod may start first.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("multipathd.socket");
    let name = unique_name();
    let mut child = Command::new("perl")
        .arg(RELAY)
        .arg(&path)
        .arg(format!("@{name}"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "gave up at once");
    // The stand-in appears at that path.
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            if read_frame(&mut conn).is_some() {
                let _ = conn.write_all(&frame(b"ok\n\0"));
            }
        }
    });
    let relay = Relay {
        child: Command::new("true").spawn().unwrap(),
        name,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let reply = loop {
        if let Some(r) = relay.command("getprstatus map mpatha") {
            break r;
        }
        assert!(Instant::now() < deadline, "the relay did not start serving");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(reply, b"ok\n\0".to_vec());
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn connections_are_bounded() {
    let up = Upstream::start();
    let relay = Relay::start(&up.path);
    // Sixteen open connections (the bound), each served once.
    let mut open: Vec<UnixStream> = (0..16)
        .map(|_| {
            let mut s = relay.connect().unwrap();
            s.write_all(&frame(b"getprstatus map mpatha\0")).unwrap();
            assert_eq!(read_frame(&mut s), Some(b"ok\n\0".to_vec()));
            s
        })
        .collect();
    // The seventeenth is closed at once.
    let mut extra = relay.connect().unwrap();
    let _ = extra.write_all(&frame(b"getprstatus map mpatha\0"));
    assert_eq!(read_frame(&mut extra), None, "a 17th connection was served");
    // One closes: a new connection is served again.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if relay.command("getprstatus map mpatha").is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection served after one closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(open);
    let log = relay.stderr();
    assert!(log.contains("16 already open"), "{log}");
}
