//! Checks on records received from remote agents before the service trusts them.
//!
//! Serde already rejects what cannot be represented (an unparsable IP address, a port above
//! 65535, an unknown state, a timestamp that is not RFC 3339 UTC). What is left here is what a
//! hostile or buggy agent could still send: oversized bodies and strings that would bloat the
//! database, records that claim another host, a family that contradicts the addresses, clocks far
//! in the future. Every error names the record and field so the agent's operator can fix it.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::record::{ConnectionRecord, Family, MAX_CMDLINE_BYTES, ProcessInfo, SCHEMA_VERSION, Snapshot};

/// Bounds applied to records from remote agents. Every field has a default; see
/// [`ValidationLimits::default`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationLimits {
    /// Largest JSON body accepted, in bytes. Default: 16 MiB.
    pub max_body_bytes: usize,
    /// Most records of one kind in one snapshot. Default: 100,000.
    pub max_records: usize,
    /// Longest host, process name or user name, in bytes. Default: 255.
    pub max_name_bytes: usize,
    /// Longest executable path, in bytes. Default: 4096.
    pub max_path_bytes: usize,
    /// How far in the future a timestamp may be (clock skew), in seconds. Default: 300.
    pub max_clock_skew_secs: u64,
}

impl Default for ValidationLimits {
    fn default() -> ValidationLimits {
        ValidationLimits {
            max_body_bytes: 16 * 1024 * 1024,
            max_records: 100_000,
            max_name_bytes: 255,
            max_path_bytes: 4096,
            max_clock_skew_secs: 300,
        }
    }
}

/// Why a record from an agent was rejected. `location` reads like `connections[3].process_path`.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error("body is {size} bytes, more than the limit of {limit}")]
    BodyTooLarge { size: usize, limit: usize },
    #[error("malformed record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("schema_version {found} is not supported (this server reads version {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("{kind}: {count} records, more than the limit of {limit}")]
    TooManyRecords { kind: &'static str, count: usize, limit: usize },
    #[error("{location} is empty")]
    Empty { location: String },
    #[error("{location} is {len} bytes, more than the limit of {limit}")]
    TooLong { location: String, len: usize, limit: usize },
    #[error("{location} is {found:?}, but the snapshot is from host {expected:?}")]
    HostMismatch { location: String, found: String, expected: String },
    #[error("{location}: family {family:?} does not match address {ip}")]
    FamilyMismatch { location: String, family: Family, ip: std::net::IpAddr },
    #[error("{location} is {ahead:?} in the future, more than the allowed clock skew")]
    FutureTimestamp { location: String, ahead: Duration },
}

impl Snapshot {
    /// Parses and validates a snapshot posted by an agent.
    pub fn from_json(body: &[u8], limits: &ValidationLimits) -> Result<Snapshot, ValidationError> {
        if body.len() > limits.max_body_bytes {
            return Err(ValidationError::BodyTooLarge { size: body.len(), limit: limits.max_body_bytes });
        }
        // Read the version first so that a future format fails with a version error rather than
        // with whichever field changed.
        #[derive(Deserialize)]
        struct Version {
            schema_version: u32,
        }
        let Version { schema_version } = serde_json::from_slice(body)?;
        if schema_version != SCHEMA_VERSION {
            return Err(ValidationError::UnsupportedVersion {
                found: schema_version,
                supported: SCHEMA_VERSION,
            });
        }
        let snapshot: Snapshot = serde_json::from_slice(body)?;
        snapshot.validate(limits, SystemTime::now())?;
        Ok(snapshot)
    }

    /// Checks every record against `limits`; `now` is the receiver's clock.
    pub fn validate(&self, limits: &ValidationLimits, now: SystemTime) -> Result<(), ValidationError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(ValidationError::UnsupportedVersion {
                found: self.schema_version,
                supported: SCHEMA_VERSION,
            });
        }
        let checks = Checks { kind: "", index: None, limits, now };
        checks.name("host", &self.host)?;
        checks.not_ahead("timestamp", self.timestamp)?;
        let records = Records { host: &self.host, limits, now };
        records.check(
            "connections",
            &self.connections,
            |r| (&r.host, Some(r.timestamp)),
            check_connection,
        )?;
        records.check(
            "interfaces",
            &self.interfaces,
            |r| (&r.host, Some(r.timestamp)),
            |r, checks| checks.name("name", &r.name),
        )?;
        records.check(
            "processes",
            &self.processes,
            |r| (&r.host, Some(r.timestamp)),
            |r, checks| checks.optional("name", &r.name, checks.limits.max_name_bytes),
        )?;
        records.check("process_info", &self.process_info, |r| (&r.host, None), check_process_info)
    }
}

impl ConnectionRecord {
    /// Checks one record received on its own (outside a [`Snapshot`]).
    pub fn validate(&self, limits: &ValidationLimits, now: SystemTime) -> Result<(), ValidationError> {
        let checks = Checks { kind: "connection", index: None, limits, now };
        checks.common(&self.host, Some(self.timestamp))?;
        check_connection(self, &checks)
    }
}

