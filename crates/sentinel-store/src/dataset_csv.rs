//! What the CSV import and export of the two datasets share. Both were CSV files in the first
//! design and stay exchangeable as CSV; the store keeps them in tables.
//!
//! An import checks the header, then each row on its own: a bad row is reported with its line
//! number and skipped while the good rows are imported, so one typo does not reject a file of a
//! million rows. Only a failure to read the input at all (I/O) stops an import; the rows
//! committed before it stay. Good rows are written in batches, one transaction each.
//! [`import_rows`] is that loop, shared by both datasets, which only say how to parse a row and
//! how to write a batch.

use std::fmt;
use std::io::Read;

use crate::StoreError;

/// Rows written per transaction by an import.
const IMPORT_BATCH: usize = 500;

/// Row errors kept in an [`ImportReport`]; the rest are only counted, so a file of garbage
/// cannot fill memory with error messages.
const MAX_REPORTED_ERRORS: usize = 100;

/// What a CSV import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Rows written to the dataset.
    pub rows_imported: u64,
    /// Valid rows that changed nothing because the store holds something that takes precedence
    /// (a newer VirusTotal report, a manual label).
    pub rows_unchanged: u64,
    /// Rows skipped because they are invalid; the first of them are described in `errors`.
    pub rows_rejected: u64,
    /// Sample files read, checked and stored in the vault (labels import only).
    pub samples_stored: u64,
    /// Why rows were rejected: at most the first 100, in file order.
    pub errors: Vec<RowError>,
}

/// Why one row of a CSV import was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// Line number in the file, the header being line 1.
    pub line: u64,
    pub reason: String,
}

impl ImportReport {
    pub(crate) fn reject(&mut self, line: u64, reason: impl Into<String>) {
        self.rows_rejected += 1;
        // A batch's rows can be refused when it is written, after later rows were parsed:
        // keep the errors in line order and, once full, those of the first lines.
        let at = self.errors.partition_point(|error| error.line <= line);
        if self.errors.len() == MAX_REPORTED_ERRORS {
            if at == MAX_REPORTED_ERRORS {
                return;
            }
            self.errors.pop();
        }
        self.errors.insert(at, RowError { line, reason: reason.into() });
    }

    /// Counts a valid row: written, or left unchanged by what takes precedence.
    pub(crate) fn count(&mut self, written: bool) {
        match written {
            true => self.rows_imported += 1,
            false => self.rows_unchanged += 1,
        }
    }
}

impl fmt::Display for ImportReport {
    /// A summary for people: the counts, then one line per reported row error.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{} rows imported, {} unchanged (superseded by what the store holds), {} rejected, {} sample files stored",
            self.rows_imported, self.rows_unchanged, self.rows_rejected, self.samples_stored
        )?;
        for error in &self.errors {
            write!(formatter, "\n  line {}: {}", error.line, error.reason)?;
        }
        if self.rows_rejected > self.errors.len() as u64 {
            write!(
                formatter,
                "\n  ({} more rejected rows not listed)",
                self.rows_rejected - self.errors.len() as u64
            )?;
        }
        Ok(())
    }
}

/// Imports a CSV dataset whose header must be `header`: each row is parsed by `parse` (a row it
/// refuses, or one the CSV reader cannot read, is rejected with its line number) and the valid
/// rows are handed to `apply` in file order with their line numbers, at most [`IMPORT_BATCH`] at
/// a time (one transaction's worth). Fails when the header is wrong, the input cannot be read or
/// `apply` fails; batches applied before stay.
pub(crate) fn import_rows<R: Read, T>(
    input: R,
    header: &'static str,
    parse: impl Fn(&csv::StringRecord) -> Result<T, String>,
    mut apply: impl FnMut(Vec<(u64, T)>, &mut ImportReport) -> Result<(), StoreError>,
) -> Result<ImportReport, StoreError> {
    let mut reader = checked_reader(input, header)?;
    let mut report = ImportReport::default();
    let mut record = csv::StringRecord::new();
    let mut batch = Vec::with_capacity(IMPORT_BATCH);
    loop {
        match next_row(&mut reader, &mut record)? {
            NextRow::Row { line } => match parse(&record) {
                Ok(row) => batch.push((line, row)),
                Err(reason) => report.reject(line, reason),
            },
            NextRow::Invalid { line, reason } => report.reject(line, reason),
            NextRow::End => break,
        }
        if batch.len() == IMPORT_BATCH {
            apply(std::mem::take(&mut batch), &mut report)?;
        }
    }
    if !batch.is_empty() {
        apply(batch, &mut report)?;
    }
    Ok(report)
}

/// A CSV reader on `input` whose header has been checked against `header` (comma-separated).
/// Rows may have any number of fields: the importer reports a wrong count as a row error.
fn checked_reader<R: Read>(input: R, header: &'static str) -> Result<csv::Reader<R>, StoreError> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(input);
    let found = reader.headers()?.iter().collect::<Vec<_>>().join(",");
    if found != header {
        let found: String = found.chars().take(200).collect();
        return Err(StoreError::CsvHeader { expected: header, found });
    }
    Ok(reader)
}

/// What [`next_row`] found.
enum NextRow {
    /// A row, now in the record, on this line.
    Row {
        line: u64,
    },
    /// A row that is not text or not well-formed CSV.
    Invalid {
        line: u64,
        reason: String,
    },
    End,
}

/// Reads the next row into `record`; fails only when the input cannot be read.
fn next_row<R: Read>(
    reader: &mut csv::Reader<R>,
    record: &mut csv::StringRecord,
) -> Result<NextRow, StoreError> {
    match reader.read_record(record) {
        Ok(false) => Ok(NextRow::End),
        Ok(true) => Ok(NextRow::Row { line: record.position().map_or(0, csv::Position::line) }),
        Err(error) if matches!(error.kind(), csv::ErrorKind::Io(_)) => Err(error.into()),
        Err(error) => {
            let line = error.position().map_or(0, csv::Position::line);
            Ok(NextRow::Invalid { line, reason: error.to_string() })
        }
    }
}

/// The start of a field, for error messages about files of unknown origin.
pub(crate) fn preview(text: &str) -> String {
    text.chars().take(40).collect()
}
