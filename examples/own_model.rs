//! A model that is not an `Mlp`, trained with the layer-level natural
//! gradient (`natgrad::optim::KroneckerPreconditioner`) and, from the same
//! initial weights and on the same clock, with plain SGD.
//!
//! The model is an autoencoder with a residual block in its code layer:
//!
//! ```text
//! h1   = tanh(W1 x + b1)                (784 -> 32)
//! h2   = h1 + tanh(W2 h1 + b2)          (32 -> 32, skip connection)
//! yhat = W3 h2 + b3                     (32 -> 784)
//! ```
//!
//! under a Gaussian likelihood (squared error). Its three dense layers are
//! written out by hand with the kernels' `gemm`: the preconditioner only
//! ever sees each layer's inputs, its errors for targets sampled from the
//! model, and its gradient.
//!
//! ```text
//! cargo run --release --example own_model            # 5 s per optimizer
//! cargo run --release --example own_model -- 20      # 20 s per optimizer
//! ```

use natgrad::kernels::gemm::{gemm, gemm_scratch};
use natgrad::kernels::rng::Rng;
use natgrad::kernels::{MatMut, MatRef, MemBuffer, MemStack, Par, StackReq};
use natgrad::optim::{KroneckerPreconditioner, NaturalGradientConfig};
use std::time::{Duration, Instant};

const CODE: usize = 32;
const BATCH: usize = 250;

fn view(v: &[f32], r: usize, c: usize) -> MatRef<'_, f32> {
    MatRef::from_column_major_slice(&v[..r * c], r, c)
}
fn view_mut(v: &mut [f32], r: usize, c: usize) -> MatMut<'_, f32> {
    MatMut::from_column_major_slice_mut(&mut v[..r * c], r, c)
}

/// A dense layer's `[W | b]`, `n_out x (n_in + 1)`, column-major, with its
/// gradient and preconditioned gradient.
#[derive(Clone)]
struct Dense {
    n_in: usize,
    n_out: usize,
    params: Vec<f32>,
    grad: Vec<f32>,
    step: Vec<f32>,
}

impl Dense {
    fn new(n_in: usize, n_out: usize, gain: f32, rng: &mut Rng) -> Dense {
        let mut params = vec![0.0; n_out * (n_in + 1)];
        rng.fill_normal(&mut params[..n_out * n_in]);
        let s = gain / (n_in as f32).sqrt();
        params[..n_out * n_in].iter_mut().for_each(|w| *w *= s);
        let len = params.len();
        Dense {
            n_in,
            n_out,
            params,
            grad: vec![0.0; len],
            step: vec![0.0; len],
        }
    }
    /// `out = [W | b] [input; 1]` for an input that already has its row of ones.
    fn apply(&self, input: &[f32], out: &mut [f32], b: usize, par: Par, stack: &mut MemStack) {
        let p = view(&self.params, self.n_out, self.n_in + 1);
        gemm(
            view_mut(out, self.n_out, b),
            0.0,
            p,
            view(input, self.n_in + 1, b),
            1.0,
            par,
            stack,
        )
        .expect("shapes match by construction");
    }
    /// `out = W^T e` (the error at the layer's input, before any derivative).
    fn back(&self, e: &[f32], out: &mut [f32], b: usize, par: Par, stack: &mut MemStack) {
        let w = view(&self.params, self.n_out, self.n_in);
        gemm(
            view_mut(out, self.n_in, b),
            0.0,
            w.transpose(),
            view(e, self.n_out, b),
            1.0,
            par,
            stack,
        )
        .expect("shapes match by construction");
    }
    /// The mean loss's gradient `e [input; 1]^T / b`.
    fn gradient(&mut self, e: &[f32], input: &[f32], b: usize, par: Par, stack: &mut MemStack) {
        let (o, i) = (self.n_out, self.n_in + 1);
        let g = view_mut(&mut self.grad, o, i);
        gemm(
            g,
            0.0,
            view(e, o, b),
            view(input, i, b).transpose(),
            1.0 / b as f32,
            par,
            stack,
        )
        .expect("shapes match by construction");
    }
}

/// The model and every buffer a step needs, allocated once.
#[derive(Clone)]
struct Model {
    n: usize,
    layers: [Dense; 3],
    /// Inputs of the three layers with a row of ones: `[x; 1]`, `[h1; 1]`, `[h2; 1]`.
    inputs: [Vec<f32>; 3],
    /// `tanh(W2 h1 + b2)`, and the output error `yhat - x`.
    t2: Vec<f32>,
    err: Vec<f32>,
    /// Errors at the three layers' pre-activations, and scratch for `W^T e`.
    e: [Vec<f32>; 3],
    back: Vec<f32>,
}

