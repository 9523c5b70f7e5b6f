//! The trained network of the online experiment in f32 ([`LinearStudent`]),
//! and its two online optimizers: minibatch SGD ([`OnlineSgd`]) and the
//! paper's online natural gradient on the library's per-layer
//! [`KroneckerPreconditioner`] ([`OnlineNaturalGradient`]).
//!
//! Why f32: the online methods are timed against each other, and the
//! library's fast kernels (`natgrad_kernels::gemm`, and the preconditioner's
//! SYRK, Cholesky and solves) are f32. The test error is evaluated in f64 on
//! an f64 copy ([`LinearStudent::to_deep_linear`]), off the clock; the
//! closed form stays in f64 ([`super::DeepLinear`]).

use faer::Mat;
use natgrad_kernels::gemm::{gemm, gemm_scratch};
use natgrad_kernels::rng::Rng;
use natgrad_kernels::{MatMut, MatRef, MemBuffer, MemStack, Par, StackReq};

use super::network::DeepLinear;
use crate::optim::{DampingAdaptation, KroneckerPreconditioner, NaturalGradientConfig};
use crate::Error;

/// A deep linear network `x -> W_L ... W_1 x` in f32, without biases, with
/// every buffer of a step at minibatches up to `max_batch` allocated once.
///
/// Matrices are column-major, one example per column (DESIGN.md).
pub struct LinearStudent {
    widths: Vec<usize>,
    /// Layer `l` (0-based): `widths[l + 1] x widths[l]`.
    weights: Vec<Vec<f32>>,
    /// `acts[l]`: the input of layer `l` (`acts[0]` the minibatch), and
    /// `acts[L]` the output; `widths[l] x max_batch`.
    acts: Vec<Vec<f32>>,
    /// `errors[l]`: the error at the output of layer `l`,
    /// `widths[l + 1] x max_batch`.
    errors: Vec<Vec<f32>>,
    /// `grads[l]`: `[dW_l | 0]`, `widths[l + 1] x (widths[l] + 1)`, the zero
    /// bias column the preconditioner's layout wants.
    grads: Vec<Vec<f32>>,
    max_batch: usize,
    batch: usize,
    scratch: MemBuffer,
}

impl LinearStudent {
    /// An f32 copy of `net`, for minibatches of up to `max_batch` columns.
    ///
    /// Errors: [`Error::InvalidConfig`] for `max_batch == 0`.
    pub fn new(net: &DeepLinear, max_batch: usize) -> Result<LinearStudent, Error> {
        if max_batch == 0 {
            return Err(Error::InvalidConfig("max_batch must be at least 1".into()));
        }
        let widths = net.widths();
        let weights = net
            .layers()
            .iter()
            .map(|w| {
                let mut v = Vec::with_capacity(w.nrows() * w.ncols());
                for j in 0..w.ncols() {
                    for i in 0..w.nrows() {
                        v.push(w[(i, j)] as f32);
                    }
                }
                v
            })
            .collect();
        let acts = widths.iter().map(|&n| vec![0.0; n * max_batch]).collect();
        let errors = widths[1..]
            .iter()
            .map(|&n| vec![0.0; n * max_batch])
            .collect();
        let grads = widths
            .windows(2)
            .map(|w| vec![0.0; w[1] * (w[0] + 1)])
            .collect();
        let req = StackReq::any_of(
            &widths
                .windows(2)
                .flat_map(|w| {
                    [
                        gemm_scratch(w[1], max_batch, w[0], Par::Seq),
                        gemm_scratch(w[0], max_batch, w[1], Par::Seq),
                        gemm_scratch(w[1], w[0], max_batch, Par::Seq),
                    ]
                })
                .collect::<Vec<_>>(),
        );
        Ok(LinearStudent {
            widths,
            weights,
            acts,
            errors,
            grads,
            max_batch,
            batch: 0,
            scratch: MemBuffer::new(req),
        })
    }

    /// The width profile `[n_0, .., n_L]`.
    pub fn widths(&self) -> &[usize] {
        &self.widths
    }

