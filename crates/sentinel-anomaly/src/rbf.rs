//! The RBF kernel k(x, z) = exp(−γ‖x − z‖²) shared by both One-Class SVMs, with
//! scikit-learn's `gamma="scale"` and an exponential written so the compiler can
//! vectorise it: kernel rows and decision functions spend nearly all their time
//! in `exp`, and the C library's scalar `exp` would dominate fit and score times.

use serde::{Deserialize, Serialize};

use crate::error::{AnomalyError, Result};
use crate::matrix::Matrix;

/// How γ is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Gamma {
    /// scikit-learn's "scale": 1 / (n_features × variance of all training values).
    Scale,
    Value(f64),
}

impl Gamma {
    pub(crate) fn resolve(self, data: &Matrix) -> Result<f64> {
        let gamma = match self {
            Gamma::Value(gamma) => gamma,
            Gamma::Scale => {
                let values = data.values();
                let n = values.len() as f64;
                let mean = values.iter().sum::<f64>() / n;
                let variance = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
                // scikit-learn falls back to 1 when every value is the same.
                if variance > 0.0 { 1.0 / (data.cols() as f64 * variance) } else { 1.0 }
            }
        };
        if !(gamma.is_finite() && gamma > 0.0) {
            return Err(AnomalyError::Parameter(format!("gamma must be positive and finite, got {gamma}")));
        }
        Ok(gamma)
    }
}

/// ‖a − b‖², in four independent sums so that the compiler can vectorise it
/// (a single running sum must be added in order, one element at a time).
#[inline]
pub(crate) fn squared_distance(a: &[f64], b: &[f64]) -> f64 {
    let (a_chunks, a_tail) = a.as_chunks::<4>();
    let (b_chunks, b_tail) = b.as_chunks::<4>();
    let mut sums = [0.0f64; 4];
    for (x, y) in a_chunks.iter().zip(b_chunks) {
        for lane in 0..4 {
            let d = x[lane] - y[lane];
            sums[lane] += d * d;
        }
    }
    let tail: f64 = a_tail.iter().zip(b_tail).map(|(x, y)| (x - y) * (x - y)).sum();
    (sums[0] + sums[1]) + (sums[2] + sums[3]) + tail
}

/// Writes k(x, zᵢ) into `out[i]` for the consecutive rows zᵢ of `rows`
/// (row-major, `x.len()` columns). Compiled a second time for AVX2 and FMA,
/// chosen at run time: kernel values are nearly all of the exact One-Class
/// SVM's time, in fitting and in scoring.
pub(crate) fn kernel_values(x: &[f64], rows: &[f64], gamma: f64, out: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the processor has AVX2 and FMA, checked just above.
        return unsafe { kernel_values_avx2(x, rows, gamma, out) };
    }
    kernel_values_portable(x, rows, gamma, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn kernel_values_avx2(x: &[f64], rows: &[f64], gamma: f64, out: &mut [f64]) {
    kernel_values_portable(x, rows, gamma, out);
}

#[inline(always)]
fn kernel_values_portable(x: &[f64], rows: &[f64], gamma: f64, out: &mut [f64]) {
    for (value, row) in out.iter_mut().zip(rows.chunks_exact(x.len())) {
        *value = -gamma * squared_distance(x, row);
    }
    exp_in_place(out);
}

/// Replaces each `x ≤ 0` in `values` by e^x, to about 1e-9 relative error.
///
/// x = n·ln2 + r with |r| ≤ ln2/2; e^r by its Taylor series to degree 8; 2^n
/// built in the exponent bits. Below −708 the result is 0 (no subnormals).
#[inline]
pub(crate) fn exp_in_place(values: &mut [f64]) {
    const LOG2_E: f64 = std::f64::consts::LOG2_E;
    const LN2_HIGH: f64 = 0.693_147_180_369_123_8;
    const LN2_LOW: f64 = 1.908_214_929_270_587_7e-10;
    // Adding then subtracting 1.5 × 2^52 rounds to the nearest integer without a
    // rounding instruction the baseline x86-64 target lacks.
    const ROUNDER: f64 = 6_755_399_441_055_744.0;
    for value in values.iter_mut() {
        let x = value.max(-708.0);
        let n = (x * LOG2_E + ROUNDER) - ROUNDER;
        let r = (x - n * LN2_HIGH) - n * LN2_LOW;
        let p = 1.0
            + r * (1.0
                + r * (0.5
                    + r * (1.0 / 6.0
                        + r * (1.0 / 24.0
                            + r * (1.0 / 120.0
                                + r * (1.0 / 720.0 + r * (1.0 / 5040.0 + r * (1.0 / 40320.0))))))));
        let scale = f64::from_bits(((n as i64 + 1023) as u64) << 52);
        *value = if *value < -708.0 { 0.0 } else { p * scale };
    }
}
