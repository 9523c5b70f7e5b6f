//! `natgrad tune`: the documented hyperparameter search behind
//! [`crate::app::settings::tuned`].
//!
//! The training set is split into a fit part (the first 75%) and a validation
//! part (the last 25%); the test set is never looked at. Each candidate trains
//! from the race's initial weights for the given budget and is scored by its
//! final validation loss. A candidate that diverges scores infinity.

use crate::app::args::{clap_parser, parse_budget, parse_command, parse_path, parse_seed};
use crate::app::json::round;
use crate::app::race::run::{prepare, run_one, Prepared, RunOptions};
use crate::app::settings::{Hyper, OptimizerKind};
use crate::data::Dataset;
use crate::mlp::Mlp;
use crate::optim::{AdamConfig, DampingAdaptation, NaturalGradientConfig, SgdConfig};
use crate::Error;
use natgrad_kernels::Par;
use serde::Serialize;

/// One candidate's line: its settings and validation loss (`null`, with
/// the error, if it failed).
#[derive(Serialize)]
struct TuneLine<'a> {
    preset: &'a str,
    optimizer: &'static str,
    hyper: String,
    val_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    median_step_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The candidates searched for `kind` (the same grid for both presets).
pub fn candidates(kind: OptimizerKind) -> Vec<Hyper> {
    match kind {
        OptimizerKind::Sgd => sgd_candidates(),
        OptimizerKind::Adam => adam_candidates(),
        OptimizerKind::NaturalGradient => {
            let mut v = ng_grid();
            v.extend(ng_around_race());
            v
        }
    }
}

/// SGD: learning rates at minibatch 20 (plain) and 100 (momentum 0.9), an
/// L2 penalty around the race's settings, and the paper's step sizes.
fn sgd_candidates() -> Vec<Hyper> {
    [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16]
        .into_iter()
        .flat_map(|lr| {
            [(20, 0.0), (100, 0.9)].map(|(b, mu)| {
                Hyper::Sgd(
                    b,
                    SgdConfig {
                        learning_rate: lr,
                        momentum: mu,
                        ..SgdConfig::default()
                    },
                )
            })
        })
        // An L2 penalty around the race's settings (paper, deep), as for
        // the natural gradient.
        .chain([(1e-3, 0.9), (0.04, 0.9)].into_iter().flat_map(|(lr, mu)| {
            [1e-3, 1e-2, 3e-2].map(|weight_decay| {
                Hyper::Sgd(
                    100,
                    SgdConfig {
                        learning_rate: lr,
                        momentum: mu,
                        weight_decay,
                        ..SgdConfig::default()
                    },
                )
            })
        }))
        // The paper's plain SGD at minibatch 20 (`published`): its step
        // sizes 0.04, 0.06 and 0.08 as written, and as the authors' code
        // applies them (`lib/sgd.ml` divides the mean gradient by the
        // minibatch once more: 0.002, 0.003, 0.004 here); 0.002, 0.04
        // and 0.08 are in the grid above.
        .chain([0.003, 0.004, 0.06].map(|lr| {
            Hyper::Sgd(
                20,
                SgdConfig {
                    learning_rate: lr,
                    ..SgdConfig::default()
                },
            )
        }))
        .collect()
}

/// Adam: learning rates at minibatch 20 and 100, and an L2 penalty.
fn adam_candidates() -> Vec<Hyper> {
    [1e-4, 3e-4, 1e-3, 3e-3]
        .into_iter()
        .flat_map(|lr| {
            [20, 100].map(|b| {
                Hyper::Adam(
                    b,
                    AdamConfig {
                        learning_rate: lr,
                        ..AdamConfig::default()
                    },
                )
            })
        })
        .chain([1e-3, 3e-3].into_iter().flat_map(|lr| {
            [1e-3, 1e-2, 3e-2].map(|weight_decay| {
                Hyper::Adam(
                    100,
                    AdamConfig {
                        learning_rate: lr,
                        weight_decay,
                        ..AdamConfig::default()
                    },
                )
            })
        }))
        .collect()
}

