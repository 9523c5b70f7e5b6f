//! General matrix multiply with fused epilogues.
//!
//! The BLIS/Goto structure: `C` is cut into column blocks of at most [`NC`],
//! the inner dimension into equal blocks of at most [`KC`], and the rows
//! into blocks of at most [`MC`] (packed `A` block at most 768 KiB, sized
//! for the 1 MiB L2 of the AMD Zen 5 cores the kernels were tuned on). The
//! microkernel multiplies an `MR x KC` panel of `A` by a `KC x NR` panel of
//! `B` (which stays in L1) with the `MR x NR` result in registers: 48 x 8
//! with AVX-512, 16 x 6 with AVX2+FMA, 4 x 4 scalar. `B` with unit row
//! stride (the usual column-major minibatch) is read in place, and so, with
//! AVX-512, is a row-major one (the weight gradient's `E X^T`) when `C` has
//! at most 1000 rows and a depth block of `B` spans at most 800 Ki floats;
//! other layouts are
//! packed into a shared `KC x NC` buffer first. A column-major `A` is
//! packed by the microkernels of each block's first column panel, which load
//! it for the product anyway; so is a row-major one (a transposed view such
//! as `W^T`) with AVX-512, transposed in registers four steps at a time on
//! the way (its partial last row panel, and a row-major `A` at other
//! instruction sets, by a packing pass of 16 x 16 register transposes
//! with AVX-512, 8 x 8 with AVX2, or scalar moves); other layouts by a
//! scalar packing pass. On the last `KC` block the epilogue (bias +
//! activation, or activation derivative) is applied to the registers before
//! the one store of the tile, so a fused forward pass costs no extra pass
//! over memory.
//!
//! Parallelism (`Par::Rayon(t)`), two ways:
//!
//! * Products of at least 2^24 multiply-adds with at least 8 column panels
//!   per thread share their work dynamically: each block of `C` is cut into
//!   units of register tiles (a row block of at most an `A` block's rows by
//!   a group of column panels; see `UnitGrid`), numbered in row-major
//!   order. Thread `i` starts on the `i`-th of `t` equal runs of units,
//!   takes its own from the front and then the others' from the back, and
//!   waits for the last ones by spinning rather than sleeping; a thread
//!   packs a row block of `A` once for all the units it takes in it. A
//!   thread that is slowed down or starts late (the machine is shared) so
//!   loses units instead of holding up the call.
//! * Smaller products split statically: thread `i` takes the `i`-th of `t`
//!   runs of equal cost of the register tiles in row-major order (whole row
//!   tiles with at most a partial one at each end; see `static_a_len`).
//!
//! The dynamic split is no slower than the static one on a quiet machine
//! and keeps a call from waiting on a thread that other load has slowed;
//! below its threshold its bookkeeping costs more than it saves.
//!
//! # Performance
//!
//! `fma_peak_loop` (behind the feature `bench`) measures the machine's FMA
//! peak, the yardstick of `natgrad bench kernels --quick --json`, which also
//! prints this GEMM's speed against faer and matrixmultiply. Measured figures,
//! with the machines and the method, are in the repository's
//! `docs/performance.md`.

mod microkernel;
#[cfg(feature = "openblas")]
mod openblas;
mod split;

pub use crate::vmath::activate_slice_with_isa;
#[cfg(feature = "openblas")]
pub use openblas::{openblas_corename, openblas_gemm};

pub use crate::blocking::{register_tile, KC};

use crate::blocking::{self, div_ceil, lanes, round_up};
use crate::error::check_shape;
use crate::isa::dispatch;
use crate::pack;
use crate::raw::{RawMat, RawMatMut, SendPtr};
use crate::{Activation, Error, Isa, MatMut, MatRef, MemStack, Par, StackReq};
use microkernel::{BlockJob, RawEpilogue};
use rayon::prelude::*;
use split::{
    claims_len, linear_rects, row_block_cap, static_a_len, Claims, TileCost, TileRect, UnitGrid,
    DYNAMIC_MIN_MACS, UNITS_PER_THREAD,
};
use std::mem::MaybeUninit;

/// Upper bound on the rows of a packed `A` block (a multiple of every `MR`).
pub const MC: usize = 384;
/// Floats in a packed `A` block: `MC x 512` (768 KiB, in the 1 MiB L2 of
/// the AMD Zen 5 cores the kernels were tuned on, with room for the `B`
/// panel being read; the Intel machine's cores have 2 MiB). A multiple
/// of `48 * KC`, so that [`mc_for`]`(KC) * KC` is the largest block.
const A_BLOCK: usize = MC * 512;
const _: () = assert!(A_BLOCK.is_multiple_of(48 * KC) && MC.is_multiple_of(48));
/// Upper bound on the columns of a packed `B` block (a multiple of every `NR`).
pub const NC: usize = 3072;
/// A multiple of every `NR` (packed `B` scratch is sized with it).
const NR_MAX: usize = 24;
/// Alignment of packed buffers, in bytes (one cache line, one zmm register).
const ALIGN: usize = 64;
/// A row-major `B` is read in place (not packed) only with AVX-512 and when
/// `C` has at most this many rows (see `Driver::new`).
const ROW_B_DIRECT_MAX_M: usize = 1000;
/// ... and when a depth block's rows of `B` span at most this many floats
/// (`kc` times `B`'s row stride: about 800 pages of 4 KiB).
const ROW_B_DIRECT_MAX_SPAN: usize = 800 * 1024;
/// Below this many multiply-adds a call runs on one thread.
const MIN_PARALLEL_MACS: usize = 1 << 18;

/// The inner-dimension block actually used for inner dimension `k`: `k` split
/// into equal blocks of at most [`KC`].
fn kc_for(k: usize) -> usize {
    if k == 0 {
        0
    } else {
        div_ceil(k, div_ceil(k, KC))
    }
}

/// Rows of a packed `A` block at block depth `kc`: [`MC`], or fewer so that
/// the block stays within [`A_BLOCK`] floats (a multiple of 48, which every
/// `MR` divides; 192 at `kc` = 1000).
fn mc_for(kc: usize) -> usize {
    A_BLOCK
        .checked_div(kc)
        .map_or(MC, |rows| MC.min(rows / 48 * 48).max(48))
}

