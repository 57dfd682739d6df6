//! Isolation Forest (Liu, Ting & Zhou 2008) with scikit-learn's semantics: each
//! tree isolates a subsample drawn without replacement (256 rows by default),
//! splits on a feature drawn uniformly among those not constant in the node at a
//! threshold drawn uniformly between the feature's minimum and maximum there, and
//! stops at depth ⌈log₂ ψ⌉; a row's path length is its leaf's depth plus c(n), the
//! average path length of an unbuilt tree over the n training rows left in the
//! leaf. The score is 2^(−E[h(x)] / c(ψ)), scikit-learn's `-score_samples`.
//!
//! Trees are stored as perfect binary trees in heap order (children of node i are
//! 2i+1 and 2i+2): a leaf above the maximum depth becomes a chain of pass-through
//! nodes whose threshold is +∞, so every row takes exactly `depth` branch-free
//! steps. That makes scoring a tight loop without per-row allocation, and a forest
//! of 100 trees a few hundred kilobytes. Thresholds are `f32`: training routes
//! rows with the same `f32` comparison that scoring uses, so both always agree.

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::detector::{Contamination, Detector, contamination_threshold};
use crate::error::{AnomalyError, Result};
use crate::matrix::Matrix;

/// Hyper-parameters of [`IsolationForest::fit`]; the defaults are scikit-learn's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IsolationForestParams {
    pub n_trees: usize,
    /// Rows drawn for each tree, capped at the number of training rows.
    pub max_samples: usize,
    pub contamination: Contamination,
    pub seed: u64,
}

impl Default for IsolationForestParams {
    fn default() -> Self {
        IsolationForestParams { n_trees: 100, max_samples: 256, contamination: Contamination::Auto, seed: 0 }
    }
}

/// The largest subsample accepted: trees are perfect to depth ⌈log₂ ψ⌉, so their
/// size doubles with each doubling of ψ.
const MAX_SUBSAMPLE: usize = 1 << 16;

/// A fitted Isolation Forest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IsolationForest {
    n_features: usize,
    n_trees: usize,
    depth: u32,
    /// c(ψ): the normaliser of the mean path length.
    normaliser: f64,
    /// Per tree, `2^depth − 1` split features then thresholds, in heap order.
    features: Vec<u32>,
    #[serde(with = "f32_bits")]
    thresholds: Vec<f32>,
    /// Per tree, `2^depth` leaf path lengths (depth + c(rows in the leaf)).
    leaf_lengths: Vec<f32>,
    threshold: f64,
}

impl IsolationForest {
    pub fn fit(data: &Matrix, params: &IsolationForestParams) -> Result<IsolationForest> {
        data.check_trainable()?;
        params.contamination.validate()?;
        if params.n_trees == 0 {
            return Err(AnomalyError::Parameter("n_trees must be at least 1".into()));
        }
        if !(1..=MAX_SUBSAMPLE).contains(&params.max_samples) {
            return Err(AnomalyError::Parameter(format!("max_samples must be in 1..={MAX_SUBSAMPLE}")));
        }
        if data.cols() > u32::MAX as usize {
            return Err(AnomalyError::Parameter("too many features".into()));
        }
        let subsample = params.max_samples.min(data.rows());
        let depth = subsample.next_power_of_two().trailing_zeros();
        let trees: Vec<TreeArrays> = (0..params.n_trees)
            .into_par_iter()
            .map(|tree| {
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(tree_seed(params.seed, tree));
                let rows = sample(&mut rng, data.rows(), subsample).into_vec();
                TreeArrays::grow(data, rows, depth, &mut rng)
            })
            .collect();
        let mut forest = IsolationForest {
            n_features: data.cols(),
            n_trees: params.n_trees,
            depth,
            normaliser: average_path_length(subsample),
            features: Vec::with_capacity(trees.len() * ((1 << depth) - 1)),
            thresholds: Vec::with_capacity(trees.len() * ((1 << depth) - 1)),
            leaf_lengths: Vec::with_capacity(trees.len() << depth),
            threshold: 0.5,
        };
        for tree in trees {
            forest.features.extend(tree.features);
            forest.thresholds.extend(tree.thresholds);
            forest.leaf_lengths.extend(tree.leaf_lengths);
        }
        if let Contamination::Fraction(fraction) = params.contamination {
            forest.threshold = contamination_threshold(&forest.score(data)?, fraction);
        }
        Ok(forest)
    }

