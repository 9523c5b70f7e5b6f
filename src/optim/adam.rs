use super::{
    check_grads_finite, check_net_shapes, check_range, Optimizer, OptimizerState, StepStats,
    UPDATE_CHUNK,
};
use crate::mlp::Mlp;
use crate::workspace::Workspace;
use crate::Error;
use natgrad_kernels::MatRef;
use rayon::prelude::*;

/// Settings of [`Adam`] (Kingma & Ba 2015); defaults are the paper's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    /// Step size. Default 1e-3.
    pub learning_rate: f32,
    /// First-moment decay. Default 0.9.
    pub beta1: f32,
    /// Second-moment decay. Default 0.999.
    pub beta2: f32,
    /// Denominator offset. Default 1e-8.
    pub epsilon: f32,
    /// Decoupled weight decay (AdamW): `w <- w - eta wd w`. Default 0.
    pub weight_decay: f32,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            learning_rate: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Adam with bias correction and optional decoupled weight decay.
#[derive(Clone, Debug)]
pub struct Adam {
    config: AdamConfig,
    sizes: Vec<usize>,
    /// First moments per layer.
    m: Vec<Vec<f32>>,
    /// Second moments per layer.
    v: Vec<Vec<f32>>,
    /// Steps taken.
    t: u64,
}

impl Adam {
    /// An optimizer for `net`. Errors on a configuration out of its domain.
    pub fn new(net: &Mlp, config: AdamConfig) -> Result<Adam, Error> {
        check_range("learning_rate", config.learning_rate, 0.0, f32::MAX, true)?;
        check_range("beta1", config.beta1, 0.0, 0.999_999, false)?;
        check_range("beta2", config.beta2, 0.0, 0.999_999_9, false)?;
        check_range("epsilon", config.epsilon, 0.0, f32::MAX, true)?;
        check_range("weight_decay", config.weight_decay, 0.0, f32::MAX, false)?;
        let zeros = || {
            net.layers()
                .iter()
                .map(|l| vec![0.0; l.params.len()])
                .collect()
        };
        Ok(Adam {
            config,
            sizes: net.sizes(),
            m: zeros(),
            v: zeros(),
            t: 0,
        })
    }
    /// The settings.
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }
    /// `(first moments, second moments, steps)`, for checkpoints.
    pub fn state(&self) -> (&[Vec<f32>], &[Vec<f32>], u64) {
        (&self.m, &self.v, self.t)
    }
    /// Mutable state, for restoring a checkpoint.
    pub fn state_mut(&mut self) -> (&mut [Vec<f32>], &mut [Vec<f32>], &mut u64) {
        (&mut self.m, &mut self.v, &mut self.t)
    }
}

impl Optimizer for Adam {
    fn name(&self) -> &'static str {
        "adam"
    }

    fn save_state(&self) -> OptimizerState {
        let buffers = self.m.iter().chain(&self.v).cloned().collect();
        OptimizerState {
            name: "adam".into(),
            buffers,
            scalars: vec![self.t],
            settings: super::settings_of(&self.config, None),
        }
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<(), Error> {
        state.check_against(&self.save_state())?;
        let l = self.m.len();
        self.m.clone_from_slice(&state.buffers[..l]);
        self.v.clone_from_slice(&state.buffers[l..]);
        self.t = state.scalars[0];
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

/// One chunk of Adam's update, as the parallel iterators zip it: weights,
/// gradient, first and second moments.
type Chunk<'a> = (((&'a mut [f32], &'a [f32]), &'a mut [f32]), &'a mut [f32]);

impl Adam {
    /// The second half of [`Optimizer::step`]: checks the gradients in
    /// `ws.grads()` finite, then advances the moments and updates `net` from
    /// them. `natgrad bench step --phases` times it as the `update` phase.
    pub(crate) fn update(&mut self, net: &mut Mlp, ws: &Workspace) -> Result<(), Error> {
        check_grads_finite(ws.grads(), ws.par())?;
        let AdamConfig {
            learning_rate: lr,
            beta1: b1,
            beta2: b2,
            epsilon: eps,
            weight_decay: wd,
        } = self.config;
        self.t += 1;
        let c1 = 1.0 - (b1 as f64).powf(self.t as f64);
        let c2 = 1.0 - (b2 as f64).powf(self.t as f64);
        // Fold both bias corrections into one step size and a scaled epsilon.
        let step = (lr as f64 * c2.sqrt() / c1) as f32;
        let eps_hat = (eps as f64 * c2.sqrt()) as f32;
        let update = |w: &mut f32, g: f32, m: &mut f32, v: &mut f32| {
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *w -= step * *m / (v.sqrt() + eps_hat) + lr * wd * *w;
        };
        // Each chunk returns whether what it wrote is finite (see
        // `Mlp::set_params_finite`).
        let chunk = |(((w, g), m), v): Chunk<'_>| {
            // Checked in the update's own loop, which vectorises with the
            // check (an `and` of comparisons): no second pass.
            let mut finite = true;
            for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                update(w, g, m, v);
                finite &= w.is_finite();
            }
            finite
        };
        // Each layer in chunks on the pool's threads when it has more than
        // one: every parameter sees the same arithmetic either way.
        let parallel = ws.par().degree() > 1;
        let mut finite = true;
        for (i, w) in net.params_mut().enumerate() {
            let n = w.len();
            let (g, m, v) = (
                &ws.grads()[i][..n],
                &mut self.m[i][..n],
                &mut self.v[i][..n],
            );
            finite &= if parallel && n > UPDATE_CHUNK {
                w.par_chunks_mut(UPDATE_CHUNK)
                    .zip(g.par_chunks(UPDATE_CHUNK))
                    .zip(m.par_chunks_mut(UPDATE_CHUNK))
                    .zip(v.par_chunks_mut(UPDATE_CHUNK))
                    .map(chunk)
                    .reduce(|| true, |a, b| a & b)
            } else {
                chunk((((w, g), m), v))
            };
        }
        net.set_params_finite(finite);
        Ok(())
    }
}
