//! Data-parallel steps under MPI (feature `mpi`), run as
//! `mpirun -np 2 target/<profile>/deps/mpi-<hash>` (scripts/ci-mpi.sh does
//! it): each rank trains on its shard of a combined minibatch, and the
//! weights are compared with a single-process step on the combined batch,
//! which every rank also computes. Runs on any number of ranks, 1 included.
//!
//! Tolerances. The distributed step sums the same f32 terms as the
//! single-process one in another order (per rank, then across ranks), with
//! two extra roundings (the local mean times `b_r`, the sum times `1/B`). A
//! sum of `B` terms reordered moves by at most `(B - 1) u sum |x_i|`
//! (Higham, `u = 2^-24`); with `sum |x_i| <= B max |x_i|` as for a mean
//! gradient, each gradient entry moves by at most about `(B + 2) u` of the
//! size of its largest per-example term. SGD passes that on scaled by the
//! learning rate, so the weights of the two runs must agree to
//! `(B + 2) u` times the largest per-example update, summed over the steps;
//! the test takes `4 (B + 2) u` times the largest update of the reference,
//! summed over steps (a factor 4 for the per-example terms exceeding their
//! mean and for the steps' drift through the forward pass). The natural
//! gradient also reorders the sums of its Kronecker factors; a damped solve
//! `(F + s I)^-1` passes a relative perturbation of `F` on multiplied by at
//! most the condition number `(lambda_max + s) / s <= (tr F + s) / s`, so
//! the bound per step is `4 (B + 2) u (1 + kappa_A + kappa_G)` times the
//! step, with the traces read from the reference's factors at each step.

use mpi::topology::SimpleCommunicator;
use natgrad::distributed::{Communicator, DistributedNaturalGradient, DistributedSgd};
use natgrad::kernels::rng::Rng;
use natgrad::kernels::{Activation, MatRef, Par};
use natgrad::mlp::{Init, Likelihood, Mlp};
use natgrad::optim::{
    DampingAdaptation, NaturalGradient, NaturalGradientConfig, Optimizer, Preconditioning, Sgd,
    SgdConfig,
};
use natgrad::workspace::Workspace;
use natgrad::Error;

const U: f64 = 1.0 / (1u64 << 24) as f64;

/// A network with several layers (so that layers have different owners).
fn net(likelihood: Likelihood) -> Mlp {
    Mlp::new(
        &[12, 10, 8, 6, 12],
        &[
            Activation::Tanh,
            Activation::Tanh,
            Activation::Tanh,
            Activation::Identity,
        ],
        likelihood,
        Init::GlorotUniform,
        3,
    )
    .expect("a valid network")
}

/// The combined minibatch of step `step`: inputs and targets, `n x total`.
fn batch(likelihood: Likelihood, total: usize, step: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(100 + step);
    let mut x = vec![0.0f32; 12 * total];
    rng.fill_normal(&mut x);
    let y = match likelihood {
        Likelihood::Bernoulli => (0..12 * total).map(|_| rng.uniform_f32()).collect(),
        _ => x.iter().map(|v| 0.5 * v).collect(),
    };
    (x, y)
}

/// Every rank's shard sizes.
fn even(ranks: usize, b: usize) -> Vec<usize> {
    vec![b; ranks]
}
fn uneven(ranks: usize) -> Vec<usize> {
    (0..ranks).map(|r| 24 + 16 * r).collect()
}

fn params(net: &Mlp) -> Vec<f32> {
    net.params().flat_map(|p| p.iter().copied()).collect()
}

/// Whether every rank holds exactly the same weights: the f64 sum over
/// ranks of identical f32 values is exact.
fn same_on_every_rank(comm: &SimpleCommunicator, w: &[f32]) -> bool {
    let send: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let mut sum = vec![0.0; send.len()];
    comm.all_reduce_sum_f64(&send, &mut sum);
    let r = comm.size() as f64;
    sum.iter().zip(&send).all(|(s, v)| *s == r * v)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max)
}

