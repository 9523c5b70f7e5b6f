//! One test per row of the bad-input table in `src/robustness.rs`: every
//! argument a caller can get wrong gets a typed error, and a refused training
//! step leaves the weights and the optimizer's state bit for bit as they were.

use natgrad::checkpoint::{self, Checkpoint};
use natgrad::kernels::cholesky::{
    cholesky_in_place, cholesky_rank_update, cholesky_scratch, cholesky_update_scratch,
};
use natgrad::kernels::gemm::{gemm, gemm_fused, gemm_scratch, Epilogue};
use natgrad::kernels::rng::Rng;
use natgrad::kernels::syrk::{syrk_lower, syrk_scratch};
use natgrad::kernels::trsm::{solve_llt_left_in_place, solve_llt_right_in_place, solve_scratch};
use natgrad::kernels::{self, Activation, MatMut, MatRef, MemBuffer, MemStack, Par};
use natgrad::mlp::{Init, Layer, Likelihood, Mlp};
use natgrad::optim::{
    fisher, Adam, AdamConfig, DampingAdaptation, FactorUpdate, NaturalGradient,
    NaturalGradientConfig, Optimizer, OptimizerState, Preconditioning, Sgd, SgdConfig,
};
use natgrad::workspace::Workspace;
use natgrad::Error;
use std::path::Path;

const SIZES: [usize; 4] = [6, 5, 3, 6];
const B: usize = 8;

fn net() -> Mlp {
    Mlp::new(
        &SIZES,
        &[Activation::Tanh, Activation::Tanh, Activation::Identity],
        Likelihood::Gaussian,
        Init::GlorotUniform,
        4,
    )
    .unwrap()
}

fn data(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0.0; rows * cols];
    Rng::new(seed).fill_normal(&mut v);
    v
}

/// Every optimizer in a configuration with state to disturb, each already
/// one step into training (so moments, factors and counters are non-trivial).
fn trained_optimizers(net: &mut Mlp, ws: &mut Workspace) -> Vec<Box<dyn Optimizer>> {
    let mut opts: Vec<Box<dyn Optimizer>> = vec![
        Box::new(
            Sgd::new(
                net,
                SgdConfig {
                    momentum: 0.9,
                    ..SgdConfig::default()
                },
            )
            .unwrap(),
        ),
        Box::new(Adam::new(net, AdamConfig::default()).unwrap()),
        Box::new(NaturalGradient::new(net, B, NaturalGradientConfig::default()).unwrap()),
        Box::new(
            NaturalGradient::new(
                net,
                B,
                NaturalGradientConfig {
                    factor_decay: 0.9,
                    refresh_interval: 3,
                    factor_update: FactorUpdate::RankUpdate,
                    ..NaturalGradientConfig::default()
                },
            )
            .unwrap(),
        ),
    ];
    let x = data(SIZES[0], B, 1);
    let xm = MatRef::from_column_major_slice(&x, SIZES[0], B);
    for opt in &mut opts {
        opt.step(net, ws, xm, xm).unwrap();
    }
    opts
}

type Snapshot = (Vec<u32>, String, Vec<Vec<u32>>, Vec<u64>);

fn snapshot(net: &Mlp, opt: &dyn Optimizer) -> Snapshot {
    let s = opt.save_state();
    (
        net.layers()
            .iter()
            .flat_map(|l| l.params.iter().map(|v| v.to_bits()))
            .collect(),
        s.name,
        s.buffers
            .iter()
            .map(|b| b.iter().map(|v| v.to_bits()).collect())
            .collect(),
        s.scalars,
    )
}

/// Steps every optimizer on `(x, y)` and requires an error accepted by
/// `expected`, with weights and optimizer state unchanged bit for bit.
fn assert_step_refused(
    x: MatRef<'_, f32>,
    y: MatRef<'_, f32>,
    max_batch: usize,
    case: &str,
    expected: impl Fn(&Error) -> bool,
) {
    let mut net = net();
    let mut ws = Workspace::new(&net, max_batch, Par::Seq).unwrap();
    for mut opt in trained_optimizers(&mut net, &mut ws) {
        let before = snapshot(&net, &*opt);
        match opt.step(&mut net, &mut ws, x, y) {
            Err(e) => {
                assert!(
                    expected(&e),
                    "{case}, {}: unexpected error {e:?}",
                    opt.name()
                );
                assert!(!e.to_string().is_empty());
            }
            Ok(_) => panic!("{case}, {}: the step was taken", opt.name()),
        }
        assert!(
            snapshot(&net, &*opt) == before,
            "{case}, {}: weights or optimizer state changed",
            opt.name()
        );
    }
}

fn is_shape(e: &Error) -> bool {
    matches!(e, Error::Shape(_))
}

fn is_non_finite(e: &Error) -> bool {
    matches!(e, Error::NonFinite(_))
}

fn is_config(e: &Error) -> bool {
    matches!(e, Error::InvalidConfig(_))
}

#[test]
fn input_with_the_wrong_number_of_rows() {
    let x = data(SIZES[0] + 1, B, 2);
    let y = data(SIZES[3], B, 3);
    let xm = MatRef::from_column_major_slice(&x, SIZES[0] + 1, B);
    let ym = MatRef::from_column_major_slice(&y, SIZES[3], B);
    assert_step_refused(xm, ym, B, "x has n_0 + 1 rows", is_shape);
    let mut net = net();
    let mut ws = Workspace::new(&net, B, Par::Seq).unwrap();
    assert!(matches!(net.forward(&mut ws, xm), Err(Error::Shape(_))));
    assert!(matches!(
        net.evaluate(&mut ws, xm, ym),
        Err(Error::Shape(_))
    ));
    let _ = &mut net;
}

#[test]
fn targets_with_the_wrong_shape() {
    let x = data(SIZES[0], B, 2);
    let xm = MatRef::from_column_major_slice(&x, SIZES[0], B);
    let y = data(SIZES[3] + 1, B, 3);
    let rows = MatRef::from_column_major_slice(&y, SIZES[3] + 1, B);
    assert_step_refused(xm, rows, B, "y has n_L + 1 rows", is_shape);
    let cols = MatRef::from_column_major_slice(&y[..SIZES[3] * (B - 1)], SIZES[3], B - 1);
    assert_step_refused(xm, cols, B, "y has one column fewer than x", is_shape);
    let net = net();
    let mut ws = Workspace::new(&net, B, Par::Seq).unwrap();
    assert!(matches!(
        net.evaluate(&mut ws, xm, cols),
        Err(Error::Shape(_))
    ));
}

#[test]
fn minibatch_larger_than_the_workspace_or_the_optimizer() {
    let x = data(SIZES[0], B + 1, 2);
    let xm = MatRef::from_column_major_slice(&x, SIZES[0], B + 1);
    assert_step_refused(xm, xm, B, "batch of B + 1 with a workspace for B", is_shape);
    // A workspace for 2B but natural-gradient optimizers built for B: their
    // own limit must catch it (the first-order ones have none and may step).
    let mut net = net();
    let mut ws = Workspace::new(&net, 2 * B, Par::Seq).unwrap();
    for mut opt in trained_optimizers(&mut net, &mut ws) {
        if opt.name() != "ng" {
            continue;
        }
        let before = snapshot(&net, &*opt);
        assert!(matches!(
            opt.step(&mut net, &mut ws, xm, xm),
            Err(Error::Shape(_))
        ));
        assert!(snapshot(&net, &*opt) == before);
    }
}

