//! Dynamic analysis through the TCP protocol: behaviour reports sent by the
//! client in field [3], and the CAPE sandbox path against a fake CAPE v2 on
//! 127.0.0.1 (task states, delays, failures, a task that never ends) serving
//! the real fixture reports.

mod harness;

use std::time::Duration;

use bytes::Bytes;
use harness::{TestServer, detail_of, sha256_hex, status};
use sentinel_behaviour::{BehaviourModel, CapeLimits, parse_behaviour_report};
use sentinel_protocol::{Client, Command, Reason, Request, Response};
use sentinel_sandbox::{ApiToken, SandboxSettings};
use sentinel_server::BEHAVIOUR_MODEL_PATH;
use sentinel_testkit::cape_fixtures::fixture_reports;
use sentinel_testkit::fake_cape::{FakeCape, Plan, SMALL_REPORT, TOKEN};
use sentinel_testkit::synthetic_pe;

/// Client settings for a fake CAPE at `url`: its token, and short polls and timeouts.
fn client_settings(url: &str) -> SandboxSettings {
    SandboxSettings {
        base_url: url.to_owned(),
        token: ApiToken::new(TOKEN),
        poll_interval: Duration::from_millis(20),
        analysis_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(5),
        ..SandboxSettings::default()
    }
}

/// The real reports, or the small hand-made one when ../shared/data is absent.
fn reports() -> Vec<Vec<u8>> {
    let real: Vec<Vec<u8>> = fixture_reports().into_iter().map(|(_, bytes)| bytes).collect();
    if real.is_empty() { vec![SMALL_REPORT.as_bytes().to_vec()] } else { real }
}

/// What the built-in model says about a report.
fn expected_score(report: &[u8]) -> f32 {
    let behaviour = parse_behaviour_report(report, &CapeLimits::default()).unwrap();
    BehaviourModel::builtin().unwrap().probability(&behaviour.sequence) as f32
}

/// A request with the executable, its hash, an empty API key and `report` as field [3].
fn with_report(command: Command, executable: &[u8], report: &[u8]) -> Request {
    let fields = vec![
        Bytes::copy_from_slice(executable),
        Bytes::from(sha256_hex(executable)),
        Bytes::new(),
        Bytes::copy_from_slice(report),
    ];
    Request::new(command, fields)
}

fn without_report(command: Command, executable: &[u8]) -> Request {
    with_report(command, executable, b"")
}

#[tokio::test]
async fn a_report_sent_in_field_3_is_scored_without_a_sandbox() {
    let server = TestServer::start(|_| {}).await;
    let sample = synthetic_pe(4096, 1);
    // A legacy client (no error detail) gets a plain Yes: y, then the dynamic score.
    let mut client = Client::connect(server.tcp).await.unwrap();
    for report in reports() {
        let response = client.request(&with_report(Command::DynamicAnalyse, &sample, &report)).await.unwrap();
        let expected = expected_score(&report);
        assert_eq!(response, Response::Yes(vec![expected, expected]));
    }
    // The compact form: a JSON list of API names in call order.
    let list = br#"["NtCreateFile", "NtWriteFile", "RegSetValueExW", "CreateProcessInternalW"]"#;
    let response = client.request(&with_report(Command::DynamicAnalyse, &sample, list)).await.unwrap();
    assert_eq!(response, Response::Yes(vec![expected_score(list); 2]));

    let verdicts = server.store.verdicts(&sha256_hex(&sample)).unwrap();
    assert!(verdicts.iter().all(|v| v.analysis == "dynamic"), "{verdicts:?}");
    assert_eq!(verdicts[0].model_version, BehaviourModel::builtin().unwrap().version());
    assert!(server.store.sample(&sha256_hex(&sample)).unwrap().is_some());
    server.stop().await;
}