type Check = Result<(), String>;
type CheckFn<'a> = Box<dyn Fn() -> Check + 'a>;

/// A communicator of the same ranks for one optimizer.
fn dup(comm: &SimpleCommunicator) -> SimpleCommunicator {
    mpi::traits::Communicator::duplicate(comm)
}

fn ensure(ok: bool, msg: impl FnOnce() -> String) -> Check {
    if ok {
        Ok(())
    } else {
        Err(msg())
    }
}

/// SGD with momentum: distributed against single-process, several steps.
fn sgd_matches(comm: &SimpleCommunicator, shards: &[usize]) -> Check {
    let (rank, total) = (comm.rank(), shards.iter().sum::<usize>());
    let offset: usize = shards[..rank].iter().sum();
    let b = shards[rank];
    let config = SgdConfig {
        learning_rate: 0.05,
        momentum: 0.9,
        ..SgdConfig::default()
    };
    let (mut reference, mut local) = (net(Likelihood::Gaussian), net(Likelihood::Gaussian));
    let mut ws_ref = Workspace::new(&reference, total, Par::Seq).map_err(|e| e.to_string())?;
    let mut ws = Workspace::new(&local, b, Par::Seq).map_err(|e| e.to_string())?;
    let mut sgd = Sgd::new(&reference, config).map_err(|e| e.to_string())?;
    let mut dist = DistributedSgd::new(&local, b, config, dup(comm)).map_err(|e| e.to_string())?;
    let mut tol = 0.0;
    for step in 0..5 {
        let (x, y) = batch(Likelihood::Gaussian, total, step);
        let (xm, ym) = (
            MatRef::from_column_major_slice(&x, 12, total),
            MatRef::from_column_major_slice(&y, 12, total),
        );
        let before = params(&reference);
        let l_ref = sgd
            .step(&mut reference, &mut ws_ref, xm, ym)
            .map_err(|e| e.to_string())?
            .loss;
        let moved = max_abs_diff(&before, &params(&reference));
        tol += 4.0 * (total as f64 + 2.0) * U * moved;
        let l = dist
            .step(
                &mut local,
                &mut ws,
                xm.subcols(offset, b),
                ym.subcols(offset, b),
            )
            .map_err(|e| e.to_string())?
            .loss;
        ensure((l - l_ref).abs() <= 1e-6 * l_ref.abs(), || {
            format!("step {step}: loss {l} against {l_ref}")
        })?;
        let diff = max_abs_diff(&params(&local), &params(&reference));
        ensure(diff <= tol, || {
            format!("step {step}: weights differ by {diff:e}, tolerance {tol:e}")
        })?;
    }
    ensure(same_on_every_rank(comm, &params(&local)), || {
        "the ranks' weights differ".into()
    })
}

fn trace(m: MatRef<'_, f32>) -> f64 {
    (0..m.nrows()).map(|i| m[(i, i)] as f64).sum()
}

