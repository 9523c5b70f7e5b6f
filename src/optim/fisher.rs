//! The Fisher sampling of the natural gradient: targets drawn from the
//! model's own predictive distribution, their output errors, and the
//! shortcuts that replace a draw by its distribution (the exact diagonal
//! output factor, the penultimate layer's error drawn directly).
//!
//! Only the natural gradient samples, so the sampling lives here, on the
//! optimizer's side; it reads the network ([`Mlp`]) and the activations of
//! the last forward pass in the [`Workspace`]. The optimizer's
//! `FisherSampler` holds the buffers one step's sampling needs, sized once,
//! and its random stream.

use super::config::NaturalGradientConfig;
use crate::mlp::{Likelihood, Mlp};
use crate::workspace::{view_mut, Workspace};
use crate::Error;
use faer::reborrow::ReborrowMut;
use natgrad_kernels::cholesky::{cholesky_in_place, cholesky_scratch};
use natgrad_kernels::gemm::gemm_scratch;
use natgrad_kernels::rng::Rng;
use natgrad_kernels::syrk::{syrk_lower, syrk_scratch};
use natgrad_kernels::trsm::{lower_times_in_place, lower_times_scratch};
use natgrad_kernels::{Activation, MatRef, MemBuffer, MemStack, Par, StackReq};
use rayon::prelude::*;

/// Columns of the minibatch sampled from one random stream by
/// [`sample_output_error`] (a fixed size, so that the samples do not
/// depend on the number of threads).
pub const SAMPLE_CHUNK_COLS: usize = 16;

/// Writes into `errs_out` (the output-layer slot of an error set) the output
/// error for targets sampled from the model's own predictive distribution,
/// `e_L = d(-log p(y~ | x))/d s_L` with `y~ ~ p(. | x)`, at the outputs of
/// `net`'s last forward pass in `ws`:
/// Gaussian `e = f(x) - y~ = -noise` (a standard normal vector),
/// Bernoulli `e = sigmoid(s) - y~`, Categorical `e = softmax(s) - onehot(y~)`.
///
/// Draws one 64-bit seed from `rng`; the minibatch is then sampled in
/// chunks of [`SAMPLE_CHUNK_COLS`] columns, chunk `c` from its own stream
/// `Rng::new(seed + c)`, in parallel under the workspace's `Par`. The
/// samples depend on `rng` and the minibatch only, not on the number of
/// threads.
///
/// # Errors
/// [`Error::Shape`] if `ws` was built for another network or `errs_out`
/// is shorter than `n_L * b` (nothing is drawn from `rng` then).
pub fn sample_output_error(
    net: &Mlp,
    ws: &Workspace,
    errs_out: &mut [f32],
    rng: &mut Rng,
) -> Result<(), Error> {
    sample_output_error_from(net, ws, errs_out, rng, 0)
}

/// [`sample_output_error`] for a minibatch that is a shard of a larger one
/// starting at column `first_chunk * SAMPLE_CHUNK_COLS`: chunk `c` of the
/// shard uses the stream of chunk `first_chunk + c` of the whole, so a shard
/// aligned on chunks draws exactly the whole minibatch's samples.
pub(crate) fn sample_output_error_from(
    net: &Mlp,
    ws: &Workspace,
    errs_out: &mut [f32],
    rng: &mut Rng,
    first_chunk: u64,
) -> Result<(), Error> {
    net.check_workspace(ws)?;
    let n = net.output_size();
    let b = ws.batch();
    let acts = &ws.activation_buffers()[net.num_layers()];
    if errs_out.len() < n * b {
        return Err(Error::Shape(format!(
            "the output error buffer holds {} values, the minibatch needs {n} x {b}",
            errs_out.len()
        )));
    }
    let errs_out = &mut errs_out[..n * b];
    let seed = rng.next_u64();
    let likelihood = net.likelihood();
    let chunk_len = SAMPLE_CHUNK_COLS * n;
    let sample = |(c, out): (usize, &mut [f32])| {
        let mut rng = Rng::new(seed.wrapping_add(first_chunk.wrapping_add(c as u64)));
        let j0 = c * SAMPLE_CHUNK_COLS;
        sample_columns(likelihood, n, &acts[j0 * (n + 1)..], out, &mut rng);
    };
    let parallel = ws.par().degree() > 1 && b > SAMPLE_CHUNK_COLS;
    for_each_chunk(errs_out, chunk_len, parallel, sample);
    Ok(())
}

