//! The teacher-student convergence experiment of `natgrad linear`: natural
//! gradient against gradient descent from the same initial weights, its JSON
//! lines, CSV and plot.

use std::fmt::Write as _;
use std::path::Path;

use faer::{Mat, MatRef};
use natgrad_kernels::rng::Rng;

use super::dense::{mul, mul3, singular_values, sym_eigen, sym_eigenvalues};
use super::fisher::{check_against_fisher, FisherCheck};
use rayon::prelude::*;

use super::network::{
    gradient_descent_step, is_exact_profile, symmetrize, Damping, DeepLinear,
    LinearNaturalGradient, Problem,
};
use super::random::{gaussian, isometric_layers, log_spaced, spd_with_spectrum, well_conditioned};
use crate::Error;

/// The excess loss that `steps_to_1e-12` counts steps to.
pub const TARGET_LOSS: f64 = 1e-12;
/// Upper end of the window where the per-step slope of `log(excess loss)` is
/// fitted: below it, the second-order terms of a discrete step (relative size
/// `~ eta ||W - W*||`, here `<= 1e-3`) no longer bend the line.
pub const FIT_HIGH: f64 = 1e-6;
/// Lower end of the fit window: well above the f64 rounding floor of the
/// excess loss (`~ (n eps ||W||)^2 ~ 1e-28`).
pub const FIT_LOW: f64 = 1e-20;
/// A run stops once its excess loss falls below this (the fit window is done).
pub const STOP_LOSS: f64 = 1e-22;
/// A run counts as diverged once its excess loss exceeds this multiple of its
/// initial value, or becomes non-finite.
pub const DIVERGENCE_FACTOR: f64 = 1e8;

/// Which teacher a run learns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TeacherKind {
    /// `W* = W(0) (I + c R)`: the straight path from the initial map stays
    /// well conditioned.
    Near,
    /// A random teacher: a Gaussian map, or for a bottleneck the product of a
    /// random network of the same profile.
    Random,
}

/// Which optimizer a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// The closed-form natural gradient.
    NaturalGradient,
    /// Gradient descent on the exact (expected, full-batch) gradient.
    GradientDescent,
}

/// The experiment's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ExperimentConfig {
    /// Depths of the width-`width` networks.
    pub depths: Vec<usize>,
    /// Width of every layer in the depth sweep.
    pub width: usize,
    /// Natural-gradient learning rates of the well-conditioned runs.
    pub etas: Vec<f64>,
    /// Size `c` of the teacher perturbation `W* = W(0)(I + c R)`.
    pub near_c: f64,
    /// Condition number of the input second moment `C` (log-spaced spectrum
    /// from 1 down to `1 / input_condition`, random rotation).
    pub input_condition: f64,
    /// Per-layer initial scale of the small-initialisation gradient-descent
    /// runs.
    pub small_init_scale: f64,
    /// Step budget of natural-gradient runs.
    pub max_ng_steps: usize,
    /// Step budget of gradient-descent runs.
    pub max_gd_steps: usize,
    /// Step budget of natural-gradient runs on the bottleneck profile (its
    /// slowest mode contracts by only `1 - eta / L` per step).
    pub max_bottleneck_steps: usize,
    /// Learning rates of the undamped random-teacher runs (the damped ones use
    /// 0.1).
    pub random_teacher_etas: Vec<f64>,
    /// Extra well-conditioned profile with wider hidden layers (exact, needs
    /// pseudo-inverses); `None` to skip.
    pub wide_profile: Option<Vec<usize>>,
    /// Bottleneck profile; `None` to skip.
    pub bottleneck: Option<Vec<usize>>,
    /// Width profiles of the brute-force Fisher checks.
    pub fisher_profiles: Vec<Vec<usize>>,
    /// Seed of every random draw.
    pub seed: u64,
}

