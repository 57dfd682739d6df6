//! What replicas of the malware server sharing one database must agree on to spend VirusTotal
//! quota once, not once per replica: the claims of single flight across replicas (one replica
//! asks VirusTotal about a hash while the others wait for its report), and each API key's rate
//! limits (the sliding minute window with its reservations, the UTC-day count, and the hold
//! after VirusTotal's 429).
//!
//! Keys are known here only by their id (the HMAC the VirusTotal client computes, 64 hex
//! digits), never by the key. Times are the caller's clock in milliseconds since the epoch, so
//! that every replica and the tests measure leases and windows the same way; replicas' clocks
//! must agree to within a fraction of a minute (NTP).
//!
//! Every check-then-write is atomic per key or per hash: SQLite's single writer serialises them,
//! and on PostgreSQL the key's usage row and the claim row are locked by the statement that
//! reads them (`INSERT … ON CONFLICT … DO UPDATE … RETURNING`). The tables stay bounded: a key's
//! slots older than the minute are deleted when the key is next admitted, keys idle since an
//! earlier day are swept a few at a time by each admission, and claims are swept once released
//! or expired for [`CLAIM_RETENTION_MS`].

use rusqlite::{Connection, OptionalExtension, params};

use crate::{Store, StoreError, Tables, postgres};

/// The sliding window of the minute limit.
pub(crate) const MINUTE_MS: i64 = 60_000;
pub(crate) const DAY_MS: i64 = 86_400_000;

/// How long a released or expired claim is kept, so that replicas waiting on it read how its
/// flight ended before it is swept.
pub(crate) const CLAIM_RETENTION_MS: i64 = 10 * MINUTE_MS;

/// Idle keys (or stale claims) deleted by one admission (or one claim): enough to keep up with
/// any realistic arrival of new keys, few enough to keep each transaction short.
pub(crate) const SWEEP_BATCH: i64 = 64;

/// Longest replica id and flight outcome accepted.
const MAX_LABEL_LEN: usize = 128;

/// The limits of one key, as its tier says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLimits {
    pub per_minute: u32,
    /// Counted per UTC day.
    pub per_day: u32,
}

/// The answer to one request of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAdmission {
    /// A slot is reserved at `at_ms` (`wait_ms` after now; 0 to go at once), counted in UTC day
    /// `day`. Give it back with [`Store::vt_key_release`] if the request never reached
    /// VirusTotal.
    Granted { at_ms: i64, day: i64, wait_ms: i64 },
    /// Refused: the limits allow a request again after this wait.
    Refused { retry_after_ms: i64 },
}

/// The result of trying to claim a hash's flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlightClaim {
    /// This owner leads the flight until the lease ends, unless renewed.
    Claimed,
    /// Another owner holds the claim, until `expires_at_ms` unless renewed.
    HeldBy { owner: String, expires_at_ms: i64 },
}

/// Where a hash's flight stands, as a waiting replica sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlightState {
    /// No claim, or one swept after its retention.
    Free,
    /// Claimed by `owner`, whose lease runs until `expires_at_ms`.
    Held { owner: String, expires_at_ms: i64 },
    /// The leader released the claim, with the outcome it recorded for others (if any).
    Released { outcome: Option<String> },
    /// The leader's lease ran out without a release: it died or lost the database.
    Expired,
}

/// A key's usage as one admission reads it, under the key's lock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyUsage {
    pub day: i64,
    pub used_today: i64,
    pub held_until_ms: i64,
    /// The latest reserved slot.
    pub last_ms: Option<i64>,
    /// The slot `per_minute` places from the latest, when the window holds that many.
    pub limiting_ms: Option<i64>,
}

/// What an admission decided: the answer and the key's usage to write back.
pub(crate) struct Decision {
    pub admission: KeyAdmission,
    pub day: i64,
    pub used_today: i64,
}

