//! The YARA part of a static analysis: the rules in service run over the executable on the same
//! worker as the static model, their matches raise the static score by the rule of
//! `sentinel_yara::raised_score`, and are recorded per sample with the rule set's version.
//!
//! A scan that fails (its time limit, typically) does not fail the request: the model's score
//! stands, and the failure is logged with the sample's hash, because a verdict without rules is
//! still worth more to the client than no verdict.

use sentinel_store::YaraMatchRecord;
use sentinel_yara::{RuleMatch, YaraRules};

/// What the rules in service found in one sample.
#[derive(Debug, Clone)]
pub(crate) struct YaraFindings {
    /// The rule set's version.
    pub ruleset: String,
    pub matches: Vec<RuleMatch>,
}

/// Runs `rules` over `executable`; `None` when the scan failed (logged).
pub(crate) fn scan(rules: &YaraRules, executable: &[u8]) -> Option<YaraFindings> {
    match rules.scan(executable) {
        Ok((matches, ruleset)) => Some(YaraFindings { ruleset, matches }),
        Err(error) => {
            tracing::warn!(%error, size = executable.len(), "YARA scan failed: the static model's score stands alone");
            None
        }
    }
}

impl YaraFindings {
    /// The matches as the store records them, with the request's verdicts
    /// ([`Store::record_request`](sentinel_store::Store::record_request)).
    pub(crate) fn records(&self) -> Vec<YaraMatchRecord> {
        self.matches
            .iter()
            .map(|found| YaraMatchRecord {
                ruleset: self.ruleset.clone(),
                namespace: found.namespace.clone(),
                rule: found.rule.clone(),
                tags: found.tags.clone(),
                metadata: found.metadata.clone(),
                matched_at: 0,
            })
            .collect()
    }
}
