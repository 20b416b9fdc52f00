//! Configuration: qemu-pr-helper's command line (clap) and figment layers.
//!
//! Every setting has one name, used as the TOML key, as the environment
//! variable `PR_HELPER_<NAME>` and (kebab-cased) as the long option. Layers,
//! lowest first: built-in defaults, the TOML file (`/etc/pr-helper/config.toml`
//! if present, or the one `--config` names, which must exist), the
//! environment, the command line. Unknown keys and bad values are start-up
//! errors that name the key, the value and the layer it came from.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// Default socket path (the path systemd's qemu-pr-helper.socket uses).
pub const DEFAULT_SOCKET: &str = "/run/qemu-pr-helper.sock";
/// Default pidfile path, used with `-d` when no `-f` is given.
pub const DEFAULT_PIDFILE: &str = "/run/qemu-pr-helper.pid";
/// The configuration file read when it exists and `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/pr-helper/config.toml";
/// Prefix of configuration environment variables.
pub const ENV_PREFIX: &str = "PR_HELPER_";
/// `sizeof(sun_path)`.
pub const MAX_SOCKET_PATH: usize = 108;

/// The command line. Server options are qemu-pr-helper's (same letters, same
/// meaning), plus long options for every other setting.
#[derive(Debug, Parser)]
#[command(
    name = "pr-helper",
    version,
    about = "Persistent Reservation helper for QEMU (drop-in replacement for qemu-pr-helper)",
    long_about = "Runs SCSI PERSISTENT RESERVE IN/OUT commands for QEMU's pr-manager-helper \
                  object on the file descriptors QEMU passes over a Unix socket.",
    args_conflicts_with_subcommands = true,
    after_help = "Every option can also be set in the configuration file (key: the long option \
                  with '_' for '-') and in the environment (PR_HELPER_<KEY>). \
                  See pr-helper(8)."
)]
pub struct Cli {
    /// A client tool instead of the helper.
    #[command(subcommand)]
    pub command: Option<ClientCommand>,
    /// Helper options.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Client tools built into the same binary.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Connect to a running helper, do the handshake, report success (exit 0) or failure (exit 1).
    Ping(crate::tools::PingArgs),
    /// Send one PERSISTENT RESERVE IN/OUT through a running helper, as QEMU would, and decode the answer.
    Persist(Box<crate::tools::PersistArgs>),
    /// Ask a device directly (SG_IO) whether it supports persistent reservations.
    Probe(crate::tools::ProbeArgs),
}

