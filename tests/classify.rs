//! `Mlp::predict_classes` and `Mlp::accuracy`: they agree with an argmax of
//! the network's outputs computed here, across chunk boundaries; a classifier
//! trained with the natural gradient on separable data gets its accuracy up;
//! bad shapes and labels are refused; prediction allocates nothing.

use natgrad::kernels::alloc_counter::{
    track_current_thread, tracked_allocations, CountingAllocator,
};
use natgrad::kernels::rng::Rng;
use natgrad::kernels::{Activation, MatRef, Par};
use natgrad::mlp::{Init, Likelihood, Mlp};
use natgrad::optim::{NaturalGradient, NaturalGradientConfig, Optimizer};
use natgrad::workspace::Workspace;
use natgrad::Error;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const INPUTS: usize = 6;
const CLASSES: usize = 4;

/// `n` examples of `CLASSES` Gaussian blobs in `INPUTS` dimensions, the
/// centres drawn from `seed`; labels cycle through the classes.
fn blobs(n: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
    let mut rng = Rng::new(seed);
    let mut centres = vec![0.0f32; INPUTS * CLASSES];
    rng.fill_normal(&mut centres);
    let mut x = vec![0.0f32; INPUTS * n];
    rng.fill_normal(&mut x);
    let labels: Vec<u8> = (0..n).map(|j| (j % CLASSES) as u8).collect();
    for (j, &l) in labels.iter().enumerate() {
        for i in 0..INPUTS {
            x[j * INPUTS + i] = 0.3 * x[j * INPUTS + i] + 2.0 * centres[l as usize * INPUTS + i];
        }
    }
    (x, labels)
}

fn one_hot(labels: &[u8]) -> Vec<f32> {
    let mut y = vec![0.0f32; CLASSES * labels.len()];
    for (j, &l) in labels.iter().enumerate() {
        y[j * CLASSES + l as usize] = 1.0;
    }
    y
}

fn classifier(seed: u64) -> Mlp {
    Mlp::new(
        &[INPUTS, 16, CLASSES],
        &[Activation::Tanh, Activation::Identity],
        Likelihood::Categorical,
        Init::GlorotUniform,
        seed,
    )
    .unwrap()
}

#[test]
fn predictions_are_the_argmax_of_the_outputs_across_chunks() {
    let n = 37;
    let (x, labels) = blobs(n, 3);
    let xm = MatRef::from_column_major_slice(&x, INPUTS, n);
    for lik in [
        Likelihood::Categorical,
        Likelihood::Bernoulli,
        Likelihood::Gaussian,
    ] {
        let net = Mlp::new(
            &[INPUTS, 9, CLASSES],
            &[Activation::Tanh, Activation::Identity],
            lik,
            Init::GlorotUniform,
            7,
        )
        .unwrap();
        // Reference: one forward pass of all examples, argmax by hand.
        let mut big = Workspace::new(&net, n, Par::Seq).unwrap();
        net.forward(&mut big, xm).unwrap();
        let out = net.output(&big).unwrap();
        let expected: Vec<usize> = (0..n)
            .map(|j| {
                let col: Vec<f32> = (0..CLASSES).map(|i| out[(i, j)]).collect();
                let max = col.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                col.iter().position(|&v| v == max).unwrap()
            })
            .collect();
        let expected_acc = expected
            .iter()
            .zip(&labels)
            .filter(|(&p, &l)| p == l as usize)
            .count() as f64
            / n as f64;
        // A workspace of 5 columns: 37 examples take 8 chunks, the last partial.
        for par in [Par::Seq, Par::rayon(2)] {
            let mut ws = Workspace::new(&net, 5, par).unwrap();
            let mut classes = vec![usize::MAX; n];
            net.predict_classes(&mut ws, xm, &mut classes).unwrap();
            assert_eq!(classes, expected, "{lik:?} {par:?}");
            let acc = net.accuracy(&mut ws, xm, &labels).unwrap();
            assert_eq!(acc, expected_acc, "{lik:?} {par:?}");
        }
    }
}

