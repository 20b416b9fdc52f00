#!/bin/bash
# Runs inside the systemd-nspawn boot (packaging/systemd-boot-test.sh), as
# the oneshot prh-boot-test.service once the system is up, with systemd as
# PID 1. Each check prints "ok: ..." or "FAIL: ..." to /prh-test/result.txt;
# the host reads that file after the container has powered off.
# SPDX-License-Identifier: GPL-2.0-or-later
set -u
T=/prh-test
OUT=$T/result.txt
SOCK=/run/qemu-pr-helper.sock
DEV=$(cat $T/device)
exec >"$OUT" 2>&1
fails=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
check() { # DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}
show() { sed 's/^/    /'; }
main_pid() { systemctl show -p MainPID --value pr-helper.service; }
wait_for() { # SECONDS COMMAND...: poll every 0.1 s
    local n=$(($1 * 10))
    shift
    while [ $n -gt 0 ]; do "$@" && return 0; sleep 0.1; n=$((n - 1)); done
    return 1
}
finish() {
    echo "checks failed: $fails"
    [ $fails -eq 0 ] && echo "RESULT: PASS" || echo "RESULT: FAIL"
    sync
    systemctl --no-block poweroff
    exit 0
}
trap finish EXIT

echo "== systemd $(systemctl --version | head -n1 | awk '{print $2}') as PID 1 ($(cat /proc/1/comm)), device $DEV"
check "PID 1 is systemd" test "$(cat /proc/1/comm)" = systemd

echo "== installed in a chroot before the boot: enabled, so listening after boot"
check "pr-helper.socket enabled (dpkg -i in the chroot)" test "$(systemctl is-enabled pr-helper.socket)" = enabled
check "pr-helper.socket listening after boot" systemctl -q is-active pr-helper.socket
check "pr-helper ping after boot" timeout 10 pr-helper ping -k $SOCK
echo "== dpkg -P pr-helper (systemd running)"
dpkg -P pr-helper 2>&1 | show
check "socket stopped and removed by the purge" \
    test "$(systemctl is-active pr-helper.socket pr-helper.service | sort -u)" = inactive -a ! -e $SOCK
check "no unit files left" test ! -e /lib/systemd/system/pr-helper.socket -a ! -e /usr/lib/systemd/system/pr-helper.socket

# QEMU's own units, as Debian's qemu-system-common / Fedora's qemu-pr-helper
# package ship them (contrib/systemd, in /lib/systemd/system), enabled and
# listening first.
cat >/lib/systemd/system/qemu-pr-helper.socket <<'EOF'
[Unit]
Description=Persistent Reservation Daemon for QEMU
[Socket]
ListenStream=/run/qemu-pr-helper.sock
SocketMode=0600
[Install]
WantedBy=multi-user.target
EOF
cat >/lib/systemd/system/qemu-pr-helper.service <<'EOF'
[Unit]
Description=Persistent Reservation Daemon for QEMU
[Service]
Type=simple
ExecStart=/bin/false
EOF
systemctl daemon-reload
systemctl enable --now qemu-pr-helper.socket 2>&1 | show
check "qemu-pr-helper.socket listening before the install" systemctl -q is-active qemu-pr-helper.socket

echo "== dpkg -i pr-helper.deb (systemd running, QEMU's socket listening)"
dpkg -i $T/pr-helper.deb 2>&1 | show
check "pr-helper.socket enabled by the install" test "$(systemctl is-enabled pr-helper.socket)" = enabled
check "pr-helper.socket listening right after the install" systemctl -q is-active pr-helper.socket
check "the socket node exists" test -S $SOCK
check "qemu-pr-helper.socket stopped by Conflicts=" test "$(systemctl is-active qemu-pr-helper.socket)" = inactive
check "pr-helper.service not started by the install" test "$(systemctl is-active pr-helper.service)" = inactive
# For the next boot both sockets would be wanted: mask QEMU's (README).
systemctl disable -q qemu-pr-helper.socket
systemctl mask -q qemu-pr-helper.socket qemu-pr-helper.service
check "qemu-pr-helper.socket masked" test "$(systemctl is-enabled qemu-pr-helper.socket)" = masked

echo "== systemctl stop/start pr-helper.socket, a client connects"
systemctl stop pr-helper.socket
check "socket removed on stop (RemoveOnStop=)" test ! -e $SOCK
systemctl start pr-helper.socket
check "systemctl start pr-helper.socket" systemctl -q is-active pr-helper.socket
check "service still inactive before the first client" test "$(systemctl is-active pr-helper.service)" = inactive
check "pr-helper ping through $SOCK" timeout 10 pr-helper ping -k $SOCK
check "pr-helper.service started by activation" systemctl -q is-active pr-helper.service
echo "-- pr-helper persist -k $SOCK -d $DEV --read-keys"
rc=0
out=$(timeout 20 pr-helper persist -k $SOCK -d "$DEV" --read-keys 2>&1) || rc=$?
echo "$out" | show
echo "    exit $rc"
check "PR IN answered by the activated service (exit $rc, not 1 = no answer)" test "$rc" != 1 -a "$rc" != 124
check "the answer is a SCSI status ($DEV is no SCSI disk: SG_IO fails, CHECK CONDITION)" \
    grep -q 'persistent reserve in' <<<"$out"

pid=$(main_pid)
echo "== /proc/$pid/status of pr-helper.service"
grep -E '^(Name|Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp|Seccomp_filters):' /proc/$pid/status | show
st() { awk -v k="$1:" '$1 == k { $1 = ""; sub(/^ /, ""); print }' /proc/$pid/status; }
uid=$(st Uid | awk '{print $1}')
check "dynamic user: uid $uid in 61184..65519, all four ids equal" \
    test "$uid" -ge 61184 -a "$uid" -le 65519 -a "$(st Uid | tr '\t ' '\n\n' | sort -u | wc -l)" = 1
check "uid $uid is the dynamic user pr-helper (getent: $(getent passwd "$uid"))" \
    test "$(getent passwd "$uid" | cut -d: -f1)" = pr-helper
check "CapEff = CAP_SYS_RAWIO only" test "$(st CapEff)" = 0000000000020000
check "CapPrm = CAP_SYS_RAWIO only" test "$(st CapPrm)" = 0000000000020000
check "CapBnd = CAP_SYS_RAWIO only" test "$(st CapBnd)" = 0000000000020000
check "Seccomp: 2 (filter)" test "$(st Seccomp)" = 2
check "NoNewPrivs: 1" test "$(st NoNewPrivs)" = 1
echo "-- journal of pr-helper.service"
journalctl -q -o cat -u pr-helper.service --no-pager | show
check "no supplementary-groups warning at start" \
    bash -c '! journalctl -q -o cat -u pr-helper.service | grep -q "supplementary groups"'

echo "== systemd-analyze security pr-helper.service (installed unit, running system)"
systemd-analyze security --no-pager pr-helper.service >$T/security.txt 2>&1
grep -E '^[✓✗] ' $T/security.txt | grep '✗' | show
grep 'Overall exposure level' $T/security.txt | show
score=$(sed -n 's/.*Overall exposure level for pr-helper.service: \([0-9.]*\).*/\1/p' $T/security.txt)
check "exposure $score <= 2.0" awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.0) }'

