//! `natgrad mpi-train` (features `cli` and `mpi`): data-parallel training of
//! an autoencoder preset under `mpirun -np R`, each rank on its share of
//! every minibatch with `--threads` kernel threads, rank 0 printing and
//! writing the outputs. Reports the step time, the examples per second and
//! the time in collective calls (docs/distributed.md).

use crate::app::args::{clap_parser, parse_command, parse_path, parse_positive, parse_seed};
use crate::app::json::round;
use crate::app::race::run::prepare;
use crate::app::settings::{tuned_for, Hyper, OptimizerKind};
use crate::checkpoint::Checkpoint;
use crate::distributed::{Communicator, DistributedNaturalGradient, DistributedSgd};
use crate::kernels::rng::Rng;
use crate::kernels::{MatRef, Par};
use crate::mlp::Mlp;
use crate::optim::{OptimizerState, PhaseSecs, StepStats};
use crate::workspace::Workspace;
use crate::Error;
use serde::Serialize;
use std::time::Instant;

/// What `natgrad mpi-train` does, after the options in `--help`.
const NOTES: &str = "\
Trains the preset's autoencoder with the tuned settings (the natural gradient
in its full form) on a global minibatch of B examples (default: the tuned
one) split over the R ranks, for N steps, and prints on rank 0 the median
step time, examples per second, median time in communication and the loss
before and after, and the test loss.";

/// The arguments of `natgrad mpi-train`.
#[derive(clap::Parser, Debug)]
#[command(
    name = "natgrad mpi-train",
    about = "Data-parallel training over MPI (run under mpirun)",
    override_usage = "mpirun -np R natgrad mpi-train [--preset deep|paper] [--optimizer ng|sgd]
                 [--batch B] [--steps N] [--threads T] [--seed S] [--data DIR]
                 [--out FILE.json] [--checkpoint FILE] [--resume FILE]",
    after_help = NOTES,
    args_override_self = true
)]
struct Options {
    /// The preset: deep or paper.
    #[arg(long, value_name = "PRESET", default_value = "deep")]
    preset: String,
    /// The optimizer: ng or sgd (distributed Adam is not implemented).
    #[arg(long = "optimizer", value_name = "OPTIMIZER", default_value = "ng", value_parser = clap_parser(parse_kind))]
    kind: OptimizerKind,
    /// The global minibatch, split over the ranks (default: the tuned one).
    #[arg(long, value_name = "B", value_parser = clap_parser(|v| parse_positive("--batch", v)))]
    batch: Option<usize>,
    /// Training steps.
    #[arg(long, value_name = "N", default_value = "20", value_parser = clap_parser(|v| parse_positive("--steps", v)))]
    steps: usize,
    /// Kernel threads per rank.
    #[arg(long, value_name = "T", default_value = "1", value_parser = clap_parser(|v| parse_positive("--threads", v)))]
    threads: usize,
    /// Seed of the initial weights and data order.
    #[arg(long, value_name = "S", default_value = "1", value_parser = clap_parser(parse_seed))]
    seed: u64,
    /// An IDX image set instead of the embedded digits.
    #[arg(long, value_name = "DIR", value_parser = clap_parser(parse_path))]
    data: Option<std::path::PathBuf>,
    /// Rank 0 writes the figures it prints as one JSON object.
    #[arg(long, value_name = "FILE.json", value_parser = clap_parser(parse_path))]
    out: Option<std::path::PathBuf>,
    /// After the N steps every rank gathers the state and rank 0 saves it.
    #[arg(long, value_name = "FILE", value_parser = clap_parser(parse_path))]
    checkpoint: Option<std::path::PathBuf>,
    /// Every rank loads the state and the run goes on bit for bit as if it
    /// had not stopped (same R, batch, preset and seed).
    #[arg(long, value_name = "FILE", value_parser = clap_parser(parse_path))]
    resume: Option<std::path::PathBuf>,
}

