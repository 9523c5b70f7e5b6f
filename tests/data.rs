//! The IDX reader and the embedded dataset: valid files round-trip (raw and
//! gzip), and every kind of bad file gets the right typed error naming the file.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use flate2::write::GzEncoder;
use flate2::Compression;
use natgrad::data::{
    decompress_if_gz, load, load_dir, load_embedded, parse_idx_images, parse_idx_labels,
    split_from_idx, Split, Standardizer, MAX_IDX_BYTES,
};
use natgrad::Error;

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "natgrad-data-test-{}-{tag}-{n}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Deterministic pseudo-random bytes (a 64-bit LCG), so pixel checks compare
/// against values the reader could not produce by accident.
fn pseudo_random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

fn idx_images(count: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&0x0000_0803u32.to_be_bytes());
    bytes.extend_from_slice(&count.to_be_bytes());
    bytes.extend_from_slice(&rows.to_be_bytes());
    bytes.extend_from_slice(&cols.to_be_bytes());
    bytes.extend_from_slice(pixels);
    bytes
}

fn idx_labels(count: u32, labels: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&0x0000_0801u32.to_be_bytes());
    bytes.extend_from_slice(&count.to_be_bytes());
    bytes.extend_from_slice(labels);
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A small synthetic dataset with non-square images (rows != cols), so a
/// swapped dimension would show.
struct Synthetic {
    rows: u32,
    cols: u32,
    train_pixels: Vec<u8>,
    train_labels: Vec<u8>,
    test_pixels: Vec<u8>,
    test_labels: Vec<u8>,
}

impl Synthetic {
    const TRAIN: u32 = 7;
    const TEST: u32 = 4;

    fn new() -> Synthetic {
        let (rows, cols) = (3, 5);
        let features = (rows * cols) as usize;
        Synthetic {
            rows,
            cols,
            train_pixels: pseudo_random_bytes(features * Self::TRAIN as usize, 1),
            train_labels: pseudo_random_bytes(Self::TRAIN as usize, 2),
            test_pixels: pseudo_random_bytes(features * Self::TEST as usize, 3),
            test_labels: pseudo_random_bytes(Self::TEST as usize, 4),
        }
    }

