//! An approximate One-Class SVM for training sets too large for the exact solver,
//! whose cost grows with the square of the rows: the RBF kernel is replaced by
//! random Fourier features (Rahimi & Recht 2007), z(x) = √(2/D)·cos(Wx + b) with
//! W ~ N(0, 2γ) and b ~ U[0, 2π), so that z(x)·z(y) ≈ exp(−γ‖x − y‖²), and the
//! linear one-class problem
//! min ½‖w‖² − ρ + (1/νn) Σ max(0, ρ − w·z(xᵢ))
//! is solved in the primal by averaged stochastic subgradient descent, one pass
//! per epoch: cost linear in the rows. This is the method scikit-learn documents
//! for large data (`RBFSampler` + `SGDOneClassSVM`). Rows are projected in
//! blocks by one matrix product (ndarray's, vectorised at run time), in fitting
//! and batch scoring alike; scoring one vector costs D cosines and allocates
//! nothing.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, s};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::detector::{Contamination, Detector, contamination_threshold};
use crate::error::{AnomalyError, Result};
use crate::matrix::Matrix;
use crate::rbf::Gamma;

/// Rows projected together by one matrix product.
const PROJECT_BLOCK: usize = 256;

/// Hyper-parameters of [`RandomFeatureOneClassSvm::fit`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandomFeatureParams {
    pub nu: f64,
    pub gamma: Gamma,
    /// D, the number of random features: more is closer to the exact kernel and slower.
    pub n_components: usize,
    pub epochs: usize,
    pub seed: u64,
    pub contamination: Contamination,
}

impl Default for RandomFeatureParams {
    fn default() -> Self {
        RandomFeatureParams {
            nu: 0.5,
            gamma: Gamma::Scale,
            n_components: 512,
            epochs: 3,
            seed: 0,
            contamination: Contamination::Auto,
        }
    }
}

/// A fitted random-feature One-Class SVM. Its score is ρ − w·z(x): positive
/// outside the learned support, like [`crate::OneClassSvm`]'s.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RandomFeatureOneClassSvm {
    n_features: usize,
    /// D × n_features projection, row-major.
    projection: Vec<f64>,
    phases: Vec<f64>,
    /// The weights, with √(2/D) folded in.
    weights: Vec<f64>,
    rho: f64,
    threshold: f64,
}

impl RandomFeatureOneClassSvm {
    pub fn fit(data: &Matrix, params: &RandomFeatureParams) -> Result<RandomFeatureOneClassSvm> {
        data.check_trainable()?;
        params.contamination.validate()?;
        if !(params.nu > 0.0 && params.nu <= 1.0) {
            return Err(AnomalyError::Parameter(format!("nu must be in (0, 1], got {}", params.nu)));
        }
        if params.n_components == 0 || params.epochs == 0 {
            return Err(AnomalyError::Parameter("n_components and epochs must be at least 1".into()));
        }
        let gamma = params.gamma.resolve(data)?;
        let (d, cols) = (params.n_components, data.cols());
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(params.seed);
        let scale = (2.0 * gamma).sqrt();
        let projection: Vec<f64> = (0..d * cols).map(|_| scale * standard_normal(&mut rng)).collect();
        let phases: Vec<f64> = (0..d).map(|_| rng.random::<f64>() * std::f64::consts::TAU).collect();

        let mut model = RandomFeatureOneClassSvm {
            n_features: cols,
            projection,
            phases,
            weights: vec![0.0; d],
            rho: 0.0,
            threshold: 0.0,
        };
        model.descend(data, params, &mut rng)?;
        if let Contamination::Fraction(fraction) = params.contamination {
            model.threshold = contamination_threshold(&model.score(data)?, fraction);
        }
        Ok(model)
    }

