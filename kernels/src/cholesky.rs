//! Cholesky factorisation of damped factors, and rank-k updates of a factor.
//!
//! [`cholesky_in_place`] is recursive right-looking: factor the top-left half,
//! solve the bottom-left block against it ([`crate::trsm`]), subtract its
//! product with itself from the bottom-right lower triangle (the packed SYRK
//! kernel of [`crate::syrk`], where most of the flops go, on all threads), then
//! factor the bottom-right half. Diagonal blocks of at most 32 rows are
//! factored by an unblocked right-looking loop in a local buffer (auto-vectorised
//! under the selected instruction set). With two or more threads and at
//! least 256 rows it is instead right-looking in 48-column panels with a
//! look-ahead of one panel: one thread updates and factors the next panel
//! while the others update the trailing matrix.
//!
//! Accumulation is in f32 throughout; the computed factor satisfies the
//! standard backward error bound (Higham, Thm 10.3)
//! `L L^T = A + shift I + dA`, `|dA| <= gamma_{n+1} |L| |L^T|`,
//! `gamma_k = k u / (1 - k u)`, `u = 2^-24`: the blocked order of the sums
//! changes which `gamma` multiplies which product, not the bound.

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

fn factor(
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

/// Below this many columns (relative to `n`, see [`use_direct_update`]) the
/// rank-k update runs k sweeps of rank-1 updates; above, it rebuilds
/// `L L^T + W diag(alpha) W^T` with the packed product and refactorises.
fn use_direct_update(n: usize, k: usize) -> bool {
    // Direct: 2 n^2 k flops on one thread at ~45-55 GFLOP/s (measured);
    // rebuild: ~ n^3/3 (L L^T) + n^2 k + n^3/3 (Cholesky) on the packed kernel
    // at ~80-120 GFLOP/s on 2 threads. At n = 501 the rebuild wins from k = 100
    // (56.6 vs 45.9 nominal GFLOP/s), at n = 1001, k = 256 by 76 vs 56; the
    // direct sweep wins for small k (n = 501, k = 20: 42 GFLOP/s nominal,
    // where the rebuild would do ~9x the flops).
    8 * k < n
}

/// Scratch needed by [`cholesky_rank_update`] for an `n x n` factor and `k` columns.
pub fn cholesky_update_scratch(n: usize, k: usize, par: Par) -> StackReq {
    StackReq::new_aligned::<f32>(k, 64).and(StackReq::any_of(&[
        StackReq::new::<Step>(k),
        product::pack_scratch(n, n, n),
        product::pack_scratch(n, n, k),
        cholesky_scratch(n, par),
    ]))
}

/// Update a lower Cholesky factor in place so that afterwards
/// `L L^T = L_old L_old^T + W diag(alpha) W^T` (`W` is `n x k`, clobbered).
/// Negative `alpha` entries (downdates) are allowed as long as the result stays
/// positive definite; otherwise [`Error::NotPositiveDefinite`].
///
/// Two algorithms, chosen by cost: for `k < n / 8`, `k` sweeps of rank-1
/// updates (column by column, all `k` columns of `W` applied to each column of
/// `L` while it is in cache; Givens rotations for `alpha >= 0`, so accuracy
/// does not depend on how large the update is against `L`); otherwise `L L^T`
/// is rebuilt in place by the packed triangular product (n^3/3 flops), `W
/// diag(alpha) W^T` added by the
/// packed SYRK kernel, and the sum refactorised by [`cholesky_in_place`], all on
/// `par` threads. Both meet `|L L^T - M| <= c u (|L_old||L_old^T| +
/// |W||diag(alpha)||W^T| + |L||L^T|)` with `c = O(n + k)` for updates; for
/// downdates the error also grows with the conditioning of the result. On
/// error `L` is partially overwritten (but not when `stack` holds less than
/// [`cholesky_update_scratch`]: that [`Error::InvalidArgument`] comes first).
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
    check_scratch(
        stack,
        cholesky_update_scratch(n, k, par),
        "cholesky_rank_update",
        || format!("cholesky_update_scratch({n}, {k}, ..)"),
    )?;
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
        let (lo, up) = (Operand::lower(l.rb()), Operand::upper(l.rb().transpose()));
        let (pk, _) = product::pack_any(isa, lo, up, true, par, stack);
        product::compute(isa, l.rb_mut(), 0.0, 1.0, &pk, true, par);
    }
    let ws = Operand {
        mat: w.rb(),
        shape: product::Shape::Full,
        col_scale: Some(alpha),
    };
    product::product(
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

/// How one rank-1 step transforms the pair (`l_i`, `w_i`) of every row below
/// the pivot, and the coefficients it needs.
///
/// * `Rotation` (weight `alpha >= 0`, the column of `W` pre-scaled by
///   `sqrt(alpha)` so the step is `L L^T + v v^T`): the Givens rotation of
///   LINPACK's `schud`, `l' = c l + s v`, `v' = c v - s l`, with `c^2 + s^2 =
///   1`. Every coefficient is at most 1 in magnitude, so rounding errors are
///   not amplified however far the update reaches beyond the factor
///   (`|v_j| >> l_jj`). (The form `w' = w - (w_j / l_jj) l`, `l' = (r / l_jj) l
///   + t w'` used before multiplies by `r / l_jj`, which is that reach, and lost
///   up to 74 units of `(n + k + 2) u` on such updates: see
///   `fuzz/regressions/NOTES.md`.)
/// * `Hyperbolic` (weight `alpha < 0`, a downdate): no orthogonal form exists;
///   `w' = w - s l`, `l' = ratio l + t w'` with `s = w_j / l_jj`, `t = alpha
///   w_j / r`, `ratio = r / l_jj`, and `alpha` rescaled by `(l_jj / r)^2`.
///   Its error grows with the conditioning of the result, as documented.
#[derive(Clone, Copy)]
enum Step {
    Rotation { c: f32, s: f32 },
    Hyperbolic { s: f32, t: f32, ratio: f32 },
}

impl Step {
    /// The step at pivot `ljj` with `wj` the pivot row's entry of the (scaled,
    /// for `alpha >= 0`) column of `W`; updates `alpha` for downdates and
    /// returns the new pivot. `pivot` names the column for the error.
    #[inline(always)]
    fn at(ljj: f32, wj: f32, alpha: &mut f32, pivot: usize) -> Result<(Step, f32), Error> {
        if *alpha >= 0.0 {
            let d = ljj.mul_add(ljj, wj * wj);
            if !(d > 0.0 && d.is_finite()) {
                return Err(Error::NotPositiveDefinite {
                    pivot,
                    value: d as f64,
                });
            }
            let r = d.sqrt();
            Ok((
                Step::Rotation {
                    c: ljj / r,
                    s: wj / r,
                },
                r,
            ))
        } else {
            let d = ljj * ljj + *alpha * wj * wj;
            if !(d > 0.0 && d.is_finite()) {
                return Err(Error::NotPositiveDefinite {
                    pivot,
                    value: d as f64,
                });
            }
            let r = d.sqrt();
            let step = Step::Hyperbolic {
                s: wj / ljj,
                t: *alpha * wj / r,
                ratio: r / ljj,
            };
            let shrink = ljj / r;
            *alpha *= shrink * shrink;
            Ok((step, r))
        }
    }

    /// Apply the step to one row's pair.
    #[inline(always)]
    fn apply(self, li: &mut f32, wi: &mut f32) {
        match self {
            Step::Rotation { c, s } => {
                let (l, w) = (*li, *wi);
                *li = c.mul_add(l, s * w);
                *wi = c.mul_add(w, -(s * l));
            }
            Step::Hyperbolic { s, t, ratio } => {
                let x = (-s).mul_add(*li, *wi);
                *wi = x;
                *li = ratio.mul_add(*li, t * x);
            }
        }
    }
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
    let (a, stack) = stack.make_aligned_with::<f32>(k, 64, |r| alpha[r]);
    let mut a = a;
    let a: &mut [f32] = &mut a;
    // Updates become rotations of the columns scaled by sqrt(alpha) (see `Step`).
    for (r, &ar) in a.iter().enumerate() {
        if ar >= 0.0 && ar != 1.0 {
            let scale = ar.sqrt();
            for i in 0..n {
                w[(i, r)] *= scale;
            }
        }
    }
    if l.row_stride() != 1 || w.row_stride() != 1 {
        // General strides: plain indexed loops.
        for j in 0..n {
            for r in 0..k {
                let (step, new) = Step::at(l[(j, j)], w[(j, r)], &mut a[r], j)?;
                l[(j, j)] = new;
                for i in j + 1..n {
                    let (mut li, mut wi) = (l[(i, j)], w[(i, r)]);
                    step.apply(&mut li, &mut wi);
                    l[(i, j)] = li;
                    w[(i, r)] = wi;
                }
            }
        }
        return Ok(());
    }
    let (steps, _) = stack.make_with::<Step>(k, |_| Step::Rotation { c: 1.0, s: 0.0 });
    let mut steps = steps;
    let op = DirectUpdate {
        lp: l.as_ptr_mut(),
        lcs: l.col_stride(),
        wp: w.as_ptr_mut(),
        wcs: w.col_stride(),
        n,
        alpha: a,
        steps: &mut steps,
    };
    crate::isa::with_isa(isa, op)
}

/// Rows of a column of `L` processed together by [`DirectUpdate`] (enough
/// independent vectors to hide the latency of the per-row chain over `k`).
const UPDATE_CHUNK: usize = 256;

/// The unit-stride rank-k sweep. For column `j`, the `k` rank-1 steps depend
/// only on row `j`, so they are computed first (one short sequential chain of
/// square roots); then each chunk of rows of column `j` is kept in a local
/// buffer while all `k` steps are applied to it, streaming the `k` columns of
/// `W` once: one load and one store of `W` per element and step, instead of
/// also reloading and storing the column of `L` k times.
struct DirectUpdate<'a> {
    lp: *mut f32,
    lcs: isize,
    wp: *mut f32,
    wcs: isize,
    n: usize,
    alpha: &'a mut [f32],
    steps: &'a mut [Step],
}

