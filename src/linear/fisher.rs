//! Brute-force reference: the full Fisher matrix assembled from its Kronecker
//! blocks, and the Moore-Penrose natural gradient it defines.

use faer::Mat;

use super::dense::{mul3, sym_eigenvalues};
use super::network::{is_exact_profile, psd_pseudoinverse, symmetrize, DeepLinear, Problem};
use crate::Error;

/// Largest parameter count [`fisher_matrix`] accepts: the dense Fisher is
/// `P x P` and its eigendecomposition costs `O(P^3)`.
pub const MAX_BRUTE_FORCE_PARAMETERS: usize = 2000;

/// Relative eigenvalue cut-off of the Moore-Penrose solve of `F d = grad`.
///
/// `F` is assembled from products of up to `L + 1` matrices; its null
/// directions carry rounding of order `P * eps * lambda_max` (below `5e-13`
/// for `P <= 2000`), far under this cut-off, while the nonzero eigenvalues of
/// the well-conditioned test networks are far above it.
pub const FISHER_RCOND: f64 = 1e-10;

/// Concatenation of `vec(W_1), .., vec(W_L)` (column-major vec).
pub fn flatten(mats: &[Mat<f64>]) -> Vec<f64> {
    let mut out = Vec::new();
    for m in mats {
        for j in 0..m.ncols() {
            for i in 0..m.nrows() {
                out.push(m[(i, j)]);
            }
        }
    }
    out
}

/// Inverse of [`flatten`] for the layer shapes of `net`.
pub fn unflatten(net: &DeepLinear, flat: &[f64]) -> Result<Vec<Mat<f64>>, Error> {
    if flat.len() != net.parameter_count() {
        return Err(Error::Shape(format!(
            "{} values for a network of {} parameters",
            flat.len(),
            net.parameter_count()
        )));
    }
    let mut out = Vec::with_capacity(net.depth());
    let mut k = 0;
    for w in net.layers() {
        let (m, n) = (w.nrows(), w.ncols());
        out.push(Mat::from_fn(m, n, |i, j| flat[k + i + j * m]));
        k += m * n;
    }
    Ok(out)
}

/// The Fisher information of the network's parameters (column-major vec,
/// layers in order): block `(i, j)` is
/// `F_ij = (W_{<i} C W_{<j}^T) kron (W_{>i}^T S^-1 W_{>j})`.
///
/// Errors: [`Error::InvalidConfig`] above [`MAX_BRUTE_FORCE_PARAMETERS`],
/// [`Error::Shape`] if the network does not fit the problem.
pub fn fisher_matrix(net: &DeepLinear, problem: &Problem) -> Result<Mat<f64>, Error> {
    let p = net.parameter_count();
    if p > MAX_BRUTE_FORCE_PARAMETERS {
        return Err(Error::InvalidConfig(format!(
            "brute-force Fisher of {p} parameters exceeds the limit of {MAX_BRUTE_FORCE_PARAMETERS}"
        )));
    }
    problem.loss_of_map(net.end_to_end().as_ref())?;
    let sides = net.side_products();
    let offsets: Vec<usize> = net
        .layers()
        .iter()
        .scan(0, |acc, w| {
            let o = *acc;
            *acc += w.nrows() * w.ncols();
            Some(o)
        })
        .collect();
    let mut f = Mat::<f64>::zeros(p, p);
    for (i, (after_i, before_i)) in sides.iter().enumerate() {
        for (j, (after_j, before_j)) in sides.iter().enumerate() {
            let fwd = mul3(
                before_i.as_ref(),
                problem.input_moment(),
                before_j.transpose(),
            );
            let bwd = mul3(
                after_i.transpose(),
                problem.noise_precision(),
                after_j.as_ref(),
            );
            let (rb, cb) = (bwd.nrows(), bwd.ncols());
            // (A kron B)[(a rb + r), (c cb + s)] = A[a, c] B[r, s].
            for c in 0..fwd.ncols() {
                for a in 0..fwd.nrows() {
                    let x = fwd[(a, c)];
                    for s in 0..cb {
                        for r in 0..rb {
                            f[(offsets[i] + a * rb + r, offsets[j] + c * cb + s)] = x * bwd[(r, s)];
                        }
                    }
                }
            }
        }
    }
    Ok(symmetrize(f.as_ref()))
}

