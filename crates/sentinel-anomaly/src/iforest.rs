//! Isolation Forest (Liu, Ting & Zhou 2008) with scikit-learn's semantics: each
//! tree isolates a subsample drawn without replacement (256 rows by default),
//! splits on a feature drawn uniformly among those not constant in the node at a
//! threshold drawn uniformly between the feature's minimum and maximum there, and
//! stops at depth ⌈log₂ ψ⌉; a row's path length is its leaf's depth plus c(n), the
//! average path length of an unbuilt tree over the n training rows left in the
//! leaf. The score is 2^(−E[h(x)] / c(ψ)), scikit-learn's `-score_samples`.
//!
//! Trees are stored as perfect binary trees in heap order from 1 (children of
//! node i are 2i and 2i+1), `2^depth` slots per tree: a leaf above the maximum
//! depth becomes a chain of pass-through nodes whose threshold is +∞, so every
//! row takes exactly `depth` steps and the node reached, minus `2^depth`, is its
//! leaf, whose value already holds depth + c(n). Thresholds are `f32`, chosen so
//! that they route `f32` values exactly as scikit-learn's `f64` thresholds do; a
//! forest of 100 trees of ψ = 256 holds 300 KB.
//!
//! Batch scoring goes tree by tree over blocks of rows (see `BLOCK_ROWS`); on
//! processors with AVX-512 the blocks descend 16 rows per instruction, the top
//! five levels of each tree held in registers. Both paths give bit-identical
//! scores to the one-row path that live scoring uses.
//!
//! One file above 500 lines, on purpose: the growth of a tree fixes its layout, and the three
//! scoring paths (one row, portable blocks, AVX-512 blocks) must route every row through that
//! layout bit-identically; kept together, a change to one is seen beside the others.

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
    /// Per tree, `2^depth` slots in heap order from 1 (the children of node i are
    /// 2i and 2i + 1; slot 0 is unused): the split feature of each internal node.
    features: Vec<u32>,
    /// Per tree, the split thresholds, laid out as `features`.
    #[serde(with = "f32_bits")]
    thresholds: Vec<f32>,
    /// Per tree, `2^depth` leaf path lengths (depth + c(rows in the leaf)): the
    /// node reached after `depth` steps, minus `2^depth`, indexes them.
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
        let slots = trees.len() << depth;
        let mut forest = IsolationForest {
            n_features: data.cols(),
            n_trees: params.n_trees,
            depth,
            normaliser: average_path_length(subsample),
            features: Vec::with_capacity(slots),
            thresholds: Vec::with_capacity(slots),
            leaf_lengths: Vec::with_capacity(slots),
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

    /// The sum of the path lengths of `x` over all trees.
    fn total_path_length(&self, x: &[f64]) -> f64 {
        let slots = 1usize << self.depth;
        let mut total = 0.0f64;
        for tree in 0..self.n_trees {
            let features = &self.features[tree * slots..(tree + 1) * slots];
            let thresholds = &self.thresholds[tree * slots..(tree + 1) * slots];
            let mut node = 1usize;
            for _ in 0..self.depth {
                // Validated on fit and load: features < n_features, node < slots.
                let goes_right = (x[features[node] as usize] as f32) > thresholds[node];
                node = 2 * node + goes_right as usize;
            }
            total += self.leaf_lengths[tree * slots + node - slots] as f64;
        }
        total
    }

    /// Checks a deserialised forest so that scoring with it cannot index out of bounds.
    pub(crate) fn validate(&self) -> Result<()> {
        let corrupt = |what: &str| Err(AnomalyError::CorruptModel(format!("isolation forest: {what}")));
        if self.n_trees == 0 || self.n_features == 0 || self.depth > MAX_SUBSAMPLE.trailing_zeros() {
            return corrupt("bad shape");
        }
        let slots = self.n_trees << self.depth;
        if self.features.len() != slots || self.thresholds.len() != slots || self.leaf_lengths.len() != slots
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

    /// Scores consecutive rows (`rows` row-major, at most [`BLOCK_ROWS`] of them)
    /// into `out`, with exactly the arithmetic of [`Detector::score_checked`].
    /// `columns` is scratch space for the block transposed to `f32` columns.
    fn score_block(&self, rows: &[f64], out: &mut [f64], columns: &mut Vec<[f32; BLOCK_ROWS]>) {
        columns.clear();
        columns.resize(self.n_features, [0.0; BLOCK_ROWS]);
        for (r, row) in rows.chunks_exact(self.n_features).enumerate() {
            for (column, &value) in columns.iter_mut().zip(row) {
                column[r] = value as f32;
            }
        }
        // One copy of the descent per tree size, so that every node index is
        // provably in bounds and the inner loop carries no bounds checks.
        let totals = match self.depth {
            0 => self.route_block::<1>(columns),
            1 => self.route_block::<2>(columns),
            2 => self.route_block::<4>(columns),
            3 => self.route_block::<8>(columns),
            4 => self.route_block::<16>(columns),
            5 => self.route_block::<32>(columns),
            6 => self.route_block::<64>(columns),
            7 => self.route_block::<128>(columns),
            8 => self.route_block::<256>(columns),
            9 => self.route_block::<512>(columns),
            10 => self.route_block::<1024>(columns),
            11 => self.route_block::<2048>(columns),
            12 => self.route_block::<4096>(columns),
            13 => self.route_block::<8192>(columns),
            14 => self.route_block::<16384>(columns),
            15 => self.route_block::<32768>(columns),
            _ => self.route_block::<65536>(columns),
        };
        for (score, total) in out.iter_mut().zip(totals) {
            *score = self.score_from_total(total);
        }
    }

    /// The summed path lengths of a full block of rows through trees of `SLOTS`
    /// = 2^depth slots. Rows past the block's end are zeros; their sums are ignored.
    fn route_block<const SLOTS: usize>(&self, columns: &[[f32; BLOCK_ROWS]]) -> [f64; BLOCK_ROWS] {
        #[cfg(target_arch = "x86_64")]
        // The gathers index the block with 32-bit offsets: feature × BLOCK_ROWS + row.
        if columns.len() <= (i32::MAX as usize >> BLOCK_SHIFT)
            && std::arch::is_x86_feature_detected!("avx512f")
        {
            // SAFETY: the processor has AVX-512F, checked just above.
            return unsafe { self.route_block_avx512::<SLOTS>(columns) };
        }
        self.route_block_portable::<SLOTS>(columns)
    }

    /// [`Self::route_block`] with AVX-512: 16 rows descend per instruction,
    /// their nodes' features, thresholds and values fetched by gathers.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn route_block_avx512<const SLOTS: usize>(&self, columns: &[[f32; BLOCK_ROWS]]) -> [f64; BLOCK_ROWS] {
        use std::arch::x86_64::*;
        let mut totals = [0.0f64; BLOCK_ROWS];
        let (features, _) = self.features.as_chunks::<SLOTS>();
        let (thresholds, _) = self.thresholds.as_chunks::<SLOTS>();
        let (leaves, _) = self.leaf_lengths.as_chunks::<SLOTS>();
        let flat = columns.as_flattened();
        let last_column = _mm512_set1_epi32(columns.len() as i32 - 1);
        let one = _mm512_set1_epi32(1);
        let leaf_base = _mm512_set1_epi32(SLOTS as i32);
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let rows: [__m512i; GROUPS] =
            std::array::from_fn(|group| _mm512_add_epi32(lanes, _mm512_set1_epi32(16 * group as i32)));
        let mut sums = [_mm512_setzero_pd(); 2 * GROUPS];
        for ((features, thresholds), leaves) in features.iter().zip(thresholds).zip(leaves) {
            // The groups' descents are independent: interleaved, they hide the
            // gathers' latency behind one another.
            // The first five levels (nodes 1 to 31) are looked up in registers
            // by permutation, much faster than a gather.
            let top = (SLOTS >= 32).then(|| {
                let (top_features, top_thresholds) = (&features[..32], &thresholds[..32]);
                // SAFETY: both slices hold 32 values, read as two halves of 16.
                unsafe {
                    [
                        _mm512_loadu_si512(top_features.as_ptr().cast()),
                        _mm512_loadu_si512(top_features[16..].as_ptr().cast()),
                        _mm512_castps_si512(_mm512_loadu_ps(top_thresholds.as_ptr())),
                        _mm512_castps_si512(_mm512_loadu_ps(top_thresholds[16..].as_ptr())),
                    ]
                }
            });
            let mut nodes = [one; GROUPS];
            for level in 0..self.depth {
                for (nodes, rows) in nodes.iter_mut().zip(rows) {
                    let (feature, threshold) = match top {
                        Some([f_low, f_high, t_low, t_high]) if level < 5 => (
                            _mm512_permutex2var_epi32(f_low, *nodes, f_high),
                            _mm512_castsi512_ps(_mm512_permutex2var_epi32(t_low, *nodes, t_high)),
                        ),
                        // SAFETY: a node is below SLOTS, the length of `features`
                        // and `thresholds`, before the last step.
                        _ => unsafe {
                            (
                                _mm512_i32gather_epi32::<4>(*nodes, features.as_ptr().cast()),
                                _mm512_i32gather_ps::<4>(*nodes, thresholds.as_ptr()),
                            )
                        },
                    };
                    // Clamped below the number of columns, so that
                    // feature × BLOCK_ROWS + row is inside `flat`.
                    let feature = _mm512_min_epu32(feature, last_column);
                    let at = _mm512_add_epi32(_mm512_slli_epi32::<BLOCK_SHIFT>(feature), rows);
                    // SAFETY: `at` is inside `flat` (see above).
                    let value = unsafe { _mm512_i32gather_ps::<4>(at, flat.as_ptr()) };
                    let right = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(value, threshold);
                    let doubled = _mm512_add_epi32(*nodes, *nodes);
                    *nodes = _mm512_mask_add_epi32(doubled, right, doubled, one);
                }
            }
            for (nodes, sums) in nodes.iter().zip(sums.chunks_exact_mut(2)) {
                // SAFETY: after `depth` steps a node is in [SLOTS, 2 SLOTS).
                let leaf =
                    unsafe { _mm512_i32gather_ps::<4>(_mm512_sub_epi32(*nodes, leaf_base), leaves.as_ptr()) };
                let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(leaf)));
                sums[0] = _mm512_add_pd(sums[0], _mm512_cvtps_pd(_mm512_castps512_ps256(leaf)));
                sums[1] = _mm512_add_pd(sums[1], _mm512_cvtps_pd(high));
            }
        }
        for (sum, totals) in sums.iter().zip(totals.chunks_exact_mut(8)) {
            // SAFETY: each chunk of `totals` holds exactly 8 f64.
            unsafe { _mm512_storeu_pd(totals.as_mut_ptr(), *sum) };
        }
        totals
    }

    #[inline(always)]
    fn route_block_portable<const SLOTS: usize>(&self, columns: &[[f32; BLOCK_ROWS]]) -> [f64; BLOCK_ROWS] {
        let mut totals = [0.0f64; BLOCK_ROWS];
        let (features, _) = self.features.as_chunks::<SLOTS>();
        let (thresholds, _) = self.thresholds.as_chunks::<SLOTS>();
        let (leaves, _) = self.leaf_lengths.as_chunks::<SLOTS>();
        let last_column = columns.len() - 1;
        for ((features, thresholds), leaves) in features.iter().zip(thresholds).zip(leaves) {
            let mut nodes = [1u32; BLOCK_ROWS];
            for _ in 0..self.depth {
                for (r, node) in nodes.iter_mut().enumerate() {
                    // `node` < SLOTS before the last step and features are
                    // validated < columns: the mask and the `min` change nothing
                    // but let the compiler drop the bounds checks.
                    let at = *node as usize & (SLOTS - 1);
                    let value = columns[(features[at] as usize).min(last_column)][r];
                    *node = 2 * *node + u32::from(value > thresholds[at]);
                }
            }
            for (total, node) in totals.iter_mut().zip(nodes) {
                *total += leaves[node as usize & (SLOTS - 1)] as f64;
            }
        }
        totals
    }

    /// The score from the sum of a row's path lengths over all trees.
    fn score_from_total(&self, total: f64) -> f64 {
        if self.normaliser == 0.0 {
            // A forest fitted on one row isolates nothing: scikit-learn's score is then 2^0.
            return 1.0;
        }
        (-(total / self.n_trees as f64) / self.normaliser).exp2()
    }
}

