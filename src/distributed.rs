//! Data-parallel training over MPI (feature `mpi`): every rank holds the
//! whole network and its own shard of every minibatch, and a step equals the
//! single-process step on the combined minibatch up to the order of the
//! floating-point sums (docs/distributed.md).
//!
//! Per step, [`DistributedSgd`] and [`DistributedNaturalGradient`] make these
//! collective calls, each on one buffer:
//!
//! 1. an all-reduce (sum) of every layer's gradient times the local batch
//!    size, with the local loss times the batch size, every rank's batch size
//!    and a failure flag;
//! 2. (natural gradient, on the steps that collect statistics) an
//!    all-reduce of every layer's local factor sums `Abar_r Abar_r^T` and
//!    `E_r E_r^T` as packed lower triangles, with a failure flag;
//! 3. (natural gradient, on refresh steps) a tiny all-reduce of the
//!    factorisations' outcome, so that every rank raises the damping and
//!    retries together;
//! 4. (natural gradient) an all-gather of the preconditioned updates: each
//!    layer's factorisation and preconditioning runs on one owner rank
//!    (layers dealt out to balance the `n^3` work), which sends the layer's
//!    update `dW_i` to the others (kfac-pytorch's memory-optimised strategy;
//!    see docs/distributed.md for why rather than broadcasting the factors);
//! 5. (natural gradient, on Levenberg-Marquardt steps) an all-reduce of the
//!    losses before and after the step.
//!
//! A rank whose part of a step fails (a non-finite minibatch, a factor that
//! will not factorise) still takes part in every collective of the step with
//! its failure flag set, so every rank returns an error, none hangs.
//!
//! The natural gradient runs in the full form only
//! ([`Preconditioning::Full`]): the low-rank and Gram forms and the Wishart
//! draw of a Gaussian output layer's factor work on the local minibatch
//! matrices themselves, which no rank has for the combined batch;
//! [`DistributedNaturalGradient::new`] sets `preconditioning` to `Full` and
//! `wishart_output_factor` to false, and refuses rank updates of the
//! Cholesky factors ([`FactorUpdate::RankUpdate`]) for the same reason.
//!
//! Sampled targets: every rank draws the same per-step seed from the
//! optimizer's generator (seeded by `config.seed`), and rank `r` samples its
//! columns from the streams of the column chunks it would hold in the
//! combined batch (`fisher::sample_output_error` samples chunk `c` of
//! [`SAMPLE_CHUNK_COLS`] columns from `Rng::new(seed + c)`). Each rank
//! thus has streams of its own, a run is
//! reproducible for a given number of ranks and shard sizes, and when every
//! shard but the last is a multiple of `SAMPLE_CHUNK_COLS` columns the
//! samples are exactly those of the single-process step on the combined
//! batch.

use crate::mlp::Mlp;
use crate::optim::fisher::SAMPLE_CHUNK_COLS;
use crate::optim::kronecker::{layers_per_task, MAX_DAMPING_RETRIES};
use crate::optim::natural::StepPlan;
use crate::optim::{
    FactorUpdate, NaturalGradient, NaturalGradientConfig, Optimizer, OptimizerState, PhaseSecs,
    Preconditioning, Sgd, SgdConfig, StepStats,
};
use crate::workspace::{view, Workspace};
use crate::Error;
use natgrad_kernels::syrk::syrk_lower;
use natgrad_kernels::vector::dot_f64;
use natgrad_kernels::{MatMut, MatRef, MemStack};
use rayon::prelude::*;
use std::time::Instant;

/// The collective operations a data-parallel step needs. Implemented for
/// rsmpi's [`mpi::topology::SimpleCommunicator`] (e.g. `universe.world()`).
///
/// Every rank must call the same operations in the same order with buffers
/// of the same lengths. MPI's default error handler aborts the job on a
/// communication error, so these do not return one.
pub trait Communicator {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// `recv = sum over ranks of send` (equal lengths).
    fn all_reduce_sum_f32(&self, send: &[f32], recv: &mut [f32]);
    /// `recv = sum over ranks of send` (equal lengths).
    fn all_reduce_sum_f64(&self, send: &[f64], recv: &mut [f64]);
    /// Rank `r`'s `send` (`counts[r]` long) lands in `recv` after those of
    /// ranks `0..r`; `recv` is `counts` summed long.
    fn all_gather_varcount_f32(&self, send: &[f32], recv: &mut [f32], counts: &[usize]);
}

