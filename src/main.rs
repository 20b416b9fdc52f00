//! The `pr-helper` executable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use pr_helper::command::ExecConfig;
use pr_helper::connection::ConnectionConfig;
use pr_helper::server::{self, ServerConfig};
use pr_helper::{listener, signals};

/// Command line (the 'Process and configuration' work completes it).
#[derive(Debug, Parser)]
#[command(
    name = "pr-helper",
    version,
    about = "Persistent Reservation helper for QEMU"
)]
struct Cli {
    /// Socket path (must be absolute).
    #[arg(
        short = 'k',
        long = "socket",
        value_name = "PATH",
        default_value = "/run/qemu-pr-helper.sock"
    )]
    socket: PathBuf,
    /// Increase verbosity (repeatable).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only print errors (wins over -v).
    #[arg(short, long)]
    quiet: bool,
    /// SG_IO timeout in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    sgio_timeout: u64,
    /// Seconds a started request may take to arrive completely.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    request_timeout: u64,
    /// Most simultaneous connections.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_connections: usize,
    /// Most SG_IO commands executing at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    sgio_threads: usize,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let level = if cli.quiet {
        tracing::Level::ERROR
    } else {
        match cli.verbose {
            0 => tracing::Level::WARN,
            1 => tracing::Level::INFO,
            2 => tracing::Level::DEBUG,
            _ => tracing::Level::TRACE,
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .without_time()
        .init();
    if let Err(e) = signals::install_early() {
        eprintln!("pr-helper: cannot install signal handlers: {e}");
        return ExitCode::from(1);
    }
    if !cli.socket.is_absolute() {
        eprintln!("pr-helper: socket path must be absolute");
        return ExitCode::from(1);
    }
    let bound = match listener::bind(&cli.socket) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("pr-helper: {e}");
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pr-helper: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let config = ServerConfig {
        max_connections: cli.max_connections.max(1),
        sgio_threads: cli.sgio_threads,
        connection: ConnectionConfig {
            request_timeout: Duration::from_secs(cli.request_timeout),
            exec: ExecConfig {
                sgio_timeout: Duration::from_secs(cli.sgio_timeout),
            },
        },
    };
    let path = bound.path.clone();
    let result = runtime.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(bound.listener)?;
        tracing::info!("listening on {}", path.display());
        server::run(listener, config, signals::terminated(), move || {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!("cannot remove socket {}: {e}", path.display());
            }
        })
        .await;
        Ok::<(), std::io::Error>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pr-helper: {e}");
            ExitCode::from(1)
        }
    }
}
