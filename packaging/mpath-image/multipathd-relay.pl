#!/usr/bin/perl
# multipathd relay for the multipath image in a pod's own network namespace.
#
# libmpathcmd of multipath-tools before 0.12 (Debian 12: 0.9.4) connects to
# multipathd only on the abstract socket @/org/kernel/linux/storage/multipathd,
# and abstract sockets belong to a network namespace: in a pod without host
# networking nothing listens there. KubeVirt's virt-handler bind-mounts the
# host's multipathd socket into the shared directory
# (/var/run/kubevirt/daemons/pr/multipathd.socket). This relay listens on the
# abstract name inside the pod and forwards every connection, byte for byte,
# to that pathname socket (connected per connection, so a socket that
# appears or is replaced later is picked up).
#
#   multipathd-relay.pl TARGET [LISTEN]
#
# LISTEN defaults to multipathd's abstract name; a name that starts with @
# is abstract (so the test bed can also offer a host's multipathd, which
# listens on the abstract name only, on a pathname socket, as
# multipath-tools 0.12 does).
# SPDX-License-Identifier: GPL-2.0-or-later
use strict;
use warnings;
use Socket qw(AF_UNIX SOCK_STREAM SOMAXCONN pack_sockaddr_un);

my $target = shift or die "usage: $0 TARGET [LISTEN]\n";
my $listen = shift // '@/org/kernel/linux/storage/multipathd';
sub addr { my $n = shift; $n =~ s/^@/\0/; return pack_sockaddr_un($n); }

socket(my $listener, AF_UNIX, SOCK_STREAM, 0) or die "multipathd-relay: socket: $!\n";
bind($listener, addr($listen)) or die "multipathd-relay: bind $listen: $!\n";
listen($listener, SOMAXCONN) or die "multipathd-relay: listen: $!\n";
$SIG{CHLD} = 'IGNORE';

while (1) {
    my $client;
    accept($client, $listener) or next;
    my $pid = fork();
    if (!defined $pid) { close $client; next; }
    if ($pid) { close $client; next; }
    close $listener;
    socket(my $upstream, AF_UNIX, SOCK_STREAM, 0) or exit 1;
    connect($upstream, addr($target)) or exit 1;
    relay($client, $upstream);
    exit 0;
}

# Copies both ways until either side closes.
sub relay {
    my ($a, $b) = @_;
    my %peer = (fileno($a) => [$a, $b], fileno($b) => [$b, $a]);
    my $bits = '';
    vec($bits, fileno($a), 1) = 1;
    vec($bits, fileno($b), 1) = 1;
    while (1) {
        my $ready = $bits;
        select($ready, undef, undef, undef) > 0 or return;
        for my $fd (keys %peer) {
            next unless vec($ready, $fd, 1);
            my ($from, $to) = @{ $peer{$fd} };
            my $n = sysread($from, my $buf, 65536);
            return if !$n;
            my $off = 0;
            while ($off < $n) {
                my $w = syswrite($to, $buf, $n - $off, $off);
                return if !defined $w;
                $off += $w;
            }
        }
    }
}
