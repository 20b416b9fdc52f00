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
//!
//! The rooms: `settings` defines the settings (and their value types);
//! `args` is the command line around them (clap, by hand where the
//! derive cannot say which options were given); `layers` loads and
//! checks the layers and renders `--print-config`; `docs` makes the
//! help texts and docs/config.toml.example from the definition.

mod args;
mod docs;
mod layers;
mod settings;

pub use args::ServerArgs;
pub use docs::{example_file, key_help};
pub use layers::{load, ConfigError, Loaded};
pub use settings::*;

#[cfg(test)]
// figment's Jail API returns its (large) error type from the closures.
#[allow(clippy::result_large_err)]
mod tests {
    use std::path::PathBuf;

    use clap::{Args, Command, FromArgMatches};
    use figment::value::Value;

    use super::layers::toml_value;
    use super::*;
    use crate::process::privileges::env_guard;
    use crate::process::sandbox::seccomp::Mode;

    fn args(argv: &[&str]) -> ServerArgs {
        let mut full = vec!["pr-helper"];
        full.extend_from_slice(argv);
        let matches = ServerArgs::augment_args(Command::new("pr-helper"))
            .try_get_matches_from(full)
            .expect("valid arguments");
        ServerArgs::from_arg_matches(&matches).expect("valid arguments")
    }

    fn load_env(argv: &[&str], env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        // The Jail isolates the process environment and cwd.
        env_guard::jail(|jail| {
            jail.clear_env();
            for (k, v) in env {
                jail.set_env(k, v);
            }
            Ok(load(&args(argv)))
        })
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
        env_guard::jail(|jail| {
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
        env_guard::jail(|jail| {
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
        env_guard::jail(|jail| {
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
        env_guard::jail(|jail| {
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
        env_guard::jail(|jail| {
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
        env_guard::jail(|jail| {
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
        env_guard::jail(|jail| {
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
