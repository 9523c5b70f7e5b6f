//! The benchmark harness: the quick, machine-readable comparisons behind
//! `natgrad bench ... --quick --json` (ours and the baseline measured in one
//! process, interleaved, median of several repetitions, printed as one JSON
//! object per line), and what the criterion benches in `benches/` share with
//! them: the thread pools, the inputs, the shapes and the baselines
//! ([`gemm::layer_shapes`], [`gemm::separate_epilogue`], [`factor::spd`],
//! [`factor::factor_of`], the race's settings for the step). The kernels'
//! own benchmark pieces (the FMA peak loop, the allocation counter, the
//! matrixmultiply and OpenBLAS baselines) are in `natgrad-kernels`' `bench`
//! feature.

pub mod factor;
pub mod gemm;
pub mod layer;
pub mod step;

use crate::app::json::{line, round};
use natgrad_kernels::Par;
use serde::Serialize;
use std::num::NonZeroUsize;
use std::time::Instant;

/// A batch of back-to-back calls lasts at least this long (see
/// [`measure_interleaved`]).
const BATCH_SECS: f64 = 1e-3;

/// Times `ours` and `baseline` alternately, `reps` times each after one warm-up
/// call of each, and returns the median seconds per call of each.
/// Interleaving means a burst of load from elsewhere on the machine hits both
/// sides alike.
///
/// Calls shorter than `BATCH_SECS` (1 ms) are timed in batches of back-to-back
/// calls (the same count for both sides, at most 64), each batch counting as
/// one repetition. Timed one by one, a call of a few microseconds mostly
/// measured the other side's thread pool: matrixmultiply's and rayon's
/// workers each wait for work for a while after a call, and on two cores
/// the side that runs next shares them with the waiting pool (our 250x30x256
/// GEMM measured 126-146 GFLOP/s after each matrixmultiply call, 290-330
/// after each faer call, which uses our rayon pool). In a batch, only its
/// first call pays that, as in a training step, where the GEMMs run back to
/// back on one pool.
pub fn measure_interleaved(
    reps: usize,
    mut ours: impl FnMut(),
    mut baseline: impl FnMut(),
) -> (f64, f64) {
    let t = Instant::now();
    ours();
    let one = t.elapsed().as_secs_f64();
    baseline();
    let batch = ((BATCH_SECS / one.max(1e-9)).ceil() as usize).clamp(1, 64);
    let mut t_ours = Vec::with_capacity(reps);
    let mut t_base = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        for _ in 0..batch {
            ours();
        }
        t_ours.push(t.elapsed().as_secs_f64() / batch as f64);
        let t = Instant::now();
        for _ in 0..batch {
            baseline();
        }
        t_base.push(t.elapsed().as_secs_f64() / batch as f64);
    }
    (median(&mut t_ours), median(&mut t_base))
}

/// Median of a non-empty slice (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Repetitions so that one side takes roughly `target_secs` in total, given
/// the seconds one call took; at least 3, at most 50.
pub fn reps_for(one_call_secs: f64, target_secs: f64) -> usize {
    ((target_secs / one_call_secs.max(1e-9)) as usize).clamp(3, 50)
}

/// A rayon pool with exactly `threads` threads, for measuring at a given count.
/// Each worker has run one job before the pool is returned: a worker's first
/// look for work registers it with crossbeam-epoch (one allocation, at a
/// moment that depends on scheduling), which is not a cost of what is measured.
pub fn pool(threads: usize) -> rayon::ThreadPool {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .start_handler(|_| natgrad_kernels::alloc_counter::track_current_thread(true))
        .build()
        .expect("building a rayon thread pool");
    pool.broadcast(|_| ());
    pool
}

/// `len` values uniform in [-1, 1): the inputs of every kernel measured.
pub fn random(len: usize, rng: &mut natgrad_kernels::rng::Rng) -> Vec<f32> {
    (0..len).map(|_| rng.uniform_f32() * 2.0 - 1.0).collect()
}

/// `Par::Seq` for one thread, else rayon on `threads`.
pub fn par_for(threads: usize) -> Par {
    match NonZeroUsize::new(threads) {
        Some(t) if threads > 1 => Par::Rayon(t),
        _ => Par::Seq,
    }
}

/// [`reps_for`] a side of about `target_secs`, from the second of two calls
/// of `f` (the first warms caches and pools).
pub fn reps_for_call(target_secs: f64, mut f: impl FnMut()) -> usize {
    f();
    let t = Instant::now();
    f();
    reps_for(t.elapsed().as_secs_f64(), target_secs)
}

/// One kernel comparison line (`bench kernels`): GFLOP/s of ours and of the
/// baseline, 0.1 apart, and their ratio.
#[derive(Serialize)]
struct ComparisonLine<'a> {
    kernel: &'a str,
    m: usize,
    k: usize,
    n: usize,
    threads: usize,
    ours_gflops: f64,
    baseline: &'a str,
    baseline_gflops: f64,
    ratio: f64,
}

/// The JSON line comparing `kernel` (`flops` per call, shape `(m, k, n)`
/// named as the kernel's docs say) with `baseline`, from their seconds per
/// call.
pub fn comparison_line(
    kernel: &str,
    (m, k, n): (usize, usize, usize),
    threads: usize,
    flops: f64,
    ours_secs: f64,
    baseline: &str,
    base_secs: f64,
) -> String {
    let (g_ours, g_base) = (flops / ours_secs * 1e-9, flops / base_secs * 1e-9);
    line(&ComparisonLine {
        kernel,
        m,
        k,
        n,
        threads,
        ours_gflops: round(g_ours, 1),
        baseline,
        baseline_gflops: round(g_base, 1),
        ratio: round(g_ours / g_base, 3),
    })
}
