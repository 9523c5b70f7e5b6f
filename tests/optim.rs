//! Checks of the network and the optimizers that can fail: finite-difference
//! gradients for every activation and likelihood, descent on a small problem,
//! and refusal of bad minibatches without touching any state.

use natgrad::kernels::rng::Rng;
use natgrad::kernels::{Activation, MatRef, Par};
use natgrad::mlp::{Init, Likelihood, Mlp};
use natgrad::optim::{
    Adam, AdamConfig, NaturalGradient, NaturalGradientConfig, Optimizer, Sgd, SgdConfig,
};
use natgrad::workspace::Workspace;
use natgrad::Error;

fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = Rng::new(seed);
    let mut v = vec![0.0; n];
    r.fill_normal(&mut v);
    v.iter_mut().for_each(|x| *x *= scale);
    v
}

/// Targets valid for the likelihood: any real (Gaussian), [0,1] (Bernoulli),
/// probability vectors (Categorical).
fn targets(lik: Likelihood, n: usize, b: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    match lik {
        Likelihood::Gaussian => random(n * b, seed, 1.0),
        Likelihood::Bernoulli => (0..n * b).map(|_| r.uniform_f32()).collect(),
        Likelihood::Categorical => {
            let mut y = vec![0.0; n * b];
            for j in 0..b {
                y[j * n + r.below(n)] = 1.0;
            }
            y
        }
    }
}

/// The loss summed in column chunks on the pool's threads equals a plain f64
/// sum of the same f32 terms (each term rounded once in f32, the sums in f64:
/// relative error a few `u`), bit for bit the same on one thread and on two,
/// and for targets given as a strided (row-major) view.
#[test]
fn loss_is_independent_of_threads_and_target_layout() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let (n_in, n_out, b) = (20usize, 300usize, 50usize);
    for lik in [
        Likelihood::Gaussian,
        Likelihood::Bernoulli,
        Likelihood::Categorical,
    ] {
        let net = Mlp::new(
            &[n_in, 12, n_out],
            &[Activation::Tanh, Activation::Identity],
            lik,
            Init::GlorotUniform,
            4,
        )
        .unwrap();
        let x = random(n_in * b, 5, 1.0);
        let y = targets(lik, n_out, b, 6);
        let xm = MatRef::from_column_major_slice(&x, n_in, b);
        let ym = MatRef::from_column_major_slice(&y, n_out, b);
        // The same targets stored row-major: a view with row stride b.
        let yt: Vec<f32> = (0..n_out)
            .flat_map(|i| (0..b).map(move |j| (i, j)))
            .map(|(i, j)| y[j * n_out + i])
            .collect();
        let ym_strided = MatRef::from_row_major_slice(&yt, n_out, b);
        let mut results = Vec::new();
        for (par, strided) in [
            (Par::Seq, false),
            (Par::rayon(2), false),
            (Par::rayon(2), true),
        ] {
            let mut ws = Workspace::new(&net, b, par).unwrap();
            let loss = pool.install(|| {
                net.forward(&mut ws, xm).unwrap();
                net.loss(&mut ws, if strided { ym_strided } else { ym }, false)
                    .unwrap()
            });
            results.push((loss, ws.activations(2).unwrap().to_owned()));
        }
        assert_eq!(
            results[0].0.to_bits(),
            results[1].0.to_bits(),
            "{lik:?}: threads"
        );
        assert_eq!(
            results[0].0.to_bits(),
            results[2].0.to_bits(),
            "{lik:?}: strided targets"
        );
        let s = &results[0].1;
        let mut want = 0.0f64;
        for j in 0..b {
            let (m, mut z) = (
                (0..n_out)
                    .map(|i| s[(i, j)] as f64)
                    .fold(f64::NEG_INFINITY, f64::max),
                0.0,
            );
            for i in 0..n_out {
                z += (s[(i, j)] as f64 - m).exp();
            }
            for i in 0..n_out {
                let (si, yi) = (s[(i, j)] as f64, y[j * n_out + i] as f64);
                want += match lik {
                    Likelihood::Gaussian => 0.5 * (si - yi) * (si - yi),
                    Likelihood::Bernoulli => si.max(0.0) + (-si.abs()).exp().ln_1p() - yi * si,
                    Likelihood::Categorical => yi * (m + z.ln() - si),
                };
            }
        }
        want /= b as f64;
        // Each term carries a few roundings in f32 (the softplus and log-sum-exp
        // ones relative to |s|): 1e-5 of the loss is far above them and far
        // below any missing or doubled term.
        let got = results[0].0;
        assert!(
            (got - want).abs() <= 1e-5 * want.abs(),
            "{lik:?}: {got} vs {want}"
        );
    }
}

/// On two threads the backward pass runs each layer's weight gradient and
/// input gradient at the same time, on separate parts of the workspace's
/// scratch; each product splits only rows and columns, never the inner
/// dimension, so every entry is the same sum in the same order as on one
/// thread: the gradients must agree bit for bit, at every layer (a swapped
/// error, layer or overlapping scratch would not), at the largest
/// minibatch and at a smaller one on the same workspace.
#[test]
fn gradients_on_two_threads_equal_one_thread_bit_for_bit() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let sizes = [70usize, 130, 97, 33, 61];
    let net = Mlp::new(
        &sizes,
        &[
            Activation::Sigmoid,
            Activation::Tanh,
            Activation::Relu,
            Activation::Identity,
        ],
        Likelihood::Bernoulli,
        Init::GlorotUniform,
        11,
    )
    .unwrap();
    let max_b = 211;
    let mut seq = Workspace::new(&net, max_b, Par::Seq).unwrap();
    let mut two = Workspace::new(&net, max_b, Par::rayon(2)).unwrap();
    for b in [max_b, 150] {
        let x = random(sizes[0] * b, 12 + b as u64, 1.0);
        let y = targets(Likelihood::Bernoulli, sizes[4], b, 13);
        let xm = MatRef::from_column_major_slice(&x, sizes[0], b);
        let ym = MatRef::from_column_major_slice(&y, sizes[4], b);
        let l1 = net.loss_and_gradient(&mut seq, xm, ym).unwrap();
        let l2 = pool.install(|| net.loss_and_gradient(&mut two, xm, ym).unwrap());
        assert_eq!(l1.to_bits(), l2.to_bits(), "b = {b}: loss");
        for (i, (g1, g2)) in seq.grads().iter().zip(two.grads()).enumerate() {
            assert!(
                g1.iter().any(|&g| g != 0.0),
                "b = {b}, layer {i}: zero gradient"
            );
            let same = g1.iter().zip(g2).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "b = {b}, layer {i}: gradients differ across threads");
        }
    }
}

