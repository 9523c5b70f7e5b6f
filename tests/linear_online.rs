//! The paper's deep-linear simulations, online (`natgrad::linear::online`,
//! `natgrad linear --online`): the reduced experiment
//! ([`OnlineConfig::quick`]) and the pieces it is built from.

use std::sync::OnceLock;

use faer::Mat;
use natgrad::kernels::rng::Rng;
use natgrad::kernels::MatRef;
use natgrad::linear::*;

/// The reduced experiment, run once for every test of this file.
fn quick_report() -> &'static OnlineReport {
    static REPORT: OnceLock<OnlineReport> = OnceLock::new();
    REPORT.get_or_init(|| run_online_experiment(&OnlineConfig::quick(), &mut |_| {}).unwrap())
}

fn run(n: &OnlineNetworkReport, m: OnlineMethod) -> &OnlineRun {
    n.run(m)
        .unwrap_or_else(|| panic!("{}: no {} run", n.network, m.name()))
}

#[test]
fn networks_and_inputs_are_the_authors() {
    // linear.ml: NET 1, NET 2 (input_size 20), NET 3 (input_size 200).
    let nets = authors_networks();
    assert_eq!(nets[0].widths, vec![20; 17]);
    assert_eq!(
        nets[1].widths,
        [20, 30, 40, 50, 60, 70, 80, 90, 100, 90, 80, 70, 60, 50, 40, 30, 20]
    );
    assert_eq!(
        nets[2].widths,
        [200, 80, 34, 20, 10, 5, 2, 5, 10, 20, 34, 80, 200]
    );
    // cor_noise: spectrum epsilon + exp(-i rank / n), summing to sigma^2 n;
    // samples have that covariance.
    let mut rng = Rng::new(3);
    let n = 20;
    let inputs = CorrelatedInputs::authors(&mut rng, n, 1e-3, 1.0, 5.0).unwrap();
    let s = inputs.spectrum();
    assert!((s.iter().sum::<f64>() - n as f64).abs() < 1e-9);
    let ratio = (1e-3 + 1.0) / (1e-3 + (-(19.0 * 5.0) / 20.0f64).exp());
    assert!((s[0] / s[n - 1] - ratio).abs() < 1e-9 * ratio);
    let count = 40_000;
    let x = inputs.sample(&mut rng, count);
    let empirical = &x * x.transpose() * faer::Scale(1.0 / count as f64);
    let c = inputs.covariance().to_owned();
    let err = (&empirical - &c).norm_l2() / c.norm_l2();
    // Relative sampling error of a covariance: about sqrt(n / count) = 0.02.
    assert!(err < 0.05, "sample covariance off by {err}");
    assert!(err > 1e-4, "samples cannot match C to rounding: {err}");
}

/// The f32 student's gradient against the same formula in f64:
/// `dW_i = W_{>i}^T (W X - Y) X^T W_{<i}^T / b`.
#[test]
fn student_gradient_matches_f64() {
    let widths = [5, 7, 3, 6, 4];
    let mut rng = Rng::new(11);
    let net = DeepLinear::new(authors_gaussian_layers(&mut rng, &widths)).unwrap();
    let b = 9;
    let x = gaussian(&mut rng, 5, b, 1.0);
    let y = gaussian(&mut rng, 4, b, 1.0);
    let to_f32 = |m: &Mat<f64>| -> Vec<f32> {
        (0..m.ncols())
            .flat_map(|j| (0..m.nrows()).map(move |i| m[(i, j)] as f32))
            .collect()
    };
    let (xs, ys) = (to_f32(&x), to_f32(&y));
    let mut student = LinearStudent::new(&net, 16).unwrap();
    let loss = student
        .loss_and_gradient(
            MatRef::from_column_major_slice(&xs, 5, b),
            MatRef::from_column_major_slice(&ys, 4, b),
        )
        .unwrap();
    let e = &net.end_to_end() * &x - &y;
    let loss64 = 0.5 * e.squared_norm_l2() / b as f64;
    assert!((loss - loss64).abs() <= 1e-5 * loss64, "{loss} vs {loss64}");
    for (i, (after, before)) in net.side_products().iter().enumerate() {
        let g64 = after.transpose()
            * &e
            * x.transpose()
            * before.transpose()
            * faer::Scale(1.0 / b as f64);
        let g = student.gradient(i);
        assert_eq!(g.ncols(), widths[i] + 1, "bias column");
        let mut diff = 0.0f64;
        for c in 0..widths[i] {
            for r in 0..widths[i + 1] {
                diff = diff.max((g[(r, c)] as f64 - g64[(r, c)]).abs());
            }
            assert_eq!(g[(0, widths[i])], 0.0, "the bias column stays zero");
        }
        let scale = g64.norm_max();
        assert!(scale > 1e-3, "layer {i}: gradient too small to test");
        assert!(diff <= 1e-5 * scale, "layer {i}: {diff} vs scale {scale}");
    }
}