/// The helper's options.
#[derive(Debug, Default, Args)]
pub struct ServerArgs {
    /// Daemonize: return once the socket and pidfile are ready (implies a pidfile).
    #[arg(short = 'd', long = "daemon")]
    pub daemon: bool,
    /// Pidfile path (writing a pidfile is enabled by -d or -f) [default with -d: /run/qemu-pr-helper.pid]
    #[arg(
        short = 'f',
        long = "pidfile",
        allow_hyphen_values = true,
        value_name = "PATH"
    )]
    pub pidfile: Option<PathBuf>,
    /// Socket path; must be absolute [default: /run/qemu-pr-helper.sock]
    #[arg(
        short = 'k',
        long = "socket",
        allow_hyphen_values = true,
        value_name = "PATH"
    )]
    pub socket: Option<PathBuf>,
    /// Trace options: [[enable=]PATTERN][,events=FILE][,file=FILE]; see pr-helper(8)
    #[arg(
        short = 'T',
        long = "trace",
        allow_hyphen_values = true,
        value_name = "OPTS"
    )]
    pub trace: Option<String>,
    /// User to run as (name or number)
    #[arg(
        short = 'u',
        long = "user",
        allow_hyphen_values = true,
        value_name = "USER"
    )]
    pub user: Option<String>,
    /// Group to run as (name or number)
    #[arg(
        short = 'g',
        long = "group",
        allow_hyphen_values = true,
        value_name = "GROUP"
    )]
    pub group: Option<String>,
    /// Increase verbosity (repeatable)
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,
    /// Only report errors (wins over -v)
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Configuration file (must exist) [default: /etc/pr-helper/config.toml if present]
    #[arg(long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration, with where each value comes from, and exit
    #[arg(long = "print-config")]
    pub print_config: bool,
    /// Where log messages go
    #[arg(long = "log-target", value_name = "TARGET")]
    pub log_target: Option<LogTarget>,
    /// SG_IO timeout in seconds [default: 30]
    #[arg(long = "sgio-timeout", value_name = "SECONDS")]
    pub sgio_timeout: Option<u64>,
    /// Seconds a started request may take to arrive completely [default: 30]
    #[arg(long = "request-timeout", value_name = "SECONDS")]
    pub request_timeout: Option<u64>,
    /// Most simultaneous client connections [default: 1024]
    #[arg(long = "max-connections", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most simultaneous connections from one client process (by its pid); 0: no limit [default: 0]
    #[arg(long = "max-connections-per-client", value_name = "N")]
    pub max_connections_per_client: Option<usize>,
    /// Most SG_IO commands executing at once [default: 64]
    #[arg(long = "sgio-threads", value_name = "N")]
    pub sgio_threads: Option<usize>,
    /// Permissions of the created socket, in octal [default: from the umask]
    #[arg(long = "socket-mode", value_name = "MODE")]
    pub socket_mode: Option<SocketMode>,
    /// Group owning the created socket (name or number)
    #[arg(long = "socket-group", value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Send PR commands on dm-multipath devices through libmpathpersist [default: on in builds with multipath support]
    #[arg(long = "multipath", value_name = "BOOL", action = ArgAction::Set)]
    pub multipath: Option<bool>,
    /// Install the seccomp system call allow-list [default: true]
    #[arg(long = "seccomp", value_name = "BOOL", action = ArgAction::Set)]
    pub seccomp: Option<bool>,
    /// Restrict filesystem access with Landlock where the kernel has it [default: true]
    #[arg(long = "landlock", value_name = "BOOL", action = ArgAction::Set)]
    pub landlock: Option<bool>,
    /// Only these peer uids may connect (comma-separated) [default: anyone the socket permissions let in]
    #[arg(long = "allowed-uids", value_name = "UIDS", value_delimiter = ',')]
    pub allowed_uids: Option<Vec<u32>>,
    /// Only peers with these primary gids may connect (comma-separated)
    #[arg(long = "allowed-gids", value_name = "GIDS", value_delimiter = ',')]
    pub allowed_gids: Option<Vec<u32>>,
    /// Log every PR OUT as an audit record at info level [default: true]
    #[arg(long = "audit", value_name = "BOOL", action = ArgAction::Set)]
    pub audit: Option<bool>,
}

/// Where log messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ValueEnum)]
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

impl fmt::Display for LogTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogTarget::Auto => "auto",
            LogTarget::Stderr => "stderr",
            LogTarget::Journald => "journald",
        })
    }
}

/// File permission bits for the socket, written in octal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketMode(pub u32);

impl std::str::FromStr for SocketMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        let mode = u32::from_str_radix(digits, 8)
            .map_err(|_| format!("'{s}' is not an octal mode such as 0660"))?;
        if mode > 0o7777 {
            return Err(format!("'{s}' is larger than 07777"));
        }
        Ok(SocketMode(mode))
    }
}

