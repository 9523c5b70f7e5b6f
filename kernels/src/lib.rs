//! # natgrad-kernels
//!
//! Cache-blocked, SIMD (pulp runtime dispatch: AVX-512, AVX2+FMA, scalar) and
//! rayon-parallel f32 kernels for natural-gradient training:
//!
//! * [`gemm`]: `C = alpha op(A) op(B) + beta C` with fused epilogues (bias +
//!   activation for the forward pass, activation derivative for the backward pass);
//! * [`syrk`]: covariance accumulation `C <- beta C + alpha X X^T` (lower triangle);
//! * [`cholesky`]: blocked Cholesky factorisation of a damped factor, and rank-k
//!   updates of an existing factor;
//! * [`trsm`]: solves with a Cholesky factor from the left and from the right;
//! * [`activation`]: the elementwise activations and their derivatives;
//! * [`rng`]: a small, seedable, serialisable random number generator and samplers.
//!
//! The crate knows nothing of networks or optimizers. Matrices are faer views
//! (`MatRef`/`MatMut`, column-major with arbitrary strides); transposes are
//! expressed by strides (`a.transpose()`). Parallelism is an explicit [`Par`]
//! argument. Every operation that needs scratch memory exposes a `*_scratch`
//! function returning a [`StackReq`]; given a [`MemStack`] of that size the call
//! allocates nothing.

#![deny(missing_docs)]

pub mod activation;
#[cfg(feature = "bench")]
pub mod alloc_counter;
mod blocking;
pub mod cholesky;
pub mod error;
pub mod gemm;
pub mod isa;
mod pack;
mod product;
mod raw;
pub mod rng;
pub mod syrk;
pub mod trsm;
pub mod vector;
mod vmath;

pub use activation::Activation;
pub use error::Error;
pub use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
pub use faer::{MatMut, MatRef, Par};
pub use isa::Isa;
