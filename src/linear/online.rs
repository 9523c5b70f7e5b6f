//! The paper's deep-linear simulations, online (`natgrad linear --online`):
//! teacher-student deep linear networks trained from a finite training set
//! by the online natural gradient (minibatch 1000) and by SGD (minibatch
//! 20), test error against examples seen and against training time, with
//! the exact closed form on the population statistics beside them.
//!
//! The settings and where they come from: [`OnlineConfig`].

use std::time::Instant;

use faer::Mat;
use natgrad_kernels::rng::Rng;
use natgrad_kernels::MatRef;

use super::network::{Damping, DeepLinear, LinearNaturalGradient, Problem};
use super::online_config::{OnlineConfig, OnlineNetwork};
use super::online_report::{
    OnlineMethod, OnlineNetworkReport, OnlinePoint, OnlineReport, OnlineRun,
};
use super::online_student::{LinearStudent, OnlineNaturalGradient, OnlineSgd};
use super::random::{normal, orthogonal};
use crate::Error;

/// Correlated Gaussian inputs as the authors' `cor_noise`:
/// `x = Q^T diag(sqrt(lambda)) z`, covariance `C = Q^T diag(lambda) Q`.
#[derive(Clone, Debug)]
pub struct CorrelatedInputs {
    factor: Mat<f64>,
    covariance: Mat<f64>,
    spectrum: Vec<f64>,
}

impl CorrelatedInputs {
    /// `n` inputs with `lambda_i = epsilon + exp(-i rank / n)`, rescaled so
    /// that `sum lambda = sigma^2 n`, and a Haar-random rotation `Q`.
    ///
    /// Errors: [`Error::InvalidConfig`] for `n == 0` or a parameter that is
    /// not finite and positive.
    pub fn authors(
        rng: &mut Rng,
        n: usize,
        epsilon: f64,
        sigma: f64,
        rank: f64,
    ) -> Result<CorrelatedInputs, Error> {
        let ok = |x: f64| x.is_finite() && x > 0.0;
        if n == 0 || !(ok(epsilon) && ok(sigma) && ok(rank)) {
            return Err(Error::InvalidConfig(format!(
                "correlated inputs need n > 0 and positive epsilon, sigma, rank \
                 (got {n}, {epsilon}, {sigma}, {rank})"
            )));
        }
        let raw: Vec<f64> = (0..n)
            .map(|i| epsilon + (-(i as f64) * rank / n as f64).exp())
            .collect();
        let total: f64 = raw.iter().sum();
        let spectrum: Vec<f64> = raw
            .iter()
            .map(|l| l * sigma * sigma * n as f64 / total)
            .collect();
        let q = orthogonal(rng, n);
        let factor = Mat::from_fn(n, n, |i, j| q[(j, i)] * spectrum[j].sqrt());
        let covariance = &factor * factor.transpose();
        let covariance = Mat::from_fn(n, n, |i, j| 0.5 * (covariance[(i, j)] + covariance[(j, i)]));
        Ok(CorrelatedInputs {
            factor,
            covariance,
            spectrum,
        })
    }

    /// The covariance (second moment) `C`.
    pub fn covariance(&self) -> MatRef<'_, f64> {
        self.covariance.as_ref()
    }

    /// The eigenvalues `lambda` of `C`, descending.
    pub fn spectrum(&self) -> &[f64] {
        &self.spectrum
    }

    /// `count` samples, one per column.
    pub fn sample(&self, rng: &mut Rng, count: usize) -> Mat<f64> {
        let n = self.factor.nrows();
        let z = Mat::from_fn(n, count, |_, _| normal(rng));
        &self.factor * z
    }
}

/// Layers with `N(0, 1/fan_in)` entries for the profile `widths`, as the
/// authors' `make_random` (teacher and student alike).
pub fn authors_gaussian_layers(rng: &mut Rng, widths: &[usize]) -> Vec<Mat<f64>> {
    widths
        .windows(2)
        .map(|w| {
            let std = 1.0 / (w[0] as f64).sqrt();
            Mat::from_fn(w[1], w[0], |_, _| std * normal(rng))
        })
        .collect()
}

/// One teacher-student task: the teacher, the inputs, a training set (f32,
/// for the online methods) and a test set (f64, for the test error).
#[derive(Clone, Debug)]
pub struct OnlineTask {
    network: OnlineNetwork,
    teacher: DeepLinear,
    inputs: CorrelatedInputs,
    train_x: Vec<f32>,
    train_y: Vec<f32>,
    train_size: usize,
    test_x: Mat<f64>,
    test_y: Mat<f64>,
}

