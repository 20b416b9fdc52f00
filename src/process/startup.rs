//! Start-up and shutdown of the helper process, in the reference's order
//! (spec §8.5): configuration, logging, socket (created or adopted),
//! daemonizing, pidfile, privilege drop; then the runtime and the server;
//! at the end the socket and pidfile are removed.
//!
//! Everything up to the privilege drop runs single-threaded: fork and
//! capability changes need that. Fatal errors are printed to stderr as
//! `pr-helper: <message>` and exit 1 (for `-d`, through the parent).

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;

use thiserror::Error;
use tracing::{error, info};

use crate::process::activation::ActivationError;
use crate::process::config::{self, Config, ConfigError, ServerArgs};
use crate::process::daemon::{self, Daemon, DaemonError, Pidfile};
use crate::process::janitor::{Janitor, JanitorError};
use crate::process::privileges::PrivilegeError;
use crate::process::sandbox::seccomp::{Mode, Narrowing, Role};
use crate::process::sandbox::SandboxError;
use crate::server::accept::{self, ServerConfig};
use crate::server::command::{ExecConfig, Executor};
use crate::server::connection::ConnectionConfig;
use crate::server::listener::ListenerError;
use crate::server::pool::Pool;
use crate::{
    process::activation, process::logging, process::privileges, process::signals, server::listener,
};

/// Why the helper could not start: every fatal error of [`run`]. Its text is
/// what the user sees, as `pr-helper: <message>` on stderr (through the
/// parent with `-d`), or in the log once the sandbox is being applied.
/// Each layer's own error converts into it (`?`).
#[derive(Debug, Error)]
pub enum StartupError {
    /// The early signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(nix::Error),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Logging could not be set up.
    #[error(transparent)]
    Logging(#[from] logging::LoggingError),
    /// Multipath support could not start (D7).
    #[cfg(feature = "mpath")]
    #[error(transparent)]
    Multipath(#[from] crate::mpath::InitError),
    /// Multipath is on, but the helper would not run as uid 0 (D33).
    #[cfg(feature = "mpath")]
    #[error(
        "multipath needs uid 0, but {0}: libmpathpersist opens /dev/mapper/control \
         (root only), writes the prkeys file and sends multipathd commands it takes only \
         from root. Run pr-helper as root for multipath (it keeps only CAP_SYS_RAWIO and \
         CAP_SYS_ADMIN), or turn multipath off (multipath = false, --multipath false)"
    )]
    MultipathNeedsRoot(String),
    /// The socket systemd passed is unusable, or conflicts with `-k`.
    #[error(transparent)]
    Activation(#[from] ActivationError),
    /// The listening socket could not be created.
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// Daemonizing or the pidfile failed.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// A user or group is unknown, or privileges could not be dropped.
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    /// Landlock or seccomp could not be applied.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// /sys/dev/block could not be opened: without it partitions cannot be
    /// told from whole disks (D27), and every block device would be refused.
    #[error("cannot open /sys/dev/block (needed to tell partitions from whole disks): {0}")]
    Sysfs(nix::Error),
    /// The janitor (removes the socket and pidfile at exit) did not start.
    #[error(transparent)]
    Janitor(#[from] JanitorError),
    /// The async runtime could not be built.
    #[error("cannot start the event loop: {0}")]
    EventLoop(io::Error),
    /// The SG_IO worker pool could not be set up.
    #[error("cannot set up the SG_IO threads: {0}")]
    Pool(io::Error),
    /// The listening socket could not be registered with the runtime.
    #[error("cannot register the listening socket: {0}")]
    Register(io::Error),
}

/// The value of `$result`, or: print the error (`pr-helper: <message>` on
/// stderr) and return exit status 1.
macro_rules! or_fatal {
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(e) => return fatal(e),
        }
    };
}

/// The value of `$result`, or: log the error and return exit status 1 (once
/// stderr may be /dev/null: after `-d` has released its parent).
macro_rules! or_log {
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(e) => {
                error!("{}", StartupError::from(e));
                return ExitCode::FAILURE;
            }
        }
    };
}