#[test]
fn every_method_lowers_the_test_error_and_ng_reaches_the_floor() {
    let report = quick_report();
    assert_eq!(report.networks.len(), 3);
    for n in &report.networks {
        assert!(n.noise_floor > 0.0);
        for r in &n.runs {
            assert!(!r.diverged, "{} {} diverged", n.network, r.method.name());
            let (first, last) = (r.curve[0], r.last());
            assert!(
                last.test_error < 0.1 * first.test_error,
                "{} {}: {} -> {}",
                n.network,
                r.method.name(),
                first.test_error,
                last.test_error
            );
            // Time and examples only grow.
            for w in r.curve.windows(2) {
                assert!(w[1].examples > w[0].examples && w[1].seconds >= w[0].seconds);
            }
        }
        // Both natural gradients end within 10% of the teacher's own error.
        for m in [OnlineMethod::NaturalGradient, OnlineMethod::ExactClosedForm] {
            let last = run(n, m).last().test_error;
            assert!(
                last < 1.1 * n.noise_floor,
                "{} {}: {last} vs floor {}",
                n.network,
                m.name(),
                n.noise_floor
            );
        }
    }
}

#[test]
fn online_ng_beats_sgd_per_example() {
    let report = quick_report();
    for n in &report.networks {
        let ng = run(n, OnlineMethod::NaturalGradient);
        let sgd = run(n, OnlineMethod::Sgd);
        assert_eq!(ng.last().examples, sgd.last().examples);
        assert!(
            ng.last().test_error < 0.1 * sgd.last().test_error,
            "{}: NG {} vs SGD {}",
            n.network,
            ng.last().test_error,
            sgd.last().test_error
        );
        let (_, ng_examples) = n
            .reached_target(OnlineMethod::NaturalGradient)
            .expect("NG reaches SGD's final error");
        let (_, speedup) = n.speedup_vs_sgd(OnlineMethod::NaturalGradient).unwrap();
        assert!(
            speedup >= 2.0,
            "{}: NG needs {ng_examples} examples, only {speedup}x fewer than SGD",
            n.network
        );
    }
}

/// Where the closed form is exact (no hidden layer narrower than input or
/// output), the online method follows it step for step and is never more
/// than one step ahead: the closed form's error after `k` steps is at most
/// the online method's after `k - 1` (up to 2% for the noise of the test
/// set and the online factors), it reaches every level at most one step
/// later, and ends nearer the floor.
#[test]
fn exact_closed_form_is_at_or_below_the_online_curve() {
    let report = quick_report();
    let mut networks = 0;
    for n in &report.networks {
        if !is_exact_profile(&n.widths) {
            continue;
        }
        networks += 1;
        let ng = run(n, OnlineMethod::NaturalGradient);
        let exact = run(n, OnlineMethod::ExactClosedForm);
        let step = ng.batch as f64;
        let mut behind_somewhere = false;
        for p in &exact.curve[1..] {
            let x = p.examples as f64;
            let online_before = ng.test_error_at(x - step).unwrap();
            assert!(
                p.test_error <= 1.02 * online_before,
                "{} at {x} examples: exact {} vs online one step earlier {online_before}",
                n.network,
                p.test_error
            );
            behind_somewhere |= p.test_error < ng.test_error_at(x).unwrap();
        }
        assert!(
            behind_somewhere,
            "{}: the online curve is never above",
            n.network
        );
        for level in [1e3, 1e1, 2.0] {
            let target = level * n.noise_floor;
            let (_, e_exact) = exact.reached(target).unwrap();
            let (_, e_ng) = ng.reached(target).unwrap();
            assert!(
                e_exact <= e_ng + step,
                "{}: to {target:e}, exact {e_exact} examples vs online {e_ng}",
                n.network
            );
        }
        let excess = |r: &OnlineRun| (r.last().test_error - n.noise_floor).abs();
        assert!(excess(exact) < excess(ng), "{}", n.network);
    }
    assert_eq!(networks, 2, "square and wide are exact profiles");
}

