//! Covariance accumulation: symmetric rank-k update of the lower triangle.
//!
//! The f32 path runs on the packed register-blocked product of `crate::product`
//! (AVX-512 32x12 / AVX2 16x6 / scalar 4x4 tiles, operands packed once, C blocks
//! shared by the threads through an atomic counter); only register tiles that
//! meet the lower triangle are computed, so the cost is about `n^2 b` flops
//! instead of the `2 n^2 b` of a full `X X^T`.

use crate::error::{check_scratch, check_shape};
use crate::product::{self, Operand};
use crate::{Error, Isa, MatMut, MatRef, MemStack, Par, StackReq};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Scratch needed by [`syrk_lower`] (and [`syrk_lower_f64`]) for `X` of shape `n x b`.
pub fn syrk_scratch(n: usize, b: usize, par: Par) -> StackReq {
    let _ = par;
    product::pack_scratch(n, n, b).or(StackReq::new_aligned::<f64>(n * b, 64))
}

/// `C <- beta C + alpha X X^T` on the lower triangle (diagonal included) of the
/// `n x n` matrix `C`; `X` is `n x b`. The strictly upper triangle of `C` is
/// neither read nor written. `beta == 0` means `C` is not read.
///
/// * Accumulation in f32: `|fl(X X^T)_ij - (X X^T)_ij| <= gamma_b (|X||X^T|)_ij`,
///   `gamma_b = b u / (1 - b u)`, `u = 2^-24`, then one rounding each for the
///   `alpha` and `beta` terms.
/// * Errors: [`Error::ShapeMismatch`] if the shapes disagree,
///   [`Error::InvalidArgument`] if `alpha` or `beta` is not finite.
/// * Allocates nothing when `stack` holds [`syrk_scratch`]`(n, b, par)`;
///   with less, [`Error::InvalidArgument`] before `C` is touched.
pub fn syrk_lower(
    c: MatMut<'_, f32>,
    beta: f32,
    x: MatRef<'_, f32>,
    alpha: f32,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    syrk_lower_with_isa(Isa::detect(), c, beta, x, alpha, par, stack)
}

/// [`syrk_lower`] at a forced instruction-set level (for tests and benchmarks).
/// Returns [`Error::IsaUnavailable`] if this CPU does not support `isa`.
pub fn syrk_lower_with_isa(
    isa: Isa,
    c: MatMut<'_, f32>,
    beta: f32,
    x: MatRef<'_, f32>,
    alpha: f32,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    check_args(
        "syrk_lower",
        isa,
        c.nrows(),
        c.ncols(),
        x,
        alpha.is_finite() && beta.is_finite(),
    )?;
    let n = c.nrows();
    check_syrk_scratch("syrk_lower", stack, n, x.ncols(), par)?;
    if n == 0 {
        return Ok(());
    }
    product::product(
        isa,
        c,
        beta,
        Operand::full(x),
        Operand::full(x.transpose()),
        alpha,
        true,
        par,
        stack,
    );
    Ok(())
}

