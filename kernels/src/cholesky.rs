//! Cholesky factorisation of damped factors, and rank-k updates of a factor.
//!
//! [`cholesky_in_place`] is recursive right-looking: factor the top-left half,
//! solve the bottom-left block against it ([`crate::trsm`]), subtract its
//! product with itself from the bottom-right lower triangle (the packed SYRK
//! kernel of [`crate::syrk`], where most of the flops go, on all threads), then
//! factor the bottom-right half. Diagonal blocks of at most 32 rows are
//! factored by an unblocked right-looking loop in a local buffer (auto-vectorised
//! under the selected instruction set).
//!
//! Accumulation is in f32 throughout; the computed factor satisfies the
//! standard backward error bound (Higham, Thm 10.3)
//! `L L^T = A + shift I + dA`, `|dA| <= gamma_{n+1} |L| |L^T|`,
//! `gamma_k = k u / (1 - k u)`, `u = 2^-24`: the blocked order of the sums
//! changes which `gamma` multiplies which product, not the bound.

use crate::error::check_shape;
use crate::syrk::packed::{self, Operand};
use crate::trsm::{self, Mode};
use crate::{Error, Isa, MatMut, MemStack, Par, StackReq};
use faer::reborrow::{Reborrow, ReborrowMut};

/// Largest diagonal block factored by the unblocked loop.
pub(crate) const LEAF: usize = 32;

/// Scratch needed by [`cholesky_in_place`] for an `n x n` matrix.
pub fn cholesky_scratch(n: usize, par: Par) -> StackReq {
    if n <= LEAF {
        return StackReq::EMPTY;
    }
    let n1 = trsm::split(n);
    let n2 = n - n1;
    StackReq::any_of(&[
        cholesky_scratch(n1, par),
        trsm::triangular_scratch(n1, n2, par),
        packed::pack_scratch(n2, n2, n1),
        cholesky_scratch(n2, par),
    ])
}

/// Factor `A + shift I = L L^T` in place.
///
/// Reads the lower triangle of `A` (diagonal included) and overwrites it with
/// `L`; the strictly upper triangle is neither read nor written. If a pivot is
/// not positive (or not finite), returns [`Error::NotPositiveDefinite`] naming it;
/// `A` is then partially overwritten and must be rebuilt by the caller.
///
/// `shift` is added to the diagonal before the factorisation starts (so the
/// result is the factor of `fl(A + shift I)`). A NaN or infinity anywhere in
/// the lower triangle reaches the pivot of its row and is reported there.
/// Other errors: [`Error::ShapeMismatch`] (not square),
/// [`Error::InvalidArgument`] (`shift` not finite). Error bound: see the module
/// documentation. Allocates nothing when `stack` holds [`cholesky_scratch`].
pub fn cholesky_in_place(
    a: MatMut<'_, f32>,
    shift: f32,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    cholesky_in_place_with_isa(Isa::detect(), a, shift, par, stack)
}

/// [`cholesky_in_place`] at a forced instruction-set level.
pub fn cholesky_in_place_with_isa(
    isa: Isa,
    mut a: MatMut<'_, f32>,
    shift: f32,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    if !isa.is_available() {
        return Err(Error::IsaUnavailable(isa));
    }
    let n = a.nrows();
    check_shape(a.ncols() == n, "cholesky_in_place", || {
        format!("A is {}x{}, not square", n, a.ncols())
    })?;
    if !shift.is_finite() {
        return Err(Error::InvalidArgument {
            op: "cholesky_in_place",
            detail: format!("shift {shift} is not finite"),
        });
    }
    if shift != 0.0 {
        for j in 0..n {
            a[(j, j)] += shift;
        }
    }
    factor(isa, a, 0, par, stack)
}

fn factor(
    isa: Isa,
    a: MatMut<'_, f32>,
    offset: usize,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    let n = a.nrows();
    if n <= LEAF {
        return packed::with_isa(isa, || leaf(a, offset));
    }
    let n1 = trsm::split(n);
    let (mut a11, _, mut a21, mut a22) = a.split_at_mut(n1, n1);
    factor(isa, a11.rb_mut(), offset, par, stack)?;
    // A21 <- A21 L11^{-T}, i.e. L11 (A21^T) = A21^T.
    trsm::solve_lower_left(
        isa,
        a11.rb(),
        Mode::Lower,
        a21.rb_mut().transpose_mut(),
        par,
        stack,
    );
    // A22 <- A22 - A21 A21^T (lower triangle).
    packed::product(
        isa,
        a22.rb_mut(),
        1.0,
        Operand::full(a21.rb()),
        Operand::full(a21.rb().transpose()),
        -1.0,
        true,
        par,
        stack,
    );
    factor(isa, a22, offset + n1, par, stack)
}

