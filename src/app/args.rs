//! Value parsers shared by the commands' arguments: thread counts, budgets
//! in seconds, lists of positive integers. Each returns the message a person
//! can act on.

use crate::Error;

/// The longest budget accepted, in seconds (about 31.7 years): anything
/// longer is a typo, and 1e20 seconds does not fit a `Duration`.
pub const MAX_BUDGET_SECS: f64 = 1e9;

/// The most threads accepted: four per core the system reports (more only
/// slow the kernels down and cost a stack each).
pub fn max_threads() -> usize {
    4 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Parses `--threads`' value: a positive integer up to [`max_threads`].
pub fn parse_threads(v: &str) -> Result<usize, Error> {
    let t =
        v.parse::<usize>().ok().filter(|&t| t > 0).ok_or_else(|| {
            Error::Usage(format!("--threads takes a positive integer, got {v:?}"))
        })?;
    if t > max_threads() {
        return Err(Error::Usage(format!(
            "--threads {t} is more than 4 per available core ({}); use at most {}",
            max_threads() / 4,
            max_threads()
        )));
    }
    Ok(t)
}

/// Parses a budget in seconds given to `flag`: positive, finite, at most
/// [`MAX_BUDGET_SECS`].
pub fn parse_budget(flag: &str, v: &str) -> Result<f64, Error> {
    let secs = v
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .ok_or_else(|| Error::Usage(format!("{flag} takes positive seconds, got {v:?}")))?;
    if secs > MAX_BUDGET_SECS {
        return Err(Error::Usage(format!(
            "{flag} {v} is more than the limit of {MAX_BUDGET_SECS:e} seconds"
        )));
    }
    Ok(secs)
}
