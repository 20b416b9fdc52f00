//! Writes pr-helper(8) and the bash, zsh and fish completions, all generated
//! from pr-helper's clap definition (`pr_helper::process::cli::Cli`, whose helper
//! options are the settings of `pr_helper::process::config::Config`), into the
//! directory given as the first argument:
//!
//! ```text
//! pr-helper.8  pr-helper.bash  _pr-helper  pr-helper.fish
//! ```
//!
//! With a second argument, also writes the commented configuration example
//! (`pr_helper::process::config::example_file`) there:
//!
//! ```text
//! cargo run --manifest-path packaging/gen-docs/Cargo.toml -- packaging/generated docs/config.toml.example
//! ```
//!
//! The output depends only on the source (no dates, no paths), so the
//! committed copies in packaging/generated/ can be checked for staleness by
//! generating again and comparing (packaging/test.sh does; a unit test of
//! the main crate checks docs/config.toml.example).
// SPDX-License-Identifier: GPL-2.0-or-later

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Arg, CommandFactory};
use clap_complete::Shell;
use pr_helper::process::cli::Cli;
use pr_helper::process::config::{self, DEFAULT_CONFIG_FILE, DEFAULT_PIDFILE, ENV_PREFIX};
use pr_helper::protocol::DEFAULT_SOCKET;
use roff::{bold, roman, Roff};

const NAME: &str = "pr-helper";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, example) = match args.as_slice() {
        [dir] => (dir, None),
        [dir, example] => (dir, Some(example)),
        _ => {
            eprintln!("usage: pr-helper-gen-docs OUTPUT_DIR [CONFIG_EXAMPLE_FILE]");
            return ExitCode::FAILURE;
        }
    };
    let result = generate(Path::new(dir)).and_then(|mut files| {
        if let Some(path) = example {
            std::fs::write(path, config::example_file())?;
            files.push(PathBuf::from(path));
        }
        Ok(files)
    });
    match result {
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
    // The client commands as clap_mangen renders them, named "pr-helper X".
    let subs: Vec<clap_mangen::Man> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|sub| {
            let full = format!("{NAME} {}", sub.get_name());
            clap_mangen::Man::new(sub.clone().bin_name(full.clone()).display_name(full))
        })
        .collect();

    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    // The synopsis: the helper's, then each client command's, all
    // generated from the clap definition.
    man.render_synopsis_section(&mut out)?;
    let mut br = Roff::new();
    br.control("br", []);
    for sub in &subs {
        let mut synopsis = Vec::new();
        sub.render_synopsis_section(&mut synopsis)?;
        out.extend_from_slice(br.to_roff().as_bytes());
        out.extend_from_slice(strip_sh(&synopsis).as_bytes());
    }
    man.render_description_section(&mut out)?;
    paragraphs(DESCRIPTION).to_writer(&mut out)?;
    man.render_options_section(&mut out)?;

    let mut intro = Roff::new();
    intro.control("SH", ["CLIENT COMMANDS"]);
    paragraphs_into(
        &mut intro,
        "The same binary also talks to a running helper (or a device) as a client. \
         Each command takes the options below.",
    );
    intro.to_writer(&mut out)?;
    for (sub, clap_sub) in subs
        .iter()
        .zip(cmd.get_subcommands().filter(|s| !s.is_hide_set()))
    {
        let full = format!("{NAME} {}", clap_sub.get_name());
        let mut synopsis = Vec::new();
        sub.render_synopsis_section(&mut synopsis)?;
        let mut options = Vec::new();
        sub.render_options_section(&mut options)?;
        let mut title = Roff::new();
        title.control("SS", [full.as_str()]);
        title.to_writer(&mut out)?;
        // The synopsis without its .SH line, then the description, then the
        // options without their .SH line.
        out.extend_from_slice(strip_sh(&synopsis).as_bytes());
        let mut r = Roff::new();
        if let Some(about) = clap_sub.get_long_about().or(clap_sub.get_about()) {
            r.control("PP", []).text([roman(about.to_string())]);
        }
        r.control("PP", []);
        r.to_writer(&mut out)?;
        out.extend_from_slice(strip_sh(&options).as_bytes());
    }

    let mut rest = configuration_section();
    for (title, body) in SECTIONS {
        rest.control("SH", [*title]);
        paragraphs_into(&mut rest, body);
    }
    rest.to_writer(&mut out)?;
    man.render_version_section(&mut out)?;
    Ok(out)
}

