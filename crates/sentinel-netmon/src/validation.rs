//! Checks on records received from remote agents before the service trusts them.
//!
//! Serde already rejects what cannot be represented (an unparsable IP address, a port above
//! 65535, an unknown state, a timestamp that is not RFC 3339 UTC). What is left here is what a
//! hostile or buggy agent could still send: oversized bodies and strings that would bloat the
//! database, records that claim another host, a family that contradicts the addresses, clocks far
//! in the future. Every error names the record and field so the agent's operator can fix it.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::record::{
    ConnectionRecord, Family, InterfaceRecord, ProcessInfo, ProcessNetworkRecord, SCHEMA_VERSION, Snapshot,
};

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
        check_name("host", &self.host, limits)?;
        check_time("timestamp", self.timestamp, limits, now)?;
        let host = &self.host;
        let same_host = |location: String, found: &String| {
            if found == host {
                Ok(())
            } else {
                Err(ValidationError::HostMismatch { location, found: found.clone(), expected: host.clone() })
            }
        };
        check_count("connections", self.connections.len(), limits)?;
        for (index, record) in self.connections.iter().enumerate() {
            let location = format!("connections[{index}]");
            record.validate_at(&location, limits, now)?;
            same_host(format!("{location}.host"), &record.host)?;
        }
        check_count("interfaces", self.interfaces.len(), limits)?;
        for (index, record) in self.interfaces.iter().enumerate() {
            let location = format!("interfaces[{index}]");
            record.validate_at(&location, limits, now)?;
            same_host(format!("{location}.host"), &record.host)?;
        }
        check_count("processes", self.processes.len(), limits)?;
        for (index, record) in self.processes.iter().enumerate() {
            let location = format!("processes[{index}]");
            record.validate_at(&location, limits, now)?;
            same_host(format!("{location}.host"), &record.host)?;
        }
        check_count("process_info", self.process_info.len(), limits)?;
        for (index, record) in self.process_info.iter().enumerate() {
            let location = format!("process_info[{index}]");
            record.validate_at(&location, limits)?;
            same_host(format!("{location}.host"), &record.host)?;
        }
        Ok(())
    }
}

impl ConnectionRecord {
    /// Checks one record received on its own (outside a [`Snapshot`]).
    pub fn validate(&self, limits: &ValidationLimits, now: SystemTime) -> Result<(), ValidationError> {
        self.validate_at("connection", limits, now)
    }

    fn validate_at(
        &self,
        location: &str,
        limits: &ValidationLimits,
        now: SystemTime,
    ) -> Result<(), ValidationError> {
        check_time(&format!("{location}.timestamp"), self.timestamp, limits, now)?;
        check_name(&format!("{location}.host"), &self.host, limits)?;
        check_optional(&format!("{location}.process_name"), &self.process_name, limits.max_name_bytes)?;
        check_optional(&format!("{location}.process_path"), &self.process_path, limits.max_path_bytes)?;
        check_optional(&format!("{location}.user"), &self.user, limits.max_name_bytes)?;
        for (field, ip) in [("local_ip", self.local_ip), ("remote_ip", self.remote_ip)] {
            if Family::of(ip) != self.family {
                return Err(ValidationError::FamilyMismatch {
                    location: format!("{location}.{field}"),
                    family: self.family,
                    ip,
                });
            }
        }
        Ok(())
    }
}

impl InterfaceRecord {
    fn validate_at(
        &self,
        location: &str,
        limits: &ValidationLimits,
        now: SystemTime,
    ) -> Result<(), ValidationError> {
        check_time(&format!("{location}.timestamp"), self.timestamp, limits, now)?;
        check_name(&format!("{location}.host"), &self.host, limits)?;
        check_name(&format!("{location}.name"), &self.name, limits)
    }
}

impl ProcessNetworkRecord {
    fn validate_at(
        &self,
        location: &str,
        limits: &ValidationLimits,
        now: SystemTime,
    ) -> Result<(), ValidationError> {
        check_time(&format!("{location}.timestamp"), self.timestamp, limits, now)?;
        check_name(&format!("{location}.host"), &self.host, limits)?;
        check_optional(&format!("{location}.name"), &self.name, limits.max_name_bytes)
    }
}

impl ProcessInfo {
    fn validate_at(&self, location: &str, limits: &ValidationLimits) -> Result<(), ValidationError> {
        check_name(&format!("{location}.host"), &self.host, limits)?;
        check_name(&format!("{location}.name"), &self.name, limits)?;
        check_optional(&format!("{location}.path"), &self.path, limits.max_path_bytes)?;
        check_optional(&format!("{location}.user"), &self.user, limits.max_name_bytes)?;
        let cmdline_len: usize = self.cmdline.iter().map(String::len).sum();
        if cmdline_len > crate::record::MAX_CMDLINE_BYTES {
            return Err(ValidationError::TooLong {
                location: format!("{location}.cmdline"),
                len: cmdline_len,
                limit: crate::record::MAX_CMDLINE_BYTES,
            });
        }
        Ok(())
    }
}

fn check_count(kind: &'static str, count: usize, limits: &ValidationLimits) -> Result<(), ValidationError> {
    if count > limits.max_records {
        return Err(ValidationError::TooManyRecords { kind, count, limit: limits.max_records });
    }
    Ok(())
}

fn check_name(location: &str, value: &str, limits: &ValidationLimits) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::Empty { location: location.to_owned() });
    }
    check_len(location, value, limits.max_name_bytes)
}

fn check_optional(location: &str, value: &Option<String>, limit: usize) -> Result<(), ValidationError> {
    value.as_deref().map_or(Ok(()), |value| check_len(location, value, limit))
}

fn check_len(location: &str, value: &str, limit: usize) -> Result<(), ValidationError> {
    if value.len() > limit {
        return Err(ValidationError::TooLong { location: location.to_owned(), len: value.len(), limit });
    }
    Ok(())
}

fn check_time(
    location: &str,
    time: SystemTime,
    limits: &ValidationLimits,
    now: SystemTime,
) -> Result<(), ValidationError> {
    match time.duration_since(now) {
        Ok(ahead) if ahead > Duration::from_secs(limits.max_clock_skew_secs) => {
            Err(ValidationError::FutureTimestamp { location: location.to_owned(), ahead })
        }
        _ => Ok(()),
    }
}
