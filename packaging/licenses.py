#!/usr/bin/env python3
# Renders the licence files of packaging/licenses/ from Cargo.lock's crates
# (packaging/gen-licenses.sh runs it; nothing there is written by hand):
#
#   licenses.py collect METADATA.json TREE -> ABOUT.json (crates, licence texts)
#   licenses.py expression TREE            -> the SPDX expression of the binary
#   licenses.py notices ABOUT.json TREE    -> THIRD-PARTY-NOTICES
#   licenses.py copyright ABOUT.json TREE  -> debian/copyright (DEP-5)
#
# TREE is `cargo tree --edges no-build,no-dev,no-proc-macro --format '{l}|{p}'`
# for a Linux target: the crates linked into the binary (as Fedora's
# %cargo_license counts them). METADATA.json is `cargo metadata`: where each
# crate's sources are. collect reads the licence files every crate ships
# (LICENSE*, COPYING*, UNLICENSE, NOTICE*; copyright lines included) and
# tells each text's licence from its content; a crate that ships none gets
# the text another crate ships for its declared licence, marked as such.
# SPDX-License-Identifier: GPL-2.0-or-later
import glob
import json
import os
import re
import sys

OURS = "GPL-2.0-or-later"


def norm(expr):
    """One spelling per SPDX expression: old "A/B" is "A OR B", and the
    operands of a plain OR list are sorted (MIT OR Apache-2.0 is
    Apache-2.0 OR MIT)."""
    expr = expr.strip()
    if "/" in expr and " " not in expr:
        expr = " OR ".join(expr.split("/"))
    if " AND " not in expr and "(" not in expr:
        expr = " OR ".join(sorted(p.strip() for p in expr.split(" OR ")))
    return expr


def tree(path):
    """(name, version, normalized licence) of each linked crate, sorted."""
    out = set()
    for line in open(path):
        line = line.strip()
        if not line or "|" not in line:
            continue
        lic, pkg = line.split("|", 1)
        parts = pkg.replace(" (*)", "").split()
        name, version = parts[0], parts[1].lstrip("v")
        out.add((name, version, norm(lic)))
    return sorted(out)


def expression(crates):
    """GPL-2.0-or-later AND each distinct crate licence; the Rust standard
    library (MIT OR Apache-2.0) and, in the static binary, musl (MIT) are
    linked as well."""
    exprs = {c[2] for c in crates if c[0] != "pr-helper"}
    exprs |= {norm("MIT OR Apache-2.0"), "MIT"}
    exprs.discard(OURS)
    paren = lambda e: "(%s)" % e if " " in e else e
    # Single identifiers first, then the choices, each group sorted.
    ordered = sorted(exprs, key=lambda e: (" " in e, e))
    return " AND ".join([OURS] + [paren(e) for e in ordered])


def about(path):
    return json.load(open(path))


NAMES = {
    "MIT": "MIT License",
    "Apache-2.0": "Apache License 2.0",
    "Apache-2.0 WITH LLVM-exception": "Apache License 2.0 with LLVM Exception",
    "BSD-3-Clause": "BSD 3-Clause License",
    "BSD-2-Clause": "BSD 2-Clause License",
    "Unlicense": "The Unlicense",
    "Zlib": "zlib License",
    "Unicode-3.0": "Unicode License v3",
}


def classify(text):
    t = " ".join(text.split())
    if "LLVM Exceptions" in t:
        return "Apache-2.0 WITH LLVM-exception"
    if "Apache License" in t and "Version 2.0" in t:
        return "Apache-2.0"
    if "Permission is hereby granted, free of charge" in t:
        return "MIT"
    if "This is free and unencumbered software" in t:
        return "Unlicense"
    if "Redistribution and use in source and binary forms" in t:
        return "BSD-3-Clause" if "Neither the name" in t or "names of its contributors" in t else "BSD-2-Clause"
    if "This software is provided 'as-is'" in t:
        return "Zlib"
    if "UNICODE LICENSE V3" in t.upper():
        return "Unicode-3.0"
    return None


LICENSE_FILE = re.compile(r"^(LICEN[CS]E|COPYING|UNLICENSE|NOTICE|COPYRIGHT)", re.I)


