//! Rank-k updates of a factor: `k` rank-1 sweeps, or a rebuild of
//! `L L^T + W diag(alpha) W^T` and a refactorisation.

use super::factor::{cholesky_scratch, factor};
use crate::error::{check_scratch, check_shape};
use crate::product::{self, Operand};
use crate::{Error, Isa, MatMut, MemStack, Par, StackReq};
use faer::reborrow::{Reborrow, ReborrowMut};

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
/// packed SYRK kernel, and the sum refactorised by [`cholesky_in_place`](super::cholesky_in_place), all on
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