    /// Number of layers `L`.
    pub fn depth(&self) -> usize {
        self.weights.len()
    }

    /// An f64 copy, for evaluation.
    pub fn to_deep_linear(&self) -> Result<DeepLinear, Error> {
        let layers = self
            .widths
            .windows(2)
            .zip(&self.weights)
            .map(|(w, v)| Mat::from_fn(w[1], w[0], |i, j| v[j * w[1] + i] as f64))
            .collect();
        DeepLinear::new(layers)
    }

    fn check_batch(&self, x: MatRef<'_, f32>, y: MatRef<'_, f32>) -> Result<usize, Error> {
        let (n0, nl) = (self.widths[0], self.widths[self.depth()]);
        let b = x.ncols();
        if x.nrows() != n0 || y.nrows() != nl || y.ncols() != b {
            return Err(Error::Shape(format!(
                "a minibatch for widths {:?} is {n0} x b inputs and {nl} x b targets, got {} x {} and {} x {}",
                self.widths,
                x.nrows(),
                b,
                y.nrows(),
                y.ncols()
            )));
        }
        if b == 0 || b > self.max_batch {
            return Err(Error::Shape(format!(
                "minibatch of {b} columns: between 1 and {} allowed",
                self.max_batch
            )));
        }
        Ok(b)
    }

    /// Forward pass; returns `1/2 sum |W x - y|^2 / b` and leaves the
    /// per-example output errors `W x - y` in the last error buffer.
    fn forward_loss(&mut self, x: MatRef<'_, f32>, y: MatRef<'_, f32>) -> Result<f64, Error> {
        let b = self.check_batch(x, y)?;
        self.batch = b;
        let n0 = self.widths[0];
        MatMut::from_column_major_slice_mut(&mut self.acts[0][..n0 * b], n0, b).copy_from(x);
        for l in 0..self.depth() {
            let (n_in, n_out) = (self.widths[l], self.widths[l + 1]);
            let (before, after) = self.acts.split_at_mut(l + 1);
            let input = MatRef::from_column_major_slice(&before[l][..n_in * b], n_in, b);
            let out = MatMut::from_column_major_slice_mut(&mut after[0][..n_out * b], n_out, b);
            let w = MatRef::from_column_major_slice(&self.weights[l], n_out, n_in);
            gemm(
                out,
                0.0,
                w,
                input,
                1.0,
                Par::Seq,
                MemStack::new(&mut self.scratch),
            )?;
        }
        let depth = self.depth();
        let nl = self.widths[depth];
        let out = &self.acts[depth];
        let err = &mut self.errors[depth - 1];
        let mut sum = 0.0f64;
        for j in 0..b {
            for i in 0..nl {
                let e = out[j * nl + i] - y[(i, j)];
                err[j * nl + i] = e;
                sum += (e as f64) * (e as f64);
            }
        }
        Ok(0.5 * sum / b as f64)
    }

    /// The minibatch loss `1/2 sum_columns |W x - y|^2 / b`.
    ///
    /// Errors: [`Error::Shape`] for a minibatch of the wrong shape or size.
    pub fn loss(&mut self, x: MatRef<'_, f32>, y: MatRef<'_, f32>) -> Result<f64, Error> {
        self.forward_loss(x, y)
    }

    /// The minibatch loss and, into the gradient buffers
    /// ([`gradient`](Self::gradient)), the gradient of every layer:
    /// `dW_l = e_l a_l^T / b`, errors propagated as `e_{l-1} = W_l^T e_l`.
    ///
    /// Errors: [`Error::Shape`] for a minibatch of the wrong shape or size.
    pub fn loss_and_gradient(
        &mut self,
        x: MatRef<'_, f32>,
        y: MatRef<'_, f32>,
    ) -> Result<f64, Error> {
        let loss = self.forward_loss(x, y)?;
        let b = self.batch;
        for l in (0..self.depth()).rev() {
            let (n_in, n_out) = (self.widths[l], self.widths[l + 1]);
            let e = MatRef::from_column_major_slice(&self.errors[l][..n_out * b], n_out, b);
            let a = MatRef::from_column_major_slice(&self.acts[l][..n_in * b], n_in, b);
            let g = MatMut::from_column_major_slice_mut(
                &mut self.grads[l][..n_out * n_in],
                n_out,
                n_in,
            );
            gemm(
                g,
                0.0,
                e,
                a.transpose(),
                1.0 / b as f32,
                Par::Seq,
                MemStack::new(&mut self.scratch),
            )?;
            if l > 0 {
                self.propagate_error(l)?;
            }
        }
        Ok(loss)
    }

