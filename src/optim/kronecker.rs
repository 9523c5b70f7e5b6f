//! The natural gradient of dense layers, one layer at a time: Kronecker
//! factors, their running averages, damping, Cholesky factorisations and the
//! preconditioned gradient ([`KroneckerPreconditioner`]), for any model whose
//! dense layers a caller can see. [`NaturalGradient`](super::NaturalGradient)
//! drives the same per-layer state for an [`Mlp`](crate::mlp::Mlp).
//!
//! # What the caller provides, and why
//!
//! A dense layer `s = W a + b` (`a` its input, `n_in` wide; `s` its
//! pre-activation, `n_out` wide) has the Fisher block approximated by
//! `A (x) G` (docs/math.md sections 2.1 and 2.2):
//!
//! ```text
//! A = E[abar abar^T],  abar = [a; 1]        ((n_in+1) x (n_in+1))
//! G = E[e e^T],        e = dloss/ds         (n_out x n_out)
//! ```
//!
//! where `e` is the error at the layer's pre-activation for a target **drawn
//! from the model's own predictive distribution**, not the data's target:
//! the Fisher is the expectation of the outer product of the log-likelihood's
//! gradient under the model, so only model-sampled targets give an unbiased
//! estimate of it (errors of the data targets give the "empirical Fisher", a
//! different matrix that does not have the natural gradient's invariance).
//! So, for each minibatch on which statistics are collected, the caller runs
//! one extra backward pass from sampled targets and hands each layer its
//! inputs `a` and those sampled errors `e`, one example per column, as the
//! errors of the per-example loss (not divided by the batch size). The
//! gradient to precondition is the ordinary one, of the caller's loss, as the
//! `n_out x (n_in+1)` matrix `[dW | db]`. The preconditioned gradient is
//!
//! ```text
//! (G + sqrt(g) I)^{-1} [dW | db] (A + sqrt(g) I)^{-1}
//! ```
//!
//! with `g` the damping; the caller steps `theta <- theta - eta * (that)`.
//!
//! # Example
//!
//! One dense layer `y = W x + b` fitted by least squares (Gaussian
//! likelihood with unit variance: the sampled error at the output is
//! standard normal noise, `e = s - (s + z) = -z`).
//!
//! ```
//! use natgrad::kernels::{rng::Rng, MatMut, MatRef, Par};
//! use natgrad::optim::{KroneckerPreconditioner, NaturalGradientConfig};
//!
//! let (n_in, n_out, b) = (5, 3, 64);
//! let mut rng = Rng::new(7);
//! let mut x = vec![0.0f32; n_in * b];
//! rng.fill_normal(&mut x);
//! // Targets from a fixed linear map, y = T x.
//! let t: Vec<f32> = (0..n_out * n_in).map(|i| (i % 4) as f32 - 1.5).collect();
//! let mut y = vec![0.0f32; n_out * b];
//! for j in 0..b {
//!     for i in 0..n_out {
//!         y[j * n_out + i] = (0..n_in).map(|k| t[k * n_out + i] * x[j * n_in + k]).sum();
//!     }
//! }
//! let mut theta = vec![0.0f32; n_out * (n_in + 1)]; // [W | b], column-major
//! let config = NaturalGradientConfig { factor_decay: 0.9, ..Default::default() };
//! let mut pre = KroneckerPreconditioner::new(&[(n_in, n_out)], b, config)?;
//! let (mut grad, mut step) = (vec![0.0f32; theta.len()], vec![0.0f32; theta.len()]);
//! let (mut e_data, mut e_sampled) = (vec![0.0f32; n_out * b], vec![0.0f32; n_out * b]);
//! let loss = |theta: &[f32], e: &mut [f32]| -> f32 {
//!     // e = W x + b - y per example; loss = mean of |e|^2 / 2.
//!     for j in 0..b {
//!         for i in 0..n_out {
//!             let s: f32 = (0..n_in).map(|k| theta[k * n_out + i] * x[j * n_in + k]).sum();
//!             e[j * n_out + i] = s + theta[n_in * n_out + i] - y[j * n_out + i];
//!         }
//!     }
//!     e.iter().map(|v| v * v).sum::<f32>() / (2 * b) as f32
//! };
//! let first = loss(&theta, &mut e_data);
//! for _ in 0..20 {
//!     loss(&theta, &mut e_data);
//!     // Gradient of the mean loss: [E X^T | E 1] / b.
//!     for i in 0..n_out {
//!         for k in 0..=n_in {
//!             grad[k * n_out + i] = (0..b)
//!                 .map(|j| e_data[j * n_out + i] * if k < n_in { x[j * n_in + k] } else { 1.0 })
//!                 .sum::<f32>() / b as f32;
//!         }
//!     }
//!     if pre.begin_step() {
//!         rng.fill_normal(&mut e_sampled); // errors of model-sampled targets
//!         let xs = MatRef::from_column_major_slice(&x, n_in, b);
//!         let es = MatRef::from_column_major_slice(&e_sampled, n_out, b);
//!         pre.observe(0, xs, es, Par::Seq)?;
//!     }
//!     let g = MatRef::from_column_major_slice(&grad, n_out, n_in + 1);
//!     let d = MatMut::from_column_major_slice_mut(&mut step, n_out, n_in + 1);
//!     pre.precondition(0, g, d, Par::Seq)?;
//!     theta.iter_mut().zip(&step).for_each(|(w, d)| *w -= d);
//! }
//! let last = loss(&theta, &mut e_data);
//! assert!(last < 1e-2 * first, "{first} -> {last}");
//! # Ok::<(), natgrad::Error>(())
//! ```

use super::check_range;
use super::config::{
    DampingAdaptation, FactorUpdate, InverseApplication, NaturalGradientConfig, Preconditioning,
};
use crate::workspace::{view, view_mut};
use crate::Error;
use faer::reborrow::{Reborrow, ReborrowMut};
use natgrad_kernels::cholesky::{
    cholesky_in_place, cholesky_inverse_in_place, cholesky_inverse_scratch, cholesky_rank_update,
    cholesky_scratch, cholesky_update_scratch,
};
use natgrad_kernels::gemm::{gemm, gemm_scratch};
use natgrad_kernels::syrk::{syrk_lower, syrk_scratch};
use natgrad_kernels::trsm::{solve_llt_left_in_place, solve_llt_right_in_place, solve_scratch};
use natgrad_kernels::{MatMut, MatRef, MemBuffer, MemStack, Par, StackReq};

/// Attempts at factorising with damping multiplied by 10 each time before a
/// step gives up with an error.
pub(crate) const MAX_DAMPING_RETRIES: usize = 6;

