//! `sentinel models` as an operator runs it on a data directory: the registry's versions and
//! decisions, and a rollback of the static model by hand.

use std::path::Path;
use std::process::{Command, Output};

use sentinel_store::{
    DecisionOutcome, ModelKind, NewDecision, NewModelVersion, Provenance, Store, StoreSettings,
};
use serde_json::Value;

fn sentinel(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("SENTINEL_DATA_DIR")
        .output()
        .expect("run sentinel")
}

fn lines(output: &Output) -> Vec<Value> {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

#[test]
fn versions_and_decisions_are_listed_and_a_static_model_is_rolled_back_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = {
        let store = Store::open(dir.path(), StoreSettings::default()).unwrap();
        let register = |artifact: &str| {
            let info = store
                .register_model(NewModelVersion {
                    kind: ModelKind::Static,
                    label: format!("static-{artifact}"),
                    provenance: Provenance {
                        trainer: "sentinel test".into(),
                        command: "sentinel train static --eval-set eval.csv".into(),
                        data: serde_json::json!({"seed": 42}),
                    },
                    evaluation: Some(serde_json::json!({"roc_auc": 0.99})),
                    artifact: artifact.as_bytes().to_vec(),
                })
                .unwrap();
            store
                .decide_model(NewDecision {
                    kind: ModelKind::Static,
                    version_id: info.id,
                    outcome: DecisionOutcome::Promoted,
                    reason: "not worse".into(),
                    figures: serde_json::json!({"challenger": {"roc_auc": 0.99}}),
                })
                .unwrap();
            info.id
        };
        (register("one"), register("two"))
    };

    let versions = lines(&sentinel(dir.path(), &["models", "list"]));
    assert_eq!(versions.len(), 2);
    assert_eq!((versions[0]["id"].as_i64(), versions[0]["active"].as_bool()), (Some(second), Some(true)));
    assert_eq!(versions[1]["command"], "sentinel train static --eval-set eval.csv");
    assert!(lines(&sentinel(dir.path(), &["models", "list", "--kind", "network"])).is_empty());

    let activated = lines(&sentinel(
        dir.path(),
        &["models", "activate", "static", &first.to_string(), "--reason", "regression"],
    ));
    assert_eq!(activated[0]["outcome"], "activated");
    assert_eq!(activated[0]["previous"], second);
    let versions = lines(&sentinel(dir.path(), &["models", "list", "--kind", "static"]));
    assert_eq!((versions[1]["id"].as_i64(), versions[1]["active"].as_bool()), (Some(first), Some(true)));
    let decisions = lines(&sentinel(dir.path(), &["models", "decisions"]));
    let reasons: Vec<&str> = decisions.iter().map(|decision| decision["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["not worse", "not worse", "regression"]);

    // An unknown version, and the network model (rolled back through its service), are refused.
    let unknown = sentinel(dir.path(), &["models", "activate", "static", "999"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no static model version 999"));
    let network = sentinel(dir.path(), &["models", "activate", "network", &first.to_string()]);
    assert!(String::from_utf8_lossy(&network.stderr).contains("/api/v1/models/rollback"));
}

#[test]
fn a_behaviour_model_file_is_imported_as_an_active_version_and_a_broken_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("behaviour.json");
    let model = sentinel_behaviour::BehaviourModel::builtin().unwrap();
    model.save(&file).unwrap();
    let imported = lines(&sentinel(
        dir.path(),
        &["models", "import", "behaviour", file.to_str().unwrap(), "--activate"],
    ));
    assert_eq!(imported[0]["label"], model.version());
    assert_eq!(imported[0]["active"], true);
    assert_eq!(imported[0]["data"]["file"], file.display().to_string());
    let store = Store::open(dir.path(), StoreSettings::default()).unwrap();
    let active = store.active_model(ModelKind::Behaviour).unwrap().unwrap();
    assert_eq!(active.artifact, std::fs::read(&file).unwrap());
    drop(store);

    std::fs::write(&file, b"{ not a model").unwrap();
    let broken = sentinel(dir.path(), &["models", "import", "behaviour", file.to_str().unwrap()]);
    assert!(!broken.status.success());
    assert!(String::from_utf8_lossy(&broken.stderr).contains("is not a behaviour model"));
    assert_eq!(lines(&sentinel(dir.path(), &["models", "list", "--kind", "behaviour"])).len(), 1);
}
