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

use super::config::{DampingAdaptation, NaturalGradientConfig};
use super::kronecker::{
    gram_applies, layers_per_task, scale_rows_by_inverse_square, validate_config,
    KroneckerPreconditioner, LayerPlan, LayerState, Schedule, MAX_DAMPING_RETRIES,
};
use super::{
    check_grads_finite, check_net_shapes, check_range, Optimizer, OptimizerState, StepStats,
};
use crate::mlp::Mlp;
use crate::workspace::{view, view_mut, Workspace};
use crate::Error;
use faer::reborrow::{Reborrow, ReborrowMut};
use natgrad_kernels::gemm::{gemm, gemm_scratch};
use natgrad_kernels::rng::Rng;
use natgrad_kernels::syrk::syrk_lower_trapezoidal;
use natgrad_kernels::trsm::{solve_llt_left_in_place, solve_llt_right_in_place};
use natgrad_kernels::vector::{add_and_penalty_change, dot_f64};
use natgrad_kernels::{MatRef, MemBuffer, MemStack, StackReq};
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
    /// The per-layer factors, Cholesky factors, updates and scratch, with
    /// the damping and the step counter.
    pub(crate) pre: KroneckerPreconditioner,
    pub(crate) sizes: Vec<usize>,
    /// Errors back-propagated from sampled targets, one per layer (`n_i x b`).
    pub(crate) sampled_errs: Vec<Vec<f32>>,
    /// The Cholesky factor of the output layer's `W^T W` (see
    /// [`NaturalGradientConfig::wishart_output_factor`]; empty when unused).
    out_factor: Vec<f32>,
    /// The diagonal of the output layer's exact backward factor this step.
    pub(crate) fisher_diag: Vec<f32>,
    /// Scratch for the sampled backward pass.
    pub(crate) scratch: MemBuffer,
    pub(crate) rng: Rng,
    pub(crate) phases: PhaseSecs,
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
        let out_diag = config.exact_output_factor && net.likelihood().has_diagonal_output_fisher();
        let num_layers = net.num_layers();
        let gaussian = net.likelihood() == crate::mlp::Likelihood::Gaussian;
        // Scratch sized for the most demanding parallelism the kernels may run at.
        let par_sizing = natgrad_kernels::Par::rayon(0);
        let layers = net
            .layers()
            .iter()
            .enumerate()
            .map(|(index, l)| {
                let last = index + 1 == num_layers;
                let wishart = config.wishart_output_factor && gaussian && last;
                LayerState::new(
                    l.n_in,
                    l.n_out,
                    max_batch,
                    &config,
                    out_diag && last,
                    wishart,
                )
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
            pre: KroneckerPreconditioner::from_states(config, layers, max_batch),
            sizes: net.sizes(),
            sampled_errs,
            out_factor,
            fisher_diag,
            scratch,
            rng: Rng::new(config.seed),
            phases: PhaseSecs::default(),
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
            self.rng.state(),
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
        self.rng = Rng::from_state(rng);
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
        let rng = self.rng.state();
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
        let mut phases = PhaseSecs::default();
        let lap = |slot: &mut f64| *slot = clock.elapsed().as_secs_f64();
        // 1. Loss and gradient on the data targets. Everything that can fail on
        //    the caller's input fails here, before any state changes.
        let loss = net.loss_and_gradient(ws, x, y)?;
        check_grads_finite(&ws.grads)?;
        let wd = self.pre.config.weight_decay;
        let (b, par) = (ws.batch, ws.par);
        if wd > 0.0 {
            ws.grads
                .par_iter_mut()
                .zip(net.layers().par_iter())
                .with_min_len(layers_per_task(par))
                .for_each(|(g, l)| g.iter_mut().zip(&l.params).for_each(|(g, &w)| *g += wd * w));
        }
        let num_layers = net.num_layers();
        let Schedule {
            k,
            statistics: stats_step,
            rho,
            refresh,
            rank_update,
        } = Schedule::next(self.pre.steps, self.pre.stale, &self.pre.config);
        let gram_ok = gram_applies(&self.pre.config);
        let out_diag =
            self.pre.config.exact_output_factor && net.likelihood().has_diagonal_output_fisher();
        for (l, st) in self.pre.layers.iter_mut().enumerate() {
            st.g_diag = out_diag && l + 1 == num_layers;
            st.plan = LayerPlan::choose(
                st.n_out,
                st.n_in1,
                b,
                self.pre.config.preconditioning,
                gram_ok,
                st.g_diag,
                self.pre.config.weight_decay > 0.0,
            );
        }

        lap(&mut phases.loss_and_gradient);
        // 2. Backward factors from errors of targets sampled from the model
        //    (the output layer's exactly, where it is diagonal).
        if stats_step && out_diag {
            net.output_fisher_diagonal(ws, &mut self.fisher_diag)?;
            let st = self.pre.layers.last_mut().expect("a network has layers");
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
        let samples = if stats_step {
            self.pre.config.samples
        } else {
            0
        };
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
            && !self.out_factor.is_empty()
            && {
                // Flops: W^T W, its Cholesky and C z against the GEMM W^T e_L.
                let last = self.pre.layers.last().expect("a network has layers");
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
            self.pre
                .layers
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
                    st.accumulate_backward(e, beta, alpha, rank_update, par)?;
                    Ok(())
                })?;
        }

        lap(&mut phases.sampled_backward);
        // 3. Forward factors, factorisation, preconditioned update, per layer in parallel.
        let eta = self.step_scale(num_layers);
        let pi_correction = self.pre.config.pi_correction;
        let alpha_a = (1.0 - rho) / b as f32;
        let mut damping = self.pre.damping;
        let mut first = true;
        let (lo, hi) = self.pre.config.damping_bounds;
        for attempt in 0..=MAX_DAMPING_RETRIES {
            let shift = damping.sqrt();
            let result = self
                .pre
                .layers
                .par_iter_mut()
                .zip(ws.acts[..num_layers].par_iter())
                .zip(self.sampled_errs.par_iter())
                .with_min_len(layers_per_task(par))
                .try_for_each(|((st, a), es)| -> Result<(), natgrad_kernels::Error> {
                    let abar = view(a, st.n_in1, b, st.n_in1);
                    if first && stats_step && !st.plan.a_gram {
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

        lap(&mut phases.factorise);
        // 4. Preconditioned update dW_i into each layer's `delta`.
        let acts = &mut ws.acts[..num_layers];
        self.pre
            .layers
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
                        let gm = MatRef::from_column_major_slice(g, n_out, n_in1);
                        st.precondition_full(gm, -eta, par)?;
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
        let grad_dot_delta: f64 = self.pre.layers.iter().map(|st| st.grad_dot_delta).sum();
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
            self.pre.config.adaptation,
            DampingAdaptation::LevenbergMarquardt { interval } if k.is_multiple_of(interval as u64)
        );
        net.layers_mut()
            .par_iter_mut()
            .zip(self.pre.layers.par_iter_mut())
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
        self.pre.steps = k;

        // 6. Levenberg-Marquardt adaptation of the damping.
        if lm_check {
            // The local model M(d) = g.d + 1/2 d^T (F + dI) d, with d = -eta P g and
            // P = (F + dI)^{-1} the damped Kronecker preconditioner, is
            // M = g.d (1 - eta / 2): no extra curvature product is needed.
            let predicted = grad_dot_delta * (1.0 - eta as f64 / 2.0);
            let old = self.pre.damping;
            let c = (self.pre.config.damping_check_fraction as f64 * b as f64).ceil() as usize;
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
                wd as f64 * self.pre.layers.iter().map(|st| st.penalty_dot).sum::<f64>();
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
                    take_back(net, &self.pre.layers);
                    self.pre.damping = (self.pre.damping * 10.0).min(hi);
                }
                Ok(new_loss) if predicted < 0.0 => {
                    let ratio = (new_loss - loss_before + penalty_change) / predicted;
                    if ratio < 0.25 {
                        self.pre.damping = (self.pre.damping * 1.5).min(hi);
                    } else if ratio > 0.75 {
                        self.pre.damping = (self.pre.damping * (2.0 / 3.0)).max(lo);
                    }
                }
                Ok(_) => self.pre.damping = (self.pre.damping * 1.5).min(hi),
                Err(_) => {
                    // The step made the loss non-finite: take it back and damp harder.
                    take_back(net, &self.pre.layers);
                    self.pre.damping = (self.pre.damping * 10.0).min(hi);
                }
            }
            // A larger damping (the model over-promised) takes effect at once;
            // a smaller one waits for the next scheduled refresh, so that the LM
            // rule does not force a refactorisation at nearly every step and
            // defeat `refresh_interval`.
            if self.pre.damping > old {
                self.pre.stale = true;
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
