//! Optimizers behind one small trait: [`Sgd`], [`Adam`] and the online
//! [`NaturalGradient`]. Each is built once for a network and a maximum
//! minibatch; after that, [`Optimizer::step`] allocates nothing.
//!
//! On error (shape mismatch, non-finite minibatch, a gradient or update that is
//! not finite, a factor that will not factorise) a step returns `Err` and leaves
//! the network's weights and the optimizer's state as they were.

mod adam;
mod natural;
mod sgd;

pub use adam::{Adam, AdamConfig};
pub use natural::{
    DampingAdaptation, FactorUpdate, NaturalGradient, NaturalGradientConfig, Preconditioning,
};
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

/// A first- or second-order optimizer of an [`Mlp`].
pub trait Optimizer: Send {
    /// A short name (`"sgd"`, `"adam"`, `"ng"`).
    fn name(&self) -> &'static str;
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