/// `F v` for a flat vector `v`.
///
/// Errors: [`Error::Shape`] if `v` does not have one entry per column of `f`.
pub fn fisher_apply(f: &Mat<f64>, v: &[f64]) -> Result<Vec<f64>, Error> {
    if v.len() != f.ncols() {
        return Err(Error::Shape(format!(
            "vector of {} entries for a {}x{} matrix",
            v.len(),
            f.nrows(),
            f.ncols()
        )));
    }
    Ok((0..f.nrows())
        .map(|i| (0..f.ncols()).map(|j| f[(i, j)] * v[j]).sum())
        .collect())
}

/// The outcome of comparing the closed form with the brute-force Fisher.
#[derive(Clone, Debug, PartialEq)]
pub struct FisherCheck {
    /// The width profile.
    pub widths: Vec<usize>,
    /// Whether the profile satisfies the exactness condition
    /// ([`is_exact_profile`]).
    pub exact_case: bool,
    /// `||F d - grad|| / ||grad||` for the closed-form direction `d`.
    pub residual: f64,
    /// `||F d_mp - grad|| / ||grad||` for the Moore-Penrose direction
    /// (how well `F^+` itself solves the system).
    pub moore_penrose_residual: f64,
    /// `||dW(d) - dW(d_mp)|| / ||W - W*||`: the two first-order changes of
    /// the end-to-end map, relative.
    pub map_change_difference: f64,
    /// `||dW(d) - (W - W*)|| / ||W - W*||`: the closed form's map change
    /// against the ideal `W - W*` (the step is `-eta` times it).
    pub map_change_vs_error: f64,
    /// `lambda_max / lambda_min` over the nonzero eigenvalues of `F`: the
    /// conditioning that rounding errors of the Moore-Penrose solve scale
    /// with.
    pub fisher_condition: f64,
    /// Euclidean distance between the two directions in parameter space
    /// (they differ by a null vector of `F` in exact cases).
    pub parameter_distance: f64,
}

/// Compares the undamped closed-form direction with the Moore-Penrose solution
/// of `F d = grad` on the brute-force Fisher matrix.
pub fn check_against_fisher(net: &DeepLinear, problem: &Problem) -> Result<FisherCheck, Error> {
    let f = fisher_matrix(net, problem)?;
    let grad = flatten(&net.gradient(problem)?);
    let d_closed = net.natural_gradient_direction(problem, 0.0)?;
    let d_closed_flat = flatten(&d_closed);

    let s = sym_eigenvalues(f.as_ref())?;
    let lambda_max = s.iter().copied().fold(0.0f64, f64::max);
    let lambda_min = s
        .iter()
        .copied()
        .filter(|&x| x > FISHER_RCOND * lambda_max)
        .fold(f64::INFINITY, f64::min);
    let f_pinv = psd_pseudoinverse(f.as_ref(), FISHER_RCOND)?;
    let d_mp_flat = fisher_apply(&f_pinv, &grad)?;
    let d_mp = unflatten(net, &d_mp_flat)?;

    let grad_norm = norm(&grad);
    let rel = |v: &[f64]| -> Result<f64, Error> {
        let fv = fisher_apply(&f, v)?;
        let diff: Vec<f64> = fv.iter().zip(&grad).map(|(a, b)| a - b).collect();
        Ok(norm(&diff) / grad_norm)
    };
    let e = &net.end_to_end() - problem.teacher();
    let e_norm = e.norm_l2();
    let dw_closed = net.map_change(&d_closed)?;
    let dw_mp = net.map_change(&d_mp)?;
    let param_diff: Vec<f64> = d_closed_flat
        .iter()
        .zip(&d_mp_flat)
        .map(|(a, b)| a - b)
        .collect();
    Ok(FisherCheck {
        widths: net.widths(),
        exact_case: is_exact_profile(&net.widths()),
        residual: rel(&d_closed_flat)?,
        moore_penrose_residual: rel(&d_mp_flat)?,
        map_change_difference: (&dw_closed - &dw_mp).norm_l2() / e_norm,
        map_change_vs_error: (&dw_closed - &e).norm_l2() / e_norm,
        fisher_condition: lambda_max / lambda_min,
        parameter_distance: norm(&param_diff),
    })
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}
