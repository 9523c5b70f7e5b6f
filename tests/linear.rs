//! Tests of the exact natural gradient of deep linear networks
//! (`natgrad::linear`, docs/math.md section 1).

use faer::Mat;
use natgrad::kernels::rng::Rng;
use natgrad::linear::*;
use natgrad::Error;

const EPS: f64 = f64::EPSILON;

fn frob(m: &Mat<f64>) -> f64 {
    m.norm_l2()
}

fn spectral_bound(m: &Mat<f64>) -> f64 {
    // The Frobenius norm bounds the spectral norm from above.
    m.norm_l2()
}

/// Central differences of the loss along every parameter against
/// `DeepLinear::gradient`.
///
/// Along one coordinate the loss is a quadratic polynomial (the end-to-end map
/// is linear in each single weight), so the central difference has no
/// truncation error at all: only rounding is left. Each loss evaluation is a
/// product of `L + 1` matrices of width at most `n` followed by a weighted
/// inner product, so its absolute rounding error is at most about
/// `gamma = 4 (L + 3) n eps` times the magnitude
/// `M = ||S^-1|| ||C|| (||W|| + ||W*|| + h)^2`; the difference quotient turns
/// two such errors into `gamma M / h`.
#[test]
fn gradient_matches_central_differences() {
    let profiles: &[&[usize]] = &[
        &[3, 4, 2],
        &[4, 4, 4, 4],
        &[5, 2, 5],
        &[2, 6, 3, 4],
        &[3, 3],
    ];
    let h = 1e-3;
    for (k, profile) in profiles.iter().enumerate() {
        let mut rng = Rng::new(100 + k as u64);
        let (net, problem) = random_small_problem(&mut rng, profile).unwrap();
        let grads = net.gradient(&problem).unwrap();
        let depth = net.depth();
        let n = *profile.iter().max().unwrap() as f64;
        let w = net.end_to_end();
        let teacher = problem.teacher().to_owned();
        let s_inv = problem.noise_precision().to_owned();
        let c = problem.input_moment().to_owned();
        let magnitude = spectral_bound(&s_inv)
            * spectral_bound(&c)
            * (frob(&w) + frob(&teacher) + h).powi(2)
            * (1.0 + h).powi(2 * depth as i32);
        let tol = 4.0 * (depth as f64 + 3.0) * n * EPS * magnitude / h;
        let mut worst = 0.0f64;
        for (i, layer) in net.layers().iter().enumerate() {
            for col in 0..layer.ncols() {
                for row in 0..layer.nrows() {
                    let shifted = |delta: f64| {
                        let mut layers = net.layers().to_vec();
                        layers[i][(row, col)] += delta;
                        DeepLinear::new(layers).unwrap().loss(&problem).unwrap()
                    };
                    let fd = (shifted(h) - shifted(-h)) / (2.0 * h);
                    let err = (fd - grads[i][(row, col)]).abs();
                    worst = worst.max(err);
                    assert!(
                        err <= tol,
                        "profile {profile:?} layer {i} ({row}, {col}): fd {fd} vs {} (err {err:e} > tol {tol:e})",
                        grads[i][(row, col)]
                    );
                }
            }
        }
        // The test must be able to fail: the gradient is not tiny compared to
        // the tolerance.
        let gnorm: f64 = grads.iter().map(frob).sum();
        assert!(
            gnorm > 1e3 * tol,
            "gradient {gnorm:e} too small to test against {tol:e}"
        );
    }
}

/// The exactness condition is about hidden widths only.
#[test]
fn exact_profiles_are_those_without_a_narrow_hidden_layer() {
    for p in [
        &[4usize, 4][..],
        &[4, 4, 4],
        &[4, 6, 4],
        &[3, 5, 5, 3],
        &[3, 5, 4],
        &[20, 40, 40, 40, 20],
    ] {
        assert!(is_exact_profile(p), "{p:?} should be exact");
    }
    for p in [
        &[6usize, 4, 3][..],
        &[3, 4, 6],
        &[5, 2, 5],
        &[4, 4, 3, 4, 4],
        &[80, 34, 20, 10, 5, 2, 5, 10, 20, 34, 80],
    ] {
        assert!(!is_exact_profile(p), "{p:?} should not be exact");
    }
    assert!(!is_exact_profile(&[4]));
    assert!(!is_exact_profile(&[]));
}

