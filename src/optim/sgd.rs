use super::{
    check_grads_finite, check_net_shapes, check_range, Optimizer, OptimizerState, StepStats,
    UPDATE_CHUNK,
};
use crate::mlp::Mlp;
use crate::workspace::Workspace;
use crate::Error;
use natgrad_kernels::{MatRef, Par};
use rayon::prelude::*;

/// Settings of [`Sgd`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    /// Step size. Default 0.01: a safe start for standardised inputs; tune it.
    pub learning_rate: f32,
    /// Heavy-ball momentum in [0, 1). Default 0 (plain SGD, as in the paper).
    pub momentum: f32,
    /// Nesterov's variant of momentum. Default false.
    pub nesterov: bool,
    /// L2 penalty added to the gradient (`g + wd w`, biases included). Default 0.
    pub weight_decay: f32,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            learning_rate: 0.01,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }
}

/// Stochastic gradient descent with optional (Nesterov) momentum and weight decay:
/// `v <- mu v + g`, `w <- w - eta (nesterov ? g + mu v : v)`.
#[derive(Clone, Debug)]
pub struct Sgd {
    config: SgdConfig,
    sizes: Vec<usize>,
    velocity: Vec<Vec<f32>>,
}

impl Sgd {
    /// An optimizer for `net`. Errors on a configuration out of its domain.
    pub fn new(net: &Mlp, config: SgdConfig) -> Result<Sgd, Error> {
        check_range("learning_rate", config.learning_rate, 0.0, f32::MAX, true)?;
        check_range("momentum", config.momentum, 0.0, 0.999_999, false)?;
        check_range("weight_decay", config.weight_decay, 0.0, f32::MAX, false)?;
        let velocity = if config.momentum > 0.0 {
            net.layers()
                .iter()
                .map(|l| vec![0.0; l.params.len()])
                .collect()
        } else {
            Vec::new()
        };
        Ok(Sgd {
            config,
            sizes: net.sizes(),
            velocity,
        })
    }
    /// The settings.
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }
    /// The momentum buffers (empty without momentum), for checkpoints.
    pub fn velocity(&self) -> &[Vec<f32>] {
        &self.velocity
    }
    /// Mutable momentum buffers, for restoring a checkpoint.
    pub fn velocity_mut(&mut self) -> &mut [Vec<f32>] {
        &mut self.velocity
    }
}

impl Optimizer for Sgd {
    fn name(&self) -> &'static str {
        "sgd"
    }

    fn save_state(&self) -> OptimizerState {
        OptimizerState {
            name: "sgd".into(),
            buffers: self.velocity.clone(),
            settings: super::settings_of(&self.config, None),
            scalars: Vec::new(),
        }
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<(), Error> {
        state.check_against(&self.save_state())?;
        self.velocity.clone_from(&state.buffers);
        Ok(())
    }

    fn step(
        &mut self,
        net: &mut Mlp,
        ws: &mut Workspace,
        x: MatRef<'_, f32>,
        y: MatRef<'_, f32>,
    ) -> Result<StepStats, Error> {
        check_net_shapes(net, &self.sizes)?;
        let loss = net.loss_and_gradient(ws, x, y)?;
        self.update(net, ws)?;
        Ok(StepStats { loss })
    }
}

impl Sgd {
    /// The second half of [`Optimizer::step`]: checks the gradients in
    /// `ws.grads()` finite, then updates `net` from them. `natgrad bench step
    /// --phases` times it as the `update` phase.
    pub(crate) fn update(&mut self, net: &mut Mlp, ws: &Workspace) -> Result<(), Error> {
        check_grads_finite(ws.grads(), ws.par())?;
        self.apply_gradient(net, ws.grads(), ws.par());
        Ok(())
    }

    /// The update from the gradients `grads` (one per layer, as
    /// `Workspace::grads`), already checked finite, with each layer cut into
    /// chunks that run in parallel under `par`. Each parameter sees the same
    /// arithmetic in the same order as the sequential loop, so the result
    /// does not depend on the threads.
    pub(crate) fn apply_gradient(&mut self, net: &mut Mlp, grads: &[Vec<f32>], par: Par) {
        let SgdConfig {
            learning_rate: lr,
            momentum: mu,
            nesterov,
            weight_decay: wd,
        } = self.config;
        let parallel = par.degree() > 1;
        let mut finite = true;
        for (i, w) in net.params_mut().enumerate() {
            let g = &grads[i][..w.len()];
            // Each chunk returns whether what it wrote is finite (see
            // `Mlp::set_params_finite`).
            finite &= if mu > 0.0 {
                let v = &mut self.velocity[i][..w.len()];
                let chunk = |((w, g), v): ((&mut [f32], &[f32]), &mut [f32])| {
                    if nesterov {
                        momentum_chunk::<true>(w, g, v, lr, mu, wd)
                    } else {
                        momentum_chunk::<false>(w, g, v, lr, mu, wd)
                    }
                };
                if parallel && w.len() > UPDATE_CHUNK {
                    w.par_chunks_mut(UPDATE_CHUNK)
                        .zip(g.par_chunks(UPDATE_CHUNK))
                        .zip(v.par_chunks_mut(UPDATE_CHUNK))
                        .map(chunk)
                        .reduce(|| true, |a, b| a & b)
                } else {
                    chunk(((w, g), v))
                }
            } else {
                let chunk = |(w, g): (&mut [f32], &[f32])| {
                    let mut finite = true;
                    for (w, &g) in w.iter_mut().zip(g) {
                        *w -= lr * (g + wd * *w);
                        finite &= w.is_finite();
                    }
                    finite
                };
                if parallel && w.len() > UPDATE_CHUNK {
                    w.par_chunks_mut(UPDATE_CHUNK)
                        .zip(g.par_chunks(UPDATE_CHUNK))
                        .map(chunk)
                        .reduce(|| true, |a, b| a & b)
                } else {
                    chunk((w, g))
                }
            };
        }
        net.set_params_finite(finite);
    }
}

/// The momentum update of one chunk, `NESTEROV` a constant so that the loop
/// has no branch inside. Returns whether every new parameter is finite.
fn momentum_chunk<const NESTEROV: bool>(
    w: &mut [f32],
    g: &[f32],
    v: &mut [f32],
    lr: f32,
    mu: f32,
    wd: f32,
) -> bool {
    // Checked in the update's own loop, which vectorises with the check (an
    // `and` of comparisons): no second pass over the parameters.
    let mut finite = true;
    for ((w, &g), v) in w.iter_mut().zip(g).zip(v.iter_mut()) {
        let g = g + wd * *w;
        *v = mu * *v + g;
        *w -= lr * if NESTEROV { g + mu * *v } else { *v };
        finite &= w.is_finite();
    }
    finite
}
