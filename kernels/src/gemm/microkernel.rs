//! The register-blocked microkernel and the fused write-back of a `C` tile,
//! generic over pulp's [`Simd`]: one tile shape per vector width.
//!
//! A tile is `MV` vectors tall (`MR = MV * lanes` rows) and `NR` columns wide;
//! its `MV * NR` accumulators stay in registers for the whole `kc` loop (AVX-512:
//! 3 x 8 = 24 of the 32 zmm registers; AVX2: 2 x 6 = 12 of the 16 ymm). Taller
//! than wide because a broadcast of a `B` element costs more than a vector load
//! of `A`: 48 x 8 needs 8 broadcasts per 24 FMAs where 32 x 12 needs 12
//! (measured: 32 x 12 reached ~190 GFLOP/s at 1000x784x256 on one core, 48 x 8
//! and 96 x 4 ~210-225); not taller, because the `A` panel is re-read from L2
//! for every `NR` columns (96 x 4 needs 32 bytes/cycle of L2 bandwidth for it).
//! The last, partial row panel of a block runs a variant with only as many
//! vectors as it has rows. The
//! epilogue (alpha, beta C, bias, activation or activation derivative) is applied
//! to the accumulators before the single store of the tile.

use crate::raw::{RawMat, RawMatMut};
use crate::vmath;
use crate::Activation;
use pulp::Simd;

/// The epilogue in raw form.
#[derive(Clone, Copy)]
pub(crate) enum RawEpilogue {
    /// Store `alpha acc + beta C`.
    None,
    /// Add `bias[i]` (if `bias` is non-null) then apply `activation`.
    BiasActivation {
        bias: *const f32,
        activation: Activation,
    },
    /// Multiply by `act'(output[i, j])`.
    ActivationDerivative {
        activation: Activation,
        output: RawMat,
    },
}

// SAFETY: the bias pointer and output view are read-only borrows of the GEMM
// call's arguments, which outlive the worker threads.
unsafe impl Send for RawEpilogue {}
// SAFETY: as above.
unsafe impl Sync for RawEpilogue {}

/// One thread's share of one `(jc, pc, ic)` step: a packed `A` block times the
/// packed `B` panels of the thread's columns, written into `C`.
#[derive(Clone, Copy)]
pub(crate) struct BlockJob {
    /// First full row panel of the packed `A` (written by the first column
    /// panel when `a_src` is non-null, else packed beforehand); panel `q`
    /// starts at `a + q a_panel`, and step `p` of a panel at `+ p a_step`.
    /// Only full panels (`mr` rows) are read from here.
    pub a: *const f32,
    pub a_panel: isize,
    pub a_step: isize,
    /// The partial last row panel (if `mc % mr != 0`), packed, step `mr`.
    pub a_edge: *const f32,
    /// Non-null when the block's `A` is packed by the first column panel
    /// rather than beforehand: `A[i0, p0]` itself, unit row stride, column
    /// stride `a_src_cs`. The first column panel reads `A` there and writes
    /// the packed panels at `a` (step `mr`) and `a_edge`, which the later
    /// column panels read.
    pub a_src: *const f32,
    pub a_src_cs: isize,
    /// `A` at `a_src` is row-major instead (unit column stride, row stride
    /// `a_src_rs`; only with AVX-512, see [`microkernel_packing_rows`]): the
    /// first column panel transposes its full row panels on the way, and
    /// the partial one (`a_edge`) is packed beforehand.
    pub a_src_rows: bool,
    pub a_src_rs: isize,
    /// Whether the first column panel, when it reads `a_src`, stores the
    /// packed copy (false when no later panel reads it).
    pub a_store: bool,
    /// First column panel of `B`: element `(p, j)` of panel `q` is at
    /// `b + q b_panel + p b_step + j b_col` (packed: `b_step = nr`, `b_col = 1`;
    /// in place: `b_step = 1`, `b_col` = column stride).
    pub b: *const f32,
    pub b_panel: isize,
    pub b_step: isize,
    pub b_col: isize,
    pub kc: usize,
    pub mr: usize,
    pub nr: usize,
    /// First row (in `C`) and number of rows of the block.
    pub i0: usize,
    pub mc: usize,
    /// First column (in `C`) and number of columns of the block.
    pub j0: usize,
    pub nc: usize,
    pub c: RawMatMut,
    pub alpha: f32,
    /// Multiplies the old `C`; only used when `read_c`.
    pub beta: f32,
    pub read_c: bool,
    pub epilogue: RawEpilogue,
    /// The call runs at [`Isa::Avx512`](crate::Isa::Avx512), which the
    /// driver checked available: the tiles may use AVX-512 instructions
    /// directly (the register transposes of [`microkernel_packing_rows`],
    /// `prefetchw` in [`prefetch_tile`]). Decided once per call, not per
    /// tile, and not from `S`'s lane count (pulp's `Scalar512b` has 16
    /// lanes too).
    pub avx512: bool,
}

