//! Quick-bench lines for whole training steps (`natgrad bench step --quick --json`):
//! SGD, Adam and the natural gradient on the `paper` and `deep` presets at
//! several minibatch sizes, timed interleaved in one process.

use crate::mlp::Mlp;

use super::par_for;
use crate::app::json::{line, round};
use crate::app::settings::{tuned, Hyper, OptimizerKind};
use crate::optim::{
    Adam, DampingAdaptation, NaturalGradient, NaturalGradientConfig, Optimizer, PhaseFlops, Sgd,
};
use crate::workspace::Workspace;
use natgrad_kernels::alloc_counter::{track_current_thread, tracked_allocations};
use natgrad_kernels::rng::Rng;
use natgrad_kernels::{MatRef, MemStack};
use serde::Serialize;
use std::time::Instant;

/// The optimizers measured, SGD first (the ratios' denominator): the
/// race's tuned settings, `ng_every` (see [`ng_every`]) and `ng_fixed` (see
/// [`ng_fixed`]).
pub const NAMES: [&str; 5] = ["sgd", "adam", "ng", "ng_every", "ng_fixed"];

/// The settings of the optimizer `name` of [`NAMES`] on `preset`.
fn hyper(preset: &str, name: &str) -> Result<Hyper, crate::Error> {
    Ok(match name {
        "sgd" => tuned(preset, OptimizerKind::Sgd)?,
        "adam" => tuned(preset, OptimizerKind::Adam)?,
        "ng" => tuned(preset, OptimizerKind::NaturalGradient)?,
        "ng_every" => {
            let (b, cfg) = tuned_ng(preset)?;
            Hyper::Ng(b, ng_every(cfg))
        }
        "ng_fixed" => {
            let (b, cfg) = tuned_ng(preset)?;
            Hyper::Ng(b, ng_fixed(cfg))
        }
        other => {
            return Err(crate::Error::Usage(format!(
                "unknown optimizer {other:?}; expected one of {NAMES:?}"
            )))
        }
    })
}

/// The tuned natural-gradient batch and settings of `preset`.
fn tuned_ng(preset: &str) -> Result<(usize, NaturalGradientConfig), crate::Error> {
    match tuned(preset, OptimizerKind::NaturalGradient)? {
        Hyper::Ng(b, cfg) => Ok((b, cfg)),
        _ => unreachable!("tuned(NaturalGradient) is a natural-gradient setting"),
    }
}

/// `ng_every`: the tuned natural-gradient settings with the factors and
/// their Cholesky factors recomputed at every step, as the PyTorch peer
/// (`peer.py timing`) does. Only two fields change, both to 1:
/// `refresh_interval` (Cholesky refactorisation; tuned `paper`: 5) and
/// `statistics_interval` (new factor statistics from the minibatch; tuned: 1
/// already). Everything else (damping, its adaptation and check fraction,
/// factor decay, the output factor's form, the preconditioning form) stays
/// the tuned one's.
pub fn ng_every(tuned: NaturalGradientConfig) -> NaturalGradientConfig {
    NaturalGradientConfig {
        refresh_interval: 1,
        statistics_interval: 1,
        ..tuned
    }
}

/// `ng_fixed`: [`ng_every`] with the damping fixed at its tuned initial
/// value ([`DampingAdaptation::Fixed`]), as in the PyTorch peer's NG step
/// (`peer.py timing` has no damping adaptation): no Levenberg-Marquardt
/// check, whose forward pass on `damping_check_fraction` of the minibatch
/// `ng_every` pays at every step. Only `adaptation` differs from
/// [`ng_every`]; the other settings stay the tuned ones, which differ from
/// the peer's where the tuning found better (the damping's value, factors
/// from the minibatch alone, the output layer's exact diagonal factor
/// where the peer samples it).
pub fn ng_fixed(tuned: NaturalGradientConfig) -> NaturalGradientConfig {
    NaturalGradientConfig {
        adaptation: DampingAdaptation::Fixed,
        ..ng_every(tuned)
    }
}