/// An upper bound on [`kc_for`]`(k)` that never decreases as `k` grows (scratch
/// sized for the largest `k` must serve every smaller one; `kc_for` itself is
/// not monotone: 1024 -> 1024 but 1025 -> 513).
fn kc_bound(k: usize) -> usize {
    k.min(KC)
}

/// Floats of scratch for the shared packed `B` block at block depth `kc`.
fn b_block_len(n: usize, kc: usize) -> usize {
    round_up(round_up(n.min(NC), NR_MAX) * kc, ALIGN / 4)
}

/// The number of threads a call uses.
fn threads_for(par: Par, m: usize, n: usize, k: usize) -> usize {
    let macs = m.saturating_mul(n).saturating_mul(k.max(1));
    blocking::threads_for(par, macs, MIN_PARALLEL_MACS)
}

/// Floats of scratch that serve every call at instruction set `isa` with
/// dimensions up to `m x n x k` and at most `threads` threads: the maximum over
/// every thread count such a call can choose, so that a workspace sized for
/// the largest minibatch also serves a smaller one.
fn scratch_len_bound(isa: Isa, m: usize, n: usize, k: usize, threads: usize) -> usize {
    let (mr, _) = register_tile(isa);
    let kc = kc_bound(k);
    let tiles_m = div_ceil(m, mr);
    let mut len = 0;
    for t in [1, threads] {
        len = len.max(claims_len(t) + t * a_len_for(t, tiles_m, kc, mr));
    }
    len + b_block_len(n, kc)
}

/// Floats of each thread's packed-`A` buffer: what the static split
/// ([`static_a_len`]) or the dynamic one ([`UnitGrid`]) needs, whichever the
/// call takes.
fn a_len_for(tasks: usize, tiles_m: usize, kc: usize, mr: usize) -> usize {
    let a_static = static_a_len(tasks, tiles_m, kc, mr);
    if tasks > 1 {
        // A row block of the dynamic split.
        let rows = row_block_cap(tasks, tiles_m, kc, mr) * mr;
        a_static.max(round_up(rows * kc, ALIGN / 4))
    } else {
        a_static
    }
}

/// What is applied to each element of `C` while it is still in registers,
/// after `T = alpha op(A) op(B) + beta C` has been formed.
#[derive(Clone, Copy, Debug)]
pub enum Epilogue<'a> {
    /// `C = T`.
    None,
    /// Forward pass: `C[i, j] = act(T[i, j] + bias[i])` (`bias` has `C.nrows()`
    /// entries; `None` means no bias).
    BiasActivation {
        /// One entry per row of `C`, or `None`.
        bias: Option<&'a [f32]>,
        /// The activation applied last.
        activation: Activation,
    },
    /// Backward pass: `C[i, j] = T[i, j] * act'(output[i, j])` where `output`
    /// is the forward output `a = act(s)` of the layer (same shape as `C`).
    ActivationDerivative {
        /// The activation whose derivative is applied.
        activation: Activation,
        /// The forward outputs, same shape as `C`.
        output: MatRef<'a, f32>,
    },
}

/// Scratch needed by [`gemm`] / [`gemm_fused`] for `C` of shape `m x n` and inner
/// dimension `k` under parallelism `par` (at any instruction set).
pub fn gemm_scratch(m: usize, n: usize, k: usize, par: Par) -> StackReq {
    let t = threads_for(par, m, n, k);
    let len = [Isa::Scalar, Isa::Avx2, Isa::Avx512]
        .into_iter()
        .map(|isa| scratch_len_bound(isa, m, n, k, t))
        .max()
        .unwrap_or(0);
    StackReq::new_aligned::<f32>(len, ALIGN)
}

/// `C = alpha op(A) op(B) + beta C`. See [`gemm_fused`].
pub fn gemm(
    c: MatMut<'_, f32>,
    beta: f32,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    alpha: f32,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    gemm_fused(c, beta, a, b, alpha, Epilogue::None, par, stack)
}

/// `C = epilogue(alpha A B + beta C)` for f32 column-major strided views.
///
/// * Shapes: `A` is `m x k`, `B` is `k x n`, `C` is `m x n`; any may be empty.
///   Transposes are expressed by passing `a.transpose()`.
/// * `beta == 0` means `C` is not read (NaN in `C` does not propagate).
/// * Errors: [`Error::ShapeMismatch`] if the shapes disagree;
///   [`Error::InvalidArgument`] if `alpha` or `beta` is not finite (NaN or
///   infinity, checked before anything is read or written) or `stack` holds
///   less than [`gemm_scratch`].
/// * `C` must not alias `A`, `B` or the epilogue's operands.
/// * Error bound: each element before the epilogue satisfies
///   `|T - T_exact| <= gamma_k (|alpha| |A||B| + |beta C|)` with
///   `gamma_k = k u / (1 - k u)`, `u = 2^-24`.
/// * Allocates nothing when `stack` holds [`gemm_scratch`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_fused(
    c: MatMut<'_, f32>,
    beta: f32,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    alpha: f32,
    epilogue: Epilogue<'_>,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    gemm_fused_with_isa(Isa::detect(), c, beta, a, b, alpha, epilogue, par, stack)
}

/// [`gemm_fused`] at a forced instruction-set level (for tests and benchmarks).
#[allow(clippy::too_many_arguments)]
pub fn gemm_fused_with_isa(
    isa: Isa,
    c: MatMut<'_, f32>,
    beta: f32,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    alpha: f32,
    epilogue: Epilogue<'_>,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    if !isa.is_available() {
        return Err(Error::IsaUnavailable(isa));
    }
    let (m, n, k) = (c.nrows(), c.ncols(), a.ncols());
    check_product_shapes("gemm", (m, n), a, b)?;
    if !alpha.is_finite() || !beta.is_finite() {
        return Err(Error::InvalidArgument {
            op: "gemm",
            detail: format!("alpha ({alpha}) and beta ({beta}) must be finite"),
        });
    }
    let epilogue = raw_epilogue(epilogue, m, n)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let req = gemm_scratch(m, n, k, par);
    if !stack.can_hold(req) {
        return Err(Error::InvalidArgument {
            op: "gemm",
            detail: format!(
                "scratch holds {} bytes, gemm_scratch({m}, {n}, {k}, ..) asks for {} bytes",
                stack.len_bytes(),
                req.unaligned_bytes_required()
            ),
        });
    }
    let driver = Driver::new(isa, c, beta, a, b, alpha, epilogue, par);
    let (scratch, _) = stack.make_aligned_uninit::<f32>(driver.scratch_len(), ALIGN);
    let (claims, scratch) = scratch.split_at_mut(claims_len(driver.tasks));
    let (a_scratch, b_scratch) = scratch.split_at_mut(driver.tasks * driver.a_len);
    driver.split_n(Scratch {
        claims,
        a: a_scratch,
        b: b_scratch,
    });
    Ok(())
}

