//! Client tools built into the binary: operators and tests need no other
//! program to talk to a helper.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use crate::client::Client;
use crate::config::DEFAULT_SOCKET;

/// `pr-helper ping`.
#[derive(Debug, Args)]
pub struct PingArgs {
    /// Socket of the helper.
    #[arg(short = 'k', long = "socket", value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub timeout: u64,
}

/// Connects, completes the handshake, and says so. The container HEALTHCHECK
/// and Kubernetes probes run this.
pub fn ping(args: &PingArgs) -> ExitCode {
    let start = Instant::now();
    let result = std::os::unix::net::UnixStream::connect(&args.socket).and_then(|stream| {
        let timeout = Some(Duration::from_secs(args.timeout.max(1)));
        stream.set_read_timeout(timeout)?;
        stream.set_write_timeout(timeout)?;
        Client::handshake(stream)
    });
    match result {
        Ok(client) => {
            println!(
                "pr-helper at {} is serving (features {:#010x}, handshake in {} us)",
                args.socket.display(),
                client.helper_features,
                start.elapsed().as_micros()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "pr-helper: no helper serving at {}: {e}",
                args.socket.display()
            );
            ExitCode::FAILURE
        }
    }
}
