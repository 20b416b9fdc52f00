#!/usr/bin/env bash
# Every packaging test, offline, after packaging/setup.sh (as root, Debian 12):
#
#   versions Cargo.toml is the one version source: every copy (spec, deb/changelog,
#            Containerfiles, lock files, docs) equals it; rust-version is the locked
#            dependency graph's highest rust-version
#   licenses packaging/licenses/ (notices, DEP-5 copyright, licence expression, SBOM) is
#            what gen-licenses.sh makes from Cargo.lock; the spec and Containerfiles
#            carry the same expression
#   static   two musl builds from two copies of the tree in two directories: same sha256;
#            the cargo-auditable dependency list in the binary holds every linked crate;
#            the same for aarch64 (rust-lld), which then serves a ping under qemu-aarch64-static
#   docs     packaging/generated/ is what gen-docs makes from the clap definition
#   systemd  systemd-analyze verify (plain and with the mpath drop-in), exposure <= 2.0,
#            and the unit's execution environment without PID 1: non-root uid, only
#            CAP_SYS_RAWIO (ambient + bounding), no_new_privs, socket-activated; a client pings
#   image    buildah image from the static binary twice: same digest; podman run
#            --cap-drop ALL --cap-add SYS_RAWIO serves a host client (ping, PR IN with an fd);
#            the multipath variant on the local base image; both images with KubeVirt's
#            exact container spec (/entrypoint.sh, privileged, own netns), chown to 107
#   image    ... and the OCI index for linux/amd64 + linux/arm64 twice: same index digest; the
#            arm64 image serves a host client under podman with qemu-aarch64-static
#   rpm      rpmbuild -ba offline from the vendored tarball, with mpath (%check) and
#            without; file lists, License, bundled(crate()) Provides, scratch rpm db, rpmlint;
#            rpmbuild --target aarch64: file list, architecture, the binary runs under qemu-user
#   deb      two builds byte-identical, file list, lintian, dpkg -i (socket enabled), dpkg -P;
#            arm64: two builds identical, Architecture, files, binary, lintian
#   boot     the .deb under systemd as PID 1 (systemd-nspawn --boot of a Debian 12 root):
#            packaging/systemd-boot-test.sh
#   nix      parse; the flake's outputs and the NixOS module evaluated with evalModules
#            against a stub nixpkgs (option semantics as NixOS'); nixpkgs pinned to a
#            stable channel, flake.lock (if any) of the right shape; nix flake check
#            --no-build and the outputs' shape (packages, static, apps, checks incl. vm)
#
#   packaging/test.sh [SECTION...]     (default: all, in the order above)
#
# Work and build directories: $PRH_TEST_DIR (default
# /var/tmp/pr-helper-packaging-test; tests/run gives target/test-work/packaging),
# removed and made anew at every run, container storage included (images are
# built into $PRH_TEST_DIR/containers, not the machine's storage): nothing an
# earlier run left is seen, and every build starts from nothing. Only what
# packaging/setup.sh put in $PRH_PKG_CACHE (tools, Debian roots, each named
# after its version or inputs) is reused. Sections run after one another
# share the run's directory (the static section's binary is the others'). Exits
# non-zero with a message on the first failure or missing prerequisite.
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
. "$(dirname "$0")/lib.sh"

