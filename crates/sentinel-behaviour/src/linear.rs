//! L2-regularised logistic regression (binary and multinomial) trained with
//! L-BFGS, and the stacking (Platt scaling of two models at once) that
//! combines and calibrates the detector's parts.
//!
//! The objective is scikit-learn's: `C * Σ loss_i + ½‖w‖²` (the intercept is
//! not penalised), so `C` means the same thing on both sides of the benchmark.
//! Training is deterministic: full-batch, no random initialisation.

use crate::features::SparseVector;

/// Limits of one L-BFGS run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Solver {
    pub max_iterations: usize,
    /// Stop when the largest gradient component falls below this.
    pub tolerance: f64,
}

impl Default for Solver {
    fn default() -> Self {
        Solver { max_iterations: 500, tolerance: 1e-5 }
    }
}

const HISTORY: usize = 10;

/// Minimises `objective` (which writes the gradient into its second argument
/// and returns the value) from `x`, with L-BFGS and a backtracking Armijo line
/// search.
fn minimise(mut x: Vec<f64>, solver: Solver, objective: impl Fn(&[f64], &mut [f64]) -> f64) -> Vec<f64> {
    let dim = x.len();
    let mut grad = vec![0.0; dim];
    let mut value = objective(&x, &mut grad);
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut next_grad = vec![0.0; dim];
    let mut candidate = vec![0.0; dim];
    for _ in 0..solver.max_iterations {
        if grad.iter().fold(0.0f64, |m, g| m.max(g.abs())) < solver.tolerance {
            break;
        }
        // Two-loop recursion: direction = -H * grad.
        let mut direction: Vec<f64> = grad.iter().map(|g| -g).collect();
        let mut alphas = Vec::with_capacity(s_hist.len());
        for (s, y) in s_hist.iter().zip(&y_hist).rev() {
            let rho = 1.0 / dot(y, s);
            let alpha = rho * dot(s, &direction);
            axpy(-alpha, y, &mut direction);
            alphas.push((alpha, rho));
        }
        if let (Some(s), Some(y)) = (s_hist.last(), y_hist.last()) {
            let gamma = dot(s, y) / dot(y, y);
            direction.iter_mut().for_each(|d| *d *= gamma);
        } else {
            // First step: a unit step along the normalised gradient.
            let norm = dot(&grad, &grad).sqrt().max(1e-12);
            direction.iter_mut().for_each(|d| *d /= norm);
        }
        for ((s, y), (alpha, rho)) in s_hist.iter().zip(&y_hist).zip(alphas.into_iter().rev()) {
            let beta = rho * dot(y, &direction);
            axpy(alpha - beta, s, &mut direction);
        }
        let mut slope = dot(&grad, &direction);
        if slope >= 0.0 {
            // Not a descent direction (numerical trouble): restart from steepest descent.
            s_hist.clear();
            y_hist.clear();
            direction = grad.iter().map(|g| -g).collect();
            slope = dot(&grad, &direction);
        }
        let mut step = 1.0;
        let mut accepted = None;
        for _ in 0..40 {
            for i in 0..dim {
                candidate[i] = x[i] + step * direction[i];
            }
            let new_value = objective(&candidate, &mut next_grad);
            if new_value.is_finite() && new_value <= value + 1e-4 * step * slope {
                accepted = Some(new_value);
                break;
            }
            step *= 0.5;
        }
        let Some(new_value) = accepted else { break };
        let s: Vec<f64> = candidate.iter().zip(&x).map(|(c, o)| c - o).collect();
        let y: Vec<f64> = next_grad.iter().zip(&grad).map(|(n, o)| n - o).collect();
        std::mem::swap(&mut x, &mut candidate);
        std::mem::swap(&mut grad, &mut next_grad);
        let converged = (value - new_value).abs() <= 1e-10 * value.abs().max(1.0);
        value = new_value;
        if dot(&s, &y) > 1e-12 {
            if s_hist.len() == HISTORY {
                s_hist.remove(0);
                y_hist.remove(0);
            }
            s_hist.push(s);
            y_hist.push(y);
        }
        if converged {
            break;
        }
    }
    x
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

/// `ln(1 + e^z)` without overflow.
fn softplus(z: f64) -> f64 {
    if z > 0.0 { z + (-z).exp().ln_1p() } else { z.exp().ln_1p() }
}

pub(crate) fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// A fitted binary model: `z = w·x + b`.
#[derive(Debug, Clone)]
pub(crate) struct BinaryModel {
    pub weights: Vec<f64>,
    pub bias: f64,
}

impl BinaryModel {
    pub fn decision(&self, x: &SparseVector) -> f64 {
        x.dot(&self.weights) + self.bias
    }
}

/// Fits a binary logistic regression.
pub(crate) fn fit_binary(
    rows: &[SparseVector],
    labels: &[bool],
    dim: usize,
    c: f64,
    solver: Solver,
) -> BinaryModel {
    let params = minimise(vec![0.0; dim + 1], solver, |p, grad| {
        let (w, b) = p.split_at(dim);
        grad.iter_mut().for_each(|g| *g = 0.0);
        let mut loss = 0.0;
        for (row, &label) in rows.iter().zip(labels) {
            let z = row.dot(w) + b[0];
            let y = if label { 1.0 } else { -1.0 };
            loss += softplus(-y * z);
            // d/dz softplus(-y z) = -y * sigmoid(-y z)
            let dz = -y * sigmoid(-y * z) * c;
            for (&i, &v) in row.indices.iter().zip(&row.values) {
                grad[i as usize] += dz * v;
            }
            grad[dim] += dz;
        }
        for i in 0..dim {
            grad[i] += w[i];
        }
        c * loss + 0.5 * dot(w, w)
    });
    let bias = params[dim];
    let mut weights = params;
    weights.truncate(dim);
    BinaryModel { weights, bias }
}

/// A fitted multinomial model: one weight row and bias per class.
#[derive(Debug, Clone)]
pub(crate) struct MultinomialModel {
    pub weights: Vec<Vec<f64>>,
    pub biases: Vec<f64>,
}

/// Softmax of `z` in place.
pub(crate) fn softmax(z: &mut [f64]) {
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for v in z.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    z.iter_mut().for_each(|v| *v /= sum);
}

/// Fits a multinomial (softmax) logistic regression over `classes` classes.
pub(crate) fn fit_multinomial(
    rows: &[SparseVector],
    labels: &[usize],
    dim: usize,
    classes: usize,
    c: f64,
    solver: Solver,
) -> MultinomialModel {
    let stride = dim + 1;
    let params = minimise(vec![0.0; classes * stride], solver, |p, grad| {
        grad.iter_mut().for_each(|g| *g = 0.0);
        let mut loss = 0.0;
        let mut z = vec![0.0; classes];
        for (row, &label) in rows.iter().zip(labels) {
            for (k, zk) in z.iter_mut().enumerate() {
                let block = &p[k * stride..(k + 1) * stride];
                *zk = row.dot(&block[..dim]) + block[dim];
            }
            let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let log_sum = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            loss += log_sum - z[label];
            softmax(&mut z);
            for (k, &prob) in z.iter().enumerate() {
                let dz = c * (prob - if k == label { 1.0 } else { 0.0 });
                let block = &mut grad[k * stride..(k + 1) * stride];
                for (&i, &v) in row.indices.iter().zip(&row.values) {
                    block[i as usize] += dz * v;
                }
                block[dim] += dz;
            }
        }
        let mut penalty = 0.0;
        for k in 0..classes {
            for i in 0..dim {
                let w = p[k * stride + i];
                penalty += w * w;
                grad[k * stride + i] += w;
            }
        }
        c * loss + 0.5 * penalty
    });
    let mut weights = Vec::with_capacity(classes);
    let mut biases = Vec::with_capacity(classes);
    for block in params.chunks(stride) {
        weights.push(block[..dim].to_vec());
        biases.push(block[dim]);
    }
    MultinomialModel { weights, biases }
}

/// Stacking with Platt scaling: `p = sigmoid(w0 * z0 + w1 * z1 + b)` fitted
/// to two models' out-of-fold decision values with Platt's smoothed targets,
/// which keep probabilities off 0 and 1 when the folds separate perfectly.
/// With one model's values in both columns this is plain Platt scaling.
pub(crate) fn fit_stacking(decisions: &[[f64; 2]], labels: &[bool]) -> [f64; 3] {
    let positives = labels.iter().filter(|&&l| l).count() as f64;
    let negatives = labels.len() as f64 - positives;
    let high = (positives + 1.0) / (positives + 2.0);
    let low = 1.0 / (negatives + 2.0);
    let targets: Vec<f64> = labels.iter().map(|&l| if l { high } else { low }).collect();
    let start = vec![0.5, 0.5, 0.0];
    let params = minimise(start, Solver { max_iterations: 300, tolerance: 1e-9 }, |p, grad| {
        grad.iter_mut().for_each(|g| *g = 0.0);
        let mut loss = 0.0;
        for (z, &t) in decisions.iter().zip(&targets) {
            let u = p[0] * z[0] + p[1] * z[1] + p[2];
            // Cross-entropy of sigmoid(u) against the soft target t.
            loss += t * softplus(-u) + (1.0 - t) * softplus(u);
            let d = sigmoid(u) - t;
            grad[0] += d * z[0];
            grad[1] += d * z[1];
            grad[2] += d;
        }
        loss
    });
    [params[0], params[1], params[2]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[f64]) -> SparseVector {
        SparseVector { indices: (0..values.len() as u32).collect(), values: values.to_vec() }
    }

    #[test]
    fn binary_fit_matches_scikit_learn_on_a_tiny_problem() {
        // sklearn LogisticRegression(C=1.0, tol=1e-8).fit([[0],[1],[2],[3]], [0,0,1,1]):
        // coef_ = 0.958286, intercept_ = -1.437429.
        let rows: Vec<_> = [0.0, 1.0, 2.0, 3.0].iter().map(|&v| row(&[v])).collect();
        let model = fit_binary(&rows, &[false, false, true, true], 1, 1.0, Solver::default());
        assert!((model.weights[0] - 0.958286).abs() < 1e-4, "{}", model.weights[0]);
        assert!((model.bias + 1.437429).abs() < 1e-4, "{}", model.bias);
    }

    #[test]
    fn multinomial_fit_separates_three_clusters() {
        let rows: Vec<_> = [[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.0, 0.0], [0.05, 0.05]]
            .iter()
            .map(|r| row(r))
            .collect();
        let model = fit_multinomial(&rows, &[0, 0, 1, 1, 2, 2], 2, 3, 10.0, Solver::default());
        for (r, expected) in rows.iter().zip([0, 0, 1, 1, 2, 2]) {
            let mut z: Vec<f64> = (0..3).map(|k| r.dot(&model.weights[k]) + model.biases[k]).collect();
            softmax(&mut z);
            let best = (0..3).max_by(|&a, &b| z[a].total_cmp(&z[b])).unwrap();
            assert_eq!(best, expected);
        }
    }

    #[test]
    fn stacking_calibrates_and_weights_the_informative_model() {
        // The first model ranks the rows well, the second is noise.
        let first = [-3.0, -2.0, -1.0, 0.5, 1.0, 2.0, 3.0, -0.5, -2.5, 2.5];
        let noise = [1.0, -1.0, 0.5, -0.5, 1.0, -1.0, 0.5, -0.5, 0.0, 0.0];
        let labels = [false, false, false, true, true, true, true, true, false, true];
        let inputs: Vec<[f64; 2]> = first.iter().zip(&noise).map(|(&a, &b)| [a, b]).collect();
        let w = fit_stacking(&inputs, &labels);
        assert!(w[0] > 0.0 && w[0] > 3.0 * w[1].abs(), "{w:?}");
        let p = |z: [f64; 2]| sigmoid(w[0] * z[0] + w[1] * z[1] + w[2]);
        assert!(p([-3.0, 0.0]) < 0.2 && p([3.0, 0.0]) > 0.8);
        // The same values in both columns: plain Platt scaling, monotone in the value.
        let same: Vec<[f64; 2]> = first.iter().map(|&a| [a, a]).collect();
        let w = fit_stacking(&same, &labels);
        assert!(w[0] + w[1] > 0.0);
    }
}
