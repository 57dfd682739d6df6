//! The YARA rules that matched a sample: one row per (sample, rule set, rule), so that what a
//! rule set said stays on record after the rules change, and a sample scanned again by the same
//! set replaces its rows rather than adding to them. The rules themselves live in
//! `sentinel-yara`; the store keeps only names, tags and metadata.

use rusqlite::{Connection, Row, params};
use serde_json::{Map, Value};

use crate::sample_hash::SampleHash;
use crate::{Store, StoreError};

/// Longest rule, namespace or rule-set name, in bytes (YARA identifiers are short).
const MAX_NAME_LEN: usize = 256;
/// Longest tags or metadata, as JSON, in bytes: metadata is descriptive text, not content.
const MAX_JSON_LEN: usize = 16 * 1024;
/// At most this many matches per sample and rule set.
const MAX_MATCHES: usize = 256;

/// A rule that matched a sample.
#[derive(Debug, Clone, PartialEq)]
pub struct YaraMatchRecord {
    /// The rule set's version (`yara-` and 16 hex digits).
    pub ruleset: String,
    pub namespace: String,
    pub rule: String,
    pub tags: Vec<String>,
    pub metadata: Map<String, Value>,
    /// Unix seconds.
    pub matched_at: i64,
}

/// One row checked and serialised for the writer thread.
#[derive(Clone)]
struct ValidRow {
    namespace: String,
    rule: String,
    tags: String,
    metadata: String,
}

/// What one rule set found in one sample, checked and serialised, so that the writer thread can
/// write it in a request's transaction ([`Store::record_request`]).
#[derive(Clone)]
pub(crate) struct ValidMatches {
    hash: SampleHash,
    ruleset: String,
    rows: Vec<ValidRow>,
}

impl ValidMatches {
    pub(crate) fn new(sha256: &str, ruleset: &str, matches: &[YaraMatchRecord]) -> Result<Self, StoreError> {
        let hash = SampleHash::parse(sha256)?;
        let invalid = |reason: String| Err(StoreError::InvalidYaraMatch(reason));
        if ruleset.is_empty() || ruleset.len() > MAX_NAME_LEN {
            return invalid(format!("the rule set's name must have 1 to {MAX_NAME_LEN} bytes"));
        }
        if matches.len() > MAX_MATCHES {
            return invalid(format!("at most {MAX_MATCHES} matches per sample"));
        }
        let mut rows = Vec::with_capacity(matches.len());
        for found in matches {
            if [&found.namespace, &found.rule].iter().any(|name| name.is_empty() || name.len() > MAX_NAME_LEN)
            {
                return invalid(format!("rule and namespace names must have 1 to {MAX_NAME_LEN} bytes"));
            }
            let tags = serde_json::to_string(&found.tags)
                .map_err(|e| StoreError::InvalidYaraMatch(e.to_string()))?;
            let metadata = serde_json::to_string(&found.metadata)
                .map_err(|e| StoreError::InvalidYaraMatch(e.to_string()))?;
            if tags.len() > MAX_JSON_LEN || metadata.len() > MAX_JSON_LEN {
                return invalid(format!("tags and metadata must have at most {MAX_JSON_LEN} bytes of JSON"));
            }
            rows.push(ValidRow {
                namespace: found.namespace.clone(),
                rule: found.rule.clone(),
                tags,
                metadata,
            });
        }
        Ok(ValidMatches { hash, ruleset: ruleset.to_owned(), rows })
    }

    /// Replaces what the same rule set found in the same sample before, inside the caller's
    /// transaction: the set's earlier rows and its new ones swap together.
    pub(crate) fn replace(&self, connection: &Connection, now: i64) -> Result<(), StoreError> {
        connection.execute(
            "DELETE FROM yara_matches WHERE sha256 = ?1 AND ruleset = ?2",
            params![self.hash.as_str(), self.ruleset],
        )?;
        let mut insert = connection.prepare_cached(
            "INSERT INTO yara_matches (sha256, ruleset, namespace, rule, tags, metadata, matched_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for row in &self.rows {
            insert.execute(params![
                self.hash.as_str(),
                self.ruleset,
                row.namespace,
                row.rule,
                row.tags,
                row.metadata,
                now
            ])?;
        }
        Ok(())
    }
}

