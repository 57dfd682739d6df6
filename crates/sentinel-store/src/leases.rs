//! Leases: named, time-limited claims that replicas sharing a store use to divide work (which
//! worker scores which partition, which replica trains). A lease is held by one owner until it
//! expires or is released; its owner extends it by acquiring it again before it expires, so a
//! replica that dies lets go of its leases within their time to live.
//!
//! Expiry is judged by the clock of the replica asking: replicas are expected to keep their
//! clocks within a small fraction of a lease's time to live of each other.

use std::time::Duration;

use rusqlite::{OptionalExtension, params};

use crate::{Store, StoreError};

impl Store {
    /// Takes or extends the lease `name` for `owner`, for `ttl` from now (rounded up to a whole
    /// second). True if `owner` holds it now: it was free, had expired, or was already
    /// `owner`'s; false if another owner holds it.
    pub fn acquire_lease(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = self.now();
        let expires_at =
            now.saturating_add(i64::try_from(ttl.as_secs_f64().ceil() as u64).unwrap_or(i64::MAX));
        let (name, owner) = (name.to_owned(), owner.to_owned());
        self.sqlite()?.write(move |connection| {
            let holder: Option<(String, i64)> = connection
                .prepare_cached("SELECT owner, expires_at FROM leases WHERE name = ?1")?
                .query_row([&name], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            if let Some((holder, holder_expires)) = holder
                && holder != owner
                && holder_expires > now
            {
                return Ok(false);
            }
            connection
                .prepare_cached(
                    "INSERT INTO leases (name, owner, expires_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at",
                )?
                .execute(params![name, owner, expires_at])?;
            Ok(true)
        })
    }

    /// Gives the lease `name` up if `owner` holds it; nothing otherwise.
    pub fn release_lease(&self, name: &str, owner: &str) -> Result<(), StoreError> {
        let (name, owner) = (name.to_owned(), owner.to_owned());
        self.sqlite()?.write(move |connection| {
            connection
                .prepare_cached("DELETE FROM leases WHERE name = ?1 AND owner = ?2")?
                .execute(params![name, owner])?;
            Ok(())
        })
    }

    /// The unexpired leases whose name starts with `prefix`, as (name, owner), by name.
    pub fn live_leases(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let now = self.now();
        let prefix = prefix.to_owned();
        self.sqlite()?.read(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT name, owner FROM leases WHERE substr(name, 1, length(?1)) = ?1 AND expires_at > ?2
                 ORDER BY name",
            )?;
            let rows = statement.query_map(params![prefix, now], |row| Ok((row.get(0)?, row.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;
    use crate::StoreSettings;

    static NOW: AtomicI64 = AtomicI64::new(1_000_000);

    fn clock() -> i64 {
        NOW.load(Ordering::Relaxed)
    }

    #[test]
    fn a_lease_has_one_owner_until_it_expires_or_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_clock(dir.path(), StoreSettings::default(), None, clock).unwrap();
        let ttl = Duration::from_secs(15);
        assert!(store.acquire_lease("network-partition/3", "a", ttl).unwrap());
        assert!(!store.acquire_lease("network-partition/3", "b", ttl).unwrap(), "held by a");
        assert!(store.acquire_lease("network-partition/3", "a", ttl).unwrap(), "a extends its own");
        assert!(store.acquire_lease("network-worker/a", "a", ttl).unwrap());
        assert_eq!(
            store.live_leases("network-partition/").unwrap(),
            vec![("network-partition/3".to_owned(), "a".to_owned())]
        );

        NOW.fetch_add(14, Ordering::Relaxed);
        assert!(!store.acquire_lease("network-partition/3", "b", ttl).unwrap(), "still within its ttl");
        NOW.fetch_add(2, Ordering::Relaxed);
        assert!(store.live_leases("network-").unwrap().is_empty(), "both expired");
        assert!(store.acquire_lease("network-partition/3", "b", ttl).unwrap(), "expired: b takes it");

        store.release_lease("network-partition/3", "a").unwrap();
        assert_eq!(store.live_leases("network-partition/").unwrap().len(), 1, "a cannot release b's lease");
        store.release_lease("network-partition/3", "b").unwrap();
        assert!(store.acquire_lease("network-partition/3", "a", ttl).unwrap(), "released: free again");
    }
}
