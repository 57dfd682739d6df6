//! `sentinel serve` as a process: the start-up lines tests and benchmarks
//! parse, model reload on SIGHUP, graceful stop on SIGTERM, and durability of
//! what was acknowledged when the process is killed with SIGKILL.

use std::time::Duration;

use bytes::Bytes;
use sentinel_protocol::{Client, Request, Response, Sha256Hash};
use sentinel_server::STATIC_MODEL_PATH;
use sentinel_static::StaticModel;
use sentinel_store::{Store, StoreSettings};
use sentinel_testkit::serve_process::ServeProcess;
use sentinel_testkit::synthetic_pe;

const SENTINEL: &str = env!("CARGO_BIN_EXE_sentinel");

fn static_request(executable: &[u8]) -> Request {
    Request::new(sentinel_protocol::Command::StaticAnalyse, vec![Bytes::copy_from_slice(executable)])
}

#[tokio::test]
async fn sighup_reloads_the_models_and_sigterm_stops_the_server() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut served = ServeProcess::start(SENTINEL, data_dir.path());
    assert_eq!(served.status().await["models"]["static_source"], "builtin");

    let model_path = data_dir.path().join(STATIC_MODEL_PATH);
    std::fs::create_dir_all(model_path.parent().unwrap()).unwrap();
    StaticModel::builtin().save(&model_path).unwrap();
    served.signal("-HUP");
    let mut reloaded = serde_json::Value::Null;
    for _ in 0..100 {
        reloaded = served.status().await;
        if reloaded["reloads"]["succeeded"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reloaded["reloads"]["succeeded"], 1, "{reloaded}");
    assert_eq!(reloaded["models"]["static_source"], model_path.display().to_string());

    // Still serving after the reload; then a graceful stop with a connection open.
    let mut client = Client::connect(served.tcp).await.unwrap();
    let response = client.request(&static_request(&synthetic_pe(8192, 1))).await.unwrap();
    assert!(matches!(response, Response::Yes(_)), "{response:?}");
    served.signal("-TERM");
    assert!(served.wait_exit(Duration::from_secs(10)).success());
    assert!(client.receive().await.is_err(), "the connection is closed on shutdown");
}

#[tokio::test]
async fn what_was_answered_yes_survives_sigkill() {
    let data_dir = tempfile::tempdir().unwrap();
    let pe = synthetic_pe(64 * 1024, 42);
    let sha256 = Sha256Hash::of(&pe).to_hex();
    {
        let mut served = ServeProcess::start(SENTINEL, data_dir.path());
        let mut client = Client::connect(served.tcp).await.unwrap();
        let Response::Yes(scores) = client.request(&static_request(&pe)).await.unwrap() else {
            panic!("expected Yes");
        };
        // SIGKILL right after the answer: no chance to flush anything.
        served.signal("-KILL");
        served.wait_exit(Duration::from_secs(5));
        let store = Store::open(data_dir.path(), StoreSettings::default()).unwrap();
        let sample = store.sample(&sha256).unwrap().expect("the acknowledged sample is stored");
        assert_eq!(sample.size, pe.len() as u64);
        assert_eq!(store.read_sample(&sha256).unwrap().as_deref(), Some(&pe[..]));
        let verdicts = store.verdicts(&sha256).unwrap();
        assert_eq!(verdicts.len(), 1);
        assert!((verdicts[0].score as f32 - scores[1]).abs() < 1e-6);
    }
    // And a restarted server opens the same data and serves.
    let served = ServeProcess::start(SENTINEL, data_dir.path());
    let mut client = Client::connect(served.tcp).await.unwrap();
    assert!(matches!(client.request(&static_request(&pe)).await.unwrap(), Response::Yes(_)));
}

/// The server makes requests' samples durable in the sample journal and writes their vault
/// files after answering: samples answered just before a SIGKILL, many still only in the
/// journal, are in the vault once the store is opened again.
#[tokio::test]
async fn journaled_samples_answered_before_sigkill_reach_the_vault() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut served = ServeProcess::start(SENTINEL, data_dir.path());
    // Segments are made ready in the background after the first sample.
    let mut client = Client::connect(served.tcp).await.unwrap();
    assert!(matches!(
        client.request(&static_request(&synthetic_pe(256 * 1024, 1))).await.unwrap(),
        Response::Yes(_)
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let clients: Vec<_> = (0..4u64)
        .map(|client_index| {
            let tcp = served.tcp;
            tokio::spawn(async move {
                let mut client = Client::connect(tcp).await.unwrap();
                let mut answered = Vec::new();
                for index in 0..8u64 {
                    let pe = synthetic_pe(256 * 1024, 100 + client_index * 8 + index);
                    let response = client.request(&static_request(&pe)).await.unwrap();
                    assert!(matches!(response, Response::Yes(_)), "{response:?}");
                    answered.push(pe);
                }
                answered
            })
        })
        .collect();
    let mut answered = Vec::new();
    for client in clients {
        answered.extend(client.await.unwrap());
    }
    served.signal("-KILL");
    served.wait_exit(Duration::from_secs(5));
    let segments = std::fs::read_dir(data_dir.path().join("samples/journal")).unwrap();
    assert!(
        segments
            .filter_map(Result::ok)
            .any(|entry| entry.file_name().to_string_lossy().starts_with("segment-"))
    );

    let store = Store::open(data_dir.path(), StoreSettings::default()).unwrap();
    for pe in &answered {
        let sha256 = Sha256Hash::of(pe).to_hex();
        let sample = store.sample(&sha256).unwrap().expect("the acknowledged sample is recorded");
        assert!(
            sample.stored_path.as_ref().is_some_and(|path| path.is_file()),
            "{sha256} has its vault file"
        );
        assert_eq!(store.read_sample(&sha256).unwrap().as_deref(), Some(&pe[..]));
        assert_eq!(store.verdicts(&sha256).unwrap().len(), 1);
    }
}