/// Unblocked right-looking factorisation of a block of at most [`LEAF`] rows,
/// in a local column-major buffer.
#[inline(always)]
fn leaf(mut a: MatMut<'_, f32>, offset: usize) -> Result<(), Error> {
    let n = a.nrows();
    debug_assert!(n <= LEAF);
    let mut buf = [0.0f32; LEAF * LEAF];
    for j in 0..n {
        for i in j..n {
            buf[j * LEAF + i] = a[(i, j)];
        }
    }
    let mut result = Ok(());
    for j in 0..n {
        let d = buf[j * LEAF + j];
        if !(d > 0.0 && d.is_finite()) {
            result = Err(Error::NotPositiveDefinite {
                pivot: offset + j,
                value: d as f64,
            });
            break;
        }
        let ljj = d.sqrt();
        let (done, rest) = buf.split_at_mut((j + 1) * LEAF);
        let col = &mut done[j * LEAF..];
        col[j] = ljj;
        for v in &mut col[j + 1..n] {
            *v /= ljj;
        }
        for c in j + 1..n {
            let f = col[c];
            let dst = &mut rest[(c - j - 1) * LEAF..(c - j - 1) * LEAF + n];
            for (x, &y) in dst[c..n].iter_mut().zip(&col[c..n]) {
                *x -= f * y;
            }
        }
    }
    // Copy back even on failure (the columns before the pivot are valid).
    for j in 0..n {
        for i in j..n {
            a[(i, j)] = buf[j * LEAF + i];
        }
    }
    result
}

/// Below this many columns (relative to `n`, see [`use_direct_update`]) the
/// rank-k update runs k sweeps of rank-1 updates; above, it rebuilds
/// `L L^T + W diag(alpha) W^T` with the packed product and refactorises.
fn use_direct_update(n: usize, k: usize) -> bool {
    // Direct: ~4 n^2 k flops at streaming speed (single thread); rebuild:
    // ~ n^3/3 (L L^T) + n^2 k + n^3/3 (Cholesky) at near-GEMM speed, about
    // 8x faster per flop. Equal cost near k = n / 8 (checked by the benches).
    8 * k < n
}

/// Scratch needed by [`cholesky_rank_update`] for an `n x n` factor and `k` columns.
pub fn cholesky_update_scratch(n: usize, k: usize, par: Par) -> StackReq {
    StackReq::new_aligned::<f32>(k, 64).and(StackReq::any_of(&[
        packed::pack_scratch(n, n, n),
        packed::pack_scratch(n, n, k),
        cholesky_scratch(n, par),
    ]))
}

/// Update a lower Cholesky factor in place so that afterwards
/// `L L^T = L_old L_old^T + W diag(alpha) W^T` (`W` is `n x k`, clobbered).
/// Negative `alpha` entries (downdates) are allowed as long as the result stays
/// positive definite; otherwise [`Error::NotPositiveDefinite`].
///
/// Two algorithms, chosen by cost: for `k < n / 8`, `k` sweeps of the classic
/// rank-1 update (column by column, all `k` columns of `W` applied to each
/// column of `L` while it is in cache); otherwise `L L^T` is rebuilt in place by
/// the packed triangular product (n^3/3 flops), `W diag(alpha) W^T` added by the
/// packed SYRK kernel, and the sum refactorised by [`cholesky_in_place`], all on
/// `par` threads. Both meet `|L L^T - M| <= c u (|L_old||L_old^T| +
/// |W||diag(alpha)||W^T| + |L||L^T|)` with `c = O(n + k)` for updates; for
/// downdates the error also grows with the conditioning of the result. On
/// error `L` is partially overwritten.
pub fn cholesky_rank_update(
    l: MatMut<'_, f32>,
    w: MatMut<'_, f32>,
    alpha: &[f32],
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    cholesky_rank_update_with_isa(Isa::detect(), l, w, alpha, par, stack)
}

/// [`cholesky_rank_update`] at a forced instruction-set level.
pub fn cholesky_rank_update_with_isa(
    isa: Isa,
    l: MatMut<'_, f32>,
    w: MatMut<'_, f32>,
    alpha: &[f32],
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    if !isa.is_available() {
        return Err(Error::IsaUnavailable(isa));
    }
    let n = l.nrows();
    check_shape(
        l.ncols() == n && w.nrows() == n && w.ncols() == alpha.len(),
        "cholesky_rank_update",
        || {
            format!(
                "L is {}x{}, W is {}x{}, alpha has {}",
                n,
                l.ncols(),
                w.nrows(),
                w.ncols(),
                alpha.len()
            )
        },
    )?;
    if alpha.iter().any(|a| !a.is_finite()) {
        return Err(Error::InvalidArgument {
            op: "cholesky_rank_update",
            detail: "alpha must be finite".into(),
        });
    }
    let k = alpha.len();
    if n == 0 || k == 0 {
        return Ok(());
    }
    if use_direct_update(n, k) {
        rank_update_direct(isa, l, w, alpha, stack)
    } else {
        rank_update_rebuild(isa, l, w, alpha, par, stack)
    }
}