/// Tolerance of comparisons with the Moore-Penrose solution: its backward
/// error through an eigendecomposition of the `P x P` Fisher is about
/// `P eps ||F||`, amplified by the condition number of `F` on its range; a
/// factor 100 covers the constants of the eigensolver and the products.
fn moore_penrose_tolerance(check: &FisherCheck) -> f64 {
    let p: usize = check.widths.windows(2).map(|w| w[0] * w[1]).sum();
    100.0 * p as f64 * EPS * check.fisher_condition
}

#[test]
fn closed_form_solves_the_fisher_system_when_no_hidden_layer_is_narrow() {
    let profiles: &[&[usize]] = &[
        &[4, 4],
        &[4, 4, 4],
        &[4, 4, 4, 4, 4],
        &[3, 3, 3, 3, 3, 3, 3, 3, 3],
        &[4, 6, 4],
        &[3, 5, 5, 3],
        &[3, 6, 8, 6, 3],
        &[3, 5, 4],
        &[2, 7, 3],
    ];
    for (k, profile) in profiles.iter().enumerate() {
        for seed in 0..3u64 {
            let mut rng = Rng::new(7_000 + 10 * k as u64 + seed);
            let (net, problem) = random_small_problem(&mut rng, profile).unwrap();
            let check = check_against_fisher(&net, &problem).unwrap();
            assert!(check.exact_case);
            assert!(
                check.residual <= 1e-9,
                "{profile:?} seed {seed}: closed-form residual {:e}",
                check.residual
            );
            // The closed form moves the end-to-end map by exactly W - W*
            // (times -eta), ...
            assert!(
                check.map_change_vs_error <= 1e-9,
                "{profile:?}: map change differs from W - W* by {:e}",
                check.map_change_vs_error
            );
            // ... and so does the Moore-Penrose solution, although the two
            // differ in parameter space once there is a second layer.
            let tol = moore_penrose_tolerance(&check);
            assert!(
                tol < 1e-6,
                "{profile:?}: Fisher too ill-conditioned to compare ({tol:e})"
            );
            assert!(
                check.moore_penrose_residual <= tol,
                "{profile:?}: {check:?}"
            );
            assert!(
                check.map_change_difference <= tol,
                "{profile:?}: map changes differ by {:e} > {tol:e}",
                check.map_change_difference
            );
            if profile.len() > 2 {
                let d = flatten(&net.natural_gradient_direction(&problem, 0.0).unwrap());
                let d_norm = d.iter().map(|x| x * x).sum::<f64>().sqrt();
                assert!(
                    check.parameter_distance > 1e-6 * d_norm,
                    "{profile:?}: closed form and Moore-Penrose coincide in parameter space"
                );
            }
        }
    }
}

#[test]
fn narrowing_widening_and_bottleneck_profiles_leave_a_residual() {
    for (k, profile) in [
        &[6usize, 4, 3][..],
        &[3, 4, 6],
        &[5, 2, 5],
        &[6, 4, 2, 4, 6],
    ]
    .iter()
    .enumerate()
    {
        let mut rng = Rng::new(9_000 + k as u64);
        let (net, problem) = random_small_problem(&mut rng, profile).unwrap();
        let check = check_against_fisher(&net, &problem).unwrap();
        assert!(!check.exact_case);
        // The system itself is consistent: the Moore-Penrose solution solves it.
        assert!(
            check.moore_penrose_residual <= moore_penrose_tolerance(&check),
            "{check:?}"
        );
        // The closed form does not, by far more than rounding, and its map
        // change is not the natural one.
        assert!(
            check.residual > 1e-3,
            "{profile:?}: residual only {:e}",
            check.residual
        );
        assert!(check.map_change_difference > 1e-3, "{check:?}");
    }
}