/// The rate limiter's rule (the client's in-process `rate_limit.rs` applies the same one): the
/// day count refuses once spent; otherwise the request goes at the earliest time that keeps at
/// most `per_minute` slots in any minute, after the latest reserved slot and after a hold, if
/// that is within `max_wait_ms`.
pub(crate) fn decide(usage: KeyUsage, limits: KeyLimits, now_ms: i64, max_wait_ms: i64) -> Decision {
    let today = now_ms.div_euclid(DAY_MS);
    let used_today = if usage.day == today { usage.used_today } else { 0 };
    let refused = |retry_after_ms: i64| Decision {
        admission: KeyAdmission::Refused { retry_after_ms },
        day: today,
        used_today,
    };
    if used_today >= i64::from(limits.per_day) {
        return refused((today + 1) * DAY_MS - now_ms);
    }
    let mut start = now_ms.max(usage.held_until_ms);
    if let Some(limiting) = usage.limiting_ms {
        start = start.max(limiting + MINUTE_MS);
    }
    if let Some(last) = usage.last_ms {
        start = start.max(last);
    }
    let wait_ms = start - now_ms;
    if wait_ms > max_wait_ms {
        return refused(wait_ms);
    }
    Decision {
        admission: KeyAdmission::Granted { at_ms: start, day: today, wait_ms },
        day: today,
        used_today: used_today + 1,
    }
}

/// A key id checked: 64 hex digits, kept in lower case.
fn key_id(text: &str) -> Result<String, StoreError> {
    if text.len() == 64 && text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(StoreError::InvalidVtCoordination(format!("a key id is 64 hex digits, not {} bytes", text.len())))
    }
}

/// A hash checked: 64 hex digits, kept in lower case.
fn flight_hash(text: &str) -> Result<String, StoreError> {
    Ok(crate::sample_hash::SampleHash::parse(text)?.as_str().to_owned())
}

/// A replica id or an outcome checked: 1 to 128 printable ASCII characters.
fn label(what: &str, text: &str) -> Result<String, StoreError> {
    if text.is_empty() || text.len() > MAX_LABEL_LEN || !text.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(StoreError::InvalidVtCoordination(format!(
            "a {what} is 1 to {MAX_LABEL_LEN} printable ASCII characters"
        )));
    }
    Ok(text.to_owned())
}

fn checked_limits(limits: KeyLimits) -> Result<KeyLimits, StoreError> {
    if limits.per_minute == 0 {
        return Err(StoreError::InvalidVtCoordination("a key's minute limit must be at least 1".into()));
    }
    Ok(limits)
}

impl Store {
    /// Admits one request of the key `key_id` at `now_ms` under `limits`: at once, after a
    /// reserved wait of at most `max_wait_ms`, or refused with the wait as a hint (see
    /// [`KeyAdmission`]). Atomic per key across every process sharing the store.
    pub fn vt_key_admit(
        &self,
        key_id_hex: &str,
        limits: KeyLimits,
        now_ms: i64,
        max_wait_ms: i64,
    ) -> Result<KeyAdmission, StoreError> {
        let key = key_id(key_id_hex)?;
        let limits = checked_limits(limits)?;
        let max_wait_ms = max_wait_ms.max(0);
        match &self.tables {
            Tables::Sqlite(database) => {
                database.write(move |connection| sqlite_admit(connection, &key, limits, now_ms, max_wait_ms))
            }
            Tables::Postgres(database) => {
                postgres::vt_economy::admit(database, key, limits, now_ms, max_wait_ms)
            }
        }
    }

    /// Gives back a slot [`Store::vt_key_admit`] granted at `at_ms` in day `day`: its request
    /// never reached VirusTotal, so it counts neither in the minute nor in the day.
    pub fn vt_key_release(&self, key_id_hex: &str, at_ms: i64, day: i64) -> Result<(), StoreError> {
        let key = key_id(key_id_hex)?;
        match &self.tables {
            Tables::Sqlite(database) => database.write(move |connection| {
                connection.prepare_cached(RELEASE_SLOT)?.execute(params![key, at_ms])?;
                connection.prepare_cached(UNCOUNT_SQLITE)?.execute(params![key, day])?;
                Ok(())
            }),
            Tables::Postgres(database) => postgres::vt_economy::release(database, key, at_ms, day),
        }
    }

    /// Holds the key back until `until_ms` for every process sharing the store: VirusTotal
    /// said its quota is spent. A longer hold already recorded is kept.
    pub fn vt_key_hold(&self, key_id_hex: &str, until_ms: i64) -> Result<(), StoreError> {
        let key = key_id(key_id_hex)?;
        match &self.tables {
            Tables::Sqlite(database) => database.write(move |connection| {
                connection.prepare_cached(HOLD_SQLITE)?.execute(params![key, until_ms])?;
                Ok(())
            }),
            Tables::Postgres(database) => postgres::vt_economy::hold(database, key, until_ms),
        }
    }

