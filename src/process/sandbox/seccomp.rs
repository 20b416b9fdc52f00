//! The seccomp allow-list, per architecture.
//!
//! A system call outside the list raises SIGSYS; the handler writes one line
//! naming the call to stderr (it is the journal under systemd) and ends the
//! process with status 159 (128 + SIGSYS), so a missing entry is a clear
//! crash, never a silent malfunction. [`Mode::Log`] (virtiofsd's
//! `--seccomp log`) lets such a call run and has the kernel log it
//! instead (an audit record of type 1326, SECCOMP, naming the call): for
//! finding what a new library or libc needs (libmpathpersist on another
//! distribution) without the helper dying on its first request. `ioctl` is limited to SG_IO and the
//! fd-flag and terminal queries the runtime and libc make; `socket` to
//! AF_UNIX. In the plain profile `openat` (and `open` on x86_64) may only
//! read: once serving, the helper opens /proc and /sys files to read them
//! and nothing else, so the flags that write, create, truncate or append
//! ([`WRITE_FLAGS`]) end the process. seccomp sees the flags, not the path:
//! this holds even where Landlock, which sees paths, is missing.
//!
//! Every number comes from the target's own definitions: the system call
//! numbers are libc's `SYS_*` for the architecture being compiled, the
//! ioctl requests libc's (they differ on powerpc), the audit architecture
//! the filter checks is seccompiler's for that target, and the SIGSYS
//! handler reads `si_syscall` through a `#[repr(C)]` view of the kernel's
//! siginfo layout. The tables are the calls common to the generic
//! (asm-generic) system call table plus, on x86_64, the older calls musl and
//! glibc still make there (open, stat, poll, ...), which aarch64 does not
//! have.
//!
//! Per thread kind ([`Role`]): the event loop and the SG_IO workers each
//! stack a second filter that takes away what the other kind does (no
//! SG_IO or thread start on the event loop; no accept, socket or thread
//! start on a worker). It allows every other call unconditionally, so the
//! kernel's seccomp cache (Linux 5.11+) answers those without running it.
//!
//! Architectures with a table: x86_64 and aarch64. Elsewhere (ppc64le,
//! s390x, riscv64, ...) the crate builds, but [`install`] reports
//! [`Outcome::Unavailable`]: start-up logs a warning that system calls are
//! not restricted (Landlock and NO_NEW_PRIVS still apply).

// Unsafe code: the SIGSYS handler (sigaction, write, _exit) and prctl.
#![allow(unsafe_code)]

use super::profile::Profile;

/// Why the filter could not be installed (the texts are the underlying
/// errors'; [`super::SandboxError`] says what was being done).
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The allow-list did not compile to BPF.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[error(transparent)]
    Compile(#[from] seccompiler::BackendError),
    /// sigaction(SIGSYS) failed.
    #[error(transparent)]
    Handler(std::io::Error),
    /// The kernel refused the filter.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[error(transparent)]
    Apply(#[from] seccompiler::Error),
    /// prctl(PR_SET_NO_NEW_PRIVS) failed (builds without an allow-list).
    #[error(transparent)]
    NoNewPrivs(std::io::Error),
}

/// The `seccomp` setting: what happens to a system call outside the
/// allow-list. `true` and `false`, the setting's values before the modes,
/// still mean `kill` and `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The process ends (status 159) after naming the call on stderr.
    #[default]
    #[value(alias = "true")]
    Kill,
    /// The call runs; the kernel logs it (audit type 1326, dmesg or the
    /// audit log). Not a sandbox: for finding missing entries.
    Log,
    /// No filter (NO_NEW_PRIVS and Landlock still apply).
    #[value(alias = "false")]
    None,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Kill => "kill",
            Mode::Log => "log",
            Mode::None => "none",
        })
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kill" | "true" => Ok(Mode::Kill),
            "log" => Ok(Mode::Log),
            "none" | "false" => Ok(Mode::None),
            other => Err(format!(
                "'{other}' is not a seccomp mode (kill, log or none)"
            )),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Text(String),
        }
        // A file's `seccomp = false` and an environment's
        // PR_HELPER_SECCOMP=false arrive as booleans.
        match Raw::deserialize(d)? {
            Raw::Flag(true) => Ok(Mode::Kill),
            Raw::Flag(false) => Ok(Mode::None),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// What [`install`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The filter is installed on the calling thread (and NO_NEW_PRIVS set).
    Installed,
    /// This build has no allow-list for its architecture: only NO_NEW_PRIVS
    /// was set.
    Unavailable,
}

