//! Configuration: one TOML file whose top-level tables hold the settings of each
//! part of the service (`[server]`, `[store]`, `[network.api]`…), each
//! deserialised into the settings type that part defines, so every limit lives
//! next to the code it limits.
//!
//! The layers are merged by `figment`: the file, then the environment, which is
//! how container deployments configure services; command-line flags, applied by
//! each command, come last. Every setting can be set from the environment:
//! `SENTINEL_<SECTION>__<KEY>=value` sets `key` in `[section]`, and each further
//! `__` goes one table deeper (`SENTINEL_NETWORK__API__MAX_BATCH_ITEMS=5000` sets
//! `max_batch_items` in `[network.api]`); the double underscore separates levels
//! because names contain single underscores. Values are typed as they would be
//! in the file (`64`, `true`, `[1, 2]`; anything else is a string, `30s`
//! included). Names without `__` are the flat names of the command line
//! (`SENTINEL_DATA_DIR`, `SENTINEL_TCP_LISTEN`, …), which clap reads and which
//! are never taken for sections.

use std::path::{Path, PathBuf};

use anyhow::Context;
use figment::providers::{Env, Serialized};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::de::DeserializeOwned;

const ENV_PREFIX: &str = "SENTINEL_";
/// Separates the levels of a setting's path in an environment variable's name.
const LEVEL_SEPARATOR: &str = "__";

/// Where samples, verdicts and models live when neither the command line, the
/// environment nor the configuration file says otherwise: relative to the
/// working directory, so a first run shows plainly where its data went.
const DEFAULT_DATA_DIR: &str = "sentinel-data";

/// The loaded configuration: the file's tables with the environment merged over them.
#[derive(Debug, Clone, Default)]
pub struct Config {
    figment: Figment,
}

impl Config {
    /// Reads `path` (if given) and merges the process environment over it.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
                TomlFile::parse(&text, Some(path))
                    .with_context(|| format!("invalid configuration in {}", path.display()))?
            }
            None => TomlFile::parse("", None)?,
        };
        Ok(Config::from_layers(file))
    }

    /// The file's layer with the environment's merged over it.
    fn from_layers(file: TomlFile) -> Config {
        Config { figment: Figment::from(file).merge(Environment) }
    }

    /// The settings of one section (`"network"`, or a nested one such as
    /// `"network.api"`), with the type's defaults for what is absent. Settings
    /// types reject unknown keys, so a misspelt setting is an error rather than
    /// silently ignored, wherever it was written.
    pub fn section<T: DeserializeOwned>(&self, name: &str) -> anyhow::Result<T> {
        // figment reports a key's path relative to the focused section: the
        // section's path is put in front, so that an error names the whole key
        // and the variable it came from (`SENTINEL_NETWORK__API__MAX_BATCH_ITEMS`).
        let settings = self.figment.focus(name).extract().map_err(|errors: figment::Error| {
            let messages: Vec<String> = errors
                .into_iter()
                .map(|mut error| {
                    error.path.splice(0..0, name.split('.').map(str::to_owned));
                    error.to_string()
                })
                .collect();
            anyhow::anyhow!(messages.join("; "))
        });
        settings.with_context(|| format!("invalid settings in [{name}]"))
    }

    /// The top-level `data_dir` setting, if the file gives one.
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.figment.find_value("data_dir").ok().and_then(|value| value.into_string()).map(PathBuf::from)
    }

    /// The data directory of a command: `given` (its `--data-dir`, or
    /// `SENTINEL_DATA_DIR`), else the file's `data_dir`, else ./sentinel-data.
    pub fn resolve_data_dir(&self, given: Option<PathBuf>) -> PathBuf {
        given.or_else(|| self.data_dir()).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }
}

/// The configuration file as a figment layer. It is parsed with the
/// workspace's `toml` crate (figment's own TOML provider would bring a second,
/// older one), and names the file in figment's error messages.
struct TomlFile {
    table: toml::Table,
    path: Option<PathBuf>,
}

impl TomlFile {
    fn parse(text: &str, path: Option<&Path>) -> anyhow::Result<TomlFile> {
        let table = text.parse().context("not valid TOML")?;
        Ok(TomlFile { table, path: path.map(Path::to_path_buf) })
    }
}

impl Provider for TomlFile {
    fn metadata(&self) -> Metadata {
        match &self.path {
            Some(path) => Metadata::named("TOML file").source(Source::File(path.clone())),
            None => Metadata::named("TOML file"),
        }
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::defaults(&self.table).data()
    }
}

/// The environment as a figment layer: the `SENTINEL_…__…` variables, whose
/// errors name the variable as the user wrote it (`SENTINEL_NETWORK__API__MAX_BATCH_ITEMS`).
struct Environment;

impl Environment {
    fn variables() -> Env {
        Env::prefixed(ENV_PREFIX)
            .filter(|name| name.as_str().contains(LEVEL_SEPARATOR))
            .split(LEVEL_SEPARATOR)
    }
}

