//! The `published` preset (issue #26, item 4): the paper's MNIST experiment
//! with its authors' settings (hennequin-lab/bernacchia-nips-2018,
//! `autoencoder.ml`, `lib/ngd.ml`, `lib/sgd.ml`, `lib/network.ml`), raced
//! briefly from the built binary.

#![cfg(feature = "cli")]

use natgrad::app::race::{tuned, tuned_for, Hyper, OptimizerKind};
use natgrad::kernels::activation::Activation;
use natgrad::mlp::{Likelihood, Mlp};
use natgrad::optim::DampingAdaptation;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh, empty directory for one test under cargo's per-target temp dir.
fn test_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("published-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn natgrad(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_natgrad"))
        .args(args)
        .output()
        .expect("the natgrad binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn published_preset_builds_the_papers_network_with_the_authors_init() {
    let net = Mlp::preset("published", 1).unwrap();
    assert_eq!(
        net.sizes(),
        [784, 400, 200, 100, 50, 100, 200, 400, 784],
        "autoencoder.ml's layer sizes"
    );
    let acts: Vec<Activation> = net.layers().iter().map(|l| l.activation).collect();
    assert!(acts[..7].iter().all(|&a| a == Activation::Tanh), "{acts:?}");
    assert_eq!(acts[7], Activation::Identity);
    assert_eq!(net.likelihood(), Likelihood::Gaussian, "squared loss");
    // lib/network.ml: weights N(0, 1/n_in), biases 0. Glorot's uniform
    // (the `paper` preset) has std sqrt(2 / (n_in + n_out)), 0.040 on the
    // first layer against 0.036 here.
    for l in net.layers() {
        assert!(l.bias().iter().all(|&b| b == 0.0));
        let w = &l.params[..l.n_in * l.n_out];
        let var = w.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / w.len() as f64;
        let expected = 1.0 / l.n_in as f64;
        assert!(
            (var / expected - 1.0).abs() < 0.05,
            "layer {}x{}: weight variance {var}, expected {expected}",
            l.n_out,
            l.n_in
        );
    }
}

#[test]
fn published_preset_has_the_papers_optimizer_settings() {
    let Hyper::Ng(batch, c) = tuned("published", OptimizerKind::NaturalGradient).unwrap() else {
        panic!("not a natural-gradient setting");
    };
    assert_eq!(batch, 1000);
    assert_eq!(c.learning_rate, 1.0);
    assert!(c.scale_by_depth, "lib/ngd.ml divides alpha by the depth");
    assert_eq!(c.factor_decay, 0.0, "per-minibatch factors");
    assert_eq!(c.refresh_interval, 1);
    assert_eq!(c.statistics_interval, 1);
    assert_eq!(c.samples, 1, "n_repeats = 1");
    assert_eq!(c.damping, 1.0, "`Levenberg 1.");
    assert_eq!(
        c.adaptation,
        DampingAdaptation::LevenbergMarquardt { interval: 1 }
    );
    assert_eq!(c.damping_check_fraction, 1.0, "the whole minibatch");
    assert_eq!(c.weight_decay, 0.0);
    assert!(!c.exact_output_factor && !c.pi_correction);
    // No penalty to scale: the same on any training set.
    assert_eq!(
        tuned_for("published", OptimizerKind::NaturalGradient, 60_000).unwrap(),
        Hyper::Ng(batch, c)
    );

    let Hyper::Sgd(batch, s) = tuned("published", OptimizerKind::Sgd).unwrap() else {
        panic!("not an SGD setting");
    };
    assert_eq!(batch, 20);
    assert_eq!(s.momentum, 0.0, "plain SGD");
    assert_eq!(s.weight_decay, 0.0);
    // The paper's 0.04, 0.06, 0.08, divided by the minibatch as lib/sgd.ml does.
    assert!(
        [0.002, 0.003, 0.004].contains(&s.learning_rate),
        "{}",
        s.learning_rate
    );
    // Adam: `paper`'s, as a reference line.
    assert_eq!(
        tuned("published", OptimizerKind::Adam).unwrap(),
        tuned("paper", OptimizerKind::Adam).unwrap()
    );
}

#[test]
fn a_brief_published_race_runs_and_writes_its_outputs() {
    let dir = test_dir("race");
    let out = natgrad(&[
        "race",
        "--preset",
        "published",
        "--optimizers",
        "ng,sgd",
        "--budget",
        "0.5",
        "--threads",
        "1",
        "--quiet",
        "--checkpoint-every",
        "0.2",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for f in ["curves.csv", "race.png", "summary.json"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let summary = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    assert!(summary.contains("\"preset\": \"published\""), "{summary}");
    assert!(
        summary.contains("\"optimizer\": \"ng\", \"batch\": 1000"),
        "{summary}"
    );
    assert!(
        summary.contains("\"optimizer\": \"sgd\", \"batch\": 20"),
        "{summary}"
    );
    // The checkpoint records the preset: `paper` (same widths) does not
    // resume from it.
    std::fs::copy(
        dir.join("checkpoints").join("published-sgd.ckpt"),
        dir.join("checkpoints").join("paper-sgd.ckpt"),
    )
    .unwrap();
    let out = natgrad(&[
        "race",
        "--preset",
        "paper",
        "--optimizers",
        "sgd",
        "--budget",
        "0.5",
        "--threads",
        "1",
        "--quiet",
        "--resume",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("preset published (saved) vs paper (this run)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unknown_preset_is_refused_naming_the_valid_ones() {
    let out = natgrad(&["race", "--preset", "publshed"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("unknown preset \"publshed\""), "{err}");
    assert!(err.contains("paper|deep|published|all"), "{err}");
}
