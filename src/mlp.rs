//! The multilayer perceptron: layer sizes, activations, biases, an output
//! likelihood, and the forward and backward passes on a [`Workspace`].
//!
//! Layer `i` (1-based, as in docs/math.md) computes `s_i = W_i a_{i-1} + b_i`,
//! `a_i = phi_i(s_i)`. Its parameters are stored as one column-major
//! `n_i x (n_{i-1} + 1)` matrix `Wbar_i = [W_i | b_i]`: the bias is the last
//! column, so that the forward factor `A_i = E[abar abar^T]` of the natural
//! gradient (with `abar = [a; 1]`) and the weight gradient
//! `(1/b) E_i Abar_{i-1}^T` cover the bias with no special case.
//!
//! The output layer's activation is part of the likelihood: for
//! [`Likelihood::Bernoulli`] and [`Likelihood::Categorical`] the last layer is
//! linear and produces logits, and the loss is computed from the logits
//! (stable for any magnitude).

use crate::workspace::{view, view_mut, Workspace};
use crate::Error;
use natgrad_kernels::gemm::{gemm_fused, Epilogue};
use natgrad_kernels::rng::Rng;
use natgrad_kernels::{Activation, MatRef, MemStack, Par};
use rayon::prelude::*;

/// The model's predictive distribution `p(y | x)`, which defines the loss
/// (its negative log-likelihood, averaged over the minibatch) and the
/// distribution natural-gradient targets are sampled from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Likelihood {
    /// `y ~ N(f(x), I)`: loss `1/2 ||y - f(x)||^2`, identity output.
    Gaussian,
    /// `y_k ~ Bernoulli(sigmoid(s_k))` per output: binary cross-entropy from
    /// the logits `s`, summed over outputs. Targets may be any value in [0, 1];
    /// others are refused by [`Mlp::loss`] with [`Error::InvalidData`].
    Bernoulli,
    /// `y ~ Categorical(softmax(s))`: cross-entropy from the logits; targets
    /// are probability vectors (one-hot for labels): every entry `>= 0` and
    /// each column summing to 1 within [`categorical_sum_tolerance`]`(n)`.
    /// Others are refused by [`Mlp::loss`] with [`Error::InvalidData`] (the
    /// cross-entropy of a non-distribution can be any number, negative too).
    Categorical,
}

/// How far from 1 the sum of a Categorical target column of `n` entries may
/// be: `(n + 1) * f32::EPSILON`, i.e. `2 (n + 1) u` with `u = 2^-24`.
///
/// Derivation: a probability vector computed the usual way in f32, `p_i =
/// fl(e_i / fl(sum_k e_k))`, has `sum_i p_i = 1 + d` with `|d| <= (n - 1) u`
/// from the f32 sum of the `e_k` (to first order) plus `u` from each rounded
/// division, so `|d| <= n u (1 + O(u))`; rounding an exact distribution to
/// f32 gives `|d| <= n u / 2`. natgrad sums the column in f64 (exact to
/// `2^-53` per term, negligible) and allows twice the first bound plus `2u`
/// of slack: `(2n + 2) u`. For MNIST's 10 classes that is `1.3e-6`. One-hot
/// labels sum to exactly 1.
pub fn categorical_sum_tolerance(n: usize) -> f64 {
    (n as f64 + 1.0) * f64::from(f32::EPSILON)
}

/// Refuses targets outside the likelihood's support: Bernoulli targets
/// outside `[0, 1]`, Categorical columns with a negative entry or a sum
/// farther than [`categorical_sum_tolerance`] from 1. Non-finite values are
/// left to the non-finite check (which names them as such).
fn check_target_support(likelihood: Likelihood, y: MatRef<'_, f32>) -> Result<(), Error> {
    let n = y.nrows();
    match likelihood {
        Likelihood::Gaussian => Ok(()),
        Likelihood::Bernoulli => {
            // In [0, 1], or not finite (that is the finiteness check's to
            // report). First a branch-free pass the compiler vectorises; the
            // offending entry is looked for only when there is one.
            let ok = |v: f32| !v.is_finite() || (0.0..=1.0).contains(&v);
            let all_ok = (0..y.ncols()).all(|j| match y.col(j).try_as_col_major() {
                Some(c) => c.as_slice().iter().fold(true, |acc, &v| acc & ok(v)),
                None => (0..n).all(|i| ok(y[(i, j)])),
            });
            if all_ok {
                return Ok(());
            }
            for j in 0..y.ncols() {
                for i in 0..n {
                    let v = y[(i, j)];
                    if v.is_finite() && !(0.0..=1.0).contains(&v) {
                        return Err(Error::InvalidData(format!(
                            "Bernoulli target {v} at row {i}, column {j} is outside [0, 1]"
                        )));
                    }
                }
            }
            Ok(())
        }
        Likelihood::Categorical => {
            let tolerance = categorical_sum_tolerance(n);
            for j in 0..y.ncols() {
                let mut sum = 0.0f64;
                for i in 0..n {
                    let v = y[(i, j)];
                    if !v.is_finite() {
                        return Ok(());
                    }
                    if v < 0.0 {
                        return Err(Error::InvalidData(format!(
                            "Categorical target {v} at row {i}, column {j} is negative; \
                             targets must be probability vectors"
                        )));
                    }
                    sum += f64::from(v);
                }
                if (sum - 1.0).abs() > tolerance {
                    return Err(Error::InvalidData(format!(
                        "Categorical target column {j} sums to {sum}, not 1 (tolerance \
                         {tolerance:.1e}); targets must be probability vectors"
                    )));
                }
            }
            Ok(())
        }
    }
}

