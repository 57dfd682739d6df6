//! The safelist and the badlist: SHA-256 hashes an operator has decided about, each with why
//! (`reason`), where the decision comes from (`source`: a ticket, a feed, an analyst) and who
//! added it. The malware server answers a listed hash at once — y = 0 for the safelist, 1 for
//! the badlist — without running any analysis, and records that answer as a verdict of
//! analysis `list`, so list hits stay auditable like every other verdict.
//!
//! A hash is on at most one list: adding it to the other list moves it (the previous entry is
//! handed back, so the caller can say so). The server reads the entry of each request's hash
//! from the table (one indexed lookup on a read connection), so a change made by `sentinel
//! lists` in another process applies to the next request without a restart. The CSV form is
//! `sha256,reason,source`, one file per list.

use std::fmt;
use std::io::{Read, Write};
use std::str::FromStr;

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::dataset_csv::{self, ImportReport, preview};
use crate::sample_hash::SampleHash;
use crate::{Store, StoreError, Tables, postgres};

/// Entries read per query by the export.
const EXPORT_PAGE: usize = 512;

/// Longest reason accepted, in bytes: a sentence or two for people, not a document.
const MAX_REASON_LEN: usize = 1024;

/// Longest source or `added_by` accepted, in bytes.
const MAX_SOURCE_LEN: usize = 256;

/// Most entries one page of [`Store::list_entries`] returns.
pub const MAX_LIST_PAGE: usize = 1000;

const CSV_HEADER: &str = "sha256,reason,source";

/// The source given to imported rows whose `source` column is empty.
const IMPORT_SOURCE: &str = "import";

/// Which list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashList {
    /// Known good: answered y = 0.
    Safe,
    /// Known bad: answered y = 1.
    Bad,
}

impl HashList {
    pub const ALL: [HashList; 2] = [HashList::Safe, HashList::Bad];

    /// The name used in the table, the CLI and the API: `safe` or `bad`.
    pub fn as_str(self) -> &'static str {
        match self {
            HashList::Safe => "safe",
            HashList::Bad => "bad",
        }
    }

    /// The list's name for people and verdicts: `safelist` or `badlist`.
    pub fn title(self) -> &'static str {
        match self {
            HashList::Safe => "safelist",
            HashList::Bad => "badlist",
        }
    }

    /// The verdict a hash on this list gets.
    pub fn score(self) -> f64 {
        match self {
            HashList::Safe => 0.0,
            HashList::Bad => 1.0,
        }
    }
}

impl fmt::Display for HashList {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A list name that is neither `safe` nor `bad`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown list {0:?}: expected safe or bad")]
pub struct UnknownList(pub String);

impl FromStr for HashList {
    type Err = UnknownList;

    /// `safe` or `bad`; `safelist` and `badlist` are taken too.
    fn from_str(name: &str) -> Result<HashList, UnknownList> {
        HashList::ALL
            .into_iter()
            .find(|list| name == list.as_str() || name == list.title())
            .ok_or_else(|| UnknownList(name.chars().take(40).collect()))
    }
}

/// An entry to add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewListEntry<'a> {
    /// SHA-256 of the file, 64 hexadecimal characters in either case.
    pub sha256: &'a str,
    pub list: HashList,
    /// Why the hash is listed; 1 to 1024 bytes, no control characters.
    pub reason: &'a str,
    /// Where the decision comes from (`analyst`, a ticket, a feed's name); 1 to 256 bytes.
    pub source: &'a str,
    /// Who added it: `cli:USER`, `token:NAME#ID`…; at most 256 bytes.
    pub added_by: &'a str,
}

/// An entry of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// Lowercase hexadecimal SHA-256.
    pub sha256: String,
    pub list: HashList,
    pub reason: String,
    pub source: String,
    /// Unix seconds when the entry was added (or last replaced).
    pub added_at: i64,
    pub added_by: String,
}

/// Which entries to list: those of `list`, ordered by hash, after `after` when given, at most
/// `limit` of them (`None`: all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub list: HashList,
    pub after: Option<String>,
    pub limit: Option<usize>,
}

/// An entry checked and copied, so the writer thread can write it.
#[derive(Debug, Clone)]
pub(crate) struct ValidEntry {
    pub(crate) hash: SampleHash,
    pub(crate) list: HashList,
    pub(crate) reason: String,
    pub(crate) source: String,
    pub(crate) added_by: String,
}

