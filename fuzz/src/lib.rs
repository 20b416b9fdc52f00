//! Harnesses for the fuzz targets in `fuzz_targets/`, kept in a library so
//! that the seed generator (`examples/seed.rs`) and `cargo test` share them.

pub mod decoder;
pub mod handshake;
pub mod mpath;
pub mod scsi;