fn strip_sh(roff: &[u8]) -> String {
    String::from_utf8_lossy(roff)
        .lines()
        .filter(|l| !l.starts_with(".SH "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Paragraphs separated by blank lines; lines starting with two spaces are
/// kept as a literal block. The roff crate escapes the text.
fn paragraphs_into(r: &mut Roff, text: &str) {
    for para in text.trim_matches('\n').split("\n\n") {
        if para.lines().all(|l| l.starts_with("  ")) {
            r.control("PP", []).control("nf", []).control("RS", ["4"]);
            for l in para.lines() {
                r.text([roman(&l[2..])]);
            }
            r.control("RE", []).control("fi", []);
        } else {
            r.control("PP", [])
                .text([roman(para.split('\n').collect::<Vec<_>>().join(" "))]);
        }
    }
}

fn paragraphs(text: &str) -> Roff {
    let mut r = Roff::new();
    paragraphs_into(&mut r, text);
    r
}

/// How a key is given on the command line: its option(s) in the clap
/// definition, or -v/-q for verbosity, the one key without an option.
fn option_of(key: &str, args: &[&Arg]) -> Vec<roff::Inline> {
    let Some(arg) = args.iter().find(|a| a.get_id() == key) else {
        return vec![
            bold("-v"),
            roman(" (1 + count), "),
            bold("-q"),
            roman(" (0)"),
        ];
    };
    let mut names = Vec::new();
    if let Some(short) = arg.get_short() {
        names.push(format!("-{short}"));
    }
    if let Some(long) = arg.get_long() {
        names.push(format!("--{long}"));
    }
    let mut inlines = Vec::new();
    for (i, n) in names.into_iter().enumerate() {
        if i > 0 {
            inlines.push(roman(", "));
        }
        inlines.push(bold(n));
    }
    inlines
}

/// CONFIGURATION: every key with its environment variable and option, all
/// from the library's definition of the settings, so a new key shows up here
/// without anyone editing this page.
fn configuration_section() -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["CONFIGURATION"]);
    paragraphs_into(
        &mut r,
        &format!(
            "Every setting has one name: a key in the TOML configuration file, the environment \
             variable {ENV_PREFIX}<KEY> (key in upper case) and the long option --<key> with \
             '-' for '_'. Layers, lowest first: built-in defaults, the file ({DEFAULT_CONFIG_FILE} \
             when it exists, or the one --config names, which must exist), the environment, the \
             command line. An unknown key or a bad value stops the start with a message naming the \
             key, the value and where it came from. --print-config shows the effective values and \
             their origins. The options above describe each setting.\n\n\
             Keys:"
        ),
    );
    let cmd = Cli::command();
    let args: Vec<&Arg> = cmd.get_arguments().collect();
    for key in config::keys() {
        let env = format!("{ENV_PREFIX}{}", key.to_uppercase());
        r.control("TP", []).text([bold(*key)]);
        let mut line = vec![roman("environment "), bold(env), roman(", option ")];
        line.extend(option_of(key, &args));
        r.text(line);
    }
    paragraphs_into(
        &mut r,
        &format!(
            "verbosity: {}\n\n\
             A commented example with every key is installed as \
             /usr/share/doc/pr-helper/config.toml.example.\n\n\
             Socket modes are octal: write \"0660\" as a string or 660 as a number; TOML's 0o660 \
             notation is not supported.",
            config::VERBOSITY_HELP
        ),
    );
    r
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
cannot be opened. pr-helper probe exits 0 if the device supports persistent reservations. \
pr-helper paths exits 0 when every running path of the map holds the same registration (or \
none does), 3 when the paths disagree, 4 when a running path could not be judged, and 1 on \
errors (not a multipath map, no path answered).",
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
