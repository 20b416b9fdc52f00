//! The layers (built-in defaults, file, environment, command line) merged
//! with figment, checked (unknown keys, bad values, with their origin), and
//! `--print-config`.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::Serialize;
use thiserror::Error;

use super::args::ServerArgs;
use super::settings::{keys, Config, DEFAULT_CONFIG_FILE, ENV_PREFIX};
use crate::process::logging::TraceOptions;
use crate::protocol::MAX_SOCKET_PATH;

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
pub(super) fn toml_value(v: &Value) -> String {
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