impl pulp::WithSimd for DirectUpdate<'_> {
    type Output = Result<(), Error>;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> Result<(), Error> {
        let DirectUpdate {
            lp,
            lcs,
            wp,
            wcs,
            n,
            alpha,
            steps,
        } = self;
        let k = alpha.len();
        for j in 0..n {
            // SAFETY (whole loop body): unit row stride; (i, j) of L and (i, r)
            // of W for i in j..n, r < k are inside the borrowed views, which do
            // not overlap (distinct `&mut` borrows).
            unsafe {
                let lcol = lp.offset(j as isize * lcs);
                let mut ljj = *lcol.add(j);
                for r in 0..k {
                    let wj = *wp.offset(r as isize * wcs).add(j);
                    let (step, new) = Step::at(ljj, wj, &mut alpha[r], j)?;
                    steps[r] = step;
                    ljj = new;
                }
                *lcol.add(j) = ljj;
                let mut i0 = j + 1;
                while i0 < n {
                    let len = UPDATE_CHUNK.min(n - i0);
                    let mut lc = [0.0f32; UPDATE_CHUNK];
                    let lc = &mut lc[..len];
                    std::ptr::copy_nonoverlapping(lcol.add(i0), lc.as_mut_ptr(), len);
                    for (r, &step) in steps.iter().enumerate() {
                        let wcol = std::slice::from_raw_parts_mut(
                            wp.offset(r as isize * wcs).add(i0),
                            len,
                        );
                        // One loop per kind (the formulas of `Step::apply`,
                        // written out so each vectorises with fused
                        // multiply-adds under the ISA's target features).
                        match step {
                            Step::Rotation { c, s } => {
                                for (li, wi) in lc.iter_mut().zip(wcol.iter_mut()) {
                                    let (l, w) = (*li, *wi);
                                    *li = c.mul_add(l, s * w);
                                    *wi = c.mul_add(w, -(s * l));
                                }
                            }
                            Step::Hyperbolic { s, t, ratio } => {
                                for (li, wi) in lc.iter_mut().zip(wcol.iter_mut()) {
                                    let x = (-s).mul_add(*li, *wi);
                                    *wi = x;
                                    *li = ratio.mul_add(*li, t * x);
                                }
                            }
                        }
                    }
                    std::ptr::copy_nonoverlapping(lc.as_ptr(), lcol.add(i0), len);
                    i0 += len;
                }
            }
        }
        Ok(())
    }
}

