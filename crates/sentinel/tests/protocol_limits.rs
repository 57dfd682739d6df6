//! The protocol port's limits in `sentinel serve`, from real sockets on loopback addresses
//! (127.0.0.2, 127.0.0.3… are distinct clients): connections per client, the first-byte
//! timeout, the request rate per client (`rate_limited`), the memory budget of frames being
//! read (`busy`), the allow-list of client networks, and the refusal to expose the plain port
//! without one. Clients that did not opt in to error details see only the 4-byte `No`.

mod protocol_peer;

use std::process::Stdio;
use std::time::{Duration, Instant};

use protocol_peer::{
    SENTINEL, closed_silently, connect_from, exchange, metric, options_request, read_response, request_bytes,
    rss_kib, static_request,
};
use sentinel_protocol::{Client, Limits, Reason, Response, STATUS_NO, decode_response};
use sentinel_testkit::serve_process::{ServeCommand, TestProcess};
use sentinel_testkit::synthetic_pe;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Waits until the metric series reaches `expected`; panics after 10 s.
async fn metric_reaches(http: std::net::SocketAddr, series: &str, expected: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let value = metric(http, series).await;
        if value == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{series} is {value}, expected {expected}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn idle_connections_of_one_address_do_not_stop_another_address() {
    let data_dir = tempfile::tempdir().unwrap();
    let served = ServeCommand::new(SENTINEL, data_dir.path()).start();
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(connect_from(2, served.tcp).await.unwrap());
    }
    let mut other = Client::from_stream(connect_from(3, served.tcp).await.unwrap());
    let response = other.request(&static_request(&synthetic_pe(8192, 3))).await.unwrap();
    assert!(matches!(response, Response::Yes(_)), "{response:?}");
    // 127.0.0.2 holds its 64 connections (the default cap); the other 236 were closed at accept.
    metric_reaches(served.http, "malware_refusals_total{reason=\"max_connections_per_client\"}", 236.0).await;
    assert_eq!(metric(served.http, "malware_connections_open").await, 65.0);
}

#[tokio::test]
async fn a_connection_that_sends_nothing_frees_its_slot_after_the_first_byte_timeout() {
    let data_dir = tempfile::tempdir().unwrap();
    let served = ServeCommand::new(SENTINEL, data_dir.path())
        .config("[server]\nmax_connections_per_client = 2\nfirst_byte_timeout = \"300ms\"\n")
        .start();
    let mut first = connect_from(2, served.tcp).await.unwrap();
    let mut second = connect_from(2, served.tcp).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = connect_from(2, served.tcp).await.unwrap();
    assert!(closed_silently(&mut third, Duration::from_millis(250)).await, "over the cap: closed at once");
    let started = Instant::now();
    assert!(closed_silently(&mut first, Duration::from_secs(5)).await);
    assert!(closed_silently(&mut second, Duration::from_secs(5)).await);
    assert!(started.elapsed() < Duration::from_secs(2), "closed after {:?}", started.elapsed());
    // The slots are free again; a client that speaks is served however long it then idles.
    let mut client = Client::from_stream(connect_from(2, served.tcp).await.unwrap());
    assert!(client.enable_error_detail().await.unwrap());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let response = client.request(&static_request(&synthetic_pe(8192, 4))).await.unwrap();
    assert!(matches!(response, Response::Yes(_)), "{response:?}");
    assert_eq!(metric(served.http, "malware_refusals_total{reason=\"first_byte_timeout\"}").await, 2.0);
}

#[tokio::test]
async fn a_client_over_its_request_rate_is_answered_rate_limited_and_may_go_on_later() {
    let data_dir = tempfile::tempdir().unwrap();
    let served = ServeCommand::new(SENTINEL, data_dir.path())
        .config("[server]\nclient_request_rate = 1\nclient_request_burst = 2\n")
        .start();
    let pe = synthetic_pe(8192, 5);
    let mut client = Client::connect(served.tcp).await.unwrap();
    assert!(client.enable_error_detail().await.unwrap(), "the options request is not counted");
    for _ in 0..2 {
        assert!(matches!(client.request(&static_request(&pe)).await.unwrap(), Response::Yes(_)));
    }
    let Response::No(Some(detail)) = client.request(&static_request(&pe)).await.unwrap() else {
        panic!("expected a detailed No");
    };
    assert_eq!(detail.reason(), Some(Reason::RateLimited));
    assert_eq!((detail.code(), detail.name()), (15, "rate_limited"));
    assert!(detail.message().contains("rate"), "{}", detail.message());

    // A legacy client of the same address: the bare 4-byte No, and the connection stays usable.
    let mut legacy = TcpStream::connect(served.tcp).await.unwrap();
    let request = request_bytes(&static_request(&pe));
    assert_eq!(exchange(&mut legacy, &request, false).await, STATUS_NO.to_le_bytes());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answer = exchange(&mut legacy, &request, false).await;
    assert_eq!(answer[..4], 1029u32.to_le_bytes(), "a Yes once a token is back");
    assert_eq!(metric(served.http, "malware_refusals_total{reason=\"client_request_rate\"}").await, 2.0);
}

