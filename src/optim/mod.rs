//! Optimizers behind one small trait: [`Sgd`], [`Adam`] and the online
//! [`NaturalGradient`]. Each is built once for a network and a maximum
//! minibatch; after that, [`Optimizer::step`] allocates nothing.
//!
//! On error (shape mismatch, non-finite minibatch, a gradient or update that is
//! not finite, a factor that will not factorise) a step returns `Err` and leaves
//! the network's weights and the optimizer's state as they were.

mod adam;
mod config;
pub mod kronecker;
mod natural;
mod sgd;

pub use adam::{Adam, AdamConfig};
pub use config::{
    DampingAdaptation, FactorUpdate, InverseApplication, NaturalGradientConfig, Preconditioning,
};
pub use kronecker::KroneckerPreconditioner;
pub use natural::{NaturalGradient, PhaseSecs};
pub use sgd::{Sgd, SgdConfig};

use crate::mlp::Mlp;
use crate::workspace::Workspace;
use crate::Error;
use natgrad_kernels::MatRef;

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
    /// with the same network shapes and settings. On error nothing changes.
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

/// `Err(NonFinite)` if any gradient entry is not finite.
pub(crate) fn check_grads_finite(grads: &[Vec<f32>]) -> Result<(), Error> {
    for (i, g) in grads.iter().enumerate() {
        if crate::mlp::all_finite(g) {
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
