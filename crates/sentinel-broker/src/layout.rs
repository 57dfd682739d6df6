//! Where things live on the NATS server, derived from the prefix, and which partition a key
//! belongs to. Every replica and worker must agree on both, whatever its version or platform:
//! the partition is the first 8 bytes of the key's SHA-256, big-endian, modulo the number of
//! partitions (never std's hasher, whose output may change between Rust releases).

use sha2::{Digest, Sha256};

/// The partition of `key` among `partitions` (at least 1).
pub(crate) fn partition_of(key: &str, partitions: u32) -> u32 {
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0; 8];
    first.copy_from_slice(&digest[..8]);
    // The remainder is below `partitions`, a u32.
    (u64::from_be_bytes(first) % u64::from(partitions.max(1))) as u32
}

const DESCRIPTION_START: &str = "Sentinel's connection records, in ";
const DESCRIPTION_END: &str = " partitions";

/// The names of one prefix's stream, subjects and consumers.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    prefix: String,
    pub(crate) partitions: u32,
}

impl Layout {
    pub(crate) fn new(prefix: &str, partitions: u32) -> Layout {
        Layout { prefix: prefix.to_owned(), partitions }
    }

    /// `<PREFIX>_RECORDS`.
    pub(crate) fn stream(&self) -> String {
        format!("{}_RECORDS", self.prefix.to_ascii_uppercase())
    }

    /// The stream's description, which also records the number of partitions (stream
    /// metadata needs nats-server 2.10).
    pub(crate) fn description(&self) -> String {
        format!("{DESCRIPTION_START}{}{DESCRIPTION_END}", self.partitions)
    }

    /// The number of partitions a stream's description records, if it is one of ours.
    pub(crate) fn partitions_described(description: &str) -> Option<u32> {
        description.strip_prefix(DESCRIPTION_START)?.strip_suffix(DESCRIPTION_END)?.parse().ok()
    }

    /// `<prefix>.records.*`: every partition's subject, the stream's one filter.
    pub(crate) fn records_wildcard(&self) -> String {
        format!("{}.records.*", self.prefix)
    }

    /// `<prefix>.records.<partition>`.
    pub(crate) fn records_subject(&self, partition: u32) -> String {
        format!("{}.records.{partition}", self.prefix)
    }

    /// `<PREFIX>_scorer_<partition>`: the durable consumer of a partition.
    pub(crate) fn consumer(&self, partition: u32) -> String {
        format!("{}_scorer_{partition}", self.prefix.to_ascii_uppercase())
    }

    /// `<prefix>.results`: core NATS, not stored.
    pub(crate) fn results_subject(&self) -> String {
        format!("{}.results", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_across_releases() {
        // Pinned values: a change here would send hosts to other workers after an upgrade.
        // SHA-256("") starts e3b0c442 98fc1c14; 0xe3b0c44298fc1c14 % 16 = 4.
        assert_eq!(partition_of("", 16), 4);
        // Computed independently (Python's hashlib): int.from_bytes(sha256(key)[:8], "big") % n.
        assert_eq!(partition_of("web-01", 16), 7);
        assert_eq!(partition_of("db-02", 16), 7);
        assert_eq!(partition_of("laptop-ada", 16), 6);
        assert_eq!(partition_of("web-01", 1024), 71);
        assert_eq!(partition_of("db-02", 1024), 807);
        assert_eq!(partition_of("laptop-ada", 1024), 454);
        assert_eq!(partition_of("anything", 1), 0);
    }

    #[test]
    fn keys_spread_over_all_partitions() {
        let mut counts = [0u32; 16];
        for host in 0..1600 {
            counts[partition_of(&format!("host-{host}"), 16) as usize] += 1;
        }
        // 100 expected per partition; a stable hash of distinct keys stays well within 50..150.
        assert!(counts.iter().all(|&count| (50..150).contains(&count)), "{counts:?}");
    }

    #[test]
    fn names_follow_the_prefix() {
        let layout = Layout::new("prod-eu_1", 8);
        assert_eq!(layout.stream(), "PROD-EU_1_RECORDS");
        assert_eq!(layout.records_wildcard(), "prod-eu_1.records.*");
        assert_eq!(layout.records_subject(7), "prod-eu_1.records.7");
        assert_eq!(layout.consumer(7), "PROD-EU_1_scorer_7");
        assert_eq!(layout.results_subject(), "prod-eu_1.results");
        assert_eq!(layout.description(), "Sentinel's connection records, in 8 partitions");
        assert_eq!(Layout::partitions_described(&layout.description()), Some(8));
        assert_eq!(Layout::partitions_described("someone else's stream"), None);
    }
}