#[tokio::test]
async fn connections_from_outside_allowed_clients_are_closed_at_accept() {
    let data_dir = tempfile::tempdir().unwrap();
    let served = ServeCommand::new(SENTINEL, data_dir.path())
        .config("[server]\nallowed_clients = [\"127.0.0.3/32\"]\n")
        .start();
    let mut outsider = connect_from(2, served.tcp).await.unwrap();
    let _ = outsider.write_all(&request_bytes(&static_request(b"MZ"))).await;
    assert!(closed_silently(&mut outsider, Duration::from_secs(2)).await, "no answer to an outsider");
    let mut insider = Client::from_stream(connect_from(3, served.tcp).await.unwrap());
    let response = insider.request(&static_request(&synthetic_pe(8192, 6))).await.unwrap();
    assert!(matches!(response, Response::Yes(_)), "{response:?}");
    assert_eq!(metric(served.http, "malware_refusals_total{reason=\"not_allowed\"}").await, 1.0);
}

#[test]
fn serve_refuses_a_plain_port_off_loopback_without_allowed_clients() {
    let data_dir = tempfile::tempdir().unwrap();
    let log = data_dir.path().join("stderr.log");
    let mut command = std::process::Command::new(SENTINEL);
    command
        .args(["serve", "--tcp-listen", "0.0.0.0:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut process = TestProcess::spawn(&mut command);
    assert!(!process.wait_exit(Duration::from_secs(20)).success());
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("allowed_clients") && said.contains("0.0.0.0"), "{said}");
}

/// What a client declaring a 60 MiB field got: `busy` at once, or nothing (it is being read).
enum Declared {
    Busy(String),
    Reading(TcpStream),
}

/// Opts in to error details, declares a 60 MiB executable and, unless refused at once, sends
/// 8 MiB of it and stalls.
async fn declare_60_mib(server: std::net::SocketAddr) -> Declared {
    const DECLARED: u32 = 60 * 1024 * 1024;
    const SENT: usize = 8 * 1024 * 1024;
    let mut stream = TcpStream::connect(server).await.unwrap();
    assert_eq!(
        exchange(&mut stream, &request_bytes(&options_request()), false).await[..4],
        1029u32.to_le_bytes()
    );
    let mut header = 1u32.to_le_bytes().to_vec();
    header.extend_from_slice(&DECLARED.to_le_bytes());
    stream.write_all(&header).await.unwrap();
    if let Ok(answer) = tokio::time::timeout(Duration::from_secs(1), read_response(&mut stream, true)).await {
        let answer = answer.expect("a response before the close");
        let (response, _) = decode_response(&answer, &Limits::default(), true).unwrap().unwrap();
        let Response::No(Some(detail)) = response else { panic!("expected a detailed No: {response:?}") };
        assert_eq!(detail.reason(), Some(Reason::Busy), "{detail}");
        return Declared::Busy(detail.message().to_owned());
    }
    stream.write_all(&vec![0x5a; SENT]).await.unwrap();
    Declared::Reading(stream)
}

#[tokio::test]
async fn a_hundred_clients_declaring_60_mib_keep_the_server_within_its_frame_memory_budget() {
    const BUDGET_MIB: u64 = 256;
    let data_dir = tempfile::tempdir().unwrap();
    let served = ServeCommand::new(SENTINEL, data_dir.path())
        .config(&format!(
            "[server]\nframe_memory_budget = {}\nmax_connections_per_client = 200\nframe_timeout = \"60s\"\n",
            BUDGET_MIB * 1024 * 1024
        ))
        .start();
    let pid = served.process.id();
    let mut warm_up = Client::connect(served.tcp).await.unwrap();
    assert!(matches!(
        warm_up.request(&static_request(&synthetic_pe(8192, 9))).await.unwrap(),
        Response::Yes(_)
    ));
    let before_kib = rss_kib(pid);

    let clients: Vec<_> = (0..100).map(|_| tokio::spawn(declare_60_mib(served.tcp))).collect();
    let (mut reading, mut busy) = (Vec::new(), Vec::new());
    for client in clients {
        match client.await.unwrap() {
            Declared::Reading(stream) => reading.push(stream),
            Declared::Busy(message) => busy.push(message),
        }
    }
    // 4 × 60 MiB fit in 256 MiB; a fifth does not.
    assert_eq!((reading.len(), busy.len()), (4, 96));
    assert!(busy[0].contains("memory"), "{}", busy[0]);
    // The server has read what the four sent (8 MiB each) by the time it is measured.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown_mib = rss_kib(pid).saturating_sub(before_kib) / 1024;
    assert!(
        grown_mib < BUDGET_MIB,
        "resident memory grew by {grown_mib} MiB, over the {BUDGET_MIB} MiB budget"
    );
    assert_eq!(metric(served.http, "malware_refusals_total{reason=\"frame_memory_budget\"}").await, 96.0);

    // A client that did not opt in sees the bare 4-byte No.
    let mut legacy = TcpStream::connect(served.tcp).await.unwrap();
    let mut header = 1u32.to_le_bytes().to_vec();
    header.extend_from_slice(&(60u32 * 1024 * 1024).to_le_bytes());
    legacy.write_all(&header).await.unwrap();
    assert_eq!(read_response(&mut legacy, false).await.unwrap(), STATUS_NO.to_le_bytes());
    drop(reading);
}