/// `C <- beta C + alpha L L^T` on the lower triangle (diagonal included) of
/// the `n x n` matrix `C`, for `L` lower trapezoidal: `n x k` with `k <= n`,
/// entries above its diagonal (`row < col`) taken as zero and never read.
/// The strictly upper triangle of `C` is neither read nor written; `beta ==
/// 0` means `C` is not read.
///
/// Only products of entries that can be non-zero are formed: about
/// `n k^2 - 2 k^3 / 3` flops (`n^3 / 3` for a square `L`) instead of the
/// `n^2 k` of [`syrk_lower`] on the same `L`. The optimizer draws the Wishart
/// sample of a Gaussian output layer's backward factor this way (Bartlett's
/// decomposition).
///
/// * Accumulation in f32: `|fl(L L^T)_ij - (L L^T)_ij| <= gamma_k (|L||L^T|)_ij`,
///   then one rounding each for the `alpha` and `beta` terms.
/// * Errors: [`Error::ShapeMismatch`] if `C` is not `n x n` or `L` is not
///   `n x k` with `k <= n`; [`Error::InvalidArgument`] if `alpha` or `beta`
///   is not finite.
/// * Allocates nothing when `stack` holds [`syrk_scratch`]`(n, k, par)`;
///   with less, [`Error::InvalidArgument`] before `C` is touched.
///
/// # Examples
/// ```
/// use natgrad_kernels::syrk::{syrk_lower_trapezoidal, syrk_scratch};
/// use natgrad_kernels::{MatMut, MatRef, MemBuffer, MemStack, Par};
/// // L = [[1, 0], [2, 3], [4, 5]] (3 x 2); the 9.0 above its diagonal is ignored.
/// let l = [1.0f32, 2.0, 4.0, 9.0, 3.0, 5.0];
/// let mut c = [0.0f32; 9];
/// let mut mem = MemBuffer::new(syrk_scratch(3, 2, Par::Seq));
/// syrk_lower_trapezoidal(
///     MatMut::from_column_major_slice_mut(&mut c, 3, 3),
///     0.0,
///     MatRef::from_column_major_slice(&l, 3, 2),
///     1.0,
///     Par::Seq,
///     MemStack::new(&mut mem),
/// )
/// .unwrap();
/// // Lower triangle of L L^T, column by column: [1, 2, 4], [13, 23], [41].
/// assert_eq!([c[0], c[1], c[2], c[4], c[5], c[8]], [1.0, 2.0, 4.0, 13.0, 23.0, 41.0]);
/// ```
pub fn syrk_lower_trapezoidal(
    c: MatMut<'_, f32>,
    beta: f32,
    l: MatRef<'_, f32>,
    alpha: f32,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    syrk_lower_trapezoidal_with_isa(Isa::detect(), c, beta, l, alpha, par, stack)
}

/// [`syrk_lower_trapezoidal`] at a forced instruction-set level (for tests
/// and benchmarks). Returns [`Error::IsaUnavailable`] if this CPU does not
/// support `isa`.
pub fn syrk_lower_trapezoidal_with_isa(
    isa: Isa,
    c: MatMut<'_, f32>,
    beta: f32,
    l: MatRef<'_, f32>,
    alpha: f32,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    check_args(
        "syrk_lower_trapezoidal",
        isa,
        c.nrows(),
        c.ncols(),
        l,
        alpha.is_finite() && beta.is_finite(),
    )?;
    check_shape(l.ncols() <= l.nrows(), "syrk_lower_trapezoidal", || {
        format!("L is {}x{}; need k <= n", l.nrows(), l.ncols())
    })?;
    check_syrk_scratch("syrk_lower_trapezoidal", stack, c.nrows(), l.ncols(), par)?;
    if c.nrows() == 0 {
        return Ok(());
    }
    product::product(
        isa,
        c,
        beta,
        Operand::lower(l),
        Operand::upper(l.transpose()),
        alpha,
        true,
        par,
        stack,
    );
    Ok(())
}

/// [`Error::InvalidArgument`] unless `stack` holds [`syrk_scratch`]`(n, b, par)`.
fn check_syrk_scratch(
    op: &'static str,
    stack: &MemStack,
    n: usize,
    b: usize,
    par: Par,
) -> Result<(), Error> {
    check_scratch(stack, syrk_scratch(n, b, par), op, || {
        format!("syrk_scratch({n}, {b}, ..)")
    })
}

fn check_args(
    op: &'static str,
    isa: Isa,
    rows: usize,
    cols: usize,
    x: MatRef<'_, f32>,
    finite: bool,
) -> Result<(), Error> {
    if !isa.is_available() {
        return Err(Error::IsaUnavailable(isa));
    }
    check_shape(cols == rows && x.nrows() == rows, op, || {
        format!(
            "C is {}x{}, X is {}x{}; need C n x n and X n x b",
            rows,
            cols,
            x.nrows(),
            x.ncols()
        )
    })?;
    if !finite {
        return Err(Error::InvalidArgument {
            op,
            detail: "alpha and beta must be finite".into(),
        });
    }
    Ok(())
}