    /// Claims the flight of `sha256` for `owner` until `now_ms + lease_ms`, if no other owner
    /// holds an unexpired, unreleased claim on it; otherwise says who does. Atomic across every
    /// process sharing the store: of concurrent claimers exactly one gets it.
    pub fn vt_flight_claim(
        &self,
        sha256: &str,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<FlightClaim, StoreError> {
        let hash = flight_hash(sha256)?;
        let owner = label("replica id", owner)?;
        let expires_at_ms = now_ms.saturating_add(lease_ms.max(1));
        match &self.tables {
            Tables::Sqlite(database) => database.write(move |connection| {
                connection
                    .prepare_cached(SWEEP_CLAIMS_SQLITE)?
                    .execute(params![now_ms - CLAIM_RETENTION_MS, SWEEP_BATCH])?;
                let claimed =
                    connection.prepare_cached(CLAIM)?.execute(params![hash, owner, expires_at_ms, now_ms])?
                        > 0;
                if claimed {
                    return Ok(FlightClaim::Claimed);
                }
                let (owner, expires_at_ms) = connection
                    .prepare_cached("SELECT owner, expires_at_ms FROM vt_flight_claims WHERE sha256 = ?1")?
                    .query_row([&hash], |row| Ok((row.get(0)?, row.get(1)?)))?;
                Ok(FlightClaim::HeldBy { owner, expires_at_ms })
            }),
            Tables::Postgres(database) => {
                postgres::vt_economy::claim(database, hash, owner, now_ms, expires_at_ms)
            }
        }
    }

    /// Extends `owner`'s claim on `sha256` to `now_ms + lease_ms`. `false` if the claim is no
    /// longer this owner's (it expired and another replica took it, or it was released).
    pub fn vt_flight_renew(
        &self,
        sha256: &str,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let hash = flight_hash(sha256)?;
        let owner = label("replica id", owner)?;
        let expires_at_ms = now_ms.saturating_add(lease_ms.max(1));
        match &self.tables {
            Tables::Sqlite(database) => database.write(move |connection| {
                Ok(connection.prepare_cached(RENEW)?.execute(params![expires_at_ms, hash, owner])? > 0)
            }),
            Tables::Postgres(database) => postgres::vt_economy::renew(database, hash, owner, expires_at_ms),
        }
    }

    /// Releases `owner`'s claim on `sha256` at `now_ms`, recording `outcome` for the replicas
    /// waiting on it (how the flight ended, when they may answer it without a call of their
    /// own). `false` if the claim was no longer this owner's.
    pub fn vt_flight_release(
        &self,
        sha256: &str,
        owner: &str,
        now_ms: i64,
        outcome: Option<&str>,
    ) -> Result<bool, StoreError> {
        let hash = flight_hash(sha256)?;
        let owner = label("replica id", owner)?;
        let outcome = outcome.map(|outcome| label("flight outcome", outcome)).transpose()?;
        match &self.tables {
            Tables::Sqlite(database) => database.write(move |connection| {
                Ok(connection
                    .prepare_cached(RELEASE_CLAIM)?
                    .execute(params![now_ms, outcome, hash, owner])?
                    > 0)
            }),
            Tables::Postgres(database) => {
                postgres::vt_economy::release_claim(database, hash, owner, now_ms, outcome)
            }
        }
    }

    /// Where the flight of `sha256` stands at `now_ms`.
    pub fn vt_flight(&self, sha256: &str, now_ms: i64) -> Result<FlightState, StoreError> {
        let hash = flight_hash(sha256)?;
        let row = match &self.tables {
            Tables::Sqlite(database) => database.read(|connection| {
                Ok(connection
                    .prepare_cached(
                        "SELECT owner, expires_at_ms, released, outcome FROM vt_flight_claims WHERE sha256 = ?1",
                    )?
                    .query_row([&hash], |row| {
                        Ok(ClaimRow {
                            owner: row.get(0)?,
                            expires_at_ms: row.get(1)?,
                            released: row.get::<_, i64>(2)? != 0,
                            outcome: row.get(3)?,
                        })
                    })
                    .optional()?)
            })?,
            Tables::Postgres(database) => postgres::vt_economy::flight(database, hash)?,
        };
        Ok(match row {
            None => FlightState::Free,
            Some(ClaimRow { released: true, outcome, .. }) => FlightState::Released { outcome },
            Some(ClaimRow { expires_at_ms, .. }) if expires_at_ms <= now_ms => FlightState::Expired,
            Some(ClaimRow { owner, expires_at_ms, .. }) => FlightState::Held { owner, expires_at_ms },
        })
    }
}

/// A claim row as stored.
pub(crate) struct ClaimRow {
    pub owner: String,
    pub expires_at_ms: i64,
    pub released: bool,
    pub outcome: Option<String>,
}

// The SQL below serves both backends. SQLite numbers `$N` parameters in the order they first
// appear, not by `N`, so each statement uses them in increasing order.

/// Creates the key's usage row if missing and reads it (on PostgreSQL, locking it).
pub(crate) const USAGE: &str = "INSERT INTO vt_key_usage (key_id, day, used_today, held_until_ms)
    VALUES ($1, $2, 0, 0)
    ON CONFLICT (key_id) DO UPDATE SET key_id = excluded.key_id
    RETURNING day, used_today, held_until_ms";
pub(crate) const DROP_OLD_SLOTS: &str = "DELETE FROM vt_key_slots WHERE key_id = $1 AND at_ms <= $2";
pub(crate) const LAST_SLOT: &str = "SELECT max(at_ms) FROM vt_key_slots WHERE key_id = $1";
pub(crate) const LIMITING_SLOT: &str =
    "SELECT at_ms FROM vt_key_slots WHERE key_id = $1 ORDER BY at_ms DESC LIMIT 1 OFFSET $2";
pub(crate) const ADD_SLOT: &str = "INSERT INTO vt_key_slots (key_id, at_ms) VALUES ($1, $2)";
pub(crate) const WRITE_USAGE: &str = "UPDATE vt_key_usage SET day = $1, used_today = $2 WHERE key_id = $3";
/// The latest of the key's slots at this time: the one the in-process limiter would remove.
pub(crate) const RELEASE_SLOT: &str = "DELETE FROM vt_key_slots WHERE id =
    (SELECT id FROM vt_key_slots WHERE key_id = $1 AND at_ms = $2 ORDER BY id DESC LIMIT 1)";
const UNCOUNT_SQLITE: &str = "UPDATE vt_key_usage SET used_today = max(used_today - 1, 0)
    WHERE key_id = $1 AND day = $2";
const HOLD_SQLITE: &str = "INSERT INTO vt_key_usage (key_id, day, used_today, held_until_ms)
    VALUES ($1, 0, 0, $2)
    ON CONFLICT (key_id) DO UPDATE SET held_until_ms = max(vt_key_usage.held_until_ms, excluded.held_until_ms)";
/// Keys that constrain nothing any more: counted on an earlier day, not held, no slot in the
/// window. (SQLite's single writer makes the two deletes one step.)
const SWEEP_KEYS_SQLITE: [&str; 2] = [
    "DELETE FROM vt_key_slots WHERE key_id IN (SELECT key_id FROM vt_key_usage u
        WHERE day < $1 AND held_until_ms <= $2
          AND NOT EXISTS (SELECT 1 FROM vt_key_slots s WHERE s.key_id = u.key_id AND s.at_ms > $3)
        LIMIT $4)",
    "DELETE FROM vt_key_usage WHERE key_id IN (SELECT key_id FROM vt_key_usage u
        WHERE day < $1 AND held_until_ms <= $2
          AND NOT EXISTS (SELECT 1 FROM vt_key_slots s WHERE s.key_id = u.key_id AND s.at_ms > $3)
        LIMIT $4)",
];

