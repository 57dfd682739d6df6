//! One-Class SVM (Schölkopf et al. 2001) with an RBF kernel, solved exactly as
//! libsvm (and so scikit-learn) does: the dual
//! min ½αᵀKα subject to 0 ≤ αᵢ ≤ 1 and Σαᵢ = νl, by sequential minimal
//! optimisation with second-order working-set selection (Fan, Chen & Lin 2005),
//! the same starting point (the first ⌊νl⌋ multipliers at 1) and the same
//! stopping tolerance. Kernel rows are computed on demand, in parallel, into an
//! LRU cache, because the full kernel matrix of 20,000 rows would be 1.6 GB.
//!
//! The score is ρ − Σαᵢ k(xᵢ, x), scikit-learn's `-decision_function`: positive
//! outside the learned support, so the default threshold is 0.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, s};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::detector::{Contamination, Detector, contamination_threshold};
use crate::error::{AnomalyError, Result};
use crate::matrix::Matrix;
use crate::rbf::{Gamma, exp_in_place, kernel_values};

/// Hyper-parameters of [`OneClassSvm::fit`]; the defaults are scikit-learn's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OneClassSvmParams {
    pub nu: f64,
    pub gamma: Gamma,
    /// Stopping tolerance on the maximal KKT violation (libsvm's `eps`).
    pub tolerance: f64,
    /// Memory for cached kernel rows.
    pub cache_bytes: usize,
    pub contamination: Contamination,
}

impl Default for OneClassSvmParams {
    fn default() -> Self {
        OneClassSvmParams {
            nu: 0.5,
            gamma: Gamma::Scale,
            tolerance: 1e-3,
            cache_bytes: 256 << 20,
            contamination: Contamination::Auto,
        }
    }
}

/// libsvm's floor on the curvature of a pair, for non-positive-definite steps.
const TAU: f64 = 1e-12;

/// A fitted One-Class SVM: its support vectors and their multipliers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OneClassSvm {
    n_features: usize,
    gamma: f64,
    rho: f64,
    support_vectors: Vec<f64>,
    coefficients: Vec<f64>,
    threshold: f64,
    /// Solver iterations, for the record.
    iterations: usize,
}

impl OneClassSvm {
    pub fn fit(data: &Matrix, params: &OneClassSvmParams) -> Result<OneClassSvm> {
        data.check_trainable()?;
        params.contamination.validate()?;
        if !(params.nu > 0.0 && params.nu <= 1.0) {
            return Err(AnomalyError::Parameter(format!("nu must be in (0, 1], got {}", params.nu)));
        }
        if !(params.tolerance > 0.0 && params.tolerance.is_finite()) {
            return Err(AnomalyError::Parameter("tolerance must be positive".into()));
        }
        let gamma = params.gamma.resolve(data)?;
        let solution = Solver::new(data, gamma, params.nu, params.cache_bytes).solve(params.tolerance);
        let mut support_vectors = Vec::new();
        let mut coefficients = Vec::new();
        for (row, &alpha) in solution.alpha.iter().enumerate() {
            if alpha > 0.0 {
                support_vectors.extend_from_slice(data.row(row));
                coefficients.push(alpha);
            }
        }
        let mut svm = OneClassSvm {
            n_features: data.cols(),
            gamma,
            rho: solution.rho,
            support_vectors,
            coefficients,
            threshold: 0.0,
            iterations: solution.iterations,
        };
        if let Contamination::Fraction(fraction) = params.contamination {
            svm.threshold = contamination_threshold(&svm.score(data)?, fraction);
        }
        Ok(svm)
    }

    pub fn n_support_vectors(&self) -> usize {
        self.coefficients.len()
    }

