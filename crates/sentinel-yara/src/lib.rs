//! YARA rules over samples, with YARA-X (the maintained Rust implementation of YARA).
//!
//! * [`YaraRules`]: the rules of one directory (`*.yar` and `*.yara`, each file its own
//!   namespace), compiled at start and again on [`YaraRules::reload`]. A reload that meets a rule
//!   that does not compile reports it and keeps the rules in service; scans in flight finish on
//!   the rules they started with (the set is swapped atomically, never edited).
//! * [`YaraRules::scan`]: the matching rules of one sample, each with its tags and metadata, under
//!   a time limit so that a pathological rule or file cannot hold a worker.
//! * [`RuleMatch::score`] and [`raised_score`]: how a rule's `score` or `severity` metadata raises
//!   the static verdict (docs/yara.md, "How a match raises the verdict").
//!
//! YARA-X itself is behind the `engine` feature (on in the `sentinel` binary's default build):
//! without it, [`YaraRules::load`] says the build has no YARA support.

#[cfg(feature = "engine")]
mod compile;
mod error;
mod rule_match;
mod rule_set_info;
#[cfg(feature = "engine")]
mod rules;
#[cfg(not(feature = "engine"))]
mod without_engine;

pub use error::YaraError;
pub use rule_match::{RuleMatch, raised_score};
pub use rule_set_info::RuleSetInfo;
#[cfg(feature = "engine")]
pub use rules::YaraRules;
#[cfg(not(feature = "engine"))]
pub use without_engine::YaraRules;
