//! Landlock: the plain helper needs almost no filesystem access once it is
//! serving (device fds arrive over the socket). What remains, and why:
//!
//! * read `/proc`: the peer's command name (`/proc/PID/comm`) for the audit
//!   record;
//! * read `/sys`: the device's WWID for the audit record, and what the
//!   device check (D27) reads.
//!
//! It may remove no file: Landlock grants removal per directory tree, and
//! the socket's directory is often a shared one (all of /run with the
//! default path). The socket and pidfile are removed by the janitor, a
//! process of its own with exactly that right ([`restrict_to_removal`],
//! `process::janitor`).
//!
//! Everything else (opening, creating, writing, executing files anywhere)
//! is denied, and so is TCP (the helper has no use for the network). The
//! multipath profile adds what libmpathpersist needs: read-write /dev and
//! ioctls on the devices there (it opens the path devices and sends SG_IO
//! on them), read /etc (multipath.conf), read-write
//! /etc/multipath (its prkeys, wwids and bindings files), read /run (udev's
//! database), and read-execute of the libraries it loads plugins from.

use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetError, RulesetStatus, ABI,
};

use super::profile::Profile;

/// libmultipath's state directory.
const MULTIPATH_STATE: &str = "/etc/multipath";

/// The newest ABI the rules are written for; older kernels get what they
/// support (best effort).
const TARGET_ABI: ABI = ABI::V5;

/// How much the kernel enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything.
    Enforced,
    /// Part (an older Landlock ABI).
    Partial,
    /// Nothing: the kernel has no Landlock.
    Unsupported,
}

/// Restricts the calling thread (and every thread it starts later).
pub fn restrict(profile: Profile) -> Result<Outcome, RulesetError> {
    let abi = TARGET_ABI;
    let read = AccessFs::from_read(abi);
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(existing(&["/proc", "/sys"]), read))?;
    if profile == Profile::Multipath {
        let rw = read | AccessFs::WriteFile;
        // libmpathpersist keeps state files in /etc/multipath (prkeys, for
        // `reservation_key file`; wwids; bindings) and creates the
        // directory when it is missing, which Landlock would then deny: it
        // is created here first (best effort: a read-only /etc leaves the
        // library where it would be without the sandbox).
        let _ = std::fs::create_dir_all(MULTIPATH_STATE);
        let state =
            rw | AccessFs::MakeReg | AccessFs::RemoveFile | AccessFs::Refer | AccessFs::Truncate;
        // IoctlDev (Landlock ABI 5, Linux 6.10): libmpathpersist opens the
        // path devices after the sandbox is applied and sends SG_IO on them;
        // without it every such ioctl fails with EACCES. Granted on /dev
        // only, where the devices are.
        ruleset = ruleset
            .add_rules(path_beneath_rules(
                existing(&["/dev"]),
                rw | AccessFs::IoctlDev,
            ))?
            .add_rules(path_beneath_rules(existing(&[MULTIPATH_STATE]), state))?
            .add_rules(path_beneath_rules(existing(&["/etc", "/run"]), read))?
            .add_rules(path_beneath_rules(
                existing(&["/lib", "/lib64", "/usr/lib", "/usr/lib64"]),
                read | AccessFs::Execute,
            ))?;
    }
    let status = ruleset.restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Outcome::Enforced,
        RulesetStatus::PartiallyEnforced => Outcome::Partial,
        RulesetStatus::NotEnforced => Outcome::Unsupported,
    })
}

/// The janitor's ruleset: removing files in `dirs` (the directories of the
/// socket and pidfile), and no other filesystem or network access at all.
pub fn restrict_to_removal(dirs: &[PathBuf]) -> Result<Outcome, RulesetError> {
    let abi = TARGET_ABI;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(existing(dirs), AccessFs::RemoveFile))?
        .restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Outcome::Enforced,
        RulesetStatus::PartiallyEnforced => Outcome::Partial,
        RulesetStatus::NotEnforced => Outcome::Unsupported,
    })
}

/// The paths that exist (a rule on a missing path is an error).
fn existing<P: AsRef<Path>>(paths: &[P]) -> Vec<PathBuf> {
    paths
        .iter()
        .map(|p| p.as_ref().to_path_buf())
        .filter(|p| p.exists())
        .collect()
}