/// Takes the claim if free, released, expired, or already this owner's.
pub(crate) const CLAIM: &str =
    "INSERT INTO vt_flight_claims (sha256, owner, expires_at_ms, released, outcome)
    VALUES ($1, $2, $3, FALSE, NULL)
    ON CONFLICT (sha256) DO UPDATE SET
        owner = excluded.owner, expires_at_ms = excluded.expires_at_ms, released = FALSE, outcome = NULL
    WHERE vt_flight_claims.released OR vt_flight_claims.expires_at_ms <= $4
       OR vt_flight_claims.owner = excluded.owner";
pub(crate) const RENEW: &str = "UPDATE vt_flight_claims SET expires_at_ms = $1
    WHERE sha256 = $2 AND owner = $3 AND NOT released";
pub(crate) const RELEASE_CLAIM: &str = "UPDATE vt_flight_claims
    SET released = TRUE, expires_at_ms = $1, outcome = $2
    WHERE sha256 = $3 AND owner = $4 AND NOT released";
const SWEEP_CLAIMS_SQLITE: &str = "DELETE FROM vt_flight_claims WHERE sha256 IN
    (SELECT sha256 FROM vt_flight_claims WHERE expires_at_ms < $1 LIMIT $2)";

fn sqlite_admit(
    connection: &Connection,
    key: &str,
    limits: KeyLimits,
    now_ms: i64,
    max_wait_ms: i64,
) -> Result<KeyAdmission, StoreError> {
    let today = now_ms.div_euclid(DAY_MS);
    let horizon = now_ms - MINUTE_MS;
    let (day, used_today, held_until_ms) = connection
        .prepare_cached(USAGE)?
        .query_row(params![key, today], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
    connection.prepare_cached(DROP_OLD_SLOTS)?.execute(params![key, horizon])?;
    let last_ms: Option<i64> = connection.prepare_cached(LAST_SLOT)?.query_row([key], |row| row.get(0))?;
    let limiting_ms: Option<i64> = connection
        .prepare_cached(LIMITING_SLOT)?
        .query_row(params![key, i64::from(limits.per_minute) - 1], |row| row.get(0))
        .optional()?;
    let usage = KeyUsage { day, used_today, held_until_ms, last_ms, limiting_ms };
    let decision = decide(usage, limits, now_ms, max_wait_ms);
    if let KeyAdmission::Granted { at_ms, .. } = decision.admission {
        connection.prepare_cached(ADD_SLOT)?.execute(params![key, at_ms])?;
    }
    connection.prepare_cached(WRITE_USAGE)?.execute(params![decision.day, decision.used_today, key])?;
    for sweep in SWEEP_KEYS_SQLITE {
        connection.prepare_cached(sweep)?.execute(params![today, now_ms, horizon, SWEEP_BATCH])?;
    }
    Ok(decision.admission)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: KeyLimits = KeyLimits { per_minute: 4, per_day: 500 };
    /// 10:00 UTC on some day.
    const NOW: i64 = 20_000 * DAY_MS + 10 * 3_600_000;

    fn usage() -> KeyUsage {
        KeyUsage { day: NOW / DAY_MS, used_today: 0, held_until_ms: 0, last_ms: None, limiting_ms: None }
    }

    #[test]
    fn the_rule_waits_for_the_minute_refuses_beyond_the_queue_and_at_the_day_limit() {
        let granted = |at_ms, wait_ms| KeyAdmission::Granted { at_ms, day: NOW / DAY_MS, wait_ms };
        assert_eq!(decide(usage(), LIMITS, NOW, 0).admission, granted(NOW, 0));
        let full = KeyUsage { last_ms: Some(NOW - 1_000), limiting_ms: Some(NOW - 46_000), ..usage() };
        assert_eq!(decide(full, LIMITS, NOW, 20_000).admission, granted(NOW + 14_000, 14_000));
        assert_eq!(
            decide(full, LIMITS, NOW, 10_000).admission,
            KeyAdmission::Refused { retry_after_ms: 14_000 }
        );
        let spent = KeyUsage { used_today: 500, ..usage() };
        assert_eq!(
            decide(spent, LIMITS, NOW, 0).admission,
            KeyAdmission::Refused { retry_after_ms: 14 * 3_600_000 }
        );
        let yesterday = KeyUsage { day: NOW / DAY_MS - 1, ..spent };
        let decision = decide(yesterday, LIMITS, NOW, 0);
        assert_eq!((decision.admission, decision.used_today), (granted(NOW, 0), 1), "a new day starts at 0");
        let held = KeyUsage { held_until_ms: NOW + MINUTE_MS, ..usage() };
        assert_eq!(
            decide(held, LIMITS, NOW, 0).admission,
            KeyAdmission::Refused { retry_after_ms: MINUTE_MS }
        );
    }
}
