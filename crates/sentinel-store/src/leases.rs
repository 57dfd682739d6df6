//! Named leases: a lease is held by one owner until it expires, so that of several replicas
//! sharing a store exactly one does a job — trains the network model, consumes a partition of the
//! broker's stream — and another takes over once the holder stops renewing it (it crashed, or
//! lost its connection). The holder renews well before the expiry; whoever finds the lease free
//! or expired takes it.
//!
//! The check and the take are one statement (an upsert whose update only applies to a lease that
//! is expired or already the caller's), so owners racing for a lease on one database get exactly
//! one winner on either backend. Expiry is judged by the store's clock of the replica asking:
//! replicas' clocks must agree (NTP) to well within the time to live.

use std::time::Duration;

use rusqlite::{OptionalExtension, params};

use crate::{Store, StoreError, Tables, postgres};

/// Longest lease name or owner accepted, in bytes.
const MAX_TEXT_LEN: usize = 256;

/// Most leases [`Store::live_leases`] lists: far above the number of replicas of a cluster.
const MAX_LISTED_LEASES: i64 = 10_000;

/// Longest time to live accepted: a holder renews its lease, it does not take it for ever.
const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Takes the lease if it is free, expired or already the owner's (then moving its expiry).
const ACQUIRE: &str = "INSERT INTO leases (name, owner, expires_at) VALUES (?1, ?2, ?3)
    ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
    WHERE leases.owner = excluded.owner OR leases.expires_at <= ?4";