/// Per-layer state: factors, their Cholesky factors, the update, and scratch.
pub(crate) struct LayerState {
    pub(crate) n_in1: usize,
    pub(crate) n_out: usize,
    pub(crate) a_factor: Vec<f32>,
    pub(crate) g_factor: Vec<f32>,
    pub(crate) a_chol: Vec<f32>,
    pub(crate) g_chol: Vec<f32>,
    pub(crate) delta: Vec<f32>,
    /// Copy of the columns fed to a rank update (the update clobbers them).
    pub(crate) update_cols: Vec<f32>,
    pub(crate) update_alpha: Vec<f32>,
    /// The output layer of a Gaussian likelihood: room for the Bartlett
    /// factor of its Wishart-distributed `G` sample, `n_out x min(n_out,
    /// max_batch)` (empty on every other layer; see the sampling step).
    pub(crate) wishart: Vec<f32>,
    /// `<grad_i, dW_i>` of the last step.
    pub(crate) grad_dot_delta: f64,
    /// `<W_i, dW_i> - |dW_i|^2 / 2` after the last step (with a penalty).
    pub(crate) penalty_dot: f64,
    /// How this step computes the layer's update.
    pub(crate) plan: LayerPlan,
    /// Whether `G` is diagonal (the output layer with
    /// [`NaturalGradientConfig::exact_output_factor`]): `g_factor` and `g_chol`
    /// then hold it and its Cholesky factor on their diagonals, zero elsewhere.
    pub(crate) g_diag: bool,
    /// Damping added to the backward side at the last factorisation.
    pub(crate) shift_g: f32,
    /// Whether `a_chol` / `g_chol` hold the explicit damped inverse (full
    /// symmetric) instead of the Cholesky factor, on sides that are not Gram
    /// or diagonal (see [`InverseApplication`]; fixed at construction).
    pub(crate) a_inv: bool,
    pub(crate) g_inv: bool,
    /// Products with the explicit inverses land here: `n_out x b` then
    /// `n_in1 x b` in the low-rank form, `n_out x n_in1` in the full form
    /// (empty when neither side is explicit).
    pub(crate) inv_tmp: Vec<f32>,
    /// Gram-form buffers (empty unless the configuration allows it): the
    /// Cholesky factor of `Abar^T Abar / b + d I` and of `Es^T Es / b + d I`,
    /// and `Es^T E` (each up to `min(max_batch, n)^2`).
    pub(crate) gram_a: Vec<f32>,
    pub(crate) gram_g: Vec<f32>,
    pub(crate) gram_m: Vec<f32>,
    pub(crate) scratch: MemBuffer,
}

/// How one layer's update is computed at the current minibatch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LayerPlan {
    /// The low-rank form (solves on `E` and `Abar`, then one GEMM) rather than
    /// solves on the full gradient.
    pub(crate) low_rank: bool,
    /// The forward side through the Gram matrix of `Abar` (push-through).
    pub(crate) a_gram: bool,
    /// The backward side through the Gram matrix of the sampled errors (Woodbury).
    pub(crate) g_gram: bool,
}

impl LayerPlan {
    /// The cheapest form allowed by `mode` (flop counts of docs/math.md sections 3.1 and 3.2
    /// and [`Preconditioning::Gram`]); `gram_ok` says whether the configuration
    /// has per-minibatch factors.
    /// `g_diag`: the backward factor is diagonal (a row scaling). `penalty`:
    /// an L2 penalty joins the gradient; its term `wd W` is not of the
    /// minibatch's low rank, so only the full form preconditions it (`Auto`
    /// then takes the full form; `LowRank` and `Gram` are refused at
    /// construction).
    pub(crate) fn choose(
        n_out: usize,
        n_in1: usize,
        b: usize,
        mode: Preconditioning,
        gram_ok: bool,
        g_diag: bool,
        penalty: bool,
    ) -> LayerPlan {
        let (o, i, bf) = (n_out as f64, n_in1 as f64, b as f64);
        // Forming and factorising an n x n factor, and its solve with b columns.
        let factor = |n: f64| n * n * bf + n * n * n / 3.0;
        let solve = |n: f64| 2.0 * n * n * bf;
        let gram_a = |n: f64| 3.0 * n * bf * bf + bf * bf * bf / 3.0;
        let gram_g = |n: f64| 5.0 * n * bf * bf + 7.0 * bf * bf * bf / 3.0;
        let a_gram_ok = gram_ok && b <= n_in1;
        let g_gram_ok = gram_ok && b <= n_out && !g_diag;
        let update = 2.0 * o * i * bf;
        let low_rank_direct = LayerPlan {
            low_rank: true,
            a_gram: false,
            g_gram: false,
        };
        match mode {
            Preconditioning::LowRank => low_rank_direct,
            Preconditioning::Full => LayerPlan {
                low_rank: false,
                ..low_rank_direct
            },
            Preconditioning::Gram => LayerPlan {
                low_rank: true,
                a_gram: a_gram_ok,
                g_gram: g_gram_ok,
            },
            Preconditioning::Auto if penalty => LayerPlan {
                low_rank: false,
                ..low_rank_direct
            },
            Preconditioning::Auto => {
                let a_gram = a_gram_ok && gram_a(i) < factor(i) + solve(i);
                let g_gram = g_gram_ok && gram_g(o) < factor(o) + solve(o);
                let side = |gram: bool, n: f64, g: f64| if gram { g } else { factor(n) + solve(n) };
                let (low_g, full_g) = if g_diag {
                    (o * bf, o * i)
                } else {
                    (side(g_gram, o, gram_g(o)), factor(o) + 2.0 * o * o * i)
                };
                let low = side(a_gram, i, gram_a(i)) + low_g + update;
                let full = factor(i) + 2.0 * o * i * i + full_g;
                if low <= full {
                    LayerPlan {
                        low_rank: true,
                        a_gram,
                        g_gram,
                    }
                } else {
                    LayerPlan {
                        low_rank: false,
                        ..low_rank_direct
                    }
                }
            }
        }
    }
}

/// The `with_min_len` of the step's per-layer loops: one layer per task when
/// the step may use several threads, and every layer in one task otherwise.
/// A task that is never split runs on the calling thread, so `Par::Seq` keeps
/// the whole step on the caller's thread (and its stack), never on rayon's.
pub(crate) fn layers_per_task(par: Par) -> usize {
    if par.degree() > 1 {
        1
    } else {
        usize::MAX
    }
}

/// Sum of the diagonal of the column-major `n x n` matrix in `m`.
fn trace(m: &[f32], n: usize) -> f64 {
    (0..n).map(|i| m[i * n + i] as f64).sum()
}

/// `max` of `req(b)` over every `b` in `1..=max_b`: scratch for any minibatch
/// up to `max_b` (the kernels' requirements need not be monotone in `b`).
fn max_over_batches(max_b: usize, req: impl Fn(usize) -> StackReq) -> StackReq {
    StackReq::any_of(&(1..=max_b).map(req).collect::<Vec<_>>())
}

/// Whether the configuration has per-minibatch factors, so that the Gram form
/// of [`Preconditioning::Gram`] computes the same update.
pub(crate) fn gram_applies(config: &NaturalGradientConfig) -> bool {
    config.factor_decay == 0.0
        && config.refresh_interval == 1
        && config.statistics_interval == 1
        && config.samples == 1
        && config.factor_update == FactorUpdate::Refactor
}

/// Whether [`InverseApplication::Auto`] forms the explicit inverse of an
/// `n x n` side applied to `m` right-hand sides per step and refreshed every
/// `t` steps: when `m > 2 n / t`. The rates behind it, on 1 thread at the
/// `deep` sizes (n = 500-1000): forming the inverse runs at about 0.6 of the
/// FMA peak, the two triangular solves at about 0.7, a GEMM at about 0.9.
/// The inverse costs `2 n^3 / 3` flops at 0.6 per refresh; the GEMM saves
/// `2 n^2 m (1/0.7 - 1/0.9)` peak-seconds' worth per step, so it pays from
/// `m = 1.8 n / t` (rounded to 2).
fn explicit_pays(n: usize, m: usize, t: f64) -> bool {
    m as f64 > 2.0 * n as f64 / t
}

