//! The factorisation `A + shift I = L L^T`: recursive, or right-looking
//! with look-ahead on several threads (see the module documentation of
//! [`crate::cholesky`]).

use crate::error::{check_scratch, check_shape};
use crate::product::{self, Operand};
use crate::trsm::{self, Mode};
use crate::{Error, Isa, MatMut, MemStack, Par, StackReq};
use faer::reborrow::{Reborrow, ReborrowMut};

/// Diagonal blocks smaller than this are factored on one thread: their
/// solves and updates are too small to split (at n = 196, two threads took
/// 59 us against 48 on one).
const PARALLEL_FACTOR_MIN: usize = 256;

/// Largest diagonal block factored by the unblocked loop.
pub(crate) const LEAF: usize = 32;

/// Scratch needed by [`cholesky_in_place`] for an `n x n` matrix.
pub fn cholesky_scratch(n: usize, par: Par) -> StackReq {
    if n <= LEAF {
        return StackReq::EMPTY;
    }
    let recursive = recursive_scratch(n, par);
    if par.degree() > 1 && n >= PARALLEL_FACTOR_MIN {
        StackReq::any_of(&[recursive, lookahead_scratch(n, par)])
    } else {
        recursive
    }
}

/// Scratch of the recursive factorisation ([`factor`]).
fn recursive_scratch(n: usize, par: Par) -> StackReq {
    if n <= LEAF {
        return StackReq::EMPTY;
    }
    let n1 = crate::blocking::split(n);
    let n2 = n - n1;
    StackReq::any_of(&[
        recursive_scratch(n1, par),
        trsm::triangular_scratch(n1, n2, par),
        product::pack_scratch(n2, n2, n1),
        recursive_scratch(n2, par),
    ])
}

/// Panel width of the look-ahead factorisation ([`factor_lookahead`]).
/// Narrow panels keep the serial look-ahead side (update, factor and solve of
/// one panel) shorter than the parallel trailing update. `natgrad bench
/// kernels`' cholesky line against faer on 2 threads, n = 501 / 785 / 1001,
/// two runs each (local probe, interleaved): 128: 0.95-0.99 / 1.11-1.14 /
/// 1.12; 96: 0.91-0.98 / 1.19-1.22 / 1.16-1.21; 64: 0.94-1.22 / 1.18-1.40 /
/// 1.16-1.20; 48: 1.16-1.41 / 1.27-1.47 / 1.18-1.22; 32: 1.15-1.31 /
/// 1.22-1.31 / 1.10-1.20.
const PANEL: usize = 48;

/// Scratch of the look-ahead side (update, factor and solve of the next
/// panel, one thread) for an `n x n` matrix.
fn lookahead_side_scratch(n: usize) -> StackReq {
    StackReq::any_of(&[
        product::pack_scratch(PANEL, PANEL, PANEL),
        product::pack_scratch(n, PANEL, PANEL),
        recursive_scratch(PANEL, Par::Seq),
        trsm::triangular_scratch(PANEL, n, Par::Seq),
    ])
}

/// Scratch of [`factor_lookahead`]: the first panel on all threads, then both
/// sides at once.
fn lookahead_scratch(n: usize, par: Par) -> StackReq {
    let first = StackReq::any_of(&[
        recursive_scratch(PANEL, par),
        trsm::triangular_scratch(PANEL, n, par),
    ]);
    let sides = lookahead_side_scratch(n).and(product::pack_scratch(n, n, PANEL));
    StackReq::any_of(&[first, sides])
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
/// documentation. Allocates nothing when `stack` holds [`cholesky_scratch`];
/// with less, [`Error::InvalidArgument`] before `A` is touched.
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
    check_scratch(stack, cholesky_scratch(n, par), "cholesky_in_place", || {
        format!("cholesky_scratch({n}, ..)")
    })?;
    if shift != 0.0 {
        for j in 0..n {
            a[(j, j)] += shift;
        }
    }
    if par.degree() > 1 && n >= PARALLEL_FACTOR_MIN {
        factor_lookahead(isa, a, par, stack)
    } else {
        factor(isa, a, 0, par, stack)
    }
}

