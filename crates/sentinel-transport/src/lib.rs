//! What Sentinel's two listeners — the HTTP API and the TCP protocol — share to face the
//! network, so that both refuse the same things the same way:
//!
//! - TLS 1.3 only, with rustls and one crypto provider (aws-lc-rs, [`install_crypto_provider`]
//!   at start-up): [`TlsServer`] builds the server configuration from PEM files, reloads the
//!   certificate without dropping connections ([`TlsServer::reload`]) and optionally requires a
//!   client certificate signed by a given CA (mutual TLS), whose subject names the client
//!   ([`peer_subject`]). [`client_config`] is the matching client side.
//! - Who a client is ([`ClientKey`]: its certificate's subject, else its address) and how many
//!   connections it and everyone may hold ([`ConnectionGate`]).
//! - Refusals counted in a Prometheus counter by reason and logged at a bounded rate
//!   ([`RefusalLog`]), so that a flood of refused connections cannot flood the logs.
//! - The access log both listeners write one JSON line per request to ([`AccessLog`]), through a
//!   bounded queue and a writer thread, to a file rotated by size or to stdout.

mod access_log;
mod client;
mod client_config;
mod gate;
mod provider;
mod refusals;
mod reloadable;
mod rotating_file;
mod subject;
mod tls_server;

pub use access_log::{
    ACCESS_LOG_FILE, AccessEntry, AccessKind, AccessLog, AccessLogDestination, AccessLogError,
    AccessLogSettings, AccessLogWriter, AccessStatus, AddressRendering,
};
pub use client::ClientKey;
pub use client_config::{TlsClientOptions, client_config};
pub use gate::{ConnectionGate, GateLimits, Permit, Refusal};
pub use provider::{crypto_provider, install_crypto_provider};
pub use refusals::{RefusalCounter, RefusalLog};
pub use reloadable::{CertificateError, ReloadableCertificate};
pub use subject::{CertificateSubject, peer_subject};
pub use tls_server::{HandshakeError, TlsOptions, TlsServer};
/// The TLS library, for the types of this crate's signatures (`ServerConfig`, `TlsStream`).
pub use tokio_rustls;
