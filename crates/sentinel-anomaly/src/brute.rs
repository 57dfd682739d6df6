//! Exact k-nearest-neighbour search by brute force, for data of many
//! dimensions, where a k-d tree's bounds prune almost nothing and its search
//! degenerates into a slow brute force.
//!
//! Every query is screened against every training row in single precision, as
//! a matrix product: ‖a‖² + ‖b‖² − 2 a·b on the rows centred on the training
//! mean (centring leaves distances unchanged and shrinks the norms the rounding
//! error scales with). Single precision doubles the product's speed over `f64`
//! and halves its memory traffic, but its distances are approximate, so the
//! screen only discards: it keeps every training row whose approximate
//! distance is within twice a proven error bound of the k-th smallest, and the
//! kept candidates are then measured exactly, ‖q − t‖² in `f64` on the
//! original values, and the k nearest chosen among them (ties by row index).
//! The result is the exact k nearest neighbours, duplicates at exactly 0, as
//! with the k-d tree. A query whose candidates would not fit a bounded buffer
//! (thousands of rows tied within the bound, as when most rows are
//! duplicates) is answered by an exact scan instead.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, s};
use rayon::prelude::*;

use crate::kdtree::Neighbours;
use crate::matrix::Matrix;
use crate::rbf::squared_distance;

/// Queries per block: each block multiplies against the training rows tile by
/// tile, and blocks run in parallel.
const QUERY_BLOCK: usize = 512;
/// Training rows per tile: a block's products (512 × 512 × 4 bytes = 1 MB) stay in L2.
const TRAIN_TILE: usize = 512;
/// The size one query's candidate buffer may grow to before the query is
/// answered by an exact scan instead (at most 64 KB per query).
const MAX_CANDIDATES: usize = 4096;
/// Screening stays this far within `f32`'s range: (‖a‖ + ‖b‖)² below it
/// keeps every norm, product and sum finite.
const SCREEN_RANGE: f64 = 1e37;

#[derive(Debug, Clone)]
pub(crate) struct BruteForce {
    /// The training mean, subtracted from queries before screening.
    centre: Vec<f64>,
    /// The centred training rows in single precision: the screen's operand.
    centred: Array2<f32>,
    /// ‖row‖² of each row of `centred`.
    norms: Vec<f32>,
    /// The largest ‖row‖ of `centred`, for the error bound.
    max_norm: f64,
}

impl BruteForce {
    pub(crate) fn build(data: &Matrix) -> BruteForce {
        let cols = data.cols();
        let mut centre = vec![0.0; cols];
        for row in data.iter_rows() {
            for (sum, v) in centre.iter_mut().zip(row) {
                *sum += v;
            }
        }
        for sum in &mut centre {
            *sum /= data.rows() as f64;
        }
        let centred =
            Array2::from_shape_fn((data.rows(), cols), |(r, c)| (data.row(r)[c] - centre[c]) as f32);
        let norms: Vec<f32> = centred.outer_iter().map(|row| norm2(row.iter().copied()) as f32).collect();
        let max_norm = norms.iter().fold(0.0f64, |m, &n| m.max(f64::from(n).sqrt()));
        BruteForce { centre, centred, norms, max_norm }
    }

    /// Fills `found` with the k nearest rows of `training` (the rows this index
    /// was built from; k set by `found`) to `x`, skipping the row `exclude`:
    /// one query, scanned exactly.
    pub(crate) fn nearest(training: &Matrix, x: &[f64], exclude: Option<usize>, found: &mut Neighbours) {
        found.clear();
        for (index, point) in training.iter_rows().enumerate() {
            if Some(index) != exclude {
                found.offer(squared_distance(point, x), index as u32);
            }
        }
    }