/// Rows scored together, tree by tree. One tree (3 KB for ψ = 256) stays in L1
/// cache while it routes the whole block, and the block's rows descend level by
/// level in lock-step, so the processor overlaps their independent node lookups
/// instead of waiting on one row's chain of dependent loads.
const BLOCK_ROWS: usize = 1 << BLOCK_SHIFT;
const BLOCK_SHIFT: u32 = 7;

/// Groups of 16 rows (one AVX-512 register) in a block.
#[cfg(target_arch = "x86_64")]
const GROUPS: usize = BLOCK_ROWS / 16;

/// Rows per parallel task: large enough that scheduling costs nothing next to
/// scoring, small enough that both cores stay busy on a few thousand rows.
const TASK_ROWS: usize = 16 * BLOCK_ROWS;

impl Detector for IsolationForest {
    fn n_features(&self) -> usize {
        self.n_features
    }

    fn score(&self, data: &Matrix) -> Result<Vec<f64>> {
        data.check_scorable(self.n_features)?;
        let mut scores = vec![0.0; data.rows()];
        let cols = self.n_features;
        scores.par_chunks_mut(TASK_ROWS).zip(data.values().par_chunks(TASK_ROWS * cols)).for_each_init(
            Vec::new,
            |columns, (out, rows)| {
                for (out, rows) in out.chunks_mut(BLOCK_ROWS).zip(rows.chunks(BLOCK_ROWS * cols)) {
                    self.score_block(rows, out, columns);
                }
            },
        );
        Ok(scores)
    }

