//! Optimizers behind one small trait: [`Sgd`], [`Adam`] and the online
//! [`NaturalGradient`]. Each is built once for a network and a maximum
//! minibatch; after that, [`Optimizer::step`] allocates nothing.
//!
//! On error (shape mismatch, non-finite minibatch, a gradient or update that is
//! not finite, a factor that will not factorise) a step returns `Err` and leaves
//! the network's weights and the optimizer's state as they were.

mod adam;
mod config;
pub mod fisher;
pub mod kronecker;
pub(crate) mod natural;
mod sgd;

pub use adam::{Adam, AdamConfig};
pub use config::{
    DampingAdaptation, FactorUpdate, InverseApplication, NaturalGradientConfig, Preconditioning,
};
pub use kronecker::KroneckerPreconditioner;
pub use natural::{NaturalGradient, PhaseFlops, PhaseSecs};
pub use sgd::{Sgd, SgdConfig};

use crate::mlp::Mlp;
use crate::workspace::Workspace;
use crate::Error;
use natgrad_kernels::{MatRef, Par};
use rayon::prelude::*;

/// What a step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// The minibatch loss before the step.
    pub loss: f64,
}

/// Everything an optimizer must keep to continue bit for bit after a restart:
/// float buffers (moments, factors, Cholesky factors) and integer scalars
/// (step counters, RNG state, flags); floats that are scalars (damping) travel
/// as their bit patterns in `scalars`.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    /// The optimizer's [`Optimizer::name`].
    pub name: String,
    /// Float buffers, in an order fixed by the optimizer.
    pub buffers: Vec<Vec<f32>>,
    /// Integer scalars, in an order fixed by the optimizer.
    pub scalars: Vec<u64>,
    /// The settings the optimizer was built with, as `(name, value)` pairs in
    /// a fixed order: every field of its configuration (values as Rust's
    /// `Debug` prints them, which for floats gives back the same bits), and
    /// for the natural gradient `max_batch`. [`Optimizer::load_state`]
    /// refuses a state whose settings differ from the optimizer's own,
    /// naming each difference.
    pub settings: Vec<(String, String)>,
}

