//! Configuration: the settings, their command-line options and figment layers.
//!
//! [`Config`] is the one definition of the settings. Each field is a key:
//! its name is the TOML key, the environment variable `PR_HELPER_<NAME>`
//! and (kebab-cased) the long option; its clap attributes give the option's
//! letter, its built-in default and its help text (the doc comment). From
//! that one struct follow the command-line options (`#[command(flatten)]` in
//! [`ServerArgs`]), the built-in defaults layer ([`Config::default`] parses
//! an empty command line), the command-line layer (the keys clap reports as
//! given), `--print-config` ([`Loaded::render`]), the list of keys
//! ([`keys`], read from the struct's serde definition) and the documentation
//! (pr-helper(8) and docs/config.toml.example, see [`example_file`]).
//!
//! Layers, lowest first: built-in defaults, the TOML file
//! (`/etc/pr-helper/config.toml` if present, or the one `--config` names,
//! which must exist), the environment, the command line. Unknown keys and bad
//! values are start-up errors that name the key, the value and the layer it
//! came from.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, Command, FromArgMatches};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::de::{Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use thiserror::Error;

use crate::process::logging::{LogTarget, TraceOptions};
use crate::process::sandbox::seccomp::Mode;
use crate::protocol::{DEFAULT_SOCKET, MAX_SOCKET_PATH};

/// Default pidfile path, used with `-d` when no `-f` is given.
pub const DEFAULT_PIDFILE: &str = "/run/qemu-pr-helper.pid";
/// The configuration file read when it exists and `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/pr-helper/config.toml";
/// Prefix of configuration environment variables.
pub const ENV_PREFIX: &str = "PR_HELPER_";