impl Likelihood {
    /// Whether the output layer's backward factor `E_y~[e_L e_L^T]` is
    /// diagonal (independent outputs): Gaussian and Bernoulli, not Categorical
    /// (`diag(p) - p p^T`). See [`output_fisher_diagonal`](crate::optim::fisher::output_fisher_diagonal).
    pub fn has_diagonal_output_fisher(self) -> bool {
        !matches!(self, Likelihood::Categorical)
    }
}

/// Weight initialisation schemes (biases always start at zero).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Glorot & Bengio (2010): `U(-r, r)`, `r = sqrt(6 / (n_in + n_out))`,
    /// which keeps forward and backward variances near one for tanh-like units.
    /// The default.
    GlorotUniform,
    /// `N(0, gain^2 / n_in)` (He init for relu is `gain = sqrt(2)`, LeCun is `gain = 1`).
    ScaledGaussian {
        /// Standard-deviation multiplier.
        gain: f32,
    },
}

/// One layer: `n_out x (n_in + 1)` parameters `[W | b]`, column-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// Input width `n_{i-1}`.
    pub n_in: usize,
    /// Output width `n_i`.
    pub n_out: usize,
    /// The elementwise nonlinearity.
    pub activation: Activation,
    /// `[W | b]`, column-major, `n_out x (n_in + 1)`.
    pub params: Vec<f32>,
}

impl Layer {
    /// `[W | b]` as a matrix view.
    pub fn params_mat(&self) -> MatRef<'_, f32> {
        MatRef::from_column_major_slice(&self.params, self.n_out, self.n_in + 1)
    }
    /// `W` alone.
    pub fn weights(&self) -> MatRef<'_, f32> {
        self.params_mat().subcols(0, self.n_in)
    }
    /// `b` alone.
    pub fn bias(&self) -> &[f32] {
        &self.params[self.n_in * self.n_out..]
    }
}

/// A multilayer perceptron with an output likelihood.
#[derive(Clone, Debug)]
pub struct Mlp {
    layers: Vec<Layer>,
    likelihood: Likelihood,
    /// Every parameter is known finite: set where the parameters are built
    /// or checked (construction, an optimizer's update that checks what it
    /// writes), cleared by mutable access. [`Mlp::forward`] reads all the
    /// parameters again only when it is clear (on `deep`, 2.8M parameters,
    /// a pass of its own over 11 MB every training step otherwise).
    params_finite: bool,
}

/// Two networks are equal when their layers and likelihoods are; whether
/// their parameters have been checked does not enter.
impl PartialEq for Mlp {
    fn eq(&self, other: &Mlp) -> bool {
        self.layers == other.layers && self.likelihood == other.likelihood
    }
}

impl Mlp {
    /// Builds a network from its widths `[n_0, n_1, .., n_L]` and one activation
    /// per layer (`L` of them). For Bernoulli and Categorical likelihoods the
    /// last activation must be `Identity` (the likelihood applies the link).
    pub fn new(
        sizes: &[usize],
        activations: &[Activation],
        likelihood: Likelihood,
        init: Init,
        seed: u64,
    ) -> Result<Mlp, Error> {
        if sizes.len() < 2 {
            return Err(Error::InvalidConfig(format!(
                "a network needs at least an input and an output width, got {sizes:?}"
            )));
        }
        if let Some(pos) = sizes.iter().position(|&n| n == 0) {
            return Err(Error::InvalidConfig(format!(
                "layer widths must be positive, width {pos} of {sizes:?} is 0"
            )));
        }
        if activations.len() != sizes.len() - 1 {
            return Err(Error::InvalidConfig(format!(
                "{} layers need {} activations, got {}",
                sizes.len() - 1,
                sizes.len() - 1,
                activations.len()
            )));
        }
        if likelihood != Likelihood::Gaussian && activations.last() != Some(&Activation::Identity) {
            return Err(Error::InvalidConfig(format!(
                "{likelihood:?} output: the last layer must be Identity (it produces logits)"
            )));
        }
        if let Init::ScaledGaussian { gain } = init {
            if !gain.is_finite() || gain < 0.0 {
                return Err(Error::InvalidConfig(format!(
                    "init gain must be finite and >= 0, got {gain}"
                )));
            }
        }
        let mut rng = Rng::new(seed);
        let layers = sizes
            .windows(2)
            .zip(activations)
            .map(|(w, &activation)| {
                let (n_in, n_out) = (w[0], w[1]);
                let mut params = vec![0.0f32; n_out * (n_in + 1)];
                let weights = &mut params[..n_out * n_in];
                match init {
                    Init::GlorotUniform => {
                        let r = (6.0 / (n_in + n_out) as f32).sqrt();
                        weights
                            .iter_mut()
                            .for_each(|v| *v = r * (2.0 * rng.uniform_f32() - 1.0));
                    }
                    Init::ScaledGaussian { gain } => {
                        rng.fill_normal(weights);
                        let s = gain / (n_in as f32).sqrt();
                        weights.iter_mut().for_each(|v| *v *= s);
                    }
                }
                Layer {
                    n_in,
                    n_out,
                    activation,
                    params,
                }
            })
            .collect();
        let mut net = Mlp {
            layers,
            likelihood,
            params_finite: false,
        };
        net.params_finite = net.is_finite();
        Ok(net)
    }

