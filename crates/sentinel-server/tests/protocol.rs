//! End-to-end behaviour of the protocol server on real sockets: every
//! command, the failures a client can cause, and the limits that protect the
//! server from slow, idle and oversized clients.

mod harness;

use std::time::Duration;

use harness::{TestServer, detail_of, request, sha256_hex, status};
use sentinel_protocol::{Client, Command, Reason, Response, STATUS_NO, encode_request};
use sentinel_testkit::synthetic_pe;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes; returns what it sent. Fails if the server
/// keeps the connection open longer than `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut received))
        .await
        .expect("the server should have closed the connection")
        .expect("read");
    received
}

#[tokio::test]
async fn static_analysis_answers_yes_and_stores_sample_and_verdict() {
    let server = TestServer::start(|_| {}).await;
    let pe = synthetic_pe(10 * 1024, 1);
    let sha256 = sha256_hex(&pe);
    let mut client = Client::connect(server.tcp).await.unwrap();
    let Response::Yes(scores) =
        client.request(&request(Command::StaticAnalyse, &pe, None, None)).await.unwrap()
    else {
        panic!("expected Yes");
    };
    assert_eq!(scores.len(), 2, "y and the static score");
    assert_eq!(scores[0], scores[1], "with one step y is the static score");
    assert!((0.0..=1.0).contains(&scores[0]));

    // With the hash (upper case) and an API key, the same file on the same connection.
    let upper = sha256.to_uppercase();
    let response =
        client.request(&request(Command::StaticAnalyse, &pe, Some(&upper), Some("key"))).await.unwrap();
    assert_eq!(response, Response::Yes(scores.clone()));

    let sample = server.store.sample(&sha256).unwrap().expect("the sample is stored");
    assert_eq!(sample.size, pe.len() as u64);
    let verdicts = server.store.verdicts(&sha256).unwrap();
    assert_eq!(verdicts.len(), 2);
    assert_eq!((verdicts[0].analysis.as_str(), verdicts[0].client.as_str()), ("static", "127.0.0.1"));
    assert!((verdicts[0].score as f32 - scores[1]).abs() < 1e-6);
    server.stop().await;
}

/// The value of the series `name` (with its labels, as exposed) in `metrics`.
fn metric(metrics: &str, name: &str) -> f64 {
    let line = metrics.lines().find(|line| line.starts_with(&format!("{name} "))).unwrap_or_else(|| {
        panic!("no {name} in {metrics}");
    });
    line[name.len() + 1..].parse().unwrap()
}

