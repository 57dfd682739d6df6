//! `sentinel serve` wired to a CAPE sandbox from the command line and the
//! environment (`--cape-base-url`, `SENTINEL_CAPE_TOKEN`, `SENTINEL_SANDBOX__*`):
//! a dynamic analysis goes through the fake CAPE's task states, and the token
//! reaches CAPE but never the server's logs, even at debug level.

use bytes::Bytes;
use sentinel_protocol::{Client, Request, Response};
use sentinel_testkit::fake_cape::{FakeCape, SMALL_REPORT, TOKEN};
use sentinel_testkit::serve_process::ServeCommand;
use sentinel_testkit::synthetic_pe;

#[tokio::test]
async fn serve_runs_dynamic_analysis_through_the_configured_cape_without_logging_its_token() {
    let cape = FakeCape::new(SMALL_REPORT.as_bytes()).start().await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("serve.log");
    let served = ServeCommand::new(env!("CARGO_BIN_EXE_sentinel"), dir.path().join("data"))
        .args(["--cape-base-url", &cape.url])
        .env("SENTINEL_CAPE_TOKEN", TOKEN)
        .env("SENTINEL_SANDBOX__POLL_INTERVAL", "20ms")
        .log_to(&log_path)
        .start();

    let sample = synthetic_pe(4096, 1);
    let mut client = Client::connect(served.tcp).await.unwrap();
    let request = Request::new(sentinel_protocol::Command::DynamicAnalyse, vec![Bytes::from(sample.clone())]);
    let response = client.request(&request).await.unwrap();
    drop(served);

    assert!(matches!(response, Response::Yes(ref scores) if scores.len() == 2), "{response:?}");
    {
        let state = cape.state.lock().unwrap();
        assert_eq!((state.uploads.len(), state.refused), (1, 0), "one upload, the token accepted");
        assert_eq!(state.tasks[&1].polls, 4, "pending, running, completed, reported");
    }
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("CAPE sandbox configured"), "{log}");
    assert!(!log.contains(TOKEN), "the CAPE token leaked into the log");
}
