//! The preallocated [`Workspace`]: every buffer the forward and backward passes
//! need, sized once for a maximum minibatch, so that training steps allocate
//! nothing.

use crate::Error;
use natgrad_kernels::gemm::gemm_scratch;
use natgrad_kernels::{MatMut, MatRef, MemBuffer, Par, StackReq};

/// The largest `max_batch` a [`Workspace`] or an optimizer is built for:
/// 2^20 columns. A minibatch of a million examples is far past any use of
/// minibatch training (the race's largest is 1,000) and keeps every buffer
/// length `width * max_batch` far from overflowing; larger requests are
/// refused with [`Error::InvalidConfig`] before anything is allocated.
pub const MAX_BATCH: usize = 1 << 20;

/// Refuses a `max_batch` of 0 or above [`MAX_BATCH`] ([`Error::InvalidConfig`]).
pub(crate) fn check_max_batch(max_batch: usize) -> Result<(), Error> {
    if max_batch == 0 {
        return Err(Error::InvalidConfig(
            "the maximum minibatch size must be at least 1".into(),
        ));
    }
    if max_batch > MAX_BATCH {
        return Err(Error::InvalidConfig(format!(
            "the maximum minibatch size {max_batch} is more than natgrad's limit of \
             {MAX_BATCH} columns"
        )));
    }
    Ok(())
}

/// `a * b` for a buffer length, or [`Error::InvalidConfig`] naming `what` if
/// it overflows.
pub(crate) fn checked_len(a: usize, b: usize, what: &str) -> Result<usize, Error> {
    a.checked_mul(b).ok_or_else(|| {
        Error::InvalidConfig(format!(
            "{what} would hold {a} x {b} values, more than memory can address"
        ))
    })
}

/// The message of a failed allocation of `bytes` bytes for `what`.
pub(crate) fn allocation_failed(what: &str, bytes: u128) -> Error {
    Error::InvalidConfig(format!(
        "cannot allocate {bytes} bytes for {what}: not enough memory (use a smaller \
         maximum minibatch or network)"
    ))
}

/// A zeroed `Vec` of `len` floats, or [`Error::InvalidConfig`] if the
/// allocator refuses (instead of aborting the process).
pub(crate) fn try_zeros(len: usize, what: &str) -> Result<Vec<f32>, Error> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| allocation_failed(what, 4 * len as u128))?;
    v.resize(len, 0.0);
    Ok(v)
}

/// Kernel scratch of `req`, or [`Error::InvalidConfig`] if its size
/// overflows or the allocator refuses.
/// Bytes of scratch of a layer's weight gradient (`n_out x (n_in + 1)`,
/// inner dimension `b`), the first part `Mlp::gradient_pair` carves.
pub(crate) fn weight_grad_bytes(n_in: usize, n_out: usize, b: usize, par: Par) -> usize {
    gemm_scratch(n_out, n_in + 1, b, par).unaligned_bytes_required()
}

/// Scratch of `Mlp::gradient_pair`: [`weight_grad_bytes`] carved first at
/// a 64-byte boundary (up to 63 bytes of padding), then the input
/// gradient's. Sized at the largest minibatch it serves every smaller one,
/// as each product's scratch does.
pub(crate) fn gradient_pair_scratch(n_in: usize, n_out: usize, b: usize, par: Par) -> StackReq {
    let input_grad = gemm_scratch(n_in, b, n_out, par).unaligned_bytes_required();
    StackReq::new::<u8>(weight_grad_bytes(n_in, n_out, b, par) + 63 + input_grad)
}

pub(crate) fn try_scratch(req: StackReq, what: &str) -> Result<MemBuffer, Error> {
    MemBuffer::try_new(req)
        .map_err(|_| allocation_failed(what, req.unaligned_bytes_required() as u128))
}

/// Checks, before the first allocation, that `bytes` bytes can be had at
/// all: a trial reservation that is released at once (untouched pages cost
/// nothing). Lets a constructor that allocates many buffers return
/// [`Error::InvalidConfig`] instead of aborting halfway.
pub(crate) fn probe_allocation(bytes: u128, what: &str) -> Result<(), Error> {
    let fail = || allocation_failed(what, bytes);
    let n = usize::try_from(bytes).map_err(|_| fail())?;
    if n > isize::MAX as usize {
        return Err(fail());
    }
    let mut probe: Vec<u8> = Vec::new();
    probe.try_reserve_exact(n).map_err(|_| fail())?;
    Ok(())
}

/// Buffers for one network at minibatches of up to `max_batch` examples.
///
/// * `acts[i]` holds `abar_i = [a_i; 1]`, `(n_i + 1) x b` column-major (the row
///   of ones folds the bias into the weights), `acts[0]` being the input;
/// * `errs[i]` holds the error `e_{i+1}` of layer `i + 1`, `n_{i+1} x b`;
/// * `grads[i]` holds the gradient of layer `i + 1`, `n_{i+1} x (n_i + 1)`;
/// * one scratch buffer for the kernels, sized by their `*_scratch` functions.
pub struct Workspace {
    sizes: Vec<usize>,
    max_batch: usize,
    batch: usize,
    acts: Vec<Vec<f32>>,
    errs: Vec<Vec<f32>>,
    grads: Vec<Vec<f32>>,
    scratch: MemBuffer,
    /// Per-chunk partial sums of the loss (see `Mlp::loss`).
    loss_partials: Vec<f64>,
    par: Par,
}

