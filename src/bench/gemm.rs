//! Quick-bench lines for `gemm`, `forward` and the FMA `peak`.
//!
//! Shapes: every layer of the `deep` autoencoder (PAPER.md) as `Y = W X` with
//! `W` of shape `n_out x n_in` and a minibatch of 256 columns, plus 1024^3.
//! `gemm` is compared with faer's matmul and with matrixmultiply's sgemm;
//! `forward` (fused `act(W X + b 1^T)`) with faer's matmul followed by a
//! separate bias + activation pass (the same vectorised activation code, so
//! the difference is the extra pass over memory, not the quality of `exp`).

use super::{measure_interleaved, pool, reps_for};
use natgrad_kernels::gemm::{
    activate_slice_with_isa, fma_peak_loop, gemm, gemm_fused, gemm_scratch, matrixmultiply_gemm,
    Epilogue,
};
use natgrad_kernels::rng::Rng;
use natgrad_kernels::{Activation, Isa, MatMut, MatRef, MemBuffer, MemStack, Par};
use std::num::NonZeroUsize;
use std::time::Instant;

/// Layer sizes of the `deep` autoencoder.
pub const DEEP: [usize; 9] = [784, 1000, 500, 250, 30, 250, 500, 1000, 784];

/// Seconds each side of one comparison runs for, roughly.
const TARGET_SECS: f64 = 0.12;

/// `(m, k, n)` of the forward GEMM of every `deep` layer at minibatch `batch`.
pub fn deep_shapes(batch: usize) -> Vec<(usize, usize, usize)> {
    DEEP.windows(2).map(|w| (w[1], w[0], batch)).collect()
}

/// The activation of the `deep` network's layer with `n_out` outputs at
/// position `layer` (linear code layer, sigmoid elsewhere).
fn deep_activation(n_out: usize) -> Activation {
    if n_out == 30 {
        Activation::Identity
    } else {
        Activation::Sigmoid
    }
}

fn par_for(threads: usize) -> Par {
    match NonZeroUsize::new(threads) {
        Some(t) if threads > 1 => Par::Rayon(t),
        _ => Par::Seq,
    }
}

fn random(len: usize, rng: &mut Rng) -> Vec<f32> {
    (0..len).map(|_| rng.uniform_f32() * 2.0 - 1.0).collect()
}

/// Times `f` once (after one warm-up call) to pick the repetition count.
fn reps_for_call(mut f: impl FnMut()) -> usize {
    f();
    let t = Instant::now();
    f();
    reps_for(t.elapsed().as_secs_f64(), TARGET_SECS)
}

fn line(
    kernel: &str,
    (m, k, n): (usize, usize, usize),
    threads: usize,
    ours: f64,
    baseline: &str,
    base: f64,
) -> String {
    let flops = 2.0 * (m * k * n) as f64;
    let (g_ours, g_base) = (flops / ours * 1e-9, flops / base * 1e-9);
    format!(
        "{{\"kernel\": \"{kernel}\", \"m\": {m}, \"k\": {k}, \"n\": {n}, \"threads\": {threads}, \
         \"ours_gflops\": {g_ours:.1}, \"baseline\": \"{baseline}\", \"baseline_gflops\": {g_base:.1}, \
         \"ratio\": {:.3}}}",
        g_ours / g_base
    )
}

/// Measures the FMA peak in GFLOP/s on `threads` threads: every thread runs
/// the register-resident loop of [`fma_peak_loop`] (24 independent FMA chains,
/// widest vectors) at once; best of many short runs (about 0.4 ms each), so a
/// run that the OS interrupted (the machine is shared) does not count.
pub fn fma_peak_gflops(threads: usize) -> f64 {
    let isa = Isa::detect();
    let iterations = 100_000;
    let p = pool(threads);
    let mut best: f64 = 0.0;
    for _ in 0..200 {
        let t = Instant::now();
        let results = p.broadcast(|_| fma_peak_loop(isa, iterations).unwrap_or((0.0, 0.0)));
        let secs = t.elapsed().as_secs_f64();
        let flops: f64 = results.iter().map(|r| r.1).sum();
        std::hint::black_box(results.iter().map(|r| r.0).sum::<f32>());
        best = best.max(flops / secs * 1e-9);
    }
    best
}

/// One `gemm` comparison per baseline at shape `(m, k, n)` on the current pool.
fn gemm_lines(
    shape: (usize, usize, usize),
    threads: usize,
    rng: &mut Rng,
    emit: &mut dyn FnMut(String),
) {
    let (m, k, n) = shape;
    let par = par_for(threads);
    let w = random(m * k, rng);
    let x = random(k * n, rng);
    let mut y = vec![0.0f32; m * n];
    let mut y_base = vec![0.0f32; m * n];
    let mut buf = MemBuffer::new(gemm_scratch(m, n, k, par));
    let wv = MatRef::from_column_major_slice(&w, m, k);
    let xv = MatRef::from_column_major_slice(&x, k, n);
    let mut ours = || {
        let c = MatMut::from_column_major_slice_mut(&mut y, m, n);
        gemm(c, 0.0, wv, xv, 1.0, par, MemStack::new(&mut buf)).expect("gemm shapes agree");
    };
    let faer_mm = |out: &mut [f32]| {
        let c = MatMut::from_column_major_slice_mut(out, m, n);
        faer::linalg::matmul::matmul(c, faer::Accum::Replace, wv, xv, 1.0, par);
    };
    let reps = reps_for_call(&mut ours);
    let (t_ours, t_base) = measure_interleaved(reps, &mut ours, || faer_mm(&mut y_base));
    emit(line("gemm", shape, threads, t_ours, "faer", t_base));
    if threads != matrixmultiply_threads() {
        return;
    }
    let mm = |out: &mut [f32]| {
        let c = MatMut::from_column_major_slice_mut(out, m, n);
        matrixmultiply_gemm(c, 0.0, wv, xv, 1.0).expect("shapes agree");
    };
    let (t_ours, t_base) = measure_interleaved(reps, &mut ours, || mm(&mut y_base));
    emit(line(
        "gemm",
        shape,
        threads,
        t_ours,
        "matrixmultiply",
        t_base,
    ));
}