/// What `natgrad linear` claims, on the reduced experiment: the done-when
/// criteria of issue 4.
#[test]
fn quick_experiment_meets_the_convergence_criteria() {
    let cfg = ExperimentConfig::quick();
    let report = run_experiment(&cfg).unwrap();
    let near_ng: Vec<&RunRecord> = report
        .runs
        .iter()
        .filter(|r| {
            r.method == Method::NaturalGradient
                && r.teacher == TeacherKind::Near
                && r.damping == Damping::None
        })
        .collect();
    assert_eq!(near_ng.len(), cfg.depths.len() * cfg.etas.len());
    for r in &near_ng {
        // The premise: a well-conditioned straight path.
        assert!(r.path_min_singular >= 0.1, "{}", r.to_json());
        let fitted = r
            .fitted_log_rate
            .unwrap_or_else(|| panic!("no fit: {}", r.to_json()));
        let rel = (fitted - r.predicted_log_rate).abs() / r.predicted_log_rate.abs();
        assert!(rel <= 0.05, "{}", r.to_json());
        assert!((r.predicted_log_rate - 2.0 * (1.0 - r.eta).ln()).abs() <= 1e-15);
    }
    for &eta in &cfg.etas {
        let steps: Vec<usize> = near_ng
            .iter()
            .filter(|r| r.eta == eta)
            .map(|r| {
                r.steps_to_target
                    .expect("near-teacher run did not converge")
            })
            .collect();
        let spread = steps.iter().max().unwrap() - steps.iter().min().unwrap();
        assert!(spread <= 2, "eta {eta}: steps to 1e-12 per depth {steps:?}");
    }
    for c in report.checks.iter().filter(|c| c.exact_case) {
        assert!(c.residual <= 1e-9, "{}", fisher_check_json(c));
    }
    assert!(report
        .checks
        .iter()
        .any(|c| !c.exact_case && c.residual > 1e-3));
    let lm: Vec<&RunRecord> = report
        .runs
        .iter()
        .filter(|r| matches!(r.damping, Damping::LevenbergMarquardt { .. }) && r.eta == 0.1)
        .collect();
    assert_eq!(lm.len(), cfg.depths.len());
    for r in &lm {
        assert_eq!(r.teacher, TeacherKind::Random);
        assert!(r.steps_to_target.is_some(), "{}", r.to_json());
        // The premise: the random teacher's straight path passes near a
        // singular map.
        assert!(r.path_min_singular < 1e-3, "{}", r.to_json());
    }
    // Gradient descent from the same weights is slower at every depth; from
    // small weights the deepest network sits on a plateau.
    for &depth in &cfg.depths {
        let ng = near_ng
            .iter()
            .find(|r| r.depth == depth && r.eta == 0.5)
            .unwrap();
        let gd = report
            .runs
            .iter()
            .find(|r| {
                r.depth == depth && r.method == Method::GradientDescent && r.init_scale == 1.0
            })
            .unwrap();
        let ng_steps = ng.steps_to_target.unwrap();
        assert!(
            gd.steps_to_target.is_none_or(|s| s > 10 * ng_steps),
            "{}",
            gd.to_json()
        );
    }
    let deepest = *cfg.depths.iter().max().unwrap();
    let plateau = report
        .runs
        .iter()
        .find(|r| r.depth == deepest && r.method == Method::GradientDescent && r.init_scale < 1.0)
        .unwrap();
    let (first, last) = (plateau.losses[0], *plateau.losses.last().unwrap());
    assert!(last > 0.5 * first, "no plateau: {first} -> {last}");
}

/// On a bottleneck whose first hidden layer is narrower than the input, the
/// closed form corrects the component of `W - W*` that only the first layer
/// can express with weight `1/L`: the excess loss contracts by
/// `(1 - eta / L)^2` per step instead of `(1 - eta)^2`.
#[test]
fn bottleneck_closed_form_contracts_at_eta_over_depth() {
    let profile = [12usize, 6, 3, 6, 12];
    let depth = profile.len() - 1;
    let mut rng = Rng::new(31);
    let init = DeepLinear::new(isometric_layers(&mut rng, &profile, 1.0).unwrap()).unwrap();
    let teacher = DeepLinear::new(isometric_layers(&mut rng, &profile, 1.0).unwrap())
        .unwrap()
        .end_to_end();
    let c = spd_with_spectrum(&mut rng, &log_spaced(1.0, 0.1, profile[0]));
    let problem = Problem::new(c, Mat::identity(12, 12), teacher).unwrap();
    for eta in [0.5, 0.8] {
        let mut net = init.clone();
        let mut opt = LinearNaturalGradient::new(eta, Damping::None).unwrap();
        let mut losses = vec![net.loss(&problem).unwrap()];
        for _ in 0..600 {
            let r = opt.step(&mut net, &problem).unwrap();
            losses.push(r.loss_after);
            if r.loss_after < STOP_LOSS {
                break;
            }
        }
        let fitted = fit_log_rate(&losses).expect("bottleneck run did not reach the fit window");
        let predicted = 2.0 * (1.0 - eta / depth as f64).ln();
        assert!(
            (fitted - predicted).abs() <= 0.05 * predicted.abs(),
            "eta {eta}: fitted {fitted} vs 2 ln(1 - eta/L) = {predicted}"
        );
        // Far from the exact network's rate.
        assert!(fitted > 0.5 * 2.0 * (1.0 - eta).ln());
    }
}