impl Store {
    /// The matches recorded for `sha256`, newest rule set first, then by namespace and rule.
    pub fn yara_matches(&self, sha256: &str) -> Result<Vec<YaraMatchRecord>, StoreError> {
        let hash = SampleHash::parse(sha256)?;
        self.sqlite()?.read(|connection| {
            let mut statement = connection.prepare_cached(
                "SELECT ruleset, namespace, rule, tags, metadata, matched_at FROM yara_matches
                 WHERE sha256 = ?1 ORDER BY matched_at DESC, ruleset, namespace, rule",
            )?;
            let rows = statement.query_map([hash.as_str()], match_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}

fn match_from_row(row: &Row<'_>) -> rusqlite::Result<YaraMatchRecord> {
    let (tags, metadata): (String, String) = (row.get(3)?, row.get(4)?);
    Ok(YaraMatchRecord {
        ruleset: row.get(0)?,
        namespace: row.get(1)?,
        rule: row.get(2)?,
        // The columns are checked to be JSON when written, in the shapes written.
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        metadata: serde_json::from_str(&metadata).unwrap_or_default(),
        matched_at: row.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{NewYaraMatches, StoreSettings};

    const SHA: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    /// Records what `ruleset` found, with no verdict, as a server request does.
    fn record(
        store: &Store,
        sha256: &str,
        ruleset: &str,
        matches: &[YaraMatchRecord],
    ) -> Result<(), StoreError> {
        store.record_request(sha256, None, &[], Some(NewYaraMatches { ruleset, matches })).map(drop)
    }

    fn found(rule: &str) -> YaraMatchRecord {
        YaraMatchRecord {
            ruleset: String::new(),
            namespace: "markers".to_owned(),
            rule: rule.to_owned(),
            tags: vec!["dropper".to_owned()],
            metadata: json!({"severity": "high", "score": 80}).as_object().unwrap().clone(),
            matched_at: 0,
        }
    }

    #[test]
    fn matches_are_kept_per_rule_set_and_a_rescan_by_the_same_set_replaces_them() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path(), StoreSettings::default()).unwrap();
        record(&store, SHA, "yara-1", &[found("a"), found("b")]).unwrap();
        record(&store, SHA, "yara-1", &[found("b")]).unwrap();
        record(&store, SHA, "yara-2", &[found("c")]).unwrap();
        let mut recorded: Vec<(String, String)> =
            store.yara_matches(SHA).unwrap().into_iter().map(|m| (m.ruleset, m.rule)).collect();
        recorded.sort();
        assert_eq!(recorded, [("yara-1".into(), "b".into()), ("yara-2".into(), "c".into())]);
        let one = &store.yara_matches(&SHA.to_uppercase()).unwrap()[0];
        assert_eq!(one.tags, ["dropper"]);
        assert_eq!(one.metadata["score"], 80);

        // A restart keeps them.
        drop(store);
        let store = Store::open(directory.path(), StoreSettings::default()).unwrap();
        assert_eq!(store.yara_matches(SHA).unwrap().len(), 2);
        assert!(store.yara_matches(&"b".repeat(64)).unwrap().is_empty());
    }

    #[test]
    fn oversized_or_nameless_matches_are_refused() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path(), StoreSettings::default()).unwrap();
        let mut huge = found("a");
        huge.metadata.insert("description".to_owned(), json!("x".repeat(MAX_JSON_LEN)));
        let nameless = found("");
        for (ruleset, matches) in [("yara-1", vec![huge]), ("yara-1", vec![nameless]), ("", vec![found("a")])]
        {
            let error = record(&store, SHA, ruleset, &matches).unwrap_err();
            assert!(matches!(error, StoreError::InvalidYaraMatch(_)), "{error}");
        }
        assert!(matches!(record(&store, "not a hash", "yara-1", &[]), Err(StoreError::InvalidSha256(_))));
        assert!(store.yara_matches(SHA).unwrap().is_empty());
    }

    #[test]
    fn a_requests_verdicts_and_matches_are_recorded_together_or_not_at_all() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path(), StoreSettings::default()).unwrap();
        let verdict = crate::NewVerdict {
            sha256: SHA,
            analysis: "static",
            model_version: "m1",
            score: 0.9,
            client: "c",
        };
        let nameless = [found("")];
        let refused = store.record_request(
            SHA,
            None,
            &[verdict],
            Some(NewYaraMatches { ruleset: "yara-1", matches: &nameless }),
        );
        assert!(matches!(refused, Err(StoreError::InvalidYaraMatch(_))));
        assert!(store.verdicts(SHA).unwrap().is_empty(), "a refused match keeps its verdict out too");

        let good = [found("a")];
        let ids = store
            .record_request(SHA, None, &[verdict], Some(NewYaraMatches { ruleset: "yara-1", matches: &good }))
            .unwrap();
        assert_eq!(ids.len(), 1);
        assert_eq!(store.verdicts(SHA).unwrap()[0].id, ids[0]);
        assert_eq!(store.yara_matches(SHA).unwrap()[0].rule, "a");
    }
}
