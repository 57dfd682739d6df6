//! The broker against the machine's NATS server (`SENTINEL_TEST_NATS_URL`, default
//! `nats://127.0.0.1:4222`, JetStream on): partitioning, redelivery, the work queue, the
//! duplicate window, a full stream, acknowledgements and results. Each test uses its own
//! prefix, so its own stream, and deletes it when done, even when it fails.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sentinel_broker::{Broker, BrokerError, BrokerSettings};

fn server_url() -> String {
    std::env::var("SENTINEL_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Settings of a test's own prefix, with a short `ack_wait` for redelivery tests.
fn settings(test: &str) -> BrokerSettings {
    BrokerSettings {
        url: server_url(),
        prefix: format!("t{}-{test}", std::process::id()),
        partitions: 4,
        ack_wait: Duration::from_secs(1),
        publish_timeout: Duration::from_secs(5),
        ..BrokerSettings::default()
    }
}

/// Deletes a test's stream when dropped, so that a failing test leaves nothing behind.
struct StreamGuard {
    url: String,
    stream: String,
}

impl StreamGuard {
    fn new(settings: &BrokerSettings) -> StreamGuard {
        StreamGuard {
            url: settings.url.clone(),
            stream: format!("{}_RECORDS", settings.prefix.to_uppercase()),
        }
    }

    /// The number of records the stream holds now.
    async fn messages(&self) -> u64 {
        let client = async_nats::connect(&self.url).await.expect("connect to inspect the stream");
        let mut stream =
            async_nats::jetstream::new(client).get_stream(&self.stream).await.expect("the stream");
        stream.info().await.expect("the stream's info").state.messages
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let (url, stream) = (self.url.clone(), self.stream.clone());
        // Drop cannot await, and may run inside the test's runtime: delete from a thread.
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let client = async_nats::connect(&url).await.ok()?;
                async_nats::jetstream::new(client).delete_stream(&stream).await.ok()
            })
        })
        .join();
        if !matches!(deleted, Ok(Some(_))) {
            eprintln!("could not delete the test stream {}", self.stream);
        }
    }
}

async fn connect(settings: &BrokerSettings) -> (Broker, StreamGuard) {
    let guard = StreamGuard::new(settings);
    let broker = Broker::connect(settings).await.unwrap_or_else(|error| {
        panic!("{error} (start `nats-server -js` there, or set SENTINEL_TEST_NATS_URL)")
    });
    (broker, guard)
}

#[tokio::test]
async fn records_reach_their_partitions_consumer_and_no_other() {
    let settings = settings("partition");
    let (broker, _guard) = connect(&settings).await;
    let hosts: Vec<String> = (0..24).map(|host| format!("host-{host}.example")).collect();
    let mut expected: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (index, host) in hosts.iter().enumerate() {
        let published =
            broker.publish_record(host, &format!("{host}/1"), Bytes::from(host.clone())).await.unwrap();
        assert_eq!(published.partition, broker.partition_of(host));
        assert_eq!(published.sequence, index as u64 + 1);
        assert!(!published.duplicate);
        expected.entry(published.partition).or_default().push(host.clone());
    }
    assert!(expected.len() > 1, "24 hosts all fell into one of 4 partitions: {expected:?}");
    for partition in 0..broker.partitions() {
        let consumer = broker.consumer(partition).await.unwrap();
        assert_eq!(consumer.partition(), partition);
        let deliveries = consumer.fetch(100, Duration::from_millis(200)).await.unwrap();
        let received: Vec<String> =
            deliveries.iter().map(|delivery| String::from_utf8(delivery.payload.to_vec()).unwrap()).collect();
        // In publication order, exactly this partition's hosts.
        assert_eq!(received, expected.get(&partition).cloned().unwrap_or_default(), "partition {partition}");
        for delivery in &deliveries {
            assert_eq!(delivery.partition, partition);
            assert_eq!(delivery.delivered, 1);
            let host = String::from_utf8(delivery.payload.to_vec()).unwrap();
            assert_eq!(delivery.msg_id.as_deref(), Some(format!("{host}/1").as_str()));
            delivery.ack().await.unwrap();
        }
    }
    // The work queue deleted every acknowledged record.
    assert_eq!(_guard.messages().await, 0);
    let missing = broker.consumer(4).await.unwrap_err().to_string();
    assert_eq!(missing, "partition 4 does not exist (the stream has 4 partitions)");
}

