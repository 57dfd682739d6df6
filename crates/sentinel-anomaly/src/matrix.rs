//! A dense row-major matrix of finite `f64` values: the only input type of the
//! models. Finiteness is checked once when the matrix is built, so the models
//! never see NaN or infinity and never need to re-check batch input.

use crate::error::{AnomalyError, Result};

/// Rows of feature vectors, all of the same length, all values finite.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    values: Vec<f64>,
    rows: usize,
    cols: usize,
}

impl Matrix {
    /// Builds a matrix from row-major `values` with `cols` columns.
    pub fn new(values: Vec<f64>, cols: usize) -> Result<Matrix> {
        if cols == 0 {
            return Err(AnomalyError::Empty("a matrix needs at least one column"));
        }
        if !values.len().is_multiple_of(cols) {
            return Err(AnomalyError::Parameter(format!(
                "{} values do not make whole rows of {cols} columns",
                values.len()
            )));
        }
        let rows = values.len() / cols;
        check_finite(&values, cols)?;
        Ok(Matrix { values, rows, cols })
    }

    /// Builds a matrix from rows, which must all have the same length.
    pub fn from_rows<R: AsRef<[f64]>>(rows: &[R]) -> Result<Matrix> {
        let cols = rows.first().map_or(0, |row| row.as_ref().len());
        let mut values = Vec::with_capacity(rows.len() * cols);
        for row in rows {
            let row = row.as_ref();
            if row.len() != cols {
                return Err(AnomalyError::Dimension { expected: cols, actual: row.len() });
            }
            values.extend_from_slice(row);
        }
        Matrix::new(values, cols)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Row `index`; panics only on an index out of range, like slice indexing.
    pub fn row(&self, index: usize) -> &[f64] {
        &self.values[index * self.cols..(index + 1) * self.cols]
    }

    pub fn iter_rows(&self) -> std::slice::ChunksExact<'_, f64> {
        self.values.chunks_exact(self.cols)
    }

    pub fn values(&self) -> &[f64] {
        &self.values
    }

    /// The rows at `indices`, in that order.
    pub fn select_rows(&self, indices: &[usize]) -> Result<Matrix> {
        let mut values = Vec::with_capacity(indices.len() * self.cols);
        for &index in indices {
            if index >= self.rows {
                return Err(AnomalyError::Parameter(format!("row {index} out of {} rows", self.rows)));
            }
            values.extend_from_slice(self.row(index));
        }
        Ok(Matrix { values, rows: indices.len(), cols: self.cols })
    }

    /// Checks that this matrix can be given to a model fitted on `expected` features.
    pub(crate) fn check_scorable(&self, expected: usize) -> Result<()> {
        if self.cols != expected {
            return Err(AnomalyError::Dimension { expected, actual: self.cols });
        }
        Ok(())
    }

    /// Checks that this matrix can train a model.
    pub(crate) fn check_trainable(&self) -> Result<()> {
        if self.rows == 0 {
            return Err(AnomalyError::Empty("the training data has no rows"));
        }
        Ok(())
    }
}

/// Checks one vector given for scoring: its length and that every value is finite.
pub(crate) fn check_vector(x: &[f64], expected: usize) -> Result<()> {
    if x.len() != expected {
        return Err(AnomalyError::Dimension { expected, actual: x.len() });
    }
    check_finite(x, expected)
}

fn check_finite(values: &[f64], cols: usize) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(at) => Err(AnomalyError::NotFinite { row: at / cols, column: at % cols, value: values[at] }),
        None => Ok(()),
    }
}