#[test]
fn empty_minibatch() {
    let x: Vec<f32> = Vec::new();
    let xm = MatRef::from_column_major_slice(&x, SIZES[0], 0);
    assert_step_refused(xm, xm, B, "0 columns", is_shape);
    let net = net();
    let mut ws = Workspace::new(&net, B, Par::Seq).unwrap();
    let ym = MatRef::from_column_major_slice(&x, SIZES[3], 0);
    assert!(matches!(
        net.evaluate(&mut ws, xm, ym),
        Err(Error::Shape(_))
    ));
}

#[test]
fn non_finite_inputs_and_targets() {
    let x = data(SIZES[0], B, 2);
    let xm = MatRef::from_column_major_slice(&x, SIZES[0], B);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for pos in [0, 17, SIZES[0] * B - 1] {
            let mut v = x.clone();
            v[pos] = bad;
            let vm = MatRef::from_column_major_slice(&v, SIZES[0], B);
            assert_step_refused(vm, xm, B, &format!("x[{pos}] = {bad}"), is_non_finite);
            assert_step_refused(xm, vm, B, &format!("y[{pos}] = {bad}"), is_non_finite);
        }
    }
}

#[test]
fn a_network_built_from_invalid_layers() {
    let good = net().layers().to_vec();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut layers = good.clone();
        layers[1].params[3] = bad;
        assert!(matches!(
            Mlp::from_layers(layers, Likelihood::Gaussian),
            Err(Error::NonFinite(_))
        ));
    }
    let mut short = good.clone();
    short[0].params.pop();
    assert!(matches!(
        Mlp::from_layers(short, Likelihood::Gaussian),
        Err(Error::Shape(_))
    ));
    let mut disagree = good.clone();
    disagree[2] = Layer {
        n_in: 4,
        n_out: 6,
        activation: Activation::Identity,
        params: vec![0.0; 6 * 5],
    };
    assert!(matches!(
        Mlp::from_layers(disagree, Likelihood::Gaussian),
        Err(Error::Shape(_))
    ));
    let zero = vec![Layer {
        n_in: 0,
        n_out: 3,
        activation: Activation::Identity,
        params: vec![0.0; 3],
    }];
    assert!(matches!(
        Mlp::from_layers(zero, Likelihood::Gaussian),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        Mlp::from_layers(Vec::new(), Likelihood::Gaussian),
        Err(Error::Shape(_))
    ));
    let mut tanh_out = good.clone();
    tanh_out[2].activation = Activation::Tanh;
    assert!(matches!(
        Mlp::from_layers(tanh_out, Likelihood::Bernoulli),
        Err(Error::Shape(_))
    ));
}

#[test]
fn invalid_network_definitions() {
    let new = |sizes: &[usize], acts: &[Activation], lik, init| Mlp::new(sizes, acts, lik, init, 0);
    let (t, id) = (Activation::Tanh, Activation::Identity);
    let g = Likelihood::Gaussian;
    let glorot = Init::GlorotUniform;
    assert!(matches!(
        new(&[4], &[], g, glorot),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        new(&[4, 0, 4], &[t, id], g, glorot),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        new(&[4, 3, 4], &[t], g, glorot),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        new(&[4, 3, 4], &[t, t], Likelihood::Categorical, glorot),
        Err(Error::InvalidConfig(_))
    ));
    for gain in [f32::NAN, f32::INFINITY, -1.0] {
        assert!(matches!(
            new(&[4, 3, 4], &[t, id], g, Init::ScaledGaussian { gain }),
            Err(Error::InvalidConfig(_))
        ));
    }
    assert!(matches!(
        Mlp::preset("huge", 0),
        Err(Error::InvalidConfig(_))
    ));
}

/// Weights the caller made non-finite through `params_mut`: the step must be
/// refused, weights (NaN bits included) and optimizer state kept.
fn assert_poisoned_weights_refused(layer: usize, index: usize, value: f32) {
    let x = data(SIZES[0], B, 2);
    let xm = MatRef::from_column_major_slice(&x, SIZES[0], B);
    let mut net = net();
    let mut ws = Workspace::new(&net, B, Par::Seq).unwrap();
    let opts = trained_optimizers(&mut net, &mut ws);
    net.params_mut().nth(layer).unwrap()[index] = value;
    for mut opt in opts {
        let before = snapshot(&net, &*opt);
        match opt.step(&mut net, &mut ws, xm, xm) {
            Err(e) => assert!(
                is_non_finite(&e),
                "weight {index} of layer {layer} = {value}, {}: {e:?}",
                opt.name()
            ),
            Ok(_) => panic!(
                "weight {index} of layer {layer} = {value}, {}: the step was taken",
                opt.name()
            ),
        }
        assert!(
            snapshot(&net, &*opt) == before,
            "weight {index} of layer {layer} = {value}, {}: state changed",
            opt.name()
        );
    }
}

#[test]
fn weights_made_nan_by_the_caller() {
    for layer in 0..3 {
        assert_poisoned_weights_refused(layer, 2, f32::NAN);
    }
}

#[test]
fn weights_made_infinite_by_the_caller() {
    // An infinite weight feeding a saturating tanh gives finite activations
    // (tanh(inf) = 1): only a check of the weights themselves catches it.
    for layer in 0..3 {
        for value in [f32::INFINITY, f32::NEG_INFINITY] {
            assert_poisoned_weights_refused(layer, 2, value);
        }
    }
}

/// Widths of the networks whose first layer (36,542 parameters) spans two
/// chunks of the parallel updates and checks (32,768 each).
const WIDE: [usize; 3] = [301, 121, 4];

/// A Gaussian network of widths [`WIDE`] with a `hidden` layer and an
/// identity output, and zero targets for `b` columns.
fn wide_net(hidden: Activation, seed: u64, b: usize) -> (Mlp, Vec<f32>) {
    let net = Mlp::new(
        &WIDE,
        &[hidden, Activation::Identity],
        Likelihood::Gaussian,
        Init::GlorotUniform,
        seed,
    )
    .unwrap();
    (net, vec![0.0; WIDE[2] * b])
}

