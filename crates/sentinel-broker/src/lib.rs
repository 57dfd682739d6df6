//! Sentinel's scale-out transport over NATS JetStream: a front-end replica publishes each
//! accepted connection snapshot as a record and answers only once JetStream stored it; scoring
//! workers on any host fetch records from a partition, store their results, and only then
//! acknowledge; results travel back on core NATS to every replica's live view.
//!
//! Records are partitioned by a key (the agent's host name), so that a host's records go to
//! one worker at a time and its feature windows stay on one worker. Which worker owns which
//! partition is decided outside this crate. Payloads are opaque bytes: encoding them is the
//! caller's business.
//!
//! On the server, with the default prefix `sentinel`: the stream `SENTINEL_RECORDS` (work
//! queue, file storage, subjects `sentinel.records.<partition>`, a 2-minute duplicate window,
//! new records refused when full), one durable pull consumer per partition
//! (`SENTINEL_scorer_<partition>`), and the core subject `sentinel.results`.

mod broker;
mod consumer;
mod error;
mod layout;
mod results;
mod settings;

pub use broker::{Broker, DUPLICATE_WINDOW, MAX_ACK_PENDING, Published};
pub use consumer::{Delivery, MAX_FETCH_WAIT, PartitionConsumer};
pub use error::BrokerError;
pub use results::ResultSubscription;
pub use settings::{BrokerSettings, MAX_PARTITIONS};
