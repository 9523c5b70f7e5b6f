//! Cholesky factorisation of damped factors, and rank-k updates of a factor.
//!
//! PLACEHOLDER IMPLEMENTATION (plain loops): the contracts below are final.

use crate::error::check_shape;
use crate::{Error, MatMut, MemStack, Par, StackReq};

/// Scratch needed by [`cholesky_in_place`] for an `n x n` matrix.
pub fn cholesky_scratch(n: usize, par: Par) -> StackReq {
    let _ = (n, par);
    StackReq::EMPTY
}

/// Factor `A + shift I = L L^T` in place.
///
/// Reads the lower triangle of `A` (diagonal included) and overwrites it with
/// `L`; the strictly upper triangle is neither read nor written. If a pivot is
/// not positive (or not finite), returns [`Error::NotPositiveDefinite`] naming it;
/// `A` is then partially overwritten and must be rebuilt by the caller.
pub fn cholesky_in_place(
    mut a: MatMut<'_, f32>,
    shift: f32,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    let _ = (par, stack);
    let n = a.nrows();
    check_shape(a.ncols() == n, "cholesky_in_place", || format!("A is {}x{}, not square", n, a.ncols()))?;
    for j in 0..n {
        let mut d = a[(j, j)] as f64 + shift as f64;
        for p in 0..j {
            d -= a[(j, p)] as f64 * a[(j, p)] as f64;
        }
        if !(d > 0.0) || !d.is_finite() {
            return Err(Error::NotPositiveDefinite { pivot: j, value: d });
        }
        let ljj = d.sqrt();
        a[(j, j)] = ljj as f32;
        for i in j + 1..n {
            let mut s = a[(i, j)] as f64;
            for p in 0..j {
                s -= a[(i, p)] as f64 * a[(j, p)] as f64;
            }
            a[(i, j)] = (s / ljj) as f32;
        }
    }
    Ok(())
}

/// Scratch needed by [`cholesky_rank_update`] for an `n x n` factor and `k` columns.
pub fn cholesky_update_scratch(n: usize, k: usize, par: Par) -> StackReq {
    let _ = (n, k, par);
    StackReq::EMPTY
}

/// Update a lower Cholesky factor in place so that afterwards
/// `L L^T = L_old L_old^T + W diag(alpha) W^T` (`W` is `n x k`, clobbered).
/// Negative `alpha` entries (downdates) are allowed as long as the result stays
/// positive definite; otherwise [`Error::NotPositiveDefinite`].
pub fn cholesky_rank_update(
    mut l: MatMut<'_, f32>,
    mut w: MatMut<'_, f32>,
    alpha: &[f32],
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    let _ = (par, stack);
    let n = l.nrows();
    check_shape(l.ncols() == n && w.nrows() == n && w.ncols() == alpha.len(), "cholesky_rank_update", || {
        format!("L is {}x{}, W is {}x{}, alpha has {}", n, l.ncols(), w.nrows(), w.ncols(), alpha.len())
    })?;
    // One rank-1 update per column (classic algorithm, f64 arithmetic).
    for (r, &al) in alpha.iter().enumerate() {
        let mut a = al as f64;
        for j in 0..n {
            let ljj = l[(j, j)] as f64;
            let wj = w[(j, r)] as f64;
            let d = ljj * ljj + a * wj * wj;
            if !(d > 0.0) || !d.is_finite() {
                return Err(Error::NotPositiveDefinite { pivot: j, value: d });
            }
            let new = d.sqrt();
            let gamma = ljj * ljj / (new * new);
            let beta = a * wj / (new * new);
            // W := W - wj/ljj L[:, j];  L[:, j] := new/ljj L[:, j] + beta*new * W
            l[(j, j)] = new as f32;
            for i in j + 1..n {
                let lij = l[(i, j)] as f64;
                let wi = w[(i, r)] as f64 - wj / ljj * lij;
                w[(i, r)] = wi as f32;
                l[(i, j)] = (new / ljj * lij + beta * new * wi) as f32;
            }
            a *= gamma;
        }
    }
    Ok(())
}