impl fmt::Display for SocketMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for SocketMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for SocketMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(u32),
        }
        // Modes are octal: "0660" as a string, or 660 as a number (an
        // environment value "0660" arrives as the number 660). A number's
        // decimal digits are read as octal, so TOML's 0o660 (= 432) must not
        // be used; the documentation says so.
        match Raw::deserialize(d)? {
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
            Raw::Number(n) => n.to_string().parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Socket path (`-k`).
    pub socket: PathBuf,
    /// Pidfile path (`-f`); a pidfile is written when this is set or `daemon` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pidfile: Option<PathBuf>,
    /// Run in the background (`-d`).
    pub daemon: bool,
    /// User to switch to (`-u`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Group to switch to (`-g`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// 0 errors only, 1 warnings (default), 2 info, 3 debug, 4 trace.
    pub verbosity: u8,
    /// Where logs go.
    pub log_target: LogTarget,
    /// qemu-pr-helper's `-T` options, mapped onto log filters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// SG_IO timeout, seconds.
    pub sgio_timeout: u64,
    /// Time a started request may take to arrive, seconds.
    pub request_timeout: u64,
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// Most simultaneous connections from one peer process (SO_PEERCRED
    /// pid); 0 = unlimited.
    pub max_connections_per_client: usize,
    /// Most SG_IO commands at once.
    pub sgio_threads: usize,
    /// Socket permissions (default: umask).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_mode: Option<SocketMode>,
    /// Socket group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// Multipath devices through libmpathpersist (builds with `mpath`).
    pub multipath: bool,
    /// Seccomp allow-list.
    pub seccomp: bool,
    /// Landlock filesystem restrictions.
    pub landlock: bool,
    /// Peer uids allowed to connect (empty: all).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "id_list"
    )]
    pub allowed_uids: Vec<u32>,
    /// Peer gids allowed to connect (empty: all).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "id_list"
    )]
    pub allowed_gids: Vec<u32>,
    /// Audit records for PR OUT.
    pub audit: bool,
}

/// A list of ids: a TOML array, or a comma-separated string (environment).
fn id_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<u32>),
        One(u32),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::List(v) => Ok(v),
        Raw::One(n) => Ok(vec![n]),
        Raw::Text(t) => t
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(|x| {
                x.parse::<u32>()
                    .map_err(|_| serde::de::Error::custom(format!("'{x}' is not a numeric id")))
            })
            .collect(),
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: PathBuf::from(DEFAULT_SOCKET),
            pidfile: None,
            daemon: false,
            user: None,
            group: None,
            verbosity: 1,
            log_target: LogTarget::Auto,
            trace: None,
            sgio_timeout: 30,
            request_timeout: 30,
            max_connections: 1024,
            max_connections_per_client: 0,
            sgio_threads: 64,
            socket_mode: None,
            socket_group: None,
            multipath: cfg!(feature = "mpath"),
            seccomp: true,
            landlock: true,
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
            audit: true,
        }
    }
}

/// Every configuration key, in display order.
pub const KEYS: &[&str] = &[
    "socket",
    "pidfile",
    "daemon",
    "user",
    "group",
    "verbosity",
    "log_target",
    "trace",
    "sgio_timeout",
    "request_timeout",
    "max_connections",
    "max_connections_per_client",
    "sgio_threads",
    "socket_mode",
    "socket_group",
    "multipath",
    "seccomp",
    "landlock",
    "allowed_uids",
    "allowed_gids",
    "audit",
];

impl Config {
    /// The pidfile to write, if any: `-f`, or the default with `-d`.
    pub fn effective_pidfile(&self) -> Option<PathBuf> {
        self.pidfile
            .clone()
            .or_else(|| self.daemon.then(|| PathBuf::from(DEFAULT_PIDFILE)))
    }

    /// SG_IO timeout.
    pub fn sgio_timeout(&self) -> Duration {
        Duration::from_secs(self.sgio_timeout)
    }

    /// Request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout)
    }
}

/// The command-line layer: only the options that were given.
#[derive(Debug, Default, Serialize)]
struct CommandLine {
    #[serde(skip_serializing_if = "Option::is_none")]
    socket: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pidfile: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    daemon: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verbosity: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_target: Option<LogTarget>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sgio_timeout: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_timeout: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections_per_client: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sgio_threads: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    socket_mode: Option<SocketMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    socket_group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    multipath: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seccomp: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    landlock: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_uids: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_gids: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audit: Option<bool>,
}