    /// Rebuilds a network from its layers (as read from a checkpoint). Errors if
    /// consecutive widths disagree, a parameter vector has the wrong length or a
    /// value is not finite.
    pub fn from_layers(layers: Vec<Layer>, likelihood: Likelihood) -> Result<Mlp, Error> {
        if layers.is_empty() {
            return Err(Error::Shape("a network needs at least one layer".into()));
        }
        for (i, l) in layers.iter().enumerate() {
            if l.n_in == 0 || l.n_out == 0 || l.params.len() != l.n_out * (l.n_in + 1) {
                return Err(Error::Shape(format!(
                    "layer {} is {}x{} but has {} parameters",
                    i + 1,
                    l.n_out,
                    l.n_in,
                    l.params.len()
                )));
            }
            if i > 0 && layers[i - 1].n_out != l.n_in {
                return Err(Error::Shape(format!(
                    "layer {} outputs {} values but layer {} takes {}",
                    i,
                    layers[i - 1].n_out,
                    i + 1,
                    l.n_in
                )));
            }
        }
        if likelihood != Likelihood::Gaussian
            && layers.last().map(|l| l.activation) != Some(Activation::Identity)
        {
            return Err(Error::Shape(format!(
                "{likelihood:?} output needs an Identity last layer"
            )));
        }
        if !layers.iter().all(|l| all_finite(&l.params)) {
            return Err(Error::NonFinite(
                "the network's parameters contain NaN or infinity".into(),
            ));
        }
        Ok(Mlp {
            layers,
            likelihood,
            params_finite: true,
        })
    }

    /// The `paper` preset (docs/math.md section 2.5): 784-400-200-100-50-100-200-400-784,
    /// tanh on every hidden layer, linear output, Gaussian likelihood (squared loss).
    pub fn paper(seed: u64) -> Mlp {
        Mlp::paper_network(Init::GlorotUniform, seed)
    }

    /// The `paper` and `published` presets' network with the given initialisation.
    fn paper_network(init: Init, seed: u64) -> Mlp {
        let sizes = [784, 400, 200, 100, 50, 100, 200, 400, 784];
        let mut acts = vec![Activation::Tanh; 8];
        acts[7] = Activation::Identity;
        Mlp::new(&sizes, &acts, Likelihood::Gaussian, init, seed)
            .expect("the paper network is valid with either initialisation")
    }

    /// The `deep` preset (Hinton & Salakhutdinov 2006, the K-FAC MNIST benchmark):
    /// 784-1000-500-250-30-250-500-1000-784, logistic sigmoid units except the
    /// linear 30-unit code layer, Bernoulli output (binary cross-entropy).
    pub fn deep(seed: u64) -> Mlp {
        let sizes = [784, 1000, 500, 250, 30, 250, 500, 1000, 784];
        let mut acts = vec![Activation::Sigmoid; 8];
        acts[3] = Activation::Identity;
        acts[7] = Activation::Identity;
        Mlp::new(
            &sizes,
            &acts,
            Likelihood::Bernoulli,
            Init::GlorotUniform,
            seed,
        )
        .expect("the deep preset is a valid network")
    }

    /// The `published` preset: [`Mlp::paper`]'s network initialised as in
    /// the authors' simulation code (hennequin-lab/bernacchia-nips-2018,
    /// `lib/network.ml`, `make_random`): weights `N(0, 1 / n_in)`
    /// ([`Init::ScaledGaussian`] with gain 1), biases zero.
    pub fn published(seed: u64) -> Mlp {
        Mlp::paper_network(Init::ScaledGaussian { gain: 1.0 }, seed)
    }

    /// A preset by name (`"paper"`, `"deep"` or `"published"`).
    pub fn preset(name: &str, seed: u64) -> Result<Mlp, Error> {
        match name {
            "paper" => Ok(Mlp::paper(seed)),
            "deep" => Ok(Mlp::deep(seed)),
            "published" => Ok(Mlp::published(seed)),
            _ => Err(Error::InvalidConfig(format!(
                "unknown preset {name:?}; expected \"paper\", \"deep\" or \"published\""
            ))),
        }
    }

    /// The layers, input side first.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }
    /// The layers' parameters, each `n_out x (n_in + 1)` column-major with
    /// the bias column last (the layout of the gradients).
    pub fn params(&self) -> impl Iterator<Item = &[f32]> {
        self.layers.iter().map(|l| l.params.as_slice())
    }
    /// Mutable access to the layers' parameters (shapes cannot change).
    /// The next [`Mlp::forward`] checks that they are finite.
    pub fn params_mut(&mut self) -> impl Iterator<Item = &mut [f32]> {
        self.params_finite = false;
        self.layers.iter_mut().map(|l| l.params.as_mut_slice())
    }
    /// The layers, mutable (crate-internal: widths must not change). The
    /// next forward pass checks the parameters unless the caller vouches
    /// for them with [`Mlp::set_params_finite`].
    pub(crate) fn layers_mut(&mut self) -> &mut [Layer] {
        self.params_finite = false;
        &mut self.layers
    }
    /// Records whether every parameter is finite, as checked by the caller
    /// that just wrote them through [`Mlp::params_mut`] or
    /// [`Mlp::layers_mut`] (`false` makes the next forward pass check).
    pub(crate) fn set_params_finite(&mut self, finite: bool) {
        self.params_finite = finite;
    }
    /// Number of layers `L`.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
    /// Widths `[n_0, .., n_L]`.
    pub fn sizes(&self) -> Vec<usize> {
        std::iter::once(self.layers[0].n_in)
            .chain(self.layers.iter().map(|l| l.n_out))
            .collect()
    }
    /// Whether the widths are exactly `sizes` (compares without allocating).
    pub fn has_sizes(&self, sizes: &[usize]) -> bool {
        sizes.len() == self.layers.len() + 1
            && sizes[0] == self.layers[0].n_in
            && self
                .layers
                .iter()
                .zip(&sizes[1..])
                .all(|(l, &n)| l.n_out == n)
    }
    /// Input width `n_0`.
    pub fn input_size(&self) -> usize {
        self.layers[0].n_in
    }
    /// Output width `n_L`.
    pub fn output_size(&self) -> usize {
        self.layers[self.layers.len() - 1].n_out
    }
    /// The output likelihood.
    pub fn likelihood(&self) -> Likelihood {
        self.likelihood
    }
    /// Total number of parameters (weights and biases).
    pub fn num_params(&self) -> usize {
        self.layers.iter().map(|l| l.params.len()).sum()
    }
    /// Whether every parameter is finite.
    pub fn is_finite(&self) -> bool {
        self.layers.iter().all(|l| all_finite(&l.params))
    }

