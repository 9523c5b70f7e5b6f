#!/usr/bin/env python3
"""Writes the seed corpus of the `idx_reader` fuzz target (fuzz/seeds/idx_reader/):
small valid IDX files (raw and gzip), broken ones (wrong magic, float type,
truncated, trailing bytes, zero and absurd dimensions, short header, truncated
gzip) and whole splits in the target's layout (u16 little-endian length of the
image file, then the image file, then the label file).

Usage: python3 scripts/make-idx-fuzz-seeds.py fuzz/seeds/idx_reader
Deterministic (gzip mtime 0); standard library only.
"""
import gzip
import os
import struct
import sys


def gz(data):
    return gzip.compress(data, mtime=0)


def images(count, rows, cols, pixels=None, magic=0x803):
    if pixels is None:
        pixels = bytes((i * 37 + 11) % 256 for i in range(count * rows * cols))
    return struct.pack(">IIII", magic, count, rows, cols) + pixels


def labels(count, magic=0x801):
    return struct.pack(">II", magic, count) + bytes(i % 10 for i in range(count))


def split(image_file, label_file):
    return struct.pack("<H", len(image_file)) + image_file + label_file


SEEDS = {
    "images_valid_2x3x4": images(2, 3, 4),
    "images_valid_2x3x4.gz": gz(images(2, 3, 4)),
    "labels_valid_5": labels(5),
    "labels_valid_5.gz": gz(labels(5)),
    "images_wrong_magic": images(2, 3, 4, magic=0x801),
    "images_float_type": images(2, 3, 4, magic=0xD03),
    "images_truncated": images(2, 3, 4)[:-1],
    "images_trailing": images(2, 3, 4) + b"xx",
    "images_zero_rows": images(1, 0, 4, pixels=b""),
    "images_huge_count": images(1 << 31, 28, 28, pixels=b"\0" * 8),
    "labels_huge_count": struct.pack(">II", 0x801, 1 << 31) + b"\0" * 8,
    "labels_short_header": labels(5)[:6],
    "gz_truncated": gz(images(2, 3, 4))[:-5],
    "split_valid": split(images(2, 3, 4), labels(2)),
    "split_valid_gz": split(gz(images(2, 3, 4)), gz(labels(2))),
    "split_count_mismatch": split(images(2, 3, 4), labels(3)),
}


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make-idx-fuzz-seeds.py <output dir>")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
