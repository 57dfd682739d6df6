//! The broker against a nats-server of the test's own (the testkit starts it on a free port):
//! a crash of the server (SIGKILL) and its restart on the same store, a server without
//! JetStream, token authentication and TLS with a private CA.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sentinel_broker::{Broker, BrokerError, BrokerSettings};
use sentinel_testkit::certificates::TestCa;
use sentinel_testkit::nats_server::{self, NatsServer};

/// Whether nats-server is installed; a test without it fails rather than skips, since the
/// broker cannot be tested otherwise.
fn require_server() {
    assert!(nats_server::available(), "nats-server is not installed (Debian: apt-get install nats-server)");
}

fn settings(url: String) -> BrokerSettings {
    BrokerSettings {
        url,
        prefix: "own".into(),
        partitions: 2,
        ack_wait: Duration::from_secs(2),
        publish_timeout: Duration::from_secs(1),
        ..BrokerSettings::default()
    }
}

/// Polls `condition` every 50 ms for up to `within`.
async fn eventually(within: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    condition()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_server_fails_publishes_in_time_and_its_restart_loses_nothing() {
    require_server();
    let dir = tempfile::tempdir().unwrap();
    let mut server = NatsServer::start(dir.path());
    let settings = settings(server.url());
    let broker = Broker::connect(&settings).await.unwrap();
    assert!(broker.is_connected());
    let partition = broker.partition_of("web-01");
    let first = broker.publish_record("web-01", "web-01/1", Bytes::from_static(b"one")).await.unwrap();
    let second = broker.publish_record("web-01", "web-01/2", Bytes::from_static(b"two")).await.unwrap();
    let consumer = broker.consumer(partition).await.unwrap();
    let mut results = broker.results().await.unwrap();
    let fetched = consumer.fetch(1, Duration::from_secs(1)).await.unwrap();
    assert_eq!(fetched[0].sequence, first.sequence);
    // Fetched, never acknowledged: the worker "died" with it.
    drop(fetched);

    server.kill();
    let started = Instant::now();
    let error = broker.publish_record("web-01", "web-01/3", Bytes::from_static(b"three")).await.unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "publish_timeout is 1 s, the publish took {took:?}");
    assert!(matches!(error, BrokerError::TimedOut { .. }), "{error:?}");
    assert_eq!(error.to_string(), "JetStream did not answer within 1s (is the NATS server reachable?)");
    assert!(eventually(Duration::from_secs(2), || !broker.is_connected()).await, "still connected");
    assert!(matches!(consumer.fetch(1, Duration::from_secs(1)).await, Err(BrokerError::Disconnected)));

    server.restart();
    assert!(eventually(Duration::from_secs(15), || broker.is_connected()).await, "did not reconnect");
    // The same stream sequence, so the same record id for the worker's idempotent storage.
    let mut received: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(received.contains_key("one") && received.contains_key("two")) {
        assert!(Instant::now() < deadline, "records lost across the restart: {received:?}");
        for delivery in consumer.fetch(10, Duration::from_secs(1)).await.unwrap() {
            let payload = String::from_utf8(delivery.payload.to_vec()).unwrap();
            assert!(received.insert(payload, (delivery.sequence, delivery.delivered)).is_none());
            delivery.ack().await.unwrap();
        }
    }
    // Still there, under its sequence. Its delivery count may have started again at 1: the
    // server writes the consumer's state behind, and a SIGKILL can lose the last of it.
    assert_eq!(received["one"].0, first.sequence);
    assert!(received["one"].1 >= 1);
    assert_eq!(received["two"].0, second.sequence);

    // The results' subscription came back with the connection.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        broker.publish_result(Bytes::from_static(b"after the restart")).await.unwrap();
        if let Ok(Some(result)) = tokio::time::timeout(Duration::from_millis(100), results.next()).await {
            assert_eq!(&result[..], b"after the restart");
            break;
        }
        assert!(Instant::now() < deadline, "the results' subscription did not come back");
    }

    // The publish that timed out may have reached the server once it was back (the client
    // sends what it had queued); retried with the same message id, it is stored once.
    let retried = broker.publish_record("web-01", "web-01/3", Bytes::from_static(b"three")).await.unwrap();
    assert_eq!(retried.duplicate, received.contains_key("three"));
    let fourth = broker.publish_record("web-01", "web-01/4", Bytes::from_static(b"four")).await.unwrap();
    assert!(!fourth.duplicate);
    let mut rest = Vec::new();
    for delivery in consumer.fetch(10, Duration::from_secs(1)).await.unwrap() {
        rest.push(String::from_utf8(delivery.payload.to_vec()).unwrap());
        delivery.ack().await.unwrap();
    }
    let expected: Vec<&str> = if retried.duplicate { vec!["four"] } else { vec!["three", "four"] };
    assert_eq!(rest, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_jetstream_is_refused_clearly() {
    require_server();
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start_with(dir.path(), &[]);
    let error = Broker::connect(&settings(server.url())).await.unwrap_err();
    assert!(matches!(error, BrokerError::NoJetStream { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "the NATS server at {} has no JetStream (start nats-server with -js, or enable JetStream for this account)",
            server.url()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_read_from_its_file_and_never_shown() {
    require_server();
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start_with(dir.path(), &["-js", "--auth", "right-token-1234"]);
    let token_file = dir.path().join("token");

    let without = Broker::connect(&settings(server.url())).await.unwrap_err().to_string();
    assert!(without.contains("authorization violation"), "{without}");

    std::fs::write(&token_file, "wrong-token-5678\n").unwrap();
    let wrong = BrokerSettings { token_file: Some(token_file.clone()), ..settings(server.url()) };
    let error = Broker::connect(&wrong).await.unwrap_err();
    let message = format!("{error} {error:?}");
    assert!(message.contains("authorization violation"), "{message}");
    assert!(!message.contains("wrong-token") && !message.contains("right-token"), "{message}");

    std::fs::write(&token_file, "right-token-1234\n").unwrap();
    let broker = Broker::connect(&wrong).await.unwrap();
    assert!(!broker.publish_record("web-01", "web-01/1", Bytes::from_static(b"x")).await.unwrap().duplicate);
    assert!(!format!("{broker:?}").contains("right-token"), "the token shows in Debug");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_against_the_ca_file() {
    require_server();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Sentinel test NATS CA");
    let ca_file = ca.write(&dir.path().join("nats-ca.pem"));
    let files = ca.server("127.0.0.1", &dir.path().join("nats-cert.pem"), &dir.path().join("nats-key.pem"));
    let (certificate, key) = (files.certificate.to_str().unwrap(), files.key.to_str().unwrap());
    let server =
        NatsServer::start_with(dir.path(), &["-js", "--tls", "--tlscert", certificate, "--tlskey", key]);
    let tls_url = format!("tls://127.0.0.1:{}", server.port());

    let verified = BrokerSettings { ca_file: Some(ca_file), ..settings(tls_url.clone()) };
    let broker = Broker::connect(&verified).await.unwrap();
    broker.publish_record("web-01", "web-01/1", Bytes::from_static(b"over TLS")).await.unwrap();

    // A CA file makes TLS required with a nats:// URL too.
    let nats_url = BrokerSettings { url: server.url(), ..verified.clone() };
    Broker::connect(&nats_url)
        .await
        .unwrap()
        .publish_record("web-01", "web-01/2", Bytes::new())
        .await
        .unwrap();

    // The system's roots do not know the private CA.
    let error = Broker::connect(&settings(tls_url)).await.unwrap_err().to_string();
    assert!(error.starts_with("cannot connect to the NATS server at tls://127.0.0.1:"), "{error}");
    assert!(error.contains("TLS is required"), "{error}");

    // And a server without TLS is refused, not used in plain text.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = NatsServer::start(plain_dir.path());
    let downgrade = BrokerSettings { url: plain.url(), ..verified };
    let error = Broker::connect(&downgrade).await.unwrap_err().to_string();
    assert!(error.starts_with(&format!("cannot connect to the NATS server at {}:", plain.url())), "{error}");
    assert!(error.contains("TLS is required: does the server offer TLS"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_go_on_after_a_restart_even_when_the_stream_was_emptied() {
    require_server();
    let dir = tempfile::tempdir().unwrap();
    let mut server = NatsServer::start(dir.path());
    let settings = settings(server.url());
    let broker = Broker::connect(&settings).await.unwrap();
    let mut last = 0;
    for number in 0..3 {
        last = broker
            .publish_record("web-01", &format!("web-01/{number}"), Bytes::new())
            .await
            .unwrap()
            .sequence;
    }
    let consumer = broker.consumer(broker.partition_of("web-01")).await.unwrap();
    for delivery in consumer.fetch(10, Duration::from_secs(1)).await.unwrap() {
        delivery.ack().await.unwrap();
    }
    server.kill();
    server.restart();
    assert!(eventually(Duration::from_secs(15), || broker.is_connected()).await, "did not reconnect");
    // A record id is never reused: the stream remembers its last sequence though empty.
    let next = broker.publish_record("web-01", "web-01/next", Bytes::new()).await.unwrap();
    assert_eq!(next.sequence, last + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_fails_the_connection_in_time() {
    // Accepts connections and says nothing, like a wedged server or a wrong port.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("nats://{}", silent.local_addr().unwrap());
    let holding = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            held.push(connection);
        }
    });
    let started = Instant::now();
    let error = Broker::connect(&settings(url.clone())).await.unwrap_err().to_string();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "the connection attempt took {took:?}");
    assert_eq!(error, format!("cannot connect to the NATS server at {url}: timed out"));
    holding.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_and_password_are_read_from_settings_and_file() {
    require_server();
    let dir = tempfile::tempdir().unwrap();
    let server =
        NatsServer::start_with(dir.path(), &["-js", "--user", "scorer", "--pass", "right-pass-1234"]);
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "wrong-pass-5678").unwrap();
    let with_password = BrokerSettings {
        user: Some("scorer".into()),
        password_file: Some(password_file.clone()),
        ..settings(server.url())
    };
    let message = Broker::connect(&with_password).await.unwrap_err().to_string();
    assert!(message.contains("authorization violation"), "{message}");
    assert!(!message.contains("pass-"), "{message}");
    std::fs::write(&password_file, "right-pass-1234\n").unwrap();
    let broker = Broker::connect(&with_password).await.unwrap();
    broker.publish_record("web-01", "web-01/1", Bytes::new()).await.unwrap();
}
