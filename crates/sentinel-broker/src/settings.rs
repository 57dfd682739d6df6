//! The `[broker]` settings of the scale-out mode: where the NATS server is, how the record
//! stream is named and partitioned, how long JetStream may take, and where the credentials are.
//! Unknown keys are errors, so a misspelt setting fails at start-up instead of being ignored.
//!
//! Secrets are never part of the settings: the token and the password are read from files at
//! connection time ([`Credentials`]), and their `Debug` is redacted. A URL carrying a user or a
//! password is refused for the same reason: URLs end up in errors and logs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_nats::ServerAddr;
use serde::{Deserialize, Serialize};

use crate::BrokerError;

/// The most partitions a stream may have: each has its own durable consumer on the server.
pub const MAX_PARTITIONS: u32 = 1024;

/// The longest prefix: stream and consumer names are built from it and stay short.
const MAX_PREFIX_LEN: usize = 32;

/// How Sentinel reaches the NATS server and lays out its stream. Every field but the
/// credentials has a default; see [`BrokerSettings::default`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// The NATS server: `nats://host:port`, or `tls://host:port` for TLS. No user or password
    /// in the URL (use `token_file`, or `user` and `password_file`). Default:
    /// `nats://127.0.0.1:4222`.
    pub url: String,

    /// The names on the server: subjects `<prefix>.records.<partition>` and
    /// `<prefix>.results`, stream `<PREFIX>_RECORDS`, consumers `<PREFIX>_scorer_<partition>`.
    /// Lower-case letters, digits, `_` and `-` only. Default: `sentinel`.
    pub prefix: String,

    /// How many partitions the records are spread over, by a hash of their key (the agent's
    /// host name): a partition is consumed by one worker at a time. 1 to 1024. Changing it
    /// moves hosts to other partitions: drain the stream first. Default: 16.
    pub partitions: u32,

    /// How long a worker has to acknowledge a record it fetched before JetStream delivers it
    /// again. Default: 30 s.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,

    /// How long a JetStream request may take: a publish waiting for its acknowledgement, an
    /// acknowledgement waiting for the server's confirmation, setting up the stream and the
    /// consumers. Default: 5 s.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,

    /// The most bytes the record stream holds. When it is full, new records are refused (the
    /// publisher gets an error), never are accepted ones dropped. Default: 1 GiB.
    pub max_bytes: u64,

    /// File holding the server's authentication token. Exclusive with `user`.
    pub token_file: Option<PathBuf>,

    /// User name for user and password authentication, with `password_file`.
    pub user: Option<String>,

    /// File holding the password of `user`.
    pub password_file: Option<PathBuf>,

    /// CA certificate (PEM) that signed the server's certificate. When given, TLS is required
    /// even with a `nats://` URL. Without it, a `tls://` URL is verified against the system's
    /// roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for BrokerSettings {
    fn default() -> BrokerSettings {
        BrokerSettings {
            url: "nats://127.0.0.1:4222".into(),
            prefix: "sentinel".into(),
            partitions: 16,
            ack_wait: Duration::from_secs(30),
            publish_timeout: Duration::from_secs(5),
            max_bytes: 1024 * 1024 * 1024,
            token_file: None,
            user: None,
            password_file: None,
            ca_file: None,
        }
    }
}

