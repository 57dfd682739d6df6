//! Per-key request limits, so that Sentinel never spends a client's key faster
//! than its VirusTotal tier allows (a public key: 4 requests a minute, 500 a
//! day) and VirusTotal does not have to refuse.
//!
//! Keys are known here only by their [`KeyId`]. The minute limit is a sliding
//! window: the times of the last requests are kept, and a request that would
//! exceed the limit is given the earliest time it may go. If that is within
//! `max_queue_wait` the slot is reserved and the request waits for it (so
//! concurrent waiters of one key go one after another instead of all at once);
//! otherwise it is refused with the wait as a hint. The day limit counts per
//! UTC day and refuses once spent. After VirusTotal answers 429 for a key, the
//! key is held back for a minute. A request that never reached VirusTotal (no
//! connection could be made) gives its slot back: an outage spends no quota.
//!
//! The windows are kept by a [`QuotaLedger`]: in process by default
//! ([`LocalLedger`]), or one shared by every replica of a fleet (see
//! `coordination.rs`), so that each key's limits count once across the fleet.
//! A shared ledger that cannot be consulted refuses the request rather than
//! risk spending the key beyond its tier.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::clock::Clock;
use crate::coordination::{Admission, QuotaLedger, Slot, blocking};
use crate::error::{QuotaOrigin, VtError};
use crate::key::KeyId;
use crate::settings::TierLimits;

const MINUTE: Duration = Duration::from_secs(60);
const DAY_SECS: u64 = 86_400;
/// Size of the key table below which no sweep of idle keys is made.
const SWEEP_FLOOR: usize = 1024;

pub(crate) struct RateLimiter {
    clock: Arc<dyn Clock>,
    default_tier: TierLimits,
    key_limits: BTreeMap<KeyId, TierLimits>,
    max_wait: Duration,
    ledger: Ledger,
}

/// Where the windows are kept.
enum Ledger {
    /// In this process: consulted inline, it cannot fail.
    Local(LocalLedger),
    /// Shared with other replicas: consulted on a blocking thread.
    Shared(Arc<dyn QuotaLedger>),
}

/// The in-process ledger: one window per key seen recently.
pub(crate) struct LocalLedger {
    state: Mutex<Keys>,
}

struct Keys {
    windows: HashMap<KeyId, KeyWindow>,
    /// The table is swept of idle keys when it grows past this size.
    sweep_at: usize,
}

#[derive(Default)]
struct KeyWindow {
    /// Times (since the epoch) of the requests of the last minute, reservations
    /// included, in increasing order.
    recent: VecDeque<Duration>,
    /// The UTC day `used_today` counts.
    day: u64,
    used_today: u32,
    /// No request before this time (set after VirusTotal's 429).
    held_until: Duration,
}

impl RateLimiter {
    /// A limiter keeping its windows in process, or in `shared` when given.
    pub(crate) fn new(
        clock: Arc<dyn Clock>,
        default_tier: TierLimits,
        key_limits: BTreeMap<KeyId, TierLimits>,
        max_wait: Duration,
        shared: Option<Arc<dyn QuotaLedger>>,
    ) -> RateLimiter {
        let ledger = match shared {
            Some(ledger) => Ledger::Shared(ledger),
            None => Ledger::Local(LocalLedger::new()),
        };
        RateLimiter { clock, default_tier, key_limits, max_wait, ledger }
    }

    /// Waits until `key` may make one request, or refuses with a quota error.
    /// A reserved slot stays spent if the caller gives up waiting.
    pub(crate) async fn acquire(&self, key: KeyId) -> Result<Slot, VtError> {
        let limits = self.key_limits.get(&key).copied().unwrap_or(self.default_tier);
        let now = self.clock.now();
        let max_wait = self.max_wait;
        let admission = match &self.ledger {
            Ledger::Local(ledger) => ledger.admit_now(key, limits, now, max_wait),
            Ledger::Shared(ledger) => {
                let ledger = Arc::clone(ledger);
                blocking(move || ledger.admit(key, limits, now, max_wait))
                    .await
                    .map_err(|error| VtError::SharedState(format!("the keys' shared ledger: {error}")))?
            }
        };
        match admission {
            Admission::Now(slot) => Ok(slot),
            Admission::After(slot, wait) => {
                self.clock.sleep(wait).await;
                Ok(slot)
            }
            Admission::Refused(wait) => {
                Err(VtError::QuotaExceeded { origin: QuotaOrigin::LocalLimit, retry_after: Some(wait) })
            }
        }
    }

    /// Gives back `slot` of `key`: its request never reached VirusTotal, so it
    /// counts neither in the minute nor in the day.
    pub(crate) async fn release(&self, key: KeyId, slot: Slot) {
        match &self.ledger {
            Ledger::Local(ledger) => ledger.release_now(key, slot),
            Ledger::Shared(ledger) => {
                let ledger = Arc::clone(ledger);
                if let Err(error) = blocking(move || ledger.release(key, slot)).await {
                    tracing::warn!(key_id = %key, %error, "giving a slot back to the shared ledger failed");
                }
            }
        }
    }

