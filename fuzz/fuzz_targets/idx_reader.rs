//! Fuzz target for the IDX reader (`natgrad::data`): arbitrary bytes go to the
//! image and label parsers, to the bounded gzip decompressor, and (split in
//! two) to `split_from_idx`. Each must return `Ok` with consistent contents or
//! `Error::Format` naming the input; any panic, other error variant,
//! unbounded output or inconsistent result is a crash.
//!
//! Run: `cargo +nightly fuzz run idx_reader corpus/idx_reader seeds/idx_reader`
//! from `fuzz/` (new inputs go to `corpus/`, the committed seeds stay as they are).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use natgrad::data::{decompress_if_gz, parse_idx_images, parse_idx_labels, split_from_idx};
use natgrad::Error;

/// Small enough to keep executions fast, large enough for every seed.
const MAX_DECOMPRESSED: usize = 1 << 20;

fn expect_format_error(error: Error, origins: &[&Path]) {
    match &error {
        Error::Format { path, detail } => {
            assert!(
                origins.contains(&path.as_path()),
                "error names {path:?}, not one of {origins:?}"
            );
            assert!(!detail.is_empty(), "empty error detail");
        }
        other => panic!("unexpected error variant: {other:?}"),
    }
}

fn check_images(bytes: &[u8], origin: &Path) {
    match parse_idx_images(bytes, origin) {
        Ok((count, rows, cols, pixels)) => {
            assert!(count > 0 && rows > 0 && cols > 0);
            assert_eq!(pixels.len(), count * rows * cols);
            assert_eq!(bytes.len(), 16 + pixels.len());
            assert_eq!(&bytes[16..], &pixels[..]);
        }
        Err(error) => expect_format_error(error, &[origin]),
    }
}

fn check_labels(bytes: &[u8], origin: &Path) {
    match parse_idx_labels(bytes, origin) {
        Ok(labels) => {
            assert!(!labels.is_empty());
            assert_eq!(bytes.len(), 8 + labels.len());
            assert_eq!(&bytes[8..], &labels[..]);
        }
        Err(error) => expect_format_error(error, &[origin]),
    }
}

fuzz_target!(|bytes: &[u8]| {
    let origin = Path::new("fuzz-input");

    // The parsers on the raw bytes.
    check_images(bytes, origin);
    check_labels(bytes, origin);

    // The decompressor: bounded output, identity on non-gzip input, and the
    // parsers again on whatever it produces.
    match decompress_if_gz(bytes, origin, MAX_DECOMPRESSED) {
        Ok(out) => {
            assert!(out.len() <= MAX_DECOMPRESSED);
            if !bytes.starts_with(&[0x1f, 0x8b]) {
                assert_eq!(out, bytes);
            }
            check_images(&out, origin);
            check_labels(&out, origin);
        }
        Err(error) => expect_format_error(error, &[origin]),
    }

    // A whole split: the first two bytes choose where the image file ends and
    // the label file begins.
    if bytes.len() >= 2 {
        let rest = &bytes[2..];
        let cut = usize::from(u16::from_le_bytes([bytes[0], bytes[1]])) % (rest.len() + 1);
        let (images, labels) = rest.split_at(cut);
        let images_origin = Path::new("fuzz-images");
        let labels_origin = Path::new("fuzz-labels");
        match split_from_idx(images, images_origin, labels, labels_origin) {
            Ok(split) => {
                assert!(split.count > 0);
                assert_eq!(split.labels.len(), split.count);
                assert_eq!(split.pixels.len(), split.features() * split.count);
                split.check().unwrap();
                let last = split.image(split.count - 1);
                assert_eq!(last.len(), split.features());
            }
            Err(error) => expect_format_error(error, &[images_origin, labels_origin]),
        }
    }
});