    /// Averaged SGD with step 1/t: w becomes a running mean of z(xᵢ)/ν over the
    /// rows below ρ, and ρ settles where a fraction ν of rows is below it.
    fn descend(
        &mut self,
        data: &Matrix,
        params: &RandomFeatureParams,
        rng: &mut Xoshiro256PlusPlus,
    ) -> Result<()> {
        let d = self.phases.len();
        let feature_scale = (2.0 / d as f64).sqrt();
        let mut w = vec![0.0; d];
        let mut rho = 0.0;
        let mut average_w = vec![0.0; d];
        let mut average_rho = 0.0;
        let mut averaged = 0.0f64;
        let mut order: Vec<usize> = (0..data.rows()).collect();
        let mut step_count = 0.0f64;
        let mut z = Array2::<f64>::zeros((PROJECT_BLOCK, d));
        for epoch in 0..params.epochs {
            order.shuffle(rng);
            for rows in order.chunks(PROJECT_BLOCK) {
                let block = Array2::from_shape_fn((rows.len(), data.cols()), |(r, c)| data.row(rows[r])[c]);
                let mut z = z.slice_mut(s![..rows.len(), ..]);
                self.project(block.view(), &mut z)?;
                for z in z.outer_iter() {
                    step_count += 1.0;
                    let margin: f64 = w.iter().zip(z.iter()).map(|(wk, zk)| wk * feature_scale * zk).sum();
                    let step = 1.0 / (step_count + 1.0);
                    let decay = 1.0 - step;
                    if margin < rho {
                        let push = step / params.nu;
                        w.iter_mut()
                            .zip(z.iter())
                            .for_each(|(wk, zk)| *wk = decay * *wk + push * feature_scale * zk);
                        rho += step * (1.0 - 1.0 / params.nu);
                    } else {
                        w.iter_mut().for_each(|wk| *wk *= decay);
                        rho += step;
                    }
                    // Average over the last epoch, or the second half of a single one.
                    if epoch + 1 == params.epochs
                        && (params.epochs > 1 || step_count * 2.0 > order.len() as f64)
                    {
                        averaged += 1.0;
                        let weight = 1.0 / averaged;
                        average_w.iter_mut().zip(&w).for_each(|(a, wk)| *a += (wk - *a) * weight);
                        average_rho += (rho - average_rho) * weight;
                    }
                }
            }
        }
        self.weights = average_w.iter().map(|wk| wk * feature_scale).collect();
        self.rho = average_rho;
        Ok(())
    }

    /// cos(XWᵀ + b) for the rows X of `block`, into `out` (rows × D).
    fn project(&self, block: ArrayView2<'_, f64>, out: &mut ArrayViewMut2<'_, f64>) -> Result<()> {
        let projection = ArrayView2::from_shape((self.phases.len(), self.n_features), &self.projection)
            .map_err(|e| AnomalyError::CorruptModel(format!("random-feature SVM: {e}")))?;
        general_mat_mul(1.0, &block, &projection.t(), 0.0, out);
        for mut row in out.outer_iter_mut() {
            row.iter_mut().zip(&self.phases).for_each(|(angle, phase)| *angle = (*angle + phase).cos());
        }
        Ok(())
    }

    fn feature_angle(&self, k: usize, x: &[f64]) -> f64 {
        let w = &self.projection[k * self.n_features..(k + 1) * self.n_features];
        w.iter().zip(x).map(|(a, b)| a * b).sum::<f64>() + self.phases[k]
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let corrupt = |what: &str| Err(AnomalyError::CorruptModel(format!("random-feature SVM: {what}")));
        let d = self.phases.len();
        if self.n_features == 0
            || d == 0
            || self.weights.len() != d
            || self.projection.len() != d * self.n_features
        {
            return corrupt("bad shape");
        }
        let finite = self.projection.iter().chain(&self.phases).chain(&self.weights).all(|v| v.is_finite());
        if !finite || !self.rho.is_finite() || !self.threshold.is_finite() {
            return corrupt("non-finite value");
        }
        Ok(())
    }
}

impl Detector for RandomFeatureOneClassSvm {
    fn n_features(&self) -> usize {
        self.n_features
    }

    fn score(&self, data: &Matrix) -> Result<Vec<f64>> {
        data.check_scorable(self.n_features)?;
        let cols = self.n_features;
        let blocks: Vec<Vec<f64>> = data
            .values()
            .par_chunks(PROJECT_BLOCK * cols)
            .map(|values| {
                let rows = values.len() / cols;
                let block = ArrayView2::from_shape((rows, cols), values)
                    .map_err(|e| AnomalyError::Parameter(format!("block shape: {e}")))?;
                let mut z = Array2::<f64>::zeros((rows, self.phases.len()));
                self.project(block, &mut z.view_mut())?;
                Ok(z.outer_iter()
                    .map(|z| self.rho - self.weights.iter().zip(z.iter()).map(|(w, z)| w * z).sum::<f64>())
                    .collect())
            })
            .collect::<Result<_>>()?;
        Ok(blocks.concat())
    }

    fn score_checked(&self, x: &[f64]) -> f64 {
        let fit: f64 = self.weights.iter().enumerate().map(|(k, w)| w * self.feature_angle(k, x).cos()).sum();
        self.rho - fit
    }

    fn threshold(&self) -> f64 {
        self.threshold
    }
}

/// A standard normal draw by the Box–Muller transform (rand's distributions
/// live in another crate; this is the one we need).
fn standard_normal(rng: &mut Xoshiro256PlusPlus) -> f64 {
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random::<f64>();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}
