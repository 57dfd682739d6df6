//! The labelled-samples dataset (SPEC §1.3 (1)): a label y (0 benign, 1 malicious) per sample
//! hash, what the models are retrained on. It grows by itself from VirusTotal reports and is
//! corrected by analysts, so labels have a source and a precedence: a manual label overrides
//! any label, an automatic one (VirusTotal, import) never overrides a manual one, and otherwise
//! the latest label wins.
//!
//! The sample's file is not stored here: it is the vault's copy, listed by the samples table,
//! so retention and the vault stay the one authority on which files exist. The CSV form keeps
//! the columns of the first design, `file_path,sha256,y`, with `file_path` the vault file.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use deadpool_postgres::Transaction;
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::dataset_csv::{self, ImportReport, preview};
use crate::sample_hash::SampleHash;
use crate::samples::SampleRows;
use crate::vault::Vault;
use crate::{Store, StoreError, Tables, postgres};

/// Labels read from PostgreSQL per query.
const PAGE: i64 = 512;

/// Longest note accepted, in bytes.
const MAX_NOTE_LEN: usize = 4096;

const CSV_HEADER: &str = "file_path,sha256,y";

/// Where a label comes from; decides precedence (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LabelSource {
    /// Derived from a VirusTotal report (automatic).
    VirusTotal,
    /// Set by an analyst; overrides every other source.
    Manual,
    /// Read from an imported CSV dataset (automatic).
    Import,
}

impl LabelSource {
    /// The name stored in the database: `virustotal`, `manual` or `import`.
    pub fn as_str(self) -> &'static str {
        match self {
            LabelSource::VirusTotal => "virustotal",
            LabelSource::Manual => "manual",
            LabelSource::Import => "import",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<LabelSource> {
        [LabelSource::VirusTotal, LabelSource::Manual, LabelSource::Import]
            .into_iter()
            .find(|source| source.as_str() == name)
    }
}

impl fmt::Display for LabelSource {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A labelled sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledSample {
    /// Lowercase hexadecimal SHA-256.
    pub sha256: String,
    /// 0 benign, 1 malicious.
    pub y: u8,
    pub source: LabelSource,
    /// Unix seconds when the label was set.
    pub labelled_at: i64,
    pub note: Option<String>,
    /// The defanged vault file of the sample, if the vault holds one (read it with
    /// [`Store::read_sample`]); without it the label is known but there is nothing to train on.
    pub file_path: Option<PathBuf>,
}

/// A label checked and copied, so the writer thread can write it.
#[derive(Debug, Clone)]
pub(crate) struct ValidLabel {
    pub(crate) hash: SampleHash,
    pub(crate) y: u8,
    pub(crate) source: LabelSource,
    pub(crate) note: Option<String>,
}

/// Inserts or replaces, unless a manual label would be replaced by an automatic one;
/// `changes()` tells which happened.
const UPSERT: &str = "INSERT INTO labels (sha256, y, source, labelled_at, note) VALUES (?1, ?2, ?3, ?4, ?5)
    ON CONFLICT (sha256) DO UPDATE SET
        y = excluded.y, source = excluded.source, labelled_at = excluded.labelled_at, note = excluded.note
    WHERE labels.source <> 'manual' OR excluded.source = 'manual'";

const SELECT: &str = "SELECT labels.sha256, y, source, labelled_at, note, samples.stored_path IS NOT NULL
    FROM labels LEFT JOIN samples ON samples.sha256 = labels.sha256";

impl Store {
    /// Labels a sample (known to the store or not) with `y` (0 benign, 1 malicious), following
    /// the precedence rule: an automatic label does not replace a manual one. Returns whether
    /// the label was written. Durable when this returns.
    pub fn set_label(
        &self,
        sha256_hex: &str,
        y: u8,
        source: LabelSource,
        note: Option<&str>,
    ) -> Result<bool, StoreError> {
        let label = ValidLabel::new(sha256_hex, y, source, note)?;
        self.write_rows(label)
    }

    /// The label of a sample, or `None` if it has none.
    pub fn label(&self, sha256_hex: &str) -> Result<Option<LabelledSample>, StoreError> {
        let hash = SampleHash::parse(sha256_hex)?;
        match &self.tables {
            Tables::Sqlite(database) => database.read(|connection| {
                let mut statement =
                    connection.prepare_cached(&format!("{SELECT} WHERE labels.sha256 = ?1"))?;
                Ok(statement
                    .query_row([hash.as_str()], |row| labelled_from_row(&self.vault, row))
                    .optional()?)
            }),
            Tables::Postgres(database) => postgres::labels::get(database, Arc::clone(&self.vault), hash),
        }
    }