impl Communicator for mpi::topology::SimpleCommunicator {
    fn rank(&self) -> usize {
        mpi::traits::Communicator::rank(self) as usize
    }
    fn size(&self) -> usize {
        mpi::traits::Communicator::size(self) as usize
    }
    fn all_reduce_sum_f32(&self, send: &[f32], recv: &mut [f32]) {
        use mpi::collective::{CommunicatorCollectives, SystemOperation};
        self.all_reduce_into(send, recv, SystemOperation::sum());
    }
    fn all_reduce_sum_f64(&self, send: &[f64], recv: &mut [f64]) {
        use mpi::collective::{CommunicatorCollectives, SystemOperation};
        self.all_reduce_into(send, recv, SystemOperation::sum());
    }
    fn all_gather_varcount_f32(&self, send: &[f32], recv: &mut [f32], counts: &[usize]) {
        use mpi::collective::CommunicatorCollectives;
        use mpi::datatype::PartitionMut;
        // Lengths were checked against i32::MAX when the buffers were sized.
        let counts: Vec<mpi::Count> = counts.iter().map(|&c| c as mpi::Count).collect();
        let displs: Vec<mpi::Count> = counts
            .iter()
            .scan(0, |acc, &c| {
                let d = *acc;
                *acc += c;
                Some(d)
            })
            .collect();
        let mut partition = PartitionMut::new(recv, &counts[..], &displs[..]);
        self.all_gather_varcount_into(send, &mut partition);
    }
}

/// `Err(InvalidConfig)` if a buffer of `len` elements is too long for MPI's
/// `int` counts.
fn check_count(len: usize) -> Result<(), Error> {
    if len > i32::MAX as usize {
        return Err(Error::InvalidConfig(format!(
            "a distributed buffer of {len} elements exceeds MPI's count limit of {}",
            i32::MAX
        )));
    }
    Ok(())
}

/// The error of a step that failed on some rank: the local error where this
/// rank failed, else one naming the ranks that did.
fn remote_failure(what: &str, failed: impl Into<f64>) -> Error {
    let failed = failed.into();
    Error::Distributed(format!(
        "{what} failed on {failed} other rank(s) (their own errors say why); the step was not taken"
    ))
}

/// The gradient all-reduce shared by the distributed optimizers (collective
/// 1 of the [module documentation](self)).
struct GradientReduce {
    /// `grads * b_r`, then `loss * b_r`, `b_r` at slot `rank`, the failure flag.
    send: Vec<f32>,
    recv: Vec<f32>,
    num_params: usize,
    /// The batch size of every rank at the last reduction.
    batches: Vec<usize>,
}

impl GradientReduce {
    fn new(net: &Mlp, ranks: usize) -> Result<GradientReduce, Error> {
        let num_params = net.num_params();
        let len = num_params + 2 + ranks;
        check_count(len)?;
        Ok(GradientReduce {
            send: vec![0.0; len],
            recv: vec![0.0; len],
            num_params,
            batches: vec![0; ranks],
        })
    }

