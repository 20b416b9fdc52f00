#!/bin/sh
# /entrypoint.sh of the multipath image. KubeVirt's pr-helper container spec
# runs "/entrypoint.sh -k /var/run/kubevirt/daemons/pr/pr-helper.sock" in the
# pod's own network namespace, and virt-handler bind-mounts the host's
# multipathd socket at $MULTIPATHD_SOCKET (not PR_HELPER_*: pr-helper
# refuses settings it does not know; default: KubeVirt's
# /var/run/kubevirt/daemons/pr/multipathd.socket). The image's libmpathcmd
# (multipath-tools 0.9.4) only knows multipathd's abstract socket, so unless
# that name is already reachable (host network), a relay provides it here
# and forwards to the socket in the shared directory. Then pr-helper runs
# with the given arguments.
# SPDX-License-Identifier: GPL-2.0-or-later
socket=${MULTIPATHD_SOCKET:-/var/run/kubevirt/daemons/pr/multipathd.socket}
abstract() { grep -q ' @/org/kernel/linux/storage/multipathd$' /proc/net/unix; }
if ! abstract; then
    /usr/lib/pr-helper/multipathd-relay.pl "$socket" &
    i=0
    while ! abstract && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    abstract || echo "entrypoint: multipathd relay did not start" >&2
fi
exec /usr/bin/pr-helper "$@"
