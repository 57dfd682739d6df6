//! Per-interface traffic counters from `/proc/net/dev` (the network namespace of this process).

use std::time::SystemTime;

use crate::collector::CollectError;
use crate::record::InterfaceRecord;

const NET_DEV: &str = "/proc/net/dev";

pub(crate) fn read_interfaces(
    host: &str,
    timestamp: SystemTime,
) -> Result<Vec<InterfaceRecord>, CollectError> {
    let text = std::fs::read_to_string(NET_DEV)
        .map_err(|source| CollectError::Proc { path: NET_DEV.into(), source })?;
    Ok(parse_net_dev(&text, host, timestamp))
}

/// Parses the table: two header lines, then `name: rx(bytes packets errs drop fifo frame
/// compressed multicast) tx(bytes packets errs drop fifo colls carrier compressed)`. A line that
/// does not fit is skipped.
fn parse_net_dev(text: &str, host: &str, timestamp: SystemTime) -> Vec<InterfaceRecord> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let counters: Vec<u64> =
                counters.split_ascii_whitespace().map(str::parse).collect::<Result<_, _>>().ok()?;
            if counters.len() < 16 {
                return None;
            }
            Some(InterfaceRecord {
                timestamp,
                host: host.to_owned(),
                name: name.trim().to_owned(),
                rx_bytes: counters[0],
                rx_packets: counters[1],
                rx_errors: counters[2],
                rx_drops: counters[3],
                tx_bytes: counters[8],
                tx_packets: counters[9],
                tx_errors: counters[10],
                tx_drops: counters[11],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_taken_from_their_columns_and_odd_lines_skipped() {
        let text = "Inter-|   Receive                            |  Transmit\n \
            face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
            lo: 1000 10 1 2 0 0 0 0 2000 20 3 4 0 0 0 0\n  \
            eth0: garbage\n";
        let records = parse_net_dev(text, "h", SystemTime::UNIX_EPOCH);
        assert_eq!(records.len(), 1);
        let lo = &records[0];
        assert_eq!(
            (lo.name.as_str(), lo.rx_bytes, lo.rx_packets, lo.rx_errors, lo.rx_drops),
            ("lo", 1000, 10, 1, 2)
        );
        assert_eq!((lo.tx_bytes, lo.tx_packets, lo.tx_errors, lo.tx_drops), (2000, 20, 3, 4));
    }
}