impl OnlineTask {
    /// Draws the task of `network` under `cfg`'s settings from `rng`: inputs,
    /// teacher, training and test sets, in that order.
    ///
    /// Errors: [`Error::InvalidConfig`] for a bad profile or settings.
    pub fn new(
        network: &OnlineNetwork,
        cfg: &OnlineConfig,
        rng: &mut Rng,
    ) -> Result<OnlineTask, Error> {
        cfg.validate()?;
        let widths = &network.widths;
        if widths.len() < 2 || widths.contains(&0) {
            return Err(Error::InvalidConfig(format!(
                "bad width profile {widths:?}"
            )));
        }
        let (n0, nl) = (widths[0], widths[widths.len() - 1]);
        let inputs = CorrelatedInputs::authors(rng, n0, cfg.input_epsilon, 1.0, cfg.input_rank)?;
        let teacher = DeepLinear::new(authors_gaussian_layers(rng, widths))?;
        let map = teacher.end_to_end();
        let mut draw = |count: usize| {
            let x = inputs.sample(rng, count);
            let mut y = &map * &x;
            for j in 0..count {
                for i in 0..nl {
                    y[(i, j)] += cfg.teacher_noise * normal(rng);
                }
            }
            (x, y)
        };
        let (x, y) = draw(cfg.train_size);
        let to_f32 = |m: &Mat<f64>| -> Vec<f32> {
            (0..m.ncols())
                .flat_map(|j| (0..m.nrows()).map(move |i| (j, i)))
                .map(|(j, i)| m[(i, j)] as f32)
                .collect()
        };
        let (train_x, train_y) = (to_f32(&x), to_f32(&y));
        let (test_x, test_y) = draw(cfg.test_size);
        Ok(OnlineTask {
            network: network.clone(),
            teacher,
            inputs,
            train_x,
            train_y,
            train_size: cfg.train_size,
            test_x,
            test_y,
        })
    }

    /// The network this task is for.
    pub fn network(&self) -> &OnlineNetwork {
        &self.network
    }

    /// The teacher network.
    pub fn teacher(&self) -> &DeepLinear {
        &self.teacher
    }

    /// The input distribution.
    pub fn inputs(&self) -> &CorrelatedInputs {
        &self.inputs
    }

    /// The population problem of the closed form: `C`, `S = I`, `W*`.
    pub fn problem(&self) -> Result<Problem, Error> {
        let nl = self.test_y.nrows();
        Problem::new(
            self.inputs.covariance.clone(),
            Mat::identity(nl, nl),
            self.teacher.end_to_end(),
        )
    }

    /// Test error `1/2 mean |W x - y|^2` of `net` over the test set.
    ///
    /// Errors: [`Error::Shape`] if `net` does not map the task's inputs to
    /// its outputs.
    pub fn test_error(&self, net: &DeepLinear) -> Result<f64, Error> {
        let w = net.end_to_end();
        if w.nrows() != self.test_y.nrows() || w.ncols() != self.test_x.nrows() {
            return Err(Error::Shape(format!(
                "network widths {:?} do not fit the task's {:?}",
                net.widths(),
                self.network.widths
            )));
        }
        let diff = &w * &self.test_x - &self.test_y;
        let n = self.test_x.ncols() as f64;
        Ok(0.5 * diff.squared_norm_l2() / n)
    }

    /// The teacher's own test error: the floor set by the output noise.
    pub fn noise_floor(&self) -> Result<f64, Error> {
        self.test_error(&self.teacher)
    }
}

/// Draws minibatches of distinct training examples into preallocated
/// buffers (a partial Fisher-Yates shuffle of a persistent permutation).
struct Minibatches {
    order: Vec<usize>,
    x: Vec<f32>,
    y: Vec<f32>,
    batch: usize,
    rng: Rng,
}

impl Minibatches {
    fn new(task: &OnlineTask, batch: usize, seed: u64) -> Minibatches {
        let (n0, nl) = (task.network.widths[0], task.test_y.nrows());
        Minibatches {
            order: (0..task.train_size).collect(),
            x: vec![0.0; n0 * batch],
            y: vec![0.0; nl * batch],
            batch,
            rng: Rng::new(seed),
        }
    }

