//! Cholesky factorisation of damped factors, and rank-k updates of a factor.
//!
//! [`cholesky_in_place`] is recursive right-looking: factor the top-left half,
//! solve the bottom-left block against it ([`crate::trsm`]), subtract its
//! product with itself from the bottom-right lower triangle (the packed SYRK
//! kernel of [`crate::syrk`], where most of the flops go, on all threads), then
//! factor the bottom-right half. Diagonal blocks of at most 32 rows are
//! factored by an unblocked right-looking loop in a local buffer (auto-vectorised
//! under the selected instruction set). With two or more threads and at
//! least 256 rows it is instead right-looking in 48-column panels with a
//! look-ahead of one panel: one thread updates and factors the next panel
//! while the others update the trailing matrix.
//!
//! Accumulation is in f32 throughout; the computed factor satisfies the
//! standard backward error bound (Higham, Thm 10.3)
//! `L L^T = A + shift I + dA`, `|dA| <= gamma_{n+1} |L| |L^T|`,
//! `gamma_k = k u / (1 - k u)`, `u = 2^-24`: the blocked order of the sums
//! changes which `gamma` multiplies which product, not the bound.
//!
//! One file per verb: [`factor`](cholesky_in_place) in `cholesky/factor.rs`,
//! [`update`](cholesky_rank_update) in `cholesky/update.rs`,
//! [`inverse`](cholesky_inverse_in_place) in `cholesky/inverse.rs`.

mod factor;
mod inverse;
mod update;

pub use factor::{cholesky_in_place, cholesky_in_place_with_isa, cholesky_scratch};
pub use inverse::{
    cholesky_inverse_in_place, cholesky_inverse_in_place_with_isa, cholesky_inverse_scratch,
};
pub use update::{cholesky_rank_update, cholesky_rank_update_with_isa, cholesky_update_scratch};
