//! A k-d tree for exact k-nearest-neighbour search in Euclidean distance, the
//! spatial index behind LOF up to 15 dimensions (above, see `brute`). Rows are copied into tree order so a leaf's points
//! are contiguous in memory; each node keeps its bounding box, and a subtree is
//! skipped when the box is farther than the current k-th neighbour. Splits are at
//! the median of the widest dimension, so the depth is logarithmic whatever the
//! data's distribution. Each node also keeps a bounding ball (centroid and
//! radius), as a ball tree does: as dimensions grow a box becomes a loose bound,
//! while the ball follows the data's intrinsic dimension, and the larger of the
//! two bounds is used. Also home to [`Neighbours`], the k-best list both
//! searches fill.

use crate::matrix::Matrix;
use crate::rbf::squared_distance;

/// Points per leaf: small enough to prune well, large enough that the scan of a
/// leaf costs more than the descent to it.
const LEAF_SIZE: usize = 16;

#[derive(Debug, Clone)]
pub(crate) struct KdTree {
    dims: usize,
    /// The points in tree order, row-major.
    points: Vec<f64>,
    /// The original row index of each point in tree order.
    indices: Vec<u32>,
    nodes: Vec<Node>,
    /// Per node, the box's minimum then maximum in each dimension.
    boxes: Vec<f64>,
    /// Per node, the centroid of its points.
    centroids: Vec<f64>,
    /// Per node, the largest distance from the centroid to one of its points.
    radii: Vec<f64>,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    start: u32,
    end: u32,
    /// Children, or `u32::MAX` for a leaf.
    left: u32,
    right: u32,
}

/// Scratch space for a k-nearest-neighbour query: the neighbours found so far,
/// sorted by increasing squared distance. Reusing one avoids an allocation per query.
pub struct Neighbours {
    k: usize,
    found: Vec<(f64, u32)>,
}

impl Neighbours {
    pub(crate) fn new(k: usize) -> Neighbours {
        Neighbours { k, found: Vec::with_capacity(k + 1) }
    }

    pub(crate) fn worst(&self) -> f64 {
        if self.found.len() < self.k { f64::INFINITY } else { self.found[self.k - 1].0 }
    }

    /// Keeps (`distance2`, `index`) if it is among the k best so far; of rows
    /// at equal distances, the lowest-numbered, whatever the order offered in.
    pub(crate) fn offer(&mut self, distance2: f64, index: u32) {
        if self.found.len() == self.k {
            let (worst, worst_index) = self.found[self.k - 1];
            if distance2 > worst || (distance2 == worst && index > worst_index) {
                return;
            }
        }
        let at = self.found.partition_point(|&(d, i)| d < distance2 || (d == distance2 && i < index));
        self.found.insert(at, (distance2, index));
        self.found.truncate(self.k);
    }

    /// (Euclidean distance, row index) pairs, nearest first.
    pub(crate) fn sorted(&self) -> impl Iterator<Item = (f64, usize)> + '_ {
        self.found.iter().map(|&(d2, i)| (d2.sqrt(), i as usize))
    }

    pub(crate) fn clear(&mut self) {
        self.found.clear();
    }
}

impl KdTree {
    pub(crate) fn build(data: &Matrix) -> KdTree {
        let dims = data.cols();
        let mut order: Vec<u32> = (0..data.rows() as u32).collect();
        let mut tree = KdTree {
            dims,
            points: Vec::new(),
            indices: Vec::new(),
            nodes: Vec::new(),
            boxes: Vec::new(),
            centroids: Vec::new(),
            radii: Vec::new(),
        };
        tree.build_node(data, &mut order, 0);
        tree.points = Vec::with_capacity(data.rows() * dims);
        for &row in &order {
            tree.points.extend_from_slice(data.row(row as usize));
        }
        tree.indices = order;
        tree
    }