    /// Loss and gradient of the local shard, all-reduced into `ws.grads()` as
    /// the combined batch's mean gradient. Returns the combined batch's loss
    /// and this rank's local loss (f64, exact), or the error on every rank.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        comm: &dyn Communicator,
        net: &Mlp,
        sizes: &[usize],
        max_batch: usize,
        ws: &mut Workspace,
        x: MatRef<'_, f32>,
        y: MatRef<'_, f32>,
        comm_secs: &mut f64,
    ) -> Result<(f64, f64), Error> {
        let local = (|| {
            crate::optim::check_net_shapes(net, sizes)?;
            if x.ncols() > max_batch {
                return Err(Error::Shape(format!(
                    "minibatch of {} columns exceeds the optimizer's maximum of {max_batch}",
                    x.ncols()
                )));
            }
            let loss = net.loss_and_gradient(ws, x, y)?;
            crate::optim::check_grads_finite(ws.grads(), ws.par())?;
            Ok(loss)
        })();
        let (ranks, rank, p) = (comm.size(), comm.rank(), self.num_params);
        self.send.fill(0.0);
        match &local {
            Ok(loss) => {
                let b = ws.batch() as f32;
                let mut off = 0;
                for g in ws.grads() {
                    self.send[off..off + g.len()]
                        .iter_mut()
                        .zip(g)
                        .for_each(|(s, &g)| *s = g * b);
                    off += g.len();
                }
                self.send[p] = (*loss * ws.batch() as f64) as f32;
                self.send[p + 1 + rank] = b;
            }
            Err(_) => self.send[p + 1 + ranks] = 1.0,
        }
        let clock = Instant::now();
        comm.all_reduce_sum_f32(&self.send, &mut self.recv);
        *comm_secs += clock.elapsed().as_secs_f64();
        let failed = self.recv[p + 1 + ranks];
        let loss = match local {
            Err(e) => return Err(e),
            Ok(_) if failed > 0.0 => return Err(remote_failure("the gradient", failed)),
            Ok(loss) => loss,
        };
        for (dst, &v) in self
            .batches
            .iter_mut()
            .zip(&self.recv[p + 1..p + 1 + ranks])
        {
            *dst = v as usize;
        }
        let total: usize = self.batches.iter().sum();
        let inv = 1.0 / total as f32;
        let mut off = 0;
        for g in ws.grads_mut().iter_mut() {
            let len = g.len();
            g.iter_mut()
                .zip(&self.recv[off..off + len])
                .for_each(|(g, &s)| *g = s * inv);
            off += len;
        }
        // The sum can overflow where no rank's part did; the same on every
        // rank, so every rank refuses the step together.
        crate::optim::check_grads_finite(ws.grads(), ws.par())?;
        Ok((self.recv[p] as f64 / total as f64, loss))
    }

    /// The combined batch size of the last reduction.
    fn total(&self) -> usize {
        self.batches.iter().sum()
    }
}

/// Data-parallel [`Sgd`]: the gradient is all-reduced, then every rank takes
/// the same step.
pub struct DistributedSgd<C: Communicator> {
    sgd: Sgd,
    comm: C,
    reduce: GradientReduce,
    sizes: Vec<usize>,
    max_batch: usize,
    comm_secs: f64,
}

impl<C: Communicator> DistributedSgd<C> {
    /// SGD for `net` on this rank's shards of up to `max_batch` columns.
    pub fn new(
        net: &Mlp,
        max_batch: usize,
        config: SgdConfig,
        comm: C,
    ) -> Result<DistributedSgd<C>, Error> {
        let reduce = GradientReduce::new(net, comm.size())?;
        Ok(DistributedSgd {
            sgd: Sgd::new(net, config)?,
            comm,
            reduce,
            sizes: net.sizes(),
            max_batch,
            comm_secs: 0.0,
        })
    }

    /// One step on this rank's shard `x`, `y` of the combined minibatch
    /// (collective: every rank calls it). Returns the combined batch's loss
    /// before the step. On error on any rank, every rank returns an error and
    /// no weights change.
    pub fn step(
        &mut self,
        net: &mut Mlp,
        ws: &mut Workspace,
        x: MatRef<'_, f32>,
        y: MatRef<'_, f32>,
    ) -> Result<StepStats, Error> {
        self.comm_secs = 0.0;
        let (loss, _) = self.reduce.run(
            &self.comm,
            net,
            &self.sizes,
            self.max_batch,
            ws,
            x,
            y,
            &mut self.comm_secs,
        )?;
        self.sgd.apply_gradient(net, ws.grads(), ws.par());
        Ok(StepStats { loss })
    }

    /// Seconds the last step spent in collective calls.
    pub fn last_comm_secs(&self) -> f64 {
        self.comm_secs
    }
    /// The communicator.
    pub fn comm(&self) -> &C {
        &self.comm
    }
    /// The state a checkpoint needs (the same on every rank).
    pub fn save_state(&self) -> OptimizerState {
        self.sgd.save_state()
    }
    /// Restores [`DistributedSgd::save_state`]'s state (on every rank).
    pub fn load_state(&mut self, state: &OptimizerState) -> Result<(), Error> {
        self.sgd.load_state(state)
    }
}

/// Packed lower-triangle length of an `n x n` matrix.
fn packed_len(n: usize) -> usize {
    n * (n + 1) / 2
}

