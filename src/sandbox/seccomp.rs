//! The seccomp allow-list (x86_64).
//!
//! A system call outside the list raises SIGSYS; the handler writes one line
//! naming the call to stderr (it is the journal under systemd) and ends the
//! process with status 159 (128 + SIGSYS), so a missing entry is a clear
//! crash, never a silent malfunction. `ioctl` is limited to SG_IO and the
//! fd-flag and terminal queries the runtime and libc make; `socket` to
//! AF_UNIX.

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use super::Profile;

/// SG_IO.
const SG_IO: u64 = 0x2285;
/// FIONBIO, FIOCLEX: set non-blocking / close-on-exec.
const FIONBIO: u64 = 0x5421;
const FIOCLEX: u64 = 0x5451;
/// TCGETS (glibc's isatty), TIOCGWINSZ (musl's).
const TCGETS: u64 = 0x5401;
const TIOCGWINSZ: u64 = 0x5413;

/// System calls every build needs once serving.
const SERVING: &[i64] = &[
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
    // Reading /proc/PID/comm and sysfs (Landlock limits where); musl's
    // libc uses the older open/stat calls.
    libc::SYS_openat,
    libc::SYS_open,
    libc::SYS_stat,
    libc::SYS_lstat,
    // Removing the socket and pidfile at exit (Landlock limits where).
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_ftruncate,
    // Event loop.
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    // The runtime's signal wake-up pair.
    libc::SYS_socketpair,
    libc::SYS_pipe2,
    libc::SYS_poll,
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
    // The per-request device check (src/device.rs) walks sysfs: a dm
    // device's slaves/ directory and the name of a refused device.
    libc::SYS_getdents64,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    // The end.
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// What libmpathpersist adds (it opens path devices, scans sysfs, reads
/// multipath.conf, talks to multipathd, and loads checker plugins).
const MULTIPATH: &[i64] = &[
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_connect,
    libc::SYS_setsockopt,
    libc::SYS_dup2,
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
    libc::SYS_select,
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
    libc::SYS_mkdir,
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
    libc::SYS_time,
    libc::SYS_setitimer,
    // Lock timeouts on the prkeys file.
    libc::SYS_alarm,
    libc::SYS_getitimer,
    // The directio path checker's asynchronous I/O.
    libc::SYS_io_setup,
    libc::SYS_io_destroy,
    libc::SYS_io_submit,
    libc::SYS_io_getevents,
    libc::SYS_io_cancel,
];

fn cond(arg: u8, value: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
}

/// The filter for `profile`.
pub fn program(profile: Profile) -> Result<BpfProgram, BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        SERVING.iter().map(|&s| (s, Vec::new())).collect();
    if profile == Profile::Multipath {
        rules.extend(MULTIPATH.iter().map(|&s| (s, Vec::new())));
        // Device-mapper and block ioctls of every kind.
        rules.insert(libc::SYS_ioctl, Vec::new());
    } else {
        rules.insert(
            libc::SYS_ioctl,
            [SG_IO, FIONBIO, FIOCLEX, TCGETS, TIOCGWINSZ]
                .into_iter()
                .map(|req| SeccompRule::new(vec![cond(1, req)?]))
                .collect::<Result<_, _>>()?,
        );
    }
    // sd_notify's STOPPING=1 opens a Unix datagram socket.
    rules.insert(
        libc::SYS_socket,
        vec![SeccompRule::new(vec![cond(0, libc::AF_UNIX as u64)?])?],
    );
    SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?
    .try_into()
}

/// Number of system calls the filter for `profile` allows (for docs and
/// the closing figures).
pub fn allowed_count(profile: Profile) -> usize {
    let extra = if profile == Profile::Multipath {
        MULTIPATH.len()
    } else {
        0
    };
    SERVING.len() + extra + 2
}

/// SIGSYS handler: one line on stderr, then exit 159. Only
/// async-signal-safe calls (write, _exit).
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // siginfo_t for SIGSYS: si_call_addr (pointer) at offset 16, si_syscall
    // (int) at offset 24 on x86_64.
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS with SA_SIGINFO.
    let nr = unsafe { *(info.cast::<u8>().add(24).cast::<i32>()) };
    let mut buf = [0u8; 128];
    let prefix = b"pr-helper: fatal: the seccomp filter blocked system call ";
    let mut len = prefix.len();
    buf[..len].copy_from_slice(prefix);
    let mut digits = [0u8; 12];
    let mut n = nr.unsigned_abs();
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
        buf[len] = digits[d];
        len += 1;
    }
    let suffix = b"; exiting (see `ausyscall`; set seccomp = false to debug)\n";
    buf[len..len + suffix.len()].copy_from_slice(suffix);
    len += suffix.len();
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `buf` is valid.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::_exit(128 + libc::SIGSYS);
    }
}

/// Installs the SIGSYS handler and the filter on the calling thread (every
/// thread started afterwards inherits it).
pub fn install(profile: Profile) -> Result<(), String> {
    let prog = program(profile).map_err(|e| e.to_string())?;
    // SAFETY: installs a handler that only calls async-signal-safe functions.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
    }
    seccompiler::apply_filter(&prog).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        assert!(program(Profile::Plain).is_ok());
        assert!(program(Profile::Multipath).is_ok());
        assert!(allowed_count(Profile::Plain) < allowed_count(Profile::Multipath));
    }
}
