//! The API tokens of the HTTP API (`sentinel-auth` makes and checks them): for each, its name
//! (unique, so `sentinel token revoke NAME` is unambiguous), its scopes, when it was created,
//! when it expires, when it was last used and when it was revoked — and the SHA-256 of the
//! token, never the token itself, so a copy of the database lets no one call the API.
//!
//! The scopes are stored as the space-separated text `sentinel-auth` writes; the store gives
//! them no meaning. A revoked token keeps its row (its name stays taken) so that `token list`
//! shows what was revoked and when.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::{Store, StoreError, Tables, postgres};

/// Longest token name accepted, in bytes.
const MAX_NAME_LEN: usize = 128;

/// Longest scope list accepted, in bytes.
const MAX_SCOPES_LEN: usize = 1024;

/// A token to store: its hash, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiToken {
    pub name: String,
    /// SHA-256 of the token as the client sends it.
    pub hash: [u8; 32],
    /// Space-separated scope names.
    pub scopes: String,
    /// Unix seconds after which the token is refused; `None`: never expires.
    pub expires_at: Option<i64>,
}

/// A stored token, without its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenRecord {
    pub id: i64,
    pub name: String,
    /// Space-separated scope names.
    pub scopes: String,
    /// Unix seconds.
    pub created_at: i64,
    pub expires_at: Option<i64>,
    /// Unix seconds of the last request it authenticated, to the minute (see
    /// [`Store::record_api_token_use`]); `None`: never used.
    pub last_used: Option<i64>,
    pub revoked_at: Option<i64>,
}

const COLUMNS: &str = "id, name, scopes, created_at, expires_at, last_used, revoked_at";

fn record_from_row(row: &Row<'_>) -> rusqlite::Result<ApiTokenRecord> {
    Ok(ApiTokenRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        scopes: row.get(2)?,
        created_at: row.get(3)?,
        expires_at: row.get(4)?,
        last_used: row.get(5)?,
        revoked_at: row.get(6)?,
    })
}

impl NewApiToken {
    fn validate(&self) -> Result<(), StoreError> {
        let invalid = |reason: String| Err(StoreError::InvalidApiToken(reason));
        if self.name.trim().is_empty() || self.name.len() > MAX_NAME_LEN {
            return invalid(format!("a name must have 1 to {MAX_NAME_LEN} bytes"));
        }
        if self.name.chars().any(char::is_control) {
            return invalid("a name must not hold control characters".to_owned());
        }
        if self.scopes.trim().is_empty() || self.scopes.len() > MAX_SCOPES_LEN {
            return invalid(format!("the scopes must have 1 to {MAX_SCOPES_LEN} bytes"));
        }
        Ok(())
    }

    fn insert(&self, connection: &Connection, now: i64) -> Result<ApiTokenRecord, StoreError> {
        let taken: bool = connection
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM api_tokens WHERE name = ?1)")?
            .query_row([&self.name], |row| row.get(0))?;
        if taken {
            return Err(StoreError::ApiTokenNameTaken(self.name.clone()));
        }
        connection
            .prepare_cached(
                "INSERT INTO api_tokens (name, hash, scopes, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![self.name, &self.hash[..], self.scopes, now, self.expires_at])?;
        Ok(ApiTokenRecord {
            id: connection.last_insert_rowid(),
            name: self.name.clone(),
            scopes: self.scopes.clone(),
            created_at: now,
            expires_at: self.expires_at,
            last_used: None,
            revoked_at: None,
        })
    }
}

impl Store {
    /// Stores a new token; fails if its name is taken (revoked tokens keep theirs). Durable when
    /// this returns.
    pub fn create_api_token(&self, token: NewApiToken) -> Result<ApiTokenRecord, StoreError> {
        token.validate()?;
        let now = self.now();
        let database = match &self.tables {
            Tables::Sqlite(database) => database,
            Tables::Postgres(database) => return postgres::api_tokens::create(database, token, now),
        };
        database.write(move |connection| token.insert(connection, now))
    }

    /// The token whose SHA-256 is `hash`, revoked or expired ones included (the caller decides);
    /// one indexed read on a pooled read connection, made on every authenticated request.
    pub fn api_token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiTokenRecord>, StoreError> {
        let database = match &self.tables {
            Tables::Sqlite(database) => database,
            Tables::Postgres(database) => return postgres::api_tokens::by_hash(database, *hash),
        };
        database.read(|connection| {
            let mut statement =
                connection.prepare_cached(&format!("SELECT {COLUMNS} FROM api_tokens WHERE hash = ?1"))?;
            Ok(statement.query_row([&hash[..]], record_from_row).optional()?)
        })
    }

    /// Every token, revoked ones included, oldest first.
    pub fn api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError> {
        let database = match &self.tables {
            Tables::Sqlite(database) => database,
            Tables::Postgres(database) => return postgres::api_tokens::list(database),
        };
        database.read(|connection| {
            let mut statement =
                connection.prepare_cached(&format!("SELECT {COLUMNS} FROM api_tokens ORDER BY id"))?;
            let records = statement.query_map([], record_from_row)?.collect::<Result<_, _>>()?;
            Ok(records)
        })
    }

