//! Every committed seed runs through its harness without a failed check.

use std::path::Path;

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run fuzz/seed.sh)", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

#[test]
fn decoder_seeds() {
    let mut requests = 0;
    let mut violations = 0;
    for (name, bytes) in seeds("decoder") {
        let o = fuzz_support::decoder::run(&bytes);
        println!("{name}: {o:?}");
        requests += o.requests;
        violations += o.violations;
        // A seed named for a violation produces one; the others are served.
        let bad = [
            "bad-",
            "no-fd",
            "two-fds",
            "fds-on-two",
            "seventeen",
            "twenty-one",
            "too-long",
            "fd-with-params",
            "violation",
            "params-tail",
        ];
        if bad.iter().any(|b| name.contains(b)) {
            assert!(o.violations >= 1, "{name}: {o:?}");
        } else if !name.starts_with("eof-") {
            assert!(o.requests >= 1 && o.violations == 0, "{name}: {o:?}");
        }
    }
    assert!(requests > 30 && violations > 15, "{requests} {violations}");
}

#[test]
fn handshake_seeds() {
    for (_, bytes) in seeds("handshake_and_response") {
        fuzz_support::handshake::run(&bytes);
    }
}

#[test]
fn scsi_seeds() {
    for (_, bytes) in seeds("scsi") {
        fuzz_support::scsi::run(&bytes);
    }
}

#[test]
fn mpath_translate_seeds() {
    for (_, bytes) in seeds("mpath_translate") {
        fuzz_support::mpath::run(&bytes);
    }
}

#[test]
fn short_and_empty_inputs() {
    for n in 0..130 {
        let bytes = vec![0xffu8; n];
        fuzz_support::decoder::run(&bytes);
        fuzz_support::handshake::run(&bytes);
        fuzz_support::scsi::run(&bytes);
        fuzz_support::mpath::run(&bytes);
    }
}
