//! The NATS JetStream transport of connection records and results (skeleton).
