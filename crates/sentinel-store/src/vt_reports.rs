//! The VirusTotal results dataset (SPEC §1.3 (2)): the newest VirusTotal report obtained through
//! any client, keyed by the file's SHA-256, so that a hash any client already paid for is
//! answered from here without spending anyone's quota.
//!
//! The report itself is kept as opaque JSON: its shape belongs to the VirusTotal client crate,
//! and the store must not break when that crate adds a field. Beside it are the columns queries
//! and the CSV need. Whether a report is fresh enough is the caller's policy; the store keeps
//! the most recently fetched report per hash.

use std::io::{Read, Write};

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::dataset_csv::{self, ImportReport, preview};
use crate::sample_hash::SampleHash;
use crate::{Store, StoreError, Tables, postgres};

/// Reports read from PostgreSQL per query by the export.
const EXPORT_PAGE: i64 = 256;

/// Largest report accepted, in bytes of JSON: far above a real report, low enough that a
/// hostile one cannot bloat the database.
const MAX_REPORT_JSON_LEN: usize = 4 * 1024 * 1024;

/// Columns of the CSV form, in order.
const CSV_HEADER: &str =
    "sha256,last_analysis_date,fetched_at,malicious,suspicious,undetected,harmless,report_json";

/// One VirusTotal report as the dataset keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VtReportRow {
    /// SHA-256 of the file, 64 hexadecimal characters (stored and returned in lower case).
    pub sha256: String,
    /// When VirusTotal last analysed the file (unix seconds), if it says.
    pub last_analysis_date: Option<i64>,
    /// When Sentinel obtained the report (unix seconds): the newest fetch wins.
    pub fetched_at: i64,
    /// Engines per category in VirusTotal's `last_analysis_stats`.
    pub malicious: u32,
    pub suspicious: u32,
    pub undetected: u32,
    pub harmless: u32,
    /// The report, as the VirusTotal client serialised it. Must be valid JSON, at most 4 MiB.
    pub report_json: String,
}

/// Inserts, or replaces a report fetched no later. `changes()` tells which happened.
const UPSERT: &str = "INSERT INTO vt_reports
        (sha256, last_analysis_date, fetched_at, malicious, suspicious, undetected, harmless, report_json)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
    ON CONFLICT (sha256) DO UPDATE SET
        last_analysis_date = excluded.last_analysis_date, fetched_at = excluded.fetched_at,
        malicious = excluded.malicious, suspicious = excluded.suspicious,
        undetected = excluded.undetected, harmless = excluded.harmless,
        report_json = excluded.report_json
    WHERE excluded.fetched_at >= vt_reports.fetched_at";

const COLUMNS: &str =
    "sha256, last_analysis_date, fetched_at, malicious, suspicious, undetected, harmless, report_json";

impl Store {
    /// Stores a report unless the dataset holds one for the same hash fetched later; a report
    /// fetched at the same second replaces the stored one. Returns whether it was stored.
    /// Durable when this returns.
    pub fn put_vt_report(&self, report: &VtReportRow) -> Result<bool, StoreError> {
        let report = validate(report)?;
        match &self.tables {
            Tables::Sqlite(database) => database.write(move |connection| upsert(connection, &report)),
            Tables::Postgres(database) => Ok(postgres::vt_reports::put(database, vec![report])?[0]),
        }
    }

    /// The stored report on a hash, or `None`; the caller decides whether it is fresh enough.
    pub fn vt_report(&self, sha256_hex: &str) -> Result<Option<VtReportRow>, StoreError> {
        let hash = SampleHash::parse(sha256_hex)?;
        match &self.tables {
            Tables::Sqlite(database) => database.read(|connection| {
                let mut statement = connection
                    .prepare_cached(&format!("SELECT {COLUMNS} FROM vt_reports WHERE sha256 = ?1"))?;
                Ok(statement.query_row([hash.as_str()], report_from_row).optional()?)
            }),
            Tables::Postgres(database) => postgres::vt_reports::get(database, hash.as_str().to_owned()),
        }
    }

    /// Writes the whole dataset as CSV, one report per row ordered by hash, under the header
    /// `sha256,last_analysis_date,fetched_at,malicious,suspicious,undetected,harmless,report_json`
    /// (`last_analysis_date` empty when unknown). Returns the number of rows written.
    pub fn export_vt_reports_csv(&self, out: impl Write) -> Result<u64, StoreError> {
        let mut writer = csv::Writer::from_writer(out);
        writer.write_record(CSV_HEADER.split(','))?;
        let mut write = |report: VtReportRow| {
            writer.write_record([
                report.sha256,
                report.last_analysis_date.map(|date| date.to_string()).unwrap_or_default(),
                report.fetched_at.to_string(),
                report.malicious.to_string(),
                report.suspicious.to_string(),
                report.undetected.to_string(),
                report.harmless.to_string(),
                report.report_json,
            ])
        };
        let mut written = 0u64;
        match &self.tables {
            Tables::Sqlite(database) => database.read(|connection| {
                let mut statement = connection
                    .prepare_cached(&format!("SELECT {COLUMNS} FROM vt_reports ORDER BY sha256"))?;
                let mut rows = statement.query([])?;
                while let Some(row) = rows.next()? {
                    write(report_from_row(row)?)?;
                    written += 1;
                }
                Ok(())
            })?,
            Tables::Postgres(database) => {
                let mut after = None;
                loop {
                    let page = postgres::vt_reports::page(database, after.take(), EXPORT_PAGE)?;
                    let full = page.len() as i64 == EXPORT_PAGE;
                    for report in page {
                        after = Some(report.sha256.clone());
                        write(report)?;
                        written += 1;
                    }
                    if !full {
                        break;
                    }
                }
            }
        }
        writer.flush().map_err(csv::Error::from)?;
        Ok(written)
    }

