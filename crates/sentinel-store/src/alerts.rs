//! Alerts and their outbox: one row per alert raised (`alerts`) and one per channel it is to be
//! delivered on (`alert_deliveries`). The outbox is the deliveries still `pending`: an alert is
//! written with its deliveries in one transaction before anyone is told it was raised, so an
//! alert raised just before a crash, or while a channel is down, is delivered once the process
//! or the channel is back.
//!
//! Deduplication lives here too, in the same transaction, so it survives restarts: an alert of
//! the same rule and key raised within the cooldown of the last one is not a new alert (nor a
//! new delivery) but a repeat of it, counted, as Zeek's notice suppression does. On PostgreSQL,
//! where replicas raise at once, the check and the write are serialised per rule and key
//! (`postgres/alerts.rs`).

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::{Store, StoreError, Tables, postgres};

/// Longest rule name or severity accepted, in bytes.
const MAX_WORD_LEN: usize = 64;

/// Longest key, summary, channel name, principal or note accepted, in bytes.
const MAX_TEXT_LEN: usize = 1024;

/// Largest details object accepted, in bytes of JSON.
const MAX_DETAILS_LEN: usize = 16 * 1024;

/// Longest delivery error kept, in bytes (a channel's answer can be long).
const MAX_ERROR_LEN: usize = 512;

/// Most alerts one listing returns.
pub const MAX_ALERT_PAGE: usize = 1000;

/// An alert to raise.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAlert<'a> {
    /// The rule that raised it, a word: `anomaly`, `anomaly_rate`, `malware_verdict`…
    pub rule: &'a str,
    /// What the alert is about, the identifier deduplicated on with the rule (a host and
    /// remote address, a sample's hash, `virustotal/CLIENT`).
    pub key: &'a str,
    /// `info`, `warning` or `critical`.
    pub severity: &'a str,
    /// One line for people.
    pub summary: &'a str,
    /// Anything else, as a JSON object.
    pub details: &'a serde_json::Map<String, serde_json::Value>,
    /// The channels to deliver it on, by name.
    pub channels: &'a [String],
    /// Seconds after an alert of the same rule and key during which another is a repeat.
    pub cooldown_seconds: i64,
}

/// What raising an alert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raised {
    /// A new alert, with this id, queued on its channels.
    New(i64),
    /// A repeat, within the cooldown, of the alert with this id: counted, not delivered again.
    Repeat(i64),
}

/// Where one channel's delivery of an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// In the outbox: not delivered yet, to be tried at `next_attempt_at`.
    Pending,
    Delivered,
    /// Given up on (the retries ran out, or the channel is no longer configured).
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Option<DeliveryState> {
        [DeliveryState::Pending, DeliveryState::Delivered, DeliveryState::Failed]
            .into_iter()
            .find(|state| state.as_str() == text)
    }
}

/// One channel's delivery of an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertDelivery {
    pub channel: String,
    pub state: DeliveryState,
    pub attempts: u32,
    /// Unix seconds of the next try, while pending.
    pub next_attempt_at: Option<i64>,
    pub last_error: Option<String>,
    /// Unix seconds.
    pub delivered_at: Option<i64>,
}

/// A stored alert with its deliveries.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRecord {
    pub id: i64,
    pub rule: String,
    pub key: String,
    pub severity: String,
    pub summary: String,
    pub details: serde_json::Map<String, serde_json::Value>,
    /// Unix seconds when it was first raised.
    pub raised_at: i64,
    /// Unix seconds of its last repeat (the first raise when none).
    pub last_raised_at: i64,
    /// Raises suppressed within the cooldown after the first.
    pub repeats: u64,
    pub acknowledged_at: Option<i64>,
    pub acknowledged_by: Option<String>,
    pub acknowledgement_note: Option<String>,
    pub deliveries: Vec<AlertDelivery>,
}

/// Which alerts to list: newest first, at most `limit`, older than `before` when given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertQuery {
    /// `Some(false)`: only those not acknowledged; `Some(true)`: only acknowledged ones.
    pub acknowledged: Option<bool>,
    pub before: Option<i64>,
    pub limit: usize,
}