echo "== restart with a client connected"
held() { # start a client that holds a connection; it exits when the helper closes it
    socat -u UNIX-CONNECT:$SOCK CREATE:$T/held.$1 &
    HELD=$!
    wait_for 5 test -s $T/held.$1
}
check "client 1 connected and got the 4-byte handshake" held 1
old=$(main_pid)
t0=$(date +%s%N)
systemctl restart pr-helper.service
ms=$((($(date +%s%N) - t0) / 1000000))
check "systemctl restart pr-helper.service with a client connected returned in ${ms} ms (< 10 s)" test $ms -lt 10000
check "the held connection was closed by the old instance" wait_for 5 bash -c "! kill -0 $HELD 2>/dev/null"
check "a new instance runs (pid $old -> $(main_pid))" test "$(main_pid)" != "$old" -a "$(main_pid)" != 0
check "ping after the restart" timeout 10 pr-helper ping -k $SOCK
rc=0
timeout 20 pr-helper persist -k $SOCK -d "$DEV" --read-keys >/dev/null 2>&1 || rc=$?
check "PR IN after the restart (exit $rc)" test "$rc" != 1 -a "$rc" != 124

echo "== stop socket and service with a client connected, start again"
check "client 2 connected" held 2
t0=$(date +%s%N)
systemctl stop pr-helper.socket pr-helper.service
ms=$((($(date +%s%N) - t0) / 1000000))
check "systemctl stop with a client connected returned in ${ms} ms (< 10 s)" test $ms -lt 10000
check "both inactive" test "$(systemctl is-active pr-helper.socket pr-helper.service | sort -u)" = inactive
check "client 2's connection closed" wait_for 5 bash -c "! kill -0 $HELD 2>/dev/null"
check "no socket node left" test ! -e $SOCK
systemctl start pr-helper.socket
check "started again: ping activates the service" timeout 10 pr-helper ping -k $SOCK
rc=0
timeout 20 pr-helper persist -k $SOCK -d "$DEV" --read-keys >/dev/null 2>&1 || rc=$?
check "PR IN after stop and start (exit $rc)" test "$rc" != 1 -a "$rc" != 124
check "no failed units of ours" bash -c '! systemctl --failed --no-legend | grep -q pr-helper'
echo "-- journal of pr-helper.service (whole test)"
journalctl -q -o short-monotonic -u pr-helper.service -u pr-helper.socket --no-pager | show