def collect(meta_path, tree_path):
    meta = json.load(open(meta_path))
    linked = {(c[0], c[1]) for c in tree(tree_path)}
    crates, texts, missing = [], {}, []
    for p in sorted(meta["packages"], key=lambda p: (p["name"], p["version"])):
        if (p["name"], p["version"]) not in linked or p["name"] == "pr-helper":
            continue
        pkg = {k: p.get(k) for k in ("name", "version", "license", "authors")}
        crates.append({"package": pkg, "license": norm(p.get("license") or "")})
        d = os.path.dirname(p["manifest_path"])
        files = sorted(f for f in os.listdir(d) if LICENSE_FILE.match(f) and os.path.isfile(os.path.join(d, f)))
        if not files:
            missing.append(pkg)
        for f in files:
            text = open(os.path.join(d, f), encoding="utf-8", errors="replace").read().replace("\r\n", "\n").strip()
            lid = classify(text) or "LicenseRef-%s" % f
            e = texts.setdefault(text, {"id": lid, "name": NAMES.get(lid, lid), "text": text, "used_by": []})
            e["used_by"].append({"crate": pkg})
    by_id = {}
    for e in texts.values():
        by_id.setdefault(e["id"], e)
    for pkg in missing:
        # No licence file in the crate: the declared licence's text as
        # another crate ships it (the first alternative of a choice).
        lid = norm(pkg["license"]).split(" OR ")[0]
        if lid not in by_id:
            sys.exit("licenses.py: %s %s ships no licence file and no other crate has a %s text" % (pkg["name"], pkg["version"], lid))
        e = by_id[lid]
        texts.setdefault(("fallback", lid), {"id": lid, "name": e["name"], "used_by": [],
            "text": "[%s ships no licence file; its Cargo.toml declares %s. The %s text:]\n\n%s" % (
                pkg["name"], pkg["license"], lid, e["text"])})["used_by"].append({"crate": pkg})
    lic = sorted(texts.values(), key=lambda e: (e["id"], e["used_by"][0]["crate"]["name"]))
    overview = [{"id": i, "text": by_id[i]["text"]} for i in sorted(by_id)]
    return {"crates": crates, "licenses": lic, "overview": overview}


def crate_key(p):
    return "%s %s" % (p["name"], p["version"])


def notices(ab, crates):
    linked = {(c[0], c[1]) for c in crates}
    out = []
    w = out.append
    w("Third-party notices for pr-helper")
    w("=================================")
    w("")
    w("pr-helper is GPL-2.0-or-later (/usr/share/licenses/pr-helper/LICENSE or")
    w("/usr/share/common-licenses/GPL-2). Its binary also contains the Rust crates")
    w("listed below, under the licences whose texts follow, as the crates ship them.")
    w("The Rust standard library (MIT OR Apache-2.0, Copyright The Rust Project")
    w("Developers) is linked into every build, and the static (musl) binary also")
    w("contains musl libc (MIT, Copyright 2005-2020 Rich Felker, et al.); both")
    w("licence texts are among those below.")
    w("")
    w("Generated from Cargo.lock by packaging/gen-licenses.sh: the crates linked")
    w("into the binary, each with the licence files it ships.")
    w("")
    w("Crates")
    w("------")
    w("")
    for c in sorted(ab["crates"], key=lambda c: (c["package"]["name"], c["package"]["version"])):
        p = c["package"]
        if p["name"] == "pr-helper":
            continue
        w("%s %s: %s" % (p["name"], p["version"], norm(p.get("license") or c["license"])))
    w("")
    w("Licence texts")
    w("-------------")
    for lic in ab["licenses"]:
        users = sorted({crate_key(u["crate"]) for u in lic["used_by"] if u["crate"]["name"] != "pr-helper"})
        if not users:
            continue
        w("")
        w("=" * 78)
        w("%s (%s)" % (lic["name"], lic["id"]))
        w("Used by: " + ", ".join(users))
        w("-" * 78)
        w("")
        w(lic["text"].replace("\r\n", "\n").rstrip())
    w("")
    return "\n".join(out)


# Debian's copyright format: licence names as in DEP-5 (the SPDX names are
# accepted; an exception is written "with NAME exception").
def dep5_license(expr):
    return re.sub(r"(\S+) WITH (\S+)", r"\1 with \2 exception", expr).replace(" OR ", " or ").replace(" AND ", " and ")


