//! Byte-value statistics (histograms and Shannon entropy) of file regions: packed or encrypted
//! code and data show up as entropy close to 8 bits per byte.

/// Counts of each byte value in a region.
#[derive(Clone)]
pub(crate) struct ByteCounts {
    counts: [u64; 256],
    total: u64,
}

impl ByteCounts {
    pub(crate) fn new() -> Self {
        Self { counts: [0; 256], total: 0 }
    }

    pub(crate) fn of(bytes: &[u8]) -> Self {
        let mut counts = Self::new();
        counts.add(bytes);
        counts
    }

    pub(crate) fn add(&mut self, bytes: &[u8]) {
        // Four tables: consecutive equal bytes (runs of zeros are common in PE files) then
        // increment different counters instead of waiting on the same one.
        let mut lanes = [[0u32; 256]; 4];
        // u32 counters cannot overflow within a chunk of 4 × 2^30 bytes.
        for chunk in bytes.chunks(1 << 30) {
            let mut quads = chunk.chunks_exact(4);
            for quad in &mut quads {
                lanes[0][usize::from(quad[0])] += 1;
                lanes[1][usize::from(quad[1])] += 1;
                lanes[2][usize::from(quad[2])] += 1;
                lanes[3][usize::from(quad[3])] += 1;
            }
            for &b in quads.remainder() {
                lanes[0][usize::from(b)] += 1;
            }
            for lane in &mut lanes {
                for (total, count) in self.counts.iter_mut().zip(lane.iter_mut()) {
                    *total += u64::from(*count);
                    *count = 0;
                }
            }
        }
        self.total += bytes.len() as u64;
    }

    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Shannon entropy in bits per byte, 0 for an empty region.
    pub(crate) fn entropy(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let total = self.total as f64;
        self.counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / total;
                -p * p.log2()
            })
            .sum()
    }

    /// Fraction of the bytes in each of `N` equal ranges of byte values (0x00–0x0F, 0x10–0x1F…
    /// for N = 16); all zero for an empty region.
    pub(crate) fn histogram<const N: usize>(&self) -> [f64; N] {
        let mut buckets = [0.0; N];
        if self.total == 0 {
            return buckets;
        }
        let width = 256 / N;
        for (value, &count) in self.counts.iter().enumerate() {
            buckets[value / width] += count as f64;
        }
        buckets.map(|count| count / self.total as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::ByteCounts;

    #[test]
    fn entropy_of_uniform_and_constant_regions() {
        let all_values: Vec<u8> = (0..=255).collect();
        assert!((ByteCounts::of(&all_values).entropy() - 8.0).abs() < 1e-12);
        assert_eq!(ByteCounts::of(&[7; 100]).entropy(), 0.0);
        assert_eq!(ByteCounts::of(&[]).entropy(), 0.0);
        assert!((ByteCounts::of(&[0, 1]).entropy() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn histogram_buckets_byte_ranges() {
        let hist = ByteCounts::of(&[0x00, 0x0F, 0x10, 0xFF]).histogram::<16>();
        assert_eq!(hist[0], 0.5);
        assert_eq!(hist[1], 0.25);
        assert_eq!(hist[15], 0.25);
        assert_eq!(hist.iter().sum::<f64>(), 1.0);
    }

    #[test]
    fn counts_accumulate_over_calls_and_odd_lengths() {
        let mut counts = ByteCounts::new();
        counts.add(&[1, 2, 3, 4, 5]);
        counts.add(&[1]);
        assert_eq!(counts.total(), 6);
        let hist = counts.histogram::<256>();
        assert_eq!(hist[1], 2.0 / 6.0);
        assert_eq!(hist[5], 1.0 / 6.0);
    }
}