    /// `e_{l-1} = W_l^T e_l` on the current minibatch.
    fn propagate_error(&mut self, l: usize) -> Result<(), Error> {
        let b = self.batch;
        let (n_in, n_out) = (self.widths[l], self.widths[l + 1]);
        let (below, above) = self.errors.split_at_mut(l);
        let e = MatRef::from_column_major_slice(&above[0][..n_out * b], n_out, b);
        let out = MatMut::from_column_major_slice_mut(&mut below[l - 1][..n_in * b], n_in, b);
        let w = MatRef::from_column_major_slice(&self.weights[l], n_out, n_in);
        gemm(
            out,
            0.0,
            w.transpose(),
            e,
            1.0,
            Par::Seq,
            MemStack::new(&mut self.scratch),
        )?;
        Ok(())
    }

    /// Replaces the errors of the current minibatch by those of targets
    /// sampled from the model, `y~ = W x + z`, `z ~ N(0, I)` (the output
    /// noise of the unit-variance Gaussian likelihood that the squared loss
    /// is): the output error is `-z`, propagated down as the data's. Call
    /// after [`loss_and_gradient`](Self::loss_and_gradient) (the gradient
    /// buffers are kept).
    pub fn sample_errors(&mut self, rng: &mut Rng) -> Result<(), Error> {
        let b = self.batch;
        if b == 0 {
            return Err(Error::InvalidConfig(
                "sample_errors needs a minibatch: call loss_and_gradient first".into(),
            ));
        }
        let depth = self.depth();
        let nl = self.widths[depth];
        rng.fill_normal(&mut self.errors[depth - 1][..nl * b]);
        for l in (1..depth).rev() {
            self.propagate_error(l)?;
        }
        Ok(())
    }

    /// Layer `l`'s input `a_l` on the current minibatch (`n_l x b`).
    pub fn layer_input(&self, l: usize) -> MatRef<'_, f32> {
        let (n, b) = (self.widths[l], self.batch);
        MatRef::from_column_major_slice(&self.acts[l][..n * b], n, b)
    }

    /// Layer `l`'s output errors on the current minibatch (`n_{l+1} x b`).
    pub fn layer_errors(&self, l: usize) -> MatRef<'_, f32> {
        let (n, b) = (self.widths[l + 1], self.batch);
        MatRef::from_column_major_slice(&self.errors[l][..n * b], n, b)
    }

    /// Layer `l`'s gradient as `[dW_l | 0]` (`n_{l+1} x (n_l + 1)`).
    pub fn gradient(&self, l: usize) -> MatRef<'_, f32> {
        let (n_in, n_out) = (self.widths[l], self.widths[l + 1]);
        MatRef::from_column_major_slice(&self.grads[l], n_out, n_in + 1)
    }

    /// `W_l <- W_l + scale * delta`, `delta` the first `n_l` columns of a
    /// column-major `n_{l+1} x m` matrix (`m >= n_l`; a bias column is ignored).
    fn add_to_layer(&mut self, l: usize, delta: &[f32], scale: f32) {
        let n = self.weights[l].len();
        for (w, d) in self.weights[l].iter_mut().zip(&delta[..n]) {
            *w += scale * d;
        }
    }

    /// Whether every weight is finite.
    fn is_finite(&self) -> bool {
        self.weights.iter().flatten().all(|w| w.is_finite())
    }
}

