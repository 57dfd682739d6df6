//! Broker deliveries stored exactly once, and replicas writing the network tables at once: a
//! redelivered record is stored once (on both backends, also from two stores at once on
//! PostgreSQL), a delivery acknowledged before the process was killed is there after a restart,
//! and two stores on one PostgreSQL database never hand out the same item id.

mod backends;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, SystemTime};

use backends::{Backend, Fixture, each_backend};
use sentinel_store::{ConnectionRow, NetworkStore, PredictionRow, ScoredItem, StoreError, WriterSettings};

const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

fn settings() -> WriterSettings {
    WriterSettings {
        batch: 16,
        flush_interval: Duration::from_millis(5),
        queue: 1000,
        retention: Duration::from_secs(30 * 86_400),
    }
}

/// `count` items of a delivery, with ids reserved from `store`.
fn items(store: &NetworkStore, sequence: u64, count: usize) -> Vec<ScoredItem> {
    let first = store.reserve_item_ids(count).unwrap();
    (0..count)
        .map(|index| {
            let now = SystemTime::now();
            let mut features = serde_json::Map::new();
            features.insert("sequence".to_owned(), serde_json::json!(sequence));
            ScoredItem {
                id: first + index as i64,
                observed: now,
                connection: Some(ConnectionRow {
                    timestamp: now,
                    process_id: None,
                    process_name: Some(format!("worker-{sequence}")),
                    local_ip: "10.0.0.1".into(),
                    local_port: 5000,
                    remote_ip: "10.0.0.2".into(),
                    remote_port: 443,
                    protocol: Some("tcp".into()),
                    state: None,
                    bytes_sent: None,
                    bytes_received: None,
                }),
                features,
                session: "broker:test".into(),
                predictions: vec![PredictionRow {
                    model: "ensemble".into(),
                    score: 0.2,
                    is_anomaly: false,
                    confidence: 1.0,
                    explanation: None,
                }],
            }
        })
        .collect()
}

/// The id of a test record: its publisher's stream and a number in it (what the broker's
/// message id stands for).
fn record_id(partition: u32, sequence: u64) -> String {
    format!("{partition}/{sequence}")
}

/// Queues a delivery; its answer arrives on the receiver.
fn send(
    store: &NetworkStore,
    partition: u32,
    sequence: u64,
    items: Vec<ScoredItem>,
) -> Receiver<Result<bool, StoreError>> {
    let (answer, answered) = channel();
    store.store_delivery(record_id(partition, sequence), items, move |result| {
        let _ = answer.send(result);
    });
    answered
}

fn deliver(
    store: &NetworkStore,
    partition: u32,
    sequence: u64,
    items: Vec<ScoredItem>,
) -> Result<bool, StoreError> {
    send(store, partition, sequence, items).recv_timeout(ANSWER_TIMEOUT).unwrap()
}

#[test]
fn a_redelivered_record_is_stored_once_and_its_answer_says_so() {
    each_backend(|fixture| {
        let store = fixture.open_network(settings());
        assert!(deliver(&store, 0, 7, items(&store, 7, 3)).unwrap(), "stored now");
        assert!(!deliver(&store, 0, 7, items(&store, 7, 3)).unwrap(), "a redelivery: not stored again");
        assert!(deliver(&store, 1, 7, items(&store, 7, 2)).unwrap(), "another record");
        // A record id that cannot be kept is refused, not stored.
        let (answer, answered) = channel();
        store.store_delivery(String::new(), items(&store, 9, 1), move |result| {
            let _ = answer.send(result);
        });
        assert!(matches!(
            answered.recv_timeout(ANSWER_TIMEOUT).unwrap(),
            Err(StoreError::DeliveryNotStored(_))
        ));
        // A delivery with no item is recorded too.
        assert!(deliver(&store, 0, 8, Vec::new()).unwrap());
        assert!(!deliver(&store, 0, 8, Vec::new()).unwrap());
        // Two deliveries of one message queued together: the first stores it.
        let first = send(&store, 0, 9, items(&store, 9, 1));
        let second = send(&store, 0, 9, items(&store, 9, 1));
        assert!(first.recv_timeout(ANSWER_TIMEOUT).unwrap().unwrap());
        assert!(!second.recv_timeout(ANSWER_TIMEOUT).unwrap().unwrap());
        let counts = store.row_counts().unwrap();
        assert_eq!((counts.features, counts.connections, counts.predictions), (6, 6, 6), "{counts:?}");
        assert_eq!(store.writer_stats().written, 6, "skipped redeliveries are not counted as written");

        store.close();
        let closed = deliver(&store, 0, 10, items(&store, 10, 1)).unwrap_err();
        assert!(matches!(closed, StoreError::WriterStopped), "{closed}");
        assert_eq!(store.row_counts().unwrap().features, 6);
    });
}