    fn files(&self) -> [(&'static str, Vec<u8>); 4] {
        [
            (
                "train-images-idx3-ubyte",
                idx_images(Self::TRAIN, self.rows, self.cols, &self.train_pixels),
            ),
            (
                "train-labels-idx1-ubyte",
                idx_labels(Self::TRAIN, &self.train_labels),
            ),
            (
                "t10k-images-idx3-ubyte",
                idx_images(Self::TEST, self.rows, self.cols, &self.test_pixels),
            ),
            (
                "t10k-labels-idx1-ubyte",
                idx_labels(Self::TEST, &self.test_labels),
            ),
        ]
    }

    /// Writes the four files raw, or gzipped with a `.gz` suffix.
    fn write_to(&self, dir: &TempDir, gz: bool) {
        for (name, bytes) in self.files() {
            if gz {
                dir.write(&format!("{name}.gz"), &gzip(&bytes));
            } else {
                dir.write(name, &bytes);
            }
        }
    }

    fn check_split(&self, split: &Split, pixels: &[u8], labels: &[u8]) {
        let features = (self.rows * self.cols) as usize;
        assert_eq!(split.rows, self.rows as usize);
        assert_eq!(split.cols, self.cols as usize);
        assert_eq!(split.features(), features);
        assert_eq!(split.count, labels.len());
        assert_eq!(split.labels, labels);
        assert_eq!(split.pixels.len(), features * labels.len());
        let widened = split.to_f32();
        for i in 0..split.count {
            let expected = &pixels[i * features..(i + 1) * features];
            assert_eq!(split.image(i), expected, "image {i}");
            // Column-major: image i is column i of the features x count matrix.
            assert_eq!(
                widened[i * features + features - 1],
                f32::from(expected[features - 1]) / 255.0
            );
        }
    }

    fn check(&self, dataset: &natgrad::data::Dataset) {
        self.check_split(&dataset.train, &self.train_pixels, &self.train_labels);
        self.check_split(&dataset.test, &self.test_pixels, &self.test_labels);
    }
}

fn expect_format(result: Result<impl std::fmt::Debug, Error>, file: &str, words: &[&str]) {
    match result {
        Err(error @ Error::Format { .. }) => {
            let Error::Format { path, .. } = &error else {
                unreachable!()
            };
            assert!(
                path.to_string_lossy().contains(file),
                "error path {path:?} should name {file}"
            );
            let message = error.to_string();
            assert!(
                message.contains(file),
                "message {message:?} should name {file}"
            );
            for word in words {
                assert!(
                    message.contains(word),
                    "message {message:?} should contain {word:?}"
                );
            }
        }
        other => panic!("expected Error::Format naming {file}, got {other:?}"),
    }
}

#[test]
fn raw_files_round_trip() {
    let data = Synthetic::new();
    let dir = TempDir::new("raw");
    data.write_to(&dir, false);
    let dataset = load_dir(dir.path()).unwrap();
    assert_eq!(dataset.name, dir.path().display().to_string());
    data.check(&dataset);
    // `load(Some(dir))` is `load_dir(dir)`.
    data.check(&load(Some(dir.path())).unwrap());
}

#[test]
fn gzip_files_round_trip() {
    let data = Synthetic::new();
    let dir = TempDir::new("gz");
    data.write_to(&dir, true);
    data.check(&load_dir(dir.path()).unwrap());
}

#[test]
fn dot_spelling_and_mixed_compression_are_found() {
    let data = Synthetic::new();
    let dir = TempDir::new("dotted");
    for (i, (name, bytes)) in data.files().into_iter().enumerate() {
        let dotted = name.replace("-idx", ".idx");
        if i % 2 == 0 {
            dir.write(&dotted, &bytes);
        } else {
            dir.write(&format!("{dotted}.gz"), &gzip(&bytes));
        }
    }
    data.check(&load_dir(dir.path()).unwrap());
}

#[test]
fn gzip_is_recognised_by_content_not_name() {
    let data = Synthetic::new();
    let dir = TempDir::new("gz-content");
    for (name, bytes) in data.files() {
        dir.write(name, &gzip(&bytes));
    }
    data.check(&load_dir(dir.path()).unwrap());
}

/// Writes the synthetic dataset with one file replaced, and expects a format
/// error naming that file.
fn check_bad_file(file: &str, replacement: Vec<u8>, words: &[&str]) {
    let data = Synthetic::new();
    for gz in [false, true] {
        let dir = TempDir::new("bad");
        data.write_to(&dir, gz);
        let name = if gz {
            format!("{file}.gz")
        } else {
            file.to_string()
        };
        let bytes = if gz {
            gzip(&replacement)
        } else {
            replacement.clone()
        };
        dir.write(&name, &bytes);
        expect_format(load_dir(dir.path()), &name, words);
    }
}

#[test]
fn truncated_files_are_refused() {
    let data = Synthetic::new();
    let mut images = idx_images(Synthetic::TRAIN, data.rows, data.cols, &data.train_pixels);
    images.pop();
    check_bad_file(
        "train-images-idx3-ubyte",
        images,
        &["truncated", "7 images of 3 x 5"],
    );
    let mut labels = idx_labels(Synthetic::TEST, &data.test_labels);
    labels.pop();
    check_bad_file("t10k-labels-idx1-ubyte", labels, &["truncated", "4 labels"]);
    // Shorter than the header itself.
    check_bad_file(
        "t10k-images-idx3-ubyte",
        vec![0, 0, 8, 3, 0, 0],
        &["too short"],
    );
    check_bad_file("train-labels-idx1-ubyte", Vec::new(), &["too short"]);
}

#[test]
fn trailing_bytes_are_refused() {
    let data = Synthetic::new();
    let mut images = idx_images(Synthetic::TEST, data.rows, data.cols, &data.test_pixels);
    images.extend_from_slice(&[1, 2, 3]);
    check_bad_file(
        "t10k-images-idx3-ubyte",
        images,
        &["3 unexpected trailing bytes"],
    );
}

#[test]
fn wrong_magic_is_refused() {
    let data = Synthetic::new();
    // A label file where the images should be.
    check_bad_file(
        "train-images-idx3-ubyte",
        idx_labels(Synthetic::TRAIN, &data.train_labels),
        &[
            "magic number 0x00000801",
            "expected 0x00000803",
            "label file",
        ],
    );
    // An image file where the labels should be.
    check_bad_file(
        "train-labels-idx1-ubyte",
        idx_images(Synthetic::TRAIN, data.rows, data.cols, &data.train_pixels),
        &["magic number 0x00000803", "expected 0x00000801"],
    );
    // Not IDX at all.
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&[0; 16]);
    check_bad_file("t10k-images-idx3-ubyte", png, &["not an IDX file"]);
    // IDX, but floats.
    let mut floats = idx_images(Synthetic::TEST, data.rows, data.cols, &data.test_pixels);
    floats[2] = 0x0d;
    check_bad_file("t10k-images-idx3-ubyte", floats, &["element type 0x0d"]);
}