/// Checks `epilogue`'s operands against `C` (`m x n`) and turns it into raw
/// parts for the worker threads.
fn raw_epilogue(epilogue: Epilogue<'_>, m: usize, n: usize) -> Result<RawEpilogue, Error> {
    Ok(match epilogue {
        Epilogue::None => RawEpilogue::None,
        Epilogue::BiasActivation { bias, activation } => {
            if let Some(bias) = bias {
                check_shape(bias.len() == m, "gemm", || {
                    format!("bias has {} entries, C has {m} rows", bias.len())
                })?;
            }
            RawEpilogue::BiasActivation {
                bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
                activation,
            }
        }
        Epilogue::ActivationDerivative { activation, output } => {
            check_shape(output.nrows() == m && output.ncols() == n, "gemm", || {
                format!(
                    "epilogue output is {}x{}, C is {m}x{n}",
                    output.nrows(),
                    output.ncols()
                )
            })?;
            RawEpilogue::ActivationDerivative {
                activation,
                output: RawMat::from_ref(output),
            }
        }
    })
}

/// The scratch of one call: the claim cells of the dynamic split, one packed
/// `A` buffer per thread (`a_len` floats each), the shared packed `B` block.
struct Scratch<'s> {
    claims: &'s mut [MaybeUninit<f32>],
    a: &'s mut [MaybeUninit<f32>],
    b: &'s mut [MaybeUninit<f32>],
}

/// One checked GEMM call in raw parts, and its blocking: what every loop
/// level reads. The loops, outermost first (the names of BLIS and
/// matrixmultiply):
///
/// * LOOP 5, [`Driver::split_n`]: `n` into column blocks of at most [`NC`];
/// * the split between threads of a column block, dynamic
///   ([`Driver::share_column_block`]) or static
///   ([`Driver::split_column_block`]), into rectangles of register tiles;
/// * LOOP 4, [`Driver::split_k`]: `k` into depth blocks of `kc` (at most
///   [`KC`]), packing each `B` block ([`Driver::pack_b_block`]) unless `B`
///   is read in place;
/// * LOOP 3, [`Driver::split_m`]: a rectangle's rows into blocks of at most
///   [`mc_for`]`(kc)`, each packed `A` block multiplied by
///   [`Driver::multiply_row_block`];
/// * LOOP 2 (`n` into `NR`-column panels, `microkernel::compute_block`) and
///   LOOP 1 (a panel's `MR`-row tiles, `microkernel::column_panel`), around
///   the microkernel, with the epilogue fused into the last depth block's
///   store.
struct Driver {
    isa: Isa,
    m: usize,
    n: usize,
    /// The inner dimension the product is formed over: `k`, or 0 when
    /// `alpha == 0` (`A` and `B` are then not read).
    k: usize,
    /// Depth block for `k` ([`kc_for`]), and the one the buffers are sized
    /// for (the call's own `k`, even when the product is not formed).
    kc: usize,
    kc_buf: usize,
    mr: usize,
    nr: usize,
    tiles_m: usize,
    tasks: usize,
    /// Floats of each thread's packed-`A` buffer.
    a_len: usize,
    a: RawMat,
    b: RawMat,
    c: RawMatMut,
    alpha: f32,
    beta: f32,
    epilogue: RawEpilogue,
    /// `B` is read in place (unit row stride, or unit column stride within
    /// the bounds of [`ROW_B_DIRECT_MAX_M`] and [`ROW_B_DIRECT_MAX_SPAN`]), not
    /// packed.
    b_direct: bool,
    /// The column blocks are shared dynamically ([`UnitGrid`], [`Claims`]).
    dynamic: bool,
}

