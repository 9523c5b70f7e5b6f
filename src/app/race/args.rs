//! The arguments of `natgrad race`.

use super::run::Clock;
use crate::app::args::{
    clap_parser, parse_budget, parse_command, parse_path, parse_seed, parse_threads, List,
};
use crate::app::settings::OptimizerKind;
use crate::mlp::Likelihood;
use crate::Error;
use natgrad_kernels::Activation;
use std::path::PathBuf;

/// The most seeds `--seeds` accepts.
pub const MAX_SEEDS: u64 = 1000;

/// Options of `natgrad race`.
#[derive(Clone, Debug)]
pub struct RaceOptions {
    /// Presets to race (`paper`, `deep`).
    pub presets: Vec<String>,
    /// Optimizers, in the order they take their turns.
    pub kinds: Vec<OptimizerKind>,
    /// Training budget per optimizer, seconds.
    pub budget_secs: f64,
    /// IDX directory, or `None` for the embedded dataset.
    pub data: Option<std::path::PathBuf>,
    /// Output directory.
    pub out: std::path::PathBuf,
    /// Kernel threads.
    pub threads: usize,
    /// Seed of initial weights and data order (the first, with `seeds > 1`).
    pub seed: u64,
    /// Races per preset, with seeds `seed`, `seed + 1`, ...
    pub seeds: u64,
    /// How the optimizers share the machine.
    pub clock: Clock,
    /// The autoencoder's widths instead of the preset's (`--sizes`).
    pub sizes: Option<Vec<usize>>,
    /// The hidden layers' activation with `--sizes` (default: the preset's).
    pub activation: Option<Activation>,
    /// The output likelihood with `--sizes` (default: the preset's).
    pub likelihood: Option<Likelihood>,
    /// Print the summary as one JSON line on stdout.
    pub json: bool,
    /// No progress bars.
    pub quiet: bool,
    /// Save each run's state every this many training seconds
    /// (to `DIR/checkpoints/<preset>-<optimizer>.ckpt`).
    pub checkpoint_every_secs: Option<f64>,
    /// Continue each run from its checkpoint when one exists.
    pub resume: bool,
}

impl Default for RaceOptions {
    fn default() -> Self {
        RaceOptions {
            presets: vec!["deep".into()],
            kinds: vec![
                OptimizerKind::NaturalGradient,
                OptimizerKind::Adam,
                OptimizerKind::Sgd,
            ],
            // 35 s each: the default race (three runs, evaluation included)
            // then takes about 2 minutes, so that a fresh clone's first
            // `cargo run --release` (build about 1 min 50 s here) stays
            // within 4 minutes.
            budget_secs: 35.0,
            data: None,
            out: "race-out".into(),
            threads: rayon::current_num_threads(),
            seed: 1,
            seeds: 1,
            clock: Clock::Interleaved,
            sizes: None,
            activation: None,
            likelihood: None,
            json: false,
            quiet: false,
            checkpoint_every_secs: None,
            resume: false,
        }
    }
}

/// The synopsis of `natgrad race` (clap's usage line).
const RACE_SYNOPSIS: &str =
    "natgrad race [--preset paper|deep|published|all] [--budget SECS] [--data DIR]
             [--out DIR] [--optimizers ng,adam,sgd] [--threads N] [--seed N] [--seeds N]
             [--clock interleaved|sequential] [--sizes N-N-..-N]
             [--activation sigmoid|tanh|relu] [--likelihood bernoulli|gaussian]
             [--json] [--quiet] [--checkpoint-every SECS] [--resume]";

/// What the race does, after the options in `--help`.
const RACE_NOTES: &str = "\
Every optimizer starts from the same initial weights and data order and gets
the same wall-clock budget; the default race takes about 2 minutes. Output goes
to DIR/curves.csv, DIR/race.png and DIR/summary.json (DIR/<preset>/ when racing
several presets); files are written to temporaries and renamed, and DIR is
checked before any training starts. Evaluation is always off the clock.";