/// One step of the microkernels: `acc[j] += av * b[col_off[j]]` for every
/// column `j` of the tile (one broadcast of `B` per column, `MV` FMAs).
///
/// # Safety
/// `b + col_off[j]` must be readable for every `j < NR`.
#[inline(always)]
unsafe fn rank_one_step<S: Simd, const MV: usize, const NR: usize>(
    s: S,
    acc: &mut [[S::f32s; MV]; NR],
    av: &[S::f32s; MV],
    b: *const f32,
    col_off: &[isize; NR],
) {
    for (acc_j, &off) in acc.iter_mut().zip(col_off) {
        // SAFETY: readable (caller contract).
        let bj = s.splat_f32s(unsafe { *b.offset(off) });
        for (x, &y) in acc_j.iter_mut().zip(av) {
            *x = s.mul_add_e_f32s(y, bj, *x);
        }
    }
}

/// `acc = A_panel * B_panel` over `kc` steps: step `p` reads the `MV` vectors
/// at `a + p a_step` and broadcasts `b + p b_step + j b_col` for `j < cols`.
///
/// # Safety
/// Those reads must be valid for every `p < kc`; `1 <= cols <= NR`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn microkernel<S: Simd, const MV: usize, const NR: usize>(
    s: S,
    kc: usize,
    a: *const f32,
    a_step: isize,
    b: *const f32,
    b_step: isize,
    b_col: isize,
    cols: usize,
) -> [[S::f32s; MV]; NR] {
    let lanes = S::F32_LANES;
    let mut acc = [[s.splat_f32s(0.0); MV]; NR];
    let mut a = a;
    let mut b = b;
    // Columns past the last valid one re-read the last valid column: their
    // results are never stored, and no address outside B is formed.
    let col_off: [isize; NR] = core::array::from_fn(|j| j.min(cols - 1) as isize * b_col);
    for _ in 0..kc {
        // SAFETY: step p < kc of both panels is readable (caller contract).
        unsafe {
            let av: [S::f32s; MV] = core::array::from_fn(
                #[inline(always)]
                |v| (a.add(v * lanes) as *const S::f32s).read_unaligned(),
            );
            rank_one_step(s, &mut acc, &av, b, &col_off);
            a = a.offset(a_step);
            b = b.offset(b_step);
        }
    }
    acc
}

/// [`microkernel`] for the first column panel of a block whose `A` is not yet
/// packed: step `p` reads the `MV` vectors of `A` itself at `src + p src_cs`
/// (the last one masked to `rows - (MV - 1) lanes` rows unless `FULL`), stores
/// them at `dst + p dst_step` when `STORE` (the packed panel the other column
/// panels read), and multiplies them as [`microkernel`] does. Packing costs
/// no pass of its own: the vectors are loaded for the product anyway.
///
/// # Safety
/// The `rows` floats at `src + p src_cs` must be readable and (when `STORE`)
/// the `MV` vectors at `dst + p dst_step` writable for every `p < kc`;
/// `(MV - 1) lanes < rows <= MV lanes` (`rows == MV lanes` when `FULL`); the
/// `B` reads as for [`microkernel`]; `1 <= cols <= NR`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn microkernel_packing<
    S: Simd,
    const MV: usize,
    const NR: usize,
    const FULL: bool,
    const STORE: bool,
>(
    s: S,
    kc: usize,
    (src, src_cs, rows): (*const f32, isize, usize),
    (dst, dst_step): (*mut f32, isize),
    b: *const f32,
    b_step: isize,
    b_col: isize,
    cols: usize,
) -> [[S::f32s; MV]; NR] {
    let lanes = S::F32_LANES;
    debug_assert!(rows > (MV - 1) * lanes && rows <= MV * lanes && (!FULL || rows == MV * lanes));
    let tail = s.mask_between_m32s(0, (rows - (MV - 1) * lanes) as u32);
    let mut acc = [[s.splat_f32s(0.0); MV]; NR];
    let (mut src, mut dst, mut b) = (src, dst, b);
    let col_off: [isize; NR] = core::array::from_fn(|j| j.min(cols - 1) as isize * b_col);
    for _ in 0..kc {
        // SAFETY: step p < kc of the source, the packed panel and B is
        // accessible (caller contract); the masked load touches only the
        // `rows` valid rows.
        unsafe {
            let av: [S::f32s; MV] = core::array::from_fn(
                #[inline(always)]
                |v| {
                    let ptr = src.add(v * lanes);
                    if FULL || v + 1 < MV {
                        (ptr as *const S::f32s).read_unaligned()
                    } else {
                        s.mask_load_ptr_f32s(tail, ptr)
                    }
                },
            );
            for (v, &x) in av.iter().enumerate() {
                if STORE {
                    (dst.add(v * lanes) as *mut S::f32s).write_unaligned(x);
                }
                #[cfg(target_arch = "x86_64")]
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                    src.wrapping_offset(PF_STEPS * src_cs + (v * lanes) as isize) as *const i8,
                );
            }
            rank_one_step(s, &mut acc, &av, b, &col_off);
            // Wrapping: after the last step the pointers may lie past the
            // end of A (a whole column stride) and are not used again.
            src = src.wrapping_offset(src_cs);
            dst = dst.wrapping_offset(dst_step);
            b = b.wrapping_offset(b_step);
        }
    }
    acc
}

/// How many `kc` steps ahead [`microkernel_packing`] prefetches `A` (8, 16
/// and 32 measured the same on two threads).
const PF_STEPS: isize = 8;

