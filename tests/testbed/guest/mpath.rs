//! Multipath: a dm-multipath map over the two tcm_loop paths of one LUN,
//! multipathd running with `reservation_key file`, and pr-helper built with
//! `--features mpath` serving PR commands on the map through
//! libmpathpersist. Results are checked on each path with sg_persist and
//! against mpathpersist on the same map.
//!
//! No udevd runs in the guest: libmultipath only considers devices udev has
//! initialised, so minimal udev database entries are written for the two
//! paths (the test-bed notes describe the technique), and device-mapper is
//! told not to wait for udev (DM_DISABLE_UDEV=1).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pr_helper::scsi::pr::{self, flags, pr_in_cdb, pr_out_cdb, sa_in, sa_out, ParamList};

use crate::exec::{self, Outcome, Via};
use crate::{lio, result, Children};

const SOCKET: &str = "/run/pr-helper-mpath.sock";
const KEY: u64 = 0x00c0_ffee_0000_0001;
const KEY2: u64 = 0x00c0_ffee_0000_0002;

pub const MULTIPATH_CONF: &str = r#"defaults {
    user_friendly_names no
    find_multipaths no
    reservation_key file
    polling_interval 1
    max_polling_interval 2
    no_path_retry queue
}
blacklist {
    devnode "^(ram|loop|dm-|sr|zram)"
}
"#;

/// `program` as a command, run through `prefix` (empty, or `chroot ROOT`
/// for the unstable root's programs), with device-mapper told not to wait
/// for udev.
pub fn command(prefix: &[&str], program: &str) -> Command {
    let mut c = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    };
    c.env("DM_DISABLE_UDEV", "1");
    c
}

pub fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    run_in(&[], cmd, args)
}

/// [`run`] through `prefix` ([`command`]).
pub fn run_in(prefix: &[&str], cmd: &str, args: &[&str]) -> (bool, String) {
    match command(prefix, cmd).args(args).output() {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        ),
        Err(e) => (false, format!("{cmd}: {e}")),
    }
}

fn rdev(path: &Path) -> Result<(u32, u32), String> {
    use std::os::unix::fs::MetadataExt;
    let r = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .rdev();
    Ok((libc::major(r), libc::minor(r)))
}

/// Writes the udev database entries libmultipath needs for `dev`.
pub fn udev_entry(dev: &Path, serial: &str) -> Result<(), String> {
    let (maj, min) = rdev(dev)?;
    std::fs::create_dir_all("/run/udev/data").map_err(|e| e.to_string())?;
    // ID_WWN: multipath blacklists devices without an ID_WWN or
    // SCSI_IDENT_* property (its built-in blacklist_exceptions).
    let entry = format!("I:1000000\nE:ID_SERIAL={serial}\nE:ID_WWN={serial}\nE:ID_BUS=scsi\nE:ID_TYPE=disk\nE:DEVTYPE=disk\n");
    std::fs::write(format!("/run/udev/data/b{maj}:{min}"), entry).map_err(|e| e.to_string())
}

/// Finds the /dev/dm-N of the multipath map named `name`.
fn map_device(name: &str) -> Option<PathBuf> {
    let (ok, out) = run(
        "dmsetup",
        &["info", "-c", "--noheadings", "-o", "minor", name],
    );
    ok.then(|| PathBuf::from(format!("/dev/dm-{}", out.trim())))
}

pub fn persist_direct(dev: &Path, args: &[&str]) -> String {
    let mut full = vec!["-n"];
    full.extend_from_slice(args);
    full.push(dev.to_str().unwrap_or_default());
    run("sg_persist", &full).1
}

fn via_helper(dev: &Path, cdb: &[u8; 16], params: &[u8]) -> Result<Outcome, String> {
    exec::run_socket(SOCKET, dev, cdb, params, false)
}

fn register(dev: &Path, old: u64, new: u64) -> Result<Outcome, String> {
    let p = ParamList {
        key: old,
        sa_key: new,
        ..Default::default()
    }
    .encode();
    via_helper(dev, &pr_out_cdb(sa_out::REGISTER, 0, 0, p.len() as u32), &p)
}

fn out(dev: &Path, sa: u8, ty: u8, key: u64, sa_key: u64) -> Result<Outcome, String> {
    let p = ParamList {
        key,
        sa_key,
        ..Default::default()
    }
    .encode();
    via_helper(dev, &pr_out_cdb(sa, 0, ty, p.len() as u32), &p)
}