impl ExperimentConfig {
    /// The experiment `natgrad linear` runs: depths 2, 4, 8, 16 of width 20,
    /// eta 0.1 and 0.5, a wide profile, the 80-34-20-10-5-2-5-10-20-34-80
    /// bottleneck and the brute-force checks.
    pub fn full() -> ExperimentConfig {
        ExperimentConfig {
            depths: vec![2, 4, 8, 16],
            width: 20,
            etas: vec![0.1, 0.5],
            near_c: 0.5,
            input_condition: 100.0,
            small_init_scale: 0.5,
            max_ng_steps: 400,
            max_gd_steps: 3000,
            max_bottleneck_steps: 1500,
            random_teacher_etas: vec![0.1, 0.5],
            wide_profile: Some(vec![20, 40, 40, 40, 20]),
            bottleneck: Some(vec![80, 34, 20, 10, 5, 2, 5, 10, 20, 34, 80]),
            fisher_profiles: default_fisher_profiles(),
            seed: 20181203,
        }
    }

    /// The same experiment without the bottleneck and with shorter
    /// gradient-descent runs: what the test suite runs.
    pub fn quick() -> ExperimentConfig {
        ExperimentConfig {
            max_gd_steps: 300,
            wide_profile: None,
            bottleneck: None,
            ..ExperimentConfig::full()
        }
    }
}

/// Exact profiles (no hidden layer narrower than input or output) and
/// narrowing, widening and bottleneck ones.
pub fn default_fisher_profiles() -> Vec<Vec<usize>> {
    vec![
        vec![4, 4],
        vec![4, 4, 4],
        vec![4, 4, 4, 4, 4],
        vec![3, 3, 3, 3, 3, 3, 3, 3, 3],
        vec![4, 6, 4],
        vec![3, 5, 5, 3],
        vec![3, 6, 8, 6, 3],
        vec![3, 5, 4],
        vec![6, 4, 3],
        vec![3, 4, 6],
        vec![5, 2, 5],
        vec![6, 4, 2, 4, 6],
    ]
}

/// One optimisation run and what was measured on it.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRecord {
    /// Number of layers.
    pub depth: usize,
    /// Width profile `[n_0, .., n_L]`.
    pub widths: Vec<usize>,
    /// Per-layer scale of the initial (isometric) layers.
    pub init_scale: f64,
    /// Learning rate (natural gradient: `eta`; gradient descent: its step
    /// size).
    pub eta: f64,
    /// The teacher.
    pub teacher: TeacherKind,
    /// Damping of a natural-gradient run (`Damping::None` for gradient
    /// descent).
    pub damping: Damping,
    /// `min over t in [0, 1]` of the `r`-th singular value of
    /// `(1 - t) W(0) + t W*`, `r` the narrowest width (the smallest singular
    /// value for full-rank profiles).
    pub path_min_singular: f64,
    /// The optimizer.
    pub method: Method,
    /// Least-squares slope of `ln(excess loss)` per step over the window
    /// `[FIT_LOW, FIT_HIGH]`; `None` if the run never crossed it (at least 3
    /// points needed).
    pub fitted_log_rate: Option<f64>,
    /// The predicted slope: `2 ln(1 - eta)` for the natural gradient; for
    /// gradient descent, the slowest mode of its linearisation at the last
    /// iterate, `2 ln max(|1 - lr lambda|)` over the eigenvalues `lambda` of the
    /// Gauss-Newton operator on the end-to-end map.
    pub predicted_log_rate: f64,
    /// First step at which the excess loss is `<= TARGET_LOSS`.
    pub steps_to_target: Option<usize>,
    /// Whether the run diverged (non-finite, or `DIVERGENCE_FACTOR` times its
    /// initial loss).
    pub diverged: bool,
    /// Excess loss before each step and after the last one.
    pub losses: Vec<f64>,
}

impl RunRecord {
    /// The JSON line of the run (field order as documented for
    /// `natgrad linear --json`).
    pub fn to_json(&self) -> String {
        format!(
            "{{\"depth\": {}, \"widths\": {}, \"init_scale\": {}, \"eta\": {}, \"teacher\": \"{}\", \"damping\": \"{}\", \"path_min_singular\": {}, \"method\": \"{}\", \"fitted_log_rate\": {}, \"predicted_log_rate\": {}, \"steps_to_1e-12\": {}}}",
            self.depth,
            json_usizes(&self.widths),
            json_f64(self.init_scale),
            json_f64(self.eta),
            teacher_name(self.teacher),
            damping_name(self.damping),
            json_f64(self.path_min_singular),
            method_name(self.method),
            self.fitted_log_rate.map_or("null".into(), json_f64),
            json_f64(self.predicted_log_rate),
            self.steps_to_target.map_or("null".into(), |s| s.to_string()),
        )
    }
}