/// The natural gradient's grid: per-minibatch factors and running averages
/// at minibatch 256, 500 and 1000, with the variants listed.
fn ng_grid() -> Vec<Hyper> {
    // The paper's setting (per-minibatch factors, refreshed and
    // LM-adapted every step) and the K-FAC-style one (running averages,
    // refresh every 5 steps), with the LM check every step or every 5,
    // from the paper's initial damping 1 or from 0.01, the LM check
    // on the whole minibatch or on its first quarter, and the output
    // layer's backward factor exact or sampled.
    let mut v = Vec::new();
    for b in [256, 500, 1000] {
        // (decay, refresh, statistics interval, LM interval, initial
        // damping, damping floor, LM check fraction, exact output factor)
        for (decay, refresh, stats, lm, damping, floor, check, exact) in [
            (0.0, 1, 1, 1, 1.0, 1e-6, 1.0, false),
            (0.95, 5, 1, 1, 1.0, 1e-6, 1.0, false),
            (0.95, 5, 1, 5, 1.0, 1e-6, 1.0, false),
            (0.0, 1, 1, 1, 0.01, 1e-6, 1.0, false),
            (0.95, 5, 1, 1, 0.01, 1e-6, 1.0, false),
            (0.0, 1, 1, 1, 1.0, 0.1, 1.0, false),
            (0.95, 5, 1, 1, 1.0, 0.1, 1.0, false),
            (0.95, 5, 1, 1, 1.0, 1.0, 1.0, false),
            (0.95, 5, 5, 1, 1.0, 1e-6, 1.0, false),
            (0.0, 1, 1, 1, 1.0, 1e-6, 0.25, false),
            (0.0, 1, 1, 1, 0.01, 1e-6, 0.25, false),
            (0.95, 5, 1, 1, 1.0, 1e-6, 0.25, false),
            (0.0, 1, 1, 1, 0.01, 1e-6, 0.25, true),
            (0.95, 5, 1, 1, 1.0, 1e-6, 0.25, true),
        ] {
            v.push(Hyper::Ng(
                b,
                NaturalGradientConfig {
                    factor_decay: decay,
                    refresh_interval: refresh,
                    statistics_interval: stats,
                    damping,
                    damping_bounds: (floor, 1e6),
                    adaptation: DampingAdaptation::LevenbergMarquardt { interval: lm },
                    damping_check_fraction: check,
                    exact_output_factor: exact,
                    ..NaturalGradientConfig::default()
                },
            ));
        }
    }
    v
}

/// The natural gradient around the race's settings (`deep` and `paper`):
/// step sizes, the pi split, an L2 penalty, and `paper`'s penalised
/// setting's neighbours.
fn ng_around_race() -> Vec<Hyper> {
    let mut v = Vec::new();
    // Around the race's settings: deep (b=1000, per-minibatch factors,
    // initial damping 0.01) with the pi split of the damping and twice
    // the step size; paper (b=256, running averages 0.95, refresh 5)
    // with other step sizes and the pi split. Both with the LM check
    // on a quarter. (pi correction, step size) per candidate.
    let deep = NaturalGradientConfig {
        damping: 0.01,
        damping_check_fraction: 0.25,
        ..NaturalGradientConfig::default()
    };
    let paper = NaturalGradientConfig {
        factor_decay: 0.95,
        refresh_interval: 5,
        damping_check_fraction: 0.25,
        ..NaturalGradientConfig::default()
    };
    for (b, base, variants) in [
        (1000, deep, [(true, 1.0), (false, 2.0), (true, 2.0)]),
        (256, paper, [(false, 0.5), (false, 2.0), (true, 1.0)]),
    ] {
        for (pi_correction, learning_rate) in variants {
            v.push(Hyper::Ng(
                b,
                NaturalGradientConfig {
                    pi_correction,
                    learning_rate,
                    ..base
                },
            ));
        }
        // An L2 penalty against the train/test gap seen on `paper`, at
        // the setting's minibatch and at half of it.
        for weight_decay in [1e-4, 1e-3, 1e-2, 3e-2, 1e-1] {
            v.push(Hyper::Ng(
                b,
                NaturalGradientConfig {
                    weight_decay,
                    ..base
                },
            ));
        }
        v.push(Hyper::Ng(
            b / 2,
            NaturalGradientConfig {
                weight_decay: 1e-2,
                ..base
            },
        ));
    }
    // Around paper's setting once the penalty reached every layer
    // (the low-rank form had dropped it): the exact output factor,
    // statistics every 2 steps, refresh every 10, minibatch 500, and
    // statistics every 2 with refresh every 10.
    let penalised = NaturalGradientConfig {
        weight_decay: 1e-2,
        ..paper
    };
    for (b, cfg) in [
        (
            256,
            NaturalGradientConfig {
                exact_output_factor: true,
                ..penalised
            },
        ),
        (
            256,
            NaturalGradientConfig {
                statistics_interval: 2,
                ..penalised
            },
        ),
        (
            256,
            NaturalGradientConfig {
                refresh_interval: 10,
                ..penalised
            },
        ),
        (500, penalised),
        // Both of the cheaper schedules at once (each alone tied).
        (
            256,
            NaturalGradientConfig {
                statistics_interval: 2,
                refresh_interval: 10,
                ..penalised
            },
        ),
    ] {
        v.push(Hyper::Ng(b, cfg));
    }
    v
}