/// Right-looking factorisation in panels of [`PANEL`] columns with a
/// look-ahead of one panel, for two or more threads.
///
/// The recursive [`factor`] alternates a short serial step (the diagonal
/// block and its solve) with a parallel trailing update, and the serial steps
/// leave all but one thread idle: it scaled about 1.4x from one thread to two.
/// Here, once panel `k` is factored, two tasks run at once: one thread updates
/// panel `k + 1` with panel `k` and factors it (its diagonal block and the
/// solve below it), while the trailing columns past panel `k + 1` are
/// updated with panel `k` by the packed product on every thread, the
/// look-ahead thread joining in when its part is done. Each entry receives
/// the same updates in the same order as in a plain right-looking
/// factorisation, so the error bound of the module documentation holds.
fn factor_lookahead(
    isa: Isa,
    mut a: MatMut<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    let n = a.nrows();
    // The first panel: its diagonal block, then the solve below it.
    let w0 = PANEL.min(n);
    {
        let (a11, _, a21, _) = a.rb_mut().split_at_mut(w0, w0);
        factor_panel(isa, a11, a21, 0, par, stack)?;
    }
    let side = lookahead_side_scratch(n);
    let mut c0 = 0;
    while c0 + PANEL < n {
        let c1 = c0 + PANEL;
        let c2 = (c1 + PANEL).min(n);
        // Columns [c0, c1) hold panel k's factor; [c1, c2) are panel k + 1.
        let (left, right) = a.rb_mut().split_at_col_mut(c1);
        let lp = left.rb().subcols(c0, c1 - c0).subrows(c1, n - c1);
        let (lp_top, lp_bot) = lp.split_at_row(c2 - c1);
        let (next, rest) = right.split_at_col_mut(c2 - c1);
        let (mut next_diag, mut next_below) =
            next.subrows_mut(c1, n - c1).split_at_row_mut(c2 - c1);
        let trailing = rest.subrows_mut(c2, n - c2);
        let (side_buf, rest_stack) =
            stack.make_aligned_uninit::<u8>(side.unaligned_bytes_required(), side.align_bytes());
        let side_stack = MemStack::new(side_buf);
        let (r_next, ()) = rayon::join(
            || {
                product::product(
                    isa,
                    next_diag.rb_mut(),
                    1.0,
                    Operand::full(lp_top),
                    Operand::full(lp_top.transpose()),
                    -1.0,
                    true,
                    Par::Seq,
                    side_stack,
                );
                product::product(
                    isa,
                    next_below.rb_mut(),
                    1.0,
                    Operand::full(lp_bot),
                    Operand::full(lp_top.transpose()),
                    -1.0,
                    false,
                    Par::Seq,
                    side_stack,
                );
                factor_panel(isa, next_diag, next_below, c1, Par::Seq, side_stack)
            },
            || {
                product::product(
                    isa,
                    trailing,
                    1.0,
                    Operand::full(lp_bot),
                    Operand::full(lp_bot.transpose()),
                    -1.0,
                    true,
                    par,
                    rest_stack,
                )
            },
        );
        r_next?;
        c0 = c1;
    }
    Ok(())
}

/// Factors a panel whose columns are already updated: the diagonal block
/// `a11` (at `offset` in the whole matrix, for error reports), then
/// `A21 <- A21 L11^{-T}` below it.
fn factor_panel(
    isa: Isa,
    mut a11: MatMut<'_, f32>,
    a21: MatMut<'_, f32>,
    offset: usize,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    factor(isa, a11.rb_mut(), offset, par, stack)?;
    trsm::solve_lower_left(isa, a11.rb(), Mode::Lower, a21.transpose_mut(), par, stack);
    Ok(())
}

pub(super) fn factor(
    isa: Isa,
    a: MatMut<'_, f32>,
    offset: usize,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    let n = a.nrows();
    if n <= LEAF {
        return crate::isa::with_isa(isa, || leaf(a, offset));
    }
    let par = if n < PARALLEL_FACTOR_MIN {
        Par::Seq
    } else {
        par
    };
    let n1 = crate::blocking::split(n);
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
    product::product(
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