impl Driver {
    /// The driver of a checked call (non-empty `C`, finite scalars).
    #[allow(clippy::too_many_arguments)]
    fn new(
        isa: Isa,
        c: MatMut<'_, f32>,
        beta: f32,
        a: MatRef<'_, f32>,
        b: MatRef<'_, f32>,
        alpha: f32,
        epilogue: RawEpilogue,
        par: Par,
    ) -> Driver {
        let (m, n, k) = (c.nrows(), c.ncols(), a.ncols());
        // With alpha == 0 or k == 0 the product is not formed (A and B are
        // not read, so Inf/NaN there does not leak into C); the blocks then
        // run with kc = 0 and only scale C and apply the epilogue.
        let k_eff = if alpha == 0.0 { 0 } else { k };
        let alpha = if k_eff == 0 { 0.0 } else { alpha };
        let tasks = threads_for(par, m, n, k);
        let (mr, nr) = register_tile(isa);
        let tiles_m = div_ceil(m, mr);
        // Buffers and grids are sized for the call's own k (k_eff may be 0).
        let kc_buf = kc_for(k);
        // Dynamic sharing (see DYNAMIC_MIN_MACS) or the static split.
        let dynamic = tasks > 1
            && m.saturating_mul(n).saturating_mul(k_eff) >= DYNAMIC_MIN_MACS
            && div_ceil(n.min(NC), nr) >= UNITS_PER_THREAD * tasks;
        // B with unit row stride is read in place by the microkernel (its
        // columns give the broadcasts; an 8-column panel of KC steps, 32 KiB
        // at KC = 1024, mostly stays in the 48 KiB L1), saving the packing
        // pass. A is packed (except in a block of one column panel, which
        // would not read the packed copy again): read in place, a row
        // panel's columns lie a leading dimension apart and, for leading
        // dimensions near multiples of 4 KiB, collide in the same L1 sets
        // (measured: 1024^3 fell from ~99 to ~74 GFLOP/s on one thread). A
        // column-major A is packed by the block's first column panel as it
        // multiplies (`BlockJob::a_src`): 1-2% faster on one thread than a
        // packing pass, which ran at the speed of the L3 and cost 5-8% of
        // the time at the `deep` shapes. With AVX-512 so is a row-major A
        // (the input gradient's `W^T`), transposed in registers on the way
        // (`BlockJob::a_src_rows`): against the packing pass of 16 x 16
        // transposes, `W^T E` with the derivative epilogue at the `deep`
        // shapes on 2 threads, alternated in one process, 1.09-1.30x at
        // minibatch 100, 1.04-1.15x at 256, 1.02-1.04x at 1000.
        //
        // A row-major B (unit column stride: the weight gradient's `E X^T`)
        // is read in place too when `C` has at most [`ROW_B_DIRECT_MAX_M`]
        // rows and a depth block's rows of B span at most
        // [`ROW_B_DIRECT_MAX_SPAN`] floats: step `p` of a panel is then `NR`
        // consecutive floats, one or two cache lines and a new page every
        // step or few. The packing pass moves `k n` floats for `m k n`
        // multiply-adds, so it weighs most when `m` is small; with more rows
        // each panel is read by more tiles and packing wins. Measured on 2
        // threads against packing, alternated in one process: 1.10x at
        // 250x1000x501, 1.12x at 200x1000x401, 1.03-1.06x at the other
        // `deep` and `paper` weight-gradient shapes; 0.89x at 1024^3 and
        // 0.95x at 2000x1000x1024 (more rows); in the `layer` lines
        // (`natgrad bench kernels --only layer`), in place lost at k = 1000
        // with rows 1001 floats apart (0.72-0.75 of the peak against
        // 0.76-0.81 packed; a span of 1001 x 1000 floats) and gained from a
        // span of 785 x 1000 down, hence the bound. The `deep`
        // and `paper` SGD steps: 0.97-1.01x at minibatch 100-1000.
        //
        // Only with AVX-512, though: on an AMD Zen 3 core (AVX2, 16 x 6
        // tiles, a panel step 6 floats of a new line, 32 KiB L1), packing
        // won at every `deep` weight-gradient shape; the `layer` lines on
        // 2 threads, two runs each, alternated: median 0.70 of the peak in
        // place against 0.82 packed, 0.53-0.67 against 0.80-0.83 at
        // 1000x1000x785.
        let b_direct = b.row_stride() == 1
            || (b.col_stride() == 1
                && isa == Isa::Avx512
                && m <= ROW_B_DIRECT_MAX_M
                && b.row_stride() > 0
                && b.row_stride().unsigned_abs().saturating_mul(kc_buf) <= ROW_B_DIRECT_MAX_SPAN);
        Driver {
            isa,
            m,
            n,
            k: k_eff,
            kc: kc_for(k_eff),
            kc_buf,
            mr,
            nr,
            tiles_m,
            tasks,
            a_len: a_len_for(tasks, tiles_m, kc_buf, mr),
            a: RawMat::from_ref(a),
            b: RawMat::from_ref(b),
            c: RawMatMut::from_mut(c),
            alpha,
            beta,
            epilogue,
            b_direct,
            dynamic,
        }
    }

    /// Floats of scratch the call takes (at most [`gemm_scratch`]).
    fn scratch_len(&self) -> usize {
        claims_len(self.tasks) + self.tasks * self.a_len + b_block_len(self.n, self.kc_buf)
    }

    /// LOOP 5: split `n` into column blocks of at most [`NC`], each shared
    /// between the threads dynamically or split statically.
    fn split_n(&self, mut scratch: Scratch<'_>) {
        let mut j0 = 0;
        while j0 < self.n {
            let nc = NC.min(self.n - j0);
            let panels_n = div_ceil(nc, self.nr);
            // (More units than the claim cells count is not reached by any
            // product that fits in memory; it would take the static split.)
            let grid = self
                .dynamic
                .then(|| {
                    UnitGrid::new(
                        self.tasks,
                        self.tiles_m,
                        panels_n,
                        self.kc_buf,
                        self.mr,
                        self.nr,
                    )
                })
                .filter(|grid| u32::try_from(grid.units()).is_ok());
            match grid {
                Some(grid) => self.share_column_block(grid, j0, &mut scratch),
                None => self.split_column_block(panels_n, j0, &mut scratch),
            }
            j0 += nc;
        }
    }

    /// The dynamic split of the column block at `j0`: per depth block (units
    /// are claimed per block, so a block's tiles are done before the next
    /// block adds to them), the threads claim units of `grid` ([`Claims`]).
    fn share_column_block(&self, grid: UnitGrid, j0: usize, scratch: &mut Scratch<'_>) {
        self.split_k(|p0| {
            if !self.b_direct {
                self.pack_b_block(scratch.b, j0, p0);
            }
            let b_base = SendPtr(scratch.b.as_ptr() as *const f32);
            let claims = Claims::new(scratch.claims, self.tasks, grid.units());
            self.for_each_task(scratch.a, &|tid, a_buf| {
                // The row block whose A the buffer holds.
                let mut packed = None;
                let mut count = 0;
                let mut run = |unit: usize| {
                    let row_block = unit / grid.groups;
                    let reuse = packed == Some(row_block);
                    packed = Some(row_block);
                    let rect = TileRect {
                        tiles: grid.row_tiles(row_block),
                        panels: grid.panels(unit % grid.groups),
                    };
                    self.split_m(rect, a_buf, (j0, p0), b_base, reuse, grid.groups > 1);
                    count += 1;
                };
                while let Some(unit) = claims.take_own(tid) {
                    run(unit);
                }
                while let Some(unit) = claims.steal(tid) {
                    run(unit);
                }
                claims.finish(count);
            });
        });
    }