impl Workspace {
    /// Buffers for a network of widths `sizes` (`n_0, ..., n_L`) at
    /// minibatches of up to `max_batch` columns, with kernels parallelised
    /// as `par`, and `loss_partials` slots for the loss's per-chunk sums.
    /// [`Workspace::new`], next to the network in `mlp.rs`, is the public
    /// way in.
    pub(crate) fn with_sizes(
        sizes: Vec<usize>,
        max_batch: usize,
        par: Par,
        loss_partials: usize,
    ) -> Result<Workspace, Error> {
        check_max_batch(max_batch)?;
        let what = "the workspace";
        let acts = sizes
            .iter()
            .map(|&n| try_zeros(checked_len(n + 1, max_batch, what)?, what))
            .collect::<Result<_, _>>()?;
        let errs = sizes[1..]
            .iter()
            .map(|&n| try_zeros(checked_len(n, max_batch, what)?, what))
            .collect::<Result<_, _>>()?;
        // Layer i maps n_in = sizes[i] to n_out = sizes[i + 1] and holds
        // n_out x (n_in + 1) parameters.
        let layers = || sizes.windows(2).map(|w| (w[0], w[1]));
        let grads = layers()
            .map(|(n_in, n_out)| try_zeros(n_out * (n_in + 1), what))
            .collect::<Result<_, _>>()?;
        let req = StackReq::any_of(
            &layers()
                .flat_map(|(n_in, n_out)| {
                    [
                        gemm_scratch(n_out, max_batch, n_in, par),
                        gemm_scratch(n_in, max_batch, n_out, par),
                        gemm_scratch(n_out, n_in + 1, max_batch, par),
                        gradient_pair_scratch(n_in, n_out, max_batch, par),
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
            scratch: try_scratch(req, "the workspace's kernel scratch")?,
            loss_partials: vec![0.0; loss_partials],
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
    /// Per-layer gradients of the last `Mlp::loss_and_gradient`, each
    /// `n_out x (n_in + 1)` column-major with the bias gradient last.
    pub fn grads(&self) -> &[Vec<f32>] {
        &self.grads
    }

    /// The activations `a_i` of layer `i` from the last forward pass (`i = 0` is
    /// the input, `i = L` the output of an `L`-layer network), `n_i x b`.
    ///
    /// # Errors
    /// [`Error::Shape`] if `i` exceeds the number of layers.
    pub fn activations(&self, i: usize) -> Result<MatRef<'_, f32>, Error> {
        let (Some(&n), Some(buf)) = (self.sizes.get(i), self.acts.get(i)) else {
            let layers = self.sizes.len().saturating_sub(1);
            return Err(Error::Shape(format!(
                "no activations {i}: the network has {layers} layers, so activations 0 \
                 (the input) to {layers} (the output)"
            )));
        };
        Ok(view(buf, n, self.batch, n + 1))
    }

    /// The activation buffers `abar_i`, `(n_i + 1) x max_batch` each (see
    /// [`Workspace`]), of which the first `batch()` columns are current.
    pub(crate) fn activation_buffers(&self) -> &[Vec<f32>] {
        &self.acts
    }
    /// The gradient buffers, writable (for terms an optimizer adds).
    pub(crate) fn grads_mut(&mut self) -> &mut [Vec<f32>] {
        &mut self.grads
    }
    /// Every buffer, writable, borrowed apart: for the passes that read
    /// some while they write others, and for an optimizer that solves in
    /// place on the activations and errors once the gradients are formed.
    pub(crate) fn buffers_mut(&mut self) -> Buffers<'_> {
        Buffers {
            acts: &mut self.acts,
            errs: &mut self.errs,
            grads: &mut self.grads,
            scratch: &mut self.scratch,
            loss_partials: &mut self.loss_partials,
        }
    }

    /// The widths `n_0, ..., n_L` of the network the workspace was built for.
    pub(crate) fn sizes(&self) -> &[usize] {
        &self.sizes
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

/// The workspace's buffers borrowed apart (see [`Workspace::buffers_mut`]).
pub(crate) struct Buffers<'a> {
    /// The activations `abar_i`, the input's and each layer's.
    pub(crate) acts: &'a mut [Vec<f32>],
    /// The errors `e_i`, one per layer.
    pub(crate) errs: &'a mut [Vec<f32>],
    /// The gradients, one per layer.
    pub(crate) grads: &'a mut [Vec<f32>],
    /// The kernels' scratch.
    pub(crate) scratch: &'a mut MemBuffer,
    /// The loss's per-chunk partial sums.
    pub(crate) loss_partials: &'a mut [f64],
}

/// A column-major view of `rows x cols` with column stride `ld` into `buf`.
pub(crate) fn view(buf: &[f32], rows: usize, cols: usize, ld: usize) -> MatRef<'_, f32> {
    MatRef::from_column_major_slice_with_stride(buf, rows, cols, ld)
}

/// Mutable counterpart of [`view`].
pub(crate) fn view_mut(buf: &mut [f32], rows: usize, cols: usize, ld: usize) -> MatMut<'_, f32> {
    MatMut::from_column_major_slice_with_stride_mut(buf, rows, cols, ld)
}
