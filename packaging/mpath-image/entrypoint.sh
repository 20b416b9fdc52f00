#!/bin/sh
# /entrypoint.sh of the multipath image. KubeVirt's pr-helper container spec
# runs "/entrypoint.sh -k /var/run/kubevirt/daemons/pr/pr-helper.sock" in the
# pod's own network namespace, and virt-handler bind-mounts the host's
# multipathd socket (/run/multipathd.socket: multipath-tools 0.12 or later
# on the host) into the shared directory. The image's libmpathcmd
# (multipath-tools 0.15) tries /run/multipathd.socket first and then
# multipathd's abstract socket, so that name is linked to the mounted one,
# as KubeVirt's own image does: $MULTIPATHD_SOCKET (not PR_HELPER_*:
# pr-helper refuses settings it does not know; default: KubeVirt's
# /var/run/kubevirt/daemons/pr/multipathd.socket). A /run/multipathd.socket
# mounted into the container directly is left alone; with host networking
# the abstract socket of an older host's multipathd is reached as well.
#
# No relay: pr-helper connects to multipathd itself and only to a listener
# that runs as root (src/mpath/multipathd.rs), so a socket that QEMU's
# uid 107, which owns the shared directory, puts there is refused.
# SPDX-License-Identifier: GPL-2.0-or-later
socket=${MULTIPATHD_SOCKET:-/var/run/kubevirt/daemons/pr/multipathd.socket}
link=/run/multipathd.socket
if [ ! -e "$link" ] && [ ! -L "$link" ]; then
    ln -s "$socket" "$link" ||
        echo "entrypoint: cannot link $link to $socket; multipathd is reachable only on its abstract socket" >&2
fi
exec /usr/bin/pr-helper "$@"