#[tokio::test]
async fn an_unacknowledged_record_comes_back_after_ack_wait_and_an_acknowledged_one_is_gone() {
    let settings = settings("redeliver");
    let (broker, guard) = connect(&settings).await;
    let published =
        broker.publish_record("web-01", "web-01/7", Bytes::from_static(b"snapshot 7")).await.unwrap();
    let consumer = broker.consumer(published.partition).await.unwrap();

    let first = consumer.fetch(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].sequence, first[0].delivered), (published.sequence, 1));
    // Not acknowledged: nothing more to fetch until ack_wait (1 s) passes.
    assert!(consumer.fetch(10, Duration::from_millis(300)).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let again = consumer.fetch(10, Duration::from_secs(2)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].sequence, published.sequence, "the same record");
    assert_eq!(again[0].delivered, 2);
    assert_eq!(&again[0].payload[..], b"snapshot 7");
    again[0].ack().await.unwrap();

    assert_eq!(guard.messages().await, 0, "the work queue keeps no acknowledged record");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(consumer.fetch(10, Duration::from_millis(300)).await.unwrap().is_empty(), "never again");
}

#[tokio::test]
async fn nak_redelivers_after_its_delay_and_term_drops_the_record() {
    let settings = BrokerSettings { ack_wait: Duration::from_secs(30), ..settings("nak") };
    let (broker, guard) = connect(&settings).await;
    let published = broker.publish_record("db-02", "db-02/1", Bytes::from_static(b"one")).await.unwrap();
    let consumer = broker.consumer(published.partition).await.unwrap();
    let first = consumer.fetch(1, Duration::from_secs(1)).await.unwrap();
    first[0].nak(Duration::from_millis(500)).await.unwrap();
    // Long before ack_wait (30 s): the nak hands it back after its delay.
    let started = Instant::now();
    let again = consumer.fetch(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!((again[0].sequence, again[0].delivered), (published.sequence, 2));

    again[0].term().await.unwrap();
    assert_eq!(guard.messages().await, 0, "a terminated record is deleted from the work queue");
    assert!(consumer.fetch(1, Duration::from_millis(300)).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_fetch_returns_as_soon_as_a_record_arrives() {
    let settings = settings("latency");
    let (broker, _guard) = connect(&settings).await;
    let partition = broker.partition_of("late-host");
    let consumer = broker.consumer(partition).await.unwrap();
    let publisher = broker.clone();
    let publish = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        publisher.publish_record("late-host", "late/1", Bytes::from_static(b"late")).await.unwrap()
    });
    let started = Instant::now();
    let deliveries = consumer.fetch(50, Duration::from_secs(10)).await.unwrap();
    assert_eq!(deliveries.len(), 1);
    assert!(started.elapsed() < Duration::from_secs(3), "waited {:?} for 1 of 50", started.elapsed());
    assert_eq!(deliveries[0].sequence, publish.await.unwrap().sequence);
    deliveries[0].ack().await.unwrap();
    // Fewer records than asked for: those at once, not after `wait`.
    for number in 0..3 {
        broker.publish_record("late-host", &format!("late/{}", number + 2), Bytes::new()).await.unwrap();
    }
    let started = Instant::now();
    let deliveries = consumer.fetch(50, Duration::from_secs(10)).await.unwrap();
    assert_eq!(deliveries.len(), 3);
    assert!(started.elapsed() < Duration::from_secs(2), "waited {:?} for 3 of 50", started.elapsed());
    // More than asked for: `max` of them, the rest at the next fetch.
    for number in 0..5 {
        broker.publish_record("late-host", &format!("late/{}", number + 5), Bytes::new()).await.unwrap();
    }
    let next = consumer.fetch(4, Duration::from_secs(10)).await.unwrap();
    let rest = consumer.fetch(50, Duration::from_secs(10)).await.unwrap();
    assert_eq!((next.len(), rest.len()), (4, 1));
    for delivery in deliveries.iter().chain(&next).chain(&rest) {
        delivery.ack().await.unwrap();
    }
    // And an empty partition answers after `wait`, not before, not much later.
    let started = Instant::now();
    assert!(consumer.fetch(50, Duration::from_millis(500)).await.unwrap().is_empty());
    assert!((Duration::from_millis(400)..Duration::from_secs(3)).contains(&started.elapsed()));
}

#[tokio::test]
async fn the_same_message_id_is_stored_once() {
    let settings = settings("dedup");
    let (broker, guard) = connect(&settings).await;
    let first = broker.publish_record("web-01", "web-01/42", Bytes::from_static(b"a")).await.unwrap();
    let retried = broker.publish_record("web-01", "web-01/42", Bytes::from_static(b"a")).await.unwrap();
    assert!(!first.duplicate);
    assert!(retried.duplicate);
    assert_eq!(retried.sequence, first.sequence);
    let other = broker.publish_record("web-01", "web-01/43", Bytes::from_static(b"b")).await.unwrap();
    assert!(!other.duplicate);
    assert_eq!(guard.messages().await, 2);
}

#[tokio::test]
async fn a_full_stream_refuses_new_records_and_keeps_the_accepted_ones() {
    let settings = BrokerSettings { max_bytes: 4096, ..settings("full") };
    let (broker, guard) = connect(&settings).await;
    let payload = Bytes::from(vec![b'x'; 500]);
    let mut accepted = 0;
    let refusal = loop {
        match broker.publish_record("web-01", &format!("web-01/{accepted}"), payload.clone()).await {
            Ok(_) => accepted += 1,
            Err(error) => break error,
        }
        assert!(accepted < 100, "4 KiB took 100 records of 500 bytes");
    };
    assert!(matches!(refusal, BrokerError::StreamFull { .. }), "{refusal:?}");
    let stream = format!("{}_RECORDS", settings.prefix.to_uppercase());
    assert_eq!(
        refusal.to_string(),
        format!("the stream {stream} is full (max_bytes 4096): the record was refused")
    );
    assert!(accepted >= 4, "only {accepted} records of 500 bytes fitted in 4 KiB");
    assert_eq!(guard.messages().await, accepted, "nothing accepted was dropped");

    // Consuming makes room again.
    let consumer = broker.consumer(broker.partition_of("web-01")).await.unwrap();
    for delivery in consumer.fetch(1024, Duration::from_secs(1)).await.unwrap() {
        delivery.ack().await.unwrap();
    }
    broker.publish_record("web-01", "web-01/after", payload).await.unwrap();
}

#[tokio::test]
async fn results_reach_every_subscribed_replica() {
    let settings = settings("results");
    let (publisher, _guard) = connect(&settings).await;
    let first = Broker::connect(&settings).await.unwrap();
    let second = Broker::connect(&settings).await.unwrap();
    let mut first_results = first.results().await.unwrap();
    let mut second_results = second.results().await.unwrap();
    // Another prefix's results stay with that prefix.
    let other_settings = self::settings("results-other");
    let (other, _other_guard) = connect(&other_settings).await;
    // Subscriptions reach the server asynchronously: publish until both subscribers see one.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut warm = [false, false];
    while warm != [true, true] {
        assert!(Instant::now() < deadline, "no result reached the subscribers: {warm:?}");
        other.publish_result(Bytes::from_static(b"other prefix")).await.unwrap();
        publisher.publish_result(Bytes::from_static(b"warm-up")).await.unwrap();
        for (seen, results) in warm.iter_mut().zip([&mut first_results, &mut second_results]) {
            if let Ok(Some(payload)) = tokio::time::timeout(Duration::from_millis(100), results.next()).await
            {
                assert_eq!(&payload[..], b"warm-up");
                *seen = true;
            }
        }
    }
    for number in 0..3 {
        publisher.publish_result(Bytes::from(format!("result {number}"))).await.unwrap();
    }
    for results in [&mut first_results, &mut second_results] {
        let mut received = Vec::new();
        while received.len() < 3 {
            let payload = tokio::time::timeout(Duration::from_secs(5), results.next())
                .await
                .expect("a result within 5 s")
                .expect("an open subscription");
            assert_ne!(&payload[..], b"other prefix");
            if &payload[..] != b"warm-up" {
                received.push(String::from_utf8(payload.to_vec()).unwrap());
            }
        }
        assert_eq!(received, ["result 0", "result 1", "result 2"]);
    }
}

#[tokio::test]
async fn a_record_larger_than_the_server_accepts_is_refused_clearly() {
    let settings = settings("large");
    let (broker, guard) = connect(&settings).await;
    let error = broker
        .publish_record("web-01", "web-01/huge", Bytes::from(vec![0; 2 * 1024 * 1024]))
        .await
        .unwrap_err();
    assert!(matches!(error, BrokerError::TooLarge { size: 2097152, .. }), "{error:?}");
    assert!(error.to_string().contains("larger than the NATS server accepts"), "{error}");
    let error = broker.publish_record("web-01", "bad id", Bytes::new()).await.unwrap_err();
    assert!(matches!(error, BrokerError::InvalidMessageId(_)), "{error:?}");
    assert_eq!(guard.messages().await, 0);
}

#[tokio::test]
async fn reconnecting_with_other_settings_updates_the_stream_and_the_consumers() {
    let settings = settings("update");
    let (broker, guard) = connect(&settings).await;
    let consumer = broker.consumer(0).await.unwrap();
    drop(consumer);
    let changed = BrokerSettings { ack_wait: Duration::from_secs(7), max_bytes: 1 << 20, ..settings.clone() };
    let broker = Broker::connect(&changed).await.unwrap();
    broker.consumer(0).await.unwrap();

    let client = async_nats::connect(&settings.url).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream.get_stream(&guard.stream).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.max_bytes, 1 << 20);
    assert_eq!(info.config.retention, async_nats::jetstream::stream::RetentionPolicy::WorkQueue);
    assert_eq!(info.config.discard, async_nats::jetstream::stream::DiscardPolicy::New);
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));
    let consumer =
        stream.consumer_info(format!("{}_scorer_0", settings.prefix.to_uppercase())).await.unwrap();
    assert_eq!(consumer.config.ack_wait, Duration::from_secs(7));
    assert_eq!(consumer.config.max_deliver, -1);
    assert_eq!(consumer.config.max_ack_pending, 1024);
    assert_eq!(consumer.config.filter_subject, format!("{}.records.0", settings.prefix));
}

