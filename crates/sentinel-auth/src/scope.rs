//! Scopes: what a credential allows. Every route of the HTTP API needs exactly one; `admin`
//! grants all of them. The names are those of OAuth `scope` claims, so a JWT from an identity
//! provider can carry them as they are.

use std::fmt;
use std::str::FromStr;

/// One permission of the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Submit files for malware verdicts.
    MalwareScan,
    /// Read the malware server's status and verdicts.
    MalwareRead,
    /// Read the network service's models, predictions and live stream.
    NetworkRead,
    /// Score connection batches.
    NetworkAnalyze,
    /// Post agents' snapshots (which the models are retrained on).
    NetworkIngest,
    /// Start, follow and cancel training; roll models back.
    NetworkTrain,
    /// Label the network service's predictions (true anomaly or false positive), which its
    /// metrics are measured on and its ensemble learns from.
    NetworkFeedback,
    /// See clear IP addresses in the network service's live stream and results (others see
    /// them pseudonymised, as `[privacy] ip_storage` stores them).
    NetworkPii,
    /// Read `/metrics` when it is not open.
    MetricsRead,
    /// List alerts and their deliveries.
    AlertsRead,
    /// Acknowledge alerts and send test notifications.
    AlertsWrite,
    /// Everything, including reloads and model administration.
    Admin,
}

impl Scope {
    /// Every scope, in the order of their bits in [`Scopes`].
    pub const ALL: [Scope; 12] = [
        Scope::MalwareScan,
        Scope::MalwareRead,
        Scope::NetworkRead,
        Scope::NetworkAnalyze,
        Scope::NetworkIngest,
        Scope::NetworkTrain,
        Scope::NetworkFeedback,
        Scope::NetworkPii,
        Scope::MetricsRead,
        Scope::AlertsRead,
        Scope::AlertsWrite,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::MalwareScan => "malware:scan",
            Scope::MalwareRead => "malware:read",
            Scope::NetworkRead => "network:read",
            Scope::NetworkAnalyze => "network:analyze",
            Scope::NetworkIngest => "network:ingest",
            Scope::NetworkTrain => "network:train",
            Scope::NetworkFeedback => "network:feedback",
            Scope::NetworkPii => "network:pii",
            Scope::MetricsRead => "metrics:read",
            Scope::AlertsRead => "alerts:read",
            Scope::AlertsWrite => "alerts:write",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A name that is no scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown scope {0:?} (known: malware:scan, malware:read, network:read, network:analyze, network:ingest, network:train, network:feedback, network:pii, metrics:read, alerts:read, alerts:write, admin)"
)]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(name: &str) -> Result<Scope, UnknownScope> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == name)
            .ok_or_else(|| UnknownScope(name.to_owned()))
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Scopes(u16);

impl Scopes {
    /// Whether these scopes allow what `scope` guards: they hold it, or `admin`.
    pub fn grants(self, scope: Scope) -> bool {
        self.0 & (scope.bit() | Scope::Admin.bit()) != 0
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn insert(&mut self, scope: Scope) {
        self.0 |= scope.bit();
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |scope| self.contains(*scope))
    }

    /// Scopes from names separated by commas or white space (`network:read,network:ingest`,
    /// an OAuth `scope` claim). Every name must be a known scope.
    pub fn parse_list(list: &str) -> Result<Scopes, UnknownScope> {
        list.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|name| !name.is_empty())
            .map(str::parse)
            .collect()
    }

    /// Scopes from names, ignoring those that are not Sentinel's: an identity provider's tokens
    /// carry scopes of other services too.
    pub fn from_known_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Scopes {
        names.into_iter().filter_map(|name| name.parse().ok()).collect()
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(scopes: I) -> Scopes {
        let mut set = Scopes::default();
        scopes.into_iter().for_each(|scope| set.insert(scope));
        set
    }
}

impl From<Scope> for Scopes {
    fn from(scope: Scope) -> Scopes {
        Scopes(scope.bit())
    }
}

/// Space-separated names, as stored and as in an OAuth `scope` claim.
impl fmt::Display for Scopes {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Scope::as_str).collect();
        formatter.write_str(&names.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_admin_grants_every_scope() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
            assert!(Scopes::from(Scope::Admin).grants(scope));
        }
        assert!("network:write".parse::<Scope>().is_err());
        assert_eq!("network:pii".parse::<Scope>(), Ok(Scope::NetworkPii));
        assert!(
            !Scopes::from(Scope::NetworkRead).grants(Scope::NetworkPii),
            "reading is not seeing clear addresses"
        );
        let scopes = Scopes::parse_list("network:read, network:ingest").unwrap();
        assert!(scopes.grants(Scope::NetworkIngest));
        assert!(!scopes.grants(Scope::NetworkTrain));
        assert!(
            !Scopes::from(Scope::NetworkTrain).grants(Scope::NetworkFeedback),
            "training is not labelling"
        );
        assert_eq!(scopes.to_string(), "network:read network:ingest");
        assert_eq!(Scopes::parse_list(&scopes.to_string()), Ok(scopes));
        assert!(Scopes::parse_list("network:read,root").is_err());
        assert_eq!(Scopes::from_known_names(["openid", "network:read"]), Scopes::from(Scope::NetworkRead));
    }
}
