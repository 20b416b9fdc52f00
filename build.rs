//! Links libmpathpersist for the `mpath` feature. Debian installs only the
//! versioned shared object (/lib/x86_64-linux-gnu/libmpathpersist.so.0, from
//! multipath-tools; there is no -dev package), so it is linked by file name.
//!
//! The binary also exports its own `mpath_connect` (src/mpath/multipathd.rs)
//! in its dynamic symbol table, so that libmpathpersist's call to libmpathcmd's
//! `mpath_connect` binds to it: it talks only to a multipathd that runs as root.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_MPATH").is_some() {
        println!("cargo:rustc-link-lib=dylib:+verbatim=libmpathpersist.so.0");
        println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic-symbol=mpath_connect");
    }
}