    /// Forward pass of the minibatch `x` (`n_0 x b`, one sample per column) into
    /// the workspace's activations. Errors on shape mismatch, a batch larger than
    /// the workspace's, or non-finite input or parameters.
    pub fn forward(&self, ws: &mut Workspace, x: MatRef<'_, f32>) -> Result<(), Error> {
        self.check_workspace(ws)?;
        let b = x.ncols();
        if x.nrows() != self.input_size() {
            return Err(Error::Shape(format!(
                "input has {} rows, the network takes {}",
                x.nrows(),
                self.input_size()
            )));
        }
        ws.set_batch(b)?;
        check_finite_mat(x, "input minibatch")?;
        // The SIMD tanh/sigmoid map NaN to finite values, so non-finite weights
        // set through `params_mut` would otherwise pass unnoticed.
        if !self.params_finite && !self.is_finite() {
            return Err(Error::NonFinite(
                "the network's parameters contain NaN or infinity".into(),
            ));
        }
        let n0 = self.input_size();
        let a0 = &mut ws.buffers_mut().acts[0];
        for j in 0..b {
            let col = &mut a0[j * (n0 + 1)..(j + 1) * (n0 + 1)];
            match x.col(j).try_as_col_major() {
                Some(src) => col[..n0].copy_from_slice(src.as_slice()),
                None => {
                    for (i, v) in col[..n0].iter_mut().enumerate() {
                        *v = x[(i, j)];
                    }
                }
            }
            col[n0] = 1.0;
        }
        self.forward_from_input(ws)
    }

    /// Forward pass from the input already in `ws.acts[0]` (with its row of ones).
    pub(crate) fn forward_from_input(&self, ws: &mut Workspace) -> Result<(), Error> {
        let (b, par) = (ws.batch(), ws.par());
        let buffers = ws.buffers_mut();
        let stack = MemStack::new(buffers.scratch);
        for (i, layer) in self.layers.iter().enumerate() {
            let out_buf = &mut buffers.acts[i + 1];
            let ld = layer.n_out + 1;
            for j in 0..b {
                out_buf[j * ld + layer.n_out] = 1.0;
            }
            self.forward_layer(i, buffers.acts, b, par, stack)?;
        }
        Ok(())
    }

    /// Layer `i`'s forward product, `acts[i + 1] = f(W_i acts[i] + b_i)`
    /// (`gemm_fused` with the bias and activation in its epilogue); the row
    /// of ones below `acts[i + 1]` is the caller's. The call the training
    /// step makes, and the one `natgrad bench kernels` times.
    pub(crate) fn forward_layer(
        &self,
        i: usize,
        acts: &mut [Vec<f32>],
        b: usize,
        par: natgrad_kernels::Par,
        stack: &mut MemStack,
    ) -> Result<(), Error> {
        let layer = &self.layers[i];
        let (before, after) = acts.split_at_mut(i + 1);
        let input = view(&before[i], layer.n_in, b, layer.n_in + 1);
        let out = view_mut(&mut after[0], layer.n_out, b, layer.n_out + 1);
        gemm_fused(
            out,
            0.0,
            layer.weights(),
            input,
            1.0,
            Epilogue::BiasActivation {
                bias: Some(layer.bias()),
                activation: layer.activation,
            },
            par,
            stack,
        )?;
        Ok(())
    }

