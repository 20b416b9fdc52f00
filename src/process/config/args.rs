//! The helper's command line: the options of every setting of [`Config`],
//! plus `-v`, `-q`, `--config` and `--print-config`.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, Command, FromArgMatches};

use super::settings::{keys, Config};

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
