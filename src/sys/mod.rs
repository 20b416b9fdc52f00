//! The bottom layer: system calls that no crate we use wraps safely (or
//! not for every target), each behind a safe function, so that the layers
//! above call them without `unsafe`.
//!
//! The other kernel and C interfaces keep their `unsafe` in named modules
//! of their own layer, because their rules belong to that layer: the SG_IO
//! header and its sense buffer (`scsi::sgio`), SCM_RIGHTS with the
//! reference's read sizes (`protocol::fdpass`), fork while single-threaded
//! and the early signal handlers (`process::daemon`, `process::janitor`,
//! `process::signals`), the seccomp filter and its SIGSYS handler
//! (`process::sandbox::seccomp`), socket activation (`process::activation`)
//! and libmpathpersist (`mpath`). README's "How it works" lists them.

// Unsafe code: the system calls below.
#![allow(unsafe_code)]

pub mod fs;
pub mod socket;
