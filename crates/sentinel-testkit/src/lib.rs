//! What Sentinel's tests and benchmarks share, and nothing the service runs: generated
//! fixtures (PE files of any size, connection records and snapshots, certificates of a private
//! CA), local fakes of the services Sentinel talks to (VirusTotal API v3, CAPE v2) as real HTTP
//! servers on 127.0.0.1, a receiver of webhook calls (a SOAR's hook, Slack), a real SMTP
//! server (aiosmtpd) for alerts, a NATS server with JetStream that can be killed and restarted,
//! scratch PostgreSQL databases,
//! `sentinel serve` as a child process, the one HTTP client of the tests, and the rule for a
//! test whose corpus, data or Python peer is missing ([`Prerequisite`]).
//!
//! Only tests (as a dev-dependency) and the `sentinel bench` command (for its fixtures) use
//! this crate. It depends on third-party crates only, so that any crate's tests can use it
//! without a dependency cycle.

pub mod cape_fixtures;
pub mod certificates;
pub mod connection_records;
pub mod fake_cape;
pub mod fake_virustotal;
pub mod http_client;
pub mod nats_server;
pub mod postgres;
pub mod prerequisite;
pub mod serve_process;
pub mod smtp_server;
pub mod synthetic_pe;
pub mod webhook_receiver;

pub use prerequisite::Prerequisite;
pub use synthetic_pe::{MIN_SYNTHETIC_PE_SIZE, synthetic_pe};
