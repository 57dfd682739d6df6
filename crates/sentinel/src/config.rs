//! Configuration: one TOML file whose top-level tables hold the settings of each
//! part of the service (`[server]`, `[store]`, `[static_analysis]`…), each
//! deserialised into the settings type that part defines, so every limit lives
//! next to the code it limits.
//!
//! Environment variables override the file, which is how container deployments
//! configure services: `SENTINEL_<SECTION>__<KEY>=value` sets `key` in
//! `[section]` (the double underscore separates the two, because names contain
//! single underscores). The value is read as a TOML value when it parses as one
//! (`64`, `true`, `"text"`, `[1, 2]`) and as a plain string otherwise. A few
//! everyday settings also have flat names handled by the command line
//! (`SENTINEL_DATA_DIR`, `SENTINEL_TCP_LISTEN`, …).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::de::DeserializeOwned;

const ENV_PREFIX: &str = "SENTINEL_";

/// Where samples, verdicts and models live when neither the command line, the
/// environment nor the configuration file says otherwise: relative to the
/// working directory, so a first run shows plainly where its data went.
const DEFAULT_DATA_DIR: &str = "sentinel-data";
const SECTION_SEPARATOR: &str = "__";

/// The loaded configuration: the file's tables with the environment applied.
#[derive(Debug, Clone, Default)]
pub struct Config {
    table: toml::Table,
}

impl Config {
    /// Reads `path` (if given) and applies the process environment.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the configuration file {}", path.display()))?,
            None => String::new(),
        };
        Config::from_parts(&text, std::env::vars()).with_context(|| match path {
            Some(path) => format!("invalid configuration in {}", path.display()),
            None => "invalid configuration in the environment".to_owned(),
        })
    }

    fn from_parts(text: &str, env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Config> {
        let mut table: toml::Table = text.parse().context("not valid TOML")?;
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
            let Some((section, key)) = rest.split_once(SECTION_SEPARATOR) else { continue };
            let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
            if section.is_empty() || key.is_empty() {
                anyhow::bail!("environment variable {name}: expected SENTINEL_<SECTION>__<KEY>");
            }
            let entry = table.entry(section).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(section_table) = entry else {
                anyhow::bail!("environment variable {name}: the configuration's `{rest}` is not a table");
            };
            section_table.insert(key, parse_env_value(&value));
        }
        Ok(Config { table })
    }

    /// The settings of one section, with the type's defaults for what is absent.
    /// Settings types reject unknown keys, so a misspelt setting is an error
    /// rather than silently ignored.
    pub fn section<T: DeserializeOwned>(&self, name: &str) -> anyhow::Result<T> {
        let value = self.table.get(name).cloned().unwrap_or_else(|| toml::Value::Table(toml::Table::new()));
        value.try_into().with_context(|| format!("invalid settings in [{name}]"))
    }

    /// The top-level `data_dir` setting, if the file gives one.
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.table.get("data_dir").and_then(toml::Value::as_str).map(PathBuf::from)
    }

    /// The data directory of a command: `given` (its `--data-dir`, or
    /// `SENTINEL_DATA_DIR`), else the file's `data_dir`, else ./sentinel-data.
    pub fn resolve_data_dir(&self, given: Option<PathBuf>) -> PathBuf {
        given.or_else(|| self.data_dir()).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }
}

/// An environment value as TOML when it is a valid TOML value, else as a string,
/// so that `SENTINEL_STORE__RETENTION_DAYS=30` is a number and
/// `SENTINEL_SERVER__NAME=eu-1` is a string without quoting.
fn parse_env_value(raw: &str) -> toml::Value {
    format!("value = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut table| table.remove("value"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Example {
        limit: u64,
        name: String,
        enabled: bool,
    }

    impl Default for Example {
        fn default() -> Self {
            Example { limit: 7, name: "default".into(), enabled: false }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn absent_section_gives_defaults() {
        let config = Config::from_parts("", env(&[])).unwrap();
        assert_eq!(config.section::<Example>("example").unwrap(), Example::default());
    }

    #[test]
    fn environment_overrides_the_file() {
        let file = "data_dir = \"/var/lib/sentinel\"\n[example]\nlimit = 1\nname = \"file\"\n";
        let vars = env(&[
            ("SENTINEL_EXAMPLE__LIMIT", "42"),
            ("SENTINEL_EXAMPLE__ENABLED", "true"),
            ("SENTINEL_DATA_DIR", "/ignored/here"),
            ("PATH", "/usr/bin"),
        ]);
        let config = Config::from_parts(file, vars).unwrap();
        let example: Example = config.section("example").unwrap();
        assert_eq!(example, Example { limit: 42, name: "file".into(), enabled: true });
        assert_eq!(config.data_dir(), Some(PathBuf::from("/var/lib/sentinel")));
    }

    #[test]
    fn unquoted_text_is_a_string() {
        let config = Config::from_parts("", env(&[("SENTINEL_EXAMPLE__NAME", "eu-1")])).unwrap();
        assert_eq!(config.section::<Example>("example").unwrap().name, "eu-1");
    }

    #[test]
    fn misspelt_or_mistyped_settings_are_errors() {
        let config = Config::from_parts("[example]\nlimt = 3\n", env(&[])).unwrap();
        assert!(config.section::<Example>("example").is_err());
        let config = Config::from_parts("", env(&[("SENTINEL_EXAMPLE__LIMIT", "many")])).unwrap();
        assert!(config.section::<Example>("example").is_err());
        assert!(Config::from_parts("not toml [", env(&[])).is_err());
    }
}