/// The architecture this build filters for, as Rust names it.
pub const ARCH: &str = std::env::consts::ARCH;

/// Whether this build has an allow-list for its architecture.
pub const AVAILABLE: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod table {
    use std::collections::BTreeMap;

    use seccompiler::{
        BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
        SeccompFilter, SeccompRule, TargetArch,
    };

    use crate::process::sandbox::profile::Profile;
    use crate::process::sandbox::seccomp::Role;

    #[cfg(target_arch = "x86_64")]
    pub const TARGET: TargetArch = TargetArch::x86_64;
    #[cfg(target_arch = "aarch64")]
    pub const TARGET: TargetArch = TargetArch::aarch64;

    /// The ioctl requests the plain build allows: SG_IO and BLKGETDISKSEQ
    /// (the device check's key, D27) on clients' fds; FIONBIO, FIOCLEX
    /// (set non-blocking / close-on-exec); FIONREAD (bytes queued on a
    /// client's socket, read at shutdown); TCGETS (glibc's isatty),
    /// TIOCGWINSZ (musl's).
    /// (libc's request type is c_ulong on glibc, c_int on musl.)
    #[allow(clippy::unnecessary_cast)]
    pub const IOCTLS: [u64; 7] = [
        crate::scsi::sgio::SG_IO as u64,
        crate::scsi::sgio::BLKGETDISKSEQ as u64,
        libc::FIONBIO as u64,
        libc::FIOCLEX as u64,
        libc::FIONREAD as u64,
        libc::TCGETS as u64,
        libc::TIOCGWINSZ as u64,
    ];

    /// System calls every build needs once serving, on every architecture.
    pub const SERVING: &[i64] = &[
        // I/O on sockets and fds.
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_recvfrom,
        libc::SYS_recvmsg,
        libc::SYS_sendto,
        libc::SYS_sendmsg,
        libc::SYS_accept,
        libc::SYS_accept4,
        libc::SYS_shutdown,
        libc::SYS_getsockopt,
        libc::SYS_getsockname,
        libc::SYS_close,
        libc::SYS_fcntl,
        libc::SYS_dup,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_lseek,
        // Reading /proc/PID/comm and sysfs (Landlock limits where; the
        // plain profile allows read-only opens only, WRITE_FLAGS).
        libc::SYS_openat,
        // journald's large messages (a sealed memfd).
        libc::SYS_ftruncate,
        // Event loop.
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2,
        libc::SYS_eventfd2,
        // The runtime's signal wake-up pair.
        libc::SYS_socketpair,
        libc::SYS_pipe2,
        libc::SYS_ppoll,
        // Memory.
        libc::SYS_brk,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        // Threads (the SG_IO pool grows on demand) and synchronisation.
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_set_robust_list,
        libc::SYS_set_tid_address,
        libc::SYS_rseq,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_sched_getaffinity,
        libc::SYS_membarrier,
        libc::SYS_prctl,
        libc::SYS_gettid,
        libc::SYS_getpid,
        libc::SYS_tgkill,
        // Signals and time.
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_restart_syscall,
        libc::SYS_clock_gettime,
        libc::SYS_clock_getres,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_getrandom,
        // journald's large messages.
        libc::SYS_memfd_create,
        // The per-request device check (src/server/device.rs) walks sysfs: a dm
        // device's slaves/ directory and the name of a refused device.
        libc::SYS_getdents64,
        libc::SYS_readlinkat,
        // The end.
        libc::SYS_exit,
        libc::SYS_exit_group,
    ];

    /// x86_64 only: the older calls musl and glibc make there for open,
    /// stat, unlink, readlink, epoll_wait and poll (aarch64 has only the
    /// *at and p* forms above).
    #[cfg(target_arch = "x86_64")]
    pub const SERVING_ARCH: &[i64] = &[
        libc::SYS_readlink,
        libc::SYS_open,
        libc::SYS_stat,
        libc::SYS_lstat,
        libc::SYS_epoll_wait,
        libc::SYS_poll,
    ];
    #[cfg(target_arch = "aarch64")]
    pub const SERVING_ARCH: &[i64] = &[];

    /// What libmpathpersist adds (it opens path devices, scans sysfs, reads
    /// multipath.conf, talks to multipathd, and loads checker plugins).
    pub const MULTIPATH: &[i64] = &[
        // Its state files in /etc/multipath (Landlock limits where). The
        // plain helper removes nothing: its socket and pidfile are the
        // janitor's (process::janitor).
        libc::SYS_unlinkat,
        libc::SYS_faccessat,
        libc::SYS_faccessat2,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_connect,
        libc::SYS_setsockopt,
        libc::SYS_dup3,
        libc::SYS_uname,
        libc::SYS_sysinfo,
        libc::SYS_getuid,
        libc::SYS_geteuid,
        libc::SYS_getgid,
        libc::SYS_getegid,
        libc::SYS_getppid,
        libc::SYS_getrlimit,
        libc::SYS_prlimit64,
        libc::SYS_pselect6,
        libc::SYS_timerfd_create,
        libc::SYS_timerfd_settime,
        libc::SYS_fadvise64,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_flock,
        libc::SYS_mlock,
        libc::SYS_munlock,
        libc::SYS_mlockall,
        libc::SYS_munlockall,
        libc::SYS_sched_setaffinity,
        libc::SYS_sched_getparam,
        libc::SYS_sched_setscheduler,
        libc::SYS_sched_getscheduler,
        libc::SYS_getpriority,
        libc::SYS_setpriority,
        libc::SYS_ioprio_set,
        libc::SYS_rt_sigtimedwait,
        libc::SYS_rt_sigsuspend,
        // libdevmapper's udev synchronisation (System V semaphores).
        libc::SYS_semget,
        libc::SYS_semop,
        libc::SYS_semtimedop,
        libc::SYS_semctl,
        // libudev and libmultipath's sysfs and filesystem checks.
        libc::SYS_statfs,
        libc::SYS_fstatfs,
        libc::SYS_getcwd,
        // It creates its state directories (denied by Landlock outside /dev;
        // the library carries on without them).
        libc::SYS_mkdirat,
        libc::SYS_getxattr,
        libc::SYS_lgetxattr,
        libc::SYS_fgetxattr,
        libc::SYS_umask,
        libc::SYS_getpeername,
        libc::SYS_getgroups,
        libc::SYS_capget,
        libc::SYS_getrusage,
        libc::SYS_times,
        libc::SYS_gettimeofday,
        // Lock timeouts on the prkeys file (alarm is setitimer on aarch64).
        libc::SYS_setitimer,
        libc::SYS_getitimer,
        // The directio path checker's asynchronous I/O.
        libc::SYS_io_setup,
        libc::SYS_io_destroy,
        libc::SYS_io_submit,
        libc::SYS_io_getevents,
        libc::SYS_io_cancel,
    ];

    /// x86_64 only: the older forms glibc uses there.
    #[cfg(target_arch = "x86_64")]
    pub const MULTIPATH_ARCH: &[i64] = &[
        libc::SYS_unlink,
        libc::SYS_access,
        libc::SYS_dup2,
        libc::SYS_select,
        libc::SYS_mkdir,
        libc::SYS_time,
        libc::SYS_alarm,
        // io_pgetevents, which libaio 0.3.113 and later (Debian 13,
        // unstable: multipath-tools 0.13+) waits with; not in this libc
        // crate's x86_64 table.
        333,
    ];
    /// aarch64: io_pgetevents (as on x86_64), by number.
    #[cfg(target_arch = "aarch64")]
    pub const MULTIPATH_ARCH: &[i64] = &[292];

    /// The open(2) flags the plain profile refuses once serving: any access
    /// mode but O_RDONLY, creating (O_CREAT, O_TMPFILE), truncating and
    /// appending.
    pub const WRITE_FLAGS: u64 = (libc::O_WRONLY
        | libc::O_RDWR
        | libc::O_CREAT
        | libc::O_TRUNC
        | libc::O_APPEND
        | (libc::O_TMPFILE & !libc::O_DIRECTORY)) as u64;

    /// seccomp(2)'s operation that installs a filter (<linux/seccomp.h>).
    const SECCOMP_SET_MODE_FILTER: u64 = 1;

    fn cond(arg: u8, value: u64) -> Result<SeccompCondition, BackendError> {
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
    }

    /// System call number -> the rules under which it is allowed (an empty
    /// list: always).
    pub fn rules(profile: Profile) -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = SERVING
            .iter()
            .chain(SERVING_ARCH)
            .map(|&s| (s, Vec::new()))
            .collect();
        if profile == Profile::Multipath {
            rules.extend(
                MULTIPATH
                    .iter()
                    .chain(MULTIPATH_ARCH)
                    .map(|&s| (s, Vec::new())),
            );
            // Device-mapper and block ioctls of every kind.
            rules.insert(libc::SYS_ioctl, Vec::new());
        } else {
            // Read-only opens only (WRITE_FLAGS): openat's flags are its
            // third argument, open's (x86_64) its second.
            let read_only = |arg: u8| -> Result<Vec<SeccompRule>, BackendError> {
                Ok(vec![SeccompRule::new(vec![SeccompCondition::new(
                    arg,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq(WRITE_FLAGS),
                    0,
                )?])?])
            };
            rules.insert(libc::SYS_openat, read_only(2)?);
            #[cfg(target_arch = "x86_64")]
            rules.insert(libc::SYS_open, read_only(1)?);
            rules.insert(
                libc::SYS_ioctl,
                IOCTLS
                    .into_iter()
                    .map(|req| SeccompRule::new(vec![cond(1, req)?]))
                    .collect::<Result<_, _>>()?,
            );
        }
        // A thread's own narrowing filter (Role), stacked as it starts:
        // seccomp(SECCOMP_SET_MODE_FILTER) only, which can only take calls
        // away.
        rules.insert(
            libc::SYS_seccomp,
            vec![SeccompRule::new(vec![cond(0, SECCOMP_SET_MODE_FILTER)?])?],
        );
        // sd_notify's STOPPING=1 opens a Unix datagram socket.
        rules.insert(
            libc::SYS_socket,
            vec![SeccompRule::new(vec![cond(0, libc::AF_UNIX as u64)?])?],
        );
        Ok(rules)
    }

    /// The calls a thread of `role` never makes once serving (system call
    /// number -> the rules under which it is denied; an empty list: always):
    ///
    /// * the event loop accepts, reads handshakes, writes the rests of
    ///   responses and reads at shutdown, but never executes a command: no
    ///   SG_IO, no BLKGETDISKSEQ (the device check runs on the workers); and
    ///   it starts no thread (the pool's first worker and the watchdog are
    ///   started before it narrows, later workers by the watchdog);
    /// * an SG_IO worker reads requests, executes and answers them, but
    ///   never accepts a connection, opens a socket or starts a thread.
    ///
    /// The same in both profiles: libmpathpersist runs on its own thread,
    /// which keeps the process's filter.
    pub fn denied(role: Role) -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = [libc::SYS_clone, libc::SYS_clone3]
            .into_iter()
            .map(|s| (s, Vec::new()))
            .collect();
        match role {
            Role::EventLoop => {
                rules.insert(
                    libc::SYS_ioctl,
                    [crate::scsi::sgio::SG_IO, crate::scsi::sgio::BLKGETDISKSEQ]
                        .into_iter()
                        .map(|req| SeccompRule::new(vec![cond(1, req)?]))
                        .collect::<Result<_, _>>()?,
                );
            }
            Role::Worker => {
                for call in [libc::SYS_accept, libc::SYS_accept4, libc::SYS_socket] {
                    rules.insert(call, Vec::new());
                }
            }
        }
        Ok(rules)
    }

    /// The second filter a thread of `role` stacks on the process's: the
    /// calls [`denied`] lists trap (or, with `log`, run and are logged);
    /// everything else is left to the process's filter.
    pub fn narrowing(role: Role, log: bool) -> Result<BpfProgram, BackendError> {
        SeccompFilter::new(
            denied(role)?,
            SeccompAction::Allow,
            if log {
                SeccompAction::Log
            } else {
                SeccompAction::Trap
            },
            TARGET,
        )?
        .try_into()
    }

    /// The filter for `profile`; a call outside it traps (SIGSYS, the
    /// handler ends the process) or, with `log`, runs and is logged.
    pub fn program(profile: Profile, log: bool) -> Result<BpfProgram, BackendError> {
        SeccompFilter::new(
            rules(profile)?,
            if log {
                SeccompAction::Log
            } else {
                SeccompAction::Trap
            },
            SeccompAction::Allow,
            TARGET,
        )?
        .try_into()
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub use table::{program, WRITE_FLAGS};

/// The kinds of thread that narrow the process's filter for themselves,
/// as cloud-hypervisor and firecracker give each kind of thread its own:
/// a thread taken over through one kind of work cannot do the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The event loop (the main thread, once serving).
    EventLoop,
    /// An SG_IO worker of the pool.
    Worker,
}

