//! The connection to NATS and what travels over it: records published to the JetStream work
//! queue (answered only once JetStream stored them), a partition's durable consumer for the
//! scoring workers, and results on core NATS for every replica's live view.
//!
//! Nothing here waits without a bound: every JetStream request is limited by
//! `publish_timeout`, so an outage is an error the caller can answer, not a hang. The client
//! reconnects by itself, forever, with a backoff of at most 4 s; requests made while it is away
//! wait for it within their bound.

use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::{
    ContextBuilder, CreateStreamError, CreateStreamErrorKind, GetStreamErrorKind, PublishError,
    PublishErrorKind,
};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event};
use bytes::Bytes;

use crate::consumer::PartitionConsumer;
use crate::layout::{Layout, partition_of};
use crate::results::ResultSubscription;
use crate::settings::Credentials;
use crate::{BrokerError, BrokerSettings};

/// How long the stream remembers a message id: a publish retried within it is stored once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The most records a partition's consumer hands out unacknowledged: a worker that stops
/// acknowledging stops receiving, instead of piling up records it will never score.
pub const MAX_ACK_PENDING: usize = 1024;

/// Messages a subscription buffers before the client drops them (and logs a slow consumer).
/// Fetches ask for at most [`MAX_ACK_PENDING`]; results are a live view that may lose some.
const SUBSCRIPTION_CAPACITY: usize = 4 * MAX_ACK_PENDING;

/// How often the client pings the server: a dead connection is noticed within two pings, so
/// that `is_connected` reflects an outage soon.
const PING_INTERVAL: Duration = Duration::from_secs(10);

/// The least time a connection attempt gets (the client's default).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest message id: it travels as a header and is kept by the stream for the window.
const MAX_MESSAGE_ID_LEN: usize = 256;

/// A connection to the NATS server with the record stream set up. Cheap to clone: clones share
/// the connection.
#[derive(Debug, Clone)]
pub struct Broker {
    client: Client,
    jetstream: async_nats::jetstream::Context,
    layout: Layout,
    ack_wait: Duration,
    timeout: Duration,
    max_bytes: u64,
}

/// What JetStream answered to a record's publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The partition the record went to.
    pub partition: u32,
    /// Its stream sequence (for a duplicate: the sequence of the copy stored first).
    pub sequence: u64,
    /// The message id was seen within the duplicate window: nothing new was stored.
    pub duplicate: bool,
}

impl Broker {
    /// Validates the settings, reads the credentials' files, connects, and creates the record
    /// stream or brings an existing one to the settings. Fails when the server is unreachable,
    /// refuses the credentials, or has no JetStream.
    pub async fn connect(settings: &BrokerSettings) -> Result<Broker, BrokerError> {
        settings.validate()?;
        let address = settings.server_address()?;
        // Checked by `server_address`: the URL holds no credentials, so it may be shown.
        let url = settings.url.clone();
        let mut options = ConnectOptions::new()
            .name("sentinel")
            .ping_interval(PING_INTERVAL)
            // A slow TLS handshake must not fail every reconnection attempt.
            .connection_timeout(settings.publish_timeout.max(CONNECTION_TIMEOUT))
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .require_tls(settings.requires_tls())
            .event_callback(|event| async move { log_event(event) });
        if let Some(ca_file) = &settings.ca_file {
            // The client reads it only while connecting, with a vaguer error: check it first.
            std::fs::File::open(ca_file).map_err(|source| BrokerError::ReadFile {
                setting: "ca_file",
                path: ca_file.clone(),
                source,
            })?;
            options = options.add_root_certificates(ca_file.clone());
        }
        options = match settings.read_credentials()? {
            Credentials::None => options,
            Credentials::Token(token) => options.token(token),
            Credentials::UserPassword { user, password } => options.user_and_password(user, password),
        };
        let client = options.connect(address).await.map_err(|error| {
            let mut reason = error.to_string();
            // rustls' view of a plain-text server or an unknown CA is cryptic on its own.
            if settings.requires_tls() && matches!(error.kind(), ConnectErrorKind::Tls | ConnectErrorKind::Io)
            {
                reason.push_str(
                    " (TLS is required: does the server offer TLS, and did the CA of ca_file, or a system \
                     root, sign its certificate?)",
                );
            }
            BrokerError::Connect { url: url.clone(), reason }
        })?;
        if !client.server_info().jetstream {
            return Err(BrokerError::NoJetStream { url });
        }
        let jetstream = ContextBuilder::new().timeout(settings.publish_timeout).build(client.clone());
        let layout = Layout::new(&settings.prefix, settings.partitions);
        let broker = Broker {
            client,
            jetstream,
            layout,
            ack_wait: settings.ack_wait,
            timeout: settings.publish_timeout,
            max_bytes: settings.max_bytes,
        };
        broker.set_up_stream(&url).await?;
        Ok(broker)
    }