/// A delivery that is due: the alert and the channel to send it on.
#[derive(Debug, Clone, PartialEq)]
pub struct DueDelivery {
    pub alert: AlertRecord,
    pub channel: String,
    /// Tries so far.
    pub attempts: u32,
}

pub(crate) const ALERT_COLUMNS: &str =
    "id, rule, key, severity, summary, details, raised_at, last_raised_at, repeats,
    acknowledged_at, acknowledged_by, acknowledgement_note";

pub(crate) const DELIVERY_COLUMNS: &str =
    "channel, state, attempts, next_attempt_at, last_error, delivered_at";

impl Store {
    /// Raises an alert: a new one, queued on its channels, or a repeat of the last alert of the
    /// same rule and key when that one was raised less than `cooldown_seconds` ago. Durable
    /// when this returns.
    pub fn raise_alert(&self, alert: &NewAlert<'_>) -> Result<Raised, StoreError> {
        check_word("rule", alert.rule)?;
        check_word("severity", alert.severity)?;
        check_text("key", alert.key)?;
        check_text("summary", alert.summary)?;
        for channel in alert.channels {
            check_text("channel", channel)?;
        }
        let details = serde_json::to_string(alert.details).map_err(|error| invalid(error.to_string()))?;
        if details.len() > MAX_DETAILS_LEN {
            return Err(invalid(format!("details are {} bytes, at most {MAX_DETAILS_LEN}", details.len())));
        }
        let now = self.now();
        let (rule, key, severity, summary) = (
            alert.rule.to_owned(),
            alert.key.to_owned(),
            alert.severity.to_owned(),
            alert.summary.to_owned(),
        );
        let channels = alert.channels.to_vec();
        let since = now.saturating_sub(alert.cooldown_seconds.max(0));
        let database = match &self.tables {
            Tables::Sqlite(database) => database,
            Tables::Postgres(database) => {
                let row = postgres::alerts::AlertRow {
                    rule,
                    key,
                    severity,
                    summary,
                    details,
                    channels,
                    since,
                    now,
                };
                return postgres::alerts::raise(database, row);
            }
        };
        database.write(move |connection| {
            let recent: Option<i64> = connection
                .prepare_cached(
                    "SELECT id FROM alerts WHERE rule = ?1 AND key = ?2 AND raised_at > ?3
                     ORDER BY id DESC LIMIT 1",
                )?
                .query_row(params![rule, key, since], |row| row.get(0))
                .optional()?;
            if let Some(id) = recent {
                connection
                    .prepare_cached("UPDATE alerts SET repeats = repeats + 1, last_raised_at = ?2 WHERE id = ?1")?
                    .execute(params![id, now])?;
                return Ok(Raised::Repeat(id));
            }
            connection
                .prepare_cached(
                    "INSERT INTO alerts (rule, key, severity, summary, details, raised_at, last_raised_at, repeats)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, 0)",
                )?
                .execute(params![rule, key, severity, summary, details, now])?;
            let id = connection.last_insert_rowid();
            let mut insert = connection.prepare_cached(
                "INSERT OR IGNORE INTO alert_deliveries (alert_id, channel, state, attempts, next_attempt_at)
                 VALUES (?1, ?2, 'pending', 0, ?3)",
            )?;
            for channel in &channels {
                insert.execute(params![id, channel, now])?;
            }
            Ok(Raised::New(id))
        })
    }

    /// One alert with its deliveries.
    pub fn alert(&self, id: i64) -> Result<Option<AlertRecord>, StoreError> {
        let database = match &self.tables {
            Tables::Sqlite(database) => database,
            Tables::Postgres(database) => return postgres::alerts::alert(database, id),
        };
        database.read(|connection| alert_by_id(connection, id))
    }

