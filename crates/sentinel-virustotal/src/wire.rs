//! VirusTotal API v3's JSON, as far as Sentinel reads it, and its conversion to
//! a [`Verdict`].
//!
//! Every field is optional or defaulted so that VirusTotal adding or dropping
//! attributes does not break lookups, and what is kept is bounded: a hostile or
//! broken answer cannot make a stored verdict grow without limit.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::VtError;
use crate::verdict::{AnalysisStats, EngineCategory, EngineResult, FileHash, Verdict};

/// Most engine results kept (VirusTotal runs about 70).
const MAX_ENGINES: usize = 256;
/// Longest engine name kept, in characters.
const MAX_ENGINE_NAME: usize = 64;
/// Longest detection name kept, in characters.
const MAX_RESULT: usize = 256;
/// Longest analysis id accepted (they are about 60 characters of base64).
const MAX_ANALYSIS_ID: usize = 256;

/// `{"error": {"code": "...", "message": "..."}}`
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorBody {
    pub error: ErrorObject,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ErrorObject {
    pub code: String,
    pub message: String,
}

/// `GET /api/v3/files/{id}`
#[derive(Debug, Deserialize)]
struct FileReport {
    data: FileObject,
}

#[derive(Debug, Deserialize)]
struct FileObject {
    #[serde(default)]
    id: String,
    #[serde(default)]
    attributes: FileAttributes,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FileAttributes {
    sha256: Option<String>,
    last_analysis_date: Option<i64>,
    first_submission_date: Option<i64>,
    last_analysis_stats: AnalysisStats,
    last_analysis_results: BTreeMap<String, EngineEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EngineEntry {
    category: String,
    engine_name: Option<String>,
    result: Option<String>,
}

/// `POST /api/v3/files`: `{"data": {"type": "analysis", "id": "..."}}`
#[derive(Debug, Deserialize)]
struct UploadResponse {
    data: ObjectDescriptor,
}

#[derive(Debug, Deserialize)]
struct ObjectDescriptor {
    id: String,
}

/// `GET /api/v3/files/upload_url`: `{"data": "https://..."}`
#[derive(Debug, Deserialize)]
struct UploadUrl {
    data: String,
}

/// `GET /api/v3/analyses/{id}`
#[derive(Debug, Deserialize)]
struct AnalysisReport {
    data: AnalysisObject,
    #[serde(default)]
    meta: AnalysisMeta,
}

#[derive(Debug, Deserialize)]
struct AnalysisObject {
    #[serde(default)]
    attributes: AnalysisAttributes,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AnalysisAttributes {
    status: String,
    date: Option<i64>,
    stats: AnalysisStats,
    results: BTreeMap<String, EngineEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AnalysisMeta {
    file_info: FileInfo,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FileInfo {
    sha256: Option<String>,
}

/// Where an upload's analysis stands.
#[derive(Debug)]
pub(crate) enum AnalysisState {
    /// Queued or in progress.
    Pending,
    Completed(Verdict),
}

fn parse<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, VtError> {
    serde_json::from_slice(body).map_err(|error| VtError::InvalidResponse(format!("{what}: {error}")))
}

/// Parses a file report, checking that it is the report of `expected`.
pub(crate) fn file_report(body: &[u8], expected: FileHash, fetched_at: i64) -> Result<Verdict, VtError> {
    let report: FileReport = parse(body, "file report")?;
    let reported = report.data.attributes.sha256.as_deref().unwrap_or(&report.data.id);
    check_hash(reported, expected)?;
    let attributes = report.data.attributes;
    Ok(Verdict {
        sha256: expected,
        engines: engine_results(attributes.last_analysis_results),
        stats: attributes.last_analysis_stats,
        last_analysis_date: attributes.last_analysis_date,
        first_submission_date: attributes.first_submission_date,
        fetched_at,
    })
}

/// Parses an analysis; a completed one must be of `expected`, so that a file
/// that does not hash to the claimed SHA-256 cannot be stored under it.
pub(crate) fn analysis(body: &[u8], expected: FileHash, fetched_at: i64) -> Result<AnalysisState, VtError> {
    let report: AnalysisReport = parse(body, "analysis")?;
    let attributes = report.data.attributes;
    match attributes.status.as_str() {
        "queued" | "in-progress" => Ok(AnalysisState::Pending),
        "completed" => {
            check_hash(report.meta.file_info.sha256.as_deref().unwrap_or_default(), expected)?;
            Ok(AnalysisState::Completed(Verdict {
                sha256: expected,
                engines: engine_results(attributes.results),
                stats: attributes.stats,
                last_analysis_date: attributes.date,
                first_submission_date: None,
                fetched_at,
            }))
        }
        other => Err(VtError::InvalidResponse(format!(
            "unknown analysis status {:?}",
            other.chars().take(32).collect::<String>()
        ))),
    }
}

/// The analysis id of an upload, checked before it is put in a URL.
pub(crate) fn upload_analysis_id(body: &[u8]) -> Result<String, VtError> {
    let response: UploadResponse = parse(body, "upload response")?;
    let id = response.data.id;
    let well_formed = !id.is_empty()
        && id.len() <= MAX_ANALYSIS_ID
        && id.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"+/=_-:".contains(&byte));
    if well_formed { Ok(id) } else { Err(VtError::InvalidResponse("malformed analysis id".to_owned())) }
}

pub(crate) fn upload_url(body: &[u8]) -> Result<String, VtError> {
    Ok(parse::<UploadUrl>(body, "upload URL")?.data)
}

fn check_hash(reported: &str, expected: FileHash) -> Result<(), VtError> {
    match FileHash::parse(reported) {
        Ok(hash) if hash == expected => Ok(()),
        _ => Err(VtError::InvalidResponse(format!("the report is not about {expected}"))),
    }
}

fn engine_results(entries: BTreeMap<String, EngineEntry>) -> Vec<EngineResult> {
    // BTreeMap iteration is sorted by engine key, so the stored order is stable.
    entries
        .into_iter()
        .take(MAX_ENGINES)
        .map(|(key, entry)| EngineResult {
            engine: bounded(entry.engine_name.as_deref().unwrap_or(&key), MAX_ENGINE_NAME),
            category: EngineCategory::from_virustotal(&entry.category),
            result: entry.result.map(|result| bounded(&result, MAX_RESULT)),
        })
        .collect()
}

fn bounded(text: &str, max_chars: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f";

    #[test]
    fn file_report_keeps_engines_stats_and_dates() {
        let body = serde_json::json!({"data": {"id": SHA, "type": "file", "attributes": {
            "sha256": SHA, "last_analysis_date": 1_700_000_000, "first_submission_date": 1_600_000_000,
            "last_analysis_stats": {"malicious": 2, "suspicious": 0, "undetected": 1, "harmless": 0,
                "timeout": 0, "confirmed-timeout": 0, "failure": 0, "type-unsupported": 1},
            "last_analysis_results": {
                "B": {"category": "malicious", "engine_name": "B", "result": "EICAR-Test-File"},
                "A": {"category": "type-unsupported", "engine_name": "A", "result": null},
                "C": {"category": "undetected", "engine_name": "C\u{7}", "result": null},
                "D": {"category": "brand-new", "engine_name": "D", "result": null}},
            "names": ["ignored"]}}});
        let verdict = file_report(body.to_string().as_bytes(), FileHash::parse(SHA).unwrap(), 5).unwrap();
        assert_eq!(verdict.stats.malicious, 2);
        assert_eq!(verdict.stats.type_unsupported, 1);
        assert_eq!(verdict.last_analysis_date, Some(1_700_000_000));
        let names: Vec<_> = verdict.engines.iter().map(|e| e.engine.as_str()).collect();
        assert_eq!(names, ["A", "B", "C", "D"]);
        assert_eq!(verdict.engines[1].result.as_deref(), Some("EICAR-Test-File"));
        assert_eq!(verdict.engines[3].category, EngineCategory::Other);
    }

    #[test]
    fn a_report_about_another_file_is_refused() {
        let other = "00".repeat(32);
        let body = serde_json::json!({"data": {"id": other, "attributes": {"sha256": other}}});
        let result = file_report(body.to_string().as_bytes(), FileHash::parse(SHA).unwrap(), 0);
        assert!(matches!(result, Err(VtError::InvalidResponse(_))));
        assert!(matches!(
            file_report(b"<html>", FileHash::parse(SHA).unwrap(), 0),
            Err(VtError::InvalidResponse(_))
        ));
    }

    #[test]
    fn analysis_ids_are_checked_before_use_in_urls() {
        let ok = br#"{"data": {"type": "analysis", "id": "NjY0MjRlOTFj=="}}"#;
        assert_eq!(upload_analysis_id(ok).unwrap(), "NjY0MjRlOTFj==");
        for bad in
            [r#"{"data": {"id": "../files"}}"#, r#"{"data": {"id": ""}}"#, r#"{"data": {"id": "a?b"}}"#]
        {
            assert!(upload_analysis_id(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn analysis_status_is_followed() {
        let expected = FileHash::parse(SHA).unwrap();
        let queued = br#"{"data": {"attributes": {"status": "queued"}}, "meta": {"file_info": {}}}"#;
        assert!(matches!(analysis(queued, expected, 0), Ok(AnalysisState::Pending)));
        let done = serde_json::json!({"data": {"attributes": {"status": "completed", "date": 9,
            "stats": {"malicious": 1}, "results": {}}}, "meta": {"file_info": {"sha256": SHA}}});
        let Ok(AnalysisState::Completed(verdict)) = analysis(done.to_string().as_bytes(), expected, 0) else {
            panic!("completed analysis not parsed");
        };
        assert_eq!((verdict.stats.malicious, verdict.last_analysis_date), (1, Some(9)));
        let wrong = serde_json::json!({"data": {"attributes": {"status": "completed"}},
            "meta": {"file_info": {"sha256": "11".repeat(32)}}});
        assert!(analysis(wrong.to_string().as_bytes(), expected, 0).is_err());
    }
}