impl Model {
    fn new(n: usize, seed: u64) -> Model {
        let mut rng = Rng::new(seed);
        let layers = [
            Dense::new(n, CODE, 1.0, &mut rng),
            Dense::new(CODE, CODE, 0.5, &mut rng),
            Dense::new(CODE, n, 1.0, &mut rng),
        ];
        let b = BATCH;
        Model {
            n,
            inputs: [
                vec![0.0; (n + 1) * b],
                vec![0.0; (CODE + 1) * b],
                vec![0.0; (CODE + 1) * b],
            ],
            t2: vec![0.0; CODE * b],
            err: vec![0.0; n * b],
            e: [vec![0.0; CODE * b], vec![0.0; CODE * b], vec![0.0; n * b]],
            back: vec![0.0; CODE * b],
            layers,
        }
    }

    /// Forward pass on `x` (`n x b`): fills the layers' inputs and the
    /// output error; returns the mean loss `|yhat - x|^2 / 2` per example.
    fn forward(&mut self, x: &[f32], b: usize, scratch: &mut MemBuffer, par: Par) -> f64 {
        let (n, c) = (self.n, CODE);
        let stack = MemStack::new(scratch);
        let [in1, in2, in3] = &mut self.inputs;
        for j in 0..b {
            in1[j * (n + 1)..j * (n + 1) + n].copy_from_slice(&x[j * n..(j + 1) * n]);
            in1[j * (n + 1) + n] = 1.0;
        }
        // h1 = tanh(W1 x + b1), into the first rows of [h1; 1].
        self.layers[0].apply(in1, &mut self.back, b, par, stack);
        for j in 0..b {
            for i in 0..c {
                in2[j * (c + 1) + i] = self.back[j * c + i].tanh();
            }
            in2[j * (c + 1) + c] = 1.0;
        }
        // h2 = h1 + tanh(W2 h1 + b2).
        self.layers[1].apply(in2, &mut self.t2, b, par, stack);
        for j in 0..b {
            for i in 0..c {
                let t = self.t2[j * c + i].tanh();
                self.t2[j * c + i] = t;
                in3[j * (c + 1) + i] = in2[j * (c + 1) + i] + t;
            }
            in3[j * (c + 1) + c] = 1.0;
        }
        // err = W3 h2 + b3 - x.
        self.layers[2].apply(in3, &mut self.err, b, par, stack);
        let mut total = 0.0f64;
        for (e, &t) in self.err[..n * b].iter_mut().zip(x) {
            *e -= t;
            total += (*e as f64) * (*e as f64);
        }
        total / (2 * b) as f64
    }

    /// Back-propagates the output error `out_err` (`n x b`) into `self.e`,
    /// the errors at the three pre-activations.
    fn backward(&mut self, out_err: &[f32], b: usize, scratch: &mut MemBuffer, par: Par) {
        let c = CODE;
        let stack = MemStack::new(scratch);
        self.e[2][..out_err.len()].copy_from_slice(out_err);
        // dL/dh2 = W3^T e3; through the residual block to h1 and W2's pre-activation.
        self.layers[2].back(&self.e[2], &mut self.back, b, par, stack);
        for j in 0..b {
            for i in 0..c {
                let t = self.t2[j * c + i];
                self.e[1][j * c + i] = self.back[j * c + i] * (1.0 - t * t);
            }
        }
        let [e0, e1, _] = &mut self.e;
        self.layers[1].back(e1, e0, b, par, stack);
        for j in 0..b {
            for i in 0..c {
                let h1 = self.inputs[1][j * (c + 1) + i];
                // dL/dh1 = dL/dh2 (the skip) + W2^T e2, times tanh' at h1.
                self.e[0][j * c + i] =
                    (self.e[0][j * c + i] + self.back[j * c + i]) * (1.0 - h1 * h1);
            }
        }
    }

    /// The gradients of the mean loss from the errors in `self.e`.
    fn gradients(&mut self, b: usize, scratch: &mut MemBuffer, par: Par) {
        let stack = MemStack::new(scratch);
        for (k, layer) in self.layers.iter_mut().enumerate() {
            layer.gradient(&self.e[k], &self.inputs[k], b, par, stack);
        }
    }

    fn scratch(n: usize, par: Par) -> MemBuffer {
        MemBuffer::new(StackReq::any_of(&[
            gemm_scratch(CODE, BATCH, n + 1, par),
            gemm_scratch(CODE, BATCH, CODE + 1, par),
            gemm_scratch(n, BATCH, CODE + 1, par),
            gemm_scratch(CODE, BATCH, n, par),
            gemm_scratch(CODE, BATCH, CODE, par),
            gemm_scratch(CODE, n + 1, BATCH, par),
            gemm_scratch(CODE, CODE + 1, BATCH, par),
            gemm_scratch(n, CODE + 1, BATCH, par),
        ]))
    }
}

/// Mean test loss, in minibatches (off the clock).
fn evaluate(model: &mut Model, x: &[f32], scratch: &mut MemBuffer, par: Par) -> f64 {
    let n = model.n;
    let count = x.len() / n;
    let mut total = 0.0;
    for start in (0..count).step_by(BATCH) {
        let b = BATCH.min(count - start);
        total += model.forward(&x[start * n..(start + b) * n], b, scratch, par) * b as f64;
    }
    total / count as f64
}

