//! Reading labelled feature tables in the schema of `pe_header_dataset.csv`: the 50
//! `pe-header` columns (matched by name, in any order) and the label column
//! `Malware` (1 = malware, 0 = benign). Training and `sentinel eval static` both
//! read them; CSVs are untrusted input, so every defect is a clear error naming
//! the line and column.

use std::io::Read;
use std::path::Path;

use sentinel_pe::PE_HEADER_COLUMNS;

use crate::DataError;

/// Name of the label column.
pub const LABEL_COLUMN: &str = "Malware";
/// Number of features of the `pe-header` schema.
pub const FEATURES: usize = PE_HEADER_COLUMNS.len();

/// Labelled rows: a row-major matrix of `FEATURES` columns and one label per row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelledRows {
    pub values: Vec<f64>,
    pub labels: Vec<bool>,
}

impl LabelledRows {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.values[i * FEATURES..(i + 1) * FEATURES]
    }

    pub fn push(&mut self, row: &[f64], label: bool) {
        self.values.extend_from_slice(row);
        self.labels.push(label);
    }

    /// The rows at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> LabelledRows {
        let mut selected = LabelledRows::default();
        for &i in indices {
            selected.push(self.row(i), self.labels[i]);
        }
        selected
    }

    pub fn positives(&self) -> usize {
        self.labels.iter().filter(|&&l| l).count()
    }
}

/// Reads a CSV file in the header data set's schema.
pub fn read_header_csv(path: &Path) -> Result<LabelledRows, DataError> {
    let file = std::fs::File::open(path)
        .map_err(|e| DataError::Io { path: path.display().to_string(), message: e.to_string() })?;
    read_header_csv_from(file).map_err(|e| e.in_file(path))
}

/// Reads CSV text in the header data set's schema.
pub fn read_header_csv_from(reader: impl Read) -> Result<LabelledRows, DataError> {
    let mut csv = csv::ReaderBuilder::new().has_headers(true).from_reader(reader);
    let headers = csv.headers().map_err(|e| DataError::Csv(e.to_string()))?.clone();
    let position = |name: &str| headers.iter().position(|h| h.trim() == name);
    let mut missing: Vec<&str> = Vec::new();
    let mut feature_positions = [0usize; FEATURES];
    for (slot, name) in feature_positions.iter_mut().zip(PE_HEADER_COLUMNS) {
        match position(name) {
            Some(p) => *slot = p,
            None => missing.push(name),
        }
    }
    let label_position = position(LABEL_COLUMN);
    if label_position.is_none() {
        missing.push(LABEL_COLUMN);
    }
    if !missing.is_empty() {
        return Err(DataError::MissingColumns(missing.join(", ")));
    }
    let label_position = label_position.unwrap_or_default();

    let mut rows = LabelledRows::default();
    let mut row = [0.0; FEATURES];
    for (index, record) in csv.records().enumerate() {
        // Line 1 is the header.
        let line = index + 2;
        let record = record.map_err(|e| DataError::Csv(e.to_string()))?;
        let cell = |p: usize, column: &str| -> Result<f64, DataError> {
            let text = record.get(p).unwrap_or("").trim();
            match text.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(v),
                _ => Err(DataError::NotNumeric { line, column: column.to_owned(), text: text.to_owned() }),
            }
        };
        for ((value, &p), name) in row.iter_mut().zip(&feature_positions).zip(PE_HEADER_COLUMNS) {
            *value = cell(p, name)?;
        }
        let label = match cell(label_position, LABEL_COLUMN)? {
            0.0 => false,
            1.0 => true,
            other => {
                return Err(DataError::NotNumeric {
                    line,
                    column: LABEL_COLUMN.to_owned(),
                    text: format!("{other} (labels are 0 or 1)"),
                });
            }
        };
        rows.push(&row, label);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> String {
        let mut names: Vec<&str> = PE_HEADER_COLUMNS.to_vec();
        names.reverse(); // Any column order is accepted.
        names.push(LABEL_COLUMN);
        names.join(",")
    }

    fn line(first_column_value: &str, label: &str) -> String {
        let mut cells = vec!["1"; FEATURES];
        cells[FEATURES - 1] = first_column_value; // Reversed: this is PE_HEADER_COLUMNS[0].
        cells.push(label);
        cells.join(",")
    }

    #[test]
    fn reads_columns_by_name() {
        let text = format!("{}\n{}\n{}\n", header(), line("23117", "1"), line("7", "0"));
        let rows = read_header_csv_from(text.as_bytes()).unwrap();
        assert_eq!(rows.labels, vec![true, false]);
        assert_eq!(rows.row(0)[0], 23117.0);
        assert_eq!(rows.row(1)[0], 7.0);
        assert_eq!(rows.row(1)[1], 1.0);
    }

    #[test]
    fn missing_columns_are_named() {
        let text = "e_magic,Malware\n1,0\n";
        match read_header_csv_from(text.as_bytes()) {
            Err(DataError::MissingColumns(names)) => {
                assert!(names.contains("e_cblp") && !names.contains("e_magic"), "{names}")
            }
            other => panic!("expected missing columns, got {other:?}"),
        }
    }

    #[test]
    fn non_numeric_cells_and_bad_labels_are_located() {
        let text = format!("{}\n{}\n{}\n", header(), line("1", "0"), line("abc", "1"));
        match read_header_csv_from(text.as_bytes()) {
            Err(DataError::NotNumeric { line, column, .. }) => {
                assert_eq!((line, column.as_str()), (3, "e_magic"))
            }
            other => panic!("expected a non-numeric error, got {other:?}"),
        }
        let text = format!("{}\n{}\n", header(), line("1", "2"));
        assert!(matches!(read_header_csv_from(text.as_bytes()), Err(DataError::NotNumeric { line: 2, .. })));
        let ragged = format!("{}\n1,2\n", header());
        assert!(read_header_csv_from(ragged.as_bytes()).is_err());
    }
}