GPL_TEXT = """\
 This program is free software; you can redistribute it and/or modify
 it under the terms of the GNU General Public License as published by
 the Free Software Foundation; either version 2 of the License, or
 (at your option) any later version.
 .
 This program is distributed in the hope that it will be useful,
 but WITHOUT ANY WARRANTY; without even the implied warranty of
 MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
 GNU General Public License for more details.
 .
 On Debian systems, the complete text of the GNU General Public License
 version 2 can be found in "/usr/share/common-licenses/GPL-2"."""

APACHE_TEXT = """\
 Licensed under the Apache License, Version 2.0 (the "License");
 you may not use this file except in compliance with the License.
 You may obtain a copy of the License at
 .
     http://www.apache.org/licenses/LICENSE-2.0
 .
 Unless required by applicable law or agreed to in writing, software
 distributed under the License is distributed on an "AS IS" BASIS,
 WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
 See the License for the specific language governing permissions and
 limitations under the License.
 .
 On Debian systems, the complete text of the Apache License, Version 2.0
 can be found in "/usr/share/common-licenses/Apache-2.0"."""


def indent(text):
    lines = text.replace("\r\n", "\n").strip("\n").split("\n")
    return "\n".join(" " + l.rstrip() if l.strip() else " ." for l in lines)


def copyright(ab, crates):
    groups = {}
    authors = {}
    for c in ab["crates"]:
        p = c["package"]
        if p["name"] == "pr-helper":
            continue
        e = norm(p.get("license") or c["license"])
        groups.setdefault(e, set()).add(p["name"])
        a = [re.sub(r"\s*<[^>]*>", "", x).strip() for x in p.get("authors") or []]
        authors.setdefault(e, set()).update(x for x in a if x)
    out = []
    w = out.append
    w("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/")
    w("Upstream-Name: pr-helper")
    w("Source: https://github.com/pr-helper/pr-helper")
    w("Comment: The binary links the Rust crates below (vendor/NAME in the source")
    w(" tarball, as cargo vendor lays them out) and the Rust standard library; their")
    w(" notices are in /usr/share/doc/pr-helper/THIRD-PARTY-NOTICES.")
    w(" Generated from Cargo.lock by packaging/gen-licenses.sh.")
    w("")
    w("Files: *")
    w("Copyright: 2025-2026 pr-helper developers")
    w("License: GPL-2.0-or-later")
    w("")
    ids = set()
    for e in sorted(groups):
        w("Files:")
        for n in sorted(groups[e]):
            w(" vendor/%s/*" % n)
        who = sorted(authors[e]) or ["the authors of these crates"]
        w("Copyright:")
        for a in who:
            w(" " + a)
        w("License: " + dep5_license(e))
        w("")
        ids |= set(re.findall(r"[A-Za-z0-9.+-]+", re.sub(r"\b(OR|AND|WITH)\b", " ", e)))
    w("License: GPL-2.0-or-later")
    w(GPL_TEXT)
    texts = {o["id"]: o["text"] for o in ab["overview"]}
    for i in sorted(ids - {OURS}):
        w("")
        if i == "LLVM-exception":
            # The Apache-2.0 text is in common-licenses (lintian rejects a
            # full copy); the exception itself follows.
            full = texts.get("Apache-2.0 WITH LLVM-exception", "")
            k = full.find("--- LLVM Exceptions")
            if k < 0:
                sys.exit("licenses.py: no LLVM exception text among the crates' licence files")
            w("License: Apache-2.0 with LLVM-exception exception")
            w(APACHE_TEXT)
            w(" .")
            w(indent(full[k:]))
            continue
        w("License: " + i)
        if i == "Apache-2.0":
            w(APACHE_TEXT)
        else:
            if i not in texts:
                sys.exit("licenses.py: no text for %s in the crates' licence files" % i)
            w(indent(texts[i]))
    w("")
    return "\n".join(out)


def main():
    cmd = sys.argv[1]
    if cmd == "collect":
        sys.stdout.write(json.dumps(collect(sys.argv[2], sys.argv[3]), indent=1, sort_keys=True))
    elif cmd == "expression":
        print(expression(tree(sys.argv[2])))
    elif cmd == "notices":
        sys.stdout.write(notices(about(sys.argv[2]), tree(sys.argv[3])))
    elif cmd == "copyright":
        sys.stdout.write(copyright(about(sys.argv[2]), tree(sys.argv[3])))
    else:
        sys.exit("usage: licenses.py expression|notices|copyright ...")


if __name__ == "__main__":
    main()