/// The unfused baseline's second pass: `Y = act(Y + b 1^T)` column by column
/// with natgrad's vectorised activation, on `threads` threads (columns split
/// between them), so the baseline differs from the fused kernel only by the
/// extra pass over `Y`.
pub fn separate_epilogue(
    y: &mut [f32],
    m: usize,
    bias: &[f32],
    act: Activation,
    isa: Isa,
    threads: usize,
) {
    let one_column = |col: &mut [f32]| {
        for (v, b) in col.iter_mut().zip(bias) {
            *v += b;
        }
        activate_slice_with_isa(isa, act, col).expect("detected ISA is available");
    };
    if threads > 1 {
        use rayon::prelude::*;
        y.par_chunks_exact_mut(m).for_each(one_column);
    } else {
        y.chunks_exact_mut(m).for_each(one_column);
    }
}

/// One `forward` comparison at shape `(m, k, n)` on the current pool.
fn forward_line(
    shape: (usize, usize, usize),
    threads: usize,
    rng: &mut Rng,
    emit: &mut dyn FnMut(String),
) {
    let (m, k, n) = shape;
    let par = par_for(threads);
    let act = deep_activation(m);
    let isa = Isa::detect();
    let w = random(m * k, rng);
    let x = random(k * n, rng);
    let bias = random(m, rng);
    let mut y = vec![0.0f32; m * n];
    let mut y_base = vec![0.0f32; m * n];
    let mut buf = MemBuffer::new(gemm_scratch(m, n, k, par));
    let wv = MatRef::from_column_major_slice(&w, m, k);
    let xv = MatRef::from_column_major_slice(&x, k, n);
    let mut ours = || {
        let c = MatMut::from_column_major_slice_mut(&mut y, m, n);
        let epilogue = Epilogue::BiasActivation {
            bias: Some(&bias),
            activation: act,
        };
        gemm_fused(c, 0.0, wv, xv, 1.0, epilogue, par, MemStack::new(&mut buf))
            .expect("gemm shapes agree");
    };
    let mut baseline = || {
        let c = MatMut::from_column_major_slice_mut(&mut y_base, m, n);
        faer::linalg::matmul::matmul(c, faer::Accum::Replace, wv, xv, 1.0, par);
        separate_epilogue(&mut y_base, m, &bias, act, isa, threads);
    };
    let reps = reps_for_call(&mut ours);
    let (t_ours, t_base) = measure_interleaved(reps, &mut ours, &mut baseline);
    emit(line(
        "forward",
        shape,
        threads,
        t_ours,
        "faer+epilogue",
        t_base,
    ));
}

/// The thread count matrixmultiply uses in this process (its rule: the
/// environment variable `MATMUL_NUM_THREADS`, else the number of cores, clamped
/// to 1..=4).
pub fn matrixmultiply_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::env::var("MATMUL_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(cores)
        .clamp(1, 4)
}

/// Emits the JSON lines for the GEMM kernels at `threads` thread counts: the
/// FMA peak, then `gemm` and `forward` at every `deep` layer shape with
/// minibatch 256, then `gemm` at 1024^3.
///
/// matrixmultiply sizes its own thread pool once per process
/// (`MATMUL_NUM_THREADS`, default: physical cores), so its lines are printed
/// only for the thread count it actually uses; run with `MATMUL_NUM_THREADS=1`
/// to get its single-threaded lines.
pub fn quick_lines(threads: &[usize], emit: &mut dyn FnMut(String)) {
    let mut rng = Rng::new(20181203);
    for &t in threads {
        emit(format!(
            "{{\"kernel\": \"peak\", \"threads\": {t}, \"gflops\": {:.1}}}",
            fma_peak_gflops(t)
        ));
    }
    for &t in threads {
        let p = pool(t);
        for shape in deep_shapes(256) {
            let lines = p.install(|| {
                let mut lines = Vec::new();
                gemm_lines(shape, t, &mut rng, &mut |l| lines.push(l));
                forward_line(shape, t, &mut rng, &mut |l| lines.push(l));
                lines
            });
            lines.into_iter().for_each(&mut *emit);
        }
        let lines = p.install(|| {
            let mut lines = Vec::new();
            gemm_lines((1024, 1024, 1024), t, &mut rng, &mut |l| lines.push(l));
            lines
        });
        lines.into_iter().for_each(&mut *emit);
    }
}