    fn build_node(&mut self, data: &Matrix, order: &mut [u32], start: usize) -> u32 {
        let id = self.nodes.len() as u32;
        let dims = self.dims;
        let box_at = self.boxes.len();
        self.boxes.extend(std::iter::repeat_n(f64::INFINITY, dims));
        self.boxes.extend(std::iter::repeat_n(f64::NEG_INFINITY, dims));
        for &row in order.iter() {
            for (d, &value) in data.row(row as usize).iter().enumerate() {
                self.boxes[box_at + d] = self.boxes[box_at + d].min(value);
                self.boxes[box_at + dims + d] = self.boxes[box_at + dims + d].max(value);
            }
        }
        let mut centroid = vec![0.0; dims];
        for &row in order.iter() {
            centroid.iter_mut().zip(data.row(row as usize)).for_each(|(c, v)| *c += v);
        }
        centroid.iter_mut().for_each(|c| *c /= order.len().max(1) as f64);
        let radius2 = order
            .iter()
            .map(|&row| squared_distance(&centroid, data.row(row as usize)))
            .fold(0.0f64, f64::max);
        self.centroids.extend_from_slice(&centroid);
        self.radii.push(radius2.sqrt());
        let end = start + order.len();
        self.nodes.push(Node { start: start as u32, end: end as u32, left: u32::MAX, right: u32::MAX });
        if order.len() <= LEAF_SIZE {
            return id;
        }
        let widest = (0..dims)
            .map(|d| (d, self.boxes[box_at + dims + d] - self.boxes[box_at + d]))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(0, |(d, _)| d);
        if self.boxes[box_at + dims + widest] <= self.boxes[box_at + widest] {
            // Every point in the node is the same: nothing to split.
            return id;
        }
        let middle = order.len() / 2;
        order.select_nth_unstable_by(middle, |&a, &b| {
            data.row(a as usize)[widest].total_cmp(&data.row(b as usize)[widest])
        });
        let (low, high) = order.split_at_mut(middle);
        let left = self.build_node(data, low, start);
        let right = self.build_node(data, high, start + middle);
        self.nodes[id as usize].left = left;
        self.nodes[id as usize].right = right;
        id
    }

    /// A lower bound of the squared distance from `x` to any point of `node`:
    /// the larger of the distances to its box and to its ball.
    fn bound_distance2(&self, node: u32, x: &[f64]) -> f64 {
        let at = node as usize * 2 * self.dims;
        let (low, high) = self.boxes[at..at + 2 * self.dims].split_at(self.dims);
        let mut to_box = 0.0;
        for d in 0..self.dims {
            let gap = (low[d] - x[d]).max(x[d] - high[d]).max(0.0);
            to_box += gap * gap;
        }
        let node = node as usize;
        let centre = &self.centroids[node * self.dims..(node + 1) * self.dims];
        let to_ball = (squared_distance(centre, x).sqrt() - self.radii[node]).max(0.0);
        to_box.max(to_ball * to_ball)
    }

    /// Fills `found` with the k nearest points to `x` (k set by `found`), skipping
    /// the row `exclude` (a training row querying its own neighbours).
    pub(crate) fn nearest(&self, x: &[f64], exclude: Option<usize>, found: &mut Neighbours) {
        found.clear();
        let exclude = exclude.map_or(u32::MAX, |row| row as u32);
        self.search(0, x, exclude, found);
    }

    fn search(&self, node: u32, x: &[f64], exclude: u32, found: &mut Neighbours) {
        let Node { start, end, left, right } = self.nodes[node as usize];
        if left == u32::MAX {
            for slot in start as usize..end as usize {
                let index = self.indices[slot];
                if index == exclude {
                    continue;
                }
                let point = &self.points[slot * self.dims..(slot + 1) * self.dims];
                let distance2 = squared_distance(point, x);
                found.offer(distance2, index);
            }
            return;
        }
        let (near_left, near_right) = (self.bound_distance2(left, x), self.bound_distance2(right, x));
        let ordered = if near_left <= near_right {
            [(left, near_left), (right, near_right)]
        } else {
            [(right, near_right), (left, near_left)]
        };
        for (child, distance2) in ordered {
            if distance2 < found.worst() {
                self.search(child, x, exclude, found);
            }
        }
    }
}