/// A parameter an update overflows to infinity, and only that one (a weight
/// the caller set to 8, weight decay 1 and a quarter of the largest
/// learning rate: every other update stays below `f32::MAX`): the step is
/// the caller's to take, but the next forward pass must refuse the network.
/// The optimizers check what they write, in the update's own loop, and
/// vouch for the parameters only when all of it is finite: a loop or a
/// chunk left out of that check lets the forward pass skip its own.
#[test]
fn parameters_an_update_overflows_are_refused_by_the_next_forward_pass() {
    let (b, lr, wd) = (8, f32::MAX / 4.0, 1.0);
    let sgd = |momentum, nesterov| SgdConfig {
        learning_rate: lr,
        momentum,
        nesterov,
        weight_decay: wd,
    };
    let adam = AdamConfig {
        learning_rate: lr,
        weight_decay: wd,
        ..AdamConfig::default()
    };
    let x = data(WIDE[0], b, 3);
    let xm = MatRef::from_column_major_slice(&x, WIDE[0], b);
    let (proto, y) = wide_net(Activation::Tanh, 5, b);
    let ym = MatRef::from_column_major_slice(&y, WIDE[2], b);
    // Layer 0 has 36,542 parameters: two chunks of the update (32,768 and
    // 3,774); the last, a hidden unit's bias, in the vector loop's tail.
    for (layer, index) in [(0, 0), (0, 5), (0, 36_000), (0, 36_540)] {
        for par in [Par::Seq, Par::rayon(2)] {
            let opts: Vec<Box<dyn Optimizer>> = vec![
                Box::new(Sgd::new(&proto, sgd(0.0, false)).unwrap()),
                Box::new(Sgd::new(&proto, sgd(0.9, false)).unwrap()),
                Box::new(Sgd::new(&proto, sgd(0.9, true)).unwrap()),
                Box::new(Adam::new(&proto, adam).unwrap()),
            ];
            for mut opt in opts {
                let mut net = proto.clone();
                net.params_mut().nth(layer).unwrap()[index] = 8.0;
                let mut ws = Workspace::new(&net, b, par).unwrap();
                let case = format!("{}, layer {layer}, index {index}, {par:?}", opt.name());
                opt.step(&mut net, &mut ws, xm, ym)
                    .unwrap_or_else(|e| panic!("{case}: the step was refused: {e}"));
                let overflowed: Vec<(usize, usize)> = net
                    .params()
                    .enumerate()
                    .flat_map(|(l, w)| {
                        w.iter()
                            .enumerate()
                            .filter(|(_, v)| !v.is_finite())
                            .map(move |(i, _)| (l, i))
                    })
                    .collect();
                assert_eq!(overflowed, [(layer, index)], "{case}");
                match net.forward(&mut ws, xm) {
                    Err(e) => assert!(is_non_finite(&e), "{case}: {e:?}"),
                    Ok(()) => panic!("{case}: the forward pass took infinite weights"),
                }
            }
        }
    }
}

/// Finite inputs and weights whose gradient overflows (inputs near 1e20
/// through identity layers, so the first layer's gradient `E X^T` passes
/// 1e38): every optimizer refuses the step with the gradient's error,
/// weights and state unchanged, on one thread and on two (where the check
/// reads the 36,542-entry gradient of the first layer in two chunks).
#[test]
fn gradients_that_overflow() {
    let b = 8;
    let mut x = data(WIDE[0], b, 7);
    x.iter_mut().for_each(|v| *v *= 1e20);
    let xm = MatRef::from_column_major_slice(&x, WIDE[0], b);
    let (proto, y) = wide_net(Activation::Identity, 6, b);
    let ym = MatRef::from_column_major_slice(&y, WIDE[2], b);
    for par in [Par::Seq, Par::rayon(2)] {
        let opts: Vec<Box<dyn Optimizer>> = vec![
            Box::new(Sgd::new(&proto, SgdConfig::default()).unwrap()),
            Box::new(Adam::new(&proto, AdamConfig::default()).unwrap()),
            Box::new(NaturalGradient::new(&proto, b, NaturalGradientConfig::default()).unwrap()),
        ];
        for mut opt in opts {
            let mut net = proto.clone();
            let mut ws = Workspace::new(&net, b, par).unwrap();
            let before = snapshot(&net, &*opt);
            let case = format!("{}, {par:?}", opt.name());
            match opt.step(&mut net, &mut ws, xm, ym) {
                Err(e) => assert!(
                    is_non_finite(&e) && e.to_string().contains("gradient of layer 1"),
                    "{case}: {e}"
                ),
                Ok(_) => panic!("{case}: the step was taken"),
            }
            assert!(snapshot(&net, &*opt) == before, "{case}: state changed");
        }
    }
}

#[test]
fn activations_of_a_layer_the_network_does_not_have() {
    let net = net();
    let mut ws = Workspace::new(&net, B, Par::Seq).unwrap();
    let x = data(SIZES[0], B, 2);
    let xm = MatRef::from_column_major_slice(&x, SIZES[0], B);
    net.forward(&mut ws, xm).unwrap();
    // Activations 0 (the input) to 3 (the output) of the 3-layer network.
    for (i, &n) in SIZES.iter().enumerate() {
        let a = ws.activations(i).unwrap();
        assert_eq!((a.nrows(), a.ncols()), (n, B));
    }
    assert_eq!(ws.activations(0).unwrap()[(1, 2)], x[2 * SIZES[0] + 1]);
    for i in [SIZES.len(), usize::MAX] {
        match ws.activations(i) {
            Err(Error::Shape(m)) => assert!(m.contains("the network has 3 layers"), "{m}"),
            other => panic!("activations({i}) gave {other:?}"),
        }
    }
}

#[test]
fn workspace_or_optimizer_built_for_another_network() {
    let mut net = net();
    let other = Mlp::new(
        &[6, 4, 6],
        &[Activation::Tanh, Activation::Identity],
        Likelihood::Gaussian,
        Init::GlorotUniform,
        1,
    )
    .unwrap();
    let x = data(SIZES[0], B, 2);
    let xm = MatRef::from_column_major_slice(&x, SIZES[0], B);
    let mut other_ws = Workspace::new(&other, B, Par::Seq).unwrap();
    let mut ws = Workspace::new(&net, B, Par::Seq).unwrap();
    for mut opt in trained_optimizers(&mut net, &mut ws) {
        let before = snapshot(&net, &*opt);
        assert!(matches!(
            opt.step(&mut net, &mut other_ws, xm, xm),
            Err(Error::Shape(_))
        ));
        assert!(snapshot(&net, &*opt) == before);
    }
    let mut other_net = other.clone();
    let mut opts: Vec<Box<dyn Optimizer>> = vec![
        Box::new(Sgd::new(&net, SgdConfig::default()).unwrap()),
        Box::new(Adam::new(&net, AdamConfig::default()).unwrap()),
        Box::new(NaturalGradient::new(&net, B, NaturalGradientConfig::default()).unwrap()),
    ];
    for opt in &mut opts {
        assert!(matches!(
            opt.step(&mut other_net, &mut other_ws, xm, xm),
            Err(Error::Shape(_))
        ));
        assert_eq!(other_net, other);
    }
}

#[test]
fn learning_rates_not_finite_or_not_positive() {
    let net = net();
    for lr in [0.0, -1e-3, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let sgd = SgdConfig {
            learning_rate: lr,
            ..SgdConfig::default()
        };
        assert!(
            Sgd::new(&net, sgd).is_err_and(|e| is_config(&e)),
            "sgd {lr}"
        );
        let adam = AdamConfig {
            learning_rate: lr,
            ..AdamConfig::default()
        };
        assert!(
            Adam::new(&net, adam).is_err_and(|e| is_config(&e)),
            "adam {lr}"
        );
        let ng = NaturalGradientConfig {
            learning_rate: lr,
            ..NaturalGradientConfig::default()
        };
        assert!(
            NaturalGradient::new(&net, B, ng).is_err_and(|e| is_config(&e)),
            "ng {lr}"
        );
    }
}