const COLUMNS: &str = "sha256, list, reason, source, added_at, added_by";

const UPSERT: &str = "INSERT INTO hash_lists (sha256, list, reason, source, added_at, added_by)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)
    ON CONFLICT (sha256) DO UPDATE SET
        list = excluded.list, reason = excluded.reason, source = excluded.source,
        added_at = excluded.added_at, added_by = excluded.added_by";

impl Store {
    /// Puts a hash on a list (moving it from the other list if it is there). Returns the entry
    /// it replaced, if any. Durable when this returns.
    pub fn add_list_entry(&self, entry: &NewListEntry<'_>) -> Result<Option<ListEntry>, StoreError> {
        let entry = ValidEntry::new(entry)?;
        let now = self.now();
        match &self.tables {
            Tables::Sqlite(database) => database.write(move |connection| entry.upsert(connection, now)),
            Tables::Postgres(database) => {
                Ok(postgres::hash_lists::add(database, vec![entry], now)?.remove(0))
            }
        }
    }

    /// Takes a hash off `list`. Returns the entry removed; `None` when the hash was not on
    /// that list (an entry on the other list stays).
    pub fn remove_list_entry(
        &self,
        list: HashList,
        sha256_hex: &str,
    ) -> Result<Option<ListEntry>, StoreError> {
        let hash = SampleHash::parse(sha256_hex)?;
        match &self.tables {
            Tables::Sqlite(database) => database.write(move |connection| {
                let mut statement = connection.prepare_cached(&format!(
                    "DELETE FROM hash_lists WHERE sha256 = ?1 AND list = ?2 RETURNING {COLUMNS}"
                ))?;
                Ok(statement.query_row(params![hash.as_str(), list.as_str()], entry_from_row).optional()?)
            }),
            Tables::Postgres(database) => postgres::hash_lists::remove(database, list, hash),
        }
    }

    /// The entry of a hash on either list, or `None` when it is on neither. The malware server
    /// asks this for every request: one lookup by primary key.
    pub fn list_entry(&self, sha256_hex: &str) -> Result<Option<ListEntry>, StoreError> {
        let hash = SampleHash::parse(sha256_hex)?;
        match &self.tables {
            Tables::Sqlite(database) => database.read(|connection| entry_of(connection, hash.as_str())),
            Tables::Postgres(database) => postgres::hash_lists::get(database, hash),
        }
    }

    /// Entries of a list, ordered by hash (see [`ListQuery`]).
    pub fn list_entries(&self, query: &ListQuery) -> Result<Vec<ListEntry>, StoreError> {
        let after = query.after.as_deref().map(SampleHash::parse).transpose()?;
        let after = after.as_ref().map_or("", SampleHash::as_str).to_owned();
        let limit = query.limit.map(|limit| i64::try_from(limit).unwrap_or(i64::MAX));
        match &self.tables {
            Tables::Sqlite(database) => database.read(|connection| {
                let mut statement = connection.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM hash_lists WHERE list = ?1 AND sha256 > ?2 ORDER BY sha256 LIMIT ?3"
                ))?;
                // SQLite reads a negative LIMIT as none.
                let limit = limit.unwrap_or(-1);
                let rows = statement.query_map(params![query.list.as_str(), after, limit], entry_from_row)?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            }),
            Tables::Postgres(database) => postgres::hash_lists::page(database, query.list, after, limit),
        }
    }

    /// Writes a list as CSV with the header `sha256,reason,source`, ordered by hash. Returns
    /// the number of rows written.
    pub fn export_list_csv(&self, list: HashList, out: impl Write) -> Result<u64, StoreError> {
        let mut writer = csv::Writer::from_writer(out);
        writer.write_record(CSV_HEADER.split(','))?;
        // A page at a time, so the export's memory does not grow with the list.
        let mut query = ListQuery { list, after: None, limit: Some(EXPORT_PAGE) };
        let mut written = 0u64;
        loop {
            let entries = self.list_entries(&query)?;
            for entry in &entries {
                writer.write_record([&entry.sha256, &entry.reason, &entry.source])?;
            }
            written += entries.len() as u64;
            match entries.last() {
                Some(last) if entries.len() == EXPORT_PAGE => query.after = Some(last.sha256.clone()),
                _ => break,
            }
        }
        writer.flush().map_err(csv::Error::from)?;
        Ok(written)
    }

    /// Imports entries of `list` from CSV with the header `sha256,reason,source` (an empty
    /// source becomes `import`), added by `added_by`. A hash on the other list moves; a later
    /// row for the same hash wins. Invalid rows are skipped and reported. Fails only if the
    /// header is wrong or the input cannot be read.
    pub fn import_list_csv(
        &self,
        list: HashList,
        input: impl Read,
        added_by: &str,
    ) -> Result<ImportReport, StoreError> {
        let parse = |record: &csv::StringRecord| parse_row(record, list, added_by);
        dataset_csv::import_rows(input, CSV_HEADER, parse, |rows, report| {
            let now = self.now();
            let entries: Vec<ValidEntry> = rows.into_iter().map(|(_, entry)| entry).collect();
            let replaced = match &self.tables {
                Tables::Sqlite(database) => database.write(move |connection| {
                    entries.iter().map(|entry| entry.upsert(connection, now)).collect::<Result<Vec<_>, _>>()
                })?,
                Tables::Postgres(database) => postgres::hash_lists::add(database, entries, now)?,
            };
            for _ in replaced {
                report.count(true);
            }
            Ok(())
        })
    }
}

