//! `sentinel behaviour` as a process: verdicts for CAPE reports and API-call
//! lists, with the family as an extra output when the model has a family
//! classifier (a small model trained here on synthetic sequences, since the
//! shared family data has no labels), and an error row for unreadable reports.

use std::path::Path;
use std::process::Command;

use sentinel_behaviour::{
    ApiCallSequence, BehaviourModel, FamilySample, LabelledSequence, TrainingOptions, train,
};

const INJECTION: [&str; 4] = ["NtOpenProcess", "VirtualAllocEx", "WriteProcessMemory", "CreateRemoteThread"];
const FILE_IO: [&str; 3] = ["NtCreateFile", "NtReadFile", "NtClose"];
const PERSISTENCE: [&str; 3] = ["RegOpenKeyExW", "RegSetValueExW", "RegCloseKey"];
const NETWORK: [&str; 4] = ["WSAStartup", "socket", "connect", "send"];

/// `base`, then a call of its own so that no two sequences are identical
/// (splits group identical sequences).
fn sequence(base: &[&str], i: usize) -> ApiCallSequence {
    let unique = format!("Unique{i}");
    ApiCallSequence::from_calls(base.iter().copied().chain([unique.as_str()]))
}

/// A detector (injection = malware, file I/O = benign) and a family
/// classifier (registry persistence = "alpha", network = "beta").
fn synthetic_model() -> BehaviourModel {
    let rows: Vec<LabelledSequence> = (0..40)
        .map(|i| {
            let malicious = i % 2 == 0;
            let calls = sequence(if malicious { &INJECTION } else { &FILE_IO }, i);
            LabelledSequence { sha256: format!("{i:064x}"), malicious, calls }
        })
        .collect();
    let families: Vec<FamilySample> = (0..40)
        .map(|i| {
            let (family, base) =
                if i % 2 == 0 { ("alpha", &PERSISTENCE[..]) } else { ("beta", &NETWORK[..]) };
            FamilySample { family: family.to_owned(), calls: sequence(base, 100 + i) }
        })
        .collect();
    let options =
        TrainingOptions { c_grid: vec![10.0], folds: 2, max_iterations: 100, ..TrainingOptions::default() };
    train(&rows, Some(&families), vec!["synthetic".into()], &options).unwrap().0
}

fn sentinel(args: &[&str], files: &[&Path]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .arg("behaviour")
        .args(args)
        .args(files)
        .output()
        .expect("run sentinel behaviour");
    (output.status.success(), String::from_utf8(output.stdout).unwrap())
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

#[test]
fn family_is_an_extra_output_of_models_that_have_a_family_classifier() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("model.json");
    synthetic_model().save(&model_path).unwrap();

    // A CAPE-shaped report whose second process sets a Run key, and a plain call list.
    let cape = dir.path().join("persistence.json");
    std::fs::write(
        &cape,
        r#"{"behavior": {"processes": [
            {"calls": [{"timestamp": "2025-01-01 10:00:00,001", "api": "NtOpenProcess"},
                       {"timestamp": "2025-01-01 10:00:00,004", "api": "CreateRemoteThread"}]},
            {"calls": [{"timestamp": "2025-01-01 10:00:00,002", "api": "RegOpenKeyExW"},
                       {"timestamp": "2025-01-01 10:00:00,003", "api": "RegSetValueExW"}]}]}}"#,
    )
    .unwrap();
    let list = dir.path().join("network.json");
    std::fs::write(&list, r#"["WSAStartup", "socket", "connect", "send", "VirtualAllocEx"]"#).unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"behavior\": [").unwrap();

    let (ok, out) = sentinel(&["--json", "--model", model_path.to_str().unwrap()], &[&cape, &list, &broken]);
    assert!(ok, "{out}");
    let rows = json_lines(&out);
    assert_eq!(rows.len(), 3, "{out}");
    assert_eq!(rows[0]["family"]["family"], "alpha", "{out}");
    assert_eq!(rows[1]["family"]["family"], "beta", "{out}");
    for row in &rows[..2] {
        let confidence = row["family"]["confidence"].as_f64().unwrap();
        assert!((0.5..=1.0).contains(&confidence), "{row}");
        let score = row["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&score), "{row}");
    }
    assert_eq!(rows[0]["calls"], 4);
    assert!(rows[2]["error"].as_str().unwrap().contains("JSON"), "{out}");
    assert!(rows[2].get("score").is_none());

    // The text form names the family too.
    let (ok, text) = sentinel(&["--model", model_path.to_str().unwrap()], &[&cape]);
    assert!(ok);
    assert!(text.contains("families: alpha, beta") && text.contains("family alpha ("), "{text}");
}

#[test]
fn the_builtin_model_scores_reports_without_a_family() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("calls.json");
    std::fs::write(&list, r#"["NtCreateFile", "NtWriteFile", "RegSetValueExW", "NtClose"]"#).unwrap();
    let (ok, out) = sentinel(&["--json"], &[&list]);
    assert!(ok, "{out}");
    let row = &json_lines(&out)[0];
    let expected = BehaviourModel::builtin().unwrap().score(&ApiCallSequence::from_calls([
        "NtCreateFile",
        "NtWriteFile",
        "RegSetValueExW",
        "NtClose",
    ]));
    assert!((row["score"].as_f64().unwrap() - expected.score).abs() < 1e-9, "{row}");
    assert!(row["family"].is_null(), "{row}");
    let (ok, text) = sentinel(&[], &[&list]);
    assert!(ok);
    assert!(text.contains("no family classifier") && text.contains("family -"), "{text}");
}