/// Data-parallel [`NaturalGradient`] in the full form (see the [module
/// documentation](self) for the collectives and what is refused).
pub struct DistributedNaturalGradient<C: Communicator> {
    ng: NaturalGradient,
    comm: C,
    reduce: GradientReduce,
    /// Each layer's owner rank.
    owner: Vec<usize>,
    /// Dense local sums `Abar Abar^T` and `E E^T` (lower triangles), per layer.
    sum_a: Vec<Vec<f32>>,
    sum_g: Vec<Vec<f32>>,
    /// Packed factor sums (then the failure flag): send and receive.
    stats_send: Vec<f32>,
    stats_recv: Vec<f32>,
    /// This rank's layers' updates in layer order, then its failure flag.
    delta_send: Vec<f32>,
    /// Every rank's `delta_send`, in rank order.
    delta_recv: Vec<f32>,
    delta_counts: Vec<usize>,
    /// Where each rank's part of `delta_recv` starts, and a cursor per rank.
    delta_starts: Vec<usize>,
    delta_cursor: Vec<usize>,
    comm_secs: f64,
}

impl<C: Communicator> DistributedNaturalGradient<C> {
    /// The natural gradient for `net` on this rank's shards of up to
    /// `max_batch` columns. `config` as for [`NaturalGradient::new`], with
    /// `preconditioning` set to `Full` and `wishart_output_factor` to false
    /// (see the [module documentation](self)); every rank must pass the same
    /// configuration and network.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] as [`NaturalGradient::new`], and for
    /// `factor_update` `RankUpdate` or buffers beyond MPI's counts.
    pub fn new(
        net: &Mlp,
        max_batch: usize,
        config: NaturalGradientConfig,
        comm: C,
    ) -> Result<DistributedNaturalGradient<C>, Error> {
        if config.factor_update == FactorUpdate::RankUpdate {
            return Err(Error::InvalidConfig(
                "distributed natural gradient needs factor_update Refactor: a rank update \
                 of the Cholesky factor needs the combined minibatch's columns"
                    .into(),
            ));
        }
        let config = NaturalGradientConfig {
            preconditioning: Preconditioning::Full,
            wishart_output_factor: false,
            ..config
        };
        let ng = NaturalGradient::new(net, max_batch, config)?;
        let (ranks, rank) = (comm.size(), comm.rank());
        let reduce = GradientReduce::new(net, ranks)?;
        // Owners: largest factorisation work first, to the least loaded rank.
        let work: Vec<f64> = ng
            .pre
            .layers
            .iter()
            .map(|st| (st.n_in1 as f64).powi(3) + (st.n_out as f64).powi(3))
            .collect();
        let mut by_work: Vec<usize> = (0..work.len()).collect();
        by_work.sort_by(|&a, &b| work[b].total_cmp(&work[a]).then(a.cmp(&b)));
        let mut load = vec![0.0f64; ranks];
        let mut owner = vec![0; work.len()];
        for l in by_work {
            let r = (0..ranks)
                .min_by(|&a, &b| load[a].total_cmp(&load[b]).then(a.cmp(&b)))
                .unwrap_or(0);
            owner[l] = r;
            load[r] += work[l];
        }
        let mut delta_counts = vec![1usize; ranks];
        for (st, &o) in ng.pre.layers.iter().zip(&owner) {
            delta_counts[o] += st.n_out * st.n_in1;
        }
        let stats_len: usize = ng
            .pre
            .layers
            .iter()
            .map(|st| {
                packed_len(st.n_in1)
                    + if st.g_diag {
                        st.n_out
                    } else {
                        packed_len(st.n_out)
                    }
            })
            .sum::<usize>()
            + 1;
        let delta_total: usize = delta_counts.iter().sum();
        check_count(stats_len)?;
        check_count(delta_total)?;
        let sum_a = ng
            .pre
            .layers
            .iter()
            .map(|st| vec![0.0; st.n_in1 * st.n_in1])
            .collect();
        let sum_g = ng
            .pre
            .layers
            .iter()
            .map(|st| {
                if st.g_diag {
                    Vec::new()
                } else {
                    vec![0.0; st.n_out * st.n_out]
                }
            })
            .collect();
        Ok(DistributedNaturalGradient {
            delta_send: vec![0.0; delta_counts[rank]],
            delta_recv: vec![0.0; delta_total],
            delta_starts: delta_counts
                .iter()
                .scan(0, |acc, &c| {
                    let start = *acc;
                    *acc += c;
                    Some(start)
                })
                .collect(),
            delta_cursor: vec![0; ranks],
            delta_counts,
            ng,
            comm,
            reduce,
            owner,
            sum_a,
            sum_g,
            stats_send: vec![0.0; stats_len],
            stats_recv: vec![0.0; stats_len],
            comm_secs: 0.0,
        })
    }