    pub fn iterations(&self) -> usize {
        self.iterations
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let corrupt = |what: &str| Err(AnomalyError::CorruptModel(format!("one-class SVM: {what}")));
        if self.n_features == 0 || self.coefficients.is_empty() {
            return corrupt("bad shape");
        }
        if self.support_vectors.len() != self.coefficients.len() * self.n_features {
            return corrupt("support vectors do not match the coefficients");
        }
        let all_finite = self.support_vectors.iter().chain(&self.coefficients).all(|v| v.is_finite());
        if !(all_finite && self.gamma.is_finite() && self.gamma > 0.0 && self.rho.is_finite()) {
            return corrupt("non-finite value");
        }
        if !self.threshold.is_finite() {
            return corrupt("non-finite threshold");
        }
        Ok(())
    }
}

/// Support vectors are scored in blocks of this many, so scoring one vector
/// needs only a small stack buffer, whatever the number of support vectors.
const SCORE_BLOCK: usize = 256;

impl Detector for OneClassSvm {
    fn n_features(&self) -> usize {
        self.n_features
    }

    fn score_checked(&self, x: &[f64]) -> f64 {
        let mut buffer = [0.0f64; SCORE_BLOCK];
        let mut total = 0.0;
        let width = self.n_features;
        for (svs, coefficients) in
            self.support_vectors.chunks(SCORE_BLOCK * width).zip(self.coefficients.chunks(SCORE_BLOCK))
        {
            let block = &mut buffer[..coefficients.len()];
            kernel_values(x, svs, self.gamma, block);
            total += block.iter().zip(coefficients).map(|(k, a)| k * a).sum::<f64>();
        }
        self.rho - total
    }

    fn threshold(&self) -> f64 {
        self.threshold
    }
}

struct Solution {
    alpha: Vec<f64>,
    rho: f64,
    iterations: usize,
}

/// libsvm's `Solver` specialised to the one-class problem (all labels +1, no
/// linear term, upper bound 1).
struct Solver<'a> {
    data: &'a Matrix,
    gamma: f64,
    alpha: Vec<f64>,
    gradient: Vec<f64>,
    cache: KernelCache,
}