    /// Holds `key` back for a minute: VirusTotal said its quota is spent.
    pub(crate) async fn hold_back(&self, key: KeyId) {
        let until = self.clock.now() + MINUTE;
        match &self.ledger {
            Ledger::Local(ledger) => ledger.hold_now(key, until),
            Ledger::Shared(ledger) => {
                let ledger = Arc::clone(ledger);
                if let Err(error) = blocking(move || ledger.hold_back(key, until)).await {
                    tracing::warn!(key_id = %key, %error, "holding a key back in the shared ledger failed");
                }
            }
        }
    }
}

impl LocalLedger {
    fn new() -> LocalLedger {
        LocalLedger { state: Mutex::new(Keys { windows: HashMap::new(), sweep_at: SWEEP_FLOOR }) }
    }

    fn release_now(&self, key: KeyId, slot: Slot) {
        let mut keys = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(window) = keys.windows.get_mut(&key) else { return };
        if let Some(index) = window.recent.iter().rposition(|&time| time == slot.at) {
            window.recent.remove(index);
        }
        if window.day == slot.day {
            window.used_today = window.used_today.saturating_sub(1);
        }
    }

    fn hold_now(&self, key: KeyId, until: Duration) {
        let mut keys = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let window = keys.windows.entry(key).or_default();
        window.held_until = window.held_until.max(until);
    }

    fn admit_now(&self, key: KeyId, limits: TierLimits, now: Duration, max_wait: Duration) -> Admission {
        let today = now.as_secs() / DAY_SECS;
        let mut keys = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if keys.windows.len() >= keys.sweep_at {
            keys.sweep(now, today);
        }
        let window = keys.windows.entry(key).or_default();

        if window.day != today {
            window.day = today;
            window.used_today = 0;
        }
        if window.used_today >= limits.requests_per_day {
            let next_day = Duration::from_secs((today + 1) * DAY_SECS);
            return Admission::Refused(next_day.saturating_sub(now));
        }

        let horizon = now.saturating_sub(MINUTE);
        while window.recent.front().is_some_and(|&time| time <= horizon) {
            window.recent.pop_front();
        }
        let per_minute = limits.requests_per_minute as usize;
        let mut start = now.max(window.held_until);
        if window.recent.len() >= per_minute {
            // The slot opens a minute after the request `per_minute` places back.
            start = start.max(window.recent[window.recent.len() - per_minute] + MINUTE);
        }
        if let Some(&last) = window.recent.back() {
            start = start.max(last);
        }
        let wait = start.saturating_sub(now);
        if wait > max_wait {
            return Admission::Refused(wait);
        }
        window.recent.push_back(start);
        window.used_today += 1;
        let slot = Slot { at: start, day: today };
        if wait.is_zero() { Admission::Now(slot) } else { Admission::After(slot, wait) }
    }
}