/// [`microkernel_packing`] for a row-major `A` (unit column stride, row
/// stride `src_rs`; a transposed view such as the backward pass's `W^T`)
/// and a full tile: step `p` of the panel is a column of `A`, `MR` floats a
/// row stride apart, so the panel is transposed on the way, four steps at
/// a time ([`packing_rows_avx512`]). Only AVX-512 tiles (`MV = 3` vectors
/// of 16) are transposed in registers; the driver packs a row-major `A`
/// beforehand at other instruction sets, and this function's strided
/// fallback for them is not reached by it.
///
/// # Safety
/// Rows `0 .. MV lanes` of the source, columns `0 .. kc`, must be
/// readable (row `r`, step `p` at `src + r src_rs + p`), and (when `STORE`)
/// the packed panel at `dst + p dst_step` writable for every `p < kc`; the
/// `B` reads as for [`microkernel`]; `1 <= cols <= NR`; `avx512` only
/// where the CPU has AVX-512 ([`BlockJob::avx512`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn microkernel_packing_rows<S: Simd, const MV: usize, const NR: usize, const STORE: bool>(
    s: S,
    kc: usize,
    (src, src_rs): (*const f32, isize),
    (dst, dst_step): (*mut f32, isize),
    b: *const f32,
    b_step: isize,
    b_col: isize,
    cols: usize,
    avx512: bool,
) -> [[S::f32s; MV]; NR] {
    let lanes = S::F32_LANES;
    #[cfg(target_arch = "x86_64")]
    if lanes == 16 && MV == 3 && dst_step == 48 && avx512 {
        use core::mem::size_of;
        type Acc<const NR: usize> = [[core::arch::x86_64::__m512; 3]; NR];
        debug_assert_eq!(size_of::<Acc<NR>>(), size_of::<[[S::f32s; MV]; NR]>());
        // SAFETY: the CPU has AVX-512F and FMA (`avx512`, the caller's
        // contract: 16 lanes alone would not say so); the
        // reads and writes are the caller's contract with MR = 48; `S::f32s`
        // with 16 lanes is 16 f32 in 64 bytes like `__m512`, and
        // `transmute_copy` reads it unaligned, so the accumulators carry over.
        unsafe {
            let acc =
                packing_rows_avx512::<NR, STORE>(kc, (src, src_rs), dst, b, b_step, b_col, cols);
            return core::mem::transmute_copy::<Acc<NR>, [[S::f32s; MV]; NR]>(&acc);
        }
    }
    // Other tiles: the strided loads of `load` (not reached by the driver).
    let mut acc = [[s.splat_f32s(0.0); MV]; NR];
    let col_off: [isize; NR] = core::array::from_fn(|j| j.min(cols - 1) as isize * b_col);
    for p in 0..kc {
        // SAFETY: step p < kc of the source, the packed panel and B is
        // accessible (caller contract).
        unsafe {
            let av: [S::f32s; MV] = core::array::from_fn(|v| {
                load(
                    s,
                    src.offset((v * lanes) as isize * src_rs).add(p),
                    src_rs,
                    lanes,
                )
            });
            if STORE {
                for (v, &x) in av.iter().enumerate() {
                    (dst.offset(p as isize * dst_step).add(v * lanes) as *mut S::f32s)
                        .write_unaligned(x);
                }
            }
            rank_one_step(s, &mut acc, &av, b.offset(p as isize * b_step), &col_off);
        }
    }
    acc
}

