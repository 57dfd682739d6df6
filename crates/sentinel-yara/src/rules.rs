//! The rules in service: compiled from a directory at start, swapped whole on reload. A scan
//! takes the set in service when it starts (an `Arc`), so a reload never fails or changes a scan
//! in flight, and a reload that fails leaves the set in service as it was.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::compile::{Compiled, compile_directory};
use crate::error::YaraError;
use crate::rule_match::RuleMatch;
use crate::rule_set_info::RuleSetInfo;
use arc_swap::ArcSwap;

/// At most this many matches recorded per sample: a rule set written to match everything must
/// not turn one sample into thousands of rows.
const MAX_MATCHES: usize = 256;

struct RuleSet {
    rules: yara_x::Rules,
    info: RuleSetInfo,
}

/// The YARA rules of one directory, and the scans that use them.
pub struct YaraRules {
    directory: PathBuf,
    scan_timeout: Duration,
    current: ArcSwap<RuleSet>,
}

impl std::fmt::Debug for YaraRules {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("YaraRules").field("info", &self.current.load().info).finish()
    }
}

impl YaraRules {
    /// Compiles the rules of `directory`; fails when a rule does not compile (at start there is
    /// no earlier set to keep, and serving without the rules asked for would be a silent gap).
    /// Each scan may take at most `scan_timeout`.
    pub fn load(directory: &Path, scan_timeout: Duration) -> Result<YaraRules, YaraError> {
        let set = rule_set(directory)?;
        Ok(YaraRules { directory: directory.to_owned(), scan_timeout, current: ArcSwap::from_pointee(set) })
    }

    /// Compiles the directory again and puts the new set in service. When a rule does not
    /// compile, the error says where, and the set in service stays.
    pub fn reload(&self) -> Result<RuleSetInfo, YaraError> {
        let set = rule_set(&self.directory)?;
        let info = set.info.clone();
        self.current.store(Arc::new(set));
        Ok(info)
    }

    /// The set in service.
    pub fn info(&self) -> RuleSetInfo {
        self.current.load().info.clone()
    }

    /// The rules of the set in service that match `data`, in the set's order (at most 256), and
    /// that set's version. Blocking: run it on a worker thread.
    pub fn scan(&self, data: &[u8]) -> Result<(Vec<RuleMatch>, String), YaraError> {
        let set = self.current.load_full();
        let mut scanner = yara_x::Scanner::new(&set.rules);
        scanner.set_timeout(self.scan_timeout);
        let results = scanner.scan(data).map_err(|error| match error {
            yara_x::ScanError::Timeout => YaraError::Timeout(self.scan_timeout),
            other => YaraError::Scan(other.to_string()),
        })?;
        let matches =
            results.matching_rules().take(MAX_MATCHES).map(|rule| RuleMatch::from_rule(&rule)).collect();
        Ok((matches, set.info.version.clone()))
    }
}

fn rule_set(directory: &Path) -> Result<RuleSet, YaraError> {
    let Compiled { rules, files, warnings, version } = compile_directory(directory)?;
    let compiled_at =
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let info = RuleSetInfo {
        directory: directory.to_owned(),
        version,
        files,
        rules: rules.iter().len(),
        compiled_at,
        warnings,
    };
    Ok(RuleSet { rules, info })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARKER_RULE: &str = r#"
rule sentinel_marker : test dropper {
  meta:
    description = "the marker string"
    severity = "high"
    author = "sentinel tests"
  strings:
    $marker = "SENTINEL-YARA-MARKER"
  condition:
    $marker
}
"#;

    fn directory_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let directory = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(directory.path().join(name), text).unwrap();
        }
        directory
    }

    #[test]
    fn a_matching_rule_comes_with_its_namespace_tags_and_metadata() {
        let directory = directory_with(&[("markers.yar", MARKER_RULE)]);
        let rules = YaraRules::load(directory.path(), Duration::from_secs(5)).unwrap();
        let (matches, version) = rules.scan(b"MZ....SENTINEL-YARA-MARKER....").unwrap();
        assert_eq!(version, rules.info().version);
        assert_eq!(matches.len(), 1);
        let hit = &matches[0];
        assert_eq!((hit.rule.as_str(), hit.namespace.as_str()), ("sentinel_marker", "markers"));
        assert_eq!(hit.tags, ["test", "dropper"]);
        assert_eq!(hit.metadata["severity"], "high");
        assert_eq!(hit.score(), Some(0.9));
        assert!(rules.scan(b"nothing to see").unwrap().0.is_empty());
    }

    #[test]
    fn a_reload_takes_new_rules_and_a_broken_one_keeps_the_set_in_service() {
        let directory = directory_with(&[("markers.yar", MARKER_RULE)]);
        let rules = YaraRules::load(directory.path(), Duration::from_secs(5)).unwrap();
        let first = rules.info();
        assert_eq!((first.files, first.rules), (1, 1));

        std::fs::write(
            directory.path().join("more.yar"),
            "rule other { strings: $a = \"OTHER\" condition: $a }",
        )
        .unwrap();
        let second = rules.reload().unwrap();
        assert_eq!((second.files, second.rules), (2, 2));
        assert_ne!(second.version, first.version);
        assert_eq!(rules.scan(b"OTHER").unwrap().0[0].rule, "other");

        std::fs::write(directory.path().join("broken.yar"), "rule broken { condition: nonsense(").unwrap();
        let error = rules.reload().expect_err("a broken rule must fail the reload");
        assert!(error.to_string().contains("broken.yar"), "{error}");
        assert_eq!(rules.info(), second, "the set in service stays");
        assert_eq!(rules.scan(b"OTHER SENTINEL-YARA-MARKER").unwrap().0.len(), 2);
    }

    #[test]
    fn a_broken_rule_at_start_is_an_error() {
        let directory = directory_with(&[("broken.yar", "rule broken { condition: $x }")]);
        assert!(matches!(
            YaraRules::load(directory.path(), Duration::from_secs(5)),
            Err(YaraError::Compile { .. })
        ));
    }

    #[test]
    fn an_empty_directory_is_a_set_of_no_rules() {
        let directory = directory_with(&[]);
        let rules = YaraRules::load(directory.path(), Duration::from_secs(5)).unwrap();
        assert_eq!(rules.info().rules, 0);
        assert!(rules.scan(b"anything").unwrap().0.is_empty());
    }

    #[test]
    fn scans_on_other_threads_see_a_whole_set_across_reloads() {
        let directory = directory_with(&[("markers.yar", MARKER_RULE)]);
        let rules = Arc::new(YaraRules::load(directory.path(), Duration::from_secs(5)).unwrap());
        let scanning = {
            let rules = Arc::clone(&rules);
            std::thread::spawn(move || {
                for _ in 0..200 {
                    let (matches, _) =
                        rules.scan(b"SENTINEL-YARA-MARKER").expect("no scan fails during reloads");
                    assert_eq!(matches.len(), 1);
                }
            })
        };
        for round in 0..20 {
            let text = format!("{MARKER_RULE}\n// round {round}\n");
            std::fs::write(directory.path().join("markers.yar"), text).unwrap();
            rules.reload().unwrap();
        }
        scanning.join().unwrap();
    }
}
