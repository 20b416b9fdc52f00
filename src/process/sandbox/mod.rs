//! Self-sandboxing after start-up: Landlock takes away filesystem access,
//! then a seccomp filter allows only the system calls serving needs. Both
//! are installed before any thread starts (Landlock applies to the calling
//! thread and its future children only; seccomp filters are inherited), so
//! every thread of the helper runs under them.
//!
//! The two layers cover different things: Landlock stops the helper from
//! opening files even with a syscall that must stay allowed (openat is
//! needed to read a peer's /proc/PID/comm for the audit record); seccomp
//! stops every syscall the helper has no use for (exec, ptrace, mount,
//! module loading, ...), whatever an attacker who took over the process
//! would try.

pub mod landlock;
mod profile;
pub mod seccomp;

pub use profile::Profile;

use std::path::PathBuf;

/// What to install.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Install the seccomp filter.
    pub seccomp: bool,
    /// Apply Landlock (best effort: kernels without it are logged).
    pub landlock: bool,
    /// Plain or multipath.
    pub profile: Profile,
    /// Files the helper removes at exit (its socket, its pidfile): their
    /// directories keep the right to remove files.
    pub removable: Vec<PathBuf>,
}

/// Why the sandbox could not be applied (a start-up error).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Landlock is supported but restricting failed.
    #[error("cannot apply Landlock: {0}")]
    Landlock(#[from] ::landlock::RulesetError),
    /// The seccomp filter could not be installed.
    #[error("cannot install the seccomp filter: {0}")]
    Seccomp(#[from] seccomp::SeccompError),
}

/// Applies the sandbox; errors are start-up errors.
pub fn apply(settings: &Settings) -> Result<(), SandboxError> {
    if settings.landlock {
        match landlock::restrict(settings.profile, &settings.removable) {
            Ok(landlock::Outcome::Enforced) => tracing::info!("landlock: filesystem access restricted"),
            Ok(landlock::Outcome::Partial) => {
                tracing::info!("landlock: filesystem access partly restricted (older kernel ABI)")
            }
            Ok(landlock::Outcome::Unsupported) => tracing::warn!(
                "landlock: not supported by this kernel; filesystem access is not restricted (seccomp still applies)"
            ),
            Err(e) => return Err(e.into()),
        }
    }
    if settings.seccomp {
        match seccomp::install(settings.profile)? {
            seccomp::Outcome::Installed => tracing::info!(
                "seccomp: system call allow-list installed ({})",
                seccomp::ARCH
            ),
            seccomp::Outcome::Unavailable => tracing::warn!(
                "seccomp: this build has no system call allow-list for {} (only x86_64 and aarch64); \
                 system calls are not restricted (Landlock and no_new_privs still apply)",
                seccomp::ARCH
            ),
        }
    }
    Ok(())
}