    /// The static split of the column block at `j0` (`panels_n` column
    /// panels): thread `tid` takes its run of equal cost ([`linear_rects`]).
    fn split_column_block(&self, panels_n: usize, j0: usize, scratch: &mut Scratch<'_>) {
        let cost = TileCost::new(self.m, self.mr, lanes(self.isa));
        let work = |tid: usize, a_buf: &mut [MaybeUninit<f32>], p0: usize, b_base: SendPtr| {
            for rect in linear_rects(self.tiles_m, panels_n, cost, self.tasks, tid) {
                self.split_m(rect, a_buf, (j0, p0), b_base, false, false);
            }
        };
        if self.b_direct {
            // Nothing is shared between threads: each owns its tiles of C
            // for the whole inner dimension, so one parallel region (no
            // barrier per KC block, and a stolen task carries all its blocks).
            let unused = SendPtr(std::ptr::null());
            self.for_each_task(scratch.a, &|tid, a_buf| {
                self.split_k(|p0| work(tid, a_buf, p0, unused))
            });
        } else {
            self.split_k(|p0| {
                self.pack_b_block(scratch.b, j0, p0);
                let b_base = SendPtr(scratch.b.as_ptr() as *const f32);
                self.for_each_task(scratch.a, &|tid, a_buf| work(tid, a_buf, p0, b_base));
            });
        }
    }

    /// LOOP 4: split `k` into depth blocks of `kc`; `each(p0)` for the
    /// block starting at inner step `p0` (once, with `p0 = 0`, when the
    /// product is not formed).
    #[inline(always)]
    fn split_k(&self, mut each: impl FnMut(usize)) {
        let mut p0 = 0;
        loop {
            each(p0);
            p0 += self.kc.min(self.k - p0);
            if p0 >= self.k {
                break;
            }
        }
    }

    /// Runs `each(tid, a_buf)` for every thread with its packed-`A` buffer,
    /// in parallel when there are several.
    fn for_each_task(
        &self,
        a_scratch: &mut [MaybeUninit<f32>],
        each: &(dyn Fn(usize, &mut [MaybeUninit<f32>]) + Sync),
    ) {
        if self.tasks > 1 && self.a_len == 0 {
            // k == 0: nothing to pack, the threads only scale C.
            (0..self.tasks)
                .into_par_iter()
                .with_max_len(1)
                .for_each(|tid| each(tid, &mut []));
        } else if self.tasks > 1 {
            a_scratch
                .par_chunks_mut(self.a_len)
                .enumerate()
                .with_max_len(1)
                .for_each(|(tid, a_buf)| each(tid, a_buf));
        } else {
            each(0, a_scratch);
        }
    }

    /// Packs `B[p0.., j0..]` (one depth block of the column block at `j0`)
    /// into the shared buffer, its panels split over the threads.
    fn pack_b_block(&self, b_scratch: &mut [MaybeUninit<f32>], j0: usize, p0: usize) {
        let nr = self.nr;
        let nc = NC.min(self.n - j0);
        let panels_n = div_ceil(nc, nr);
        let kcb = self.kc.min(self.k - p0);
        let panel_len = nr * kcb;
        if kcb == 0 {
            return;
        }
        let b_packed = &mut b_scratch[..panels_n * panel_len];
        let pack_panels = |q0: usize, chunk: &mut [MaybeUninit<f32>]| {
            let cols = (chunk.len() / panel_len * nr).min(nc - q0 * nr);
            // SAFETY: the block B[p0 .. p0+kcb, j0+q0*nr .. +cols] lies
            // inside B (p0 + kcb <= k, j0 + q0 nr + cols <= n), and `chunk`
            // holds ceil(cols / nr) panels of nr * kcb floats. B is packed
            // as the same block of B^T in A's layout.
            unsafe {
                pack::pack_panels(
                    chunk.as_mut_ptr() as *mut f32,
                    self.b.transpose(),
                    j0 + q0 * nr,
                    cols,
                    p0,
                    kcb,
                    nr,
                )
            };
        };
        if self.tasks > 1 && panels_n >= self.tasks {
            let per = div_ceil(panels_n, self.tasks);
            b_packed
                .par_chunks_mut(per * panel_len)
                .enumerate()
                .for_each(|(q, chunk)| pack_panels(q * per, chunk));
        } else {
            pack_panels(0, b_packed);
        }
    }

    /// LOOP 3: split the rows of one rectangle of register tiles of the
    /// block of `C` at columns `j0..` and inner steps `p0..` into packed-`A`
    /// blocks of at most [`mc_for`]`(kc)` rows, and multiply each by the
    /// rectangle's column panels. `reuse`: `a_buf` already holds the
    /// rectangle's rows of `A` (then they are one block). `b_base` is the
    /// packed `B` block of these `(j0, p0)` when `B` is not read in place.
    /// The packed `A` is stored for later column panels when the rectangle
    /// has some, or when `store` says later rectangles read it.
    fn split_m(
        &self,
        rect: TileRect,
        a_buf: &mut [MaybeUninit<f32>],
        (j0, p0): (usize, usize),
        b_base: SendPtr,
        reuse: bool,
        store: bool,
    ) {
        let TileRect {
            tiles: (tile0, tile1),
            panels: (panel0, panel1),
        } = rect;
        if tile0 == tile1 || panel0 == panel1 {
            return;
        }
        let row_begin = tile0 * self.mr;
        let row_end = (tile1 * self.mr).min(self.m);
        let rows = row_end - row_begin;
        let blocks = div_ceil(rows, mc_for(self.kc));
        debug_assert!(!reuse || blocks == 1);
        let mc_max = round_up(div_ceil(rows, blocks), self.mr);
        let mut i0 = row_begin;
        while i0 < row_end {
            let mc = mc_max.min(row_end - i0);
            let block = RowBlock {
                rows: (i0, mc),
                cols: (j0, panel0, panel1),
                p0,
                reuse,
                store,
            };
            self.multiply_row_block(block, a_buf, b_base);
            i0 += mc;
        }
    }

