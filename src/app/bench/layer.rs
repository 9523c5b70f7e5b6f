//! Quick-bench `layer` lines: the three GEMMs of one layer of the training
//! step, each as a fraction of the FMA peak measured next to it.
//!
//! The calls are the step's own (`Mlp::forward_layer`,
//! `Mlp::input_grad_layer`, `Mlp::weight_grad_layer`, which
//! `Mlp::forward_from_input` and `Mlp::backward_from` run), made on a real
//! [`Workspace`] of the preset's network after a forward pass:
//!
//! * `forward`: `abar_{i+1} = act(W_i abar_i + b_i 1^T)`, `gemm_fused` with
//!   the bias + activation epilogue; `W` is the `n_out x n_in` head of the
//!   layer's `[W | b]` (leading dimension `n_out`), the input the `n_in`
//!   rows of `acts[i]` (leading dimension `n_in + 1`), the output the
//!   `n_out` rows of `acts[i+1]` (leading dimension `n_out + 1`).
//!   `(m, k, n) = (n_out, n_in, b)`.
//! * `input_grad` (layers above the first): `e_{i-1} = (W_i^T e_i) .*
//!   phi'(a_{i-1})`, `gemm_fused` with `W^T` (a transposed view) and the
//!   activation-derivative epilogue reading `acts[i]`. `(m, k, n) = (n_in,
//!   n_out, b)`.
//! * `weight_grad`: `G_i = (1/b) E_i Abar_i^T` with the bias column, `gemm`
//!   with the activations transposed; the batch is the inner dimension.
//!   `(m, k, n) = (n_out, b, n_in + 1)`.
//!
//! Each counts `2 m k n` flops (the epilogues' few operations per output
//! are not counted).

use super::gemm::{paired_with_peak, Paired};
use super::{par_for, pool, random};
use crate::app::json::{line, round};
use crate::mlp::Mlp;
#[cfg(feature = "openblas")]
use crate::workspace::{view, view_mut};
use crate::workspace::{Buffers, Workspace};
use natgrad_kernels::rng::Rng;
use natgrad_kernels::{MatRef, MemStack, Par};
use serde::Serialize;
use std::time::Instant;

/// The presets whose layers are measured.
pub const PRESETS: [&str; 2] = ["deep", "paper"];

/// The minibatches measured.
pub const BATCHES: [usize; 3] = [100, 256, 1000];

/// Seconds a `layer` line's pairs (calls and FMA runs) take together,
/// roughly; at least [`MIN_PAIRS`] pairs whatever the length.
const TARGET_SECS: f64 = 0.04;

/// The fewest pairs a line takes.
const MIN_PAIRS: usize = 5;

/// The most pairs a line takes (as the 1024^3 `peak_fraction` line).
const MAX_PAIRS: usize = 30;

/// Calls shorter than this are timed in runs of back-to-back calls (at most
/// 64), as in `measure_interleaved`.
const RUN_SECS: f64 = 1e-3;

/// One of the three GEMMs of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// `act(W X + b 1^T)`.
    Forward,
    /// `(W^T E) .* phi'(A)`.
    InputGrad,
    /// `(1/b) E Abar^T`.
    WeightGrad,
}

impl Pass {
    /// The name in the JSON line.
    pub fn name(self) -> &'static str {
        match self {
            Pass::Forward => "forward",
            Pass::InputGrad => "input_grad",
            Pass::WeightGrad => "weight_grad",
        }
    }
}

/// One GEMM of the step: layer `layer` (0-based), its pass, and the GEMM's
/// `(m, k, n)` (C is `m x n`, inner dimension `k`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerCall {
    /// 0-based index of the layer.
    pub layer: usize,
    /// Which product.
    pub pass: Pass,
    /// `(m, k, n)`.
    pub shape: (usize, usize, usize),
}

impl LayerCall {
    /// `2 m k n`.
    pub fn flops(&self) -> f64 {
        let (m, k, n) = self.shape;
        2.0 * m as f64 * k as f64 * n as f64
    }
}

/// The GEMMs of one training step's forward and backward passes of a network
/// of widths `sizes` at minibatch `batch`, in the order of the layers; the
/// first layer has no `input_grad` (mlp.rs does not propagate to the input).
pub fn layer_calls(sizes: &[usize], batch: usize) -> Vec<LayerCall> {
    let mut calls = Vec::new();
    for (i, w) in sizes.windows(2).enumerate() {
        let (n_in, n_out) = (w[0], w[1]);
        calls.push(LayerCall {
            layer: i,
            pass: Pass::Forward,
            shape: (n_out, n_in, batch),
        });
        if i > 0 {
            calls.push(LayerCall {
                layer: i,
                pass: Pass::InputGrad,
                shape: (n_in, n_out, batch),
            });
        }
        calls.push(LayerCall {
            layer: i,
            pass: Pass::WeightGrad,
            shape: (n_out, batch, n_in + 1),
        });
    }
    calls
}

