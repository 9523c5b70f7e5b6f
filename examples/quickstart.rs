//! Quickstart: train a small autoencoder on the embedded MNIST digits with the
//! natural gradient and with SGD, from the same initial weights, and compare
//! their test losses.
//!
//!     cargo run --release --example quickstart
//!
//! The network is 784-64-16-64-784: sigmoid hidden units, a linear 16-unit
//! code, and a Bernoulli output (binary cross-entropy on the pixels, which
//! lie in [0, 1]). Both optimizers see the same minibatches in the same
//! order and get the same time in steps (evaluation is not counted). Problem sizes are small so that a debug build
//! (`cargo run --example quickstart`) also finishes in about a minute.

use std::time::Instant;

use natgrad::data::{load_embedded, Split};
use natgrad::kernels::{Activation, MatRef, Par};
use natgrad::mlp::{Init, Likelihood, Mlp};
use natgrad::optim::{NaturalGradient, NaturalGradientConfig, Optimizer, Sgd, SgdConfig};
use natgrad::workspace::Workspace;

/// Training images used (of the 8,000 embedded) and test images (of 2,000).
const TRAIN: usize = 2000;
const TEST: usize = 500;
/// Minibatch size, and the natural gradient's number of steps.
const BATCH: usize = 200;
const STEPS: usize = 30;

/// The first `n` images of a split as one column-major matrix, one image
/// per column (the layout every natgrad call takes).
fn first_images(split: &Split, n: usize) -> Vec<f32> {
    // The split holds its pixels as bytes; `to_f32` widens them to `byte / 255`.
    let n = n.min(split.count);
    split.to_f32()[..n * split.features()].to_vec()
}

/// Trains `net` with `opt` on minibatches of `train` in order (the targets of
/// an autoencoder are its inputs), printing the test loss every ten steps,
/// for `STEPS` steps and then on until `min_seconds` of stepping have
/// passed. Returns the final test loss and the seconds spent in steps.
fn train(
    name: &str,
    net: &mut Mlp,
    opt: &mut dyn Optimizer,
    (train, test, features): (&[f32], &[f32], usize),
    min_seconds: f64,
) -> Result<(f64, f64), natgrad::Error> {
    // A workspace holds every buffer of the forward and backward passes for
    // up to BATCH examples; after this, steps allocate nothing.
    let mut ws = Workspace::new(net, BATCH, Par::rayon(0))?;
    let test = MatRef::from_column_major_slice(test, features, test.len() / features);
    println!(
        "{name:>4}: step    0  test loss {:7.2}",
        net.evaluate(&mut ws, test, test)?
    );
    let batches = train.len() / (features * BATCH);
    let (mut step, mut seconds) = (0, 0.0);
    while step < STEPS || (seconds < min_seconds && step < 100 * STEPS) {
        let k = step % batches;
        let chunk = &train[k * features * BATCH..(k + 1) * features * BATCH];
        let x = MatRef::from_column_major_slice(chunk, features, BATCH);
        let start = Instant::now();
        opt.step(net, &mut ws, x, x)?; // inputs and targets are the same images
        seconds += start.elapsed().as_secs_f64();
        step += 1;
        if step % 10 == 0 && step <= STEPS {
            // Evaluation is not timed: it is the same for both optimizers.
            println!(
                "{name:>4}: step {step:4}  test loss {:7.2}  ({seconds:.2} s in steps)",
                net.evaluate(&mut ws, test, test)?
            );
        }
    }
    let loss = net.evaluate(&mut ws, test, test)?;
    if step > STEPS {
        println!("{name:>4}: step {step:4}  test loss {loss:7.2}  ({seconds:.2} s in steps)");
    }
    Ok((loss, seconds))
}

fn main() -> Result<(), natgrad::Error> {
    // 10,000 real MNIST digits compiled into the crate: no download.
    let data = load_embedded()?;
    let features = data.train.features(); // 28 x 28 = 784
    let train_x = first_images(&data.train, TRAIN);
    let test_x = first_images(&data.test, TEST);

    let sizes = [features, 64, 16, 64, features];
    let activations = [
        Activation::Sigmoid,
        Activation::Identity, // the code layer
        Activation::Sigmoid,
        Activation::Identity, // logits: the Bernoulli likelihood applies the sigmoid
    ];
    let initial = Mlp::new(
        &sizes,
        &activations,
        Likelihood::Bernoulli,
        Init::GlorotUniform,
        1, // seed of the initial weights
    )?;
    println!(
        "autoencoder {sizes:?}, {} parameters; {TRAIN} training and {TEST} test digits; \
         {STEPS} steps of {BATCH} examples each",
        initial.num_params()
    );
    println!("loss: binary cross-entropy per image (summed over 784 pixels)\n");

    // The natural gradient: Kronecker-factored curvature from this minibatch's
    // inputs and from errors of targets sampled from the model itself, with
    // Levenberg-Marquardt damping adapted at each step.
    let mut ng_net = initial.clone();
    let mut ng = NaturalGradient::new(
        &ng_net,
        BATCH,
        NaturalGradientConfig {
            damping: 0.01,
            exact_output_factor: true,
            ..NaturalGradientConfig::default()
        },
    )?;
    let data = (&train_x[..], &test_x[..], features);
    let (ng_loss, ng_seconds) = train("ng", &mut ng_net, &mut ng, data, 0.0)?;

    // SGD with momentum from the same initial weights and the same
    // minibatches: the same STEPS steps, then on for as long as the natural
    // gradient's steps took (its steps cost more; SGD gets the same clock).
    let mut sgd_net = initial.clone();
    let mut sgd = Sgd::new(
        &sgd_net,
        SgdConfig {
            learning_rate: 0.04,
            momentum: 0.9,
            ..SgdConfig::default()
        },
    )?;
    println!();
    let (sgd_loss, _) = train("sgd", &mut sgd_net, &mut sgd, data, ng_seconds)?;

    println!(
        "\ntest loss after {ng_seconds:.2} s of steps: natural gradient {ng_loss:.2}, SGD {sgd_loss:.2}"
    );
    Ok(())
}