/// One optimizer's line of a step cell: median and mean step times and
/// their ratios to SGD's, allocations per step.
#[derive(Serialize)]
struct StepLine<'a> {
    preset: &'a str,
    batch: usize,
    optimizer: &'a str,
    threads: usize,
    step_ms: f64,
    ratio_to_sgd: f64,
    mean_step_ms: f64,
    mean_ratio_to_sgd: f64,
    allocs_per_step: f64,
}

/// The update half of an SGD or Adam step, as [`phase_lines`] times it.
type UpdateFn = dyn FnMut(&mut Mlp, &Workspace) -> Result<(), crate::Error>;

/// One phase's line of a step (`--phases`): its median time, the flops
/// counted for it (see [`phase_flops`]; `null` where not derived), their
/// rate and its fraction of the FMA peak measured around the cell.
#[derive(Serialize)]
struct PhaseLine<'a> {
    preset: &'a str,
    batch: usize,
    optimizer: &'a str,
    threads: usize,
    phase: &'a str,
    median_ms: f64,
    gflop: Option<f64>,
    gflops: Option<f64>,
    peak_gflops: f64,
    peak_fraction: Option<f64>,
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
        for name in NAMES {
            let net = proto.clone();
            let ws = Workspace::new(&net, batch, par)?;
            // The race's tuned settings, at the batch being measured.
            let opt = hyper(preset, name)?.build(&net, batch)?;
            runs.push((name, net, ws, opt, Vec::with_capacity(reps), 0u64));
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
        for (name, _, _, _, times, allocs) in runs.iter_mut() {
            // The mean as well: the median hides steps that cost more on a
            // schedule (factor refreshes every few steps), the mean counts them.
            let mean_ms = mean(times);
            let ms = 1e3 * super::median(times);
            lines.push(line(&StepLine {
                preset,
                batch,
                optimizer: name,
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

/// `2 m k n` summed over the forward GEMMs of a network of widths `sizes`
/// on `cols` columns: `2 n_out n_in cols` per layer (the fused bias and
/// activation are not counted).
pub fn forward_flops(sizes: &[usize], cols: usize) -> f64 {
    sizes
        .windows(2)
        .map(|w| 2.0 * w[1] as f64 * w[0] as f64 * cols as f64)
        .sum()
}

/// `2 m k n` summed over the backward GEMMs at minibatch `b`: per layer the
/// weight gradient `E Abar^T` (`2 n_out b (n_in + 1)`) and, above the first
/// layer, the input gradient `W^T E` (`2 n_in n_out b`; the fused
/// activation derivative is not counted).
pub fn backward_flops(sizes: &[usize], b: usize) -> f64 {
    sizes
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            let (n_in, n_out) = (w[0] as f64, w[1] as f64);
            let weight = 2.0 * n_out * b as f64 * (n_in + 1.0);
            let input = if i > 0 {
                2.0 * n_in * n_out * b as f64
            } else {
                0.0
            };
            weight + input
        })
        .sum()
}

/// Flops of one phase of the step of the optimizer set by `hyper` (SGD,
/// Adam or the natural gradient) on a network of widths `sizes` at
/// minibatch `b`, or `None` where no count is derived. How each is counted:
///
/// * `forward`: [`forward_flops`] on `b` columns.
/// * `loss`: one flop per output entry (`n_L b`; the likelihood's `exp`
///   and `log` are not flops).
/// * `backward`: [`backward_flops`].
/// * `update` (SGD, Adam): the arithmetic of the update per parameter as
///   written in src/optim: SGD 6 with momentum (`g + wd w`, `mu v + g`,
///   `w - lr v`), 8 with Nesterov, 4 without momentum; Adam 15 (3 for `m`, 4
///   for `v`, 8 for `w`: `sqrt`, `+ eps`, `step m`, the division, `lr wd w`
///   and two additions).
/// * `loss_and_gradient` (NG): `forward` + `loss` + `backward`.
/// * `apply_and_damping` (NG): the Levenberg-Marquardt check's forward
///   pass on `ceil(damping_check_fraction b)` columns, plus its loss (one
///   flop per output entry), when every step checks; 0 with the damping
///   fixed; `None` when only every `interval`-th step checks. Applying the
///   update is not counted.
/// * `sampled_backward`, `factorise`, `precondition` and the NG `total`:
///   `None` here: which form each layer's side takes (full, Gram, low-rank,
///   Wishart or exact output factor) and whether the step refreshes decide
///   the count, so the optimizer counts them itself
///   ([`NaturalGradient::last_phase_flops`]), and [`phase_lines`] prints its
///   count when every timed step had the same one.
pub fn phase_flops(phase: &str, sizes: &[usize], b: usize, hyper: &Hyper) -> Option<f64> {
    let n_l = *sizes.last()? as f64;
    let params: f64 = sizes
        .windows(2)
        .map(|w| w[1] as f64 * (w[0] as f64 + 1.0))
        .sum();
    let loss = n_l * b as f64;
    let fwd = forward_flops(sizes, b);
    let bwd = backward_flops(sizes, b);
    match (phase, hyper) {
        ("forward", _) => Some(fwd),
        ("loss", _) => Some(loss),
        ("backward", _) => Some(bwd),
        ("update", Hyper::Sgd(_, c)) => {
            let per = match (c.momentum > 0.0, c.nesterov) {
                (false, _) => 4.0,
                (true, false) => 6.0,
                (true, true) => 8.0,
            };
            Some(per * params)
        }
        ("update", Hyper::Adam(..)) => Some(15.0 * params),
        ("total", Hyper::Sgd(..) | Hyper::Adam(..)) => {
            let update = phase_flops("update", sizes, b, hyper)?;
            Some(fwd + loss + bwd + update)
        }
        ("loss_and_gradient", Hyper::Ng(..)) => Some(fwd + loss + bwd),
        ("apply_and_damping", Hyper::Ng(_, c)) => match c.adaptation {
            DampingAdaptation::Fixed => Some(0.0),
            DampingAdaptation::LevenbergMarquardt { interval: 1 } => {
                let cols = (c.damping_check_fraction as f64 * b as f64).ceil() as usize;
                Some(forward_flops(sizes, cols) + n_l * cols as f64)
            }
            // Only some of the timed steps check: no one count fits them all.
            DampingAdaptation::LevenbergMarquardt { .. } => None,
        },
        _ => None,
    }
}

/// Median milliseconds of each phase of one optimizer's step (`optimizer`
/// one of [`NAMES`], with the settings of
/// [`measure_cell`]) at one (preset, batch) cell, one JSON line per phase
/// and one for the whole step (`total`), on the same inputs as
/// [`measure_cell`], each with its GFLOP/s ([`phase_flops`]) and its
/// fraction of the FMA peak.
///
/// The peak is [`super::gemm::fma_peak_gflops`] (best of 200 short runs on
/// the same thread count) measured right before and right after the cell's
/// steps; the lines use the larger of the two, so a fraction is a lower
/// bound if the clock dropped during the cell.
///
/// The natural gradient's phases are its own timers
/// ([`NaturalGradient::last_phase_secs`]), their flops its own count where
/// it has one. SGD and Adam have none: each
/// repetition runs `forward`, `loss` (writing the output error) and
/// `backward` (with the weight gradients), the calls `Mlp::loss_and_gradient`
/// makes, then `update` (the gradient check and the update, the rest of the
/// optimizer's `step`), each timed; `total` is the four together, the
/// optimizer's whole step.
pub fn phase_lines(
    preset: &str,
    optimizer: &str,
    batch: usize,
    threads: usize,
    reps: usize,
    emit: &mut dyn FnMut(String),
) -> Result<(), crate::Error> {
    let (proto, x) = cell_input(preset, batch)?;
    let xm = MatRef::from_column_major_slice(&x, proto.input_size(), batch);
    let par = par_for(threads);
    let hyper = hyper(preset, optimizer)?;
    let sizes = proto.sizes();
    let pool = super::pool(threads);
    let peak_before = super::gemm::fma_peak_gflops(threads);
    // The natural gradient's own count of its phases, when every timed step
    // had the same (see `NaturalGradient::last_phase_flops`).
    let mut ng_flops: Option<PhaseFlops> = None;
    let (names, mut cols): (Vec<&str>, Vec<Vec<f64>>) = pool.install(|| {
        let mut net = proto.clone();
        let mut ws = Workspace::new(&net, batch, par)?;
        if let Hyper::Ng(_, cfg) = &hyper {
            let mut ng = NaturalGradient::new(&net, batch, *cfg)?;
            ng.step(&mut net, &mut ws, xm, xm)?;
            let mut cols: Vec<Vec<f64>> = vec![Vec::new(); 6];
            let mut counts = Vec::with_capacity(reps);
            for _ in 0..reps {
                let t = Instant::now();
                ng.step(&mut net, &mut ws, xm, xm)?;
                let total = t.elapsed().as_secs_f64();
                counts.push(ng.last_phase_flops());
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
            ng_flops = counts.first().copied().flatten();
            if counts.iter().any(|c| *c != ng_flops) {
                ng_flops = None;
            }
            let names = vec![
                "loss_and_gradient",
                "sampled_backward",
                "factorise",
                "precondition",
                "apply_and_damping",
                "total",
            ];
            return Ok::<_, crate::Error>((names, cols));
        }
        // The optimizer's own update (gradient check and update), timed
        // directly: `Sgd::update` and `Adam::update` are the second half of
        // their `step`.
        let mut update: Box<UpdateFn> = match &hyper {
            Hyper::Sgd(_, c) => {
                let mut sgd = Sgd::new(&net, *c)?;
                Box::new(move |net, ws| sgd.update(net, ws))
            }
            Hyper::Adam(_, c) => {
                let mut adam = Adam::new(&net, *c)?;
                Box::new(move |net, ws| adam.update(net, ws))
            }
            // Measured by its own timers above.
            Hyper::Ng(..) => {
                return Err(crate::Error::InvalidConfig(
                    "the natural gradient's phases have their own timers".into(),
                ))
            }
        };
        let mut cols: Vec<Vec<f64>> = vec![Vec::new(); 5];
        for rep in 0..=reps {
            let t0 = Instant::now();
            net.forward(&mut ws, xm)?;
            let t1 = Instant::now();
            net.loss(&mut ws, xm, true)?;
            let t2 = Instant::now();
            {
                let (b, par) = (ws.batch(), ws.par());
                let bufs = ws.buffers_mut();
                let stack = MemStack::new(bufs.scratch);
                net.backward(bufs.acts, bufs.errs, Some(bufs.grads), b, par, stack)?;
            }
            let t3 = Instant::now();
            update(&mut net, &ws)?;
            let t4 = Instant::now();
            // Repetition 0 warms up the optimizer's state.
            if rep == 0 {
                continue;
            }
            for (c, v) in cols
                .iter_mut()
                .zip([t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0])
            {
                c.push(v.as_secs_f64());
            }
        }
        Ok((vec!["forward", "loss", "backward", "update", "total"], cols))
    })?;
    let peak = peak_before.max(super::gemm::fma_peak_gflops(threads));
    for (name, c) in names.iter().zip(cols.iter_mut()) {
        let secs = super::median(c);
        let flops = match (*name, ng_flops) {
            ("sampled_backward", Some(f)) => Some(f.sampled_backward),
            ("factorise", Some(f)) => Some(f.factorise),
            ("precondition", Some(f)) => Some(f.precondition),
            ("total", Some(f)) if matches!(hyper, Hyper::Ng(..)) => {
                let own = ["loss_and_gradient", "apply_and_damping"]
                    .iter()
                    .map(|p| phase_flops(p, &sizes, batch, &hyper))
                    .sum::<Option<f64>>();
                own.map(|o| o + f.sampled_backward + f.factorise + f.precondition)
            }
            _ => phase_flops(name, &sizes, batch, &hyper),
        };
        let gflops = flops.map(|f| f / secs.max(1e-12) * 1e-9);
        emit(line(&PhaseLine {
            preset,
            batch,
            optimizer,
            threads,
            phase: name,
            median_ms: round(1e3 * secs, 3),
            gflop: flops.map(|f| round(f * 1e-9, 4)),
            gflops: gflops.map(|g| round(g, 2)),
            peak_gflops: round(peak, 1),
            peak_fraction: gflops.map(|g| round(g / peak, 4)),
        }));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_flops_are_the_layers_products() {
        let sizes = [784, 1000, 500];
        let b = 256;
        let sgd = hyper("deep", "sgd").unwrap();
        let fwd = 2.0 * (1000.0 * 784.0 + 500.0 * 1000.0) * 256.0;
        let bwd = 2.0 * (1000.0 * 256.0 * 785.0 + 500.0 * 256.0 * 1001.0 + 1000.0 * 500.0 * 256.0);
        assert_eq!(phase_flops("forward", &sizes, b, &sgd), Some(fwd));
        assert_eq!(phase_flops("backward", &sizes, b, &sgd), Some(bwd));
        let ng = hyper("deep", "ng_every").unwrap();
        assert_eq!(
            phase_flops("loss_and_gradient", &sizes, b, &ng),
            Some(fwd + bwd + 500.0 * 256.0)
        );
        assert_eq!(phase_flops("factorise", &sizes, b, &ng), None);
        // The LM check: a forward pass and loss on a quarter of the columns
        // every step (`ng_every`), none with the damping fixed, no single
        // count when only some steps check.
        let check = forward_flops(&sizes, b / 4) + 500.0 * (b / 4) as f64;
        assert_eq!(
            phase_flops("apply_and_damping", &sizes, b, &ng),
            Some(check)
        );
        let fixed = hyper("deep", "ng_fixed").unwrap();
        assert_eq!(
            phase_flops("apply_and_damping", &sizes, b, &fixed),
            Some(0.0)
        );
        let Hyper::Ng(_, cfg) = ng else {
            unreachable!("ng_every is a natural-gradient setting")
        };
        let sometimes = Hyper::Ng(
            b,
            NaturalGradientConfig {
                adaptation: DampingAdaptation::LevenbergMarquardt { interval: 3 },
                ..cfg
            },
        );
        assert_eq!(
            phase_flops("apply_and_damping", &sizes, b, &sometimes),
            None
        );
    }

    #[test]
    fn ng_every_changes_only_the_intervals() {
        for preset in ["paper", "deep"] {
            let (_, tuned) = tuned_ng(preset).unwrap();
            let every = ng_every(tuned);
            assert_eq!((every.refresh_interval, every.statistics_interval), (1, 1));
            let back = NaturalGradientConfig {
                refresh_interval: tuned.refresh_interval,
                statistics_interval: tuned.statistics_interval,
                ..every
            };
            assert_eq!(back, tuned);
        }
    }

    #[test]
    fn ng_fixed_changes_only_the_adaptation() {
        for preset in ["paper", "deep"] {
            let (_, tuned) = tuned_ng(preset).unwrap();
            assert_ne!(tuned.adaptation, DampingAdaptation::Fixed);
            let fixed = ng_fixed(tuned);
            assert_eq!(fixed.adaptation, DampingAdaptation::Fixed);
            let every = ng_every(tuned);
            assert_eq!(
                NaturalGradientConfig {
                    adaptation: every.adaptation,
                    ..fixed
                },
                every
            );
        }
        assert!(matches!(hyper("deep", "ng_fixed"), Ok(Hyper::Ng(..))));
        assert!(matches!(hyper("deep", "nope"), Err(crate::Error::Usage(_))));
    }

    #[test]
    fn sgd_and_adam_phases_are_present_and_finite() {
        for optimizer in ["sgd", "adam"] {
            let mut lines = Vec::new();
            phase_lines("paper", optimizer, 20, 1, 3, &mut |l| lines.push(l)).unwrap();
            let phases: Vec<String> = lines
                .iter()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    assert_eq!(v["optimizer"], optimizer);
                    for f in ["median_ms", "gflops", "peak_gflops", "peak_fraction"] {
                        let x = v[f].as_f64().unwrap();
                        assert!(x.is_finite() && x >= 0.0, "{f} in {l}");
                    }
                    v["phase"].as_str().unwrap().to_string()
                })
                .collect();
            assert_eq!(phases, ["forward", "loss", "backward", "update", "total"]);
        }
    }
}