/// Runs `call` once on the workspace's buffers through the step's own per-layer method
/// (see the module's docs).
fn run(
    net: &Mlp,
    bufs: &mut Buffers<'_>,
    call: LayerCall,
    b: usize,
    par: Par,
) -> Result<(), crate::Error> {
    let stack = MemStack::new(bufs.scratch);
    let i = call.layer;
    match call.pass {
        Pass::Forward => net.forward_layer(i, bufs.acts, b, par, stack)?,
        Pass::InputGrad => net.input_grad_layer(i, bufs.acts, bufs.errs, b, par, stack)?,
        Pass::WeightGrad => {
            net.weight_grad_layer(i, bufs.acts, bufs.errs, bufs.grads, b, par, stack)?
        }
    }
    Ok(())
}

/// The same product through OpenBLAS's `sgemm` (no epilogue), on the same
/// operands.
#[cfg(feature = "openblas")]
fn run_openblas(
    net: &Mlp,
    bufs: &mut Buffers<'_>,
    call: LayerCall,
    b: usize,
    threads: usize,
) -> Result<(), crate::Error> {
    use natgrad_kernels::gemm::openblas_gemm;
    let i = call.layer;
    let layer = &net.layers()[i];
    match call.pass {
        Pass::Forward => {
            let (before, after) = bufs.acts.split_at_mut(i + 1);
            let input = view(&before[i], layer.n_in, b, layer.n_in + 1);
            let out = view_mut(&mut after[0], layer.n_out, b, layer.n_out + 1);
            openblas_gemm(out, 0.0, layer.weights(), input, 1.0, threads)?;
        }
        Pass::InputGrad => {
            let (lo, hi) = bufs.errs.split_at_mut(i);
            let e = view(&hi[0], layer.n_out, b, layer.n_out);
            let out = view_mut(&mut lo[i - 1], layer.n_in, b, layer.n_in);
            openblas_gemm(out, 0.0, layer.weights().transpose(), e, 1.0, threads)?;
        }
        Pass::WeightGrad => {
            let e = view(&bufs.errs[i], layer.n_out, b, layer.n_out);
            let a = view(&bufs.acts[i], layer.n_in + 1, b, layer.n_in + 1);
            let g = view_mut(&mut bufs.grads[i], layer.n_out, layer.n_in + 1, layer.n_out);
            openblas_gemm(g, 0.0, e, a.transpose(), 1.0 / b.max(1) as f32, threads)?;
        }
    }
    Ok(())
}

/// One `layer` line.
#[derive(Serialize)]
struct LayerLine<'a> {
    kernel: &'static str,
    preset: &'a str,
    layer: usize,
    pass: &'static str,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    threads: usize,
    ours_gflops: f64,
    peak_gflops: f64,
    peak_fraction: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    openblas_gflops: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    openblas_peak_fraction: Option<f64>,
}

/// Pairs and calls per run for a call that took `one` seconds: runs of
/// about [`RUN_SECS`], and as many pairs as fit in [`TARGET_SECS`] (a pair
/// lasts twice its run), within [`MIN_PAIRS`]..=[`MAX_PAIRS`].
fn pairs_and_calls(one: f64) -> (usize, usize) {
    let calls = ((RUN_SECS / one.max(1e-9)).ceil() as usize).clamp(1, 64);
    let run = one * calls as f64;
    let pairs = ((TARGET_SECS / (2.0 * run)) as usize).clamp(MIN_PAIRS, MAX_PAIRS);
    (pairs, calls)
}

/// Measures `f` paired with the FMA peak (see [`paired_with_peak`]).
fn measure(flops: f64, f: &mut dyn FnMut()) -> Paired {
    f();
    let t = Instant::now();
    f();
    let (pairs, calls) = pairs_and_calls(t.elapsed().as_secs_f64());
    paired_with_peak(flops, pairs, calls, f)
}

