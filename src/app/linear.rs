//! `natgrad linear`: the deep-linear experiment of [`crate::linear`], its
//! summary table and its figure.

use std::path::{Path, PathBuf};

use crate::app::args::{clap_parser, parse_command, parse_path};
use crate::app::plot::{charts_png, Chart, Series, PALETTE};
use crate::linear::{
    fisher_check_json, is_exact_profile, run_experiment, write_csv, Damping, ExperimentConfig,
    ExperimentReport, Method, RunRecord, TeacherKind,
};
use crate::Error;

/// The arguments of `natgrad linear` (without `--online`; see
/// [`crate::app::linear_online`] for those with it).
#[derive(clap::Parser, Debug)]
#[command(
    name = "natgrad linear",
    about = "The deep-linear natural-gradient experiment (docs/math.md section 1)",
    override_usage = "natgrad linear [--out DIR] [--json] [--quick]
       natgrad linear --online [--out DIR] [--examples N] [--json] [--quick]",
    after_help = "natgrad linear --online runs the paper's simulations online: natural \
gradient vs SGD from a training set, test error against time and examples \
(`natgrad linear --online --help`).",
    args_override_self = true
)]
struct LinearArgs {
    /// Where to write linear.csv and linear.png.
    #[arg(long, value_name = "DIR", default_value = "linear-out", value_parser = clap_parser(parse_path))]
    out: PathBuf,
    /// Print one JSON line per run and per brute-force Fisher check.
    #[arg(long)]
    json: bool,
    /// The reduced experiment of the test suite (no bottleneck).
    #[arg(long)]
    quick: bool,
}

/// Entry point of `natgrad linear`.
pub fn cli_main(args: &[String]) -> Result<(), crate::Error> {
    if args.iter().any(|a| a == "--online") {
        return crate::app::linear_online::cli_main(args);
    }
    let Some(LinearArgs { out, json, quick }) = parse_command::<LinearArgs>(args)? else {
        return Ok(());
    };
    // Checked before the experiment runs, not after.
    crate::app::output::check_out_dir(&out, "--out")?;
    for stale in crate::app::output::remove_stale_temporaries(&out) {
        eprintln!(
            "natgrad: removed {}, left by an interrupted earlier run",
            stale.display()
        );
    }
    let config = if quick {
        ExperimentConfig::quick()
    } else {
        ExperimentConfig::full()
    };
    let report = run_experiment(&config)?;
    crate::app::output::write_atomic_with(&out.join("linear.csv"), |tmp| write_csv(&report, tmp))?;
    write_plot(&report, &out.join("linear.png"))?;
    if json {
        for run in &report.runs {
            println!("{}", run.to_json());
        }
        for check in &report.checks {
            println!("{}", fisher_check_json(check));
        }
    } else {
        print_summary(&report);
        println!(
            "wrote {} and {}",
            out.join("linear.csv").display(),
            out.join("linear.png").display()
        );
    }
    Ok(())
}

fn print_summary(report: &ExperimentReport) {
    println!(
        "{:>5} {:>6} {:>5} {:>6} {:>4} {:>5} {:>10} {:>11} {:>11} {:>9}",
        "depth",
        "method",
        "eta",
        "teach",
        "damp",
        "init",
        "path_min",
        "fitted",
        "predicted",
        "steps"
    );
    for r in &report.runs {
        println!(
            "{:>5} {:>6} {:>5.3} {:>6} {:>4} {:>5} {:>10.3e} {:>11} {:>11.5} {:>9}",
            r.depth,
            match r.method {
                Method::NaturalGradient => "ng",
                Method::GradientDescent => "sgd",
            },
            r.eta,
            match r.teacher {
                TeacherKind::Near => "near",
                TeacherKind::Random => "random",
            },
            match r.damping {
                Damping::None => "none",
                Damping::Tikhonov { .. } => "tik",
                Damping::LevenbergMarquardt { .. } => "lm",
            },
            r.init_scale,
            r.path_min_singular,
            r.fitted_log_rate.map_or("-".into(), |f| format!("{f:.5}")),
            r.predicted_log_rate,
            r.steps_to_target.map_or(
                if r.diverged {
                    "diverged".into()
                } else {
                    "-".into()
                },
                |s| s.to_string()
            ),
        );
    }
    for c in &report.checks {
        println!(
            "fisher check {:?}: exact_case {} residual {:.3e} map-change difference {:.3e}",
            c.widths, c.exact_case, c.residual, c.map_change_difference
        );
    }
}