/// The fields of a connection record beyond those every record has.
fn check_connection(record: &ConnectionRecord, checks: &Checks) -> Result<(), ValidationError> {
    let limits = checks.limits;
    checks.optional("process_name", &record.process_name, limits.max_name_bytes)?;
    checks.optional("process_path", &record.process_path, limits.max_path_bytes)?;
    checks.optional("user", &record.user, limits.max_name_bytes)?;
    for (field, ip) in [("local_ip", record.local_ip), ("remote_ip", record.remote_ip)] {
        if Family::of(ip) != record.family {
            return Err(ValidationError::FamilyMismatch {
                location: checks.location(field),
                family: record.family,
                ip,
            });
        }
    }
    Ok(())
}

fn check_process_info(record: &ProcessInfo, checks: &Checks) -> Result<(), ValidationError> {
    let limits = checks.limits;
    checks.name("name", &record.name)?;
    checks.optional("path", &record.path, limits.max_path_bytes)?;
    checks.optional("user", &record.user, limits.max_name_bytes)?;
    let cmdline_len = record.cmdline.iter().map(String::len).sum();
    checks.length("cmdline", cmdline_len, MAX_CMDLINE_BYTES)
}

/// The records of one snapshot: each kind is checked the same way, by [`Records::check`].
struct Records<'a> {
    /// The snapshot's host, which every record must claim.
    host: &'a str,
    limits: &'a ValidationLimits,
    now: SystemTime,
}

impl Records<'_> {
    /// Checks one kind of record (`kind` is the snapshot field holding them): how many there
    /// are; for each, what every record has (`common`: its host and, except process details,
    /// its timestamp), then its own `fields`; and that it is from the snapshot's host.
    fn check<R>(
        &self,
        kind: &'static str,
        records: &[R],
        common: impl Fn(&R) -> (&str, Option<SystemTime>),
        fields: impl Fn(&R, &Checks) -> Result<(), ValidationError>,
    ) -> Result<(), ValidationError> {
        if records.len() > self.limits.max_records {
            return Err(ValidationError::TooManyRecords {
                kind,
                count: records.len(),
                limit: self.limits.max_records,
            });
        }
        for (index, record) in records.iter().enumerate() {
            let checks = Checks { kind, index: Some(index), limits: self.limits, now: self.now };
            let (host, timestamp) = common(record);
            checks.common(host, timestamp)?;
            fields(record, &checks)?;
            if host != self.host {
                return Err(ValidationError::HostMismatch {
                    location: checks.location("host"),
                    found: host.to_owned(),
                    expected: self.host.to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// The field checks every record shares, for one record. The record's location
/// (`connections[3]`) is only formatted into a string when a check fails, so that accepting a
/// snapshot of 100,000 records allocates nothing for it.
struct Checks<'a> {
    /// `connections`, `connection` (a record posted alone), or empty for the snapshot itself.
    kind: &'static str,
    index: Option<usize>,
    limits: &'a ValidationLimits,
    now: SystemTime,
}

impl Checks<'_> {
    /// `connections[3].field`, `connection.field` or `field`.
    fn location(&self, field: &str) -> String {
        match (self.kind, self.index) {
            ("", _) => field.to_owned(),
            (kind, Some(index)) => format!("{kind}[{index}].{field}"),
            (kind, None) => format!("{kind}.{field}"),
        }
    }

    /// What every record has: a timestamp not too far ahead (process details have none) and a
    /// host name.
    fn common(&self, host: &str, timestamp: Option<SystemTime>) -> Result<(), ValidationError> {
        if let Some(timestamp) = timestamp {
            self.not_ahead("timestamp", timestamp)?;
        }
        self.name("host", host)
    }

    /// A required name: not empty, at most `max_name_bytes`.
    fn name(&self, field: &str, value: &str) -> Result<(), ValidationError> {
        if value.is_empty() {
            return Err(ValidationError::Empty { location: self.location(field) });
        }
        self.length(field, value.len(), self.limits.max_name_bytes)
    }

    fn optional(&self, field: &str, value: &Option<String>, limit: usize) -> Result<(), ValidationError> {
        value.as_deref().map_or(Ok(()), |value| self.length(field, value.len(), limit))
    }

    fn length(&self, field: &str, len: usize, limit: usize) -> Result<(), ValidationError> {
        if len > limit {
            return Err(ValidationError::TooLong { location: self.location(field), len, limit });
        }
        Ok(())
    }

    /// Not further in the future than the allowed clock skew; any past time is accepted.
    fn not_ahead(&self, field: &str, time: SystemTime) -> Result<(), ValidationError> {
        match time.duration_since(self.now) {
            Ok(ahead) if ahead > Duration::from_secs(self.limits.max_clock_skew_secs) => {
                Err(ValidationError::FutureTimestamp { location: self.location(field), ahead })
            }
            _ => Ok(()),
        }
    }
}