/// The arguments of `natgrad race`, as clap parses them.
#[derive(clap::Parser, Debug)]
#[command(
    name = "natgrad race",
    about = "NG vs SGD vs Adam autoencoder race on the wall clock",
    override_usage = RACE_SYNOPSIS,
    after_help = RACE_NOTES,
    args_override_self = true
)]
struct RaceArgs {
    /// Preset to race: paper, deep, published (the paper's MNIST experiment
    /// with its authors' settings: paper's network, NG at minibatch 1000 with
    /// per-minibatch factors, plain SGD at minibatch 20) or all (paper and
    /// deep). Default deep.
    #[arg(long, value_name = "PRESET", value_parser = clap_parser(parse_presets))]
    preset: Option<List<String>>,
    /// Training budget per optimizer, seconds (default 35).
    #[arg(long, value_name = "SECS", value_parser = clap_parser(|v| parse_budget("--budget", v)))]
    budget: Option<f64>,
    /// An IDX image set (train-images-idx3-ubyte[.gz] and
    /// t10k-images-idx3-ubyte[.gz]); default: the embedded 10,000-digit
    /// MNIST subset.
    #[arg(long, value_name = "DIR", value_parser = clap_parser(parse_path))]
    data: Option<PathBuf>,
    /// Output directory (default race-out).
    #[arg(long, value_name = "DIR", value_parser = clap_parser(parse_path))]
    out: Option<PathBuf>,
    /// Optimizers, in the order they take their turns (default ng,adam,sgd).
    #[arg(long, value_name = "LIST", value_parser = clap_parser(parse_optimizers))]
    optimizers: Option<List<OptimizerKind>>,
    /// Kernel threads, at most 4 per available core (default: all cores).
    #[arg(long, value_name = "N", value_parser = clap_parser(parse_threads))]
    threads: Option<usize>,
    /// Seed of the initial weights and data order (the first, with --seeds;
    /// default 1).
    #[arg(long, value_name = "N", value_parser = clap_parser(parse_seed))]
    seed: Option<u64>,
    /// Races N times, with seeds N0..N0+N-1 (N0 = --seed), and reports per
    /// optimizer the median and range of the final test loss, the time to
    /// SGD's final loss and the speedup; summary.json keeps every seed's
    /// figures.
    #[arg(long, value_name = "N", value_parser = clap_parser(|v| parse_count("--seeds", v, MAX_SEEDS)))]
    seeds: Option<u64>,
    /// interleaved (the default): the optimizers train in turns of 0.5 s (a
    /// twentieth of the budget if shorter), each clock counting only its own
    /// training, so a change in the host's load falls on all alike;
    /// sequential: one after another.
    #[arg(long, value_name = "CLOCK", value_parser = clap_parser(parse_clock))]
    clock: Option<Clock>,
    /// Races an autoencoder of these widths (first = last = the images'
    /// pixels, e.g. 64-32-16-32-64) instead of the preset's network, with the
    /// preset's optimizer settings.
    #[arg(long, value_name = "N-N-..-N", value_parser = clap_parser(parse_sizes))]
    sizes: Option<List<usize>>,
    /// The hidden layers' activation with --sizes: sigmoid, tanh, relu or
    /// identity (default: the preset's, sigmoid for deep, tanh for paper).
    #[arg(long, value_name = "ACTIVATION", value_parser = clap_parser(parse_activation))]
    activation: Option<Activation>,
    /// The output likelihood with --sizes: bernoulli or gaussian (default:
    /// the preset's, bernoulli for deep, gaussian for paper).
    #[arg(long, value_name = "LIKELIHOOD", value_parser = clap_parser(parse_likelihood))]
    likelihood: Option<Likelihood>,
    /// Print the summary as one JSON line on stdout instead of the tables.
    #[arg(long)]
    json: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Save each run's network, optimizer state and progress every SECS
    /// training seconds to DIR/checkpoints/PRESET-OPTIMIZER.ckpt
    /// (-seedN.ckpt with --seeds above 1), atomically; a failed save is
    /// reported and the run goes on.
    #[arg(long, value_name = "SECS", value_parser = clap_parser(|v| parse_budget("--checkpoint-every", v)))]
    checkpoint_every: Option<f64>,
    /// Continue every run from its checkpoint (a finished run is not
    /// retrained), after checking that it was saved with the same seed,
    /// preset, network, optimizer settings and batch.
    #[arg(long)]
    resume: bool,
}

/// Parses `--preset`'s value: one preset, or `all` for paper and deep.
fn parse_presets(v: &str) -> Result<List<String>, Error> {
    match v {
        "all" => Ok(List(vec!["paper".into(), "deep".into()])),
        "paper" | "deep" | "published" => Ok(List(vec![v.into()])),
        _ => Err(Error::Usage(format!(
            "unknown preset {v:?}; expected paper|deep|published|all"
        ))),
    }
}