/// SGD (plain, momentum, Nesterov) and Adam update each layer of more than
/// 32768 parameters in chunks on the pool's threads: after three steps on two
/// threads the weights must equal one thread's bit for bit (the gradients
/// do, see above; a chunk paired with another chunk's gradient or moments,
/// or a chunk left out, would not).
#[test]
fn updates_on_two_threads_equal_one_thread_bit_for_bit() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    // Layer 0 has 400 x 101 = 40400 parameters: two chunks, the second short.
    let sizes = [100usize, 400, 30];
    let net = Mlp::new(
        &sizes,
        &[Activation::Tanh, Activation::Identity],
        Likelihood::Gaussian,
        Init::GlorotUniform,
        21,
    )
    .unwrap();
    let b = 64;
    let x = random(sizes[0] * b, 22, 1.0);
    let y = random(sizes[2] * b, 23, 1.0);
    let xm = MatRef::from_column_major_slice(&x, sizes[0], b);
    let ym = MatRef::from_column_major_slice(&y, sizes[2], b);
    let sgd = |momentum, nesterov| SgdConfig {
        learning_rate: 0.05,
        momentum,
        nesterov,
        weight_decay: 1e-3,
    };
    let adam = AdamConfig {
        weight_decay: 1e-3,
        ..AdamConfig::default()
    };
    type Build = Box<dyn Fn(&Mlp) -> Box<dyn Optimizer>>;
    let builds: [(&str, Build); 4] = [
        (
            "sgd",
            Box::new(move |n| Box::new(Sgd::new(n, sgd(0.0, false)).unwrap())),
        ),
        (
            "momentum",
            Box::new(move |n| Box::new(Sgd::new(n, sgd(0.9, false)).unwrap())),
        ),
        (
            "nesterov",
            Box::new(move |n| Box::new(Sgd::new(n, sgd(0.9, true)).unwrap())),
        ),
        (
            "adam",
            Box::new(move |n| Box::new(Adam::new(n, adam).unwrap())),
        ),
    ];
    for (name, build) in &builds {
        let mut nets = Vec::new();
        for par in [Par::Seq, Par::rayon(2)] {
            let mut net = net.clone();
            let mut opt = build(&net);
            let mut ws = Workspace::new(&net, b, par).unwrap();
            pool.install(|| {
                for _ in 0..3 {
                    opt.step(&mut net, &mut ws, xm, ym).unwrap();
                }
            });
            nets.push(net);
        }
        let moved = nets[0].params().zip(net.params()).any(|(a, b)| a != b);
        assert!(moved, "{name}: the weights did not move");
        for (i, (w1, w2)) in nets[0].params().zip(nets[1].params()).enumerate() {
            let same = w1.iter().zip(w2).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{name}, layer {i}: weights differ across threads");
        }
    }
}