#[tokio::test]
async fn bad_settings_and_unreachable_servers_are_refused_clearly() {
    let refused =
        |settings: BrokerSettings| async move { Broker::connect(&settings).await.unwrap_err().to_string() };
    let base = settings("bad");
    let message = refused(BrokerSettings { prefix: "Bad.Prefix".into(), ..base.clone() }).await;
    assert!(message.starts_with("invalid broker settings: prefix \"Bad.Prefix\" has 'B'"), "{message}");
    let message = refused(BrokerSettings { partitions: 0, ..base.clone() }).await;
    assert_eq!(message, "invalid broker settings: partitions 0 is not in 1..=1024");
    let message =
        refused(BrokerSettings { url: "nats://user:secret@127.0.0.1:4222".into(), ..base.clone() }).await;
    assert!(
        message.contains("must not carry a user or password") && !message.contains("secret"),
        "{message}"
    );
    let message =
        refused(BrokerSettings { token_file: Some("/nonexistent/token".into()), ..base.clone() }).await;
    assert!(message.starts_with("cannot read the broker's token_file /nonexistent/token:"), "{message}");
    let message =
        refused(BrokerSettings { ca_file: Some("/nonexistent/ca.pem".into()), ..base.clone() }).await;
    assert!(message.starts_with("cannot read the broker's ca_file /nonexistent/ca.pem:"), "{message}");

    // A port nothing listens on: refused at once, not after a hang.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    let message = refused(BrokerSettings { url: format!("nats://127.0.0.1:{closed}"), ..base.clone() }).await;
    assert!(
        message.starts_with(&format!("cannot connect to the NATS server at nats://127.0.0.1:{closed}:")),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_set_up_one_stream() {
    let settings = settings("together");
    let guard = StreamGuard::new(&settings);
    let mut starting = Vec::new();
    for _ in 0..6 {
        let settings = settings.clone();
        starting.push(tokio::spawn(async move {
            let broker = Broker::connect(&settings).await?;
            broker.consumer(1).await?;
            Ok::<_, BrokerError>(broker)
        }));
    }
    let mut brokers = Vec::new();
    for started in starting {
        brokers.push(started.await.unwrap().unwrap());
    }
    let published = brokers[0].publish_record("web-01", "web-01/1", Bytes::new()).await.unwrap();
    let again = brokers[5].publish_record("web-01", "web-01/1", Bytes::new()).await.unwrap();
    assert!(again.duplicate && again.sequence == published.sequence);
    assert_eq!(guard.messages().await, 1);
}

#[tokio::test]
async fn fetch_arguments_are_checked() {
    let settings = settings("arguments");
    let (broker, _guard) = connect(&settings).await;
    let consumer = broker.consumer(0).await.unwrap();
    let message = consumer.fetch(0, Duration::from_secs(1)).await.unwrap_err().to_string();
    assert_eq!(message, "fetching from partition 0 failed: max 0 is not in 1..=1024");
    assert!(consumer.fetch(1025, Duration::from_secs(1)).await.is_err());
    let message = consumer.fetch(1, Duration::from_secs(301)).await.unwrap_err().to_string();
    assert_eq!(message, "fetching from partition 0 failed: wait 301s is longer than 300s");
    // No wait at all: what is there now, here nothing.
    assert!(consumer.fetch(1, Duration::ZERO).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_number_of_partitions_changes_only_on_an_empty_stream() {
    let settings = settings("repartition");
    let (broker, _guard) = connect(&settings).await;
    let published = broker.publish_record("web-01", "web-01/1", Bytes::new()).await.unwrap();
    let more = BrokerSettings { partitions: 8, ..settings.clone() };
    let error = Broker::connect(&more).await.unwrap_err();
    assert!(matches!(error, BrokerError::PartitionsChanged { existing: 4, configured: 8, records: 1, .. }));
    assert_eq!(
        error.to_string(),
        format!(
            "the stream {}_RECORDS holds 1 records in 4 partitions but the settings say 8: keep 4 until every \
             replica is stopped and the stream is drained",
            settings.prefix.to_uppercase()
        )
    );
    // Drained: the change is taken, and recorded for the next check.
    let consumer = broker.consumer(published.partition).await.unwrap();
    consumer.fetch(1, Duration::from_secs(1)).await.unwrap()[0].ack().await.unwrap();
    let repartitioned = Broker::connect(&more).await.unwrap();
    assert_eq!(repartitioned.partitions(), 8);
    repartitioned.publish_record("web-01", "web-01/2", Bytes::new()).await.unwrap();
    let error = Broker::connect(&settings).await.unwrap_err();
    assert!(matches!(error, BrokerError::PartitionsChanged { existing: 8, configured: 4, .. }), "{error:?}");
}