/// For a Gaussian likelihood: the lower Cholesky factor of `W_L^T W_L`
/// (`W_L` the output layer's weights, `n_{L-1} x n_{L-1}`) into `out`, the
/// covariance of `W_L^T e_L` for standard normal output errors `e_L`
/// (see [`sample_penultimate_error`]). Returns false, with `out`
/// garbage, when the factorisation fails (`W_L` of rank below `n_{L-1}`).
/// `stack` holds [`penultimate_scratch`].
pub(crate) fn output_weight_factor(
    net: &Mlp,
    out: &mut [f32],
    par: Par,
    stack: &mut MemStack,
) -> Result<bool, Error> {
    let last = net.layers().last().expect("a network has layers");
    let n = last.n_in;
    let mut c = view_mut(&mut out[..n * n], n, n, n);
    syrk_lower(c.rb_mut(), 0.0, last.weights().transpose(), 1.0, par, stack)?;
    match cholesky_in_place(c, 0.0, par, stack) {
        Ok(()) => Ok(true),
        Err(natgrad_kernels::Error::NotPositiveDefinite { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Scratch of [`output_weight_factor`] and [`sample_penultimate_error`] at
/// up to `max_batch` columns.
pub(crate) fn penultimate_scratch(net: &Mlp, max_batch: usize, par: Par) -> StackReq {
    let last = net.layers().last().expect("a network has layers");
    let (n, m) = (last.n_in, last.n_out);
    StackReq::any_of(&[
        syrk_scratch(n, m, par),
        cholesky_scratch(n, par),
        lower_times_scratch(n, max_batch, par),
    ])
}

/// For a Gaussian likelihood and a network of two or more layers: writes
/// into `errs_out` (the slot of layer `L-1`) the error that sampled
/// targets back-propagate to the layer below the output,
/// `e_{L-1} = phi'_{L-1}(a_{L-1}) .* (W_L^T e_L)`, drawn from its
/// distribution instead of through `e_L`: the output errors are standard
/// normal (see [`sample_output_error`]), so `W_L^T e_L ~ N(0, W_L^T
/// W_L)`, drawn as `C z` with `C` from [`output_weight_factor`] in
/// `factor` and `z` standard normal: `n_{L-1}^2 b` flops and `n_{L-1} b`
/// samples instead of `2 n_L n_{L-1} b` flops and `n_L b` samples.
///
/// Draws one 64-bit seed from `rng`; column chunks of
/// [`SAMPLE_CHUNK_COLS`] then come from their own streams, as in
/// [`sample_output_error`], so the draw does not depend on the
/// number of threads.
pub(crate) fn sample_penultimate_error(
    net: &Mlp,
    ws: &Workspace,
    factor: &[f32],
    errs_out: &mut [f32],
    rng: &mut Rng,
    stack: &mut MemStack,
) -> Result<(), Error> {
    let layers = net.layers();
    let l = layers.len();
    let n = layers[l - 1].n_in;
    let act = layers[l - 2].activation;
    let (b, par) = (ws.batch(), ws.par());
    let errs_out = &mut errs_out[..n * b];
    let seed = rng.next_u64();
    let chunk_len = SAMPLE_CHUNK_COLS * n;
    let draw = |(c, out): (usize, &mut [f32])| {
        Rng::new(seed.wrapping_add(c as u64)).fill_normal_fast(out);
    };
    let parallel = par.degree() > 1 && b > SAMPLE_CHUNK_COLS;
    for_each_chunk(errs_out, chunk_len, parallel, draw);
    let c = MatRef::from_column_major_slice(&factor[..n * n], n, n);
    lower_times_in_place(c, view_mut(errs_out, n, b, n), par, stack)?;
    // phi' from the layer's outputs, column by column.
    let acts = &ws.activation_buffers()[l - 1];
    let scale = |(j, e): (usize, &mut [f32])| {
        let a = &acts[j * (n + 1)..j * (n + 1) + n];
        for (e, &a) in e.iter_mut().zip(a) {
            *e *= act.derivative_from_output(a);
        }
    };
    for_each_chunk(errs_out, n, parallel, scale);
    Ok(())
}

/// The expectation over sampled targets of the output layer's backward
/// factor, `E_y~[e_L e_L^T]` averaged over the minibatch of `net`'s last
/// forward pass in `ws`, where the likelihood makes it diagonal: writes its
/// diagonal into `out[..n]` and returns true. Gaussian: `e = -noise`, so the
/// factor is `I` (every entry 1). Bernoulli: the outputs are independent
/// with `Var(y~_k) = p_k (1 - p_k)`, `p = sigmoid(s)`, so the entries are the
/// minibatch means of `p_k (1 - p_k)`. Categorical: `diag(p) - p p^T` is not
/// diagonal ([`Likelihood::has_diagonal_output_fisher`] is false); returns
/// false and leaves `out` alone.
///
/// # Errors
/// [`Error::Shape`] if `ws` was built for another network or `out` is
/// shorter than `n_L`.
pub fn output_fisher_diagonal(net: &Mlp, ws: &Workspace, out: &mut [f32]) -> Result<bool, Error> {
    net.check_workspace(ws)?;
    let likelihood = net.likelihood();
    if !likelihood.has_diagonal_output_fisher() {
        return Ok(false);
    }
    let n = net.output_size();
    let b = ws.batch();
    if out.len() < n {
        return Err(Error::Shape(format!(
            "the diagonal buffer holds {} values, the output layer has {n}",
            out.len()
        )));
    }
    let out = &mut out[..n];
    match likelihood {
        Likelihood::Gaussian => {
            out.fill(1.0);
            Ok(true)
        }
        Likelihood::Bernoulli => {
            let acts = &ws.activation_buffers()[net.num_layers()];
            out.fill(0.0);
            for j in 0..b {
                let s = &acts[j * (n + 1)..j * (n + 1) + n];
                for (o, &v) in out.iter_mut().zip(s) {
                    let p = Activation::Sigmoid.apply(v);
                    *o += p * (1.0 - p);
                }
            }
            let inv = 1.0 / b.max(1) as f32;
            out.iter_mut().for_each(|o| *o *= inv);
            Ok(true)
        }
        Likelihood::Categorical => unreachable!("checked above"),
    }
}
/// The sampled output errors of `out.len() / n` consecutive columns whose
/// pre-activations (stride `n + 1`) start at `acts`.
fn sample_columns(likelihood: Likelihood, n: usize, acts: &[f32], out: &mut [f32], rng: &mut Rng) {
    match likelihood {
        Likelihood::Gaussian => rng.fill_normal_fast(out),
        Likelihood::Bernoulli => {
            for (j, e) in out.chunks_exact_mut(n).enumerate() {
                let s = &acts[j * (n + 1)..j * (n + 1) + n];
                for (e, &s) in e.iter_mut().zip(s) {
                    let p = Activation::Sigmoid.apply(s);
                    let y = if rng.uniform_f32() < p { 1.0 } else { 0.0 };
                    *e = p - y;
                }
            }
        }
        Likelihood::Categorical => {
            for (j, e) in out.chunks_exact_mut(n).enumerate() {
                let s = &acts[j * (n + 1)..j * (n + 1) + n];
                let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let z: f32 = s.iter().map(|&v| (v - m).exp()).sum();
                let u = rng.uniform_f32() * z;
                let mut acc = 0.0;
                let mut pick = n - 1;
                for (i, &v) in s.iter().enumerate() {
                    acc += (v - m).exp();
                    if u < acc {
                        pick = i;
                        break;
                    }
                }
                for (i, e) in e.iter_mut().enumerate() {
                    *e = (s[i] - m).exp() / z - if i == pick { 1.0 } else { 0.0 };
                }
            }
        }
    }
}

/// Runs `f((c, chunk))` on the consecutive `len`-entry chunks of `buf` (the
/// last may be shorter), on the pool's threads when `parallel`, else in order:
/// the column-chunk loop of the samplers.
fn for_each_chunk(
    buf: &mut [f32],
    len: usize,
    parallel: bool,
    f: impl Fn((usize, &mut [f32])) + Send + Sync,
) {
    if parallel {
        buf.par_chunks_mut(len).enumerate().for_each(f);
    } else {
        buf.chunks_mut(len).enumerate().for_each(f);
    }
}

/// The buffers and the random stream of the natural gradient's Fisher
/// sampling, sized once for a network and a maximum minibatch.
pub(crate) struct FisherSampler {
    /// Errors back-propagated from sampled targets, one per layer (`n_i x b`).
    pub(crate) errs: Vec<Vec<f32>>,
    /// The Cholesky factor of the output layer's `W^T W` (see
    /// [`NaturalGradientConfig::wishart_output_factor`]; empty when unused).
    out_factor: Vec<f32>,
    /// The diagonal of the output layer's exact backward factor this step.
    pub(crate) output_diagonal: Vec<f32>,
    /// Scratch for the sampled backward pass and the direct draw.
    scratch: MemBuffer,
    /// The sampler's stream (part of a checkpoint).
    pub(crate) rng: Rng,
}

impl FisherSampler {
    /// The sampler of `net` at minibatches of up to `max_batch` columns.
    pub(crate) fn new(
        net: &Mlp,
        max_batch: usize,
        config: &NaturalGradientConfig,
    ) -> FisherSampler {
        // Scratch sized for the most demanding parallelism the kernels may run at.
        let par_sizing = Par::rayon(0);
        let errs = net
            .layers()
            .iter()
            .map(|l| vec![0.0; l.n_out * max_batch])
            .collect();
        let scratch = MemBuffer::new(StackReq::any_of(
            &net.layers()
                .iter()
                .map(|l| gemm_scratch(l.n_in, max_batch, l.n_out, par_sizing))
                .chain([penultimate_scratch(net, max_batch, par_sizing)])
                .collect::<Vec<_>>(),
        ));
        let last = net.layers().last().expect("a network has layers");
        let out_factor = if config.wishart_output_factor
            && net.likelihood() == Likelihood::Gaussian
            && net.num_layers() >= 2
            && last.n_out >= last.n_in
        {
            vec![0.0; last.n_in * last.n_in]
        } else {
            Vec::new()
        };
        FisherSampler {
            errs,
            out_factor,
            output_diagonal: vec![0.0; net.output_size()],
            scratch,
            rng: Rng::new(config.seed),
        }
    }

    /// The output layer's exact diagonal backward factor into
    /// `output_diagonal` (see [`output_fisher_diagonal`]).
    pub(crate) fn exact_output_diagonal(&mut self, net: &Mlp, ws: &Workspace) -> Result<(), Error> {
        output_fisher_diagonal(net, ws, &mut self.output_diagonal)?;
        Ok(())
    }

    /// Whether the layer below the output can draw its sampled errors
    /// directly at minibatch `b` (see [`sample_penultimate_error`]): where
    /// the sampler was built for it, where it takes fewer flops than the
    /// backward GEMM, and where `W_L^T W_L` factorises (factorised here
    /// when the rest holds).
    pub(crate) fn prepare_penultimate_draw(
        &mut self,
        net: &Mlp,
        b: usize,
        par: Par,
    ) -> Result<bool, Error> {
        if self.out_factor.is_empty() {
            return Ok(false);
        }
        // Flops: W^T W, its Cholesky and C z against the GEMM W^T e_L.
        let last = net.layers().last().expect("a network has layers");
        let (n, m) = (last.n_in as f64, last.n_out as f64);
        let bf = b as f64;
        if n * m + n * n / 3.0 + n * bf >= 2.0 * m * bf {
            return Ok(false);
        }
        let stack = MemStack::new(&mut self.scratch);
        output_weight_factor(net, &mut self.out_factor, par, stack)
    }

    /// One draw of targets from the model for the minibatch of `net`'s last
    /// forward pass in `ws`, back-propagated into `errs` (errors only, no
    /// gradients): from sampled output errors, or, when `penultimate` (after
    /// [`FisherSampler::prepare_penultimate_draw`] returned true), from the
    /// layer below the output drawn directly. `first_chunk` as for
    /// [`sample_output_error_from`] (0 for a whole minibatch).
    pub(crate) fn draw_and_backpropagate(
        &mut self,
        net: &Mlp,
        ws: &Workspace,
        penultimate: bool,
        first_chunk: u64,
    ) -> Result<(), Error> {
        let last = net.num_layers() - 1;
        let (b, par) = (ws.batch(), ws.par());
        let acts = ws.activation_buffers();
        if penultimate {
            let stack = MemStack::new(&mut self.scratch);
            let errs = &mut self.errs[last - 1];
            sample_penultimate_error(net, ws, &self.out_factor, errs, &mut self.rng, stack)?;
            let stack = MemStack::new(&mut self.scratch);
            net.backward_from(last - 1, acts, &mut self.errs, None, b, par, stack)
        } else {
            let errs = &mut self.errs[last];
            sample_output_error_from(net, ws, errs, &mut self.rng, first_chunk)?;
            let stack = MemStack::new(&mut self.scratch);
            net.backward(acts, &mut self.errs, None, b, par, stack)
        }
    }
}
