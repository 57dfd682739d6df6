//! The shared VirusTotal economy on PostgreSQL (`crate::vt_economy` on SQLite, whose SQL is
//! shared where the dialects agree): per-key admissions under the key's row lock, and flight
//! claims. Sweeps take rows with `FOR UPDATE SKIP LOCKED`, so replicas sweeping at once never
//! wait on, or deadlock with, each other or an admission.

use super::PgDatabase;
use crate::StoreError;
use crate::vt_economy::{
    ADD_SLOT, CLAIM, CLAIM_RETENTION_MS, ClaimRow, DAY_MS, DROP_OLD_SLOTS, FlightClaim, KeyAdmission,
    KeyLimits, KeyUsage, LAST_SLOT, LIMITING_SLOT, MINUTE_MS, RELEASE_CLAIM, RELEASE_SLOT, RENEW,
    SWEEP_BATCH, USAGE, WRITE_USAGE, decide,
};

const UNCOUNT: &str = "UPDATE vt_key_usage SET used_today = GREATEST(used_today - 1, 0)
    WHERE key_id = $1 AND day = $2";
const HOLD: &str = "INSERT INTO vt_key_usage (key_id, day, used_today, held_until_ms)
    VALUES ($1, 0, 0, $2)
    ON CONFLICT (key_id) DO UPDATE SET held_until_ms = GREATEST(vt_key_usage.held_until_ms, excluded.held_until_ms)";
const SWEEP_KEYS: &str = "WITH idle AS (
        SELECT key_id FROM vt_key_usage u
        WHERE day < $1 AND held_until_ms <= $2
          AND NOT EXISTS (SELECT 1 FROM vt_key_slots s WHERE s.key_id = u.key_id AND s.at_ms > $3)
        LIMIT $4 FOR UPDATE SKIP LOCKED),
    gone AS (DELETE FROM vt_key_usage WHERE key_id IN (SELECT key_id FROM idle) RETURNING key_id)
    DELETE FROM vt_key_slots WHERE key_id IN (SELECT key_id FROM gone)";
const SWEEP_CLAIMS: &str = "DELETE FROM vt_flight_claims WHERE sha256 IN
    (SELECT sha256 FROM vt_flight_claims WHERE expires_at_ms < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)";

pub(crate) fn admit(
    database: &PgDatabase,
    key: String,
    limits: KeyLimits,
    now_ms: i64,
    max_wait_ms: i64,
) -> Result<KeyAdmission, StoreError> {
    database.run(move |mut client| async move {
        let today = now_ms.div_euclid(DAY_MS);
        let horizon = now_ms - MINUTE_MS;
        let transaction = client.transaction().await?;
        // Locks the key's row until commit: admissions of one key are serialised across replicas.
        let row = transaction.query_one(&transaction.prepare_cached(USAGE).await?, &[&key, &today]).await?;
        let (day, used_today, held_until_ms) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        transaction.execute(&transaction.prepare_cached(DROP_OLD_SLOTS).await?, &[&key, &horizon]).await?;
        let last_ms: Option<i64> = transaction
            .query_one(&transaction.prepare_cached(LAST_SLOT).await?, &[&key])
            .await?
            .try_get(0)?;
        let offset = i64::from(limits.per_minute) - 1;
        let limiting_ms: Option<i64> = transaction
            .query_opt(&transaction.prepare_cached(LIMITING_SLOT).await?, &[&key, &offset])
            .await?
            .map(|row| row.try_get(0))
            .transpose()?;
        let usage = KeyUsage { day, used_today, held_until_ms, last_ms, limiting_ms };
        let decision = decide(usage, limits, now_ms, max_wait_ms);
        if let KeyAdmission::Granted { at_ms, .. } = decision.admission {
            transaction.execute(&transaction.prepare_cached(ADD_SLOT).await?, &[&key, &at_ms]).await?;
        }
        transaction
            .execute(
                &transaction.prepare_cached(WRITE_USAGE).await?,
                &[&decision.day, &decision.used_today, &key],
            )
            .await?;
        transaction
            .execute(
                &transaction.prepare_cached(SWEEP_KEYS).await?,
                &[&today, &now_ms, &horizon, &SWEEP_BATCH],
            )
            .await?;
        transaction.commit().await?;
        Ok(decision.admission)
    })
}

