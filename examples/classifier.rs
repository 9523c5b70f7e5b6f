//! A digit classifier with a categorical (softmax) output, trained with the
//! natural gradient on the embedded MNIST digits; reports test accuracy.
//!
//!     cargo run --release --example classifier
//!
//! The network is 784-64-10 with a tanh hidden layer and 10 logits; the loss
//! is the cross-entropy of `softmax(logits)` against one-hot labels
//! (`Likelihood::Categorical`). For the natural gradient, the backward factor
//! is built from errors of labels *sampled from the model's own predicted
//! distribution*, not from the true labels: that is what makes it the Fisher
//! information rather than the "empirical Fisher".

use std::time::Instant;

use natgrad::data::{load_embedded, Split};
use natgrad::kernels::{Activation, MatRef, Par};
use natgrad::mlp::{Init, Likelihood, Mlp};
use natgrad::optim::{NaturalGradient, NaturalGradientConfig, Optimizer};
use natgrad::workspace::Workspace;

const CLASSES: usize = 10;
/// Training images used (of the 8,000 embedded); the whole test split is used.
const TRAIN: usize = 4000;
const BATCH: usize = 250;
/// Passes over the training images.
const EPOCHS: usize = 3;

/// Images (one per column) and one-hot targets (one per column) of the first
/// `n` examples of a split, and their labels.
fn examples(split: &Split, n: usize) -> (Vec<f32>, Vec<f32>, Vec<u8>) {
    let n = n.min(split.count);
    let images = split.to_f32()[..n * split.features()].to_vec();
    let labels = split.labels[..n].to_vec();
    let mut one_hot = vec![0.0f32; CLASSES * n];
    for (j, &label) in labels.iter().enumerate() {
        one_hot[j * CLASSES + usize::from(label)] = 1.0;
    }
    (images, one_hot, labels)
}

fn main() -> Result<(), natgrad::Error> {
    let data = load_embedded()?;
    let features = data.train.features(); // 784
    let (train_x, train_y, _) = examples(&data.train, TRAIN);
    let (test_x, test_y, test_labels) = examples(&data.test, data.test.count);
    let n_test = test_labels.len();
    let test_xm = MatRef::from_column_major_slice(&test_x, features, n_test);
    let test_ym = MatRef::from_column_major_slice(&test_y, CLASSES, n_test);

    let mut net = Mlp::new(
        &[features, 64, CLASSES],
        &[Activation::Tanh, Activation::Identity], // the last layer gives logits
        Likelihood::Categorical,
        Init::GlorotUniform,
        1,
    )?;
    let mut ws = Workspace::new(&net, BATCH, Par::rayon(0))?;
    let mut opt = NaturalGradient::new(&net, BATCH, NaturalGradientConfig::default())?;
    println!(
        "classifier [{features}, 64, {CLASSES}], {} parameters; {TRAIN} training and {n_test} test digits",
        net.num_params()
    );
    println!(
        "before training: test accuracy {:5.1}% (chance: 10%)",
        100.0 * net.accuracy(&mut ws, test_xm, &test_labels)?
    );

    let start = Instant::now();
    for epoch in 1..=EPOCHS {
        for k in 0..TRAIN / BATCH {
            let x = &train_x[k * BATCH * features..(k + 1) * BATCH * features];
            let y = &train_y[k * BATCH * CLASSES..(k + 1) * BATCH * CLASSES];
            opt.step(
                &mut net,
                &mut ws,
                MatRef::from_column_major_slice(x, features, BATCH),
                MatRef::from_column_major_slice(y, CLASSES, BATCH),
            )?;
        }
        // `accuracy` runs the test set through the network in chunks of the
        // workspace's batch and compares the largest logit with each label;
        // `evaluate` gives the mean cross-entropy.
        println!(
            "epoch {epoch}: test accuracy {:5.1}%, test loss {:.3}  ({:.1} s)",
            100.0 * net.accuracy(&mut ws, test_xm, &test_labels)?,
            net.evaluate(&mut ws, test_xm, test_ym)?,
            start.elapsed().as_secs_f64()
        );
    }

    // Per-example predictions, e.g. for a confusion matrix.
    let mut predicted = vec![0usize; n_test];
    net.predict_classes(&mut ws, test_xm, &mut predicted)?;
    let shown: Vec<String> = predicted[..10].iter().map(|c| c.to_string()).collect();
    let truth: Vec<String> = test_labels[..10].iter().map(|c| c.to_string()).collect();
    println!("first ten test digits: predicted {}", shown.join(" "));
    println!("                       labelled  {}", truth.join(" "));
    Ok(())
}
