//! What can go wrong with rules: a directory that cannot be read, a rule that does not compile,
//! a scan that fails or takes too long.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum YaraError {
    #[error("this build of Sentinel has no YARA support (build it with the `yara` feature, on by default)")]
    NotBuilt,
    #[error("cannot read the YARA rules at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: a rule file larger than {limit} bytes")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{directory}: more than {limit} rule files")]
    TooManyFiles { directory: PathBuf, limit: usize },
    /// The compiler's own report: file, line, column and what is wrong.
    #[error("{path}: the rules do not compile:\n{report}")]
    Compile { path: PathBuf, report: String },
    #[error("the YARA scan took longer than {0:?}")]
    Timeout(Duration),
    #[error("the YARA scan failed: {0}")]
    Scan(String),
}
