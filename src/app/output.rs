//! Output directories and files of the command line: checked before any
//! work starts, written atomically, and temporaries of interrupted runs
//! removed.
//!
//! Every output file (CSV, PNG, JSON; checkpoints through
//! [`crate::checkpoint::save`]) is written to a temporary file in the same
//! directory, named `.<name>.tmp-<pid>-<n>`, and renamed over its target:
//! a full disk or a kill leaves the previous file or the new one, never a
//! torn one. A kill can leave the temporary behind; the next run removes
//! those whose process is gone ([`remove_stale_temporaries`]).

use crate::Error;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes temporaries of one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Checks that `dir` can take the program's outputs, creating it (and its
/// parents) if needed: refuses an empty path, a path that exists and is not
/// a directory, and a directory where a file cannot be created (read-only
/// directory or file system; tried with a probe file, removed at once).
///
/// # Errors
/// [`Error::Usage`] naming `flag` for an empty path; [`Error::Io`] naming
/// the path otherwise.
pub fn check_out_dir(dir: &Path, flag: &str) -> Result<(), Error> {
    if dir.as_os_str().is_empty() {
        return Err(Error::Usage(format!(
            "{flag} \"\" names no directory; give a directory such as {flag} race-out"
        )));
    }
    let io = |path: &Path, source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    match fs::metadata(dir) {
        Ok(m) if !m.is_dir() => {
            return Err(io(
                dir,
                std::io::Error::other(format!(
                    "{flag} must name a directory, and this is an existing file"
                )),
            ))
        }
        _ => {}
    }
    fs::create_dir_all(dir).map_err(|e| {
        io(
            dir,
            std::io::Error::new(
                e.kind(),
                format!("cannot create this directory ({e}); choose another {flag}"),
            ),
        )
    })?;
    let probe = dir.join(format!(".natgrad-write-probe-{}", std::process::id()));
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .map_err(|e| {
            io(
                dir,
                std::io::Error::new(
                    e.kind(),
                    format!("cannot write into this directory ({e}); choose another {flag}"),
                ),
            )
        })?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

/// The temporary name of an atomic write of `path`.
fn temporary_for(path: &Path) -> Result<PathBuf, Error> {
    let name = path.file_name().ok_or_else(|| Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other("an output path must name a file"),
    })?;
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(path.with_file_name(tmp))
}

/// Writes `path` atomically: `write` fills a temporary file in the same
/// directory, which is then renamed over `path`. On error the temporary is
/// removed and the previous file at `path`, if any, is untouched.
///
/// # Errors
/// Whatever `write` returns; [`Error::Io`] naming `path` if the rename fails.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), Error>,
) -> Result<(), Error> {
    let tmp = temporary_for(path)?;
    let result = write(&tmp).and_then(|()| {
        fs::rename(&tmp, path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// [`write_atomic_with`] of the bytes `contents` (flushed to disk before the
/// rename).
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), Error> {
    write_atomic_with(path, |tmp| {
        let io = |source| Error::Io {
            path: tmp.to_path_buf(),
            source,
        };
        use std::io::Write;
        let mut f = fs::File::create(tmp).map_err(io)?;
        f.write_all(contents).map_err(io)?;
        f.sync_all().map_err(io)
    })
}

/// The process id in a temporary's name `.<name>.tmp-<pid>-<n>`, if it is one.
fn temporary_pid(name: &str) -> Option<u32> {
    if !name.starts_with('.') {
        return None;
    }
    let (_, tail) = name.rsplit_once(".tmp-")?;
    let (pid, n) = tail.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Whether process `pid` is running (on Linux, by `/proc`; elsewhere only
/// this process is known to run).
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    proc.is_dir() && proc.join(pid.to_string()).exists()
}

/// Removes from `dir` the temporaries of this program's atomic writes
/// (`.<name>.tmp-<pid>-<n>`, checkpoints' included) left by processes that
/// are gone, e.g. killed during a save. Best effort: a missing directory or
/// a file that cannot be removed is skipped. Returns the names removed.
pub fn remove_stale_temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return removed;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temporary_pid) else {
            continue;
        };
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && !process_alive(pid) && fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::temporary_pid;

    #[test]
    fn temporary_names_are_recognised() {
        assert_eq!(temporary_pid(".paper-ng.ckpt.tmp-123-4"), Some(123));
        assert_eq!(temporary_pid(".race.png.tmp-9-0"), Some(9));
        assert_eq!(temporary_pid("race.png.tmp-9-0"), None);
        assert_eq!(temporary_pid(".race.png"), None);
        assert_eq!(temporary_pid(".x.tmp-a-1"), None);
    }
}