/// `--optimizer`: ng or sgd.
fn parse_kind(v: &str) -> Result<OptimizerKind, Error> {
    let kind = OptimizerKind::parse(v)?;
    if kind == OptimizerKind::Adam {
        return Err(Error::Usage(
            "mpi-train runs ng or sgd (distributed Adam is not implemented)".into(),
        ));
    }
    Ok(kind)
}

/// The distributed optimizer of either kind.
enum Trainer<C: Communicator> {
    Sgd(DistributedSgd<C>),
    Ng(Box<DistributedNaturalGradient<C>>),
}

impl<C: Communicator> Trainer<C> {
    fn step(
        &mut self,
        net: &mut Mlp,
        ws: &mut Workspace,
        x: MatRef<'_, f32>,
        y: MatRef<'_, f32>,
    ) -> Result<StepStats, Error> {
        match self {
            Trainer::Sgd(o) => o.step(net, ws, x, y),
            Trainer::Ng(o) => o.step(net, ws, x, y),
        }
    }
    fn phases(&self) -> Option<PhaseSecs> {
        match self {
            Trainer::Sgd(_) => None,
            Trainer::Ng(o) => Some(o.last_phase_secs()),
        }
    }
    fn save_state(&self) -> OptimizerState {
        match self {
            Trainer::Sgd(o) => o.save_state(),
            Trainer::Ng(o) => o.save_state(),
        }
    }
    fn load_state(&mut self, state: &OptimizerState) -> Result<(), Error> {
        match self {
            Trainer::Sgd(o) => o.load_state(state),
            Trainer::Ng(o) => o.load_state(state),
        }
    }
    fn comm_secs(&self) -> f64 {
        match self {
            Trainer::Sgd(o) => o.last_comm_secs(),
            Trainer::Ng(o) => o.last_comm_secs(),
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The `--out` file: the run's settings and figures.
#[derive(Serialize)]
struct SummaryLine<'a> {
    optimizer: &'static str,
    preset: &'a str,
    ranks: usize,
    threads_per_rank: usize,
    global_batch: usize,
    steps: usize,
    median_step_ms: f64,
    examples_per_sec: f64,
    median_comm_ms: f64,
    first_loss: f64,
    last_loss: f64,
    test_loss: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    median_phase_ms: Option<Vec<f64>>,
}

/// Continues from the checkpoint at `path`: checks that it was saved by a
/// run with the same `identity` (ranks, global batch, seed) and network,
/// loads the network and the optimizer's state, replays the epoch shuffles
/// and returns the (cursor, shuffles, steps done) saved with it.
fn resume<C: Communicator>(
    path: &std::path::Path,
    identity: &[(&str, u64)],
    net: &mut Mlp,
    trainer: &mut Trainer<C>,
    rng: &mut Rng,
    order: &mut [usize],
) -> Result<(usize, u64, u64), Error> {
    let ckpt = crate::checkpoint::load(path)?;
    for &(key, want) in identity {
        let got = ckpt.progress_value(key);
        if got != Some(want) {
            return Err(Error::Format {
                path: path.to_path_buf(),
                detail: format!("the checkpoint has {key} {got:?}, this run {want}"),
            });
        }
    }
    let value = |key: &str| {
        ckpt.progress_value(key).ok_or_else(|| Error::Format {
            path: path.to_path_buf(),
            detail: format!("the checkpoint has no {key}"),
        })
    };
    let (c, s, d) = (value("cursor")?, value("shuffles")?, value("steps")?);
    if !ckpt.net.has_sizes(&net.sizes()) || c as usize > order.len() || s == 0 {
        return Err(Error::Format {
            path: path.to_path_buf(),
            detail: "the checkpoint is for another network or data set".into(),
        });
    }
    *net = ckpt.net;
    trainer.load_state(&ckpt.optimizer)?;
    // Replay the epoch shuffles.
    for _ in 1..s {
        rng.shuffle(order);
    }
    Ok((c as usize, s, d))
}

/// What rank 0 measured over the run.
struct Measured {
    /// Seconds of each step.
    step_secs: Vec<f64>,
    /// Seconds of each step's communication.
    comm_secs: Vec<f64>,
    /// Each step's training loss.
    losses: Vec<f64>,
    /// Seconds of each phase of each step (the natural gradient's).
    phases: Option<[Vec<f64>; 5]>,
}

/// Prints rank 0's figures and writes `--out`: `(ranks, global batch,
/// rank 0's share)` of the run, the final test loss and the measurements.
fn report(
    o: &Options,
    (ranks, global, b): (usize, usize, usize),
    test_loss: f64,
    mut m: Measured,
) -> Result<(), Error> {
    let step_ms = median(&mut m.step_secs) * 1e3;
    let comm_ms = median(&mut m.comm_secs) * 1e3;
    let examples_per_sec = global as f64 / (step_ms / 1e3);
    let (first, last) = (m.losses[0], m.losses[m.losses.len() - 1]);
    println!(
        "{} on {}: {ranks} rank(s) x {} thread(s), global batch {global} ({b} on rank 0), {} steps",
        o.kind.name(),
        o.preset,
        o.threads,
        o.steps
    );
    println!(
        "median step {step_ms:.1} ms ({examples_per_sec:.0} examples/s), of which communication {comm_ms:.1} ms; \
         loss {first:.3} -> {last:.3}; test loss {test_loss:.3}"
    );
    let phase_ms: Option<Vec<f64>> = m
        .phases
        .as_mut()
        .map(|p| p.iter_mut().map(|v| median(v) * 1e3).collect());
    if let Some(phase_ms) = &phase_ms {
        println!(
            "median phases (ms, communication included): loss and gradient {:.1}, \
             sampled backward and factor sums {:.1}, factorise {:.1}, precondition and \
             gather {:.1}, apply and LM check {:.1}",
            phase_ms[0], phase_ms[1], phase_ms[2], phase_ms[3], phase_ms[4]
        );
    }
    if let Some(path) = &o.out {
        let mut json = crate::app::json::line(&SummaryLine {
            optimizer: o.kind.name(),
            preset: &o.preset,
            ranks,
            threads_per_rank: o.threads,
            global_batch: global,
            steps: o.steps,
            median_step_ms: round(step_ms, 3),
            examples_per_sec: round(examples_per_sec, 1),
            median_comm_ms: round(comm_ms, 3),
            first_loss: first,
            last_loss: last,
            test_loss,
            median_phase_ms: phase_ms,
        });
        json.push('\n');
        // Temporary file and rename, as every output of the application.
        crate::app::output::write_atomic(path, json.as_bytes())?;
    }
    Ok(())
}

/// Entry point of `natgrad mpi-train`.
pub fn cli_main(args: &[String]) -> Result<(), Error> {
    let Some(o) = parse_command::<Options>(args)? else {
        return Ok(());
    };
    let universe = mpi::initialize()
        .ok_or_else(|| Error::Distributed("MPI could not be initialised".into()))?;
    let world = universe.world();
    let (rank, ranks) = (world.rank(), world.size());
    // The global pool, so that the loop (and MPI) stays on this thread.
    rayon::ThreadPoolBuilder::new()
        .num_threads(o.threads)
        .build_global()
        .map_err(|e| Error::InvalidConfig(format!("cannot start {} threads: {e}", o.threads)))?;
    let par = if o.threads == 1 {
        Par::Seq
    } else {
        Par::rayon(o.threads)
    };
    let data = crate::data::load(o.data.as_deref())?;
    let mut net = Mlp::preset(&o.preset, o.seed)?;
    let prepared = prepare(&data, &net)?;
    let hyper = tuned_for(&o.preset, o.kind, prepared.train_count)?;
    let global = o.batch.unwrap_or(hyper.batch());
    if global < ranks || global > prepared.train_count {
        return Err(Error::Usage(format!(
            "--batch {global} must be between the number of ranks ({ranks}) and the training set's {} examples",
            prepared.train_count
        )));
    }
    // Rank r's share of every minibatch: columns [start, start + b).
    let start = global * rank / ranks;
    let b = global * (rank + 1) / ranks - start;
    let mut trainer = match hyper {
        Hyper::Ng(_, c) => Trainer::Ng(Box::new(DistributedNaturalGradient::new(
            &net,
            b,
            c,
            mpi::traits::Communicator::duplicate(&world),
        )?)),
        Hyper::Sgd(_, c) => Trainer::Sgd(DistributedSgd::new(
            &net,
            b,
            c,
            mpi::traits::Communicator::duplicate(&world),
        )?),
        Hyper::Adam(..) => {
            return Err(Error::Usage("mpi-train runs ng or sgd".into()));
        }
    };
    let f = prepared.features;
    let mut ws = Workspace::new(&net, b, par)?;
    // Autoencoding: the inputs are the targets.
    let mut x = vec![0.0f32; f * b];
    // Every rank draws the same epoch orders.
    let mut rng = Rng::new(o.seed);
    let mut order: Vec<usize> = (0..prepared.train_count).collect();
    rng.shuffle(&mut order);
    let (mut cursor, mut shuffles, mut done) = (0usize, 1u64, 0u64);
    // The run's identity, which a resumed run must match.
    let identity = [
        ("ranks", ranks as u64),
        ("global_batch", global as u64),
        ("seed", o.seed),
    ];
    if let Some(path) = &o.resume {
        (cursor, shuffles, done) = resume(
            path,
            &identity,
            &mut net,
            &mut trainer,
            &mut rng,
            &mut order,
        )?;
    }
    let (mut step_secs, mut comm_secs) = (Vec::new(), Vec::new());
    let mut losses = Vec::new();
    let mut phases: [Vec<f64>; 5] = Default::default();
    for _ in 0..o.steps {
        if cursor + global > order.len() {
            rng.shuffle(&mut order);
            shuffles += 1;
            cursor = 0;
        }
        let mine = &order[cursor + start..cursor + start + b];
        cursor += global;
        prepared.train.gather(mine, &mut x)?;
        let xm = MatRef::from_column_major_slice(&x, f, b);
        let ym = xm;
        let clock = Instant::now();
        let stats = trainer.step(&mut net, &mut ws, xm, ym)?;
        step_secs.push(clock.elapsed().as_secs_f64());
        comm_secs.push(trainer.comm_secs());
        if let Some(p) = trainer.phases() {
            for (v, t) in phases.iter_mut().zip([
                p.loss_and_gradient,
                p.sampled_backward,
                p.factorise,
                p.precondition,
                p.apply_and_damping,
            ]) {
                v.push(t);
            }
        }
        losses.push(stats.loss);
    }
    done += o.steps as u64;
    if let Some(path) = &o.checkpoint {
        // Collective: the natural gradient gathers its owners' factors.
        let state = trainer.save_state();
        if rank == 0 {
            let mut progress: Vec<(String, u64)> =
                identity.iter().map(|&(k, v)| (k.to_string(), v)).collect();
            progress.extend([
                ("cursor".to_string(), cursor as u64),
                ("shuffles".to_string(), shuffles),
                ("steps".to_string(), done),
            ]);
            let ckpt = Checkpoint {
                net: net.clone(),
                optimizer: state,
                progress,
            };
            crate::checkpoint::save(path, &ckpt)?;
        }
    }
    if rank != 0 {
        return Ok(());
    }
    let test_loss = {
        let chunk = 1000.min(prepared.test_count.max(1));
        let mut ws = Workspace::new(&net, chunk, par)?;
        let mut buf = vec![0.0f32; f * chunk];
        crate::app::race::run::mean_loss(&net, &mut ws, prepared.test, &mut buf)?
    };
    let measured = Measured {
        step_secs,
        comm_secs,
        losses,
        phases: trainer.phases().is_some().then_some(phases),
    };
    report(&o, (ranks, global, b), test_loss, measured)
}
