//! A build without the `engine` feature (YARA-X is the workspace's most expensive dependency to
//! build): rules cannot be loaded, and asking for them is a clear error, never a silent gap.

use std::path::Path;
use std::time::Duration;

use crate::error::YaraError;
use crate::rule_match::RuleMatch;
use crate::rule_set_info::RuleSetInfo;

/// Never built: [`YaraRules::load`] fails in a build without YARA-X.
#[derive(Debug)]
pub struct YaraRules {
    never: std::convert::Infallible,
}

impl YaraRules {
    pub fn load(_directory: &Path, _scan_timeout: Duration) -> Result<YaraRules, YaraError> {
        Err(YaraError::NotBuilt)
    }

    pub fn reload(&self) -> Result<RuleSetInfo, YaraError> {
        match self.never {}
    }

    pub fn info(&self) -> RuleSetInfo {
        match self.never {}
    }

    pub fn scan(&self, _data: &[u8]) -> Result<(Vec<RuleMatch>, String), YaraError> {
        match self.never {}
    }
}