W=${PRH_TEST_DIR:-/var/tmp/pr-helper-packaging-test}
case "$W" in /* ) ;; *) W=$PWD/$W ;; esac
[ "$W" != / ] && [ "$W" != "$PRH_ROOT" ] || prh_die "PRH_TEST_DIR=$W: not a work directory"
prh_remove_tree "$W"
mkdir -p "$W"
export PRH_CONTAINER_STORAGE=$W/containers
# Run-time state of that storage: short, fresh, removed at exit.
PRH_CONTAINER_RUNROOT=$(mktemp -d /run/prh-ctr.XXXXXX)
export PRH_CONTAINER_RUNROOT
SECTIONS=(versions licenses static docs systemd image rpm deb boot nix)
[ $# -gt 0 ] && SECTIONS=("$@")
export SOURCE_DATE_EPOCH=$(prh_source_date_epoch)
export CARGO_NET_OFFLINE=true
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsubstituters =\nflake-registry ='

FIGURES=()
figure() { FIGURES+=("$*"); echo "  => $*"; }
fail() { echo "test.sh: FAIL [$section]: $*" >&2; exit 1; }
CLEANUP=()
cleanup() {
    local c
    for c in "${CLEANUP[@]}"; do eval "$c" || true; done
    [ -z "${PRH_CONTAINER_RUNROOT:-}" ] || prh_remove_tree "$PRH_CONTAINER_RUNROOT"
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || prh_die "run as root (podman, dpkg -i, setpriv)"
prh_need cargo rustc python3
if [ "${SECTIONS[*]}" != versions ] && [ "${SECTIONS[*]}" != licenses ]; then
    prh_need sha256sum git tar gzip unshare setpriv systemd-analyze \
        systemd-socket-activate buildah podman runc rpm rpmbuild rpmlint lintian dpkg-deb \
        nix nix-instantiate qemu-aarch64-static file systemd-nspawn losetup
    [ -x "$PRH_PKG_CACHE/cargo-deb/bin/cargo-deb" ] || prh_die "cargo-deb missing (run packaging/setup.sh)"
fi

BIN=$W/repro/a/target/$PRH_TARGET/release/pr-helper
BIN_AARCH64=$W/repro/a/target/aarch64-unknown-linux-musl/release/pr-helper

# ------------------------------------------------------------------ versions
# The minimum Rust version the locked graph needs: the highest rust-version
# any locked crate declares (cargo metadata lists every platform's crates).
locked_rust_floor() {
    (cd "$PRH_ROOT" && cargo metadata --locked --offline --format-version 1) |
        python3 -c '
import json, sys
d = json.load(sys.stdin)
vs = [(tuple(int(x) for x in p["rust_version"].split(".")), p["name"])
      for p in d["packages"] if p.get("rust_version") and p["name"] != "pr-helper"]
v = max(v for v, _ in vs)
print(".".join(map(str, v[:2])), ",".join(sorted({n for w, n in vs if w[:2] == v[:2]})))'
}
t_versions() {
    local v=$PRH_VERSION msrv floor who bad=() f got
    [ -n "$v" ] || fail "no version in Cargo.toml"
    check() { # WHAT GOT: one copy of the version
        if [ "$2" = "$v" ]; then echo "  $1: $2" >&2; else bad+=("$1 has '$2'"); fi
    }
    check "rpm/pr-helper.spec Version" "$(sed -n 's/^Version: *//p' "$PRH_ROOT/rpm/pr-helper.spec")"
    check "rpm/pr-helper.spec %changelog (newest)" \
        "$(sed -n '/^%changelog/,${s/^\* .* - \([^ -]*\)-[^ -]*$/\1/p}' "$PRH_ROOT/rpm/pr-helper.spec" | head -n1)"
    check "deb/changelog (newest)" "$(sed -n '1s/^pr-helper (\([^-)]*\)-[^)]*).*/\1/p' "$PRH_ROOT/deb/changelog")"
    for f in Containerfile Containerfile.mpath; do
        check "$f ARG VERSION" "$(sed -n 's/^ARG VERSION=//p' "$PRH_ROOT/$f")"
    done
    for f in Cargo.lock packaging/gen-docs/Cargo.lock; do
        check "$f" "$(awk '/^name = "pr-helper"$/ { getline; gsub(/version = |"/, ""); print }' "$PRH_ROOT/$f")"
    done
    # nix/package.nix reads Cargo.toml (importTOML); the nix section checks
    # the evaluated name. Versions quoted in the documentation:
    while IFS= read -r got; do
        check "documentation (${got%%:*})" "$(sed -E 's/.*pr-helper[-_:]([0-9]+\.[0-9]+\.[0-9]+).*/\1/' <<<"${got#*:}")"
    done < <(cd "$PRH_ROOT" && grep -HoE 'pr-helper[-_:][0-9]+\.[0-9]+\.[0-9]+' README.md docs/*.md)
    [ ${#bad[@]} -eq 0 ] || fail "version copies differ from Cargo.toml's $v: $(printf '%s; ' "${bad[@]}")"
    figure "version $v: spec, deb/changelog, Containerfiles, lock files and docs agree with Cargo.toml"

    msrv=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' "$PRH_ROOT/Cargo.toml")
    read -r floor who < <(locked_rust_floor) || fail "cargo metadata failed"
    [ "$msrv" = "$floor" ] ||
        fail "Cargo.toml rust-version $msrv, but the locked graph needs $floor ($who): set rust-version = \"$floor\""
    for f in "cargo >= $msrv" "rust >= $msrv"; do
        grep -q "^BuildRequires: *$f\$" "$PRH_ROOT/rpm/pr-helper.spec" ||
            fail "rpm/pr-helper.spec: BuildRequires $f missing (rust-version $msrv)"
    done
    figure "rust-version $msrv = highest rust-version in Cargo.lock ($who); the spec's BuildRequires agree"
}

# ------------------------------------------------------------------ licenses
LIC=$PRH_ROOT/packaging/licenses
t_licenses() {
    local out=$W/licenses expr n missing=() f
    rm -rf "$out"
    "$PRH_ROOT/packaging/gen-licenses.sh" "$out" >&2
    diff -r "$out" "$LIC" >&2 ||
        fail "packaging/licenses is stale (a dependency changed): run packaging/gen-licenses.sh and commit"
    # Every crate linked into the binary has its notice.
    while read -r n; do
        grep -q "^${n}: " "$LIC/THIRD-PARTY-NOTICES" || missing+=("$n")
    done < <(cd "$PRH_ROOT" && cargo tree --locked --offline --edges no-build,no-dev,no-proc-macro \
        --target x86_64-unknown-linux-gnu --prefix none --format '{p}' | awk '$1 != "pr-helper" { print $1 " " substr($2, 2) }' | sort -u)
    [ ${#missing[@]} -eq 0 ] || fail "no notice for: ${missing[*]}"
    expr=$(cat "$LIC/license-expression")
    [ "$(sed -n 's/^License: *//p' "$PRH_ROOT/rpm/pr-helper.spec")" = "$expr" ] ||
        fail "rpm/pr-helper.spec License differs from packaging/licenses/license-expression ($expr)"
    for f in Containerfile Containerfile.mpath; do
        [ "$(sed -n 's/^ARG LICENSES=//p' "$PRH_ROOT/$f")" = "\"$expr\"" ] ||
            fail "$f: ARG LICENSES differs from packaging/licenses/license-expression ($expr)"
    done
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["bomFormat"] == "CycloneDX" and "serialNumber" not in d and "timestamp" not in d["metadata"], d.keys(); print(len(d["components"]))' \
        "$LIC/pr-helper.cdx.json" >"$W/cdx.count" || fail "pr-helper.cdx.json is no reproducible CycloneDX document"
    figure "licences from Cargo.lock up to date: $(grep -c '^[a-z].* [0-9].*: ' "$LIC/THIRD-PARTY-NOTICES") crates in THIRD-PARTY-NOTICES, DEP-5 copyright with $(grep -c '^License: ' "$LIC/copyright") License fields, SBOM with $(cat "$W/cdx.count") components; License: $expr"
}

# The crates cargo auditable embedded in BINARY (.dep-v0: zlib-compressed
# JSON), as "name version" lines.
auditable_crates() {
    local tmp
    tmp=$(mktemp)
    objcopy --dump-section .dep-v0="$tmp" "$1" /dev/null 2>/dev/null || { rm -f "$tmp"; return 1; }
    python3 -c 'import json,sys,zlib; d=json.loads(zlib.decompress(open(sys.argv[1],"rb").read())); [print(p["name"], p["version"]) for p in d["packages"] if p.get("kind", "runtime") == "runtime"]' "$tmp" | sort -u
    rm -f "$tmp"
}

# -------------------------------------------------------------------- static
t_static() {
    # Two copies at different paths and depths, each with its own target dir.
    local a=$W/repro/a b=$W/repro/elsewhere/b s1 s2
    rm -rf "$a/src" "$b/src"
    prh_copy_tree "$a/src"
    prh_copy_tree "$b/src"
    s1=$(CARGO_TARGET_DIR=$a/target "$a/src/packaging/build-static.sh" --offline | awk '{print $2}')
    s2=$(CARGO_TARGET_DIR=$b/target "$b/src/packaging/build-static.sh" --offline | awk '{print $2}')
    figure "static binary sha256 (copy 1, $a/src): $s1"
    figure "static binary sha256 (copy 2, $b/src): $s2"
    [ -n "$s1" ] && [ "$s1" = "$s2" ] || fail "the two builds differ: $s1 vs $s2"
    file -b "$BIN" | grep -q 'static-pie linked' || fail "not a static-pie binary: $(file -b "$BIN")"
    figure "static binary size: $(stat -c %s "$BIN") bytes, reproducible: yes"
    # cargo auditable: the embedded list is the locked graph's linked crates.
    auditable_crates "$BIN" >"$W/auditable.list" || fail "no .dep-v0 section (cargo auditable) in $BIN"
    (cd "$PRH_ROOT" && cargo tree --locked --offline --edges no-build,no-dev,no-proc-macro \
        --target "$PRH_TARGET" --prefix none --format '{p}' | awk '{ print $1, substr($2, 2) }' | sort -u) >"$W/tree.list"
    # cargo auditable records cargo metadata's resolve, which also holds
    # proc-macro crates' dependencies and crates that only dev-dependencies'
    # features pull in: every linked crate must be there.
    [ -z "$(comm -23 "$W/tree.list" "$W/auditable.list")" ] ||
        fail "crates linked into the binary missing from its cargo auditable list: $(comm -23 "$W/tree.list" "$W/auditable.list" | tr '\n' ' ')"
    figure "cargo auditable: $(wc -l <"$W/auditable.list") crates embedded (.dep-v0), all $(wc -l <"$W/tree.list") that cargo tree links among them"

    # aarch64: the same two copies, linked with rust-lld.
    s1=$(CARGO_TARGET_DIR=$a/target "$a/src/packaging/build-static.sh" --arch aarch64 --offline | awk '{print $2}')
    s2=$(CARGO_TARGET_DIR=$b/target "$b/src/packaging/build-static.sh" --arch aarch64 --offline | awk '{print $2}')
    figure "aarch64 static binary sha256 (copy 1): $s1"
    figure "aarch64 static binary sha256 (copy 2): $s2"
    [ -n "$s1" ] && [ "$s1" = "$s2" ] || fail "the two aarch64 builds differ: $s1 vs $s2"
    # Static, but not static-pie: rustc's aarch64-unknown-linux-musl target
    # does not support static-pie linking (README, Architectures).
    file -b "$BIN_AARCH64" | grep -q 'ARM aarch64.*statically linked' ||
        fail "not a static aarch64 binary: $(file -b "$BIN_AARCH64")"
    # It runs (under qemu-user) and serves: a ping through its socket from
    # the x86_64 client. seccomp off: qemu-user refuses guest seccomp filters.
    local d=$W/aarch64-run pid
    rm -rf "$d"
    mkdir -p "$d"
    qemu-aarch64-static "$BIN_AARCH64" -k "$d/s.sock" --seccomp false >"$d/log" 2>&1 &
    pid=$!
    CLEANUP+=("kill $pid 2>/dev/null")
    for _ in $(seq 100); do [ -S "$d/s.sock" ] && break; sleep 0.1; done
    "$BIN" ping --socket "$d/s.sock" >&2 || { cat "$d/log" >&2; fail "the aarch64 helper (qemu-user) does not answer"; }
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    figure "aarch64 static binary size: $(stat -c %s "$BIN_AARCH64") bytes, reproducible: yes; under qemu-aarch64-static it serves a ping"
}
need_bin() { [ -x "$BIN" ] || fail "no static binary at $BIN (run the static section first)"; }

# ---------------------------------------------------------------------- docs
t_docs() {
    local out=$W/gen-docs/out
    rm -rf "$out"
    CARGO_TARGET_DIR=$W/gen-docs/target cargo run --quiet --locked --offline \
        --manifest-path "$PRH_ROOT/packaging/gen-docs/Cargo.toml" -- "$out" >/dev/null
    diff -r "$out" "$PRH_ROOT/packaging/generated" >&2 ||
        fail "packaging/generated is stale: cargo run --manifest-path packaging/gen-docs/Cargo.toml -- packaging/generated"
    figure "man page and completions up to date ($(ls "$out" | tr '\n' ' '))"
}

# ------------------------------------------------------------------- systemd
t_systemd() {
    need_bin
    local u=$W/units score
    rm -rf "$u"
    mkdir -p "$u/pr-helper.service.d"
    cp "$PRH_ROOT/systemd/pr-helper.socket" "$u/"
    # verify needs ExecStart to exist: the built binary stands in.
    sed "s|^ExecStart=/usr/bin/pr-helper|ExecStart=$BIN|" "$PRH_ROOT/systemd/pr-helper.service" \
        >"$u/pr-helper.service"
    grep -q "^ExecStart=$BIN" "$u/pr-helper.service" || fail "ExecStart=/usr/bin/pr-helper not found"
    (cd "$u" && systemd-analyze verify --man=no ./pr-helper.socket ./pr-helper.service) 2>&1 |
        tee "$u/verify.log" >&2
    [ ! -s "$u/verify.log" ] || fail "systemd-analyze verify reported problems"
    score=$(cd "$u" && systemd-analyze security --offline=yes ./pr-helper.service |
        sed -n 's/.*Overall exposure level for pr-helper.service: \([0-9.]*\).*/\1/p')
    figure "systemd-analyze security pr-helper.service: exposure $score (limit 2.0)"
    awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.0) }' || fail "exposure $score > 2.0"

    cp "$PRH_ROOT/systemd/mpath.conf.example" "$u/pr-helper.service.d/mpath.conf"
    (cd "$u" && systemd-analyze verify --man=no ./pr-helper.service) 2>&1 | tee "$u/verify.log" >&2
    [ ! -s "$u/verify.log" ] || fail "systemd-analyze verify reported problems with the mpath drop-in"
    score=$(cd "$u" && systemd-analyze security --offline=yes ./pr-helper.service |
        sed -n 's/.*Overall exposure level for pr-helper.service: \([0-9.]*\).*/\1/p')
    figure "systemd-analyze security with mpath.conf drop-in: exposure $score"

    # The unit's execution environment, without systemd as PID 1: socket
    # activation (fd 3), a non-root uid and gid, no supplementary groups,
    # CAP_SYS_RAWIO as the only capability (ambient, hence permitted and
    # effective; bounding), no_new_privs.
    local d=$W/activate pid status
    rm -rf "$d"
    mkdir -p "$d"
    chmod 0755 "$d"
    systemd-socket-activate -l "$d/pr-helper.sock" \
        setpriv --reuid 61534 --regid 61534 --clear-groups \
        --inh-caps -all,+sys_rawio --ambient-caps -all,+sys_rawio --bounding-set -all,+sys_rawio \
        --no-new-privs "$BIN" -v >"$d/log" 2>&1 &
    pid=$!
    CLEANUP+=("kill $pid 2>/dev/null")
    for _ in $(seq 50); do [ -S "$d/pr-helper.sock" ] && break; sleep 0.1; done
    "$BIN" ping --socket "$d/pr-helper.sock" >&2 ||
        { cat "$d/log" >&2; fail "ping through the socket-activated, unprivileged helper failed"; }
    local hp
    hp=$(pgrep -P "$pid" -x pr-helper || echo "$pid")
    status=$(grep -E '^(Uid|CapEff|CapBnd|NoNewPrivs|Seccomp):' "/proc/$hp/status" | tr -s '\t ' ' ' | tr '\n' ';')
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    grep -q 'CapEff: 0000000000020000' <<<"$status" || fail "helper capabilities: $status"
    grep -q 'landlock: filesystem access restricted' "$d/log" || { cat "$d/log" >&2; fail "landlock not applied"; }
    figure "socket-activated as uid 61534 with CAP_SYS_RAWIO only: ping ok ($status)"
}