    /// The k nearest rows of `training` (the rows this index was built from)
    /// to every row of `queries`, in parallel; with `exclude_self`, query i is
    /// training row i and is not its own neighbour.
    pub(crate) fn nearest_all(
        &self,
        training: &Matrix,
        queries: &Matrix,
        k: usize,
        exclude_self: bool,
    ) -> Vec<Neighbours> {
        let mut all: Vec<Neighbours> = (0..queries.rows()).map(|_| Neighbours::new(k)).collect();
        let cols = queries.cols();
        all.par_chunks_mut(QUERY_BLOCK)
            .zip(queries.values().par_chunks(QUERY_BLOCK * cols))
            .enumerate()
            .for_each(|(block, (found, values))| {
                let first = block * QUERY_BLOCK;
                let owns = |q: usize| if exclude_self { first + q } else { usize::MAX };
                let mut screens = self.screen_block(values, k, owns);
                for (q, (found, screen)) in found.iter_mut().zip(&mut screens).enumerate() {
                    let query = &values[q * cols..(q + 1) * cols];
                    let own = owns(q);
                    if screen.overflowed {
                        BruteForce::nearest(training, query, (own != usize::MAX).then_some(own), found);
                        continue;
                    }
                    found.clear();
                    for &(_, index) in &screen.candidates {
                        found.offer(squared_distance(training.row(index as usize), query), index);
                    }
                }
            });
        all
    }

    /// Screens the queries `values` (whole rows) against every training row:
    /// per query, the candidates that may be among its k nearest.
    fn screen_block(&self, values: &[f64], k: usize, owns: impl Fn(usize) -> usize) -> Vec<Screen> {
        let cols = self.centre.len();
        let block_rows = values.len() / cols;
        let block = Array2::from_shape_fn((block_rows, cols), |(r, c)| {
            (values[r * cols + c] - self.centre[c]) as f32
        });
        let mut screens: Vec<Screen> = block
            .outer_iter()
            .map(|row| {
                let norm = norm2(row.iter().copied());
                Screen::new(k, f64::from(norm as f32), self.band(norm.sqrt()))
            })
            .collect();
        let mut products = Array2::<f32>::zeros((block_rows, TRAIN_TILE));
        let rows = self.centred.nrows();
        for start in (0..rows).step_by(TRAIN_TILE) {
            let end = (start + TRAIN_TILE).min(rows);
            let tile: ArrayView2<f32> = self.centred.slice(s![start..end, ..]);
            let mut products = products.slice_mut(s![.., ..end - start]);
            general_mat_mul(-2.0, &block, &tile.t(), 0.0, &mut products);
            let norms = &self.norms[start..end];
            for (q, (screen, row)) in screens.iter_mut().zip(products.outer_iter()).enumerate() {
                if let Some(row) = row.as_slice() {
                    screen.scan(row, norms, start, owns(q));
                }
            }
        }
        screens
    }

    /// Twice the largest error of a screened squared distance from a query of
    /// centred norm `query_norm`.
    ///
    /// With unit roundoff u = 2⁻²⁴, s = ‖a‖ + ‖b‖ and d dimensions, the
    /// screened ‖a‖² + ‖b‖² − 2 a·b differs from the exact ‖a − b‖² by at
    /// most: 2u s² from rounding the centred values to `f32`, (d/2)·γ s² from
    /// the d-term dot product (γ ≈ d u, any summation order, since
    /// 2‖a‖‖b‖ ≤ s²/2), and 2u s² from rounding the two norms and their sum.
    /// (d + 16) u s² covers these with room for the cut-off's own rounding.
    ///
    /// Values too small for `f32`'s normal range lose absolute, not relative,
    /// precision: each dimension adds at most a few `f32::MIN_POSITIVE`·s, the
    /// last term. Beyond [`SCREEN_RANGE`] the band is infinite: the screen
    /// would overflow, and the query is scanned exactly.
    fn band(&self, query_norm: f64) -> f64 {
        let unit_roundoff = f64::from(f32::EPSILON) / 2.0;
        let dims = self.centre.len() as f64;
        let s = query_norm + self.max_norm;
        if !s.is_finite() || s * s >= SCREEN_RANGE {
            return f64::INFINITY;
        }
        2.0 * ((dims + 16.0) * unit_roundoff * s * s + 4.0 * dims * f64::from(f32::MIN_POSITIVE) * (s + 1.0))
    }
}

/// One query's screen: the training rows whose screened distance is within
/// `band` of the k-th smallest seen so far.
///
/// Why this keeps every true neighbour: each screened distance d̃ is within
/// E = band / 2 of the exact d. The k rows of smallest d̃ have d ≤ d̃₍ₖ₎ + E,
/// so the exact k-th distance is at most d̃₍ₖ₎ + E, and a true neighbour has
/// d̃ ≤ d + E ≤ d̃₍ₖ₎ + 2E. The running k-th smallest only decreases towards
/// the final one, so nothing discarded on the way could have been needed.
struct Screen {
    k: usize,
    /// The query's centred ‖a‖², the term the products leave out.
    query_norm2: f64,
    band: f64,
    /// (screened squared distance, training row).
    candidates: Vec<(f64, u32)>,
    /// The buffer size at which candidates beyond the band are dropped.
    capacity: usize,
    /// Products plus training norms at most this may be within the band.
    cut: f32,
    /// Too many candidates, or values beyond the screen's range: the query
    /// is answered by an exact scan.
    overflowed: bool,
}