impl Keys {
    /// Forgets keys that constrain nothing any more: no request in the last
    /// minute, not held back, and no requests counted today. Keys used today
    /// are kept so that the day limit holds; the table is bounded by the number
    /// of keys seen in a day.
    fn sweep(&mut self, now: Duration, today: u64) {
        let horizon = now.saturating_sub(MINUTE);
        self.windows.retain(|_, window| {
            window.recent.back().is_some_and(|&time| time > horizon)
                || window.held_until > now
                || (window.day == today && window.used_today > 0)
        });
        self.sweep_at = (self.windows.len() * 2).max(SWEEP_FLOOR);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::clock::Sleep;

    /// A clock that only moves when told to.
    struct ManualClock(AtomicU64);

    impl ManualClock {
        fn advance(&self, by: Duration) {
            self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Duration {
            Duration::from_millis(self.0.load(Ordering::SeqCst))
        }
        fn sleep(&self, _: Duration) -> Sleep {
            Box::pin(std::future::ready(()))
        }
    }

    /// 10:00:00 UTC on some day.
    const START_MS: u64 = (20_000 * DAY_SECS + 10 * 3600) * 1000;

    fn limiter(limits: TierLimits, max_wait: Duration) -> (Arc<ManualClock>, RateLimiter) {
        let clock = Arc::new(ManualClock(AtomicU64::new(START_MS)));
        let limiter = RateLimiter::new(clock.clone(), limits, BTreeMap::new(), max_wait, None);
        (clock, limiter)
    }

    fn local(limiter: &RateLimiter) -> &LocalLedger {
        let Ledger::Local(ledger) = &limiter.ledger else { panic!("an in-process limiter") };
        ledger
    }

    /// The admission `acquire` would get, without waiting for it.
    fn admit_raw(limiter: &RateLimiter, key: KeyId) -> Admission {
        let limits = limiter.key_limits.get(&key).copied().unwrap_or(limiter.default_tier);
        local(limiter).admit_now(key, limits, limiter.clock.now(), limiter.max_wait)
    }

    fn key(byte: u8) -> KeyId {
        KeyId::from_hex(&hex::encode([byte; 32])).unwrap()
    }

    /// An admission without its slot: what the tests compare.
    #[derive(Debug, PartialEq, Eq)]
    enum Answer {
        Now,
        After(Duration),
        Refused(Duration),
    }

    fn admit(limiter: &RateLimiter, key: KeyId) -> Answer {
        match admit_raw(limiter, key) {
            Admission::Now(_) => Answer::Now,
            Admission::After(_, wait) => Answer::After(wait),
            Admission::Refused(wait) => Answer::Refused(wait),
        }
    }

    const PUBLIC: TierLimits = TierLimits { requests_per_minute: 4, requests_per_day: 500 };

    #[test]
    fn a_public_key_gets_four_requests_a_minute_then_queues_or_is_refused() {
        let (clock, limiter) = limiter(PUBLIC, Duration::from_secs(20));
        for second in 0..4 {
            assert_eq!(admit(&limiter, key(1)), Answer::Now);
            clock.advance(Duration::from_secs(10 + second));
        }
        // 46 s after the first request: its slot opens in 14 s, within the 20 s queue.
        assert_eq!(admit(&limiter, key(1)), Answer::After(Duration::from_secs(14)));
        // The next slot is 10 s later again (24 s away): refused with that hint.
        assert_eq!(admit(&limiter, key(1)), Answer::Refused(Duration::from_secs(24)));
        // Another key is not affected.
        assert_eq!(admit(&limiter, key(2)), Answer::Now);
        clock.advance(Duration::from_secs(60));
        assert_eq!(admit(&limiter, key(1)), Answer::Now);
    }

    #[test]
    fn concurrent_waiters_are_spread_over_the_window() {
        let (_clock, limiter) =
            limiter(TierLimits { requests_per_minute: 2, requests_per_day: 100 }, MINUTE * 5);
        let admissions: Vec<_> = (0..6).map(|_| admit(&limiter, key(1))).collect();
        let secs = |s| Answer::After(Duration::from_secs(s));
        assert_eq!(admissions, [Answer::Now, Answer::Now, secs(60), secs(60), secs(120), secs(120)]);
    }

    #[test]
    fn the_day_limit_holds_until_utc_midnight() {
        let (clock, limiter) = limiter(TierLimits { requests_per_minute: 1000, requests_per_day: 3 }, MINUTE);
        for _ in 0..3 {
            assert_eq!(admit(&limiter, key(1)), Answer::Now);
        }
        assert_eq!(admit(&limiter, key(1)), Answer::Refused(Duration::from_secs(14 * 3600)));
        clock.advance(Duration::from_secs(14 * 3600));
        assert_eq!(admit(&limiter, key(1)), Answer::Now);
    }

    #[test]
    fn tiers_are_per_key_and_a_429_holds_the_key_back() {
        let clock = Arc::new(ManualClock(AtomicU64::new(START_MS)));
        let premium = TierLimits { requests_per_minute: 100, requests_per_day: 10_000 };
        let limiter = RateLimiter::new(
            clock.clone(),
            PUBLIC,
            [(key(9), premium)].into(),
            Duration::from_secs(20),
            None,
        );
        for _ in 0..100 {
            assert_eq!(admit(&limiter, key(9)), Answer::Now);
        }
        assert!(matches!(admit(&limiter, key(9)), Answer::Refused(_)));
        local(&limiter).hold_now(key(3), clock.now() + MINUTE);
        assert_eq!(admit(&limiter, key(3)), Answer::Refused(MINUTE));
        clock.advance(MINUTE);
        assert_eq!(admit(&limiter, key(3)), Answer::Now);
    }

    #[test]
    fn a_released_slot_counts_neither_in_the_minute_nor_in_the_day() {
        let (_clock, limiter) = limiter(TierLimits { requests_per_minute: 2, requests_per_day: 3 }, MINUTE);
        // Ten requests that never reached VirusTotal, each giving its slot back.
        for _ in 0..10 {
            let Admission::Now(slot) = admit_raw(&limiter, key(1)) else { panic!("a free slot") };
            local(&limiter).release_now(key(1), slot);
        }
        assert_eq!(admit(&limiter, key(1)), Answer::Now);
        assert_eq!(admit(&limiter, key(1)), Answer::Now);
        assert_eq!(admit(&limiter, key(1)), Answer::After(MINUTE), "the minute holds two");
        assert!(matches!(admit(&limiter, key(1)), Answer::Refused(_)), "the day holds three");
    }

    #[test]
    fn idle_keys_of_past_days_are_forgotten() {
        let (clock, limiter) = limiter(PUBLIC, Duration::ZERO);
        for byte in 0..=255 {
            for other in 0..8u8 {
                let mut id = [byte; 32];
                id[0] = other;
                admit(&limiter, KeyId::from_hex(&hex::encode(id)).unwrap());
            }
        }
        assert_eq!(local(&limiter).state.lock().unwrap().windows.len(), 2048);
        clock.advance(Duration::from_secs(DAY_SECS));
        admit(&limiter, key(1));
        assert_eq!(local(&limiter).state.lock().unwrap().windows.len(), 1);
    }
}
