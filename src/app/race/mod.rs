//! The race: natural gradient against SGD and Adam on MNIST autoencoding, on the
//! wall clock (docs/math.md section 4).
//!
//! Every optimizer starts from the same initial weights, sees the same data
//! order and gets the same training budget in seconds. Evaluation (test loss
//! and a fixed training subset) runs with the clock stopped.
//!
//! The parts: [`crate::app::settings`] (the optimizers' tuned settings),
//! [`args`] (the command's arguments), [`run`] (one optimizer's run against
//! the clock, and a race's result), [`report`] (tables, `summary.json`,
//! `curves.csv` and the plot); this module runs a race from its options.

pub mod args;
pub mod report;
pub mod run;

pub use crate::app::settings::{
    tuned, tuned_for, Hyper, OptimizerKind, EMBEDDED_TRAIN_COUNT, PAPER_NG_PRIOR,
};
pub use args::{parse_args, RaceOptions, MAX_SEEDS, MAX_WIDTH};
pub use run::{
    prepare, run_one, CheckpointPlan, Clock, CurvePoint, Prepared, RaceResult, Run, RunOptions,
    RunResult,
};

use crate::app::args::max_threads;
use crate::data::Dataset;
use crate::mlp::Mlp;
use crate::Error;
use natgrad_kernels::{Activation, Par};
use run::load_for_resume;
use std::time::Duration;

/// The network raced for `preset` and `seed`: the preset's, or with
/// `--sizes` an autoencoder of those widths (hidden layers with the given or
/// the preset's activation, a linear output layer, the given or the
/// preset's likelihood).
///
/// # Errors
/// [`Error::Usage`] if the widths do not make an autoencoder (first and last
/// differ); [`Error::InvalidConfig`] for an unknown preset.
pub fn network(opts: &RaceOptions, preset: &str, seed: u64) -> Result<Mlp, Error> {
    let net = Mlp::preset(preset, seed)?;
    let Some(sizes) = &opts.sizes else {
        return Ok(net);
    };
    if sizes.first() != sizes.last() {
        return Err(Error::Usage(format!(
            "--sizes {sizes:?}: an autoencoder's first and last widths are the same (the \
             images' pixels)"
        )));
    }
    let hidden = opts.activation.unwrap_or(net.layers()[0].activation);
    let likelihood = opts.likelihood.unwrap_or(net.likelihood());
    let mut acts = vec![hidden; sizes.len() - 1];
    *acts.last_mut().expect("two widths or more") = Activation::Identity;
    Mlp::new(
        sizes,
        &acts,
        likelihood,
        crate::mlp::Init::GlorotUniform,
        seed,
    )
}

/// [`prepare`], with a way out when the images do not fit the network.
fn prepare_for<'a>(
    opts: &RaceOptions,
    data: &'a Dataset,
    net: &Mlp,
    preset: &str,
) -> Result<Prepared<'a>, Error> {
    let f = data.train.features();
    if f != net.input_size() && opts.sizes.is_none() {
        return Err(Error::Shape(format!(
            "the images of {} have {f} pixels ({} x {}) and the {preset} preset's \
             autoencoder takes {}: race an autoencoder of the images' width with --sizes, \
             for example --sizes {f}-{}-{}-{}-{f}",
            data.name,
            data.train.rows,
            data.train.cols,
            net.input_size(),
            (f / 2).max(1),
            (f / 4).max(1),
            (f / 2).max(1),
        )));
    }
    prepare(data, net)
}

/// Checks (and creates) every output location before any training, and
/// removes temporaries left by interrupted earlier runs.
fn check_outputs(opts: &RaceOptions) -> Result<(), Error> {
    crate::app::output::check_out_dir(&opts.out, "--out")?;
    let mut dirs = vec![opts.out.clone(), opts.out.join("checkpoints")];
    for preset in &opts.presets {
        dirs.push(out_dir(opts, preset));
        dirs.push(out_dir(opts, preset).join("checkpoints"));
    }
    for dir in &dirs {
        for stale in crate::app::output::remove_stale_temporaries(dir) {
            eprintln!(
                "natgrad: removed {}, left by an interrupted earlier run",
                stale.display()
            );
        }
    }
    for preset in &opts.presets {
        crate::app::output::check_out_dir(&out_dir(opts, preset), "--out")?;
    }
    if opts.checkpoint_every_secs.is_some() || opts.resume {
        crate::app::output::check_out_dir(&opts.out.join("checkpoints"), "--out")?;
    }
    Ok(())
}

