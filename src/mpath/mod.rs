//! Multipath: persistent reservations on dm-multipath devices go through
//! libmpathpersist, which registers keys on every path and works with
//! multipathd so that paths coming back get them too (spec §7). READ FULL
//! STATUS is the exception: it is answered with SG_IO on the map (D14,
//! `command::Executor::route_of`), never through the library.
//!
//! * [`translate`]: the pure request/reply translation (every build);
//! * `ffi`, `detect`, `worker` (feature `mpath`): the library binding,
//!   device-mapper detection, and the one thread that makes library calls;
//! * `multipathd` (feature `mpath`): the `mpath_connect` pr-helper gives
//!   the library, which talks only to a multipathd that runs as root.

pub mod translate;

#[cfg(feature = "mpath")]
mod detect;
#[cfg(feature = "mpath")]
mod ffi;
#[cfg(feature = "mpath")]
pub mod multipathd;
#[cfg(feature = "mpath")]
mod worker;

#[cfg(feature = "mpath")]
pub use detect::DetectError;
#[cfg(feature = "mpath")]
pub use ffi::{layout, LibraryInitError};
#[cfg(feature = "mpath")]
pub use worker::{InitError, Multipath, Prepared};
