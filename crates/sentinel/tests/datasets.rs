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
