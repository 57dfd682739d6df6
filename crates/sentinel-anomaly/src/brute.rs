//! Exact k-nearest-neighbour search by brute force, for data of many
//! dimensions, where a k-d tree's bounds prune almost nothing and its search
//! degenerates into a slow brute force. Squared distances come in blocks from
//! ‖q‖² + ‖t‖² − 2 q·t, the products from a cache-blocked matrix multiply
//! (ndarray's, vectorised for the processor at run time), so the cost is that of
//! a matrix product; the k neighbours found are then measured again exactly,
//! ‖q − t‖², so that their distances do not carry the cancellation error of the
//! blocked form (duplicates are at exactly 0, as with the tree).

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, s};
use rayon::prelude::*;

use crate::kdtree::Neighbours;
use crate::matrix::Matrix;
use crate::rbf::squared_distance;

/// Queries per block: each block multiplies against the training rows tile by
/// tile, and blocks run in parallel.
const QUERY_BLOCK: usize = 256;
/// Training rows per tile: a block's products (256 × 512 × 8 bytes = 1 MB) stay in L2.
const TRAIN_TILE: usize = 512;

#[derive(Debug, Clone)]
pub(crate) struct BruteForce {
    points: Array2<f64>,
    norms: Vec<f64>,
}

impl BruteForce {
    pub(crate) fn build(data: &Matrix) -> BruteForce {
        let points = Array2::from_shape_fn((data.rows(), data.cols()), |(r, c)| data.row(r)[c]);
        let norms = data.iter_rows().map(|row| row.iter().map(|v| v * v).sum()).collect();
        BruteForce { points, norms }
    }

    /// Fills `found` with the k nearest training rows to `x` (k set by `found`),
    /// skipping the row `exclude`: one query, measured exactly.
    pub(crate) fn nearest(&self, x: &[f64], exclude: Option<usize>, found: &mut Neighbours) {
        found.clear();
        for (index, point) in self.points.outer_iter().enumerate() {
            if Some(index) != exclude {
                // `points` is in standard layout, so every row is a slice.
                let distance2 = point.as_slice().map_or(f64::INFINITY, |p| squared_distance(p, x));
                found.offer(distance2, index as u32);
            }
        }
    }

    /// The k nearest training rows to every row of `queries`, in parallel; with
    /// `exclude_self`, query i is training row i and is not its own neighbour.
    pub(crate) fn nearest_all(&self, queries: &Matrix, k: usize, exclude_self: bool) -> Vec<Neighbours> {
        let mut all: Vec<Neighbours> = (0..queries.rows()).map(|_| Neighbours::new(k)).collect();
        let cols = queries.cols();
        all.par_chunks_mut(QUERY_BLOCK)
            .zip(queries.values().par_chunks(QUERY_BLOCK * cols))
            .enumerate()
            .for_each(|(block, (found, values))| {
                let first = block * QUERY_BLOCK;
                let block_rows = found.len();
                // The shapes agree by construction: `values` holds `block_rows` whole rows.
                let Ok(block_view) = ArrayView2::from_shape((block_rows, cols), values) else { return };
                let query_norms: Vec<f64> =
                    values.chunks_exact(cols).map(|q| q.iter().map(|v| v * v).sum()).collect();
                let mut products = Array2::<f64>::zeros((block_rows, TRAIN_TILE));
                for start in (0..self.points.nrows()).step_by(TRAIN_TILE) {
                    let end = (start + TRAIN_TILE).min(self.points.nrows());
                    let tile = self.points.slice(s![start..end, ..]);
                    let mut products = products.slice_mut(s![.., ..end - start]);
                    general_mat_mul(-2.0, &block_view, &tile.t(), 0.0, &mut products);
                    for (q, (found, row)) in found.iter_mut().zip(products.outer_iter()).enumerate() {
                        let own = if exclude_self { first + q } else { usize::MAX };
                        let base = query_norms[q];
                        for ((index, &product), &norm) in
                            (start..end).zip(row.iter()).zip(&self.norms[start..end])
                        {
                            let distance2 = (base + norm + product).max(0.0);
                            if distance2 < found.worst() && index != own {
                                found.offer(distance2, index as u32);
                            }
                        }
                    }
                }
                for (q, found) in found.iter_mut().enumerate() {
                    let query = &values[q * cols..(q + 1) * cols];
                    found.remeasure(|index| {
                        self.points
                            .row(index)
                            .as_slice()
                            .map_or(f64::INFINITY, |p| squared_distance(p, query))
                    });
                }
            });
        all
    }
}