/// The settings record of a configuration (see [`OptimizerState::settings`]):
/// its top-level fields, read from its `Debug` form (`Name { a: 1.0, b: X {
/// c: 2 } }`), with `max_batch` first when given. Reading the `Debug` form
/// keeps the record complete when a field is added to a configuration.
pub(crate) fn settings_of(
    config: &impl std::fmt::Debug,
    max_batch: Option<usize>,
) -> Vec<(String, String)> {
    let text = format!("{config:?}");
    let mut out: Vec<(String, String)> = max_batch
        .map(|b| ("max_batch".to_string(), b.to_string()))
        .into_iter()
        .collect();
    let inner = match (text.find('{'), text.rfind('}')) {
        (Some(open), Some(close)) if open < close => &text[open + 1..close],
        _ => {
            out.push(("config".into(), text.clone()));
            return out;
        }
    };
    // Split at the commas outside any bracket.
    let (mut depth, mut start) = (0i32, 0usize);
    let mut fields = Vec::new();
    for (i, c) in inner.char_indices() {
        match c {
            '{' | '(' | '[' => depth += 1,
            '}' | ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                fields.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    fields.push(&inner[start..]);
    for field in fields.into_iter().map(str::trim).filter(|f| !f.is_empty()) {
        match field.split_once(": ") {
            Some((name, value)) => out.push((name.trim().to_string(), value.trim().to_string())),
            None => out.push((field.to_string(), String::new())),
        }
    }
    out
}

impl OptimizerState {
    /// Checks that a state read back has the name and buffer lengths expected.
    pub(crate) fn check_against(&self, expected: &OptimizerState) -> Result<(), Error> {
        if self.name != expected.name {
            return Err(Error::Shape(format!(
                "the saved optimizer state is for {:?}, this optimizer is {:?}",
                self.name, expected.name
            )));
        }
        if self.settings != expected.settings {
            let value = |s: &OptimizerState, name: &str| {
                s.settings
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or_else(|| "(absent)".to_string(), |(_, v)| v.clone())
            };
            let mut names: Vec<&str> = Vec::new();
            for (name, _) in self.settings.iter().chain(&expected.settings) {
                if !names.contains(&name.as_str()) {
                    names.push(name);
                }
            }
            let differences: Vec<String> = names
                .into_iter()
                .filter(|n| value(self, n) != value(expected, n))
                .map(|n| {
                    format!(
                        "{n} {} (saved) vs {} (this optimizer)",
                        value(self, n),
                        value(expected, n)
                    )
                })
                .collect();
            return Err(Error::InvalidConfig(format!(
                "the saved {} state was built with other settings: {}",
                self.name,
                differences.join(", ")
            )));
        }
        let lens = |s: &OptimizerState| s.buffers.iter().map(Vec::len).collect::<Vec<_>>();
        if lens(self) != lens(expected) || self.scalars.len() != expected.scalars.len() {
            return Err(Error::Shape(format!(
                "the saved {} state has buffers {:?} and {} scalars, this optimizer needs {:?} and {}",
                self.name,
                lens(self),
                self.scalars.len(),
                lens(expected),
                expected.scalars.len()
            )));
        }
        Ok(())
    }
}

/// A first- or second-order optimizer of an [`Mlp`].
pub trait Optimizer: Send {
    /// A short name (`"sgd"`, `"adam"`, `"ng"`).
    fn name(&self) -> &'static str;
    /// A copy of the state a checkpoint needs (allocates; not for the hot path).
    fn save_state(&self) -> OptimizerState;
    /// Restores a state saved by [`Optimizer::save_state`] of an optimizer built
    /// with the same network shapes and settings. On error nothing changes:
    /// [`Error::Shape`] for another optimizer or other buffer lengths,
    /// [`Error::InvalidConfig`] naming each setting that differs (see
    /// [`OptimizerState::settings`]).
    fn load_state(&mut self, state: &OptimizerState) -> Result<(), Error>;
    /// One update on the minibatch `x` (`n_0 x b`) with targets `y` (`n_L x b`).
    fn step(
        &mut self,
        net: &mut Mlp,
        ws: &mut Workspace,
        x: MatRef<'_, f32>,
        y: MatRef<'_, f32>,
    ) -> Result<StepStats, Error>;
}

/// `Err(InvalidConfig)` unless `v` is finite and in `lo..=hi` (`open_lo`: `v > lo`).
pub(crate) fn check_range(
    name: &str,
    v: f32,
    lo: f32,
    hi: f32,
    open_lo: bool,
) -> Result<(), Error> {
    let ok = v.is_finite() && if open_lo { v > lo } else { v >= lo } && v <= hi;
    if ok {
        Ok(())
    } else {
        let lo_br = if open_lo { "(" } else { "[" };
        Err(Error::InvalidConfig(format!(
            "{name} must be finite and in {lo_br}{lo}, {hi}], got {v}"
        )))
    }
}

/// Parameters per task of SGD's and Adam's parallel updates: large enough
/// that a task outlasts rayon's hand-off, small enough that 2 threads share
/// a layer evenly.
pub(crate) const UPDATE_CHUNK: usize = 1 << 15;

/// `w += d`, returning whether every entry of the new `w` is finite.
pub(crate) fn add_and_check_finite(w: &mut [f32], d: &[f32]) -> bool {
    // Checked in the update's own loop, which vectorises with the check (an
    // `and` of comparisons): no second pass over the parameters.
    let mut finite = true;
    for (w, d) in w.iter_mut().zip(d) {
        *w += d;
        finite &= w.is_finite();
    }
    finite
}

/// `Err(NonFinite)` if any gradient entry is not finite. Each layer's
/// gradient is read in chunks on the pool's threads when `par` has more
/// than one (a pass over every gradient, 11 MB on `deep`, each step).
pub(crate) fn check_grads_finite(grads: &[Vec<f32>], par: Par) -> Result<(), Error> {
    let parallel = par.degree() > 1;
    for (i, g) in grads.iter().enumerate() {
        let finite = if parallel && g.len() > UPDATE_CHUNK {
            g.par_chunks(UPDATE_CHUNK).all(crate::mlp::all_finite)
        } else {
            crate::mlp::all_finite(g)
        };
        if finite {
            continue;
        }
        if let Some(v) = g.iter().find(|v| !v.is_finite()) {
            return Err(Error::NonFinite(format!(
                "the gradient of layer {} contains {v}; the step was not taken",
                i + 1
            )));
        }
    }
    Ok(())
}

/// Refuses a `max_batch` of 0 or above [`MAX_BATCH`](crate::workspace::MAX_BATCH),
/// then checks that an upper estimate of the natural gradient's buffers for
/// `net` (factors, their Cholesky factors, Gram matrices, per-minibatch
/// columns) can be allocated at all, so that [`NaturalGradient::new`]
/// returns [`Error::InvalidConfig`] instead of aborting on a failed
/// allocation or panicking on an overflowing length.
pub(crate) fn check_buffer_sizes(net: &Mlp, max_batch: usize) -> Result<(), Error> {
    check_layer_buffer_sizes(net.layers().iter().map(|l| (l.n_in, l.n_out)), max_batch)
}

/// [`check_buffer_sizes`] for dense layers of `(n_in, n_out)` each.
pub(crate) fn check_layer_buffer_sizes(
    layers: impl Iterator<Item = (usize, usize)>,
    max_batch: usize,
) -> Result<(), Error> {
    crate::workspace::check_max_batch(max_batch)?;
    let b = max_batch as u128;
    let floats: u128 = layers
        .map(|(n_in, n_out)| {
            let (n_in1, n_out) = (n_in as u128 + 1, n_out as u128);
            // Factors and Cholesky factors (and Gram matrices, no larger),
            // the update, and the per-minibatch columns; saturating, so that
            // widths near usize::MAX give a size no allocation can meet.
            let square = |n: u128| n.saturating_mul(n);
            let factors = square(n_in1)
                .saturating_add(square(n_out))
                .saturating_mul(4);
            let columns = b.saturating_mul((n_in1 + n_out).saturating_mul(3) + 1);
            factors
                .saturating_add(n_out.saturating_mul(n_in1))
                .saturating_add(columns)
        })
        .fold(0u128, u128::saturating_add);
    crate::workspace::probe_allocation(floats.saturating_mul(4), "the natural gradient's buffers")
}

/// Checks that `net` has the parameter shapes `shapes` the optimizer was built for.
pub(crate) fn check_net_shapes(net: &Mlp, sizes: &[usize]) -> Result<(), Error> {
    if !net.has_sizes(sizes) {
        return Err(Error::Shape(format!(
            "the optimizer was built for widths {sizes:?}, the network has {:?}",
            net.sizes()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `w += d` exactly, and `false` exactly when an entry overflows: at
    /// each position of every length up to three AVX-512 vectors and a tail.
    #[test]
    fn add_and_check_finite_sees_every_entry() {
        for n in 0..52 {
            let w0: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 1.0).collect();
            let d: Vec<f32> = (0..n).map(|i| 0.5 - i as f32 * 0.125).collect();
            let mut w = w0.clone();
            assert!(add_and_check_finite(&mut w, &d), "n {n}");
            let want: Vec<f32> = w0.iter().zip(&d).map(|(w, d)| w + d).collect();
            assert_eq!(w, want, "n {n}");
            for i in 0..n {
                let mut w = w0.clone();
                w[i] = f32::MAX;
                let mut d = d.clone();
                d[i] = f32::MAX;
                assert!(!add_and_check_finite(&mut w, &d), "n {n}, overflow at {i}");
            }
        }
    }
}
