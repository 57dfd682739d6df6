//! Growing one tree on binned data from the gradients and hessians of the loss:
//! per-node gradient histograms (built in parallel over features, the larger
//! child of a split obtained by subtracting its sibling from the parent), exact
//! best-split search over bins with a learnt direction for missing values, and
//! leaf-wise (best-first) growth bounded by `max_leaf_nodes` and `max_depth`.
//!
//! Everything is deterministic: features are searched independently and the best
//! split is chosen in feature order, and ties between leaves go to the older leaf,
//! so the thread count never changes a tree.

use rayon::prelude::*;

use crate::binning::{BinMapper, HISTOGRAM_SLOTS, MISSING_BIN};
use crate::tree::{Node, Tree};

/// Below this many (rows × features) a histogram is built on one thread: the
/// parallel overhead would exceed the work.
const PARALLEL_HISTOGRAM_WORK: usize = 1 << 15;
/// Smallest hessian sum a child may have, as in scikit-learn, so that leaf values
/// stay bounded when the model is already confident.
const MIN_CHILD_HESSIAN: f64 = 1e-3;

/// Sums over the rows of a node that fall in one bin.
#[derive(Debug, Clone, Copy, Default)]
struct BinStats {
    gradient: f64,
    hessian: f64,
    count: u32,
}

type FeatureHistogram = [BinStats; HISTOGRAM_SLOTS];

/// Settings of tree growth, taken from the booster's parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GrowthLimits {
    pub(crate) max_leaf_nodes: Option<usize>,
    pub(crate) max_depth: Option<usize>,
    pub(crate) min_samples_leaf: usize,
    pub(crate) l2_regularization: f64,
    pub(crate) learning_rate: f64,
}

/// The training data of every tree: bins (feature-major) and their boundaries.
pub(crate) struct BinnedData<'a> {
    pub(crate) bins: &'a [u8],
    pub(crate) rows: usize,
    pub(crate) features: usize,
    pub(crate) mapper: &'a BinMapper,
}

impl BinnedData<'_> {
    fn column(&self, f: usize) -> &[u8] {
        &self.bins[f * self.rows..(f + 1) * self.rows]
    }
}

#[derive(Debug, Clone, Copy)]
struct Split {
    gain: f64,
    feature: usize,
    /// Rows whose bin is `<= bin` go left.
    bin: usize,
    missing_left: bool,
}

/// A node being grown: its rows are `order[start..end]`.
struct GrowingNode {
    start: usize,
    end: usize,
    gradient: f64,
    hessian: f64,
    depth: usize,
    histogram: Option<Vec<FeatureHistogram>>,
    split: Option<Split>,
}

/// A grown tree and, for each of its leaves, the training rows it holds (so the
/// booster can update its predictions without walking the tree).
pub(crate) struct GrownTree {
    pub(crate) tree: Tree,
    /// (leaf value, rows) for every leaf.
    pub(crate) leaf_rows: Vec<(f64, Vec<usize>)>,
}

