//! Quick-bench lines for `gemm`, `forward`, the FMA `peak` and the 1024^3
//! GEMM's `peak_fraction`.
//!
//! Shapes: every layer of the `deep` autoencoder (docs/math.md section 4) as `Y = W X` with
//! `W` of shape `n_out x n_in` and a minibatch of 256 columns, plus 1024^3.
//! `gemm` is compared with faer's matmul and with matrixmultiply's sgemm;
//! `forward` (fused `act(W X + b 1^T)`) with faer's matmul followed by a
//! separate bias + activation pass (the same vectorised activation code, so
//! the difference is the extra pass over memory, not the quality of `exp`).

use super::{comparison_line, measure_interleaved, median, par_for, pool, random};
use crate::app::json::round;
use natgrad_kernels::gemm::{
    activate_slice_with_isa, fma_peak_loop, gemm, gemm_fused, gemm_scratch, matrixmultiply_gemm,
    Epilogue,
};
use natgrad_kernels::rng::Rng;
use natgrad_kernels::{Activation, Isa, MatMut, MatRef, MemBuffer, MemStack};
use serde::Serialize;
use std::time::Instant;

/// Layer sizes of the `paper` autoencoder.
pub const PAPER: [usize; 9] = [784, 400, 200, 100, 50, 100, 200, 400, 784];

/// Layer sizes of the `deep` autoencoder.
pub const DEEP: [usize; 9] = [784, 1000, 500, 250, 30, 250, 500, 1000, 784];

/// Seconds each side of one comparison runs for, roughly.
const TARGET_SECS: f64 = 0.12;

/// `(m, k, n)` of the forward GEMM of every layer of `preset` (`paper` or
/// `deep`, anything else gives `deep`) at minibatch `batch`, with the
/// layer's activation: `deep`'s hidden layers are sigmoid and its 30-wide
/// code layer linear; `paper`'s hidden layers tanh and its output linear.
/// `natgrad bench kernels` and the criterion benches measure these shapes.
pub fn layer_shapes(preset: &str, batch: usize) -> Vec<((usize, usize, usize), Activation)> {
    let (sizes, hidden) = if preset == "paper" {
        (PAPER, Activation::Tanh)
    } else {
        (DEEP, Activation::Sigmoid)
    };
    sizes
        .windows(2)
        .map(|w| {
            let (n_in, n_out) = (w[0], w[1]);
            let linear = n_out == 30 || (preset == "paper" && n_out == 784);
            let act = if linear { Activation::Identity } else { hidden };
            ((n_out, n_in, batch), act)
        })
        .collect()
}

/// The comparison line of a GEMM-shaped kernel (`2 m k n` flops a call).
fn line(
    kernel: &str,
    (m, k, n): (usize, usize, usize),
    threads: usize,
    ours: f64,
    baseline: &str,
    base: f64,
) -> String {
    let flops = 2.0 * (m * k * n) as f64;
    comparison_line(kernel, (m, k, n), threads, flops, ours, baseline, base)
}

/// The `peak_fraction` line: a GEMM's rate as a fraction of the FMA peak
/// measured next to it in time.
#[derive(Serialize)]
struct PeakFractionLine<'a> {
    kernel: &'static str,
    of: &'a str,
    m: usize,
    k: usize,
    n: usize,
    threads: usize,
    ours_gflops: f64,
    peak_gflops: f64,
    fraction: f64,
}

/// The `peak` line: the FMA loop's rate on `threads` threads.
#[derive(Serialize)]
struct PeakLine {
    kernel: &'static str,
    threads: usize,
    gflops: f64,
}

/// Measures the FMA peak in GFLOP/s on `threads` threads: every thread runs
/// the register-resident loop of [`fma_peak_loop`] (as many independent FMA
/// chains as the register file holds, widest vectors) at once; best of many
/// short runs (about 0.4 ms each), so a run that the OS interrupted (the
/// machine is shared) does not count.
pub fn fma_peak_gflops(threads: usize) -> f64 {
    let isa = Isa::detect();
    pool(threads).install(|| {
        (0..200)
            .map(|_| peak_run(isa, 100_000).0)
            .fold(0.0, f64::max)
    })
}

