//! The VM test bed: Debian's 6.1 kernel under `qemu-system-x86_64 -accel
//! tcg`, LIO (the kernel's SCSI target) exporting file-backed LUNs through
//! two tcm_loop initiators each, pr-helper (static musl, from this tree) and
//! Debian's qemu-pr-helper side by side, and a scenario runner
//! (tests/testbed/guest) that prints one line per result.
//!
//! The LIO suites also run on an arm64 guest: Debian's 6.1 arm64 kernel
//! under `qemu-system-aarch64 -machine virt -cpu max -accel tcg`, with
//! pr-helper and the scenario runner built for aarch64-unknown-linux-musl
//! and Debian's arm64 qemu-pr-helper, sg3-utils and dmsetup
//! ([`lio_test_bed_aarch64`]).
//!
//! Needs the cache filled by `tests/run setup` (tests/testbed/fetch.sh and
//! tests/testbed/fetch-arm64.sh); the tests fail with a clear message
//! otherwise. VMs run one at a time.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// One VM at a time: two TCG guests on two cores only slow each other down.
static VM: Mutex<()> = Mutex::new(());

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn cache() -> PathBuf {
    let base = std::env::var("PRH_TEST_CACHE").unwrap_or_else(|_| "/var/cache/pr-helper".into());
    PathBuf::from(base).join("testbed")
}

/// Builds the guest's static pr-helper and scenario runner for `target`
/// (release, locked) and returns the directory they are in.
fn build_for_guest(target: &str, envs: &[(&str, &str)]) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root())
        .envs(envs.iter().copied())
        .args(["build", "--release", "--locked", "--target", target])
        .args(["--bin", "pr-helper", "--example", "testbed-guest"])
        .status()
        .expect("cargo build (guest)");
    assert!(
        status.success(),
        "static {target} build failed (rustup target add {target})"
    );
    root().join("target").join(target).join("release")
}

/// Runs tests/testbed/build-initramfs.sh for `initramfs`, with the guest
/// binaries in `out` and qemu-pr-helper and dmsetup at the paths the
/// guest's root has them; `envs` select the variant.
fn build_initramfs(initramfs: &Path, out: &Path, dmsetup: &str, envs: &[(&str, &std::ffi::OsStr)]) {
    let status = Command::new(root().join("tests/testbed/build-initramfs.sh"))
        .envs(envs.iter().copied())
        .arg(initramfs)
        .arg(out.join("pr-helper"))
        .arg(out.join("examples/testbed-guest"))
        .arg("/usr/bin/qemu-pr-helper")
        .arg(dmsetup)
        .status()
        .expect("build-initramfs.sh");
    assert!(
        status.success(),
        "initramfs build failed: {}",
        initramfs.display()
    );
}

struct Artifacts {
    kernel: PathBuf,
    initramfs: PathBuf,
    /// The same plus QEMU, the kernel and an inner initramfs.
    nested_initramfs: PathBuf,
    /// The same plus pr-helper built with `--features mpath` and
    /// multipath-tools.
    mpath_initramfs: PathBuf,
    /// Where the guest's static binaries are.
    guest_out: PathBuf,
    /// The multipath build of pr-helper.
    mpath_helper: PathBuf,
}

