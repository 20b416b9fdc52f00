//! Self-sandboxing after start-up: Landlock takes away filesystem access,
//! then a seccomp filter allows only the system calls serving needs. Both
//! are installed before any thread starts (Landlock applies to the calling
//! thread and its future children only; seccomp filters are inherited), so
//! every thread of the helper runs under them. Once serving, the event loop
//! and each SG_IO worker stack a narrower filter of their own
//! ([`seccomp::Role`], [`seccomp::Narrowing`]).
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

/// What to install.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Whether and how to install the seccomp filter.
    pub seccomp: seccomp::Mode,
    /// Apply Landlock (best effort: kernels without it are logged).
    pub landlock: bool,
    /// Refuse to run when Landlock restricts nothing (`require_landlock`).
    pub require_landlock: bool,
    /// Plain or multipath.
    pub profile: Profile,
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
    /// `require_landlock` is set and Landlock restricts nothing.
    #[error(
        "require_landlock is set, but Landlock restricts nothing ({0}); \
         boot a kernel with Landlock (lsm=...,landlock) or unset require_landlock"
    )]
    LandlockRequired(&'static str),
}

/// What start-up says when Landlock restricts nothing: `Err` under
/// `require_landlock`; otherwise the warning, which for uid 0 names the
/// exposure and the ways out. `why` is the reason (kernel, setting).
pub fn without_landlock(
    why: &'static str,
    euid: u32,
    require: bool,
) -> Result<String, SandboxError> {
    if require {
        return Err(SandboxError::LandlockRequired(why));
    }
    let mut warning =
        format!("landlock: {why}; filesystem access is not restricted (seccomp still applies)");
    if euid == 0 {
        warning.push_str(
            ". Running as uid 0 without it: if the helper were taken over it could open any block \
             device and write it through SG_IO. Run it with -u USER (device files are then closed to \
             it) or on a kernel with Landlock; require_landlock = true refuses to start like this",
        );
    }
    Ok(warning)
}

/// Applies the sandbox; errors are start-up errors.
pub fn apply(settings: &Settings) -> Result<(), SandboxError> {
    let euid = nix::unistd::geteuid().as_raw();
    // The verdict is computed before logging: a disabled log level must
    // not skip the refusal.
    if settings.landlock {
        match landlock::restrict(settings.profile) {
            Ok(landlock::Outcome::Enforced) => {
                tracing::info!("landlock: filesystem access restricted")
            }
            Ok(landlock::Outcome::Partial) => {
                tracing::info!("landlock: filesystem access partly restricted (older kernel ABI)")
            }
            Ok(landlock::Outcome::Unsupported) => {
                let warning = without_landlock(
                    "not supported by this kernel",
                    euid,
                    settings.require_landlock,
                )?;
                tracing::warn!("{warning}");
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        let note = without_landlock(
            "turned off (landlock = false)",
            euid,
            settings.require_landlock,
        )?;
        // Chosen by the operator: said at info level (a warning would repeat,
        // at every start, what the configuration already says).
        tracing::info!("{note}");
    }
    if settings.seccomp != seccomp::Mode::None {
        let log = settings.seccomp == seccomp::Mode::Log;
        match seccomp::install(settings.profile, log)? {
            seccomp::Outcome::Installed if log => tracing::warn!(
                "seccomp: log mode ({}): system calls outside the allow-list run and the kernel \
                 logs each (audit type 1326, SECCOMP, in dmesg or the audit log); \
                 for finding missing entries, not a sandbox",
                seccomp::ARCH
            ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_landlock_uid_0_is_warned_or_refused() {
        let w = without_landlock("not supported by this kernel", 0, false).unwrap();
        assert!(
            w.contains("Running as uid 0") && w.contains("-u USER"),
            "{w}"
        );
        let w = without_landlock("not supported by this kernel", 65534, false).unwrap();
        assert!(!w.contains("uid 0"), "{w}");
        let e = without_landlock("turned off (landlock = false)", 65534, true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "require_landlock is set, but Landlock restricts nothing (turned off (landlock = \
             false)); boot a kernel with Landlock (lsm=...,landlock) or unset require_landlock"
        );
    }
}
