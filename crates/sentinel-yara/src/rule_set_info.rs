//! What a rule set in service is: where from, which version, how many files and rules.

use std::path::PathBuf;

use serde::Serialize;

/// What is in service: where from, which version, how many files and rules, since when.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleSetInfo {
    pub directory: PathBuf,
    /// `yara-` and 16 hex digits naming the sources.
    pub version: String,
    pub files: usize,
    pub rules: usize,
    /// Unix seconds.
    pub compiled_at: u64,
    /// The compiler's warnings for this set.
    pub warnings: Vec<String>,
}