    fn score_checked(&self, x: &[f64]) -> f64 {
        self.score_from_total(self.total_path_length(x))
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
        let slots = 1usize << depth;
        let mut tree = TreeArrays {
            features: vec![0; slots],
            // +∞ makes a node pass every row to its left child.
            thresholds: vec![f32::INFINITY; slots],
            leaf_lengths: vec![0.0; slots],
        };
        let mut candidates: Vec<usize> = (0..data.cols()).collect();
        tree.split(data, &mut rows, 1, 0, depth, &mut candidates, rng);
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
            let leftmost = node << (depth - level);
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
        self.split(data, left, 2 * node, level + 1, depth, candidates, rng);
        self.split(data, right, 2 * node + 1, level + 1, depth, candidates, rng);
    }
}

/// scikit-learn's tolerance below which a feature is constant in a node.
const FEATURE_THRESHOLD: f64 = 1e-7;

/// Draws features in random order until one is not constant over `rows`, as
/// scikit-learn's random splitter does, and a threshold uniform in [min, max).
///
/// scikit-learn's trees see the data as `f32` and keep `f64` thresholds: a row
/// goes left when its `f32` value is ≤ the threshold. Values are rounded to `f32`
/// here too, and the threshold is stored as the largest `f32` not above it,
/// which sends every `f32` value the same way as the `f64` threshold would.
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
        let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
        for &row in rows {
            let value = data.row(row)[feature] as f32;
            min = min.min(value);
            max = max.max(value);
        }
        let (min, max) = (f64::from(min), f64::from(max));
        if max > min + FEATURE_THRESHOLD {
            let mut threshold = min + (max - min) * rng.random::<f64>();
            if threshold >= max {
                threshold = min;
            }
            let mut threshold32 = threshold as f32;
            if f64::from(threshold32) > threshold {
                threshold32 = threshold32.next_down();
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
    use super::*;

    fn random_matrix(rows: usize, cols: usize, seed: u64) -> Matrix {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        // Some repeated values, so that some nodes are constant in some features.
        let values = (0..rows * cols).map(|_| (rng.random::<f64>() * 20.0).round() / 4.0).collect();
        Matrix::new(values, cols).unwrap()
    }

    #[test]
    fn batch_scoring_is_bit_identical_to_one_row_scoring() {
        // Subsamples giving depths 0 to 9, across the register and gather paths
        // and a partial last block.
        for (max_samples, cols) in [(1, 3), (2, 1), (5, 2), (16, 3), (31, 7), (256, 3), (300, 40), (512, 2)] {
            let train = random_matrix(700, cols, max_samples as u64);
            let test = random_matrix(300, cols, 99);
            let params = IsolationForestParams { max_samples, n_trees: 17, ..Default::default() };
            let forest = IsolationForest::fit(&train, &params).unwrap();
            forest.validate().unwrap();
            let batch = forest.score(&test).unwrap();
            let one: Vec<f64> = test.iter_rows().map(|row| forest.score_one(row).unwrap()).collect();
            assert_eq!(batch, one, "max_samples {max_samples}, {cols} columns");
            // The portable path, which processors without AVX-512 take.
            let mut columns = vec![[0.0f32; BLOCK_ROWS]; cols];
            for (r, row) in test.iter_rows().take(BLOCK_ROWS).enumerate() {
                for (column, &value) in columns.iter_mut().zip(row) {
                    column[r] = value as f32;
                }
            }
            let totals = match forest.depth {
                0 => forest.route_block_portable::<1>(&columns),
                1 => forest.route_block_portable::<2>(&columns),
                3 => forest.route_block_portable::<8>(&columns),
                4 => forest.route_block_portable::<16>(&columns),
                5 => forest.route_block_portable::<32>(&columns),
                8 => forest.route_block_portable::<256>(&columns),
                9 => forest.route_block_portable::<512>(&columns),
                other => panic!("no case for depth {other}"),
            };
            let portable: Vec<f64> = totals.iter().map(|&t| forest.score_from_total(t)).collect();
            assert_eq!(portable, one[..BLOCK_ROWS], "portable path, max_samples {max_samples}");
        }
    }

    #[test]
    fn f32_thresholds_split_like_scikit_learns_f64_thresholds() {
        let data = random_matrix(256, 2, 5);
        for seed in 0..200 {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            let rows: Vec<usize> = (0..256).collect();
            let mut candidates = vec![0, 1];
            let mut replay = rng.clone();
            let (feature, threshold) = choose_split(&data, &rows, &mut candidates, &mut rng).unwrap();
            // The same draws, with the f64 threshold scikit-learn keeps.
            let _ = replay.random_range(0..2usize);
            let values: Vec<f64> = rows.iter().map(|&r| f64::from(data.row(r)[feature] as f32)).collect();
            let (min, max) =
                values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
            let mut exact = min + (max - min) * replay.random::<f64>();
            if exact >= max {
                exact = min;
            }
            for &value in &values {
                assert_eq!(value as f32 <= threshold, value <= exact, "seed {seed}: {value} vs {exact}");
            }
            assert!(values.iter().any(|&v| v <= exact) && values.iter().any(|&v| v > exact));
        }
    }

    /// One-hot data: in a node, most columns are constant (all 0 or all 1). A split is never
    /// spent on such a column; the feature drawn is always one that varies in the node, and a
    /// node where nothing varies is a leaf, as scikit-learn's random splitter does.
    #[test]
    fn splits_skip_features_constant_in_the_node() {
        let (rows, cols, informative) = (64, 120, 77);
        let values: Vec<f64> = (0..rows * cols)
            .map(|i| {
                let (row, col) = (i / cols, i % cols);
                match col {
                    c if c == informative => row as f64,
                    // Half the columns are 1 in every row, half 0: constant in any node.
                    c => (c % 2) as f64,
                }
            })
            .collect();
        let data = Matrix::new(values, cols).unwrap();
        let all_rows: Vec<usize> = (0..rows).collect();
        for seed in 0..200 {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            let mut candidates: Vec<usize> = (0..cols).collect();
            let (feature, threshold) = choose_split(&data, &all_rows, &mut candidates, &mut rng).unwrap();
            assert_eq!(feature, informative, "seed {seed}");
            assert!((0.0..63.0).contains(&threshold), "seed {seed}: {threshold}");
        }
        // Rows equal in every feature: nothing to split on.
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let mut candidates: Vec<usize> = (0..cols).collect();
        assert_eq!(choose_split(&data, &[5, 5, 5], &mut candidates, &mut rng), None);

        // Every split of a grown forest is on the informative column (pass-through nodes
        // have an infinite threshold).
        let params = IsolationForestParams { n_trees: 10, max_samples: 64, ..Default::default() };
        let forest = IsolationForest::fit(&data, &params).unwrap();
        let splits = forest.thresholds.iter().filter(|t| t.is_finite()).count();
        assert!(splits >= 10 * 20, "{splits} splits");
        for (&feature, &threshold) in forest.features.iter().zip(&forest.thresholds) {
            assert!(threshold == f32::INFINITY || feature as usize == informative);
        }
    }

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