    /// Packs one row block's `A` (or leaves the packing to its first column
    /// panel, or to an earlier block when `reuse`) and runs LOOPS 2 and 1
    /// (`microkernel::compute_block`) over its column panels.
    #[inline(always)]
    fn multiply_row_block(&self, block: RowBlock, a_buf: &mut [MaybeUninit<f32>], b_base: SendPtr) {
        let (mr, nr) = (self.mr, self.nr);
        let RowBlock {
            rows: (i0, mc),
            cols: (j0, panel0, panel1),
            p0,
            reuse,
            store,
        } = block;
        let kcb = self.kc.min(self.k - p0);
        let (first, last) = (p0 == 0, p0 + kcb == self.k);
        let col_begin = panel0 * nr;
        let col_end = (panel1 * nr).min(NC.min(self.n - j0));
        let a = self.a_block(a_buf, (i0, mc), (p0, kcb), reuse);
        let b = self.b_block(b_base, (j0 + col_begin, panel0), (p0, kcb));
        let job = BlockJob {
            a: a.first,
            a_panel: a.panel,
            a_step: a.step,
            a_edge: a.edge,
            a_src: a.src,
            a_src_cs: self.a.cs,
            a_src_rows: a.rows,
            a_src_rs: self.a.rs,
            a_store: store || col_end - col_begin > nr,
            b: b.first,
            b_panel: b.panel,
            b_step: b.step,
            b_col: b.col,
            kc: kcb,
            mr,
            nr,
            i0,
            mc,
            j0: j0 + col_begin,
            nc: col_end - col_begin,
            c: self.c,
            alpha: self.alpha,
            beta: if first { self.beta } else { 1.0 },
            read_c: !first || self.beta != 0.0,
            epilogue: if last {
                self.epilogue
            } else {
                RawEpilogue::None
            },
            avx512: self.isa == Isa::Avx512,
        };
        // The ISA was checked available, so dispatch cannot fail.
        let _ = dispatch(self.isa, BlockOp { job: &job });
    }

    /// The packed `A` of rows `i0 .. i0 + mc`, inner steps `p0 .. p0 + kcb`:
    /// packed into `a_buf` now, or (column-major `A`) marked to be packed by
    /// the first column panel, or (`reuse`) already there.
    #[inline(always)]
    fn a_block(
        &self,
        a_buf: &mut [MaybeUninit<f32>],
        (i0, mc): (usize, usize),
        (p0, kcb): (usize, usize),
        reuse: bool,
    ) -> PanelsA {
        let mr = self.mr;
        let base = a_buf.as_ptr() as *const f32;
        if kcb == 0 {
            return PanelsA {
                first: std::ptr::NonNull::dangling().as_ptr(),
                panel: 0,
                step: 0,
                edge: base,
                src: std::ptr::null(),
                rows: false,
            };
        }
        let mut src = std::ptr::null();
        let mut rows = false;
        // The rows packed beforehand: all, or none, or (row-major A) the
        // partial last row panel only.
        let mut pack_from = 0;
        if !reuse && self.a.rs == 1 {
            // Column-major A: the first column panel packs it while
            // multiplying (see `BlockJob::a_src`), no pass of its own.
            // SAFETY: (i0, p0) is inside A (i0 < m, p0 < k).
            src = unsafe { self.a.at(i0, p0) };
            pack_from = mc;
        } else if !reuse && self.a.cs == 1 && self.isa == Isa::Avx512 {
            // Row-major A with AVX-512: the first column panel transposes
            // its full row panels while multiplying
            // (`BlockJob::a_src_rows`).
            // SAFETY: (i0, p0) is inside A.
            src = unsafe { self.a.at(i0, p0) };
            rows = true;
            pack_from = mc / mr * mr;
        }
        if !reuse && pack_from < mc {
            // SAFETY: A[i0 + pack_from .. i0+mc, p0 .. p0+kcb] lies inside
            // A, and `a_buf` holds a_len >= ceil(mc / mr) mr kcb floats (mc is
            // a multiple of mr, at most mc_for(kc) and the thread's rows; kcb
            // <= kc_for(k); see `a_len_for`), the panels from row `pack_from`
            // (a multiple of mr) at pack_from kcb.
            let op = unsafe {
                pack::PackA::new(
                    (a_buf.as_mut_ptr() as *mut f32).add(pack_from * kcb),
                    self.a,
                    (i0 + pack_from, mc - pack_from),
                    (p0, kcb),
                    mr,
                )
            };
            // The ISA was checked available, so dispatch cannot fail.
            let _ = dispatch(self.isa, op);
        }
        PanelsA {
            first: base,
            panel: (mr * kcb) as isize,
            step: mr as isize,
            // SAFETY: the edge panel (if any) follows the mc / mr full panels
            // inside `a_buf` (see above).
            edge: unsafe { base.add(mc / mr * mr * kcb) },
            src,
            rows,
        }
    }

    /// Where the column panels of `B` from column `j` (panel `panel0` of the
    /// column block), inner steps `p0 .. p0 + kcb`, are read: `B` itself
    /// when read in place, else the packed block at `b_base`.
    #[inline(always)]
    fn b_block(
        &self,
        b_base: SendPtr,
        (j, panel0): (usize, usize),
        (p0, kcb): (usize, usize),
    ) -> PanelsB {
        let nr = self.nr;
        if kcb == 0 {
            PanelsB {
                first: std::ptr::NonNull::dangling().as_ptr(),
                panel: 0,
                step: 0,
                col: 0,
            }
        } else if self.b_direct {
            PanelsB {
                // SAFETY: (p0, j) is inside B.
                first: unsafe { self.b.at(p0, j) },
                panel: nr as isize * self.b.cs,
                step: self.b.rs,
                col: self.b.cs,
            }
        } else {
            let panel_len = nr * kcb;
            PanelsB {
                // SAFETY: panel `panel0` of the packed B block exists.
                first: unsafe { b_base.get().add(panel0 * panel_len) },
                panel: panel_len as isize,
                step: nr as isize,
                col: 1,
            }
        }
    }
}

/// One row block of [`Driver::split_m`]: rows `(i0, mc)` of `C`, the column
/// panels `panel0 .. panel1` of the column block at `j0`, the depth block
/// at `p0`, and whether its `A` is already packed (`reuse`) or is to be kept
/// for later rectangles (`store`).
#[derive(Clone, Copy)]
struct RowBlock {
    rows: (usize, usize),
    cols: (usize, usize, usize),
    p0: usize,
    reuse: bool,
    store: bool,
}

