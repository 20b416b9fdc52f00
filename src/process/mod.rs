//! The process around the server: everything from `main` to a running
//! accept loop, and back out at shutdown.
//!
//! * [`startup`]: the start-up order, the runtime, shutdown;
//! * [`cli`]: the command line: the server's options and the client
//!   subcommands;
//! * [`config`]: the settings, defined once, and their layers (defaults,
//!   file, environment, command line);
//! * `logging`: stderr or the journal, verbosity, `-T`;
//! * `activation`: systemd socket activation and sd_notify;
//! * `daemon`: `-d` with a readiness pipe, the pidfile;
//! * `privileges`: capabilities and identity;
//! * `signals`: SIGTERM, SIGINT, SIGHUP;
//! * [`sandbox`]: Landlock and seccomp after start-up.

pub(crate) mod activation;
pub mod cli;
pub mod config;
pub(crate) mod daemon;
pub(crate) mod janitor;
pub(crate) mod logging;
pub(crate) mod privileges;
pub mod sandbox;
pub(crate) mod signals;
pub mod startup;