#[tokio::test]
async fn hostile_or_empty_reports_are_refused_with_a_reason_and_the_connection_goes_on() {
    let server = TestServer::start(|_| {}).await;
    let sample = synthetic_pe(4096, 2);
    let mut client = Client::connect(server.tcp).await.unwrap();
    assert!(client.enable_error_detail().await.unwrap());
    let nested =
        format!(r#"{{"behavior": {{"processes": [{{"calls": [{{"arguments": {}"#, "[".repeat(100_000));
    let cases: [(&[u8], &str); 5] = [
        (b"not json at all", "not JSON"),
        (nested.as_bytes(), "nested"),
        (br#"{"error": true, "error_value": "Task is still being analyzed"}"#, "CAPE error answer"),
        (br#"{"info": {"id": 3}}"#, "no behaviour section"),
        (b"[]", "empty list"),
    ];
    for (report, case) in cases {
        let response = client.request(&with_report(Command::DynamicAnalyse, &sample, report)).await.unwrap();
        let (reason, step, message) = detail_of(response);
        assert_eq!((reason, step.as_deref()), (Reason::Malformed, Some("dynamic")), "{case}: {message}");
    }
    let good = client.request(&with_report(Command::DynamicAnalyse, &sample, SMALL_REPORT.as_bytes())).await;
    assert!(matches!(good.unwrap(), Response::Yes(_)));
    server.stop().await;
}

#[tokio::test]
async fn without_sandbox_or_report_dynamic_is_unavailable_before_any_work() {
    let server = TestServer::start(|_| {}).await;
    let sample = synthetic_pe(4096, 3);
    let mut client = Client::connect(server.tcp).await.unwrap();
    assert!(client.enable_error_detail().await.unwrap());
    for command in [Command::DynamicAnalyse, Command::DynamicAnalyseWithVt, Command::AllAnalyse] {
        let (reason, step, message) =
            detail_of(client.request(&without_report(command, &sample)).await.unwrap());
        assert_eq!((reason, step.as_deref()), (Reason::Unavailable, Some("dynamic")), "{command}");
        assert!(message.contains("field [3]"), "{message}");
    }
    // Command 6 said which step could not run without doing the static step first.
    assert!(server.store.sample(&sha256_hex(&sample)).unwrap().is_none());
    assert!(server.store.verdicts(&sha256_hex(&sample)).unwrap().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn the_sandbox_runs_the_sample_through_the_task_states_and_scores_the_real_report() {
    for report in reports() {
        let cape = FakeCape::new(&report).delay(Duration::from_millis(10)).start().await;
        let server = TestServer::start_with_sandbox(|_| {}, client_settings(&cape.url)).await;
        let sample = synthetic_pe(8192, 4);
        let sha256 = sha256_hex(&sample);
        let mut client = Client::connect(server.tcp).await.unwrap();
        let response = client.request(&without_report(Command::DynamicAnalyse, &sample)).await.unwrap();
        let expected = expected_score(&report);
        assert_eq!(response, Response::Yes(vec![expected, expected]));
        {
            let state = cape.state.lock().unwrap();
            assert_eq!(state.uploads, [(format!("{sha256}.exe"), sample.len())]);
            assert_eq!(state.tasks[&1].polls, 4, "pending, running, completed, reported");
            assert_eq!(state.refused, 0);
        }
        // A report sent by the client wins: no second task.
        let response = client
            .request(&with_report(Command::DynamicAnalyse, &sample, SMALL_REPORT.as_bytes()))
            .await
            .unwrap();
        assert!(matches!(response, Response::Yes(_)));
        assert_eq!(cape.state.lock().unwrap().tasks.len(), 1);

        let counts = status(server.http).await;
        assert_eq!(counts["requests"]["Dynamic_analyse"]["yes"], 2);
        server.stop().await;
    }
}

#[tokio::test]
async fn command_6_checks_every_step_before_submitting_anything() {
    let cape = FakeCape::new(SMALL_REPORT.as_bytes()).start().await;
    let server = TestServer::start_with_sandbox(|_| {}, client_settings(&cape.url)).await;
    let sample = synthetic_pe(4096, 5);
    let mut client = Client::connect(server.tcp).await.unwrap();
    assert!(client.enable_error_detail().await.unwrap());
    // No VirusTotal on this server: command 6 names that step, and neither the
    // static step nor the sandbox ran.
    let (reason, step, _) =
        detail_of(client.request(&without_report(Command::AllAnalyse, &sample)).await.unwrap());
    assert_eq!((reason, step.as_deref()), (Reason::Unavailable, Some("virustotal")));
    assert!(cape.state.lock().unwrap().uploads.is_empty());
    assert!(server.store.sample(&sha256_hex(&sample)).unwrap().is_none());
    server.stop().await;
}

#[tokio::test]
async fn sandbox_failures_map_to_protocol_reasons() {
    let sample = synthetic_pe(4096, 6);
    let small = SMALL_REPORT.as_bytes();
    // A socket bound but never listening: connections are refused, and the port stays ours
    // (a dropped listener's port could be taken by another test's server meanwhile).
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let unreachable = format!("http://127.0.0.1:{}", closed.local_addr().unwrap().port());
    let failing = FakeCape::new(small).plan(Plan::Fails).start().await;
    let never_ends = FakeCape::new(small).plan(Plan::Slow).start().await;
    let broken = FakeCape::new(small).failing_submissions().start().await;
    let truncated = FakeCape::new(small).plan(Plan::Malformed).start().await;
    let normal = FakeCape::new(small).start().await;
    let cases: Vec<(SandboxSettings, Reason, &str)> = vec![
        (client_settings(&failing.url), Reason::AnalysisFailed, "failed_analysis"),
        (
            SandboxSettings { analysis_timeout: Duration::from_secs(1), ..client_settings(&never_ends.url) },
            Reason::Timeout,
            "no report after 1 s",
        ),
        (client_settings(&broken.url), Reason::Unavailable, "HTTP 500"),
        (client_settings(&truncated.url), Reason::AnalysisFailed, "unusable report"),
        (client_settings(&unreachable), Reason::Unavailable, "unreachable"),
        (
            SandboxSettings { token: ApiToken::new("wrong-secret"), ..client_settings(&normal.url) },
            Reason::Unavailable,
            "token",
        ),
        (
            SandboxSettings { max_upload_bytes: 100, ..client_settings(&normal.url) },
            Reason::TooLarge,
            "upload limit",
        ),
        (
            SandboxSettings { max_report_bytes: 100, ..client_settings(&normal.url) },
            Reason::AnalysisFailed,
            "larger than 100 bytes",
        ),
    ];
    for (settings, expected, needle) in cases {
        let server = TestServer::start_with_sandbox(|_| {}, settings).await;
        let mut client = Client::connect(server.tcp).await.unwrap();
        assert!(client.enable_error_detail().await.unwrap());
        let started = std::time::Instant::now();
        let (reason, step, message) =
            detail_of(client.request(&without_report(Command::DynamicAnalyse, &sample)).await.unwrap());
        assert_eq!((reason, step.as_deref()), (expected, Some("dynamic")), "{needle}: {message}");
        assert!(message.contains(needle), "{needle}: {message}");
        assert!(!message.contains("wrong-secret") && !message.contains(TOKEN), "{message}");
        assert!(started.elapsed() < Duration::from_secs(8), "{needle}");
        // The connection goes on after a failure.
        let again = client.request(&with_report(Command::DynamicAnalyse, &sample, small)).await.unwrap();
        assert!(matches!(again, Response::Yes(_)), "{needle}");
        server.stop().await;
    }
    assert_eq!(normal.state.lock().unwrap().refused, 1, "the wrong token was refused once");
}

#[tokio::test]
async fn sandbox_runs_get_their_own_time_and_are_limited_in_flight() {
    // Each CAPE answer takes 150 ms: an analysis (submit, 4 polls, report) takes
    // about a second, over the server's 500 ms analysis timeout, which the
    // sandbox's own timeout extends.
    let cape = FakeCape::new(SMALL_REPORT.as_bytes()).delay(Duration::from_millis(150)).start().await;
    let settings = SandboxSettings {
        max_in_flight: 1,
        analysis_timeout: Duration::from_secs(20),
        ..client_settings(&cape.url)
    };
    let server =
        TestServer::start_with_sandbox(|s| s.analysis_timeout = Duration::from_millis(500), settings).await;
    let runs: Vec<_> = (0..3)
        .map(|seed| {
            let address = server.tcp;
            tokio::spawn(async move {
                let sample = synthetic_pe(4096, 10 + seed);
                let mut client = Client::connect(address).await.unwrap();
                client.request(&without_report(Command::DynamicAnalyse, &sample)).await.unwrap()
            })
        })
        .collect();
    for run in runs {
        assert!(matches!(run.await.unwrap(), Response::Yes(_)));
    }
    let seen = {
        let state = cape.state.lock().unwrap();
        (state.tasks.len(), state.max_active)
    };
    assert_eq!(seen, (3, 1));
    server.stop().await;
}

#[tokio::test]
async fn status_reports_the_behaviour_model_and_reloads_pick_up_the_data_directory_file() {
    let server = TestServer::start(|_| {}).await;
    let builtin = BehaviourModel::builtin().unwrap();
    let report = status(server.http).await;
    assert_eq!(report["models"]["behaviour_version"], builtin.version());
    assert_eq!(report["models"]["behaviour_source"], "builtin");

    let path = server.data_path().join(BEHAVIOUR_MODEL_PATH);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    builtin.save(&path).unwrap();
    let (code, body) = harness::http(server.http, "POST", "/admin/reload").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(status(server.http).await["models"]["behaviour_source"], path.display().to_string());

    // A broken file fails the reload and leaves the models in service.
    std::fs::write(&path, b"{\"format\": \"something else\"").unwrap();
    let (code, body) = harness::http(server.http, "POST", "/admin/reload").await;
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("behaviour model"), "{body}");
    assert_eq!(status(server.http).await["models"]["behaviour_source"], path.display().to_string());
    server.stop().await;
}