pub(crate) fn release(database: &PgDatabase, key: String, at_ms: i64, day: i64) -> Result<(), StoreError> {
    database.run(move |mut client| async move {
        let transaction = client.transaction().await?;
        transaction.execute(&transaction.prepare_cached(RELEASE_SLOT).await?, &[&key, &at_ms]).await?;
        transaction.execute(&transaction.prepare_cached(UNCOUNT).await?, &[&key, &day]).await?;
        transaction.commit().await?;
        Ok(())
    })
}

pub(crate) fn hold(database: &PgDatabase, key: String, until_ms: i64) -> Result<(), StoreError> {
    database.run(move |client| async move {
        client.execute(&client.prepare_cached(HOLD).await?, &[&key, &until_ms]).await?;
        Ok(())
    })
}

pub(crate) fn claim(
    database: &PgDatabase,
    hash: String,
    owner: String,
    now_ms: i64,
    expires_at_ms: i64,
) -> Result<FlightClaim, StoreError> {
    database.run(move |client| async move {
        let retention = now_ms - CLAIM_RETENTION_MS;
        client.execute(&client.prepare_cached(SWEEP_CLAIMS).await?, &[&retention, &SWEEP_BATCH]).await?;
        let claimed = client
            .execute(&client.prepare_cached(CLAIM).await?, &[&hash, &owner, &expires_at_ms, &now_ms])
            .await?
            == 1;
        if claimed {
            return Ok(FlightClaim::Claimed);
        }
        // The claim was held when the upsert looked; it may have been released since, which the
        // caller sees as a claim that ends soon and tries again.
        match client
            .query_opt("SELECT owner, expires_at_ms FROM vt_flight_claims WHERE sha256 = $1", &[&hash])
            .await?
        {
            Some(row) => Ok(FlightClaim::HeldBy { owner: row.try_get(0)?, expires_at_ms: row.try_get(1)? }),
            None => Ok(FlightClaim::HeldBy { owner: String::new(), expires_at_ms: now_ms }),
        }
    })
}

pub(crate) fn renew(
    database: &PgDatabase,
    hash: String,
    owner: String,
    expires_at_ms: i64,
) -> Result<bool, StoreError> {
    database.run(move |client| async move {
        Ok(client.execute(&client.prepare_cached(RENEW).await?, &[&expires_at_ms, &hash, &owner]).await? == 1)
    })
}

pub(crate) fn release_claim(
    database: &PgDatabase,
    hash: String,
    owner: String,
    now_ms: i64,
    outcome: Option<String>,
) -> Result<bool, StoreError> {
    database.run(move |client| async move {
        Ok(client
            .execute(&client.prepare_cached(RELEASE_CLAIM).await?, &[&now_ms, &outcome, &hash, &owner])
            .await?
            == 1)
    })
}

pub(crate) fn flight(database: &PgDatabase, hash: String) -> Result<Option<ClaimRow>, StoreError> {
    database.run(move |client| async move {
        let statement = client
            .prepare_cached(
                "SELECT owner, expires_at_ms, released, outcome FROM vt_flight_claims WHERE sha256 = $1",
            )
            .await?;
        client
            .query_opt(&statement, &[&hash])
            .await?
            .map(|row| {
                Ok(ClaimRow {
                    owner: row.try_get(0)?,
                    expires_at_ms: row.try_get(1)?,
                    released: row.try_get(2)?,
                    outcome: row.try_get(3)?,
                })
            })
            .transpose()
    })
}