/// Scratch needed by [`cholesky_inverse_in_place`] for an `n x n` factor.
pub fn cholesky_inverse_scratch(n: usize, par: Par) -> StackReq {
    let _ = par;
    triangular_inverse_scratch(n).or(product::pack_scratch(n, n, n))
}

fn triangular_inverse_scratch(n: usize) -> StackReq {
    if n <= LEAF {
        return StackReq::EMPTY;
    }
    let n1 = crate::blocking::split(n);
    let n2 = n - n1;
    StackReq::any_of(&[
        // The two halves may be inverted at the same time.
        triangular_inverse_scratch(n1).and(triangular_inverse_scratch(n2)),
        product::pack_scratch(n2, n1, n1),
        product::pack_scratch(n2, n1, n2),
    ])
}

/// The inverse `(L L^T)^{-1}` of a matrix from its Cholesky factor, in place
/// (LAPACK's `potri`): on entry the lower triangle of `l` holds `L` (the
/// strict upper triangle is not read), on exit all of `l` holds the
/// symmetric inverse, both triangles written.
///
/// Two steps of about `n^3 / 3` flops each on the packed product of the SYRK
/// module: `T = L^{-1}` by recursion on halves
/// (`T21 = -T22 L21 T11`, leaves of at most 32 rows by substitution), then
/// the lower triangle of `T^T T` with both operands' zero triangles skipped.
/// A caller that applies `(L L^T)^{-1}` to many right-hand sides between two
/// factorisations trades two triangular solves per application for one GEMM
/// (which runs at about twice their speed here) and this `2 n^3 / 3` once.
///
/// Accuracy (Higham, ch. 14): normwise, `||X - (L L^T)^{-1}|| / ||X||` is
/// of order `n u kappa(L L^T)`, the accuracy of the solves it replaces (the
/// fuzz target `cholesky_solve` checks `16 n u kappa` where `kappa <= 900`).
/// Componentwise, `|X L L^T - I| <= 3 gamma_n |X| |L| |L^T|` holds on the
/// random matrices of the tests but is not guaranteed: an adversarial
/// 20 x 20 factor exceeds it by 7%.
///
/// Errors: [`Error::ShapeMismatch`] if `l` is not square,
/// [`Error::NotPositiveDefinite`] naming the first diagonal entry of `L`
/// that is not positive and finite, [`Error::InvalidArgument`] if an entry of
/// the lower triangle is not finite or the inverse overflows f32 (then `l` is
/// overwritten with garbage). Allocates nothing when `stack` holds
/// [`cholesky_inverse_scratch`]; with less, [`Error::InvalidArgument`]
/// before `l` is touched.
///
/// ```
/// use natgrad_kernels::cholesky::{cholesky_in_place, cholesky_inverse_in_place};
/// use natgrad_kernels::cholesky::{cholesky_inverse_scratch, cholesky_scratch};
/// use natgrad_kernels::{MatMut, MemBuffer, MemStack, Par};
///
/// // A = [[4, 2], [2, 3]], det 8, inverse [[3, -2], [-2, 4]] / 8.
/// let mut a = [4.0f32, 2.0, 2.0, 3.0];
/// let mut mem = MemBuffer::new(cholesky_scratch(2, Par::Seq).or(cholesky_inverse_scratch(2, Par::Seq)));
/// let m = MatMut::from_column_major_slice_mut(&mut a, 2, 2);
/// cholesky_in_place(m, 0.0, Par::Seq, MemStack::new(&mut mem)).unwrap();
/// let m = MatMut::from_column_major_slice_mut(&mut a, 2, 2);
/// cholesky_inverse_in_place(m, Par::Seq, MemStack::new(&mut mem)).unwrap();
/// let want = [0.375f32, -0.25, -0.25, 0.5];
/// assert!(a.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-6));
/// ```
pub fn cholesky_inverse_in_place(
    l: MatMut<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    cholesky_inverse_in_place_with_isa(Isa::detect(), l, par, stack)
}