    /// The optimizer every rank runs (its factors are those of the combined
    /// batch; its Cholesky factors are current only on each layer's owner).
    pub fn inner(&self) -> &NaturalGradient {
        &self.ng
    }
    /// The communicator.
    pub fn comm(&self) -> &C {
        &self.comm
    }
    /// The owner rank of each layer (which factorises it and preconditions
    /// its gradient).
    pub fn owners(&self) -> &[usize] {
        &self.owner
    }
    /// Seconds the last step spent in collective calls (waiting for other
    /// ranks included).
    pub fn last_comm_secs(&self) -> f64 {
        self.comm_secs
    }
    /// Where the last step's time went (communication included in the
    /// phase that made it).
    pub fn last_phase_secs(&self) -> PhaseSecs {
        self.ng.phases
    }
    /// The state a checkpoint needs, the same on every rank (collective:
    /// every rank calls it). Each layer's Cholesky factors are current only
    /// on its owner, so they are summed over the ranks with zeros from the
    /// others (one all-reduce per buffer; checkpoints are rare). Rank 0
    /// saves the result, and a run resumed from it with the same number of
    /// ranks continues bit for bit.
    pub fn save_state(&self) -> OptimizerState {
        let mut state = self.ng.save_state();
        let rank = self.comm.rank();
        // `state_buffers` order: per layer A, G, chol A, chol G.
        for (l, &owner) in self.owner.iter().enumerate() {
            for buf in state.buffers[4 * l + 2..4 * l + 4].iter_mut() {
                let send = if owner == rank {
                    buf.clone()
                } else {
                    vec![0.0; buf.len()]
                };
                self.comm.all_reduce_sum_f32(&send, buf);
            }
        }
        state
    }
    /// Restores a state from [`DistributedNaturalGradient::save_state`] (or
    /// from a single-process [`NaturalGradient`] of the same settings) on
    /// every rank.
    pub fn load_state(&mut self, state: &OptimizerState) -> Result<(), Error> {
        self.ng.load_state(state)
    }

    /// One step on this rank's shard `x`, `y` of the combined minibatch
    /// (collective: every rank calls it, with shards of any sizes). Returns
    /// the combined batch's loss before the step. On error on any rank every
    /// rank returns an error, and no weights change.
    pub fn step(
        &mut self,
        net: &mut Mlp,
        ws: &mut Workspace,
        x: MatRef<'_, f32>,
        y: MatRef<'_, f32>,
    ) -> Result<StepStats, Error> {
        let clock = Instant::now();
        self.comm_secs = 0.0;
        let mut laps = PhaseSecs::default();
        let lap = |slot: &mut f64| *slot = clock.elapsed().as_secs_f64();
        // 1. Loss and the combined batch's gradient.
        let ng = &mut self.ng;
        let (loss, local_loss) = self.reduce.run(
            &self.comm,
            net,
            &ng.sizes,
            ng.pre.max_batch,
            ws,
            x,
            y,
            &mut self.comm_secs,
        )?;
        ng.add_weight_decay(net, ws);
        // The configuration's preconditioning is `Full` (see `new`).
        let plan = ng.plan_step(net, ws.batch(), ws.par());
        lap(&mut laps.loss_and_gradient);
        // 2. Local factor sums, all-reduced, into the running averages.
        if plan.schedule.statistics {
            self.combine_factor_statistics(net, ws, &plan)?;
        }
        lap(&mut laps.sampled_backward);
        // 3. Each owner factorises its layers.
        self.factorise_owned_layers(&plan)?;
        lap(&mut laps.factorise);
        // 4. Each owner preconditions its layers' gradients; the updates are
        //    gathered on every rank.
        let grad_dot_delta = self.precondition_owned_layers(ws, &plan)?;
        lap(&mut laps.precondition);
        // 5. Apply (the same update on every rank), and 6. the
        //    Levenberg-Marquardt rule on the losses summed over ranks.
        self.ng.apply_update(net, &plan)?;
        if plan.lm_check {
            self.check_damping(net, ws, x, y, local_loss, grad_dot_delta, &plan);
        }
        lap(&mut laps.apply_and_damping);
        self.ng.phases = laps.durations();
        Ok(StepStats { loss })
    }

