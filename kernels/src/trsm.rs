//! Solves with a Cholesky factor, many right-hand sides, in place.
//!
//! Both solves reduce to two triangular solves with `L` or `L^T` from the left
//! (`X L L^T = B` is `L L^T X^T = B^T`, a transposed view). Each triangular solve
//! is recursive: split `L` in halves, solve the top half, update the bottom half
//! with one product (where almost all the flops go), solve the bottom half.
//! The product is the packed register-blocked kernel of the SYRK module, except
//! in solves with `L^T` on right-hand sides stored by rows, where it is the
//! crate's GEMM reading the column-major `L21` in place (packing it from
//! columns for the packed kernel is a strided scatter of the larger operand). Leaves of at most
//! 16 rows are solved by substitution vectorised across right-hand sides
//! (a chunk of `4 x lanes` right-hand sides is copied into a small buffer so
//! that one row of the chunk is four vectors; two rows are eliminated per step
//! into separate accumulators, eight independent FMA chains).
//!
//! With `Par::Rayon(t)` and enough right-hand sides the columns of `B` are cut
//! into `t` slabs solved independently (no synchronisation at all); with few
//! right-hand sides the products inside run on `t` threads instead. A
//! column-major `B` of a left solve is solved on a transposed copy (rows
//! contiguous), made and copied back by each slab's own thread.
//!
//! Error bound (standard substitution analysis, Higham ch. 8): the computed `X`
//! of `T X = B` (`T = L` or `L^T`) satisfies `(T + dT) X = B` with
//! `|dT| <= gamma_{n+1} |T|` per column of `B` (one extra rounding for the
//! reciprocal of the diagonal), so the residual obeys
//! `|B - T X| <= gamma_{n+1} |T| |X|`. For `L L^T X = B` the two solves compose
//! to `|B - L L^T X| <= c n u |L| |L^T| |X|` to first order, c ~ 3.

use crate::error::{check_scratch, check_shape};
use crate::product::{self, Operand};
use crate::{Error, Isa, MatMut, MatRef, MemStack, Par, StackReq};
use faer::reborrow::{Reborrow, ReborrowMut};
use pulp::{Simd, WithSimd};

/// Largest triangle solved by substitution (smaller leaves move flops into the
/// packed product, which runs several times faster than substitution).
pub(crate) const LEAF: usize = 16;
/// Vectors of right-hand sides per leaf chunk (2 x 4 independent FMA chains).
const WV: usize = 4;
/// Largest number of right-hand sides in one vectorised leaf chunk (AVX-512: 4 x 16).
const W_MAX: usize = 64;

fn seq_scratch(n: usize, m: usize) -> StackReq {
    par_scratch(n, m, Par::Seq)
}

/// Scratch of the recursion with its products on `par`: the packed product
/// (solves with `L`) and the GEMM (solves with `L^T`, see [`recurse`]).
fn par_scratch(n: usize, m: usize, par: Par) -> StackReq {
    if n <= LEAF {
        return StackReq::EMPTY;
    }
    let half = crate::blocking::split(n).max(n - crate::blocking::split(n));
    StackReq::any_of(&[
        product::pack_scratch(half, m, half),
        crate::gemm::gemm_scratch(m, half, half, par),
    ])
}

fn slabs(n: usize, m: usize, par: Par) -> usize {
    let t = par.degree().max(1);
    if t > 1 && m >= 32 * t && n * n * m >= (1 << 20) {
        t
    } else {
        1
    }
}

/// Columns per slab: an equal share rounded up to 16 (a whole number of
/// vectors). Rounding up to a whole leaf chunk (64) left the Cholesky's
/// panel solve (393 right-hand sides at n = 785) split 256 / 137.
fn slab_width(m: usize, t: usize) -> usize {
    m.div_ceil(t).div_ceil(16) * 16
}

/// Scratch for [`solve_lower_left`] with an `n x n` factor and `m` right-hand sides.
pub(crate) fn triangular_scratch(n: usize, m: usize, par: Par) -> StackReq {
    let t = slabs(n, m, par);
    if t == 1 {
        par_scratch(n, m, par)
    } else {
        let per = seq_scratch(n, slab_width(m, t));
        StackReq::new_aligned::<u8>(per.unaligned_bytes_required(), 64).array(t)
    }
}

