#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Checks the shape of a flake.lock against flake.nix (packaging/test.sh nix).

    check-flake-lock.py FLAKE_NIX FLAKE_LOCK

The lock must be what `nix flake lock` writes for our one input: version 7,
root -> nixpkgs, nixpkgs' original = the github:NixOS/nixpkgs/<ref> of
flake.nix, locked at a full commit (40 hex digits) with a lastModified and a
sha256 SRI narHash. Exit 1 with the reasons when it is not. (Whether the hash
is right for the commit can only be checked where nixpkgs can be fetched:
`nix flake metadata` there.)
"""
import json
import re
import sys


def main(flake_nix, flake_lock):
    text = open(flake_nix, encoding="utf-8").read()
    m = re.search(r'inputs\.nixpkgs\.url\s*=\s*"github:NixOS/nixpkgs/([^"/]+)"', text)
    if not m:
        return ["flake.nix: no inputs.nixpkgs.url = \"github:NixOS/nixpkgs/REF\""]
    ref = m.group(1)
    try:
        lock = json.load(open(flake_lock, encoding="utf-8"))
    except (OSError, ValueError) as e:
        return [f"{flake_lock}: not JSON: {e}"]
    bad = []
    if lock.get("version") != 7:
        bad.append(f"version {lock.get('version')!r}, want 7")
    nodes = lock.get("nodes", {})
    root = lock.get("root")
    if root != "root" or nodes.get("root", {}).get("inputs") != {"nixpkgs": "nixpkgs"}:
        bad.append("root node: want inputs {\"nixpkgs\": \"nixpkgs\"}")
    node = nodes.get("nixpkgs", {})
    want_original = {"owner": "NixOS", "repo": "nixpkgs", "ref": ref, "type": "github"}
    if node.get("original") != want_original:
        bad.append(f"nixpkgs original {node.get('original')!r}, want {want_original!r} (flake.nix)")
    locked = node.get("locked", {})
    for k, v in (("type", "github"), ("owner", "NixOS"), ("repo", "nixpkgs")):
        if locked.get(k) != v:
            bad.append(f"nixpkgs locked.{k} {locked.get(k)!r}, want {v!r}")
    if not re.fullmatch(r"[0-9a-f]{40}", str(locked.get("rev", ""))):
        bad.append(f"nixpkgs locked.rev {locked.get('rev')!r}: not a full commit hash")
    if not re.fullmatch(r"sha256-[A-Za-z0-9+/]{43}=", str(locked.get("narHash", ""))):
        bad.append(f"nixpkgs locked.narHash {locked.get('narHash')!r}: not a sha256 SRI hash")
    if not isinstance(locked.get("lastModified"), int):
        bad.append("nixpkgs locked.lastModified missing")
    extra = set(nodes) - {"root", "nixpkgs"}
    if extra:
        bad.append(f"unexpected nodes {sorted(extra)}")
    return bad


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    problems = main(sys.argv[1], sys.argv[2])
    for p in problems:
        print(f"{sys.argv[2]}: {p}", file=sys.stderr)
    sys.exit(1 if problems else 0)