    /// Alerts, newest first (see [`AlertQuery`]).
    pub fn alerts(&self, query: &AlertQuery) -> Result<Vec<AlertRecord>, StoreError> {
        let limit = query.limit.min(MAX_ALERT_PAGE) as i64;
        let before = query.before.unwrap_or(i64::MAX);
        let acknowledged = match query.acknowledged {
            None => "",
            Some(false) => "AND acknowledged_at IS NULL",
            Some(true) => "AND acknowledged_at IS NOT NULL",
        };
        let database = match &self.tables {
            Tables::Sqlite(database) => database,
            Tables::Postgres(database) => {
                return postgres::alerts::list(database, acknowledged, before, limit);
            }
        };
        database.read(|connection| {
            let mut statement = connection.prepare_cached(&format!(
                "SELECT {ALERT_COLUMNS} FROM alerts WHERE id < ?1 {acknowledged} ORDER BY id DESC LIMIT ?2"
            ))?;
            let mut alerts = statement
                .query_map(params![before, limit], alert_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            for alert in &mut alerts {
                alert.deliveries = deliveries_of(connection, alert.id)?;
            }
            Ok(alerts)
        })
    }

    /// Acknowledges an alert (the first acknowledgement stays). `None` when there is no such
    /// alert.
    pub fn acknowledge_alert(
        &self,
        id: i64,
        by: &str,
        note: Option<&str>,
    ) -> Result<Option<AlertRecord>, StoreError> {
        check_text("acknowledged_by", by)?;
        if let Some(note) = note
            && note.len() > MAX_TEXT_LEN
        {
            return Err(invalid(format!("note is {} bytes, at most {MAX_TEXT_LEN}", note.len())));
        }
        let now = self.now();
        let (by, note) = (by.to_owned(), note.map(str::to_owned));
        let database = match &self.tables {
            Tables::Sqlite(database) => database,
            Tables::Postgres(database) => return postgres::alerts::acknowledge(database, id, by, note, now),
        };
        database.write(move |connection| {
            connection
                .prepare_cached(
                    "UPDATE alerts SET acknowledged_at = ?2, acknowledged_by = ?3, acknowledgement_note = ?4
                     WHERE id = ?1 AND acknowledged_at IS NULL",
                )?
                .execute(params![id, now, by, note])?;
            alert_by_id(connection, id)
        })
    }

    /// The pending deliveries on `channel` due at or before `now` (unix seconds), oldest first,
    /// at most `limit`.
    pub fn due_alert_deliveries(
        &self,
        channel: &str,
        now: i64,
        limit: usize,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let database = match &self.tables {
            Tables::Sqlite(database) => database,
            Tables::Postgres(database) => {
                let limit = i64::try_from(limit).unwrap_or(i64::MAX);
                return postgres::alerts::due(database, channel.to_owned(), now, limit);
            }
        };
        database.read(|connection| {
            let mut statement = connection.prepare_cached(
                "SELECT alert_id, channel, attempts FROM alert_deliveries
                 WHERE state = 'pending' AND channel = ?1 AND next_attempt_at <= ?2
                 ORDER BY next_attempt_at, alert_id LIMIT ?3",
            )?;
            let due = statement
                .query_map(params![channel, now, limit as i64], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?, row.get::<_, u32>(2)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut deliveries = Vec::with_capacity(due.len());
            for (id, channel, attempts) in due {
                if let Some(alert) = alert_by_id(connection, id)? {
                    deliveries.push(DueDelivery { alert, channel, attempts });
                }
            }
            Ok(deliveries)
        })
    }

    /// Unix seconds of the earliest pending delivery on `channel`, if any.
    pub fn next_alert_delivery_at(&self, channel: &str) -> Result<Option<i64>, StoreError> {
        let database = match &self.tables {
            Tables::Sqlite(database) => database,
            Tables::Postgres(database) => {
                return postgres::alerts::next_delivery_at(database, channel.to_owned());
            }
        };
        database.read(|connection| {
            Ok(connection
                .prepare_cached(
                    "SELECT min(next_attempt_at) FROM alert_deliveries WHERE state = 'pending' AND channel = ?1",
                )?
                .query_row([channel], |row| row.get(0))?)
        })
    }

    /// Gives up the pending deliveries on channels not in `configured` (a channel removed from
    /// the configuration): they are marked failed, saying why. Returns how many.
    pub fn abandon_alert_deliveries(&self, configured: &[String]) -> Result<usize, StoreError> {
        let database = match &self.tables {
            Tables::Sqlite(database) => database,
            Tables::Postgres(database) => return postgres::alerts::abandon(database, configured.to_vec()),
        };
        let configured = serde_json::to_string(configured).map_err(|error| invalid(error.to_string()))?;
        database.write(move |connection| {
            Ok(connection
                .prepare_cached(
                    "UPDATE alert_deliveries SET state = 'failed', next_attempt_at = NULL,
                        last_error = 'the channel is no longer configured'
                     WHERE state = 'pending' AND channel NOT IN (SELECT value FROM json_each(?1))",
                )?
                .execute([configured])?)
        })
    }

    /// Records a delivery as done. Durable when this returns.
    pub fn alert_delivered(&self, alert_id: i64, channel: &str) -> Result<(), StoreError> {
        let now = self.now();
        let channel = channel.to_owned();
        let database = match &self.tables {
            Tables::Sqlite(database) => database,
            Tables::Postgres(database) => {
                return postgres::alerts::delivered(database, alert_id, channel, now);
            }
        };
        database.write(move |connection| {
            connection
                .prepare_cached(
                    "UPDATE alert_deliveries SET state = 'delivered', attempts = attempts + 1,
                        delivered_at = ?3, next_attempt_at = NULL, last_error = NULL
                     WHERE alert_id = ?1 AND channel = ?2",
                )?
                .execute(params![alert_id, channel, now])?;
            Ok(())
        })
    }

    /// Records a failed try: retried at `retry_at` (unix seconds), or given up when `None`.
    pub fn alert_delivery_failed(
        &self,
        alert_id: i64,
        channel: &str,
        error: &str,
        retry_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut error = error.to_owned();
        if error.len() > MAX_ERROR_LEN {
            let mut end = MAX_ERROR_LEN;
            while !error.is_char_boundary(end) {
                end -= 1;
            }
            error.truncate(end);
        }
        let channel = channel.to_owned();
        let state = if retry_at.is_some() { "pending" } else { "failed" };
        let database = match &self.tables {
            Tables::Sqlite(database) => database,
            Tables::Postgres(database) => {
                return postgres::alerts::failed(database, alert_id, channel, state, error, retry_at);
            }
        };
        database.write(move |connection| {
            connection
                .prepare_cached(
                    "UPDATE alert_deliveries SET state = ?3, attempts = attempts + 1, next_attempt_at = ?4,
                        last_error = ?5
                     WHERE alert_id = ?1 AND channel = ?2",
                )?
                .execute(params![alert_id, channel, state, retry_at, error])?;
            Ok(())
        })
    }
}

fn invalid(reason: String) -> StoreError {
    StoreError::InvalidAlert(reason)
}

fn check_word(name: &str, word: &str) -> Result<(), StoreError> {
    let valid = !word.is_empty()
        && word.len() <= MAX_WORD_LEN
        && word.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_');
    match valid {
        true => Ok(()),
        false => Err(invalid(format!("{name} must be 1 to {MAX_WORD_LEN} of a-z, 0-9 and _"))),
    }
}

fn check_text(name: &str, text: &str) -> Result<(), StoreError> {
    if text.trim().is_empty() || text.len() > MAX_TEXT_LEN {
        return Err(invalid(format!(
            "{name} is {} bytes, not 1 to {MAX_TEXT_LEN} (and not blank)",
            text.len()
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid(format!("{name} contains control characters")));
    }
    Ok(())
}

fn alert_by_id(connection: &Connection, id: i64) -> Result<Option<AlertRecord>, StoreError> {
    let alert = connection
        .prepare_cached(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?1"))?
        .query_row([id], alert_from_row)
        .optional()?;
    let Some(mut alert) = alert else { return Ok(None) };
    alert.deliveries = deliveries_of(connection, id)?;
    Ok(Some(alert))
}

fn deliveries_of(connection: &Connection, id: i64) -> Result<Vec<AlertDelivery>, StoreError> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM alert_deliveries WHERE alert_id = ?1 ORDER BY channel"
    ))?;
    let rows = statement.query_map([id], delivery_from_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn alert_from_row(row: &Row<'_>) -> rusqlite::Result<AlertRecord> {
    let details: String = row.get(5)?;
    // The table's CHECK admits only JSON; an object is all this module writes.
    let details = serde_json::from_str(&details).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, Box::new(error))
    })?;
    Ok(AlertRecord {
        id: row.get(0)?,
        rule: row.get(1)?,
        key: row.get(2)?,
        severity: row.get(3)?,
        summary: row.get(4)?,
        details,
        raised_at: row.get(6)?,
        last_raised_at: row.get(7)?,
        repeats: row.get::<_, i64>(8)?.max(0) as u64,
        acknowledged_at: row.get(9)?,
        acknowledged_by: row.get(10)?,
        acknowledgement_note: row.get(11)?,
        deliveries: Vec::new(),
    })
}

pub(crate) fn delivery_state_column(state: &str) -> Result<DeliveryState, StoreError> {
    DeliveryState::parse(state).ok_or_else(|| invalid(format!("unknown delivery state {state:?}")))
}

fn delivery_from_row(row: &Row<'_>) -> rusqlite::Result<AlertDelivery> {
    let state: String = row.get(1)?;
    let state = DeliveryState::parse(&state).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, state.into())
    })?;
    Ok(AlertDelivery {
        channel: row.get(0)?,
        state,
        attempts: row.get(2)?,
        next_attempt_at: row.get(3)?,
        last_error: row.get(4)?,
        delivered_at: row.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;
    use crate::backends::each_backend;

    static NOW: AtomicI64 = AtomicI64::new(1_000_000);

    fn clock() -> i64 {
        NOW.load(Ordering::SeqCst)
    }

    fn details() -> serde_json::Map<String, serde_json::Value> {
        serde_json::json!({"score": 0.97}).as_object().cloned().unwrap()
    }

    fn alert<'a>(
        key: &'a str,
        details: &'a serde_json::Map<String, serde_json::Value>,
        channels: &'a [String],
    ) -> NewAlert<'a> {
        NewAlert {
            rule: "anomaly",
            key,
            severity: "warning",
            summary: "anomalous connection",
            details,
            channels,
            cooldown_seconds: 600,
        }
    }

    #[test]
    fn alerts_are_deduplicated_within_the_cooldown_and_queued_on_their_channels() {
        each_backend(clock, |fixture| {
            let store = fixture.open();
            let (details, channels) = (details(), vec!["hook".to_owned(), "mail".to_owned()]);
            let Raised::New(first) = store.raise_alert(&alert("host-a", &details, &channels)).unwrap() else {
                panic!("the first alert is new")
            };
            // Same rule and key inside the cooldown: a repeat, no new delivery.
            NOW.fetch_add(60, Ordering::SeqCst);
            assert_eq!(
                store.raise_alert(&alert("host-a", &details, &channels)).unwrap(),
                Raised::Repeat(first)
            );
            // Another key is another alert.
            let other = store.raise_alert(&alert("host-b", &details, &channels[..1])).unwrap();
            assert!(matches!(other, Raised::New(id) if id > first));
            let stored = store.alert(first).unwrap().unwrap();
            assert_eq!((stored.repeats, stored.last_raised_at - stored.raised_at), (1, 60));
            assert_eq!(stored.details, details);
            assert_eq!(stored.deliveries.len(), 2);
            assert!(stored.deliveries.iter().all(|delivery| delivery.state == DeliveryState::Pending));
            assert_eq!(store.due_alert_deliveries("hook", clock(), 10).unwrap().len(), 2);
            assert_eq!(store.due_alert_deliveries("hook", clock(), 1).unwrap()[0].alert.id, first);
            let mail = store.due_alert_deliveries("mail", clock(), 10).unwrap();
            assert_eq!((mail.len(), mail[0].alert.clone()), (1, stored));

            // After the cooldown the same rule and key is a new alert, also after a restart.
            NOW.fetch_add(600, Ordering::SeqCst);
            drop(store);
            let store = fixture.open();
            assert!(matches!(
                store.raise_alert(&alert("host-a", &details, &channels)).unwrap(),
                Raised::New(_)
            ));
        });
    }

    #[test]
    fn replicas_raising_one_rule_and_key_at_once_make_one_alert_and_repeats() {
        each_backend(crate::system_clock, |fixture| {
            const REPLICAS: usize = 6;
            let stores: Vec<Store> = (0..REPLICAS).map(|_| fixture.open()).collect();
            let (details, channels) = (details(), vec!["hook".to_owned()]);
            let barrier = Barrier::new(REPLICAS);
            let raised: Vec<Raised> = std::thread::scope(|scope| {
                let threads: Vec<_> = stores
                    .iter()
                    .map(|store| {
                        let (barrier, details, channels) = (&barrier, &details, &channels);
                        scope.spawn(move || {
                            barrier.wait();
                            store.raise_alert(&alert("host-a", details, channels)).unwrap()
                        })
                    })
                    .collect();
                threads.into_iter().map(|thread| thread.join().unwrap()).collect()
            });
            let new: Vec<i64> = raised
                .iter()
                .filter_map(|raised| if let Raised::New(id) = raised { Some(*id) } else { None })
                .collect();
            assert_eq!(new.len(), 1, "{raised:?}");
            assert!(
                raised
                    .iter()
                    .all(|raised| matches!(raised, Raised::New(id) | Raised::Repeat(id) if *id == new[0]))
            );
            let stored = stores[0].alert(new[0]).unwrap().unwrap();
            assert_eq!((stored.repeats, stored.deliveries.len()), (REPLICAS as u64 - 1, 1));
            let query = AlertQuery { acknowledged: None, before: None, limit: 10 };
            assert_eq!(stores[0].alerts(&query).unwrap().len(), 1);
        });
    }

    #[test]
    fn deliveries_move_from_pending_to_delivered_or_failed() {
        each_backend(crate::system_clock, |fixture| {
            let store = fixture.open();
            let (details, channels) = (details(), vec!["hook".to_owned(), "mail".to_owned()]);
            let Raised::New(id) = store.raise_alert(&alert("host-a", &details, &channels)).unwrap() else {
                panic!("new")
            };
            let now = store.now();
            store.alert_delivery_failed(id, "hook", "HTTP 503", Some(now + 30)).unwrap();
            store.alert_delivered(id, "mail").unwrap();
            // The failed try waits for its retry time.
            assert!(store.due_alert_deliveries("hook", now, 10).unwrap().is_empty());
            assert!(store.due_alert_deliveries("mail", now + 30, 10).unwrap().is_empty());
            assert_eq!(store.next_alert_delivery_at("hook").unwrap(), Some(now + 30));
            assert_eq!(store.next_alert_delivery_at("mail").unwrap(), None);
            let due = store.due_alert_deliveries("hook", now + 30, 10).unwrap();
            assert_eq!((due.len(), due[0].channel.as_str(), due[0].attempts), (1, "hook", 1));
            assert_eq!(store.due_alert_deliveries("hook", now + 30, usize::MAX).unwrap(), due, "no limit");
            assert_eq!(due[0].alert.deliveries[0].last_error.as_deref(), Some("HTTP 503"));
            store.alert_delivery_failed(id, "hook", &"x".repeat(5000), None).unwrap();
            let stored = store.alert(id).unwrap().unwrap();
            let states: Vec<_> =
                stored.deliveries.iter().map(|d| (d.channel.as_str(), d.state, d.attempts)).collect();
            assert_eq!(states, [("hook", DeliveryState::Failed, 2), ("mail", DeliveryState::Delivered, 1)]);
            assert_eq!(stored.deliveries[0].last_error.as_ref().map(String::len), Some(MAX_ERROR_LEN));
            assert!(stored.deliveries[1].delivered_at.is_some());
            assert_eq!(store.next_alert_delivery_at("hook").unwrap(), None);
        });
    }

    #[test]
    fn deliveries_on_a_removed_channel_are_given_up() {
        each_backend(crate::system_clock, |fixture| {
            let store = fixture.open();
            let (details, channels) = (details(), vec!["hook".to_owned(), "old".to_owned()]);
            let Raised::New(id) = store.raise_alert(&alert("host-a", &details, &channels)).unwrap() else {
                panic!("new")
            };
            assert_eq!(store.abandon_alert_deliveries(&["hook".to_owned()]).unwrap(), 1);
            let stored = store.alert(id).unwrap().unwrap();
            let states: Vec<_> = stored.deliveries.iter().map(|d| (d.channel.as_str(), d.state)).collect();
            assert_eq!(states, [("hook", DeliveryState::Pending), ("old", DeliveryState::Failed)]);
            assert_eq!(
                stored.deliveries[1].last_error.as_deref(),
                Some("the channel is no longer configured")
            );
            // No channel configured any more: every pending delivery is given up.
            assert_eq!(store.abandon_alert_deliveries(&[]).unwrap(), 1);
        });
    }

    #[test]
    fn acknowledgement_is_kept_once_and_listings_filter_on_it() {
        each_backend(crate::system_clock, |fixture| {
            let store = fixture.open();
            let details = details();
            let ids: Vec<i64> = ["a", "b", "c"]
                .iter()
                .map(|key| match store.raise_alert(&alert(key, &details, &[])).unwrap() {
                    Raised::New(id) => id,
                    Raised::Repeat(_) => panic!("distinct keys"),
                })
                .collect();
            let acked =
                store.acknowledge_alert(ids[1], "token:analyst#3", Some("known scanner")).unwrap().unwrap();
            assert_eq!(acked.acknowledged_by.as_deref(), Some("token:analyst#3"));
            assert_eq!(acked.acknowledgement_note.as_deref(), Some("known scanner"));
            let again = store.acknowledge_alert(ids[1], "token:other#4", None).unwrap().unwrap();
            assert_eq!(again.acknowledged_by.as_deref(), Some("token:analyst#3"));
            assert_eq!(store.acknowledge_alert(9999, "token:analyst#3", None).unwrap(), None);

            let query = |acknowledged, before| AlertQuery { acknowledged, before, limit: 10 };
            let ids_of =
                |alerts: Vec<AlertRecord>| alerts.into_iter().map(|alert| alert.id).collect::<Vec<_>>();
            assert_eq!(ids_of(store.alerts(&query(None, None)).unwrap()), [ids[2], ids[1], ids[0]]);
            assert_eq!(ids_of(store.alerts(&query(Some(false), None)).unwrap()), [ids[2], ids[0]]);
            assert_eq!(ids_of(store.alerts(&query(Some(true), None)).unwrap()), [ids[1]]);
            assert_eq!(ids_of(store.alerts(&query(None, Some(ids[2]))).unwrap()), [ids[1], ids[0]]);
            assert_eq!(
                ids_of(store.alerts(&AlertQuery { limit: 1, ..query(None, None) }).unwrap()),
                [ids[2]]
            );
        });
    }

    #[test]
    fn invalid_alerts_are_refused() {
        each_backend(crate::system_clock, |fixture| {
            let store = fixture.open();
            let details = details();
            let mut bad = alert("host", &details, &[]);
            bad.rule = "Anomaly Rule";
            assert!(matches!(store.raise_alert(&bad), Err(StoreError::InvalidAlert(_))));
            let bad = alert("host\nFAKE LINE", &details, &[]);
            assert!(matches!(store.raise_alert(&bad), Err(StoreError::InvalidAlert(_))));
            let big: serde_json::Map<_, _> =
                [("blob".to_owned(), serde_json::Value::String("x".repeat(MAX_DETAILS_LEN)))]
                    .into_iter()
                    .collect();
            assert!(matches!(store.raise_alert(&alert("host", &big, &[])), Err(StoreError::InvalidAlert(_))));
            assert!(
                store.alerts(&AlertQuery { acknowledged: None, before: None, limit: 10 }).unwrap().is_empty()
            );
        });
    }
}
