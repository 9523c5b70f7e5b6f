//! The layer-level natural gradient (`natgrad::optim::KroneckerPreconditioner`)
//! against a plain f64 reference: running averages of the Kronecker factors
//! built explicitly, damped, inverted by faer in f64 and applied to the
//! gradient; and every misuse refused with a typed error.

use faer::linalg::solvers::Solve;
use faer::Mat;
use natgrad::kernels::rng::Rng;
use natgrad::kernels::{MatMut, MatRef, Par};
use natgrad::optim::{
    FactorUpdate, InverseApplication, KroneckerPreconditioner, NaturalGradientConfig,
    Preconditioning,
};
use natgrad::Error;

fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0.0f32; n];
    Rng::new(seed).fill_normal(&mut v);
    v
}

/// `X X^T / b` in f64 for the column-major `rows x b` matrix in `x`, with a
/// row of ones appended when `ones`.
fn second_moment(x: &[f32], rows: usize, b: usize, ones: bool) -> Mat<f64> {
    let n = rows + ones as usize;
    let at = |i: usize, j: usize| {
        if i < rows {
            x[j * rows + i] as f64
        } else {
            1.0
        }
    };
    Mat::from_fn(n, n, |p, q| {
        (0..b).map(|j| at(p, j) * at(q, j)).sum::<f64>() / b as f64
    })
}

/// The 2-norm condition number of the symmetric positive definite `m`.
fn condition(m: &Mat<f64>) -> f64 {
    let ev = m.self_adjoint_eigenvalues(faer::Side::Lower).unwrap();
    let (lo, hi) = ev
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    hi / lo
}

/// `(G + sI)^-1 grad (A + sI)^-1` in f64.
fn reference(a: &Mat<f64>, g: &Mat<f64>, grad: &Mat<f64>, s: f64) -> Mat<f64> {
    let ad = Mat::from_fn(a.nrows(), a.ncols(), |i, j| {
        a[(i, j)] + if i == j { s } else { 0.0 }
    });
    let gd = Mat::from_fn(g.nrows(), g.ncols(), |i, j| {
        g[(i, j)] + if i == j { s } else { 0.0 }
    });
    let left = gd.llt(faer::Side::Lower).unwrap().solve(grad);
    // X (A + sI)^-1 = ((A + sI)^-1 X^T)^T, A symmetric.
    ad.llt(faer::Side::Lower)
        .unwrap()
        .solve(left.transpose())
        .transpose()
        .to_owned()
}

