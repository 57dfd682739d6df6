//! The one error type of the broker. Messages say what failed and what to check, and never
//! carry a secret: URLs are refused when they hold credentials, and the credentials' files are
//! named by path only.

use std::path::PathBuf;
use std::time::Duration;

/// Anything the broker can fail at.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A setting is out of range or inconsistent.
    #[error("invalid broker settings: {0}")]
    InvalidSettings(String),

    /// A file named by the settings (credentials, CA certificate) could not be read.
    #[error("cannot read the broker's {setting} {}: {source}", path.display())]
    ReadFile { setting: &'static str, path: PathBuf, source: std::io::Error },

    /// The NATS server could not be reached or refused the connection.
    #[error("cannot connect to the NATS server at {url}: {reason}")]
    Connect { url: String, reason: String },

    /// The server runs without JetStream, or JetStream is disabled for this account.
    #[error(
        "the NATS server at {url} has no JetStream (start nats-server with -js, or enable JetStream for this account)"
    )]
    NoJetStream { url: String },

    /// The stream could not be created or brought to the settings.
    #[error("cannot set up the JetStream stream {stream}: {reason}")]
    Stream { stream: String, reason: String },

    /// The settings change the number of partitions of a stream that still holds records.
    #[error(
        "the stream {stream} holds {records} records in {existing} partitions but the settings say {configured}: \
         keep {existing} until every replica is stopped and the stream is drained"
    )]
    PartitionsChanged { stream: String, existing: u32, configured: u32, records: u64 },

    /// A partition's durable consumer could not be created or updated.
    #[error("cannot set up the JetStream consumer of partition {partition}: {reason}")]
    Consumer { partition: u32, reason: String },

    /// A partition number outside `0..partitions`.
    #[error("partition {partition} does not exist (the stream has {partitions} partitions)")]
    NoSuchPartition { partition: u32, partitions: u32 },

    /// A message id the server could not carry as a header.
    #[error("invalid message id: {0}")]
    InvalidMessageId(String),

    /// JetStream did not acknowledge in time: the server is unreachable or overloaded. The
    /// record may or may not have been stored; publishing it again with the same message id
    /// within the duplicate window stores it once.
    #[error("JetStream did not answer within {timeout:?} (is the NATS server reachable?)")]
    TimedOut { timeout: Duration },

    /// The stream reached `max_bytes` and refused the record.
    #[error("the stream {stream} is full (max_bytes {max_bytes}): the record was refused")]
    StreamFull { stream: String, max_bytes: u64 },

    /// The record is larger than the server's `max_payload`.
    #[error("the record of {size} bytes is larger than the NATS server accepts ({max_payload} bytes)")]
    TooLarge { size: usize, max_payload: usize },

    /// The server refused or lost a publish for another reason.
    #[error("publishing to {subject} failed: {reason}")]
    Publish { subject: String, reason: String },

    /// Not connected to the server right now (the client reconnects by itself).
    #[error("not connected to the NATS server (reconnecting)")]
    Disconnected,

    /// A fetch from a partition's consumer failed.
    #[error("fetching from partition {partition} failed: {reason}")]
    Fetch { partition: u32, reason: String },

    /// An acknowledgement (ack, nak or term) was not confirmed by the server. The record is
    /// delivered again after `ack_wait`.
    #[error("the {kind} of record {sequence} was not confirmed: {reason}")]
    Acknowledge { kind: &'static str, sequence: u64, reason: String },

    /// The subscription to results failed.
    #[error("cannot subscribe to results on {subject}: {reason}")]
    Subscribe { subject: String, reason: String },
}
