//! The quick, machine-readable comparisons behind `natgrad bench ... --quick --json`:
//! ours and the baseline measured in one process, interleaved, median of several
//! repetitions, printed as one JSON object per line.

pub mod factor;
pub mod gemm;
pub mod step;

use std::time::Instant;

/// Times `ours` and `baseline` alternately, `reps` times each after one warm-up
/// call of each, and returns the median seconds of each. Interleaving means a
/// burst of load from elsewhere on the machine hits both sides alike.
pub fn measure_interleaved(
    reps: usize,
    mut ours: impl FnMut(),
    mut baseline: impl FnMut(),
) -> (f64, f64) {
    ours();
    baseline();
    let mut t_ours = Vec::with_capacity(reps);
    let mut t_base = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        ours();
        t_ours.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        baseline();
        t_base.push(t.elapsed().as_secs_f64());
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