/// [`microkernel_packing_rows`] for a 48-row tile with AVX-512. Every four
/// steps, each 16-row group of the panel is read as 16 runs of four
/// consecutive floats (one per row), gathered four rows to a register (one
/// 128-bit lane each: register `k` holds rows `k`, `4 + k`, `8 + k`, `12 +
/// k`), and transposed within the lanes (eight unpacks), which leaves step
/// `p + t` of rows `0 .. 16` in register `t`; the four steps are stored to
/// the packed panel (or a buffer on the stack when nothing reads the panel
/// again) and multiplied from there as [`microkernel`] multiplies a packed
/// panel. The transposition takes eight registers besides the 24
/// accumulators. The packing pass this replaces (16 x 16 transposes of the
/// whole block before the product) was not overlapped with any
/// multiplication: it cost `W^T E` at the `deep` shapes 4-15% of its time
/// at minibatch 256 (see `Driver::new`).
///
/// # Safety
/// As [`microkernel_packing_rows`] with 48 rows and `dst_step = 48`; the CPU
/// must support AVX-512F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn packing_rows_avx512<const NR: usize, const STORE: bool>(
    kc: usize,
    (src, rs): (*const f32, isize),
    dst: *mut f32,
    b: *const f32,
    b_step: isize,
    b_col: isize,
    cols: usize,
) -> [[core::arch::x86_64::__m512; 3]; NR] {
    use core::arch::x86_64::*;
    const MR: usize = 48;
    #[repr(align(64))]
    struct Steps([f32; 4 * MR]);
    let mut local = Steps([0.0; 4 * MR]);
    let mut acc = [[_mm512_setzero_ps(); 3]; NR];
    let col_off: [isize; NR] = core::array::from_fn(|j| j.min(cols - 1) as isize * b_col);
    let mut p = 0;
    while p < kc {
        let w = 4.min(kc - p);
        let buf = if STORE {
            // SAFETY: steps p .. p + w of the packed panel (caller contract).
            unsafe { dst.add(p * MR) }
        } else {
            local.0.as_mut_ptr()
        };
        if w == 4 {
            for g in 0..3 {
                // SAFETY: rows 16 g .. 16 g + 16, steps p .. p + 4 < kc of
                // the source are readable, and steps p .. p + 4 of `buf`
                // writable (caller contract, or `local`'s four steps).
                unsafe {
                    let base = src.offset((16 * g) as isize * rs).add(p);
                    let row = |r: usize| _mm_loadu_ps(base.offset(r as isize * rs));
                    let z: [__m512; 4] = core::array::from_fn(|k| {
                        let z = _mm512_castps128_ps512(row(k));
                        let z = _mm512_insertf32x4::<1>(z, row(4 + k));
                        let z = _mm512_insertf32x4::<2>(z, row(8 + k));
                        _mm512_insertf32x4::<3>(z, row(12 + k))
                    });
                    // Lane l of z[k]: row 4 l + k, steps p .. p + 4.
                    let t0 = _mm512_unpacklo_ps(z[0], z[1]);
                    let t1 = _mm512_unpackhi_ps(z[0], z[1]);
                    let t2 = _mm512_unpacklo_ps(z[2], z[3]);
                    let t3 = _mm512_unpackhi_ps(z[2], z[3]);
                    let lo = |x: __m512, y: __m512| {
                        let (x, y) = (_mm512_castps_pd(x), _mm512_castps_pd(y));
                        _mm512_castpd_ps(_mm512_unpacklo_pd(x, y))
                    };
                    let hi = |x: __m512, y: __m512| {
                        let (x, y) = (_mm512_castps_pd(x), _mm512_castps_pd(y));
                        _mm512_castpd_ps(_mm512_unpackhi_pd(x, y))
                    };
                    // Lane l of steps[t]: rows 4 l .. 4 l + 4 at step p + t.
                    let steps = [lo(t0, t2), hi(t0, t2), lo(t1, t3), hi(t1, t3)];
                    for (t, &v) in steps.iter().enumerate() {
                        _mm512_storeu_ps(buf.add(t * MR + 16 * g), v);
                    }
                }
            }
        } else {
            // The last one to three steps of the panel, element by element.
            for t in 0..w {
                for r in 0..MR {
                    // SAFETY: row r < 48, step p + t < kc of the source is
                    // readable and step t of `buf` writable (as above).
                    unsafe { *buf.add(t * MR + r) = *src.offset(r as isize * rs).add(p + t) };
                }
            }
        }
        for t in 0..w {
            // SAFETY: step t of `buf` was just written; step p + t of B is
            // readable (caller contract).
            unsafe {
                let av: [__m512; 3] =
                    core::array::from_fn(|v| _mm512_loadu_ps(buf.add(t * MR + 16 * v)));
                let bp = b.offset((p + t) as isize * b_step);
                for (acc_j, &off) in acc.iter_mut().zip(&col_off) {
                    let bj = _mm512_set1_ps(*bp.offset(off));
                    for (x, &y) in acc_j.iter_mut().zip(&av) {
                        *x = _mm512_fmadd_ps(y, bj, *x);
                    }
                }
            }
        }
        p += w;
    }
    acc
}

/// Loads `count <= lanes` floats starting at `ptr` with stride `rs`, zero-filling
/// the rest of the vector.
///
/// # Safety
/// `ptr + r * rs` must be readable for `r < count`.
#[inline(always)]
unsafe fn load<S: Simd>(s: S, ptr: *const f32, rs: isize, count: usize) -> S::f32s {
    let lanes = S::F32_LANES;
    if rs == 1 {
        if count == lanes {
            // SAFETY: `lanes` contiguous floats are readable (caller contract).
            unsafe { (ptr as *const S::f32s).read_unaligned() }
        } else {
            // SAFETY: the mask covers exactly the first `count` lanes, which are
            // readable; masked-off lanes are not accessed.
            unsafe { s.mask_load_ptr_f32s(s.mask_between_m32s(0, count as u32), ptr) }
        }
    } else {
        let mut tmp = [0.0f32; 16];
        for (r, t) in tmp.iter_mut().enumerate().take(count) {
            // SAFETY: r < count, so `ptr + r * rs` is readable.
            *t = unsafe { *ptr.offset(r as isize * rs) };
        }
        // SAFETY: `tmp` holds 16 >= lanes floats.
        unsafe { (tmp.as_ptr() as *const S::f32s).read_unaligned() }
    }
}

/// Stores the first `count <= lanes` lanes of `v` at `ptr` with stride `rs`.
///
/// # Safety
/// `ptr + r * rs` must be writable for `r < count`.
#[inline(always)]
unsafe fn store<S: Simd>(s: S, ptr: *mut f32, rs: isize, count: usize, v: S::f32s) {
    let lanes = S::F32_LANES;
    if rs == 1 {
        if count == lanes {
            // SAFETY: `lanes` contiguous floats are writable.
            unsafe { (ptr as *mut S::f32s).write_unaligned(v) }
        } else {
            // SAFETY: only the first `count` lanes, which are writable, are stored.
            unsafe { s.mask_store_ptr_f32s(s.mask_between_m32s(0, count as u32), ptr, v) }
        }
    } else {
        let mut tmp = [0.0f32; 16];
        // SAFETY: `tmp` has room for 16 >= lanes floats.
        unsafe { (tmp.as_mut_ptr() as *mut S::f32s).write_unaligned(v) };
        for (r, t) in tmp.iter().enumerate().take(count) {
            // SAFETY: r < count, so `ptr + r * rs` is writable.
            unsafe { *ptr.offset(r as isize * rs) = *t };
        }
    }
}

