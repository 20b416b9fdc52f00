//! Links libmpathpersist for the `mpath` feature. Debian installs only the
//! versioned shared object (/lib/x86_64-linux-gnu/libmpathpersist.so.0, from
//! multipath-tools; there is no -dev package), so it is linked by file name.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_MPATH").is_some() {
        println!("cargo:rustc-link-lib=dylib:+verbatim=libmpathpersist.so.0");
    }
}
