#!/usr/bin/env python3
# Renders the licence files of packaging/licenses/ from Cargo.lock's crates
# (packaging/gen-licenses.sh runs it; nothing here is written by hand):
#
#   licenses.py expression TREE            -> the SPDX expression of the binary
#   licenses.py notices ABOUT.json TREE    -> THIRD-PARTY-NOTICES
#   licenses.py copyright ABOUT.json TREE  -> debian/copyright (DEP-5)
#
# TREE is `cargo tree --edges no-build,no-dev,no-proc-macro --format '{l}|{p}'`
# for a Linux target: the crates linked into the binary (as Fedora's
# %cargo_license counts them). ABOUT.json is `cargo about generate --format
# json`: every crate of the build (proc macros included) with the licence
# texts its package ships, or the SPDX text where it ships none.
# SPDX-License-Identifier: GPL-2.0-or-later
import json
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
    w("Crates marked [build] are used at build time only (procedural macros and")
    w("their dependencies) and are not linked into the binary.")
    w("")
    w("Generated from Cargo.lock by packaging/gen-licenses.sh (cargo-about).")
    w("")
    w("Crates")
    w("------")
    w("")
    for c in sorted(ab["crates"], key=lambda c: (c["package"]["name"], c["package"]["version"])):
        p = c["package"]
        if p["name"] == "pr-helper":
            continue
        mark = "" if (p["name"], p["version"]) in linked else " [build]"
        w("%s %s: %s%s" % (p["name"], p["version"], norm(p.get("license") or c["license"]), mark))
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
            w("License: Apache-2.0 with LLVM-exception exception")
            w(indent(texts.get("Apache-2.0 WITH LLVM-exception",
                               "The Apache-2.0 licence (below) with the LLVM exception:\n"
                               "As an exception, if, as a result of your compiling your source code, portions\n"
                               "of this Software are embedded into an Object form of such source code, you\n"
                               "may redistribute such embedded portions in such Object form without complying\n"
                               "with the conditions of Sections 4(a), 4(b) and 4(d) of the License.")))
            continue
        w("License: " + i)
        if i == "Apache-2.0":
            w(APACHE_TEXT)
        else:
            if i not in texts:
                sys.exit("licenses.py: no text for %s in cargo-about's output" % i)
            w(indent(texts[i]))
    w("")
    return "\n".join(out)


def main():
    cmd = sys.argv[1]
    if cmd == "expression":
        print(expression(tree(sys.argv[2])))
    elif cmd == "notices":
        sys.stdout.write(notices(about(sys.argv[2]), tree(sys.argv[3])))
    elif cmd == "copyright":
        sys.stdout.write(copyright(about(sys.argv[2]), tree(sys.argv[3])))
    else:
        sys.exit("usage: licenses.py expression|notices|copyright ...")


if __name__ == "__main__":
    main()