    /// Phase 2: the factors' sums over this rank's shard (`A` from the
    /// activations, `G` from sampled targets, or the exact output diagonal),
    /// all-reduced into every rank's running averages. An error on any rank
    /// is an error on every rank.
    fn combine_factor_statistics(
        &mut self,
        net: &Mlp,
        ws: &Workspace,
        plan: &StepPlan,
    ) -> Result<(), Error> {
        let rank = self.comm.rank();
        // The shard's first sampling chunk in the combined batch.
        let first_chunk: u64 = self.reduce.batches[..rank]
            .iter()
            .map(|b| b.div_ceil(SAMPLE_CHUNK_COLS) as u64)
            .sum();
        let local = self.local_factor_sums(net, ws, plan, first_chunk);
        let b = plan.batch;
        let ng = &self.ng;
        // Pack: per layer the lower triangle of A's sum, then G's (or
        // the diagonal times the local batch), column by column.
        let mut off = 0;
        for (l, st) in ng.pre.layers.iter().enumerate() {
            off += pack_lower(&self.sum_a[l], st.n_in1, &mut self.stats_send[off..]);
            if st.g_diag {
                let n = st.n_out;
                self.stats_send[off..off + n]
                    .iter_mut()
                    .zip(&ng.sampler.output_diagonal)
                    .for_each(|(s, &d)| *s = d * b as f32);
                off += n;
            } else {
                off += pack_lower(&self.sum_g[l], st.n_out, &mut self.stats_send[off..]);
            }
        }
        self.stats_send[off] = if local.is_err() { 1.0 } else { 0.0 };
        let t = Instant::now();
        self.comm
            .all_reduce_sum_f32(&self.stats_send, &mut self.stats_recv);
        self.comm_secs += t.elapsed().as_secs_f64();
        let failed = self.stats_recv[off];
        match local {
            Err(e) => return Err(e),
            Ok(()) if failed > 0.0 => {
                return Err(remote_failure("the curvature statistics", failed))
            }
            Ok(()) => {}
        }
        let total = self.reduce.total();
        let rho = plan.schedule.rho;
        let alpha_a = (1.0 - rho) / total as f32;
        let alpha_g = (1.0 - rho) / (total * ng.pre.config.samples) as f32;
        let mut off = 0;
        for st in self.ng.pre.layers.iter_mut() {
            off += unpack_lower_into(
                &mut st.a_factor,
                st.n_in1,
                rho,
                alpha_a,
                &self.stats_recv[off..],
            );
            let n = st.n_out;
            if st.g_diag {
                for (i, &s) in self.stats_recv[off..off + n].iter().enumerate() {
                    let g = &mut st.g_factor[i * n + i];
                    *g = rho * *g + (1.0 - rho) * (s / total as f32);
                }
                off += n;
            } else {
                off +=
                    unpack_lower_into(&mut st.g_factor, n, rho, alpha_g, &self.stats_recv[off..]);
            }
        }
        Ok(())
    }

    /// This rank's sums `E E^T` over its sampled targets (into `sum_g`, or
    /// the exact output diagonal into the sampler) and `Abar Abar^T` (into
    /// `sum_a`), per layer. `first_chunk` places the shard's samples in the
    /// combined batch's streams.
    fn local_factor_sums(
        &mut self,
        net: &Mlp,
        ws: &Workspace,
        plan: &StepPlan,
        first_chunk: u64,
    ) -> Result<(), Error> {
        let (b, par) = (plan.batch, plan.par);
        let ng = &mut self.ng;
        if plan.out_diag {
            ng.sampler.exact_output_diagonal(net, ws)?;
        }
        for s in 0..ng.pre.config.samples {
            ng.sampler
                .draw_and_backpropagate(net, ws, false, first_chunk)?;
            let beta = if s == 0 { 0.0 } else { 1.0 };
            ng.pre
                .layers
                .par_iter_mut()
                .zip(self.sum_g.par_iter_mut())
                .zip(ng.sampler.errs.par_iter())
                .with_min_len(layers_per_task(par))
                .try_for_each(|((st, sum), e)| {
                    if st.g_diag {
                        return Ok(());
                    }
                    let n = st.n_out;
                    let stack = MemStack::new(&mut st.scratch);
                    let g = MatMut::from_column_major_slice_mut(sum, n, n);
                    syrk_lower(g, beta, view(e, n, b, n), 1.0, par, stack)
                })?;
        }
        let acts = &ws.activation_buffers()[..ng.pre.layers.len()];
        ng.pre
            .layers
            .par_iter_mut()
            .zip(self.sum_a.par_iter_mut())
            .zip(acts.par_iter())
            .with_min_len(layers_per_task(par))
            .try_for_each(|((st, sum), a)| {
                let n = st.n_in1;
                let stack = MemStack::new(&mut st.scratch);
                let f = MatMut::from_column_major_slice_mut(sum, n, n);
                syrk_lower(f, 0.0, view(a, n, b, n), 1.0, par, stack)
            })?;
        Ok(())
    }

