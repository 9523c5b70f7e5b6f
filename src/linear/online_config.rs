//! The settings of the online deep-linear simulations
//! ([`run_online_experiment`](super::run_online_experiment)): the networks,
//! the data and the methods' steps, with where each comes from. Apart from
//! the run (`online.rs`) and its report (`online_report.rs`), which both
//! read them.

use crate::Error;

/// One network of the experiment: a name, its width profile and SGD's step
/// on it.
#[derive(Clone, Debug, PartialEq)]
pub struct OnlineNetwork {
    /// Short name (`square`, `wide`, `bottleneck`), used in the outputs.
    pub name: String,
    /// `[n_0, n_1, .., n_L]`.
    pub widths: Vec<usize>,
    /// SGD's step on the gradient of the mean loss (see the module docs).
    pub sgd_learning_rate: f32,
}

impl OnlineNetwork {
    /// A network from its name, width profile and SGD step.
    pub fn new(
        name: impl Into<String>,
        widths: Vec<usize>,
        sgd_learning_rate: f32,
    ) -> OnlineNetwork {
        OnlineNetwork {
            name: name.into(),
            widths,
            sgd_learning_rate,
        }
    }
}

/// Steps of the exact closed form in the default run: it reaches the noise
/// floor within about 30 on the square and wide networks and 90 on the
/// bottleneck, whose 200-wide factors make an f64 step cost about 30 ms.
pub const EXACT_STEPS: usize = 150;

/// SGD's step on the square network (see the module docs for the sweep).
pub const SGD_STEP_SQUARE: f32 = 0.01;
/// SGD's step on the widening-then-narrowing network.
pub const SGD_STEP_WIDE: f32 = 0.005;
/// SGD's step on the bottleneck network.
pub const SGD_STEP_BOTTLENECK: f32 = 0.002;

/// The three networks of the authors' `linear.ml` (`NET 1`, `NET 2`,
/// `NET 3`): 16 layers of width 20; 20 inputs through 30, 40, .., 100, ..,
/// 30 to 20 outputs (16 layers); the bottleneck
/// 200-80-34-20-10-5-2-5-10-20-34-80-200 (12 layers).
pub fn authors_networks() -> Vec<OnlineNetwork> {
    let mut wide = vec![20];
    wide.extend((3..=10).map(|k| 10 * k));
    wide.extend((3..=9).rev().map(|k| 10 * k));
    wide.push(20);
    vec![
        OnlineNetwork::new("square", vec![20; 17], SGD_STEP_SQUARE),
        OnlineNetwork::new("wide", wide, SGD_STEP_WIDE),
        OnlineNetwork::new(
            "bottleneck",
            vec![200, 80, 34, 20, 10, 5, 2, 5, 10, 20, 34, 80, 200],
            SGD_STEP_BOTTLENECK,
        ),
    ]
}

