//! The crate's layering, checked: which file imports which, no cycles
//! between files, and no import from a lower layer into a higher one.
//!
//! `cargo test --test layers -- --nocapture` prints the import graph, one
//! line per file with the files it uses; ARCHITECTURE.md explains the
//! layers. An "import" is any `crate::` or `super::` path in the code
//! (comments and string literals are ignored, and so are the items marked
//! `#[cfg(test)]`, but nothing after them), resolved to the file that
//! defines the longest matching module path. `mod x;` declarations are
//! containment, not imports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first, and what each top-level module may import
/// besides itself. Multipath sits beside the server and uses it (its reply
/// handle, pool tickets and fd inspection); the server reaches multipath
/// only through its own trait (`server::command::MultipathBackend`);
/// the client side uses the bottom layer only; the process layer builds
/// everything else. The crate root (lib.rs) and the binary (main.rs) sit
/// above all of them.
const ALLOWED: &[(&str, &[&str])] = &[
    // System calls no crate wraps safely: nothing below it.
    ("sys", &[]),
    // The wire format.
    ("protocol", &["sys"]),
    // SCSI status and sense rules, SG_IO, the SPC persistent-reservation
    // constants and TransportIDs.
    ("scsi", &["sys", "protocol"]),
    // Running requests.
    ("server", &["sys", "protocol", "scsi"]),
    ("mpath", &["sys", "protocol", "scsi", "server"]),
    // The client side: talks the protocol, builds and decodes PR commands.
    ("client", &["sys", "protocol", "scsi"]),
    // The process around the server.
    (
        "process",
        &["sys", "protocol", "scsi", "server", "mpath", "client"],
    ),
];

fn top(module: &str) -> &str {
    module.split("::").next().unwrap()
}