/// Grows one tree on `data` from per-row `gradients` and `hessians`.
pub(crate) fn grow_tree(
    data: &BinnedData<'_>,
    gradients: &[f64],
    hessians: &[f64],
    limits: &GrowthLimits,
) -> GrownTree {
    let mut order: Vec<usize> = (0..data.rows).collect();
    let root_histogram = build_histogram(data, &order, gradients, hessians);
    let (gradient, hessian) = totals(&order, gradients, hessians);
    let mut nodes = vec![GrowingNode {
        start: 0,
        end: order.len(),
        gradient,
        hessian,
        depth: 0,
        histogram: Some(root_histogram),
        split: None,
    }];
    // Tree children: for node i, the index of its left child (0 = leaf).
    let mut left_child = vec![0usize];
    let mut split_of: Vec<Option<Split>> = vec![None];
    prepare_split(&mut nodes[0], data, limits);
    let mut leaves = 1;
    let max_leaves = limits.max_leaf_nodes.unwrap_or(usize::MAX).max(2);
    let mut scratch = Vec::with_capacity(order.len());

    while leaves < max_leaves {
        // Best candidate: highest gain; ties go to the lowest index (oldest leaf).
        let best = nodes.iter().enumerate().filter_map(|(i, n)| n.split.map(|s| (i, s.gain))).fold(
            None,
            |best: Option<(usize, f64)>, (i, gain)| match best {
                Some((_, best_gain)) if best_gain >= gain => best,
                _ => Some((i, gain)),
            },
        );
        let Some((parent_index, _)) = best else { break };
        let parent = &mut nodes[parent_index];
        let split = parent.split.take().expect("the candidate has a split");
        let parent_histogram = parent.histogram.take().expect("a candidate keeps its histogram");
        let (start, end, depth) = (parent.start, parent.end, parent.depth);

        // Stable partition of the parent's rows into left then right.
        let column = data.column(split.feature);
        scratch.clear();
        let mut write = start;
        for k in start..end {
            let row = order[k];
            let bin = column[row];
            let go_left = if bin == MISSING_BIN { split.missing_left } else { usize::from(bin) <= split.bin };
            if go_left {
                order[write] = row;
                write += 1;
            } else {
                scratch.push(row);
            }
        }
        order[write..end].copy_from_slice(&scratch);
        let middle = write;

        let left_rows = &order[start..middle];
        let right_rows = &order[middle..end];
        let (left_gradient, left_hessian) = totals(left_rows, gradients, hessians);
        let (right_gradient, right_hessian) = totals(right_rows, gradients, hessians);
        let children_can_split = limits.max_depth.is_none_or(|max| depth + 1 < max);
        let (left_histogram, right_histogram) = if children_can_split {
            // Build the smaller child's histogram, derive the larger one.
            let (small_rows, small_is_left) =
                if left_rows.len() <= right_rows.len() { (left_rows, true) } else { (right_rows, false) };
            let small = build_histogram(data, small_rows, gradients, hessians);
            let large = subtract(parent_histogram, &small);
            if small_is_left { (Some(small), Some(large)) } else { (Some(large), Some(small)) }
        } else {
            (None, None)
        };

        let left_index = nodes.len();
        left_child[parent_index] = left_index;
        split_of[parent_index] = Some(split);
        for (s, e, g, h, histogram) in [
            (start, middle, left_gradient, left_hessian, left_histogram),
            (middle, end, right_gradient, right_hessian, right_histogram),
        ] {
            let mut child = GrowingNode {
                start: s,
                end: e,
                gradient: g,
                hessian: h,
                depth: depth + 1,
                histogram,
                split: None,
            };
            prepare_split(&mut child, data, limits);
            nodes.push(child);
            left_child.push(0);
            split_of.push(None);
        }
        leaves += 1;
    }

    let value_of = |n: &GrowingNode| {
        (-n.gradient / (n.hessian + limits.l2_regularization) * limits.learning_rate) as f32
    };
    let tree_nodes = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| match split_of[i] {
            Some(split) => Node {
                threshold: data.mapper.upper_bound(split.feature, split.bin),
                feature: split.feature as u32,
                left: left_child[i] as u32,
                value: value_of(n),
                missing_left: split.missing_left,
            },
            None => Node { threshold: 0.0, feature: 0, left: 0, value: value_of(n), missing_left: false },
        })
        .collect();
    let leaf_rows = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| split_of[*i].is_none())
        .map(|(_, n)| (f64::from(value_of(n)), order[n.start..n.end].to_vec()))
        .collect();
    GrownTree { tree: Tree { nodes: tree_nodes }, leaf_rows }
}

fn totals(rows: &[usize], gradients: &[f64], hessians: &[f64]) -> (f64, f64) {
    rows.iter().fold((0.0, 0.0), |(g, h), &r| (g + gradients[r], h + hessians[r]))
}

