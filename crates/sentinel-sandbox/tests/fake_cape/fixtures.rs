//! The real CAPE v2 reports of ../shared/data/malware/dynamic/cape-reports,
//! read once here for every test that needs them (report parsing, the CAPE
//! client, the server's dynamic step).

use std::path::PathBuf;

/// Where the fixture reports live, relative to any crate of the workspace.
fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/malware/dynamic/cape-reports")
}

/// The real CAPE reports (path and bytes, sorted by path), or an empty list
/// with a message when the shared data is absent — unless
/// `SENTINEL_REQUIRE_DATA=1`, where their absence fails the test.
pub fn fixture_reports() -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fixture_dir();
    let mut reports: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(".lite.json"))
                .map(|p| {
                    let bytes = std::fs::read(&p).unwrap();
                    (p, bytes)
                })
                .collect()
        })
        .unwrap_or_default();
    if reports.is_empty() {
        assert!(
            std::env::var("SENTINEL_REQUIRE_DATA").as_deref() != Ok("1"),
            "SENTINEL_REQUIRE_DATA=1 but no CAPE fixture in {}",
            dir.display()
        );
        eprintln!("skipped: no CAPE report fixtures in {} (../shared/data absent)", dir.display());
    }
    reports.sort();
    reports
}