/// Runs the helper with these command-line options; returns the exit code.
pub fn run(args: &ServerArgs) -> ExitCode {
    or_fatal!(signals::install_early().map_err(StartupError::Signals));
    let loaded = or_fatal!(config::load(args));
    if args.print_config {
        print!("{}", loaded.render());
        return ExitCode::SUCCESS;
    }
    let mut config = loaded.config.clone();
    if let Some(trace) = &config.trace {
        if logging::TraceOptions::parse(trace).is_ok_and(|t| t.help) {
            println!("Log targets that -T patterns select:");
            for t in logging::TARGETS {
                println!("  {t}");
            }
            return ExitCode::SUCCESS;
        }
    }
    or_fatal!(logging::init(&config, config.daemon));
    let socket_path_given = loaded.origin_of("socket") != "built-in default";

    // Multipath first, as in the reference: a failure stops the start
    // before the socket appears (D7: with a message saying why).
    #[cfg(feature = "mpath")]
    let multipath = if config.multipath {
        or_fatal!(multipath_identity(&config));
        Some(or_fatal!(crate::mpath::Prepared::init()))
    } else {
        None
    };

    let fd_limit = raise_fd_limit();
    config.max_connections = fit_connections(config.max_connections, fd_limit);

    // The socket comes first: it is libvirt's readiness signal, and QEMUs
    // that connect before the event loop runs wait in the backlog.
    let (listener, created) = match activation::listen_fds().filter(|&n| n > 0) {
        Some(n) => {
            let l = or_fatal!(activation::adopt(n, socket_path_given));
            info!("using the socket passed by systemd");
            (l, None)
        }
        None => {
            let setup = or_fatal!(socket_setup(&config));
            let bound = or_fatal!(listener::bind_with(&config.socket, &setup));
            (bound.listener, Some((bound.path, bound.id)))
        }
    };
    let created = SocketPath(created);
    // After the socket: under socket activation fd 3 must still be the
    // passed socket when it is adopted.
    or_fatal!(crate::server::device::init().map_err(StartupError::Sysfs));

    let daemon = if config.daemon {
        Some(or_fatal!(daemon::daemonize()))
    } else {
        None
    };
    let mut pidfile = match finish_setup(&config) {
        Ok(p) => p,
        Err(e) => {
            return match daemon {
                Some(d) => {
                    d.fail(&e.to_string());
                    ExitCode::FAILURE
                }
                None => fatal(e),
            };
        }
    };
    if let Some(d) = daemon {
        Daemon::ready(d);
    }

    // The path served on, for the log: an adopted (socket-activated)
    // socket is wherever its unit put it, not the configured path; a
    // created one was bound elsewhere and renamed into place (D31).
    let serving_on = match &created.0 {
        Some((path, _)) => path.display().to_string(),
        None => listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            .unwrap_or_else(|| config.socket.display().to_string()),
    };
    // The janitor takes over removing the socket and the pidfile (the
    // helper's sandbox grants no removal), forked while single-threaded.
    let mut created = created;
    let janitor = or_log!(Janitor::start(
        created.0.take(),
        pidfile.as_ref(),
        listener.as_raw_fd(),
        config.landlock,
    )
    .map_err(StartupError::Janitor));
    if let Some(p) = pidfile.as_mut() {
        p.hand_over();
    }

    // The sandbox, while still single-threaded: every thread started from
    // here on (multipath worker, SG_IO pool) inherits it.
    let sandbox = crate::process::sandbox::Settings {
        seccomp: config.seccomp,
        landlock: config.landlock,
        require_landlock: config.require_landlock,
        profile: if config.multipath {
            crate::process::sandbox::Profile::Multipath
        } else {
            crate::process::sandbox::Profile::Plain
        },
    };
    or_log!(crate::process::sandbox::apply(&sandbox));

    #[cfg_attr(not(feature = "mpath"), allow(unused_mut))]
    let mut executor = Executor::new(ExecConfig {
        sgio_timeout: config.sgio_timeout(),
    });
    #[cfg(feature = "mpath")]
    if let Some(prepared) = multipath {
        executor.multipath = Some(std::sync::Arc::new(or_log!(
            prepared.start(config.verbosity, config.sgio_timeout())
        )));
    }
    let code = run_server(listener, &config, executor, janitor, serving_on);
    // The janitor has removed the pidfile (if still ours) by now; only then
    // is its lock released.
    drop(pidfile);
    code
}

/// The socket path this process created and the socket's identity,
/// removed when dropped (at exit and on start-up failure) while it is still
/// that socket (D30); an activated socket belongs to systemd.
struct SocketPath(Option<(PathBuf, listener::FileId)>);

impl SocketPath {
    fn remove(&mut self) {
        if let Some((path, id)) = self.0.take() {
            listener::remove_if_ours(&path, id);
        }
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        self.remove();
    }
}

/// D33: multipath works only as uid 0 (see [`StartupError::MultipathNeedsRoot`]);
/// a helper that would run as another user is refused before it listens,
/// instead of failing on its first multipath request.
#[cfg(feature = "mpath")]
fn multipath_identity(config: &Config) -> Result<(), StartupError> {
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        return Err(StartupError::MultipathNeedsRoot(format!(
            "it runs as uid {euid}"
        )));
    }
    if let Some(user) = config.user.as_deref() {
        let (uid, _) = privileges::resolve_user(user)?;
        if !uid.is_root() {
            return Err(StartupError::MultipathNeedsRoot(format!(
                "-u/--user {user} would switch to uid {uid}"
            )));
        }
    }
    Ok(())
}

