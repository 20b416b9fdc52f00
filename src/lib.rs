//! pr-helper: a drop-in replacement for QEMU's `qemu-pr-helper`.
//!
//! QEMU's `pr-manager-helper` object forwards SCSI PERSISTENT RESERVE IN/OUT
//! commands, with the device's file descriptor, over a Unix socket; this
//! privileged helper runs them with SG_IO and answers with status, sense and
//! data. Module map:
//!
//! * [`protocol`]: the wire format, pure encode/decode;
//! * [`scsi`]: status and sense rules, and the one SG_IO ioctl;
//! * [`command`]: executing one request;
//! * [`device`]: which fds may carry a PR command (O_PATH, partitions, partial dm targets);
//! * [`connection`], [`server`]: connections, the accept loop, shutdown;
//! * [`fdpass`]: bytes with file descriptors (SCM_RIGHTS) on Unix sockets;
//! * [`pool`]: the bounded worker threads that run SG_IO off the event loop;
//! * [`isolation`]: at most two commands at once per device, the rest wait;
//! * [`mpath`]: dm-multipath devices through libmpathpersist (feature `mpath`);
//! * [`config`]: the settings, their options and figment layers;
//! * [`cli`]: the command line (helper options or a client tool);
//! * [`startup`], [`listener`], [`activation`], [`daemon`], [`privileges`],
//!   [`signals`], [`logging`]: the process around the server;
//! * [`sandbox`]: Landlock and seccomp after start-up;
//! * [`audit`]: one record per PR OUT;
//! * [`ratelimit`]: log lines at a limited rate, for every layer;
//! * [`pr`]: PR service actions, CDBs and parameter lists (SPC-4), used by
//!   the server's command code and multipath translation and by the clients;
//! * [`client`], [`tools`]: the client side, for tools and tests.

#![warn(missing_docs)]
// Unsafe code only where a module says why it needs it, with
// `#![allow(unsafe_code)]` (the kernel interfaces: SG_IO, fd passing,
// device-mapper, libmpathpersist, seccomp, signals, fork, socket
// activation), and every unsafe block documented (`// SAFETY:`).
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod activation;
pub mod audit;
pub mod cli;
pub mod client;
pub mod command;
pub mod config;
pub mod connection;
pub mod daemon;
pub mod device;
pub mod fdpass;
pub mod isolation;
pub mod listener;
pub mod logging;
pub mod mpath;
pub mod pool;
pub mod pr;
pub mod privileges;
pub mod protocol;
pub mod ratelimit;
pub mod sandbox;
pub mod scsi;
pub mod server;
pub mod signals;
pub mod startup;
pub mod tools;
