//! `natgrad linear --online`: the paper's deep-linear simulations, online
//! ([`crate::linear::run_online_experiment`]), its table, CSV, JSON and figure.

use std::path::{Path, PathBuf};

use crate::app::args::{clap_parser, parse_command, parse_path};
use crate::app::plot::{charts_png, Chart, Series, PALETTE};
use crate::linear::{run_online_experiment, OnlineConfig, OnlineMethod, OnlineReport, OnlineRun};
use crate::Error;

/// The largest `--examples`.
const MAX_EXAMPLES: usize = 10_000_000;

/// The arguments of `natgrad linear --online`.
#[derive(clap::Parser, Debug)]
#[command(
    name = "natgrad linear --online",
    about = "The paper's deep-linear simulations, online (docs/linear.md)",
    long_about = "The paper's deep-linear simulations, online (docs/linear.md): the authors' \
square 20-unit, widening-then-narrowing and 200-80-..-2-..-80-200 bottleneck \
networks, correlated inputs and a noisy random teacher; the online natural \
gradient (minibatch 1000) against SGD (minibatch 20), with the exact closed \
form on the population statistics beside them. About 30 s.",
    override_usage = "natgrad linear --online [--out DIR] [--examples N] [--sgd-lr X] [--json] [--quick]",
    args_override_self = true
)]
struct OnlineArgs {
    /// The online experiment (this command).
    #[arg(long, hide = true)]
    online: bool,
    /// Where to write linear-online.csv, linear-online.png and
    /// linear-online.json.
    #[arg(long, value_name = "DIR", default_value = "linear-online-out", value_parser = clap_parser(parse_path))]
    out: PathBuf,
    /// Examples each online method trains on (default 400000, the authors'),
    /// at most 10000000.
    #[arg(long, value_name = "N", value_parser = clap_parser(parse_examples))]
    examples: Option<usize>,
    /// SGD's step on every network (default, from a sweep: 0.01 square,
    /// 0.005 wide, 0.002 bottleneck; docs/linear.md).
    #[arg(long, value_name = "X", allow_negative_numbers = true, value_parser = clap_parser(parse_sgd_lr))]
    sgd_lr: Option<f32>,
    /// Print the summary JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// The reduced experiment of the test suite (a few seconds).
    #[arg(long)]
    quick: bool,
}

fn parse_examples(v: &str) -> Result<usize, Error> {
    v.parse::<usize>()
        .ok()
        .filter(|&n| (1..=MAX_EXAMPLES).contains(&n))
        .ok_or_else(|| {
            Error::Usage(format!(
                "--examples takes a whole number from 1 to {MAX_EXAMPLES}, got {v:?}"
            ))
        })
}

fn parse_sgd_lr(v: &str) -> Result<f32, Error> {
    v.parse::<f32>()
        .ok()
        .filter(|&x| x.is_finite() && x > 0.0 && x <= 10.0)
        .ok_or_else(|| Error::Usage(format!("--sgd-lr takes a step in (0, 10], got {v:?}")))
}

/// Entry point of `natgrad linear --online` (`args` may contain `--online`).
pub fn cli_main(args: &[String]) -> Result<(), Error> {
    let Some(o) = parse_command::<OnlineArgs>(args)? else {
        return Ok(());
    };
    let mut config = if o.quick {
        OnlineConfig::quick()
    } else {
        OnlineConfig::authors()
    };
    if let Some(n) = o.examples {
        config.examples = n;
    }
    if let Some(lr) = o.sgd_lr {
        config
            .networks
            .iter_mut()
            .for_each(|n| n.sgd_learning_rate = lr);
    }
    // Checked before the experiment runs, not after.
    crate::app::output::check_out_dir(&o.out, "--out")?;
    for stale in crate::app::output::remove_stale_temporaries(&o.out) {
        eprintln!(
            "natgrad: removed {}, left by an interrupted earlier run",
            stale.display()
        );
    }
    let mut progress = |r: &OnlineRun| {
        let last = r.last();
        eprintln!(
            "natgrad: {} {}: {} examples in {:.2} s, test error {:.3e}{}",
            r.network,
            r.method.name(),
            last.examples,
            last.seconds,
            last.test_error,
            if r.diverged { " (diverged)" } else { "" }
        );
    };
    let report = run_online_experiment(&config, &mut progress)?;
    write_outputs(&report, &o.out)?;
    if o.json {
        println!("{}", report.summary_json());
    } else {
        print!("{}", report.table());
        println!(
            "\nwrote {}/{{linear-online.csv,linear-online.png,linear-online.json}}",
            o.out.display()
        );
    }
    Ok(())
}

