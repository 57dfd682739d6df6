//! Static features of Windows PE files for Sentinel's malware classifiers.
//!
//! Two schemas, each a fixed list of named `f64` columns (documented field by field in
//! `docs/features.md`):
//!
//! - `pe-header` ([`pe_header_features`], [`PE_HEADER_COLUMNS`]): the 50 header fields of the
//!   public `pe_header_dataset.csv`, with the exact values and accept/reject decisions of
//!   Python's `pefile`, so a model trained on that data set can score files in production;
//! - `pe-rich` ([`pe_rich_features`], [`PE_RICH_COLUMNS`]): sections, imports, exports,
//!   resources, overlay, directories and byte statistics, for models trained on the project's
//!   own samples.
//!
//! Every input is untrusted: any bytes give either features or a [`PeError`], in time and
//! memory bounded by the input's length and by fixed caps on every table walked.

mod byte_statistics;
mod header;
mod rich;

pub use header::{PE_HEADER_COLUMNS, pe_header_features, pe_header_values};
pub use rich::{PE_RICH_COLUMNS, pe_rich_features};

/// Why a file yields no features.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeError {
    /// The bytes are not a PE file (no 'MZ', or another executable format such as NE or LE).
    #[error("not a PE file: {0}")]
    NotPe(String),
    /// A structure the schema needs is cut short by the end of the file.
    #[error("truncated PE file: {0}")]
    Truncated(String),
    /// A structure is present but its values cannot be used (for instance an offset past the end).
    #[error("malformed PE file: {0}")]
    Malformed(String),
}
