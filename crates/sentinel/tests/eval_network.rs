//! `sentinel eval network` as an analyst runs it: NSL-KDD-format files in, the service's figures
//! (and scikit-learn's, with `--peer`) out. The files are generated here: ordinary web, mail and
//! DNS connections, and in the test file a SYN flood and a closed-port scan planted among them.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use sentinel_testkit::Prerequisite;
use serde_json::Value;

/// A small deterministic generator, so that the files are the same on every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }
}

/// One NSL-KDD line: the 41 features, the label and a difficulty of 21.
#[allow(clippy::too_many_arguments)]
fn line(
    protocol: &str,
    service: &str,
    flag: &str,
    src_bytes: u64,
    dst_bytes: u64,
    count: u64,
    srv_count: u64,
    serror: f64,
    rerror: f64,
    diff_srv: f64,
    label: &str,
) -> String {
    let same_srv = 1.0 - diff_srv;
    format!(
        "0,{protocol},{service},{flag},{src_bytes},{dst_bytes},0,0,0,0,0,1,0,0,0,0,0,0,0,0,0,0,\
         {count},{srv_count},{serror:.2},{serror:.2},{rerror:.2},{rerror:.2},{same_srv:.2},{diff_srv:.2},0.00,\
         255,{srv_count},{same_srv:.2},{diff_srv:.2},0.00,0.00,{serror:.2},{serror:.2},{rerror:.2},{rerror:.2},\
         {label},21\n"
    )
}

fn normal_line(random: &mut Lcg) -> String {
    match random.below(3) {
        0 => line(
            "tcp",
            "http",
            "SF",
            200 + random.below(100),
            1000 + random.below(4000),
            1 + random.below(8),
            1 + random.below(8),
            0.0,
            0.0,
            0.0,
            "normal",
        ),
        1 => line(
            "tcp",
            "smtp",
            "SF",
            500 + random.below(1500),
            300 + random.below(100),
            1 + random.below(3),
            1 + random.below(3),
            0.0,
            0.0,
            0.0,
            "normal",
        ),
        _ => line(
            "udp",
            "domain_u",
            "SF",
            30 + random.below(20),
            60 + random.below(200),
            1 + random.below(20),
            1 + random.below(20),
            0.0,
            0.0,
            0.0,
            "normal",
        ),
    }
}

/// Writes the training file (normal rows and a few attacks, which the evaluation must ignore)
/// and the test file (normal rows, a SYN flood and a closed-port scan).
fn write_files(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut random = Lcg(17);
    let mut train = String::new();
    for row in 0..1600 {
        train.push_str(&normal_line(&mut random));
        if row % 100 == 0 {
            // Labelled attacks in the training file: left out of training.
            train.push_str(&line("tcp", "private", "S0", 0, 0, 200, 10, 1.0, 0.0, 0.9, "neptune"));
        }
    }
    let mut test = String::new();
    for _ in 0..300 {
        test.push_str(&normal_line(&mut random));
    }
    for index in 0..30 {
        test.push_str(&line(
            "tcp",
            "private",
            "S0",
            0,
            0,
            150 + index,
            5 + index % 5,
            1.0,
            0.0,
            0.95,
            "neptune",
        ));
        test.push_str(&line("tcp", "private", "REJ", 0, 0, 100 + index, 2, 0.0, 1.0, 0.97, "portsweep"));
    }
    let (train_path, test_path) = (dir.join("train.txt"), dir.join("test.txt"));
    std::fs::write(&train_path, train).unwrap();
    std::fs::write(&test_path, test).unwrap();
    (train_path, test_path)
}

/// `sentinel eval network TRAIN TEST`, to which a test adds its options.
fn eval_command(train: &Path, test: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sentinel"));
    command.args(["eval", "network"]).arg(train).arg(test);
    command
}

fn eval(train: &Path, test: &Path, extra: &[&str]) -> Value {
    let output = eval_command(train, test)
        .args(["--json", "--seeds", "1,2"])
        .args(extra)
        .output()
        .expect("run sentinel");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("one JSON object")
}