# --------------------------------------------------------------------- image
run_image() { # IMAGE SOCKDIR NAME EXTRA... : start, wait for the socket
    local image=$1 dir=$2 name=$3
    shift 3
    prh_podman rm -f "$name" >/dev/null 2>&1 || true
    prh_podman run -d --name "$name" --network none "${PRH_PODMAN_ULIMITS[@]}" \
        -v "$dir:/run/pr-helper" "$@" "$image" -v >/dev/null
    CLEANUP+=("prh_podman rm -f $name >/dev/null 2>&1")
    for _ in $(seq 100); do [ -S "$dir/pr-helper.sock" ] && return 0; sleep 0.1; done
    prh_podman logs "$name" >&2 || true
    fail "$image: no socket in $dir"
}
# KubeVirt's pr-helper container, exactly as virt-operator renders it
# (RenderPrHelperContainer in kubevirt's
# pkg/virt-operator/resource/generate/components/daemonsets.go): command
# /entrypoint.sh, args "-k /var/run/kubevirt/daemons/pr/pr-helper.sock",
# privileged, uid 0, hostPath mounts of the socket directory
# (Bidirectional = rshared), /dev (HostToContainer = rslave) and
# /etc/multipath (Bidirectional), the pod's own network namespace (no host
# network). The host side of the socket directory is a scratch directory
# here (made a shared mount, as on a Kubernetes node), so a real KubeVirt on
# the machine is not disturbed. Then a PR round trip through the socket
# from the host; virt-handler's chown of socket and directory to 107 (the
# relabel is a no-op without SELinux, as here); a uid-107 client again.
# A stand-in for the host's multipathd on the pathname socket virt-handler
# bind-mounts into the shared directory: it speaks libmpathcmd's framing (a
# native size_t length, then the NUL-terminated text), logs each command and
# answers it. (This machine's kernel has no device-mapper; the real
# multipathd is the VM test bed's.)
fake_multipathd() { # SOCKET LOG
    perl -e '
        use strict; use Socket;
        my ($path, $log) = @ARGV;
        socket(my $l, AF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
        unlink $path; bind($l, pack_sockaddr_un($path)) or die "bind: $!";
        listen($l, 5) or die; chmod 0666, $path;
        while (accept(my $c, $l)) {
            my $n = sysread($c, my $len, 8); next if $n != 8;
            $len = unpack("Q", $len); my $cmd = "";
            while (length($cmd) < $len) { sysread($c, my $b, $len - length($cmd)) or last; $cmd .= $b; }
            $cmd =~ s/\0$//;
            open(my $f, ">>", $log); print $f "$cmd\n"; close $f;
            my $reply = "fake multipathd answers: $cmd\n\0";
            syswrite($c, pack("Q", length $reply) . $reply); close $c;
        }' "$1" "$2" &
    FAKE_MPD=$!
    CLEANUP+=("kill $FAKE_MPD 2>/dev/null")
    for _ in $(seq 50); do [ -S "$1" ] && return 0; sleep 0.1; done
    fail "stand-in multipathd did not start"
}
kubevirt_spec() { # IMAGE NAME [PODMAN ARG...]
    local image=$1 name=$2 k=$W/kubevirt hd sock dev rc out mpd=0 note=""
    shift 2
    [ "${1:-}" = --multipathd ] && { mpd=1; shift; }
    hd=$k/daemons/pr
    sock=$hd/pr-helper.sock
    prh_podman rm -f "$name" >/dev/null 2>&1 || true
    umount -R "$k" 2>/dev/null || true
    rm -rf "$k"
    mkdir -p "$hd" "$k/etc-multipath"
    mount --bind "$k" "$k"
    mount --make-rshared "$k"
    CLEANUP+=("umount -R -l $k 2>/dev/null")
    [ "$mpd" = 1 ] && fake_multipathd "$hd/multipathd.socket" "$k/multipathd.log"
    truncate -s 16M "$k/disk.img"
    dev=$(losetup -f --show "$k/disk.img")
    CLEANUP+=("losetup -d $dev 2>/dev/null")
    # The pod's own network namespace: a private one (podman's default
    # bridge network needs CNI/netavark plugins this machine may lack; for
    # Unix sockets only the namespace matters, not its interfaces).
    prh_podman run -d --name "$name" --network none "${PRH_PODMAN_ULIMITS[@]}" \
        --privileged --user 0 \
        -v "$hd:/var/run/kubevirt/daemons/pr:rshared" \
        -v /dev:/dev:rslave \
        -v "$k/etc-multipath:/etc/multipath:rshared" \
        --entrypoint /entrypoint.sh "$@" \
        "$image" -k /var/run/kubevirt/daemons/pr/pr-helper.sock >/dev/null
    CLEANUP+=("prh_podman rm -f $name >/dev/null 2>&1")
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
    [ -S "$sock" ] || { prh_podman logs "$name" >&2 || true; fail "$image with KubeVirt's spec: no socket in the shared directory"; }
    [ "$(prh_podman inspect --format '{{.HostConfig.NetworkMode}}' "$name")" != host ] ||
        fail "$name runs in the host network namespace"
    "$BIN" ping --socket "$sock" >&2 || fail "$image (KubeVirt spec): ping failed"
    rc=0
    out=$("$BIN" persist --socket "$sock" --device "$dev" --read-keys 2>&1) || rc=$?
    echo "$out" >&2
    [ "$rc" != 1 ] && grep -q 'persistent reserve in' <<<"$out" ||
        fail "$image (KubeVirt spec): PR IN on $dev not answered (exit $rc)"
    # virt-handler: chown socket and directory to QEMU's uid/gid 107.
    chown 107:107 "$hd" "$sock"
    chown 107:107 "$dev"
    CLEANUP+=("chown root:disk $dev")
    rc=0
    out=$(setpriv --reuid 107 --regid 107 --clear-groups \
        "$BIN" persist --socket "$sock" --device "$dev" --read-keys 2>&1) || rc=$?
    echo "$out" >&2
    [ "$rc" != 1 ] && grep -q 'persistent reserve in' <<<"$out" ||
        fail "$image (KubeVirt spec): uid 107 client after the chown: no answer (exit $rc)"
    if [ "$mpd" = 1 ]; then
        # /entrypoint.sh linked /run/multipathd.socket to the socket in the
        # shared directory (as KubeVirt's image does), and libmpathcmd in
        # the pod (0.15: the pathname socket first) reaches "multipathd"
        # (the stand-in) there, with no host network and no relay.
        local mout
        mout=$(prh_podman exec "$name" readlink /run/multipathd.socket)
        [ "$mout" = /var/run/kubevirt/daemons/pr/multipathd.socket ] ||
            fail "$image (KubeVirt spec): /run/multipathd.socket links to \"$mout\""
        # -k sends the command as given (without it the CLI appends " \n").
        mout=$(prh_podman exec "$name" multipathd -k"getprstatus map mpatha" 2>&1) || true
        echo "$mout" >&2
        grep -q 'fake multipathd answers: getprstatus map mpatha' <<<"$mout" ||
            fail "$image (KubeVirt spec): multipathd getprstatus in the pod did not reach the shared-directory socket: $mout"
        grep -q '^getprstatus map mpatha *$' "$k/multipathd.log" ||
            fail "$image (KubeVirt spec): the stand-in multipathd got no request"
        note="$note; /run/multipathd.socket links to the shared directory, and libmpathcmd in the pod reached the host-side multipathd socket there (no host network, no relay)"
    fi
    prh_podman logs "$name" 2>&1 | grep -E 'error|warn' >&2 || true
    # Stopping: the root helper holds CAP_SYS_RAWIO only, so it cannot
    # unlink the socket in the 107-owned directory; it must still exit.
    prh_podman stop -t 10 "$name" >/dev/null
    [ "$(prh_podman inspect --format '{{.State.ExitCode}}' "$name")" = 0 ] ||
        { prh_podman logs "$name" >&2; fail "$image (KubeVirt spec): exit code at stop not 0"; }
    prh_podman rm -f "$name" >/dev/null
    figure "$image with KubeVirt's container spec (/entrypoint.sh -k /var/run/kubevirt/daemons/pr/pr-helper.sock, privileged, uid 0, /dev + /etc/multipath + socket dir, own netns${*:+; plus $*}): ping, PR IN on $dev ($(head -n1 <<<"$out")), after chown 107 a uid-107 client is answered, clean stop$note"
    chown root:disk "$dev"
    losetup -d "$dev"
    [ "$mpd" = 1 ] && { kill "$FAKE_MPD"; wait "$FAKE_MPD" 2>/dev/null || true; }
    umount -R "$k"
}

# IMAGE DIR: the notices and SBOMs are in the image, its labels say
# created (SOURCE_DATE_EPOCH), revision and the licence expression.
check_image_bom() {
    local image=$1 d=$2 labels ctr f
    labels=$(prh_podman image inspect --format '{{json .Labels}}' "$image")
    for f in "\"org.opencontainers.image.created\":\"$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)\"" \
        "\"org.opencontainers.image.revision\":\"$(git -C "$PRH_ROOT" rev-parse HEAD)" \
        "\"org.opencontainers.image.licenses\":\"$(cat "$LIC/license-expression")\""; do
        grep -qF "$f" <<<"$labels" || fail "$image: label $f missing ($labels)"
    done
    rm -rf "$d"
    mkdir -p "$d"
    ctr=$(prh_podman create "$image")
    prh_podman export "$ctr" | tar -xf - -C "$d" usr/share
    prh_podman rm "$ctr" >/dev/null
    cmp "$d/usr/share/licenses/pr-helper/THIRD-PARTY-NOTICES" "$LIC/THIRD-PARTY-NOTICES" || fail "$image: notices missing"
    cmp "$d/usr/share/doc/pr-helper/pr-helper.cdx.json" "$LIC/pr-helper.cdx.json" || fail "$image: binary SBOM missing"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); m=d["metadata"]; assert m["component"]["type"] == "container" and m["timestamp"] == sys.argv[2], m; print(len(d["components"]))' \
        "$d/usr/share/doc/pr-helper/image.cdx.json" "$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)" >"$d/count" ||
        fail "$image: image SBOM missing or wrong"
    figure "$image: labels created/revision/licenses set; THIRD-PARTY-NOTICES, pr-helper.cdx.json and image.cdx.json ($(cat "$d/count") components) inside"
}
t_image() {
    need_bin
    local l1 l2 d=$W/image-sock out rc
    l1=$("$PRH_ROOT/packaging/build-image.sh" "$BIN" localhost/pr-helper:test-1)
    l2=$("$PRH_ROOT/packaging/build-image.sh" "$BIN" localhost/pr-helper:test-2)
    echo "$l1" >&2
    echo "$l2" >&2
    [ "$(awk '{print $6}' <<<"$l1")" = "$(awk '{print $6}' <<<"$l2")" ] ||
        fail "two image builds differ: $l1 / $l2"
    prh_buildah tag localhost/pr-helper:test-1 localhost/pr-helper:latest
    check_image_bom localhost/pr-helper:latest "$W/image-files"
    figure "image localhost/pr-helper:latest digest $(awk '{print $6}' <<<"$l1") id $(awk '{print $4}' <<<"$l1") size $(awk '{print $8}' <<<"$l1") bytes; rebuilt: same digest"
    rm -rf "$d"
    mkdir -p "$d"
    run_image localhost/pr-helper:latest "$d" prh-test --cap-drop ALL --cap-add SYS_RAWIO
    "$BIN" ping --socket "$d/pr-helper.sock" >&2 || fail "ping to the container failed"
    # One PR IN with an fd: /dev/null is no SCSI device, so the helper
    # answers with a CHECK CONDITION; exit 1 would mean no answer at all.
    rc=0
    out=$("$BIN" persist --socket "$d/pr-helper.sock" --device /dev/null --read-keys 2>&1) || rc=$?
    echo "$out" >&2
    [ "$rc" != 1 ] && grep -q 'persistent reserve in' <<<"$out" ||
        fail "PR IN through the container failed (exit $rc)"
    figure "podman run --cap-drop ALL --cap-add SYS_RAWIO: host client ping ok, PR IN answered (exit $rc: $out)"
    prh_podman rm -f prh-test >/dev/null
    kubevirt_spec localhost/pr-helper:latest prh-test-kubevirt

    t_image_multiarch

    if [ -n "${PRH_SKIP_MPATH:-}" ]; then
        figure "multipath image: skipped (PRH_SKIP_MPATH)"
        return
    fi
    prh_mpath_base
    # Not `ldconfig -p | grep -q`: grep leaving early kills ldconfig with
    # SIGPIPE, which pipefail turns into a failure.
    [[ $(ldconfig -p) == *"libmpathpersist.so.0 "* ]] || fail "libmpathpersist missing (run packaging/setup.sh)"
    (cd "$PRH_ROOT" && CARGO_TARGET_DIR=$W/mpath cargo build --quiet --release --locked --offline \
        --features mpath --bin pr-helper)
    l1=$("$PRH_ROOT/packaging/build-image.sh" --mpath "$W/mpath/release/pr-helper" localhost/pr-helper:mpath)
    l2=$("$PRH_ROOT/packaging/build-image.sh" --mpath "$W/mpath/release/pr-helper" localhost/pr-helper:mpath-2)
    echo "$l1" >&2
    echo "$l2" >&2
    [ "$(awk '{print $6}' <<<"$l1")" = "$(awk '{print $6}' <<<"$l2")" ] ||
        fail "two multipath image builds differ: $l1 / $l2"
    # The image's library (multipath-tools 0.13 or later, README "Which
    # library"), and libmpathpersist there binds mpath_connect to pr-helper's
    # own (src/mpath/multipathd.rs: only a root multipathd is used).
    local lib bind
    lib=$(prh_podman run --rm --network none "${PRH_PODMAN_ULIMITS[@]}" --entrypoint dpkg-query \
        localhost/pr-helper:mpath -W -f '${Version}' libmpathpersist0)
    dpkg --compare-versions "$lib" ge 0.13 || fail "the multipath image has libmpathpersist $lib (< 0.13)"
    prh_podman run --rm --network none "${PRH_PODMAN_ULIMITS[@]}" --entrypoint dpkg-query \
        localhost/pr-helper:mpath -W -f '${Package} ${Version} ${Architecture}\n' | sort >"$W/mpath-packages"
    diff <(grep -v '^#' "$PRH_ROOT/packaging/mpath-image/packages.lock") "$W/mpath-packages" >&2 ||
        fail "the multipath image's packages differ from packaging/mpath-image/packages.lock (diff above)"
    bind=$(prh_podman run --rm --network none "${PRH_PODMAN_ULIMITS[@]}" -e LD_DEBUG=bindings -e LD_BIND_NOW=1 \
        --entrypoint /usr/bin/pr-helper localhost/pr-helper:mpath --version 2>&1 >/dev/null |
        grep 'libmpathpersist.so.0 .*`mpath_connect' || true)
    grep -q 'to /usr/bin/pr-helper ' <<<"$bind" ||
        fail "in the multipath image, libmpathpersist's mpath_connect is not pr-helper's: $bind"
    figure "multipath image: libmpathpersist $lib, $(wc -l <"$W/mpath-packages") packages as packages.lock pins them; its mpath_connect binds to pr-helper's; rebuilt: same digest"
    check_image_bom localhost/pr-helper:mpath "$W/image-files-mpath"
    # A default /etc/multipath.conf for reservations; a mounted one wins.
    local conf
    conf=$(prh_podman run --rm --network none "${PRH_PODMAN_ULIMITS[@]}" --entrypoint cat \
        localhost/pr-helper:mpath /etc/multipath.conf)
    grep -qx '    reservation_key file' <<<"$conf" || fail "the multipath image's multipath.conf: $conf"
    printf 'defaults {\n    reservation_key 0x123abc\n}\n' >"$W/host-multipath.conf"
    conf=$(prh_podman run --rm --network none "${PRH_PODMAN_ULIMITS[@]}" --entrypoint cat \
        -v "$W/host-multipath.conf:/etc/multipath.conf:ro" localhost/pr-helper:mpath /etc/multipath.conf)
    grep -qx '    reservation_key 0x123abc' <<<"$conf" || fail "a mounted multipath.conf does not win: $conf"
    figure "multipath image: /etc/multipath.conf with reservation_key file by default, a mounted one wins"
    rm -rf "$d"
    mkdir -p "$d"
    # Multipath needs device-mapper; a host without /dev/mapper/control can
    # still check the image (binary, library, start-up) with it off.
    local mp=() note="multipath on"
    [ -e /dev/mapper/control ] || { mp=(-e PR_HELPER_MULTIPATH=false); note="multipath off: no /dev/mapper/control on this host"; }
    run_image localhost/pr-helper:mpath "$d" prh-test-mpath --cap-drop ALL --cap-add SYS_RAWIO \
        --cap-add SYS_ADMIN -v /dev:/dev "${mp[@]}"
    "$BIN" ping --socket "$d/pr-helper.sock" >&2 || fail "ping to the multipath container failed"
    figure "multipath image (local Debian 14 base + multipath-tools $lib): digest $(awk '{print $6}' <<<"$l1") size $(awk '{print $8}' <<<"$l1") bytes; ping ok ($note)"
    prh_podman rm -f prh-test-mpath >/dev/null
    # Same fallback as above: without device-mapper in the kernel the
    # multipath build refuses to start unless told to run without it.
    kubevirt_spec localhost/pr-helper:mpath prh-test-kubevirt-mpath --multipathd "${mp[@]}"
}

