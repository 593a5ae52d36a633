//! `--config FILE`: flag values from a YAML or TOML file.
//!
//! The file's keys are the long flag names (`cache-size`, or `cache_size`); a repeatable flag
//! takes a list (or one value), a switch `true` or `false`. The file is turned into command-line
//! arguments placed before the real ones, so clap parses and checks every value the same way
//! wherever it comes from. Precedence: command line, then environment variables, then the file,
//! then the defaults. A flag given on the command line (or through its env var) replaces the
//! file's value entirely, lists included: `--upstream X` with `upstream: [A, B]` in the file
//! means just X.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, CommandFactory, FromArgMatches};
use serde_json::Value;

use super::ServerArgs;

/// A flags file is a few kilobytes; this refuses a wrong path (a log, a device) at once.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Keys a config file may not set.
const NOT_IN_FILE: [&str; 3] = ["config", "help", "version"];

impl ServerArgs {
    /// Parses the process's command line, merged with the file of `--config` if given. Errors
    /// (in the flags or in the file) are printed and end the process with status 2, as clap does.
    pub fn parse_with_config_file() -> ServerArgs {
        let args = ServerArgs::try_parse_with_config_file(std::env::args_os())
            .unwrap_or_else(|e| e.exit());
        // Pools that cannot be used at all are an error in the arguments, not at run time.
        if let Err(error) = args.alloc.policy() {
            ServerArgs::command()
                .error(clap::error::ErrorKind::ValueValidation, error)
                .exit();
        }
        args
    }

    /// [`ServerArgs::parse_with_config_file`] for a given command line (program name first).
    pub fn try_parse_with_config_file<I, T>(argv: I) -> Result<ServerArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
        let matches = ServerArgs::command().try_get_matches_from(&argv)?;
        let args = ServerArgs::from_arg_matches(&matches)?;
        let Some(path) = &args.config else {
            return Ok(args);
        };
        let from_file = file_arguments(path, &matches)?;
        if from_file.is_empty() {
            return Ok(args);
        }
        let mut merged = Vec::with_capacity(argv.len() + from_file.len());
        merged.push(argv.first().cloned().unwrap_or_else(|| "globaldns".into()));
        merged.extend(from_file.into_iter().map(OsString::from));
        merged.extend(argv.into_iter().skip(1));
        let matches = ServerArgs::command().try_get_matches_from(merged)?;
        ServerArgs::from_arg_matches(&matches)
    }
}

/// The arguments the file at `path` stands for, minus the flags that `matches` (the command
/// line) sets itself or through an env var.
fn file_arguments(path: &Path, matches: &ArgMatches) -> Result<Vec<String>, clap::Error> {
    let fail = |message: String| {
        clap::Error::raw(
            ErrorKind::InvalidValue,
            format!("config file {}: {}\n", path.display(), message.trim_end()),
        )
    };
    let text = crate::bounded::read_text(path, MAX_CONFIG_BYTES).map_err(|e| {
        clap::Error::raw(
            ErrorKind::Io,
            format!("cannot read config file {}: {e}\n", path.display()),
        )
    })?;
    let format = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let entries = read_entries(&text, format).map_err(fail)?;
    let command = ServerArgs::command();
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let mut out = Vec::new();
    for (key, value) in &entries {
        let long = key.replace('_', "-");
        if let Some(other) = seen.insert(long.clone(), key) {
            return Err(fail(format!("`{other}` and `{key}` are the same key")));
        }
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            .filter(|_| !NOT_IN_FILE.contains(&long.as_str()));
        let Some(arg) = arg else {
            return Err(fail(unknown_key(key, &command)));
        };
        let arguments = arguments(&long, arg, value).map_err(|e| fail(format!("`{key}`: {e}")))?;
        // Checked alone, so that a bad value is reported with its key and the file.
        let alone = std::iter::once("globaldns".to_string()).chain(arguments.iter().cloned());
        if let Err(e) = ServerArgs::command().try_get_matches_from(alone) {
            return Err(fail(format!("`{key}`: {}", first_line(&e))));
        }
        let set_outside = matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !set_outside {
            out.extend(arguments);
        }
    }
    Ok(out)
}

const EXPECTED: &str = "expected flag names and their values in";

