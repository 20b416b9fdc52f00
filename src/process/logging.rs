//! Logging with `tracing`: to journald or stderr, at the level `-v`/`-q`
//! select, with qemu-pr-helper's `-T` mapped onto per-module trace filters.
//!
//! Levels: verbosity 0 (`-q`) errors, 1 (default) warnings, 2 (`-v`) info,
//! 3 (`-vv`) debug, which includes one structured record per request, and
//! 4 (`-vvv`) trace.
//!
//! `-T` (QEMU trace options, `[[enable=]PATTERN][,events=FILE][,file=FILE]`):
//! QEMU's trace events do not exist here; instead each PATTERN (a glob,
//! `*` and `?`) selects pr-helper's log targets (modules, listed by `-T help`)
//! to log at trace level, `events=FILE` reads more patterns from FILE (one per
//! line, `#` comments), and `file=FILE` writes those trace records to FILE
//! instead of the normal log destination.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Where log messages go.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    /// journald when stderr is connected to the journal (or when daemonized
    /// and journald runs), stderr otherwise.
    #[default]
    Auto,
    /// Always stderr.
    Stderr,
    /// Always journald.
    Journald,
}

impl std::fmt::Display for LogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogTarget::Auto => "auto",
            LogTarget::Stderr => "stderr",
            LogTarget::Journald => "journald",
        })
    }
}

/// The settings logging needs (the configuration's `verbosity`,
/// `log_target`, `trace` and `audit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// 0 errors only, 1 warnings, 2 info, 3 debug, 4 trace.
    pub verbosity: u8,
    /// Where logs go.
    pub log_target: LogTarget,
    /// qemu-pr-helper's `-T` options.
    pub trace: Option<String>,
    /// Audit records for PR OUT at info level.
    pub audit: bool,
}

/// Log targets, as `-T` patterns match them and `-T help` lists them. Each
/// name stands for the modules in [`modules_of`].
pub const TARGETS: &[&str] = &[
    "activation",
    "audit",
    "command",
    "connection",
    "daemon",
    "listener",
    "mpath",
    "pool",
    "privileges",
    "sandbox",
    "server",
    "signals",
    "startup",
];

/// The `tracing` targets (below `pr_helper::`) a `-T` name selects: the
/// modules that log for it. The names are older than the layer folders and
/// stay as users know them; the audit record has its own fixed target
/// (`pr_helper::audit`, README "Audit"), whatever module writes it.
pub fn modules_of(name: &str) -> &'static [&'static str] {
    match name {
        "activation" => &["process::activation"],
        "audit" => &["audit"],
        "command" => &["server::command", "server::device", "server::isolation"],
        "connection" => &[
            "server::connection",
            "server::session",
            "server::reply",
            "server::end",
        ],
        "daemon" => &["process::daemon"],
        "listener" => &["server::listener"],
        "mpath" => &["mpath"],
        "pool" => &["server::pool"],
        "privileges" => &["process::privileges"],
        "sandbox" => &["process::sandbox"],
        "server" => &["server::accept"],
        "signals" => &["process::signals"],
        "startup" => &["process::startup", "process::config", "process::logging"],
        _ => &[],
    }
}

/// Filter directives for the selected `-T` names, at `level`.
fn directives(selected: &[&str], level: &str) -> Vec<tracing_subscriber::filter::Directive> {
    selected
        .iter()
        .flat_map(|name| modules_of(name))
        .filter_map(|m| format!("pr_helper::{m}={level}").parse().ok())
        .collect()
}

/// Why logging could not be set up (a start-up error).
#[derive(Debug, Error)]
pub enum LoggingError {
    /// A `-T` option other than enable, events, file.
    #[error("unknown trace option '{0}' (enable, events, file)")]
    UnknownTraceOption(String),
    /// `-T events=FILE` cannot be read.
    #[error("cannot read trace events file {}: {source}", .path.display())]
    EventsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `-T file=FILE` cannot be opened.
    #[error("cannot open trace file {}: {source}", .path.display())]
    TraceFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The journal's socket cannot be used.
    #[error("cannot log to journald: {0}")]
    Journald(std::io::Error),
    /// Another logger is already installed.
    #[error("cannot install the logger: {0}")]
    Install(tracing_subscriber::util::TryInitError),
}

