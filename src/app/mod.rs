//! The `natgrad` application: the race, the benchmarks, the tuning search,
//! the deep-linear experiment's command and the plots, built on the library's
//! public API.
//!
//! Not part of the library's API (hidden from its documentation, compiled
//! only with the default `cli` feature, no stability promise). It stays in
//! the library crate rather than in the binary because the integration tests
//! (`tests/cli.rs`, `tests/published.rs`, ...) and the criterion benches
//! (`benches/`) call into it, and those are separate crates that can only
//! reach a library.
//!
//! The modules, each depending only on those listed before it:
//!
//! - [`args`]: value parsers shared by the commands (threads, budgets, lists)
//!   and the bridge from clap's errors to [`crate::Error::Usage`];
//! - [`json`]: the JSON layout every command writes (serde_json);
//! - [`output`]: output directories and atomic writes; [`plot`]: the charts;
//! - [`settings`]: the optimizers and their tuned settings per preset;
//! - [`bench`]: the benchmark harness shared with `benches/`, and the quick
//!   JSON lines of `natgrad bench`;
//! - [`race`]: the race (its arguments, the run loop, the report);
//! - [`tune`], [`linear_online`], [`linear`], `mpi_train`: the other commands;
//! - [`cli`]: the top level, which hands the arguments to a command.

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