/// Which sides of a layer hold explicit inverses (see [`InverseApplication`]):
/// `(forward, backward)`. `plan` is the layer's plan at the maximum minibatch.
fn explicit_sides(
    config: &NaturalGradientConfig,
    n_out: usize,
    n_in1: usize,
    max_batch: usize,
    plan: LayerPlan,
    g_diag: bool,
) -> (bool, bool) {
    if config.factor_update == FactorUpdate::RankUpdate {
        return (false, false);
    }
    let (a_ok, g_ok) = (!plan.a_gram, !plan.g_gram && !g_diag);
    match config.inverse {
        InverseApplication::Solves => (false, false),
        InverseApplication::Explicit => (a_ok, g_ok),
        InverseApplication::Auto => {
            let t = config.refresh_interval as f64;
            let pays = |n: usize, m: usize| explicit_pays(n, m, t);
            let (m_a, m_g) = if plan.low_rank {
                (max_batch, max_batch)
            } else {
                (n_out, n_in1)
            };
            (a_ok && pays(n_in1, m_a), g_ok && pays(n_out, m_g))
        }
    }
}

/// `M <- D^-2 M` for `D` the diagonal of the column-major `n x n` matrix in
/// `diag_chol` (`n` the rows of `M`): the solve `L L^T X = M` for a diagonal `L`.
pub(crate) fn scale_rows_by_inverse_square(
    diag_chol: &[f32],
    mut m: natgrad_kernels::MatMut<'_, f32>,
) {
    let n = m.nrows();
    // Column by column: `M` is column-major.
    for j in 0..m.ncols() {
        for i in 0..n {
            let l = diag_chol[i * n + i];
            m[(i, j)] /= l * l;
        }
    }
}

/// One side's undamped matrix, written where it is factorised, and its trace:
/// on a Gram side the `b x b` matrix `X^T X / b` into `gram`, otherwise the
/// `n x n` factor copied into `chol` (`x` is that side's `n x b` minibatch
/// matrix). The traces agree: `tr X^T X = tr X X^T`.
fn undamped_side(
    use_gram: bool,
    gram: &mut [f32],
    chol: &mut [f32],
    factor: &[f32],
    x: MatRef<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) -> Result<f64, natgrad_kernels::Error> {
    let (n, b) = (x.nrows(), x.ncols());
    if use_gram {
        let k = view_mut(gram, b, b, b);
        syrk_lower(k, 0.0, x.transpose(), 1.0 / b as f32, par, stack)?;
        Ok(trace(&gram[..b * b], b))
    } else {
        copy_lower(chol, factor, n);
        Ok(trace(chol, n))
    }
}

/// The explicit inverse from the Cholesky factor in `l`, in place. An inverse
/// that overflows f32 is reported as a failed factorisation, so that the step
/// raises the damping and retries like for a non-positive pivot.
fn invert(
    l: natgrad_kernels::MatMut<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), natgrad_kernels::Error> {
    match cholesky_inverse_in_place(l, par, stack) {
        Err(natgrad_kernels::Error::InvalidArgument { .. }) => {
            Err(natgrad_kernels::Error::NotPositiveDefinite {
                pivot: 0,
                value: f64::INFINITY,
            })
        }
        other => other,
    }
}

/// The backward side of the full-form update: `out = (G + dI)^{-1} grad`.
pub(crate) struct GSide<'a> {
    /// `g_chol` holds the explicit inverse.
    pub(crate) inv: bool,
    /// `g_chol` holds a diagonal Cholesky factor (a row scaling).
    pub(crate) diag: bool,
    /// The layer's `g_chol`, `n_out x n_out`.
    pub(crate) g_chol: &'a [f32],
}

impl GSide<'_> {
    pub(crate) fn apply(
        &self,
        grad: MatRef<'_, f32>,
        mut out: natgrad_kernels::MatMut<'_, f32>,
        par: Par,
        stack: &mut MemStack,
    ) -> Result<(), natgrad_kernels::Error> {
        let n = grad.nrows();
        let lg = MatRef::from_column_major_slice(self.g_chol, n, n);
        // A diagonal side is checked first, as in `factorise` and the low-rank
        // form: it is never inverted explicitly.
        if self.inv && !self.diag {
            return gemm(out, 0.0, lg, grad, 1.0, par, stack);
        }
        out.copy_from(grad);
        if self.diag {
            scale_rows_by_inverse_square(self.g_chol, out);
            Ok(())
        } else {
            solve_llt_left_in_place(lg, out, par, stack)
        }
    }
}

/// Copies the lower triangle of `src` (`n x n`) to `dst` (the whole columns, so
/// the copy is one contiguous pass per column).
fn copy_lower(dst: &mut [f32], src: &[f32], n: usize) {
    for j in 0..n {
        dst[j * n + j..(j + 1) * n].copy_from_slice(&src[j * n + j..(j + 1) * n]);
    }
}

impl LayerState {
    /// Cholesky of both damped factors (or, on Gram sides, of the damped Gram
    /// matrices of `abar` and `es`, formed here); `Err` carries the kernel error.
    pub(crate) fn factorise(
        &mut self,
        abar: MatRef<'_, f32>,
        es: MatRef<'_, f32>,
        shift: f32,
        pi_correction: bool,
        par: Par,
    ) -> Result<(), natgrad_kernels::Error> {
        let b = abar.ncols();
        let (n_in1, n_out, plan) = (self.n_in1, self.n_out, self.plan);
        let stack = MemStack::new(&mut self.scratch);
        // The undamped matrices, in the buffers they are factorised in; their
        // traces equal those of A and G (tr X^T X = tr X X^T).
        let trace_a = undamped_side(
            plan.a_gram,
            &mut self.gram_a,
            &mut self.a_chol,
            &self.a_factor,
            abar,
            par,
            stack,
        )?;
        let trace_g = if self.g_diag {
            trace(&self.g_factor, n_out)
        } else {
            undamped_side(
                plan.g_gram,
                &mut self.gram_g,
                &mut self.g_chol,
                &self.g_factor,
                es,
                par,
                stack,
            )?
        };
        // Martens & Grosse (2015, sec. 6.3): split the damping in proportion to the
        // factors' mean eigenvalues, pi = sqrt((tr A / dim A) / (tr G / dim G)), so
        // that neither factor is over- or under-damped when their scales differ.
        let pi = if pi_correction {
            let pi = ((trace_a / n_in1 as f64) / (trace_g / n_out as f64)).sqrt() as f32;
            if pi.is_finite() && pi > 0.0 {
                pi.clamp(1e-4, 1e4)
            } else {
                1.0
            }
        } else {
            1.0
        };
        let (shift_a, shift_g) = (shift * pi, shift / pi);
        self.shift_g = shift_g;
        if plan.a_gram {
            cholesky_in_place(view_mut(&mut self.gram_a, b, b, b), shift_a, par, stack)?;
        } else {
            let mut a = view_mut(&mut self.a_chol, n_in1, n_in1, n_in1);
            cholesky_in_place(a.rb_mut(), shift_a, par, stack)?;
            if self.a_inv {
                invert(a, par, stack)?;
            }
        }
        if self.g_diag {
            for i in 0..n_out {
                let d = self.g_factor[i * n_out + i] + shift_g;
                if !(d > 0.0 && d.is_finite()) {
                    return Err(natgrad_kernels::Error::NotPositiveDefinite {
                        pivot: i,
                        value: d as f64,
                    });
                }
                self.g_chol[i * n_out + i] = d.sqrt();
            }
            return Ok(());
        }
        if plan.g_gram {
            cholesky_in_place(view_mut(&mut self.gram_g, b, b, b), shift_g, par, stack)
        } else {
            let mut g = view_mut(&mut self.g_chol, n_out, n_out, n_out);
            cholesky_in_place(g.rb_mut(), shift_g, par, stack)?;
            if self.g_inv {
                invert(g, par, stack)?;
            }
            Ok(())
        }
    }