/// Writes one tile: `C[i.., j..] = epilogue(alpha acc + beta C)` for the valid
/// `rows x cols` corner of the tile.
///
/// # Safety
/// The `rows x cols` block at `(i, j)` must lie inside `C` (and inside the
/// epilogue's operands), and belong to the calling thread.
#[inline(always)]
unsafe fn write_tile<S: Simd, const MV: usize, const NR: usize>(
    s: S,
    acc: &[[S::f32s; MV]; NR],
    job: &BlockJob,
    i: usize,
    j: usize,
    rows: usize,
    cols: usize,
) {
    let lanes = S::F32_LANES;
    let alpha = s.splat_f32s(job.alpha);
    let beta = s.splat_f32s(job.beta);
    for (jj, acc_j) in acc.iter().enumerate() {
        if jj >= cols {
            break;
        }
        for (v, &acc_v) in acc_j.iter().enumerate() {
            let r0 = v * lanes;
            if r0 >= rows {
                break;
            }
            let count = lanes.min(rows - r0);
            // SAFETY: (i + r0 .. i + r0 + count, j + jj) is inside C and owned
            // by this thread (caller contract).
            unsafe {
                let ptr = job.c.at(i + r0, j + jj);
                let mut t = s.mul_f32s(alpha, acc_v);
                if job.read_c {
                    t = s.mul_add_e_f32s(beta, load(s, ptr, job.c.rs, count), t);
                }
                match job.epilogue {
                    RawEpilogue::None => {}
                    RawEpilogue::BiasActivation { bias, activation } => {
                        if !bias.is_null() {
                            t = s.add_f32s(t, load(s, bias.add(i + r0), 1, count));
                        }
                        t = vmath::activate(s, activation, t);
                    }
                    RawEpilogue::ActivationDerivative { activation, output } => {
                        let o = load(s, output.at(i + r0, j + jj), output.rs, count);
                        t = s.mul_f32s(t, vmath::derivative_from_output(s, activation, o));
                    }
                }
                store(s, ptr, job.c.rs, count, t);
            }
        }
    }
}

/// [`write_tile`] for a whole `MR x NR` tile of a `C` with unit row stride:
/// constant trip counts, so the loops unroll and the accumulators are stored
/// straight from their registers (the general loop spilled all of them to
/// the stack first, a cost that shows at small `kc`), with the epilogue's
/// case chosen once per tile instead of once per vector.
///
/// # Safety
/// As [`write_tile`] with `rows = MV lanes`, `cols = NR`; `job.c.rs == 1`.
#[inline(always)]
unsafe fn write_full_tile<S: Simd, const MV: usize, const NR: usize>(
    s: S,
    acc: &[[S::f32s; MV]; NR],
    job: &BlockJob,
    i: usize,
    j: usize,
) {
    let lanes = S::F32_LANES;
    debug_assert!(job.c.rs == 1);
    // SAFETY: the tile lies inside C and the epilogue operands (caller
    // contract), so every pointer formed below is in bounds.
    unsafe {
        let c = job.c.at(i, j);
        match job.epilogue {
            RawEpilogue::None => store_full(
                s,
                acc,
                job,
                c,
                #[inline(always)]
                |t, _, _| t,
            ),
            RawEpilogue::BiasActivation { bias, activation } => {
                let b: [S::f32s; MV] = core::array::from_fn(
                    #[inline(always)]
                    |v| {
                        if bias.is_null() {
                            s.splat_f32s(0.0)
                        } else {
                            (bias.add(i + v * lanes) as *const S::f32s).read_unaligned()
                        }
                    },
                );
                // One loop per activation, the activation constant in each.
                macro_rules! with {
                    ($act:expr) => {
                        store_full(
                            s,
                            acc,
                            job,
                            c,
                            #[inline(always)]
                            |t, v, _| vmath::activate(s, $act, s.add_f32s(t, b[v])),
                        )
                    };
                }
                match activation {
                    Activation::Identity => with!(Activation::Identity),
                    Activation::Tanh => with!(Activation::Tanh),
                    Activation::Sigmoid => with!(Activation::Sigmoid),
                    Activation::Relu => with!(Activation::Relu),
                }
            }
            RawEpilogue::ActivationDerivative { activation, output } => {
                let o = output.at(i, j);
                store_full(
                    s,
                    acc,
                    job,
                    c,
                    #[inline(always)]
                    |t, v, jj| {
                        let out = load(
                            s,
                            o.offset(jj as isize * output.cs + (v * lanes) as isize * output.rs),
                            output.rs,
                            lanes,
                        );
                        s.mul_f32s(t, vmath::derivative_from_output(s, activation, out))
                    },
                )
            }
        }
    }
}

