//! One optimizer's run against the clock: the data it reads, the training
//! loop (minibatch steps, evaluation with the clock stopped, checkpoints) and
//! its result; and a race's result, the runs of every optimizer for one seed.

use crate::app::args::MAX_BUDGET_SECS;
use crate::app::settings::{Hyper, OptimizerKind};
use crate::data::{Dataset, Images, Standardizer};
use crate::mlp::{Likelihood, Mlp};
use crate::optim::Optimizer;
use crate::workspace::Workspace;
use crate::Error;
use natgrad_kernels::rng::Rng;
use natgrad_kernels::{MatRef, Par};
use std::time::{Duration, Instant};

/// The data of one preset: the dataset's images read as the network's
/// inputs (see [`crate::data::Images`]: bytes widened a minibatch at a time).
/// The targets are the inputs (autoencoding); nothing is copied.
#[derive(Clone, Copy, Debug)]
pub struct Prepared<'a> {
    /// Training inputs.
    pub train: Images<'a>,
    /// Test (or, for `natgrad tune`, validation) inputs.
    pub test: Images<'a>,
    /// Features per example.
    pub features: usize,
    /// Training examples.
    pub train_count: usize,
    /// Test examples.
    pub test_count: usize,
}

/// Autoencoding data for `net`: Gaussian nets (the `paper` preset) see inputs
/// and targets standardised with the training set's mean and standard
/// deviation (the paper's setting); Bernoulli nets (the `deep` preset) see raw
/// intensities in [0, 1], the targets' natural range.
///
/// # Errors
/// [`Error::Shape`] if the images do not have the network's input and output
/// width, a split is empty, or a split's lengths disagree (its fields are
/// public: see [`crate::data::Split::check`]).
pub fn prepare<'a>(data: &'a Dataset, net: &Mlp) -> Result<Prepared<'a>, Error> {
    let features = data.train.features();
    if features != net.input_size() || features != net.output_size() {
        return Err(Error::Shape(format!(
            "the dataset has {features} features per example, the autoencoder takes {} and outputs {}",
            net.input_size(),
            net.output_size()
        )));
    }
    if data.test.features() != features {
        return Err(Error::Shape(format!(
            "the test images have {} pixels, the training images {features}",
            data.test.features()
        )));
    }
    if data.train.count == 0 || data.test.count == 0 {
        return Err(Error::Shape(format!(
            "the dataset has {} training and {} test images; both must be positive",
            data.train.count, data.test.count
        )));
    }
    let standardizer = if net.likelihood() == Likelihood::Gaussian {
        Some(Standardizer::fit(&data.train)?)
    } else {
        None
    };
    Ok(Prepared {
        train: Images::new(&data.train, standardizer.as_ref())?,
        test: Images::new(&data.test, standardizer.as_ref())?,
        features,
        train_count: data.train.count,
        test_count: data.test.count,
    })
}

/// Mean loss of `net` on `images` as inputs and targets, widened into `buf`
/// a chunk of the workspace's maximum batch at a time: the same chunks, so
/// the same value, as [`Mlp::evaluate`] on the whole matrix.
pub(crate) fn mean_loss(
    net: &Mlp,
    ws: &mut Workspace,
    images: Images<'_>,
    buf: &mut [f32],
) -> Result<f64, Error> {
    let (n, f) = (images.count(), images.features());
    let chunk = ws.max_batch();
    let mut total = 0.0;
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let x = &mut buf[..len * f];
        images.widen(start, x)?;
        let x = MatRef::from_column_major_slice(x, f, len);
        net.forward(ws, x)?;
        total += net.loss(ws, x, false)? * len as f64;
        start += len;
    }
    Ok(total / n as f64)
}

/// One point of a learning curve.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CurvePoint {
    /// Steps taken.
    pub step: u64,
    /// Examples seen.
    pub examples: u64,
    /// Training seconds (evaluation excluded).
    pub seconds: f64,
    /// Loss on a fixed training subset.
    pub train_loss: f64,
    /// Loss on the test set.
    pub test_loss: f64,
}

/// The outcome of one optimizer's run.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// The optimizer.
    pub kind: OptimizerKind,
    /// Its settings.
    pub hyper: Hyper,
    /// The learning curve, first point at step 0.
    pub curve: Vec<CurvePoint>,
    /// Median wall-clock time of one step, milliseconds.
    pub median_step_ms: f64,
    /// Steps whose update was refused with an error (counted, not fatal).
    pub failed_steps: u64,
    /// Checkpoint saves that failed (reported, not fatal).
    pub failed_saves: u64,
}