/// Parsed `-T` options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceOptions {
    /// Glob patterns selecting targets.
    pub patterns: Vec<String>,
    /// `events=FILE`.
    pub events_file: Option<PathBuf>,
    /// `file=FILE`.
    pub file: Option<PathBuf>,
    /// `-T help`.
    pub help: bool,
}

impl TraceOptions {
    /// Parses `[[enable=]PATTERN][,events=FILE][,file=FILE]` (options may
    /// repeat and come in any order).
    pub fn parse(text: &str) -> Result<TraceOptions, LoggingError> {
        let mut t = TraceOptions::default();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some(("enable", p)) => t.patterns.push(p.to_string()),
                Some(("events", f)) => t.events_file = Some(PathBuf::from(f)),
                Some(("file", f)) => t.file = Some(PathBuf::from(f)),
                Some((k, _)) => return Err(LoggingError::UnknownTraceOption(k.to_string())),
                None if part == "help" => t.help = true,
                None => t.patterns.push(part.to_string()),
            }
        }
        Ok(t)
    }

    /// Every pattern: those given plus those in the events file.
    pub fn all_patterns(&self) -> Result<Vec<String>, LoggingError> {
        let mut patterns = self.patterns.clone();
        if let Some(file) = &self.events_file {
            let text =
                std::fs::read_to_string(file).map_err(|source| LoggingError::EventsFile {
                    path: file.clone(),
                    source,
                })?;
            patterns.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
        }
        Ok(patterns)
    }

    /// The targets the patterns select.
    pub fn selected(&self) -> Result<Vec<&'static str>, LoggingError> {
        let patterns = self.all_patterns()?;
        Ok(TARGETS
            .iter()
            .copied()
            .filter(|t| patterns.iter().any(|p| glob(p, t)))
            .collect())
    }
}

