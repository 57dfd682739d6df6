//! The collection loop on tokio: observations of real sockets arrive through the channel, and a
//! consumer that does not read makes the loop drop and count what does not fit.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime};

use sentinel_netmon::{
    CollectError, Collector, CollectorSettings, ConnectionChange, ConnectionRecord, Family, Observation,
    Protocol, SCHEMA_VERSION, SettingsError, Snapshot, SocketState, spawn_collection,
};

/// A host with a fixed set of idle connections.
struct FixedConnections(usize);

impl Collector for FixedConnections {
    fn collect(&mut self) -> Result<Snapshot, CollectError> {
        let timestamp = SystemTime::now();
        let connections = (0..self.0)
            .map(|index| ConnectionRecord {
                timestamp,
                host: "fixed".into(),
                pid: Some(1),
                process_name: Some("init".into()),
                process_path: None,
                user: None,
                local_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                local_port: 10_000 + index as u16,
                remote_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                remote_port: 80,
                protocol: Protocol::Tcp,
                family: Family::V4,
                state: SocketState::Established,
                bytes_sent: Some(0),
                bytes_received: Some(0),
                rtt_us: None,
                retransmits: None,
                segs_in: None,
                segs_out: None,
                socket_id: Some(index as u64),
            })
            .collect();
        Ok(Snapshot {
            schema_version: SCHEMA_VERSION,
            host: "fixed".into(),
            timestamp,
            connections,
            interfaces: Vec::new(),
            processes: Vec::new(),
            process_info: Vec::new(),
        })
    }
}

async fn wait_for(mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < Duration::from_secs(10), "condition not met within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_does_not_read_makes_the_loop_drop_and_count() {
    let settings =
        CollectorSettings { interval: Duration::from_millis(100), buffer_capacity: 10, host: None };
    let (handle, mut receiver) = spawn_collection(&settings, FixedConnections(25)).unwrap();
    // The first collection yields 25 new connections: 10 fit, 15 are dropped once the next
    // collection is due. Later collections see no change and yield nothing.
    wait_for(|| handle.dropped() >= 15).await;
    wait_for(|| handle.collections() >= 4).await;
    assert_eq!(handle.dropped(), 15);
    let mut delivered = 0;
    while let Ok(observation) = receiver.try_recv() {
        assert!(
            matches!(observation, Observation::Connection(ref event) if event.change == ConnectionChange::New)
        );
        delivered += 1;
    }
    assert_eq!(delivered, 10);
    assert_eq!(handle.failures(), 0);
}

#[test]
fn settings_default_to_one_second_and_a_thousand_records_and_reject_nonsense() {
    let settings: CollectorSettings = serde_json::from_str("{}").unwrap();
    assert_eq!(
        (settings.interval, settings.buffer_capacity, settings.host),
        (Duration::from_secs(1), 1000, None)
    );
    assert!(
        serde_json::from_str::<CollectorSettings>(r#"{"interval": 5}"#).is_err(),
        "unknown keys are refused"
    );
    let too_fast = CollectorSettings { interval: Duration::from_millis(10), ..CollectorSettings::default() };
    assert_eq!(too_fast.validate(), Err(SettingsError::Interval(Duration::from_millis(10))));
    let no_buffer = CollectorSettings { buffer_capacity: 0, ..CollectorSettings::default() };
    assert_eq!(no_buffer.validate(), Err(SettingsError::BufferCapacity));
}

#[cfg(target_os = "linux")]
async fn next_connection_event(
    receiver: &mut tokio::sync::mpsc::Receiver<Observation>,
    seen: &mut Vec<Observation>,
    wanted: impl Fn(&sentinel_netmon::ConnectionEvent) -> bool,
) -> sentinel_netmon::ConnectionEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let observation = tokio::time::timeout_at(deadline, receiver.recv())
            .await
            .expect("the event arrives within 10 s")
            .expect("the loop is running");
        if let Observation::Connection(event) = &observation
            && wanted(event)
        {
            return event.clone();
        }
        seen.push(observation);
    }
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_linux_loop_streams_a_connection_from_opening_to_closing() {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    use sentinel_netmon::LinuxCollector;

    let settings = CollectorSettings {
        interval: Duration::from_millis(250),
        host: Some("loop-host".into()),
        ..CollectorSettings::default()
    };
    let collector = LinuxCollector::from_settings(&settings).unwrap();
    let (handle, mut receiver) = spawn_collection(&settings, collector).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let port = client.local_addr().unwrap().port();
    let ours = move |event: &sentinel_netmon::ConnectionEvent| {
        event.record.local_port == port && event.record.pid == Some(std::process::id())
    };
    let mut seen = Vec::new();
    let opened = next_connection_event(&mut receiver, &mut seen, |event| {
        ours(event) && event.change == ConnectionChange::New
    })
    .await;
    assert_eq!(opened.record.host, "loop-host");

    client.write_all(&[1; 1000]).unwrap();
    let traffic = next_connection_event(&mut receiver, &mut seen, |event| {
        ours(event) && event.change == ConnectionChange::Ongoing && event.bytes_sent_delta.unwrap_or(0) > 0
    })
    .await;
    assert!(traffic.interval_ms.is_some());
    assert_eq!(traffic.record.bytes_sent, Some(1000));
    drop(client);
    drop(server);
    let closed = next_connection_event(&mut receiver, &mut seen, |event| {
        event.record.local_port == port && event.change == ConnectionChange::Closed
    })
    .await;
    assert_eq!(closed.record.pid, Some(std::process::id()), "the owner is kept in the closed event");
    assert_eq!(closed.record.bytes_sent, Some(1000));

    assert!(seen.iter().any(
        |observation| matches!(observation, Observation::Process(info) if info.pid == std::process::id())
    ));
    assert!(seen.iter().any(
        |observation| matches!(observation, Observation::Interface(interface) if interface.name == "lo")
    ));
    assert!(seen.iter().any(|observation| matches!(observation, Observation::ProcessNetwork(usage) if usage.pid == std::process::id())));
    assert_eq!(handle.dropped(), 0, "a consumer that keeps up loses nothing");
}