/// Pidfile and privilege drop (still single-threaded).
fn finish_setup(config: &Config) -> Result<Option<Pidfile>, StartupError> {
    let pidfile = match config.effective_pidfile() {
        Some(path) => Some(Pidfile::create(&path)?),
        None => None,
    };
    let target = privileges::Target {
        user: config
            .user
            .as_deref()
            .map(privileges::resolve_user)
            .transpose()?,
        group: config
            .group
            .as_deref()
            .map(privileges::resolve_group)
            .transpose()?,
        // Device-mapper ioctls for multipath detection need CAP_SYS_ADMIN.
        keep_sys_admin: config.multipath,
    };
    privileges::drop_privileges(&target)?;
    Ok(pidfile)
}

/// Builds the runtime and serves until a terminating signal.
fn run_server(
    listener: std::os::unix::net::UnixListener,
    config: &Config,
    executor: Executor,
    mut janitor: Option<Janitor>,
    serving_on: String,
) -> ExitCode {
    let runtime = or_log!(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartupError::EventLoop));
    let pool = or_log!(Pool::new("prh-sgio", config.sgio_threads).map_err(StartupError::Pool));
    // Each kind of thread narrows the process's seccomp filter for itself
    // (sandbox::seccomp::Role): the workers as they start, the event loop
    // once the first worker and the watchdog, which starts the others, run.
    let narrowing = |role| -> Result<Option<Narrowing>, StartupError> {
        match config.seccomp {
            Mode::None => Ok(None),
            mode => Narrowing::new(role, mode == Mode::Log)
                .map(Some)
                .map_err(|e| StartupError::Sandbox(e.into())),
        }
    };
    let worker = or_log!(narrowing(Role::Worker));
    or_log!(pool
        .start_workers(move || {
            if let Some(Err(e)) = worker.as_ref().map(Narrowing::apply) {
                error!("seccomp: cannot narrow an SG_IO worker's filter: {e}");
            }
        })
        .map_err(StartupError::Pool));
    if let Some(event_loop) = or_log!(narrowing(Role::EventLoop)) {
        or_log!(event_loop
            .apply()
            .map_err(|e| StartupError::Sandbox(e.into())));
    }
    let server_config = ServerConfig {
        max_connections: config.max_connections,
        max_connections_per_client: config.max_connections_per_client,
        pool,
        policy: crate::server::accept::AccessPolicy {
            uids: config.allowed_uids.clone(),
            gids: config.allowed_gids.clone(),
        },
        connection: ConnectionConfig {
            request_timeout: config.request_timeout(),
            executor,
            audit: config.audit,
        },
    };
    runtime.block_on(async move {
        let listener =
            or_log!(tokio::net::UnixListener::from_std(listener).map_err(StartupError::Register));
        info!(pid = std::process::id(), "serving on {serving_on}");
        activation::notify("READY=1");
        accept::serve_until_shutdown(listener, server_config, signals::terminated(), || {
            activation::notify("STOPPING=1");
            if let Some(j) = janitor.as_mut() {
                j.remove_socket();
            }
        })
        .await;
        info!("exiting");
        // Whatever is left (the pidfile) goes now.
        drop(janitor);
        ExitCode::SUCCESS
    })
}

/// Prints a start-up error as `pr-helper: <message>`; exit status 1.
fn fatal(e: impl Into<StartupError>) -> ExitCode {
    eprintln!("pr-helper: {}", e.into());
    ExitCode::FAILURE
}

/// Raises the soft limit on open files to the hard limit; returns the soft
/// limit in force (None if it cannot be read). Every connection holds a
/// socket and, while a request is in flight, a device fd; under systemd's
/// default soft limit of 1024 the helper would run out of fds before
/// reaching its default connection limit. Raising the soft limit up to the
/// hard one needs no privilege; failing to is only worth a note.
fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::debug!("open file limit raised from {soft} to {hard}");
                Some(hard)
            }
            Err(e) => {
                tracing::info!("cannot raise the open file limit from {soft}: {e}");
                Some(soft)
            }
        },
        Ok((soft, _)) => Some(soft),
        Err(e) => {
            tracing::info!("cannot read the open file limit: {e}");
            None
        }
    }
}

/// The fds one connection can hold: its socket, and the fd of a request
/// in flight.
const FDS_PER_CONNECTION: u64 = 2;
/// The fds kept for everything else: the listener and its reserve fd, the
/// event loop, the pool's threads, /sys/dev/block, journald, the reading
/// of a request's extra fds (up to 16 per message, closed at once) and the
/// device-mapper check's files.
const FDS_RESERVED: u64 = 256;