/// The natural gradient, distributed against the single-process full form.
fn ng_matches(
    comm: &SimpleCommunicator,
    shards: &[usize],
    likelihood: Likelihood,
    config: NaturalGradientConfig,
) -> Check {
    let (rank, total) = (comm.rank(), shards.iter().sum::<usize>());
    let offset: usize = shards[..rank].iter().sum();
    let b = shards[rank];
    let (mut reference, mut local) = (net(likelihood), net(likelihood));
    let mut ws_ref = Workspace::new(&reference, total, Par::Seq).map_err(|e| e.to_string())?;
    let mut ws = Workspace::new(&local, b, Par::Seq).map_err(|e| e.to_string())?;
    let ref_config = NaturalGradientConfig {
        preconditioning: Preconditioning::Full,
        wishart_output_factor: false,
        ..config
    };
    let mut ng = NaturalGradient::new(&reference, total, ref_config).map_err(|e| e.to_string())?;
    let mut dist =
        DistributedNaturalGradient::new(&local, b, config, dup(comm)).map_err(|e| e.to_string())?;
    let mut tol = 0.0;
    for step in 0..6 {
        let (x, y) = batch(likelihood, total, step);
        let (xm, ym) = (
            MatRef::from_column_major_slice(&x, 12, total),
            MatRef::from_column_major_slice(&y, 12, total),
        );
        let before = params(&reference);
        let l_ref = ng
            .step(&mut reference, &mut ws_ref, xm, ym)
            .map_err(|e| e.to_string())?
            .loss;
        let moved = max_abs_diff(&before, &params(&reference));
        let shift = (ng.damping() as f64).sqrt();
        let kappa = (0..reference.num_layers())
            .map(|i| {
                (trace(ng.forward_factor(i)) + shift) / shift
                    + (trace(ng.backward_factor(i)) + shift) / shift
            })
            .fold(0.0, f64::max);
        tol += 4.0 * (total as f64 + 2.0) * U * (1.0 + kappa) * moved;
        let l = dist
            .step(
                &mut local,
                &mut ws,
                xm.subcols(offset, b),
                ym.subcols(offset, b),
            )
            .map_err(|e| e.to_string())?
            .loss;
        ensure((l - l_ref).abs() <= 1e-5 * l_ref.abs(), || {
            format!("step {step}: loss {l} against {l_ref}")
        })?;
        let diff = max_abs_diff(&params(&local), &params(&reference));
        ensure(diff <= tol, || {
            format!("step {step}: weights differ by {diff:e}, tolerance {tol:e}")
        })?;
        let (d, d_ref) = (dist.inner().damping(), ng.damping());
        ensure(d == d_ref, || {
            format!("step {step}: damping {d} against {d_ref}")
        })?;
    }
    ensure(same_on_every_rank(comm, &params(&local)), || {
        "the ranks' weights differ".into()
    })
}

/// Uneven shards (not aligned on the sampling chunks): the ranks stay in
/// step with each other and the loss goes down.
fn ng_uneven_consistent(comm: &SimpleCommunicator) -> Check {
    let shards = uneven(comm.size());
    let (rank, total) = (comm.rank(), shards.iter().sum::<usize>());
    let offset: usize = shards[..rank].iter().sum();
    let b = shards[rank];
    let mut local = net(Likelihood::Gaussian);
    let mut ws = Workspace::new(&local, b, Par::Seq).map_err(|e| e.to_string())?;
    let mut dist =
        DistributedNaturalGradient::new(&local, b, NaturalGradientConfig::default(), dup(comm))
            .map_err(|e| e.to_string())?;
    let (x, y) = batch(Likelihood::Gaussian, total, 0);
    let (xm, ym) = (
        MatRef::from_column_major_slice(&x, 12, total),
        MatRef::from_column_major_slice(&y, 12, total),
    );
    let (xs, ys) = (xm.subcols(offset, b), ym.subcols(offset, b));
    let first = dist
        .step(&mut local, &mut ws, xs, ys)
        .map_err(|e| e.to_string())?
        .loss;
    let mut last = first;
    for _ in 0..15 {
        last = dist
            .step(&mut local, &mut ws, xs, ys)
            .map_err(|e| e.to_string())?
            .loss;
    }
    ensure(last < 0.5 * first, || format!("loss {first} -> {last}"))?;
    ensure(same_on_every_rank(comm, &params(&local)), || {
        "the ranks' weights differ".into()
    })
}