/// The settings: one field per configuration key, in `--print-config` and
/// documentation order. The doc comments are the help texts: the first
/// paragraph for `-h`, all of it for `--help`, the man page and
/// docs/config.toml.example. A key's built-in default is its clap default
/// (none: not set).
#[derive(Debug, Clone, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Socket path; must be absolute
    ///
    /// The socket to listen on. Ignored under systemd socket activation,
    /// where setting it is an error.
    #[arg(
        short = 'k',
        long,
        allow_hyphen_values = true,
        value_name = "PATH",
        default_value = DEFAULT_SOCKET
    )]
    pub socket: PathBuf,
    /// Pidfile path (writing a pidfile is enabled by -d or -f) [default with -d: /run/qemu-pr-helper.pid]
    ///
    /// A pidfile is written when this is set or when daemon is true. A
    /// relative path is taken from the directory pr-helper was started in.
    #[arg(short = 'f', long, allow_hyphen_values = true, value_name = "PATH")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pidfile: Option<PathBuf>,
    /// Daemonize: return once the socket and pidfile are ready (implies a pidfile)
    ///
    /// Runs in the background: the starting process exits 0 once the socket
    /// and pidfile are ready, 1 with the error otherwise.
    #[arg(short = 'd', long)]
    pub daemon: bool,
    /// User to run as (name or number)
    ///
    /// The identity to run as after start-up, by name or number. With a user
    /// name and no group, the user's primary group is used.
    #[arg(short = 'u', long, allow_hyphen_values = true, value_name = "USER")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Group to run as (name or number)
    #[arg(short = 'g', long, allow_hyphen_values = true, value_name = "GROUP")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Log level: 0 errors, 1 warnings, 2 info, 3 debug (one record per
    /// request), 4 trace. No option of its own: see [`VERBOSITY_HELP`].
    #[arg(skip = 1)]
    pub verbosity: u8,
    /// Where log messages go
    #[arg(long, value_name = "TARGET", default_value_t = LogTarget::Auto)]
    pub log_target: LogTarget,
    /// Trace options: [[enable=]PATTERN][,events=FILE][,file=FILE]; see pr-helper(8)
    ///
    /// qemu-pr-helper's -T: each PATTERN selects log targets (`pr-helper -T
    /// help` lists them) to log at trace level.
    #[arg(short = 'T', long, allow_hyphen_values = true, value_name = "OPTS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// SG_IO timeout in seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub sgio_timeout: u64,
    /// Seconds a started request may take to arrive completely
    ///
    /// Also the time a response may take to be written. Idle connections are
    /// never timed out.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub request_timeout: u64,
    /// Most simultaneous client connections
    ///
    /// One more is accepted and closed.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_connections: usize,
    /// Most simultaneous connections from one client process (by its pid); 0: no limit
    ///
    /// Counted by the peer's SO_PEERCRED pid, so that one client (one
    /// compromised guest's QEMU) cannot take every max_connections slot and
    /// lock every other VM on the host out; one more is accepted and closed,
    /// with a warning naming it. QEMU opens one per pr-manager-helper
    /// object, so 64 leaves ample room. Peers in a pid namespace the helper
    /// cannot see (pid 0) are not counted. 0 means no limit, as in
    /// qemu-pr-helper.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_connections_per_client: usize,
    /// Most SG_IO commands executing at once
    ///
    /// The threads of the SG_IO pool.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub sgio_threads: usize,
    /// Permissions of the created socket, in octal [default: from the umask]
    ///
    /// Applies to a socket pr-helper creates, not to an activated one. In the
    /// configuration file write the mode as a string ("0660") or as plain
    /// digits (660); TOML's 0o660 notation is not supported.
    #[arg(long, value_name = "MODE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_mode: Option<SocketMode>,
    /// Group owning the created socket (name or number)
    #[arg(long, value_name = "GROUP")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// Send PR commands on dm-multipath devices through libmpathpersist [default: on in builds with multipath support]
    #[arg(
        long,
        value_name = "BOOL",
        action = ArgAction::Set,
        default_value_t = cfg!(feature = "mpath"),
        hide_default_value = true
    )]
    pub multipath: bool,
    /// The seccomp system call allow-list: kill, log or none
    ///
    /// kill: a system call outside the allow-list ends the process (status
    /// 159) with a message naming it. log: the call runs and the kernel
    /// logs it (audit type 1326 in dmesg or the audit log), for finding
    /// what another libc or libmpathpersist needs; not a sandbox. none: no
    /// filter. true and false (the values before the modes) mean kill and
    /// none.
    #[arg(long, value_name = "MODE", default_value_t = Mode::Kill)]
    pub seccomp: Mode,
    /// Restrict filesystem access with Landlock where the kernel has it
    #[arg(long, value_name = "BOOL", action = ArgAction::Set, default_value_t = true)]
    pub landlock: bool,
    /// Refuse to start unless Landlock restricts filesystem access
    ///
    /// Without Landlock a helper running as uid 0 could, if taken over,
    /// open any block device and write it with SG_IO (CAP_SYS_RAWIO passes
    /// the kernel's command filter; seccomp sees no paths). By default it
    /// starts with a warning, as the reference runs without any sandbox;
    /// true makes a kernel without Landlock (or landlock = false) a start-up
    /// error.
    #[arg(long, value_name = "BOOL", action = ArgAction::Set, default_value_t = false)]
    pub require_landlock: bool,
    /// Only these peer uids may connect (comma-separated) [default: anyone the socket permissions let in]
    ///
    /// In the configuration file a list of numbers.
    #[arg(long, value_name = "UIDS", value_delimiter = ',')]
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "id_list"
    )]
    pub allowed_uids: Vec<u32>,
    /// Only peers with these primary gids may connect (comma-separated)
    #[arg(long, value_name = "GIDS", value_delimiter = ',')]
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "id_list"
    )]
    pub allowed_gids: Vec<u32>,
    /// Log every PR OUT as an audit record at info level
    #[arg(long, value_name = "BOOL", action = ArgAction::Set, default_value_t = true)]
    pub audit: bool,
}

/// What `verbosity` means; the one key without an option of its own (`-v`
/// adds one per use to the default 1, `-q` sets 0, see [`ServerArgs`]).
pub const VERBOSITY_HELP: &str = "Log level: 0 errors, 1 warnings, 2 info, 3 debug (one record \
     per request), 4 trace. On the command line each -v adds one to the default 1 and -q sets \
     0 (and wins over -v).";