    /// The mean path length of `x` over all trees.
    fn mean_path_length(&self, x: &[f64]) -> f64 {
        let internal = (1usize << self.depth) - 1;
        let leaves = 1usize << self.depth;
        let mut total = 0.0f64;
        for tree in 0..self.n_trees {
            let features = &self.features[tree * internal..(tree + 1) * internal];
            let thresholds = &self.thresholds[tree * internal..(tree + 1) * internal];
            let mut node = 0usize;
            for _ in 0..self.depth {
                // Validated on fit and load: features < n_features, node < internal.
                let goes_right = (x[features[node] as usize] as f32) > thresholds[node];
                node = 2 * node + 1 + goes_right as usize;
            }
            total += self.leaf_lengths[tree * leaves + node - internal] as f64;
        }
        total / self.n_trees as f64
    }

    /// Checks a deserialised forest so that scoring with it cannot index out of bounds.
    pub(crate) fn validate(&self) -> Result<()> {
        let corrupt = |what: &str| Err(AnomalyError::CorruptModel(format!("isolation forest: {what}")));
        if self.n_trees == 0 || self.n_features == 0 || self.depth > MAX_SUBSAMPLE.trailing_zeros() {
            return corrupt("bad shape");
        }
        let internal = ((1usize << self.depth) - 1) * self.n_trees;
        if self.features.len() != internal
            || self.thresholds.len() != internal
            || self.leaf_lengths.len() != self.n_trees << self.depth
        {
            return corrupt("array lengths do not match the tree shape");
        }
        if self.features.iter().any(|&f| f as usize >= self.n_features) {
            return corrupt("split feature out of range");
        }
        if self.thresholds.iter().any(|t| t.is_nan())
            || self.leaf_lengths.iter().any(|l| !l.is_finite())
            || !(self.normaliser.is_finite() && self.threshold.is_finite())
        {
            return corrupt("non-finite value");
        }
        Ok(())
    }

    /// Bytes held by the fitted trees.
    pub fn model_bytes(&self) -> usize {
        self.features.len() * 4 + self.thresholds.len() * 4 + self.leaf_lengths.len() * 4
    }
}

impl Detector for IsolationForest {
    fn n_features(&self) -> usize {
        self.n_features
    }

    fn score_checked(&self, x: &[f64]) -> f64 {
        if self.normaliser == 0.0 {
            // A forest fitted on one row isolates nothing: scikit-learn's score is then 2^0.
            return 1.0;
        }
        (-self.mean_path_length(x) / self.normaliser).exp2()
    }

    fn threshold(&self) -> f64 {
        self.threshold
    }
}

/// One tree while it is grown.
struct TreeArrays {
    features: Vec<u32>,
    thresholds: Vec<f32>,
    leaf_lengths: Vec<f32>,
}

impl TreeArrays {
    fn grow(data: &Matrix, mut rows: Vec<usize>, depth: u32, rng: &mut Xoshiro256PlusPlus) -> TreeArrays {
        let internal = (1usize << depth) - 1;
        let mut tree = TreeArrays {
            features: vec![0; internal],
            // +∞ makes a node pass every row to its left child.
            thresholds: vec![f32::INFINITY; internal],
            leaf_lengths: vec![0.0; internal + 1],
        };
        let mut candidates: Vec<usize> = (0..data.cols()).collect();
        tree.split(data, &mut rows, 0, 0, depth, &mut candidates, rng);
        tree
    }

