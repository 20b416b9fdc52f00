#!/usr/bin/env bash
# The .deb under a real systemd as PID 1: boots a Debian 12 root (made by
# packaging/setup.sh with mmdebstrap, cached as $PRH_PKG_CACHE/nspawn-HASH.tar)
# with
#   systemd-nspawn -D ROOT --boot --register=no --keep-unit --capability=CAP_SYS_RAWIO
# and runs packaging/systemd-boot/guest.sh there as a oneshot unit once the
# system is up: the .deb installed in a chroot before the boot listens after
# it; dpkg -P and dpkg -i with systemd running (the socket must listen at
# once, QEMU's own socket gives way), socket activation by a client, PR IN on a
# block device, /proc/PID/status of the service (dynamic user, CAP_SYS_RAWIO
# only, seccomp, no_new_privs), systemd-analyze security, restart and stop
# with a client connected. The guest writes its findings to a file, powers
# off, and this script prints them.
#
# The device: a loop device of the host bound into the container (nspawn
# allows a bound device node in its device cgroup). It is no SCSI disk, so
# SG_IO on it fails and the helper answers PR IN with a CHECK CONDITION: a
# defined answer that shows the request went through the activated service
# to the device and back. (No SCSI disk is available in a container here:
# scsi_debug is not in this kernel; real reservations are the VM test bed's.)
#
#   packaging/systemd-boot-test.sh DEB [WORKDIR]
# Exits 0 when every check passed. Time-bounded: the boot is killed after
# $PRH_BOOT_TIMEOUT seconds (default 300).
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
. "$(dirname "$0")/lib.sh"
prh_need systemd-nspawn losetup tar timeout
[ "$(id -u)" = 0 ] || prh_die "run as root"
[ $# -ge 1 ] || prh_die "usage: $0 DEB [WORKDIR]"
deb=$(realpath "$1")
w=${2:-${TMPDIR:-/var/tmp}/pr-helper-boot-test}
tarball=$PRH_NSPAWN_TAR
[ -f "$tarball" ] || prh_die "$tarball missing (run packaging/setup.sh)"

root=$w/root
loop=
nspawn_pid=
cleanup() {
    [ -n "$nspawn_pid" ] && kill "$nspawn_pid" 2>/dev/null
    [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null
    true
}
trap cleanup EXIT
rm -rf "$w"
mkdir -p "$root"
tar -xf "$tarball" -C "$root"
mkdir -p "$root/prh-test"
cp "$deb" "$root/prh-test/pr-helper.deb"
# Installed in a chroot first (no systemd running: enabled, not started);
# the guest checks the socket listens after boot, purges and installs again
# with systemd running.
chroot "$root" dpkg -i /prh-test/pr-helper.deb >"$w/chroot-dpkg.log" 2>&1 ||
    { cat "$w/chroot-dpkg.log" >&2; prh_die "dpkg -i in the chroot failed"; }
install -m 0755 "$PRH_ROOT/packaging/systemd-boot/guest.sh" "$root/prh-test/guest.sh"
cat >"$root/etc/systemd/system/prh-boot-test.service" <<'EOF'
[Unit]
Description=pr-helper systemd boot test
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/prh-test/guest.sh
StandardOutput=journal+console
[Install]
WantedBy=multi-user.target
EOF
ln -s ../prh-boot-test.service "$root/etc/systemd/system/multi-user.target.wants/prh-boot-test.service"
# The console belongs to the test, not to a login prompt.
ln -sf /dev/null "$root/etc/systemd/system/console-getty.service"

truncate -s 64M "$w/disk.img"
loop=$(losetup -f --show "$w/disk.img")
echo "$loop" >"$root/prh-test/device"

t0=$(date +%s)
timeout --signal=KILL "${PRH_BOOT_TIMEOUT:-300}" \
    systemd-nspawn -q -D "$root" --boot --register=no --keep-unit \
    --capability=CAP_SYS_RAWIO --bind="$loop" --console=pipe \
    </dev/null >"$w/console.log" 2>&1 &
nspawn_pid=$!
rc=0
wait "$nspawn_pid" || rc=$?
nspawn_pid=
secs=$(($(date +%s) - t0))
if [ ! -s "$root/prh-test/result.txt" ]; then
    tail -n 40 "$w/console.log" >&2
    prh_die "no result from the guest (systemd-nspawn exit $rc after ${secs}s; console: $w/console.log)"
fi
cat "$root/prh-test/result.txt"
echo "boot, test and poweroff: ${secs}s (systemd-nspawn exit $rc)"
grep -q '^RESULT: PASS$' "$root/prh-test/result.txt"