impl Default for Config {
    /// The built-in defaults: the clap defaults, got by parsing an empty
    /// command line.
    fn default() -> Self {
        let matches =
            Config::augment_args(Command::new("pr-helper")).try_get_matches_from(["pr-helper"]);
        // Cannot fail: no setting is required; the `defaults` test parses it.
        match matches.and_then(|m| Config::from_arg_matches(&m)) {
            Ok(config) => config,
            Err(e) => unreachable!("the built-in defaults do not parse: {e}"),
        }
    }
}

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

    /// A value for every key, for docs/config.toml.example: the built-in
    /// defaults, and an example where there is none.
    pub fn example() -> Config {
        Config {
            pidfile: Some(DEFAULT_PIDFILE.into()),
            user: Some("nobody".into()),
            group: Some("nogroup".into()),
            trace: Some("connection".into()),
            socket_mode: Some(SocketMode(0o660)),
            socket_group: Some("kvm".into()),
            // The default depends on the build; the example shows "on".
            multipath: true,
            allowed_uids: vec![0, 107],
            allowed_gids: vec![107],
            ..Config::default()
        }
    }
}

impl From<&Config> for crate::process::logging::Settings {
    fn from(c: &Config) -> Self {
        crate::process::logging::Settings {
            verbosity: c.verbosity,
            log_target: c.log_target,
            trace: c.trace.clone(),
            audit: c.audit,
        }
    }
}

/// Every configuration key, in display order: the field names of
/// [`Config`], as its serde definition lists them.
pub fn keys() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    // Config's Deserialize asks for a struct and names its fields; the
    // answer is an error, which is expected.
    let _ = Config::deserialize(FieldNames(&mut fields));
    fields
}