/// The store loop of [`write_full_tile`]: `C = f(alpha acc + beta C, v, jj)`
/// for vector `v` of column `jj`, `c` pointing at the tile's first element.
///
/// # Safety
/// As [`write_full_tile`].
#[inline(always)]
unsafe fn store_full<S: Simd, const MV: usize, const NR: usize>(
    s: S,
    acc: &[[S::f32s; MV]; NR],
    job: &BlockJob,
    c: *mut f32,
    f: impl Fn(S::f32s, usize, usize) -> S::f32s,
) {
    let lanes = S::F32_LANES;
    let alpha = s.splat_f32s(job.alpha);
    let beta = s.splat_f32s(job.beta);
    let unit_alpha = job.alpha == 1.0;
    for (jj, acc_j) in acc.iter().enumerate() {
        // SAFETY: column jj of the tile is inside C (caller contract).
        let col = unsafe { c.offset(jj as isize * job.c.cs) };
        for (v, &acc_v) in acc_j.iter().enumerate() {
            // SAFETY: rows v lanes .. (v + 1) lanes of the column are inside C.
            unsafe {
                let ptr = col.add(v * lanes) as *mut S::f32s;
                let mut t = if unit_alpha {
                    acc_v
                } else {
                    s.mul_f32s(alpha, acc_v)
                };
                if job.read_c {
                    t = s.mul_add_e_f32s(beta, ptr.read_unaligned(), t);
                }
                ptr.write_unaligned(f(t, v, jj));
            }
        }
    }
}

/// LOOP 2 of the GEMM driver (the outer three are `Driver::split_n`,
/// `split_k` and `split_m` in `gemm.rs`): split the row block's columns
/// into `NR`-column panels; runs the microkernel over every tile of `job`
/// and writes the results.
///
/// # Safety
/// `job` must describe packed buffers of the stated sizes and a block of `C`
/// (and of the epilogue operands) that lies inside those matrices and belongs to
/// the calling thread; `job.mr == MV * lanes`, `job.nr == NR`.
#[inline(always)]
pub(crate) unsafe fn compute_block<S: Simd, const MV: usize, const NR: usize>(
    s: S,
    job: &BlockJob,
) {
    debug_assert!(job.mr == MV * S::F32_LANES && job.nr == NR);
    // A packed by the first column panel is read again only by later ones
    // (of this block or of the thread's next blocks in these rows).
    let store = job.a_store;
    let mut jp = 0;
    while jp < job.nc {
        let cols = NR.min(job.nc - jp);
        let panel = Panel {
            jp,
            cols,
            // SAFETY: column panel jp / NR of the job's B.
            b: unsafe { job.b.offset((jp / NR) as isize * job.b_panel) },
            // The first column panel packs A as it goes (when asked to).
            packing: jp == 0 && !job.a_src.is_null(),
            store,
        };
        // A narrow panel (the last one, or all of a product with few
        // columns) runs a narrower tile instead of computing NR columns and
        // storing `cols`: a matrix-vector product one column, not eight.
        // SAFETY: forwarded caller contract; the narrower tiles read and
        // write only the panel's `cols` columns.
        unsafe {
            match cols {
                1 if NR > 1 => column_panel::<S, MV, 1>(s, job, panel),
                2..=4 if NR > 4 => column_panel::<S, MV, 4>(s, job, panel),
                _ => column_panel::<S, MV, NR>(s, job, panel),
            }
        }
        jp += NR;
    }
}

/// One column panel of a [`BlockJob`], as [`compute_block`] hands it to
/// [`column_panel`].
#[derive(Clone, Copy)]
struct Panel {
    /// First column (in the job) and number of columns, `1 <= cols <= NR`
    /// of the job's tile (the panel's tile may be narrower).
    jp: usize,
    cols: usize,
    /// The panel's `B` (packed panel or `B` itself).
    b: *const f32,
    /// `A` is read from `job.a_src` (packed on the way when `store`).
    packing: bool,
    store: bool,
}

/// LOOP 1: split one column panel's rows into `MR`-row tiles, and run the
/// microkernels of the tile width `NR2` (at least `panel.cols`) on each,
/// each tile in a stack frame of its own.
///
/// # Safety
/// As [`compute_block`]; `panel` describes a column panel of `job`.
#[inline(always)]
unsafe fn column_panel<S: Simd, const MV: usize, const NR2: usize>(
    s: S,
    job: &BlockJob,
    panel: Panel,
) {
    let lanes = S::F32_LANES;
    let mr = MV * lanes;
    let Panel {
        jp,
        cols,
        b,
        packing,
        store,
    } = panel;
    debug_assert!(cols >= 1 && cols <= NR2);
    let mut ip = 0;
    while ip < job.mc {
        let rows = mr.min(job.mc - ip);
        // Each tile runs in a stack frame of its own (`Simd::vectorize` at the
        // same instruction set): inlined into one function, the tile variants
        // below took a frame of 3.5 MiB in an unoptimised build, more than a
        // rayon worker's stack. Optimised, a call per tile is nothing next to
        // its `kc` steps.
        let (i, j) = (job.i0 + ip, job.j0 + jp);
        let at = TileAt {
            job,
            b,
            ip,
            tile: (i, j, rows, cols),
        };
        if rows == mr {
            match (packing, store) {
                (true, true) => s.vectorize(FullTile::<MV, NR2, true, true>(at)),
                (true, false) => s.vectorize(FullTile::<MV, NR2, true, false>(at)),
                _ => s.vectorize(FullTile::<MV, NR2, false, false>(at)),
            }
        } else {
            // Partial panel: only the vectors that hold rows.
            let src = if packing && !job.a_src_rows {
                // SAFETY: rows ip.. of the job's A itself (caller contract).
                unsafe { job.a_src.add(ip) }
            } else {
                core::ptr::null()
            };
            let at = EdgeAt { at, src };
            match rows.div_ceil(lanes) {
                1 => s.vectorize(EdgeTile::<1, NR2>(at)),
                2 => s.vectorize(EdgeTile::<2, NR2>(at)),
                3 => s.vectorize(EdgeTile::<3, NR2>(at)),
                4 => s.vectorize(EdgeTile::<4, NR2>(at)),
                5 => s.vectorize(EdgeTile::<5, NR2>(at)),
                _ => s.vectorize(EdgeTile::<MV, NR2>(at)),
            }
        }
        ip += mr;
    }
}