#[test]
fn a_failed_batch_answers_an_error_so_the_message_is_delivered_again() {
    each_backend(|fixture| {
        let store = fixture.open_network(settings());
        let stored = items(&store, 1, 1);
        let id = stored[0].id;
        assert!(deliver(&store, 0, 1, stored).unwrap());
        // An item whose id is stored already: its transaction fails, and nothing of it stays.
        let mut clash = items(&store, 2, 2);
        clash[1].id = id;
        let failed = deliver(&store, 0, 2, clash).unwrap_err();
        assert!(matches!(failed, StoreError::DeliveryNotStored(_)), "{failed}");
        assert_eq!(store.row_counts().unwrap().features, 1);
        // Delivered again, correctly this time: stored, as it was not before.
        assert!(deliver(&store, 0, 2, items(&store, 2, 2)).unwrap());
        assert_eq!(store.row_counts().unwrap().features, 3);
    });
}

/// Set in the child: where its store is, and how the parent's fixture is reached.
const CHILD_DIR_ENV: &str = "SENTINEL_NETWORK_DELIVERY_CHILD_DIR";
const CHILD_URL_ENV: &str = "SENTINEL_NETWORK_DELIVERY_CHILD_URL";
/// Deliveries the child makes at most (in case the parent died without killing it).
const CHILD_DELIVERIES: u64 = 3000;
const ITEMS_PER_DELIVERY: usize = 3;
const ACKS_BEFORE_KILL: usize = 100;

/// The child's side: runs only when re-executed by `acknowledged_deliveries_survive_sigkill`.
/// Queues deliveries one after another and prints `ack <sequence>` when one is answered stored.
#[test]
fn delivery_child() {
    let store = match (std::env::var(CHILD_DIR_ENV), std::env::var(CHILD_URL_ENV)) {
        (Ok(dir), _) => NetworkStore::open(std::path::Path::new(&dir), settings()).unwrap(),
        (_, Ok(url)) => NetworkStore::open_postgres(&url, None, settings()).unwrap(),
        _ => return,
    };
    for sequence in 0..CHILD_DELIVERIES {
        store.store_delivery(
            record_id(3, sequence),
            items(&store, sequence, ITEMS_PER_DELIVERY),
            move |result| {
                if result.is_ok() {
                    // println! writes the whole line under stdout's lock and flushes it.
                    println!("ack {sequence}");
                }
            },
        );
    }
    store.close();
}

/// Kills the child if the test fails before doing so, so no writer outlives the test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn acknowledged_deliveries_survive_sigkill() {
    each_backend(|fixture| {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command.args(["delivery_child", "--exact", "--nocapture", "--test-threads=1"]);
        match fixture.postgres() {
            None => command.env(CHILD_DIR_ENV, fixture.data_dir()),
            Some(database) => command.env(CHILD_URL_ENV, database.url()),
        };
        let mut child = KillOnDrop(command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap());
        let stdout = BufReader::new(child.0.stdout.take().unwrap());
        let mut acknowledged = Vec::new();
        for line in stdout.lines() {
            let Some(sequence) = line.unwrap().strip_prefix("ack ").map(|text| text.parse::<u64>().unwrap())
            else {
                continue;
            };
            acknowledged.push(sequence);
            if acknowledged.len() == ACKS_BEFORE_KILL {
                // In the middle of the next batches; acknowledgements already in the pipe are
                // read on and count too.
                child.0.kill().unwrap();
            }
        }
        let status = child.0.wait().unwrap();
        assert!(acknowledged.len() >= ACKS_BEFORE_KILL, "the child died early: {status}");
        #[cfg(unix)]
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "{status}");

        let store = fixture.open_network(settings());
        let stored_before = store.row_counts().unwrap().features;
        // Every delivery the child made is delivered again, as the broker would those it had no
        // acknowledgement for: each acknowledged one is found stored, and what is stored is
        // exactly the items of the deliveries found (never part of one).
        let sent = acknowledged.iter().max().unwrap() + 200;
        let answers: Vec<_> =
            (0..sent).map(|sequence| send(&store, 3, sequence, items(&store, sequence, 1))).collect();
        let mut found = HashSet::new();
        for (sequence, answer) in answers.into_iter().enumerate() {
            if !answer.recv_timeout(ANSWER_TIMEOUT).unwrap().unwrap() {
                found.insert(sequence as u64);
            }
        }
        for sequence in &acknowledged {
            assert!(found.contains(sequence), "acknowledged delivery {sequence} was lost");
        }
        assert_eq!(stored_before, found.len() as u64 * ITEMS_PER_DELIVERY as u64);
    });
}

