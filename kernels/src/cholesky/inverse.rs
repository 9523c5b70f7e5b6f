//! The inverse `(L L^T)^{-1}` from the factor (LAPACK's `potri`).

use super::factor::LEAF;
use crate::error::{check_scratch, check_shape};
use crate::product::{self, Operand};
use crate::{Error, Isa, MatMut, MemStack, Par, StackReq};
use faer::reborrow::{Reborrow, ReborrowMut};

/// Scratch needed by [`cholesky_inverse_in_place`] for an `n x n` factor.
pub fn cholesky_inverse_scratch(n: usize, par: Par) -> StackReq {
    let _ = par;
    triangular_inverse_scratch(n).or(product::pack_scratch(n, n, n))
}

fn triangular_inverse_scratch(n: usize) -> StackReq {
    if n <= LEAF {
        return StackReq::EMPTY;
    }
    let n1 = crate::blocking::split(n);
    let n2 = n - n1;
    StackReq::any_of(&[
        // The two halves may be inverted at the same time.
        triangular_inverse_scratch(n1).and(triangular_inverse_scratch(n2)),
        product::pack_scratch(n2, n1, n1),
        product::pack_scratch(n2, n1, n2),
    ])
}

/// The inverse `(L L^T)^{-1}` of a matrix from its Cholesky factor, in place
/// (LAPACK's `potri`): on entry the lower triangle of `l` holds `L` (the
/// strict upper triangle is not read), on exit all of `l` holds the
/// symmetric inverse, both triangles written.
///
/// Two steps of about `n^3 / 3` flops each on the packed product of the SYRK
/// module: `T = L^{-1}` by recursion on halves
/// (`T21 = -T22 L21 T11`, leaves of at most 32 rows by substitution), then
/// the lower triangle of `T^T T` with both operands' zero triangles skipped.
/// A caller that applies `(L L^T)^{-1}` to many right-hand sides between two
/// factorisations trades two triangular solves per application for one GEMM
/// and this `2 n^3 / 3` once. On 1 thread at n = 500-1000 this runs at about
/// 0.6 of the FMA peak, the solves at about 0.7 and a GEMM at about 0.9, so
/// it pays from about `2n` right-hand sides per factorisation.
///
/// Accuracy (Higham, ch. 14): normwise, `||X - (L L^T)^{-1}|| / ||X||` is
/// of order `n u kappa(L L^T)`, the accuracy of the solves it replaces (the
/// fuzz target `cholesky_solve` checks `16 n u kappa` where `kappa <= 900`).
/// Componentwise, `|X L L^T - I| <= 3 gamma_n |X| |L| |L^T|` holds on the
/// random matrices of the tests but is not guaranteed: an adversarial
/// 20 x 20 factor exceeds it by 7%.
///
/// Errors: [`Error::ShapeMismatch`] if `l` is not square,
/// [`Error::NotPositiveDefinite`] naming the first diagonal entry of `L`
/// that is not positive and finite, [`Error::InvalidArgument`] if an entry of
/// the lower triangle is not finite or the inverse overflows f32 (then `l` is
/// overwritten with garbage). Allocates nothing when `stack` holds
/// [`cholesky_inverse_scratch`]; with less, [`Error::InvalidArgument`]
/// before `l` is touched.
///
/// ```
/// use natgrad_kernels::cholesky::{cholesky_in_place, cholesky_inverse_in_place};
/// use natgrad_kernels::cholesky::{cholesky_inverse_scratch, cholesky_scratch};
/// use natgrad_kernels::{MatMut, MemBuffer, MemStack, Par};
///
/// // A = [[4, 2], [2, 3]], det 8, inverse [[3, -2], [-2, 4]] / 8.
/// let mut a = [4.0f32, 2.0, 2.0, 3.0];
/// let mut mem = MemBuffer::new(cholesky_scratch(2, Par::Seq).or(cholesky_inverse_scratch(2, Par::Seq)));
/// let m = MatMut::from_column_major_slice_mut(&mut a, 2, 2);
/// cholesky_in_place(m, 0.0, Par::Seq, MemStack::new(&mut mem)).unwrap();
/// let m = MatMut::from_column_major_slice_mut(&mut a, 2, 2);
/// cholesky_inverse_in_place(m, Par::Seq, MemStack::new(&mut mem)).unwrap();
/// let want = [0.375f32, -0.25, -0.25, 0.5];
/// assert!(a.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-6));
/// ```
pub fn cholesky_inverse_in_place(
    l: MatMut<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    cholesky_inverse_in_place_with_isa(Isa::detect(), l, par, stack)
}

