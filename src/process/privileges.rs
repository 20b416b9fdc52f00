//! Dropping privileges (spec §8.8): keep only CAP_SYS_RAWIO (plus
//! CAP_SYS_ADMIN when multipath is in use), clear the bounding set, drop
//! supplementary groups, switch to `-u`/`-g`.
//!
//! Capabilities are per thread, so this must run before any thread exists
//! (the async runtime and the SG_IO pool are started afterwards).

use std::collections::HashSet;

use caps::{CapSet, Capability};
use nix::unistd::{Gid, Group, Uid, User};
use thiserror::Error;

/// Why privileges could not be dropped.
#[derive(Debug, Error)]
pub enum PrivilegeError {
    /// The process lacks a capability it must keep.
    #[error(
        "missing capability {0}: pr-helper needs it to send SCSI commands; \
         run it as root, or grant it (e.g. systemd AmbientCapabilities={0})"
    )]
    Missing(&'static str),
    /// A capability operation failed.
    #[error("Failed to drop privileges: {0}")]
    Caps(String),
    /// Changing user or group failed.
    #[error("Failed to drop privileges: {0}")]
    Identity(String),
    /// `-u` is neither a known user nor a number.
    #[error("invalid user '{0}'")]
    InvalidUser(String),
    /// `-g` (or `socket_group`) is neither a known group nor a number.
    #[error("invalid group '{0}'")]
    InvalidGroup(String),
    /// `-u` or `-g` names id 4294967295, which set*id(2) read as "leave
    /// unchanged": the process would keep root without a word.
    #[error(
        "invalid {0} '{1}': id 4294967295 is (uid_t)-1, which setresuid/setresgid \
         take as \"leave unchanged\""
    )]
    UnchangedId(&'static str, String),
    /// After the switch the kernel reports other ids than asked for.
    #[error("Failed to drop privileges: asked for {asked}, running as {got}")]
    NotSwitched { asked: String, got: String },
}

/// The id every set*id(2) call reads as "leave unchanged".
const UNCHANGED: u32 = u32::MAX;

/// The identity and capabilities to run with.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// `-u`: user id, and the user's primary group if known by name.
    pub user: Option<(Uid, Option<Gid>)>,
    /// `-g`: group id.
    pub group: Option<Gid>,
    /// Keep CAP_SYS_ADMIN too (multipath: device-mapper ioctls).
    pub keep_sys_admin: bool,
}

/// Looks up a user by name, else as a number (qemu-pr-helper's rule).
/// Returns the uid and, for a name, the user's primary group.
/// Id 4294967295 is refused, by number or by name (D32).
pub fn resolve_user(name: &str) -> Result<(Uid, Option<Gid>), PrivilegeError> {
    #[cfg(test)]
    env_guard::assert_held(name);
    let found = match User::from_name(name) {
        Ok(Some(user)) => (user.uid, Some(user.gid)),
        _ => name
            .parse::<u32>()
            .map(|uid| (Uid::from_raw(uid), None))
            .map_err(|_| PrivilegeError::InvalidUser(name.to_string()))?,
    };
    if found.0.as_raw() == UNCHANGED || found.1.is_some_and(|g| g.as_raw() == UNCHANGED) {
        return Err(PrivilegeError::UnchangedId("user", name.to_string()));
    }
    Ok(found)
}

/// Looks up a group by name, else as a number. Id 4294967295 is refused
/// (D32).
pub fn resolve_group(name: &str) -> Result<Gid, PrivilegeError> {
    #[cfg(test)]
    env_guard::assert_held(name);
    let gid = match Group::from_name(name) {
        Ok(Some(group)) => group.gid,
        _ => name
            .parse::<u32>()
            .map(Gid::from_raw)
            .map_err(|_| PrivilegeError::InvalidGroup(name.to_string()))?,
    };
    if gid.as_raw() == UNCHANGED {
        return Err(PrivilegeError::UnchangedId("group", name.to_string()));
    }
    Ok(gid)
}

/// Fails unless the real, effective and saved ids are all `uid` and `gid`:
/// what every switch is checked against, so that no set*id(2) call that
/// changed less than asked goes unnoticed.
fn verify_ids(uid: Uid, gid: Gid) -> Result<(), PrivilegeError> {
    let r = nix::unistd::getresuid()
        .map_err(|e| PrivilegeError::Identity(format!("getresuid: {e}")))?;
    let g = nix::unistd::getresgid()
        .map_err(|e| PrivilegeError::Identity(format!("getresgid: {e}")))?;
    let got = [r.real, r.effective, r.saved].map(Uid::as_raw);
    let got_g = [g.real, g.effective, g.saved].map(Gid::as_raw);
    if got != [uid.as_raw(); 3] || got_g != [gid.as_raw(); 3] {
        return Err(PrivilegeError::NotSwitched {
            asked: format!("uid {uid} gid {gid}"),
            got: format!("uids {got:?} gids {got_g:?}"),
        });
    }
    Ok(())
}