    /// Creates the stream, or updates it to the settings (`max_bytes` may change; the
    /// retention and storage of an existing stream cannot, and the server says so). Refuses
    /// another number of partitions while the stream holds records: they would be stranded in
    /// partitions no worker reads, or a host's records split between two workers.
    async fn set_up_stream(&self, url: &str) -> Result<(), BrokerError> {
        let stream = self.layout.stream();
        let existing = match tokio::time::timeout(self.timeout, self.jetstream.get_stream(&stream)).await {
            Err(_elapsed) => return Err(BrokerError::TimedOut { timeout: self.timeout }),
            Ok(Ok(existing)) => Some(existing.cached_info().clone()),
            Ok(Err(error)) => match error.kind() {
                GetStreamErrorKind::JetStream(jetstream)
                    if jetstream.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    None
                }
                GetStreamErrorKind::JetStream(jetstream) if is_jetstream_disabled(&jetstream) => {
                    return Err(BrokerError::NoJetStream { url: url.to_owned() });
                }
                _ => return Err(BrokerError::Stream { stream, reason: error.to_string() }),
            },
        };
        if let Some(info) = existing {
            let existing_partitions =
                info.config.description.as_deref().and_then(Layout::partitions_described);
            match existing_partitions {
                Some(existing) if existing != self.layout.partitions && info.state.messages > 0 => {
                    return Err(BrokerError::PartitionsChanged {
                        stream,
                        existing,
                        configured: self.layout.partitions,
                        records: info.state.messages,
                    });
                }
                _ => {}
            }
        }
        let config = stream::Config {
            name: stream.clone(),
            description: Some(self.layout.description()),
            subjects: vec![self.layout.records_wildcard()],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            discard: DiscardPolicy::New,
            // Checked by `validate`: within i64.
            max_bytes: i64::try_from(self.max_bytes).unwrap_or(i64::MAX),
            duplicate_window: DUPLICATE_WINDOW,
            ..stream::Config::default()
        };
        // Created by another replica since `get_stream`: this updates it to the same config.
        let result = tokio::time::timeout(self.timeout, self.jetstream.create_or_update_stream(config)).await;
        match result {
            Err(_elapsed) => Err(BrokerError::TimedOut { timeout: self.timeout }),
            Ok(Ok(_info)) => Ok(()),
            Ok(Err(error)) => Err(stream_error(error, &stream, url, self.timeout)),
        }
    }

    /// The number of partitions.
    pub fn partitions(&self) -> u32 {
        self.layout.partitions
    }

    /// The partition of a key (the agent's host name): the first 8 bytes of its SHA-256,
    /// big-endian, modulo the number of partitions. The same on every replica and release.
    pub fn partition_of(&self, key: &str) -> u32 {
        partition_of(key, self.layout.partitions)
    }

    /// Publishes a record to its key's partition and waits until JetStream stored it, at most
    /// `publish_timeout`. Stored means written to the stream's files: it survives a crash of
    /// the server process; a crash of its machine may lose what the server had not yet
    /// synced (nats-server syncs every 2 minutes by default). `msg_id` identifies the record: publishing the same id again
    /// within [`DUPLICATE_WINDOW`] stores nothing and answers `duplicate`, so a caller that
    /// got an error retries with the same id. 1 to 256 visible ASCII characters.
    pub async fn publish_record(
        &self,
        key: &str,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<Published, BrokerError> {
        check_message_id(msg_id)?;
        let partition = self.partition_of(key);
        let subject = self.layout.records_subject(partition);
        let size = payload.len();
        let message = PublishMessage::build()
            .payload(payload)
            .message_id(msg_id)
            // A subject no other stream may capture; should one ever, the publish fails.
            .expected_stream(self.layout.stream());
        let publish = async {
            let acknowledgement = self.jetstream.send_publish(subject.clone(), message).await?;
            acknowledgement.await
        };
        match tokio::time::timeout(self.timeout, publish).await {
            Err(_elapsed) => Err(BrokerError::TimedOut { timeout: self.timeout }),
            Ok(Err(error)) => Err(self.publish_error(error, subject, size)),
            Ok(Ok(ack)) => Ok(Published { partition, sequence: ack.sequence, duplicate: ack.duplicate }),
        }
    }

    fn publish_error(&self, error: PublishError, subject: String, size: usize) -> BrokerError {
        match error.kind() {
            PublishErrorKind::TimedOut => BrokerError::TimedOut { timeout: self.timeout },
            PublishErrorKind::MaxPayloadExceeded => {
                BrokerError::TooLarge { size, max_payload: self.client.server_info().max_payload }
            }
            PublishErrorKind::StreamNotFound => BrokerError::Publish {
                subject,
                reason: format!("no stream takes it (was {} deleted?)", self.layout.stream()),
            },
            _ => {
                // A store failure (10077) is a full stream when the server says so; any other
                // (a failing disk) keeps the server's words.
                let full = std::error::Error::source(&error)
                    .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
                    .is_some_and(|jetstream| {
                        jetstream.error_code() == ErrorCode::STREAM_STORE_FAILED
                            && jetstream.to_string().starts_with("maximum bytes exceeded")
                    });
                if full {
                    BrokerError::StreamFull { stream: self.layout.stream(), max_bytes: self.max_bytes }
                } else {
                    BrokerError::Publish { subject, reason: error.to_string() }
                }
            }
        }
    }

    /// The durable consumer of a partition, created or updated to the settings (`ack_wait`).
    /// Records are delivered in stream order; one not acknowledged within `ack_wait` (or
    /// nak'd) is delivered again, any number of times. Which worker consumes which partition
    /// is decided outside the broker: two workers fetching from one partition share its
    /// records, and a host's records are then no longer scored in order.
    pub async fn consumer(&self, partition: u32) -> Result<PartitionConsumer, BrokerError> {
        if partition >= self.layout.partitions {
            return Err(BrokerError::NoSuchPartition { partition, partitions: self.layout.partitions });
        }
        let name = self.layout.consumer(partition);
        let config = pull::Config {
            durable_name: Some(name),
            description: Some(format!("Sentinel's scoring of partition {partition}")),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            // Unlimited: a record is never given up because its worker died.
            max_deliver: -1,
            filter_subject: self.layout.records_subject(partition),
            max_ack_pending: MAX_ACK_PENDING as i64,
            ..pull::Config::default()
        };
        let create = self.jetstream.create_consumer_on_stream(config, self.layout.stream());
        match tokio::time::timeout(self.timeout, create).await {
            Err(_elapsed) => Err(BrokerError::TimedOut { timeout: self.timeout }),
            Ok(Err(error)) => Err(BrokerError::Consumer { partition, reason: error.to_string() }),
            Ok(Ok(consumer)) => {
                Ok(PartitionConsumer::new(partition, consumer, self.client.clone(), self.timeout))
            }
        }
    }

    /// Publishes a result on core NATS (`<prefix>.results`) to every subscribed replica. Not
    /// stored: a replica that is not subscribed at that moment never sees it. Fails only when
    /// the client cannot take it within `publish_timeout` (its buffer is full during an outage).
    pub async fn publish_result(&self, payload: Bytes) -> Result<(), BrokerError> {
        let subject = self.layout.results_subject();
        match tokio::time::timeout(self.timeout, self.client.publish(subject.clone(), payload)).await {
            Err(_elapsed) => Err(BrokerError::TimedOut { timeout: self.timeout }),
            Ok(Err(error)) => Err(BrokerError::Publish { subject, reason: error.to_string() }),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Subscribes to the results every replica publishes (including this one's), from now on.
    /// The subscription survives reconnections; results published while disconnected are lost.
    pub async fn results(&self) -> Result<ResultSubscription, BrokerError> {
        let subject = self.layout.results_subject();
        match tokio::time::timeout(self.timeout, self.client.subscribe(subject.clone())).await {
            Err(_elapsed) => Err(BrokerError::TimedOut { timeout: self.timeout }),
            Ok(Err(error)) => Err(BrokerError::Subscribe { subject, reason: error.to_string() }),
            Ok(Ok(subscriber)) => Ok(ResultSubscription::new(subscriber)),
        }
    }

    /// Whether the client is connected to the server now (for health checks). While it is
    /// not, it keeps reconnecting.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

/// Refuses an id the server could not carry as a header value.
fn check_message_id(msg_id: &str) -> Result<(), BrokerError> {
    if msg_id.is_empty() || msg_id.len() > MAX_MESSAGE_ID_LEN {
        return Err(BrokerError::InvalidMessageId(format!(
            "it has {} bytes, not 1 to {MAX_MESSAGE_ID_LEN}",
            msg_id.len()
        )));
    }
    if !msg_id.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(BrokerError::InvalidMessageId("only visible ASCII characters are allowed".into()));
    }
    Ok(())
}

/// What the stream's creation or update failed at.
fn stream_error(error: CreateStreamError, stream: &str, url: &str, timeout: Duration) -> BrokerError {
    match error.kind() {
        CreateStreamErrorKind::JetStreamUnavailable => BrokerError::NoJetStream { url: url.to_owned() },
        CreateStreamErrorKind::TimedOut => BrokerError::TimedOut { timeout },
        CreateStreamErrorKind::JetStream(jetstream) if is_jetstream_disabled(&jetstream) => {
            BrokerError::NoJetStream { url: url.to_owned() }
        }
        _ => BrokerError::Stream { stream: stream.to_owned(), reason: error.to_string() },
    }
}

/// JetStream's answer when it is off for the server or for this account.
fn is_jetstream_disabled(error: &async_nats::jetstream::Error) -> bool {
    [ErrorCode::JETSTREAM_NOT_ENABLED, ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT]
        .contains(&error.error_code())
}

/// The client's connection events, for the operator: outages and their end.
fn log_event(event: Event) {
    match event {
        Event::Connected => tracing::info!("connected to the NATS server"),
        Event::Disconnected => tracing::warn!("disconnected from the NATS server: reconnecting"),
        Event::SlowConsumer(_) => {
            tracing::warn!("a NATS subscription is too slow: messages were dropped")
        }
        other => tracing::warn!("NATS: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handles_can_be_shared_between_tasks() {
        fn shared<T: Send + Sync + 'static>() {}
        shared::<Broker>();
        shared::<crate::PartitionConsumer>();
        shared::<crate::Delivery>();
        shared::<crate::ResultSubscription>();
        shared::<BrokerError>();
    }

    #[test]
    fn message_ids_must_fit_a_header() {
        check_message_id("host-1/42").unwrap();
        check_message_id(&"x".repeat(MAX_MESSAGE_ID_LEN)).unwrap();
        let message = check_message_id("").unwrap_err().to_string();
        assert!(message.contains("0 bytes, not 1 to 256"), "{message}");
        assert!(check_message_id(&"x".repeat(MAX_MESSAGE_ID_LEN + 1)).is_err());
        let message = check_message_id("a\r\nNats-Expected-Stream: X").unwrap_err().to_string();
        assert!(message.contains("visible ASCII"), "{message}");
        assert!(check_message_id("with space").is_err());
    }
}