/// Runs [`fma_peak_loop`] for `iterations` on every thread of the current
/// rayon pool at once; returns the GFLOP/s of all of them together and the
/// seconds the run took.
fn peak_run(isa: Isa, iterations: usize) -> (f64, f64) {
    let t = Instant::now();
    let results = rayon::broadcast(|_| fma_peak_loop(isa, iterations).unwrap_or((0.0, 0.0)));
    let secs = t.elapsed().as_secs_f64();
    std::hint::black_box(results.iter().map(|r| r.0).sum::<f32>());
    (results.iter().map(|r| r.1).sum::<f64>() / secs * 1e-9, secs)
}

/// Pairs measured by [`peak_fraction_line`].
const PEAK_PAIRS: usize = 30;

/// The `peak_fraction` line of `ours`, a GEMM of shape `(m, k, n)` on the
/// current pool with `threads` threads (named in the line as `"of": of`,
/// `natgrad` or, with the `openblas` feature, `openblas`): the GEMM as a
/// fraction of the FMA peak measured next to it in time.
///
/// The shared host's clock and load change from second to second (the
/// best-of-200 `peak` line read 95-152 GFLOP/s on one core over one
/// session), so a median GEMM rate over a best-of-200 peak mixes two
/// moments. Here each of [`PEAK_PAIRS`] pairs is one call of `ours`
/// followed at once by one run of the peak loop on the same threads lasting
/// as long as the call did (its length set from the warm-up calls); the line
/// reports the median GEMM rate, the median peak rate and the median of the
/// pairs' ratios as `fraction`. Interference that slows the GEMM but not a
/// register-resident loop (another tenant's memory traffic in the shared
/// caches) still lowers `fraction`.
fn peak_fraction_line(
    (m, k, n): (usize, usize, usize),
    threads: usize,
    of: &str,
    ours: &mut dyn FnMut(),
) -> String {
    let flops = 2.0 * (m * k * n) as f64;
    let p = paired_with_peak(flops, PEAK_PAIRS, 1, ours);
    crate::app::json::line(&PeakFractionLine {
        kernel: "peak_fraction",
        of,
        m,
        k,
        n,
        threads,
        ours_gflops: round(p.gflops, 1),
        peak_gflops: round(p.peak_gflops, 1),
        fraction: round(p.fraction, 3),
    })
}

/// What [`paired_with_peak`] measured: medians over the pairs.
#[derive(Clone, Copy, Debug)]
pub struct Paired {
    /// Median GFLOP/s of the measured calls.
    pub gflops: f64,
    /// Median GFLOP/s of the FMA runs paired with them.
    pub peak_gflops: f64,
    /// Median of the pairs' ratios (call rate over peak rate).
    pub fraction: f64,
}