/// JSON line of a brute-force check.
pub fn fisher_check_json(check: &FisherCheck) -> String {
    format!(
        "{{\"check\": \"fisher_residual\", \"depth\": {}, \"widths\": {}, \"exact_case\": {}, \"residual\": {}}}",
        check.widths.len().saturating_sub(1),
        json_usizes(&check.widths),
        check.exact_case,
        json_f64(check.residual),
    )
}

/// Everything the experiment produced.
#[derive(Clone, Debug)]
pub struct ExperimentReport {
    /// The optimisation runs.
    pub runs: Vec<RunRecord>,
    /// The brute-force Fisher checks.
    pub checks: Vec<FisherCheck>,
}

fn teacher_name(t: TeacherKind) -> &'static str {
    match t {
        TeacherKind::Near => "near",
        TeacherKind::Random => "random",
    }
}

fn damping_name(d: Damping) -> &'static str {
    match d {
        Damping::None => "none",
        Damping::Tikhonov { .. } => "tikhonov",
        Damping::LevenbergMarquardt { .. } => "lm",
    }
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::NaturalGradient => "ng",
        Method::GradientDescent => "sgd",
    }
}

/// A JSON number (shortest round-trip form, exponent notation outside
/// `[1e-4, 1e7)`), `null` if not finite.
pub fn json_f64(x: f64) -> String {
    if !x.is_finite() {
        "null".into()
    } else if x == 0.0 || (1e-4..1e7).contains(&x.abs()) {
        format!("{x:?}")
    } else {
        format!("{x:e}")
    }
}

fn json_usizes(v: &[usize]) -> String {
    let items: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", items.join(", "))
}

/// Least-squares slope of `ln(loss)` per step over the first contiguous stretch
/// of steps with loss in `[FIT_LOW, FIT_HIGH]`; `None` with fewer than 3
/// points.
pub fn fit_log_rate(losses: &[f64]) -> Option<f64> {
    let start = losses.iter().position(|&l| l <= FIT_HIGH)?;
    let mut pts = Vec::new();
    for (k, &l) in losses.iter().enumerate().skip(start) {
        if !(FIT_LOW..=FIT_HIGH).contains(&l) {
            break;
        }
        pts.push((k as f64, l.ln()));
    }
    if pts.len() < 3 {
        return None;
    }
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    Some(sxy / sxx)
}

/// `min over t in [0, 1]` of the `rank`-th largest singular value of
/// `(1 - t) a + t b`: a grid of 401 points, refined by golden-section search
/// around the best grid point.
pub fn path_min_singular(
    a: MatRef<'_, f64>,
    b: MatRef<'_, f64>,
    rank: usize,
) -> Result<f64, Error> {
    if a.nrows() != b.nrows() || a.ncols() != b.ncols() {
        return Err(Error::Shape("path endpoints have different shapes".into()));
    }
    let full = a.nrows().min(a.ncols());
    if full == 0 {
        return Err(Error::Shape("path endpoints are empty matrices".into()));
    }
    let k = rank.clamp(1, full);
    let sigma = |t: f64| -> Result<f64, Error> {
        let m = a * faer::Scale(1.0 - t) + b * faer::Scale(t);
        let s = singular_values(m.as_ref())?;
        Ok(s[k - 1])
    };
    const GRID: usize = 400;
    let mut best = (0usize, f64::INFINITY);
    for i in 0..=GRID {
        let v = sigma(i as f64 / GRID as f64)?;
        if v < best.1 {
            best = (i, v);
        }
    }
    let (mut lo, mut hi) = (
        best.0.saturating_sub(1) as f64 / GRID as f64,
        (best.0 + 1).min(GRID) as f64 / GRID as f64,
    );
    let phi = 0.5 * (5f64.sqrt() - 1.0);
    let mut min = best.1;
    for _ in 0..40 {
        let m1 = hi - phi * (hi - lo);
        let m2 = lo + phi * (hi - lo);
        let (f1, f2) = (sigma(m1)?, sigma(m2)?);
        min = min.min(f1).min(f2);
        if f1 < f2 {
            hi = m2;
        } else {
            lo = m1;
        }
    }
    Ok(min)
}