    /// The network's outputs for the last forward pass (`n_L x b`): the mean for
    /// Gaussian, the logits for Bernoulli and Categorical.
    ///
    /// # Errors
    /// [`Error::Shape`] if `ws` was built for another network (its buffers
    /// would not fit the view).
    pub fn output<'a>(&self, ws: &'a Workspace) -> Result<MatRef<'a, f32>, Error> {
        self.check_workspace(ws)?;
        let n = self.output_size();
        Ok(view(
            &ws.activation_buffers()[self.layers.len()],
            n,
            ws.batch(),
            n + 1,
        ))
    }

    /// Loss of the last forward pass against targets `y` (`n_L x b`): the
    /// negative log-likelihood per example (constants dropped), averaged over the
    /// minibatch. Also writes the output error `e_L = d(-log p)/d s_L` (per
    /// example, not divided by `b`) into the workspace when `write_error`.
    ///
    /// # Errors
    /// [`Error::Shape`] if `ws` was built for another network or `y` is not
    /// `n_L x b`; [`Error::InvalidData`] for
    /// targets outside the likelihood's support (see [`Likelihood`]);
    /// [`Error::NonFinite`] for NaN or infinite targets or a non-finite loss.
    pub fn loss(
        &self,
        ws: &mut Workspace,
        y: MatRef<'_, f32>,
        write_error: bool,
    ) -> Result<f64, Error> {
        self.check_workspace(ws)?;
        let n = self.output_size();
        let b = ws.batch();
        if y.nrows() != n || y.ncols() != b {
            return Err(Error::Shape(format!(
                "targets are {}x{}, the network's output is {n}x{b}",
                y.nrows(),
                y.ncols()
            )));
        }
        check_target_support(self.likelihood, y)?;
        let l = self.layers.len();
        let likelihood = self.likelihood;
        let par = ws.par();
        let buffers = ws.buffers_mut();
        let (acts, errs) = (&buffers.acts[l], &mut buffers.errs[l - 1]);
        let chunks = b.div_ceil(LOSS_CHUNK_COLS);
        let partials = &mut buffers.loss_partials[..chunks];
        // Column chunks in parallel, each summed in f64 into its own slot, the
        // slots then added in order: the loss does not depend on the threads.
        let chunk = |(c, (e, p)): (usize, (&mut [f32], &mut f64))| -> Result<(), Error> {
            let j0 = c * LOSS_CHUNK_COLS;
            let mut total = 0.0f64;
            for (jj, e) in e.chunks_exact_mut(n).enumerate() {
                let j = j0 + jj;
                let s = &acts[j * (n + 1)..j * (n + 1) + n];
                total += match y.col(j).try_as_col_major() {
                    Some(yc) => {
                        let yc = &yc.as_slice()[..n];
                        column_loss(likelihood, s, |i| yc[i], e, write_error)?
                    }
                    None => column_loss(likelihood, s, |i| y[(i, j)], e, write_error)?,
                };
            }
            *p = total;
            Ok(())
        };
        let errs = &mut errs[..n * b];
        if par.degree() > 1 && chunks > 1 {
            errs.par_chunks_mut(n * LOSS_CHUNK_COLS)
                .zip(partials.par_iter_mut())
                .enumerate()
                .try_for_each(chunk)?;
        } else {
            errs.chunks_mut(n * LOSS_CHUNK_COLS)
                .zip(partials.iter_mut())
                .enumerate()
                .try_for_each(chunk)?;
        }
        let total: f64 = partials.iter().sum();
        if !total.is_finite() {
            // Name a non-finite target if there is one; else the weights diverged.
            check_finite_mat(y, "target minibatch")?;
        }
        let loss = total / b.max(1) as f64;
        if !loss.is_finite() {
            return Err(Error::NonFinite(format!(
                "the loss is {loss}: the weights have diverged"
            )));
        }
        Ok(loss)
    }

    /// Back-propagates the output error in `errs[L-1]` down to layer 1:
    /// `e_{i-1} = (W_i^T e_i) .* phi'_{i-1}(a_{i-1})`, using the activations of the
    /// last forward pass. `errs` is either the workspace's own error set or an
    /// optimizer's (for sampled targets). When `grads` is given, also writes each
    /// layer's gradient `(1/b) E_i Abar_{i-1}^T` (bias column included).
    pub(crate) fn backward(
        &self,
        acts: &[Vec<f32>],
        errs: &mut [Vec<f32>],
        grads: Option<&mut [Vec<f32>]>,
        b: usize,
        par: natgrad_kernels::Par,
        stack: &mut MemStack,
    ) -> Result<(), Error> {
        self.backward_from(self.layers.len() - 1, acts, errs, grads, b, par, stack)
    }

    /// [`Mlp::backward`] from the error of layer `top` (`errs[top]`, already
    /// written) down: layers above `top` are not touched.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward_from(
        &self,
        top: usize,
        acts: &[Vec<f32>],
        errs: &mut [Vec<f32>],
        mut grads: Option<&mut [Vec<f32>]>,
        b: usize,
        par: natgrad_kernels::Par,
        stack: &mut MemStack,
    ) -> Result<(), Error> {
        for i in (0..=top).rev() {
            match grads.as_deref_mut() {
                Some(grads) if i > 0 && par.degree() > 1 => {
                    self.gradient_pair(i, acts, errs, grads, b, par, stack)?
                }
                Some(grads) => {
                    self.weight_grad_layer(i, acts, errs, grads, b, par, stack)?;
                    if i > 0 {
                        self.input_grad_layer(i, acts, errs, b, par, stack)?;
                    }
                }
                None if i > 0 => self.input_grad_layer(i, acts, errs, b, par, stack)?,
                None => {}
            }
        }
        Ok(())
    }

    /// Layer `i`'s weight gradient and input gradient (`i >= 1`) at the same
    /// time, under `rayon::join`, each on its own part of `stack` (the
    /// workspace holds both, see `workspace::gradient_pair_scratch`): they
    /// read the same error `errs[i]` and write different buffers, and two
    /// products of one layer on two threads lose less to splitting than
    /// each product on both threads in turn. Each product still runs under `par`, so a thread that finishes
    /// first helps with the other one.
    #[allow(clippy::too_many_arguments)]
    fn gradient_pair(
        &self,
        i: usize,
        acts: &[Vec<f32>],
        errs: &mut [Vec<f32>],
        grads: &mut [Vec<f32>],
        b: usize,
        par: natgrad_kernels::Par,
        stack: &mut MemStack,
    ) -> Result<(), Error> {
        let layer = &self.layers[i];
        let bytes = crate::workspace::weight_grad_bytes(layer.n_in, layer.n_out, b, par);
        // The layout of `workspace::gradient_pair_scratch`.
        let (first, rest) = stack.make_aligned_uninit::<u8>(bytes, 64);
        // `errs[i]` is read by both; `errs[i - 1]` is written by the input
        // gradient only.
        let (lo, hi) = errs.split_at_mut(i);
        let (weight, input) = rayon::join(
            || {
                let stack = MemStack::new(first);
                self.weight_grad_into(i, acts, &hi[0], &mut grads[i], b, par, stack)
            },
            || self.input_grad_into(i, acts, &hi[0], &mut lo[i - 1], b, par, rest),
        );
        weight.and(input)
    }

    /// Layer `i`'s weight gradient, `grads[i] = errs[i] acts[i]^T / b` (the
    /// bias column from the row of ones): `gemm` with the minibatch as the
    /// inner dimension. The call the training step makes, and the one
    /// `natgrad bench kernels` times.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn weight_grad_layer(
        &self,
        i: usize,
        acts: &[Vec<f32>],
        errs: &[Vec<f32>],
        grads: &mut [Vec<f32>],
        b: usize,
        par: natgrad_kernels::Par,
        stack: &mut MemStack,
    ) -> Result<(), Error> {
        self.weight_grad_into(i, acts, &errs[i], &mut grads[i], b, par, stack)
    }

    /// [`Mlp::weight_grad_layer`] from the error `e` into the gradient `g`.
    #[allow(clippy::too_many_arguments)]
    fn weight_grad_into(
        &self,
        i: usize,
        acts: &[Vec<f32>],
        e: &[f32],
        g: &mut [f32],
        b: usize,
        par: natgrad_kernels::Par,
        stack: &mut MemStack,
    ) -> Result<(), Error> {
        let layer = &self.layers[i];
        let e = view(e, layer.n_out, b, layer.n_out);
        let a = view(&acts[i], layer.n_in + 1, b, layer.n_in + 1);
        let g = view_mut(g, layer.n_out, layer.n_in + 1, layer.n_out);
        natgrad_kernels::gemm::gemm(g, 0.0, e, a.transpose(), 1.0 / b.max(1) as f32, par, stack)?;
        Ok(())
    }

    /// Layer `i`'s input gradient (`i >= 1`), `errs[i - 1] = (W_i^T errs[i])
    /// f'(acts[i])` (`gemm_fused` with the activation derivative of layer
    /// `i - 1` in its epilogue). The call the training step makes, and the
    /// one `natgrad bench kernels` times.
    pub(crate) fn input_grad_layer(
        &self,
        i: usize,
        acts: &[Vec<f32>],
        errs: &mut [Vec<f32>],
        b: usize,
        par: natgrad_kernels::Par,
        stack: &mut MemStack,
    ) -> Result<(), Error> {
        let (lo, hi) = errs.split_at_mut(i);
        self.input_grad_into(i, acts, &hi[0], &mut lo[i - 1], b, par, stack)
    }

    /// [`Mlp::input_grad_layer`] from the error `e` of layer `i` into the
    /// error `out` of layer `i - 1`.
    #[allow(clippy::too_many_arguments)]
    fn input_grad_into(
        &self,
        i: usize,
        acts: &[Vec<f32>],
        e: &[f32],
        out: &mut [f32],
        b: usize,
        par: natgrad_kernels::Par,
        stack: &mut MemStack,
    ) -> Result<(), Error> {
        let (layer, prev) = (&self.layers[i], &self.layers[i - 1]);
        let e = view(e, layer.n_out, b, layer.n_out);
        let out = view_mut(out, layer.n_in, b, layer.n_in);
        let a_prev = view(&acts[i], layer.n_in, b, layer.n_in + 1);
        gemm_fused(
            out,
            0.0,
            layer.weights().transpose(),
            e,
            1.0,
            Epilogue::ActivationDerivative {
                activation: prev.activation,
                output: a_prev,
            },
            par,
            stack,
        )?;
        Ok(())
    }

    /// Forward pass, loss and gradient of the minibatch `(x, y)`; the gradient
    /// (bias column last, per layer) lands in `ws.grads()`. Returns the loss.
    pub fn loss_and_gradient(
        &self,
        ws: &mut Workspace,
        x: MatRef<'_, f32>,
        y: MatRef<'_, f32>,
    ) -> Result<f64, Error> {
        self.forward(ws, x)?;
        let loss = self.loss(ws, y, true)?;
        let (b, par) = (ws.batch(), ws.par());
        let buffers = ws.buffers_mut();
        let stack = MemStack::new(buffers.scratch);
        self.backward(
            buffers.acts,
            buffers.errs,
            Some(buffers.grads),
            b,
            par,
            stack,
        )?;
        Ok(loss)
    }

    /// Mean loss over a whole dataset `x`, `y` (columns are examples), evaluated
    /// in chunks of the workspace's maximum batch. Does not touch gradients.
    pub fn evaluate(
        &self,
        ws: &mut Workspace,
        x: MatRef<'_, f32>,
        y: MatRef<'_, f32>,
    ) -> Result<f64, Error> {
        let n = x.ncols();
        if y.ncols() != n {
            return Err(Error::Shape(format!(
                "{} inputs but {} targets",
                n,
                y.ncols()
            )));
        }
        if n == 0 {
            return Err(Error::Shape("cannot evaluate on an empty dataset".into()));
        }
        let chunk = ws.max_batch();
        let mut total = 0.0;
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            self.forward(ws, x.subcols(start, len))?;
            total += self.loss(ws, y.subcols(start, len), false)? * len as f64;
            start += len;
        }
        Ok(total / n as f64)
    }
}

