//! # natgrad
//!
//! The exact natural gradient of deep linear networks and the online natural
//! gradient for nonlinear networks (Bernacchia, Lengyel & Hennequin, NeurIPS
//! 2018), on the hand-tuned CPU kernels of `natgrad-kernels`.

pub mod checkpoint;
pub mod data;
#[cfg(feature = "mpi")]
pub mod distributed;
pub mod error;
pub mod linear;
pub mod mlp;
pub mod optim;
pub mod workspace;

#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod app;

pub use error::Error;
pub use natgrad_kernels as kernels;
