//! Platt scaling: maps a model's raw margin `m` to a calibrated probability
//! `1 / (1 + exp(-(a·m + b)))`, with `a` and `b` fitted by maximum likelihood on
//! held-out data (Platt 1999, with the Newton method and target smoothing of Lin,
//! Lin & Weng 2007). Being monotonic for `a > 0`, it changes probabilities but not
//! the ranking, so ROC figures are unchanged.

use serde::{Deserialize, Serialize};

use crate::{GbdtError, sigmoid};

/// Fitted Platt parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlattScaling {
    pub a: f64,
    pub b: f64,
}

impl PlattScaling {
    /// Fits `a` and `b` to held-out margins and labels.
    pub fn fit(margins: &[f64], labels: &[bool]) -> Result<PlattScaling, GbdtError> {
        if margins.len() != labels.len() {
            return Err(GbdtError::InvalidData(format!(
                "{} margins for {} labels",
                margins.len(),
                labels.len()
            )));
        }
        if margins.iter().any(|m| !m.is_finite()) {
            return Err(GbdtError::InvalidData("calibration margins must be finite".into()));
        }
        let positives = labels.iter().filter(|&&l| l).count() as f64;
        let negatives = labels.len() as f64 - positives;
        if positives == 0.0 || negatives == 0.0 {
            return Err(GbdtError::InvalidData("calibration needs both classes".into()));
        }
        // Smoothed targets keep the fit from diverging on separable data.
        let high = (positives + 1.0) / (positives + 2.0);
        let low = 1.0 / (negatives + 2.0);
        let targets: Vec<f64> = labels.iter().map(|&l| if l { high } else { low }).collect();
        let objective = |a: f64, b: f64| -> f64 {
            margins
                .iter()
                .zip(&targets)
                .map(|(&m, &t)| {
                    let z = a * m + b;
                    // -[t ln p + (1 - t) ln(1 - p)] in a form that cannot overflow.
                    if z >= 0.0 { (1.0 - t) * z + (-z).exp().ln_1p() } else { -t * z + z.exp().ln_1p() }
                })
                .sum()
        };
        // Start from the log-odds of the (smoothed) class balance.
        let (mut a, mut b) = (0.0, ((positives + 1.0) / (negatives + 1.0)).ln());
        let mut value = objective(a, b);
        const SIGMA: f64 = 1e-12;
        for _ in 0..100 {
            let (mut h11, mut h22, mut h21, mut g1, mut g2) = (SIGMA, SIGMA, 0.0, 0.0, 0.0);
            for (&m, &t) in margins.iter().zip(&targets) {
                let p = sigmoid(a * m + b);
                let d2 = p * (1.0 - p);
                h11 += m * m * d2;
                h22 += d2;
                h21 += m * d2;
                let d1 = p - t;
                g1 += m * d1;
                g2 += d1;
            }
            if g1.abs() < 1e-5 && g2.abs() < 1e-5 {
                break;
            }
            let det = h11 * h22 - h21 * h21;
            let da = -(h22 * g1 - h21 * g2) / det;
            let db = -(-h21 * g1 + h11 * g2) / det;
            let gd = g1 * da + g2 * db;
            let mut step = 1.0;
            let mut improved = false;
            while step >= 1e-10 {
                let (na, nb) = (a + step * da, b + step * db);
                let new_value = objective(na, nb);
                if new_value < value + 1e-4 * step * gd {
                    (a, b, value) = (na, nb, new_value);
                    improved = true;
                    break;
                }
                step /= 2.0;
            }
            if !improved {
                break;
            }
        }
        if !(a.is_finite() && b.is_finite()) {
            return Err(GbdtError::InvalidData("calibration did not converge".into()));
        }
        Ok(PlattScaling { a, b })
    }

    /// The calibrated probability of a margin.
    pub fn probability(&self, margin: f64) -> f64 {
        sigmoid(self.a * margin + self.b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_the_scaling_of_a_miscalibrated_score() {
        // Labels drawn with P(y) = sigmoid(2m - 1): the fit should find a≈2, b≈-1.
        let mut state = 12345u64;
        let mut uniform = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let margins: Vec<f64> = (0..20_000).map(|i| (i as f64 / 20_000.0) * 6.0 - 3.0).collect();
        let labels: Vec<bool> = margins.iter().map(|&m| uniform() < sigmoid(2.0 * m - 1.0)).collect();
        let platt = PlattScaling::fit(&margins, &labels).unwrap();
        assert!((platt.a - 2.0).abs() < 0.15, "a = {}", platt.a);
        assert!((platt.b + 1.0).abs() < 0.15, "b = {}", platt.b);
        assert!(platt.probability(10.0) <= 1.0 && platt.probability(-10.0) >= 0.0);
    }

    #[test]
    fn one_class_is_an_error() {
        assert!(PlattScaling::fit(&[0.1, 0.2], &[true, true]).is_err());
        assert!(PlattScaling::fit(&[0.1, f64::NAN], &[true, false]).is_err());
    }
}
