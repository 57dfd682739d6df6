//! Drives a CAPE v2 sandbox over its REST API: submit a file, wait for the
//! analysis, read the API calls of the report.
//!
//! ```no_run
//! # async fn example() -> Result<(), sentinel_sandbox::SandboxError> {
//! use sentinel_sandbox::{CapeClient, SandboxSettings};
//! let client = CapeClient::new(SandboxSettings { base_url: "http://cape:8000".into(), ..Default::default() })?;
//! let analysis = client.analyse(b"MZ...", "sample.exe").await?;
//! println!("task {}: {} calls", analysis.task_id, analysis.behaviour.sequence.len());
//! # Ok(()) }
//! ```
//!
//! Reading the report itself (merging processes, limits, CAPE-to-Cuckoo API
//! names) is `sentinel_behaviour::parse_cape_report`, shared with reports that
//! clients send.

mod client;
mod error;
mod settings;

pub use client::{CapeAnalysis, CapeClient, TaskStatus};
pub use error::{FailureReason, SandboxError};
pub use settings::{ApiToken, SandboxSettings};