/// Central differences in f64 would need an f64 network; in f32 the truncation
/// error is O(h^2 f''') and the rounding error O(u |L| / h). With h = 1e-2 and
/// losses of order 1-10 both are ~1e-4 relative; we require the directional
/// derivative along a random direction to agree to 2% of its scale, which a
/// wrong factor, sign or missing term (all O(1) relative) cannot meet.
#[test]
fn gradient_matches_finite_differences_for_every_activation_and_likelihood() {
    let acts = [
        Activation::Identity,
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::Relu,
    ];
    let liks = [
        Likelihood::Gaussian,
        Likelihood::Bernoulli,
        Likelihood::Categorical,
    ];
    let (sizes, b) = ([5usize, 7, 6, 4], 9usize);
    for (ai, &act) in acts.iter().enumerate() {
        for (li, &lik) in liks.iter().enumerate() {
            let seed = (ai * 10 + li) as u64;
            let mut net = Mlp::new(
                &sizes,
                &[act, act, Activation::Identity],
                lik,
                Init::ScaledGaussian { gain: 1.0 },
                seed,
            )
            .unwrap();
            // Non-zero biases so relu kinks and bias gradients are exercised.
            for p in net.params_mut() {
                let r = random(p.len(), seed + 100, 0.3);
                p.iter_mut().zip(r).for_each(|(w, r)| *w += r);
            }
            let x = random(sizes[0] * b, seed + 1, 1.0);
            let y = targets(lik, sizes[3], b, seed + 2);
            let xm = MatRef::from_column_major_slice(&x, sizes[0], b);
            let ym = MatRef::from_column_major_slice(&y, sizes[3], b);
            let mut ws = Workspace::new(&net, b, Par::Seq).unwrap();
            net.loss_and_gradient(&mut ws, xm, ym).unwrap();
            let grads: Vec<Vec<f32>> = ws.grads().to_vec();
            let dirs: Vec<Vec<f32>> = grads
                .iter()
                .enumerate()
                .map(|(i, g)| random(g.len(), seed + 50 + i as u64, 1.0))
                .collect();
            let analytic: f64 = grads
                .iter()
                .zip(&dirs)
                .map(|(g, d)| {
                    g.iter()
                        .zip(d)
                        .map(|(&g, &d)| g as f64 * d as f64)
                        .sum::<f64>()
                })
                .sum();
            let h = 1e-2f32;
            // Loss of the network moved by s*h along the direction, and the
            // pattern of zero activations (the relu kinks it sits on).
            let shifted = |sign: f32, h: f32| {
                let mut n2 = net.clone();
                for (p, d) in n2.params_mut().zip(&dirs) {
                    p.iter_mut().zip(d).for_each(|(w, &d)| *w += sign * h * d);
                }
                let mut ws2 = Workspace::new(&n2, b, Par::Seq).unwrap();
                n2.forward(&mut ws2, xm).unwrap();
                let zeros: Vec<bool> = (1..sizes.len() - 1)
                    .flat_map(|i| {
                        let a = ws2.activations(i).unwrap();
                        (0..b)
                            .flat_map(move |j| (0..a.nrows()).map(move |r| a[(r, j)] == 0.0))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                (n2.loss(&mut ws2, ym, false).unwrap(), zeros)
            };
            // relu is only piecewise smooth: the difference quotient is valid only
            // if no unit crosses its kink between the two evaluations, so shrink h
            // until the zero patterns agree (rounding error grows as u |L| / h,
            // still < 1% at h = 1e-5 for these losses).
            let mut h = h;
            let (lp, lm) = loop {
                let ((lp, zp), (lm, zm)) = (shifted(1.0, h), shifted(-1.0, h));
                if zp == zm || h < 1e-5 {
                    break (lp, lm);
                }
                h /= 4.0;
            };
            let numeric = (lp - lm) / (2.0 * h as f64);
            let scale = analytic.abs().max(numeric.abs()).max(1e-3);
            assert!(
                (analytic - numeric).abs() <= 0.02 * scale,
                "{act:?}/{lik:?}: analytic {analytic}, numeric {numeric}"
            );
        }
    }
}

fn toy_problem() -> (Mlp, Vec<f32>, usize) {
    let net = Mlp::new(
        &[12, 8, 3, 8, 12],
        &[
            Activation::Tanh,
            Activation::Identity,
            Activation::Tanh,
            Activation::Identity,
        ],
        Likelihood::Gaussian,
        Init::GlorotUniform,
        3,
    )
    .unwrap();
    // Data on a 3-dimensional subspace: an autoencoder with a 3-unit code can fit it.
    let b = 64;
    let z = random(3 * b, 7, 1.0);
    let mix = random(12 * 3, 8, 0.6);
    let mut x = vec![0.0; 12 * b];
    for j in 0..b {
        for i in 0..12 {
            x[j * 12 + i] = (0..3).map(|k| mix[k * 12 + i] * z[j * 3 + k]).sum();
        }
    }
    (net, x, b)
}

fn train(opt: &mut dyn Optimizer, steps: usize) -> (f64, f64) {
    let (mut net, x, b) = toy_problem();
    let mut ws = Workspace::new(&net, b, Par::Seq).unwrap();
    let xm = MatRef::from_column_major_slice(&x, 12, b);
    let first = opt.step(&mut net, &mut ws, xm, xm).unwrap().loss;
    let mut last = first;
    for _ in 0..steps {
        last = opt.step(&mut net, &mut ws, xm, xm).unwrap().loss;
    }
    (first, last)
}

#[test]
fn every_optimizer_reduces_the_loss_on_a_small_autoencoder() {
    let (net, _, b) = toy_problem();
    let mut sgd = Sgd::new(
        &net,
        SgdConfig {
            learning_rate: 0.05,
            momentum: 0.9,
            ..Default::default()
        },
    )
    .unwrap();
    let mut adam = Adam::new(
        &net,
        AdamConfig {
            learning_rate: 1e-2,
            ..Default::default()
        },
    )
    .unwrap();
    let mut ng = NaturalGradient::new(&net, b, NaturalGradientConfig::default()).unwrap();
    for (opt, want) in [
        (&mut sgd as &mut dyn Optimizer, 0.5),
        (&mut adam, 0.5),
        (&mut ng, 0.5),
    ] {
        let name = opt.name();
        let (first, last) = train(opt, 200);
        assert!(last < want * first, "{name}: loss {first} -> {last}");
    }
}

#[test]
fn natural_gradient_options_all_descend() {
    use natgrad::optim::{DampingAdaptation, FactorUpdate, Preconditioning};
    let (net, _, b) = toy_problem();
    let variants = [
        NaturalGradientConfig {
            factor_decay: 0.95,
            refresh_interval: 5,
            ..Default::default()
        },
        NaturalGradientConfig {
            factor_decay: 0.95,
            refresh_interval: 5,
            factor_update: FactorUpdate::RankUpdate,
            ..Default::default()
        },
        NaturalGradientConfig {
            factor_decay: 0.95,
            refresh_interval: 5,
            statistics_interval: 5,
            ..Default::default()
        },
        NaturalGradientConfig {
            preconditioning: Preconditioning::Full,
            ..Default::default()
        },
        NaturalGradientConfig {
            preconditioning: Preconditioning::LowRank,
            samples: 3,
            ..Default::default()
        },
        NaturalGradientConfig {
            adaptation: DampingAdaptation::Fixed,
            damping: 0.1,
            ..Default::default()
        },
        NaturalGradientConfig {
            damping_check_fraction: 0.25,
            ..Default::default()
        },
        NaturalGradientConfig {
            exact_output_factor: true,
            factor_decay: 0.95,
            refresh_interval: 5,
            factor_update: FactorUpdate::RankUpdate,
            ..Default::default()
        },
    ];
    for cfg in variants {
        let mut ng = NaturalGradient::new(&net, b, cfg).unwrap();
        let (first, last) = train(&mut ng, 150);
        assert!(last < 0.5 * first, "{cfg:?}: loss {first} -> {last}");
    }
}

/// Each layer's last update, column-major.
fn last_updates(ng: &NaturalGradient, layers: usize) -> Vec<Vec<f32>> {
    (0..layers)
        .map(|i| {
            let d = ng.last_update(i);
            (0..d.ncols())
                .flat_map(|j| (0..d.nrows()).map(move |r| d[(r, j)]))
                .collect()
        })
        .collect()
}

/// Asserts that two sets of per-layer updates agree entry by entry within
/// `rel` times the largest entry of each layer's first update, which must not
/// be all zero. `what` names the comparison in the messages.
fn assert_updates_agree(first: &[Vec<f32>], second: &[Vec<f32>], rel: f32, what: &str) {
    for (l, (a, b)) in first.iter().zip(second).enumerate() {
        let scale = a.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
        assert!(scale > 0.0, "{what}, layer {l}: no update");
        for (p, q) in a.iter().zip(b) {
            assert!(
                (p - q).abs() <= rel * scale,
                "{what}, layer {l}: {p} vs {q}"
            );
        }
    }
}

#[test]
fn low_rank_and_full_preconditioning_agree() {
    use natgrad::optim::Preconditioning;
    let (net, x, b) = toy_problem();
    let xm = MatRef::from_column_major_slice(&x, 12, b);
    let mut deltas = Vec::new();
    for mode in [Preconditioning::LowRank, Preconditioning::Full] {
        let mut n2 = net.clone();
        let mut ws = Workspace::new(&n2, b, Par::Seq).unwrap();
        let cfg = NaturalGradientConfig {
            preconditioning: mode,
            adaptation: natgrad::optim::DampingAdaptation::Fixed,
            ..Default::default()
        };
        let mut ng = NaturalGradient::new(&n2, b, cfg).unwrap();
        ng.step(&mut n2, &mut ws, xm, xm).unwrap();
        deltas.push(last_updates(&ng, n2.num_layers()));
    }
    // Both are two f32 solves with condition <= (1 + max eig) / sqrt(g) ~ 1e2 here.
    assert_updates_agree(&deltas[0], &deltas[1], 1e-3, "low rank vs full");
}

/// An L2 penalty joins the gradient before it is preconditioned, whatever form
/// `Auto` picks: on a minibatch narrower than the layers (where without the
/// penalty `Auto` takes the low-rank form, which has no room for `wd W`) the
/// update equals the full form's, and differs from the unpenalised one by far
/// more than the tolerance. The low-rank and Gram forms are refused with a
/// penalty.
#[test]
fn weight_decay_is_preconditioned_in_every_form() {
    use natgrad::optim::{DampingAdaptation, Preconditioning};
    let (net, x, _) = toy_problem();
    let b = 4;
    let xm = MatRef::from_column_major_slice(&x[..12 * b], 12, b);
    let update = |mode: Preconditioning, wd: f32| {
        let mut n2 = net.clone();
        let mut ws = Workspace::new(&n2, b, Par::Seq).unwrap();
        let cfg = NaturalGradientConfig {
            preconditioning: mode,
            weight_decay: wd,
            damping: 0.1,
            adaptation: DampingAdaptation::Fixed,
            ..Default::default()
        };
        let mut ng = NaturalGradient::new(&n2, b, cfg).unwrap();
        ng.step(&mut n2, &mut ws, xm, xm).unwrap();
        last_updates(&ng, n2.num_layers())
    };
    let wd = 0.5;
    let auto = update(Preconditioning::Auto, wd);
    assert_updates_agree(
        &auto,
        &update(Preconditioning::Full, wd),
        1e-3,
        "Auto vs full with a penalty",
    );
    // Without the penalty the update differs by much more than that tolerance.
    let plain = update(Preconditioning::Auto, 0.0);
    let gap = auto
        .iter()
        .flatten()
        .zip(plain.iter().flatten())
        .map(|(p, q)| (p - q).abs())
        .fold(0.0f32, f32::max);
    let scale = auto
        .iter()
        .flatten()
        .map(|v| v.abs())
        .fold(0.0f32, f32::max);
    assert!(
        gap > 0.05 * scale,
        "the penalty moved the update by only {gap} (scale {scale})"
    );
    for mode in [Preconditioning::LowRank, Preconditioning::Gram] {
        let cfg = NaturalGradientConfig {
            preconditioning: mode,
            weight_decay: wd,
            ..Default::default()
        };
        assert!(
            matches!(
                NaturalGradient::new(&net, b, cfg),
                Err(natgrad::Error::InvalidConfig(_))
            ),
            "{mode:?} with a penalty must be refused"
        );
    }
}

/// Explicit inverses formed at a refresh and applied by GEMM give the same
/// updates as the triangular solves, at the refresh step and at the steps
/// between refreshes that reuse them, in the low-rank and the full form, with
/// the output layer's backward factor sampled or exact (a diagonal side that
/// is never inverted explicitly).
#[test]
fn explicit_inverses_agree_with_solves() {
    use natgrad::optim::{InverseApplication, Preconditioning};
    let (net, x, b) = toy_problem();
    let xm = MatRef::from_column_major_slice(&x, 12, b);
    for mode in [Preconditioning::LowRank, Preconditioning::Full] {
        for exact_output_factor in [false, true] {
            let mut runs = Vec::new();
            for inverse in [InverseApplication::Solves, InverseApplication::Explicit] {
                let mut n2 = net.clone();
                let mut ws = Workspace::new(&n2, b, Par::Seq).unwrap();
                let cfg = NaturalGradientConfig {
                    preconditioning: mode,
                    inverse,
                    exact_output_factor,
                    factor_decay: 0.9,
                    refresh_interval: 3,
                    damping: 0.1,
                    adaptation: natgrad::optim::DampingAdaptation::Fixed,
                    ..Default::default()
                };
                let mut ng = NaturalGradient::new(&n2, b, cfg).unwrap();
                let mut steps = Vec::new();
                for _ in 0..4 {
                    ng.step(&mut n2, &mut ws, xm, xm).unwrap();
                    steps.push(last_updates(&ng, n2.num_layers()));
                }
                runs.push(steps);
            }
            for (k, (solved, explicit)) in runs[0].iter().zip(&runs[1]).enumerate() {
                // The damped factors' condition is at most (1 + max eig) / sqrt(g) ~ 1e2:
                // both forms lose about n u kappa ~ 1e-4 of the largest entries.
                assert_updates_agree(
                    solved,
                    explicit,
                    1e-3,
                    &format!(
                        "{mode:?}, exact output {exact_output_factor}, step {}",
                        k + 1
                    ),
                );
            }
        }
    }
}

/// The Gram form (push-through on the forward side, Woodbury on the backward
/// side) computes the same update as the low-rank solves with the `n x n`
/// factors, at a minibatch smaller than most layers (b = 6 against widths
/// 3..13, so some sides take the Gram form and some do not), with and without
/// the pi split of the damping.
#[test]
fn gram_preconditioning_agrees_with_low_rank() {
    use natgrad::optim::Preconditioning;
    let (net, x, _) = toy_problem();
    let b = 6;
    let xm = MatRef::from_column_major_slice(&x[..12 * b], 12, b);
    for (damping, pi_correction) in [(1.0, false), (0.1, true)] {
        let mut deltas = Vec::new();
        for mode in [Preconditioning::LowRank, Preconditioning::Gram] {
            let mut n2 = net.clone();
            let mut ws = Workspace::new(&n2, b, Par::Seq).unwrap();
            let cfg = NaturalGradientConfig {
                preconditioning: mode,
                adaptation: natgrad::optim::DampingAdaptation::Fixed,
                damping,
                pi_correction,
                // The Gram form uses the sampled output errors themselves.
                wishart_output_factor: false,
                ..Default::default()
            };
            let mut ng = NaturalGradient::new(&n2, b, cfg).unwrap();
            // Two steps: the second starts from weights the first has moved.
            ng.step(&mut n2, &mut ws, xm, xm).unwrap();
            ng.step(&mut n2, &mut ws, xm, xm).unwrap();
            deltas.push(last_updates(&ng, n2.num_layers()));
        }
        // Both sides are f32 solves against matrices with eigenvalues in
        // [d, d + lambda_max], lambda_max <= 10 here, so each loses about
        // u (1 + lambda_max / d) <= 1e2 u relative to the largest entry, with
        // d = sqrt(damping) >= 0.3; 1e-4 leaves room for the sums over b, n
        // and the second step's different weights.
        assert_updates_agree(
            &deltas[0],
            &deltas[1],
            1e-4,
            &format!("low rank vs Gram (damping {damping}, pi {pi_correction})"),
        );
    }
}

/// The Levenberg-Marquardt check on a fraction of the minibatch decides from
/// the loss change on the minibatch's first `ceil(f b)` columns against the
/// change predicted from the whole minibatch's gradient. Recomputed here step
/// by step from outside the optimizer (the network before and after the step,
/// the gradient, the update), for fractions 1/4 and 1; a check that read other
/// columns, or compared the subset's loss after the step with the whole
/// minibatch's before it, takes other decisions.
#[test]
fn damping_check_on_a_fraction_of_the_minibatch() {
    let (net, x, b) = toy_problem();
    let xm = MatRef::from_column_major_slice(&x, 12, b);
    // With an L2 penalty the model's gradient is g + wd theta and the actual
    // change includes the penalty's change.
    for (fraction, wd) in [(0.25f32, 0.0f32), (1.0, 0.0), (0.25, 0.05)] {
        let c = (fraction as f64 * b as f64).ceil() as usize;
        let mut n2 = net.clone();
        let mut ws = Workspace::new(&n2, b, Par::Seq).unwrap();
        // A small initial damping, so that early steps overshoot (raises) and
        // later ones fit the model (lowerings).
        let cfg = NaturalGradientConfig {
            damping_check_fraction: fraction,
            damping: 1e-4,
            weight_decay: wd,
            ..Default::default()
        };
        let mut ng = NaturalGradient::new(&n2, b, cfg).unwrap();
        let eta = cfg.learning_rate / n2.num_layers() as f32;
        let loss_on_first_cols = |m: &Mlp| -> f64 {
            let mut w = Workspace::new(m, c, Par::Seq).unwrap();
            let (xs, ys) = (xm.subcols(0, c), xm.subcols(0, c));
            m.forward(&mut w, xs).unwrap();
            let penalty: f64 = m
                .params()
                .flat_map(|p| p.iter())
                .map(|&v| 0.5 * wd as f64 * v as f64 * v as f64)
                .sum();
            m.loss(&mut w, ys, false).unwrap() + penalty
        };
        let data_loss_on_first_cols = |m: &Mlp| -> f64 {
            let mut w = Workspace::new(m, c, Par::Seq).unwrap();
            m.forward(&mut w, xm.subcols(0, c)).unwrap();
            m.loss(&mut w, xm.subcols(0, c), false).unwrap()
        };
        let (mut raised, mut lowered) = (0, 0);
        for k in 0..40 {
            let before = n2.clone();
            let old = ng.damping();
            ng.step(&mut n2, &mut ws, xm, xm).unwrap();
            // The step as proposed: a data loss on the checked columns that
            // more than doubles takes it back (weights restored up to the
            // rounding of (w + d) - d) and damps tenfold.
            let mut proposed = before.clone();
            let updates = last_updates(&ng, n2.num_layers());
            for (w, d) in proposed.params_mut().zip(&updates) {
                w.iter_mut().zip(d).for_each(|(w, d)| *w += d);
            }
            let (l0, l1) = (
                data_loss_on_first_cols(&before),
                data_loss_on_first_cols(&proposed),
            );
            if (l1 - l0 - l0.abs()).abs() < 1e-6 * l0.abs() {
                continue;
            }
            if l1 - l0 > l0.abs() {
                raised += 1;
                let want = (old * 10.0).min(cfg.damping_bounds.1);
                assert!((ng.damping() - want).abs() <= 1e-6 * want, "step {k}");
                for ((w, w0), d) in n2.params().zip(before.params()).zip(&updates) {
                    for ((&w, &w0), &d) in w.iter().zip(w0).zip(d) {
                        let bound = f32::EPSILON * (2.0 * w0.abs() + d.abs());
                        assert!((w - w0).abs() <= bound, "step {k}: {w} vs {w0} (d {d})");
                    }
                }
                continue;
            }
            let mut wg = Workspace::new(&before, b, Par::Seq).unwrap();
            before.loss_and_gradient(&mut wg, xm, xm).unwrap();
            let gdd: f64 = last_updates(&ng, n2.num_layers())
                .iter()
                .zip(wg.grads())
                .zip(before.params())
                .map(|((d, g), w)| {
                    d.iter()
                        .zip(g)
                        .zip(w)
                        .map(|((&d, &g), &w)| d as f64 * (g + wd * w) as f64)
                        .sum::<f64>()
                })
                .sum();
            let predicted = gdd * (1.0 - eta as f64 / 2.0);
            let ratio = (loss_on_first_cols(&n2) - loss_on_first_cols(&before)) / predicted;
            // Rounding can tip a ratio this close to a threshold either way.
            if (ratio - 0.25).abs() < 1e-3 || (ratio - 0.75).abs() < 1e-3 {
                continue;
            }
            let want = if predicted >= 0.0 || ratio < 0.25 {
                raised += 1;
                old * 1.5
            } else if ratio > 0.75 {
                lowered += 1;
                old * (2.0 / 3.0)
            } else {
                old
            };
            let (lo, hi) = cfg.damping_bounds;
            let want = want.clamp(lo, hi);
            let got = ng.damping();
            assert!(
                (got - want).abs() <= 1e-6 * want,
                "fraction {fraction}, wd {wd}, step {k}: damping {got}, expected {want} (ratio {ratio})"
            );
        }
        assert!(
            raised > 0 && lowered > 0,
            "fraction {fraction}: {raised} raises, {lowered} lowerings; both branches must be exercised"
        );
    }
}

/// With the exact output factor the output layer's `G` is exactly `I` for a
/// Gaussian likelihood and `diag(mean p (1 - p))` for a Bernoulli one, which the
/// sampled estimate approaches with many samples; the full and low-rank forms
/// of the update, which apply that diagonal differently (to the gradient or to
/// the errors), agree.
#[test]
fn exact_output_factor_is_the_expectation_of_the_sampled_one() {
    use natgrad::optim::{DampingAdaptation, Preconditioning};
    for lik in [Likelihood::Gaussian, Likelihood::Bernoulli] {
        let net = Mlp::new(
            &[6, 5, 4],
            &[Activation::Tanh, Activation::Identity],
            lik,
            Init::GlorotUniform,
            5,
        )
        .unwrap();
        let b = 2000;
        let x = random(6 * b, 21, 1.0);
        let y = targets(lik, 4, b, 22);
        let xm = MatRef::from_column_major_slice(&x, 6, b);
        let ym = MatRef::from_column_major_slice(&y, 4, b);
        let factor_and_update = |exact: bool, samples: usize, mode: Preconditioning| {
            let mut n2 = net.clone();
            let mut ws = Workspace::new(&n2, b, Par::Seq).unwrap();
            let cfg = NaturalGradientConfig {
                exact_output_factor: exact,
                samples,
                preconditioning: mode,
                adaptation: DampingAdaptation::Fixed,
                ..Default::default()
            };
            let mut ng = NaturalGradient::new(&n2, b, cfg).unwrap();
            ng.step(&mut n2, &mut ws, xm, ym).unwrap();
            let g = ng.backward_factor(1);
            let g: Vec<f32> = (0..4)
                .flat_map(|j| (0..4).map(move |i| if i >= j { g[(i, j)] } else { g[(j, i)] }))
                .collect();
            (g, last_updates(&ng, 2))
        };
        let (exact, full) = factor_and_update(true, 1, Preconditioning::Full);
        let (_, low) = factor_and_update(true, 1, Preconditioning::LowRank);
        let (sampled, _) = factor_and_update(false, 16, Preconditioning::Auto);
        // Off the diagonal: exactly 0. On it: 1 (Gaussian), or a mean of
        // p (1 - p) in (0, 1/4] (Bernoulli).
        for j in 0..4 {
            for i in 0..4 {
                let v = exact[j * 4 + i];
                if i != j {
                    assert_eq!(v, 0.0, "{lik:?}: G({i},{j})");
                } else if lik == Likelihood::Gaussian {
                    assert_eq!(v, 1.0, "{lik:?}: G({i},{i})");
                } else {
                    assert!(v > 0.0 && v <= 0.25, "{lik:?}: G({i},{i}) = {v}");
                }
                // The sampled estimate from 16 x 2000 draws: each entry is a mean
                // of 32000 terms of variance at most 2 (Gaussian: e_i e_j with
                // unit normals; Bernoulli: at most 1/16), so its standard error
                // is below 0.008; 5 standard errors.
                let s = sampled[j * 4 + i];
                assert!(
                    (s - v).abs() <= 0.04,
                    "{lik:?}: G({i},{j}) sampled {s} vs exact {v}"
                );
            }
        }
        // As in low_rank_and_full_preconditioning_agree.
        assert_updates_agree(&full, &low, 1e-3, &format!("{lik:?}, full vs low rank"));
    }
}

/// With a Gaussian likelihood the output layer's `G` sample (drawn as a
/// Wishart matrix by default) and the penultimate layer's (its errors drawn
/// directly from `N(0, W_L^T W_L)` and scaled by `phi'`) have the
/// expectations of the sampled-error estimates: `I` and the minibatch mean of
/// `D_j W_L^T W_L D_j`, `D_j = diag(phi'(a_j))`, formed here in f64 from a
/// forward pass of our own. Checked with the default and with
/// `wishart_output_factor: false` (the errors back-propagated from sampled
/// output errors), each entry within 5 standard errors of 16 x 2000 terms
/// (a product of two Gaussians has variance at most `3 s_i s_k`).
#[test]
fn gaussian_output_draws_have_the_sampled_expectations() {
    use natgrad::optim::DampingAdaptation;
    let net = Mlp::new(
        &[6, 5, 4, 8],
        &[Activation::Tanh, Activation::Tanh, Activation::Identity],
        Likelihood::Gaussian,
        Init::GlorotUniform,
        9,
    )
    .unwrap();
    let b = 2000;
    let samples = 16;
    let x = random(6 * b, 31, 1.0);
    let xm = MatRef::from_column_major_slice(&x, 6, b);
    let y = random(8 * b, 32, 1.0);
    let ym = MatRef::from_column_major_slice(&y, 8, b);
    // a_2, the penultimate layer's outputs, in f64.
    let layer = |i: usize, a: &[f64], n_in: usize| -> Vec<f64> {
        let l = &net.layers()[i];
        let (w, bias) = (l.weights(), l.bias());
        let mut out = vec![0.0f64; l.n_out * b];
        for j in 0..b {
            for r in 0..l.n_out {
                let s: f64 = (0..n_in).map(|c| w[(r, c)] as f64 * a[j * n_in + c]).sum();
                out[j * l.n_out + r] = (s + bias[r] as f64).tanh();
            }
        }
        out
    };
    let a0: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let a1 = layer(0, &a0, 6);
    let a2 = layer(1, &a1, 5);
    let w = net.layers()[2].weights();
    let wtw =
        |i: usize, k: usize| -> f64 { (0..8).map(|r| w[(r, i)] as f64 * w[(r, k)] as f64).sum() };
    let mut want = [[0.0f64; 4]; 4];
    for j in 0..b {
        let d = |i: usize| 1.0 - a2[j * 4 + i] * a2[j * 4 + i];
        for (i, row) in want.iter_mut().enumerate() {
            for (k, v) in row.iter_mut().enumerate() {
                *v += d(i) * wtw(i, k) * d(k) / b as f64;
            }
        }
    }
    for wishart in [true, false] {
        let mut n2 = net.clone();
        let mut ws = Workspace::new(&n2, b, Par::rayon(2)).unwrap();
        let cfg = NaturalGradientConfig {
            samples,
            wishart_output_factor: wishart,
            adaptation: DampingAdaptation::Fixed,
            ..Default::default()
        };
        let mut ng = NaturalGradient::new(&n2, b, cfg).unwrap();
        ng.step(&mut n2, &mut ws, xm, ym).unwrap();
        let terms = (samples * b) as f64;
        let g_out = ng.backward_factor(2);
        for k in 0..8 {
            for i in k..8 {
                let want = if i == k { 1.0 } else { 0.0 };
                let se = (3.0 / terms).sqrt();
                let got = g_out[(i, k)] as f64;
                assert!(
                    (got - want).abs() <= 5.0 * se,
                    "wishart {wishart}: G_out({i},{k}) = {got}"
                );
            }
        }
        let g = ng.backward_factor(1);
        for k in 0..4 {
            for i in k..4 {
                let se = (3.0 * wtw(i, i) * wtw(k, k) / terms).sqrt();
                let got = g[(i, k)] as f64;
                assert!(
                    (got - want[i][k]).abs() <= 5.0 * se,
                    "wishart {wishart}: G_1({i},{k}) = {got}, want {}",
                    want[i][k]
                );
            }
        }
    }
}

/// With `statistics_interval = 3` the factors change on steps 1, 4, 7 only
/// (bit for bit unchanged in between), while the weights move every step; with
/// the default they change every step.
#[test]
fn factors_change_only_on_statistics_steps() {
    let (net0, x, b) = toy_problem();
    let xm = MatRef::from_column_major_slice(&x, 12, b);
    let snapshot = |ng: &NaturalGradient| -> Vec<f32> {
        (0..net0.num_layers())
            .flat_map(|i| {
                let (a, g) = (ng.forward_factor(i), ng.backward_factor(i));
                let a: Vec<f32> = (0..a.ncols())
                    .flat_map(|j| (j..a.nrows()).map(move |r| a[(r, j)]))
                    .collect();
                let g: Vec<f32> = (0..g.ncols())
                    .flat_map(|j| (j..g.nrows()).map(move |r| g[(r, j)]))
                    .collect();
                a.into_iter().chain(g)
            })
            .collect()
    };
    for interval in [1usize, 3] {
        let mut net = net0.clone();
        let mut ws = Workspace::new(&net, b, Par::Seq).unwrap();
        let cfg = NaturalGradientConfig {
            factor_decay: 0.9,
            refresh_interval: 3,
            statistics_interval: interval,
            ..Default::default()
        };
        let mut ng = NaturalGradient::new(&net, b, cfg).unwrap();
        let mut before = snapshot(&ng);
        for step in 1..=7 {
            let w_before: Vec<f32> = net.params_mut().flat_map(|w| w.to_vec()).collect();
            ng.step(&mut net, &mut ws, xm, xm).unwrap();
            let w_after: Vec<f32> = net.params_mut().flat_map(|w| w.to_vec()).collect();
            assert_ne!(
                w_before, w_after,
                "interval {interval}, step {step}: weights did not move"
            );
            let after = snapshot(&ng);
            let stats_step = (step - 1) % interval == 0;
            assert_eq!(
                after != before,
                stats_step,
                "interval {interval}, step {step}: factors changed = {}",
                after != before
            );
            before = after;
        }
    }
}

#[test]
fn bad_minibatches_are_refused_and_leave_everything_untouched() {
    let (net0, x, b) = toy_problem();
    let mut bad = x.clone();
    bad[17] = f32::NAN;
    let mut inf = x.clone();
    inf[3] = f32::INFINITY;
    let opts: Vec<Box<dyn Optimizer>> = vec![
        Box::new(
            Sgd::new(
                &net0,
                SgdConfig {
                    momentum: 0.9,
                    ..Default::default()
                },
            )
            .unwrap(),
        ),
        Box::new(Adam::new(&net0, AdamConfig::default()).unwrap()),
        Box::new(NaturalGradient::new(&net0, b, NaturalGradientConfig::default()).unwrap()),
    ];
    for mut opt in opts {
        let mut net = net0.clone();
        let mut ws = Workspace::new(&net, b, Par::Seq).unwrap();
        let xm = MatRef::from_column_major_slice(&x, 12, b);
        opt.step(&mut net, &mut ws, xm, xm).unwrap();
        let before = net.clone();
        for data in [&bad, &inf] {
            let bm = MatRef::from_column_major_slice(data, 12, b);
            let err = opt.step(&mut net, &mut ws, bm, xm).unwrap_err();
            assert!(matches!(err, Error::NonFinite(_)), "{}: {err}", opt.name());
            let err = opt.step(&mut net, &mut ws, xm, bm).unwrap_err();
            assert!(matches!(err, Error::NonFinite(_)), "{}: {err}", opt.name());
            assert_eq!(net, before, "{}: weights changed", opt.name());
        }
        // Wrong shapes and empty batches.
        let short = MatRef::from_column_major_slice(&x[..11 * b], 11, b);
        assert!(matches!(
            opt.step(&mut net, &mut ws, short, xm),
            Err(Error::Shape(_))
        ));
        let empty = MatRef::from_column_major_slice(&x[..0], 12, 0);
        assert!(matches!(
            opt.step(&mut net, &mut ws, empty, empty),
            Err(Error::Shape(_))
        ));
        assert_eq!(net, before, "{}: weights changed", opt.name());
        // The optimizer continues exactly as if the bad steps never happened:
        // compare with a twin that never saw them.
        let mut twin_net = net0.clone();
        let mut twin: Box<dyn Optimizer> = match opt.name() {
            "sgd" => Box::new(
                Sgd::new(
                    &net0,
                    SgdConfig {
                        momentum: 0.9,
                        ..Default::default()
                    },
                )
                .unwrap(),
            ),
            "adam" => Box::new(Adam::new(&net0, AdamConfig::default()).unwrap()),
            _ => {
                Box::new(NaturalGradient::new(&net0, b, NaturalGradientConfig::default()).unwrap())
            }
        };
        let mut ws2 = Workspace::new(&twin_net, b, Par::Seq).unwrap();
        twin.step(&mut twin_net, &mut ws2, xm, xm).unwrap();
        twin.step(&mut twin_net, &mut ws2, xm, xm).unwrap();
        opt.step(&mut net, &mut ws, xm, xm).unwrap();
        assert_eq!(
            net,
            twin_net,
            "{}: state was disturbed by refused steps",
            opt.name()
        );
    }
}

#[test]
fn invalid_configurations_are_refused() {
    let (net, _, b) = toy_problem();
    for lr in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            Sgd::new(
                &net,
                SgdConfig {
                    learning_rate: lr,
                    ..Default::default()
                }
            ),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            Adam::new(
                &net,
                AdamConfig {
                    learning_rate: lr,
                    ..Default::default()
                }
            ),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            NaturalGradient::new(
                &net,
                b,
                NaturalGradientConfig {
                    learning_rate: lr,
                    ..Default::default()
                }
            ),
            Err(Error::InvalidConfig(_))
        ));
    }
    for g in [0.0, -1.0, f32::NAN] {
        assert!(matches!(
            NaturalGradient::new(
                &net,
                b,
                NaturalGradientConfig {
                    damping: g,
                    ..Default::default()
                }
            ),
            Err(Error::InvalidConfig(_))
        ));
    }
    assert!(matches!(
        NaturalGradient::new(
            &net,
            b,
            NaturalGradientConfig {
                factor_decay: 1.0,
                ..Default::default()
            }
        ),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        NaturalGradient::new(&net, 0, NaturalGradientConfig::default()),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        Workspace::new(&net, 0, Par::Seq),
        Err(Error::InvalidConfig(_))
    ));
}