/// Builds the static binaries and the initramfs once per test process.
fn artifacts() -> &'static Artifacts {
    static A: OnceLock<Artifacts> = OnceLock::new();
    A.get_or_init(|| {
        let cache = cache();
        assert!(
            cache.join("root.done").exists(),
            "test-bed cache {} is missing: run `tests/run setup` (tests/testbed/fetch.sh) first",
            cache.display()
        );
        let kver = std::fs::read_to_string(cache.join("kernel-version")).unwrap();
        let kernel = cache.join(format!("root/boot/vmlinuz-{}", kver.trim()));
        assert!(kernel.exists(), "{} missing", kernel.display());
        for bin in [
            "/usr/bin/qemu-system-x86_64",
            "/usr/bin/qemu-pr-helper",
            "/usr/sbin/dmsetup",
        ] {
            assert!(
                Path::new(bin).exists(),
                "{bin} missing: run `tests/run setup`"
            );
        }
        let out = build_for_guest("x86_64-unknown-linux-musl", &[]);
        // The multipath build links glibc's libmpathpersist; a debug build is
        // enough for the guest and much quicker to make.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(root())
            .args([
                "build",
                "--locked",
                "--features",
                "mpath",
                "--target",
                "x86_64-unknown-linux-gnu",
                "--bin",
                "pr-helper",
            ])
            .status()
            .expect("cargo build (mpath)");
        assert!(
            status.success(),
            "multipath build failed (is multipath-tools installed? run `tests/run setup`)"
        );
        let mpath_helper = root().join("target/x86_64-unknown-linux-gnu/debug/pr-helper");
        let build = |file: &str, nested: bool, mpath: bool| {
            let path = root().join("target").join(file);
            let nested = std::ffi::OsStr::new(if nested { "1" } else { "0" });
            let mut envs = vec![("TESTBED_NESTED", nested)];
            if mpath {
                envs.push(("TESTBED_MPATH_HELPER", mpath_helper.as_os_str()));
            }
            build_initramfs(&path, &out, "/usr/sbin/dmsetup", &envs);
            path
        };
        Artifacts {
            kernel,
            initramfs: build("testbed-initramfs.cpio.gz", false, false),
            // With the multipath build and the unstable root: QEMU 11's
            // live migration runs on multipath maps too.
            nested_initramfs: build("testbed-nested-initramfs.cpio.gz", true, true),
            mpath_initramfs: build("testbed-mpath-initramfs.cpio.gz", false, true),
            guest_out: out.clone(),
            mpath_helper: mpath_helper.clone(),
        }
    })
}

/// Runs `script IMAGE BINARY` (with the guests' multipath build) to make
/// the ext4 image `target/FILE`, and returns its path.
fn build_disk(script: &str, file: &str) -> PathBuf {
    let img = root().join("target").join(file);
    let status = Command::new(root().join("tests/testbed").join(script))
        .arg(&img)
        .arg(&artifacts().mpath_helper)
        .status()
        .expect(script);
    assert!(status.success(), "{script} failed: {}", img.display());
    img
}

/// The multipath image's root filesystem (its base tarball and its own
/// files, with the guests' multipath build as /usr/bin/pr-helper) as an
/// ext4 image, made once per test process.
fn pod_root() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| build_disk("build-pod-root.sh", "testbed-pod-root.img"))
}

/// The systemd boot's root (Debian 12 with systemd and multipath-tools,
/// the multipath build, the units as the RPM installs them) as ext4.
fn systemd_root() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| build_disk("build-systemd-root.sh", "testbed-systemd-root.img"))
}

/// A current Debian kernel (`suite` "trixie" or "sid", fetched by
/// tests/testbed/fetch-kernels.sh) and the multipath initramfs built with
/// its modules.
fn kernel_artifacts(suite: &str) -> (&'static Path, &'static Path) {
    static TRIXIE: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    static SID: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    let cell = match suite {
        "trixie" => &TRIXIE,
        "sid" => &SID,
        other => panic!("no kernel suite {other}"),
    };
    let (kernel, initramfs) = cell.get_or_init(|| {
        let a = artifacts();
        let kcache = cache().with_file_name(format!("testbed-kernel-{suite}"));
        let image = std::fs::read_to_string(kcache.join("kernel-image")).unwrap_or_else(|e| {
            panic!(
                "{}: {e}: run `tests/run setup` (tests/testbed/fetch-kernels.sh) first",
                kcache.display()
            )
        });
        let kernel = PathBuf::from(image.trim());
        assert!(kernel.exists(), "{} missing", kernel.display());
        let initramfs = root().join(format!("target/testbed-kernel-{suite}-initramfs.cpio.gz"));
        build_initramfs(
            &initramfs,
            &a.guest_out,
            "/usr/sbin/dmsetup",
            &[
                ("TESTBED_MPATH_HELPER", a.mpath_helper.as_os_str()),
                ("TESTBED_KERNEL", kcache.as_os_str()),
            ],
        );
        (kernel, initramfs)
    });
    (kernel, initramfs)
}