/// The workspace is built here, from the network that sizes it, so that
/// `workspace.rs` knows buffers and widths, not networks (the dependency
/// runs one way: the network's passes use the workspace).
impl Workspace {
    /// Buffers for `net` at minibatches of up to `max_batch` columns, with
    /// kernels parallelised as `par`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if `max_batch` is 0 or above
    /// [`MAX_BATCH`](crate::workspace::MAX_BATCH), or if the buffers cannot be
    /// allocated (the allocator's refusal is returned, not turned into an
    /// abort).
    pub fn new(net: &Mlp, max_batch: usize, par: Par) -> Result<Workspace, Error> {
        let partials = max_batch.div_ceil(LOSS_CHUNK_COLS);
        Workspace::with_sizes(net.sizes(), max_batch, par, partials)
    }
}

impl Mlp {
    /// [`Error::Shape`] unless `ws` was built for a network of this one's widths.
    pub(crate) fn check_workspace(&self, ws: &Workspace) -> Result<(), Error> {
        if !self.has_sizes(ws.sizes()) {
            return Err(Error::Shape(format!(
                "the workspace was built for widths {:?}, the network has {:?}",
                ws.sizes(),
                self.sizes()
            )));
        }
        Ok(())
    }
}

/// Columns of the minibatch whose loss [`Mlp::loss`] sums on one thread
/// into one partial sum.
pub const LOSS_CHUNK_COLS: usize = 16;

