//! The online natural gradient (PAPER.md sections 2 and 3).
//!
//! For every layer `i`, with `abar = [a_{i-1}; 1]` and `e_i` the error of the
//! layer back-propagated from targets sampled from the model itself,
//!
//! ```text
//! A_i = E[abar abar^T]      (forward factor, (n_{i-1}+1) x (n_{i-1}+1))
//! G_i = E[e_i e_i^T]        (backward factor, n_i x n_i)
//! dW_i = -(eta / L) (G_i + sqrt(g) I)^{-1} grad_i (A_i + sqrt(g) I)^{-1}
//! ```
//!
//! Both factors are accumulated by SYRK into exponential moving averages (or
//! recomputed from each minibatch, the paper's setting, when the decay is 0),
//! factorised by Cholesky every `refresh_interval` steps (or kept current by
//! rank-b updates), and the update is formed either from the low-rank form of the
//! minibatch gradient `grad_i = (1/b) E_i Abar^T` (two solves with `b`
//! right-hand sides and one GEMM) or from the full gradient (two solves with
//! `n` right-hand sides), whichever needs fewer flops. With per-minibatch
//! factors (the paper's setting) a side whose width exceeds the minibatch is
//! solved through the `b x b` Gram matrix of the minibatch instead of the
//! `n x n` factor (push-through and Woodbury identities, see
//! [`Preconditioning::Gram`]): the same update for a fraction of the flops.

use super::{
    check_grads_finite, check_net_shapes, check_range, Optimizer, OptimizerState, StepStats,
};
use crate::mlp::Mlp;
use crate::workspace::{view, view_mut, Workspace};
use crate::Error;
use faer::reborrow::{Reborrow, ReborrowMut};
use natgrad_kernels::cholesky::{
    cholesky_in_place, cholesky_inverse_in_place, cholesky_inverse_scratch, cholesky_rank_update,
    cholesky_scratch, cholesky_update_scratch,
};
use natgrad_kernels::gemm::{gemm, gemm_scratch};
use natgrad_kernels::rng::Rng;
use natgrad_kernels::syrk::{syrk_lower, syrk_lower_trapezoidal, syrk_scratch};
use natgrad_kernels::trsm::{solve_llt_left_in_place, solve_llt_right_in_place, solve_scratch};
use natgrad_kernels::vector::{add_and_penalty_change, dot_f64};
use natgrad_kernels::{MatRef, MemBuffer, MemStack, Par, StackReq};
use rayon::prelude::*;
use std::time::Instant;

/// How the damping `g` changes during training.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DampingAdaptation {
    /// `g` stays at its initial value.
    Fixed,
    /// The paper's Levenberg-Marquardt rule, applied every `interval` steps:
    /// after the step, the reduction ratio `rho = (actual loss change on the
    /// minibatch) / (change predicted by the local quadratic model)` sets
    /// `g *= 3/2` when `rho < 1/4` and `g *= 2/3` when `rho > 3/4`. A step
    /// that makes the checked loss (without the L2 penalty) non-finite, or
    /// increases it by more than its own size (`new - old > |old|`), is taken
    /// back (`w <- (w + d) - d`, exact up to rounding) and `g *= 10`. Each
    /// check costs one extra forward pass on the minibatch (or the fraction
    /// `damping_check_fraction` of it).
    LevenbergMarquardt {
        /// Steps between two checks (1 = every step, as in the paper).
        interval: usize,
    },
}

/// How the Cholesky factors follow the curvature factors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FactorUpdate {
    /// Refactorise `A + sqrt(g) I` and `G + sqrt(g) I` from scratch every
    /// `refresh_interval` steps (and whenever the damping changes).
    Refactor,
    /// Between refreshes, keep the Cholesky factors current with rank-b updates
    /// (`L L^T <- rho L L^T + (1 - rho)/b X X^T`): O(b n^2) instead of O(n^3/3).
    /// The damping inside the factor then decays by `rho` per step until the next
    /// refresh restores it, so use it with a short refresh interval.
    RankUpdate,
}

/// Which form of the preconditioned update to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preconditioning {
    /// Per layer, whichever of the forms below needs fewer flops (the Gram form
    /// only where it applies, see [`Preconditioning::Gram`]). Default.
    Auto,
    /// Solve on the `b`-column error and activation matrices, then one GEMM.
    LowRank,
    /// Solve on the full `n_i x (n_{i-1}+1)` gradient from both sides.
    Full,
    /// The low-rank form computed through the `b x b` Gram matrices of the
    /// minibatch instead of the `n x n` factors, on every side where `b <= n`
    /// (the other sides as [`Preconditioning::LowRank`]). With per-minibatch
    /// factors, `A = Abar Abar^T / b` and `G = Es Es^T / b` (`Es` the sampled
    /// errors), the push-through identity gives
    /// `(A + d I)^{-1} Abar = Abar (Abar^T Abar / b + d I)^{-1}` and Woodbury's
    /// `(G + d I)^{-1} E = (E - Es (Es^T Es / b + d I)^{-1} Es^T E / b) / d`:
    /// about `3 n b^2 + b^3 / 3` and `5 n b^2 + 7 b^3 / 3` flops per side
    /// instead of `3 n^2 b + n^3 / 3`, a large saving when `b` is well below
    /// `n` (`deep` at minibatch 256). Exact in exact arithmetic; in f32 the
    /// Woodbury side loses about `u (lambda_max(G) / d)` relative to the
    /// largest entries of the result, where the solve against `G + d I` loses
    /// `u (lambda_max(G) / d)` relative to each entry. The `n x n` factors are
    /// not formed on such sides (`forward_factor`/`backward_factor` keep their
    /// last formed values). Needs per-minibatch factors: `factor_decay` 0,
    /// `refresh_interval` 1, `statistics_interval` 1, `factor_update`
    /// `Refactor` and `samples` 1;
    /// [`NaturalGradient::new`] refuses it otherwise, and `Auto` then never
    /// chooses it.
    Gram,
}

