#!/usr/bin/env python3
# CycloneDX SBOMs, reproducible (same inputs, same bytes):
#
#   sbom.py binary CDX.json ROOT TREE
#       cargo-cyclonedx's output for the binary, without what changes from
#       run to run or machine to machine: the random serial number, the
#       timestamp, and the tree's absolute path (ROOT) in references; only
#       the crates linked into the binary (TREE, as for the licences).
#   sbom.py image BINARY-CDX.json NAME VERSION SOURCE_DATE_EPOCH REVISION LICENSES [DPKG-LIST]
#       the image's SBOM: the image (a container component, created at
#       SOURCE_DATE_EPOCH), the binary and its crates, and for an image on a
#       Debian base the base's packages (DPKG-LIST: "name version arch" lines).
#       Its serial number is derived from its content.
# SPDX-License-Identifier: GPL-2.0-or-later
import datetime
import hashlib
import json
import sys
import uuid


def walk(x, f):
    if isinstance(x, dict):
        return {k: walk(v, f) for k, v in x.items()}
    if isinstance(x, list):
        return [walk(v, f) for v in x]
    if isinstance(x, str):
        return f(x)
    return x


def dump(doc):
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def binary(path, root, tree):
    doc = json.load(open(path))
    doc.pop("serialNumber", None)
    doc.get("metadata", {}).pop("timestamp", None)
    # cargo-cyclonedx lists every crate of cargo metadata's resolve (proc
    # macros, and crates that only dev-dependencies' features pull in): keep
    # those linked into the binary (TREE: cargo tree '{l}|{p}' lines).
    linked = set()
    for line in open(tree):
        if "|" in line:
            f = line.split("|", 1)[1].split()
            linked.add((f[0], f[1].lstrip("v")))
    keep = [c for c in doc["components"] if (c["name"], c["version"]) in linked]
    refs = {c["bom-ref"] for c in keep} | {doc["metadata"]["component"]["bom-ref"]}
    doc["components"] = keep
    doc["dependencies"] = [
        dict(d, dependsOn=[r for r in d.get("dependsOn", []) if r in refs])
        for d in doc.get("dependencies", []) if d["ref"] in refs
    ]
    root = root.rstrip("/")
    return walk(doc, lambda s: s.replace(root, "/build/pr-helper"))


def image(bin_path, name, version, epoch, revision, licenses, dpkg=None):
    b = json.load(open(bin_path))
    app = b["metadata"]["component"]
    created = datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc)
    ref = "container:%s@%s" % (name, version)
    comps = [app] + b.get("components", [])
    deps = [{"ref": ref, "dependsOn": [app["bom-ref"]]}] + b.get("dependencies", [])
    if dpkg:
        debs = []
        for line in open(dpkg):
            f = line.split()
            if len(f) < 3:
                continue
            purl = "pkg:deb/debian/%s@%s?arch=%s&distro=debian-12" % (f[0], f[1], f[2])
            debs.append({"type": "library", "bom-ref": purl, "name": f[0], "version": f[1], "purl": purl})
        comps += debs
        deps[0]["dependsOn"] += [d["bom-ref"] for d in debs]
    doc = {
        "bomFormat": "CycloneDX",
        "specVersion": b.get("specVersion", "1.5"),
        "version": 1,
        "metadata": {
            "timestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": b["metadata"].get("tools", []),
            "component": {
                "type": "container",
                "bom-ref": ref,
                "name": name,
                "version": version,
                "licenses": [{"expression": licenses}],
                "properties": [{"name": "org.opencontainers.image.revision", "value": revision}],
            },
        },
        "components": comps,
        "dependencies": deps,
    }
    # A serial number from the content: the same image, the same number.
    doc["serialNumber"] = "urn:uuid:%s" % uuid.uuid5(uuid.NAMESPACE_URL, hashlib.sha256(dump(doc).encode()).hexdigest())
    return doc


def main():
    a = sys.argv
    if len(a) == 5 and a[1] == "binary":
        sys.stdout.write(dump(binary(a[2], a[3], a[4])))
    elif len(a) in (8, 9) and a[1] == "image":
        sys.stdout.write(dump(image(*a[2:])))
    else:
        sys.exit("usage: sbom.py binary CDX ROOT TREE | image BINARY-CDX NAME VERSION EPOCH REVISION LICENSES [DPKG-LIST]")


if __name__ == "__main__":
    main()