fn build_histogram(
    data: &BinnedData<'_>,
    rows: &[usize],
    gradients: &[f64],
    hessians: &[f64],
) -> Vec<FeatureHistogram> {
    let one_feature = |f: usize| {
        let column = data.column(f);
        let mut histogram = [BinStats::default(); HISTOGRAM_SLOTS];
        for &r in rows {
            let slot = &mut histogram[usize::from(column[r])];
            slot.gradient += gradients[r];
            slot.hessian += hessians[r];
            slot.count += 1;
        }
        histogram
    };
    if rows.len() * data.features >= PARALLEL_HISTOGRAM_WORK {
        (0..data.features).into_par_iter().map(one_feature).collect()
    } else {
        (0..data.features).map(one_feature).collect()
    }
}

fn subtract(mut parent: Vec<FeatureHistogram>, child: &[FeatureHistogram]) -> Vec<FeatureHistogram> {
    for (p, c) in parent.iter_mut().zip(child) {
        for (pb, cb) in p.iter_mut().zip(c) {
            pb.gradient -= cb.gradient;
            pb.hessian -= cb.hessian;
            pb.count -= cb.count;
        }
    }
    parent
}

/// Finds the node's best split, or makes it a final leaf (dropping its
/// histogram) when it cannot split.
fn prepare_split(node: &mut GrowingNode, data: &BinnedData<'_>, limits: &GrowthLimits) {
    let rows = node.end - node.start;
    let splittable = rows >= 2 * limits.min_samples_leaf.max(1);
    node.split = match (&node.histogram, splittable) {
        (Some(histogram), true) => best_split(histogram, node, data.mapper, limits),
        _ => None,
    };
    if node.split.is_none() {
        node.histogram = None;
    }
}

fn best_split(
    histogram: &[FeatureHistogram],
    node: &GrowingNode,
    mapper: &BinMapper,
    limits: &GrowthLimits,
) -> Option<Split> {
    let lambda = limits.l2_regularization;
    let score = |g: f64, h: f64| g * g / (h + lambda);
    let parent_score = score(node.gradient, node.hessian);
    let rows = (node.end - node.start) as u32;
    let min_leaf = limits.min_samples_leaf.max(1) as u32;

    let per_feature = |f: usize| -> Option<Split> {
        let h = &histogram[f];
        let missing = h[usize::from(MISSING_BIN)];
        let value_bins = mapper.value_bins(f);
        let mut best: Option<Split> = None;
        // Missing values go right, then (if there are any) left. Without missing
        // values only one scan is needed; their direction is set below.
        let directions: &[bool] = if missing.count > 0 { &[false, true] } else { &[false] };
        for &missing_left in directions {
            let (mut gl, mut hl, mut nl) =
                if missing_left { (missing.gradient, missing.hessian, missing.count) } else { (0.0, 0.0, 0) };
            // With missing values going right, the last value bin can close a
            // split too ("every value left, missing right").
            let last = if missing_left || missing.count == 0 { value_bins - 1 } else { value_bins };
            for (bin, stats) in h.iter().enumerate().take(last) {
                gl += stats.gradient;
                hl += stats.hessian;
                nl += stats.count;
                let nr = rows - nl;
                if nl < min_leaf {
                    continue;
                }
                if nr < min_leaf {
                    break;
                }
                let (gr, hr) = (node.gradient - gl, node.hessian - hl);
                if hl < MIN_CHILD_HESSIAN || hr < MIN_CHILD_HESSIAN {
                    continue;
                }
                let gain = score(gl, hl) + score(gr, hr) - parent_score;
                if gain > 0.0 && best.is_none_or(|b| gain > b.gain) {
                    best = Some(Split { gain, feature: f, bin, missing_left });
                }
            }
        }
        // A feature without missing values in training sends them, at prediction,
        // to the child that saw more rows.
        if missing.count == 0
            && let Some(split) = best.as_mut()
        {
            let left: u32 = h[..=split.bin].iter().map(|s| s.count).sum();
            split.missing_left = 2 * left >= rows;
        }
        best
    };
    let candidates: Vec<Option<Split>> = (0..histogram.len()).map(per_feature).collect();
    candidates.into_iter().flatten().fold(None, |best: Option<Split>, s| match best {
        Some(b) if b.gain >= s.gain => Some(b),
        _ => Some(s),
    })
}
