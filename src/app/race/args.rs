//! The arguments of `natgrad race`.

use super::run::Clock;
use crate::app::args::{parse_budget, parse_threads};
use crate::app::settings::OptimizerKind;
use crate::mlp::Likelihood;
use crate::Error;
use natgrad_kernels::Activation;

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
    /// `--help` was given: print the usage, run nothing.
    pub help: bool,
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
            help: false,
        }
    }
}

pub(super) const RACE_USAGE: &str =
    "natgrad race [--preset paper|deep|published|all] [--budget SECS] [--data DIR]
             [--out DIR] [--optimizers ng,adam,sgd] [--threads N] [--seed N] [--seeds N]
             [--clock interleaved|sequential] [--sizes N-N-..-N]
             [--activation sigmoid|tanh|relu] [--likelihood bernoulli|gaussian]
             [--json] [--quiet] [--checkpoint-every SECS] [--resume]

Trains the autoencoder of each preset with every optimizer for the same
wall-clock budget (default 35 s each; the default race takes about 2 minutes),
from the same initial weights and data order, and writes DIR/curves.csv,
DIR/race.png and DIR/summary.json (DIR/<preset>/ when racing several presets).
Without --data it uses the embedded 10,000-digit MNIST subset; --data reads
any IDX image set (train-images-idx3-ubyte[.gz] and t10k-images-idx3-ubyte[.gz]).
--clock interleaved (the default): the optimizers train in turns of 0.5 s
(a twentieth of the budget if shorter), each clock counting only its own
training, so a change in the host's load falls on all alike; sequential: one
after another. Evaluation is always off the clock.
--seeds N races N times, with seeds N0..N0+N-1 (N0 = --seed, default 1), and
reports per optimizer the median and range of the final test loss, the time to
SGD's final loss and the speedup; summary.json keeps every seed's figures.
--sizes 64-32-16-32-64 races an autoencoder of these widths (first = last =
the images' pixels) instead of the preset's network, with the preset's
optimizer settings; its hidden layers use --activation (default: the preset's,
sigmoid for deep, tanh for paper), its output --likelihood (default: the
preset's, bernoulli for deep, gaussian for paper).
--preset published is the paper's MNIST experiment with its authors' settings
(paper's network, NG at minibatch 1000 with per-minibatch factors, plain SGD
at minibatch 20); all races paper and deep.
--checkpoint-every saves each run's network, optimizer state and progress to
DIR/checkpoints/<preset>-<optimizer>.ckpt (-seed<N>.ckpt with --seeds above 1)
atomically (a failed save is reported and the run goes on); --resume continues
every run from its checkpoint (a finished run is not retrained) after checking
that the checkpoint was saved with the same seed, preset, network, optimizer
settings and batch.
Output files are written to temporaries and renamed; DIR is checked before
any training starts. --threads is at most 4 per available core.";

/// Parses `--sizes`' value: two or more positive widths joined by `-`.
fn parse_sizes(v: &str) -> Result<Vec<usize>, Error> {
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
    Ok(sizes)
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

fn parse_optimizers(v: &str) -> Result<Vec<OptimizerKind>, Error> {
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
    Ok(kinds)
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

/// Parses the arguments of `natgrad race`.
pub fn parse_args(args: &[String]) -> Result<RaceOptions, Error> {
    let mut o = RaceOptions::default();
    let mut it = args.iter();
    let value = |it: &mut std::slice::Iter<'_, String>, flag: &str| -> Result<String, Error> {
        it.next()
            .cloned()
            .ok_or_else(|| Error::Usage(format!("{flag} needs a value\n{RACE_USAGE}")))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--preset" => {
                let v = value(&mut it, a)?;
                o.presets = match v.as_str() {
                    "all" => vec!["paper".into(), "deep".into()],
                    "paper" | "deep" | "published" => vec![v],
                    _ => return Err(Error::Usage(format!("unknown preset {v:?}\n{RACE_USAGE}"))),
                };
            }
            "--budget" => o.budget_secs = parse_budget(a, &value(&mut it, a)?)?,
            "--data" => o.data = Some(value(&mut it, a)?.into()),
            "--out" => o.out = value(&mut it, a)?.into(),
            "--optimizers" => o.kinds = parse_optimizers(&value(&mut it, a)?)?,
            "--threads" => o.threads = parse_threads(&value(&mut it, a)?)?,
            "--seed" => {
                let v = value(&mut it, a)?;
                o.seed = v
                    .parse()
                    .map_err(|_| Error::Usage(format!("--seed takes an integer, got {v:?}")))?;
            }
            "--seeds" => o.seeds = parse_count(a, &value(&mut it, a)?, MAX_SEEDS)?,
            "--clock" => {
                let v = value(&mut it, a)?;
                o.clock = match v.as_str() {
                    "interleaved" => Clock::Interleaved,
                    "sequential" => Clock::Sequential,
                    _ => {
                        return Err(Error::Usage(format!(
                            "--clock takes interleaved or sequential, got {v:?}"
                        )))
                    }
                };
            }
            "--sizes" => o.sizes = Some(parse_sizes(&value(&mut it, a)?)?),
            "--activation" => o.activation = Some(parse_activation(&value(&mut it, a)?)?),
            "--likelihood" => o.likelihood = Some(parse_likelihood(&value(&mut it, a)?)?),
            "--json" => o.json = true,
            "--quiet" => o.quiet = true,
            "--resume" => o.resume = true,
            "--checkpoint-every" => {
                o.checkpoint_every_secs = Some(parse_budget(a, &value(&mut it, a)?)?);
            }
            "-h" | "--help" => {
                o.help = true;
                return Ok(o);
            }
            _ => {
                return Err(Error::Usage(format!(
                    "unknown argument {a:?}\n{RACE_USAGE}"
                )))
            }
        }
    }
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
    Ok(o)
}