    /// `L L^T <- rho L L^T + alpha X X^T` for one factor, via scaling and a rank update.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rank_update(
        chol: &mut [f32],
        n: usize,
        x: MatRef<'_, f32>,
        rho: f32,
        alpha: f32,
        cols: &mut [f32],
        alphas: &mut [f32],
        par: Par,
        stack: &mut MemStack,
    ) -> Result<(), natgrad_kernels::Error> {
        let b = x.ncols();
        let s = rho.sqrt();
        for j in 0..n {
            chol[j * n + j..(j + 1) * n]
                .iter_mut()
                .for_each(|v| *v *= s);
        }
        let mut w = view_mut(cols, n, b, n);
        for j in 0..b {
            for i in 0..n {
                w[(i, j)] = x[(i, j)];
            }
        }
        alphas[..b].iter_mut().for_each(|a| *a = alpha);
        let l = natgrad_kernels::MatMut::from_column_major_slice_mut(chol, n, n);
        cholesky_rank_update(l, w, &alphas[..b], par, stack)
    }
}

/// Flops of one layer's share of three phases of a natural-gradient step
/// ([`LayerState::phase_flops`]), counted as the kernels compute them: 2 per
/// multiply-add, the triangle-aware kernels (`syrk_lower`, Cholesky, the
/// solves, the inverse) only on the triangle they touch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct LayerFlops {
    /// The backward factor's accumulation `G += E E^T` (lower triangle).
    pub(crate) backward_factor: f64,
    /// The forward factor's accumulation and the factorisations (and explicit
    /// inverses).
    pub(crate) factorise: f64,
    /// The preconditioned update and its inner product with the gradient.
    pub(crate) precondition: f64,
}

impl LayerState {
    /// This layer's [`LayerFlops`] at minibatch `b` under its current plan,
    /// on a step that takes statistics (`statistics`) and refactorises
    /// (`refresh`); `None` on steps that follow the Cholesky factors by rank
    /// updates (not counted here).
    ///
    /// Counts: `syrk_lower` on `n` rows and `b` columns `n (n + 1) b`;
    /// Cholesky `n^3 / 3`; the inverse from it `2 n^3 / 3`; `(L L^T)^-1` on
    /// `m` columns (two triangular solves, or a GEMM with the explicit
    /// inverse) `2 n^2 m`; a GEMM `2 m k n`; a row scaling by a diagonal
    /// factor one flop per entry; the inner product `2 n_out (n_in + 1)`. A
    /// Gram side of `n` rows forms its `b x b` Gram matrix (`b (b + 1) n`)
    /// and factorises it (`b^3 / 3`) instead; it is applied by a solve
    /// (forward side, `2 b^2 n`) or by Woodbury's identity (backward side,
    /// two GEMMs and a solve, `4 n b^2 + 2 b^3`).
    pub(crate) fn phase_flops(
        &self,
        b: usize,
        statistics: bool,
        refresh: bool,
        rank_update: bool,
    ) -> Option<LayerFlops> {
        if rank_update {
            return None;
        }
        let plan = self.plan;
        let (o, i, bf) = (self.n_out as f64, self.n_in1 as f64, b as f64);
        let syrk = |n: f64, cols: f64| n * (n + 1.0) * cols;
        let chol = |n: f64| n * n * n / 3.0;
        let inverse = |n: f64, inv: bool| if inv { 2.0 * n * n * n / 3.0 } else { 0.0 };
        let side = |n: f64, m: f64| 2.0 * n * n * m;
        let backward_factor = if statistics && !self.g_diag && !plan.g_gram {
            syrk(o, bf)
        } else {
            0.0
        };
        let mut factorise = if statistics && !plan.a_gram {
            syrk(i, bf)
        } else {
            0.0
        };
        if refresh {
            factorise += if plan.a_gram {
                syrk(bf, i) + chol(bf)
            } else {
                chol(i) + inverse(i, self.a_inv)
            };
            factorise += if self.g_diag {
                0.0
            } else if plan.g_gram {
                syrk(bf, o) + chol(bf)
            } else {
                chol(o) + inverse(o, self.g_inv)
            };
        }
        let update = if plan.low_rank {
            let g = if self.g_diag {
                o * bf
            } else if plan.g_gram {
                4.0 * o * bf * bf + 2.0 * bf * bf * bf
            } else {
                side(o, bf)
            };
            let a = if plan.a_gram {
                side(bf, i)
            } else {
                side(i, bf)
            };
            g + a + 2.0 * o * i * bf
        } else {
            let g = if self.g_diag { o * i } else { side(o, i) };
            g + side(i, o)
        };
        Some(LayerFlops {
            backward_factor,
            factorise,
            precondition: update + 2.0 * o * i,
        })
    }
}

/// Checks the settings shared by [`NaturalGradient`](super::NaturalGradient)
/// and [`KroneckerPreconditioner`] against their domains, and the maximum
/// minibatch.
pub(crate) fn validate_config(
    config: &NaturalGradientConfig,
    max_batch: usize,
) -> Result<(), Error> {
    check_range("learning_rate", config.learning_rate, 0.0, f32::MAX, true)?;
    check_range("weight_decay", config.weight_decay, 0.0, f32::MAX, false)?;
    check_range("factor_decay", config.factor_decay, 0.0, 0.999_999, false)?;
    let (lo, hi) = config.damping_bounds;
    check_range("damping_bounds.0", lo, 0.0, f32::MAX, true)?;
    check_range("damping_bounds.1", hi, lo, f32::MAX, false)?;
    check_range("damping", config.damping, lo, hi, false)?;
    if config.refresh_interval == 0 {
        return Err(Error::InvalidConfig(
            "refresh_interval must be at least 1".into(),
        ));
    }
    if config.samples == 0 {
        return Err(Error::InvalidConfig("samples must be at least 1".into()));
    }
    if config.statistics_interval == 0 {
        return Err(Error::InvalidConfig(
            "statistics_interval must be at least 1".into(),
        ));
    }
    if let DampingAdaptation::LevenbergMarquardt { interval: 0 } = config.adaptation {
        return Err(Error::InvalidConfig(
            "the Levenberg-Marquardt interval must be at least 1".into(),
        ));
    }
    let f = config.damping_check_fraction;
    if !(f > 0.0 && f <= 1.0) {
        return Err(Error::InvalidConfig(format!(
            "damping_check_fraction must be in (0, 1], got {f}"
        )));
    }
    if max_batch == 0 {
        return Err(Error::InvalidConfig(
            "the maximum minibatch size must be at least 1".into(),
        ));
    }
    if config.preconditioning == Preconditioning::Gram && !gram_applies(config) {
        return Err(Error::InvalidConfig(
            "Gram preconditioning needs per-minibatch factors: factor_decay 0, \
             refresh_interval 1, statistics_interval 1, factor_update Refactor and samples 1"
                .into(),
        ));
    }
    if config.weight_decay > 0.0
        && matches!(
            config.preconditioning,
            Preconditioning::LowRank | Preconditioning::Gram
        )
    {
        return Err(Error::InvalidConfig(format!(
            "{:?} preconditioning cannot apply weight_decay (its term wd W is not of the \
             minibatch's low rank): use Auto or Full",
            config.preconditioning
        )));
    }
    if config.inverse == InverseApplication::Explicit
        && config.factor_update == FactorUpdate::RankUpdate
    {
        return Err(Error::InvalidConfig(
            "explicit inverses need factor_update Refactor (rank updates change the \
             Cholesky factor at every step)"
                .into(),
        ));
    }
    Ok(())
}

