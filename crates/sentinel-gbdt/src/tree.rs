//! One trained regression tree as a flat array of nodes, the layout prediction
//! walks: a node's children sit next to each other (`left`, `left + 1`), and a
//! child always comes after its parent, which is what makes any loaded tree —
//! even from a hostile file — finite to walk once [`Tree::validate`] passed.

use serde::{Deserialize, Serialize};

use crate::binning::finite_or_nan;

/// A node: a split when `left != 0`, a leaf otherwise (the root is never a child,
/// so index 0 is free to mean "none").
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Node {
    /// Rows with `value <= threshold` go to `left`, others to `left + 1`.
    pub(crate) threshold: f64,
    pub(crate) feature: u32,
    pub(crate) left: u32,
    /// The node's output: for a leaf, what the tree predicts; for a split, what it
    /// would have predicted as a leaf (used by contribution attribution).
    pub(crate) value: f32,
    /// Where rows whose value is missing (NaN) go.
    pub(crate) missing_left: bool,
}

impl Node {
    #[inline]
    fn is_leaf(&self) -> bool {
        self.left == 0
    }

    #[inline]
    fn next(&self, row: &[f64]) -> usize {
        let x = finite_or_nan(row[self.feature as usize]);
        let go_left = if x.is_nan() { self.missing_left } else { x <= self.threshold };
        if go_left { self.left as usize } else { self.left as usize + 1 }
    }
}

/// A regression tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    pub(crate) nodes: Vec<Node>,
}

impl Tree {
    /// The tree's output for one row (with `row.len()` covering every feature the
    /// tree uses; callers check the width once per row, not per node).
    #[inline]
    pub fn predict(&self, row: &[f64]) -> f64 {
        let mut index = 0;
        loop {
            let node = &self.nodes[index];
            if node.is_leaf() {
                return f64::from(node.value);
            }
            index = node.next(row);
        }
    }

    /// Adds to `contributions[f]` the change of expected output along the row's
    /// path caused by each split on feature `f` (Saabas attribution) and returns
    /// the root's value, so that root value + contributions = prediction.
    pub(crate) fn add_contributions(&self, row: &[f64], contributions: &mut [f64]) -> f64 {
        let mut index = 0;
        loop {
            let node = &self.nodes[index];
            if node.is_leaf() {
                return f64::from(self.nodes[0].value);
            }
            let child = node.next(row);
            contributions[node.feature as usize] +=
                f64::from(self.nodes[child].value) - f64::from(node.value);
            index = child;
        }
    }

    /// Number of leaves.
    pub fn leaves(&self) -> usize {
        self.nodes.iter().filter(|n| n.is_leaf()).count()
    }

    /// Checks what prediction relies on: children after their parent and in
    /// bounds, features below `n_features`, thresholds and values not NaN.
    pub(crate) fn validate(&self, n_features: usize) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Err("a tree has no nodes".into());
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if node.value.is_nan() || !node.value.is_finite() {
                return Err(format!("node {i} has a non-finite value"));
            }
            if node.is_leaf() {
                continue;
            }
            let left = node.left as usize;
            if left <= i || left + 1 >= self.nodes.len() {
                return Err(format!("node {i} has children out of order or out of bounds"));
            }
            if node.feature as usize >= n_features {
                return Err(format!("node {i} splits on feature {} of {n_features}", node.feature));
            }
            if node.threshold.is_nan() {
                return Err(format!("node {i} has a NaN threshold"));
            }
        }
        Ok(())
    }
}

/// The serialised form of a tree: one array per node field (compact in JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TreeFile {
    feature: Vec<u32>,
    threshold: Vec<f64>,
    left: Vec<u32>,
    value: Vec<f32>,
    /// 1 when missing values go left.
    missing_left: Vec<u8>,
}

impl From<&Tree> for TreeFile {
    fn from(tree: &Tree) -> Self {
        TreeFile {
            feature: tree.nodes.iter().map(|n| n.feature).collect(),
            threshold: tree.nodes.iter().map(|n| n.threshold).collect(),
            left: tree.nodes.iter().map(|n| n.left).collect(),
            value: tree.nodes.iter().map(|n| n.value).collect(),
            missing_left: tree.nodes.iter().map(|n| u8::from(n.missing_left)).collect(),
        }
    }
}

impl TryFrom<TreeFile> for Tree {
    type Error = String;

    fn try_from(file: TreeFile) -> Result<Self, String> {
        let n = file.feature.len();
        if [file.threshold.len(), file.left.len(), file.value.len(), file.missing_left.len()]
            .iter()
            .any(|&len| len != n)
        {
            return Err("a tree's node arrays have different lengths".into());
        }
        let nodes = (0..n)
            .map(|i| Node {
                threshold: file.threshold[i],
                feature: file.feature[i],
                left: file.left[i],
                value: file.value[i],
                missing_left: file.missing_left[i] != 0,
            })
            .collect();
        Ok(Tree { nodes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stump() -> Tree {
        let split = Node { threshold: 1.5, feature: 0, left: 1, value: 0.0, missing_left: true };
        let leaf = |value| Node { threshold: 0.0, feature: 0, left: 0, value, missing_left: false };
        Tree { nodes: vec![split, leaf(-1.0), leaf(2.0)] }
    }

    #[test]
    fn walks_to_the_right_leaf() {
        let tree = stump();
        assert_eq!(tree.predict(&[1.0]), -1.0);
        assert_eq!(tree.predict(&[1.5]), -1.0);
        assert_eq!(tree.predict(&[2.0]), 2.0);
        assert_eq!(tree.predict(&[f64::NAN]), -1.0);
        assert_eq!(tree.predict(&[f64::INFINITY]), 2.0);
    }

    #[test]
    fn contributions_add_up_to_the_prediction() {
        let tree = stump();
        let mut contributions = [0.0];
        let root = tree.add_contributions(&[3.0], &mut contributions);
        assert_eq!(root + contributions[0], tree.predict(&[3.0]));
    }

    #[test]
    fn cycles_and_bad_indices_are_rejected() {
        let mut tree = stump();
        tree.nodes[0].left = 0;
        tree.nodes[1].left = 0;
        assert!(tree.validate(1).is_ok());
        let mut cyclic = stump();
        cyclic.nodes[2].left = 1;
        assert!(cyclic.validate(1).is_err());
        let mut out_of_bounds = stump();
        out_of_bounds.nodes[0].left = 2;
        assert!(out_of_bounds.validate(1).is_err());
        assert!(stump().validate(0).is_err());
    }
}