/// The packed `A` of a row block as a [`BlockJob`] reads it (see the
/// fields `a`, `a_panel`, `a_step`, `a_edge`, `a_src` there).
struct PanelsA {
    first: *const f32,
    panel: isize,
    step: isize,
    edge: *const f32,
    src: *const f32,
    rows: bool,
}

/// The `B` of a row block's column panels as a [`BlockJob`] reads it (see
/// the fields `b`, `b_panel`, `b_step`, `b_col` there).
struct PanelsB {
    first: *const f32,
    panel: isize,
    step: isize,
    col: isize,
}

/// Runs one [`BlockJob`] with the tile shape of the SIMD width.
struct BlockOp<'a> {
    job: &'a BlockJob,
}

impl pulp::WithSimd for BlockOp<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, s: S) {
        // SAFETY: the driver built `job` from packed buffers of the stated sizes
        // and a block of C owned by this thread, with mr/nr from
        // `register_tile`, which matches the arms below.
        unsafe {
            match S::F32_LANES {
                16 => microkernel::compute_block::<S, 3, 8>(s, self.job),
                8 => microkernel::compute_block::<S, 2, 6>(s, self.job),
                _ => microkernel::compute_block::<S, 4, 4>(s, self.job),
            }
        }
    }
}

/// Runs `iterations` rounds of independent register-resident vector FMA
/// chains at instruction set `isa` (the machine's FMA peak, as a yardstick for
/// GEMM). Returns a checksum (so the loop cannot be optimised away) and the
/// number of floating-point operations performed (2 per lane per FMA).
///
/// The chains fill the register file and no more: 24 with AVX-512's 32
/// vector registers, 12 with AVX2's 16 (two more registers hold the loop's
/// constants). More chains than registers would spill accumulators to the
/// stack and measure loads and stores instead of FMAs; 12 still cover the
/// FMA latency times the FMA ports of current x86 cores (4 x 2).
#[cfg(feature = "bench")]
pub fn fma_peak_loop(isa: Isa, iterations: usize) -> Result<(f32, f64), Error> {
    struct Op {
        iterations: usize,
    }
    #[inline(always)]
    fn chains<S: pulp::Simd, const CHAINS: usize>(s: S, iterations: usize) -> (f32, f64) {
        let mut acc = [s.splat_f32s(1.0); CHAINS];
        let x = s.splat_f32s(0.999_999);
        let y = s.splat_f32s(1e-7);
        for _ in 0..iterations {
            for a in acc.iter_mut() {
                *a = s.mul_add_e_f32s(*a, x, y);
            }
        }
        let mut total = s.splat_f32s(0.0);
        for a in acc {
            total = s.add_f32s(total, a);
        }
        let flops = 2.0 * (CHAINS * S::F32_LANES) as f64 * iterations as f64;
        (s.reduce_sum_f32s(total), flops)
    }
    impl pulp::WithSimd for Op {
        type Output = (f32, f64);
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, s: S) -> (f32, f64) {
            match S::F32_LANES {
                16 => chains::<S, 24>(s, self.iterations),
                _ => chains::<S, 12>(s, self.iterations),
            }
        }
    }
    dispatch(isa, Op { iterations }).ok_or(Error::IsaUnavailable(isa))
}

/// Checks that `C (m x n) = A B` is a well-formed product for `op`.
pub(crate) fn check_product_shapes(
    op: &'static str,
    (m, n): (usize, usize),
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
) -> Result<(), Error> {
    let k = a.ncols();
    check_shape(
        a.nrows() == m && b.nrows() == k && b.ncols() == n,
        op,
        || {
            format!(
                "C is {m}x{n}, A is {}x{}, B is {}x{}",
                a.nrows(),
                a.ncols(),
                b.nrows(),
                b.ncols()
            )
        },
    )
}