/// The file's top-level table. An empty file (or one of only comments) sets nothing.
fn read_entries(text: &str, format: &str) -> Result<BTreeMap<String, Value>, String> {
    match format {
        "yaml" | "yml" => {
            let entries: Option<BTreeMap<String, Value>> =
                serde_saphyr::from_str(text).map_err(|e| format!("{EXPECTED} YAML: {e}"))?;
            Ok(entries.unwrap_or_default())
        }
        "toml" => toml::from_str(text).map_err(|e| format!("{EXPECTED} TOML: {e}")),
        _ => Err("the name must end in .yaml, .yml or .toml (its format)".into()),
    }
}

/// `--long=value` arguments for one entry of the file.
fn arguments(long: &str, arg: &Arg, value: &Value) -> Result<Vec<String>, String> {
    let flag = |v: &Value| match v {
        Value::String(s) => Ok(format!("--{long}={s}")),
        Value::Number(n) => Ok(format!("--{long}={n}")),
        Value::Bool(b) => Ok(format!("--{long}={b}")),
        Value::Null => Err("a list may not hold an empty value".to_string()),
        Value::Array(_) | Value::Object(_) => Err("expected a single value here".to_string()),
    };
    match (arg.get_action(), value) {
        // `key:` with nothing after it (YAML null) leaves the default.
        (_, Value::Null) => Ok(Vec::new()),
        (ArgAction::SetTrue, Value::Bool(true)) => Ok(vec![format!("--{long}")]),
        (ArgAction::SetTrue, Value::Bool(false)) => Ok(Vec::new()),
        (ArgAction::SetTrue, _) => Err("expected true or false".into()),
        (ArgAction::Append, Value::Array(items)) if items.is_empty() => {
            Err("empty list (leave the key out for the default)".into())
        }
        (ArgAction::Append, Value::Array(items)) => items.iter().map(flag).collect(),
        (ArgAction::Set | ArgAction::Append, Value::Object(_)) => {
            Err("expected a value, not a mapping".into())
        }
        (ArgAction::Set, Value::Array(_)) => Err("takes one value, not a list".into()),
        (ArgAction::Set | ArgAction::Append, v) => Ok(vec![flag(v)?]),
        _ => Err("cannot be set in a config file".into()),
    }
}

fn unknown_key(key: &str, command: &clap::Command) -> String {
    let keys: Vec<&str> = command
        .get_arguments()
        .filter_map(Arg::get_long)
        .filter(|long| !NOT_IN_FILE.contains(long))
        .collect();
    format!(
        "unknown key `{key}`; the keys are the long flag names: {}",
        keys.join(", ")
    )
}

/// clap's message without its `error: ` prefix and usage hints.
fn first_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn config(name: &str, text: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut file = std::fs::File::create(dir.path().join(name)).unwrap();
        file.write_all(text.as_bytes()).unwrap();
        dir
    }

    fn parse(dir: &tempfile::TempDir, name: &str, flags: &[&str]) -> Result<ServerArgs, String> {
        let path = dir.path().join(name);
        let mut argv: Vec<OsString> = vec!["globaldns".into(), "--config".into(), path.into()];
        argv.extend(flags.iter().map(OsString::from));
        ServerArgs::try_parse_with_config_file(argv).map_err(|e| e.to_string())
    }

    const YAML: &str = "\
# every kind of value
listen: 0.0.0.0:5300
upstream: [10.96.0.10, '[::1]:5300']
zone: mesh.example
query-log: true
cache_size: 1000
soa-mname:
pool:
  - 127.255.0.0/16