#[test]
fn mismatched_counts_are_refused() {
    let data = Synthetic::new();
    let labels = idx_labels(Synthetic::TRAIN - 1, &data.train_labels[1..]);
    for gz in [false, true] {
        let dir = TempDir::new("mismatch");
        data.write_to(&dir, gz);
        let suffix = if gz { ".gz" } else { "" };
        let bytes = if gz { gzip(&labels) } else { labels.clone() };
        dir.write(&format!("train-labels-idx1-ubyte{suffix}"), &bytes);
        expect_format(
            load_dir(dir.path()),
            &format!("train-labels-idx1-ubyte{suffix}"),
            &["6 labels", "7 images", "train-images-idx3-ubyte"],
        );
    }
}

#[test]
fn test_images_of_another_size_are_refused() {
    let data = Synthetic::new();
    let dir = TempDir::new("sizes");
    data.write_to(&dir, false);
    dir.write(
        "t10k-images-idx3-ubyte",
        &idx_images(Synthetic::TEST, data.cols, data.rows, &data.test_pixels),
    );
    expect_format(
        load_dir(dir.path()),
        "t10k-images-idx3-ubyte",
        &["5 x 3", "training images are 3 x 5"],
    );
}

#[test]
fn zero_dimensions_are_refused() {
    for (count, rows, cols) in [(0, 28, 28), (1, 0, 28), (1, 28, 0)] {
        expect_format(
            parse_idx_images(&idx_images(count, rows, cols, &[]), Path::new("zero-dims")),
            "zero-dims",
            &["must be positive"],
        );
    }
    expect_format(
        parse_idx_labels(&idx_labels(0, &[]), Path::new("no-labels")),
        "no-labels",
        &["0 labels"],
    );
}

/// The peak resident memory of this process, from /proc (Linux only).
fn peak_resident_bytes() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[test]
fn absurd_dimensions_are_refused_before_allocating() {
    let huge_headers = [
        (1u32 << 31, 28, 28),
        (u32::MAX, u32::MAX, u32::MAX),
        (1, 1 << 16, (1 << 12) + 1), // 2^28 + 2^16 bytes: just over the limit
    ];
    for (count, rows, cols) in huge_headers {
        // A tiny file that claims to hold an enormous payload.
        let file = idx_images(count, rows, cols, &[0; 64]);
        expect_format(
            parse_idx_images(&file, Path::new("huge-images")),
            "huge-images",
            &["more than the limit", &count.to_string()],
        );
        // The same through the gzip path and load_dir.
        check_bad_file("train-images-idx3-ubyte", file, &["more than the limit"]);
    }
    let labels = idx_labels(1 << 31, &[0; 64]);
    expect_format(
        parse_idx_labels(&labels, Path::new("huge-labels")),
        "huge-labels",
        &["more than the limit", "2147483648 labels"],
    );
    check_bad_file("t10k-labels-idx1-ubyte", labels, &["more than the limit"]);
    // Exactly at the limit is allowed by the header check; only the length refuses it.
    let at_limit = idx_images(1 << 16, 1 << 6, 1 << 6, &[0; 16]);
    assert_eq!((1usize << 16) * (1 << 6) * (1 << 6), MAX_IDX_BYTES);
    expect_format(
        parse_idx_images(&at_limit, Path::new("at-limit")),
        "at-limit",
        &["truncated"],
    );
    // Had any of these allocated what its header claims, the process would
    // have touched gigabytes; the whole test binary needs a few hundred MB.
    if let Some(peak) = peak_resident_bytes() {
        assert!(peak < 1 << 30, "peak resident memory {peak} bytes");
    }
}