/// `max_connections`, lowered (with a warning) so that every connection
/// it admits can hold its fds with [`FDS_RESERVED`] to spare under the
/// open-file limit `limit`: clients filling every connection slot must not
/// leave the helper without the fds it needs to check and run a request.
fn fit_connections(max_connections: usize, limit: Option<u64>) -> usize {
    let Some(limit) = limit else {
        return max_connections;
    };
    let fit = limit.saturating_sub(FDS_RESERVED) / FDS_PER_CONNECTION;
    if max_connections as u64 <= fit {
        return max_connections;
    }
    let lowered = usize::try_from(fit.max(1)).unwrap_or(max_connections);
    tracing::warn!(
        "max_connections lowered from {max_connections} to {lowered}: the open file limit \
         ({limit}) leaves room for {FDS_PER_CONNECTION} fds per connection and \
         {FDS_RESERVED} for the helper itself only up to {lowered}; raise LimitNOFILE= \
         (or ulimit -n) to keep {max_connections}"
    );
    lowered
}

/// The configured `socket_mode` and `socket_group` (the group resolved),
/// for the socket pr-helper creates.
fn socket_setup(config: &Config) -> Result<listener::Setup, privileges::PrivilegeError> {
    let group = match &config.socket_group {
        Some(name) => Some((name.clone(), privileges::resolve_group(name)?)),
        None => None,
    };
    Ok(listener::Setup {
        mode: config.socket_mode.map(|m| m.0),
        group,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 22, item 1: every admitted connection can hold its fds with
    /// the reserve to spare under the open-file limit.
    #[test]
    fn max_connections_fits_the_open_file_limit() {
        assert_eq!(fit_connections(1024, Some(524_288)), 1024);
        assert_eq!(fit_connections(1024, Some(2 * 1024 + 256)), 1024);
        assert_eq!(fit_connections(1024, Some(1024)), 384);
        assert_eq!(fit_connections(1024, Some(64)), 1);
        assert_eq!(fit_connections(1024, None), 1024);
    }

    /// Each layer's error converts into the one start-up error with its own
    /// text unchanged (what `pr-helper: ...` prints), and the messages that
    /// start-up adds are the ones it always printed.
    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail closure type
    fn start_up_errors_keep_their_messages() {
        // The lookups only inside the guard (see privileges::env_guard).
        let (user, group) = privileges::env_guard::jail(|_| {
            Ok((
                privileges::resolve_user("-1").unwrap_err(),
                privileges::resolve_group("no-such-group-pr-helper").unwrap_err(),
            ))
        });
        let cases: Vec<(StartupError, String)> = vec![
            (user.into(), "invalid user '-1'".into()),
            (
                group.into(),
                "invalid group 'no-such-group-pr-helper'".into(),
            ),
            (
                ListenerError::Mode {
                    mode: 0o660,
                    err: nix::Error::EPERM,
                }
                .into(),
                "cannot set mode 0660 on the socket: EPERM: Operation not permitted".into(),
            ),
            (
                ListenerError::Group {
                    name: "kvm".into(),
                    err: nix::Error::EPERM,
                }
                .into(),
                "cannot give the socket to group kvm: EPERM: Operation not permitted".into(),
            ),
            (
                ActivationError::NotUnix.into(),
                "Failed to use socket activation: fd 3 is not a Unix socket".into(),
            ),
            (
                DaemonError::Locked {
                    path: "/run/p.pid".into(),
                    err: nix::Error::EAGAIN,
                    holder: Some(42),
                }
                .into(),
                "Cannot lock pid file /run/p.pid: EAGAIN: Try again (held by pid 42)".into(),
            ),
            (
                DaemonError::Locked {
                    path: "/run/p.pid".into(),
                    err: nix::Error::EAGAIN,
                    holder: None,
                }
                .into(),
                "Cannot lock pid file /run/p.pid: EAGAIN: Try again".into(),
            ),
            (
                SandboxError::Seccomp(crate::process::sandbox::seccomp::SeccompError::Handler(
                    io::Error::from_raw_os_error(libc::EINVAL),
                ))
                .into(),
                // The OS error's own text is the C library's (glibc and musl
                // word some differently); the prefix is what is pinned.
                format!(
                    "cannot install the seccomp filter: {}",
                    io::Error::from_raw_os_error(libc::EINVAL)
                ),
            ),
            (
                StartupError::Signals(nix::Error::EINVAL),
                "cannot install signal handlers: EINVAL: Invalid argument".into(),
            ),
            (
                StartupError::Pool(io::Error::from_raw_os_error(libc::EMFILE)),
                format!(
                    "cannot set up the SG_IO threads: {}",
                    io::Error::from_raw_os_error(libc::EMFILE)
                ),
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text, "{e:?}");
        }
    }
}
