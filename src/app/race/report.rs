//! The race's report: the terminal tables, `summary.json`, `curves.csv` and
//! `race.png`, for one seed or several (the median and range across seeds).

use super::run::{CurvePoint, RaceResult};
use crate::app::json::Ordered;
use crate::app::settings::OptimizerKind;
use crate::Error;
use serde::Serialize;

/// The optimizers in the order the report lists them.
const KINDS: [OptimizerKind; 3] = [
    OptimizerKind::NaturalGradient,
    OptimizerKind::Adam,
    OptimizerKind::Sgd,
];

/// The median, smallest and largest of some seeds' figures.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    /// The median (the mean of the middle two for an even count).
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `values` (infinite values allowed: a run that never
    /// reached the target counts as taking forever); `None` if empty or if
    /// any value is NaN.
    pub fn of(mut values: Vec<f64>) -> Option<Spread> {
        if values.is_empty() || values.iter().any(|v| v.is_nan()) {
            return None;
        }
        // `median` sorts `values`; an infinite middle pair averages to infinity.
        let median = crate::app::bench::median(&mut values);
        let n = values.len();
        Some(Spread {
            median,
            min: values[0],
            max: values[n - 1],
        })
    }
}

/// One optimizer's figures across the seeds of a race series.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SeedFigures {
    /// The optimizer.
    pub kind: OptimizerKind,
    /// Final test loss.
    pub final_test_loss: Spread,
    /// Training seconds to reach SGD's final test loss of the same seed
    /// (infinite where it never did).
    pub time_to_target: Option<Spread>,
    /// SGD's time to its final loss over this optimizer's (0 where it never
    /// reached it).
    pub speedup: Option<Spread>,
}

/// The figures of `kind` across `races` (one per seed), if it ran in all.
pub fn seed_figures(races: &[RaceResult], kind: OptimizerKind) -> Option<SeedFigures> {
    let runs: Vec<_> = races
        .iter()
        .map(|r| r.runs.iter().find(|run| run.kind == kind))
        .collect::<Option<_>>()?;
    let has_target = races.iter().all(|r| r.target_loss().is_some());
    Some(SeedFigures {
        kind,
        final_test_loss: Spread::of(runs.iter().map(|r| r.last().test_loss).collect())?,
        time_to_target: has_target
            .then(|| {
                Spread::of(
                    races
                        .iter()
                        .map(|r| r.time_to_target(kind).unwrap_or(f64::INFINITY))
                        .collect(),
                )
            })
            .flatten(),
        speedup: has_target
            .then(|| {
                Spread::of(
                    races
                        .iter()
                        .map(|r| r.speedup_vs_sgd(kind).unwrap_or(0.0))
                        .collect(),
                )
            })
            .flatten(),
    })
}

/// A figure as `summary.json` writes it: six decimals, `null` if non-finite.
fn figure(x: f64) -> f64 {
    crate::app::json::round(x, 6)
}

/// One run of one seed's race, in `summary.json`.
#[derive(Serialize)]
struct RunJson {
    optimizer: &'static str,
    batch: usize,
    steps: u64,
    examples: u64,
    final_train_loss: f64,
    final_test_loss: f64,
    median_step_ms: f64,
    failed_steps: u64,
}

/// One seed's race in `summary.json`: its runs, SGD's final test loss (the
/// target), each optimizer's time to it and speedup.
#[derive(Serialize)]
struct RaceJson {
    seed: u64,
    runs: Vec<RunJson>,
    target_loss: Option<f64>,
    time_to_target_secs: Ordered<Option<f64>>,
    speedup_vs_sgd: Ordered<Option<f64>>,
}

impl RaceJson {
    fn of(r: &RaceResult) -> RaceJson {
        let runs = r
            .runs
            .iter()
            .map(|run| {
                let l = run.last();
                RunJson {
                    optimizer: run.kind.name(),
                    batch: run.hyper.batch(),
                    steps: l.step,
                    examples: l.examples,
                    final_train_loss: figure(l.train_loss),
                    final_test_loss: figure(l.test_loss),
                    median_step_ms: figure(run.median_step_ms),
                    failed_steps: run.failed_steps,
                }
            })
            .collect();
        let per_kind = |kinds: &[OptimizerKind], f: &dyn Fn(OptimizerKind) -> Option<f64>| {
            Ordered(
                kinds
                    .iter()
                    .map(|&k| (k.name(), f(k).map(figure)))
                    .collect(),
            )
        };
        RaceJson {
            seed: r.seed,
            runs,
            target_loss: r.target_loss().map(figure),
            time_to_target_secs: per_kind(&KINDS, &|k| r.time_to_target(k)),
            speedup_vs_sgd: per_kind(&KINDS[..2], &|k| r.speedup_vs_sgd(k)),
        }
    }
}