/// Writes the figure, a 2 x 2 grid of log-scale excess loss against step:
/// top left, the natural gradient on the well-conditioned problems (straight
/// lines, every depth on top of each other); top right, gradient descent on
/// the same problems from the same weights and from small weights (plateaus),
/// with the natural gradient in black for scale; bottom left, the random
/// teacher, undamped against Levenberg-Marquardt; bottom right, the
/// bottleneck profile with the lines `(1 - eta / L)^(2k)` it follows. Panels
/// without runs (the quick configuration has no bottleneck) are left out.
///
/// Errors: [`Error::InvalidConfig`] if the report has no run to plot,
/// [`Error::Io`] if the file cannot be written.
pub fn write_plot(report: &ExperimentReport, path: &Path) -> Result<(), Error> {
    let trace = |r: &RunRecord| -> Vec<(f64, f64)> {
        r.losses
            .iter()
            .enumerate()
            .map(|(k, &l)| (k as f64, l))
            .collect()
    };
    let uniform = |r: &&RunRecord| r.widths.windows(2).all(|w| w[0] == w[1]);
    let mut depths: Vec<usize> = report
        .runs
        .iter()
        .filter(uniform)
        .map(|r| r.depth)
        .collect();
    depths.sort_unstable();
    depths.dedup();
    let depth_index = |d: usize| depths.iter().position(|&x| x == d).unwrap_or(0);
    // Same colour for a depth in every panel; the NG lines of different
    // depths coincide, so shallower ones are drawn wider to stay visible.
    let color = |k: usize| PALETTE[k % 4];
    let alt_color = |k: usize| PALETTE[4 + k % 6];
    let width = |k: usize| (2 * (depths.len() - k)) as u32;
    let mut ng = Vec::new();
    let mut random = Vec::new();
    let mut reference = None;
    for r in report.runs.iter().filter(uniform) {
        if r.method != Method::NaturalGradient {
            continue;
        }
        let k = depth_index(r.depth);
        match (r.teacher, r.damping) {
            (TeacherKind::Near, Damping::None) => {
                let mut s = Series::new(format!("NG L={} eta={}", r.depth, r.eta), trace(r))
                    .with_color(color(k));
                s.stroke_width = width(k);
                if r.eta == 0.1 && k + 1 == depths.len() {
                    let mut line = s.clone();
                    line.label = "NG eta=0.1 (every depth)".into();
                    line.color = Some((0, 0, 0));
                    line.stroke_width = 2;
                    reference = Some(line);
                }
                ng.push(s);
            }
            (TeacherKind::Random, Damping::LevenbergMarquardt { .. }) => random.push(
                Series::new(format!("NG+LM L={} eta={}", r.depth, r.eta), trace(r))
                    .with_color(color(k)),
            ),
            (TeacherKind::Random, Damping::None) if r.eta == 0.1 => random.push(
                Series::new(format!("NG undamped L={} eta={}", r.depth, r.eta), trace(r))
                    .with_color(alt_color(k)),
            ),
            _ => {}
        }
    }
    let mut gd = Vec::new();
    for r in report.runs.iter().filter(uniform) {
        if r.method == Method::GradientDescent {
            let k = depth_index(r.depth);
            let c = if r.init_scale == 1.0 {
                color(k)
            } else {
                alt_color(k)
            };
            gd.push(
                Series::new(
                    format!("GD L={} init scale {}", r.depth, r.init_scale),
                    trace(r),
                )
                .with_color(c),
            );
        }
    }
    gd.extend(reference);
    let mut bottleneck = Vec::new();
    for (k, r) in report
        .runs
        .iter()
        .filter(|r| !is_exact_profile(&r.widths))
        .enumerate()
    {
        let damping = match r.damping {
            Damping::None => "undamped",
            _ => "LM",
        };
        bottleneck.push(
            Series::new(format!("NG {damping} eta={}", r.eta), trace(r))
                .with_color(PALETTE[k % 10]),
        );
        if let (Damping::None, Some(&first)) = (r.damping, r.losses.first()) {
            let rate = (1.0 - r.eta / r.depth as f64).powi(2);
            let line = (0..r.losses.len())
                .map(|j| (j as f64, first * rate.powi(j as i32)))
                .collect();
            let mut s =
                Series::new(format!("(1 - eta/L)^2k, eta={}", r.eta), line).with_color((0, 0, 0));
            s.stroke_width = 1;
            bottleneck.push(s);
        }
    }
    if ng.is_empty() || gd.is_empty() {
        return Err(Error::InvalidConfig(
            "the experiment has no run to plot".into(),
        ));
    }
    let chart = |title: &str, series: Vec<Series>| Chart {
        title: title.into(),
        x_label: "step".into(),
        y_label: "excess loss".into(),
        series,
        log_y: true,
    };
    let mut charts = vec![
        chart("Exact natural gradient, well-conditioned teacher", ng),
        chart("Gradient descent on the same problems (black: NG)", gd),
    ];
    if !random.is_empty() {
        charts.push(chart("Random teacher: undamped NG vs LM damping", random));
    }
    if !bottleneck.is_empty() {
        let title = match report.runs.iter().find(|r| !is_exact_profile(&r.widths)) {
            Some(r) => {
                let w: Vec<String> = r.widths.iter().map(|w| w.to_string()).collect();
                format!("Bottleneck {}: closed form", w.join("-"))
            }
            None => "Bottleneck".into(),
        };
        charts.push(chart(&title, bottleneck));
    }
    charts_png(path, &charts, 2, (900, 650))
}