#[test]
fn two_stores_on_one_postgresql_database_hand_out_distinct_item_ids() {
    let fixture = Arc::new(Fixture::new(Backend::Postgres));
    let stores: Vec<Arc<NetworkStore>> = (0..2).map(|_| Arc::new(fixture.open_network(settings()))).collect();
    let threads: Vec<_> = (0..4)
        .map(|thread| {
            let store = Arc::clone(&stores[thread % 2]);
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                for round in 0..300 {
                    // Mostly single ids, some runs, and a few longer than a block.
                    let count = match round % 50 {
                        0 => 1500,
                        n if n % 7 == 0 => 20,
                        _ => 1,
                    };
                    let first = store.reserve_item_ids(count).unwrap();
                    ids.extend(first..first + count as i64);
                    // And items stored with ids of their own, beside the other store's.
                    for item in items(&store, round, 1) {
                        ids.push(item.id);
                        store.store(item);
                    }
                }
                ids
            })
        })
        .collect();
    let mut seen = HashSet::new();
    let mut total = 0;
    for thread in threads {
        for id in thread.join().unwrap() {
            total += 1;
            assert!(seen.insert(id), "item id {id} handed out twice");
        }
    }
    assert!(total > 10_000, "{total}");
    for store in &stores {
        store.close();
        assert_eq!(store.writer_stats().failed, 0, "no item's id clashed with another's");
    }
    let written: u64 = stores.iter().map(|store| store.writer_stats().written).sum();
    assert_eq!(stores[0].row_counts().unwrap().features, written);
    assert!(written > 1000, "{written}");
}

#[test]
fn two_stores_on_one_postgresql_database_store_each_delivery_once() {
    const DELIVERIES: u64 = 300;
    let fixture = Fixture::new(Backend::Postgres);
    let stores: Vec<Arc<NetworkStore>> = (0..2).map(|_| Arc::new(fixture.open_network(settings()))).collect();
    // Both replicas are handed every message (a redelivery to another worker), at once.
    let threads: Vec<_> = stores
        .iter()
        .map(|store| {
            let store = Arc::clone(store);
            std::thread::spawn(move || {
                let answers: Vec<_> = (0..DELIVERIES)
                    .map(|sequence| send(&store, (sequence % 4) as u32, sequence, items(&store, sequence, 2)))
                    .collect();
                answers
                    .into_iter()
                    .map(|answer| answer.recv_timeout(ANSWER_TIMEOUT).unwrap().unwrap())
                    .collect::<Vec<bool>>()
            })
        })
        .collect();
    let answers: Vec<Vec<bool>> = threads.into_iter().map(|thread| thread.join().unwrap()).collect();
    for (sequence, (first, second)) in answers[0].iter().zip(&answers[1]).enumerate() {
        assert!(first != second, "delivery {sequence}: exactly one replica stores it ({first} and {second})");
    }
    assert_eq!(stores[0].row_counts().unwrap().features, 2 * DELIVERIES);
    let database = fixture.postgres().unwrap();
    assert_eq!(database.query_i64("SELECT count(*) FROM broker_deliveries").unwrap(), DELIVERIES as i64);
}

#[test]
fn deliveries_older_than_the_retention_are_forgotten() {
    each_backend(|fixture| {
        let store = fixture.open_network(settings());
        assert!(deliver(&store, 0, 1, Vec::new()).unwrap());
        store.close();
        drop(store);
        // The retention runs when the writer starts: a retention of zero forgets everything.
        let store = fixture.open_network(WriterSettings { retention: Duration::ZERO, ..settings() });
        assert!(deliver(&store, 0, 1, Vec::new()).unwrap(), "forgotten, so stored again");
    });
}

#[test]
fn while_postgresql_is_unreachable_item_ids_fail_at_once_and_come_back_after() {
    let fixture = Fixture::new(Backend::Postgres);
    let store = fixture.open_network(settings());
    // The store's database refuses connections, and those open are cut, from another one.
    let admin = sentinel_testkit::postgres::ScratchDatabase::create("admin");
    let name = fixture.postgres().unwrap().url().rsplit('/').next().unwrap().to_owned();
    admin
        .execute(&format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .unwrap();
    let error = store.reserve_item_ids(1).unwrap_err();
    assert!(matches!(error, StoreError::Postgres(_)), "{error}");
    let started = std::time::Instant::now();
    assert!(store.reserve_item_ids(1).is_err());
    assert!(started.elapsed() < Duration::from_millis(200), "a second caller waits {:?}", started.elapsed());
    // Back: ids are taken again.
    admin.execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert!(store.reserve_item_ids(1).unwrap() > 0);
}
