#!/usr/bin/perl
# multipathd relay for the multipath image in a pod's own network namespace.
#
# libmpathcmd of multipath-tools before 0.12 (Debian 12: 0.9.4) connects to
# multipathd only on the abstract socket @/org/kernel/linux/storage/multipathd,
# and abstract sockets belong to a network namespace: in a pod without host
# networking nothing listens there. KubeVirt's virt-handler bind-mounts the
# host's multipathd socket into the shared directory
# (/var/run/kubevirt/daemons/pr/multipathd.socket). This relay listens on the
# abstract name inside the pod and forwards libmpathpersist's commands to
# that pathname socket.
#
#   multipathd-relay.pl TARGET [LISTEN]
#
# LISTEN defaults to multipathd's abstract name; a name that starts with @
# is abstract (so the test bed can also offer a host's multipathd, which
# listens on the abstract name only, on a pathname socket, as
# multipath-tools 0.12 does).
#
# multipathd runs every command of a root peer, including "del map" and
# "shutdown", and only list/show for other users. Forwarded as they are,
# connections from any process in the pod's network namespace would reach it
# as the relay's own uid, root. So the relay:
#
# - serves only peers with uid 0 (SO_PEERCRED), as multipathd itself would
#   for these commands;
# - connects only to a multipathd that runs as root: a pathname TARGET must
#   be a socket owned by root, and the peer at the other end must have
#   uid 0 (SO_PEERCRED after connect, so swapping the file in between does
#   not help: KubeVirt's shared directory is writable by uid 107, QEMU's);
# - passes only the commands libmpathpersist sends (its PR status, key and
#   hold commands for one map), one framed command at a time, with their
#   replies; anything else ends the connection;
# - serves at most MAX_CONNECTIONS connections at once, each idle for at
#   most IDLE seconds, and does not spin when accept fails;
# - refuses to start when TARGET is not such a socket (after waiting for
#   one that does not exist yet to appear).
#
# The wire format is libmpathcmd's: a size_t length (native), then that many
# bytes (a command ends with its NUL).
# SPDX-License-Identifier: GPL-2.0-or-later
use strict;
use warnings;
use Config;
use Errno qw(EINTR);
use POSIX qw(WNOHANG);
use Socket qw(AF_UNIX SOCK_STREAM SOMAXCONN SOL_SOCKET SO_PEERCRED pack_sockaddr_un);

use constant MAX_CONNECTIONS => 16;
use constant IDLE => 60;
use constant MAX_COMMAND => 65536;
# libmpathcmd's MAX_REPLY_LEN.
use constant MAX_REPLY => 32 * 1024 * 1024;

my $ALLOWED = qr/\A(?:get|set|unset)pr(?:status|key|hold) map [^\s\0]+(?: (?:key|pathlist) [^\0]*)?\z/;
my $SIZE = $Config{sizesize} == 8 ? 'Q' : 'L';

my $target = shift or die "usage: $0 TARGET [LISTEN]\n";
my $listen = shift // '@/org/kernel/linux/storage/multipathd';
sub addr { my $n = shift; $n =~ s/^@/\0/; return pack_sockaddr_un($n); }
sub say_err { print STDERR "multipathd-relay: @_\n"; }

# Uid of the peer of a connected Unix socket.
sub peer_uid {
    my $packed = getsockopt($_[0], SOL_SOCKET, SO_PEERCRED) or return -1;
    my (undef, $uid) = unpack('l l l', $packed);
    return $uid;
}

# Why a pathname TARGET is not a socket owned by root, or undef; $missing
# says whether it does not exist.
our $missing = 0;
sub target_problem {
    $missing = 0;
    return undef if $target =~ /^@/;
    my @st = lstat($target) or do { $missing = $!{ENOENT} ? 1 : 0; return "$target: $!" };
    return "$target is not a socket" unless -S _;
    return "$target is owned by uid $st[4], not root" if $st[4] != 0;
    return undef;
}

