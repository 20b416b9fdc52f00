//! Writes pr-helper(8) and the bash, zsh and fish completions, all generated
//! from pr-helper's clap definition (`pr_helper::config::Cli`), into the
//! directory given as the only argument:
//!
//! ```text
//! pr-helper.8  pr-helper.bash  _pr-helper  pr-helper.fish
//! ```
//!
//! The output depends only on the source (no dates, no paths), so the
//! committed copies in packaging/generated/ can be checked for staleness by
//! generating again and comparing (packaging/test.sh does).
// SPDX-License-Identifier: GPL-2.0-or-later

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use pr_helper::config::{Cli, DEFAULT_CONFIG_FILE, DEFAULT_PIDFILE, DEFAULT_SOCKET, ENV_PREFIX, KEYS};

const NAME: &str = "pr-helper";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir] = args.as_slice() else {
        eprintln!("usage: pr-helper-gen-docs OUTPUT_DIR");
        return ExitCode::FAILURE;
    };
    match generate(Path::new(dir)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pr-helper-gen-docs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn generate(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();

    let man = dir.join("pr-helper.8");
    std::fs::write(&man, man_page()?)?;
    written.push(man);

    for (shell, file) in [
        (Shell::Bash, "pr-helper.bash"),
        (Shell::Zsh, "_pr-helper"),
        (Shell::Fish, "pr-helper.fish"),
    ] {
        let mut cmd = Cli::command();
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd, NAME, &mut buf);
        let path = dir.join(file);
        std::fs::write(&path, buf)?;
        written.push(path);
    }
    Ok(written)
}

/// The manual page: clap_mangen's sections for the helper's options, one
/// subsection per client command, then the sections clap knows nothing
/// about (configuration, files, signals, exit status).
fn man_page() -> std::io::Result<Vec<u8>> {
    check_files_section()?;
    let cmd = Cli::command();
    let version = cmd.get_version().unwrap_or_default().to_string();
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .source(format!("{NAME} {version}"))
        .manual("System Administration");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    render_synopsis(&mut out)?;
    man.render_description_section(&mut out)?;
    out.extend_from_slice(roff_paragraphs(DESCRIPTION).as_bytes());
    man.render_options_section(&mut out)?;

    out.extend_from_slice(b".SH \"CLIENT COMMANDS\"\n");
    out.extend_from_slice(
        roff_paragraphs(
            "The same binary also talks to a running helper (or a device) as a client. \
             Each command takes the options below.",
        )
        .as_bytes(),
    );
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let full = format!("{NAME} {}", sub.get_name());
        let sub = sub.clone().bin_name(full.clone()).display_name(full.clone());
        let sub_man = clap_mangen::Man::new(sub.clone());
        let mut synopsis = Vec::new();
        sub_man.render_synopsis_section(&mut synopsis)?;
        let mut options = Vec::new();
        sub_man.render_options_section(&mut options)?;
        writeln!(out, ".SS \"{full}\"")?;
        // The synopsis without its .SH line, then the description, then the
        // options without their .SH line.
        out.extend_from_slice(strip_sh(&synopsis).as_bytes());
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            out.extend_from_slice(b".PP\n");
            out.extend_from_slice(roff_escape(&about.to_string()).as_bytes());
            out.push(b'\n');
        }
        out.extend_from_slice(b".PP\n");
        out.extend_from_slice(strip_sh(&options).as_bytes());
    }

    out.extend_from_slice(configuration_section().as_bytes());
    for (title, body) in SECTIONS {
        writeln!(out, ".SH \"{title}\"")?;
        out.extend_from_slice(roff_paragraphs(body).as_bytes());
    }
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// A short synopsis: the helper, then each client command.
fn render_synopsis(out: &mut Vec<u8>) -> std::io::Result<()> {
    writeln!(out, ".SH SYNOPSIS")?;
    for line in [
        "\\fBpr-helper\\fR [\\fIOPTIONS\\fR]",
        "\\fBpr-helper ping\\fR [\\fB\\-k\\fR \\fIPATH\\fR] [\\fB\\-\\-timeout\\fR \\fISECONDS\\fR]",
        "\\fBpr-helper persist\\fR \\fB\\-k\\fR \\fISOCKET\\fR \\fB\\-d\\fR \\fIDEV\\fR \\fIACTION\\fR [\\fIOPTIONS\\fR]",
        "\\fBpr-helper probe\\fR \\fIDEV\\fR",
    ] {
        writeln!(out, "{line}\n.br")?;
    }
    Ok(())
}

