//! CPU cost of one Linux collection with 5,000 open sockets (2,500 connected TCP pairs on
//! 127.0.0.1), the figure behind the "under 5 % of one core at a 1 s interval" target.
//!
//! CPU time is the collecting thread's (CLOCK_THREAD_CPUTIME_ID), which includes the kernel's
//! work building the netlink dump and serving `/proc`, since both run in that thread's syscalls.
//! Run with `cargo bench -p sentinel-netmon --bench collect`; the figures go to
//! docs/benchmarks.md.

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use sentinel_netmon::{Collector, ConnectionTracker, LinuxCollector};

const PAIRS: usize = 2500;
const WARM_COLLECTIONS: usize = 50;
const COLD_COLLECTIONS: usize = 5;

fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for the call to fill.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

fn raise_open_file_limit(wanted: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid rlimit for the calls to read and write.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted;
            limit.rlim_max = limit.rlim_max.max(wanted);
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit),
                0,
                "cannot raise RLIMIT_NOFILE to {wanted}"
            );
        }
    }
}

struct Measure {
    cpu: Vec<Duration>,
    wall: Vec<Duration>,
}

impl Measure {
    fn report(&self, label: &str) {
        let mean = |values: &[Duration]| values.iter().sum::<Duration>() / values.len() as u32;
        let mut cpu = self.cpu.clone();
        cpu.sort();
        let p95 = cpu[(cpu.len() * 95 / 100).min(cpu.len() - 1)];
        println!(
            "{label}: cpu mean {:.2} ms (p95 {:.2} ms, max {:.2} ms), wall mean {:.2} ms, {:.2} % of one core at 1 s",
            mean(&self.cpu).as_secs_f64() * 1e3,
            p95.as_secs_f64() * 1e3,
            cpu[cpu.len() - 1].as_secs_f64() * 1e3,
            mean(&self.wall).as_secs_f64() * 1e3,
            mean(&self.cpu).as_secs_f64() * 100.0,
        );
    }
}

fn timed<T>(measure: &mut Measure, work: impl FnOnce() -> T) -> T {
    let (cpu, wall) = (thread_cpu_time(), Instant::now());
    let result = work();
    measure.cpu.push(thread_cpu_time() - cpu);
    measure.wall.push(wall.elapsed());
    result
}

fn main() {
    raise_open_file_limit(4 * PAIRS as u64 + 1024);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let address = listener.local_addr().expect("listener address");
    let mut sockets = Vec::with_capacity(2 * PAIRS);
    for _ in 0..PAIRS {
        let client = TcpStream::connect(address).expect("connect on loopback");
        let (server, _) = listener.accept().expect("accept on loopback");
        sockets.push(client);
        sockets.push(server);
    }
    let host = LinuxCollector::kernel_hostname().expect("host name");

    // Cold: a new collector walks all of /proc to find the owners of 5,000 unknown sockets.
    let mut cold = Measure { cpu: Vec::new(), wall: Vec::new() };
    for _ in 0..COLD_COLLECTIONS {
        let mut collector = LinuxCollector::new(host.clone()).expect("netlink sock_diag");
        timed(&mut cold, || collector.collect().expect("collection"));
    }

    // Warm: the steady state at 1 s, owners cached; the tracker compares with the last snapshot.
    let mut collector = LinuxCollector::new(host).expect("netlink sock_diag");
    let mut tracker = ConnectionTracker::new();
    let first = collector.collect().expect("collection");
    tracker.update(first.timestamp, &first.connections);
    let mut warm = Measure { cpu: Vec::new(), wall: Vec::new() };
    let mut tracked = Measure { cpu: Vec::new(), wall: Vec::new() };
    let mut seen = 0;
    for _ in 0..WARM_COLLECTIONS {
        let snapshot = timed(&mut warm, || collector.collect().expect("collection"));
        timed(&mut tracked, || tracker.update(snapshot.timestamp, &snapshot.connections));
        seen = snapshot.connections.iter().filter(|record| record.pid == Some(std::process::id())).count();
    }

    println!(
        "sockets owned by the benchmark and seen: {seen} (expected {}), {} cores",
        2 * PAIRS + 1,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    cold.report(&format!("cold collection (first, full /proc walk), {COLD_COLLECTIONS} runs"));
    warm.report(&format!("warm collection, {WARM_COLLECTIONS} runs"));
    tracked.report("connection tracker update (5,000 idle connections)");
    drop(sockets);
}
