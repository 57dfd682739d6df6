//! Sentinel's VirusTotal client (API v3), the VirusTotal step of the malware
//! server's commands 3, 4 and 6.
//!
//! [`VirusTotal::lookup`] answers "what does VirusTotal say about this hash?"
//! for one client request: from the results dataset when a fresh report is
//! stored (behind the [`ReportCache`] trait the server implements), otherwise
//! with one upstream call per hash however many clients ask at once (single
//! flight), made with the requesting client's key within that key's rate
//! limits; unknown files are uploaded only when the settings allow it. The
//! answer is a compact [`Verdict`], scored and labelled by a [`VerdictRule`].
//! Replicas sharing one results dataset share flights and rate limits too
//! through a [`Coordination`]. Keys are secrets: see [`ApiKey`] and [`KeyHasher`]. `docs/virustotal.md`
//! documents the behaviour, the settings and the scoring rule.

mod api;
mod clock;
mod coordination;
mod error;
mod key;
mod metrics;
mod rate_limit;
mod service;
mod settings;
mod single_flight;
mod verdict;
mod wire;

pub use clock::{Clock, Sleep, SystemClock};
pub use coordination::{
    Admission, Claim, Coordination, FlightClaims, FlightState, QuotaLedger, SharedOutcome, Slot,
};
pub use error::{ErrorKind, QuotaOrigin, SettingsError, VtError};
pub use key::{ApiKey, KeyHasher, KeyId};
pub use metrics::MetricsSnapshot;
pub use service::{CacheError, Lookup, LookupRequest, ReportCache, Source, VirusTotal};
pub use settings::{TierLimits, VirusTotalSettings};
pub use verdict::{AnalysisStats, EngineCategory, EngineResult, FileHash, Label, Verdict, VerdictRule};