/// A narrowing filter, compiled ([`Narrowing::new`]) before it is stacked
/// on a thread ([`Narrowing::apply`]), so that a thread start does not
/// compile it again and a compile error is a start-up error.
#[derive(Debug, Clone)]
pub struct Narrowing {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    program: seccompiler::BpfProgram,
}

impl Narrowing {
    /// The filter for `role`; `log`: [`Mode::Log`].
    pub fn new(role: Role, log: bool) -> Result<Narrowing, SeccompError> {
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        {
            Ok(Narrowing {
                program: table::narrowing(role, log)?,
            })
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            let _ = (role, log);
            Ok(Narrowing {})
        }
    }

    /// Stacks the filter on the calling thread only (threads it starts
    /// later inherit it). Where this build has no allow-list, does nothing.
    pub fn apply(&self) -> Result<(), SeccompError> {
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        seccompiler::apply_filter(&self.program)?;
        Ok(())
    }
}

/// Number of system calls the filter for `profile` allows on this
/// architecture (for docs and the closing figures); 0 where there is no
/// allow-list.
pub fn allowed_count(profile: Profile) -> usize {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        table::rules(profile).map(|r| r.len()).unwrap_or(0)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = profile;
        0
    }
}

/// The start of the kernel's `siginfo_t` as it is for SIGSYS
/// (`<asm-generic/siginfo.h>`: three ints, then the union, whose SIGSYS
/// member is `{ void *_call_addr; int _syscall; unsigned int _arch; }`).
/// `#[repr(C)]` gives the union's alignment and offsets on every
/// architecture (the union is pointer-aligned: `_syscall` is at 24 on 64-bit
/// targets, 16 on 32-bit ones).
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