fn check(name: &str, r: Result<(), String>) {
    result(&format!("mpath/{name}"), r);
}

fn good(o: Result<Outcome, String>) -> Result<Outcome, String> {
    match o {
        Ok(o) if o.status == 0 => Ok(o),
        Ok(o) => Err(o.show()),
        Err(e) => Err(e),
    }
}

/// Counts the registrations with `key` that sg_persist shows through `path`.
fn registrations(path: &Path, key: u64) -> usize {
    persist_direct(path, &["-i", "-k"])
        .lines()
        .filter(|l| l.trim() == format!("0x{key:x}"))
        .count()
}

/// Starts multipathd in the foreground (`-d -s`), the program at `path` run
/// through `prefix` (empty, or `chroot ROOT`).
pub fn start_multipathd(path: &str, prefix: &[&str]) -> Result<Child, String> {
    command(prefix, path)
        .args(["-d", "-s", "-v2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("multipathd: {e}"))
}

/// Makes the multipath map of the paths with udev serial `serial` and waits
/// until multipathd has adopted it; returns its /dev/dm-N.
pub fn make_map(serial: &str) -> Result<PathBuf, String> {
    let mut map = None;
    let found = wait_for("multipath map", Duration::from_secs(30), || {
        let _ = run("/sbin/multipath", &["-v0"]);
        map = map_device(serial);
        map.is_some()
    });
    if let Err(e) = found {
        let (_, why) = run("/sbin/multipath", &["-v3"]);
        for line in why.lines() {
            println!("MPATH-DEBUG {line}");
        }
        return Err(format!("{e} (multipath -v3 output above)"));
    }
    let map = map.unwrap_or_default();
    // The map was made by the multipath command; multipathd adopts it a
    // little later, and until then libmpathpersist cannot hand it the
    // registered key ("failed to set prkey for multipathd"): REGISTER fails.
    // Without udev, multipathd learns of the map only at its next look
    // round (slow under a loaded host): ask it to adopt the map as well.
    wait_for(
        "multipathd to adopt the map",
        Duration::from_secs(60),
        || {
            let (ok, maps) = run("/sbin/multipathd", &["show", "maps"]);
            let adopted = ok
                && maps
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(serial));
            if !adopted {
                let _ = run("/sbin/multipathd", &["add", "map", serial]);
            }
            adopted
        },
    )?;
    Ok(map)
}

/// Polls `f` every 200 ms until it holds, for at most `limit`.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() > deadline {
            return Err(format!("{what}: not after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// D33 (issue 20): `-u nobody -g disk` with multipath on used to start,
/// then fail on its first multipath request (libdevmapper: "Permission
/// denied" on /dev/mapper/control) and take the helper down. Now it does
/// not start: exit status 1, a message saying why, no socket.
fn unprivileged_refused() -> Result<(), String> {
    const UNPRIV: &str = "/run/prh-mpath-unpriv.sock";
    let mut child = Command::new("/bin/pr-helper-mpath")
        .args(["-k", UNPRIV, "-u", "65534", "-g", "6"])
        .env("DM_DISABLE_UDEV", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("pr-helper-mpath: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(UNPRIV);
            return Err("still running after 20 s: it started instead of refusing".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    let listening = Path::new(UNPRIV).exists();
    let _ = std::fs::remove_file(UNPRIV);
    if status.code() == Some(1)
        && stderr.contains("multipath needs uid 0")
        && stderr.contains("-u/--user 65534")
        && !listening
    {
        Ok(())
    } else {
        Err(format!(
            "{status:?}, socket {}, stderr: {stderr}",
            if listening { "created" } else { "absent" }
        ))
    }
}

/// Runs the suite.
pub fn run_suite(next_lun: &mut usize) {
    if let Err(e) = suite(next_lun) {
        check("setup", Err(e));
    }
}

fn suite(next_lun: &mut usize) -> Result<(), String> {
    let index = *next_lun;
    let lun = lio::create(index)?;
    // A second, plain LUN for requests that must not wait for the library.
    let plain = lio::create(index + 1)?;
    *next_lun += 2;
    let paths = [lun.paths[0].block.clone(), lun.paths[1].block.clone()];
    let serial = format!("prhtestbed{index:04}");
    for p in &paths {
        udev_entry(p, &serial)?;
    }
    std::fs::create_dir_all("/etc/multipath").map_err(|e| e.to_string())?;
    std::fs::write("/etc/multipath.conf", MULTIPATH_CONF).map_err(|e| e.to_string())?;
    std::fs::write("/etc/multipath/prkeys", "").map_err(|e| e.to_string())?;
    let multipathd = start_multipathd("/sbin/multipathd", &[])?;
    // pr-helper with multipath support, as the RPM's drop-in runs it (D33):
    // uid 0 with only CAP_SYS_RAWIO and CAP_SYS_ADMIN in the bounding set
    // (so in its permitted set after exec).
    let mut helper = Command::new("/bin/pr-helper-mpath");
    helper.args(["-k", SOCKET]).env("DM_DISABLE_UDEV", "1");
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut helper, || {
            // <linux/capability.h>: CAP_SYS_RAWIO 17, CAP_SYS_ADMIN 21.
            for cap in 0..64 {
                if cap == 17 || cap == 21 {
                    continue;
                }
                if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 {
                    let e = std::io::Error::last_os_error();
                    // EINVAL: beyond the kernel's last capability.
                    if e.raw_os_error() != Some(libc::EINVAL) {
                        return Err(e);
                    }
                }
            }
            Ok(())
        });
    }
    let helper = helper
        .spawn()
        .map_err(|e| format!("pr-helper-mpath: {e}"))?;
    // multipathd first: `daemons.0[0]`.
    let daemons = Children(vec![multipathd, helper]);
    let map = make_map(&serial)?;
    wait_for("pr-helper-mpath socket", Duration::from_secs(20), || {
        Path::new(SOCKET).exists()
    })?;
    let (_, topology) = run("/sbin/multipath", &["-ll", &serial]);
    println!("MPATH topology: {}", topology.replace('\n', " | "));
    check(
        "map-has-two-paths",
        if topology.matches("active").count() >= 2 {
            Ok(())
        } else {
            Err(topology.clone())
        },
    );

    check("unprivileged-refused-at-start-up", unprivileged_refused());

    // REGISTER through the helper registers the key on both I_T nexuses.
    check("register", good(register(&map, 0, KEY)).map(|_| ()));
    check(
        "register-reaches-both-paths",
        match (registrations(&paths[0], KEY), registrations(&paths[1], KEY)) {
            (2, 2) => Ok(()),
            (a, b) => Err(format!(
                "path A sees {a}, path B {b} registrations of the key (want 2 and 2)"
            )),
        },
    );
    // READ KEYS through the helper: exactly the allocation length (reference
    // behaviour on multipath), keys as the device reports them, and the same
    // keys mpathpersist reports.
    let keys = good(via_helper(&map, &pr_in_cdb(sa_in::READ_KEYS, 512), &[]));
    check(
        "read-keys",
        keys.and_then(|o| {
            let k = pr::decode::keys(&o.data).map_err(|e| e.to_string())?;
            let mp = run(
                "/sbin/mpathpersist",
                &["-i", "-k", map.to_str().unwrap_or_default()],
            )
            .1;
            if o.data.len() == 512
                && k.keys == vec![KEY, KEY]
                && mp.to_lowercase().contains(&format!("{KEY:x}"))
            {
                Ok(())
            } else {
                Err(format!(
                    "{} keys {:x?}; mpathpersist: {mp}",
                    o.data.len(),
                    k.keys
                ))
            }
        }),
    );
    // READ FULL STATUS (D14: the reference refuses it on multipath).
    let full = good(via_helper(
        &map,
        &pr_in_cdb(sa_in::READ_FULL_STATUS, 8192),
        &[],
    ));
    check(
        "read-full-status",
        full.and_then(|o| {
            let f = pr::decode::full_status(&o.data).map_err(|e| e.to_string())?;
            let direct = exec::run(
                Via::Direct,
                &lun.paths[0].sg,
                &pr_in_cdb(sa_in::READ_FULL_STATUS, 8192),
                &[],
                false,
            )?;
            let d = pr::decode::full_status(&direct.data).map_err(|e| e.to_string())?;
            let tids: Vec<_> = f
                .registrations
                .iter()
                .map(|r| (r.key, r.transport_id.clone(), r.relative_target_port))
                .collect();
            let direct_tids: Vec<_> = d
                .registrations
                .iter()
                .map(|r| (r.key, r.transport_id.clone(), r.relative_target_port))
                .collect();
            if f.registrations.len() == 2 && tids == direct_tids {
                Ok(())
            } else {
                Err(format!("helper {tids:x?} vs device {direct_tids:x?}"))
            }
        }),
    );
    check(
        "report-capabilities",
        good(via_helper(
            &map,
            &pr_in_cdb(sa_in::REPORT_CAPABILITIES, 8),
            &[],
        ))
        .map(|_| ()),
    );
    // RESERVE, READ RESERVATION (helper and mpathpersist agree), RELEASE.
    check(
        "reserve",
        good(out(&map, sa_out::RESERVE, 5, KEY, 0)).map(|_| ()),
    );
    let resv = good(via_helper(
        &map,
        &pr_in_cdb(sa_in::READ_RESERVATION, 8192),
        &[],
    ));
    check(
        "read-reservation",
        resv.and_then(|o| {
            let r = pr::decode::reservation(&o.data).map_err(|e| e.to_string())?;
            let mp = run(
                "/sbin/mpathpersist",
                &["-i", "-r", map.to_str().unwrap_or_default()],
            )
            .1;
            let direct = persist_direct(&paths[1], &["-i", "-r"]);
            if r.holder == Some((KEY, 0, 5))
                && mp.to_lowercase().contains(&format!("{KEY:x}"))
                && direct.contains(&format!("Key=0x{KEY:x}"))
            {
                Ok(())
            } else {
                Err(format!(
                    "{:?}; mpathpersist: {mp}; sg_persist: {direct}",
                    r.holder
                ))
            }
        }),
    );
    check(
        "preempt-own-key",
        good(out(&map, sa_out::PREEMPT, 5, KEY, KEY)).map(|_| ()),
    );
    check(
        "release",
        good(out(&map, sa_out::RELEASE, 5, KEY, 0)).map(|_| ()),
    );
    check(
        "released",
        if persist_direct(&paths[0], &["-i", "-r"]).contains("NO reservation") {
            Ok(())
        } else {
            Err("reservation still held".into())
        },
    );
    // D2: more than 32 TransportIDs is an error, not a dead helper.
    let many = ParamList {
        key: KEY,
        sa_key: KEY,
        flags: flags::SPEC_I_PT,
        transport_ids: vec![pr::sas_transport_id(0x5001405bbbbbbbb1); 33],
    }
    .encode();
    let r = via_helper(
        &map,
        &pr_out_cdb(sa_out::REGISTER, 0, 0, many.len() as u32),
        &many,
    );
    check(
        "33-transport-ids-refused",
        match r {
            Ok(o) if o.sense_code() == Some((5, 0x26, 0)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    // D14: REGISTER AND MOVE is not supported by the library.
    let mv = pr::MoveParamList {
        key: KEY,
        sa_key: KEY2,
        relative_target_port: 1,
        transport_id: pr::sas_transport_id(0x5001405bbbbbbbb1),
        ..Default::default()
    }
    .encode();
    let r = via_helper(
        &map,
        &pr_out_cdb(sa_out::REGISTER_AND_MOVE, 0, 5, mv.len() as u32),
        &mv,
    );
    check(
        "register-and-move-refused",
        match r {
            Ok(o) if o.sense_code() == Some((5, 0x24, 0)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    check(
        "helper-alive",
        good(via_helper(&map, &pr_in_cdb(sa_in::READ_KEYS, 64), &[])).map(|_| ()),
    );

    // PREEMPT of the own key left only the issuing path registered;
    // REGISTER AND IGNORE registers both again.
    let p = ParamList {
        sa_key: KEY,
        ..Default::default()
    }
    .encode();
    check(
        "register-ignore-both-paths-again",
        good(via_helper(
            &map,
            &pr_out_cdb(sa_out::REGISTER_AND_IGNORE, 0, 0, 24),
            &p,
        ))
        .and_then(|_| {
            match (registrations(&paths[0], KEY), registrations(&paths[1], KEY)) {
                (2, 2) => Ok(()),
                (a, b) => Err(format!("{a} / {b} registrations")),
            }
        }),
    );

    // A path that goes away and comes back: a key registered while path A
    // is offline reaches path A when multipathd reinstates it.
    let state = |p: &Path| {
        PathBuf::from(format!(
            "/sys/block/{}/device/state",
            p.file_name().unwrap_or_default().to_string_lossy()
        ))
    };
    std::fs::write(state(&paths[0]), "offline\n").map_err(|e| format!("offline: {e}"))?;
    let _ = wait_for("path A failed", Duration::from_secs(20), || {
        run("/sbin/multipath", &["-ll", &serial])
            .1
            .contains("failed")
    });
    check(
        "register-new-key-with-a-path-down",
        good(register(&map, KEY, KEY2)).map(|_| ()),
    );
    std::fs::write(state(&paths[0]), "running\n").map_err(|e| format!("running: {e}"))?;
    check(
        "path-back-gets-the-key",
        wait_for(
            "key on the reinstated path",
            Duration::from_secs(60),
            || {
                let s = persist_direct(&lun.paths[0].sg, &["-i", "-s"]);
                // Path A's own registration (relative port 1) carries the new key.
                s.split("Key=")
                    .filter(|d| d.contains("Relative port address: 0x1"))
                    .any(|d| d.starts_with(&format!("0x{KEY2:x}")))
            },
        ),
    );

    // D8: a library call that hangs (multipathd stopped: the library waits
    // for its answer) delays nobody: plain SG_IO requests through the same
    // helper go on.
    let pid = daemons.0[0].id() as i32;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    );
    let map2 = map.clone();
    let slow = std::thread::spawn(move || {
        let t = Instant::now();
        let r = register(&map2, KEY2, KEY);
        (t.elapsed(), r)
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut worst = Duration::ZERO;
    let mut count = 0;
    let measure_until = Instant::now() + Duration::from_millis(1500);
    let mut errors = Vec::new();
    while Instant::now() < measure_until {
        let t = Instant::now();
        match via_helper(&plain.paths[0].block, &pr_in_cdb(sa_in::READ_KEYS, 64), &[]) {
            Ok(o) if o.status == 0 => {}
            other => errors.push(format!("{other:?}")),
        }
        worst = worst.max(t.elapsed());
        count += 1;
    }
    let slow_still_running = !slow.is_finished();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGCONT,
    );
    let (slow_time, slow_result) = slow
        .join()
        .map_err(|_| "slow thread panicked".to_string())?;
    println!(
        "FIGURE mpath-slow-library-call-ms {}",
        slow_time.as_millis()
    );
    println!("FIGURE mpath-plain-requests-during-slow-call {count}");
    println!("FIGURE mpath-plain-worst-latency-us {}", worst.as_micros());
    check(
        "slow-library-call-delays-nobody",
        if slow_still_running
            && errors.is_empty()
            && worst < Duration::from_millis(500)
            && count > 10
        {
            Ok(())
        } else {
            Err(format!(
                "library call still running: {slow_still_running}, {count} requests, worst {worst:?}, errors {errors:?}, slow call {slow_time:?} {slow_result:?}"
            ))
        },
    );
    // Clean up: CLEAR removes every registration on both paths.
    let _ = wait_for("multipathd back", Duration::from_secs(20), || {
        run("/sbin/multipathd", &["show", "maps"]).0
    });
    let clear_key = match via_helper(&map, &pr_in_cdb(sa_in::READ_KEYS, 64), &[]) {
        Ok(o) => pr::decode::keys(&o.data)
            .ok()
            .and_then(|k| k.keys.first().copied())
            .unwrap_or(KEY),
        Err(_) => KEY,
    };
    check(
        "clear",
        good(out(&map, sa_out::CLEAR, 0, clear_key, 0)).map(|_| ()),
    );
    check(
        "cleared-on-both-paths",
        match (
            registrations(&paths[0], KEY) + registrations(&paths[0], KEY2),
            registrations(&paths[1], KEY) + registrations(&paths[1], KEY2),
        ) {
            (0, 0) => Ok(()),
            (a, b) => Err(format!("{a} and {b} registrations left")),
        },
    );
    // D14, D28: READ FULL STATUS with 42 registrations, O_PATH on the map
    // (before the map is made to hang below).
    crate::mpath_many::run(index, &map, &lun, SOCKET);
    let plain_paths = [plain.paths[0].block.clone(), plain.paths[1].block.clone()];
    hung_map(&map, &serial, &paths, index + 1, &plain_paths, state)
}

/// D29: the map with `no_path_retry queue` (queue_if_no_path) and both its
/// paths offline, several PR requests sent to it through a second
/// pr-helper; meanwhile PR commands to a second multipath map (over the
/// plain LUN) and to one of its path devices are timed; then SIGTERM.
fn hung_map(
    map: &Path,
    serial: &str,
    paths: &[PathBuf; 2],
    index: usize,
    plain_paths: &[PathBuf; 2],
    state: impl Fn(&Path) -> PathBuf,
) -> Result<(), String> {
    const HANG_SOCKET: &str = "/run/pr-helper-hang.sock";
    let serial2 = format!("prhtestbed{index:04}");
    for p in plain_paths {
        udev_entry(p, &serial2)?;
    }
    let mut map2 = None;
    wait_for("second multipath map", Duration::from_secs(30), || {
        let _ = run("/sbin/multipath", &["-v0"]);
        map2 = map_device(&serial2);
        map2.is_some()
    })?;
    // READ KEYS through the library needs no prkey, so multipathd need not
    // have adopted this map.
    let map2 = map2.unwrap_or_default();
    let mut helper = Command::new("/bin/pr-helper-mpath")
        .args(["-k", HANG_SOCKET, "--sgio-timeout", "3"])
        .env("DM_DISABLE_UDEV", "1")
        .spawn()
        .map_err(|e| format!("pr-helper-mpath: {e}"))?;
    wait_for("second helper socket", Duration::from_secs(20), || {
        Path::new(HANG_SOCKET).exists()
    })?;
    for p in paths {
        std::fs::write(state(p), "offline\n").map_err(|e| format!("offline: {e}"))?;
    }
    let failed = wait_for("both paths failed", Duration::from_secs(30), || {
        run("/sbin/multipath", &["-ll", serial])
            .1
            .lines()
            .filter(|l| l.contains("failed"))
            .count()
            >= 2
    });
    let hung: Vec<_> = (0..4)
        .map(|_| {
            let map = map.to_path_buf();
            std::thread::spawn(move || {
                exec::run_socket(
                    HANG_SOCKET,
                    &map,
                    &pr_in_cdb(sa_in::READ_KEYS, 64),
                    &[],
                    false,
                )
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    // How many of them are still waiting. Here libmpathpersist answers a
    // request on a map without a usable path at once (it finds no active
    // path), so this is usually 0; what blocks on such a map is SG_IO on
    // the map itself (the LIO boot's isolation suite, and the TEST UNIT
    // READY probe, which runs on the SG_IO pool under the map's bound).
    let blocked = hung.iter().filter(|t| !t.is_finished()).count();
    let (mut on_map2, mut on_path, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..100 {
        let (dev, lat) = if i % 2 == 0 {
            (&map2, &mut on_map2)
        } else {
            (&plain_paths[0], &mut on_path)
        };
        let t = Instant::now();
        match exec::run_socket(
            HANG_SOCKET,
            dev,
            &pr_in_cdb(sa_in::READ_KEYS, 64),
            &[],
            false,
        ) {
            Ok(o) if o.status == 0 => {}
            other => errors.push(format!("{}: {other:?}", dev.display())),
        }
        lat.push(t.elapsed());
    }
    let p99 = |v: &mut Vec<Duration>| {
        v.sort_unstable();
        v[(v.len() * 99 / 100).min(v.len() - 1)]
    };
    let (p99_map2, p99_path) = (p99(&mut on_map2), p99(&mut on_path));
    let start = Instant::now();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(helper.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let mut status = None;
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(s)) = helper.try_wait() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let exit = start.elapsed();
    if status.is_none() {
        let _ = helper.kill();
        let _ = helper.wait();
    }
    for p in paths {
        let _ = std::fs::write(state(p), "running\n");
    }
    let answers: Vec<_> = hung.into_iter().map(|t| t.join()).collect();
    println!("FIGURE mpath-hang-requests-blocked {blocked}");
    println!(
        "FIGURE mpath-hang-other-map-p99-us {}",
        p99_map2.as_micros()
    );
    println!(
        "FIGURE mpath-hang-path-device-p99-us {}",
        p99_path.as_micros()
    );
    println!("FIGURE mpath-hang-sigterm-exit-ms {}", exit.as_millis());
    check(
        "hung-map-delays-no-other-device",
        if failed.is_ok()
            && errors.is_empty()
            && p99_map2 < Duration::from_millis(500)
            && p99_path < Duration::from_millis(500)
        {
            Ok(())
        } else {
            Err(format!(
                "paths failed: {failed:?}; {blocked} of 4 blocked; p99 second map {p99_map2:?}, path {p99_path:?}; errors {errors:?}"
            ))
        },
    );
    check(
        "sigterm-with-a-hung-map-exits-in-bounded-time",
        match status {
            Some(s) if s.success() && exit < Duration::from_secs(8) => Ok(()),
            other => Err(format!(
                "exit {other:?} after {exit:?}; hung requests: {answers:?}"
            )),
        },
    );
    Ok(())
}