/// `(B + gI)^-1 G (A + gI)^-1 = G / g^2 (1 + O((||A|| + ||B||) / g))`: a heavily
/// damped natural gradient is a scaled gradient.
#[test]
fn heavy_tikhonov_damping_tends_to_scaled_gradient() {
    let mut rng = Rng::new(5);
    let (net, problem) = random_small_problem(&mut rng, &[4, 5, 3]).unwrap();
    let grads = net.gradient(&problem).unwrap();
    let factors = net.fisher_factors(&problem).unwrap();
    let g = 1e4;
    let d = net.natural_gradient_direction(&problem, g).unwrap();
    let l = net.depth() as f64;
    for ((di, gi), (b, a)) in d.iter().zip(&grads).zip(&factors) {
        let rescaled = di * faer::Scale(l * g * g);
        let rel = frob(&(&rescaled - gi)) / frob(gi);
        // First-order expansion bound, doubled for the second-order terms.
        let bound = 2.0 * (spectral_bound(a) + spectral_bound(b)) / g;
        assert!(rel <= bound, "relative deviation {rel:e} > {bound:e}");
        assert!(rel > 0.0);
    }
}

#[test]
fn levenberg_marquardt_relaxes_damping_on_a_well_conditioned_problem() {
    let n = 6;
    let mut rng = Rng::new(11);
    let init = DeepLinear::new(isometric_layers(&mut rng, &[n; 4], 1.0).unwrap()).unwrap();
    let w0 = init.end_to_end();
    let r = gaussian(&mut rng, n, n, 1.0 / (n as f64).sqrt());
    let teacher = &w0 * (Mat::<f64>::identity(n, n) + &r * faer::Scale(0.3));
    let c = spd_with_spectrum(&mut rng, &log_spaced(1.0, 0.1, n));
    let problem = Problem::new(c, Mat::identity(n, n), teacher).unwrap();
    let mut net = init.clone();
    let mut opt =
        LinearNaturalGradient::new(0.5, Damping::LevenbergMarquardt { initial: 1.0 }).unwrap();
    let first = net.loss(&problem).unwrap();
    for _ in 0..30 {
        opt.step(&mut net, &problem).unwrap();
    }
    assert!(opt.damping_value() < 1e-3, "g = {}", opt.damping_value());
    assert!(net.loss(&problem).unwrap() < 1e-6 * first);
}

/// Moore-Penrose conditions on a rank-deficient PSD matrix `X X^T`, with `X`
/// of singular values in [0.7, 1.3]: the reconstruction errors are rounding of
/// an eigendecomposition, `O(n eps kappa)` with `kappa <= (1.3 / 0.7)^2`.
#[test]
fn psd_pseudoinverse_satisfies_the_penrose_conditions() {
    let mut rng = Rng::new(3);
    let x = well_conditioned(&mut rng, 7, 3, 0.7, 1.3);
    let a = &x * x.transpose();
    let p = psd_pseudoinverse(a.as_ref(), PINV_RCOND).unwrap();
    let tol = 100.0 * 7.0 * EPS * (1.3f64 / 0.7).powi(4);
    assert!(frob(&(&a * &p * &a - &a)) <= tol * frob(&a));
    assert!(frob(&(&p * &a * &p - &p)) <= tol * frob(&p));
    assert!(frob(&(&a * &p - (&a * &p).transpose())) <= tol);
    // Rank 3: A A^+ is a projection of trace 3.
    let ap = &a * &p;
    let trace: f64 = (0..7).map(|i| ap[(i, i)]).sum();
    assert!((trace - 3.0).abs() <= tol);
}

