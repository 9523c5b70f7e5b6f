//! The `natgrad` application: the race, the benchmarks, the tuning search,
//! the deep-linear experiment's command and the plots, built on the library's
//! public API.
//!
//! Not part of the library's API (hidden from its documentation, compiled
//! only with the default `cli` feature, no stability promise): it is public
//! only so that the `natgrad` binary, the criterion benches and the tests can
//! reach it.

pub mod args;
pub mod bench;
pub mod cli;
pub mod json;
pub mod linear;
pub mod linear_online;
#[cfg(feature = "mpi")]
pub mod mpi_train;
pub mod output;
pub mod plot;
pub mod race;
pub mod settings;
pub mod tune;