/// Parses `--clock`'s value.
fn parse_clock(v: &str) -> Result<Clock, Error> {
    match v {
        "interleaved" => Ok(Clock::Interleaved),
        "sequential" => Ok(Clock::Sequential),
        _ => Err(Error::Usage(format!(
            "--clock takes interleaved or sequential, got {v:?}"
        ))),
    }
}

/// Parses `--sizes`' value: two or more positive widths joined by `-`.
fn parse_sizes(v: &str) -> Result<List<usize>, Error> {
    let bad = || {
        Error::Usage(format!(
            "--sizes takes two or more positive widths joined by '-', such as \
             64-32-16-32-64, got {v:?}"
        ))
    };
    let sizes = v
        .split('-')
        .map(|w| w.parse::<usize>().ok().filter(|&w| w > 0 && w <= MAX_WIDTH))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(bad)?;
    if sizes.len() < 2 {
        return Err(bad());
    }
    Ok(List(sizes))
}

/// The widest layer `--sizes` accepts (a 65,536-wide layer's factor alone
/// takes 16 GiB).
pub const MAX_WIDTH: usize = 1 << 16;

fn parse_activation(v: &str) -> Result<Activation, Error> {
    match v {
        "sigmoid" => Ok(Activation::Sigmoid),
        "tanh" => Ok(Activation::Tanh),
        "relu" => Ok(Activation::Relu),
        "identity" | "linear" => Ok(Activation::Identity),
        _ => Err(Error::Usage(format!(
            "unknown activation {v:?}; expected sigmoid, tanh, relu or identity"
        ))),
    }
}

fn parse_likelihood(v: &str) -> Result<Likelihood, Error> {
    match v {
        "bernoulli" => Ok(Likelihood::Bernoulli),
        "gaussian" => Ok(Likelihood::Gaussian),
        "categorical" => Err(Error::Usage(
            "--likelihood categorical cannot autoencode images (its targets are class \
             probabilities); use bernoulli or gaussian"
                .into(),
        )),
        _ => Err(Error::Usage(format!(
            "unknown likelihood {v:?}; expected bernoulli or gaussian"
        ))),
    }
}

fn parse_optimizers(v: &str) -> Result<List<OptimizerKind>, Error> {
    let kinds: Vec<OptimizerKind> = v
        .split(',')
        .map(OptimizerKind::parse)
        .collect::<Result<_, _>>()?;
    if let Some(k) = kinds
        .iter()
        .enumerate()
        .find_map(|(i, k)| kinds[..i].contains(k).then_some(k))
    {
        return Err(Error::Usage(format!(
            "--optimizers names {} twice; each optimizer runs once",
            k.name()
        )));
    }
    Ok(List(kinds))
}

fn parse_count(flag: &str, v: &str, max: u64) -> Result<u64, Error> {
    v.parse::<u64>()
        .ok()
        .filter(|&n| n > 0 && n <= max)
        .ok_or_else(|| {
            Error::Usage(format!(
                "{flag} takes an integer from 1 to {max}, got {v:?}"
            ))
        })
}

/// Parses the arguments of `natgrad race`; `None` when `--help` was
/// asked for (and printed).
pub fn parse_args(args: &[String]) -> Result<Option<RaceOptions>, Error> {
    let Some(a) = parse_command::<RaceArgs>(args)? else {
        return Ok(None);
    };
    let d = RaceOptions::default();
    let o = RaceOptions {
        presets: a.preset.map_or(d.presets, |l| l.0),
        kinds: a.optimizers.map_or(d.kinds, |l| l.0),
        budget_secs: a.budget.unwrap_or(d.budget_secs),
        data: a.data,
        out: a.out.unwrap_or(d.out),
        threads: a.threads.unwrap_or(d.threads),
        seed: a.seed.unwrap_or(d.seed),
        seeds: a.seeds.unwrap_or(d.seeds),
        clock: a.clock.unwrap_or(d.clock),
        sizes: a.sizes.map(|l| l.0),
        activation: a.activation,
        likelihood: a.likelihood,
        json: a.json,
        quiet: a.quiet,
        checkpoint_every_secs: a.checkpoint_every,
        resume: a.resume,
    };
    if o.sizes.is_none() && (o.activation.is_some() || o.likelihood.is_some()) {
        return Err(Error::Usage(
            "--activation and --likelihood shape a network given with --sizes; \
             the presets keep their own"
                .into(),
        ));
    }
    if o.seed.checked_add(o.seeds - 1).is_none() {
        return Err(Error::Usage(format!(
            "--seed {} with --seeds {} runs past the largest seed",
            o.seed, o.seeds
        )));
    }
    Ok(Some(o))
}