/// Rank 0's saved state, loaded on every rank into fresh optimizers and
/// networks, continues exactly as the run that was not interrupted; the
/// refresh interval 2 makes the first resumed step use the saved Cholesky
/// factors, which are current only on their owners until `save_state`
/// gathers them.
fn ng_resume_from_rank0(comm: &SimpleCommunicator) -> Check {
    let shards = even(comm.size(), 16);
    let (rank, total) = (comm.rank(), shards.iter().sum::<usize>());
    let offset: usize = shards[..rank].iter().sum();
    let b = shards[rank];
    let config = NaturalGradientConfig {
        factor_decay: 0.9,
        refresh_interval: 2,
        learning_rate: 0.5,
        seed: 9,
        ..NaturalGradientConfig::default()
    };
    let run = |net: &mut Mlp,
               dist: &mut DistributedNaturalGradient<SimpleCommunicator>,
               steps: std::ops::Range<u64>|
     -> Result<(), String> {
        let mut ws = Workspace::new(net, b, Par::Seq).map_err(|e| e.to_string())?;
        for step in steps {
            let (x, y) = batch(Likelihood::Gaussian, total, step);
            let (xm, ym) = (
                MatRef::from_column_major_slice(&x, 12, total),
                MatRef::from_column_major_slice(&y, 12, total),
            );
            dist.step(net, &mut ws, xm.subcols(offset, b), ym.subcols(offset, b))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    let new = |net: &Mlp| {
        DistributedNaturalGradient::new(net, b, config, dup(comm)).map_err(|e| e.to_string())
    };
    let mut straight = net(Likelihood::Gaussian);
    let mut opt = new(&straight)?;
    run(&mut straight, &mut opt, 0..6)?;
    let mut first = net(Likelihood::Gaussian);
    let mut opt = new(&first)?;
    run(&mut first, &mut opt, 0..3)?;
    // Rank 0's state and weights on every rank: a sum with zeros elsewhere.
    let mut state = opt.save_state();
    let from_rank0 = |v: &mut Vec<f32>| {
        let send: Vec<f32> = if rank == 0 {
            v.clone()
        } else {
            vec![0.0; v.len()]
        };
        comm.all_reduce_sum_f32(&send, v);
    };
    state.buffers.iter_mut().for_each(from_rank0);
    let mut weights = params(&first);
    from_rank0(&mut weights);
    ensure(weights == params(&first), || {
        "the ranks' weights differ".into()
    })?;
    let mut resumed = net(Likelihood::Gaussian);
    let mut it = weights.iter();
    for p in resumed.params_mut() {
        p.iter_mut()
            .for_each(|w| *w = *it.next().unwrap_or(&f32::NAN));
    }
    let mut opt = new(&resumed)?;
    opt.load_state(&state).map_err(|e| e.to_string())?;
    run(&mut resumed, &mut opt, 3..6)?;
    let diff = max_abs_diff(&params(&resumed), &params(&straight));
    ensure(diff == 0.0, || {
        format!("the resumed run differs by {diff:e}")
    })
}

/// The last rank gets a NaN in its shard at the second step: every rank's
/// step fails, no weights change, and the next step runs on every rank.
fn failure_everywhere(comm: &SimpleCommunicator, ng: bool) -> Check {
    let shards = even(comm.size(), 16);
    let (rank, total) = (comm.rank(), shards.iter().sum::<usize>());
    let offset: usize = shards[..rank].iter().sum();
    let b = shards[rank];
    let mut local = net(Likelihood::Gaussian);
    let mut ws = Workspace::new(&local, b, Par::Seq).map_err(|e| e.to_string())?;
    enum Opt {
        Sgd(DistributedSgd<SimpleCommunicator>),
        Ng(Box<DistributedNaturalGradient<SimpleCommunicator>>),
    }
    let mut opt = if ng {
        Opt::Ng(Box::new(
            DistributedNaturalGradient::new(&local, b, NaturalGradientConfig::default(), dup(comm))
                .map_err(|e| e.to_string())?,
        ))
    } else {
        Opt::Sgd(
            DistributedSgd::new(&local, b, SgdConfig::default(), dup(comm))
                .map_err(|e| e.to_string())?,
        )
    };
    let mut step =
        |net: &mut Mlp, ws: &mut Workspace, x: &[f32], y: &[f32]| -> Result<f64, Error> {
            let (xm, ym) = (
                MatRef::from_column_major_slice(x, 12, total),
                MatRef::from_column_major_slice(y, 12, total),
            );
            let (xs, ys) = (xm.subcols(offset, b), ym.subcols(offset, b));
            match &mut opt {
                Opt::Sgd(o) => o.step(net, ws, xs, ys).map(|s| s.loss),
                Opt::Ng(o) => o.step(net, ws, xs, ys).map(|s| s.loss),
            }
        };
    let (x, y) = batch(Likelihood::Gaussian, total, 0);
    step(&mut local, &mut ws, &x, &y).map_err(|e| e.to_string())?;
    let before = params(&local);
    let (mut bad, y1) = batch(Likelihood::Gaussian, total, 1);
    let last_offset: usize = shards[..shards.len() - 1].iter().sum();
    bad[12 * last_offset + 5] = f32::NAN;
    let result = step(&mut local, &mut ws, &bad, &y1);
    let expected_local = rank + 1 == comm.size();
    match &result {
        Err(Error::NonFinite(_)) if expected_local => {}
        Err(Error::Distributed(_)) if !expected_local => {}
        other => return Err(format!("the failing step gave {other:?} on rank {rank}")),
    }
    ensure(params(&local) == before, || {
        "a failed step changed the weights".into()
    })?;
    let (x2, y2) = batch(Likelihood::Gaussian, total, 2);
    let loss = step(&mut local, &mut ws, &x2, &y2).map_err(|e| e.to_string())?;
    ensure(loss.is_finite(), || {
        format!("loss {loss} after the failure")
    })?;
    ensure(same_on_every_rank(comm, &params(&local)), || {
        "the ranks' weights differ".into()
    })
}

fn main() {
    let Some(universe) = mpi::initialize() else {
        eprintln!("MPI could not be initialised");
        std::process::exit(2);
    };
    let world = universe.world();
    let (rank, ranks) = (world.rank(), world.size());
    let lm = NaturalGradientConfig {
        learning_rate: 0.5,
        ..NaturalGradientConfig::default()
    };
    let running = NaturalGradientConfig {
        factor_decay: 0.9,
        refresh_interval: 2,
        weight_decay: 1e-3,
        exact_output_factor: true,
        samples: 2,
        adaptation: DampingAdaptation::LevenbergMarquardt { interval: 2 },
        damping: 0.1,
        seed: 5,
        ..NaturalGradientConfig::default()
    };
    let checks: Vec<(&str, CheckFn)> = vec![
        (
            "sgd_matches_single_process",
            Box::new(|| sgd_matches(&world, &even(ranks, 32))),
        ),
        (
            "sgd_uneven_shards_match_single_process",
            Box::new(|| sgd_matches(&world, &uneven(ranks))),
        ),
        (
            "ng_matches_single_process_full_form",
            Box::new(|| ng_matches(&world, &even(ranks, 32), Likelihood::Gaussian, lm)),
        ),
        (
            "ng_running_averages_bernoulli_exact_output_match",
            Box::new(|| ng_matches(&world, &even(ranks, 16), Likelihood::Bernoulli, running)),
        ),
        (
            "ng_uneven_shards_stay_in_step",
            Box::new(|| ng_uneven_consistent(&world)),
        ),
        (
            "ng_resume_from_rank0_state",
            Box::new(|| ng_resume_from_rank0(&world)),
        ),
        (
            "sgd_failure_on_one_rank_errors_everywhere",
            Box::new(|| failure_everywhere(&world, false)),
        ),
        (
            "ng_failure_on_one_rank_errors_everywhere",
            Box::new(|| failure_everywhere(&world, true)),
        ),
    ];
    let mut failures = 0;
    for (name, check) in &checks {
        let result = check();
        if let Err(msg) = &result {
            eprintln!("rank {rank}: {name}: {msg}");
        }
        // A check that failed on any rank fails for all.
        let mut failed = [0.0];
        world.all_reduce_sum_f64(&[if result.is_err() { 1.0 } else { 0.0 }], &mut failed);
        if failed[0] > 0.0 {
            failures += 1;
        }
        if rank == 0 {
            let status = if failed[0] > 0.0 { "FAIL" } else { "ok" };
            println!("{status} {name} ({ranks} ranks)");
        }
    }
    if rank == 0 {
        println!("{} passed, {failures} failed", checks.len() - failures);
    }
    drop(universe);
    if failures > 0 {
        std::process::exit(1);
    }
}