/// [`cholesky_inverse_in_place`] at a forced instruction-set level.
pub fn cholesky_inverse_in_place_with_isa(
    isa: Isa,
    mut l: MatMut<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    const OP: &str = "cholesky_inverse_in_place";
    if !isa.is_available() {
        return Err(Error::IsaUnavailable(isa));
    }
    let n = l.nrows();
    check_shape(l.ncols() == n, OP, || {
        format!("L is {}x{}, not square", n, l.ncols())
    })?;
    check_scratch(stack, cholesky_inverse_scratch(n, par), OP, || {
        format!("cholesky_inverse_scratch({n}, ..)")
    })?;
    for j in 0..n {
        let d = l[(j, j)];
        if !(d > 0.0 && d.is_finite()) {
            return Err(Error::NotPositiveDefinite {
                pivot: j,
                value: d as f64,
            });
        }
        for i in j + 1..n {
            if !l[(i, j)].is_finite() {
                return Err(Error::InvalidArgument {
                    op: OP,
                    detail: format!("entry ({i}, {j}) of the factor is {}", l[(i, j)]),
                });
            }
        }
    }
    if n == 0 {
        return Ok(());
    }
    invert_lower(isa, l.rb_mut(), par, stack);
    // X = T^T T: T^T is upper triangular, T lower; lower triangle of X only.
    let t = l.rb();
    let (p, _) = product::pack_any(
        isa,
        Operand::upper(t.transpose()),
        Operand::lower(t),
        true,
        par,
        stack,
    );
    product::compute(isa, l.rb_mut(), 0.0, 1.0, &p, true, par);
    let mut finite = true;
    for j in 0..n {
        for i in j..n {
            let v = l[(i, j)];
            finite &= v.is_finite();
            l[(j, i)] = v;
        }
    }
    if finite {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            op: OP,
            detail: "the inverse overflows f32 (the factor is too ill-conditioned)".into(),
        })
    }
}

