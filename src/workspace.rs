//! The preallocated [`Workspace`]: every buffer the forward and backward passes
//! need, sized once for a maximum minibatch, so that training steps allocate
//! nothing.

use crate::mlp::Mlp;
use crate::Error;
use natgrad_kernels::gemm::gemm_scratch;
use natgrad_kernels::{MatMut, MatRef, MemBuffer, Par, StackReq};

/// Buffers for one network at minibatches of up to `max_batch` examples.
///
/// * `acts[i]` holds `abar_i = [a_i; 1]`, `(n_i + 1) x b` column-major (the row
///   of ones folds the bias into the weights), `acts[0]` being the input;
/// * `errs[i]` holds the error `e_{i+1}` of layer `i + 1`, `n_{i+1} x b`;
/// * `grads[i]` holds the gradient of layer `i + 1`, `n_{i+1} x (n_i + 1)`;
/// * one scratch buffer for the kernels, sized by their `*_scratch` functions.
pub struct Workspace {
    pub(crate) sizes: Vec<usize>,
    pub(crate) max_batch: usize,
    pub(crate) batch: usize,
    pub(crate) acts: Vec<Vec<f32>>,
    pub(crate) errs: Vec<Vec<f32>>,
    pub(crate) grads: Vec<Vec<f32>>,
    pub(crate) scratch: MemBuffer,
    /// Per-chunk partial sums of the loss (see [`Mlp::loss`](crate::mlp::Mlp::loss)).
    pub(crate) loss_partials: Vec<f64>,
    pub(crate) par: Par,
}

impl Workspace {
    /// Buffers for `net` at minibatches of up to `max_batch` columns, with
    /// kernels parallelised as `par`.
    pub fn new(net: &Mlp, max_batch: usize, par: Par) -> Result<Workspace, Error> {
        if max_batch == 0 {
            return Err(Error::InvalidConfig(
                "the maximum minibatch size must be at least 1".into(),
            ));
        }
        let sizes = net.sizes();
        let acts = sizes
            .iter()
            .map(|&n| vec![0.0f32; (n + 1) * max_batch])
            .collect();
        let errs = sizes[1..]
            .iter()
            .map(|&n| vec![0.0f32; n * max_batch])
            .collect();
        let grads = net
            .layers()
            .iter()
            .map(|l| vec![0.0f32; l.params.len()])
            .collect();
        let req = StackReq::any_of(
            &net.layers()
                .iter()
                .flat_map(|l| {
                    [
                        gemm_scratch(l.n_out, max_batch, l.n_in, par),
                        gemm_scratch(l.n_in, max_batch, l.n_out, par),
                        gemm_scratch(l.n_out, l.n_in + 1, max_batch, par),
                    ]
                })
                .collect::<Vec<_>>(),
        );
        Ok(Workspace {
            sizes,
            max_batch,
            batch: 0,
            acts,
            errs,
            grads,
            scratch: MemBuffer::new(req),
            loss_partials: vec![0.0; max_batch.div_ceil(crate::mlp::LOSS_CHUNK_COLS)],
            par,
        })
    }

    /// The largest minibatch this workspace takes.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }
    /// The size of the minibatch of the last forward pass.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// The parallelism the kernels run with.
    pub fn par(&self) -> Par {
        self.par
    }
    /// Per-layer gradients of the last [`Mlp::loss_and_gradient`], each
    /// `n_out x (n_in + 1)` column-major with the bias gradient last.
    pub fn grads(&self) -> &[Vec<f32>] {
        &self.grads
    }

    /// The activations `a_i` of layer `i` from the last forward pass (`i = 0` is
    /// the input), `n_i x b`.
    ///
    /// # Panics
    /// If `i` exceeds the number of layers.
    pub fn activations(&self, i: usize) -> MatRef<'_, f32> {
        let n = self.sizes[i];
        view(&self.acts[i], n, self.batch, n + 1)
    }

    pub(crate) fn check_compatible(&self, net: &Mlp) -> Result<(), Error> {
        if !net.has_sizes(&self.sizes) {
            return Err(Error::Shape(format!(
                "the workspace was built for widths {:?}, the network has {:?}",
                self.sizes,
                net.sizes()
            )));
        }
        Ok(())
    }

    pub(crate) fn set_batch(&mut self, b: usize) -> Result<(), Error> {
        if b == 0 {
            return Err(Error::Shape("the minibatch is empty (0 columns)".into()));
        }
        if b > self.max_batch {
            return Err(Error::Shape(format!(
                "minibatch of {b} columns exceeds the workspace's maximum of {}",
                self.max_batch
            )));
        }
        self.batch = b;
        Ok(())
    }
}

/// A column-major view of `rows x cols` with column stride `ld` into `buf`.
pub(crate) fn view(buf: &[f32], rows: usize, cols: usize, ld: usize) -> MatRef<'_, f32> {
    MatRef::from_column_major_slice_with_stride(buf, rows, cols, ld)
}

/// Mutable counterpart of [`view`].
pub(crate) fn view_mut(buf: &mut [f32], rows: usize, cols: usize, ld: usize) -> MatMut<'_, f32> {
    MatMut::from_column_major_slice_with_stride_mut(buf, rows, cols, ld)
}
