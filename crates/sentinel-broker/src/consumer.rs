//! A scoring worker's side of one partition: fetch a batch of records, score them, store the
//! results idempotently by record, then acknowledge each. A record not acknowledged within
//! `ack_wait` (the worker died, or lost the partition) is delivered again, to whoever fetches
//! the partition next; the stream deletes a record once it is acknowledged.
//!
//! Fetches are one-shot pull requests bounded in time, not a long-lived push subscription: a
//! worker that stops fetching simply stops receiving, and nothing can stall unnoticed.

use std::fmt;
use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::Acker;
use bytes::Bytes;
use futures_util::StreamExt;

use crate::BrokerError;
use crate::broker::MAX_ACK_PENDING;

/// The longest a fetch may wait for a first record.
pub const MAX_FETCH_WAIT: Duration = Duration::from_secs(300);

/// One partition's durable consumer (see [`crate::Broker::consumer`]).
#[derive(Debug)]
pub struct PartitionConsumer {
    partition: u32,
    consumer: PullConsumer,
    client: Client,
    timeout: Duration,
}

/// A record delivered to a worker. Acknowledge it with [`Delivery::ack`] once its results are
/// stored, [`Delivery::nak`] it to have it delivered again, or [`Delivery::term`] it if it can
/// never be processed; left alone, it is delivered again after `ack_wait`.
pub struct Delivery {
    /// The partition it came from.
    pub partition: u32,
    /// Its stream sequence: the same on every delivery of this record, and never given to
    /// another record of this stream (it starts again at 1 only if the stream is deleted and
    /// created again).
    pub sequence: u64,
    /// How many times it has been delivered, this time included (1 the first time).
    pub delivered: u64,
    /// The message id it was published with.
    pub msg_id: Option<String>,
    /// The record, as published.
    pub payload: Bytes,
    acker: Acker,
    timeout: Duration,
}

impl PartitionConsumer {
    pub(crate) fn new(partition: u32, consumer: PullConsumer, client: Client, timeout: Duration) -> Self {
        PartitionConsumer { partition, consumer, client, timeout }
    }

    /// The partition this consumer reads.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Fetches up to `max` records (1 to 1024): returns as soon as any are available, or an
    /// empty batch once `wait` passed without one (at most 5 min). Records pending redelivery
    /// come first. A worker holding [`MAX_ACK_PENDING`] unacknowledged records of the
    /// partition gets nothing more until it acknowledges some. Memory: `max` records of at most
    /// the server's `max_payload` (1 MiB by default) each.
    ///
    /// Fails at once with [`BrokerError::Disconnected`] while the client is reconnecting: wait
    /// a little before fetching again. Should the connection drop during a fetch, it ends
    /// within `wait` + `publish_timeout`, and records the server sent meanwhile are delivered
    /// again after `ack_wait`.
    pub async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError> {
        let invalid = |reason: String| Err(BrokerError::Fetch { partition: self.partition, reason });
        if !(1..=MAX_ACK_PENDING).contains(&max) {
            return invalid(format!("max {max} is not in 1..={MAX_ACK_PENDING}"));
        }
        if wait > MAX_FETCH_WAIT {
            return invalid(format!("wait {wait:?} is longer than {MAX_FETCH_WAIT:?}"));
        }
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(BrokerError::Disconnected);
        }
        let fetch_error = |reason: String| BrokerError::Fetch { partition: self.partition, reason };
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(max)
            .expires(wait.max(Duration::from_millis(1)))
            .messages()
            .await
            .map_err(|error| fetch_error(error.to_string()))?;
        let mut deliveries = Vec::new();
        // The server ends the batch itself at `wait`; the client's own guard is 5 s later.
        // This bound is for a server that vanished mid-batch.
        let deadline = tokio::time::Instant::now() + wait + self.timeout;
        loop {
            match tokio::time::timeout_at(deadline, batch.next()).await {
                Err(_) | Ok(None) => break,
                Ok(Some(Ok(message))) => deliveries.push(self.delivery(message)?),
                // Records already received stay with this worker; the error shows next time.
                Ok(Some(Err(_))) if !deliveries.is_empty() => break,
                Ok(Some(Err(error))) => return Err(fetch_error(error.to_string())),
            }
        }
        Ok(deliveries)
    }

    fn delivery(&self, message: async_nats::jetstream::Message) -> Result<Delivery, BrokerError> {
        let info = message
            .info()
            .map_err(|error| BrokerError::Fetch { partition: self.partition, reason: error.to_string() })?;
        let (sequence, delivered) = (info.stream_sequence, info.delivered.max(0) as u64);
        let (message, acker) = message.split();
        let msg_id = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|value| value.as_str().to_owned());
        Ok(Delivery {
            partition: self.partition,
            sequence,
            delivered,
            msg_id,
            payload: message.payload,
            acker,
            timeout: self.timeout,
        })
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Delivery")
            .field("partition", &self.partition)
            .field("sequence", &self.sequence)
            .field("delivered", &self.delivered)
            .field("msg_id", &self.msg_id)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Acknowledges the record once its results are stored, and waits for the server to
    /// confirm (at most `publish_timeout`): after `Ok` it is deleted and never delivered again.
    pub async fn ack(&self) -> Result<(), BrokerError> {
        self.acknowledge("ack", AckKind::Ack).await
    }

    /// Hands the record back to be delivered again after `delay` (to this or another worker).
    pub async fn nak(&self, delay: Duration) -> Result<(), BrokerError> {
        self.acknowledge("nak", AckKind::Nak(Some(delay))).await
    }

    /// Gives the record up for good (it can never be decoded): the stream deletes it.
    pub async fn term(&self) -> Result<(), BrokerError> {
        self.acknowledge("term", AckKind::Term).await
    }

    async fn acknowledge(&self, kind: &'static str, ack: AckKind) -> Result<(), BrokerError> {
        let failed = |reason: String| BrokerError::Acknowledge { kind, sequence: self.sequence, reason };
        match tokio::time::timeout(self.timeout, self.acker.double_ack_with(ack)).await {
            Err(_elapsed) => Err(failed(format!("no answer within {:?}", self.timeout))),
            Ok(Err(error)) => Err(failed(error.to_string())),
            Ok(Ok(())) => Ok(()),
        }
    }
}