/// What step `k` (1-based) does, from the configuration and whether the
/// Cholesky factors are stale.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Schedule {
    /// The step's number, `steps taken + 1`.
    pub(crate) k: u64,
    /// Whether the factors take this minibatch's statistics (every
    /// `statistics_interval`-th step, the first included).
    pub(crate) statistics: bool,
    /// The running averages' decay at this update (`min(rho^T, 1 - 1/updates)`,
    /// so that the average is unbiased early on; 0 at the first).
    pub(crate) rho: f32,
    /// Whether the damped factors are refactorised this step.
    pub(crate) refresh: bool,
    /// Whether the Cholesky factors follow the statistics by rank updates.
    pub(crate) rank_update: bool,
}

impl Schedule {
    /// The schedule of the step after `steps` steps.
    pub(crate) fn next(steps: u64, stale: bool, config: &NaturalGradientConfig) -> Schedule {
        let k = steps + 1;
        let t_stats = config.statistics_interval as u64;
        let statistics = (k - 1).is_multiple_of(t_stats);
        let updates = (k - 1) / t_stats + 1;
        let rho = if updates == 1 {
            0.0
        } else {
            let per_update = config.factor_decay.powi(t_stats as i32);
            per_update.min(1.0 - 1.0 / updates as f32)
        };
        let refresh = stale || (k - 1).is_multiple_of(config.refresh_interval as u64);
        let rank_update =
            statistics && !refresh && config.factor_update == FactorUpdate::RankUpdate;
        Schedule {
            k,
            statistics,
            rho,
            refresh,
            rank_update,
        }
    }
}

impl LayerState {
    /// The state of a layer with `n_in` inputs and `n_out` outputs for
    /// minibatches of up to `max_batch` columns, with every buffer a step
    /// needs. `g_diag`: the backward factor is the exact diagonal output
    /// factor; `wishart`: room for the Bartlett factor of a Gaussian output
    /// layer's `G` draw.
    pub(crate) fn new(
        n_in: usize,
        n_out: usize,
        max_batch: usize,
        config: &NaturalGradientConfig,
        g_diag: bool,
        wishart: bool,
    ) -> LayerState {
        // Scratch sized for the most demanding parallelism the kernels may run at.
        let par_sizing = Par::rayon(0);
        let gram_ok = gram_applies(config);
        let n_in1 = n_in + 1;
        let nmax = n_in1.max(n_out);
        let plan = LayerPlan::choose(
            n_out,
            n_in1,
            max_batch,
            config.preconditioning,
            gram_ok,
            g_diag,
            config.weight_decay > 0.0,
        );
        let (a_inv, g_inv) = explicit_sides(config, n_out, n_in1, max_batch, plan, g_diag);
        let mut req = StackReq::any_of(&[
            syrk_scratch(nmax, max_batch, par_sizing),
            cholesky_scratch(nmax, par_sizing),
            cholesky_update_scratch(nmax, max_batch, par_sizing),
            solve_scratch(nmax, max_batch.max(nmax), par_sizing),
            gemm_scratch(n_out, n_in1, max_batch, par_sizing),
        ]);
        if a_inv || g_inv {
            req = req.or(StackReq::any_of(&[
                cholesky_inverse_scratch(nmax, par_sizing),
                gemm_scratch(n_out, max_batch, n_out, par_sizing),
                gemm_scratch(n_in1, max_batch, n_in1, par_sizing),
                gemm_scratch(n_out, n_in1, n_out, par_sizing),
                gemm_scratch(n_out, n_in1, n_in1, par_sizing),
            ]));
        }
        // Gram sides run at b <= min(max_batch, n) on b x b matrices.
        let (ga, gg) = if gram_ok {
            (max_batch.min(n_in1), max_batch.min(n_out))
        } else {
            (0, 0)
        };
        if ga > 0 {
            req = req.or(max_over_batches(ga, |b| {
                StackReq::any_of(&[
                    syrk_scratch(b, n_in1, par_sizing),
                    cholesky_scratch(b, par_sizing),
                    solve_scratch(b, n_in1, par_sizing),
                ])
            }));
        }
        if gg > 0 {
            req = req.or(max_over_batches(gg, |b| {
                StackReq::any_of(&[
                    syrk_scratch(b, n_out, par_sizing),
                    cholesky_scratch(b, par_sizing),
                    gemm_scratch(b, b, n_out, par_sizing),
                    solve_scratch(b, b, par_sizing),
                    gemm_scratch(n_out, b, b, par_sizing),
                ])
            }));
        }
        let rank = config.factor_update == FactorUpdate::RankUpdate;
        let when = |yes: bool, len: usize| if yes { vec![0.0; len] } else { Vec::new() };
        LayerState {
            n_in1,
            n_out,
            a_factor: vec![0.0; n_in1 * n_in1],
            g_factor: vec![0.0; n_out * n_out],
            a_chol: vec![0.0; n_in1 * n_in1],
            g_chol: vec![0.0; n_out * n_out],
            delta: vec![0.0; n_out * n_in1],
            update_cols: when(rank, nmax * max_batch),
            update_alpha: when(rank, max_batch),
            wishart: when(wishart, n_out * n_out.min(max_batch)),
            grad_dot_delta: 0.0,
            penalty_dot: 0.0,
            plan,
            g_diag,
            shift_g: 1.0,
            a_inv,
            g_inv,
            inv_tmp: when(
                a_inv || g_inv,
                (n_out * n_in1).max((n_out + n_in1) * max_batch),
            ),
            gram_a: vec![0.0; ga * ga],
            gram_g: vec![0.0; gg * gg],
            gram_m: vec![0.0; gg * gg],
            scratch: MemBuffer::new(req),
        }
    }