/// `pairs` pairs of (`calls` back-to-back calls of `ours`, `flops` each;
/// then at once the FMA peak loop on every thread of the current pool for
/// as long as those calls took, its length set from three warm-up pairs):
/// the method of the 1024^3 `peak_fraction` line, with `calls` > 1 for calls too
/// short to time one by one.
pub fn paired_with_peak(flops: f64, pairs: usize, calls: usize, ours: &mut dyn FnMut()) -> Paired {
    let isa = Isa::detect();
    let calls = calls.max(1);
    let mut timed = || {
        let t = Instant::now();
        for _ in 0..calls {
            ours();
        }
        t.elapsed().as_secs_f64()
    };
    // Iterations of the peak loop so that a run lasts as long as the calls.
    let mut iterations = 10_000;
    for _ in 0..3 {
        let secs = timed();
        let (_, peak_secs) = peak_run(isa, iterations);
        iterations = ((iterations as f64 * secs / peak_secs) as usize).max(1000);
    }
    let (mut g, mut p, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..pairs.max(1) {
        let gemm_rate = flops * calls as f64 / timed() * 1e-9;
        let (peak_rate, _) = peak_run(isa, iterations);
        g.push(gemm_rate);
        p.push(peak_rate);
        r.push(gemm_rate / peak_rate);
    }
    Paired {
        gflops: median(&mut g),
        peak_gflops: median(&mut p),
        fraction: median(&mut r),
    }
}

/// One `gemm` comparison per baseline at shape `(m, k, n)` on the current
/// pool, then, when `peak_fraction`, the [`peak_fraction_line`] of our GEMM
/// and (feature `openblas`) a comparison with OpenBLAS and its
/// [`peak_fraction_line`].
fn gemm_lines(
    shape: (usize, usize, usize),
    threads: usize,
    rng: &mut Rng,
    peak_fraction: bool,
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
    let reps = super::reps_for_call(TARGET_SECS, &mut ours);
    let (t_ours, t_base) = measure_interleaved(reps, &mut ours, || faer_mm(&mut y_base));
    emit(line("gemm", shape, threads, t_ours, "faer", t_base));
    if threads == matrixmultiply_threads() {
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
    if peak_fraction {
        emit(peak_fraction_line(shape, threads, "natgrad", &mut ours));
        #[cfg(feature = "openblas")]
        if openblas_sleeps(threads) {
            eprintln!(
                "openblas core: {}",
                natgrad_kernels::gemm::openblas_corename()
            );
            let mut openblas = || {
                let c = MatMut::from_column_major_slice_mut(&mut y_base, m, n);
                natgrad_kernels::gemm::openblas_gemm(c, 0.0, wv, xv, 1.0, threads)
                    .expect("shapes agree");
            };
            let (t_ours, t_base) = measure_interleaved(reps, &mut ours, &mut openblas);
            emit(line("gemm", shape, threads, t_ours, "openblas", t_base));
            emit(peak_fraction_line(
                shape,
                threads,
                "openblas",
                &mut openblas,
            ));
        }
    }
}

/// Whether OpenBLAS's worker threads go to sleep soon after a call, which
/// the OpenBLAS lines need: by default they spin for about 2^28 cycles
/// (a tenth of a second), on the two cores the next measurement (our GEMM,
/// the FMA loop) runs on; a run that way read OpenBLAS's paired peak at 142
/// GFLOP/s on two threads where the `peak` line read 275, and our GEMM at
/// 0.64 of OpenBLAS. OpenBLAS reads the setting (`OPENBLAS_THREAD_TIMEOUT`,
/// a power of two of cycles, clamped to 4..30) once, when it is loaded, so
/// it must come from the environment of the process; when it is missing
/// or above 10 the OpenBLAS lines are left out with a note on stderr.
#[cfg(feature = "openblas")]
pub(super) fn openblas_sleeps(threads: usize) -> bool {
    const VAR: &str = "OPENBLAS_THREAD_TIMEOUT";
    let ok = std::env::var(VAR)
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .is_some_and(|v| v <= 10);
    if !ok {
        eprintln!(
            "openblas lines ({threads} thread(s)) left out: run with {VAR}=4 so that \
             OpenBLAS's idle workers do not spin on the cores being measured"
        );
    }
    ok
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
    (shape, act): ((usize, usize, usize), Activation),
    threads: usize,
    rng: &mut Rng,
    emit: &mut dyn FnMut(String),
) {
    let (m, k, n) = shape;
    let par = par_for(threads);
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
    let reps = super::reps_for_call(TARGET_SECS, &mut ours);
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
/// minibatch 256, then `gemm` at 1024^3 and its `peak_fraction` line (one
/// GEMM call, then the FMA loop for as long on the same threads, 30 times;
/// the median of the pairs' ratios).
///
/// matrixmultiply sizes its own thread pool once per process
/// (`MATMUL_NUM_THREADS`, default: physical cores), so its lines are printed
/// only for the thread count it actually uses; run with `MATMUL_NUM_THREADS=1`
/// to get its single-threaded lines.
pub fn quick_lines(threads: &[usize], emit: &mut dyn FnMut(String)) {
    let mut rng = Rng::new(20181203);
    for &t in threads {
        emit(crate::app::json::line(&PeakLine {
            kernel: "peak",
            threads: t,
            gflops: round(fma_peak_gflops(t), 1),
        }));
    }
    for &t in threads {
        let p = pool(t);
        for (shape, act) in layer_shapes("deep", 256) {
            let lines = p.install(|| {
                let mut lines = Vec::new();
                gemm_lines(shape, t, &mut rng, false, &mut |l| lines.push(l));
                forward_line((shape, act), t, &mut rng, &mut |l| lines.push(l));
                lines
            });
            lines.into_iter().for_each(&mut *emit);
        }
        let lines = p.install(|| {
            let mut lines = Vec::new();
            gemm_lines((1024, 1024, 1024), t, &mut rng, true, &mut |l| {
                lines.push(l)
            });
            lines
        });
        lines.into_iter().for_each(&mut *emit);
    }
}