#[test]
fn missing_files_name_the_file_and_the_names_tried() {
    let data = Synthetic::new();
    let dir = TempDir::new("missing");
    data.write_to(&dir, false);
    fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte")).unwrap();
    match load_dir(dir.path()) {
        Err(error @ Error::Io { .. }) => {
            let Error::Io { path, source } = &error else {
                unreachable!()
            };
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            assert_eq!(path, &dir.path().join("t10k-labels-idx1-ubyte"));
            let message = error.to_string();
            for name in [
                "t10k-labels-idx1-ubyte",
                "t10k-labels-idx1-ubyte.gz",
                "t10k-labels.idx1-ubyte",
                "t10k-labels.idx1-ubyte.gz",
            ] {
                assert!(message.contains(name), "{message:?} should list {name}");
            }
        }
        other => panic!("expected Error::Io, got {other:?}"),
    }
    // A directory that does not exist says so.
    let nowhere = dir.path().join("no-such-dir");
    match load_dir(&nowhere) {
        Err(error @ Error::Io { .. }) => {
            let message = error.to_string();
            assert!(message.contains("train-images-idx3-ubyte"), "{message}");
            assert!(message.contains("does not exist"), "{message}");
        }
        other => panic!("expected Error::Io, got {other:?}"),
    }
}

#[test]
fn corrupt_and_truncated_gzip_are_refused() {
    let data = Synthetic::new();
    let good = gzip(&idx_images(
        Synthetic::TRAIN,
        data.rows,
        data.cols,
        &data.train_pixels,
    ));
    let origin = Path::new("some.gz");

    // Truncated: cut off the CRC/length trailer and part of the stream.
    for keep in [good.len() - 1, good.len() - 8, good.len() / 2, 11] {
        expect_format(
            decompress_if_gz(&good[..keep], origin, 1 << 20),
            "some.gz",
            &["gzip"],
        );
    }
    // A changed byte in the compressed payload: deflate error or CRC mismatch.
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x55;
    expect_format(
        decompress_if_gz(&flipped, origin, 1 << 20),
        "some.gz",
        &["gzip"],
    );
    // Garbage after the gzip member.
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"garbage");
    expect_format(
        decompress_if_gz(&trailing, origin, 1 << 20),
        "some.gz",
        &["gzip"],
    );

    // And through load_dir, naming the file.
    let dir = TempDir::new("corrupt-gz");
    data.write_to(&dir, true);
    dir.write("train-images-idx3-ubyte.gz", &good[..good.len() / 2]);
    expect_format(
        load_dir(dir.path()),
        "train-images-idx3-ubyte.gz",
        &["truncated gzip"],
    );
}

#[test]
fn decompression_is_bounded() {
    let zeros = vec![0u8; 1 << 20];
    let bomb = gzip(&zeros);
    assert!(
        bomb.len() < 5000,
        "1 MiB of zeros compresses to {} bytes",
        bomb.len()
    );
    expect_format(
        decompress_if_gz(&bomb, Path::new("bomb.gz"), 1000),
        "bomb.gz",
        &["more than the limit of 1000 bytes"],
    );
    // Exactly at the limit is fine, one byte more is not.
    assert_eq!(
        decompress_if_gz(&bomb, Path::new("bomb.gz"), 1 << 20).unwrap(),
        zeros
    );
    assert!(decompress_if_gz(&bomb, Path::new("bomb.gz"), (1 << 20) - 1).is_err());
    // Uncompressed input is copied, and bounded the same way.
    assert_eq!(
        decompress_if_gz(b"\0\0\x08\x01", Path::new("raw"), 4).unwrap(),
        b"\0\0\x08\x01"
    );
    expect_format(
        decompress_if_gz(b"\0\0\x08\x01", Path::new("raw"), 3),
        "raw",
        &["more than the limit of 3"],
    );
}

#[test]
fn every_truncation_and_byte_change_gives_ok_or_a_typed_error() {
    // A small exhaustive stand-in for the fuzz target: no input may panic.
    let data = Synthetic::new();
    let images = idx_images(Synthetic::TEST, data.rows, data.cols, &data.test_pixels);
    let labels = idx_labels(Synthetic::TEST, &data.test_labels);
    let origin = Path::new("x");
    for cut in 0..images.len() {
        assert!(matches!(
            parse_idx_images(&images[..cut], origin),
            Err(Error::Format { .. })
        ));
    }
    for cut in 0..labels.len() {
        assert!(matches!(
            parse_idx_labels(&labels[..cut], origin),
            Err(Error::Format { .. })
        ));
    }
    let gz_images = gzip(&images);
    let gz_labels = gzip(&labels);
    let mut accepted = 0;
    for position in 0..gz_images.len() {
        for change in [0x01u8, 0x80, 0xff] {
            let mut bytes = gz_images.clone();
            bytes[position] ^= change;
            match split_from_idx(&bytes, origin, &gz_labels, origin) {
                Ok(split) => {
                    // Only changes the gzip format ignores (header flags' spare
                    // bits, mtime, OS byte) may be accepted, and then unchanged.
                    assert_eq!(split.labels, data.test_labels);
                    assert_eq!(split.pixels, data.test_pixels);
                    accepted += 1;
                }
                Err(Error::Format { .. }) => {}
                Err(other) => panic!("unexpected error variant {other:?}"),
            }
        }
    }
    assert!(
        accepted < 3 * 12,
        "{accepted} corrupted gzip files accepted"
    );
}

