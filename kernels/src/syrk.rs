//! Covariance accumulation: symmetric rank-k update of the lower triangle.
//!
//! PLACEHOLDER IMPLEMENTATION (plain loops): the contract below is final.

use crate::error::check_shape;
use crate::{Error, MatMut, MatRef, MemStack, Par, StackReq};

/// Scratch needed by [`syrk_lower`] for `X` of shape `n x b`.
pub fn syrk_scratch(n: usize, b: usize, par: Par) -> StackReq {
    let _ = (n, b, par);
    StackReq::EMPTY
}

/// `C <- beta C + alpha X X^T` on the lower triangle (diagonal included) of the
/// `n x n` matrix `C`; `X` is `n x b`. The strictly upper triangle of `C` is
/// neither read nor written. `beta == 0` means `C` is not read.
pub fn syrk_lower(
    mut c: MatMut<'_, f32>,
    beta: f32,
    x: MatRef<'_, f32>,
    alpha: f32,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    let _ = (par, stack);
    let n = c.nrows();
    check_shape(c.ncols() == n && x.nrows() == n, "syrk_lower", || {
        format!("C is {}x{}, X is {}x{}", c.nrows(), c.ncols(), x.nrows(), x.ncols())
    })?;
    for j in 0..n {
        for i in j..n {
            let mut acc = 0.0f32;
            for p in 0..x.ncols() {
                acc += x[(i, p)] * x[(j, p)];
            }
            let old = if beta == 0.0 { 0.0 } else { beta * c[(i, j)] };
            c[(i, j)] = old + alpha * acc;
        }
    }
    Ok(())
}

/// As [`syrk_lower`], accumulating into an f64 factor (products formed in f64).
pub fn syrk_lower_f64(
    mut c: MatMut<'_, f64>,
    beta: f64,
    x: MatRef<'_, f32>,
    alpha: f64,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    let _ = (par, stack);
    let n = c.nrows();
    check_shape(c.ncols() == n && x.nrows() == n, "syrk_lower_f64", || {
        format!("C is {}x{}, X is {}x{}", c.nrows(), c.ncols(), x.nrows(), x.ncols())
    })?;
    for j in 0..n {
        for i in j..n {
            let mut acc = 0.0f64;
            for p in 0..x.ncols() {
                acc += x[(i, p)] as f64 * x[(j, p)] as f64;
            }
            let old = if beta == 0.0 { 0.0 } else { beta * c[(i, j)] };
            c[(i, j)] = old + alpha * acc;
        }
    }
    Ok(())
}