impl<'a> Solver<'a> {
    fn new(data: &'a Matrix, gamma: f64, nu: f64, cache_bytes: usize) -> Solver<'a> {
        let l = data.rows();
        let total = nu * l as f64;
        let whole = (total as usize).min(l);
        let mut alpha = vec![0.0; l];
        alpha[..whole].iter_mut().for_each(|a| *a = 1.0);
        if whole < l {
            alpha[whole] = total - whole as f64;
        }
        let gradient = initial_gradient(data, gamma, &alpha);
        let cache = KernelCache::new(l, cache_bytes);
        Solver { data, gamma, alpha, gradient, cache }
    }

    fn solve(mut self, tolerance: f64) -> Solution {
        let l = self.data.rows();
        let max_iterations = (100 * l).max(10_000_000);
        let mut iterations = 0;
        while iterations < max_iterations {
            let Some((i, j)) = self.select_working_set(tolerance) else { break };
            iterations += 1;
            let slot_i = self.cache.row(i, None, self.data, self.gamma);
            let slot_j = self.cache.row(j, Some(slot_i), self.data, self.gamma);
            let (row_i, row_j) = (self.cache.slot(slot_i), self.cache.slot(slot_j));
            let (old_i, old_j) = (self.alpha[i], self.alpha[j]);
            let curvature = (row_i[i] as f64 + row_j[j] as f64 - 2.0 * row_i[j] as f64).max(TAU);
            let delta = (self.gradient[i] - self.gradient[j]) / curvature;
            let sum = old_i + old_j;
            let (mut ai, mut aj) = (old_i - delta, old_j + delta);
            if sum > 1.0 {
                if ai > 1.0 {
                    ai = 1.0;
                    aj = sum - 1.0;
                }
            } else if aj < 0.0 {
                aj = 0.0;
                ai = sum;
            }
            if sum > 1.0 {
                if aj > 1.0 {
                    aj = 1.0;
                    ai = sum - 1.0;
                }
            } else if ai < 0.0 {
                ai = 0.0;
                aj = sum;
            }
            self.alpha[i] = ai;
            self.alpha[j] = aj;
            let (di, dj) = (ai - old_i, aj - old_j);
            for ((g, &ki), &kj) in self.gradient.iter_mut().zip(row_i).zip(row_j) {
                *g += ki as f64 * di + kj as f64 * dj;
            }
        }
        let rho = self.rho();
        Solution { alpha: self.alpha, rho, iterations }
    }

    /// The most violating pair by libsvm's second-order rule, or `None` once the
    /// maximal violation is below the tolerance.
    fn select_working_set(&mut self, tolerance: f64) -> Option<(usize, usize)> {
        let mut g_max = f64::NEG_INFINITY;
        let mut i = usize::MAX;
        for (t, (&a, &g)) in self.alpha.iter().zip(&self.gradient).enumerate() {
            if a < 1.0 && -g >= g_max {
                g_max = -g;
                i = t;
            }
        }
        if i == usize::MAX {
            return None;
        }
        let slot_i = self.cache.row(i, None, self.data, self.gamma);
        let row_i = self.cache.slot(slot_i);
        let diagonal_i = row_i[i] as f64;
        let mut g_max2 = f64::NEG_INFINITY;
        let mut best = f64::INFINITY;
        let mut j = usize::MAX;
        for (t, (&a, &g)) in self.alpha.iter().zip(&self.gradient).enumerate() {
            if a <= 0.0 {
                continue;
            }
            g_max2 = g_max2.max(g);
            let gradient_gap = g_max + g;
            if gradient_gap > 0.0 {
                // k(x, x) = 1 for the RBF kernel.
                let curvature = (diagonal_i + 1.0 - 2.0 * row_i[t] as f64).max(TAU);
                let decrease = -(gradient_gap * gradient_gap) / curvature;
                if decrease <= best {
                    best = decrease;
                    j = t;
                }
            }
        }
        if g_max + g_max2 < tolerance || j == usize::MAX { None } else { Some((i, j)) }
    }

    /// ρ: the mean gradient over free multipliers, or the middle of the feasible
    /// interval when none is free (libsvm's `calculate_rho`).
    fn rho(&self) -> f64 {
        let (mut upper, mut lower) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut free_sum, mut free_count) = (0.0, 0usize);
        for (&a, &g) in self.alpha.iter().zip(&self.gradient) {
            if a >= 1.0 {
                lower = lower.max(g);
            } else if a <= 0.0 {
                upper = upper.min(g);
            } else {
                free_sum += g;
                free_count += 1;
            }
        }
        if free_count > 0 { free_sum / free_count as f64 } else { (upper + lower) / 2.0 }
    }
}

/// Rows per parallel block of the initial gradient.
const GRADIENT_BLOCK: usize = 256;
/// Multipliers per tile of the initial gradient: a block's products
/// (256 × 1024 × 8 bytes = 2 MB) stay in L2.
const GRADIENT_TILE: usize = 1024;