/// The arm64 test bed: its kernel and the LIO initramfs (aarch64 static
/// pr-helper and scenario runner, Debian's arm64 userland).
struct Arm64Artifacts {
    kernel: PathBuf,
    initramfs: PathBuf,
}

fn arm64_artifacts() -> &'static Arm64Artifacts {
    static A: OnceLock<Arm64Artifacts> = OnceLock::new();
    A.get_or_init(|| {
        let cache = cache().with_file_name("testbed-arm64");
        assert!(
            cache.join("root.done").exists(),
            "arm64 test-bed cache {} is missing: run `tests/run setup` (tests/testbed/fetch-arm64.sh) first",
            cache.display()
        );
        let kver = std::fs::read_to_string(cache.join("kernel-version")).unwrap();
        let kernel = cache.join(format!("root/boot/vmlinuz-{}", kver.trim()));
        assert!(kernel.exists(), "{} missing", kernel.display());
        assert!(
            Path::new("/usr/bin/qemu-system-aarch64").exists(),
            "/usr/bin/qemu-system-aarch64 missing: run `tests/run setup` (qemu-system-arm)"
        );
        // Linked with rust-lld, as packaging/build-static.sh links the
        // released aarch64 binary (no cross gcc needed).
        let out = build_for_guest(
            "aarch64-unknown-linux-musl",
            &[("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld")],
        );
        let initramfs = root().join("target/testbed-aarch64-initramfs.cpio.gz");
        // dmsetup's path inside the arm64 root of the cache.
        build_initramfs(
            &initramfs,
            &out,
            "/sbin/dmsetup",
            &[("TESTBED_ARCH", std::ffi::OsStr::new("aarch64"))],
        );
        Arm64Artifacts { kernel, initramfs }
    })
}

/// What a guest run printed.
struct Run {
    console: String,
    results: Vec<(String, bool, String)>,
    figures: Vec<(String, String)>,
    seconds: f64,
}

impl Run {
    /// Fails the test (showing every failure and the console tail) unless
    /// every result passed and there are at least `min_results`.
    fn assert_all_passed(&self, min_results: usize) {
        let failed: Vec<_> = self.results.iter().filter(|(_, ok, _)| !ok).collect();
        let tail: String = {
            let lines: Vec<&str> = self.console.lines().collect();
            lines[lines.len().saturating_sub(60)..].join("\n")
        };
        assert!(
            self.console.contains("TESTBED-DONE"),
            "the guest did not finish ({:.0} s); console tail:\n{tail}",
            self.seconds
        );
        // What the helpers themselves said about trouble (a seccomp kill, a
        // warning about a client) explains most failures.
        let helper_lines: Vec<&str> = self
            .console
            .lines()
            .filter(|l| {
                ["warning:", "error:", "fatal:"]
                    .iter()
                    .any(|level| l.contains(&format!("pr-helper: {level}")))
            })
            .take(20)
            .collect();
        assert!(
            failed.is_empty(),
            "{} of {} test-bed results failed:\n{}\nhelper log lines:\n{}\n",
            failed.len(),
            self.results.len(),
            failed
                .iter()
                .map(|(n, _, why)| format!("FAIL {n}: {}", cap(why, 2000)))
                .collect::<Vec<_>>()
                .join("\n"),
            helper_lines.join("\n")
        );
        assert!(
            self.results.len() >= min_results,
            "only {} results (expected at least {min_results}); console tail:\n{tail}",
            self.results.len()
        );
    }

    fn figure(&self, name: &str) -> Option<&str> {
        self.figures
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// At most `max` bytes of `s` (on a char boundary), marked when cut.
fn cap(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}... ({} bytes)", &s[..i], s.len()),
        None => s.to_string(),
    }
}

