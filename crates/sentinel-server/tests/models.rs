//! Model replacement under load: a few hundred concurrent clients while the
//! models in service are swapped and reloaded over HTTP; no request may fail.
//! And a reload loads the model registry's active versions before any file.

mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use harness::{TestServer, request, status};
use sentinel_protocol::{Client, Command, Response};
use sentinel_server::{Models, STATIC_MODEL_PATH};
use sentinel_static::StaticModel;
use sentinel_store::{DecisionOutcome, ModelKind, NewDecision, NewModelVersion, Provenance};
use sentinel_testkit::synthetic_pe;

const CLIENTS: usize = 200;
const REQUESTS_PER_CLIENT: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_while_models_are_swapped_and_reloaded() {
    let server = TestServer::start(|settings| settings.analysis_queue_wait = Duration::from_secs(60)).await;
    // A model file in the data directory, so reloads really read and parse one.
    let model_path = server.data_path().join(STATIC_MODEL_PATH);
    std::fs::create_dir_all(model_path.parent().unwrap()).unwrap();
    StaticModel::builtin().save(&model_path).unwrap();

    let swapping = Arc::new(AtomicBool::new(true));
    let swapper = {
        let (models, swapping) = (Arc::clone(&server.models), Arc::clone(&swapping));
        tokio::spawn(async move {
            let mut swaps = 0u32;
            while swapping.load(Ordering::Relaxed) {
                models.replace(Models::with_static(StaticModel::builtin(), format!("swap {swaps}")).unwrap());
                swaps += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            swaps
        })
    };
    let reloader = {
        let (http, swapping) = (server.http, Arc::clone(&swapping));
        tokio::spawn(async move {
            let mut reloads = 0u32;
            while swapping.load(Ordering::Relaxed) {
                let (code, body) = harness::http(http, "POST", "/admin/reload").await;
                assert_eq!(code, 200, "{body}");
                reloads += 1;
            }
            reloads
        })
    };

    let samples: Arc<Vec<Vec<u8>>> = Arc::new((0..8).map(|seed| synthetic_pe(16 * 1024, seed)).collect());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|index| {
            let (address, samples) = (server.tcp, Arc::clone(&samples));
            tokio::spawn(async move {
                let mut client = Client::connect(address).await.unwrap();
                let mut verdicts = Vec::new();
                for round in 0..REQUESTS_PER_CLIENT {
                    let sample = &samples[(index + round) % samples.len()];
                    match client.request(&request(Command::StaticAnalyse, sample, None, None)).await.unwrap()
                    {
                        Response::Yes(scores) => verdicts.push(scores[0]),
                        other => panic!("client {index} request {round}: {other:?}"),
                    }
                }
                verdicts
            })
        })
        .collect();
    let mut answered = 0;
    for client in clients {
        answered += client.await.unwrap().len();
    }
    swapping.store(false, Ordering::Relaxed);
    let (swaps, reloads) = (swapper.await.unwrap(), reloader.await.unwrap());
    assert_eq!(answered, CLIENTS * REQUESTS_PER_CLIENT);
    assert!(swaps > 0 && reloads > 0, "swaps {swaps}, reloads {reloads}");

    let report = status(server.http).await;
    assert_eq!(report["requests"]["Static_analyse"]["yes"], (CLIENTS * REQUESTS_PER_CLIENT) as u64);
    assert_eq!(report["requests"]["Static_analyse"].as_object().unwrap().len(), 1, "only successes");
    assert_eq!(report["reloads"]["failed"], 0);
    server.stop().await;
}

#[tokio::test]
async fn a_broken_model_file_fails_the_reload_and_keeps_the_models_in_service() {
    let server = TestServer::start(|_| {}).await;
    let model_path = server.data_path().join(STATIC_MODEL_PATH);
    std::fs::create_dir_all(model_path.parent().unwrap()).unwrap();
    std::fs::write(&model_path, b"{ not a model").unwrap();
    let (code, body) = harness::http(server.http, "POST", "/admin/reload").await;
    assert_eq!(code, 500, "{body}");
    let report = status(server.http).await;
    assert_eq!(report["reloads"]["failed"], 1);
    assert_eq!(report["models"]["static_source"], "builtin");

    let mut client = Client::connect(server.tcp).await.unwrap();
    let pe = synthetic_pe(4096, 9);
    let response = client.request(&request(Command::StaticAnalyse, &pe, None, None)).await.unwrap();
    assert!(matches!(response, Response::Yes(_)));
    server.stop().await;
}

#[tokio::test]
async fn a_reload_puts_the_registrys_active_static_model_in_service_before_the_data_dir_file() {
    let server = TestServer::start(|_| {}).await;
    // A file in the data directory, as before the registry: used while the registry has none.
    let model_path = server.data_path().join(STATIC_MODEL_PATH);
    std::fs::create_dir_all(model_path.parent().unwrap()).unwrap();
    StaticModel::builtin().save(&model_path).unwrap();
    let (code, body) = harness::http(server.http, "POST", "/admin/reload").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(status(server.http).await["models"]["static_source"], model_path.display().to_string());

    let model = StaticModel::builtin();
    let registered = server
        .store
        .register_model(NewModelVersion {
            kind: ModelKind::Static,
            label: model.version().to_owned(),
            provenance: Provenance {
                trainer: "test".to_owned(),
                command: "registered by the test".to_owned(),
                data: serde_json::json!({}),
            },
            evaluation: None,
            artifact: model.to_json(),
        })
        .unwrap();
    // Registered is not active: the file stays in service.
    harness::http(server.http, "POST", "/admin/reload").await;
    assert_eq!(status(server.http).await["models"]["static_source"], model_path.display().to_string());

    server
        .store
        .decide_model(NewDecision {
            kind: ModelKind::Static,
            version_id: registered.id,
            outcome: DecisionOutcome::Promoted,
            reason: "test".to_owned(),
            figures: serde_json::Value::Null,
        })
        .unwrap();
    let (code, body) = harness::http(server.http, "POST", "/admin/reload").await;
    assert_eq!(code, 200, "{body}");
    let report = status(server.http).await;
    assert_eq!(report["models"]["static_source"], format!("registry version {}", registered.id));
    assert_eq!(report["models"]["static_version"], model.version());
    server.stop().await;
}