/// Where a preset's files go: `DIR`, or `DIR/<preset>` when racing several.
fn out_dir(opts: &RaceOptions, preset: &str) -> std::path::PathBuf {
    if opts.presets.len() > 1 {
        opts.out.join(preset)
    } else {
        opts.out.clone()
    }
}

/// Runs the race for every preset and seed in `opts`, writes the files and
/// prints the tables. Returns one result per preset and seed.
pub fn run_race(opts: &RaceOptions) -> Result<Vec<RaceResult>, Error> {
    if opts.threads == 0 || opts.threads > max_threads() {
        return Err(Error::Usage(format!(
            "{} threads: use 1 to {}",
            opts.threads,
            max_threads()
        )));
    }
    check_outputs(opts)?;
    let data = crate::data::load(opts.data.as_deref())?;
    // Every network is built and checked against the data before any training.
    for preset in &opts.presets {
        prepare_for(opts, &data, &network(opts, preset, opts.seed)?, preset)?;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()
        .map_err(|e| Error::InvalidConfig(format!("cannot start {} threads: {e}", opts.threads)))?;
    if opts.resume {
        check_resumes(opts, &data)?;
    }
    let mut results = Vec::new();
    for preset in &opts.presets {
        let dir = out_dir(opts, preset);
        let mut races = Vec::new();
        for seed in opts.seed..=opts.seed + (opts.seeds - 1) {
            let race = race_seed(opts, preset, seed, &data, &pool)?;
            if !opts.json {
                print!("{}", report::table(&race));
            }
            races.push(race);
            // Written after every seed: an interrupted series keeps what it ran.
            report::write_outputs(&races, &dir)?;
        }
        if opts.json {
            println!("{}", report::summary_json(&races));
        } else {
            if races.len() > 1 {
                print!("{}", report::seeds_table(&races));
            }
            println!(
                "wrote {}/{{curves.csv,race.png,summary.json}}\n",
                dir.display()
            );
        }
        results.extend(races);
    }
    Ok(results)
}

/// A progress bar for one run, or a hidden one with `--quiet`.
fn progress_bar(opts: &RaceOptions, label: String) -> indicatif::ProgressBar {
    if opts.quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new((opts.budget_secs * 1000.0) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>15} [{bar:30}] {pos:>6}/{len} ms  {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label);
    bar
}

/// The progress callback of a run: its bar's position and message.
fn show(bar: &indicatif::ProgressBar) -> impl FnMut(&CurvePoint, u64) + '_ {
    move |p: &CurvePoint, steps: u64| {
        bar.set_position((p.seconds * 1000.0) as u64);
        let rate = if p.seconds > 0.0 {
            steps as f64 / p.seconds
        } else {
            0.0
        };
        bar.set_message(format!("test loss {:.4}  {:.1} steps/s", p.test_loss, rate));
    }
}