# The OCI index for linux/amd64 and linux/arm64: built twice (same index
# digest), both platforms listed, the arm64 image carries the reproducible
# aarch64 binary, and it serves a host client from the image's root
# filesystem (podman, with qemu-aarch64-static as the entrypoint since this
# host has no binfmt_misc; seccomp off, which qemu-user cannot apply).
t_image_multiarch() {
    [ -x "$BIN_AARCH64" ] || fail "no aarch64 static binary at $BIN_AARCH64 (run the static section first)"
    local m1 m2 o=$W/multiarch d=$W/image-sock-arm64 idx man layer out
    rm -rf "$o"
    mkdir -p "$o"
    m1=$("$PRH_ROOT/packaging/build-multiarch-image.sh" "$BIN" "$BIN_AARCH64" localhost/pr-helper:multiarch-1 "$o/1")
    m2=$("$PRH_ROOT/packaging/build-multiarch-image.sh" "$BIN" "$BIN_AARCH64" localhost/pr-helper:multiarch-2 "$o/2")
    echo "$m1" >&2
    echo "$m2" >&2
    [ "$(sed 's/:multiarch-[12]//' <<<"$m1")" = "$(sed 's/:multiarch-[12]//' <<<"$m2")" ] ||
        fail "two multi-arch builds differ: $m1 / $m2"
    grep -q '^image linux/amd64 digest sha256:' <<<"$m1" && grep -q '^image linux/arm64 digest sha256:' <<<"$m1" ||
        fail "the index lacks a platform: $m1"
    idx=$(awk '/^index/ {print $4}' <<<"$m1")
    man=$(awk '$2 == "linux/arm64" {print $4}' <<<"$m1")
    layer=$(grep -o '"layers":\[{"mediaType":"[^"]*","digest":"sha256:[0-9a-f]*' "$o/1/blobs/sha256/${man#sha256:}" |
        sed 's/.*sha256://')
    [ -n "$layer" ] || fail "no layer in the arm64 manifest"
    cmp <(tar -xzOf "$o/1/blobs/sha256/$layer" usr/bin/pr-helper) "$BIN_AARCH64" ||
        fail "the arm64 image's binary is not the reproducible aarch64 build"
    figure "multi-arch index digest $idx (rebuilt: same): $(awk '/^image/ {printf "%s %s; ", $2, $4}' <<<"$m1")arm64 binary = aarch64 static build"

    rm -rf "$d"
    mkdir -p "$d"
    run_image localhost/pr-helper:multiarch-1-arm64 "$d" prh-test-arm64 --cap-drop ALL --cap-add SYS_RAWIO \
        -v /usr/bin/qemu-aarch64-static:/usr/bin/qemu-aarch64-static:ro \
        --entrypoint '["/usr/bin/qemu-aarch64-static", "/usr/bin/pr-helper"]' -e PR_HELPER_SECCOMP=false
    "$BIN" ping --socket "$d/pr-helper.sock" >&2 || fail "ping to the arm64 container failed"
    out=$("$BIN" persist --socket "$d/pr-helper.sock" --device /dev/null --read-keys 2>&1) || true
    grep -q 'persistent reserve in' <<<"$out" || fail "PR IN through the arm64 container failed: $out"
    figure "arm64 image under podman + qemu-aarch64-static: ping ok, PR IN answered ($out)"
    prh_podman rm -f prh-test-arm64 >/dev/null
    prh_buildah manifest rm localhost/pr-helper:multiarch-2 >/dev/null 2>&1 || true
}