/// How `(A + sqrt(g) I)^{-1}` and `(G + sqrt(g) I)^{-1}` are applied in the
/// preconditioned update, per side (forward or backward factor) of each layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InverseApplication {
    /// Per side, explicit where it is cheaper than the solves over a refresh
    /// interval, decided once at construction from the layer sizes, the
    /// maximum minibatch and the configuration. Forming the inverse costs
    /// `2 n^3 / 3` flops per refresh at about the solves' speed; applying it
    /// saves about half the `2 n^2 m` flops of the solves per step (a GEMM
    /// runs at about twice their speed on this crate's kernels), `m` the
    /// right-hand sides (the minibatch in the low-rank form, the other side's
    /// size in the full form). So: explicit when `m > 2 n / (3 T)`, `T` the
    /// refresh interval. Default.
    Auto,
    /// Two triangular solves with the Cholesky factor at every step.
    Solves,
    /// At every refresh the inverse is formed from the Cholesky factor
    /// ([`natgrad_kernels::cholesky::cholesky_inverse_in_place`]); each step
    /// multiplies by it (one GEMM per side). Not on Gram sides or the
    /// diagonal output factor (which have their own cheaper forms), and
    /// refused with `factor_update` `RankUpdate` (the Cholesky factor then
    /// changes at every step).
    Explicit,
}

/// Settings of [`NaturalGradient`]. The defaults reproduce the paper's
/// configuration (PAPER.md section 2) except where noted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NaturalGradientConfig {
    /// Step size `eta`. Default 1.0 (the paper's value: with exact curvature a
    /// unit natural-gradient step is the Newton-like step).
    pub learning_rate: f32,
    /// Divide the step by the number of layers `L` (the exact deep-linear
    /// result, PAPER.md section 1). Default true.
    pub scale_by_depth: bool,
    /// Decay `rho` of the running averages of the factors, in [0, 1). 0 means the
    /// factors come from the current minibatch alone (the paper's setting).
    /// Default 0. Early steps use `min(rho, 1 - 1/k)` so the average is unbiased.
    pub factor_decay: f32,
    /// Initial damping `g` (> 0); each factor gets `sqrt(g) I`. Default 1.0 (the paper's).
    pub damping: f32,
    /// Lower and upper bounds for the adapted damping. Default (1e-6, 1e6).
    pub damping_bounds: (f32, f32),
    /// Damping adaptation. Default Levenberg-Marquardt every step (the paper's).
    pub adaptation: DampingAdaptation,
    /// Fraction of the minibatch, in (0, 1], on which the Levenberg-Marquardt
    /// check measures the actual loss change: its first `ceil(f b)` columns
    /// (minibatches are shuffled, so they are a random subset). Default 1 (the
    /// whole minibatch, the paper's). The check's forward pass costs about a
    /// third of an SGD step; on a fraction `f` it costs `f` of that, for a
    /// noisier estimate of the actual change (the predicted change always uses
    /// the whole minibatch's gradient). The race uses 1/4, see
    /// [`crate::app::race::tuned`].
    pub damping_check_fraction: f32,
    /// Steps between Cholesky refreshes (>= 1). Default 1: with per-minibatch
    /// factors every step has new factors anyway. A damping raised by the
    /// Levenberg-Marquardt rule forces a refresh at the next step; a lowered one
    /// waits for the next scheduled refresh.
    pub refresh_interval: usize,
    /// How factors are kept between refreshes. Default `Refactor`.
    pub factor_update: FactorUpdate,
    /// Steps between updates of the curvature factors `A` and `G` (>= 1;
    /// K-FAC's `T_cov`). Default 1: every step, the paper's setting. With
    /// `T > 1` the sampled backward pass and both covariance accumulations run
    /// only on every `T`-th step (the first included), and the running average
    /// then decays by `factor_decay^T` per update, so that its memory measured
    /// in steps stays the same. The factors then lag the weights by up to
    /// `T - 1` steps; the gradient is always the current one.
    pub statistics_interval: usize,
    /// Targets sampled per example for the backward factor (>= 1). Default 1
    /// (the paper's; more samples reduce the variance of `G` at one extra
    /// backward pass each).
    pub samples: usize,
    /// Which form of the update to compute. Default `Auto`.
    pub preconditioning: Preconditioning,
    /// Use the exact expectation over sampled targets for the output layer's
    /// backward factor where the likelihood makes it diagonal (see
    /// [`Mlp::output_fisher_diagonal`]): `I` for Gaussian, the minibatch mean
    /// of `diag(p (1 - p))` for Bernoulli (**beyond** the paper, which
    /// estimates every `G_i` from the sampled errors). The output layer's `G`
    /// side then costs a row scaling instead of an `n_L x n_L` SYRK, Cholesky
    /// and solve (`paper` at minibatch 1000: about 1.3 of the step's 12
    /// GFLOP). The errors propagated to the layers below are still sampled;
    /// Categorical outputs (`diag(p) - p p^T`) always use the sampled
    /// estimate. Default false (the paper's): on `paper` (Gaussian) the exact
    /// factor validated about 10% worse than the sampled one (`natgrad tune`,
    /// 20 and 40 s: 53.5 against 47.0, 50.8 against 45.3) despite 20% more
    /// steps; the noise of the sampled estimate (a rank-`b` matrix when
    /// `b < n_L`) lengthens the output layer's steps. On `deep` (Bernoulli) it
    /// was better and the race uses it (see [`crate::app::race::tuned`]).
    pub exact_output_factor: bool,
    /// For a Gaussian likelihood, draw the output layer's sampled backward
    /// factor directly: its sampled errors are standard normal vectors,
    /// independent of the network, so their `E E^T` is a `Wishart(b, I)`
    /// matrix, which Bartlett's decomposition draws as `A A^T` with `A` lower
    /// trapezoidal (`natgrad_kernels::rng::Rng::fill_bartlett`,
    /// `natgrad_kernels::syrk::syrk_lower_trapezoidal`): about `n_L^3 / 3`
    /// flops and `n_L^2 / 2` samples instead of the `n_L^2 b` flops of a SYRK
    /// on the errors (**beyond** the paper). The output errors are then not
    /// needed themselves, and the error they would back-propagate to the
    /// layer below, `phi'(a) .* (W_L^T e_L)`, is drawn from its distribution
    /// `N(0, W_L^T W_L)` as `C z` (`C` the Cholesky factor of `W_L^T W_L`,
    /// formed each step, and `z` standard normal) when `W_L` has at least as
    /// many rows as columns, that costs fewer flops (`n_{L-1}^2 (n_L +
    /// n_{L-1} / 3 + b)` against `2 n_L n_{L-1} b`: at `paper`'s sizes from
    /// `b = 315`) and the factorisation succeeds. Each
    /// factor keeps its distribution; the output layer's is drawn
    /// independently of the errors of the layers below, which changes no
    /// factor's expectation. Ignored with [`FactorUpdate::RankUpdate`], the
    /// exact output factor, or a Gram-form output side (those use the errors
    /// themselves). Default true: at `paper`/1000 (2 threads) the step's
    /// sampling phase fell from 6.8-7.9 ms to 5.1-5.8 ms and the step from
    /// 2.19-2.39 to 2.05-2.20 SGD steps (`natgrad bench step --quick`), with
    /// the same test loss (seeds 1-3, 400 steps at the race's settings, 150
    /// at b = 1000). False gives the same factors as
    /// the Gram form sample for sample (used to check the Gram identities).
    pub wishart_output_factor: bool,
    /// How the damped inverses are applied: triangular solves with the
    /// Cholesky factors, or a GEMM with the explicit inverse formed at each
    /// refresh. Default `Auto` (explicit where its cost model says it is
    /// cheaper; the update is the same in exact arithmetic, and in f32 both
    /// lose about `n u kappa` relative to the largest entries).
    pub inverse: InverseApplication,
    /// L2 penalty `(lambda / 2) ||theta||^2` on every parameter (biases
    /// included, as in [`crate::optim::Sgd`] and [`crate::optim::Adam`]):
    /// `lambda theta` joins the gradient before it is preconditioned, and the
    /// Levenberg-Marquardt check counts the penalty's change in the actual
    /// loss change. Default 0 (the paper has none). The penalty's gradient is
    /// not of the minibatch's low rank, so with `lambda > 0` every layer is
    /// preconditioned in the full form (`Auto`), and the low-rank and Gram
    /// forms are refused.
    pub weight_decay: f32,
    /// Split the damping between the factors in proportion to their scales
    /// (K-FAC's pi correction: `A + pi sqrt(g) I`, `G + sqrt(g)/pi I`). Default
    /// false: the paper splits it evenly.
    pub pi_correction: bool,
    /// Seed of the sampler. Default 0.
    pub seed: u64,
}