/// In a deep linear Gaussian network the online factors are exact in
/// expectation (docs/math.md section 2.1): `A_i = W_{<i} C W_{<i}^T` (plus the bias
/// row and column) and `G_i = W_{>i}^T W_{>i}`. `A` is computed from the same
/// minibatch as `C`, so it agrees to rounding; `G` is a Monte-Carlo estimate from
/// N = b * samples Gaussian draws, whose relative error is about sqrt(2 / N) per
/// entry of a unit-scale matrix (~0.3% here): 3% leaves a wide margin while a
/// wrong scale, a missing 1/b or a transposed product fail by O(1).
#[test]
fn online_factors_match_the_exact_deep_linear_factors() {
    let sizes = [6usize, 5, 4, 6];
    let acts = [Activation::Identity; 3];
    let mut net = Mlp::new(
        &sizes,
        &acts,
        Likelihood::Gaussian,
        Init::ScaledGaussian { gain: 1.0 },
        11,
    )
    .unwrap();
    let b = 4000;
    // Correlated zero-mean inputs.
    let z = random(6 * b, 12, 1.0);
    let mix = random(36, 13, 0.5);
    let mut x = vec![0.0f32; 6 * b];
    for j in 0..b {
        for i in 0..6 {
            x[j * 6 + i] =
                z[j * 6 + i] + (0..6).map(|k| mix[k * 6 + i] * z[j * 6 + k]).sum::<f32>();
        }
    }
    let xm = MatRef::from_column_major_slice(&x, 6, b);
    let weights: Vec<Vec<f64>> = net
        .layers()
        .iter()
        .map(|l| {
            let w = l.weights();
            (0..w.ncols())
                .flat_map(|j| (0..w.nrows()).map(move |i| w[(i, j)] as f64))
                .collect()
        })
        .collect();
    let cfg = NaturalGradientConfig {
        samples: 8,
        adaptation: natgrad::optim::DampingAdaptation::Fixed,
        ..Default::default()
    };
    let mut ng = NaturalGradient::new(&net, b, cfg).unwrap();
    let mut ws = Workspace::new(&net, b, Par::Seq).unwrap();
    ng.step(&mut net, &mut ws, xm, xm).unwrap();

    // Column-major products in f64.
    let matmul = |a: &[f64], b: &[f64], m: usize, k: usize, n: usize| -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for j in 0..n {
            for p in 0..k {
                for i in 0..m {
                    c[j * m + i] += a[p * m + i] * b[j * k + p];
                }
            }
        }
        c
    };
    let transpose = |a: &[f64], m: usize, n: usize| -> Vec<f64> {
        let mut t = vec![0.0; m * n];
        for j in 0..n {
            for i in 0..m {
                t[i * n + j] = a[j * m + i];
            }
        }
        t
    };
    let identity = |n: usize| -> Vec<f64> {
        (0..n * n)
            .map(|k| if k % (n + 1) == 0 { 1.0 } else { 0.0 })
            .collect()
    };
    let mut c = vec![0.0f64; 36];
    for j in 0..b {
        for p in 0..6 {
            for i in 0..6 {
                c[p * 6 + i] += x[j * 6 + i] as f64 * x[j * 6 + p] as f64 / b as f64;
            }
        }
    }

    for layer in 0..3 {
        // W_{<i}: product of the layers below (n_{i-1} x n_0).
        let mut below = identity(6);
        let mut rows = 6;
        for w in &weights[..layer] {
            let n_out = w.len() / rows;
            below = matmul(w, &below, n_out, rows, 6);
            rows = n_out;
        }
        let a_exact = matmul(
            &matmul(&below, &c, rows, 6, 6),
            &transpose(&below, rows, 6),
            rows,
            6,
            rows,
        );
        let a = ng.forward_factor(layer);
        let scale = a_exact.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for j in 0..rows {
            for i in j..rows {
                // f32 SYRK of b = 4000 terms against an f64 product: gamma_b-sized error.
                assert!(
                    (a[(i, j)] as f64 - a_exact[j * rows + i]).abs() <= 1e-3 * scale,
                    "A_{layer} ({i},{j})"
                );
            }
        }
        // W_{>i}: product of the layers above (n_L x n_i).
        let n_i = sizes[layer + 1];
        let mut above = identity(n_i);
        let mut cols_rows = n_i;
        for w in &weights[layer + 1..] {
            let n_out = w.len() / cols_rows;
            above = matmul(w, &above, n_out, cols_rows, n_i);
            cols_rows = n_out;
        }
        let g_exact = matmul(
            &transpose(&above, cols_rows, n_i),
            &above,
            n_i,
            cols_rows,
            n_i,
        );
        let g = ng.backward_factor(layer);
        let scale = g_exact.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for j in 0..n_i {
            for i in j..n_i {
                let (got, want) = (g[(i, j)] as f64, g_exact[j * n_i + i]);
                assert!(
                    (got - want).abs() <= 0.03 * scale,
                    "G_{layer} ({i},{j}): {got} vs {want}"
                );
            }
        }
    }
}