    fn next(&mut self, task: &OnlineTask) -> (MatRef<'_, f32>, MatRef<'_, f32>) {
        let (n0, nl) = (task.network.widths[0], task.test_y.nrows());
        let n = self.order.len();
        for k in 0..self.batch {
            let pick = k + self.rng.below(n - k);
            self.order.swap(k, pick);
            let e = self.order[k];
            self.x[k * n0..(k + 1) * n0].copy_from_slice(&task.train_x[e * n0..(e + 1) * n0]);
            self.y[k * nl..(k + 1) * nl].copy_from_slice(&task.train_y[e * nl..(e + 1) * nl]);
        }
        (
            MatRef::from_column_major_slice(&self.x, n0, self.batch),
            MatRef::from_column_major_slice(&self.y, nl, self.batch),
        )
    }
}

/// A method being trained: one step, and the current test error.
trait Trainer {
    /// One training step; `Ok(false)` if the run diverged.
    fn step(&mut self, task: &OnlineTask) -> Result<bool, Error>;
    /// Test error of the current weights (off the clock).
    fn test_error(&self, task: &OnlineTask) -> Result<f64, Error>;
    /// Steps taken back so far.
    fn rejected(&self) -> usize {
        0
    }
}

struct SgdTrainer {
    net: LinearStudent,
    opt: OnlineSgd,
    batches: Minibatches,
}