/// G = Kα at the starting point. Half the multipliers start non-zero (ν = 0.5),
/// so this touches half the kernel matrix: as libsvm does, but as one blocked
/// matrix product, k(x, z) = exp(−γ(‖x‖² + ‖z‖² − 2x·z)), rather than kernel
/// rows one by one through the cache, which cost more than all the iterations.
/// Kernel values are rounded to `f32` as the cache rounds them.
fn initial_gradient(data: &Matrix, gamma: f64, alpha: &[f64]) -> Vec<f64> {
    let cols = data.cols();
    let norm = |row: &[f64]| row.iter().map(|v| v * v).sum::<f64>();
    let support: Vec<usize> = (0..data.rows()).filter(|&i| alpha[i] != 0.0).collect();
    let support_points = Array2::from_shape_fn((support.len(), cols), |(i, c)| data.row(support[i])[c]);
    let support_norms: Vec<f64> = support.iter().map(|&i| norm(data.row(i))).collect();
    let support_alpha: Vec<f64> = support.iter().map(|&i| alpha[i]).collect();
    let mut gradient = vec![0.0; data.rows()];
    gradient.par_chunks_mut(GRADIENT_BLOCK).zip(data.values().par_chunks(GRADIENT_BLOCK * cols)).for_each(
        |(gradient, values)| {
            let block = Array2::from_shape_fn((gradient.len(), cols), |(r, c)| values[r * cols + c]);
            let norms: Vec<f64> = values.chunks_exact(cols).map(norm).collect();
            let mut products = Array2::<f64>::zeros((gradient.len(), GRADIENT_TILE));
            let mut kernel = [0.0f64; GRADIENT_TILE];
            for start in (0..support.len()).step_by(GRADIENT_TILE) {
                let end = (start + GRADIENT_TILE).min(support.len());
                let tile = support_points.slice(s![start..end, ..]);
                let mut products = products.slice_mut(s![.., ..end - start]);
                general_mat_mul(-2.0, &block, &tile.t(), 0.0, &mut products);
                for ((g, row), &own_norm) in gradient.iter_mut().zip(products.outer_iter()).zip(&norms) {
                    let kernel = &mut kernel[..end - start];
                    for ((k, &product), &other_norm) in
                        kernel.iter_mut().zip(row.iter()).zip(&support_norms[start..end])
                    {
                        *k = -gamma * (own_norm + other_norm + product).max(0.0);
                    }
                    exp_in_place(kernel);
                    *g += kernel
                        .iter()
                        .zip(&support_alpha[start..end])
                        .map(|(&k, a)| a * (k as f32) as f64)
                        .sum::<f64>();
                }
            }
        },
    );
    gradient
}

/// Kernel rows (as `f32`, like libsvm) in a fixed number of slots, evicting the
/// least recently used row.
struct KernelCache {
    l: usize,
    rows: Vec<f32>,
    slot_of_row: Vec<u32>,
    row_of_slot: Vec<usize>,
    last_used: Vec<u64>,
    clock: u64,
}

impl KernelCache {
    fn new(l: usize, bytes: usize) -> KernelCache {
        let slots = (bytes / (4 * l)).clamp(2, l.max(2));
        KernelCache {
            l,
            rows: vec![0.0; slots * l],
            slot_of_row: vec![u32::MAX; l],
            row_of_slot: vec![usize::MAX; slots],
            last_used: vec![0; slots],
            clock: 0,
        }
    }

    fn slot(&self, slot: usize) -> &[f32] {
        &self.rows[slot * self.l..(slot + 1) * self.l]
    }

    /// The slot holding kernel row `row`, computing it if absent without evicting `keep`.
    fn row(&mut self, row: usize, keep: Option<usize>, data: &Matrix, gamma: f64) -> usize {
        self.clock += 1;
        let cached = self.slot_of_row[row];
        if cached != u32::MAX {
            self.last_used[cached as usize] = self.clock;
            return cached as usize;
        }
        let slot = (0..self.row_of_slot.len())
            .filter(|&s| Some(s) != keep)
            .min_by_key(|&s| self.last_used[s])
            .unwrap_or(0);
        if let Some(old) = self.row_of_slot.get(slot).copied().filter(|&r| r != usize::MAX) {
            self.slot_of_row[old] = u32::MAX;
        }
        self.row_of_slot[slot] = row;
        self.slot_of_row[row] = slot as u32;
        self.last_used[slot] = self.clock;
        let x = data.row(row);
        let cols = data.cols();
        self.rows[slot * self.l..(slot + 1) * self.l]
            .par_chunks_mut(1024)
            .zip(data.values().par_chunks(1024 * cols))
            .for_each(|(out, rows)| {
                let mut buffer = [0.0f64; 1024];
                let buffer = &mut buffer[..out.len()];
                kernel_values(x, rows, gamma, buffer);
                out.iter_mut().zip(buffer.iter()).for_each(|(o, &v)| *o = v as f32);
            });
        slot
    }
}