/// A step that more than doubles the loss it is checked on is taken back by
/// the Levenberg-Marquardt rule, and the damping grows tenfold: a learning
/// rate of 1000 with almost no damping overshoots on the first step.
#[test]
fn levenberg_marquardt_takes_back_a_step_that_blows_up() {
    let (mut net, x, b) = toy_problem();
    let mut ws = Workspace::new(&net, b, Par::Seq).unwrap();
    let xm = MatRef::from_column_major_slice(&x, 12, b);
    let before: Vec<Vec<f32>> = net.params().map(<[f32]>::to_vec).collect();
    let mut ng = NaturalGradient::new(
        &net,
        b,
        NaturalGradientConfig {
            learning_rate: 1000.0,
            damping: 1e-4,
            ..Default::default()
        },
    )
    .unwrap();
    let loss = ng.step(&mut net, &mut ws, xm, xm).unwrap().loss;
    assert!(
        (ng.damping() - 1e-3).abs() < 1e-9,
        "damping {}",
        ng.damping()
    );
    // Restored up to the rounding of (w + d) - d, which is at most
    // u (2 |w| + |d|) to first order (u = f32::EPSILON / 2).
    let updates = last_updates(&ng, net.num_layers());
    let mut moved = false;
    for ((w, w0), d) in net.params().zip(&before).zip(&updates) {
        for ((&w, &w0), &d) in w.iter().zip(w0).zip(d) {
            let bound = f32::EPSILON * (2.0 * w0.abs() + d.abs());
            assert!((w - w0).abs() <= bound, "{w} vs {w0} (d {d})");
            moved |= d.abs() > 1.0;
        }
    }
    // The step it took back was a large one.
    assert!(moved);
    // Training goes on from there and descends.
    let mut last = loss;
    for _ in 0..100 {
        last = ng.step(&mut net, &mut ws, xm, xm).unwrap().loss;
    }
    assert!(last < 0.5 * loss, "loss {loss} -> {last}");
}

