#![no_main]
//! See `fuzz_support::handshake` for the input format and the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzz_support::handshake::run(data);
});