/// As [`syrk_lower`], accumulating into an f64 factor (products formed and
/// summed in f64, so `|err| <= gamma_b |X||X^T|` with `u = 2^-53`; the f32
/// entries of `X` are exact in f64).
///
/// Columns of `C` are taken four at a time (each entry of `X` loaded once per
/// four products) by the threads through an atomic counter; `X` is first
/// converted to a contiguous f64 copy in scratch.
pub fn syrk_lower_f64(
    c: MatMut<'_, f64>,
    beta: f64,
    x: MatRef<'_, f32>,
    alpha: f64,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    check_args(
        "syrk_lower_f64",
        Isa::detect(),
        c.nrows(),
        c.ncols(),
        x,
        alpha.is_finite() && beta.is_finite(),
    )?;
    let (n, b) = (x.nrows(), x.ncols());
    check_syrk_scratch("syrk_lower_f64", stack, n, b, par)?;
    if n == 0 {
        return Ok(());
    }
    let isa = Isa::detect();
    let (mut xd, _) = stack.make_aligned_with::<f64>(n * b, 64, |_| 0.0);
    for p in 0..b {
        for i in 0..n {
            xd[p * n + i] = x[(i, p)] as f64;
        }
    }
    let xd: &[f64] = &xd;
    let (cptr, rs, cs) = (c.as_ptr_mut() as usize, c.row_stride(), c.col_stride());
    let groups = n.div_ceil(4);
    let next = AtomicUsize::new(0);
    let work = || {
        crate::isa::with_isa(isa, || {
            let mut acc = [0.0f64; 4 * 1024];
            loop {
                let g = next.fetch_add(1, Ordering::Relaxed);
                if g >= groups {
                    break;
                }
                let j0 = g * 4;
                let w = 4.min(n - j0);
                // Rows j0..n in pieces of 1024 so the accumulators stay on the stack.
                let mut r0 = j0;
                while r0 < n {
                    let len = 1024.min(n - r0);
                    let acc = &mut acc[..4 * len];
                    acc.fill(0.0);
                    let (a0, rest) = acc.split_at_mut(len);
                    let (a1, rest) = rest.split_at_mut(len);
                    let (a2, a3) = rest.split_at_mut(len);
                    for p in 0..b {
                        let col = &xd[p * n + r0..p * n + r0 + len];
                        let s = |jj: usize| if jj < w { xd[p * n + j0 + jj] } else { 0.0 };
                        let (s0, s1, s2, s3) = (s(0), s(1), s(2), s(3));
                        for i in 0..len {
                            let v = col[i];
                            a0[i] += v * s0;
                            a1[i] += v * s1;
                            a2[i] += v * s2;
                            a3[i] += v * s3;
                        }
                    }
                    let accs = [&*a0, &*a1, &*a2, &*a3];
                    for (jj, a) in accs.iter().enumerate().take(w) {
                        let j = j0 + jj;
                        for (ii, &v) in a.iter().enumerate() {
                            let i = r0 + ii;
                            if i < j {
                                continue;
                            }
                            let ptr = (cptr as *mut f64)
                                .wrapping_offset(i as isize * rs + j as isize * cs);
                            // SAFETY: (i, j) is inside C and column group `g` is
                            // written by this thread only.
                            unsafe {
                                *ptr = if beta == 0.0 {
                                    alpha * v
                                } else {
                                    beta * *ptr + alpha * v
                                };
                            }
                        }
                    }
                    r0 += len;
                }
            }
        })
    };
    let threads = product::threads_for(par, n * n * b);
    if threads == 1 {
        work();
    } else {
        crate::blocking::broadcast_or_scope(threads, work);
    }
    Ok(())
}
