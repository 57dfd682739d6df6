//! The rest between a server's warm-up and its timed requests: the latency tables measure a
//! burst arriving at a server that has caught up, so the rest lasts until the work the warm-up
//! left in the background (vault files settled from the sample journal, compression) is done.
//! That is read from outside, as for any executable `--compare` is given: the servers' CPU time
//! and disk traffic, from /proc, stop growing.

use std::time::{Duration, Instant};

/// How often the servers are looked at.
const WINDOW: Duration = Duration::from_millis(250);
/// CPU time a quiet server may still use in a window, in clock ticks (10 ms each on Linux):
/// a collection of its network monitor, a metrics scrape.
const QUIET_TICKS: u64 = 3;
/// Disk traffic a quiet server may still cause in a window.
const QUIET_BYTES: u64 = 256 * 1024;
/// Windows in a row a server must be quiet in.
const QUIET_WINDOWS: u32 = 2;
/// The longest rest: a server still busy by then is measured busy, with a warning.
const LONGEST: Duration = Duration::from_secs(120);

/// CPU ticks and bytes read from or written to storage by process `pid` since it started.
fn activity(pid: u32) -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command name (which may hold spaces) come the state, then fields 4 on;
    // utime and stime are fields 14 and 15.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index - 3).and_then(|field| field.parse::<u64>().ok());
    let cpu = ticks(14).zip(ticks(15)).map(|(user, system)| user + system);
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    let bytes = |name: &str| {
        io.lines().find_map(|line| line.strip_prefix(name)).and_then(|value| value.trim().parse::<u64>().ok())
    };
    match (cpu, bytes("read_bytes:"), bytes("write_bytes:")) {
        (Some(cpu), Some(read), Some(written)) => Ok((cpu, read + written)),
        _ => anyhow::bail!("unreadable /proc/{pid}/stat or io"),
    }
}

/// Rests at least `least`, then until every server in `pids` has been quiet for
/// [`QUIET_WINDOWS`] windows in a row (or [`LONGEST`] has passed).
pub async fn rest(pids: &[u32], least: Duration) {
    let started = Instant::now();
    tokio::time::sleep(least).await;
    let mut last: Vec<Option<(u64, u64)>> = pids.iter().map(|&pid| activity(pid).ok()).collect();
    let mut quiet_windows = 0;
    while quiet_windows < QUIET_WINDOWS {
        if started.elapsed() >= LONGEST {
            eprintln!("warning: the servers were still busy after {LONGEST:?} of rest; measuring anyway");
            break;
        }
        tokio::time::sleep(WINDOW).await;
        let now: Vec<Option<(u64, u64)>> = pids.iter().map(|&pid| activity(pid).ok()).collect();
        // A server whose activity cannot be read (not Linux) counts as quiet.
        let quiet = last.iter().zip(&now).all(|(before, after)| match (before, after) {
            (Some((cpu_before, io_before)), Some((cpu_after, io_after))) => {
                cpu_after.saturating_sub(*cpu_before) <= QUIET_TICKS
                    && io_after.saturating_sub(*io_before) <= QUIET_BYTES
            }
            _ => true,
        });
        quiet_windows = if quiet { quiet_windows + 1 } else { 0 };
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_activity_of_this_process_is_read_and_grows_with_its_work() {
        let (cpu_before, _) = activity(std::process::id()).unwrap();
        // Work until 50 ms of CPU time show (however busy the machine), for at most 30 s.
        let started = Instant::now();
        let mut spin = 0u64;
        let cpu_after = loop {
            for _ in 0..1_000_000 {
                spin = std::hint::black_box(spin.wrapping_add(1));
            }
            let (cpu, _) = activity(std::process::id()).unwrap();
            if cpu >= cpu_before + 5 || started.elapsed() > Duration::from_secs(30) {
                break cpu;
            }
        };
        assert!(
            cpu_after >= cpu_before + 5,
            "{cpu_before} -> {cpu_after} ticks after {:?} of work",
            started.elapsed()
        );
    }
}