impl Trainer for SgdTrainer {
    fn step(&mut self, task: &OnlineTask) -> Result<bool, Error> {
        let (x, y) = self.batches.next(task);
        match self.opt.step(&mut self.net, x, y) {
            Ok(_) => Ok(true),
            Err(Error::NonFinite(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
    fn test_error(&self, task: &OnlineTask) -> Result<f64, Error> {
        task.test_error(&self.net.to_deep_linear()?)
    }
}

struct NaturalGradientTrainer {
    net: LinearStudent,
    opt: OnlineNaturalGradient,
    batches: Minibatches,
    rejected: usize,
}

impl Trainer for NaturalGradientTrainer {
    fn step(&mut self, task: &OnlineTask) -> Result<bool, Error> {
        let (x, y) = self.batches.next(task);
        match self.opt.step(&mut self.net, x, y) {
            Ok(r) => {
                self.rejected += r.rejected as usize;
                Ok(true)
            }
            Err(Error::NonFinite(_) | Error::NotPositiveDefinite(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
    fn test_error(&self, task: &OnlineTask) -> Result<f64, Error> {
        task.test_error(&self.net.to_deep_linear()?)
    }
    fn rejected(&self) -> usize {
        self.rejected
    }
}

struct ExactTrainer {
    net: DeepLinear,
    opt: LinearNaturalGradient,
    problem: Problem,
}

impl Trainer for ExactTrainer {
    fn step(&mut self, _task: &OnlineTask) -> Result<bool, Error> {
        match self.opt.step(&mut self.net, &self.problem) {
            Ok(r) => Ok(r.loss_after.is_finite()),
            Err(Error::NonFinite(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
    fn test_error(&self, task: &OnlineTask) -> Result<f64, Error> {
        task.test_error(&self.net)
    }
}

/// A run counts as diverged once its test error exceeds this multiple of
/// its initial value, or is not finite.
pub const ONLINE_DIVERGENCE_FACTOR: f64 = 1e6;

/// Trains one method for `steps` steps of `batch` examples, evaluating every
/// `record` steps and after the last; only the steps are timed.
fn drive(
    task: &OnlineTask,
    trainer: &mut dyn Trainer,
    steps: usize,
    batch: usize,
    record: usize,
) -> Result<(Vec<OnlinePoint>, bool), Error> {
    let initial = trainer.test_error(task)?;
    let mut curve = vec![OnlinePoint {
        step: 0,
        examples: 0,
        seconds: 0.0,
        test_error: initial,
    }];
    let mut seconds = 0.0;
    for k in 1..=steps {
        let start = Instant::now();
        let ok = trainer.step(task)?;
        seconds += start.elapsed().as_secs_f64();
        if ok && k % record != 0 && k != steps {
            continue;
        }
        let test_error = if ok {
            trainer.test_error(task)?
        } else {
            f64::INFINITY
        };
        curve.push(OnlinePoint {
            step: k,
            examples: k * batch,
            seconds,
            test_error,
        });
        if !test_error.is_finite() || test_error > ONLINE_DIVERGENCE_FACTOR * initial {
            return Ok((curve, true));
        }
    }
    Ok((curve, false))
}

/// Runs one method on one task from the initial network `init`.
///
/// Errors: [`Error::InvalidConfig`] for bad settings; errors of the
/// optimizers other than divergence (which the run records).
pub fn run_online_method(
    task: &OnlineTask,
    init: &DeepLinear,
    method: OnlineMethod,
    cfg: &OnlineConfig,
) -> Result<OnlineRun, Error> {
    cfg.validate()?;
    // Minibatch order and sampled targets from streams of their own, apart
    // from the task's and the weights' draws.
    let seed = cfg.seed ^ 0x0B5E_55ED_0A11;
    let sampler_seed = seed.wrapping_add(1);
    let widths = task.network.widths.clone();
    let ng_steps = cfg.examples.div_ceil(cfg.ng_batch);
    let (mut trainer, steps, batch): (Box<dyn Trainer>, usize, usize) = match method {
        OnlineMethod::Sgd => (
            Box::new(SgdTrainer {
                net: LinearStudent::new(init, cfg.sgd_batch)?,
                opt: OnlineSgd::new(task.network.sgd_learning_rate)?,
                batches: Minibatches::new(task, cfg.sgd_batch, seed),
            }),
            cfg.examples.div_ceil(cfg.sgd_batch),
            cfg.sgd_batch,
        ),
        OnlineMethod::NaturalGradient => (
            Box::new(NaturalGradientTrainer {
                net: LinearStudent::new(init, cfg.ng_batch)?,
                opt: OnlineNaturalGradient::new(
                    &widths,
                    cfg.ng_batch,
                    cfg.ng_eta,
                    cfg.ng_initial_damping,
                    sampler_seed,
                )?,
                batches: Minibatches::new(task, cfg.ng_batch, seed),
                rejected: 0,
            }),
            ng_steps,
            cfg.ng_batch,
        ),
        OnlineMethod::ExactClosedForm => (
            Box::new(ExactTrainer {
                net: init.clone(),
                opt: LinearNaturalGradient::new(
                    cfg.ng_eta as f64,
                    Damping::LevenbergMarquardt {
                        initial: cfg.ng_initial_damping as f64,
                    },
                )?,
                problem: task.problem()?,
            }),
            cfg.exact_steps.unwrap_or(ng_steps),
            cfg.ng_batch,
        ),
    };
    let record = (cfg.record_every / batch).max(1);
    let (curve, diverged) = drive(task, trainer.as_mut(), steps, batch, record)?;
    Ok(OnlineRun {
        network: task.network.name.clone(),
        widths,
        method,
        batch,
        curve,
        diverged,
        rejected_steps: trainer.rejected(),
    })
}

/// Runs the experiment: for each network, the task and the initial student
/// (seed `cfg.seed + k` for network `k`), then the natural gradient, SGD
/// and the closed form one after another from the same weights;
/// `progress` sees each run as it finishes.
///
/// Errors: [`Error::InvalidConfig`] for bad settings; the optimizers'
/// errors other than divergence.
pub fn run_online_experiment(
    cfg: &OnlineConfig,
    progress: &mut dyn FnMut(&OnlineRun),
) -> Result<OnlineReport, Error> {
    cfg.validate()?;
    let mut networks = Vec::with_capacity(cfg.networks.len());
    for (k, network) in cfg.networks.iter().enumerate() {
        let mut rng = Rng::new(cfg.seed.wrapping_add(k as u64));
        let task = OnlineTask::new(network, cfg, &mut rng)?;
        let init = DeepLinear::new(authors_gaussian_layers(&mut rng, &network.widths))?;
        let mut methods = vec![OnlineMethod::NaturalGradient, OnlineMethod::Sgd];
        if cfg.exact_steps != Some(0) {
            methods.push(OnlineMethod::ExactClosedForm);
        }
        let mut runs = Vec::with_capacity(methods.len());
        for method in methods {
            let run = run_online_method(&task, &init, method, cfg)?;
            progress(&run);
            runs.push(run);
        }
        networks.push(OnlineNetworkReport {
            network: network.name.clone(),
            widths: network.widths.clone(),
            sgd_learning_rate: network.sgd_learning_rate,
            noise_floor: task.noise_floor()?,
            runs,
        });
    }
    Ok(OnlineReport {
        config: cfg.clone(),
        networks,
    })
}
