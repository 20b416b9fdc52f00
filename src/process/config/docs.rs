//! The help texts and docs/config.toml.example, made from [`Config`]'s
//! definition (pr-helper(8) uses the same texts).

use clap::{Args, Command};
use figment::value::{Dict, Value};

use super::layers::toml_value;
use super::settings::{keys, Config, VERBOSITY_HELP};

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
         # (src/process/config/settings.rs); pr-helper(8) has the same text.\n",
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
