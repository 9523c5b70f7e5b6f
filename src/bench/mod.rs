//! The quick, machine-readable comparison behind `natgrad bench ... --quick --json`.