#[test]
fn bad_inputs_give_typed_errors() {
    let i3 = Mat::<f64>::identity(3, 3);
    let i2 = Mat::<f64>::identity(2, 2);
    let w = Mat::<f64>::zeros(2, 3);
    assert!(matches!(
        Problem::new(i2.clone(), i2.clone(), w.clone()),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        Problem::new(i3.clone(), i3.clone(), w.clone()),
        Err(Error::Shape(_))
    ));
    let mut not_spd = i3.clone();
    not_spd[(1, 1)] = -1.0;
    assert!(matches!(
        Problem::new(not_spd, i2.clone(), w.clone()),
        Err(Error::NotPositiveDefinite(_))
    ));
    let mut asym = i3.clone();
    asym[(0, 1)] = 0.5;
    assert!(matches!(
        Problem::new(asym, i2.clone(), w.clone()),
        Err(Error::NotPositiveDefinite(_))
    ));
    let mut nan = w.clone();
    nan[(0, 0)] = f64::NAN;
    assert!(matches!(
        Problem::new(i3.clone(), i2.clone(), nan),
        Err(Error::NonFinite(_))
    ));

    assert!(matches!(DeepLinear::new(vec![]), Err(Error::Shape(_))));
    assert!(matches!(
        DeepLinear::new(vec![Mat::zeros(4, 3), Mat::zeros(2, 5)]),
        Err(Error::Shape(_))
    ));
    let mut inf = Mat::<f64>::zeros(2, 3);
    inf[(1, 2)] = f64::INFINITY;
    assert!(matches!(
        DeepLinear::new(vec![inf]),
        Err(Error::NonFinite(_))
    ));

    let problem = Problem::new(i3.clone(), i2.clone(), w).unwrap();
    let wrong = DeepLinear::new(vec![Mat::zeros(3, 3)]).unwrap();
    assert!(matches!(wrong.loss(&problem), Err(Error::Shape(_))));
    assert!(matches!(wrong.gradient(&problem), Err(Error::Shape(_))));
    assert!(matches!(
        wrong.natural_gradient_direction(&problem, 0.0),
        Err(Error::Shape(_))
    ));
    let mut right = DeepLinear::new(vec![Mat::zeros(4, 3), Mat::zeros(2, 4)]).unwrap();
    assert!(matches!(
        right.natural_gradient_direction(&problem, -1.0),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        right.apply(&[Mat::zeros(4, 3)], 1.0),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        LinearNaturalGradient::new(0.0, Damping::None),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        LinearNaturalGradient::new(
            0.1,
            Damping::Tikhonov {
                per_factor: f64::NAN
            }
        ),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        psd_pseudoinverse(Mat::<f64>::zeros(2, 3).as_ref(), 1e-10),
        Err(Error::Shape(_))
    ));

    let big = DeepLinear::new(vec![Mat::zeros(50, 50), Mat::zeros(50, 50)]).unwrap();
    let big_problem = Problem::new(
        Mat::identity(50, 50),
        Mat::identity(50, 50),
        Mat::zeros(50, 50),
    )
    .unwrap();
    assert!(matches!(
        fisher_matrix(&big, &big_problem),
        Err(Error::InvalidConfig(_))
    ));

    let mut cfg = ExperimentConfig::quick();
    cfg.etas = vec![1.5];
    assert!(matches!(run_experiment(&cfg), Err(Error::InvalidConfig(_))));
}

#[cfg(feature = "cli")]
#[test]
fn command_line_rejects_bad_flags() {
    use natgrad::app::linear::cli_main;
    let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for bad in [
        &["--bogus"][..],
        &["--out"],
        &["--out", "--json"],
        &["extra"],
    ] {
        match cli_main(&args(bad)) {
            Err(Error::Usage(msg)) => assert!(msg.contains("natgrad linear"), "{msg}"),
            other => panic!("{bad:?}: expected a usage error, got {other:?}"),
        }
    }
}

