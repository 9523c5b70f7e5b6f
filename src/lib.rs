//! # natgrad
//!
//! The exact natural gradient of deep linear networks and the online natural
//! gradient for nonlinear networks (Bernacchia, Lengyel & Hennequin, NeurIPS
//! 2018), on the hand-tuned CPU kernels of `natgrad-kernels`.
//!
//! * [`mlp::Mlp`]: a multilayer perceptron with an output likelihood
//!   (Gaussian, Bernoulli, Categorical), its forward and backward passes on a
//!   [`workspace::Workspace`] that holds every buffer;
//! * [`optim`]: [`optim::NaturalGradient`], [`optim::Sgd`] and
//!   [`optim::Adam`] behind the [`optim::Optimizer`] trait; a step allocates
//!   nothing;
//! * [`linear`]: the exact natural gradient of deep linear networks in closed
//!   form, and the brute-force Fisher matrix it is checked against;
//! * [`data`]: a validating IDX reader and 10,000 MNIST digits embedded in the
//!   crate ([`data::load_embedded`]);
//! * [`checkpoint`]: crash-safe checkpoints of a network and its optimizer;
//! * [`kernels`]: the re-exported `natgrad-kernels` (GEMM with fused
//!   epilogues, SYRK, Cholesky, triangular solves);
//! * [`Error`]: every way a call can fail (see [`error`] for the table of bad
//!   inputs and their errors).
//!
//! The mathematics is restated in the repository's `docs/math.md`, which the
//! documentation cites by section. The repository's `examples/` show an
//! autoencoder (`quickstart`), a classifier (`classifier`) and the kernels on
//! user matrices (`kernels`).
//!
//! A minimal training loop (the README's quickstart is a longer one):
//!
//! ```
//! use natgrad::kernels::{Activation, MatRef, Par};
//! use natgrad::mlp::{Init, Likelihood, Mlp};
//! use natgrad::optim::{NaturalGradient, NaturalGradientConfig, Optimizer};
//! use natgrad::workspace::Workspace;
//!
//! let mut net = Mlp::new(&[8, 4, 8], &[Activation::Tanh, Activation::Identity],
//!                        Likelihood::Gaussian, Init::GlorotUniform, 1)?;
//! let batch = 16;
//! let mut ws = Workspace::new(&net, batch, Par::Seq)?;
//! let mut opt = NaturalGradient::new(&net, batch, NaturalGradientConfig::default())?;
//! let x: Vec<f32> = (0..8 * batch).map(|i| ((i * 7) % 11) as f32 / 11.0).collect();
//! let x = MatRef::from_column_major_slice(&x, 8, batch); // one example per column
//! let first = opt.step(&mut net, &mut ws, x, x)?.loss;
//! for _ in 0..20 {
//!     opt.step(&mut net, &mut ws, x, x)?;
//! }
//! assert!(net.evaluate(&mut ws, x, x)? < first);
//! # Ok::<(), natgrad::Error>(())
//! ```

#![deny(missing_docs)]

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

// The README's Rust blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme_doctests {}