/// Runs `sentinel eval network` expecting a refusal; returns what it printed on stderr.
fn refused(train: &Path, test: &Path, extra: &[&str]) -> String {
    let output = eval_command(train, test).args(extra).output().expect("run sentinel");
    assert!(!output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn the_service_s_models_learn_the_normal_rows_and_rank_the_planted_attacks_above_them() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = write_files(dir.path());
    let report = eval(&train, &test, &[]);

    assert_eq!(report["training_rows"], 1600, "only the normal rows are learnt from: {report}");
    assert_eq!(report["test_rows"], 360);
    assert_eq!(report["test_anomalies"], 60);
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.iter().map(|run| run["seed"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2]);
    for run in runs {
        let models: Vec<&str> =
            run["models"].as_array().unwrap().iter().map(|m| m["model"].as_str().unwrap()).collect();
        assert_eq!(models.len(), 4, "three members and the ensemble: {models:?}");
        assert_eq!(models[3], "ensemble");
        for figures in run["models"].as_array().unwrap() {
            for field in [
                "roc_auc",
                "pr_auc",
                "detection_at_1pct_fpr",
                "threshold",
                "false_positive_rate",
                "detection_rate",
                "precision",
            ] {
                assert!(figures[field].is_f64(), "{field} missing in {figures}");
            }
        }
        let ensemble = &run["models"][3];
        assert!(ensemble["roc_auc"].as_f64().unwrap() > 0.95, "the attacks score above normal: {ensemble}");
        assert!(ensemble["detection_rate"].as_f64().unwrap() > 0.9, "the verdict flags them: {ensemble}");
        assert!(ensemble["false_positive_rate"].as_f64().unwrap() < 0.05, "{ensemble}");
    }
    assert_eq!(report["peer"], Value::Array(Vec::new()), "no peer without --peer");
}

#[test]
fn the_test_file_can_be_cut_to_its_hard_rows_and_bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = write_files(dir.path());
    let mut hard = std::fs::read_to_string(&test).unwrap();
    // Two rows of difficulty 5 at the end: the only ones below 21.
    hard.push_str(
        &line("tcp", "http", "SF", 250, 3000, 2, 2, 0.0, 0.0, 0.0, "normal").replace(",21\n", ",5\n"),
    );
    hard.push_str(
        &line("tcp", "private", "REJ", 0, 0, 120, 2, 0.0, 1.0, 0.97, "portsweep").replace(",21\n", ",5\n"),
    );
    std::fs::write(&test, hard).unwrap();
    let report = eval(&train, &test, &["--difficulty-below", "21"]);
    assert_eq!((report["test_rows"].as_u64(), report["test_anomalies"].as_u64()), (Some(2), Some(1)));

    let mut broken = String::new();
    writeln!(broken, "0,tcp,http,XX,1,2").unwrap();
    std::fs::write(&test, broken).unwrap();
    let stderr = refused(&train, &test, &[]);
    assert!(stderr.contains("test.txt line 1") && stderr.contains("columns"), "{stderr}");
}

#[test]
fn the_model_settings_of_the_configuration_are_the_ones_evaluated() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = write_files(dir.path());
    let config = dir.path().join("sentinel.toml");
    std::fs::write(
        &config,
        "[network.model]\nsvm_nu = 0.05\nweighting = \"central\"\nbeyond_range = \"saturating\"\n",
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();
    let shipped = eval(&train, &test, &[]);
    let configured = eval(&train, &test, &["--config", config_arg]);
    let svm = |report: &Value| report["runs"][0]["models"][2].clone();
    assert_eq!(svm(&shipped)["model"], "one_class_svm");
    assert_ne!(
        svm(&shipped)["threshold"],
        svm(&configured)["threshold"],
        "ν from the file fits another SVM: {} against {}",
        svm(&shipped),
        svm(&configured)
    );
    assert_eq!(shipped["runs"][0]["models"][0], configured["runs"][0]["models"][0], "the forest is the same");

    std::fs::write(&config, "[network.model]\nweighting = \"middle\"\n").unwrap();
    let stderr = refused(&train, &test, &["--config", config_arg]);
    assert!(stderr.contains("middle") && stderr.contains("central"), "{stderr}");
}

#[test]
fn with_peer_scikit_learn_runs_on_the_same_rows_with_both_feature_sets() {
    let ready = Command::new("python3").args(["-c", "import sklearn, numpy"]).status();
    if !ready.is_ok_and(|status| status.success()) {
        Prerequisite::Peers.missing("python3 with scikit-learn is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = write_files(dir.path());
    let report = eval(&train, &test, &["--peer"]);
    let peer = report["peer"].as_array().unwrap();
    assert_eq!(peer.len(), 2 * 3 * 2, "two inputs × three models × two seeds: {peer:?}");
    for figures in peer {
        assert!(["service", "dataset"].contains(&figures["features"].as_str().unwrap()));
        assert!(["iforest", "lof", "ocsvm"].contains(&figures["model"].as_str().unwrap()));
        assert!(figures["roc_auc"].as_f64().unwrap() > 0.5, "{figures}");
    }
}
