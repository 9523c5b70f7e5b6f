//! Quick-bench lines for whole training steps (`natgrad bench step --quick --json`):
//! SGD, Adam and the natural gradient on the `paper` and `deep` presets at
//! several minibatch sizes, timed interleaved in one process.

use crate::mlp::Mlp;

use super::par_for;
use crate::app::json::{line, round};
use crate::app::settings::{tuned, OptimizerKind};
use crate::optim::{NaturalGradient, Optimizer};
use crate::workspace::Workspace;
use natgrad_kernels::alloc_counter::{track_current_thread, tracked_allocations};
use natgrad_kernels::rng::Rng;
use natgrad_kernels::MatRef;
use serde::Serialize;
use std::time::Instant;

/// The optimizers measured, SGD first (the ratios' denominator).
const KINDS: [OptimizerKind; 3] = [
    OptimizerKind::Sgd,
    OptimizerKind::Adam,
    OptimizerKind::NaturalGradient,
];

/// One optimizer's line of a step cell: median and mean step times and
/// their ratios to SGD's, allocations per step.
#[derive(Serialize)]
struct StepLine<'a> {
    preset: &'a str,
    batch: usize,
    optimizer: &'static str,
    threads: usize,
    step_ms: f64,
    ratio_to_sgd: f64,
    mean_step_ms: f64,
    mean_ratio_to_sgd: f64,
    allocs_per_step: f64,
}

/// One phase's line of the natural-gradient step (`--phases`).
#[derive(Serialize)]
struct PhaseLine<'a> {
    preset: &'a str,
    batch: usize,
    optimizer: &'static str,
    threads: usize,
    phase: &'a str,
    median_ms: f64,
}

/// Measures one (preset, batch) cell at `threads` threads and emits one line
/// per optimizer. `allocs_per_step` is only meaningful when the binary installs
/// [`natgrad_kernels::alloc_counter::CountingAllocator`] (the `natgrad` binary does).
pub fn measure_cell(
    preset: &str,
    batch: usize,
    threads: usize,
    reps: usize,
    emit: &mut dyn FnMut(String),
) -> Result<(), crate::Error> {
    let (proto, x) = cell_input(preset, batch)?;
    let xm = MatRef::from_column_major_slice(&x, proto.input_size(), batch);
    let par = par_for(threads);
    // Only the measuring threads count (see natgrad_kernels::alloc_counter).
    track_current_thread(true);
    let pool = super::pool(threads);
    let mut lines = Vec::new();
    pool.install(|| -> Result<(), crate::Error> {
        let mut runs = Vec::new();
        for kind in KINDS {
            let net = proto.clone();
            let ws = Workspace::new(&net, batch, par)?;
            // The race's tuned settings, at the batch being measured.
            let opt = tuned(preset, kind)?.build(&net, batch)?;
            runs.push((kind, net, ws, opt, Vec::with_capacity(reps), 0u64));
        }
        // Warm-up (first steps size caches, spawn threads), then interleaved rounds.
        for (_, net, ws, opt, _, _) in runs.iter_mut() {
            opt.step(net, ws, xm, xm)?;
        }
        for _ in 0..reps {
            for (_, net, ws, opt, times, allocs) in runs.iter_mut() {
                let a0 = tracked_allocations();
                let t = Instant::now();
                // A refused step (e.g. damping retries exhausted) still costs time; count it.
                let _ = opt.step(net, ws, xm, xm);
                times.push(t.elapsed().as_secs_f64());
                *allocs += tracked_allocations() - a0;
            }
        }
        let sgd_ms = 1e3 * super::median(&mut runs[0].4.clone());
        let mean = |t: &[f64]| 1e3 * t.iter().sum::<f64>() / t.len() as f64;
        let sgd_mean_ms = mean(&runs[0].4);
        for (kind, _, _, _, times, allocs) in runs.iter_mut() {
            // The mean as well: the median hides steps that cost more on a
            // schedule (factor refreshes every few steps), the mean counts them.
            let mean_ms = mean(times);
            let ms = 1e3 * super::median(times);
            lines.push(line(&StepLine {
                preset,
                batch,
                optimizer: kind.name(),
                threads,
                step_ms: round(ms, 3),
                ratio_to_sgd: round(ms / sgd_ms, 3),
                mean_step_ms: round(mean_ms, 3),
                mean_ratio_to_sgd: round(mean_ms / sgd_mean_ms, 3),
                allocs_per_step: *allocs as f64 / reps as f64,
            }));
        }
        Ok(())
    })?;
    lines.into_iter().for_each(emit);
    Ok(())
}

