//! What /proc says about a process or thread: its status file and fields,
//! CPU time used. Shared by the tests and the soak tool (benches/soak.rs
//! includes this file).
#![allow(dead_code)]

use std::time::Duration;

/// /proc/PID/status of a process (or a thread id); empty once it is gone.
pub fn status(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

/// The value of `field` ("VmSize", "CapEff", ...) in `pid`'s status,
/// trimmed; None if the process is gone or has no such field.
pub fn status_field(pid: u32, field: &str) -> Option<String> {
    status(pid).lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

/// CPU time (user + system) `pid` has used so far; zero once it is gone.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces): state is
    // the first, utime and stime the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Each thread of `pid`: its name and how many seccomp filters are stacked
/// on it ("Seccomp_filters", Linux 5.9 and later).
pub fn seccomp_filters_by_thread(pid: u32) -> Vec<(String, u32)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let path = t.ok()?.path();
            let comm = std::fs::read_to_string(path.join("comm")).ok()?;
            let status = std::fs::read_to_string(path.join("status")).ok()?;
            let filters = status
                .lines()
                .find_map(|l| l.strip_prefix("Seccomp_filters:"))?
                .trim()
                .parse()
                .ok()?;
            Some((comm.trim_end().to_string(), filters))
        })
        .collect()
}
