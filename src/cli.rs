//! The `natgrad` command line.

use crate::Error;

const USAGE: &str = "natgrad: natural gradient on CPU

USAGE:
    natgrad [race] [OPTIONS]        NG vs SGD vs Adam autoencoder race (default)
    natgrad linear [--out DIR] [--json]
                                    exact natural gradient of deep linear networks
    natgrad bench kernels --quick --json
    natgrad bench step --quick --json
";

/// Runs the command line on `args` (without the program name).
pub fn run(args: &[String]) -> Result<(), Error> {
    match args.first().map(String::as_str) {
        None => crate::race::cli_main(&[]),
        Some("race") => crate::race::cli_main(&args[1..]),
        Some(a) if a.starts_with("--") => crate::race::cli_main(args),
        Some("linear") => crate::linear::cli_main(&args[1..]),
        Some("-h") | Some("--help") | Some("help") => {
            print!("{USAGE}");
            Ok(())
        }
        _ => Err(Error::Usage(format!("not implemented yet\n{USAGE}"))),
    }
}