# ----------------------------------------------------------------------- rpm
# The default build (with mpath): the main package, and pr-helper-multipath
# with the drop-in that turns multipath on (the --without mpath build makes
# no subpackage).
RPM_MULTIPATH_FILES="/usr/lib/systemd/system/pr-helper.service.d
/usr/lib/systemd/system/pr-helper.service.d/mpath.conf"
RPM_FILES="/etc/pr-helper
/usr/bin/pr-helper
/usr/lib/systemd/system/pr-helper.service
/usr/lib/systemd/system/pr-helper.socket
/usr/share/bash-completion/completions/pr-helper
/usr/share/doc/pr-helper-$PRH_VERSION
/usr/share/doc/pr-helper-$PRH_VERSION/README.md
/usr/share/doc/pr-helper-$PRH_VERSION/config.toml.example
/usr/share/doc/pr-helper-$PRH_VERSION/mpath.conf.example
/usr/share/doc/pr-helper-$PRH_VERSION/pr-helper.cdx.json
/usr/share/doc/pr-helper-$PRH_VERSION/socket-group.conf.example
/usr/share/fish/vendor_completions.d/pr-helper.fish
/usr/share/licenses/pr-helper-$PRH_VERSION
/usr/share/licenses/pr-helper-$PRH_VERSION/LICENSE
/usr/share/licenses/pr-helper-$PRH_VERSION/LICENSE.dependencies
/usr/share/licenses/pr-helper-$PRH_VERSION/THIRD-PARTY-NOTICES
/usr/share/licenses/pr-helper-$PRH_VERSION/cargo-vendor.txt
/usr/share/man/man8/pr-helper.8.gz
/usr/share/zsh/site-functions/_pr-helper"
# rpmlint findings explained in docs/packaging.md (RPM, rpmlint).
RPMLINT_KNOWN='E: no-signature|E: no-packager-tag|E: no-group-tag|W: no-buildroot-tag|W: invalid-license|W: invalid-license-exception LLVM-exception|W: only-non-binary-in-usr-lib|W: no-manual-page-for-binary pr-helper|W: manpage-not-compressed bz2|W: unstripped-binary-or-object /usr/bin/pr-helper'
# The subpackage's own (docs/packaging.md): the main package's exact
# version, and no documentation of its own (it is one drop-in).
RPMLINT_KNOWN_MULTIPATH='W: requires-on-release pr-helper = |W: no-documentation'
t_rpm() {
    local out=$W/rpm rpmfile plain root=$W/rpmroot lint vendor provides f
    "$PRH_ROOT/packaging/build-rpm.sh" "$out" 2>"$W/rpmbuild.log" | tee "$W/rpm.out" >&2 ||
        { tail -n 60 "$W/rpmbuild.log" >&2; fail "build-rpm.sh failed"; }
    rpmfile=$(find "$out/rpmbuild/RPMS" -name "pr-helper-$PRH_VERSION-*.rpm" | head -n1)
    plain=$(find "$out/rpmbuild-nompath/RPMS" -name "pr-helper-$PRH_VERSION-*.rpm" | head -n1)
    [ -n "$rpmfile" ] && [ -n "$plain" ] || fail "no binary rpm (with and without mpath)"
    figure "$(grep '^tarball' "$W/rpm.out")"
    # %check ran the unit tests (rpmbuild --quiet keeps their stdout; a
    # failing test fails the build).
    grep -q 'Running unittests src/lib.rs' "$W/rpmbuild.log" || fail "%check did not run the unit tests"
    figure "rpm %check: cargo test --profile rpm --lib ran and passed"
    rpm -qlp "$rpmfile" | grep -v '^/usr/lib/\.build-id' >"$W/rpm.files"
    diff <(echo "$RPM_FILES") "$W/rpm.files" >&2 || fail "unexpected rpm file list"
    figure "rpm $(basename "$rpmfile"): $(wc -l <"$W/rpm.files") paths as expected (+ .build-id links)"
    rpm -qlp "$plain" | grep -q 'pr-helper.service.d' && fail "the --without mpath rpm has the mpath drop-in"
    # Multipath is opt-in: the main package's unit keeps it off (dynamic
    # user, CAP_SYS_RAWIO only); pr-helper-multipath's drop-in turns it on
    # as root, needs the main package and multipathd, and restarts the
    # service when it comes or goes.
    local mrpm
    mrpm=$(find "$out/rpmbuild/RPMS" -name "pr-helper-multipath-$PRH_VERSION-*.rpm" | head -n1)
    [ -n "$mrpm" ] || fail "no pr-helper-multipath rpm"
    [ -z "$(find "$out/rpmbuild-nompath/RPMS" -name 'pr-helper-multipath-*.rpm')" ] ||
        fail "the --without mpath build made a pr-helper-multipath rpm"
    diff <(echo "$RPM_MULTIPATH_FILES") <(rpm -qlp "$mrpm") >&2 || fail "unexpected pr-helper-multipath file list"
    rpm -qp --requires "$mrpm" | grep -Eq "^pr-helper(\(x86-64\))? = ([0-9]+:)?$PRH_VERSION-" ||
        fail "pr-helper-multipath does not require the main package's version"
    rpm -qp --requires "$mrpm" | grep -qx 'device-mapper-multipath' || fail "pr-helper-multipath does not require device-mapper-multipath"
    rpm -qp --scripts "$mrpm" | grep -q 'try-restart pr-helper.service' || fail "pr-helper-multipath does not restart the service"
    # (Read whole before grep -q: an early exit would fail the pipeline.)
    local unit
    unit=$(rpm2cpio "$mrpm" | cpio -i --quiet --to-stdout ./usr/lib/systemd/system/pr-helper.service.d/mpath.conf)
    grep -qx 'Environment=PR_HELPER_MULTIPATH=true' <<<"$unit" || fail "the drop-in does not turn multipath on"
    unit=$(rpm2cpio "$rpmfile" | cpio -i --quiet --to-stdout ./usr/lib/systemd/system/pr-helper.service)
    grep -qx 'Environment=PR_HELPER_MULTIPATH=false' <<<"$unit" || fail "the main unit does not keep multipath off"
    figure "rpm $(basename "$mrpm"): the drop-in only (multipath on, root, CAP_SYS_RAWIO CAP_SYS_ADMIN), requires pr-helper and device-mapper-multipath; the main package's unit keeps multipath off"
    [ "$(rpm -qp --qf '%{LICENSE}' "$rpmfile")" = "$(cat "$LIC/license-expression")" ] || fail "rpm License tag"
    # bundled(crate()) Provides: one per vendored crate, as in Source1.
    vendor=$(find "$out/sources" -name '*-vendor.txt')
    provides=$(rpm -qp --provides "$rpmfile" | grep -c '^bundled(crate(' || true)
    [ "$provides" -eq "$(wc -l <"$vendor")" ] && [ "$provides" -gt 0 ] ||
        fail "rpm has $provides bundled(crate()) Provides, $(wc -l <"$vendor") vendored crates"
    rpm -qp --provides "$rpmfile" | grep -qx "bundled(crate(clap)) = $(awk '$1 == "clap" { print $2 }' "$vendor")" ||
        fail "no bundled(crate(clap)) Provides with the vendored version"
    figure "rpm Provides: $provides bundled(crate(...)) = VERSION, License: $(rpm -qp --qf '%{LICENSE}' "$rpmfile")"
    rpm -qp --scripts "$rpmfile" | grep -q 'systemctl --no-reload preset pr-helper.socket' ||
        fail "rpm lacks the socket preset scriptlet"
    rm -rf "$root"
    mkdir -p "$root"
    rpm2cpio "$rpmfile" | (cd "$root" && cpio -idm --quiet ./usr/bin/pr-helper)
    [ -f "$root/usr/bin/pr-helper" ] || fail "no /usr/bin/pr-helper in $rpmfile"
    readelf -d "$root/usr/bin/pr-helper" | grep -q 'NEEDED.*libmpathpersist' || fail "the mpath build does not link libmpathpersist"
    # Built with full debug information (the rpm profile); Debian's rpm
    # makes no debuginfo package and its brp-strip (strip -g) removes it.
    ! readelf -S "$root/usr/bin/pr-helper" | grep -q '\.debug_info' || fail "the rpm's binary still has .debug_info"
    rm -rf "$root"
    rpm2cpio "$plain" | (mkdir -p "$root" && cd "$root" && cpio -idm --quiet ./usr/bin/pr-helper)
    [ -f "$root/usr/bin/pr-helper" ] || fail "no /usr/bin/pr-helper in $plain"
    ! readelf -d "$root/usr/bin/pr-helper" | grep -q 'NEEDED.*libmpathpersist' || fail "the --without mpath build links libmpathpersist"
    figure "rpm with mpath: binary linked to libmpathpersist.so.0, the drop-in in pr-helper-multipath; --without mpath: neither"
    rm -rf "$root"
    rpm --root "$root" --initdb
    # The scratch root has no /bin/sh or systemctl to run scriptlets in
    # (their content is checked above).
    rpm --root "$root" -ivh --nodeps --noscripts "$rpmfile" >&2
    rpm --root "$root" -V --nodeps pr-helper >&2 || fail "installed rpm does not verify"
    [ -x "$root/usr/bin/pr-helper" ] && "$root/usr/bin/pr-helper" --version >&2 ||
        fail "installed binary does not run"
    figure "rpm installed into a scratch database ($root): rpm -V clean"
    lint=$(rpmlint "$out"/rpmbuild/RPMS/*/*.rpm "$out"/rpmbuild/SRPMS/*.rpm "$plain" 2>&1 | grep -E '^[^ ]+: [EW]: ' || true)
    echo "$lint" >&2
    local unexplained
    unexplained=$(grep -vE ": ($RPMLINT_KNOWN)" <<<"$lint" |
        grep -vE "^pr-helper-multipath\.noarch: ($RPMLINT_KNOWN_MULTIPATH)" || true)
    [ -z "$unexplained" ] || fail "new rpmlint findings: $unexplained"
    figure "rpmlint: $(wc -l <<<"$lint") findings, all explained in docs/packaging.md ($(sed -E 's/^[^:]+: //; s/ .*//' <<<"$lint" | sort | uniq -c | tr -s ' ' | tr '\n' ';'))"

    # aarch64: rpmbuild --target aarch64 (the spec cross-builds the static
    # musl binary with rust-lld); not installable here, so the file list,
    # architecture and binary are checked.
    local out64=$W/rpm-aarch64 rpm64 bin64=$W/rpm-aarch64.bin
    "$PRH_ROOT/packaging/build-rpm.sh" --arch aarch64 "$out64" >&2
    rpm64=$(find "$out64/rpmbuild/RPMS" -name "pr-helper-$PRH_VERSION-*.aarch64.rpm" | head -n1)
    [ -n "$rpm64" ] || fail "no aarch64 binary rpm"
    [ "$(rpm -qp --qf '%{ARCH}' "$rpm64")" = aarch64 ] || fail "rpm architecture: $(rpm -qp --qf '%{ARCH}' "$rpm64")"
    # Built --without mpath: the plain list, without the drop-in.
    diff <(grep -v 'pr-helper.service.d' <<<"$RPM_FILES") <(rpm -qlp "$rpm64" | grep -v '^/usr/lib/\.build-id') >&2 ||
        fail "unexpected aarch64 rpm file list"
    rpm2archive - <"$rpm64" | tar -xzOf - ./usr/bin/pr-helper >"$bin64"
    file -b "$bin64" | grep -q 'ARM aarch64' || fail "the aarch64 rpm's binary is $(file -b "$bin64")"
    chmod 0755 "$bin64"
    qemu-aarch64-static "$bin64" --version >&2 || fail "the aarch64 rpm's binary does not run under qemu-user"
    figure "rpm $(basename "$rpm64"): $(wc -l < <(rpm -qlp "$rpm64")) paths as for x86_64, binary $(file -b "$bin64" | cut -d, -f1-2), runs under qemu-aarch64-static"
}

# ----------------------------------------------------------------------- deb
t_deb() {
    need_bin
    local d=$W/deb s1 s2 lint
    rm -rf "$d"
    mkdir -p "$d"
    s1=$("$PRH_ROOT/packaging/build-deb.sh" "$BIN" "$d/1.deb" | awk '{print $2}')
    sleep 1
    s2=$("$PRH_ROOT/packaging/build-deb.sh" "$BIN" "$d/2.deb" | awk '{print $2}')
    cmp "$d/1.deb" "$d/2.deb" || fail "two .deb builds differ"
    figure "deb sha256 $s1 (two builds identical, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)"
    dpkg-deb -c "$d/1.deb" | awk '{print $6}' | grep -v '/$' | sort >"$d/files"
    for f in ./usr/bin/pr-helper ./usr/lib/systemd/system/pr-helper.socket \
        ./usr/lib/systemd/system/pr-helper.service ./usr/share/man/man8/pr-helper.8.gz \
        ./usr/share/bash-completion/completions/pr-helper ./usr/share/zsh/vendor-completions/_pr-helper \
        ./usr/share/fish/vendor_completions.d/pr-helper.fish ./usr/share/doc/pr-helper/copyright \
        ./usr/share/doc/pr-helper/config.toml.example ./usr/share/doc/pr-helper/THIRD-PARTY-NOTICES \
        ./usr/share/doc/pr-helper/pr-helper.cdx.json; do
        grep -qx "$f" "$d/files" || fail "$f missing from the .deb"
    done
    for f in copyright THIRD-PARTY-NOTICES pr-helper.cdx.json; do
        cmp <(dpkg-deb --fsys-tarfile "$d/1.deb" | tar -xOf - "./usr/share/doc/pr-helper/$f") "$LIC/$f" ||
            fail "the .deb's $f is not packaging/licenses/$f"
    done
    figure "deb: DEP-5 copyright ($(grep -c '^License: ' "$LIC/copyright") License fields), THIRD-PARTY-NOTICES and the SBOM from packaging/licenses; the binary carries the cargo auditable list"
    cmp <(dpkg-deb --fsys-tarfile "$d/1.deb" | tar -xOf - ./usr/bin/pr-helper) "$BIN" ||
        fail "the .deb's binary is not the reproducible static build"
    figure "deb files: $(tr '\n' ' ' <"$d/files")"
    lint=$(lintian "$d/1.deb" 2>&1 | grep -v 'running with root privileges' || true)
    [ -z "$lint" ] || { echo "$lint" >&2; fail "lintian: $lint"; }
    figure "lintian: clean ($(lintian --show-overrides "$d/1.deb" 2>/dev/null | grep -c '^O:') overridden: static-pie as shared library, empty Depends, no ITP bug)"

    if dpkg-query -W -f='${Status}' pr-helper 2>/dev/null | grep -q 'installed'; then
        fail "a pr-helper package is already installed here; dpkg -P pr-helper first"
    fi
    dpkg -i "$d/1.deb" >&2
    CLEANUP+=("dpkg -P pr-helper >/dev/null 2>&1")
    [ -f /usr/lib/systemd/system/pr-helper.socket ] || fail "socket unit not installed"
    [ -L /etc/systemd/system/sockets.target.wants/pr-helper.socket ] || fail "socket not enabled"
    ! ls /etc/systemd/system/*.wants/pr-helper.service >/dev/null 2>&1 || fail "service enabled (only the socket should be)"
    /usr/bin/pr-helper --version >&2
    dpkg -P pr-helper >&2
    [ ! -e /usr/bin/pr-helper ] && [ ! -e /usr/lib/systemd/system/pr-helper.socket ] &&
        [ ! -L /etc/systemd/system/sockets.target.wants/pr-helper.socket ] ||
        fail "files or the enablement link remain after dpkg -P"
    ! dpkg-query -W pr-helper >/dev/null 2>&1 || fail "dpkg still knows pr-helper after purge"
    figure "dpkg -i: units installed, pr-helper.socket enabled (service not); dpkg -P: nothing left"

    # arm64: the same package around the aarch64 binary (not installable
    # on this amd64 host; its content, metadata and lintian are checked).
    [ -x "$BIN_AARCH64" ] || fail "no aarch64 static binary at $BIN_AARCH64 (run the static section first)"
    s1=$("$PRH_ROOT/packaging/build-deb.sh" --arch aarch64 "$BIN_AARCH64" "$d/arm64-1.deb" | awk '{print $2}')
    s2=$("$PRH_ROOT/packaging/build-deb.sh" --arch aarch64 "$BIN_AARCH64" "$d/arm64-2.deb" | awk '{print $2}')
    cmp "$d/arm64-1.deb" "$d/arm64-2.deb" || fail "two arm64 .deb builds differ"
    [ "$(dpkg-deb -f "$d/arm64-1.deb" Architecture)" = arm64 ] ||
        fail "arm64 .deb has Architecture: $(dpkg-deb -f "$d/arm64-1.deb" Architecture)"
    diff "$d/files" <(dpkg-deb -c "$d/arm64-1.deb" | awk '{print $6}' | grep -v '/$' | sort) >&2 ||
        fail "the arm64 .deb's files differ from the amd64 one's"
    cmp <(dpkg-deb --fsys-tarfile "$d/arm64-1.deb" | tar -xOf - ./usr/bin/pr-helper) "$BIN_AARCH64" ||
        fail "the arm64 .deb's binary is not the reproducible aarch64 build"
    lint=$(lintian "$d/arm64-1.deb" 2>&1 | grep -v 'running with root privileges' || true)
    [ -z "$lint" ] || { echo "$lint" >&2; fail "lintian (arm64): $lint"; }
    figure "deb arm64 sha256 $s1 (two builds identical; Architecture: arm64; same files; lintian clean, overridden: not a static PIE)"
}

# ---------------------------------------------------------------------- boot
t_boot() {
    need_bin
    local d=$W/boot-deb out
    rm -rf "$d"
    mkdir -p "$d"
    "$PRH_ROOT/packaging/build-deb.sh" "$BIN" "$d/pr-helper.deb" >&2
    out=$("$PRH_ROOT/packaging/systemd-boot-test.sh" "$d/pr-helper.deb" "$W/boot") ||
        { echo "$out"; fail "the .deb under systemd as PID 1: checks failed"; }
    echo "$out"
    figure "systemd as PID 1 (nspawn --boot): $(grep -c '^ok: ' <<<"$out") checks ok; $(grep -o 'Overall exposure level[^\n]*' <<<"$out" | head -n1); $(tail -n1 <<<"$out")"
}

# ----------------------------------------------------------------------- nix
# The flake's outputs evaluated against the stub nixpkgs (packaging/nix-stub:
# a module system with NixOS' option semantics, lib.nix): asserted with
# python3 on the JSON packaging/nix-stub/eval.nix returns.
nix_eval_asserts() { # VERSION < JSON
    python3 -c '
import json, re, sys
v = sys.argv[1]
d = json.load(sys.stdin)
bad = []
def want(what, got, exp):
    if got != exp:
        bad.append(f"{what}: got {got!r}, want {exp!r}")
store = r"/nix/store/[0-9a-z]{32}-"
want("package", d["package"], {"name": f"pr-helper-{v}", "main": "pr-helper", "lock": "Cargo.lock",
     "license": ["GPL-2.0-or-later", "MIT", "Apache-2.0", "BSD-3-Clause"]})
want("static package", d["static"], {"name": f"pr-helper-static-x86_64-unknown-linux-musl-{v}",
     "target": "x86_64-unknown-linux-musl", "isStatic": True})
want("apps", sorted(d["apps"]), ["default", "static"])
for app, name in (("default", f"pr-helper-{v}"), ("static", d["static"]["name"])):
    a = d["apps"][app]
    if not re.fullmatch(store + re.escape(name) + "/bin/pr-helper", a):
        bad.append(f"apps.{app}: {a} is not the {name} binary")
want("checks", d["checks"], ["package", "static", "vm"])
want("check derivations", d["checkNames"], {"package": f"pr-helper-{v}", "static": d["static"]["name"],
     "vm": "vm-test-run-pr-helper"})
want("environment.systemPackages", d["systemPackages"], [f"pr-helper-{v}"])
want("systemd.packages", d["systemdPackages"], [f"pr-helper-{v}"])
want("/etc/pr-helper/config.toml", d["configToml"], {"allowed_uids": [0, 107], "verbosity": 2})
want("socket wantedBy", d["socketWantedBy"], ["sockets.target"])
want("socketConfig (socketGroup = kvm)", d["socketConfig"], {"SocketGroup": "kvm", "SocketMode": "0660"})
want("socketConfig (default)", d["defaultSocketConfig"], {})
want("restartTriggers", d["restartTriggers"], ["pr-helper.toml"])
q = d["libvirtQemuConf"]
if not re.fullmatch(r"namespaces = \[\]\n\npr_helper = \"" + store + re.escape(f"pr-helper-{v}") + r"/bin/pr-helper\"\n", q):
    bad.append(f"qemu.conf (libvirtd.enable): {q!r}: want NixOS default then pr_helper")
want("qemu.conf (default)", d["defaultQemuConf"], "namespaces = []\n")
want("assertions hold", d["assertionsHold"], True)
want("settings.socket refused", d["socketRejected"], True)
want("disabled: nothing", d["disabled"], {"assertions": [], "etc": {}, "packages": [], "sockets": {}})
want("option errors", d["errors"], {"socketGroupNotString": True, "enableNotBool": True,
     "unknownOption": True, "packageOverride": True})
want("units (systemd/, as nix/package.nix installs them)", d["units"], {
     "listenStream": ["/run/qemu-pr-helper.sock"], "socketMode": ["0600"], "execStart": ["/usr/bin/pr-helper"],
     "dynamicUser": ["yes"], "capabilityBoundingSet": ["CAP_SYS_RAWIO"], "ambientCapabilities": ["CAP_SYS_RAWIO"],
     "noNewPrivileges": ["yes"], "rewritesExecStart": True, "installsUnits": True})
want("vm node enables the service", d["vm"]["enabled"], True)
want("vm node sockets", d["vm"]["sockets"], ["pr-helper"])
want("vm node loads tcm_loop", "tcm_loop" in d["vm"]["kernelModules"], True)
want("vm testScript covers ping, PR IN, CapEff, NoNewPrivs, Seccomp, DynamicUser, LIO",
     d["vm"]["testScriptChecks"], [True] * 7)
for b in bad:
    print("  " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
' "$1"
}
t_nix() {
    local f src=$W/nix/src json show lock_ref
    rm -rf "$W/nix"
    mkdir -p "$W/nix"
    for f in flake.nix nix/*.nix packaging/nix-stub/*.nix; do
        nix-instantiate --store dummy:// --parse "$PRH_ROOT/$f" >/dev/null || fail "$f does not parse"
    done
    # The stub's module system behaves as NixOS documents (selftest.nix).
    json=$(nix-instantiate --store dummy:// --eval --strict --json "$PRH_ROOT/packaging/nix-stub/selftest.nix") ||
        fail "stub module system self-test did not evaluate"
    python3 -c '
import json, sys
d = json.load(sys.stdin)
bad = [k for k, v in d.items() if v is not True]
if bad:
    sys.exit("stub module system: wrong semantics: " + ", ".join(bad))
print(f"  stub module system: {len(d)} semantics checks ok", file=sys.stderr)
' <<<"$json" || fail "packaging/nix-stub/lib.nix does not behave like NixOS' module system"
    json=$(nix-instantiate --store dummy:// --eval --strict --json \
        "$PRH_ROOT/packaging/nix-stub/eval.nix" --arg root "$PRH_ROOT") || fail "stub evaluation failed"
    echo "$json" >&2
    nix_eval_asserts "$PRH_VERSION" <<<"$json" || fail "flake outputs / module evaluation: unexpected results (above)"
    # The VM test's Python as the NixOS test driver lints it (pyflakes, with
    # the driver's names for the machine and subtest defined).
    /usr/bin/python3 -c 'import pyflakes' 2>/dev/null || prh_die "python3-pyflakes missing (run packaging/setup.sh)"
    python3 -c 'import json, sys; print(json.load(sys.stdin)["vm"]["testScript"])' <<<"$json" |
        sed '1i from typing import Any\nmachine: Any = None\nsubtest: Any = None' >"$W/nix/testScript.py"
    /usr/bin/python3 -m pyflakes "$W/nix/testScript.py" >&2 || fail "the VM test's testScript does not pass pyflakes"
    figure "nix: flake outputs and services.pr-helper through evalModules (stub lib with NixOS option semantics): packages, static (musl), apps, checks, units, settings, types, unknown options, disabled, VM test node"

    # The nixpkgs pin: a stable channel (nixos-YY.MM), and flake.lock, once
    # committed, of the shape `nix flake lock` writes for it.
    lock_ref=$(sed -n 's|^ *inputs\.nixpkgs\.url *= *"github:NixOS/nixpkgs/\(.*\)";|\1|p' "$PRH_ROOT/flake.nix")
    [[ $lock_ref =~ ^nixos-([0-9][0-9])\.(05|11)$ ]] || fail "flake.nix pins nixpkgs '$lock_ref', not a stable channel"
    # Supported at the time of the commit: a YY.05 release until the end of
    # December, a YY.11 one until the end of June of the next year.
    local yy=${BASH_REMATCH[1]} mm=${BASH_REMATCH[2]} eol now rust msrv
    if [ "$mm" = 05 ]; then eol=$(date -u -d "20$yy-12-31 23:59:59" +%s); else eol=$(date -u -d "20$((10#$yy + 1))-06-30 23:59:59" +%s); fi
    [ "$SOURCE_DATE_EPOCH" -le "$eol" ] ||
        fail "flake.nix pins $lock_ref, out of support since $(date -u -d @"$eol" +%F) (commit date $(date -u -d @"$SOURCE_DATE_EPOCH" +%F)): move the pin"
    # The channel's Rust, as flake.nix records it, is at least rust-version.
    rust=$(sed -n 's/^# .*Its Rust is \([0-9.]*[0-9]\),.*/\1/p' "$PRH_ROOT/flake.nix")
    msrv=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' "$PRH_ROOT/Cargo.toml")
    [ -n "$rust" ] || fail "flake.nix does not record the Rust version of $lock_ref (\"Its Rust is X.Y.Z,\")"
    [ "$(printf '%s\n' "$msrv" "$rust" | sort -V | head -n1)" = "$msrv" ] ||
        fail "flake.nix: the Rust of $lock_ref ($rust) is older than rust-version $msrv"
    printf '{"version":7,"root":"root","nodes":{"root":{"inputs":{"nixpkgs":"nixpkgs"}},"nixpkgs":{"original":{"owner":"NixOS","repo":"nixpkgs","ref":"nixos-24.11","type":"github"},"locked":{"owner":"NixOS","repo":"nixpkgs","rev":"abc","type":"github"}}}}' \
        >"$W/nix/bad.lock"
    ! "$PRH_ROOT/packaging/check-flake-lock.py" "$PRH_ROOT/flake.nix" "$W/nix/bad.lock" 2>/dev/null ||
        fail "check-flake-lock.py accepted a lock for another ref with a short rev and no narHash"
    if [ -e "$PRH_ROOT/flake.lock" ]; then
        "$PRH_ROOT/packaging/check-flake-lock.py" "$PRH_ROOT/flake.nix" "$PRH_ROOT/flake.lock" ||
            fail "flake.lock does not match flake.nix (regenerate it with nix flake lock)"
        figure "nix: nixpkgs $lock_ref (rustc $rust >= $msrv, supported until $(date -u -d @"$eol" +%F)); flake.lock present, shape ok"
    else
        figure "nix: nixpkgs $lock_ref (rustc $rust >= $msrv, supported until $(date -u -d @"$eol" +%F)); no flake.lock (cannot be produced offline: docs/packaging.md, Nix)"
    fi

    # A flake in a git tree sees tracked files only: check a copy of the tree.
    rm -rf "$src"
    prh_copy_tree "$src"
    rm -f "$src/flake.lock" # its nixpkgs is replaced by the stub anyway
    nix flake check --no-build --no-write-lock-file \
        --override-input nixpkgs "path:$PRH_ROOT/packaging/nix-stub" "path:$src" 2>&1 |
        grep -v "build-users-group\|lock file\|Added input\|path:$PRH_ROOT/packaging/nix-stub" >&2 ||
        true
    nix flake check --no-build --no-write-lock-file \
        --override-input nixpkgs "path:$PRH_ROOT/packaging/nix-stub" "path:$src" >/dev/null 2>&1 ||
        fail "nix flake check failed"
    show=$(nix flake show --json --no-write-lock-file \
        --override-input nixpkgs "path:$PRH_ROOT/packaging/nix-stub" "path:$src" 2>/dev/null) ||
        fail "nix flake show failed"
    python3 -c '
import json, sys
d = json.loads(sys.argv[1])
shape = {k: {s: sorted(v) for s, v in d[k].items()} for k in ("packages", "apps", "checks")}
want = {"packages": ["default", "pr-helper", "static"], "apps": ["default", "static"],
        "checks": ["package", "static", "vm"]}
for k, names in want.items():
    for s in ("x86_64-linux", "aarch64-linux"):
        if shape[k].get(s) != names:
            sys.exit(f"nix flake show: {k}.{s} = {shape[k].get(s)}, want {names}")
for k in ("nixosModules", "overlays"):
    if sorted(d.get(k, {})) != ["default"]:
        sys.exit(f"nix flake show: {k} = {sorted(d.get(k, {}))}, want [default]")
' "$show" || fail "flake outputs have the wrong shape"
    figure "nix flake check --no-build with the stub nixpkgs: ok; outputs packages {default,pr-helper,static}, apps {default,static}, checks {package,static,vm} for x86_64/aarch64-linux, overlays.default, nixosModules.default"
}

TIMES=()
start_all=$(date +%s)
for section in "${SECTIONS[@]}"; do
    declare -F "t_$section" >/dev/null || prh_die "unknown section $section (${SECTIONS[*]})"
    echo "== $section"
    t0=$(date +%s)
    "t_$section"
    TIMES+=("$section $(($(date +%s) - t0))s")
done
echo
echo "== figures"
printf '  %s\n' "${FIGURES[@]}"
echo "== durations: ${TIMES[*]}; total $(($(date +%s) - start_all))s"
echo "packaging tests: all passed"