#[test]
fn outputs_parse() {
    let report = quick_report();
    let csv = report.csv();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("network,method,step,examples,seconds,test_error")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let points: usize = report
        .networks
        .iter()
        .flat_map(|n| &n.runs)
        .map(|r| r.curve.len())
        .sum();
    assert_eq!(rows.len(), points);
    for r in &rows {
        assert_eq!(r.len(), 6, "{r:?}");
        assert!(["square", "wide", "bottleneck"].contains(&r[0]));
        assert!(["ng", "sgd", "exact"].contains(&r[1]));
        r[2].parse::<usize>().unwrap();
        r[3].parse::<usize>().unwrap();
        assert!(r[4].parse::<f64>().unwrap() >= 0.0);
        assert!(r[5].parse::<f64>().unwrap().is_finite());
    }
    let json = report.summary_json();
    assert!(json.starts_with('{') && json.ends_with('}'));
    let opens = json.matches(['{', '[']).count();
    let closes = json.matches(['}', ']']).count();
    assert_eq!(opens, closes);
    for key in [
        "\"network\": \"square\"",
        "\"final_test_error\": ",
        "\"seconds_to_target\": ",
        "\"speedup_vs_sgd\": ",
        "\"noise_floor\": ",
    ] {
        assert!(json.contains(key), "{key} missing from {json}");
    }
    // The speedups in the JSON are the report's.
    let sq = &report.networks[0];
    let (t, _) = sq.speedup_vs_sgd(OnlineMethod::NaturalGradient).unwrap();
    assert!(json.contains(&format!("\"speedup_vs_sgd\": {}", json_f64(t))));
}

#[cfg(feature = "cli")]
mod cli {
    use std::path::PathBuf;
    use std::process::{Command, Output};

    fn natgrad(args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_natgrad"))
            .args(args)
            .output()
            .expect("the natgrad binary runs")
    }

    fn fresh_dir(name: &str) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn quick_run_writes_csv_png_and_json() {
        let dir = fresh_dir("linear-online-quick");
        let out = natgrad(&[
            "linear",
            "--online",
            "--quick",
            "--json",
            "--out",
            dir.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json = std::fs::read_to_string(dir.join("linear-online.json")).unwrap();
        assert_eq!(stdout.trim(), json.trim(), "--json prints the summary file");
        assert!(json.contains("\"experiment\": \"linear-online\""));
        let csv = std::fs::read_to_string(dir.join("linear-online.csv")).unwrap();
        assert!(csv.lines().count() > 100);
        let png = std::fs::read(dir.join("linear-online.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // No temporaries left behind.
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name();
            assert!(
                !name.to_string_lossy().starts_with('.'),
                "{name:?} left behind"
            );
        }
    }

    #[test]
    fn bad_flags_are_refused_with_the_usage() {
        for args in [
            &["linear", "--online", "--examples", "0"][..],
            &["linear", "--online", "--examples", "many"],
            &["linear", "--online", "--examples"],
            &["linear", "--online", "--sgd-lr", "-1"],
            &["linear", "--online", "--sgd-lr", "NaN"],
            &["linear", "--online", "--out"],
            &["linear", "--online", "--bogus"],
        ] {
            let out = natgrad(args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
            assert!(err.contains("natgrad linear --online"), "{args:?}: {err}");
        }
        let out = natgrad(&["linear", "--online", "--help"]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("--examples N"));
    }
}