/// The `layer` lines of `preset` at minibatch `batch` on `threads` threads
/// (on the current rayon pool, which must have `threads` threads).
pub fn preset_lines(
    preset: &str,
    batch: usize,
    threads: usize,
    emit: &mut dyn FnMut(String),
) -> Result<(), crate::Error> {
    let net = Mlp::preset(preset, 1)?;
    let par = par_for(threads);
    let mut ws = Workspace::new(&net, batch, par)?;
    let mut rng = Rng::new(20181203);
    let mut x = random(net.input_size() * batch, &mut rng);
    if preset == "deep" {
        x.iter_mut().for_each(|v| *v = 0.5 * (*v + 1.0));
    }
    net.forward(
        &mut ws,
        MatRef::from_column_major_slice(&x, net.input_size(), batch),
    )?;
    let mut bufs = ws.buffers_mut();
    for e in bufs.errs.iter_mut() {
        let fill = random(e.len(), &mut rng);
        e.copy_from_slice(&fill);
    }
    for call in layer_calls(&net.sizes(), batch) {
        // One checked call: the closures below then cannot fail.
        run(&net, &mut bufs, call, batch, par)?;
        let ours = measure(call.flops(), &mut || {
            run(&net, &mut bufs, call, batch, par).expect("checked above");
        });
        #[allow(unused_mut)]
        let mut openblas: Option<Paired> = None;
        #[cfg(feature = "openblas")]
        if super::gemm::openblas_sleeps(threads) {
            run_openblas(&net, &mut bufs, call, batch, threads)?;
            openblas = Some(measure(call.flops(), &mut || {
                run_openblas(&net, &mut bufs, call, batch, threads).expect("checked above");
            }));
        }
        let (m, k, n) = call.shape;
        emit(line(&LayerLine {
            kernel: "layer",
            preset,
            layer: call.layer,
            pass: call.pass.name(),
            batch,
            m,
            k,
            n,
            threads,
            ours_gflops: round(ours.gflops, 1),
            peak_gflops: round(ours.peak_gflops, 1),
            peak_fraction: round(ours.fraction, 3),
            openblas_gflops: openblas.map(|p| round(p.gflops, 1)),
            openblas_peak_fraction: openblas.map(|p| round(p.fraction, 3)),
        }));
    }
    Ok(())
}

/// Every `layer` line: each preset of [`PRESETS`] at each minibatch of
/// [`BATCHES`], on each of `threads`.
pub fn quick_lines(threads: &[usize], emit: &mut dyn FnMut(String)) -> Result<(), crate::Error> {
    for &t in threads {
        let p = pool(t);
        for preset in PRESETS {
            for batch in BATCHES {
                let lines = p.install(|| -> Result<Vec<String>, crate::Error> {
                    let mut lines = Vec::new();
                    preset_lines(preset, batch, t, &mut |l| lines.push(l))?;
                    Ok(lines)
                })?;
                lines.into_iter().for_each(&mut *emit);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_calls_have_the_step_shapes_and_flops() {
        let calls = layer_calls(&[784, 1000, 500], 256);
        let got: Vec<_> = calls.iter().map(|c| (c.layer, c.pass, c.shape)).collect();
        assert_eq!(
            got,
            vec![
                (0, Pass::Forward, (1000, 784, 256)),
                (0, Pass::WeightGrad, (1000, 256, 785)),
                (1, Pass::Forward, (500, 1000, 256)),
                (1, Pass::InputGrad, (1000, 500, 256)),
                (1, Pass::WeightGrad, (500, 256, 1001)),
            ]
        );
        assert_eq!(calls[0].flops(), 2.0 * 1000.0 * 784.0 * 256.0);
        assert_eq!(calls[3].flops(), 2.0 * 1000.0 * 500.0 * 256.0);
        assert_eq!(calls[4].flops(), 2.0 * 500.0 * 256.0 * 1001.0);
    }

    #[test]
    fn layer_lines_are_finite_and_complete() {
        let mut lines = Vec::new();
        pool(1).install(|| preset_lines("paper", 20, 1, &mut |l| lines.push(l)).unwrap());
        // 8 layers: 8 forward, 7 input_grad, 8 weight_grad.
        assert_eq!(lines.len(), 23);
        for l in &lines {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["kernel"], "layer");
            for f in ["m", "k", "n", "batch", "threads"] {
                assert!(v[f].as_u64().unwrap() > 0, "{f} in {l}");
            }
            for f in ["ours_gflops", "peak_gflops", "peak_fraction"] {
                let x = v[f].as_f64().unwrap();
                assert!(x.is_finite() && x > 0.0, "{f} in {l}");
            }
        }
    }
}
