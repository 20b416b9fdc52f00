//! The hand-written libmpathpersist FFI against the real header: a C
//! program compiled against `mpath_persist.h` (from Debian's multipath-tools
//! source, fetched by `tests/run setup`) prints sizes and offsets, which
//! must equal the Rust binding's.
#![cfg(feature = "mpath")]

use std::path::PathBuf;
use std::process::Command;

fn header() -> PathBuf {
    let cache = std::env::var("PRH_TEST_CACHE").unwrap_or_else(|_| "/var/cache/pr-helper".into());
    let h = PathBuf::from(cache).join("mpath/mpath_persist.h");
    assert!(
        h.exists(),
        "{} missing: run `tests/run setup` (tests/testbed/fetch-mpath-header.sh)",
        h.display()
    );
    h
}

#[test]
fn ffi_layout_matches_mpath_persist_h() {
    let header = header();
    let dir = tempfile::tempdir().unwrap();
    let rust = pr_helper::mpath::layout();
    let mut c = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include \"mpath_persist.h\"\nint main(void) {\n",
    );
    for (name, _) in &rust {
        c.push_str(&format!(
            "    printf(\"%s %zu\\n\", \"{name}\", (size_t){name});\n"
        ));
    }
    c.push_str("    return 0;\n}\n");
    let src = dir.path().join("layout.c");
    std::fs::write(&src, c).unwrap();
    let exe = dir.path().join("layout");
    let out = Command::new("gcc")
        .arg("-I")
        .arg(header.parent().unwrap())
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("gcc");
    assert!(
        out.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&exe).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let c_values: Vec<(String, usize)> = text
        .lines()
        .map(|l| {
            let (n, v) = l.rsplit_once(' ').unwrap();
            (n.to_string(), v.parse().unwrap())
        })
        .collect();
    assert_eq!(c_values.len(), rust.len());
    for ((cn, cv), (rn, rv)) in c_values.iter().zip(&rust) {
        assert_eq!(cn, rn);
        assert_eq!(cv, rv, "{rn}: C says {cv}, the Rust binding {rv}");
    }
}
