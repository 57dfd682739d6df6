//! `sentinel labels` and `sentinel vt-results` as a user runs them: a manual
//! label, and both datasets exported to CSV and imported into another data
//! directory.

use std::path::Path;
use std::process::Command;

use sentinel_store::{LabelSource, Store, StoreSettings, VtReportRow};

fn sentinel(data_dir: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("SENTINEL_DATA_DIR")
        .output()
        .expect("run sentinel");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "sentinel {args:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn labels_and_vt_results_go_through_csv_into_another_data_directory() {
    let (first, second, files) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sample = b"MZ a sample".to_vec();
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&sample));
    {
        let store = Store::open(first.path(), StoreSettings::default()).unwrap();
        store.record_sample(&sha256, &sample).unwrap();
        store.set_label(&sha256, 0, LabelSource::VirusTotal, None).unwrap();
        let report = VtReportRow {
            sha256: sha256.clone(),
            last_analysis_date: Some(1_700_000_000),
            fetched_at: 1_700_000_100,
            malicious: 3,
            suspicious: 0,
            undetected: 60,
            harmless: 0,
            report_json: "{\"kept\":\"as is\"}".to_owned(),
        };
        store.put_vt_report(&report).unwrap();
    }

    // An analyst overrides the automatic label.
    let out =
        sentinel(first.path(), &["labels", "set", &sha256.to_uppercase(), "1", "--note", "unpacked by hand"]);
    assert!(out.contains("labelled 1"), "{out}");
    let labels_csv = files.path().join("labels.csv");
    let vt_csv = files.path().join("vt.csv");
    assert!(sentinel(first.path(), &["labels", "export", labels_csv.to_str().unwrap()]).contains("1 labels"));
    assert!(
        sentinel(first.path(), &["vt-results", "export", vt_csv.to_str().unwrap()]).contains("1 reports")
    );
    let exported = std::fs::read_to_string(&labels_csv).unwrap();
    assert!(
        exported.starts_with("file_path,sha256,y\n") && exported.trim_end().ends_with(&format!("{sha256},1"))
    );

    let out = sentinel(second.path(), &["labels", "import", labels_csv.to_str().unwrap()]);
    assert!(out.starts_with("1 rows imported") && out.contains("1 sample files stored"), "{out}");
    let out = sentinel(second.path(), &["vt-results", "import", vt_csv.to_str().unwrap()]);
    assert!(out.starts_with("1 rows imported"), "{out}");

    let store = Store::open(second.path(), StoreSettings::default()).unwrap();
    let label = store.label(&sha256).unwrap().unwrap();
    assert_eq!((label.y, label.source), (1, LabelSource::Import));
    assert_eq!(
        store.read_sample(&sha256).unwrap(),
        Some(sample),
        "the defanged vault file travelled with the label"
    );
    assert_eq!(store.vt_report(&sha256).unwrap().unwrap().malicious, 3);

    // A label other than 0 or 1 is refused before anything is opened.
    let refused = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(["labels", "set", &sha256, "2", "--data-dir"])
        .arg(second.path())
        .output()
        .unwrap();
    assert!(!refused.status.success());
}

#[test]
fn imported_vt_results_label_their_samples_by_the_label_rule() {
    let (dir, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let hash = |name: &str| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(name.as_bytes()));
    // Sentinel's compact report (the form `vt-results export` writes): a file first seen
    // three years before its last analysis, with this many of 70 engines detecting it.
    let report = |sha256: &str, malicious: u32| {
        serde_json::json!({
            "sha256": sha256, "engines": [],
            "stats": {"malicious": malicious, "undetected": 70 - malicious},
            "last_analysis_date": 1_700_000_000, "first_submission_date": 1_600_000_000,
            "fetched_at": 1_700_000_100,
        })
        .to_string()
    };
    let (malware, clean, unclear, reviewed, foreign, mismatched) = (
        hash("malware"),
        hash("clean"),
        hash("unclear"),
        hash("reviewed"),
        hash("foreign"),
        hash("mismatched"),
    );
    let rows = [
        (&malware, report(&malware, 45)),
        (&clean, report(&clean, 0)),
        (&unclear, report(&unclear, 2)),
        (&reviewed, report(&reviewed, 45)),
        (&foreign, "{\"data\":{}}".to_owned()),
        (&mismatched, report(&hash("another file"), 45)),
    ];
    let mut csv =
        "sha256,last_analysis_date,fetched_at,malicious,suspicious,undetected,harmless,report_json\n"
            .to_owned();
    for (sha256, json) in &rows {
        csv.push_str(&format!("{sha256},1700000000,1700000100,1,0,69,0,\"{}\"\n", json.replace('"', "\"\"")));
    }
    let csv_path = files.path().join("vt.csv");
    std::fs::write(&csv_path, csv).unwrap();

    // An analyst has already decided about one of them.
    sentinel(dir.path(), &["labels", "set", &reviewed, "0"]);
    let out = sentinel(dir.path(), &["vt-results", "import", csv_path.to_str().unwrap()]);
    assert!(out.starts_with("6 rows imported"), "{out}");
    assert!(out.contains("\n2 samples labelled by the [virustotal] label rule\n"), "{out}");
    assert!(out.contains("\n2 reports not in Sentinel's form"), "{out}");

    let store = Store::open(dir.path(), StoreSettings::default()).unwrap();
    let label = |sha256: &str| store.label(sha256).unwrap().map(|label| (label.y, label.source));
    assert_eq!(label(&malware), Some((1, LabelSource::VirusTotal)));
    assert_eq!(label(&clean), Some((0, LabelSource::VirusTotal)));
    assert_eq!(label(&unclear), None, "2 of 70 engines is not clear enough");
    assert_eq!(label(&reviewed), Some((0, LabelSource::Manual)), "a manual label is never replaced");
    assert_eq!(label(&foreign), None);
    assert_eq!(label(&mismatched), None, "a report about another file labels nothing");
    assert_eq!(store.vt_report(&foreign).unwrap().unwrap().report_json, "{\"data\":{}}");

    // Importing the same file again leaves every label as it was.
    let before: Vec<_> = rows.iter().map(|(sha256, _)| label(sha256)).collect();
    drop(store);
    sentinel(dir.path(), &["vt-results", "import", csv_path.to_str().unwrap()]);
    let store = Store::open(dir.path(), StoreSettings::default()).unwrap();
    let after: Vec<_> = rows
        .iter()
        .map(|(sha256, _)| store.label(sha256).unwrap().map(|label| (label.y, label.source)))
        .collect();
    assert_eq!(before, after);
}