";

    #[test]
    fn yaml_sets_flags() {
        let dir = config("globaldns.yaml", YAML);
        let args = parse(&dir, "globaldns.yaml", &[]).unwrap();
        assert_eq!(args.listen, ["0.0.0.0:5300".parse().unwrap()]);
        assert_eq!(
            args.upstreams,
            vec![
                "10.96.0.10:53".parse().unwrap(),
                "[::1]:5300".parse().unwrap()
            ]
        );
        assert_eq!(args.zones_served[0].to_ascii(), "mesh.example.");
        assert!(args.query_log);
        assert_eq!(args.cache_size, 1000);
        assert_eq!(args.soa_mname, None);
        assert_eq!(args.alloc.pools, vec!["127.255.0.0/16".parse().unwrap()]);
        // Untouched flags keep their defaults.
        assert_eq!(args.ttl, 30);
    }

    #[test]
    fn command_line_wins_and_replaces_lists() {
        let dir = config("globaldns.yml", YAML);
        let args = parse(
            &dir,
            "globaldns.yml",
            &[
                "--upstream=192.0.2.1",
                "--cache-size",
                "5",
                "--query-log=false",
            ],
        )
        .unwrap();
        assert_eq!(args.upstreams, vec!["192.0.2.1:53".parse().unwrap()]);
        assert_eq!(args.cache_size, 5);
        assert!(!args.query_log);
        // What the command line does not name still comes from the file.
        assert_eq!(args.listen, ["0.0.0.0:5300".parse().unwrap()]);
        assert_eq!(args.alloc.pools, vec!["127.255.0.0/16".parse().unwrap()]);
    }

    #[test]
    fn toml_sets_flags() {
        let dir = config(
            "globaldns.toml",
            "ttl = 7\nzone = [\"global\", \"mesh.example\"]\nquery_log = true\nlisten = \"127.0.0.1:0\"\n",
        );
        let args = parse(&dir, "globaldns.toml", &["--ttl", "9"]).unwrap();
        assert_eq!(args.ttl, 9);
        let zones: Vec<String> = args.zones_served.iter().map(|z| z.to_ascii()).collect();
        assert_eq!(zones, ["global.", "mesh.example."]);
        assert!(args.query_log);
    }

    #[test]
    fn empty_file_sets_nothing() {
        for (name, text) in [
            ("a.yaml", ""),
            ("b.yaml", "# nothing yet\n"),
            ("c.toml", ""),
        ] {
            let dir = config(name, text);
            let args = parse(&dir, name, &[]).unwrap();
            assert_eq!(args.ttl, 30, "{name}");
        }
    }

    #[test]
    fn mistakes_name_the_key_and_the_file() {
        let cases = [
            ("ttll: 7\n", "unknown key `ttll`"),
            ("config: other.yaml\n", "unknown key `config`"),
            ("help: true\n", "unknown key `help`"),
            ("ttl: abc\n", "`ttl`: invalid value 'abc' for '--ttl"),
            ("ttl: [1, 2]\n", "`ttl`: takes one value"),
            ("upstream: [nope]\n", "`upstream`: invalid value 'nope'"),
            ("upstream: []\n", "`upstream`: empty list"),
            (
                "listen: {a: 1}\n",
                "`listen`: expected a value, not a mapping",
            ),
            ("zone: [[global]]\n", "`zone`: expected a single value"),
            ("query-log: maybe\n", "`query-log`: invalid value 'maybe'"),
            ("cache-size: 1\ncache_size: 2\n", "are the same key"),
            ("- ttl\n", "expected flag names and their values in YAML"),
        ];
        for (text, expected) in cases {
            let dir = config("bad.yaml", text);
            let error = parse(&dir, "bad.yaml", &[]).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
            let path = dir.path().join("bad.yaml");
            assert!(
                error.contains(&format!("config file {}", path.display())),
                "{text:?}: {error}"
            );
        }
        let dir = config("globaldns.conf", "ttl: 7\n");
        let error = parse(&dir, "globaldns.conf", &[]).unwrap_err();
        assert!(error.contains(".yaml, .yml or .toml"), "{error}");
        let error = parse(&dir, "missing.yaml", &[]).unwrap_err();
        assert!(error.contains("cannot read config file"), "{error}");
        // A directory (or a FIFO or device) is refused at once, never read.
        let error = parse(&dir, ".", &[]).unwrap_err();
        assert!(error.contains("not a regular file"), "{error}");
        // A mistake is an error even for a key the command line overrides.
        let dir = config("bad.toml", "ttl = \"abc\"\n");
        let error = parse(&dir, "bad.toml", &["--ttl", "9"]).unwrap_err();
        assert!(error.contains("`ttl`: invalid value"), "{error}");
    }

    #[test]
    fn every_flag_can_be_a_key() {
        let command = ServerArgs::command();
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if NOT_IN_FILE.contains(&long) {
                continue;
            }
            assert!(
                matches!(
                    arg.get_action(),
                    ArgAction::Set | ArgAction::Append | ArgAction::SetTrue
                ),
                "--{long} cannot come from a config file"
            );
        }
    }
}