    /// Every labelled sample, ordered by hash, with the vault file to retrain on when the vault
    /// holds one.
    pub fn labelled_samples(&self) -> Result<Vec<LabelledSample>, StoreError> {
        let mut samples = Vec::new();
        self.each_labelled_sample(|sample| {
            samples.push(sample);
            Ok(())
        })?;
        Ok(samples)
    }

    /// Gives every labelled sample, ordered by hash, to `each`; on PostgreSQL a page at a time.
    fn each_labelled_sample(
        &self,
        mut each: impl FnMut(LabelledSample) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        match &self.tables {
            Tables::Sqlite(database) => database.read(|connection| {
                let mut statement = connection.prepare_cached(&format!("{SELECT} ORDER BY labels.sha256"))?;
                let mut rows = statement.query([])?;
                while let Some(row) = rows.next()? {
                    each(labelled_from_row(&self.vault, row)?)?;
                }
                Ok(())
            }),
            Tables::Postgres(database) => {
                let mut after = None;
                loop {
                    let page = postgres::labels::page(database, Arc::clone(&self.vault), after.take(), PAGE)?;
                    let full = page.len() as i64 == PAGE;
                    for sample in page {
                        after = Some(sample.sha256.clone());
                        each(sample)?;
                    }
                    if !full {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Writes the dataset as CSV with the header `file_path,sha256,y`, ordered by hash.
    /// `file_path` is the sample's vault file (defanged: see docs/storage.md), empty when the
    /// vault holds none. Returns the number of rows written.
    pub fn export_labels_csv(&self, out: impl Write) -> Result<u64, StoreError> {
        let mut writer = csv::Writer::from_writer(out);
        writer.write_record(CSV_HEADER.split(','))?;
        let mut written = 0u64;
        self.each_labelled_sample(|sample| {
            // The path is handed out: a sample still in the journal gets its file first.
            if sample.file_path.is_some() {
                self.vault.ensure_file(&SampleHash::parse(&sample.sha256)?)?;
            }
            let file_path =
                sample.file_path.map(|path| path.to_string_lossy().into_owned()).unwrap_or_default();
            writer.write_record([file_path, sample.sha256, sample.y.to_string()])?;
            written += 1;
            Ok(())
        })?;
        writer.flush().map_err(csv::Error::from)?;
        Ok(written)
    }

    /// Imports labels from CSV with the header `file_path,sha256,y` (y 0 or 1), as source
    /// `import`, so they do not replace manual labels. A `file_path` naming an existing file
    /// (relative paths from the current directory; a raw sample, or a vault file exported by a
    /// store) is read, checked against the hash and stored in the vault with its label in one
    /// transaction; a file larger than `max_sample_size`, or a path that does not exist, keeps
    /// only the label. Invalid rows (bad hash or y, hash mismatch, unreadable file) are skipped
    /// and reported. Fails only if the header is wrong or the input cannot be read.
    pub fn import_labels_csv(&self, input: impl Read) -> Result<ImportReport, StoreError> {
        dataset_csv::import_rows(input, CSV_HEADER, parse_row, |rows, report| {
            self.import_label_rows(rows, report)
        })
    }

    /// Applies a batch of parsed rows in file order, so a later row for the same hash wins:
    /// consecutive label-only rows in one transaction, a row whose file is read with its sample
    /// in a transaction of its own.
    fn import_label_rows(
        &self,
        rows: Vec<(u64, (Option<PathBuf>, ValidLabel))>,
        report: &mut ImportReport,
    ) -> Result<(), StoreError> {
        let mut labels_only = Vec::with_capacity(rows.len());
        for (line, (file_path, label)) in rows {
            match self.sample_file(file_path.as_deref(), &label.hash) {
                Ok(None) => labels_only.push(label),
                Ok(Some(bytes)) => {
                    self.import_labels(std::mem::take(&mut labels_only), report)?;
                    let hash = label.hash.clone();
                    let written = self.record_sample_with(&hash, &bytes, label);
                    match written {
                        Ok((_, applied)) => {
                            report.samples_stored += 1;
                            report.count(applied);
                        }
                        Err(error) => report.reject(line, error.to_string()),
                    }
                }
                Err(error) => report.reject(line, error.to_string()),
            }
        }
        self.import_labels(labels_only, report)
    }

    /// The sample bytes a CSV row's `file_path` names, checked against the row's hash: `None`
    /// when there is no path, no file there, or the file is too large to keep.
    fn sample_file(
        &self,
        file_path: Option<&Path>,
        hash: &SampleHash,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(path) = file_path else { return Ok(None) };
        let metadata = match fs::metadata(path) {
            Ok(metadata) if metadata.is_file() => metadata,
            Ok(_) => return Ok(None),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(StoreError::Io { path: path.to_owned(), source: error }),
        };
        if !self.settings.keep_samples || metadata.len() > self.settings.max_sample_size {
            return Ok(None);
        }
        let bytes = self.vault.read_external(path, hash)?;
        SampleHash::verify(hash.as_str(), &bytes)?;
        Ok(Some(bytes))
    }

    fn import_labels(&self, labels: Vec<ValidLabel>, report: &mut ImportReport) -> Result<(), StoreError> {
        if labels.is_empty() {
            return Ok(());
        }
        let now = self.now();
        let applied = match &self.tables {
            Tables::Sqlite(database) => database.write(move |connection| {
                labels.iter().map(|label| label.write_sqlite(connection, now)).collect::<Result<Vec<_>, _>>()
            })?,
            Tables::Postgres(database) => postgres::labels::upsert_all(database, labels, now)?,
        };
        for applied in applied {
            report.count(applied);
        }
        Ok(())
    }
}

impl ValidLabel {
    fn new(
        sha256_hex: &str,
        y: u8,
        source: LabelSource,
        note: Option<&str>,
    ) -> Result<ValidLabel, StoreError> {
        let hash = SampleHash::parse(sha256_hex)?;
        if y > 1 {
            return Err(StoreError::InvalidLabel(format!("y is {y}, not 0 or 1")));
        }
        if let Some(note) = note.filter(|note| note.len() > MAX_NOTE_LEN) {
            return Err(StoreError::InvalidLabel(format!(
                "note is {} bytes, more than {MAX_NOTE_LEN}",
                note.len()
            )));
        }
        Ok(ValidLabel { hash, y, source, note: note.map(str::to_owned) })
    }
}

/// A label written alone ([`Store::set_label`]) or with its sample's row (an import).
impl SampleRows for ValidLabel {
    /// Whether the label was written, or kept out by a manual one.
    type Written = bool;

    fn write_sqlite(&self, connection: &Connection, now: i64) -> Result<bool, StoreError> {
        let mut statement = connection.prepare_cached(UPSERT)?;
        let changed =
            statement.execute(params![self.hash.as_str(), self.y, self.source.as_str(), now, self.note])?;
        Ok(changed > 0)
    }

    async fn write_postgres<'a>(
        &'a self,
        transaction: &'a Transaction<'a>,
        now: i64,
    ) -> Result<bool, StoreError> {
        postgres::labels::upsert(transaction, self, now).await
    }
}

/// Parses one CSV row into its file path (if any) and label, or says why not.
fn parse_row(record: &csv::StringRecord) -> Result<(Option<PathBuf>, ValidLabel), String> {
    let [file_path, sha256, y] = record.iter().collect::<Vec<_>>()[..] else {
        return Err(format!("{} fields, expected 3 ({CSV_HEADER})", record.len()));
    };
    let y = match y.trim() {
        "0" => 0,
        "1" => 1,
        other => return Err(format!("y {:?} is not 0 or 1", preview(other))),
    };
    let label =
        ValidLabel::new(sha256.trim(), y, LabelSource::Import, None).map_err(|error| error.to_string())?;
    let file_path = Some(file_path).filter(|path| !path.is_empty()).map(PathBuf::from);
    Ok((file_path, label))
}

fn labelled_from_row(vault: &Vault, row: &Row<'_>) -> rusqlite::Result<LabelledSample> {
    let sha256: String = row.get(0)?;
    let source: String = row.get(2)?;
    // The table's CHECK admits only known sources.
    let source = LabelSource::from_name(&source).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, source.into())
    })?;
    let stored: bool = row.get(5)?;
    // The path is derived from the hash, as for samples, never read from the database.
    let file_path = match stored {
        true => SampleHash::parse(&sha256).ok().map(|hash| vault.path_of(&hash)),
        false => None,
    };
    Ok(LabelledSample {
        sha256,
        y: row.get(1)?,
        source,
        labelled_at: row.get(3)?,
        note: row.get(4)?,
        file_path,
    })
}