// The view must fit in the kernel's siginfo_t (128 bytes).
const _: () = assert!(std::mem::size_of::<SigsysInfo>() <= std::mem::size_of::<libc::siginfo_t>());

/// Appends `n` in decimal to `buf` at `*len` (async-signal-safe).
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
fn push_decimal(buf: &mut [u8], len: &mut usize, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut d = 0;
    loop {
        digits[d] = b'0' + (n % 10) as u8;
        d += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    while d > 0 {
        d -= 1;
        buf[*len] = digits[d];
        *len += 1;
    }
}

/// Appends `s` to `buf` at `*len` (async-signal-safe).
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
fn push(buf: &mut [u8], len: &mut usize, s: &[u8]) {
    buf[*len..*len + s.len()].copy_from_slice(s);
    *len += s.len();
}

/// SIGSYS handler: one line on stderr, then exit 159. Only
/// async-signal-safe calls (write, _exit).
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS with
    // SA_SIGINFO; SigsysInfo is a prefix of its layout for SIGSYS.
    let nr = unsafe { (*info.cast::<SigsysInfo>()).syscall };
    let mut buf = [0u8; 192];
    let mut len = 0;
    push(
        &mut buf,
        &mut len,
        b"pr-helper: fatal: the seccomp filter blocked system call ",
    );
    push_decimal(&mut buf, &mut len, nr.unsigned_abs());
    push(&mut buf, &mut len, b" (");
    push(&mut buf, &mut len, ARCH.as_bytes());
    push(
        &mut buf,
        &mut len,
        b"); exiting (see `ausyscall`; seccomp = log lets it run and logs it)\n",
    );
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `buf` is valid.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::_exit(128 + libc::SIGSYS);
    }
}