impl Store {
    /// Takes the lease `name` for `owner` for `ttl` (rounded up to whole seconds, 1 s to 7 days)
    /// from now. Returns `true` if `owner` holds it now: it was free, expired, or already
    /// `owner`'s, whose expiry is then set to now + `ttl` (a renewal); `false` if another owner
    /// holds it. Durable when this returns.
    pub fn acquire_lease(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        check_text("name", name)?;
        check_text("owner", owner)?;
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(StoreError::InvalidLease(format!(
                "a time to live must be 1 second to {} seconds, not {ttl:?}",
                MAX_TTL.as_secs()
            )));
        }
        let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let now = self.now();
        let expires_at = now.saturating_add(seconds as i64);
        let (name, owner) = (name.to_owned(), owner.to_owned());
        match &self.tables {
            Tables::Sqlite(database) => database.write(move |connection| {
                let changed =
                    connection.prepare_cached(ACQUIRE)?.execute(params![name, owner, expires_at, now])?;
                Ok(changed == 1)
            }),
            Tables::Postgres(database) => postgres::leases::acquire(database, name, owner, expires_at, now),
        }
    }

    /// Gives up the lease `name` if `owner` holds it (even expired), so another owner may take it
    /// at once. Returns whether it was `owner`'s.
    pub fn release_lease(&self, name: &str, owner: &str) -> Result<bool, StoreError> {
        check_text("name", name)?;
        check_text("owner", owner)?;
        let (name, owner) = (name.to_owned(), owner.to_owned());
        match &self.tables {
            Tables::Sqlite(database) => database.write(move |connection| {
                let changed = connection
                    .prepare_cached("DELETE FROM leases WHERE name = ?1 AND owner = ?2")?
                    .execute(params![name, owner])?;
                Ok(changed == 1)
            }),
            Tables::Postgres(database) => postgres::leases::release(database, name, owner),
        }
    }

    /// Who holds the lease `name` and until when (unix seconds); `None` when it is free or
    /// expired.
    pub fn lease_holder(&self, name: &str) -> Result<Option<(String, i64)>, StoreError> {
        check_text("name", name)?;
        let now = self.now();
        match &self.tables {
            Tables::Sqlite(database) => database.read(|connection| {
                Ok(connection
                    .prepare_cached(
                        "SELECT owner, expires_at FROM leases WHERE name = ?1 AND expires_at > ?2",
                    )?
                    .query_row(params![name, now], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?)
            }),
            Tables::Postgres(database) => postgres::leases::holder(database, name.to_owned(), now),
        }
    }

    /// The unexpired leases whose name starts with `prefix`, as (name, owner), ordered by name:
    /// who is alive among the holders of a family of leases (`network-worker/`). At most
    /// 10 000 are returned.
    pub fn live_leases(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        if prefix.len() > MAX_TEXT_LEN {
            return Err(StoreError::InvalidLease(format!(
                "a lease prefix must have at most {MAX_TEXT_LEN} bytes, not {}",
                prefix.len()
            )));
        }
        let now = self.now();
        let prefix = prefix.to_owned();
        match &self.tables {
            Tables::Sqlite(database) => database.read(|connection| {
                let mut statement = connection.prepare_cached(
                    "SELECT name, owner FROM leases
                     WHERE substr(name, 1, length(?1)) = ?1 AND expires_at > ?2 ORDER BY name LIMIT ?3",
                )?;
                let rows = statement.query_map(params![prefix, now, MAX_LISTED_LEASES], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            }),
            Tables::Postgres(database) => postgres::leases::live(database, prefix, now, MAX_LISTED_LEASES),
        }
    }
}

fn check_text(what: &str, text: &str) -> Result<(), StoreError> {
    if text.is_empty() || text.len() > MAX_TEXT_LEN {
        return Err(StoreError::InvalidLease(format!(
            "a lease's {what} must have 1 to {MAX_TEXT_LEN} bytes, not {}",
            text.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;
    use crate::backends::each_backend;

    static NOW: AtomicI64 = AtomicI64::new(5_000_000);

    fn clock() -> i64 {
        NOW.load(Ordering::SeqCst)
    }

    #[test]
    fn a_lease_expires_unless_renewed_and_then_another_owner_takes_it() {
        each_backend(clock, |fixture| {
            let (first, second) = (fixture.open(), fixture.open());
            let ttl = Duration::from_secs(30);
            let start = clock();
            assert!(first.acquire_lease("network-training", "replica-a", ttl).unwrap());
            assert_eq!(
                second.lease_holder("network-training").unwrap(),
                Some(("replica-a".to_owned(), start + 30))
            );
            assert!(!second.acquire_lease("network-training", "replica-b", ttl).unwrap());

            // A renewal before the expiry moves it; the other owner is still refused.
            NOW.fetch_add(20, Ordering::SeqCst);
            assert!(first.acquire_lease("network-training", "replica-a", ttl).unwrap());
            assert_eq!(second.lease_holder("network-training").unwrap().unwrap().1, start + 50);
            NOW.fetch_add(20, Ordering::SeqCst);
            assert!(!second.acquire_lease("network-training", "replica-b", ttl).unwrap());

            // Not renewed: at its expiry it is free, and the other owner takes it.
            NOW.fetch_add(10, Ordering::SeqCst);
            assert_eq!(first.lease_holder("network-training").unwrap(), None);
            assert!(
                second.acquire_lease("network-training", "replica-b", Duration::from_millis(1500)).unwrap()
            );
            assert_eq!(
                first.lease_holder("network-training").unwrap(),
                Some(("replica-b".to_owned(), clock() + 2)),
                "a fraction of a second rounds up"
            );
            assert!(!first.acquire_lease("network-training", "replica-a", ttl).unwrap());

            // The holder stops renewing (it crashed): once expired, of the replicas racing for
            // it exactly one takes it over.
            NOW.fetch_add(2, Ordering::SeqCst);
            let replicas: Vec<Store> = (0..6).map(|_| fixture.open()).collect();
            let barrier = Barrier::new(replicas.len());
            let won = std::thread::scope(|scope| {
                let threads: Vec<_> = replicas
                    .iter()
                    .enumerate()
                    .map(|(index, store)| {
                        let barrier = &barrier;
                        scope.spawn(move || {
                            barrier.wait();
                            store.acquire_lease("network-training", &format!("replica-{index}"), ttl).unwrap()
                        })
                    })
                    .collect();
                threads.into_iter().map(|thread| thread.join().unwrap()).collect::<Vec<_>>()
            });
            assert_eq!(won.iter().filter(|won| **won).count(), 1, "{won:?}");
            let winner = won.iter().position(|won| *won).unwrap();
            assert_eq!(
                first.lease_holder("network-training").unwrap(),
                Some((format!("replica-{winner}"), clock() + 30))
            );
        });
    }
}
