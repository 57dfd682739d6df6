//! Quantile binning of feature values into at most 255 value bins plus one bin for
//! missing values (NaN), so that histograms are small fixed-size arrays and split
//! finding costs O(bins) instead of O(rows).
//!
//! A bin is identified by its upper bound: value `x` falls in the first bin whose
//! threshold is `>= x` (numpy's `searchsorted(side="left")`, as in scikit-learn), so
//! a split "bin <= b" is exactly the real-valued test `x <= thresholds[b]`, which is
//! what trained trees store.

use rand::SeedableRng;
use rand::seq::index::sample;
use rand_xoshiro::Xoshiro256PlusPlus;

/// Bin index reserved for missing values.
pub(crate) const MISSING_BIN: u8 = 255;
/// Number of histogram slots per feature (value bins and the missing bin).
pub(crate) const HISTOGRAM_SLOTS: usize = 256;
/// Largest number of value bins a feature can have (the missing bin is extra).
pub const MAX_VALUE_BINS: usize = 255;
/// Bin boundaries are computed on at most this many rows, like scikit-learn, so
/// that binning stays cheap on large data sets.
const BINNING_SUBSAMPLE: usize = 200_000;

/// Maps infinities to the largest finite values so that training (bins) and
/// prediction (threshold comparisons) treat them identically; NaN stays NaN.
#[inline]
pub(crate) fn finite_or_nan(x: f64) -> f64 {
    x.clamp(f64::MIN, f64::MAX)
}

/// The bin boundaries of every feature, learnt from training data.
#[derive(Debug, Clone)]
pub(crate) struct BinMapper {
    /// Per feature, increasing upper bounds of all value bins but the last.
    thresholds: Vec<Vec<f64>>,
}

impl BinMapper {
    /// Learns boundaries from the rows `rows` of the row-major matrix `values`.
    pub(crate) fn fit(values: &[f64], n_features: usize, rows: &[usize], max_bins: usize, seed: u64) -> Self {
        let max_bins = max_bins.clamp(2, MAX_VALUE_BINS);
        let subsample: Vec<usize> = if rows.len() > BINNING_SUBSAMPLE {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            let mut picked: Vec<usize> =
                sample(&mut rng, rows.len(), BINNING_SUBSAMPLE).into_iter().map(|k| rows[k]).collect();
            picked.sort_unstable();
            picked
        } else {
            rows.to_vec()
        };
        let thresholds = (0..n_features)
            .map(|f| {
                let mut column: Vec<f64> = subsample
                    .iter()
                    .map(|&r| finite_or_nan(values[r * n_features + f]))
                    .filter(|x| !x.is_nan())
                    .collect();
                column.sort_unstable_by(f64::total_cmp);
                feature_thresholds(&column, max_bins)
            })
            .collect();
        BinMapper { thresholds }
    }

    /// Number of value bins (without the missing bin) of feature `f`.
    pub(crate) fn value_bins(&self, f: usize) -> usize {
        self.thresholds[f].len() + 1
    }

    /// The real-valued upper bound of bin `bin` of feature `f`; the last value bin
    /// has no bound and reports the largest finite value.
    pub(crate) fn upper_bound(&self, f: usize, bin: usize) -> f64 {
        self.thresholds[f].get(bin).copied().unwrap_or(f64::MAX)
    }

    /// Bins the rows `rows` of `values` into a feature-major matrix: the bins of
    /// feature `f` are `result[f * rows.len()..(f + 1) * rows.len()]`.
    pub(crate) fn transform(&self, values: &[f64], n_features: usize, rows: &[usize]) -> Vec<u8> {
        let mut binned = vec![0u8; n_features * rows.len()];
        for (f, column) in binned.chunks_mut(rows.len().max(1)).enumerate().take(n_features) {
            let bounds = &self.thresholds[f];
            for (slot, &r) in column.iter_mut().zip(rows) {
                let x = finite_or_nan(values[r * n_features + f]);
                *slot = if x.is_nan() {
                    MISSING_BIN
                } else {
                    // At most 254 thresholds, so the index fits a value bin.
                    bounds.partition_point(|&t| t < x) as u8
                };
            }
        }
        binned
    }
}

/// Upper bounds of the bins of one sorted, NaN-free column: midpoints between
/// distinct values when there are few of them, quantiles otherwise.
fn feature_thresholds(sorted: &[f64], max_bins: usize) -> Vec<f64> {
    let mut distinct: Vec<f64> = sorted.to_vec();
    distinct.dedup();
    if distinct.len() <= max_bins {
        return distinct.windows(2).map(|w| midpoint(w[0], w[1])).collect();
    }
    // Quantiles at k / max_bins with numpy's "midpoint" interpolation.
    let last = (sorted.len() - 1) as f64;
    let mut bounds: Vec<f64> = (1..max_bins)
        .map(|k| {
            let position = last * k as f64 / max_bins as f64;
            midpoint(sorted[position.floor() as usize], sorted[position.ceil() as usize])
        })
        .collect();
    bounds.dedup();
    bounds
}

/// Halfway between two finite values, without overflowing near `f64::MAX`.
fn midpoint(a: f64, b: f64) -> f64 {
    a / 2.0 + b / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_distinct_values_get_one_bin_each() {
        let values = [3.0, 1.0, 2.0, 1.0, f64::NAN, 3.0];
        let rows: Vec<usize> = (0..values.len()).collect();
        let mapper = BinMapper::fit(&values, 1, &rows, 255, 0);
        assert_eq!(mapper.thresholds[0], vec![1.5, 2.5]);
        assert_eq!(mapper.transform(&values, 1, &rows), vec![2, 0, 1, 0, MISSING_BIN, 2]);
    }

    #[test]
    fn many_distinct_values_are_capped() {
        let values: Vec<f64> = (0..10_000).map(|i| (i * 7919 % 10_007) as f64).collect();
        let rows: Vec<usize> = (0..values.len()).collect();
        let mapper = BinMapper::fit(&values, 1, &rows, 255, 0);
        assert!(mapper.value_bins(0) <= 255);
        let binned = mapper.transform(&values, 1, &rows);
        // Quantile bins hold roughly equal numbers of rows.
        let mut counts = [0usize; 256];
        binned.iter().for_each(|&b| counts[b as usize] += 1);
        let largest = counts.iter().max().copied().unwrap_or(0);
        assert!(largest < 2 * 10_000 / 255, "largest bin holds {largest} rows");
    }

    #[test]
    fn infinities_share_the_extreme_bins() {
        let values = [f64::NEG_INFINITY, 0.0, 1.0, f64::INFINITY];
        let rows: Vec<usize> = (0..4).collect();
        let mapper = BinMapper::fit(&values, 1, &rows, 255, 0);
        assert_eq!(mapper.transform(&values, 1, &rows), vec![0, 1, 2, 3]);
    }
}