/// Baseline for benchmarks: `C = alpha A B + beta C` by the `matrixmultiply`
/// crate's `sgemm` (its own thread pool; thread count from the environment
/// variable `MATMUL_NUM_THREADS`, read once per process, default: physical
/// cores). Same shape checks as [`gemm`].
#[cfg(feature = "bench")]
pub fn matrixmultiply_gemm(
    c: MatMut<'_, f32>,
    beta: f32,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    alpha: f32,
) -> Result<(), Error> {
    let (m, n, k) = (c.nrows(), c.ncols(), a.ncols());
    check_product_shapes("matrixmultiply_gemm", (m, n), a, b)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    // SAFETY: the pointers and strides come from faer views of exactly these
    // shapes, so every (i, j) the routine touches is inside its matrix; C is a
    // unique borrow and cannot alias A or B.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            a.row_stride(),
            a.col_stride(),
            b.as_ptr(),
            b.row_stride(),
            b.col_stride(),
            beta,
            c.as_ptr_mut(),
            c.row_stride(),
            c.col_stride(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{
        a_len_for, claims_len, div_ceil, kc_for, linear_rects, mc_for, row_block_cap, Claims,
        TileCost, TileRect, UnitGrid, ALIGN,
    };
    use std::mem::MaybeUninit;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Every register tile lands in exactly one part; each part's cost is
    /// within one whole tile (plus the integer division's rounding) of an
    /// equal share, it is at most three rectangles over at most
    /// ceil(tiles_m / parts) + 2 row tiles (what `static_a_len` sizes the
    /// packing buffers for), and neighbouring parts share at most one row
    /// tile.
    #[test]
    fn linear_rects_partition_the_tiles_evenly() {
        for (mr, lanes) in [(48, 16), (16, 8), (4, 1)] {
            for m in 1..=9 * mr {
                let tiles_m = div_ceil(m, mr);
                let cost = TileCost::new(m, mr, lanes);
                let weight = |i: usize| {
                    if i + 1 == tiles_m {
                        cost.last
                    } else {
                        cost.full
                    }
                };
                for panels_n in 1..=7 {
                    for parts in 1..=5 {
                        check(tiles_m, panels_n, cost, parts, &weight);
                    }
                }
            }
        }
    }

    fn check(
        tiles_m: usize,
        panels_n: usize,
        cost: TileCost,
        parts: usize,
        weight: &dyn Fn(usize) -> usize,
    ) {
        let case = format!("{tiles_m}x{panels_n} tiles, {cost:?}, {parts} parts");
        let mut owner = vec![usize::MAX; tiles_m * panels_n];
        let mut costs = Vec::new();
        let mut rows = Vec::new();
        for part in 0..parts {
            let rects: Vec<TileRect> = linear_rects(tiles_m, panels_n, cost, parts, part).collect();
            assert!(rects.len() <= 3, "{case}: {rects:?}");
            let mut part_cost = 0;
            let mut part_rows = Vec::new();
            for r in &rects {
                assert!(
                    r.tiles.0 < r.tiles.1 && r.tiles.1 <= tiles_m,
                    "{case}: {r:?}"
                );
                assert!(
                    r.panels.0 < r.panels.1 && r.panels.1 <= panels_n,
                    "{case}: {r:?}"
                );
                for i in r.tiles.0..r.tiles.1 {
                    part_rows.push(i);
                    for j in r.panels.0..r.panels.1 {
                        let u = i * panels_n + j;
                        assert_eq!(owner[u], usize::MAX, "{case}: tile ({i}, {j}) twice");
                        owner[u] = part;
                        part_cost += weight(i);
                    }
                }
            }
            let bound = tiles_m.min(div_ceil(tiles_m, parts) + 2);
            assert!(part_rows.len() <= bound, "{case}: {part_rows:?}");
            costs.push(part_cost);
            rows.push(part_rows);
        }
        assert!(
            owner.iter().all(|&o| o < parts),
            "{case}: a tile has no part"
        );
        let total: usize = costs.iter().sum();
        for &c in &costs {
            let off = (c * parts).abs_diff(total);
            assert!(off <= (cost.full + 1) * parts, "{case}: {costs:?}");
        }
        for w in rows.windows(2) {
            let shared = w[0].iter().filter(|i| w[1].contains(i)).count();
            assert!(shared <= 1, "{case}: {rows:?}");
        }
    }

    /// Every register tile lies in exactly one unit; row blocks are balanced
    /// and no taller than the packed-`A` buffer holds; column groups are
    /// balanced; the row-block cap never shrinks as the shape grows (scratch sized for the largest
    /// shape serves smaller ones).
    #[test]
    fn unit_grids_cover_every_tile_once_within_the_buffers() {
        for (mr, nr) in [(48, 8), (16, 6), (4, 4)] {
            for tasks in 1..=4 {
                for tiles_m in 1..=30 {
                    for panels_n in [1, 2, 3, 5, 8, 17, 32, 64] {
                        for k in [1, 30, 250, 784, 1000] {
                            check_grid(tasks, tiles_m, panels_n, kc_for(k), mr, nr);
                        }
                    }
                }
            }
        }
    }

    fn check_grid(tasks: usize, tiles_m: usize, panels_n: usize, kc: usize, mr: usize, nr: usize) {
        let g = UnitGrid::new(tasks, tiles_m, panels_n, kc, mr, nr);
        let case =
            format!("{tasks} tasks, {tiles_m}x{panels_n} tiles of {mr}x{nr}, kc {kc}: {g:?}");
        let cap = row_block_cap(tasks, tiles_m, kc, mr);
        // The buffers and unit sizes rely on a row block never exceeding the rows.
        assert!(cap <= tiles_m, "{case}: cap {cap}");
        let mut seen = vec![0u8; tiles_m * panels_n];
        let mut heights = Vec::new();
        let mut widths = Vec::new();
        for unit in 0..g.units() {
            let (rb, grp) = (unit / g.groups, unit % g.groups);
            let (t0, t1) = g.row_tiles(rb);
            let (q0, q1) = g.panels(grp);
            assert!(
                t0 < t1 && t1 <= tiles_m && q0 < q1 && q1 <= panels_n,
                "{case}"
            );
            assert!(t1 - t0 <= cap, "{case}: row block {rb} taller than {cap}");
            assert!(
                (t1 - t0) * mr * kc <= a_len_for(tasks, tiles_m, kc, mr),
                "{case}: row block {rb} overflows the A buffer"
            );
            heights.push(t1 - t0);
            widths.push(q1 - q0);
            for i in t0..t1 {
                for j in q0..q1 {
                    seen[i * panels_n + j] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&c| c == 1), "{case}: {seen:?}");
        let spread = |v: &[usize]| v.iter().max().unwrap() - v.iter().min().unwrap();
        assert!(spread(&heights) <= 1 && spread(&widths) <= 1, "{case}");
        assert!(cap * mr <= mc_for(kc).max(mr), "{case}");
        if tiles_m > 1 {
            assert!(row_block_cap(tasks, tiles_m - 1, kc, mr) <= cap, "{case}");
        }
    }

    /// Claims hand out every unit exactly once, whether the threads start
    /// together or one after another has finished (then the first takes
    /// all), and `finish` returns only when all units are done.
    #[test]
    fn claims_hand_out_every_unit_once() {
        for tasks in 2..=4 {
            for units in [0usize, 1, 2, 3, 7, 64, 1000] {
                for staggered in [false, true] {
                    let mut scratch = vec![MaybeUninit::<f32>::uninit(); claims_len(tasks) + ALIGN];
                    let offset = scratch.as_ptr().align_offset(ALIGN);
                    let claims = Claims::new(&mut scratch[offset..], tasks, units);
                    let hits: Vec<AtomicUsize> = (0..units).map(|_| AtomicUsize::new(0)).collect();
                    let done = AtomicUsize::new(0);
                    let slot = |t: usize| {
                        let mut count = 0;
                        while let Some(u) = claims.take_own(t).or_else(|| claims.steal(t)) {
                            hits[u].fetch_add(1, Ordering::Relaxed);
                            count += 1;
                        }
                        done.fetch_add(count, Ordering::Relaxed);
                        claims.finish(count);
                        // Everything is done once any thread returns.
                        assert_eq!(done.load(Ordering::Relaxed), units);
                    };
                    if staggered {
                        (0..tasks).for_each(slot);
                    } else {
                        std::thread::scope(|s| {
                            for t in 0..tasks {
                                let slot = &slot;
                                s.spawn(move || slot(t));
                            }
                        });
                    }
                    let case = format!("{tasks} tasks, {units} units, staggered {staggered}");
                    assert!(
                        hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                        "{case}"
                    );
                }
            }
        }
    }
}