impl BrokerSettings {
    /// Checks the settings without touching the network or the files.
    pub fn validate(&self) -> Result<(), BrokerError> {
        self.server_address()?;
        let invalid = |reason: String| Err(BrokerError::InvalidSettings(reason));
        if self.prefix.is_empty() || self.prefix.len() > MAX_PREFIX_LEN {
            return invalid(format!("prefix must have 1 to {MAX_PREFIX_LEN} characters"));
        }
        if let Some(bad) = self
            .prefix
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
        {
            return invalid(format!(
                "prefix {:?} has {bad:?}: only lower-case letters, digits, '_' and '-' are allowed",
                self.prefix
            ));
        }
        if !(1..=MAX_PARTITIONS).contains(&self.partitions) {
            return invalid(format!("partitions {} is not in 1..={MAX_PARTITIONS}", self.partitions));
        }
        if self.ack_wait < Duration::from_secs(1) {
            return invalid(format!("ack_wait {:?} is shorter than 1s", self.ack_wait));
        }
        if self.publish_timeout < Duration::from_millis(100)
            || self.publish_timeout > Duration::from_secs(300)
        {
            return invalid(format!(
                "publish_timeout {:?} is not between 100ms and 5min",
                self.publish_timeout
            ));
        }
        if self.max_bytes == 0 || i64::try_from(self.max_bytes).is_err() {
            return invalid(format!("max_bytes {} is not between 1 and {}", self.max_bytes, i64::MAX));
        }
        match (&self.token_file, &self.user, &self.password_file) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return invalid("token_file and user/password_file are exclusive: choose one".into());
            }
            (None, Some(user), None) => {
                return invalid(format!("user {user:?} needs password_file"));
            }
            (None, None, Some(_)) => return invalid("password_file needs user".into()),
            (None, Some(user), Some(_)) if user.is_empty() => return invalid("user is empty".into()),
            _ => {}
        }
        Ok(())
    }

    /// The parsed URL, refused when it is not `nats://` or `tls://` or carries credentials.
    pub(crate) fn server_address(&self) -> Result<ServerAddr, BrokerError> {
        let invalid = |reason: String| Err(BrokerError::InvalidSettings(reason));
        // The URL is only echoed back once it is known to carry no password.
        let Some((scheme, _)) = self.url.split_once("://") else {
            return invalid("url must start with nats:// or tls://".into());
        };
        if scheme != "nats" && scheme != "tls" {
            return invalid(format!("url scheme {scheme:?} is not nats or tls"));
        }
        let address = ServerAddr::from_str(&self.url)
            .map_err(|error| BrokerError::InvalidSettings(format!("url is not a valid URL: {error}")))?;
        if address.has_user_pass() {
            return invalid(
                "url must not carry a user or password (use token_file, or user and password_file)".into(),
            );
        }
        if address.host().is_empty() {
            return invalid("url has no host".into());
        }
        Ok(address)
    }

    /// Whether the connection must be TLS: a `tls://` URL or a CA file.
    pub(crate) fn requires_tls(&self) -> bool {
        self.url.starts_with("tls://") || self.ca_file.is_some()
    }

    /// Reads the credentials' files (after [`BrokerSettings::validate`]).
    pub(crate) fn read_credentials(&self) -> Result<Credentials, BrokerError> {
        if let Some(path) = &self.token_file {
            return Ok(Credentials::Token(read_secret(path, "token_file")?));
        }
        if let (Some(user), Some(path)) = (&self.user, &self.password_file) {
            return Ok(Credentials::UserPassword {
                user: user.clone(),
                password: read_secret(path, "password_file")?,
            });
        }
        Ok(Credentials::None)
    }
}

/// Reads a secret's file: its content without the trailing line break an editor adds.
fn read_secret(path: &Path, setting: &'static str) -> Result<String, BrokerError> {
    let content = std::fs::read_to_string(path).map_err(|source| BrokerError::ReadFile {
        setting,
        path: path.to_owned(),
        source,
    })?;
    let secret = content.trim_end_matches(['\r', '\n']).to_owned();
    if secret.is_empty() {
        return Err(BrokerError::ReadFile {
            setting,
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is empty"),
        });
    }
    Ok(secret)
}

/// The secrets read from the credentials' files. `Debug` shows which kind, never the secret.
pub(crate) enum Credentials {
    None,
    Token(String),
    UserPassword { user: String, password: String },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::None => formatter.write_str("None"),
            Credentials::Token(_) => formatter.write_str("Token(<redacted>)"),
            Credentials::UserPassword { user, .. } => formatter
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(settings: &BrokerSettings) -> String {
        settings.validate().expect_err("the settings must be refused").to_string()
    }

    #[test]
    fn the_defaults_are_valid_and_documented() {
        let settings = BrokerSettings::default();
        settings.validate().unwrap();
        assert_eq!(settings.partitions, 16);
        assert_eq!(settings.ack_wait, Duration::from_secs(30));
        assert_eq!(settings.publish_timeout, Duration::from_secs(5));
        assert_eq!(settings.max_bytes, 1 << 30);
        assert!(!settings.requires_tls());
    }