    /// Imports reports from CSV in the form [`Store::export_vt_reports_csv`] writes. Each row
    /// is stored as by [`Store::put_vt_report`] (a report fetched later than the stored one
    /// wins), then given to `stored` — the caller labels its sample from it, as for a report
    /// fetched live; rows that change nothing are not. Invalid rows are skipped and reported
    /// with their line number. Fails if the header is not the expected one, the input cannot
    /// be read, or `stored` fails.
    pub fn import_vt_reports_csv(
        &self,
        input: impl Read,
        mut stored: impl FnMut(&VtReportRow) -> Result<(), StoreError>,
    ) -> Result<ImportReport, StoreError> {
        dataset_csv::import_rows(input, CSV_HEADER, parse_row, |rows, report| {
            let (rows, written) = match &self.tables {
                Tables::Sqlite(database) => database.write(move |connection| {
                    let written =
                        rows.iter().map(|(_, row)| upsert(connection, row)).collect::<Result<Vec<_>, _>>()?;
                    Ok((rows, written))
                })?,
                Tables::Postgres(database) => {
                    let written = postgres::vt_reports::put(
                        database,
                        rows.iter().map(|(_, row)| row.clone()).collect(),
                    )?;
                    (rows, written)
                }
            };
            for ((_, row), written) in rows.iter().zip(written) {
                report.count(written);
                if written {
                    stored(row)?;
                }
            }
            Ok(())
        })
    }
}

/// A copy of `report` with its hash normalised, or why it cannot be stored.
fn validate(report: &VtReportRow) -> Result<VtReportRow, StoreError> {
    let hash = SampleHash::parse(&report.sha256)?;
    let invalid = |reason: String| Err(StoreError::InvalidVtReport(reason));
    if report.report_json.len() > MAX_REPORT_JSON_LEN {
        return invalid(format!(
            "report_json is {} bytes, more than {MAX_REPORT_JSON_LEN}",
            report.report_json.len()
        ));
    }
    if let Err(error) = serde_json::from_str::<serde::de::IgnoredAny>(&report.report_json) {
        return invalid(format!("report_json is not JSON: {error}"));
    }
    Ok(VtReportRow { sha256: hash.as_str().to_owned(), ..report.clone() })
}

fn upsert(connection: &Connection, report: &VtReportRow) -> Result<bool, StoreError> {
    let mut statement = connection.prepare_cached(UPSERT)?;
    let changed = statement.execute(params![
        report.sha256,
        report.last_analysis_date,
        report.fetched_at,
        report.malicious,
        report.suspicious,
        report.undetected,
        report.harmless,
        report.report_json
    ])?;
    Ok(changed > 0)
}

fn report_from_row(row: &Row<'_>) -> rusqlite::Result<VtReportRow> {
    Ok(VtReportRow {
        sha256: row.get(0)?,
        last_analysis_date: row.get(1)?,
        fetched_at: row.get(2)?,
        malicious: row.get(3)?,
        suspicious: row.get(4)?,
        undetected: row.get(5)?,
        harmless: row.get(6)?,
        report_json: row.get(7)?,
    })
}

/// Parses and validates one CSV row, or says why not.
fn parse_row(record: &csv::StringRecord) -> Result<VtReportRow, String> {
    let [sha256, last_analysis_date, fetched_at, malicious, suspicious, undetected, harmless, report_json] =
        record.iter().collect::<Vec<_>>()[..]
    else {
        return Err(format!("{} fields, expected 8 ({CSV_HEADER})", record.len()));
    };
    let integer = |name: &str, text: &str| {
        text.trim().parse::<i64>().map_err(|_| format!("{name} {:?} is not an integer", preview(text)))
    };
    let count = |name: &str, text: &str| {
        text.trim().parse::<u32>().map_err(|_| format!("{name} {:?} is not a count", preview(text)))
    };
    let row = VtReportRow {
        sha256: sha256.to_owned(),
        last_analysis_date: match last_analysis_date.trim() {
            "" => None,
            date => Some(integer("last_analysis_date", date)?),
        },
        fetched_at: integer("fetched_at", fetched_at)?,
        malicious: count("malicious", malicious)?,
        suspicious: count("suspicious", suspicious)?,
        undetected: count("undetected", undetected)?,
        harmless: count("harmless", harmless)?,
        report_json: report_json.to_owned(),
    };
    validate(&row).map_err(|error| error.to_string())
}