/// Rebuild `L L^T + W diag(alpha) W^T` in `L`'s lower triangle and refactor.
pub(crate) fn rank_update_rebuild(
    isa: Isa,
    mut l: MatMut<'_, f32>,
    w: MatMut<'_, f32>,
    alpha: &[f32],
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    {
        // Packing reads all of L before the product overwrites it.
        let lo = Operand {
            mat: l.rb(),
            shape: packed::Shape::Lower,
            col_scale: None,
        };
        let up = Operand {
            mat: l.rb().transpose(),
            shape: packed::Shape::Upper,
            col_scale: None,
        };
        let (pk, _) = packed::pack(isa, lo, up, par, stack);
        packed::compute(isa, l.rb_mut(), 0.0, 1.0, &pk, true, par);
    }
    let ws = Operand {
        mat: w.rb(),
        shape: packed::Shape::Full,
        col_scale: Some(alpha),
    };
    packed::product(
        isa,
        l.rb_mut(),
        1.0,
        ws,
        Operand::full(w.rb().transpose()),
        1.0,
        true,
        par,
        stack,
    );
    factor(isa, l, 0, par, stack)
}

/// `k` rank-1 updates applied column by column (f32 arithmetic).
pub(crate) fn rank_update_direct(
    isa: Isa,
    mut l: MatMut<'_, f32>,
    mut w: MatMut<'_, f32>,
    alpha: &[f32],
    stack: &mut MemStack,
) -> Result<(), Error> {
    let n = l.nrows();
    let k = alpha.len();
    let (a, _) = stack.make_aligned_with::<f32>(k, 64, |r| alpha[r]);
    let mut a = a;
    let a: &mut [f32] = &mut a;
    if l.row_stride() != 1 || w.row_stride() != 1 {
        // General strides: plain indexed loops.
        for j in 0..n {
            for r in 0..k {
                let ljj = l[(j, j)];
                let wj = w[(j, r)];
                let d = ljj * ljj + a[r] * wj * wj;
                if !(d > 0.0 && d.is_finite()) {
                    return Err(Error::NotPositiveDefinite {
                        pivot: j,
                        value: d as f64,
                    });
                }
                let new = d.sqrt();
                let (s, t) = (wj / ljj, a[r] * wj / new);
                let ratio = new / ljj;
                l[(j, j)] = new;
                for i in j + 1..n {
                    let wi = w[(i, r)] - s * l[(i, j)];
                    w[(i, r)] = wi;
                    l[(i, j)] = ratio * l[(i, j)] + t * wi;
                }
                a[r] *= ljj * ljj / d;
            }
        }
        return Ok(());
    }
    let (lp, lcs) = (l.as_ptr_mut(), l.col_stride());
    let (wp, wcs) = (w.as_ptr_mut(), w.col_stride());
    packed::with_isa(isa, || {
        for j in 0..n {
            // SAFETY: unit row stride; column j of L has rows j..n, column r of
            // W rows j..n; L and W do not overlap (distinct `&mut` borrows).
            let lcol = unsafe {
                std::slice::from_raw_parts_mut(lp.offset(j as isize * lcs).add(j), n - j)
            };
            for (r, ar) in a.iter_mut().enumerate() {
                // SAFETY: as above.
                let wcol = unsafe {
                    std::slice::from_raw_parts_mut(wp.offset(r as isize * wcs).add(j), n - j)
                };
                let ljj = lcol[0];
                let wj = wcol[0];
                let d = ljj * ljj + *ar * wj * wj;
                if !(d > 0.0 && d.is_finite()) {
                    return Err(Error::NotPositiveDefinite {
                        pivot: j,
                        value: d as f64,
                    });
                }
                let new = d.sqrt();
                // w_i <- w_i - (wj / ljj) l_i ;  l_i <- (new / ljj) l_i + (alpha wj / new) w_i
                let (s, t) = (wj / ljj, *ar * wj / new);
                let ratio = new / ljj;
                lcol[0] = new;
                for (li, wi) in lcol[1..].iter_mut().zip(wcol[1..].iter_mut()) {
                    let x = *wi - s * *li;
                    *wi = x;
                    *li = ratio * *li + t * x;
                }
                *ar *= ljj * ljj / d;
            }
        }
        Ok(())
    })
}