impl Default for NaturalGradientConfig {
    fn default() -> Self {
        NaturalGradientConfig {
            learning_rate: 1.0,
            scale_by_depth: true,
            factor_decay: 0.0,
            damping: 1.0,
            damping_bounds: (1e-6, 1e6),
            adaptation: DampingAdaptation::LevenbergMarquardt { interval: 1 },
            damping_check_fraction: 1.0,
            refresh_interval: 1,
            factor_update: FactorUpdate::Refactor,
            statistics_interval: 1,
            samples: 1,
            preconditioning: Preconditioning::Auto,
            exact_output_factor: false,
            wishart_output_factor: true,
            inverse: InverseApplication::Auto,
            weight_decay: 0.0,
            pi_correction: false,
            seed: 0,
        }
    }
}

/// Attempts at factorising with damping multiplied by 10 each time before a
/// step gives up with an error.
const MAX_DAMPING_RETRIES: usize = 6;

/// Per-layer state: factors, their Cholesky factors, the update, and scratch.
struct LayerState {
    n_in1: usize,
    n_out: usize,
    a_factor: Vec<f32>,
    g_factor: Vec<f32>,
    a_chol: Vec<f32>,
    g_chol: Vec<f32>,
    delta: Vec<f32>,
    /// Copy of the columns fed to a rank update (the update clobbers them).
    update_cols: Vec<f32>,
    update_alpha: Vec<f32>,
    /// The output layer of a Gaussian likelihood: room for the Bartlett
    /// factor of its Wishart-distributed `G` sample, `n_out x min(n_out,
    /// max_batch)` (empty on every other layer; see the sampling step).
    wishart: Vec<f32>,
    /// `<grad_i, dW_i>` of the last step.
    grad_dot_delta: f64,
    /// `<W_i, dW_i> - |dW_i|^2 / 2` after the last step (with a penalty).
    penalty_dot: f64,
    /// How this step computes the layer's update.
    plan: LayerPlan,
    /// Whether `G` is diagonal (the output layer with
    /// [`NaturalGradientConfig::exact_output_factor`]): `g_factor` and `g_chol`
    /// then hold it and its Cholesky factor on their diagonals, zero elsewhere.
    g_diag: bool,
    /// Damping added to the backward side at the last factorisation.
    shift_g: f32,
    /// Whether `a_chol` / `g_chol` hold the explicit damped inverse (full
    /// symmetric) instead of the Cholesky factor, on sides that are not Gram
    /// or diagonal (see [`InverseApplication`]; fixed at construction).
    a_inv: bool,
    g_inv: bool,
    /// Products with the explicit inverses land here: `n_out x b` then
    /// `n_in1 x b` in the low-rank form, `n_out x n_in1` in the full form
    /// (empty when neither side is explicit).
    inv_tmp: Vec<f32>,
    /// Gram-form buffers (empty unless the configuration allows it): the
    /// Cholesky factor of `Abar^T Abar / b + d I` and of `Es^T Es / b + d I`,
    /// and `Es^T E` (each up to `min(max_batch, n)^2`).
    gram_a: Vec<f32>,
    gram_g: Vec<f32>,
    gram_m: Vec<f32>,
    scratch: MemBuffer,
}

/// How one layer's update is computed at the current minibatch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LayerPlan {
    /// The low-rank form (solves on `E` and `Abar`, then one GEMM) rather than
    /// solves on the full gradient.
    low_rank: bool,
    /// The forward side through the Gram matrix of `Abar` (push-through).
    a_gram: bool,
    /// The backward side through the Gram matrix of the sampled errors (Woodbury).
    g_gram: bool,
}

