//! pr-helper: a drop-in replacement for QEMU's `qemu-pr-helper`.
//!
//! QEMU's `pr-manager-helper` object forwards SCSI PERSISTENT RESERVE IN/OUT
//! commands, with the device's file descriptor, over a Unix socket; this
//! privileged helper runs them with SG_IO and answers with status, sense and
//! data. ARCHITECTURE.md explains the design; the modules are its layers,
//! each using only the ones listed before it (tests/layers.rs checks this):
//!
//! * `sys`: system calls no crate wraps safely, as safe functions;
//! * [`protocol`]: the wire format (pure encode/decode) and fd passing;
//! * [`scsi`]: status and sense rules, the SG_IO ioctl, and the SPC
//!   persistent-reservation constants, CDBs and TransportIDs;
//! * `server`: the listening socket, the accept loop, connections, running
//!   one request (device checks, the per-device bound, the SG_IO pool), the
//!   audit record;
//! * [`mpath`]: beside the server, dm-multipath devices through
//!   libmpathpersist (feature `mpath`);
//! * [`client`]: the client side of the protocol and the client tools
//!   (`ping`, `persist`, `probe`), on the bottom layers only;
//! * [`process`]: the process around the server: the command line and
//!   configuration, start-up, logging, socket activation, daemonizing,
//!   privileges, signals and the sandbox.

#![warn(missing_docs)]
// Unsafe code only where a module says why it needs it, with
// `#![allow(unsafe_code)]` (the kernel interfaces: sys, SG_IO, fd passing,
// device-mapper, libmpathpersist, seccomp, signals, fork, socket
// activation), and every unsafe block documented (`// SAFETY:`).
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod client;
pub mod mpath;
pub mod process;
pub mod protocol;
pub mod scsi;
pub(crate) mod server;
pub(crate) mod sys;
