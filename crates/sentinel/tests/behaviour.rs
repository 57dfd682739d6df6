//! `sentinel behaviour` and `sentinel eval family` as processes: verdicts for
//! CAPE reports and API-call lists with the family and its probabilities (a
//! small model trained here on synthetic sequences, and the committed model),
//! an error row for unreadable reports, and the family evaluation on the real
//! `families.csv`, on a labels file with a known answer and on bad files.

use std::path::{Path, PathBuf};
use std::process::Command;

use sentinel_behaviour::{
    ApiCallSequence, BehaviourModel, FamilySample, LabelledSequence, TrainingOptions, load_mal_api_calls,
    train,
};
use sentinel_testkit::Prerequisite;

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
        let probabilities = row["family"]["probabilities"].as_object().unwrap();
        assert_eq!(probabilities.keys().collect::<Vec<_>>(), ["alpha", "beta"], "{row}");
        let sum: f64 = probabilities.values().map(|p| p.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-9, "{row}");
        assert_eq!(probabilities[row["family"]["family"].as_str().unwrap()].as_f64(), Some(confidence));
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
fn the_builtin_model_scores_reports_with_a_family_and_explains_them() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("calls.json");
    std::fs::write(&list, r#"["NtCreateFile", "NtWriteFile", "RegSetValueExW", "NtClose"]"#).unwrap();
    let (ok, out) = sentinel(&["--json"], &[&list]);
    assert!(ok, "{out}");
    let row = &json_lines(&out)[0];
    let builtin = BehaviourModel::builtin().unwrap();
    let expected = builtin.score(&ApiCallSequence::from_calls([
        "NtCreateFile",
        "NtWriteFile",
        "RegSetValueExW",
        "NtClose",
    ]));
    assert!((row["score"].as_f64().unwrap() - expected.score).abs() < 1e-9, "{row}");
    // The committed model knows the eight Mal-API-2019 families.
    let family = expected.family.as_ref().unwrap();
    assert_eq!(row["family"]["family"], family.family.as_str(), "{row}");
    let probabilities = row["family"]["probabilities"].as_object().unwrap();
    assert_eq!(probabilities.len(), 8, "{row}");
    assert_eq!(builtin.families().len(), 8);
    assert!(!row["top_ngrams"].as_array().unwrap().is_empty(), "{row}");
    let (ok, text) = sentinel(&[], &[&list]);
    assert!(ok);
    assert!(
        text.contains("families: Adware, Backdoor") && text.contains(&format!("family {} (", family.family)),
        "{text}"
    );
}

fn mal_api() -> Option<PathBuf> {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/malware/dynamic/mal-api-2019");
    if dir.join("families.csv").exists() && dir.join("100_calls.zip").exists() {
        return Some(dir);
    }
    Prerequisite::Data.missing(format!("{} is absent (../shared/data not mounted)", dir.display()));
    None
}

fn eval_family(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(["eval", "family"])
        .args(args)
        .output()
        .expect("run sentinel eval family");
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn eval_family_scores_the_real_labels_and_a_file_of_known_answer() {
    let Some(data) = mal_api() else { return };
    let calls = data.join("100_calls.zip");
    let index = data.join("ApiIndex.txt");
    let common = ["--api-index", index.to_str().unwrap()];

    // The real labels: the committed model was trained on these rows, so this is
    // an in-sample figure; it must at least be far above chance (1/8).
    let labels = data.join("families.csv");
    let (ok, out, err) = eval_family(
        &[&["--calls", calls.to_str().unwrap(), "--labels", labels.to_str().unwrap(), "--json"][..], &common]
            .concat(),
    );
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["samples"], 600, "{out}");
    let accuracy = report["accuracy"].as_f64().unwrap();
    let macro_f1 = report["macro_f1"].as_f64().unwrap();
    assert!(accuracy > 0.5 && macro_f1 > 0.5, "{out}");
    let confusion = report["confusion"].as_array().unwrap();
    let total: u64 = confusion.iter().flat_map(|r| r.as_array().unwrap()).map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(total, 600);

    // A labels file whose labels are the model's own predictions (on unlabelled
    // rows too), read from the text inside the zip: accuracy 1.
    let model = BehaviourModel::builtin().unwrap();
    let sequences = load_mal_api_calls(&calls, &index).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut own = String::from("row,family\n");
    for row in [1usize, 3, 5, 100, 250, 700, 807] {
        own.push_str(&format!("{row},{}\n", model.family(&sequences[row]).unwrap().family));
    }
    let own_path = dir.path().join("own.csv");
    std::fs::write(&own_path, own).unwrap();
    let text_path = dir.path().join("100_calls.txt");
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&calls).unwrap()).unwrap();
    std::io::copy(&mut archive.by_index(0).unwrap(), &mut std::fs::File::create(&text_path).unwrap())
        .unwrap();
    let (ok, out, err) = eval_family(
        &[
            &["--calls", text_path.to_str().unwrap(), "--labels", own_path.to_str().unwrap(), "--json"][..],
            &common,
        ]
        .concat(),
    );
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (report["accuracy"].as_f64(), report["macro_f1"].as_f64(), report["samples"].as_u64()),
        (Some(1.0), Some(1.0), Some(7)),
        "{out}"
    );

    // The text form.
    let (ok, out, _) = eval_family(
        &[&["--calls", calls.to_str().unwrap(), "--labels", own_path.to_str().unwrap()][..], &common]
            .concat(),
    );
    assert!(ok);
    assert!(
        out.contains("accuracy   1.0000") && out.contains("macro F1   1.0000") && out.contains("confusion"),
        "{out}"
    );
}

#[test]
fn eval_family_rejects_bad_labels_files_clearly() {
    let Some(data) = mal_api() else { return };
    let calls = data.join("100_calls.zip");
    let index = data.join("ApiIndex.txt");
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str); 6] = [
        ("sha256,label\n1,Trojan\n", "expected the header `row,family`"),
        ("row,family\nseven,Trojan\n", "`seven` is not a row number"),
        ("row,family\n1,Trojan\n1,Adware\n", "row 1 is labelled twice"),
        ("row,family\n5000,Trojan\n", "the calls file has 808 rows"),
        ("row,family\n1,\n", "family name must be 1 to 64 bytes"),
        ("row,family\n", "has no labelled row"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.csv"));
        std::fs::write(&path, text).unwrap();
        let (ok, out, err) = eval_family(&[
            "--calls",
            calls.to_str().unwrap(),
            "--labels",
            path.to_str().unwrap(),
            "--api-index",
            index.to_str().unwrap(),
        ]);
        assert!(!ok, "{text:?} was accepted: {out}");
        assert!(
            err.contains(expected) && !err.contains("panicked"),
            "{text:?}: expected `{expected}` in {err}"
        );
    }
    // A calls file that is neither the zip nor its text, and a missing labels file.
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, [0xffu8, 0xfe, 0x00, 0x01]).unwrap();
    let good = dir.path().join("good.csv");
    std::fs::write(&good, "row,family\n0,Trojan\n").unwrap();
    let (ok, _, err) = eval_family(&[
        "--calls",
        junk.to_str().unwrap(),
        "--labels",
        good.to_str().unwrap(),
        "--api-index",
        index.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("neither a zip archive nor text"), "{err}");
    let (ok, _, err) = eval_family(&[
        "--calls",
        calls.to_str().unwrap(),
        "--labels",
        dir.path().join("absent.csv").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("cannot read the labels"), "{err}");
}