/// Writes `linear-online.csv`, `linear-online.json` and `linear-online.png`
/// into `dir` (which must exist), each atomically.
///
/// Errors: [`Error::Io`] if a file cannot be written,
/// [`Error::InvalidConfig`] if the report has nothing to plot.
pub fn write_outputs(report: &OnlineReport, dir: &Path) -> Result<(), Error> {
    use crate::app::output::write_atomic;
    write_atomic(&dir.join("linear-online.csv"), report.csv().as_bytes())?;
    write_atomic(
        &dir.join("linear-online.json"),
        (report.summary_json() + "\n").as_bytes(),
    )?;
    write_plot(report, &dir.join("linear-online.png"))
}

fn method_style(m: OnlineMethod) -> (&'static str, (u8, u8, u8), u32) {
    match m {
        OnlineMethod::NaturalGradient => ("online NG, batch", PALETTE[0], 2),
        // One pixel: SGD's curve turns sharply at its spikes, where a wider
        // stroke's mitred joins draw needles past the data.
        OnlineMethod::Sgd => ("SGD, batch", PALETTE[1], 1),
        OnlineMethod::ExactClosedForm => ("exact closed form (population), per", (0, 0, 0), 1),
    }
}

/// Writes the figure: per network, test error (log scale) against training
/// seconds (left) and against examples seen (right), one line per method
/// and the teacher's own test error (the noise floor) in grey.
///
/// Errors: [`Error::InvalidConfig`] if the report has no network,
/// [`Error::Io`] if the file cannot be written.
pub fn write_plot(report: &OnlineReport, path: &Path) -> Result<(), Error> {
    if report.networks.is_empty() {
        return Err(Error::InvalidConfig("no network to plot".into()));
    }
    let mut charts = Vec::with_capacity(2 * report.networks.len());
    for n in &report.networks {
        let widths: Vec<String> = n.widths.iter().map(|w| w.to_string()).collect();
        let name = if widths.len() > 8 && n.widths.iter().all(|&w| w == n.widths[0]) {
            format!("{} {}x{}", n.network, n.widths.len() - 1, n.widths[0])
        } else {
            format!("{} {}", n.network, widths.join("-"))
        };
        for by_examples in [false, true] {
            let x_of = |p: &crate::linear::OnlinePoint| {
                if by_examples {
                    p.examples as f64 / 1000.0
                } else {
                    p.seconds
                }
            };
            let mut series: Vec<Series> = n
                .runs
                .iter()
                .map(|r| {
                    let (label, color, width) = method_style(r.method);
                    let mut s = Series::new(
                        format!("{label} {}", r.batch),
                        r.curve.iter().map(|p| (x_of(p), p.test_error)).collect(),
                    )
                    .with_color(color);
                    s.stroke_width = width;
                    s
                })
                .collect();
            let x_max = n
                .runs
                .iter()
                .filter_map(|r| r.curve.last().map(x_of))
                .fold(0.0f64, f64::max);
            let mut floor = Series::new(
                "noise floor (teacher)",
                vec![(0.0, n.noise_floor), (x_max, n.noise_floor)],
            )
            .with_color(PALETTE[7]);
            floor.stroke_width = 1;
            series.push(floor);
            charts.push(Chart {
                title: name.clone(),
                x_label: if by_examples {
                    "examples seen (thousands)".into()
                } else {
                    "training seconds (evaluation excluded)".into()
                },
                y_label: "test error".into(),
                series,
                log_y: true,
            });
        }
    }
    charts_png(path, &charts, 2, (640, 440))
}
