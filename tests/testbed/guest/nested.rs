//! The whole stack: a QEMU guest inside the test-bed guest, its disk
//! `scsi-block` on the LIO disk with `file.pr-manager` pointing at
//! pr-helper. The inner guest runs sg_persist; its results are checked from
//! outside, through the other initiator, with sg_persist on the device.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::exec::OURS_SOCKET;
use crate::{lio, result};

/// Runs the suite.
pub fn run(next_lun: &mut usize) {
    let lun = match lio::create(*next_lun) {
        Ok(l) => l,
        Err(e) => return result("nested/lun", Err(e)),
    };
    *next_lun += 1;
    let disk = lun.paths[0].block.display().to_string();
    let other = lun.paths[1].sg.display().to_string();
    let started = Instant::now();
    let child = Command::new("/usr/bin/qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "256M",
            "-smp",
            "1",
            "-nodefaults",
            "-nographic",
            "-no-reboot",
        ])
        .args([
            "-serial",
            "stdio",
            "-kernel",
            "/boot/vmlinuz",
            "-initrd",
            "/boot/inner.cpio.gz",
        ])
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .args([
            "-object",
            &format!("pr-manager-helper,id=pr0,path={OURS_SOCKET}"),
        ])
        .args([
            "-blockdev",
            &format!("driver=host_device,node-name=disk0,filename={disk},pr-manager=pr0"),
        ])
        .args([
            "-device",
            "virtio-scsi-pci,id=scsi0",
            "-device",
            "scsi-block,drive=disk0,bus=scsi0.0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return result("nested/qemu-start", Err(e.to_string())),
    };
    // The inner guest takes minutes under nested TCG; give it ten.
    let limit = Duration::from_secs(600);
    let output = loop {
        match child.try_wait() {
            Ok(Some(_)) => break child.wait_with_output(),
            Ok(None) if started.elapsed() > limit => {
                let _ = child.kill();
                break child.wait_with_output();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(500)),
            Err(e) => return result("nested/qemu-wait", Err(e.to_string())),
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    println!("FIGURE nested-guest-seconds {seconds:.0}");
    let output = match output {
        Ok(o) => o,
        Err(e) => return result("nested/qemu-output", Err(e.to_string())),
    };
    let console = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    for line in console
        .lines()
        .filter(|l| l.starts_with("INNER-") || l.starts_with("  ") || l.starts_with("PR"))
    {
        println!("NESTED {}", line.trim_end());
    }
    if !console.contains("INNER-DONE") {
        let tail: Vec<&str> = console.lines().rev().take(30).collect();
        return result(
            "nested/inner-guest-completed",
            Err(format!(
                "after {seconds:.0} s: qemu stderr: {stderr} | console tail: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )),
        );
    }
    result("nested/inner-guest-completed", Ok(()));
    // Every sg_persist in the inner guest succeeded.
    let exits: Vec<&str> = console
        .lines()
        .filter_map(|l| l.strip_prefix("INNER-EXIT "))
        .collect();
    result(
        "nested/inner-commands-succeeded",
        if exits.len() == 5 && exits.iter().all(|e| e.trim() == "0") {
            Ok(())
        } else {
            Err(format!("exit codes {exits:?}"))
        },
    );
    result(
        "nested/inner-sees-its-registration",
        if console.contains("0x1234abcd") && console.contains("Key=0x1234abcd") {
            Ok(())
        } else {
            Err("inner READ KEYS/RESERVATION did not show 0x1234abcd".into())
        },
    );
    // From outside, through the other initiator: the key is registered and
    // the reservation (type 5) is held with it.
    let sg = |args: &[&str]| {
        Command::new("sg_persist")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let keys = sg(&["-n", "-i", "-k", &other]);
    let resv = sg(&["-n", "-i", "-r", &other]);
    result(
        "nested/visible-on-the-lun-from-outside",
        if keys.contains("0x1234abcd")
            && resv.contains("Key=0x1234abcd")
            && resv.contains("Write Exclusive, registrants only")
        {
            Ok(())
        } else {
            Err(format!("keys: {keys} | reservation: {resv}"))
        },
    );
}