    /// `A <- rho A + alpha Abar Abar^T` (lower triangle), and the Cholesky
    /// factor by the same rank update when `rank_update`.
    pub(crate) fn accumulate_forward(
        &mut self,
        abar: MatRef<'_, f32>,
        rho: f32,
        alpha: f32,
        rank_update: bool,
        par: Par,
    ) -> Result<(), natgrad_kernels::Error> {
        let stack = MemStack::new(&mut self.scratch);
        if rank_update {
            let (cols, alphas) = (&mut self.update_cols, &mut self.update_alpha);
            LayerState::rank_update(
                &mut self.a_chol,
                self.n_in1,
                abar,
                rho,
                alpha,
                cols,
                alphas,
                par,
                stack,
            )?;
        }
        let n = self.n_in1;
        let f = MatMut::from_column_major_slice_mut(&mut self.a_factor, n, n);
        syrk_lower(f, rho, abar, alpha, par, stack)
    }

    /// `G <- beta G + alpha E E^T` (lower triangle) from the sampled errors
    /// `e`, and the Cholesky factor by the same rank update when `rank_update`.
    pub(crate) fn accumulate_backward(
        &mut self,
        e: MatRef<'_, f32>,
        beta: f32,
        alpha: f32,
        rank_update: bool,
        par: Par,
    ) -> Result<(), natgrad_kernels::Error> {
        let stack = MemStack::new(&mut self.scratch);
        if rank_update {
            let (cols, alphas) = (&mut self.update_cols, &mut self.update_alpha);
            LayerState::rank_update(
                &mut self.g_chol,
                self.n_out,
                e,
                beta,
                alpha,
                cols,
                alphas,
                par,
                stack,
            )?;
        }
        let n = self.n_out;
        let g = MatMut::from_column_major_slice_mut(&mut self.g_factor, n, n);
        syrk_lower(g, beta, e, alpha, par, stack)
    }

    /// The full form: `delta = scale (G + dI)^{-1} grad (A + dI)^{-1}` from
    /// the factorised sides.
    pub(crate) fn precondition_full(
        &mut self,
        grad: MatRef<'_, f32>,
        scale: f32,
        par: Par,
    ) -> Result<(), natgrad_kernels::Error> {
        let (n_out, n_in1) = (self.n_out, self.n_in1);
        let stack = MemStack::new(&mut self.scratch);
        let la = MatRef::from_column_major_slice(&self.a_chol, n_in1, n_in1);
        let mut delta = view_mut(&mut self.delta, n_out, n_in1, n_out);
        let g_side = GSide {
            inv: self.g_inv,
            diag: self.g_diag,
            g_chol: &self.g_chol,
        };
        if self.a_inv {
            // H = (G + dI)^-1 grad into `inv_tmp`, then H times the explicit inverse.
            let mut h = view_mut(&mut self.inv_tmp, n_out, n_in1, n_out);
            g_side.apply(grad, h.rb_mut(), par, stack)?;
            gemm(delta.rb_mut(), 0.0, h.rb(), la, scale, par, stack)?;
        } else {
            g_side.apply(grad, delta.rb_mut(), par, stack)?;
            solve_llt_right_in_place(la, delta.rb_mut(), par, stack)?;
            if scale != 1.0 {
                self.delta.iter_mut().for_each(|v| *v *= scale);
            }
        }
        Ok(())
    }
}

/// The natural gradient of a set of dense layers, for a model that is not an
/// [`Mlp`](crate::mlp::Mlp) (another layer stack, skip connections, the
/// caller's own training loop): per layer, running averages of the Kronecker
/// factors from the caller's inputs and model-sampled errors, damping,
/// Cholesky factorisations at the configured refresh interval, and the
/// preconditioned gradient. See the [module documentation](self) for what
/// the caller provides and why, with an example.
///
/// The same per-layer state and code as inside
/// [`NaturalGradient`](super::NaturalGradient) (which adds, knowing the
/// network, the low-rank and Gram forms of the update, the exact or drawn
/// output factor and the Levenberg-Marquardt check on its own loss), with the
/// same settings ([`NaturalGradientConfig`]), of which this type uses:
/// `factor_decay`, `statistics_interval`, `refresh_interval`,
/// `factor_update`, `damping`, `damping_bounds`, `inverse` and
/// `pi_correction`. The gradient is always preconditioned in the full form
/// (`preconditioning` `LowRank` and `Gram`, which need the layer's errors
/// instead of its gradient, are refused), `samples` must be 1 (observe
/// several samples by averaging them yourself), and the step size, sign,
/// depth scaling and weight decay are the caller's: the preconditioned
/// gradient is returned as is.
///
/// After construction nothing is allocated: [`begin_step`](Self::begin_step),
/// [`observe`](Self::observe) and [`precondition`](Self::precondition) run on
/// buffers sized for `max_batch`.
///
/// A step: [`begin_step`](Self::begin_step) (it says whether this step
/// collects statistics); on such steps [`observe`](Self::observe) for each
/// layer; then [`precondition`](Self::precondition) for each layer's
/// gradient. Optionally, after the step, [`adapt_damping`](Self::adapt_damping)
/// with the loss change the step achieved and the change
/// [`predicted_change`](Self::predicted_change) expected (the paper's
/// Levenberg-Marquardt rule).
pub struct KroneckerPreconditioner {
    pub(crate) config: NaturalGradientConfig,
    pub(crate) layers: Vec<LayerState>,
    pub(crate) max_batch: usize,
    pub(crate) damping: f32,
    pub(crate) steps: u64,
    /// Whether the Cholesky factors are stale (damping changed, or never built).
    pub(crate) stale: bool,
    /// `[x; 1]` of the layer being observed, `max (n_in + 1) x max_batch`
    /// (empty inside `NaturalGradient`, whose workspace holds it).
    abar: Vec<f32>,
    /// The current step's schedule (None before the first `begin_step`).
    schedule: Option<Schedule>,
    /// Per layer, whether it was factorised in the current step.
    factorised: Vec<bool>,
}

impl KroneckerPreconditioner {
    /// A preconditioner for dense layers of `(n_in, n_out)` each (inputs and
    /// outputs, the bias not counted), at minibatches of up to `max_batch`
    /// columns. Allocates every buffer a step needs.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for no layers, a zero width, a setting out of
    /// its domain (as [`NaturalGradient::new`](super::NaturalGradient::new)),
    /// `preconditioning` `LowRank` or `Gram`, or `samples` other than 1.
    pub fn new(
        layers: &[(usize, usize)],
        max_batch: usize,
        config: NaturalGradientConfig,
    ) -> Result<KroneckerPreconditioner, Error> {
        validate_config(&config, max_batch)?;
        if layers.is_empty() {
            return Err(Error::InvalidConfig("no layers to precondition".into()));
        }
        if let Some(i) = layers
            .iter()
            .position(|&(n_in, n_out)| n_in == 0 || n_out == 0)
        {
            return Err(Error::InvalidConfig(format!(
                "layer {i} has a zero width ({:?}): every layer needs at least one input and one output",
                layers[i]
            )));
        }
        if matches!(
            config.preconditioning,
            Preconditioning::LowRank | Preconditioning::Gram
        ) {
            return Err(Error::InvalidConfig(format!(
                "{:?} preconditioning needs the layer's errors, not its gradient: \
                 the layer-level API uses Auto or Full (both the full form here)",
                config.preconditioning
            )));
        }
        if config.samples != 1 {
            return Err(Error::InvalidConfig(format!(
                "samples must be 1 for the layer-level API (got {}): average several \
                 sampled errors before observing them",
                config.samples
            )));
        }
        super::check_layer_buffer_sizes(layers.iter().copied(), max_batch)?;
        let full = NaturalGradientConfig {
            preconditioning: Preconditioning::Full,
            ..config
        };
        let states = layers
            .iter()
            .map(|&(n_in, n_out)| LayerState::new(n_in, n_out, max_batch, &full, false, false))
            .collect();
        let widest = layers.iter().map(|&(n_in, _)| n_in + 1).max().unwrap_or(1);
        Ok(KroneckerPreconditioner {
            config: full,
            layers: states,
            max_batch,
            damping: config.damping,
            steps: 0,
            stale: true,
            abar: vec![0.0; widest * max_batch],
            schedule: None,
            factorised: vec![false; layers.len()],
        })
    }