#[test]
fn other_first_order_settings_out_of_their_domain() {
    let net = net();
    for momentum in [-0.1, 1.0, f32::NAN] {
        let c = SgdConfig {
            momentum,
            ..SgdConfig::default()
        };
        assert!(
            Sgd::new(&net, c).is_err_and(|e| is_config(&e)),
            "momentum {momentum}"
        );
    }
    for wd in [-1.0, f32::NAN, f32::INFINITY] {
        let c = SgdConfig {
            weight_decay: wd,
            ..SgdConfig::default()
        };
        assert!(
            Sgd::new(&net, c).is_err_and(|e| is_config(&e)),
            "sgd wd {wd}"
        );
        let c = AdamConfig {
            weight_decay: wd,
            ..AdamConfig::default()
        };
        assert!(
            Adam::new(&net, c).is_err_and(|e| is_config(&e)),
            "adam wd {wd}"
        );
        let c = NaturalGradientConfig {
            weight_decay: wd,
            ..NaturalGradientConfig::default()
        };
        assert!(
            NaturalGradient::new(&net, B, c).is_err_and(|e| is_config(&e)),
            "ng wd {wd}"
        );
    }
    for beta in [-0.1, 1.0, f32::NAN] {
        let c = AdamConfig {
            beta1: beta,
            ..AdamConfig::default()
        };
        assert!(
            Adam::new(&net, c).is_err_and(|e| is_config(&e)),
            "beta1 {beta}"
        );
        let c = AdamConfig {
            beta2: beta,
            ..AdamConfig::default()
        };
        assert!(
            Adam::new(&net, c).is_err_and(|e| is_config(&e)),
            "beta2 {beta}"
        );
    }
    for eps in [0.0, -1e-8, f32::NAN] {
        let c = AdamConfig {
            epsilon: eps,
            ..AdamConfig::default()
        };
        assert!(
            Adam::new(&net, c).is_err_and(|e| is_config(&e)),
            "epsilon {eps}"
        );
    }
}

fn ng_refuses(case: &str, config: NaturalGradientConfig) {
    let net = net();
    match NaturalGradient::new(&net, B, config) {
        Err(Error::InvalidConfig(msg)) => assert!(!msg.is_empty()),
        Err(e) => panic!("{case}: {e:?}"),
        Ok(_) => panic!("{case}: accepted"),
    }
}

#[test]
fn damping_not_positive_or_not_finite_or_out_of_its_bounds() {
    let d = NaturalGradientConfig::default();
    for g in [0.0, -1.0, f32::NAN, f32::INFINITY, 1e-7, 1e7] {
        ng_refuses(
            &format!("damping {g}"),
            NaturalGradientConfig { damping: g, ..d },
        );
    }
    for bounds in [
        (0.0, 1.0),
        (-1.0, 1.0),
        (1.0, 0.5),
        (f32::NAN, 1.0),
        (1e-6, f32::INFINITY),
    ] {
        ng_refuses(
            &format!("bounds {bounds:?}"),
            NaturalGradientConfig {
                damping_bounds: bounds,
                ..d
            },
        );
    }
}

#[test]
fn factor_decay_outside_zero_one() {
    let d = NaturalGradientConfig::default();
    for rho in [-0.1, 1.0, 1.5, f32::NAN, f32::INFINITY] {
        ng_refuses(
            &format!("factor_decay {rho}"),
            NaturalGradientConfig {
                factor_decay: rho,
                ..d
            },
        );
    }
}

#[test]
fn damping_check_fraction_outside_zero_one() {
    let d = NaturalGradientConfig::default();
    for f in [0.0, -0.5, 1.5, f32::NAN, f32::INFINITY] {
        ng_refuses(
            &format!("damping_check_fraction {f}"),
            NaturalGradientConfig {
                damping_check_fraction: f,
                ..d
            },
        );
    }
}

#[test]
fn weight_decay_with_the_low_rank_or_gram_form() {
    use natgrad::optim::Preconditioning;
    for preconditioning in [Preconditioning::LowRank, Preconditioning::Gram] {
        ng_refuses(
            &format!("weight decay with {preconditioning:?}"),
            NaturalGradientConfig {
                preconditioning,
                weight_decay: 1e-3,
                ..NaturalGradientConfig::default()
            },
        );
    }
}

#[test]
fn explicit_inverses_with_rank_updates() {
    use natgrad::optim::InverseApplication;
    ng_refuses(
        "explicit inverses with rank updates",
        NaturalGradientConfig {
            inverse: InverseApplication::Explicit,
            factor_update: FactorUpdate::RankUpdate,
            ..NaturalGradientConfig::default()
        },
    );
}

#[test]
fn zero_counts_in_the_natural_gradient_configuration() {
    let d = NaturalGradientConfig::default();
    ng_refuses(
        "refresh_interval 0",
        NaturalGradientConfig {
            refresh_interval: 0,
            ..d
        },
    );
    ng_refuses("samples 0", NaturalGradientConfig { samples: 0, ..d });
    ng_refuses(
        "statistics_interval 0",
        NaturalGradientConfig {
            statistics_interval: 0,
            ..d
        },
    );
    ng_refuses(
        "LM interval 0",
        NaturalGradientConfig {
            adaptation: DampingAdaptation::LevenbergMarquardt { interval: 0 },
            ..d
        },
    );
    let net = net();
    assert!(NaturalGradient::new(&net, 0, d).is_err_and(|e| is_config(&e)));
    assert!(Workspace::new(&net, 0, Par::Seq).is_err_and(|e| is_config(&e)));
}

#[test]
fn optimizer_state_of_another_optimizer_or_shape() {
    let mut net = net();
    let mut ws = Workspace::new(&net, B, Par::Seq).unwrap();
    let mut opts = trained_optimizers(&mut net, &mut ws);
    let states: Vec<OptimizerState> = opts.iter().map(|o| o.save_state()).collect();
    for (i, opt) in opts.iter_mut().enumerate() {
        let before = snapshot(&net, &**opt);
        let mut renamed = states[i].clone();
        renamed.name = "other".into();
        let mut shorter = states[i].clone();
        if let Some(b) = shorter.buffers.iter_mut().find(|b| !b.is_empty()) {
            b.pop();
        }
        let mut extra = states[i].clone();
        extra.scalars.push(0);
        for bad in [renamed, shorter, extra] {
            assert!(
                opt.load_state(&bad).is_err_and(|e| is_shape(&e)),
                "{}: {bad:?}",
                opt.name()
            );
            assert!(
                snapshot(&net, &**opt) == before,
                "{}: state changed",
                opt.name()
            );
        }
    }
    // A natural-gradient damping outside the configured bounds.
    let ng = &mut opts[2];
    let mut state = ng.save_state();
    state.scalars[4] = f32::NAN.to_bits() as u64;
    let before = snapshot(&net, &**ng);
    assert!(ng.load_state(&state).is_err());
    assert!(snapshot(&net, &**ng) == before);
}

