//! The model registry through the store's public API: versions with their origin and
//! evaluation, decisions with reasons and figures, the active version per kind, rollback and
//! pruning, on a real database that is reopened, on both backends; and on PostgreSQL, replicas
//! deciding at once.

use std::sync::Barrier;

use sentinel_store::{
    DecisionOutcome, ModelKind, NewDecision, NewModelVersion, Provenance, Store, StoreError,
};
use serde_json::json;

mod backends;
use backends::each_backend;

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
    each_backend(|fixture| {
        promotions_and_rejections(&fixture.open(), || fixture.open());
    });
}

fn promotions_and_rejections(store: &Store, reopen: impl Fn() -> Store) {
    assert_eq!(store.active_model(ModelKind::Static).unwrap(), None);
    assert_eq!(store.active_model_id(ModelKind::Static).unwrap(), None);

    let first = store.register_model(version(ModelKind::Static, "first")).unwrap();
    assert!(!first.active, "registered is not active");
    assert_eq!(first.provenance.data["seed"], 42);
    assert_eq!(first.sha256.len(), 64);
    assert_eq!(store.active_model(ModelKind::Static).unwrap(), None);
    let promoted =
        decide(store, ModelKind::Static, first.id, DecisionOutcome::Promoted, "no model in service").unwrap();
    assert_eq!(promoted.previous_id, None);

    let worse = store.register_model(version(ModelKind::Static, "worse")).unwrap();
    let rejected =
        decide(store, ModelKind::Static, worse.id, DecisionOutcome::Rejected, "worse on ROC AUC").unwrap();
    assert_eq!(rejected.previous_id, Some(first.id));
    let active = store.active_model(ModelKind::Static).unwrap().unwrap();
    assert_eq!((active.info.id, active.artifact.as_slice()), (first.id, b"first".as_slice()));

    let better = store.register_model(version(ModelKind::Static, "better")).unwrap();
    decide(store, ModelKind::Static, better.id, DecisionOutcome::Promoted, "not worse").unwrap();
    let active = store.active_model(ModelKind::Static).unwrap().unwrap();
    assert_eq!(
        (active.info.id, active.info.active, active.artifact.as_slice()),
        (better.id, true, b"better".as_slice())
    );
    assert_eq!(store.active_model_id(ModelKind::Static).unwrap(), Some(better.id));
    // Kinds are separate: no behaviour model is active, and a static version is not a network one.
    assert_eq!(store.active_model(ModelKind::Behaviour).unwrap(), None);
    assert_eq!(store.active_model_id(ModelKind::Behaviour).unwrap(), None);
    assert!(matches!(
        decide(store, ModelKind::Network, better.id, DecisionOutcome::Activated, "wrong kind"),
        Err(StoreError::NoSuchModelVersion { .. })
    ));

    // Everything survives a reopen: versions, the active one, the decisions in order.
    let store = &reopen();
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
        decide(store, ModelKind::Static, first.id, DecisionOutcome::Activated, "rollback").unwrap();
    assert_eq!(rollback.previous_id, Some(better.id));
    assert_eq!(store.active_model(ModelKind::Static).unwrap().unwrap().info.id, first.id);
}

#[test]
fn every_registration_is_a_version_and_pruning_keeps_the_active_and_the_newest() {
    each_backend(|fixture| registration_and_pruning(&fixture.open()));
}

fn registration_and_pruning(store: &Store) {
    // A retraining that gives the same bytes is still a version of its own, with the same hash.
    let again = store.register_model(version(ModelKind::Network, "same")).unwrap();
    let once = store.register_model(version(ModelKind::Network, "same")).unwrap();
    assert_ne!(once.id, again.id);
    assert_eq!(once.sha256, again.sha256);

    let ids: Vec<i64> = (0..5)
        .map(|index| store.register_model(version(ModelKind::Network, &format!("v{index}"))).unwrap().id)
        .collect();
    decide(store, ModelKind::Network, once.id, DecisionOutcome::Activated, "first").unwrap();
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
        decide(store, ModelKind::Network, ids[0], DecisionOutcome::Activated, "rollback"),
        Err(StoreError::ModelArtifactPruned { .. })
    ));
    assert_eq!(store.stored_model(ModelKind::Network, ids[4]).unwrap().unwrap().artifact, b"v4");
    // A rejection of a pruned version is still recorded: it activates nothing.
    decide(store, ModelKind::Network, ids[0], DecisionOutcome::Rejected, "late").unwrap();
    assert_eq!(store.active_model(ModelKind::Network).unwrap().unwrap().info.id, once.id);
}

#[test]
fn provenance_data_must_be_an_object() {
    each_backend(|fixture| {
        let store = fixture.open();
        let mut new = version(ModelKind::Static, "x");
        new.provenance.data = json!("a string");
        assert!(matches!(store.register_model(new), Err(StoreError::InvalidModel(_))));
        assert!(store.model_versions(ModelKind::Static).unwrap().is_empty());
    });
}

#[test]
fn replicas_deciding_at_once_keep_one_active_version_and_an_unbroken_chain_of_decisions() {
    each_backend(|fixture| {
        const REPLICAS: usize = 4;
        const ROUNDS: usize = 5;
        let stores: Vec<Store> = (0..REPLICAS).map(|_| fixture.open()).collect();
        let barrier = Barrier::new(REPLICAS);
        let promoted: usize = std::thread::scope(|scope| {
            let threads: Vec<_> = stores
                .iter()
                .enumerate()
                .map(|(replica, store)| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        let mut promoted = 0;
                        for round in 0..ROUNDS {
                            let new = version(ModelKind::Network, &format!("r{replica}-{round}"));
                            let info = store.register_model(new).unwrap();
                            barrier.wait();
                            // Every replica promotes its version at the same instant, while one
                            // prunes: a version pruned before its promotion is refused, never
                            // activated without its artifact.
                            match decide(
                                store,
                                ModelKind::Network,
                                info.id,
                                DecisionOutcome::Promoted,
                                "not worse",
                            ) {
                                Ok(_) => promoted += 1,
                                Err(StoreError::ModelArtifactPruned { .. }) => {}
                                Err(error) => panic!("{error}"),
                            }
                            if replica == 0 {
                                store.prune_model_versions(ModelKind::Network, 1).unwrap();
                            }
                        }
                        promoted
                    })
                })
                .collect();
            threads.into_iter().map(|thread| thread.join().unwrap()).sum()
        });
        // Each promotion replaced the version the one before it made active: no two saw the same
        // predecessor, and the last one is the version in service.
        let decisions = stores[1].model_decisions(ModelKind::Network).unwrap();
        assert_eq!(decisions.len(), promoted);
        assert!(promoted >= ROUNDS, "at least the first promotion of each round is not pruned");
        assert_eq!(decisions[0].previous_id, None);
        for pair in decisions.windows(2) {
            assert_eq!(pair[1].previous_id, Some(pair[0].version_id), "{decisions:#?}");
        }
        let last = decisions.last().unwrap().version_id;
        for store in &stores {
            assert_eq!(store.active_model_id(ModelKind::Network).unwrap(), Some(last));
        }
        let active = stores[2].active_model(ModelKind::Network).unwrap().unwrap();
        assert_eq!(active.info.id, last);
        let versions = stores[3].model_versions(ModelKind::Network).unwrap();
        assert_eq!(versions.iter().filter(|info| info.active).count(), 1);
    });
}