    /// Wraps the per-layer states of a [`NaturalGradient`](super::NaturalGradient).
    pub(crate) fn from_states(
        config: NaturalGradientConfig,
        layers: Vec<LayerState>,
        max_batch: usize,
    ) -> KroneckerPreconditioner {
        let count = layers.len();
        KroneckerPreconditioner {
            config,
            layers,
            max_batch,
            damping: config.damping,
            steps: 0,
            stale: true,
            abar: Vec::new(),
            schedule: None,
            factorised: vec![false; count],
        }
    }

    /// The settings (with `preconditioning` `Full`).
    pub fn config(&self) -> &NaturalGradientConfig {
        &self.config
    }
    /// The number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
    /// The current damping `g` (each factor gets `sqrt(g) I`).
    pub fn damping(&self) -> f32 {
        self.damping
    }
    /// Steps begun.
    pub fn steps(&self) -> u64 {
        self.steps
    }
    /// The forward factor `A` of layer `i`, `(n_in+1)^2`, lower triangle meaningful.
    ///
    /// # Panics
    /// If `i` is not a layer index (as slice indexing does).
    pub fn forward_factor(&self, i: usize) -> MatRef<'_, f32> {
        let s = &self.layers[i];
        MatRef::from_column_major_slice(&s.a_factor, s.n_in1, s.n_in1)
    }
    /// The backward factor `G` of layer `i`, `n_out^2`, lower triangle meaningful.
    ///
    /// # Panics
    /// If `i` is not a layer index (as slice indexing does).
    pub fn backward_factor(&self, i: usize) -> MatRef<'_, f32> {
        let s = &self.layers[i];
        MatRef::from_column_major_slice(&s.g_factor, s.n_out, s.n_out)
    }

    /// Starts a step. Returns whether it collects statistics: if so, call
    /// [`observe`](Self::observe) for each layer before
    /// [`precondition`](Self::precondition).
    pub fn begin_step(&mut self) -> bool {
        let schedule = Schedule::next(self.steps, self.stale, &self.config);
        self.steps = schedule.k;
        self.stale = false;
        self.factorised.iter_mut().for_each(|f| *f = false);
        self.schedule = Some(schedule);
        schedule.statistics
    }

    fn layer_index(&self, layer: usize) -> Result<usize, Error> {
        if layer < self.layers.len() {
            Ok(layer)
        } else {
            Err(Error::Shape(format!(
                "layer {layer} does not exist: the preconditioner has {} layers",
                self.layers.len()
            )))
        }
    }

    fn current(&self, what: &str) -> Result<Schedule, Error> {
        self.schedule
            .ok_or_else(|| Error::InvalidConfig(format!("{what} before the first begin_step")))
    }

    /// Feeds layer `layer` this step's statistics: its inputs (`n_in x b`,
    /// one example per column) and the errors at its pre-activation for
    /// targets sampled from the model (`n_out x b`, per-example, not divided
    /// by `b`). The factors become `A <- rho A + (1 - rho) abar abar^T / b`
    /// and likewise `G`, `rho` the running average's decay.
    ///
    /// # Errors
    /// [`Error::Shape`] for a layer that does not exist, inputs or errors of
    /// the wrong height, different column counts, 0 columns or more than
    /// `max_batch`; [`Error::NonFinite`] for NaN or infinite entries;
    /// [`Error::InvalidConfig`] before [`begin_step`](Self::begin_step) or on
    /// a step that collects no statistics. The factors are unchanged on error.
    pub fn observe(
        &mut self,
        layer: usize,
        inputs: MatRef<'_, f32>,
        sampled_errors: MatRef<'_, f32>,
        par: Par,
    ) -> Result<(), Error> {
        let l = self.layer_index(layer)?;
        let schedule = self.current("observe")?;
        if !schedule.statistics {
            return Err(Error::InvalidConfig(format!(
                "step {} collects no statistics (statistics_interval {}): observe only when \
                 begin_step returns true",
                schedule.k, self.config.statistics_interval
            )));
        }
        let (n_in1, n_out) = (self.layers[l].n_in1, self.layers[l].n_out);
        let b = inputs.ncols();
        if inputs.nrows() != n_in1 - 1 || sampled_errors.nrows() != n_out {
            return Err(Error::Shape(format!(
                "layer {l} takes {} x b inputs and {n_out} x b sampled errors, got {} x {} and {} x {}",
                n_in1 - 1,
                inputs.nrows(),
                b,
                sampled_errors.nrows(),
                sampled_errors.ncols()
            )));
        }
        if sampled_errors.ncols() != b || b == 0 || b > self.max_batch {
            return Err(Error::Shape(format!(
                "layer {l}: inputs and sampled errors need the same number of columns, between 1 \
                 and the maximum minibatch {} (got {b} and {})",
                self.max_batch,
                sampled_errors.ncols()
            )));
        }
        check_finite_matrix("inputs", l, inputs)?;
        check_finite_matrix("sampled errors", l, sampled_errors)?;
        // abar = [x; 1], in the preallocated buffer.
        let abar_buf = &mut self.abar[..n_in1 * b];
        for j in 0..b {
            let col = &mut abar_buf[j * n_in1..(j + 1) * n_in1];
            for (i, v) in col[..n_in1 - 1].iter_mut().enumerate() {
                *v = inputs[(i, j)];
            }
            col[n_in1 - 1] = 1.0;
        }
        let abar = view(abar_buf, n_in1, b, n_in1);
        let (rho, alpha) = (schedule.rho, (1.0 - schedule.rho) / b as f32);
        let st = &mut self.layers[l];
        st.accumulate_forward(abar, rho, alpha, schedule.rank_update, par)?;
        st.accumulate_backward(sampled_errors, rho, alpha, schedule.rank_update, par)?;
        Ok(())
    }

    /// Writes layer `layer`'s preconditioned gradient
    /// `(G + sqrt(g) I)^{-1} gradient (A + sqrt(g) I)^{-1}` into `out`
    /// (both `n_out x (n_in+1)`, `[dW | db]`). On a refresh step the layer's
    /// damped factors are factorised first; if one is not positive definite
    /// the damping is raised tenfold (up to its upper bound, at most
    /// six times) and the factorisation retried, and the
    /// other layers are refactorised at the new damping on the next step.
    ///
    /// # Errors
    /// [`Error::Shape`] for a layer that does not exist or matrices of the
    /// wrong shape; [`Error::NonFinite`] for a non-finite gradient or result;
    /// [`Error::NotPositiveDefinite`] when a factor will not factorise even
    /// at the largest damping; [`Error::InvalidConfig`] before
    /// [`begin_step`](Self::begin_step). `out` is unspecified on error.
    pub fn precondition(
        &mut self,
        layer: usize,
        gradient: MatRef<'_, f32>,
        mut out: MatMut<'_, f32>,
        par: Par,
    ) -> Result<(), Error> {
        let l = self.layer_index(layer)?;
        let schedule = self.current("precondition")?;
        let (n_in1, n_out) = (self.layers[l].n_in1, self.layers[l].n_out);
        for (what, (r, c)) in [
            ("gradient", (gradient.nrows(), gradient.ncols())),
            ("out", (out.nrows(), out.ncols())),
        ] {
            if (r, c) != (n_out, n_in1) {
                return Err(Error::Shape(format!(
                    "layer {l}: {what} must be {n_out} x {n_in1} ([dW | db]), got {r} x {c}"
                )));
            }
        }
        check_finite_matrix("gradient", l, gradient)?;
        if (schedule.refresh || self.stale) && !self.factorised[l] {
            let (lo, hi) = self.config.damping_bounds;
            let empty_a = MatRef::from_column_major_slice(&[], n_in1, 0);
            let empty_g = MatRef::from_column_major_slice(&[], n_out, 0);
            let mut attempt = 0;
            loop {
                let st = &mut self.layers[l];
                let shift = self.damping.sqrt();
                match st.factorise(empty_a, empty_g, shift, self.config.pi_correction, par) {
                    Ok(()) => break,
                    Err(natgrad_kernels::Error::NotPositiveDefinite { .. })
                        if attempt < MAX_DAMPING_RETRIES && self.damping < hi =>
                    {
                        self.damping = (self.damping * 10.0).min(hi).max(lo);
                        // The layers factorised before this one used the
                        // smaller damping: all are refreshed next step.
                        self.stale = true;
                        attempt += 1;
                    }
                    Err(e @ natgrad_kernels::Error::NotPositiveDefinite { .. }) => {
                        return Err(Error::NotPositiveDefinite(format!(
                            "layer {l}: a curvature factor would not factorise even at damping \
                             {:e} ({e})",
                            self.damping
                        )));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            self.factorised[l] = true;
        }
        let st = &mut self.layers[l];
        st.precondition_full(gradient, 1.0, par)?;
        let mut dot = 0.0;
        for j in 0..n_in1 {
            let col = &st.delta[j * n_out..(j + 1) * n_out];
            for (i, &d) in col.iter().enumerate() {
                dot += d as f64 * gradient[(i, j)] as f64;
            }
        }
        // A NaN or infinite entry makes its term, and with it the sum, non-finite.
        st.grad_dot_delta = dot;
        if !dot.is_finite() {
            return Err(Error::NonFinite(format!(
                "layer {l}: the preconditioned gradient is not finite (curvature too \
                 ill-conditioned for the damping)"
            )));
        }
        out.copy_from(view(&st.delta, n_out, n_in1, n_out));
        Ok(())
    }

    /// The change of the loss that the local quadratic model
    /// `M(d) = g.d + 1/2 d^T (F + dI) d` predicts for the step
    /// `d = -learning_rate P g` on every layer, `P g` the preconditioned
    /// gradients of this step's [`precondition`](Self::precondition) calls:
    /// `-learning_rate (1 - learning_rate / 2) sum_i <g_i, P g_i>`.
    pub fn predicted_change(&self, learning_rate: f32) -> f64 {
        let eta = learning_rate as f64;
        let gpg: f64 = self.layers.iter().map(|st| st.grad_dot_delta).sum();
        -eta * (1.0 - eta / 2.0) * gpg
    }

    /// The paper's Levenberg-Marquardt rule: with `ratio = actual_change /
    /// predicted_change`, the damping is multiplied by 3/2 when `ratio < 1/4`
    /// (or the loss did not decrease as predicted, or `actual_change` is not
    /// finite) and by 2/3 when `ratio > 3/4`, within `damping_bounds`. A
    /// raised damping refactorises every layer at the next step; a lowered
    /// one waits for the next scheduled refresh.
    pub fn adapt_damping(&mut self, actual_change: f64, predicted_change: f64) {
        let (lo, hi) = self.config.damping_bounds;
        let old = self.damping;
        let ratio = actual_change / predicted_change;
        if predicted_change >= 0.0 || !ratio.is_finite() || ratio < 0.25 {
            self.damping = (self.damping * 1.5).min(hi);
        } else if ratio > 0.75 {
            self.damping = (self.damping * (2.0 / 3.0)).max(lo);
        }
        if self.damping > old {
            self.stale = true;
        }
    }

    /// Sets the damping `g`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] outside `damping_bounds`.
    pub fn set_damping(&mut self, damping: f32) -> Result<(), Error> {
        let (lo, hi) = self.config.damping_bounds;
        check_range("damping", damping, lo, hi, false)?;
        if damping != self.damping {
            self.stale = true;
        }
        self.damping = damping;
        Ok(())
    }
}

/// [`Error::NonFinite`] naming the first NaN or infinite entry of `m`.
fn check_finite_matrix(what: &str, layer: usize, m: MatRef<'_, f32>) -> Result<(), Error> {
    for j in 0..m.ncols() {
        for i in 0..m.nrows() {
            if !m[(i, j)].is_finite() {
                return Err(Error::NonFinite(format!(
                    "layer {layer}: {what} has {} at row {i}, column {j}",
                    m[(i, j)]
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Auto` forms an explicit inverse only where a side is applied to more
    /// than `2 n / T` right-hand sides: at `deep`'s first layer (785 inputs
    /// with the bias, 1000 outputs, full form, so each side's right-hand
    /// sides are the other side's size) solves on both sides when the
    /// factors are refreshed at every step, explicit inverses on both at a
    /// refresh every 10 steps; the 31 x 250 layer inverts its small side
    /// only. The previous rule, `m > 2 n / (3 T)`, inverted both sides of
    /// the first layer at every step, 3% slower over the `deep` step at
    /// b = 1000.
    #[test]
    fn explicit_inverses_where_they_pay() {
        let full = LayerPlan {
            low_rank: false,
            a_gram: false,
            g_gram: false,
        };
        let at = |refresh_interval: usize| NaturalGradientConfig {
            refresh_interval,
            ..NaturalGradientConfig::default()
        };
        assert_eq!(
            explicit_sides(&at(1), 1000, 785, 1000, full, false),
            (false, false)
        );
        assert_eq!(
            explicit_sides(&at(10), 1000, 785, 1000, full, false),
            (true, true)
        );
        assert_eq!(
            explicit_sides(&at(1), 250, 31, 1000, full, false),
            (true, false)
        );
        // The boundary: explicit strictly above `2 n / T`.
        assert!(!explicit_pays(500, 1000, 1.0));
        assert!(explicit_pays(500, 1001, 1.0));
        assert!(explicit_pays(500, 101, 10.0));
        // Never on a diagonal backward side, nor with `Solves`.
        assert_eq!(
            explicit_sides(&at(10), 1000, 785, 1000, full, true),
            (true, false)
        );
        let solves = NaturalGradientConfig {
            inverse: InverseApplication::Solves,
            ..at(10)
        };
        assert_eq!(
            explicit_sides(&solves, 1000, 785, 1000, full, false),
            (false, false)
        );
    }
}