/// A deserializer that only records the field names a struct asks for.
/// serde has no reflection; this is the usual way to read a struct's
/// field list from its derived `Deserialize` (the list serde itself uses
/// for `deny_unknown_fields`), so the keys are never written out by hand.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("only field names are read"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(serde::de::Error::custom("only field names are read"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// The helper's command line: an option for every setting of [`Config`]
/// (except `verbosity`, which `-v` and `-q` set), and the options that are
/// not settings.
#[derive(Debug, Clone)]
pub struct ServerArgs {
    /// The settings as parsed, built-in defaults where not given.
    pub settings: Config,
    /// The keys whose option was given on the command line.
    pub given: Vec<&'static str>,
    /// `-v` count.
    pub verbose: u8,
    /// `-q`.
    pub quiet: bool,
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--print-config`.
    pub print_config: bool,
}

/// The options of [`ServerArgs`] that are not settings.
#[derive(Debug, Args)]
struct NotSettings {
    /// Increase verbosity (repeatable)
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    verbose: u8,
    /// Only report errors (wins over -v)
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// Configuration file (must exist) [default: /etc/pr-helper/config.toml if present]
    #[arg(long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration, with where each value comes from, and exit
    #[arg(long = "print-config")]
    print_config: bool,
}

// By hand rather than derived: the derive cannot record which options were
// given (clap's `ValueSource`), and the command-line layer must hold only
// those, so that a default never hides the file or the environment.
impl Args for ServerArgs {
    fn augment_args(cmd: Command) -> Command {
        NotSettings::augment_args(Config::augment_args(cmd))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        NotSettings::augment_args_for_update(Config::augment_args_for_update(cmd))
    }
}

impl FromArgMatches for ServerArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let other = NotSettings::from_arg_matches(m)?;
        Ok(ServerArgs {
            settings: Config::from_arg_matches(m)?,
            // Arg ids are the field names, that is the keys.
            given: keys()
                .iter()
                .copied()
                .filter(|k| {
                    m.try_get_raw(k).is_ok() && m.value_source(k) == Some(ValueSource::CommandLine)
                })
                .collect(),
            verbose: other.verbose,
            quiet: other.quiet,
            config: other.config,
            print_config: other.print_config,
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = ServerArgs::from_arg_matches(m)?;
        Ok(())
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

/// The command-line layer: the keys whose options were given, and
/// `verbosity` when `-v` or `-q` was.
fn command_line_layer(args: &ServerArgs) -> Dict {
    let mut settings = args.settings.clone();
    settings.pidfile = settings.pidfile.as_deref().map(absolute);
    let mut layer = match Value::serialize(&settings) {
        Ok(Value::Dict(_, d)) => d,
        _ => Dict::new(),
    };
    layer.retain(|key, _| args.given.contains(&key.as_str()));
    // -q wins over -v whatever the order; each -v adds one to the default
    // level 1, as in qemu-pr-helper.
    let verbosity = if args.quiet {
        Some(0)
    } else if args.verbose > 0 {
        Some(1u8.saturating_add(args.verbose))
    } else {
        None
    };
    if let Some(v) = verbosity {
        layer.insert("verbosity".into(), Value::from(v));
    }
    layer
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

/// Builds the layered configuration for these command-line arguments and
/// the process environment.
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
        data: command_line_layer(args),
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
    let keys = keys();
    for (profile, dict) in &data {
        for key in dict.keys() {
            if !keys.contains(&key.as_str()) {
                return Err(ConfigError(format!(
                    "unknown setting `{key}` in {}; known settings: {}",
                    origin(&meta, profile, key),
                    keys.join(", ")
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
        .map(|v| format!(" ({})", toml_value(&v)))
        .unwrap_or_default()
}

/// A value as TOML writes it (the toml crate). TOML has no room for an
/// integer beyond 64-bit signed or for an empty value, which a bad
/// environment variable can hold: those are written as plain text.
fn toml_value(v: &Value) -> String {
    match toml::Value::try_from(v) {
        Ok(t) => t.to_string(),
        Err(_) => match v {
            Value::Num(_, n) => n
                .to_u128()
                .map(|u| u.to_string())
                .or_else(|| n.to_i128().map(|i| i.to_string()))
                .unwrap_or_default(),
            _ => "\"\"".to_string(),
        },
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
            crate::process::privileges::resolve_user(user).map_err(|e| self.invalid("user", e))?;
        }
        if let Some(group) = &c.group {
            crate::process::privileges::resolve_group(group)
                .map_err(|e| self.invalid("group", e))?;
        }
        if let Some(group) = &c.socket_group {
            crate::process::privileges::resolve_group(group)
                .map_err(|e| self.invalid("socket_group", e))?;
        }
        if c.multipath && !cfg!(feature = "mpath") {
            return Err(self.invalid(
                "multipath",
                "this pr-helper was built without multipath support",
            ));
        }
        if let Some(trace) = &c.trace {
            TraceOptions::parse(trace).map_err(|e| self.invalid("trace", e))?;
        }
        Ok(())
    }

    /// The effective configuration as TOML, each value with its origin.
    pub fn render(&self) -> String {
        let values = match Value::serialize(&self.config) {
            Ok(Value::Dict(_, d)) => d,
            _ => Dict::new(),
        };
        let mut out = String::from("# pr-helper effective configuration\n");
        for key in keys() {
            match values.get(*key) {
                Some(v) => out.push_str(&format!(
                    "{key} = {}  # {}\n",
                    toml_value(v),
                    self.origin_of(key)
                )),
                None => out.push_str(&format!("# {key} is not set\n")),
            }
        }
        out
    }
}

/// The help text of each key, from [`Config`]'s clap definition: `--help`'s
/// text (paragraphs separated by blank lines) with the values it may take
/// where they have their own help, and [`VERBOSITY_HELP`] for `verbosity`.
pub fn key_help(key: &str) -> String {
    let cmd = Config::augment_args(Command::new("pr-helper"));
    let Some(arg) = cmd.get_arguments().find(|a| a.get_id() == key) else {
        return VERBOSITY_HELP.to_string();
    };
    let mut help = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    let values: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter_map(|v| Some(format!("\"{}\": {}.", v.get_name(), v.get_help()?)))
        .collect();
    if !values.is_empty() {
        help.push_str("\n\n");
        help.push_str(&values.join(" "));
    }
    help
}

/// docs/config.toml.example: every key, commented out, with its help text
/// and its default or [`Config::example`]'s value.
pub fn example_file() -> String {
    let mut out = String::from(
        "# pr-helper configuration (/etc/pr-helper/config.toml).\n\
         #\n\
         # Every key can also be set in the environment as PR_HELPER_<KEY> (upper\n\
         # case) and on the command line as --<key> with '-' for '_' (verbosity: -v\n\
         # and -q). The command line wins over the environment, which wins over this\n\
         # file, which wins over the built-in defaults. `pr-helper --print-config`\n\
         # shows the effective values and where each comes from. Unknown keys are\n\
         # errors. Generated from pr-helper's definition of the settings\n\
         # (src/process/config.rs); pr-helper(8) has the same text.\n",
    );
    let values = match Value::serialize(Config::example()) {
        Ok(Value::Dict(_, d)) => d,
        _ => Dict::new(),
    };
    for key in keys() {
        out.push('\n');
        let help: Vec<String> = key_help(key)
            .split("\n\n")
            .map(|para| wrap(para, "# ", 78))
            .collect();
        out.push_str(&help.join("#\n"));
        let value = values.get(*key).map(toml_value).unwrap_or_default();
        out.push_str(&format!("#{key} = {value}\n"));
    }
    out
}

/// `text` as lines of at most `width` characters, each starting with
/// `prefix` (a word longer than a line gets a line of its own). Kept by
/// hand: a greedy wrap of plain ASCII prose for one generated file, where
/// the textwrap crate would be a new dependency of the binary.
fn wrap(text: &str, prefix: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::from(prefix);
    for word in text.split_whitespace() {
        if line.len() > prefix.len() && line.len() + 1 + word.len() > width {
            out.push_str(&line);
            out.push('\n');
            line = String::from(prefix);
        }
        if line.len() > prefix.len() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

#[cfg(test)]
// figment's Jail API returns its (large) error type from the closures.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> ServerArgs {
        let mut full = vec!["pr-helper"];
        full.extend_from_slice(argv);
        let matches = ServerArgs::augment_args(Command::new("pr-helper"))
            .try_get_matches_from(full)
            .expect("valid arguments");
        ServerArgs::from_arg_matches(&matches).expect("valid arguments")
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
        let mut keys: Vec<_> = keys().iter().map(|k| k.to_string()).collect();
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

    /// `seccomp`: the modes in every layer, and the booleans it took
    /// before them (true = kill, false = none).
    #[test]
    fn seccomp_modes_in_every_layer() {
        let cli = |v: &str| load_env(&["--seccomp", v], &[]).map(|l| l.config.seccomp);
        assert_eq!(load_env(&[], &[]).unwrap().config.seccomp, Mode::Kill);
        assert_eq!(cli("log").unwrap(), Mode::Log);
        assert_eq!(cli("none").unwrap(), Mode::None);
        assert_eq!(cli("false").unwrap(), Mode::None);
        assert_eq!(cli("true").unwrap(), Mode::Kill);
        let rejected = ServerArgs::augment_args(Command::new("pr-helper"))
            .try_get_matches_from(["pr-helper", "--seccomp", "trap"])
            .unwrap_err()
            .to_string();
        assert!(rejected.contains("kill, log, none"), "{rejected}");
        let env = |v: &str| load_env(&[], &[("PR_HELPER_SECCOMP", v)]).map(|l| l.config.seccomp);
        assert_eq!(env("log").unwrap(), Mode::Log);
        assert_eq!(env("false").unwrap(), Mode::None);
        assert_eq!(env("true").unwrap(), Mode::Kill);
        assert!(env("sometimes").is_err());
        figment::Jail::expect_with(|jail| {
            for (text, want) in [
                ("seccomp = false\n", Mode::None),
                ("seccomp = true\n", Mode::Kill),
                ("seccomp = \"log\"\n", Mode::Log),
                ("seccomp = \"none\"\n", Mode::None),
            ] {
                jail.create_file("s.toml", text)?;
                let l = load(&args(&["--config", "s.toml"])).unwrap();
                assert_eq!(l.config.seccomp, want, "{text}");
            }
            jail.create_file("t.toml", "seccomp = \"trap\"\n")?;
            assert!(load(&args(&["--config", "t.toml"])).is_err());
            Ok(())
        });
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
            64
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

    /// docs/config.toml.example is what [`example_file`] makes from the
    /// settings: every key, its help text, a value that loads.
    #[test]
    fn example_file_is_generated_from_the_settings() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.toml.example");
        let text = example_file();
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            text,
            "docs/config.toml.example is stale: cargo run --manifest-path \
             packaging/gen-docs/Cargo.toml -- packaging/generated docs/config.toml.example"
        );
        for key in keys() {
            assert!(text.contains(&format!("\n#{key} = ")), "{key} missing");
        }
        // Uncommented, the example is a valid configuration (but for the
        // names, which need not exist here) that sets every key.
        let uncommented: String = text
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| keys().iter().any(|k| l.starts_with(&format!("{k} = "))))
            .filter(|l| !l.starts_with("user ") && !l.starts_with("group "))
            .filter(|l| !l.starts_with("socket_group ") && !l.starts_with("multipath "))
            .map(|l| format!("{l}\n"))
            .collect();
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("example.toml", &uncommented)?;
            let l = load(&args(&["--config", "example.toml"])).unwrap();
            assert_eq!(l.config.socket_mode, Some(SocketMode(0o660)));
            assert_eq!(l.config.allowed_uids, vec![0, 107]);
            assert!(l.origin_of("trace").starts_with("file "));
            Ok(())
        });
    }

    /// README.md's table of settings is a copy for readers; it must list
    /// every key, in order, with its environment variable, its options and
    /// its built-in default as the definition has them.
    #[test]
    fn readme_table_agrees_with_the_settings() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let cmd = ServerArgs::augment_args(Command::new("pr-helper"));
        let rows: Vec<Vec<String>> = readme
            .lines()
            .filter(|l| l.starts_with("| `") && l.matches(" | ").count() == 3)
            .map(|l| {
                l.trim_matches('|')
                    .split(" | ")
                    .map(|c| c.trim().to_string())
                    .collect()
            })
            .collect();
        let listed: Vec<String> = rows.iter().map(|r| r[0].replace('`', "")).collect();
        assert_eq!(listed, keys(), "README.md's settings table");
        let defaults = Value::serialize(Config::default()).unwrap();
        for row in &rows {
            let key = row[0].replace('`', "");
            let env = format!("`{ENV_PREFIX}{}`", key.to_uppercase());
            assert!(row[1].starts_with(&env), "{key}: {}", row[1]);
            let Some(arg) = cmd.get_arguments().find(|a| a.get_id() == key.as_str()) else {
                assert_eq!(row[2], "`-v` (1 + count), `-q` (0)", "{key}");
                continue;
            };
            let mut options: Vec<String> = arg
                .get_short()
                .map(|c| format!("-{c}"))
                .into_iter()
                .collect();
            options.extend(arg.get_long().map(|l| format!("--{l}")));
            let names = options.join(", ");
            assert!(
                row[2].replace('`', "").starts_with(&names),
                "{key}: {} is not {names}",
                row[2]
            );
            match defaults.find_ref(&key) {
                Some(v) if !arg.is_hide_default_value_set() => {
                    let shown = format!("`{}`", toml_value(v).trim_matches('"'));
                    assert!(
                        row[3].starts_with(&shown),
                        "{key}: {} is not {shown}",
                        row[3]
                    );
                }
                _ => {}
            }
        }
        // Help texts that quote a default path quote the one in use.
        let help = |id: &str| {
            cmd.get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default()
        };
        assert!(help("pidfile").contains(DEFAULT_PIDFILE));
        assert!(help("config").contains(DEFAULT_CONFIG_FILE));
        // Every option of the helper is in README.md.
        for arg in cmd.get_arguments() {
            if let Some(long) = arg.get_long() {
                assert!(readme.contains(&format!("`--{long}")), "--{long} missing");
            }
        }
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
