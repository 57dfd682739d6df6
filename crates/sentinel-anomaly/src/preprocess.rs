//! Preprocessing the models share, fitted on training data only and then applied
//! unchanged to everything scored: a missing-value policy, an optional log1p for
//! heavy-tailed counts (byte and packet counts span many orders of magnitude),
//! standard / min-max / robust scaling of numeric columns, and one-hot encoding
//! of categorical columns (protocol, service, TCP flags…). A category never seen
//! in training encodes as all zeros, as scikit-learn's `handle_unknown="ignore"`.
//!
//! Transforming one row writes into a caller's buffer and allocates nothing, so
//! the live path can reuse one buffer per connection.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::detector::percentile_of_sorted;
use crate::error::{AnomalyError, Result};
use crate::matrix::Matrix;

/// One raw input value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// A number; NaN counts as missing.
    Number(f64),
    Category(&'a str),
    Missing,
}

/// What a raw column holds and how it is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnKind {
    Numeric,
    /// Numeric, non-negative, transformed by ln(1 + x) before scaling.
    LogNumeric,
    /// One output column per category seen in training.
    Categorical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scaling {
    None,
    /// (x − mean) / standard deviation.
    Standard,
    /// (x − min) / (max − min).
    MinMax,
    /// (x − median) / interquartile range, insensitive to outliers in training data.
    Robust,
}