/// Three steps of running averages (decay 0.8, unbiased start: rho_k =
/// min(0.8, 1 - 1/k)) on layers of odd widths, sequential and on two
/// threads, with solves and with explicit inverses: each preconditioned
/// gradient matches the f64 reference.
///
/// Tolerance: the f32 factors carry a relative error of about `b u` (sums of
/// `b` products); the damped Cholesky solves lose about `n u kappa` on each
/// side. So `|out - ref|_max <= 8 (b + n_in + n_out) u kappa_A kappa_G
/// |ref|_max`, with the condition numbers of the damped factors computed
/// from the reference.
#[test]
fn preconditioned_gradients_match_the_f64_reference() {
    let shapes = [(1usize, 3usize), (7, 1), (13, 5), (20, 17)];
    let b = 9;
    let u = f32::EPSILON as f64 / 2.0;
    for par in [Par::Seq, Par::rayon(2)] {
        for inverse in [InverseApplication::Solves, InverseApplication::Explicit] {
            let config = NaturalGradientConfig {
                factor_decay: 0.8,
                damping: 0.25,
                inverse,
                ..Default::default()
            };
            let mut pre = KroneckerPreconditioner::new(&shapes, b, config).unwrap();
            let s = (config.damping as f64).sqrt();
            let mut a_ref: Vec<Mat<f64>> = shapes
                .iter()
                .map(|&(i, _)| Mat::zeros(i + 1, i + 1))
                .collect();
            let mut g_ref: Vec<Mat<f64>> = shapes.iter().map(|&(_, o)| Mat::zeros(o, o)).collect();
            for k in 1..=3u64 {
                assert!(
                    pre.begin_step(),
                    "every step collects statistics by default"
                );
                let rho = if k == 1 {
                    0.0
                } else {
                    0.8f64.min(1.0 - 1.0 / k as f64)
                };
                for (l, &(n_in, n_out)) in shapes.iter().enumerate() {
                    let seed = 100 * k + l as u64;
                    let x = normal(n_in * b, seed);
                    let e = normal(n_out * b, seed + 50);
                    pre.observe(
                        l,
                        MatRef::from_column_major_slice(&x, n_in, b),
                        MatRef::from_column_major_slice(&e, n_out, b),
                        par,
                    )
                    .unwrap();
                    let (ax, ge) = (
                        second_moment(&x, n_in, b, true),
                        second_moment(&e, n_out, b, false),
                    );
                    a_ref[l] = Mat::from_fn(n_in + 1, n_in + 1, |i, j| {
                        rho * a_ref[l][(i, j)] + (1.0 - rho) * ax[(i, j)]
                    });
                    g_ref[l] = Mat::from_fn(n_out, n_out, |i, j| {
                        rho * g_ref[l][(i, j)] + (1.0 - rho) * ge[(i, j)]
                    });
                }
                for (l, &(n_in, n_out)) in shapes.iter().enumerate() {
                    let grad = normal(n_out * (n_in + 1), 7000 + k * 10 + l as u64);
                    let mut out = vec![f32::NAN; grad.len()];
                    pre.precondition(
                        l,
                        MatRef::from_column_major_slice(&grad, n_out, n_in + 1),
                        MatMut::from_column_major_slice_mut(&mut out, n_out, n_in + 1),
                        par,
                    )
                    .unwrap();
                    let grad64 = Mat::from_fn(n_out, n_in + 1, |i, j| grad[j * n_out + i] as f64);
                    let want = reference(&a_ref[l], &g_ref[l], &grad64, s);
                    let damped = |m: &Mat<f64>| {
                        Mat::from_fn(m.nrows(), m.ncols(), |i, j| {
                            m[(i, j)] + if i == j { s } else { 0.0 }
                        })
                    };
                    let kappa = condition(&damped(&a_ref[l])) * condition(&damped(&g_ref[l]));
                    let scale = (0..n_in + 1)
                        .flat_map(|j| (0..n_out).map(move |i| (i, j)))
                        .map(|(i, j)| want[(i, j)].abs())
                        .fold(0.0, f64::max);
                    let tol = 8.0 * (b + n_in + n_out) as f64 * u * kappa * scale;
                    for j in 0..n_in + 1 {
                        for i in 0..n_out {
                            let err = (out[j * n_out + i] as f64 - want[(i, j)]).abs();
                            assert!(
                                err <= tol,
                                "layer {l} step {k} ({par:?}, {inverse:?}) at ({i}, {j}): {} against {}, error {err:e} > {tol:e}",
                                out[j * n_out + i],
                                want[(i, j)]
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The damped inverse really is applied: with a huge damping the result is
/// the gradient divided by the damping (`(sI)^-1 grad (sI)^-1 = grad / s^2`),
/// and the Levenberg-Marquardt rule moves the damping as the paper says.
#[test]
fn damping_limits_and_levenberg_marquardt_rule() {
    let (n_in, n_out, b) = (4, 3, 6);
    let config = NaturalGradientConfig {
        damping: 1e6,
        damping_bounds: (1e-6, 1e8),
        ..Default::default()
    };
    let mut pre = KroneckerPreconditioner::new(&[(n_in, n_out)], b, config).unwrap();
    pre.begin_step();
    let (x, e) = (normal(n_in * b, 1), normal(n_out * b, 2));
    pre.observe(
        0,
        MatRef::from_column_major_slice(&x, n_in, b),
        MatRef::from_column_major_slice(&e, n_out, b),
        Par::Seq,
    )
    .unwrap();
    let grad = normal(n_out * (n_in + 1), 3);
    let mut out = vec![0.0; grad.len()];
    pre.precondition(
        0,
        MatRef::from_column_major_slice(&grad, n_out, n_in + 1),
        MatMut::from_column_major_slice_mut(&mut out, n_out, n_in + 1),
        Par::Seq,
    )
    .unwrap();
    for (o, g) in out.iter().zip(&grad) {
        // s = 1e3 on each side; the factors' entries (about 1) perturb by ~1e-3 relative.
        assert!((o * 1e6 - g).abs() <= 1e-2 * g.abs().max(1.0), "{o} vs {g}");
    }
    // The predicted change of a unit step is -(1/2) <g, P g> < 0.
    let predicted = pre.predicted_change(1.0);
    let gpg: f64 = out
        .iter()
        .zip(&grad)
        .map(|(o, g)| (*o as f64) * (*g as f64))
        .sum();
    assert!(
        (predicted + 0.5 * gpg).abs() <= 1e-12 * gpg.abs(),
        "{predicted} vs {gpg}"
    );
    let g0 = pre.damping();
    pre.adapt_damping(0.9 * predicted, predicted); // ratio 0.9 > 3/4
    assert_eq!(pre.damping(), g0 * (2.0 / 3.0));
    let g1 = pre.damping();
    pre.adapt_damping(0.1 * predicted, predicted); // ratio 0.1 < 1/4
    assert_eq!(pre.damping(), g1 * 1.5);
    let g2 = pre.damping();
    pre.adapt_damping(0.5 * predicted, predicted); // in between: unchanged
    assert_eq!(pre.damping(), g2);
    pre.adapt_damping(f64::NAN, predicted); // a non-finite loss: raised
    assert_eq!(pre.damping(), g2 * 1.5);
    assert!(matches!(pre.set_damping(1e9), Err(Error::InvalidConfig(_))));
    pre.set_damping(2.0).unwrap();
    assert_eq!(pre.damping(), 2.0);
}

/// With statistics every second step, `begin_step` says so, and `observe`
/// on the other steps is refused.
#[test]
fn statistics_only_on_statistics_steps() {
    let config = NaturalGradientConfig {
        statistics_interval: 2,
        factor_decay: 0.5,
        ..Default::default()
    };
    let (n_in, n_out, b) = (3, 2, 4);
    let mut pre = KroneckerPreconditioner::new(&[(n_in, n_out)], b, config).unwrap();
    let (x, e) = (normal(n_in * b, 1), normal(n_out * b, 2));
    let xs = MatRef::from_column_major_slice(&x, n_in, b);
    let es = MatRef::from_column_major_slice(&e, n_out, b);
    assert!(
        matches!(
            pre.observe(0, xs, es, Par::Seq),
            Err(Error::InvalidConfig(_))
        ),
        "before begin_step"
    );
    let pattern: Vec<bool> = (0..4)
        .map(|_| {
            let stats = pre.begin_step();
            let r = pre.observe(0, xs, es, Par::Seq);
            assert_eq!(r.is_ok(), stats, "{r:?}");
            stats
        })
        .collect();
    assert_eq!(pattern, [true, false, true, false]);
}

/// Every misuse is a typed error naming what is wrong, and leaves the factors unchanged.
#[test]
fn misuse_is_refused() {
    let ok = NaturalGradientConfig::default();
    for (what, shapes, config) in [
        ("no layers", vec![], ok),
        ("zero width", vec![(0usize, 3usize)], ok),
        (
            "low rank",
            vec![(3, 3)],
            NaturalGradientConfig {
                preconditioning: Preconditioning::LowRank,
                ..ok
            },
        ),
        (
            "gram",
            vec![(3, 3)],
            NaturalGradientConfig {
                preconditioning: Preconditioning::Gram,
                ..ok
            },
        ),
        (
            "samples",
            vec![(3, 3)],
            NaturalGradientConfig { samples: 2, ..ok },
        ),
        (
            "damping",
            vec![(3, 3)],
            NaturalGradientConfig {
                damping: -1.0,
                ..ok
            },
        ),
        (
            "explicit with rank updates",
            vec![(3, 3)],
            NaturalGradientConfig {
                inverse: InverseApplication::Explicit,
                factor_update: FactorUpdate::RankUpdate,
                ..ok
            },
        ),
    ] {
        assert!(
            matches!(
                KroneckerPreconditioner::new(&shapes, 4, config),
                Err(Error::InvalidConfig(_))
            ),
            "{what}"
        );
    }
    assert!(matches!(
        KroneckerPreconditioner::new(&[(3, 3)], 0, ok),
        Err(Error::InvalidConfig(_))
    ));
    // Sizes no machine can hold are refused, not a panic or an abort.
    for (shapes, max_batch) in [
        ([(3usize, 3usize)], usize::MAX),
        ([(usize::MAX, 3)], 4),
        ([(1 << 40, 1 << 40)], 4),
    ] {
        assert!(matches!(
            KroneckerPreconditioner::new(&shapes, max_batch, ok),
            Err(Error::InvalidConfig(_))
        ));
    }
    let (n_in, n_out, b) = (3, 2, 4);
    let mut pre = KroneckerPreconditioner::new(&[(n_in, n_out)], b, ok).unwrap();
    let (x, e) = (normal((n_in + 1) * (b + 1), 1), normal(n_out * (b + 1), 2));
    let grad = normal(n_out * (n_in + 1), 3);
    let mut out = vec![0.0; grad.len()];
    let g = MatRef::from_column_major_slice(&grad, n_out, n_in + 1);
    assert!(
        matches!(
            pre.precondition(
                0,
                g,
                MatMut::from_column_major_slice_mut(&mut out, n_out, n_in + 1),
                Par::Seq
            ),
            Err(Error::InvalidConfig(_))
        ),
        "before begin_step"
    );
    pre.begin_step();
    fn m(v: &[f32], r: usize, c: usize) -> MatRef<'_, f32> {
        MatRef::from_column_major_slice(&v[..r * c], r, c)
    }
    let shape = |r: Result<(), Error>| matches!(r, Err(Error::Shape(_)));
    assert!(
        shape(pre.observe(1, m(&x, n_in, b), m(&e, n_out, b), Par::Seq)),
        "layer index"
    );
    assert!(
        shape(pre.observe(0, m(&x, n_in + 1, b), m(&e, n_out, b), Par::Seq)),
        "input height"
    );
    assert!(
        shape(pre.observe(0, m(&x, n_in, b), m(&e, n_out - 1, b), Par::Seq)),
        "error height"
    );
    assert!(
        shape(pre.observe(0, m(&x, n_in, b), m(&e, n_out, b - 1), Par::Seq)),
        "column counts"
    );
    assert!(
        shape(pre.observe(0, m(&x, n_in, b + 1), m(&e, n_out, b + 1), Par::Seq)),
        "beyond max_batch"
    );
    assert!(
        shape(pre.observe(0, m(&x, n_in, 0), m(&e, n_out, 0), Par::Seq)),
        "empty"
    );
    let mut bad = x.clone();
    bad[5] = f32::NAN;
    assert!(matches!(
        pre.observe(0, m(&bad, n_in, b), m(&e, n_out, b), Par::Seq),
        Err(Error::NonFinite(_))
    ));
    assert_eq!(
        pre.forward_factor(0).norm_l2(),
        0.0,
        "refused observations left the factor untouched"
    );
    pre.observe(0, m(&x, n_in, b), m(&e, n_out, b), Par::Seq)
        .unwrap();
    assert!(shape(pre.precondition(
        0,
        m(&grad, n_out, n_in),
        MatMut::from_column_major_slice_mut(&mut out[..n_out * n_in], n_out, n_in),
        Par::Seq
    )));
    assert!(shape(pre.precondition(
        0,
        g,
        MatMut::from_column_major_slice_mut(&mut out[..n_out * n_in], n_out, n_in),
        Par::Seq
    )));
    let mut bad_grad = grad.clone();
    bad_grad[0] = f32::INFINITY;
    assert!(matches!(
        pre.precondition(
            0,
            m(&bad_grad, n_out, n_in + 1),
            MatMut::from_column_major_slice_mut(&mut out, n_out, n_in + 1),
            Par::Seq
        ),
        Err(Error::NonFinite(_))
    ));
    pre.precondition(
        0,
        g,
        MatMut::from_column_major_slice_mut(&mut out, n_out, n_in + 1),
        Par::Seq,
    )
    .unwrap();
    assert!(out.iter().all(|v| v.is_finite()));
}