#[derive(Clone, Copy)]
enum Method {
    Sgd { learning_rate: f32 },
    Natural { learning_rate: f32 },
}

/// Trains a copy of `init` for `budget` of wall-clock time and returns
/// (steps, final test loss).
fn train(
    init: &Model,
    method: Method,
    train_x: &[f32],
    test_x: &[f32],
    budget: Duration,
    par: Par,
) -> Result<(usize, f64), natgrad::Error> {
    let mut model = init.clone();
    let n = model.n;
    let count = train_x.len() / n;
    let mut scratch = Model::scratch(n, par);
    let shapes: Vec<(usize, usize)> = model.layers.iter().map(|l| (l.n_in, l.n_out)).collect();
    let config = NaturalGradientConfig {
        factor_decay: 0.95,
        refresh_interval: 5,
        ..Default::default()
    };
    let mut pre = KroneckerPreconditioner::new(&shapes, BATCH, config)?;
    let mut rng = Rng::new(11);
    let mut sampled = vec![0.0f32; n * BATCH];
    let (mut steps, mut clock) = (0, Duration::ZERO);
    while clock < budget {
        let start = Instant::now();
        let first = (steps * BATCH) % (count - BATCH + 1);
        let x = &train_x[first * n..(first + BATCH) * n];
        let loss = model.forward(x, BATCH, &mut scratch, par);
        match method {
            Method::Sgd { learning_rate } => {
                let err = std::mem::take(&mut model.err);
                model.backward(&err, BATCH, &mut scratch, par);
                model.err = err;
                model.gradients(BATCH, &mut scratch, par);
                for l in &mut model.layers {
                    l.params
                        .iter_mut()
                        .zip(&l.grad)
                        .for_each(|(w, g)| *w -= learning_rate * g);
                }
            }
            Method::Natural { learning_rate } => {
                if pre.begin_step() {
                    // Targets sampled from the model, yhat + z with z ~ N(0, I):
                    // the output error is -z. Back-propagate it and hand each
                    // layer its inputs and sampled errors.
                    rng.fill_normal(&mut sampled);
                    sampled.iter_mut().for_each(|v| *v = -*v);
                    model.backward(&sampled, BATCH, &mut scratch, par);
                    for (k, layer) in model.layers.iter().enumerate() {
                        let inputs = view(&model.inputs[k], layer.n_in + 1, BATCH);
                        let errors = view(&model.e[k], layer.n_out, BATCH);
                        pre.observe(k, inputs.subrows(0, layer.n_in), errors, par)?;
                    }
                }
                let err = std::mem::take(&mut model.err);
                model.backward(&err, BATCH, &mut scratch, par);
                model.err = err;
                model.gradients(BATCH, &mut scratch, par);
                for (k, l) in model.layers.iter_mut().enumerate() {
                    let (o, i) = (l.n_out, l.n_in + 1);
                    pre.precondition(k, view(&l.grad, o, i), view_mut(&mut l.step, o, i), par)?;
                    l.params
                        .iter_mut()
                        .zip(&l.step)
                        .for_each(|(w, d)| *w -= learning_rate * d);
                }
                // The paper's Levenberg-Marquardt rule, on this minibatch.
                let after = model.forward(x, BATCH, &mut scratch, par);
                pre.adapt_damping(after - loss, pre.predicted_change(learning_rate));
            }
        }
        steps += 1;
        clock += start.elapsed();
    }
    Ok((steps, evaluate(&mut model, test_x, &mut scratch, par)))
}

fn main() -> Result<(), natgrad::Error> {
    let default_secs = if cfg!(debug_assertions) { 2.0 } else { 5.0 };
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_secs);
    let budget = Duration::from_secs_f64(secs);
    let par = Par::rayon(0);
    let data = natgrad::data::load_embedded()?;
    let n = data.train.features();
    // One image per column, pixels widened from bytes to `byte / 255`.
    let (train_x, test_x) = (data.train.to_f32(), data.test.to_f32());
    let mut init = Model::new(n, 3);
    let mut scratch = Model::scratch(n, par);
    println!(
        "autoencoder {n}-{CODE}-({CODE} residual)-{n}, Gaussian, minibatch {BATCH}, \
         {secs} s of training each (evaluation off the clock)"
    );
    println!(
        "initial test loss {:.2}",
        evaluate(&mut init, &test_x, &mut scratch, par)
    );
    for (name, method) in [
        // The best of 0.01, 0.03, 0.05, 0.1 and 0.3 in 5 s runs.
        (
            "sgd, step size 0.03",
            Method::Sgd {
                learning_rate: 0.03,
            },
        ),
        ("natural gradient", Method::Natural { learning_rate: 1.0 }),
    ] {
        let (steps, loss) = train(&init, method, &train_x, &test_x, budget, par)?;
        println!("{name:>20}: {steps:5} steps, test loss {loss:.2}");
    }
    Ok(())
}