/// Below this order the two halves of [`invert_lower`] run one after the
/// other (each is then too small to be worth a second thread).
const PARALLEL_INVERSE_MIN: usize = 96;

/// `L <- L^{-1}` for the lower triangle of `l` (the strict upper triangle is
/// not touched).
fn invert_lower(isa: Isa, l: MatMut<'_, f32>, par: Par, stack: &mut MemStack) {
    let n = l.nrows();
    if n <= LEAF {
        return crate::isa::with_isa(isa, || invert_leaf(l));
    }
    let n1 = crate::blocking::split(n);
    let (mut l11, _, mut l21, mut l22) = l.split_at_mut(n1, n1);
    if par.degree() > 1 && n >= PARALLEL_INVERSE_MIN {
        // The diagonal blocks are independent: invert them at the same time,
        // each with its own part of the scratch.
        let req = triangular_inverse_scratch(n1);
        let (buf, rest) = stack.make_aligned_uninit::<u8>(req.unaligned_bytes_required(), 64);
        let first = MemStack::new(buf);
        ::rayon::join(
            || invert_lower(isa, l11.rb_mut(), par, first),
            || invert_lower(isa, l22.rb_mut(), par, rest),
        );
    } else {
        invert_lower(isa, l11.rb_mut(), par, stack);
        invert_lower(isa, l22.rb_mut(), par, stack);
    }
    // T21 = -T22 (L21 T11). Both products pack their operands before writing
    // C, so L21 may be overwritten in place.
    let t11 = Operand::lower(l11.rb());
    let (p, _) = product::pack(isa, Operand::full(l21.rb()), t11, par, stack);
    product::compute(isa, l21.rb_mut(), 0.0, 1.0, &p, false, par);
    let t22 = Operand::lower(l22.rb());
    let (p, _) = product::pack(isa, t22, Operand::full(l21.rb()), par, stack);
    product::compute(isa, l21.rb_mut(), 0.0, -1.0, &p, false, par);
}

/// [`invert_lower`] for at most [`LEAF`] rows, column by column in a local
/// buffer (`L t_j = e_j` by forward substitution in axpy form).
#[inline(always)]
fn invert_leaf(mut l: MatMut<'_, f32>) {
    let n = l.nrows();
    debug_assert!(n <= LEAF);
    let mut a = [0.0f32; LEAF * LEAF];
    for j in 0..n {
        for i in j..n {
            a[j * LEAF + i] = l[(i, j)];
        }
    }
    let mut x = [0.0f32; LEAF];
    for j in 0..n {
        x[..n].fill(0.0);
        x[j] = 1.0;
        for k in j..n {
            let xk = x[k] / a[k * LEAF + k];
            x[k] = xk;
            let col = &a[k * LEAF..k * LEAF + n];
            for (xi, &lik) in x[k + 1..n].iter_mut().zip(&col[k + 1..n]) {
                *xi -= lik * xk;
            }
        }
        for i in j..n {
            l[(i, j)] = x[i];
        }
    }
}