#[tokio::test]
async fn each_stage_of_a_request_is_timed_in_the_metrics_from_the_frames_first_byte() {
    let server = TestServer::start(|_| {}).await;
    let pe = synthetic_pe(64 * 1024, 3);
    let mut client = Client::connect(server.tcp).await.unwrap();
    let answered = client.request(&request(Command::StaticAnalyse, &pe, None, None)).await.unwrap();
    assert!(matches!(answered, Response::Yes(_)), "{answered:?}");

    // A second request whose frame arrives in two parts 300 ms apart: its receive stage and
    // the whole request count from the first part.
    let mut frame = bytes::BytesMut::new();
    encode_request(&request(Command::StaticAnalyse, &synthetic_pe(64 * 1024, 4), None, None), &mut frame);
    let mut stream = TcpStream::connect(server.tcp).await.unwrap();
    stream.write_all(&frame[..1000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(&frame[1000..]).await.unwrap();
    let mut status = [0u8; 4];
    stream.read_exact(&mut status).await.unwrap();
    assert_ne!(u32::from_le_bytes(status), STATUS_NO, "the trickled request is answered");

    let (code, metrics) = harness::http(server.http, "GET", "/metrics").await;
    assert_eq!(code, 200);
    for stage in ["receive", "hash", "sample_write", "static", "list", "record", "answer"] {
        let count = metric(&metrics, &format!("malware_request_stage_seconds_count{{stage=\"{stage}\"}}"));
        assert_eq!(count, 2.0, "{stage} observed once per request");
    }
    let receive = metric(&metrics, "malware_request_stage_seconds_sum{stage=\"receive\"}");
    assert!((0.3..5.0).contains(&receive), "receive counts from the first byte: {receive} s");
    let command = "{command=\"Static_analyse\"}";
    assert_eq!(metric(&metrics, &format!("malware_request_seconds_count{command}")), 2.0);
    let whole = metric(&metrics, &format!("malware_request_seconds_sum{command}"));
    assert!(whole >= receive, "a request takes at least its receive stage: {whole} s, {receive} s");
    assert!(!metrics.contains("stage=\"virustotal\""), "no stage a request did not run");
    server.stop().await;
}

#[tokio::test]
async fn commands_without_their_analysis_answer_a_plain_no_or_unavailable_with_the_failing_step() {
    let server = TestServer::start(|_| {}).await;
    let pe = synthetic_pe(4096, 2);
    let sha256 = sha256_hex(&pe);

    // Plain connection: exactly the 4 bytes of No, and the connection stays usable.
    let mut raw = TcpStream::connect(server.tcp).await.unwrap();
    for command in [Command::DynamicAnalyse, Command::VtAnalyse, Command::AllAnalyse] {
        let mut frame = bytes::BytesMut::new();
        encode_request(&request(command, &pe, Some(&sha256), Some("key")), &mut frame);
        raw.write_all(&frame).await.unwrap();
        let mut status = [0u8; 4];
        raw.read_exact(&mut status).await.unwrap();
        assert_eq!(u32::from_le_bytes(status), STATUS_NO, "{command}");
    }

    let mut client = Client::connect(server.tcp).await.unwrap();
    assert!(client.enable_error_detail().await.unwrap());
    let cases = [
        (Command::DynamicAnalyse, "dynamic"),
        (Command::VtAnalyse, "virustotal"),
        (Command::StaticAnalyseWithVt, "virustotal"),
        (Command::DynamicAnalyseWithVt, "dynamic"),
        (Command::AllAnalyse, "dynamic"),
    ];
    for (command, step) in cases {
        let response = client.request(&request(command, &pe, Some(&sha256), Some("key"))).await.unwrap();
        let (reason, failed_step, _) = detail_of(response);
        assert_eq!((reason, failed_step), (Reason::Unavailable, Some(step.to_owned())), "{command}");
    }
    // Command 3 with the hash only is well formed: it fails for being unavailable, not for the empty executable.
    let response =
        client.request(&request(Command::VtAnalyse, b"", Some(&sha256), Some("key"))).await.unwrap();
    assert_eq!(detail_of(response).0, Reason::Unavailable);
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_get_their_reason_and_the_connection_goes_on() {
    let server = TestServer::start(|_| {}).await;
    let pe = synthetic_pe(4096, 3);
    let mut client = Client::connect(server.tcp).await.unwrap();
    assert!(client.enable_error_detail().await.unwrap());

    let not_pe = client.request(&request(Command::StaticAnalyse, b"just text", None, None)).await.unwrap();
    let (reason, step, _) = detail_of(not_pe);
    assert_eq!((reason, step), (Reason::NotPe, Some("static".to_owned())));
    let other_hash = sha256_hex(b"something else");
    let mismatch =
        client.request(&request(Command::StaticAnalyse, &pe, Some(&other_hash), None)).await.unwrap();
    assert_eq!(detail_of(mismatch).0, Reason::HashMismatch);
    let bad_hash = client.request(&request(Command::StaticAnalyse, &pe, Some("xyz"), None)).await.unwrap();
    assert_eq!(detail_of(bad_hash).0, Reason::Malformed);
    let no_executable = client.request(&request(Command::StaticAnalyse, b"", None, None)).await.unwrap();
    assert_eq!(detail_of(no_executable).0, Reason::MissingField);
    let bad_key = client.request(&request(Command::VtAnalyse, &pe, None, Some("two words"))).await.unwrap();
    assert_eq!(detail_of(bad_key).0, Reason::Malformed);

    // An unknown command is well framed: No, and the next request is served.
    let mut raw = TcpStream::connect(server.tcp).await.unwrap();
    raw.write_all(b"\x07\x00\x00\x00\x01\x00\x00\x00M_END").await.unwrap();
    let mut status = [0u8; 4];
    raw.read_exact(&mut status).await.unwrap();
    assert_eq!(u32::from_le_bytes(status), STATUS_NO);
    let mut frame = bytes::BytesMut::new();
    encode_request(&request(Command::StaticAnalyse, &pe, None, None), &mut frame);
    raw.write_all(&frame).await.unwrap();
    raw.read_exact(&mut status).await.unwrap();
    assert_eq!(u32::from_le_bytes(status), sentinel_protocol::STATUS_YES);

    // The mismatching sample was not stored; the good one is. The one that is not a PE is
    // recorded all the same (its row committed before the No), without a verdict.
    assert!(server.store.sample(&other_hash).unwrap().is_none());
    let text_hash = sha256_hex(b"just text");
    assert!(server.store.sample(&text_hash).unwrap().unwrap().stored_path.is_some());
    assert_eq!(server.store.read_sample(&text_hash).unwrap().as_deref(), Some(&b"just text"[..]));
    assert!(server.store.verdicts(&text_hash).unwrap().is_empty());
    let counts = status_counts(&server).await;
    assert_eq!(counts["Static_analyse"]["not_pe"], 1);
    assert_eq!(counts["Static_analyse"]["hash_mismatch"], 1);
    assert_eq!(counts["invalid_frame"]["unknown_command"], 1);
    server.stop().await;
}

async fn status_counts(server: &TestServer) -> serde_json::Value {
    status(server.http).await["requests"].clone()
}

#[tokio::test]
async fn an_oversized_field_is_refused_from_its_header_without_waiting_for_the_body() {
    let server = TestServer::start(|settings| settings.frame_timeout = Duration::from_secs(30)).await;
    let mut raw = TcpStream::connect(server.tcp).await.unwrap();
    // Command 1, then a length one byte over 64 MiB, and no body at all.
    let too_long = (64u32 << 20) + 1;
    raw.write_all(&[&1u32.to_le_bytes()[..], &too_long.to_le_bytes()].concat()).await.unwrap();
    // Answered and closed long before the 30 s frame timeout could fire.
    let received = read_until_closed(&mut raw, Duration::from_secs(5)).await;
    assert_eq!(received, STATUS_NO.to_le_bytes());

    // With details on, the reason is too_large; a bad terminator loses the framing the same way.
    let mut client = Client::connect(server.tcp).await.unwrap();
    assert!(client.enable_error_detail().await.unwrap());
    let mut huge = request(Command::StaticAnalyse, &[], None, None);
    huge = sentinel_protocol::Request::new(huge.command(), vec![bytes::Bytes::from(vec![0u8; 16]); 17]);
    assert_eq!(detail_of(client.request(&huge).await.unwrap()).0, Reason::TooLarge);
    assert!(client.receive().await.is_err(), "the connection is closed after framing loss");

    let mut raw = TcpStream::connect(server.tcp).await.unwrap();
    raw.write_all(b"\x01\x00\x00\x00\x01\x00\x00\x00M_end").await.unwrap();
    assert_eq!(read_until_closed(&mut raw, Duration::from_secs(5)).await, STATUS_NO.to_le_bytes());
    server.stop().await;
}

#[tokio::test]
async fn a_trickling_client_is_cut_by_the_frame_timeout() {
    let server = TestServer::start(|settings| {
        settings.frame_timeout = Duration::from_millis(300);
        settings.idle_timeout = Duration::from_secs(30);
    })
    .await;
    let mut raw = TcpStream::connect(server.tcp).await.unwrap();
    raw.write_all(&1u32.to_le_bytes()).await.unwrap();
    raw.write_all(&1000u32.to_le_bytes()).await.unwrap();
    // One byte every 50 ms would take 50 s for the body; the frame timeout cuts it.
    let trickle = async {
        for _ in 0..1000 {
            if raw.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), trickle).await;
    let received = read_until_closed(&mut raw, Duration::from_secs(2)).await;
    assert_eq!(received, STATUS_NO.to_le_bytes());
    assert_eq!(status_counts(&server).await["invalid_frame"]["timeout"], 1);
    server.stop().await;
}

#[tokio::test]
async fn an_idle_client_is_closed_without_an_answer() {
    let server = TestServer::start(|settings| settings.idle_timeout = Duration::from_millis(200)).await;
    let mut client = Client::connect(server.tcp).await.unwrap();
    // Activity first: the idle clock runs between requests, not from the connection.
    assert!(client.enable_error_detail().await.unwrap());
    let mut raw = TcpStream::connect(server.tcp).await.unwrap();
    assert!(read_until_closed(&mut raw, Duration::from_secs(3)).await.is_empty());
    assert!(matches!(client.receive().await, Err(sentinel_protocol::ClientError::Closed)));
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let server = TestServer::start(|settings| settings.max_connections = 2).await;
    let mut first = Client::connect(server.tcp).await.unwrap();
    let mut second = Client::connect(server.tcp).await.unwrap();
    assert!(first.enable_error_detail().await.unwrap());
    assert!(second.enable_error_detail().await.unwrap());
    let mut third = TcpStream::connect(server.tcp).await.unwrap();
    assert!(read_until_closed(&mut third, Duration::from_secs(3)).await.is_empty());
    let connections = status(server.http).await["connections"].clone();
    assert_eq!((connections["open"].as_u64(), connections["refused"].as_u64()), (Some(2), Some(1)));
    drop(first);
    // A slot frees when a connection ends.
    let mut fourth = Client::connect(server.tcp).await.unwrap();
    let mut accepted = false;
    for _ in 0..50 {
        if fourth.enable_error_detail().await.is_ok() {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        fourth = Client::connect(server.tcp).await.unwrap();
    }
    assert!(accepted);
    server.stop().await;
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let server = TestServer::start(|_| {}).await;
    assert_eq!(harness::http(server.http, "GET", "/healthz").await.0, 200);
    let (code, body) = harness::http(server.http, "GET", "/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"ready\":true"), "{body}");
    assert_eq!(harness::http(server.http, "GET", "/nowhere").await.0, 404);
    server.stop().await;
}
