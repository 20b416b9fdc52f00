//! The `pr-helper` command line: the helper's options ([`ServerArgs`], one
//! per setting, defined with the settings in [`crate::process::config`]) or one of the
//! client tools, whose options the tools define themselves
//! ([`crate::client::tools`]). Only the binary and the documentation generator use
//! this; the client tools do not.

use clap::{Parser, Subcommand};

use crate::client::paths::PathsArgs;
use crate::client::tools::{PersistArgs, PingArgs, ProbeArgs};
use crate::process::config::ServerArgs;

/// The command line. Server options are qemu-pr-helper's (same letters, same
/// meaning), plus long options for every other setting.
#[derive(Debug, Parser)]
#[command(
    name = "pr-helper",
    version,
    about = "Persistent Reservation helper for QEMU (drop-in replacement for qemu-pr-helper)",
    long_about = "Runs SCSI PERSISTENT RESERVE IN/OUT commands for QEMU's pr-manager-helper \
                  object on the file descriptors QEMU passes over a Unix socket.",
    args_conflicts_with_subcommands = true,
    after_help = "Every option can also be set in the configuration file (key: the long option \
                  with '_' for '-') and in the environment (PR_HELPER_<KEY>). \
                  See pr-helper(8)."
)]
pub struct Cli {
    /// A client tool instead of the helper.
    #[command(subcommand)]
    pub command: Option<ClientCommand>,
    /// Helper options.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Client tools built into the same binary.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Connect to a running helper, do the handshake, report success (exit 0) or failure (exit 1).
    Ping(PingArgs),
    /// Send one PERSISTENT RESERVE IN/OUT through a running helper, as QEMU would, and decode the answer.
    Persist(Box<PersistArgs>),
    /// Ask a device directly (SG_IO) whether it supports persistent reservations.
    Probe(ProbeArgs),
    /// Show which path of a dm-multipath map holds which registration (SG_IO on each path) and
    /// whether the paths agree: exit 0 consistent, 3 disagree, 4 undetermined, 1 error.
    Paths(PathsArgs),
}
