//! The live view of results: a subscription to `<prefix>.results` on core NATS, which every
//! scoring worker publishes to and every replica forwards to its WebSocket clients. At most
//! once: nothing is stored, and a subscriber that falls too far behind loses results (the
//! client logs a slow consumer) rather than growing without bound.

use async_nats::Subscriber;
use bytes::Bytes;
use futures_util::StreamExt;

/// Results as they are published, from the moment of subscribing.
#[derive(Debug)]
pub struct ResultSubscription {
    subscriber: Subscriber,
}

impl ResultSubscription {
    pub(crate) fn new(subscriber: Subscriber) -> ResultSubscription {
        ResultSubscription { subscriber }
    }

    /// The next result's payload. Waits through reconnections (the subscription is renewed
    /// with the connection); `None` only if the client's connection ended for good.
    pub async fn next(&mut self) -> Option<Bytes> {
        self.subscriber.next().await.map(|message| message.payload)
    }
}
