//! The online natural gradient (docs/math.md sections 2 and 3).
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
//!
//! The optimizer's parts: its settings ([`NaturalGradientConfig`],
//! `config.rs`); its state, the per-layer factors, Cholesky factors or
//! inverses, running averages and scratch with the damping and the step
//! counter (the [`KroneckerPreconditioner`] it is built on, `kronecker.rs`),
//! and the Fisher sampling's buffers and stream (`FisherSampler`,
//! `fisher.rs`); the plan of a step (`StepPlan`: the schedule, the
//! minibatch, the step size, whether the damping is checked, and per layer
//! the form of the update, low-rank, Gram or full, in its `LayerPlan`); and
//! the step's phases, one method each: `loss_and_gradient`, `plan_step`,
//! `sample_backward_factors`, `factorise`, `precondition`, `apply_update`,
//! `check_damping` (with `adapt_damping`).

use super::config::{DampingAdaptation, NaturalGradientConfig};
use super::fisher::FisherSampler;
use super::kronecker::{
    gram_applies, layers_per_task, scale_rows_by_inverse_square, validate_config,
    KroneckerPreconditioner, LayerPlan, LayerState, Schedule, MAX_DAMPING_RETRIES,
};
use super::{
    add_and_check_finite, check_grads_finite, check_net_shapes, check_range, Optimizer,
    OptimizerState, StepStats,
};
use crate::mlp::{all_finite, Likelihood, Mlp};
use crate::workspace::{view, view_mut, Workspace};
use crate::Error;
use faer::reborrow::{Reborrow, ReborrowMut};
use natgrad_kernels::gemm::gemm;
use natgrad_kernels::rng::Rng;
use natgrad_kernels::syrk::syrk_lower_trapezoidal;
use natgrad_kernels::trsm::{solve_llt_left_in_place, solve_llt_right_in_place};
use natgrad_kernels::vector::{add_and_penalty_change, dot_f64};
use natgrad_kernels::{MatMut, MatRef, MemStack, Par};
use rayon::prelude::*;
use std::time::Instant;

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

/// Flops of three phases of the last [`NaturalGradient::step`]
/// ([`NaturalGradient::last_phase_flops`]; the fields name the phases of
/// [`PhaseSecs`]), counted as the kernels compute them: 2 per multiply-add,
/// the triangle-aware kernels (covariance accumulation, Cholesky, the solves,
/// the explicit inverse) on the triangle they touch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PhaseFlops {
    /// The backward pass from sampled targets (its GEMMs, `2 n_in n_out b`
    /// for every layer above the first, per sample) and the backward
    /// factors' accumulation; a Gaussian output layer's factor drawn as a
    /// Wishart matrix counts its product `L L^T` of the Bartlett factor, and
    /// a penultimate error drawn directly counts `W^T W`, its Cholesky factor
    /// and `C z` in place of the output layer's GEMM. Drawing random numbers
    /// is not counted.
    pub sampled_backward: f64,
    /// The forward factors' accumulation and the factorisations (Cholesky,
    /// explicit inverses, Gram matrices).
    pub factorise: f64,
    /// The preconditioned update and its inner product with the gradient.
    pub precondition: f64,
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
    /// The state: per layer the factors, Cholesky factors or inverses,
    /// update and scratch (each with its [`LayerPlan`]), with the settings,
    /// the damping and the step counter.
    pub(crate) pre: KroneckerPreconditioner,
    pub(crate) sizes: Vec<usize>,
    /// The Fisher sampling's buffers and random stream.
    pub(crate) sampler: FisherSampler,
    pub(crate) phases: PhaseSecs,
    /// The plan of the last successful step (for [`NaturalGradient::last_phase_flops`]).
    pub(crate) last_plan: Option<StepPlan>,
    /// How the last step sampled its backward factors: the output layer's
    /// `G` drawn as a Wishart matrix, and the penultimate layer's error drawn
    /// directly (for [`NaturalGradient::last_phase_flops`]).
    pub(crate) last_sampling: (bool, bool),
}

/// What one step computes, decided at its start by
/// [`NaturalGradient::plan_step`] (each layer's form of the update, low-rank,
/// Gram or full, is in its [`LayerState::plan`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepPlan {
    /// Whether statistics are collected, the decay, whether the factors are
    /// refreshed or follow by rank updates.
    pub(crate) schedule: Schedule,
    /// The minibatch's columns.
    pub(crate) batch: usize,
    /// The kernels' parallelism.
    pub(crate) par: Par,
    /// Whether the output layer's backward factor is the exact diagonal.
    pub(crate) out_diag: bool,
    /// The step size `eta` (divided by the depth when so configured).
    pub(crate) eta: f32,
    /// Whether the Levenberg-Marquardt rule checks this step.
    pub(crate) lm_check: bool,
}

