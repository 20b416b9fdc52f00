//! Start-up and shutdown of the helper process, in the reference's order
//! (spec §8.5): configuration, logging, socket (created or adopted),
//! daemonizing, pidfile, privilege drop; then the runtime and the server;
//! at the end the socket and pidfile are removed.
//!
//! Everything up to the privilege drop runs single-threaded: fork and
//! capability changes need that. Fatal errors are printed to stderr as
//! `pr-helper: <message>` and exit 1 (for `-d`, through the parent).

use std::path::PathBuf;
use std::process::ExitCode;

use tracing::{error, info};

use crate::command::{ExecConfig, Executor};
use crate::config::{self, Config, ServerArgs};
use crate::connection::ConnectionConfig;
use crate::daemon::{self, Daemon, Pidfile};
use crate::pool::Pool;
use crate::server::{self, ServerConfig};
use crate::{activation, listener, logging, privileges, signals};

/// Runs the helper with these command-line options; returns the exit code.
pub fn run(args: &ServerArgs) -> ExitCode {
    if let Err(e) = signals::install_early() {
        return fatal(&format!("cannot install signal handlers: {e}"));
    }
    let loaded = match config::load(args) {
        Ok(l) => l,
        Err(e) => return fatal(&e.to_string()),
    };
    if args.print_config {
        print!("{}", loaded.render());
        return ExitCode::SUCCESS;
    }
    let config = loaded.config.clone();
    if let Some(trace) = &config.trace {
        if logging::TraceOptions::parse(trace).is_ok_and(|t| t.help) {
            println!("Log targets that -T patterns select:");
            for t in logging::TARGETS {
                println!("  {t}");
            }
            return ExitCode::SUCCESS;
        }
    }
    if let Err(e) = logging::init(&config, config.daemon) {
        return fatal(&e);
    }
    let socket_path_given = loaded.origin_of("socket") != "built-in default";

    // Multipath first, as in the reference: a failure stops the start
    // before the socket appears (D7: with a message saying why).
    #[cfg(feature = "mpath")]
    let multipath = if config.multipath {
        match crate::mpath::Prepared::init() {
            Ok(p) => Some(p),
            Err(e) => return fatal(&e.to_string()),
        }
    } else {
        None
    };

    raise_fd_limit();

    // The socket comes first: it is libvirt's readiness signal, and QEMUs
    // that connect before the event loop runs wait in the backlog.
    let (listener, created) = match activation::listen_fds().filter(|&n| n > 0) {
        Some(n) => match activation::adopt(n, socket_path_given) {
            Ok(l) => {
                info!("using the socket passed by systemd");
                (l, None)
            }
            Err(e) => return fatal(&e.to_string()),
        },
        None => {
            let setup = match listener::Setup::from_config(&config) {
                Ok(s) => s,
                Err(e) => return fatal(&e),
            };
            match listener::bind_with(&config.socket, &setup) {
                Ok(bound) => (bound.listener, Some((bound.path, bound.id))),
                Err(e) => return fatal(&e.to_string()),
            }
        }
    };
    let created = SocketPath(created);

    let daemon = if config.daemon {
        match daemon::daemonize() {
            Ok(d) => Some(d),
            Err(e) => return fatal(&e.to_string()),
        }
    } else {
        None
    };
    let pidfile = match finish_setup(&config) {
        Ok(p) => p,
        Err(message) => {
            match daemon {
                Some(d) => d.fail(&message),
                None => eprintln!("pr-helper: {message}"),
            }
            return ExitCode::FAILURE;
        }
    };
    if let Some(d) = daemon {
        Daemon::ready(d);
    }

    // The sandbox, while still single-threaded: every thread started from
    // here on (multipath worker, SG_IO pool) inherits it.
    let mut removable: Vec<PathBuf> = created.0.iter().map(|(p, _)| p.clone()).collect();
    removable.extend(pidfile.as_ref().map(|p| p.path().to_path_buf()));
    let sandbox = crate::sandbox::Settings {
        seccomp: config.seccomp,
        landlock: config.landlock,
        profile: if config.multipath {
            crate::sandbox::Profile::Multipath
        } else {
            crate::sandbox::Profile::Plain
        },
        removable,
    };
    if let Err(e) = crate::sandbox::apply(&sandbox) {
        error!("{e}");
        return ExitCode::FAILURE;
    }

    #[cfg_attr(not(feature = "mpath"), allow(unused_mut))]
    let mut executor = Executor::new(ExecConfig {
        sgio_timeout: config.sgio_timeout(),
    });
    #[cfg(feature = "mpath")]
    if let Some(prepared) = multipath {
        match prepared.start(config.verbosity, config.sgio_timeout()) {
            Ok(m) => executor.multipath = Some(m),
            Err(e) => {
                error!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let code = serve(listener, &config, executor, created);
    if let Some(p) = pidfile {
        p.remove();
    }
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

/// Pidfile and privilege drop (still single-threaded).
fn finish_setup(config: &Config) -> Result<Option<Pidfile>, String> {
    let pidfile = match config.effective_pidfile() {
        Some(path) => Some(Pidfile::create(&path).map_err(|e| e.to_string())?),
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
    privileges::drop_privileges(&target).map_err(|e| e.to_string())?;
    Ok(pidfile)
}

/// Builds the runtime and serves until a terminating signal.
fn serve(
    listener: std::os::unix::net::UnixListener,
    config: &Config,
    executor: Executor,
    mut created: SocketPath,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the event loop: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pool = match Pool::new("prh-sgio", config.sgio_threads) {
        Ok(pool) => pool,
        Err(e) => {
            error!("cannot set up the SG_IO threads: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server_config = ServerConfig {
        max_connections: config.max_connections,
        max_connections_per_client: config.max_connections_per_client,
        pool,
        policy: crate::server::AccessPolicy {
            uids: config.allowed_uids.clone(),
            gids: config.allowed_gids.clone(),
        },
        connection: ConnectionConfig {
            request_timeout: config.request_timeout(),
            executor,
            audit: config.audit,
        },
    };
    // The path actually listened on: an adopted (socket-activated) socket
    // is wherever its unit put it, not the configured path; a created one
    // was bound elsewhere and renamed into place (D31).
    let serving_on = match &created.0 {
        Some((path, _)) => path.display().to_string(),
        None => listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            .unwrap_or_else(|| config.socket.display().to_string()),
    };
    runtime.block_on(async move {
        let listener = match tokio::net::UnixListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                error!("cannot register the listening socket: {e}");
                return ExitCode::FAILURE;
            }
        };
        info!(pid = std::process::id(), "serving on {serving_on}");
        activation::notify("READY=1");
        server::run(listener, server_config, signals::terminated(), move || {
            activation::notify("STOPPING=1");
            created.remove();
        })
        .await;
        info!("exiting");
        ExitCode::SUCCESS
    })
}

fn fatal(message: &str) -> ExitCode {
    eprintln!("pr-helper: {message}");
    ExitCode::FAILURE
}

/// Raises the soft limit on open files to the hard limit. Every connection
/// holds a socket and, while a request is in flight, a device fd; under
/// systemd's default soft limit of 1024 the helper would run out of fds
/// before reaching its default connection limit. Raising the soft limit up
/// to the hard one needs no privilege; failing to is only worth a note (the
/// server refuses connections cleanly when fds run out, D10).
fn raise_fd_limit() {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            match nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_NOFILE,
                hard,
                hard,
            ) {
                Ok(()) => tracing::debug!("open file limit raised from {soft} to {hard}"),
                Err(e) => tracing::info!("cannot raise the open file limit from {soft}: {e}"),
            }
        }
        Ok(_) => {}
        Err(e) => tracing::info!("cannot read the open file limit: {e}"),
    }
}