/// `Par::Seq` keeps a whole step on the calling thread: with every worker of
/// rayon's global pool held busy, a sequential step of each optimizer still
/// finishes (a step that handed any part of its work to the pool would wait
/// for a worker until the blockers are released, after the deadline).
#[test]
fn sequential_steps_never_wait_for_the_rayon_pool() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    let workers = rayon::current_num_threads();
    let started = Arc::new(AtomicUsize::new(0));
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
    for _ in 0..workers {
        let (started, release_rx) = (started.clone(), release_rx.clone());
        rayon::spawn(move || {
            started.fetch_add(1, Ordering::SeqCst);
            let _ = release_rx.lock().unwrap().recv();
        });
    }
    while started.load(Ordering::SeqCst) < workers {
        std::thread::sleep(Duration::from_millis(1));
    }
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let sizes = [30, 40, 20, 30];
        let acts = [Activation::Tanh, Activation::Sigmoid, Activation::Identity];
        let mut net =
            Mlp::new(&sizes, &acts, Likelihood::Gaussian, Init::GlorotUniform, 3).unwrap();
        let b = 64;
        let x = random(30 * b, 5, 1.0);
        let x = MatRef::from_column_major_slice(&x, 30, b);
        let mut ws = Workspace::new(&net, b, Par::Seq).unwrap();
        let config = NaturalGradientConfig {
            weight_decay: 1e-3,
            ..NaturalGradientConfig::default()
        };
        let mut opts: Vec<Box<dyn Optimizer>> = vec![
            Box::new(NaturalGradient::new(&net, b, config).unwrap()),
            Box::new(Sgd::new(&net, SgdConfig::default()).unwrap()),
            Box::new(Adam::new(&net, AdamConfig::default()).unwrap()),
        ];
        for opt in &mut opts {
            for _ in 0..3 {
                opt.step(&mut net, &mut ws, x, x).unwrap();
            }
        }
        let _ = done_tx.send(());
    });
    let finished = done_rx.recv_timeout(Duration::from_secs(30)).is_ok();
    for _ in 0..workers {
        let _ = release_tx.send(());
    }
    assert!(finished, "a Par::Seq step waited for rayon's busy pool");
}