impl RunResult {
    /// The last point of the curve.
    pub fn last(&self) -> CurvePoint {
        *self.curve.last().expect("a curve has its initial point")
    }
    /// The first training time at which the test loss reached `target`, linearly
    /// interpolated between evaluations; `None` if it never did.
    pub fn time_to(&self, target: f64) -> Option<f64> {
        let c = &self.curve;
        if c[0].test_loss <= target {
            return Some(0.0);
        }
        c.windows(2).find(|w| w[1].test_loss <= target).map(|w| {
            let (a, b) = (w[0], w[1]);
            let f = (a.test_loss - target) / (a.test_loss - b.test_loss);
            a.seconds + f * (b.seconds - a.seconds)
        })
    }
}

/// Settings of one run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Training budget in seconds.
    pub budget_secs: f64,
    /// Training seconds between evaluations.
    pub eval_every_secs: f64,
    /// Seed of the initial weights and of the data order.
    pub seed: u64,
    /// Kernel parallelism.
    pub par: Par,
    /// Periodic checkpoints of this run, if any.
    pub checkpoint: Option<CheckpointPlan>,
}

/// Where and how often a run saves its state, and whether it resumes from it.
#[derive(Clone, Debug)]
pub struct CheckpointPlan {
    /// The checkpoint file of this run.
    pub path: std::path::PathBuf,
    /// Where earlier versions saved it (`DIR/<preset>/checkpoints/` when
    /// racing several presets), looked at on resume if `path` does not exist.
    pub legacy_path: Option<std::path::PathBuf>,
    /// Training seconds between saves.
    pub every_secs: f64,
    /// Continue from `path` if it exists.
    pub resume: bool,
    /// The preset raced (`paper`, `deep`), recorded in the checkpoint and
    /// checked on resume.
    pub preset: String,
}

impl CheckpointPlan {
    /// The checkpoint to resume from: `path`, else `legacy_path`, if either
    /// exists (as anything: a directory there is refused by the load).
    pub fn existing(&self) -> Option<&std::path::Path> {
        std::iter::once(&self.path)
            .chain(&self.legacy_path)
            .find(|p| p.symlink_metadata().is_ok())
            .map(|p| p.as_path())
    }
}

/// The code of a preset in a checkpoint's progress record.
fn preset_code(preset: &str) -> u64 {
    match preset {
        "paper" => 0,
        "deep" => 1,
        "published" => 2,
        _ => u64::MAX,
    }
}

fn preset_name(code: u64) -> String {
    match code {
        0 => "paper".into(),
        1 => "deep".into(),
        2 => "published".into(),
        c => format!("unknown preset #{c}"),
    }
}

/// Loads the checkpoint at `path` for a resume of this run and checks that it
/// was saved by the same run: seed, preset, batch, architecture (widths,
/// activations, likelihood) and, through [`Optimizer::load_state`], the
/// optimizer's settings. Returns the checkpoint and `opt` loaded from it.
///
/// # Errors
/// [`Error::InvalidConfig`] naming every difference (nothing is loaded into
/// `opt` then); the errors of [`crate::checkpoint::load`].
pub(super) fn load_for_resume(
    path: &std::path::Path,
    plan: &CheckpointPlan,
    seed: u64,
    batch: usize,
    net: &Mlp,
    opt: &mut dyn Optimizer,
) -> Result<crate::checkpoint::Checkpoint, Error> {
    let ck = crate::checkpoint::load(path)?;
    let mut differences = Vec::new();
    let mut compare = |what: &str, saved: Option<String>, now: String| match saved {
        Some(saved) if saved == now => {}
        Some(saved) => differences.push(format!("{what} {saved} (saved) vs {now} (this run)")),
        None => differences.push(format!("{what} not recorded (this run: {now})")),
    };
    compare(
        "seed",
        ck.progress_value("seed").map(|v| v.to_string()),
        seed.to_string(),
    );
    compare(
        "preset",
        ck.progress_value("preset").map(preset_name),
        plan.preset.clone(),
    );
    compare(
        "batch",
        ck.progress_value("batch").map(|v| v.to_string()),
        batch.to_string(),
    );
    let architecture = |n: &Mlp| {
        format!(
            "{:?} {:?} {:?}",
            n.sizes(),
            n.layers().iter().map(|l| l.activation).collect::<Vec<_>>(),
            n.likelihood()
        )
    };
    compare(
        "architecture",
        Some(architecture(&ck.net)),
        architecture(net),
    );
    let refuse = |what: String| {
        Error::InvalidConfig(format!(
            "{}: cannot resume: the checkpoint was saved by another run: {what}; resume with \
             that run's flags, or remove the checkpoint to start afresh",
            path.display()
        ))
    };
    if !differences.is_empty() {
        return Err(refuse(differences.join(", ")));
    }
    opt.load_state(&ck.optimizer).map_err(|e| match e {
        Error::InvalidConfig(m) => refuse(m),
        other => other,
    })?;
    Ok(ck)
}

