//! The exact natural gradient of deep linear networks (PAPER.md section 1).
//!
//! (Full documentation below is being written.)

mod dense;
mod experiment;
mod fisher;
mod network;
mod random;

pub use experiment::{
    default_fisher_profiles, fisher_check_json, fit_log_rate, gradient_descent_local_rate,
    json_f64, path_min_singular, random_small_problem, run_experiment, write_csv, write_plot,
    ExperimentConfig, ExperimentReport, Method, RunRecord, TeacherKind, DIVERGENCE_FACTOR,
    FIT_HIGH, FIT_LOW, STOP_LOSS, TARGET_LOSS,
};
pub use fisher::{
    check_against_fisher, fisher_apply, fisher_matrix, flatten, unflatten, FisherCheck,
    FISHER_RCOND, MAX_BRUTE_FORCE_PARAMETERS,
};
pub use network::{
    gradient_descent_step, is_exact_profile, psd_pseudoinverse, Damping, DeepLinear,
    LinearNaturalGradient, Problem, StepReport, PINV_RCOND,
};
pub use random::{
    gaussian, isometric_layers, log_spaced, normal, orthogonal, semi_orthogonal, spd_with_spectrum,
    well_conditioned,
};

use std::path::PathBuf;

use crate::Error;

const USAGE: &str = "natgrad linear [--out DIR] [--json]
    Runs the deep-linear natural-gradient experiment (PAPER.md section 1).
    --out DIR   where to write linear.csv and linear.png (default linear-out/)
    --json      print one JSON line per run and per brute-force Fisher check";

/// Entry point of `natgrad linear`.
pub fn cli_main(args: &[String]) -> Result<(), crate::Error> {
    let mut out = PathBuf::from("linear-out");
    let mut json = false;
    let mut k = 0;
    while k < args.len() {
        match args[k].as_str() {
            "--out" => {
                let dir = args
                    .get(k + 1)
                    .filter(|d| !d.starts_with("--"))
                    .ok_or_else(|| Error::Usage(format!("--out needs a directory\n{USAGE}")))?;
                out = PathBuf::from(dir);
                k += 2;
            }
            "--json" => {
                json = true;
                k += 1;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => {
                return Err(Error::Usage(format!("unknown argument `{other}`\n{USAGE}")));
            }
        }
    }
    std::fs::create_dir_all(&out).map_err(|source| Error::Io {
        path: out.clone(),
        source,
    })?;
    let report = run_experiment(&ExperimentConfig::full())?;
    write_csv(&report, &out.join("linear.csv"))?;
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
        let json = r.to_json();
        let _ = json;
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