#[test]
fn embedded_dataset_is_real_mnist_sized() {
    let dataset = load_embedded().unwrap();
    assert_eq!(dataset.name, "embedded-mnist-10k");
    // The race's settings for the embedded set assume its size.
    #[cfg(feature = "cli")]
    assert_eq!(
        dataset.train.count,
        natgrad::app::race::EMBEDDED_TRAIN_COUNT
    );
    for (split, count) in [(&dataset.train, 8000), (&dataset.test, 2000)] {
        assert_eq!(split.count, count);
        assert_eq!((split.rows, split.cols), (28, 28));
        assert_eq!(split.features(), 784);
        assert_eq!(split.pixels.len(), 784 * count);
        assert_eq!(split.labels.len(), count);
        let images = split.to_f32();
        let min = images.iter().copied().fold(f32::INFINITY, f32::min);
        let max = images.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!((min, max), (0.0, 1.0), "pixel range");
        let mut per_class = [0usize; 10];
        for &label in &split.labels {
            assert!(label <= 9, "label {label}");
            per_class[label as usize] += 1;
        }
        // Every digit is present in a proportion near a tenth.
        for (digit, &n) in per_class.iter().enumerate() {
            assert!(
                n * 100 > count * 6 && n * 100 < count * 14,
                "digit {digit}: {n} of {count}"
            );
        }
        // Real digits: ink covers roughly a fifth of the image, the corners are blank.
        let ink = images.iter().filter(|&&p| p > 0.5).count() as f64 / images.len() as f64;
        assert!(ink > 0.05 && ink < 0.3, "ink fraction {ink}");
        assert!((0..count).all(|i| split.image(i)[0] == 0));
    }
    // Loading is deterministic, and load(None) is the embedded dataset.
    let again = load(None).unwrap();
    assert_eq!(again.train.labels, dataset.train.labels);
    assert_eq!(again.test.pixels, dataset.test.pixels);
}

#[test]
fn embedded_dataset_round_trips_through_raw_files() {
    let embedded = load_embedded().unwrap();
    let dir = TempDir::new("embedded-raw");
    for (prefix, split) in [("train", &embedded.train), ("t10k", &embedded.test)] {
        dir.write(
            &format!("{prefix}-images-idx3-ubyte"),
            &idx_images(split.count as u32, 28, 28, &split.pixels),
        );
        dir.write(
            &format!("{prefix}-labels-idx1-ubyte"),
            &idx_labels(split.count as u32, &split.labels),
        );
    }
    let reread = load_dir(dir.path()).unwrap();
    assert_eq!(reread.train.pixels, embedded.train.pixels);
    assert_eq!(reread.train.labels, embedded.train.labels);
    assert_eq!(reread.test.pixels, embedded.test.pixels);
    assert_eq!(reread.test.labels, embedded.test.labels);
}

#[test]
fn standardizer_centres_and_scales_to_unit_variance() {
    let dataset = load_embedded().unwrap();
    let standardizer = Standardizer::fit(&dataset.train).unwrap();
    // MNIST's global pixel mean is about 0.13 and its std about 0.31.
    assert!(
        (0.1..0.17).contains(&standardizer.mean()),
        "{standardizer:?}"
    );
    assert!(
        (0.27..0.35).contains(&standardizer.std()),
        "{standardizer:?}"
    );

    let mut train = dataset.train.to_f32();
    standardizer.apply(&mut train);
    let n = train.len() as f64;
    let mean = train.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = train
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    assert!(mean.abs() < 1e-5, "mean after standardising: {mean}");
    assert!(
        (var - 1.0).abs() < 1e-4,
        "variance after standardising: {var}"
    );

    // The same map on test data (fit on train only), and invert undoes it.
    let mut test = dataset.test.to_f32();
    standardizer.apply(&mut test);
    assert!((test[0] + standardizer.mean() / standardizer.std()).abs() < 1e-6);
    standardizer.invert(&mut test);
    let worst = test
        .iter()
        .zip(&dataset.test.to_f32())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "invert(apply(x)) differs from x by {worst}");
}

