//! The crate's error type, and every bad input with the error it gets.
//!
#![doc = include_str!("../docs/robustness.md")]

use std::fmt;
use std::path::PathBuf;

/// Everything natgrad can refuse, with a message a person can act on.
#[derive(Debug)]
pub enum Error {
    /// A kernel refused its arguments (shapes, non-positive-definite factor, ...).
    Kernel(natgrad_kernels::Error),
    /// Arrays passed by the caller do not have the shapes the model needs.
    Shape(String),
    /// Input data, weights or a computed quantity contain NaN or infinity.
    NonFinite(String),
    /// A configuration value is out of its domain (learning rate, damping, ...).
    InvalidConfig(String),
    /// Data values outside their domain: targets a likelihood cannot have
    /// (Bernoulli outside `[0, 1]`, Categorical columns that are not
    /// probability vectors), images and labels that do not fit a dataset.
    InvalidData(String),
    /// A curvature factor could not be factorised even at the largest damping.
    NotPositiveDefinite(String),
    /// Reading or writing a file failed.
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file exists but its contents are not what they should be.
    Format {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A command-line usage error.
    Usage(String),
    /// A collective step of a distributed run (feature `mpi`) failed on
    /// another rank; that rank's own error says why.
    Distributed(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Kernel(e) => write!(f, "{e}"),
            Error::Shape(s) => write!(f, "shape mismatch: {s}"),
            Error::NonFinite(s) => write!(f, "non-finite value: {s}"),
            Error::InvalidConfig(s) => write!(f, "invalid configuration: {s}"),
            Error::InvalidData(s) => write!(f, "invalid data: {s}"),
            Error::NotPositiveDefinite(s) => write!(f, "factor not positive definite: {s}"),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Format { path, detail } => write!(f, "{}: {detail}", path.display()),
            Error::Usage(s) => write!(f, "usage: {s}"),
            Error::Distributed(s) => write!(f, "distributed step: {s}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Kernel(e) => Some(e),
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<natgrad_kernels::Error> for Error {
    fn from(e: natgrad_kernels::Error) -> Self {
        Error::Kernel(e)
    }
}