    #[allow(clippy::too_many_arguments)]
    fn split(
        &mut self,
        data: &Matrix,
        rows: &mut [usize],
        node: usize,
        level: u32,
        depth: u32,
        candidates: &mut [usize],
        rng: &mut Xoshiro256PlusPlus,
    ) {
        let chosen =
            if level < depth && rows.len() > 1 { choose_split(data, rows, candidates, rng) } else { None };
        let Some((feature, threshold)) = chosen else {
            // A leaf at `level`: its pass-through descendants lead to the leftmost leaf below it.
            let mut leftmost = node;
            for _ in level..depth {
                leftmost = 2 * leftmost + 1;
            }
            self.leaf_lengths[leftmost - self.features.len()] =
                (level as f64 + average_path_length(rows.len())) as f32;
            return;
        };
        self.features[node] = feature as u32;
        self.thresholds[node] = threshold;
        let mut boundary = 0;
        for i in 0..rows.len() {
            if (data.row(rows[i])[feature] as f32) <= threshold {
                rows.swap(i, boundary);
                boundary += 1;
            }
        }
        let (left, right) = rows.split_at_mut(boundary);
        self.split(data, left, 2 * node + 1, level + 1, depth, candidates, rng);
        self.split(data, right, 2 * node + 2, level + 1, depth, candidates, rng);
    }
}

/// Draws features in random order until one is not constant over `rows`, as
/// scikit-learn's random splitter does, and a threshold uniform in [min, max).
fn choose_split(
    data: &Matrix,
    rows: &[usize],
    candidates: &mut [usize],
    rng: &mut Xoshiro256PlusPlus,
) -> Option<(usize, f32)> {
    let mut remaining = candidates.len();
    while remaining > 0 {
        let pick = rng.random_range(0..remaining);
        let feature = candidates[pick];
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        for &row in rows {
            let value = data.row(row)[feature];
            min = min.min(value);
            max = max.max(value);
        }
        if (max as f32) > (min as f32) {
            let mut threshold = min + (max - min) * rng.random::<f64>();
            if threshold >= max {
                threshold = min;
            }
            // Rounding to f32 may land on max; min keeps both sides non-empty.
            let mut threshold32 = threshold as f32;
            if threshold32 >= max as f32 {
                threshold32 = min as f32;
            }
            return Some((feature, threshold32));
        }
        remaining -= 1;
        candidates.swap(pick, remaining);
    }
    None
}

/// c(n): the average path length of an unsuccessful search in a binary search
/// tree of n keys, scikit-learn's `_average_path_length`.
pub(crate) fn average_path_length(n: usize) -> f64 {
    const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;
    match n {
        0 | 1 => 0.0,
        2 => 1.0,
        _ => {
            let n = n as f64;
            2.0 * ((n - 1.0).ln() + EULER_GAMMA) - 2.0 * (n - 1.0) / n
        }
    }
}

/// An independent seed per tree, so trees can be grown in parallel and still be
/// the same for a given seed whatever the number of threads (SplitMix64 finaliser).
fn tree_seed(seed: u64, tree: usize) -> u64 {
    let mut z = seed.wrapping_add((tree as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Thresholds saved as their bit patterns: JSON has no infinity, and pass-through
/// nodes use +∞. NaN patterns are refused by [`IsolationForest::validate`].
mod f32_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(values: &[f32], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(values.iter().map(|v| v.to_bits()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f32>, D::Error> {
        Ok(Vec::<u32>::deserialize(deserializer)?.into_iter().map(f32::from_bits).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::average_path_length;

    #[test]
    fn average_path_length_is_scikit_learns() {
        // sklearn.ensemble._iforest._average_path_length (tests/fixtures/make_fixtures.py).
        let expected =
            [(1, 0.0), (2, 1.0), (3, 1.207392357589623), (10, 3.748880484475505), (256, 10.244770920119917)];
        for (n, value) in expected {
            assert!((average_path_length(n) - value).abs() < 1e-12, "c({n})");
        }
        assert!((average_path_length(1000) - 12.969940887100174).abs() < 1e-12);
    }
}