/// Where a tile of a column panel lies: its job, the panel's `B`, its row
/// offset `ip` in the block and `(i, j, rows, cols)` in `C`.
#[derive(Clone, Copy)]
struct TileAt<'a> {
    job: &'a BlockJob,
    b: *const f32,
    ip: usize,
    tile: (usize, usize, usize, usize),
}

/// A full tile (`MV` vectors by `NR` columns) of a column panel, `A` read
/// from its packed panel, or from `A` itself when `PACK` (and then stored
/// packed when `STORE`).
///
/// Built only by [`column_panel`], under its safety contract, which is what
/// makes `with_simd` (a safe trait method) sound.
struct FullTile<'a, const MV: usize, const NR: usize, const PACK: bool, const STORE: bool>(
    TileAt<'a>,
);

impl<const MV: usize, const NR: usize, const PACK: bool, const STORE: bool> pulp::WithSimd
    for FullTile<'_, MV, NR, PACK, STORE>
{
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let TileAt { job, b, ip, tile } = self.0;
        let (i, j, rows, cols) = tile;
        let mr = MV * S::F32_LANES;
        // SAFETY: row panel ip / mr of the job's A (full), or when packing
        // rows ip.. of the job's A itself; the tile lies inside the job's
        // block of C (`column_panel`'s contract, under which this was built).
        unsafe {
            prefetch_tile(job, i, j, rows, cols);
            let a = job.a.offset((ip / mr) as isize * job.a_panel);
            let (b_step, b_col) = (job.b_step, job.b_col);
            let acc = if PACK && job.a_src_rows {
                // (`a_src` is null unless packing, so it is offset only then.)
                let src = (job.a_src.offset(ip as isize * job.a_src_rs), job.a_src_rs);
                let dst = (a as *mut f32, job.a_step);
                microkernel_packing_rows::<S, MV, NR, STORE>(
                    s, job.kc, src, dst, b, b_step, b_col, cols, job.avx512,
                )
            } else if PACK {
                let src = (job.a_src.add(ip), job.a_src_cs, rows);
                let dst = (a as *mut f32, job.a_step);
                microkernel_packing::<S, MV, NR, true, STORE>(
                    s, job.kc, src, dst, b, b_step, b_col, cols,
                )
            } else {
                microkernel::<S, MV, NR>(s, job.kc, a, job.a_step, b, b_step, b_col, cols)
            };
            write_any_tile::<S, MV, NR>(s, &acc, job, i, j, cols);
        }
    }
}

/// A tile's place and, when packing, its first row in `A` itself (else null).
#[derive(Clone, Copy)]
struct EdgeAt<'a> {
    at: TileAt<'a>,
    src: *const f32,
}

/// The partial last row panel's tile, `MV2` vectors tall: [`edge`] in a
/// frame of its own. Built only by [`column_panel`], under its contract.
struct EdgeTile<'a, const MV2: usize, const NR: usize>(EdgeAt<'a>);

impl<const MV2: usize, const NR: usize> pulp::WithSimd for EdgeTile<'_, MV2, NR> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let EdgeAt { at, src } = self.0;
        // SAFETY: the job's partial row panel and the tile inside its block
        // of C (`column_panel`'s contract, under which this was built).
        unsafe { edge::<S, MV2, NR>(s, at.job, at.b, src, at.tile) }
    }
}

/// Writes a tile of `mr` rows and `cols` columns: [`write_full_tile`] when
/// it can, else [`write_tile`].
///
/// # Safety
/// As [`write_tile`] with `rows = MV lanes`.
#[inline(always)]
unsafe fn write_any_tile<S: Simd, const MV: usize, const NR: usize>(
    s: S,
    acc: &[[S::f32s; MV]; NR],
    job: &BlockJob,
    i: usize,
    j: usize,
    cols: usize,
) {
    // SAFETY: forwarded caller contract.
    unsafe {
        if cols == NR && job.c.rs == 1 {
            write_full_tile::<S, MV, NR>(s, acc, job, i, j);
        } else {
            write_tile::<S, MV, NR>(s, acc, job, i, j, MV * S::F32_LANES, cols);
        }
    }
}