    #[test]
    fn settings_are_read_from_toml_with_humane_durations() {
        let settings: BrokerSettings = toml::from_str(
            "url = \"tls://nats.example:4222\"\nprefix = \"prod-eu_1\"\npartitions = 64\nack_wait = \"1m\"\n\
             publish_timeout = \"2s 500ms\"\nmax_bytes = 1048576\nuser = \"sentinel\"\npassword_file = \"/run/nats-password\"\n",
        )
        .unwrap();
        settings.validate().unwrap();
        assert_eq!(settings.ack_wait, Duration::from_secs(60));
        assert_eq!(settings.publish_timeout, Duration::from_millis(2500));
        assert_eq!(settings.partitions, 64);
        assert!(settings.requires_tls());
        let unknown = toml::from_str::<BrokerSettings>("partition = 4").unwrap_err().to_string();
        assert!(unknown.contains("unknown field `partition`"), "{unknown}");
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_credentials() {
        let with = |url: &str| BrokerSettings { url: url.into(), ..BrokerSettings::default() };
        assert!(refused(&with("127.0.0.1:4222")).contains("must start with nats:// or tls://"));
        assert!(refused(&with("ws://127.0.0.1:4222")).contains("scheme \"ws\" is not nats or tls"));
        assert!(refused(&with("nats://")).contains("url"));
        let message = refused(&with("nats://admin:hunter2@127.0.0.1:4222"));
        assert!(message.contains("must not carry a user or password"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn bad_names_and_limits_are_refused() {
        let prefix = |prefix: &str| BrokerSettings { prefix: prefix.into(), ..BrokerSettings::default() };
        assert!(refused(&prefix("")).contains("prefix must have 1 to 32 characters"));
        assert!(refused(&prefix("Sentinel")).contains("has 'S'"));
        assert!(refused(&prefix("a.b")).contains("has '.'"));
        assert!(refused(&prefix("a*")).contains("has '*'"));
        let partitions = |partitions| BrokerSettings { partitions, ..BrokerSettings::default() };
        assert!(refused(&partitions(0)).contains("partitions 0 is not in 1..=1024"));
        assert!(refused(&partitions(1025)).contains("partitions 1025"));
        partitions(1024).validate().unwrap();
        let ack_wait = BrokerSettings { ack_wait: Duration::from_millis(10), ..BrokerSettings::default() };
        assert!(refused(&ack_wait).contains("ack_wait"));
        let timeout = BrokerSettings { publish_timeout: Duration::ZERO, ..BrokerSettings::default() };
        assert!(refused(&timeout).contains("publish_timeout"));
        let max_bytes = BrokerSettings { max_bytes: 0, ..BrokerSettings::default() };
        assert!(refused(&max_bytes).contains("max_bytes 0"));
        let max_bytes = BrokerSettings { max_bytes: u64::MAX, ..BrokerSettings::default() };
        assert!(refused(&max_bytes).contains("max_bytes"));
    }

    #[test]
    fn credentials_must_be_one_complete_kind() {
        let both = BrokerSettings {
            token_file: Some("/t".into()),
            user: Some("u".into()),
            password_file: Some("/p".into()),
            ..BrokerSettings::default()
        };
        assert!(refused(&both).contains("exclusive"));
        let user_only = BrokerSettings { user: Some("u".into()), ..BrokerSettings::default() };
        assert!(refused(&user_only).contains("needs password_file"));
        let password_only = BrokerSettings { password_file: Some("/p".into()), ..BrokerSettings::default() };
        assert!(refused(&password_only).contains("password_file needs user"));
    }

    #[test]
    fn secrets_are_read_from_files_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret-token\n").unwrap();
        let settings = BrokerSettings { token_file: Some(token), ..BrokerSettings::default() };
        let credentials = settings.read_credentials().unwrap();
        assert!(matches!(&credentials, Credentials::Token(secret) if secret == "s3cret-token"));
        assert_eq!(format!("{credentials:?}"), "Token(<redacted>)");
        assert!(!format!("{settings:?}").contains("s3cret"));

        let password = dir.path().join("password");
        std::fs::write(&password, "pa55word").unwrap();
        let settings = BrokerSettings {
            user: Some("scorer".into()),
            password_file: Some(password),
            ..BrokerSettings::default()
        };
        let shown = format!("{:?}", settings.read_credentials().unwrap());
        assert!(shown.contains("scorer") && !shown.contains("pa55word"), "{shown}");

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let settings = BrokerSettings { token_file: Some(empty), ..BrokerSettings::default() };
        let message = settings.read_credentials().unwrap_err().to_string();
        assert!(message.contains("token_file") && message.contains("empty"), "{message}");
        let missing =
            BrokerSettings { token_file: Some(dir.path().join("absent")), ..BrokerSettings::default() };
        let message = missing.read_credentials().unwrap_err().to_string();
        assert!(message.contains("absent"), "{message}");
    }
}
