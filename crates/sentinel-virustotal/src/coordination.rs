//! What several replicas of the malware server must share to spend VirusTotal quota once, not
//! once per replica, when they serve one results dataset: the claims of single flight (one
//! replica asks about a hash while the others wait for its report) and each key's rate limits.
//!
//! By default a [`crate::VirusTotal`] keeps both in process (`single_flight.rs`,
//! `rate_limit.rs`), which is exact for one process. A server whose replicas share a database
//! gives it a [`Coordination`] backed by that database instead
//! ([`crate::VirusTotal::with_coordination`]); the in-process flight still groups each
//! replica's own requests first, so a replica makes at most one claim per hash at a time.
//!
//! The methods are blocking (a database round trip); the client calls them on tokio's blocking
//! threads. Keys are known here only by their [`KeyId`]; times are the client's clock.

use std::sync::Arc;
use std::time::Duration;

use crate::key::KeyId;
use crate::service::CacheError;
use crate::settings::TierLimits;
use crate::verdict::FileHash;

/// One request's place in its key's limits, to give back if it never reached VirusTotal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The time (since the epoch) the request may go at.
    pub at: Duration,
    /// The UTC day (days since the epoch) it was counted in.
    pub day: u64,
}

/// A rate limiter's answer to one request of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go now.
    Now(Slot),
    /// A slot is reserved this far in the future: wait, then go.
    After(Slot, Duration),
    /// Refused; the limits allow a request again after this wait.
    Refused(Duration),
}

/// Each key's minute window, day count and hold, kept where every replica sees them. Each
/// method is atomic per key across replicas.
pub trait QuotaLedger: Send + Sync + 'static {
    /// Admits one request of `key` at `now` under `limits`: within the minute limit (sliding
    /// window; a slot at most `max_wait` ahead is reserved), the day limit (per UTC day) and
    /// any hold.
    fn admit(
        &self,
        key: KeyId,
        limits: TierLimits,
        now: Duration,
        max_wait: Duration,
    ) -> Result<Admission, CacheError>;
    /// Gives back `slot`: its request never reached VirusTotal, so it counts neither in the
    /// minute nor in the day.
    fn release(&self, key: KeyId, slot: Slot) -> Result<(), CacheError>;
    /// Admits no request of `key` before `until` (VirusTotal answered 429).
    fn hold_back(&self, key: KeyId, until: Duration) -> Result<(), CacheError>;
}

/// How a flight ended, as far as replicas waiting on it may answer it without a call of
/// their own: only outcomes about the file, never about the leader's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedOutcome {
    /// VirusTotal does not know the file (and the leader did not upload it).
    NotFound,
}

impl SharedOutcome {
    /// The outcome's stable name, as it is recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            SharedOutcome::NotFound => "not_found",
        }
    }

    /// The outcome named `name`; `None` for a name this version does not know.
    pub fn parse(name: &str) -> Option<SharedOutcome> {
        (name == "not_found").then_some(SharedOutcome::NotFound)
    }
}

/// The result of trying to claim a hash's flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This replica leads the flight; it renews the claim while its calls run, then releases it.
    Claimed,
    /// Another replica leads it.
    HeldElsewhere,
}

/// Where another replica's flight stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlightState {
    /// Still led by a live replica.
    Held,
    /// Released by its leader, with the outcome it shared (if any).
    Released(Option<SharedOutcome>),
    /// Nobody leads it: never claimed, swept, or the leader's lease ran out (it died).
    Vacant,
}

/// Claims of single flight across replicas: leases held by one replica, taken atomically.
pub trait FlightClaims: Send + Sync + 'static {
    /// How long a claim lasts without renewal: the time a dead leader keeps others waiting.
    fn lease(&self) -> Duration;
    /// Claims the flight of `sha256` at `now` for this replica, unless another one holds it.
    fn claim(&self, sha256: FileHash, now: Duration) -> Result<Claim, CacheError>;
    /// Extends this replica's claim by a lease from `now`; `false` if it is no longer this
    /// replica's (it expired and another replica took it).
    fn renew(&self, sha256: FileHash, now: Duration) -> Result<bool, CacheError>;
    /// Ends this replica's claim, recording `outcome` for the replicas waiting on it.
    fn release(
        &self,
        sha256: FileHash,
        now: Duration,
        outcome: Option<SharedOutcome>,
    ) -> Result<(), CacheError>;
    /// Where the flight of `sha256` stands at `now`.
    fn state(&self, sha256: FileHash, now: Duration) -> Result<FlightState, CacheError>;
}

/// What replicas share: flight claims and the keys' ledger.
#[derive(Clone)]
pub struct Coordination {
    pub claims: Arc<dyn FlightClaims>,
    pub ledger: Arc<dyn QuotaLedger>,
}

impl std::fmt::Debug for Coordination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordination").field("lease", &self.claims.lease()).finish_non_exhaustive()
    }
}

/// Runs a blocking call of the shared state on tokio's blocking threads.
pub(crate) async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, CacheError> + Send + 'static,
) -> Result<T, CacheError> {
    tokio::task::spawn_blocking(call).await.unwrap_or_else(|error| Err(error.into()))
}
