//! The scenario runner inside the test-bed VM (built as a static musl
//! example, `testbed-guest`, and started by the VM's /init). It prints one
//! line per result, which the host-side test (tests/testbed.rs) collects:
//!
//!   RESULT PASS <name>
//!   RESULT FAIL <name> <why>
//!   FIGURE <name> <value>
//!
//! Arguments name the suites to run.

mod devices;
mod exec;
mod faults;
mod isolation;
mod lio;
mod migrate;
mod mpath;
mod mpath_flows;
mod mpath_many;
mod mpath_paths;
mod mpath_pod;
mod nested;
mod scripts;
mod tools;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Processes a suite started (daemons, helpers, QEMUs), killed and reaped
/// when it goes out of scope, the last started first (a helper before the
/// multipathd it talks to).
pub struct Children(pub Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in self.0.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn main() {
    let suites: Vec<String> = std::env::args().skip(1).collect();
    if let Some(code) = mpath_pod::hidden_mode(&suites) {
        std::process::exit(code);
    }
    let mut next_lun = 0;
    // Every pr-helper this runner starts must apply its Landlock ruleset
    // (a start-up error otherwise): the suites run sandboxed as shipped,
    // on every kernel the test bed boots.
    std::env::set_var("PR_HELPER_REQUIRE_LANDLOCK", "true");
    println!("FIGURE landlock-abi {}", landlock_abi());
    let helpers = match start_helpers() {
        Ok(h) => h,
        Err(e) => {
            result("helpers-start", Err(e));
            println!("TESTBED-DONE");
            return;
        }
    };
    for suite in &suites {
        let started = Instant::now();
        match suite.as_str() {
            "matrix" => matrix(&mut next_lun),
            "isolation" => isolation::run(&mut next_lun),
            "faults" => faults::run(&mut next_lun),
            "tools" => tools::run_suite(&mut next_lun),
            "nested" => nested::run(&mut next_lun),
            "mpath" => mpath::run_suite(&mut next_lun),
            "devices" => devices::run_suite(&mut next_lun),
            "flows" => mpath_flows::run_suite(&mut next_lun),
            "migrate" => migrate::run_suite(&mut next_lun),
            "systemd" => {
                // A LUN with two paths for the multipath unit under
                // systemd; init switches to systemd's root after this.
                let r = lio::create(next_lun).map(|_| ());
                next_lun += 1;
                let ok = r.is_ok();
                result("systemd-lio-lun", r);
                if ok {
                    result(
                        "systemd-switch-root-requested",
                        std::fs::write("/switch-root", "").map_err(|e| e.to_string()),
                    );
                }
            }
            other => result(&format!("suite-{other}"), Err("unknown suite".into())),
        }
        println!(
            "FIGURE suite-{suite}-seconds {:.1}",
            started.elapsed().as_secs_f64()
        );
    }
    stop_helpers(helpers);
    println!("TESTBED-DONE");
}

/// Prints one result line.
pub fn result(name: &str, r: Result<(), String>) {
    match r {
        Ok(()) => println!("RESULT PASS {name}"),
        Err(why) => println!("RESULT FAIL {name} {}", why.replace('\n', " | ")),
    }
}

fn start_helpers() -> Result<[Child; 2], String> {
    let ours = Command::new("/bin/pr-helper")
        .args(["-k", exec::OURS_SOCKET])
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("start pr-helper: {e}"))?;
    let reference = Command::new("/usr/bin/qemu-pr-helper")
        .args(["-k", exec::REFERENCE_SOCKET])
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("start qemu-pr-helper: {e}"))?;
    for socket in [exec::OURS_SOCKET, exec::REFERENCE_SOCKET] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !Path::new(socket).exists() {
            if Instant::now() > deadline {
                return Err(format!("{socket} did not appear"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok([ours, reference])
}

fn stop_helpers(helpers: [Child; 2]) {
    for (name, mut child) in ["pr-helper", "qemu-pr-helper"].into_iter().zip(helpers) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let status = child.wait();
        if name == "pr-helper" {
            result(
                "pr-helper-clean-exit",
                match status {
                    Ok(s) if s.success() => Ok(()),
                    other => Err(format!("{other:?}")),
                },
            );
        }
    }
}

fn matrix(next_lun: &mut usize) {
    for script in scripts::all() {
        for kind in [scripts::Kind::Block, scripts::Kind::Sg] {
            for (name, r) in scripts::run(&script, kind, next_lun) {
                result(&name, r);
            }
        }
    }
}

/// The kernel's Landlock ABI version (0: none).
fn landlock_abi() -> i64 {
    // LANDLOCK_CREATE_RULESET_VERSION: no ruleset, the ABI version.
    const VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag
    // the call only returns a number.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            VERSION,
        )
    };
    abi.max(0)
}
