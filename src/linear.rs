//! The exact natural gradient of deep linear networks (docs/math.md section 1;
//! Bernacchia, Lengyel & Hennequin, NeurIPS 2018), made executable and checked
//! against a brute-force Fisher matrix.
//!
//! # The model
//!
//! A network of `L` layers maps `x` in `R^{n_0}` to `W x`, `W = W_L ... W_1`,
//! `W_i` of shape `n_i x n_{i-1}` ([`DeepLinear`]). Outputs are Gaussian,
//! `y ~ N(W x, S)`; inputs have second moment `C = E[x x^T]`; targets come
//! from a teacher `W*` ([`Problem`]). With `E = W - W*` the excess loss is
//!
//! ```text
//! L = 1/2 tr(S^-1 E C E^T)
//! ```
//!
//! Write `W_{>i} = W_L ... W_{i+1}` and `W_{<i} = W_{i-1} ... W_1` (identities at
//! the ends). Then ([`DeepLinear::gradient`], [`fisher_matrix`])
//!
//! ```text
//! dL/dW_i = W_{>i}^T S^-1 E C W_{<i}^T
//! F_ij    = (W_{<i} C W_{<j}^T) kron (W_{>i}^T S^-1 W_{>j})      (column-major vec)
//! ```
//!
//! and the closed-form natural gradient ([`DeepLinear::natural_gradient_direction`],
//! [`LinearNaturalGradient`]) uses only the diagonal blocks' factors
//! `B_i = W_{>i}^T S^-1 W_{>i}` and `A_i = W_{<i} C W_{<i}^T`:
//!
//! ```text
//! dW_i = -(eta / L) B_i^+ (dL/dW_i) A_i^+
//! ```
//!
//! Damping ([`Damping`]): Tikhonov adds `g` to both factors; the
//! Levenberg-Marquardt rule of docs/math.md section 2.4 adds `sqrt(g)` to
//! both and adapts `g` (`x 3/2` when the actual loss decrease is below 1/4 of the
//! Gauss-Newton model's prediction, `x 2/3` above 3/4, starting at 1).
//!
//! # Why the closed form is exact, and when
//!
//! Let `J d = sum_i W_{>i} d_i W_{<i}` be the first-order change of the
//! end-to-end map caused by layer changes `d`, and `<X, Y> = tr(S^-1 X C Y^T)`
//! the metric of the loss. The adjoint of `J` is
//! `(J* X)_i = W_{>i}^T S^-1 X C W_{<i}^T`, so `grad = J* E` and, block by
//! block, `F = J* J` (apply `F_ij` to `vec d_j` with `(A kron B) vec X = vec(B X A^T)`).
//! Hence
//!
//! ```text
//! F d = grad   <=>   J*(J d - E) = 0   <=   J d = E.
//! ```
//!
//! For the closed form, `W_{>i} d_i W_{<i} = (1/L) P_i E Q_i` with
//! `P_i = W_{>i} B_i^+ W_{>i}^T S^-1` and `Q_i = C W_{<i}^T A_i^+ W_{<i}`.
//! Put `U = S^{-1/2} W_{>i}`: `P_i = S^{1/2} U (U^T U)^+ U^T S^{-1/2}
//! = S^{1/2} U U^+ S^{-1/2}`, the `S^-1`-orthogonal projector onto the range of
//! `W_{>i}`; it is the identity iff `W_{>i}` (`n_L x n_i`) has full row rank
//! `n_L`. Likewise with `V = W_{<i} C^{1/2}`, `Q_i = C^{1/2} V^+ V C^{-1/2}` is
//! the identity iff `W_{<i}` (`n_{i-1} x n_0`) has full column rank `n_0`.
//! For generic weights a product of layers has the rank of its narrowest
//! width, so every `P_i` and every `Q_i` is the identity iff **no hidden width
//! `n_1 .. n_{L-1}` is below `max(n_0, n_L)`** ([`is_exact_profile`]; the
//! input and output widths themselves are free). Then
//!
//! ```text
//! J d = (1/L) sum_i E = E,   so F d = grad exactly,
//! ```
//!
//! even where `B_i` or `A_i` is singular (hidden layers wider than the
//! output or input: that is what the pseudo-inverses are for). Any solution
//! of `F d = grad`, in particular the Moore-Penrose one `F^+ grad`, differs from
//! the closed form by a null vector of `F = J* J`, i.e. of `J`: both move the
//! end-to-end map by the same `-eta (W - W*)`, although they differ in
//! parameter space (the rescalings `W_{i+1} M^-1, M W_i` are null directions).
//! With a hidden layer narrower than the input or output, some `P_i` or `Q_i`
//! is a proper projector, `J d != E`, and the closed form is no longer the
//! natural gradient ([`check_against_fisher`] shows residuals of order 0.1).
//!
//! # Consequences for training
//!
//! Under natural-gradient flow `dW/dt = -eta (W - W*)`: the map moves on the
//! straight line from `W(0)` to `W*` and the excess loss decays as
//! `exp(-2 eta t)`, whatever the depth, widths or initialisation. A discrete
//! step adds terms of second order in the layer changes, so
//! `E_{k+1} = (1 - eta) E_k + O(|E_k|^2)`: the per-step slope of `ln L` tends to
//! `2 ln(1 - eta)`. Because every layer's pseudo-inverse enters the step, the
//! straight path must keep away from singular maps; with a random teacher it
//! typically does not, and undamped steps fail.
//!
//! # The experiment (`natgrad linear`)
//!
//! Teacher-student, width 20, `S = I`, correlated inputs (`C` with a
//! log-spaced spectrum from 1 to 0.01 and a random rotation), depths 2, 4, 8,
//! 16; orthogonal initial layers ([`isometric_layers`]) and, shared by all
//! depths, a teacher perturbation `R` ([`run_experiment`],
//! [`ExperimentConfig::full`]):
//!
//! - **well-conditioned** ("near"): `W* = W(0) (I + 0.5 R)`; the smallest
//!   singular value along the straight path is 0.469 at every depth
//!   (`path_min_singular`). Undamped natural gradient at `eta = 0.1` and 0.5:
//!   fitted slope `-0.210721` and `-1.386292` against the predicted
//!   `2 ln(1 - eta) = -0.210721` and `-1.386294` at every depth (relative error
//!   below `1e-5`), and exactly 129 and 20 steps to an excess loss of `1e-12`
//!   at every depth, and for the wider profile 20-40-40-40-20 too;
//! - **gradient descent** from the same weights (step `1 / (L lambda_max(C))`):
//!   1404 to 2143 steps, its slope matching its own linearisation; from
//!   layers scaled by 0.5 the plateaus grow with depth: 1468 and 2599 steps at
//!   depths 2 and 4, while depth 8 is still at `2.7e-2` and depth 16 has not
//!   moved (`2.96` to `2.96`) after 3000 steps;
//! - **random teacher** (Gaussian `W*`): the straight path passes within
//!   `1e-12` of a singular map; undamped steps diverge or wander at 7 of the 8
//!   (depth, eta) pairs (at depth 4, eta = 0.5, the loss rose 10^4-fold and
//!   then recovered); Levenberg-Marquardt damping at `eta = 0.1` converges at
//!   every depth (153 to 163 steps to `1e-12`), at the undamped rate once `g`
//!   has relaxed;
//! - **bottleneck** 80-34-20-10-5-2-5-10-20-34-80 with a random teacher of the
//!   same profile: the closed form still converges, but the fitted slope is
//!   `2 ln(1 - eta / L)` (`-0.0201` at `eta = 0.1`, `-0.1026` at 0.5), not
//!   `2 ln(1 - eta)`: the component of `W - W*` outside the row space of
//!   `W_1` (the first hidden layer is narrower than the input) appears only in
//!   the first layer's term `P_1 E Q_1` (`Q_1 = I`, every other `Q_i` projects
//!   into that row space), so it is corrected with weight `1/L` per step.
//!
//! Brute-force checks ([`check_against_fisher`]): relative residual of
//! `F d = grad` at most `6.2e-16` on every exact profile (4-4, 4-4-4,
//! 4-4-4-4-4, eight layers of width 3, 4-6-4, 3-5-5-3, 3-6-8-6-3, 3-5-4), and
//! 0.21, 0.14, 0.34, 0.24 on 6-4-3, 3-4-6, 5-2-5 and 6-4-2-4-6.
//!
//! # Reproducing the plot
//!
//! ```text
//! cargo run --release -- linear --out linear-out --json
//! ```
//!
//! runs everything in a few seconds of CPU and writes `linear-out/linear.csv`
//! (one row per run and step: `step,method,depth,init_scale,excess_loss,eta,
//! teacher,damping,widths`) and `linear-out/linear.png`, four log-scale
//! panels of excess loss against step: the natural gradient's straight lines
//! (all depths on top of each other); gradient descent on the same problems
//! with its plateaus, the natural gradient in black for scale; the random
//! teacher, undamped steps failing beside the Levenberg-Marquardt runs; and
//! the bottleneck following `(1 - eta / L)^(2k)`. `--json` prints one
//! line per run and per brute-force check ([`RunRecord::to_json`],
//! [`fisher_check_json`]). The test suite (`tests/linear.rs`) runs the same
//! experiment without the bottleneck ([`ExperimentConfig::quick`]) and asserts
//! the criteria behind the numbers above (rates within 5%, steps to `1e-12`
//! within 2 across depths, exact-case residuals below `1e-9`, damped
//! random-teacher convergence at every depth), plus the bottleneck's
//! `eta / L` rate on a smaller 12-6-3-6-12 profile.
//!
//! # The same networks trained online (`natgrad linear --online`)
//!
//! The paper's own simulations: the authors' three networks (16 layers of
//! width 20; 20 inputs widening to 100 and narrowing to 20; the bottleneck
//! 200-80-34-20-10-5-2-5-10-20-34-80-200), inputs with a low-rank
//! correlated covariance and a noisy random teacher, trained from a finite
//! training set by the online natural gradient at minibatch 1000
//! ([`OnlineNaturalGradient`], on the library's
//! [`KroneckerPreconditioner`](crate::optim::KroneckerPreconditioner), in
//! f32) and by SGD at minibatch 20 ([`OnlineSgd`]), with the closed form on
//! the population statistics beside them ([`run_online_experiment`],
//! [`OnlineConfig::authors`]). The settings, taken from the authors' code,
//! and where they differ are in [`OnlineConfig`]'s documentation, the
//! figures in docs/linear.md. On the square and wide networks the online
//! natural gradient reaches SGD's final (400k-example) test error after
//! 18k to 25k examples and twice the noise floor by 43k, while SGD ends one
//! to two decades above the floor; the online curve follows the closed
//! form's step for step.
//!
//! # Example
//!
//! ```
//! use faer::Mat;
//! use natgrad::kernels::rng::Rng;
//! use natgrad::linear::*;
//!
//! // A 3-layer network with a hidden layer wider than input and output.
//! let mut rng = Rng::new(1);
//! let (net, problem) = random_small_problem(&mut rng, &[3, 5, 5, 3])?;
//! // The closed form solves F d = grad...
//! let check = check_against_fisher(&net, &problem)?;
//! assert!(check.exact_case && check.residual <= 1e-9);
//! // ...and moves the end-to-end map by exactly W - W* per unit eta.
//! let d = net.natural_gradient_direction(&problem, 0.0)?;
//! let e = &net.end_to_end() - problem.teacher();
//! let moved = net.map_change(&d)?;
//! assert!((&moved - &e).norm_l2() <= 1e-9 * e.norm_l2());
//!
//! // One undamped step with eta = 0.5 on a near teacher roughly quarters the loss.
//! let init = DeepLinear::new(isometric_layers(&mut rng, &[4, 4, 4], 1.0)?)?;
//! let w0 = init.end_to_end();
//! let teacher = &w0 * (Mat::<f64>::identity(4, 4) + gaussian(&mut rng, 4, 4, 0.01));
//! let problem = Problem::new(Mat::identity(4, 4), Mat::identity(4, 4), teacher)?;
//! let mut net = init.clone();
//! let mut opt = LinearNaturalGradient::new(0.5, Damping::None)?;
//! let step = opt.step(&mut net, &problem)?;
//! assert!((step.loss_after / step.loss_before - 0.25).abs() < 0.01);
//! # Ok::<(), natgrad::Error>(())
//! ```

