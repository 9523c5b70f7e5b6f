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
//!
//! One file per verb: the triangular solve the others run on
//! (`trsm/triangular.rs`), the solves with `L L^T` (`trsm/solve.rs`), the
//! product with `L` (`trsm/multiply.rs`).

mod multiply;
mod solve;
mod triangular;

pub use multiply::{lower_times_in_place, lower_times_in_place_with_isa, lower_times_scratch};
pub use solve::{
    solve_llt_left_in_place, solve_llt_left_in_place_with_isa, solve_llt_right_in_place,
    solve_llt_right_in_place_with_isa, solve_scratch,
};
pub(crate) use triangular::{solve_lower_left, triangular_scratch, Mode};

use crate::error::check_shape;
use crate::{Error, Isa, MatRef};

/// Checks the arguments of a solve or product with `L` (`n x n`) and `B`
/// (`n_b` rows; `b_rows x b_cols` for the message): `isa` available, shapes
/// agreeing.
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