/// One optimizer's figures across seeds, in `summary.json`.
#[derive(Serialize)]
struct AcrossJson {
    final_test_loss: Spread,
    time_to_target_secs: Option<Spread>,
    speedup_vs_sgd: Option<Spread>,
}

/// `summary.json`: the settings, how the clocks were taken, the figures
/// across seeds and every seed's race.
#[derive(Serialize)]
struct SummaryJson<'a> {
    preset: &'a str,
    network: &'a str,
    dataset: &'a str,
    budget_secs: f64,
    threads: usize,
    clock: &'static str,
    slice_secs: f64,
    clock_note: String,
    seeds: Vec<u64>,
    across_seeds: Ordered<AcrossJson>,
    races: Vec<RaceJson>,
}

/// `summary.json` of a race series (one race per seed, same preset), on one
/// line: the settings, how the clocks were taken, per optimizer the median
/// and range across seeds (`null` where a run never reached SGD's final
/// loss, or for a range's infinite end), and every seed's race. An empty
/// `races` gives a summary without races.
pub fn summary_json(races: &[RaceResult]) -> String {
    let Some(first) = races.first() else {
        return "{\"races\": []}".into();
    };
    let rounded = |s: Spread| Spread {
        median: figure(s.median),
        min: figure(s.min),
        max: figure(s.max),
    };
    let across = KINDS
        .iter()
        .filter_map(|&k| seed_figures(races, k))
        .map(|f| {
            let figures = AcrossJson {
                final_test_loss: rounded(f.final_test_loss),
                time_to_target_secs: f.time_to_target.map(rounded),
                speedup_vs_sgd: f.speedup.map(rounded),
            };
            (f.kind.name(), figures)
        })
        .collect();
    crate::app::json::line(&SummaryJson {
        preset: &first.preset,
        network: &first.network,
        dataset: &first.dataset,
        budget_secs: first.budget_secs,
        threads: first.threads,
        clock: first.clock.name(),
        slice_secs: figure(first.clock.slice_secs(first.budget_secs)),
        clock_note: first.clock.description(first.budget_secs),
        seeds: races.iter().map(|r| r.seed).collect(),
        across_seeds: Ordered(across),
        races: races.iter().map(RaceJson::of).collect(),
    })
}

/// The terminal table of one seed's race.
pub fn table(r: &RaceResult) -> String {
    let mut s = format!(
        "\n{} ({}) on {}, seed {} ({} s each, {} threads); target = SGD's final test loss {}\n{}\n",
        r.preset,
        r.network,
        r.dataset,
        r.seed,
        r.budget_secs,
        r.threads,
        r.target_loss().map_or("-".into(), |t| format!("{t:.4}")),
        r.clock.description(r.budget_secs)
    );
    s.push_str("optimizer  batch   steps   examples  step ms  train loss  test loss  time to target  speedup\n");
    for run in &r.runs {
        let l = run.last();
        s.push_str(&format!(
            "{:<9} {:>6} {:>7} {:>10} {:>8.2} {:>11.4} {:>10.4} {:>15} {:>8}\n",
            run.kind.name(),
            run.hyper.batch(),
            l.step,
            l.examples,
            run.median_step_ms,
            l.train_loss,
            l.test_loss,
            r.time_to_target(run.kind)
                .map_or("never".into(), |t| format!("{t:.2} s")),
            if run.kind == OptimizerKind::Sgd {
                "1.00x".into()
            } else {
                r.speedup_vs_sgd(run.kind)
                    .map_or("-".into(), |x| format!("{x:.2}x"))
            }
        ));
    }
    s
}

/// A spread as `median [min, max]`, each formatted by `f` (`never` for an
/// infinite time).
fn spread_text(s: Option<Spread>, f: &dyn Fn(f64) -> String) -> String {
    s.map_or("-".into(), |s| {
        format!("{} [{}, {}]", f(s.median), f(s.min), f(s.max))
    })
}