/// Shell-style matching of `*` and `?`.
pub fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// The level for a verbosity.
pub fn level(verbosity: u8) -> LevelFilter {
    match verbosity {
        0 => LevelFilter::ERROR,
        1 => LevelFilter::WARN,
        2 => LevelFilter::INFO,
        3 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// True when stderr is the journal (systemd sets JOURNAL_STREAM to the
/// device and inode of the stream it connected).
pub fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// Where logs actually go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// stderr, one line per record.
    Stderr,
    /// journald, with structured fields.
    Journald,
}

/// Installs the global subscriber. `daemonizing`: stderr is about to become
/// /dev/null, so `auto` prefers journald.
pub fn init(settings: impl Into<Settings>, daemonizing: bool) -> Result<Destination, LoggingError> {
    let config = &settings.into();
    let trace = match &config.trace {
        Some(t) => TraceOptions::parse(t)?,
        None => TraceOptions::default(),
    };
    let traced = trace.selected()?;
    let base = level(config.verbosity);
    // Audit records are info-level but on by default (verbosity 1 shows
    // warnings): they get their own directive unless -q or audit = false.
    let audit = config.audit && config.verbosity >= 1;
    let filter = |extra: bool| {
        let mut f = EnvFilter::default().add_directive(base.into());
        if audit && config.verbosity < 2 {
            if let Ok(d) = "pr_helper::audit=info".parse() {
                f = f.add_directive(d);
            }
        }
        if extra {
            for d in directives(&traced, "trace") {
                f = f.add_directive(d);
            }
        }
        f
    };
    let journald = match config.log_target {
        LogTarget::Stderr => None,
        LogTarget::Journald => Some(journald_layer().map_err(LoggingError::Journald)?),
        LogTarget::Auto if stderr_is_journal() || daemonizing => journald_layer().ok(),
        LogTarget::Auto => None,
    };
    let destination = if journald.is_some() {
        Destination::Journald
    } else {
        Destination::Stderr
    };
    // With file=FILE, trace records of the selected targets go to FILE and
    // the main destination keeps the base level.
    let trace_file = match &trace.file {
        Some(path) => Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| LoggingError::TraceFile {
                    path: path.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    type Boxed = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;
    let mut layers: Vec<Boxed> = Vec::new();
    let main_filter = filter(trace_file.is_none());
    layers.push(match journald {
        Some(j) => j.with_filter(main_filter).boxed(),
        None => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .event_format(LineFormat)
            .with_filter(main_filter)
            .boxed(),
    });
    if let Some(file) = trace_file {
        let mut f = EnvFilter::default().add_directive(LevelFilter::OFF.into());
        for d in directives(&traced, "trace") {
            f = f.add_directive(d);
        }
        layers.push(
            tracing_subscriber::fmt::layer()
                .with_writer(Arc::new(file))
                .with_ansi(false)
                .with_filter(f)
                .boxed(),
        );
    }
    let result = tracing_subscriber::registry().with(layers).try_init();
    result.map_err(LoggingError::Install)?;
    Ok(destination)
}

fn journald_layer() -> std::io::Result<tracing_journald::Layer> {
    Ok(tracing_journald::layer()?
        .with_field_prefix(Some("PRH".to_string()))
        .with_syslog_identifier("pr-helper".to_string()))
}

/// `pr-helper: warning: message key=value ...`, the shape of qemu-pr-helper's
/// `<program>: <message>` lines with the level added.
struct LineFormat;

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        write!(writer, "pr-helper: {level}: ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_option_syntax() {
        let t = TraceOptions::parse("conn*,events=/tmp/e,file=/tmp/f").unwrap();
        assert_eq!(t.patterns, vec!["conn*"]);
        assert_eq!(t.events_file, Some(PathBuf::from("/tmp/e")));
        assert_eq!(t.file, Some(PathBuf::from("/tmp/f")));
        let t = TraceOptions::parse("enable=pool,enable=server").unwrap();
        assert_eq!(t.patterns, vec!["pool", "server"]);
        assert!(TraceOptions::parse("help").unwrap().help);
        assert!(TraceOptions::parse("colour=red").is_err());
    }

    #[test]
    fn logging_errors_keep_their_messages() {
        let e = TraceOptions::parse("colour=red").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown trace option 'colour' (enable, events, file)"
        );
        let e = TraceOptions::parse("events=/nonexistent/events")
            .unwrap()
            .selected()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cannot read trace events file /nonexistent/events: {}",
                std::io::Error::from_raw_os_error(libc::ENOENT)
            )
        );
    }

    #[test]
    fn every_target_names_modules_of_the_crate() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for name in TARGETS {
            assert!(!modules_of(name).is_empty(), "-T {name} selects nothing");
            for m in modules_of(name).iter().filter(|m| **m != "audit") {
                let path = m.replace("::", "/");
                assert!(
                    src.join(format!("{path}.rs")).exists() || src.join(&path).is_dir(),
                    "-T {name}: no module {m}"
                );
            }
        }
    }

    #[test]
    fn patterns_select_targets() {
        let t = TraceOptions::parse("conn*,p?ol").unwrap();
        assert_eq!(t.selected().unwrap(), vec!["connection", "pool"]);
        assert_eq!(
            TraceOptions::parse("*").unwrap().selected().unwrap().len(),
            TARGETS.len()
        );
        assert!(TraceOptions::parse("nothing")
            .unwrap()
            .selected()
            .unwrap()
            .is_empty());
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events");
        std::fs::write(&events, "# comment\nserver\n\naudit\n").unwrap();
        let t = TraceOptions::parse(&format!("events={}", events.display())).unwrap();
        assert_eq!(t.selected().unwrap(), vec!["audit", "server"]);
        let t = TraceOptions::parse("events=/nonexistent/events").unwrap();
        assert!(t.selected().is_err());
    }

    #[test]
    fn glob_rules() {
        assert!(glob("*", ""));
        assert!(glob("c*n", "connection"));
        assert!(!glob("c*x", "connection"));
        assert!(glob("?ool", "pool"));
    }

    #[test]
    fn verbosity_levels() {
        assert_eq!(level(0), LevelFilter::ERROR);
        assert_eq!(level(1), LevelFilter::WARN);
        assert_eq!(level(3), LevelFilter::DEBUG);
        assert_eq!(level(9), LevelFilter::TRACE);
    }
}