#[cfg(feature = "cli")]
#[test]
fn command_line_writes_csv_and_png() {
    use natgrad::app::linear::cli_main;
    let dir = std::env::temp_dir().join(format!("natgrad-linear-test-{}", std::process::id()));
    let args: Vec<String> = ["--out", dir.to_str().unwrap(), "--quick"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    cli_main(&args).unwrap();
    let csv = std::fs::read_to_string(dir.join("linear.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "step,method,depth,init_scale,excess_loss,eta,teacher,damping,widths"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert!(rows.len() > 1000);
    assert!(rows.iter().all(|r| r.len() == 9));
    assert!(rows.iter().any(|r| r[1] == "ng") && rows.iter().any(|r| r[1] == "sgd"));
    for r in &rows {
        let loss: f64 = r[4].parse().unwrap();
        assert!(loss >= 0.0 || loss.is_nan() || loss.is_infinite());
    }
    let png = std::fs::read(dir.join("linear.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn json_lines_have_the_documented_fields() {
    let run = RunRecord {
        depth: 4,
        widths: vec![20, 20, 20, 20, 20],
        init_scale: 1.0,
        eta: 0.5,
        teacher: TeacherKind::Near,
        damping: Damping::None,
        path_min_singular: 0.25,
        method: Method::NaturalGradient,
        fitted_log_rate: None,
        predicted_log_rate: 2.0 * 0.5f64.ln(),
        steps_to_target: Some(20),
        diverged: false,
        losses: vec![1.0],
    };
    assert_eq!(
        run.to_json(),
        "{\"depth\": 4, \"widths\": [20, 20, 20, 20, 20], \"init_scale\": 1.0, \"eta\": 0.5, \
         \"teacher\": \"near\", \"damping\": \"none\", \"path_min_singular\": 0.25, \"method\": \"ng\", \
         \"fitted_log_rate\": null, \"predicted_log_rate\": -1.3862943611198906, \"steps_to_1e-12\": 20}"
    );
    let lm = RunRecord {
        damping: Damping::LevenbergMarquardt { initial: 1.0 },
        teacher: TeacherKind::Random,
        method: Method::GradientDescent,
        fitted_log_rate: Some(-1e-9),
        steps_to_target: None,
        path_min_singular: 3e-13,
        ..run
    };
    let json = lm.to_json();
    assert!(
        json.contains("\"teacher\": \"random\", \"damping\": \"lm\""),
        "{json}"
    );
    assert!(
        json.contains("\"method\": \"sgd\", \"fitted_log_rate\": -1e-9"),
        "{json}"
    );
    assert!(json.contains("\"path_min_singular\": 3e-13"), "{json}");
    assert!(json.ends_with("\"steps_to_1e-12\": null}"), "{json}");
    assert_eq!(json_f64(f64::NAN), "null");
    assert_eq!(json_f64(0.0), "0.0");
}

#[test]
fn fit_log_rate_recovers_a_geometric_sequence() {
    let rate: f64 = -0.3;
    let losses: Vec<f64> = (0..200).map(|k| (rate * k as f64).exp()).collect();
    let fitted = fit_log_rate(&losses).unwrap();
    assert!((fitted - rate).abs() <= 1e-12);
    // Never inside the window: no fit.
    assert_eq!(fit_log_rate(&[1.0, 0.9, 0.8]), None);
}

#[test]
fn path_min_singular_finds_a_crossing() {
    // The path from I to -I passes through 0 at t = 1/2.
    let i = Mat::<f64>::identity(3, 3);
    let m = &i * faer::Scale(-1.0);
    let s = path_min_singular(i.as_ref(), m.as_ref(), 3).unwrap();
    assert!(s <= 1e-12, "{s}");
    // A path that stays orthogonal up to scale: min is at an endpoint.
    let s = path_min_singular(i.as_ref(), (&i * faer::Scale(2.0)).as_ref(), 3).unwrap();
    assert!((s - 1.0).abs() <= 1e-12, "{s}");
}

#[cfg(feature = "cli")]
#[test]
fn plot_helper_writes_png_and_refuses_empty_charts() {
    use natgrad::app::plot::{line_chart_png, Series};
    let dir = std::env::temp_dir().join(format!("natgrad-plot-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("halving.png");
    let halving = Series::new(
        "halving",
        (0..30).map(|k| (k as f64, 0.5f64.powi(k))).collect(),
    );
    line_chart_png(&path, "Halving", "step", "value", &[halving], true).unwrap();
    assert_eq!(&std::fs::read(&path).unwrap()[..4], b"\x89PNG");
    // Only non-positive values on a log axis: nothing to draw.
    let zeros = Series::new("zeros", vec![(0.0, 0.0), (1.0, -1.0)]);
    assert!(matches!(
        line_chart_png(&dir.join("empty.png"), "Empty", "x", "y", &[zeros], true),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        natgrad::app::plot::charts_png(&dir.join("none.png"), &[], 2, (100, 100)),
        Err(Error::InvalidConfig(_))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
