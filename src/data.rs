//! MNIST-style IDX data: reader and the embedded default dataset.
//! (Being written.)
