//! The memory bound of `natgrad::data` (see its module documentation): a
//! dataset is held as its bytes, loading costs at most the raw and the
//! decompressed file at once, and preparing it for training copies nothing.
//! A counting global allocator measures the bytes held (one test function
//! only, so no other test allocates while it measures).

use flate2::write::GzEncoder;
use flate2::Compression;
use natgrad::data::load_dir;
use natgrad::kernels::alloc_counter::{live_bytes, peak_bytes, reset_peak, CountingAllocator};
use std::io::Write;
use std::path::PathBuf;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// IDX files of `count` 28 x 28 images with a little structure, gzipped.
fn files(count: u32) -> (Vec<u8>, Vec<u8>) {
    let mut images = vec![0u8, 0, 8, 3];
    for v in [count, 28, 28] {
        images.extend_from_slice(&v.to_be_bytes());
    }
    images.extend((0..count as usize * 784).map(|i| ((i * 7) % 251) as u8 & 0xf0));
    let mut labels = vec![0u8, 0, 8, 1];
    labels.extend_from_slice(&count.to_be_bytes());
    labels.extend((0..count).map(|i| (i % 10) as u8));
    (gzip(&images), gzip(&labels))
}

#[test]
fn a_dataset_is_held_as_its_bytes() {
    let (train, test) = (20_000u32, 5_000u32);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("data-memory");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut compressed = 0;
    for (prefix, count) in [("train", train), ("t10k", test)] {
        let (images, labels) = files(count);
        compressed += images.len() + labels.len();
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte.gz")), images).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte.gz")), labels).unwrap();
    }
    // The dataset's own bytes: one per pixel and one per label.
    let bytes = (784 + 1) * (train + test) as usize;

    let before = live_bytes();
    reset_peak();
    let dataset = load_dir(&dir).unwrap();
    let held = live_bytes() - before;
    let peak = peak_bytes() - before;
    assert_eq!(dataset.train.pixels.len(), 784 * train as usize);
    // Held: the bytes, their Vec headers and the name (no f32 copies: those
    // alone would be 4 bytes per pixel).
    assert!(
        held <= bytes + 4096,
        "a loaded dataset holds {held} bytes for {bytes} bytes of data"
    );
    // While loading: the splits loaded so far, plus one file raw and
    // decompressed (the gzip trailer sizes the output exactly, the header is
    // removed in place). Before issue #22 the peak was over 5 bytes per
    // pixel (the decompressed file, a copy of its pixels, and their f32
    // conversion).
    let bound = bytes + compressed + (1 << 20);
    assert!(
        peak <= bound,
        "loading peaked at {peak} bytes, more than {bound} ({bytes} of data)"
    );
    eprintln!("dataset {bytes} bytes: held {held}, loading peak {peak}");

    // Preparing it for training (standardised, for the Gaussian `paper`
    // preset) reads the bytes where they are: nothing of the data's size
    // is allocated.
    #[cfg(feature = "cli")]
    {
        let net = natgrad::mlp::Mlp::paper(1);
        let before = live_bytes();
        reset_peak();
        let prepared = natgrad::app::race::prepare(&dataset, &net).unwrap();
        let split = natgrad::app::tune::fit_validation(&dataset, &net).unwrap();
        let peak = peak_bytes() - before;
        assert!(
            peak < 64 * 1024,
            "preparing the data allocated {peak} bytes"
        );
        assert_eq!(prepared.train_count, train as usize);
        assert_eq!(split.train_count + split.test_count, train as usize);
        // Widening one minibatch gives the standardised values of its bytes.
        let mut x = vec![0.0f32; 784 * 2];
        prepared.train.gather(&[3, 0], &mut x).unwrap();
        let image = dataset.train.image(3);
        for (k, (&v, &b)) in x[..784].iter().zip(image).enumerate() {
            assert_eq!(v, prepared.train.value(b), "pixel {k}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
