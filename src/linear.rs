//! The exact natural gradient of deep linear networks (PAPER.md section 1).
//! (Being written.)

/// Entry point of `natgrad linear`.
pub fn cli_main(args: &[String]) -> Result<(), crate::Error> {
    let _ = args;
    Err(crate::Error::Usage("`natgrad linear` is not implemented yet".into()))
}
