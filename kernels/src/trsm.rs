//! Solves with a Cholesky factor, many right-hand sides, in place.
//!
//! PLACEHOLDER IMPLEMENTATION (plain loops): the contracts below are final.

use crate::error::check_shape;
use crate::{Error, MatMut, MatRef, MemStack, Par, StackReq};

/// Scratch needed by the solves for an `n x n` factor and `m` right-hand sides.
pub fn solve_scratch(n: usize, m: usize, par: Par) -> StackReq {
    let _ = (n, m, par);
    StackReq::EMPTY
}

/// `B <- (L L^T)^{-1} B` for lower-triangular `L` (`n x n`, only its lower
/// triangle is read) and `B` of shape `n x m`.
pub fn solve_llt_left_in_place(
    l: MatRef<'_, f32>,
    mut b: MatMut<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    let _ = (par, stack);
    let n = l.nrows();
    check_shape(l.ncols() == n && b.nrows() == n, "solve_llt_left_in_place", || {
        format!("L is {}x{}, B is {}x{}", n, l.ncols(), b.nrows(), b.ncols())
    })?;
    for c in 0..b.ncols() {
        for i in 0..n {
            let mut s = b[(i, c)];
            for p in 0..i {
                s -= l[(i, p)] * b[(p, c)];
            }
            b[(i, c)] = s / l[(i, i)];
        }
        for i in (0..n).rev() {
            let mut s = b[(i, c)];
            for p in i + 1..n {
                s -= l[(p, i)] * b[(p, c)];
            }
            b[(i, c)] = s / l[(i, i)];
        }
    }
    Ok(())
}

/// `B <- B (L L^T)^{-1}` for lower-triangular `L` (`n x n`) and `B` of shape `m x n`.
pub fn solve_llt_right_in_place(
    l: MatRef<'_, f32>,
    b: MatMut<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    // B (L L^T)^{-1} = ((L L^T)^{-1} B^T)^T since L L^T is symmetric.
    let n = l.nrows();
    check_shape(l.ncols() == n && b.ncols() == n, "solve_llt_right_in_place", || {
        format!("L is {}x{}, B is {}x{}", n, l.ncols(), b.nrows(), b.ncols())
    })?;
    solve_llt_left_in_place(l, b.transpose_mut(), par, stack)
}