/// Boots the test bed with `suites` and collects its report; a guest that
/// runs past `limit` is killed and its console kept for the failure message.
/// Which initramfs to boot.
#[derive(Clone, Copy)]
enum Image {
    Plain,
    Nested,
    Mpath,
    /// The multipath initramfs with the modules of a current Debian kernel
    /// (tests/testbed/fetch-kernels.sh: "trixie" or "sid"), booting it.
    Kernel(&'static str),
    /// The arm64 guest (LIO suites only).
    Aarch64,
    /// The multipath initramfs, then systemd as PID 1 from a second root
    /// (tests/testbed/build-systemd-root.sh).
    Systemd,
}

fn boot(suites: &str, image: Image, memory: &str, limit: Duration) -> Run {
    let (qemu, machine, console, kernel, initramfs): (&str, &[&str], &str, &Path, &Path) =
        match image {
            Image::Aarch64 => {
                let a = arm64_artifacts();
                // -cpu max with QEMU's own pointer-authentication algorithm,
                // quicker to emulate than the architected one (QARMA5) that
                // the kernel uses all the time: boot to /init 8.7 s instead
                // of 10-11 s here.
                (
                    "/usr/bin/qemu-system-aarch64",
                    &["-machine", "virt", "-cpu", "max,pauth-impdef=on"],
                    "ttyAMA0",
                    &a.kernel,
                    &a.initramfs,
                )
            }
            Image::Kernel(suite) => {
                let (kernel, initramfs) = kernel_artifacts(suite);
                (
                    "/usr/bin/qemu-system-x86_64",
                    &[],
                    "ttyS0",
                    kernel,
                    initramfs,
                )
            }
            _ => {
                let a = artifacts();
                let initramfs = match image {
                    Image::Nested => &a.nested_initramfs,
                    Image::Mpath | Image::Systemd => &a.mpath_initramfs,
                    _ => &a.initramfs,
                };
                (
                    "/usr/bin/qemu-system-x86_64",
                    &[],
                    "ttyS0",
                    &a.kernel,
                    initramfs,
                )
            }
        };
    // The multipath boot's devices suite needs a disk numbered in the
    // extended range (259:N) to hand its number to a partition: an NVMe
    // namespace on QEMU's null driver (no file; reads give zeros).
    let nvme: &[&str] = match image {
        Image::Mpath | Image::Kernel(_) => &[
            "-blockdev",
            "driver=null-co,node-name=nvme0,size=16777216",
            "-device",
            "nvme,serial=prh-nvme,drive=nvme0",
        ],
        _ => &[],
    };
    // The multipath image's root filesystem for the pod of the flows suite
    // (tests/testbed/build-pod-root.sh), read-only on /dev/vda.
    let pod_root = match image {
        Image::Mpath | Image::Kernel(_) => vec![
            "-drive".to_string(),
            format!(
                "file={},if=none,id=pod,format=raw,readonly=on",
                pod_root().display()
            ),
            "-device".to_string(),
            "virtio-blk-pci,drive=pod".to_string(),
        ],
        // A copy-on-write view: systemd writes to its root, the file stays.
        Image::Systemd => vec![
            "-drive".to_string(),
            format!(
                "file={},if=none,id=sd,format=raw,snapshot=on",
                systemd_root().display()
            ),
            "-device".to_string(),
            "virtio-blk-pci,drive=sd".to_string(),
        ],
        _ => Vec::new(),
    };
    let _one_at_a_time = VM.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let mut child = Command::new(qemu)
        .args(machine)
        .args([
            "-accel",
            "tcg",
            "-m",
            memory,
            "-smp",
            "2",
            "-nodefaults",
            "-nographic",
            "-no-reboot",
        ])
        .args(nvme)
        .args(&pod_root)
        .args(["-serial", "stdio", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!(
            "console={console} panic=-1 quiet prh.args={suites}"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(qemu);
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let mut killed = false;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let console = reader.join().unwrap();
    let seconds = started.elapsed().as_secs_f64();
    // Kept for a closer look after a failure.
    let arch = match image {
        Image::Aarch64 => "aarch64-".to_string(),
        Image::Kernel(suite) => format!("kernel-{suite}-"),
        _ => String::new(),
    };
    let log =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("testbed-{arch}{suites}.console"));
    if std::fs::write(&log, &console).is_ok() {
        eprintln!("console: {}", log.display());
    }
    if killed {
        panic!(
            "test-bed guest hung: killed after {seconds:.0} s; console:\n{}",
            console
                .lines()
                .rev()
                .take(120)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let mut results = Vec::new();
    let mut figures = Vec::new();
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("RESULT ") {
            let (verdict, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            let (name, why) = rest.split_once(' ').unwrap_or((rest, ""));
            results.push((name.to_string(), verdict == "PASS", why.to_string()));
        } else if let Some(rest) = line.strip_prefix("FIGURE ") {
            let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
            figures.push((name.to_string(), value.to_string()));
        }
    }
    eprintln!(
        "test bed [{arch}{suites}]: {} results ({} passed) in {seconds:.1} s",
        results.len(),
        results.iter().filter(|r| r.1).count()
    );
    for (n, v) in &figures {
        eprintln!("  {n} = {v}");
    }
    Run {
        console,
        results,
        figures,
        seconds,
    }
}

/// One boot: the persistent-reservation matrix on LIO (every scenario
/// through pr-helper, through qemu-pr-helper and directly, on sd and sg
/// nodes), the operator tools against sg_persist, isolation from a hung
/// device, and LUNs that disappear under open fds and outstanding requests.
#[test]
fn lio_test_bed() {
    let run = boot(
        "matrix,tools,isolation,faults",
        Image::Plain,
        "1G",
        Duration::from_secs(900),
    );
    run.assert_all_passed(185);
    for figure in [
        "isolation-pr-helper-idle-p99-us",
        "isolation-pr-helper-busy-p99-us",
        "isolation-qemu-pr-helper-idle-p99-us",
        "isolation-qemu-pr-helper-busy-p99-us",
    ] {
        assert!(run.figure(figure).is_some(), "figure {figure} missing");
    }
}

/// The same suites as [`lio_test_bed`] (the whole LIO persistent-reservation
/// matrix, the tools, isolation and faults) on an arm64 guest: the aarch64
/// musl pr-helper against Debian's arm64 qemu-pr-helper and sg_persist on
/// LIO under Debian's arm64 kernel (qemu-system-aarch64, TCG).
#[test]
fn lio_test_bed_aarch64() {
    let run = boot(
        "matrix,tools,isolation,faults",
        Image::Aarch64,
        "1G",
        Duration::from_secs(1200),
    );
    assert!(
        run.console.contains("TESTBED-ARCH aarch64"),
        "the guest is not aarch64"
    );
    run.assert_all_passed(185);
    for figure in [
        "isolation-pr-helper-idle-p99-us",
        "isolation-pr-helper-busy-p99-us",
        "isolation-qemu-pr-helper-idle-p99-us",
        "isolation-qemu-pr-helper-busy-p99-us",
    ] {
        assert!(run.figure(figure).is_some(), "figure {figure} missing");
    }
}

/// Every LIO and multipath suite in one boot of a current Debian kernel
/// (`suite`: trixie's 6.12, or unstable's newest), with Landlock enforcing
/// (the guest's helpers run with `require_landlock`, and the multipath ones
/// need Landlock ABI 5's IoctlDev right for the path devices
/// libmpathpersist opens after the sandbox).
fn current_kernel(suite: &'static str) {
    let run = boot(
        "matrix,tools,isolation,faults,mpath,devices,flows",
        Image::Kernel(suite),
        "1G",
        Duration::from_secs(1800),
    );
    run.assert_all_passed(185 + 21 + 8 + 2 * 16 + 4 + 27);
    assert!(
        run.figure("landlock-abi")
            .is_some_and(|abi| abi.parse::<u32>().is_ok_and(|n| n >= 5)),
        "Landlock ABI {:?}: want 5 or later on a current kernel",
        run.figure("landlock-abi")
    );
}

/// [`current_kernel`] on Debian 13's kernel (6.12).
#[test]
fn current_kernel_debian_13() {
    current_kernel("trixie");
}

/// [`current_kernel`] on Debian unstable's kernel.
#[test]
fn current_kernel_debian_unstable() {
    current_kernel("sid");
}

/// The whole stack: a QEMU guest inside the test-bed guest with its disk
/// `scsi-block` on LIO through pr-helper; the inner guest's sg_persist
/// results are checked from the outer guest. Then `migrate`: QEMU 11's
/// live migration of the inner guest's reservation (`migrate-pr`), from
/// one initiator port to another and from one multipath map to another
/// host's map of the same LUN, each QEMU with its own pr-helper.
#[test]
fn nested_guest_through_pr_helper() {
    let run = boot(
        "nested,migrate",
        Image::Nested,
        "2G",
        Duration::from_secs(1800),
    );
    run.assert_all_passed(5 + 2 * 7);
    assert!(run.figure("nested-guest-seconds").is_some());
    for figure in ["migrate-single-path-seconds", "migrate-map-seconds"] {
        assert!(run.figure(figure).is_some(), "figure {figure} missing");
    }
}

/// Multipath: a dm-multipath map over two LIO paths with multipathd, and
/// pr-helper built with `--features mpath` going through libmpathpersist
/// (READ FULL STATUS with 42 registrations through SG_IO, D14). Then the
/// `devices` suite (D27, D28): a partition and dm-linear maps on a LIO
/// disk, through the plain and the multipath build. Then `flows`: QEMU 11's
/// reservation hand-over and failed-path flows on a map, through bookworm's
/// libmpathpersist and Debian unstable's, each compared with its own
/// mpathpersist.
#[test]
fn multipath_map_through_libmpathpersist() {
    let run = boot(
        "mpath,devices,flows",
        Image::Mpath,
        "1G",
        Duration::from_secs(600),
    );
    run.assert_all_passed(21 + 8 + 2 * 16 + 4 + 27);
    assert_eq!(
        run.figure("mpath-full-status-registrations"),
        Some("42"),
        "READ FULL STATUS must see 42 registrations"
    );
    assert!(run.figure("mpath-slow-library-call-ms").is_some());
    for figure in [
        "mpath-hang-requests-blocked",
        "mpath-hang-other-map-p99-us",
        "mpath-hang-path-device-p99-us",
        "mpath-hang-sigterm-exit-ms",
    ] {
        assert!(run.figure(figure).is_some(), "figure {figure} missing");
    }
    // The test bed's libmpathpersist is multipath-tools 0.9.4: the helper
    // says once, at start-up, which flows that library gets wrong (issue
    // 20; the reservation rework of 0.13).
    let warned = run
        .console
        .matches("libmpathpersist is older than multipath-tools 0.13: these flows")
        .count();
    assert!(warned >= 1, "no start-up warning about the old library");
}

/// The multipath variant's unit under systemd as PID 1 (issue 21): the
/// RPM's pr-helper.socket and .service with the pr-helper-multipath drop-in
/// start by socket activation with the identity the drop-in gives (uid 0,
/// CAP_SYS_RAWIO and CAP_SYS_ADMIN only) and serve a REGISTER on a real
/// two-path map (multipathd and udev under systemd make the map), answered
/// as mpathpersist answers on the same map, with the key on both paths and
/// in multipathd (tests/testbed/systemd-root/prh-test.sh). It failed before
/// the drop-in's ProcSubset=all: the unit hid /proc/devices from
/// libdevmapper and the helper exited at start.
#[test]
fn multipath_unit_under_systemd() {
    let run = boot("systemd", Image::Systemd, "1G", Duration::from_secs(600));
    run.assert_all_passed(10);
}