/// One race: every optimizer of `opts` on `preset`'s network for `seed`,
/// under `opts.clock`, on `pool`'s threads.
fn race_seed(
    opts: &RaceOptions,
    preset: &str,
    seed: u64,
    data: &Dataset,
    pool: &rayon::ThreadPool,
) -> Result<RaceResult, Error> {
    let initial = network(opts, preset, seed)?;
    let prepared = prepare_for(opts, data, &initial, preset)?;
    let par = if opts.threads == 1 {
        Par::Seq
    } else {
        Par::rayon(opts.threads)
    };
    let checkpointing = opts.checkpoint_every_secs.is_some() || opts.resume;
    let bars = indicatif::MultiProgress::new();
    if opts.quiet {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut plans = Vec::new();
    for &kind in &opts.kinds {
        let seed_tag = if opts.seeds > 1 {
            format!(" s{seed}")
        } else {
            String::new()
        };
        let bar = bars.add(progress_bar(
            opts,
            format!("{preset}/{}{seed_tag}", kind.name()),
        ));
        let run_opts = RunOptions {
            budget_secs: opts.budget_secs,
            eval_every_secs: (opts.budget_secs / 40.0).max(0.05),
            seed,
            par,
            checkpoint: checkpointing.then(|| plan_for(opts, preset, kind, seed)),
        };
        plans.push((
            kind,
            tuned_for(preset, kind, prepared.train_count)?,
            run_opts,
            bar,
        ));
    }
    let runs = pool.install(|| -> Result<Vec<RunResult>, Error> {
        match opts.clock {
            Clock::Sequential => plans
                .iter()
                .map(|(kind, hyper, run_opts, bar)| {
                    let r = run_one(*kind, *hyper, &initial, &prepared, run_opts, &mut show(bar));
                    bar.finish();
                    r
                })
                .collect(),
            Clock::Interleaved => {
                let mut runs = plans
                    .iter()
                    .map(|(kind, hyper, run_opts, bar)| {
                        Run::start(*kind, *hyper, &initial, &prepared, run_opts, &mut show(bar))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let slice =
                    Duration::from_secs_f64(opts.clock.slice_secs(opts.budget_secs).max(1e-3));
                while runs.iter().any(|r| !r.done()) {
                    for (run, (_, _, _, bar)) in runs.iter_mut().zip(&plans) {
                        if !run.done() {
                            run.advance(slice, &mut show(bar))?;
                            if run.done() {
                                bar.finish();
                            }
                        }
                    }
                }
                Ok(runs.into_iter().map(Run::finish).collect())
            }
        }
    })?;
    for r in runs.iter().filter(|r| r.failed_saves > 0) {
        eprintln!(
            "natgrad: {preset}/{} seed {seed}: {} checkpoint saves failed; the results are \
             complete",
            r.kind.name(),
            r.failed_saves
        );
    }
    Ok(RaceResult {
        preset: preset.to_string(),
        dataset: data.name.clone(),
        network: initial
            .sizes()
            .iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>()
            .join("-"),
        seed,
        budget_secs: opts.budget_secs,
        threads: opts.threads,
        clock: opts.clock,
        runs,
    })
}

/// The checkpoint plan of one run: `DIR/checkpoints/<preset>-<optimizer>.ckpt`
/// whatever the number of presets raced (the name holds the preset), so that
/// `--preset paper --resume` finds what `--preset all` saved;
/// `<preset>-<optimizer>-seed<N>.ckpt` when racing several seeds.
fn plan_for(opts: &RaceOptions, preset: &str, kind: OptimizerKind, seed: u64) -> CheckpointPlan {
    let name = if opts.seeds > 1 {
        format!("{preset}-{}-seed{seed}.ckpt", kind.name())
    } else {
        format!("{preset}-{}.ckpt", kind.name())
    };
    CheckpointPlan {
        path: opts.out.join("checkpoints").join(&name),
        legacy_path: Some(opts.out.join(preset).join("checkpoints").join(&name)),
        every_secs: opts.checkpoint_every_secs.unwrap_or(f64::INFINITY),
        resume: opts.resume,
        preset: preset.to_string(),
    }
}

/// Before anything is trained: every run that `--resume` would continue is
/// checked against its checkpoint (seed, preset, network, optimizer
/// settings, batch), so that a mismatch found for the last run does not
/// come after the first has trained; and if no run has a checkpoint, the
/// user is told where natgrad looked.
fn check_resumes(opts: &RaceOptions, data: &Dataset) -> Result<(), Error> {
    let mut looked = Vec::new();
    let mut found = 0;
    for preset in &opts.presets {
        for seed in opts.seed..=opts.seed + (opts.seeds - 1) {
            let initial = network(opts, preset, seed)?;
            for &kind in &opts.kinds {
                let plan = plan_for(opts, preset, kind, seed);
                let hyper = tuned_for(preset, kind, data.train.count)?;
                let b = hyper.batch().min(data.train.count);
                match plan.existing() {
                    Some(path) => {
                        let mut opt = hyper.build(&initial, b)?;
                        load_for_resume(path, &plan, seed, b, &initial, opt.as_mut())?;
                        found += 1;
                    }
                    None => looked.push(plan),
                }
            }
        }
    }
    let place = |plan: &CheckpointPlan| {
        plan.path.display().to_string()
            + &plan
                .legacy_path
                .as_ref()
                .map(|p| format!(" or {}", p.display()))
                .unwrap_or_default()
    };
    if found == 0 {
        eprintln!(
            "natgrad: --resume: nothing to resume: no checkpoint found (looked for {}); \
             every run starts from the beginning",
            looked
                .iter()
                .map(|p| p.path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    } else {
        for plan in &looked {
            eprintln!(
                "natgrad: --resume: no checkpoint at {}; this run starts from the beginning",
                place(plan)
            );
        }
    }
    Ok(())
}

/// Entry point of `natgrad race`.
pub fn cli_main(args: &[String]) -> Result<(), Error> {
    match parse_args(args)? {
        Some(opts) => run_race(&opts).map(|_| ()),
        None => Ok(()),
    }
}
