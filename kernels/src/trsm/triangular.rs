//! The recursive triangular solve with `L` or `L^T` from the left that
//! every solve of this module (and the Cholesky factorisation) runs on.

use crate::product::{self, Operand};
use crate::{Isa, MatMut, MatRef, MemStack, Par, StackReq};
use faer::reborrow::{Reborrow, ReborrowMut};
use pulp::{Simd, WithSimd};

/// Largest triangle solved by substitution (smaller leaves move flops into the
/// packed product, which runs several times faster than substitution).
pub(crate) const LEAF: usize = 16;
/// Vectors of right-hand sides per leaf chunk (2 x 4 independent FMA chains).
const WV: usize = 4;
/// Largest number of right-hand sides in one vectorised leaf chunk (AVX-512: 4 x 16).
const W_MAX: usize = 64;

pub(super) fn seq_scratch(n: usize, m: usize) -> StackReq {
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

pub(super) fn slabs(n: usize, m: usize, par: Par) -> usize {
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
pub(super) fn slab_width(m: usize, t: usize) -> usize {
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
