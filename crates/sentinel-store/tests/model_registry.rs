//! The model registry through the store's public API: versions with their origin and
//! evaluation, decisions with reasons and figures, the active version per kind, rollback and
//! pruning, on a real database that is reopened.

use sentinel_store::{
    DecisionOutcome, ModelKind, NewDecision, NewModelVersion, Provenance, Store, StoreError, StoreSettings,
};
use serde_json::json;

fn version(kind: ModelKind, artifact: &str) -> NewModelVersion {
    NewModelVersion {
        kind,
        label: format!("{kind}-{artifact}"),
        provenance: Provenance {
            trainer: "sentinel 0.1.0".to_owned(),
            command: "sentinel train static --eval-set eval.csv".to_owned(),
            data: json!({ "header_csv": "pe_header_dataset.csv", "seed": 42 }),
        },
        evaluation: Some(json!({ "roc_auc": 0.99 })),
        artifact: artifact.as_bytes().to_vec(),
    }
}

fn decide(
    store: &Store,
    kind: ModelKind,
    id: i64,
    outcome: DecisionOutcome,
    reason: &str,
) -> Result<sentinel_store::DecisionRecord, StoreError> {
    store.decide_model(NewDecision {
        kind,
        version_id: id,
        outcome,
        reason: reason.to_owned(),
        figures: json!({ "challenger": { "roc_auc": 0.99 } }),
    })
}

#[test]
fn promotions_and_rejections_decide_the_active_version_and_every_decision_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreSettings::default()).unwrap();
    assert_eq!(store.active_model(ModelKind::Static).unwrap(), None);

    let first = store.register_model(version(ModelKind::Static, "first")).unwrap();
    assert!(!first.active, "registered is not active");
    assert_eq!(first.provenance.data["seed"], 42);
    assert_eq!(first.sha256.len(), 64);
    assert_eq!(store.active_model(ModelKind::Static).unwrap(), None);
    let promoted =
        decide(&store, ModelKind::Static, first.id, DecisionOutcome::Promoted, "no model in service")
            .unwrap();
    assert_eq!(promoted.previous_id, None);

    let worse = store.register_model(version(ModelKind::Static, "worse")).unwrap();
    let rejected =
        decide(&store, ModelKind::Static, worse.id, DecisionOutcome::Rejected, "worse on ROC AUC").unwrap();
    assert_eq!(rejected.previous_id, Some(first.id));
    let active = store.active_model(ModelKind::Static).unwrap().unwrap();
    assert_eq!((active.info.id, active.artifact.as_slice()), (first.id, b"first".as_slice()));

    let better = store.register_model(version(ModelKind::Static, "better")).unwrap();
    decide(&store, ModelKind::Static, better.id, DecisionOutcome::Promoted, "not worse").unwrap();
    assert_eq!(store.active_model(ModelKind::Static).unwrap().unwrap().info.id, better.id);
    // Kinds are separate: no behaviour model is active, and a static version is not a network one.
    assert_eq!(store.active_model(ModelKind::Behaviour).unwrap(), None);
    assert!(matches!(
        decide(&store, ModelKind::Network, better.id, DecisionOutcome::Activated, "wrong kind"),
        Err(StoreError::NoSuchModelVersion { .. })
    ));
    drop(store);

    // Everything survives a reopen: versions, the active one, the decisions in order.
    let store = Store::open(dir.path(), StoreSettings::default()).unwrap();
    let versions = store.model_versions(ModelKind::Static).unwrap();
    assert_eq!(versions.iter().map(|info| info.id).collect::<Vec<_>>(), [better.id, worse.id, first.id]);
    assert_eq!(versions.iter().map(|info| info.active).collect::<Vec<_>>(), [true, false, false]);
    let decisions = store.model_decisions(ModelKind::Static).unwrap();
    let summary: Vec<_> = decisions.iter().map(|decision| (decision.version_id, decision.outcome)).collect();
    assert_eq!(
        summary,
        [
            (first.id, DecisionOutcome::Promoted),
            (worse.id, DecisionOutcome::Rejected),
            (better.id, DecisionOutcome::Promoted)
        ]
    );
    assert_eq!(decisions[1].reason, "worse on ROC AUC");
    assert_eq!(decisions[1].figures["challenger"]["roc_auc"], 0.99);

    // Rollback: the first version again, recorded as an activation.
    let rollback =
        decide(&store, ModelKind::Static, first.id, DecisionOutcome::Activated, "rollback").unwrap();
    assert_eq!(rollback.previous_id, Some(better.id));
    assert_eq!(store.active_model(ModelKind::Static).unwrap().unwrap().info.id, first.id);
}

#[test]
fn every_registration_is_a_version_and_pruning_keeps_the_active_and_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreSettings::default()).unwrap();
    // A retraining that gives the same bytes is still a version of its own, with the same hash.
    let again = store.register_model(version(ModelKind::Network, "same")).unwrap();
    let once = store.register_model(version(ModelKind::Network, "same")).unwrap();
    assert_ne!(once.id, again.id);
    assert_eq!(once.sha256, again.sha256);

    let ids: Vec<i64> = (0..5)
        .map(|index| store.register_model(version(ModelKind::Network, &format!("v{index}"))).unwrap().id)
        .collect();
    decide(&store, ModelKind::Network, once.id, DecisionOutcome::Activated, "first").unwrap();
    assert_eq!(
        store.prune_model_versions(ModelKind::Network, 2).unwrap(),
        4,
        "v0, v1, v2 and the first \"same\""
    );
    let available: Vec<(i64, bool)> = store
        .model_versions(ModelKind::Network)
        .unwrap()
        .iter()
        .map(|info| (info.id, info.available))
        .collect();
    assert_eq!(
        available,
        [
            (ids[4], true),
            (ids[3], true),
            (ids[2], false),
            (ids[1], false),
            (ids[0], false),
            (once.id, true),
            (again.id, false)
        ],
        "the active one is kept although older"
    );
    assert_eq!(store.stored_model(ModelKind::Network, ids[0]).unwrap(), None);
    assert!(matches!(
        decide(&store, ModelKind::Network, ids[0], DecisionOutcome::Activated, "rollback"),
        Err(StoreError::ModelArtifactPruned { .. })
    ));
    assert_eq!(store.stored_model(ModelKind::Network, ids[4]).unwrap().unwrap().artifact, b"v4");
    // A rejection of a pruned version is still recorded: it activates nothing.
    decide(&store, ModelKind::Network, ids[0], DecisionOutcome::Rejected, "late").unwrap();
    assert_eq!(store.active_model(ModelKind::Network).unwrap().unwrap().info.id, once.id);
}

#[test]
fn provenance_data_must_be_an_object() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreSettings::default()).unwrap();
    let mut new = version(ModelKind::Static, "x");
    new.provenance.data = json!("a string");
    assert!(matches!(store.register_model(new), Err(StoreError::InvalidModel(_))));
}