/// Plain minibatch SGD on the mean squared loss: `W_l <- W_l - lr dW_l`.
#[derive(Clone, Copy, Debug)]
pub struct OnlineSgd {
    learning_rate: f32,
}

impl OnlineSgd {
    /// SGD with step `learning_rate > 0`.
    ///
    /// Errors: [`Error::InvalidConfig`] for a non-positive or non-finite rate.
    pub fn new(learning_rate: f32) -> Result<OnlineSgd, Error> {
        if !(learning_rate.is_finite() && learning_rate > 0.0) {
            return Err(Error::InvalidConfig(format!(
                "SGD learning rate must be finite and > 0, got {learning_rate}"
            )));
        }
        Ok(OnlineSgd { learning_rate })
    }

    /// One step on the minibatch `(x, y)`; returns the minibatch loss before it.
    ///
    /// Errors: [`Error::Shape`] for a bad minibatch; [`Error::NonFinite`]
    /// once the weights have overflowed.
    pub fn step(
        &self,
        net: &mut LinearStudent,
        x: MatRef<'_, f32>,
        y: MatRef<'_, f32>,
    ) -> Result<f64, Error> {
        let loss = net.loss_and_gradient(x, y)?;
        for l in 0..net.depth() {
            // The gradient buffer is moved out and back so the layer can be
            // borrowed mutably beside it (no allocation: a swap of vectors).
            let g = std::mem::take(&mut net.grads[l]);
            net.add_to_layer(l, &g, -self.learning_rate);
            net.grads[l] = g;
        }
        if !net.is_finite() {
            return Err(Error::NonFinite("SGD weights overflowed".into()));
        }
        Ok(loss)
    }
}

/// What one online natural-gradient step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OnlineStepReport {
    /// Minibatch loss before the step.
    pub loss_before: f64,
    /// Minibatch loss after the step (before it, if the step was taken back).
    pub loss_after: f64,
    /// The damping `g` for the next step.
    pub damping: f32,
    /// Whether the step was taken back (loss non-finite or more than doubled).
    pub rejected: bool,
}

/// The paper's online natural gradient for a deep linear network (section 4
/// of the paper; docs/math.md section 2): per layer
/// `W_l <- W_l - (eta / L) (G_l + sqrt(g) I)^-1 dW_l (A_l + sqrt(g) I)^-1`,
/// `A_l` the second moment of the layer's inputs on the minibatch and `G_l`
/// that of its errors for targets sampled from the model, both from the
/// current minibatch (no running average), and `g` adapted by the
/// Levenberg-Marquardt rule on the minibatch loss. The factors, their
/// damping and the solves are the library's [`KroneckerPreconditioner`].
///
/// The networks have no biases (the theory's, and the closed form's), while
/// the preconditioner's layout carries one: the gradient's bias column is
/// zero and the update's is dropped. The `W` block of the update then uses
/// `(A + sqrt(g) I - m m^T / (1 + sqrt(g)))^-1`, `m` the minibatch mean of
/// the layer's inputs (a Schur complement), which differs from
/// `(A + sqrt(g) I)^-1` by `O(|m|^2)`, `O(1/b)` for zero-mean inputs.
///
/// A step that makes the minibatch loss non-finite or more than doubles it
/// is taken back and `g` multiplied by 10, as
/// [`NaturalGradient`](crate::optim::NaturalGradient) does.
pub struct OnlineNaturalGradient {
    pre: KroneckerPreconditioner,
    eta: f32,
    rng: Rng,
    deltas: Vec<Vec<f32>>,
}