/// Scratch needed by the solves for an `n x n` factor and `m` right-hand sides.
pub fn solve_scratch(n: usize, m: usize, par: Par) -> StackReq {
    StackReq::any_of(&[
        // A right solve, or a left solve on a B that is not column-major.
        triangular_scratch(n, m, par),
        transposed_scratch(n, m, par),
    ])
}

/// Scratch of [`transposed_solve`]: per slab, its transposed copy and the
/// solves on it.
fn transposed_scratch(n: usize, m: usize, par: Par) -> StackReq {
    let t = slabs(n, m, par);
    if t == 1 {
        StackReq::new_aligned::<f32>(n * m, 64).and(triangular_scratch(n, m, par))
    } else {
        let per = transposed_slab_bytes(n, slab_width(m, t));
        StackReq::new_aligned::<u8>(per, 64).array(t)
    }
}

/// Bytes of one slab of [`transposed_solve`] (`width` columns): the copy,
/// rounded to 64 bytes, then the sequential solve's scratch.
fn transposed_slab_bytes(n: usize, width: usize) -> usize {
    (n * width * 4).div_ceil(64) * 64 + seq_scratch(n, width).unaligned_bytes_required()
}

/// Solves `L X = B` (`trans == false`) or `L^T X = B` (`trans == true`) in
/// place for lower-triangular `L` (`n x n`, lower triangle read) and `B`
/// (`n x m`); with `both`, first `L Y = B` then `L^T X = Y`.
pub(crate) fn solve_lower_left(
    isa: Isa,
    l: MatRef<'_, f32>,
    mode: Mode,
    b: MatMut<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) {
    let (n, m) = (b.nrows(), b.ncols());
    if n == 0 || m == 0 {
        return;
    }
    let t = slabs(n, m, par);
    if t == 1 {
        run_mode(isa, l, mode, b, par, stack);
        return;
    }
    let width = slab_width(m, t);
    let bytes = seq_scratch(n, width).unaligned_bytes_required();
    let (mem, _) = stack.make_aligned_uninit::<u8>(bytes * t, 64);
    slab_solve(isa, l, mode, b, width, &mut mem[..], bytes);
}

/// Solves `B` in slabs of `width` columns, the first here and the rest on
/// other threads (`rayon::join`: no allocation), each with `bytes` of `mem`.
fn slab_solve(
    isa: Isa,
    l: MatRef<'_, f32>,
    mode: Mode,
    b: MatMut<'_, f32>,
    width: usize,
    mem: &mut [std::mem::MaybeUninit<u8>],
    bytes: usize,
) {
    if b.ncols() <= width {
        run_mode(isa, l, mode, b, Par::Seq, MemStack::new(mem));
        return;
    }
    let (slab, rest) = b.split_at_col_mut(width);
    let (mine, others) = mem.split_at_mut(bytes);
    rayon::join(
        || run_mode(isa, l, mode, slab, Par::Seq, MemStack::new(mine)),
        || slab_solve(isa, l, mode, rest, width, others, bytes),
    );
}

/// Which triangular solve(s) to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `L X = B`.
    Lower,
    /// `L L^T X = B`.
    Both,
}

fn run_mode(
    isa: Isa,
    l: MatRef<'_, f32>,
    mode: Mode,
    mut b: MatMut<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) {
    match mode {
        Mode::Lower => recurse(isa, l, false, b, par, stack),
        Mode::Both => {
            recurse(isa, l, false, b.rb_mut(), par, stack);
            recurse(isa, l, true, b, par, stack);
        }
    }
}

fn recurse(
    isa: Isa,
    l: MatRef<'_, f32>,
    trans: bool,
    b: MatMut<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) {
    let n = l.nrows();
    if n <= LEAF {
        leaf(isa, l, trans, b);
        return;
    }
    let n1 = crate::blocking::split(n);
    let (l11, _, l21, l22) = l.split_at(n1, n1);
    let (mut b1, mut b2) = b.split_at_row_mut(n1);
    if !trans {
        recurse(isa, l11, false, b1.rb_mut(), par, stack);
        product::product(
            isa,
            b2.rb_mut(),
            1.0,
            Operand::full(l21),
            Operand::full(b1.rb()),
            -1.0,
            false,
            par,
            stack,
        );
        recurse(isa, l22, false, b2, par, stack);
    } else {
        recurse(isa, l22, true, b2.rb_mut(), par, stack);
        if b1.col_stride() == 1 {
            // B1^T <- B1^T - B2^T L21 on the GEMM, which reads the
            // column-major L21 in place: packed, L21 is the larger operand
            // and its packing from columns is a strided scatter.
            let r = crate::gemm::gemm_fused_with_isa(
                isa,
                b1.rb_mut().transpose_mut(),
                1.0,
                b2.rb().transpose(),
                l21,
                -1.0,
                crate::gemm::Epilogue::None,
                par,
                stack,
            );
            debug_assert!(r.is_ok(), "shapes agree and the ISA was checked");
        } else {
            product::product(
                isa,
                b1.rb_mut(),
                1.0,
                Operand::full(l21.transpose()),
                Operand::full(b2.rb()),
                -1.0,
                false,
                par,
                stack,
            );
        }
        recurse(isa, l11, true, b1, par, stack);
    }
}