/// The race loop's own state, saved beside the network and optimizer.
struct LoopState {
    steps: u64,
    examples: u64,
    failed: u64,
    cursor: usize,
    /// RNG state at the start of the current epoch (the order is rebuilt from it).
    epoch_rng: [u64; 4],
    trained: Duration,
    next_eval: f64,
    curve: Vec<CurvePoint>,
}

impl LoopState {
    fn to_progress(&self, identity: [(&str, u64); 3]) -> Vec<(String, u64)> {
        let mut p: Vec<(String, u64)> = identity.iter().map(|&(k, v)| (k.to_string(), v)).collect();
        p.extend([
            ("steps".to_string(), self.steps),
            ("examples".into(), self.examples),
            ("failed".into(), self.failed),
            ("cursor".into(), self.cursor as u64),
            ("trained_nanos".into(), self.trained.as_nanos() as u64),
            ("next_eval".into(), self.next_eval.to_bits()),
        ]);
        p.extend(self.epoch_rng.iter().map(|&w| ("epoch_rng".to_string(), w)));
        for c in &self.curve {
            p.push(("curve.step".into(), c.step));
            p.push(("curve.examples".into(), c.examples));
            p.push(("curve.seconds".into(), c.seconds.to_bits()));
            p.push(("curve.train_loss".into(), c.train_loss.to_bits()));
            p.push(("curve.test_loss".into(), c.test_loss.to_bits()));
        }
        p
    }

    fn from_progress(p: &[(String, u64)], path: &std::path::Path) -> Result<LoopState, Error> {
        let bad = |what: &str| Error::Format {
            path: path.to_path_buf(),
            detail: format!("the race progress record is missing or has a bad {what}"),
        };
        let get = |k: &str| {
            p.iter()
                .find(|(n, _)| n == k)
                .map(|&(_, v)| v)
                .ok_or_else(|| bad(k))
        };
        let all = |k: &str| {
            p.iter()
                .filter(|(n, _)| n == k)
                .map(|&(_, v)| v)
                .collect::<Vec<_>>()
        };
        let rng = all("epoch_rng");
        let epoch_rng: [u64; 4] = rng.try_into().map_err(|_| bad("epoch_rng"))?;
        let cols = [
            "curve.step",
            "curve.examples",
            "curve.seconds",
            "curve.train_loss",
            "curve.test_loss",
        ]
        .map(all);
        if cols.iter().any(|c| c.len() != cols[0].len()) || cols[0].is_empty() {
            return Err(bad("curve"));
        }
        let curve = (0..cols[0].len())
            .map(|i| CurvePoint {
                step: cols[0][i],
                examples: cols[1][i],
                seconds: f64::from_bits(cols[2][i]),
                train_loss: f64::from_bits(cols[3][i]),
                test_loss: f64::from_bits(cols[4][i]),
            })
            .collect();
        Ok(LoopState {
            steps: get("steps")?,
            examples: get("examples")?,
            failed: get("failed")?,
            cursor: get("cursor")? as usize,
            trained: Duration::from_nanos(get("trained_nanos")?),
            next_eval: f64::from_bits(get("next_eval")?),
            epoch_rng,
            curve,
        })
    }
}

/// Trains a fresh copy of `initial` with `hyper` on `data` for the budget,
/// in one go (the sequential clock): [`Run::start`], [`Run::advance`] to the
/// end, [`Run::finish`]. `progress` is called after every evaluation with
/// the new point.
pub fn run_one(
    kind: OptimizerKind,
    hyper: Hyper,
    initial: &Mlp,
    data: &Prepared<'_>,
    opts: &RunOptions,
    progress: &mut dyn FnMut(&CurvePoint, u64),
) -> Result<RunResult, Error> {
    let mut run = Run::start(kind, hyper, initial, data, opts, progress)?;
    run.advance(Duration::MAX, progress)?;
    Ok(run.finish())
}

