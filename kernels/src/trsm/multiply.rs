//! The product `B <- L B` with a lower triangle.

use super::check;
use crate::error::check_scratch;
use crate::product::{self, Operand};
use crate::{Error, Isa, MatMut, MatRef, MemStack, Par, StackReq};
use faer::reborrow::{Reborrow, ReborrowMut};

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