    /// Whether any token was ever created (a revoked one counts): `serve` makes the first admin
    /// token only in a data directory that never had one.
    pub fn has_api_tokens(&self) -> Result<bool, StoreError> {
        let database = match &self.tables {
            Tables::Sqlite(database) => database,
            Tables::Postgres(database) => return postgres::api_tokens::any(database),
        };
        database.read(|connection| {
            Ok(connection.query_row("SELECT EXISTS (SELECT 1 FROM api_tokens)", [], |row| row.get(0))?)
        })
    }

    /// Revokes the token named `name`: refused from the next request on, in every process using
    /// this data directory. Returns `false` when no token has that name or it was already
    /// revoked. Durable when this returns.
    pub fn revoke_api_token(&self, name: &str) -> Result<bool, StoreError> {
        let (name, now) = (name.to_owned(), self.now());
        let database = match &self.tables {
            Tables::Sqlite(database) => database,
            Tables::Postgres(database) => return postgres::api_tokens::revoke(database, name, now),
        };
        database.write(move |connection| {
            let changed = connection
                .prepare_cached(
                    "UPDATE api_tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
                )?
                .execute(params![name, now])?;
            Ok(changed == 1)
        })
    }

    /// Records that token `id` authenticated a request at `at` (unix seconds). Callers write this
    /// at most once a minute per token: each write is a durable transaction.
    pub fn record_api_token_use(&self, id: i64, at: i64) -> Result<(), StoreError> {
        let database = match &self.tables {
            Tables::Sqlite(database) => database,
            Tables::Postgres(database) => return postgres::api_tokens::record_use(database, id, at),
        };
        database.write(move |connection| {
            connection
                .prepare_cached(
                    "UPDATE api_tokens SET last_used = max(coalesce(last_used, 0), ?2) WHERE id = ?1",
                )?
                .execute(params![id, at])?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use super::*;
    use crate::backends::each_backend;

    fn new_token(name: &str, byte: u8) -> NewApiToken {
        NewApiToken { name: name.to_owned(), hash: [byte; 32], scopes: "admin".to_owned(), expires_at: None }
    }

    #[test]
    fn tokens_are_found_by_hash_listed_revoked_and_names_stay_unique() {
        each_backend(crate::system_clock, |fixture| {
            let store = fixture.open();
            assert!(!store.has_api_tokens().unwrap());
            let created = store.create_api_token(new_token("ci", 1)).unwrap();
            assert!(store.has_api_tokens().unwrap());
            assert_eq!(store.api_token_by_hash(&[1; 32]).unwrap(), Some(created.clone()));
            assert_eq!(store.api_token_by_hash(&[2; 32]).unwrap(), None);
            assert!(matches!(
                store.create_api_token(new_token("ci", 2)),
                Err(StoreError::ApiTokenNameTaken(_))
            ));
            assert!(matches!(store.create_api_token(new_token(" ", 3)), Err(StoreError::InvalidApiToken(_))));

            store.record_api_token_use(created.id, 1_000).unwrap();
            store.record_api_token_use(created.id, 900).unwrap();
            assert_eq!(store.api_token_by_hash(&[1; 32]).unwrap().unwrap().last_used, Some(1_000));

            assert!(store.revoke_api_token("ci").unwrap());
            assert!(!store.revoke_api_token("ci").unwrap());
            assert!(!store.revoke_api_token("nobody").unwrap());
            let second = store.create_api_token(new_token("deploy", 5)).unwrap();
            assert!(second.id > created.id);
            drop(store);

            // After a restart: listed oldest first, the revoked one kept with its name taken.
            let store = fixture.open();
            let listed = store.api_tokens().unwrap();
            assert_eq!(listed.iter().map(|token| token.name.as_str()).collect::<Vec<_>>(), ["ci", "deploy"]);
            assert!(listed[0].revoked_at.is_some() && listed[1].revoked_at.is_none());
            assert_eq!(listed[0].last_used, Some(1_000));
            assert!(matches!(
                store.create_api_token(new_token("ci", 4)),
                Err(StoreError::ApiTokenNameTaken(_))
            ));
        });
    }

    #[test]
    fn replicas_creating_one_name_at_once_make_one_token() {
        each_backend(crate::system_clock, |fixture| {
            const REPLICAS: usize = 6;
            let stores: Vec<Store> = (0..REPLICAS).map(|_| fixture.open()).collect();
            let barrier = Barrier::new(REPLICAS);
            let outcomes: Vec<_> = std::thread::scope(|scope| {
                let threads: Vec<_> = stores
                    .iter()
                    .enumerate()
                    .map(|(index, store)| {
                        let barrier = &barrier;
                        scope.spawn(move || {
                            barrier.wait();
                            store.create_api_token(new_token("admin", index as u8))
                        })
                    })
                    .collect();
                threads.into_iter().map(|thread| thread.join().unwrap()).collect()
            });
            let created = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
            let taken = outcomes
                .iter()
                .filter(|outcome| matches!(outcome, Err(StoreError::ApiTokenNameTaken(_))))
                .count();
            assert_eq!((created, taken), (1, REPLICAS - 1), "{outcomes:?}");
            assert_eq!(stores[0].api_tokens().unwrap().len(), 1);
        });
    }
}