/// Settings of the online experiment.
///
/// # The settings, and where they come from
///
/// From the authors' simulation code (`hennequin-lab/bernacchia-nips-2018`,
/// OCaml): `linear.ml` for the experiment, `lib/util.ml` (`cor_noise`) for
/// the inputs, `lib/network.ml` (`make_random`) for the weights,
/// `lib/ngd.ml` and `lib/sgd.ml` for the optimizers, `lib/loss.ml` for the
/// loss:
///
/// - networks ([`authors_networks`]): `NET 1`, 16 layers of width 20 on 20
///   inputs; `NET 2`, widening then narrowing, 20 inputs and hidden widths
///   30, 40, .., 100, .., 40, 30, output 20; `NET 3`, the bottleneck
///   200-80-34-20-10-5-2-5-10-20-34-80-200 (`input_size = 200`);
/// - inputs ([`CorrelatedInputs::authors`](super::CorrelatedInputs::authors)): `x = Q^T diag(sqrt(lambda)) z`,
///   `z` standard normal, `Q` a random orthogonal matrix,
///   `lambda_i = epsilon + exp(-i rank / n)` (`i = 0 .. n-1`) rescaled to sum
///   to `sigma^2 n`, with `epsilon = 1e-3`, `sigma = 1`, `rank = 5`: a
///   covariance of effective rank about 5, decaying over two decades;
/// - teacher: a random network of the same profile; targets
///   `y = W* x + 0.001 n`, `n` standard normal; the student starts from an
///   independent draw of the same distribution; every layer's entries are
///   `N(0, 1/fan_in)` ([`authors_gaussian_layers`](super::authors_gaussian_layers));
/// - a training set of 10000 examples sampled in minibatches (distinct
///   examples within a minibatch), a test set of 1000; test error
///   `1/2 mean |W x - y|^2` over the test set, recorded every 1000 examples;
///   the teacher's own test error is the floor (`test_lb` there,
///   `noise_floor` here);
/// - natural gradient: minibatch 1000, `alpha = 1` divided by the depth,
///   one sampled backward pass per step (`n_repeats = 1`), damping `sqrt(g)`
///   on each factor with `g` starting at 0.01 and adapted by the
///   Levenberg-Marquardt rule (`` `Levenberg 0.01 ``);
/// - SGD: minibatch 20, `alpha` in {0.02, 0.04, 0.06, 0.08}.
///
/// Where this module differs, and why:
///
/// - **SGD's step.** `lib/loss.ml`'s `dloss` already divides the output
///   error by the minibatch size, and `lib/sgd.ml` divides the gradient by
///   it again: the authors' `alpha` is `20x` the step on the gradient of the
///   mean loss, `0.001` to `0.004`. Here [`OnlineNetwork::sgd_learning_rate`]
///   is the step on the mean-loss gradient, per network the largest of
///   0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04 that did not diverge in a
///   200k-example sweep (each larger one did; the largest stable step also
///   had the lowest final test error): [`SGD_STEP_SQUARE`] 0.01,
///   [`SGD_STEP_WIDE`] 0.005, [`SGD_STEP_BOTTLENECK`] 0.002. SGD runs at
///   the edge of its stability, where the authors' steps were 2.5 to 10
///   times smaller.
/// - **No biases.** The authors' layers carry biases (initialised at 0,
///   trained); the theory, the closed form and this experiment have none
///   (inputs and teacher are zero-mean and bias-free, so the trained biases
///   stay near 0).
/// - **The closed form's length.** [`EXACT_STEPS`] (150) steps in the
///   default run: it is at the noise floor after about 30 on the square and
///   wide networks and 90 on the bottleneck.
/// - **Seconds.** Each method's clock counts only its own training steps
///   (minibatch gathering included), evaluation off the clock, as the
///   authors' `time_to_remove`. Everything runs on one thread (`Par::Seq`),
///   one run after another.
///
/// # The exact closed form
///
/// [`LinearNaturalGradient`](super::LinearNaturalGradient) on the population problem (`C` the inputs'
/// covariance, `S = I`, `W*` the teacher's map) with the same step and the
/// same Levenberg-Marquardt damping, in f64: the curve the online method
/// would follow with exact statistics. It consumes no examples; its step `k`
/// is drawn at `k` natural-gradient minibatches (`1000 k` examples), and its
/// seconds are its own f64 steps' (eigendecompositions, not the f32
/// kernels), reported but not comparable with the online methods'.
#[derive(Clone, Debug, PartialEq)]
pub struct OnlineConfig {
    /// The networks, each trained by every method.
    pub networks: Vec<OnlineNetwork>,
    /// Training-set size (the authors': 10000).
    pub train_size: usize,
    /// Test-set size (the authors': 1000).
    pub test_size: usize,
    /// Examples each online method trains on.
    pub examples: usize,
    /// Natural-gradient minibatch (the authors': 1000).
    pub ng_batch: usize,
    /// SGD minibatch (the authors': 20).
    pub sgd_batch: usize,
    /// Natural-gradient step `eta`, divided by the depth (the authors': 1).
    pub ng_eta: f32,
    /// Initial Levenberg-Marquardt damping `g` (the authors': 0.01).
    pub ng_initial_damping: f32,
    /// Examples between two evaluations of the test error (the authors':
    /// 1000); at least one step's.
    pub record_every: usize,
    /// `rank` of the input covariance (the authors': 5).
    pub input_rank: f64,
    /// `epsilon` of the input covariance (the authors': 1e-3).
    pub input_epsilon: f64,
    /// Standard deviation of the teacher's output noise (the authors': 1e-3).
    pub teacher_noise: f64,
    /// Steps of the exact closed form (`None`: as many as the natural
    /// gradient takes; `Some(0)` leaves it out).
    pub exact_steps: Option<usize>,
    /// Seed of every random draw (network `k` uses `seed + k`).
    pub seed: u64,
}

