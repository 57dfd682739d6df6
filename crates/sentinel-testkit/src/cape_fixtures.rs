//! The real CAPE v2 reports of ../shared/data/malware/dynamic/cape-reports,
//! read once here for every test that needs them (report parsing, the CAPE
//! client, the server's dynamic step).

use std::path::PathBuf;

use crate::prerequisite::Prerequisite;

/// Where the fixture reports live, relative to any crate of the workspace.
fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/malware/dynamic/cape-reports")
}

/// The real CAPE reports (path and bytes, sorted by path), or an empty list
/// with a message when the shared data is absent — unless
/// `SENTINEL_REQUIRE_DATA=1`, where their absence fails the test ([`Prerequisite::Data`]).
pub fn fixture_reports() -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fixture_dir();
    let mut reports: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(".lite.json"))
                .map(|p| {
                    let bytes = std::fs::read(&p).unwrap_or_else(|error| panic!("{}: {error}", p.display()));
                    (p, bytes)
                })
                .collect()
        })
        .unwrap_or_default();
    if reports.is_empty() {
        Prerequisite::Data.missing(format!("no CAPE report fixture in {}", dir.display()));
    }
    reports.sort();
    reports
}