fn leaf(isa: Isa, l: MatRef<'_, f32>, trans: bool, b: MatMut<'_, f32>) {
    crate::isa::with_isa(isa, Leaf { l, trans, b });
}

struct Leaf<'a, 'b> {
    l: MatRef<'a, f32>,
    trans: bool,
    b: MatMut<'b, f32>,
}

impl WithSimd for Leaf<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Leaf { l, trans, b } = self;
        let nb = l.nrows();
        debug_assert!(nb <= LEAF);
        let m = b.ncols();
        // coef[p * LEAF + q] = -T[p, q] for the off-diagonal entries used by row p.
        let mut coef = [0.0f32; LEAF * LEAF];
        let mut rinv = [0.0f32; LEAF];
        for p in 0..nb {
            rinv[p] = 1.0 / l[(p, p)];
            if trans {
                for q in p + 1..nb {
                    coef[p * LEAF + q] = -l[(q, p)];
                }
            } else {
                for q in 0..p {
                    coef[p * LEAF + q] = -l[(p, q)];
                }
            }
        }
        let lanes = S::F32_LANES;
        let w = WV * lanes;
        debug_assert!(w <= W_MAX);
        let mut buf = [0.0f32; LEAF * W_MAX];
        let zero = simd.splat_f32s(0.0);
        let (bptr, brs, bcs) = (b.as_ptr_mut(), b.row_stride(), b.col_stride());
        let mut c0 = 0;
        while c0 < m {
            let cols = w.min(m - c0);
            if cols < w {
                buf.fill(0.0);
            }
            let bp = buf.as_mut_ptr();
            // SAFETY: (p, c0 + c) with p < nb, c < cols is inside B; buf holds
            // nb * w <= LEAF * W_MAX floats.
            unsafe {
                if bcs == 1 {
                    // Rows of B are contiguous (a transposed view): copy rows.
                    for p in 0..nb {
                        std::ptr::copy_nonoverlapping(
                            bptr.offset(p as isize * brs).add(c0),
                            bp.add(p * w),
                            cols,
                        );
                    }
                } else {
                    for c in 0..cols {
                        let col = bptr.offset((c0 + c) as isize * bcs);
                        for p in 0..nb {
                            *bp.add(p * w + c) = *col.offset(p as isize * brs);
                        }
                    }
                }
            }
            let cp = coef.as_ptr();
            for idx in 0..nb {
                let p = if trans { nb - 1 - idx } else { idx };
                let (q0, q1) = if trans { (p + 1, nb) } else { (0, p) };
                // SAFETY: rows p, q < nb <= LEAF, each row holds `w = WV * lanes`
                // floats of the `LEAF * W_MAX` buffer; coef has LEAF * LEAF entries.
                unsafe {
                    let row = bp.add(p * w);
                    let mut x = [zero; WV];
                    let mut y = [zero; WV];
                    for (v, xv) in x.iter_mut().enumerate() {
                        *xv = (row.add(v * lanes) as *const S::f32s).read_unaligned();
                    }
                    let mut q = q0;
                    // Two rows per step into separate accumulators: 2 WV
                    // independent FMA chains.
                    while q + 1 < q1 {
                        let c_a = simd.splat_f32s(*cp.add(p * LEAF + q));
                        let c_b = simd.splat_f32s(*cp.add(p * LEAF + q + 1));
                        let ra = bp.add(q * w);
                        let rb = bp.add((q + 1) * w);
                        for v in 0..WV {
                            x[v] = simd.mul_add_e_f32s(
                                c_a,
                                (ra.add(v * lanes) as *const S::f32s).read_unaligned(),
                                x[v],
                            );
                            y[v] = simd.mul_add_e_f32s(
                                c_b,
                                (rb.add(v * lanes) as *const S::f32s).read_unaligned(),
                                y[v],
                            );
                        }
                        q += 2;
                    }
                    if q < q1 {
                        let c_a = simd.splat_f32s(*cp.add(p * LEAF + q));
                        let ra = bp.add(q * w);
                        for (v, xv) in x.iter_mut().enumerate() {
                            *xv = simd.mul_add_e_f32s(
                                c_a,
                                (ra.add(v * lanes) as *const S::f32s).read_unaligned(),
                                *xv,
                            );
                        }
                    }
                    let r = simd.splat_f32s(rinv[p]);
                    for v in 0..WV {
                        (row.add(v * lanes) as *mut S::f32s)
                            .write_unaligned(simd.mul_f32s(simd.add_f32s(x[v], y[v]), r));
                    }
                }
            }
            // SAFETY: as for the packing above.
            unsafe {
                if bcs == 1 {
                    for p in 0..nb {
                        std::ptr::copy_nonoverlapping(
                            bp.add(p * w),
                            bptr.offset(p as isize * brs).add(c0),
                            cols,
                        );
                    }
                } else {
                    for c in 0..cols {
                        let col = bptr.offset((c0 + c) as isize * bcs);
                        for p in 0..nb {
                            *col.offset(p as isize * brs) = *bp.add(p * w + c);
                        }
                    }
                }
            }
            c0 += w;
        }
    }
}