    /// Phase 3: each owner factorises its layers' damped factors (on
    /// refresh steps); all ranks retry together at a tenfold damping when
    /// any factor is not positive definite.
    fn factorise_owned_layers(&mut self, plan: &StepPlan) -> Result<(), Error> {
        let rank = self.comm.rank();
        let par = plan.par;
        let ng = &mut self.ng;
        let pi_correction = ng.pre.config.pi_correction;
        let mut damping = ng.pre.damping;
        let (lo, hi) = ng.pre.config.damping_bounds;
        let owner = &self.owner;
        for attempt in 0..=MAX_DAMPING_RETRIES {
            if !(plan.schedule.refresh || attempt > 0) {
                break;
            }
            let shift = damping.sqrt();
            let result = ng
                .pre
                .layers
                .par_iter_mut()
                .enumerate()
                .with_min_len(layers_per_task(par))
                .try_for_each(|(l, st)| -> Result<(), natgrad_kernels::Error> {
                    if owner[l] != rank {
                        return Ok(());
                    }
                    let empty_a = MatRef::from_column_major_slice(&[], st.n_in1, 0);
                    let empty_g = MatRef::from_column_major_slice(&[], st.n_out, 0);
                    st.factorise(empty_a, empty_g, shift, pi_correction, par)
                });
            let status = match &result {
                Ok(()) => [0.0, 0.0],
                Err(natgrad_kernels::Error::NotPositiveDefinite { .. }) => [1.0, 0.0],
                Err(_) => [0.0, 1.0],
            };
            let mut all = [0.0f64; 2];
            let t = Instant::now();
            self.comm.all_reduce_sum_f64(&status, &mut all);
            self.comm_secs += t.elapsed().as_secs_f64();
            if all[1] > 0.0 {
                return Err(match result {
                    Err(e) if status[1] > 0.0 => e.into(),
                    _ => remote_failure("a factorisation", all[1]),
                });
            }
            if all[0] == 0.0 {
                break;
            }
            if attempt < MAX_DAMPING_RETRIES && damping < hi {
                damping = (damping * 10.0).min(hi);
                ng.pre.stale = true;
            } else {
                ng.pre.damping = damping;
                return Err(Error::NotPositiveDefinite(format!(
                    "a curvature factor would not factorise even at damping {damping:e} \
                     (on {} rank(s)); the step was not taken",
                    all[0]
                )));
            }
        }
        ng.pre.damping = damping.clamp(lo, hi);
        ng.pre.stale = false;
        Ok(())
    }

    /// Phase 4: each owner preconditions its layers' gradients (the full
    /// form), and every rank gathers every layer's update. Returns
    /// `sum_i <grad_i, dW_i>`, the same on every rank.
    fn precondition_owned_layers(&mut self, ws: &Workspace, plan: &StepPlan) -> Result<f64, Error> {
        let rank = self.comm.rank();
        let (par, eta) = (plan.par, plan.eta);
        let owner = &self.owner;
        let result = self
            .ng
            .pre
            .layers
            .par_iter_mut()
            .zip(ws.grads().par_iter())
            .enumerate()
            .with_min_len(layers_per_task(par))
            .try_for_each(|(l, (st, g))| -> Result<(), natgrad_kernels::Error> {
                if owner[l] != rank {
                    return Ok(());
                }
                let gm = MatRef::from_column_major_slice(g, st.n_out, st.n_in1);
                st.precondition_full(gm, -eta, par)
            });
        self.gather_updates(result)?;
        for (st, g) in self.ng.pre.layers.iter_mut().zip(ws.grads()) {
            st.grad_dot_delta = dot_f64(&st.delta, g)?;
        }
        // Summed in layer order on every rank, as in the single-process step.
        self.ng.checked_grad_dot_delta()
    }