/// Symmetric square root of a symmetric positive semi-definite matrix.
fn psd_sqrt(a: MatRef<'_, f64>) -> Result<Mat<f64>, Error> {
    let (s, u) = sym_eigen(symmetrize(a).as_ref())?;
    let n = a.nrows();
    let scaled = Mat::from_fn(n, n, |i, j| u[(i, j)] * s[j].max(0.0).sqrt());
    Ok(symmetrize(mul(scaled.as_ref(), u.transpose()).as_ref()))
}

/// The slowest per-step log-rate of gradient descent with step `lr`,
/// linearised at `net`: `2 ln max |1 - lr lambda|` over the eigenvalues of the
/// Gauss-Newton operator
/// `K = sum_i (C^1/2 W_{<i}^T W_{<i} C^1/2) kron (S^-1/2 W_{>i} W_{>i}^T S^-1/2)`
/// on the whitened end-to-end map.
pub fn gradient_descent_local_rate(
    net: &DeepLinear,
    problem: &Problem,
    lr: f64,
) -> Result<f64, Error> {
    let c_half = psd_sqrt(problem.input_moment())?;
    let s_inv_half = psd_sqrt(problem.noise_precision())?;
    let (m, n) = (problem.teacher().nrows(), problem.teacher().ncols());
    let dim = m * n;
    let mut k = Mat::<f64>::zeros(dim, dim);
    for (after, before) in net.side_products() {
        let right = mul3(
            c_half.as_ref(),
            mul(before.transpose(), before.as_ref()).as_ref(),
            c_half.as_ref(),
        );
        let left = mul3(
            s_inv_half.as_ref(),
            mul(after.as_ref(), after.transpose()).as_ref(),
            s_inv_half.as_ref(),
        );
        for c in 0..n {
            for a in 0..n {
                let x = right[(a, c)];
                for s in 0..m {
                    for r in 0..m {
                        k[(a * m + r, c * m + s)] += x * left[(r, s)];
                    }
                }
            }
        }
    }
    let eig = sym_eigenvalues(symmetrize(k.as_ref()).as_ref())?;
    let worst = eig
        .iter()
        .map(|&l| (1.0 - lr * l).abs())
        .fold(0.0f64, f64::max);
    Ok(2.0 * worst.ln())
}

/// Runs `steps` steps of an optimizer and records the loss trace.
fn run_trace(
    net: &mut DeepLinear,
    problem: &Problem,
    max_steps: usize,
    mut step: impl FnMut(&mut DeepLinear) -> Result<(f64, f64), Error>,
) -> Result<(Vec<f64>, bool), Error> {
    let initial = net.loss(problem)?;
    let mut losses = vec![initial];
    for _ in 0..max_steps {
        let after = match step(net) {
            Ok((_, after)) => after,
            // A step that produced NaN/infinite weights is a divergence, not
            // an error of the experiment.
            Err(Error::NonFinite(_)) => f64::INFINITY,
            Err(e) => return Err(e),
        };
        losses.push(after);
        if !after.is_finite() || after > DIVERGENCE_FACTOR * initial.max(f64::MIN_POSITIVE) {
            return Ok((losses, true));
        }
        if after < STOP_LOSS {
            break;
        }
    }
    Ok((losses, false))
}

/// One run to execute: everything it needs, owned, so that runs can execute
/// in parallel.
struct Job {
    init: DeepLinear,
    problem: Problem,
    method: Method,
    eta: f64,
    damping: Damping,
    max_steps: usize,
    teacher: TeacherKind,
    init_scale: f64,
    path_min: f64,
}