fn check(
    op: &'static str,
    isa: Isa,
    l: MatRef<'_, f32>,
    n_b: usize,
    b_rows: usize,
    b_cols: usize,
) -> Result<(), Error> {
    if !isa.is_available() {
        return Err(Error::IsaUnavailable(isa));
    }
    let n = l.nrows();
    check_shape(l.ncols() == n && n_b == n, op, || {
        format!("L is {}x{}, B is {}x{}", n, l.ncols(), b_rows, b_cols)
    })
}

/// `B <- (L L^T)^{-1} B` for lower-triangular `L` (`n x n`, only its lower
/// triangle is read) and `B` of shape `n x m`.
///
/// `L` must be a valid factor (non-zero diagonal, as produced by
/// a Cholesky factorisation); a zero diagonal gives infinities,
/// not an error. Residual bound: see the module documentation. Allocates nothing
/// when `stack` holds [`solve_scratch`]`(n, m, par)`; with less,
/// [`Error::InvalidArgument`] before `B` is touched.
pub fn solve_llt_left_in_place(
    l: MatRef<'_, f32>,
    b: MatMut<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    solve_llt_left_in_place_with_isa(Isa::detect(), l, b, par, stack)
}

/// [`solve_llt_left_in_place`] at a forced instruction-set level.
pub fn solve_llt_left_in_place_with_isa(
    isa: Isa,
    l: MatRef<'_, f32>,
    b: MatMut<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    check(
        "solve_llt_left_in_place",
        isa,
        l,
        b.nrows(),
        b.nrows(),
        b.ncols(),
    )?;
    check_scratch(
        stack,
        solve_scratch(b.nrows(), b.ncols(), par),
        "solve_llt_left_in_place",
        || format!("solve_scratch({}, {}, ..)", b.nrows(), b.ncols()),
    )?;
    let (n, m) = (b.nrows(), b.ncols());
    if b.row_stride() == 1 && n > LEAF && m > 1 {
        // Column-major B: solve on a transposed copy, whose rows are contiguous
        // (leaf chunks and packed slivers are then plain row copies instead of
        // strided gathers); two transposes of n m floats replace ~log2(n / 16)
        // strided packings of B.
        transposed_solve(isa, l, b, par, stack);
        return Ok(());
    }
    solve_lower_left(isa, l, Mode::Both, b, par, stack);
    Ok(())
}

/// `L L^T X = B` for a column-major `B` on transposed copies: with slabs
/// (see [`slabs`]) each thread copies, solves and copies back its own
/// columns, so the copies run in parallel too.
fn transposed_solve(
    isa: Isa,
    l: MatRef<'_, f32>,
    b: MatMut<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) {
    let (n, m) = (b.nrows(), b.ncols());
    let t = slabs(n, m, par);
    if t == 1 {
        let (buf, stack) = stack.make_aligned_uninit::<f32>(n * m, 64);
        transposed_slab(isa, l, b, buf, par, stack);
        return;
    }
    let width = slab_width(m, t);
    let bytes = transposed_slab_bytes(n, width);
    let (mem, _) = stack.make_aligned_uninit::<u8>(bytes * t, 64);
    transposed_slabs(isa, l, b, width, mem, bytes);
}