impl OnlineNaturalGradient {
    /// The optimizer for a network of `widths`, minibatches up to
    /// `max_batch`, step `eta` (the paper's 1; divided by the depth inside),
    /// initial damping `initial_damping` (the authors' linear runs: 0.01) and
    /// the seed of the sampled targets.
    ///
    /// Errors: [`Error::InvalidConfig`] for fewer than two widths, a zero
    /// width, `eta` not finite and positive, or a damping outside
    /// `[1e-6, 1e6]`.
    pub fn new(
        widths: &[usize],
        max_batch: usize,
        eta: f32,
        initial_damping: f32,
        seed: u64,
    ) -> Result<OnlineNaturalGradient, Error> {
        if widths.len() < 2 {
            return Err(Error::InvalidConfig(format!(
                "a network needs at least two widths, got {widths:?}"
            )));
        }
        if !(eta.is_finite() && eta > 0.0) {
            return Err(Error::InvalidConfig(format!(
                "natural-gradient step eta must be finite and > 0, got {eta}"
            )));
        }
        let layers: Vec<(usize, usize)> = widths.windows(2).map(|w| (w[0], w[1])).collect();
        let config = NaturalGradientConfig {
            learning_rate: eta,
            damping: initial_damping,
            adaptation: DampingAdaptation::LevenbergMarquardt { interval: 1 },
            factor_decay: 0.0,
            refresh_interval: 1,
            seed,
            ..NaturalGradientConfig::default()
        };
        let pre = KroneckerPreconditioner::new(&layers, max_batch, config)?;
        let deltas = layers
            .iter()
            .map(|&(n_in, n_out)| vec![0.0; n_out * (n_in + 1)])
            .collect();
        Ok(OnlineNaturalGradient {
            pre,
            eta,
            rng: Rng::new(seed),
            deltas,
        })
    }

    /// The current damping `g`.
    pub fn damping(&self) -> f32 {
        self.pre.damping()
    }

    /// One step on the minibatch `(x, y)`: gradient, sampled errors, factors,
    /// preconditioned update, then the Levenberg-Marquardt check (one more
    /// forward pass).
    ///
    /// Errors: [`Error::Shape`] for a bad minibatch or a network of other
    /// widths; [`Error::NotPositiveDefinite`] or [`Error::NonFinite`] when
    /// the curvature cannot be inverted even at the largest damping.
    pub fn step(
        &mut self,
        net: &mut LinearStudent,
        x: MatRef<'_, f32>,
        y: MatRef<'_, f32>,
    ) -> Result<OnlineStepReport, Error> {
        let depth = net.depth();
        if depth != self.deltas.len() {
            return Err(Error::Shape(format!(
                "the optimizer was built for {} layers, the network has {depth}",
                self.deltas.len()
            )));
        }
        let loss_before = net.loss_and_gradient(x, y)?;
        if self.pre.begin_step() {
            net.sample_errors(&mut self.rng)?;
            for l in 0..depth {
                self.pre
                    .observe(l, net.layer_input(l), net.layer_errors(l), Par::Seq)?;
            }
        }
        for l in 0..depth {
            let (n_in1, n_out) = (net.widths[l] + 1, net.widths[l + 1]);
            let out = MatMut::from_column_major_slice_mut(&mut self.deltas[l], n_out, n_in1);
            self.pre.precondition(l, net.gradient(l), out, Par::Seq)?;
        }
        let step = self.eta / depth as f32;
        for (l, d) in self.deltas.iter().enumerate() {
            net.add_to_layer(l, d, -step);
        }
        let predicted = self.pre.predicted_change(step);
        let loss_after = if net.is_finite() {
            net.loss(x, y)?
        } else {
            f64::INFINITY
        };
        if !loss_after.is_finite() || loss_after - loss_before > loss_before.abs() {
            // Taken back: w <- (w - s d) + s d, exact up to rounding.
            for (l, d) in self.deltas.iter().enumerate() {
                net.add_to_layer(l, d, step);
            }
            let (_, hi) = self.pre.config().damping_bounds;
            self.pre.set_damping((self.pre.damping() * 10.0).min(hi))?;
            return Ok(OnlineStepReport {
                loss_before,
                loss_after: loss_before,
                damping: self.pre.damping(),
                rejected: true,
            });
        }
        self.pre.adapt_damping(loss_after - loss_before, predicted);
        Ok(OnlineStepReport {
            loss_before,
            loss_after,
            damping: self.pre.damping(),
            rejected: false,
        })
    }
}