impl Job {
    fn run(&self) -> Result<RunRecord, Error> {
        match self.method {
            Method::NaturalGradient => natural_gradient_run(
                &self.init,
                &self.problem,
                self.eta,
                self.damping,
                self.max_steps,
                self.teacher,
                self.init_scale,
                self.path_min,
            ),
            Method::GradientDescent => gradient_descent_run(
                &self.init,
                &self.problem,
                self.eta,
                self.max_steps,
                self.teacher,
                self.init_scale,
                self.path_min,
            ),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn ng_job(
    init: &DeepLinear,
    problem: &Problem,
    eta: f64,
    damping: Damping,
    max_steps: usize,
    teacher: TeacherKind,
    init_scale: f64,
    path_min: f64,
) -> Job {
    Job {
        init: init.clone(),
        problem: problem.clone(),
        method: Method::NaturalGradient,
        eta,
        damping,
        max_steps,
        teacher,
        init_scale,
        path_min,
    }
}

#[allow(clippy::too_many_arguments)]
fn gd_job(
    init: &DeepLinear,
    problem: &Problem,
    lr: f64,
    max_steps: usize,
    teacher: TeacherKind,
    init_scale: f64,
    path_min: f64,
) -> Job {
    Job {
        init: init.clone(),
        problem: problem.clone(),
        method: Method::GradientDescent,
        eta: lr,
        damping: Damping::None,
        max_steps,
        teacher,
        init_scale,
        path_min,
    }
}

#[allow(clippy::too_many_arguments)]
fn natural_gradient_run(
    init: &DeepLinear,
    problem: &Problem,
    eta: f64,
    damping: Damping,
    max_steps: usize,
    teacher: TeacherKind,
    init_scale: f64,
    path_min: f64,
) -> Result<RunRecord, Error> {
    let mut net = init.clone();
    let mut opt = LinearNaturalGradient::new(eta, damping)?;
    let (losses, diverged) = run_trace(&mut net, problem, max_steps, |n| {
        let r = opt.step(n, problem)?;
        Ok((r.loss_before, r.loss_after))
    })?;
    Ok(RunRecord {
        depth: init.depth(),
        widths: init.widths(),
        init_scale,
        eta,
        teacher,
        damping,
        path_min_singular: path_min,
        method: Method::NaturalGradient,
        fitted_log_rate: fit_log_rate(&losses),
        predicted_log_rate: 2.0 * (1.0 - eta).ln(),
        steps_to_target: losses.iter().position(|&l| l <= TARGET_LOSS),
        diverged,
        losses,
    })
}

#[allow(clippy::too_many_arguments)]
fn gradient_descent_run(
    init: &DeepLinear,
    problem: &Problem,
    lr: f64,
    max_steps: usize,
    teacher: TeacherKind,
    init_scale: f64,
    path_min: f64,
) -> Result<RunRecord, Error> {
    let mut net = init.clone();
    let (losses, diverged) = run_trace(&mut net, problem, max_steps, |n| {
        gradient_descent_step(n, problem, lr)
    })?;
    let predicted = if diverged {
        f64::NAN
    } else {
        gradient_descent_local_rate(&net, problem, lr)?
    };
    Ok(RunRecord {
        depth: init.depth(),
        widths: init.widths(),
        init_scale,
        eta: lr,
        teacher,
        damping: Damping::None,
        path_min_singular: path_min,
        method: Method::GradientDescent,
        fitted_log_rate: fit_log_rate(&losses),
        predicted_log_rate: predicted,
        steps_to_target: losses.iter().position(|&l| l <= TARGET_LOSS),
        diverged,
        losses,
    })
}

fn scaled_layers(layers: &[Mat<f64>], scale: f64) -> Vec<Mat<f64>> {
    layers.iter().map(|l| l * faer::Scale(scale)).collect()
}

/// The problems shared by every depth: `C` (correlated inputs), `S = I` and the
/// teacher perturbation `R` (Gaussian, entries `N(0, 1/n)`).
struct SharedDraws {
    c: Mat<f64>,
    r: Mat<f64>,
}

fn shared_draws(cfg: &ExperimentConfig, n: usize) -> SharedDraws {
    let mut rng = Rng::new(cfg.seed);
    let c = spd_with_spectrum(&mut rng, &log_spaced(1.0, 1.0 / cfg.input_condition, n));
    let r = gaussian(&mut rng, n, n, 1.0 / (n as f64).sqrt());
    SharedDraws { c, r }
}

/// Runs the experiment.
///
/// Errors: [`Error::InvalidConfig`] for an empty depth list, zero width, a
/// learning rate outside `(0, 1)` or a bad profile.
pub fn run_experiment(cfg: &ExperimentConfig) -> Result<ExperimentReport, Error> {
    if cfg.depths.is_empty() || cfg.depths.contains(&0) || cfg.width == 0 {
        return Err(Error::InvalidConfig(
            "need at least one depth >= 1 and a width >= 1".into(),
        ));
    }
    if cfg
        .etas
        .iter()
        .chain(&cfg.random_teacher_etas)
        .any(|&e| !(e > 0.0 && e < 1.0))
    {
        return Err(Error::InvalidConfig(
            "natural-gradient learning rates must lie in (0, 1)".into(),
        ));
    }
    let n = cfg.width;
    let shared = shared_draws(cfg, n);
    let identity = Mat::<f64>::identity(n, n);
    // The largest eigenvalue of C is 1 by construction (log-spaced spectrum).
    let lambda_max_c = 1.0;
    let mut jobs = Vec::new();

    for &depth in &cfg.depths {
        let mut rng = Rng::new(cfg.seed ^ (depth as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let widths = vec![n; depth + 1];
        let unit_layers = isometric_layers(&mut rng, &widths, 1.0)?;
        let init = DeepLinear::new(unit_layers.clone())?;
        let w0 = init.end_to_end();
        // Near teacher W* = W(0) (I + c R).
        let teacher = &w0 * (&identity + &shared.r * faer::Scale(cfg.near_c));
        let problem = Problem::new(shared.c.clone(), identity.clone(), teacher.clone())?;
        let path_min = path_min_singular(w0.as_ref(), teacher.as_ref(), n)?;
        for &eta in &cfg.etas {
            jobs.push(ng_job(
                &init,
                &problem,
                eta,
                Damping::None,
                cfg.max_ng_steps,
                TeacherKind::Near,
                1.0,
                path_min,
            ));
        }
        // Gradient descent: its stable step is set by the largest curvature,
        // depth x lambda_max(C) at an isometric initialisation.
        let lr = 1.0 / (depth as f64 * lambda_max_c);
        jobs.push(gd_job(
            &init,
            &problem,
            lr,
            cfg.max_gd_steps,
            TeacherKind::Near,
            1.0,
            path_min,
        ));
        let small = DeepLinear::new(scaled_layers(&unit_layers, cfg.small_init_scale))?;
        let small_path = path_min_singular(small.end_to_end().as_ref(), teacher.as_ref(), n)?;
        jobs.push(gd_job(
            &small,
            &problem,
            lr,
            cfg.max_gd_steps,
            TeacherKind::Near,
            cfg.small_init_scale,
            small_path,
        ));

        // Random teacher: Gaussian map with entries N(0, 1/n).
        let random_teacher = gaussian(&mut rng, n, n, 1.0 / (n as f64).sqrt());
        let random_problem =
            Problem::new(shared.c.clone(), identity.clone(), random_teacher.clone())?;
        let random_path = path_min_singular(w0.as_ref(), random_teacher.as_ref(), n)?;
        for &eta in &cfg.random_teacher_etas {
            jobs.push(ng_job(
                &init,
                &random_problem,
                eta,
                Damping::None,
                cfg.max_ng_steps,
                TeacherKind::Random,
                1.0,
                random_path,
            ));
        }
        jobs.push(ng_job(
            &init,
            &random_problem,
            0.1,
            Damping::LevenbergMarquardt { initial: 1.0 },
            cfg.max_ng_steps,
            TeacherKind::Random,
            1.0,
            random_path,
        ));
    }

    if let Some(profile) = &cfg.wide_profile {
        jobs.extend(profile_jobs(cfg, profile, &shared, TeacherKind::Near)?);
    }
    if let Some(profile) = &cfg.bottleneck {
        jobs.extend(profile_jobs(cfg, profile, &shared, TeacherKind::Random)?);
    }

    // Independent runs execute in parallel; each is sequential inside.
    let runs = jobs
        .par_iter()
        .map(Job::run)
        .collect::<Result<Vec<_>, Error>>()?;
    let checks = cfg
        .fisher_profiles
        .par_iter()
        .enumerate()
        .map(|(k, profile)| {
            let mut rng = Rng::new(cfg.seed.wrapping_add(1000 + k as u64));
            let (net, problem) = random_small_problem(&mut rng, profile)?;
            check_against_fisher(&net, &problem)
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(ExperimentReport { runs, checks })
}

/// Natural-gradient runs on a non-uniform profile: a near teacher for an exact
/// profile (`W* = W(0) (I + c R)`), or the product of a random network of the
/// same profile (a bottleneck's maps have rank `min(widths)`).
fn profile_jobs(
    cfg: &ExperimentConfig,
    profile: &[usize],
    shared: &SharedDraws,
    teacher_kind: TeacherKind,
) -> Result<Vec<Job>, Error> {
    if profile.len() < 2 || profile.contains(&0) {
        return Err(Error::InvalidConfig(format!(
            "bad width profile {profile:?}"
        )));
    }
    let (n0, nl) = (profile[0], profile[profile.len() - 1]);
    let mut rng = Rng::new(cfg.seed ^ 0x00B0_771E_4EC4);
    let init = DeepLinear::new(isometric_layers(&mut rng, profile, 1.0)?)?;
    let w0 = init.end_to_end();
    let teacher = match teacher_kind {
        TeacherKind::Near if n0 == cfg.width && nl == cfg.width => {
            &w0 * (Mat::<f64>::identity(n0, n0) + &shared.r * faer::Scale(cfg.near_c))
        }
        TeacherKind::Near => {
            return Err(Error::InvalidConfig(format!(
                "a near-teacher profile must start and end at width {}",
                cfg.width
            )))
        }
        TeacherKind::Random => {
            DeepLinear::new(isometric_layers(&mut rng, profile, 1.0)?)?.end_to_end()
        }
    };
    let c = if n0 == cfg.width {
        shared.c.clone()
    } else {
        spd_with_spectrum(&mut rng, &log_spaced(1.0, 1.0 / cfg.input_condition, n0))
    };
    let problem = Problem::new(c, Mat::<f64>::identity(nl, nl), teacher.clone())?;
    let rank = profile.iter().copied().min().unwrap_or(1);
    let path_min = path_min_singular(w0.as_ref(), teacher.as_ref(), rank)?;
    let mut jobs = Vec::new();
    let steps = if is_exact_profile(profile) {
        cfg.max_ng_steps
    } else {
        cfg.max_bottleneck_steps
    };
    for &eta in &cfg.etas {
        jobs.push(ng_job(
            &init,
            &problem,
            eta,
            Damping::None,
            steps,
            teacher_kind,
            1.0,
            path_min,
        ));
    }
    if teacher_kind == TeacherKind::Random {
        jobs.push(ng_job(
            &init,
            &problem,
            0.1,
            Damping::LevenbergMarquardt { initial: 1.0 },
            steps,
            teacher_kind,
            1.0,
            path_min,
        ));
    }
    Ok(jobs)
}

/// A random well-conditioned network of the given profile (layer singular
/// values uniform in [0.7, 1.3]) with a random problem: `C` and `S` SPD with
/// spectra in [0.5, 2], Gaussian teacher. Used by the brute-force checks.
pub fn random_small_problem(
    rng: &mut Rng,
    widths: &[usize],
) -> Result<(DeepLinear, Problem), Error> {
    if widths.len() < 2 || widths.contains(&0) {
        return Err(Error::InvalidConfig(format!(
            "bad width profile {widths:?}"
        )));
    }
    let layers: Vec<Mat<f64>> = widths
        .windows(2)
        .map(|w| well_conditioned(rng, w[1], w[0], 0.7, 1.3))
        .collect();
    let (n0, nl) = (widths[0], widths[widths.len() - 1]);
    let c = spd_with_spectrum(rng, &log_spaced(2.0, 0.5, n0));
    let s = spd_with_spectrum(rng, &log_spaced(2.0, 0.5, nl));
    let teacher = gaussian(rng, nl, n0, 1.0 / (n0 as f64).sqrt());
    Ok((DeepLinear::new(layers)?, Problem::new(c, s, teacher)?))
}

/// Writes the loss traces as CSV: `step,method,depth,init_scale,excess_loss,
/// eta,teacher,damping,widths` (widths joined by `-`).
pub fn write_csv(report: &ExperimentReport, path: &Path) -> Result<(), Error> {
    let mut out =
        String::from("step,method,depth,init_scale,excess_loss,eta,teacher,damping,widths\n");
    for run in &report.runs {
        let widths: Vec<String> = run.widths.iter().map(|w| w.to_string()).collect();
        let widths = widths.join("-");
        for (step, loss) in run.losses.iter().enumerate() {
            let _ = writeln!(
                out,
                "{step},{},{},{},{:e},{},{},{},{widths}",
                method_name(run.method),
                run.depth,
                run.init_scale,
                loss,
                run.eta,
                teacher_name(run.teacher),
                damping_name(run.damping),
            );
        }
    }
    std::fs::write(path, out).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}