/// The capabilities pr-helper keeps.
pub fn kept(keep_sys_admin: bool) -> HashSet<Capability> {
    let mut set = HashSet::from([Capability::CAP_SYS_RAWIO]);
    if keep_sys_admin {
        set.insert(Capability::CAP_SYS_ADMIN);
    }
    set
}

fn caps_err(what: &str, e: impl std::fmt::Display) -> PrivilegeError {
    PrivilegeError::Caps(format!("{what}: {e}"))
}

/// Drops everything but what `target` keeps. Must be called while the
/// process has exactly one thread.
pub fn drop_privileges(target: &Target) -> Result<(), PrivilegeError> {
    let keep = kept(target.keep_sys_admin);
    let permitted =
        caps::read(None, CapSet::Permitted).map_err(|e| caps_err("reading capabilities", e))?;
    for cap in &keep {
        if !permitted.contains(cap) {
            return Err(PrivilegeError::Missing(cap_name(*cap)));
        }
    }
    let effective =
        caps::read(None, CapSet::Effective).map_err(|e| caps_err("reading capabilities", e))?;
    let can = |cap| effective.contains(&cap) || permitted.contains(&cap);

    // Bounding set: drop every capability still in it that we do not keep.
    // Dropping needs CAP_SETPCAP, but only for capabilities that are there.
    // Without CAP_SETPCAP (a non-root start with just CAP_SYS_RAWIO) the set
    // stays as it is; NO_NEW_PRIVS below already makes it irrelevant, since
    // no exec can then grant anything.
    let bounding =
        caps::read(None, CapSet::Bounding).map_err(|e| caps_err("reading the bounding set", e))?;
    if bounding.iter().any(|c| !keep.contains(c)) {
        if can(Capability::CAP_SETPCAP) {
            caps::raise(None, CapSet::Effective, Capability::CAP_SETPCAP)
                .map_err(|e| caps_err("raising CAP_SETPCAP", e))?;
            for cap in bounding.iter().filter(|c| !keep.contains(c)) {
                caps::drop(None, CapSet::Bounding, *cap).map_err(|e| {
                    caps_err(
                        &format!("clearing {} from the bounding set", cap_name(*cap)),
                        e,
                    )
                })?;
            }
        } else {
            tracing::info!(
                "no CAP_SETPCAP: capability bounding set left as it is (NO_NEW_PRIVS is set)"
            );
        }
    }

    // Identity: supplementary groups, then gid, then uid, keeping the
    // permitted capabilities across the uid change.
    let gid = target
        .group
        .or_else(|| target.user.and_then(|(_, primary)| primary))
        .unwrap_or_else(Gid::current);
    let uid = target.user.map(|(uid, _)| uid).unwrap_or_else(Uid::current);
    let groups = nix::unistd::getgroups()
        .map_err(|e| PrivilegeError::Identity(format!("getgroups: {e}")))?;
    if !groups.is_empty() {
        if can(Capability::CAP_SETGID) {
            caps::raise(None, CapSet::Effective, Capability::CAP_SETGID)
                .map_err(|e| caps_err("raising CAP_SETGID", e))?;
            nix::unistd::setgroups(&[])
                .map_err(|e| PrivilegeError::Identity(format!("setgroups: {e}")))?;
        } else {
            // Without CAP_SETGID the list stays. If it holds nothing but the
            // group pr-helper runs as, it gives no further access: that is
            // what a service manager leaves when it starts a service as a
            // user (systemd calls initgroups(), which puts the primary group
            // in the list, DynamicUser= included). Only other groups are
            // worth a warning.
            let extra: Vec<u32> = groups
                .into_iter()
                .filter(|g| *g != gid)
                .map(Gid::as_raw)
                .collect();
            if !extra.is_empty() {
                tracing::warn!(
                    "cannot drop supplementary groups {extra:?} without CAP_SETGID; start \
                     pr-helper without them"
                );
            }
        }
    }
    if gid != Gid::current() || Gid::effective() != gid {
        if can(Capability::CAP_SETGID) {
            caps::raise(None, CapSet::Effective, Capability::CAP_SETGID)
                .map_err(|e| caps_err("raising CAP_SETGID", e))?;
        }
        nix::unistd::setresgid(gid, gid, gid)
            .map_err(|e| PrivilegeError::Identity(format!("cannot switch to group {gid}: {e}")))?;
    }
    if uid != Uid::current() || Uid::effective() != uid {
        if can(Capability::CAP_SETUID) {
            caps::raise(None, CapSet::Effective, Capability::CAP_SETUID)
                .map_err(|e| caps_err("raising CAP_SETUID", e))?;
        }
        // Keep the permitted set across the switch away from uid 0.
        nix::sys::prctl::set_keepcaps(true).map_err(|e| caps_err("PR_SET_KEEPCAPS", e))?;
        nix::unistd::setresuid(uid, uid, uid)
            .map_err(|e| PrivilegeError::Identity(format!("cannot switch to user {uid}: {e}")))?;
        nix::sys::prctl::set_keepcaps(false).map_err(|e| caps_err("PR_SET_KEEPCAPS", e))?;
    }
    verify_ids(uid, gid)?;

    // Finally the capability sets themselves.
    caps::clear(None, CapSet::Ambient).map_err(|e| caps_err("clearing ambient capabilities", e))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| caps_err("clearing inheritable capabilities", e))?;
    // Effective first: it must stay a subset of the permitted set.
    caps::set(None, CapSet::Effective, &keep)
        .map_err(|e| caps_err("setting effective capabilities", e))?;
    caps::set(None, CapSet::Permitted, &keep)
        .map_err(|e| caps_err("setting permitted capabilities", e))?;
    // Nothing pr-helper could ever execute may gain privileges.
    nix::sys::prctl::set_no_new_privs().map_err(|e| caps_err("PR_SET_NO_NEW_PRIVS", e))?;
    Ok(())
}