/// The preset's network and a minibatch of `batch` random inputs in its data
/// range (`[0, 1]` for `deep`, `[-1, 1]` for the standardised `paper` data).
fn cell_input(preset: &str, batch: usize) -> Result<(Mlp, Vec<f32>), crate::Error> {
    let proto = Mlp::preset(preset, 1)?;
    let mut rng = Rng::new(7);
    let len = proto.input_size().checked_mul(batch).ok_or_else(|| {
        crate::Error::InvalidConfig(format!("a minibatch of {batch} is too large"))
    })?;
    let mut x: Vec<f32> = Vec::new();
    x.try_reserve_exact(len).map_err(|_| {
        crate::Error::InvalidConfig(format!(
            "cannot allocate a minibatch of {batch} inputs ({} bytes)",
            4 * len as u128
        ))
    })?;
    x.extend((0..len).map(|_| rng.uniform_f32()));
    if preset == "paper" {
        x.iter_mut().for_each(|v| *v = 2.0 * *v - 1.0);
    }
    Ok((proto, x))
}

/// Median milliseconds of each phase of the natural-gradient step (the race's
/// settings) at one (preset, batch) cell, one JSON line per phase and one for
/// the whole step, on the same inputs as [`measure_cell`].
pub fn phase_lines(
    preset: &str,
    batch: usize,
    threads: usize,
    reps: usize,
    emit: &mut dyn FnMut(String),
) -> Result<(), crate::Error> {
    let (proto, x) = cell_input(preset, batch)?;
    let xm = MatRef::from_column_major_slice(&x, proto.input_size(), batch);
    let par = par_for(threads);
    let cfg = match tuned(preset, OptimizerKind::NaturalGradient)? {
        crate::app::settings::Hyper::Ng(_, cfg) => cfg,
        _ => unreachable!("tuned(NaturalGradient) is a natural-gradient setting"),
    };
    let pool = super::pool(threads);
    let mut lines = Vec::new();
    pool.install(|| -> Result<(), crate::Error> {
        let mut net = proto.clone();
        let mut ws = Workspace::new(&net, batch, par)?;
        let mut ng = NaturalGradient::new(&net, batch, cfg)?;
        ng.step(&mut net, &mut ws, xm, xm)?;
        let mut cols: [Vec<f64>; 6] = Default::default();
        for _ in 0..reps {
            let t = Instant::now();
            ng.step(&mut net, &mut ws, xm, xm)?;
            let total = t.elapsed().as_secs_f64();
            let p = ng.last_phase_secs();
            for (c, v) in cols.iter_mut().zip([
                p.loss_and_gradient,
                p.sampled_backward,
                p.factorise,
                p.precondition,
                p.apply_and_damping,
                total,
            ]) {
                c.push(v);
            }
        }
        let names = [
            "loss_and_gradient",
            "sampled_backward",
            "factorise",
            "precondition",
            "apply_and_damping",
            "total",
        ];
        for (name, c) in names.iter().zip(cols.iter_mut()) {
            lines.push(line(&PhaseLine {
                preset,
                batch,
                optimizer: "ng",
                threads,
                phase: name,
                median_ms: round(1e3 * super::median(c), 3),
            }));
        }
        Ok(())
    })?;
    lines.into_iter().for_each(emit);
    Ok(())
}

/// Cells of the quick step benchmark: each of `presets` (by default `paper`
/// and `deep`) at each of `batches` (by default 20, 100, 256 and 1000), on
/// `threads`.
pub fn quick_lines(
    threads: &[usize],
    presets: &[String],
    batches: &[usize],
    emit: &mut dyn FnMut(String),
) -> Result<(), crate::Error> {
    for &t in threads {
        for preset in presets {
            for &batch in batches {
                // Multiples of the tuned refresh interval (5), so that the
                // mean counts refresh steps at their share; enough steps that
                // one slow step (the host is shared) moves the median little.
                let reps = if batch >= 1000 { 15 } else { 25 };
                measure_cell(preset, batch, t, reps, emit)?;
            }
        }
    }
    Ok(())
}