# The host's socket may be bind-mounted a moment after the pod starts: wait
# for it to appear (MULTIPATHD_RELAY_WAIT seconds, 30), but not for a
# wrong one to change.
my $wait = $ENV{MULTIPATHD_RELAY_WAIT} // 30;
my $deadline = time() + $wait;
while (my $why = target_problem()) {
    die "multipathd-relay: $why; not starting\n" if !$missing || time() >= $deadline;
    say_err("$why; waiting up to ${wait} s for it") if !our $said++;
    select(undef, undef, undef, 0.1);
}
socket(my $listener, AF_UNIX, SOCK_STREAM, 0) or die "multipathd-relay: socket: $!\n";
bind($listener, addr($listen)) or die "multipathd-relay: bind $listen: $!\n";
listen($listener, SOMAXCONN) or die "multipathd-relay: listen: $!\n";

my $active = 0;
$SIG{CHLD} = sub {
    while ((my $pid = waitpid(-1, WNOHANG)) > 0) { $active-- }
};

while (1) {
    my $client;
    if (!accept($client, $listener)) {
        # Out of fds or memory: wait instead of spinning.
        select(undef, undef, undef, 0.1) unless $!{EINTR};
        next;
    }
    my $uid = peer_uid($client);
    if ($uid != 0) {
        say_err("refused a peer with uid $uid (only root's commands are forwarded)");
        close $client;
        next;
    }
    if ($active >= MAX_CONNECTIONS) {
        say_err("refused a connection: " . MAX_CONNECTIONS . " already open");
        close $client;
        next;
    }
    my $pid = fork();
    if (!defined $pid) { close $client; next; }
    if ($pid) { $active++; close $client; next; }
    close $listener;
    $SIG{CHLD} = 'DEFAULT';
    exit(serve($client) ? 0 : 1);
}

# One connection: checks the upstream, then relays command by command.
sub serve {
    my $client = shift;
    $SIG{ALRM} = sub { exit 0 };
    if (my $why = target_problem()) {
        say_err("$why; connection dropped");
        return 0;
    }
    socket(my $upstream, AF_UNIX, SOCK_STREAM, 0) or return 0;
    connect($upstream, addr($target)) or do { say_err("connect $target: $!"); return 0 };
    my $uid = peer_uid($upstream);
    if ($uid != 0) {
        say_err("$target is served by uid $uid, not root; connection dropped");
        return 0;
    }
    while (1) {
        alarm(IDLE);
        my $len = read_size($client) // return 1;
        return 0 if $len == 0 || $len > MAX_COMMAND;
        my $cmd = read_exact($client, $len) // return 0;
        (my $text = $cmd) =~ s/\0\z//;
        if ($text !~ $ALLOWED) {
            $text =~ s/[^[:print:]]/?/g;
            say_err("refused the command \"" . substr($text, 0, 80) . "\" (not one libmpathpersist sends)");
            return 0;
        }
        write_all($upstream, pack($SIZE, $len) . $cmd) or return 0;
        my $rlen = read_size($upstream) // return 0;
        return 0 if $rlen > MAX_REPLY;
        my $reply = read_exact($upstream, $rlen) // return 0;
        write_all($client, pack($SIZE, $rlen) . $reply) or return 0;
    }
}

sub read_size {
    my $raw = read_exact($_[0], length(pack($SIZE, 0))) // return undef;
    return unpack($SIZE, $raw);
}

sub read_exact {
    my ($fh, $n) = @_;
    my $buf = '';
    while (length($buf) < $n) {
        my $r = sysread($fh, $buf, $n - length($buf), length($buf));
        next if !defined $r && $!{EINTR};
        return undef if !$r;
    }
    return $buf;
}

sub write_all {
    my ($fh, $buf) = @_;
    my $off = 0;
    while ($off < length($buf)) {
        my $w = syswrite($fh, $buf, length($buf) - $off, $off);
        next if !defined $w && $!{EINTR};
        return 0 if !defined $w;
        $off += $w;
    }
    return 1;
}