/// The terminal table across the seeds of a race series: per optimizer the
/// median and range of the final test loss, the time to SGD's final loss
/// and the speedup.
pub fn seeds_table(races: &[RaceResult]) -> String {
    let Some(first) = races.first() else {
        return String::new();
    };
    let seeds: Vec<String> = races.iter().map(|r| r.seed.to_string()).collect();
    let mut s = format!(
        "\n{} ({}) on {}: {} seeds ({}), median [min, max]\n",
        first.preset,
        first.network,
        first.dataset,
        races.len(),
        seeds.join(", ")
    );
    s.push_str(&format!(
        "{:<9} {:>28} {:>32} {:>26}\n",
        "optimizer", "final test loss", "time to SGD's final loss", "speedup over SGD"
    ));
    let secs = |t: f64| {
        if t.is_finite() {
            format!("{t:.2} s")
        } else {
            "never".into()
        }
    };
    for f in KINDS.iter().filter_map(|&k| seed_figures(races, k)) {
        s.push_str(&format!(
            "{:<9} {:>28} {:>32} {:>26}\n",
            f.kind.name(),
            spread_text(Some(f.final_test_loss), &|x| format!("{x:.2}")),
            spread_text(f.time_to_target, &secs),
            // (0 is a run that never reached SGD's final loss.)
            spread_text(f.speedup, &|x| if x > 0.0 {
                format!("{x:.2}x")
            } else {
                "never".into()
            })
        ));
    }
    s
}

/// Writes `curves.csv`, `race.png` and `summary.json` of a race series (one
/// race per seed, same preset) into `dir`.
///
/// # Errors
/// [`Error::Io`] if `dir` cannot be created or a file cannot be written.
pub fn write_outputs(races: &[RaceResult], dir: &std::path::Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut csv = String::from("seed,optimizer,step,examples,seconds,train_loss,test_loss\n");
    for r in races {
        for run in &r.runs {
            for p in &run.curve {
                csv.push_str(&format!(
                    "{},{},{},{},{:.6},{:.6},{:.6}\n",
                    r.seed,
                    run.kind.name(),
                    p.step,
                    p.examples,
                    p.seconds,
                    p.train_loss,
                    p.test_loss
                ));
            }
        }
    }
    let write =
        |name: &str, text: &str| crate::app::output::write_atomic(&dir.join(name), text.as_bytes());
    write("curves.csv", &csv)?;
    write("summary.json", &(summary_json(races) + "\n"))?;
    plot(races, &dir.join("race.png"))
}

/// `race.png`: test loss against training seconds and against examples, every
/// seed's curve, one colour per optimizer (the first seed's drawn thicker).
fn plot(races: &[RaceResult], path: &std::path::Path) -> Result<(), Error> {
    use crate::app::plot::{charts_png, Chart, Series, PALETTE};
    let Some(first) = races.first() else {
        return Ok(());
    };
    let series = |x_of: &dyn Fn(&CurvePoint) -> f64| -> Vec<Series> {
        let mut out = Vec::new();
        for (k, r) in races.iter().enumerate() {
            for run in &r.runs {
                let colour = KINDS.iter().position(|&x| x == run.kind).unwrap_or(0);
                let label = if k == 0 {
                    run.kind.name().to_string()
                } else {
                    format!("{} (seed {})", run.kind.name(), r.seed)
                };
                let mut s = Series::new(
                    label,
                    run.curve.iter().map(|p| (x_of(p), p.test_loss)).collect(),
                )
                .with_color(PALETTE[colour % PALETTE.len()]);
                s.stroke_width = if k == 0 { 2 } else { 1 };
                out.push(s);
            }
        }
        out
    };
    let seeds = if races.len() > 1 {
        format!(", {} seeds", races.len())
    } else {
        String::new()
    };
    let charts = [
        Chart {
            title: format!("{}: test loss vs training time{seeds}", first.preset),
            x_label: format!(
                "seconds ({} clock, evaluation excluded)",
                first.clock.name()
            ),
            y_label: "test loss".into(),
            series: series(&|p| p.seconds),
            log_y: true,
        },
        Chart {
            title: format!("{}: test loss vs examples seen{seeds}", first.preset),
            x_label: "examples seen".into(),
            y_label: "test loss".into(),
            series: series(&|p| p.examples as f64),
            log_y: true,
        },
    ];
    charts_png(path, &charts, 2, (640, 480))
}

#[cfg(test)]
mod tests {
    use super::Spread;

    #[test]
    fn spread_takes_the_middle_and_the_ends() {
        let s = Spread::of(vec![5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
        let s = Spread::of(vec![4.0, 1.0, 2.0, 8.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 8.0));
        let s = Spread::of(vec![2.0, f64::INFINITY, f64::INFINITY]).unwrap();
        assert_eq!(s.median, f64::INFINITY);
        assert!(Spread::of(vec![]).is_none());
        assert!(Spread::of(vec![1.0, f64::NAN]).is_none());
    }
}