/// A curvature factor with infinite entries (activations of 1e20, whose
/// squares overflow f32) cannot be factorised at any damping: the step is
/// refused with `NotPositiveDefinite` and the weights are kept. The targets
/// equal the network's own outputs so that the gradient stays finite and the
/// factorisation is what fails.
#[test]
fn curvature_factor_that_will_not_factorise() {
    let acts = [Activation::Identity, Activation::Identity];
    let mut net = Mlp::new(
        &[3, 2, 3],
        &acts,
        Likelihood::Gaussian,
        Init::GlorotUniform,
        2,
    )
    .unwrap();
    let mut ws = Workspace::new(&net, 4, Par::Seq).unwrap();
    let x: Vec<f32> = (0..12)
        .map(|i| if i % 3 == 0 { 1e20 } else { 0.5 })
        .collect();
    let xm = MatRef::from_column_major_slice(&x, 3, 4);
    net.forward(&mut ws, xm).unwrap();
    let y: Vec<f32> = {
        let out = net.output(&ws).unwrap();
        (0..4)
            .flat_map(|j| (0..3).map(move |i| out[(i, j)]))
            .collect()
    };
    let ym = MatRef::from_column_major_slice(&y, 3, 4);
    let mut opt = NaturalGradient::new(&net, 4, NaturalGradientConfig::default()).unwrap();
    let weights = net.clone();
    match opt.step(&mut net, &mut ws, xm, ym) {
        Err(Error::NotPositiveDefinite(msg)) => assert!(msg.contains("damping"), "{msg}"),
        other => panic!("expected NotPositiveDefinite, got {other:?}"),
    }
    assert_eq!(net, weights);
}

fn stack_for(req: kernels::StackReq) -> MemBuffer {
    MemBuffer::new(req)
}

fn shape_mismatch(r: Result<(), kernels::Error>) -> bool {
    matches!(r, Err(kernels::Error::ShapeMismatch { .. }))
}

#[test]
fn kernels_given_mismatched_shapes() {
    let par = Par::Seq;
    let a = vec![1.0f32; 64];
    let mut c = vec![0.0f32; 64];
    let mut mem = stack_for(gemm_scratch(8, 8, 8, par));
    // gemm: inner dimensions 3 and 4.
    let r = gemm(
        MatMut::from_column_major_slice_mut(&mut c[..12], 3, 4),
        0.0,
        MatRef::from_column_major_slice(&a[..9], 3, 3),
        MatRef::from_column_major_slice(&a[..16], 4, 4),
        1.0,
        par,
        MemStack::new(&mut mem),
    );
    assert!(shape_mismatch(r), "gemm inner");
    // gemm: C has the wrong number of rows.
    let r = gemm(
        MatMut::from_column_major_slice_mut(&mut c[..16], 4, 4),
        0.0,
        MatRef::from_column_major_slice(&a[..12], 3, 4),
        MatRef::from_column_major_slice(&a[..16], 4, 4),
        1.0,
        par,
        MemStack::new(&mut mem),
    );
    assert!(shape_mismatch(r), "gemm rows");
    // gemm_fused: bias of the wrong length, epilogue output of the wrong shape.
    let bias = [0.0f32; 4];
    let r = gemm_fused(
        MatMut::from_column_major_slice_mut(&mut c[..9], 3, 3),
        0.0,
        MatRef::from_column_major_slice(&a[..9], 3, 3),
        MatRef::from_column_major_slice(&a[..9], 3, 3),
        1.0,
        Epilogue::BiasActivation {
            bias: Some(&bias),
            activation: Activation::Tanh,
        },
        par,
        MemStack::new(&mut mem),
    );
    assert!(shape_mismatch(r), "gemm bias");
    let r = gemm_fused(
        MatMut::from_column_major_slice_mut(&mut c[..9], 3, 3),
        0.0,
        MatRef::from_column_major_slice(&a[..9], 3, 3),
        MatRef::from_column_major_slice(&a[..9], 3, 3),
        1.0,
        Epilogue::ActivationDerivative {
            activation: Activation::Tanh,
            output: MatRef::from_column_major_slice(&a[..12], 4, 3),
        },
        par,
        MemStack::new(&mut mem),
    );
    assert!(shape_mismatch(r), "gemm epilogue output");
    // syrk: X rows differ from C's order; C not square.
    let mut mem = stack_for(syrk_scratch(8, 8, par));
    let r = syrk_lower(
        MatMut::from_column_major_slice_mut(&mut c[..16], 4, 4),
        0.0,
        MatRef::from_column_major_slice(&a[..15], 3, 5),
        1.0,
        par,
        MemStack::new(&mut mem),
    );
    assert!(shape_mismatch(r), "syrk rows");
    let r = syrk_lower(
        MatMut::from_column_major_slice_mut(&mut c[..12], 4, 3),
        0.0,
        MatRef::from_column_major_slice(&a[..8], 4, 2),
        1.0,
        par,
        MemStack::new(&mut mem),
    );
    assert!(shape_mismatch(r), "syrk square");
    // cholesky: not square.
    let mut mem = stack_for(cholesky_scratch(8, par));
    let r = cholesky_in_place(
        MatMut::from_column_major_slice_mut(&mut c[..12], 4, 3),
        0.0,
        par,
        MemStack::new(&mut mem),
    );
    assert!(shape_mismatch(r), "cholesky square");
    // solves: right-hand sides of the wrong length.
    let l: Vec<f32> = (0..16)
        .map(|i| if i % 5 == 0 { 2.0 } else { 0.0 })
        .collect();
    let mut mem = stack_for(solve_scratch(8, 8, par));
    let r = solve_llt_left_in_place(
        MatRef::from_column_major_slice(&l, 4, 4),
        MatMut::from_column_major_slice_mut(&mut c[..15], 3, 5),
        par,
        MemStack::new(&mut mem),
    );
    assert!(shape_mismatch(r), "left solve");
    let r = solve_llt_right_in_place(
        MatRef::from_column_major_slice(&l, 4, 4),
        MatMut::from_column_major_slice_mut(&mut c[..15], 5, 3),
        par,
        MemStack::new(&mut mem),
    );
    assert!(shape_mismatch(r), "right solve");
    // rank update: alpha of the wrong length, W of the wrong height.
    let mut lm = l.clone();
    let mut w = [1.0f32; 12];
    let mut mem = stack_for(cholesky_update_scratch(8, 8, par));
    let r = cholesky_rank_update(
        MatMut::from_column_major_slice_mut(&mut lm, 4, 4),
        MatMut::from_column_major_slice_mut(&mut w[..8], 4, 2),
        &[1.0; 3],
        par,
        MemStack::new(&mut mem),
    );
    assert!(shape_mismatch(r), "rank update alpha");
    let r = cholesky_rank_update(
        MatMut::from_column_major_slice_mut(&mut lm, 4, 4),
        MatMut::from_column_major_slice_mut(&mut w[..9], 3, 3),
        &[1.0; 3],
        par,
        MemStack::new(&mut mem),
    );
    assert!(shape_mismatch(r), "rank update W");
    assert_eq!(lm, l, "a refused update changed L");
}