/// Installs the SIGSYS handler and the filter on the calling thread (every
/// thread started afterwards inherits it); `log`: [`Mode::Log`]. Where this
/// build has no allow-list, sets NO_NEW_PRIVS only and returns
/// [`Outcome::Unavailable`].
pub fn install(profile: Profile, log: bool) -> Result<Outcome, SeccompError> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let prog = program(profile, log)?;
        // SAFETY: installs a handler that only calls async-signal-safe functions.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigsys as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
                return Err(SeccompError::Handler(std::io::Error::last_os_error()));
            }
        }
        seccompiler::apply_filter(&prog)?;
        Ok(Outcome::Installed)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (profile, log);
        // SAFETY: prctl with constant arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(SeccompError::NoNewPrivs(std::io::Error::last_os_error()));
        }
        Ok(Outcome::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn filters_compile() {
        for log in [false, true] {
            assert!(program(Profile::Plain, log).is_ok());
            assert!(program(Profile::Multipath, log).is_ok());
        }
        assert!(allowed_count(Profile::Plain) < allowed_count(Profile::Multipath));
    }

    /// No entry is listed twice or in both the common and the arch table
    /// (a duplicate would hide a missing call in the count).
    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn tables_have_no_duplicates() {
        let all: Vec<i64> = table::SERVING
            .iter()
            .chain(table::SERVING_ARCH)
            .chain(table::MULTIPATH)
            .chain(table::MULTIPATH_ARCH)
            .copied()
            .chain([libc::SYS_ioctl, libc::SYS_socket, libc::SYS_seccomp])
            .collect();
        let set: std::collections::BTreeSet<i64> = all.iter().copied().collect();
        assert_eq!(set.len(), all.len(), "duplicate entries");
        assert_eq!(set.len(), allowed_count(Profile::Multipath));
    }

    /// The handler's view of siginfo puts si_syscall where the kernel does:
    /// after three ints and a pointer-aligned pointer.
    #[test]
    fn sigsys_view_matches_the_kernel_layout() {
        let ptr = std::mem::size_of::<*const u8>();
        let union_offset = if ptr == 8 { 16 } else { 12 };
        assert_eq!(std::mem::offset_of!(SigsysInfo, call_addr), union_offset);
        assert_eq!(
            std::mem::offset_of!(SigsysInfo, syscall),
            std::mem::offset_of!(SigsysInfo, call_addr) + ptr
        );
    }

    #[test]
    fn availability_matches_the_architecture() {
        assert_eq!(AVAILABLE, matches!(ARCH, "x86_64" | "aarch64"), "{ARCH}");
    }
}