fn cap_name(cap: Capability) -> &'static str {
    match cap {
        Capability::CAP_SYS_RAWIO => "CAP_SYS_RAWIO",
        Capability::CAP_SYS_ADMIN => "CAP_SYS_ADMIN",
        Capability::CAP_SETPCAP => "CAP_SETPCAP",
        Capability::CAP_SETUID => "CAP_SETUID",
        Capability::CAP_SETGID => "CAP_SETGID",
        _ => "a capability",
    }
}

/// Unit tests only: the user and group lookups go through glibc's NSS,
/// which reads the environment with getenv, outside Rust's environment
/// lock; the config tests change the environment (figment's Jail: setenv,
/// unsetenv, clear). The two at once crash the test process now and then
/// (SIGSEGV: getenv walks an `environ` that setenv has just freed). So every
/// unit test that looks up an id does it inside [`env_guard::jail`], which
/// holds the Jail's lock, and a lookup outside it fails the test at once
/// instead of crashing one run in hundreds.
#[cfg(test)]
pub(crate) mod env_guard {
    use std::cell::Cell;

    thread_local! {
        static HELD: Cell<bool> = const { Cell::new(false) };
    }

    /// figment's Jail (environment and working directory isolated, under
    /// its process-wide lock), marked as held on this thread; returns what
    /// `f` returns (an error fails the test, as in the Jail).
    #[allow(clippy::result_large_err)] // figment's Jail closure type
    pub(crate) fn jail<R>(f: impl FnOnce(&mut figment::Jail) -> figment::error::Result<R>) -> R {
        struct Held;
        impl Drop for Held {
            fn drop(&mut self) {
                HELD.with(|h| h.set(false));
            }
        }
        let mut out = None;
        figment::Jail::expect_with(|jail| {
            HELD.with(|h| h.set(true));
            let _held = Held;
            out = Some(f(jail)?);
            Ok(())
        });
        out.expect("expect_with panics on an error")
    }

    /// Panics unless the calling thread is inside [`jail`].
    pub(crate) fn assert_held(name: &str) {
        assert!(
            HELD.with(Cell::get),
            "looking up '{name}' (glibc NSS reads the environment) outside \
             privileges::env_guard::jail races the tests that change the \
             environment"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail closure type
    fn user_and_group_lookup() {
        // Inside the guard: see [`env_guard`].
        env_guard::jail(|_| {
            assert_eq!(
                resolve_user("root").unwrap(),
                (Uid::from_raw(0), Some(Gid::from_raw(0)))
            );
            assert_eq!(resolve_user("4242").unwrap(), (Uid::from_raw(4242), None));
            assert_eq!(
                resolve_user("no-such-user-xyz").unwrap_err().to_string(),
                "invalid user 'no-such-user-xyz'"
            );
            assert_eq!(
                resolve_user("-1").unwrap_err().to_string(),
                "invalid user '-1'"
            );
            assert_eq!(
                resolve_user("4294967296").unwrap_err().to_string(),
                "invalid user '4294967296'"
            );
            // (uid_t)-1 and (gid_t)-1: "leave unchanged" to setresuid, so
            // accepting them would keep root (D32).
            assert_eq!(
                resolve_user("4294967295").unwrap_err().to_string(),
                "invalid user '4294967295': id 4294967295 is (uid_t)-1, which \
                 setresuid/setresgid take as \"leave unchanged\""
            );
            assert!(matches!(
                resolve_group("4294967295"),
                Err(PrivilegeError::UnchangedId("group", _))
            ));
            assert_eq!(resolve_user("4294967294").unwrap().0.as_raw(), 4294967294);
            assert_eq!(resolve_group("root").unwrap(), Gid::from_raw(0));
            assert_eq!(resolve_group("77").unwrap(), Gid::from_raw(77));
            assert_eq!(
                resolve_group("no-such-group-xyz").unwrap_err().to_string(),
                "invalid group 'no-such-group-xyz'"
            );

            Ok(())
        });
    }

    #[test]
    fn ids_are_verified_after_the_switch() {
        let (u, g) = (Uid::current(), Gid::current());
        assert!(verify_ids(u, g).is_ok());
        let other = Uid::from_raw(u.as_raw().wrapping_add(1));
        let e = verify_ids(other, g).unwrap_err().to_string();
        assert!(
            e.starts_with("Failed to drop privileges: asked for uid"),
            "{e}"
        );
    }
}