#[test]
fn standardizer_refuses_degenerate_input() {
    assert!(matches!(
        Standardizer::fit_values(&[]),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        Standardizer::fit_values(&[0.5; 10]),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        Standardizer::fit_values(&[0.5, f32::NAN]),
        Err(Error::NonFinite(_))
    ));
    assert!(matches!(
        Standardizer::fit_values(&[0.5, f32::INFINITY]),
        Err(Error::NonFinite(_))
    ));
    let inconsistent = Split {
        pixels: vec![0, 255, 128],
        labels: vec![1],
        rows: 2,
        cols: 2,
        count: 1,
    };
    assert!(matches!(
        Standardizer::fit(&inconsistent),
        Err(Error::Shape(_))
    ));
    let fitted = Standardizer::fit_values(&[0.0, 2.0]).unwrap();
    assert_eq!((fitted.mean(), fitted.std()), (1.0, 1.0));
}

/// A FIFO where a data file should be is refused before it is opened
/// (opening it for reading would block until a writer came).
#[cfg(unix)]
#[test]
fn a_data_file_that_is_a_fifo_is_refused() {
    let data = Synthetic::new();
    let dir = TempDir::new("fifo");
    data.write_to(&dir, false);
    let path = dir.path().join("train-images-idx3-ubyte");
    fs::remove_file(&path).unwrap();
    let made = std::process::Command::new("mkfifo").arg(&path).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo failed");
    match load_dir(dir.path()) {
        Err(Error::Format { path: p, detail }) => {
            assert_eq!(p, path);
            assert!(detail.contains("FIFO"), "{detail}");
        }
        other => panic!("{:?}", other.map(|d| d.name)),
    }
}

/// `Dataset::from_mnist` on small synthetic `mnist::Mnist` values: digit
/// and one-hot labels, the validation part appended to training, and every
/// inconsistency an `InvalidData` error.
#[cfg(feature = "mnist")]
#[test]
fn from_mnist_converts_and_validates() {
    use natgrad::data::Dataset;
    let image = |v: u8| vec![v; 784];
    // `mnist::Mnist` is not `Clone`.
    let loaded = || mnist::Mnist {
        trn_img: [image(1), image(2)].concat(),
        trn_lbl: vec![3, 7],
        val_img: image(9),
        val_lbl: vec![4],
        tst_img: image(200),
        tst_lbl: vec![5],
    };
    let d = Dataset::from_mnist(loaded()).unwrap();
    assert_eq!((d.train.count, d.test.count), (3, 1));
    assert_eq!((d.train.rows, d.train.cols), (28, 28));
    assert_eq!(d.train.labels, [3, 7, 4]);
    assert_eq!(d.train.image(2), &image(9)[..]);
    assert_eq!(d.test.image(0), &image(200)[..]);
    d.train.check().unwrap();
    d.test.check().unwrap();

    let mut one_hot = loaded();
    one_hot.trn_lbl = [
        [0, 0, 0, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
    ]
    .concat();
    one_hot.val_lbl = vec![0, 0, 0, 0, 1, 0, 0, 0, 0, 0];
    one_hot.tst_lbl = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
    let d = Dataset::from_mnist(one_hot).unwrap();
    assert_eq!(d.train.labels, [3, 7, 4]);
    assert_eq!(d.test.labels, [5]);

    let bad = |edit: &dyn Fn(&mut mnist::Mnist), words: &[&str]| {
        let mut m = loaded();
        edit(&mut m);
        match Dataset::from_mnist(m) {
            Err(Error::InvalidData(msg)) => {
                for w in words {
                    assert!(msg.contains(w), "{msg:?} lacks {w:?}");
                }
            }
            other => panic!("{words:?}: {:?}", other.map(|d| d.train.count)),
        }
    };
    bad(
        &|m| m.trn_img.pop().map(drop).unwrap(),
        &["training", "whole number"],
    );
    bad(
        &|m| m.tst_lbl = vec![5, 6],
        &["test", "2 label bytes for 1 images"],
    );
    bad(&|m| m.trn_lbl = vec![3, 12], &["training", "label 1 is 12"]);
    bad(
        &|m| m.tst_lbl = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0],
        &["test", "not a one-hot vector"],
    );
    bad(&|m| m.val_lbl = vec![], &["validation", "0 label bytes"]);
    bad(
        &|m| {
            m.tst_img.clear();
            m.tst_lbl.clear();
        },
        &["test set holds no images"],
    );
}