    /// Every rank's owned updates (and its failure flag, from `result`, the
    /// outcome of its own preconditioning) gathered into every rank's
    /// layers' `delta`.
    fn gather_updates(&mut self, result: Result<(), natgrad_kernels::Error>) -> Result<(), Error> {
        let rank = self.comm.rank();
        let owner = &self.owner;
        let mut off = 0;
        for (l, st) in self.ng.pre.layers.iter().enumerate() {
            if owner[l] == rank {
                self.delta_send[off..off + st.delta.len()].copy_from_slice(&st.delta);
                off += st.delta.len();
            }
        }
        self.delta_send[off] = if result.is_err() { 1.0 } else { 0.0 };
        let t = Instant::now();
        self.comm.all_gather_varcount_f32(
            &self.delta_send,
            &mut self.delta_recv,
            &self.delta_counts,
        );
        self.comm_secs += t.elapsed().as_secs_f64();
        let mut failed = 0.0;
        for (r, (cursor, (&start, &count))) in self
            .delta_cursor
            .iter_mut()
            .zip(self.delta_starts.iter().zip(&self.delta_counts))
            .enumerate()
        {
            *cursor = start;
            if r != rank {
                failed += self.delta_recv[start + count - 1];
            }
        }
        if let Err(e) = result {
            return Err(e.into());
        }
        if failed > 0.0 {
            return Err(remote_failure("the preconditioned update", failed));
        }
        for (l, st) in self.ng.pre.layers.iter_mut().enumerate() {
            let r = owner[l];
            let (len, start) = (st.delta.len(), self.delta_cursor[r]);
            if r != rank {
                st.delta
                    .copy_from_slice(&self.delta_recv[start..start + len]);
            }
            self.delta_cursor[r] += len;
        }
        Ok(())
    }

    /// Phase 6, on Levenberg-Marquardt steps: each rank's loss on the first
    /// `ceil(f b_r)` columns of its shard before and after the step, summed
    /// over ranks, then the single-process rule
    /// ([`NaturalGradient::adapt_damping`]) on every rank alike.
    #[allow(clippy::too_many_arguments)]
    fn check_damping(
        &mut self,
        net: &mut Mlp,
        ws: &mut Workspace,
        x: MatRef<'_, f32>,
        y: MatRef<'_, f32>,
        local_loss: f64,
        grad_dot_delta: f64,
        plan: &StepPlan,
    ) {
        let checked = self
            .ng
            .checked_losses(net, ws, x, y, local_loss, plan.batch);
        let send = match checked {
            Ok((before, Ok(after), c)) => [before * c as f64, after * c as f64, c as f64, 0.0],
            _ => [0.0, 0.0, 0.0, 1.0],
        };
        let mut all = [0.0f64; 4];
        let t = Instant::now();
        self.comm.all_reduce_sum_f64(&send, &mut all);
        self.comm_secs += t.elapsed().as_secs_f64();
        let (loss_before, new_loss) = (all[0] / all[2], all[1] / all[2]);
        // Non-finite on some rank: NaN, which the rule takes back as the
        // single-process step does.
        let after = if all[3] > 0.0 { f64::NAN } else { new_loss };
        self.ng
            .adapt_damping(net, loss_before, after, grad_dot_delta, plan.eta);
    }
}

/// Packs the lower triangle of the column-major `n x n` matrix `m` into
/// `out`, column by column; returns the packed length.
fn pack_lower(m: &[f32], n: usize, out: &mut [f32]) -> usize {
    let mut off = 0;
    for j in 0..n {
        let col = &m[j * n + j..(j + 1) * n];
        out[off..off + col.len()].copy_from_slice(col);
        off += col.len();
    }
    off
}

/// `M <- rho M + alpha S` on the lower triangle of the column-major `n x n`
/// matrix `m`, `S` packed as by [`pack_lower`]; returns the packed length.
/// With `rho` 0 the old values are not read (as a SYRK with `beta` 0).
fn unpack_lower_into(m: &mut [f32], n: usize, rho: f32, alpha: f32, packed: &[f32]) -> usize {
    let mut off = 0;
    for j in 0..n {
        let col = &mut m[j * n + j..(j + 1) * n];
        let src = &packed[off..off + col.len()];
        if rho == 0.0 {
            col.iter_mut().zip(src).for_each(|(m, &s)| *m = alpha * s);
        } else {
            col.iter_mut()
                .zip(src)
                .for_each(|(m, &s)| *m = rho * *m + alpha * s);
        }
        off += col.len();
    }
    off
}