/// Fit/validation split of the training set, prepared for `net` (ranges of
/// the training images; nothing is copied).
pub fn fit_validation<'a>(data: &'a Dataset, net: &Mlp) -> Result<Prepared<'a>, Error> {
    let all = prepare(data, net)?;
    let f = all.features;
    let n_fit = all.train_count * 3 / 4;
    let n_val = all.train_count - n_fit;
    if n_fit == 0 || n_val == 0 {
        return Err(Error::Shape(format!(
            "{} training examples are too few to split",
            all.train_count
        )));
    }
    Ok(Prepared {
        train: all.train.range(0, n_fit)?,
        test: all.train.range(n_fit, n_val)?,
        features: f,
        train_count: n_fit,
        test_count: n_val,
    })
}

/// The arguments of `natgrad tune`.
#[derive(clap::Parser, Debug)]
#[command(
    name = "natgrad tune",
    about = "The hyperparameter search behind the race: one JSON line per candidate",
    override_usage = "natgrad tune --preset paper|deep|published --optimizer ng|sgd|adam [--budget SECS] [--data DIR] [--seed N] [--filter TEXT[&TEXT..]]",
    args_override_self = true
)]
struct TuneArgs {
    /// The preset whose network is tuned: paper, deep or published.
    #[arg(long, value_name = "PRESET")]
    preset: String,
    /// The optimizer whose grid is searched: ng, sgd or adam.
    #[arg(long, value_name = "OPTIMIZER", value_parser = clap_parser(OptimizerKind::parse))]
    optimizer: OptimizerKind,
    /// Training seconds per candidate (default 20).
    #[arg(long, value_name = "SECS", default_value = "20", value_parser = clap_parser(|v| parse_budget("--budget", v)))]
    budget: f64,
    /// An IDX image set instead of the embedded digits.
    #[arg(long, value_name = "DIR", value_parser = clap_parser(parse_path))]
    data: Option<std::path::PathBuf>,
    /// Seed of the initial weights and data order (default 1).
    #[arg(long, value_name = "N", default_value = "1", value_parser = clap_parser(parse_seed))]
    seed: u64,
    /// Only the candidates whose settings (as printed) contain every
    /// `&`-separated part, e.g. "Ng(256&weight_decay: 0.01".
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
}

/// Runs every candidate of `kind` on `preset` and prints one JSON line each.
pub fn cli_main(args: &[String]) -> Result<(), Error> {
    let Some(a) = parse_command::<TuneArgs>(args)? else {
        return Ok(());
    };
    let (preset, kind, budget, dir, filter, seed) =
        (a.preset, a.optimizer, a.budget, a.data, a.filter, a.seed);
    let data = crate::data::load(dir.as_deref())?;
    let initial = Mlp::preset(&preset, seed)?;
    let split = fit_validation(&data, &initial)?;
    let threads = rayon::current_num_threads();
    let opts = RunOptions {
        budget_secs: budget,
        eval_every_secs: budget / 10.0,
        seed,
        par: if threads == 1 {
            Par::Seq
        } else {
            Par::rayon(threads)
        },
        checkpoint: None,
    };
    let wanted = |h: &Hyper| {
        filter
            .as_ref()
            .is_none_or(|f| f.split('&').all(|part| format!("{h:?}").contains(part)))
    };
    for hyper in candidates(kind).into_iter().filter(wanted) {
        let mut score = TuneLine {
            preset: &preset,
            optimizer: kind.name(),
            hyper: format!("{hyper:?}"),
            val_loss: None,
            steps: None,
            median_step_ms: None,
            error: None,
        };
        match run_one(kind, hyper, &initial, &split, &opts, &mut |_, _| {}) {
            Ok(r) => {
                let l = r.last();
                score.val_loss = Some(round(l.test_loss, 5));
                score.steps = Some(l.step);
                score.median_step_ms = Some(round(r.median_step_ms, 2));
            }
            Err(e) => score.error = Some(e.to_string()),
        }
        println!("{}", crate::app::json::line(&score));
    }
    Ok(())
}
