//! The `pr-helper` executable: the helper itself, or one of its client tools.

#![deny(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use pr_helper::process::cli::{Cli, ClientCommand};
use pr_helper::{client::paths, client::tools, process::startup};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version exit 0; every usage error exits 1, as in
            // qemu-pr-helper (clap's own convention would be 2).
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match &cli.command {
        Some(ClientCommand::Ping(args)) => tools::ping(args),
        Some(ClientCommand::Persist(args)) => tools::persist(args),
        Some(ClientCommand::Probe(args)) => tools::probe(args),
        Some(ClientCommand::Paths(args)) => paths::paths(args),
        None => startup::run(&cli.server),
    }
}