/// The budget as a `Duration`, refused beyond [`MAX_BUDGET_SECS`].
fn budget_duration(secs: f64) -> Result<Duration, Error> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|_| secs <= MAX_BUDGET_SECS)
        .ok_or_else(|| {
            Error::InvalidConfig(format!(
                "the budget must be positive seconds up to {MAX_BUDGET_SECS:e}, got {secs}"
            ))
        })
}

/// One optimizer's run in progress: its own copy of the network, its
/// optimizer and workspace, its place in the data and its own clock, which
/// counts only its training steps (evaluation and checkpoints are off the
/// clock). A race advances its runs a slice at a time, in turn (the
/// interleaved clock), or each to its end before the next starts.
pub struct Run<'a> {
    kind: OptimizerKind,
    hyper: Hyper,
    net: Mlp,
    ws: Workspace,
    opt: Box<dyn Optimizer>,
    data: Prepared<'a>,
    /// A fixed training subset as large as the test set, for the training loss.
    sub: Images<'a>,
    /// The only f32 copies of the data: one minibatch and one evaluation chunk.
    xb: Vec<f32>,
    eval_buf: Vec<f32>,
    batch: usize,
    order: Vec<usize>,
    rng: Rng,
    st: LoopState,
    step_times: Vec<f64>,
    budget: Duration,
    eval_every_secs: f64,
    checkpoint: Option<CheckpointPlan>,
    identity: [(&'static str, u64); 3],
    next_save: Option<f64>,
    failed_saves: u64,
}

impl<'a> Run<'a> {
    /// Builds the run (resuming from its checkpoint when `opts` says so) and
    /// evaluates its starting point, reported to `progress`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a budget that is not positive or beyond
    /// [`MAX_BUDGET_SECS`], or a checkpoint saved by another run; the errors
    /// of building the workspace and optimizer, and of loading the checkpoint.
    pub fn start(
        kind: OptimizerKind,
        hyper: Hyper,
        initial: &Mlp,
        data: &Prepared<'a>,
        opts: &RunOptions,
        progress: &mut dyn FnMut(&CurvePoint, u64),
    ) -> Result<Run<'a>, Error> {
        let budget = budget_duration(opts.budget_secs)?;
        let mut net = initial.clone();
        let b = hyper.batch().min(data.train_count);
        let eval_batch = 1000.min(data.test_count.max(1));
        let ws = Workspace::new(&net, b.max(eval_batch), opts.par)?;
        let mut opt = hyper.build(&net, b)?;
        let f = data.features;
        let sub = data
            .train
            .range(0, data.train_count.min(data.test_count.max(1)))?;
        let mut order: Vec<usize> = (0..data.train_count).collect();
        let mut rng = Rng::new(opts.seed ^ 0x5eed_da7a);
        let mut resumed = None;
        if let Some(plan) = opts.checkpoint.as_ref().filter(|p| p.resume) {
            // A missing checkpoint is reported by `check_resumes` before the race.
            if let Some(path) = plan.existing() {
                let ck = load_for_resume(path, plan, opts.seed, b, &net, opt.as_mut())?;
                net = ck.net;
                resumed = Some(LoopState::from_progress(&ck.progress, path)?);
            }
        }
        let identity = [
            ("seed", opts.seed),
            (
                "preset",
                preset_code(opts.checkpoint.as_ref().map_or("", |p| &p.preset)),
            ),
            ("batch", b as u64),
        ];
        let fresh = resumed.is_none();
        let st = match resumed {
            Some(st) => {
                rng = Rng::from_state(st.epoch_rng);
                rng.shuffle(&mut order);
                if st.cursor > order.len() {
                    return Err(Error::Shape(
                        "the checkpoint's data cursor is past the dataset's end".into(),
                    ));
                }
                st
            }
            None => {
                let epoch_rng = rng.state();
                rng.shuffle(&mut order);
                LoopState {
                    steps: 0,
                    examples: 0,
                    failed: 0,
                    cursor: 0,
                    epoch_rng,
                    trained: Duration::ZERO,
                    next_eval: opts.eval_every_secs,
                    curve: Vec::new(),
                }
            }
        };
        let mut run = Run {
            kind,
            hyper,
            eval_buf: vec![0.0f32; f * ws.max_batch()],
            net,
            ws,
            opt,
            data: *data,
            sub,
            xb: vec![0.0f32; f * b],
            batch: b,
            order,
            rng,
            next_save: opts
                .checkpoint
                .as_ref()
                .map(|p| st.trained.as_secs_f64() + p.every_secs),
            st,
            step_times: Vec::with_capacity(1 << 16),
            budget,
            eval_every_secs: opts.eval_every_secs,
            checkpoint: opts.checkpoint.clone(),
            identity,
            failed_saves: 0,
        };
        if fresh {
            run.record_point()?;
        }
        progress(
            run.st.curve.last().expect("a curve has its initial point"),
            run.st.steps,
        );
        Ok(run)
    }

    /// Whether the run has used its budget (or stopped early, diverged).
    pub fn done(&self) -> bool {
        self.st.trained >= self.budget
    }

    /// The optimizer.
    pub fn kind(&self) -> OptimizerKind {
        self.kind
    }

    /// Seconds on the run's own clock so far (its training steps only).
    pub fn trained_secs(&self) -> f64 {
        self.st.trained.as_secs_f64()
    }

    /// Trains until the run's own clock has advanced by at least `slice`
    /// (a step is never cut) or the budget is used; evaluates (off the
    /// clock) whenever an evaluation falls due, reporting each point to
    /// `progress`, and saves checkpoints as planned.
    ///
    /// # Errors
    /// Those of gathering the data and of evaluating; a refused optimizer
    /// step is counted in [`RunResult::failed_steps`], not returned.
    pub fn advance(
        &mut self,
        slice: Duration,
        progress: &mut dyn FnMut(&CurvePoint, u64),
    ) -> Result<(), Error> {
        let until = self.st.trained.saturating_add(slice).min(self.budget);
        while self.st.trained < until {
            self.train_step()?;
            if self.st.trained.as_secs_f64() >= self.st.next_eval || self.done() {
                self.st.next_eval += self.eval_every_secs;
                self.record_point()?;
                let p = *self.st.curve.last().expect("just recorded");
                progress(&p, self.st.steps);
            }
            self.save_if_due();
        }
        Ok(())
    }

    /// One minibatch: gathered, stepped and timed (only the step is on the clock
    /// besides the gather, as it always was).
    fn train_step(&mut self) -> Result<(), Error> {
        let (b, f) = (self.batch, self.data.features);
        let st = &mut self.st;
        if st.cursor + b > self.order.len() {
            self.order.iter_mut().enumerate().for_each(|(i, o)| *o = i);
            st.epoch_rng = self.rng.state();
            self.rng.shuffle(&mut self.order);
            st.cursor = 0;
        }
        let idx = &self.order[st.cursor..st.cursor + b];
        st.cursor += b;
        let t0 = Instant::now();
        self.data.train.gather(idx, &mut self.xb)?;
        let x = MatRef::from_column_major_slice(&self.xb, f, b);
        // Autoencoding: the targets are the inputs.
        let outcome = self.opt.step(&mut self.net, &mut self.ws, x, x);
        let dt = t0.elapsed();
        st.trained += dt;
        self.step_times.push(dt.as_secs_f64());
        st.steps += 1;
        st.examples += b as u64;
        if outcome.is_err() {
            // A refused step (non-finite gradient, factor that would not
            // factorise) is counted; a run where most steps fail has diverged
            // and stops early, its curve showing where.
            st.failed += 1;
            if st.failed > 20 && st.failed * 2 > st.steps {
                st.trained = self.budget;
            }
        }
        Ok(())
    }

    /// Evaluates the network (off the clock) and appends the point to the curve.
    fn record_point(&mut self) -> Result<(), Error> {
        let train_loss = mean_loss(&self.net, &mut self.ws, self.sub, &mut self.eval_buf)?;
        let test_loss = mean_loss(&self.net, &mut self.ws, self.data.test, &mut self.eval_buf)?;
        self.st.curve.push(CurvePoint {
            step: self.st.steps,
            examples: self.st.examples,
            seconds: self.st.trained.as_secs_f64(),
            train_loss,
            test_loss,
        });
        Ok(())
    }

    /// Saves the checkpoint when one is due (or the budget is used). A failed
    /// save (disk full, read-only folder) is reported once and training goes
    /// on; the previous checkpoint is intact.
    fn save_if_due(&mut self) {
        let (Some(plan), Some(at)) = (&self.checkpoint, self.next_save) else {
            return;
        };
        if self.st.trained.as_secs_f64() < at && !self.done() {
            return;
        }
        self.next_save = Some(at + plan.every_secs);
        let ck = crate::checkpoint::Checkpoint::capture(
            &self.net,
            self.opt.as_ref(),
            self.st.to_progress(self.identity),
        );
        if let Err(e) = crate::checkpoint::save(&plan.path, &ck) {
            if self.failed_saves == 0 {
                eprintln!(
                    "natgrad: warning: checkpoint not saved: {e}; training goes on \
                     and the previous checkpoint, if any, is kept"
                );
            }
            self.failed_saves += 1;
        }
    }

    /// The run's result: its curve, median step time and counts.
    pub fn finish(mut self) -> RunResult {
        if self.step_times.is_empty() {
            self.step_times.push(f64::NAN);
        }
        RunResult {
            kind: self.kind,
            hyper: self.hyper,
            median_step_ms: 1e3 * crate::app::bench::median(&mut self.step_times),
            curve: self.st.curve,
            failed_steps: self.st.failed,
            failed_saves: self.failed_saves,
        }
    }
}