#[test]
fn kernels_given_non_finite_scalars() {
    let par = Par::Seq;
    let x = [1.0f32; 8];
    let mut c = [0.0f32; 16];
    let invalid =
        |r: Result<(), kernels::Error>| matches!(r, Err(kernels::Error::InvalidArgument { .. }));
    let mut mem = stack_for(syrk_scratch(4, 2, par));
    for (alpha, beta) in [(f32::NAN, 0.0), (1.0, f32::INFINITY)] {
        let r = syrk_lower(
            MatMut::from_column_major_slice_mut(&mut c, 4, 4),
            beta,
            MatRef::from_column_major_slice(&x, 4, 2),
            alpha,
            par,
            MemStack::new(&mut mem),
        );
        assert!(invalid(r), "syrk alpha {alpha} beta {beta}");
    }
    let mut mem = stack_for(cholesky_scratch(4, par));
    let mut a = [0.0f32; 16];
    for i in 0..4 {
        a[i * 5] = 1.0;
    }
    for shift in [f32::NAN, f32::INFINITY] {
        let r = cholesky_in_place(
            MatMut::from_column_major_slice_mut(&mut a, 4, 4),
            shift,
            par,
            MemStack::new(&mut mem),
        );
        assert!(invalid(r), "cholesky shift {shift}");
    }
    let mut mem = stack_for(cholesky_update_scratch(4, 2, par));
    let mut w = [1.0f32; 8];
    let r = cholesky_rank_update(
        MatMut::from_column_major_slice_mut(&mut a, 4, 4),
        MatMut::from_column_major_slice_mut(&mut w, 4, 2),
        &[1.0, f32::NAN],
        par,
        MemStack::new(&mut mem),
    );
    assert!(invalid(r), "rank update alpha NaN");
}