impl ValidEntry {
    fn new(entry: &NewListEntry<'_>) -> Result<ValidEntry, StoreError> {
        let hash = SampleHash::parse(entry.sha256)?;
        let invalid = |reason: String| Err(StoreError::InvalidListEntry(reason));
        for (name, text, limit) in [
            ("reason", entry.reason, MAX_REASON_LEN),
            ("source", entry.source, MAX_SOURCE_LEN),
            ("added_by", entry.added_by, MAX_SOURCE_LEN),
        ] {
            if text.trim().is_empty() || text.len() > limit {
                return invalid(format!("{name} is {} bytes, not 1 to {limit} (and not blank)", text.len()));
            }
            // Entries are printed in tables, logs and protocol messages, one per line.
            if text.chars().any(char::is_control) {
                return invalid(format!("{name} contains control characters"));
            }
        }
        Ok(ValidEntry {
            hash,
            list: entry.list,
            reason: entry.reason.to_owned(),
            source: entry.source.to_owned(),
            added_by: entry.added_by.to_owned(),
        })
    }

    /// Writes the entry; returns the one it replaced.
    fn upsert(&self, connection: &Connection, now: i64) -> Result<Option<ListEntry>, StoreError> {
        let previous = entry_of(connection, self.hash.as_str())?;
        let mut statement = connection.prepare_cached(UPSERT)?;
        statement.execute(params![
            self.hash.as_str(),
            self.list.as_str(),
            self.reason,
            self.source,
            now,
            self.added_by
        ])?;
        Ok(previous)
    }
}

fn entry_of(connection: &Connection, sha256: &str) -> Result<Option<ListEntry>, StoreError> {
    let mut statement =
        connection.prepare_cached(&format!("SELECT {COLUMNS} FROM hash_lists WHERE sha256 = ?1"))?;
    Ok(statement.query_row([sha256], entry_from_row).optional()?)
}

fn entry_from_row(row: &Row<'_>) -> rusqlite::Result<ListEntry> {
    let list: String = row.get(1)?;
    // The table's CHECK admits only the two lists.
    let list = list.parse().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, list.into())
    })?;
    Ok(ListEntry {
        sha256: row.get(0)?,
        list,
        reason: row.get(2)?,
        source: row.get(3)?,
        added_at: row.get(4)?,
        added_by: row.get(5)?,
    })
}

/// Parses one CSV row into an entry of `list`, or says why not.
fn parse_row(record: &csv::StringRecord, list: HashList, added_by: &str) -> Result<ValidEntry, String> {
    let [sha256, reason, source] = record.iter().collect::<Vec<_>>()[..] else {
        return Err(format!("{} fields, expected 3 ({CSV_HEADER})", record.len()));
    };
    let source = match source.trim() {
        "" => IMPORT_SOURCE,
        source => source,
    };
    let entry = NewListEntry { sha256: sha256.trim(), list, reason: reason.trim(), source, added_by };
    ValidEntry::new(&entry).map_err(|error| format!("{error} (reason {:?})", preview(reason)))
}