/// [`cholesky_inverse_in_place`] at a forced instruction-set level.
pub fn cholesky_inverse_in_place_with_isa(
    isa: Isa,
    mut l: MatMut<'_, f32>,
    par: Par,
    stack: &mut MemStack,
) -> Result<(), Error> {
    const OP: &str = "cholesky_inverse_in_place";
    if !isa.is_available() {
        return Err(Error::IsaUnavailable(isa));
    }
    let n = l.nrows();
    check_shape(l.ncols() == n, OP, || {
        format!("L is {}x{}, not square", n, l.ncols())
    })?;
    check_scratch(stack, cholesky_inverse_scratch(n, par), OP, || {
        format!("cholesky_inverse_scratch({n}, ..)")
    })?;
    for j in 0..n {
        let d = l[(j, j)];
        if !(d > 0.0 && d.is_finite()) {
            return Err(Error::NotPositiveDefinite {
                pivot: j,
                value: d as f64,
            });
        }
        for i in j + 1..n {
            if !l[(i, j)].is_finite() {
                return Err(Error::InvalidArgument {
                    op: OP,
                    detail: format!("entry ({i}, {j}) of the factor is {}", l[(i, j)]),
                });
            }
        }
    }
    if n == 0 {
        return Ok(());
    }
    invert_lower(isa, l.rb_mut(), par, stack);
    // X = T^T T: T^T is upper triangular, T lower; lower triangle of X only.
    let t = l.rb();
    let (p, _) = product::pack_any(
        isa,
        Operand::upper(t.transpose()),
        Operand::lower(t),
        true,
        par,
        stack,
    );
    product::compute(isa, l.rb_mut(), 0.0, 1.0, &p, true, par);
    let mut finite = true;
    for j in 0..n {
        for i in j..n {
            let v = l[(i, j)];
            finite &= v.is_finite();
            l[(j, i)] = v;
        }
    }
    if finite {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            op: OP,
            detail: "the inverse overflows f32 (the factor is too ill-conditioned)".into(),
        })
    }
}

/// Below this order the two halves of [`invert_lower`] run one after the
/// other (each is then too small to be worth a second thread).
const PARALLEL_INVERSE_MIN: usize = 96;

/// `L <- L^{-1}` for the lower triangle of `l` (the strict upper triangle is
/// not touched).
fn invert_lower(isa: Isa, l: MatMut<'_, f32>, par: Par, stack: &mut MemStack) {
    let n = l.nrows();
    if n <= LEAF {
        return crate::isa::with_isa(isa, || invert_leaf(l));
    }
    let n1 = crate::blocking::split(n);
    let (mut l11, _, mut l21, mut l22) = l.split_at_mut(n1, n1);
    if par.degree() > 1 && n >= PARALLEL_INVERSE_MIN {
        // The diagonal blocks are independent: invert them at the same time,
        // each with its own part of the scratch.
        let req = triangular_inverse_scratch(n1);
        let (buf, rest) = stack.make_aligned_uninit::<u8>(req.unaligned_bytes_required(), 64);
        let first = MemStack::new(buf);
        ::rayon::join(
            || invert_lower(isa, l11.rb_mut(), par, first),
            || invert_lower(isa, l22.rb_mut(), par, rest),
        );
    } else {
        invert_lower(isa, l11.rb_mut(), par, stack);
        invert_lower(isa, l22.rb_mut(), par, stack);
    }
    // T21 = -T22 (L21 T11). Both products pack their operands before writing
    // C, so L21 may be overwritten in place.
    let t11 = Operand::lower(l11.rb());
    let (p, _) = product::pack(isa, Operand::full(l21.rb()), t11, par, stack);
    product::compute(isa, l21.rb_mut(), 0.0, 1.0, &p, false, par);
    let t22 = Operand::lower(l22.rb());
    let (p, _) = product::pack(isa, t22, Operand::full(l21.rb()), par, stack);
    product::compute(isa, l21.rb_mut(), 0.0, -1.0, &p, false, par);
}

/// [`invert_lower`] for at most [`LEAF`] rows, column by column in a local
/// buffer (`L t_j = e_j` by forward substitution in axpy form).
#[inline(always)]
fn invert_leaf(mut l: MatMut<'_, f32>) {
    let n = l.nrows();
    debug_assert!(n <= LEAF);
    let mut a = [0.0f32; LEAF * LEAF];
    for j in 0..n {
        for i in j..n {
            a[j * LEAF + i] = l[(i, j)];
        }
    }
    let mut x = [0.0f32; LEAF];
    for j in 0..n {
        x[..n].fill(0.0);
        x[j] = 1.0;
        for k in j..n {
            let xk = x[k] / a[k * LEAF + k];
            x[k] = xk;
            let col = &a[k * LEAF..k * LEAF + n];
            for (xi, &lik) in x[k + 1..n].iter_mut().zip(&col[k + 1..n]) {
                *xi -= lik * xk;
            }
        }
        for i in j..n {
            l[(i, j)] = x[i];
        }
    }
}
