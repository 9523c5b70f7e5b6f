//! Settings of the natural gradient, shared by [`NaturalGradient`](super::NaturalGradient)
//! and [`KroneckerPreconditioner`](super::KroneckerPreconditioner).

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
    /// [`NaturalGradient::new`](super::NaturalGradient::new) refuses it otherwise, and `Auto` then never
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
    /// `2 n^3 / 3` flops per refresh, at about 0.6 of the FMA peak on this
    /// crate's kernels; applying it replaces the solves' `2 n^2 m` flops
    /// (at about 0.7 of the peak) by a GEMM's (at about 0.9), `m` the
    /// right-hand sides (the minibatch in the low-rank form, the other side's
    /// size in the full form). So: explicit when `m > 2 n / T`, `T` the
    /// refresh interval; with factors refreshed at every step only where one
    /// side is less than half the other. Default.
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

/// Settings of [`NaturalGradient`](super::NaturalGradient) and
/// [`KroneckerPreconditioner`](super::KroneckerPreconditioner). The defaults reproduce the paper's
/// configuration (docs/math.md section 2.5) except where noted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NaturalGradientConfig {
    /// Step size `eta`. Default 1.0 (the paper's value: with exact curvature a
    /// unit natural-gradient step is the Newton-like step).
    pub learning_rate: f32,
    /// Divide the step by the number of layers `L` (the exact deep-linear
    /// result, docs/math.md section 1.2). Default true.
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
    /// the race's settings in `docs/race.md`.
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
    /// [`fisher::output_fisher_diagonal`](crate::optim::fisher::output_fisher_diagonal)): `I` for Gaussian, the minibatch mean
    /// of `diag(p (1 - p))` for Bernoulli (**beyond** the paper, which
    /// estimates every `G_i` from the sampled errors). The output layer's `G`
    /// side then costs a row scaling instead of an `n_L x n_L` SYRK, Cholesky
    /// and solve. The errors propagated to the layers below are still sampled;
    /// Categorical outputs (`diag(p) - p p^T`) always use the sampled
    /// estimate. Default false (the paper's): on `paper` (Gaussian) the exact
    /// factor validated worse than the sampled one despite taking more steps
    /// (figures in `docs/performance.md`); the noise of the sampled estimate (a rank-`b` matrix when
    /// `b < n_L`) lengthens the output layer's steps. On `deep` (Bernoulli) it
    /// was better and the race uses it (see `docs/race.md`).
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
    /// themselves). Default true: fewer flops for the same factor
    /// distributions (measured in `docs/performance.md`). False gives the same factors as
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