/// `[[1, 2, 0], [2, 1, 0], [0, 0, 1]]` has eigenvalues 3, -1, 1: the second
/// pivot is `1 - 2^2 = -3`. With a NaN in row 2 the third pivot is NaN.
#[test]
fn matrices_that_are_not_positive_definite() {
    let par = Par::Seq;
    let mut mem = stack_for(cholesky_scratch(40, par));
    let mut a = [1.0f32, 2.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
    let r = cholesky_in_place(
        MatMut::from_column_major_slice_mut(&mut a, 3, 3),
        0.0,
        par,
        MemStack::new(&mut mem),
    );
    assert_eq!(
        r,
        Err(kernels::Error::NotPositiveDefinite {
            pivot: 1,
            value: -3.0
        })
    );
    let mut a = [1.0f32, 0.0, 0.0, 0.0, 1.0, f32::NAN, 0.0, 0.0, 1.0];
    match cholesky_in_place(
        MatMut::from_column_major_slice_mut(&mut a, 3, 3),
        0.0,
        par,
        MemStack::new(&mut mem),
    ) {
        Err(kernels::Error::NotPositiveDefinite { pivot: 2, value }) => assert!(value.is_nan()),
        other => panic!("NaN in row 2 gave {other:?}"),
    }
    // A 40 x 40 identity with one negative diagonal entry: the blocked path
    // (n > 32) must report the right pivot too.
    let n = 40;
    let mut big = vec![0.0f32; n * n];
    for i in 0..n {
        big[i * (n + 1)] = if i == 35 { -2.0 } else { 1.0 };
    }
    let r = cholesky_in_place(
        MatMut::from_column_major_slice_mut(&mut big, n, n),
        0.5,
        par,
        MemStack::new(&mut mem),
    );
    assert_eq!(
        r,
        Err(kernels::Error::NotPositiveDefinite {
            pivot: 35,
            value: -1.5
        })
    );
    // A downdate that removes more than there is.
    let mut l = [1.0f32, 0.0, 0.0, 1.0];
    let mut w = [2.0f32, 0.0];
    let mut mem = stack_for(cholesky_update_scratch(2, 1, par));
    match cholesky_rank_update(
        MatMut::from_column_major_slice_mut(&mut l, 2, 2),
        MatMut::from_column_major_slice_mut(&mut w, 2, 1),
        &[-1.0],
        par,
        MemStack::new(&mut mem),
    ) {
        Err(kernels::Error::NotPositiveDefinite { pivot: 0, value }) => assert!(value <= 0.0),
        other => panic!("over-downdate gave {other:?}"),
    }
}

#[test]
fn checkpoint_files_that_are_not_valid() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bad-input-checkpoint");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let net = net();
    let opt = Adam::new(&net, AdamConfig::default()).unwrap();
    let ckpt = Checkpoint::capture(&net, &opt, vec![("step".into(), 3)]);
    let bytes = checkpoint::to_bytes(&ckpt);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated", bytes[..bytes.len() - 1].to_vec()),
        ("flipped bit", {
            let mut b = bytes.clone();
            b[bytes.len() / 2] ^= 0x10;
            b
        }),
        (
            "other format",
            b"\x89PNG\r\n\x1a\n and more bytes than a header".to_vec(),
        ),
    ];
    for (what, content) in cases {
        let path = dir.join(format!("{what}.ngc"));
        std::fs::write(&path, content).unwrap();
        match checkpoint::load(&path) {
            Err(Error::Format { path: p, detail }) => {
                assert_eq!(p, path);
                assert!(!detail.is_empty());
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    assert!(matches!(
        checkpoint::load(&dir.join("missing.ngc")),
        Err(Error::Io { .. })
    ));
    let mut nan = ckpt.clone();
    nan.net.params_mut().next().unwrap()[0] = f32::NAN;
    assert!(matches!(
        checkpoint::save(&dir.join("nan.ngc"), &nan),
        Err(Error::NonFinite(_))
    ));
    assert!(!dir.join("nan.ngc").exists());
}

#[test]
fn gram_preconditioning_without_per_minibatch_factors() {
    let gram = NaturalGradientConfig {
        preconditioning: Preconditioning::Gram,
        ..NaturalGradientConfig::default()
    };
    assert!(NaturalGradient::new(&net(), B, gram).is_ok());
    for (what, cfg) in [
        (
            "Gram with running averages",
            NaturalGradientConfig {
                factor_decay: 0.9,
                ..gram
            },
        ),
        (
            "Gram with refresh_interval 2",
            NaturalGradientConfig {
                refresh_interval: 2,
                ..gram
            },
        ),
        (
            "Gram with statistics_interval 2",
            NaturalGradientConfig {
                statistics_interval: 2,
                ..gram
            },
        ),
        (
            "Gram with 2 samples",
            NaturalGradientConfig { samples: 2, ..gram },
        ),
        (
            "Gram with rank updates",
            NaturalGradientConfig {
                factor_update: FactorUpdate::RankUpdate,
                ..gram
            },
        ),
    ] {
        match NaturalGradient::new(&net(), B, cfg) {
            Err(Error::InvalidConfig(m)) => assert!(m.contains("per-minibatch"), "{what}: {m}"),
            Err(e) => panic!("{what}: {e:?}"),
            Ok(_) => panic!("{what}: accepted"),
        }
    }
}

/// `gemm` with a NaN or infinite `alpha` or `beta` is refused before `C`
/// is touched (issue #22: it used to return `Ok`).
#[test]
fn gemm_given_non_finite_alpha_or_beta() {
    let par = Par::Seq;
    let a = [1.0f32; 6];
    let b = [1.0f32; 6];
    let mut mem = stack_for(gemm_scratch(2, 2, 3, par));
    for (alpha, beta) in [
        (f32::NAN, 0.0),
        (f32::INFINITY, 1.0),
        (1.0, f32::NAN),
        (1.0, f32::NEG_INFINITY),
    ] {
        let mut c = [7.0f32; 4];
        let r = gemm(
            MatMut::from_column_major_slice_mut(&mut c, 2, 2),
            beta,
            MatRef::from_column_major_slice(&a, 2, 3),
            MatRef::from_column_major_slice(&b, 3, 2),
            alpha,
            par,
            MemStack::new(&mut mem),
        );
        match r {
            Err(kernels::Error::InvalidArgument { op: "gemm", detail }) => {
                assert!(detail.contains("must be finite"), "{detail}")
            }
            other => panic!("gemm alpha {alpha} beta {beta} gave {other:?}"),
        }
        assert_eq!(c, [7.0; 4], "C was touched");
    }
}

/// Every kernel that takes scratch refuses a stack smaller than its
/// `*_scratch` asks for, with `InvalidArgument`, leaving its output alone
/// (issue #22: only `gemm` checked; the others panicked).
#[test]
fn kernels_given_too_little_scratch() {
    use natgrad::kernels::cholesky::{cholesky_inverse_in_place, cholesky_inverse_scratch};
    use natgrad::kernels::syrk::{syrk_lower_f64, syrk_lower_trapezoidal};
    use natgrad::kernels::trsm::{lower_times_in_place, lower_times_scratch};
    let par = Par::Seq;
    let n = 64;
    let k = 40;
    let too_small = |req: kernels::StackReq| {
        let bytes = req.unaligned_bytes_required();
        assert!(bytes > 64, "the case needs scratch to be meaningful");
        MemBuffer::new(kernels::StackReq::new::<u8>(bytes / 2))
    };
    let scratch_error = |r: Result<(), kernels::Error>, what: &str| match r {
        Err(kernels::Error::InvalidArgument { detail, .. }) => {
            assert!(detail.contains("scratch holds"), "{what}: {detail}")
        }
        other => panic!("{what} with too little scratch gave {other:?}"),
    };
    let mut spd = vec![0.0f32; n * n];
    for i in 0..n {
        spd[i * n + i] = 2.0;
    }
    let x = data(n, k, 3);

    let mut buf = too_small(cholesky_scratch(n, par));
    let mut a = spd.clone();
    let r = cholesky_in_place(
        MatMut::from_column_major_slice_mut(&mut a, n, n),
        0.0,
        par,
        MemStack::new(&mut buf),
    );
    scratch_error(r, "cholesky_in_place");
    assert_eq!(a, spd, "A was touched");

    let mut buf = too_small(cholesky_update_scratch(n, k, par));
    let mut w = x.clone();
    let r = cholesky_rank_update(
        MatMut::from_column_major_slice_mut(&mut a, n, n),
        MatMut::from_column_major_slice_mut(&mut w, n, k),
        &vec![1.0; k],
        par,
        MemStack::new(&mut buf),
    );
    scratch_error(r, "cholesky_rank_update");
    assert_eq!(a, spd, "L was touched");

    let mut buf = too_small(cholesky_inverse_scratch(n, par));
    let r = cholesky_inverse_in_place(
        MatMut::from_column_major_slice_mut(&mut a, n, n),
        par,
        MemStack::new(&mut buf),
    );
    scratch_error(r, "cholesky_inverse_in_place");
    assert_eq!(a, spd, "L was touched");

    let mut buf = too_small(solve_scratch(n, k, par));
    let mut rhs = x.clone();
    let r = solve_llt_left_in_place(
        MatRef::from_column_major_slice(&spd, n, n),
        MatMut::from_column_major_slice_mut(&mut rhs, n, k),
        par,
        MemStack::new(&mut buf),
    );
    scratch_error(r, "solve_llt_left_in_place");
    let r = solve_llt_right_in_place(
        MatRef::from_column_major_slice(&spd, n, n),
        MatMut::from_column_major_slice_mut(&mut rhs, n, k).transpose_mut(),
        par,
        MemStack::new(&mut buf),
    );
    scratch_error(r, "solve_llt_right_in_place");
    assert_eq!(rhs, x, "B was touched");

    let mut buf = too_small(lower_times_scratch(n, k, par));
    let r = lower_times_in_place(
        MatRef::from_column_major_slice(&spd, n, n),
        MatMut::from_column_major_slice_mut(&mut rhs, n, k),
        par,
        MemStack::new(&mut buf),
    );
    scratch_error(r, "lower_times_in_place");
    assert_eq!(rhs, x, "B was touched");

    let mut buf = too_small(syrk_scratch(n, k, par));
    let mut c = vec![5.0f32; n * n];
    let r = syrk_lower(
        MatMut::from_column_major_slice_mut(&mut c, n, n),
        1.0,
        MatRef::from_column_major_slice(&x, n, k),
        1.0,
        par,
        MemStack::new(&mut buf),
    );
    scratch_error(r, "syrk_lower");
    let r = syrk_lower_trapezoidal(
        MatMut::from_column_major_slice_mut(&mut c, n, n),
        1.0,
        MatRef::from_column_major_slice(&x, n, k),
        1.0,
        par,
        MemStack::new(&mut buf),
    );
    scratch_error(r, "syrk_lower_trapezoidal");
    assert_eq!(c, vec![5.0; n * n], "C was touched");
    let mut c64 = vec![5.0f64; n * n];
    let r = syrk_lower_f64(
        MatMut::from_column_major_slice_mut(&mut c64, n, n),
        1.0,
        MatRef::from_column_major_slice(&x, n, k),
        1.0,
        par,
        MemStack::new(&mut buf),
    );
    scratch_error(r, "syrk_lower_f64");
    assert_eq!(c64, vec![5.0; n * n], "C was touched");
}

/// A `max_batch` beyond `MAX_BATCH` (up to `usize::MAX`) is refused before
/// anything is allocated (issue #22: "capacity overflow" panics and aborts
/// on failed allocations).
#[test]
fn huge_max_batch_is_refused_not_a_panic_or_an_abort() {
    use natgrad::workspace::MAX_BATCH;
    let net = net();
    for max_batch in [usize::MAX, usize::MAX / 2, 1 << 40, MAX_BATCH + 1] {
        match Workspace::new(&net, max_batch, Par::Seq) {
            Err(Error::InvalidConfig(m)) => assert!(m.contains("limit"), "{m}"),
            Err(e) => panic!("workspace, {max_batch}: {e}"),
            Ok(_) => panic!("workspace, {max_batch}: accepted"),
        }
        match NaturalGradient::new(&net, max_batch, NaturalGradientConfig::default()) {
            Err(Error::InvalidConfig(m)) => assert!(m.contains("limit"), "{m}"),
            Err(e) => panic!("natural gradient, {max_batch}: {e}"),
            Ok(_) => panic!("natural gradient, {max_batch}: accepted"),
        }
    }
}

/// Bernoulli targets outside [0, 1] and Categorical targets that are not
/// probability vectors are refused by the loss (so by every step and by
/// `evaluate`); a softmax computed in f32 is accepted (issue #22: a
/// Categorical loss of -25.44 came out).
#[test]
fn targets_outside_the_likelihood_support() {
    let (n, b) = (4, 3);
    let x = data(n, b, 9);
    let xm = MatRef::from_column_major_slice(&x, n, b);
    for (likelihood, bad, what) in [
        (
            Likelihood::Bernoulli,
            vec![0.5f32, 0.0, 1.0, 5.0],
            "outside [0, 1]",
        ),
        (
            Likelihood::Bernoulli,
            vec![0.5, -0.1, 1.0, 0.0],
            "outside [0, 1]",
        ),
        (
            Likelihood::Categorical,
            vec![0.5, 0.5, 0.5, 0.5],
            "sums to 2",
        ),
        (
            Likelihood::Categorical,
            vec![1.5, -0.5, 0.0, 0.0],
            "negative",
        ),
        (Likelihood::Categorical, vec![0.0; 4], "sums to 0"),
    ] {
        let net = Mlp::new(
            &[n, 5, n],
            &[Activation::Tanh, Activation::Identity],
            likelihood,
            Init::GlorotUniform,
            2,
        )
        .unwrap();
        let mut ws = Workspace::new(&net, b, Par::Seq).unwrap();
        // Columns 0 and 1 are valid; column 2 is the bad one.
        let mut y = vec![0.0f32; n * b];
        y[0] = 1.0;
        y[n + 1] = 1.0;
        y[2 * n..].copy_from_slice(&bad);
        let ym = MatRef::from_column_major_slice(&y, n, b);
        match net.loss_and_gradient(&mut ws, xm, ym) {
            Err(Error::InvalidData(m)) => {
                assert!(m.contains(what) && m.contains("column 2"), "{m}")
            }
            other => panic!("{likelihood:?} {bad:?}: {other:?}"),
        }
        assert!(matches!(
            net.evaluate(&mut ws, xm, ym),
            Err(Error::InvalidData(_))
        ));
        let mut opt = Sgd::new(&net, SgdConfig::default()).unwrap();
        let mut net2 = net.clone();
        assert!(matches!(
            opt.step(&mut net2, &mut ws, xm, ym),
            Err(Error::InvalidData(_))
        ));
        assert_eq!(net2, net, "weights changed");
    }
    // A softmax in f32 of 10 classes, within the derived tolerance.
    let n = 10;
    let logits: Vec<f32> = (0..n).map(|i| (i as f32 * 0.731).sin() * 7.0).collect();
    let e: Vec<f32> = logits.iter().map(|s| s.exp()).collect();
    let z: f32 = e.iter().sum();
    let p: Vec<f32> = e.iter().map(|v| v / z).collect();
    let net = Mlp::new(
        &[n, 3, n],
        &[Activation::Tanh, Activation::Identity],
        Likelihood::Categorical,
        Init::GlorotUniform,
        2,
    )
    .unwrap();
    let mut ws = Workspace::new(&net, 1, Par::Seq).unwrap();
    let xm = MatRef::from_column_major_slice(&p, n, 1);
    assert!(net.loss_and_gradient(&mut ws, xm, xm).unwrap() > 0.0);
    let tolerance = natgrad::mlp::categorical_sum_tolerance(n);
    assert!((tolerance - 11.0 * f64::from(f32::EPSILON)).abs() < 1e-20);
}

/// A `Split` built by hand (its fields are public) whose pixel count does
/// not match `rows * cols * count` is refused before any matrix view is
/// made of it (issue #22: faer's length assertion panicked).
#[cfg(feature = "cli")]
#[test]
fn a_split_whose_lengths_disagree_is_refused_not_a_panic() {
    use natgrad::data::{Dataset, Images, Split};
    let split = |pixels: usize, labels: usize| Split {
        pixels: vec![7; pixels],
        labels: vec![1; labels],
        rows: 28,
        cols: 28,
        count: 10,
    };
    let net = Mlp::deep(1);
    for (train, test, what) in [
        (split(784 * 9, 10), split(784 * 10, 10), "pixel bytes"),
        (split(784 * 10, 10), split(784 * 10 + 1, 10), "pixel bytes"),
        (split(784 * 10, 9), split(784 * 10, 10), "labels"),
    ] {
        match Images::new(&train, None).and(Images::new(&test, None)) {
            Err(Error::Shape(m)) => assert!(m.contains(what), "{m}"),
            other => panic!("{other:?}"),
        }
        let data = Dataset {
            name: "hand-made".into(),
            train,
            test,
        };
        match natgrad::app::race::prepare(&data, &net) {
            Err(Error::Shape(m)) => assert!(m.contains(what), "{m}"),
            other => panic!("{:?}", other.map(|p| p.train_count)),
        }
    }
}

/// The public functions that read a workspace or fill a caller's buffer
/// refuse a workspace of another network and a buffer too short, instead
/// of panicking on an index or in faer's view assertion.
#[test]
fn a_workspace_of_another_network_or_a_short_buffer_for_the_output_functions() {
    let net = net();
    let other = Mlp::new(
        &[6, 9, 6],
        &[Activation::Tanh, Activation::Identity],
        Likelihood::Gaussian,
        Init::GlorotUniform,
        1,
    )
    .unwrap();
    let mut ws = Workspace::new(&other, B, Par::Seq).unwrap();
    let x = data(6, B, 1);
    let xm = MatRef::from_column_major_slice(&x, 6, B);
    other.forward(&mut ws, xm).unwrap();
    assert!(matches!(net.output(&ws), Err(Error::Shape(_))));
    assert!(matches!(net.loss(&mut ws, xm, false), Err(Error::Shape(_))));
    let mut rng = Rng::new(1);
    let mut errs = vec![0.0f32; 6 * B];
    assert!(matches!(
        fisher::sample_output_error(&net, &ws, &mut errs, &mut rng),
        Err(Error::Shape(_))
    ));
    let mut diag = vec![0.0f32; 6];
    assert!(matches!(
        fisher::output_fisher_diagonal(&net, &ws, &mut diag),
        Err(Error::Shape(_))
    ));
    // The right workspace, buffers too short.
    let mut ws = Workspace::new(&net, B, Par::Seq).unwrap();
    net.forward(&mut ws, xm).unwrap();
    assert_eq!(net.output(&ws).unwrap().ncols(), B);
    let mut short = vec![0.0f32; 6 * B - 1];
    match fisher::sample_output_error(&net, &ws, &mut short, &mut rng) {
        Err(Error::Shape(m)) => assert!(m.contains("holds 47 values"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        fisher::output_fisher_diagonal(&net, &ws, &mut diag[..5]),
        Err(Error::Shape(_))
    ));
    fisher::sample_output_error(&net, &ws, &mut errs, &mut rng).unwrap();
    assert!(fisher::output_fisher_diagonal(&net, &ws, &mut diag).unwrap());
    assert_eq!(diag, vec![1.0; 6]);
}