mod dense;
mod experiment;
mod fisher;
mod network;
mod online;
mod online_config;
mod online_report;
mod online_student;
mod random;

pub use experiment::{
    default_fisher_profiles, fisher_check_json, fit_log_rate, gradient_descent_local_rate,
    json_f64, path_min_singular, random_small_problem, run_experiment, write_csv, ExperimentConfig,
    ExperimentReport, Method, RunRecord, TeacherKind, DIVERGENCE_FACTOR, FIT_HIGH, FIT_LOW,
    STOP_LOSS, TARGET_LOSS,
};
pub use fisher::{
    check_against_fisher, fisher_apply, fisher_matrix, flatten, unflatten, FisherCheck,
    FISHER_RCOND, MAX_BRUTE_FORCE_PARAMETERS,
};
pub use network::{
    gradient_descent_step, is_exact_profile, psd_pseudoinverse, Damping, DeepLinear,
    LinearNaturalGradient, MatPair, Problem, StepReport, PINV_RCOND,
};
pub use online::{
    authors_gaussian_layers, run_online_experiment, run_online_method, CorrelatedInputs,
    OnlineTask, ONLINE_DIVERGENCE_FACTOR,
};
pub use online_config::{
    authors_networks, OnlineConfig, OnlineNetwork, EXACT_STEPS, SGD_STEP_BOTTLENECK,
    SGD_STEP_SQUARE, SGD_STEP_WIDE,
};
pub use online_report::{OnlineMethod, OnlineNetworkReport, OnlinePoint, OnlineReport, OnlineRun};
pub use online_student::{LinearStudent, OnlineNaturalGradient, OnlineSgd, OnlineStepReport};
pub use random::{
    gaussian, isometric_layers, log_spaced, normal, orthogonal, semi_orthogonal, spd_with_spectrum,
    well_conditioned,
};
