//! The Linux collector against real sockets on loopback and real processes: owners, exact byte
//! counts from tcp_info, IPv6, UDP, closing, and a socket owned by a child process.
#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sentinel_netmon::{
    Collector, ConnectionChange, ConnectionRecord, ConnectionTracker, Family, LinuxCollector, Protocol,
    Snapshot, SocketState,
};

const CLIENT_TO_SERVER: usize = 1024 * 1024;
const SERVER_TO_CLIENT: usize = 300 * 1024;
const PROBE_ADDRESS_VARIABLE: &str = "SENTINEL_NETMON_PROBE_CONNECT";

fn collector() -> LinuxCollector {
    LinuxCollector::new("test-host").expect("netlink sock_diag is available")
}

fn find(snapshot: &Snapshot, local: SocketAddr, remote: SocketAddr) -> Option<&ConnectionRecord> {
    snapshot.connections.iter().find(|record| {
        SocketAddr::new(record.local_ip, record.local_port) == local
            && SocketAddr::new(record.remote_ip, record.remote_port) == remote
    })
}

/// Collects until `done` holds (counters settle once the last ACKs are processed), or fails
/// after 5 s with the last snapshot's view.
fn collect_until(collector: &mut LinuxCollector, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let start = Instant::now();
    loop {
        let snapshot = collector.collect().expect("collection");
        if done(&snapshot) || start.elapsed() > Duration::from_secs(5) {
            return snapshot;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exchange(client: &mut TcpStream, server: &mut TcpStream) {
    let sender = {
        let mut client = client.try_clone().unwrap();
        std::thread::spawn(move || client.write_all(&vec![0x5a; CLIENT_TO_SERVER]).unwrap())
    };
    let mut received = vec![0; CLIENT_TO_SERVER];
    server.read_exact(&mut received).unwrap();
    sender.join().unwrap();
    let sender = {
        let mut server = server.try_clone().unwrap();
        std::thread::spawn(move || server.write_all(&vec![0xa5; SERVER_TO_CLIENT]).unwrap())
    };
    let mut received = vec![0; SERVER_TO_CLIENT];
    client.read_exact(&mut received).unwrap();
    sender.join().unwrap();
}

fn own_name() -> String {
    std::fs::read_to_string("/proc/self/comm").unwrap().trim().to_owned()
}

fn own_user() -> String {
    let output = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn check_tcp_pair(listen_on: &str, family: Family) {
    let listener = TcpListener::bind(listen_on).unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    exchange(&mut client, &mut server);
    let (client_address, server_address) = (client.local_addr().unwrap(), server.local_addr().unwrap());

    let mut collector = collector();
    let settled = |snapshot: &Snapshot| {
        let client = find(snapshot, client_address, server_address);
        let server = find(snapshot, server_address, client_address);
        client.is_some_and(|c| c.bytes_sent == Some(CLIENT_TO_SERVER as u64))
            && server.is_some_and(|s| s.bytes_sent == Some(SERVER_TO_CLIENT as u64))
    };
    let snapshot = collect_until(&mut collector, settled);

    let client_record = find(&snapshot, client_address, server_address).expect("client side listed");
    let server_record = find(&snapshot, server_address, client_address).expect("server side listed");
    for record in [client_record, server_record] {
        assert_eq!(record.pid, Some(std::process::id()));
        assert_eq!(record.process_name.as_deref(), Some(own_name().as_str()));
        assert_eq!(
            record.process_path.as_deref(),
            std::env::current_exe().unwrap().to_str(),
            "the path is the test binary"
        );
        assert_eq!(record.user.as_deref(), Some(own_user().as_str()));
        assert_eq!(
            (record.protocol, record.family, record.state),
            (Protocol::Tcp, family, SocketState::Established)
        );
        assert_eq!(record.host, "test-host");
        assert!(record.rtt_us.is_some() && record.segs_in.unwrap() > 0 && record.segs_out.unwrap() > 0);
        assert!(record.socket_id.is_some());
    }
    assert_eq!(client_record.bytes_sent, Some(CLIENT_TO_SERVER as u64));
    assert_eq!(client_record.bytes_received, Some(SERVER_TO_CLIENT as u64));
    assert_eq!(server_record.bytes_sent, Some(SERVER_TO_CLIENT as u64));
    assert_eq!(server_record.bytes_received, Some(CLIENT_TO_SERVER as u64));

    let listener_address = listener.local_addr().unwrap();
    let listening = snapshot
        .connections
        .iter()
        .find(|record| {
            SocketAddr::new(record.local_ip, record.local_port) == listener_address
                && record.state == SocketState::Listen
        })
        .expect("the listener is listed");
    assert_eq!(listening.pid, Some(std::process::id()));
    assert_eq!(listening.remote_port, 0);

    let usage = snapshot.processes.iter().find(|usage| usage.pid == std::process::id()).expect("own usage");
    assert!(usage.tcp_connections >= 2 && usage.tcp_listeners >= 1);
    assert!(usage.bytes_sent >= (CLIENT_TO_SERVER + SERVER_TO_CLIENT) as u64);
    let info = snapshot.process_info.iter().find(|info| info.pid == std::process::id()).expect("own details");
    assert_eq!(info.name, own_name());
    assert!(snapshot.interfaces.iter().any(|interface| interface.name == "lo" && interface.rx_bytes > 0));
}

#[test]
fn tcp_over_ipv4_is_attributed_to_this_process_with_exact_byte_counts() {
    check_tcp_pair("127.0.0.1:0", Family::V4);
}

#[test]
fn tcp_over_ipv6_is_attributed_to_this_process_with_exact_byte_counts() {
    check_tcp_pair("[::1]:0", Family::V6);
}

#[test]
fn udp_sockets_are_listed_without_byte_counters() {
    let unconnected = UdpSocket::bind("127.0.0.1:0").unwrap();
    let connected = UdpSocket::bind("[::1]:0").unwrap();
    let peer = UdpSocket::bind("[::1]:0").unwrap();
    connected.connect(peer.local_addr().unwrap()).unwrap();
    connected.send(b"ping").unwrap();

    let snapshot = collector().collect().unwrap();
    let udp = |address: SocketAddr| {
        snapshot
            .connections
            .iter()
            .find(|record| {
                record.protocol == Protocol::Udp
                    && SocketAddr::new(record.local_ip, record.local_port) == address
            })
            .unwrap_or_else(|| panic!("UDP socket {address} listed"))
    };
    let unconnected_record = udp(unconnected.local_addr().unwrap());
    assert_eq!((unconnected_record.state, unconnected_record.family), (SocketState::Unconn, Family::V4));
    assert!(unconnected_record.remote_ip.is_unspecified());
    let connected_record = udp(connected.local_addr().unwrap());
    assert_eq!((connected_record.state, connected_record.family), (SocketState::Established, Family::V6));
    assert_eq!(
        SocketAddr::new(connected_record.remote_ip, connected_record.remote_port),
        peer.local_addr().unwrap()
    );
    for record in [unconnected_record, connected_record] {
        assert_eq!(record.pid, Some(std::process::id()));
        assert_eq!(
            (record.bytes_sent, record.bytes_received),
            (None, None),
            "Linux keeps no UDP byte counters"
        );
    }
}

#[test]
fn a_closed_connection_is_reported_closed_and_leaves_the_snapshot() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"hello").unwrap();
    let mut greeting = [0; 5];
    server.read_exact(&mut greeting).unwrap();
    let (client_address, server_address) = (client.local_addr().unwrap(), server.local_addr().unwrap());

    let mut collector = collector();
    let mut tracker = ConnectionTracker::new();
    let before = collect_until(&mut collector, |snapshot| {
        find(snapshot, client_address, server_address).is_some_and(|record| record.bytes_sent == Some(5))
    });
    let opened = tracker.update(before.timestamp, &before.connections);
    assert!(opened.iter().any(|event| event.change == ConnectionChange::New
        && event.record.local_port == client_address.port()
        && event.bytes_sent_delta == Some(5)));

    // The client closes first: its side goes to TIME_WAIT, the server's disappears.
    drop(client);
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).unwrap();
    drop(server);
    let after =
        collect_until(&mut collector, |snapshot| find(snapshot, server_address, client_address).is_none());
    assert!(find(&after, server_address, client_address).is_none(), "the server side is gone");
    if let Some(client_side) = find(&after, client_address, server_address) {
        assert_eq!((client_side.state, client_side.pid), (SocketState::TimeWait, None));
    }
    let closed: Vec<_> = tracker
        .update(after.timestamp, &after.connections)
        .into_iter()
        .filter(|event| event.change == ConnectionChange::Closed)
        .collect();
    for (local, remote) in [(client_address, server_address), (server_address, client_address)] {
        let event = closed
            .iter()
            .find(|event| {
                event.record.local_port == local.port() && event.record.remote_port == remote.port()
            })
            .unwrap_or_else(|| panic!("{local} -> {remote} reported closed"));
        assert_eq!(event.record.pid, Some(std::process::id()), "the owner is kept in the closed event");
        assert_eq!(event.record.bytes_sent.unwrap() + event.record.bytes_received.unwrap(), 5);
    }
}

/// Not a test of its own: the body of the child process of
/// `a_connection_of_a_child_process_is_attributed_to_the_child`, which runs a copy of this binary
/// with the address to connect to in the environment.
#[test]
fn probe_child_entry() {
    let Ok(address) = std::env::var(PROBE_ADDRESS_VARIABLE) else { return };
    let mut stream = TcpStream::connect(address).unwrap();
    stream.write_all(&[7; 4096]).unwrap();
    // Stay connected until the parent closes its side.
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
}

#[test]
fn a_connection_of_a_child_process_is_attributed_to_the_child() {
    // A copy under another name, so that the child's name and path differ from this process's.
    let directory = std::env::temp_dir().join(format!("netmon-child-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let probe = directory.join("netmon-probe");
    std::fs::copy(std::env::current_exe().unwrap(), &probe).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut child = Command::new(&probe)
        .args(["--exact", "probe_child_entry", "--test-threads=1"])
        .env(PROBE_ADDRESS_VARIABLE, listener.local_addr().unwrap().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (mut server, child_address) = listener.accept().unwrap();
    let mut received = vec![0; 4096];
    server.read_exact(&mut received).unwrap();

    let mut collector = collector();
    let snapshot = collect_until(&mut collector, |snapshot| {
        find(snapshot, child_address, server.local_addr().unwrap())
            .is_some_and(|record| record.bytes_sent == Some(4096))
    });
    let record =
        find(&snapshot, child_address, server.local_addr().unwrap()).expect("the child's socket is listed");
    assert_eq!(record.pid, Some(child.id()));
    assert_eq!(record.process_name.as_deref(), Some("netmon-probe"));
    assert_eq!(record.process_path.as_deref(), probe.to_str());
    assert_eq!(record.bytes_sent, Some(4096));
    let info = snapshot.process_info.iter().find(|info| info.pid == child.id()).expect("child details");
    assert_eq!(info.ppid, Some(std::process::id()));
    assert!(info.cmdline.iter().any(|argument| argument == "probe_child_entry"));
    let ours = find(&snapshot, server.local_addr().unwrap(), child_address).expect("our side is listed");
    assert_eq!(ours.pid, Some(std::process::id()));

    drop(server);
    assert!(child.wait().unwrap().success());
    std::fs::remove_dir_all(&directory).unwrap();
}