/// Asks for the cache lines of the `C` tile at `(i, j)` before the `kc` loop
/// runs, so that the write-back (which reads `C` on every `KC` block after the
/// first, and must own the lines to store) does not wait for L3 or memory.
///
/// With AVX-512 ([`BlockJob::avx512`]) the lines are asked for with intent
/// to write (`prefetchw`), which every AVX-512
/// processor has (Intel since Broadwell, AMD always): a line of `C` that the other core wrote last (the
/// rayon worker that takes a share of `C` changes from call to call) then
/// arrives owned, instead of shared and upgraded when the store reaches it.
/// 250x30x256 on 2 threads: 74-80 -> 90-105 GFLOP/s (medians of
/// interleaved batches in one process, three runs); the other `deep` layers
/// and 1024^3 within +-2%, one thread unchanged. Other instruction sets use
/// a plain prefetch into L1.
///
/// Every line a column of the tile touches is asked for (a column of `C`
/// need not start on a line: 48 rows then span four lines, not three), and
/// with an activation-derivative epilogue the same lines of its forward
/// outputs, which the write-back reads: the input gradient `W^T E` of
/// `deep` at b = 1000 (2 threads, alternated in one process) went from
/// 0.93-0.96 to 0.96-0.98 of the same product without an epilogue.
///
/// # Safety
/// The tile must lie inside `C` (and the epilogue's operands).
#[inline(always)]
unsafe fn prefetch_tile(job: &BlockJob, i: usize, j: usize, rows: usize, cols: usize) {
    #[cfg(target_arch = "x86_64")]
    if job.c.rs == 1 {
        let for_write = job.avx512;
        for jj in 0..cols {
            // SAFETY: the column's first and last rows are inside C (caller
            // contract).
            let (first, last) = unsafe { (job.c.at(i, j + jj), job.c.at(i + rows - 1, j + jj)) };
            // SAFETY: `prefetchw` only with AVX-512 (`job.avx512`, which
            // the driver checked), and every processor with AVX-512 has it.
            unsafe { prefetch_lines(first as usize, last as usize, for_write) };
        }
    }
    // The activation derivative's forward outputs, read by the write-back
    // of the last `KC` block only, are asked for too (for reading).
    #[cfg(target_arch = "x86_64")]
    if let RawEpilogue::ActivationDerivative { output, .. } = job.epilogue {
        if output.rs == 1 {
            for jj in 0..cols {
                // SAFETY: the column's first and last rows are inside the
                // output, which has C's shape (caller contract).
                let (first, last) =
                    unsafe { (output.at(i, j + jj), output.at(i + rows - 1, j + jj)) };
                // SAFETY: a read prefetch needs no instruction-set check.
                unsafe { prefetch_lines(first as usize, last as usize, false) };
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (job, i, j, rows, cols);
}

/// Prefetches every cache line of the addresses `first ..= last`, with
/// intent to write (`prefetchw`) when `for_write`, into L1 otherwise.
///
/// # Safety
/// `for_write` only where the processor has `prefetchw` (every processor
/// with AVX-512). A prefetch never faults and has no architectural effect,
/// so the addresses need not be valid.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn prefetch_lines(first: usize, last: usize, for_write: bool) {
    let mut line = first & !63;
    while line <= last {
        let ptr = line as *const i8;
        if for_write {
            // SAFETY: `prefetchw` exists here (caller contract).
            unsafe {
                core::arch::asm!(
                    "prefetchw [{p}]",
                    p = in(reg) ptr,
                    options(nostack, preserves_flags, readonly)
                )
            };
        } else {
            // SAFETY: a prefetch never faults.
            unsafe { core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(ptr) };
        }
        line += 64;
    }
}

/// The partial row panel (packed at `job.a_edge`) with `MV2` vectors
/// (`MV2 * lanes >= rows`). When `src` is non-null it is the panel's first
/// row in `A` itself, read and packed into `job.a_edge` on the way (also in
/// a block of one column panel, where nothing reads it again: one edge
/// panel per block, and one instance of the code less).
///
/// # Safety
/// As [`compute_block`], for the column panel at `b` and the tile
/// `(i, j, rows, cols)`.
#[inline(always)]
unsafe fn edge<S: Simd, const MV2: usize, const NR: usize>(
    s: S,
    job: &BlockJob,
    b: *const f32,
    src: *const f32,
    (i, j, rows, cols): (usize, usize, usize, usize),
) {
    debug_assert!(MV2 * S::F32_LANES >= rows && MV2 * S::F32_LANES <= job.mr);
    // SAFETY: the packed edge panel has job.mr floats per step, of which the
    // first MV2 vectors are read (or written, when packing: `a_edge` then
    // points into the task's own packing buffer); `src` (if non-null) has
    // `rows` readable rows per step.
    unsafe {
        if src.is_null() {
            let acc = microkernel::<S, MV2, NR>(
                s,
                job.kc,
                job.a_edge,
                job.mr as isize,
                b,
                job.b_step,
                job.b_col,
                cols,
            );
            write_tile::<S, MV2, NR>(s, &acc, job, i, j, rows, cols);
        } else {
            let src = (src, job.a_src_cs, rows);
            let dst = (job.a_edge as *mut f32, job.mr as isize);
            let acc = microkernel_packing::<S, MV2, NR, false, true>(
                s, job.kc, src, dst, b, job.b_step, job.b_col, cols,
            );
            write_tile::<S, MV2, NR>(s, &acc, job, i, j, rows, cols);
        }
    }
}