impl NaturalGradient {
    /// An optimizer for `net` at minibatches of up to `max_batch` columns.
    /// Allocates every buffer a step will need.
    pub fn new(
        net: &Mlp,
        max_batch: usize,
        config: NaturalGradientConfig,
    ) -> Result<NaturalGradient, Error> {
        validate_config(&config, max_batch)?;
        super::check_buffer_sizes(net, max_batch)?;
        Ok(NaturalGradient {
            pre: KroneckerPreconditioner::from_states(
                config,
                layer_states(net, max_batch, &config),
                max_batch,
            ),
            sizes: net.sizes(),
            sampler: FisherSampler::new(net, max_batch, &config),
            phases: PhaseSecs::default(),
            last_plan: None,
            last_sampling: (false, false),
        })
    }

    /// The settings.
    pub fn config(&self) -> &NaturalGradientConfig {
        &self.pre.config
    }
    /// The current damping `g`.
    pub fn damping(&self) -> f32 {
        self.pre.damping
    }
    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.pre.steps
    }
    /// Where the time of the last successful step went, phase by phase.
    pub fn last_phase_secs(&self) -> PhaseSecs {
        self.phases
    }
    /// Flops of the last successful step's phases whose work depends on each
    /// layer's form of the update (see [`PhaseFlops`]); `None` before the
    /// first step, or when the step followed the Cholesky factors by rank
    /// updates (not counted). Divide by [`NaturalGradient::last_phase_secs`]
    /// for each phase's rate.
    ///
    /// ```
    /// use natgrad::mlp::{Init, Likelihood, Mlp};
    /// use natgrad::optim::{NaturalGradient, NaturalGradientConfig, Optimizer};
    /// use natgrad::workspace::Workspace;
    /// use natgrad::kernels::{Activation, MatRef, Par};
    ///
    /// let mut net = Mlp::new(&[8, 4, 8], &[Activation::Tanh, Activation::Identity],
    ///                        Likelihood::Bernoulli, Init::GlorotUniform, 1).unwrap();
    /// let mut ws = Workspace::new(&net, 16, Par::Seq).unwrap();
    /// let mut opt = NaturalGradient::new(&net, 16, NaturalGradientConfig::default()).unwrap();
    /// assert!(opt.last_phase_flops().is_none());
    /// let data: Vec<f32> = (0..8 * 16).map(|i| (i % 3) as f32 / 2.0).collect();
    /// let x = MatRef::from_column_major_slice(&data, 8, 16);
    /// opt.step(&mut net, &mut ws, x, x).unwrap();
    /// let flops = opt.last_phase_flops().unwrap();
    /// assert!(flops.factorise > 0.0 && flops.precondition > 0.0);
    /// ```
    pub fn last_phase_flops(&self) -> Option<PhaseFlops> {
        let plan = self.last_plan?;
        let config = &self.pre.config;
        let Schedule {
            statistics,
            refresh,
            rank_update,
            ..
        } = plan.schedule;
        let (wishart, direct) = if statistics {
            self.last_sampling
        } else {
            (false, false)
        };
        let b = plan.batch;
        let samples = config.samples as f64;
        let layers: Vec<(f64, f64)> = self
            .sizes
            .windows(2)
            .map(|w| (w[0] as f64, w[1] as f64))
            .collect();
        let last = layers.len() - 1;
        let mut flops = [0.0f64; 3];
        if statistics {
            // The input gradients from the top layer drawn down to layer 1;
            // a direct draw starts at the penultimate layer, by `C z`.
            let top = if direct { last.saturating_sub(1) } else { last };
            let mut pass: f64 = layers[1..=top]
                .iter()
                .map(|&(n_in, n_out)| 2.0 * n_in * n_out * b as f64)
                .sum();
            if direct {
                let (n, m) = layers[last];
                pass += n * (n + 1.0) * b as f64;
                // W^T W and its Cholesky factor, once per step.
                flops[0] += n * (n + 1.0) * m + n * n * n / 3.0;
            }
            flops[0] += samples * pass;
        }
        for (l, st) in self.pre.layers.iter().enumerate() {
            let f = st.phase_flops(b, statistics, refresh, rank_update)?;
            let backward_factor = if wishart && l == last {
                // L L^T for the n x min(n, b) lower-trapezoidal Bartlett factor.
                let (n, c) = (st.n_out, st.n_out.min(b));
                (0..n)
                    .map(|j| 2.0 * ((n - j) * (j + 1).min(c)) as f64)
                    .sum()
            } else {
                f.backward_factor
            };
            flops[0] += samples * backward_factor;
            flops[1] += f.factorise;
            flops[2] += f.precondition;
        }
        Some(PhaseFlops {
            sampled_backward: flops[0],
            factorise: flops[1],
            precondition: flops[2],
        })
    }
    /// The largest minibatch this optimizer takes.
    pub fn max_batch(&self) -> usize {
        self.pre.max_batch
    }
    /// The forward factor `A_i` of layer `i` (0-based), `(n_{i-1}+1)^2`,
    /// column-major; only its lower triangle is meaningful.
    pub fn forward_factor(&self, i: usize) -> MatRef<'_, f32> {
        let s = &self.pre.layers[i];
        MatRef::from_column_major_slice(&s.a_factor, s.n_in1, s.n_in1)
    }
    /// The backward factor `G_i` of layer `i` (0-based), lower triangle meaningful.
    pub fn backward_factor(&self, i: usize) -> MatRef<'_, f32> {
        let s = &self.pre.layers[i];
        MatRef::from_column_major_slice(&s.g_factor, s.n_out, s.n_out)
    }
    /// The last update `dW_i` of layer `i` (0-based), `n_i x (n_{i-1}+1)`.
    pub fn last_update(&self, i: usize) -> MatRef<'_, f32> {
        let s = &self.pre.layers[i];
        MatRef::from_column_major_slice(&s.delta, s.n_out, s.n_in1)
    }

    /// Every piece of state a checkpoint must keep, as flat f32 buffers in a fixed
    /// order (per layer: A, G, chol A, chol G), plus the scalars.
    pub fn state_buffers(&self) -> impl Iterator<Item = &[f32]> {
        self.pre.layers.iter().flat_map(|s| {
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
        self.pre.layers.iter_mut().flat_map(|s| {
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
        (
            self.sampler.rng.state(),
            self.pre.damping,
            self.pre.steps,
            self.pre.stale,
        )
    }
    /// Restores what [`NaturalGradient::scalar_state`] returned.
    pub fn set_scalar_state(
        &mut self,
        rng: [u64; 4],
        damping: f32,
        steps: u64,
        stale: bool,
    ) -> Result<(), Error> {
        let (lo, hi) = self.pre.config.damping_bounds;
        check_range("damping", damping, lo, hi, false)?;
        self.sampler.rng = Rng::from_state(rng);
        self.pre.damping = damping;
        self.pre.steps = steps;
        self.pre.stale = stale;
        Ok(())
    }

    pub(crate) fn step_scale(&self, num_layers: usize) -> f32 {
        if self.pre.config.scale_by_depth {
            self.pre.config.learning_rate / num_layers as f32
        } else {
            self.pre.config.learning_rate
        }
    }
}

impl Optimizer for NaturalGradient {
    fn name(&self) -> &'static str {
        "ng"
    }

    fn save_state(&self) -> OptimizerState {
        let buffers = self.state_buffers().map(<[f32]>::to_vec).collect();
        let rng = self.sampler.rng.state();
        let scalars = vec![
            rng[0],
            rng[1],
            rng[2],
            rng[3],
            self.pre.damping.to_bits() as u64,
            self.pre.steps,
            self.pre.stale as u64,
        ];
        OptimizerState {
            name: "ng".into(),
            buffers,
            scalars,
            settings: super::settings_of(&self.pre.config, Some(self.pre.max_batch)),
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
        if x.ncols() > self.pre.max_batch {
            return Err(Error::Shape(format!(
                "minibatch of {} columns exceeds the optimizer's maximum of {}",
                x.ncols(),
                self.pre.max_batch
            )));
        }
        let clock = Instant::now();
        let mut laps = PhaseSecs::default();
        let lap = |slot: &mut f64| *slot = clock.elapsed().as_secs_f64();
        // Everything that can fail on the caller's input fails in the first
        // phase, before any state changes.
        let loss = self.loss_and_gradient(net, ws, x, y)?;
        let plan = self.plan_step(net, ws.batch(), ws.par());
        lap(&mut laps.loss_and_gradient);
        self.sample_backward_factors(net, ws, &plan)?;
        lap(&mut laps.sampled_backward);
        self.factorise(ws, &plan)?;
        lap(&mut laps.factorise);
        let grad_dot_delta = self.precondition(ws, &plan)?;
        lap(&mut laps.precondition);
        self.apply_update(net, &plan)?;
        if plan.lm_check {
            self.check_damping(net, ws, x, y, loss, grad_dot_delta, &plan)?;
        }
        lap(&mut laps.apply_and_damping);
        self.phases = laps.durations();
        self.last_plan = Some(plan);
        Ok(StepStats { loss })
    }
}

/// The phases of [`NaturalGradient::step`], in their order. The distributed
/// step (`crate::distributed`, feature `mpi`) shares those that do not
/// communicate.
impl NaturalGradient {
    /// Phase 1: forward pass, loss and backward pass with the weight
    /// gradients into the workspace (and the weight decay's term added to
    /// them). Returns the loss.
    fn loss_and_gradient(
        &self,
        net: &Mlp,
        ws: &mut Workspace,
        x: MatRef<'_, f32>,
        y: MatRef<'_, f32>,
    ) -> Result<f64, Error> {
        let loss = net.loss_and_gradient(ws, x, y)?;
        check_grads_finite(ws.grads(), ws.par())?;
        self.add_weight_decay(net, ws);
        Ok(loss)
    }

    /// Adds `wd W` to each layer's gradient in `ws` (nothing when `wd` is 0).
    pub(crate) fn add_weight_decay(&self, net: &Mlp, ws: &mut Workspace) {
        let wd = self.pre.config.weight_decay;
        if wd > 0.0 {
            let par = ws.par();
            ws.grads_mut()
                .par_iter_mut()
                .zip(net.layers().par_iter())
                .with_min_len(layers_per_task(par))
                .for_each(|(g, l)| g.iter_mut().zip(&l.params).for_each(|(g, &w)| *g += wd * w));
        }
    }

    /// Decides what this step computes at minibatch `b`: the schedule, and
    /// per layer the form of the update (into each [`LayerState::plan`]).
    pub(crate) fn plan_step(&mut self, net: &Mlp, b: usize, par: Par) -> StepPlan {
        let num_layers = net.num_layers();
        let config = &self.pre.config;
        let schedule = Schedule::next(self.pre.steps, self.pre.stale, config);
        let gram_ok = gram_applies(config);
        let out_diag = config.exact_output_factor && net.likelihood().has_diagonal_output_fisher();
        for (l, st) in self.pre.layers.iter_mut().enumerate() {
            st.g_diag = out_diag && l + 1 == num_layers;
            st.plan = LayerPlan::choose(
                st.n_out,
                st.n_in1,
                b,
                config.preconditioning,
                gram_ok,
                st.g_diag,
                config.weight_decay > 0.0,
            );
        }
        let lm_check = matches!(
            config.adaptation,
            DampingAdaptation::LevenbergMarquardt { interval }
                if schedule.k.is_multiple_of(interval as u64)
        );
        StepPlan {
            schedule,
            batch: b,
            par,
            out_diag,
            eta: self.step_scale(num_layers),
            lm_check,
        }
    }

    /// Phase 2: on statistics steps, the backward factors `G` from the
    /// errors of targets sampled from the model (the output layer's exactly,
    /// where it is diagonal; the Gaussian output layer's drawn as a Wishart
    /// matrix, where configured).
    fn sample_backward_factors(
        &mut self,
        net: &Mlp,
        ws: &Workspace,
        plan: &StepPlan,
    ) -> Result<(), Error> {
        let Schedule {
            statistics,
            rho,
            rank_update,
            ..
        } = plan.schedule;
        if !statistics {
            return Ok(());
        }
        if plan.out_diag {
            self.sampler.exact_output_diagonal(net, ws)?;
            self.take_exact_output_diagonal(rho, rank_update);
        }
        let samples = self.pre.config.samples;
        // The Gaussian output layer's `G` drawn as a Wishart matrix (see
        // `wishart_output_factor`); then nothing needs the output errors
        // themselves, and the layer below draws its error directly when
        // `W_L^T W_L` factorises.
        let wishart = self.pre.config.wishart_output_factor
            && self.pre.layers.last().is_some_and(|st| {
                !st.wishart.is_empty() && !rank_update && !st.plan.g_gram && !st.g_diag
            });
        let direct = wishart
            && samples > 0
            && self
                .sampler
                .prepare_penultimate_draw(net, plan.batch, plan.par)?;
        self.last_sampling = (wishart, direct);
        for s in 0..samples {
            self.sampler.draw_and_backpropagate(net, ws, direct, 0)?;
            let beta = if s == 0 { rho } else { 1.0 };
            let alpha = (1.0 - rho) / (plan.batch * samples) as f32;
            // Drawn only when used, so that other likelihoods keep their stream.
            let wishart_seed = if wishart {
                self.sampler.rng.next_u64()
            } else {
                0
            };
            self.accumulate_backward_factors(beta, alpha, wishart.then_some(wishart_seed), plan)?;
        }
        Ok(())
    }

    /// The output layer's exact diagonal backward factor (in the sampler's
    /// `output_diagonal`) into its running average, and into its Cholesky
    /// factor on rank-update steps.
    fn take_exact_output_diagonal(&mut self, rho: f32, rank_update: bool) {
        let st = self.pre.layers.last_mut().expect("a network has layers");
        let n = st.n_out;
        for (i, &d) in self.sampler.output_diagonal.iter().enumerate() {
            let g = &mut st.g_factor[i * n + i];
            *g = rho * *g + (1.0 - rho) * d;
            if rank_update {
                // The diagonal counterpart of the rank update of the other factors.
                let l = &mut st.g_chol[i * n + i];
                *l = (rho * *l * *l + (1.0 - rho) * d).sqrt();
            }
        }
    }

    /// `G <- beta G + alpha E E^T` per layer from the sampler's errors, in
    /// parallel over layers; the Gaussian output layer's from a Wishart draw
    /// of seed `wishart_seed` when given. Layers whose `G` is the exact
    /// diagonal or formed through the Gram matrix are left alone.
    fn accumulate_backward_factors(
        &mut self,
        beta: f32,
        alpha: f32,
        wishart_seed: Option<u64>,
        plan: &StepPlan,
    ) -> Result<(), Error> {
        let (b, par, rank_update) = (plan.batch, plan.par, plan.schedule.rank_update);
        self.pre
            .layers
            .par_iter_mut()
            .zip(self.sampler.errs.par_iter())
            .with_min_len(layers_per_task(par))
            .try_for_each(|(st, e)| -> Result<(), Error> {
                if st.plan.g_gram || st.g_diag {
                    // Formed from the sampled errors at factorisation, or exact.
                    return Ok(());
                }
                match wishart_seed {
                    Some(seed) if !st.wishart.is_empty() => {
                        draw_wishart_factor(st, seed, beta, alpha, b, par)
                    }
                    _ => {
                        let e = view(e, st.n_out, b, st.n_out);
                        st.accumulate_backward(e, beta, alpha, rank_update, par)?;
                        Ok(())
                    }
                }
            })
    }

    /// Phase 3: the forward factors `A` (on statistics steps) and the
    /// factorisation of the damped factors (or of the Gram matrices), per
    /// layer in parallel; if one is not positive definite, the damping is
    /// raised tenfold and the factorisation retried.
    fn factorise(&mut self, ws: &Workspace, plan: &StepPlan) -> Result<(), Error> {
        let Schedule {
            statistics,
            rho,
            refresh,
            rank_update,
            ..
        } = plan.schedule;
        let (b, par) = (plan.batch, plan.par);
        let pi_correction = self.pre.config.pi_correction;
        let alpha_a = (1.0 - rho) / b as f32;
        let acts = &ws.activation_buffers()[..self.pre.layers.len()];
        let mut damping = self.pre.damping;
        let mut first = true;
        let (lo, hi) = self.pre.config.damping_bounds;
        for attempt in 0..=MAX_DAMPING_RETRIES {
            let shift = damping.sqrt();
            let result = self
                .pre
                .layers
                .par_iter_mut()
                .zip(acts.par_iter())
                .zip(self.sampler.errs.par_iter())
                .with_min_len(layers_per_task(par))
                .try_for_each(|((st, a), es)| -> Result<(), natgrad_kernels::Error> {
                    let abar = view(a, st.n_in1, b, st.n_in1);
                    if first && statistics && !st.plan.a_gram {
                        st.accumulate_forward(abar, rho, alpha_a, rank_update, par)?;
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
                    self.pre.stale = true;
                }
                Err(e @ natgrad_kernels::Error::NotPositiveDefinite { .. }) => {
                    self.pre.damping = damping;
                    return Err(Error::NotPositiveDefinite(format!(
                        "a curvature factor would not factorise even at damping {damping:e} ({e}); \
                         the step was not taken"
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.pre.damping = damping.clamp(lo, hi);
        self.pre.stale = false;
        Ok(())
    }

    /// Phase 4: the preconditioned update `dW_i` into each layer's `delta`,
    /// per layer in parallel, in the layer's planned form (the low-rank
    /// form overwrites the workspace's activations and errors, which are
    /// not needed again). Returns `sum_i <grad_i, dW_i>`.
    fn precondition(&mut self, ws: &mut Workspace, plan: &StepPlan) -> Result<f64, Error> {
        let (b, par, eta) = (plan.batch, plan.par, plan.eta);
        let buffers = ws.buffers_mut();
        let (acts, errs, grads) = (buffers.acts, buffers.errs, &*buffers.grads);
        let acts = &mut acts[..self.pre.layers.len()];
        self.pre
            .layers
            .par_iter_mut()
            .zip(acts.par_iter_mut())
            .zip(errs.par_iter_mut())
            .zip(grads.par_iter())
            .zip(self.sampler.errs.par_iter())
            .with_min_len(layers_per_task(par))
            .try_for_each(
                |((((st, a), e), g), es)| -> Result<(), natgrad_kernels::Error> {
                    if st.plan.low_rank {
                        precondition_low_rank(st, a, e, es, eta, b, par)?;
                    } else {
                        let gm = MatRef::from_column_major_slice(g, st.n_out, st.n_in1);
                        st.precondition_full(gm, -eta, par)?;
                    }
                    st.grad_dot_delta = dot_f64(&st.delta, g)?;
                    Ok(())
                },
            )?;
        self.checked_grad_dot_delta()
    }

    /// `sum_i <grad_i, dW_i>` over the layers, or [`Error::NonFinite`] if
    /// the update is not finite.
    pub(crate) fn checked_grad_dot_delta(&self) -> Result<f64, Error> {
        // Summed in layer order, not by rayon's reduction tree, so that the LM
        // decision (and with it a resumed run) is bit-for-bit reproducible.
        // It also checks every entry of every update: a NaN or infinite
        // `d` makes its term `d g` NaN or infinite (`inf * 0` is NaN), and
        // with it the sum; f32 products summed in f64 cannot overflow.
        let grad_dot_delta: f64 = self.pre.layers.iter().map(|st| st.grad_dot_delta).sum();
        if !grad_dot_delta.is_finite() {
            return Err(Error::NonFinite(
                "the natural-gradient update is not finite (curvature too ill-conditioned for the damping); \
                 the step was not taken"
                    .into(),
            ));
        }
        Ok(grad_dot_delta)
    }

    /// Phase 5: `W_i += dW_i`, layers in parallel, and on steps with a
    /// Levenberg-Marquardt check each layer's share of the penalty's change
    /// `wd (w.d - d.d/2)` (see [`NaturalGradient::adapt_damping`]). Counts
    /// the step.
    pub(crate) fn apply_update(&mut self, net: &mut Mlp, plan: &StepPlan) -> Result<(), Error> {
        let wd = self.pre.config.weight_decay;
        let lm_check = plan.lm_check;
        // Each layer returns whether its new parameters are finite (see
        // `Mlp::set_params_finite`).
        let finite = net
            .layers_mut()
            .par_iter_mut()
            .zip(self.pre.layers.par_iter_mut())
            .with_min_len(layers_per_task(plan.par))
            .map(|(layer, st)| -> Result<bool, natgrad_kernels::Error> {
                if wd > 0.0 && lm_check {
                    st.penalty_dot = add_and_penalty_change(&mut layer.params, &st.delta)?;
                    Ok(all_finite(&layer.params))
                } else {
                    st.penalty_dot = 0.0;
                    Ok(add_and_check_finite(&mut layer.params, &st.delta))
                }
            })
            .try_reduce(|| true, |a, b| Ok(a & b))?;
        net.set_params_finite(finite);
        self.pre.steps = plan.schedule.k;
        Ok(())
    }

    /// Phase 6, on Levenberg-Marquardt steps: the loss after the step on
    /// the first `ceil(damping_check_fraction b)` columns of the minibatch
    /// (one forward pass), compared with the quadratic model's prediction.
    #[allow(clippy::too_many_arguments)]
    fn check_damping(
        &mut self,
        net: &mut Mlp,
        ws: &mut Workspace,
        x: MatRef<'_, f32>,
        y: MatRef<'_, f32>,
        loss: f64,
        grad_dot_delta: f64,
        plan: &StepPlan,
    ) -> Result<(), Error> {
        let (loss_before, after, _) = self.checked_losses(net, ws, x, y, loss, plan.batch)?;
        // A loss that is not finite is an error of `loss`: NaN stands for it.
        let after = after.unwrap_or(f64::NAN);
        self.adapt_damping(net, loss_before, after, grad_dot_delta, plan.eta);
        Ok(())
    }

    /// The losses the Levenberg-Marquardt check compares, on the first `c =
    /// ceil(damping_check_fraction b)` columns of the minibatch `(x, y)`
    /// of `b` columns (all of them when `c >= b`): before the step (`loss`
    /// when every column is checked; else from this step's forward pass,
    /// whose output is still in the workspace) and after it (one forward
    /// pass, with its own error, e.g. a loss that is not finite), and the
    /// columns checked. Shared by the distributed step, which sums them over
    /// the ranks.
    pub(crate) fn checked_losses(
        &self,
        net: &Mlp,
        ws: &mut Workspace,
        x: MatRef<'_, f32>,
        y: MatRef<'_, f32>,
        loss: f64,
        b: usize,
    ) -> Result<(f64, Result<f64, Error>, usize), Error> {
        let c = (self.pre.config.damping_check_fraction as f64 * b as f64).ceil() as usize;
        let (loss_before, x, y) = if c >= b {
            (loss, x, y)
        } else {
            let (xs, ys) = (x.subcols(0, c), y.subcols(0, c));
            ws.set_batch(c)?;
            (net.loss(ws, ys, false)?, xs, ys)
        };
        let after = net.forward(ws, x).and_then(|_| net.loss(ws, y, false));
        Ok((loss_before, after, x.ncols()))
    }

    /// The Levenberg-Marquardt rule on the checked loss before and after
    /// the step (`after` NaN when it was not finite): a step that made the
    /// loss non-finite or more than doubled it is taken back and the damping
    /// raised tenfold; else the damping follows the ratio of the actual to
    /// the predicted change. A larger damping takes effect at once (the
    /// factors are marked stale).
    pub(crate) fn adapt_damping(
        &mut self,
        net: &mut Mlp,
        loss_before: f64,
        after: f64,
        grad_dot_delta: f64,
        eta: f32,
    ) {
        // The local model M(d) = g.d + 1/2 d^T (F + dI) d, with d = -eta P g and
        // P = (F + dI)^{-1} the damped Kronecker preconditioner, is
        // M = g.d (1 - eta / 2): no extra curvature product is needed.
        let predicted = grad_dot_delta * (1.0 - eta as f64 / 2.0);
        let (lo, hi) = self.pre.config.damping_bounds;
        let old = self.pre.damping;
        // The penalty's change, (wd/2)(||w0 + d||^2 - ||w0||^2) = wd (w0.d + d.d/2)
        // = wd (w.d - d.d/2) with w = w0 + d the weights after the step.
        // Summed in layer order, as `grad_dot_delta`.
        let penalty_change = self.pre.config.weight_decay as f64
            * self.pre.layers.iter().map(|st| st.penalty_dot).sum::<f64>();
        if !after.is_finite() || after - loss_before > loss_before.abs() {
            // The step made the loss non-finite, or more than doubled it: far
            // outside the region where the model holds (stale factors and a
            // small damping can do this). Take it back and damp harder.
            for (w, st) in net.params_mut().zip(&self.pre.layers) {
                w.iter_mut().zip(&st.delta).for_each(|(w, d)| *w -= d);
            }
            self.pre.damping = (self.pre.damping * 10.0).min(hi);
        } else if predicted < 0.0 {
            let ratio = (after - loss_before + penalty_change) / predicted;
            if ratio < 0.25 {
                self.pre.damping = (self.pre.damping * 1.5).min(hi);
            } else if ratio > 0.75 {
                self.pre.damping = (self.pre.damping * (2.0 / 3.0)).max(lo);
            }
        } else {
            self.pre.damping = (self.pre.damping * 1.5).min(hi);
        }
        // A larger damping (the model over-promised) takes effect at once;
        // a smaller one waits for the next scheduled refresh, so that the LM
        // rule does not force a refactorisation at nearly every step and
        // defeat `refresh_interval`.
        if self.pre.damping > old {
            self.pre.stale = true;
        }
    }
}

impl PhaseSecs {
    /// Cumulative clock readings (each phase's end) to per-phase durations.
    pub(crate) fn durations(mut self) -> PhaseSecs {
        self.apply_and_damping -= self.precondition;
        self.precondition -= self.factorise;
        self.factorise -= self.sampled_backward;
        self.sampled_backward -= self.loss_and_gradient;
        self
    }
}

/// The per-layer states of `net`'s natural gradient at minibatches of up to
/// `max_batch` columns, every buffer allocated.
fn layer_states(net: &Mlp, max_batch: usize, config: &NaturalGradientConfig) -> Vec<LayerState> {
    let out_diag = config.exact_output_factor && net.likelihood().has_diagonal_output_fisher();
    let gaussian = net.likelihood() == Likelihood::Gaussian;
    let num_layers = net.num_layers();
    net.layers()
        .iter()
        .enumerate()
        .map(|(index, l)| {
            let last = index + 1 == num_layers;
            let wishart = config.wishart_output_factor && gaussian && last;
            LayerState::new(
                l.n_in,
                l.n_out,
                max_batch,
                config,
                out_diag && last,
                wishart,
            )
        })
        .collect()
}

/// The Gaussian output layer's `G <- beta G + alpha E E^T` with `E E^T`
/// drawn directly. A Gaussian output layer's sampled errors are standard
/// normal vectors, independent of the network, so `E E^T` is a
/// `Wishart(b, I)` draw: take it directly by Bartlett's decomposition,
/// `A A^T` with `A` lower trapezoidal `n x min(n, b)`, in about `n^3 / 3`
/// flops instead of the `n^2 b` of a SYRK on `E`. The backward pass is
/// driven by sampled output errors or by the direct draw of the layer below,
/// independent of this draw, which leaves every factor's expectation and
/// distribution as they were.
fn draw_wishart_factor(
    st: &mut LayerState,
    seed: u64,
    beta: f32,
    alpha: f32,
    b: usize,
    par: Par,
) -> Result<(), Error> {
    let stack = MemStack::new(&mut st.scratch);
    let n = st.n_out;
    let mut rng = Rng::new(seed);
    rng.fill_bartlett(&mut st.wishart, n, n, b)?;
    let l = view(&st.wishart, n, n.min(b), n);
    let g = MatMut::from_column_major_slice_mut(&mut st.g_factor, n, n);
    syrk_lower_trapezoidal(g, beta, l, alpha, par, stack)?;
    Ok(())
}

/// Layer `st`'s update in the low-rank form, `dW = -(eta / b) ((G + dI)^-1 E)
/// ((A + dI)^-1 Abar)^T` into `st.delta`, from its errors `e` and inputs
/// `a` (overwritten where solved in place) and the sampled errors `es` (for
/// the Gram form of `G`).
fn precondition_low_rank(
    st: &mut LayerState,
    a: &mut [f32],
    e: &mut [f32],
    es: &[f32],
    eta: f32,
    b: usize,
    par: Par,
) -> Result<(), natgrad_kernels::Error> {
    let stack = MemStack::new(&mut st.scratch);
    let (n_out, n_in1, plan) = (st.n_out, st.n_in1, st.plan);
    // The Cholesky factors, or the explicit inverses on `a_inv`/`g_inv` sides.
    let lg = MatRef::from_column_major_slice(&st.g_chol, n_out, n_out);
    let la = MatRef::from_column_major_slice(&st.a_chol, n_in1, n_in1);
    let mut delta = view_mut(&mut st.delta, n_out, n_in1, n_out);
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
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mlp::{Init, Likelihood};
    use crate::optim::{InverseApplication, Preconditioning};
    use natgrad_kernels::Activation;

    /// The phase counts of a small network, full form, solves, fresh factors
    /// every step, against the count written out by hand: widths 6-5-4, so
    /// layers of (n_in + 1, n_out) = (7, 5) and (6, 4), minibatch 3.
    #[test]
    fn phase_flops_match_the_count_by_hand() {
        let mut net = Mlp::new(
            &[6, 5, 4],
            &[Activation::Tanh, Activation::Identity],
            Likelihood::Gaussian,
            Init::GlorotUniform,
            1,
        )
        .unwrap();
        let mut ws = Workspace::new(&net, 3, Par::Seq).unwrap();
        let config = NaturalGradientConfig {
            factor_decay: 0.5,
            preconditioning: Preconditioning::Full,
            inverse: InverseApplication::Solves,
            wishart_output_factor: false,
            ..NaturalGradientConfig::default()
        };
        let mut ng = NaturalGradient::new(&net, 3, config).unwrap();
        assert_eq!(ng.last_phase_flops(), None);
        let x: Vec<f32> = (0..18).map(|i| (i as f32 * 0.37).sin()).collect();
        let y: Vec<f32> = (0..12).map(|i| (i as f32 * 0.23).cos()).collect();
        let xm = MatRef::from_column_major_slice(&x, 6, 3);
        let ym = MatRef::from_column_major_slice(&y, 4, 3);
        ng.step(&mut net, &mut ws, xm, ym).unwrap();
        // Sampled backward: layer 2's input gradient 2*5*4*3, then G of both
        // layers, n (n + 1) b: 5*6*3 + 4*5*3.
        let sampled = 120.0 + 90.0 + 60.0;
        // A of both layers (7*8*3 + 6*7*3), then the four Cholesky
        // factorisations n^3 / 3 of 7, 5, 6 and 4.
        let factorise = 168.0 + 126.0 + (343.0 + 125.0 + 216.0 + 64.0) / 3.0;
        // Per layer 2 o^2 i + 2 i^2 o + 2 o i: (350 + 490 + 70) + (192 + 288 + 48).
        let precondition = 910.0 + 528.0;
        let got = ng.last_phase_flops().unwrap();
        let got_all = [got.sampled_backward, got.factorise, got.precondition];
        for (g, want) in got_all.iter().zip([sampled, factorise, precondition]) {
            assert!((g - want).abs() < 1e-9 * want, "{got:?}");
        }
        // The same step with the output layer's G drawn as a Wishart matrix:
        // L L^T of the 4 x 3 Bartlett factor instead of E E^T, 2 sum_j (4 -
        // j) min(j + 1, 3) = 38 flops in place of 60.
        let mut ng = NaturalGradient::new(
            &net,
            3,
            NaturalGradientConfig {
                wishart_output_factor: true,
                ..config
            },
        )
        .unwrap();
        ng.step(&mut net, &mut ws, xm, ym).unwrap();
        assert_eq!(ng.last_sampling, (true, false));
        let got = ng.last_phase_flops().unwrap();
        assert!(
            (got.sampled_backward - (sampled - 60.0 + 38.0)).abs() < 1e-9,
            "{got:?}"
        );
        assert!((got.factorise - factorise).abs() < 1e-9 * factorise);
    }

    /// A narrow layer under a wide Gaussian output (widths 6-3-12,
    /// minibatch 8): the penultimate error is drawn directly, so the sampled
    /// backward pass is `W^T W` (3*4*12), its Cholesky factor (27/3) and `C
    /// z` (3*4*8) instead of the output layer's GEMM, plus the Wishart
    /// product of the 12 x 8 Bartlett factor (2 sum_j (12 - j) min(j + 1, 8)
    /// = 688) and layer 1's `G` (3*4*8).
    #[test]
    fn phase_flops_count_the_direct_penultimate_draw() {
        let mut net = Mlp::new(
            &[6, 3, 12],
            &[Activation::Tanh, Activation::Identity],
            Likelihood::Gaussian,
            Init::GlorotUniform,
            2,
        )
        .unwrap();
        let mut ws = Workspace::new(&net, 8, Par::Seq).unwrap();
        let config = NaturalGradientConfig {
            factor_decay: 0.5,
            preconditioning: Preconditioning::Full,
            inverse: InverseApplication::Solves,
            ..NaturalGradientConfig::default()
        };
        let mut ng = NaturalGradient::new(&net, 8, config).unwrap();
        let x: Vec<f32> = (0..48).map(|i| (i as f32 * 0.41).sin()).collect();
        let y: Vec<f32> = (0..96).map(|i| (i as f32 * 0.29).cos()).collect();
        let xm = MatRef::from_column_major_slice(&x, 6, 8);
        let ym = MatRef::from_column_major_slice(&y, 12, 8);
        ng.step(&mut net, &mut ws, xm, ym).unwrap();
        assert_eq!(ng.last_sampling, (true, true));
        let want = 144.0 + 9.0 + 96.0 + 688.0 + 96.0;
        let got = ng.last_phase_flops().unwrap();
        assert!((got.sampled_backward - want).abs() < 1e-9, "{got:?}");
    }
}