/// Module path of a file below src/ ("server::pool" for src/server/pool.rs).
fn module_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    match stem {
        "lib" if parts.is_empty() => "crate".into(),
        "main" if parts.is_empty() => "main".into(),
        "mod" => parts.join("::"),
        _ => {
            parts.push(stem.to_string());
            parts.join("::")
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code with comments, string and char literals blanked out.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'r' && (b[i..].starts_with(b"r\"") || b[i..].starts_with(b"r#")) && {
            // A raw string, not an identifier ending in r.
            i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
        } {
            let mut j = i + 1;
            let mut hashes = 0;
            while j < b.len() && b[j] == b'#' {
                hashes += 1;
                j += 1;
            }
            if j < b.len() && b[j] == b'"' {
                let end = format!("\"{}", "#".repeat(hashes));
                let rest = &text[j + 1..];
                let k = rest.find(&end).map_or(b.len(), |k| j + 1 + k + end.len());
                out.push(' ');
                i = k;
            } else {
                out.push('r');
                i += 1;
            }
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push(' ');
        } else if b[i] == b'\''
            && i + 2 < b.len()
            && (b[i + 2] == b'\'' || (b[i + 1] == b'\\' && b[i + 3..].contains(&b'\'')))
        {
            // A char literal ('x', '\n', '\x00', '\''); lifetimes have no closing quote.
            i += 1;
            if b[i] == b'\\' {
                i += 2;
            }
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i += 1;
            out.push(' ');
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Every path a `crate::` / `super::` prefix starts, with `{...}` groups
/// expanded: "crate::{a, b::{c, d}}" gives a, b::c, b::d.
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    fn ident_char(c: char) -> bool {
        c.is_ascii_alphanumeric() || c == '_'
    }
    fn group(s: &[char], mut i: usize, base: &str, out: &mut Vec<String>) -> usize {
        // s[i] is just after '{'
        let mut cur = String::new();
        while i < s.len() {
            let c = s[i];
            if c == '{' {
                i = group(s, i + 1, &format!("{base}{cur}"), out);
                cur.clear();
                continue;
            }
            if c == ',' || c == '}' {
                let t = cur.trim().trim_end_matches("::").to_string();
                let t = t.split(" as ").next().unwrap().trim().to_string();
                if !t.is_empty() && t != "self" && t != "*" {
                    out.push(format!("{base}{t}"));
                } else if t == "self" || t == "*" {
                    out.push(base.trim_end_matches("::").to_string());
                }
                cur.clear();
                i += 1;
                if c == '}' {
                    return i;
                }
                continue;
            }
            if !c.is_whitespace() || !cur.is_empty() {
                cur.push(c);
            }
            i += 1;
        }
        i
    }
    let chars: Vec<char> = code.chars().collect();
    let text: String = chars.iter().collect();
    let mut out = Vec::new();
    let mut start = 0;
    while let Some(pos) = text[start..].find(prefix) {
        let at = start + pos;
        start = at + prefix.len();
        let before = text[..at].chars().last();
        if before.is_some_and(|c| ident_char(c) || c == ':') {
            continue;
        }
        let rest: Vec<char> = text[start..].chars().collect();
        let mut path = String::new();
        let mut i = 0;
        while i < rest.len() {
            let c = rest[i];
            if ident_char(c) || c == ':' {
                path.push(c);
                i += 1;
            } else if c == '{' {
                group(&rest, i + 1, &path, &mut out);
                path.clear();
                break;
            } else {
                break;
            }
        }
        let p = path.trim_end_matches(':').to_string();
        if !p.is_empty() {
            out.push(p);
        }
    }
    out
}

/// `code` (comments and literals already blanked by [`code_only`]) without
/// the items marked `#[cfg(test)]`: each such attribute, any attributes
/// after it, and the item it marks, which ends at its first `;` when that
/// comes before any `{` (`use`, `mod x;`, a field-less item) and otherwise
/// at the brace that closes its first `{` (a `mod`, `fn`, `impl` body).
fn without_test_items(code: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let b = code.as_bytes();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    while let Some(pos) = code[i..].find(MARK) {
        let at = i + pos;
        out.push_str(&code[i..at]);
        let mut j = at + MARK.len();
        let semicolon = code[j..].find(';').map(|k| j + k);
        let brace = code[j..].find('{').map(|k| j + k);
        j = match (semicolon, brace) {
            (Some(sc), Some(br)) if sc < br => sc + 1,
            (Some(sc), None) => sc + 1,
            (_, Some(br)) => {
                let mut depth = 0usize;
                let mut k = br;
                while k < b.len() {
                    match b[k] {
                        b'{' => depth += 1,
                        b'}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    k += 1;
                }
                k + 1
            }
            (None, None) => b.len(),
        };
        i = j.min(b.len());
    }
    out.push_str(&code[i..]);
    out
}

struct Graph {
    files: BTreeMap<String, PathBuf>,
    edges: BTreeMap<String, BTreeSet<String>>,
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let files: BTreeMap<String, PathBuf> = paths
        .iter()
        .map(|p| (module_of(p.strip_prefix(&src).unwrap()), p.clone()))
        .collect();
    let resolve = |path: &str| -> Option<String> {
        let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        (1..=segs.len())
            .rev()
            .map(|n| segs[..n].join("::"))
            .find(|m| files.contains_key(m))
    };
    let mut edges = BTreeMap::new();
    for (module, file) in &files {
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        // Test items inside a file may reach anywhere; they are not part of
        // the layering. Only they are skipped: the code after them counts.
        let code = without_test_items(&code);
        let code = code.as_str();
        let mut deps = BTreeSet::new();
        for p in paths_after(code, "crate::") {
            if let Some(m) = resolve(&p) {
                deps.insert(m);
            }
        }
        // super:: is the parent of the module the file defines (the same for
        // a mod.rs and a named file: both define the module their path names).
        let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
        for p in paths_after(code, "super::") {
            let full = if parent.is_empty() {
                p
            } else {
                format!("{parent}::{p}")
            };
            if let Some(m) = resolve(&full) {
                deps.insert(m);
            }
        }
        // A module reaches its own submodules by relative paths (`pool::Pool`
        // in server/mod.rs for server/pool.rs, `self::pool::Pool`).
        let own = if module == "crate" {
            String::new()
        } else {
            format!("{module}::")
        };
        for child in files.keys().filter(|c| {
            c.strip_prefix(own.as_str())
                .is_some_and(|rest| !rest.is_empty() && !rest.contains("::"))
        }) {
            let name = &child[own.len()..];
            let relative = paths_after(code, &format!("{name}::")).len()
                + paths_after(code, &format!("self::{name}")).len()
                + code.matches(&format!("use {name};")).count();
            if relative > 0 {
                deps.insert(child.clone());
            }
        }
        deps.remove(module);
        edges.insert(module.clone(), deps);
    }
    Graph { files, edges }
}

fn print(g: &Graph) {
    for (m, deps) in &g.edges {
        let list: Vec<&str> = deps.iter().map(String::as_str).collect();
        println!("{m:24} -> {}", list.join(", "));
    }
}

#[test]
fn no_import_cycles_between_files() {
    let g = graph();
    print(&g);
    // Depth-first search; a back edge is a cycle.
    fn visit(
        g: &Graph,
        m: &str,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        cycles: &mut Vec<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut c = stack[i..].to_vec();
            c.push(m.to_string());
            cycles.push(c.join(" -> "));
            return;
        }
        stack.push(m.to_string());
        for d in &g.edges[m] {
            visit(g, d, stack, done, cycles);
        }
        stack.pop();
        done.insert(m.to_string());
    }
    let mut cycles = Vec::new();
    let mut done = BTreeSet::new();
    for m in g.files.keys() {
        visit(&g, m, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn imports_point_down_the_layers() {
    let g = graph();
    let mut wrong = Vec::new();
    for (m, deps) in &g.edges {
        if m == "crate" || m == "main" {
            continue;
        }
        let Some((_, allowed)) = ALLOWED.iter().find(|(t, _)| *t == top(m)) else {
            wrong.push(format!("{m}: in no layer (add its folder to ALLOWED)"));
            continue;
        };
        for d in deps {
            if top(d) != top(m) && !allowed.contains(&top(d)) {
                wrong.push(format!("{m} imports {d}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_parser_sees_grouped_and_nested_imports() {
    let code = code_only(
        "use crate::{a, b::{c, d as e}};\n// crate::comment\nlet s = \"crate::string\";\nfn f() { crate::g::h(); super::i::j }",
    );
    let mut found = paths_after(&code, "crate::");
    found.sort();
    assert_eq!(found, ["a", "b::c", "b::d", "g::h"]);
    assert_eq!(paths_after(&code, "super::"), ["i::j"]);
}

/// Issue 23, item 2: the check used to stop reading a file at its first
/// `#[cfg(test)]`, so an import after a test module (`use crate::process as
/// _;` at the end of server/pool.rs, now server/pool/mod.rs) went unseen. Only the test items are
/// skipped now.
#[test]
fn code_after_a_test_module_is_checked() {
    let code = code_only(
        "use crate::a;\n#[cfg(test)]\nmod tests {\n    use crate::hidden;\n    fn f() { if x { crate::also_hidden(); } }\n}\n#[cfg(test)]\nuse crate::test_only;\nimpl T {\n    #[cfg(test)]\n    pub fn of() -> u8 { crate::t::x() }\n    fn g() {}\n}\nuse crate::process as _;\n",
    );
    let mut found = paths_after(&without_test_items(&code), "crate::");
    found.sort();
    assert_eq!(found, ["a", "process"]);
    // The probe against the real tree: server/pool/mod.rs with an upward
    // import after its tests is flagged, naming the file.
    let pool = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server/pool/mod.rs");
    let probed = code_only(&format!(
        "{}\nuse crate::process as _;\n",
        std::fs::read_to_string(pool).unwrap()
    ));
    let seen = paths_after(&without_test_items(&probed), "crate::");
    assert!(
        seen.iter().any(|p| top(p) == "process"),
        "server::pool imports process: not seen in {seen:?}"
    );
}