/// `sum_{i < n} term(i)` over eight interleaved f64 accumulators.
#[inline(always)]
fn sum8(n: usize, term: impl Fn(usize) -> f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let full = n / 8 * 8;
    for i0 in (0..full).step_by(8) {
        for (k, a) in acc.iter_mut().enumerate() {
            *a += term(i0 + k);
        }
    }
    let tail: f64 = (full..n).map(&term).sum();
    acc.iter().sum::<f64>() + tail
}

/// Entries of an output column the Bernoulli loss handles at a time: its
/// targets are gathered into a buffer of this size on the stack, so that the
/// vectorised kernels see the same contiguous slices, and the loss is the
/// same to the bit, whatever the targets' layout.
const BERNOULLI_SEGMENT: usize = 256;

/// The Bernoulli loss of one output column through the vectorised kernels,
/// segment by segment: the per-entry terms are parked in `e` and summed in
/// f64, then overwritten by the output error `sigmoid(s) - y` when
/// `write_error`.
fn bernoulli_column(
    s: &[f32],
    y: impl Fn(usize) -> f32,
    e: &mut [f32],
    write_error: bool,
) -> Result<f64, Error> {
    let mut buf = [0.0f32; BERNOULLI_SEGMENT];
    let mut total = 0.0f64;
    for (k, (s, e)) in s
        .chunks(BERNOULLI_SEGMENT)
        .zip(e.chunks_mut(BERNOULLI_SEGMENT))
        .enumerate()
    {
        let y_seg = &mut buf[..s.len()];
        for (i, v) in y_seg.iter_mut().enumerate() {
            *v = y(k * BERNOULLI_SEGMENT + i);
        }
        total += natgrad_kernels::vector::logistic_loss(s, y_seg, e)?;
        if write_error {
            natgrad_kernels::vector::logistic_error(s, y_seg, e)?;
        }
    }
    Ok(total)
}

/// The loss of one output column: pre-activations `s`, targets `y(i)`,
/// output error written into `e` when `write_error`. Gaussian and
/// categorical are summed in f64 over eight interleaved accumulators
/// (independent chains the compiler can vectorise); Bernoulli goes through
/// the kernels ([`bernoulli_column`]).
#[inline(always)]
fn column_loss(
    likelihood: Likelihood,
    s: &[f32],
    y: impl Fn(usize) -> f32 + Copy,
    e: &mut [f32],
    write_error: bool,
) -> Result<f64, Error> {
    let n = s.len();
    let e = &mut e[..n];
    Ok(match likelihood {
        Likelihood::Gaussian => {
            if write_error {
                for (i, (e, &s)) in e.iter_mut().zip(s).enumerate() {
                    *e = s - y(i);
                }
            }
            0.5 * sum8(n, |i| {
                let d = (s[i] - y(i)) as f64;
                d * d
            })
        }
        Likelihood::Bernoulli => bernoulli_column(s, y, e, write_error)?,
        Likelihood::Categorical => {
            let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let z: f32 = s.iter().map(|&v| (v - m).exp()).sum();
            let lse = m + z.ln();
            let ysum: f32 = (0..n).map(y).sum();
            if write_error {
                for (i, (e, &s)) in e.iter_mut().zip(s).enumerate() {
                    *e = (s - lse).exp() * ysum - y(i);
                }
            }
            sum8(n, |i| (y(i) * (lse - s[i])) as f64)
        }
    })
}

/// True when every entry of `v` is finite: the kernels crate's dispatched
/// check ([`natgrad_kernels::vector::all_finite`]), vectorised at the
/// widest instruction set (the same loop compiled here, for the SSE2
/// baseline, did not vectorise).
pub(crate) fn all_finite(v: &[f32]) -> bool {
    natgrad_kernels::vector::all_finite(v)
}

