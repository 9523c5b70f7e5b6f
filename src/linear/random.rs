//! Random matrices for the experiments and tests: Gaussian, Haar-orthogonal,
//! SPD with a chosen spectrum, well-conditioned layers, isometric networks.

use faer::Mat;
use natgrad_kernels::rng::Rng;

use super::network::symmetrize;
use crate::Error;

/// One standard normal sample in f64 (Box-Muller).
pub fn normal(rng: &mut Rng) -> f64 {
    // 1 - u lies in (0, 1], so the logarithm is finite.
    let u1 = 1.0 - rng.uniform_f64();
    let u2 = rng.uniform_f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// An `m x n` matrix of independent `N(0, std^2)` entries.
pub fn gaussian(rng: &mut Rng, m: usize, n: usize, std: f64) -> Mat<f64> {
    let mut out = Mat::zeros(m, n);
    for j in 0..n {
        for i in 0..m {
            out[(i, j)] = std * normal(rng);
        }
    }
    out
}

/// A Haar-distributed `m x n` matrix with orthonormal columns (`m >= n`) or
/// orthonormal rows (`m < n`).
pub fn semi_orthogonal(rng: &mut Rng, m: usize, n: usize) -> Mat<f64> {
    if m == 0 || n == 0 {
        return Mat::zeros(m, n);
    }
    if m < n {
        return semi_orthogonal(rng, n, m).transpose().to_owned();
    }
    let g = gaussian(rng, m, n, 1.0);
    let qr = g.qr();
    let mut q = qr.compute_thin_Q();
    let r = qr.thin_R();
    // Sign fix so that the distribution is Haar, not biased by the QR's
    // sign convention.
    for j in 0..n {
        if r[(j, j)] < 0.0 {
            for i in 0..m {
                q[(i, j)] = -q[(i, j)];
            }
        }
    }
    q
}

/// A Haar-distributed `n x n` orthogonal matrix.
pub fn orthogonal(rng: &mut Rng, n: usize) -> Mat<f64> {
    semi_orthogonal(rng, n, n)
}

/// A random symmetric positive definite matrix `Q diag(spectrum) Q^T` with a
/// Haar-random rotation `Q`: correlated coordinates with a chosen spectrum.
pub fn spd_with_spectrum(rng: &mut Rng, spectrum: &[f64]) -> Mat<f64> {
    let n = spectrum.len();
    let q = orthogonal(rng, n);
    let scaled = Mat::from_fn(n, n, |i, j| q[(i, j)] * spectrum[j]);
    symmetrize((&scaled * q.transpose()).as_ref())
}

/// `n` values log-spaced from `largest` down to `smallest`.
pub fn log_spaced(largest: f64, smallest: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![largest];
    }
    (0..n)
        .map(|k| largest * (smallest / largest).powf(k as f64 / (n - 1) as f64))
        .collect()
}

/// An `m x n` matrix `U diag(s) V^T` with Haar `U`, `V` and singular values
/// uniform in `[low, high]`: a random layer of bounded condition number.
pub fn well_conditioned(rng: &mut Rng, m: usize, n: usize, low: f64, high: f64) -> Mat<f64> {
    let k = m.min(n);
    let u = semi_orthogonal(rng, m, k);
    let v = semi_orthogonal(rng, n, k);
    let s: Vec<f64> = (0..k)
        .map(|_| low + (high - low) * rng.uniform_f64())
        .collect();
    let us = Mat::from_fn(m, k, |i, j| u[(i, j)] * s[j]);
    &us * v.transpose()
}

/// Layers `scale * Q_i` for the width profile `widths` (at least two
/// widths, all positive; [`Error::InvalidConfig`] otherwise), chosen so that the
/// product of the first `i` layers is `scale^i` times an isometry of the input
/// space whenever every width up to `i` is at least the input width: expanding
/// layers have orthonormal columns, narrowing layers orthonormal rows whose
/// span contains the range of the product so far. With equal input and output
/// widths and no narrower hidden layer, the end-to-end map is `scale^L` times
/// an orthogonal matrix. Below the input width (a bottleneck) the narrowing
/// layer is simply a random semi-orthogonal matrix.
pub fn isometric_layers(
    rng: &mut Rng,
    widths: &[usize],
    scale: f64,
) -> Result<Vec<Mat<f64>>, Error> {
    if widths.len() < 2 || widths.contains(&0) {
        return Err(Error::InvalidConfig(format!(
            "a width profile needs at least two positive widths, got {widths:?}"
        )));
    }
    let n0 = widths[0];
    let mut layers: Vec<Mat<f64>> = Vec::with_capacity(widths.len().saturating_sub(1));
    let mut product = Mat::<f64>::identity(n0, n0);
    let mut isometric = true;
    for k in 1..widths.len() {
        let (n_in, n_out) = (widths[k - 1], widths[k]);
        let q = if n_out >= n_in {
            semi_orthogonal(rng, n_out, n_in)
        } else if isometric && n_out >= n0 {
            // Orthonormal basis of span(product) plus random directions.
            let extra = gaussian(rng, n_in, n_out - n0, 1.0);
            let mut basis = Mat::<f64>::zeros(n_in, n_out);
            for j in 0..n0 {
                for i in 0..n_in {
                    basis[(i, j)] = product[(i, j)];
                }
            }
            for j in 0..n_out - n0 {
                for i in 0..n_in {
                    basis[(i, n0 + j)] = extra[(i, j)];
                }
            }
            let qbasis = basis.qr().compute_thin_Q();
            // A random rotation inside the output space keeps layers generic.
            let rot = orthogonal(rng, n_out);
            &rot * qbasis.transpose()
        } else {
            isometric = false;
            semi_orthogonal(rng, n_out, n_in)
        };
        product = &q * &product;
        layers.push(q);
    }
    for l in &mut layers {
        *l *= faer::Scale(scale);
    }
    Ok(layers)
}