impl Provider for Environment {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable").interpolater(|_profile, keys| {
            format!("{ENV_PREFIX}{}", keys.join(LEVEL_SEPARATOR).to_ascii_uppercase())
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Environment::variables().data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::Jail;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Example {
        limit: u64,
        name: String,
        enabled: bool,
        ports: Vec<u16>,
    }

    impl Default for Example {
        fn default() -> Self {
            Example { limit: 7, name: "default".into(), enabled: false, ports: vec![] }
        }
    }

    #[derive(Debug, serde::Deserialize, PartialEq, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Outer {
        level: u32,
        api: Example,
    }

    /// Runs `test` in figment's jail, which restores the environment after it
    /// and serialises the tests that change it. (Its closure's error type is
    /// figment's, large by clippy's measure; it is only built on failure.)
    #[allow(clippy::result_large_err)]
    fn with_env(vars: &[(&str, &str)], test: impl FnOnce() -> anyhow::Result<()>) {
        Jail::expect_with(|jail| {
            for (name, value) in vars {
                jail.set_env(name, value);
            }
            test().map_err(|error| format!("{error:#}").into())
        });
    }

    fn config(file: &str) -> anyhow::Result<Config> {
        Ok(Config::from_layers(TomlFile::parse(file, None)?))
    }

    #[test]
    fn absent_section_gives_defaults() {
        with_env(&[], || {
            assert_eq!(config("")?.section::<Example>("example")?, Example::default());
            assert_eq!(config("")?.section::<Outer>("outer")?, Outer::default());
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_the_file() {
        let file = "data_dir = \"/var/lib/sentinel\"\n[example]\nlimit = 1\nname = \"file\"\n";
        let vars = [
            ("SENTINEL_EXAMPLE__LIMIT", "42"),
            ("SENTINEL_EXAMPLE__ENABLED", "true"),
            ("SENTINEL_EXAMPLE__PORTS", "[80, 443]"),
            ("SENTINEL_DATA_DIR", "/ignored/here"),
        ];
        with_env(&vars, || {
            let config = config(file)?;
            let example: Example = config.section("example")?;
            assert_eq!(
                example,
                Example { limit: 42, name: "file".into(), enabled: true, ports: vec![80, 443] }
            );
            // The flat name is the command line's (clap reads it): not a setting of the file's layers.
            assert_eq!(config.data_dir(), Some(PathBuf::from("/var/lib/sentinel")));
            Ok(())
        });
    }

    #[test]
    fn nested_tables_are_set_level_by_level() {
        let file = "[outer]\nlevel = 1\n[outer.api]\nname = \"file\"\nlimit = 3\n";
        let vars = [("SENTINEL_OUTER__API__LIMIT", "5000"), ("SENTINEL_OUTER__API__ENABLED", "true")];
        with_env(&vars, || {
            let config = config(file)?;
            let outer: Outer = config.section("outer")?;
            let api = Example { limit: 5000, name: "file".into(), enabled: true, ports: vec![] };
            assert_eq!(outer, Outer { level: 1, api });
            // A nested table can also be read on its own.
            assert_eq!(config.section::<Example>("outer.api")?.limit, 5000);
            Ok(())
        });
        // A nested table absent from the file is created by the environment.
        with_env(&[("SENTINEL_OUTER__API__NAME", "eu-1")], || {
            assert_eq!(config("")?.section::<Outer>("outer")?.api.name, "eu-1");
            Ok(())
        });
    }

    #[test]
    fn flat_names_are_not_sections() {
        let vars = [
            ("SENTINEL_TCP_LISTEN", "0.0.0.0:7878"),
            ("SENTINEL_EXAMPLE", "7"),
            ("SENTINEL_REQUIRE_DATA", "1"),
        ];
        with_env(&vars, || {
            let config = config("")?;
            assert_eq!(config.section::<Example>("example")?, Example::default());
            assert!(config.figment.find_value("tcp_listen").is_err());
            Ok(())
        });
    }

    #[test]
    fn unquoted_text_is_a_string() {
        with_env(&[("SENTINEL_EXAMPLE__NAME", "eu-1")], || {
            assert_eq!(config("")?.section::<Example>("example")?.name, "eu-1");
            Ok(())
        });
    }

    #[test]
    fn misspelt_or_mistyped_settings_are_errors() {
        with_env(&[], || {
            assert!(config("[example]\nlimt = 3\n")?.section::<Example>("example").is_err());
            assert!(config("not toml [").is_err());
            Ok(())
        });
        with_env(&[("SENTINEL_EXAMPLE__LIMIT", "many")], || {
            let error = config("")?.section::<Example>("example").unwrap_err();
            // The message names the variable the bad value came from.
            assert!(format!("{error:#}").contains("SENTINEL_EXAMPLE__LIMIT"), "{error:#}");
            Ok(())
        });
        with_env(&[("SENTINEL_OUTER__API__LIMT", "3")], || {
            assert!(config("")?.section::<Outer>("outer").is_err());
            Ok(())
        });
    }
}
