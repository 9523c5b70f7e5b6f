//! Value parsers shared by the commands' arguments: thread counts, budgets
//! in seconds, lists of positive integers. Each returns the message a person
//! can act on.

use crate::Error;

/// A list given as one value (`ng,sgd`, `64-32-64`): clap would read a `Vec`
/// field as a repeated option.
#[derive(Clone, Debug)]
pub struct List<T>(pub Vec<T>);

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

/// Parses the arguments of one command (`args`, without the program and
/// command names) into `T`. `Ok(None)` when `--help` was asked for: the help
/// is then printed on stdout. A bad argument is an [`Error::Usage`] with
/// clap's message (the value parsers' own messages for bad values), then the
/// command's usage.
pub fn parse_command<T: clap::Parser>(args: &[String]) -> Result<Option<T>, Error> {
    let argv = std::iter::once("natgrad".to_string()).chain(args.iter().cloned());
    match T::try_parse_from(argv) {
        Ok(parsed) => Ok(Some(parsed)),
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                // Written, not `print!`ed: a closed pipe (`natgrad race --help
                // | head`) is not worth a panic.
                use std::io::Write;
                let _ = write!(std::io::stdout(), "{}", e.render());
                Ok(None)
            }
            _ => {
                // clap's message without its `error: ` prefix and its hint,
                // then the usage and where to read more.
                let rendered = e.render().to_string();
                let rendered = rendered.strip_prefix("error: ").unwrap_or(&rendered);
                let mut text: String = rendered
                    .lines()
                    .filter(|l| !l.starts_with("For more information, try"))
                    .collect::<Vec<_>>()
                    .join("\n")
                    .trim_end()
                    .to_string();
                if !text.contains("Usage:") {
                    let usage = T::command().render_usage().to_string();
                    text = format!("{text}\n\n{}", usage.trim_end());
                }
                let name = T::command().get_name().to_string();
                text.push_str(&format!("\n\nFor more information, try `{name} --help`."));
                Err(Error::Usage(text))
            }
        },
    }
}

/// A value parser for clap from one of ours: the message of an
/// [`Error::Usage`] as it is, without its `usage: ` prefix.
pub fn clap_parser<T>(
    parse: impl Fn(&str) -> Result<T, Error> + Clone + Send + Sync + 'static,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |v| {
        parse(v).map_err(|e| match e {
            Error::Usage(m) => m,
            e => e.to_string(),
        })
    }
}

/// Any path, even an empty one: where an output goes is judged by
/// [`crate::app::output::check_out_dir`], with its own messages.
pub fn parse_path(v: &str) -> Result<std::path::PathBuf, Error> {
    Ok(v.into())
}

/// A seed: any unsigned 64-bit integer.
pub fn parse_seed(v: &str) -> Result<u64, Error> {
    v.parse()
        .map_err(|_| Error::Usage(format!("--seed takes an integer, got {v:?}")))
}

/// A comma-separated list of positive integers given to `flag`.
pub fn positive_list(flag: &str, v: &str, example: &str) -> Result<Vec<usize>, Error> {
    v.split(',')
        .map(|t| t.parse::<usize>().ok().filter(|&t| t > 0))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Error::Usage(format!("{flag} takes a list like {example}, got {v:?}")))
}

/// A positive integer given to `flag`.
pub fn parse_positive(flag: &str, v: &str) -> Result<usize, Error> {
    v.parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| Error::Usage(format!("{flag} takes a positive integer, got {v:?}")))
}
