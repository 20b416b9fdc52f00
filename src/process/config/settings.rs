//! The settings: [`Config`], one field per configuration key, its value
//! types and the list of keys (see the module above for what follows from
//! it).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Command, FromArgMatches};
use serde::de::{Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::process::logging::LogTarget;
use crate::process::sandbox::seccomp::Mode;
use crate::protocol::DEFAULT_SOCKET;

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
/// adds one per use to the default 1, `-q` sets 0, see [`super::ServerArgs`]).
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