/// The slabs of [`transposed_solve`], the first here and the rest on other
/// threads (`rayon::join`: no allocation), each with `bytes` of `mem`.
fn transposed_slabs(
    isa: Isa,
    l: MatRef<'_, f32>,
    b: MatMut<'_, f32>,
    width: usize,
    mem: &mut [std::mem::MaybeUninit<u8>],
    bytes: usize,
) {
    let (mine, others) = mem.split_at_mut(bytes);
    let one = |b: MatMut<'_, f32>, mine: &mut [std::mem::MaybeUninit<u8>]| {
        let n = b.nrows();
        let copy = (n * width * 4).div_ceil(64) * 64;
        let stack = MemStack::new(mine);
        let (buf, stack) = stack.make_aligned_uninit::<f32>(copy / 4, 64);
        transposed_slab(isa, l, b, buf, Par::Seq, stack);
    };
    if b.ncols() <= width {
        one(b, mine);
        return;
    }
    let (slab, rest) = b.split_at_col_mut(width);
    rayon::join(
        || one(slab, mine),
        || transposed_slabs(isa, l, rest, width, others, bytes),
    );
}

/// Copies `b` (`n x m`) transposed into `buf`, solves there, copies back.
fn transposed_slab(
    isa: Isa,
    l: MatRef<'_, f32>,
    mut b: MatMut<'_, f32>,
    buf: &mut [std::mem::MaybeUninit<f32>],
    par: Par,
    stack: &mut MemStack,
) {
    let (n, m) = (b.nrows(), b.ncols());
    let tp = buf.as_mut_ptr().cast::<f32>();
    debug_assert!(buf.len() >= n * m);
    transpose_into(b.rb(), tp, m);
    // SAFETY: `transpose_into` wrote the first n * m entries of `buf`.
    let t = unsafe { std::slice::from_raw_parts_mut(tp, n * m) };
    let view = MatMut::from_column_major_slice_mut(t, m, n);
    solve_lower_left(isa, l, Mode::Both, view.transpose_mut(), par, stack);
    transpose_from(t, m, b.rb_mut());
}

/// Writes `b^T` (`m x n`, column-major, leading dimension `ld = m`) to `dst`,
/// in 16 x 16 blocks so that both sides stay in cache.
fn transpose_into(b: MatRef<'_, f32>, dst: *mut f32, ld: usize) {
    let (n, m) = (b.nrows(), b.ncols());
    const BLK: usize = 16;
    for c0 in (0..m).step_by(BLK) {
        for p0 in (0..n).step_by(BLK) {
            for p in p0..(p0 + BLK).min(n) {
                for c in c0..(c0 + BLK).min(m) {
                    // SAFETY: (p, c) is inside B; c + p * ld < m * n is inside
                    // the caller's n * m buffer.
                    unsafe { *dst.add(c + p * ld) = *b.ptr_inbounds_at(p, c) };
                }
            }
        }
    }
}

/// The inverse of [`transpose_into`]: `b <- src^T` for `src` the `m x n`
/// column-major matrix with leading dimension `ld = m`.
fn transpose_from(src: &[f32], ld: usize, mut b: MatMut<'_, f32>) {
    let (n, m) = (b.nrows(), b.ncols());
    const BLK: usize = 16;
    for c0 in (0..m).step_by(BLK) {
        for p0 in (0..n).step_by(BLK) {
            for c in c0..(c0 + BLK).min(m) {
                for p in p0..(p0 + BLK).min(n) {
                    debug_assert!(c + p * ld < src.len());
                    // SAFETY: (p, c) is inside B, and c + p * ld < m * n <=
                    // src.len() (the caller's transposed copy).
                    unsafe {
                        *b.rb_mut().ptr_inbounds_at_mut(p, c) = *src.get_unchecked(c + p * ld)
                    };
                }
            }
        }
    }
}

