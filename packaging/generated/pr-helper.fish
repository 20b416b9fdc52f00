# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_pr_helper_global_optspecs
    string join \n k/socket= f/pidfile= d/daemon u/user= g/group= log-target= T/trace= sgio-timeout= request-timeout= max-connections= max-connections-per-client= sgio-threads= socket-mode= socket-group= multipath= seccomp= landlock= require-landlock= allowed-uids= allowed-gids= audit= v/verbose q/quiet config= print-config h/help V/version
end

function __fish_pr_helper_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_pr_helper_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_pr_helper_using_subcommand
    set -l cmd (__fish_pr_helper_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c pr-helper -n "__fish_pr_helper_needs_command" -s k -l socket -d 'Socket path; must be absolute' -r -F
complete -c pr-helper -n "__fish_pr_helper_needs_command" -s f -l pidfile -d 'Pidfile path (writing a pidfile is enabled by -d or -f) [default with -d: /run/qemu-pr-helper.pid]' -r -F
complete -c pr-helper -n "__fish_pr_helper_needs_command" -s u -l user -d 'User to run as (name or number)' -r
complete -c pr-helper -n "__fish_pr_helper_needs_command" -s g -l group -d 'Group to run as (name or number)' -r
complete -c pr-helper -n "__fish_pr_helper_needs_command" -l log-target -d 'Where log messages go' -r -f -a "auto\t'journald when stderr is connected to the journal (or when daemonized and journald runs), stderr otherwise'
stderr\t'Always stderr'
journald\t'Always journald'"
complete -c pr-helper -n "__fish_pr_helper_needs_command" -s T -l trace -d 'Trace options: [[enable=]PATTERN][,events=FILE][,file=FILE]; see pr-helper(8)' -r
complete -c pr-helper -n "__fish_pr_helper_needs_command" -l sgio-timeout -d 'SG_IO timeout in seconds' -r
complete -c pr-helper -n "__fish_pr_helper_needs_command" -l request-timeout -d 'Seconds a started request may take to arrive completely' -r
complete -c pr-helper -n "__fish_pr_helper_needs_command" -l max-connections -d 'Most simultaneous client connections' -r
complete -c pr-helper -n "__fish_pr_helper_needs_command" -l max-connections-per-client -d 'Most simultaneous connections from one client process (by its pid); 0: no limit' -r
complete -c pr-helper -n "__fish_pr_helper_needs_command" -l sgio-threads -d 'Most SG_IO commands executing at once' -r
complete -c pr-helper -n "__fish_pr_helper_needs_command" -l socket-mode -d 'Permissions of the created socket, in octal [default: from the umask]' -r
complete -c pr-helper -n "__fish_pr_helper_needs_command" -l socket-group -d 'Group owning the created socket (name or number)' -r
complete -c pr-helper -n "__fish_pr_helper_needs_command" -l multipath -d 'Send PR commands on dm-multipath devices through libmpathpersist [default: on in builds with multipath support]' -r -f -a "true\t''
false\t''"
complete -c pr-helper -n "__fish_pr_helper_needs_command" -l seccomp -d 'The seccomp system call allow-list: kill, log or none' -r -f -a "kill\t'The process ends (status 159) after naming the call on stderr'
log\t'The call runs; the kernel logs it (audit type 1326, dmesg or the audit log). Not a sandbox: for finding missing entries'
none\t'No filter (NO_NEW_PRIVS and Landlock still apply)'"
complete -c pr-helper -n "__fish_pr_helper_needs_command" -l landlock -d 'Restrict filesystem access with Landlock where the kernel has it' -r -f -a "true\t''
false\t''"
complete -c pr-helper -n "__fish_pr_helper_needs_command" -l require-landlock -d 'Refuse to start unless Landlock restricts filesystem access' -r -f -a "true\t''
false\t''"
complete -c pr-helper -n "__fish_pr_helper_needs_command" -l allowed-uids -d 'Only these peer uids may connect (comma-separated) [default: anyone the socket permissions let in]' -r
complete -c pr-helper -n "__fish_pr_helper_needs_command" -l allowed-gids -d 'Only peers with these primary gids may connect (comma-separated)' -r
complete -c pr-helper -n "__fish_pr_helper_needs_command" -l audit -d 'Log every PR OUT as an audit record at info level' -r -f -a "true\t''
false\t''"
complete -c pr-helper -n "__fish_pr_helper_needs_command" -l config -d 'Configuration file (must exist) [default: /etc/pr-helper/config.toml if present]' -r -F
complete -c pr-helper -n "__fish_pr_helper_needs_command" -s d -l daemon -d 'Daemonize: return once the socket and pidfile are ready (implies a pidfile)'
complete -c pr-helper -n "__fish_pr_helper_needs_command" -s v -l verbose -d 'Increase verbosity (repeatable)'
complete -c pr-helper -n "__fish_pr_helper_needs_command" -s q -l quiet -d 'Only report errors (wins over -v)'
complete -c pr-helper -n "__fish_pr_helper_needs_command" -l print-config -d 'Print the effective configuration, with where each value comes from, and exit'
complete -c pr-helper -n "__fish_pr_helper_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pr-helper -n "__fish_pr_helper_needs_command" -s V -l version -d 'Print version'
complete -c pr-helper -n "__fish_pr_helper_needs_command" -f -a "ping" -d 'Connect to a running helper, do the handshake, report success (exit 0) or failure (exit 1)'
complete -c pr-helper -n "__fish_pr_helper_needs_command" -f -a "persist" -d 'Send one PERSISTENT RESERVE IN/OUT through a running helper, as QEMU would, and decode the answer'
complete -c pr-helper -n "__fish_pr_helper_needs_command" -f -a "probe" -d 'Ask a device directly (SG_IO) whether it supports persistent reservations'
complete -c pr-helper -n "__fish_pr_helper_needs_command" -f -a "paths" -d 'Show which path of a dm-multipath map holds which registration (SG_IO on each path) and whether the paths agree: exit 0 consistent, 3 disagree, 4 undetermined, 1 error'
complete -c pr-helper -n "__fish_pr_helper_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand ping" -s k -l socket -d 'Socket of the helper' -r -F
complete -c pr-helper -n "__fish_pr_helper_using_subcommand ping" -l timeout -d 'Give up after this many seconds' -r
complete -c pr-helper -n "__fish_pr_helper_using_subcommand ping" -s h -l help -d 'Print help'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -s k -l socket -d 'Socket of the helper' -r -F
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -s d -l device -d 'The SCSI device (e.g. /dev/sdb or /dev/sg1); opened read-write unless --read-only' -r -F
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l key -d 'RESERVATION KEY (hex, 0x optional)' -r
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l sa-key -d 'SERVICE ACTION RESERVATION KEY (hex)' -r
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l type -d 'Reservation type: 1 WE, 3 EA, 5 WE-RO, 6 EA-RO, 7 WE-AR, 8 EA-AR' -r
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l scope -d 'Scope (0 = LU)' -r
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l transport-id -d 'TransportID: sas,HEXADDR | fcp,HEXNAME | an iSCSI name (iqn./eui./naa.) | hex,BYTES' -r
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l relative-target-port -d 'REGISTER AND MOVE: relative target port identifier' -r
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l alloc-length -d 'PR IN allocation length' -r
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l read-keys -d 'PR IN: READ KEYS'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l read-reservation -d 'PR IN: READ RESERVATION'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l report-capabilities -d 'PR IN: REPORT CAPABILITIES'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l read-full-status -d 'PR IN: READ FULL STATUS'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l register -d 'PR OUT: REGISTER (--key current, --sa-key new; --sa-key 0 unregisters)'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l register-ignore -d 'PR OUT: REGISTER AND IGNORE EXISTING KEY (--sa-key)'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l reserve -d 'PR OUT: RESERVE (--key, --type)'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l release -d 'PR OUT: RELEASE (--key, --type)'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l clear -d 'PR OUT: CLEAR (--key)'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l preempt -d 'PR OUT: PREEMPT (--key, --sa-key of the preempted, --type)'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l preempt-abort -d 'PR OUT: PREEMPT AND ABORT'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l register-move -d 'PR OUT: REGISTER AND MOVE (--key, --sa-key, --type, --transport-id, --relative-target-port)'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l aptpl -d 'APTPL (persist through power loss)'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l all-tg-pt -d 'ALL_TG_PT (register on all target ports)'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l spec-i-pt -d 'SPEC_I_PT (register the --transport-id initiators too)'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l unreg -d 'REGISTER AND MOVE: UNREG'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l read-only -d 'Open the device read-only (PR OUT is then refused by the helper)'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l json -d 'Print the reply as JSON'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -l raw -d 'Print the reply\'s wire bytes (status, length, sense, data) in hex'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand persist" -s h -l help -d 'Print help'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand probe" -l timeout -d 'SG_IO timeout in seconds' -r
complete -c pr-helper -n "__fish_pr_helper_using_subcommand probe" -s h -l help -d 'Print help'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand paths" -l timeout -d 'SG_IO timeout per command, in seconds' -r
complete -c pr-helper -n "__fish_pr_helper_using_subcommand paths" -l json -d 'Print one JSON object instead of text'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand paths" -s h -l help -d 'Print help'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand help; and not __fish_seen_subcommand_from ping persist probe paths help" -f -a "ping" -d 'Connect to a running helper, do the handshake, report success (exit 0) or failure (exit 1)'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand help; and not __fish_seen_subcommand_from ping persist probe paths help" -f -a "persist" -d 'Send one PERSISTENT RESERVE IN/OUT through a running helper, as QEMU would, and decode the answer'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand help; and not __fish_seen_subcommand_from ping persist probe paths help" -f -a "probe" -d 'Ask a device directly (SG_IO) whether it supports persistent reservations'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand help; and not __fish_seen_subcommand_from ping persist probe paths help" -f -a "paths" -d 'Show which path of a dm-multipath map holds which registration (SG_IO on each path) and whether the paths agree: exit 0 consistent, 3 disagree, 4 undetermined, 1 error'
complete -c pr-helper -n "__fish_pr_helper_using_subcommand help; and not __fish_seen_subcommand_from ping persist probe paths help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
