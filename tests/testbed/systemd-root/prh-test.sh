#!/bin/sh
# Runs under systemd as PID 1 in the test bed's systemd boot
# (tests/testbed/build-systemd-root.sh): the multipath variant's unit, as
# the RPM's pr-helper-multipath subpackage installs it, serves a REGISTER
# on a real two-path map. Results go to the console as RESULT lines; then
# the machine powers off.
out=/dev/console
result() { # NAME OK WHY
    if [ "$2" = 0 ]; then echo "RESULT PASS $1" >$out; else echo "RESULT FAIL $1 $3" >$out; fi
}
echo "TESTBED-SYSTEMD pid1=$(cat /proc/1/comm) $(systemctl --version | head -n1)" >$out
map=
i=0
while [ $i -lt 120 ]; do
    map=$(ls /dev/mapper/ 2>/dev/null | grep -v '^control$' | head -n1)
    [ -n "$map" ] && break
    sleep 1; i=$((i + 1))
done
paths=$(multipath -ll 2>/dev/null | grep -oE ' sd[a-z]+ ' | tr -d ' ' | tr '\n' ' ')
echo "TESTBED-SYSTEMD map=$map paths=$paths" >$out
[ -n "$map" ] && [ "$(echo $paths | wc -w)" = 2 ]
result systemd-multipath-map $? "map '$map', paths '$paths'"
[ "$(cat /proc/1/comm)" = systemd ]
result systemd-is-pid-1 $? "$(cat /proc/1/comm)"
systemctl is-active --quiet pr-helper.socket
result systemd-socket-active $? "$(systemctl is-active pr-helper.socket)"
# A new LUN reports a UNIT ATTENTION (power on) once per nexus: read it
# off both paths, as an initiator's first commands do.
for p in $paths; do
    for _ in 1 2 3; do sg_turs "/dev/$p" >/dev/null 2>&1 && break; done
    echo "TESTBED-SYSTEMD tur $p: $(sg_turs -v "/dev/$p" 2>&1 | tr '\n' ' ')" >$out
done
# The anchor: mpathpersist (the same library, run directly as root) on the
# same map first, then cleared.
mp=$(mpathpersist --out --register --param-sark=0x5d5d0002 "/dev/mapper/$map" 2>&1)
mprc=$?
echo "TESTBED-SYSTEMD mpathpersist register: rc=$mprc $(echo "$mp" | tr '\n' ' ')" >$out
mpathpersist --out --clear --param-rk=0x5d5d0002 "/dev/mapper/$map" >/dev/null 2>&1
key=0x5d5d0001
reply=$(pr-helper persist --socket /run/qemu-pr-helper.sock --device "/dev/mapper/$map" --register --sa-key $key 2>&1)
rc=$?
echo "TESTBED-SYSTEMD register through the unit: rc=$rc $reply" >$out
# mpathpersist exits with the library's result: 0 success, 2 NOT READY
# (which pr-helper answers 02/04/00, spec section 7).
case $mprc in
    0) [ "$rc" = 0 ] ;;
    2) echo "$reply" | grep -q 'sense 02/04/00' ;;
    *) false ;;
esac
result systemd-register-through-the-unit-as-mpathpersist $? "pr-helper: rc $rc $reply; mpathpersist: rc $mprc"
prkey=$(multipathd getprkey map "$map" 2>&1)
echo "$prkey" | grep -qi "${key#0x}"
result systemd-multipathd-has-the-key $? "$prkey"
pid=$(systemctl show -p MainPID --value pr-helper.service)
status=$(grep -E '^(Uid|CapEff|CapBnd|Seccomp|NoNewPrivs):' /proc/$pid/status 2>/dev/null | tr '\t\n' '  ')
echo "TESTBED-SYSTEMD service pid=$pid $status" >$out
echo "$status" | grep -q 'Uid: 0 0 0 0' && echo "$status" | grep -q 'CapEff: 0000000000220000' &&
    echo "$status" | grep -q 'CapBnd: 0000000000220000' && echo "$status" | grep -q 'NoNewPrivs: 1' &&
    echo "$status" | grep -q 'Seccomp: 2'
result systemd-unit-identity $? "$status"
both=0
for p in $paths; do
    sg_persist -n -i -k "/dev/$p" 2>&1 | grep -q "$key" && both=$((both + 1))
done
[ "$both" = 2 ]
result systemd-key-on-both-paths $? "on $both of 2"
pr-helper persist --socket /run/qemu-pr-helper.sock --device "/dev/mapper/$map" --clear --key $key >/dev/null 2>&1
journalctl -u pr-helper.service --no-pager -o cat 2>/dev/null | tail -n 20 | sed 's/^/TESTBED-JOURNAL /' >$out
echo "TESTBED-DONE" >$out
systemctl poweroff --force --force