impl CommandLine {
    fn from_args(args: &ServerArgs) -> Self {
        // -q wins over -v whatever the order; each -v adds one to the
        // default level 1, as in qemu-pr-helper.
        let verbosity = if args.quiet {
            Some(0)
        } else if args.verbose > 0 {
            Some(1u8.saturating_add(args.verbose))
        } else {
            None
        };
        CommandLine {
            socket: args.socket.clone(),
            pidfile: args.pidfile.as_ref().map(|p| absolute(p)),
            daemon: args.daemon.then_some(true),
            user: args.user.clone(),
            group: args.group.clone(),
            verbosity,
            log_target: args.log_target,
            trace: args.trace.clone(),
            sgio_timeout: args.sgio_timeout,
            request_timeout: args.request_timeout,
            max_connections: args.max_connections,
            max_connections_per_client: args.max_connections_per_client,
            sgio_threads: args.sgio_threads,
            socket_mode: args.socket_mode,
            socket_group: args.socket_group.clone(),
            multipath: args.multipath,
            seccomp: args.seccomp,
            landlock: args.landlock,
            allowed_uids: args.allowed_uids.clone(),
            allowed_gids: args.allowed_gids.clone(),
            audit: args.audit,
        }
    }
}

/// A relative pidfile is taken from the directory pr-helper was started in
/// (the reference resolves it from `/` after daemonizing).
fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    std::env::current_dir()
        .map(|cwd| cwd.join(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// A figment provider with a name of our choosing.
struct Named<T> {
    name: &'static str,
    data: T,
}

impl<T: Serialize> Provider for Named<T> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::defaults(&self.data).data()
    }
}

const DEFAULTS_NAME: &str = "built-in default";
const COMMAND_LINE_NAME: &str = "command line";

/// A configuration error: what is wrong, with key, value and origin.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The loaded configuration and the layers it came from.
#[derive(Debug)]
pub struct Loaded {
    /// The effective configuration, validated.
    pub config: Config,
    figment: Figment,
}

/// Builds the layered configuration for these command-line arguments, with
/// `env` standing for the process environment.
pub fn load(args: &ServerArgs) -> Result<Loaded, ConfigError> {
    load_with_env(args, Env::prefixed(ENV_PREFIX))
}

fn load_with_env(args: &ServerArgs, env: Env) -> Result<Loaded, ConfigError> {
    let mut figment = Figment::new().merge(Named {
        name: DEFAULTS_NAME,
        data: Config::default(),
    });
    let file = match &args.config {
        Some(path) => {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "configuration file {}: {}",
                    path.display(),
                    std::fs::metadata(path)
                        .err()
                        .map_or("not a regular file".to_string(), |e| e.to_string())
                )));
            }
            Some(path.clone())
        }
        None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
    };
    if let Some(path) = &file {
        let toml = Toml::file_exact(path);
        check_keys(&toml)?;
        figment = figment.merge(toml);
    }
    check_keys(&env)?;
    figment = figment.merge(env);
    let cli = Named {
        name: COMMAND_LINE_NAME,
        data: CommandLine::from_args(args),
    };
    figment = figment.merge(cli);
    let config: Config = figment
        .extract()
        .map_err(|e| describe_figment_error(&figment, e))?;
    let loaded = Loaded { config, figment };
    loaded.validate()?;
    Ok(loaded)
}