impl Screen {
    fn new(k: usize, query_norm2: f64, band: f64) -> Screen {
        let capacity = (4 * k).max(64);
        Screen {
            k,
            query_norm2,
            band,
            candidates: Vec::with_capacity(capacity),
            capacity,
            cut: f32::INFINITY,
            overflowed: !band.is_finite(),
        }
    }

    /// Screens one row of a tile's products (−2 a·b for training rows
    /// `start..`), skipping the training row `own`. Compiled a second time for
    /// AVX2, chosen at run time.
    fn scan(&mut self, products: &[f32], norms: &[f32], start: usize, own: usize) {
        if self.overflowed {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the processor has AVX2, checked just above.
            return unsafe { self.scan_avx2(products, norms, start, own) };
        }
        self.scan_portable(products, norms, start, own);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn scan_avx2(&mut self, products: &[f32], norms: &[f32], start: usize, own: usize) {
        self.scan_portable(products, norms, start, own);
    }

    #[inline(always)]
    fn scan_portable(&mut self, products: &[f32], norms: &[f32], start: usize, own: usize) {
        let (product_chunks, product_tail) = products.as_chunks::<LANES>();
        let (norm_chunks, norm_tail) = norms.as_chunks::<LANES>();
        for (chunk, (p, n)) in product_chunks.iter().zip(norm_chunks).enumerate() {
            // Almost every chunk is rejected whole, on its least value.
            if least_sum(p, n) <= self.cut {
                self.take(&p[..], &n[..], start + chunk * LANES, own);
            }
        }
        let tail_start = start + product_chunks.len() * LANES;
        self.take(product_tail, norm_tail, tail_start, own);
    }

    fn take(&mut self, products: &[f32], norms: &[f32], start: usize, own: usize) {
        for (offset, (p, n)) in products.iter().zip(norms).enumerate() {
            let v = p + n;
            let index = start + offset;
            if v <= self.cut && index != own {
                self.candidates.push((self.query_norm2 + f64::from(v), index as u32));
                if self.candidates.len() >= self.capacity {
                    self.prune();
                }
            }
        }
    }

    /// Drops the candidates beyond the band of the k-th smallest; grows the
    /// buffer if most are within it, up to [`MAX_CANDIDATES`], past which the
    /// query is given up to the exact scan.
    fn prune(&mut self) {
        if self.overflowed || self.candidates.len() <= self.k {
            return;
        }
        let (_, kth, _) = self.candidates.select_nth_unstable_by(self.k - 1, |a, b| a.0.total_cmp(&b.0));
        let limit = kth.0 + self.band;
        self.candidates.retain(|&(d, _)| d <= limit);
        // The cut is compared with products plus training norms, which leave
        // out the query's own norm; rounding it up keeps it conservative.
        self.cut = ((limit - self.query_norm2) as f32).next_up();
        if self.candidates.len() * 2 > self.capacity {
            self.capacity *= 2;
            if self.capacity > MAX_CANDIDATES {
                self.overflowed = true;
                self.cut = f32::NEG_INFINITY;
                self.candidates = Vec::new();
            }
        }
    }
}

/// Products per chunk that the screen accepts or rejects at once.
const LANES: usize = 16;

/// min(p[i] + n[i]): the screen's inner loop. The halving tree (rather than
/// a running minimum, whose order the compiler must keep) compiles to vector
/// minimums.
#[inline(always)]
fn least_sum(p: &[f32; LANES], n: &[f32; LANES]) -> f32 {
    let mut v = [0.0f32; LANES];
    for lane in 0..LANES {
        v[lane] = p[lane] + n[lane];
    }
    let mut width = LANES / 2;
    while width > 0 {
        for lane in 0..width {
            v[lane] = if v[lane + width] < v[lane] { v[lane + width] } else { v[lane] };
        }
        width /= 2;
    }
    v[0]
}

fn norm2(values: impl Iterator<Item = f32>) -> f64 {
    values.map(|v| f64::from(v) * f64::from(v)).sum()
}