#[test]
fn natural_gradient_training_raises_the_accuracy() {
    let (n_train, n_test, b) = (400, 200, 100);
    let (x, labels) = blobs(n_train + n_test, 11);
    let y = one_hot(&labels);
    let mut net = classifier(5);
    let mut ws = Workspace::new(&net, b, Par::Seq).unwrap();
    let mut opt = NaturalGradient::new(&net, b, NaturalGradientConfig::default()).unwrap();
    let test_x = MatRef::from_column_major_slice(&x[INPUTS * n_train..], INPUTS, n_test);
    let test_labels = &labels[n_train..];
    let before = net.accuracy(&mut ws, test_x, test_labels).unwrap();
    for step in 0..40 {
        let j0 = (step * b) % n_train;
        let xb = MatRef::from_column_major_slice(&x[INPUTS * j0..INPUTS * (j0 + b)], INPUTS, b);
        let yb = MatRef::from_column_major_slice(&y[CLASSES * j0..CLASSES * (j0 + b)], CLASSES, b);
        opt.step(&mut net, &mut ws, xb, yb).unwrap();
    }
    let after = net.accuracy(&mut ws, test_x, test_labels).unwrap();
    // Four well-separated blobs: a trained classifier gets nearly all of
    // them; chance is 1/4.
    assert!(
        after > 0.9 && after > before,
        "accuracy {before} before training, {after} after"
    );
}

fn shape<T>(r: Result<T, Error>) -> bool {
    matches!(r, Err(Error::Shape(_)))
}

#[test]
fn bad_shapes_and_labels_are_refused() {
    let net = classifier(1);
    let mut ws = Workspace::new(&net, 8, Par::Seq).unwrap();
    let (x, labels) = blobs(8, 2);
    let xm = MatRef::from_column_major_slice(&x, INPUTS, 8);
    let mut classes = vec![0usize; 7];
    assert!(shape(net.predict_classes(&mut ws, xm, &mut classes)));
    assert!(shape(net.accuracy(&mut ws, xm, &labels[..7])));
    assert!(shape(net.accuracy(&mut ws, xm.subcols(0, 0), &[])));
    let mut bad = labels.clone();
    bad[3] = CLASSES as u8;
    assert!(shape(net.accuracy(&mut ws, xm, &bad)));
    // Wrong input width.
    let narrow = MatRef::from_column_major_slice(&x[..(INPUTS - 1) * 8], INPUTS - 1, 8);
    let mut classes = vec![0usize; 8];
    assert!(shape(net.predict_classes(&mut ws, narrow, &mut classes)));
    // Non-finite input.
    let mut nan = x.clone();
    nan[5] = f32::NAN;
    let nanm = MatRef::from_column_major_slice(&nan, INPUTS, 8);
    assert!(matches!(
        net.accuracy(&mut ws, nanm, &labels),
        Err(Error::NonFinite(_))
    ));
}

#[test]
fn prediction_allocates_nothing() {
    let n = 50;
    let net = classifier(4);
    let (x, labels) = blobs(n, 6);
    let xm = MatRef::from_column_major_slice(&x, INPUTS, n);
    let mut ws = Workspace::new(&net, 16, Par::Seq).unwrap();
    let mut classes = vec![0usize; n];
    // Count this thread only (the harness runs other tests on other threads);
    // the counter does see this thread's allocations.
    track_current_thread(true);
    let before = tracked_allocations();
    drop(std::hint::black_box(vec![1u8; 10]));
    assert!(
        tracked_allocations() > before,
        "allocations are not counted"
    );
    let before = tracked_allocations();
    net.predict_classes(&mut ws, xm, &mut classes).unwrap();
    let acc = net.accuracy(&mut ws, xm, &labels).unwrap();
    let allocated = tracked_allocations() - before;
    track_current_thread(false);
    assert_eq!(allocated, 0);
    assert!((0.0..=1.0).contains(&acc));
}