impl OnlineConfig {
    /// The authors' settings on their three networks: 400k examples per
    /// method (40 passes over the training set), SGD's steps from the sweep
    /// and 150 steps of the closed form (see the module docs). About 25 s of
    /// training on one core.
    pub fn authors() -> OnlineConfig {
        OnlineConfig {
            networks: authors_networks(),
            train_size: 10_000,
            test_size: 1000,
            examples: 400_000,
            ng_batch: 1000,
            sgd_batch: 20,
            ng_eta: 1.0,
            ng_initial_damping: 0.01,
            record_every: 1000,
            input_rank: 5.0,
            input_epsilon: 1e-3,
            teacher_noise: 1e-3,
            exact_steps: Some(EXACT_STEPS),
            seed: 20181203,
        }
    }

    /// What the test suite runs: the square network at depth 8, a small
    /// widening-narrowing one and a small bottleneck, 40k examples, the
    /// natural gradient at minibatch 500.
    pub fn quick() -> OnlineConfig {
        OnlineConfig {
            networks: vec![
                OnlineNetwork::new("square", vec![20; 9], SGD_STEP_SQUARE),
                OnlineNetwork::new("wide", vec![20, 30, 40, 30, 20], SGD_STEP_WIDE),
                OnlineNetwork::new(
                    "bottleneck",
                    vec![40, 20, 5, 2, 5, 20, 40],
                    SGD_STEP_BOTTLENECK,
                ),
            ],
            train_size: 5000,
            test_size: 500,
            examples: 40_000,
            ng_batch: 500,
            record_every: 500,
            exact_steps: None,
            ..OnlineConfig::authors()
        }
    }

    pub(super) fn validate(&self) -> Result<(), Error> {
        let bad = |what: String| Err(Error::InvalidConfig(what));
        if self.networks.is_empty() {
            return bad("the experiment needs at least one network".into());
        }
        for n in &self.networks {
            if n.widths.len() < 2 || n.widths.contains(&0) {
                return bad(format!(
                    "network {}: bad width profile {:?}",
                    n.name, n.widths
                ));
            }
        }
        if self.train_size == 0 || self.test_size == 0 || self.examples == 0 {
            return bad("training set, test set and example budget must be positive".into());
        }
        if self.ng_batch == 0 || self.sgd_batch == 0 {
            return bad("minibatch sizes must be positive".into());
        }
        if self.ng_batch.max(self.sgd_batch) > self.train_size {
            return bad(format!(
                "minibatches ({} and {}) cannot exceed the training set ({})",
                self.ng_batch, self.sgd_batch, self.train_size
            ));
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !(positive(self.ng_eta as f64)
            && positive(self.ng_initial_damping as f64)
            && self
                .networks
                .iter()
                .all(|n| positive(n.sgd_learning_rate as f64))
            && positive(self.input_rank)
            && positive(self.input_epsilon)
            && self.teacher_noise.is_finite()
            && self.teacher_noise >= 0.0)
        {
            return bad(
                "steps, damping, input rank and epsilon must be finite and > 0, \
                        the teacher noise finite and >= 0"
                    .into(),
            );
        }
        if self.record_every == 0 {
            return bad("record_every must be positive".into());
        }
        Ok(())
    }
}