/// Rejects keys that are not settings, naming where they came from.
fn check_keys(provider: &impl Provider) -> Result<(), ConfigError> {
    let meta = provider.metadata();
    let data = provider.data().map_err(|e| {
        let from = match &meta.source {
            Some(figment::Source::File(path)) => format!("file {}", path.display()),
            _ => meta.name.to_string(),
        };
        ConfigError(format!("cannot read configuration from {from}: {e}"))
    })?;
    for (profile, dict) in &data {
        for key in dict.keys() {
            if !KEYS.contains(&key.as_str()) {
                return Err(ConfigError(format!(
                    "unknown setting `{key}` in {}; known settings: {}",
                    origin(&meta, profile, key),
                    KEYS.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// "file /etc/x.toml", "environment variable PR_HELPER_X", "command line", ...
fn origin(meta: &Metadata, profile: &Profile, key: &str) -> String {
    if meta.name == DEFAULTS_NAME || meta.name == COMMAND_LINE_NAME {
        if meta.name == COMMAND_LINE_NAME {
            return format!("command line (--{})", key.replace('_', "-"));
        }
        return meta.name.to_string();
    }
    match &meta.source {
        Some(figment::Source::File(path)) => format!("file {}", path.display()),
        _ if meta.name.contains("environment") => {
            let _ = profile;
            format!("environment variable {ENV_PREFIX}{}", key.to_uppercase())
        }
        _ => meta.name.to_string(),
    }
}

fn describe_figment_error(figment: &Figment, e: figment::Error) -> ConfigError {
    let key = e.path.join(".");
    let profile = e.profile.clone().unwrap_or_default();
    let from = match &e.metadata {
        Some(meta) => origin(meta, &profile, &key),
        None => figment
            .find_metadata(&key)
            .map(|m| origin(m, &profile, &key))
            .unwrap_or_else(|| "configuration".to_string()),
    };
    let shown = show_value(figment, &key);
    ConfigError(format!(
        "invalid value for `{key}`{shown} in {from}: {}",
        e.kind
    ))
}

fn show_value(figment: &Figment, key: &str) -> String {
    figment
        .find_value(key)
        .map(|v| format!(" ({})", render(&v)))
        .unwrap_or_default()
}

/// A value as TOML would write it.
fn render(v: &Value) -> String {
    match v {
        Value::String(_, s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
        Value::Char(_, c) => format!("\"{c}\""),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => n
            .to_u128()
            .map(|u| u.to_string())
            .or_else(|| n.to_i128().map(|i| i.to_string()))
            .or_else(|| n.to_f64().map(|f| f.to_string()))
            .unwrap_or_default(),
        Value::Empty(..) => "\"\"".to_string(),
        Value::Dict(_, d) => format!(
            "{{ {} }}",
            d.iter()
                .map(|(k, v)| format!("{k} = {}", render(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Array(_, a) => format!("[{}]", a.iter().map(render).collect::<Vec<_>>().join(", ")),
    }
}

impl Loaded {
    /// Where the effective value of `key` comes from.
    pub fn origin_of(&self, key: &str) -> String {
        self.figment
            .find_metadata(key)
            .map(|m| origin(m, &Profile::Default, key))
            .unwrap_or_else(|| "not set".to_string())
    }

    fn invalid(&self, key: &str, why: impl fmt::Display) -> ConfigError {
        ConfigError(format!(
            "invalid value for `{key}`{} in {}: {why}",
            show_value(&self.figment, key),
            self.origin_of(key)
        ))
    }

    /// Checks values serde cannot: ranges, paths, names.
    fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        if !c.socket.is_absolute() {
            return Err(self.invalid("socket", "socket path must be absolute"));
        }
        if c.socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(self.invalid(
                "socket",
                format!(
                    "UNIX socket path '{}' is too long (Path must be less than {MAX_SOCKET_PATH} bytes)",
                    c.socket.display()
                ),
            ));
        }
        if c.verbosity > 4 {
            return Err(self.invalid("verbosity", "must be 0 (errors) to 4 (trace)"));
        }
        for (key, value, min, max) in [
            ("sgio_timeout", c.sgio_timeout, 1, 86_400),
            ("request_timeout", c.request_timeout, 1, 86_400),
            ("max_connections", c.max_connections as u64, 1, 1_000_000),
            (
                "max_connections_per_client",
                c.max_connections_per_client as u64,
                0,
                1_000_000,
            ),
            ("sgio_threads", c.sgio_threads as u64, 1, 4096),
        ] {
            if !(min..=max).contains(&value) {
                return Err(self.invalid(key, format!("must be between {min} and {max}")));
            }
        }
        if let Some(user) = &c.user {
            crate::privileges::resolve_user(user).map_err(|e| self.invalid("user", e))?;
        }
        if let Some(group) = &c.group {
            crate::privileges::resolve_group(group).map_err(|e| self.invalid("group", e))?;
        }
        if let Some(group) = &c.socket_group {
            crate::privileges::resolve_group(group).map_err(|e| self.invalid("socket_group", e))?;
        }
        if c.multipath && !cfg!(feature = "mpath") {
            return Err(self.invalid(
                "multipath",
                "this pr-helper was built without multipath support",
            ));
        }
        if let Some(trace) = &c.trace {
            crate::logging::TraceOptions::parse(trace).map_err(|e| self.invalid("trace", e))?;
        }
        Ok(())
    }

    /// The effective configuration as TOML, each value with its origin.
    pub fn render(&self) -> String {
        let values: BTreeMap<String, Value> = match Value::serialize(&self.config) {
            Ok(Value::Dict(_, d)) => d.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        let mut out = String::from("# pr-helper effective configuration\n");
        for key in KEYS {
            match values.get(*key) {
                Some(v) => out.push_str(&format!(
                    "{key} = {}  # {}\n",
                    render(v),
                    self.origin_of(key)
                )),
                None => out.push_str(&format!("# {key} is not set\n")),
            }
        }
        out
    }
}

#[cfg(test)]
// figment's Jail API returns its (large) error type from the closures.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> ServerArgs {
        let mut full = vec!["pr-helper"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).expect("valid arguments").server
    }

    fn load_env(argv: &[&str], env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        // figment::Jail isolates the process environment and cwd.
        let mut result = None;
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            for (k, v) in env {
                jail.set_env(k, v);
            }
            result = Some(load(&args(argv)));
            Ok(())
        });
        result.unwrap()
    }

    #[test]
    fn keys_list_matches_the_struct() {
        let full = Config {
            pidfile: Some("/p".into()),
            user: Some("u".into()),
            group: Some("g".into()),
            trace: Some("t".into()),
            socket_mode: Some(SocketMode(0o600)),
            socket_group: Some("g".into()),
            allowed_uids: vec![1],
            allowed_gids: vec![2],
            ..Config::default()
        };
        let Value::Dict(_, d) = Value::serialize(&full).unwrap() else {
            panic!()
        };
        let mut fields: Vec<_> = d.keys().cloned().collect();
        fields.sort();
        let mut keys: Vec<_> = KEYS.iter().map(|k| k.to_string()).collect();
        keys.sort();
        assert_eq!(fields, keys);
    }

    #[test]
    fn defaults() {
        let l = load_env(&[], &[]).unwrap();
        assert_eq!(l.config, Config::default());
        assert_eq!(l.origin_of("socket"), "built-in default");
        assert_eq!(l.config.effective_pidfile(), None);
    }

    #[test]
    fn each_layer_wins_over_the_one_below() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "c.toml",
                "sgio_timeout = 11\nrequest_timeout = 12\nmax_connections = 13\n",
            )?;
            jail.set_env("PR_HELPER_REQUEST_TIMEOUT", "22");
            jail.set_env("PR_HELPER_MAX_CONNECTIONS", "23");
            let l = load(&args(&["--config", "c.toml", "--max-connections", "33"])).unwrap();
            assert_eq!(l.config.sgio_timeout, 11);
            assert_eq!(l.config.request_timeout, 22);
            assert_eq!(l.config.max_connections, 33);
            assert_eq!(l.config.sgio_threads, 64);
            assert!(l.origin_of("sgio_timeout").starts_with("file "));
            assert_eq!(
                l.origin_of("request_timeout"),
                "environment variable PR_HELPER_REQUEST_TIMEOUT"
            );
            assert_eq!(
                l.origin_of("max_connections"),
                "command line (--max-connections)"
            );
            assert_eq!(l.origin_of("sgio_threads"), "built-in default");
            Ok(())
        });
    }

    #[test]
    fn verbosity_quiet_wins() {
        assert_eq!(load_env(&["-v", "-v"], &[]).unwrap().config.verbosity, 3);
        assert_eq!(
            load_env(&["-v", "-q", "-v"], &[]).unwrap().config.verbosity,
            0
        );
        assert_eq!(
            load_env(&[], &[("PR_HELPER_VERBOSITY", "2")])
                .unwrap()
                .config
                .verbosity,
            2
        );
    }

    #[test]
    fn pidfile_rules() {
        let l = load_env(&["-d"], &[]).unwrap();
        assert_eq!(
            l.config.effective_pidfile(),
            Some(PathBuf::from(DEFAULT_PIDFILE))
        );
        let l = load_env(&["-f", "/tmp/x.pid"], &[]).unwrap();
        assert_eq!(
            l.config.effective_pidfile(),
            Some(PathBuf::from("/tmp/x.pid"))
        );
    }

    #[test]
    fn errors_name_key_value_and_origin() {
        let e = load_env(&[], &[("PR_HELPER_SGIO_TIMEOUT", "soon")])
            .unwrap_err()
            .0;
        assert!(
            e.contains("sgio_timeout")
                && e.contains("soon")
                && e.contains("PR_HELPER_SGIO_TIMEOUT"),
            "{e}"
        );
        let e = load_env(&[], &[("PR_HELPER_COLOUR", "blue")])
            .unwrap_err()
            .0;
        assert!(
            e.contains("unknown setting `colour`") && e.contains("PR_HELPER_COLOUR"),
            "{e}"
        );
        let e = load_env(&["-k", "relative.sock"], &[]).unwrap_err().0;
        assert!(
            e.contains("socket path must be absolute") && e.contains("command line (--socket)"),
            "{e}"
        );
        let e = load_env(&[], &[("PR_HELPER_SGIO_TIMEOUT", "0")])
            .unwrap_err()
            .0;
        assert!(e.contains("between 1 and"), "{e}");
        let e = load_env(&["--config", "/nonexistent/pr-helper.toml"], &[])
            .unwrap_err()
            .0;
        assert!(e.contains("/nonexistent/pr-helper.toml"), "{e}");
        let long = format!("/{}", "s".repeat(108));
        let e = load_env(&["-k", &long], &[]).unwrap_err().0;
        assert!(e.contains("too long"), "{e}");
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "socket = [\n")?;
            let e = load(&args(&["--config", "bad.toml"])).unwrap_err().0;
            assert!(e.contains("bad.toml"), "{e}");
            jail.create_file("wrong.toml", "daemon = \"yes please\"\n")?;
            let e = load(&args(&["--config", "wrong.toml"])).unwrap_err().0;
            assert!(
                e.contains("daemon") && e.contains("yes please") && e.contains("wrong.toml"),
                "{e}"
            );
            jail.create_file("unknown.toml", "sockett = \"/x\"\n")?;
            let e = load(&args(&["--config", "unknown.toml"])).unwrap_err().0;
            assert!(
                e.contains("unknown setting `sockett`") && e.contains("unknown.toml"),
                "{e}"
            );
            Ok(())
        });
    }

    #[test]
    fn socket_mode_forms() {
        assert_eq!("0660".parse::<SocketMode>().unwrap(), SocketMode(0o660));
        assert_eq!("0o600".parse::<SocketMode>().unwrap(), SocketMode(0o600));
        assert!("999".parse::<SocketMode>().is_err());
        assert!("17777".parse::<SocketMode>().is_err());
        figment::Jail::expect_with(|jail| {
            jail.create_file("m.toml", "socket_mode = \"0640\"\n")?;
            let l = load(&args(&["--config", "m.toml"])).unwrap();
            assert_eq!(l.config.socket_mode, Some(SocketMode(0o640)));
            jail.create_file("n.toml", "socket_mode = 660\n")?;
            let l = load(&args(&["--config", "n.toml"])).unwrap();
            assert_eq!(l.config.socket_mode, Some(SocketMode(0o660)));
            jail.create_file("o.toml", "socket_mode = 680\n")?;
            assert!(load(&args(&["--config", "o.toml"])).is_err());
            Ok(())
        });
        let l = load_env(&[], &[("PR_HELPER_SOCKET_MODE", "0660")]).unwrap();
        assert_eq!(l.config.socket_mode, Some(SocketMode(0o660)));
    }

    #[test]
    fn id_lists_in_every_layer() {
        assert_eq!(
            load_env(&["--allowed-uids", "0,107"], &[])
                .unwrap()
                .config
                .allowed_uids,
            vec![0, 107]
        );
        assert_eq!(
            load_env(&[], &[("PR_HELPER_ALLOWED_UIDS", "0,107")])
                .unwrap()
                .config
                .allowed_uids,
            vec![0, 107]
        );
        assert_eq!(
            load_env(&[], &[("PR_HELPER_ALLOWED_GIDS", "[5, 6]")])
                .unwrap()
                .config
                .allowed_gids,
            vec![5, 6]
        );
        assert_eq!(
            load_env(&[], &[("PR_HELPER_ALLOWED_UIDS", "107")])
                .unwrap()
                .config
                .allowed_uids,
            vec![107]
        );
        figment::Jail::expect_with(|jail| {
            jail.create_file("u.toml", "allowed_uids = [0, 65534]\n")?;
            assert_eq!(
                load(&args(&["--config", "u.toml"]))
                    .unwrap()
                    .config
                    .allowed_uids,
                vec![0, 65534]
            );
            Ok(())
        });
        let e = load_env(&[], &[("PR_HELPER_ALLOWED_UIDS", "root")])
            .unwrap_err()
            .0;
        assert!(
            e.contains("allowed_uids") && e.contains("PR_HELPER_ALLOWED_UIDS"),
            "{e}"
        );
    }

    #[test]
    fn max_connections_per_client_in_every_layer() {
        assert_eq!(
            load_env(&[], &[])
                .unwrap()
                .config
                .max_connections_per_client,
            0
        );
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("p.toml", "max_connections_per_client = 4\n")?;
            let l = load(&args(&["--config", "p.toml"])).unwrap();
            assert_eq!(l.config.max_connections_per_client, 4);
            jail.set_env("PR_HELPER_MAX_CONNECTIONS_PER_CLIENT", "5");
            let l = load(&args(&["--config", "p.toml"])).unwrap();
            assert_eq!(l.config.max_connections_per_client, 5);
            let l = load(&args(&[
                "--config",
                "p.toml",
                "--max-connections-per-client",
                "6",
            ]))
            .unwrap();
            assert_eq!(l.config.max_connections_per_client, 6);
            assert_eq!(
                l.origin_of("max_connections_per_client"),
                "command line (--max-connections-per-client)"
            );
            assert!(l
                .render()
                .contains("max_connections_per_client = 6  # command line"));
            Ok(())
        });
        let e = load_env(&[], &[("PR_HELPER_MAX_CONNECTIONS_PER_CLIENT", "-1")])
            .unwrap_err()
            .0;
        assert!(e.contains("max_connections_per_client"), "{e}");
        let e = load_env(&["--max-connections-per-client", "1000001"], &[])
            .unwrap_err()
            .0;
        assert!(e.contains("between 0 and 1000000"), "{e}");
    }

    #[test]
    fn rendered_config_is_toml_with_origins() {
        let l = load_env(&["--sgio-threads", "8"], &[]).unwrap();
        let text = l.render();
        assert!(
            text.contains("socket = \"/run/qemu-pr-helper.sock\"  # built-in default"),
            "{text}"
        );
        assert!(
            text.contains("sgio_threads = 8  # command line (--sgio-threads)"),
            "{text}"
        );
        assert!(text.contains("# pidfile is not set"), "{text}");
    }
}