/// `B <- B (L L^T)^{-1}` for lower-triangular `L` (`n x n`) and `B` of shape `m x n`.
/// Same contract as [`solve_llt_left_in_place`] on the transposed problem.
pub fn solve_llt_right_in_place(
    l: MatRef<'_, f32>,
    b: MatMut<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    solve_llt_right_in_place_with_isa(Isa::detect(), l, b, par, stack)
}

/// [`solve_llt_right_in_place`] at a forced instruction-set level.
pub fn solve_llt_right_in_place_with_isa(
    isa: Isa,
    l: MatRef<'_, f32>,
    b: MatMut<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    // B (L L^T)^{-1} = ((L L^T)^{-1} B^T)^T since L L^T is symmetric.
    check(
        "solve_llt_right_in_place",
        isa,
        l,
        b.ncols(),
        b.nrows(),
        b.ncols(),
    )?;
    check_scratch(
        stack,
        solve_scratch(b.ncols(), b.nrows(), par),
        "solve_llt_right_in_place",
        || format!("solve_scratch({}, {}, ..)", b.ncols(), b.nrows()),
    )?;
    solve_lower_left(isa, l, Mode::Both, b.transpose_mut(), par, stack);
    Ok(())
}

/// Scratch needed by [`lower_times_in_place`] for an `n x n` factor and `m`
/// columns.
pub fn lower_times_scratch(n: usize, m: usize, par: Par) -> StackReq {
    let _ = par;
    product::pack_scratch(n, m, n)
}

/// `B <- L B` in place for lower-triangular `L` (`n x n`, only its lower
/// triangle is read) and `B` of shape `n x m`: about `n^2 m` flops (the
/// products with entries above the diagonal are not formed).
///
/// Both operands are packed before `B` is overwritten, so the product may
/// be taken in place. The optimizer draws Gaussian vectors of covariance
/// `L L^T` this way (`B` of independent standard normals).
///
/// * Accumulation in f32: `|fl(L B) - L B| <= gamma_n |L||B|`.
/// * Errors: [`Error::ShapeMismatch`] if `L` is not square or `B` does not
///   have `n` rows.
/// * Allocates nothing when `stack` holds [`lower_times_scratch`]`(n, m, par)`;
///   with less, [`Error::InvalidArgument`] before `B` is touched.
///
/// # Examples
/// ```
/// use natgrad_kernels::trsm::{lower_times_in_place, lower_times_scratch};
/// use natgrad_kernels::{MatMut, MatRef, MemBuffer, MemStack, Par};
/// // L = [[2, 0], [1, 3]]; the 9.0 above the diagonal is not read.
/// let l = [2.0f32, 1.0, 9.0, 3.0];
/// let mut b = [1.0f32, 1.0, 0.0, 1.0]; // columns [1, 1] and [0, 1]
/// let mut mem = MemBuffer::new(lower_times_scratch(2, 2, Par::Seq));
/// lower_times_in_place(
///     MatRef::from_column_major_slice(&l, 2, 2),
///     MatMut::from_column_major_slice_mut(&mut b, 2, 2),
///     Par::Seq,
///     MemStack::new(&mut mem),
/// )
/// .unwrap();
/// assert_eq!(b, [2.0, 4.0, 0.0, 3.0]);
/// ```
pub fn lower_times_in_place(
    l: MatRef<'_, f32>,
    b: MatMut<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    lower_times_in_place_with_isa(Isa::detect(), l, b, par, stack)
}

/// [`lower_times_in_place`] at a forced instruction-set level.
pub fn lower_times_in_place_with_isa(
    isa: Isa,
    l: MatRef<'_, f32>,
    b: MatMut<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    check(
        "lower_times_in_place",
        isa,
        l,
        b.nrows(),
        b.nrows(),
        b.ncols(),
    )?;
    check_scratch(
        stack,
        lower_times_scratch(b.nrows(), b.ncols(), par),
        "lower_times_in_place",
        || format!("lower_times_scratch({}, {}, ..)", b.nrows(), b.ncols()),
    )?;
    if b.nrows() == 0 || b.ncols() == 0 {
        return Ok(());
    }
    let mut b = b;
    // Packing reads all of `L` and `B` before the product overwrites `B`.
    let (pk, _) = product::pack_any(
        isa,
        Operand::lower(l),
        Operand::full(b.rb()),
        false,
        par,
        stack,
    );
    product::compute(isa, b.rb_mut(), 0.0, 1.0, &pk, false, par);
    Ok(())
}