/// What to do with a missing numeric value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum MissingPolicy {
    /// Refuse the row with an error naming the column.
    Reject,
    /// Replace by the training mean.
    Mean,
    /// Replace by the training median.
    Median,
    Constant(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PreprocessParams {
    pub scaling: Scaling,
    pub missing: MissingPolicy,
}

impl Default for PreprocessParams {
    fn default() -> Self {
        PreprocessParams { scaling: Scaling::Standard, missing: MissingPolicy::Reject }
    }
}

/// A fitted preprocessing pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Preprocessor {
    columns: Vec<ColumnEncoding>,
    missing: MissingPolicy,
    output_width: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum ColumnEncoding {
    Numeric { log: bool, fill: f64, offset: f64, scale: f64 },
    Categorical { categories: BTreeMap<String, usize> },
}

impl Preprocessor {
    /// Fits on `rows`, each with one value per entry of `schema`.
    pub fn fit(
        schema: &[ColumnKind],
        rows: &[Vec<Value<'_>>],
        params: &PreprocessParams,
    ) -> Result<Preprocessor> {
        if rows.is_empty() {
            return Err(AnomalyError::Empty("no rows to fit the preprocessing on"));
        }
        if schema.is_empty() {
            return Err(AnomalyError::Empty("the schema has no columns"));
        }
        if let MissingPolicy::Constant(fill) = params.missing
            && !fill.is_finite()
        {
            return Err(AnomalyError::Parameter("the fill value for missing data must be finite".into()));
        }
        if let Some(row) = rows.iter().position(|row| row.len() != schema.len()) {
            return Err(AnomalyError::Parameter(format!(
                "row {row} has {} values, the schema {}",
                rows[row].len(),
                schema.len()
            )));
        }
        let mut columns = Vec::with_capacity(schema.len());
        for (column, &kind) in schema.iter().enumerate() {
            columns.push(match kind {
                ColumnKind::Categorical => fit_categorical(rows, column)?,
                ColumnKind::Numeric | ColumnKind::LogNumeric => {
                    fit_numeric(rows, column, kind == ColumnKind::LogNumeric, params)?
                }
            });
        }
        let output_width = columns
            .iter()
            .map(|c| match c {
                ColumnEncoding::Numeric { .. } => 1,
                ColumnEncoding::Categorical { categories } => categories.len(),
            })
            .sum();
        Ok(Preprocessor { columns, missing: params.missing, output_width })
    }

    /// The number of features a transformed row has.
    pub fn output_width(&self) -> usize {
        self.output_width
    }

    /// Encodes `row` into `out` (of length [`Preprocessor::output_width`]).
    pub fn transform_row(&self, row: &[Value<'_>], out: &mut [f64]) -> Result<()> {
        if row.len() != self.columns.len() {
            return Err(AnomalyError::Dimension { expected: self.columns.len(), actual: row.len() });
        }
        if out.len() != self.output_width {
            return Err(AnomalyError::Dimension { expected: self.output_width, actual: out.len() });
        }
        let mut at = 0;
        for (column, (encoding, value)) in self.columns.iter().zip(row).enumerate() {
            match encoding {
                ColumnEncoding::Numeric { log, fill, offset, scale } => {
                    let raw = match *value {
                        Value::Number(x) if !x.is_nan() => x,
                        Value::Number(_) | Value::Missing => match self.missing {
                            MissingPolicy::Reject => {
                                return Err(AnomalyError::Parameter(format!(
                                    "missing value in column {column}"
                                )));
                            }
                            _ => *fill,
                        },
                        Value::Category(text) => {
                            return Err(AnomalyError::Parameter(format!(
                                "column {column} is numeric, got the text {:?}",
                                truncate(text)
                            )));
                        }
                    };
                    let x = if *log { log1p_checked(raw, column)? } else { raw };
                    let encoded = (x - offset) / scale;
                    if !encoded.is_finite() {
                        return Err(AnomalyError::NotFinite { row: 0, column, value: raw });
                    }
                    out[at] = encoded;
                    at += 1;
                }
                ColumnEncoding::Categorical { categories } => {
                    let block = &mut out[at..at + categories.len()];
                    block.fill(0.0);
                    match *value {
                        Value::Category(text) => {
                            if let Some(&index) = categories.get(text) {
                                block[index] = 1.0;
                            }
                        }
                        Value::Missing => {}
                        Value::Number(x) => {
                            return Err(AnomalyError::Parameter(format!(
                                "column {column} is categorical, got the number {x}"
                            )));
                        }
                    }
                    at += categories.len();
                }
            }
        }
        Ok(())
    }

    /// Encodes every row into a matrix; errors name the offending row.
    pub fn transform(&self, rows: &[Vec<Value<'_>>]) -> Result<Matrix> {
        let mut values = vec![0.0; rows.len() * self.output_width];
        for (index, (row, out)) in
            rows.iter().zip(values.chunks_exact_mut(self.output_width.max(1))).enumerate()
        {
            self.transform_row(row, out).map_err(|error| match error {
                AnomalyError::NotFinite { column, value, .. } => {
                    AnomalyError::NotFinite { row: index, column, value }
                }
                AnomalyError::Parameter(message) => {
                    AnomalyError::Parameter(format!("row {index}: {message}"))
                }
                other => other,
            })?;
        }
        Matrix::new(values, self.output_width)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let mut width = 0;
        for column in &self.columns {
            match column {
                ColumnEncoding::Numeric { fill, offset, scale, .. } => {
                    if !(fill.is_finite() && offset.is_finite() && scale.is_finite() && *scale != 0.0) {
                        return Err(AnomalyError::CorruptModel("preprocessor: bad numeric column".into()));
                    }
                    width += 1;
                }
                ColumnEncoding::Categorical { categories } => {
                    let mut seen = vec![false; categories.len()];
                    for &index in categories.values() {
                        if index >= seen.len() || std::mem::replace(&mut seen[index], true) {
                            return Err(AnomalyError::CorruptModel(
                                "preprocessor: bad category index".into(),
                            ));
                        }
                    }
                    width += categories.len();
                }
            }
        }
        if width != self.output_width || width == 0 {
            return Err(AnomalyError::CorruptModel("preprocessor: output width mismatch".into()));
        }
        Ok(())
    }
}

fn fit_categorical(rows: &[Vec<Value<'_>>], column: usize) -> Result<ColumnEncoding> {
    let mut names: Vec<&str> = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        match row[column] {
            Value::Category(text) => names.push(text),
            Value::Missing => {}
            Value::Number(x) => {
                return Err(AnomalyError::Parameter(format!(
                    "row {index}: column {column} is categorical, got the number {x}"
                )));
            }
        }
    }
    names.sort_unstable();
    names.dedup();
    let categories = names.into_iter().enumerate().map(|(i, name)| (name.to_owned(), i)).collect();
    Ok(ColumnEncoding::Categorical { categories })
}

fn fit_numeric(
    rows: &[Vec<Value<'_>>],
    column: usize,
    log: bool,
    params: &PreprocessParams,
) -> Result<ColumnEncoding> {
    let mut present = Vec::with_capacity(rows.len());
    let mut any_missing = false;
    for (index, row) in rows.iter().enumerate() {
        match row[column] {
            Value::Number(x) if x.is_nan() => any_missing = true,
            Value::Missing => any_missing = true,
            Value::Number(x) if x.is_infinite() => {
                return Err(AnomalyError::NotFinite { row: index, column, value: x });
            }
            Value::Number(x) => present.push(x),
            Value::Category(text) => {
                return Err(AnomalyError::Parameter(format!(
                    "row {index}: column {column} is numeric, got the text {:?}",
                    truncate(text)
                )));
            }
        }
    }
    if any_missing && params.missing == MissingPolicy::Reject {
        return Err(AnomalyError::Parameter(format!("missing value in column {column}")));
    }
    if present.is_empty() {
        return Err(AnomalyError::Empty("a numeric column has no values"));
    }
    present.sort_by(f64::total_cmp);
    let fill = match params.missing {
        MissingPolicy::Reject | MissingPolicy::Mean => present.iter().sum::<f64>() / present.len() as f64,
        MissingPolicy::Median => percentile_of_sorted(&present, 50.0),
        MissingPolicy::Constant(fill) => fill,
    };
    if any_missing {
        present.push(fill);
        present.sort_by(f64::total_cmp);
    }
    if log {
        for x in present.iter_mut() {
            *x = log1p_checked(*x, column)?;
        }
    }
    let (offset, spread) = match params.scaling {
        Scaling::None => (0.0, 1.0),
        Scaling::Standard => {
            let n = present.len() as f64;
            let mean = present.iter().sum::<f64>() / n;
            (mean, (present.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt())
        }
        Scaling::MinMax => (present[0], present[present.len() - 1] - present[0]),
        Scaling::Robust => {
            let median = percentile_of_sorted(&present, 50.0);
            (median, percentile_of_sorted(&present, 75.0) - percentile_of_sorted(&present, 25.0))
        }
    };
    // A constant column keeps scale 1, as scikit-learn's scalers do.
    let scale = if spread > 0.0 && spread.is_finite() { spread } else { 1.0 };
    if !offset.is_finite() {
        return Err(AnomalyError::Parameter(format!("column {column} overflows")));
    }
    Ok(ColumnEncoding::Numeric { log, fill, offset, scale })
}

fn log1p_checked(x: f64, column: usize) -> Result<f64> {
    if x < 0.0 {
        return Err(AnomalyError::Parameter(format!("column {column} is log-scaled but holds {x} < 0")));
    }
    Ok(x.ln_1p())
}

/// Hostile input may carry huge strings: quote at most 40 characters of them.
fn truncate(text: &str) -> &str {
    match text.char_indices().nth(40) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}