/// `Err(NonFinite)` naming `what` if any entry of `m` is NaN or infinite.
pub(crate) fn check_finite_mat(m: MatRef<'_, f32>, what: &str) -> Result<(), Error> {
    for j in 0..m.ncols() {
        // A contiguous column is checked in bulk first; the element loop
        // below then only runs to name the culprit.
        if let Some(col) = m.col(j).try_as_col_major() {
            if all_finite(col.as_slice()) {
                continue;
            }
        }
        for i in 0..m.nrows() {
            let v = m[(i, j)];
            if !v.is_finite() {
                return Err(Error::NonFinite(format!(
                    "{what} has {v} at row {i}, column {j}"
                )));
            }
        }
    }
    Ok(())
}

/// Classification: the predicted class of each example and the accuracy
/// against labels, for networks whose outputs score one class each.
impl Mlp {
    /// Writes the predicted class of each column of `x` (`n_0 x n`, one
    /// example per column) into `classes` (length `n`): the index of the
    /// largest output, the first on ties. For [`Likelihood::Categorical`] that
    /// is the most probable class (softmax is monotonic in the logits); for
    /// Bernoulli and Gaussian outputs it is the highest-scoring output.
    ///
    /// Any `n` works: `x` is run through the network in chunks of the
    /// workspace's maximum batch. Allocates nothing. Overwrites the
    /// workspace's activations, not its gradients.
    ///
    /// # Errors
    /// [`Error::Shape`] if `classes.len() != x.ncols()` or `x` has the wrong
    /// number of rows; the errors of [`Mlp::forward`] otherwise.
    ///
    /// # Example
    /// ```
    /// use natgrad::kernels::{Activation, MatRef, Par};
    /// use natgrad::mlp::{Init, Likelihood, Mlp};
    /// use natgrad::workspace::Workspace;
    ///
    /// // 2 inputs, 3 classes; a single linear layer with hand-set weights.
    /// let mut net = Mlp::new(&[2, 3], &[Activation::Identity], Likelihood::Categorical,
    ///                        Init::GlorotUniform, 1)?;
    /// // [W | b], column-major 3 x 3: class 0 scores x0, class 1 scores x1,
    /// // class 2 scores the constant 0.5 (its bias).
    /// net.params_mut().next().unwrap()
    ///     .copy_from_slice(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.5]);
    /// let mut ws = Workspace::new(&net, 2, Par::Seq)?;
    /// let x = [2.0, 0.0, /**/ 0.0, 3.0, /**/ 0.1, 0.2]; // three examples
    /// let x = MatRef::from_column_major_slice(&x, 2, 3);
    /// let mut classes = [0usize; 3];
    /// net.predict_classes(&mut ws, x, &mut classes)?;
    /// assert_eq!(classes, [0, 1, 2]);
    /// assert_eq!(net.accuracy(&mut ws, x, &[0, 1, 0])?, 2.0 / 3.0);
    /// # Ok::<(), natgrad::Error>(())
    /// ```
    pub fn predict_classes(
        &self,
        ws: &mut Workspace,
        x: MatRef<'_, f32>,
        classes: &mut [usize],
    ) -> Result<(), Error> {
        if classes.len() != x.ncols() {
            return Err(Error::Shape(format!(
                "{} examples but room for {} predicted classes",
                x.ncols(),
                classes.len()
            )));
        }
        let chunk = ws.max_batch().max(1);
        let mut start = 0;
        while start < x.ncols() {
            let len = chunk.min(x.ncols() - start);
            self.forward(ws, x.subcols(start, len))?;
            let out = self.output(ws)?;
            for (j, class) in classes[start..start + len].iter_mut().enumerate() {
                *class = Self::argmax_column(out, j);
            }
            start += len;
        }
        Ok(())
    }

    /// The fraction of the columns of `x` (`n_0 x n`) whose predicted class
    /// (as [`Mlp::predict_classes`]) equals their label, `labels[j]` for
    /// column `j` (labels are class indices, `0..n_L`, as in
    /// [`crate::data::Split::labels`]). Any `n > 0`; allocates nothing.
    ///
    /// # Errors
    /// [`Error::Shape`] if `labels.len() != x.ncols()`, `x` is empty or a
    /// label is not below the network's output width; the errors of
    /// [`Mlp::forward`] otherwise.
    pub fn accuracy(
        &self,
        ws: &mut Workspace,
        x: MatRef<'_, f32>,
        labels: &[u8],
    ) -> Result<f64, Error> {
        if labels.len() != x.ncols() {
            return Err(Error::Shape(format!(
                "{} examples but {} labels",
                x.ncols(),
                labels.len()
            )));
        }
        if labels.is_empty() {
            return Err(Error::Shape(
                "cannot measure accuracy on an empty dataset".into(),
            ));
        }
        if let Some(j) = labels
            .iter()
            .position(|&l| usize::from(l) >= self.output_size())
        {
            return Err(Error::Shape(format!(
                "label {} of example {j} is not a class of a network with {} outputs",
                labels[j],
                self.output_size()
            )));
        }
        let chunk = ws.max_batch().max(1);
        let mut correct = 0usize;
        let mut start = 0;
        while start < x.ncols() {
            let len = chunk.min(x.ncols() - start);
            self.forward(ws, x.subcols(start, len))?;
            let out = self.output(ws)?;
            for (j, &label) in labels[start..start + len].iter().enumerate() {
                correct += usize::from(Self::argmax_column(out, j) == usize::from(label));
            }
            start += len;
        }
        Ok(correct as f64 / labels.len() as f64)
    }

    /// The row of the largest entry of column `j`, the first on ties.
    fn argmax_column(out: MatRef<'_, f32>, j: usize) -> usize {
        let mut best = 0;
        for i in 1..out.nrows() {
            if out[(i, j)] > out[(best, j)] {
                best = i;
            }
        }
        best
    }
}