impl LayerPlan {
    /// The cheapest form allowed by `mode` (flop counts of PAPER.md section 3
    /// and [`Preconditioning::Gram`]); `gram_ok` says whether the configuration
    /// has per-minibatch factors.
    /// `g_diag`: the backward factor is diagonal (a row scaling). `penalty`:
    /// an L2 penalty joins the gradient; its term `wd W` is not of the
    /// minibatch's low rank, so only the full form preconditions it (`Auto`
    /// then takes the full form; `LowRank` and `Gram` are refused at
    /// construction).
    fn choose(
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
fn layers_per_task(par: Par) -> usize {
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

/// Wall-clock seconds of each phase of the last natural-gradient step (see
/// [`NaturalGradient::last_phase_secs`]). Reading the clock costs a few tens
/// of nanoseconds per phase; nothing is allocated.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PhaseSecs {
    /// Forward pass, loss and backward pass with the weight gradients (an SGD
    /// step's work).
    pub loss_and_gradient: f64,
    /// Backward pass from sampled targets, and the backward factors.
    pub sampled_backward: f64,
    /// Forward factors and the Cholesky factorisations (of the factors or of
    /// the Gram matrices).
    pub factorise: f64,
    /// The preconditioned update: solves and GEMMs.
    pub precondition: f64,
    /// Applying the update and the Levenberg-Marquardt check (one forward pass).
    pub apply_and_damping: f64,
}

/// The online natural-gradient optimizer.
///
/// ```
/// use natgrad::mlp::{Init, Likelihood, Mlp};
/// use natgrad::optim::{NaturalGradient, NaturalGradientConfig, Optimizer};
/// use natgrad::workspace::Workspace;
/// use natgrad::kernels::{Activation, MatRef, Par};
///
/// // A small autoencoder on random data.
/// let mut net = Mlp::new(&[8, 4, 8], &[Activation::Tanh, Activation::Identity],
///                        Likelihood::Gaussian, Init::GlorotUniform, 1).unwrap();
/// let mut ws = Workspace::new(&net, 32, Par::Seq).unwrap();
/// let mut opt = NaturalGradient::new(&net, 32, NaturalGradientConfig::default()).unwrap();
/// let data: Vec<f32> = (0..8 * 32).map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0).collect();
/// let x = MatRef::from_column_major_slice(&data, 8, 32);
/// let first = opt.step(&mut net, &mut ws, x, x).unwrap().loss;
/// let mut last = first;
/// for _ in 0..20 {
///     last = opt.step(&mut net, &mut ws, x, x).unwrap().loss;
/// }
/// assert!(last < first);
/// ```
pub struct NaturalGradient {
    config: NaturalGradientConfig,
    sizes: Vec<usize>,
    max_batch: usize,
    layers: Vec<LayerState>,
    /// Errors back-propagated from sampled targets, one per layer (`n_i x b`).
    sampled_errs: Vec<Vec<f32>>,
    /// The Cholesky factor of the output layer's `W^T W` (see
    /// [`NaturalGradientConfig::wishart_output_factor`]; empty when unused).
    out_factor: Vec<f32>,
    /// The diagonal of the output layer's exact backward factor this step.
    fisher_diag: Vec<f32>,
    /// Scratch for the sampled backward pass.
    scratch: MemBuffer,
    rng: Rng,
    damping: f32,
    steps: u64,
    /// Whether the Cholesky factors are stale (damping changed, or never built).
    stale: bool,
    phases: PhaseSecs,
}

impl NaturalGradient {
    /// An optimizer for `net` at minibatches of up to `max_batch` columns.
    /// Allocates every buffer a step will need.
    pub fn new(
        net: &Mlp,
        max_batch: usize,
        config: NaturalGradientConfig,
    ) -> Result<NaturalGradient, Error> {
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
        super::check_buffer_sizes(net, max_batch)?;
        let gram_ok = gram_applies(&config);
        if config.preconditioning == Preconditioning::Gram && !gram_ok {
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
        let out_diag = config.exact_output_factor && net.likelihood().has_diagonal_output_fisher();
        let num_layers = net.num_layers();
        let gaussian = net.likelihood() == crate::mlp::Likelihood::Gaussian;
        // Scratch sized for the most demanding parallelism the kernels may run at.
        let par_sizing = Par::rayon(0);
        let layers = net
            .layers()
            .iter()
            .enumerate()
            .map(|(index, l)| {
                let (n_in1, n_out) = (l.n_in + 1, l.n_out);
                let nmax = n_in1.max(n_out);
                let g_diag = out_diag && index + 1 == num_layers;
                let plan = LayerPlan::choose(
                    n_out,
                    n_in1,
                    max_batch,
                    config.preconditioning,
                    gram_ok,
                    g_diag,
                    config.weight_decay > 0.0,
                );
                let (a_inv, g_inv) = explicit_sides(&config, n_out, n_in1, max_batch, plan, g_diag);
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
                LayerState {
                    n_in1,
                    n_out,
                    a_factor: vec![0.0; n_in1 * n_in1],
                    g_factor: vec![0.0; n_out * n_out],
                    a_chol: vec![0.0; n_in1 * n_in1],
                    g_chol: vec![0.0; n_out * n_out],
                    delta: vec![0.0; n_out * n_in1],
                    update_cols: if rank {
                        vec![0.0; nmax * max_batch]
                    } else {
                        Vec::new()
                    },
                    update_alpha: if rank {
                        vec![0.0; max_batch]
                    } else {
                        Vec::new()
                    },
                    wishart: if config.wishart_output_factor && gaussian && index + 1 == num_layers
                    {
                        vec![0.0; n_out * n_out.min(max_batch)]
                    } else {
                        Vec::new()
                    },
                    grad_dot_delta: 0.0,
                    penalty_dot: 0.0,
                    plan,
                    g_diag,
                    shift_g: 1.0,
                    a_inv,
                    g_inv,
                    inv_tmp: if a_inv || g_inv {
                        vec![0.0; (n_out * n_in1).max((n_out + n_in1) * max_batch)]
                    } else {
                        Vec::new()
                    },
                    gram_a: vec![0.0; ga * ga],
                    gram_g: vec![0.0; gg * gg],
                    gram_m: vec![0.0; gg * gg],
                    scratch: MemBuffer::new(req),
                }
            })
            .collect();
        let sampled_errs = net
            .layers()
            .iter()
            .map(|l| vec![0.0; l.n_out * max_batch])
            .collect();
        let fisher_diag = vec![0.0; net.output_size()];
        let scratch = MemBuffer::new(StackReq::any_of(
            &net.layers()
                .iter()
                .map(|l| gemm_scratch(l.n_in, max_batch, l.n_out, par_sizing))
                .chain([net.penultimate_scratch(max_batch, par_sizing)])
                .collect::<Vec<_>>(),
        ));
        let last = net.layers().last().expect("a network has layers");
        let out_factor = if config.wishart_output_factor
            && gaussian
            && num_layers >= 2
            && last.n_out >= last.n_in
        {
            vec![0.0; last.n_in * last.n_in]
        } else {
            Vec::new()
        };
        Ok(NaturalGradient {
            config,
            sizes: net.sizes(),
            max_batch,
            layers,
            sampled_errs,
            out_factor,
            fisher_diag,
            scratch,
            rng: Rng::new(config.seed),
            damping: config.damping,
            steps: 0,
            stale: true,
            phases: PhaseSecs::default(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &NaturalGradientConfig {
        &self.config
    }
    /// The current damping `g`.
    pub fn damping(&self) -> f32 {
        self.damping
    }
    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }
    /// Where the time of the last successful step went, phase by phase.
    pub fn last_phase_secs(&self) -> PhaseSecs {
        self.phases
    }
    /// The largest minibatch this optimizer takes.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }
    /// The forward factor `A_i` of layer `i` (0-based), `(n_{i-1}+1)^2`,
    /// column-major; only its lower triangle is meaningful.
    pub fn forward_factor(&self, i: usize) -> MatRef<'_, f32> {
        let s = &self.layers[i];
        MatRef::from_column_major_slice(&s.a_factor, s.n_in1, s.n_in1)
    }
    /// The backward factor `G_i` of layer `i` (0-based), lower triangle meaningful.
    pub fn backward_factor(&self, i: usize) -> MatRef<'_, f32> {
        let s = &self.layers[i];
        MatRef::from_column_major_slice(&s.g_factor, s.n_out, s.n_out)
    }
    /// The last update `dW_i` of layer `i` (0-based), `n_i x (n_{i-1}+1)`.
    pub fn last_update(&self, i: usize) -> MatRef<'_, f32> {
        let s = &self.layers[i];
        MatRef::from_column_major_slice(&s.delta, s.n_out, s.n_in1)
    }

    /// Every piece of state a checkpoint must keep, as flat f32 buffers in a fixed
    /// order (per layer: A, G, chol A, chol G), plus the scalars.
    pub fn state_buffers(&self) -> impl Iterator<Item = &[f32]> {
        self.layers.iter().flat_map(|s| {
            [
                &s.a_factor[..],
                &s.g_factor[..],
                &s.a_chol[..],
                &s.g_chol[..],
            ]
        })
    }
    /// Mutable counterpart of [`NaturalGradient::state_buffers`], same order.
    pub fn state_buffers_mut(&mut self) -> impl Iterator<Item = &mut [f32]> {
        self.layers.iter_mut().flat_map(|s| {
            [
                &mut s.a_factor[..],
                &mut s.g_factor[..],
                &mut s.a_chol[..],
                &mut s.g_chol[..],
            ]
        })
    }
    /// `(rng state, damping, steps, stale)`.
    pub fn scalar_state(&self) -> ([u64; 4], f32, u64, bool) {
        (self.rng.state(), self.damping, self.steps, self.stale)
    }
    /// Restores what [`NaturalGradient::scalar_state`] returned.
    pub fn set_scalar_state(
        &mut self,
        rng: [u64; 4],
        damping: f32,
        steps: u64,
        stale: bool,
    ) -> Result<(), Error> {
        let (lo, hi) = self.config.damping_bounds;
        check_range("damping", damping, lo, hi, false)?;
        self.rng = Rng::from_state(rng);
        self.damping = damping;
        self.steps = steps;
        self.stale = stale;
        Ok(())
    }

    fn step_scale(&self, num_layers: usize) -> f32 {
        if self.config.scale_by_depth {
            self.config.learning_rate / num_layers as f32
        } else {
            self.config.learning_rate
        }
    }
}

/// Whether the configuration has per-minibatch factors, so that the Gram form
/// of [`Preconditioning::Gram`] computes the same update.
fn gram_applies(config: &NaturalGradientConfig) -> bool {
    config.factor_decay == 0.0
        && config.refresh_interval == 1
        && config.statistics_interval == 1
        && config.samples == 1
        && config.factor_update == FactorUpdate::Refactor
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
            let pays = |n: usize, m: usize| m as f64 > 2.0 * n as f64 / (3.0 * t);
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
fn scale_rows_by_inverse_square(diag_chol: &[f32], mut m: natgrad_kernels::MatMut<'_, f32>) {
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
struct GSide<'a> {
    /// `g_chol` holds the explicit inverse.
    inv: bool,
    /// `g_chol` holds a diagonal Cholesky factor (a row scaling).
    diag: bool,
    /// The layer's `g_chol`, `n_out x n_out`.
    g_chol: &'a [f32],
}

impl GSide<'_> {
    fn apply(
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
    fn factorise(
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
    fn rank_update(
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

impl Optimizer for NaturalGradient {
    fn name(&self) -> &'static str {
        "ng"
    }

    fn save_state(&self) -> OptimizerState {
        let buffers = self.state_buffers().map(<[f32]>::to_vec).collect();
        let rng = self.rng.state();
        let scalars = vec![
            rng[0],
            rng[1],
            rng[2],
            rng[3],
            self.damping.to_bits() as u64,
            self.steps,
            self.stale as u64,
        ];
        OptimizerState {
            name: "ng".into(),
            buffers,
            scalars,
            settings: super::settings_of(&self.config, Some(self.max_batch)),
        }
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<(), Error> {
        state.check_against(&self.save_state())?;
        let s = &state.scalars;
        let damping = f32::from_bits(s[4] as u32);
        if s[4] > u32::MAX as u64 || s[6] > 1 {
            return Err(Error::Shape(
                "the saved natural-gradient scalars are out of range".into(),
            ));
        }
        self.set_scalar_state([s[0], s[1], s[2], s[3]], damping, s[5], s[6] == 1)?;
        for (dst, src) in self.state_buffers_mut().zip(&state.buffers) {
            dst.copy_from_slice(src);
        }
        Ok(())
    }

    fn step(
        &mut self,
        net: &mut Mlp,
        ws: &mut Workspace,
        x: MatRef<'_, f32>,
        y: MatRef<'_, f32>,
    ) -> Result<StepStats, Error> {
        check_net_shapes(net, &self.sizes)?;
        if x.ncols() > self.max_batch {
            return Err(Error::Shape(format!(
                "minibatch of {} columns exceeds the optimizer's maximum of {}",
                x.ncols(),
                self.max_batch
            )));
        }
        let clock = Instant::now();
        let mut phases = PhaseSecs::default();
        let lap = |slot: &mut f64| *slot = clock.elapsed().as_secs_f64();
        // 1. Loss and gradient on the data targets. Everything that can fail on
        //    the caller's input fails here, before any state changes.
        let loss = net.loss_and_gradient(ws, x, y)?;
        check_grads_finite(&ws.grads)?;
        let wd = self.config.weight_decay;
        let (b, par) = (ws.batch, ws.par);
        if wd > 0.0 {
            ws.grads
                .par_iter_mut()
                .zip(net.layers().par_iter())
                .with_min_len(layers_per_task(par))
                .for_each(|(g, l)| g.iter_mut().zip(&l.params).for_each(|(g, &w)| *g += wd * w));
        }
        let num_layers = net.num_layers();
        let k = self.steps + 1;
        // Statistics steps: every `statistics_interval`-th, the first included;
        // `updates` counts them up to this one.
        let t_stats = self.config.statistics_interval as u64;
        let stats_step = (k - 1).is_multiple_of(t_stats);
        let updates = (k - 1) / t_stats + 1;
        let rho = if updates == 1 {
            0.0
        } else {
            let per_update = self.config.factor_decay.powi(t_stats as i32);
            per_update.min(1.0 - 1.0 / updates as f32)
        };
        let refresh = self.stale || (k - 1).is_multiple_of(self.config.refresh_interval as u64);
        let rank_update =
            stats_step && !refresh && self.config.factor_update == FactorUpdate::RankUpdate;
        let gram_ok = gram_applies(&self.config);
        let out_diag =
            self.config.exact_output_factor && net.likelihood().has_diagonal_output_fisher();
        for (l, st) in self.layers.iter_mut().enumerate() {
            st.g_diag = out_diag && l + 1 == num_layers;
            st.plan = LayerPlan::choose(
                st.n_out,
                st.n_in1,
                b,
                self.config.preconditioning,
                gram_ok,
                st.g_diag,
                self.config.weight_decay > 0.0,
            );
        }

        lap(&mut phases.loss_and_gradient);
        // 2. Backward factors from errors of targets sampled from the model
        //    (the output layer's exactly, where it is diagonal).
        if stats_step && out_diag {
            net.output_fisher_diagonal(ws, &mut self.fisher_diag)?;
            let st = self.layers.last_mut().expect("a network has layers");
            let n = st.n_out;
            for (i, &d) in self.fisher_diag.iter().enumerate() {
                let g = &mut st.g_factor[i * n + i];
                *g = rho * *g + (1.0 - rho) * d;
                if rank_update {
                    // The diagonal counterpart of the rank update below.
                    let l = &mut st.g_chol[i * n + i];
                    *l = (rho * *l * *l + (1.0 - rho) * d).sqrt();
                }
            }
        }
        let samples = if stats_step { self.config.samples } else { 0 };
        // The Gaussian output layer's `G` drawn as a Wishart matrix (see
        // `wishart_output_factor`); then nothing needs the output errors
        // themselves, and the layer below draws its error directly when
        // `W_L^T W_L` factorises.
        let wishart = self.config.wishart_output_factor
            && self.layers.last().is_some_and(|st| {
                !st.wishart.is_empty() && !rank_update && !st.plan.g_gram && !st.g_diag
            });
        let direct = wishart
            && samples > 0
            && !self.out_factor.is_empty()
            && {
                // Flops: W^T W, its Cholesky and C z against the GEMM W^T e_L.
                let last = self.layers.last().expect("a network has layers");
                let (n, m) = ((last.n_in1 - 1) as f64, last.n_out as f64);
                let bf = b as f64;
                n * m + n * n / 3.0 + n * bf < 2.0 * m * bf
            }
            && {
                let stack = MemStack::new(&mut self.scratch);
                net.output_weight_factor(&mut self.out_factor, par, stack)?
            };
        for s in 0..samples {
            {
                let last = net.num_layers() - 1;
                let rng = &mut self.rng;
                if direct {
                    let stack = MemStack::new(&mut self.scratch);
                    let errs = &mut self.sampled_errs[last - 1];
                    net.sample_penultimate_error(ws, &self.out_factor, errs, rng, stack)?;
                    let stack = MemStack::new(&mut self.scratch);
                    net.backward_from(
                        last - 1,
                        &ws.acts,
                        &mut self.sampled_errs,
                        None,
                        b,
                        par,
                        stack,
                    )?;
                } else {
                    net.sample_output_error(ws, &mut self.sampled_errs[last], rng)?;
                    let stack = MemStack::new(&mut self.scratch);
                    net.backward(&ws.acts, &mut self.sampled_errs, None, b, par, stack)?;
                }
            }
            let beta = if s == 0 { rho } else { 1.0 };
            let alpha = (1.0 - rho) / (b * samples) as f32;
            // Drawn only when used, so that other likelihoods keep their stream.
            let wishart_seed = if wishart { self.rng.next_u64() } else { 0 };
            self.layers
                .par_iter_mut()
                .zip(self.sampled_errs.par_iter())
                .with_min_len(layers_per_task(par))
                .try_for_each(|(st, e)| -> Result<(), Error> {
                    if st.plan.g_gram || st.g_diag {
                        // Formed from the sampled errors at factorisation, or exact.
                        return Ok(());
                    }
                    let stack = MemStack::new(&mut st.scratch);
                    if wishart && !st.wishart.is_empty() {
                        // A Gaussian output layer's sampled errors are standard
                        // normal vectors, independent of the network, so
                        // `E E^T` is a `Wishart(b, I)` draw: take it directly
                        // by Bartlett's decomposition, `A A^T` with `A` lower
                        // trapezoidal `n x min(n, b)`, in about `n^3 / 3`
                        // flops instead of the `n^2 b` of a SYRK on `E`. The
                        // backward pass is driven by sampled output errors or
                        // by the direct draw of the layer below (`direct`),
                        // independent of this draw, which leaves every
                        // factor's expectation and distribution as they were.
                        let n = st.n_out;
                        let mut rng = Rng::new(wishart_seed);
                        rng.fill_bartlett(&mut st.wishart, n, n, b)?;
                        let l = view(&st.wishart, n, n.min(b), n);
                        let g = natgrad_kernels::MatMut::from_column_major_slice_mut(
                            &mut st.g_factor,
                            n,
                            n,
                        );
                        syrk_lower_trapezoidal(g, beta, l, alpha, par, stack)?;
                        return Ok(());
                    }
                    let e = view(e, st.n_out, b, st.n_out);
                    if rank_update {
                        let (cols, alphas) = (&mut st.update_cols, &mut st.update_alpha);
                        let b_rho = if s == 0 { rho } else { 1.0 };
                        LayerState::rank_update(
                            &mut st.g_chol,
                            st.n_out,
                            e,
                            b_rho,
                            alpha,
                            cols,
                            alphas,
                            par,
                            stack,
                        )?;
                    }
                    let g = natgrad_kernels::MatMut::from_column_major_slice_mut(
                        &mut st.g_factor,
                        st.n_out,
                        st.n_out,
                    );
                    syrk_lower(g, beta, e, alpha, par, stack)?;
                    Ok(())
                })?;
        }

        lap(&mut phases.sampled_backward);
        // 3. Forward factors, factorisation, preconditioned update, per layer in parallel.
        let eta = self.step_scale(num_layers);
        let pi_correction = self.config.pi_correction;
        let alpha_a = (1.0 - rho) / b as f32;
        let mut damping = self.damping;
        let mut first = true;
        let (lo, hi) = self.config.damping_bounds;
        for attempt in 0..=MAX_DAMPING_RETRIES {
            let shift = damping.sqrt();
            let result = self
                .layers
                .par_iter_mut()
                .zip(ws.acts[..num_layers].par_iter())
                .zip(self.sampled_errs.par_iter())
                .with_min_len(layers_per_task(par))
                .try_for_each(|((st, a), es)| -> Result<(), natgrad_kernels::Error> {
                    let abar = view(a, st.n_in1, b, st.n_in1);
                    if first && stats_step && !st.plan.a_gram {
                        let stack = MemStack::new(&mut st.scratch);
                        if rank_update {
                            let (cols, alphas) = (&mut st.update_cols, &mut st.update_alpha);
                            LayerState::rank_update(
                                &mut st.a_chol,
                                st.n_in1,
                                abar,
                                rho,
                                alpha_a,
                                cols,
                                alphas,
                                par,
                                stack,
                            )?;
                        }
                        let f = natgrad_kernels::MatMut::from_column_major_slice_mut(
                            &mut st.a_factor,
                            st.n_in1,
                            st.n_in1,
                        );
                        syrk_lower(f, rho, abar, alpha_a, par, stack)?;
                    }
                    if refresh || attempt > 0 {
                        let es = view(es, st.n_out, b, st.n_out);
                        st.factorise(abar, es, shift, pi_correction, par)?;
                    }
                    Ok(())
                });
            first = false;
            match result {
                Ok(()) => break,
                Err(natgrad_kernels::Error::NotPositiveDefinite { .. })
                    if attempt < MAX_DAMPING_RETRIES && damping < hi =>
                {
                    damping = (damping * 10.0).min(hi);
                    self.stale = true;
                }
                Err(e @ natgrad_kernels::Error::NotPositiveDefinite { .. }) => {
                    self.damping = damping;
                    return Err(Error::NotPositiveDefinite(format!(
                        "a curvature factor would not factorise even at damping {damping:e} ({e}); \
                         the step was not taken"
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.damping = damping.clamp(lo, hi);
        self.stale = false;

        lap(&mut phases.factorise);
        // 4. Preconditioned update dW_i into each layer's `delta`.
        let acts = &mut ws.acts[..num_layers];
        self.layers
            .par_iter_mut()
            .zip(acts.par_iter_mut())
            .zip(ws.errs.par_iter_mut())
            .zip(ws.grads.par_iter())
            .zip(self.sampled_errs.par_iter())
            .with_min_len(layers_per_task(par))
            .try_for_each(
                |((((st, a), e), g), es)| -> Result<(), natgrad_kernels::Error> {
                    let stack = MemStack::new(&mut st.scratch);
                    let (n_out, n_in1, plan) = (st.n_out, st.n_in1, st.plan);
                    // The Cholesky factors, or the explicit inverses on `a_inv`/`g_inv` sides.
                    let lg = MatRef::from_column_major_slice(&st.g_chol, n_out, n_out);
                    let la = MatRef::from_column_major_slice(&st.a_chol, n_in1, n_in1);
                    let mut delta = view_mut(&mut st.delta, n_out, n_in1, n_out);
                    if plan.low_rank {
                        let split = if st.inv_tmp.is_empty() { 0 } else { n_out * b };
                        let (tmp_e, tmp_a) = st.inv_tmp.split_at_mut(split);
                        // (G + dI)^-1 E and (A + dI)^-1 Abar, in place where solved
                        // (neither is needed again), into `inv_tmp` where explicit.
                        let mut ev = view_mut(e, n_out, b, n_out);
                        let g_scale = if st.g_diag {
                            scale_rows_by_inverse_square(&st.g_chol, ev.rb_mut());
                            1.0
                        } else if plan.g_gram {
                            // Woodbury: (E - Es K^-1 (Es^T E) / b) / d, K = Es^T Es / b + d I.
                            let es = view(es, n_out, b, n_out);
                            let lk = MatRef::from_column_major_slice(&st.gram_g[..b * b], b, b);
                            let mut m = view_mut(&mut st.gram_m, b, b, b);
                            gemm(m.rb_mut(), 0.0, es.transpose(), ev.rb(), 1.0, par, stack)?;
                            solve_llt_left_in_place(lk, m.rb_mut(), par, stack)?;
                            gemm(ev.rb_mut(), 1.0, es, m.rb(), -1.0 / b as f32, par, stack)?;
                            1.0 / st.shift_g
                        } else if st.g_inv {
                            let mut out = view_mut(tmp_e, n_out, b, n_out);
                            gemm(out.rb_mut(), 0.0, lg, ev.rb(), 1.0, par, stack)?;
                            ev = out;
                            1.0
                        } else {
                            solve_llt_left_in_place(lg, ev.rb_mut(), par, stack)?;
                            1.0
                        };
                        let mut av = view_mut(a, n_in1, b, n_in1);
                        if plan.a_gram {
                            // Push-through: Abar (Abar^T Abar / b + d I)^-1.
                            let lk = MatRef::from_column_major_slice(&st.gram_a[..b * b], b, b);
                            solve_llt_right_in_place(lk, av.rb_mut(), par, stack)?;
                        } else if st.a_inv {
                            let mut out = view_mut(tmp_a, n_in1, b, n_in1);
                            gemm(out.rb_mut(), 0.0, la, av.rb(), 1.0, par, stack)?;
                            av = out;
                        } else {
                            solve_llt_left_in_place(la, av.rb_mut(), par, stack)?;
                        }
                        gemm(
                            delta.rb_mut(),
                            0.0,
                            ev.rb(),
                            av.rb().transpose(),
                            -eta * g_scale / b as f32,
                            par,
                            stack,
                        )?;
                    } else {
                        // H = (G + dI)^-1 grad, into `inv_tmp` when the A side then
                        // multiplies by its explicit inverse, else into `delta`.
                        let gm = MatRef::from_column_major_slice(g, n_out, n_in1);
                        let g_side = GSide {
                            inv: st.g_inv,
                            diag: st.g_diag,
                            g_chol: &st.g_chol,
                        };
                        if st.a_inv {
                            let mut h = view_mut(&mut st.inv_tmp, n_out, n_in1, n_out);
                            g_side.apply(gm, h.rb_mut(), par, stack)?;
                            gemm(delta.rb_mut(), 0.0, h.rb(), la, -eta, par, stack)?;
                        } else {
                            g_side.apply(gm, delta.rb_mut(), par, stack)?;
                            solve_llt_right_in_place(la, delta.rb_mut(), par, stack)?;
                            st.delta.iter_mut().for_each(|v| *v *= -eta);
                        }
                    }
                    st.grad_dot_delta = dot_f64(&st.delta, g)?;
                    Ok(())
                },
            )?;
        // Summed in layer order, not by rayon's reduction tree, so that the LM
        // decision (and with it a resumed run) is bit-for-bit reproducible.
        // It also checks every entry of every update: a NaN or infinite
        // `d` makes its term `d g` NaN or infinite (`inf * 0` is NaN), and
        // with it the sum; f32 products summed in f64 cannot overflow.
        let grad_dot_delta: f64 = self.layers.iter().map(|st| st.grad_dot_delta).sum();
        if !grad_dot_delta.is_finite() {
            return Err(Error::NonFinite(
                "the natural-gradient update is not finite (curvature too ill-conditioned for the damping); \
                 the step was not taken"
                    .into(),
            ));
        }

        lap(&mut phases.precondition);
        // 5. Apply, layers in parallel, and on steps with a Levenberg-Marquardt
        //    check each layer's share of the penalty's change `wd (w.d - d.d/2)`
        //    (see below).
        let lm_check = matches!(
            self.config.adaptation,
            DampingAdaptation::LevenbergMarquardt { interval } if k.is_multiple_of(interval as u64)
        );
        net.layers_mut()
            .par_iter_mut()
            .zip(self.layers.par_iter_mut())
            .with_min_len(layers_per_task(par))
            .try_for_each(|(layer, st)| -> Result<(), natgrad_kernels::Error> {
                st.penalty_dot = if wd > 0.0 && lm_check {
                    add_and_penalty_change(&mut layer.params, &st.delta)?
                } else {
                    layer
                        .params
                        .iter_mut()
                        .zip(&st.delta)
                        .for_each(|(w, d)| *w += d);
                    0.0
                };
                Ok(())
            })?;
        self.steps = k;

        // 6. Levenberg-Marquardt adaptation of the damping.
        if lm_check {
            // The local model M(d) = g.d + 1/2 d^T (F + dI) d, with d = -eta P g and
            // P = (F + dI)^{-1} the damped Kronecker preconditioner, is
            // M = g.d (1 - eta / 2): no extra curvature product is needed.
            let predicted = grad_dot_delta * (1.0 - eta as f64 / 2.0);
            let old = self.damping;
            let c = (self.config.damping_check_fraction as f64 * b as f64).ceil() as usize;
            let (loss_before, x, y) = if c >= b {
                (loss, x, y)
            } else {
                // The output of this step's forward pass is still in the
                // workspace: the loss before the step on the first c columns.
                let (xs, ys) = (x.subcols(0, c), y.subcols(0, c));
                ws.set_batch(c)?;
                (net.loss(ws, ys, false)?, xs, ys)
            };
            let after = net.forward(ws, x).and_then(|_| net.loss(ws, y, false));
            // The penalty's change, (wd/2)(||w0 + d||^2 - ||w0||^2) = wd (w0.d + d.d/2)
            // = wd (w.d - d.d/2) with w = w0 + d the weights after the step.
            // Summed in layer order, as `grad_dot_delta`.
            let penalty_change =
                wd as f64 * self.layers.iter().map(|st| st.penalty_dot).sum::<f64>();
            let take_back = |net: &mut Mlp, layers: &[LayerState]| {
                for (w, st) in net.params_mut().zip(layers) {
                    w.iter_mut().zip(&st.delta).for_each(|(w, d)| *w -= d);
                }
            };
            match after {
                Ok(new_loss) if new_loss - loss_before > loss_before.abs() => {
                    // The step more than doubled the checked loss: far outside
                    // the region where the model holds (stale factors and a
                    // small damping can do this). Take it back and damp
                    // harder, as for a non-finite loss.
                    take_back(net, &self.layers);
                    self.damping = (self.damping * 10.0).min(hi);
                }
                Ok(new_loss) if predicted < 0.0 => {
                    let ratio = (new_loss - loss_before + penalty_change) / predicted;
                    if ratio < 0.25 {
                        self.damping = (self.damping * 1.5).min(hi);
                    } else if ratio > 0.75 {
                        self.damping = (self.damping * (2.0 / 3.0)).max(lo);
                    }
                }
                Ok(_) => self.damping = (self.damping * 1.5).min(hi),
                Err(_) => {
                    // The step made the loss non-finite: take it back and damp harder.
                    take_back(net, &self.layers);
                    self.damping = (self.damping * 10.0).min(hi);
                }
            }
            // A larger damping (the model over-promised) takes effect at once;
            // a smaller one waits for the next scheduled refresh, so that the LM
            // rule does not force a refactorisation at nearly every step and
            // defeat `refresh_interval`.
            if self.damping > old {
                self.stale = true;
            }
        }
        lap(&mut phases.apply_and_damping);
        // Cumulative clock readings to per-phase durations.
        phases.apply_and_damping -= phases.precondition;
        phases.precondition -= phases.factorise;
        phases.factorise -= phases.sampled_backward;
        phases.sampled_backward -= phases.loss_and_gradient;
        self.phases = phases;
        Ok(StepStats { loss })
    }
}