/// How the optimizers of a race share the machine's time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// The optimizers train in turns of a short slice (about half a second
    /// of their own training time), so that a change in the host's load falls
    /// on all of them alike. The default.
    Interleaved,
    /// Each optimizer trains its whole budget before the next starts (a load
    /// change lands on whichever optimizer is running).
    Sequential,
}

impl Clock {
    /// `interleaved` or `sequential`.
    pub fn name(self) -> &'static str {
        match self {
            Clock::Interleaved => "interleaved",
            Clock::Sequential => "sequential",
        }
    }

    /// The training time each optimizer gets per turn under this clock for
    /// a budget of `budget_secs`: half a second, or a twentieth of the budget
    /// when that is shorter (so that short races interleave too); the whole
    /// budget under [`Clock::Sequential`].
    pub fn slice_secs(self, budget_secs: f64) -> f64 {
        match self {
            Clock::Interleaved => (budget_secs / 20.0).min(0.5),
            Clock::Sequential => budget_secs,
        }
    }

    /// One sentence on how the clocks were taken, for the summary.
    pub fn description(self, budget_secs: f64) -> String {
        let common = "each optimizer's clock counts only its own training steps; \
                      evaluation and checkpoints are off the clock";
        match self {
            Clock::Interleaved => format!(
                "interleaved clock: the optimizers trained in turns of {:.2} s each; {common}",
                self.slice_secs(budget_secs)
            ),
            Clock::Sequential => {
                format!("sequential clock: one optimizer after another; {common}")
            }
        }
    }
}