fn strip_sh(roff: &[u8]) -> String {
    String::from_utf8_lossy(roff)
        .lines()
        .filter(|l| !l.starts_with(".SH "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Escapes text for roff: backslashes, hyphens (so they stay ASCII hyphens),
/// and a leading dot or quote.
fn roff_escape(text: &str) -> String {
    let mut s = text.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        s.insert_str(0, "\\&");
    }
    s.replace("\n.", "\n\\&.").replace("\n'", "\n\\&'")
}

/// Paragraphs separated by blank lines; lines starting with two spaces are
/// kept as a literal block.
fn roff_paragraphs(text: &str) -> String {
    let mut out = String::new();
    for para in text.trim_matches('\n').split("\n\n") {
        if para.lines().all(|l| l.starts_with("  ")) {
            out.push_str(".PP\n.nf\n.RS 4\n");
            for l in para.lines() {
                out.push_str(&roff_escape(&l[2..]));
                out.push('\n');
            }
            out.push_str(".RE\n.fi\n");
        } else {
            out.push_str(".PP\n");
            out.push_str(&roff_escape(&para.split('\n').collect::<Vec<_>>().join(" ")));
            out.push('\n');
        }
    }
    out
}

/// CONFIGURATION and ENVIRONMENT: the key list comes from the library, so a
/// new key shows up here without anyone editing this page.
fn configuration_section() -> String {
    let mut out = String::from(".SH CONFIGURATION\n");
    out.push_str(&roff_paragraphs(&format!(
        "Every setting has one name: a key in the TOML configuration file, the environment \
         variable {ENV_PREFIX}<KEY> (key in upper case) and the long option --<key> with \
         '-' for '_'. Layers, lowest first: built-in defaults, the file ({DEFAULT_CONFIG_FILE} \
         when it exists, or the one --config names, which must exist), the environment, the \
         command line. An unknown key or a bad value stops the start with a message naming the \
         key, the value and where it came from. --print-config shows the effective values and \
         their origins.\n\n\
         Keys:"
    )));
    for key in KEYS {
        let env = format!("{ENV_PREFIX}{}", key.to_uppercase());
        let option = match *key {
            // The one key without a long option of its own.
            "verbosity" => "\\fB\\-v\\fR (1 + count), \\fB\\-q\\fR (0)".to_string(),
            _ => format!("\\fB\\-\\-{}\\fR", roff_escape(&key.replace('_', "-"))),
        };
        out.push_str(&format!(
            ".TP\n\\fB{}\\fR\nenvironment \\fB{}\\fR, option {option}\n",
            roff_escape(key),
            roff_escape(&env),
        ));
    }
    out.push_str(&roff_paragraphs(
        "A commented example with every key is installed as \
         /usr/share/doc/pr-helper/config.toml.example.\n\n\
         Socket modes are octal: write \"0660\" as a string or 660 as a number; TOML's 0o660 \
         notation is not supported.",
    ));
    out
}

const DESCRIPTION: &str = "\
pr-helper speaks exactly the protocol of QEMU's qemu-pr-helper, so QEMU's \
pr-manager-helper object (and libvirt, managed or not) can use it unchanged. \
For each request it receives the 16-byte CDB, the file descriptor of the disk \
as opened by QEMU and, for PERSISTENT RESERVE OUT, the parameter list; it runs \
the command with the SG_IO ioctl and returns SCSI status, sense data and data. \
Only PERSISTENT RESERVE IN and OUT are accepted, and PERSISTENT RESERVE OUT only \
on descriptors opened for writing.

pr-helper is started as root (or with CAP_SYS_RAWIO), creates the socket or \
takes it from systemd, and then keeps CAP_SYS_RAWIO only (CAP_SYS_ADMIN too in \
multipath builds), clears the bounding set, drops supplementary groups, switches \
to -u/-g, sets NO_NEW_PRIVS and installs a Landlock ruleset and a seccomp \
system call allow-list before serving.";

const SECTIONS: &[(&str, &str)] = &[
    (
        "SYSTEMD",
        "When LISTEN_PID is pr-helper's pid and LISTEN_FDS is 1, file descriptor 3 is used as the \
listening socket (it must be a listening Unix stream socket; a configured socket path is then \
an error, as is LISTEN_FDS greater than 1). With NOTIFY_SOCKET set, READY=1 is sent once \
serving and STOPPING=1 when shutting down. The packaged units are pr-helper.socket \
(ListenStream=/run/qemu-pr-helper.sock, SocketMode=0600) and pr-helper.service \
(Type=notify, a dynamic user with CAP_SYS_RAWIO only); they conflict with QEMU's \
qemu-pr-helper units, which use the same path. To let a group connect, add a drop-in such as:

  [Socket]
  SocketGroup=kvm
  SocketMode=0660

Do not set user or group in the configuration file under that unit: it grants no \
CAP_SETUID or CAP_SETGID.",
    ),
    (
        "LOGGING",
        "Verbosity 0 (-q) logs errors, 1 (default) warnings, 2 (-v) info, 3 (-vv) one record per \
request, 4 (-vvv) trace. With log_target auto, logs go to journald when stderr is connected to \
the journal or when daemonized with journald running, to stderr otherwise. In journald, fields \
carry a PRH_ prefix and SYSLOG_IDENTIFIER=pr-helper. Every PERSISTENT RESERVE OUT is logged as \
an audit record at info level unless audit is false or -q is given:

  journalctl SYSLOG_IDENTIFIER=pr-helper PRH_SERVICE_ACTION=PREEMPT

-T keeps qemu-pr-helper's syntax, [[enable=]PATTERN][,events=FILE][,file=FILE]; each PATTERN \
selects log targets (pr-helper -T help lists them) to log at trace level.",
    ),
    (
        "SIGNALS",
        "SIGTERM, SIGINT and SIGHUP stop accepting connections, remove the socket pr-helper \
created, close idle connections, finish every request already read and send its response, and \
exit 0. SIGHUP does not reload the configuration (as in qemu-pr-helper).",
    ),
    (
        "EXIT STATUS",
        "The helper exits 0 after --help, --version or a clean shutdown, and 1 after any start-up \
error, printed on standard error as \"pr-helper: MESSAGE\". With -d the starting process \
returns only once the socket and pidfile are ready. A system call outside the seccomp \
allow-list ends the process with status 159 (SIGSYS) after printing which one.

pr-helper ping exits 0 if a helper serves at the socket, 1 otherwise. pr-helper persist uses \
sg_persist's codes: 0 success, 24 reservation conflict, 5 illegal request, 6 unit attention, \
2 not ready, 11 aborted command, 15 other errors, 1 when there is no helper or the device \
cannot be opened. pr-helper probe exits 0 if the device supports persistent reservations.",
    ),
    (
        "FILES",
        "  /etc/pr-helper/config.toml
  /run/qemu-pr-helper.sock
  /run/qemu-pr-helper.pid
  /usr/lib/systemd/system/pr-helper.socket
  /usr/lib/systemd/system/pr-helper.service
  /usr/share/doc/pr-helper/config.toml.example
  /usr/share/doc/pr-helper/socket-group.conf.example",
    ),
    (
        "EXAMPLES",
        "Start a helper by hand, and check it from another shell:

  pr-helper -k /run/qemu-pr-helper.sock -v
  pr-helper ping -k /run/qemu-pr-helper.sock

Point QEMU at it:

  qemu-system-x86_64 ... \\
    -object pr-manager-helper,id=pr0,path=/run/qemu-pr-helper.sock \\
    -blockdev driver=host_device,node-name=disk0,filename=/dev/sdb,\\
  file.pr-manager=pr0 \\
    -device virtio-scsi-pci -device scsi-block,drive=disk0

Read the registered keys of a disk through the helper, as QEMU would send the command:

  pr-helper persist -k /run/qemu-pr-helper.sock -d /dev/sdb --read-keys",
    ),
    (
        "SEE ALSO",
        "qemu-pr-helper(8), qemu(1), sg_persist(8), mpathpersist(8), systemd.socket(5), \
systemd.exec(5)",
    ),
];

/// The default paths the library uses must be the ones FILES lists.
fn check_files_section() -> std::io::Result<()> {
    let files = SECTIONS
        .iter()
        .find(|(t, _)| *t == "FILES")
        .map(|(_, b)| *b)
        .unwrap_or_default();
    for path in [DEFAULT_SOCKET, DEFAULT_PIDFILE, DEFAULT_CONFIG_FILE] {
        if !files.lines().any(|l| l.trim() == path) {
            return Err(std::io::Error::other(format!(
                "FILES does not list the default path {path}"
            )));
        }
    }
    Ok(())
}