/// The race of one preset and one seed: every optimizer in `kinds`.
pub struct RaceResult {
    /// `"paper"` or `"deep"`.
    pub preset: String,
    /// The dataset's name.
    pub dataset: String,
    /// The network's widths, joined by `-` (the preset's or `--sizes`).
    pub network: String,
    /// The seed of the initial weights and data order.
    pub seed: u64,
    /// The budget each run had.
    pub budget_secs: f64,
    /// Threads the kernels ran on.
    pub threads: usize,
    /// How the runs shared the machine.
    pub clock: Clock,
    /// One result per optimizer.
    pub runs: Vec<RunResult>,
}

impl RaceResult {
    /// SGD's final test loss, the target the others race to.
    pub fn target_loss(&self) -> Option<f64> {
        self.runs
            .iter()
            .find(|r| r.kind == OptimizerKind::Sgd)
            .map(|r| r.last().test_loss)
    }
    /// Seconds each optimizer needed to reach the target.
    pub fn time_to_target(&self, kind: OptimizerKind) -> Option<f64> {
        let target = self.target_loss()?;
        self.runs.iter().find(|r| r.kind == kind)?.time_to(target)
    }
    /// SGD's time to its own final loss divided by `kind`'s time to it.
    pub fn speedup_vs_sgd(&self, kind: OptimizerKind) -> Option<f64> {
        let sgd = self.time_to_target(OptimizerKind::Sgd)?;
        let other = self.time_to_target(kind)?;
        Some(sgd / other.max(1e-9))
    }
}
